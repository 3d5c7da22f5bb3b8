"""The schema of a run's summary (`Results.summary`, `summary.json`) as TypedDicts.

The summary stays a plain nested dict (so `summary.json` is byte for byte what it was); these
types only name its keys, for the type checker and for readers such as `report.py`. Definitions
of every figure are in docs/reference/metrics.md; the comments give each key's unit.

- `Summary` is the whole summary: `CoreSummary` (what the engine and the runner write) plus
  `EnergySummary` (what `energy.energy_and_cost` adds at the top level).
- `JobSummary` (one training job, `summary["training"][name]`) is `JobCore`
  (`TrainingRun.summary`) plus `JobEnergy`; `ServiceSummary` (one inference service,
  `summary["inference"][name]`) is `ServiceCore` (`Fleet.summary` over its serving model)
  plus `ServiceEnergy`. `EnergyAndCost` is what `energy_and_cost` returns before the runner
  merges it.
- A `None` value is JSON's null: a figure with no sample or not defined for this run.
- `check_summary(summary)` validates a summary against `Summary` at run time (strict types, no
  unknown key, no NaN or infinity) and raises `SummaryError` naming each bad key's path.
"""

import functools
from typing import TYPE_CHECKING, Any, Literal, NotRequired

from pydantic import ConfigDict, with_config

# pydantic reads TypedDicts only from typing_extensions before Python 3.12.
from typing_extensions import TypedDict

if TYPE_CHECKING:
    from pydantic import TypeAdapter

__all__ = [
    "CORE_KEYS",
    "ENERGY_KEYS",
    "LEDGER_BUCKETS",
    "CloudCost",
    "CoreSummary",
    "CostUsd",
    "EnergyAndCost",
    "EnergyBy",
    "EnergySummary",
    "EstateSummary",
    "Failures",
    "Fidelity",
    "JobCore",
    "JobEnergy",
    "JobState",
    "JobSummary",
    "LatencyStats",
    "Ledger",
    "PrefixCacheSummary",
    "PrivateCost",
    "Recompute",
    "ServiceCore",
    "ServiceEnergy",
    "ServiceGpuHours",
    "ServiceSummary",
    "SloMet",
    "Summary",
    "SummaryError",
    "UsdPerBtok",
    "UsdPerMtok",
    "Utilisation",
    "build_checker",
    "check_estate_summary",
    "check_summary",
]

#: Validation is strict (an int is a float, nothing else converts), refuses keys the schema does
#: not name, and refuses NaN and infinity as `summary_json` does.
_STRICT = with_config(ConfigDict(strict=True, extra="forbid", allow_inf_nan=False))

#: A fidelity tier (the scenario's, or the one a service ran at).
Fidelity = Literal["step", "fast", "fluid"]
#: A training job's state at the horizon.
#: "burst": at its own site of an estate, a job that left its queue for a cloud site
JobState = Literal["not_submitted", "queued", "running", "finished", "failed", "burst"]
#: The activation recompute mode a job ran with (what `auto` resolved to).
Recompute = Literal["none", "selective", "full"]


# --- the cluster -------------------------------------------------------------------------------


@_STRICT
class Ledger(TypedDict):
    """`ledger_gpu_h`: GPU-hours per bucket; every GPU-second lands in one, so they sum to
    gpus x duration_s / 3600."""

    training: float  # GPU-h, productive steps
    data_stall: float  # GPU-h, waiting on the data loader
    checkpoint: float  # GPU-h, stalled for a checkpoint
    lost_work: float  # GPU-h, training since the last checkpoint, lost to a failure
    recovery: float  # GPU-h, detecting, restarting, reloading
    queued: float  # GPU-h, held by a job waiting for the rest of its gang
    inference_busy: float  # GPU-h, replicas iterating
    inference_idle: float  # GPU-h, held by a service, neither iterating nor starting
    cold_start: float  # GPU-h, replicas from placement until ready
    unallocated: float  # GPU-h, held by no job or service
    down: float  # GPU-h, failed nodes in repair


@_STRICT
class Utilisation(TypedDict):
    """`utilisation`: shares of all GPU-time, gpus x duration_s."""

    allocated: float  # fraction 0..1, held by jobs and services
    training: float  # fraction 0..1, ledger training
    serving: float  # fraction 0..1, ledger inference_busy


@_STRICT
class Failures(TypedDict):
    """`failures`: node failures drawn over the run."""

    count: int  # failures, every pool
    interrupting: int  # failures that struck a node held by a job
    by_component: dict[str, int]  # failures per component (gpu, hbm, nic, ...), those seen


# --- a training job ----------------------------------------------------------------------------


@_STRICT
class JobCore(TypedDict):
    """A training job as the engine reports it (`TrainingRun.summary`)."""

    state: JobState
    tokens_trained: float  # tokens, whole steps done and kept
    tokens_target: float  # tokens, the job's `tokens`
    steps_done: int  # steps, whole, kept
    steps_total: int  # steps
    step_time_s: float | None  # s per step, mean over computing time; None until it computed
    mfu: float | None  # fraction 0..1 of dense peak; None when step_time_s is
    hardware_tflops_per_gpu: float | None  # TFLOP/s per GPU, recompute included
    recompute: Recompute | None  # None if it never started
    memory_gb_per_gpu: float | None  # GB (1e9 bytes) per GPU; None if it never started
    submitted_at_s: float | None  # s, simulated time it joined the queue
    started_at_s: float | None  # s, simulated time it first got its nodes
    finished_at_s: float | None  # s, simulated time it finished or failed
    queued_s: float | None  # s, started_at_s - submitted_at_s
    running_s: float  # s, computing time (work later lost included)
    ettr: float | None  # fraction 0..1, productive time / time since first start
    interruptions: int  # failures that struck its nodes
    restarts: int  # restarts from its checkpoint
    preemptions: int  # times the scheduler preempted it
    pauses: NotRequired[int]  # demand-response pauses (facility.demand_response)
    gang_availability: NotRequired[float]  # share of the time its gang can form, when below
    # one half (reliability_notes)
    power_capped_s: NotRequired[float]  # s of its computing time under a power cap (racks,
    # the grid, power.gpu_power_cap_w or a demand-response event); absent when none
    lends: int  # times it lent nodes to a service
    checkpoints: int  # checkpoints completed
    checkpoint_interval_s: float | None  # s of compute between checkpoints; None: none
    lost_work_h: float  # h at the job's full width
    recovery_h: float  # h at the job's full width
    gpus: int  # GPUs at full width
    dp: int  # data-parallel width at the end
    nodes: int  # nodes at full width
    leaves: int | None  # leaf switches its nodes spanned; None if it never started
    fabric_slowdown_max: float  # factor >= 1, the most the spine slowed its rings
    global_batch_seqs: int  # sequences per step


@_STRICT
class JobEnergy(TypedDict):
    """What `energy_and_cost` adds to a training job."""

    energy_mwh: float  # MWh, facility energy of the job's GPUs
    tokens_per_joule: float | None  # tokens / J; None without energy
    usd_per_btok_private: float | None  # USD per 1e9 tokens, owned; None with no tokens
    usd_per_btok_cloud: float | None  # USD per 1e9 tokens, rented on demand


@_STRICT
class JobSummary(JobCore, JobEnergy):
    """`summary["training"][name]`: one training job."""


# --- an inference service ----------------------------------------------------------------------


@_STRICT
class LatencyStats(TypedDict):
    """A latency over the completed requests (TTFT, TPOT, E2E, queue wait); each None when
    there is no sample."""

    mean: float | None  # s
    p50: float | None  # s
    p90: float | None  # s
    p99: float | None  # s


@_STRICT
class SloMet(TypedDict):
    """`slo_met`: the SLO percentile against each target the service's `slo` gives; a key is
    present only when its target is (empty without an `slo`)."""

    ttft: NotRequired[bool]  # P_p(TTFT) <= slo.ttft_s
    tpot: NotRequired[bool]  # P_p(TPOT) <= slo.tpot_s


@_STRICT
class ServiceGpuHours(TypedDict):
    """`gpu_h`: the service's GPU-hours."""

    held: float  # GPU-h, nodes the service holds, whole nodes
    busy: float  # GPU-h, its share of ledger inference_busy
    cold_start: float  # GPU-h, its share of ledger cold_start


@_STRICT
class PrefixCacheSummary(TypedDict):
    """A service with system prompts: its replicas' prefix caches."""

    enabled: bool  # prefix caching on (prefix_cache.enabled and a prefix of a block or more)
    hit_rate_tokens: float  # fraction 0..1 of the admitted requests' prompt tokens cached
    prefill_tokens_saved: int  # tokens, prompt tokens not prefilled thanks to the cache
    requests_hit: int  # requests whose first admission found their prefix cached
    requests_admitted: int  # requests admitted at least once
    evictions: int  # prefixes evicted from a replica's cache to free KV blocks


@_STRICT
class ConversationSummary(TypedDict):
    """A service with conversations: its turns and how often the cache kept their context."""

    started: int  # conversations whose first turn arrived
    turns: int  # requests that arrived, first and later turns
    turns_per_conversation: float  # turns / started
    later_turns: int  # requests that arrived as a second or later turn
    later_turn_hit_rate: float  # fraction 0..1 of admitted later turns that found their
    # conversation's context cached beyond the system prompt
    later_turn_prompt_tokens_mean: float  # tokens, a later turn's prompt with its history


@_STRICT
class SpeculativeSummary(TypedDict):
    """A service with speculative decoding: what it does per replica, from the kernels."""

    method: str  # mtp or draft
    draft_tokens: int  # tokens drafted per sequence and verify step
    tokens_per_step: float  # tokens kept per verify step, on average (accepted + 1)
    accepted_tokens_per_step: float  # drafted tokens accepted per verify step, on average
    acceptance_rate: float  # fraction 0..1 of drafted tokens accepted
    verify_step_s: float  # s, one verify step and its drafting at batch 1
    tpot_gain_batch_1: float  # decode time per token without / with, one sequence
    tpot_gain_full_batch: float  # the same at max_num_seqs sequences (< 1: a throughput cost)
    draft_weight_gb: float  # GB (1e9 bytes), the drafter's weights per replica


@_STRICT
class PoolSummary(TypedDict):
    """One side of a disaggregated service: its own fleet."""

    gpus_per_replica: int  # tp x dp_attention of this side
    capacity_rps: float  # requests/s a replica carries within the SLO (planner); 0 without one
    replicas_mean: float  # as the service's
    replicas_max: int
    kv_capacity_tokens: float  # tokens of KV cache per replica of this side
    gpu_h: ServiceGpuHours
    speculative: NotRequired[SpeculativeSummary]


@_STRICT
class KVFabricSummary(TypedDict):
    """KV transfers on an oversubscribed fabric (engine/fabric.py): their share of the leaves'
    up-links beside the training jobs' rings."""

    cross_leaf: float  # fraction 0..1 of the transfers between replicas on different leaves
    slowdown_mean: float  # x, a transfer's time over its link's bandwidth alone (1 = unslowed)
    slowdown_max: float  # x


@_STRICT
class KVTransferSummary(TypedDict):
    """A disaggregated service's KV-cache transfers from prefill to decode replicas."""

    link: str  # fabric or nvlink
    transfers: int  # transfers ended by the end of the run
    bytes_gb: float  # GB (1e9 bytes) they moved
    mean_gb: float  # GB per transfer
    time_s: LatencyStats  # s, start to end of each (bytes / bandwidth + latency)
    wait_s: LatencyStats  # s, from the first token to the transfer's start (decode seat, link)
    link_gb_s: float  # GB/s, one prefill replica's link
    link_utilization: float  # fraction 0..1 of the prefill links' time spent moving bytes
    fabric: NotRequired[KVFabricSummary]  # over a fabric with oversubscription > 1 (step/fast)


@_STRICT
class ServiceCore(TypedDict):
    """An inference service as the engine reports it (`Fleet.summary`: the fleet's keys and
    its serving model's; the fluid tier's requests are modelled rather than counted)."""

    fidelity: Fidelity  # the tier this service ran at
    requests: int  # requests arrived
    completed: int  # requests finished by the horizon
    dropped: int  # requests refused on arrival
    in_flight: int  # requests - completed - dropped
    output_tokens: int  # tokens, of the completed requests
    output_tokens_per_s: float  # tokens/s over the service's active time
    ttft_s: LatencyStats  # s, time to first token
    tpot_s: LatencyStats  # s, time per output token (outputs > 1 token)
    e2e_s: LatencyStats  # s, end to end
    queue_wait_s: LatencyStats  # s, arrival to admission
    preemptions: int  # request preemptions
    slo_attainment: float | None  # fraction 0..1; None without an slo or nothing judged
    slo_met: SloMet
    in_system_mean: float  # requests, time-mean in the system
    replicas_mean: float  # replicas, time-mean provisioned
    replicas_max: int  # replicas, most provisioned at once
    kv_capacity_tokens: float  # tokens of KV cache per replica
    gpu_h: ServiceGpuHours
    prefix_cache: NotRequired[PrefixCacheSummary]  # with system_prompts or conversations
    conversations: NotRequired[ConversationSummary]  # with conversations only
    speculative: NotRequired[SpeculativeSummary]  # with speculative decoding only
    pools: NotRequired[dict[str, PoolSummary]]  # disaggregated: prefill and decode
    kv_transfer: NotRequired[KVTransferSummary]  # disaggregated only


@_STRICT
class UsdPerMtok(TypedDict):
    """A service's cost per 1e6 output tokens; None with no tokens."""

    private: float | None  # USD per 1e6 tokens, owned
    cloud: float | None  # USD per 1e6 tokens, rented on demand


@_STRICT
class ServiceEnergy(TypedDict):
    """What `energy_and_cost` adds to an inference service."""

    energy_mwh: float  # MWh, facility energy of the service's GPUs
    tokens_per_joule: float | None  # output tokens / J; None without energy
    usd_per_mtok: UsdPerMtok


@_STRICT
class ServiceSummary(ServiceCore, ServiceEnergy):
    """`summary["inference"][name]`: one inference service."""


# --- energy, power and cost --------------------------------------------------------------------


@_STRICT
class EnergyBy(TypedDict):
    """`energy_mwh_by`: facility energy by what the GPUs did; sums to `energy_mwh`."""

    training: float  # MWh
    serving: float  # MWh
    idle: float  # MWh


@_STRICT
class PrivateCost(TypedDict):
    """`cost_usd.private`: owning the whole cluster for the run."""

    capex: float  # USD, amortised hardware
    opex: float  # USD
    energy: float  # USD, energy_mwh at the power price
    total: float  # USD, capex + opex + energy


@_STRICT
class CloudCost(TypedDict):
    """`cost_usd.cloud`: renting the GPU-hours allocated."""

    gpu_h: float  # GPU-h, every ledger bucket but unallocated and down
    on_demand: float  # USD
    reserved: float | None  # USD; None when the scenario gives no reserved price
    spot: float | None  # USD; None when the scenario gives no spot price
    total: float  # USD, on_demand


@_STRICT
class CostUsd(TypedDict):
    """`cost_usd`: the run's cost, owned against rented."""

    private: PrivateCost
    cloud: CloudCost


@_STRICT
class UsdPerBtok(TypedDict):
    """`training_usd_per_btok`: training's cost per 1e9 tokens trained; None with no tokens."""

    private: float | None  # USD per 1e9 tokens, owned
    cloud: float | None  # USD per 1e9 tokens, rented on demand


@_STRICT
class EnergySummary(TypedDict):
    """The top-level keys `energy_and_cost` adds: energy, power and cost of the run."""

    energy_mwh: float  # MWh, facility energy over the run
    energy_mwh_by: EnergyBy
    peak_mw: float  # MW, largest facility power
    mean_mw: float  # MW, energy_mwh / duration
    cost_usd: CostUsd
    break_even_utilisation: float | None  # fraction (above 1: owning never pays); None: none
    training_tokens_per_joule: float | None  # tokens / J of training energy; None: no energy
    training_usd_per_btok: UsdPerBtok


@_STRICT
class EnergyAndCost(EnergySummary):
    """What `energy.energy_and_cost` returns: the top-level keys, and the additions per job and
    per service that the runner merges into `training` and `inference`."""

    jobs: dict[str, JobEnergy]  # by job name
    services: dict[str, ServiceEnergy]  # by service name


@_STRICT
class Steps(TypedDict):
    site: float  # MW, the largest change of the site's power between consecutive pieces
    grid: float  # MW, the same of the grid draw (after the battery)


@_STRICT
class BatterySummary(TypedDict):
    charged_mwh: float  # MWh taken from the grid into the battery
    discharged_mwh: float  # MWh it delivered to the site
    losses_mwh: float  # MWh, charged - discharged - the energy it holds beyond its start
    soc_min: float  # fraction 0..1 of its capacity
    soc_max: float
    soc_end: float
    peak_shaved_mw: float  # MW, the site's peak - the grid's peak


@_STRICT
class CarbonSummary(TypedDict):
    tonnes_co2e: float  # t CO2e of the grid energy at the hour's intensity
    mean_g_per_kwh: float | None  # g/kWh, energy-weighted
    g_per_mtok_served: float | None  # g per 1e6 output tokens, serving's share of the energy
    g_per_btok_trained: float | None  # g per 1e9 tokens trained, training's share


@_STRICT
class SwingSummary(TypedDict):
    """A `power_trace` job's step phases and the swing they put on the site (facility.swings)."""

    step_s: float  # s, the step-time kernel's step
    compute_share: float  # fraction 0..1 of the step its GPUs compute
    gpu_w_compute: float  # W per GPU while computing
    gpu_w_wait: float  # W per GPU while waiting (communication, bubble)
    swing_mw: float  # MW at the site, GPUs x (compute - wait) x mean PUE
    ramp_mw_per_s: float  # MW/s, the largest change within 1 s
    fundamental_hz: float  # Hz, 1 / step_s
    fundamental_mw: float  # MW, the first harmonic's amplitude, 2 A sin(pi d) / pi
    over_ramp_limit: bool | None  # against facility.ramp_limit_mw_per_s; None without one
    floor_gpu_w: float  # W per GPU while waiting, with the power floor
    swing_with_floor_mw: float  # MW at the site with the floor
    floor_energy_mwh: float  # MWh the floor burns over the job's computing time


@_STRICT
class DemandAction(TypedDict):
    job: str  # the training job capped or paused
    action: NotRequired[str]  # pause (absent: capped)
    computing: bool  # computing at the event's start (else it sheds nothing by plan)
    gpus: int
    cap_w: float  # W per GPU while it computes (paused: idle power)
    slowdown: float  # x, its compute-bound work's clock factor (paused: 1)
    step_slowdown: float  # x, its step time at the cap over before (paused: 1)
    step_s: float  # s, its step time before the cap
    shed_mw: float  # MW at the site, by plan (GPUs x (power - cap) x PUE)
    tokens_not_trained: float  # tokens its capped steps did not train over its computing
    # time in the event (planned for the whole event if the run ends first)


@_STRICT
class DemandWindow(TypedDict):
    requests: int  # arriving in the window
    slo_attainment: float | None  # share meeting the SLO (dropped, unfinished: missed)
    missed_tokens: int  # output tokens of the requests that missed it


@_STRICT
class DemandService(TypedDict):
    service: str  # the service whose replicas were shed
    replicas_before: int  # ready at the event's start
    replicas_shed: int
    gpus: int
    busy_share: float  # share of its GPUs iterating when shed
    shed_mw: float  # MW at the site, by plan
    before: DemandWindow | None  # its requests over the event's length before it
    during: DemandWindow | None  # and during it (None: no request table, fluid tier)
    revenue_lost_usd: float | None  # price x tokens missed beyond before; None: no price


@_STRICT
class DemandEvent(TypedDict):
    """A demand-response event: planned (engine/power.py) and measured on the site's power."""

    at_s: float
    duration_s: float
    asked_mw: float
    tolerance_mw: float
    planned_mw: float  # MW the caps shed by plan
    shortfall_mw: float  # MW of the ask no action covered
    actions: list[DemandAction]
    services: list[DemandService]
    site_before_mw: float | None  # MW, the site's mean over the event's length before it
    site_during_mw: float | None  # MW, its mean during it
    met_mw: float | None  # MW, before - during
    met: bool | None  # met_mw within tolerance_mw of asked_mw
    tokens_not_trained: float  # tokens, over the actions


@_STRICT
class GridPool(TypedDict):
    gpu_cap_w: float | None  # W per GPU that holds the site under the limit; None: not needed
    clock_slowdown: float  # x, on compute-bound work, beyond the local caps'


@_STRICT
class GridLimitSummary(TypedDict):
    """facility.grid_limit_mw held at full load in the hottest hour (spec Scenario.grid_caps)."""

    limit_mw: float
    pue_max: float  # the hottest hour's
    full_load_mw: float  # MW the site would draw at full load then, uncapped by the grid
    capped: bool  # whether the grid's cap binds
    held_mw: float  # MW at full load then under every cap (<= limit_mw)
    pools: dict[str, GridPool]
    tokens_not_trained: dict[str, float]  # by job, what the grid's cap slowed away


@_STRICT
class WorkEfficiency(TypedDict):
    tokens: float  # trained (training) or output tokens served (serving)
    energy_mwh: float  # MWh the energy model gives that work (IT x PUE)
    tokens_per_joule: float | None
    tokens_per_s_per_rated_kw: float | None  # per kW of the GPUs' TDP, over the time held


@_STRICT
class GPUEfficiency(TypedDict):
    family: str  # the GPU's calibration family (its generation)
    training: WorkEfficiency
    serving: WorkEfficiency


@_STRICT
class FacilitySummary(TypedDict):
    """With a scenario `facility` (facility.py): the site, its PUE and the grid."""

    pue_mean: float | None  # site energy / IT energy
    pue_max: float | None
    temp_c_max: float | None  # C, outdoor dry bulb; None without weather
    temp_c_mean: float | None
    site_peak_mw: float  # MW, the site's largest power (IT x PUE)
    grid_peak_mw: float  # MW, the largest draw from the grid
    grid_energy_mwh: float  # MWh drawn from the grid (the site's energy and battery losses)
    largest_step_mw: Steps
    grid_limit_mw: NotRequired[float]  # MW, contracted
    grid_over_limit_h: NotRequired[float]  # h the draw spent above it
    grid_headroom_mw: NotRequired[float]  # MW, limit - grid peak (negative: over)
    battery: NotRequired[BatterySummary]
    carbon: NotRequired[CarbonSummary]
    swings: NotRequired[dict[str, SwingSummary]]  # by job with power_trace
    demand_response: NotRequired[list[DemandEvent]]  # in time order
    grid_limit: NotRequired[GridLimitSummary]  # with grid_limit_mw
    efficiency_by_gpu: dict[str, GPUEfficiency]  # by GPU model


@_STRICT
class RackPool(TypedDict):
    racks: int  # racks the pool's nodes fill
    full_load_kw: float  # kW a rack of its nodes draws at TDP with their overhead
    limit_kw: float  # kW a rack may draw: its budget, or its cooling if smaller
    gpu_cap_w: float | None  # W per GPU that holds a rack within it; None: it fits at TDP
    clock_slowdown: float  # x, the cap's clock factor on compute-bound work
    throttled_gpu_h: float  # GPU-hours that computed under the cap


@_STRICT
class RacksSummary(TypedDict):
    """With cluster.racks: each pool's racks at full load against their budget and cooling."""

    nodes_per_rack: int
    power_budget_kw: float
    cooling_kw: float | None
    pools: dict[str, RackPool]


# --- the whole summary -------------------------------------------------------------------------


@_STRICT
class CoreSummary(TypedDict):
    """The summary's keys the engine and the runner write."""

    scenario: str  # the scenario's name
    seed: int
    fidelity: Fidelity  # the scenario's tier
    duration_s: float  # s, simulated horizon
    gpus: int  # GPUs in the cluster, spares included
    ledger_gpu_h: Ledger
    utilisation: Utilisation
    training: dict[str, JobSummary]  # by job name; empty without training jobs
    inference: dict[str, ServiceSummary]  # by service name; empty without services
    failures: Failures


@_STRICT
class QueueSummary(TypedDict):
    """`queues[name]`: one team's queue (scheduler.queues, engine/quotas.py)."""

    quota_gpus: int
    can_borrow: bool
    jobs: int  # training jobs submitted to it
    started: int  # of them, started by the horizon
    gpu_h: float  # GPU-h its jobs and services held
    borrowed_gpu_h: float  # GPU-h of it above its quota
    mean_gpus: float  # GPUs held on average
    peak_gpus: int
    quota_use: float | None  # mean_gpus / quota_gpus; None with a quota of 0
    wait_s_mean: float | None  # s from submission to first start; None: none started
    wait_s_p50: float | None
    wait_s_p90: float | None
    reclaims: int  # its jobs preempted to give borrowed GPUs back


@_STRICT
class GrayKind(TypedDict):
    """`gray[kind]`: one kind of gray failure over the run (engine/gray.py)."""

    episodes: int  # episodes drawn, every node
    hit_jobs: int  # of them, on a node a training job held when it began
    detected: int  # found by monitoring (a straggler cordoned, a corruption rolled back)
    detect_s_mean: float | None  # s from onset to detection; None: none found
    detect_s_max: float | None  # s
    lost_gpu_h: float  # GPU-h of work it cost (in the ledger's lost_work)
    undetected_jobs: NotRequired[int]  # silent_corruption: jobs on a wrong state at the end
    corrupt_steps: NotRequired[float]  # silent_corruption: steps trained on it, never found


@_STRICT
class WithoutMonitoring(TypedDict):
    """`gray.without_monitoring`: the same seed and episodes with monitoring off."""

    lost_gpu_h: float  # GPU-h lost to gray failures without monitoring
    tokens_trained: float  # every job, without monitoring
    saved_gpu_h: float  # lost work + recovery GPU-h, without minus with
    extra_tokens_trained: float  # with minus without


@_STRICT
class GraySummary(TypedDict):
    """`gray`: with failures.gray, each kind configured and the total."""

    slow_gpu: NotRequired[GrayKind]
    link_flap: NotRequired[GrayKind]
    silent_corruption: NotRequired[GrayKind]
    lost_gpu_h: float  # GPU-h, every kind
    without_monitoring: NotRequired[WithoutMonitoring]


@_STRICT
class Summary(CoreSummary, EnergySummary):
    """A run's summary, `Results.summary` and `summary.json`."""

    facility: NotRequired[FacilitySummary]  # with a scenario `facility`
    racks: NotRequired[RacksSummary]  # with cluster.racks
    gray: NotRequired[GraySummary]  # with failures.gray
    queues: NotRequired[dict[str, QueueSummary]]  # with scheduler.queues, by queue name


def _keys(td: Any) -> frozenset[str]:
    return frozenset(td.__required_keys__ | td.__optional_keys__)


#: Top-level keys of the engine's sections, and those of the energy, power and cost section.
CORE_KEYS: frozenset[str] = _keys(CoreSummary)
ENERGY_KEYS: frozenset[str] = _keys(EnergySummary)
#: The ledger's buckets, in the ledger's order.
LEDGER_BUCKETS: tuple[str, ...] = tuple(Ledger.__annotations__)


# --- run-time check ----------------------------------------------------------------------------


class SummaryError(ValueError):
    """A summary that does not match `Summary`; `problems` holds (path, what is wrong)."""

    def __init__(self, problems: list[tuple[str, str]], schema: str = "Summary"):
        self.problems = problems
        n = len(problems)
        lines = "; ".join(f"{path}: {why}" for path, why in problems[:10])
        more = f"; and {n - 10} more" if n > 10 else ""
        super().__init__(
            f"summary does not match aifactory_sim.schema.{schema} "
            f"({n} problem{'s' if n != 1 else ''}): {lines}{more}"
        )


@functools.cache
def _adapter() -> "TypeAdapter[Summary]":
    from pydantic import TypeAdapter

    return TypeAdapter(Summary)


def _path(loc: tuple[int | str, ...]) -> str:
    out = "summary"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _why(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "missing key"
    if kind == "extra_forbidden":
        return "unexpected key (the schema does not name it)"
    value = error.get("input")
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    msg = str(error["msg"])
    return f"{msg[:1].lower()}{msg[1:]}, got {type(value).__name__} {shown}"


def build_checker() -> None:
    """Build `check_summary`'s validator now (about 4 ms, once per process) rather than on the
    first summary checked: the runner does it when it is imported, outside any run."""
    _adapter()


def check_summary(summary: object) -> None:
    """Raise `SummaryError` unless `summary` matches `Summary`: every required key present,
    no key the schema does not name, each value of its type (an int where a float is due is
    fine; a bool, a string or a numpy integer is not; no NaN or infinity). Returns None and
    leaves `summary` as it is."""
    _validate(_adapter(), summary, "Summary")


def _validate(adapter: "TypeAdapter[Any]", summary: object, schema: str) -> None:
    from pydantic import ValidationError

    try:
        adapter.validate_python(summary)
    except ValidationError as err:
        problems = [(_path(e["loc"]), _why(e)) for e in err.errors(include_url=False)]
        raise SummaryError(problems, schema) from None


# --- an estate of sites (spec/estate.py, estate_results.py) ------------------------------------


@_STRICT
class SiteCostUsd(TypedDict):
    """`estate.sites[name].cost_usd`: one site's cost over the run, by part."""

    capex: float  # USD, amortised hardware (owned sites)
    opex: float  # USD (owned sites)
    energy: float  # USD, the site's energy at its price (owned sites)
    colocation: float  # USD, price per kW-month x IT kW x months (colocation sites)
    rental: float  # USD, GPU-h held x on-demand or spot price (cloud sites)
    egress: float  # USD, bytes leaving the site x its links' price per GB
    total: float  # USD, the sum of the parts


@_STRICT
class SiteSummary(TypedDict):
    """`estate.sites[name]`: one site of the estate."""

    kind: Literal["private", "colocation", "cloud"]
    jurisdiction: str
    gpus: int  # GPUs in the site's pools (a cloud site: its maximum)
    utilisation: Utilisation
    used_gpu_h: float  # GPU-h held by jobs and services
    rented_gpu_h: float | None  # GPU-h rented (cloud sites); None for owned sites
    energy_mwh: float | None  # MWh (owned sites); None for cloud sites
    cost_usd: SiteCostUsd
    tokens_trained: float  # tokens trained at the site
    output_tokens_served: float  # tokens served at the site
    usd_per_btok_trained: float | None  # USD per 1e9 tokens, training's share of the cost
    usd_per_mtok_served: float | None  # USD per 1e6 output tokens, serving's share
    jobs: list[str]  # training jobs run (or held dormant) there
    services: list[str]  # services placed there
    spot_gpu_h: NotRequired[float]  # GPU-h rented at the spot price (cloud sites)
    rented_nodes_mean: NotRequired[float]  # nodes rented on average (cloud sites)


@_STRICT
class LinkSummary(TypedDict):
    """`estate.links[i]`: what crossed one link."""

    between: list[str]  # the two sites
    gbit_s: float  # Gbit/s
    bytes: float  # bytes moved over it
    egress_usd: float  # USD charged for them


@_STRICT
class TransfersSummary(TypedDict):
    """`estate.transfers`: every dataset staged between sites."""

    count: int
    bytes: float
    egress_usd: float  # USD


@_STRICT
class BurstSummary(TypedDict):
    """`estate.bursts[i]`: a job that left its home queue for a cloud site."""

    job: str
    src: str  # its home site
    dst: str  # the cloud site
    price: Literal["on-demand", "spot"]
    queued_s: float  # s queued at home before it left
    at_s: float  # s, when it left
    staged_s: float  # s, when its data was at the cloud site


@_STRICT
class EstateCost(TypedDict):
    """`estate.cost_usd`: the estate's cost."""

    by_site: dict[str, float]  # USD, each site's total
    egress: float  # USD, every link's
    total: float  # USD


@_STRICT
class AuditSummary(TypedDict):
    """`estate.audit`: the audit table's count (results.audit lists the rows)."""

    placements: int  # placements of classified work
    outside_rule: int  # of them, on a site its rule does not allow (0 unless a bug)


@_STRICT
class EstateBlock(TypedDict):
    """`estate`: the sites, links, transfers, bursts and cost of the estate."""

    sites: dict[str, SiteSummary]  # by site name
    links: list[LinkSummary]  # in the file's order
    transfers: TransfersSummary
    bursts: list[BurstSummary]
    cost_usd: EstateCost
    usd_per_btok_trained: float | None  # USD per 1e9 tokens, every site
    usd_per_mtok_served: float | None  # USD per 1e6 output tokens, every site
    audit: AuditSummary


@_STRICT
class JobBurst(TypedDict):
    """`training[name].burst`: where a burst job came from."""

    src: str
    price: Literal["on-demand", "spot"]
    queued_s: float
    at_s: float


@_STRICT
class EstateJobSummary(JobSummary):
    """`training[name]` of an estate: the job's summary at the site where it ran."""

    site: str
    burst: NotRequired[JobBurst]


@_STRICT
class EstateServiceSummary(ServiceSummary):
    """`inference[name]` of an estate: the service's summary at its site."""

    site: str
    users_site: str  # the site nearest its users
    round_trip_s: float  # s, added to its TTFT and E2E (2 x the route's latency)


@_STRICT
class EstateSummary(TypedDict):
    """An estate run's summary (`EstateResults.summary`); each site's own summary is a
    `Summary`, checked as it is assembled."""

    scenario: str
    seed: int
    fidelity: Literal["step", "fast", "fluid", "auto"]
    duration_s: float  # s
    gpus: int  # GPUs of every site
    estate: EstateBlock
    training: dict[str, EstateJobSummary]  # by job name
    inference: dict[str, EstateServiceSummary]  # by service name


@functools.cache
def _estate_adapter() -> "TypeAdapter[EstateSummary]":
    from pydantic import TypeAdapter

    return TypeAdapter(EstateSummary)


def check_estate_summary(summary: object) -> None:
    """`check_summary` for an estate's summary, against `EstateSummary`."""
    _validate(_estate_adapter(), summary, "EstateSummary")
