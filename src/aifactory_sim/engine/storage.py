"""Shared file-system bandwidth, fair-shared among concurrent flows.

Max-min fairness (water-filling; Bertsekas & Gallager, Data Networks, Sec. 6.5.2): every flow
gets an equal share of the aggregate, except flows capped lower (by their nodes' NICs), whose
unused share is divided among the rest. Rates are recomputed whenever a flow starts or ends.
"""

from __future__ import annotations

import numpy as np


def max_min_share(capacity: float, caps: np.ndarray) -> np.ndarray:
    """Rates for flows with demands `caps` (inf = unbounded) sharing `capacity`."""
    caps = np.asarray(caps, dtype=np.float64)
    n = caps.size
    rates = np.zeros(n)
    if n == 0:
        return rates
    order = np.argsort(caps, kind="stable")
    left = float(capacity)
    for i, idx in enumerate(order):
        fair = left / (n - i)
        rates[idx] = min(caps[idx], fair)
        left -= rates[idx]
    return rates
