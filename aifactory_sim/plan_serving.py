"""Serving plans: every replica layout of a model on a GPU, its throughput per GPU against the
per-user token rate and the time to first token, and the cheapest fleet that meets an SLO.

`plan_serving` enumerates (tp, dp_attention, ep, weights precision, KV-cache dtype,
max_num_seqs, max_batched_tokens) layouts, evaluates them all in two vectorised calls into
kernels/inference.py, and returns one row per layout. Nothing here simulates time: the engine
(`af.run` with a `poisson` or `offline` workload) is the check (tests/test_plan_serving.py).

Model, per layout (I prompt and O output tokens, both the workload's means, held fixed):

1. Saturation. `kernels.inference.offline_steady_state` with the layout's limits: lam_max
   requests started per iteration, the mean iteration time t_max, the output tokens per second
   of a replica kept full (an offline benchmark). This is `output_tokens_per_s_per_gpu`, exactly
   the kernel's number divided by the replica's GPUs.
2. The operating curve. Below saturation a replica admitting x requests/s settles where, by
   Little's law per iteration, n = x t requests start per iteration, D = n (O - 1) decode and
   P = n I prompt tokens are prefilled, the decodes attending to D (I + O/2) cached tokens (the
   same steady state as offline_steady_state, at n <= lam_max instead of the largest n the
   limits allow). Parametrising the curve by u = n / lam_max in (0, 1] gives t(n) in one kernel
   call over a (layouts x CURVE) grid and x = n / t(n), non-decreasing in n because an
   iteration's time per request never grows with the batch (offline_throughput_tokens_s's
   docstring). The TPOT at that point is t(n): every decode takes one token per iteration.
3. TTFT at that point (`_ttft_s`), the sum of four parts, each at the requested percentile:
   - the wait for a seat (one of the c = lam_max (O - 1 + r) sequences a full replica runs):
     Allen-Cunneen's M/G/c wait with Sakasegawa's probability of waiting
     (Hopp & Spearman, Factory Physics, 3rd ed., eq. 8.10; Sakasegawa 1977), the formula of
     kernels.fluid.seat_wait, vectorised; the wait given a wait taken as exponential. Its
     utilisation is the rate's share x / x_max of the saturated rate, not the seats' n /
     lam_max: the replica speeds up as it empties (x is concave in n), so at 90 % of the seats
     it may already run at 99 % of its rate, and a burst slows every sequence it holds;
   - the end of the iteration under way: uniform over [0, t] when the replica is busy, which it
     is with probability 1 - exp(-L), L = n (O - 1 + r) the mean sequences in flight (Poisson
     in M/G/infinity, Kleinrock, Queueing Systems I, sec. 3.8, ignoring the seat limit);
   - the queue for the prefill budget: chunked prefill serves prompts first come first served
     with the room = max_batched_tokens - D tokens the decodes leave per iteration, an M/D/1
     queue of service s = I t / room and load rho = n I / room, whose mean wait is
     Pollaczek-Khinchine's rho s / (2 (1 - rho)) (Kleinrock, eq. 5.105 with C_s^2 = 0), the
     tail again taken as exponential given a wait (probability rho);
   - the prompt's own prefill: ceil(I / room) iterations, each carrying the curve's decodes,
     one chunk of the prompt and the other prompts' mean prefill in the room left (one more
     kernel call; the last chunk's iteration samples the first token).
   The TPOT is the mean iteration t(n), evaluated at the mean batch: optimistic where
   iterations alternate between compute-bound prefills and memory-bound decodes (a roofline is
   convex; offline_throughput_tokens_s's docstring), about 10 % against the engine for a few
   tens of sequences (tests/test_plan_serving.py).
   Adding the parts' percentiles overstates a high percentile of the sum a little (the parts
   are not perfectly correlated) and is exact for the parts that are zero; the median of a
   lightly loaded replica is dominated by the last two parts.
4. SLO capacity: x_slo, the largest x on the curve whose TPOT and TTFT meet the SLO (0 when none
   does: `meets_slo` False). Latency grows along the curve, so every rate below x_slo meets it
   too. With a load L (requests/s): replicas = ceil(L / x_slo), GPUs = replicas x G (G = tp x
   dp_attention, the replica's GPUs; expert parallelism spreads the experts over those), and
   the TPOT and TTFT reported are those at x = L / replicas (interpolated along the curve).
5. Cost per million output tokens: with a load, of the tokens served at that load,
   GPUs / (3600 L O) x 1e6 GPU-hours; without one, of a replica run at its SLO capacity,
   G / (3600 x_slo O) x 1e6. Times `usd_per_gpu_hour` when a price is given (prices are
   inputs, never constants).

Not modelled: the spread of prompt and output lengths (the means stand for every request),
preemptions (the steady state never runs out of KV cache: the KV limit is one of lam_max's),
prefix caching, routing imbalance between replicas (each replica is taken to receive L /
replicas as a Poisson stream, what least-outstanding routing approaches), and multi-node
replicas' slower inter-node all-reduce (the kernel prices every tensor-parallel all-reduce at
NVLink rates; the expert all-to-all does use the NICs beyond one NVLink domain).

Mixture-of-experts models (`ModelSpec.is_moe`) also range over expert parallelism `ep` (a
divisor of both the replica's GPUs and the routed experts) and data-parallel attention
`dp_attention` (ranks of tp GPUs, each with its own sequences and KV cache), priced by the
kernel's all-to-all and router-imbalance terms (kernels/inference.py); a dense model keeps
ep = dp_attention = 1, where those axes change nothing. FP4 weights and KV are offered by
default only on GPUs with FP4 tensor cores (`fp4_tflops`). The mean iteration is pessimistic
for a MoE replica at a few tens of sequences: most of its iterations decode only and read the
experts that few tokens touch, while the mean iteration, with its share of a prompt, reads
nearly all of them (the experts touched are concave in the batch). Against the engine,
DeepSeek-V3 on H200: -12 % to 0 % at 128-512 sequences, up to +36 % (the engine faster) at 32
(tests/test_plan_serving.py).

"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .errors import ScenarioError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

F64 = NDArray[np.float64]

#: The layout axes: (column of the result, the kernel keyword it feeds). Adding one the kernel
#: learns is a line here and a default in DEFAULT_OPTIONS.
AXES: tuple[tuple[str, str], ...] = (
    ("tp", "tp"),
    ("dp_attention", "dp_attention"),
    ("ep", "ep"),
    ("precision", "precision"),
    ("kv_cache_dtype", "kv_precision"),
    ("max_num_seqs", "max_num_seqs"),
    ("max_batched_tokens", "max_batched_tokens"),
)
#: Options of each axis when none are given. max_num_seqs is the concurrency cap: the grid over
#: which a layout may run below its memory's concurrency to meet a TPOT. ep and dp_attention:
#: the MoE defaults (a dense model takes 1); fp4 joins precision and kv_cache_dtype by default on
#: a GPU with FP4 tensor cores.
DEFAULT_OPTIONS: dict[str, tuple[Any, ...]] = {
    "tp": (1, 2, 4, 8),
    "dp_attention": (1, 2, 4, 8),
    "ep": (1, 2, 4, 8, 16, 32, 64),
    "precision": ("bf16", "fp8", "int4"),
    "kv_cache_dtype": ("bf16", "fp8"),
    "max_num_seqs": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    "max_batched_tokens": (2048, 8192, 16384),
}
#: Scale-out NIC rate per GPU when none is given: NDR InfiniBand, 400 Gb/s (catalog networks).
DEFAULT_NIC_GBIT_S = 400.0
#: Points of the operating curve, as shares u = n / lam_max of the saturated rate: dense at
#: light load (a TTFT or a tight TPOT may only be met there) and every 5 % above 10 %.
CURVE = np.concatenate(([0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08], np.linspace(0.1, 1.0, 19)))
BINDING = np.array(["token_budget", "max_num_seqs", "kv_cache"])


def _positive(name: str, value: Any, *, integer: bool = False) -> None:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value) == int(value)
    if not ok or not np.isfinite(value) or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ScenarioError(f"{name} must be {kind}; got {value!r}")


def _options(
    name: str,
    given: Any,
    allowed: tuple[Any, ...] | None = None,
    default: tuple[Any, ...] | None = None,
) -> tuple[Any, ...]:
    """An axis' options as a tuple, checked: whole positive numbers, or names from `allowed`."""
    opts = (DEFAULT_OPTIONS[name] if default is None else default) if given is None else given
    opts = (opts,) if isinstance(opts, (str, int)) else tuple(opts)
    if not opts:
        raise ScenarioError(f"{name} options must not be empty")
    for v in opts:
        if allowed is not None:
            if v not in allowed:
                raise ScenarioError(f"{name} options must be among {', '.join(allowed)}; got {v!r}")
        else:
            _positive(f"{name} option", v, integer=True)
    return tuple(dict.fromkeys(opts))


def _resolve(model: Any, gpu: Any) -> tuple[Any, Any]:
    from pydantic import ValidationError

    from .estimate import as_gpu, as_model

    try:
        return as_model(model), as_gpu(gpu)
    except KeyError as err:
        raise ScenarioError(str(err.args[0])) from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ScenarioError(f"{where}: {first['msg']}") from None


def _exp_tail_quantile(p_wait: F64, mean_given_wait: F64, q: float) -> F64:
    """q-quantile of a wait that is 0 with probability 1 - p_wait and exponential with mean
    `mean_given_wait` otherwise: m ln(p_wait / (1 - q)) where p_wait > 1 - q, else 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        w = mean_given_wait * np.log(np.maximum(p_wait, 1e-300) / (1.0 - q))
    return np.where(p_wait > 1.0 - q, np.maximum(w, 0.0), 0.0)


def _ttft_s(
    *,
    u: F64,
    n: F64,
    t: F64,
    t_prefill: F64,
    seats: F64,
    hold_iterations: F64,
    room: F64,
    prompt: float,
    q: float,
) -> F64:
    """TTFT's q-quantile at a point of the operating curve (step 3 of the module docstring).

    u: the rate's share of the saturated rate (x / x_max); n: requests started per
    iteration; t: the mean iteration time; t_prefill: that of an iteration carrying one chunk of
    the prompt; seats: the sequences a full replica runs; hold_iterations: iterations a request
    holds a seat (O - 1 + r); room: prefill tokens per iteration the decodes leave.
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        c = np.maximum(seats, 1.0)
        busy = np.minimum(u, 1.0)
        # Allen-Cunneen / Sakasegawa, c_a^2 = 1 (Poisson), c_s^2 = 0 (fixed lengths).
        p_seat = busy ** (np.sqrt(2.0 * (c + 1.0)) - 1.0)
        m_seat = hold_iterations * t / (c * (1.0 - busy)) * 0.5
        seat = _exp_tail_quantile(p_seat, m_seat, q)
        # The iteration under way: uniform over [0, t] with probability P(busy) = 1 - e^-L.
        p_busy = -np.expm1(-n * hold_iterations)
        residual = t * np.clip((q - (1.0 - p_busy)) / np.maximum(p_busy, 1e-300), 0.0, 1.0)
        # FCFS prefill budget as M/D/1 (Pollaczek-Khinchine), exponential tail given a wait.
        rho = n * prompt / room
        s = prompt * t_prefill / room
        m_pre = s / (2.0 * (1.0 - rho))  # mean wait given a wait: W / rho
        pre_wait = _exp_tail_quantile(rho, m_pre, q)
        own = np.ceil(prompt / room) * t_prefill
        total = seat + residual + pre_wait + own
    saturated = (busy >= 1.0 - 1e-12) | (rho >= 1.0 - 1e-12)
    return np.where(saturated, np.inf, total)


def _rowwise_interp(x: F64, xs: F64, ys: F64) -> F64:
    """np.interp per row: x (R,), xs (R, K) non-decreasing rows, ys (R, K); clamped."""
    k = xs.shape[1]
    idx = np.clip((xs < x[:, None]).sum(axis=1), 1, k - 1)
    rows = np.arange(xs.shape[0])
    x0, x1 = xs[rows, idx - 1], xs[rows, idx]
    y0, y1 = ys[rows, idx - 1], ys[rows, idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.clip((x - x0) / (x1 - x0), 0.0, 1.0)
        w = np.where(np.isfinite(w), w, 1.0)
        mid = y0 + w * (y1 - y0)
    return np.where(w >= 1.0, y1, np.where(w <= 0.0, y0, mid))


def pareto_front(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of a `plan_serving` table on the front of saturated output tokens per second
    per GPU against tokens per second per user: no other fitting layout is at least as good on
    both and better on one. Sorted from the most interactive to the highest throughput."""
    return df[df["pareto"]].sort_values(
        "saturated_tokens_per_s_per_user", ascending=False, kind="stable"
    )


def _pareto_mask(throughput: F64, per_user: F64, fits: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Non-dominated points (maximise both): sort by per-user rate (then throughput), both
    descending; a point is on the front when its throughput beats every earlier one's."""
    thr = np.where(fits, throughput, -np.inf)
    usr = np.where(fits, per_user, -np.inf)
    order = np.lexsort((-thr, -usr))
    best_before = np.concatenate(([-np.inf], np.maximum.accumulate(thr[order])[:-1]))
    on = np.zeros(thr.shape, dtype=bool)
    on[order] = (thr[order] > best_before) & np.isfinite(thr[order])
    return on


def plan_serving(
    model: Any,
    gpu: Any,
    *,
    prompt: int,
    output: int,
    ttft_s: float | None = None,
    tpot_s: float | None = None,
    tokens_per_s_per_user: float | None = None,
    percentile: float = 50.0,
    load_rps: float | None = None,
    gpus_per_node: int = 8,
    usd_per_gpu_hour: float | None = None,
    tp_options: tuple[int, ...] | None = None,
    ep_options: tuple[int, ...] | None = None,
    dp_attention_options: tuple[int, ...] | None = None,
    precision_options: tuple[str, ...] | None = None,
    kv_cache_dtype_options: tuple[str, ...] | None = None,
    max_num_seqs_options: tuple[int, ...] | None = None,
    max_batched_tokens_options: tuple[int, ...] | None = None,
    gpu_memory_utilization: float = 0.9,
    nic_gbit_s: float = DEFAULT_NIC_GBIT_S,
    allreduce: str = "ring",
    include_infeasible: bool = False,
) -> pd.DataFrame:
    """One row per serving layout of `model` on `gpu` (catalog names, mappings or specs), the
    cheapest one that meets the SLO first (see the module docstring for the model).

    SLO: `ttft_s` (at `percentile`, default the median), `tpot_s` or `tokens_per_s_per_user`
    (1 / TPOT; the mean decode iteration, at any percentile); an SLO left out is not checked.
    `load_rps` (requests/s) sizes the fleet: `replicas`, `gpus`, and the cost of the tokens
    served at that load; without it the cost is that of a replica run at its SLO capacity.
    Layout rules: tp and the replica's tp x dp_attention GPUs each divide `gpus_per_node` or
    are a multiple of it, tp divides the attention heads (KV heads are replicated when tp
    exceeds them, as the kernel does); ep divides the replica's GPUs and the routed experts;
    max_batched_tokens >= max_num_seqs (vLLM's rule). ep and dp_attention other than 1 need a
    MoE model. `nic_gbit_s` is each GPU's scale-out NIC (the expert all-to-all beyond one NVLink
    domain); `allreduce` the tensor-parallel all-reduce (ring, nvls or auto, as a service's
    `allreduce`). Layouts whose weights and one request's
    KV cache do not fit are dropped unless `include_infeasible` (then `fits` is False).
    `df.attrs` holds the inputs, `best_ttft_s` and `best_tpot_s` (the lowest reachable by any
    fitting layout, at the lightest load of the curve) and `cheapest` (the first row as a dict,
    None when no layout meets the SLO); `pareto_front(df)` the front; `plot_serving(df)` a figure.
    """
    import pandas as pd

    from . import catalog
    from .estimate import gpu_fields
    from .kernels.inference import (
        KV_BYTES_PER_ELEMENT,
        WEIGHT_BYTES_PER_PARAM,
        gpu_inference_args,
        iteration_breakdown,
        network_args,
        offline_steady_state,
    )

    _positive("prompt", prompt, integer=True)
    _positive("output", output, integer=True)
    _positive("gpus_per_node", gpus_per_node, integer=True)
    for name, value in (
        ("ttft_s", ttft_s),
        ("tpot_s", tpot_s),
        ("tokens_per_s_per_user", tokens_per_s_per_user),
        ("load_rps", load_rps),
        ("usd_per_gpu_hour", usd_per_gpu_hour),
        ("nic_gbit_s", nic_gbit_s),
    ):
        if value is not None:
            _positive(name, value)
    if tpot_s is not None and tokens_per_s_per_user is not None:
        raise ScenarioError("give tpot_s or tokens_per_s_per_user, not both (one is 1 / other)")
    if not (isinstance(percentile, (int, float)) and 0.0 < percentile < 100.0):
        raise ScenarioError(f"percentile must be in (0, 100); got {percentile!r}")
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ScenarioError(
            f"gpu_memory_utilization must be in (0, 1]; got {gpu_memory_utilization!r}"
        )
    m_spec, g_spec = _resolve(model, gpu)
    if allreduce not in ("ring", "nvls", "auto"):
        raise ScenarioError(f"allreduce must be one of ring, nvls, auto; got {allreduce!r}")
    if allreduce == "nvls" and not g_spec.nvls:
        raise ScenarioError(
            f"allreduce nvls needs NVLink SHARP, which {g_spec.name} lacks (nvls: false), as a "
            "scenario's service would be told; allowed: ring, auto"
        )
    moe = bool(m_spec.is_moe)
    fp4 = g_spec.fp4_tflops is not None
    for name, given in (("ep", ep_options), ("dp_attention", dp_attention_options)):
        if not moe and given is not None and set(_options(name, given)) != {1}:
            raise ScenarioError(
                f"{name} options {tuple(given)}: {m_spec.name} is a dense model (one FFN per "
                f"layer), where {name} changes nothing; allowed: (1,)"
            )
    opts = {
        "tp": _options("tp", tp_options),
        "dp_attention": _options("dp_attention", dp_attention_options, None, None if moe else (1,)),
        "ep": _options("ep", ep_options, None, None if moe else (1,)),
        "precision": _options(
            "precision",
            precision_options,
            tuple(WEIGHT_BYTES_PER_PARAM),
            DEFAULT_OPTIONS["precision"] + (("fp4",) if fp4 else ()),
        ),
        "kv_cache_dtype": _options(
            "kv_cache_dtype",
            kv_cache_dtype_options,
            tuple(KV_BYTES_PER_ELEMENT),
            DEFAULT_OPTIONS["kv_cache_dtype"] + (("fp4",) if fp4 else ()),
        ),
        "max_num_seqs": _options("max_num_seqs", max_num_seqs_options),
        "max_batched_tokens": _options("max_batched_tokens", max_batched_tokens_options),
    }
    if not fp4 and "fp4" in opts["kv_cache_dtype"]:
        raise ScenarioError(
            f"kv_cache_dtype option fp4 (NVFP4) needs FP4 tensor cores, which {g_spec.name} "
            "lacks (no fp4_tflops), as a scenario's service would be told; allowed: bf16, fp8"
        )
    gpn = int(gpus_per_node)
    tps = tuple(t for t in opts["tp"] if (gpn % t == 0 or t % gpn == 0) and m_spec.heads % t == 0)
    if not tps:
        raise ScenarioError(
            f"tp options {opts['tp']}: none divides gpus_per_node={gpn} (or is a multiple of "
            f"it) and the {m_spec.heads} heads of {m_spec.name}"
        )
    opts["tp"] = tps

    # Every combination of the axes' options, flat (the first axis varies slowest).
    names = [a for a, _ in AXES]
    grids = np.meshgrid(*(np.arange(len(opts[a])) for a in names), indexing="ij")
    cols: dict[str, Any] = {
        a: np.asarray(opts[a])[g.ravel()] for a, g in zip(names, grids, strict=True)
    }
    in_budget = cols["max_batched_tokens"] >= cols["max_num_seqs"]
    if not in_budget.any():
        raise ScenarioError("every max_batched_tokens option is below every max_num_seqs one")
    n_rep = cols["tp"] * cols["dp_attention"]
    keep = (
        in_budget
        & ((gpn % n_rep == 0) | (n_rep % gpn == 0))
        & (n_rep % cols["ep"] == 0)
        & ((m_spec.experts % cols["ep"] == 0) if moe else (cols["ep"] == 1))
    )
    if not keep.any():
        raise ScenarioError(
            f"no layout is valid: ep options {opts['ep']} must divide a replica's tp x "
            f"dp_attention GPUs (tp {tps}, dp_attention {opts['dp_attention']}) and the "
            f"{m_spec.experts} experts, and tp x dp_attention must divide gpus_per_node={gpn} "
            "or be a multiple of it"
        )
    cols = {a: v[keep] for a, v in cols.items()}

    margs = m_spec.kernel_args()
    cal = catalog.entry("calibration", g_spec.family)
    g = gpu_inference_args(gpu_fields(g_spec), cal)
    kernel = {kw: cols[a] for a, kw in AXES}
    # as engine/fleet.py
    net: dict[str, Any] = {
        **network_args(float(nic_gbit_s), cal, g_spec.nvlink_domain),
        "allreduce": allreduce,
    }
    i_len, o_len = float(prompt), float(output)
    sat = offline_steady_state(
        margs,
        g,
        prompt_tokens=i_len,
        output_tokens=o_len,
        gpu_memory_utilization=gpu_memory_utilization,
        tp=kernel["tp"],
        precision=kernel["precision"],
        kv_precision=kernel["kv_precision"],
        max_num_seqs=kernel["max_num_seqs"],
        max_batched_tokens=kernel["max_batched_tokens"],
        ep=kernel["ep"],
        dp_attention=kernel["dp_attention"],
        **net,
    )
    gpus_per_replica = n_rep[keep]
    lam_max = sat["requests_per_iteration"]
    t_max = sat["iteration_time_s"]
    fits = (sat["kv_capacity_tokens"] >= i_len + o_len) & (lam_max > 0)

    # The operating curve: n = u lam_max requests per iteration, the same steady state.
    col = (slice(None), None)
    dec = max(o_len - 1.0, 0.0)
    n = lam_max[col] * CURVE[None, :]
    decode = n * dec
    t = iteration_breakdown(
        margs,
        g,
        prefill_tokens=n * i_len,
        decode_seqs=decode,
        context_tokens=decode * (i_len + o_len / 2.0),
        prefill_context=n * (i_len * (i_len + 1.0) / 2.0),
        prefill_seqs=n,
        tp=kernel["tp"][col],
        precision=kernel["precision"][col],
        kv_precision=kernel["kv_precision"][col],
        ep=kernel["ep"][col],
        dp_attention=kernel["dp_attention"][col],
        **net,
    )["iteration_time_s"]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(n > 0, n / t, 0.0)  # requests/s per replica
        x_share = np.where(x[:, -1:] > 0, x / x[:, -1:], 1.0)
    mbt = cols["max_batched_tokens"].astype(np.float64)[col]
    r = np.maximum(1.0, i_len / mbt)  # iterations in prefill, as the kernel counts them
    # The iteration that carries a chunk of the prompt: the curve's decodes, the chunk (the
    # room the decodes leave, at most the prompt; each of ceil(I / room) chunks takes an equal
    # share of the prompt's causal pairs) and the other prompts' mean prefill in what is left.
    room = np.maximum(mbt - decode, 1.0)
    chunk = np.minimum(i_len, room)
    chunks = np.ceil(i_len / room)
    pairs = i_len * (i_len + 1.0) / 2.0
    other = np.minimum(n * i_len, room - chunk)
    t_prefill = iteration_breakdown(
        margs,
        g,
        prefill_tokens=chunk + other,
        decode_seqs=decode,
        context_tokens=decode * (i_len + o_len / 2.0),
        prefill_context=pairs / chunks + other / i_len * pairs,
        prefill_seqs=1.0 + other / i_len,
        tp=kernel["tp"][col],
        precision=kernel["precision"][col],
        kv_precision=kernel["kv_precision"][col],
        ep=kernel["ep"][col],
        dp_attention=kernel["dp_attention"][col],
        **net,
    )["iteration_time_s"]
    q = percentile / 100.0
    ttft = _ttft_s(
        u=x_share,
        n=n,
        t=t,
        t_prefill=t_prefill,
        seats=sat["running_seqs"][col],
        hold_iterations=dec + r,
        room=room,
        prompt=i_len,
        q=q,
    )
    tpot_slo = (
        1.0 / tokens_per_s_per_user
        if tokens_per_s_per_user is not None
        else (np.inf if tpot_s is None else float(tpot_s))
    )
    ttft_slo = np.inf if ttft_s is None else float(ttft_s)
    ok = (t <= tpot_slo) & (ttft <= ttft_slo) & fits[col]
    x_slo = np.max(np.where(ok, x, 0.0), axis=1)
    meets = x_slo > 0

    out_tok_s = sat["output_tokens_per_s"]
    df = pd.DataFrame(
        {
            "tp": cols["tp"],
            "dp_attention": cols["dp_attention"],
            "ep": cols["ep"],
            "precision": cols["precision"],
            "kv_cache_dtype": cols["kv_cache_dtype"],
            "max_num_seqs": cols["max_num_seqs"],
            "max_batched_tokens": cols["max_batched_tokens"],
            "gpus_per_replica": gpus_per_replica,
            "fits": fits,
            "kv_capacity_tokens": sat["kv_capacity_tokens"],
            "binding": BINDING[sat["binding"]],
            "concurrency": sat["running_seqs"],
            "output_tokens_per_s_per_gpu": out_tok_s / gpus_per_replica,
            "saturated_tpot_s": t_max,
            "saturated_tokens_per_s_per_user": 1.0 / t_max,
            "requests_per_s_per_replica": lam_max / t_max,
            "slo_requests_per_s_per_replica": x_slo,
            "slo_output_tokens_per_s_per_gpu": x_slo * o_len / gpus_per_replica,
            "meets_slo": meets,
        }
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        if load_rps is not None:
            load = float(load_rps)
            replicas = np.where(meets, np.ceil(load / np.where(meets, x_slo, 1.0)), np.nan)
            gpus = replicas * gpus_per_replica
            x_at = np.where(meets, load / replicas, np.nan)
            df["replicas"] = pd.array(replicas, dtype="Int64")
            df["gpus"] = pd.array(gpus, dtype="Int64")
            df["utilisation"] = x_at / (lam_max / t_max)
            gpu_h = gpus / (3600.0 * load * o_len) * 1e6
        else:
            x_at = np.where(meets, x_slo, np.nan)
            gpu_h = np.where(meets, gpus_per_replica / (3600.0 * x_slo * o_len) * 1e6, np.nan)
        x_q = np.nan_to_num(x_at, nan=0.0)
        df["tpot_s"] = np.where(meets, _rowwise_interp(x_q, x, t), np.nan)
        df["tokens_per_s_per_user"] = 1.0 / df["tpot_s"].to_numpy()
        df["ttft_s"] = np.where(meets, _rowwise_interp(x_q, x, ttft), np.nan)
    df["gpu_hours_per_million_tokens"] = gpu_h
    if usd_per_gpu_hour is not None:
        df["usd_per_million_tokens"] = gpu_h * float(usd_per_gpu_hour)
    df["pareto"] = _pareto_mask(df["output_tokens_per_s_per_gpu"].to_numpy(), 1.0 / t_max, fits)
    lightest = (fits[col] & np.isfinite(ttft))[:, 0]
    attrs: dict[str, Any] = {
        "model": m_spec.name,
        "gpu": g_spec.name,
        "prompt": int(prompt),
        "output": int(output),
        "ttft_s": ttft_s,
        "tpot_s": None if not np.isfinite(tpot_slo) else tpot_slo,
        "percentile": float(percentile),
        "load_rps": load_rps,
        "usd_per_gpu_hour": usd_per_gpu_hour,
        "allreduce": allreduce,
        "layouts": len(df),
        "best_ttft_s": float(ttft[lightest, 0].min()) if lightest.any() else None,
        "best_tpot_s": float(t[fits, 0].min()) if fits.any() else None,
    }
    if not include_infeasible:
        df = df[df["fits"]]
        if df.empty:
            raise ScenarioError(
                f"no layout of {m_spec.name} fits on {g_spec.name} with tp in {tps}: the "
                "weights and one request's KV cache need more memory; allow a wider tp"
            )
    df = df.sort_values(
        ["meets_slo", "gpu_hours_per_million_tokens", "tpot_s", "output_tokens_per_s_per_gpu"],
        ascending=[False, True, True, False],
        na_position="last",
        kind="stable",
    ).reset_index(drop=True)
    attrs["cheapest"] = df.iloc[0].to_dict() if len(df) and bool(df["meets_slo"].iloc[0]) else None
    df.attrs.update(attrs)
    return df


def plot_serving(df: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Saturated output tokens per second per GPU against tokens per second per user, every
    fitting layout grey, the Pareto front in colour and the cheapest SLO-meeting layout marked;
    written to `path` when one is given."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    fitting = df[df["fits"]]
    ax.scatter(
        fitting["saturated_tokens_per_s_per_user"],
        fitting["output_tokens_per_s_per_gpu"],
        s=6,
        color="#bdbdbd",
        label="layouts",
    )
    front = pareto_front(df)
    ax.plot(
        front["saturated_tokens_per_s_per_user"],
        front["output_tokens_per_s_per_gpu"],
        "o-",
        color="#1565c0",
        ms=4,
        label="Pareto front",
    )
    best = df.attrs.get("cheapest")
    if best is not None:
        ax.scatter(
            [best["saturated_tokens_per_s_per_user"]],
            [best["output_tokens_per_s_per_gpu"]],
            marker="*",
            s=120,
            color="#c62828",
            label="cheapest meeting the SLO",
            zorder=3,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("output tokens/s per user (1 / TPOT)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.set_title(
        f"{df.attrs.get('model', '')} on {df.attrs.get('gpu', '')}: prompt "
        f"{df.attrs.get('prompt', '?')}, output {df.attrs.get('output', '?')} tokens"
    )
    ax.legend(fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
