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

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from ..spec.estate import Estate, Path
from .factory import Factory, FactoryRun, play, rng_for
from .failures import FailureRecord
from .training import TrainingRun

#: Confidential computing's host time per serving iteration, s: the encrypted bounce-buffer
#: copies of each iteration's inputs and outputs over PCIe. Set once from Zhu et al., "Confiden-
#: tial Computing on NVIDIA Hopper GPUs: A Performance Benchmark Study" (arXiv 2409.03992,
#: Table 1): Llama 3.1 8B at batch 1 on H100 lost 6.85 % of its tokens per second in CC mode.
#: Our batch-1 decode iteration of that model on that GPU (H100 NVL: 3.9 TB/s, vLLM, BF16) is
#: 5.6 ms, so the overhead is 5.6 ms x 0.0685 / (1 - 0.0685) = 0.41 ms an iteration
#: (tools/calibrate_cc.py). Held out, the same table's 70B (4-bit) rows, about 0 %, and the
#: dynamic-batch 8B row, 3.2 %: docs/background/estate.md.
CC_ITERATION_S = 4.1e-4


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
        factory: Factory,
        rate_per_day: float,
        owners: set[int],
        rng: np.random.Generator,
        horizon: float,
    ):
        self.env, self.factory, self.owners, self.rng = env, factory, owners, rng
        self.pool = factory.scenario.cluster.node_pools[0]
        self.rate = rate_per_day / 86400.0 * self.pool.nodes  # every node of the site
        self.horizon = horizon
        self.records: list[FailureRecord] = []
        if self.rate > 0 and owners:
            env.process(self._run())

    def _run(self) -> Any:
        env, f = self.env, self.factory
        state = f.cluster.pools[self.pool.name]
        while True:
            gap = float(self.rng.exponential(1.0 / self.rate))
            if env.now + gap >= self.horizon:
                return
            yield env.timeout(gap)
            node = int(self.rng.integers(self.pool.nodes))
            if int(state.owner[node]) not in self.owners:
                continue  # that node is not rented on spot now: no event (thinning)
            job = f.broker.node_failed(self.pool.name, node, "spot", 0.0)
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


def stream_key(site: str) -> str:
    return f"estate.{site}."


class EstateEngine:
    """Builds a factory per site on one SimPy environment and the processes between them."""

    def __init__(self, estate: Estate):
        self.estate = estate
        env = self.env = simpy.Environment()
        scenarios = estate.scenarios()
        self.placements = estate.placements()
        multi = len(estate.sites) > 1
        cc_sites = set(estate.security.confidential_computing.sites)
        self.factories: dict[str, Factory] = {}
        for site in estate.sites:
            self.factories[site.name] = Factory(
                scenarios[site.name],
                env=env,
                streams=stream_key(site.name) if multi else "",
                startup_s=site.provisioning_s,
                iteration_extra_s=CC_ITERATION_S if site.name in cc_sites else 0.0,
            )
        self.links = LinkNet(env, estate)
        self.bursts: list[BurstRecord] = []
        self.absent: set[tuple[str, str]] = set()
        self.spot_runs: dict[str, list[TrainingRun]] = {}
        for job in estate.training:
            home = self.placements[job.name]
            run = self._run_of(home, job.name)
            d = None if job.data.dataset is None else estate.dataset(job.data.dataset)
            src = None if d is None else estate.dataset_site(d)
            staged = (
                0.0 if d is None else min(d.size_tb * 1e12, job.tokens * job.data.bytes_per_token)
            )
            if src is not None and src != home and staged > 0:
                run.gate = env.event()
                env.process(
                    self._stage_then_submit(job.name, run, src, home, staged, job.submit_at)
                )
            if job.burst is not None:
                cloud = self._run_of(job.burst.site, job.name)
                cloud.gate = env.event()  # dormant until called
                self.absent.add((job.burst.site, job.name))
                if job.burst.price == "spot":
                    self.spot_runs.setdefault(job.burst.site, []).append(cloud)
                env.process(self._watch_burst(job.name, run, cloud, home, src, staged))
        self.reclaims: dict[str, SpotReclaims] = {}
        for site in estate.sites:
            runs = self.spot_runs.get(site.name)
            if runs and site.cost.spot_interruptions_per_day > 0:
                self.reclaims[site.name] = SpotReclaims(
                    env,
                    self.factories[site.name],
                    site.cost.spot_interruptions_per_day,
                    {r.index for r in runs},
                    rng_for(estate.seed, f"{stream_key(site.name)}spot"),
                    estate.duration,
                )

    def _run_of(self, site: str, name: str) -> TrainingRun:
        for r in self.factories[site].jobs:
            if r.name == name:
                return r
        raise KeyError(name)

    def _stage_then_submit(
        self, name: str, run: TrainingRun, src: str, dst: str, nbytes: float, at: float
    ) -> Any:
        """A job whose data is held elsewhere: at its submit time the data it reads is copied
        over the links; it enters its site's queue when the copy is in."""
        env = self.env
        if at > 0:
            yield env.timeout(at)
        yield from self.links.send("dataset", self._dataset_of(name), name, src, dst, nbytes)
        assert run.gate is not None
        run.gate.succeed()

    def _dataset_of(self, name: str) -> str:
        job = next(j for j in self.estate.training if j.name == name)
        return job.data.dataset or ""

    def _watch_burst(
        self,
        name: str,
        home: TrainingRun,
        cloud: TrainingRun,
        home_site: str,
        src: str | None,
        nbytes: float,
    ) -> Any:
        """A job queued at its own site past `burst.when_queued_s`, never started there, leaves
        that queue; its data is staged to the cloud and it enters the cloud's queue."""
        env = self.env
        job = next(j for j in self.estate.training if j.name == name)
        assert job.burst is not None
        if home.gate is not None:
            yield home.gate
        elif job.submit_at > 0:
            yield env.timeout(job.submit_at)
        yield env.timeout(job.burst.when_queued_s)
        if home.started_at is not None or home.state != "queued":
            return  # it started at home (or ended): no burst
        sched = self.factories[home_site].scheduler
        sched.queue.remove(home)
        home.state = "burst"
        sched.schedule()  # what waited behind it may start now
        self.absent.discard((job.burst.site, name))
        self.absent.add((home_site, name))
        t0 = env.now
        if src is not None and src != job.burst.site and nbytes > 0:
            yield from self.links.send(
                "burst", job.data.dataset or "", name, src, job.burst.site, nbytes
            )
        assert home.submitted_at is not None
        self.bursts.append(
            BurstRecord(
                name,
                home_site,
                job.burst.site,
                job.burst.price,
                t0 - home.submitted_at,
                t0,
                env.now - t0,
            )
        )
        assert cloud.gate is not None
        cloud.gate.succeed()

    def run(self) -> EstateRun:
        wall0 = time.perf_counter()
        events = play(self.env, self.estate.duration)
        wall = time.perf_counter() - wall0
        runs = {}
        for name, f in self.factories.items():
            runs[name] = f.close(events, wall)
            if name in self.reclaims:
                runs[name].failures = runs[name].failures + self.reclaims[name].records
        return EstateRun(
            estate=self.estate,
            sites=runs,
            placements=self.placements,
            transfers=self.links.records,
            bursts=self.bursts,
            absent=set(self.absent),
            spot_gpu_s={
                site: float(sum(r.held_gpu_s for r in rs)) for site, rs in self.spot_runs.items()
            },
            events=events,
            wall_s=wall,
        )
