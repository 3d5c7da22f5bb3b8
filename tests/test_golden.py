"""Same numbers: every bundled scenario and every docs workload gives, byte for byte, the summary
and the tables recorded in tests/golden/ (written by tools/make_golden.py before the engine was
redesigned into components with ports, issue 14). A change meant to move a number rewrites the
cases it moves and says which in its commit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import aifactory_sim as af
from aifactory_sim.results import summary_json

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "case.json").is_file())


def test_the_golden_set_covers_every_bundled_scenario() -> None:
    bundled = {json.loads((GOLDEN / c / "case.json").read_text()).get("bundled") for c in CASES}
    assert {p.name for p in (ROOT / "scenarios").glob("*.yaml")} <= bundled


@pytest.mark.parametrize("name", CASES)
def test_summary_and_tables_are_byte_identical(name: str) -> None:
    case = json.loads((GOLDEN / name / "case.json").read_text())
    source = ROOT / "scenarios" / case["bundled"] if "bundled" in case else case["scenario"]
    res = af.run(af.load(source, case.get("overrides")))  # a bundled case may run shortened
    assert summary_json(res.summary) == (GOLDEN / name / "summary.json").read_text()
    for table, want in case["tables"].items():
        got = hashlib.sha256(getattr(res, table).to_csv(index=False).encode()).hexdigest()
        assert got == want, f"{name}: table {table} differs from the golden one"
