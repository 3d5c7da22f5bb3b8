"""A serving fleet: the replicas of one `inference` service on cluster nodes, shared by every
fidelity tier. The serving model on top of it (inference.RouterModel for `step` and `fast`,
fluid.FlowModel for `fluid`) owns the requests; the fleet talks to it only through
ports.ServingModel, and the model to the fleet through ports.FleetView.

Replicas. A replica is `tp` GPUs: `gpus_per_node / tp` replicas share a node, or one replica
spans `tp / gpus_per_node` whole nodes. The fleet holds whole nodes from the cluster (the
cluster's owner id is the service's) and fills their slots first. A new replica waits for
nodes, then cold-starts: `cold_start.container_s`, then its weights, at `weights_s` when given,
else read from shared storage (a flow of the storage model, capped by the replica's NICs) or
from the node's local NVMe at its read bandwidth. A replica the autoscaler removes stops taking
requests and drains what it holds; a pending or starting one is cancelled first (Kubernetes
deletes unready pods first), then the ready one with the fewest requests in flight. A node
failure kills the replicas on it (their requests return to the model, counted as a
preemption) and a replacement is asked for at once, as a ReplicaSet does; a software failure
restarts them on the same node.

Time. The model handles its own events in plain Python (`advance_to`); the fleet's SimPy
process wakes it whenever something outside it happens or may need to: an autoscaler tick (one
SimPy timeout per sync period), a cold start finishing, a node failing, the end of a draining
replica's work, the end of the run (engine/inference.py's module docstring).

Ledger: the GPUs of the nodes a service holds are booked `cold_start` (a replica's GPUs from
placement to ready), `inference_busy` (a replica's GPUs while it iterates) and
`inference_idle` (all the rest: ready with no work, slots not yet filled, waiting to drain).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import simpy

from ..estimate import as_gpu, gpu_fields
from ..kernels.inference import (
    Drafter,
    IterationModel,
    IterationTable,
    gpu_inference_args,
    kv_capacity_tokens,
    network_args,
    replica_weight_bytes,
    speculative_tokens_per_step,
)
from .autoscaler import policy_for
from .cluster import Allocation

if TYPE_CHECKING:
    from ..spec.inference import InferenceService, Speculative
    from ..spec.scenario import NodePool
    from .broker import NodeBroker
    from .ports import ServingCore, ServingModel
    from .storage import SharedStorage
    from .telemetry import Ledger

#: How often a service without an autoscaler records its state (s).
SAMPLE_S = 15.0


class ServiceRow(NamedTuple):
    """One row of the services' timeseries (one per sync tick and service)."""

    time_s: float
    arrivals_rps: float
    pending: int
    starting: int
    ready: int
    draining: int
    desired: int
    in_flight: float
    queued: float
    kv_used: float
    busy_gpus: float


#: Columns of the services' timeseries (one row per sync tick and service).
SERVICE_COLUMNS: tuple[str, ...] = ServiceRow._fields


class ReplicaSizing(NamedTuple):
    """What the kernels say of one replica of a service: its iteration table, its KV cache
    (tokens), its weights (bytes), and the kernels' model and GPU arguments."""

    table: IterationTable
    kv_tokens: float
    weight_bytes: float
    model_args: dict[str, Any]
    gpu_args: dict[str, Any]
    #: expert parallelism and data-parallel attention as the kernels take them
    #: (kernels.inference._iteration_constants: ep, dp_attention, nic_bytes_per_s, nvlink_domain)
    parallel_args: dict[str, Any]
    #: with speculative decoding, what it does (speculation_summary); else None
    speculation: dict[str, Any] | None = None


def replica_sizing(
    spec: InferenceService, pool: NodePool, compute_slowdown: float, iteration_extra_s: float = 0.0
) -> ReplicaSizing:
    """A service's replica through the kernels (the GPU's fields under the power cap's
    slowdown, the calibration of its family; `iteration_extra_s` more host time an iteration,
    as confidential computing's encrypted transfers cost: engine/estate.py)."""
    from .. import catalog

    gpu = as_gpu(pool.gpu)
    cal = catalog.entry("calibration", gpu.family)
    if iteration_extra_s:
        cal = {**cal, "iteration_overhead_s": cal["iteration_overhead_s"] + iteration_extra_s}
    g = gpu_inference_args(gpu_fields(gpu, compute_slowdown), cal)
    m = spec.model.kernel_args()
    b = spec.batching
    par = {
        "ep": spec.ep,
        "dp_attention": spec.dp_attention,
        "allreduce": spec.allreduce,
        **network_args(pool.nic_gbit_s, cal, gpu.nvlink_domain),
    }
    model = IterationModel(
        m, g, tp=spec.tp, precision=spec.precision, kv_precision=spec.kv_precision, **par
    )
    table = model.table(b.max_batched_tokens, b.max_num_seqs)
    speculation, dbytes = None, (0.0, 0.0)
    sp = spec.speculative
    if sp is not None:
        dm = None if sp.draft_model is None else sp.draft_model.kernel_args()
        dbytes = spec.drafter_bytes()
        draft_model = None
        if dm is not None:  # a dense draft on the replica's GPUs, its tensor parallelism
            dpar = {**par, "ep": 1}
            draft_model = IterationModel(
                dm, g, tp=spec.tp, precision=spec.precision, kv_precision=spec.kv_precision, **dpar
            )
        drafter = Drafter(sp.draft_tokens, speculative_tokens_per_step(sp.rates), draft_model)
        plain, table = table, model.table(b.max_batched_tokens, b.max_num_seqs, drafter)
        speculation = speculation_summary(sp, drafter, plain, table, dbytes)
    kv_tokens = float(
        kv_capacity_tokens(
            m,
            g["hbm_bytes"],
            tp=spec.tp,
            precision=spec.precision,
            kv_precision=spec.kv_precision,
            gpu_memory_utilization=spec.gpu_memory_utilization,
            max_batched_tokens=b.max_batched_tokens,
            max_num_seqs=b.max_num_seqs,
            dp_attention=spec.dp_attention,
            drafter_bytes=dbytes,
            ep=spec.ep,
        )
    )
    weights = float(replica_weight_bytes(m, spec.precision, spec.dp_attention, spec.ep) + dbytes[0])
    return ReplicaSizing(table, kv_tokens, weights, m, g, par, speculation)


#: Context per sequence (tokens) at which a service's summary states speculative decoding's
#: per-token gain: a chat turn's prompt and answer, typical of the bundled workloads.
SPECULATION_CONTEXT_TOKENS = 2048


def speculation_summary(
    sp: Speculative,
    drafter: Drafter,
    plain: IterationTable,
    table: IterationTable,
    dbytes: tuple[float, float],
) -> dict[str, Any]:
    """What speculative decoding does for a replica, from the kernels (docs/reference/
    metrics.md): tokens kept per verify step, and the decode time per token without and with
    it, alone (batch 1) and at a full batch (max_num_seqs), at SPECULATION_CONTEXT_TOKENS of
    context per sequence. Below 1 at a full batch: speculation costs throughput there."""
    ctx = float(SPECULATION_CONTEXT_TOKENS)
    full = len(table.sampled) - 1

    def gain(n: int) -> float:
        return plain.decode_run(n, n * ctx)[0] / table.decode_run(n, n * ctx)[0]

    tau = drafter.tokens_per_step
    return {
        "method": sp.method,
        "draft_tokens": sp.draft_tokens,
        "tokens_per_step": tau,
        "accepted_tokens_per_step": tau - 1.0,
        "acceptance_rate": (tau - 1.0) / sp.draft_tokens,
        "verify_step_s": table.decode_run(1, ctx)[0] * tau,
        "tpot_gain_batch_1": gain(1),
        "tpot_gain_full_batch": gain(full),
        "draft_weight_gb": dbytes[0] / 1e9,
    }


def slo_capacity_rps(
    spec: InferenceService,
    table: IterationTable,
    kv_tokens: float,
    role: str,
    lengths: tuple[float, float, float],
) -> float:
    """Requests per second one replica carries within the service's SLO, from its iteration
    table: what the `planner` autoscaler sizes against (engine/autoscaler.PlannerPolicy).
    `lengths`: mean prompt tokens prefilled, found cached, and output tokens.

    - prefill (a `prefill` replica, or the prefill share of a `both` one): iterations filled to
      `max_batched_tokens` with chunks of mean prompts (their attention pairs after the cached
      tokens included) prefill max_batched_tokens / prompt prompts each; 0 when one prompt
      alone takes longer than `slo.ttft_s`.
    - decode (`decode`, or `both`): the most tokens per second over batches of D sequences at
      the mean context (prompt + half the output) that fit the seats and the KV cache and whose
      iteration meets `slo.tpot_s`, over the output tokens after the first.
    - both: a replica that does both shares its time: 1 / (1 / prefill + 1 / decode).
    """
    b, slo = spec.batching, spec.slo
    p, cached, out = lengths
    caps: list[float] = []
    if role in ("prefill", "both") and p > 0:
        budget = b.max_batched_tokens
        k = budget / p
        pairs = k * (p * cached + p * (p + 1.0) / 2.0)
        seqs = min(max(1, round(k)), len(table.sampled) - 1)
        rate = k / table.time_s(budget, 0, 0.0, pairs, seqs)
        one = min(p, float(budget))
        alone = math.ceil(p / budget) * table.time_s(
            int(one), 0, 0.0, one * cached + one * (one + 1.0) / 2.0, 1
        )
        if slo is not None and slo.ttft_s is not None and alone > slo.ttft_s:
            rate = 0.0
        caps.append(rate)
    if role in ("decode", "both") and out > 1:
        ctx = p + cached + out / 2.0
        seats = min(b.max_num_seqs, int(kv_tokens // max(ctx, 1.0)), len(table.sampled) - 1)
        d = np.arange(1, seats + 1, dtype=np.float64)
        step = np.asarray(table.decode_base[1 : seats + 1]) + table.decode_per_context * ctx * d
        ok = np.ones_like(d, dtype=bool)
        if slo is not None and slo.tpot_s is not None:
            ok = step <= slo.tpot_s
        caps.append(float((d / step)[ok].max()) / (out - 1.0) if ok.any() else 0.0)
    if not caps or min(caps) <= 0:
        return 0.0
    return 1.0 / sum(1.0 / c for c in caps)


def sample_interval_s(spec: InferenceService) -> float:
    """How often a service samples its state: its autoscaler's period, else SAMPLE_S."""
    return SAMPLE_S if spec.autoscaler is None else policy_for(spec.autoscaler).interval_s


class Replica:
    """A replica's place and life: pending (no nodes yet), starting, ready, draining, gone."""

    __slots__ = ("core", "generation", "index", "nodes", "placed_s", "state")

    def __init__(self, index: int, core: ServingCore):
        self.index = index
        self.core = core
        self.state = "pending"
        self.nodes: list[int] = []
        self.placed_s = 0.0
        self.generation = 0  # bumped when a cold start is cancelled or restarted


class Fleet:
    """The replicas of one `inference` service and the serving model on top of them (see the
    module docstring). What the broker and the lender see of a service (ports.Claimant)."""

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        owner: int,
        spec: InferenceService,
        pool: NodePool,
        model: ServingModel,
        *,
        sizing: ReplicaSizing,
        regrow_after_s: float,
        broker: NodeBroker,
        ledger: Ledger,
        sample: Callable[[], None],
        storage: SharedStorage | None,
        role: str = "both",
    ):
        self.env = env
        self.broker = broker
        self.ledger = ledger
        self._sample_gauges = sample
        self.storage = storage
        self.regrow_after_s = regrow_after_s
        self.index = index
        self.owner = owner
        self.spec = spec
        self.pool = pool
        self.name = spec.name
        self.model = model
        self.sizing = sizing
        self.table = sizing.table
        self.kv_tokens = sizing.kv_tokens
        self.weight_bytes = sizing.weight_bytes
        gpn = pool.gpus_per_node
        self.slots_per_node = max(1, gpn // spec.gpus_per_replica)
        self.nodes_per_replica = max(1, spec.gpus_per_replica // gpn)

        self.role = role
        #: what one replica carries within the SLO, for a planner (slo_capacity_rps)
        self.capacity_rps = 0.0
        if spec.autoscaler is not None and spec.autoscaler.kind == "planner":
            self.capacity_rps = slo_capacity_rps(
                spec, sizing.table, sizing.kv_tokens, role, model.mean_lengths()
            )
        self.policy = (
            None if spec.autoscaler is None else policy_for(spec.autoscaler, self.capacity_rps)
        )
        self.interval_s = SAMPLE_S if self.policy is None else self.policy.interval_s
        self.replicas: list[Replica] = []  # every replica ever asked for, by index
        self.live: dict[int, Replica] = {}  # those not gone, in index order
        self.counts = dict.fromkeys(("pending", "starting", "ready", "draining"), 0)
        self.ready: list[int] = []  # indices of ready replicas, in order of readiness
        self.node_slots: dict[int, list[int]] = {}  # held node -> replica per slot (-1 free)
        self.desired = 0
        #: a demand-response event's ceiling on the replicas asked for (engine/power.py)
        self.ceiling: int | None = None
        self.rows: list[ServiceRow] = []
        self._arrivals_at_tick: float = 0
        self._tick_s = 0.0  # time of the last tick
        self._busy_mark = (0.0, 0.0)  # (time, busy GPU-seconds) at the last sample
        # GPU-second meters
        self._held_gpus = 0
        self._holdings: deque[tuple[float, int]] = deque()  # (time, nodes held) at each change
        self._held_since = 0.0
        self.held_gpu_s = 0.0
        self.cold_gpu_s = 0.0
        self.busy_gpu_s = 0.0
        self._replica_s = 0.0  # integral of provisioned replicas (placed, not gone)
        self._provisioned = 0
        self._prov_since = 0.0
        self.replicas_max = 0
        model.connect(self)
        self.process = self.env.process(self._life())

    @property
    def tier(self) -> str:
        return self.model.tier

    @property
    def now(self) -> float:
        return self.env.now

    @property
    def held_gpus(self) -> int:
        return self._held_gpus

    def has_pending(self) -> bool:
        """Replicas asked for and not yet placed on nodes."""
        return self.counts["pending"] > 0

    def book_busy(self, gpu_s: float) -> None:
        """The model books GPU-seconds its replicas spent iterating (the fluid tier's flows)."""
        self.busy_gpu_s += gpu_s

    # --- life ---------------------------------------------------------------------------------
    def _life(self) -> Any:
        env = self.env
        model = self.model
        start = self.spec.start_at
        if start > 0:
            yield env.timeout(start)
        self._held_since = self._prov_since = self._tick_s = env.now
        model.start(env.now)
        self._busy_mark = (env.now, 0.0)
        self.desired = self.spec.initial_replicas
        self._add_replicas(self.desired)
        self._sample()
        next_tick = env.now + self.interval_s
        while True:
            wake = next_tick
            if self.counts["draining"]:
                for r in self.live.values():
                    if r.state == "draining":
                        wake = min(wake, r.core.next_time())
            yield env.timeout(max(wake - env.now, 0.0))
            now = env.now
            model.advance_to(now)
            self._finish_drains()
            if now >= next_tick:
                self._tick(now)
                next_tick += self.interval_s

    def _tick(self, now: float) -> None:
        arrived = self._arrivals_since_tick(now)
        if self.policy is not None:
            c = self.counts
            current = c["pending"] + c["starting"] + c["ready"]
            metric = self._metric(arrived)
            self.desired = self.policy.update(now, current, metric, ready=len(self.ready))
            if self.ceiling is not None:
                self.desired = min(self.desired, self.ceiling)
            if self.desired > current:
                self._add_replicas(self.desired - current)
            elif self.desired < current:
                self._remove_replicas(current - self.desired)
        self._sample(arrived / self.interval_s)

    def _arrivals_since_tick(self, now: float) -> float:
        total = self.model.arrived()
        arrived = total - self._arrivals_at_tick
        self._arrivals_at_tick = total
        self._tick_s = now
        return arrived

    def _metric(self, arrived: float) -> float:
        assert self.spec.autoscaler is not None
        kind = self.spec.autoscaler.metric
        if kind == "rps":
            return arrived / self.interval_s
        return self.model.metric(kind)

    def _sample(self, rps: float = 0.0) -> None:
        counts = self.counts
        in_flight, queued, kv = self.model.row()
        self.rows.append(
            ServiceRow(
                self.env.now,
                rps,
                counts["pending"],
                counts["starting"],
                counts["ready"],
                counts["draining"],
                self.desired,
                in_flight,
                queued,
                kv,
                self._busy_gpus_since_sample(),
            )
        )

    def _busy_so_far(self) -> float:
        """GPU-seconds spent iterating up to now, replicas still serving included."""
        if not self.model.cores_track_busy:  # nothing to add per replica: skip the sum
            return self.busy_gpu_s
        now = self.env.now
        return self.busy_gpu_s + self.spec.gpus_per_replica * sum(
            r.core.busy_until(now) for r in self.live.values() if r.state in ("ready", "draining")
        )

    def _busy_gpus_since_sample(self) -> float:
        """Mean GPUs iterating since the previous sample (0 at the first): what a power model
        needs of serving's activity over time."""
        now, busy = self.env.now, self._busy_so_far()
        last_t, last_busy = self._busy_mark
        self._busy_mark = (now, busy)
        return (busy - last_busy) / (now - last_t) if now > last_t else 0.0

    # --- demand response ----------------------------------------------------------------------
    def busy_share(self) -> float:
        """The share of its ready replicas' GPUs that iterated since the last sample (the last
        sample's when none has passed): what a replica taken out would stop drawing."""
        gpus = len(self.ready) * self.spec.gpus_per_replica
        if not gpus:
            return 0.0
        last_t, last_busy = self._busy_mark
        now = self.env.now
        self.model.advance_to(now)  # the model catches up to the clock (it may lag a tick)
        if now > last_t:
            return min(1.0, (self._busy_so_far() - last_busy) / (now - last_t) / gpus)
        return min(1.0, self.rows[-1].busy_gpus / gpus) if self.rows else 0.0

    def shed(self, count: int) -> None:
        """Take `count` ready replicas out (they drain) and hold the service at what is left
        until release(): a demand-response event's ceiling over the autoscaler."""
        c = self.counts
        current = c["pending"] + c["starting"] + c["ready"]
        self.ceiling = current - count
        self.desired = min(self.desired, self.ceiling)
        self._remove_replicas(count)

    def release(self) -> None:
        """The event is over: without an autoscaler the service asks for its replicas back
        (they cold-start); with one, its next tick decides."""
        self.ceiling = None
        if self.policy is None:
            c = self.counts
            current = c["pending"] + c["starting"] + c["ready"]
            self.desired = self.spec.initial_replicas
            if self.desired > current:
                self._add_replicas(self.desired - current)

    # --- replicas ------------------------------------------------------------------------------
    def _add_replicas(self, count: int) -> None:
        """Ask for `count` replicas: they wait for nodes (pending), then cold-start."""
        for _ in range(count):
            r = Replica(len(self.replicas), self.model.new_core(len(self.replicas)))
            self.replicas.append(r)
            self.live[r.index] = r
            self.counts["pending"] += 1
        if count:
            self.place_pending()

    def place_pending(self) -> bool:
        """Place replicas waiting for nodes, oldest first: into free slots of the service's
        nodes, then onto nodes claimed from the cluster, all that are needed in one claim (a
        scale-up of many replicas is one allocation). True if any was placed."""
        if not self.counts["pending"]:
            return False
        pending = [r for r in self.live.values() if r.state == "pending"]
        placed = 0
        if self.slots_per_node > 1:
            free = [
                (node, j)
                for node, slots in sorted(self.node_slots.items())
                for j, k in enumerate(slots)
                if k < 0
            ]
            short = len(pending) - len(free)
            if short > 0:
                want = -(-short // self.slots_per_node)
                available = self.broker.free_nodes(self.pool.name)
                claimed = self._claim(min(want, available)) if min(want, available) > 0 else None
                if claimed:
                    free += [(node, j) for node in claimed for j in range(self.slots_per_node)]
            for r, (node, j) in zip(pending, free, strict=False):
                self.node_slots[node][j] = r.index
                r.nodes = [node]
                placed += 1
        else:
            for r in pending:
                claimed = self._claim(self.nodes_per_replica)
                if claimed is None:
                    break
                r.nodes = claimed
                for node in r.nodes:
                    self.node_slots[node][0] = r.index
                placed += 1
        if placed:
            self._set_provisioned(+placed)
            self._cold_start(pending[:placed])
        if placed < len(pending):  # still short: borrow from training of lower priority
            self.broker.lend(self, self._borrow(len(pending) - placed))
        return placed > 0

    def _ahead(self) -> int:
        """Replicas the autoscaler is heading for beyond those it has asked for: the rest of a
        scale-up that its rate limit spreads over the next ticks (0 without an autoscaler)."""
        if self.policy is None:
            return 0
        c = self.counts
        return max(0, self.policy.wanted - (c["pending"] + c["starting"] + c["ready"]))

    def _borrow(self, unplaced: int) -> int:
        """Nodes to ask of training when `unplaced` replicas find none free: enough for them and
        for the rest of the autoscaler's swing, and at least back up to the most the service
        held within `scheduler.regrow_after_s` (a load that swung up once there is likely to
        again). So an elastic job shrinks once per swing instead of once per autoscaler tick;
        nodes freed ahead of need sit free until the next ticks claim them, and elastic jobs
        do not take them back within the regrow hold."""
        per_replica = (
            self.nodes_per_replica if self.slots_per_node == 1 else 1.0 / self.slots_per_node
        )
        need = math.ceil((unplaced + self._ahead()) * per_replica)
        return max(need, self.held_back())

    def held_back(self) -> int:
        """Nodes the service may want back soon: the most it held within
        `scheduler.regrow_after_s` over what it holds now. Borrowing asks for them at once,
        and elastic jobs leave that many free nodes alone when they grow (Factory.held_back)."""
        self._forget_old_holdings()
        peak = max((n for _, n in self._holdings), default=0)
        return max(peak - self._held_gpus // self.pool.gpus_per_node, 0)

    def _claim(self, count: int) -> list[int] | None:
        """Claim `count` free nodes for the service: their indices, or None."""
        alloc = self.broker.allocate(self.pool.name, count, self.owner)
        if alloc is None:
            return None
        self._book_held()
        nodes = [int(x) for x in alloc.nodes]
        for node in nodes:
            self.node_slots[node] = [-1] * self.slots_per_node
        self._held_gpus += count * self.pool.gpus_per_node
        self._note_holding()
        self._sample_gauges()
        return nodes

    def _note_holding(self) -> None:
        self._holdings.append((self.env.now, self._held_gpus // self.pool.gpus_per_node))
        self._forget_old_holdings()

    def _forget_old_holdings(self) -> None:
        """Keep the holdings within `scheduler.regrow_after_s`, and the last one before it (what
        was held at the window's start)."""
        cutoff = self.env.now - self.regrow_after_s
        while len(self._holdings) > 1 and self._holdings[1][0] <= cutoff:
            self._holdings.popleft()

    def _release_empty_nodes(self) -> None:
        empty = [node for node, slots in self.node_slots.items() if all(s < 0 for s in slots)]
        if not empty:
            return
        self._book_held()
        for node in empty:
            del self.node_slots[node]
        self._held_gpus -= len(empty) * self.pool.gpus_per_node
        self._note_holding()
        self.broker.take_back(
            self.owner, Allocation(self.pool.name, np.array(empty, dtype=np.int64))
        )

    def _vacate(self, r: Replica) -> None:
        for node in r.nodes:
            slots = self.node_slots.get(node)
            if slots is not None and r.index in slots:
                slots[slots.index(r.index)] = -1
        r.nodes = []

    def _cold_start(self, group: list[Replica]) -> None:
        """Start replicas placed together: their containers start at once (one timer), then
        each loads its weights (one storage flow each, opened together)."""
        env = self.env
        cs = self.spec.cold_start
        for r in group:
            self._set_state(r, "starting")
            r.placed_s = env.now
            r.generation += 1
        gens = [(r, r.generation) for r in group]

        def loaded(r: Replica, gen: int) -> Any:
            def done(_ev: Any) -> None:
                if r.generation == gen and r.state == "starting":
                    self._ready(r)

            return done

        def container_up(_ev: Any) -> None:
            alive = [(r, gen) for r, gen in gens if r.generation == gen and r.state == "starting"]
            if not alive:
                return
            if cs.weights_s is not None:
                timer = env.timeout(cs.weights_s)
                for r, gen in alive:
                    timer.callbacks.append(loaded(r, gen))
                return
            source = cs.weights_from or ("storage" if self.storage is not None else "nvme")
            if source == "storage":
                assert self.storage is not None
                cap = self.spec.gpus_per_replica * self.pool.nic_gbit_s / 8.0 * 1e9
                flows = self.storage.open_many(
                    "read", [(self.weight_bytes, cap, f"{self.name}/{r.index}") for r, _ in alive]
                )
                for (r, gen), flow in zip(alive, flows, strict=True):
                    flow.done.callbacks.append(loaded(r, gen))
            else:
                assert self.pool.nvme is not None
                rate = self.pool.nvme.read_gb_s * 1e9 * self.nodes_per_replica
                timer = env.timeout(self.weight_bytes / rate)
                for r, gen in alive:
                    timer.callbacks.append(loaded(r, gen))

        env.timeout(cs.container_s).callbacks.append(container_up)

    def _ready(self, r: Replica) -> None:
        now = self.env.now
        self.model.advance_to(now)
        self.cold_gpu_s += self.spec.gpus_per_replica * (now - r.placed_s)
        self._set_state(r, "ready")
        r.core.busy_s = 0.0
        r.placed_s = now  # from here on: serving time
        self.ready.append(r.index)
        self.model.replica_ready(r, now)

    def _remove_replicas(self, count: int) -> None:
        now = self.env.now
        model = self.model
        model.advance_to(now)
        before = len(self.ready)
        live = list(reversed(self.live.values()))
        order = (
            [r for r in live if r.state == "pending"]
            + [r for r in live if r.state == "starting"]
            + sorted(
                (self.replicas[k] for k in self.ready),
                key=(
                    (lambda r: (self._node_load(r), model.in_flight(r.index), -r.index))
                    if model.holds_requests
                    else (lambda r: (self._node_load(r), 0, -r.index))
                ),
            )
        )
        for r in order[:count]:
            if r.state == "pending":
                self._gone(r)
            elif r.state == "starting":
                self.cold_gpu_s += self.spec.gpus_per_replica * (now - r.placed_s)
                r.generation += 1
                self._gone(r)
            else:
                self.ready.remove(r.index)
                self._set_state(r, "draining")
        self._finish_drains()
        self._release_empty_nodes()
        model.scaled_down(before, len(self.ready))

    def _node_load(self, r: Replica) -> int:
        """Replicas on the nodes of `r`: a scale-down takes replicas from the emptiest nodes
        first, so that whole nodes go back to the cluster (then the fewest requests in flight,
        then the newest)."""
        return sum(1 for node in r.nodes for k in self.node_slots.get(node, ()) if k >= 0)

    def _finish_drains(self) -> None:
        if not self.counts["draining"]:
            return
        now = self.env.now
        done = False
        for r in list(self.live.values()):
            if r.state == "draining" and r.core.outstanding == 0:
                self._retire(r, now)
                done = True
        if done:
            self._release_empty_nodes()

    def _retire(self, r: Replica, now: float) -> None:
        """A ready or draining replica stops: book what it served."""
        self.busy_gpu_s += self.spec.gpus_per_replica * r.core.busy_until(now)
        self._gone(r)

    def _set_state(self, r: Replica, state: str) -> None:
        self.counts[r.state] -= 1
        r.state = state
        if state != "gone":
            self.counts[state] += 1

    def _gone(self, r: Replica) -> None:
        placed = r.state != "pending"
        self._set_state(r, "gone")
        del self.live[r.index]
        if not placed:
            return
        self.model.stopped(r)
        self._vacate(r)
        self._set_provisioned(-1)

    def _set_provisioned(self, delta: int) -> None:
        now = self.env.now
        self._replica_s += self._provisioned * (now - self._prov_since)
        self._prov_since = now
        self._provisioned += delta
        self.replicas_max = max(self.replicas_max, self._provisioned)

    def _book_held(self) -> None:
        now = self.env.now
        self.held_gpu_s += self._held_gpus * (now - self._held_since)
        self._held_since = now

    # --- failures -------------------------------------------------------------------------------
    # --- failures -------------------------------------------------------------------------------
    def node_failed(self, node: int, component: str) -> None:
        """A node the service holds failed (`software`: its processes restart, the node stays)."""
        now = self.env.now
        model = self.model
        model.advance_to(now)
        slots = self.node_slots.get(node, [])
        hit = [self.replicas[k] for k in sorted(set(slots)) if k >= 0]
        model.node_failing(hit)
        if component != "software":  # the node is down and no longer ours
            self._book_held()
            del self.node_slots[node]
            self._held_gpus -= self.pool.gpus_per_node
            self._note_holding()
        orphans: list[int] = []
        replace = 0
        for r in hit:
            if r.state == "starting":
                self.cold_gpu_s += self.spec.gpus_per_replica * (now - r.placed_s)
            else:
                self.busy_gpu_s += self.spec.gpus_per_replica * r.core.busy_until(now)
            orphans += model.evicted(r, now)
            r.core.busy_s = 0.0
            if r.state == "ready":
                self.ready.remove(r.index)
            if component == "software" and r.state != "draining":
                self._cold_start([r])  # restart in place
                continue
            replace += r.state in ("ready", "starting")
            self._gone(r)
        self._release_empty_nodes()  # a multi-node replica's nodes that are still up
        self._add_replicas(replace)  # the ReplicaSet asks for replacements at once
        model.reroute(orphans, now)

    # --- end of the run ---------------------------------------------------------------------------
    def close(self, horizon: float) -> None:
        model = self.model
        model.advance_to(horizon)
        model.close(horizon)
        last = self._tick_s
        arrived = self._arrivals_since_tick(horizon)
        if horizon > last:  # a partial tick: its rate over the time it lasted
            self._sample(arrived / (horizon - last))
        for r in self.live.values():
            if r.state in ("ready", "draining"):
                self.busy_gpu_s += self.spec.gpus_per_replica * r.core.busy_until(horizon)
            elif r.state == "starting":
                self.cold_gpu_s += self.spec.gpus_per_replica * (horizon - r.placed_s)
        self._book_held()
        self._set_provisioned(0)
        tel = self.ledger
        idle = self.held_gpu_s - self.cold_gpu_s - self.busy_gpu_s
        tel.add("cold_start", self.cold_gpu_s)
        tel.add("inference_busy", self.busy_gpu_s)
        tel.add("inference_idle", max(idle, 0.0))

    # --- results --------------------------------------------------------------------------------
    def requests_frame(self) -> dict[str, np.ndarray]:
        """The per-request table's columns (requests that arrived before the end of the run;
        none in the fluid tier)."""
        return self.model.requests_frame()

    def summary(self, horizon: float) -> dict[str, Any]:
        """The service's summary (definitions in docs/reference/metrics.md): the model's
        requests and latencies, the fleet's replicas and GPU-hours."""
        active_s = max(horizon - self.spec.start_at, 0.0)
        return {
            "fidelity": self.tier,
            **self.model.summary(horizon, active_s),
            "replicas_mean": self._replica_s / active_s if active_s else 0.0,
            "replicas_max": self.replicas_max,
            "kv_capacity_tokens": self.kv_tokens,
            **({} if (sp := self.sizing.speculation) is None else {"speculative": sp}),
            "gpu_h": {
                "held": self.held_gpu_s / 3600.0,
                "busy": self.busy_gpu_s / 3600.0,
                "cold_start": self.cold_gpu_s / 3600.0,
            },
        }
