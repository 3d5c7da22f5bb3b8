"""Rewrite the generated sections of docs/background/serving.md.

    python docs/gen_serving.py          # rewrite the sections in place
    python docs/gen_serving.py --check  # exit 1 if the file is out of date

Each section sits between a pair of HTML-comment markers in the Markdown file:
- `constants`: the inference constants of aifactory_sim/catalog/calibration.yaml, per family.
- `calibration`: the closed form against the TensorRT-LLM 1.0 perf overview's Hopper rows, the
  groups the constants were fitted on and those held out (aifactory_sim/validation/trtllm.py).
- `nvls`: the same page's tensor-parallel groups with the ring all-reduce and with `auto`
  (NVLS where faster).
- `example`: one replica of Llama 3 70B, FP8, TP4 on H100-SXM: memory, KV capacity and the
  phases of a few iterations, from kernels/inference.py.
- `tensorrt`: the five TensorRT-LLM rows (Llama 3.1 8B FP8, one H100) run through the engine as
  an `offline` service of 3,000 requests, and the kernel's closed form for comparison.
- `erlang`: the mean queue wait of an M/M/4 service against Erlang's C formula at three loads,
  over seeded replications.
- `tiers`: the largest per-request difference between the `fast` and `step` tiers on three
  workloads that exercise autoscaling, preemption and routing.

The workloads are rebuilt here in the same way as tests/test_serving.py builds them (nothing is
imported from tests/); every run is seeded, so the page is reproducible. About 40 s in all.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
from _generated import replace_block, run

import aifactory_sim as af
from aifactory_sim import catalog
from aifactory_sim.engine.factory import Factory
from aifactory_sim.estimate import as_gpu, as_model
from aifactory_sim.kernels.inference import (
    DEVICE_BYTES_PER_GB,
    activation_reserve_bytes,
    gpu_inference_args,
    iteration_breakdown,
    kv_bytes_per_token,
    kv_capacity_tokens,
    offline_throughput_tokens_s,
    weight_bytes,
)
from aifactory_sim.validation.trtllm import ROWS, no_evict_seqs

DOC = Path(__file__).parent / "background" / "serving.md"

#: The cluster every validation workload runs on: four 8-GPU H100 nodes, storage and NVMe.
CLUSTER = {
    "node_pools": [{"name": "h100", "nodes": 4, "gpu": "H100-SXM", "gpus_per_node": 8,
                    "nic_gbit_s": 400,
                    "nvme": {"capacity_tb": 30, "read_gb_s": 25, "write_gb_s": 12}}],
    "fabric": {"nodes_per_leaf": 16},
    "storage": {"read_gb_s": 100, "write_gb_s": 50},
}
#: Replicas that are ready at once: the validations measure serving, not start-up.
INSTANT = {"container_s": 0, "weights_s": 0}

#: TensorRT-LLM perf overview, Llama 3.1 8B FP8 on one H100-SXM (shared/reference/README.md):
#: (ISL, OSL, published output tokens/s, max_batch_size, max_num_tokens), the batch limits as
#: trtllm-bench picks them by default (tools/calibrate_inference.py).
TRT_ROWS = ROWS  # aifactory_sim.validation.trtllm: the published rows, one copy
TRT_REQUESTS = 3000

#: Erlang-C workloads: c one-seat replicas, loads rho, seeded replications of N requests each,
#: the first WARMUP of each dropped.
ERLANG_C = 4
ERLANG_RHOS = (0.5, 0.7, 0.85)
ERLANG_REPS = 12
ERLANG_REQUESTS = 30_000
ERLANG_WARMUP = 2_000
MEAN_OUT = 100.0

#: The three workloads on which the tiers are compared (overrides of `service`'s defaults).
TIERS = {
    "kv-bound-hpa": dict(
        duration="40min", gpu_memory_utilization=0.35, replicas=None,
        traffic={"kind": "diurnal", "mean_rps": 30, "peak_to_trough": 3, "period": "40min"},
        cold_start={"container_s": 15},
        autoscaler={"kind": "hpa", "target": 48, "min_replicas": 1, "max_replicas": 8}),
    "bursty-kpa": dict(
        traffic={"kind": "bursty", "base_rps": 3, "burst_rps": 40, "mean_burst": "1min",
                 "mean_gap": "3min"},
        router="round-robin", replicas=None, cold_start={"container_s": 10},
        batching={"max_num_seqs": 64, "max_batched_tokens": 8192, "chunked_prefill": False},
        autoscaler={"kind": "kpa", "target": 16, "min_replicas": 1, "max_replicas": 8}),
    "70b-tp4-random": dict(
        model="llama3-70b", precision="bf16", tp=4, replicas=3, router="random",
        traffic={"kind": "poisson", "rate_rps": 6},
        prompt_tokens={"kind": "uniform", "low": 20, "high": 400}),
}

#: The worked example: a chat replica of chat-diurnal.yaml.
EXAMPLE = dict(model="llama3-70b", gpu="H100-SXM", tp=4, precision="fp8", kv_precision="bf16",
               max_batched_tokens=8192, max_num_seqs=256, gpu_memory_utilization=0.9)


def scenario(duration: Any = "30min", seed: int = 1, **service: Any) -> dict[str, Any]:
    """One service on CLUSTER: llama3-8b FP8 on one GPU per replica, two replicas, Poisson at
    10 rps, lognormal prompts (median 800), geometric outputs (mean 200); `service` overrides."""
    svc: dict[str, Any] = {
        "name": "chat", "model": "llama3-8b", "precision": "fp8", "tp": 1, "replicas": 2,
        "cold_start": INSTANT, "traffic": {"kind": "poisson", "rate_rps": 10},
        "prompt_tokens": {"kind": "lognormal", "median": 800, "sigma": 0.8, "max": 8192},
        "output_tokens": {"kind": "geometric", "mean": 200, "max": 2048},
    }
    svc.update(service)
    return {"name": "serving-doc", "seed": seed, "duration": duration,
            "cluster": copy.deepcopy(CLUSTER), "inference": [svc]}


# --- constants and the worked example ---------------------------------------------------------

INFERENCE_CONSTANTS = ("prefill_gemm_efficiency", "decode_hbm_efficiency",
                       "roofline_overlap_loss", "layer_overhead_s", "allreduce_latency_s",
                       "iteration_overhead_s", "nvlink_efficiency", "nvlink_alpha_s")


def constants_table() -> str:
    fams = catalog.names("calibration")
    lines = ["| constant | " + " | ".join(fams) + " |", "|---|" + "---:|" * len(fams)]
    for c in INFERENCE_CONSTANTS:
        cells = [f"{catalog.entry('calibration', f)[c]:g}" for f in fams]
        lines.append(f"| `{c}` | " + " | ".join(cells) + " |")
    lines.append("")
    for f in fams:
        src = " ".join(str(catalog.entry("calibration", f)["inference_source"]).split())
        lines.append(f"- `{f}`: {src}")
    return "\n".join(lines)


def calibration_table() -> str:
    """Per group of the TensorRT-LLM 1.0 perf overview (aifactory_sim/validation/trtllm.py): the
    closed form's error on each ISL/OSL row, the fitted groups first."""
    from aifactory_sim.validation import trtllm

    order = list(trtllm.FIT) + [g for g in trtllm.groups() if g not in trtllm.FIT]
    head = " | ".join(f"{i}/{o}" for i, o in trtllm.LENGTHS)
    lines = [f"| role | model | GPU | TP | weights | {head} | max abs |",
             "|---|---|---|---:|---|" + "---:|" * len(trtllm.LENGTHS) + "---:|"]
    fp4_fit = ("llama3-70b", "B200", 1)  # tools/calibrate_inference.py --family blackwell
    runs = [(g, "fp8", g in trtllm.FIT) for g in order]
    runs += [(g, "fp4", g == fp4_fit) for g in sorted(trtllm.FP4_TABLE, key=lambda g: g != fp4_fit)]
    for g, precision, fitted in runs:
        sim, pub = trtllm.simulate(g, precision=precision)
        err = sim / pub - 1.0
        role = "fit" if fitted else "held out"
        cells = " | ".join(f"{e:+.1%}" for e in err)
        lines.append(f"| {role} | {g[0]} | {g[1]} | {g[2]} | {precision.upper()} | {cells} | "
                     f"{np.max(np.abs(err)):.1%} |")
    return "\n".join(lines)


def ampere_table() -> str:
    """The older page's static-batch A100 rows (validation.trtllm.AMPERE_STATIC) against the
    closed form: the Llama 2 7B rows fitted, the 70B rows held out."""
    from aifactory_sim.validation import trtllm

    sim, pub = trtllm.simulate_static(trtllm.AMPERE_STATIC)
    lines = ["| role | model | TP | batch | ISL / OSL | published tok/s/GPU | model | error |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for row, s_, p_ in zip(trtllm.AMPERE_STATIC, sim, pub, strict=True):
        model, _, tp, batch, isl, osl, _ = row
        role = "fit" if model == "llama2-7b" else "held out"
        lines.append(f"| {role} | {model} | {tp} | {batch} | {isl} / {osl} | {p_:,.0f} | "
                     f"{s_:,.0f} | {s_ / p_ - 1:+.1%} |")
    return "\n".join(lines)


def moe_table() -> str:
    """The page's MoE rows (all held out) against the closed form in two readings of its
    unstated `--ep`: experts sharded over the tensor-parallel GPUs (ep 1) and one expert group
    per GPU (ep = tp); tensor-parallel attention in both."""
    from aifactory_sim.validation import trtllm

    rows = trtllm.groups(moe=True)
    lines = ["| model | GPU | TP | ep | rows | median abs | range | max abs |",
             "|---|---|---:|---:|---:|---:|---|---:|"]
    for g in rows:
        for ep in (1, g[2]):
            sim, pub = trtllm.simulate_moe(g, ep)
            err = sim / pub - 1.0
            lines.append(f"| {g[0]} | {g[1]} | {g[2]} | {ep} | {len(err)} | "
                         f"{np.median(np.abs(err)):.1%} | {err.min():+.0%} to {err.max():+.0%} | "
                         f"{np.max(np.abs(err)):.1%} |")
    return "\n".join(lines)


def nvls_table() -> str:
    """The tensor-parallel groups of the calibration table (tp > 1) with each all-reduce
    algorithm: the closed form's median and largest error."""
    from aifactory_sim.validation import trtllm

    runs = [(g, "fp8") for g in trtllm.groups() if g[2] > 1]
    runs += [(g, "fp4") for g in sorted(trtllm.FP4_TABLE) if g[2] > 1]
    lines = ["| model | GPU | TP | weights | ring: median abs | ring: max abs | auto: median abs "
             "| auto: max abs |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for g, precision in runs:
        cells = []
        for algo in ("ring", "auto"):
            sim, pub = trtllm.simulate(g, precision=precision, allreduce=algo)
            err = np.abs(sim / pub - 1.0)
            cells += [f"{np.median(err):.1%}", f"{err.max():.1%}"]
        lines.append(f"| {g[0]} | {g[1]} | {g[2]} | {precision.upper()} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def example_section() -> str:
    e = EXAMPLE
    m = as_model(e["model"]).kernel_args()
    gpu = as_gpu(e["gpu"])
    g = gpu_inference_args(gpu.model_dump(), catalog.entry("calibration", gpu.family))
    t = e["tp"]
    w = float(weight_bytes(m, e["precision"]))
    kv_tok = float(kv_bytes_per_token(m, e["kv_precision"], t))
    reserve = float(activation_reserve_bytes(m, tp=t, max_batched_tokens=e["max_batched_tokens"],
                                             max_num_seqs=e["max_num_seqs"]))
    cap = float(kv_capacity_tokens(
        m, g["hbm_bytes"], tp=t, precision=e["precision"], kv_precision=e["kv_precision"],
        gpu_memory_utilization=e["gpu_memory_utilization"],
        max_batched_tokens=e["max_batched_tokens"], max_num_seqs=e["max_num_seqs"]))
    usable = g["hbm_bytes"] * e["gpu_memory_utilization"] * t
    lines = [
        f"{e['model']}, {e['precision'].upper()} weights, {e['kv_precision'].upper()} KV cache, "
        f"TP{t} on {e['gpu']} (`gpu_memory_utilization` {e['gpu_memory_utilization']}, "
        f"`max_batched_tokens` {e['max_batched_tokens']}, `max_num_seqs` {e['max_num_seqs']}):",
        "",
        "| quantity | value |",
        "|---|---:|",
        f"| HBM the engine may use, {t} GPUs | {usable / 1e9:.1f} GB |",
        f"| weights (`weight_bytes`) | {w / 1e9:.1f} GB |",
        f"| activation reserve, {t} GPUs (`activation_reserve_bytes` x {t}) "
        f"| {t * reserve / 1e9:.1f} GB |",
        f"| KV bytes per token (`kv_bytes_per_token`) | {kv_tok / 1e3:.1f} kB |",
        f"| KV capacity (`kv_capacity_tokens`) | {cap:,.0f} tokens "
        f"({cap / 16:,.0f} blocks) |",
        "",
    ]
    cases = [
        ("decode, 1 sequence at context 1,000", 0, 1, 1_000, 0),
        ("decode, 64 sequences at context 1,500 each", 0, 64, 64 * 1_500, 0),
        ("decode, 256 sequences at context 1,500 each", 0, 256, 256 * 1_500, 0),
        ("prefill chunk of 2,048 tokens (a whole prompt) + 64 decodes", 2048, 64, 64 * 1_500, 1),
        ("prefill chunk of 8,192 tokens (a whole prompt), alone", 8192, 0, 0, 1),
    ]
    phases = ("gemm_s", "lm_head_s", "attention_s", "elementwise_s", "tp_comm_s", "overhead_s")
    lines += [
        "| iteration | " + " | ".join(p.removesuffix("_s") for p in phases) + " | total |",
        "|---|" + "---:|" * (len(phases) + 1),
    ]
    for label, p, d, ctx, finishing in cases:
        bd = iteration_breakdown(m, g, prefill_tokens=p, decode_seqs=d, context_tokens=ctx,
                                 prefill_seqs=finishing, tp=t, precision=e["precision"],
                                 kv_precision=e["kv_precision"])
        cells = [f"{float(bd[k]) * 1e3:.2f}" for k in phases]
        lines.append(f"| {label} | " + " | ".join(cells)
                     + f" | **{float(bd['iteration_time_s']) * 1e3:.2f}** |")
    lines += ["", "Times in milliseconds."]
    return "\n".join(lines)


# --- TensorRT-LLM through the engine ---------------------------------------------------------


def closed_form_tokens_s() -> np.ndarray:
    """Each row's output tokens/s by the kernel's closed form, as tools/calibrate_inference.py
    evaluates it: FP8 weights and KV, trtllm-bench's limits, GUARANTEED_NO_EVICT admission."""
    m = as_model("llama3-8b").kernel_args()
    g = gpu_inference_args(catalog.entry("gpu", "H100-SXM"),
                           catalog.entry("calibration", "hopper"))
    isl, osl, _, seqs, tok = (np.array(c, dtype=np.float64) for c in zip(*TRT_ROWS, strict=True))
    return np.asarray(offline_throughput_tokens_s(
        m, g, prompt_tokens=isl, output_tokens=osl, max_num_seqs=seqs, max_batched_tokens=tok,
        precision="fp8", kv_precision="fp8", reserve_full_sequence=True))


def engine_seqs(isl: int, osl: int, bs: int, tokens: int) -> int:
    """max_num_seqs for the engine's run of a row: trtllm-bench's batch size capped where
    GUARANTEED_NO_EVICT stops admitting (validation.trtllm.no_evict_seqs), on the engine's own
    KV cache (vLLM's rule at gpu_memory_utilization 0.9)."""
    m = as_model("llama3-8b").kernel_args()
    hbm = catalog.entry("gpu", "H100-SXM")["hbm_gb"] * DEVICE_BYTES_PER_GB
    cap = float(kv_capacity_tokens(m, hbm, precision="fp8", kv_precision="fp8",
                                   max_batched_tokens=tokens, max_num_seqs=bs))
    return no_evict_seqs(cap, isl, osl, bs)


def tensorrt_table() -> tuple[str, float]:
    closed = closed_form_tokens_s()
    lines = [
        "| ISL / OSL | max_num_seqs | max_batched_tokens | published tok/s | engine tok/s "
        "| engine error | preemptions | closed form tok/s | closed-form error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    worst = 0.0
    for (isl, osl, published, bs, tokens), cf in zip(TRT_ROWS, closed, strict=True):
        seqs = engine_seqs(isl, osl, bs, tokens)
        res = af.run(scenario(
            duration="1d", replicas=1, kv_precision="fp8",
            batching={"max_num_seqs": seqs, "max_batched_tokens": tokens},
            traffic={"kind": "offline", "requests": TRT_REQUESTS}, prompt_tokens=isl,
            output_tokens=osl))
        req = res.requests
        if not req["finish_s"].notna().all():
            raise SystemExit(f"TensorRT-LLM row {isl}/{osl}: not every request finished")
        sim = float(req["output_tokens"].sum() / req["finish_s"].max())
        err = 100.0 * (sim / published - 1.0)
        cf_err = 100.0 * (float(cf) / published - 1.0)
        worst = max(worst, abs(err))
        pre = res.summary["inference"]["chat"]["preemptions"]
        lines.append(
            f"| {isl} / {osl} | {seqs} | {tokens} | {published:,} | {sim:,.0f} | {err:+.1f} % "
            f"| {pre:,} | {float(cf):,.0f} | {cf_err:+.1f} % |")
    lines += ["", f"Largest |engine error|: **{worst:.1f} %** (the tests allow 15 %)."]
    return "\n".join(lines), worst


# --- Erlang C -----------------------------------------------------------------------------------


def erlang_c_wait(c: int, lam: float, mean_service: float) -> float:
    """Mean wait in queue of M/M/c (Erlang's C formula; Kleinrock, Queueing Systems I, 3.41)."""
    a = lam * mean_service
    head = sum(a**k / math.factorial(k) for k in range(c))
    tail = a**c / math.factorial(c) * c / (c - a)
    return tail / (head + tail) / (c / mean_service - lam)


def mmc_scenario(rate: float, seed: int, requests: int) -> dict[str, Any]:
    """ERLANG_C replicas of one seat (max_num_seqs 1) behind the least-outstanding router's
    central queue; one-token prompts and geometric outputs of mean MEAN_OUT."""
    return scenario(
        duration=requests / rate, seed=seed, replicas=ERLANG_C,
        batching={"max_num_seqs": 1, "max_batched_tokens": 2048},
        traffic={"kind": "poisson", "rate_rps": rate}, prompt_tokens=1,
        output_tokens={"kind": "geometric", "mean": MEAN_OUT})


def mean_service_s() -> float:
    """E[S] from the replica's iteration table: a one-token prefill, then O - 1 decode
    iterations at batch 1 whose context grows from 1 token, O geometric with mean m:
    E[O - 1] = m - 1 and E[(O - 1)(O - 2)] = E[O^2] - 3 E[O] + 2, E[O^2] = (2 - p) / p^2."""
    table = Factory(af.load(mmc_scenario(1.0, 0, 10))).services[0].table
    m, p = MEAN_OUT, 1.0 / MEAN_OUT
    first_decode = table.decode_base[1] + table.per_context * 1.0
    e_o1o2 = (2.0 - p) / p**2 - 3.0 / p + 2.0
    return (table.time_s(1, 0, 0.0, 1.0, 1) + (m - 1.0) * first_decode
            + table.per_context * e_o1o2 / 2.0)


def erlang_table() -> tuple[str, float, float]:
    es = mean_service_s()
    lines = [
        "| rho | lambda (req/s) | Erlang-C mean wait (ms) | simulated mean wait (ms) "
        "| standard error (ms) | error |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    worst = 0.0
    for rho in ERLANG_RHOS:
        lam = rho * ERLANG_C / es
        waits = []
        for seed in range(ERLANG_REPS):
            req = af.run(mmc_scenario(lam, seed, ERLANG_REQUESTS)).requests.iloc[ERLANG_WARMUP:]
            waits.append(float(req["queue_wait_s"].dropna().mean()))
        w = np.asarray(waits)
        expected = erlang_c_wait(ERLANG_C, lam, es)
        err = 100.0 * (w.mean() / expected - 1.0)
        worst = max(worst, abs(err))
        se = w.std(ddof=1) / math.sqrt(w.size)
        lines.append(f"| {rho:.2f} | {lam:.2f} | {expected * 1e3:.1f} | {w.mean() * 1e3:.1f} "
                     f"| {se * 1e3:.1f} | {err:+.1f} % |")
    lines += [
        "",
        f"c = {ERLANG_C} one-seat replicas, E[S] = {es * 1e3:.1f} ms from the iteration table; "
        f"{ERLANG_REPS} seeded replications of {ERLANG_REQUESTS:,} requests per load, the first "
        f"{ERLANG_WARMUP:,} of each dropped as warm-up. Largest |error| **{worst:.1f} %** (the "
        "tests allow 5 %).",
    ]
    return "\n".join(lines), worst, es


# --- fast against step ------------------------------------------------------------------------


def _bound(x: float) -> str:
    """The smallest power of ten above x, as text ('0' for an exact match)."""
    if x == 0.0:
        return "0"
    return f"1e{math.floor(math.log10(x)) + 1}"


def tiers_line() -> str:
    parts = []
    for name, overrides in TIERS.items():
        runs = {f: af.run(scenario(fidelity=f, **overrides)) for f in ("fast", "step")}
        fast, step = runs["fast"].requests, runs["step"].requests
        if len(fast) != len(step):
            raise SystemExit(f"{name}: the tiers saw different requests")
        diff = max(float(np.nanmax(np.abs(fast[c].to_numpy() - step[c].to_numpy()), initial=0.0))
                   for c in ("admitted_s", "first_token_s", "finish_s"))
        same = bool((fast["preemptions"] == step["preemptions"]).all()
                    and (fast["replica"] == step["replica"]).all())
        if diff > 1e-9 or not same:
            raise SystemExit(f"{name}: fast and step differ by {diff:g} s")
        pre = int(fast["preemptions"].sum())
        parts.append(f"`{name}` ({len(fast):,} requests, {pre:,} preemptions, largest "
                     f"difference below {_bound(diff)} s)")
    return ("`fast` and `step` give every request the same admission, first-token and finish "
            "times to within 1e-9 s, and the same preemptions and replica, on the three "
            "workloads of `test_fast_and_step_give_the_same_timestamps`: "
            + "; ".join(parts) + ".")


def build(text: str) -> tuple[str, str]:
    trt, trt_worst = tensorrt_table()
    erl, erl_worst, _ = erlang_table()
    text = replace_block(DOC, text, "constants", constants_table())
    text = replace_block(DOC, text, "calibration", calibration_table())
    text = replace_block(DOC, text, "nvls", nvls_table())
    text = replace_block(DOC, text, "moe-holdout", moe_table())
    text = replace_block(DOC, text, "ampere", ampere_table())
    text = replace_block(DOC, text, "example", example_section())
    text = replace_block(DOC, text, "tensorrt", trt)
    text = replace_block(DOC, text, "erlang", erl)
    text = replace_block(DOC, text, "tiers", tiers_line())
    return text, (f"largest |error| against TensorRT-LLM {trt_worst:.1f} %, against "
                  f"Erlang C {erl_worst:.1f} %")


def main() -> int:
    return run(DOC, build, __doc__.splitlines()[0], "gen_serving.py")


if __name__ == "__main__":
    raise SystemExit(main())
