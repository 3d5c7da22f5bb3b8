"""Node failures and repairs: one renewal process per node, driven by a single SimPy process.

Every node's first time to failure is drawn at once for the whole cluster (one vectorised numpy
call); a heap keeps each node's next failure, so the process wakes only when a node fails. A
failed node is down for its repair time, then as good as new: its next failure is drawn from the
end of the repair (an alternating renewal process). Software failures interrupt the job on the
node but need no repair.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..kernels.reliability import weibull_scale
from ..spec.scenario import COMPONENTS, Exponential, Failures, FixedHours, LognormalHours

if TYPE_CHECKING:
    import simpy

    from .broker import NodeBroker

#: Draws are made in blocks of this many, so a failure costs no numpy call of its own.
BLOCK = 1024


@dataclass
class FailureRecord:
    time_s: float
    pool: str
    node: int
    component: str
    repair_s: float
    job: str | None


class _Stream:
    """A block-buffered stream of draws from one distribution."""

    def __init__(self, draw: Any):
        self._draw = draw
        self._buf = np.empty(0)
        self._i = 0

    def __call__(self) -> float:
        if self._i >= self._buf.size:
            self._buf = self._draw(BLOCK)
            self._i = 0
        self._i += 1
        return float(self._buf[self._i - 1])


class FailureInjector:
    """Draws failures for every node of every pool and tells the node broker about each.

    `nodes` is every pool's name and node count, in the cluster's order; the failures stop at
    `horizon`."""

    def __init__(
        self,
        env: simpy.Environment,
        spec: Failures,
        rngs: dict[str, np.random.Generator],
        *,
        nodes: list[tuple[str, int]],
        horizon: float,
        broker: NodeBroker,
    ):
        self.broker = broker
        self.spec = spec
        self.env = env
        self.horizon = horizon
        self.records: list[FailureRecord] = []
        self.nodes = [(name, i) for name, count in nodes for i in range(count)]
        mtbf = spec.node_mtbf_s
        if isinstance(spec.distribution, Exponential):

            def ttf(n: int) -> np.ndarray:
                return rngs["times"].exponential(mtbf, n)
        else:
            k = spec.distribution.shape
            scale = float(weibull_scale(mtbf, k))

            def ttf(n: int) -> np.ndarray:
                return scale * rngs["times"].weibull(k, n)

        self._ttf = _Stream(ttf)
        r = spec.repair_h
        if isinstance(r, FixedHours):

            def repair(n: int) -> np.ndarray:
                return np.full(n, r.value * 3600.0)
        elif isinstance(r, LognormalHours):

            def repair(n: int) -> np.ndarray:
                return r.median * 3600.0 * rngs["repairs"].lognormal(0.0, r.sigma, n)
        else:

            def repair(n: int) -> np.ndarray:
                return rngs["repairs"].exponential(r.mean * 3600.0, n)

        self._repair = _Stream(repair)
        shares = spec.component_shares()
        probs = np.array([shares[c] for c in COMPONENTS])
        self._component = _Stream(lambda n: rngs["components"].choice(len(COMPONENTS), n, p=probs))
        first = ttf(len(self.nodes))  # the whole cluster in one call
        self._heap = [(float(t), i) for i, t in enumerate(first)]
        heapq.heapify(self._heap)
        self.env.process(self._run())

    def _run(self) -> Any:
        env = self.env
        horizon = self.horizon
        while self._heap:
            t, i = heapq.heappop(self._heap)
            if t > horizon:
                return
            yield env.timeout(t - env.now)
            pool, node = self.nodes[i]
            component = COMPONENTS[int(self._component())]
            repair_s = 0.0 if component == "software" else self._repair()
            job = self.broker.node_failed(pool, node, component, repair_s)
            self.records.append(FailureRecord(env.now, pool, node, component, repair_s, job))
            heapq.heappush(self._heap, (env.now + repair_s + self._ttf(), i))
