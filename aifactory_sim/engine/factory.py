"""The factory: wiring only. It builds the components from a Scenario, connects their ports,
plays the environment to the horizon and hands back each component's own result
(`FactoryRun`); `aifactory_sim.runner` assembles `Results` from them, above the engine.

The lifecycle, as desmod has it (docs/background/architecture.md):

1. build: every component from its spec and the ports it uses (node broker, ledger,
   recorder, storage), none of them holding the factory;
2. connect: the late links of a cycle of ownership (the broker's owners of nodes, the
   scheduler's jobs, the recorder's probe);
3. run: SimPy to the horizon, counting events;
4. close: each component books what is still running and returns its result.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from ..kernels.power import cap_slowdown
from ..spec.inference import InferenceService
from ..spec.scenario import Scenario
from ..weather import pue_at
from .broker import NodeBroker
from .cluster import ClusterState
from .disagg import DecodeSide, DisaggregatedModel, kv_link
from .fabric import Fabric
from .failures import FailureInjector, FailureRecord
from .fleet import SAMPLE_S, Fleet, replica_sizing, sample_interval_s
from .fluid import FlowModel
from .gray import GrayInjector
from .inference import RouterModel
from .power import DemandResponseRun
from .quotas import Quotas
from .scheduler import Scheduler
from .storage import SharedStorage
from .telemetry import Gauges, Ledger, Recorder
from .training import EstimateCache, JobEvent, JobSettings, TrainingRun


def rng_for(seed: int, stream: str) -> np.random.Generator:
    """One named random stream per component: keyed by its name, so adding a stream shifts no
    other (numpy SeedSequence with a spawn key)."""
    key = zlib.crc32(stream.encode())
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key,)))


@dataclass(frozen=True)
class JobResult:
    """A training job's own result: its summary and its life's events (time, kind)."""

    name: str
    summary: dict[str, Any]
    events: list[JobEvent]
    #: with `power_trace`: (start, end, ledger bucket, GPUs) of what its GPUs did
    trace: list[list[Any]] | None = None


@dataclass(frozen=True)
class ServiceResult:
    """A service's own result: its summary, its sampled rows (SERVICE_COLUMNS) and its
    per-request columns (empty in the fluid tier, which has no requests of its own)."""

    name: str
    tier: str
    summary: dict[str, Any]
    rows: list[Any]
    requests: dict[str, np.ndarray]
    #: the timeseries rows under their own names (a disaggregated service's two fleets);
    #: None: every row is `name`'s
    rows_named: list[tuple[str, list[Any]]] | None = None


@dataclass
class FactoryRun:
    """What a run hands back: the scenario, each component's own result, and the counters."""

    scenario: Scenario
    total_gpus: int
    jobs: list[JobResult]
    services: list[ServiceResult]
    failures: list[FailureRecord]
    ledger: Ledger
    timeseries: list[Gauges]
    allocated_gpu_s: float  # the integral of allocated GPUs over the run
    events: int  # SimPy events processed
    wall_s: float
    #: demand-response events as met (engine/power.py), in time order
    demand_response: list[dict[str, Any]] = field(default_factory=list)
    #: with scheduler.queues: the summary's `queues` section (engine/quotas.py)
    queues: dict[str, Any] | None = None
    #: with failures.gray: the summary's `gray` section and the episodes (engine/gray.py)
    gray: dict[str, Any] | None = None
    gray_episodes: list[dict[str, Any]] = field(default_factory=list)


class Factory:
    """Builds and connects the components of a scenario, then runs them (see the module)."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        env: simpy.Environment | None = None,
        streams: str = "",
        startup_s: float = 0.0,
        iteration_extra_s: float = 0.0,
    ):
        """`env`: a clock shared with other sites' factories (engine/estate.py), else its own;
        `streams`: a prefix for the site-wide random streams (failures), so that sites draw
        apart; `startup_s`: added to every start and restart of a job (a cloud node's
        provisioning); `iteration_extra_s`: added to every serving iteration (confidential
        computing's encrypted transfers)."""
        self.scenario = scenario
        self.streams = streams
        self.startup_s = startup_s
        self.iteration_extra_s = iteration_extra_s
        horizon = scenario.duration
        # --- build -----------------------------------------------------------------------
        env = self.env = simpy.Environment() if env is None else env
        self.cluster = ClusterState(scenario)
        fab = scenario.cluster.fabric
        self.fabric = Fabric(self.cluster, fab.nodes_per_leaf, fab.oversubscription)
        self.ledger = Ledger(total_gpus=self.cluster.total_gpus)
        self.recorder = Recorder(lambda: env.now)
        sample = self.recorder.sample
        self.estimates = EstimateCache()
        st = scenario.cluster.storage
        self.storage = (
            None if st is None else SharedStorage(env, st.read_gb_s * 1e9, st.write_gb_s * 1e9)
        )
        sched = scenario.scheduler
        self.broker = NodeBroker(
            env,
            self.cluster,
            self.fabric,
            placement=sched.placement,
            regrow_after_s=sched.regrow_after_s,
            sample=sample,
        )
        self.scheduler = Scheduler(env, sched, self.broker, sample)
        self.jobs = [
            TrainingRun(
                env,
                i,
                job,
                scenario.pool(job.pool),
                self._job_settings(job.pool),
                broker=self.broker,
                queue=self.scheduler,
                ledger=self.ledger,
                sample=sample,
                storage=self.storage,
                estimates=self.estimates,
            )
            for i, job in enumerate(scenario.training)
        ]
        # the grid operator's calls to draw less (engine/power.py)
        self.demand: DemandResponseRun | None = None
        fac = scenario.facility
        if fac is not None and fac.demand_response:
            self.demand = DemandResponseRun(
                env,
                fac.demand_response,
                self.jobs,
                lambda t: float(pue_at(fac, scenario.power.pue, np.array([t]))[0]),
            )
        #: every replica fleet (a disaggregated service has two), and each service's fleets
        self.services: list[Fleet] = []
        self._fleets_of: list[list[Fleet]] = []
        for svc in scenario.inference:
            fleets = self._service(len(self.services), svc, horizon)
            self.services += fleets
            self._fleets_of.append(fleets)
        if self.demand is not None:
            self.demand.fleets = self.services
            self.demand.cap_w = scenario.gpu_cap_w
            self.demand.scheduler = self.scheduler
        self.failures = None
        if scenario.failures is not None:
            self.failures = FailureInjector(
                env,
                scenario.failures,
                self._rngs("failures", ("times", "repairs", "components")),
                nodes=self._pool_nodes(),
                horizon=horizon,
                broker=self.broker,
            )
        self.gray: GrayInjector | None = None
        if scenario.failures is not None and scenario.failures.gray is not None:
            self.gray = GrayInjector(
                env,
                scenario.failures.gray,
                scenario.monitoring,
                self._rngs("gray", ("slow_gpu", "link_flap", "silent_corruption")),
                nodes=self._pool_nodes(),
                horizon=horizon,
                broker=self.broker,
                jobs=self.jobs,
            )
            for job in self.jobs:
                job.gray = self.gray.state
        self.quotas = self._quotas()
        # --- connect ---------------------------------------------------------------------
        self.broker.connect(self.jobs, self.services, self.scheduler)
        self.scheduler.connect(self.jobs, self.quotas)
        observers: tuple[Callable[[], None], ...] = (lambda: self.fabric.update(self.jobs),)
        if self.quotas is not None:
            quotas = self.quotas
            observers += (quotas.observe,)

            def allows(owner: int, gpus: int) -> bool:
                q = int(quotas.owner_queue[owner])
                return quotas.admits(q, gpus, quotas.use_now())

            self.broker.quota_allows = allows
        self.recorder.connect(self._gauges, observers=observers)
        sample()

    def _rngs(self, part: str, names: tuple[str, ...]) -> dict[str, np.random.Generator]:
        """The site-wide named random streams of one component (`failures`, `gray`)."""
        return {n: rng_for(self.scenario.seed, f"{self.streams}{part}.{n}") for n in names}

    def _pool_nodes(self) -> list[tuple[str, int]]:
        return [(name, pool.owner.size) for name, pool in self.cluster.pools.items()]

    def _quotas(self) -> Quotas | None:
        """The teams' queues (scheduler.queues), each job's and fleet's charged to its own."""
        sc = self.scenario
        if not sc.scheduler.queues:
            return None
        names = [q.name for q in sc.scheduler.queues]
        owner_queue = [names.index(str(sc.queue_of(j.spec))) for j in self.jobs]
        for svc, fleets in zip(sc.inference, self._fleets_of, strict=True):
            owner_queue += [names.index(str(sc.queue_of(svc)))] * len(fleets)
        jobs, fleets_all = self.jobs, self.services

        def held() -> list[int]:
            return [j.held_nodes * j.pool.gpus_per_node for j in jobs] + [
                f.held_gpus for f in fleets_all
            ]

        return Quotas(
            sc.scheduler.queues,
            sc.scheduler.fair_share_half_life_s,
            lambda: self.env.now,
            held,
            owner_queue,
        )

    def _service(self, k: int, svc: InferenceService, horizon: float) -> list[Fleet]:
        """A service's serving model (a router over replica cores for `step` and `fast`,
        flows for `fluid`) on top of its replica fleet, the k-th fleet; a disaggregated
        service's model (engine/disagg.py) on its prefill and decode fleets, the k-th and
        the next."""
        sc = self.scenario
        pool = sc.pool(svc.pool)
        tier = sc.service_tier(svc)

        def streams() -> dict[str, np.random.Generator]:
            return {
                name: rng_for(sc.seed, f"inference.{svc.name}.{name}")
                for name in (
                    "arrivals",
                    "prompts",
                    "outputs",
                    "router",
                    "metric",
                    "prefixes",
                    "conversations",
                )
            }

        rngs = streams()
        span_s = max(horizon - svc.start_at, 0.0)
        slowdown = self.compute_slowdown(svc.pool)

        def fleet(i: int, spec: InferenceService, model: Any, sizing: Any, role: str) -> Fleet:
            return Fleet(
                self.env,
                i,
                len(self.jobs) + i,
                spec,
                pool,
                model,
                sizing=sizing,
                regrow_after_s=sc.scheduler.regrow_after_s,
                broker=self.broker,
                ledger=self.ledger,
                sample=self.recorder.sample,
                storage=self.storage,
                role=role,
            )

        if svc.disaggregation is not None:
            pre, dec = svc.side("prefill"), svc.side("decode")
            p_sizing = replica_sizing(pre, pool, slowdown, self.iteration_extra_s)
            d_sizing = replica_sizing(dec, pool, slowdown, self.iteration_extra_s)
            kvt = svc.disaggregation.kv_transfer
            if tier == "fluid":  # two flows, the same draws (each its own copy of the streams)
                a = FlowModel(
                    pre,
                    p_sizing,
                    rngs,
                    interval_s=sample_interval_s(pre),
                    span_s=span_s,
                    role="prefill",
                )
                b = FlowModel(
                    dec,
                    d_sizing,
                    streams(),
                    interval_s=sample_interval_s(dec),
                    span_s=span_s,
                    role="decode",
                )
                a.feed(b)
                a.spec_link = kvt.link
                a.link = kv_link(
                    pre, p_sizing, kvt.link, kvt.latency_us, sc.cluster.fabric.latency_us
                )
                return [
                    fleet(k, pre, a, p_sizing, "prefill"),
                    fleet(k + 1, dec, b, d_sizing, "decode"),
                ]
            dmodel = DisaggregatedModel(
                svc,
                p_sizing,
                d_sizing,
                rngs,
                tier=tier,
                span_s=span_s,
                fabric_latency_us=sc.cluster.fabric.latency_us,
            )
            fab = sc.cluster.fabric
            if kvt.link == "fabric" and fab.oversubscription > 1.0:
                # transfers across leaves share their up-links with the rings (engine/fabric.py)
                state = self.cluster.pools[pool.name]
                dmodel.attach_fabric(
                    state.leaf,
                    fab.nodes_per_leaf,
                    fab.oversubscription,
                    state.gpus_per_node * float(p_sizing.parallel_args["nic_bytes_per_s"]),
                )
                if not self.fabric.sources:
                    self.env.process(self.fabric.watch(self.env, SAMPLE_S))
                self.fabric.add_source(pool.name, dmodel)
            return [
                fleet(k, pre, dmodel, p_sizing, "prefill"),
                fleet(k + 1, dec, DecodeSide(dmodel), d_sizing, "decode"),
            ]
        sizing = replica_sizing(svc, pool, slowdown, self.iteration_extra_s)
        model: RouterModel | FlowModel = (
            FlowModel(svc, sizing, rngs, interval_s=sample_interval_s(svc), span_s=span_s)
            if tier == "fluid"
            else RouterModel(svc, sizing, rngs, tier=tier, span_s=span_s)
        )
        return [fleet(k, svc, model, sizing, "both")]

    def _service_result(
        self, svc: InferenceService, fleets: list[Fleet], horizon: float
    ) -> ServiceResult:
        """A service's result: its fleet's, or, disaggregated, its two fleets' as one service
        (the requests' keys once; replicas and GPU-hours summed, and each side's under
        `pools`; the timeseries rows of each side under `name/prefill`, `name/decode`)."""
        if len(fleets) == 1:
            f = fleets[0]
            return ServiceResult(f.name, f.tier, f.summary(horizon), f.rows, f.requests_frame())
        pre, dec = fleets
        ps, ds = pre.summary(horizon), dec.summary(horizon)
        own = ("replicas_mean", "replicas_max", "kv_capacity_tokens", "gpu_h", "speculative")
        pools = {
            side: {
                "gpus_per_replica": f.spec.gpus_per_replica,
                "capacity_rps": f.capacity_rps,
                **{key: s[key] for key in own if key in s},
            }
            for side, f, s in (("prefill", pre, ps), ("decode", dec, ds))
        }
        summary = {key: v for key, v in ps.items() if key not in own}
        summary.update(
            replicas_mean=ps["replicas_mean"] + ds["replicas_mean"],
            replicas_max=ps["replicas_max"] + ds["replicas_max"],
            kv_capacity_tokens=ds["kv_capacity_tokens"],
            gpu_h={k: ps["gpu_h"][k] + ds["gpu_h"][k] for k in ps["gpu_h"]},
            pools=pools,
        )
        if "speculative" in ds:
            summary["speculative"] = ds["speculative"]
        return ServiceResult(
            svc.name,
            pre.tier,
            summary,
            pre.rows + dec.rows,
            pre.requests_frame(),
            rows_named=[(pre.name, pre.rows), (dec.name, dec.rows)],
        )

    def compute_slowdown(self, pool: str | None) -> float:
        """Under `power.gpu_power_cap_w` a pool's GPUs' compute peaks slow by the cap's clock
        factor (kernels.power.cap_slowdown with all of the work compute-bound): an argument of
        the kernels (estimate.gpu_fields), so that every compute-bound phase of a training step
        or a serving iteration slows and every memory- or network-bound one does not (decode,
        bound by HBM, slows least). Reported MFU stays against the nominal peak
        (TrainingRun.peak_scale). 1 without a cap."""
        p = self.scenario.pool(pool)
        cap = self.scenario.gpu_cap_w(p)  # power.gpu_power_cap_w or the racks' (spec)
        if cap is None:
            return 1.0
        return float(cap_slowdown(cap, p.gpu.tdp_w, 1.0))

    def _job_settings(self, pool_name: str | None) -> JobSettings:
        sc = self.scenario
        st = sc.cluster.storage
        nominal = sc.pool(pool_name).gpu
        slow = self.compute_slowdown(pool_name)
        return JobSettings(
            net_latency_us=sc.cluster.fabric.latency_us,
            storage_write_gb_s=None if st is None else st.write_gb_s,
            failures=sc.failures,
            preemption_grace_s=sc.scheduler.preemption_grace_s,
            step_tier=sc.training_tier == "step",
            compute_slowdown=slow,
            peak_scale=nominal.bf16_tflops / slow / nominal.bf16_tflops,
            # demand response caps jobs for a while: the power timeline needs their traces
            trace=sc.facility is not None and bool(sc.facility.demand_response),
            startup_s=self.startup_s,
        )

    def _gauges(self, now: float) -> Gauges:
        """The recorder's probe: the cluster's gauges summed over the components now."""
        running = [j for j in self.jobs if j.state == "running"]
        return Gauges(
            now,
            self.cluster.allocated_gpus(),
            self.cluster.down_gpus(),
            sum(j.held_nodes * j.pool.gpus_per_node for j in running),
            sum(s.held_gpus for s in self.services),
            len(running),
            len(self.scheduler.queue),
        )

    # --- run -----------------------------------------------------------------------------
    def run(self) -> FactoryRun:
        wall0 = time.perf_counter()
        events = play(self.env, self.scenario.duration)
        return self.close(events, time.perf_counter() - wall0)

    def _queues_summary(self, horizon: float) -> dict[str, Any]:
        assert self.quotas is not None
        self.quotas.observe()  # book the last stretch
        waits, counts = _queue_stats(self.jobs, self.quotas.owner_queue)
        return self.quotas.summary(horizon, waits, counts)

    def close(self, events: int, wall_s: float) -> FactoryRun:
        """At the horizon: each component books what is still running; the run's results."""
        horizon = self.scenario.duration
        self.recorder.events = events
        for job in self.jobs:
            job.close(horizon)
        for service in self.services:
            service.close(horizon)
        rec = self.recorder
        self.ledger.close(
            horizon,
            allocated_gpu_s=rec.allocated_gpu_s(horizon),
            down_gpu_s=rec.down_gpu_s(horizon),
        )
        return FactoryRun(
            scenario=self.scenario,
            total_gpus=self.cluster.total_gpus,
            jobs=[JobResult(j.name, j.summary(horizon), j.events, j.trace) for j in self.jobs],
            services=[
                self._service_result(svc, fleets, horizon)
                for svc, fleets in zip(self.scenario.inference, self._fleets_of, strict=True)
            ],
            failures=[] if self.failures is None else self.failures.records,
            demand_response=[] if self.demand is None else self.demand.records,
            gray=None if self.gray is None else self.gray.summary(self.jobs, horizon),
            queues=None if self.quotas is None else self._queues_summary(horizon),
            gray_episodes=[] if self.gray is None else self.gray.table(),
            ledger=self.ledger,
            timeseries=rec.rows,
            allocated_gpu_s=rec.allocated_gpu_s(horizon),
            events=events,
            wall_s=wall_s,
        )


def _queue_stats(
    jobs: list[TrainingRun], owner_queue: Any
) -> tuple[dict[int, list[float]], dict[int, int]]:
    waits: dict[int, list[float]] = {}
    counts: dict[int, int] = {}
    for j in jobs:
        q = int(owner_queue[j.index])
        if j.submitted_at is not None:
            counts[q] = counts.get(q, 0) + 1
        if j.started_at is not None and j.submitted_at is not None:
            waits.setdefault(q, []).append(j.started_at - j.submitted_at)
    return waits, counts


def play(env: simpy.Environment, horizon: float) -> int:
    """env.run(until=horizon), counting the events processed."""
    events = 0
    while env.peek() < horizon:
        env.step()
        events += 1
    env.run(until=horizon)  # nothing is left before it: this only moves the clock
    return events
