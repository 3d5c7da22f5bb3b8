"""Inference performance of a decoder-only transformer replica: weights and KV-cache memory,
the time of one continuous-batching iteration, and the steady-state throughput of an offline
benchmark; vectorised over arrays of configurations.

Every argument broadcasts (numpy rules). Sizes are in bytes, times in seconds, throughputs in
FLOP/s or bytes/s (SI: tera = 10**12). Notation as kernels/training.py: l layers, h hidden, a
heads, g KV heads (GQA), d = h/a the head width, f the FFN width, V vocabulary, E experts of which
k are active; t the tensor-parallel width of a replica.

A replica runs iterations (vLLM's "steps", Kwon et al., "Efficient Memory Management for Large
Language Model Serving with PagedAttention", SOSP'23; Orca's iteration-level scheduling, Yu et
al., OSDI'22): each one feeds `prefill_tokens` new prompt tokens (chunked prefill) and one token
of each of `decode_seqs` decoding sequences through the model. Its time is a sum of phases, each
at its own roofline (Williams et al., CACM 2009), because the kernels of one forward pass run one
after another and each is bound by compute or by memory on its own (the per-operator cost model
of Vidur, Agrawal et al., MLSys'24, and of the LLM roofline survey, Yuan et al., arXiv
2402.16363):
    t_iter = t_gemm + t_lm_head + t_attention + t_elementwise + t_tp + t_overhead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .architecture import census, layer_totals
from .collectives import nvls_allreduce_s, ring_allgather_s, ring_allreduce_s

F64 = NDArray[np.float64]

#: Bytes per weight of the transformer blocks' linear layers. fp8: E4M3 with per-tensor scales
#: (NVIDIA ModelOpt, vLLM `fp8`), a scale per matrix is negligible. int4: 4-bit weights with one
#: fp16 scale and one 4-bit zero point per group of 128 weights, AWQ's defaults (Lin et al.,
#: "AWQ", MLSys'24; GPTQ, Frantar et al., ICLR'23, uses the same group of 128): 0.5 + 2.5/128.
#: fp4: NVFP4, 4-bit E2M1 values with one FP8 (E4M3) scale per block of 16 (NVIDIA, "Introducing
#: NVFP4 for efficient and accurate low-precision inference", developer blog, June 2025; the
#: per-tensor FP32 scale is negligible): 0.5 + 1/16.
WEIGHT_BYTES_PER_PARAM = {"bf16": 2.0, "fp8": 1.0, "int4": 0.5 + 2.5 / 128.0, "fp4": 0.5 + 1 / 16}
#: Which tensor-core rate a weights precision's GEMMs run at: fp8 weights with fp8 activations
#: (W8A8) on FP8 tensor cores; int4 weights are dequantised to bf16 inside the GEMM (W4A16).
FP8_COMPUTE = {"bf16": 0.0, "fp8": 1.0, "int4": 0.0, "fp4": 0.0}
#: fp4 weights with fp4 activations (W4A4) on FP4 tensor cores (Blackwell's `fp4_flops`); a GPU
#: without them dequantises to bf16 in the GEMM (W4A16 at the BF16 rate, `gpu_inference_args`).
FP4_COMPUTE = {"bf16": 0.0, "fp8": 0.0, "int4": 0.0, "fp4": 1.0}
#: The tensor-parallel all-reduce's algorithm (kernels/collectives.py): the ring, NVLink SHARP
#: (on a GPU whose catalog entry has `nvls: true`), or the faster of the two for each message
#: (NCCL's own choice when NVLS is enabled).
ALLREDUCE = {"ring": 0.0, "nvls": 1.0, "auto": 2.0}
#: Bytes per element of the KV cache (vLLM `kv_cache_dtype` auto = bf16, or fp8 E4M3; fp4: NVFP4
#: as above, TensorRT-LLM's NVFP4 KV cache on Blackwell).
KV_BYTES_PER_ELEMENT = {"bf16": 2.0, "fp8": 1.0, "fp4": 0.5 + 1 / 16}
#: DeepEP dispatches tokens to the experts in FP8 (E4M3 with one FP32 scale per 128 elements)
#: and combines their outputs in BF16 (deepseek-ai/DeepEP README, "normal kernels ... dispatch
#: FP8, combine BF16"; DeepSeek-V3 report, Sec. 3.3.2, FP8 dispatch).
A2A_DISPATCH_BYTES = 1.0 + 4.0 / 128.0
A2A_COMBINE_BYTES = 2.0
#: Tokens per rank up to which a decode-only iteration uses DeepEP's low-latency kernels (pure
#: RDMA, every copy sent straight to its GPU: k f_net copies cross the network); an iteration
#: that prefills, or holds more tokens per rank, uses the normal kernels, which send a token once
#: to each remote NVLink domain and forward it over NVLink there (deepseek-ai/DeepEP README;
#: SGLang's `--deepep-mode auto` picks normal for extend batches and low-latency for decode
#: batches, whose buffers the LMSYS large-scale EP deployment sized at 256 tokens per rank).
LOW_LATENCY_TOKENS_PER_RANK = 256
#: Scale-out bandwidth per GPU when the caller gives none: one 400 Gb/s NIC per GPU (DGX H100's
#: ConnectX-7, rail-optimised) at the calibration's net_efficiency 0.825 (catalog/calibration.yaml).
NIC_BYTES_PER_S = 400e9 / 8.0 * 0.825
#: Latency of one scale-out message step (the 5 us estimate.job_estimate uses for the network).
NET_ALPHA_S = 5e-6
#: Tokens per KV-cache block: vLLM's default PagedAttention block size (Kwon et al., SOSP'23).
BLOCK_TOKENS = 16
#: Bytes per activation element: activations stay bf16 between the kernels.
ACT_BYTES = 2.0
#: Memory a serving process holds besides weights, activations and KV cache, per GPU: CUDA
#: context, cuBLAS and NCCL workspaces, CUDA-graph pools. vLLM's start-up profile reports this
#: as its "non-torch memory" plus "CUDA graph memory", together about 1-2 GB on an H100.
WORKSPACE_BYTES = 1.5e9
#: Bytes of device memory a serving engine sees per catalog HBM gigabyte. Datasheets give HBM in
#: binary units (an H100's "80 GB" is five 16 GiB stacks) and the driver keeps a little back:
#: nvidia-smi and torch.cuda.mem_get_info report 81,559 MiB on an H100 SXM 80 GB (143,771 MiB on
#: an H200 141 GB: the same 99.56 %), and vLLM's gpu_memory_utilization and TensorRT-LLM's KV
#: fraction apply to that total. So 2^30 x 81559/81920 bytes per catalog GB.
DEVICE_BYTES_PER_GB = 2.0**30 * 81559.0 / 81920.0


def _f(x: ArrayLike) -> F64:
    return np.asarray(x, dtype=np.float64)


def _lookup(name: ArrayLike, table: dict[str, float], what: str) -> F64:
    """Vectorised lookup of precision names (a string or an array of strings) in `table`."""
    arr = np.asarray(name)
    out = np.full(arr.shape, np.nan)
    for key, value in table.items():
        out[arr == key] = value
    if np.any(np.isnan(out)):
        bad = sorted({str(v) for v in np.unique(arr[np.isnan(out)])})
        raise ValueError(f"{what} must be one of {', '.join(table)}; got {bad}")
    return out


def _shape(m: Mapping[str, Any]) -> dict[str, F64]:
    h, a, g = _f(m["hidden"]), _f(m["heads"]), _f(m["kv_heads"])
    d = h / a
    return {
        "l": _f(m["layers"]),
        "h": h,
        "a": a,
        "g": g,
        "d": d,
        "kv": g * d,
        "f": _f(m["ffn_hidden"]),
        "V": _f(m["vocab"]),
        "E": _f(m["experts"]),
        "k": _f(m["top_k"]),
        "n_ffn": np.where(m["gated_ffn"], 3.0, 2.0),
        "tied": np.asarray(m["tie_embeddings"]),
    }


def _attention_params(s: dict[str, F64]) -> F64:
    """Q, K, V and output projections of one layer: h (h + 2 g d) + h^2."""
    return s["h"] * (s["h"] + 2.0 * s["kv"]) + s["h"] * s["h"]


def _expert_params(s: dict[str, F64]) -> F64:
    """One expert's FFN matrices: n_ffn h f (3 for SwiGLU, 2 for GeLU)."""
    return s["n_ffn"] * s["h"] * s["f"]


def weight_bytes(m: Mapping[str, Any], precision: ArrayLike = "bf16") -> F64:
    """Bytes of a model's weights at a weights precision (bf16, fp8, int4).

    The transformer blocks' linear layers take the precision's bytes per weight
    (WEIGHT_BYTES_PER_PARAM); the token embedding, the output layer (lm-head), the norms and a
    MoE router stay bf16, as FP8 and INT4 checkpoints keep them (ModelOpt's and vLLM's FP8
    exclude `lm_head`; AWQ and GPTQ quantise only the blocks' linear layers). bf16 gives exactly
    2 x kernels.training.param_count.
    """
    s = _shape(m)
    linear = s["l"] * (_attention_params(s) + s["E"] * _expert_params(s))
    other = (
        s["l"] * (2.0 * s["h"] + np.where(s["E"] > 1, s["h"] * s["E"], 0.0))
        + s["h"]
        + s["V"] * s["h"] * np.where(s["tied"], 1.0, 2.0)
    )
    plain = linear * _lookup(precision, WEIGHT_BYTES_PER_PARAM, "precision") + 2.0 * other
    dense, routed = weight_parts_bytes(m, precision)
    return np.where(census(m)["uniform"], plain, dense + routed)


def weight_parts_bytes(m: Mapping[str, Any], precision: ArrayLike = "bf16") -> tuple[F64, F64]:
    """(dense part, routed experts) of `weight_bytes`: what every attention rank holds (attention,
    dense FFNs, shared experts, routers, embeddings, norms) and the routed experts, which expert
    parallelism spreads over the replica."""
    c = census(m)
    t = layer_totals(c)
    wb = _lookup(precision, WEIGHT_BYTES_PER_PARAM, "precision")
    routers = c["n_moe"] * c["router"]
    other = (
        c["l"] * 2.0 * c["h"]
        + routers
        + c["h"]
        + c["V"] * c["h"] * np.where(m["tie_embeddings"], 1.0, 2.0)
    )
    return (t["dense_part"] - routers) * wb + 2.0 * other, t["routed"] * wb


def replica_weight_bytes(
    m: Mapping[str, Any],
    precision: ArrayLike = "bf16",
    dp_attention: ArrayLike = 1,
    ep: ArrayLike = 1,
) -> F64:
    """Weights a replica holds: with `dp_attention` data-parallel attention ranks each keeps the
    dense part (sharded over its tp ranks) and the routed experts are stored once, spread over
    all tp x dp_attention GPUs (SGLang's DP attention with expert parallelism); = weight_bytes
    with dp_attention 1. With `ep` groups that do not divide the E experts, each group holds
    ceil(E / ep) and the spare slots hold redundant copies (DeepSeek's EPLB: 256 experts in 288
    slots on 144 decode GPUs), stored too: ceil(E / ep) ep / E of the routed weights."""
    dense, routed = weight_parts_bytes(m, precision)
    dp = _f(dp_attention)
    e, groups = _shape(m)["E"], _f(ep)
    spare = np.ceil(e / groups) * groups / e - 1.0  # redundant slots per expert
    plain = np.where(dp == 1, weight_bytes(m, precision), dp * dense + routed)
    return plain + routed * spare


def kv_bytes_per_token(
    m: Mapping[str, Any],
    kv_precision: ArrayLike = "bf16",
    tp: ArrayLike = 1,
    seq_tokens: ArrayLike | None = None,
) -> F64:
    """KV-cache bytes one token holds in an attention group of `tp` GPUs: 2 (K and V) x l x g x d
    x bytes.

    With more tensor ranks than KV heads each rank keeps one head (a replicated copy), so a
    replica stores max(g, t) heads (as vLLM and TensorRT-LLM do). MLA caches one latent of
    kv_lora_rank + qk_rope_head_dim elements per token and layer, shared by all heads, so every
    tensor rank keeps all of it: t copies (the duplication SGLang's DP attention removes;
    DeepSeek-V2, arXiv 2405.04434, Table 1: (d_c + d_h^R) l elements per token). A windowed
    layer keeps at most W tokens of a sequence: with `seq_tokens` (a sequence's length) its
    share is min(s, W) / s of a full layer's; without, every layer counts in full (an upper
    bound).
    """
    s = _shape(m)
    heads = np.maximum(s["g"], _f(tp))
    b = _lookup(kv_precision, KV_BYTES_PER_ELEMENT, "kv_precision")
    plain = 2.0 * s["l"] * heads * s["d"] * b
    c = census(m)
    per_layer = np.where(c["mla"], c["kv_elems"] * _f(tp), heads * c["kv_elems"])
    window, wl = c["window"], c["window_layers"]
    if seq_tokens is None:
        layers = c["l"]
    else:
        seq = np.maximum(_f(seq_tokens), 1.0)
        layers = c["l"] - wl + wl * np.where(window > 0, np.minimum(seq, window) / seq, 1.0)
    general = layers * per_layer * b
    simple = c["uniform"] & (wl == 0)
    return np.where(simple, plain, general) if seq_tokens is None else general


def kv_bytes_per_sequence(
    m: Mapping[str, Any],
    context_tokens: ArrayLike,
    kv_precision: ArrayLike = "bf16",
    tp: ArrayLike = 1,
) -> F64:
    """KV-cache bytes of one sequence of `context_tokens` tokens: full layers hold every token,
    windowed layers min(context, W) (sliding-window attention, Beltagy et al., Longformer, arXiv
    2004.05150; vLLM frees the blocks that slide out of the window)."""
    ctx = _f(context_tokens)
    return kv_bytes_per_token(m, kv_precision, tp, seq_tokens=ctx) * np.maximum(ctx, 1.0)


def window_context_tokens(context_tokens: ArrayLike, window_tokens: ArrayLike) -> F64:
    """Tokens a windowed layer attends to, summed over sequences: sum_i min(c_i, W) (W = 0: no
    window, c_i). Pass it to `iteration_breakdown` as `window_context_tokens`."""
    ctx, w = _f(context_tokens), _f(window_tokens)
    return np.sum(np.where(w > 0, np.minimum(ctx, w), ctx), axis=-1)


def activation_reserve_bytes(
    m: Mapping[str, Any],
    *,
    tp: ArrayLike = 1,
    max_batched_tokens: ArrayLike = 8192,
    max_num_seqs: ArrayLike = 256,
) -> F64:
    """Per-GPU memory held back from the KV cache for activations and workspaces.

    vLLM sizes the KV cache after a profiling forward pass of `max_batched_tokens` tokens, keeping
    its peak activation memory out of the cache. That peak is one layer's live tensors for every
    token: the residual stream and the normed input (2h, replicated over tensor ranks), the QKV
    output (h + 2 g d)/t and the FFN's up-projection and activation output ((n_ffn - 1) f k + f k)
    / t, in bf16; plus fp32 logits of `max_num_seqs` rows (4 V / t bytes each); plus
    WORKSPACE_BYTES.
    """
    s = _shape(m)
    t = _f(tp)
    per_token = (
        2.0 * s["h"]
        + (s["h"] + 2.0 * s["kv"] + (s["n_ffn"] - 1.0) * s["f"] * s["k"] + s["f"] * s["k"]) / t
    )
    # other layer mixes: the widest FFN a token passes (a dense layer's f, or a MoE layer's
    # (k + shared) f_e) and the attention's own QKV width
    c = census(m)
    ffn = np.maximum(np.where(c["n_dense"] > 0, c["f"], 0.0), (c["k"] + c["shared"]) * c["f_e"])
    mixed = 2.0 * c["h"] + (c["qkv_out"] + c["n_ffn"] * ffn) / t
    per_token = np.where(c["uniform"], per_token, mixed)
    logits = _f(max_num_seqs) * 4.0 * s["V"] / t
    return ACT_BYTES * per_token * _f(max_batched_tokens) + logits + WORKSPACE_BYTES


def kv_capacity_tokens(
    m: Mapping[str, Any],
    hbm_bytes: ArrayLike,
    *,
    tp: ArrayLike = 1,
    precision: ArrayLike = "bf16",
    kv_precision: ArrayLike = "bf16",
    gpu_memory_utilization: ArrayLike = 0.9,
    max_batched_tokens: ArrayLike = 8192,
    max_num_seqs: ArrayLike = 256,
    dp_attention: ArrayLike = 1,
    seq_tokens: ArrayLike | None = None,
    drafter_bytes: tuple[ArrayLike, ArrayLike] = (0.0, 0.0),
    ep: ArrayLike = 1,
) -> F64:
    """Tokens of KV cache a replica of n = tp x dp_attention GPUs holds, in whole blocks of
    BLOCK_TOKENS. `drafter_bytes`: a speculative drafter's weights and KV bytes per token
    (`drafter_bytes`), held beside the model's.

        C = floor((hbm x util x n - weights - n x reserve) / kv_bytes_per_token / 16) x 16
    vLLM's rule (`gpu_memory_utilization` of each GPU's HBM, less weights and the profiled
    activation peak, `activation_reserve_bytes`); 0 where the model does not fit. Weights are
    `replica_weight_bytes` (each data-parallel attention rank keeps the dense part); each rank
    profiles its share of the batch, max_batched_tokens / dp_attention. With `seq_tokens` (a
    typical sequence length) windowed layers count min(s, W) / s of a token
    (`kv_bytes_per_token`); without, in full.
    """
    t = _f(tp)
    dp = _f(dp_attention)
    n = t * dp
    free = (
        _f(hbm_bytes) * _f(gpu_memory_utilization) * n
        - replica_weight_bytes(m, precision, dp, ep)
        - n
        * activation_reserve_bytes(
            m, tp=tp, max_batched_tokens=_f(max_batched_tokens) / dp, max_num_seqs=max_num_seqs
        )
    )
    free = free - _f(drafter_bytes[0])
    per_token = kv_bytes_per_token(m, kv_precision, tp, seq_tokens) + _f(drafter_bytes[1])
    tokens = np.maximum(free, 0.0) / per_token
    return np.floor(tokens / BLOCK_TOKENS) * BLOCK_TOKENS


def drafter_bytes(
    m: Mapping[str, Any],
    draft: Mapping[str, Any] | None = None,
    *,
    mtp_modules: int = 1,
    precision: ArrayLike = "bf16",
    kv_precision: ArrayLike = "bf16",
    tp: ArrayLike = 1,
    dp_attention: ArrayLike = 1,
) -> tuple[F64, F64]:
    """A speculative drafter's memory on the replica: (weight bytes, KV bytes per token).

    A draft model: its own weights (`replica_weight_bytes`, same precision, each data-parallel
    attention rank a copy of its dense part) and its own KV cache for every token the model
    caches. MTP (`draft` None): each module is one transformer block of the model (DeepSeek-V3,
    arXiv 2412.19437 Sec. 2.2; the embedding and output layer are shared), taken as 1 / l of
    the replica's weights and of the KV bytes per token per module; DeepSeek-V3's 14B module
    against 671B over 61 layers (11B) shows what that leaves out (its projection and norms)."""
    if draft is not None:
        return (
            replica_weight_bytes(draft, precision, dp_attention),
            kv_bytes_per_token(draft, kv_precision, tp),
        )
    share = float(mtp_modules) / _shape(m)["l"]
    return (
        replica_weight_bytes(m, precision, dp_attention) * share,
        kv_bytes_per_token(m, kv_precision, tp) * share,
    )


def prefill_context_tokens(chunk_tokens: ArrayLike, start_tokens: ArrayLike = 0) -> F64:
    """Query-key pairs of causal attention for a prefill chunk of c tokens after s cached ones:
    sum_{i=1..c} (s + i) = c s + c (c + 1) / 2. Sum it over an iteration's chunks."""
    c, s0 = _f(chunk_tokens), _f(start_tokens)
    return c * s0 + c * (c + 1.0) / 2.0


def network_args(
    nic_gbit_s: float, calibration: Mapping[str, Any], nvlink_domain: int
) -> dict[str, float]:
    """The network keywords of `iteration_breakdown` (the expert all-to-all's) for GPUs with a
    `nic_gbit_s` scale-out NIC each: its achievable bytes/s, the family's net_efficiency of line
    rate, and the GPUs one NVLink domain joins."""
    return {
        "nic_bytes_per_s": nic_gbit_s / 8.0 * 1e9 * calibration["net_efficiency"],
        "nvlink_domain": nvlink_domain,
    }


def gpu_inference_args(gpu: Mapping[str, Any], calibration: Mapping[str, Any]) -> dict[str, Any]:
    """The dict `iteration_time_s` takes, from a GPU's catalog fields and its family's calibration
    (plain mappings, e.g. GPUSpec.model_dump() and catalog.entry("calibration", family)).

    A GPU without FP8 tensor cores (fp8_tflops null, Ampere) runs FP8 weights as W8A16 at its
    BF16 rate.
    """
    bf16 = float(gpu["bf16_tflops"]) * 1e12
    fp8 = gpu.get("fp8_tflops")
    fp4 = gpu.get("fp4_tflops")  # Blackwell; none: FP4 weights run W4A16 at the BF16 rate
    return {
        "bf16_flops": bf16,
        "fp8_flops": bf16 if fp8 is None else float(fp8) * 1e12,
        "fp4_flops": bf16 if fp4 is None else float(fp4) * 1e12,
        "hbm_bytes": float(gpu["hbm_gb"]) * DEVICE_BYTES_PER_GB,
        "hbm_bytes_per_s": float(gpu["hbm_tb_s"]) * 1e12,
        "nvlink_bytes_per_s": float(gpu["nvlink_gb_s"]) / 2.0 * 1e9,  # one direction
        "nvlink_efficiency": calibration["nvlink_efficiency"],
        "nvlink_alpha_s": calibration["nvlink_alpha_s"],
        "prefill_gemm_efficiency": calibration["prefill_gemm_efficiency"],
        "decode_hbm_efficiency": calibration["decode_hbm_efficiency"],
        "iteration_overhead_s": calibration["iteration_overhead_s"],
        "roofline_overlap_loss": calibration.get("roofline_overlap_loss", 0.0),
        "layer_overhead_s": calibration.get("layer_overhead_s", 0.0),
        "allreduce_latency_s": calibration.get("allreduce_latency_s", 0.0),
        # NVLink SHARP, where the NVSwitch has it: its achieved share of the line rate
        "nvls_efficiency": calibration["nvls_efficiency"] if gpu.get("nvls") else 0.0,
    }


def iteration_breakdown(
    m: Mapping[str, Any],
    g: Mapping[str, Any],
    *,
    prefill_tokens: ArrayLike,
    decode_seqs: ArrayLike,
    context_tokens: ArrayLike,
    prefill_context: ArrayLike | None = None,
    prefill_seqs: ArrayLike | None = None,
    tp: ArrayLike = 1,
    precision: ArrayLike = "bf16",
    kv_precision: ArrayLike = "bf16",
    window_context_tokens: ArrayLike | None = None,
    **parallel: Any,
) -> dict[str, F64]:
    """Seconds of one iteration per phase (see `iteration_time_s` for the arguments; `parallel`
    takes ep, dp_attention, nic_bytes_per_s, net_alpha_s and nvlink_domain, see
    `_iteration_constants`; `window_context_tokens`, the decoding sequences' summed
    min(context, W), `window_context_tokens()`, default their full context: an upper bound).

    Per GPU of the replica, with N = P + D tokens (P prefill tokens, D decoding sequences) and S
    sequences sampled (D plus the prefills that finish):
    - gemm: the blocks' linear layers, 2 N l (h (h + 2gd) + h^2 + n_ffn h f k [+ h E router]) / t
      FLOPs at the weights precision's peak (fp8: FP8 tensor cores, W8A8; int4: W4A16 at the
      BF16 peak), against the weights read once (for a MoE, the experts the N tokens touch,
      E (1 - (1 - k/E)^N) per layer) plus each GEMM's bf16 inputs and outputs; the larger.
    - lm_head: 2 S h V / t bf16 FLOPs against its bf16 weights (V h / t x 2 B) plus fp32 logits
      written and read by the sampler (8 V / t B per sampled row); with t > 1 the logits are
      gathered (ring all-gather).
    - attention: decode reads the KV cache of every decoding sequence's context,
      context_tokens x kv_bytes_per_token / t, and does 4 h l per context token (QK^T and AV over
      the query heads; GQA shrinks bytes, not FLOPs), memory-bound; prefill at the BF16 peak,
      compute-bound: 4 h l per query-key pair (Megatron's count, Narayanan et al. SC'21) over
      the causal pairs only, which flash attention skips to; the new tokens' K and V are
      written. Reading a chunk's cached prefix is not counted (prefill attention's arithmetic
      intensity is the chunk length, far above the ridge).
    - elementwise: fused residual-add + RMSNorm twice per layer (8h bf16 elements per token,
      replicated over tensor ranks), rotary embedding of q and k (2 (h + g d) / t), the FFN
      activation ((n_ffn) f k / t: read gate and up, write the product), memory-bound.
    - tp: two all-reduces of N h bf16 per layer (Megatron's tensor parallelism, Shoeybi et al.,
      arXiv 1909.08053), ring alpha-beta on NVLink (kernels/collectives.py), each plus the
      family's `allreduce_latency_s` (the fixed cost of a tensor-parallel all-reduce: launch,
      the ranks' skew at the barrier, the custom all-reduce's handshake).
    - overhead: fixed per iteration (scheduling, input preparation, launches, sampling's host
      side), `iteration_overhead_s` of the GPU family, plus `layer_overhead_s` per layer (the
      launch and tail of the layer's kernels).
    Other architectures and expert parallelism (a replica of n = t x D GPUs: D = dp_attention
    data-parallel attention ranks of t tensor ranks each, the batch split evenly over them; ep
    expert-parallel groups of n / ep GPUs, each holding E / ep routed experts sharded over its
    GPUs). Per GPU: the dense part (attention, dense FFNs, shared experts, routers; every layer,
    kernels/architecture.py) runs N / D tokens over t ranks; the routed experts run the busiest
    group's assignments, N_r = imbalance x N k / ep, over n / ep ranks, and read the experts
    the batch touches, n_moe E (1 - (1 - k/E)^N) / n of them; one GEMM roofline over both.
    imbalance = router_imbalance x (1 + sqrt(2 ep ln(ep) / (N k))): the largest of ep bins
    after N k random assignments (Raab & Steger, "Balls into Bins", RANDOM'98, Thm. 1: m/n +
    sqrt(2 m ln(n) / n) for m >> n ln n) times the model's popularity skew; 1 with ep = 1.
    Attention runs on each rank's N / D tokens and context (MLA: the absorbed latent form,
    kernels/architecture.py's attn_ctx_flops; windowed layers read min(context, W) when
    `window_context_tokens` is given), the lm-head on its S / D rows.
    - moe_comm: with ep > 1, per MoE layer, the dispatch of N_r token copies (FP8) to the
      experts and the combine of their outputs (BF16, A2A_DISPATCH_BYTES / A2A_COMBINE_BYTES),
      each as max(bytes x f_nvl / B_nvlink, bytes x f_net / B_nic) + alpha, with f_nvl =
      (min(ep, domain) - 1) / ep of the copies inside the NVLink domain and f_net = max(ep -
      domain, 0) / ep beyond it (DeepEP's low-latency kernels: a decode-only iteration of up to
      LOW_LATENCY_TOKENS_PER_RANK tokens per rank), or, otherwise, one copy per remote
      domain the token's experts sit in (`_remote_domains`, DeepEP's normal kernels forward
      inside the domain over NVLink); NVLink and the NICs move their shares at once.
    FLOP-bound work runs at `prefill_gemm_efficiency` of peak, byte-bound work at
    `decode_hbm_efficiency` of HBM bandwidth; a GEMM (the linear layers, the lm-head) takes the
    larger of its two bounds plus `roofline_overlap_loss` of the smaller (`_roofline`).
    """
    p_tok = _f(prefill_tokens)
    pre_ctx = prefill_context_tokens(p_tok) if prefill_context is None else _f(prefill_context)
    sampled = _f(decode_seqs) + (
        np.where(p_tok > 0, 1.0, 0.0) if prefill_seqs is None else _f(prefill_seqs)
    )
    c = _iteration_constants(
        m, g, tp=tp, precision=precision, kv_precision=kv_precision, **parallel
    )
    ctx = _f(context_tokens)
    wctx = ctx if window_context_tokens is None else _f(window_context_tokens)
    return _iteration_phases(c, p_tok, _f(decode_seqs), ctx, pre_ctx, sampled, wctx)


def _iteration_constants(
    m: Mapping[str, Any],
    g: Mapping[str, Any],
    *,
    tp: ArrayLike,
    precision: ArrayLike,
    kv_precision: ArrayLike,
    ep: ArrayLike = 1,
    dp_attention: ArrayLike = 1,
    nic_bytes_per_s: ArrayLike = NIC_BYTES_PER_S,
    net_alpha_s: ArrayLike = NET_ALPHA_S,
    nvlink_domain: ArrayLike = 8,
    allreduce: ArrayLike = "ring",
) -> dict[str, F64]:
    """Everything in an iteration's time that does not depend on the batch (see
    `iteration_breakdown`), computed once per replica configuration. `ep`: expert-parallel
    groups; `dp_attention`: data-parallel attention ranks (a replica has tp x dp_attention
    GPUs); `nic_bytes_per_s`: achievable scale-out bandwidth per GPU, one direction;
    `nvlink_domain`: GPUs one NVLink domain joins; `allreduce`: the tensor-parallel
    all-reduce's algorithm (ALLREDUCE)."""
    s = _shape(m)
    t = _f(tp)
    algo = _lookup(allreduce, ALLREDUCE, "allreduce")
    nvls_eff = _f(g.get("nvls_efficiency", 0.0))
    if np.any((algo == ALLREDUCE["nvls"]) & (nvls_eff <= 0.0)):
        raise ValueError("allreduce 'nvls' needs a GPU with NVLink SHARP (nvls: true)")
    wbytes = _lookup(precision, WEIGHT_BYTES_PER_PARAM, "precision")
    fp8 = _lookup(precision, FP8_COMPUTE, "precision") > 0
    gemm_peak = np.where(fp8, _f(g["fp8_flops"]), _f(g["bf16_flops"]))
    fp4 = _lookup(precision, FP4_COMPUTE, "precision") > 0
    gemm_peak = np.where(fp4, _f(g.get("fp4_flops", g["bf16_flops"])), gemm_peak)
    flop_eff = _f(g["prefill_gemm_efficiency"])
    e, k = s["E"], s["k"]
    n_up = s["n_ffn"] - 1.0  # up-projection matrices (gate and up for SwiGLU)
    gemm_io = (
        s["h"]
        + (s["h"] + 2.0 * s["kv"]) / t  # QKV in, out
        + s["h"] / t
        + s["h"]  # output projection in, out
        + s["h"]
        + n_up * s["f"] * k / t  # FFN up in, out
        + s["f"] * k / t
        + s["h"]
    )  # FFN down in, out
    ew = (8.0 * s["h"] + (2.0 * (s["h"] + s["kv"]) + s["n_ffn"] * s["f"] * k) / t) * ACT_BYTES
    moe = _moe_constants(m, t, _f(ep), _f(dp_attention))
    kv_tok = kv_bytes_per_token(m, kv_precision, tp) / t
    arch = census(m)
    win_share = np.where(arch["window_layers"] > 0, arch["window_layers"] / arch["l"], 0.0)
    ep_a, nvl = _f(ep), _f(g["nvlink_bytes_per_s"]) * _f(g["nvlink_efficiency"])
    domain = _f(nvlink_domain)
    return {
        **moe,
        "ep": ep_a,
        "f_net": np.maximum(ep_a - domain, 0.0) / ep_a,
        "f_nvl": (np.minimum(ep_a, domain) - 1.0) / ep_a,
        "remote_domains": _remote_domains(ep_a, domain, s["k"], m.get("route_nodes")),
        "nic_bw": _f(nic_bytes_per_s),
        "net_alpha": _f(net_alpha_s),
        "kv_win": kv_tok * win_share,  # the windowed layers' share of kv_tok
        "win_share": win_share,
        "attn_ctx": np.where(arch["uniform"], 4.0 * s["h"], arch["attn_ctx_flops"]),
        "attn_pair": np.where(arch["uniform"], 4.0 * s["h"], arch["attn_pair_flops"]),
        "nvl_bw_moe": nvl,
        "t": t,
        "l": s["l"],
        "h": s["h"],
        "V": s["V"],
        "E": e,
        "k": k,
        "attn_params": _attention_params(s),
        "expert_params": _expert_params(s),
        "router": np.where(e > 1, s["h"] * e, 0.0),
        "wbytes": wbytes,
        "gemm_peak_eff": gemm_peak * flop_eff,
        "bf16_peak_eff": _f(g["bf16_flops"]) * flop_eff,
        "gemm_io_bytes": gemm_io * ACT_BYTES,
        "ew_bytes": ew,
        "hbm_bw": _f(g["hbm_bytes_per_s"]) * _f(g["decode_hbm_efficiency"]),
        "nvlink_bw": _f(g["nvlink_bytes_per_s"]) * _f(g["nvlink_efficiency"]),
        # NVLS's bytes/s, where asked for and the GPU has it (0: the ring only), and whether
        # it is used for every all-reduce (nvls) or when faster (auto)
        "nvls_bw": np.where(algo > 0.0, _f(g["nvlink_bytes_per_s"]) * nvls_eff, 0.0),
        "nvls_only": algo == ALLREDUCE["nvls"],
        "alpha": _f(g["nvlink_alpha_s"]),
        "kv_tok": kv_tok,
        # Fixed time per iteration: the family's per-iteration overhead and a per-layer cost
        # (the launch and tail of each layer's kernels, exposed even under CUDA graphs).
        "overhead": _f(g["iteration_overhead_s"]) + s["l"] * _f(g.get("layer_overhead_s", 0.0)),
        # With tensor parallelism, a fixed cost per all-reduce beyond its bytes.
        "ar_latency": np.where(t > 1, _f(g.get("allreduce_latency_s", 0.0)), 0.0),
        "overlap_loss": _f(g.get("roofline_overlap_loss", 0.0)),
    }


def _roofline(compute_s: F64, memory_s: F64, overlap_loss: ArrayLike) -> F64:
    """A GEMM's time from its two bounds: the larger, plus `overlap_loss` of the smaller.

    The roofline (Williams et al., CACM 2009) takes max(compute, memory): a kernel that hides
    all of its memory traffic behind its math or the reverse. Real GEMMs near the ridge point do
    not: the prologue loads tiles before the first MMA, the epilogue writes after the last, and
    a wave of thread blocks that streams weights at the bandwidth limit leaves tensor cores idle
    (the measured GEMM curves of Vidur's profiles, Agrawal et al., MLSys'24, bend below the
    roofline there). A share `overlap_loss` of the lesser bound stays exposed; 0 is the plain
    roofline, 1 no overlap at all. Far from the ridge (big prefills, batch-1 decode) the lesser
    bound is small and the term vanishes: it matters for decode batches of 100-500 tokens,
    where large models run."""
    return np.maximum(compute_s, memory_s) + _f(overlap_loss) * np.minimum(compute_s, memory_s)


def _moe_constants(m: Mapping[str, Any], t: F64, ep: F64, dp: F64) -> dict[str, F64]:
    """The batch-independent part of the dense-part / routed-expert split of
    `iteration_breakdown`: per-token sums over the layers (kernels/architecture.py)."""
    c = census(m)
    lt = layer_totals(c)
    n = t * dp
    n_up = c["n_ffn"] - 1.0
    h = c["h"]
    attn_io = h + c["qkv_out"] / t + c["o_in"] / t + h
    ffn_io = h + (n_up + 1.0) * c["f"] / t + h
    shared_io = 2.0 * h + (n_up + 1.0) * c["shared"] * c["f_e"] / t
    dense_io = c["l"] * attn_io + c["n_dense"] * ffn_io + c["n_moe"] * shared_io
    dense_ew = (
        c["l"] * (8.0 * h + 2.0 * (c["qkv_out"] - c["kv"]) / t)
        + (c["n_dense"] * c["n_ffn"] * c["f"] + c["n_moe"] * c["n_ffn"] * c["shared"] * c["f_e"])
        / t
    )
    expert_ranks = n / ep  # GPUs one expert is sharded over
    simple = c["uniform"] & (dp == 1) & (ep == 1)
    return {
        "simple": simple,
        "D": dp,
        "n_gpus": n,
        "n_moe": c["n_moe"],
        "dense_active": lt["dense_part"],
        "dense_weights": lt["dense_part"] - c["n_moe"] * c["router"],
        "expert": c["expert"],
        "expert_ranks": expert_ranks,
        "dense_io": dense_io * ACT_BYTES,
        "routed_io": c["n_moe"] * (n_up + 1.0) * c["f_e"] / expert_ranks * ACT_BYTES,
        "dense_ew": dense_ew * ACT_BYTES,
        "routed_ew": c["n_moe"] * c["n_ffn"] * c["f_e"] / expert_ranks * ACT_BYTES,
        "skew": _f(m.get("router_imbalance") or 1.0),
        "max_imbalance": ep * np.minimum(c["k"], c["E"] / ep) / c["k"],
    }


def _remote_domains(ep: F64, domain: F64, k: F64, route_nodes: Any) -> F64:
    """Remote NVLink domains one token's k experts sit in, on average, with the experts spread
    evenly over G = ep / domain domains: (G - 1) (1 - (1 - 1/G)^k), capped by node-limited
    routing's M (DeepSeek-V3, arXiv 2412.19437, Sec. 2.1.2: each token goes to at most 4 nodes;
    `route_nodes`); 0 inside one domain."""
    groups = np.maximum(ep / domain, 1.0)
    hit = (groups - 1.0) * (1.0 - (1.0 - 1.0 / groups) ** k)
    if route_nodes is not None:
        hit = np.minimum(hit, _f(route_nodes))
    return np.where(ep > domain, hit, 0.0)


def routed_imbalance(n_tok: ArrayLike, k: ArrayLike, ep: ArrayLike, skew: ArrayLike = 1.0) -> F64:
    """Busiest expert-parallel group's routed assignments over the mean, for N tokens of k
    assignments each over ep groups: skew x (1 + sqrt(2 ep ln(ep) / (N k))) (Raab & Steger,
    RANDOM'98, Thm. 1); 1 for ep = 1. The caller caps it at ep min(k, E/ep) / k (a group
    cannot take more than min(k, E/ep) copies of each token)."""
    n, kk, e = _f(n_tok), _f(k), _f(ep)
    spread = np.sqrt(2.0 * e * np.log(np.maximum(e, 1.0)) / np.maximum(n * kk, 1.0))
    return np.where(e > 1, _f(skew) * (1.0 + spread), 1.0)


def alltoall_s(
    nbytes: ArrayLike,
    f_nvl: ArrayLike,
    f_net: ArrayLike,
    nvlink_bytes_per_s: ArrayLike,
    nic_bytes_per_s: ArrayLike,
    nvlink_alpha_s: ArrayLike,
    net_alpha_s: ArrayLike,
) -> F64:
    """Seconds for one all-to-all in which a GPU receives `nbytes`, a share f_nvl of it over
    NVLink and f_net over its NIC, both at once: max(n f_nvl / B_nvl, n f_net / B_nic) + alpha
    (the network's alpha when any of it leaves the NVLink domain); alpha-beta as
    kernels/collectives.py, one step (every peer sends directly, DeepEP's kernels)."""
    n = _f(nbytes)
    fn, fx = _f(f_nvl), _f(f_net)
    beta = np.maximum(n * fn / _f(nvlink_bytes_per_s), n * fx / _f(nic_bytes_per_s))
    alpha = np.where(fx > 0, _f(net_alpha_s), _f(nvlink_alpha_s))
    return np.where(fn + fx > 0, beta + alpha, 0.0)


def _iteration_phases(
    c: Mapping[str, F64],
    p_tok: F64,
    d_seq: F64,
    ctx: F64,
    pre_ctx: F64,
    sampled: F64,
    wctx: F64 | None = None,
) -> dict[str, F64]:
    """The phases of `iteration_breakdown` from `_iteration_constants` and the batch."""
    t, layers, h, V = c["t"], c["l"], c["h"], c["V"]
    n_tok = p_tok + d_seq
    D = c["D"]
    n_grp = n_tok / D  # tokens of one data-parallel attention rank
    simple = c["simple"]
    imb = np.minimum(routed_imbalance(n_tok, c["k"], c["ep"], c["skew"]), c["max_imbalance"])
    n_routed = n_tok * c["k"] * imb / c["ep"]  # assignments at the busiest expert group

    # --- linear layers of the transformer blocks ---
    e, k = c["E"], c["k"]
    experts_touched = e * (1.0 - (1.0 - k / e) ** n_tok)
    layer_weights = c["attn_params"] + experts_touched * c["expert_params"]
    active = c["attn_params"] + k * c["expert_params"] + c["router"]  # parameters a token uses
    gemm_flops = 2.0 * n_tok * layers * active / t
    gemm_bytes = layers * (layer_weights * c["wbytes"] / t + n_tok * c["gemm_io_bytes"])
    if not np.all(simple):  # dense part over tp ranks, routed experts at the busiest group
        mixed_flops = (
            2.0 * n_grp * c["dense_active"] / t
            + 2.0 * n_routed * c["n_moe"] * c["expert"] / c["expert_ranks"]
        )
        mixed_bytes = (
            c["dense_weights"] * c["wbytes"] / t
            + c["n_moe"] * experts_touched * c["expert"] * c["wbytes"] / c["n_gpus"]
            + n_grp * c["dense_io"]
            + n_routed * c["routed_io"]
        )
        gemm_flops = np.where(simple, gemm_flops, mixed_flops)
        gemm_bytes = np.where(simple, gemm_bytes, mixed_bytes)
    gemm_s = _roofline(gemm_flops / c["gemm_peak_eff"], gemm_bytes / c["hbm_bw"], c["overlap_loss"])

    # --- output layer and sampler ---
    s_grp = sampled / D  # each data-parallel attention rank samples its own rows
    head_flops = 2.0 * s_grp * h * V / t
    head_bytes = (np.where(s_grp > 0, 2.0 * V * h, 0.0) + 8.0 * s_grp * V) / t
    head_s = _roofline(
        head_flops / c["bf16_peak_eff"], head_bytes / c["hbm_bw"], c["overlap_loss"]
    ) + ring_allgather_s(4.0 * s_grp * V, t, c["nvlink_bw"], c["alpha"])

    # --- attention core and KV-cache traffic ---
    decode_attn = np.maximum(
        4.0 * h * layers * ctx / t / c["bf16_peak_eff"], ctx * c["kv_tok"] / c["hbm_bw"]
    )
    prefill_attn = 4.0 * h * layers * pre_ctx / t / c["bf16_peak_eff"]
    kv_write = n_grp * c["kv_tok"] / c["hbm_bw"]
    if not np.all(simple):  # per rank: its context, MLA/head_dim FLOPs, windowed layers
        ctx_g = ctx / D
        wctx_g = ctx_g if wctx is None else wctx / D
        ctx_eff = ctx_g - c["win_share"] * (ctx_g - wctx_g)  # mean over the layers
        mixed_decode = np.maximum(
            c["attn_ctx"] * layers * ctx_eff / t / c["bf16_peak_eff"],
            (ctx_g * c["kv_tok"] - (ctx_g - wctx_g) * c["kv_win"]) / c["hbm_bw"],
        )
        decode_attn = np.where(simple, decode_attn, mixed_decode)
        mixed_prefill = c["attn_pair"] * layers * (pre_ctx / D) / t / c["bf16_peak_eff"]
        prefill_attn = np.where(simple, prefill_attn, mixed_prefill)
    attn_s = decode_attn + prefill_attn + kv_write

    # --- memory-bound element-wise kernels between the GEMMs ---
    ew_s = layers * n_tok * c["ew_bytes"] / c["hbm_bw"]
    if not np.all(simple):
        mixed_ew = (n_grp * c["dense_ew"] + n_routed * c["routed_ew"]) / c["hbm_bw"]
        ew_s = np.where(simple, ew_s, mixed_ew)

    # --- tensor parallelism: 2 all-reduces of the layer output per layer ---
    # on a ring, or with NVLS (the NVSwitch reduces in the switch) always or where it is faster
    ar_bytes = ACT_BYTES * n_grp * h
    ar_s = ring_allreduce_s(ar_bytes, t, c["nvlink_bw"], c["alpha"])
    if np.any(c["nvls_bw"] > 0.0):
        nvls_s = nvls_allreduce_s(ar_bytes, t, np.maximum(c["nvls_bw"], 1.0), c["alpha"])
        pick = np.where(c["nvls_only"], nvls_s, np.minimum(ar_s, nvls_s))
        ar_s = np.where(c["nvls_bw"] > 0.0, pick, ar_s)
    tp_s = 2.0 * layers * (ar_s + c["ar_latency"])

    # --- expert parallelism: dispatch and combine all-to-alls per MoE layer ---
    # network copies of a token: every remote one (low-latency kernels) or one per remote
    # NVLink domain (normal kernels), as a share of the k copies alltoall_s splits
    low_latency = (p_tok <= 0.0) & (n_tok / c["n_gpus"] <= LOW_LATENCY_TOKENS_PER_RANK)
    net_share = np.where(low_latency, c["f_net"], c["remote_domains"] / c["k"])
    a2a = [
        alltoall_s(
            n_routed * h * nbytes,
            c["f_nvl"],
            net_share,
            c["nvl_bw_moe"],
            c["nic_bw"],
            c["alpha"],
            c["net_alpha"],
        )
        for nbytes in (A2A_DISPATCH_BYTES, A2A_COMBINE_BYTES)
    ]
    moe_s = np.where(c["ep"] > 1, c["n_moe"] * (a2a[0] + a2a[1]), 0.0)

    total = gemm_s + head_s + attn_s + ew_s + tp_s + moe_s + c["overhead"]
    overhead = np.broadcast_to(c["overhead"], np.shape(total)).astype(np.float64)
    return {
        "iteration_time_s": total,
        "gemm_s": gemm_s,
        "lm_head_s": head_s,
        "attention_s": attn_s,
        "elementwise_s": ew_s,
        "tp_comm_s": tp_s,
        "moe_comm_s": np.broadcast_to(moe_s, np.shape(total)).astype(np.float64),
        "overhead_s": overhead,
    }


class IterationModel:
    """`iteration_time_s` with the model, GPU and replica bound: the batch-independent part is
    computed once, so an engine that asks for every iteration pays only for the batch's part.
    Same equations, same numbers (`_iteration_phases` serves both)."""

    def __init__(
        self,
        m: Mapping[str, Any],
        g: Mapping[str, Any],
        *,
        tp: ArrayLike = 1,
        precision: ArrayLike = "bf16",
        kv_precision: ArrayLike = "bf16",
        **parallel: Any,
    ):
        self.constants = _iteration_constants(
            m, g, tp=tp, precision=precision, kv_precision=kv_precision, **parallel
        )

    def __call__(
        self,
        prefill_tokens: ArrayLike,
        decode_seqs: ArrayLike,
        context_tokens: ArrayLike,
        prefill_context: ArrayLike,
        prefill_seqs: ArrayLike,
    ) -> F64:
        d_seq = _f(decode_seqs)
        return _iteration_phases(
            self.constants,
            _f(prefill_tokens),
            d_seq,
            _f(context_tokens),
            _f(prefill_context),
            d_seq + _f(prefill_seqs),
        )["iteration_time_s"]

    def _context_costs(self) -> tuple[float, float, float]:
        """Decode attention's seconds per cached context token, FLOP-bound and byte-bound
        (per_context is the larger), and prefill attention's per query-key pair."""
        c = self.constants
        attention = 4.0 * c["h"] * c["l"] / c["t"] / c["bf16_peak_eff"]
        kv = c["kv_tok"] / c["hbm_bw"]
        per_pair = attention
        if not np.all(c["simple"]):  # per data-parallel rank; MLA's and head_dim's FLOPs
            d = c["D"]
            attention = c["attn_ctx"] * c["l"] / c["t"] / c["bf16_peak_eff"] / d
            kv = c["kv_tok"] / d / c["hbm_bw"]
            per_pair = c["attn_pair"] * c["l"] / c["t"] / c["bf16_peak_eff"] / d
        return float(attention), float(kv), float(per_pair)

    def table(
        self, max_tokens: int, max_seqs: int, drafter: Drafter | None = None
    ) -> IterationTable:
        """The iteration time of every batch up to `max_tokens` tokens and `max_seqs` sampled
        sequences as lookups and two slopes (see IterationTable); one kernel call per axis.
        With a `drafter`, decode-only iterations are speculative (`speculative_table`)."""
        c = self.constants
        tokens = np.arange(max_tokens + 1, dtype=np.float64)
        seqs = np.arange(max_seqs + 1, dtype=np.float64)
        zero_t, zero_s = np.zeros_like(tokens), np.zeros_like(seqs)
        by_tokens = _iteration_phases(c, tokens, zero_t, zero_t, zero_t, zero_t)
        by_seqs = _iteration_phases(c, zero_s, zero_s, zero_s, zero_s, seqs)["lm_head_s"]
        decode_tokens = None  # the same as tokens[:max_seqs + 1] without expert parallelism
        if np.any(c["ep"] > 1):  # a decode-only iteration may use the low-latency all-to-all
            by_decode = _iteration_phases(c, zero_s, seqs, zero_s, zero_s, zero_s)
            decode_tokens = by_decode["iteration_time_s"].tolist()
        attention, kv, per_pair = self._context_costs()
        table = IterationTable(
            tokens=by_tokens["iteration_time_s"].tolist(),
            sampled=(by_seqs - by_seqs[0]).tolist(),
            per_context=max(attention, kv),
            per_prefill_pair=per_pair,
            decode_tokens=decode_tokens,
        )
        return table if drafter is None else speculative_table(self, table, drafter)


class Drafter(NamedTuple):
    """A speculative replica's drafter, for IterationModel.table: `draft_tokens` (k) drafted
    per sequence and verify step, `tokens_per_step` (speculative_tokens_per_step) kept on
    average, and the draft model's IterationModel (None: the model's own MTP module, one
    transformer block of it per drafted token)."""

    draft_tokens: int
    tokens_per_step: float
    model: IterationModel | None = None


def speculative_tokens_per_step(rates: Sequence[float]) -> float:
    """Tokens a sequence keeps per verify step, on average: 1 + sum_i prod_{j <= i} a_j for
    conditional acceptance rates a_1..a_k of the drafted positions (a drafted token counts only
    when every one before it was accepted; the verify pass adds one token of its own, the
    correction or the bonus). With one rate a: (1 - a^(k+1)) / (1 - a), Leviathan et al.,
    "Fast Inference from Transformers via Speculative Decoding", ICML'23, eq. (1)."""
    tau, run = 1.0, 1.0
    for a in rates:
        run *= a
        tau += run
    return tau


def speculative_table(model: IterationModel, table: IterationTable, d: Drafter) -> IterationTable:
    """`table` with its decode-only iterations speculative, per token kept.

    A verify step of D sequences runs D (k + 1) tokens through the model's layers and output
    layer (each sequence's last token and its k drafts, one forward pass, as vLLM and SGLang
    verify) and attends each of the k + 1 queries to the sequence's cached context: (k + 1)x the
    attention FLOPs, the KV cache read once. The drafter then proposes the next k tokens: k
    sequential passes of the draft model at D sequences (its own iteration, overhead included),
    or of one MTP transformer block plus the shared output layer (the model's layered phases
    over its layers, DeepSeek-V3 Sec. 2.2: the module is one block sharing the embedding and
    head). A step keeps tau tokens per sequence on average, so the table's decode-only iteration
    is a step's time over tau: one token per sequence, as the engine counts, at the expected
    pace, with the context (and so the KV cache) growing one token per iteration, which it does
    on average. Iterations that prefill do not speculate (their decoding sequences advance one
    token); their prefill also runs through the drafter (its prefill cost is added), which needs
    the prompt's hidden states or KV to draft from.
    """
    c = model.constants
    k, tau = d.draft_tokens, d.tokens_per_step
    seqs = np.arange(len(table.sampled), dtype=np.float64)
    zero = np.zeros_like(seqs)
    v = seqs * (k + 1.0)
    verify = _iteration_phases(c, zero, v, zero, zero, v)["iteration_time_s"]
    attention, kv, _ = model._context_costs()
    verify_ctx = max((k + 1.0) * attention, kv)
    tok = np.asarray(table.tokens)
    layers = float(np.max(c["l"]))
    if d.model is None:  # one MTP block per draft: the layered phases' share of one layer
        ph = _iteration_phases(c, zero, seqs, zero, zero, seqs)
        layered = ph["iteration_time_s"] - ph["overhead_s"] - ph["lm_head_s"]
        draft = layered / layers + ph["lm_head_s"]
        draft_ctx = max(attention, kv) / layers
        prefill = np.where(tok > tok[0], (tok - tok[0]) / layers, 0.0)
        pair = table.per_prefill_pair / layers
    else:
        dc = d.model.constants
        draft = _iteration_phases(dc, zero, seqs, zero, zero, seqs)["iteration_time_s"]
        da, dkv, pair = d.model._context_costs()
        draft_ctx = max(da, dkv)
        n = np.arange(tok.size, dtype=np.float64)
        dz = np.zeros_like(n)
        prefill = np.where(n > 0, _iteration_phases(dc, n, dz, dz, dz, dz)["iteration_time_s"], 0.0)
    step = verify + k * draft
    per_token = step / tau
    sampled = np.asarray(table.sampled)
    return IterationTable(
        tokens=(tok + prefill).tolist(),
        sampled=table.sampled,
        per_context=table.per_context,
        per_prefill_pair=table.per_prefill_pair + pair,
        decode_tokens=(per_token - sampled).tolist(),
        decode_per_context=(verify_ctx + k * draft_ctx) / tau,
    )


class IterationTable:
    """`iteration_time_s` as lookups, for an engine that asks once per batch change.

    Every phase of `_iteration_phases` depends on one batch quantity only: the linear layers,
    element-wise kernels, KV writes, tensor-parallel all-reduces and the fixed overhead on the
    tokens N = P + D; the output layer and sampler on the sampled sequences S; decode attention
    on the decoding sequences' summed context, linearly (both of its rooflines are proportional
    to it); prefill attention on the query-key pairs, linearly. So, exactly,

        t_iter = tokens[N] + sampled[S] + per_context x context + per_prefill_pair x pairs,

    with `sampled[0] = 0`, for an iteration that prefills. A decode-only iteration of D
    sequences takes `decode_tokens[D]` in place of tokens[D]: the same number unless the replica
    is expert-parallel, where a decode-only iteration may dispatch with DeepEP's low-latency
    kernels (LOW_LATENCY_TOKENS_PER_RANK). A run of decode iterations of D sequences whose
    contexts grow by one token each per iteration therefore has the closed-form elapsed time of
    `decode_run_s`.
    """

    __slots__ = (
        "decode_base",
        "decode_per_context",
        "decode_tokens",
        "per_context",
        "per_prefill_pair",
        "sampled",
        "split",
        "tokens",
    )

    def __init__(
        self,
        tokens: list[float],
        sampled: list[float],
        per_context: float,
        per_prefill_pair: float,
        decode_tokens: list[float] | None = None,
        decode_per_context: float | None = None,
    ):
        self.tokens = tokens
        self.sampled = sampled
        self.per_context = per_context
        #: a decode-only iteration's per_context (speculative decoding's differs)
        self.decode_per_context = per_context if decode_per_context is None else decode_per_context
        self.per_prefill_pair = per_prefill_pair
        #: whether decode-only iterations have their own token term
        self.split = decode_tokens is not None
        self.decode_tokens = tokens[: len(sampled)] if decode_tokens is None else decode_tokens
        #: a decode iteration of D sequences at zero context: decode_tokens[D] + sampled[D]
        self.decode_base = [self.decode_tokens[d] + sampled[d] for d in range(len(sampled))]

    def time_s(
        self,
        prefill_tokens: int,
        decode_seqs: int,
        context_tokens: float,
        prefill_pairs: float,
        prefill_seqs: int,
    ) -> float:
        """One iteration (arguments as `iteration_time_s`)."""
        if not prefill_tokens:
            return (
                self.decode_tokens[decode_seqs]
                + self.sampled[decode_seqs + prefill_seqs]
                + self.decode_per_context * context_tokens
            )
        return (
            self.tokens[prefill_tokens + decode_seqs]
            + self.sampled[decode_seqs + prefill_seqs]
            + self.per_context * context_tokens
            + self.per_prefill_pair * prefill_pairs
        )

    def decode_run(self, decode_seqs: int, context_tokens: float) -> tuple[float, float]:
        """(first, growth): decode iteration i (from 0) of the run takes first + growth x i."""
        n, per = decode_seqs, self.decode_per_context
        return self.decode_base[n] + per * context_tokens, per * n

    @staticmethod
    def decode_run_s(first: float, growth: float, iterations: float) -> float:
        """Elapsed time of the first `iterations` iterations of a decode run: the arithmetic
        series j x first + growth x j (j - 1) / 2."""
        j = iterations
        return j * first + growth * (j * (j - 1.0) / 2.0)


def iteration_time_s(
    m: Mapping[str, Any],
    g: Mapping[str, Any],
    *,
    prefill_tokens: ArrayLike,
    decode_seqs: ArrayLike,
    context_tokens: ArrayLike,
    prefill_context: ArrayLike | None = None,
    prefill_seqs: ArrayLike | None = None,
    tp: ArrayLike = 1,
    precision: ArrayLike = "bf16",
    kv_precision: ArrayLike = "bf16",
    **parallel: Any,
) -> F64:
    """Seconds of one continuous-batching iteration of a replica of `tp` GPUs.

    `prefill_tokens` prompt tokens are prefilled (chunks of one or more prompts) and
    `decode_seqs` sequences decode one token each, attending to `context_tokens` cached tokens in
    all (the sum of their contexts). `prefill_context` is the prefill chunks' query-key pairs
    (sum of `prefill_context_tokens` over the chunks; default: the prefill tokens as one prompt
    from position 0); `prefill_seqs` the prefills that finish and sample a token (default 1 when
    there are prefill tokens). `g` is `gpu_inference_args(...)`. Phases and equations in
    `iteration_breakdown`.
    """
    return iteration_breakdown(
        m,
        g,
        prefill_tokens=prefill_tokens,
        decode_seqs=decode_seqs,
        context_tokens=context_tokens,
        prefill_context=prefill_context,
        prefill_seqs=prefill_seqs,
        tp=tp,
        precision=precision,
        kv_precision=kv_precision,
        **parallel,
    )["iteration_time_s"]


def offline_steady_state(
    m: Mapping[str, Any],
    g: Mapping[str, Any],
    *,
    prompt_tokens: ArrayLike,
    output_tokens: ArrayLike,
    max_num_seqs: ArrayLike = 256,
    max_batched_tokens: ArrayLike = 8192,
    tp: ArrayLike = 1,
    precision: ArrayLike = "bf16",
    kv_precision: ArrayLike = "bf16",
    gpu_memory_utilization: ArrayLike = 0.9,
    reserve_full_sequence: ArrayLike = False,
    kv_capacity: ArrayLike | None = None,
    **parallel: Any,
) -> dict[str, F64]:
    """Steady state of an offline benchmark on one replica (see `offline_throughput_tokens_s`).

    Returns the iteration's composition (requests started per iteration, decoding sequences,
    prefill tokens, running sequences, KV tokens held), its time, the binding limit (0 token
    budget, 1 max_num_seqs, 2 KV cache) and output tokens per second.
    """
    i_len, o_len = _f(prompt_tokens), _f(output_tokens)
    seqs_cap, tok_cap = _f(max_num_seqs), _f(max_batched_tokens)
    cap = (
        kv_capacity_tokens(
            m,
            g["hbm_bytes"],
            tp=tp,
            precision=precision,
            kv_precision=kv_precision,
            gpu_memory_utilization=gpu_memory_utilization,
            max_batched_tokens=max_batched_tokens,
            max_num_seqs=max_num_seqs,
            dp_attention=parallel.get("dp_attention", 1),
        )
        if kv_capacity is None
        else _f(kv_capacity)
    )
    dec = np.maximum(o_len - 1.0, 0.0)  # decode iterations per request: prefill samples the first
    resid = np.maximum(1.0, i_len / tok_cap)  # iterations a prompt spends in prefill, at least
    half_block = (BLOCK_TOKENS - 1) / 2.0
    full = np.ceil((i_len + o_len) / BLOCK_TOKENS) * BLOCK_TOKENS
    reserve = np.asarray(reserve_full_sequence, dtype=bool)
    kv_decoding = np.where(reserve, full, i_len + o_len / 2.0 + half_block)
    kv_prefilling = np.where(reserve, full, i_len + half_block)

    lam_all = np.stack(
        np.broadcast_arrays(
            tok_cap / (i_len + dec),  # token budget
            seqs_cap / (dec + resid),  # max_num_seqs
            cap / (dec * kv_decoding + resid * kv_prefilling),  # KV cache
        )
    )
    binding = np.argmin(lam_all, axis=0)
    lam = np.maximum(np.min(lam_all, axis=0), 0.0)

    decode = lam * dec
    prefill = lam * i_len
    context = decode * (i_len + o_len / 2.0)  # mean context over decode steps 1..O-1 is I + O/2
    bd = iteration_breakdown(
        m,
        g,
        prefill_tokens=prefill,
        decode_seqs=decode,
        context_tokens=context,
        prefill_context=lam * prefill_context_tokens(i_len),
        prefill_seqs=lam,
        tp=tp,
        precision=precision,
        kv_precision=kv_precision,
        **parallel,
    )
    t_iter = bd["iteration_time_s"]
    return {
        "requests_per_iteration": lam,
        "decode_seqs": decode,
        "prefill_tokens": prefill,
        "running_seqs": decode + lam * resid,
        "kv_tokens": decode * kv_decoding + lam * resid * kv_prefilling,
        "kv_capacity_tokens": np.broadcast_to(cap, np.shape(lam)).astype(np.float64),
        "binding": binding,
        "iteration_time_s": t_iter,
        "output_tokens_per_s": lam * o_len / t_iter,
        **{k: v for k, v in bd.items() if k != "iteration_time_s"},
    }


def offline_throughput_tokens_s(
    m: Mapping[str, Any],
    g: Mapping[str, Any],
    *,
    prompt_tokens: ArrayLike,
    output_tokens: ArrayLike,
    max_num_seqs: ArrayLike = 256,
    max_batched_tokens: ArrayLike = 8192,
    tp: ArrayLike = 1,
    precision: ArrayLike = "bf16",
    kv_precision: ArrayLike = "bf16",
    gpu_memory_utilization: ArrayLike = 0.9,
    reserve_full_sequence: ArrayLike = False,
    kv_capacity: ArrayLike | None = None,
    **parallel: Any,
) -> F64:
    """Output tokens per second of one replica in the steady state of an offline benchmark
    (N requests at time 0, every one I prompt and O output tokens), closed form.

    Model. The scheduler (vLLM's, with chunked prefill: running decodes first, then prefill chunks
    within the token budget) keeps the replica as full as its three limits allow; with N much
    larger than the concurrency, requests start and finish at a steady rate of lam per iteration
    and their ages spread evenly. Each request spends r = max(1, I / max_batched_tokens)
    iterations in prefill (the iteration that finishes the prompt samples its first token) and
    O - 1 decoding, so by Little's law an iteration holds D = lam (O - 1) decoding sequences,
    lam r sequences in prefill and P = lam I prefill tokens. lam is the largest rate the limits
    admit, each linear in lam:
        token budget   P + D = lam (I + O - 1) <= max_batched_tokens
        sequences      lam (O - 1 + r) <= max_num_seqs
        KV cache       lam ((O - 1) kv_dec + r kv_pre) <= C,
    where C = `kv_capacity_tokens`, kv_dec a decoding sequence's mean footprint, I + O/2 tokens
    plus half a block (vLLM allocates blocks as tokens arrive, so the cache fills with sequences
    of every age), and kv_pre = I plus half a block. With `reserve_full_sequence` (TensorRT-LLM's
    GUARANTEED_NO_EVICT capacity scheduler admits a request only when blocks for all I + O
    tokens are free) both are I + O rounded up to whole blocks. The binding limit sets lam: every
    phase of an iteration costs max(alpha lam, beta), alpha lam or beta (alpha, beta >= 0), so
    t / lam never grows with lam and more concurrency never lowers throughput. The decoding
    sequences' contexts average I + O/2 (decode step j attends to I + j tokens, j = 1..O-1) and
    each prompt's causal attention covers I (I + 1)/2 query-key pairs. With t the
    `iteration_time_s` of that mean iteration,
        throughput = lam O / t.
    The mean iteration stands for the mix of iterations: exact while every phase stays on one
    side of its roofline, optimistic otherwise (max is convex), e.g. with a handful of sequences
    whose iterations alternate between compute-bound prefill and memory-bound decode.
    Not modelled: the ramp-up and drain of a finite N (a few per cent when N is 5-10x the
    concurrency), preemptions (none in this steady state: finishing requests free blocks as fast
    as the running ones grow), and prefix caching.
    """
    return offline_steady_state(
        m,
        g,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        max_num_seqs=max_num_seqs,
        max_batched_tokens=max_batched_tokens,
        tp=tp,
        precision=precision,
        kv_precision=kv_precision,
        gpu_memory_utilization=gpu_memory_utilization,
        reserve_full_sequence=reserve_full_sequence,
        kv_capacity=kv_capacity,
        **parallel,
    )["output_tokens_per_s"]
