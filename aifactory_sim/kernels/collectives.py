"""Alpha-beta cost of collectives.

Ring all-reduce over p ranks of an n-byte buffer (Patarasuk & Yuan 2009; Thakur et al. 2005):
    t = 2 (p - 1) alpha + 2 n (p - 1) / p / B
where B is the bus bandwidth each rank achieves (nccl-tests doc/PERFORMANCE.md: busbw = algbw x
2(p-1)/p for all-reduce). Reduce-scatter and all-gather each move half of that:
    t = (p - 1) alpha + n (p - 1) / p / B.
All-reduce with NVLink SHARP (NVLS) on an NVSwitch that reduces in the switch (NVIDIA, "NVLink
and NVLink Switch", third-generation NVSwitch and later; NCCL's NVLS algorithm, 2.17+): each rank
owns 1/p of the buffer; it sends its whole buffer into the switch, which returns the reduced 1/p
to its owner (multimem load-reduce), and the owner's 1/p is multicast back to all p ranks. Each
rank's link carries n (1 + 1/p) bytes each way, against the ring's 2 n (p - 1) / p:
    t = 2 (p - 1) alpha + n (1 + 1/p) / (L e)
with L the NVLink line rate one way and e the achieved share of it. NVLS is the faster for p > 3
at equal efficiency. The latency term is the ring's: shared/reference has no small-message NVLS
figure, and serving's small all-reduces are bound by the calibrated per-all-reduce latency.
All functions broadcast over numpy arrays; p = 1 costs nothing.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def ring_allreduce_s(
    nbytes: ArrayLike, ranks: ArrayLike, busbw_bytes_per_s: ArrayLike, alpha_s: ArrayLike = 0.0
) -> NDArray[np.float64]:
    """Seconds for a ring all-reduce of `nbytes` over `ranks` at bus bandwidth `busbw`."""
    p = np.asarray(ranks, dtype=np.float64)
    n = np.asarray(nbytes, dtype=np.float64)
    bw, alpha = np.asarray(busbw_bytes_per_s, np.float64), np.asarray(alpha_s, np.float64)
    t = 2.0 * (p - 1.0) * alpha + 2.0 * n * (p - 1.0) / p / bw
    return np.where(p > 1.0, t, 0.0)


def ring_allgather_s(
    nbytes: ArrayLike, ranks: ArrayLike, busbw_bytes_per_s: ArrayLike, alpha_s: ArrayLike = 0.0
) -> NDArray[np.float64]:
    """Seconds for a ring all-gather (or reduce-scatter) whose full buffer is `nbytes`."""
    p = np.asarray(ranks, dtype=np.float64)
    n = np.asarray(nbytes, dtype=np.float64)
    bw, alpha = np.asarray(busbw_bytes_per_s, np.float64), np.asarray(alpha_s, np.float64)
    t = (p - 1.0) * alpha + n * (p - 1.0) / p / bw
    return np.where(p > 1.0, t, 0.0)


def nvls_allreduce_s(
    nbytes: ArrayLike, ranks: ArrayLike, bytes_per_s: ArrayLike, alpha_s: ArrayLike = 0.0
) -> NDArray[np.float64]:
    """Seconds for an NVLS all-reduce of `nbytes` over `ranks`, each link moving `bytes_per_s`
    one way (line rate x achieved share; see the module)."""
    p = np.asarray(ranks, dtype=np.float64)
    n = np.asarray(nbytes, dtype=np.float64)
    bw, alpha = np.asarray(bytes_per_s, np.float64), np.asarray(alpha_s, np.float64)
    t = 2.0 * (p - 1.0) * alpha + n * (1.0 + 1.0 / p) / bw
    return np.where(p > 1.0, t, 0.0)


def allreduce_busbw(algbw: ArrayLike, ranks: ArrayLike) -> NDArray[np.float64]:
    """nccl-tests' bus bandwidth of an all-reduce from its algorithm bandwidth S / t."""
    p = np.asarray(ranks, dtype=np.float64)
    return np.asarray(algbw, dtype=np.float64) * 2.0 * (p - 1.0) / p


# --- Sharing the spine -------------------------------------------------------------------------
# A leaf switch has `nodes_per_leaf` nodes below it and nodes_per_leaf / oversubscription nodes'
# worth of up-links to the spine (a fat tree with oversubscribed leaves: Leiserson 1985;
# Al-Fares et al., SIGCOMM 2008, Sec. 2.1). A data-parallel ring whose ranks are ordered by node
# (and nodes by index, so by leaf) leaves a leaf it spans once: on a rail-optimised node every
# local GPU's NIC carries one ring, so the ring-set of one pipeline stage takes one node's worth
# of scale-out bandwidth (gpus_per_node x NIC) through the leaf's up-links, however many of its
# nodes sit on that leaf. Flows of equal demand through one bottleneck get equal shares under
# max-min fairness (Bertsekas & Gallager, Data Networks, 2nd ed., Sec. 6.5.2), so with F such
# flows a leaf gives each min(1, (nodes_per_leaf / oversubscription) / F) of its demand, and a
# ring runs at the pace of its slowest hop.


def ring_leaf_flows(
    leaf_of_node: NDArray[np.int64], stages: int, n_leaves: int
) -> NDArray[np.int64]:
    """Up-link flows one job's data-parallel rings put on each leaf.

    `leaf_of_node` is the leaf of each of the job's nodes in rank order (sorted node index).
    With `stages` pipeline stages the nodes split into that many contiguous blocks (Megatron's
    rank order puts tensor, context and data parallel ranks inside a stage's block); a block's
    rings stay inside a leaf when all its nodes do, else they add one flow to every leaf the
    block touches. Blocks smaller than a node (fewer nodes than stages) never leave the node.
    """
    n = leaf_of_node.size
    flows = np.zeros(n_leaves, dtype=np.int64)
    if n < 2 or stages > n:
        return flows
    block = (np.arange(n) * stages) // n
    pairs = np.unique(block * n_leaves + leaf_of_node)  # (block, leaf) touched
    blocks_of_pair = pairs // n_leaves
    spans = np.bincount(blocks_of_pair, minlength=stages) > 1
    np.add.at(flows, pairs[spans[blocks_of_pair]] % n_leaves, 1)
    return flows


def leaf_share_slowdown(
    flows: ArrayLike, nodes_per_leaf: ArrayLike, oversubscription: ArrayLike
) -> NDArray[np.float64]:
    """How much slower a flow through a leaf's up-links runs than its NICs allow when `flows`
    equal flows share them: max(1, flows x oversubscription / nodes_per_leaf); 1 with none."""
    f = np.asarray(flows, dtype=np.float64)
    s = f * np.asarray(oversubscription, dtype=np.float64) / np.asarray(nodes_per_leaf, float)
    return np.maximum(1.0, s)
