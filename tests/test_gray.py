"""Gray failures and monitoring (issue 19, engine/gray.py), against closed forms.

The scenario: one data-parallel job that holds every node of its pool (so every episode strikes
it), no checkpoint stalls unless a test asks, node failures so rare that none is drawn. Then
what a slow GPU costs is the time its episodes cover times the job's GPUs times (1 - slowdown),
and what a flapping NIC costs follows from the step-time model at 1 / bandwidth_fraction on the
job's rings.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import aifactory_sim as af
from aifactory_sim.errors import ScenarioError
from aifactory_sim.spec.scenario import job_estimate

NODES = 32
GPUS = NODES * 8
RESTART_S = 600.0
HOURS = 3600.0


def scenario(
    gray: dict[str, Any] | None,
    monitoring: dict[str, Any] | None = None,
    *,
    spares: int = 0,
    checkpoint: Any = "none",
    duration: str = "3d",
    queues: list[dict[str, Any]] | None = None,
) -> Any:
    d: dict[str, Any] = {
        "name": "gray",
        "seed": 11,
        "duration": duration,
        "cluster": {
            "node_pools": [
                {"name": "h100", "nodes": NODES + spares, "gpu": "H100-SXM", "nic_gbit_s": 400}
            ],
            "storage": {"read_gb_s": 200, "write_gb_s": 100},
            "spare_nodes": spares,
        },
        "failures": {
            "node_failures_per_1000_node_days": 1e-9,
            "detect_s": 300,
            "restart_s": RESTART_S,
            "gray": gray,
        },
        "training": [
            {
                "name": "j",
                "model": "llama3-8b",
                "tokens": 1e14,
                "seq_len": 8192,
                "global_batch_tokens": "4M",
                "parallel": {"tp": 1, "pp": 1, "dp": GPUS},
                "checkpoint": {"interval": checkpoint, "mode": "sync"},
            }
        ],
    }
    if monitoring is not None:
        d["monitoring"] = monitoring
    if queues is not None:
        d["scheduler"] = {"queues": queues}
    return af.load(d)


def union_s(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of intervals, clipped to [lo, hi]."""
    total, end = 0.0, -math.inf
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in intervals):
        if b <= a:
            continue
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


SLOW = {"per_1000_node_days": 20.0, "slowdown": 0.6, "duration_h": {"kind": "fixed", "value": 5}}


@pytest.fixture(scope="module")
def healthy() -> Any:
    return af.run(scenario(None))


@pytest.fixture(scope="module")
def slow_off() -> Any:
    return af.run(scenario({"slow_gpu": SLOW}))


def test_a_slow_gpu_paces_the_whole_job_and_costs_the_closed_form(
    healthy: Any, slow_off: Any
) -> None:
    """Without detection a job runs at `slowdown` of its speed while any of its GPUs is slow:
    lost GPU-h = covered time x GPUs x (1 - slowdown), and its steps fall short by
    covered time x (1 - slowdown) / step time (relative 1e-9)."""
    res = slow_off
    horizon = res.summary["duration_s"]
    eps = res.gray[res.gray["kind"] == "slow_gpu"]
    assert len(eps) >= 3 and (eps["job"] == "j").all()  # the test needs episodes to check
    assert res.summary["failures"]["count"] == 0
    covered = union_s(list(zip(eps["start_s"], eps["end_s"], strict=True)), RESTART_S, horizon)
    g = res.summary["gray"]["slow_gpu"]
    expect_h = covered * GPUS * (1 - SLOW["slowdown"]) / HOURS
    assert g["lost_gpu_h"] == pytest.approx(expect_h, rel=1e-9)
    assert g["detected"] == 0 and g["episodes"] == len(eps)
    assert res.summary["ledger_gpu_h"]["lost_work"] == pytest.approx(expect_h, rel=1e-9)
    t_step = healthy.summary["training"]["j"]["step_time_s"]
    steps_ok = (horizon - RESTART_S) / t_step
    steps = steps_ok - covered * (1 - SLOW["slowdown"]) / t_step
    assert res.summary["training"]["j"]["steps_done"] == math.floor(steps + 1e-9)
    # the ledger still sums to the cluster's GPU-time
    total = sum(res.summary["ledger_gpu_h"].values())
    assert total == pytest.approx(GPUS * horizon / HOURS, rel=1e-12)


MON = {
    "straggler_detection": {"metric": "step_time", "threshold": 1.15, "window_s": 600},
    "scrape_interval_s": 60,
}


def test_straggler_detection_cordons_at_the_first_scrape_a_window_later() -> None:
    """Each slow episode is found at the first scrape (multiple of 60 s) at or after its
    onset + window, the node is swapped for a spare, the job restarts without detect_s; the
    same seed without monitoring (the twin) loses what the run without it lost."""
    res = af.run(scenario({"slow_gpu": SLOW}, MON, spares=8, checkpoint=1800))
    eps = res.gray[res.gray["kind"] == "slow_gpu"]
    hit = eps[eps["job"] == "j"]
    assert len(hit) >= 3 and hit["detected_s"].notna().all()
    assert (hit["action"] == "cordoned").all()
    onset = hit["start_s"].to_numpy()
    want = np.ceil((onset + 600.0) / 60.0 - 1e-9) * 60.0
    assert np.allclose(hit["detected_s"].to_numpy(), want, rtol=0, atol=1e-6)
    ev = res.events
    swaps = ev[ev["event"] == "swap"]["time_s"].to_numpy()
    assert np.allclose(np.sort(swaps), np.sort(want), atol=1e-6)
    restarts = ev[ev["event"] == "restart"]["time_s"].to_numpy()
    for t in swaps:  # restart_s and the reload after the swap (no detect_s of 300 s)
        after = restarts[restarts > t] - t
        assert after.size and RESTART_S <= after.min() < RESTART_S + 300.0
    g = res.summary["gray"]
    twin = g["without_monitoring"]
    # the twin: the same episodes, nothing found; monitoring saved more than its restarts cost
    assert twin["lost_gpu_h"] > 5 * g["slow_gpu"]["lost_gpu_h"]
    assert twin["saved_gpu_h"] > 0 and twin["extra_tokens_trained"] > 0
    tokens = res.summary["training"]["j"]["tokens_trained"]
    assert twin["extra_tokens_trained"] == pytest.approx(tokens - twin["tokens_trained"])


def test_a_slowdown_under_the_threshold_is_never_acted_on() -> None:
    mild = {**SLOW, "slowdown": 0.9}  # step time x 1.11, under 1.15
    res = af.run(scenario({"slow_gpu": mild}, MON, spares=8, duration="2d"))
    assert res.summary["gray"]["slow_gpu"]["episodes"] > 0
    assert res.summary["gray"]["slow_gpu"]["detected"] == 0
    assert "swap" not in set(res.events["event"])


def test_a_flapping_nic_slows_the_rings_as_the_step_model_says(healthy: Any) -> None:
    """Lost share of the step = 1 - t(healthy) / t(rings at 1 / bandwidth_fraction), from the
    kernel's own step time at that cross-leaf slowdown."""
    frac = 0.05  # at 1/4 of the line rate this job's gradient all-reduce still hides under
    # its backward pass (the step model's overlap): the flap must cut deeper to show
    flap = {"per_1000_node_days": 60.0, "bandwidth_fraction": frac}
    res = af.run(scenario({"link_flap": {**flap, "duration_h": {"kind": "fixed", "value": 4}}}))
    sc = res.scenario
    job, pool = sc.training[0], sc.cluster.node_pools[0]
    t_ok = float(job_estimate(job, pool, cross_leaf_slowdown=1.0).step_time_s)
    t_flap = float(job_estimate(job, pool, cross_leaf_slowdown=1.0 / frac).step_time_s)
    assert t_flap > t_ok * 1.01  # the rings' time shows in the step
    eps = res.gray[res.gray["kind"] == "link_flap"]
    covered = union_s(
        list(zip(eps["start_s"], eps["end_s"], strict=True)), RESTART_S, res.summary["duration_s"]
    )
    assert covered > 0
    lost = res.summary["gray"]["link_flap"]["lost_gpu_h"]
    assert lost == pytest.approx(covered * GPUS * (1 - t_ok / t_flap) / HOURS, rel=1e-9)
    assert healthy.summary["training"]["j"]["step_time_s"] == pytest.approx(t_ok, rel=1e-12)


SDC = {"silent_corruption": {"per_1000_node_days": 40.0}}


def test_silent_corruption_rolls_back_to_the_last_clean_checkpoint() -> None:
    """Found at the first validation step after it (within N steps); the work lost is the
    training since the last checkpoint taken before it, which is at least the time since the
    corruption and at most that plus one interval."""
    every, interval = 100, 3600.0
    res = af.run(scenario(SDC, {"validation_every_steps": every}, spares=8, checkpoint=interval))
    eps = res.gray[(res.gray["kind"] == "silent_corruption") & (res.gray["job"] == "j")]
    assert len(eps) >= 2
    t_step = res.summary["training"]["j"]["step_time_s"]
    found = eps.dropna(subset=["detected_s"])
    assert len(found) >= 2 and (found["action"] == "rolled-back").all()
    delay = (found["detected_s"] - found["start_s"]).to_numpy()
    assert (delay > 0).all() and (delay <= every * t_step * 1.05).all()
    g = res.summary["gray"]["silent_corruption"]
    floor = GPUS * delay.sum() / HOURS * 0.95  # stalls for checkpoints are not training
    ceiling = GPUS * (delay + interval).sum() / HOURS
    assert floor <= g["lost_gpu_h"] <= ceiling
    assert (res.events["event"] == "rollback").sum() == len(found)


def test_silent_corruption_without_validation_is_never_found() -> None:
    res = af.run(scenario(SDC, None, duration="2d"))
    g = res.summary["gray"]["silent_corruption"]
    first = res.gray[res.gray["job"] == "j"]["start_s"].min()
    assert g["detected"] == 0 and g["undetected_jobs"] == 1 and g["lost_gpu_h"] == 0.0
    t_step = res.summary["training"]["j"]["step_time_s"]
    assert g["corrupt_steps"] == pytest.approx((res.summary["duration_s"] - first) / t_step)


def test_gray_failures_are_reproducible_and_leave_a_run_without_them_alone(healthy: Any) -> None:
    a = af.run(scenario({"slow_gpu": SLOW}, MON, spares=4, duration="1d"))
    b = af.run(scenario({"slow_gpu": SLOW}, MON, spares=4, duration="1d"))
    assert a.summary == b.summary
    assert "gray" not in healthy.summary and healthy.gray.empty


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("slowdown", 0.0, "failures.gray.slow_gpu.slowdown"),
        ("slowdown", 1.5, "failures.gray.slow_gpu.slowdown"),
        ("per_1000_node_days", -1, "failures.gray.slow_gpu.per_1000_node_days"),
    ],
)
def test_a_bad_gray_field_is_refused_naming_it(field: str, value: Any, where: str) -> None:
    with pytest.raises(ScenarioError) as err:
        scenario({"slow_gpu": {**SLOW, field: value}})
    assert where in str(err.value)


def test_the_report_shows_gray_failures_and_queues(tmp_path: Any) -> None:
    """The report's operations sections carry the summary's figures (work lost by kind, the
    detection delays, each queue's use against its quota)."""
    from aifactory_sim.report import write_report

    sc = scenario(
        {"slow_gpu": SLOW},
        MON,
        spares=8,
        checkpoint=1800,
        duration="1d",
        queues=[{"name": "ml", "quota_gpus": GPUS}],
    )
    res = af.run(sc)
    folder = res.save(tmp_path / "run", plots=False)
    page = write_report(folder).read_text()
    g = res.summary["gray"]["slow_gpu"]
    assert "Gray failures and monitoring" in page
    assert f"{g['lost_gpu_h']:,.1f}" in page and f">{g['detected']}<" in page
    saved = res.summary["gray"]["without_monitoring"]["saved_gpu_h"]
    assert f"monitoring saved {saved:,.1f} GPU-h" in page
    q = res.summary["queues"]["ml"]
    assert "Queues against their quotas" in page and q["peak_gpus"] == GPUS
    assert f"{q['mean_gpus']:,.1f}" in page
