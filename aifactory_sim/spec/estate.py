"""An estate: several sites (private, colocation, cloud) joined by links, the datasets and users
that carry a jurisdiction and a residency rule, and the work placed on them.

Field names follow shared/examples/hybrid-sovereign.yaml, the file users write. A file with
`sites` is an estate; a file with `cluster` is a one-site factory and loads as a `Scenario`, as
before (DESIGN.md, "An estate of sites").

Placement is decided here, at validation, from the rules alone (`Estate.placements`): a job runs
at the site it names, else at its dataset's site, else at the first owned site whose jurisdiction
its data allows and whose pool holds its gang; a service at the first site of its `placement`
list that its users' residency allows. Anything that can only be met by breaking a rule is
refused with the job, the dataset and the rule named, so no run ever starts with a breach.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import (
    GbitS,
    NonNegativeDurationS,
    PositiveDurationS,
    Spec,
    located,
)
from .hardware import GPUSpec, from_catalog
from .inference import Fidelity, InferenceService
from .scenario import (
    Cluster,
    Cost,
    DataSpec,
    Fabric,
    Failures,
    NodePool,
    Power,
    Scenario,
    Scheduler,
    Storage,
    TrainingJob,
)

#: How sensitive a piece of work is; `security.isolation` and the audit table key on it.
Classification = Literal["public", "internal", "confidential", "regulated"]
#: Under the estate's `fidelity: auto`, a service expecting more requests than this in the run
#: runs as fluid flows: at the fast tier's 6e4-8e4 requests a wall second (benchmarks/) this
#: many take about 30 s.
AUTO_FLUID_REQUESTS = 2e6
#: Jobs and services that the audit table lists: anything above `public`.
AUDITED = ("internal", "confidential", "regulated")


def _allowed(residency: str | list[str], jurisdiction: str) -> bool:
    """Whether a residency rule lets data (or users' requests) be at a site in `jurisdiction`."""
    if residency == "any":
        return True
    rules = [residency] if isinstance(residency, str) else residency
    return jurisdiction in rules


def rule_text(residency: str | list[str]) -> str:
    if residency == "any":
        return "residency any"
    rules = [residency] if isinstance(residency, str) else residency
    return f"residency {' or '.join(rules)}"


Residency = str | list[str]


class SiteCost(Cost):
    """A site's prices: an owned site's capex and opex (as `cost` of a one-site scenario), a
    colocation site's space and power contract, a cloud site's rental."""

    colocation_usd_per_kw_month: float = Field(
        0.0,
        ge=0,
        description="colocation: the contract per kW of IT load provisioned (the site's nodes "
        "at full load), USD a month; the energy is billed on top at power.usd_per_kwh",
    )
    on_demand_usd_per_gpu_hour: float | None = Field(
        None, gt=0, description="cloud: on-demand price of a rented GPU-hour, USD"
    )
    spot_usd_per_gpu_hour: float | None = Field(
        None, gt=0, description="cloud: spot price of a rented GPU-hour, USD"
    )
    spot_interruptions_per_day: float = Field(
        0.0,
        ge=0,
        description="cloud: reclaims of a spot node a day, each a Poisson event (the node is "
        "lost, its job restarts from its last checkpoint on a fresh node)",
    )


class Site(Spec):
    """One site of the estate: its own cluster (a cloud site's: up to `max_nodes` rented nodes),
    power, prices and scheduler queue."""

    name: str = Field(min_length=1, description="unique among the sites")
    jurisdiction: str = Field(min_length=1, description="where the site is, e.g. eu, us, uk")
    kind: Literal["private", "colocation", "cloud"] = Field(
        description="private: owned nodes; colocation: owned nodes in rented space and power; "
        "cloud: nodes rented by the GPU-hour"
    )
    cluster: Cluster | None = Field(None, description="private and colocation sites: the nodes")
    power: Power = Field(Power(), description="as a one-site scenario's `power`")
    cost: SiteCost = Field(SiteCost(), description="the site's prices")
    scheduler: Scheduler | None = Field(None, description="default: the estate's `scheduler`")
    failures: Failures | None = Field(None, description="default: the estate's `failures`")
    # a cloud site: what can be rented
    gpu: GPUSpec | None = Field(None, description="cloud: the GPU rented")
    max_nodes: int | None = Field(None, gt=0, description="cloud: the most nodes rented at once")
    gpus_per_node: int = Field(8, gt=0, description="cloud: GPUs of a rented node")
    nic_gbit_s: GbitS = Field(400.0, gt=0, description="cloud: scale-out NIC rate per GPU")
    fabric: Fabric = Field(Fabric(), description="cloud: the rented nodes' fabric")
    storage: Storage | None = Field(None, description="cloud: the shared file system rented")
    provisioning_s: NonNegativeDurationS = Field(
        0.0, description="cloud: from asking for a node to the node being ready"
    )

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu_from_catalog(cls, value: Any) -> Any:
        return None if value is None else from_catalog("gpu", value)

    @model_validator(mode="after")
    def _kind_fields(self) -> Site:
        if self.kind == "cloud":
            if self.cluster is not None:
                raise located("cluster", "a cloud site rents its nodes: give gpu and max_nodes")
            for name in ("gpu", "max_nodes"):
                if getattr(self, name) is None:
                    raise located(name, "a cloud site needs it (what it rents, and how many)")
            if self.cost.on_demand_usd_per_gpu_hour is None:
                raise located(
                    "cost.on_demand_usd_per_gpu_hour", "a cloud site needs its on-demand price"
                )
        else:
            if self.cluster is None:
                raise located("cluster", f"a {self.kind} site needs its cluster")
            for name in ("gpu", "max_nodes"):
                if getattr(self, name) is not None:
                    raise located(
                        name, f"only a cloud site has it; a {self.kind} site has a cluster"
                    )
        return self

    def site_cluster(self) -> Cluster:
        """The cluster the site's factory runs: its own, or a cloud site's rentable nodes as one
        pool (a node not rented is not billed)."""
        if self.cluster is not None:
            return self.cluster
        assert self.gpu is not None and self.max_nodes is not None
        pool = NodePool(
            name=self.name,
            nodes=self.max_nodes,
            gpu=self.gpu,
            gpus_per_node=self.gpus_per_node,
            nic_gbit_s=self.nic_gbit_s,
        )
        return Cluster(node_pools=[pool], fabric=self.fabric, storage=self.storage)

    def plain_cost(self) -> Cost:
        """The one-site scenario's `cost` (the fields a factory's cost model reads)."""
        return Cost(**{k: getattr(self.cost, k) for k in Cost.model_fields})


class Link(Spec):
    """A wide-area link between two sites, used both ways."""

    between: list[str] = Field(min_length=2, max_length=2, description="the two sites' names")
    gbit_s: GbitS = Field(gt=0, description="bandwidth, Gb/s (each direction)")
    latency_ms: float = Field(ge=0, description="one-way latency, ms")
    egress_usd_per_gb: float = Field(0.0, ge=0, description="price of a GB leaving either end")


class Dataset(Spec):
    """A dataset: where it is held and where it may be."""

    name: str = Field(min_length=1, description="what jobs' data.dataset name")
    size_tb: float = Field(gt=0, description="stored size, TB (1e12 bytes)")
    jurisdiction: str = Field(min_length=1, description="the jurisdiction it is held in")
    residency: Residency = Field(
        "any", description="where it may be read or copied: any, a jurisdiction or a list"
    )
    site: str | None = Field(
        None, description="the site holding it; default: the first owned site in its jurisdiction"
    )


_DEDICATED = (
    "dedicated-nodes: its work runs on nodes that run nothing else meanwhile. The engine gives "
    "every job and service whole nodes (as Slurm's exclusive allocation or Kubernetes' whole-"
    "node GPU requests do), so this always holds; the GPUs a partly filled node strands are "
    "in the ledger as the owner's idle time"
)


class Isolation(Spec):
    """Per classification, how its work is kept apart from other work on a node."""

    regulated: Literal["dedicated-nodes"] = Field("dedicated-nodes", description=_DEDICATED)
    confidential: Literal["dedicated-nodes"] = Field("dedicated-nodes", description=_DEDICATED)
    internal: Literal["dedicated-nodes"] = Field("dedicated-nodes", description=_DEDICATED)


class ConfidentialComputing(Spec):
    sites: list[str] = Field(default_factory=list, description="sites running GPUs in CC mode")


class Security(Spec):
    """Isolation of classified work, and the sites whose GPUs run in confidential-computing
    mode (each serving iteration pays CC_ITERATION_S of encrypted host transfers)."""

    isolation: Isolation = Field(Isolation(), description="per classification")
    confidential_computing: ConfidentialComputing = Field(
        ConfidentialComputing(), description="the sites in CC mode, with its throughput cost"
    )


class EstateData(DataSpec):
    """A job's data: a one-site `data` block, and the estate's dataset it reads."""

    dataset: str | None = Field(None, description="a dataset of the estate's `data`")


class Burst(Spec):
    site: str = Field(min_length=1, description="the cloud site to burst to")
    when_queued_s: NonNegativeDurationS = Field(
        description="queued at its own site this long (never started): it moves to the cloud"
    )
    price: Literal["on-demand", "spot"] = Field(
        "on-demand", description="spot: cheaper, and its nodes are reclaimed now and then"
    )


class EstateJob(TrainingJob):
    """A training job of an estate: a one-site job, where it may run and what it reads."""

    data: EstateData = Field(EstateData(), description="what it reads, and from which dataset")
    site: str | None = Field(None, description="the site to run at; default: placement decides")
    classification: Classification = Field(
        "public", description="above public, each placement is listed in the audit table"
    )
    burst: Burst | None = Field(None, description="moving to a cloud site when queued too long")

    def plain(self) -> TrainingJob:
        """The job as its site's factory runs it."""
        fields = {k: getattr(self, k) for k in TrainingJob.model_fields if k != "data"}
        data = DataSpec(**{k: getattr(self.data, k) for k in DataSpec.model_fields})
        return TrainingJob(**fields, data=data)


class Users(Spec):
    jurisdiction: str = Field(min_length=1, description="where the requests come from")
    residency: Residency | None = Field(
        None,
        description="where the requests may be served; default: their jurisdiction for "
        "regulated or confidential services, else any",
    )
    site: str | None = Field(
        None, description="the site nearest the users; default: the first of `placement`"
    )


class EstateService(InferenceService):
    """An inference service of an estate: a one-site service, its users and where it may run."""

    classification: Classification = Field(
        "public",
        description="above public, its placement is listed in the audit table; regulated and "
        "confidential services are served within their users' jurisdiction",
    )
    users: Users | None = Field(None, description="where its requests come from")
    placement: list[str] | None = Field(
        None, description="sites it may run at, nearest its users first"
    )

    def residency(self) -> Residency:
        if self.users is None:
            return "any"
        if self.users.residency is not None:
            return self.users.residency
        sensitive = self.classification in ("regulated", "confidential")
        return self.users.jurisdiction if sensitive else "any"

    def plain(self, **update: Any) -> InferenceService:
        fields = {k: getattr(self, k) for k in InferenceService.model_fields}
        fields.update(update)
        return InferenceService(**fields)


@dataclass(frozen=True)
class Path:
    """A route between two sites over the links: the links in order, their least bandwidth and
    their summed one-way latency."""

    sites: tuple[str, ...]
    links: tuple[int, ...]
    bytes_per_s: float
    latency_s: float


class Estate(Spec):
    """A whole estate file (shared/examples/hybrid-sovereign.yaml)."""

    name: str = Field("estate", min_length=1, description="names the run and its results folder")
    seed: int = Field(0, ge=0, description="seed of every random stream of every site")
    duration: PositiveDurationS = Field(description="simulated horizon, on one clock for all")
    fidelity: Fidelity | Literal["auto"] = Field(
        "auto",
        description="as a one-site scenario's; auto (the default for an estate, whose runs are "
        "long): fast, with each service expecting over AUTO_FLUID_REQUESTS requests in the run "
        "as fluid flows (a service's own `fidelity` wins)",
    )
    sites: list[Site] = Field(min_length=1, description="private, colocation and cloud sites")
    links: list[Link] = Field(default_factory=list, description="wide-area links between sites")
    data: list[Dataset] = Field(default_factory=list, description="datasets and their rules")
    security: Security = Field(Security(), description="isolation and confidential computing")
    scheduler: Scheduler = Field(Scheduler(), description="every site's, unless it has its own")
    failures: Failures | None = Field(
        None, description="node failures at every owned site, unless it has its own"
    )
    training: list[EstateJob] = Field(default_factory=list, description="training jobs")
    inference: list[EstateService] = Field(default_factory=list, description="services")

    # --- lookups --------------------------------------------------------------------------
    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def dataset(self, name: str) -> Dataset:
        for d in self.data:
            if d.name == name:
                return d
        raise KeyError(name)

    def dataset_site(self, d: Dataset) -> str:
        """The site holding a dataset: as given, else the first owned site in its jurisdiction,
        else the first site in it."""
        if d.site is not None:
            return d.site
        here = [s for s in self.sites if s.jurisdiction == d.jurisdiction]
        owned = [s for s in here if s.kind != "cloud"]
        return (owned or here)[0].name

    def path(self, a: str, b: str) -> Path | None:
        """The route from site a to b with the fewest hops (then the least latency), or None.
        Sites are few: a breadth-first search over the links, in the order they are listed."""
        if a == b:
            return Path((a,), (), math.inf, 0.0)
        best: Path | None = None
        frontier = [Path((a,), (), math.inf, 0.0)]
        while frontier and best is None:
            nxt = []
            for p in frontier:
                for i, link in enumerate(self.links):
                    if p.sites[-1] not in link.between:
                        continue
                    other = link.between[1] if link.between[0] == p.sites[-1] else link.between[0]
                    if other in p.sites:
                        continue
                    q = Path(
                        (*p.sites, other),
                        (*p.links, i),
                        min(p.bytes_per_s, link.gbit_s * 1e9 / 8.0),
                        p.latency_s + link.latency_ms / 1e3,
                    )
                    if other == b and (best is None or q.latency_s < best.latency_s):
                        best = q
                    nxt.append(q)
            frontier = nxt
        return best

    # --- validation -----------------------------------------------------------------------
    @model_validator(mode="after")
    def _check(self) -> Estate:
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise located("sites", f"site names must be unique, got {names}")
        for i, link in enumerate(self.links):
            for end in link.between:
                if end not in names:
                    raise located(f"links.{i}.between", f"unknown site {end!r}; sites: {names}")
            if link.between[0] == link.between[1]:
                raise located(f"links.{i}.between", "a link joins two different sites")
        datasets = [d.name for d in self.data]
        if len(set(datasets)) != len(datasets):
            raise located("data", f"dataset names must be unique, got {datasets}")
        for i, d in enumerate(self.data):
            if d.site is not None and d.site not in names:
                raise located(f"data.{i}.site", f"unknown site {d.site!r}; sites: {names}")
            if d.site is None and not any(s.jurisdiction == d.jurisdiction for s in self.sites):
                raise located(
                    f"data.{i}.jurisdiction",
                    f"no site is in {d.jurisdiction!r} to hold it; give data.{i}.site",
                )
            held = self.site(self.dataset_site(d))
            if not _allowed(d.residency, held.jurisdiction):
                raise located(
                    f"data.{i}",
                    f"held at {held.name} ({held.jurisdiction}), outside its "
                    f"{rule_text(d.residency)}",
                )
        for s in self.security.confidential_computing.sites:
            if s not in names:
                raise located(
                    "security.confidential_computing.sites", f"unknown site {s!r}; sites: {names}"
                )
        work = [j.name for j in self.training] + [s.name for s in self.inference]
        if len(set(work)) != len(work):
            raise located("training", f"job and service names must be unique, got {work}")
        self.placements()  # refuses what cannot be placed within the rules
        return self

    def placements(self) -> dict[str, str]:
        """Each job's and service's site (a job's home; its burst site is checked apart)."""
        out: dict[str, str] = {}
        names = [s.name for s in self.sites]
        for i, job in enumerate(self.training):
            out[job.name] = self._place_job(i, job, names)
        # nodes each site's work asks for at once (jobs' whole gangs, services' largest fleets)
        load = {n: 0 for n in names}
        for j in self.training:
            gpn = self._pool_of(self.site(out[j.name]), j.pool).gpus_per_node
            load[out[j.name]] += -(-j.parallel.gpus // gpn)
        for i, svc in enumerate(self.inference):
            out[svc.name] = self._place_service(i, svc, names, load)
            pool = self._pool_of(self.site(out[svc.name]), svc.pool)
            load[out[svc.name]] += svc.nodes_for(svc.most_replicas, pool.gpus_per_node)
        return out

    def _pool_of(self, site: Site, name: str | None) -> NodePool:
        pools = site.site_cluster().node_pools
        return next((p for p in pools if p.name == name), pools[0])

    def job_dataset(self, i: int, job: EstateJob) -> Dataset | None:
        if job.data.dataset is None:
            return None
        try:
            return self.dataset(job.data.dataset)
        except KeyError:
            raise located(
                f"training.{i}.data.dataset",
                f"unknown dataset {job.data.dataset!r}; datasets: {[d.name for d in self.data]}",
            ) from None

    def _route_ok(self, d: Dataset, to: str) -> tuple[bool, str]:
        """Whether the dataset can reach site `to` without resting outside its residency."""
        src = self.dataset_site(d)
        p = self.path(src, to)
        if p is None:
            return False, f"no link joins {src} (where it is held) and {to}"
        for s in p.sites:
            if not _allowed(d.residency, self.site(s).jurisdiction):
                return False, (
                    f"its route {' -> '.join(p.sites)} passes {s} "
                    f"({self.site(s).jurisdiction}), outside its {rule_text(d.residency)}"
                )
        return True, ""

    def _fits(self, job: EstateJob, site: Site) -> bool:
        cl = site.site_cluster()
        pools = [p for p in cl.node_pools if job.pool is None or p.name == job.pool]
        if not pools:
            return False
        pool = pools[0]
        gpus = job.parallel.gpus
        if job.elastic is not None:
            gpus = gpus // job.parallel.dp * job.elastic.min_dp
        return gpus <= pool.gpus and gpus % pool.gpus_per_node == 0

    def _place_job(self, i: int, job: EstateJob, names: list[str]) -> str:
        where = f"training.{i}"
        d = self.job_dataset(i, job)
        if job.site is not None:
            if job.site not in names:
                raise located(f"{where}.site", f"unknown site {job.site!r}; sites: {names}")
            candidates = [self.site(job.site)]
        else:
            home = [] if d is None else [self.site(self.dataset_site(d))]
            owned = [s for s in self.sites if s.kind != "cloud" and s not in home]
            candidates = home + owned
        refusals = []
        chosen = None
        for s in candidates:
            if d is not None and not _allowed(d.residency, s.jurisdiction):
                refusals.append(f"{s.name} is in {s.jurisdiction}")
                continue
            if d is not None:
                ok, why = self._route_ok(d, s.name)
                if not ok:
                    refusals.append(f"{s.name}: {why}")
                    continue
            if not self._fits(job, s):
                refusals.append(f"{s.name} has no pool that holds its gang")
                continue
            chosen = s.name
            break
        if chosen is None:
            rule = (
                ""
                if d is None
                else f"; dataset {d.name!r} has {rule_text(d.residency)} (held in {d.jurisdiction})"
            )
            raise located(
                f"{where}.site" if job.site is not None else where,
                f"job {job.name!r} cannot be placed: {'; '.join(refusals)}{rule}",
            )
        if job.burst is not None:
            b = job.burst
            if b.site not in names:
                raise located(f"{where}.burst.site", f"unknown site {b.site!r}; sites: {names}")
            site = self.site(b.site)
            if site.kind != "cloud":
                raise located(
                    f"{where}.burst.site", f"{b.site} is {site.kind}; a burst goes to a cloud site"
                )
            if b.site == chosen:
                raise located(f"{where}.burst.site", f"{b.site} is the job's own site")
            if d is not None:
                if not _allowed(d.residency, site.jurisdiction):
                    raise located(
                        f"{where}.burst.site",
                        f"job {job.name!r} may not burst to {b.site} ({site.jurisdiction}): "
                        f"dataset {d.name!r} has {rule_text(d.residency)}",
                    )
                ok, why = self._route_ok(d, b.site)
                if not ok:
                    raise located(
                        f"{where}.burst.site",
                        f"job {job.name!r} may not burst to {b.site}: dataset {d.name!r} {why}",
                    )
            if not self._fits(job, site):
                raise located(f"{where}.burst.site", f"{b.site} cannot hold the job's gang")
            if b.price == "spot" and site.cost.spot_usd_per_gpu_hour is None:
                raise located(
                    f"{where}.burst.price",
                    f"{b.site} has no cost.spot_usd_per_gpu_hour; allowed: on-demand",
                )
        return chosen

    def _place_service(
        self, i: int, svc: EstateService, names: list[str], load: dict[str, int]
    ) -> str:
        """The first site of its placement list (nearest its users first) that can hold its
        largest fleet beside the work already placed there; if none can, the first that has
        its pool (its autoscaler is then held by the nodes it finds)."""
        where = f"inference.{i}"
        order = svc.placement if svc.placement is not None else names
        for s in order:
            if s not in names:
                raise located(f"{where}.placement", f"unknown site {s!r}; sites: {names}")
        rule = svc.residency()
        for s in order:
            site = self.site(s)
            if not _allowed(rule, site.jurisdiction):
                raise located(
                    f"{where}.placement",
                    f"service {svc.name!r} ({svc.classification}) may not run at {s} "
                    f"({site.jurisdiction}): its users' requests have {rule_text(rule)}",
                )
        if svc.users is not None and svc.users.site is not None:
            if svc.users.site not in names:
                raise located(
                    f"{where}.users.site", f"unknown site {svc.users.site!r}; sites: {names}"
                )
        usable = []
        for s in order:
            pools = self.site(s).site_cluster().node_pools
            if svc.pool is None or any(p.name == svc.pool for p in pools):
                usable.append(s)
        if not usable:
            raise located(f"{where}.pool", f"no site of its placement has pool {svc.pool!r}")
        for s in usable:
            pool = self._pool_of(self.site(s), svc.pool)
            if load[s] + svc.nodes_for(svc.most_replicas, pool.gpus_per_node) <= pool.nodes:
                return s
        return usable[0]

    def service_tier(self, svc: EstateService) -> Fidelity | None:
        """A service's tier: its own, the estate's, or under `auto` fluid for a service whose
        traffic brings more than AUTO_FLUID_REQUESTS requests in the run (a month at 40 rps is
        1e8 requests, half an hour of wall time each in `fast`), else the scenario's `fast`."""
        if svc.fidelity is not None:
            return svc.fidelity
        if self.fidelity != "auto":
            return None
        rps = getattr(svc.traffic, "long_run_rps", None)
        expected = 0.0 if rps is None else float(rps) * max(self.duration - svc.start_at, 0.0)
        return "fluid" if expected > AUTO_FLUID_REQUESTS else None

    def users_site(self, svc: EstateService, site: str) -> str:
        if svc.users is not None and svc.users.site is not None:
            return svc.users.site
        return svc.placement[0] if svc.placement else site

    def scenarios(self) -> dict[str, Scenario]:
        """One factory scenario per site, with the work placed there (a burstable job also at
        its burst site, where it waits to be called). A site with no work still runs: its
        nodes are held idle and cost what they cost."""
        place = self.placements()
        out: dict[str, Scenario] = {}
        for site in self.sites:
            jobs = [
                j.plain()
                for j in self.training
                if place[j.name] == site.name or (j.burst is not None and j.burst.site == site.name)
            ]
            services = []
            for svc in self.inference:
                if place[svc.name] != site.name:
                    continue
                update: dict[str, Any] = {}
                if site.provisioning_s > 0:  # a replica's node is rented, then booted
                    cs = svc.cold_start
                    update["cold_start"] = cs.model_copy(
                        update={"container_s": cs.container_s + site.provisioning_s}
                    )
                near = self.users_site(svc, site.name)
                route = self.path(near, site.name)
                if route is not None and route.latency_s > 0:  # served away from its users
                    update["network_rtt_s"] = svc.network_rtt_s + 2.0 * route.latency_s
                tier = self.service_tier(svc)
                if tier != svc.fidelity:
                    update["fidelity"] = tier
                services.append(svc.plain(**update))
            failures = (
                site.failures
                if site.failures is not None
                else (None if site.kind == "cloud" else self.failures)
            )
            try:
                out[site.name] = Scenario(
                    name=self.name,
                    seed=self.seed,
                    duration=self.duration,
                    fidelity="fast" if self.fidelity == "auto" else self.fidelity,
                    cluster=site.site_cluster(),
                    power=site.power,
                    cost=site.plain_cost(),
                    scheduler=site.scheduler or self.scheduler,
                    training=jobs,
                    inference=services,
                    failures=failures,
                )
            except ValueError as err:
                raise located(f"sites.{self.sites.index(site)}", f"{site.name}: {err}") from None
        return out
