"""The facility around the cluster, from what the run recorded: the outdoor temperature and
the PUE it sets, the grid's carbon intensity, and a battery between the grid and the site
(scenario `facility`, spec/facility.py; docs/background/facility.md).

The IT power is energy.py's step function. The facility's hourly timelines (temperature, PUE,
carbon) cut it at every hour, so that facility power = IT power x PUE(T) holds exactly within
each segment. The battery then works on the site's power x(t): it aims the grid draw at a
low-pass filtered copy y of x (time constant `smoothing_s`: dy/dt = (x - y) / tau), serving
the difference x - y less (its charge at the start - its charge now) / tau (so that its
losses do not empty it; such charging never lifts the draw above the trend y), and never lets
the draw pass `grid_limit_mw` while it has energy;
both within its power and its state of charge, the losses split evenly between charging and
discharging (sqrt of the round-trip efficiency each way). It is integrated on the timeline's
segments cut to at most BATTERY_STEP_S, with y exact for x constant over each piece.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .energy import constants, job_compute_w
from .spec.scenario import job_estimate
from .weather import HOUR_S, carbon_at, hour_edges, temperature_c

if TYPE_CHECKING:
    from .spec.facility import Facility

#: Longest piece (s) of the battery's integration; the filter is exact within a piece.
BATTERY_STEP_S = 60.0

#: The window (s) a ramp rate is measured over: the largest change of power within one second,
#: in MW/s, the time-domain figure utilities specify for large loads (ramp-up and ramp-down
#: rates in MW/s; Choukse et al., "Power Stabilization for AI Training Datacenters", arXiv
#: 2508.14318, 2025, sec. 3). A synchronous job's phases switch within milliseconds, so a
#: window spans a whole edge: its ramp is its swing per second.
RAMP_WINDOW_S = 1.0

#: Breakdown parts (kernels/training.py) in which a training step's GPUs compute; the rest of
#: the step (exposed tensor-, context-, pipeline- and data-parallel communication, the
#: pipeline bubble, data stalls) they wait, near idle power (Choukse et al. 2025: compute-heavy
#: phases near TDP, communication-heavy ones near idle).
COMPUTE_PARTS = ("gemm_s", "elementwise_s", "optimizer_s")


def battery_dispatch(
    t: np.ndarray,
    site_w: np.ndarray,
    *,
    capacity_j: float,
    power_w: float,
    efficiency: float,
    soc0: float,
    tau_s: float,
    limit_w: float | None,
) -> pd.DataFrame:
    """The battery on the site's step function (t[i], site_w[i] holding until t[i+1]; the last
    row closes it). Returns, per piece: time_s, site_w, battery_w (+ discharging into the
    site, - charging from the grid), grid_w = site_w - battery_w, soc (at the piece's start).

    Per piece of length h at site power x: the target moves y -> x + (y - x) e^(-h / tau);
    the battery is asked for x - y (its mean over the piece) or, with a grid limit, at least
    x - limit; it gives what its power and energy allow: discharging b for h takes b h /
    sqrt(eta) from its store, charging takes -b h sqrt(eta) into it."""
    eta = math.sqrt(efficiency)
    times: list[float] = []
    site: list[float] = []
    out: list[float] = []
    socs: list[float] = []
    stored = soc0 * capacity_j
    y = float(site_w[0]) if site_w.size else 0.0
    for i in range(t.size - 1):
        x = float(site_w[i])
        t0, t1 = float(t[i]), float(t[i + 1])
        n = max(1, math.ceil((t1 - t0) / BATTERY_STEP_S))
        h = (t1 - t0) / n
        for k in range(n):
            decay = math.exp(-h / tau_s)
            # the mean of x - y over the piece, y relaxing to x; less what brings the charge
            # back to where it started over tau (its losses would empty it otherwise)
            smooth = (x - y) * tau_s / h * (1.0 - decay) if h > 0 else 0.0
            ask = smooth - (soc0 * capacity_j - stored) / tau_s
            # charging never lifts the draw above the trend (nor the limit)
            ask = max(ask, min(smooth, 0.0))
            y = x + (y - x) * decay
            if limit_w is not None:
                ask = max(ask, x - limit_w) if x - ask > limit_w else ask
            b = max(-power_w, min(power_w, ask))
            if b > 0:
                b = min(b, stored * eta / h) if h > 0 else 0.0
                stored -= b * h / eta
            elif b < 0:
                b = max(b, -(capacity_j - stored) / (eta * h)) if h > 0 else 0.0
                stored -= b * h * eta
            times.append(t0 + k * h)
            site.append(x)
            out.append(b)
            socs.append(stored / capacity_j)
    if t.size:
        times.append(float(t[-1]))
        site.append(float(site_w[-1]))
        out.append(0.0)
        socs.append(stored / capacity_j)
    frame = pd.DataFrame({"time_s": times, "site_w": site, "battery_w": out, "soc": socs})
    frame["grid_w"] = frame["site_w"] - frame["battery_w"]
    return frame


def _steps(frame: pd.DataFrame, column: str) -> float:
    """The largest change (W) of a step column between consecutive pieces."""
    v = frame[column].to_numpy(dtype=float)[:-1]
    return float(np.abs(np.diff(v)).max()) if v.size > 1 else 0.0


def facility_timeline(f: Facility, power: pd.DataFrame, duration_s: float) -> pd.DataFrame:
    """The site's power and what the grid sees: per piece of the power timeline (cut to the
    battery's steps when there is one) the site's facility power, temperature, PUE, carbon
    intensity, battery power and state of charge, grid draw."""
    t = power["time_s"].to_numpy(dtype=float)
    site = power["facility_w"].to_numpy(dtype=float)
    b = f.battery
    if b is not None:
        frame = battery_dispatch(
            t,
            site,
            capacity_j=b.capacity_mwh * 3.6e9,
            power_w=b.power_mw * 1e6,
            efficiency=b.round_trip_efficiency,
            soc0=b.initial_soc,
            tau_s=b.smoothing_s,
            limit_w=None if f.grid_limit_mw is None else f.grid_limit_mw * 1e6,
        )
    else:
        frame = pd.DataFrame({"time_s": t, "site_w": site, "battery_w": 0.0})
        frame["grid_w"] = frame["site_w"]
        frame["soc"] = math.nan
    tt = frame["time_s"].to_numpy(dtype=float)
    idx = np.searchsorted(t, tt, side="right") - 1
    it = power["it_w"].to_numpy(dtype=float)[np.clip(idx, 0, t.size - 1)]
    frame["it_w"] = it
    frame["pue"] = np.where(it > 0, frame["site_w"] / np.maximum(it, 1e-300), math.nan)
    temp = temperature_c(f, tt)
    frame["temp_c"] = temp if temp is not None else math.nan
    carbon = carbon_at(f, tt)
    frame["carbon_g_per_kwh"] = carbon if carbon is not None else math.nan
    cols = ["time_s", "it_w", "pue", "temp_c", "site_w", "battery_w", "soc", "grid_w"]
    return frame[[*cols, "carbon_g_per_kwh"]]


def _integral(frame: pd.DataFrame, column: str) -> float:
    t = frame["time_s"].to_numpy(dtype=float)
    return float(np.sum(frame[column].to_numpy(dtype=float)[:-1] * np.diff(t)))


def facility_summary(
    f: Facility, timeline: pd.DataFrame, summary: dict[str, Any]
) -> dict[str, Any]:
    """The summary's `facility` block: temperatures and PUE, grid draw against its limit, the
    battery's work, carbon (tonnes CO2e, per token)."""
    tl = timeline
    dt = np.diff(tl["time_s"].to_numpy(dtype=float))
    site_j, grid_j = _integral(tl, "site_w"), _integral(tl, "grid_w")
    grid = tl["grid_w"].to_numpy(dtype=float)[:-1]
    site = tl["site_w"].to_numpy(dtype=float)[:-1]
    pue = tl["pue"].to_numpy(dtype=float)[:-1]
    it = tl["it_w"].to_numpy(dtype=float)[:-1]
    temp = tl["temp_c"].to_numpy(dtype=float)[:-1]
    out: dict[str, Any] = {
        "pue_mean": site_j / max(float(np.sum(it * dt)), 1e-300) if site_j > 0 else None,
        "pue_max": float(np.nanmax(pue)) if pue.size and np.isfinite(pue).any() else None,
        "temp_c_max": float(np.nanmax(temp)) if np.isfinite(temp).any() else None,
        "temp_c_mean": (
            float(np.sum(np.nan_to_num(temp) * dt) / dt.sum())
            if np.isfinite(temp).any() and dt.sum() > 0
            else None
        ),
        "site_peak_mw": float(site.max()) / 1e6 if site.size else 0.0,
        "grid_peak_mw": float(grid.max()) / 1e6 if grid.size else 0.0,
        "grid_energy_mwh": grid_j / 3.6e9,
        "largest_step_mw": {"site": _steps(tl, "site_w") / 1e6, "grid": _steps(tl, "grid_w") / 1e6},
    }
    if f.grid_limit_mw is not None:
        over = grid > f.grid_limit_mw * 1e6 * (1.0 + 1e-9)
        out["grid_limit_mw"] = f.grid_limit_mw
        out["grid_over_limit_h"] = float(dt[over].sum()) / HOUR_S
        out["grid_headroom_mw"] = f.grid_limit_mw - (float(grid.max()) / 1e6 if grid.size else 0.0)
    if f.battery is not None:
        b = tl["battery_w"].to_numpy(dtype=float)[:-1]
        soc = tl["soc"].to_numpy(dtype=float)
        out["battery"] = {
            "charged_mwh": float(np.sum(np.maximum(-b, 0.0) * dt)) / 3.6e9,
            "discharged_mwh": float(np.sum(np.maximum(b, 0.0) * dt)) / 3.6e9,
            # what went in less what came out and what it holds more than at the start
            "losses_mwh": (
                float(np.sum(np.maximum(-b, 0.0) * dt))
                - float(np.sum(np.maximum(b, 0.0) * dt))
                - (float(soc[-1]) - f.battery.initial_soc) * f.battery.capacity_mwh * 3.6e9
            )
            / 3.6e9,
            "soc_min": float(soc.min()),
            "soc_max": float(soc.max()),
            "soc_end": float(soc[-1]),
            "peak_shaved_mw": (float(site.max()) - float(grid.max())) / 1e6 if site.size else 0.0,
        }
    carbon = tl["carbon_g_per_kwh"].to_numpy(dtype=float)[:-1]
    if np.isfinite(carbon).any():
        grams = float(np.sum(grid * dt * carbon)) / 3.6e6
        served = float(sum(s.get("output_tokens", 0) for s in summary["inference"].values()))
        trained = float(sum(j.get("tokens_trained") or 0.0 for j in summary["training"].values()))
        out["carbon"] = {
            "tonnes_co2e": grams / 1e6,
            "mean_g_per_kwh": grams / (grid_j / 3.6e6) if grid_j > 0 else None,
            "g_per_mtok_served": _shared(grams, summary, "serving_w", served, 1e6),
            "g_per_btok_trained": _shared(grams, summary, "training_w", trained, 1e9),
        }
    return out


def _shared(grams: float, summary: dict[str, Any], what: str, tokens: float, per: float) -> Any:
    """A share of the grams by the energy of `what` (training or serving) over the run's."""
    by = summary.get("energy_mwh_by", {})
    total = summary.get("energy_mwh") or 0.0
    key = "training" if what == "training_w" else "serving"
    if tokens <= 0 or total <= 0:
        return None
    return grams * by.get(key, 0.0) / total / (tokens / per)


# --- a training step's phases -----------------------------------------------------------------


def step_phases(
    mean_w: float, idle_w: float, tdp_w: float, compute_share: float
) -> tuple[float, float]:
    """(compute-phase, wait-phase) board power of a GPU whose step computes a share d of its
    time at a mean power `mean_w` (its job's, energy.job_compute_w): waiting at idle and
    computing at (mean - idle (1 - d)) / d, at most TDP, the wait raised to keep the mean
    where that caps it. The step's energy is the mean's: resolving the phases moves no joule."""
    d = min(max(compute_share, 0.0), 1.0)
    if d >= 1.0:
        return mean_w, mean_w
    if d <= 0.0:
        return idle_w, mean_w
    hi = (mean_w - idle_w * (1.0 - d)) / d
    if hi <= tdp_w:
        return hi, idle_w
    return tdp_w, (mean_w - tdp_w * d) / (1.0 - d)


def square_wave(
    t: np.ndarray, period_s: float, duty: float, lo: float, hi: float, phase_s: float = 0.0
) -> np.ndarray:
    """hi for the first `duty` of every period (from `phase_s`), lo for the rest."""
    x = np.mod(t - phase_s, period_s) / period_s
    return np.where(x < duty, hi, lo)


def ramp_per_s(t: np.ndarray, p: np.ndarray, window_s: float = RAMP_WINDOW_S) -> float:
    """The largest change of a sampled power within `window_s`, per second (samples at an even
    spacing that divides the window)."""
    if t.size < 2:
        return 0.0
    dt = float(t[1] - t[0])
    k = max(1, round(window_s / dt))
    if k >= p.size:
        return float(np.ptp(p)) / window_s
    from numpy.lib.stride_tricks import sliding_window_view

    win = sliding_window_view(p, k + 1)
    return float((win.max(axis=1) - win.min(axis=1)).max()) / window_s


def fundamental(t: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(Hz, amplitude) of the largest non-zero line of a sampled power's spectrum."""
    if t.size < 4:
        return 0.0, 0.0
    spec = np.fft.rfft(p - p.mean())
    freqs = np.fft.rfftfreq(p.size, float(t[1] - t[0]))
    k = int(np.argmax(np.abs(spec[1:]))) + 1
    return float(freqs[k]), float(2.0 * np.abs(spec[k]) / p.size)


def job_phases(sc: Any, spec: Any, job: dict[str, Any]) -> dict[str, float]:
    """A `power_trace` job's step: its time, compute share d (COMPUTE_PARTS over the step-time
    kernel's step), mean compute power and the two levels step_phases gives its GPUs."""
    pool = sc.pool(spec.pool)
    est = job_estimate(spec, pool)
    step = float(est.step_time_s)
    d = sum(float(est.breakdown[k]) for k in COMPUTE_PARTS) / step
    mean = job_compute_w(sc, {**job, "name": spec.name})
    hi, lo = step_phases(mean, constants(sc).idle_w, float(pool.gpu.tdp_w), d)
    return {"step_s": step, "share": d, "mean_w": mean, "hi_w": hi, "lo_w": lo}


def swings(sc: Any, summary: dict[str, Any], timeline: pd.DataFrame) -> dict[str, Any]:
    """Per job with `power_trace`: its step's phases and the swing they put on the site.

    The step's compute share d is the step-time kernel's (COMPUTE_PARTS over the step); its
    GPUs' two levels come from step_phases at the job's mean compute power; the site sees
    GPUs x (hi - lo) x the run's mean PUE each step, at 1 / step_s Hz: a rectangular wave of
    duty d whose first harmonic is 2 A sin(pi d) / pi. A power floor during the waits
    (`smoothing.gpu_power_floor_fraction` of TDP) lifts lo, and costs its extra watts over the
    job's waiting time."""
    f = sc.facility
    floor_frac = f.smoothing.gpu_power_floor_fraction if f is not None and f.smoothing else 0.0
    pue = summary.get("facility", {}).get("pue_mean") or sc.power.pue
    out: dict[str, Any] = {}
    for spec in sc.training:
        if not spec.power_trace:
            continue
        job = summary["training"][spec.name]
        ph = job_phases(sc, spec, job)
        step, d, hi, lo = ph["step_s"], ph["share"], ph["hi_w"], ph["lo_w"]
        tdp = float(sc.pool(spec.pool).gpu.tdp_w)
        floored = max(lo, floor_frac * tdp)
        gpus = float(job.get("gpus") or 0)
        swing = gpus * (hi - lo) * pue / 1e6
        swing_floor = gpus * (hi - floored) * pue / 1e6
        run_s = float(job.get("running_s") or 0.0)
        limit = None if f is None else f.ramp_limit_mw_per_s
        out[spec.name] = {
            "step_s": step,
            "compute_share": d,
            "gpu_w_compute": hi,
            "gpu_w_wait": lo,
            "swing_mw": swing,
            "ramp_mw_per_s": swing / RAMP_WINDOW_S,
            "fundamental_hz": 1.0 / step,
            "fundamental_mw": 2.0 * swing * math.sin(math.pi * d) / math.pi,
            "over_ramp_limit": None if limit is None else bool(swing / RAMP_WINDOW_S > limit),
            "floor_gpu_w": floored,
            "swing_with_floor_mw": swing_floor,
            "floor_energy_mwh": gpus * (floored - lo) * (1.0 - d) * run_s * pue / 3.6e9,
        }
    return out


def zoom(
    sc: Any, summary: dict[str, Any], power: pd.DataFrame, samples_per_step: int = 20
) -> pd.DataFrame:
    """An hour of the site's power at step resolution: the hour in which the `power_trace` jobs
    computed longest, sampled `samples_per_step` times a step; the timeline's power with each
    computing job's mean replaced by its square wave (step_phases at the hour's PUE). Empty
    without such a job."""
    traced = [j for j in sc.training if j.power_trace]
    duration = float(summary["duration_s"])
    if not traced or duration <= 0:
        return pd.DataFrame(columns=["time_s", "site_w"])
    c = constants(sc)
    t_pw = power["time_s"].to_numpy(dtype=float)
    site = power["facility_w"].to_numpy(dtype=float)
    it = power["it_w"].to_numpy(dtype=float)
    train_w = power["training_w"].to_numpy(dtype=float)
    # the hour with the most training energy: where the traced jobs computed longest
    edges = np.append(hour_edges(duration), duration)
    cum = np.concatenate(([0.0], np.cumsum(train_w[:-1] * np.diff(t_pw))))
    per_hour = np.diff(np.interp(edges, t_pw, cum))
    h0 = float(edges[int(np.argmax(per_hour))])
    h1 = min(h0 + HOUR_S, duration)
    phases = {spec.name: job_phases(sc, spec, summary["training"][spec.name]) for spec in traced}
    dt = min(ph["step_s"] for ph in phases.values()) / samples_per_step
    t = np.arange(h0, h1, dt)
    k = np.clip(np.searchsorted(t_pw, t, side="right") - 1, 0, t_pw.size - 1)
    out = site[k].copy()
    pue = np.where(it[k] > 0, site[k] / np.maximum(it[k], 1e-300), 1.0)
    for spec in traced:
        ph = phases[spec.name]
        gpus = float(summary["training"][spec.name].get("gpus") or 0)
        # computing where the job's training power is above its idle level in the timeline
        busy = train_w[k] > pue * gpus * (c.idle_w + c.overhead_w) * 1.001
        wave = square_wave(t, ph["step_s"], ph["share"], ph["lo_w"], ph["hi_w"])
        out += np.where(busy, gpus * (wave - ph["mean_w"]) * pue, 0.0)
    return pd.DataFrame({"time_s": t, "site_w": out})


def _window_service(
    sc: Any, name: str, requests: pd.DataFrame | None, a: float, b: float
) -> dict[str, Any] | None:
    """What a service's requests arriving in [a, b) got: how many, the share that met its SLO
    (dropped and unfinished ones miss it), and the output tokens of those that missed."""
    from .kernels.stats import slo_attainment

    if requests is None or not len(requests) or "service" not in requests:
        return None
    rows = requests[requests["service"] == name]
    arr = rows["arrival_s"].to_numpy(dtype=float)
    inside = (arr >= a) & (arr < b)
    if not inside.any():
        return {"requests": 0, "slo_attainment": None, "missed_tokens": 0}
    first = rows["first_token_s"].to_numpy(dtype=float)[inside]
    finish = rows["finish_s"].to_numpy(dtype=float)[inside]
    out = rows["output_tokens"].to_numpy(dtype=float)[inside]
    done = np.isfinite(finish)
    ttft = first[done] - arr[inside][done]
    o = out[done]
    tpot_all = np.where(o > 1, (finish[done] - first[done]) / np.maximum(o - 1, 1), 0.0)
    svc = next(s for s in sc.inference if s.name == name)
    ok = np.zeros(inside.sum(), dtype=bool)
    attained = None
    if svc.slo is not None:
        attained, _ = slo_attainment(
            svc.slo, ttft, tpot_all, tpot_all[o > 1], dropped=float((~done).sum())
        )
        good = np.ones(done.sum(), dtype=bool)
        if svc.slo.ttft_s is not None:
            good &= ttft <= svc.slo.ttft_s
        if svc.slo.tpot_s is not None:
            good &= tpot_all <= svc.slo.tpot_s
        ok[np.flatnonzero(done)[good]] = True
    else:
        ok = done
    return {
        "requests": int(inside.sum()),
        "slo_attainment": attained,
        "missed_tokens": int(out[~ok].sum()),
    }


def demand_response(
    records: list[dict[str, Any]],
    timeline: pd.DataFrame,
    sc: Any = None,
    requests: pd.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """Each event as planned (engine/power.py) and as the site's power did it: `met_mw` is
    the site's mean power over the event's length before it less its mean during it, `met`
    whether that is within the event's tolerance of the ask. Each service shed: its requests
    arriving during the event and over the same length before it, the share of each that met
    its SLO, and the output tokens of those that missed (dropped and unfinished requests
    included); the revenue lost is cost.serving_usd_per_mtok x the tokens missed beyond those
    missed before (None without a price)."""
    t = timeline["time_s"].to_numpy(dtype=float)
    site = timeline["site_w"].to_numpy(dtype=float)
    cum = np.concatenate(([0.0], np.cumsum(site[:-1] * np.diff(t))))

    def mean(a: float, b: float) -> float:
        a, b = max(a, float(t[0])), min(b, float(t[-1]))
        if b <= a:
            return math.nan
        return float(np.interp(b, t, cum) - np.interp(a, t, cum)) / (b - a)

    out = []
    for r in records:
        at, dur = r["at_s"], r["duration_s"]
        before, during = mean(at - dur, at), mean(at, at + dur)
        met = (before - during) / 1e6 if math.isfinite(before + during) else None
        tokens = sum(a["tokens_not_trained"] for a in r["actions"])
        price = None if sc is None else sc.cost.serving_usd_per_mtok
        services = []
        for action in r["services"]:
            was = _window_service(sc, action["service"], requests, at - dur, at)
            now = _window_service(sc, action["service"], requests, at, at + dur)
            lost = None
            if price is not None and was is not None and now is not None:
                lost = price * max(now["missed_tokens"] - was["missed_tokens"], 0) / 1e6
            services.append({**action, "before": was, "during": now, "revenue_lost_usd": lost})
        out.append(
            {
                **{k: v for k, v in r.items() if k not in ("pue", "services")},
                "services": services,
                "site_before_mw": None if math.isnan(before) else before / 1e6,
                "site_during_mw": None if math.isnan(during) else during / 1e6,
                "met_mw": met,
                "met": None if met is None else bool(met >= r["asked_mw"] - r["tolerance_mw"]),
                "tokens_not_trained": tokens,
            }
        )
    return out


def racks_summary(sc: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """The racks (cluster.racks) at full load against their budget and cooling, per pool: the
    cap that holds a rack within them (spec Scenario.rack_cap_w), its clock factor on
    compute-bound work (kernels.power.cap_slowdown), and the GPU-hours that computed under it."""
    from .kernels.power import cap_slowdown

    r = sc.cluster.racks
    pools = {}
    for pool in sc.cluster.node_pools:
        # GPU-hours that computed under the cap: the pool's jobs' capped computing time x their
        # GPUs, and its services' busy GPU-hours (a static cap holds all of them)
        worked = sum(
            float(summary["training"].get(j.name, {}).get("power_capped_s", 0.0))
            * float(summary["training"].get(j.name, {}).get("gpus") or 0)
            / 3600.0
            for j in sc.training
            if sc.pool(j.pool) is pool
        ) + sum(
            float(summary["inference"].get(v.name, {}).get("gpu_h", {}).get("busy", 0.0))
            for v in sc.inference
            if sc.pool(v.pool) is pool
        )
        full = r.nodes_per_rack * (pool.gpus_per_node * pool.gpu.tdp_w + sc.power.node_overhead_w)
        cap = sc.rack_cap_w(pool)
        pools[pool.name] = {
            "racks": math.ceil(pool.nodes / r.nodes_per_rack),
            "full_load_kw": full / 1e3,
            "limit_kw": r.limit_w() / 1e3,
            "gpu_cap_w": cap,
            "clock_slowdown": 1.0 if cap is None else float(cap_slowdown(cap, pool.gpu.tdp_w, 1.0)),
            # the pool's share of the GPU-hours that computed (training or serving)
            "throttled_gpu_h": 0.0 if cap is None else worked,
        }
    return {
        "nodes_per_rack": r.nodes_per_rack,
        "power_budget_kw": r.power_budget_kw,
        "cooling_kw": None if r.cooling is None else r.cooling.capacity_kw,
        "pools": pools,
    }


def grid_limit_summary(sc: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """What holding the site under facility.grid_limit_mw cost (spec Scenario.grid_caps): the
    site's full load at the hottest hour's PUE with and without the caps, each pool's cap and
    its clock factor, and per training job the tokens it did not train because its
    compute-bound work ran slower (its computing time at the step it would have had without the
    grid's cap, estimated as spec.job_estimate does: the same layout, the local caps only)."""
    from .kernels.power import cap_slowdown

    pools = sc.cluster.node_pools
    caps = sc.grid_caps()
    pue = sc.grid_pue_max()
    out: dict[str, Any] = {
        "limit_mw": sc.facility.grid_limit_mw,
        "pue_max": pue,
        "full_load_mw": sc.site_full_load_w() * pue / 1e6,
        "capped": caps is not None,
        "held_mw": (
            sc.site_full_load_w([sc.gpu_cap_w(p) for p in pools]) * pue / 1e6
            if caps is not None
            else sc.site_full_load_w() * pue / 1e6
        ),
        "pools": {},
        "tokens_not_trained": {},
    }

    def slowdown(cap: float | None, pool: Any) -> float:
        return 1.0 if cap is None else float(cap_slowdown(cap, pool.gpu.tdp_w, 1.0))

    for pool in pools:
        out["pools"][pool.name] = {
            "gpu_cap_w": sc.grid_cap_w(pool),
            "clock_slowdown": slowdown(sc.gpu_cap_w(pool), pool)
            / slowdown(sc.local_cap_w(pool), pool),
        }
    for spec in sc.training:
        job = summary["training"].get(spec.name, {})
        pool = sc.pool(spec.pool)
        lost = 0.0
        if sc.grid_cap_w(pool) is not None and job.get("tokens_trained"):
            capped = float(
                job_estimate(
                    spec, pool, compute_slowdown=slowdown(sc.gpu_cap_w(pool), pool)
                ).step_time_s
            )
            free = float(
                job_estimate(
                    spec, pool, compute_slowdown=slowdown(sc.local_cap_w(pool), pool)
                ).step_time_s
            )
            lost = float(job["tokens_trained"]) * (capped / free - 1.0)
        out["tokens_not_trained"][spec.name] = lost
    return out


def efficiency_by_gpu(sc: Any, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Tokens per joule and per rated watt of the work on each GPU model (its generation): the
    tokens its training jobs trained and its services served, over the energy the energy model
    gives them (IT x PUE), and per second per kW of the GPUs' rated power (TDP) while they held
    them (training: computing and recovering; serving: held)."""
    out: dict[str, dict[str, Any]] = {}

    def entry_for(pool: Any) -> dict[str, Any]:
        e = out.setdefault(
            pool.gpu.name,
            {"family": pool.gpu.family, "training": [0.0, 0.0, 0.0], "serving": [0.0, 0.0, 0.0]},
        )
        return e

    for spec in sc.training:
        job = summary["training"].get(spec.name, {})
        pool = sc.pool(spec.pool)
        e = entry_for(pool)
        held_s = float(job.get("running_s") or 0.0) + float(job.get("recovery_h") or 0.0) * 3600
        e["training"][0] += float(job.get("tokens_trained") or 0.0)
        e["training"][1] += float(job.get("energy_mwh") or 0.0) * 3.6e9
        e["training"][2] += held_s * float(job.get("gpus") or 0) * pool.gpu.tdp_w / 1e3
    for svc in sc.inference:
        s = summary["inference"].get(svc.name, {})
        pool = sc.pool(svc.pool)
        e = entry_for(pool)
        e["serving"][0] += float(s.get("output_tokens") or 0.0)
        e["serving"][1] += float(s.get("energy_mwh") or 0.0) * 3.6e9
        e["serving"][2] += float(s.get("gpu_h", {}).get("held", 0.0)) * 3600 * pool.gpu.tdp_w / 1e3
    result = {}
    for name, e in out.items():
        row: dict[str, Any] = {"family": e["family"]}
        for kind in ("training", "serving"):
            tokens, joules, kw_s = e[kind]
            row[kind] = {
                "tokens": tokens,
                "energy_mwh": joules / 3.6e9,
                "tokens_per_joule": tokens / joules if joules > 0 else None,
                "tokens_per_s_per_rated_kw": tokens / kw_s if kw_s > 0 else None,
            }
        result[name] = row
    return result
