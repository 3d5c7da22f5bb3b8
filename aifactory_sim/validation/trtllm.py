"""Published TensorRT-LLM throughput, and the benchmark's own settings, for calibrating and
checking the serving kernel.

Source: the TensorRT-LLM "perf overview" page (docs/source/performance/perf-overview.md,
release 1.0: trtllm-bench `throughput`, PyTorch backend, ModelOpt FP8 checkpoints, FP8 KV cache,
synthetic requests of exactly ISL prompt and OSL output tokens, all queued at once; the metric is
total output tokens/s of the whole TP group). Its Llama 3.1 8B H100 rows equal those in
shared/reference/README.md.

`ROWS` are the five Llama 3.1 8B / H100 rows of shared/reference with the batch limits
trtllm-bench picks for them (kept for the tests that use them since the first serving issue).
`PERF_OVERVIEW` holds every dense FP8 row of the page on Hopper (H100-SXM and H200): Llama 3.1
8B on one GPU, Llama 3.3 70B on two H100 or one H200, Llama 3.1 405B on eight; `FIT` names the
groups the Hopper family's inference constants are fitted on (tools/calibrate_inference.py); the
other groups are held out, predicted with those constants.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: (ISL, OSL, published output tokens/s, max_batch_size, max_num_tokens). The last two are what
#: trtllm-bench picks by default for each row (`bench_limits`) on an 80 GB H100 with FP8 weights
#: and KV cache.
ROWS: list[tuple[int, int, int, int, int]] = [
    (128, 128, 28_312, 4096, 8192),
    (128, 2048, 22_714, 640, 2048),
    (1000, 1000, 15_220, 640, 2048),
    (2048, 2048, 9_305, 384, 2048),
    (5000, 500, 3_459, 224, 2304),
]

#: The page's ISL/OSL pairs, in its order.
LENGTHS: list[tuple[int, int]] = [
    (128, 128),
    (128, 2048),
    (128, 4096),
    (500, 2000),
    (1000, 1000),
    (1000, 2000),
    (2048, 128),
    (2048, 2048),
    (5000, 500),
    (20000, 2000),
]

#: (catalog model, catalog GPU, tp) -> published output tokens/s per ISL/OSL pair of LENGTHS
#: (the whole replica's, not per GPU). perf-overview.md, release 1.0, tables "Llama 3.1 8B",
#: "Llama 3.3 70B" and "Llama 3.1 405B", FP8 columns. Llama 3.3 70B has Llama 3.1 70B's
#: architecture (catalog llama3-70b); 3.1 8B and 405B are catalog llama3-8b and llama3-405b.
_TABLE: dict[tuple[str, str, int], list[int]] = {
    ("llama3-8b", "H100-SXM", 1): [
        28312, 22714, 14325, 17660, 15220, 13899, 3450, 9305, 3459, 1351,
    ],
    ("llama3-8b", "H200", 1): [
        27911, 26221, 18027, 20770, 17744, 16828, 3538, 12194, 3902, 1804,
    ],
    ("llama3-70b", "H100-SXM", 2): [
        6378, 6651, 4199, 5222, 4205, 4146, 762, 3082, 898, 437,
    ],
    ("llama3-70b", "H200", 1): [
        3803, 4336, 2872, 3666, 2909, 2994, 442, 2003, 566, 283,
    ],
    ("llama3-405b", "H100-SXM", 8): [
        3627, 4340, 3116, 3994, 2919, 2895, 453, 2296, 610, 345,
    ],
    ("llama3-405b", "H200", 8): [
        3814, 5348, 4741, 4724, 3330, 3722, 456, 2948, 650, 505,
    ],
}  # fmt: skip

#: The page's Blackwell FP4 rows of dense models (NVFP4 checkpoints, FP8 KV cache: tables "Llama
#: 3.3 70B" and "Llama 3.1 405B", B200 and GB200 columns), held out: no constant of the
#: blackwell family is fitted; they check the FP4 path (W4A4 at fp4_tflops) on Hopper's
#: constants. (model, gpu, tp) -> output tokens/s per pair of LENGTHS.
FP4_TABLE: dict[tuple[str, str, int], list[int]] = {
    ("llama3-70b", "B200", 1): [
        11147, 9922, 6831, 7762, 7007, 6271, 1339, 4783, 1459, 665,
    ],
    ("llama3-70b", "GB200", 1): [
        12189, 11309, 7849, 9028, 7326, 6513, 1450, 5646, 1602, 755,
    ],
    ("llama3-405b", "B200", 4): [
        6281, 8020, 6345, 6244, 5209, 4933, 749, 4212, 1048, 672,
    ],
    ("llama3-405b", "GB200", 4): [
        6740, 8151, 6608, 6540, 5389, 5135, 797, 4407, 1112, 739,
    ],
}  # fmt: skip


#: (model, gpu, tp, ISL, OSL, published output tokens/s), every row of _TABLE.
def _flatten(
    table: Mapping[tuple[str, str, int], list[int] | list[int | None]],
) -> list[tuple[str, str, int, int, int, int]]:
    """(model, gpu, tp, ISL, OSL, published) for every figure of a table by LENGTHS (None: the
    page has no figure there)."""
    return [
        (model, gpu, tp, isl, osl, pub)
        for (model, gpu, tp), values in table.items()
        for (isl, osl), pub in zip(LENGTHS, values, strict=True)
        if pub is not None
    ]


PERF_OVERVIEW = _flatten(_TABLE)

#: The page's mixture-of-experts rows on Hopper, FP8 (tables "Qwen3-235B-A22B" and "Llama 4
#: Maverick"; None where the page has no figure), all held out: (model, gpu, tp) -> output
#: tokens/s per pair of LENGTHS. The page runs MoE models with `--ep $ep_size`, its value not
#: given, and an options file that sets `enable_attention_dp: true` nested under
#: `cuda_graph_config` (where the LLM API does not read it), so how the experts and the
#: attention were spread is not known; `simulate_moe` takes a reading.
_MOE_TABLE: dict[tuple[str, str, int], list[int | None]] = {
    ("qwen3-235b-a22b", "H100-SXM", 8): [
        None, 19658, 12447, 18351, 14898, 15136, None, 9924, 3225, None,
    ],
    ("qwen3-235b-a22b", "H200", 8): [
        30429, 42821, 26852, 28026, 23789, 22061, 3331, 16672, 3623, 1876,
    ],
    ("llama4-maverick", "H100-SXM", 8): [
        None, 10829, 6744, 10108, 9677, 9151, None, 6916, 3457, None,
    ],
    ("llama4-maverick", "H200", 8): [
        63994, 40572, 24616, 37835, 31782, 34734, 7307, 20957, 8456, 4106,
    ],
}  # fmt: skip

#: (model, gpu, tp, ISL, OSL, published output tokens/s), every figure of _MOE_TABLE.
MOE_PERF_OVERVIEW = _flatten(_MOE_TABLE)

#: The groups the Hopper inference constants are fitted on: one model on one GPU and one
#: tensor-parallel model, both on H100. Everything else in PERF_OVERVIEW is held out.
FIT: list[tuple[str, str, int]] = [("llama3-8b", "H100-SXM", 1), ("llama3-70b", "H100-SXM", 2)]

#: Fraction of the memory left after the weights that TensorRT-LLM gives the KV cache in these
#: runs: the page says it "in many cases" sets --kv_cache_free_gpu_mem_fraction 0.95 (0.90 is
#: the default) and that trtllm-bench sizes the batch limits at 0.95.
KV_FREE_FRACTION = 0.95

#: Bytes of one GiB: trtllm-bench sizes memory in GiB (tuning.py divides by 1024**3).
_GIB = 1024.0**3


def bench_limits(
    weight_bytes: float,
    kv_bytes_per_token: float,
    hbm_bytes: float,
    tp: int,
    isl: int,
    osl: int,
) -> tuple[int, int]:
    """(max_batch_size, max_num_tokens) as trtllm-bench's `throughput` command picks them by
    default (tensorrt_llm/bench/build/tuning.py, `calc_engine_setting` and `finetune_setting`,
    release 1.0), written from its description:

    - requests that fit the KV cache: 0.95 x (tp x HBM - weights) / (KV bytes per token x
      (ISL + OSL)), capped at 4096;
    - batch size: that rounded up to a multiple of 32 (at least 64) below 256, of 128 below
      1024, else of 256;
    - tokens: requests x (1 + ISL / OSL), capped at 32768, rounded up to a multiple of 256 (at
      least 2048) below 4096, of 512 below 8192, else of 1024.

    `kv_bytes_per_token` is the whole replica's (kernels.inference.kv_bytes_per_token);
    `hbm_bytes` the device memory trtllm-bench reads from the driver (an H100 80 GB shows
    79.6 GiB: kernels.inference.DEVICE_BYTES_PER_GB). trtllm-bench counts every parameter at the
    checkpoint's bytes per weight (pass `weight_bytes` so: parameters x 1 for FP8), not the
    bytes the engine holds (bf16 embedding and lm-head): the limits are rounded, so 1 GB moves
    some of them a step.
    """
    available = (hbm_bytes * tp - weight_bytes) / _GIB
    requests = available * 0.95 / (kv_bytes_per_token / _GIB * (isl + osl))
    raw_bs = min(requests, 4096.0)
    raw_tokens = min(raw_bs * (1.0 + isl / osl), 32768.0)
    if raw_bs < 256:
        bs = max(64, 32 * math.ceil(raw_bs / 32))
    elif raw_bs < 1024:
        bs = 128 * math.ceil(raw_bs / 128)
    else:
        bs = 256 * math.ceil(raw_bs / 256)
    if raw_tokens < 4096:
        tokens = max(2048, 256 * math.ceil(raw_tokens / 256))
    elif raw_tokens < 8192:
        tokens = 512 * math.ceil(raw_tokens / 512)
    else:
        tokens = 1024 * math.ceil(raw_tokens / 1024)
    return bs, tokens


def row_arguments(
    model: Mapping[str, Any],
    gpu_hbm_gb: float,
    tp: int,
    isl: int,
    osl: int,
    precision: str = "fp8",
) -> dict[str, Any]:
    """Keyword arguments of kernels.inference.offline_steady_state for one row, run as the
    page ran it: FP8 weights (ModelOpt: FP8 linear layers, bf16 embedding and lm-head; or
    `precision` fp4, ModelOpt NVFP4 linear layers), FP8 KV cache, trtllm-bench's batch
    limits, TensorRT-LLM's GUARANTEED_NO_EVICT admission (blocks for ISL + OSL reserved at
    admission) and a KV cache of KV_FREE_FRACTION of the memory the
    weights and the activation reserve leave."""
    from ..kernels.inference import (
        BLOCK_TOKENS,
        DEVICE_BYTES_PER_GB,
        WEIGHT_BYTES_PER_PARAM,
        activation_reserve_bytes,
        kv_bytes_per_token,
        weight_bytes,
    )
    from ..kernels.training import param_count

    gpu_hbm_bytes = gpu_hbm_gb * DEVICE_BYTES_PER_GB

    weights = float(weight_bytes(model, precision))
    per_token = float(kv_bytes_per_token(model, "fp8", tp))
    # trtllm-bench sizes its limits with every parameter at the checkpoint's bytes (1 for FP8)
    bs, tokens = bench_limits(
        float(param_count(dict(model))) * WEIGHT_BYTES_PER_PARAM[precision],
        per_token,
        gpu_hbm_bytes,
        tp,
        isl,
        osl,
    )
    reserve = float(
        activation_reserve_bytes(model, tp=tp, max_batched_tokens=tokens, max_num_seqs=bs)
    )
    free = gpu_hbm_bytes * tp - weights - tp * reserve
    capacity = math.floor(max(free, 0.0) * KV_FREE_FRACTION / per_token / BLOCK_TOKENS)
    return {
        "prompt_tokens": isl,
        "output_tokens": osl,
        "max_num_seqs": bs,
        "max_batched_tokens": tokens,
        "tp": tp,
        "precision": precision,
        "kv_precision": "fp8",
        "reserve_full_sequence": True,
        "kv_capacity": capacity * BLOCK_TOKENS,
    }


def no_evict_seqs(capacity_tokens: float, isl: int, osl: int, max_batch_size: int) -> int:
    """The concurrency TensorRT-LLM's GUARANTEED_NO_EVICT admission reaches on requests of
    exactly ISL + OSL tokens: it admits a request only when blocks for all its tokens are free,
    so at most capacity // (blocks of ISL + OSL) run at once (and at most max_batch_size).

    For such uniform requests this is the whole rule: an engine that allocates blocks as tokens
    arrive (vLLM's, the simulator's) and is capped at this many sequences never runs out of
    blocks and never preempts, so it runs the benchmark as TensorRT-LLM did."""
    from ..kernels.inference import BLOCK_TOKENS

    full = -(-(isl + osl) // BLOCK_TOKENS) * BLOCK_TOKENS
    return max(1, min(max_batch_size, int(capacity_tokens // full)))


def _by_group(
    rows: list[tuple[str, str, int, int, int, int]],
) -> dict[tuple[str, str, int], list[tuple[int, int, int]]]:
    out: dict[tuple[str, str, int], list[tuple[int, int, int]]] = {}
    for model, gpu, tp, isl, osl, pub in rows:
        out.setdefault((model, gpu, tp), []).append((isl, osl, pub))
    return out


def groups(moe: bool = False) -> dict[tuple[str, str, int], list[tuple[int, int, int]]]:
    """PERF_OVERVIEW (MOE_PERF_OVERVIEW with `moe`) by (model, gpu, tp): the (ISL, OSL,
    published) rows of each."""
    return _by_group(MOE_PERF_OVERVIEW if moe else PERF_OVERVIEW)


def _run_rows(
    group: tuple[str, str, int],
    table: list[tuple[int, int, int]],
    calibration: Mapping[str, Any] | None,
    precision: str,
    **parallel: Any,
) -> tuple[Any, Any]:
    """(simulated, published) output tokens/s of `table`'s (ISL, OSL, published) rows of a
    (model, gpu, tp) group: one call of kernels.inference.offline_steady_state, each row run as
    `row_arguments` says; `parallel` goes to the kernel (ep and the network)."""
    import numpy as np

    from .. import catalog
    from ..estimate import as_model
    from ..kernels.inference import gpu_inference_args, offline_steady_state

    model, gpu, tp = group
    m = as_model(model).kernel_args()
    g = catalog.entry("gpu", gpu)
    cal = calibration if calibration is not None else catalog.entry("calibration", g["family"])
    rows = [row_arguments(m, g["hbm_gb"], tp, isl, osl, precision) for isl, osl, _ in table]
    keys = ("prompt_tokens", "output_tokens", "max_num_seqs", "max_batched_tokens", "kv_capacity")
    batch = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in keys}
    fixed = {k: v for k, v in rows[0].items() if k not in keys}
    sim = offline_steady_state(m, gpu_inference_args(g, cal), **fixed, **batch, **parallel)
    published = np.array([pub for _, _, pub in table], dtype=np.float64)
    return sim["output_tokens_per_s"], published


def simulate(
    group: tuple[str, str, int],
    calibration: Mapping[str, Any] | None = None,
    precision: str = "fp8",
    allreduce: str = "ring",
) -> tuple[Any, Any]:
    """(simulated, published) output tokens/s of a group's rows, as numpy arrays, from one
    call of kernels.inference.offline_steady_state, each row run as `row_arguments` says.
    `calibration` replaces the GPU family's constants (values may be arrays that broadcast
    against the rows on a trailing axis: a fit passes grids). With `precision` "fp4" the group
    is one of FP4_TABLE's. `allreduce`: the tensor-parallel all-reduce (kernels.inference
    ALLREDUCE)."""
    rows = PERF_OVERVIEW if precision == "fp8" else _flatten({group: FP4_TABLE[group]})
    return _run_rows(group, _by_group(rows)[group], calibration, precision, allreduce=allreduce)


def simulate_moe(group: tuple[str, str, int], ep: int) -> tuple[Any, Any]:
    """(simulated, published) output tokens/s of a MoE group's rows, as `simulate` runs the
    dense ones (same limits, admission and KV cache), with the routed experts over `ep` groups
    of the tp GPUs (1: sharded like the rest) and tensor-parallel attention: the reading of
    the page's `--ep $ep_size` that the serving page tabulates for ep 1 and ep = tp."""
    from .. import catalog
    from ..estimate import as_gpu
    from ..kernels.inference import network_args

    gpu = as_gpu(group[1])
    # one 400 Gb/s NIC per GPU (DGX H100 and H200), as engine/fleet.py prices it
    net = network_args(400.0, catalog.entry("calibration", gpu.family), gpu.nvlink_domain)
    return _run_rows(group, groups(moe=True)[group], None, "fp8", ep=ep, **net)


#: TensorRT-LLM's older performance page for Ampere (docs/source/performance.md, data of
#: v0.6.1, "Peak Throughput", "A100 GPUs (FP16)"; the page's LLaMA 7B and 70B are Llama 2's):
#: static batches run by gptSessionBenchmark (one context phase for the whole batch, then one
#: generation step per further output token), FP16 weights and KV cache, output tokens/s per
#: GPU. (model, gpu, tp, batch, ISL, OSL, published). An older stack than the 1.0 rows above.
AMPERE_STATIC: list[tuple[str, str, int, int, int, int, int]] = [
    ("llama2-7b", "A100-SXM-80GB", 1, 384, 128, 128, 5586),
    ("llama2-7b", "A100-SXM-80GB", 1, 60, 128, 2048, 1928),
    ("llama2-7b", "A100-SXM-80GB", 1, 52, 2048, 128, 591),
    ("llama2-7b", "A100-SXM-80GB", 2, 64, 2048, 2048, 782),
    ("llama2-70b", "A100-SXM-80GB", 4, 1280, 128, 128, 670),
    ("llama2-70b", "A100-SXM-80GB", 4, 240, 128, 2048, 525),
    ("llama2-70b", "A100-SXM-80GB", 4, 120, 2048, 128, 79),
]


def simulate_static(
    rows: list[tuple[str, str, int, int, int, int, int]],
    calibration: Mapping[str, Any] | None = None,
) -> tuple[Any, Any]:
    """(simulated, published) output tokens/s per GPU of static-batch rows (AMPERE_STATIC's
    form): a batch of B prompts of ISL tokens prefilled in one iteration, then OSL - 1 decode
    iterations of the B sequences, the j-th attending to B (ISL + j) cached tokens; throughput
    B OSL / (the iterations' summed time) / tp. BF16 weights and KV cache (FP16's bytes and
    FLOP/s on A100). `calibration` replaces the GPU family's constants."""
    import numpy as np

    from .. import catalog
    from ..estimate import as_model
    from ..kernels.inference import (
        gpu_inference_args,
        iteration_time_s,
        prefill_context_tokens,
    )

    sim = []
    for model, gpu, tp, batch, isl, osl, _ in rows:
        m = as_model(model).kernel_args()
        g = catalog.entry("gpu", gpu)
        cal = calibration if calibration is not None else catalog.entry("calibration", g["family"])
        args = gpu_inference_args(g, cal)
        kw: dict[str, Any] = {"tp": tp, "precision": "bf16", "kv_precision": "bf16"}
        context = iteration_time_s(
            m,
            args,
            prefill_tokens=batch * isl,
            decode_seqs=0,
            context_tokens=0,
            prefill_context=batch * float(prefill_context_tokens(isl)),
            prefill_seqs=batch,
            **kw,
        )
        steps = np.arange(1, osl, dtype=np.float64)
        decode = iteration_time_s(
            m,
            args,
            prefill_tokens=0,
            decode_seqs=batch,
            context_tokens=batch * (isl + steps),
            **kw,
        )
        total = float(context) + float(np.sum(decode))
        sim.append(batch * osl / total / tp)
    published = np.array([r[-1] for r in rows], dtype=np.float64)
    return np.array(sim), published


__all__ = [
    "AMPERE_STATIC",
    "FIT",
    "FP4_TABLE",
    "KV_FREE_FRACTION",
    "LENGTHS",
    "MOE_PERF_OVERVIEW",
    "PERF_OVERVIEW",
    "ROWS",
    "bench_limits",
    "groups",
    "no_evict_seqs",
    "row_arguments",
    "simulate",
    "simulate_moe",
    "simulate_static",
]
