"""Where the shared reference data is: ../shared beside the checkout when present (as in CI),
else the copy in tests/shared (a clone of this repository alone)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = next(
    p for p in (ROOT.parent / "shared", ROOT / "shared", ROOT / "tests" / "shared")
    if (p / "reference" / "megatron_2021_table1.csv").is_file()
)
