"""The scenario: a factory (cluster, failures, power, cost, scheduler), its training jobs and its
inference services.

Field names follow shared/examples/factory.yaml, the file users write.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from .. import catalog
from ..errors import ScenarioError
from .base import (
    BatchTokens,
    Count,
    GbitS,
    NonNegativeDurationS,
    PositiveDurationS,
    Spec,
    located,
)
from .facility import Facility
from .hardware import GPUSpec, ModelSpec, from_catalog
from .inference import Fidelity, InferenceService
from .serving import TraceTraffic

if TYPE_CHECKING:
    from ..estimate import TrainingEstimate

#: Node components a failure can be put down to.
COMPONENTS = ("gpu", "hbm", "nic", "switch", "host", "software")


class FixedHours(Spec):
    kind: Literal["fixed"] = "fixed"
    value: float = Field(ge=0, description="hours")


class ExponentialHours(Spec):
    kind: Literal["exponential"] = "exponential"
    mean: float = Field(gt=0, description="hours")


class LognormalHours(Spec):
    kind: Literal["lognormal"] = "lognormal"
    median: float = Field(gt=0, description="hours")
    sigma: float = Field(gt=0, description="standard deviation of the log")


RepairHours = Annotated[FixedHours | ExponentialHours | LognormalHours, Field(discriminator="kind")]


class Exponential(Spec):
    kind: Literal["exponential"] = "exponential"


class Weibull(Spec):
    kind: Literal["weibull"] = "weibull"
    shape: float = Field(gt=0, description="< 1: infant mortality; 1: exponential; > 1: wear-out")


TimeToFailure = Annotated[Exponential | Weibull, Field(discriminator="kind")]


class SlowGpu(Spec):
    """A GPU that runs slow without failing (thermal or power throttling, a degraded HBM stack,
    a bad PCIe link): episodes arrive on each node as a Poisson process."""

    per_1000_node_days: float = Field(gt=0, description="episodes per 1,000 node-days")
    slowdown: float = Field(
        gt=0, le=1, description="the GPU's throughput while slow, a fraction of its own"
    )
    duration_h: RepairHours = Field(description="how long an episode lasts unless found")


class LinkFlap(Spec):
    """A node's NIC that flaps: its link renegotiates and errors, so for a while it carries a
    fraction of its line rate."""

    per_1000_node_days: float = Field(gt=0, description="episodes per 1,000 node-days")
    bandwidth_fraction: float = Field(
        gt=0, le=1, description="the share of the NIC's line rate it carries while it flaps"
    )
    duration_h: RepairHours = Field(description="how long an episode lasts unless found")


class SilentCorruption(Spec):
    """Silent data corruption: a GPU computes wrong values and nothing reports it. The job's
    state is wrong from then on, and every checkpoint it takes after, until a validation check
    finds it (`monitoring.validation_every_steps`); then it rolls back to its last checkpoint
    taken before the corruption, and the node is swapped."""

    per_1000_node_days: float = Field(gt=0, description="events per 1,000 node-days")


class GrayFailures(Spec):
    """Failures that do not announce themselves (engine/gray.py)."""

    slow_gpu: SlowGpu | None = None
    link_flap: LinkFlap | None = None
    silent_corruption: SilentCorruption | None = None


class StragglerDetection(Spec):
    """Straggler detection on a job's step time: a node is cordoned and swapped for a spare
    once the step time has stayed above `threshold` x its healthy value for `window_s`, at the
    first scrape that sees it."""

    metric: Literal["step_time"] = Field("step_time", description="what is watched")
    threshold: float = Field(gt=1, description="step time over its healthy value that counts")
    window_s: PositiveDurationS = Field(description="how long it must last to act")


class Monitoring(Spec):
    """What watches the cluster for gray failures (engine/gray.py)."""

    straggler_detection: StragglerDetection | None = Field(
        None, description="cordon and swap a node that slows a job's steps; none: never"
    )
    validation_every_steps: int | None = Field(
        None, ge=1, description="a check of the job's numerics every N steps (finds SDC)"
    )
    scrape_interval_s: PositiveDurationS = Field(
        60.0, description="how often metrics are read: nothing is seen between two scrapes"
    )
    compare_without: bool = Field(
        True,
        description="also run the same seed with monitoring off and report what it saved "
        "(summary gray.without_monitoring; twice the run time)",
    )


#: Where a relative `workload_trace.path` is looked for after the working directory.
BUNDLED_SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
#: The name prefix of jobs replayed from a trace (a file that lists them is not expanded again).
TRACE_PREFIX = "trace-"


class WorkloadTrace(Spec):
    """Training jobs replayed from a public cluster trace (spec/job_traces.py reads each
    format's own columns). Each trace job becomes a training job submitted at its (scaled)
    time that runs its recorded duration on ceil(gpus / gpus_per_node) whole nodes of the
    first pool: its step time is the catalog model's at TP = gpus_per_node, its token count
    the steps that fill the duration, so it draws the power and meets the failures a job of
    that model would. It is charged to the queue `queue_map` gives its group (the trace's
    virtual cluster or user), else `queue_map.default`."""

    format: Literal["helios", "philly", "alibaba-pai"]
    path: str = Field(
        min_length=1,
        description="the trace file; a relative path is looked for in the working directory, "
        "then among the bundled scenarios (traces/helios-sample.csv is bundled)",
    )
    queue_map: dict[str, str] = Field(
        default_factory=dict, description="the trace's group -> a scheduler queue; key default"
    )
    scale_to_gpus: int | None = Field(
        None,
        gt=0,
        description="replay the trace's load per GPU on this many GPUs: submit times scale by "
        "the trace cluster's GPUs / this (none: as recorded)",
    )
    repeat: bool = Field(
        False,
        description="tile the trace end to end until the horizon (its span plus one mean gap "
        "a tile); at most MAX_TRACE_JOBS jobs",
    )
    model: str = Field("llama3-8b", description="the catalog model a trace job stands for")

    def resolved_path(self) -> Path:
        p = Path(self.path)
        if p.is_absolute() or p.exists():
            return p
        bundled = BUNDLED_SCENARIOS / p
        return bundled if bundled.exists() else p


#: The most jobs a replayed (and tiled) trace may add: each is a simulated job of its own.
MAX_TRACE_JOBS = 20_000


#: What `telemetry.export` may name.
Export = Literal["openmetrics", "parquet"]
EXPORTS: tuple[Export, ...] = ("openmetrics", "parquet")


class Telemetry(Spec):
    """Metrics a dashboard reads, written beside the results (metrics_export.py): OpenMetrics
    text (`metrics.om`, what `promtool tsdb create-blocks-from openmetrics` backfills) and one
    long Parquet table (`metrics.parquet`), with DCGM- and vLLM-style names."""

    export: list[Export] = Field(
        default_factory=lambda: list(EXPORTS), min_length=1, description="formats"
    )
    interval_s: PositiveDurationS = Field(60.0, description="the scrape grid's spacing")


class Failures(Spec):
    """Node failures: a renewal process per node (up until it fails, down while repaired)."""

    node_failures_per_1000_node_days: float | None = Field(
        None, gt=0, description="fleet failure rate (Kokolis et al., HPCA'25: 6.5 and 2.34)"
    )
    node_mtbf_h: float | None = Field(
        None, gt=0, description="or: a node's mean up-time, from a repair to its next failure"
    )
    distribution: TimeToFailure = Exponential()
    components: dict[str, float] | None = Field(
        None,
        description="shares of failures by component (gpu, hbm, nic, switch, host, software); "
        "default: Llama 3's 16K-GPU breakdown. Software failures interrupt jobs but need no "
        "repair",
    )
    repair_h: RepairHours = FixedHours(value=6.0)
    detect_s: NonNegativeDurationS = Field(300.0, description="failure to detection")
    restart_s: NonNegativeDurationS = Field(600.0, description="rescheduling and start-up")
    gray: GrayFailures | None = Field(
        None, description="slow GPUs, flapping links, silent data corruption"
    )

    @field_validator("distribution", mode="before")
    @classmethod
    def _named_distribution(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value == "weibull":
                raise ValueError("weibull needs a shape: {kind: weibull, shape: 0.8}")
            return {"kind": value}
        return value

    @field_validator("repair_h", mode="before")
    @classmethod
    def _plain_hours(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return {"kind": "fixed", "value": value}
        return value

    @field_validator("components")
    @classmethod
    def _components(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown components {unknown}; allowed: {', '.join(COMPONENTS)}")
        if any(v < 0 for v in value.values()) or sum(value.values()) <= 0:
            raise ValueError("component shares must be >= 0 with a positive sum")
        return value

    @model_validator(mode="after")
    def _one_rate(self) -> Failures:
        if (self.node_failures_per_1000_node_days is None) == (self.node_mtbf_h is None):
            raise ValueError("give exactly one of node_failures_per_1000_node_days and node_mtbf_h")
        return self

    @property
    def node_mtbf_s(self) -> float:
        if self.node_mtbf_h is not None:
            return self.node_mtbf_h * 3600.0
        assert self.node_failures_per_1000_node_days is not None
        return 1000.0 * 86400.0 / self.node_failures_per_1000_node_days

    def component_shares(self) -> dict[str, float]:
        """Normalised shares by component (the catalog's Llama 3 breakdown by default)."""
        from .. import catalog

        raw = self.components or catalog.entry("reliability", "llama3-16k-h100")["components"]
        total = float(sum(raw.values()))
        return {c: raw.get(c, 0.0) / total for c in COMPONENTS}


class NVMe(Spec):
    """Local NVMe of one node."""

    capacity_tb: float = Field(gt=0)
    read_gb_s: float = Field(gt=0)
    write_gb_s: float = Field(gt=0)


class NodePool(Spec):
    """Identical GPU nodes."""

    name: str = Field(min_length=1)
    nodes: int = Field(gt=0)
    gpu: GPUSpec
    gpus_per_node: int = Field(8, gt=0)
    nic_gbit_s: GbitS = Field(
        400.0, gt=0, description="scale-out NIC rate per GPU (Gb/s), or HDR/NDR/XDR"
    )
    nvme: NVMe | None = None

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu_from_catalog(cls, value: Any) -> Any:
        return from_catalog("gpu", value)

    @field_validator("nic_gbit_s", mode="before")
    @classmethod
    def _nic_from_catalog(cls, value: Any) -> Any:
        if isinstance(value, str) and value.upper() in catalog.names("network"):
            return catalog.entry("network", value.upper())["gbit_s"]
        return value

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


class Fabric(Spec):
    """Scale-out fabric: a two-level fat tree of leaf and spine switches."""

    kind: Literal["fat-tree"] = "fat-tree"
    nodes_per_leaf: int = Field(16, gt=0)
    oversubscription: float = Field(1.0, ge=1.0, description="leaf down- over up-link bandwidth")
    latency_us: float = Field(5.0, ge=0, description="per-hop latency of a collective step")


class Storage(Spec):
    """Shared parallel file system, aggregate bandwidth."""

    read_gb_s: float = Field(gt=0)
    write_gb_s: float = Field(gt=0)


class RackCooling(Spec):
    """A rack's cooling: how much heat it removes."""

    kind: Literal["air", "liquid"] = "liquid"
    capacity_kw: float = Field(gt=0, description="heat one rack's cooling removes, kW")
    supply_temp_c: float | None = Field(
        None, description="coolant (liquid) or inlet air (air) temperature, C: recorded"
    )


class Racks(Spec):
    """Nodes in racks, each with a provisioned power budget and a cooling capacity. A rack whose
    nodes at full load would draw more than either holds its GPUs at the power that fits: a cap
    as power.gpu_power_cap_w's, with its clock factor on compute-bound work."""

    nodes_per_rack: int = Field(gt=0, description="nodes (trays) per rack")
    power_budget_kw: float = Field(gt=0, description="power provisioned per rack, kW")
    cooling: RackCooling | None = None

    def limit_w(self) -> float:
        """What a rack may draw: its budget, or its cooling's capacity if smaller."""
        kw = self.power_budget_kw
        if self.cooling is not None:
            kw = min(kw, self.cooling.capacity_kw)
        return kw * 1e3


class Cluster(Spec):
    node_pools: list[NodePool] = Field(min_length=1)
    racks: Racks | None = Field(None, description="racks: a power budget and cooling per rack")
    fabric: Fabric = Fabric()
    storage: Storage | None = None
    spare_nodes: int = Field(
        0, ge=0, description="nodes held back from scheduling (taken from the first pool)"
    )

    @model_validator(mode="after")
    def _check(self) -> Cluster:
        names = [p.name for p in self.node_pools]
        if len(set(names)) != len(names):
            raise ValueError(f"node pool names must be unique, got {names}")
        if self.spare_nodes >= self.node_pools[0].nodes:
            raise ValueError(
                f"spare_nodes={self.spare_nodes} must be fewer than the first pool's "
                f"{self.node_pools[0].nodes} nodes"
            )
        return self


class Power(Spec):
    """Power draw and energy price (docs/background/power-cost.md)."""

    pue: float = Field(
        1.2, ge=1.0, description="power usage effectiveness: facility power over IT power"
    )
    usd_per_kwh: float = Field(0.08, ge=0, description="energy price, USD per kWh")
    node_overhead_w: float = Field(
        0.0,
        ge=0,
        description="everything in a node but the GPUs (CPUs, NICs, fans), W; drawn "
        "while the node is up",
    )
    gpu_power_cap_w: float | None = Field(
        None,
        gt=0,
        description="board power limit per GPU (nvidia-smi -pl), between the GPU's "
        "idle power and its TDP; none: TDP. Compute-bound work slows by the cap's clock factor "
        "(kernels.power.cap_slowdown), memory-bound decode hardly at all",
    )


class Cost(Spec):
    """Owning (capex, opex, energy) and renting (cloud) prices (docs/background/power-cost.md)."""

    node_capex_usd: float = Field(0.0, ge=0, description="purchase price of one node, USD")
    amortization_years: float = Field(
        4.0, gt=0, description="years over which capex is spread (straight line)"
    )
    network_capex_per_node_usd: float = Field(
        0.0,
        ge=0,
        description="fabric (switches, optics, cables) per node, USD, amortised with the nodes",
    )
    opex_share_per_year: float = Field(
        0.0,
        ge=0,
        description="operations and maintenance per year as a share of capex (energy excluded)",
    )
    cloud_usd_per_gpu_hour: float = Field(
        0.0, ge=0, description="on-demand rental price, USD per GPU-hour"
    )
    cloud_reserved_usd_per_gpu_hour: float | None = Field(
        None, ge=0, description="reserved (committed) rental price, USD per GPU-hour"
    )
    cloud_spot_usd_per_gpu_hour: float | None = Field(
        None, ge=0, description="spot rental price, USD per GPU-hour"
    )
    serving_usd_per_mtok: float | None = Field(
        None,
        ge=0,
        description="what the services charge per million output tokens, USD: the revenue a "
        "demand-response event's missed requests lose",
    )


class Queue(Spec):
    """A team's queue with a GPU quota (Kueue's ClusterQueue in one cohort): its jobs and
    services use up to `quota_gpus`; one that `can_borrow` may use what the other queues leave
    idle of theirs, up to `borrowing_limit_gpus` above its quota, and gives it back when its
    owner wants it (preemption of the borrowing work, newest first)."""

    name: str = Field(min_length=1)
    quota_gpus: int = Field(ge=0, description="GPUs nominally its own")
    can_borrow: bool = Field(False, description="may use the idle quota of other queues")
    borrowing_limit_gpus: int | None = Field(
        None, ge=0, description="the most above its quota it may borrow; none: no limit"
    )


class Scheduler(Spec):
    policy: Literal["fifo", "priority", "priority-backfill", "fair-share"] = Field(
        "fifo",
        description="fifo: by submission; priority: highest `priority` first; priority-backfill:"
        " priority with EASY backfill; fair-share: the queue with the least decayed use per "
        "GPU of quota first",
    )
    preemption: bool = Field(
        False, description="a higher-priority job may take nodes from lower-priority ones"
    )
    preemption_grace_s: NonNegativeDurationS = Field(
        600.0,
        description="a preempted job checkpoints first when its write fits in this time, else it"
        " is killed and loses the work since its last checkpoint",
    )
    placement: Literal["pack", "spread"] = "pack"
    queues: list[Queue] = Field(
        default_factory=list,
        description="teams' queues with GPU quotas; work names its `queue` (default: the first)",
    )
    fair_share_half_life_s: PositiveDurationS = Field(
        7 * 86400.0,
        description="fair-share's memory: past use counts half after this long (Slurm's "
        "PriorityDecayHalfLife, 7 days by default)",
    )
    regrow_after_s: NonNegativeDurationS = Field(
        1800.0,
        description="an elastic job takes nodes back (after a checkpoint) only once nobody in its"
        " pool has been short of nodes for this long: a resize restarts the job, so a service"
        " whose load swings does not make it shrink and grow at every swing",
    )


class Parallel(Spec):
    tp: int = Field(1, gt=0, description="tensor-parallel width")
    pp: int = Field(1, gt=0, description="pipeline stages")
    dp: int = Field(1, gt=0, description="data-parallel width")
    cp: int = Field(1, gt=0, description="context-parallel width")
    microbatch_seqs: int = Field(1, gt=0)
    interleave: int = Field(1, gt=0, description="virtual pipeline stages per rank")

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp * self.cp


class DataSpec(Spec):
    source: Literal["storage", "nvme", "synthetic"] = "synthetic"
    bytes_per_token: float = Field(4.0, gt=0)


class CheckpointSpec(Spec):
    """When and how a job saves its state."""

    interval: Literal["young-daly", "none"] | PositiveDurationS = Field(
        "young-daly",
        description="compute between the end of one checkpoint and the start of the next "
        "(Daly's tau), `young-daly` for Daly's optimum, or `none`",
    )
    mode: Literal["sync", "async"] = Field(
        "sync",
        description="sync: the job stalls for the whole write; async: only for a snapshot to "
        "host memory, the write goes on in the background",
    )
    bytes_per_param: float = Field(
        14.0, gt=0, description="bf16 weights + fp32 master weights and Adam moments"
    )
    snapshot_gb_s: float = Field(
        25.0, gt=0, description="device-to-host copy rate per GPU for async snapshots"
    )
    write_s: NonNegativeDurationS | None = Field(
        None, description="measured write time; overrides the storage model"
    )
    reload_s: NonNegativeDurationS | None = Field(
        None, description="measured reload time; overrides the storage model"
    )

    @field_validator("interval", mode="before")
    @classmethod
    def _interval(cls, value: Any) -> Any:
        if isinstance(value, str) and value in ("young-daly", "none"):
            return value
        from ..units import parse_duration_s

        return parse_duration_s(value)


class ElasticSpec(Spec):
    """The job may run with fewer data-parallel replicas (down to min_dp) instead of stopping."""

    min_dp: int = Field(gt=0)


class TrainingJob(Spec):
    name: str = Field(min_length=1)
    model: ModelSpec
    pool: str | None = Field(None, description="node pool to run on; default: the first")
    queue: str | None = Field(
        None, description="the scheduler queue (scheduler.queues) it is charged to"
    )
    submit_at: NonNegativeDurationS = 0.0
    priority: int = 0
    tokens: Annotated[Count, Field(gt=0)]
    seq_len: int = Field(gt=0)
    global_batch_tokens: Annotated[BatchTokens, Field(gt=0)] | None = Field(
        None,
        description="tokens per step; suffixes are binary here as in ML papers (16M = 2**24 = "
        "2048 x 8192), rounded to whole microbatches on every data-parallel rank",
    )
    global_batch_seqs: int | None = Field(None, gt=0)
    parallel: Parallel = Parallel()
    recompute: Literal["auto", "none", "selective", "full"] = "auto"
    zero_stage: Literal[0, 1, 2, 3] = 1
    precision: Literal["bf16", "fp8"] = "bf16"
    data: DataSpec = DataSpec()
    checkpoint: CheckpointSpec = CheckpointSpec(interval="none")
    elastic: ElasticSpec | None = None
    max_restarts: int | None = Field(None, ge=0, description="default: unlimited")
    power_trace: bool = Field(
        False,
        description="place the job's stalls (checkpoints, failures, restarts, waits) in the "
        "power timeline at idle power, and resolve its steps into compute and communication "
        "phases for the facility's swings (docs/background/facility.md); without it its GPUs "
        "draw its mean power while it holds them",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_from_catalog(cls, value: Any) -> Any:
        return from_catalog("model", value)

    @model_validator(mode="after")
    def _batch(self) -> TrainingJob:
        if (self.global_batch_tokens is None) == (self.global_batch_seqs is None):
            raise ValueError("give exactly one of global_batch_tokens and global_batch_seqs")
        par = self.parallel
        if self.model.heads % par.tp:
            raise ValueError(
                f"parallel.tp={par.tp} must divide the model's heads={self.model.heads}"
            )
        if par.pp * par.interleave > self.model.layers:
            raise ValueError(
                f"parallel.pp x interleave = {par.pp * par.interleave} exceeds the model's "
                f"{self.model.layers} layers"
            )
        if self.seq_len % par.cp:
            raise ValueError(f"seq_len={self.seq_len} must be a multiple of parallel.cp={par.cp}")
        if self.elastic is not None and self.elastic.min_dp > par.dp:
            raise ValueError(
                f"elastic.min_dp={self.elastic.min_dp} exceeds parallel.dp={par.dp}; "
                f"allowed: 1..{par.dp}"
            )
        return self

    @property
    def batch_seqs(self) -> int:
        """Sequences per step: global_batch_seqs, or global_batch_tokens / seq_len rounded to
        the nearest whole number of microbatches on every data-parallel rank (at least one)."""
        if self.global_batch_seqs is not None:
            return self.global_batch_seqs
        unit = self.parallel.dp * self.parallel.microbatch_seqs
        assert self.global_batch_tokens is not None
        return unit * max(1, round(self.global_batch_tokens / self.seq_len / unit))

    @property
    def steps(self) -> int:
        """Optimizer steps to train `tokens` tokens (the last step may be partial: ceil)."""
        return math.ceil(self.tokens / (self.batch_seqs * self.seq_len))


class Scenario(Spec):
    """A whole scenario file."""

    name: str = Field("scenario", min_length=1)
    seed: int = Field(0, ge=0)
    duration: PositiveDurationS
    fidelity: Fidelity = Field(
        "fast",
        description="step: one event per training step or serving iteration (the reference); "
        "fast: the same timestamps, skipping between events that change something; fluid: "
        "services as aggregate flows (training jobs, which have no fluid tier, run fast)",
    )
    cluster: Cluster
    power: Power = Power()
    cost: Cost = Cost()
    scheduler: Scheduler = Scheduler()
    training: list[TrainingJob] = Field(default_factory=list)
    inference: list[InferenceService] = Field(
        default_factory=list,
        description="inference services, in any order: a model, its traffic, replicas and "
        "autoscaler",
    )
    failures: Failures | None = None
    monitoring: Monitoring | None = Field(
        None, description="straggler detection, validation checks and the scrape interval"
    )
    facility: Facility | None = Field(
        None, description="the site: weather-driven PUE, grid limits, a battery, carbon"
    )
    telemetry: Telemetry | None = Field(
        None, description="dashboard metrics written with the results (OpenMetrics, Parquet)"
    )
    workload_trace: WorkloadTrace | None = Field(
        None, description="training jobs replayed from a public cluster trace"
    )
    #: grid_caps(), once worked out (False: not yet)
    _grid_caps: list[float | None] | bool | None = PrivateAttr(default=False)

    @property
    def training_tier(self) -> Literal["step", "fast"]:
        """The tier training jobs run in, resolved here once: `fluid` is a serving tier, so
        under it training runs `fast` (exact, the same numbers as `step`)."""
        return "step" if self.fidelity == "step" else "fast"

    def service_tier(self, svc: InferenceService) -> Fidelity:
        """The tier a service runs in, resolved here once: its own `fidelity`, else the
        scenario's."""
        return svc.fidelity or self.fidelity

    def pool(self, name: str | None) -> NodePool:
        if name is None:
            return self.cluster.node_pools[0]
        for p in self.cluster.node_pools:
            if p.name == name:
                return p
        raise KeyError(name)

    @model_validator(mode="after")
    def _replay_trace(self) -> Scenario:
        """Add the trace's jobs to `training` (see WorkloadTrace)."""
        wt = self.workload_trace
        if wt is None or any(j.name.startswith(TRACE_PREFIX) for j in self.training):
            return self
        import numpy as np

        from .job_traces import read_job_trace

        trace = read_job_trace(wt.format, wt.resolved_path())
        if not len(trace.job_id):
            return self
        pool = self.cluster.node_pools[0]
        gpn = pool.gpus_per_node
        scale = 1.0
        if wt.scale_to_gpus is not None and trace.cluster_gpus:
            scale = trace.cluster_gpus / wt.scale_to_gpus
        submit = np.asarray(trace.submit_s, dtype=np.float64) * scale
        span = float(submit[-1]) + (float(submit[-1]) / max(len(submit) - 1, 1) or 3600.0)
        if wt.repeat and len(submit) * self.duration / span > MAX_TRACE_JOBS:
            raise located(
                "workload_trace.repeat",
                f"tiling {len(submit)} jobs over {span:.0f} s to the horizon gives "
                f"{len(submit) * self.duration / span:,.0f} jobs, over {MAX_TRACE_JOBS:,}; "
                "use a longer trace or repeat: false",
            )
        usable = pool.nodes - self.cluster.spare_nodes
        seq, batch_seqs = 4096, 256
        default = wt.queue_map.get("default")
        jobs: list[TrainingJob] = []
        tile = 0
        while True:
            offset = tile * span
            for i in range(len(submit)):
                t = float(submit[i]) + offset
                if t >= self.duration:
                    break
                nodes = min(max(1, math.ceil(int(trace.gpus[i]) / gpn)), usable)
                spec = TrainingJob(
                    name=f"{TRACE_PREFIX}{trace.job_id[i]}" + (f"-{tile}" if tile else ""),
                    model=wt.model,  # type: ignore[arg-type]
                    submit_at=t,
                    tokens=1,
                    seq_len=seq,
                    global_batch_seqs=batch_seqs * nodes,
                    parallel=Parallel(tp=gpn, dp=nodes),
                    queue=wt.queue_map.get(str(trace.group[i]), default),
                )
                t_step = float(job_estimate(spec, pool).step_time_s)
                steps = max(1, round(float(trace.duration_s[i]) / t_step))
                jobs.append(spec.model_copy(update={"tokens": steps * seq * batch_seqs * nodes}))
            tile += 1
            if not wt.repeat or offset + span >= self.duration:
                break
        # specs are frozen; this is still their validation, before anyone has seen them
        object.__setattr__(self, "training", [*self.training, *jobs])
        return self

    @model_validator(mode="after")
    def _queues_known(self) -> Scenario:
        queues = [q.name for q in self.scheduler.queues]
        if len(set(queues)) != len(queues):
            raise located("scheduler.queues", f"queue names must be unique, got {queues}")
        named: list[tuple[str, int, str | None]] = [
            ("training", i, j.queue) for i, j in enumerate(self.training)
        ] + [("inference", i, v.queue) for i, v in enumerate(self.inference)]
        for kind, i, queue in named:
            if queue is not None and queue not in queues:
                allowed = queues or "none (scheduler.queues is empty)"
                raise located(f"{kind}.{i}.queue", f"unknown queue {queue!r}; allowed: {allowed}")
        return self

    def queue_of(self, item: TrainingJob | InferenceService) -> str | None:
        """The queue a job or service is charged to: its own, else the first; None without
        queues."""
        if not self.scheduler.queues:
            return None
        return item.queue or self.scheduler.queues[0].name

    @model_validator(mode="after")
    def _jobs_fit(self) -> Scenario:

        names = [j.name for j in self.training]
        if len(set(names)) != len(names):
            raise ValueError(f"training job names must be unique, got {names}")
        pools = [p.name for p in self.cluster.node_pools]
        for i, job in enumerate(self.training):
            where = f"training.{i}"
            if job.pool is not None and job.pool not in pools:
                raise located(f"{where}.pool", f"unknown pool {job.pool!r}; allowed: {pools}")
            pool = self.pool(job.pool)
            spares = self.cluster.spare_nodes if pool is self.cluster.node_pools[0] else 0
            par = job.parallel
            gpn = pool.gpus_per_node
            if par.gpus % gpn:
                raise located(
                    f"{where}.parallel",
                    f"tp x pp x dp x cp = {par.gpus} GPUs must be a whole number of "
                    f"{gpn}-GPU nodes (jobs are placed on whole nodes)",
                )
            usable = (pool.nodes - spares) * gpn
            if par.gpus > usable:
                raise located(
                    f"{where}.parallel",
                    f"tp x pp x dp x cp = {par.gpus} GPUs exceeds pool {pool.name!r}: "
                    f"{pool.nodes} nodes x {gpn} GPUs"
                    + (f" less {spares} spare nodes" if spares else "")
                    + f" = {usable} schedulable GPUs",
                )
            domain = max(gpn, pool.gpu.nvlink_domain)
            if gpn % par.tp and domain % par.tp:
                raise located(
                    f"{where}.parallel.tp",
                    f"tp={par.tp} must divide the {gpn} GPUs of a node"
                    + (f" or the NVLink domain of {domain}" if domain > gpn else ""),
                )
            if job.precision == "fp8" and pool.gpu.fp8_tflops is None:
                raise located(
                    f"{where}.precision", f"{pool.gpu.name} has no FP8 tensor cores; use bf16"
                )
            if job.data.source == "storage" and self.cluster.storage is None:
                raise located(
                    f"{where}.data.source",
                    "'storage' needs a cluster.storage section (read_gb_s, write_gb_s); "
                    "allowed otherwise: 'nvme' (with the pool's nvme) or 'synthetic'",
                )
            if job.data.source == "nvme" and pool.nvme is None:
                raise located(
                    f"{where}.data.source",
                    f"'nvme' needs pool {pool.name!r} to describe its nvme; allowed otherwise: "
                    "'storage' or 'synthetic'",
                )
            ck = job.checkpoint
            if (
                ck.interval != "none"
                and self.cluster.storage is None
                and (ck.write_s is None or ck.reload_s is None)
            ):
                raise located(
                    f"{where}.checkpoint",
                    "checkpoints are written to cluster.storage, which this scenario does not "
                    "describe; add a storage section, or give measured write_s and reload_s",
                )
            check_job_feasible(job, pool, where)
        return self

    def rack_cap_w(self, pool: NodePool) -> float | None:
        """The per-GPU power that keeps a rack of `pool`'s nodes within its budget and cooling at
        full load (None: it fits at TDP, or no racks): (limit / nodes per rack - node
        overhead) / GPUs per node."""
        r = self.cluster.racks
        if r is None:
            return None
        per_gpu = (r.limit_w() / r.nodes_per_rack - self.power.node_overhead_w) / pool.gpus_per_node
        return None if per_gpu >= pool.gpu.tdp_w else per_gpu

    def local_cap_w(self, pool: NodePool) -> float | None:
        """The cap on `pool`'s GPUs before the grid's: power.gpu_power_cap_w or the racks'."""
        caps = [c for c in (self.power.gpu_power_cap_w, self.rack_cap_w(pool)) if c is not None]
        return min(caps) if caps else None

    def gpu_cap_w(self, pool: NodePool) -> float | None:
        """The power cap on `pool`'s GPUs: power.gpu_power_cap_w, the racks' or the grid's, the
        lowest."""
        caps = [c for c in (self.local_cap_w(pool), self.grid_cap_w(pool)) if c is not None]
        return min(caps) if caps else None

    def grid_cap_w(self, pool: NodePool) -> float | None:
        """The cap that holds the site under facility.grid_limit_mw (None: it fits uncapped)."""
        caps = self.grid_caps()
        return None if caps is None else caps[self.cluster.node_pools.index(pool)]

    def site_full_load_w(self, caps: list[float | None] | None = None) -> float:
        """IT watts with every node drawing its overhead and every GPU its cap (TDP uncapped)."""
        caps = caps or [self.local_cap_w(p) for p in self.cluster.node_pools]
        return sum(
            p.nodes * (p.gpus_per_node * (p.gpu.tdp_w if c is None else c))
            + p.nodes * self.power.node_overhead_w
            for p, c in zip(self.cluster.node_pools, caps, strict=True)
        )

    def grid_pue_max(self) -> float:
        """The PUE of the run's hottest hour (weather.pue_at over its hours)."""
        import numpy as np

        from ..weather import hour_edges, pue_at  # the weather module reads the catalog

        t = hour_edges(self.duration) if self.duration > 0 else np.zeros(1)
        return float(np.max(pue_at(self.facility, self.power.pue, t)))

    def grid_caps(self) -> list[float | None] | None:
        """Per pool, the GPU cap that keeps the site within facility.grid_limit_mw at full load
        in the run's hottest hour, or None where nothing needs capping.

        The grid sees the facility: PUE x (GPUs at their caps + node overheads). When that is
        over the limit at full load, every GPU is held at a share x of its TDP (no lower than
        idle power, nor above a lower local cap), with x solved so that the site draws the limit:
        the static guarantee `the facility never draws above it` (a battery's help is not
        counted on). The caps act as power.gpu_power_cap_w does (the clock factor of
        kernels.power.cap_slowdown on compute-bound work); the facility summary reports what
        they cost (facility.grid_limit_summary)."""
        if self._grid_caps is not False:
            return self._grid_caps  # type: ignore[return-value]
        result: list[float | None] | None = None
        f = self.facility
        if f is not None and f.grid_limit_mw is not None:
            from ..kernels.power import idle_power_w  # kernels are pure; imported lazily

            pools = self.cluster.node_pools
            limit_it = f.grid_limit_mw * 1e6 / self.grid_pue_max()
            local = [self.local_cap_w(p) for p in pools]
            tops = [p.gpu.tdp_w if c is None else c for p, c in zip(pools, local, strict=True)]
            idles = [float(idle_power_w(p.gpu.tdp_w, p.gpu.idle_w)) for p in pools]

            def caps_at(x: float) -> list[float | None]:
                return [
                    min(top, max(idle, x * p.gpu.tdp_w))
                    for p, top, idle in zip(pools, tops, idles, strict=True)
                ]

            if self.site_full_load_w() > limit_it:
                lo, hi = 0.0, 1.0  # the site's full-load draw rises with x: bisect for the limit
                for _ in range(60):
                    mid = 0.5 * (lo + hi)
                    lo, hi = (
                        (mid, hi) if self.site_full_load_w(caps_at(mid)) <= limit_it else (lo, mid)
                    )
                result = [
                    None if c is not None and c >= top else c
                    for c, top in zip(caps_at(lo), tops, strict=True)
                ]
        self._grid_caps = result
        return result

    @model_validator(mode="after")
    def _grid_holds_idle_site(self) -> Scenario:
        from ..kernels.power import idle_power_w  # kernels are pure; imported lazily

        f = self.facility
        if f is None or f.grid_limit_mw is None:
            return self
        pools = self.cluster.node_pools
        idle = self.site_full_load_w(
            [float(idle_power_w(p.gpu.tdp_w, p.gpu.idle_w)) for p in pools]
        )
        pue = self.grid_pue_max()
        if idle * pue > f.grid_limit_mw * 1e6:
            raise located(
                "facility.grid_limit_mw",
                f"{f.grid_limit_mw:g} MW cannot hold the site even idle: its nodes draw "
                f"{idle / 1e6:.2f} MW with every GPU at idle power, {idle * pue / 1e6:.2f} MW at "
                f"the hottest hour's PUE {pue:.3f}; allowed: a limit above that, or fewer nodes",
            )
        return self

    @model_validator(mode="after")
    def _racks_hold_their_nodes(self) -> Scenario:
        from ..kernels.power import idle_power_w  # kernels are pure; imported lazily

        if self.cluster.racks is None:
            return self
        for pool in self.cluster.node_pools:
            cap = self.rack_cap_w(pool)
            idle = float(idle_power_w(pool.gpu.tdp_w, pool.gpu.idle_w))
            if cap is not None and cap < idle:
                r = self.cluster.racks
                raise located(
                    "cluster.racks.power_budget_kw",
                    f"a rack of {r.nodes_per_rack} {pool.name!r} nodes may draw "
                    f"{r.limit_w() / 1e3:g} kW (budget and cooling), less than its nodes draw "
                    f"idle ({r.nodes_per_rack} x ({pool.gpus_per_node} x {idle:.0f} W + "
                    f"{self.power.node_overhead_w:g} W)); give more kW or fewer nodes per rack",
                )
        return self

    @model_validator(mode="after")
    def _cap_in_range(self) -> Scenario:
        from ..kernels.power import idle_power_w  # kernels are pure; imported lazily

        cap = self.power.gpu_power_cap_w
        if cap is None:
            return self
        for pool in self.cluster.node_pools:
            idle = float(idle_power_w(pool.gpu.tdp_w, pool.gpu.idle_w))
            if not idle <= cap <= pool.gpu.tdp_w:
                raise located(
                    "power.gpu_power_cap_w",
                    f"{cap:g} W is outside {pool.gpu.name}'s range in pool {pool.name!r}: "
                    f"allowed {idle:g} W (idle) to {pool.gpu.tdp_w:g} W (TDP)",
                )
        return self

    @model_validator(mode="after")
    def _services_fit(self) -> Scenario:
        jobs = {j.name for j in self.training}
        pools = [p.name for p in self.cluster.node_pools]
        first: dict[str, int] = {}
        for i, svc in enumerate(self.inference):
            where = f"inference.{i}"
            if first.setdefault(svc.name, i) != i:
                raise located(
                    f"{where}.name",
                    f"{svc.name!r} is already the name of inference.{first[svc.name]}; service "
                    "names must be unique",
                )
            if svc.name in jobs:
                raise located(
                    f"{where}.name",
                    f"{svc.name!r} is also a training job's name; services and jobs need "
                    "distinct names",
                )
            if svc.pool is not None and svc.pool not in pools:
                raise located(f"{where}.pool", f"unknown pool {svc.pool!r}; allowed: {pools}")
            pool = self.pool(svc.pool)
            if svc.disaggregation is None:
                needed = _check_layout(svc, pool, where)
            else:  # each side on its own, their nodes together
                needed = sum(
                    _check_layout(svc.side(side), pool, f"{where}.disaggregation.{side}")
                    for side in ("prefill", "decode")
                )
            spares = self.cluster.spare_nodes if pool is self.cluster.node_pools[0] else 0
            usable = pool.nodes - spares
            if needed > usable:
                if svc.disaggregation is None:
                    field = f"{where}.replicas"
                    what = f"{svc.initial_replicas} replicas of " + (
                        f"tp={svc.tp}"
                        if svc.dp_attention == 1
                        else f"{svc.gpus_per_replica} GPUs (tp x dp_attention)"
                    )
                else:
                    field, what = f"{where}.disaggregation", "the prefill and decode replicas"
                raise located(
                    field,
                    f"{what} need {needed} nodes of {pool.gpus_per_node} GPUs, more than pool "
                    f"{pool.name!r}'s {pool.nodes} nodes"
                    + (f" less {spares} spare nodes = {usable}" if spares else ""),
                )
            cs = svc.cold_start
            if cs.weights_from == "storage" and self.cluster.storage is None:
                raise located(
                    f"{where}.cold_start.weights_from",
                    "'storage' needs a cluster.storage section (read_gb_s, write_gb_s); allowed "
                    "otherwise: 'nvme' (with the pool's nvme), or a measured weights_s",
                )
            if cs.weights_from == "nvme" and pool.nvme is None:
                raise located(
                    f"{where}.cold_start.weights_from",
                    f"'nvme' needs pool {pool.name!r} to describe its nvme; allowed otherwise: "
                    "'storage' (with cluster.storage), or a measured weights_s",
                )
            if (
                cs.weights_s is None
                and cs.source(self.cluster.storage is not None, pool.nvme is not None) is None
            ):
                raise located(
                    f"{where}.cold_start",
                    "a new replica reads its weights from cluster.storage or the pool's nvme, and "
                    f"this scenario has neither; add a storage section, an nvme to pool "
                    f"{pool.name!r}, or give a measured cold_start.weights_s",
                )
            if isinstance(svc.traffic, TraceTraffic):
                if not Path(svc.traffic.path).is_file():
                    raise located(
                        f"{where}.traffic.path",
                        f"no such trace file: {svc.traffic.path} (relative paths start at the "
                        f"working directory, {Path.cwd()})",
                    )
                try:  # read now: the engine opens no file (spec.traces)
                    svc.traffic.requests()
                except ScenarioError as exc:
                    raise located(
                        f"{where}.traffic.path", str(exc).removeprefix(f"{exc.path}: ")
                    ) from None
        return self


def _check_layout(svc: InferenceService, pool: NodePool, where: str) -> int:
    """A service's replica layout on its pool (GPUs per replica against the node, the FP4 KV
    cache and NVLS against the GPU, the weights against its memory): the nodes its starting
    replicas need."""
    gpn = pool.gpus_per_node
    n_rep = svc.gpus_per_replica
    if gpn % n_rep and n_rep % gpn:
        divisors = [d for d in range(1, gpn + 1) if gpn % d == 0]
        field = "tp" if svc.dp_attention == 1 else "dp_attention"
        what = f"tp={svc.tp}" if svc.dp_attention == 1 else f"tp x dp_attention={n_rep}"
        raise located(
            f"{where}.{field}",
            f"{what} neither divides nor is a multiple of the {gpn} GPUs of a "
            f"node in pool {pool.name!r}; allowed: {', '.join(map(str, divisors))} "
            f"(replicas share a node) or a multiple of {gpn} (a replica spans whole "
            "nodes)",
        )
    if svc.kv_cache_dtype == "fp4" and getattr(pool.gpu, "fp4_tflops", None) is None:
        raise located(
            f"{where}.kv_cache_dtype",
            f"fp4 (NVFP4) KV cache needs FP4 tensor cores, which {pool.gpu.name} lacks "
            "(no fp4_tflops): attention would dequantise every cached element on each "
            "read, and no serving engine offers it there; allowed: bf16, fp8",
        )
    if svc.allreduce == "nvls" and not getattr(pool.gpu, "nvls", False):
        raise located(
            f"{where}.allreduce",
            f"nvls needs an NVSwitch that reduces in the switch (NVLink SHARP), which "
            f"{pool.gpu.name} lacks (nvls: false); allowed: ring, auto",
        )
    _check_weights_fit(svc, pool, where)
    return svc.nodes_for(svc.initial_replicas, gpn)


def _check_weights_fit(svc: InferenceService, pool: NodePool, where: str) -> None:
    """Refuse a service whose replica leaves no room for one KV-cache block (vLLM's rule, in
    kernels.inference.kv_capacity_tokens)."""
    from ..kernels.inference import (  # kernels are pure; imported lazily
        BLOCK_TOKENS,
        DEVICE_BYTES_PER_GB,
        activation_reserve_bytes,
        kv_capacity_tokens,
        replica_weight_bytes,
    )

    m = svc.model.kernel_args()
    b = svc.batching
    hbm = pool.gpu.hbm_gb * DEVICE_BYTES_PER_GB
    capacity = float(
        kv_capacity_tokens(
            m,
            hbm,
            tp=svc.tp,
            precision=svc.precision,
            kv_precision=svc.kv_precision,
            gpu_memory_utilization=svc.gpu_memory_utilization,
            max_batched_tokens=b.max_batched_tokens,
            max_num_seqs=b.max_num_seqs,
            dp_attention=svc.dp_attention,
            drafter_bytes=svc.drafter_bytes(),
            ep=svc.ep,
        )
    )
    if capacity >= BLOCK_TOKENS:
        return
    n = svc.gpus_per_replica
    weights_gb = (
        float(replica_weight_bytes(m, svc.precision, svc.dp_attention, svc.ep))
        + svc.drafter_bytes()[0]
    ) / 1e9
    usable_gb = hbm * svc.gpu_memory_utilization * n / 1e9
    reserve_gb = (
        n
        * float(
            activation_reserve_bytes(
                m,
                tp=svc.tp,
                max_batched_tokens=b.max_batched_tokens / svc.dp_attention,
                max_num_seqs=b.max_num_seqs,
            )
        )
        / 1e9
    )
    gpus = f"{n} GPU{'s' if n > 1 else ''}"
    lighter = {
        "bf16": "fp8/int4/fp4 weights, ",
        "fp8": "int4/fp4 weights, ",
        "int4": "",
        "fp4": "",
    }[svc.precision]
    raise located(
        where,
        f"{svc.model.name} at precision {svc.precision} needs {weights_gb:.1f} GB of weights"
        f"{' (its speculative drafter included)' if svc.speculative is not None else ''}; "
        f"{gpus} of {pool.gpu.hbm_gb:g} GB ({hbm / 1e9:.1f} x 10^9 bytes visible) x "
        f"gpu_memory_utilization "
        f"{svc.gpu_memory_utilization:g} give only {usable_gb:.1f} GB, less {reserve_gb:.1f} GB "
        f"for activations and workspaces, which leaves no room for one {BLOCK_TOKENS}-token "
        f"KV-cache block; allowed: a larger tp, {lighter}or a GPU with more memory",
    )


def job_estimate(
    job: TrainingJob,
    pool: NodePool,
    *,
    net_latency_us: float = 5.0,
    data_gb_s: float = math.inf,
    dp: int | None = None,
    cross_leaf_slowdown: float | None = None,
    compute_slowdown: float = 1.0,
) -> TrainingEstimate:
    """The estimate for one scenario job on its pool. `cross_leaf_slowdown` is what the spine
    costs its cross-node rings (the engine's, from the flows sharing the job's leaves; none
    when not given). `dp` overrides the data-parallel width (an elastic job running narrower):
    the global batch stays, and the busiest rank's whole microbatches, ceil(B / (dp b)), pace
    the step. `compute_slowdown` is the pool's power-cap clock factor (estimate.gpu_fields).
    It lives with the spec (not in `estimate`, which knows GPUs and models but no scenario) so
    that validation can ask whether a job fits without a cycle of imports."""
    par = job.parallel
    dp = par.dp if dp is None else dp
    unit = dp * par.microbatch_seqs
    paced_batch = math.ceil(job.batch_seqs / unit) * unit
    from ..estimate import estimate_training  # kernels are pure; imported lazily

    return estimate_training(
        job.model,
        pool.gpu,
        tp=par.tp,
        pp=par.pp,
        dp=dp,
        cp=par.cp,
        seq_len=job.seq_len,
        global_batch_seqs=paced_batch,
        microbatch_seqs=par.microbatch_seqs,
        recompute=job.recompute,
        zero_stage=job.zero_stage,
        gpus_per_node=pool.gpus_per_node,
        nic_gbit_s=pool.nic_gbit_s,
        interleave=par.interleave,
        precision=job.precision,
        net_latency_us=net_latency_us,
        data_bytes_per_token=job.data.bytes_per_token if job.data.source != "synthetic" else 0.0,
        data_gb_s=data_gb_s,
        cross_leaf_slowdown=cross_leaf_slowdown,
        compute_slowdown=compute_slowdown,
    )


def check_job_feasible(job: TrainingJob, pool: NodePool, where: str) -> None:
    """Raise a located ValueError when the job does not fit in its GPUs' memory."""
    par = job.parallel
    if job.batch_seqs % (par.dp * par.microbatch_seqs):
        raise ValueError(
            f"[{where}.global_batch_seqs] {job.batch_seqs} sequences must be a multiple of "
            f"dp x microbatch_seqs = {par.dp * par.microbatch_seqs}"
        )
    # An interleaved schedule takes any number of microbatches: Megatron-Core's schedule table
    # runs them in groups of pp per virtual stage and lays a last, partial group out chunk by
    # chunk (microbatch_group_size_per_vp_stage, model_parallel_config.py; older Megatron-LM
    # asked for a multiple of pp). Fewer than pp cost a larger bubble (kernels.training).
    est = job_estimate(job, pool)
    if not est.fits:
        raise ValueError(
            f"[{where}] {job.model.name} does not fit in memory: {est.memory_gb_per_gpu:.1f} GB "
            f"per GPU with recompute={est.recompute} and zero_stage={job.zero_stage} > "
            f"{pool.gpu.hbm_gb:g} GB of {pool.gpu.name} HBM; allowed: recompute full, a larger "
            "tp or pp, a higher zero_stage, or a smaller microbatch_seqs"
        )
