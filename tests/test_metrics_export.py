"""Dashboard metrics (issue 19): the OpenMetrics export parses, its counters agree with the
summary, every series sits on the scrape grid, and the Parquet table holds the same samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

import aifactory_sim as af
from aifactory_sim import energy
from aifactory_sim.errors import ScenarioError
from aifactory_sim.metrics_export import FORMATS, write_metrics

INTERVAL_S = 60.0


def scenario(fidelity: str = "fast") -> dict:
    """Three hours of a 4-node pool: one training job on two nodes, one 8B service on two GPUs."""
    job = {
        "name": "pretrain",
        "model": "llama3-8b",
        "tokens": 2.0e10,
        "seq_len": 4096,
        "global_batch_tokens": "1M",
        "parallel": {"tp": 1, "pp": 1, "dp": 16},
        "checkpoint": {"interval": "30min"},
        "data": {"source": "synthetic"},
    }
    svc = {
        "name": "chat",
        "model": "llama3-8b",
        "tp": 1,
        "replicas": 2,
        "traffic": {"kind": "poisson", "rate_rps": 2},
        "prompt_tokens": {"kind": "fixed", "value": 512},
        "output_tokens": {"kind": "fixed", "value": 128},
        "cold_start": {"weights_s": 1.0},
    }
    return {
        "name": "metrics",
        "duration": "3h",
        "fidelity": fidelity,
        "cluster": {
            "node_pools": [{"name": "h100", "nodes": 4, "gpu": "H100-SXM"}],
            "fabric": {"nodes_per_leaf": 8},
            "storage": {"read_gb_s": 100, "write_gb_s": 50},
        },
        "power": {"pue": 1.25, "node_overhead_w": 1500},
        "training": [job],
        "inference": [svc],
    }


@pytest.fixture(scope="module")
def run():
    return af.run(af.load(scenario()))


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("metrics")
    paths = write_metrics(run, folder, interval_s=INTERVAL_S)
    text = (folder / "metrics.om").read_text()
    return paths, text, samples(text)


def samples(text: str) -> pd.DataFrame:
    """Every sample of an OpenMetrics text, through prometheus_client's parser."""
    rows = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            rows.append(
                {
                    "family": fam.name,
                    "type": fam.type,
                    "metric": s.name,
                    "labels": tuple(sorted(s.labels.items())),
                    "time_s": float(s.timestamp),
                    "value": s.value,
                }
            )
    return pd.DataFrame(rows)


def last(df: pd.DataFrame, metric: str, **labels: str) -> float:
    rows = df[df["metric"] == metric]
    rows = rows[[all(dict(lab).get(k) == v for k, v in labels.items()) for lab in rows["labels"]]]
    assert rows["labels"].nunique() == 1, (metric, labels, rows["labels"].unique())
    return float(rows.sort_values("time_s")["value"].iloc[-1])


def test_the_export_parses_with_the_expected_families_and_ends_in_eof(exported):
    paths, text, df = exported
    assert [p.name for p in paths] == ["metrics.om", "metrics.parquet"]
    assert text.endswith("# EOF\n")
    types = dict(zip(df["family"], df["type"], strict=False))
    assert types["DCGM_FI_DEV_GPU_UTIL"] == "gauge"
    assert types["DCGM_FI_DEV_POWER_USAGE"] == "gauge"
    assert types["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == "counter"
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:gpu_cache_usage_perc",
        "aifactory_jobs_running",
        "aifactory_jobs_queued",
    ):
        assert types[name] == "gauge", name
    for name in (
        "vllm:prompt_tokens",
        "vllm:generation_tokens",
        "vllm:request_success",
        "aifactory_ledger_gpu_hours",
        "aifactory_job_tokens_trained",
    ):
        assert types[name] == "counter", name
    # labels: node pool on the GPUs, service, queue and pool on the services, job on the jobs
    assert dict(df[df["metric"] == "DCGM_FI_DEV_GPU_UTIL"]["labels"].iloc[0]) == {"pool": "h100"}
    chat = dict(df[df["metric"] == "vllm:generation_tokens_total"]["labels"].iloc[0])
    assert chat == {
        "service": "chat",
        "queue": "default",
        "pool": "h100",
        "model_name": "llama3-8b",
    }
    job = dict(df[df["metric"] == "aifactory_job_tokens_trained_total"]["labels"].iloc[0])
    assert job == {"job": "pretrain", "queue": "default", "pool": "h100"}


def test_counters_end_at_the_summary_totals(run, exported):
    _, _, df = exported
    s = run.summary
    chat = s["inference"]["chat"]
    assert chat["output_tokens"] > 0 and chat["completed"] > 0
    assert last(df, "vllm:generation_tokens_total", service="chat") == pytest.approx(
        chat["output_tokens"], rel=1e-9
    )
    assert last(df, "vllm:request_success_total", service="chat") == pytest.approx(
        chat["completed"], rel=1e-9
    )
    prompt = run.requests.loc[np.isfinite(run.requests["first_token_s"]), "prompt_tokens"].sum()
    assert last(df, "vllm:prompt_tokens_total", service="chat") == pytest.approx(prompt, rel=1e-9)
    for bucket, hours in s["ledger_gpu_h"].items():
        got = last(df, "aifactory_ledger_gpu_hours_total", bucket=bucket)
        assert got == pytest.approx(hours, rel=1e-9, abs=1e-12), bucket
    tokens = s["training"]["pretrain"]["tokens_trained"]
    assert tokens > 0
    assert last(df, "aifactory_job_tokens_trained_total", job="pretrain") == pytest.approx(
        tokens, rel=1e-9
    )
    # facility energy is the summary's energy_mwh (IT x PUE); DCGM's counter is the GPUs' board
    # energy alone, in mJ, the integral of the power table's gpu_w
    assert last(df, "aifactory_facility_energy_joules_total") == pytest.approx(
        s["energy_mwh"] * energy.J_PER_MWH, rel=1e-9
    )
    board_j = energy.integral_j(run.power, "gpu_w")
    assert board_j < s["energy_mwh"] * energy.J_PER_MWH  # overhead and PUE come on top
    assert last(df, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total") == pytest.approx(
        board_j * 1e3, rel=1e-9
    )


def test_every_series_is_on_the_scrape_grid_and_counters_never_decrease(run, exported):
    _, _, df = exported
    duration = run.summary["duration_s"]
    grid = np.arange(int(duration / INTERVAL_S) + 1) * INTERVAL_S
    counters = 0
    for (metric, _), rows in df.groupby(["metric", "labels"], sort=False):
        t = rows["time_s"].to_numpy()
        assert np.array_equal(t, grid), metric  # in order, evenly spaced, 0 to the end
        if metric.endswith("_total"):
            counters += 1
            v = rows["value"].to_numpy()
            assert v[0] >= 0 and np.all(np.diff(v) >= 0), metric
    assert counters >= 15  # 11 ledger buckets, 3 vLLM counters, energy, tokens trained


def test_a_grid_that_does_not_divide_the_run_ends_with_a_shorter_step(run, tmp_path):
    write_metrics(run, tmp_path, formats=["openmetrics"], interval_s=700.0)
    df = samples((tmp_path / "metrics.om").read_text())
    t = df[df["metric"] == "DCGM_FI_DEV_GPU_UTIL"]["time_s"].to_numpy()
    steps = np.diff(t)
    assert np.all(steps[:-1] == 700.0) and 0 < steps[-1] < 700.0
    assert t[-1] == run.summary["duration_s"]
    assert not (tmp_path / "metrics.parquet").exists()


def test_gauges_hold_the_value_in_force_at_each_scrape(run, exported):
    """What a scrape sees: the last row at or before it (merge_asof, independently of the
    exporter's searchsorted)."""
    _, _, df = exported
    table = run.services[run.services["service"] == "chat"].sort_values("time_s")
    table = table.assign(running=table["in_flight"] - table["queued"])
    for metric, column in (
        ("vllm:num_requests_running", "running"),
        ("vllm:num_requests_waiting", "queued"),
    ):
        rows = df[df["metric"] == metric].sort_values("time_s")
        want = pd.merge_asof(rows[["time_s"]], table[["time_s", column]].astype(float), on="time_s")
        assert np.array_equal(rows["value"].to_numpy(), want[column].to_numpy()), metric
    running = df[df["metric"] == "vllm:num_requests_running"]["value"]
    assert running.nunique() > 1  # requests come and go: the comparison sees changes
    util = df[df["metric"] == "DCGM_FI_DEV_GPU_UTIL"]["value"].to_numpy()
    assert util.min() >= 0 and util.max() <= 100 and util.max() > 50
    kv = df[df["metric"] == "vllm:gpu_cache_usage_perc"]["value"].to_numpy()
    assert kv.min() >= 0 and kv.max() <= 1
    power = df[df["metric"] == "DCGM_FI_DEV_POWER_USAGE"].sort_values("time_s")
    p = run.power.sort_values("time_s", kind="stable")
    want = pd.merge_asof(power[["time_s"]], p[["time_s", "gpu_w"]], on="time_s")
    assert np.allclose(power["value"].to_numpy(), want["gpu_w"].to_numpy(), rtol=0, atol=0)


def test_the_parquet_table_holds_the_same_samples(exported):
    paths, _, df = exported
    table = pd.read_parquet(paths[1])
    assert {"metric", "type", "time_s", "value", "job", "service", "queue", "pool"} <= set(
        table.columns
    )
    assert len(table) == len(df)
    label_cols = [c for c in table.columns if c not in ("metric", "type", "time_s", "value")]
    keys = [
        (
            m,
            tuple(
                sorted(
                    (k, str(v)) for k, v in zip(label_cols, labs, strict=True) if isinstance(v, str)
                )
            ),
            t,
        )
        for m, labs, t in zip(
            table["metric"].astype(str),
            table[label_cols].astype(object).itertuples(index=False),
            table["time_s"],
            strict=True,
        )
    ]
    got = dict(zip(keys, table["value"], strict=True))
    want = dict(
        zip(zip(df["metric"], df["labels"], df["time_s"], strict=True), df["value"], strict=True)
    )
    assert got == want


def test_a_bad_format_names_the_allowed_ones(run, tmp_path):
    with pytest.raises(ScenarioError) as err:
        write_metrics(run, tmp_path, formats=["openmetrics", "csv"])
    assert "csv" in str(err.value)
    for name in FORMATS:
        assert name in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing written before the check
    with pytest.raises(ScenarioError, match="interval_s"):
        write_metrics(run, tmp_path, interval_s=0.0)
