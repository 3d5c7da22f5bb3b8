"""Alpha-beta cost of collectives.

Ring all-reduce over p ranks of an n-byte buffer (Patarasuk & Yuan 2009; Thakur et al. 2005):
    t = 2 (p - 1) alpha + 2 n (p - 1) / p / B
where B is the bus bandwidth each rank achieves (nccl-tests doc/PERFORMANCE.md: busbw = algbw x
2(p-1)/p for all-reduce). Reduce-scatter and all-gather each move half of that:
    t = (p - 1) alpha + n (p - 1) / p / B.
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
    t = 2.0 * (p - 1.0) * alpha_s + 2.0 * n * (p - 1.0) / p / busbw_bytes_per_s
    return np.where(p > 1.0, t, 0.0)


def ring_allgather_s(
    nbytes: ArrayLike, ranks: ArrayLike, busbw_bytes_per_s: ArrayLike, alpha_s: ArrayLike = 0.0
) -> NDArray[np.float64]:
    """Seconds for a ring all-gather (or reduce-scatter) whose full buffer is `nbytes`."""
    p = np.asarray(ranks, dtype=np.float64)
    n = np.asarray(nbytes, dtype=np.float64)
    t = (p - 1.0) * alpha_s + n * (p - 1.0) / p / busbw_bytes_per_s
    return np.where(p > 1.0, t, 0.0)


def allreduce_busbw(algbw: ArrayLike, ranks: ArrayLike) -> NDArray[np.float64]:
    """nccl-tests' bus bandwidth of an all-reduce from its algorithm bandwidth S / t."""
    p = np.asarray(ranks, dtype=np.float64)
    return np.asarray(algbw, dtype=np.float64) * 2.0 * (p - 1.0) / p
