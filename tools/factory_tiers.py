"""The shared factory over a window with its chat service in `fast` against `fluid` (issue 6).

    python tools/factory_tiers.py                 # 6 h from t = 0 (fast takes 10+ minutes)
    python tools/factory_tiers.py --hours 1       # a shorter window
    python tools/factory_tiers.py --json out.json # also write both summaries' figures

scenarios/factory.yaml runs unchanged but for `duration` and the service's `fidelity`; the
same seed drives both runs. For the service it compares the figures and tolerances of
tools/fluid_validation.py (the fluid tier's validation); for the factory, what the service's
tier can change elsewhere: the training job's tokens and lends, the ledger's training and
serving buckets, and the energy. Errors are fluid / fast - 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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


def run(tier: str, hours: float) -> tuple[dict[str, Any], float]:
    sc = af.load(SCENARIO, {"duration": f"{hours}h", "inference.0.fidelity": tier})
    t0 = time.perf_counter()
    res = af.run(sc)
    wall = time.perf_counter() - t0
    return {"service": service_metrics(res), "factory": factory_metrics(res),
            "requests": res.summary["inference"]["chat"]["requests"]}, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--json", help="write both tiers' figures and the errors here")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {"hours": args.hours}
    for tier in ("fluid", "fast"):
        out[tier], out[f"{tier}_wall_s"] = run(tier, args.hours)
        print(f"{tier}: {out[f'{tier}_wall_s']:.1f} s wall", file=sys.stderr)
    rows = [(k, out["fast"]["service"][k], out["fluid"]["service"][k], TOLERANCE[k])
            for k in METRICS]
    rows += [(k, out["fast"]["factory"][k], out["fluid"]["factory"][k], FACTORY_TOLERANCE[k])
             for k in FACTORY_TOLERANCE]
    print(f"factory.yaml, {args.hours:g} h: fast {out['fast_wall_s']:.1f} s, "
          f"fluid {out['fluid_wall_s']:.2f} s wall; requests (fast) {out['fast']['requests']}")
    print(f"{'figure':<20}{'fast':>14}{'fluid':>14}{'error':>10}{'tolerance':>11}")
    outside = 0
    out["error"] = {}
    for k, fast, fluid, tol in rows:
        err = fluid / fast - 1.0 if fast else float("nan")
        out["error"][k] = err
        flag = "" if abs(err) <= tol else "  outside"
        outside += bool(flag)
        print(f"{k:<20}{fast:>14.5g}{fluid:>14.5g}{err:>+10.1%}{tol:>10.0%}{flag}")
    lends = {tier: out[tier]["factory"]["lends"] for tier in ("fast", "fluid")}
    print(f"lends: fast {lends['fast']}, fluid {lends['fluid']}")
    print(f"{outside} figure(s) outside tolerance")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, sort_keys=True), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
