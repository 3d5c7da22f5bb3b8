"""The gang scheduler: jobs wait in a queue and start when a whole gang of nodes is free.

`fifo` orders by submission time; `priority` by `priority` (higher first), then submission. The
queue is strict: while its head cannot start, nothing behind it starts (no backfill), so a large
job is never starved by a stream of small ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .factory import Factory
    from .training import TrainingRun


class Scheduler:
    def __init__(self, factory: Factory):
        self.factory = factory
        spec = factory.scenario.scheduler
        self.policy = spec.policy
        self.placement = spec.placement
        self.queue: list[TrainingRun] = []

    def _key(self, job: TrainingRun) -> tuple[float, ...]:
        assert job.submitted_at is not None
        if self.policy == "priority":
            return (-job.spec.priority, job.submitted_at, job.index)
        return (job.submitted_at, job.index)

    def submit(self, job: TrainingRun) -> None:
        self.queue.append(job)
        self.schedule()

    def schedule(self) -> None:
        """Start jobs from the head of the queue while their gangs can be placed."""
        self.queue.sort(key=self._key)
        cluster = self.factory.cluster
        while self.queue:
            head = self.queue[0]
            alloc = cluster.allocate(head.pool.name, head.nodes, head.index, self.placement)
            if alloc is None:
                break
            self.queue.pop(0)
            head.start(alloc)
            self.factory.on_start(head)
        self.factory.sample()
