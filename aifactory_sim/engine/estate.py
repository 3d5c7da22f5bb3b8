"""An estate on one clock: a factory per site (each its own cluster, broker, scheduler queue,
ledger), the wide-area links between them, the jobs that burst from an owned site to a cloud,
and the spot reclaims of rented nodes.

What crosses a site's boundary is only this module's: data staged over the links before a job
enters its queue, and a burst that takes a queued job out of one site's queue and into a
cloud's. Each factory is unchanged: a one-site estate is today's factory, byte for byte.

Links (`LinkNet`). A transfer waits its path's one-way latency, then moves its bytes; every
link's bandwidth is split equally among the transfers crossing it, and a transfer moves at the
least share along its path (a simple bottleneck share, not max-min fairness). Alone on its path
a transfer takes size / bandwidth + latency. Egress is billed per hop: the bytes times the
price of each link they leave a site over.

Spot reclaims (`SpotReclaims`). Each rented spot node is reclaimed as a Poisson process at the
site's `spot_interruptions_per_day`; drawn by thinning one process at the rate of every node
of the site and keeping the events that land on a node a spot owner holds, which is exact for
per-node Poisson processes whatever the holdings do. A reclaim is a node failure to the job: it
restarts from its last checkpoint on a fresh node, after the site's provisioning time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from ..spec.estate import Estate, Path
from .failures import FailureRecord

if TYPE_CHECKING:
    from ..spec.scenario import NodePool
    from .broker import NodeBroker
    from .factory import FactoryRun

#: Confidential computing's host time per serving iteration, s: the encrypted bounce-buffer
#: copies of each iteration's inputs and outputs over PCIe. Set once from Zhu et al., "Confiden-
#: tial Computing on NVIDIA Hopper GPUs: A Performance Benchmark Study" (arXiv 2409.03992,
#: Table 1): Llama 3.1 8B, BF16, batch 1 on an H100 NVL lost 6.85 % of its tokens per second in
#: CC mode. Our batch-1 decode iteration of that model on that GPU is 4.73 ms, so CC adds
#: 4.73 ms x 0.0685 / (1 - 0.0685) = 0.35 ms an iteration (tools/calibrate_cc.py). Held out,
#: the same table's rows: 70B 4-bit at batch 1, published about 0 %, predicted 2.9 %; 8B at a
#: dynamic batch, published 3.2 %, predicted 5.6 % (docs/background/estate.md). Training at a
#: CC site pays nothing: see that page.
CC_ITERATION_S = 3.5e-4


@dataclass
class Transfer:
    """A transfer in flight over a path of links."""

    kind: str  # dataset, burst
    what: str
    owner: str
    src: str
    dst: str
    nbytes: float
    path: Path
    started_s: float
    done: simpy.Event
    left: float = 0.0
    rate: float = 0.0
    moving_s: float | None = None  # when its bytes began to move (after the latency)


@dataclass
class TransferRecord:
    kind: str
    what: str
    owner: str
    src: str
    dst: str
    route: str
    bytes: float
    start_s: float
    end_s: float | None
    egress_usd: float
    #: (sending site, USD) per hop
    egress_by_site: list[tuple[str, float]] = field(default_factory=list)


class LinkNet:
    """The estate's wide-area links and the transfers sharing them (see the module)."""

    def __init__(self, env: simpy.Environment, estate: Estate):
        self.env = env
        self.estate = estate
        self.caps = [link.gbit_s * 1e9 / 8.0 for link in estate.links]
        self.active: list[Transfer] = []
        self.records: list[TransferRecord] = []
        self._t = 0.0
        self._gen = 0

    def send(self, kind: str, what: str, owner: str, src: str, dst: str, nbytes: float) -> Any:
        """A process: move `nbytes` from site `src` to `dst`; returns when they have arrived."""
        path = self.estate.path(src, dst)
        assert path is not None  # placement refused anything without a route
        env = self.env
        done = env.event()
        tr = Transfer(kind, what, owner, src, dst, nbytes, path, env.now, done, left=nbytes)
        egress = [
            (site, nbytes / 1e9 * self.estate.links[i].egress_usd_per_gb)
            for site, i in zip(path.sites[:-1], path.links, strict=True)
        ]
        rec = TransferRecord(
            kind,
            what,
            owner,
            src,
            dst,
            " -> ".join(path.sites),
            nbytes,
            env.now,
            None,
            sum(usd for _, usd in egress),
            egress,
        )
        self.records.append(rec)
        if path.links and nbytes > 0:
            yield env.timeout(path.latency_s)
            self._advance()
            tr.moving_s = env.now
            self.active.append(tr)
            self._rerate()
            yield done
        rec.end_s = env.now

    def _advance(self) -> None:
        now = self.env.now
        dt = now - self._t
        self._t = now
        if dt > 0:
            for tr in self.active:
                tr.left = max(tr.left - tr.rate * dt, 0.0)

    def _rerate(self) -> None:
        """Each link's bandwidth split among its transfers; each moves at its tightest share;
        a timer for the next to finish."""
        count = [0] * len(self.caps)
        for tr in self.active:
            for i in tr.path.links:
                count[i] += 1
        for tr in self.active:
            tr.rate = min(self.caps[i] / count[i] for i in tr.path.links)
        self._gen += 1
        if not self.active:
            return
        gen = self._gen
        nxt = min(tr.left / tr.rate for tr in self.active)
        timer = self.env.timeout(nxt)
        timer.callbacks.append(lambda _ev: self._finish(gen))

    def _finish(self, gen: int) -> None:
        if gen != self._gen:
            return  # a later change re-planned the finishes
        self._advance()
        eps = 1e-9
        finished = [tr for tr in self.active if tr.left <= eps * max(tr.nbytes, 1.0)]
        if not finished:  # float noise: the smallest remainder is done
            finished = [min(self.active, key=lambda tr: tr.left / tr.rate)]
        for tr in finished:
            self.active.remove(tr)
            tr.done.succeed()
        self._rerate()


class SpotReclaims:
    """Reclaims of a cloud site's spot nodes (see the module)."""

    def __init__(
        self,
        env: simpy.Environment,
        broker: NodeBroker,
        pool: NodePool,
        owner_of: np.ndarray,
        rate_per_day: float,
        owners: set[int],
        rng: np.random.Generator,
        horizon: float,
    ):
        """`owner_of`: the pool's node -> owner array, as the cluster keeps it (read live)."""
        self.env, self.broker, self.owners, self.rng = env, broker, owners, rng
        self.pool = pool
        self.owner_of = owner_of
        self.rate = rate_per_day / 86400.0 * pool.nodes  # every node of the site
        self.horizon = horizon
        self.records: list[FailureRecord] = []
        if self.rate > 0 and owners:
            env.process(self._run())

    def _run(self) -> Any:
        env = self.env
        while True:
            gap = float(self.rng.exponential(1.0 / self.rate))
            if env.now + gap >= self.horizon:
                return
            yield env.timeout(gap)
            node = int(self.rng.integers(self.pool.nodes))
            if int(self.owner_of[node]) not in self.owners:
                continue  # that node is not rented on spot now: no event (thinning)
            job = self.broker.node_failed(self.pool.name, node, "spot", 0.0)
            self.records.append(FailureRecord(env.now, self.pool.name, node, "spot", 0.0, job))


@dataclass
class BurstRecord:
    job: str
    src: str
    dst: str
    price: str
    queued_s: float  # how long it had waited at its own site
    at_s: float  # when it left that queue
    staged_s: float  # data staged to the cloud before it entered the cloud's queue


@dataclass
class EstateRun:
    """What an estate run hands back: each site's factory run and what crossed between them."""

    estate: Estate
    sites: dict[str, FactoryRun]
    placements: dict[str, str]
    transfers: list[TransferRecord]
    bursts: list[BurstRecord]
    #: (site, job) pairs a site built but that never ran there: a burst copy never called, a
    #: job that burst away before it started
    absent: set[tuple[str, str]]
    #: per site: GPU-seconds held by spot owners (the rest rents on demand)
    spot_gpu_s: dict[str, float]
    events: int
    wall_s: float
