"""A GPU power cap in the engine: compute-bound work slows by the cap's clock factor, memory-
bound decode hardly at all, and power falls."""

from __future__ import annotations

from typing import Any

import pytest

import aifactory_sim as af
from aifactory_sim.kernels.power import cap_slowdown


def scenario(cap: float | None) -> dict[str, Any]:
    sc: dict[str, Any] = {
        "name": "cap", "duration": "1h",
        "cluster": {"node_pools": [{"name": "h", "nodes": 4, "gpu": "H100-SXM",
                                    "gpus_per_node": 8, "nic_gbit_s": 400}],
                    "storage": {"read_gb_s": 100, "write_gb_s": 50}},
        "training": [{"name": "t", "model": "llama3-8b", "tokens": 1e12, "seq_len": 8192,
                      "global_batch_tokens": "1M", "parallel": {"tp": 1, "pp": 1, "dp": 16}}],
        "inference": [{"name": "c", "model": "llama3-8b", "precision": "fp8", "replicas": 8,
                       "cold_start": {"container_s": 0, "weights_s": 0},
                       "traffic": {"kind": "poisson", "rate_rps": 20},
                       "prompt_tokens": {"kind": "lognormal", "median": 1000, "sigma": 0.8},
                       "output_tokens": {"kind": "geometric", "mean": 300}}],
    }
    if cap is not None:
        sc["power"] = {"gpu_power_cap_w": cap}
    return sc


def test_a_cap_slows_compute_bound_work_and_spares_decode():
    free, capped = (af.run(scenario(c)).summary for c in (None, 500))
    clock = float(cap_slowdown(500, 700, 1.0))  # the compute-bound factor
    step = capped["training"]["t"]["step_time_s"] / free["training"]["t"]["step_time_s"]
    assert 1.0 < step <= clock + 1e-9  # GEMMs slow by the clock; communication does not
    assert step > 1.0 + 0.5 * (clock - 1.0)  # a dense 8B step is mostly compute
    ttft = capped["inference"]["c"]["ttft_s"]["p50"] / free["inference"]["c"]["ttft_s"]["p50"]
    tpot = capped["inference"]["c"]["tpot_s"]["p50"] / free["inference"]["c"]["tpot_s"]["p50"]
    assert ttft > 1.05  # prefill is compute-bound
    assert tpot < 1.02 and tpot < ttft  # decode reads HBM: it hardly slows
    # MFU against the nominal peak: lower under the cap by about the step's slowdown.
    mfu = capped["training"]["t"]["mfu"] / free["training"]["t"]["mfu"]
    assert mfu == pytest.approx(1.0 / step, rel=0.01)
    assert capped["peak_mw"] < free["peak_mw"]
