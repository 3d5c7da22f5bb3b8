"""A replica's continuous batching: the fast tier against the step tier, and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aifactory_sim import catalog
from aifactory_sim.engine.replica import BLOCK_TOKENS, ReplicaCore
from aifactory_sim.estimate import as_gpu, as_model
from aifactory_sim.kernels.inference import gpu_inference_args, iteration_time_s

MODEL = as_model("llama3-8b").kernel_args()
GPU = as_gpu("H100-SXM")
G = gpu_inference_args(GPU.model_dump(), catalog.entry("calibration", GPU.family))


def kernel_time(pre, n, ctx, pre_ctx, finishing):
    return iteration_time_s(MODEL, G, prefill_tokens=pre, decode_seqs=n, context_tokens=ctx,
                            prefill_context=pre_ctx, prefill_seqs=finishing, precision="fp8",
                            kv_precision="fp8")


def drive(core: ReplicaCore, arrivals, prompts, outputs) -> ReplicaCore:
    """Feed arrivals in time order; an arrival at a boundary is seen before the boundary."""
    i = 0
    while i < len(arrivals) or core.next_time() < math.inf:
        if i < len(arrivals) and arrivals[i] <= core.next_time():
            core.add(i, int(prompts[i]), int(outputs[i]), float(arrivals[i]))
            i += 1
        else:
            core.advance()
    return core


def workload(seed: int, n: int, rate: float):
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    prompts = np.clip(rng.lognormal(np.log(600), 0.8, n).round(), 1, 6000).astype(int)
    outputs = np.clip(rng.geometric(1 / 200, n), 1, 1500)
    return arrivals, prompts, outputs


def both(kv_tokens: float, seqs: int, budget: int, seed: int, n: int, rate: float,
         chunked: bool = True):
    arr, pro, out = workload(seed, n, rate)
    kw = dict(kv_capacity_tokens=kv_tokens, max_num_seqs=seqs, max_batched_tokens=budget,
              chunked_prefill=chunked)
    fast = drive(ReplicaCore(kernel_time, fast=True, **kw), arr, pro, out)
    step = drive(ReplicaCore(kernel_time, fast=False, **kw), arr, pro, out)
    return fast, step


@pytest.mark.parametrize(
    ("kv_tokens", "seqs", "budget", "rate", "chunked"),
    [
        (400_000, 256, 8192, 2.0, True),     # light load, plenty of KV
        (400_000, 64, 2048, 20.0, True),     # heavy load, seats and budget bind
        (10_000, 256, 8192, 30.0, True),     # a small cache: preemptions
        (60_000, 32, 8192, 8.0, False),      # whole-prompt prefills
    ],
)
def test_fast_tier_gives_the_step_tiers_timestamps(kv_tokens, seqs, budget, rate, chunked):
    fast, step = both(kv_tokens, seqs, budget, seed=7, n=300, rate=rate, chunked=chunked)
    assert fast.iterations == step.iterations
    for rid, r in step.records.items():
        f = fast.records[rid]
        for key in ("admitted_s", "first_token_s", "finish_s"):
            assert getattr(f, key) == pytest.approx(getattr(r, key), rel=1e-9, abs=1e-9), (
                rid, key)
        assert f.preemptions == r.preemptions
    assert all(math.isfinite(r.finish_s) for r in step.records.values())


def test_the_small_cache_really_preempts():
    fast, _ = both(10_000, 256, 8192, seed=7, n=300, rate=30.0)
    assert sum(r.preemptions for r in fast.records.values()) > 10


def test_a_lone_request_runs_prefill_then_one_iteration_per_token():
    core = ReplicaCore(kernel_time, kv_capacity_tokens=1e6, max_num_seqs=8,
                       max_batched_tokens=8192)
    drive(core, [5.0], [1000], [50])
    r = core.records[0]
    prefill = float(kernel_time(np.array([1000.0]), np.array([0.0]), np.array([0.0]),
                                np.array([1000 * 1001 / 2]), np.array([1.0]))[0])
    assert r.first_token_s == pytest.approx(5.0 + prefill, rel=1e-12)
    decodes = kernel_time(np.zeros(49), np.ones(49), 1000.0 + np.arange(49), np.zeros(49),
                          np.zeros(49))
    assert r.finish_s == pytest.approx(r.first_token_s + decodes.sum(), rel=1e-12)
    assert core.iterations == 50


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), seqs=st.sampled_from([1, 4, 32]),
       kv=st.sampled_from([8_000, 50_000, 1e6]))
def test_tiers_agree_and_limits_hold(seed, seqs, kv):
    fast, step = both(kv, seqs, 4096, seed=seed, n=40, rate=5.0)
    for rid, r in step.records.items():
        f = fast.records[rid]
        assert f.finish_s == pytest.approx(r.finish_s, rel=1e-9)
        assert r.arrival_s <= r.admitted_s <= r.first_token_s <= r.finish_s
    assert max(len(fast.running), 0) <= seqs
    assert fast.kv_blocks == int(kv // BLOCK_TOKENS)


def test_the_bound_iteration_model_is_the_kernel():
    from aifactory_sim.kernels.inference import IterationModel

    bound = IterationModel(MODEL, G, precision="fp8", kv_precision="fp8")
    rng = np.random.default_rng(3)
    pre = rng.integers(0, 4000, 50).astype(float)
    n = rng.integers(0, 200, 50).astype(float)
    ctx = n * rng.integers(1, 3000, 50)
    pre_ctx = pre * (pre + 1) / 2
    fin = (pre > 0).astype(float)
    assert np.array_equal(bound(pre, n, ctx, pre_ctx, fin), kernel_time(pre, n, ctx, pre_ctx, fin))
