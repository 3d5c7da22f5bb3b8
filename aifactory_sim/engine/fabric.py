"""The scale-out fabric as the running jobs share it: each leaf switch's up-links divided
among the data-parallel rings that cross them (kernels.collectives: ring_leaf_flows,
leaf_share_slowdown; the model and its sources are in docs/background/one-factory.md), and
among the other flows that cross them: a disaggregated service's KV-cache transfers
(engine/disagg.py, a `FabricFlows`).

Rings are counted whole while their job holds its gang. The other flows are bursts of
milliseconds, far too many to re-rate the jobs at each: they count as their mean over a window
(`watch`, every SAMPLE_S of the fleets), in flows of a node's full bandwidth, and are given the
leaves' totals back, which their next bursts share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..kernels.collectives import leaf_share_slowdown, ring_leaf_flows

if TYPE_CHECKING:
    import simpy

    from .cluster import ClusterState
    from .ports import FabricFlows, Job


class Fabric:
    """Leaf up-links shared by the rings of the running jobs and by other flows."""

    def __init__(self, cluster: ClusterState, nodes_per_leaf: int, oversubscription: float):
        self.cluster = cluster
        self.nodes_per_leaf = nodes_per_leaf
        self.oversubscription = oversubscription
        #: other flows on a pool's leaves, and the mean flows each put on them last window
        self.sources: list[tuple[str, FabricFlows]] = []
        self._loads: list[np.ndarray] = []
        self._jobs: Iterable[Job] = ()

    def add_source(self, pool: str, source: FabricFlows) -> None:
        """Flows of `source` cross the up-links of `pool`'s leaves (see the module)."""
        self.sources.append((pool, source))
        self._loads.append(np.zeros(self.cluster.pools[pool].n_leaves))

    def watch(self, env: simpy.Environment, every_s: float) -> Any:
        """A process: every `every_s`, each source's mean load over the window just ended, then
        every job and source re-rated with it."""
        while True:
            yield env.timeout(every_s)
            now = env.now
            self._loads = [src.leaf_load(now) for _, src in self.sources]
            self.update(self._jobs)

    def update(self, jobs: Iterable[Job]) -> None:
        """Re-rate every running job whose share of its leaves' up-links changed, and tell the
        other flows' sources what their leaves carry. A running job's rings count while it
        holds its gang, computing or not (a bound: a restarting neighbour sends nothing). With
        oversubscription <= 1 a leaf's up-links carry all its nodes at line rate, so nothing
        can slow."""
        if self.oversubscription <= 1.0:
            return
        self._jobs = jobs
        totals: dict[str, np.ndarray] = {}
        for (pool, _), load in zip(self.sources, self._loads, strict=True):
            totals[pool] = totals.get(pool, 0) + load
        flows: list[tuple[Job, str, np.ndarray]] = []
        for job in jobs:
            alloc = job.alloc
            if job.state != "running" or alloc is None or not alloc.nodes.size:
                continue
            state = self.cluster.pools[alloc.pool]
            f = ring_leaf_flows(state.leaf[alloc.nodes], job.spec.parallel.pp, state.n_leaves)
            flows.append((job, alloc.pool, f))
            totals[alloc.pool] = totals.get(alloc.pool, 0) + f
        for job, pool, f in flows:
            crossed = totals[pool][f > 0]
            job.set_fabric_slowdown(
                float(
                    leaf_share_slowdown(crossed, self.nodes_per_leaf, self.oversubscription).max()
                )
                if crossed.size
                else 1.0
            )
        for pool, src in self.sources:
            src.rated(totals[pool])
