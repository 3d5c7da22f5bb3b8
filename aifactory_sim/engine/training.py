"""A training job's life: submitted, queued, running on a gang of nodes, checkpointing, hit by
failures, recovering, preempted or resized, finished.

No event per training step in the `fast` tier: between two changes (start, a checkpoint due, a
failure, a new storage share) the step time is constant, so progress is elapsed / step_time
and the next change is one timeout. The `step` tier, the reference, waits one timeout per step;
both share the accounting.

Every GPU-second the job holds lands in one ledger bucket: `training` or `data_stall` while it
computes, `checkpoint` while it stalls for a checkpoint, `recovery` while it detects a failure,
restarts and reloads, `queued` while it holds part of its gang and waits for the rest. Work
done since the last completed checkpoint moves from `training` to `lost_work` when a failure
strikes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import simpy

from ..estimate import TrainingEstimate
from ..kernels.reliability import daly_interval_s, job_mtbf_s
from ..spec.scenario import job_estimate
from .cluster import Allocation

if TYPE_CHECKING:
    from ..spec.scenario import Failures, NodePool, TrainingJob
    from .broker import NodeBroker
    from .gray import Episode, GrayState
    from .ports import JobQueue
    from .storage import Flow, SharedStorage
    from .telemetry import Ledger

#: Progress within this many steps of a whole step counts as that step (float rounding).
STEP_EPS = 1e-9

#: The gray failure kinds (engine/gray.py.KINDS), whose lost work a job counts apart.
GRAY_KINDS = ("slow_gpu", "link_flap", "silent_corruption")

RERATE = "rerate"  # interrupt causes
FAILURE = "failure"
PREEMPT = "preempt"


class JobEvent(NamedTuple):
    """A row of a job's life (the `events` table): when, and what (start, failure, restart,
    checkpoint, resize, preempt, finished, failed)."""

    time_s: float
    event: str


@dataclass(frozen=True)
class JobSettings:
    """What a job reads of the rest of the scenario, resolved once when the factory is built."""

    net_latency_us: float  # cluster.fabric.latency_us
    storage_write_gb_s: float | None  # cluster.storage.write_gb_s, None without shared storage
    failures: Failures | None  # the failure model (detection, restart, MTBF for Daly)
    preemption_grace_s: float  # scheduler.preemption_grace_s
    step_tier: bool  # the `step` fidelity: one timeout per training step
    compute_slowdown: float = 1.0  # a power cap's clock factor on the compute peaks
    peak_scale: float = 1.0  # the pool's compute peak over the nominal one (MFU's reference)
    trace: bool = False  # record what the GPUs did for the power timeline (power_trace, DR)
    startup_s: float = 0.0  # added to every start and restart (a cloud node's provisioning)


@dataclass
class Checkpoint:
    """The state a restart goes back to: progress and the bookkeeping that goes with it."""

    done: float = 0.0
    train_gpu_s: float = 0.0
    productive_s: float = 0.0
    taken_s: float = 0.0  # when the state was taken (a corruption before it spoils it)


class TrainingRun:
    """One job in the running factory. `index` is its owner id on the cluster's nodes.

    Its ports: the node broker (its gang), the scheduler's queue, the GPU-hour ledger, the
    recorder's `sample`, shared storage (or None) and the step-time cache."""

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        spec: TrainingJob,
        pool: NodePool,
        settings: JobSettings,
        *,
        broker: NodeBroker,
        queue: JobQueue,
        ledger: Ledger,
        sample: Callable[[], None],
        storage: SharedStorage | None,
        estimates: EstimateCache,
        gray: GrayState | None = None,
    ):
        self.env: simpy.Environment = env
        #: the nodes' gray state (engine/gray.py), or None without gray failures
        self.gray = gray
        self.settings = settings
        self.broker = broker
        self.queue = queue
        self.ledger = ledger
        self._sample = sample
        self.storage = storage
        self.estimates = estimates
        self.name = spec.name
        self.index = index
        self.spec = spec
        self.pool = pool
        self.state = "pending"
        self.steps_total = spec.steps
        self.batch_tokens = spec.batch_seqs * spec.seq_len
        self.dp = spec.parallel.dp
        self.replica_gpus = spec.parallel.gpus // spec.parallel.dp
        self._checkpoint_bytes = spec.model.params * spec.checkpoint.bytes_per_param
        self._intervals: dict[int, float] = {}  # checkpoint interval by gang size
        self.alloc: Allocation | None = None
        self.submitted_at: float | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.data_gb_s = math.inf
        self.estimate: TrainingEstimate | None = None
        self.leaves: int | None = None  # leaf switches the gang spanned when last placed
        # What sharing the spine costs its rings now, and the most it cost (engine.fabric)
        self.fabric_slowdown = 1.0
        self.fabric_slowdown_max = 1.0
        self.started = self.env.event()
        #: set by an estate before the run: the job enters its queue when this fires, not at
        #: its submit_at (engine/estate.py)
        self.gate: simpy.Event | None = None
        self.process = self.env.process(self._life())
        # progress and its bookkeeping
        self.done = 0.0  # steps completed, fractional between events
        self.run_s = 0.0  # time spent computing (training and data stall)
        self.capped_s = 0.0  # of which under a power cap
        self.steps_computed = 0.0  # steps computed, those lost to failures included
        self.productive_s = 0.0  # computing time not lost to failures (stall excluded)
        self.train_gpu_s = 0.0
        self.compute_since_ckpt = 0.0
        self.ckpt = Checkpoint()
        self.ckpt_gen = 0  # bumps when a failure voids an async write in flight
        self.async_write: simpy.Event | None = None
        self.async_flow: Flow | None = None
        self.data_flow: Flow | None = None
        # the meter: which bucket the held GPUs are in since when
        self.bucket: str | None = None
        self.meter_t = 0.0
        self.in_run = False  # the process is inside _run (interrupts may be delivered)
        self.pending: list[str] = []  # interrupts that arrived before _run began
        self.gang_ready: simpy.Event | None = None
        self.preempt_to: int | None = None  # dp to shrink to when preempted (None: stop)
        self.lent: list[tuple[float, str, int]] = []  # (time, service, nodes) asked of it
        # The pool's peak over the nominal one (below 1 under a power cap): MFU is reported
        # against the nominal peak.
        self.peak_scale = settings.peak_scale
        # counts for the summary
        self.interruptions = 0
        self.restarts = 0
        self.checkpoints = 0
        self.preemptions = 0
        self.pauses = 0  # demand-response pauses (engine/power.py)
        self.hold_until: float | None = None  # paused: back to the queue at this time
        self._pausing = False
        self.lost_gpu_s = 0.0
        self.recovery_gpu_s = 0.0
        self.held_gpu_s = 0.0
        self.events: list[JobEvent] = []
        #: with `power_trace`: what its GPUs did, as the ledger booked it: (start, end, bucket,
        #: GPUs held), consecutive equal segments merged (the power timeline's input)
        self.trace: list[list[Any]] | None = [] if spec.power_trace or settings.trace else None
        # gray failures (engine/gray.py): the pace of its slowest GPU, the step time over its
        # healthy one, the shares of the step a slow GPU and a flapping NIC add, what each
        # kind cost (GPU-s), a corruption not yet found, and the checkpoints it could go to
        self.gray_pace = 1.0
        self.gray_ratio = 1.0
        self._gray_shares = (0.0, 0.0)  # (slow_gpu, link_flap) shares of the step time
        self.gray_lost_gpu_s = dict.fromkeys(GRAY_KINDS, 0.0)
        self.swapping = False  # a node is being swapped on the monitor's word
        self.corrupt: Episode | None = None
        self.corrupt_done = 0.0  # steps done when it struck
        self.corrupt_checks = 0  # validation checks that found a corruption
        self.ckpt_history: list[Checkpoint] = []
        #: a demand-response power cap on its GPUs (W) and the clock factor it costs
        self.power_cap_w: float | None = None
        self.cap_slowdown = 1.0

    # --- sizes and rates ------------------------------------------------------------------
    def nodes_for(self, dp: int) -> int:
        return math.ceil(self.replica_gpus * dp / self.pool.gpus_per_node)

    @property
    def nodes(self) -> int:
        """Nodes of the whole gang at the current data-parallel width."""
        return self.nodes_for(self.dp)

    @property
    def gpus(self) -> int:
        return self.replica_gpus * self.dp

    @property
    def min_nodes(self) -> int:
        """The fewest nodes the job can run on: its gang, or an elastic job's min_dp gang."""
        el = self.spec.elastic
        return self.nodes if el is None else min(self.nodes, self.nodes_for(el.min_dp))

    @property
    def held_nodes(self) -> int:
        return 0 if self.alloc is None else int(self.alloc.nodes.size)

    @property
    def step_time_s(self) -> float:
        """The step time now: the model's, at the pace of the gang's slowest GPU."""
        assert self.estimate is not None
        return float(self.estimate.step_time_s) / self.gray_pace

    def _estimate(self, data_gb_s: float | None = None) -> TrainingEstimate:
        """The step-time model at the job's width, storage share and fabric share (the flows
        sharing its leaves' up-links, not the kernel's busy-leaf bound)."""
        if self.alloc is not None and self.alloc.nodes.size:
            self.leaves = self.broker.leaves(self.alloc)
        est = self._estimate_at(self.fabric_slowdown, data_gb_s)
        if self.gray is None or data_gb_s is not None:
            return est
        slow, nic = (1.0, 1.0) if self.alloc is None else self.gray.of(self.alloc)
        healthy = est
        if nic < 1.0:  # the ring runs at its slowest link (engine/gray.py)
            est = self._estimate_at(max(self.fabric_slowdown, 1.0 / nic), None)
        t_ok, t_flap = float(healthy.step_time_s), float(est.step_time_s)
        t_act = t_flap / slow
        self.gray_pace = slow
        self.gray_ratio = t_act / t_ok
        self._gray_shares = ((t_act - t_flap) / t_act, (t_flap - t_ok) / t_act)
        if self.gray.monitor is not None:
            self.gray.monitor.update(self)
        return est

    def _estimate_at(self, cross_leaf: float, data_gb_s: float | None) -> TrainingEstimate:
        return self.estimates.get(
            self.spec,
            self.pool,
            dp=self.dp,
            cross_leaf_slowdown=cross_leaf,
            net_latency_us=self.settings.net_latency_us,
            compute_slowdown=self.settings.compute_slowdown * self.cap_slowdown,
            data_gb_s=self.data_gb_s if data_gb_s is None else data_gb_s,
        )

    def _free_running_estimate(self) -> TrainingEstimate:
        return self.estimates.get(
            self.spec,
            self.pool,
            dp=self.dp,
            cross_leaf_slowdown=1.0,
            net_latency_us=self.settings.net_latency_us,
            compute_slowdown=self.settings.compute_slowdown,
            data_gb_s=math.inf,
        )

    def projected_duration(self) -> float:
        """Compute time left at the model's step time (no failures, no checkpoints): what the
        backfill scheduler plans with."""
        est = self.estimate if self.estimate is not None else self._free_running_estimate()
        return (self.steps_total - self.done) * float(est.step_time_s)

    def projected_end(self, now: float) -> float:
        return now + self.projected_duration()

    def nic_cap_bytes_s(self) -> float:
        """The most the job's nodes can move to storage at once: their NICs' line rate."""
        return self.held_nodes * self.pool.gpus_per_node * self.pool.nic_gbit_s * 1e9 / 8.0

    @property
    def checkpoint_bytes(self) -> float:
        return self._checkpoint_bytes

    def checkpoint_cost_s(self) -> float:
        """What a checkpoint costs the job (its stall), uncontended: Daly's delta."""
        ck = self.spec.checkpoint
        if ck.mode == "async":
            return self.checkpoint_bytes / self.gpus / (ck.snapshot_gb_s * 1e9)
        return self.write_time_s()

    def write_time_s(self) -> float:
        """A checkpoint write's duration, uncontended (or as measured)."""
        ck = self.spec.checkpoint
        if ck.write_s is not None:
            return ck.write_s
        write_gb_s = self.settings.storage_write_gb_s
        assert write_gb_s is not None
        nic = self.nodes * self.pool.gpus_per_node * self.pool.nic_gbit_s * 1e9 / 8.0
        return self.checkpoint_bytes / min(write_gb_s * 1e9, nic)

    def interval_s(self) -> float:
        """Compute between two checkpoints: as given, Daly's optimum, or never (kept per gang
        size: Daly's optimum changes with the job's MTBF when an elastic job resizes)."""
        if self.nodes not in self._intervals:
            self._intervals[self.nodes] = self._interval_s()
        return self._intervals[self.nodes]

    def _interval_s(self) -> float:
        interval = self.spec.checkpoint.interval
        if interval == "none":
            return math.inf
        if interval == "young-daly":
            failures = self.settings.failures
            if failures is None:
                return math.inf
            mtbf = float(job_mtbf_s(failures.node_mtbf_s, self.nodes))
            tau = float(daly_interval_s(self.checkpoint_cost_s(), mtbf))
            if self.spec.checkpoint.mode == "async":
                # One write in flight: a shorter interval only makes the job wait for writes.
                tau = max(tau, self.write_time_s())
            return tau
        return float(interval)

    # --- the meter ------------------------------------------------------------------------
    def book(self) -> None:
        """Book [meter_t, now] for the GPUs held to the current bucket."""
        now = self.env.now
        dt = now - self.meter_t
        t0, self.meter_t = self.meter_t, now
        if dt <= 0 or self.bucket is None or self.held_nodes == 0:
            return
        gpus = self.held_nodes * self.pool.gpus_per_node
        self.held_gpu_s += gpus * dt  # what a rented node bills, whatever it did
        if self.trace is not None:
            last = self.trace[-1] if self.trace else None
            cap = self.power_cap_w
            if (
                last is not None
                and last[1] == t0
                and last[2] == self.bucket
                and last[3] == gpus
                and last[4] == cap
            ):
                last[1] = now
            else:
                self.trace.append([t0, now, self.bucket, gpus, cap, self._uncapped_mfu()])
        tel = self.ledger
        if self.bucket != "compute":
            tel.add(self.bucket, gpus * dt)
            if self.bucket == "recovery":
                self.recovery_gpu_s += gpus * dt
            return
        est = self.estimate
        assert est is not None
        t_step = self.step_time_s
        stall = float(est.breakdown["data_stall_s"]) / t_step
        self.done = min(self.done + dt / t_step, float(self.steps_total))
        self.steps_computed += dt / t_step
        self.run_s += dt
        if self.power_cap_w is not None or self.settings.compute_slowdown > 1.0:
            self.capped_s += dt  # computing under a power cap (racks, grid, user, an event)
        self.compute_since_ckpt += dt
        work = gpus * dt * (1.0 - stall)
        slow, flap = self._gray_shares
        if slow or flap:  # what a gray failure adds to the step is work lost to it
            lost = work * (slow + flap)
            self.gray_lost_gpu_s["slow_gpu"] += work * slow
            self.gray_lost_gpu_s["link_flap"] += work * flap
            tel.add("lost_work", lost)
            work -= lost
            self.productive_s += dt * (1.0 - stall) * (1.0 - slow - flap)
        else:
            self.productive_s += dt * (1.0 - stall)
        self.train_gpu_s += work
        tel.add("training", work)
        tel.add("data_stall", gpus * dt * stall)

    def _enter(self, bucket: str | None) -> None:
        self.book()
        self.bucket = bucket

    def close(self, now: float) -> None:
        """At the horizon: book what is running."""
        self.book()

    # --- signals from the factory ---------------------------------------------------------
    def start(self, alloc: Allocation) -> None:
        """Called by the scheduler with the job's gang."""
        self.alloc = alloc
        self.state = "running"
        if self.started_at is None:
            self.started_at = self.env.now
        self.meter_t = self.env.now
        self.bucket = "recovery"  # until the process resumes: start-up counts as restart
        self.events.append(JobEvent(self.env.now, "start"))
        self.started.succeed()

    def set_data_rate(self, gb_s: float) -> None:
        """A new storage share: book the past at the old rate, continue at the new one."""
        if gb_s == self.data_gb_s:
            return
        self.book()
        self.data_gb_s = gb_s
        if self.alloc is not None and self.held_nodes:
            self.estimate = self._estimate()
        if self.bucket == "compute" and self.in_run:
            self.process.interrupt(RERATE)

    def set_fabric_slowdown(self, slowdown: float) -> None:
        """A new share of the spine for the job's rings: book the past, continue at the new
        step time."""
        if slowdown == self.fabric_slowdown:
            return
        self.book()
        self.fabric_slowdown = slowdown
        self.fabric_slowdown_max = max(self.fabric_slowdown_max, slowdown)
        if self.alloc is not None and self.held_nodes:
            self.estimate = self._estimate()
        if self.bucket == "compute" and self.in_run:
            self.process.interrupt(RERATE)

    def _uncapped_mfu(self) -> float | None:
        """MFU against the nominal peak as its step would run without a demand-response cap
        (what its GPUs' compute power follows; a cap holds them at it instead)."""
        est = self.estimate
        if est is None:
            return None
        return float(est.mfu) * self.peak_scale * self.cap_slowdown

    def set_power_cap(self, cap_w: float | None, slowdown: float) -> None:
        """A demand-response cap on the job's GPUs (None: lifted): book the past, continue at
        the step time its clock factor `slowdown` gives the compute-bound parts."""
        if cap_w == self.power_cap_w:
            return
        self.book()
        self.power_cap_w, self.cap_slowdown = cap_w, slowdown
        if self.alloc is not None and self.held_nodes:
            self.estimate = self._estimate()
        if self.bucket == "compute" and self.in_run:
            self.process.interrupt(RERATE)

    def node_failed(self, node: int, component: str) -> None:
        """A node of the gang failed (already marked down unless a software failure)."""
        self.book()
        assert self.alloc is not None
        if component != "software":
            self.alloc.nodes = self.alloc.nodes[self.alloc.nodes != node]
            self.broker.replacement(self.alloc, self.index, near=node)
        self.interruptions += 1
        self.events.append(JobEvent(self.env.now, "swap" if self.swapping else "failure"))
        self._signal(FAILURE)

    def gray_changed(self) -> None:
        """A node of the gang slowed or healed (engine/gray.py): book the past, continue at
        the new step time."""
        self.book()
        if self.alloc is not None and self.held_nodes:
            self.estimate = self._estimate()
        if self.bucket == "compute" and self.in_run:
            self.process.interrupt(RERATE)

    def corrupted(self, ep: Episode) -> None:
        """Silent data corruption on a node of the gang: its state is wrong from now on, and
        found only by a validation check (the next one is planned once it computes)."""
        if self.corrupt is not None:
            return  # already wrong: the rollback goes back before the first
        self.book()
        self.corrupt = ep
        self.corrupt_done = self.done
        if self.bucket == "compute" and self.in_run and self._validation() is not None:
            self.book()
            self.process.interrupt(RERATE)

    def _validation(self) -> int | None:
        return None if self.gray is None else self.gray.validation_every_steps

    def _corruption_found(self) -> bool:
        """At a validation step with a corruption in the state: roll back to the last
        checkpoint taken before it, swap the node, and restart (True)."""
        ep, every = self.corrupt, self._validation()
        if ep is None or every is None:
            return False
        if abs(self.done / every - round(self.done / every)) * every > 1e-6 or self.done <= 0:
            return False
        self.book()
        self.corrupt_checks += 1
        ep.detected_s = self.env.now
        ep.action = "rolled-back"
        clean = [c for c in self.ckpt_history if c.taken_s <= ep.start_s]
        self.ckpt_history = clean
        self.ckpt = clean[-1] if clean else Checkpoint()
        before = self.train_gpu_s
        self._lose_work()
        self.gray_lost_gpu_s["silent_corruption"] += before - self.train_gpu_s
        self.corrupt = None
        self.events.append(JobEvent(self.env.now, "rollback"))
        if self.alloc is not None and ep.pool == self.alloc.pool and ep.node in self.alloc.nodes:
            self.alloc.nodes = self.alloc.nodes[self.alloc.nodes != ep.node]
            repair = self.settings.failures.repair_h if self.settings.failures else None
            self.broker.cordon(ep.pool, ep.node, _mean_hours(repair) * 3600.0)
            self.broker.replacement(self.alloc, self.index, near=ep.node)
        return True

    def pause(self, until: float) -> None:
        """A demand-response event: checkpoint (whatever the preemption grace), give every node
        back, and wait out of the queue until `until`."""
        self.hold_until = until
        self._pausing = True
        self.preempt(None)

    def preempt(self, shrink_to: int | None) -> None:
        """The scheduler takes this job's nodes (all, or down to `shrink_to` replicas)."""
        self.preempt_to = shrink_to
        self._signal(PREEMPT)

    def _signal(self, cause: str) -> None:
        if self.in_run:
            self.process.interrupt(cause)
        elif cause not in self.pending:
            self.pending.append(cause)
            self.pending.sort(key=lambda c: c != FAILURE)  # a failure is handled first

    def gang_complete(self) -> None:
        """The factory found the nodes this job was waiting for."""
        if self.gang_ready is not None and not self.gang_ready.triggered:
            self.gang_ready.succeed()

    # --- waiting --------------------------------------------------------------------------
    def _wait(self, event: simpy.Event) -> Any:
        """Wait for `event`; a new storage share while not computing changes nothing here."""
        while True:
            try:
                return (yield event)
            except simpy.Interrupt as irq:
                if irq.cause != RERATE:
                    raise

    def _flow(self, direction: str, nbytes: float) -> Any:
        """Move `nbytes` to or from shared storage at the job's share; closed if interrupted."""
        storage = self.storage
        assert storage is not None
        flow = storage.open(direction, nbytes, self.nic_cap_bytes_s(), owner=self.spec.name)
        try:
            yield from self._wait(flow.done)
        finally:
            storage.close(flow)

    # --- life -----------------------------------------------------------------------------
    def _life(self) -> Any:
        env = self.env
        if self.gate is not None:  # an estate's: data staged first, or a burst called
            yield self.gate
        elif self.spec.submit_at > 0:
            yield env.timeout(self.spec.submit_at)
        self.state = "queued"
        self.submitted_at = env.now
        self.queue.submit(self)
        while True:
            while not self.started.processed:
                try:
                    yield self.started
                except simpy.Interrupt:
                    pass  # a share change that reached the process after it stopped: moot
            outcome = yield from self._run()
            if outcome != "preempted":
                break
            while self.hold_until is not None and env.now < self.hold_until:
                try:
                    yield env.timeout(self.hold_until - env.now)
                except simpy.Interrupt:
                    pass  # a share change while paused: moot
            self.hold_until = None
            self.started = env.event()
            self.queue.submit(self)

    def _run(self) -> Any:
        """From a start to the end, a stop for preemption or too many restarts."""
        self.in_run = True
        # Start-up counts as a restart; a job that has trained before also reloads.
        recover, detect = True, False
        try:
            while True:
                try:
                    if self.pending:
                        raise simpy.Interrupt(self.pending.pop(0))
                    if recover:
                        yield from self._recover(detect)
                        recover = detect = False
                    if self.steps_total - self.done <= STEP_EPS:
                        yield from self._final_checkpoint()
                        break
                    yield from self._compute()
                    if self._corruption_found():
                        self.restarts += 1
                        recover = True
                        continue
                    if self.steps_total - self.done <= STEP_EPS:
                        yield from self._final_checkpoint()
                        break
                    yield from self._checkpoint()
                    if self._grow():
                        recover = True
                except simpy.Interrupt as irq:
                    if irq.cause == RERATE:
                        continue
                    if irq.cause == FAILURE:
                        self._lose_work()
                        self.restarts += 1
                        limit = self.spec.max_restarts
                        if limit is not None and self.restarts > limit:
                            self._stop("failed")
                            return "failed"
                        recover, detect = True, not self.swapping
                        self.swapping = False
                    elif irq.cause == PREEMPT:
                        kept = yield from self._yield_nodes()
                        if not kept:
                            return "preempted"
                        recover, detect = True, False
            self._stop("finished")
            return "finished"
        finally:
            self.in_run = False

    def _stop(self, state: str) -> None:
        self._enter(None)
        self._drop_background()
        if self.alloc is not None and self.held_nodes:
            self.broker.release(self.index, self.alloc)
        self.state = state
        self.finished_at = self.env.now
        self.events.append(JobEvent(self.env.now, state))
        self.broker.stop_waiting(self)
        self.queue.yielded(self)
        self._sample()

    def _lose_work(self) -> None:
        """Back to the last completed checkpoint: the training since then becomes lost work."""
        self.book()
        self._drop_background()
        lost = self.train_gpu_s - self.ckpt.train_gpu_s
        self.ledger.move("training", "lost_work", lost)
        self.lost_gpu_s += lost
        self.train_gpu_s = self.ckpt.train_gpu_s
        self.productive_s = self.ckpt.productive_s
        self.done = self.ckpt.done
        self.compute_since_ckpt = 0.0

    def _drop_background(self) -> None:
        """Stop the data loader and void an asynchronous checkpoint still being written."""
        storage = self.storage
        if self.data_flow is not None and storage is not None:
            storage.close(self.data_flow)
            self.data_flow = None
        if self.async_write is not None and not self.async_write.triggered:
            self.ckpt_gen += 1
            if self.async_flow is not None and storage is not None:
                storage.close(self.async_flow)
        self.async_write = None
        self.async_flow = None

    def _recover(self, detect: bool) -> Any:
        """Detect, get the whole gang back, restart, reload the last checkpoint."""
        failures = self.settings.failures
        if detect and failures is not None and failures.detect_s > 0:
            self._enter("recovery")
            yield from self._wait(self.env.timeout(failures.detect_s))
        while self.held_nodes < self.nodes:
            if self._shrink_to_fit():
                break
            self._enter("queued")
            self.gang_ready = self.env.event()
            self.broker.wait_for_nodes(self)
            yield from self._wait(self.gang_ready)
        self._enter("recovery")
        self.estimate = self._estimate()
        restart = (failures.restart_s if failures is not None else 0.0) + self.settings.startup_s
        if restart > 0:
            yield from self._wait(self.env.timeout(restart))
        if self.done > 0:  # reload the last checkpoint
            ck = self.spec.checkpoint
            if ck.reload_s is not None:
                yield from self._wait(self.env.timeout(ck.reload_s))
            elif self.storage is not None:
                yield from self._flow("read", self.checkpoint_bytes)
        self.events.append(JobEvent(self.env.now, "restart"))

    def _shrink_to_fit(self) -> bool:
        """An elastic job short of nodes runs with fewer replicas: True if it now fits."""
        el = self.spec.elastic
        if el is None:
            return False
        for dp in range(self.dp - 1, el.min_dp - 1, -1):
            if self.nodes_for(dp) <= self.held_nodes:
                surplus = self.held_nodes - self.nodes_for(dp)
                self._set_dp(dp, release=surplus)
                return True
        return False

    def _set_dp(self, dp: int, release: int = 0) -> None:
        self.book()
        if release and self.alloc is not None:
            self.broker.release(self.index, self.alloc, count=release)
        if dp != self.dp:
            self.events.append(JobEvent(self.env.now, "resize"))
        self.dp = dp

    def _grow(self) -> bool:
        """After a checkpoint, an elastic job below its width takes free nodes back."""
        if self.spec.elastic is None or self.dp >= self.spec.parallel.dp or self.alloc is None:
            return False
        if not self.broker.may_grow(self):
            return False
        free = self.broker.free_nodes(self.pool.name) - self.broker.held_back(self.pool.name)
        self.book()
        for dp in range(self.spec.parallel.dp, self.dp, -1):
            extra = self.nodes_for(dp) - self.held_nodes
            if extra <= free and self.broker.grow(self.alloc, extra, self.index):
                self._set_dp(dp)
                self._sample()
                return True
        return False

    def _yield_nodes(self) -> Any:
        """Preempted: checkpoint first when the write fits the grace period, else lose the work
        since the last checkpoint; then give back all nodes (False) or shrink (True)."""
        pausing, self._pausing = self._pausing, False
        if pausing:
            self.pauses += 1
        else:
            self.preemptions += 1
        self.events.append(JobEvent(self.env.now, "pause" if pausing else "preempt"))
        grace = math.inf if pausing else self.settings.preemption_grace_s
        can_write = self.spec.checkpoint.write_s is not None or self.storage is not None
        if self.done > self.ckpt.done and can_write and self.write_time_s() <= grace:
            try:
                yield from self._write_checkpoint()
            except simpy.Interrupt as irq:
                if irq.cause != FAILURE:
                    raise  # a failure mid-write: the job stops all the same, from its last one
        self._lose_work()
        shrink_to, self.preempt_to = self.preempt_to, None
        self.queue.yielded(self)
        if shrink_to is not None and self.alloc is not None:
            self._set_dp(shrink_to, release=max(self.held_nodes - self.nodes_for(shrink_to), 0))
            return True
        self._enter(None)
        self.state = "queued"
        if self.alloc is not None and self.held_nodes:
            self.broker.release(self.index, self.alloc)
        self.alloc = None
        return False

    # --- computing and checkpointing ------------------------------------------------------
    def _open_data_flow(self) -> None:
        """Start the data loader: a flow capped at what the job consumes at full speed."""
        if self.spec.data.source != "storage" or self.storage is None:
            return
        busy = self._estimate(data_gb_s=math.inf)
        demand = self.batch_tokens * self.spec.data.bytes_per_token / float(busy.step_time_s)
        self.data_flow = self.storage.open(
            "read",
            math.inf,
            min(demand, self.nic_cap_bytes_s()),
            on_rate=lambda r: self.set_data_rate(r / 1e9),
            owner=self.spec.name,
        )

    def _compute(self) -> Any:
        """Train until the job ends or a checkpoint is due."""
        env = self.env
        step_tier = self.settings.step_tier
        # The loader's share first (it may re-rate this job), then the meter runs as compute.
        self._open_data_flow()
        if self.spec.data.source == "nvme":
            assert self.pool.nvme is not None
            self.set_data_rate(self.held_nodes * self.pool.nvme.read_gb_s)
        self.estimate = self._estimate()
        self._enter("compute")
        tau = self.interval_s()
        try:
            while True:
                t_step = self.step_time_s
                target = float(self.steps_total)
                ckpt_at = math.inf
                if math.isfinite(tau):
                    need = max(tau - self.compute_since_ckpt, 0.0)
                    ckpt_at = float(math.ceil(self.done + need / t_step - STEP_EPS))
                    target = min(target, ckpt_at)
                if step_tier:
                    target = min(target, math.floor(self.done + STEP_EPS) + 1.0)
                check_at = math.inf
                every = self._validation()
                if self.corrupt is not None and every is not None:  # the next check finds it
                    check_at = float(math.floor(self.done / every + STEP_EPS) + 1) * every
                    target = min(target, check_at)
                if target - self.done > STEP_EPS:
                    try:
                        yield env.timeout((target - self.done) * t_step)
                    except simpy.Interrupt as irq:
                        if irq.cause == RERATE:
                            continue
                        raise
                    self.book()
                    self.done = target
                if (
                    self.steps_total - self.done <= STEP_EPS
                    or self.done >= ckpt_at
                    or self.done >= check_at
                ):
                    return
        finally:
            self.book()
            if self.data_flow is not None and self.storage is not None:
                self.storage.close(self.data_flow)
                self.data_flow = None

    def _write_checkpoint(self) -> Any:
        """A synchronous checkpoint: the job stalls until the write is done."""
        self._enter("checkpoint")
        ck = self.spec.checkpoint
        if ck.write_s is not None:
            yield from self._wait(self.env.timeout(ck.write_s))
        else:
            yield from self._flow("write", self.checkpoint_bytes)
        self._commit(Checkpoint(self.done, self.train_gpu_s, self.productive_s, self.env.now))

    def _final_checkpoint(self) -> Any:
        """A checkpointing job saves its final state before it ends (synchronously)."""
        if math.isfinite(self.interval_s()) and self.ckpt.done < self.done:
            if self.async_write is not None and not self.async_write.triggered:
                self._enter("checkpoint")
                yield from self._wait(self.async_write)
            if self.ckpt.done < self.done:
                yield from self._write_checkpoint()

    def _commit(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        if self.gray is not None:
            self.ckpt_history.append(ckpt)
        self.checkpoints += 1
        self.events.append(JobEvent(self.env.now, "checkpoint"))

    def _checkpoint(self) -> Any:
        ck = self.spec.checkpoint
        if ck.mode == "sync":
            yield from self._write_checkpoint()
        else:
            self._enter("checkpoint")
            if self.async_write is not None and not self.async_write.triggered:
                yield from self._wait(self.async_write)  # one write in flight at a time
            yield from self._wait(self.env.timeout(self.checkpoint_cost_s()))
            snapshot = Checkpoint(self.done, self.train_gpu_s, self.productive_s, self.env.now)
            gen = self.ckpt_gen
            write: simpy.Event
            if ck.write_s is not None:
                write = self.env.timeout(ck.write_s)
            else:
                storage = self.storage
                assert storage is not None
                self.async_flow = storage.open(
                    "write", self.checkpoint_bytes, self.nic_cap_bytes_s(), owner=self.spec.name
                )
                write = self.async_flow.done

            def committed(_ev: simpy.Event) -> None:
                if gen == self.ckpt_gen:
                    self._commit(snapshot)

            write.callbacks.append(committed)
            self.async_write = write
        self.compute_since_ckpt = 0.0

    # --- report ---------------------------------------------------------------------------
    @property
    def steps_done(self) -> int:
        return math.floor(self.done + STEP_EPS)

    @property
    def tokens_trained(self) -> float:
        return float(min(self.spec.tokens, self.steps_done * self.batch_tokens))

    def summary(self, horizon: float) -> dict[str, Any]:
        """The job's summary. Rates are means over its computing time: step time is computing
        time over steps computed (recomputed ones included); MFU and TFLOP/s scale by the
        estimate's step time over that mean (the FLOPs of a step do not change). ETTR is
        productive time over time since first start."""
        est = self.estimate
        mean_step = self.run_s / self.steps_computed if self.steps_computed > 0 else None
        scale = None if est is None or mean_step is None else float(est.step_time_s) / mean_step
        if scale is not None:  # a narrowed elastic job's estimate pads the batch: count real work
            unit = self.dp * self.spec.parallel.microbatch_seqs
            scale *= self.spec.batch_seqs / (math.ceil(self.spec.batch_seqs / unit) * unit)
        end = horizon if self.finished_at is None else self.finished_at
        since = None if self.started_at is None else end - self.started_at
        return {
            "state": self.state if self.state != "pending" else "not_submitted",
            "tokens_trained": self.tokens_trained,
            "tokens_target": float(self.spec.tokens),
            "steps_done": self.steps_done,
            "steps_total": self.steps_total,
            "step_time_s": mean_step,
            "mfu": None
            if scale is None or est is None
            else float(est.mfu) * scale * self.peak_scale,
            "hardware_tflops_per_gpu": None
            if scale is None or est is None
            else float(est.hardware_tflops_per_gpu) * scale,
            "recompute": None if est is None else str(est.recompute),
            "memory_gb_per_gpu": None if est is None else float(est.memory_gb_per_gpu),
            "submitted_at_s": self.submitted_at,
            "started_at_s": self.started_at,
            "finished_at_s": self.finished_at,
            "queued_s": None
            if self.started_at is None or self.submitted_at is None
            else self.started_at - self.submitted_at,
            "running_s": self.run_s,
            "ettr": None if not since else self.productive_s / since,
            "interruptions": self.interruptions,
            "restarts": self.restarts,
            "preemptions": self.preemptions,
            **({"pauses": self.pauses} if self.pauses else {}),
            **({"power_capped_s": self.capped_s} if self.capped_s else {}),
            "lends": len(self.lent),
            "checkpoints": self.checkpoints,
            "checkpoint_interval_s": None
            if not math.isfinite(self.interval_s())
            else self.interval_s(),
            "lost_work_h": self.lost_gpu_s / self.gpus_nominal / 3600.0,
            "recovery_h": self.recovery_gpu_s / self.gpus_nominal / 3600.0,
            "gpus": self.gpus_nominal,
            "dp": self.dp,
            "nodes": self.nodes_for(self.spec.parallel.dp),
            "leaves": self.leaves,
            "fabric_slowdown_max": self.fabric_slowdown_max,
            "global_batch_seqs": self.spec.batch_seqs,
        }

    @property
    def gpus_nominal(self) -> int:
        return self.spec.parallel.gpus


def _mean_hours(spec: Any) -> float:
    """A repair-hours distribution's mean (h); 6 h (the default repair) without one."""
    if spec is None:
        return 6.0
    if spec.kind == "fixed":
        return float(spec.value)
    if spec.kind == "exponential":
        return float(spec.mean)
    return float(spec.median * math.exp(spec.sigma**2 / 2.0))


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
