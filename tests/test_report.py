"""The review report: a self-contained HTML page from a results folder, checked as bytes and in
a real headless browser."""

from __future__ import annotations

import base64
import copy
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import aifactory_sim as af
from aifactory_sim.cli import main
from aifactory_sim.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: A few H100 nodes: an 8B pretraining job beside a small FP8 chat service, 20 minutes.
SCENARIO: dict[str, Any] = {
    "name": "report-test", "seed": 1, "duration": "20min",
    "cluster": {
        "node_pools": [{"name": "h100", "nodes": 4, "gpu": "H100-SXM", "gpus_per_node": 8,
                        "nic_gbit_s": 400,
                        "nvme": {"capacity_tb": 30, "read_gb_s": 25, "write_gb_s": 12}}],
        "fabric": {"nodes_per_leaf": 16},
        "storage": {"read_gb_s": 100, "write_gb_s": 50},
    },
    "training": [{"name": "pretrain-8b", "model": "llama3-8b", "tokens": 1e12, "seq_len": 4096,
                  "global_batch_seqs": 256, "parallel": {"dp": 16}}],
    "inference": [{
        "name": "chat", "model": "llama3-8b", "precision": "fp8", "tp": 1, "replicas": 2,
        "cold_start": {"container_s": 0, "weights_s": 0},
        "traffic": {"kind": "poisson", "rate_rps": 4},
        "prompt_tokens": {"kind": "lognormal", "median": 800, "sigma": 0.8, "max": 8192},
        "output_tokens": {"kind": "geometric", "mean": 200, "max": 2048},
        "slo": {"ttft_s": 0.5, "tpot_s": 0.05, "percentile": 99},
        "autoscaler": {"kind": "hpa", "target": 16, "min_replicas": 1, "max_replicas": 4},
    }],
}

#: The figures a run with training and a (fast-tier) service always has.
FIGURES = {"ledger", "allocation", "utilisation", "timeline", "ettr", "latency", "replicas",
           "kv_cache"}
#: Drawn once the package has a power model and its figures (Plotter.power, Plotter.cost);
#: before that each is a one-line note.
OPTIONAL = {"power", "cost"}


def drawn(text: str) -> set[str]:
    """The figures a page embeds, by name."""
    return {re.fullmatch(r"[^/]*?-(\w+)\.png", f).group(1)
            for f in re.findall(r'data-file="([^"]*)"', text)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    af.run(af.load(copy.deepcopy(SCENARIO))).save(out, plots=False)
    return out


@pytest.fixture(scope="module")
def page(saved: Path) -> Path:
    return write_report(saved)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_page_embeds_every_figure_and_needs_no_network(page: Path, saved: Path):
    assert page == saved / "report.html"
    text = page.read_text(encoding="utf-8")
    # No resource from elsewhere: no URL at all, no linked stylesheet or script.
    assert not re.search(r"https?://", text)
    assert not re.search(r"<link\b|<script\b[^>]*\bsrc=|@import", text, re.I)
    imgs = re.findall(r"<img\b[^>]*>", text)
    assert imgs
    embedded = {}
    for tag in imgs:
        src = re.search(r'src="([^"]*)"', tag).group(1)
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        width, height = png_size(data)
        assert 400 <= width <= 4000 and 100 <= height <= 4000
        name = re.search(r'data-file="([^"]*)"', tag).group(1)
        embedded[name] = data
    # The same figures as files beside the page, byte for byte.
    assert FIGURES <= drawn(text) <= FIGURES | OPTIONAL
    assert set(embedded) == {f"report-{n}.png" for n in drawn(text)}
    for name, data in embedded.items():
        assert (saved / name).read_bytes() == data


def test_the_page_shows_the_headline_numbers_and_notes_what_is_missing(page: Path, saved: Path):
    import json

    summary = json.loads((saved / "summary.json").read_text())
    text = page.read_text(encoding="utf-8")
    assert "Architecture review: report-test" in text
    assert f"{summary['gpus']:,}" in text and "20 minutes" in text
    assert "pretrain-8b" in text and "chat" in text
    job = summary["training"]["pretrain-8b"]
    assert f"{job['mfu']:.1%}" in text and f"{job['tokens_trained']:.3g}" in text
    svc = summary["inference"]["chat"]
    assert f"{svc['requests']:,}" in text
    assert "500 ms at p99" in text and "50 ms at p99" in text  # the SLO targets
    for section in ("GPU-hour ledger", "Allocation over time", "Replicas against load",
                    "Latency against the SLO", "Job timelines"):
        assert section in text
    # Power and cost: a figure where the package draws one, else a one-line note.
    for name, section in (("power", "Facility power"), ("cost", "Cost: private against cloud")):
        assert section in text
        note = re.search(rf'<p class="note">{re.escape(section)}: not drawn: [^<]*</p>', text)
        assert (name in drawn(text)) != bool(note)


def test_a_run_without_services_leaves_their_figures_out(tmp_path: Path):
    sc = copy.deepcopy(SCENARIO)
    del sc["inference"]
    out = tmp_path / "run"
    af.run(af.load(sc)).save(out, plots=False)
    text = write_report(out).read_text(encoding="utf-8")
    assert {"ledger", "allocation", "timeline", "ettr"} <= drawn(text)
    assert not drawn(text) & {"latency", "replicas", "kv_cache"}
    assert "this run has no inference services" in text


def test_files_the_report_did_not_write_are_never_overwritten(saved: Path, tmp_path: Path):
    folder = tmp_path / "copy"
    shutil.copytree(saved, folder)
    for name in ("report.html", "report-ledger.png"):
        for f in folder.glob("report*"):
            f.unlink()
        (folder / name).write_text("mine")
        with pytest.raises(af.ScenarioError, match="not written by a report"):
            write_report(folder)
        assert (folder / name).read_text() == "mine"
    # Its own earlier output is refreshed.
    for f in folder.glob("report*"):
        f.unlink()
    write_report(folder)
    write_report(folder)
    # --out elsewhere, figures beside the page.
    page = write_report(folder, out=tmp_path / "review" / "factory.html")
    assert page.is_file() and (tmp_path / "review" / "factory-ledger.png").is_file()


def test_cli_report_and_run_report(saved: Path, tmp_path: Path, capsys):
    assert main(["report", str(saved), "--out", str(tmp_path / "r.html")]) == 0
    count = len(drawn((tmp_path / "r.html").read_text(encoding="utf-8")))
    assert f"wrote {tmp_path / 'r.html'} ({count} figures" in capsys.readouterr().out
    # A folder that is not a results folder: exit 2 and one line.
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a results folder" in err
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    # run --report writes the page after the results.
    scenario = tmp_path / "sc.yaml"
    sc = copy.deepcopy(SCENARIO)
    sc["duration"] = "5min"
    scenario.write_text(yaml.safe_dump(sc))
    out = tmp_path / "run"
    assert main(["run", str(scenario), "--out", str(out), "--no-plots", "--report"]) == 0
    assert (out / "report.html").is_file() and (out / "report-ledger.png").is_file()
    assert not (out / "ledger.png").exists()  # --no-plots still holds for the run's figures
    assert main(["run", str(scenario), "--no-save", "--report"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_every_figure_renders_in_a_headless_browser(page: Path, tmp_path: Path):
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser (chromium, chromium-browser, google-chrome) on PATH; "
                    ".ci/run installs Debian's chromium when it can")
    # The page's own script counts the images that decoded (naturalWidth > 0) on load.
    proc = subprocess.run(
        [browser, "--headless", "--disable-gpu", "--no-sandbox", "--disable-extensions",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body\b[^>]*>", proc.stdout)
    assert body, proc.stdout[:500]
    total = re.search(r'data-figures="(\d+)"', body.group(0))
    rendered = re.search(r'data-figures-rendered="(\d+)"', body.group(0))
    assert total and rendered, body.group(0)
    figures = len(drawn(page.read_text(encoding="utf-8")))
    assert figures >= len(FIGURES)
    assert int(total.group(1)) == figures
    assert int(rendered.group(1)) == figures


def test_energy_and_cost_headline_cards_read_the_schema_keys():
    import json

    from aifactory_sim.report import _energy_cards

    # energy_mwh, peak_mw, cost_usd.private.total and cost_usd.cloud.total, by name: each card
    # shows its key's value from the golden factory summary, to 3 figures (money to the dollar)
    golden = json.loads(
        (Path(__file__).parent / "golden" / "scenario-factory" / "summary.json").read_text())
    cost = golden["cost_usd"]
    assert _energy_cards(golden) == [
        ("energy", f"{golden['energy_mwh']:,.3g} MWh"),
        ("peak power", f"{golden['peak_mw']:,.3g} MW"),
        ("cost, private", f"${cost['private']['total']:,.0f}"),
        ("cost, cloud", f"${cost['cloud']['total']:,.0f}")]
    # a summary saved before the energy section has none of these cards
    assert _energy_cards({k: v for k, v in golden.items()
                          if k not in ("energy_mwh", "peak_mw", "cost_usd")}) == []
    summary = {"gpus": 8, "energy_mwh": 12.5, "energy_mwh_by": {"training": 10.0}, "mean_mw": 1.0,
               "peak_mw": 1.25,
               "cost_usd": {"private": {"capex": 1.0, "energy": 2.0, "total": 3000.0},
                            "cloud": {"on_demand": 5000.0, "total": 5000.0}},
               "training_usd_per_btok": {"private": 0.5, "cloud": 0.9}}
    assert _energy_cards(summary) == [("energy", "12.5 MWh"), ("peak power", "1.25 MW"),
                                      ("cost, private", "$3,000"), ("cost, cloud", "$5,000")]
    # Small sums in cents.
    small = {"gpus": 8, "energy_mwh": 0.0053, "peak_mw": 0.016,
             "cost_usd": {"private": {"total": 0.425}, "cloud": {"total": 0.0}}}
    assert _energy_cards(small) == [("energy", "0.0053 MWh"), ("peak power", "0.016 MW"),
                                    ("cost, private", "$0.42"), ("cost, cloud", "$0.00")]
    # A summary saved without the energy section has none of these cards.
    assert _energy_cards({"gpus": 8}) == []
