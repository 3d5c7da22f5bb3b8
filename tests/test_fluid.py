"""The fluid serving tier, held to the per-request `fast` tier (tolerances of issue 5)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import aifactory_sim as af
from aifactory_sim.engine.fluid import weighted_percentiles
from aifactory_sim.results import summary_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import fluid_validation as fv


@pytest.mark.parametrize("name", list(fv.WORKLOADS))
def test_fluid_agrees_with_fast(name):
    """GPU-hours and output tokens within 5 %, mean replicas within 10 %, p50 and p99 of TTFT
    and TPOT within 15 %."""
    row = fv.compare(name)
    for metric, err in row["error"].items():
        assert abs(err) <= fv.TOLERANCE[metric], (metric, err, row["fast"][metric])


def test_an_overloaded_service_saturates_where_fast_does():
    """Two replicas offered 46 requests/s, beyond what they serve: both tiers complete the same
    work and build the same backlog (time to first token in minutes)."""
    runs = {}
    for tier in ("fast", "fluid"):
        sc = fv.scenario("light-8b-fp8", tier)
        sc["inference"][0].update(replicas=2, traffic={"kind": "poisson", "rate_rps": 46})
        runs[tier] = af.run(sc).summary["inference"]["chat"]
    fast, fluid = runs["fast"], runs["fluid"]
    assert fluid["completed"] == pytest.approx(fast["completed"], rel=0.02)
    assert fluid["ttft_s"]["p50"] == pytest.approx(fast["ttft_s"]["p50"], rel=0.05)
    assert fast["ttft_s"]["p50"] > 60


def test_the_summary_has_the_same_keys_in_every_tier():
    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict) and k not in ("slo_met",):
                out |= keys(v, prefix + k + ".")
        return out

    fast = af.run(fv.scenario("light-8b-fp8", "fast")).summary
    fluid = af.run(fv.scenario("light-8b-fp8", "fluid")).summary
    assert keys(fast) == keys(fluid)
    assert fluid["inference"]["chat"]["fidelity"] == "fluid"
    meta = af.run(fv.scenario("light-8b-fp8", "fluid")).meta
    assert meta["tiers"] == {"training": "fast", "inference.chat": "fluid"}
    ledger = fluid["ledger_gpu_h"]
    assert sum(ledger.values()) == pytest.approx(fluid["gpus"] * fluid["duration_s"] / 3600,
                                                 rel=1e-9)
    assert ledger["inference_busy"] > 0 and ledger["inference_idle"] > 0


def test_fluid_is_reproducible():
    a = summary_json(af.run(fv.scenario("bursty-fixed", "fluid")).summary)
    b = summary_json(af.run(fv.scenario("bursty-fixed", "fluid")).summary)
    assert a == b


def test_weighted_percentiles_with_equal_weights_are_order_statistics():
    rng = np.random.default_rng(0)
    x = rng.lognormal(size=1001)
    got = weighted_percentiles(x, np.ones_like(x), [50, 90, 99])
    expected = np.percentile(x, [50, 90, 99], method="inverted_cdf")
    np.testing.assert_allclose(got, expected)
    # Weight moves the percentile: doubling every weight above the median moves p50 up.
    w = np.where(x > np.median(x), 2.0, 1.0)
    assert weighted_percentiles(x, w, [50])[0] > np.median(x)


def test_fluid_little_law_in_the_mean():
    """Requests in the system on average = arrival rate x mean time in the system (E2E), on a
    steady workload (the fluid's in-system count and its latency model are independent)."""
    res = af.run(fv.scenario("heavy-8b-fp8", "fluid"))
    s = res.summary["inference"]["chat"]
    lam = s["requests"] / res.summary["duration_s"]
    assert s["in_system_mean"] == pytest.approx(lam * s["e2e_s"]["mean"], rel=0.05)
