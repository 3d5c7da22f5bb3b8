"""Rewrite the generated fluid-tier sections of docs/background/serving.md.

    python docs/gen_fluid.py          # rewrite the sections in place
    python docs/gen_fluid.py --check  # exit 1 if the file is out of date (wall times aside)

Each section sits between a pair of HTML-comment markers in the Markdown file:
- `fluid-workloads`: the workloads of aifactory_sim/validation/fluid.py, one line each.
- `fluid-validation`: each workload run in the `fast` and the `fluid` tier with the same scenario
  and seed: the fast value and the fluid error of every metric, outside tolerance in bold, and
  each tier's wall time.

The workloads, metrics and tolerances are imported from aifactory_sim/validation/fluid.py, as
tests/test_fluid.py imports them, and so is `comparable`, the page as --check compares it.
Every run is seeded, so the values and errors are reproducible; the wall times are not, and
--check ignores them. About 30 s in all.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any

from _generated import replace_block

from aifactory_sim.validation import fluid as fv
from aifactory_sim.validation.fluid import WALL_HEAD, WALL_LINE, comparable

DOC = Path(__file__).parent / "background" / "serving.md"


def _ms(v: float) -> str:
    """Seconds as milliseconds, three significant figures (more above 1,000)."""
    x = v * 1e3
    return f"{x:,.0f} ms" if x >= 100 else f"{x:.1f} ms" if x >= 10 else f"{x:.2f} ms"


#: Column heading and how a fast value is printed, per metric.
COLUMNS: dict[str, tuple[str, Any]] = {
    "gpu_h": ("GPU-h held", lambda v: f"{v:,.1f}"),
    "output_tokens": ("output tokens", lambda v: f"{v / 1e6:,.1f} M"),
    "replicas_mean": ("mean replicas", lambda v: f"{v:.2f}"),
    "ttft_p50": ("TTFT p50", _ms),
    "ttft_p99": ("TTFT p99", _ms),
    "tpot_p50": ("TPOT p50", _ms),
    "tpot_p99": ("TPOT p99", _ms),
}


def _dist(d: Any) -> str:
    if not isinstance(d, dict):
        return f"{d}"
    kind = d["kind"]
    if kind == "lognormal":
        text = f"lognormal median {d['median']:,}, sigma {d['sigma']}"
    elif kind == "geometric":
        text = f"geometric mean {d['mean']:,}"
    elif kind == "uniform":
        text = f"uniform {d['low']:,}-{d['high']:,}"
    else:
        text = kind
    return text + (f", max {d['max']:,}" if "max" in d else "")


def _traffic(t: dict[str, Any]) -> str:
    if t["kind"] == "poisson":
        return f"Poisson {t['rate_rps']:g} req/s"
    if t["kind"] == "diurnal":
        return (f"diurnal mean {t['mean_rps']:g} req/s, peak/trough {t['peak_to_trough']:g}, "
                f"period {t['period']}")
    if t["kind"] == "bursty":
        return (f"bursty {t['base_rps']:g} / {t['burst_rps']:g} req/s, bursts of "
                f"{t['mean_burst']} every {t['mean_gap']}")
    return t["kind"]


def workloads_table() -> str:
    lines = ["| workload | duration | model | traffic | prompts | outputs | replicas |",
             "|---|---|---|---|---|---|---|"]
    for name in fv.WORKLOADS:
        svc = fv.scenario(name, "fast")
        s = svc["inference"][0]
        a = s.get("autoscaler")
        reps = (f"HPA on {a['metric']}, target {a['target']}, {a['min_replicas']}-"
                f"{a['max_replicas']}, {s['cold_start']['container_s']} s container"
                if a else f"{s['replicas']} fixed")
        lines.append(f"| `{name}` | {svc['duration']} | {s['model']} {s['precision'].upper()} "
                     f"TP{s['tp']} | {_traffic(s['traffic'])} | {_dist(s['prompt_tokens'])} "
                     f"| {_dist(s['output_tokens'])} | {reps} |")
    pool = fv.CLUSTER["node_pools"][0]
    seed = fv.scenario(next(iter(fv.WORKLOADS)), "fast")["seed"]
    lines += ["", f"All on {pool['nodes']} nodes of {pool['gpus_per_node']} {pool['gpu']}, seed "
              f"{seed}"
              + "".join(f"; `{name}` the mean of seeds {seed} to {seed + n - 1} in each tier"
                        for name, n in fv.SEEDS.items()) + "."]
    return "\n".join(lines)


def validation_table() -> tuple[str, str]:
    head = "| workload | " + " | ".join(h for h, _ in COLUMNS.values()) + " " + WALL_HEAD
    lines = [head, "|---|" + "---:|" * (len(COLUMNS) + 2)]
    held_worst = (0.0, "", "")
    walls = [0.0, 0.0]
    for name in fv.WORKLOADS:
        row = fv.compare(name)
        cells = []
        for k, (_, fmt) in COLUMNS.items():
            err = row["error"][k]
            text = f"{100.0 * err:+,.0f} %" if abs(err) >= 10 else f"{100.0 * err:+.1f} %"
            if abs(err) > fv.TOLERANCE[k]:
                text = f"**{text} (out)**"
            elif abs(err) / fv.TOLERANCE[k] > held_worst[0]:
                held_worst = (abs(err) / fv.TOLERANCE[k], name, k)
            cells.append(f"{fmt(row['fast'][k])}, {text}")
        walls[0] += row["fast_wall_s"]
        walls[1] += row["fluid_wall_s"]
        lines.append(f"| `{name}` | " + " | ".join(cells)
                     + f" | {row['fast_wall_s']:.2f} s | {row['fluid_wall_s']:.2f} s |")
    tol = ", ".join(f"{COLUMNS[k][0]} {100 * v:g} %" for k, v in fv.TOLERANCE.items())
    ratio, worst_name, worst_metric = held_worst
    lines += [
        "",
        "Each cell: the `fast` value, then the fluid error, fluid / fast - 1. Tolerances: "
        f"{tol}; **(out)** marks an error beyond its tolerance. Within tolerance, the largest "
        f"error is {100 * ratio:.0f} % of its tolerance ({COLUMNS[worst_metric][0]} of "
        f"`{worst_name}`).",
        "",
        f"{WALL_LINE} of one run of each tier, `af.run` from the scenario to the summary, on the "
        f"machine that generated this page ({os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}): {walls[0]:.1f} s for the fast runs, {walls[1]:.1f} s for "
        "the fluid ones; they vary between machines and runs, and `--check` ignores them.",
    ]
    return "\n".join(lines), f"within tolerance, worst {100 * ratio:.0f} % of it"


def build(text: str) -> tuple[str, str]:
    table, message = validation_table()
    text = replace_block(DOC, text, "fluid-workloads", workloads_table())
    text = replace_block(DOC, text, "fluid-validation", table)
    return text, message


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if the file is out of date (wall times aside)")
    args = ap.parse_args()
    old = DOC.read_text()
    new, message = build(old)
    if args.check:
        if comparable(new) != comparable(old):
            print(f"{DOC} is out of date; run python docs/gen_fluid.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote {DOC}; {message}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
