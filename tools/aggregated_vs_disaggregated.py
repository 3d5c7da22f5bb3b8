"""Aggregated against disaggregated serving on the same GPUs and the same load (issue 16): the
table of docs/background/serving.md, "Aggregated or disaggregated".

    python tools/aggregated_vs_disaggregated.py            # the table (about a minute)
    python tools/aggregated_vs_disaggregated.py --minutes 5

Llama 3 70B in FP8 on four H100 nodes: 8 aggregated TP 4 replicas, or TP 4 prefill and decode
replicas split 2 + 6 and 4 + 4; Poisson traffic, lognormal lengths (sigma 0.6), an SLO of 2 s
TTFT and 50 ms TPOT at p90; the fast tier.
"""

from __future__ import annotations

import argparse
from typing import Any

import aifactory_sim as af

LAYOUTS: list[tuple[str, dict[str, Any] | None]] = [
    ("aggregated 8 x TP4", None),
    ("2 prefill + 6 decode", {"prefill": {"tp": 4, "replicas": 2},
                              "decode": {"tp": 4, "replicas": 6}}),
    ("4 prefill + 4 decode", {"prefill": {"tp": 4, "replicas": 4},
                              "decode": {"tp": 4, "replicas": 4}}),
]
#: (label, median prompt, median output, request rates)
WORKLOADS = [
    ("chat, 1,000 in / 500 out", 1000, 500, (8, 16)),
    ("long prompts, 8,000 in / 200 out", 8000, 200, (3, 6)),
]


def scenario(disagg: dict[str, Any] | None, rate: float, prompt: int, out: int,
             minutes: float) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "name": "chat", "model": "llama3-70b", "precision": "fp8", "kv_cache_dtype": "fp8",
        "cold_start": {"container_s": 0, "weights_s": 0},
        "traffic": {"kind": "poisson", "rate_rps": rate},
        "prompt_tokens": {"kind": "lognormal", "median": prompt, "sigma": 0.6, "max": 16000},
        "output_tokens": {"kind": "lognormal", "median": out, "sigma": 0.6, "max": 4000},
        "slo": {"ttft_s": 2.0, "tpot_s": 0.05, "percentile": 90},
    }
    if disagg is None:
        svc.update(tp=4, replicas=8)
    else:
        svc["disaggregation"] = disagg
    return {
        "name": "aggregated-vs-disaggregated", "seed": 3, "duration": f"{minutes}m",
        "cluster": {"node_pools": [{"name": "h100", "nodes": 4, "gpu": "H100-SXM",
                                    "nic_gbit_s": 400}]},
        "inference": [svc],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="simulated minutes per run")
    args = ap.parse_args()

    def ms(x: float) -> str:
        return f"{x * 1e3:,.0f} ms" if x < 10 else f"{x:,.0f} s"

    print("| workload | rps | layout | TTFT p90 | TPOT p90 | SLO met | GPU busy |")
    print("|---|---|---|---|---|---|---|")
    for label, prompt, out, rates in WORKLOADS:
        for rate in rates:
            for name, disagg in LAYOUTS:
                res = af.run(af.load(scenario(disagg, rate, prompt, out, args.minutes)))
                s = res.summary["inference"]["chat"]
                busy = s["gpu_h"]["busy"] / s["gpu_h"]["held"]
                print(f"| {label} | {rate:g} | {name} | {ms(s['ttft_s']['p90'])} | "
                      f"{s['tpot_s']['p90'] * 1e3:.1f} ms | {s['slo_attainment']:.1%} | "
                      f"{busy:.0%} |", flush=True)


if __name__ == "__main__":
    main()
