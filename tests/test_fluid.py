"""The fluid serving tier, held to the per-request `fast` tier (tolerances of issue 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import aifactory_sim as af
from aifactory_sim.kernels.stats import weighted_percentiles
from aifactory_sim.results import summary_json
from aifactory_sim.validation import fluid as fv

#: 70b-hpa-above-knee is in the table to show a limit: an HPA target above what a replica can
#: hold makes the service swing between saturation and fills, and over four seeds the fluid tier
#: holds more replicas and reports heavier tails than `fast` (docs/background/serving.md).
#: diurnal-hpa-tight (an HPA concurrency target of 48, near an 8B replica's knee) joined it with
#: the serving calibration of issue 15: its replicas are cheaper at small batches, so the service
#: now runs where a dip below four replicas overloads the rest, the count spikes and the HPA
#: overshoots. `fast` itself is bimodal there: over seeds 7-10, TTFT p99 0.16, 0.17, 3.7 and
#: 10.5 s, replicas 4.1-7.1; the fluid tier takes the swinging branch on every seed (TTFT p99
#: 4-9 s, replicas 5.5-5.7). Its means over the four seeds agree (test below); its tails do not.
SWINGING = ("70b-hpa-above-knee", "diurnal-hpa-tight")
HELD = [name for name in fv.WORKLOADS if name not in SWINGING]


@pytest.mark.parametrize("name", HELD)
def test_fluid_agrees_with_fast(name):
    """GPU-hours and output tokens within 5 %, mean replicas within 10 %, p50 and p99 of TTFT
    and TPOT within 15 %."""
    row = fv.compare(name)
    for metric, err in row["error"].items():
        assert abs(err) <= fv.TOLERANCE[metric], (metric, err, row["fast"][metric])


def test_a_swinging_hpa_agrees_on_its_means_over_seeds():
    """diurnal-hpa-tight over four seeds: GPU-hours and output tokens within 5 %, mean replicas
    within 10 %, p50 of TTFT and TPOT within 15 % (measured +1.3 %, +0.1 %, +7.6 %, -3.5 %,
    -0.4 %); the p99s are left out (see SWINGING)."""
    row = fv.compare("diurnal-hpa-tight")
    for metric in ("gpu_h", "output_tokens", "replicas_mean", "ttft_p50", "tpot_p50"):
        err = row["error"][metric]
        assert abs(err) <= fv.TOLERANCE[metric], (metric, err, row["fast"][metric])


def test_an_overloaded_service_saturates_where_fast_does():
    """Two replicas offered 60 requests/s, half again what they serve (41): both tiers complete
    the same work and build the same backlog (time to first token in minutes; measured -1.0 %).
    The backlog grows at lambda - mu, so a relative error e in the saturated throughput mu moves
    it by e lambda / (lambda - mu): 3x here (the fluid's x_max is 0.5 % above a `fast` replica
    kept full, see the closed-loop test), 9x at 46 requests/s, where this test first ran."""
    runs = {}
    for tier in ("fast", "fluid"):
        sc = fv.scenario("light-8b-fp8", tier)
        sc["inference"][0].update(replicas=2, traffic={"kind": "poisson", "rate_rps": 60})
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
    """The flow model of a fluid service of a validation workload, built but not run (its
    fleet's `ready` replicas set by the test)."""
    from aifactory_sim.engine.factory import Factory

    sc = fv.scenario(workload, "fluid")
    sc["inference"][0].update(fields)
    return Factory(af.load(sc)).services[0].model


def _fast_count_after_step(workload: str, before: float, after: float, at: np.ndarray,
                           runs: int, burst: int = 0) -> np.ndarray:
    """Mean over `runs` of the requests one `fast` replica holds (with those waiting for a
    seat) at times `at` after its Poisson arrivals step from `before` to `after` per second,
    120 s into the run (a replica left with a larger share of the load by a scale-down), with
    `burst` more arriving at the step itself (a backlog it joins)."""
    from aifactory_sim.engine.factory import Factory
    from aifactory_sim.engine.replica import ReplicaCore, RequestLog
    from aifactory_sim.engine.traffic import lengths

    svc = Factory(af.load(fv.scenario(workload, "fast"))).services[0]
    spec, b = svc.spec, svc.spec.batching
    step, end = 120.0, 120.0 + float(at.max()) + 1.0
    counts = np.zeros(at.size)
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        first = (np.cumsum(rng.exponential(1.0 / before, int(before * step * 2) + 10))
                 if before > 0 else np.zeros(0))
        second = step + np.cumsum(rng.exponential(1.0 / after, int(after * end * 2) + 10))
        arrival = np.concatenate((first[first < step], np.full(burst, step),
                                  second[second < end]))
        prompt = lengths(spec.prompt_tokens, arrival.size, rng)
        output = lengths(spec.output_tokens, arrival.size, rng)
        keep = prompt + output <= svc.kv_tokens
        arrival, prompt, output = arrival[keep], prompt[keep], output[keep]
        core = ReplicaCore(svc.table, RequestLog(arrival, prompt, output),
                           kv_capacity_tokens=svc.kv_tokens, max_num_seqs=b.max_num_seqs,
                           max_batched_tokens=b.max_batched_tokens,
                           chunked_prefill=b.chunked_prefill)
        queue: list[int] = []  # the router's, while every seat is taken
        nxt, k = 0, 0
        probes = step + at
        while k < probes.size:
            t_core = core.next_time()
            t_arr = arrival[nxt] if nxt < arrival.size else math.inf
            if probes[k] <= min(t_core, t_arr):
                counts[k] += core.outstanding + len(queue)
                k += 1
            elif t_core <= t_arr:
                core.advance()
                while queue and core.outstanding < b.max_num_seqs:
                    core.add(queue.pop(0), t_core)
                core.schedule(t_core)
            else:
                if queue or core.outstanding >= b.max_num_seqs:
                    queue.append(nxt)
                else:
                    core.add(nxt, t_arr)
                nxt += 1
                if nxt >= arrival.size or arrival[nxt] > t_arr:  # a burst joins as one
                    core.schedule(t_arr)
    return counts / runs


@pytest.mark.parametrize("after", [17.6, 21.0])
def test_a_replica_takes_a_load_step_as_fast_does(after):
    """One llama3-70b replica at 3.5 requests/s gets 17.6 or 21 (a scale-down from 5 or 6
    replicas to 1): it admits faster than it prefills, fills its seats, and saturates. The
    fluid ODE (G(l, a), the prompts admitted but not prefilled, then full) holds within 6 % of
    `fast`'s mean over 32 runs at every time from 6 s to 60 s after the step (measured: within
    1.4 % and 5.2 %, the fluid low 6-12 s after the step to 21; 2.7 % before issue 15's serving
    calibration, for a reason not yet traced; without the
    unprefilled prompts, 13 % low at 18 s after the step to 21)."""
    at = np.array([6.0, 12.0, 18.0, 24.0, 36.0, 60.0])
    fast = _fast_count_after_step("70b-hpa-above-knee", 3.5, after, at, runs=32)
    svc = _fluid_service("70b-hpa-above-knee")
    svc.fleet.ready[:] = [0]
    svc._in_service = float(np.interp(3.5, svc.op_x, svc.op_l))
    svc._backlog, svc._fills, svc._unprefilled = 0.0, [], 0.0
    fluid, t = [], 0.0
    for probe in at:
        while t < probe - 1e-9:
            svc._serve(after, 1.0)
            svc._t += 1.0
            t += 1.0
        fluid.append(svc._in_service + svc._backlog)
    np.testing.assert_allclose(fluid, fast, rtol=0.06)


def test_replicas_that_take_a_backlog_complete_little_while_they_prefill_it():
    """Two empty replicas and a backlog: they take a full replica's seats each at once and
    prefill them in order over fill_s. Only the share already prefilled decodes, one token per
    fill iteration, so over 0.9 fill_s they complete about c (0.9 fill_s)^2 / (2 fill_s
    (E[O] - 1) t_fill), the integral of a linear ramp (within 5 %: the backlog takes each seat
    that frees at once, and those prompts are prefilled last, so they do not decode yet)."""
    svc = _fluid_service("heavy-8b-fp8")
    svc.fleet.ready[:] = [0, 1]
    l_top = float(svc.op_l[-1])
    svc._in_service, svc._backlog, svc._fills = 0.0, 10 * l_top, []
    span = 0.9 * svc.fill_s
    admitted, _area, filled = svc._serve(0.0, span)
    ramp = 2 * l_top * span**2 / (2 * svc.fill_s * (svc.mean_output - 1.0) * svc.fill_t)
    done = admitted - 2 * l_top
    assert filled == pytest.approx(admitted) and done == pytest.approx(ramp, rel=0.05)
    assert svc._in_service == pytest.approx(2 * l_top)  # every seat taken throughout
    assert svc._backlog == pytest.approx(8 * l_top - done)
    assert 0 < done < 0.1 * 2 * l_top  # little: most of the fill is still in prefill
    assert svc.fill_s > 20 * svc.fill_t  # a fill is many iterations, each filled to the budget


def test_a_replica_that_takes_a_backlog_drains_it_as_fast_does():
    """One empty llama3-70b replica takes 256 waiting requests at once (a scale-up joining a
    backlog), then gets 4 requests/s: it prefills them over about 17 s while the first ones
    decode, admits what waits as they complete (and prefills those last), then drains at the
    pace of its decodes. The fluid count is within 8 requests (3 % of the 256) of `fast`'s mean
    over 96 runs from 4 s to 60 s (measured: within 4. Without the decoding share during the
    fill, 17 high at 28 s; with the drain at g(l), as before G(l, a), 103 high at 44 s; with
    the freed seats' prompts not prefilled last, 36 low at 28 s)."""
    at = np.arange(4.0, 61.0, 4.0)
    fast = _fast_count_after_step("70b-hpa-above-knee", 0.0, 4.0, at, runs=96, burst=256)
    svc = _fluid_service("70b-hpa-above-knee")
    svc.fleet.ready[:] = [0]
    svc._in_service, svc._backlog, svc._fills, svc._unprefilled = 0.0, 256.0, [], 0.0
    fluid, t = [], 0.0
    for probe in at:
        while t < probe - 1e-9:
            svc._serve(4.0, 0.5)
            svc._t += 0.5
            t += 0.5
        fluid.append(svc._in_service + svc._backlog)
    np.testing.assert_allclose(fluid, fast, atol=8.0)


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
                                                ("70b-hpa-above-knee", 134),
                                                ("70b-hpa-above-knee", 256)])
def test_the_operating_point_completes_what_a_fast_replica_does_at_the_same_load(workload, held):
    """The grid's l(x) read backwards, x = l / T_s(l), is the rate at which a replica holding
    l requests completes them. A `fast` replica kept at exactly l in service (closed loop)
    completes the same within 1 % over 150,000 requests (measured: -0.16 %, +0.02 %, +0.21 %
    near the 70B replica's knee, and +0.4 % with every seat taken, where x = x_max), so the
    flow's g(l) is `fast`'s."""
    fluid = _fluid_service(workload)
    assert held <= fluid.op_l[-1] * (1.0 + 1e-4)  # every seat taken, to the grid's rounding
    g = fluid._rate_at(float(held))
    assert g == pytest.approx(_closed_loop_throughput(workload, held, 150_000), rel=0.01)
