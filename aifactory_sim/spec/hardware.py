"""GPU and model descriptions: a catalog name, or an inline mapping that may override one.

`gpu: H100-SXM` takes the catalog entry; `gpu: {base: H100-SXM, hbm_gb: 96}` overrides fields
of it; a mapping without `base` describes a GPU in full. Models work the same way, and an inline
model needs only `layers`, `hidden`, `heads` and `vocab` (GPT defaults for the rest).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from .. import catalog
from .base import Spec


def resolve_catalog(kind: str, value: Any) -> Any:
    """Turn a catalog name or a {base: name, ...overrides} mapping into a full mapping."""
    if isinstance(value, str):
        name = catalog.canonical_name(kind, value)
        return {"name": name, **catalog.entry(kind, name)}
    if isinstance(value, dict) and "base" in value:
        overrides = dict(value)
        base = overrides.pop("base")
        if not isinstance(base, str):
            raise ValueError(f"`base` must be a {kind} name from the catalog")
        name = catalog.canonical_name(kind, base)
        merged = {"name": name, **catalog.entry(kind, name)}
        merged.update(overrides)
        if "name" not in overrides:
            merged["name"] = f"{name}*"  # marks an altered catalog entry in outputs
        return merged
    return value


def from_catalog(kind: str, value: Any) -> Any:
    """resolve_catalog, with an unknown name as a ValueError so that pydantic locates it (a
    `mode="before"` field validator of every field that takes a catalog name)."""
    try:
        return resolve_catalog(kind, value)
    except KeyError as err:
        raise ValueError(err.args[0]) from None


class GPUSpec(Spec):
    """One GPU model: dense tensor throughput, HBM, power and NVLink."""

    name: str = "custom-gpu"
    family: str = Field("hopper", description="calibration family in catalog/calibration.yaml")
    bf16_tflops: float = Field(gt=0, description="dense BF16 tensor TFLOP/s")
    fp8_tflops: float | None = Field(None, gt=0, description="dense FP8 tensor TFLOP/s")
    fp4_tflops: float | None = Field(
        None,
        gt=0,
        description="dense FP4 tensor TFLOP/s (NVFP4 on Blackwell, MXFP4 on CDNA4); none: no "
        "FP4 tensor cores",
    )
    hbm_gb: float = Field(
        gt=0,
        description="HBM capacity as the datasheet gives it (GB; binary, as HBM stacks are: "
        "serving counts 2^30 x 0.9956 bytes per GB visible, training 10^9)",
    )
    hbm_tb_s: float = Field(gt=0, description="HBM bandwidth, TB/s")
    tdp_w: float = Field(gt=0, description="board power at full load, W")
    idle_w: float | None = Field(
        None,
        gt=0,
        description="board power idle, W; default 0.115 x tdp_w (measured H200 "
        "idle, docs/background/power-cost.md)",
    )
    nvlink_gb_s: float = Field(gt=0, description="NVLink bandwidth per GPU, both directions, GB/s")
    nvlink_domain: int = Field(8, gt=0, description="GPUs reachable over NVLink")
    nvls: bool = Field(
        False,
        description="NVLink SHARP: the NVSwitch reduces all-reduce data in the switch "
        "(third-generation NVSwitch and later); serving's tensor-parallel all-reduce takes the "
        "faster of it and the ring",
    )
    source: str = ""

    @model_validator(mode="after")
    def _known_family(self) -> GPUSpec:
        if self.family not in catalog.names("calibration"):
            allowed = ", ".join(catalog.names("calibration"))
            raise ValueError(f"family {self.family!r} has no calibration; allowed: {allowed}")
        return self


class ModelSpec(Spec):
    """A decoder-only transformer (optionally a mixture of experts)."""

    name: str = "custom-model"
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    vocab: int = Field(gt=0)
    kv_heads: int | None = Field(None, gt=0, description="default: heads (no GQA)")
    ffn_hidden: int | None = Field(None, gt=0, description="default: 4 x hidden")
    ffn_kind: Literal["gelu", "swiglu"] = "gelu"
    experts: int = Field(1, gt=0)
    top_k: int = Field(1, gt=0, description="routed experts active per token")
    head_dim: int | None = Field(
        None, gt=0, description="width of a query/key/value head; default hidden / heads"
    )
    attention: Literal["mha", "gqa", "mla"] | None = Field(
        None,
        description="mha (kv_heads = heads), gqa (fewer kv_heads) or mla (DeepSeek's latent KV: "
        "kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim); default: mla if "
        "kv_lora_rank is given, else mha or gqa from kv_heads",
    )
    kv_lora_rank: int | None = Field(None, gt=0, description="MLA: KV latent width (cached)")
    q_lora_rank: int | None = Field(
        None, gt=0, description="MLA: query latent width; none: a full-rank query projection"
    )
    qk_nope_head_dim: int | None = Field(None, gt=0, description="MLA: non-rotary q/k head width")
    qk_rope_head_dim: int | None = Field(
        None, gt=0, description="MLA: rotary key width, shared by the heads and cached"
    )
    v_head_dim: int | None = Field(None, gt=0, description="MLA: value head width")
    window_tokens: int | None = Field(
        None,
        gt=0,
        description="sliding-window (or chunked) attention span of the windowed layers, tokens",
    )
    window_layers: int | None = Field(
        None, ge=0, description="layers that use window_tokens; default: all layers"
    )
    moe_ffn_hidden: int | None = Field(
        None, gt=0, description="width of one routed (and shared) expert; default ffn_hidden"
    )
    shared_experts: int = Field(0, ge=0, description="experts every token uses on a MoE layer")
    dense_layers: int = Field(
        0, ge=0, description="leading layers with a dense FFN of ffn_hidden (DeepSeek-V3: 3)"
    )
    moe_every: int = Field(
        1, gt=0, description="after dense_layers, every moe_every-th layer is MoE, the rest dense"
    )
    route_nodes: int | None = Field(
        None,
        gt=0,
        description="most NVLink domains (nodes) a token's experts may sit in: node-limited "
        "routing (DeepSeek-V3: 4); none: no limit",
    )
    router_imbalance: float = Field(
        1.0,
        ge=1.0,
        description="busiest expert-parallel rank's routed tokens over the mean from skewed "
        "expert popularity, on top of random routing's own spread; 1: balanced popularity (what "
        "EPLB's redundant experts aim for)",
    )
    mtp_modules: int = Field(
        0,
        ge=0,
        description="multi-token-prediction modules trained with the model (DeepSeek-V3: 1), "
        "each one transformer block that drafts the next token for speculative decoding "
        "(speculative.method mtp); 0: none",
    )
    tie_embeddings: bool = False
    dropout: bool = Field(
        True, description="trained with dropout (GPT-3); Llama and Mixtral use none"
    )
    source: str = ""

    @model_validator(mode="before")
    @classmethod
    def _gpt_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if data.get("kv_heads") is None and "heads" in data:
                data["kv_heads"] = data["heads"]
            if data.get("ffn_hidden") is None and "hidden" in data:
                data["ffn_hidden"] = 4 * data["hidden"] if isinstance(data["hidden"], int) else None
        return data

    @model_validator(mode="after")
    def _shapes(self) -> ModelSpec:
        if self.head_dim is None and self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be a multiple of heads={self.heads}")
        if self.heads % self.kv_heads:  # type: ignore[operator]
            raise ValueError(f"heads={self.heads} must be a multiple of kv_heads={self.kv_heads}")
        if self.top_k > self.experts:
            raise ValueError(f"top_k={self.top_k} cannot exceed experts={self.experts}")
        mla_fields = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        kind = self.attention_kind
        missing = [f for f in mla_fields if getattr(self, f) is None]
        if kind == "mla" and missing:
            raise ValueError(f"attention mla needs {', '.join(missing)}")
        if kind != "mla":
            given = [f for f in (*mla_fields, "q_lora_rank") if getattr(self, f) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} describe MLA, but attention is {kind}; allowed: "
                    "attention mla, or drop them"
                )
        if kind == "mha" and self.kv_heads != self.heads:
            raise ValueError(
                f"attention mha needs kv_heads = heads = {self.heads}, got kv_heads="
                f"{self.kv_heads}; allowed: attention gqa"
            )
        if kind == "gqa" and self.kv_heads == self.heads:
            raise ValueError(
                f"attention gqa needs kv_heads < heads={self.heads}; allowed: attention mha"
            )
        if self.window_layers is not None:
            if self.window_tokens is None:
                raise ValueError("window_layers needs window_tokens (the window's span)")
            if self.window_layers > self.layers:
                raise ValueError(f"window_layers={self.window_layers} exceeds layers={self.layers}")
        moe_shape = self.shared_experts or self.dense_layers or self.moe_every > 1
        if self.experts == 1 and (moe_shape or self.moe_ffn_hidden is not None):
            raise ValueError(
                "shared_experts, dense_layers, moe_every and moe_ffn_hidden describe a mixture "
                "of experts; allowed with experts > 1 only"
            )
        if self.experts > 1 and self.dense_layers + self.moe_every > self.layers:
            raise ValueError(
                f"dense_layers={self.dense_layers} and moe_every={self.moe_every} leave no MoE "
                f"layer among the {self.layers} layers"
            )
        return self

    @property
    def attention_kind(self) -> str:
        """mha, gqa or mla: as given, else derived from kv_lora_rank and kv_heads."""
        if self.attention is not None:
            return self.attention
        if self.kv_lora_rank is not None:
            return "mla"
        return "mha" if self.kv_heads == self.heads else "gqa"

    @property
    def is_moe(self) -> bool:
        """A mixture of experts: more than one routed expert."""
        return self.experts > 1

    @property
    def active_params(self) -> float:
        """Parameters a token multiplies (kernels.architecture.active_param_count)."""
        from ..kernels.architecture import active_param_count

        return float(active_param_count(self.kernel_args()))

    @property
    def params(self) -> float:
        """Parameter count (see kernels.training.param_count)."""
        from ..kernels.training import param_count

        return float(param_count(self.kernel_args()))

    def kernel_args(self) -> dict[str, Any]:
        """The model as the keyword arrays that kernels/ take."""
        return {
            "layers": self.layers,
            "hidden": self.hidden,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "ffn_hidden": self.ffn_hidden,
            "vocab": self.vocab,
            "gated_ffn": self.ffn_kind == "swiglu",
            "experts": self.experts,
            "top_k": self.top_k,
            "tie_embeddings": self.tie_embeddings,
            "dropout": self.dropout,
            # architecture variants (kernels/architecture.py); None/0: the plain model
            "head_dim": self.head_dim,
            "mla": self.attention_kind == "mla",
            "kv_lora_rank": self.kv_lora_rank,
            "q_lora_rank": self.q_lora_rank,
            "qk_nope_head_dim": self.qk_nope_head_dim,
            "qk_rope_head_dim": self.qk_rope_head_dim,
            "v_head_dim": self.v_head_dim,
            "window_tokens": self.window_tokens,
            "window_layers": (
                None
                if self.window_tokens is None
                else (self.layers if self.window_layers is None else self.window_layers)
            ),
            "moe_ffn_hidden": self.moe_ffn_hidden,
            "shared_experts": self.shared_experts,
            "dense_layers": self.dense_layers,
            "moe_every": self.moe_every,
            "router_imbalance": self.router_imbalance,
            "route_nodes": self.route_nodes,
        }
