"""Throughput benchmarks of aifactory_sim: the estimate kernels and the simulation engine.

    python benchmarks/run.py            # full workloads (about a minute)
    python benchmarks/run.py --quick    # smaller workloads (a few seconds)
    python benchmarks/run.py --json out/bench.json

Each benchmark runs in a fresh child process, so that its peak resident memory is its own and
a failing one (the engine not installed yet, say) leaves the others' rows intact. numpy is
limited to one thread: OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS and
VECLIB_MAXIMUM_THREADS are set to 1 before numpy is imported, in this process and in every
child. The `estimate` benchmarks also pin their process to one CPU where the OS allows it.
Benchmarks are not part of the test run.
"""

from __future__ import annotations

import os

# Before numpy is imported anywhere: one thread, so that "configs/s" means "on one core".
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
for _var in THREAD_VARS:
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

GOAL_CONFIGS_PER_S = 1e6
CHILD_TIMEOUT_S = 300
SIM_DAYS = 54


# --------------------------------------------------------------------------------------------
# Measurement helpers (run in the child)
# --------------------------------------------------------------------------------------------


def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _pin_one_cpu() -> str:
    """Pin this process to one CPU if the OS supports it; say which."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall seconds of `repeats` calls of fn, and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _fmt_rate(x: float) -> str:
    return f"{x:.3g}" if x < 1e4 else f"{x:.2e}"


# --------------------------------------------------------------------------------------------
# Benchmarks (each returns a row dict; run in the child)
# --------------------------------------------------------------------------------------------


def _configs(n: int, *, string_modes: bool) -> dict[str, Any]:
    """n seeded random parallel layouts of llama3-70b: tp, pp, dp, microbatch, recompute."""
    import numpy as np

    rng = np.random.default_rng(0)
    modes = np.array(["none", "selective", "full", "auto"]) if string_modes else np.array([0, 1, 2])
    return {
        "tp": rng.choice([1, 2, 4, 8], n),
        "pp": rng.choice([1, 2, 4, 5, 8, 10, 16, 20], n),
        "dp": rng.choice([1, 2, 4, 8, 16, 32, 64, 128], n),
        "microbatch_seqs": rng.choice([1, 2, 4, 8], n),
        "recompute": rng.choice(modes, n),
    }


def bench_estimate(quick: bool, *, string_modes: bool) -> dict[str, Any]:
    import aifactory_sim as af

    pinned = _pin_one_cpu()
    n = 100_000 if quick else 1_000_000
    cfg = _configs(n, string_modes=string_modes)
    fixed = dict(seq_len=8192, global_batch_seqs=1024)
    # Warm-up: catalog files, pydantic models, numpy's first-call paths.
    small = {k: v[:1000] for k, v in cfg.items()}
    af.estimate_training("llama3-70b", "H100-SXM", **small, **fixed)
    base = _peak_rss_mib()
    wall, est = _timed(
        lambda: af.estimate_training("llama3-70b", "H100-SXM", **cfg, **fixed),
        repeats=1 if quick else 3,
    )
    assert len(est.step_time_s) == n
    rate = n / wall
    modes = "none/selective/full/auto as strings" if string_modes else "codes 0/1/2"
    verdict = "meets" if rate >= GOAL_CONFIGS_PER_S else "BELOW"
    return {
        "benchmark": "estimate_training" + ("[auto]" if string_modes else ""),
        "workload": f"{n:,} configs, llama3-70b on H100-SXM, recompute {modes}, one call",
        "wall_s": wall,
        "rate": f"{_fmt_rate(rate)} configs/s ({verdict} goal {GOAL_CONFIGS_PER_S:.0e})",
        "rate_value": rate,
        "rate_unit": "configs/s",
        "peak_mib": _peak_rss_mib(),
        "base_mib": base,
        "note": f"median of {1 if quick else 3}; {pinned}; {int(est.fits.sum()):,} fit in HBM",
    }


def bench_plan(quick: bool) -> dict[str, Any]:
    import aifactory_sim as af

    kw = dict(seq_len=8192, global_batch_seqs=2048, include_infeasible=True)
    af.plan_training("llama3-8b", "H100-SXM", 64, **kw)  # warm-up
    base = _peak_rss_mib()
    wall, df = _timed(
        lambda: af.plan_training("llama3-405b", "H100-SXM", 16384, **kw), repeats=1 if quick else 3
    )
    best = df[df["fits"]].iloc[0]
    layout = (
        f"tp{best.tp} pp{best.pp} dp{best.dp} cp{best.cp} mb{best.microbatch_seqs} "
        f"v{best.interleave} {best.recompute}"
    )
    return {
        "benchmark": "plan_training",
        "workload": (
            f"llama3-405b on 16,384 H100-SXM, seq 8192, 2048 seqs: {len(df):,} rows "
            f"evaluated, {int(df['fits'].sum()):,} fit"
        ),
        "wall_s": wall,
        "rate": f"{_fmt_rate(len(df) / wall)} rows/s",
        "rate_value": len(df) / wall,
        "rate_unit": "rows/s",
        "peak_mib": _peak_rss_mib(),
        "base_mib": base,
        "note": f"median of {1 if quick else 3}; fastest: {layout}, MFU {best.mfu:.3f}",
    }


#: The serving planner's goal (issue 15): 10^5 layouts in under 2 s on one core.
GOAL_PLAN_SERVING_S = 2.0


def bench_plan_serving(quick: bool) -> dict[str, Any]:
    import aifactory_sim as af

    pinned = _pin_one_cpu()
    kw: dict[str, Any] = dict(
        prompt=2000,
        output=300,
        ttft_s=1.0,
        tpot_s=0.05,
        load_rps=20.0,
        usd_per_gpu_hour=2.5,
        include_infeasible=True,
        tp_options=(1, 2, 4, 8),
        precision_options=("bf16", "fp8", "int4"),
        kv_cache_dtype_options=("bf16", "fp8"),
        max_num_seqs_options=tuple(range(8, 1025, 8)),
        max_batched_tokens_options=tuple(range(1024, 40961, 1024)),
    )
    af.plan_serving("llama3-8b", "H100-SXM", prompt=100, output=10)  # warm-up
    base = _peak_rss_mib()
    wall, df = _timed(
        lambda: af.plan_serving("llama3-70b", "H100-SXM", **kw), repeats=1 if quick else 3
    )
    best = df.iloc[0]
    rate = len(df) / wall
    verdict = "meets" if len(df) >= 1e5 and wall < GOAL_PLAN_SERVING_S else "BELOW"
    return {
        "benchmark": "plan-serving",
        "workload": (
            f"llama3-70b on H100-SXM, prompt 2000, output 300, 20 req/s, TTFT 1 s, TPOT 50 ms: "
            f"{len(df):,} layouts, {int(df['fits'].sum()):,} fit, one call"
        ),
        "wall_s": wall,
        "rate": f"{_fmt_rate(rate)} layouts/s ({verdict} goal 1e5 in {GOAL_PLAN_SERVING_S:g} s)",
        "rate_value": rate,
        "rate_unit": "layouts/s",
        "peak_mib": _peak_rss_mib(),
        "base_mib": base,
        "note": (
            f"median of {1 if quick else 3}; {pinned}; cheapest: tp{best.tp} {best.precision} "
            f"kv-{best.kv_cache_dtype} seqs {best.max_num_seqs} tokens "
            f"{best.max_batched_tokens}, {best.gpus} GPUs"
        ),
    }


def scenario_405b(days: float, fidelity: str = "fast") -> dict[str, Any]:
    """2,048 nodes of 8x H100-SXM, one llama3-405b job with more tokens than `days` can train."""
    return {
        "name": f"bench-405b-16k-{days:g}d-{fidelity}",
        "seed": 0,
        "duration": f"{days:g}d",
        "fidelity": fidelity,
        "cluster": {
            "node_pools": [
                {
                    "name": "h100",
                    "nodes": 2048,
                    "gpu": "H100-SXM",
                    "gpus_per_node": 8,
                    "nic_gbit_s": 400,
                }
            ],
            "fabric": {"kind": "fat-tree", "nodes_per_leaf": 16, "oversubscription": 1.0},
        },
        "training": [
            {
                "name": "pretrain-405b",
                "model": "llama3-405b",
                "tokens": 15e12,
                "seq_len": 8192,
                "global_batch_tokens": "16M",
                "parallel": {"tp": 8, "pp": 16, "dp": 128},
                "recompute": "auto",
            }
        ],
    }


def bench_sim(quick: bool, fidelity: str) -> dict[str, Any]:
    name = f"sim[{fidelity}]"
    days = 7 if quick and fidelity == "step" else SIM_DAYS
    try:
        import aifactory_sim as af
        from aifactory_sim import runner  # noqa: F401  (imports outside the timed run)
        from aifactory_sim.engine import factory  # noqa: F401  (the engine, being written)
    except ImportError as exc:
        return {
            "benchmark": name,
            "workload": "16,384 GPUs, llama3-405b, 54 d",
            "error": f"skipped: the engine cannot be imported yet ({exc})",
        }
    base = _peak_rss_mib()
    t0 = time.perf_counter()
    res = af.run(scenario_405b(days, fidelity))
    wall = time.perf_counter() - t0
    events = res.meta.get("events")
    job = res.summary.get("training", {}).get("pretrain-405b", {})
    steps = job.get("steps_done")
    rates = [f"{_fmt_rate(days / wall)} sim-days/s"]
    if isinstance(events, int | float) and events > 0:
        rates.append(f"{_fmt_rate(events / wall)} events/s")
    if isinstance(steps, int | float) and steps > 0:
        rates.append(f"{_fmt_rate(steps / wall)} steps/s")
    ledger = res.summary.get("ledger_gpu_h", {})
    train_share = ledger.get("training", 0.0) / max(sum(ledger.values()), 1e-300)
    return {
        "benchmark": name,
        "workload": (
            f"2,048 nodes x 8 H100-SXM, llama3-405b TP8 PP16 DP128, {days} d, "
            f"{events if events is not None else '?'} events, "
            f"{steps if steps is not None else '?'} steps"
        ),
        "wall_s": wall,
        "rate": ", ".join(rates),
        "rate_value": days / wall,
        "rate_unit": "sim-days/s",
        "events": events,
        "steps": steps,
        "engine_wall_s": res.meta.get("wall_s"),
        "peak_mib": _peak_rss_mib(),
        "base_mib": base,
        "note": (
            f"training share of the ledger {train_share:.3f}; step time "
            f"{job.get('step_time_s') or float('nan'):.2f} s, MFU "
            f"{job.get('mfu') or float('nan'):.3f}; meta events count SimPy events "
            "processed"
        ),
    }


def scenario_year_100k(jobs: int = 200) -> dict[str, Any]:
    """A year of a 100,000-GPU H100 cluster (12,500 nodes, 100 spares) with `jobs` training jobs
    of 8B to 405B on 8 to 2,048 nodes, submitted over the year, failures at RSC-1's rate."""
    import numpy as np

    rng = np.random.default_rng(2026)
    shapes = [  # model, tp, pp, nodes per data-parallel replica
        ("llama3-8b", 1, 1, 1), ("llama3-70b", 8, 4, 4), ("llama3-405b", 8, 16, 16),
    ]
    specs = []
    for i in range(jobs):
        model, tp, pp, replica_nodes = shapes[int(rng.choice(3, p=[0.5, 0.35, 0.15]))]
        nodes = int(replica_nodes * 2 ** rng.integers(1, 8 if replica_nodes < 16 else 7))
        dp = nodes * 8 // (tp * pp)
        specs.append({
            "name": f"job{i:03d}", "model": model, "priority": int(rng.integers(0, 5)),
            "submit_at": float(rng.uniform(0, 300 * 86400)),
            "tokens": float(rng.uniform(2e10, 2e11) * nodes / 16), "seq_len": 8192,
            "global_batch_seqs": dp * 16, "parallel": {"tp": tp, "pp": pp, "dp": dp},
            "recompute": "full", "checkpoint": {"interval": "young-daly", "mode": "sync"},
            "data": {"source": "storage", "bytes_per_token": 4},
        })
    return {
        "name": "bench-year-100k", "seed": 0, "duration": "365d",
        "cluster": {
            "node_pools": [{"name": "h100", "nodes": 12500, "gpu": "H100-SXM",
                            "nic_gbit_s": 400}],
            "fabric": {"nodes_per_leaf": 32, "oversubscription": 2.0},
            "storage": {"read_gb_s": 10000, "write_gb_s": 5000},
            "spare_nodes": 100,
        },
        "failures": {"node_failures_per_1000_node_days": 6.5,
                     "repair_h": {"kind": "lognormal", "median": 6, "sigma": 1.0}},
        "scheduler": {"policy": "priority-backfill"},
        "training": specs,
    }


def bench_scenario(name: str, workload: str, scenario: Any, goal: str) -> dict[str, Any]:
    import aifactory_sim as af

    base = _peak_rss_mib()
    t0 = time.perf_counter()
    res = af.run(scenario)
    wall = time.perf_counter() - t0
    s = res.summary
    events = res.meta["events"]
    ckpts = sum(j["checkpoints"] for j in s["training"].values())
    days = s["duration_s"] / 86400
    return {
        "benchmark": name,
        "workload": f"{workload}: {s['failures']['count']} failures, {ckpts} checkpoints, "
                    f"{events} events",
        "wall_s": wall,
        "rate": f"{_fmt_rate(days / wall)} sim-days/s, {_fmt_rate(events / wall)} events/s",
        "rate_value": days / wall,
        "rate_unit": "sim-days/s",
        "events": events,
        "engine_wall_s": res.meta["wall_s"],
        "peak_mib": _peak_rss_mib(),
        "base_mib": base,
        "note": goal,
    }


def bench_failures(quick: bool) -> dict[str, Any]:
    from aifactory_sim.cli import bundled_scenario

    return bench_scenario(
        "sim-failures", "llama3-405b-54d.yaml (16,384 GPUs + spares, 54 d)",
        bundled_scenario("llama3-405b-54d.yaml"), "goal: under 2 s wall on one core",
    )


def bench_year(quick: bool) -> dict[str, Any]:
    jobs = 50 if quick else 200
    return bench_scenario(
        "sim-year-100k", f"100,000 GPUs, 365 d, {jobs} jobs",
        scenario_year_100k(jobs), "recorded, no goal",
    )


def bench_estate(quick: bool) -> dict[str, Any]:
    """hybrid-sovereign.yaml: three sites on one clock for a month (issue 18: under 60 s from
    the CLI); its chat service runs as fluid flows under the estate's `fidelity: auto`."""
    import aifactory_sim as af
    from aifactory_sim.cli import bundled_scenario

    scenario = af.load(bundled_scenario("hybrid-sovereign.yaml"), {"duration": "4d"} if quick else None)
    base = _peak_rss_mib()
    t0 = time.perf_counter()
    res = af.run(scenario)
    wall = time.perf_counter() - t0
    s = res.summary
    days = s["duration_s"] / 86400
    events = res.meta["events"]
    return {
        "benchmark": "estate-month",
        "workload": f"hybrid-sovereign.yaml: {len(s['estate']['sites'])} sites, {days:g} d, "
                    f"{events} events",
        "wall_s": wall,
        "rate": f"{_fmt_rate(days / wall)} sim-days/s, {_fmt_rate(events / wall)} events/s",
        "rate_value": days / wall,
        "rate_unit": "sim-days/s",
        "events": events,
        "engine_wall_s": res.meta["wall_s"],
        "peak_mib": _peak_rss_mib(),
        "base_mib": base,
        "note": "goal: the month under 60 s (CLI, with its report)",
    }


#: Issue 15's goals: at least 10^5 requests/s in the fast tier on the serve-fast row, and fast at
#: least 5x step on the busy rows (the lead is bounded by the iterations between two batch
#: changes, so the busy rows sit near 3x: see the note on SERVE_RATES_RPS).
GOAL_SERVE_REQ_S = 100_000
SERVE_REQUESTS = 1_000_000
SERVE_REPLICAS = 32
#: Offered load: 5 requests/s per replica (about 7 requests in flight on each: a
#: latency-first tier), and a busier one at 10/s (about 18 in flight). The fast tier skips the
#: decode iterations between two batch changes, so its lead over `step` is the number of
#: iterations between them, which shrinks as the load per replica grows (40,000-request runs
#: on one core: 15x at 2 requests/s per replica, 7x at 5, 2.6x at 10, 1.1x at 20).
SERVE_RATES_RPS = {"": 160.0, "-busy": 320.0}


def scenario_serve(requests: int, fidelity: str, rate_rps: float) -> dict[str, Any]:
    """`requests` Poisson requests (expected) to 32 fixed Llama 3 8B FP8 replicas on H100s:
    chat-like lengths (lognormal prompts of median 1,000 tokens, geometric outputs of mean
    300), vLLM's default batching limits, least-outstanding routing."""
    return {
        "name": f"bench-serve-{fidelity}", "seed": 0, "fidelity": fidelity,
        "duration": requests / rate_rps,
        "cluster": {
            "node_pools": [{"name": "h100", "nodes": SERVE_REPLICAS // 8, "gpu": "H100-SXM",
                            "nic_gbit_s": 400}],
            "storage": {"read_gb_s": 200, "write_gb_s": 100},
        },
        "inference": [{
            "name": "chat", "model": "llama3-8b", "precision": "fp8", "tp": 1,
            "replicas": SERVE_REPLICAS, "cold_start": {"container_s": 0, "weights_s": 0},
            "traffic": {"kind": "poisson", "rate_rps": rate_rps},
            "prompt_tokens": {"kind": "lognormal", "median": 1000, "sigma": 0.8,
                              "max": 8192},
            "output_tokens": {"kind": "geometric", "mean": 300, "max": 2048},
        }],
    }


def bench_serve(quick: bool, fidelity: str, load: str = "") -> dict[str, Any]:
    import aifactory_sim as af
    import aifactory_sim.engine.factory  # imports outside the timed run
    import aifactory_sim.results
    import aifactory_sim.runner

    requests = SERVE_REQUESTS // (10 if quick else 1)
    if fidelity == "step":
        requests //= 4  # the reference tier: a quarter of the requests, same rates
    base = _peak_rss_mib()
    rate_rps = SERVE_RATES_RPS[load]
    sc = af.load(scenario_serve(requests, fidelity, rate_rps))
    t0 = time.perf_counter()
    res = af.run(sc)
    wall = time.perf_counter() - t0
    v = res.summary["inference"]["chat"]
    rate = v["requests"] / wall
    return {
        "benchmark": f"serve-{fidelity}{load}",
        "workload": f"{v['requests']:,} Poisson requests, {SERVE_REPLICAS} llama3-8b FP8 "
                    f"replicas (H100), {rate_rps:g} req/s, "
                    f"{res.summary['duration_s'] / 3600:.2f} h simulated",
        "wall_s": wall,
        "rate": f"{_fmt_rate(rate)} requests/s",
        "rate_value": rate,
        "rate_unit": "requests/s",
        "events": res.meta["events"],
        "engine_wall_s": res.meta["wall_s"],
        "peak_mib": _peak_rss_mib(),
        "base_mib": base,
        "note": (f"goal >= {GOAL_SERVE_REQ_S:,} requests/s (fast) and fast >= 5x step; "
                 f"{v['in_system_mean'] / SERVE_REPLICAS:.0f} requests in flight per replica; "
                 f"TTFT p50 {v['ttft_s']['p50'] * 1e3:.0f} ms, TPOT p50 "
                 f"{v['tpot_s']['p50'] * 1e3:.1f} ms, {v['output_tokens_per_s']:,.0f} "
                 "output tokens/s"),
    }


GOAL_FLUID_WEEK_S = 10.0


def bench_fluid_week(quick: bool) -> dict[str, Any]:
    """shared/examples/factory.yaml's chat service alone on its 2,080-node H100 cluster (the
    training job left out, failures kept): a week of a diurnal 600-request/s Llama 3 70B FP8
    TP4 service under HPA, in the fluid tier."""
    import yaml

    import aifactory_sim as af
    import aifactory_sim.engine.factory  # imports outside the timed run
    import aifactory_sim.results
    import aifactory_sim.runner
    from aifactory_sim.cli import bundled_scenario

    path = bundled_scenario("factory.yaml")
    if not path.exists():  # before the example is bundled: the shared copy
        path = Path(__file__).resolve().parents[2] / "shared" / "examples" / "factory.yaml"
    data = yaml.safe_load(path.read_text())
    data.pop("training", None)
    if quick:
        data["duration"] = "1d"
    sc = af.load(data)
    base = _peak_rss_mib()
    t0 = time.perf_counter()
    res = af.run(sc)
    wall = time.perf_counter() - t0
    v = res.summary["inference"]["chat"]
    days = res.summary["duration_s"] / 86400
    return {
        "benchmark": "serve-fluid-week",
        "workload": f"factory.yaml chat service alone: {days:g} d, {v['requests']:,} requests "
                    f"(600 req/s mean, diurnal), llama3-70b FP8 TP4, HPA 8-256 replicas, "
                    f"2,080 H100 nodes, failures",
        "wall_s": wall,
        "rate": f"{_fmt_rate(v['requests'] / wall)} requests/s, "
                f"{_fmt_rate(days / wall)} sim-days/s",
        "rate_value": v["requests"] / wall,
        "rate_unit": "requests/s",
        "events": res.meta["events"],
        "engine_wall_s": res.meta["wall_s"],
        "peak_mib": _peak_rss_mib(),
        "base_mib": base,
        "note": (f"goal: a week under {GOAL_FLUID_WEEK_S:g} s wall (fluid); replicas mean "
                 f"{v['replicas_mean']:.0f}, max {v['replicas_max']}; TTFT p50 "
                 f"{v['ttft_s']['p50'] * 1e3:.0f} ms, p99 {v['ttft_s']['p99']:.1f} s"),
    }


#: The sweep rows: 40 points (5 arrival rates x 8 replica counts) of the `serve` scenario with
#: 36,000 expected requests, about 0.6 s a run on one core, so that starting processes and
#: moving results is a small share of the work.
SWEEP_REQUESTS = 36_000
SWEEP_GRID = {"inference.0.traffic.rate_rps": [120.0, 140.0, 160.0, 180.0, 200.0],
              "inference.0.replicas": [18, 20, 22, 24, 26, 28, 30, 32]}


def bench_sweep(quick: bool, workers: int) -> dict[str, Any]:
    """`aifactory_sim.sweep` of SWEEP_GRID on a local process pool of `workers` processes;
    with --quick 8 points of 6,000 requests."""
    import aifactory_sim as af

    requests = SWEEP_REQUESTS // 6 if quick else SWEEP_REQUESTS
    grid = dict(SWEEP_GRID)
    if quick:
        grid = {k: v[:2] if k.endswith("rate_rps") else v[-4:] for k, v in grid.items()}
    scenario = af.load(scenario_serve(requests, "fast", 160.0))
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    base = _peak_rss_mib()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the workers, once they are reaped
    t0 = time.perf_counter()
    df = af.sweep(scenario, grid, workers=workers, progress=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    points = len(df)
    failed = int(df["error"].notna().sum())
    return {
        "benchmark": f"sweep-{workers}w",
        "workload": f"{points} points ({' x '.join(str(len(v)) for v in grid.values())} grid of "
                    f"rate_rps x replicas), serve scenario of {requests:,} requests each, "
                    f"{workers} worker process{'es' * (workers > 1)}",
        "wall_s": wall,
        "rate": f"{_fmt_rate(points / wall)} points/s",
        "rate_value": points / wall,
        "rate_unit": "points/s",
        "peak_mib": _peak_rss_mib(),
        "base_mib": base,
        "worker_cpu_s": cpu,
        "note": f"workers' CPU {cpu:.1f} s ({cpu / points:.2f} s a point, {cpu / wall:.2f} "
                f"CPUs busy on average); {failed} failed; load average {load_before:.2f} "
                f"before, {os.cpu_count()} CPUs",
    }


BENCHMARKS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "estimate": lambda q: bench_estimate(q, string_modes=False),
    "estimate-auto": lambda q: bench_estimate(q, string_modes=True),
    "plan": bench_plan,
    "plan-serving": bench_plan_serving,
    "sim-fast": lambda q: bench_sim(q, "fast"),
    "sim-step": lambda q: bench_sim(q, "step"),
    "sim-failures": bench_failures,
    "sim-year-100k": bench_year,
    "serve-fast": lambda q: bench_serve(q, "fast"),
    "serve-step": lambda q: bench_serve(q, "step"),
    "serve-fast-busy": lambda q: bench_serve(q, "fast", "-busy"),
    "serve-step-busy": lambda q: bench_serve(q, "step", "-busy"),
    "serve-fluid-week": bench_fluid_week,
    "estate-month": bench_estate,
    "sweep-1w": lambda q: bench_sweep(q, 1),
    "sweep-2w": lambda q: bench_sweep(q, 2),
}
GOAL_SWEEP_SPEEDUP = 1.7


def _speedup(rows: list[dict[str, Any]]) -> None:
    """Add the 2-worker sweep's speedup over the 1-worker one to its note, when both ran."""
    by = {r["benchmark"]: r for r in rows if "error" not in r}
    one, two = by.get("sweep-1w"), by.get("sweep-2w")
    if one and two:
        x = one["wall_s"] / two["wall_s"]
        two["speedup"] = x
        verdict = "meets" if x >= GOAL_SWEEP_SPEEDUP else "BELOW"
        cpu = two["worker_cpu_s"] / one["worker_cpu_s"]
        two["note"] += (f"; speedup {x:.2f}x over 1 worker ({verdict} goal "
                        f"{GOAL_SWEEP_SPEEDUP}x); CPU per point {cpu:.2f}x that of 1 worker")


# --------------------------------------------------------------------------------------------
# Parent: run each benchmark in a child process, print the table
# --------------------------------------------------------------------------------------------


def _run_child(key: str, quick: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", key] + (["--quick"] if quick else [])
    env = dict(os.environ, **{v: "1" for v in THREAD_VARS})
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"benchmark": key, "error": f"timed out after {CHILD_TIMEOUT_S} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"benchmark": key, "error": f"failed (exit {proc.returncode}): {tail}"}
    return json.loads(lines[-1])


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ("benchmark", "workload", "wall_s", "rate", "peak_MiB", "base_MiB")
    cells = []
    for r in rows:
        if "error" in r:
            cells.append((r["benchmark"], r.get("workload", ""), "-", r["error"], "-", "-"))
        else:
            cells.append(
                (
                    r["benchmark"],
                    r["workload"],
                    f"{r['wall_s']:.3f}",
                    r["rate"],
                    f"{r['peak_mib']:.0f}",
                    f"{r['base_mib']:.0f}",
                )
            )
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in cells]
    notes = [f"  {r['benchmark']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join([*out, "", "notes:", *notes] if notes else out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="aifactory_sim throughput benchmarks")
    ap.add_argument("--quick", action="store_true", help="smaller workloads (seconds)")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run these only")
    ap.add_argument("--child", choices=list(BENCHMARKS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(BENCHMARKS[args.child](args.quick)))
        return 0

    import numpy as np

    print("aifactory_sim benchmarks" + (" (--quick)" if args.quick else ""))
    print(
        f"goal: estimate_training >= {GOAL_CONFIGS_PER_S:.0e} configs/s in one vectorised "
        "call on one core"
    )
    print(
        f"numpy {np.__version__} limited to one thread ({'='.join(THREAD_VARS)}=1, set "
        f"before numpy is imported); Python {platform.python_version()} on "
        f"{platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(
        "peak_MiB: the child process's peak RSS; base_MiB: its RSS after imports and "
        "warm-up, before the timed work\n"
    )
    t0 = time.perf_counter()
    rows = [_run_child(key, args.quick) for key in (args.only or BENCHMARKS)]
    _speedup(rows)
    print(_table(rows))
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "quick": args.quick,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "threads": {v: os.environ[v] for v in THREAD_VARS},
        }
        path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
