"""Teams' queues with GPU quotas, borrowing and fair share (issue 19), after Kueue's
ClusterQueues in one cohort (kueue.sigs.k8s.io, "Cluster Queue": nominalQuota, borrowingLimit,
and preemption's reclaimWithinCohort).

- A queue's work (its training jobs and services, `queue:`) holds at most `quota_gpus` GPUs,
  except that a queue that `can_borrow` may go above it into what the other queues leave idle
  of their own quotas (Σ over the others of max(0, quota - used)), up to its
  `borrowing_limit_gpus`. Nothing is ever admitted past that: a job waits, a service's replica
  stays pending.
- Reclaiming: a job whose queue is within its quota but finds no free nodes takes them back
  from queues that are borrowing (using more than their quota): their jobs, newest first, are
  preempted (checkpointing within the grace period, as any preemption) until enough would come
  free, never leaving a borrower below its own quota. Services are never reclaimed from (they
  are the factory's latency-bound work); they are only held to their queue's limit.
- Fair share (`scheduler.policy: fair-share`): waiting jobs go in order of their queue's
  decayed use per GPU of quota, the least first (the dominant share of the one resource here;
  Ghodsi et al., "Dominant Resource Fairness", NSDI 2011). Use decays with a half-life as
  Slurm's fair-share factor does (PriorityDecayHalfLife): U(t + d) = U(t) e^{-λd} +
  g (1 - e^{-λd}) / λ for a queue holding g GPUs over d, λ = ln 2 / half-life.

The queues' use is integrated at every change the recorder samples (its observer), so the
per-queue GPU-hours, borrowed GPU-hours and mean use are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..spec.scenario import Queue
    from .ports import Job


class Quotas:
    """Each queue's quota, use now, use integrals and decayed use (see the module)."""

    def __init__(
        self,
        queues: Sequence[Queue],
        half_life_s: float,
        now: Callable[[], float],
        gpus_held: Callable[[], list[int]],
        owner_queue: list[int],
    ):
        """`gpus_held()`: GPUs each owner holds now (jobs by index, then services);
        `owner_queue`: each owner's queue index, in the same order."""
        self.names = [q.name for q in queues]
        self.quota = np.array([q.quota_gpus for q in queues], dtype=np.float64)
        self.can_borrow = [q.can_borrow for q in queues]
        self.limit = [
            math.inf if q.borrowing_limit_gpus is None else float(q.borrowing_limit_gpus)
            for q in queues
        ]
        self.lam = math.log(2.0) / half_life_s
        self._now = now
        self._held = gpus_held
        self.owner_queue = np.asarray(owner_queue, dtype=np.int64)
        n = len(queues)
        self.used = np.zeros(n)
        self.decayed = np.zeros(n)  # GPU-s, decayed
        self.gpu_s = np.zeros(n)
        self.borrowed_gpu_s = np.zeros(n)
        self.peak = np.zeros(n)
        self.reclaims = np.zeros(n, dtype=np.int64)  # preemptions to give borrowed GPUs back
        self._t = 0.0

    # --- the integrals ---------------------------------------------------------------------
    def observe(self) -> None:
        """The recorder's observer: book [last, now] at the use then, and read the use now."""
        now = self._now()
        d = now - self._t
        if d > 0:
            u = self.used
            self.gpu_s += u * d
            self.borrowed_gpu_s += np.maximum(u - self.quota, 0.0) * d
            k = math.exp(-self.lam * d)
            self.decayed = self.decayed * k + u * (1.0 - k) / self.lam
            self._t = now
        self.used = self.use_now()
        self.peak = np.maximum(self.peak, self.used)

    def use_now(self) -> np.ndarray:
        """GPUs each queue holds now."""
        held = np.asarray(self._held(), dtype=np.float64)
        used: np.ndarray = np.bincount(
            self.owner_queue, weights=held, minlength=len(self.names)
        ).astype(np.float64)
        return used

    # --- admission -------------------------------------------------------------------------
    def admits(
        self, q: int, gpus: float, used: np.ndarray, wanted: frozenset[int] = frozenset()
    ) -> bool:
        """May queue `q` take `gpus` more, with the queues' use at `used`? The idle quota of
        a queue in `wanted` (one with work waiting within its quota) is not lent: it is about
        to be used, or reclaimed (else a borrower would take back at once what a reclaim
        freed, over and over)."""
        after = used[q] + gpus
        if after <= self.quota[q]:
            return True
        if not self.can_borrow[q]:
            return False
        idle = np.maximum(self.quota - used, 0.0)
        idle[q] = 0.0
        for w in wanted:
            idle[w] = 0.0
        borrow = after - self.quota[q]
        return borrow <= float(idle.sum()) and borrow <= self.limit[q]

    def within_quota(self, q: int, gpus: float, used: np.ndarray) -> bool:
        return used[q] + gpus <= self.quota[q]

    def share(self, q: int) -> float:
        """Fair share's key: decayed use per GPU of quota (no quota: last)."""
        now = self._now()
        d = max(now - self._t, 0.0)
        k = math.exp(-self.lam * d)
        u = self.decayed[q] * k + self.used[q] * (1.0 - k) / self.lam
        return u / self.quota[q] if self.quota[q] > 0 else math.inf

    def victims(self, q: int, short_gpus: float, jobs: Sequence[Job], gpn: int) -> list[Job]:
        """Running jobs of borrowing queues (not `q`) to preempt, newest first, so that
        `short_gpus` come free, none taking a borrower below its quota; [] if that is not
        enough."""
        used = self.use_now()
        over = np.maximum(used - self.quota, 0.0)
        order = sorted(
            (
                j
                for j in jobs
                if j.state == "running"
                and self.owner_queue[j.index] != q
                and over[self.owner_queue[j.index]] > 0
            ),
            key=lambda j: (-(j.started_at or 0.0), -j.index),
        )
        plan: list[Job] = []
        for j in order:
            if short_gpus <= 0:
                break
            g = j.held_nodes * gpn
            vq = int(self.owner_queue[j.index])
            if g > over[vq]:
                continue  # it would take that queue below its own quota
            over[vq] -= g
            short_gpus -= g
            plan.append(j)
        return plan if short_gpus <= 0 else []

    # --- report ----------------------------------------------------------------------------
    def summary(
        self, horizon: float, waits: dict[int, list[float]], counts: dict[int, int]
    ) -> dict[str, Any]:
        """The summary's `queues` section, by queue name."""
        out: dict[str, Any] = {}
        for i, name in enumerate(self.names):
            w = np.asarray(waits.get(i, []), dtype=np.float64)
            mean = float(self.gpu_s[i] / horizon) if horizon > 0 else 0.0
            out[name] = {
                "quota_gpus": int(self.quota[i]),
                "can_borrow": bool(self.can_borrow[i]),
                "jobs": counts.get(i, 0),
                "started": int(w.size),
                "gpu_h": float(self.gpu_s[i] / 3600.0),
                "borrowed_gpu_h": float(self.borrowed_gpu_s[i] / 3600.0),
                "mean_gpus": mean,
                "peak_gpus": int(self.peak[i]),
                "quota_use": mean / self.quota[i] if self.quota[i] > 0 else None,
                "wait_s_mean": float(w.mean()) if w.size else None,
                "wait_s_p50": float(np.percentile(w, 50)) if w.size else None,
                "wait_s_p90": float(np.percentile(w, 90)) if w.size else None,
                "reclaims": int(self.reclaims[i]),
            }
        return out
