"""Gray failures and the monitoring that finds them (issue 19): slow GPUs, flapping links and
silent data corruption, which no health check reports, and straggler detection and validation
checks, which find them from what the jobs do.

Episodes. Each kind arrives on every node as a Poisson process at its rate per node-day; the
superposition over the cluster's N nodes is a Poisson process at N x rate, each point on a node
drawn uniformly (Cinlar, "Introduction to Stochastic Processes", 1975, ch. 4: superposition and
thinning), so the whole run's episodes are drawn at once in numpy, apart from node failures'
streams: the same seed gives the same episodes with monitoring on or off. One SimPy process
walks their starts and ends in time order.

- `slow_gpu`: a GPU of the node runs at `slowdown` of its throughput. A synchronous job waits
  for its slowest member at every collective, so its whole step takes 1 / slowdown longer
  (its pace is the least of its nodes'). Gaps between collectives that hide a straggler are
  not modelled: this is the bound that large jobs approach (Wu et al., "FALCON: Pinpointing and
  Mitigating Stragglers for Large-Scale Hybrid-Parallel Training", arXiv 2410.12588, sec. 2:
  one slow GPU sets the iteration time of the whole job).
- `link_flap`: the node's NIC carries `bandwidth_fraction` of its line rate. A ring collective
  runs at its slowest link, so the job's inter-node communication takes 1 / fraction longer;
  it enters the step-time model as the spine share does (`cross_leaf_slowdown`, the larger of
  the two), and only the communication the model does not hide slows.
- `silent_corruption`: the job on the node computes wrong values from then on, and every
  checkpoint it writes after is wrong too. A validation check every
  `monitoring.validation_every_steps` steps finds it; the job then rolls back to its last
  checkpoint taken before the corruption and the node is swapped. Without checks it is never
  found: the summary counts the steps trained on corrupt state.

What a gray failure costs a job is booked as `lost_work` in the ledger: the share
1 - t_healthy / t_slowed of its computing GPU-time while slowed, and what a rollback discards.
The summary's `gray` section splits it by kind.

Monitoring. `straggler_detection` watches each job's step time against its healthy value; once
it has stayed above `threshold` for `window_s` it acts at the next scrape (every
`scrape_interval_s`, aligned to t = 0): the culprit node is cordoned (out until its episode
ends) and the job restarts on a spare from its last checkpoint, as after a node failure found
at once (no `failures.detect_s`: the monitor found it). A slowdown under the threshold is never
acted on. Services on a slowed node are not slowed here (their replicas' iteration model has
no per-node pace yet).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..spec.scenario import ExponentialHours, FixedHours, LognormalHours

if TYPE_CHECKING:
    import simpy

    from ..spec.scenario import GrayFailures, Monitoring, RepairHours
    from .broker import NodeBroker
    from .cluster import Allocation


class TrainingRun(Protocol):
    """What gray failures and the monitor see of a training job (engine/training.py)."""

    index: int
    name: str
    state: str
    bucket: str | None
    alloc: Allocation | None
    gray: GrayState | None
    gray_ratio: float
    swapping: bool
    corrupt: Episode | None
    corrupt_done: float
    done: float
    gray_lost_gpu_s: dict[str, float]

    def gray_changed(self) -> None: ...
    def corrupted(self, ep: Episode) -> None: ...


#: The kinds, in the order their episodes are drawn.
KINDS = ("slow_gpu", "link_flap", "silent_corruption")
#: Columns of the episodes table (`Results.gray`, gray.csv).
GRAY_COLUMNS = ("kind", "pool", "node", "start_s", "end_s", "factor", "job", "detected_s", "action")


@dataclass
class Episode:
    """One gray failure: its node, when it began and would end, and what became of it."""

    kind: str
    pool: str
    node: int
    start_s: float
    end_s: float  # when it ends by itself (start for an instant corruption)
    factor: float  # throughput or bandwidth fraction (1.0 for a corruption)
    job: str | None = None  # the job holding the node when it began
    detected_s: float | None = None  # when monitoring found it
    action: str = ""  # cordoned, rolled-back, idle (no job), undetected


def _durations(spec: RepairHours, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` episode durations (s) from an hours distribution."""
    if isinstance(spec, FixedHours):
        return np.full(n, spec.value * 3600.0)
    if isinstance(spec, LognormalHours):
        return spec.median * 3600.0 * rng.lognormal(0.0, spec.sigma, n)
    assert isinstance(spec, ExponentialHours)
    return rng.exponential(spec.mean * 3600.0, n)


def draw_episodes(
    spec: GrayFailures,
    nodes: list[tuple[str, int]],
    horizon: float,
    rngs: dict[str, np.random.Generator],
) -> list[Episode]:
    """Every episode of the run, in time order: per kind, a Poisson count at the cluster's
    rate x horizon, uniform times, uniform nodes (see the module)."""
    flat = [(name, i) for name, count in nodes for i in range(count)]
    out: list[Episode] = []
    for kind in KINDS:
        k = getattr(spec, kind)
        if k is None or not flat or horizon <= 0:
            continue
        rng = rngs[kind]
        rate_s = k.per_1000_node_days / 1000.0 / 86400.0
        n = int(rng.poisson(rate_s * len(flat) * horizon))
        times = np.sort(rng.uniform(0.0, horizon, n))
        where = rng.integers(0, len(flat), n)
        if kind == "silent_corruption":
            lengths = np.zeros(n)
            factor = 1.0
        else:
            lengths = _durations(k.duration_h, n, rng)
            factor = k.slowdown if kind == "slow_gpu" else k.bandwidth_fraction
        for t, w, d in zip(times, where, lengths, strict=True):
            pool, node = flat[int(w)]
            out.append(Episode(kind, pool, node, float(t), float(t + d), float(factor)))
    out.sort(key=lambda e: (e.start_s, KINDS.index(e.kind)))
    return out


class GrayState:
    """The port jobs read: each node's GPU pace and NIC fraction now (1.0 when healthy), and
    the monitor to tell when their step time changes."""

    def __init__(self, nodes: list[tuple[str, int]], monitor: StragglerMonitor | None):
        self.slow = {name: np.ones(count) for name, count in nodes}
        self.nic = {name: np.ones(count) for name, count in nodes}
        #: the slow-GPU and flapping-link episodes under way, by (pool, node)
        self.active: dict[tuple[str, int], list[Episode]] = {}
        self.monitor = monitor
        self.validation_every_steps: int | None = None

    def refresh(self, pool: str, node: int) -> None:
        """A node's pace and NIC fraction from the episodes under way on it."""
        live = self.active.get((pool, node), [])
        self.slow[pool][node] = min((e.factor for e in live if e.kind == "slow_gpu"), default=1.0)
        self.nic[pool][node] = min((e.factor for e in live if e.kind == "link_flap"), default=1.0)

    def of(self, alloc: Allocation) -> tuple[float, float]:
        """The least GPU pace and NIC fraction over an allocation's nodes."""
        if not alloc.nodes.size:
            return 1.0, 1.0
        return (
            float(self.slow[alloc.pool][alloc.nodes].min()),
            float(self.nic[alloc.pool][alloc.nodes].min()),
        )

    def culprit(self, alloc: Allocation) -> int | None:
        """The node of an allocation that slows it most (a slow GPU before a flapping NIC)."""
        if not alloc.nodes.size:
            return None
        slow = self.slow[alloc.pool][alloc.nodes]
        if slow.min() < 1.0:
            return int(alloc.nodes[int(slow.argmin())])
        nic = self.nic[alloc.pool][alloc.nodes]
        if nic.min() < 1.0:
            return int(alloc.nodes[int(nic.argmin())])
        return None


class StragglerMonitor:
    """Straggler detection (see the module): per job, when its step time went over the
    threshold, and a check at the first scrape a whole window later."""

    def __init__(
        self,
        env: simpy.Environment,
        monitoring: Monitoring,
        broker: NodeBroker,
    ):
        assert monitoring.straggler_detection is not None
        self.env = env
        self.threshold = monitoring.straggler_detection.threshold
        self.window_s = monitoring.straggler_detection.window_s
        self.scrape_s = monitoring.scrape_interval_s
        self.broker = broker
        self.state: GrayState | None = None  # set by the injector
        self._onset: dict[int, tuple[float, int]] = {}  # job index -> (onset, token)
        self._token = 0

    def update(self, job: TrainingRun) -> None:
        """The job's step time may have changed: start, keep or drop its watch."""
        slowed = job.gray_ratio > self.threshold
        if not slowed:
            self._onset.pop(job.index, None)
            return
        if job.index in self._onset:
            return
        self._token += 1
        self._onset[job.index] = (self.env.now, self._token)
        self._check_at(job, self._token, self.env.now + self.window_s)

    def _check_at(self, job: TrainingRun, token: int, t: float) -> None:
        at = math.ceil(t / self.scrape_s - 1e-9) * self.scrape_s  # the next scrape
        timer = self.env.timeout(max(at - self.env.now, 0.0))
        timer.callbacks.append(lambda _ev: self._check(job, token))

    def _check(self, job: TrainingRun, token: int) -> None:
        seen = self._onset.get(job.index)
        if seen is None or seen[1] != token:
            return  # it healed or restarted since
        if job.state != "running" or job.alloc is None or job.bucket != "compute":
            self._check_at(job, token, self.env.now + self.scrape_s)  # no steps to see now
            return
        gray = job.gray
        assert gray is not None
        node = gray.culprit(job.alloc)
        if node is None:
            self._onset.pop(job.index, None)
            return
        pool = job.alloc.pool
        live = gray.active.get((pool, node), [])
        until = max((e.end_s for e in live), default=self.env.now)
        for e in live:
            if e.detected_s is None:
                e.detected_s = self.env.now
                e.action = "cordoned"
        self._onset.pop(job.index, None)
        job.swapping = True  # found by the monitor: no failures.detect_s on restart
        # out of service until its episodes end (then as good as new)
        self.broker.node_failed(pool, node, "straggler", max(until - self.env.now, 0.0))


class GrayInjector:
    """Plays the episodes: sets the nodes' state and tells the job holding a node (one SimPy
    process; see the module)."""

    def __init__(
        self,
        env: simpy.Environment,
        spec: GrayFailures,
        monitoring: Monitoring | None,
        rngs: dict[str, np.random.Generator],
        *,
        nodes: list[tuple[str, int]],
        horizon: float,
        broker: NodeBroker,
        jobs: Sequence[TrainingRun],
    ):
        self.env = env
        self.broker = broker
        self.jobs = jobs
        self.horizon = horizon
        monitor = None
        if monitoring is not None and monitoring.straggler_detection is not None:
            monitor = StragglerMonitor(env, monitoring, broker)
        self.monitor = monitor
        self.state = GrayState(nodes, monitor)
        if monitor is not None:
            monitor.state = self.state
        self.kinds = [k for k in KINDS if getattr(spec, k) is not None]
        if monitoring is not None:
            self.state.validation_every_steps = monitoring.validation_every_steps
        self.episodes = draw_episodes(spec, nodes, horizon, rngs)
        env.process(self._run())

    def _owner(self, pool: str, node: int) -> TrainingRun | None:
        owner = int(self.broker.cluster.pools[pool].owner[node])
        if 0 <= owner < len(self.jobs):
            return self.jobs[owner]
        return None

    def _run(self) -> Any:
        env = self.env
        ends: list[tuple[float, int]] = []  # (end, episode index), a heap
        for i, ep in enumerate(self.episodes):
            while ends and ends[0][0] <= ep.start_s:
                t, k = heapq.heappop(ends)
                yield env.timeout(t - env.now)
                self._end(self.episodes[k])
            yield env.timeout(ep.start_s - env.now)
            self._begin(ep)
            if ep.kind != "silent_corruption" and ep.end_s < self.horizon:
                heapq.heappush(ends, (ep.end_s, i))
        while ends:
            t, k = heapq.heappop(ends)
            yield env.timeout(t - env.now)
            self._end(self.episodes[k])

    def _begin(self, ep: Episode) -> None:
        job = self._owner(ep.pool, ep.node)
        ep.job = None if job is None else job.name
        ep.action = "idle" if job is None else "undetected"
        if ep.kind == "silent_corruption":
            if job is not None:
                job.corrupted(ep)
            return
        self.state.active.setdefault((ep.pool, ep.node), []).append(ep)
        self.state.refresh(ep.pool, ep.node)
        if job is not None:
            job.gray_changed()

    def _end(self, ep: Episode) -> None:
        live = self.state.active.get((ep.pool, ep.node), [])
        if ep in live:
            live.remove(ep)
        self.state.refresh(ep.pool, ep.node)
        job = self._owner(ep.pool, ep.node)
        if job is not None:
            job.gray_changed()

    def summary(self, jobs: Sequence[TrainingRun], horizon: float) -> dict[str, Any]:
        """The summary's `gray` section: per kind configured, its episodes, how many struck a
        job, how many monitoring found and how fast, and the work it cost (GPU-h, booked as
        lost_work); for corruption also what was never found by the horizon."""
        out: dict[str, Any] = {}
        for kind in self.kinds:
            eps = [e for e in self.episodes if e.kind == kind]
            delays = [e.detected_s - e.start_s for e in eps if e.detected_s is not None]
            row: dict[str, Any] = {
                "episodes": len(eps),
                "hit_jobs": sum(e.job is not None for e in eps),
                "detected": len(delays),
                "detect_s_mean": float(np.mean(delays)) if delays else None,
                "detect_s_max": float(max(delays)) if delays else None,
                "lost_gpu_h": float(sum(j.gray_lost_gpu_s[kind] for j in jobs) / 3600.0),
            }
            if kind == "silent_corruption":
                wrong = [j for j in jobs if j.corrupt is not None]
                row["undetected_jobs"] = len(wrong)
                # steps trained on a wrong state by the horizon, never found
                row["corrupt_steps"] = float(sum(j.done - j.corrupt_done for j in wrong))
            out[kind] = row
        out["lost_gpu_h"] = float(sum(r["lost_gpu_h"] for r in out.values()))
        return out

    def table(self) -> list[dict[str, Any]]:
        """The episodes, one row each (GRAY_COLUMNS)."""
        return [{c: getattr(e, c) for c in GRAY_COLUMNS} for e in self.episodes]
