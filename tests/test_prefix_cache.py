"""Prefix caching of shared system prompts: the replica's LRU cache against Che's
approximation, the fast tier against the step tier with the cache under pressure, the cache
off against plain prompts, and the summary's accounting."""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest

import aifactory_sim as af
from aifactory_sim.engine.replica import BLOCK_TOKENS, ReplicaCore, RequestLog
from aifactory_sim.kernels.caching import lru_hit_ratio, zipf
from test_replica import TABLE, drive


def _lru_simulation(p: np.ndarray, capacity: int, n: int, seed: int) -> float:
    """A plain LRU cache of `capacity` items under independent requests drawn from p."""
    rng = np.random.default_rng(seed)
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for item in rng.choice(p.size, size=n, p=p).tolist():
        if item in cache:
            hits += 1
            cache.move_to_end(item)
        else:
            cache[item] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits / n


@pytest.mark.parametrize(("count", "exponent", "capacity"), [(100, 0.8, 20), (50, 0.0, 10)])
def test_che_approximation_matches_an_lru_cache(count, exponent, capacity):
    """Che's approximation is known to be accurate for LRU under the independent reference
    model (Fricker et al. 2012); within 2 % here, 60,000 requests."""
    p = zipf(count, exponent)
    assert lru_hit_ratio(p, capacity) == pytest.approx(
        _lru_simulation(p, capacity, 60_000, seed=1), rel=0.02
    )
    assert lru_hit_ratio(p, 0) == 0.0 and lru_hit_ratio(p, count) == 1.0


def _core(prefix: np.ndarray, prompts, outputs, arrivals, *, fast: bool, kv_blocks: int,
          prefix_tokens: int, seqs: int = 256) -> ReplicaCore:
    log = RequestLog(np.asarray(arrivals, float), np.asarray(prompts), np.asarray(outputs),
                     prefix)
    core = ReplicaCore(TABLE, log, kv_capacity_tokens=kv_blocks * BLOCK_TOKENS,
                       max_num_seqs=seqs, max_batched_tokens=8192, fast=fast,
                       prefix_tokens=prefix_tokens)
    return drive(core)


def test_the_replicas_cache_is_an_lru_of_the_prefixes_that_fit():
    """One request at a time: a 160-token system prompt (10 blocks) and 16 tokens of its own,
    two output tokens. A miss needs 11 blocks at admission (so at most C - 1 prefixes stay
    cached beside it with K = 10 (C - 1) + 12 blocks), then caches its own prefix and decodes
    with 2 blocks of its own (10 C + 2 = K): the cache holds C prefixes whenever a request is
    admitted. Its hit ratio over 6,000 Zipf(0.8) draws of 100 prompts is Che's for C (within
    5 %)."""
    count, c = 100, 20
    n = 6_000
    rng = np.random.default_rng(4)
    prefix = rng.choice(count, size=n, p=zipf(count, 0.8))
    core = _core(prefix, np.full(n, 176), np.full(n, 2), np.arange(n) * 1.0, fast=True,
                 kv_blocks=10 * (c - 1) + 12, prefix_tokens=160)
    assert np.isfinite(core.log.finish_s).all()
    hit = core.log.cached_tokens > 0
    assert set(np.unique(core.log.cached_tokens)) == {0, 160}
    assert core.prefixes is not None and core.prefixes.evictions > 0
    assert len(core.prefixes.entries) == c
    assert hit[500:].mean() == pytest.approx(lru_hit_ratio(zipf(count, 0.8), c), rel=0.05)


def test_fast_and_step_agree_with_the_cache_under_pressure():
    """Concurrent requests, 30 prefixes of 480 tokens and a KV cache small enough to evict
    prefixes and preempt requests: the same timestamps, hits and evictions in both tiers."""
    rng = np.random.default_rng(11)
    n = 400
    arrivals = np.cumsum(rng.exponential(1 / 25.0, n))
    prefix = rng.integers(0, 30, n)
    prompts = 480 + np.clip(rng.lognormal(np.log(300), 0.8, n).round(), 1, 3000).astype(int)
    outputs = np.clip(rng.geometric(1 / 150, n), 1, 1000)
    kw = dict(kv_blocks=1400, prefix_tokens=480, seqs=64)
    fast = _core(prefix, prompts, outputs, arrivals, fast=True, **kw)
    step = _core(prefix, prompts, outputs, arrivals, fast=False, **kw)
    for key in ("admitted_s", "first_token_s", "finish_s"):
        np.testing.assert_allclose(getattr(fast.log, key), getattr(step.log, key),
                                   rtol=1e-9, atol=1e-9, err_msg=key)
    assert np.array_equal(fast.log.cached_tokens, step.log.cached_tokens)
    assert np.array_equal(fast.log.preemptions, step.log.preemptions)
    assert fast.prefixes.evictions == step.prefixes.evictions > 0
    assert fast.log.preemptions.sum() > 0
    assert 0 < (fast.log.cached_tokens > 0).mean() < 1


BASE: dict[str, Any] = {
    "name": "prefix", "seed": 3, "duration": "5m",
    "cluster": {"node_pools": [{"name": "h100", "nodes": 1, "gpu": "H100-SXM"}]},
    "inference": [{
        "name": "chat", "model": "llama3-8b", "precision": "fp8", "replicas": 4,
        "cold_start": {"container_s": 0, "weights_s": 0},
        "traffic": {"kind": "poisson", "rate_rps": 20},
        "system_prompts": {"count": 10, "tokens": 1000, "popularity": 0.5},
        "prompt_tokens": {"kind": "fixed", "value": 500},
        "output_tokens": {"kind": "geometric", "mean": 100},
    }],
}


def _with(**fields: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d["inference"][0].update(fields)
    return d


def test_cache_off_is_the_same_as_plain_prompts_and_on_is_faster():
    off = af.run(af.load(_with(prefix_cache={"enabled": False})))
    plain = _with(prompt_tokens={"kind": "fixed", "value": 1500})
    del plain["inference"][0]["system_prompts"]
    ref = af.run(af.load(plain))
    cols = ["arrival_s", "admitted_s", "first_token_s", "finish_s", "replica", "preemptions"]
    assert off.requests[cols].equals(ref.requests[cols])
    assert off.summary["inference"]["chat"]["prefix_cache"]["hit_rate_tokens"] == 0.0
    on = af.run(af.load(BASE))
    s_on, s_off = on.summary["inference"]["chat"], off.summary["inference"]["chat"]
    assert s_on["ttft_s"]["p50"] < 0.8 * s_off["ttft_s"]["p50"]
    assert on.requests["arrival_s"].equals(off.requests["arrival_s"])


def test_the_summary_accounts_for_every_cached_token():
    res = af.run(af.load(BASE))
    pc = res.summary["inference"]["chat"]["prefix_cache"]
    req = res.requests
    admitted = req[np.isfinite(req["admitted_s"])]
    skip = (1000 // BLOCK_TOKENS) * BLOCK_TOKENS  # whole blocks only
    assert set(admitted["cached_tokens"].unique()) <= {0, skip}
    assert pc["requests_hit"] == int((admitted["cached_tokens"] > 0).sum())
    assert pc["prefill_tokens_saved"] == pc["requests_hit"] * skip
    assert pc["hit_rate_tokens"] == pytest.approx(
        pc["prefill_tokens_saved"] / admitted["prompt_tokens"].sum(), rel=1e-12)
    # ten prompts on four replicas with room to spare: only each replica's first use misses
    assert len(admitted) - pc["requests_hit"] <= 4 * 10
    assert (req["prompt_tokens"] == 1500).all()


@pytest.mark.parametrize(("fields", "where"), [
    (dict(system_prompts={"count": 0, "tokens": 10}), "inference.0.system_prompts.count"),
    (dict(system_prompts={"count": 5, "tokens": 10, "popularity": -1}),
     "inference.0.system_prompts.popularity"),
    (dict(prefix_cache={"enabled": True, "size": 3}), "inference.0.prefix_cache.size"),
])
def test_bad_fields_are_named(fields, where):
    with pytest.raises(af.ScenarioError) as err:
        af.load(_with(**fields))
    assert where in str(err.value)


def _frontier_chat(**fields: Any) -> dict[str, Any]:
    d = _with(prompt_tokens={"kind": "lognormal", "median": 800, "sigma": 0.8}, **fields)
    d["duration"] = "5m"
    return d


@pytest.mark.parametrize(("fields", "hit_tol"), [
    # every prompt fits beside the batch: only cold misses
    (dict(traffic={"kind": "poisson", "rate_rps": 60},
          system_prompts={"count": 40, "tokens": 2000, "popularity": 1.0}), 0.02),
    # KV tight: 400 prompts of 4,000 tokens on half the memory, evictions every second
    (dict(traffic={"kind": "poisson", "rate_rps": 20}, gpu_memory_utilization=0.5,
          system_prompts={"count": 400, "tokens": 4000, "popularity": 0.9}), 0.05),
])
def test_fluid_tier_models_the_prefix_cache(fields, hit_tol):
    """The fluid tier's hit ratio (Che's approximation at the load's KV, cold misses off)
    against the fast tier's counted hits, and the latencies they lead to: hit rate within
    `hit_tol`, TTFT and TPOT medians within 15 % (the fluid tier's tolerance on the serving
    page's workloads, docs/background/serving.md)."""
    out = {}
    for tier in ("fast", "fluid"):
        d = _frontier_chat(**fields)
        d["fidelity"] = tier
        out[tier] = af.run(af.load(d)).summary["inference"]["chat"]
    fast, fluid = out["fast"], out["fluid"]
    assert fluid["prefix_cache"]["hit_rate_tokens"] == pytest.approx(
        fast["prefix_cache"]["hit_rate_tokens"], abs=hit_tol)
    assert 0.2 < fast["prefix_cache"]["hit_rate_tokens"] < 0.9
    for key in ("ttft_s", "tpot_s"):
        assert fluid[key]["p50"] == pytest.approx(fast[key]["p50"], rel=0.15), key


def test_the_cache_free_limit_is_an_mm1_queue():
    """One replica of one seat, one-token prompts behind a system prompt of 32 tokens drawn
    from a million alike (a run's requests almost never share one: under 2 % hit, the birthday
    bound), geometric outputs: an M/M/1 queue. The mean wait over 5 seeded runs of 25,000
    requests (the first 2,000 dropped as warm-up) is Kleinrock's rho E[S] / (1 - rho) (Queueing
    Systems I, eq. 3.24), E[S] and rho = lambda E[S] measured in the same runs, within 5 %."""
    from test_serving import mean_service_s, mmc_scenario

    rate = 0.7 / mean_service_s(mmc_scenario(1.0, 1, 0, 10))
    waits, services = [], []
    for seed in range(5):
        sc = mmc_scenario(rate, 1, seed, 25_000)
        sc["inference"][0]["system_prompts"] = {"count": 1_000_000, "tokens": 32}
        res = af.run(af.load(sc))
        req = res.requests.iloc[2000:]
        services.append(float((req["finish_s"] - req["admitted_s"]).dropna().mean()))
        waits.append(float(req["queue_wait_s"].dropna().mean()))
        pc = res.summary["inference"]["chat"]["prefix_cache"]
        assert pc["enabled"] and pc["requests_hit"] < 0.02 * pc["requests_admitted"]
    es = float(np.mean(services))
    rho = rate * es
    assert 0.6 < rho < 0.8
    assert np.mean(waits) == pytest.approx(rho * es / (1 - rho), rel=0.05)
