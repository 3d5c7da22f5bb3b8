"""Autoscaler settings of an inference service: Kubernetes' HPA or Knative's KPA.

Field names follow shared/examples/factory.yaml (`inference.autoscaler`). Defaults are the
upstream ones, so that a scenario that names only the target behaves like a stock cluster:

- HPA: Kubernetes "Horizontal Pod Autoscaling", sections "Algorithm details" and "Default
  Behavior" (https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/), and
  the controller it describes (kubernetes/pkg/controller/podautoscaler/horizontal.go,
  replica_calculator.go): tolerance 0.1 (kube-controller-manager flag
  --horizontal-pod-autoscaler-tolerance), sync period 15 s (flag
  --horizontal-pod-autoscaler-sync-period), scale-down stabilisation window 300 s, scale-up
  policies "100 % or 4 pods per 15 s, whichever is larger" (selectPolicy Max), scale-down
  policy 100 % per 15 s (no limit beyond min_replicas).
- KPA: Knative Serving "Configuring the autoscaler" / "Additional autoscaling configuration for
  Knative Pod Autoscaler" (https://knative.dev/docs/serving/autoscaling/kpa-specific/), the
  `config-autoscaler` ConfigMap and knative/serving pkg/autoscaler/scaling/autoscaler.go:
  stable-window 60 s, panic-window-percentage 10, panic-threshold-percentage 200,
  scale-to-zero-grace-period 30 s, max-scale-up-rate 1000, max-scale-down-rate 2, tick 2 s; the
  accepted ranges are Knative's own (config.go validation).

The decision logic lives in engine/autoscaler.py; these models only hold and check settings.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .base import NonNegativeDurationS, PositiveDurationS, Spec

#: What each metric means; `target` is always per replica.
METRICS = {
    "concurrency": "requests in flight (queued at or running on a replica), per replica",
    "queue": "requests waiting for admission (router and replica queues), per replica",
    "rps": "request arrivals per second, per replica",
}


def _check_bounds(min_replicas: int, max_replicas: int) -> None:
    if max_replicas < min_replicas:
        raise ValueError(
            f"max_replicas={max_replicas} is below min_replicas={min_replicas}; "
            "allowed: max_replicas >= min_replicas"
        )


class HPA(Spec):
    """Kubernetes Horizontal Pod Autoscaler on a per-replica average (an `AverageValue` target).

    desired = ceil(current x metric_per_replica / target), skipped within `tolerance`, limited
    on the way up by the scale-up policies and held on the way down by the stabilisation window
    (the highest recommendation of the last `scale_down_stabilization_s`).
    """

    kind: Literal["hpa"] = "hpa"
    metric: Literal["concurrency", "queue", "rps"] = Field(
        "concurrency", description="; ".join(f"{k}: {v}" for k, v in METRICS.items())
    )
    target: float = Field(gt=0, description="target value of the metric per replica")
    min_replicas: int = Field(
        1, ge=0, description="Kubernetes' default 1; 0 allows scale to zero (HPAScaleToZero)"
    )
    max_replicas: int = Field(ge=1, description="never more replicas")
    tolerance: float = Field(
        0.1, ge=0, lt=1, description="no change while |metric / target - 1| <= tolerance"
    )
    sync_s: PositiveDurationS = Field(15.0, description="period between two decisions")
    scale_down_stabilization_s: NonNegativeDurationS = Field(
        300.0,
        le=3600,
        description="scale down to the highest recommendation of this window (Kubernetes <= 1 h)",
    )
    scale_up_max_percent: float = Field(
        100.0, gt=0, description="Percent policy: at most +this % per scale_up_period_s"
    )
    scale_up_max_pods: int = Field(
        4, gt=0, description="Pods policy: at most +this many per scale_up_period_s"
    )
    scale_up_period_s: PositiveDurationS = Field(
        15.0, le=1800, description="period of both scale-up policies (Kubernetes <= 1800 s)"
    )

    @model_validator(mode="after")
    def _check(self) -> HPA:
        _check_bounds(self.min_replicas, self.max_replicas)
        return self


class KPA(Spec):
    """Knative Pod Autoscaler: stable and panic windows over the service-wide metric.

    desired = ceil(window average / target); the panic window (a `panic_window_percent` share
    of the stable window) takes over, and forbids scaling down, once it asks for
    `panic_threshold_percent` of the ready replicas.
    """

    kind: Literal["kpa"] = "kpa"
    metric: Literal["concurrency", "rps"] = Field(
        "concurrency",
        description="; ".join(f"{k}: {v}" for k, v in METRICS.items() if k != "queue"),
    )
    target: float = Field(gt=0, description="target value of the metric per replica")
    min_replicas: int = Field(0, ge=0, description="Knative's min-scale; 0 allows scale to zero")
    max_replicas: int = Field(ge=1, description="Knative's max-scale; never more replicas")
    stable_window_s: PositiveDurationS = Field(
        60.0, ge=6, le=3600, description="averaging window in stable mode (Knative: 6 s to 1 h)"
    )
    panic_window_percent: float = Field(
        10.0, ge=1, le=100, description="panic window as a share of the stable window"
    )
    panic_threshold_percent: float = Field(
        200.0,
        ge=110,
        le=1000,
        description="panic when the panic window asks for this share of the ready replicas",
    )
    scale_to_zero_grace_s: NonNegativeDurationS = Field(
        30.0, description="a zero recommendation must last this long before the last replica goes"
    )
    max_scale_up_rate: float = Field(
        1000.0, gt=1, description="at most this factor x ready replicas per decision"
    )
    max_scale_down_rate: float = Field(
        2.0, gt=1, description="at least ready replicas / this factor per decision"
    )
    tick_s: PositiveDurationS = Field(2.0, description="period between two decisions")

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percent / 100.0

    @model_validator(mode="after")
    def _check(self) -> KPA:
        _check_bounds(self.min_replicas, self.max_replicas)
        if self.tick_s > self.panic_window_s:
            raise ValueError(
                f"tick_s={self.tick_s:g} is longer than the panic window "
                f"({self.stable_window_s:g} s x {self.panic_window_percent:g} % = "
                f"{self.panic_window_s:g} s), which would then hold no observation; "
                f"allowed: tick_s <= {self.panic_window_s:g}"
            )
        return self


class Planner(Spec):
    """An SLO planner, after NVIDIA Dynamo's: it sizes a pool from the arrival rate and what
    one replica can carry within the service's SLO, computed from the kernels: a prefill pool
    (or a disaggregated service's prefill replicas) on `slo.ttft_s`, a decode pool on
    `slo.tpot_s`, an aggregated pool on both (engine/autoscaler.PlannerPolicy)."""

    kind: Literal["planner"] = "planner"
    target: Literal["slo"] = Field("slo", description="what it sizes against: the service's slo")
    min_replicas: int = Field(1, ge=0, description="never fewer replicas")
    max_replicas: int = Field(ge=1, description="never more replicas")
    utilization: float = Field(
        0.8,
        gt=0,
        le=1,
        description="share of a replica's SLO-bound throughput it is sized to carry (headroom "
        "for bursts and queueing)",
    )
    sync_s: PositiveDurationS = Field(60.0, description="period between two decisions")
    scale_down_stabilization_s: NonNegativeDurationS = Field(
        300.0, description="scale down only to the highest proposal of this window"
    )

    @property
    def metric(self) -> str:
        return "rps"

    @model_validator(mode="after")
    def _check(self) -> Planner:
        _check_bounds(self.min_replicas, self.max_replicas)
        return self


Autoscaler = Annotated[HPA | KPA | Planner, Field(discriminator="kind")]
