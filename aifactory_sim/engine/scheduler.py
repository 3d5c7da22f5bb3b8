"""The gang scheduler: jobs wait in a queue and start when a whole gang of nodes is free.

- `fifo` orders by submission time; `priority` by `priority` (higher first), then submission.
  Both are strict per pool: while a pool's first waiting job cannot start, nothing behind it in
  that pool starts, so a large job is never starved by a stream of small ones.
- `priority-backfill` is priority with EASY backfill (Lifka, "The ANL/IBM SP scheduling
  system", JSSPP 1995; Mu'alem & Feitelson, IEEE TPDS 12(6), 2001): the first blocked job gets a
  reservation at the earliest time enough nodes will be free, from the running jobs' projected
  ends; a later job may start now if it ends before that time or fits in the nodes the
  reservation leaves over. Run times come from the step-time model, not from user estimates.
- With `preemption`, a job that cannot start may take nodes from running jobs of lower
  priority: elastic ones shrink towards `min_dp` first, the others stop (checkpointing first
  when the write fits `preemption_grace_s`) and go back to the queue.
- An inference service short of nodes borrows them from training jobs of lower priority in
  the same way (`lend_to_service`), whatever the `preemption` setting: serving is the
  factory's latency-bound work. An elastic job grows back after a checkpoint once nobody in
  its pool (job or service) waits for nodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import simpy

from .ports import Claimant, Job

if TYPE_CHECKING:
    from ..spec.scenario import Scheduler as SchedulerSpec
    from .broker import NodeBroker
    from .quotas import Quotas


class Loan(NamedTuple):
    """Nodes a training job was asked to lend a service: when, to whom, how many."""

    time_s: float
    service: str
    nodes: int


class Scheduler:
    """The queue of training jobs; a component with the node broker and the recorder as its
    ports, and the jobs it may preempt connected after they are built."""

    def __init__(
        self,
        env: simpy.Environment,
        spec: SchedulerSpec,
        broker: NodeBroker,
        sample: Callable[[], None],
    ):
        self.env = env
        self.broker = broker
        self._sample = sample
        self.policy = spec.policy
        self.placement = spec.placement
        self.preemption = spec.preemption
        self.queue: list[Job] = []
        self.yielding: set[int] = set()  # jobs asked to give nodes back, not yet done
        #: a demand-response pause holds the queue: nothing starts until it lifts
        self.held = False
        self.jobs: Sequence[Job] = ()
        #: with scheduler.queues: the teams' quotas (engine/quotas.py)
        self.quotas: Quotas | None = None

    def connect(self, jobs: Sequence[Job], quotas: Quotas | None = None) -> None:
        self.jobs = jobs
        self.quotas = quotas

    @property
    def queued(self) -> int:
        return len(self.queue)

    def _key(self, job: Job) -> tuple[float, ...]:
        assert job.submitted_at is not None
        if self.policy == "fair-share" and self.quotas is not None:
            q = int(self.quotas.owner_queue[job.index])
            return (self.quotas.share(q), job.submitted_at, job.index)
        if self.policy in ("fifo", "fair-share"):
            return (job.submitted_at, job.index)
        return (-job.spec.priority, job.submitted_at, job.index)

    def submit(self, job: Job) -> None:
        self.queue.append(job)
        self.schedule()

    def queued_in(self, pool: str) -> bool:
        return any(j.pool.name == pool for j in self.queue)

    def schedule(self) -> None:
        """Start what can start, in policy order; reserve, backfill and preempt as configured."""
        if self.held:
            self._sample()  # what gave nodes back is recorded all the same
            return
        self.queue.sort(key=self._key)
        broker = self.broker
        blocked: dict[str, tuple[float, int]] = {}  # pool -> (reserved start, spare nodes then)
        quotas = self.quotas
        used = None if quotas is None else quotas.use_now()
        wanted = frozenset() if quotas is None else self._wanted(used)
        for job in list(self.queue):
            pool = job.pool.name
            if pool in blocked:
                if self.policy != "priority-backfill" or not self._may_backfill(job, blocked):
                    continue
            if quotas is not None and used is not None:
                q, gpus = int(quotas.owner_queue[job.index]), job.nodes * job.pool.gpus_per_node
                if not quotas.admits(q, gpus, used, wanted):
                    continue  # held by its queue's quota: it blocks nobody else's
            alloc = broker.allocate(pool, job.nodes, job.index)
            if alloc is not None:
                self.queue.remove(job)
                job.start(alloc)
                if quotas is not None and used is not None:
                    used[q] += gpus
                self._sample()  # a job got its gang
                continue
            if pool not in blocked:
                if quotas is not None and used is not None and quotas.within_quota(q, gpus, used):
                    self._reclaim_for(job, q, gpus)
                if self.preemption:
                    self._preempt_for(job)
                blocked[pool] = self._reservation(job)
        self._sample()

    # --- backfill --------------------------------------------------------------------------
    def _reservation(self, head: Job) -> tuple[float, int]:
        """Earliest time the head's gang is free, and the nodes left over at that time."""
        now = self.env.now
        pool = head.pool.name
        free = self.broker.free_nodes(pool)
        ends = sorted(
            (j.projected_end(now), j.held_nodes)
            for j in self.jobs
            if j.state == "running" and j.pool.name == pool
        )
        t = now
        for end, nodes in ends:
            if free >= head.nodes:
                break
            free += nodes
            t = end
        if free < head.nodes:
            return (math.inf, 0)
        return (t, free - head.nodes)

    def _may_backfill(self, job: Job, blocked: dict[str, tuple[float, int]]) -> bool:
        pool = job.pool.name
        shadow, extra = blocked[pool]
        if self.broker.free_nodes(pool) < job.nodes:
            return False
        now = self.env.now
        if now + job.projected_duration() <= shadow:
            return True
        if job.nodes <= extra:  # it may run past the reservation: only on nodes left over
            blocked[pool] = (shadow, extra - job.nodes)
            return True
        return False

    # --- quotas ----------------------------------------------------------------------------
    def _wanted(self, used: Any) -> frozenset[int]:
        """Queues with a job waiting that fits within their own quota."""
        quotas = self.quotas
        assert quotas is not None
        out = set()
        for job in self.queue:
            q = int(quotas.owner_queue[job.index])
            if quotas.within_quota(q, job.nodes * job.pool.gpus_per_node, used):
                out.add(q)
        return frozenset(out)

    def _reclaim_for(self, head: Job, q: int, gpus: int) -> None:
        """A job within its queue's quota finds no free nodes: take them back from queues that
        borrow (engine/quotas.py), newest first."""
        quotas = self.quotas
        assert quotas is not None
        gpn = head.pool.gpus_per_node
        coming = sum(j.held_nodes for j in self.jobs if j.index in self.yielding) * gpn
        short = gpus - self.broker.free_nodes(head.pool.name) * gpn - coming
        if short <= 0:
            return
        same_pool = [j for j in self.jobs if j.pool.name == head.pool.name]
        for victim in quotas.victims(q, short, same_pool, gpn):
            quotas.reclaims[quotas.owner_queue[victim.index]] += 1
            self.yielding.add(victim.index)
            victim.preempt(None)

    # --- preemption ------------------------------------------------------------------------
    def _preempt_for(self, head: Job) -> None:
        """Ask lower-priority jobs for nodes until the head's gang would be free."""
        pool = head.pool.name
        coming = sum(
            j.held_nodes - j.nodes_for(j.preempt_to) if j.preempt_to else j.held_nodes
            for j in self.jobs
            if j.index in self.yielding
        )
        short = head.nodes - self.broker.free_nodes(pool) - coming
        if short <= 0:
            return
        victims = sorted(
            (
                j
                for j in self.jobs
                if j.state == "running"
                and j.pool.name == pool
                and j.spec.priority < head.spec.priority
                and j.index not in self.yielding
            ),
            key=lambda j: (j.spec.priority, -(j.started_at or 0.0), -j.index),
        )
        plan: list[tuple[Job, int | None]] = []
        for victim in victims:
            if short <= 0:
                break
            el = victim.spec.elastic
            if el is not None and victim.dp > el.min_dp:
                # the narrowest width that still frees what is short, else min_dp
                for dp in range(victim.dp - 1, el.min_dp - 1, -1):
                    if victim.held_nodes - victim.nodes_for(dp) >= short or dp == el.min_dp:
                        plan.append((victim, dp))
                        short -= victim.held_nodes - victim.nodes_for(dp)
                        break
                continue
            plan.append((victim, None))
            short -= victim.held_nodes
        if short > 0:
            return  # even all of them would not make room: take nothing
        for victim, shrink_to in plan:
            self.yielding.add(victim.index)
            victim.preempt(shrink_to)

    def lend_to_service(self, service: Claimant, short: int) -> int:
        """A service wants `short` more nodes of its pool and none are free: ask training jobs
        of lower priority for them (issue 6's "one factory"). Elastic jobs shrink first, down
        to `min_dp`, lowest priority first; only if that is not enough do the others stop
        (checkpointing first when the write fits `preemption_grace_s`). Unlike a gang, a
        service takes whatever it can get, replica by replica. Nodes already on their way
        back count against the need. Returns the nodes asked for."""
        pool = service.pool.name
        quotas = self.quotas
        if quotas is not None:  # nothing to lend a service its quota would not admit
            q = int(quotas.owner_queue[len(self.jobs) + service.index])
            if not quotas.admits(q, service.pool.gpus_per_node, quotas.use_now()):
                return 0
        self.broker.wanted(pool)
        coming = sum(
            j.held_nodes - j.nodes_for(j.preempt_to) if j.preempt_to is not None else j.held_nodes
            for j in self.jobs
            if j.index in self.yielding and j.pool.name == pool
        )
        short -= coming
        if short <= 0:
            return 0
        running = [
            j
            for j in self.jobs
            if j.state == "running"
            and j.pool.name == pool
            and j.spec.priority < service.spec.priority
            and j.index not in self.yielding
        ]
        order = sorted(
            running,
            key=lambda j: (
                j.spec.elastic is None,
                j.spec.priority,
                -(j.started_at or 0.0),
                -j.index,
            ),
        )
        asked = 0
        for victim in order:
            if asked >= short:
                break
            el = victim.spec.elastic
            if el is not None:
                if victim.dp <= el.min_dp:
                    continue
                dp = victim.dp - 1  # the narrowest shrink that frees what is short
                while dp > el.min_dp and victim.held_nodes - victim.nodes_for(dp) < short - asked:
                    dp -= 1
                freed = victim.held_nodes - victim.nodes_for(dp)
                if freed <= 0:
                    continue
                self.yielding.add(victim.index)
                victim.lent.append(Loan(self.env.now, service.name, freed))
                victim.preempt(dp)
                asked += freed
            else:
                self.yielding.add(victim.index)
                victim.lent.append(Loan(self.env.now, service.name, victim.held_nodes))
                victim.preempt(None)
                asked += victim.held_nodes
        return asked

    def yielded(self, job: Job) -> None:
        self.yielding.discard(job.index)
