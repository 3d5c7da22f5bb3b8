"""The SLO planner autoscaler: its decision rule, the per-replica throughput within the SLO it
sizes against (from the kernels), and a run that it sizes."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest

import aifactory_sim as af
from aifactory_sim.engine.autoscaler import PlannerPolicy, policy_for
from aifactory_sim.engine.factory import Factory
from aifactory_sim.engine.fleet import replica_sizing, slo_capacity_rps
from aifactory_sim.spec.autoscaling import Planner


def test_planner_rule():
    """ceil(rate / (capacity x utilization)) within the bounds; up at once, down only to the
    highest proposal of the stabilisation window; no capacity: max_replicas under load."""
    p = policy_for(Planner(max_replicas=10, min_replicas=1, utilization=0.5,
                           scale_down_stabilization_s=100), capacity_rps=4.0)
    assert isinstance(p, PlannerPolicy)
    assert p.proposal(0.0) == 1
    assert p.proposal(7.9) == 4 and p.proposal(8.0) == 4 and p.proposal(8.1) == 5
    assert p.proposal(1e6) == 10
    assert p.update(0.0, 1, 10.0) == 5  # up at once
    assert p.update(60.0, 5, 2.0) == 5  # down held by the window (proposal 5 at t = 0)
    assert p.update(120.0, 5, 2.0) == 1  # the window forgot it
    none = PlannerPolicy(Planner(max_replicas=7), capacity_rps=0.0)
    assert none.proposal(1.0) == 7 and none.proposal(0.0) == 1


BASE: dict[str, Any] = {
    "name": "planned", "seed": 2, "duration": "30m",
    "cluster": {"node_pools": [{"name": "h100", "nodes": 2, "gpu": "H100-SXM"}]},
    "inference": [{
        "name": "chat", "model": "llama3-8b", "precision": "fp8",
        "cold_start": {"container_s": 30, "weights_s": 10},
        "traffic": {"kind": "poisson", "rate_rps": 30},
        "prompt_tokens": {"kind": "lognormal", "median": 1000, "sigma": 0.7, "max": 6000},
        "output_tokens": {"kind": "geometric", "mean": 200},
        "slo": {"ttft_s": 1.0, "tpot_s": 0.02, "percentile": 90},
        "autoscaler": {"kind": "planner", "min_replicas": 1, "max_replicas": 16, "sync_s": 30},
    }],
}


def _with(**fields: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d["inference"][0].update(fields)
    return d


def _capacity(d: dict[str, Any], role: str, lengths: tuple[float, float, float]) -> float:
    sc = af.load(d)
    svc = sc.inference[0]
    sz = replica_sizing(svc, sc.cluster.node_pools[0], 1.0)
    return slo_capacity_rps(svc, sz.table, sz.kv_tokens, role, lengths)


def test_decode_capacity_is_the_best_batch_within_tpot():
    """By hand over every batch size: the most tokens/s whose iteration meets the TPOT target,
    per request's output after its first token; a tighter target never carries more."""
    d = _with()
    sc = af.load(d)
    svc = sc.inference[0]
    sz = replica_sizing(svc, sc.cluster.node_pools[0], 1.0)
    p, out = 1000.0, 200.0
    ctx = p + out / 2
    best = 0.0
    for n in range(1, 257):
        t = sz.table.decode_run(n, n * ctx)[0]
        if t <= 0.02:
            best = max(best, n / t)
    got = slo_capacity_rps(svc, sz.table, sz.kv_tokens, "decode", (p, 0.0, out))
    assert got == pytest.approx(best / (out - 1), rel=1e-12)
    tight = _capacity(_with(slo={"tpot_s": 0.008}), "decode", (p, 0.0, out))
    assert 0 < tight < got
    assert _capacity(_with(slo={"tpot_s": 1e-4}), "decode", (p, 0.0, out)) == 0.0


def test_prefill_capacity_and_the_ttft_bound():
    """A full token budget of mean prompts per iteration; cached tokens make a prompt cheaper;
    a TTFT target below one prompt's prefill leaves no capacity; both roles share the time."""
    d = _with()
    pre = _capacity(d, "prefill", (1000.0, 0.0, 200.0))
    assert pre > 0
    assert _capacity(d, "prefill", (500.0, 500.0, 200.0)) > pre
    assert _capacity(_with(slo={"ttft_s": 1e-4}), "prefill", (1000.0, 0.0, 200.0)) == 0.0
    dec = _capacity(d, "decode", (1000.0, 0.0, 200.0))
    both = _capacity(d, "both", (1000.0, 0.0, 200.0))
    assert both == pytest.approx(1.0 / (1.0 / pre + 1.0 / dec), rel=1e-12)


def test_a_planned_service_holds_the_replicas_its_load_needs():
    """Poisson 30 requests/s for half an hour: after the first decisions the planner keeps
    ceil(30 / (capacity x 0.8)) replicas (the mean within half a replica of it), and the SLO
    holds for at least 90 % of the requests."""
    d = _with()
    res = af.run(af.load(d))
    s = res.summary["inference"]["chat"]
    cap = Factory(af.load(d)).services[0].capacity_rps
    want = math.ceil(30.0 / (cap * 0.8))
    assert 2 <= want <= 16
    rows = res.services[res.services["time_s"] > 300]
    assert np.abs(rows["desired"] - want).max() <= 1
    assert s["replicas_mean"] == pytest.approx(want, abs=0.5)
    assert s["slo_attainment"] >= 0.9


def test_the_planner_needs_an_slo():
    with pytest.raises(af.ScenarioError) as err:
        af.load(_with(slo=None))
    assert "inference.0" in str(err.value) and "planner" in str(err.value)
