"""The summary's schema (aifactory_sim/schema.py): every golden summary matches it, a live run's
summary with the keys that can be null matches it, and a summary with a key removed, mistyped
or added is refused with the key's path."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

import aifactory_sim as af
from aifactory_sim.schema import (
    CORE_KEYS,
    ENERGY_KEYS,
    LEDGER_BUCKETS,
    Summary,
    SummaryError,
    check_estate_summary,
    check_summary,
)

GOLDEN = Path(__file__).parent / "golden"
SUMMARIES = sorted(p.parent.name for p in GOLDEN.glob("*/summary.json"))
#: A golden summary with training jobs, a service with an SLO, failures and every section.
FULL = "scenario-factory"


def golden(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / name / "summary.json").read_text())


def test_there_are_golden_summaries() -> None:
    assert len(SUMMARIES) >= 7 and FULL in SUMMARIES


@pytest.mark.parametrize("name", SUMMARIES)
def test_every_golden_summary_matches_the_schema(name: str) -> None:
    summary = golden(name)
    before = json.dumps(summary, sort_keys=True)
    # an estate's summary has its own schema (each site's passes check_summary as assembled)
    check = check_estate_summary if "estate" in summary else check_summary
    assert check(summary) is None
    assert json.dumps(summary, sort_keys=True) == before  # checked, not changed


def test_the_schema_names_every_top_level_key_and_ledger_bucket() -> None:
    from aifactory_sim.engine.telemetry import BUCKETS

    s = golden(FULL)
    # `facility`, `racks` and `gray` are there only for a scenario with them (this one has none)
    optional = {"facility", "racks", "gray", "queues"}
    assert set(s) == CORE_KEYS | ENERGY_KEYS == set(Summary.__annotations__) - optional
    assert optional <= Summary.__optional_keys__
    assert not CORE_KEYS & ENERGY_KEYS
    assert LEDGER_BUCKETS == tuple(BUCKETS)
    assert set(LEDGER_BUCKETS) == set(s["ledger_gpu_h"])


#: A small cluster: a job that runs, one that waits for nodes, one submitted after the horizon,
#: and a service without an SLO, so that the keys that can be null are null.
LIVE: dict[str, Any] = {
    "name": "schema-test",
    "seed": 3,
    "duration": "10min",
    "cluster": {
        "node_pools": [
            {
                "name": "h100",
                "nodes": 4,
                "gpu": "H100-SXM",
                "gpus_per_node": 8,
                "nic_gbit_s": 400,
                "nvme": {"capacity_tb": 30, "read_gb_s": 25, "write_gb_s": 12},
            }
        ],
        "fabric": {"nodes_per_leaf": 16},
        "storage": {"read_gb_s": 100, "write_gb_s": 50},
    },
    "training": [
        {
            "name": name,
            "model": "llama3-8b",
            "tokens": 1e12,
            "seq_len": 4096,
            "global_batch_seqs": 128,
            "parallel": {"dp": dp},
            "submit_at": at,
        }
        for name, dp, at in (("runs", 8, 0), ("waits", 32, 0), ("later", 8, "1h"))
    ],
    "inference": [
        {
            "name": "chat",
            "model": "llama3-8b",
            "precision": "fp8",
            "tp": 1,
            "replicas": 1,
            "cold_start": {"container_s": 0, "weights_s": 0},
            "traffic": {"kind": "poisson", "rate_rps": 1},
            "prompt_tokens": {"kind": "lognormal", "median": 400, "sigma": 0.5, "max": 2048},
            "output_tokens": {"kind": "geometric", "mean": 50, "max": 512},
        }
    ],
}


@pytest.mark.parametrize("fidelity", ["step", "fluid"])
def test_a_live_summary_with_null_figures_matches_the_schema(fidelity: str) -> None:
    sc = copy.deepcopy(LIVE)
    sc["fidelity"] = fidelity
    s = af.run(af.load(sc)).summary
    check_summary(s)
    later = s["training"]["later"]
    assert later["state"] == "not_submitted" and later["mfu"] is None
    waits = s["training"]["waits"]
    assert waits["state"] == "queued" and waits["started_at_s"] is None and waits["leaves"] is None
    assert s["inference"]["chat"]["slo_met"] == {}
    assert s["inference"]["chat"]["slo_attainment"] is None


# --- refused -----------------------------------------------------------------------------------


def _at(summary: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    *parents, key = path.split(".")
    node = summary
    for p in parents:
        node = node[p]
    return node, key


def _refused(summary: dict[str, Any]) -> SummaryError:
    with pytest.raises(SummaryError) as info:
        check_summary(summary)
    return info.value


@pytest.mark.parametrize(
    "path",
    [
        "gpus",
        "ledger_gpu_h.down",
        "utilisation.serving",
        "failures.by_component",
        "training.pretrain-405b.mfu",
        "training.pretrain-405b.energy_mwh",
        "inference.chat.ttft_s.p99",
        "inference.chat.gpu_h.held",
        "inference.chat.usd_per_mtok.cloud",
        "energy_mwh",
        "cost_usd.private.total",
        "training_usd_per_btok.cloud",
    ],
)
def test_a_summary_missing_a_key_is_refused_with_its_path(path: str) -> None:
    s = golden(FULL)
    node, key = _at(s, path)
    del node[key]
    err = _refused(s)
    assert err.problems == [(f"summary.{path}", "missing key")]
    assert f"summary.{path}: missing key" in str(err)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("gpus", 16640.0),  # a float where an int is due
        ("seed", True),  # a bool is not an int
        ("duration_s", "604800"),  # nothing converts
        ("fidelity", "exact"),  # not a tier
        ("training.pretrain-405b.state", "done"),
        ("training.pretrain-405b.mfu", "0.2"),
        ("training.pretrain-405b.running_s", None),  # never null
        ("inference.chat.ttft_s", 0.07),  # a block, not a number
        ("inference.chat.slo_met.ttft", 1),
        ("inference.chat.requests", 3.6e8),
        ("failures.by_component.gpu", 45.5),
        ("peak_mw", math.nan),  # summary_json refuses NaN
        ("cost_usd.cloud.total", math.inf),
    ],
)
def test_a_summary_with_a_mistyped_key_is_refused_with_its_path(path: str, value: Any) -> None:
    s = golden(FULL)
    node, key = _at(s, path)
    node[key] = value
    err = _refused(s)
    assert [p for p, _ in err.problems] == [f"summary.{path}"]
    assert f"summary.{path}: " in str(err)


@pytest.mark.parametrize(
    "path", ["unknown", "ledger_gpu_h.spare", "inference.chat.ttft_s.p95", "cost_usd.grid"]
)
def test_a_key_the_schema_does_not_name_is_refused(path: str) -> None:
    s = golden(FULL)
    node, key = _at(s, path)
    node[key] = 1.0
    err = _refused(s)
    assert err.problems == [(f"summary.{path}", "unexpected key (the schema does not name it)")]


def test_optional_and_nullable_keys() -> None:
    s = golden(FULL)
    chat = s["inference"]["chat"]
    chat["slo_met"] = {}  # each target is there only when the slo gives it
    chat["slo_attainment"] = None
    chat["ttft_s"] = dict.fromkeys(("mean", "p50", "p90", "p99"))  # no sample
    s["training"]["pretrain-405b"]["queued_s"] = 0  # an int is a float
    s["break_even_utilisation"] = None
    check_summary(s)


def test_every_problem_is_listed() -> None:
    s = golden(FULL)
    del s["scenario"]
    s["training"]["pretrain-405b"]["gpus"] = "16384"
    err = _refused(s)
    assert {p for p, _ in err.problems} == {
        "summary.scenario",
        "summary.training.pretrain-405b.gpus",
    }
    assert "(2 problems)" in str(err)
    assert isinstance(err, ValueError)


ESTATE = "scenario-hybrid-sovereign"


@pytest.mark.parametrize(
    ("path", "value", "why"),
    [
        ("estate.sites.fra-private.kind", "owned", "input should be"),
        ("estate.cost_usd.total", "1.5e6", "input should be a valid number"),
        ("inference.advisor-chat.round_trip_s", None, "input should be a valid number"),
    ],
)
def test_an_estate_summary_with_a_bad_key_is_refused_with_its_path(
    path: str, value: Any, why: str
) -> None:
    summary = golden(ESTATE)
    *head, last = path.split(".")
    node = summary
    for part in head:
        node = node[part]
    node[last] = value
    with pytest.raises(SummaryError) as err:
        check_estate_summary(summary)
    assert "EstateSummary" in str(err.value)
    (where, what) = err.value.problems[0]
    assert where == "summary." + path and what.startswith(why)


def test_an_estate_summary_is_not_a_one_site_summary() -> None:
    with pytest.raises(SummaryError):  # no ledger, no failures, an estate block
        check_summary(golden(ESTATE))
