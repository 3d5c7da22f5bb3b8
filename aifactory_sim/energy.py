"""Power, energy and cost of a run, from what the run recorded.

The facility power timeline is a step function built on every instant at which the cluster's
timeseries or a service's tick row changes something; each row holds until the next, the last
row (at the run's end) closes the timeline. Within a segment:

- training GPUs draw P_train, the run's mean power of a GPU held by a training job: its
  computing time (ledger `training`, `lost_work`, `data_stall`) at P(a_job), a_job =
  min(1, MFU / 0.40), weighted over jobs by GPU-seconds computed; its stalls (`checkpoint`,
  `recovery`, `queued`) at idle. The ledger holds those buckets as totals, so the timeline
  spreads them evenly over the time jobs hold GPUs;
- serving GPUs: `busy_gpus` of the tick (mean GPUs iterating) at P(SERVING_ACTIVITY), the
  rest of the held GPUs (idle, cold start, draining) at idle power;
- unallocated GPUs at idle power, GPUs of down nodes at zero;
- every node that is up draws `node_overhead_w`; facility = IT x PUE.

Energy is the exact integral of that step function. Equations and sources are in
kernels/power.py and docs/background/power-cost.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import weather
from .kernels import power as kp

if TYPE_CHECKING:
    from .spec.scenario import Scenario

#: Columns of `Results.power` (power.csv). The split columns are facility watts and sum to
#: facility_w.
POWER_COLUMNS = (
    "time_s",
    "gpu_w",
    "node_w",
    "it_w",
    "facility_w",
    "training_w",
    "serving_w",
    "idle_w",
)

#: Ledger buckets of GPUs held by training jobs, computing and not.
TRAIN_COMPUTE = ("training", "lost_work", "data_stall")
TRAIN_STALL = ("checkpoint", "recovery", "queued")

J_PER_MWH = 3.6e9


@dataclass(frozen=True)
class Constants:
    """Per-GPU figures of the cluster (GPU-weighted means over its node pools)."""

    gpus: int
    nodes: int
    tdp_w: float
    idle_w: float  # board power idle (capped)
    serving_w: float  # board power of an iterating serving GPU (capped)
    overhead_w: float  # node overhead per GPU
    cap_w: float | None
    pue: float


def constants(sc: Scenario) -> Constants:
    pools = sc.cluster.node_pools
    gpus = sum(p.gpus for p in pools)
    caps = [sc.gpu_cap_w(p) for p in pools]  # power.gpu_power_cap_w or the racks', per pool
    given = [c for c in caps if c is not None]

    def mean(values: list[float]) -> float:
        return float(sum(v * p.gpus for v, p in zip(values, pools, strict=True)) / gpus)

    idles = [float(kp.idle_power_w(p.gpu.tdp_w, p.gpu.idle_w)) for p in pools]
    tdps = [p.gpu.tdp_w for p in pools]
    return Constants(
        gpus=gpus,
        nodes=sum(p.nodes for p in pools),
        tdp_w=mean(tdps),
        idle_w=mean(
            [float(kp.gpu_power_w(0.0, t, i, c)) for t, i, c in zip(tdps, idles, caps, strict=True)]
        ),
        serving_w=mean(
            [
                float(kp.gpu_power_w(kp.SERVING_ACTIVITY, t, i, c))
                for t, i, c in zip(tdps, idles, caps, strict=True)
            ]
        ),
        overhead_w=float(sum(p.nodes * sc.power.node_overhead_w for p in pools) / gpus),
        cap_w=min(given) if given else None,
        pue=sc.power.pue,
    )


def job_compute_w(sc: Scenario, job: dict[str, Any]) -> float:
    """Board power of a GPU of this job while it computes: P(min(1, MFU / 0.40)), capped."""
    pool = sc.pool(None)
    for spec in sc.training:
        if spec.name == job.get("name"):
            pool = sc.pool(spec.pool)
    idle = kp.idle_power_w(pool.gpu.tdp_w, pool.gpu.idle_w)
    mfu = job.get("mfu")
    activity = 1.0 if mfu is None else kp.training_activity(mfu)
    return float(kp.gpu_power_w(activity, pool.gpu.tdp_w, idle, sc.gpu_cap_w(pool)))


def training_gpu_w(sc: Scenario, summary: dict[str, Any], c: Constants) -> float:
    """Mean board power of a GPU held by training: computing GPU-seconds at their jobs' power
    (weighted by GPU-seconds computed, `running_s` x `gpus`), stalls at idle."""
    ledger = summary["ledger_gpu_h"]
    compute_h = sum(ledger.get(b, 0.0) for b in TRAIN_COMPUTE)
    stall_h = sum(ledger.get(b, 0.0) for b in TRAIN_STALL)
    if compute_h + stall_h <= 0:
        return c.idle_w
    weights, powers = [], []
    for name, job in summary["training"].items():
        w = (job.get("running_s") or 0.0) * (job.get("gpus") or 0)
        if w > 0:
            weights.append(w)
            powers.append(job_compute_w(sc, {**job, "name": name}))
    compute_w = (
        float(np.average(powers, weights=weights))
        if weights
        else float(kp.gpu_power_w(1.0, c.tdp_w, c.idle_w, c.cap_w))
    )
    return (compute_h * compute_w + stall_h * c.idle_w) / (compute_h + stall_h)


def _busy_at(services: pd.DataFrame | None, t: np.ndarray) -> np.ndarray:
    """Total busy GPUs over [t_i, t_i+1): each service row's busy_gpus covers the tick that
    ends at its time_s, so a segment takes the first row strictly after its start."""
    busy = np.zeros(t.size)
    if services is None or not len(services) or "busy_gpus" not in services:
        return busy
    for _, rows in services.groupby("service", sort=False):
        rows = rows.sort_values("time_s", kind="stable")
        times = rows["time_s"].to_numpy(dtype=float)
        vals = rows["busy_gpus"].to_numpy(dtype=float)
        i = np.searchsorted(times, t, side="right")
        ok = i < times.size
        busy[ok] += vals[i[ok]]
    return busy


def gpu_states(
    timeseries: pd.DataFrame,
    services: pd.DataFrame | None,
    gpus: int,
    duration: float,
    extra_cuts: np.ndarray | None = None,
) -> pd.DataFrame:
    """GPUs by state as a step function from each `time_s` on: held by training jobs; held by
    services and iterating (their ticks' mean busy GPUs) or not; held by no one's work
    (allocated, neither); down; free. The states add up to the cluster's `gpus`. `extra_cuts`
    are more times to cut the steps at (the facility's hours)."""
    ts = timeseries.sort_values("time_s", kind="stable")
    cuts = [ts["time_s"].to_numpy(dtype=float)]
    if extra_cuts is not None and extra_cuts.size:
        cuts.append(extra_cuts)
    if services is not None and len(services):
        cuts.append(services["time_s"].to_numpy(dtype=float))
    t = np.unique(np.concatenate([[0.0], *cuts]))
    t = t[(t >= 0.0) & (t < duration)]
    keys = ("allocated_gpus", "down_gpus", "training_gpus", "serving_gpus")
    if ts.empty:
        state = {k: np.zeros(t.size) for k in keys}
    else:
        idx = np.searchsorted(ts["time_s"].to_numpy(dtype=float), t, side="right") - 1
        state = {}
        for k in keys:
            col = ts[k].to_numpy(dtype=float)
            state[k] = np.where(idx >= 0, col[np.maximum(idx, 0)], 0.0)
    serve = state["serving_gpus"]
    busy = np.minimum(_busy_at(services, t), serve)
    return pd.DataFrame(
        {
            "time_s": t,
            "training": state["training_gpus"],
            "serving_busy": busy,
            "serving_idle": serve - busy,
            "held_idle": np.maximum(state["allocated_gpus"] - state["training_gpus"] - serve, 0.0),
            "down": state["down_gpus"],
            "free": np.maximum(gpus - state["allocated_gpus"] - state["down_gpus"], 0.0),
        }
    )


def _traced_w(
    sc: Scenario,
    summary: dict[str, Any],
    traces: dict[str, list[list[Any]]],
    t: np.ndarray,
    c: Constants,
) -> tuple[np.ndarray, np.ndarray]:
    """Board power and GPUs of the traced jobs over the segments starting at t: computing at
    the job's power (job_compute_w, or a demand-response cap below it), any other booked state
    at idle."""
    watts, gpus = np.zeros(t.size), np.zeros(t.size)
    for name, segs in traces.items():
        if not segs:
            continue
        a = np.asarray([s[0] for s in segs], dtype=float)
        b = np.asarray([s[1] for s in segs], dtype=float)
        n = np.asarray([s[3] for s in segs], dtype=float)
        busy = np.asarray([s[2] == "compute" for s in segs])
        # a demand-response cap holds a computing GPU at it (none: inf)
        cap = np.asarray([math.inf if s[4] is None else s[4] for s in segs], dtype=float)
        i = np.searchsorted(a, t, side="right") - 1
        inside = (i >= 0) & (t < b[np.maximum(i, 0)])
        k = np.maximum(i, 0)
        held = np.where(inside, n[k], 0.0)
        # each segment's compute power from the MFU its steps had uncapped (the trace's), else
        # from the job's summary
        p_mean = job_compute_w(sc, {**summary["training"][name], "name": name})
        p_seg = np.asarray(
            [
                p_mean if s[5] is None else job_compute_w(sc, {"name": name, "mfu": s[5]})
                for s in segs
            ]
        )
        watts += held * np.where(inside & busy[k], np.minimum(p_seg[k], cap[k]), c.idle_w)
        gpus += held
    return watts, gpus


def power_timeline(
    sc: Scenario,
    summary: dict[str, Any],
    timeseries: pd.DataFrame,
    services: pd.DataFrame | None,
    traces: dict[str, list[list[Any]]] | None = None,
) -> pd.DataFrame:
    """The facility power step function (POWER_COLUMNS); the last row, at the run's end,
    repeats the one before it and closes the timeline. `traces`: the booked segments of the
    jobs with `power_trace` (engine TrainingRun.trace), whose GPUs draw their job's power
    while computing and idle power otherwise, at the times they did; the other training GPUs
    draw the training mean."""
    c = constants(sc)
    duration = float(summary["duration_s"])
    extra = [weather.cuts(sc.facility, duration)]
    for segs in (traces or {}).values():
        extra.append(np.asarray([s[0] for s in segs] + [s[1] for s in segs], dtype=float))
    g = gpu_states(timeseries, services, c.gpus, duration, np.concatenate(extra))
    t = g["time_s"].to_numpy()
    pue = weather.pue_at(sc.facility, c.pue, t)
    down, train = g["down"].to_numpy(), g["training"].to_numpy()
    busy = g["serving_busy"].to_numpy()
    serve = busy + g["serving_idle"].to_numpy()
    other, unalloc = g["held_idle"].to_numpy(), g["free"].to_numpy()
    p_train = training_gpu_w(sc, summary, c)
    if traces:
        traced_w, traced_gpus = _traced_w(sc, summary, traces, t, c)
        train_gpu = traced_w + np.maximum(train - traced_gpus, 0.0) * p_train
    else:
        train_gpu = train * p_train
    serve_gpu = busy * c.serving_w + (serve - busy) * c.idle_w
    idle_gpu = (unalloc + other) * c.idle_w
    gpu_w = train_gpu + serve_gpu + idle_gpu
    node_w = (c.gpus - down) * c.overhead_w
    it_w = gpu_w + node_w
    o = c.overhead_w
    frame = pd.DataFrame(
        {
            "time_s": t,
            "gpu_w": gpu_w,
            "node_w": node_w,
            "it_w": it_w,
            "facility_w": it_w * pue,  # kernels.power.facility_power_w, hour by hour
            "training_w": pue * (train_gpu + train * o),
            "serving_w": pue * (serve_gpu + serve * o),
            "idle_w": pue * (idle_gpu + (unalloc + other) * o),
        }
    )
    last = frame.iloc[[-1]].assign(time_s=duration)
    return pd.concat([frame, last], ignore_index=True)[list(POWER_COLUMNS)]


def integral_j(power: pd.DataFrame, column: str = "facility_w") -> float:
    """Exact integral of a step column of the timeline, J."""
    t = power["time_s"].to_numpy(dtype=float)
    p = power[column].to_numpy(dtype=float)
    return float(np.sum(p[:-1] * np.diff(t)))


def _per_mtok(usd: float, tokens: float, per: float) -> float | None:
    return None if tokens <= 0 else usd / (tokens / per)


def energy_and_cost(sc: Scenario, summary: dict[str, Any], power: pd.DataFrame) -> dict[str, Any]:
    """Summary additions: top-level keys, and per-job and per-service keys under
    "training" / "inference" (merged into the summary by runner.assemble)."""
    c = constants(sc)
    if sc.facility is not None and sc.facility.pue_model is not None:
        # the PUE varies by the hour: per-job and per-service energy take the run's mean
        it_j = integral_j(power, "it_w")
        c = replace(c, pue=integral_j(power) / it_j if it_j > 0 else c.pue)
    cost = sc.cost
    price = sc.power.usd_per_kwh
    duration = float(summary["duration_s"])
    hours = duration / 3600.0
    energy_j = integral_j(power)
    energy_kwh = energy_j / 3.6e6
    ledger = summary["ledger_gpu_h"]
    # owning: every GPU of the cluster for the whole run
    gpn = c.gpus / c.nodes
    k = kp.capex_per_gpu_hour_usd(
        cost.node_capex_usd, cost.network_capex_per_node_usd, gpn, cost.amortization_years
    )
    k_opex = (
        kp.capex_per_gpu_hour_usd(
            cost.node_capex_usd,
            cost.network_capex_per_node_usd,
            gpn,
            cost.amortization_years,
            cost.opex_share_per_year,
        )
        - k
    )
    capex = k * c.gpus * hours
    opex = k_opex * c.gpus * hours
    energy_usd = energy_kwh * price
    used_h = sum(v for b, v in ledger.items() if b not in ("unallocated", "down"))

    def rate(r: float | None) -> float | None:
        return None if r is None else used_h * r

    cloud = {
        "gpu_h": used_h,
        "on_demand": used_h * cost.cloud_usd_per_gpu_hour,
        "reserved": rate(cost.cloud_reserved_usd_per_gpu_hour),
        "spot": rate(cost.cloud_spot_usd_per_gpu_hour),
        "total": used_h * cost.cloud_usd_per_gpu_hour,
    }
    private = {
        "capex": capex,
        "opex": opex,
        "energy": energy_usd,
        "total": capex + opex + energy_usd,
    }
    # break-even: per GPU-hour, idle vs the run's mean power of a used GPU (with overhead)
    p_idle = c.idle_w + c.overhead_w
    used_j = energy_j / c.pue - integral_j(power, "idle_w") / c.pue  # IT J of used GPUs
    p_busy = used_j / (used_h * 3600.0) if used_h > 0 else c.tdp_w + c.overhead_w
    break_even = (
        None
        if cost.cloud_usd_per_gpu_hour <= 0
        else kp.break_even_utilisation(
            k + k_opex, p_idle, p_busy, c.pue, price, cost.cloud_usd_per_gpu_hour
        )
    )

    def slice_cost(gpu_h: float, joules: float) -> dict[str, float]:
        """Owning: capex and opex of the GPU-hours held plus their energy; renting them."""
        return {
            "private": (k + k_opex) * gpu_h + joules / 3.6e6 * price,
            "cloud": gpu_h * cost.cloud_usd_per_gpu_hour,
        }

    # per job: computing at its power, recovery at idle; the node overhead share; x PUE
    jobs: dict[str, dict[str, Any]] = {}
    for name, job in summary["training"].items():
        gpus = job.get("gpus") or 0
        run_s = job.get("running_s") or 0.0
        rec_s = (job.get("recovery_h") or 0.0) * 3600.0
        joules = (
            c.pue
            * gpus
            * (run_s * (job_compute_w(sc, {**job, "name": name}) + c.overhead_w) + rec_s * p_idle)
        )
        tokens = float(job.get("tokens_trained") or 0.0)
        usd = slice_cost(gpus * (run_s + rec_s) / 3600.0, joules)
        jobs[name] = {
            "energy_mwh": joules / J_PER_MWH,
            "tokens_per_joule": tokens / joules if joules > 0 else None,
            "usd_per_btok_private": _per_mtok(usd["private"], tokens, 1e9),
            "usd_per_btok_cloud": _per_mtok(usd["cloud"], tokens, 1e9),
        }
    # per service: busy GPU-seconds at serving power, the rest held at idle; overhead; x PUE
    services: dict[str, dict[str, Any]] = {}
    for name, svc in summary["inference"].items():
        held_h = svc["gpu_h"]["held"]
        busy_h = svc["gpu_h"]["busy"]
        joules = (
            c.pue * 3600.0 * (busy_h * (c.serving_w + c.overhead_w) + (held_h - busy_h) * p_idle)
        )
        tokens = float(svc["output_tokens"])
        usd = slice_cost(held_h, joules)
        services[name] = {
            "energy_mwh": joules / J_PER_MWH,
            "tokens_per_joule": tokens / joules if joules > 0 else None,
            "usd_per_mtok": {k_: _per_mtok(v, tokens, 1e6) for k_, v in usd.items()},
        }
    train_j = integral_j(power, "training_w")
    train_tokens = float(sum(j.get("tokens_trained") or 0.0 for j in summary["training"].values()))
    train_h = sum(ledger.get(b, 0.0) for b in (*TRAIN_COMPUTE, *TRAIN_STALL))
    facility = power["facility_w"].to_numpy(dtype=float)
    return {
        "energy_mwh": energy_j / J_PER_MWH,
        "energy_mwh_by": {
            "training": train_j / J_PER_MWH,
            "serving": integral_j(power, "serving_w") / J_PER_MWH,
            "idle": integral_j(power, "idle_w") / J_PER_MWH,
        },
        "peak_mw": float(facility[:-1].max()) / 1e6 if facility.size > 1 else 0.0,
        "mean_mw": energy_j / duration / 1e6,
        "cost_usd": {"private": private, "cloud": cloud},
        "break_even_utilisation": break_even,
        "training_tokens_per_joule": train_tokens / train_j if train_j > 0 else None,
        "training_usd_per_btok": {
            k_: _per_mtok(v, train_tokens, 1e9) for k_, v in slice_cost(train_h, train_j).items()
        },
        "jobs": jobs,
        "services": services,
    }
