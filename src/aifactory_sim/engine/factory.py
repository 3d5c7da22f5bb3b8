"""Wires the components from a Scenario, plays the environment to the horizon, returns Results."""

from __future__ import annotations

import math
import time
import zlib
from typing import Any

import numpy as np
import simpy

from ..spec.scenario import Scenario
from .cluster import ClusterState
from .scheduler import Scheduler
from .storage import max_min_share
from .telemetry import Telemetry
from .training import EstimateCache, TrainingRun


def rng_for(seed: int, stream: str) -> np.random.Generator:
    """One named random stream per component: keyed by its name, so adding a stream shifts no
    other (numpy SeedSequence with a spawn key)."""
    key = zlib.crc32(stream.encode())
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))


class Factory:
    """The running factory: environment, cluster, scheduler, jobs and what they record."""

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.fidelity = scenario.fidelity
        self.env = simpy.Environment()
        self.cluster = ClusterState(scenario)
        self.telemetry = Telemetry(total_gpus=self.cluster.total_gpus)
        self.estimates = EstimateCache()
        self.scheduler = Scheduler(self)
        self.jobs = [
            TrainingRun(self, i, job, scenario.pool(job.pool))
            for i, job in enumerate(scenario.training)
        ]
        self.sample()

    # --- hooks the components call -------------------------------------------------------
    def sample(self) -> None:
        running = [j for j in self.jobs if j.state == "running"]
        self.telemetry.sample(
            self.env.now,
            allocated=self.cluster.allocated_gpus(),
            training=sum(j.gpus for j in running),
            running=len(running),
            queued=len(self.scheduler.queue),
        )

    def on_start(self, job: TrainingRun) -> None:
        self._rebalance_data()

    def on_finish(self, job: TrainingRun) -> None:
        assert job.alloc is not None
        self.cluster.release(job.alloc, job.index)
        self._rebalance_data()
        self.scheduler.schedule()

    def _rebalance_data(self) -> None:
        """Data-loader bandwidth of every running job: storage readers max-min share the file
        system (each capped by its nodes' NICs); NVMe readers get their nodes' drives; synthetic
        data costs nothing."""
        running = [j for j in self.jobs if j.state == "running"]
        readers = [j for j in running if j.spec.data.source == "storage"]
        storage = self.scenario.cluster.storage
        if readers:
            assert storage is not None
            caps = np.array([j.data_demand_cap_gb_s() for j in readers])
            for job, rate in zip(readers, max_min_share(storage.read_gb_s, caps), strict=True):
                job.set_data_rate(float(rate))
        for job in running:
            if job.spec.data.source == "nvme":
                assert job.pool.nvme is not None
                job.set_data_rate(job.nodes * job.pool.nvme.read_gb_s)
            elif job.spec.data.source == "synthetic":
                job.set_data_rate(math.inf)

    # --- run -----------------------------------------------------------------------------
    def run(self) -> Any:
        from ..results import Results

        wall0 = time.perf_counter()
        horizon = self.scenario.duration
        env = self.env
        while env.peek() <= horizon:  # env.run(until=...), counting the events processed
            env.step()
            self.telemetry.events += 1
        for job in self.jobs:
            job.close(horizon)
        self.telemetry.close(horizon)
        wall = time.perf_counter() - wall0
        return Results.from_factory(self, wall_s=wall)


def run(scenario: Scenario) -> Any:
    """Play `scenario` to its horizon; a `Results`."""
    return Factory(scenario).run()
