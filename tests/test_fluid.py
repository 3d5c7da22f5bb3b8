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


def _closed_loop_throughput(workload: str, held: int, completions: int) -> float:
    """Requests/s a `fast` replica completes while it holds exactly `held` requests (each one
    that finishes is replaced at once by the next of the run's lengths), after a warm-up of
    a quarter as many."""
    from aifactory_sim.engine.factory import Factory
    from aifactory_sim.engine.replica import ReplicaCore, RequestLog
    from aifactory_sim.engine.traffic import lengths

    svc = Factory(af.load(fv.scenario(workload, "fast"))).services[0]
    spec, b = svc.spec, svc.spec.batching
    rng = np.random.default_rng(1)
    total = held + completions + completions // 4 + 1
    prompt = lengths(spec.prompt_tokens, total, rng)
    output = lengths(spec.output_tokens, total, rng)
    keep = prompt + output <= svc.kv_tokens
    prompt, output = prompt[keep], output[keep]
    log = RequestLog(np.zeros(prompt.size), prompt, output)
    core = ReplicaCore(svc.table, log, kv_capacity_tokens=svc.kv_tokens,
                       max_num_seqs=b.max_num_seqs, max_batched_tokens=b.max_batched_tokens,
                       chunked_prefill=b.chunked_prefill)
    for rid in range(held):
        core.add(rid, 0.0)
    core.schedule(0.0)
    nxt, done, start = held, 0, None
    while True:
        t = core.next_time()
        finished = core.advance()
        done += finished
        if start is None and done >= completions // 4:
            start = (t, done)
        elif start is not None and done - start[1] >= completions:
            return (done - start[1]) / (t - start[0])
        for _ in range(finished):
            core.add(nxt, t)
            nxt += 1
        core.schedule(t)


@pytest.mark.parametrize(("workload", "held"), [("heavy-8b-fp8", 44), ("heavy-8b-fp8", 120),
                                                ("70b-hpa-above-knee", 134)])
def test_the_operating_point_completes_what_a_fast_replica_does_at_the_same_load(workload, held):
    """The grid's l(x) read backwards, x = l / T_s(l), is the rate at which a replica holding
    l requests completes them. A `fast` replica kept at exactly l in service (closed loop)
    completes the same within 1 % over 150,000 requests (measured: -0.16 %, +0.02 % and
    +0.21 %, the last near the 70B replica's knee), so the flow's g(l) is `fast`'s."""
    fluid = _fluid_service(workload)
    assert held < fluid.op_l[-1]
    g = fluid._rate_at(float(held))
    assert g == pytest.approx(_closed_loop_throughput(workload, held, 150_000), rel=0.01)
