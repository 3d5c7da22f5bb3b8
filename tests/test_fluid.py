"""The fluid serving tier, held to the per-request `fast` tier (tolerances of issue 5)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

import aifactory_sim as af
from aifactory_sim.engine.fluid import weighted_percentiles
from aifactory_sim.results import summary_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import fluid_validation as fv

#: 70b-hpa-above-knee is in the table to show a limit: an HPA target above what a replica can
#: hold makes the service swing between saturation and fills, and over four seeds the fluid tier
#: holds more replicas and reports heavier tails than `fast` (docs/background/serving.md).
HELD = [name for name in fv.WORKLOADS if name != "70b-hpa-above-knee"]


@pytest.mark.parametrize("name", HELD)
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


def _fluid_service(workload: str, **fields):
    """A fluid service of a validation workload, built but not run, with `ready` replicas."""
    from aifactory_sim.engine.factory import Factory

    sc = fv.scenario(workload, "fluid")
    sc["inference"][0].update(fields)
    return Factory(af.load(sc)).services[0]


@pytest.mark.parametrize("rate", [6.0, 12.0, 17.0])
def test_requests_in_service_return_with_the_linear_noise_time_constant(rate):
    """Near a steady state the fluid ODE dl/dt = x - g(l) relaxes as exp(-t / l'(x)): its
    linearisation, to 2 % over one time constant (the grid is linear between points)."""
    svc = _fluid_service("heavy-8b-fp8")
    svc.ready = [0, 1, 2, 3]
    r = len(svc.ready)
    steady = float(np.interp(rate, svc.op_x, svc.op_l))
    tau = float(np.interp(rate, svc.op_x, svc.op_tau))
    for start in (0.97, 1.03):
        svc._in_service, svc._backlog, svc._fills = r * steady * start, 0.0, []
        svc._serve(r * rate, tau)
        left = (svc._in_service / r - steady) / (steady * (start - 1.0))
        assert left == pytest.approx(math.exp(-1.0), rel=0.02), (start, left)
    assert tau > svc._op(rate)[4]  # slower than one time in service: T_s grows with load


def test_replicas_that_take_a_backlog_complete_nothing_while_they_prefill_it():
    """Two empty replicas and a backlog: they take a full replica's seats each at once, hold
    them with nothing completed for the fill's length, then complete at the replica's pace."""
    svc = _fluid_service("heavy-8b-fp8")
    svc.ready = [0, 1]
    l_top = float(svc.op_l[-1])
    svc._in_service, svc._backlog, svc._fills = 0.0, 10 * l_top, []
    admitted, _area, filled = svc._serve(0.0, 0.9 * svc.fill_s)
    assert admitted == pytest.approx(2 * l_top) and filled == pytest.approx(admitted)
    assert svc._in_service == pytest.approx(2 * l_top)  # nothing completed
    assert svc._backlog == pytest.approx(8 * l_top)
    svc._t += 0.9 * svc.fill_s
    admitted, _area, _filled = svc._serve(0.0, 0.5 * svc.fill_s)
    # Full again once prefilled: what completed is re-admitted from the backlog.
    assert admitted > 0 and svc._backlog < 8 * l_top
    assert svc.fill_s > 20 * svc.fill_t  # a fill is many iterations, each filled to the budget


def test_the_count_an_autoscaler_sees_fluctuates_as_in_fast():
    """The fluid's in-flight count carries the linear-noise fluctuation (variance R x l'(x)):
    its variance over 2 h of 4 fixed replicas is within 25 % of `fast`'s at a light and at a
    heavy load (about 480 samples: a sampled variance's own error is about 6.5 %). The flow
    alone, without it, is 5 times too steady at 40 requests/s."""
    for rate in (40, 60):
        var = {}
        for tier in ("fast", "fluid"):
            sc = fv.scenario("heavy-8b-fp8", tier)
            sc["duration"] = "2h"
            sc["inference"][0]["traffic"] = {"kind": "poisson", "rate_rps": rate}
            ts = af.run(sc).services
            var[tier] = float(ts[ts["time_s"] > 300]["in_flight"].var())
        assert var["fluid"] == pytest.approx(var["fast"], rel=0.25), (rate, var)
