"""Estates (issue 18): sites joined by links, residency, bursts, spot reclaims, cost by site.

Closed forms: a transfer alone on its path takes size / bandwidth + latency, n equal transfers
sharing a link each take n x size / bandwidth + latency; egress = bytes x price per hop;
colocation = price x kW x months; a cloud site bills the GPU-hours held. Properties: no
placement ever breaks a residency rule (Hypothesis). An estate of one site gives today's
single-cluster summary byte for byte."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import aifactory_sim as af
from aifactory_sim.engine.estate import CC_ITERATION_S
from aifactory_sim.engine.fleet import replica_sizing
from aifactory_sim.errors import ScenarioError
from aifactory_sim.results import summary_json
from aifactory_sim.spec.estate import Estate

ROOT = Path(__file__).resolve().parents[1]

POOL = {"name": "h100", "nodes": 4, "gpu": "H100-SXM", "gpus_per_node": 8}


def owned(name: str, where: str, nodes: int = 4, kind: str = "private") -> dict[str, Any]:
    return {
        "name": name,
        "jurisdiction": where,
        "kind": kind,
        "cluster": {
            "node_pools": [{**POOL, "nodes": nodes}],
            "storage": {"read_gb_s": 50, "write_gb_s": 25},
        },
        "cost": {"node_capex_usd": 300000, "amortization_years": 4},
    }


def cloud(name: str, where: str, **cost: Any) -> dict[str, Any]:
    return {
        "name": name,
        "jurisdiction": where,
        "kind": "cloud",
        "gpu": "H100-SXM",
        "max_nodes": 8,
        "provisioning_s": 600,
        "storage": {"read_gb_s": 50, "write_gb_s": 25},
        "cost": {"on_demand_usd_per_gpu_hour": 4.0, "spot_usd_per_gpu_hour": 2.0, **cost},
    }


def job(name: str, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "model": "llama3-8b",
        "tokens": 2e9,
        "seq_len": 4096,
        "global_batch_tokens": "1M",
        "parallel": {"tp": 1, "pp": 1, "dp": 32},
        **kw,
    }


def estate(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "e", "seed": 1, "duration": "2d", "sites": [owned("a", "eu")]}
    base.update(kw)
    return base


# --- an estate of one site -----------------------------------------------------------------
def test_an_estate_of_one_site_is_the_single_cluster_byte_for_byte() -> None:
    """The bundled default (failures, storage, spares, a job and a service), written as one
    site of an estate: its site's summary and tables are the single cluster's, byte for byte."""
    data = yaml.safe_load((ROOT / "scenarios" / "default.yaml").read_text())
    data["duration"] = "2d"
    single = af.run(af.load(data))
    site = {"name": "only", "jurisdiction": "eu", "kind": "private", "cluster": data["cluster"]}
    for key in ("power", "cost"):
        if key in data:
            site[key] = data[key]
    es = {
        k: data[k]
        for k in (
            "name",
            "seed",
            "duration",
            "fidelity",
            "scheduler",
            "failures",
            "training",
            "inference",
        )
        if k in data
    }
    es["sites"] = [site]
    res = af.run(af.load(es))
    got = res.sites["only"]
    assert summary_json(got.summary) == summary_json(single.summary)
    for table in (
        "jobs",
        "timeseries",
        "ledger",
        "failures",
        "events",
        "requests",
        "services",
        "power",
    ):
        assert getattr(got, table).to_csv(index=False) == getattr(single, table).to_csv(
            index=False
        ), table


# --- links ------------------------------------------------------------------------------------
def staged(n_jobs: int, gbit_s: float = 10.0, latency_ms: float = 20.0) -> Any:
    """Jobs at site b reading a dataset held at a: each stages tokens x bytes_per_token."""
    data = estate(
        sites=[owned("a", "eu"), owned("b", "eu", nodes=4 * n_jobs)],
        links=[
            {
                "between": ["a", "b"],
                "gbit_s": gbit_s,
                "latency_ms": latency_ms,
                "egress_usd_per_gb": 0.05,
            }
        ],
        data=[{"name": "corpus", "size_tb": 100, "jurisdiction": "eu", "site": "a"}],
        training=[
            job(f"j{i}", site="b", submit_at=3600, data={"dataset": "corpus", "bytes_per_token": 4})
            for i in range(n_jobs)
        ],
    )
    return af.run(af.load(data))


def test_a_transfer_alone_takes_size_over_bandwidth_plus_latency() -> None:
    res = staged(1)
    nbytes = 2e9 * 4
    want = nbytes / (10e9 / 8) + 0.020
    tr = res.transfers.iloc[0]
    assert tr["bytes"] == nbytes
    assert tr["end_s"] - tr["start_s"] == pytest.approx(want, rel=1e-12)
    j = res.summary["training"]["j0"]
    assert j["submitted_at_s"] == pytest.approx(3600 + want, rel=1e-12)  # queued once it is in
    # egress: bytes x price, billed to the sending site
    assert tr["egress_usd"] == pytest.approx(nbytes / 1e9 * 0.05, rel=1e-12)
    assert res.summary["estate"]["sites"]["a"]["cost_usd"]["egress"] == pytest.approx(
        nbytes / 1e9 * 0.05
    )
    assert res.summary["estate"]["sites"]["b"]["cost_usd"]["egress"] == 0.0


def test_transfers_sharing_a_link_split_its_bandwidth() -> None:
    res = staged(3)
    nbytes = 2e9 * 4
    for tr in res.transfers.itertuples():
        assert tr.end_s - tr.start_s == pytest.approx(3 * nbytes / (10e9 / 8) + 0.020, rel=1e-9)


def test_egress_is_billed_per_hop_over_a_relay() -> None:
    data = estate(
        sites=[owned("a", "eu"), owned("m", "eu"), owned("b", "eu")],
        links=[
            {"between": ["a", "m"], "gbit_s": 100, "latency_ms": 5, "egress_usd_per_gb": 0.02},
            {"between": ["m", "b"], "gbit_s": 40, "latency_ms": 7, "egress_usd_per_gb": 0.03},
        ],
        data=[{"name": "corpus", "size_tb": 1, "jurisdiction": "eu", "site": "a"}],
        training=[job("j", site="b", data={"dataset": "corpus", "bytes_per_token": 4})],
    )
    res = af.run(af.load(data))
    tr = res.transfers.iloc[0]
    nbytes = 2e9 * 4
    assert tr["route"] == "a -> m -> b"
    assert tr["end_s"] - tr["start_s"] == pytest.approx(nbytes / (40e9 / 8) + 0.012, rel=1e-12)
    assert tr["egress_usd"] == pytest.approx(nbytes / 1e9 * (0.02 + 0.03), rel=1e-12)
    sites = res.summary["estate"]["sites"]
    assert sites["a"]["cost_usd"]["egress"] == pytest.approx(nbytes / 1e9 * 0.02)
    assert sites["m"]["cost_usd"]["egress"] == pytest.approx(nbytes / 1e9 * 0.03)


# --- residency --------------------------------------------------------------------------------
def refusal(**kw: Any) -> str:
    with pytest.raises(ScenarioError) as err:
        af.load(estate(**kw))
    return str(err.value)


TOKENS = {
    "prompt_tokens": {"kind": "fixed", "value": 512},
    "output_tokens": {"kind": "fixed", "value": 128},
}
SOVEREIGN = {"name": "pii", "size_tb": 10, "jurisdiction": "eu", "residency": "eu"}


def test_a_job_placed_outside_its_datasets_residency_is_refused_naming_job_dataset_rule() -> None:
    msg = refusal(
        sites=[owned("fra", "eu"), owned("iad", "us")],
        links=[{"between": ["fra", "iad"], "gbit_s": 100, "latency_ms": 45}],
        data=[SOVEREIGN],
        training=[job("tune", site="iad", data={"dataset": "pii"})],
    )
    assert "training.0.site" in msg and "'tune'" in msg and "'pii'" in msg and "residency eu" in msg


def test_a_burst_outside_residency_and_a_route_through_a_foreign_site_are_refused() -> None:
    msg = refusal(
        sites=[owned("fra", "eu"), cloud("cloud-us", "us")],
        links=[{"between": ["fra", "cloud-us"], "gbit_s": 100, "latency_ms": 80}],
        data=[SOVEREIGN],
        training=[
            job("tune", data={"dataset": "pii"}, burst={"site": "cloud-us", "when_queued_s": 60})
        ],
    )
    assert "training.0.burst.site" in msg and "'pii'" in msg and "residency eu" in msg
    msg = refusal(
        sites=[owned("fra", "eu"), owned("iad", "us"), owned("ams", "eu")],
        links=[
            {"between": ["fra", "iad"], "gbit_s": 100, "latency_ms": 45},
            {"between": ["iad", "ams"], "gbit_s": 100, "latency_ms": 45},
        ],
        data=[SOVEREIGN],
        training=[job("tune", site="ams", data={"dataset": "pii"})],
    )
    assert "passes iad (us)" in msg and "'tune'" in msg


def test_a_regulated_service_is_refused_a_site_outside_its_users_residency() -> None:
    svc = {
        "name": "chat",
        "model": "llama3-8b",
        "classification": "regulated",
        "users": {"jurisdiction": "eu"},
        "placement": ["fra", "iad"],
        "traffic": {"kind": "poisson", "rate_rps": 1},
        **TOKENS,
    }
    msg = refusal(sites=[owned("fra", "eu"), owned("iad", "us")], inference=[svc])
    assert (
        "inference.0.placement" in msg
        and "'chat'" in msg
        and "iad" in msg
        and "residency eu" in msg
    )
    # a public service's users carry no residency: it may go anywhere
    ok = af.load(
        estate(
            sites=[owned("fra", "eu"), owned("iad", "us")],
            inference=[{**svc, "classification": "public"}],
        )
    )
    assert ok.placements()["chat"] == "fra"


JURIS = ["eu", "us", "uk"]


@st.composite
def estates(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(2, 4))
    sites = []
    for i in range(n):
        where = draw(st.sampled_from(JURIS))
        if draw(st.booleans()) and i > 0:
            sites.append(cloud(f"s{i}", where))
        else:
            sites.append(owned(f"s{i}", where, nodes=draw(st.sampled_from([2, 4, 8]))))
    links = []
    for i in range(1, n):
        j = draw(st.integers(0, i - 1))
        links.append({"between": [f"s{j}", f"s{i}"], "gbit_s": 100, "latency_ms": 10})
    datasets = []
    for k in range(draw(st.integers(1, 3))):
        rule = draw(st.sampled_from(["any", *JURIS, ["eu", "uk"]]))
        datasets.append(
            {
                "name": f"d{k}",
                "size_tb": 1,
                "jurisdiction": draw(st.sampled_from(JURIS)),
                "residency": rule,
                "site": f"s{draw(st.integers(0, n - 1))}",
            }
        )
    jobs = []
    for k in range(draw(st.integers(1, 4))):
        kw: dict[str, Any] = {"data": {"dataset": f"d{draw(st.integers(0, len(datasets) - 1))}"}}
        if draw(st.booleans()):
            kw["site"] = f"s{draw(st.integers(0, n - 1))}"
        clouds = [s["name"] for s in sites if s["kind"] == "cloud"]
        if clouds and draw(st.booleans()):
            kw["burst"] = {"site": draw(st.sampled_from(clouds)), "when_queued_s": 60}
        jobs.append(
            job(
                f"j{k}",
                **{**kw, "parallel": {"tp": 1, "pp": 1, "dp": draw(st.sampled_from([8, 16]))}},
            )
        )
    return estate(sites=sites, links=links, data=datasets, training=jobs)


@settings(max_examples=150, deadline=None)
@given(estates())
def test_no_placement_ever_breaks_residency(data: dict[str, Any]) -> None:
    """Whatever the estate: either it is refused, or every job's site, its burst site and every
    site its data's route passes are within its dataset's residency."""
    try:
        es = af.load(data)
    except ScenarioError:
        return
    assert isinstance(es, Estate)
    place = es.placements()
    for j in es.training:
        d = es.dataset(j.data.dataset)
        where = [place[j.name]] + ([j.burst.site] if j.burst else [])
        for target in where:
            path = es.path(es.dataset_site(d), target)
            assert path is not None
            for s in path.sites:
                rule = d.residency
                juris = es.site(s).jurisdiction
                assert rule == "any" or juris in ([rule] if isinstance(rule, str) else rule)


# --- bursts, the cloud, spot ----------------------------------------------------------------
def burst_estate(price: str = "on-demand", **cloud_cost: Any) -> dict[str, Any]:
    return estate(
        duration="3d",
        sites=[owned("home", "eu"), cloud("cl", "eu", **cloud_cost)],
        links=[
            {"between": ["home", "cl"], "gbit_s": 200, "latency_ms": 3, "egress_usd_per_gb": 0.05}
        ],
        training=[
            job("big", tokens=40e9),
            job("late", submit_at=600, burst={"site": "cl", "when_queued_s": 3600, "price": price}),
        ],
    )


def test_a_job_queued_past_its_limit_bursts_to_the_cloud_and_pays_rental() -> None:
    res = af.run(af.load(burst_estate()))
    (b,) = res.summary["estate"]["bursts"]
    assert b["job"] == "late" and b["queued_s"] == pytest.approx(3600)
    late = res.summary["training"]["late"]
    assert late["site"] == "cl" and late["state"] == "finished"
    assert late["started_at_s"] == pytest.approx(600 + 3600)
    assert "late" not in res.sites["home"].summary["training"]
    # it waited the node's provisioning before computing: recovery_h holds it
    assert late["recovery_h"] == pytest.approx(600 / 3600, rel=1e-9)
    cl = res.summary["estate"]["sites"]["cl"]
    used = sum(
        v
        for k, v in res.sites["cl"].summary["ledger_gpu_h"].items()
        if k not in ("unallocated", "down")
    )
    assert used == pytest.approx(
        32 * (late["finished_at_s"] - late["started_at_s"]) / 3600, rel=1e-9
    )
    assert cl["cost_usd"]["rental"] == pytest.approx(used * 4.0, rel=1e-12)
    assert cl["cost_usd"]["capex"] == 0.0


def test_spot_reclaims_follow_their_poisson_rate_and_restart_the_job() -> None:
    data = burst_estate("spot", spot_interruptions_per_day=6.0)
    data["training"][1]["tokens"] = 20e9
    data["training"][1]["checkpoint"] = {"interval": 1800, "write_s": 10, "reload_s": 30}
    res = af.run(af.load(data))
    late = res.summary["training"]["late"]
    held_node_days = res.summary["estate"]["sites"]["cl"]["spot_gpu_h"] / 8 / 24
    reclaims = res.sites["cl"].summary["failures"]["by_component"].get("spot", 0)
    expected = 6.0 * held_node_days
    assert expected > 10
    assert abs(reclaims - expected) < 4 * np.sqrt(expected)  # Poisson, 4 sigma
    assert late["interruptions"] == reclaims and late["restarts"] == reclaims
    cl = res.summary["estate"]["sites"]["cl"]
    assert cl["cost_usd"]["rental"] == pytest.approx(cl["spot_gpu_h"] * 2.0, rel=1e-9)


def test_colocation_pays_its_contract_per_kw_month() -> None:
    site = owned("colo", "us", kind="colocation")
    site["cost"]["colocation_usd_per_kw_month"] = 180.0
    site["power"] = {"node_overhead_w": 2000}
    res = af.run(af.load(estate(sites=[site], duration="10d")))
    kw = 4 * (8 * 700 + 2000) / 1e3
    want = 180.0 * kw * 10 / 30.4375
    assert res.summary["estate"]["sites"]["colo"]["cost_usd"]["colocation"] == pytest.approx(
        want, rel=1e-12
    )


def test_confidential_computing_adds_its_host_time_to_every_iteration() -> None:
    es = af.load(estate(sites=[owned("a", "eu")]))
    svc = (
        af.load(
            estate(
                inference=[
                    {
                        "name": "c",
                        "model": "llama3-8b",
                        "traffic": {"kind": "poisson", "rate_rps": 1},
                        **TOKENS,
                    }
                ]
            )
        )
        .inference[0]
        .plain()
    )
    pool = es.sites[0].site_cluster().node_pools[0]
    plain = replica_sizing(svc, pool, 1.0)
    cc = replica_sizing(svc, pool, 1.0, CC_ITERATION_S)
    diff = np.asarray(cc.table.decode_base[1:]) - np.asarray(plain.table.decode_base[1:])
    assert np.allclose(diff, CC_ITERATION_S, rtol=1e-6)


# --- services across sites ------------------------------------------------------------------
def chat(**kw: Any) -> dict[str, Any]:
    return {
        "name": "chat",
        "model": "llama3-8b",
        "traffic": {"kind": "poisson", "rate_rps": 2},
        **TOKENS,
        "cold_start": {"weights_s": 30},
        "autoscaler": {"kind": "hpa", "metric": "concurrency", "target": 32, "min_replicas": 1, "max_replicas": 8},
        **kw,
    }


def test_a_service_goes_to_the_nearest_site_that_holds_its_largest_fleet() -> None:
    sites = [owned("near", "eu", nodes=4), cloud("far", "eu")]
    links = [{"between": ["near", "far"], "gbit_s": 100, "latency_ms": 12}]
    # 8 replicas of one GPU = 1 node: beside a 4-node job `near` is full, so `far` serves
    es = af.load(estate(sites=sites, links=links, training=[job("j")], inference=[chat(placement=["near", "far"])]))
    assert es.placements()["chat"] == "far"
    plain = es.scenarios()["far"].inference[0]
    assert plain.network_rtt_s == pytest.approx(0.024)  # the users are at `near`
    assert plain.cold_start.container_s == pytest.approx(30 + 600)  # a rented node boots first
    # with room beside the job it stays near its users, with no round trip
    sites[0] = owned("near", "eu", nodes=5)
    es = af.load(estate(sites=sites, links=links, training=[job("j")], inference=[chat(placement=["near", "far"])]))
    assert es.placements()["chat"] == "near"
    assert es.scenarios()["near"].inference[0].network_rtt_s == 0.0


@pytest.mark.parametrize("fidelity", ["fast", "fluid"])
def test_the_users_round_trip_adds_to_every_ttft_and_e2e(fidelity: str) -> None:
    base = {
        "duration": "1h",
        "seed": 4,
        "fidelity": fidelity,
        "cluster": {"node_pools": [{**POOL, "nodes": 2}]},
        "inference": [chat()],
    }
    near = af.run(af.load(base)).summary["inference"]["chat"]
    base["inference"] = [chat(network_rtt_s=0.05)]
    far = af.run(af.load(base)).summary["inference"]["chat"]
    for q in ("p50", "p99"):
        assert far["ttft_s"][q] == pytest.approx(near["ttft_s"][q] + 0.05, rel=1e-9)
        assert far["e2e_s"][q] == pytest.approx(near["e2e_s"][q] + 0.05, rel=1e-6)
    assert far["tpot_s"] == near["tpot_s"]


# --- the shared example from the CLI ------------------------------------------------------------
def test_hybrid_sovereign_runs_from_the_cli_with_the_estate_report(tmp_path: Path, capsys: Any) -> None:
    """shared/examples/hybrid-sovereign.yaml, bundled byte for byte, shortened to four days
    here (the month takes about 45 s with its report: benchmarks/ estate-month): the text and
    the page show utilisation and cost by site, bursts, egress and the audit table."""
    from aifactory_sim.cli import main

    out = tmp_path / "hs"
    rc = main(["run", str(ROOT / "scenarios" / "hybrid-sovereign.yaml"), "--set", "duration=4d",
               "--out", str(out), "--report", "--no-plots"])
    assert rc == 0
    text = capsys.readouterr().out
    for part in ("fra-private", "iad-colo", "cloud-eu", "allocated", "cost USD", "bursts:",
                 "transfers:", "egress", "audit:", "0 outside their rule"):
        assert part in text, part
    page = (out / "report.html").read_text()
    for part in ("Sites", "Bursts", "Transfers and egress", "Audit", "site-fra-private/report.html"):
        assert part in page, part
    audit = __import__("pandas").read_csv(out / "audit.csv")
    assert set(audit["work"]) == {"finetune-70b", "advisor-chat"}
    assert audit["allowed"].all() and set(audit["jurisdiction"]) == {"eu"}
    # the regulated service stays in the EU; the colocation site pays its contract
    s = __import__("json").loads((out / "summary.json").read_text())
    assert s["inference"]["advisor-chat"]["site"] == "fra-private"
    assert s["estate"]["sites"]["iad-colo"]["cost_usd"]["colocation"] > 0
    assert s["estate"]["sites"]["cloud-eu"]["cost_usd"]["total"] == 0.0  # nothing rented


def test_a_wrong_site_name_exits_2_naming_the_field(tmp_path: Path, capsys: Any) -> None:
    from aifactory_sim.cli import main

    data = yaml.safe_load((ROOT / "scenarios" / "hybrid-sovereign.yaml").read_text())
    data["inference"][0]["placement"] = ["fra-private", "cloud-us"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "inference.0.placement" in err and "cloud-us" in err and "Traceback" not in err
