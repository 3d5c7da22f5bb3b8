"""Write the golden summaries that tests/test_golden.py holds every later change to, byte for byte.

    python tools/make_golden.py            # (re)writes tests/golden/*/
    python tools/make_golden.py --list     # the cases and how long each took

One folder per case: `summary.json`, exactly as `run --out` writes it, and `case.json`: the
scenario (a bundled file's name, or the scenario as data for a docs workload) and a SHA-256 of
each table as CSV (jobs, requests, events, timeseries, services, failures, ledger, power). The
cases are every bundled scenario and the
workloads the docs pages run: the fluid tier's validation workloads in both tiers, the serving
page's tier workloads in all three tiers and one of its Erlang-C queues, and one replication
set of the reliability page's Daly workloads, and any case written into tests/golden by hand
(its recorded scenario is rerun). Rewrite them only for a change that is meant to
move a number, and say in the commit which cases moved and why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))

import aifactory_sim as af  # noqa: E402
from aifactory_sim.results import summary_json  # noqa: E402

OUT = ROOT / "tests" / "golden"
TABLES = ("jobs", "requests", "events", "timeseries", "services", "failures", "ledger", "power",
          "audit", "transfers")


#: Bundled scenarios whose golden case runs shortened: a day of serving-frontier.yaml in the
#: fast tier simulates some 20 million requests (the fluid tier runs it in seconds), and
#: chat-prefix-cache.yaml's six hours are kept to one.
BUNDLED_OVERRIDES: dict[str, dict[str, Any]] = {
    "serving-frontier.yaml": {"fidelity": "fluid"},
    "chat-prefix-cache.yaml": {"duration": "1h"},
    # an estate's month of diurnal chat: four days hold its fine-tune's start and a pretraining
    "hybrid-sovereign.yaml": {"duration": "4d"},
}


def cases() -> dict[str, dict[str, Any]]:
    """name -> {"bundled": file name} or {"scenario": data}."""
    import gen_reliability as rel
    import gen_serving as srv

    from aifactory_sim.validation import fluid as fv

    out: dict[str, dict[str, Any]] = {}
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        case: dict[str, Any] = {"bundled": path.name}
        if path.name in BUNDLED_OVERRIDES:
            case["overrides"] = BUNDLED_OVERRIDES[path.name]
        out[f"scenario-{path.stem}"] = case
    for name in fv.WORKLOADS:
        for tier in ("fast", "fluid"):
            out[f"fluid-{name}-{tier}"] = {"scenario": fv.scenario(name, tier)}
    for name, overrides in srv.TIERS.items():
        for tier in ("step", "fast", "fluid"):
            out[f"serving-{name}-{tier}"] = {"scenario": srv.scenario(fidelity=tier, **overrides)}
    out["serving-erlang-c"] = {"scenario": srv.mmc_scenario(20.0, 0, 4000)}
    m, tau, delta, r = rel.DALY_CASES[0]
    out["reliability-daly"] = {"scenario": rel.daly_scenario(8, m, tau, delta, r, 20 * tau)}
    # cases written by hand into tests/golden (the power-capped scenarios): their recorded
    # scenario is the case, so a regeneration rewrites them with the rest
    for folder in sorted(OUT.glob("*/case.json")):
        name = folder.parent.name
        recorded = json.loads(folder.read_text())
        if name not in out and "scenario" in recorded:
            out[name] = {"scenario": recorded["scenario"]}
    return out


def run_case(case: dict[str, Any]) -> Any:
    if "bundled" in case:
        return af.run(af.load(ROOT / "scenarios" / case["bundled"], case.get("overrides")))
    return af.run(af.load(case["scenario"]))


def digest(res: Any) -> dict[str, str]:
    """SHA-256 of each table as CSV (the index left out)."""
    out = {}
    for name in TABLES:
        table = getattr(res, name, None)
        if table is not None:
            out[name] = hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()
    return out


def write(name: str, case: dict[str, Any], res: Any) -> None:
    """tests/golden/NAME/summary.json (as `run --out` writes it) and case.json (the scenario and
    the tables' digests)."""
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(summary_json(res.summary))
    (folder / "case.json").write_text(
        json.dumps({**case, "tables": digest(res)}, sort_keys=True, indent=1) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="only time the cases, write nothing")
    ap.add_argument("only", nargs="*", help="case names (default: all)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, case in cases().items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        res = run_case(case)
        wall = time.perf_counter() - t0
        if not args.list:
            write(name, case, res)
        print(f"{name:<44} {wall:7.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
