"""Training step time and memory of a dense or mixture-of-experts transformer under 3D+CP
parallelism, vectorised over arrays of configurations.

Every argument broadcasts (numpy rules), so one call evaluates 10^5-10^6 configurations. Sizes
are in bytes, times in seconds, throughputs in FLOP/s or bytes/s (SI: tera = 10**12).

Notation (Narayanan et al., SC'21, "Efficient Large-Scale Language Model Training on GPU
Clusters Using Megatron-LM", arXiv 2104.04473): l layers, h hidden, a heads, s sequence length,
V vocabulary, B global batch (sequences), b microbatch, t/p/d tensor/pipeline/data width, c the
context-parallel width; f the FFN width, g the KV heads (GQA), E experts of which k are active.

Model of one step, per GPU on the slowest pipeline stage:
    t_step = (m + (p - 1)/v) t_mb + t_dp_exposed + t_optimizer + t_data_stall
with m = B/(d b) microbatches, v virtual stages per rank (interleaved 1F1B; the bubble term is
Megatron's (p-1)/(v m), Sec. 2.2, when m >= p, and (p v + m - 1)/v - m microbatches below), and
t_mb the forward + backward (+ recompute) time of one microbatch on a stage: matrix FLOPs at an
achievable fraction of peak, element-wise kernels at an achievable fraction of HBM bandwidth,
tensor-parallel all-reduces on NVLink, context-parallel KV exchange, and pipeline point-to-point
sends.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .architecture import census, layer_totals
from .collectives import ring_allgather_s, ring_allreduce_s

F64 = NDArray[np.float64]

#: Recompute modes as integer codes, so that they vectorise.
RECOMPUTE_CODES = {"none": 0, "selective": 1, "full": 2}

#: Bytes per parameter held by mixed-precision Adam (Megatron-LM docs, distrib_optimizer.md:
#: bf16 weights 2, fp32 gradient accumulation buffer 4, fp32 master weights + Adam m + v 12;
#: cf. Rajbhandari et al., ZeRO, SC'20, Sec. 3.1 with K = 12).
WEIGHT_BYTES = 2.0
GRAD_BYTES = 4.0
OPTIMIZER_BYTES = 12.0
#: HBM traffic of one fused Adam update per parameter: read fp32 weight, grad, m, v (16 B),
#: write fp32 weight, m, v and the bf16 copy (14 B).
ADAM_UPDATE_BYTES = 30.0
#: Memory the framework holds outside the model: CUDA context, NCCL and cuBLAS workspaces,
#: allocator fragmentation (a typical few GB seen in PyTorch memory reports).
RESERVED_BYTES = 3.0e9


def _f(x: ArrayLike) -> F64:
    return np.asarray(x, dtype=np.float64)


def param_count(m: dict[str, Any]) -> F64:
    """Parameters of a decoder-only transformer (all experts: what memory holds).

    Per layer: QKV h(h + 2 h g/a) + output h^2 + FFN (2 or 3 for SwiGLU) h f E + router h E
    (if E > 1) + two norms 2h; plus the token embedding V h, an untied output V h, a final norm.
    No biases (Llama has none). For GPT (g = a, f = 4h, tied) this is Megatron Eq. 2 less its
    position embedding s h and its biases (11 l h): under 0.5% for Table 1's models.
    """
    h, a, g, f = _f(m["hidden"]), _f(m["heads"]), _f(m["kv_heads"]), _f(m["ffn_hidden"])
    e, vocab, layers = _f(m["experts"]), _f(m["vocab"]), _f(m["layers"])
    n_ffn = np.where(m["gated_ffn"], 3.0, 2.0)
    kv = h * g / a
    per_layer = h * (h + 2 * kv) + h * h + n_ffn * h * f * e + np.where(e > 1, h * e, 0.0) + 2 * h
    embed = vocab * h * np.where(m["tie_embeddings"], 1.0, 2.0)
    # Other layer mixes (MLA, head_dim, shared experts, dense layers: kernels/architecture.py);
    # the plain models keep the expression above, bit for bit.
    c = census(m)
    lt = layer_totals(c)
    general = lt["dense_part"] + lt["routed"] + layers * 2 * h + embed + h
    return np.where(c["uniform"], layers * per_layer + embed + h, general)


def layer_forward_flops(
    m: dict[str, Any], tokens: ArrayLike, seq_len: ArrayLike
) -> tuple[F64, F64]:
    """Forward matrix FLOPs of one layer for `tokens` tokens: (linear part, attention core).

    Linear: 2 T h (h + 2 kv) QKV, 2 T h^2 projection, 2 n_ffn T h f k for the k active experts,
    2 T h E router. Attention core: 4 T s h (QK^T and AV, counted in full as Megatron Eq. 3
    does). For GPT this gives Megatron's 24 b s h^2 + 4 b s^2 h per layer.
    """
    h, a, g, f = _f(m["hidden"]), _f(m["heads"]), _f(m["kv_heads"]), _f(m["ffn_hidden"])
    e, k = _f(m["experts"]), _f(m["top_k"])
    n_ffn = np.where(m["gated_ffn"], 3.0, 2.0)
    tok = _f(tokens)
    kv = h * g / a
    linear = 2 * tok * h * (h + 2 * kv) + 2 * tok * h * h + 2 * n_ffn * tok * h * f * k
    linear = linear + np.where(e > 1, 2 * tok * h * e, 0.0)
    attention = 4 * tok * _f(seq_len) * h
    # Other layer mixes: the mean layer of kernels/architecture.py (dense layers, shared experts,
    # MLA's projections, head_dim), the attention core at 4 a d per query-key pair (MLA: its
    # expanded heads, 2 a (d_nope + d_rope) + 2 a d_v).
    c = census(m)
    lt = layer_totals(c)
    mean_linear = 2 * tok * (lt["dense_part"] + lt["routed_active"]) / c["l"]
    linear = np.where(c["uniform"], linear, mean_linear)
    attention = np.where(c["uniform"], attention, tok * _f(seq_len) * c["attn_pair_flops"])
    return linear, attention


def step_flops(
    m: dict[str, Any], seq_len: ArrayLike, global_batch_seqs: ArrayLike, recompute: ArrayLike
) -> tuple[F64, F64]:
    """FLOPs of one training step: (model FLOPs, hardware FLOPs).

    Model FLOPs count forward + backward (3 x forward); hardware FLOPs add the recomputed forward:
    the whole layer for `full` (Megatron Eq. 3: F = 96 B s l h^2 (1 + s/(6h) + V/(16 l h))), the
    attention core for `selective` (Korthikanti et al., arXiv 2205.05198, Sec. 4.2). The logit
    layer, 2 B s h V forward, is never recomputed.
    """
    tokens = _f(global_batch_seqs) * _f(seq_len)
    lin, att = layer_forward_flops(m, tokens, seq_len)
    layers = _f(m["layers"])
    logits = 2 * tokens * _f(m["hidden"]) * _f(m["vocab"])
    rc = np.asarray(recompute)
    model = 3 * (layers * (lin + att) + logits)
    extra = layers * (np.where(rc == 2, lin + att, 0.0) + np.where(rc == 1, att, 0.0))
    return model, model + extra


def memory_per_gpu(
    m: dict[str, Any],
    *,
    tp: ArrayLike,
    pp: ArrayLike,
    dp: ArrayLike,
    cp: ArrayLike,
    seq_len: ArrayLike,
    microbatch_seqs: ArrayLike,
    microbatches: ArrayLike,
    interleave: ArrayLike,
    recompute: ArrayLike,
    zero_stage: ArrayLike,
    flash_attention: ArrayLike,
    sequence_parallel: ArrayLike,
) -> dict[str, F64]:
    """Bytes per GPU on the most loaded pipeline stage: weights and optimizer state, activations.

    States: 2 + 4 + 12 bytes per parameter, the optimizer's 12 sharded over the d x c data- and
    context-parallel ranks from ZeRO stage 1, gradients from stage 2, weights from stage 3
    (ZeRO, Sec. 5). A stage holds ceil(l/p) layers
    plus the embedding (first) or output layer (last).

    Activations per layer and microbatch (Korthikanti et al., arXiv 2205.05198, Sec. 4,
    generalised to GQA, gated FFNs and models without dropout), in bytes: 10 s b h replicated over
    tensor ranks (8 s b h without dropout masks; sharded with sequence parallelism); sharded over
    them 2 s b (2h + 2 kv) for Q, K, V and the projection input, 4 s b f (gelu) or 6 s b f
    (SwiGLU) per active expert for the FFN, and 5 a s^2 b for the unfused attention scores (none
    with flash attention, none under selective recompute).
    Full recompute keeps only each layer's 2 s b h input. The first stage holds p microbatches in
    flight under 1F1B, times (1 + (p-1)/(p v)) when interleaved (Korthikanti Sec. 4.2.3).
    """
    t, p, d, c = _f(tp), _f(pp), _f(dp), _f(cp)
    h, a, g, f = _f(m["hidden"]), _f(m["heads"]), _f(m["kv_heads"]), _f(m["ffn_hidden"])
    k, vocab, layers = _f(m["top_k"]), _f(m["vocab"]), _f(m["layers"])
    s, b, v = _f(seq_len), _f(microbatch_seqs), _f(interleave)
    rc, zero = np.asarray(recompute), np.asarray(zero_stage)
    kv = h * g / a

    layer_params = param_count({**m, "layers": 1, "vocab": 0}) - h  # one layer, no embedding
    arch = census(m)
    # a mean layer where layers differ (dense layers before the MoE ones, interleaving)
    mean_layer = (param_count({**m, "vocab": 0}) - h) / layers
    layer_params = np.where(arch["uniform"], layer_params, mean_layer)
    # FFN width a token passes through, on the mean layer: f k, or (k + shared) f_e on MoE layers
    # and f on dense ones
    fk = (arch["n_moe"] * (k + arch["shared"]) * arch["f_e"] + arch["n_dense"] * f) / layers
    stage_layers = np.ceil(layers / p)
    # One stage (p = 1) holds both the embedding and an untied output layer.
    embed = vocab * h * np.where(m["tie_embeddings"], 1.0, np.where(p == 1, 2.0, 1.0))
    stage_params = (stage_layers * layer_params + embed) / t
    # Context-parallel ranks hold the same weights: ZeRO shards over the d x c ranks that
    # reduce gradients together (Megatron-Core's data-parallel-with-context group).
    shards = d * c
    weights = stage_params * WEIGHT_BYTES / np.where(zero >= 3, shards, 1.0)
    grads = stage_params * GRAD_BYTES / np.where(zero >= 2, shards, 1.0)
    optim = stage_params * OPTIMIZER_BYTES / np.where(zero >= 1, shards, 1.0)
    states = weights + grads + optim

    tok = s * b / c  # tokens per rank and microbatch
    # Replicated: both norms' inputs, the QKV and MLP inputs (8 s b h), plus the two 1-byte
    # dropout masks (2 s b h) when the model trains with dropout.
    dropout = np.asarray(m.get("dropout", True), dtype=bool)
    replicated = (8.0 + 2.0 * dropout) * tok * h / np.where(sequence_parallel, t, 1.0)
    gated = np.where(m["gated_ffn"], 1.5, 1.0)
    sharded = np.where(
        arch["uniform"],
        (2.0 * tok * (2 * h + 2 * kv) + 4.0 * gated * tok * f * k) / t,
        (2.0 * tok * (2 * h + 2 * kv) + 4.0 * gated * tok * fk) / t,
    )
    # Unfused attention keeps the softmax output (2 a s^2 b); with dropout also its mask and
    # output (3 a s^2 b more).
    no_scores = np.logical_or(flash_attention, rc >= 1)  # flash, or the core recomputed
    scores = np.where(no_scores, 0.0, (2.0 + 3.0 * dropout) * a * s * tok / t)
    per_layer = np.where(
        rc == 2, 2.0 * tok * h / np.where(sequence_parallel, t, 1.0), replicated + sharded + scores
    )
    in_flight = np.minimum(p, _f(microbatches)) * np.where(v > 1, 1.0 + (p - 1) / (p * v), 1.0)
    first_stage = per_layer * stage_layers * in_flight
    # The last stage also keeps the fp32 logits of one microbatch (4 s b V / t bytes).
    last_stage = per_layer * stage_layers + 4.0 * tok * vocab / t
    activations = np.maximum(first_stage, last_stage)
    total = states + activations + RESERVED_BYTES
    return {
        "states": states,
        "activations": activations,
        "total": total,
        "params_per_gpu": stage_params,
    }


def step_time(
    m: dict[str, Any],
    g: dict[str, Any],
    *,
    tp: ArrayLike,
    pp: ArrayLike,
    dp: ArrayLike,
    cp: ArrayLike,
    seq_len: ArrayLike,
    global_batch_seqs: ArrayLike,
    microbatch_seqs: ArrayLike,
    interleave: ArrayLike,
    recompute: ArrayLike,
    zero_stage: ArrayLike,
    gpus_per_node: ArrayLike,
    nic_bytes_per_s: ArrayLike,
    net_alpha_s: ArrayLike,
    cross_leaf_slowdown: ArrayLike,
    overlap_dp: ArrayLike,
    data_bytes_per_step: ArrayLike,
    data_bytes_per_s: ArrayLike,
) -> dict[str, F64]:
    """Seconds per training step and its breakdown (see the module docstring).

    `g` holds the GPU and its calibration: peak_flops, hbm_bytes_per_s, nvlink_bytes_per_s (one
    direction), gemm_efficiency, hbm_efficiency, nvlink_efficiency, net_efficiency,
    nvlink_alpha_s, flash_attention, sequence_parallel. `cross_leaf_slowdown` divides the
    scale-out bandwidth of collectives whose ranks span leaf switches (what the spine's
    oversubscription costs them, see estimate.ring_cross_leaf_slowdown; 1 inside a leaf).
    """
    t, p, d, c = _f(tp), _f(pp), _f(dp), _f(cp)
    h, a, gkv, f = _f(m["hidden"]), _f(m["heads"]), _f(m["kv_heads"]), _f(m["ffn_hidden"])
    k, vocab, layers = _f(m["top_k"]), _f(m["vocab"]), _f(m["layers"])
    s, b, v, bsz = _f(seq_len), _f(microbatch_seqs), _f(interleave), _f(global_batch_seqs)
    rc, zero = np.asarray(recompute), np.asarray(zero_stage)
    gpn = _f(gpus_per_node)
    flash, seqpar = np.asarray(g["flash_attention"]), np.asarray(g["sequence_parallel"])
    kv = h * gkv / a
    full, sel = (rc == 2), (rc == 1)
    microbatches = bsz / (d * b)

    # --- compute of one microbatch on the slowest stage (the last: layers + logits) ---
    stage_layers = np.ceil(layers / p)
    tok = s * b / c
    lin, att = layer_forward_flops(m, tok, s)
    passes_lin = 3.0 + full
    passes_att = 3.0 + (full | sel)
    logits = 3.0 * 2.0 * tok * h * vocab
    stage_flops = (stage_layers * (lin * passes_lin + att * passes_att) + logits) / t
    gemm_s = stage_flops / (_f(g["peak_flops"]) * _f(g["gemm_efficiency"]))

    # Element-wise HBM traffic per layer forward (bytes): two norms (8 h per token) and two
    # residual adds (12 h), each add fused with a dropout that also writes its mask (2 h more),
    # replicated over tensor ranks unless sequence-parallel; bias + activation
    # on the FFN (4 f, or 6 f gated, per active expert), and the attention core: unfused, the
    # a s scores per token are written, softmaxed, dropped out and read back (13 bytes each; 8
    # without dropout); flash attention only streams Q, K, V and the output.
    gated_bytes = np.where(m["gated_ffn"], 6.0, 4.0)
    dropout = np.asarray(m.get("dropout", True), dtype=bool)
    ew = (20.0 + 2.0 * dropout) * tok * h / np.where(seqpar, t, 1.0) + gated_bytes * tok * f * k / t
    arch = census(m)
    fk = (arch["n_moe"] * (k + arch["shared"]) * arch["f_e"] + arch["n_dense"] * f) / layers
    ew_mixed = (20.0 + 2.0 * dropout) * tok * h / np.where(
        seqpar, t, 1.0
    ) + gated_bytes * tok * fk / t
    ew = np.where(arch["uniform"], ew, ew_mixed)
    score_bytes = np.where(dropout, 13.0, 8.0)
    att_bytes = np.where(flash, tok * (4 * h + 4 * kv) / t, score_bytes * tok * a * s / t)
    # Backward moves about twice the forward's bytes; recompute adds a forward.
    stage_bytes = stage_layers * (ew * passes_lin + att_bytes * passes_att)
    mem_s = stage_bytes / (_f(g["hbm_bytes_per_s"]) * _f(g["hbm_efficiency"]))

    # --- tensor parallel: 2 all-reduces of the layer output forward, 2 backward, 2 more when the
    # forward is recomputed (Narayanan et al. Sec. 3.3); on NVLink. With sequence parallelism they
    # become a reduce-scatter + all-gather pair of the same volume. ---
    nvlink_bw = _f(g["nvlink_bytes_per_s"]) * _f(g["nvlink_efficiency"])
    n_tp = 4.0 + 2.0 * full
    tp_s = stage_layers * n_tp * ring_allreduce_s(2.0 * tok * h, t, nvlink_bw, g["nvlink_alpha_s"])

    # --- scale-out bandwidth a collective sees: ranks `stride` GPUs apart, so a node holds
    # `per_node` of them, each with its own NIC (rail-optimised), the node's share limited by
    # NVLink; whole-leaf spans see the spine's oversubscription. ---
    nic_bw = _f(nic_bytes_per_s) * _f(g["net_efficiency"])

    def group_busbw(stride: F64, ranks: F64) -> tuple[F64, F64]:
        per_node = np.clip(gpn / stride, 1.0, ranks)
        spans_nodes = ranks > per_node
        bw = np.where(
            spans_nodes,
            np.minimum(nvlink_bw, per_node * nic_bw / _f(cross_leaf_slowdown)),
            nvlink_bw,
        )
        alpha = np.where(spans_nodes, _f(net_alpha_s), _f(g["nvlink_alpha_s"]))
        return bw, alpha

    # --- context parallel: all-gather K and V forward, reduce-scatter their gradients backward,
    # again on recompute (Megatron-Core context parallelism); overlapped with the attention core,
    # only the excess shows. ---
    cp_bw, cp_alpha = group_busbw(t, c)
    kv_bytes = 2.0 * b * s * 2.0 * kv / t
    cp_comm = (2.0 + full) * ring_allgather_s(kv_bytes, c, cp_bw, cp_alpha)
    att_time = att * passes_att / t / (_f(g["peak_flops"]) * _f(g["gemm_efficiency"]))
    cp_s = stage_layers * np.maximum(cp_comm - att_time, 0.0)

    # --- pipeline point-to-point: activations forward, gradients backward, v times per
    # microbatch when interleaved; scattered over the tensor ranks (Narayanan et al. Sec. 4.1). ---
    pp_stride = t * c * d
    p2p_bw = np.where(pp_stride >= gpn, nic_bw, nvlink_bw)
    p2p_alpha = np.where(pp_stride >= gpn, _f(net_alpha_s), _f(g["nvlink_alpha_s"]))
    p2p_s = np.where(p > 1, 2.0 * v * (p2p_alpha + 2.0 * tok * h / t / p2p_bw), 0.0)

    mb_s = gemm_s + mem_s + tp_s + cp_s + p2p_s
    pipeline_s = microbatches * mb_s
    # 1F1B over m microbatches and v chunks of p stages: a microbatch's chunk takes mb_s / v on a
    # rank, and the step spans v max(m, p) + min(m, p) - 1 of them. For m >= p that is Megatron's
    # m v + p - 1 (bubble (p-1)/v microbatches); with fewer microbatches than stages each chunk
    # waits for its microbatch to come round the p ranks, p v + m - 1 (both m + p - 1 at v = 1).
    bubble_s = (
        np.where(microbatches >= p, (p - 1.0) / v, (p * v + microbatches - 1.0) / v - microbatches)
        * mb_s
    )

    # --- data parallel gradient reduction (and ZeRO's parameter all-gather) ---
    mem = memory_per_gpu(
        m,
        tp=tp,
        pp=pp,
        dp=dp,
        cp=cp,
        seq_len=seq_len,
        microbatch_seqs=microbatch_seqs,
        microbatches=microbatches,
        interleave=interleave,
        recompute=recompute,
        zero_stage=zero_stage,
        flash_attention=flash,
        sequence_parallel=seqpar,
    )
    params_gpu = mem["params_per_gpu"]
    # cp ranks hold the same weights, so gradients are reduced over d x c ranks.
    dp_ranks = d * c
    dp_bw, dp_alpha = group_busbw(t, dp_ranks)
    grad_bytes = params_gpu * GRAD_BYTES
    allreduce = ring_allreduce_s(grad_bytes, dp_ranks, dp_bw, dp_alpha)
    # ZeRO >= 1: reduce-scatter the gradients, all-gather the bf16 weights after the update.
    sharded = ring_allgather_s(grad_bytes, dp_ranks, dp_bw, dp_alpha) + ring_allgather_s(
        params_gpu * WEIGHT_BYTES, dp_ranks, dp_bw, dp_alpha
    )
    dp_comm = np.where(zero >= 1, sharded, allreduce)
    # With overlap (PyTorch DDP buckets, Megatron's overlap-grad-reduce and overlap-param-gather)
    # the reduction hides behind the backward pass of the last microbatch, the weight all-gather
    # (ZeRO >= 1) behind the forward of the next step's first, and with an interleaved schedule
    # the chunks that finish early reduce during the pipeline's cool-down (half the bubble).
    # Without overlap it all shows.
    # ZeRO-3 gathers each layer's weights forward and backward of every microbatch, prefetched
    # behind compute: only what exceeds it shows.
    z3 = microbatches * 2.0 * ring_allgather_s(params_gpu * WEIGHT_BYTES, dp_ranks, dp_bw, dp_alpha)
    z3 = np.where(zero >= 3, z3, 0.0)
    # The gathers occupy the same links during the same compute, so the reduction can only hide
    # in the compute they leave free (else slower links or more compute could shorten a step).
    compute_window = mb_s * 2.0 / passes_lin + np.where(zero >= 1, mb_s / passes_lin, 0.0)
    compute_window = np.minimum(compute_window, np.maximum(pipeline_s - z3, 0.0))
    window = compute_window + np.where(v > 1, 0.5 * bubble_s, 0.0)
    window = window * np.asarray(overlap_dp, dtype=np.float64)
    dp_s = np.maximum(dp_comm - window, 0.0) + np.maximum(z3 - pipeline_s, 0.0)

    # --- optimizer: one fused Adam pass over the local (ZeRO-sharded) parameters ---
    opt_params = params_gpu / np.where(zero >= 1, dp_ranks, 1.0)
    opt_s = opt_params * ADAM_UPDATE_BYTES / (_f(g["hbm_bytes_per_s"]) * _f(g["hbm_efficiency"]))

    busy_s = pipeline_s + bubble_s + dp_s + opt_s
    # --- data loading is prefetched during the step; a slower loader stalls the rest ---
    load_s = _f(data_bytes_per_step) / _f(data_bytes_per_s)
    stall_s = np.maximum(load_s - busy_s, 0.0)
    total = busy_s + stall_s

    return {
        "step_time_s": total,
        "compute_s": microbatches * (gemm_s + mem_s),
        "gemm_s": microbatches * gemm_s,
        "elementwise_s": microbatches * mem_s,
        "tp_comm_s": microbatches * tp_s,
        "cp_comm_s": microbatches * cp_s,
        "pp_comm_s": microbatches * p2p_s,
        "bubble_s": bubble_s,
        "dp_comm_s": dp_s,
        "optimizer_s": opt_s,
        "data_stall_s": stall_s,
        "microbatches": microbatches,
        "memory_bytes": mem["total"],
        "memory_states_bytes": mem["states"],
        "memory_activations_bytes": mem["activations"],
    }
