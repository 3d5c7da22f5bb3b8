"""An estate's results: each site's own `Results` (runner.assemble on its factory's run, as a
one-site scenario has them) and, above them, the estate: utilisation and cost by site, the
transfers and their egress, the bursts, and the audit table of every placement of classified
work.

Cost by site (USD over the run):
- private: the site's own cost model (capex and opex amortised over every node, energy);
- colocation: the same, plus `colocation_usd_per_kw_month` x the site's IT load at full power
  (GPUs at TDP plus node overhead) x the run's months (30.44 days each);
- cloud: the GPU-hours rented (held by a job or a replica, idle or not) at the on-demand price,
  those held by a spot job at the spot price; energy is in the price;
- egress: each transfer's bytes x the price of each link it leaves a site over, billed to that
  site.
A site's cost is split between its training and its serving by the GPU-hours each held (the
idle share pro rata), giving cost per billion tokens trained and per million served.
"""

from __future__ import annotations

import itertools
import json
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .engine.estate import EstateRun
from .results import MARKER, Results, partial_folder, summary_json
from .schema import check_estate_summary
from .spec.estate import AUDITED, Estate, _allowed, rule_text
from .spec.loader import content_hash
from .version import __version__

#: Days in the mean month, for prices quoted per month.
DAYS_PER_MONTH = 30.4375


def _strip(res: Results, names: set[str]) -> None:
    """Drop jobs a site built but never ran (a burst copy never called, a job that burst
    away before it started) from that site's summary and tables."""
    if not names:
        return
    for n in names:
        res.summary["training"].pop(n, None)
    res.jobs = res.jobs[~res.jobs["job"].isin(names)].reset_index(drop=True)
    res.events = res.events[~res.events["job"].isin(names)].reset_index(drop=True)


def _used_gpu_h(summary: dict[str, Any]) -> float:
    return float(
        sum(v for b, v in summary["ledger_gpu_h"].items() if b not in ("unallocated", "down"))
    )


def _site_cost(run: EstateRun, name: str, s: dict[str, Any], egress: float) -> dict[str, float]:
    site = run.estate.site(name)
    months = float(s["duration_s"]) / 86400.0 / DAYS_PER_MONTH
    out = {"capex": 0.0, "opex": 0.0, "energy": 0.0, "colocation": 0.0, "rental": 0.0}
    if site.kind == "cloud":
        used = _used_gpu_h(s)
        spot = run.spot_gpu_s.get(name, 0.0) / 3600.0
        od = site.cost.on_demand_usd_per_gpu_hour or 0.0
        sp = site.cost.spot_usd_per_gpu_hour or od
        out["rental"] = (used - spot) * od + spot * sp
    else:
        priv = s["cost_usd"]["private"]
        out.update(capex=priv["capex"], opex=priv["opex"], energy=priv["energy"])
        if site.kind == "colocation":
            cl = site.site_cluster()
            it_kw = sum(
                p.nodes * (p.gpus_per_node * p.gpu.tdp_w + site.power.node_overhead_w) / 1e3
                for p in cl.node_pools
            )
            out["colocation"] = site.cost.colocation_usd_per_kw_month * it_kw * months
    out["egress"] = egress
    out["total"] = float(sum(out.values()))
    return out


def _audit(run: EstateRun, sites: dict[str, Results]) -> pd.DataFrame:
    """Every placement of classified work: where it ran, the rule it is under, and whether the
    site meets it (a reviewer's check that nothing crossed a border)."""
    es = run.estate
    rows: list[dict[str, Any]] = []
    for job in es.training:
        if job.classification not in AUDITED:
            continue
        d = None if job.data.dataset is None else es.dataset(job.data.dataset)
        residency = "any" if d is None else d.residency
        for site_name, res in sites.items():
            ev = res.events[res.events["job"] == job.name]
            for t, kind in zip(ev["time_s"], ev["event"], strict=True):
                if kind != "start":  # a restart is on the same site as its start
                    continue
                j = es.site(site_name).jurisdiction
                rows.append(
                    dict(
                        time_s=float(t),
                        event=f"job {kind}",
                        work=job.name,
                        classification=job.classification,
                        data=job.data.dataset or "",
                        rule=rule_text(residency),
                        site=site_name,
                        jurisdiction=j,
                        allowed=_allowed(residency, j),
                    )
                )
    for svc in es.inference:
        if svc.classification not in AUDITED:
            continue
        site_name = run.placements[svc.name]
        j = es.site(site_name).jurisdiction
        rule = svc.residency()
        rows.append(
            dict(
                time_s=float(svc.start_at),
                event="service placed",
                work=svc.name,
                classification=svc.classification,
                data=f"users in {svc.users.jurisdiction}" if svc.users else "",
                rule=rule_text(rule),
                site=site_name,
                jurisdiction=j,
                allowed=_allowed(rule, j),
            )
        )
    for tr in run.transfers:
        d = es.dataset(tr.what) if tr.what in [x.name for x in es.data] else None
        if d is None or d.residency == "any":
            continue
        owner = next((j for j in es.training if j.name == tr.owner), None)
        for site_name in tr.route.split(" -> "):
            j = es.site(site_name).jurisdiction
            rows.append(
                dict(
                    time_s=tr.start_s,
                    event=f"{tr.kind} transfer",
                    work=tr.owner,
                    classification=owner.classification if owner else "",
                    data=d.name,
                    rule=rule_text(d.residency),
                    site=site_name,
                    jurisdiction=j,
                    allowed=_allowed(d.residency, j),
                )
            )
    cols = [
        "time_s",
        "event",
        "work",
        "classification",
        "data",
        "rule",
        "site",
        "jurisdiction",
        "allowed",
    ]
    return pd.DataFrame(rows, columns=cols).sort_values(["time_s", "work"], kind="stable")


def assemble_estate(run: EstateRun, sites: dict[str, Results]) -> EstateResults:
    """The estate's results from its run and each site's own `Results` (runner.assemble on
    the site's factory run)."""
    es = run.estate
    for name, res in sites.items():
        _strip(res, {job for s, job in run.absent if s == name})
    egress_by_site: dict[str, float] = {s.name: 0.0 for s in es.sites}
    for tr in run.transfers:
        for site, usd in tr.egress_by_site:
            egress_by_site[site] += usd
    duration = es.duration
    site_rows: dict[str, Any] = {}
    training: dict[str, Any] = {}
    inference: dict[str, Any] = {}
    for name, res in sites.items():
        s = res.summary
        spec = es.site(name)
        cost = _site_cost(run, name, s, egress_by_site[name])
        ledger = s["ledger_gpu_h"]
        used = _used_gpu_h(s)
        train_h = sum(
            ledger.get(b, 0.0)
            for b in ledger
            if b not in ("unallocated", "down") and not b.startswith("inference")
        )
        tokens = float(sum(j.get("tokens_trained") or 0.0 for j in s["training"].values()))
        served = float(sum(v["output_tokens"] for v in s["inference"].values()))
        # the site's cost split by use: at a cloud site only what was rented is a cost; at an
        # owned one the idle share is carried pro rata by the work
        t_share = train_h / used if used > 0 else 0.0
        row = {
            "kind": spec.kind,
            "jurisdiction": spec.jurisdiction,
            "gpus": s["gpus"],
            "utilisation": s["utilisation"],
            "used_gpu_h": used,
            "rented_gpu_h": used if spec.kind == "cloud" else None,
            "energy_mwh": None if spec.kind == "cloud" else s["energy_mwh"],
            "cost_usd": cost,
            "tokens_trained": tokens,
            "output_tokens_served": served,
            "usd_per_btok_trained": cost["total"] * t_share / (tokens / 1e9)
            if tokens > 0
            else None,
            "usd_per_mtok_served": cost["total"] * (1 - t_share) / (served / 1e6)
            if served > 0
            else None,
            "jobs": sorted(s["training"]),
            "services": sorted(s["inference"]),
        }
        if spec.kind == "cloud":
            row["spot_gpu_h"] = run.spot_gpu_s.get(name, 0.0) / 3600.0
            row["rented_nodes_mean"] = used / (duration / 3600.0) / spec.gpus_per_node
        site_rows[name] = row
        for jn, j in s["training"].items():
            training[jn] = {**j, "site": name}
        for sn, v in s["inference"].items():
            inference[sn] = {**v, "site": name}
    # a request served away from its users pays the round trip (reported; see docs)
    for svc in es.inference:
        at = run.placements[svc.name]
        near = es.users_site(svc, at)
        p = es.path(near, at)
        inference[svc.name]["users_site"] = near
        inference[svc.name]["round_trip_s"] = 0.0 if p is None else 2.0 * p.latency_s
    audit = _audit(run, sites)
    transfers = pd.DataFrame(
        [
            dict(
                kind=t.kind,
                data=t.what,
                job=t.owner,
                src=t.src,
                dst=t.dst,
                route=t.route,
                bytes=t.bytes,
                start_s=t.start_s,
                end_s=t.end_s,
                egress_usd=t.egress_usd,
            )
            for t in run.transfers
        ],
        columns=[
            "kind",
            "data",
            "job",
            "src",
            "dst",
            "route",
            "bytes",
            "start_s",
            "end_s",
            "egress_usd",
        ],
    )
    bursts: list[dict[str, Any]] = [
        dict(
            job=b.job,
            src=b.src,
            dst=b.dst,
            price=b.price,
            queued_s=b.queued_s,
            at_s=b.at_s,
            staged_s=b.staged_s,
        )
        for b in run.bursts
    ]
    for b in bursts:
        training[b["job"]]["burst"] = {k: b[k] for k in ("src", "price", "queued_s", "at_s")}
    total = float(sum(r["cost_usd"]["total"] for r in site_rows.values()))
    tokens = float(sum(r["tokens_trained"] for r in site_rows.values()))
    served = float(sum(r["output_tokens_served"] for r in site_rows.values()))
    train_usd = float(
        sum(
            (r["usd_per_btok_trained"] or 0.0) * r["tokens_trained"] / 1e9
            for r in site_rows.values()
        )
    )
    links = []
    for i, link in enumerate(es.links):
        moved = sum(t.bytes for t in run.transfers if i in _links_of(es, t.route))
        links.append(
            {
                "between": list(link.between),
                "gbit_s": link.gbit_s,
                "bytes": moved,
                "egress_usd": float(
                    sum(
                        usd
                        for t in run.transfers
                        for (site, usd), j in zip(
                            t.egress_by_site, _links_of(es, t.route), strict=True
                        )
                        if j == i
                    )
                ),
            }
        )
    gpus = int(sum(r["gpus"] for r in site_rows.values()))
    summary: dict[str, Any] = {
        "scenario": es.name,
        "seed": es.seed,
        "fidelity": es.fidelity,
        "duration_s": duration,
        "gpus": gpus,
        "estate": {
            "sites": site_rows,
            "links": links,
            "transfers": {
                "count": len(run.transfers),
                "bytes": float(sum(t.bytes for t in run.transfers)),
                "egress_usd": float(sum(t.egress_usd for t in run.transfers)),
            },
            "bursts": bursts,
            "cost_usd": {
                "by_site": {n: r["cost_usd"]["total"] for n, r in site_rows.items()},
                "egress": float(sum(egress_by_site.values())),
                "total": total,
            },
            "usd_per_btok_trained": train_usd / (tokens / 1e9) if tokens > 0 else None,
            "usd_per_mtok_served": (total - train_usd) / (served / 1e6) if served > 0 else None,
            "audit": {"placements": len(audit), "outside_rule": int((~audit["allowed"]).sum())},
        },
        "training": training,
        "inference": inference,
    }
    meta = {
        "scenario_hash": content_hash(es),
        "wall_s": run.wall_s,
        "events": run.events,
        "version": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    check_estate_summary(summary)  # the schema the estate report reads (schema.EstateSummary)
    return EstateResults(es, summary, meta, sites, audit, transfers)


def _links_of(es: Estate, route: str) -> list[int]:
    hops = route.split(" -> ")
    out = []
    for a, b in itertools.pairwise(hops):
        out.append(next(i for i, lk in enumerate(es.links) if set(lk.between) == {a, b}))
    return out


class EstateResults:
    """An estate run: the estate's summary and tables, and each site's own `Results`."""

    def __init__(
        self,
        estate: Estate,
        summary: dict[str, Any],
        meta: dict[str, Any],
        sites: dict[str, Results],
        audit: pd.DataFrame,
        transfers: pd.DataFrame,
    ):
        self.scenario = estate
        self.estate = estate
        self.summary = summary
        self.meta = meta
        self.sites = sites
        self.audit = audit
        self.transfers = transfers
        self.jobs = pd.DataFrame(
            [
                {"job": n, **{k: v for k, v in j.items() if k != "burst"}}
                for n, j in summary["training"].items()
            ]
        )
        self.timeseries = pd.concat(
            [r.timeseries.assign(site=n) for n, r in sites.items()], ignore_index=True
        )

    def text(self) -> str:
        s = self.summary
        e = s["estate"]
        lines = [
            f"estate {s['scenario']}  seed {s['seed']}  {len(e['sites'])} sites, {s['gpus']:,} GPUs"
            f"  {s['duration_s'] / 86400:.2f} days  fidelity {s['fidelity']}",
            "",
            f"  {'site':<14}{'kind':<12}{'where':<7}{'GPUs':>7}{'allocated':>11}{'training':>10}"
            f"{'serving':>9}{'cost USD':>14}{'USD/Btok':>10}{'USD/Mtok':>10}",
        ]

        def num(x: float | None, fmt: str) -> str:
            return "-" if x is None else format(x, fmt)

        for name, r in e["sites"].items():
            u = r["utilisation"]
            lines.append(
                f"  {name:<14}{r['kind']:<12}{r['jurisdiction']:<7}{r['gpus']:>7,}"
                f"{u['allocated']:>11.1%}{u['training']:>10.1%}{u['serving']:>9.1%}"
                f"{r['cost_usd']['total']:>14,.0f}{num(r['usd_per_btok_trained'], ',.0f'):>10}"
                f"{num(r['usd_per_mtok_served'], ',.2f'):>10}"
            )
        c = e["cost_usd"]
        lines.append(
            f"  {'estate':<14}{'':<12}{'':<7}{s['gpus']:>7,}{'':>30}{c['total']:>14,.0f}"
            f"{num(e['usd_per_btok_trained'], ',.0f'):>10}"
            f"{num(e['usd_per_mtok_served'], ',.2f'):>10}"
        )
        for name, r in e["sites"].items():
            parts = [f"{k} {v:,.0f}" for k, v in r["cost_usd"].items() if k != "total" and v > 0]
            lines.append(f"    {name}: " + (", ".join(parts) or "nothing"))
        t = e["transfers"]
        lines += [
            "",
            f"transfers: {t['count']}, {t['bytes'] / 1e12:,.2f} TB,"
            f" egress {t['egress_usd']:,.0f} USD",
        ]
        for row in self.transfers.head(10).itertuples():
            took = row.end_s - row.start_s if row.end_s == row.end_s else None  # NaN: in flight
            span = (
                "in flight"
                if took is None
                else (f"in {took / 3600:.2f} h" if took >= 3600 else f"in {took:,.1f} s")
            )
            lines.append(
                f"  {row.kind} {row.data} for {row.job}: {row.route}, {row.bytes / 1e12:,.2f} TB"
                f" {span}, {row.egress_usd:,.0f} USD"
            )
        if len(self.transfers) > 10:
            lines.append(f"  ... {len(self.transfers) - 10} more in transfers.csv")
        lines.append("")
        if e["bursts"]:
            lines.append(f"bursts: {len(e['bursts'])}")
            for b in e["bursts"]:
                lines.append(
                    f"  {b['job']}: {b['src']} -> {b['dst']} ({b['price']}) at"
                    f" {b['at_s'] / 3600:.1f} h after {b['queued_s'] / 3600:.1f} h queued"
                )
        else:
            lines.append("bursts: none (no job waited past its burst.when_queued_s)")
        lines += ["", "work"]
        for name, j in s["training"].items():
            lines.append(
                f"  job {name:<16} at {j['site']:<12} {j['state']:<10}"
                f" {j['tokens_trained']:.3g}/{j['tokens_target']:.3g} tokens, ETTR "
                f"{num(j['ettr'], '.1%')}, queued {num(j['queued_s'], ',.0f')} s"
            )
        for name, v in s["inference"].items():
            slo = "-" if v["slo_attainment"] is None else f"{v['slo_attainment']:.1%}"
            lines.append(
                f"  service {name:<12} at {v['site']:<12} {v['requests']:,} requests, SLO {slo},"
                f" {v['replicas_mean']:.1f} replicas mean; users at {v['users_site']}"
                f" (+{v['round_trip_s'] * 1e3:.0f} ms round trip)"
            )
        a = e["audit"]
        lines += [
            "",
            f"audit: {a['placements']} placements of classified work, {a['outside_rule']} outside"
            " their rule",
        ]
        for row in self.audit.head(12).itertuples():
            lines.append(
                f"  {row.time_s / 3600:>8.1f} h  {row.event:<16} {row.work:<16}"
                f" {row.classification:<11}"
                f" {row.site} ({row.jurisdiction}), {row.rule}: {'ok' if row.allowed else 'BREACH'}"
            )
        if len(self.audit) > 12:
            lines.append(f"  ... {len(self.audit) - 12} more in audit.csv")
        return "\n".join(lines)

    def save(self, out: str | Path, *, plots: bool = True, force: bool = False) -> Path:
        """summary.json, meta.json, scenario.yaml, the estate's tables (sites, audit,
        transfers, jobs) and its figure, and each site's own results under site-<name>/.
        A folder is refreshed only when it holds an earlier run of the same estate or `force`
        is set."""
        out, tmp = partial_folder(out, self.meta, force)
        (tmp / "summary.json").write_text(summary_json(self.summary))
        (tmp / MARKER).write_text(json.dumps(self.meta, sort_keys=True, indent=2) + "\n")
        (tmp / "scenario.yaml").write_text(
            yaml.safe_dump(self.estate.model_dump(mode="json"), sort_keys=False)
        )
        rows = [
            {"site": n, **{k: v for k, v in r.items() if not isinstance(v, dict | list)}}
            | {f"cost_{k}_usd": v for k, v in r["cost_usd"].items()}
            | {f"utilisation_{k}": v for k, v in r["utilisation"].items()}
            for n, r in self.summary["estate"]["sites"].items()
        ]
        pd.DataFrame(rows).to_csv(tmp / "sites.csv", index=False)
        self.audit.to_csv(tmp / "audit.csv", index=False)
        self.transfers.to_csv(tmp / "transfers.csv", index=False)
        self.jobs.to_csv(tmp / "jobs.csv", index=False)
        self.timeseries.to_csv(tmp / "timeseries.csv", index=False)
        for name, res in self.sites.items():
            busy = bool(res.summary["training"] or res.summary["inference"])
            # a site with no work has nothing to draw: its tables say so
            res.save(tmp / f"site-{name}", plots=plots and busy, force=True)
        if plots:
            from .plots import estate_figure

            estate_figure(self).savefig(tmp / "estate.png", dpi=120)
        out.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            target = out / f.name
            if target.is_dir():
                shutil.rmtree(target)
            f.replace(target)
        tmp.rmdir()
        return out
