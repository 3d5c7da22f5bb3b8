"""Multi-turn conversations: the drawn turns, the closed loop of answers and think times, the
cache of a conversation's context (its blocks, behind the system prompt's), prefix-aware
routing, fast against step, and the fluid tier against fast."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

import aifactory_sim as af
from aifactory_sim.engine.factory import Factory
from aifactory_sim.engine.replica import BLOCK_TOKENS
from aifactory_sim.engine.traffic import draw_conversations
from aifactory_sim.spec.serving import Conversations, LognormalTokens
from aifactory_sim.spec.traces import Requests


def test_drawn_conversations_carry_their_history():
    """20,000 arrivals thinned to conversations: first turns about 1 in turns_mean (within 3 %,
    about 6 standard deviations), Geometric turns of mean turns_mean (within 3 %), think
    times of the stated mean (within 3 %), and every later turn's prompt the turns before it
    (prompt and answer) plus its own tokens, exactly."""
    rng = np.random.default_rng(3)
    n = 20_000
    dist = LognormalTokens(kind="lognormal", median=200, sigma=0.7)
    reqs = Requests(np.sort(rng.uniform(0, 1000, n)), rng.integers(1, 500, n),
                    rng.integers(1, 300, n))
    conv = Conversations(turns_mean=3.0, think_time_s=12.0)
    t = draw_conversations(conv, reqs, dist, dist, conversation_rng=np.random.default_rng(1),
                           prompt_rng=np.random.default_rng(2),
                           output_rng=np.random.default_rng(4))
    first = t.turn == 1
    c = int(first.sum())
    assert c == pytest.approx(n / 3.0, rel=0.03)
    assert np.array_equal(t.conversation[:c], np.arange(c)) and first[:c].all()
    assert not first[c:].any() and np.isnan(t.arrival_s[c:]).all()
    assert np.all(np.diff(t.arrival_s[:c]) >= 0)
    assert t.turn.size / c == pytest.approx(3.0, rel=0.03)
    assert t.think_s[c:].mean() == pytest.approx(12.0, rel=0.03)
    assert (t.think_s[:c] == 0).all()
    # walk every conversation along next_turn
    for k in range(c):
        rid, total, j = k, 0, 1
        while rid >= 0:
            assert t.conversation[rid] == k and t.turn[rid] == j
            own = t.prompt_tokens[rid] - total
            assert own >= 1
            total = t.prompt_tokens[rid] + t.output_tokens[rid]
            rid, j = t.next_turn[rid], j + 1


BASE: dict[str, Any] = {
    "name": "chat", "seed": 3, "duration": "20m",
    "cluster": {"node_pools": [{"name": "h100", "nodes": 1, "gpu": "H100-SXM"}]},
    "inference": [{
        "name": "chat", "model": "llama3-8b", "precision": "fp8", "replicas": 4,
        "cold_start": {"container_s": 0, "weights_s": 0},
        "traffic": {"kind": "poisson", "rate_rps": 20},
        "system_prompts": {"count": 10, "tokens": 1000, "popularity": 0.5},
        "conversations": {"turns_mean": 4, "think_time_s": 20},
        "prompt_tokens": {"kind": "lognormal", "median": 300, "sigma": 0.8, "max": 4000},
        "output_tokens": {"kind": "geometric", "mean": 100},
    }],
}


def _with(duration: str = "20m", **fields: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d["duration"] = duration
    d["inference"][0].update(fields)
    return d


def _run(d: dict[str, Any]):
    res = af.run(af.load(d))
    return res, res.summary["inference"]["chat"]


def test_later_turns_come_a_think_time_after_the_answer():
    """The loop is closed: a later turn arrives exactly its think time after the answer to the
    turn before (the draws are the engine's own), and never before it."""
    d = _with()
    res, s = _run(d)
    req = res.requests.set_index("request")
    turns = Factory(af.load(d)).services[0].model.turns  # the run's own draws
    later = req[req["turn"] > 1]
    assert len(later) > 1000
    prev = {int(j): i for i, j in enumerate(turns.next_turn) if j >= 0}
    gaps = [
        (row.arrival_s - req.at[prev[rid], "finish_s"], turns.think_s[rid])
        for rid, row in later.iterrows()
    ]
    got, think = np.array(gaps).T
    np.testing.assert_allclose(got, think, rtol=0, atol=1e-9)
    assert s["conversations"]["later_turns"] == len(later)
    assert s["conversations"]["started"] == int((req["turn"] == 1).sum())


def test_a_later_turn_finds_its_conversation_cached():
    """With prefix-aware routing a later turn lands on the replica of the turn before and
    skips every whole block of that turn's prompt and answer (the last token generated is not
    yet in the cache): cached_tokens = floor((prompt + output - 1) / 16) x 16 of the turn
    before; or, when LRU evicted the conversation's blocks in the think time, its system
    prompt's whole blocks only (or nothing)."""
    res, s = _run(_with(router="prefix-aware", duration="5m"))
    req = res.requests.set_index("request")
    later = req[(req["turn"] > 1) & np.isfinite(req["admitted_s"])]
    prev_of = {}
    for rid, row in req.iterrows():
        prev_of[(row.conversation, row.turn)] = rid
    expect, got, same = [], [], []
    for rid, row in later.iterrows():
        p = prev_of[(row.conversation, row.turn - 1)]
        expect.append((req.at[p, "prompt_tokens"] + req.at[p, "output_tokens"] - 1)
                      // BLOCK_TOKENS * BLOCK_TOKENS)
        got.append(row.cached_tokens)
        same.append(req.at[p, "replica"] == row.replica)
    expect, got, same = map(np.asarray, (expect, got, same))
    assert same.mean() > 0.97
    system = 1000 // BLOCK_TOKENS * BLOCK_TOKENS
    hit = got > system
    assert np.array_equal(got[same & hit], expect[same & hit])
    assert set(np.unique(got[same & ~hit])) <= {0, system}
    assert (same & hit).mean() > 0.97
    assert s["conversations"]["later_turn_hit_rate"] == pytest.approx(hit.mean(), rel=1e-12)


def test_prefix_aware_routing_keeps_conversations_where_their_cache_is():
    """Against least-outstanding on the same load: later turns hit far more often, and TTFT
    falls with the prefill saved."""
    _, aware = _run(_with(router="prefix-aware"))
    _, plain = _run(_with())
    assert aware["conversations"]["later_turn_hit_rate"] > 0.95
    assert plain["conversations"]["later_turn_hit_rate"] < 0.6
    assert aware["prefix_cache"]["hit_rate_tokens"] > plain["prefix_cache"]["hit_rate_tokens"]
    assert aware["ttft_s"]["p50"] < 0.8 * plain["ttft_s"]["p50"]


def test_fast_equals_step_with_conversations_under_pressure():
    """Conversations, system prompts, prefix-aware routing and a KV cache small enough to
    evict and preempt: the same timestamps, cached tokens and preemptions in both tiers."""
    out = {}
    for tier in ("fast", "step"):
        d = _with(router="prefix-aware", gpu_memory_utilization=0.14, duration="4m",
                  traffic={"kind": "poisson", "rate_rps": 30})
        d["fidelity"] = tier
        out[tier] = _run(d)
    (fast, sf), (step, _) = out["fast"], out["step"]
    cols = ["arrival_s", "admitted_s", "first_token_s", "finish_s"]
    np.testing.assert_allclose(fast.requests[cols].to_numpy(), step.requests[cols].to_numpy(),
                               rtol=1e-9, atol=1e-9)
    for col in ("request", "cached_tokens", "preemptions", "replica"):
        assert fast.requests[col].equals(step.requests[col]), col
    assert sf["prefix_cache"]["evictions"] > 0 and sf["preemptions"] > 0


def test_without_the_cache_every_turn_prefills_its_history():
    res, s = _run(_with(prefix_cache={"enabled": False}, duration="5m"))
    assert (res.requests["cached_tokens"] == 0).all()
    assert s["prefix_cache"]["enabled"] is False
    assert s["conversations"]["later_turn_hit_rate"] == 0.0
    _, on = _run(_with(duration="5m"))
    assert on["ttft_s"]["p50"] < s["ttft_s"]["p50"]


@pytest.mark.parametrize("fields", [
    dict(router="prefix-aware", gpu_memory_utilization=0.5,
         conversations={"turns_mean": 4, "think_time_s": 30}),
    dict(router="round-robin", gpu_memory_utilization=0.5,
         conversations={"turns_mean": 4, "think_time_s": 10}),
])
def test_fluid_tier_models_conversations(fields):
    """An hour of chats on 4 replicas with the KV cache tight enough to evict: the fluid tier's
    modelled hit rates (Che's approximation in time over system prompts and conversations'
    contexts, docs/background/serving.md) against the fast tier's counted ones within 0.03
    (tokens) and 0.05 (later turns), TTFT and TPOT medians within 15 % (the fluid tier's
    tolerance)."""
    out = {}
    for tier in ("fast", "fluid"):
        d = _with(duration="1h", **fields)
        d["fidelity"] = tier
        out[tier] = _run(d)[1]
    fast, fluid = out["fast"], out["fluid"]
    assert fast["prefix_cache"]["evictions"] > 0
    assert fluid["prefix_cache"]["hit_rate_tokens"] == pytest.approx(
        fast["prefix_cache"]["hit_rate_tokens"], abs=0.03)
    assert fluid["conversations"]["later_turn_hit_rate"] == pytest.approx(
        fast["conversations"]["later_turn_hit_rate"], abs=0.05)
    assert 0.2 < fast["conversations"]["later_turn_hit_rate"] < 0.9
    for key in ("ttft_s", "tpot_s"):
        assert fluid[key]["p50"] == pytest.approx(fast[key]["p50"], rel=0.15), key


@pytest.mark.parametrize(("fields", "where"), [
    (dict(conversations={"turns_mean": 0.5, "think_time_s": 10}),
     "inference.0.conversations.turns_mean"),
    (dict(conversations={"turns_mean": 2, "think_time_s": -1}),
     "inference.0.conversations.think_time_s"),
    (dict(conversations={"turns_mean": 2, "think_time_s": 5, "turns": 3}),
     "inference.0.conversations.turns"),
    (dict(router="sticky"), "inference.0.router"),
])
def test_bad_fields_are_named(fields, where):
    with pytest.raises(af.ScenarioError) as err:
        af.load(_with(**fields))
    assert where in str(err.value)
