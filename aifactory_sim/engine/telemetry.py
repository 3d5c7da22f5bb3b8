"""What the run records: the GPU-hour ledger and time-weighted gauges.

Components record through explicit calls; nothing patches SimPy. The ledger's buckets are the
ones DESIGN.md names; each GPU-second lands in exactly one of them. Jobs book what they hold;
`down` and `unallocated` come from the integral of the cluster's state over time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BUCKETS = (
    "training",
    "data_stall",
    "checkpoint",
    "lost_work",
    "recovery",
    "queued",
    "inference_busy",
    "inference_idle",
    "cold_start",
    "unallocated",
    "down",
)

COLUMNS = (
    "time_s",
    "allocated_gpus",
    "down_gpus",
    "training_gpus",
    "serving_gpus",
    "running_jobs",
    "queued_jobs",
)


@dataclass
class Telemetry:
    """GPU-seconds per bucket, and a step-function timeseries of the cluster's state."""

    total_gpus: int
    gpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BUCKETS, 0.0))
    rows: list[tuple[float, int, int, int, int, int, int]] = field(default_factory=list)
    events: int = 0  # SimPy events processed

    def add(self, bucket: str, gpu_seconds: float) -> None:
        if gpu_seconds < 0:
            raise ValueError(f"negative GPU-seconds for {bucket}: {gpu_seconds}")
        self.gpu_s[bucket] += gpu_seconds

    def move(self, source: str, target: str, gpu_seconds: float) -> None:
        """Re-book GPU-seconds from one bucket to another (work lost to a failure)."""
        if gpu_seconds <= 0:
            return
        self.gpu_s[source] -= gpu_seconds
        self.gpu_s[target] += gpu_seconds

    def sample(
        self,
        now: float,
        *,
        allocated: int,
        down: int,
        training: int,
        serving: int,
        running: int,
        queued: int,
    ) -> None:
        """Record the state from `now` on (a later sample at the same time replaces it)."""
        row = (now, allocated, down, training, serving, running, queued)
        if self.rows and self.rows[-1][0] == now:
            self.rows[-1] = row
        elif not self.rows or self.rows[-1][1:] != row[1:]:
            self.rows.append(row)

    def integral_gpu_s(self, column: int, until: float) -> float:
        """Integral of a GPU-count column (1: allocated, 2: down) over [0, until]."""
        total = 0.0
        for r0, r1 in zip(self.rows, [*self.rows[1:], (until,)], strict=True):
            total += r0[column] * (min(r1[0], until) - r0[0])
        return total

    def allocated_gpu_s(self, until: float) -> float:
        return self.integral_gpu_s(1, until)

    def close(self, until: float) -> None:
        """Book the time nodes were down, and every GPU-second nobody held, as `unallocated`."""
        self.gpu_s["down"] = self.integral_gpu_s(2, until)
        self.gpu_s["unallocated"] = (
            self.total_gpus * until - self.allocated_gpu_s(until) - self.gpu_s["down"]
        )
