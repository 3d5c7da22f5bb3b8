"""Autoscaler decisions: Kubernetes' HPA, Knative's KPA and an SLO planner as pure, deterministic
state machines.

No SimPy and no randomness here. The engine calls a policy at each sync tick with the simulated
time, the replica count and the metric, and applies the count it gets back; these classes only
remember what their upstream counterparts remember (recommendations, scale events, metric
windows, panic state). Settings and their sources: spec/autoscaling.py.

The engine's side of the contract:

- `current` is every replica the service has asked for and not yet removed: ready, starting
  (cold start: node allocation, container start, weight load) and still waiting for nodes, as
  Kubernetes counts pods in `status.replicas`. `ready` of them serve traffic.
- `metric_total` is the service-wide sum of the metric (`spec.metric`): requests in flight, or
  waiting, or arriving per second; `target` is per replica.
- Times never go backwards.
"""

from __future__ import annotations

import math
from collections import deque

from ..spec.autoscaling import HPA, KPA, Planner


def ceil_count(x: float) -> int:
    """ceil(x) that ignores float noise: within 1e-9 (relative) of an integer is that integer.

    A ratio such as 3 * (0.1 / 0.1) may come out as 3.0000000000000004; Kubernetes works in
    milli-units and would not add a replica for it, nor should we.
    """
    return math.ceil(x - 1e-9 * max(1.0, abs(x)))


def _within(ratio: float, tolerance: float) -> bool:
    """|ratio - 1| <= tolerance, the edge included despite float noise (1.1 - 1 > 0.1 in binary)."""
    return abs(ratio - 1.0) <= tolerance + 1e-9


def _check_counts(current: int, ready: int | None) -> int:
    if current < 0:
        raise ValueError(f"current={current} replicas must be >= 0")
    if ready is None:
        return current
    if not 0 <= ready <= current:
        raise ValueError(f"ready={ready} replicas must be within 0..current={current}")
    return ready


def _check_metric(value: float, what: str) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{what}={value!r} must be a finite number >= 0")
    return float(value)


class _Clock:
    """Refuses a decision dated before the previous one: the windows assume time moves on."""

    def __init__(self) -> None:
        self._last_s = -math.inf

    def tick(self, now: float) -> None:
        if not math.isfinite(now):
            raise ValueError(f"now={now!r} must be a finite time in seconds")
        if now < self._last_s:
            raise ValueError(f"time went backwards: now={now} after {self._last_s}")
        self._last_s = now


class HPAPolicy:
    """Kubernetes' horizontal pod autoscaler on a per-replica `AverageValue` metric.

    Each call to `decide` is one reconcile of the HPA controller (horizontal.go,
    replica_calculator.go), in its order:

    1. Bounds first: a count above max_replicas or below min_replicas goes straight to the bound.
    2. Proposal: ratio = metric_total / (ready x target); no change while |ratio - 1| <=
       tolerance; else ceil(ratio x ready) = ceil(metric_total / target). Starting replicas
       report no metric yet and are treated as Kubernetes treats pods with missing metrics:
       at 0 when the ready ones ask for more (so they count against the scale-up), at the
       target when the ready ones ask for less (so they are not removed for a dip seen by
       others); a change that this reverses or brings within tolerance is dropped.
    3. Stabilisation: up at once (Kubernetes' scale-up window is 0 s); down only to the highest
       proposal of the last scale_down_stabilization_s (this one included), so the count falls
       only once the window has forgotten every higher proposal. Proposals are recorded before
       they are rate-limited or clamped, as upstream.
    4. Rate: up by at most max(ceil(start x (1 + percent/100)), start + pods) where start is the
       count at the beginning of the last scale_up_period_s (Kubernetes' "select Max" over the
       two default policies, computed from the scale events of that period). The default
       scale-down policy (100 % per 15 s) limits nothing beyond min_replicas.
    5. Clamp to [min_replicas, max_replicas].

    From zero (min_replicas 0, which Kubernetes offers behind the HPAScaleToZero gate): any
    positive metric proposes ceil(metric_total / target) replicas, at most `scale_up_max_pods`
    in the first period; a zero metric keeps zero.

    As in a freshly created HPA, the stabilisation window starts empty: the first decision may
    scale down at once.
    """

    def __init__(self, spec: HPA) -> None:
        self.spec = spec
        self._clock = _Clock()
        #: (time, proposal) within the stabilisation window, oldest first.
        self._proposals: deque[tuple[float, int]] = deque()
        #: (time, replica change) of the decisions that changed the count, oldest first.
        self._events: deque[tuple[float, int]] = deque()
        #: The count the last decision was heading for before the scale-up rate limit: what
        #: this swing will ask for over the next ticks (the engine borrows nodes for it once).
        self.wanted = 0

    @property
    def interval_s(self) -> float:
        """How often the engine should call `decide`."""
        return self.spec.sync_s

    def decide(
        self, now: float, current: int, metric_total: float, ready: int | None = None
    ) -> int:
        """Desired replica count at time `now` (seconds).

        current: replicas ready + starting (+ waiting for nodes); ready: those serving, default
        all of them; metric_total: the metric summed over the service.
        """
        self._clock.tick(now)
        ready = _check_counts(current, ready)
        metric_total = _check_metric(metric_total, "metric_total")
        s = self.spec
        cutoff = now - s.scale_up_period_s
        while self._events and self._events[0][0] <= cutoff:
            self._events.popleft()

        if current > s.max_replicas:
            desired = self.wanted = s.max_replicas
        elif current < s.min_replicas:
            desired = self.wanted = s.min_replicas
        else:
            proposal = self._proposal(current, ready, metric_total)
            desired = self._stabilize(now, current, proposal)
            self.wanted = min(max(desired, s.min_replicas), s.max_replicas)
            if desired > current:
                desired = min(desired, max(self._scale_up_limit(current), current))
            desired = min(max(desired, s.min_replicas), s.max_replicas)
        if desired != current:
            self._events.append((now, desired - current))
        return desired

    def update(self, now: float, current: int, metric: float, ready: int | None = None) -> int:
        """One sync tick; the same call shape as `KPAPolicy.update`."""
        return self.decide(now, current, metric, ready)

    def _proposal(self, current: int, ready: int, total: float) -> int:
        """The metric's recommendation (replica_calculator.go: calcPlainMetricReplicas)."""
        s = self.spec
        if current == 0:
            return ceil_count(total / s.target) if total > 0 else 0
        if ready > 0:
            ratio = total / (ready * s.target)
        else:
            ratio = math.inf if total > 0 else 0.0  # nobody reports yet: up if any demand
        starting = current - ready
        if starting == 0:
            if _within(ratio, s.tolerance):
                return current
            return ceil_count(total / s.target)
        # Starting replicas as Kubernetes' "missing" pods: 0 on a scale-up, target on a
        # scale-down, then the ratio over all `current` replicas.
        counted = total if ratio >= 1.0 else total + starting * s.target
        new_ratio = counted / (current * s.target)
        if (
            _within(new_ratio, s.tolerance)
            or (ratio < 1.0 < new_ratio)
            or (new_ratio < 1.0 < ratio)
        ):
            return current
        proposal = ceil_count(counted / s.target)
        if (new_ratio < 1.0 and proposal > current) or (new_ratio > 1.0 and proposal < current):
            return current
        return proposal

    def _stabilize(self, now: float, current: int, proposal: int) -> int:
        """horizontal.go: stabilizeRecommendationWithBehaviors with a 0 s scale-up window."""
        cutoff = now - self.spec.scale_down_stabilization_s
        while self._proposals and self._proposals[0][0] <= cutoff:
            self._proposals.popleft()
        highest = max([proposal, *(p for _, p in self._proposals)])
        self._proposals.append((now, proposal))
        if proposal > current:
            return proposal
        return min(current, highest)

    def _scale_up_limit(self, current: int) -> int:
        """horizontal.go: calculateScaleUpLimitWithScalingRules with the two default policies."""
        s = self.spec
        added = sum(c for _, c in self._events if c > 0)
        removed = -sum(c for _, c in self._events if c < 0)
        start = current - added + removed
        by_percent = ceil_count(start * (1.0 + s.scale_up_max_percent / 100.0))
        return max(by_percent, start + s.scale_up_max_pods)


class KPAPolicy:
    """Knative's pod autoscaler (pkg/autoscaler/scaling/autoscaler.go: Scale, and the
    scale-to-zero gate of pkg/reconciler/autoscaling/kpa/scaler.go).

    `observe` records the service-wide metric (Knative scrapes it every second; the engine
    observes once per tick, the metric averaged over that tick). `decide` then:

    1. averages the observations of the stable window and of the panic window (a share of it),
       each over the observations it holds (a partial window early on, as Knative's
       WindowAverage), and asks for ceil(average / target) replicas from each;
    2. keeps each within [floor(ready / max_scale_down_rate), ceil(ready x max_scale_up_rate)],
       ready counted as at least 1;
    3. panics when the panic window asks for >= panic_threshold_percent of the ready replicas;
       while panicking it takes the larger of both asks and never goes below the highest count
       it has asked for since panicking began; it leaves panic at the first decision not over
       the threshold more than a stable window after the last one that was;
    4. clamps to [min_replicas, max_replicas];
    5. goes to zero only after a zero ask has lasted scale_to_zero_grace_s (the replicas stay
       as they are meanwhile: Knative does not apply the zero until then). A zero ask needs a
       stable window without traffic, so the last replica goes about stable_window_s +
       scale_to_zero_grace_s after the last request.

    With no observation in the stable window there is nothing to decide on (Knative's "no
    data"): the count stays, clamped.
    """

    def __init__(self, spec: KPA) -> None:
        self.spec = spec
        self._clock = _Clock()
        self._samples: deque[tuple[float, float]] = deque()
        self._panic_since: float | None = None  # Knative's panicTime: last time over threshold
        self._max_panic_pods = 0
        self._zero_since: float | None = None
        self.wanted = 0  # the count before the scale-up rate limit (see HPAPolicy.wanted)

    @property
    def interval_s(self) -> float:
        """How often the engine should call `observe` and `decide`."""
        return self.spec.tick_s

    @property
    def panicking(self) -> bool:
        return self._panic_since is not None

    def observe(self, now: float, metric: float) -> None:
        """Record the service-wide metric at time `now`."""
        metric = _check_metric(metric, "metric")
        self._clock.tick(now)
        self._samples.append((now, metric))
        self._prune(now)

    def averages(self, now: float) -> tuple[float, float] | None:
        """(stable, panic) window averages at `now`, or None without observations."""
        stable_cut = now - self.spec.stable_window_s
        stable = [v for t, v in self._samples if stable_cut < t <= now]
        if not stable:
            return None
        panic_cut = now - self.spec.panic_window_s
        panic = [v for t, v in self._samples if panic_cut < t <= now]
        return sum(stable) / len(stable), (sum(panic) / len(panic) if panic else 0.0)

    def decide(self, now: float, current: int, ready: int | None = None) -> int:
        """Desired replica count at time `now`; `current` and `ready` as for HPAPolicy."""
        self._clock.tick(now)
        ready = _check_counts(current, ready)
        s = self.spec
        self._prune(now)
        avgs = self.averages(now)
        if avgs is None:
            self.wanted = min(max(current, s.min_replicas), s.max_replicas)
            return self.wanted
        stable_avg, panic_avg = avgs

        ready_pods = max(1, ready)
        max_up = math.ceil(s.max_scale_up_rate * ready_pods)
        max_down = math.floor(ready_pods / s.max_scale_down_rate)
        dspc = ceil_count(stable_avg / s.target)
        dppc = ceil_count(panic_avg / s.target)
        stable_pods = min(max(dspc, max_down), max_up)
        panic_pods = min(max(dppc, max_down), max_up)

        over = dppc / ready_pods >= s.panic_threshold_percent / 100.0
        if over:
            self._panic_since = now
        elif self._panic_since is not None and self._panic_since + s.stable_window_s < now:
            self._panic_since = None
            self._max_panic_pods = 0

        desired = stable_pods
        if self._panic_since is not None:
            desired = max(desired, panic_pods, self._max_panic_pods)
            self._max_panic_pods = desired

        desired = min(max(desired, s.min_replicas), s.max_replicas)
        unlimited = max(dspc, dppc) if self._panic_since is not None else dspc
        self.wanted = min(max(desired, unlimited), s.max_replicas)

        if desired == 0 and current > 0:
            if self._zero_since is None:
                self._zero_since = now
            if now - self._zero_since < s.scale_to_zero_grace_s:
                return min(current, s.max_replicas)
        else:
            self._zero_since = None
        return desired

    def update(self, now: float, current: int, metric: float, ready: int | None = None) -> int:
        """One tick: observe the metric, then decide."""
        self.observe(now, metric)
        return self.decide(now, current, ready)

    def _prune(self, now: float) -> None:
        cutoff = now - self.spec.stable_window_s
        while self._samples and self._samples[0][0] <= cutoff:
            self._samples.popleft()


class PlannerPolicy:
    """An SLO planner in the manner of NVIDIA Dynamo's: replicas = ceil(arrival rate / (what one
    replica carries within the SLO x utilization)), the per-replica figure computed once from
    the kernels (engine/fleet.slo_capacity_rps) where Dynamo interpolates profiled throughput
    at its TTFT and ITL targets. Up at once; down only to the highest proposal of the last
    `scale_down_stabilization_s` (this one included); within [min_replicas, max_replicas]. A
    replica that cannot meet the SLO at any load (capacity 0) asks for max_replicas while there
    is traffic."""

    def __init__(self, spec: Planner, capacity_rps: float) -> None:
        self.spec = spec
        self.capacity_rps = capacity_rps
        self._clock = _Clock()
        self._proposals: deque[tuple[float, int]] = deque()
        self.wanted = 0

    @property
    def interval_s(self) -> float:
        return self.spec.sync_s

    def proposal(self, rate_rps: float) -> int:
        """Replicas for an arrival rate, before stabilisation."""
        s = self.spec
        if rate_rps <= 0:
            want = 0
        elif self.capacity_rps <= 0:
            want = s.max_replicas
        else:
            want = ceil_count(rate_rps / (self.capacity_rps * s.utilization))
        return min(max(want, s.min_replicas), s.max_replicas)

    def update(self, now: float, current: int, metric: float, ready: int | None = None) -> int:
        """One sync tick: `metric` is the arrival rate over the last period (requests/s)."""
        self._clock.tick(now)
        _check_counts(current, ready)
        want = self.proposal(_check_metric(metric, "metric"))
        window = self._proposals
        window.append((now, want))
        while window and window[0][0] < now - self.spec.scale_down_stabilization_s:
            window.popleft()
        desired = want if want >= current else min(current, max(p for _, p in window))
        self.wanted = desired
        return desired


def policy_for(
    spec: HPA | KPA | Planner, capacity_rps: float = 0.0
) -> HPAPolicy | KPAPolicy | PlannerPolicy:
    """The decision object for an autoscaler spec (`capacity_rps`: a planner's per-replica
    throughput within the SLO)."""
    if isinstance(spec, HPA):
        return HPAPolicy(spec)
    if isinstance(spec, KPA):
        return KPAPolicy(spec)
    if isinstance(spec, Planner):
        return PlannerPolicy(spec, capacity_rps)
    raise TypeError(f"not an autoscaler spec: {type(spec).__name__}")
