"""Percentiles and SLO attainment of a service's latencies, for every serving tier: per-request
samples (`step`, `fast`: numpy's linear interpolation) or weighted samples standing for many
requests each (`fluid`: the inverse of the weighted empirical CDF). Pure numpy."""

from __future__ import annotations

from typing import Protocol

import numpy as np

STATS = ("mean", "p50", "p90", "p99")


class SLOTargets(Protocol):
    """What the helper reads of an SLO (spec.inference.SLO)."""

    @property
    def ttft_s(self) -> float | None: ...
    @property
    def tpot_s(self) -> float | None: ...
    @property
    def percentile(self) -> float: ...


def weighted_percentiles(x: np.ndarray, w: np.ndarray, q: list[float]) -> np.ndarray:
    """Percentiles q (0-100) of samples x with weights w: the smallest x whose cumulative
    weight reaches q % of the total (the inverse of the weighted empirical CDF)."""
    order = np.argsort(x, kind="stable")
    cw = np.cumsum(w[order])
    idx = np.searchsorted(cw, np.asarray(q) / 100.0 * cw[-1], side="left")
    return x[order][np.minimum(idx, x.size - 1)]


def percentile(x: np.ndarray, q: float, weights: np.ndarray | None = None) -> float:
    """The q-th percentile (0-100) of x: numpy's linear interpolation, or with `weights` the
    weighted one (weighted_percentiles)."""
    if weights is None:
        return float(np.percentile(x, q))
    return float(weighted_percentiles(x, weights, [q])[0])


def latency_stats(x: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float | None]:
    """mean, p50, p90, p99 of samples x (numpy's linear interpolation), or of weighted ones
    (the weighted mean and weighted_percentiles); None for no samples (or no weight)."""
    if weights is None:
        if x.size == 0:
            return dict.fromkeys(STATS)
        p50, p90, p99 = np.percentile(x, [50, 90, 99])
        return {"mean": float(x.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}
    if x.size == 0 or not weights.sum() > 0:
        return dict.fromkeys(STATS)
    p50, p90, p99 = weighted_percentiles(x, weights, [50, 90, 99])
    return {
        "mean": float(np.average(x, weights=weights)),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
    }


def slo_attainment(
    slo: SLOTargets,
    ttft: np.ndarray,
    tpot_all: np.ndarray,
    tpot: np.ndarray,
    *,
    dropped: float,
    weights: np.ndarray | None = None,
    tpot_weights: np.ndarray | None = None,
) -> tuple[float | None, dict[str, bool]]:
    """The share of requests (of samples' weights) meeting every target of `slo`, dropped
    requests judged as missing it, and whether each target's percentile is met.

    ttft: per completed request (sample); tpot_all: its time per output token (0 for one
    token), aligned with ttft; tpot: that of requests with more than one output token only
    (with `tpot_weights`), for the percentile."""
    ok = np.ones(ttft.size, dtype=bool)
    met: dict[str, bool] = {}
    if slo.ttft_s is not None:
        ok &= ttft <= slo.ttft_s
        if ttft.size:
            met["ttft"] = bool(percentile(ttft, slo.percentile, weights) <= slo.ttft_s)
    if slo.tpot_s is not None:
        ok &= tpot_all <= slo.tpot_s
        if tpot.size:
            met["tpot"] = bool(percentile(tpot, slo.percentile, tpot_weights) <= slo.tpot_s)
    if weights is None:
        judged = ok.size + dropped
        return (float(ok.sum() / judged) if judged else None), met
    total = weights.sum() + dropped
    return (float((weights * ok).sum() / total) if total > 0 else None), met
