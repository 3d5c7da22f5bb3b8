"""An estate's wiring: a factory per site on one SimPy environment, and the processes between
them (engine/estate.py: links, bursts, spot reclaims). It is to the sites what engine/factory.py
is to a site's components: the one place that holds them, building each from its spec and
connecting what crosses a site's boundary, which is only this:

- data staged over the links before a job enters its queue (`_stage_then_submit`);
- a burst, which takes a queued job out of one site's queue and into a cloud's (`_watch_burst`);
- the spot reclaims of a cloud site's rented nodes.

Each factory is unchanged: a one-site estate is today's factory, byte for byte.
"""

from __future__ import annotations

import time
from typing import Any

import simpy

from ..spec.estate import Estate
from .estate import (
    CC_ITERATION_S,
    BurstRecord,
    EstateRun,
    LinkNet,
    SpotReclaims,
)
from .factory import Factory, play, rng_for
from .training import TrainingRun


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
                f = self.factories[site.name]
                pool = f.scenario.cluster.node_pools[0]
                self.reclaims[site.name] = SpotReclaims(
                    env,
                    f.broker,
                    pool,
                    f.cluster.pools[pool.name].owner,
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
