"""The command line: outputs, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import aifactory_sim as af
from aifactory_sim.cli import bundled_scenario, main
from aifactory_sim.results import summary_json

SMALL = {
    "name": "cli-small", "seed": 1, "duration": "1d",
    "cluster": {"node_pools": [{"name": "p", "nodes": 8, "gpu": "H100-SXM"}]},
    "training": [{"name": "a", "model": "llama3-8b", "tokens": 1e9, "seq_len": 4096,
                  "global_batch_seqs": 256, "parallel": {"dp": 64}}],
}


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return path


def test_run_writes_tables_plots_and_the_summary(small: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(small), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "GPU-hour ledger" in printed and "cli-small" in printed
    names = {p.name for p in out.iterdir()}
    assert {"summary.json", "meta.json", "scenario.yaml", "jobs.csv", "ledger.csv",
            "timeseries.csv", "ledger.png", "allocation.png"} <= names
    written = (out / "summary.json").read_text()
    assert written == summary_json(af.run(af.load(small)).summary)
    assert (out / "ledger.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The saved scenario reloads to the same content.
    assert af.load(out / "scenario.yaml") == af.load(small)


def test_json_prints_only_the_summary_and_set_overrides(small: Path, tmp_path: Path, capsys):
    assert main(["run", str(small), "--json", "--no-save",
                 "--set", "training.0.parallel.dp=32", "--set", "training.0.tokens=2e9"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["training"]["a"]["tokens_target"] == 2e9
    ref = af.run(af.load(small, {"training.0.parallel.dp": 32, "training.0.tokens": 2e9}))
    assert summary == json.loads(summary_json(ref.summary))


def test_an_existing_folder_of_other_files_is_never_overwritten(small: Path, tmp_path: Path,
                                                                  capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    assert main(["run", str(small), "--out", str(out), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and err.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert main(["run", str(small), "--out", str(out), "--no-plots", "--force"]) == 0
    assert (out / "notes.txt").read_text() == "precious"  # --force replaces only our files
    # A rerun of the same scenario may refresh its own results without --force.
    assert main(["run", str(small), "--out", str(tmp_path / "r"), "--no-plots"]) == 0
    assert main(["run", str(small), "--out", str(tmp_path / "r"), "--no-plots"]) == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "missing.yaml"], "no such scenario file"),
        (["run", "{small}", "--set", "training.0.parallel.tp=3"], "training.0"),
        (["run", "{small}", "--set", "duration=soon"], "duration"),
        (["run", "{small}", "--set", "training.5.tokens=1"], "out of range"),
        (["run", "{small}", "--set", "nonsense"], "path=value"),
        (["run", "{small}", "--set", "cluster.node_pools.0.gpu=H300"], "unknown gpu 'H300'"),
        (["run", "{small}", "--set", "inference=[{name: chat}]"],
         "inference.0.model: Field required"),
        (["run", "{small}", "--set",
          "failures={node_mtbf_h: 5, node_failures_per_1000_node_days: 1}"], "exactly one of"),
        (["validate"], "scenario"),
        (["frobnicate"], "invalid choice"),
        (["catalog", "pizzas"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(small: Path, capsys, args, needle):
    args = [a.replace("{small}", str(small)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_validate_and_catalog(small: Path, capsys):
    assert main(["validate", str(small)]) == 0
    assert "ok: cli-small" in capsys.readouterr().out
    assert main(["catalog", "gpus"]) == 0
    listing = capsys.readouterr().out
    for name in ("A100-SXM-80GB", "H100-SXM", "H200", "B200", "GB200", "MI300X"):
        assert name in listing
    assert main(["catalog", "models", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    assert set(models) == {
        "gpt3-175b", "llama2-7b", "llama2-70b", "llama3-8b", "llama3-70b", "llama3-405b",
        "mixtral-8x7b", "mixtral-8x22b",
        "deepseek-v3", "deepseek-r1", "qwen3-235b-a22b", "llama4-maverick", "gpt-oss-120b",
    }


def test_the_console_script_runs_the_bundled_default(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "aifactory_sim.cli", "run", "--json", "--no-save"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["scenario"] == af.load(bundled_scenario()).name
    bad = subprocess.run(
        [sys.executable, "-m", "aifactory_sim.cli", "run", "--set", "seed=-4", "--no-save"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
    )
    assert bad.returncode == 2
    assert "seed" in bad.stderr and "Traceback" not in bad.stderr


def test_set_below_a_catalog_name_overrides_that_entry(small: Path, capsys):
    # training.0.model is "llama3-8b": setting a field below it means {base: llama3-8b, ...}.
    assert main(["run", str(small), "--json", "--no-save",
                 "--set", "training.0.model.layers=16"]) == 0
    summary = json.loads(capsys.readouterr().out)
    full = af.run(af.load(small)).summary["training"]["a"]["step_time_s"]
    assert summary["training"]["a"]["step_time_s"] == pytest.approx(full / 2, rel=0.1)
    assert main(["validate", str(small), "--set", "cluster.node_pools.0.gpu.hbm_gb=96"]) == 0


def test_invalid_yaml_is_one_line(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not valid YAML" in err and err.count("\n") == 1
