"""Closed forms of caches.

Che's approximation of an LRU cache under the independent reference model (Che, Tung and Wang,
"Hierarchical Web caching systems: modeling, design and experimental results", IEEE JSAC 20(7),
2002; its accuracy: Fricker, Robert and Roberts, ITC 2012). Items are requested independently
with probabilities p_i; an item stays cached for a characteristic time T after its last
request, T the root of

    sum_i (1 - exp(-p_i T)) = C          (C items fit),

and the hit ratio is sum_i p_i (1 - exp(-p_i T)). Time is counted in requests.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import brentq


def lru_hit_ratio(popularity: ArrayLike, capacity: float) -> float:
    """Che's approximation of the hit ratio of an LRU cache of `capacity` items when item i
    is requested with weight popularity[i] (normalised here)."""
    p = np.asarray(popularity, dtype=np.float64)
    p = p / p.sum()
    if capacity <= 0:
        return 0.0
    if capacity >= p.size:
        return 1.0

    def excess(t: float) -> float:
        return float(np.sum(-np.expm1(-p * t))) - capacity

    hi = 1.0
    while excess(hi) < 0.0:
        hi *= 2.0
    t = brentq(excess, 0.0, hi, xtol=1e-12, rtol=1e-12)
    return float(np.sum(p * -np.expm1(-p * t)))


def zipf(count: int, exponent: float) -> np.ndarray:
    """Zipf's law over ranks 1..count: weights rank^-exponent, normalised."""
    w = np.arange(1, count + 1, dtype=np.float64) ** -exponent
    return w / w.sum()


__all__ = ["lru_hit_ratio", "zipf"]
