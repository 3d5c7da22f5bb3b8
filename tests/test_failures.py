"""Failures, checkpoints, recovery, spares, elasticity, preemption and backfill.

Statistical checks run many independent one-node jobs in one scenario: each job's failures come
from its own node, so the jobs are independent replications (a node's failures are a Poisson
process when every failure is a software one, which needs no repair).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import aifactory_sim as af
from aifactory_sim.engine.factory import Factory
from aifactory_sim.kernels.reliability import (
    daly_expected_wall_s,
    daly_interval_s,
    job_mtbf_s,
    young_interval_s,
)
from aifactory_sim.results import summary_json
from aifactory_sim.runner import assemble

#: Step time of the one-node job below (llama3-8b, dp 8, 8 x 2048-token sequences, H100).
STEP_S = float(af.estimate_training("llama3-8b", "H100-SXM", tp=1, pp=1, dp=8, seq_len=2048,
                                    global_batch_seqs=8).step_time_s)
NEVER_H = 1e12  # a failure rate that never fires within a test's horizon


def one_node_job(name: str, solve_s: float, **kw: Any) -> dict:
    steps = round(solve_s / STEP_S)
    spec = {"name": name, "model": "llama3-8b", "tokens": steps * 8 * 2048, "seq_len": 2048,
            "global_batch_seqs": 8, "parallel": {"dp": 8}}
    spec.update(kw)
    return spec


def daly_scenario(reps: int, mtbf_h: float, tau_s: float, delta_s: float, restart_s: float,
                  solve_s: float, seed: int = 0) -> dict:
    """`reps` one-node jobs with software-only failures (a Poisson process per node), a sync
    checkpoint of fixed cost every `tau_s` of compute, and a restart of `restart_s` in all:
    detection 60 s, reload 60 s, the rest start-up."""
    ckpt = {"interval": tau_s, "mode": "sync", "write_s": delta_s, "reload_s": 60}
    return {
        "name": "daly", "seed": seed, "duration": 60 * solve_s,
        "cluster": {"node_pools": [{"name": "p", "nodes": reps, "gpu": "H100-SXM"}]},
        "failures": {"node_mtbf_h": mtbf_h, "components": {"software": 1}, "detect_s": 60,
                     "restart_s": restart_s - 120},
        "training": [one_node_job(f"j{i}", solve_s, checkpoint=ckpt) for i in range(reps)],
    }


def wall_times(res: Any) -> np.ndarray:
    """Each job's wall time from its first compute (after its first start-up) to its end."""
    ev = res.events
    first = ev[ev["event"] == "restart"].groupby("job")["time_s"].min()
    out = []
    for name, j in res.summary["training"].items():
        assert j["state"] == "finished", name
        out.append(j["finished_at_s"] - first[name])
    return np.asarray(out)


# --- Daly's expected wall time ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("mtbf_h", "tau_s", "delta_s", "restart_s"),
    [
        (2.0, 1800.0, 300.0, 600.0),
        (1.0, 1200.0, 120.0, 300.0),
        (8.0, 3600.0, 600.0, 1200.0),
        (4.0, 600.0, 60.0, 900.0),
    ],
)
def test_mean_wall_time_matches_daly(mtbf_h, tau_s, delta_s, restart_s, record_property):
    # T = M e^{R/M} (e^{(tau+delta)/M} - 1) T_s / tau (Daly 2006, Eq. 20), failures striking
    # during checkpoints and restarts too. 200 replications; the mean must lie within 3% of T
    # (the tolerance), and T within the 99.9% confidence interval of the mean widened
    # by the step rounding of checkpoints (at most one step per interval).
    solve = 40 * tau_s
    res = af.run(daly_scenario(200, mtbf_h, tau_s, delta_s, restart_s, solve))
    walls = wall_times(res)
    expected = float(daly_expected_wall_s(solve, tau_s, delta_s, restart_s, mtbf_h * 3600))
    mean = walls.mean()
    half = stats.t.ppf(0.9995, walls.size - 1) * walls.std(ddof=1) / math.sqrt(walls.size)
    record_property("daly", f"mean {mean:.0f} s, 99.9% CI +-{half:.0f} s, Daly {expected:.0f} s")
    assert abs(mean / expected - 1) < 0.03
    rounding = 40 * STEP_S * math.exp((tau_s + delta_s) / (mtbf_h * 3600))
    assert abs(mean - expected) < half + rounding


def test_sweeping_the_interval_finds_dalys_optimum():
    # Intervals on a grid of factors of two around Daly's optimum (Daly 2006, Eq. 37); the
    # simulated mean wall time is least within one grid step of the optimum.
    mtbf_h, delta_s, restart_s = 2.0, 300.0, 600.0
    opt = float(daly_interval_s(delta_s, mtbf_h * 3600))
    grid = [opt / 4, opt / 2, opt, opt * 2, opt * 4]
    solve = 40 * opt
    means = [wall_times(af.run(daly_scenario(150, mtbf_h, tau, delta_s, restart_s, solve,
                                             seed=11))).mean() for tau in grid]
    best = int(np.argmin(means))
    assert abs(best - 2) <= 1, means


def test_young_daly_interval_uses_the_jobs_mtbf_and_checkpoint_cost():
    sc = {
        "name": "yd", "duration": "1d",
        "cluster": {"node_pools": [{"name": "p", "nodes": 64, "gpu": "H100-SXM"}],
                    "storage": {"read_gb_s": 400, "write_gb_s": 100}},
        "failures": {"node_failures_per_1000_node_days": 6.5},
        "training": [{"name": "a", "model": "llama3-70b", "tokens": 1e10, "seq_len": 8192,
                      "global_batch_seqs": 64, "parallel": {"tp": 8, "pp": 4, "dp": 2},
                      "checkpoint": {"interval": "young-daly", "mode": "sync"}}],
    }
    res = af.run(sc).summary["training"]["a"]
    model = af.load(sc).training[0].model
    delta = model.params * 14 / min(100e9, 8 * 8 * 400e9 / 8)  # storage-bound write
    mtbf = float(job_mtbf_s(1000 * 86400 / 6.5, 8))  # 64 GPUs on 8 nodes
    assert res["checkpoint_interval_s"] == pytest.approx(float(daly_interval_s(delta, mtbf)))
    # Daly's optimum sits just below Young's first-order one for delta << M.
    assert res["checkpoint_interval_s"] < float(young_interval_s(delta, mtbf))


# --- failure counts ----------------------------------------------------------------------------


def idle_cluster(nodes: int, days: float, failures: dict, seed: int = 5) -> dict:
    return {"name": "idle", "seed": seed, "duration": f"{days}d", "failures": failures,
            "cluster": {"node_pools": [{"name": "p", "nodes": nodes, "gpu": "H100-SXM"}]}}


def test_failure_count_is_poisson_at_the_configured_rate():
    # Software failures need no repair, so each node fails as a Poisson process of rate 1/M:
    # the cluster's count over D days is Poisson(N D / M). Two-sided test at 0.1%.
    nodes, days, rate = 400, 60, 6.5  # per 1000 node-days
    res = af.run(idle_cluster(nodes, days, {"node_failures_per_1000_node_days": rate,
                                            "components": {"software": 1}}))
    count = res.summary["failures"]["count"]
    mean = nodes * days * rate / 1000
    p = 2 * min(stats.poisson.cdf(count, mean), stats.poisson.sf(count - 1, mean))
    assert p > 1e-3, (count, mean)
    assert len(res.failures) == count


@pytest.mark.parametrize("shape", [None, 0.8, 1.5])
def test_renewal_rate_with_repairs(shape):
    # With repairs of fixed length r, a node alternates up ~ TTF(mean M) and down r: the long-run
    # failure rate is 1/(M + r) (elementary renewal theorem). Tolerance: 5 standard errors of a
    # renewal count, variance ~ CV^2 x mean (CV of the Weibull time to failure).
    nodes, days, mtbf_h, repair_h = 300, 400, 2000.0, 48.0
    dist = {"kind": "exponential"} if shape is None else {"kind": "weibull", "shape": shape}
    res = af.run(idle_cluster(nodes, days, {"node_mtbf_h": mtbf_h, "distribution": dist,
                                            "repair_h": repair_h,
                                            "components": {"gpu": 1}}))
    count = res.summary["failures"]["count"]
    expected = nodes * days * 24 / (mtbf_h + repair_h)
    from scipy.special import gamma

    k = 1.0 if shape is None else shape
    cv2 = gamma(1 + 2 / k) / gamma(1 + 1 / k) ** 2 - 1
    assert abs(count - expected) < 5 * math.sqrt(cv2 * expected), (count, expected)
    # Down time is exactly each repair, cut at the horizon.
    horizon = days * 86400
    down_h = sum(min(r.repair_s, horizon - r.time_s) for r in res.failures.itertuples()) * 8
    assert res.summary["ledger_gpu_h"]["down"] == pytest.approx(down_h / 3600, rel=1e-9)


# --- what a failure costs a job ----------------------------------------------------------------


def injected(sc: dict, faults: list[tuple[float, str, int, str, float]]) -> Any:
    """Run `sc` with failures at chosen times: (time, pool, node, component, repair_s)."""
    fac = Factory(af.load(sc))

    def strike(at: float, pool: str, node: int, component: str, repair_s: float):
        yield fac.env.timeout(at)
        fac.broker.node_failed(pool, node, component, repair_s)

    for fault in faults:
        fac.env.process(strike(*fault))
    res = assemble(fac.run())
    s = res.summary
    assert sum(s["ledger_gpu_h"].values()) == pytest.approx(
        s["gpus"] * s["duration_s"] / 3600, rel=1e-9)
    return fac, res


def small(nodes: int, jobs: list[dict], spares: int = 0, **kw: Any) -> dict:
    sc = {
        "name": "small", "seed": 1, "duration": "3d",
        "cluster": {"node_pools": [{"name": "p", "nodes": nodes, "gpu": "H100-SXM"}],
                    "spare_nodes": spares},
        "failures": {"node_mtbf_h": NEVER_H, "detect_s": 100, "restart_s": 200},
        "training": jobs,
    }
    sc.update(kw)
    return sc


def test_async_checkpoint_in_flight_does_not_protect_work():
    # Compute 1000 s, snapshot, then a 500 s background write. A failure 100 s into the write
    # loses everything since the start (no checkpoint completed); one 600 s after the snapshot
    # loses only the 600 s since it. The snapshot is 0.28 GB per GPU at 25 GB/s.
    ckpt = {"interval": 1000, "mode": "async", "write_s": 500, "reload_s": 30}
    job = one_node_job("a", 20000, checkpoint=ckpt)
    first = math.ceil(1000 / STEP_S - 1e-9) * STEP_S  # compute to the first checkpoint
    start = 200.0  # start-up
    fac, res = injected(small(1, [job]), [])
    snap = fac.jobs[0].checkpoint_cost_s()
    t_snap_end = start + first + snap
    for after, lost_compute in ((100.0, first + 100.0), (600.0, 600.0)):
        _, res = injected(small(1, [job]), [(t_snap_end + after, "p", 0, "software", 0.0)])
        j = res.summary["training"]["a"]
        assert j["interruptions"] == 1
        assert j["lost_work_h"] == pytest.approx(lost_compute / 3600, rel=1e-9)
        assert res.summary["ledger_gpu_h"]["lost_work"] == pytest.approx(
            8 * lost_compute / 3600, rel=1e-9)


def test_a_spare_replaces_a_failed_node_at_once_and_without_one_the_job_waits():
    job = one_node_job("a", 30000, checkpoint={"interval": 3000, "write_s": 10, "reload_s": 30})
    # 2 nodes: the job on one, a spare on the other.
    _, res = injected(small(2, [job], spares=1), [(5000.0, "p", 0, "gpu", 7200.0)])
    j = res.summary["training"]["a"]
    assert res.summary["ledger_gpu_h"]["queued"] == 0
    assert j["recovery_h"] == pytest.approx((200 + 100 + 200 + 30) / 3600, rel=1e-9)
    # Without a spare the job holds nothing (its only node is down) until the repair.
    _, res = injected(small(1, [job]), [(5000.0, "p", 0, "gpu", 7200.0)])
    j2 = res.summary["training"]["a"]
    assert res.summary["ledger_gpu_h"]["down"] == pytest.approx(8 * 2, rel=1e-9)
    assert j2["finished_at_s"] - j["finished_at_s"] == pytest.approx(7200 - 100, rel=1e-6)
    # With two nodes the job keeps the healthy one while it waits: that is the `queued` bucket.
    two = one_node_job("b", 30000, parallel={"dp": 16}, global_batch_seqs=16,
                       checkpoint={"interval": 3000, "write_s": 10, "reload_s": 30})
    _, res = injected(small(2, [two]), [(5000.0, "p", 1, "hbm", 7200.0)])
    assert res.summary["ledger_gpu_h"]["queued"] == pytest.approx(8 * (7200 - 100) / 3600,
                                                                   rel=1e-9)


def test_max_restarts_ends_the_job_and_frees_its_nodes():
    job = one_node_job("a", 30000, max_restarts=1)
    _, res = injected(small(2, [job]), [(1000.0, "p", 0, "software", 0.0),
                                        (3000.0, "p", 0, "software", 0.0)])
    j = res.summary["training"]["a"]
    assert j["state"] == "failed" and j["restarts"] == 2
    assert j["finished_at_s"] == pytest.approx(3000.0)
    assert res.timeseries["allocated_gpus"].iloc[-1] == 0


def test_an_elastic_job_shrinks_instead_of_waiting_and_grows_back():
    # 4 nodes, dp 32 (8 replicas of 1 GPU per node... 4 nodes x 8 GPUs), min_dp 16.
    job = one_node_job("a", 40000, parallel={"dp": 32}, global_batch_seqs=32,
                       elastic={"min_dp": 16},
                       checkpoint={"interval": 2000, "write_s": 10, "reload_s": 30})
    _, res = injected(small(4, [job]), [(4000.0, "p", 2, "gpu", 10000.0)])
    j = res.summary["training"]["a"]
    ev = res.events[res.events["job"] == "a"]
    resizes = ev[ev["event"] == "resize"]["time_s"].tolist()
    assert len(resizes) == 2  # down to 24 on 3 nodes, back to 32 after the repair
    assert resizes[0] == pytest.approx(4000.0 + 100)  # after detection
    assert resizes[1] > 4000.0 + 10000.0
    assert res.summary["ledger_gpu_h"]["queued"] == 0
    assert j["dp"] == 32 and j["state"] == "finished"


def test_preemption_checkpoints_then_yields_or_kills():
    low = one_node_job("low", 50000, priority=0, parallel={"dp": 16}, global_batch_seqs=16,
                       checkpoint={"interval": 20000, "write_s": 100, "reload_s": 30})
    high = one_node_job("high", 5000, priority=5, submit_at=3000, parallel={"dp": 16},
                        global_batch_seqs=16)
    sched = {"policy": "priority", "preemption": True, "preemption_grace_s": 300}
    res = af.run(small(2, [low, high], scheduler=sched)).summary
    lo, hi = res["training"]["low"], res["training"]["high"]
    assert lo["preemptions"] == 1 and lo["lost_work_h"] == 0  # the 100 s write fits the grace
    assert hi["started_at_s"] == pytest.approx(3000 + 100)
    assert lo["state"] == hi["state"] == "finished"
    assert lo["finished_at_s"] > hi["finished_at_s"]
    # A grace shorter than the write: killed, it loses the 2,800 s it computed.
    res = af.run(small(2, [low, high], scheduler={**sched, "preemption_grace_s": 50})).summary
    lo, hi = res["training"]["low"], res["training"]["high"]
    assert hi["started_at_s"] == pytest.approx(3000)
    assert lo["lost_work_h"] == pytest.approx((3000 - 200) / 3600, rel=1e-6)


def test_backfill_starts_a_short_job_that_does_not_delay_the_head():
    # 4 nodes: 'big' holds 3 for ~10,000 s; 'wide' (4 nodes) must wait for it. 'short' (1 node,
    # ~2,000 s) fits now and ends before 'wide' could start: backfilled. 'long' (1 node,
    # ~50,000 s) would delay 'wide': it waits under EASY and under strict priority alike.
    def j(name, nodes, solve, submit, prio):
        return one_node_job(name, solve, submit_at=submit, priority=prio,
                            parallel={"dp": 8 * nodes}, global_batch_seqs=8 * nodes)
    jobs = [j("big", 3, 10000, 0, 1), j("wide", 4, 3000, 10, 9), j("long", 1, 50000, 20, 5),
            j("short", 1, 2000, 30, 0)]
    easy = af.run(small(4, jobs, scheduler={"policy": "priority-backfill"})).summary["training"]
    strict = af.run(small(4, jobs, scheduler={"policy": "priority"})).summary["training"]
    assert easy["short"]["started_at_s"] == pytest.approx(30)
    assert easy["wide"]["started_at_s"] == pytest.approx(easy["big"]["finished_at_s"])
    assert easy["long"]["started_at_s"] >= easy["wide"]["finished_at_s"] - 1e-6
    assert strict["short"]["started_at_s"] >= strict["long"]["started_at_s"]


# --- invariants under random failures ------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    spares=st.integers(0, 2),
    mode=st.sampled_from(["sync", "async"]),
    elastic=st.booleans(),
    policy=st.sampled_from(["priority", "priority-backfill"]),
)
def test_ledger_conserves_under_failures(seed, spares, mode, elastic, policy):
    ckpt = {"interval": "young-daly", "mode": mode}
    jobs = [
        one_node_job("a", 40000, parallel={"dp": 32}, global_batch_seqs=32, checkpoint=ckpt,
                     elastic={"min_dp": 8} if elastic else None, priority=1,
                     data={"source": "storage", "bytes_per_token": 2000}),
        one_node_job("b", 20000, parallel={"dp": 16}, global_batch_seqs=16, checkpoint=ckpt,
                     submit_at=5000, priority=4, data={"source": "storage"}),
        one_node_job("c", 8000, submit_at=9000, checkpoint={"interval": "1h", "mode": mode}),
    ]
    sc = small(8, jobs, spares=spares, seed=seed, scheduler={"policy": policy,
                                                            "preemption": True})
    sc["cluster"]["storage"] = {"read_gb_s": 5, "write_gb_s": 2}
    sc["failures"] = {"node_mtbf_h": 30, "repair_h": {"kind": "lognormal", "median": 2,
                                                      "sigma": 1}}
    fac = Factory(af.load(sc))
    seen: list[np.ndarray] = []

    def watch():
        while True:
            seen.append(fac.cluster.pools["p"].owner.copy())
            yield fac.env.timeout(600)

    fac.env.process(watch())
    res = assemble(fac.run())
    s = res.summary
    assert sum(s["ledger_gpu_h"].values()) == pytest.approx(64 * 72, rel=1e-9)
    assert all(v >= -1e-9 for v in s["ledger_gpu_h"].values())
    for owner in seen:
        for o in np.unique(owner[owner >= 0]):  # a job never holds more than its gang
            assert np.count_nonzero(owner == o) <= fac.jobs[o].nodes_for(
                fac.jobs[o].spec.parallel.dp)
    for name, j in s["training"].items():
        assert j["tokens_trained"] <= j["tokens_target"], name
        if j["ettr"] is not None:
            assert 0 <= j["ettr"] <= 1 + 1e-9, name


def test_failures_are_reproducible_and_tiers_agree():
    sc = daly_scenario(20, 2.0, 1800, 300, 600, 20 * 1800, seed=3)
    a, b = af.run(sc), af.run(sc)
    assert summary_json(a.summary) == summary_json(b.summary)
    c = af.run({**sc, "seed": 4})
    assert summary_json(a.summary) != summary_json(c.summary)
    # The step tier (one event per step) on a shorter run of a few jobs.
    short = daly_scenario(4, 1.0, 1800, 300, 600, 4 * 1800, seed=3)
    fast = af.run(short).summary
    step = af.run({**short, "fidelity": "step"}).summary
    assert sum(j["interruptions"] for j in fast["training"].values()) > 0
    for name, j in fast["training"].items():
        assert step["training"][name]["finished_at_s"] == pytest.approx(j["finished_at_s"],
                                                                        rel=1e-9)
        assert step["training"][name]["interruptions"] == j["interruptions"]


def test_async_young_daly_is_floored_at_the_write_time():
    # One write in flight: an async interval shorter than the write only makes the job wait.
    sc = {
        "name": "yd-async", "duration": "6h",
        "cluster": {"node_pools": [{"name": "p", "nodes": 64, "gpu": "H100-SXM"}],
                    "storage": {"read_gb_s": 400, "write_gb_s": 2}},
        "failures": {"node_mtbf_h": 10},
        "training": [{"name": "a", "model": "llama3-70b", "tokens": 1e12, "seq_len": 8192,
                      "global_batch_seqs": 64, "parallel": {"tp": 8, "pp": 4, "dp": 2},
                      "checkpoint": {"interval": "young-daly", "mode": "async"}}],
    }
    fac = Factory(af.load(sc))
    job = fac.jobs[0]
    write = job.checkpoint_bytes / 2e9
    snapshot = job.checkpoint_bytes / 64 / 25e9
    daly = float(daly_interval_s(snapshot, job_mtbf_s(10 * 3600, 8)))
    assert daly < write  # the case the floor is for
    assert job.interval_s() == pytest.approx(write)
    res = assemble(fac.run()).summary
    # Snapshots are all it stalls for, and it never waits long for a write: < 1% of its time.
    assert res["ledger_gpu_h"]["checkpoint"] < 0.01 * 64 * 6


def test_an_elastic_job_short_of_min_dp_waits_for_min_dp_only():
    # dp 32 on 4 nodes, min_dp 24 (3 nodes). Two nodes fail: with 2 it cannot run, so it waits,
    # holding them (queued), until the first repair gives it 3 nodes, then runs at dp 24.
    job = one_node_job("a", 40000, parallel={"dp": 32}, global_batch_seqs=96,
                       elastic={"min_dp": 24},
                       checkpoint={"interval": 2000, "write_s": 10, "reload_s": 30})
    _, res = injected(small(4, [job]), [(4000.0, "p", 1, "gpu", 3000.0),
                                        (4000.0, "p", 2, "gpu", 9000.0)])
    ev = res.events[res.events["job"] == "a"]
    first_resize = ev[ev["event"] == "resize"]["time_s"].iloc[0]
    assert first_resize == pytest.approx(4000.0 + 3000.0)  # the first repair, not the second
    assert res.summary["ledger_gpu_h"]["queued"] == pytest.approx(2 * 8 * (3000 - 100) / 3600,
                                                                   rel=1e-9)
    assert res.summary["training"]["a"]["dp"] == 32  # grown back after the second repair
