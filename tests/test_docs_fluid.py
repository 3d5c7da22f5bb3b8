"""The fluid tier's validation table in docs/background/serving.md is current."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from aifactory_sim.validation import fluid as fv

ROOT = Path(__file__).resolve().parents[1]


def test_fluid_validation_table_is_current():
    """`docs/gen_fluid.py --check` reruns every workload of aifactory_sim/validation/fluid.py in
    the `fast` and `fluid` tiers (about 30 s on one core) and compares the table with the page,
    wall times aside. A change to the engine that moves a value or an error fails here until the
    page is regenerated."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_fluid.py"), "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr + done.stdout


def test_the_check_ignores_wall_times_and_nothing_else():
    page = (ROOT / "docs" / "background" / "serving.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| `light-8b-fp8` |")
               and line.endswith(" s |"))
    cells = row.split(" | ")
    slower = " | ".join([*cells[:-2], "99.99 s", "99.99 s |"])
    assert fv.comparable(page.replace(row, slower)) == fv.comparable(page)
    wall = next(line for line in page.splitlines() if line.startswith(fv.WALL_LINE))
    other_machine = re.sub(r"\d+(\.\d+)?", "64", wall)
    assert other_machine != wall
    assert fv.comparable(page.replace(wall, other_machine)) == fv.comparable(page)
    moved = row.replace("+0.0 %", "+0.1 %", 1)
    assert moved != row
    assert fv.comparable(page.replace(row, moved)) != fv.comparable(page)
