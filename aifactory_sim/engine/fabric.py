"""The scale-out fabric as the running jobs share it: each leaf switch's up-links divided
among the data-parallel rings that cross them (kernels.collectives: ring_leaf_flows,
leaf_share_slowdown; the model and its sources are in docs/background/one-factory.md)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from ..kernels.collectives import leaf_share_slowdown, ring_leaf_flows

if TYPE_CHECKING:
    from .cluster import ClusterState
    from .ports import Job


class Fabric:
    """Leaf up-links shared by the rings of the running jobs."""

    def __init__(self, cluster: ClusterState, nodes_per_leaf: int, oversubscription: float):
        self.cluster = cluster
        self.nodes_per_leaf = nodes_per_leaf
        self.oversubscription = oversubscription

    def update(self, jobs: Iterable[Job]) -> None:
        """Re-rate every running job whose share of its leaves' up-links changed. A running
        job's rings count while it holds its gang, computing or not (a bound: a restarting
        neighbour sends nothing). With oversubscription <= 1 a leaf's up-links carry all its
        nodes at line rate, so nothing can slow."""
        if self.oversubscription <= 1.0:
            return
        totals: dict[str, np.ndarray] = {}
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
