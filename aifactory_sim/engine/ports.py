"""The engine's ports: what a component may ask of the rest of the factory, as typed protocols.

A component gets the ports it uses when it is built (docs/background/architecture.md draws
them) and never sees `Factory`, which is wiring only. The concrete ports live beside this
file: `broker.NodeBroker` (nodes), `telemetry.Ledger` (GPU-seconds), `telemetry.Recorder`
(time series). The protocols here name what the ports in turn need of the components they
serve, so that no engine module imports another component's class: jobs, services and the
scheduler meet only through these shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .cluster import Allocation


class PoolSpec(Protocol):
    """What the ports read of a node pool (spec.scenario.NodePool)."""

    @property
    def name(self) -> str: ...
    @property
    def gpus_per_node(self) -> int: ...


class NodeOwner(Protocol):
    """Anything that holds nodes under an owner id and is told when one of them fails."""

    @property
    def name(self) -> str: ...
    def node_failed(self, node: int, component: str) -> None: ...


class Job(NodeOwner, Protocol):
    """A training job as the broker, the scheduler and the fabric see it (TrainingRun)."""

    index: int
    state: str
    alloc: Allocation | None
    dp: int
    preempt_to: int | None
    started_at: float | None
    submitted_at: float | None
    lent: list[tuple[float, str, int]]

    @property
    def pool(self) -> PoolSpec: ...
    @property
    def spec(self) -> _JobSpec: ...
    @property
    def nodes(self) -> int: ...
    @property
    def held_nodes(self) -> int: ...
    @property
    def min_nodes(self) -> int: ...
    def nodes_for(self, dp: int) -> int: ...
    def projected_end(self, now: float) -> float: ...
    def projected_duration(self) -> float: ...
    def book(self) -> None: ...
    def start(self, alloc: Allocation) -> None: ...
    def preempt(self, shrink_to: int | None) -> None: ...
    def gang_complete(self) -> None: ...
    def set_fabric_slowdown(self, slowdown: float) -> None: ...


class _Elastic(Protocol):
    @property
    def min_dp(self) -> int: ...


class _Parallel(Protocol):
    @property
    def pp(self) -> int: ...


class _JobSpec(Protocol):
    @property
    def priority(self) -> int: ...
    @property
    def elastic(self) -> _Elastic | None: ...
    @property
    def parallel(self) -> _Parallel: ...


class _ServiceSpec(Protocol):
    @property
    def priority(self) -> int: ...


class Claimant(NodeOwner, Protocol):
    """A serving fleet as the broker and the lender see it (engine.fleet.Fleet)."""

    index: int

    @property
    def pool(self) -> PoolSpec: ...
    @property
    def spec(self) -> _ServiceSpec: ...
    @property
    def held_gpus(self) -> int: ...
    def has_pending(self) -> bool: ...
    def held_back(self) -> int: ...
    def place_pending(self) -> bool: ...


class JobQueue(Protocol):
    """The scheduler as a job sees it: where it queues, and where it says it gave nodes back."""

    def submit(self, job: Job) -> None: ...
    def yielded(self, job: Job) -> None: ...


class Lender(Protocol):
    """The scheduler as the broker sees it: it asks training jobs for nodes a service lacks,
    knows who queues, and starts what can start when nodes come free."""

    def lend_to_service(self, service: Claimant, short: int) -> int: ...
    def queued_in(self, pool: str) -> bool: ...
    def schedule(self) -> None: ...
    @property
    def queued(self) -> int: ...


JobList = Sequence[Job]


# --- serving: the replica fleet and the serving model on top of it (engine/fleet.py) ---------


class ServingCore(Protocol):
    """What the fleet asks of a replica's core (replica.ReplicaCore, fluid.FluidCore): its
    busy time for the GPU-second meters, what it holds for a drain, when its work ends."""

    busy_s: float

    @property
    def outstanding(self) -> int: ...
    def busy_until(self, t: float) -> float: ...
    def next_time(self) -> float: ...
    def evict(self, now: float) -> list[int]: ...


class ReplicaView(Protocol):
    """A replica as a serving model sees it (fleet.Replica)."""

    index: int
    state: str
    core: ServingCore
    nodes: list[int]  # the pool's node indices it runs on (its leaves in the fabric)


class FleetView(Protocol):
    """The replica fleet as its serving model sees it: the ready replicas (indices, in order of
    readiness), every replica by index, the clock, the service's sampling interval and the
    meter of busy GPU-seconds the model books to (the fluid tier's flows)."""

    ready: list[int]
    interval_s: float

    @property
    def now(self) -> float: ...
    @property
    def replicas(self) -> Sequence[ReplicaView]: ...
    def book_busy(self, gpu_s: float) -> None: ...


class FabricFlows(Protocol):
    """Flows other than the jobs' rings on a pool's leaf up-links, as the fabric sees them (a
    disaggregated service's KV transfers, disagg.DisaggregatedModel)."""

    def leaf_load(self, now: float) -> np.ndarray:
        """The mean flows (of a node's bandwidth) put on each leaf's up-links since the last
        call."""
        ...

    def rated(self, flows: np.ndarray) -> None:
        """Every leaf's flows as the fabric counts them now (rings and mean loads)."""
        ...


class ServingModel(Protocol):
    """The serving model on top of a replica fleet (inference.RouterModel for `step` and
    `fast`, fluid.FlowModel for `fluid`), as the fleet sees it. The fleet owns the replicas'
    life (placement, cold starts, drains, failures, the autoscaler, the meters); the model owns
    the requests and tells the fleet what they look like."""

    @property
    def tier(self) -> str: ...

    #: Whether the replicas' cores count their own busy time (`busy_until`); a model that
    #: books busy time as flows (FlowModel, through FleetView.book_busy) says False.
    cores_track_busy: bool
    #: Whether the model keeps requests on each replica (`in_flight` can be nonzero); the
    #: flows hold none of their own, and a scale-down need not ask.
    holds_requests: bool

    def connect(self, fleet: FleetView) -> None: ...
    def new_core(self, index: int) -> ServingCore: ...
    def start(self, now: float) -> None: ...
    def advance_to(self, t: float) -> None: ...
    def arrived(self) -> float: ...
    def mean_lengths(self) -> tuple[float, float, float]: ...
    def metric(self, kind: str) -> float: ...
    def row(self) -> tuple[float, float, float]: ...
    def in_flight(self, index: int) -> int: ...
    def replica_ready(self, replica: ReplicaView, now: float) -> None: ...
    def scaled_down(self, ready_before: int, ready_after: int) -> None: ...
    def node_failing(self, hit: Sequence[ReplicaView]) -> None: ...
    def evicted(self, replica: ReplicaView, now: float) -> list[int]: ...
    def stopped(self, replica: ReplicaView) -> None: ...
    def reroute(self, requests: list[int], now: float) -> None: ...
    def close(self, horizon: float) -> None: ...
    def requests_frame(self) -> dict[str, np.ndarray]: ...
    def summary(self, horizon: float, active_s: float) -> dict[str, Any]: ...
