"""The engine: scheduling, placement, storage sharing, the ledger, fidelity tiers, determinism."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aifactory_sim as af
from aifactory_sim.engine.cluster import SPARE, ClusterState
from aifactory_sim.engine.factory import Factory, rng_for
from aifactory_sim.engine.storage import max_min_share
from aifactory_sim.results import summary_json
from aifactory_sim.runner import assemble

SCENARIOS = sorted((Path(__file__).parents[1] / "aifactory_sim" / "scenarios").glob(
    "*.yaml"))


def job(name: str, nodes: int, **kw: object) -> dict:
    """An 8B job on `nodes` 8-GPU nodes (pure data parallel)."""
    base = {
        "name": name, "model": "llama3-8b", "tokens": 2e9, "seq_len": 4096,
        "global_batch_seqs": 8 * nodes * 4, "parallel": {"tp": 1, "pp": 1, "dp": 8 * nodes},
    }
    base.update(kw)
    return base


def scenario(jobs: list[dict], nodes: int = 32, **kw: object) -> dict:
    base = {
        "name": "t", "seed": 3, "duration": "2d",
        "cluster": {
            "node_pools": [{"name": "p", "nodes": nodes, "gpu": "H100-SXM"}],
            "fabric": {"nodes_per_leaf": 8, "oversubscription": 4.0},
            "storage": {"read_gb_s": 100, "write_gb_s": 50},
        },
        "training": jobs,
    }
    base.update(kw)
    return base


def ledger_total_h(res: af.results.Results) -> float:  # type: ignore[name-defined]
    return sum(res.summary["ledger_gpu_h"].values())


# --- conservation and invariants ---------------------------------------------------------


#: Bundled scenarios run shortened here: a day of serving-frontier.yaml in the fast tier is 20
#: million requests (some 6 minutes; tests/test_golden.py runs its day in the fluid tier).
SHORTENED = {"serving-frontier": {"duration": "15m"}, "chat-prefix-cache": {"duration": "2h"},
             "hybrid-sovereign": {"duration": "3d"}}


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_bundled_scenario_runs_and_its_ledger_sums_to_gpus_times_duration(path: Path):
    res = af.run(af.load(path, SHORTENED.get(path.stem)))
    for site in getattr(res, "sites", {"": res}).values():  # an estate: each site's ledger
        check_ledger(site)


def check_ledger(res: af.results.Results) -> None:  # type: ignore[name-defined]
    s = res.summary
    expected_h = s["gpus"] * s["duration_s"] / 3600.0
    # Buckets come from independent sources (job accounting vs. the allocation integral), so
    # they only add up if every allocated GPU-second was booked once: 1e-9 relative.
    assert ledger_total_h(res) == pytest.approx(expected_h, rel=1e-9)
    assert all(v >= 0 for v in s["ledger_gpu_h"].values())
    assert s["ledger_gpu_h"]["training"] > 0 or not s["training"]
    for name, j in s["training"].items():
        assert j["tokens_trained"] <= j["tokens_target"], name


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([1, 2, 4, 8, 16]), min_size=1, max_size=6),
    submits=st.lists(st.floats(0, 30 * 3600), min_size=6, max_size=6),
    policy=st.sampled_from(["fifo", "priority"]),
    placement=st.sampled_from(["pack", "spread"]),
)
def test_ledger_conserves_and_no_node_has_two_owners(sizes, submits, policy, placement):
    jobs = [job(f"j{i}", n, submit_at=submits[i], priority=i % 3, tokens=5e8 * n,
                data={"source": "storage"} if i % 2 else {"source": "synthetic"})
            for i, n in enumerate(sizes)]
    sc = af.load(scenario(jobs, scheduler={"policy": policy, "placement": placement}))
    fac = Factory(sc)
    owners_seen: list[np.ndarray] = []

    def watch():
        while True:
            owners_seen.append(fac.cluster.pools["p"].owner.copy())
            yield fac.env.timeout(1800)

    fac.env.process(watch())
    res = assemble(fac.run())
    assert ledger_total_h(res) == pytest.approx(32 * 8 * 48, rel=1e-9)
    for owner in owners_seen:
        held = {o: int(np.count_nonzero(owner == o)) for o in np.unique(owner) if o >= 0}
        for o, count in held.items():  # a job holds exactly its gang, never part of another's
            assert count == fac.jobs[o].nodes
    assert (res.timeseries["allocated_gpus"] <= 32 * 8).all()


def test_spare_nodes_are_never_allocated():
    sc = af.load(scenario([job("a", 30)], nodes=32, cluster={
        "node_pools": [{"name": "p", "nodes": 32, "gpu": "H100-SXM"}], "spare_nodes": 2}))
    fac = Factory(sc)
    fac.env.run(until=1.0)
    owner = fac.cluster.pools["p"].owner
    assert np.count_nonzero(owner == SPARE) == 2
    assert np.count_nonzero(owner >= 0) == 30
    # 31 nodes would need a spare: refused up front with the schedulable count.
    with pytest.raises(af.ScenarioError, match="= 240 schedulable GPUs"):
        af.load(scenario([job("a", 31)], cluster={
            "node_pools": [{"name": "p", "nodes": 32, "gpu": "H100-SXM"}], "spare_nodes": 2}))


# --- timing against closed forms ---------------------------------------------------------


def test_a_lone_job_finishes_after_steps_times_step_time():
    sc = af.load(scenario([job("a", 8, submit_at="1h", tokens=3e9)]))
    res = af.run(sc)
    j = res.summary["training"]["a"]
    spec = sc.training[0]
    steps = math.ceil(3e9 / (spec.batch_seqs * spec.seq_len))
    assert j["steps_total"] == steps
    assert j["finished_at_s"] == pytest.approx(3600 + steps * j["step_time_s"], rel=1e-12)
    assert j["tokens_trained"] == 3e9
    # Training GPU-hours equal the job's GPUs x its run time (no stall: synthetic data).
    assert res.summary["ledger_gpu_h"]["training"] == pytest.approx(
        64 * steps * j["step_time_s"] / 3600, rel=1e-9)


def test_fifo_queue_is_strict_and_priority_reorders():
    jobs = [job("big", 32, tokens=1e9), job("wide", 24, submit_at=60, tokens=1e9),
            job("small", 4, submit_at=120, tokens=1e9, priority=9)]
    fifo = af.run(af.load(scenario(jobs))).summary["training"]
    # 'wide' waits for 'big'; 'small' could fit beside 'wide' but may not pass it (no backfill).
    assert fifo["wide"]["started_at_s"] == pytest.approx(fifo["big"]["finished_at_s"])
    assert fifo["small"]["started_at_s"] == pytest.approx(fifo["big"]["finished_at_s"])
    prio = af.run(af.load(scenario(jobs, scheduler={"policy": "priority"}))).summary["training"]
    # By priority, 'small' (9) jumps ahead of 'wide' (0) and starts with it.
    assert prio["small"]["started_at_s"] == pytest.approx(prio["big"]["finished_at_s"])
    assert prio["small"]["queued_s"] > 0
    assert prio["wide"]["started_at_s"] == pytest.approx(prio["big"]["finished_at_s"])


def test_pack_keeps_a_gang_in_one_leaf_and_spread_pays_the_spine():
    # 8 nodes per leaf, oversubscription 64: a ring spanning leaves puts one flow on each leaf,
    # which gets 8/64 of a node's worth of up-links: slowdown F x 64 / 8 with F = 1.
    jobs = [job("a", 8, tokens=1e9)]
    fab = {"nodes_per_leaf": 8, "oversubscription": 64.0}
    pools = [{"name": "p", "nodes": 32, "gpu": "H100-SXM"}]
    packed = af.run(af.load(scenario(jobs, cluster={"node_pools": pools, "fabric": fab})))
    spread = af.run(af.load(scenario(jobs, scheduler={"placement": "spread"},
                                     cluster={"node_pools": pools, "fabric": fab})))
    a_packed, a_spread = packed.summary["training"]["a"], spread.summary["training"]["a"]
    assert (a_packed["leaves"], a_packed["fabric_slowdown_max"]) == (1, 1.0)
    assert (a_spread["leaves"], a_spread["fabric_slowdown_max"]) == (4, 8.0)
    assert a_spread["step_time_s"] > a_packed["step_time_s"]


def _step_time(sc: af.Scenario, name: str, slowdown: float) -> float:
    from aifactory_sim.spec.scenario import job_estimate

    spec = next(j for j in sc.training if j.name == name)
    return float(job_estimate(spec, sc.pool(spec.pool), cross_leaf_slowdown=slowdown).step_time_s)


@pytest.mark.parametrize("placement", ["pack", "spread"])
def test_jobs_sharing_leaf_uplinks_share_their_bandwidth(placement):
    # 4 leaves of 4 nodes, oversubscription 16: a leaf's up-links carry a quarter of one node's
    # NICs. Spread, each 8-node job has 2 nodes on every leaf and one ring flow through each:
    # alone a flow runs 16 x 1 / 4 = 4x slower than its NICs, and while the other job runs the
    # two flows share the leaf: 16 x 2 / 4 = 8x. Packed, each job holds two whole leaves and
    # the flows never meet: 4x alone and together. The step time follows the share (closed
    # form: the step-time model at that slowdown, to 1e-9 relative).
    fab = {"nodes_per_leaf": 4, "oversubscription": 16.0}
    pools = [{"name": "p", "nodes": 16, "gpu": "H100-SXM"}]
    jobs = [job("a", 8, tokens=2e8), job("b", 8, tokens=2e8)]
    sc = af.load(scenario(jobs, scheduler={"placement": placement},
                          cluster={"node_pools": pools, "fabric": fab}))
    res = af.run(sc)
    together = 8.0 if placement == "spread" else 4.0
    for name in "ab":
        s = res.summary["training"][name]
        assert s["fabric_slowdown_max"] == together
        assert s["step_time_s"] == pytest.approx(_step_time(sc, name, together), rel=1e-9)
    # Alone, a job sees only its own flow.
    alone = af.run(af.load(scenario([jobs[0]], scheduler={"placement": placement},
                                    cluster={"node_pools": pools, "fabric": fab})))
    a_alone = alone.summary["training"]["a"]
    assert a_alone["fabric_slowdown_max"] == 4.0
    assert a_alone["step_time_s"] == pytest.approx(_step_time(sc, "a", 4.0), rel=1e-9)


def test_a_job_speeds_up_when_its_leaf_neighbour_ends():
    # Spread, a short job b shares every leaf with a long job a, then ends: a runs at 8x while
    # both run and 4x after; its mean step time lies strictly between the two closed forms.
    fab = {"nodes_per_leaf": 4, "oversubscription": 16.0}
    pools = [{"name": "p", "nodes": 16, "gpu": "H100-SXM"}]
    jobs = [job("a", 8, tokens=4e8), job("b", 8, tokens=5e7)]
    sc = af.load(scenario(jobs, scheduler={"placement": "spread"},
                          cluster={"node_pools": pools, "fabric": fab}))
    a = af.run(sc).summary["training"]["a"]
    assert _step_time(sc, "a", 4.0) < a["step_time_s"] < _step_time(sc, "a", 8.0)


def test_a_full_bisection_fabric_never_slows_a_ring():
    fab = {"nodes_per_leaf": 4, "oversubscription": 1.0}
    pools = [{"name": "p", "nodes": 16, "gpu": "H100-SXM"}]
    jobs = [job("a", 8, tokens=2e8), job("b", 8, tokens=2e8)]
    res = af.run(af.load(scenario(jobs, scheduler={"placement": "spread"},
                                  cluster={"node_pools": pools, "fabric": fab})))
    assert all(res.summary["training"][n]["fabric_slowdown_max"] == 1.0 for n in "ab")


def test_cluster_pack_is_best_fit():
    sc = af.load(scenario([], nodes=32))
    cl = ClusterState(sc)
    a = cl.allocate("p", 6, owner=0, placement="pack")  # leaf 0 keeps 2 free
    b = cl.allocate("p", 2, owner=1, placement="pack")  # best fit: the 2 left in leaf 0
    assert a is not None and b is not None
    assert a.leaves(cl) == b.leaves(cl) == 1
    assert set(cl.pools["p"].leaf[b.nodes]) == set(cl.pools["p"].leaf[a.nodes])
    c = cl.allocate("p", 20, owner=2, placement="pack")  # three leaves at least
    assert c is not None and c.leaves(cl) == 3
    assert cl.allocate("p", 5, owner=3, placement="pack") is None  # only 4 free
    cl.release(c, owner=2)
    assert c.nodes.size == 0 and cl.pools["p"].free_nodes == 24
    with pytest.raises(RuntimeError):  # nodes held by job 1 are not job 0's to give back
        cl.release(b, owner=0)


# --- storage sharing ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(capacity=st.floats(1, 1e4), caps=st.lists(st.floats(0.1, 1e4), min_size=1, max_size=12))
def test_max_min_share_is_fair_and_feasible(capacity, caps):
    rates = max_min_share(capacity, np.array(caps))
    assert np.all(rates <= np.array(caps) * (1 + 1e-12))
    assert rates.sum() <= capacity * (1 + 1e-9)
    # Max-min: a flow below its cap gets at least as much as every other flow.
    unsaturated = rates < np.array(caps) * (1 - 1e-9)
    if unsaturated.any():
        assert rates[unsaturated].min() >= rates.max() * (1 - 1e-9)
        assert rates.sum() == pytest.approx(capacity, rel=1e-9)


def test_a_starved_data_loader_stalls_and_the_ledger_shows_it():
    # 4,000 bytes per token (e.g. video frames) through 1 GB/s cannot feed an 8B step.
    heavy = job("a", 4, tokens=2e8, data={"source": "storage", "bytes_per_token": 4000})
    sc = scenario([heavy], cluster={
        "node_pools": [{"name": "p", "nodes": 32, "gpu": "H100-SXM"}],
        "storage": {"read_gb_s": 1, "write_gb_s": 1}})
    res = af.run(af.load(sc))
    j = res.summary["training"]["a"]
    spec = af.load(sc).training[0]
    load_s = spec.batch_seqs * spec.seq_len * 4000 / 1e9
    assert j["step_time_s"] == pytest.approx(load_s, rel=1e-12)  # the loader sets the pace
    stall_h = res.summary["ledger_gpu_h"]["data_stall"]
    busy_h = stall_h + res.summary["ledger_gpu_h"]["training"]
    assert 0 < stall_h < busy_h
    assert busy_h == pytest.approx(32 * j["steps_total"] * load_s / 3600, rel=1e-9)


def test_storage_share_changes_reprice_running_jobs_and_step_tier_agrees():
    jobs = [job("a", 4, tokens=4e9, data={"source": "storage", "bytes_per_token": 3000}),
            job("b", 4, submit_at="20min", tokens=1e9,
                data={"source": "storage", "bytes_per_token": 3000}),
            job("c", 8, submit_at="40min", tokens=2e9)]
    sc = scenario(jobs, cluster={
        "node_pools": [{"name": "p", "nodes": 32, "gpu": "H100-SXM"}],
        "storage": {"read_gb_s": 2, "write_gb_s": 1}})
    fast = af.run(af.load(sc)).summary
    step = af.run(af.load({**sc, "fidelity": "step"})).summary
    for name in ("a", "b", "c"):
        f, s = fast["training"][name], step["training"][name]
        assert f["finished_at_s"] == pytest.approx(s["finished_at_s"], rel=1e-9)
        assert f["tokens_trained"] == s["tokens_trained"]
    for bucket, hours in fast["ledger_gpu_h"].items():
        assert hours == pytest.approx(step["ledger_gpu_h"][bucket], rel=1e-9, abs=1e-9)
    # While b reads too, a gets half the storage: it finishes later than alone.
    alone = af.run(af.load({**sc, "training": [jobs[0]]})).summary["training"]["a"]
    assert fast["training"]["a"]["finished_at_s"] > alone["finished_at_s"]


# --- reproducibility ---------------------------------------------------------------------


def test_same_scenario_and_seed_give_a_byte_identical_summary():
    sc = af.load(SCENARIOS[0])
    first = summary_json(af.run(sc).summary)
    second = summary_json(af.run(copy.deepcopy(sc)).summary)
    assert first == second
    assert "wall" not in first


def test_named_random_streams_do_not_shift_each_other():
    a1 = rng_for(42, "failures").random(4)
    a2 = rng_for(42, "failures").random(4)
    b = rng_for(42, "arrivals").random(4)
    assert np.array_equal(a1, a2)
    assert not np.allclose(a1, b)
    assert not np.allclose(a1, rng_for(43, "failures").random(4))


def test_horizon_cuts_a_running_job_and_books_its_partial_progress():
    sc = af.load(scenario([job("a", 8, tokens=1e13)], duration="6h"))
    res = af.run(sc)
    j = res.summary["training"]["a"]
    assert j["state"] == "running" and j["finished_at_s"] is None
    assert j["steps_done"] == math.floor(6 * 3600 / j["step_time_s"])
    assert res.summary["ledger_gpu_h"]["training"] == pytest.approx(64 * 6, rel=1e-9)


def test_plots_draw_the_ledger_and_the_allocation():
    res = af.run(af.load(scenario([job("a", 8, tokens=2e9), job("b", 32, tokens=2e9)])))
    fig = res.plot.ledger()
    bars = fig.axes[0].patches
    ledger = res.summary["ledger_gpu_h"]
    nonzero = [b for b, v in ledger.items() if v > 0 and b != "training"]
    assert len(bars) == len(nonzero) + 2  # total, each overhead, training
    assert bars[0].get_height() == pytest.approx(sum(ledger.values()))
    assert bars[-1].get_height() == pytest.approx(ledger["training"])
    fig2 = res.plot.allocation()
    assert fig2.axes[0].get_ylim()[1] >= res.summary["gpus"]


def test_jobs_started_together_share_storage_from_their_first_step():
    # Regression: a job whose share changed before its process resumed was interrupted early.
    jobs = [job(f"j{i}", 1, tokens=5e8, data={"source": "storage", "bytes_per_token": 3000})
            for i in range(4)]
    sc = scenario(jobs, cluster={"node_pools": [{"name": "p", "nodes": 8, "gpu": "H100-SXM"}],
                                 "storage": {"read_gb_s": 0.4, "write_gb_s": 1}})
    res = af.run(af.load(sc)).summary["training"]
    finish = [j["finished_at_s"] for j in res.values()]
    assert max(finish) == pytest.approx(min(finish), rel=1e-12)  # identical jobs, fair shares
    spec = af.load(sc).training[0]
    load_s = spec.batch_seqs * spec.seq_len * 3000 / 0.1e9  # a quarter of 0.4 GB/s each
    assert res["j0"]["step_time_s"] == pytest.approx(load_s, rel=1e-12)
