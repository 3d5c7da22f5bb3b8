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
        """GPUs allocated to training over time, against the cluster's size."""
        s = self.results.summary
        ts = self.results.timeseries
        t_end = s["duration_s"]
        scale, unit = (86400.0, "days") if t_end > 2 * 86400 else (3600.0, "hours")
        times = [*ts["time_s"].tolist(), t_end]
        fig = _figure()
        ax = fig.subplots()
        ax.stairs(ts["training_gpus"].to_numpy(), [t / scale for t in times], fill=True,
                  color=COLOURS["training"], alpha=0.8, label="training")
        ax.axhline(s["gpus"], color="k", lw=1, ls="--", label="cluster GPUs")
        ax.set_xlim(0, t_end / scale)
        ax.set_ylim(0, s["gpus"] * 1.08)
        ax.set_xlabel(f"simulated time ({unit})")
        ax.set_ylabel("GPUs")
        ax.set_title(f"{s['scenario']}: allocation over time")
        ax.legend(loc="lower right")
        return fig

    def save_all(self, folder: str | Path) -> list[Path]:
        folder = Path(folder)
        written = []
        for name in ("ledger", "allocation"):
            path = folder / f"{name}.png"
            getattr(self, name)().savefig(path, dpi=120)
            written.append(path)
        return written
