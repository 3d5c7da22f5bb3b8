"""The workloads on which the `fluid` serving tier is held to `fast` (issue 5's table).

Each workload runs in both tiers with the same scenario and seed; the error of a metric is
fluid / fast - 1, held within `TOLERANCE`. tests/test_fluid.py asserts it, tools/fluid_validation.py
prints the table, and docs/gen_fluid.py writes it into docs/background/serving.md; the goldens
of tools/make_golden.py run every workload in both tiers.

Public names: `CLUSTER`, `CHAT`, `HPA` (the parts the workloads share), `WORKLOADS`, `SEEDS`,
`METRICS`, `TOLERANCE`, `scenario`, `metrics`, `compare`; and, for the docs page's table,
`WALL_HEAD`, `WALL_LINE` and `comparable` (the table with its wall times blanked, which is what
`gen_fluid.py --check` compares).
"""

from __future__ import annotations

import copy
import re
import time
from typing import Any

import aifactory_sim as af

CLUSTER = {
    "node_pools": [
        {"name": "h100", "nodes": 8, "gpu": "H100-SXM", "gpus_per_node": 8, "nic_gbit_s": 400}
    ],
    "storage": {"read_gb_s": 200, "write_gb_s": 100},
}
CHAT = {
    "prompt_tokens": {"kind": "lognormal", "median": 1000, "sigma": 0.8, "max": 8192},
    "output_tokens": {"kind": "geometric", "mean": 300, "max": 2048},
}
HPA = {"kind": "hpa", "metric": "concurrency", "target": 24, "min_replicas": 2, "max_replicas": 24}

#: name -> (duration, service fields)
WORKLOADS: dict[str, tuple[str, dict[str, Any]]] = {
    "light-8b-fp8": ("1h", {**CHAT, "replicas": 4, "traffic": {"kind": "poisson", "rate_rps": 8}}),
    "heavy-8b-fp8": ("1h", {**CHAT, "replicas": 4, "traffic": {"kind": "poisson", "rate_rps": 60}}),
    "diurnal-hpa": (
        "4h",
        {
            **CHAT,
            "autoscaler": HPA,
            "cold_start": {"container_s": 60},
            "traffic": {
                "kind": "diurnal",
                "mean_rps": 40,
                "peak_to_trough": 3,
                "period": "2h",
                "phase": "1h",
            },
        },
    ),
    "diurnal-hpa-tight": (
        "4h",
        {
            **CHAT,
            "autoscaler": {**HPA, "target": 48},
            "cold_start": {"container_s": 60},
            "traffic": {
                "kind": "diurnal",
                "mean_rps": 40,
                "peak_to_trough": 3,
                "period": "2h",
                "phase": "1h",
            },
        },
    ),
    # factory.yaml's chat service at 1/16 of its scale: an HPA target above the replica's knee,
    # so that the service swings between too few replicas (saturated) and many (after a fill).
    "70b-hpa-above-knee": (
        "2h",
        {
            **CHAT,
            "model": "llama3-70b",
            "precision": "fp8",
            "tp": 4,
            "batching": {"max_num_seqs": 256, "max_batched_tokens": 8192, "chunked_prefill": True},
            "autoscaler": {**HPA, "target": 128, "max_replicas": 16},
            "cold_start": {"container_s": 60},
            "traffic": {
                "kind": "diurnal",
                "mean_rps": 37.5,
                "peak_to_trough": 3,
                "period": "2h",
                "phase": "1h",
            },
        },
    ),
    "bursty-fixed": (
        "2h",
        {
            **CHAT,
            "replicas": 6,
            "traffic": {
                "kind": "bursty",
                "base_rps": 10,
                "burst_rps": 80,
                "mean_burst": "2min",
                "mean_gap": "10min",
            },
        },
    ),
    "long-prompts": (
        "1h",
        {
            "replicas": 4,
            "traffic": {"kind": "poisson", "rate_rps": 6},
            "prompt_tokens": {"kind": "lognormal", "median": 6000, "sigma": 0.6, "max": 32000},
            "output_tokens": {"kind": "geometric", "mean": 150},
        },
    ),
    "short-prompts-long-outputs": (
        "1h",
        {
            "replicas": 4,
            "traffic": {"kind": "poisson", "rate_rps": 10},
            "prompt_tokens": {"kind": "uniform", "low": 50, "high": 200},
            "output_tokens": {"kind": "geometric", "mean": 800, "max": 4096},
        },
    ),
    "70b-bf16-tp4": (
        "1h",
        {
            **CHAT,
            "model": "llama3-70b",
            "precision": "bf16",
            "tp": 4,
            "replicas": 4,
            "traffic": {"kind": "poisson", "rate_rps": 6},
        },
    ),
}

#: Workloads compared on the mean of several seeds (7, 8, ...) in each tier, not on one: a limit
#: cycle whose path (when each swing comes, how far it goes) differs from seed to seed in both
#: tiers, by more than the tolerances.
#: Workloads run over several seeds (metrics averaged): those whose autoscaler swings, where one
#: run's tail is one draw of a bimodal outcome (see tests/test_fluid.py).
SEEDS = {"70b-hpa-above-knee": 4, "diurnal-hpa-tight": 4}

METRICS = (
    "gpu_h",
    "output_tokens",
    "replicas_mean",
    "ttft_p50",
    "ttft_p99",
    "tpot_p50",
    "tpot_p99",
)
#: Issue 5's tolerances on fluid / fast - 1.
TOLERANCE = {
    "gpu_h": 0.05,
    "output_tokens": 0.05,
    "replicas_mean": 0.10,
    "ttft_p50": 0.15,
    "ttft_p99": 0.15,
    "tpot_p50": 0.15,
    "tpot_p99": 0.15,
}


def scenario(name: str, fidelity: str) -> dict[str, Any]:
    """The scenario (as data) of workload `name` in the serving tier `fidelity`, seed 7."""
    duration, fields = WORKLOADS[name]
    # Fixed replicas are a deployment already up (no cold start at t = 0); an autoscaled
    # service's new replicas cold-start.
    svc = {
        "name": "chat",
        "model": "llama3-8b",
        "precision": "fp8",
        "tp": 1,
        "cold_start": {"container_s": 0, "weights_s": 0},
        **copy.deepcopy(fields),
        "fidelity": fidelity,
    }
    return {
        "name": f"fluid-{name}",
        "seed": 7,
        "duration": duration,
        "cluster": copy.deepcopy(CLUSTER),
        "inference": [svc],
    }


def metrics(res: Any) -> dict[str, float]:
    """The compared metrics of the service `chat` in a run's `Results`."""
    s = res.summary["inference"]["chat"]
    return {
        "gpu_h": s["gpu_h"]["held"],
        "output_tokens": s["output_tokens"],
        "replicas_mean": s["replicas_mean"],
        "ttft_p50": s["ttft_s"]["p50"],
        "ttft_p99": s["ttft_s"]["p99"],
        "tpot_p50": s["tpot_s"]["p50"],
        "tpot_p99": s["tpot_s"]["p99"],
    }


def compare(name: str) -> dict[str, Any]:
    """Workload `name` run in `fast` and in `fluid` (the mean over `SEEDS` seeds where it has
    several): each tier's metrics and wall time, and the error fluid / fast - 1 of each."""
    out: dict[str, Any] = {"workload": name}
    for tier in ("fast", "fluid"):
        t0 = time.perf_counter()
        runs = []
        for k in range(SEEDS.get(name, 1)):
            sc = scenario(name, tier)
            sc["seed"] += k
            runs.append(metrics(af.run(sc)))
        out[tier] = {m: sum(run[m] for run in runs) / len(runs) for m in METRICS}
        out[f"{tier}_wall_s"] = time.perf_counter() - t0
    out["error"] = {k: out["fluid"][k] / out["fast"][k] - 1.0 for k in METRICS}
    return out


# --- the docs page's table ------------------------------------------------------------------

#: The end of the validation table's heading: its two last columns are wall times.
WALL_HEAD = "| fast wall | fluid wall |"
#: The start of the line under the table that sums the wall times.
WALL_LINE = "Wall times"


def comparable(text: str) -> str:
    """`text` with the wall times blanked: the two last cells of the validation rows, and the
    line that sums them."""
    out = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("| workload |") and line.rstrip().endswith(WALL_HEAD):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        if in_table and line.startswith("| `"):
            line = re.sub(r"\| [^|]* \| [^|]* \|$", "| - | - |", line.rstrip())
        if line.startswith(WALL_LINE):
            line = re.sub(r"\d[\d.]*", "#", line)
        out.append(line)
    return "\n".join(out)


__all__ = [
    "CHAT",
    "CLUSTER",
    "HPA",
    "METRICS",
    "SEEDS",
    "TOLERANCE",
    "WALL_HEAD",
    "WALL_LINE",
    "WORKLOADS",
    "comparable",
    "compare",
    "metrics",
    "scenario",
]
