"""The node broker: the one port through which jobs, services and the scheduler get, give back,
lend and lose nodes, and learn that nodes came free.

It owns the cluster's node states (engine.cluster.ClusterState) and the fabric that rates the
jobs' rings on them (engine.fabric.Fabric). What it does when nodes come free is the factory's
order of claims (issue 6's "one factory"): services place their pending replicas, highest
priority first; then running jobs short of nodes after a failure get them back, highest
priority first; then the scheduler starts what can start from its queue.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import simpy

from .cluster import Allocation, ClusterState
from .fabric import Fabric
from .ports import Claimant, Job, Lender, NodeOwner


class NodeBroker:
    """Allocate, release, lend, take back and fail nodes; notify when nodes are freed."""

    def __init__(
        self,
        env: simpy.Environment,
        cluster: ClusterState,
        fabric: Fabric,
        *,
        placement: str,
        regrow_after_s: float,
        sample: Callable[[], None],
    ):
        self.env = env
        self.cluster = cluster
        self.fabric = fabric
        self.placement = placement
        self.regrow_after_s = regrow_after_s
        self._sample = sample
        self.waiting: list[Job] = []  # running jobs short of nodes after a failure
        self.last_wanted: dict[str, float] = {}  # pool -> when someone last lacked nodes
        self._jobs: Sequence[Job] = ()
        self._services: Sequence[Claimant] = ()
        self._by_priority: list[Claimant] = []
        self._owners: dict[int, NodeOwner] = {}
        self._lender: Lender | None = None
        #: with scheduler.queues: may this owner take this many more GPUs (engine/quotas.py)
        self.quota_allows: Callable[[int, int], bool] | None = None

    def connect(self, jobs: Sequence[Job], services: Sequence[Claimant], lender: Lender) -> None:
        """The owners of nodes (owner id: a job's index, then `len(jobs) + k` for service k) and
        the scheduler, which lends training nodes to services and starts queued jobs."""
        self._jobs = jobs
        self._services = services
        self._by_priority = sorted(services, key=lambda s: (-s.spec.priority, s.index))
        self._owners = {j.index: j for j in jobs}
        self._owners.update({len(jobs) + k: s for k, s in enumerate(services)})
        self._lender = lender

    # --- looking ---------------------------------------------------------------------------
    def free_nodes(self, pool: str) -> int:
        return self.cluster.pools[pool].free_nodes

    def leaves(self, alloc: Allocation) -> int:
        """Leaf switches an allocation spans."""
        return alloc.leaves(self.cluster)

    # --- getting ---------------------------------------------------------------------------
    def allocate(self, pool: str, count: int, owner: int) -> Allocation | None:
        """`count` free nodes of `pool` for `owner` by the scheduler's placement, or None
        (also when its queue's quota does not admit them)."""
        if self.quota_allows is not None and not self.quota_allows(
            owner, count * self.cluster.pools[pool].gpus_per_node
        ):
            return None
        return self.cluster.allocate(pool, count, owner, self.placement)

    def grow(self, alloc: Allocation, count: int, owner: int) -> bool:
        if self.quota_allows is not None and not self.quota_allows(
            owner, count * self.cluster.pools[alloc.pool].gpus_per_node
        ):
            return False
        return self.cluster.grow(alloc, count, owner, self.placement)

    def replacement(self, alloc: Allocation, owner: int, near: int) -> bool:
        """One node (a spare first, else a free one near `near`) added to `alloc`, if any."""
        return self.cluster.replacement(alloc, owner, near=near)

    def lend(self, service: Claimant, short: int) -> int:
        """A service lacks `short` nodes and none are free: the scheduler asks training jobs of
        lower priority for them (Scheduler.lend_to_service). Returns the nodes asked for."""
        assert self._lender is not None
        return self._lender.lend_to_service(service, short)

    # --- giving back -----------------------------------------------------------------------
    def release(self, owner: int, alloc: Allocation, count: int | None = None) -> None:
        """A job gives nodes back: waiting gangs are served first, then the queue."""
        self.cluster.release(alloc, owner, count)
        self.fabric.update(self._jobs)
        self._freed()

    def take_back(self, owner: int, alloc: Allocation) -> None:
        """A service hands nodes back."""
        self.cluster.release(alloc, owner)
        self._sample()
        self._freed()

    # --- demand ----------------------------------------------------------------------------
    def wanted(self, pool: str) -> None:
        """Someone in `pool` is short of nodes now (see may_grow)."""
        self.last_wanted[pool] = self.env.now

    def may_grow(self, job: Job) -> bool:
        """An elastic job may widen only when nobody waits for nodes of its pool (no job, no
        service replica) and nobody has for `scheduler.regrow_after_s`."""
        pool = job.pool.name
        if any(s.pool.name == pool and s.has_pending() for s in self._services):
            self.wanted(pool)
            return False
        assert self._lender is not None
        return (
            not self.waiting
            and not self._lender.queued_in(pool)
            and self.env.now - self.last_wanted.get(pool, -math.inf) >= self.regrow_after_s
        )

    def held_back(self, pool: str) -> int:
        """Free nodes of `pool` an elastic job leaves alone when it grows: what the pool's
        services held within the regrow hold over what they hold now (Fleet.held_back)."""
        return sum(s.held_back() for s in self._services if s.pool.name == pool)

    def wait_for_nodes(self, job: Job) -> None:
        """A running job lost nodes and no spare or free node replaced them: it waits, holding
        the rest of its gang, ahead of the queue."""
        if job not in self.waiting:
            self.waiting.append(job)
        self._serve_waiting()
        self._sample()

    def stop_waiting(self, job: Job) -> None:
        """A job ended: it no longer waits for nodes."""
        if job in self.waiting:
            self.waiting.remove(job)

    # --- failures --------------------------------------------------------------------------
    def node_failed(self, pool: str, node: int, component: str, repair_s: float) -> str | None:
        """A failure: take the node down, tell its owner, plan the repair. The owner's name,
        or None for a node nobody held."""
        if component == "software":  # the node stays up; the job on it restarts
            owner_id = int(self.cluster.pools[pool].owner[node])
        else:
            owner_id = self.cluster.fail(pool, node)
        owner = self._owners.get(owner_id) if owner_id >= 0 else None
        if owner is not None:
            owner.node_failed(node, component)
        if component != "software":
            repair = self.env.timeout(repair_s)
            repair.callbacks.append(lambda _ev: self._repaired(pool, node))
        self._sample()
        return owner.name if owner is not None else None

    def cordon(self, pool: str, node: int, repair_s: float) -> None:
        """Take a node out of service for `repair_s` on its owner's own word (a validation
        check that found silent corruption on it: engine/gray.py); the owner is not told."""
        self.cluster.fail(pool, node)
        repair = self.env.timeout(repair_s)
        repair.callbacks.append(lambda _ev: self._repaired(pool, node))
        self._sample()

    def _repaired(self, pool: str, node: int) -> None:
        self.cluster.repair(pool, node)
        self._freed()

    # --- nodes came free -------------------------------------------------------------------
    def _freed(self) -> None:
        for service in self._by_priority:
            service.place_pending()
        self._serve_waiting()
        assert self._lender is not None
        self._lender.schedule()

    def _serve_waiting(self) -> None:
        """Give freed nodes (and spares) to running jobs short of nodes, highest priority
        first."""
        for job in sorted(self.waiting, key=lambda j: (-j.spec.priority, j.index)):
            if job.alloc is None or job.state != "running":
                self.waiting.remove(job)
                continue
            job.book()  # the meter books what it held so far before its gang grows
            while job.held_nodes < job.nodes and self.cluster.replacement(
                job.alloc, job.index, near=int(job.alloc.nodes[0]) if job.held_nodes else 0
            ):
                pass
            if job.held_nodes >= job.min_nodes:  # an elastic job runs narrower meanwhile
                self.waiting.remove(job)
                job.gang_complete()
