"""Reliability and checkpointing formulas, vectorised over numpy arrays.

Sources:
- J. W. Young, "A first order approximation to the optimum checkpoint interval", CACM 17(9),
  1974: tau = sqrt(2 delta M).
- J. T. Daly, "A higher order estimate of the optimum checkpoint interval for restart dumps",
  FGCS 22(3), 2006: Eq. 20 for the expected wall time and Eq. 37 for the optimum interval.
Notation: M mean time between failures of the job, delta the time a checkpoint costs the job,
R the restart time (detection, restart, reload), tau the compute between two checkpoints, T_s
the failure-free solve time.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import gamma

F64 = NDArray[np.float64]

#: Bytes a checkpoint holds per parameter: bf16 weights (2) plus fp32 master weights and Adam's
#: two moments (12). Megatron-LM's 1T-parameter checkpoint is 13.8 TB (Narayanan et al., SC'21,
#: Sec. 5.10), 13.8 bytes per parameter.
CHECKPOINT_BYTES_PER_PARAM = 14.0


def young_interval_s(delta_s: ArrayLike, mtbf_s: ArrayLike) -> F64:
    """Young's first-order optimum: tau = sqrt(2 delta M)."""
    return np.sqrt(2.0 * np.asarray(delta_s, dtype=np.float64) * np.asarray(mtbf_s, dtype=float))


def daly_interval_s(delta_s: ArrayLike, mtbf_s: ArrayLike) -> F64:
    """Daly's higher-order optimum (2006, Eq. 37):
    tau = sqrt(2 delta M) [1 + (1/3) sqrt(delta/(2M)) + (1/9) delta/(2M)] - delta for delta < 2M,
    else tau = M."""
    d = np.asarray(delta_s, dtype=np.float64)
    m = np.asarray(mtbf_s, dtype=np.float64)
    x = d / (2.0 * m)
    tau = np.sqrt(2.0 * d * m) * (1.0 + np.sqrt(x) / 3.0 + x / 9.0) - d
    return np.where(d < 2.0 * m, tau, m)


def daly_expected_wall_s(
    solve_s: ArrayLike,
    tau_s: ArrayLike,
    delta_s: ArrayLike,
    restart_s: ArrayLike,
    mtbf_s: ArrayLike,
) -> F64:
    """Expected wall time under exponential failures that may also strike during checkpoints
    and restarts (Daly 2006, Eq. 20): T = M e^{R/M} (e^{(tau + delta)/M} - 1) T_s / tau."""
    m = np.asarray(mtbf_s, dtype=np.float64)
    tau = np.asarray(tau_s, dtype=np.float64)
    return (
        m
        * np.exp(np.asarray(restart_s) / m)
        * np.expm1((tau + np.asarray(delta_s)) / m)
        * np.asarray(solve_s)
        / tau
    )


def weibull_scale(mean: ArrayLike, shape: ArrayLike) -> F64:
    """Scale of a Weibull distribution with the given mean: mean / Gamma(1 + 1/shape)."""
    k = np.asarray(shape, dtype=np.float64)
    return np.asarray(mean, dtype=np.float64) / gamma(1.0 + 1.0 / k)


def node_mtbf_s(failures_per_1000_node_days: ArrayLike) -> F64:
    """Mean time between failures of one node from a fleet rate (Kokolis et al., HPCA'25,
    report rates per 1000 node-days)."""
    rate = np.asarray(failures_per_1000_node_days, dtype=np.float64)
    return 1000.0 * 86400.0 / rate


def job_mtbf_s(node_mtbf: ArrayLike, nodes: ArrayLike) -> F64:
    """A job's MTBF when any of its `nodes` failing interrupts it: M_node / nodes (independent
    exponential failures; for Weibull this is the mean rate's reciprocal)."""
    return np.asarray(node_mtbf, dtype=np.float64) / np.asarray(nodes, dtype=np.float64)


def node_down_share(mtbf_s: ArrayLike, repair_s: ArrayLike, repaired_share: ArrayLike) -> F64:
    """Long-run share of the time a node is down for repair: an alternating renewal process,
    up for the mean time to a failure that needs a repair, mtbf / s (a share s of failures
    need one; software failures do not), then down for the mean repair r (Ross, "Introduction
    to Probability Models", alternating renewal processes): q = r / (mtbf / s + r)."""
    r = np.asarray(repair_s, dtype=np.float64)
    s = np.asarray(repaired_share, dtype=np.float64)
    up = np.asarray(mtbf_s, dtype=np.float64) / np.maximum(s, 1e-300)
    return np.where(s > 0, r / (up + r), 0.0)


def gang_availability(pool_nodes: ArrayLike, needed: ArrayLike, down_share: ArrayLike) -> F64:
    """Share of the time a gang of `needed` nodes can be formed from a pool whose nodes are each
    down with probability q independently: P(Binomial(N, q) <= N - needed)."""
    from scipy.stats import binom

    n = np.asarray(pool_nodes, dtype=np.float64)
    return np.asarray(
        binom.cdf(n - np.asarray(needed, dtype=np.float64), n, down_share), dtype=np.float64
    )
