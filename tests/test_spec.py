"""Scenario loading: what a valid scenario becomes, and one clear located error per mistake."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from shared_paths import SHARED

import aifactory_sim as af
from aifactory_sim import catalog
from aifactory_sim.spec import content_hash, set_path

# The project's shared reference data (tables, the example factory): see shared_paths.py.
FACTORY_YAML = SHARED / "examples" / "factory.yaml"

# 16 nodes x 8 H100 = 128 GPUs; llama3-8b on tp 8 x dp 16 fits easily.
BASE: dict[str, Any] = {
    "duration": "1d",
    "cluster": {"node_pools": [{"name": "h100", "nodes": 16, "gpu": "H100-SXM"}]},
    "training": [
        {
            "name": "pretrain",
            "model": "llama3-8b",
            "tokens": "1B",
            "seq_len": 8192,
            "global_batch_seqs": 64,
            "parallel": {"tp": 8, "dp": 16},
        }
    ],
}


def with_(path: str, value: Any, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return set_path(BASE if data is None else data, path, value)


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(af.ScenarioError) as err:
        af.load(data)
    return str(err.value)


# --- what a valid scenario becomes ------------------------------------------------------------


def test_minimal_scenario_loads() -> None:
    s = af.load(BASE)
    assert s.duration == 86400.0
    assert s.fidelity == "fast"
    pool = s.cluster.node_pools[0]
    assert pool.gpus == 128
    assert pool.gpu.name == "H100-SXM"
    assert pool.gpu.hbm_gb == catalog.entry("gpu", "H100-SXM")["hbm_gb"]
    job = s.training[0]
    assert job.model.name == "llama3-8b"
    assert job.tokens == 1e9
    assert job.batch_seqs == 64
    # 1e9 tokens in steps of 64 x 8192 tokens: the last one partial.
    assert job.steps == -(-1_000_000_000 // (64 * 8192))


def test_load_does_not_alter_its_input_and_overrides_apply() -> None:
    data = with_("training.0.parallel.dp", 16)
    before = yaml.safe_dump(data)
    s = af.load(data, {"training.0.parallel.dp": 8, "duration": "2d"})
    assert yaml.safe_dump(data) == before
    assert s.training[0].parallel.dp == 8
    assert s.duration == 2 * 86400.0


def test_scenario_round_trips_through_its_dump() -> None:
    s = af.load(BASE)
    again = af.load(s)
    assert again == s
    assert content_hash(again) == content_hash(s)
    assert content_hash(af.load(with_("duration", "2d"))) != content_hash(s)


def test_scenario_is_frozen() -> None:
    s = af.load(BASE)
    with pytest.raises(ValidationError):
        s.duration = 5.0  # type: ignore[misc]


def test_nic_rate_from_units_and_catalog_names() -> None:
    assert (
        af.load(with_("cluster.node_pools.0.nic_gbit_s", "50GB/s")).cluster.node_pools[0].nic_gbit_s
        == 400.0
    )
    assert (
        af.load(with_("cluster.node_pools.0.nic_gbit_s", "hdr")).cluster.node_pools[0].nic_gbit_s
        == catalog.entry("network", "HDR")["gbit_s"]
    )


# --- one located message per mistake ----------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["colour", "cluster.spine", "cluster.node_pools.0.gpus", "training.0.paralel", "power.pue_x"],
)
def test_unknown_field(path: str) -> None:
    msg = error_of(with_(path, 1))
    assert msg.startswith(f"{path}: unknown field")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("cluster.node_pools.0.nodes", -1),
        ("cluster.node_pools.0.nodes", 0),
        ("cluster.node_pools.0.gpus_per_node", 0),
        ("cluster.node_pools.0.nic_gbit_s", -400),
        ("training.0.parallel.dp", 0),
        ("training.0.parallel.tp", -8),
        ("training.0.tokens", 0),
        ("training.0.tokens", "-5M"),
        ("training.0.seq_len", -5),
        ("duration", 0),
        ("duration", "-1h"),
        ("cost.amortization_years", 0),
    ],
)
def test_non_positive_numbers(path: str, value: object) -> None:
    msg = error_of(with_(path, value))
    assert msg.startswith(f"{path}: ")
    assert "greater than 0" in msg
    assert repr(value) in msg


def test_pue_below_one() -> None:
    msg = error_of(with_("power.pue", 0.9))
    assert msg.startswith("power.pue: ")
    assert "greater than or equal to 1" in msg


@pytest.mark.parametrize("value", ["3 fortnights", "1 month", "6H", "soon"])
def test_bad_duration(value: str) -> None:
    msg = error_of(with_("duration", value))
    assert msg.startswith("duration: ")
    assert repr(value) in msg
    assert "min, h, d, w" in msg


def test_bad_enum_lists_allowed_values() -> None:
    msg = error_of(with_("training.0.recompute", "some"))
    assert msg.startswith("training.0.recompute: ")
    for allowed in ("'auto'", "'none'", "'selective'", "'full'"):
        assert allowed in msg


@pytest.mark.parametrize(
    ("path", "value", "kind"),
    [
        ("cluster.node_pools.0.gpu", "H101", "gpu"),
        ("cluster.node_pools.0.gpu", {"base": "H101", "hbm_gb": 96}, "gpu"),
        ("training.0.model", "llama4-400b", "model"),
    ],
)
def test_unknown_catalog_name(path: str, value: Any, kind: str) -> None:
    msg = error_of(with_(path, value))
    assert msg.startswith(f"{path}: unknown {kind}")
    for name in catalog.names(kind):
        assert name in msg


def test_job_larger_than_pool() -> None:
    msg = error_of(with_("training.0.parallel", {"tp": 8, "dp": 32}))
    assert msg.startswith("training.0.parallel: ")
    assert "256 GPUs exceeds pool 'h100'" in msg
    assert "= 128 schedulable GPUs" in msg


def test_spare_nodes_are_not_schedulable() -> None:
    # 16 nodes less 2 spares = 112 GPUs: the 128-GPU job no longer fits.
    msg = error_of(with_("cluster.spare_nodes", 2))
    assert msg.startswith("training.0.parallel: ")
    assert "less 2 spare nodes = 112 schedulable GPUs" in msg


@pytest.mark.parametrize(("tp", "dp"), [(4, 3), (1, 4), (2, 2)])
def test_gpus_not_whole_nodes(tp: int, dp: int) -> None:
    msg = error_of(with_("training.0.parallel", {"tp": tp, "dp": dp}))
    assert msg.startswith("training.0.parallel: ")
    assert f"{tp * dp} GPUs must be a whole number of 8-GPU nodes" in msg


def test_tp_must_divide_the_node() -> None:
    # llama3-8b has 32 heads, so tp=16 passes the heads rule and fails the node rule.
    msg = error_of(with_("training.0.parallel", {"tp": 16, "dp": 8}))
    assert msg.startswith("training.0.parallel.tp: ")
    assert "tp=16 must divide the 8 GPUs of a node" in msg


def test_tp_may_span_an_nvlink_domain_larger_than_a_node() -> None:
    # GB200 NVL72: 4 GPUs per tray, one NVLink domain of 72; tp=8 spans two trays.
    data = with_(
        "cluster.node_pools.0", {"name": "nvl", "nodes": 32, "gpu": "GB200", "gpus_per_node": 4}
    )
    assert af.load(data).training[0].parallel.tp == 8
    msg = error_of(with_("training.0.parallel", {"tp": 16, "dp": 8}, data))
    assert msg.startswith("training.0.parallel.tp: ")
    assert "or the NVLink domain of 72" in msg


def test_tp_must_divide_heads() -> None:
    data = with_("training.0.model", {"layers": 4, "hidden": 768, "heads": 12, "vocab": 1000})
    msg = error_of(with_("training.0.parallel", {"tp": 8, "dp": 16}, data))
    assert msg.startswith("training.0: ")
    assert "parallel.tp=8 must divide the model's heads=12" in msg


def test_model_that_does_not_fit() -> None:
    data = with_("training.0.model", "llama3-405b")
    data = with_("training.0.recompute", "none", data)
    data = with_("training.0.global_batch_seqs", 16, data)
    msg = error_of(data)
    assert msg.startswith("training.0: llama3-405b does not fit in memory")
    assert "recompute=none" in msg
    assert "> 80 GB of H100-SXM HBM" in msg
    assert "allowed: recompute full" in msg
    # Spread over 16 pipeline stages with full recompute it fits: the check is not blanket.
    fits = with_("training.0.parallel", {"tp": 8, "pp": 16}, with_("training.0.recompute", "full"))
    fits = with_("training.0.model", "llama3-405b", fits)
    assert af.load(with_("training.0.global_batch_seqs", 16, fits)).training[0].parallel.pp == 16


def test_gpu_override_is_what_the_feasibility_check_uses() -> None:
    # llama3-70b with tp=8 and no recompute: about 126 GB per GPU (zero_stage 1) is too much for
    # an 80 GB H100 but fits in an override with 141 GB of HBM.
    data = with_("training.0.model", "llama3-70b")
    data = with_("training.0.recompute", "none", data)
    assert "does not fit in memory" in error_of(data)
    data = with_("cluster.node_pools.0.gpu", {"base": "H100-SXM", "hbm_gb": 141}, data)
    assert af.load(data).cluster.node_pools[0].gpu.hbm_gb == 141


def test_failure_checkpoint_and_elastic_sections_are_checked() -> None:
    ok = af.load(with_("failures", {"node_failures_per_1000_node_days": 6.5,
                                    "distribution": {"kind": "weibull", "shape": 0.8},
                                    "repair_h": 4}))
    assert ok.failures is not None
    assert ok.failures.node_mtbf_s == pytest.approx(1000 * 86400 / 6.5)
    assert ok.failures.repair_h.kind == "fixed" and ok.failures.repair_h.value == 4
    shares = ok.failures.component_shares()  # default: Llama 3's breakdown, 419 interruptions
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["hbm"] == pytest.approx(72 / 419)
    msg = error_of(with_("failures", {"node_mtbf_h": 100, "node_failures_per_1000_node_days": 2}))
    assert msg.startswith("failures: ") and "exactly one of" in msg
    msg = error_of(with_("failures", {"node_mtbf_h": 100, "components": {"gpu": 1, "fan": 1}}))
    assert "failures.components" in msg and "fan" in msg and "allowed: gpu" in msg
    msg = error_of(with_("failures", {"node_mtbf_h": 100, "distribution": "weibull"}))
    assert "needs a shape" in msg
    msg = error_of(with_("training.0.checkpoint", {"interval": "often"}))
    assert msg.startswith("training.0.checkpoint.interval: ")
    msg = error_of(with_("training.0.checkpoint", {"interval": "30min"}))
    assert msg.startswith("training.0.checkpoint: ") and "cluster.storage" in msg
    job = af.load(with_("training.0.checkpoint",
                        {"interval": "30min", "write_s": 20, "reload_s": 30})).training[0]
    assert job.checkpoint.interval == 1800
    msg = error_of(with_("training.0.elastic", {"min_dp": 99}))
    assert "min_dp=99 exceeds parallel.dp" in msg


def test_an_unknown_fidelity_names_the_three_tiers() -> None:
    msg = error_of(with_("fidelity", "exact"))
    assert msg.startswith("fidelity: ")
    assert "'step', 'fast' or 'fluid'" in msg


def test_global_batch_not_divisible() -> None:
    msg = error_of(with_("training.0.global_batch_seqs", 65))
    assert msg.startswith("training.0.global_batch_seqs: ")
    assert "65 sequences must be a multiple of dp x microbatch_seqs = 16" in msg


def test_interleave_takes_any_number_of_microbatches() -> None:
    # 48 sequences / (dp 4 x microbatch 2) = 6 microbatches per rank at pp 4: not a multiple,
    # which Megatron-Core's interleaved schedule table runs (a last partial group); the step
    # pays the larger bubble of kernels.training.
    data = with_(
        "training.0.parallel", {"tp": 8, "pp": 4, "dp": 4, "interleave": 2, "microbatch_seqs": 2}
    )
    assert af.load(with_("training.0.global_batch_seqs", 48, data)).training[0].batch_seqs == 48


def test_exactly_one_batch_size() -> None:
    msg = error_of(with_("training.0.global_batch_tokens", "512k"))
    assert msg.startswith("training.0: ")
    assert "exactly one of global_batch_tokens and global_batch_seqs" in msg


def test_fp8_needs_fp8_tensor_cores() -> None:
    data = with_("cluster.node_pools.0.gpu", "A100-SXM-80GB")
    msg = error_of(with_("training.0.precision", "fp8", data))
    assert msg.startswith("training.0.precision: ")
    assert "A100-SXM-80GB has no FP8" in msg


def test_unknown_pool_and_duplicate_names() -> None:
    msg = error_of(with_("training.0.pool", "h200"))
    assert msg.startswith("training.0.pool: unknown pool 'h200'")
    assert "['h100']" in msg
    two = with_("training", [BASE["training"][0], BASE["training"][0]])
    assert "training job names must be unique" in error_of(two)


def test_every_mistake_is_reported_at_once() -> None:
    data = with_("duration", "soon", with_("cluster.node_pools.0.nodes", 0))
    msg = error_of(data)
    assert "duration: " in msg
    assert "cluster.node_pools.0.nodes: " in msg


def test_set_path_errors_name_the_path() -> None:
    with pytest.raises(af.ScenarioError, match=r"training\.3: index 3 is out of range"):
        set_path(BASE, "training.3.name", "x")
    with pytest.raises(af.ScenarioError, match="duration is a value, not a section"):
        set_path(BASE, "duration.unit", "s")
    with pytest.raises(af.ScenarioError, match="indexed by position"):
        set_path(BASE, "training.first.name", "x")


def test_missing_file() -> None:
    with pytest.raises(af.ScenarioError, match="no such scenario file"):
        af.load("/nonexistent/scenario.yaml")


# --- catalog overrides and inline models ------------------------------------------------------


def test_gpu_override_keeps_other_fields() -> None:
    s = af.load(with_("cluster.node_pools.0.gpu", {"base": "H100-SXM", "hbm_gb": 96}))
    gpu = s.cluster.node_pools[0].gpu
    assert gpu.hbm_gb == 96
    assert gpu.name == "H100-SXM*"  # marked as altered
    h100 = catalog.entry("gpu", "H100-SXM")
    for field, value in h100.items():
        if field != "hbm_gb":
            assert getattr(gpu, field) == value, field


def test_inline_model_gets_gpt_defaults() -> None:
    layers, hidden, heads, vocab = 12, 768, 12, 50304
    data = with_(
        "training.0.model", {"layers": layers, "hidden": hidden, "heads": heads, "vocab": vocab}
    )
    data = with_("training.0.parallel", {"tp": 4, "dp": 32}, data)
    m = af.load(data).training[0].model
    assert m.kv_heads == heads
    assert m.ffn_hidden == 4 * hidden
    assert m.ffn_kind == "gelu"
    assert (m.experts, m.top_k, m.tie_embeddings) == (1, 1, False)
    # GPT layer without biases: 12 h^2 weights + 2 norms of h; untied embeddings 2 V h; final
    # norm h. Integers, so exact.
    assert m.params == layers * (12 * hidden**2 + 2 * hidden) + 2 * vocab * hidden + hidden


def test_inline_model_shape_rules() -> None:
    bad = {"layers": 4, "hidden": 1000, "heads": 16, "vocab": 1000}
    msg = error_of(with_("training.0.model", bad))
    assert msg.startswith("training.0.model: ")
    assert "hidden=1000 must be a multiple of heads=16" in msg
    gqa = {"layers": 4, "hidden": 1024, "heads": 16, "kv_heads": 3, "vocab": 1000}
    assert "heads=16 must be a multiple of kv_heads=3" in error_of(with_("training.0.model", gqa))


def test_global_batch_tokens_rounds_to_whole_microbatches() -> None:
    # Batch sizes are quoted with binary suffixes (Llama 3's "16M tokens" = 2048 x 8192 =
    # 2**24), so "16M" here is 16 x 2**20 = 16,777,216 tokens = 2048 sequences of 8192, which
    # with dp 128 and one sequence per microbatch is exactly 16 microbatches per rank.
    data = with_(
        "training.0.global_batch_tokens", "16M", with_("training.0.global_batch_seqs", None)
    )
    del data["training"][0]["global_batch_seqs"]
    data = with_("training.0.parallel", {"tp": 1, "dp": 128}, data)
    job = af.load(data).training[0]
    assert job.global_batch_tokens == 16 * 2**20
    assert job.batch_seqs == 2048
    assert job.steps == -(-1_000_000_000 // (2048 * 8192))
    # A plain number is taken as written: 16e6 / 8192 = 1953.125 sequences = 15.26 units of
    # 128, rounded to the nearest whole number of microbatches per rank, 15: 1920 sequences.
    si = af.load(with_("training.0.global_batch_tokens", 16e6, data)).training[0]
    assert si.batch_seqs == 1920
    assert abs(si.batch_seqs * 8192 - 16e6) <= 128 * 8192 / 2  # nearest multiple
    # Nearest, not floor: 16.7e6 / 8192 / 128 = 15.93 rounds up to 16 per rank.
    assert (
        af.load(with_("training.0.global_batch_tokens", 16.7e6, data)).training[0].batch_seqs
        == 2048
    )
    assert (
        af.load(with_("training.0.global_batch_tokens", 2048 * 8192, data)).training[0].batch_seqs
        == 2048
    )
    # A batch smaller than one microbatch per rank rounds up to one, never to zero.
    tiny = af.load(with_("training.0.global_batch_tokens", 8192, data)).training[0]
    assert tiny.batch_seqs == 128


# --- the example factory ---------------------------------------------------------------------


def test_example_factory_loads_as_written() -> None:
    # tests/test_inference_spec.py checks the service.
    data = yaml.safe_load(FACTORY_YAML.read_text())
    s = af.load(data)
    assert s.inference[0].fidelity == "fluid"
    assert s.cluster.node_pools[0].gpus == 2080 * 8
    assert s.training[0].parallel.gpus == 16384
    assert s.training[0].elastic is not None and s.training[0].elastic.min_dp == 96
    assert s.scheduler.policy == "priority-backfill" and s.scheduler.preemption
    assert [svc.name for svc in s.inference] == ["chat"]
