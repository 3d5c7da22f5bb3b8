"""The runner: above the engine, it plays a scenario and assembles `Results` from what each
component of the factory returned (engine.factory.FactoryRun). The engine never imports this
module, `results` or the package root; this is where the layers meet."""

from __future__ import annotations

import gc
import platform
from typing import Any

import numpy as np
import pandas as pd

from .energy import energy_and_cost, power_timeline
from .engine.estate_factory import EstateEngine
from .engine.factory import Factory, FactoryRun
from .engine.gray import GRAY_COLUMNS
from .engine.inference import SERVICE_COLUMNS
from .engine.telemetry import BUCKETS, COLUMNS
from .estate_results import assemble_estate
from .facility import (
    demand_response,
    efficiency_by_gpu,
    facility_summary,
    facility_timeline,
    grid_limit_summary,
    racks_summary,
    swings,
)
from .reliability_notes import gang_shortfalls
from .results import Results
from .schema import build_checker, check_summary
from .spec.estate import Estate
from .spec.loader import content_hash
from .spec.scenario import Scenario
from .version import __version__

build_checker()  # once per process, at import: not inside the first run's time


def run(scenario: Scenario | Estate) -> Any:
    """Play `scenario` to its horizon; a `Results` (an estate's: `EstateResults`, each of its
    sites a `Results`: aifactory_sim/estate_results.py).

    The objects alive before the run (modules, the scenario, a notebook's own) are frozen out
    of the cyclic garbage collector's scans while it plays (`gc.freeze`, unfrozen after): a
    serving run allocates millions of small objects, and each collection of the oldest
    generation would otherwise walk everything else in the process too (about 10 % of a
    million-request fast-tier run). Garbage made during the run is still collected."""
    gc.freeze()
    try:
        if isinstance(scenario, Estate):
            erun = EstateEngine(scenario).run()
            sites = {name: assemble(frun) for name, frun in erun.sites.items()}
            return assemble_estate(erun, sites)
        res = assemble(Factory(scenario).run())
        if _compare_monitoring(scenario):
            without = Factory(scenario.model_copy(update={"monitoring": None})).run()
            res.summary["gray"]["without_monitoring"] = _monitoring_saved(res.summary, without)
            check_summary(res.summary)
        return res
    finally:
        gc.unfreeze()


def _compare_monitoring(sc: Scenario) -> bool:
    """Whether a run has gray failures, monitoring that may act on them, and asks to be set
    against the same run (same seed, same episodes) without it."""
    mon, f = sc.monitoring, sc.failures
    return (
        mon is not None
        and mon.compare_without
        and f is not None
        and f.gray is not None
        and (mon.straggler_detection is not None or mon.validation_every_steps is not None)
    )


def _monitoring_saved(summary: dict[str, Any], without: FactoryRun) -> dict[str, Any]:
    """The same seed with monitoring off: its work lost to gray failures, its tokens trained,
    and what monitoring saved (lost work and recovery GPU-h, every job; tokens trained)."""
    g = without.gray
    assert g is not None
    led = without.ledger.gpu_s
    wasted_off = (led["lost_work"] + led["recovery"]) / 3600.0
    wasted_on = summary["ledger_gpu_h"]["lost_work"] + summary["ledger_gpu_h"]["recovery"]
    tokens_off = float(sum(j.summary["tokens_trained"] for j in without.jobs))
    tokens_on = float(sum(j["tokens_trained"] for j in summary["training"].values()))
    return {
        "lost_gpu_h": g["lost_gpu_h"],
        "tokens_trained": tokens_off,
        "saved_gpu_h": wasted_off - wasted_on,
        "extra_tokens_trained": tokens_on - tokens_off,
    }


def assemble(run: FactoryRun) -> Results:
    """The summary, tables and meta of one run, from its components' results."""
    sc = run.scenario
    ledger_s = run.ledger.gpu_s
    total_gpus = run.total_gpus
    duration = sc.duration
    ledger_h = {b: ledger_s[b] / 3600.0 for b in BUCKETS}
    jobs = {j.name: j.summary for j in run.jobs}
    for name, share in gang_shortfalls(sc).items():
        jobs[name]["gang_availability"] = share
    records = run.failures
    failures = pd.DataFrame(
        [(r.time_s, r.pool, r.node, r.component, r.repair_s, r.job) for r in records],
        columns=["time_s", "pool", "node", "component", "repair_s", "job"],
    )
    events = pd.DataFrame(
        [(j.name, t, kind) for j in run.jobs for t, kind in j.events],
        columns=["job", "time_s", "event"],
    )
    ts = pd.DataFrame(run.timeseries, columns=list(COLUMNS))
    allocated_gpu_s = run.allocated_gpu_s
    summary: dict[str, Any] = {
        "scenario": sc.name,
        "seed": sc.seed,
        "fidelity": sc.fidelity,
        "duration_s": duration,
        "gpus": total_gpus,
        "ledger_gpu_h": ledger_h,
        "utilisation": {
            "allocated": allocated_gpu_s / (total_gpus * duration),
            "training": ledger_s["training"] / (total_gpus * duration),
            "serving": ledger_s["inference_busy"] / (total_gpus * duration),
        },
        "training": jobs,
        "inference": {svc.name: svc.summary for svc in run.services},
        "failures": {
            "count": len(records),
            "interrupting": int(failures["job"].notna().sum()),
            "by_component": {
                c: int((failures["component"] == c).sum())
                for c in sorted(set(failures["component"]))
            },
        },
    }
    meta = {
        "scenario_hash": content_hash(sc),
        "tiers": {
            "training": sc.training_tier,
            **{f"inference.{svc.name}": svc.tier for svc in run.services},
        },
        "wall_s": run.wall_s,
        "events": run.events,
        "version": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    services = (
        pd.concat(
            [
                pd.DataFrame(rows, columns=list(SERVICE_COLUMNS)).assign(service=name)[
                    ["service", *SERVICE_COLUMNS]
                ]
                for svc in run.services
                for name, rows in (svc.rows_named or [(svc.name, svc.rows)])
            ],
            ignore_index=True,
        )
        if run.services
        else None
    )
    traces = {j.name: j.trace for j in run.jobs if j.trace is not None}
    power = power_timeline(sc, summary, ts, services, traces)
    extra = energy_and_cost(sc, summary, power)
    for name, vals in extra.pop("jobs").items():
        jobs[name].update(vals)
    for name, vals in extra.pop("services").items():
        summary["inference"][name].update(vals)
    summary.update(extra)
    if sc.cluster.racks is not None:
        summary["racks"] = racks_summary(sc, summary)
    if run.gray is not None:
        summary["gray"] = run.gray
    if run.queues is not None:
        summary["queues"] = run.queues
    frames = [(svc.name, svc.requests) for svc in run.services if svc.requests]
    requests = (
        pd.concat(
            [pd.DataFrame({"service": name, **cols}) for name, cols in frames],
            ignore_index=True,
        )
        if frames
        else None
    )
    site = None
    if sc.facility is not None:
        site = facility_timeline(sc.facility, power, duration)
        summary["facility"] = facility_summary(sc.facility, site, summary)
        if sc.facility.grid_limit_mw is not None:
            summary["facility"]["grid_limit"] = grid_limit_summary(sc, summary)
        summary["facility"]["efficiency_by_gpu"] = efficiency_by_gpu(sc, summary)
        traced = swings(sc, summary, site)
        if traced:
            summary["facility"]["swings"] = traced
        if run.demand_response:
            summary["facility"]["demand_response"] = demand_response(
                run.demand_response, site, sc, requests
            )
    check_summary(summary)  # the schema report.py reads by name (aifactory_sim.schema)
    jobs_df = pd.DataFrame([{"job": name, **vals} for name, vals in jobs.items()])
    total_h = total_gpus * duration / 3600.0
    ledger = pd.DataFrame({"bucket": list(ledger_h), "gpu_h": list(ledger_h.values())})
    ledger["share"] = ledger["gpu_h"] / total_h
    gray = pd.DataFrame(run.gray_episodes, columns=list(GRAY_COLUMNS)) if run.gray else None
    return Results(
        sc,
        summary,
        meta,
        jobs_df,
        ts,
        ledger,
        failures,
        events,
        requests,
        services,
        power,
        site,
        gray=gray,
    )
