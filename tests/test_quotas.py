"""Teams' queues with quotas, borrowing, reclaiming and fair share (issue 19, engine/quotas.py).

A 32-node (256-GPU) cluster shared by two queues of 128 GPUs each; every job is 16 nodes (128
GPUs), so each step of the story below is a whole quota.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import aifactory_sim as af
from aifactory_sim.errors import ScenarioError

GPUS = 128  # one job, one quota


def job(
    name: str, queue: str, submit_s: float = 0.0, tokens: float = 4e12, gpus: int = GPUS
) -> dict[str, Any]:
    return {
        "name": name,
        "model": "llama3-8b",
        "tokens": tokens,
        "seq_len": 8192,
        "global_batch_tokens": "4M",
        "parallel": {"tp": 1, "pp": 1, "dp": gpus},
        "queue": queue,
        "submit_at": submit_s,
        "checkpoint": {"interval": 1800, "mode": "sync"},
    }


def scenario(
    jobs: list[dict[str, Any]],
    *,
    borrow: tuple[bool, bool] = (True, False),
    policy: str = "fifo",
    duration: str = "2d",
    limit: int | None = None,
) -> Any:
    return af.load(
        {
            "name": "quotas",
            "seed": 2,
            "duration": duration,
            "cluster": {
                "node_pools": [{"name": "h100", "nodes": 32, "gpu": "H100-SXM"}],
                "storage": {"read_gb_s": 200, "write_gb_s": 100},
            },
            "scheduler": {
                "policy": policy,
                "preemption_grace_s": 600,
                "queues": [
                    {
                        "name": "a",
                        "quota_gpus": GPUS,
                        "can_borrow": borrow[0],
                        "borrowing_limit_gpus": limit,
                    },
                    {"name": "b", "quota_gpus": GPUS, "can_borrow": borrow[1]},
                ],
            },
            "training": jobs,
        }
    )


def starts(res: Any, name: str) -> list[float]:
    ev = res.events
    return ev[(ev["job"] == name) & (ev["event"] == "start")]["time_s"].tolist()


def test_a_queue_borrows_idle_quota_and_gives_it_back_when_its_owner_asks() -> None:
    """a's first job runs in its quota, its second borrows b's idle quota, its third waits
    (nothing left to borrow); b's job at 1 h reclaims: a's newest (borrowing) job is preempted
    and b starts; a never holds more than quota + what b left idle, b never more than its own."""
    res = af.run(
        scenario([job("a1", "a"), job("a2", "a"), job("a3", "a"), job("b1", "b", 3600.0)])
    )
    assert starts(res, "a1") == [0.0] and starts(res, "a2") == [0.0]
    assert starts(res, "b1") and 3600.0 <= starts(res, "b1")[0] < 3600.0 + 700.0
    ev = res.events
    assert ev[(ev["job"] == "a2") & (ev["event"] == "preempt")]["time_s"].tolist() == [3600.0]
    assert ev[(ev["job"] == "a1") & (ev["event"] == "preempt")].empty  # within its quota
    q = res.summary["queues"]
    assert q["a"]["peak_gpus"] == 2 * GPUS and q["b"]["peak_gpus"] == GPUS
    assert q["a"]["reclaims"] == 1 and q["b"]["reclaims"] == 0
    # a borrowed 128 GPUs from 0 until the preemption's checkpoint let go (within the grace)
    assert 1.0 * GPUS <= q["a"]["borrowed_gpu_h"] <= (3600 + 600) / 3600 * GPUS
    assert q["b"]["borrowed_gpu_h"] == 0.0
    # the queues' GPU-hours are the ledger's held GPU-hours
    led = res.summary["ledger_gpu_h"]
    held = sum(v for k, v in led.items() if k not in ("unallocated", "down"))
    assert q["a"]["gpu_h"] + q["b"]["gpu_h"] == pytest.approx(held, rel=1e-9)


def test_without_borrowing_a_queue_never_passes_its_quota() -> None:
    res = af.run(scenario([job("a1", "a"), job("a2", "a")], borrow=(False, False)))
    assert starts(res, "a1") == [0.0] and starts(res, "a2") == []
    q = res.summary["queues"]["a"]
    assert q["peak_gpus"] == GPUS and q["borrowed_gpu_h"] == 0.0
    assert res.summary["training"]["a2"]["state"] == "queued"
    assert res.summary["utilisation"]["allocated"] == pytest.approx(0.5, rel=1e-9)


def test_a_borrowing_limit_caps_what_is_borrowed() -> None:
    res = af.run(scenario([job("a1", "a"), job("a2", "a")], limit=64))
    assert starts(res, "a2") == []  # 128 more would pass the 64-GPU limit


@pytest.mark.parametrize("policy", ["fifo", "fair-share"])
def test_fair_share_serves_the_queue_that_used_least(policy: str) -> None:
    """a runs a whole-cluster job (borrowing all of b's quota); meanwhile a1 and then b1, each
    the whole cluster too (both must borrow, so neither may reclaim), wait for its nodes. When
    they come free fifo starts a's (submitted first), fair-share b's (no past use)."""
    whole = 2 * GPUS
    jobs = [
        job("a0", "a", 0.0, tokens=2e11, gpus=whole),  # about a day
        job("a1", "a", 7200.0, gpus=whole),
        job("b1", "b", 7300.0, gpus=whole),
    ]
    res = af.run(scenario(jobs, borrow=(True, True), policy=policy, duration="3d"))
    end = res.summary["training"]["a0"]["finished_at_s"]
    assert end is not None
    s_a, s_b = starts(res, "a1"), starts(res, "b1")
    first = s_a if policy == "fifo" else s_b
    later = s_b if policy == "fifo" else s_a
    assert first and first[0] == pytest.approx(end, abs=1.0)
    assert not later or later[0] > first[0] + 3600.0
    assert res.summary["queues"]["a"]["reclaims"] == 0
    assert res.summary["queues"]["b"]["reclaims"] == 0


def test_decayed_use_follows_the_closed_form() -> None:
    """One queue holding g GPUs from 0 for t: U = g (1 - e^{-λt}) / λ, λ = ln 2 / half-life."""
    from aifactory_sim.engine.quotas import Quotas
    from aifactory_sim.spec.scenario import Queue

    clock = [0.0]
    held = [64]
    qs = Quotas([Queue(name="x", quota_gpus=128)], 3600.0, lambda: clock[0], lambda: held, [0])
    qs.observe()
    clock[0] = 5000.0
    lam = np.log(2) / 3600.0
    assert qs.share(0) == pytest.approx(64 * (1 - np.exp(-lam * 5000.0)) / lam / 128, rel=1e-12)
    qs.observe()
    assert qs.gpu_s[0] == pytest.approx(64 * 5000.0)


def test_an_unknown_queue_is_refused_naming_the_field() -> None:
    with pytest.raises(ScenarioError) as err:
        scenario([job("a1", "nope")])
    assert "training.0.queue" in str(err.value) and "'a', 'b'" in str(err.value)
