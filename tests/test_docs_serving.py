"""The serving docs: the generated sections of docs/background/serving.md are current, and the
bundled chat-diurnal scenario loads and runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import aifactory_sim as af

ROOT = Path(__file__).resolve().parents[1]
CHAT = ROOT / "aifactory_sim" / "scenarios" / "chat-diurnal.yaml"


def test_serving_page_is_current():
    """`docs/gen_serving.py --check` reruns every generated section (TensorRT-LLM rows through
    the engine, Erlang C over 36 seeded runs, fast against step) and compares it with the page:
    about 25 s on one core, so it runs with the suite. A change to the kernels, the catalog or
    the engine that moves a number fails here until the page is regenerated."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_serving.py"), "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr + done.stdout


def test_chat_diurnal_loads_and_a_short_run_reports_the_service():
    sc = af.load(CHAT)
    assert sc.name == "chat-diurnal"
    assert sc.duration == 86400.0
    svc = sc.inference[0]
    assert (svc.name, svc.model.name, svc.precision, svc.tp) == ("chat", "llama3-70b", "fp8", 4)
    assert svc.autoscaler is not None and svc.autoscaler.kind == "hpa"

    res = af.run(af.load(CHAT, {"duration": "1h"}))
    s = res.summary
    chat = s["inference"]["chat"]
    assert chat["requests"] > 10_000
    assert chat["completed"] > 0.99 * chat["requests"]
    assert chat["slo_attainment"] is not None
    assert chat["ttft_s"]["p50"] < 2.0
    assert 2 <= chat["replicas_max"] <= svc.autoscaler.max_replicas
    assert sum(s["ledger_gpu_h"].values()) == pytest.approx(s["gpus"] * 1.0, rel=1e-9)
    assert len(res.requests) == chat["requests"]
    assert set(res.services["service"]) == {"chat"}


def test_scenario_reference_is_current():
    """docs/reference/scenario.md is generated from the pydantic models' descriptions."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_reference.py"), "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr + done.stdout
