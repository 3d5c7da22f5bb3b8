"""A training job's life: submitted, queued, running on a gang of nodes, finished.

No event per training step in the `fast` tier: between two changes (start, a new storage share,
the horizon) the step time is constant, so progress is elapsed / step_time and the finish is one
timeout. The `step` tier, the reference, waits one timeout per step; both share the accounting.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from ..estimate import TrainingEstimate, job_estimate
from .cluster import Allocation

if TYPE_CHECKING:
    from ..spec.scenario import NodePool, TrainingJob
    from .factory import Factory

#: Progress within this many steps of a whole step counts as that step (float rounding).
STEP_EPS = 1e-9


class TrainingRun:
    """One job in the running factory. `index` is its owner id on the cluster's nodes."""

    def __init__(self, factory: Factory, index: int, spec: TrainingJob, pool: NodePool):
        self.factory = factory
        self.env: simpy.Environment = factory.env
        self.index = index
        self.spec = spec
        self.pool = pool
        self.state = "pending"
        self.steps_total = spec.steps
        self.batch_tokens = spec.batch_seqs * spec.seq_len
        self.nodes = spec.parallel.gpus // pool.gpus_per_node
        self.gpus = spec.parallel.gpus
        self.done = 0.0  # steps completed, fractional between events
        self.run_s = 0.0  # time spent running
        self.alloc: Allocation | None = None
        self.submitted_at: float | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.data_gb_s = math.inf
        self.estimate: TrainingEstimate | None = None
        self.segment_start = 0.0
        self.started = self.env.event()
        self.stepping = False  # inside the run loop, waiting on a step timeout
        self.process = self.env.process(self._life())

    # --- rates ---------------------------------------------------------------------------
    @property
    def step_time_s(self) -> float:
        assert self.estimate is not None
        return float(self.estimate.step_time_s)

    @property
    def stall_s(self) -> float:
        assert self.estimate is not None
        return float(self.estimate.breakdown["data_stall_s"])

    def _estimate(self) -> TrainingEstimate:
        fabric = self.factory.scenario.cluster.fabric
        assert self.alloc is not None
        return self.factory.estimates.get(
            self.spec, self.pool, leaves=self.alloc.leaves,
            oversubscription=fabric.oversubscription, net_latency_us=fabric.latency_us,
            data_gb_s=self.data_gb_s,
        )

    def data_demand_cap_gb_s(self) -> float:
        """The most the job's nodes can read at once: their NICs' line rate, in GB/s."""
        return self.nodes * self.pool.gpus_per_node * self.pool.nic_gbit_s / 8.0

    # --- accounting ----------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        """Book [segment_start, now] at the current step time: progress and the ledger."""
        dt = now - self.segment_start
        if dt > 0:
            self.run_s += dt
            t_step = self.step_time_s
            self.done = min(self.done + dt / t_step, float(self.steps_total))
            stall = self.stall_s / t_step
            tel = self.factory.telemetry
            tel.add("training", self.gpus * dt * (1.0 - stall))
            tel.add("data_stall", self.gpus * dt * stall)
        self.segment_start = now

    def set_data_rate(self, gb_s: float) -> None:
        """A new storage share: book the past at the old rate, continue at the new one."""
        if self.estimate is None:  # just started: its first estimate uses this share
            self.data_gb_s = gb_s
            self.estimate = self._estimate()
            return
        if gb_s == self.data_gb_s or self.state != "running":
            return
        self._advance(self.env.now)
        self.data_gb_s = gb_s
        self.estimate = self._estimate()
        if self.stepping:  # else the process has yet to resume and will read the new rate
            self.process.interrupt("rerate")

    def close(self, now: float) -> None:
        """At the horizon: book the running segment."""
        if self.state == "running":
            self._advance(now)

    # --- life ----------------------------------------------------------------------------
    def start(self, alloc: Allocation) -> None:
        """Called by the scheduler with the job's gang; the factory then sets its data rate."""
        self.alloc = alloc
        self.state = "running"
        self.started_at = self.env.now
        self.segment_start = self.env.now
        self.started.succeed()

    def _life(self) -> Any:
        env = self.env
        if self.spec.submit_at > 0:
            yield env.timeout(self.spec.submit_at)
        self.state = "queued"
        self.submitted_at = env.now
        self.factory.scheduler.submit(self)
        yield self.started
        self.stepping = True
        step_tier = self.factory.fidelity == "step"
        while self.steps_total - self.done > STEP_EPS:
            if step_tier:
                target = min(math.floor(self.done + STEP_EPS) + 1.0, float(self.steps_total))
            else:
                target = float(self.steps_total)
            try:
                yield env.timeout((target - self.done) * self.step_time_s)
            except simpy.Interrupt:
                continue  # set_data_rate has booked the past; recompute the rest
            self._advance(env.now)
            self.done = target
        self.stepping = False
        self.state = "finished"
        self.finished_at = env.now
        self.factory.on_finish(self)

    # --- report --------------------------------------------------------------------------
    @property
    def steps_done(self) -> int:
        return math.floor(self.done + STEP_EPS)

    @property
    def tokens_trained(self) -> float:
        return float(min(self.spec.tokens, self.steps_done * self.batch_tokens))

    def summary(self) -> dict[str, Any]:
        """The job's summary. Rates are means over its running time: step time is running time
        over steps done; MFU and TFLOP/s scale by the estimate's step time over that mean (the
        FLOPs of a step do not change)."""
        est = self.estimate
        mean_step = self.run_s / self.done if self.done > 0 else None
        scale = None if est is None or mean_step is None else float(est.step_time_s) / mean_step
        out: dict[str, Any] = {
            "state": self.state if self.state != "pending" else "not_submitted",
            "tokens_trained": self.tokens_trained,
            "tokens_target": float(self.spec.tokens),
            "steps_done": self.steps_done,
            "steps_total": self.steps_total,
            "step_time_s": mean_step,
            "mfu": None if scale is None else float(est.mfu) * scale,  # type: ignore[union-attr]
            "hardware_tflops_per_gpu": None if scale is None
            else float(est.hardware_tflops_per_gpu) * scale,  # type: ignore[union-attr]
            "running_s": self.run_s,
            "recompute": None if est is None else str(est.recompute),
            "memory_gb_per_gpu": None if est is None else float(est.memory_gb_per_gpu),
            "submitted_at_s": self.submitted_at,
            "started_at_s": self.started_at,
            "finished_at_s": self.finished_at,
            "queued_s": None if self.started_at is None or self.submitted_at is None
            else self.started_at - self.submitted_at,
            "gpus": self.gpus,
            "nodes": self.nodes,
            "leaves": None if self.alloc is None else self.alloc.leaves,
            "global_batch_seqs": self.spec.batch_seqs,
        }
        return out


class EstimateCache:
    """Estimates keyed by what they depend on, so a re-rate to a known state costs nothing."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], TrainingEstimate] = {}

    def get(self, job: TrainingJob, pool: NodePool, **kw: Any) -> TrainingEstimate:
        key = (id(job), id(pool), *sorted(kw.items()))
        if key not in self._cache:
            est = job_estimate(job, pool, **kw)
            if not np.isfinite(est.step_time_s) or est.step_time_s <= 0:
                raise RuntimeError(f"step time of {job.name} is {est.step_time_s}")
            self._cache[key] = est
        return self._cache[key]
