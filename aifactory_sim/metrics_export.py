"""Dashboard metrics of a finished run: its tables resampled onto a scrape grid and written as
OpenMetrics text (`metrics.om`) and as one long Parquet table (`metrics.parquet`).

Every series is read at the instants t_k = k * interval_s from the run's start, plus the run's
end: what a Prometheus scrape every `interval_s` would have seen. A gauge takes the value in
force at t_k (the last row at or before it); a counter is the running total up to t_k, so its
last sample, at the run's end, is the run's total and agrees with the summary. Samples carry
their timestamp in seconds from the run's start, strictly increasing within each series, which
is what `promtool tsdb create-blocks-from openmetrics` asks of a file it backfills.

Names follow the exporters a real cluster runs, so that their Grafana boards read these files:
GPUs by node pool under DCGM field names (dcgm-exporter), services under vLLM's metric names,
and the simulator's own figures under `aifactory_`. Labels: `job`, `service`, `queue` (a spec's
`queue` where it has one, else "default") and `pool`; each family's definition is its HELP text
below. The engine records the cluster's gauges and power summed over its node pools, so the
GPU series of a cluster of several pools come out once, as pool="all".

This module takes the run's tables through `RunTables`, never `results.Results` itself:
`results` calls it, and an import back would be a cycle of the package's design.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import pandas as pd

from .energy import gpu_states
from .engine.telemetry import BUCKETS
from .errors import ScenarioError

if TYPE_CHECKING:
    from .spec.scenario import Scenario

#: The formats `write_metrics` writes, and the file each one goes to.
FORMATS: dict[str, str] = {"openmetrics": "metrics.om", "parquet": "metrics.parquet"}

Kind = Literal["gauge", "counter"]

#: Job events after which a job's steps run (engine/training.py: the restart that follows start,
#: a failure's recovery or a pause), and those after which they stop until the next restart.
_RUNS_FROM = frozenset({"restart"})
_STOPS_AT = frozenset({"failure", "swap", "rollback", "preempt", "pause", "failed", "finished"})

#: GPU states of energy.gpu_states, exported as aifactory_gpus{state=...}.
_GPU_STATES = ("training", "serving_busy", "serving_idle", "held_idle", "down", "free")

#: Ledger buckets and the GPU state whose time profile spreads each one over the run. The
#: ledger holds totals only; `down` and `unallocated` are exactly those states' integrals
#: (engine/telemetry.py Ledger.close), the others are spread over the GPUs that book them.
_BUCKET_PROFILE: dict[str, tuple[str, ...]] = {
    "training": ("training",),
    "data_stall": ("training",),
    "checkpoint": ("training",),
    "lost_work": ("training",),
    "recovery": ("training",),
    "queued": ("held_idle", "training"),
    "inference_busy": ("serving_busy",),
    "inference_idle": ("serving_idle",),
    "cold_start": ("serving_idle",),
    "unallocated": ("free",),
    "down": ("down",),
}


class RunTables(Protocol):
    """What the exporter reads of a run (`results.Results` has all of it)."""

    scenario: Scenario
    summary: dict[str, Any]
    timeseries: pd.DataFrame
    services: pd.DataFrame
    requests: pd.DataFrame
    power: pd.DataFrame
    events: pd.DataFrame


@dataclass(frozen=True)
class Family:
    """A metric family: its name, OpenMetrics type, unit (only where the name ends in it, as
    OpenMetrics requires) and help text."""

    name: str
    kind: Kind
    help: str
    unit: str = ""

    @property
    def sample(self) -> str:
        """The name its samples carry: a counter's ends in `_total` (OpenMetrics 1.0)."""
        return self.name + "_total" if self.kind == "counter" else self.name


@dataclass
class Series:
    family: Family
    labels: dict[str, str]
    values: np.ndarray


# --- families ----------------------------------------------------------------------------------
# DCGM field names and units: NVIDIA DCGM "Field Identifiers"
# (https://docs.nvidia.com/datacenter/dcgm/latest/dcgm-api/dcgm-api-field-ids.html) and the
# dcgm-exporter default counters file (etc/default-counters.csv, dcp-metrics-included.csv):
# DCGM_FI_DEV_GPU_UTIL gauge in %, DCGM_FI_DEV_POWER_USAGE gauge in W,
# DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter in mJ since boot (NVML
# nvmlDeviceGetTotalEnergyConsumption's unit). In OpenMetrics a counter's samples end in
# `_total`, so the last one is scraped as DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total.
GPU_UTIL = Family(
    "DCGM_FI_DEV_GPU_UTIL",
    "gauge",
    "GPU utilization (in %): the share of the pool's GPUs computing, training GPUs held by a "
    "job plus the services' iterating GPUs",
)
POWER_USAGE = Family(
    "DCGM_FI_DEV_POWER_USAGE",
    "gauge",
    "Power draw (in W): board power of the pool's GPUs, summed",
)
TOTAL_ENERGY = Family(
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "counter",
    "Total energy consumption since the run's start (in mJ): board energy of the pool's GPUs",
)
# vLLM metric names and types: vLLM "Production Metrics"
# (https://docs.vllm.ai/en/stable/usage/metrics/, vllm/engine/metrics.py): gauges
# vllm:num_requests_running, vllm:num_requests_waiting, vllm:gpu_cache_usage_perc (a fraction:
# "1 means 100 percent usage"); counters vllm:prompt_tokens_total,
# vllm:generation_tokens_total, vllm:request_success_total. vLLM labels them `model_name`.
RUNNING = Family(
    "vllm:num_requests_running",
    "gauge",
    "Number of requests running on the service's replicas (in flight, not queued)",
)
WAITING = Family(
    "vllm:num_requests_waiting",
    "gauge",
    "Number of requests waiting to be admitted (router and replica queues)",
)
KV_USAGE = Family(
    "vllm:gpu_cache_usage_perc",
    "gauge",
    "GPU KV-cache usage of the service's ready replicas, mean. 1 means 100 percent usage",
)
PROMPT_TOKENS = Family(
    "vllm:prompt_tokens",
    "counter",
    "Number of prefill tokens processed, counted when a request's first token is out",
)
GENERATION_TOKENS = Family(
    "vllm:generation_tokens",
    "counter",
    "Number of generation tokens processed, counted when a request finishes (the summary's "
    "output_tokens)",
)
REQUEST_SUCCESS = Family(
    "vllm:request_success",
    "counter",
    "Count of successfully processed requests (the summary's completed)",
)
REPLICAS = Family(
    "aifactory_service_replicas",
    "gauge",
    "Replicas of the service by state (pending, starting, ready, draining)",
)
REPLICAS_DESIRED = Family(
    "aifactory_service_replicas_desired",
    "gauge",
    "Replicas the service's autoscaler wants",
)
GPUS = Family(
    "aifactory_gpus",
    "gauge",
    "GPUs of the pool by state (energy.gpu_states): training, serving_busy, serving_idle, "
    "held_idle, down, free",
)
JOBS_RUNNING = Family("aifactory_jobs_running", "gauge", "Training jobs holding their gang")
JOBS_QUEUED = Family("aifactory_jobs_queued", "gauge", "Training jobs waiting for a gang")
LEDGER = Family(
    "aifactory_ledger_gpu_hours",
    "counter",
    "GPU-hours booked to each ledger bucket; the run's total is summary ledger_gpu_h. `down` "
    "and `unallocated` accrue as those GPUs did, the other buckets spread over the GPUs that "
    "book them (the ledger keeps totals only)",
)
TOKENS_TRAINED = Family(
    "aifactory_job_tokens_trained",
    "counter",
    "Tokens trained by the job, spread evenly over the times its steps ran (restart to "
    "failure, pause or finish); the run's total is the summary's tokens_trained",
)
FACILITY_POWER = Family(
    "aifactory_facility_power_watts",
    "gauge",
    "Facility power: IT power times PUE (energy.power_timeline)",
    "watts",
)
IT_POWER = Family(
    "aifactory_it_power_watts",
    "gauge",
    "IT power: GPUs plus node overhead (energy.power_timeline)",
    "watts",
)
FACILITY_ENERGY = Family(
    "aifactory_facility_energy_joules",
    "counter",
    "Facility energy since the run's start; the run's total is summary energy_mwh",
    "joules",
)


# --- resampling --------------------------------------------------------------------------------
def scrape_grid(duration_s: float, interval_s: float) -> np.ndarray:
    """The scrape instants: 0, interval_s, 2 interval_s, ... before the run's end, then the end
    (a shorter last step when the duration is not a whole number of intervals)."""
    n = max(math.ceil(duration_s / interval_s - 1e-9), 1)
    t = np.arange(n, dtype=float) * interval_s
    return np.append(t[t < duration_s], duration_s)


def step_at(
    times: np.ndarray, values: np.ndarray, t: np.ndarray, before: float = 0.0
) -> np.ndarray:
    """A step function (each value holds from its time on) read at `t`; `before` ahead of the
    first row."""
    i = np.searchsorted(times, t, side="right") - 1
    if values.size == 0:
        return np.full(t.size, before)
    return np.where(i >= 0, values[np.maximum(i, 0)], before)


def step_integral_at(times: np.ndarray, rates: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Running integral of a step function (each rate holds from its time to the next) at `t`;
    zero ahead of the first row, the last rate holding on after the last row."""
    if times.size == 0:
        return np.zeros(t.size)
    cum = np.concatenate([[0.0], np.cumsum(rates[:-1] * np.diff(times))])
    i = np.searchsorted(times, t, side="right") - 1
    k = np.maximum(i, 0)
    return np.where(i >= 0, cum[k] + rates[k] * (t - times[k]), 0.0)


def events_total_at(times: np.ndarray, weights: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Running total at `t` of weights counted at their times (a time at t counts)."""
    ok = np.isfinite(times)
    order = np.argsort(times[ok], kind="stable")
    ts, cum = times[ok][order], np.concatenate([[0.0], np.cumsum(weights[ok][order])])
    return cum[np.searchsorted(ts, t, side="right")]


def spread_total(total: float, profile: np.ndarray, t_end: float, t: np.ndarray) -> np.ndarray:
    """A run's `total` as a running total that grows like `profile` (a running integral on the
    grid `t`, whose last point is the end): uniform in time when the profile never grows. The
    last value is `total` exactly (c / c is 1 in IEEE arithmetic)."""
    if total == 0.0:
        return np.zeros(t.size)
    end = float(profile[-1])
    if end > 0.0:
        return total * (profile / end)
    return total * (t / t_end)


# --- the run's series --------------------------------------------------------------------------
def queue_of(spec: Any) -> str:
    """A job's or service's queue: its spec's `queue` where it has one, else "default"."""
    q = getattr(spec, "queue", None)
    return str(q) if q else "default"


def _pool_label(sc: Scenario) -> tuple[str, int]:
    """The `pool` label of cluster-wide series and the GPUs behind it. The engine records the
    cluster's gauges and power summed over its pools, so a cluster of several pools is
    exported as one series, pool="all"."""
    pools = sc.cluster.node_pools
    return (pools[0].name if len(pools) == 1 else "all"), sum(p.gpus for p in pools)


def _service_specs(sc: Scenario) -> dict[str, Any]:
    """Each timeseries name of a service (a disaggregated one's sides: `name/prefill`,
    `name/decode`) and the spec it runs."""
    out: dict[str, Any] = {}
    for spec in sc.inference:
        out[spec.name] = spec
        if getattr(spec, "disaggregation", None) is not None:
            for side in ("prefill", "decode"):
                out[f"{spec.name}/{side}"] = spec.side(side)
    return out


def _job_intervals(ev: pd.DataFrame | None, end_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The times a job's steps ran, from its rows of the events table: (starts, ends)."""
    if ev is None or ev.empty:
        return np.zeros(0), np.zeros(0)
    ev = ev.sort_values("time_s", kind="stable")
    starts, ends = [], []
    open_at: float | None = None
    # one pass over a job's events: tens, not a series' 10^4 samples
    for time_s, kind in zip(ev["time_s"].to_numpy(dtype=float), ev["event"], strict=True):
        if kind in _RUNS_FROM and open_at is None:
            open_at = time_s
        elif kind in _STOPS_AT and open_at is not None:
            starts.append(open_at)
            ends.append(time_s)
            open_at = None
    if open_at is not None:
        starts.append(open_at)
        ends.append(end_s)
    return np.asarray(starts, dtype=float), np.asarray(ends, dtype=float)


@dataclass
class _Collector:
    t: np.ndarray
    series: list[Series] = field(default_factory=list)

    def add(self, family: Family, labels: Mapping[str, str], values: np.ndarray) -> None:
        self.series.append(Series(family, dict(labels), np.asarray(values, dtype=float)))


def collect(run: RunTables, interval_s: float) -> tuple[np.ndarray, list[Series]]:
    """The scrape grid and every exported series on it."""
    sc = run.scenario
    summary = run.summary
    duration = float(summary["duration_s"])
    t = scrape_grid(duration, interval_s)
    out = _Collector(t)
    pool, gpus = _pool_label(sc)
    at_pool = {"pool": pool}

    # GPUs, power, energy: the cluster's step functions (energy.py builds them)
    states = gpu_states(run.timeseries, run.services, gpus, duration)
    st = states["time_s"].to_numpy(dtype=float)
    state_at = {k: step_at(st, states[k].to_numpy(dtype=float), t) for k in _GPU_STATES}
    state_gpu_s = {k: step_integral_at(st, states[k].to_numpy(dtype=float), t) for k in _GPU_STATES}
    busy = state_at["training"] + state_at["serving_busy"]
    out.add(GPU_UTIL, at_pool, 100.0 * busy / gpus if gpus else np.zeros(t.size))
    for k in _GPU_STATES:
        out.add(GPUS, {**at_pool, "state": k}, state_at[k])
    power = run.power.sort_values("time_s", kind="stable")
    pt = power["time_s"].to_numpy(dtype=float)
    if pt.size:
        out.add(POWER_USAGE, at_pool, step_at(pt, power["gpu_w"].to_numpy(dtype=float), t))
        gpu_j = step_integral_at(pt, power["gpu_w"].to_numpy(dtype=float), t)
        out.add(TOTAL_ENERGY, at_pool, 1e3 * gpu_j)
        out.add(IT_POWER, at_pool, step_at(pt, power["it_w"].to_numpy(dtype=float), t))
        facility_w = power["facility_w"].to_numpy(dtype=float)
        out.add(FACILITY_POWER, at_pool, step_at(pt, facility_w, t))
        out.add(FACILITY_ENERGY, at_pool, step_integral_at(pt, facility_w, t))

    # the ledger, bucket by bucket
    for bucket in BUCKETS:
        total = float(summary["ledger_gpu_h"].get(bucket, 0.0))
        profile = np.zeros(t.size)
        for state in _BUCKET_PROFILE.get(bucket, ()):
            if state_gpu_s[state][-1] > 0.0:
                profile = state_gpu_s[state]
                break
        out.add(LEDGER, {**at_pool, "bucket": bucket}, spread_total(total, profile, duration, t))

    # training jobs
    specs = {j.name: j for j in sc.training}
    queues = {queue_of(specs.get(name)) for name in summary["training"]} or {"default"}
    jobs_queue = next(iter(queues)) if len(queues) == 1 else "all"
    ts = run.timeseries.sort_values("time_s", kind="stable")
    tt = ts["time_s"].to_numpy(dtype=float)
    for fam, key in ((JOBS_RUNNING, "running_jobs"), (JOBS_QUEUED, "queued_jobs")):
        out.add(fam, {"queue": jobs_queue}, step_at(tt, ts[key].to_numpy(dtype=float), t))
    events = run.events
    by_job = dict(iter(events.groupby("job", sort=False))) if len(events) else {}
    for name, job in summary["training"].items():
        spec = specs.get(name)
        labels = {
            "job": name,
            "queue": queue_of(spec),
            "pool": sc.pool(getattr(spec, "pool", None)).name,
        }
        a, b = _job_intervals(by_job.get(name), duration)
        # running time of the job's steps up to each scrape: the sum over its intervals
        ran = np.clip(t[:, None] - a[None, :], 0.0, (b - a)[None, :]).sum(axis=1)
        tokens = float(job.get("tokens_trained") or 0.0)
        out.add(TOKENS_TRAINED, labels, spread_total(tokens, ran, duration, t))

    # services: their tick rows, and their requests
    service_specs = _service_specs(sc)
    requests = run.requests
    rows_by = dict(iter(run.services.groupby("service", sort=False))) if len(run.services) else {}
    for name, rows in rows_by.items():
        spec = service_specs.get(str(name))
        labels = {
            "service": str(name),
            "model_name": str(getattr(getattr(spec, "model", None), "name", "") or name),
            "queue": queue_of(spec),
            "pool": sc.pool(getattr(spec, "pool", None)).name,
        }
        rows = rows.sort_values("time_s", kind="stable")
        rt = rows["time_s"].to_numpy(dtype=float)

        def col(c: str, rows: pd.DataFrame = rows) -> np.ndarray:
            return rows[c].to_numpy(dtype=float)

        queued = col("queued")
        out.add(RUNNING, labels, step_at(rt, np.maximum(col("in_flight") - queued, 0.0), t))
        out.add(WAITING, labels, step_at(rt, queued, t))
        out.add(KV_USAGE, labels, step_at(rt, col("kv_used"), t))
        for state in ("pending", "starting", "ready", "draining"):
            out.add(REPLICAS, {**labels, "state": state}, step_at(rt, col(state), t))
        out.add(REPLICAS_DESIRED, labels, step_at(rt, col("desired"), t))
    for name, svc in summary["inference"].items():
        spec = service_specs.get(name)
        labels = {
            "service": name,
            "model_name": str(getattr(getattr(spec, "model", None), "name", "") or name),
            "queue": queue_of(spec),
            "pool": sc.pool(getattr(spec, "pool", None)).name,
        }
        mine = requests[requests["service"] == name] if len(requests) else requests
        if len(mine):
            first = mine["first_token_s"].to_numpy(dtype=float)
            finish = mine["finish_s"].to_numpy(dtype=float)
            out.add(
                PROMPT_TOKENS,
                labels,
                events_total_at(first, mine["prompt_tokens"].to_numpy(dtype=float), t),
            )
            out.add(
                GENERATION_TOKENS,
                labels,
                events_total_at(finish, mine["output_tokens"].to_numpy(dtype=float), t),
            )
            out.add(REQUEST_SUCCESS, labels, events_total_at(finish, np.ones(finish.size), t))
        else:
            # the fluid tier keeps no requests: its totals accrue as its GPUs iterated
            busy_gpu_s = np.zeros(t.size)
            for rname, rows in rows_by.items():
                if rname == name or str(rname).startswith(f"{name}/"):
                    rows = rows.sort_values("time_s", kind="stable")
                    busy_gpu_s += _tick_integral_at(
                        rows["time_s"].to_numpy(dtype=float),
                        rows["busy_gpus"].to_numpy(dtype=float),
                        t,
                    )
            for fam, key in ((GENERATION_TOKENS, "output_tokens"), (REQUEST_SUCCESS, "completed")):
                out.add(fam, labels, spread_total(float(svc[key]), busy_gpu_s, duration, t))
    return t, out.series


def _tick_integral_at(times: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Running integral at `t` of tick means, each row's value covering the tick that ends at
    its time (energy._busy_at reads them so)."""
    if times.size == 0:
        return np.zeros(t.size)
    # the value of row i holds over (time_{i-1}, time_i]: a step function from time_{i-1} on
    starts = np.concatenate([[0.0], times[:-1]])
    return step_integral_at(starts, values, np.minimum(t, times[-1]))


# --- writers -----------------------------------------------------------------------------------
def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_text(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def _numbers(values: np.ndarray) -> np.ndarray:
    """Shortest round-tripping decimal text of each float (numpy's Dragon4, vectorised)."""
    return np.asarray(values, dtype=float).astype(str)


def openmetrics_text(t: np.ndarray, series: Sequence[Series]) -> str:
    """The series as an OpenMetrics text exposition: each family once, its series one after
    another, each series' samples in time order, then `# EOF`."""
    stamps = _numbers(t)
    families: dict[str, list[Series]] = {}
    for s in series:
        families.setdefault(s.family.name, []).append(s)
    parts: list[str] = []
    for members in families.values():
        fam = members[0].family
        parts.append(f"# TYPE {fam.name} {fam.kind}\n")
        if fam.unit:
            parts.append(f"# UNIT {fam.name} {fam.unit}\n")
        parts.append(f"# HELP {fam.name} {_escape(fam.help)}\n")
        for s in members:
            head = np.str_(f"{fam.sample}{_label_text(s.labels)} ")
            lines = np.char.add(np.char.add(np.char.add(head, _numbers(s.values)), " "), stamps)
            parts.append("\n".join(lines.tolist()) + "\n")
    parts.append("# EOF\n")
    return "".join(parts)


def long_table(t: np.ndarray, series: Iterable[Series]) -> pd.DataFrame:
    """One row per sample: metric (the sample name, as in metrics.om), type, one column per
    label name (null where a series has no such label), time_s, value."""
    series = list(series)
    names = sorted({k for s in series for k in s.labels})
    n = t.size
    frames = []
    for s in series:
        cols: dict[str, Any] = {
            "metric": np.repeat(s.family.sample, n),
            "type": np.repeat(s.family.kind, n),
        }
        for k in names:
            cols[k] = [s.labels.get(k)] * n
        cols["time_s"] = t
        cols["value"] = s.values
        frames.append(pd.DataFrame(cols))
    columns = ["metric", "type", *names, "time_s", "value"]
    if not frames:
        return pd.DataFrame(columns=columns)
    table = pd.concat(frames, ignore_index=True)[columns]
    for c in ("metric", "type", *names):
        table[c] = table[c].astype("category")
    return table


def write_metrics(
    results: RunTables,
    folder: str | Path,
    formats: Sequence[str] = ("openmetrics", "parquet"),
    interval_s: float = 60.0,
) -> list[Path]:
    """Write the run's metrics to `folder` in each of `formats` (FORMATS: metrics.om,
    metrics.parquet), sampled every `interval_s` from the run's start; the files written."""
    formats = list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ScenarioError(
            f"telemetry.export: unknown format {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(FORMATS)}"
        )
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise ScenarioError(f"telemetry.interval_s must be positive, got {interval_s}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t, series = collect(results, float(interval_s))
    written = []
    for fmt in dict.fromkeys(formats):
        path = folder / FORMATS[fmt]
        if fmt == "openmetrics":
            path.write_text(openmetrics_text(t, series))
        else:
            long_table(t, series).to_parquet(path, engine="pyarrow", index=False)
        written.append(path)
    return written
