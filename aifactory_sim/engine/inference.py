"""An inference service in the running factory: requests, a router, replicas on cluster nodes
with cold starts, an autoscaler, and the service's share of the GPU-hour ledger.

Time inside a service. Requests and replica iterations are the service's own events, handled in
plain Python in time order (`advance_to`), not as SimPy events: a million requests would
otherwise cost a million SimPy events and more. The service catches up to the simulated clock
whenever something outside it happens or may need to: an autoscaler tick (one SimPy timeout per
sync period), a cold start finishing, a node failing, the end of a draining replica's work, the
end of the run. Between two such moments nothing outside the service depends on its state, so
catching up later gives the same result as stepping along. Every rule below is the same in the
`step` and `fast` tiers; only the replica's planning differs (engine/replica.py).

Router (how a request reaches a replica):
- `least-outstanding` (default): the ready replica with the fewest requests in flight (queued
  or running on it; ties to the lowest index). When every ready replica already holds
  `max_num_seqs` requests the request waits in the router's FIFO queue and goes to the first
  replica that drops below it; with `max_num_seqs: 1` this is the M/M/c queue of Erlang's
  formula (one central queue, c servers).
- `round-robin`, `random`: at once to the next ready replica in turn, or one drawn uniformly;
  each replica queues what it cannot admit.
With no ready replica (all starting) requests wait in the router's queue.

Requests that can never run are dropped on arrival: a prompt plus output longer than a
replica's whole KV cache (vLLM refuses a prompt over `max_model_len`), or, without chunked
prefill, a prompt longer than the token budget.

Replicas. A replica is `tp` GPUs: `gpus_per_node / tp` replicas share a node, or one replica
spans `tp / gpus_per_node` whole nodes. The service holds whole nodes from the cluster (the
cluster's owner id is the service's) and fills their slots first. A new replica waits for
nodes, then cold-starts: `cold_start.container_s`, then its weights, at `weights_s` when given,
else read from shared storage (a flow of the storage model, capped by the replica's NICs) or
from the node's local NVMe at its read bandwidth. A replica the autoscaler removes stops taking
requests and drains what it holds; a pending or starting one is cancelled first (Kubernetes
deletes unready pods first), then the ready one with the fewest requests in flight. A node
failure kills the replicas on it (their requests return to the router, counted as a
preemption) and a replacement is asked for at once, as a ReplicaSet does; a software failure
restarts them on the same node.

Ledger: the GPUs of the nodes a service holds are booked `cold_start` (a replica's GPUs from
placement to ready), `inference_busy` (a replica's GPUs while it iterates) and
`inference_idle` (all the rest: ready with no work, slots not yet filled, waiting to drain).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from ..estimate import as_gpu, gpu_fields
from ..kernels.inference import (
    IterationModel,
    gpu_inference_args,
    kv_capacity_tokens,
    weight_bytes,
)
from .autoscaler import policy_for
from .cluster import Allocation
from .replica import ReplicaCore, RequestLog
from .traffic import draw_requests

if TYPE_CHECKING:
    from ..spec.inference import InferenceService
    from ..spec.scenario import NodePool
    from .broker import NodeBroker
    from .storage import SharedStorage
    from .telemetry import Ledger

INF = math.inf

#: How often a service without an autoscaler records its state (s).
SAMPLE_S = 15.0


class Replica:
    """A replica's place and life: pending (no nodes yet), starting, ready, draining, gone."""

    __slots__ = ("core", "generation", "index", "nodes", "placed_s", "seq", "state")

    def __init__(self, index: int, core: ReplicaCore):
        self.index = index
        self.core = core
        self.state = "pending"
        self.nodes: list[int] = []
        self.placed_s = 0.0
        self.generation = 0  # bumped when a cold start is cancelled or restarted
        self.seq = -1  # the service heap's entry for this replica's plan end


class Service:
    """One `inference` service of the scenario."""

    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        owner: int,
        spec: InferenceService,
        pool: NodePool,
        rngs: dict[str, np.random.Generator],
        *,
        tier: str,
        compute_slowdown: float,
        horizon: float,
        regrow_after_s: float,
        broker: NodeBroker,
        ledger: Ledger,
        sample: Callable[[], None],
        storage: SharedStorage | None,
    ):
        from .. import catalog

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
        self.fast = tier != "step"
        gpu = as_gpu(pool.gpu)
        g = gpu_inference_args(
            gpu_fields(gpu, compute_slowdown), catalog.entry("calibration", gpu.family)
        )
        m = spec.model.kernel_args()
        b = spec.batching
        self.table = IterationModel(
            m, g, tp=spec.tp, precision=spec.precision, kv_precision=spec.kv_precision
        ).table(b.max_batched_tokens, b.max_num_seqs)
        self.kv_tokens = float(
            kv_capacity_tokens(
                m,
                g["hbm_bytes"],
                tp=spec.tp,
                precision=spec.precision,
                kv_precision=spec.kv_precision,
                gpu_memory_utilization=spec.gpu_memory_utilization,
                max_batched_tokens=b.max_batched_tokens,
                max_num_seqs=b.max_num_seqs,
            )
        )
        self.weight_bytes = float(weight_bytes(m, spec.precision))
        gpn = pool.gpus_per_node
        self.slots_per_node = max(1, gpn // spec.tp)
        self.nodes_per_replica = max(1, spec.tp // gpn)

        self.model_args, self.gpu_args = m, g
        self.policy = None if spec.autoscaler is None else policy_for(spec.autoscaler)
        self.interval_s = SAMPLE_S if self.policy is None else self.policy.interval_s
        self._next = 0  # requests arrived so far
        self._init_requests(rngs, max(horizon - spec.start_at, 0.0))

        self.replicas: list[Replica] = []  # every replica ever asked for, by index
        self.live: dict[int, Replica] = {}  # those not gone, in index order
        self.counts = dict.fromkeys(("pending", "starting", "ready", "draining"), 0)
        self.ready: list[int] = []  # indices of ready replicas, in order of readiness
        self.outs: list[int] = []  # requests in flight per replica (by index)
        self.queue: deque[int] = deque()  # the router's queue
        self._rr = 0
        self._heap: list[tuple[float, int, int]] = []  # (plan end, seq, replica)
        self._seq = 0
        self.node_slots: dict[int, list[int]] = {}  # held node -> replica per slot (-1 free)
        self.desired = 0
        self.rows: list[tuple[Any, ...]] = []
        self._arrivals_at_tick = 0
        self._tick_s = 0.0  # time of the last tick
        # Requests in the system (arrived, not dropped, not finished) and their time integral,
        # kept from the events themselves: Little's law checks it against the request table.
        self._busy_mark = (0.0, 0.0)  # (time, busy GPU-seconds) at the last sample
        self._in_system = 0
        self._area = 0.0
        self._area_t = 0.0
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
        self.process = self.env.process(self._life())

    def _init_requests(self, rngs: dict[str, np.random.Generator], span_s: float) -> None:
        """Every request of the run, drawn at once (vectorised)."""
        spec, b = self.spec, self.spec.batching
        reqs = draw_requests(
            spec.traffic,
            spec.prompt_tokens,
            spec.output_tokens,
            span_s,
            arrivals_rng=rngs["arrivals"],
            prompt_rng=rngs["prompts"],
            output_rng=rngs["outputs"],
        )
        self.log = RequestLog(
            reqs.arrival_s + spec.start_at, reqs.prompt_tokens, reqs.output_tokens
        )
        too_long = self.log.prompt_tokens + self.log.output_tokens > self.kv_tokens
        if not b.chunked_prefill:
            too_long |= self.log.prompt_tokens > b.max_batched_tokens
        self.dropped = too_long
        self._arrivals = self.log.arrival_s.tolist()
        self._drop = too_long.tolist()
        self._uniform = (
            rngs["router"].random(len(self.log)).tolist() if spec.router == "random" else None
        )

    def _new_core(self, index: int) -> Any:
        b = self.spec.batching
        return ReplicaCore(
            self.table,
            self.log,
            kv_capacity_tokens=self.kv_tokens,
            max_num_seqs=b.max_num_seqs,
            max_batched_tokens=b.max_batched_tokens,
            chunked_prefill=b.chunked_prefill,
            fast=self.fast,
            index=index,
        )

    @property
    def tier(self) -> str:
        return "fast" if self.fast else "step"

    @property
    def held_gpus(self) -> int:
        return self._held_gpus

    def has_pending(self) -> bool:
        """Replicas asked for and not yet placed on nodes."""
        return self.counts["pending"] > 0

    # --- the service's clock -----------------------------------------------------------------

    def advance_to(self, t: float) -> None:
        """Handle every arrival and plan end at or before `t`, in time order (a plan end before
        an arrival at the same instant: the finished request frees its seat first)."""
        arrivals, n = self._arrivals, len(self._arrivals)
        heap, replicas = self._heap, self.replicas
        i = self._next
        while True:
            ta = arrivals[i] if i < n else INF
            while heap and replicas[heap[0][2]].seq != heap[0][1]:
                heapq.heappop(heap)  # a plan that was cut or cancelled
            tr = heap[0][0] if heap else INF
            if tr <= ta:
                if tr > t:
                    break
                self._area += self._in_system * (tr - self._area_t)
                self._area_t = tr
                self._in_system -= self._plan_end(replicas[heapq.heappop(heap)[2]], tr)
            else:
                if ta > t:
                    break
                self._area += self._in_system * (ta - self._area_t)
                self._area_t = ta
                touched: list[Replica] = []
                while i < n and arrivals[i] == ta:  # requests arriving together
                    if not self._drop[i]:
                        self._in_system += 1
                        r = self._route(i, ta)
                        if r is not None and r.core.plan is None:
                            touched.append(r)
                    i += 1
                self._next = i
                for r in touched:
                    self._schedule(r, ta)
        self._next = i

    def _push(self, r: Replica) -> None:
        self._seq += 1
        r.seq = self._seq
        if r.core.plan is not None:
            heapq.heappush(self._heap, (r.core.plan.end, self._seq, r.index))

    def _schedule(self, r: Replica, now: float) -> None:
        if r.core.plan is None:
            r.core.schedule(now)
            self._push(r)

    def _plan_end(self, r: Replica, now: float) -> int:
        """A replica's plan ends: its finished requests leave (their number is returned), the
        router's queue refills it, and it plans again."""
        core = r.core
        done = core.advance()
        if done:
            self.outs[r.index] -= done
            if self.queue and r.state == "ready":
                self._fill_from_queue(r, now)
        core.schedule(now)
        self._push(r)
        return done

    # --- router ------------------------------------------------------------------------------
    def _route(self, rid: int, now: float) -> Replica | None:
        """Send request `rid` to a replica (returned), or to the router's queue (None)."""
        ready = self.ready
        if not ready or self.queue:
            self.queue.append(rid)
            return None
        policy = self.spec.router
        if policy == "least-outstanding":
            outs = self.outs
            k = min(ready, key=outs.__getitem__)
            if outs[k] >= self.spec.batching.max_num_seqs:
                self.queue.append(rid)
                return None
        elif policy == "round-robin":
            k = ready[self._rr % len(ready)]
            self._rr += 1
        else:
            assert self._uniform is not None
            k = ready[int(self._uniform[rid] * len(ready))]
        return self._send(self.replicas[k], rid, now)

    def _send(self, r: Replica, rid: int, now: float) -> Replica:
        plan = r.core.plan
        k_before = plan.k if plan is not None else 0
        r.core.add(rid, now)
        self.outs[r.index] += 1
        if plan is not None and plan.k != k_before:
            self._push(r)  # the decode stretch was cut
        return r

    def _fill_from_queue(self, r: Replica, now: float) -> None:
        """A replica has room: hand it the router's queue, oldest first."""
        queue = self.queue
        if self.spec.router == "least-outstanding":
            seats = self.spec.batching.max_num_seqs
            while queue and self.outs[r.index] < seats:
                self._send(r, queue.popleft(), now)
        else:
            waiting = list(queue)
            queue.clear()
            for rid in waiting:
                target = self._route(rid, now)
                if target is not None:
                    self._schedule(target, now)

    # --- life ---------------------------------------------------------------------------------
    def _life(self) -> Any:
        env = self.env
        start = self.spec.start_at
        if start > 0:
            yield env.timeout(start)
        self._held_since = self._prov_since = self._tick_s = self._area_t = env.now
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
            self.advance_to(now)
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
            if self.desired > current:
                self._add_replicas(self.desired - current)
            elif self.desired < current:
                self._remove_replicas(current - self.desired)
        self._sample(arrived / self.interval_s)

    def _arrivals_since_tick(self, now: float) -> int:
        arrived = self._next - self._arrivals_at_tick
        self._arrivals_at_tick = self._next
        self._tick_s = now
        return arrived

    def _metric(self, arrived: int) -> float:
        kind = self.spec.autoscaler.metric  # type: ignore[union-attr]
        if kind == "rps":
            return arrived / self.interval_s
        if kind == "queue":
            return float(
                len(self.queue) + sum(len(self.replicas[k].core.waiting) for k in self.ready)
            )
        return float(len(self.queue) + sum(self.outs[k] for k in self.ready))

    def _sample(self, rps: float = 0.0) -> None:
        counts = self.counts
        kv = [
            self.replicas[k].core.kv_used_blocks() / max(self.replicas[k].core.kv_blocks, 1)
            for k in self.ready
        ]
        self.rows.append(
            (
                self.env.now,
                rps,
                counts["pending"],
                counts["starting"],
                counts["ready"],
                counts["draining"],
                self.desired,
                sum(self.outs[k] for k in self.ready) + len(self.queue),
                len(self.queue),
                float(np.mean(kv)) if kv else 0.0,
                self._busy_gpus_since_sample(),
            )
        )

    def _busy_so_far(self) -> float:
        """GPU-seconds spent iterating up to now, replicas still serving included."""
        now = self.env.now
        return self.busy_gpu_s + self.spec.tp * sum(
            r.core.busy_until(now) for r in self.live.values() if r.state in ("ready", "draining")
        )

    def _busy_gpus_since_sample(self) -> float:
        """Mean GPUs iterating since the previous sample (0 at the first): what a power model
        needs of serving's activity over time."""
        now, busy = self.env.now, self._busy_so_far()
        last_t, last_busy = self._busy_mark
        self._busy_mark = (now, busy)
        return (busy - last_busy) / (now - last_t) if now > last_t else 0.0

    # --- replicas ------------------------------------------------------------------------------
    def _add_replicas(self, count: int) -> None:
        """Ask for `count` replicas: they wait for nodes (pending), then cold-start."""
        for _ in range(count):
            r = Replica(len(self.replicas), self._new_core(len(self.replicas)))
            self.replicas.append(r)
            self.live[r.index] = r
            self.counts["pending"] += 1
            self.outs.append(0)
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
                cap = self.spec.tp * self.pool.nic_gbit_s / 8.0 * 1e9
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
        self.advance_to(now)
        self.cold_gpu_s += self.spec.tp * (now - r.placed_s)
        self._set_state(r, "ready")
        r.core.busy_s = 0.0
        r.placed_s = now  # from here on: serving time
        self.ready.append(r.index)
        if self.queue:
            self._fill_from_queue(r, now)
            self._schedule(r, now)

    def _remove_replicas(self, count: int) -> None:
        now = self.env.now
        live = list(reversed(self.live.values()))
        order = (
            [r for r in live if r.state == "pending"]
            + [r for r in live if r.state == "starting"]
            + sorted(
                (self.replicas[k] for k in self.ready),
                key=lambda r: (self._node_load(r), self.outs[r.index], -r.index),
            )
        )
        for r in order[:count]:
            if r.state == "pending":
                self._gone(r)
            elif r.state == "starting":
                self.cold_gpu_s += self.spec.tp * (now - r.placed_s)
                r.generation += 1
                self._gone(r)
            else:
                self.ready.remove(r.index)
                self._set_state(r, "draining")
        self._finish_drains()
        self._release_empty_nodes()

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
        self.busy_gpu_s += self.spec.tp * r.core.busy_until(now)
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
        r.seq = -1
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
    def node_failed(self, node: int, component: str) -> None:
        """A node the service holds failed (`software`: its processes restart, the node stays)."""
        now = self.env.now
        self.advance_to(now)
        slots = self.node_slots.get(node, [])
        hit = [self.replicas[k] for k in sorted(set(slots)) if k >= 0]
        if component != "software":  # the node is down and no longer ours
            self._book_held()
            del self.node_slots[node]
            self._held_gpus -= self.pool.gpus_per_node
            self._note_holding()
        orphans: list[int] = []
        replace = 0
        for r in hit:
            if r.state == "starting":
                self.cold_gpu_s += self.spec.tp * (now - r.placed_s)
            else:
                self.busy_gpu_s += self.spec.tp * r.core.busy_until(now)
            orphans += r.core.evict(now)
            r.core.busy_s = 0.0
            self.outs[r.index] = 0
            r.seq = -1
            if r.state == "ready":
                self.ready.remove(r.index)
            if component == "software" and r.state != "draining":
                self._cold_start([r])  # restart in place
                continue
            replace += r.state in ("ready", "starting")
            self._gone(r)
        self._release_empty_nodes()  # a multi-node replica's nodes that are still up
        self._add_replicas(replace)  # the ReplicaSet asks for replacements at once
        for rid in sorted(orphans):
            target = self._route(rid, now)
            if target is not None:
                self._schedule(target, now)

    # --- end of the run ---------------------------------------------------------------------------
    def close(self, horizon: float) -> None:
        self.advance_to(horizon)
        self._close_requests(horizon)
        last = self._tick_s
        arrived = self._arrivals_since_tick(horizon)
        if horizon > last:  # a partial tick: its rate over the time it lasted
            self._sample(arrived / (horizon - last))
        for r in self.live.values():
            if r.state in ("ready", "draining"):
                self.busy_gpu_s += self.spec.tp * r.core.busy_until(horizon)
            elif r.state == "starting":
                self.cold_gpu_s += self.spec.tp * (horizon - r.placed_s)
        self._book_held()
        self._set_provisioned(0)
        tel = self.ledger
        idle = self.held_gpu_s - self.cold_gpu_s - self.busy_gpu_s
        tel.add("cold_start", self.cold_gpu_s)
        tel.add("inference_busy", self.busy_gpu_s)
        tel.add("inference_idle", max(idle, 0.0))

    def _close_requests(self, horizon: float) -> None:
        late = self.log.first_token_s > horizon  # a chained plan's head, applied ahead
        self.log.first_token_s[late] = math.nan
        self._check_little(horizon)

    def _check_little(self, horizon: float) -> None:
        """Little's law on every run: the time integral of requests in the system, kept from
        the engine's own arrivals and completions, must equal the sum over the request table
        of each request's time in the system (to the end of the run). A mismatch means a
        request was lost or counted twice: an internal error, never a user's."""
        n = self._next
        log = self.log
        keep = ~self.dropped[:n]
        spent = np.minimum(np.nan_to_num(log.finish_s[:n], nan=horizon), horizon)
        total = float((spent - log.arrival_s[:n])[keep].sum())
        self._area += self._in_system * (horizon - self._area_t)
        self._area_t = horizon
        if not math.isclose(self._area, total, rel_tol=1e-9, abs_tol=1e-6):
            raise RuntimeError(
                f"service {self.name}: requests in system integrate to "
                f"{self._area} request-s, the request table to {total}"
            )

    # --- results --------------------------------------------------------------------------------
    def requests_frame(self) -> dict[str, np.ndarray]:
        """The per-request table's columns (requests that arrived before the end of the run)."""
        log = self.log
        n = self._next
        arrival = log.arrival_s[:n]
        return {
            "request": np.arange(n),
            "arrival_s": arrival,
            "admitted_s": log.admitted_s[:n],
            "first_token_s": log.first_token_s[:n],
            "finish_s": log.finish_s[:n],
            "prompt_tokens": log.prompt_tokens[:n],
            "output_tokens": log.output_tokens[:n],
            "queue_wait_s": log.admitted_s[:n] - arrival,
            "preemptions": log.preemptions[:n],
            "replica": log.replica[:n],
            "dropped": self.dropped[:n],
        }

    def summary(self, horizon: float) -> dict[str, Any]:
        """The service's summary (definitions in docs/reference/metrics.md)."""
        cols = self.requests_frame()
        done = np.isfinite(cols["finish_s"])
        arrival = cols["arrival_s"][done]
        first = cols["first_token_s"][done]
        finish = cols["finish_s"][done]
        out = cols["output_tokens"][done]
        ttft = first - arrival
        multi = out > 1
        tpot = (finish[multi] - first[multi]) / (out[multi] - 1)
        e2e = finish - arrival
        wait = cols["queue_wait_s"][done]
        dropped = int(cols["dropped"].sum())
        active_s = max(horizon - self.spec.start_at, 0.0)
        slo = self.spec.slo
        attained: float | None = None
        met: dict[str, bool] = {}
        if slo is not None:
            ok = np.ones(done.sum(), dtype=bool)
            tpot_all = np.where(multi, (finish - first) / np.maximum(out - 1, 1), 0.0)
            if slo.ttft_s is not None:
                ok &= ttft <= slo.ttft_s
                if ttft.size:
                    met["ttft"] = bool(np.percentile(ttft, slo.percentile) <= slo.ttft_s)
            if slo.tpot_s is not None:
                ok &= tpot_all <= slo.tpot_s
                if tpot.size:
                    met["tpot"] = bool(np.percentile(tpot, slo.percentile) <= slo.tpot_s)
            judged = int(done.sum()) + dropped
            attained = float(ok.sum() / judged) if judged else None
        return {
            "fidelity": self.tier,
            "requests": int(cols["arrival_s"].size),
            "completed": int(done.sum()),
            "dropped": dropped,
            "in_flight": int(cols["arrival_s"].size - done.sum() - dropped),
            "output_tokens": int(out.sum()),
            "output_tokens_per_s": float(out.sum() / active_s) if active_s else 0.0,
            "ttft_s": _stats(ttft),
            "tpot_s": _stats(tpot),
            "e2e_s": _stats(e2e),
            "queue_wait_s": _stats(wait),
            "preemptions": int(cols["preemptions"].sum()),
            "slo_attainment": attained,
            "slo_met": met,
            "in_system_mean": self._area / active_s if active_s else 0.0,
            "replicas_mean": self._replica_s / active_s if active_s else 0.0,
            "replicas_max": self.replicas_max,
            "kv_capacity_tokens": self.kv_tokens,
            "gpu_h": {
                "held": self.held_gpu_s / 3600.0,
                "busy": self.busy_gpu_s / 3600.0,
                "cold_start": self.cold_gpu_s / 3600.0,
            },
        }


#: Columns of the services' timeseries (one row per sync tick and service).
SERVICE_COLUMNS = (
    "time_s",
    "arrivals_rps",
    "pending",
    "starting",
    "ready",
    "draining",
    "desired",
    "in_flight",
    "queued",
    "kv_used",
    "busy_gpus",
)


def _stats(x: np.ndarray) -> dict[str, float | None]:
    """mean, p50, p90, p99 (numpy's linear interpolation); None for no samples."""
    if x.size == 0:
        return dict.fromkeys(("mean", "p50", "p90", "p99"))
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"mean": float(x.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}
