"""Figures from Results; each returns a matplotlib Figure. matplotlib is imported lazily."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from matplotlib.figure import Figure


#: Bucket colours: productive work green, overheads warm, idle grey.
COLOURS = {
    "training": "#2e7d32",
    "data_stall": "#f9a825",
    "checkpoint": "#fb8c00",
    "lost_work": "#c62828",
    "recovery": "#8e24aa",
    "queued": "#6d4c41",
    "inference_busy": "#1565c0",
    "inference_idle": "#90caf9",
    "cold_start": "#00838f",
    "unallocated": "#9e9e9e",
    "down": "#212121",
}


def _job_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def _service_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]  # distinct hues; tab20 pairs a dark and a light shade
    return [cmap(i % 10) for i in range(n)]


def _figure(**kw: Any) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=kw.pop("figsize", (8, 4.5)), layout="constrained", **kw)


def _time_scale(t_end: float) -> tuple[float, str]:
    """Seconds per x unit and its name: days for runs over two days, else hours."""
    return (86400.0, "days") if t_end > 2 * 86400 else (3600.0, "hours")


def _ecdf(values: Any, max_points: int = 4000) -> tuple[Any, Any]:
    """Empirical CDF of the finite values as (x, F) for a post-step line from (x_min, 0) to
    (x_max, 1); past `max_points` samples it keeps evenly spaced ranks (the last included)."""
    import numpy as np

    x = np.sort(np.asarray(values, dtype=float)[np.isfinite(values)])
    n = x.size
    if n == 0:
        return x, x
    rank = np.arange(n)
    if n > max_points:
        rank = np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))
    return np.r_[x[0], x[rank]], np.r_[0.0, (rank + 1) / n]


def _held(times: Any, values: Any, t_end: float) -> tuple[Any, Any]:
    """A state sampled at `times` (each value holds until the next sample, the last until
    `t_end`) as points for a post-step line, so that a single sample still draws a segment."""
    import numpy as np

    t = np.asarray(times, dtype=float)
    v = np.asarray(values, dtype=float)
    if t.size and t_end > t[-1]:
        t, v = np.r_[t, t_end], np.r_[v, v[-1]]
    if v.size > 2:  # a post-step line is the same without the samples that repeat a value
        keep = np.r_[True, v[1:] != v[:-1]]
        keep[-1] = True
        t, v = t[keep], v[keep]
    return t, v


#: A rate drawn as stairs over more ticks than this is drawn as the mean over groups of ticks.
MAX_STAIRS = 4000


def _coarse_stairs(values: Any, edges: Any) -> tuple[Any, Any]:
    """(values, edges) of a stairs plot, in at most MAX_STAIRS steps: each step the time-
    weighted mean of the ticks it groups (a month of 15 s ticks is 172,800 steps, seconds to
    draw, and finer than a figure shows)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    e = np.asarray(edges, dtype=float)
    if v.size <= MAX_STAIRS:
        return v, e
    k = -(-v.size // MAX_STAIRS)
    starts = np.arange(0, v.size, k)
    w = np.diff(e)
    sums = np.add.reduceat(v * w, starts)
    widths = np.add.reduceat(w, starts)
    return sums / np.where(widths > 0, widths, 1.0), np.r_[e[starts], e[-1]]


class Plotted(Protocol):
    """What the figures read of a run (results.Results has it; named here so that `plots` and
    `results` do not import each other). Tables such as `requests` and `services` are looked
    up by name where a figure needs them."""

    @property
    def summary(self) -> dict[str, Any]: ...
    @property
    def events(self) -> Any: ...
    @property
    def power(self) -> Any: ...
    @property
    def timeseries(self) -> Any: ...


class Plotter:
    """`res.plot.ledger()`, `res.plot.allocation()`, ... and, for inference services,
    `res.plot.latency()`, `res.plot.replicas()`, `res.plot.kv_cache()`."""

    def __init__(self, results: Plotted):
        self.results = results

    # --- inference services: shared lookups ----------------------------------------------
    def _frame(self, attr: str) -> Any:
        import pandas as pd

        df = getattr(self.results, attr, None)
        return pd.DataFrame(columns=["service"]) if df is None or "service" not in df else df

    def _service_specs(self) -> dict[str, Any]:
        scenario = getattr(self.results, "scenario", None)
        return {svc.name: svc for svc in (getattr(scenario, "inference", None) or [])}

    def _services(self, service: str | None) -> list[str]:
        """The services to draw, in the scenario's order: all of them, or the named one."""
        names = list(self._service_specs())
        for name in self.results.summary.get("inference") or {}:
            if name not in names:
                names.append(name)
        for attr in ("services", "requests"):
            for name in self._frame(attr)["service"].unique():
                if name not in names:
                    names.append(str(name))
        if service is None:
            return names
        if service not in names:
            raise ValueError(
                f"no inference service {service!r}; allowed: "
                f"{', '.join(names) or 'none (this run has no services)'}"
            )
        return [service]

    def ledger(self) -> Figure:
        """Waterfall of the GPU-hour ledger: from all GPU-hours down to productive training."""
        s = self.results.summary
        ledger = s["ledger_gpu_h"]
        total = sum(ledger.values())
        fig = _figure()
        ax = fig.subplots()
        order = [b for b in ledger if b != "training" and ledger[b] > 0]
        labels = ["all GPU-hours", *order, "training"]
        level = total
        ax.bar(0, total, color="#455a64")
        ax.text(0, total, f"{total:,.0f}", ha="center", va="bottom", fontsize=8)
        for i, b in enumerate(order, start=1):
            level -= ledger[b]
            ax.bar(i, ledger[b], bottom=level, color=COLOURS[b])
            ax.text(
                i,
                level + ledger[b],
                f"-{ledger[b] / total:.1%}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.bar(len(labels) - 1, ledger["training"], color=COLOURS["training"])
        ax.text(
            len(labels) - 1,
            ledger["training"],
            f"{ledger['training'] / total:.1%}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
        ax.set_xticks(range(len(labels)), [lab.replace("_", " ") for lab in labels], rotation=20)
        ax.set_ylabel("GPU-hours")
        ax.set_title(f"{s['scenario']}: where the GPU-hours went")
        return fig

    def allocation(self) -> Figure:
        """GPUs held by each training job over time, stacked, then by inference services, with
        the GPUs down in repair, against the cluster's size."""
        import numpy as np

        s = self.results.summary
        t_end = s["duration_s"]
        scale, unit = _time_scale(t_end)
        ts = getattr(self.results, "timeseries", None)
        ts_t = np.zeros(0)
        gauges: dict[str, np.ndarray] = {}
        if ts is not None and len(ts):
            ts_t = np.asarray(ts["time_s"], dtype=float)
            gauges = {
                c: np.nan_to_num(np.asarray(ts[c], dtype=float))
                for c in ("serving_gpus", "down_gpus", "training_gpus")
                if c in ts.columns
            }
        gauges = {c: v for c, v in gauges.items() if v.any()}

        def step_at(column: str, at: np.ndarray) -> np.ndarray:
            """The timeseries' step function `column` at times `at`."""
            k = np.searchsorted(ts_t, at, side="right") - 1
            return np.where(k >= 0, gauges[column][np.maximum(k, 0)], 0.0)

        jobs = [(name, j) for name, j in s["training"].items() if j["started_at_s"] is not None]
        changes: list[float] = []
        if gauges:  # the rows where a drawn gauge moves (a row may record another column)
            moved = np.zeros(ts_t.size, dtype=bool)
            for v in gauges.values():
                moved[1:] |= v[1:] != v[:-1]
            changes = ts_t[moved & (ts_t > 0) & (ts_t < t_end)].tolist()
        edges = sorted(
            {
                0.0,
                t_end,
                *(j["started_at_s"] for _, j in jobs),
                *(j["finished_at_s"] for _, j in jobs if j["finished_at_s"] is not None),
                *changes,
            }
        )
        edges_arr = np.asarray(edges)
        mid = (edges_arr[:-1] + edges_arr[1:]) / 2
        fig = _figure()
        ax = fig.subplots()
        base = np.zeros(mid.size)
        cmap = _job_colours(len(jobs))
        nominal = []
        for _, j in jobs:
            end = t_end if j["finished_at_s"] is None else j["finished_at_s"]
            nominal.append(np.where((mid >= j["started_at_s"]) & (mid < end), j["gpus"], 0))
        # What the jobs really held (narrower after a failure or a lend to serving): the
        # timeseries' training total, shared among the running jobs by their nominal sizes.
        scale_held = np.ones(mid.size)
        if "training_gpus" in gauges and nominal:
            total = np.sum(nominal, axis=0)
            scale_held = np.where(
                total > 0, step_at("training_gpus", mid) / np.maximum(total, 1), 1.0
            )
        for (name, _j), colour, nom in zip(jobs, cmap, nominal, strict=True):
            held = nom * scale_held
            ax.stairs(
                base + held, edges_arr / scale, baseline=base, fill=True, color=colour, label=name
            )
            base = base + held
        if "serving_gpus" in gauges:
            serving = step_at("serving_gpus", mid)
            ax.stairs(
                base + serving,
                edges_arr / scale,
                baseline=base,
                fill=True,
                color=COLOURS["inference_busy"],
                label="inference services",
            )
        if "down_gpus" in gauges:
            ax.stairs(
                step_at("down_gpus", mid),
                edges_arr / scale,
                color=COLOURS["down"],
                lw=1.2,
                label="down (in repair)",
            )
        ax.axhline(s["gpus"], color="k", lw=1, ls="--", label="cluster GPUs")
        ax.set_xlim(0, t_end / scale)
        ax.set_ylim(0, s["gpus"] * 1.3)  # room for the legend above the cluster line
        ax.set_xlabel(f"simulated time ({unit})")
        ax.set_ylabel("GPUs")
        held_by = (
            "training jobs and inference services" if "serving_gpus" in gauges else "training jobs"
        )
        ax.set_title(f"{s['scenario']}: GPUs held by {held_by}")
        ax.legend(loc="upper right", fontsize=8, ncols=3)
        return fig

    def timeline(self) -> Figure:
        """One row per job: when it ran, with its failures, checkpoints and restarts marked."""
        s = self.results.summary
        events = self.results.events
        t_end = s["duration_s"]
        scale, unit = _time_scale(t_end)
        names = list(s["training"])
        fig = _figure(figsize=(9, 1.2 + 0.45 * max(len(names), 1)))
        ax = fig.subplots()
        # marker, colour, label, vertical offset within the row, drawing order
        marks = {
            "checkpoint": ("|", "#fb8c00", "checkpoint", 0.0, 2),
            "restart": ("^", "#8e24aa", "restart", 0.22, 3),
            "preempt": ("v", "#6d4c41", "preempted", -0.22, 3),
            "resize": ("D", "#00838f", "resized", -0.22, 3),
            "failure": ("x", "#c62828", "failure", 0.0, 4),
        }
        seen: set[str] = set()
        for row, name in enumerate(names):
            j = s["training"][name]
            if j["started_at_s"] is not None:
                end = t_end if j["finished_at_s"] is None else j["finished_at_s"]
                ax.barh(
                    row,
                    (end - j["started_at_s"]) / scale,
                    left=j["started_at_s"] / scale,
                    height=0.5,
                    color=COLOURS["training"],
                    alpha=0.35,
                )
            if j["submitted_at_s"] is not None and j["started_at_s"] is not None:
                ax.barh(
                    row,
                    (j["started_at_s"] - j["submitted_at_s"]) / scale,
                    left=j["submitted_at_s"] / scale,
                    height=0.2,
                    color=COLOURS["queued"],
                )
            mine = events[events["job"] == name] if len(events) else events
            for kind, (marker, colour, label, dy, order) in marks.items():
                times = mine[mine["event"] == kind]["time_s"] if len(mine) else []
                if kind == "checkpoint" and len(times) > 200:  # a solid smear says nothing
                    ax.text(
                        0.005 * t_end / scale,
                        row - 0.3,
                        f"{len(times):,} checkpoints",
                        fontsize=7,
                        color=colour,
                        va="bottom",
                    )
                    continue
                if len(times):
                    ax.scatter(
                        [t / scale for t in times],
                        [row + dy] * len(times),
                        marker=marker,
                        color=colour,
                        s=60 if kind == "checkpoint" else 28,
                        zorder=order,
                        label=None if kind in seen else label,
                        linewidths=1.2,
                    )
                    seen.add(kind)
        ax.set_yticks(range(len(names)), names)
        ax.set_ylim(-0.7, len(names) - 0.3)
        ax.invert_yaxis()
        ax.set_xlim(0, t_end / scale)
        ax.set_xlabel(f"simulated time ({unit})")
        ax.set_title(f"{s['scenario']}: job timeline")
        if seen:
            ax.legend(loc="upper right", fontsize=8, ncols=len(seen))
        return fig

    def ettr(self) -> Figure:
        """Each job's time since its first start, split: productive, lost, recovery, other."""
        s = self.results.summary
        jobs = [(n, j) for n, j in s["training"].items() if j["ettr"] is not None]
        fig = _figure(figsize=(8, 1.6 + 0.5 * max(len(jobs), 1)))
        ax = fig.subplots()
        for row, (_name, j) in enumerate(jobs):
            end = s["duration_s"] if j["finished_at_s"] is None else j["finished_at_s"]
            since_h = (end - j["started_at_s"]) / 3600.0
            parts = [
                ("productive", j["ettr"] * since_h, COLOURS["training"]),
                ("lost work", j["lost_work_h"], COLOURS["lost_work"]),
                ("recovery", j["recovery_h"], COLOURS["recovery"]),
            ]
            left = 0.0
            for label, hours, colour in parts:
                share = hours / since_h if since_h else 0.0
                ax.barh(row, share, left=left, color=colour, label=label if row == 0 else None)
                left += share
            ax.barh(
                row,
                max(1.0 - left, 0.0),
                left=left,
                color=COLOURS["checkpoint"],
                label="checkpoints, stalls, waits" if row == 0 else None,
            )
            ax.text(1.01, row, f"ETTR {j['ettr']:.1%}", va="center", fontsize=8)
        ax.set_yticks(range(len(jobs)), [n for n, _ in jobs])
        ax.invert_yaxis()
        ax.set_xlim(0, 1.15)
        ax.set_xlabel("share of time since first start")
        ax.set_title(f"{s['scenario']}: effective training time ratio")
        if jobs:
            fig.legend(loc="outside lower center", fontsize=8, ncols=4)
        return fig

    # --- inference services ----------------------------------------------------------------
    def latency(self, service: str | None = None) -> Figure:
        """Empirical CDFs of TTFT, TPOT and end-to-end latency over completed requests, one line
        per service, with each SLO target (vertical) at its percentile (horizontal)."""
        import numpy as np

        s = self.results.summary
        names = self._services(service)
        specs = self._service_specs()
        stats = s.get("inference") or {}
        req = self._frame("requests")
        fig = _figure(figsize=(13, 4.8))
        axes = fig.subplots(1, 3, sharey=True)
        colours = _service_colours(len(names))
        panels = (
            ("ttft", "TTFT: arrival to first token"),
            ("tpot", "TPOT: time per output token after the first"),
            ("e2e", "E2E: arrival to last token"),
        )
        samples: dict[str, list[np.ndarray]] = {key: [] for key, _ in panels}
        empty: list[str] = []
        for name, colour in zip(names, colours, strict=True):
            mine = req[req["service"] == name] if len(req) else req
            lat = _latencies(mine)
            if not lat["e2e"].size:
                empty.append(name)
                continue
            slo = getattr(specs.get(name), "slo", None)
            attained = stats.get(name, {}).get("slo_attainment")
            label = name if attained is None else f"{name} (SLO attainment {attained:.1%})"
            for ax, (key, _title) in zip(axes, panels, strict=True):
                x, f = _ecdf(lat[key] * 1e3)
                if not x.size:
                    continue
                samples[key].append(x)
                ax.plot(
                    x,
                    f,
                    drawstyle="steps-post",
                    color=colour,
                    lw=1.6,
                    label=label,
                    gid=f"cdf:{name}",
                )
                target = getattr(slo, f"{key}_s", None)  # None also without an SLO
                if slo is None or target is None:
                    continue
                met = stats.get(name, {}).get("slo_met", {}).get(key)
                verdict = "" if met is None else (" met" if met else " missed")
                ax.axvline(
                    target * 1e3,
                    color=colour,
                    ls="--",
                    lw=1.2,
                    gid=f"slo:{name}",
                    label=f"{name} target {target * 1e3:g} ms at p{slo.percentile:g}{verdict}",
                )
                ax.axhline(
                    slo.percentile / 100.0, color=colour, ls=":", lw=1.0, gid=f"percentile:{name}"
                )
        for ax, (key, title) in zip(axes, panels, strict=True):
            x_all = np.concatenate(samples[key]) if samples[key] else np.zeros(0)
            positive = x_all[x_all > 0]
            if positive.size and positive.max() / positive.min() > 20:
                ax.set_xscale("log")  # latencies span decades under load
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(f"{key.upper()} (ms)")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="lower right", fontsize=7)
            if not samples[key]:
                ax.text(
                    0.5,
                    0.5,
                    "no completed request",
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    color="#757575",
                )
        axes[0].set_ylabel("share of completed requests")
        if empty:
            fig.text(
                0.01, 0.01, "no completed request: " + ", ".join(empty), fontsize=8, color="#757575"
            )
        fig.suptitle(f"{s['scenario']}: request latency, empirical CDF")
        return fig

    def replicas(self, service: str | None = None) -> Figure:
        """Per service over time: replicas ready, provisioned (starting + ready + draining) and
        desired by the autoscaler, its min/max bounds, and the arrival rate (right axis)."""
        import numpy as np

        s = self.results.summary
        t_end = s["duration_s"]
        scale, unit = _time_scale(t_end)
        names = self._services(service)
        specs = self._service_specs()
        svc = self._frame("services")
        fig = _figure(figsize=(9, 1.2 + 2.8 * max(len(names), 1)))
        axes = fig.subplots(max(len(names), 1), 1, sharex=True, squeeze=False)[:, 0]
        for ax, name in zip(axes, names, strict=False):
            rows = svc[svc["service"] == name].sort_values("time_s", kind="stable")
            t = rows["time_s"].to_numpy(dtype=float)
            col = {
                c: rows[c].to_numpy(dtype=float) if c in rows else np.full(t.size, np.nan)
                for c in ("arrivals_rps", "starting", "ready", "draining", "desired")
            }
            provisioned = col["starting"] + col["ready"] + col["draining"]
            for values, label, colour, ls in (
                (
                    provisioned,
                    "provisioned (starting + ready + draining)",
                    COLOURS["cold_start"],
                    "-",
                ),
                (col["ready"], "ready", COLOURS["inference_busy"], "-"),
                (col["desired"], "desired (autoscaler)", "#6a1b9a", "-."),
            ):
                x, y = _held(t, values, t_end)
                ax.plot(
                    x / scale, y, drawstyle="steps-post", color=colour, ls=ls, lw=1.6, label=label
                )
            auto = getattr(specs.get(name), "autoscaler", None)
            if auto is not None:
                ax.axhline(
                    auto.min_replicas,
                    color="#616161",
                    ls="--",
                    lw=1,
                    label=f"min_replicas {auto.min_replicas}",
                )
                ax.axhline(
                    auto.max_replicas,
                    color="#212121",
                    ls="--",
                    lw=1,
                    label=f"max_replicas {auto.max_replicas}",
                )
            rate = ax.twinx()
            # A row's rate is over the tick that ends at its time; the first row (deployment)
            # and a last one at the end of the run (the closing sample) measure no tick.
            rt, rps = t, col["arrivals_rps"]
            if rt.size and rt[-1] >= t_end:
                rt, rps = rt[:-1], rps[:-1]
            if rt.size > 1:
                steps, edges = _coarse_stairs(np.nan_to_num(rps[1:]), rt)
                rate.stairs(
                    steps,
                    edges / scale,
                    baseline=None,
                    color="#ef6c00",
                    alpha=0.7,
                    lw=1.2,
                    label="arrivals",
                )
            rate.set_ylabel("arrivals (requests/s)", color="#ef6c00")
            peak = np.nanmax(np.r_[rps[1:], 0.0]) if rt.size > 1 else 0.0
            rate.set_ylim(0, peak * 1.35 if peak > 0 else 1.0)  # both clear of the legend
            top = np.nanmax(
                np.r_[
                    provisioned,
                    col["desired"],
                    col["ready"],
                    1.0,
                    [] if auto is None else [auto.max_replicas],
                ]
            )
            ax.set_ylim(0, top * 1.35 + 0.5)  # room for the legend
            ax.set_ylabel("replicas")
            ax.set_title(name, fontsize=10)
            handles, labels = ax.get_legend_handles_labels()
            h2, l2 = rate.get_legend_handles_labels()
            ax.legend(handles + h2, labels + l2, loc="upper left", fontsize=7, ncols=3)
        axes[-1].set_xlim(0, t_end / scale)
        axes[-1].set_xlabel(f"simulated time ({unit})")
        fig.suptitle(f"{s['scenario']}: replicas and arrival rate")
        return fig

    def kv_cache(self, service: str | None = None) -> Figure:
        """KV-cache use (mean over ready replicas) and requests in flight, per service."""
        s = self.results.summary
        t_end = s["duration_s"]
        scale, unit = _time_scale(t_end)
        names = self._services(service)
        svc = self._frame("services")
        fig = _figure(figsize=(9, 6))
        kv_ax, load_ax = fig.subplots(2, 1, sharex=True)
        for name, colour in zip(names, _service_colours(len(names)), strict=True):
            rows = svc[svc["service"] == name].sort_values("time_s", kind="stable")
            if not len(rows):
                continue
            t = rows["time_s"].to_numpy(dtype=float)
            for ax, column, ls, label in (
                (kv_ax, "kv_used", "-", name),
                (load_ax, "in_flight", "-", f"{name}: in flight (queued or running)"),
                (load_ax, "queued", ":", f"{name}: in the router's queue"),
            ):
                if column not in rows:
                    continue
                x, y = _held(t, rows[column].to_numpy(dtype=float), t_end)
                ax.plot(
                    x / scale, y, drawstyle="steps-post", color=colour, ls=ls, lw=1.4, label=label
                )
        kv_ax.set_ylim(0, 1.05)
        kv_ax.set_ylabel("KV-cache blocks used\n(share, mean of ready replicas)")
        kv_ax.set_title("KV cache", fontsize=10)
        load_ax.set_ylim(bottom=0)
        load_ax.set_ylabel("requests")
        load_ax.set_title("requests in flight", fontsize=10)
        load_ax.set_xlim(0, t_end / scale)
        load_ax.set_xlabel(f"simulated time ({unit})")
        for ax in (kv_ax, load_ax):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="upper left", fontsize=7, ncols=2)
        fig.suptitle(f"{s['scenario']}: KV cache and load")
        return fig

    def power(self) -> Figure:
        """Facility power (MW) over time, stacked training / serving / idle, peak marked."""
        import numpy as np

        p = self.results.power
        end = float(self.results.summary["duration_s"])
        scale, unit = _time_scale(end)
        fig = _figure()
        ax = fig.add_subplot()
        if len(p) > 1:
            t = p["time_s"].to_numpy(dtype=float) / scale
            parts = [
                ("training", "training_w", COLOURS["training"]),
                ("serving", "serving_w", COLOURS["inference_busy"]),
                ("idle", "idle_w", COLOURS["unallocated"]),
            ]
            ys = [p[col].to_numpy(dtype=float) / 1e6 for _, col, _ in parts]
            ax.stackplot(
                t,
                *ys,
                labels=[n for n, _, _ in parts],
                colors=[c for _, _, c in parts],
                step="post",
                alpha=0.85,
            )
            total = p["facility_w"].to_numpy(dtype=float)[:-1] / 1e6
            i = int(np.argmax(total))
            ax.axhline(total[i], color="k", ls="--", lw=0.8)
            ax.annotate(
                f"peak {total[i]:.3g} MW",
                (t[i], total[i]),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=8,
            )
            ax.legend(loc="lower right", fontsize=8)
        s = self.results.summary
        ax.set_title(
            f"Facility power: {s.get('energy_mwh', 0.0):,.3g} MWh, mean "
            f"{s.get('mean_mw', 0.0):.3g} MW"
        )
        ax.set_xlabel(unit)
        ax.set_ylabel("MW (IT x PUE)")
        ax.set_xlim(0, end / scale)
        ax.set_ylim(bottom=0)
        return fig

    def facility(self) -> Figure:
        """The site (scenario `facility`): its power and the grid's draw over the run, the PUE
        against the outdoor temperature, the battery's state of charge, and the grid's carbon
        intensity with the tonnes it adds up to."""
        import numpy as np

        f = getattr(self.results, "facility", None)
        end = float(self.results.summary["duration_s"])
        scale, unit = _time_scale(end)
        fig = _figure(figsize=(11, 7))
        axes = fig.subplots(2, 2)
        if f is None or len(f) < 2:
            return fig
        t = f["time_s"].to_numpy(dtype=float) / scale
        fs = self.results.summary.get("facility", {})
        ax = axes[0][0]
        ax.step(t, f["site_w"] / 1e6, where="post", lw=0.8, label="site (IT x PUE)")
        ax.step(t, f["grid_w"] / 1e6, where="post", lw=0.8, label="grid draw")
        if "grid_limit_mw" in fs:
            ax.axhline(fs["grid_limit_mw"], color="k", ls="--", lw=0.8, label="grid limit")
        for k, ev in enumerate(fs.get("demand_response", [])):
            a = ev["at_s"] / scale
            ax.axvspan(
                a,
                a + ev["duration_s"] / scale,
                color="tab:red",
                alpha=0.2,
                label=f"demand response ({ev['asked_mw']:g} MW asked)" if k == 0 else None,
            )
        ax.set_title("Site power and grid draw")
        ax.set_xlabel(unit)
        ax.set_ylabel("MW")
        ax.set_xlim(0, end / scale)
        ax.legend(fontsize=8)
        ax = axes[0][1]
        temp, pue = f["temp_c"].to_numpy(dtype=float), f["pue"].to_numpy(dtype=float)
        ok = np.isfinite(temp) & np.isfinite(pue)
        if ok.any():
            ax.plot(temp[ok], pue[ok], ".", ms=3)
            ax.set_xlabel("outdoor dry-bulb temperature, C")
        else:
            ax.step(t, pue, where="post")
            ax.set_xlabel(unit)
        ax.set_ylabel("PUE")
        ax.set_title(f"PUE: {fs.get('pue_mean') or float('nan'):.3f} mean")
        ax = axes[1][0]
        soc = f["soc"].to_numpy(dtype=float)
        if np.isfinite(soc).any():
            ax.plot(t, soc * 100.0, lw=0.8)
            ax.set_ylim(0, 100)
        ax.set_title("Battery state of charge")
        ax.set_xlabel(unit)
        ax.set_ylabel("% of capacity")
        ax.set_xlim(0, end / scale)
        ax = axes[1][1]
        c = f["carbon_g_per_kwh"].to_numpy(dtype=float)
        if np.isfinite(c).any():
            ax.step(t, c, where="post", lw=0.8)
            tonnes = fs.get("carbon", {}).get("tonnes_co2e", 0.0)
            ax.set_title(f"Grid carbon intensity: {tonnes:,.0f} t CO2e in all")
        else:
            ax.set_title("Grid carbon intensity: none given")
        ax.set_xlabel(unit)
        ax.set_ylabel("g CO2e / kWh")
        ax.set_xlim(0, end / scale)
        return fig

    def swings(self) -> Figure:
        """An hour of the site's power at step resolution (facility.zoom): the `power_trace`
        jobs' compute and wait phases, their swing and ramp against the grid's limit."""
        from .facility import zoom

        res = self.results
        z = zoom(getattr(res, "scenario", None), res.summary, res.power)
        fig = _figure(figsize=(10, 6))
        ax, near = fig.subplots(2, 1)
        if len(z):
            t0 = float(z["time_s"].iloc[0])
            ax.plot((z["time_s"] - t0) / 60.0, z["site_w"] / 1e6, lw=0.5)
            ax.set_xlim(0, 60)
            first = z[z["time_s"] < t0 + 60.0]
            near.step(first["time_s"] - t0, first["site_w"] / 1e6, where="post", lw=0.8)
            near.set_xlim(0, 60)
        near.set_xlabel("seconds into the hour (its first minute)")
        near.set_ylabel("MW")
        sw = res.summary.get("facility", {}).get("swings", {})
        parts = [
            f"{n}: {v['swing_mw']:.1f} MW every {v['step_s']:.2f} s, {v['ramp_mw_per_s']:.1f} MW/s"
            for n, v in sw.items()
        ]
        title = "Site power in its busiest hour, step by step"
        ax.set_title(title + ("\n" + "; ".join(parts) if parts else ""), fontsize=10)
        ax.set_xlabel("minutes into the hour")
        ax.set_ylabel("MW (IT x PUE)")
        return fig

    def utilisation(self) -> Figure:
        """What the cluster's GPUs did over time, stacked as shares of the cluster: training
        (held by jobs), serving (iterating, and held but idle), held by no one's work, down;
        the rest is free (energy.gpu_states)."""
        from .energy import gpu_states

        s = self.results.summary
        end = float(s["duration_s"])
        scale, unit = _time_scale(end)
        services = self._frame("services")
        g = gpu_states(
            self.results.timeseries, services if len(services) else None, int(s["gpus"]), end
        )
        fig = _figure()
        ax = fig.add_subplot()
        parts = [
            ("training", "training", COLOURS["training"]),
            ("serving, iterating", "serving_busy", COLOURS["inference_busy"]),
            ("serving, idle", "serving_idle", COLOURS["inference_idle"]),
            ("held, idle", "held_idle", COLOURS["queued"]),
            ("down", "down", COLOURS["down"]),
        ]
        parts = [p for p in parts if g[p[1]].to_numpy().any()]
        if len(g) and parts:
            t = [*(g["time_s"].to_numpy(dtype=float) / scale), end / scale]
            ys = [
                [
                    *(100.0 * g[col].to_numpy(dtype=float) / s["gpus"]),
                    100.0 * float(g[col].iloc[-1]) / s["gpus"],
                ]
                for _, col, _ in parts
            ]
            ax.stackplot(
                t,
                *ys,
                labels=[n for n, _, _ in parts],
                colors=[c for _, _, c in parts],
                step="post",
                alpha=0.9,
            )
        ax.set_xlim(0, end / scale)
        ax.set_ylim(0, 130)  # room for the legend above 100 %
        ax.axhline(100, color="k", lw=1, ls="--")
        ax.set_xlabel(f"simulated time ({unit})")
        ax.set_ylabel("% of the cluster's GPUs")
        ax.set_title(f"{s['scenario']}: what the GPUs did (the rest is free)")
        if parts and len(g):
            ax.legend(loc="upper right", fontsize=8, ncols=3)
        return fig

    def cost(self) -> Figure:
        """Private (capex, opex, energy) vs cloud (on-demand, reserved, spot) cost of the run,
        the break-even utilisation in the title."""
        s = self.results.summary
        cost = s.get("cost_usd") or {"private": {}, "cloud": {}}
        priv, cloud = cost["private"], cost["cloud"]
        fig = _figure()
        ax = fig.add_subplot()
        bottom = 0.0
        for part, colour in (("capex", "#5d4037"), ("opex", "#8d6e63"), ("energy", "#fbc02d")):
            v = float(priv.get(part) or 0.0)
            ax.bar("private", v, bottom=bottom, color=colour, label=part)
            bottom += v
        for kind, colour in (
            ("on_demand", "#1565c0"),
            ("reserved", "#42a5f5"),
            ("spot", "#90caf9"),
        ):
            if cloud.get(kind) is not None:
                ax.bar(f"cloud\n{kind.replace('_', '-')}", cloud[kind], color=colour)
        ax.legend(fontsize=8)
        be = s.get("break_even_utilisation")
        util = (s.get("utilisation") or {}).get("allocated")
        title = "Cost of the run"
        if be is not None:
            title += f": private breaks even with cloud at {be:.0%} utilisation"
            if util is not None:
                title += f" (this run {util:.0%})"
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("USD")
        return fig

    def save_all(self, folder: str | Path) -> list[Path]:
        """Write every figure as PNG; the serving ones only for a run with services, power and
        cost for results that hold a power timeline (every run)."""
        folder = Path(folder)
        names = ["ledger", "allocation", "utilisation", "timeline", "ettr"]
        if getattr(self.results, "power", None) is not None:
            names += ["power", "cost"]
        facility = getattr(self.results, "facility", None)
        if facility is not None and len(facility):
            names.append("facility")
            scenario = getattr(self.results, "scenario", None)
            if scenario is not None and any(j.power_trace for j in scenario.training):
                names.append("swings")
        if len(self._frame("requests")):
            names.append("latency")
        if len(self._frame("services")):
            names += ["replicas", "kv_cache"]
        written = []
        for name in names:
            path = folder / f"{name}.png"
            getattr(self, name)().savefig(path, dpi=120)
            written.append(path)
        return written


def _latencies(requests: Any) -> dict[str, Any]:
    """TTFT, TPOT and E2E (s) of the completed requests (a finite `finish_s`) of a frame of
    `res.requests`; TPOT = (finish - first token) / (output tokens - 1), for outputs over one."""
    import numpy as np

    def column(name: str) -> Any:
        if name not in requests:
            return np.full(len(requests), np.nan)
        return requests[name].to_numpy(dtype=float)

    arrival, first, finish = column("arrival_s"), column("first_token_s"), column("finish_s")
    out = column("output_tokens")
    done = np.isfinite(finish) & np.isfinite(arrival)
    multi = done & np.isfinite(first) & (out > 1)
    return {
        "ttft": (first - arrival)[done & np.isfinite(first)],
        "tpot": ((finish - first) / np.where(multi, out - 1, 1))[multi],
        "e2e": (finish - arrival)[done],
    }


def estate_figure(res: Any) -> Figure:
    """An estate at a glance: each site's GPUs in use over time (its share of its own GPUs),
    and each site's cost by part."""
    import numpy as np

    fig = _figure(figsize=(10, 4.5))
    ax, bx = fig.subplots(1, 2, width_ratios=(3, 2))
    t_end = float(res.summary["duration_s"])
    scale, unit = _time_scale(t_end)
    sites = res.summary["estate"]["sites"]
    for name, site in res.sites.items():
        ts = site.timeseries
        gpus = sites[name]["gpus"]
        x, y = _held(ts["time_s"].to_numpy(), ts["allocated_gpus"].to_numpy() / gpus, t_end)
        ax.step(x / scale, y, where="post", label=f"{name} ({sites[name]['kind']}, {gpus:,} GPUs)")
    ax.set_xlabel(unit)
    ax.set_ylabel("share of the site's GPUs in use")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize="small")
    ax.set_title("utilisation by site")
    parts = ["capex", "opex", "energy", "colocation", "rental", "egress"]
    names = list(sites)
    bottom = np.zeros(len(names))
    for part in parts:
        vals = np.array([sites[n]["cost_usd"][part] for n in names]) / 1e6
        if vals.any():
            bx.bar(names, vals, bottom=bottom, label=part)
            bottom += vals
    bx.set_ylabel("million USD over the run")
    bx.set_title("cost by site")
    bx.legend(fontsize="small")
    return fig
