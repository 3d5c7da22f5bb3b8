"""Training performance estimates: the public face of kernels/training.py.

`estimate_training` takes a model and a GPU (catalog names, mappings or spec objects) and arrays
of parallel configurations, and returns step time, throughput, MFU and memory for each.
`plan_training` enumerates every feasible layout of a model on a number of GPUs and ranks them.
Both are one vectorised call into the kernels; nothing here simulates time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import catalog
from .kernels.training import RECOMPUTE_CODES, memory_per_gpu, step_flops, step_time
from .spec.hardware import GPUSpec, ModelSpec, resolve_catalog

if TYPE_CHECKING:
    import pandas as pd

_MODES = np.array(list(RECOMPUTE_CODES))  # index = code
#: Default scale-out rate per GPU when none is given: NDR InfiniBand.
DEFAULT_NIC_GBIT_S = 400.0


def as_model(model: str | dict[str, Any] | ModelSpec) -> ModelSpec:
    """A ModelSpec from a catalog name, a mapping (optionally with `base`) or a ModelSpec."""
    if isinstance(model, ModelSpec):
        return model
    return ModelSpec.model_validate(resolve_catalog("model", model))


def as_gpu(gpu: str | dict[str, Any] | GPUSpec) -> GPUSpec:
    """A GPUSpec from a catalog name, a mapping (optionally with `base`) or a GPUSpec."""
    if isinstance(gpu, GPUSpec):
        return gpu
    return GPUSpec.model_validate(resolve_catalog("gpu", gpu))


def gpu_fields(gpu: GPUSpec, compute_slowdown: float = 1.0) -> dict[str, Any]:
    """The one adapter from a GPU to the kernels: its catalog fields with the compute peaks
    as a power cap leaves them (divided by `compute_slowdown`, kernels.power.cap_slowdown with
    all of the work compute-bound; 1 without a cap). Training
    (`gpu_kernel_args`) and serving (kernels.inference.gpu_inference_args) both read it, so a
    cap slows every compute-bound phase of a step or an iteration and no memory- or
    network-bound one, and no modified copy of the GPU exists anywhere."""
    fields = gpu.model_dump()
    fields["bf16_tflops"] = gpu.bf16_tflops / compute_slowdown
    if gpu.fp8_tflops is not None:
        fields["fp8_tflops"] = gpu.fp8_tflops / compute_slowdown
    return fields


def gpu_kernel_args(
    gpu: GPUSpec,
    precision: str = "bf16",
    flash_attention: bool | None = None,
    sequence_parallel: bool | None = None,
    compute_slowdown: float = 1.0,
) -> dict[str, Any]:
    """The GPU (through `gpu_fields`) and its family's calibration as the dict
    kernels/training.step_time takes."""
    cal = catalog.entry("calibration", gpu.family)
    f = gpu_fields(gpu, compute_slowdown)
    tflops = f["fp8_tflops"] if precision == "fp8" else f["bf16_tflops"]
    if tflops is None:
        raise ValueError(f"{gpu.name} has no {precision} throughput in the catalog")
    return {
        "peak_flops": tflops * 1e12,
        "hbm_bytes_per_s": f["hbm_tb_s"] * 1e12,
        "nvlink_bytes_per_s": f["nvlink_gb_s"] / 2.0 * 1e9,  # one direction
        "gemm_efficiency": cal["gemm_efficiency"],
        "hbm_efficiency": cal["hbm_efficiency"],
        "nvlink_efficiency": cal["nvlink_efficiency"],
        "net_efficiency": cal["net_efficiency"],
        "nvlink_alpha_s": cal["nvlink_alpha_s"],
        "flash_attention": cal["flash_attention"] if flash_attention is None else flash_attention,
        "sequence_parallel": (
            cal["sequence_parallel"] if sequence_parallel is None else sequence_parallel
        ),
    }


def ring_cross_leaf_slowdown(
    job_nodes: ArrayLike, nodes_per_leaf_used: ArrayLike, oversubscription: ArrayLike
) -> NDArray[np.float64]:
    """Slowdown of a job's ring collectives when its nodes span several leaf switches.

    A ring leaves each leaf once: a leaf holding m of the job's nodes carries gpn/k concurrent
    rings (k ranks of each per node), each at k x NIC rate, over the job's share of uplinks,
    m x gpn x NIC / oversubscription. Rings slow only when that share runs short:
        slowdown = max(1, oversubscription / m)   (1 inside one leaf).
    """
    nodes = np.asarray(job_nodes, dtype=np.float64)
    m = np.maximum(np.asarray(nodes_per_leaf_used, dtype=np.float64), 1.0)
    spans = nodes > m
    return np.where(spans, np.maximum(1.0, np.asarray(oversubscription) / m), 1.0)


def _scalarise(x: Any) -> Any:
    a = np.asarray(x)
    if a.ndim == 0:
        return a.item()
    return a


@dataclass(frozen=True)
class TrainingEstimate:
    """Per-configuration results; each field is an array (a Python scalar for scalar input)."""

    step_time_s: Any
    tokens_per_s: Any
    hardware_tflops_per_gpu: Any
    model_tflops_per_gpu: Any
    mfu: Any
    memory_gb_per_gpu: Any
    fits: Any
    recompute: Any
    microbatches: Any
    breakdown: dict[str, Any] = field(default_factory=dict)


#: Code of "auto" while the modes are read; replaced by the mode chosen per configuration.
AUTO = -1


def _recompute_codes(recompute: ArrayLike) -> NDArray[np.int64]:
    """Integer codes of recompute modes (names or codes), "auto" as AUTO; vectorised."""
    arr = np.asarray(recompute)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    codes = np.full(arr.shape, -2, dtype=np.int64)
    for name, code in (*RECOMPUTE_CODES.items(), ("auto", AUTO)):
        codes[arr == name] = code
    if np.any(codes == -2):
        bad = sorted({str(v) for v in np.unique(arr[codes == -2])})
        raise ValueError(f"recompute must be one of auto, none, selective, full; got {bad}")
    return codes


def estimate_training(
    model: str | dict[str, Any] | ModelSpec,
    gpu: str | dict[str, Any] | GPUSpec,
    *,
    tp: ArrayLike,
    pp: ArrayLike,
    dp: ArrayLike,
    cp: ArrayLike = 1,
    seq_len: ArrayLike,
    global_batch_seqs: ArrayLike,
    microbatch_seqs: ArrayLike = 1,
    recompute: ArrayLike = "auto",
    zero_stage: ArrayLike = 1,
    gpus_per_node: ArrayLike = 8,
    nic_gbit_s: ArrayLike | None = None,
    interleave: ArrayLike = 1,
    precision: str = "bf16",
    oversubscription: ArrayLike = 1.0,
    nodes_per_leaf: ArrayLike | None = None,
    net_latency_us: ArrayLike = 5.0,
    overlap_dp: ArrayLike = True,
    flash_attention: bool | None = None,
    sequence_parallel: bool | None = None,
    data_bytes_per_token: ArrayLike = 0.0,
    data_gb_s: ArrayLike = np.inf,
    cross_leaf_slowdown: ArrayLike | None = None,
    compute_slowdown: float = 1.0,
) -> TrainingEstimate:
    """Step time, throughput, MFU and memory of training `model` on `gpu`, arrays in, arrays out.

    `recompute="auto"` picks, per configuration, the cheapest mode that fits in HBM (none, then
    selective, then full). A job of more than `nodes_per_leaf` nodes spans leaf switches: its
    scale-out collectives slow by max(1, oversubscription / nodes per leaf), what rings lose on
    the spine (`ring_cross_leaf_slowdown`): a bound for a leaf whose other nodes all send across
    the spine too. `cross_leaf_slowdown` replaces it with a known factor (the engine's, from the
    flows really sharing each leaf: engine.fabric.Fabric.update). `data_gb_s` is the
    storage bandwidth the job's loader gets. `compute_slowdown` is a power cap's clock factor
    on the compute peaks (`gpu_fields`).
    """
    m = as_model(model)
    g = as_gpu(gpu)
    margs = m.kernel_args()
    gargs = gpu_kernel_args(g, precision, flash_attention, sequence_parallel, compute_slowdown)
    nic = DEFAULT_NIC_GBIT_S if nic_gbit_s is None else nic_gbit_s
    tp_a, pp_a, dp_a, cp_a = (np.asarray(x) for x in (tp, pp, dp, cp))
    gpn = np.asarray(gpus_per_node)
    nodes = tp_a * pp_a * dp_a * cp_a / gpn
    if cross_leaf_slowdown is not None:
        slowdown = np.broadcast_to(
            np.asarray(cross_leaf_slowdown, dtype=np.float64), np.shape(nodes)
        ).copy()
    elif nodes_per_leaf is None:
        slowdown = np.ones_like(nodes, dtype=np.float64)
    else:
        slowdown = ring_cross_leaf_slowdown(
            nodes, np.minimum(nodes, np.asarray(nodes_per_leaf)), oversubscription
        )
    bsz = np.asarray(global_batch_seqs, dtype=np.float64)
    seq = np.asarray(seq_len, dtype=np.float64)
    common = dict(
        tp=tp_a,
        pp=pp_a,
        dp=dp_a,
        cp=cp_a,
        seq_len=seq,
        global_batch_seqs=bsz,
        microbatch_seqs=microbatch_seqs,
        interleave=interleave,
        zero_stage=zero_stage,
        gpus_per_node=gpn,
        nic_bytes_per_s=np.asarray(nic, dtype=np.float64) * 1e9 / 8.0,
        net_alpha_s=np.asarray(net_latency_us, dtype=np.float64) * 1e-6,
        cross_leaf_slowdown=slowdown,
        overlap_dp=overlap_dp,
        data_bytes_per_step=bsz * seq * np.asarray(data_bytes_per_token, dtype=np.float64),
        data_bytes_per_s=np.asarray(data_gb_s, dtype=np.float64) * 1e9,
    )
    hbm = g.hbm_gb * 1e9
    codes = _recompute_codes(recompute)
    if np.any(codes == AUTO):
        mem_args = dict(
            tp=tp_a,
            pp=pp_a,
            dp=dp_a,
            cp=cp_a,
            seq_len=seq,
            microbatch_seqs=microbatch_seqs,
            microbatches=bsz / (dp_a * np.asarray(microbatch_seqs)),
            interleave=interleave,
            zero_stage=zero_stage,
            flash_attention=gargs["flash_attention"],
            sequence_parallel=gargs["sequence_parallel"],
        )
        fits_by_mode = [
            memory_per_gpu(margs, recompute=code, **mem_args)["total"] <= hbm for code in (0, 1, 2)
        ]
        auto = np.where(fits_by_mode[0], 0, np.where(fits_by_mode[1], 1, 2))
        codes = np.where(codes == AUTO, auto, codes)
    r = step_time(margs, gargs, recompute=codes, **common)
    model_flops, hw_flops = step_flops(margs, seq, bsz, codes)
    n_gpus = tp_a * pp_a * dp_a * cp_a
    t = r["step_time_s"]
    peak = gargs["peak_flops"]
    breakdown_keys = (
        "gemm_s",
        "elementwise_s",
        "tp_comm_s",
        "cp_comm_s",
        "pp_comm_s",
        "bubble_s",
        "dp_comm_s",
        "optimizer_s",
        "data_stall_s",
    )
    return TrainingEstimate(
        step_time_s=_scalarise(t),
        tokens_per_s=_scalarise(bsz * seq / t),
        hardware_tflops_per_gpu=_scalarise(hw_flops / n_gpus / t / 1e12),
        model_tflops_per_gpu=_scalarise(model_flops / n_gpus / t / 1e12),
        mfu=_scalarise(model_flops / n_gpus / t / peak),
        memory_gb_per_gpu=_scalarise(r["memory_bytes"] / 1e9),
        fits=_scalarise(r["memory_bytes"] <= hbm),
        recompute=_scalarise(_MODES[np.asarray(codes)]),
        microbatches=_scalarise(r["microbatches"]),
        breakdown={k: _scalarise(r[k]) for k in breakdown_keys},
    )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def plan_training(
    model: str | dict[str, Any] | ModelSpec,
    gpu: str | dict[str, Any] | GPUSpec,
    gpus: int,
    *,
    seq_len: int,
    global_batch_seqs: int,
    gpus_per_node: int = 8,
    nic_gbit_s: float | None = None,
    zero_stage: int = 1,
    microbatch_options: tuple[int, ...] = (1, 2, 4, 8),
    interleave_options: tuple[int, ...] = (1, 2, 4),
    cp_options: tuple[int, ...] = (1, 2, 4, 8),
    precision: str = "bf16",
    oversubscription: float = 1.0,
    nodes_per_leaf: int | None = None,
    include_infeasible: bool = False,
) -> pd.DataFrame:
    """Every (tp, pp, dp, cp, microbatch, interleave, recompute) layout of `model` on `gpus`
    GPUs that fits in memory, ranked by step time (fastest first), from one vectorised call.

    Layouts obey Megatron-LM's rules: tp divides the NVLink domain and the heads, pp x interleave
    layers per stage at most, dp x microbatch divides the global batch, and an interleaved
    schedule needs pp > 1 (Megatron-Core takes any number of microbatches with it).
    """
    import pandas as pd

    m = as_model(model)
    g = as_gpu(gpu)
    domain = max(gpus_per_node, g.nvlink_domain)
    tps = [t for t in _divisors(domain) if m.heads % t == 0 and t <= gpus]
    rows = []
    for tp, cp in itertools.product(tps, cp_options):
        if seq_len % cp or gpus % (tp * cp):
            continue
        for pp in _divisors(gpus // (tp * cp)):
            if pp > m.layers:
                continue
            dp = gpus // (tp * cp * pp)
            if tp * cp * pp * dp % gpus_per_node and tp * cp * pp * dp > gpus_per_node:
                continue
            for mb, v in itertools.product(microbatch_options, interleave_options):
                if global_batch_seqs % (dp * mb):
                    continue
                if v > 1 and (pp == 1 or pp * v > m.layers):
                    continue
                for rc in RECOMPUTE_CODES.values():
                    rows.append((tp, pp, dp, cp, mb, v, rc))
    if not rows:
        raise ValueError(f"no parallel layout of {m.name} fits the rules on {gpus} GPUs")
    a = np.array(rows, dtype=np.int64)
    est = estimate_training(
        m,
        g,
        tp=a[:, 0],
        pp=a[:, 1],
        dp=a[:, 2],
        cp=a[:, 3],
        microbatch_seqs=a[:, 4],
        interleave=a[:, 5],
        recompute=a[:, 6],
        seq_len=seq_len,
        global_batch_seqs=global_batch_seqs,
        zero_stage=zero_stage,
        gpus_per_node=gpus_per_node,
        nic_gbit_s=nic_gbit_s,
        precision=precision,
        oversubscription=oversubscription,
        nodes_per_leaf=nodes_per_leaf,
    )
    df = pd.DataFrame(
        {
            "tp": a[:, 0],
            "pp": a[:, 1],
            "dp": a[:, 2],
            "cp": a[:, 3],
            "microbatch_seqs": a[:, 4],
            "interleave": a[:, 5],
            "recompute": _MODES[a[:, 6]],
            "step_time_s": est.step_time_s,
            "tokens_per_s": est.tokens_per_s,
            "mfu": est.mfu,
            "model_tflops_per_gpu": est.model_tflops_per_gpu,
            "memory_gb_per_gpu": est.memory_gb_per_gpu,
            "fits": est.fits,
        }
    )
    if not include_infeasible:
        df = df[df["fits"]]
    return df.sort_values(["step_time_s", "memory_gb_per_gpu"], kind="stable").reset_index(
        drop=True
    )
