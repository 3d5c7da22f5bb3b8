"""Speculative decoding (MTP and draft models): the expected tokens per verify step against a
Monte Carlo of the acceptance chain, the kernel's verify step against its parts, DeepSeek-V3's
published MTP speed-up, memory, the fast tier against the step tier, the fluid tier against
the fast tier, and bad fields."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

import aifactory_sim as af
from aifactory_sim.engine.fleet import replica_sizing
from aifactory_sim.kernels.inference import (
    Drafter,
    IterationModel,
    speculative_tokens_per_step,
)


def _monte_carlo_tokens_per_step(rates: list[float], steps: int, seed: int) -> float:
    """Verify steps drawn one by one: each drafted position is accepted with its rate while
    every one before it was; a step keeps the accepted run plus one token of its own."""
    rng = np.random.default_rng(seed)
    accepted = rng.random((steps, len(rates))) < np.asarray(rates)
    run = np.cumprod(accepted, axis=1).sum(axis=1)  # the leading accepted run
    return float((run + 1).mean())


@pytest.mark.parametrize("rates", [[0.85], [0.8] * 3, [0.9, 0.7, 0.5, 0.3]])
def test_tokens_per_step_is_the_acceptance_chains_mean(rates):
    """Closed form against 200,000 drawn verify steps (within 1 %), and Leviathan et al.'s
    (1 - a^(k+1)) / (1 - a) for one rate."""
    tau = speculative_tokens_per_step(rates)
    assert tau == pytest.approx(_monte_carlo_tokens_per_step(rates, 200_000, seed=2), rel=0.01)
    if len(set(rates)) == 1:
        a, k = rates[0], len(rates)
        assert tau == pytest.approx((1 - a ** (k + 1)) / (1 - a), rel=1e-12)
    assert speculative_tokens_per_step([1.0] * 4) == 5.0


BASE: dict[str, Any] = {
    "name": "speculative", "seed": 5, "duration": "4m",
    "cluster": {"node_pools": [{"name": "h200", "nodes": 1, "gpu": "H200"}]},
    "inference": [{
        "name": "chat", "model": "llama3-70b", "precision": "fp8", "kv_cache_dtype": "fp8",
        "tp": 4, "replicas": 2,
        "cold_start": {"container_s": 0, "weights_s": 0},
        "speculative": {"method": "draft", "draft_model": "llama3-8b", "draft_tokens": 3,
                        "acceptance": [0.9, 0.75, 0.6]},
        "traffic": {"kind": "poisson", "rate_rps": 6},
        "prompt_tokens": {"kind": "lognormal", "median": 800, "sigma": 0.8, "max": 6000},
        "output_tokens": {"kind": "geometric", "mean": 200},
    }],
}


def _with(**fields: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d["inference"][0].update(fields)
    return d


def _sizing(d: dict[str, Any]):
    sc = af.load(d)
    return replica_sizing(sc.inference[0], sc.cluster.node_pools[0], 1.0)


def test_a_verify_step_is_its_parts():
    """The table's speculative decode iteration, per token kept, is one forward pass of D
    (k + 1) tokens (the plain kernel's decode of D (k + 1) 'sequences' at zero context, with
    (k + 1)x the attention FLOPs and the KV cache read once), plus k draft-model decode
    iterations of D sequences, over tau."""
    plain_sz, spec_sz = _sizing(_with(speculative=None)), _sizing(BASE)
    m, g, par = plain_sz.model_args, plain_sz.gpu_args, plain_sz.parallel_args
    draft = af.load(BASE).inference[0].speculative.draft_model.kernel_args()
    target = IterationModel(m, g, tp=4, precision="fp8", kv_precision="fp8", **par)
    small = IterationModel(draft, g, tp=4, precision="fp8", kv_precision="fp8", **par)
    tau = speculative_tokens_per_step([0.9, 0.75, 0.6])
    k, d, ctx = 3, 24, 24 * 3000.0
    verify = float(target(0, d * (k + 1), 0, 0, 0))
    attention, kv, _ = target._context_costs()
    verify += max((k + 1) * attention, kv) * ctx
    da, dkv, _ = small._context_costs()
    drafting = k * (float(small(0, d, 0, 0, 0)) + max(da, dkv) * ctx)
    t = spec_sz.table.time_s(0, d, ctx, 0.0, 0)
    assert t == pytest.approx((verify + drafting) / tau, rel=1e-12)
    # prefills do not speculate: their time is the plain one plus the draft model's prefill
    assert spec_sz.table.time_s(2000, d, ctx, 2e6, 1) > plain_sz.table.time_s(2000, d, ctx, 2e6, 1)
    # and the same table through Drafter by hand
    by_hand = target.table(8192, 256, Drafter(k, tau, small))
    assert by_hand.decode_run(d, ctx) == spec_sz.table.decode_run(d, ctx)


def test_speculation_pays_alone_and_costs_at_a_full_batch():
    """Decode is memory-bound alone: verifying k + 1 tokens costs about one token, so the
    gain approaches tau less the drafting; at a full batch the k extra tokens are real FLOPs."""
    s = _sizing(BASE).speculation
    assert s["tokens_per_step"] == pytest.approx(1 + 0.9 + 0.9 * 0.75 + 0.9 * 0.75 * 0.6)
    assert 1.2 < s["tpot_gain_batch_1"] < s["tokens_per_step"]
    assert s["tpot_gain_full_batch"] < s["tpot_gain_batch_1"]
    assert s["acceptance_rate"] == pytest.approx(s["accepted_tokens_per_step"] / 3)


def test_deepseek_v3_mtp_speedup_matches_the_report():
    """DeepSeek-V3 Technical Report (arXiv 2412.19437) Sec. 5.4.3: its one MTP module drafts
    the second token with an 85-90 % acceptance rate, and this gives 1.8x the tokens per
    second. The report states no batch; we read it as one stream's speed at light load. Our
    kernel at 87.5 % on H200 (tp 1, ep 32, dp_attention 32, DeepSeek's prefill unit layout),
    one sequence: within 15 % of 1.8. With more sequences each verify step's extra tokens
    touch more experts and double the all-to-all, and the gain falls (the summary's
    tpot_gain_full_batch)."""
    d = {
        "name": "mtp", "seed": 1, "duration": "1m",
        "cluster": {"node_pools": [{"name": "h200", "nodes": 4, "gpu": "H200"}]},
        "inference": [{
            "name": "v3", "model": "deepseek-v3", "precision": "fp8", "kv_cache_dtype": "fp8",
            "ep": 32, "dp_attention": 32, "cold_start": {"container_s": 0, "weights_s": 0},
            "speculative": {"method": "mtp", "draft_tokens": 1, "acceptance": 0.875},
            "batching": {"max_num_seqs": 4096, "max_batched_tokens": 8192},
            "traffic": {"kind": "poisson", "rate_rps": 1},
            "prompt_tokens": {"kind": "fixed", "value": 1000},
            "output_tokens": {"kind": "fixed", "value": 100},
        }],
    }
    sz = _sizing(d)
    sp = copy.deepcopy(d)
    sp["inference"][0]["speculative"] = None
    plain = _sizing(sp)
    ctx = 2048.0
    gain = plain.table.decode_run(1, ctx)[0] / sz.table.decode_run(1, ctx)[0]
    assert gain == pytest.approx(1.8, rel=0.15)
    assert sz.speculation["tpot_gain_full_batch"] < gain
    # the module's weights: one block of 61, 1/61 of the replica's (the report's 14B module
    # holds a projection and norms beside its block; within 25 % of its share)
    assert sz.weight_bytes - plain.weight_bytes == pytest.approx(
        plain.weight_bytes / 61, rel=1e-9)
    assert sz.kv_tokens < plain.kv_tokens


def test_the_drafter_takes_memory_from_the_kv_cache():
    plain, spec = _sizing(_with(speculative=None)), _sizing(BASE)
    extra_w = spec.weight_bytes - plain.weight_bytes
    assert spec.speculation["draft_weight_gb"] == pytest.approx(extra_w / 1e9)
    assert 7e9 < extra_w < 10e9  # Llama 3 8B in FP8
    # fewer KV tokens: the draft's weights and its own KV per token (8B: 32 layers x 8 heads)
    assert spec.kv_tokens < plain.kv_tokens * (1 - extra_w / (4 * 141e9))


def test_fast_equals_step_with_speculation():
    """Per request, the same timestamps in both tiers (the engine's rules are unchanged; the
    iteration table's decode rows are the speculative ones)."""
    out = {}
    for tier in ("fast", "step"):
        d = _with(traffic={"kind": "poisson", "rate_rps": 12})
        d["fidelity"] = tier
        out[tier] = af.run(af.load(d)).requests
    cols = ["admitted_s", "first_token_s", "finish_s"]
    np.testing.assert_allclose(out["fast"][cols].to_numpy(), out["step"][cols].to_numpy(),
                               rtol=1e-9, atol=1e-9)
    assert out["fast"]["preemptions"].equals(out["step"]["preemptions"])


def test_speculation_cuts_tpot_in_the_engine_and_the_fluid_tier_follows():
    """At light load the engine's TPOT falls by about the kernel's gain at the batch it runs;
    the fluid tier's TPOT and TTFT medians stay within 15 % of the fast tier's (its tolerance
    on the serving page's workloads)."""
    runs = {}
    for name, fields in (("plain", dict(speculative=None)), ("spec", {})):
        for tier in ("fast", "fluid"):
            d = _with(**fields)
            d["fidelity"] = tier
            runs[name, tier] = af.run(af.load(d)).summary["inference"]["chat"]
    spec, plain = runs["spec", "fast"], runs["plain", "fast"]
    ratio = plain["tpot_s"]["p50"] / spec["tpot_s"]["p50"]
    s = spec["speculative"]
    assert s["tpot_gain_full_batch"] < ratio < s["tpot_gain_batch_1"] * 1.05
    assert ratio > 1.2
    for key in ("ttft_s", "tpot_s"):
        assert runs["spec", "fluid"][key]["p50"] == pytest.approx(spec[key]["p50"], rel=0.15)
    assert runs["spec", "fluid"]["speculative"] == s


@pytest.mark.parametrize(("fields", "where", "says"), [
    (dict(speculative={"method": "mtp", "draft_tokens": 1, "acceptance": 0.8}),
     "inference.0", "mtp_modules"),
    (dict(speculative={"method": "draft", "draft_tokens": 2, "acceptance": [0.8]}),
     "inference.0.speculative", "one per drafted position"),
    (dict(speculative={"method": "draft", "draft_tokens": 2, "acceptance": 1.5,
                       "draft_model": "llama3-8b"}), "inference.0.speculative", "0 < acceptance"),
    (dict(speculative={"method": "draft", "draft_tokens": 2, "acceptance": 0.7,
                       "draft_model": "llama2-7b"}), "inference.0", "tokenizer"),
    (dict(speculative={"method": "draft", "draft_tokens": 0, "acceptance": 0.7,
                       "draft_model": "llama3-8b"}), "inference.0.speculative.draft_tokens", ""),
])
def test_bad_fields_are_named(fields, where, says):
    with pytest.raises(af.ScenarioError) as err:
        af.load(_with(**fields))
    assert where in str(err.value) and says in str(err.value)
