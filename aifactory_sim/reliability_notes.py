"""Which training jobs a scenario's failures leave without their gang most of the time.

A job needs all its nodes at once. With failures that need repairs, each node of its pool is
down a share q of the time (kernels.reliability.node_down_share), so the job can run only while
no more than the pool's nodes less its own are down: P(Binomial(N, q) <= N - n)
(kernels.reliability.gang_availability). A job that spans a pool with no spare nodes waits for
repairs almost all the time once N q is more than a few; the summary says so for any job below
one half, so that a low ETTR is read for what it is."""

from __future__ import annotations

import math
from typing import Any

from .kernels.reliability import gang_availability, node_down_share

#: Jobs whose gang is available less than this share of the time are reported.
REPORT_BELOW = 0.5


def mean_repair_s(repair: Any) -> float:
    """Mean of a repair-time distribution (spec RepairHours), in seconds: fixed value,
    exponential mean, lognormal median x exp(sigma^2 / 2)."""
    if repair.kind == "fixed":
        hours = repair.value
    elif repair.kind == "exponential":
        hours = repair.mean
    else:
        hours = repair.median * math.exp(repair.sigma**2 / 2.0)
    return float(hours) * 3600.0


def gang_shortfalls(sc: Any) -> dict[str, float]:
    """By job, the share of the time its gang can be formed, for jobs below REPORT_BELOW."""
    f = sc.failures
    if f is None:
        return {}
    shares = f.component_shares()
    q = float(node_down_share(f.node_mtbf_s, mean_repair_s(f.repair_h), 1.0 - shares["software"]))
    out = {}
    for job in sc.training:
        pool = sc.pool(job.pool)
        share = float(gang_availability(pool.nodes, job_nodes(job, pool), q))
        if share < REPORT_BELOW:
            out[job.name] = share
    return out


def job_nodes(job: Any, pool: Any) -> int:
    """The fewest nodes a job runs on: its gang's GPUs (an elastic job's at min_dp) over the
    pool's GPUs per node, rounded up."""
    par = job.parallel
    dp = par.dp if job.elastic is None else min(par.dp, job.elastic.min_dp)
    return math.ceil(par.tp * par.pp * par.cp * dp / pool.gpus_per_node)
