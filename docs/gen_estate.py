"""The owned share at which an estate's month costs least: a sweep over the private site's size,
for docs/howto/own-or-rent-an-estate.md and its figure.

    python docs/gen_estate.py            # rewrite the how-to's table and docs/img/estate-owned-share.png
    python docs/gen_estate.py --check    # exit 1 if the how-to's table is out of date

A bank fine-tunes on regulated EU data: a job every 12 h, each 8 nodes for about a day and a
half. It owns a Frankfurt site and may burst to an EU cloud region when a job has queued for
2 h (on demand). Too few owned nodes and the bursts pay the cloud's price; too many and idle
nodes pay their capex. The sweep runs the month at each size of the owned site.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

import aifactory_sim as af

ROOT = Path(__file__).resolve().parent
HOWTO = ROOT / "howto" / "own-or-rent-an-estate.md"
FIGURE = ROOT / "img" / "estate-owned-share.png"
BEGIN, END = "<!-- gen_estate: begin -->", "<!-- gen_estate: end -->"
SIZES = [16, 32, 48, 64, 80, 96, 128, 160]


def estate() -> dict[str, Any]:
    """The month's work: fine-tunes arriving as a Poisson stream (one every 12 h on average), on
    4, 8 or 16 nodes, each about a day on its nodes (lognormal, sigma 0.5); fixed draws (seed
    11), so the how-to's table is reproducible."""
    rng = np.random.default_rng(11)
    t, jobs = 0.0, []
    # tokens a day of llama3-8b on one 8-GPU H100 node trains at this model's step time
    per_node_day = 1.3e10
    while True:
        t += float(rng.exponential(12 * 3600))
        if t > 27 * 86400:
            break
        nodes = int(rng.choice([4, 8, 16]))
        days = float(rng.lognormal(0.0, 0.5))
        jobs.append({
            "name": f"tune-{len(jobs):02d}",
            "model": "llama3-8b",
            "data": {"dataset": "transcripts", "bytes_per_token": 4},
            "classification": "regulated",
            "submit_at": round(t),
            "tokens": float(f"{per_node_day * nodes * days:.3g}"),
            "seq_len": 8192,
            "global_batch_tokens": "4M",
            "parallel": {"tp": 1, "pp": 1, "dp": 8 * nodes},
            "burst": {"site": "cloud-eu", "when_queued_s": 7200, "price": "on-demand"},
        })
    return {
        "name": "own-or-rent",
        "seed": 5,
        "duration": "30d",
        "sites": [
            {
                "name": "fra-private",
                "jurisdiction": "eu",
                "kind": "private",
                "cluster": {
                    "node_pools": [{"name": "h100", "nodes": 32, "gpu": "H100-SXM"}],
                    "storage": {"read_gb_s": 200, "write_gb_s": 100},
                },
                "power": {"pue": 1.25, "usd_per_kwh": 0.18, "node_overhead_w": 2000},
                "cost": {"node_capex_usd": 300000, "amortization_years": 4},
            },
            {
                "name": "cloud-eu",
                "jurisdiction": "eu",
                "kind": "cloud",
                "gpu": "H100-SXM",
                "max_nodes": 256,
                "provisioning_s": 900,
                "storage": {"read_gb_s": 200, "write_gb_s": 100},
                "cost": {"on_demand_usd_per_gpu_hour": 4.5},
            },
        ],
        "links": [
            {"between": ["fra-private", "cloud-eu"], "gbit_s": 200, "latency_ms": 3,
             "egress_usd_per_gb": 0.05},
        ],
        "data": [{"name": "transcripts", "size_tb": 400, "jurisdiction": "eu", "residency": "eu"}],
        "training": jobs,
    }


def rows() -> list[dict[str, Any]]:
    df = af.sweep(estate(), {"sites.0.cluster.node_pools.0.nodes": SIZES}, executor="inprocess",
                  progress=False)
    out = []
    for _, r in df.sort_values("sites.0.cluster.node_pools.0.nodes").iterrows():
        n = int(r["sites.0.cluster.node_pools.0.nodes"])
        bursts = sum(1 for c in df.columns if c.startswith("estate.bursts.") and c.endswith(".job")
                     and isinstance(r[c], str))
        out.append({
            "nodes": n,
            "owned_share": n / (n + float(r["estate.sites.cloud-eu.rented_nodes_mean"])),
            "private_usd": float(r["estate.cost_usd.by_site.fra-private"]),
            "cloud_usd": float(r["estate.cost_usd.by_site.cloud-eu"]),
            "total_usd": float(r["estate.cost_usd.total"]),
            "utilisation": float(r["estate.sites.fra-private.utilisation.allocated"]),
            "bursts": bursts,
            "usd_per_btok": float(r["estate.usd_per_btok_trained"]),
        })
    return out


def table(rs: list[dict[str, Any]]) -> str:
    best = min(rs, key=lambda r: r["total_usd"])
    lines = [
        "| owned nodes | owned share of nodes in use | bursts | owned site allocated |"
        " owned site USD | cloud USD | total USD | USD per Btok |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rs:
        mark = " **(least)**" if r is best else ""
        lines.append(
            f"| {r['nodes']}{mark} | {r['owned_share']:.0%} | {r['bursts']} | {r['utilisation']:.0%} |"
            f" {r['private_usd']:,.0f} | {r['cloud_usd']:,.0f} | {r['total_usd']:,.0f} |"
            f" {r['usd_per_btok']:,.0f} |"
        )
    return "\n".join(lines)


def figure(rs: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    n = [r["nodes"] for r in rs]
    ax.plot(n, [r["private_usd"] / 1e6 for r in rs], "o-", label="owned site (capex, energy)")
    ax.plot(n, [r["cloud_usd"] / 1e6 for r in rs], "s-", label="cloud bursts (rental)")
    ax.plot(n, [r["total_usd"] / 1e6 for r in rs], "k^-", label="estate")
    ax.set_xlabel("nodes owned at fra-private")
    ax.set_ylabel("million USD for the month")
    ax.set_title("A month of regulated fine-tunes: own or burst")
    ax.legend()
    fig.savefig(FIGURE, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    rs = rows()
    block = f"{BEGIN}\n{table(rs)}\n{END}"
    text = HOWTO.read_text()
    head, rest = text.split(BEGIN, 1)
    new = head + block + rest.split(END, 1)[1]
    if args.check:
        if new != text:
            print(f"{HOWTO} is out of date; run python docs/gen_estate.py", file=sys.stderr)
            return 1
        return 0
    HOWTO.write_text(new)
    figure(rs)
    print(table(rs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
