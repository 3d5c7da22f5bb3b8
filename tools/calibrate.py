"""Reproduce the one fitted constant: the Ampere family's `gemm_efficiency`.

It is the value that minimises the largest relative error in hardware TFLOP/s per GPU over all
ten rows of Megatron-LM's Table 1 (shared/reference/megatron_2021_table1.csv), every other
constant held at its catalog value. Run after changing the training kernels:

    python tools/calibrate.py            # prints the fit and each row's error
    python tools/calibrate.py --check    # exit 1 if catalog/calibration.yaml is off the fit
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd

import aifactory_sim as af
from aifactory_sim import catalog

ROOT = Path(__file__).resolve().parents[1]
TABLE = next(p for p in (ROOT.parent / "shared", ROOT / "tests" / "shared")
             if (p / "reference").is_dir()) / "reference" / "megatron_2021_table1.csv"


def table1_tflops(rows: pd.DataFrame) -> np.ndarray:
    """Simulated hardware TFLOP/s per GPU for each row, as the validation tests compute it."""
    out = []
    for r in rows.itertuples():
        est = af.estimate_training(
            {"layers": r.layers, "hidden": r.hidden, "heads": r.heads, "vocab": 51200,
             "tie_embeddings": True},
            "A100-SXM-80GB", tp=r.tp, pp=r.pp, dp=r.gpus // (r.tp * r.pp), seq_len=2048,
            global_batch_seqs=r.batch_seqs, microbatch_seqs=r.microbatch_seqs,
            interleave=r.interleave, recompute="full", zero_stage=0, gpus_per_node=8,
            nic_gbit_s=200, overlap_dp=(r.ddp == "torch"),
        )
        out.append(est.hardware_tflops_per_gpu)
    return np.asarray(out)


def errors_at(rows: pd.DataFrame, efficiency: float) -> np.ndarray:
    base = catalog.entry("calibration", "ampere")
    patched = {**base, "gemm_efficiency": efficiency}
    real_entry = catalog.entry

    def entry(kind: str, name: str):  # type: ignore[no-untyped-def]
        return patched if (kind, name) == ("calibration", "ampere") else real_entry(kind, name)

    with mock.patch("aifactory_sim.estimate.catalog.entry", entry):
        return table1_tflops(rows) / rows["tflops_per_gpu"].to_numpy() - 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    rows = pd.read_csv(TABLE)
    grid = np.round(np.arange(0.60, 0.90, 0.001), 3)
    worst = [np.max(np.abs(errors_at(rows, g))) for g in grid]
    best = float(grid[int(np.argmin(worst))])
    current = catalog.entry("calibration", "ampere")["gemm_efficiency"]
    err = errors_at(rows, best)
    for r, e in zip(rows.itertuples(), err, strict=True):
        print(f"{r.params_b:>8.1f}B  published {r.tflops_per_gpu:>5}  error {e:+.1%}")
    print(f"fit gemm_efficiency = {best:.3f} (max |error| {np.max(np.abs(err)):.2%}); "
          f"catalog has {current}")
    if args.check and abs(best - current) > 0.0015:
        print("catalog/calibration.yaml is off the fit: update ampere.gemm_efficiency")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
