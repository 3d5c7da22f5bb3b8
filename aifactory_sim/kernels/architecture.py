"""Parameter census of a decoder-only transformer's layers: attention variants (MHA, GQA, MLA),
head widths that differ from hidden/heads, sliding windows, and mixtures of experts with shared
experts, leading dense layers and interleaved MoE layers; vectorised like the other kernels.

Training (kernels/training.py) and inference (kernels/inference.py) both count parameters and
FLOPs from `census`, so a model is the same model everywhere. A model mapping is
ModelSpec.kernel_args(); keys added for these variants are read with defaults, so a mapping
without them describes the plain GPT/Llama/Mixtral model of before (every layer alike, an FFN of
`ffn_hidden` per expert, head width h/a).

Attention per layer (no biases):
- MHA/GQA: Q h x a d, K and V h x g d each, output a d x h, with d = head_dim (default h/a).
- MLA (DeepSeek-V2, arXiv 2405.04434, Sec. 2.1; DeepSeek-V3, arXiv 2412.19437, Sec. 2.1.1):
  queries through a low-rank latent, h x r_q, an RMSNorm of r_q and r_q x a (d_nope + d_rope)
  (or h x a (d_nope + d_rope) without q_lora_rank); keys and values through one latent of
  r_kv = kv_lora_rank plus a shared rotary key of d_rope, h x (r_kv + d_rope), a norm of r_kv,
  and the up-projection r_kv x a (d_nope + d_v); output a d_v x h. The cache keeps only the
  latent and the rotary key: r_kv + d_rope elements per token and layer.
FFN: an expert (or a dense FFN) of width F has n_ffn h F weights (n_ffn = 3 for SwiGLU, 2 for
GeLU). A MoE layer holds E routed experts of width f_e = moe_ffn_hidden (default ffn_hidden),
s shared experts of the same width that every token uses (DeepSeekMoE, arXiv 2401.06066), and a
router h x E; a dense layer holds one FFN of ffn_hidden. The first `dense_layers` layers are
dense (DeepSeek-V3: 3); after them every `moe_every`-th layer is MoE, the others dense (Llama 4
Maverick alternates: `interleave_moe_layer_step` 2 in its config.json). A model with E = 1 has
only "MoE" layers of one expert: the plain dense transformer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]


def _f(x: ArrayLike) -> F64:
    return np.asarray(x, dtype=np.float64)


def _get(m: Mapping[str, Any], key: str, default: float) -> F64:
    value = m.get(key)
    return _f(default if value is None else value)


def census(m: Mapping[str, Any]) -> dict[str, F64]:
    """Per-layer parameter counts and layer counts of a model (see the module docstring).

    Keys: h, a, g, V, l; d (head width), q_dim (a d, query and attention-output width), kv
    (g d); mla (bool); attn (attention weights of one layer); n_ffn; f (dense FFN width), f_e
    (expert width), E, k, shared; expert (weights of one routed expert), dense_ffn (one dense
    layer's FFN), router (h E on a MoE layer when E > 1); n_moe, n_dense (layer counts);
    uniform (every layer alike, no shared experts: the plain models, whose counts the kernels
    keep in their original arithmetic); kv_elems (cached elements per token and layer, for K and
    V together, per KV head for MHA/GQA: 2 d; the latent for MLA: r_kv + d_rope);
    attn_ctx_flops (decode attention FLOPs per cached token and layer over all heads: 4 a d; MLA
    with its up-projections absorbed into the query and output, as FlashMLA decodes:
    2 a (r_kv + d_rope) + 2 a r_kv); attn_pair_flops (prefill attention FLOPs per query-key
    pair and layer: 4 a d; MLA, expanded: 2 a (d_nope + d_rope) + 2 a d_v).
    """
    h, a = _f(m["hidden"]), _f(m["heads"])
    g = _f(m["kv_heads"])
    head_dim = m.get("head_dim")
    d = h / a if head_dim is None else _f(head_dim)
    q_dim = h if head_dim is None else a * d
    kv = g * d
    mla = np.asarray(m.get("mla", False), dtype=bool)
    r_kv = _get(m, "kv_lora_rank", 0.0)
    r_q = _get(m, "q_lora_rank", 0.0)
    d_nope = _get(m, "qk_nope_head_dim", 0.0)
    d_rope = _get(m, "qk_rope_head_dim", 0.0)
    d_v = _get(m, "v_head_dim", 0.0)
    q_head = d_nope + d_rope
    mla_q = np.where(r_q > 0, h * r_q + r_q + r_q * a * q_head, h * a * q_head)
    mla_attn = mla_q + h * (r_kv + d_rope) + r_kv + r_kv * a * (d_nope + d_v) + a * d_v * h
    attn = np.where(mla, mla_attn, h * (q_dim + 2.0 * kv) + q_dim * h)

    layers = _f(m["layers"])
    e, k = _f(m["experts"]), _f(m["top_k"])
    f = _f(m["ffn_hidden"])
    f_e = _get(m, "moe_ffn_hidden", 0.0)
    f_e = np.where(f_e > 0, f_e, f)
    shared = _get(m, "shared_experts", 0.0)
    dense_first = _get(m, "dense_layers", 0.0)
    every = _get(m, "moe_every", 1.0)
    n_ffn = np.where(m["gated_ffn"], 3.0, 2.0)
    n_moe = np.where(e > 1, np.floor((layers - dense_first) / every), layers)
    uniform = (n_moe == layers) & (shared == 0) & (f_e == f) & ~mla & (head_dim is None)
    return {
        "h": h,
        "a": a,
        "g": g,
        "V": _f(m["vocab"]),
        "l": layers,
        "d": d,
        "q_dim": q_dim,
        "kv": kv,
        "mla": mla,
        "attn": attn,
        "n_ffn": n_ffn,
        "f": f,
        "f_e": f_e,
        "E": e,
        "k": k,
        "shared": shared,
        "expert": n_ffn * h * f_e,
        "dense_ffn": n_ffn * h * f,
        "router": np.where(e > 1, h * e, 0.0),
        "n_moe": n_moe,
        "n_dense": layers - n_moe,
        "uniform": uniform,
        "kv_elems": np.where(mla, r_kv + d_rope, 2.0 * d),
        "mla_latent": r_kv,
        "attn_ctx_flops": np.where(mla, 2.0 * a * (r_kv + d_rope) + 2.0 * a * r_kv, 4.0 * q_dim),
        "attn_pair_flops": np.where(mla, 2.0 * a * q_head + 2.0 * a * d_v, 4.0 * q_dim),
        "qkv_out": np.where(mla, a * q_head + r_kv + d_rope, q_dim + 2.0 * kv),
        "o_in": np.where(mla, a * d_v, q_dim),
        "window": _get(m, "window_tokens", 0.0),
        "window_layers": np.where(
            _get(m, "window_tokens", 0.0) > 0, _get(m, "window_layers", 0.0), 0.0
        ),
    }


def layer_totals(c: Mapping[str, F64]) -> dict[str, F64]:
    """Weights summed over the layers, split the way parallelism splits them.

    dense_part: attention, dense FFNs, shared experts and routers (every attention rank holds
    them, sharded over its tensor ranks); routed: all routed experts; routed_active: the k a token
    uses; active_dense: what a token uses of dense_part (all of it).
    """
    moe_layer_dense = c["shared"] * c["expert"] + c["router"]
    dense_part = c["l"] * c["attn"] + c["n_dense"] * c["dense_ffn"] + c["n_moe"] * moe_layer_dense
    return {
        "dense_part": dense_part,
        "routed": c["n_moe"] * c["E"] * c["expert"],
        "routed_active": c["n_moe"] * c["k"] * c["expert"],
    }


def active_param_count(m: Mapping[str, Any]) -> F64:
    """Parameters one token multiplies: every layer's attention, dense FFNs, shared experts,
    routers and the k routed experts it is sent to, the norms and the output layer; the input
    embedding, a lookup with no FLOPs, is left out (the convention of the gpt-oss model card's
    "active parameters", arXiv 2508.10925, Table 1). 6 x this x tokens is the training FLOPs
    of the linear layers (Kaplan et al., arXiv 2001.08361, Sec. 2.1)."""
    c = census(m)
    t = layer_totals(c)
    norms = c["l"] * 2.0 * c["h"] + c["h"]
    return t["dense_part"] + t["routed_active"] + norms + c["V"] * c["h"]
