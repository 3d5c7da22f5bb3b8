"""Nodes of the cluster, who holds them, and where they sit in the fabric.

Each pool's nodes are numbered 0..n-1 and wired to leaf switches in order, `nodes_per_leaf` to a
leaf (a pool starts on a fresh leaf). A node has one owner at a time: free, spare, or a job. Gang
allocation takes whole nodes at once or none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..spec.scenario import Scenario

FREE = -1
SPARE = -2


@dataclass
class Allocation:
    pool: str
    nodes: np.ndarray  # node indices within the pool
    leaves: int  # leaf switches spanned


class PoolState:
    """Ownership of one pool's nodes."""

    def __init__(self, name: str, nodes: int, gpus_per_node: int, nodes_per_leaf: int, spares: int):
        self.name = name
        self.gpus_per_node = gpus_per_node
        self.owner = np.full(nodes, FREE, dtype=np.int64)
        if spares:
            self.owner[nodes - spares :] = SPARE  # spares sit at the end of the first pool
        self.leaf = np.arange(nodes) // nodes_per_leaf
        self.n_leaves = int(self.leaf[-1]) + 1

    @property
    def free_nodes(self) -> int:
        return int(np.count_nonzero(self.owner == FREE))

    @property
    def allocated_nodes(self) -> int:
        return int(np.count_nonzero(self.owner >= 0))

    def choose(self, count: int, placement: str) -> np.ndarray | None:
        """Free nodes for a gang of `count`, or None when too few are free.

        `pack` keeps the gang on as few leaves as it can: a gang that fits one leaf goes to the
        fullest leaf that holds it (best fit); a larger one takes the emptiest leaves whole, then
        best-fits the rest. `spread` deals nodes round-robin over the leaves.
        """
        free = self.owner == FREE
        if np.count_nonzero(free) < count:
            return None
        free_per_leaf = np.bincount(self.leaf[free], minlength=self.n_leaves)
        leaf_nodes = [np.flatnonzero(free & (self.leaf == lf)) for lf in range(self.n_leaves)]
        if placement == "spread":
            order = np.argsort(-free_per_leaf, kind="stable")
            picked: list[int] = []
            depth = 0
            while len(picked) < count:
                for lf in order:
                    if depth < len(leaf_nodes[lf]) and len(picked) < count:
                        picked.append(int(leaf_nodes[lf][depth]))
                depth += 1
            return np.sort(np.asarray(picked, dtype=np.int64))
        chosen: list[np.ndarray] = []
        need = count
        while need > 0:
            fits = np.flatnonzero(free_per_leaf >= need)
            if fits.size:  # best fit: the fullest leaf that still holds the rest
                lf = int(fits[np.argmin(free_per_leaf[fits])])
                chosen.append(leaf_nodes[lf][:need])
                need = 0
            else:  # take the emptiest leaf whole
                lf = int(np.argmax(free_per_leaf))
                chosen.append(leaf_nodes[lf])
                need -= int(free_per_leaf[lf])
                free_per_leaf[lf] = 0
        return np.sort(np.concatenate(chosen))


class ClusterState:
    """All pools; allocation and release of gangs by owner id."""

    def __init__(self, scenario: Scenario):
        c = scenario.cluster
        self.pools = {
            p.name: PoolState(
                p.name, p.nodes, p.gpus_per_node, c.fabric.nodes_per_leaf,
                c.spare_nodes if i == 0 else 0,
            )
            for i, p in enumerate(c.node_pools)
        }
        self.total_gpus = sum(p.gpus for p in c.node_pools)

    def allocate(self, pool: str, count: int, owner: int, placement: str) -> Allocation | None:
        state = self.pools[pool]
        nodes = state.choose(count, placement)
        if nodes is None:
            return None
        if np.any(state.owner[nodes] != FREE):  # never two owners for one node
            raise RuntimeError(f"node of pool {pool} allocated twice")
        state.owner[nodes] = owner
        leaves = int(np.unique(state.leaf[nodes]).size)
        return Allocation(pool, nodes, leaves)

    def release(self, alloc: Allocation, owner: int) -> None:
        state = self.pools[alloc.pool]
        if np.any(state.owner[alloc.nodes] != owner):
            raise RuntimeError(f"release of nodes not held by owner {owner}")
        state.owner[alloc.nodes] = FREE

    def allocated_gpus(self) -> int:
        return sum(p.allocated_nodes * p.gpus_per_node for p in self.pools.values())
