"""Figures from Results; each returns a matplotlib Figure. matplotlib is imported lazily."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .results import Results

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


def _figure(**kw: Any) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=kw.pop("figsize", (8, 4.5)), layout="constrained", **kw)


class Plotter:
    """`res.plot.ledger()`, `res.plot.allocation()`."""

    def __init__(self, results: Results):
        self.results = results

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
            ax.text(i, level + ledger[b], f"-{ledger[b] / total:.1%}", ha="center",
                    va="bottom", fontsize=8)
        ax.bar(len(labels) - 1, ledger["training"], color=COLOURS["training"])
        ax.text(len(labels) - 1, ledger["training"], f"{ledger['training'] / total:.1%}",
                ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(labels)), [lab.replace("_", " ") for lab in labels],
                      rotation=20)
        ax.set_ylabel("GPU-hours")
        ax.set_title(f"{s['scenario']}: where the GPU-hours went")
        return fig

    def allocation(self) -> Figure:
        """GPUs held by each training job over time, stacked, against the cluster's size."""
        import numpy as np

        s = self.results.summary
        t_end = s["duration_s"]
        scale, unit = (86400.0, "days") if t_end > 2 * 86400 else (3600.0, "hours")
        jobs = [(name, j) for name, j in s["training"].items() if j["started_at_s"] is not None]
        edges = sorted({0.0, t_end, *(j["started_at_s"] for _, j in jobs),
                        *(j["finished_at_s"] for _, j in jobs if j["finished_at_s"] is not None)})
        edges_arr = np.asarray(edges)
        mid = (edges_arr[:-1] + edges_arr[1:]) / 2
        fig = _figure()
        ax = fig.subplots()
        base = np.zeros(mid.size)
        cmap = _job_colours(len(jobs))
        for (name, j), colour in zip(jobs, cmap, strict=True):
            end = t_end if j["finished_at_s"] is None else j["finished_at_s"]
            held = np.where((mid >= j["started_at_s"]) & (mid < end), j["gpus"], 0)
            ax.stairs(base + held, edges_arr / scale, baseline=base, fill=True, color=colour,
                      label=name)
            base = base + held
        ax.axhline(s["gpus"], color="k", lw=1, ls="--", label="cluster GPUs")
        ax.set_xlim(0, t_end / scale)
        ax.set_ylim(0, s["gpus"] * 1.3)  # room for the legend above the cluster line
        ax.set_xlabel(f"simulated time ({unit})")
        ax.set_ylabel("GPUs")
        ax.set_title(f"{s['scenario']}: GPUs held by training jobs")
        ax.legend(loc="upper right", fontsize=8, ncols=3)
        return fig

    def timeline(self) -> Figure:
        """One row per job: when it ran, with its failures, checkpoints and restarts marked."""
        s = self.results.summary
        events = self.results.events
        t_end = s["duration_s"]
        scale, unit = (86400.0, "days") if t_end > 2 * 86400 else (3600.0, "hours")
        names = list(s["training"])
        fig = _figure(figsize=(9, 1.2 + 0.45 * max(len(names), 1)))
        ax = fig.subplots()
        # marker, colour, label, vertical offset within the row, drawing order
        marks = {"checkpoint": ("|", "#fb8c00", "checkpoint", 0.0, 2),
                 "restart": ("^", "#8e24aa", "restart", 0.22, 3),
                 "preempt": ("v", "#6d4c41", "preempted", -0.22, 3),
                 "resize": ("D", "#00838f", "resized", -0.22, 3),
                 "failure": ("x", "#c62828", "failure", 0.0, 4)}
        seen: set[str] = set()
        for row, name in enumerate(names):
            j = s["training"][name]
            if j["started_at_s"] is not None:
                end = t_end if j["finished_at_s"] is None else j["finished_at_s"]
                ax.barh(row, (end - j["started_at_s"]) / scale, left=j["started_at_s"] / scale,
                        height=0.5, color=COLOURS["training"], alpha=0.35)
            if j["submitted_at_s"] is not None and j["started_at_s"] is not None:
                ax.barh(row, (j["started_at_s"] - j["submitted_at_s"]) / scale,
                        left=j["submitted_at_s"] / scale, height=0.2, color=COLOURS["queued"])
            mine = events[events["job"] == name] if len(events) else events
            for kind, (marker, colour, label, dy, order) in marks.items():
                times = mine[mine["event"] == kind]["time_s"] if len(mine) else []
                if kind == "checkpoint" and len(times) > 200:  # a solid smear says nothing
                    ax.text(0.005 * t_end / scale, row - 0.3, f"{len(times):,} checkpoints",
                            fontsize=7, color=colour, va="bottom")
                    continue
                if len(times):
                    ax.scatter([t / scale for t in times], [row + dy] * len(times),
                               marker=marker, color=colour, s=60 if kind == "checkpoint" else 28,
                               zorder=order, label=None if kind in seen else label,
                               linewidths=1.2)
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
            parts = [("productive", j["ettr"] * since_h, COLOURS["training"]),
                     ("lost work", j["lost_work_h"], COLOURS["lost_work"]),
                     ("recovery", j["recovery_h"], COLOURS["recovery"])]
            left = 0.0
            for label, hours, colour in parts:
                share = hours / since_h if since_h else 0.0
                ax.barh(row, share, left=left, color=colour, label=label if row == 0 else None)
                left += share
            ax.barh(row, max(1.0 - left, 0.0), left=left, color=COLOURS["checkpoint"],
                    label="checkpoints, stalls, waits" if row == 0 else None)
            ax.text(1.01, row, f"ETTR {j['ettr']:.1%}", va="center", fontsize=8)
        ax.set_yticks(range(len(jobs)), [n for n, _ in jobs])
        ax.invert_yaxis()
        ax.set_xlim(0, 1.15)
        ax.set_xlabel("share of time since first start")
        ax.set_title(f"{s['scenario']}: effective training time ratio")
        fig.legend(loc="outside lower center", fontsize=8, ncols=4)
        return fig

    def save_all(self, folder: str | Path) -> list[Path]:
        folder = Path(folder)
        written = []
        for name in ("ledger", "allocation", "timeline", "ettr"):
            path = folder / f"{name}.png"
            getattr(self, name)().savefig(path, dpi=120)
            written.append(path)
        return written
