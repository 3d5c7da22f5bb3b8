"""Nodes of the cluster, who holds them, and where they sit in the fabric.

Each pool's nodes are numbered 0..n-1 and wired to leaf switches in order, `nodes_per_leaf` to a
leaf (a pool starts on a fresh leaf). A node has one owner at a time: free, spare, down (failed,
in repair) or a job. Gang allocation takes whole nodes at once or none. Spare nodes (taken from
the first pool) are kept out of scheduling and replace failed nodes of running jobs at once; a
repaired node refills the spares first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..spec.scenario import Scenario

FREE = -1
SPARE = -2
DOWN = -3


@dataclass
class Allocation:
    pool: str
    _nodes: np.ndarray  # node indices within the pool
    _leaves: int | None = None

    @property
    def nodes(self) -> np.ndarray:
        return self._nodes

    @nodes.setter
    def nodes(self, value: np.ndarray) -> None:
        self._nodes = value
        self._leaves = None

    def leaves(self, cluster: ClusterState) -> int:
        """Leaf switches the gang spans (kept until the gang changes)."""
        if self._leaves is None:
            self._leaves = int(np.unique(cluster.pools[self.pool].leaf[self._nodes]).size)
        return self._leaves


class PoolState:
    """Ownership of one pool's nodes."""

    def __init__(self, name: str, nodes: int, gpus_per_node: int, nodes_per_leaf: int, spares: int):
        self.name = name
        self.gpus_per_node = gpus_per_node
        self.owner = np.full(nodes, FREE, dtype=np.int64)
        self.spare_target = spares
        if spares:
            self.owner[nodes - spares :] = SPARE  # spares sit at the end of the first pool
        self.leaf = np.arange(nodes) // nodes_per_leaf
        self.n_leaves = int(self.leaf[-1]) + 1

    def count(self, state: int) -> int:
        return int(np.count_nonzero(self.owner == state))

    @property
    def free_nodes(self) -> int:
        return self.count(FREE)

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
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        free_per_leaf = np.bincount(self.leaf[free], minlength=self.n_leaves)
        nodes_of: dict[int, np.ndarray] = {}

        def leaf_free(lf: int) -> np.ndarray:  # a leaf's free nodes, looked up when needed
            if lf not in nodes_of:
                nodes_of[lf] = np.flatnonzero(free & (self.leaf == lf))
            return nodes_of[lf]

        if placement == "spread":
            leaf_nodes = [leaf_free(lf) for lf in range(self.n_leaves)]
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
                chosen.append(leaf_free(lf)[:need])
                need = 0
            else:  # take the emptiest leaf whole
                lf = int(np.argmax(free_per_leaf))
                chosen.append(leaf_free(lf))
                need -= int(free_per_leaf[lf])
                free_per_leaf[lf] = 0
        return np.sort(np.concatenate(chosen))


class ClusterState:
    """All pools; allocation and release of gangs by owner id; failures and repairs."""

    def __init__(self, scenario: Scenario):
        c = scenario.cluster
        self.pools = {
            p.name: PoolState(
                p.name,
                p.nodes,
                p.gpus_per_node,
                c.fabric.nodes_per_leaf,
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
        self._claim(state, nodes, owner)
        return Allocation(pool, nodes)

    def grow(self, alloc: Allocation, count: int, owner: int, placement: str) -> bool:
        """Add `count` free nodes to a gang (elastic growth); False when too few are free."""
        state = self.pools[alloc.pool]
        nodes = state.choose(count, placement)
        if nodes is None:
            return False
        self._claim(state, nodes, owner)
        alloc.nodes = np.sort(np.concatenate([alloc.nodes, nodes]))
        return True

    def replacement(self, alloc: Allocation, owner: int, near: int) -> bool:
        """Replace one failed node of a running gang at once: a spare if the pool keeps any,
        else a free node, nearest (same leaf) first. False when none is available."""
        state = self.pools[alloc.pool]
        for wanted in (SPARE, FREE):
            candidates = np.flatnonzero(state.owner == wanted)
            if candidates.size:
                same_leaf = candidates[state.leaf[candidates] == state.leaf[near]]
                node = int(same_leaf[0] if same_leaf.size else candidates[0])
                self._claim(state, np.array([node]), owner, allowed=(wanted,))
                alloc.nodes = np.sort(np.append(alloc.nodes, node))
                return True
        return False

    def _claim(
        self, state: PoolState, nodes: np.ndarray, owner: int, allowed: tuple[int, ...] = (FREE,)
    ) -> None:
        owners = state.owner[nodes]
        ok = owners == allowed[0] if len(allowed) == 1 else np.isin(owners, allowed)
        if not ok.all():  # never two owners for one node
            raise RuntimeError(f"node of pool {state.name} allocated twice")
        state.owner[nodes] = owner

    def release(self, alloc: Allocation, owner: int, count: int | None = None) -> np.ndarray:
        """Give back a gang's nodes (or its last `count` nodes); the released indices."""
        state = self.pools[alloc.pool]
        if np.any(state.owner[alloc.nodes] != owner):
            raise RuntimeError(f"release of nodes not held by owner {owner}")
        if count is None or count >= alloc.nodes.size:
            gone, alloc.nodes = alloc.nodes, np.zeros(0, dtype=np.int64)
        else:
            gone, alloc.nodes = alloc.nodes[-count:], alloc.nodes[:-count]
        state.owner[gone] = FREE
        return gone

    def fail(self, pool: str, node: int) -> int:
        """Take a node down; returns its previous owner (a job id, FREE, SPARE or DOWN)."""
        state = self.pools[pool]
        before = int(state.owner[node])
        state.owner[node] = DOWN
        return before

    def repair(self, pool: str, node: int) -> None:
        """A repaired node refills the pool's spares first, else becomes free."""
        state = self.pools[pool]
        if state.owner[node] != DOWN:
            raise RuntimeError(f"repair of node {node} of pool {pool} that is not down")
        state.owner[node] = SPARE if state.count(SPARE) < state.spare_target else FREE

    def allocated_gpus(self) -> int:
        return sum(p.allocated_nodes * p.gpus_per_node for p in self.pools.values())

    def down_gpus(self) -> int:
        return sum(p.count(DOWN) * p.gpus_per_node for p in self.pools.values())
