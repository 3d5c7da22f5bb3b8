"""The shared factory over a window with its chat service in `fast` against `fluid` (issue 6).

    python tools/factory_tiers.py                   # 6 h from t = 0 (fast takes 6+ minutes)
    python tools/factory_tiers.py --hours 1         # a shorter window
    python tools/factory_tiers.py --seeds 4 -j 2    # the mean of seeds 42..45, 2 processes
    python tools/factory_tiers.py --json out.json   # also write every run's figures

scenarios/factory.yaml runs unchanged but for `duration`, `seed` and the service's `fidelity`;
each seed drives one run of each tier. For the service it compares the figures and tolerances of
tools/fluid_validation.py (the fluid tier's validation); for the factory, what the service's
tier can change elsewhere: the training job's tokens and lends, the ledger's training and
serving buckets, and the energy. Errors are fluid / fast - 1, of the means over the seeds.

A lend shrinks the 16,384-GPU job (a checkpoint and a restart), so over a few hours the
training figures move by whole lends, and when the service's swings come (hence how many lends
there are) differs from seed to seed in both tiers: compare several seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import aifactory_sim as af

sys.path.insert(0, str(Path(__file__).parent))
from fluid_validation import METRICS, TOLERANCE
from fluid_validation import metrics as service_metrics

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "factory.yaml"
#: Factory-wide figures the service's tier feeds into, with the tolerance each is held to: the
#: fluid tier's GPU-hour tolerance, as they follow from the GPUs the service held.
FACTORY_TOLERANCE = {"training_tokens": 0.05, "ledger_training_h": 0.05,
                     "ledger_serving_h": 0.05, "energy_mwh": 0.05}


def factory_metrics(res: Any) -> dict[str, float]:
    s = res.summary
    ledger = s["ledger_gpu_h"]
    return {
        "training_tokens": sum(j["tokens_trained"] for j in s["training"].values()),
        "ledger_training_h": ledger["training"] + ledger["data_stall"],
        "ledger_serving_h": ledger["inference_busy"] + ledger["inference_idle"]
        + ledger["cold_start"],
        "energy_mwh": s["energy_mwh"],
        "lends": sum(j["lends"] for j in s["training"].values()),
    }


def run(tier: str, hours: float, seed: int) -> dict[str, Any]:
    sc = af.load(SCENARIO, {"duration": f"{hours}h", "inference.0.fidelity": tier,
                            "seed": seed})
    t0 = time.perf_counter()
    res = af.run(sc)
    return {"tier": tier, "seed": seed, "wall_s": time.perf_counter() - t0,
            "service": service_metrics(res), "factory": factory_metrics(res),
            "requests": res.summary["inference"]["chat"]["requests"]}


def _mean(runs: list[dict[str, Any]], part: str, key: str) -> float:
    return sum(r[part][key] for r in runs) / len(runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--seeds", type=int, default=1, help="seeds 42, 43, ... (default 1)")
    ap.add_argument("-j", "--workers", type=int, default=1, help="processes (default 1)")
    ap.add_argument("--json", help="write every run's figures and the errors here")
    args = ap.parse_args(argv)
    jobs = [(tier, args.hours, 42 + k) for k in range(args.seeds) for tier in ("fluid", "fast")]
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(run, *zip(*jobs, strict=True)))
    by_tier = {tier: [r for r in runs if r["tier"] == tier] for tier in ("fast", "fluid")}
    seeds = ", ".join(str(42 + k) for k in range(args.seeds))
    walls = {t: sum(r["wall_s"] for r in rs) / len(rs) for t, rs in by_tier.items()}
    print(f"factory.yaml, {args.hours:g} h, seed(s) {seeds}: fast {walls['fast']:.1f} s, "
          f"fluid {walls['fluid']:.2f} s wall per run; requests (fast) "
          f"{by_tier['fast'][0]['requests']}")
    rows = [("service", k, TOLERANCE[k]) for k in METRICS]
    rows += [("factory", k, FACTORY_TOLERANCE[k]) for k in FACTORY_TOLERANCE]
    print(f"{'figure':<20}{'fast':>14}{'fluid':>14}{'error':>10}{'tolerance':>11}")
    outside = 0
    errors = {}
    for part, k, tol in rows:
        fast, fluid = _mean(by_tier["fast"], part, k), _mean(by_tier["fluid"], part, k)
        err = fluid / fast - 1.0 if fast else (0.0 if fluid == fast else float("inf"))
        errors[k] = err
        flag = "" if abs(err) <= tol else "  outside"
        outside += bool(flag)
        print(f"{k:<20}{fast:>14.5g}{fluid:>14.5g}{err:>+10.1%}{tol:>10.0%}{flag}")
    for tier, rs in by_tier.items():
        print(f"{tier}: lends " + ", ".join(str(r["factory"]["lends"]) for r in rs)
              + "; training tokens (B) "
              + ", ".join(f"{r['factory']['training_tokens'] / 1e9:.1f}" for r in rs))
    print(f"{outside} figure(s) outside tolerance")
    if args.json:
        Path(args.json).write_text(json.dumps({"hours": args.hours, "runs": runs,
                                               "error": errors}, indent=1, sort_keys=True),
                                   encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
