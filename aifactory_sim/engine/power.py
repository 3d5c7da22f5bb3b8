"""Demand response: the grid operator's calls to draw less, met by the factory's work
(scenario `facility.demand_response`; docs/background/facility.md).

At an event's start the site must draw `reduce_mw` less for its duration. The factory sheds
IT watts (the ask over the hour's PUE) in the event's `priority_order`:

- training: the running jobs, lowest `priority` first (the larger first at a tie), each
  power-capped: its GPUs, drawing P = P_idle + (TDP - P_idle) min(1, MFU / 0.40) while they
  compute (kernels.power), are held at cap = P - shed / GPUs, no lower than idle power, so
  that the job sheds up to GPUs x (P - P_idle) (nothing by plan if it is not computing at the
  start, waiting for a repair say: capped all the same, it stays so if it resumes). Its
  compute-bound work slows by the cap's clock factor (kernels.power.cap_slowdown, all of it
  compute-bound, as `power.gpu_power_cap_w` takes it) until the event ends; the power
  timeline draws its GPUs at the cap (energy.power_timeline, from the job's trace).
- inference: the services, lowest `priority` first (the larger first at a tie), each shed
  whole replicas: a ready replica stops drawing its iterating GPUs' power above idle, GPUs x
  (P_serving - P_idle) x the share of the time its service's GPUs iterate (kernels.power's
  SERVING_ACTIVITY power; the share measured since the service's last sample), so as many as
  the ask needs are drained and the service is held at what is left, its autoscaler included,
  until the event ends (Fleet.shed / release); each keeps one replica. Their traffic goes to
  the replicas left, whose batches grow: what that does to its latency and SLO is measured
  over the event (facility.demand_response). Shed replicas' nodes go back to the cluster.

Each event's record (what was asked, what the caps shed by plan, on which jobs, the tokens the
slower steps did not train) goes to the summary; the facility module measures what the site's
power actually did against it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import simpy

from ..kernels.power import (
    SERVING_ACTIVITY,
    cap_slowdown,
    gpu_power_w,
    idle_power_w,
    training_activity,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..spec.facility import DemandResponse
    from .fleet import Fleet
    from .scheduler import Scheduler
    from .training import TrainingRun

__all__ = ["DemandResponseRun", "job_gpu_w"]


def job_gpu_w(job: TrainingRun) -> float:
    """Board power of one of a job's GPUs while it computes, uncapped: energy.job_compute_w's
    rule on its current estimate's MFU against the nominal peak."""
    gpu = job.pool.gpu
    idle = float(idle_power_w(gpu.tdp_w, gpu.idle_w))
    mfu = job._uncapped_mfu()
    if mfu is None:
        return idle
    return float(gpu_power_w(training_activity(mfu), gpu.tdp_w, idle))


class DemandResponseRun:
    """The events of a scenario, each a process that caps and later frees training jobs."""

    def __init__(
        self,
        env: simpy.Environment,
        events: Sequence[DemandResponse],
        jobs: Sequence[TrainingRun],
        pue_at: Callable[[float], float],
    ):
        self.env = env
        self.jobs = jobs
        #: the services' replica fleets and the power cap of a pool's GPUs (Scenario.gpu_cap_w),
        #: connected once the factory has built them
        self.fleets: Sequence[Fleet] = ()
        self.cap_w: Callable[[Any], float | None] = lambda pool: None
        self.scheduler: Scheduler | None = None
        self.pue_at = pue_at
        self.records: list[dict[str, Any]] = []
        for ev in events:
            env.process(self._event(ev))

    def _shed_replicas(
        self, left: float, pue: float, actions: list[dict[str, Any]], shed: list[Fleet]
    ) -> float:
        """Drain services' replicas, lowest priority first, for `left` IT watts; what is left."""
        ready = [f for f in self.fleets if len(f.ready) > 1]
        for fleet in sorted(ready, key=lambda f: (f.spec.priority, -len(f.ready), f.index)):
            if left <= 0:
                break
            gpu = fleet.pool.gpu
            idle = float(idle_power_w(gpu.tdp_w, gpu.idle_w))
            cap = self.cap_w(fleet.pool)
            busy = float(gpu_power_w(SERVING_ACTIVITY, gpu.tdp_w, idle, cap))
            share = fleet.busy_share()
            per_replica = fleet.spec.gpus_per_replica * (busy - idle) * share
            if per_replica <= 0:
                continue
            count = min(math.ceil(left / per_replica - 1e-9), len(fleet.ready) - 1)
            before = len(fleet.ready)
            fleet.shed(count)
            shed.append(fleet)
            left -= count * per_replica
            actions.append(
                {
                    "service": fleet.name,
                    "replicas_before": before,
                    "replicas_shed": count,
                    "gpus": count * fleet.spec.gpus_per_replica,
                    "busy_share": share,
                    "shed_mw": count * per_replica * pue / 1e6,
                }
            )
        return left

    def _event(self, ev: DemandResponse) -> Any:
        env = self.env
        yield env.timeout(ev.at)
        now = env.now
        pue = self.pue_at(now)
        left = ev.reduce_mw * 1e6 / pue  # IT watts to shed
        actions: list[dict[str, Any]] = []
        capped: list[tuple[TrainingRun, dict[str, Any]]] = []  # each job and its action
        paused: list[TrainingRun] = []
        services: list[dict[str, Any]] = []
        shed_fleets: list[Fleet] = []
        for kind in ev.priority_order:
            if kind == "inference":
                left = self._shed_replicas(left, pue, services, shed_fleets)
                continue
            running = [j for j in self.jobs if j.state == "running" and j.held_nodes > 0]
            gpus_of = {j.index: j.held_nodes * j.pool.gpus_per_node for j in running}
            for job in sorted(running, key=lambda j: (j.spec.priority, -gpus_of[j.index])):
                if left <= 0:
                    break
                gpus = gpus_of[job.index]
                p = job_gpu_w(job)
                gpu = job.pool.gpu
                idle = float(idle_power_w(gpu.tdp_w, gpu.idle_w))
                # a job waiting (for repairs, a restart, a checkpoint) draws idle power already:
                # it sheds nothing now; capped all the same, it stays at the cap if it resumes
                now_computing = job.bucket == "compute"
                if ev.training_action == "pause":
                    shed = gpus * max(p - idle, 0.0)
                    if shed <= 0 or not now_computing:
                        continue
                    step = float(job.estimate.step_time_s) if job.estimate is not None else 0.0
                    paused.append(job)
                    left -= shed
                    actions.append(
                        {
                            "job": job.name,
                            "action": "pause",
                            "computing": True,
                            "gpus": gpus,
                            "cap_w": idle,
                            "slowdown": 1.0,
                            "step_slowdown": 1.0,
                            "step_s": step,
                            "shed_mw": shed * pue / 1e6,
                            "tokens_not_trained": (
                                job.spec.batch_seqs * job.spec.seq_len / step * ev.duration
                                if step
                                else 0.0
                            ),
                        }
                    )
                    continue
                shed = min(left, gpus * max(p - idle, 0.0))
                if shed <= 0:
                    continue
                cap = p - shed / gpus
                slow = float(cap_slowdown(cap, gpu.tdp_w, 1.0))
                step = float(job.estimate.step_time_s) if job.estimate is not None else 0.0
                job.set_power_cap(cap, slow)
                if not now_computing:
                    shed = 0.0
                left -= shed
                after = float(job.estimate.step_time_s) if job.estimate is not None else step
                tokens_per_s = job.spec.batch_seqs * job.spec.seq_len / step if step else 0.0
                action: dict[str, Any] = {
                    "job": job.name,
                    "computing": now_computing,
                    "gpus": gpus,
                    "cap_w": cap,
                    "slowdown": slow,
                    "step_slowdown": after / step if step else 1.0,
                    "step_s": step,
                    "shed_mw": shed * pue / 1e6,
                    # planned: computing through the event (measured when it ends); only
                    # its compute-bound parts slow
                    "tokens_not_trained": (
                        tokens_per_s * ev.duration * (1.0 - step / after) if after else 0.0
                    ),
                }
                actions.append(action)
                capped.append((job, action))
        tol = ev.tolerance_mw if ev.tolerance_mw is not None else 0.05 * ev.reduce_mw
        self.records.append(
            {
                "at_s": now,
                "duration_s": ev.duration,
                "asked_mw": ev.reduce_mw,
                "tolerance_mw": tol,
                "pue": pue,
                "planned_mw": sum(a["shed_mw"] for a in actions + services),
                "shortfall_mw": max(left, 0.0) * pue / 1e6,
                "actions": actions,
                "services": services,
            }
        )
        computing = [job.run_s for job, _ in capped]  # its computing seconds so far (booked)
        for job in paused:
            job.pause(now + ev.duration)
        if paused and self.scheduler is not None:
            self.scheduler.held = True  # the nodes they give back stay dark
        yield env.timeout(ev.duration)
        for fleet in shed_fleets:
            fleet.release()
        if paused and self.scheduler is not None:
            self.scheduler.held = False  # the paused jobs resubmit now, and the queue runs
        for (job, action), before in zip(capped, computing, strict=True):
            job.set_power_cap(None, 1.0)
            # what its capped steps did not train over the time it computed in the event (a
            # checkpoint or a failure in it is time it would not have trained either)
            step, after = action["step_s"], action["step_s"] * action["step_slowdown"]
            tokens = job.spec.batch_seqs * job.spec.seq_len
            action["tokens_not_trained"] = (job.run_s - before) * tokens * (1 / step - 1 / after)
