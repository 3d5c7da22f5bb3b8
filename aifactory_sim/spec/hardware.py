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
    top_k: int = Field(1, gt=0, description="experts active per token")
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
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be a multiple of heads={self.heads}")
        if self.heads % self.kv_heads:  # type: ignore[operator]
            raise ValueError(f"heads={self.heads} must be a multiple of kv_heads={self.kv_heads}")
        if self.top_k > self.experts:
            raise ValueError(f"top_k={self.top_k} cannot exceed experts={self.experts}")
        return self

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
        }
