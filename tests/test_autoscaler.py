"""Autoscaler decisions: each documented Kubernetes / Knative rule pinned on a small hand-computed
case, then properties over random settings and metric histories."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from aifactory_sim.engine.autoscaler import HPAPolicy, KPAPolicy, ceil_count, policy_for
from aifactory_sim.spec.autoscaling import HPA, KPA, Autoscaler

AUTOSCALER: TypeAdapter[HPA | KPA] = TypeAdapter(Autoscaler)


def hpa(**kw: Any) -> HPAPolicy:
    return HPAPolicy(HPA(**{"target": 10, "min_replicas": 1, "max_replicas": 100, **kw}))


def kpa(**kw: Any) -> KPAPolicy:
    return KPAPolicy(KPA(**{"target": 10, "max_replicas": 100, **kw}))


# --- settings ----------------------------------------------------------------------------------


def test_example_factory_block_loads_with_kubernetes_defaults() -> None:
    spec = AUTOSCALER.validate_python(
        {
            "kind": "hpa",
            "metric": "concurrency",
            "target": 128,
            "min_replicas": 8,
            "max_replicas": 256,
            "tolerance": 0.1,
            "sync_s": 15,
            "scale_down_stabilization_s": 300,
        }
    )
    assert isinstance(spec, HPA)
    assert (spec.scale_up_max_percent, spec.scale_up_max_pods, spec.scale_up_period_s) == (
        100.0,
        4,
        15.0,
    )
    assert isinstance(policy_for(spec), HPAPolicy)


def test_kpa_defaults_are_knatives() -> None:
    spec = AUTOSCALER.validate_python({"kind": "kpa", "target": 70, "max_replicas": 10})
    assert isinstance(spec, KPA)
    assert spec.stable_window_s == 60.0
    assert spec.panic_window_s == pytest.approx(6.0)
    assert spec.panic_threshold_percent == 200.0
    assert spec.scale_to_zero_grace_s == 30.0
    assert (spec.max_scale_up_rate, spec.max_scale_down_rate, spec.tick_s) == (1000.0, 2.0, 2.0)
    assert spec.min_replicas == 0
    assert isinstance(policy_for(spec), KPAPolicy)


def test_durations_take_units() -> None:
    spec = AUTOSCALER.validate_python(
        {"kind": "hpa", "target": 1, "max_replicas": 4, "scale_down_stabilization_s": "5min"}
    )
    assert isinstance(spec, HPA)
    assert spec.scale_down_stabilization_s == 300.0


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"kind": "hpa", "target": 1, "min_replicas": 5, "max_replicas": 2}, "max_replicas >="),
        ({"kind": "hpa", "target": 0, "max_replicas": 2}, "greater than 0"),
        ({"kind": "hpa", "target": 1, "max_replicas": 2, "metric": "cpu"}, "'queue'"),
        ({"kind": "kpa", "target": 1, "max_replicas": 2, "metric": "queue"}, "'rps'"),
        ({"kind": "kpa", "target": 1, "max_replicas": 2, "tick_s": 10}, "panic window"),
        ({"kind": "kpa", "target": 1, "max_replicas": 2, "max_scale_down_rate": 1}, "greater"),
        ({"kind": "hpa", "target": 1, "max_replicas": 2, "tolerance": 1.5}, "less than 1"),
        ({"kind": "hpa", "target": 1, "max_replicas": 2, "sync": 15}, "Extra inputs"),
        ({"kind": "vpa", "target": 1, "max_replicas": 2}, "'hpa', 'kpa'"),
    ],
)
def test_bad_settings_are_refused_clearly(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        AUTOSCALER.validate_python(data)


def test_ceil_count_ignores_float_noise_only() -> None:
    assert ceil_count(3 * (0.1 / 0.1)) == 3
    assert ceil_count(0.1 * 3 / 0.1) == 3  # 3.0000000000000004
    assert ceil_count(3.001) == 4
    assert ceil_count(0.0) == 0


# --- HPA: the proposal ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "desired"),
    [
        (100, 10),  # ratio 1
        (109, 10),  # ratio 1.09: within 0.1
        (110, 10),  # ratio 1.1: the edge is within
        (111, 12),  # ratio 1.11: ceil(11.1)
        (91, 10),  # 0.91: within
        (90, 10),  # 0.9: the edge is within
        (89, 9),  # 0.89: ceil(8.9); a fresh HPA has no window history yet
    ],
)
def test_hpa_tolerance_band(total: float, desired: int) -> None:
    assert hpa().decide(0.0, 10, total) == desired


def test_hpa_desired_is_ceil_of_current_times_ratio() -> None:
    # 7 replicas at 23 requests each against a target of 10: ceil(7 x 2.3) = ceil(16.1) = 17
    assert hpa(scale_up_max_pods=100).decide(0.0, 7, 7 * 23) == 17


def test_hpa_starting_replicas_absorb_a_scale_up() -> None:
    # 5 ready at 20 each (ratio 2) while 5 more are starting: the starting ones count at 0,
    # 100 / (10 x 10) = 1.0, so no more replicas are asked for.
    assert hpa().decide(0.0, 10, 100.0, ready=5) == 10
    # at 30 each: 150 / 100 = 1.5 -> ceil(15) = 15 (not ceil(5 x 3) = 15 + the 5 starting)
    assert hpa().decide(0.0, 10, 150.0, ready=5) == 15


def test_hpa_starting_replicas_are_kept_on_a_dip() -> None:
    # 5 ready at 4 each (ratio 0.4), 5 starting: those count at the target, (20 + 50) / 100 =
    # 0.7 -> 7, where ignoring them would ask for ceil(20 / 10) = 2.
    assert hpa().decide(0.0, 10, 20.0, ready=5) == 7


def test_hpa_with_none_ready_scales_up_on_demand_only() -> None:
    assert hpa().decide(0.0, 4, 0.0, ready=0) == 4
    # 100 requests, 4 starting at 0: ceil(100 / 10) = 10, limited to max(2 x 4, 4 + 4) = 8
    assert hpa().decide(0.0, 4, 100.0, ready=0) == 8
    assert hpa().decide(0.0, 4, 45.0, ready=0) == 5  # 45 / 40 = 1.125 -> ceil(4.5)
    assert hpa().decide(0.0, 4, 44.0, ready=0) == 4  # 44 / 40 = 1.1: within tolerance


# --- HPA: scale-up policies -------------------------------------------------------------------


def test_hpa_scale_up_limit_is_the_larger_of_100_percent_and_4_pods_per_period() -> None:
    p = hpa()
    # wants 150 (max 100): from 2 -> max(4, 6) = 6, then doubling once 2 x c exceeds c + 4
    got = [p.decide(15.0 * k, c, 1500.0) for k, c in enumerate([2, 6, 12, 24, 48, 96])]
    assert got == [6, 12, 24, 48, 96, 100]


def test_hpa_wanted_is_the_decision_before_the_rate_limit() -> None:
    # The same climb: each tick is rate-limited, but the count it heads for (what the engine
    # borrows nodes for in one go) is the metric's 150, clamped to max_replicas = 100.
    p = hpa()
    for k, c in enumerate([2, 6, 12]):
        p.decide(15.0 * k, c, 1500.0)
        assert p.wanted == 100


def test_hpa_tolerance_can_stop_a_climb_short_of_the_ceiling() -> None:
    # 96 replicas for 1000 requests at 10 each: 1000 / 960 = 1.04 is within tolerance
    assert hpa().decide(0.0, 96, 1000.0) == 96
    assert hpa(tolerance=0).decide(0.0, 96, 1000.0) == 100


def test_hpa_scale_up_limit_counts_the_whole_period() -> None:
    p = hpa()
    assert p.decide(0.0, 1, 1000.0) == 5  # 1 + 4
    assert p.decide(5.0, 5, 1000.0) == 5  # the period that began at 1 replica allows 5
    assert p.decide(10.0, 5, 1000.0) == 5
    assert p.decide(15.0, 5, 1000.0) == 10  # the event at t=0 left the (0, 15] window
    # a period starting from the count before a scale-down: 10 -> 2 at t=30, then up again
    q = hpa()
    assert q.decide(30.0, 10, 20.0) == 2
    assert q.decide(35.0, 2, 1000.0) == 20  # start = 2 + 8 removed = 10 -> max(20, 14)


def test_hpa_scale_up_policy_settings() -> None:
    p = hpa(scale_up_max_percent=50, scale_up_max_pods=1, scale_up_period_s=60)
    assert p.decide(0.0, 10, 1000.0) == 15  # max(ceil(15), 11)
    assert p.decide(15.0, 15, 1000.0) == 15  # the 60 s period still started at 10
    assert p.decide(60.0, 15, 1000.0) == 23  # ceil(22.5)


# --- HPA: scale-down stabilisation ------------------------------------------------------------


def test_hpa_scale_down_waits_for_the_window_and_takes_its_highest_proposal() -> None:
    p = hpa()
    assert p.decide(0.0, 10, 100.0) == 10  # proposal 10
    assert p.decide(15.0, 10, 80.0) == 10  # proposal 8, held by the 10
    for t in range(30, 300, 15):
        assert p.decide(float(t), 10, 60.0) == 10  # proposal 6, held by the 10
    assert p.decide(300.0, 10, 60.0) == 8  # the 10 (t=0) left; the 8 (t=15) is the highest
    assert p.decide(315.0, 8, 60.0) == 6  # 60 / 80 = 0.75 -> 6; the 8 left too


def test_hpa_scale_up_is_not_stabilised() -> None:
    p = hpa()
    assert p.decide(0.0, 10, 50.0) == 5
    assert p.decide(15.0, 5, 100.0) == 10  # at once, despite the window


def test_hpa_zero_window_scales_down_at_once() -> None:
    p = hpa(scale_down_stabilization_s=0)
    assert p.decide(0.0, 10, 100.0) == 10
    assert p.decide(15.0, 10, 30.0) == 3


# --- HPA: bounds ------------------------------------------------------------------------------


def test_hpa_clamps_to_min_and_max() -> None:
    assert hpa(min_replicas=3).decide(0.0, 4, 0.0) == 3
    assert hpa(max_replicas=7).decide(0.0, 6, 1e6) == 7
    # out of bounds goes straight to the bound, without policies
    assert hpa(max_replicas=20).decide(0.0, 50, 1e6) == 20
    assert hpa(min_replicas=30).decide(0.0, 2, 0.0) == 30


def test_hpa_scale_from_zero() -> None:
    p = hpa(min_replicas=0)
    assert p.decide(0.0, 0, 0.0) == 0
    assert p.decide(15.0, 0, 55.0) == 4  # wants ceil(5.5) = 6; from 0 the Pods policy gives 4
    assert p.decide(30.0, 4, 55.0) == 6


def test_hpa_scale_to_zero_after_the_window() -> None:
    p = hpa(min_replicas=0)
    assert p.decide(0.0, 2, 20.0) == 2
    assert p.decide(15.0, 2, 0.0) == 2
    assert p.decide(300.0, 2, 0.0) == 0


def test_hpa_refuses_impossible_inputs() -> None:
    p = hpa()
    with pytest.raises(ValueError, match="ready=5"):
        p.decide(0.0, 3, 1.0, ready=5)
    with pytest.raises(ValueError, match="metric_total"):
        p.decide(0.0, 3, -1.0)
    with pytest.raises(ValueError, match="metric_total"):
        p.decide(0.0, 3, math.nan)
    p.decide(10.0, 3, 1.0)
    with pytest.raises(ValueError, match="backwards"):
        p.decide(5.0, 3, 1.0)


# --- KPA --------------------------------------------------------------------------------------


def test_kpa_window_averages() -> None:
    p = kpa()
    for t, v in zip(range(0, 12, 2), [0, 0, 0, 30, 60, 90], strict=True):
        p.observe(float(t), float(v))
    stable, panic = p.averages(10.0) or (math.nan, math.nan)
    assert stable == pytest.approx(30.0)  # 180 / 6
    assert panic == pytest.approx(60.0)  # (4, 10]: (30 + 60 + 90) / 3
    # at t=64 the stable window (4, 64] has dropped every sample but t=6, 8, 10
    assert p.averages(64.0) == (pytest.approx(60.0), 0.0)


def test_kpa_stable_mode_is_ceil_of_average_over_target() -> None:
    p = kpa()
    assert p.update(0.0, 10, 95.0) == 10
    assert p.update(2.0, 10, 101.0) == 10  # average 98 -> 10
    assert p.update(4.0, 10, 131.0) == 11  # average 109 -> 11; panic 109 / 10 < 2
    assert not p.panicking


def test_kpa_no_data_keeps_the_count() -> None:
    assert kpa().decide(0.0, 3) == 3
    assert kpa(min_replicas=5).decide(0.0, 3) == 5


def test_kpa_panic_entry_no_scale_down_and_exit_after_a_stable_window() -> None:
    p = kpa()
    # 2 replicas, 100 in flight: the panic window asks for 10 = 5 x ready >= 200 %
    assert p.update(0.0, 2, 100.0) == 10
    assert p.panicking
    # traffic stops; stable and panic windows ask for 5, then less; panic holds 10
    for t in range(2, 61, 2):
        assert p.update(float(t), 10, 0.0) == 10, t
        assert p.panicking
    # the first decision more than 60 s after the last over-threshold one (t=0) un-panics;
    # the stable window (2, 62] is all zeros, the down rate allows floor(10 / 2) = 5
    assert p.update(62.0, 10, 0.0) == 5
    assert not p.panicking


def test_kpa_panic_is_extended_while_over_threshold_and_ratchets_up() -> None:
    p = kpa()
    assert p.update(0.0, 2, 100.0) == 10
    assert p.update(2.0, 10, 0.0) == 10
    # a second surge at t=30: the panic window (24, 30] holds t=26, 28, 30 -> 900 / 3 = 300
    for t in range(4, 30, 2):
        p.update(float(t), 10, 0.0)
    assert p.update(30.0, 10, 900.0) == 30  # panic average 300 -> 30 = 3 x ready: re-armed
    assert p.update(32.0, 30, 0.0) == 30  # ratchet: no way down while panicking
    for t in range(34, 91, 2):
        assert p.update(float(t), 30, 0.0) == 30, t
    assert p.update(92.0, 30, 0.0) == 15  # 92 > 30 + 60: out of panic, down by half
    assert not p.panicking


def test_kpa_panic_threshold_is_relative_to_ready_replicas() -> None:
    p = kpa()
    # 10 replicas, 4 ready: 60 in flight asks for 6 = 1.5 x ready: not a panic
    assert p.update(0.0, 10, 60.0, ready=4) == 6
    assert not p.panicking
    q = kpa()
    assert q.update(0.0, 10, 80.0, ready=4) == 8  # 8 = 2 x ready: panic, ask for 8
    assert q.panicking


def test_kpa_rate_limits() -> None:
    # down: at most halving per decision (max_scale_down_rate 2)
    p = kpa(min_replicas=1)
    assert p.update(0.0, 10, 0.0) == 5
    assert p.update(2.0, 5, 0.0) == 2
    assert p.update(4.0, 2, 0.0) == 1
    # up: at most max_scale_up_rate x ready, ready counted as at least 1
    q = kpa(max_scale_up_rate=1.5)
    assert q.update(0.0, 4, 1000.0) == 6
    r = kpa(max_scale_up_rate=1.5)
    assert r.update(0.0, 3, 1000.0, ready=0) == 2


def test_kpa_clamps() -> None:
    assert kpa(max_replicas=7).update(0.0, 4, 1e6) == 7
    assert kpa(min_replicas=3).update(0.0, 4, 0.0) == 3


def test_kpa_scale_to_zero_waits_for_the_grace_period() -> None:
    p = kpa()
    # one request's worth of traffic at t=0, nothing after
    assert p.update(0.0, 1, 5.0) == 1
    for t in range(2, 60, 2):
        assert p.update(float(t), 1, 0.0) == 1, t  # the stable window still holds traffic
    # t=60: the window (0, 60] is empty of traffic; zero asked, the grace period starts
    for t in range(60, 90, 2):
        assert p.update(float(t), 1, 0.0) == 1, t
    assert p.update(90.0, 1, 0.0) == 0  # stable window + grace after the last request
    assert p.update(92.0, 0, 0.0) == 0


def test_kpa_grace_period_restarts_when_traffic_returns() -> None:
    p = kpa(scale_to_zero_grace_s=10)
    assert p.update(0.0, 1, 0.0) == 1  # zero asked: grace until t=10
    assert p.update(8.0, 1, 0.0) == 1
    assert p.update(9.0, 1, 5.0) == 1  # traffic: the ask is 1 again
    for t in range(10, 69, 2):
        assert p.update(float(t), 1, 0.0) == 1, t
    assert p.update(70.0, 1, 0.0) == 1  # (10, 70]: no traffic, a new grace period from here
    assert p.update(78.0, 1, 0.0) == 1
    assert p.update(80.0, 1, 0.0) == 0


def test_kpa_scale_from_zero() -> None:
    p = kpa()
    assert p.update(0.0, 0, 0.0) == 0
    # both windows hold the samples 0 and 25: 12.5 -> ceil(1.25) = 2 replicas; no replica is
    # ready (counted as 1), so 2 / 1 >= 200 %: a panic, which asks for the same 2
    assert p.update(2.0, 0, 25.0) == 2
    assert p.panicking


def test_kpa_refuses_impossible_inputs() -> None:
    p = kpa()
    with pytest.raises(ValueError, match="metric"):
        p.observe(0.0, -1.0)
    p.observe(5.0, 1.0)
    with pytest.raises(ValueError, match="backwards"):
        p.decide(4.0, 1)


# --- properties -------------------------------------------------------------------------------


@st.composite
def hpa_specs(draw: st.DrawFn, tolerance: float | None = None) -> HPA:
    lo = draw(st.integers(0, 20))
    hi = draw(st.integers(max(lo, 1), 200))
    return HPA(
        target=draw(st.floats(0.5, 200.0)),
        min_replicas=lo,
        max_replicas=hi,
        tolerance=draw(st.floats(0.0, 0.5)) if tolerance is None else tolerance,
        scale_up_max_percent=draw(st.sampled_from([10.0, 50.0, 100.0, 300.0])),
        scale_up_max_pods=draw(st.integers(1, 8)),
    )


@st.composite
def kpa_specs(draw: st.DrawFn) -> KPA:
    lo = draw(st.integers(0, 20))
    hi = draw(st.integers(max(lo, 1), 200))
    return KPA(
        target=draw(st.floats(0.5, 200.0)),
        min_replicas=lo,
        max_replicas=hi,
        max_scale_down_rate=draw(st.sampled_from([1.5, 2.0, 10.0])),
        scale_to_zero_grace_s=draw(st.sampled_from([0.0, 30.0])),
    )


steps = st.lists(
    st.tuples(
        st.floats(0.0, 120.0),  # time since the previous decision
        st.integers(0, 300),  # current
        st.floats(0.0, 1.0),  # ready share
        st.floats(0.0, 1e5),  # metric
    ),
    min_size=1,
    max_size=40,
)


@given(hpa_specs(), steps)
def test_hpa_stays_within_bounds(spec: HPA, history: list[tuple[float, int, float, float]]) -> None:
    p, now = HPAPolicy(spec), 0.0
    for dt, current, share, metric in history:
        now += dt
        desired = p.decide(now, current, metric, ready=int(current * share))
        assert spec.min_replicas <= desired <= spec.max_replicas


@given(kpa_specs(), steps)
def test_kpa_stays_within_bounds(spec: KPA, history: list[tuple[float, int, float, float]]) -> None:
    p, now = KPAPolicy(spec), 0.0
    for dt, current, share, metric in history:
        now += dt
        desired = p.update(now, current, metric, ready=int(current * share))
        assert spec.min_replicas <= desired <= spec.max_replicas


def up_steps(start: int, goal: int, spec: HPA) -> int:
    """Sync periods the scale-up policies need from `start` to `goal` (one decision per period)."""
    n, c = 0, start
    while c < goal:
        c = max(math.ceil(c * (1 + spec.scale_up_max_percent / 100)), c + spec.scale_up_max_pods)
        n += 1
    return n


def run_hpa(spec: HPA, start: int, total: float, periods: int) -> list[int]:
    """Replica counts over `periods` sync periods of a constant metric, replicas ready at once."""
    p, current, counts = HPAPolicy(spec), start, []
    for k in range(periods):
        current = p.decide(k * spec.sync_s, current, total)
        counts.append(current)
    return counts


def settle_bound(spec: HPA, start: int, goal: int) -> int:
    """Decisions within which a constant metric must have settled: one to enter the bounds, one
    to scale down (a fresh window holds nothing higher), and the scale-up policies' periods."""
    inside = min(max(start, spec.min_replicas), spec.max_replicas)
    return 2 + up_steps(inside, goal, spec)


@settings(max_examples=200)
@given(hpa_specs(tolerance=0.0), st.integers(0, 300), st.floats(0.0, 2e4))
def test_hpa_converges_to_ceil_of_metric_over_target(spec: HPA, start: int, total: float) -> None:
    goal = min(max(ceil_count(total / spec.target), spec.min_replicas), spec.max_replicas)
    bound = settle_bound(spec, start, goal)
    counts = run_hpa(spec, start, total, bound + 25)  # 25 periods > the 300 s window
    assert counts[bound - 1] == goal, counts
    assert set(counts[bound - 1 :]) == {goal}


@settings(max_examples=200)
@given(hpa_specs(), st.integers(0, 300), st.floats(0.0, 2e4))
def test_hpa_constant_metric_settles_without_flapping(spec: HPA, start: int, total: float) -> None:
    goal = min(max(ceil_count(total / spec.target), spec.min_replicas), spec.max_replicas)
    bound = settle_bound(spec, start, goal)
    counts = run_hpa(spec, start, total, bound + 25)
    # one direction only (a move into the bounds goes the same way as the goal): no flapping
    moves = [b - a for a, b in zip([start, *counts], counts, strict=False) if b != a]
    assert all(m > 0 for m in moves) or all(m < 0 for m in moves), counts
    final = counts[bound - 1]
    assert set(counts[bound - 1 :]) == {final}
    # settled at the goal, or inside the tolerance band short of it
    in_band = (
        spec.min_replicas <= final <= spec.max_replicas
        and final > 0
        and abs(total / (final * spec.target) - 1) <= spec.tolerance + 1e-9
    )
    assert final == goal or in_band, (final, goal, counts)


@settings(max_examples=200)
@given(kpa_specs(), st.integers(0, 300), st.floats(0.0, 2e4))
def test_kpa_constant_metric_settles_without_flapping(spec: KPA, start: int, metric: float) -> None:
    goal = min(max(ceil_count(metric / spec.target), spec.min_replicas), spec.max_replicas)
    p, current, counts = KPAPolicy(spec), start, []
    ticks = 200  # 400 s: halving from 300 (9 ticks) + stable window + grace + panic exit
    for k in range(ticks):
        current = p.update(k * spec.tick_s, current, metric)
        counts.append(current)
    moves = [b - a for a, b in zip([start, *counts], counts, strict=False) if b != a]
    assert all(m > 0 for m in moves) or all(m < 0 for m in moves), counts
    assert counts[-60:] == [goal] * 60, (goal, counts)
