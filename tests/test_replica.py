"""A replica's continuous batching: the fast tier against the step tier, and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aifactory_sim import catalog
from aifactory_sim.engine.replica import BLOCK_TOKENS, ReplicaCore, RequestLog
from aifactory_sim.estimate import as_gpu, as_model
from aifactory_sim.kernels.inference import IterationModel, gpu_inference_args, iteration_time_s

MODEL = as_model("llama3-8b").kernel_args()
GPU = as_gpu("H100-SXM")
G = gpu_inference_args(GPU.model_dump(), catalog.entry("calibration", GPU.family))


def kernel_time(pre, n, ctx, pre_ctx, finishing):
    return iteration_time_s(MODEL, G, prefill_tokens=pre, decode_seqs=n, context_tokens=ctx,
                            prefill_context=pre_ctx, prefill_seqs=finishing, precision="fp8",
                            kv_precision="fp8")


TABLE = IterationModel(MODEL, G, precision="fp8", kv_precision="fp8").table(8192, 256)


def make(arrivals, prompts, outputs, **kw) -> ReplicaCore:
    log = RequestLog(np.asarray(arrivals, float), np.asarray(prompts), np.asarray(outputs))
    return ReplicaCore(TABLE, log, **kw)


def drive(core: ReplicaCore) -> ReplicaCore:
    """Feed the log's arrivals in time order; an arrival at a boundary is seen before it."""
    arrivals = core.log.arrival_s
    i = 0
    while i < len(arrivals) or core.next_time() < math.inf:
        if i < len(arrivals) and arrivals[i] <= core.next_time():
            core.add(i, float(arrivals[i]))
            core.schedule(float(arrivals[i]))
            i += 1
        else:
            t = core.next_time()
            core.advance()
            core.schedule(t)
    return core


def records(core: ReplicaCore):
    log = core.log
    return {key: getattr(log, key) for key in
            ("arrival_s", "admitted_s", "first_token_s", "finish_s", "preemptions")}


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
    fast = drive(make(arr, pro, out, fast=True, **kw))
    step = drive(make(arr, pro, out, fast=False, **kw))
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
    f, r = records(fast), records(step)
    for key in ("admitted_s", "first_token_s", "finish_s"):
        np.testing.assert_allclose(f[key], r[key], rtol=1e-9, atol=1e-9, err_msg=key)
    assert np.array_equal(f["preemptions"], r["preemptions"])
    assert np.isfinite(r["finish_s"]).all()
    assert fast.busy_s == pytest.approx(step.busy_s, rel=1e-9)


def test_the_small_cache_really_preempts():
    fast, _ = both(10_000, 256, 8192, seed=7, n=300, rate=30.0)
    assert fast.log.preemptions.sum() > 10


def test_a_lone_request_runs_prefill_then_one_iteration_per_token():
    core = drive(make([5.0], [1000], [50], kv_capacity_tokens=1e6, max_num_seqs=8,
                      max_batched_tokens=8192))
    r = core.log
    prefill = float(kernel_time(np.array([1000.0]), np.array([0.0]), np.array([0.0]),
                                np.array([1000 * 1001 / 2]), np.array([1.0]))[0])
    assert r.first_token_s[0] == pytest.approx(5.0 + prefill, rel=1e-12)
    decodes = kernel_time(np.zeros(49), np.ones(49), 1000.0 + np.arange(49), np.zeros(49),
                          np.zeros(49))
    assert r.finish_s[0] == pytest.approx(r.first_token_s[0] + decodes.sum(), rel=1e-12)
    assert core.iterations == 50


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), seqs=st.sampled_from([1, 4, 32]),
       kv=st.sampled_from([8_000, 50_000, 1e6]))
def test_tiers_agree_and_limits_hold(seed, seqs, kv):
    fast, step = both(kv, seqs, 4096, seed=seed, n=40, rate=5.0)
    f, r = records(fast), records(step)
    np.testing.assert_allclose(f["finish_s"], r["finish_s"], rtol=1e-9)
    assert (r["arrival_s"] <= r["admitted_s"]).all()
    assert (r["admitted_s"] <= r["first_token_s"]).all()
    assert (r["first_token_s"] <= r["finish_s"]).all()
    assert fast.kv_blocks == int(kv // BLOCK_TOKENS)


def test_the_bound_iteration_model_is_the_kernel():
    bound = IterationModel(MODEL, G, precision="fp8", kv_precision="fp8")
    rng = np.random.default_rng(3)
    pre = rng.integers(0, 4000, 50).astype(float)
    n = rng.integers(0, 200, 50).astype(float)
    ctx = n * rng.integers(1, 3000, 50)
    pre_ctx = pre * (pre + 1) / 2
    fin = (pre > 0).astype(float)
    assert np.array_equal(bound(pre, n, ctx, pre_ctx, fin), kernel_time(pre, n, ctx, pre_ctx, fin))


def test_the_iteration_table_is_the_kernel():
    """Lookups plus two slopes give every batch's kernel time (relative 1e-12)."""
    rng = np.random.default_rng(4)
    n = rng.integers(0, 256, 200)
    pre = rng.integers(0, 8192 - 256, 200)
    ctx = n * rng.integers(1, 3000, 200)
    pairs = pre * (pre + 1) / 2.0
    fin = (pre > 0).astype(int)
    ref = kernel_time(pre, n, ctx, pairs, fin)
    got = [TABLE.time_s(int(a), int(b), float(c), float(d), int(e))
           for a, b, c, d, e in zip(pre, n, ctx, pairs, fin, strict=True)]
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    first, growth = TABLE.decode_run(40, 12_000.0)
    steps = kernel_time(np.zeros(30), np.full(30, 40.0), 12_000.0 + 40.0 * np.arange(30),
                        np.zeros(30), np.zeros(30))
    assert TABLE.decode_run_s(first, growth, 30) == pytest.approx(steps.sum(), rel=1e-12)


def test_a_stretch_is_cut_at_the_first_boundary_after_an_arrival():
    """Two requests: the second arrives mid-decode of the first and is admitted at the next
    iteration boundary, in both tiers."""
    for fast in (True, False):
        core = drive(make([0.0, 0.5], [100, 100], [400, 10], kv_capacity_tokens=1e6,
                          max_num_seqs=8, max_batched_tokens=8192, fast=fast))
        log = core.log
        first = float(kernel_time(np.array([100.0]), np.array([0.0]), np.array([0.0]),
                                  np.array([5050.0]), np.array([1.0]))[0])
        steps = kernel_time(np.zeros(399), np.ones(399), 100.0 + np.arange(399),
                            np.zeros(399), np.zeros(399))
        bounds = first + np.cumsum(steps)
        j = int(np.searchsorted(bounds, 0.5))
        assert log.admitted_s[1] == pytest.approx(bounds[j], rel=1e-12)
        assert log.finish_s[1] > log.admitted_s[1]
