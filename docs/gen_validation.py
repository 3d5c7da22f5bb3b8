"""Rewrite the generated tables of docs/background/training-model.md.

    python docs/gen_validation.py          # rewrite the tables in place
    python docs/gen_validation.py --check  # exit 1 if the file is out of date

Three tables, each between a pair of HTML-comment markers in the Markdown file:
- `calibration`: the constants of aifactory_sim/catalog/calibration.yaml, per family.
- `validation`: every row of shared/reference/megatron_2021_table1.csv (Narayanan et al., SC'21,
  Table 1) against `aifactory_sim.estimate_training`, and the largest error.
- `crosscheck`: Llama 3 405B on 16,384 H100 against the Llama 3 paper (Table 4): reported, not
  fitted.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any

from _generated import replace_block, run

import aifactory_sim as af
from aifactory_sim import catalog

DOC = Path(__file__).parent / "background" / "training-model.md"
#: The reference tables: $AIFACTORY_REFERENCE, else shared/reference in or beside the repository.
_ROOT = Path(__file__).resolve().parent.parent
_CANDIDATES = [_ROOT / "shared" / "reference", _ROOT.parent / "shared" / "reference",
               _ROOT / "tests" / "shared" / "reference"]
REFERENCE = Path(
    os.environ.get("AIFACTORY_REFERENCE")
    or next((str(c) for c in _CANDIDATES if c.is_dir()), str(_CANDIDATES[0]))
)
TABLE1 = REFERENCE / "megatron_2021_table1.csv"

CONSTANTS = (
    "gemm_efficiency",
    "hbm_efficiency",
    "nvlink_efficiency",
    "net_efficiency",
    "nvlink_alpha_s",
    "flash_attention",
    "sequence_parallel",
)

#: Llama 3 405B pre-training at 16,384 H100 (Llama Team, arXiv 2407.21783, Table 4).
LLAMA3_PUBLISHED_TFLOPS = 400.0
LLAMA3_LAYOUT = dict(
    tp=8,
    pp=16,
    dp=128,
    seq_len=8192,
    global_batch_seqs=2048,
    microbatch_seqs=1,
    interleave=4,
    recompute="auto",
    zero_stage=1,
    gpus_per_node=8,
    nic_gbit_s=400,
)


def megatron_rows() -> list[dict[str, Any]]:
    """Each Table 1 row with the simulated hardware TFLOP/s per GPU and the error."""
    out = []
    with TABLE1.open(newline="") as fh:
        for r in csv.DictReader(fh):
            tp, pp, gpus = int(r["tp"]), int(r["pp"]), int(r["gpus"])
            model = {
                "layers": int(r["layers"]),
                "hidden": int(r["hidden"]),
                "heads": int(r["heads"]),
                "vocab": 51200,
                "tie_embeddings": True,
            }
            est = af.estimate_training(
                model,
                "A100-SXM-80GB",
                tp=tp,
                pp=pp,
                dp=gpus // (tp * pp),
                seq_len=2048,
                global_batch_seqs=int(r["batch_seqs"]),
                microbatch_seqs=int(r["microbatch_seqs"]),
                interleave=int(r["interleave"]),
                recompute="full",
                zero_stage=0,
                gpus_per_node=8,
                nic_gbit_s=200,
                overlap_dp=(r["ddp"] == "torch"),
            )
            published = float(r["tflops_per_gpu"])
            sim = float(est.hardware_tflops_per_gpu)
            out.append(
                {
                    **r,
                    "dp": gpus // (tp * pp),
                    "sim": sim,
                    "err": 100.0 * (sim / published - 1.0),
                    "mem": float(est.memory_gb_per_gpu),
                    "fits": bool(est.fits),
                    "step": float(est.step_time_s),
                }
            )
    return out


def minimax_gemm_efficiency() -> tuple[float, float]:
    """The ampere gemm_efficiency that minimises the largest |error| over Table 1 with the
    current kernels, and that error (%). Scans 0.600-0.800 in steps of 0.0005 by setting the
    value in the loaded catalog for the duration of the scan."""
    import numpy as np

    entry = catalog._table("calibration")["ampere"]  # the cached table estimate reads
    saved = entry["gemm_efficiency"]
    best = (saved, float("inf"))
    try:
        for eff in np.arange(0.600, 0.8001, 0.0005):
            entry["gemm_efficiency"] = float(eff)
            worst = max(abs(r["err"]) for r in megatron_rows())
            if worst < best[1]:
                best = (float(eff), worst)
    finally:
        entry["gemm_efficiency"] = saved
    return best


def validation_table() -> tuple[str, float]:
    rows = megatron_rows()
    lines = [
        "| params (B) | layers | hidden | heads | TP | PP | DP | GPUs | batch | micro | v | DDP "
        "| published TFLOP/s | simulated TFLOP/s | error | step (s) | memory (GB) |",
        "|" + "---:|" * 17,
    ]
    for r in rows:
        lines.append(
            f"| {r['params_b']} | {r['layers']} | {r['hidden']} | {r['heads']} | {r['tp']} "
            f"| {r['pp']} | {r['dp']} | {r['gpus']} | {r['batch_seqs']} | {r['microbatch_seqs']} "
            f"| {r['interleave']} | {r['ddp']} | {float(r['tflops_per_gpu']):.0f} "
            f"| {r['sim']:.1f} | {r['err']:+.1f} % | {r['step']:.2f} | {r['mem']:.1f} |"
        )
    worst = max(abs(r["err"]) for r in rows)
    mean = sum(abs(r["err"]) for r in rows) / len(rows)
    bias = sum(r["err"] for r in rows) / len(rows)
    lines += [
        "",
        f"Largest |error|: **{worst:.1f} %**; mean |error| {mean:.1f} %; mean signed "
        f"error {bias:+.1f} % (over {len(rows)} rows). All rows fit in 80 GB: "
        f"{'yes' if all(r['fits'] for r in rows) else 'NO'}.",
    ]
    used = catalog.entry("calibration", "ampere")["gemm_efficiency"]
    eff, best = minimax_gemm_efficiency()
    lines += [
        "",
        f"Check of the fit: with the current kernels the `gemm_efficiency` that minimises"
        f" the largest |error| over these rows is {eff:.4g} (largest |error| {best:.1f} %);"
        f" the catalog uses {used:g}.",
    ]
    return "\n".join(lines), worst


def crosscheck_table() -> str:
    lines = [
        "| case | recompute | published TFLOP/s/GPU | simulated model TFLOP/s/GPU | error "
        "| simulated hardware TFLOP/s/GPU | MFU | memory (GB) | fits | step (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    notes = []
    cases = [
        ("Llama 3 405B, 16,384 H100-SXM, TP8 PP16 DP128, v=4, 2048 x 8192 tokens", "auto"),
        ("same, recompute none, memory limit ignored (not a valid estimate)", "none"),
    ]
    for label, rc in cases:
        est = af.estimate_training("llama3-405b", "H100-SXM", **{**LLAMA3_LAYOUT, "recompute": rc})
        model_tf = float(est.model_tflops_per_gpu)
        hw_tf = float(est.hardware_tflops_per_gpu)
        err = 100.0 * (model_tf / LLAMA3_PUBLISHED_TFLOPS - 1.0)
        shown = f"{rc} -> {est.recompute}" if rc == "auto" else rc
        lines.append(
            f"| {label} | {shown} | {LLAMA3_PUBLISHED_TFLOPS:.0f} | {model_tf:.0f} "
            f"| {err:+.1f} % | {hw_tf:.0f} | {float(est.mfu):.1%} "
            f"| {float(est.memory_gb_per_gpu):.1f} | {'yes' if est.fits else 'no'} "
            f"| {float(est.step_time_s):.2f} |"
        )
        parts = ", ".join(
            f"{k.removesuffix('_s')} {float(v):.2f}"
            for k, v in est.breakdown.items()
            if float(v) > 0.005
        )
        notes.append(f"Step-time breakdown with recompute {est.recompute} (s): {parts}.")
    return "\n".join([*lines, "", *notes])


def calibration_table() -> str:
    fams = catalog.names("calibration")
    lines = ["| constant | " + " | ".join(fams) + " |", "|---|" + "---:|" * len(fams)]
    for c in CONSTANTS:
        vals = [catalog.entry("calibration", f)[c] for f in fams]
        cells = [("yes" if v else "no") if isinstance(v, bool) else f"{v:g}" for v in vals]
        lines.append(f"| `{c}` | " + " | ".join(cells) + " |")
    lines.append("")
    for f in fams:
        src = " ".join(str(catalog.entry("calibration", f)["source"]).split())
        lines.append(f"- `{f}`: {src}")
    return "\n".join(lines)


def build(text: str) -> tuple[str, float]:
    table, worst = validation_table()
    text = replace_block(DOC, text, "calibration", calibration_table())
    text = replace_block(DOC, text, "validation", table)
    text = replace_block(DOC, text, "crosscheck", crosscheck_table())
    return text, worst


def main() -> int:
    if not TABLE1.exists():
        print(
            f"{TABLE1} not found; set AIFACTORY_REFERENCE to the reference folder", file=sys.stderr
        )
        return 2

    def build_with_message(old: str) -> tuple[str, str]:
        new, worst = build(old)
        return new, f"largest |error| against Megatron-LM Table 1: {worst:.2f} %"

    return run(DOC, build_with_message, __doc__.splitlines()[0], "gen_validation.py")


if __name__ == "__main__":
    raise SystemExit(main())
