"""Shared file-system bandwidth, fair-shared among concurrent flows.

Reads and writes are two separate capacities (a parallel file system quotes both). Each flow is
capped by its nodes' NICs (and a data loader by what its job can consume); the rest is shared by
max-min fairness (water-filling; Bertsekas & Gallager, Data Networks, Sec. 6.5.2). Rates are
recomputed only when a flow starts or ends, so between two such events every flow moves at a
constant rate and a finite flow's completion time is known: one pending wake-up per direction,
no event per byte.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import simpy

#: A flow within this many bytes, or seconds, of its end is done (float rounding of rate x time).
DONE_BYTES = 1.0
DONE_S = 1e-6


def max_min_share(capacity: float, caps: np.ndarray) -> np.ndarray:
    """Rates for flows with demands `caps` (inf = unbounded) sharing `capacity`."""
    return np.asarray(_share(float(capacity), [float(c) for c in np.ravel(caps)]), dtype=np.float64)


def _share(capacity: float, caps: list[float]) -> list[float]:
    """Water-filling on plain floats: the engine calls it at every flow start and end, for a
    handful of flows, where numpy's per-call cost would dominate."""
    if sum(caps) <= capacity:  # no contention: everyone gets its cap
        return list(caps)
    n = len(caps)
    rates = [0.0] * n
    left = capacity
    for i, idx in enumerate(sorted(range(n), key=caps.__getitem__)):
        rates[idx] = min(caps[idx], left / (n - i))
        left -= rates[idx]
    return rates


@dataclass(eq=False)
class Flow:
    """Bytes moving between nodes and the file system. `remaining` is inf for a rate flow (a
    data loader), which never ends by itself and is told its rate through `on_rate`."""

    direction: str
    remaining: float
    cap: float
    done: simpy.Event
    on_rate: Callable[[float], None] | None = None
    rate: float = 0.0
    owner: str = ""
    moved: float = field(default=0.0)


class SharedStorage:
    """The shared file system: read and write capacity in bytes/s."""

    def __init__(self, env: simpy.Environment, read_bytes_per_s: float, write_bytes_per_s: float):
        self.env = env
        self.capacity = {"read": read_bytes_per_s, "write": write_bytes_per_s}
        self.flows: dict[str, list[Flow]] = {"read": [], "write": []}
        self._stamp = {"read": 0.0, "write": 0.0}
        self._version = {"read": 0, "write": 0}
        self.bytes_moved = {"read": 0.0, "write": 0.0}

    def open(
        self,
        direction: str,
        nbytes: float,
        cap: float,
        on_rate: Callable[[float], None] | None = None,
        owner: str = "",
    ) -> Flow:
        """Start a flow of `nbytes` (math.inf for a rate flow) capped at `cap` bytes/s; its
        `done` event fires when the last byte has moved."""
        self._bring_up_to_date(direction)
        flow = Flow(direction, float(nbytes), float(cap), self.env.event(), on_rate, owner=owner)
        if flow.remaining <= DONE_BYTES:
            flow.done.succeed()
            return flow
        self.flows[direction].append(flow)
        self._reshare(direction)
        return flow

    def open_many(self, direction: str, flows: list[tuple[float, float, str]]) -> list[Flow]:
        """`open` for several flows starting together, (nbytes, cap, owner) each: the shares
        are recomputed once."""
        self._bring_up_to_date(direction)
        out = []
        for nbytes, cap, owner in flows:
            flow = Flow(direction, float(nbytes), float(cap), self.env.event(), owner=owner)
            if flow.remaining <= DONE_BYTES:
                flow.done.succeed()
            else:
                self.flows[direction].append(flow)
            out.append(flow)
        self._reshare(direction)
        return out

    def close(self, flow: Flow) -> None:
        """Stop a flow before its end (its job failed or stopped loading data)."""
        if flow not in self.flows[flow.direction]:
            return
        self._bring_up_to_date(flow.direction)
        self.flows[flow.direction].remove(flow)
        self._reshare(flow.direction)

    def set_cap(self, flow: Flow, cap: float) -> None:
        if flow in self.flows[flow.direction] and cap != flow.cap:
            self._bring_up_to_date(flow.direction)
            flow.cap = cap
            self._reshare(flow.direction)

    # --- internals ---------------------------------------------------------------------------
    def _bring_up_to_date(self, direction: str) -> None:
        now = self.env.now
        dt = now - self._stamp[direction]
        if dt > 0:
            for f in self.flows[direction]:
                moved = f.rate * dt
                f.moved += moved
                self.bytes_moved[direction] += moved
                if math.isfinite(f.remaining):
                    f.remaining = max(f.remaining - moved, 0.0)
        self._stamp[direction] = now

    def _reshare(self, direction: str) -> None:
        flows = self.flows[direction]
        rates = _share(self.capacity[direction], [f.cap for f in flows])
        for f, r in zip(flows, rates, strict=True):
            changed = r != f.rate
            f.rate = float(r)
            if changed and f.on_rate is not None:
                f.on_rate(f.rate)
        self._version[direction] += 1
        finite = [f.remaining / f.rate for f in flows if math.isfinite(f.remaining) and f.rate > 0]
        if finite:
            version = self._version[direction]
            wake = self.env.timeout(min(finite))
            wake.callbacks.append(lambda _ev: self._wake(direction, version))

    def _wake(self, direction: str, version: int) -> None:
        if version != self._version[direction]:
            return  # the shares changed since this wake-up was planned
        self._bring_up_to_date(direction)
        # Done: within a byte, or within a microsecond of its end (below the clock's
        # resolution late in a long run, rate x dt would never quite reach the last byte).
        finished = [
            f
            for f in self.flows[direction]
            if math.isfinite(f.remaining) and f.remaining <= max(DONE_BYTES, f.rate * DONE_S)
        ]
        for f in finished:
            self.flows[direction].remove(f)
        self._reshare(direction)
        for f in finished:
            f.remaining = 0.0
            f.done.succeed()
