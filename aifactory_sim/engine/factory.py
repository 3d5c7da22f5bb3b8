"""Wires the components from a Scenario, plays the environment to the horizon, returns Results."""

from __future__ import annotations

import math
import time
import zlib
from typing import Any

import numpy as np
import simpy

from ..kernels.power import cap_slowdown
from ..spec.scenario import NodePool, Scenario
from .cluster import Allocation, ClusterState
from .fabric import Fabric
from .failures import FailureInjector
from .fluid import FluidService
from .inference import Service
from .scheduler import Scheduler
from .storage import SharedStorage
from .telemetry import Telemetry
from .training import EstimateCache, TrainingRun


def rng_for(seed: int, stream: str) -> np.random.Generator:
    """One named random stream per component: keyed by its name, so adding a stream shifts no
    other (numpy SeedSequence with a spawn key)."""
    key = zlib.crc32(stream.encode())
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))


class Factory:
    """The running factory: environment, cluster, storage, failures, scheduler and jobs."""

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.fidelity = scenario.fidelity
        self.env = simpy.Environment()
        self.cluster = ClusterState(scenario)
        fab = scenario.cluster.fabric
        self.fabric = Fabric(self.cluster, fab.nodes_per_leaf, fab.oversubscription)
        self.telemetry = Telemetry(total_gpus=self.cluster.total_gpus)
        self.estimates = EstimateCache()
        st = scenario.cluster.storage
        self.storage = (
            None if st is None else SharedStorage(self.env, st.read_gb_s * 1e9, st.write_gb_s * 1e9)
        )
        self.scheduler = Scheduler(self)
        self.waiting: list[TrainingRun] = []  # running jobs short of nodes after a failure
        self.last_wanted: dict[str, float] = {}  # pool -> when someone last lacked nodes
        self.jobs = [
            TrainingRun(self, i, job, self.pool(job.pool))
            for i, job in enumerate(scenario.training)
        ]
        self.services = [
            (FluidService if (svc.fidelity or scenario.fidelity) == "fluid" else Service)(
                self,
                k,
                len(self.jobs) + k,
                svc,
                self.pool(svc.pool),
                {
                    name: rng_for(scenario.seed, f"inference.{svc.name}.{name}")
                    for name in ("arrivals", "prompts", "outputs", "router", "metric")
                },
            )
            for k, svc in enumerate(scenario.inference)
        ]
        self.failures = None
        if scenario.failures is not None:
            self.failures = FailureInjector(
                self,
                scenario.failures,
                {
                    name: rng_for(scenario.seed, f"failures.{name}")
                    for name in ("times", "repairs", "components")
                },
            )
        self.sample()

    def pool(self, name: str | None) -> NodePool:
        """A pool as the engine runs it: under `power.gpu_power_cap_w` its GPUs' compute peaks
        are slowed by the cap's clock factor (kernels.power.cap_slowdown with all of the work
        compute-bound), so every compute-bound phase of a training step or a serving iteration
        slows and every memory- or network-bound one does not: decode, bound by HBM, slows
        least. Reported MFU stays against the nominal peak (TrainingRun.peak_scale)."""
        pool = self.scenario.pool(name)
        cap = self.scenario.power.gpu_power_cap_w
        if cap is None:
            return pool
        slow = float(cap_slowdown(cap, pool.gpu.tdp_w, 1.0))
        gpu = pool.gpu
        faster = {"bf16_tflops": gpu.bf16_tflops / slow}
        if gpu.fp8_tflops is not None:
            faster["fp8_tflops"] = gpu.fp8_tflops / slow
        return pool.model_copy(update={"gpu": gpu.model_copy(update=faster)})

    # --- hooks the components call -------------------------------------------------------
    def sample(self) -> None:
        self.fabric.update(self.jobs)
        running = [j for j in self.jobs if j.state == "running"]
        self.telemetry.sample(
            self.env.now,
            allocated=self.cluster.allocated_gpus(),
            down=self.cluster.down_gpus(),
            training=sum(j.held_nodes * j.pool.gpus_per_node for j in running),
            serving=sum(s.held_gpus for s in getattr(self, "services", ())),
            running=len(running),
            queued=len(self.scheduler.queue),
        )

    def on_start(self, job: TrainingRun) -> None:
        """A job got its gang; its data loader starts when it computes (see TrainingRun)."""
        self.sample()

    def release(self, job: TrainingRun, alloc: Allocation, count: int | None = None) -> None:
        """A job gives nodes back: waiting gangs are served first, then the queue."""
        self.cluster.release(alloc, job.index, count)
        self.fabric.update(self.jobs)
        self._nodes_freed()

    def release_nodes(self, service: Service, alloc: Allocation) -> None:
        """A service gives nodes back."""
        self.cluster.release(alloc, service.owner)
        self.sample()
        self._nodes_freed()

    def job_ended(self, job: TrainingRun) -> None:
        if job in self.waiting:
            self.waiting.remove(job)
        self.scheduler.yielded(job)
        self.sample()

    def wait_for_nodes(self, job: TrainingRun) -> None:
        """A running job lost nodes and no spare or free node replaced them: it waits, holding
        the rest of its gang, ahead of the queue."""
        if job not in self.waiting:
            self.waiting.append(job)
        self._serve_waiting()
        self.sample()

    def may_grow(self, job: TrainingRun) -> bool:
        """An elastic job may widen only when nobody waits for nodes of its pool (no job, no
        service replica) and nobody has for `scheduler.regrow_after_s`."""
        pool = job.pool.name
        if any(s.pool.name == pool and s.counts["pending"] for s in self.services):
            self.wanted(pool)
            return False
        hold = self.scenario.scheduler.regrow_after_s
        return (
            not self.waiting
            and not self.scheduler.queued_in(pool)
            and self.env.now - self.last_wanted.get(pool, -math.inf) >= hold
        )

    def held_back(self, pool: str) -> int:
        """Free nodes of `pool` an elastic job leaves alone when it grows: what the pool's
        services held within the regrow hold over what they hold now (Service.held_back)."""
        return sum(s.held_back() for s in self.services if s.pool.name == pool)

    def wanted(self, pool: str) -> None:
        """Someone in `pool` is short of nodes now (see may_grow)."""
        self.last_wanted[pool] = self.env.now

    def node_failed(self, pool: str, node: int, component: str, repair_s: float) -> str | None:
        """The failure injector's report: take the node down, tell its job, plan the repair."""
        if component == "software":  # the node stays up; the job on it restarts
            owner = int(self.cluster.pools[pool].owner[node])
        else:
            owner = self.cluster.fail(pool, node)
        job = self.jobs[owner] if 0 <= owner < len(self.jobs) else None
        service = self.services[owner - len(self.jobs)] if owner >= len(self.jobs) else None
        if job is not None:
            job.node_failed(node, component)
        elif service is not None:
            service.node_failed(node, component)
        if component != "software":
            repair = self.env.timeout(repair_s)
            repair.callbacks.append(lambda _ev: self._repaired(pool, node))
        self.sample()
        return job.spec.name if job is not None else (service.name if service is not None else None)

    def _repaired(self, pool: str, node: int) -> None:
        self.cluster.repair(pool, node)
        self._nodes_freed()

    def _nodes_freed(self) -> None:
        for service in sorted(self.services, key=lambda s: (-s.spec.priority, s.index)):
            service.place_pending()
        self._serve_waiting()
        self.scheduler.schedule()

    def _serve_waiting(self) -> None:
        """Give freed nodes (and spares) to running jobs short of nodes, highest priority
        first."""
        for job in sorted(self.waiting, key=lambda j: (-j.spec.priority, j.index)):
            if job.alloc is None or job.state != "running":
                self.waiting.remove(job)
                continue
            job.book()  # the meter books what it held so far before its gang grows
            while job.held_nodes < job.nodes and self.cluster.replacement(
                job.alloc, job.index, near=int(job.alloc.nodes[0]) if job.held_nodes else 0
            ):
                pass
            if job.held_nodes >= job.min_nodes:  # an elastic job runs narrower meanwhile
                self.waiting.remove(job)
                job.gang_complete()

    # --- run -----------------------------------------------------------------------------
    def run(self) -> Any:
        from ..results import Results

        wall0 = time.perf_counter()
        horizon = self.scenario.duration
        env = self.env
        while env.peek() < horizon:  # env.run(until=horizon), counting the events processed
            env.step()
            self.telemetry.events += 1
        env.run(until=horizon)  # nothing is left before it: this only moves the clock
        for job in self.jobs:
            job.close(horizon)
        for service in self.services:
            service.close(horizon)
        self.telemetry.close(horizon)
        wall = time.perf_counter() - wall0
        return Results.from_factory(self, wall_s=wall)


def run(scenario: Scenario) -> Any:
    """Play `scenario` to its horizon; a `Results`."""
    return Factory(scenario).run()
