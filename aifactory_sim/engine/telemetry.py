"""Two of the engine's ports: the GPU-hour ledger and the recorder of the cluster's gauges.

Components record through explicit calls on the port they were given; nothing patches SimPy.
The ledger's buckets are the ones DESIGN.md names; each GPU-second lands in exactly one of
them. Jobs and services book what they hold; `down` and `unallocated` come from the integral
of the cluster's state over time, which the recorder keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

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


class Gauges(NamedTuple):
    """One row of the time series: the cluster's state from `time_s` on (COLUMNS)."""

    time_s: float
    allocated_gpus: int
    down_gpus: int
    training_gpus: int
    serving_gpus: int
    running_jobs: int
    queued_jobs: int


@dataclass
class Ledger:
    """The GPU-hour ledger's port: GPU-seconds per bucket (BUCKETS); each lands in one."""

    total_gpus: int
    gpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(BUCKETS, 0.0))

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

    def close(self, until: float, *, allocated_gpu_s: float, down_gpu_s: float) -> None:
        """Book the time nodes were down, and every GPU-second nobody held, as `unallocated`."""
        self.gpu_s["down"] = down_gpu_s
        free = self.total_gpus * until - allocated_gpu_s - down_gpu_s
        # a remainder of sums over millions of GPU-seconds: rounding can leave it a hair below
        # zero when every GPU was held or down all along (18,432 GPUs x 14 days: -9e-6 GPU-s)
        if -1e-12 * self.total_gpus * until < free < 0.0:
            free = 0.0
        self.gpu_s["unallocated"] = free


class Recorder:
    """The recorder's port: a step-function time series of the cluster's gauges.

    A component calls `sample()` whenever what it holds changes; the recorder reads the gauges
    through the probe it was connected to (the factory's wiring sums them over the components)
    and keeps a row only when one of them moved. Observers connected with it run first on
    every sample: the fabric re-rates the jobs whose share of the spine changed.
    """

    def __init__(self, now: Callable[[], float]):
        self._now = now
        self._probe: Callable[[float], Gauges] | None = None
        self._observers: tuple[Callable[[], None], ...] = ()
        self.rows: list[Gauges] = []
        self.events = 0  # SimPy events processed

    def connect(
        self, probe: Callable[[float], Gauges], observers: tuple[Callable[[], None], ...] = ()
    ) -> None:
        self._probe = probe
        self._observers = observers

    def sample(self) -> None:
        """Record the state from now on (a later sample at the same time replaces it)."""
        if self._probe is None:
            raise RuntimeError("Recorder.sample before the factory connected its probe")
        for observe in self._observers:
            observe()
        row = self._probe(self._now())
        rows = self.rows
        if rows and rows[-1][0] == row[0]:
            rows[-1] = row
        elif not rows or rows[-1][1:] != row[1:]:
            rows.append(row)

    def integral_gpu_s(self, column: int, until: float) -> float:
        """Integral of a GPU-count column (1: allocated, 2: down) over [0, until]."""
        total = 0.0
        for r0, r1 in zip(self.rows, [*self.rows[1:], (until,)], strict=True):
            total += r0[column] * (min(r1[0], until) - r0[0])
        return total

    def allocated_gpu_s(self, until: float) -> float:
        return self.integral_gpu_s(1, until)

    def down_gpu_s(self, until: float) -> float:
        return self.integral_gpu_s(2, until)
