"""NVLink SHARP (NVLS): the all-reduce's closed form, its calibration against the reference's
nccl-tests figure, and the `allreduce` choice through the kernel, a scenario and the planner."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import aifactory_sim as af
from aifactory_sim import catalog
from aifactory_sim.estimate import as_gpu, as_model
from aifactory_sim.kernels.collectives import allreduce_busbw, nvls_allreduce_s, ring_allreduce_s
from aifactory_sim.kernels.inference import gpu_inference_args, iteration_breakdown

LINE = 450e9  # H100 NVLink 4, one direction (shared/reference README)


def test_nvls_closed_form() -> None:
    # t = 2 (p - 1) alpha + n (1 + 1/p) / B
    assert nvls_allreduce_s(8e6, 8, 300e9, 1e-6) == pytest.approx(14e-6 + 8e6 * 1.125 / 300e9)
    assert nvls_allreduce_s(8e6, 1, 300e9, 1e-6) == 0.0


def test_nvls_efficiency_gives_the_reference_busbw_on_8_h100() -> None:
    """shared/reference README: NVLS all-reduce busbw about 480 GB/s on 8 H100 (ring 365-370).
    The catalog's efficiencies must give both back within 1 % (the figures' rounding) for a
    large message, where the latency term is negligible."""
    cal = catalog.entry("calibration", "hopper")
    n = 8.0 * 2**30
    nvls = n / float(nvls_allreduce_s(n, 8, LINE * cal["nvls_efficiency"], cal["nvlink_alpha_s"]))
    ring = n / float(ring_allreduce_s(n, 8, LINE * cal["nvlink_efficiency"], cal["nvlink_alpha_s"]))
    assert float(allreduce_busbw(nvls, 8)) == pytest.approx(480e9, rel=0.01)
    assert 365e9 * 0.99 <= float(allreduce_busbw(ring, 8)) <= 370e9 * 1.01


@pytest.mark.parametrize(("ranks", "nvls_faster"), [(2, False), (4, True), (8, True)])
def test_which_algorithm_is_faster_follows_the_bytes_each_rank_moves(ranks, nvls_faster) -> None:
    """Each rank moves n (1 + 1/p) bytes with NVLS and 2 n (p - 1) / p on a ring: at p = 2 the
    ring moves less; at p = 8 NVLS does (by 1.75 / 1.125 at equal efficiency); at p = 4 the
    two are within 2 % at the catalog's efficiencies."""
    cal = catalog.entry("calibration", "hopper")
    n = 256e6
    ring = float(ring_allreduce_s(n, ranks, LINE * cal["nvlink_efficiency"]))
    nvls = float(nvls_allreduce_s(n, ranks, LINE * cal["nvls_efficiency"]))
    assert (nvls < ring) == nvls_faster
    if ranks == 4:
        assert nvls == pytest.approx(ring, rel=0.02)


def _breakdown(gpu: str, allreduce: str, **batch: Any) -> dict[str, Any]:
    g_spec = as_gpu(gpu)
    g = gpu_inference_args(g_spec.model_dump(), catalog.entry("calibration", g_spec.family))
    m = as_model("llama3-405b").kernel_args()
    return iteration_breakdown(m, g, tp=8, precision="fp8", allreduce=allreduce, **batch)


def test_kernel_takes_the_chosen_algorithm() -> None:
    big = dict(prefill_tokens=8192.0, decode_seqs=0.0, context_tokens=0.0)
    ring, auto, nvls = (_breakdown("H100-SXM", a, **big) for a in ("ring", "auto", "nvls"))
    assert float(auto["iteration_time_s"]) < float(ring["iteration_time_s"])
    assert float(nvls["iteration_time_s"]) == float(auto["iteration_time_s"])  # NVLS wins at 8
    # only the all-reduce moves: the rest of the iteration is the same
    others = float(ring["iteration_time_s"]) - float(ring["tp_comm_s"])
    assert float(auto["iteration_time_s"]) - float(auto["tp_comm_s"]) == pytest.approx(others)
    # the bandwidth part shrinks by the bytes ratio and the efficiency ratio
    cal = catalog.entry("calibration", "hopper")
    h, layers = 16384.0, 126.0
    n = 2.0 * 8192.0 * h  # bf16 activations of 8,192 tokens
    expected = 2.0 * layers * (
        float(ring_allreduce_s(n, 8, LINE * cal["nvlink_efficiency"]))
        - float(nvls_allreduce_s(n, 8, LINE * cal["nvls_efficiency"]))
    )
    assert float(ring["tp_comm_s"]) - float(auto["tp_comm_s"]) == pytest.approx(expected, rel=1e-9)
    # a GPU without NVLS: auto is the ring, nvls is refused
    a100 = dict(prefill_tokens=1024.0, decode_seqs=0.0, context_tokens=0.0)
    assert float(_breakdown("A100-SXM-80GB", "auto", **a100)["tp_comm_s"]) == float(
        _breakdown("A100-SXM-80GB", "ring", **a100)["tp_comm_s"]
    )
    with pytest.raises(ValueError, match="NVLink SHARP"):
        _breakdown("A100-SXM-80GB", "nvls", **a100)


def _scenario(gpu: str, allreduce: str) -> dict[str, Any]:
    return {
        "name": "nvls", "seed": 1, "duration": "2m",
        "cluster": {"node_pools": [{"name": "p", "nodes": 1, "gpu": gpu}]},
        "inference": [{
            "name": "chat", "model": "llama3-70b", "precision": "bf16", "tp": 8,
            "replicas": 1, "allreduce": allreduce,
            "cold_start": {"container_s": 0, "weights_s": 0},
            "traffic": {"kind": "poisson", "rate_rps": 4},
            "prompt_tokens": {"kind": "fixed", "value": 4000},
            "output_tokens": {"kind": "fixed", "value": 100},
        }],
    }


def test_a_service_on_nvls_serves_faster_at_tp8_and_is_refused_without_it() -> None:
    ttft = {a: af.run(af.load(_scenario("H100-SXM", a))).summary["inference"]["chat"]["ttft_s"]
            for a in ("ring", "auto")}
    assert ttft["auto"]["p50"] < ttft["ring"]["p50"]
    with pytest.raises(af.ScenarioError) as err:
        af.load(_scenario("A100-SXM-80GB", "nvls"))
    assert "inference.0.allreduce" in str(err.value) and "allowed: ring, auto" in str(err.value)


def test_plan_serving_takes_allreduce() -> None:
    kw = dict(prompt=2000, output=200, tp_options=(8,), precision_options=("fp8",),
              kv_cache_dtype_options=("fp8",), max_num_seqs_options=(64,),
              max_batched_tokens_options=(8192,))
    ring = af.plan_serving("llama3-70b", "H100-SXM", **kw)
    auto = af.plan_serving("llama3-70b", "H100-SXM", allreduce="auto", **kw)
    assert auto.attrs["allreduce"] == "auto"
    assert np.all(auto["output_tokens_per_s_per_gpu"].to_numpy()
                  > ring["output_tokens_per_s_per_gpu"].to_numpy())
    with pytest.raises(af.ScenarioError, match="allreduce nvls needs NVLink SHARP"):
        af.plan_serving("llama3-70b", "A100-SXM-80GB", allreduce="nvls", **kw)
