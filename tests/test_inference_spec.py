"""The `inference` section: what a service becomes, and one located error per mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from shared_paths import SHARED

import aifactory_sim as af
from aifactory_sim.cli import main
from aifactory_sim.spec import InferenceService, content_hash, set_path
from aifactory_sim.spec.autoscaling import HPA, KPA
from aifactory_sim.spec.inference import SLO, Batching, ColdStart
from aifactory_sim.spec.serving import DiurnalTraffic, PoissonTraffic

FACTORY_YAML = SHARED / "examples" / "factory.yaml"

# 4 nodes x 8 H100 with shared storage, serving llama3-8b at 5 requests per second.
BASE: dict[str, Any] = {
    "duration": "1h",
    "cluster": {
        "node_pools": [{"name": "h100", "nodes": 4, "gpu": "H100-SXM"}],
        "storage": {"read_gb_s": 100, "write_gb_s": 50},
    },
    "inference": [
        {
            "name": "chat",
            "model": "llama3-8b",
            "traffic": {"kind": "poisson", "rate_rps": 5},
            "prompt_tokens": 512,
            "output_tokens": {"kind": "geometric", "mean": 200},
        }
    ],
}


def with_(path: str, value: Any, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return set_path(BASE if data is None else data, path, value)


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(af.ScenarioError) as err:
        af.load(data)
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg  # one line, as the CLI prints it
    return msg


def service(data: dict[str, Any] | None = None) -> InferenceService:
    return af.load(BASE if data is None else data).inference[0]


# --- what a valid service becomes -----------------------------------------------------------


def test_example_factory_chat_service() -> None:
    data = yaml.safe_load(FACTORY_YAML.read_text())
    data["inference"][0]["fidelity"] = "fast"
    s = af.load(data)
    (chat,) = s.inference
    assert chat.name == "chat"
    assert chat.model.name == "llama3-70b" and chat.model.layers == 80
    assert (chat.precision, chat.kv_precision, chat.tp) == ("fp8", "bf16", 4)
    assert chat.priority == 10 and chat.fidelity == "fast" and chat.pool is None
    assert isinstance(chat.traffic, DiurnalTraffic)
    assert chat.traffic.mean_rps == 600 and chat.traffic.period == 86400.0
    assert chat.prompt_tokens is not None and chat.prompt_tokens.max == 8192
    assert chat.batching == Batching(max_num_seqs=256, max_batched_tokens=8192,
                                     chunked_prefill=True)
    assert isinstance(chat.autoscaler, HPA)
    assert (chat.autoscaler.metric, chat.autoscaler.target) == ("concurrency", 128)
    assert (chat.autoscaler.min_replicas, chat.autoscaler.max_replicas) == (8, 256)
    assert chat.replicas is None and chat.initial_replicas == 8
    assert chat.slo == SLO(ttft_s=2.0, tpot_s=0.1, percentile=99)
    assert chat.cold_start == ColdStart(container_s=30.0, weights_from=None, weights_s=None)
    assert chat.router == "least-outstanding" and chat.gpu_memory_utilization == 0.9
    assert chat.start_at == 0.0
    # Storage is there, so that is where a new replica reads its weights.
    assert chat.cold_start.source(s.cluster.storage is not None, True) == "storage"
    assert chat.nodes_for(chat.initial_replicas, 8) == 4  # two tp=4 replicas per node


def test_defaults_of_a_minimal_service() -> None:
    svc = service()
    assert svc.model.name == "llama3-8b"
    assert isinstance(svc.traffic, PoissonTraffic) and svc.traffic.rate_rps == 5
    assert svc.prompt_tokens is not None and svc.prompt_tokens.kind == "fixed"
    assert (svc.precision, svc.kv_precision, svc.tp, svc.priority) == ("bf16", "bf16", 1, 0)
    assert svc.fidelity is None and svc.autoscaler is None and svc.slo is None
    assert svc.batching == Batching(max_num_seqs=256, max_batched_tokens=8192)
    assert svc.initial_replicas == 1
    assert svc.cold_start.container_s == 30.0


def test_units_and_catalog_overrides() -> None:
    data = with_("inference.0.start_at", "2h")
    data = with_("inference.0.cold_start", {"container_s": "1min", "weights_s": "90s"}, data)
    data = with_("inference.0.model", {"base": "llama3-8b", "layers": 16}, data)
    svc = service(data)
    assert svc.start_at == 7200.0
    assert (svc.cold_start.container_s, svc.cold_start.weights_s) == (60.0, 90.0)
    assert svc.model.name == "llama3-8b*" and svc.model.layers == 16


def test_a_scenario_with_services_round_trips() -> None:
    data = with_("inference.0.autoscaler", {"kind": "kpa", "target": 10, "max_replicas": 4})
    s = af.load(data)
    again = af.load(s)
    assert again == s and content_hash(again) == content_hash(s)
    assert content_hash(af.load(with_("inference.0.tp", 2, data))) != content_hash(s)


# --- initial replicas -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "autoscaler", "initial"),
    [
        (None, None, 1),
        (3, None, 3),
        (0, None, 0),  # a fixed count of zero: deployed, never serving
        (None, {"kind": "hpa", "target": 8, "min_replicas": 3, "max_replicas": 4}, 3),
        (None, {"kind": "hpa", "target": 8, "min_replicas": 0, "max_replicas": 4}, 1),
        (None, {"kind": "kpa", "target": 8, "max_replicas": 4}, 1),  # KPA's min is 0
        (2, {"kind": "kpa", "target": 8, "max_replicas": 4}, 2),
        (0, {"kind": "kpa", "target": 8, "max_replicas": 4}, 0),
    ],
)
def test_initial_replicas(replicas: int | None, autoscaler: dict | None, initial: int) -> None:
    data = with_("inference.0.replicas", replicas)
    data = with_("inference.0.autoscaler", autoscaler, data)
    assert service(data).initial_replicas == initial


def test_initial_replicas_of_a_bare_model() -> None:
    # The property needs no scenario: max(min_replicas, 1) capped by max_replicas.
    svc = InferenceService.model_validate(
        {**BASE["inference"][0], "autoscaler": KPA(target=1, min_replicas=0, max_replicas=1)}
    )
    assert svc.initial_replicas == 1
    assert isinstance(svc.autoscaler, KPA)


def test_replicas_outside_the_autoscaler_bounds() -> None:
    data = with_("inference.0.autoscaler", {"kind": "hpa", "target": 8, "min_replicas": 2,
                                            "max_replicas": 4})
    msg = error_of(with_("inference.0.replicas", 5, data))
    assert msg.startswith("inference.0: replicas=5 ")
    assert "allowed: 2..4" in msg
    assert service(with_("inference.0.replicas", 4, data)).initial_replicas == 4


# --- one located message per mistake --------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "where", "words"),
    [
        ("inference.0.fidelity", "slow", "inference.0.fidelity", "'step', 'fast' or 'fluid'"),
        ("inference.0.precision", "fp6", "inference.0.precision",
         "'bf16', 'fp8', 'int4' or 'fp4'"),
        ("inference.0.kv_precision", "int4", "inference.0.kv_precision", "'bf16', 'fp8' or 'fp4'"),
        ("inference.0.kv_cache_dtype", "int4", "inference.0.kv_cache_dtype",
         "'bf16', 'fp8' or 'fp4'"),
        ("inference.0.router", "hash", "inference.0.router", "'least-outstanding'"),
        ("inference.0.tp", 0, "inference.0.tp", "greater than or equal to 1"),
        ("inference.0.replicas", -1, "inference.0.replicas", "greater than or equal to 0"),
        ("inference.0.gpu_memory_utilization", 1.2, "inference.0.gpu_memory_utilization",
         "less than or equal to 1"),
        ("inference.0.name", "", "inference.0.name", "at least 1 character"),
        ("inference.0.model", "llama9", "inference.0.model", "llama9"),
        ("inference.0.batching", {"max_num_seqs": 512, "max_batched_tokens": 256},
         "inference.0.batching", "max_batched_tokens=256 is below max_num_seqs=512"),
        ("inference.0.batching.max_num_seqs", 0, "inference.0.batching.max_num_seqs",
         "greater than or equal to 1"),
        ("inference.0.slo", {"percentile": 95}, "inference.0.slo", "needs ttft_s, tpot_s or both"),
        ("inference.0.slo", {"ttft_s": 1, "percentile": 0}, "inference.0.slo.percentile",
         "greater than 0"),
        ("inference.0.slo", {"ttft_s": 1, "percentile": 101}, "inference.0.slo.percentile",
         "less than or equal to 100"),
        ("inference.0.slo", {"tpot_s": 0}, "inference.0.slo.tpot_s", "greater than 0"),
        ("inference.0.cold_start.weights_from", "s3", "inference.0.cold_start.weights_from",
         "'storage' or 'nvme'"),
        ("inference.0.cold_start.container_s", -5, "inference.0.cold_start.container_s",
         "greater than or equal to 0"),
        ("inference.0.traffic", {"rate_rps": 5}, "inference.0.traffic", "traffic needs a kind"),
        ("inference.0.output_tokens", None, "inference.0",
         "poisson traffic needs output_tokens"),
        ("inference.0.colour", "red", "inference.0.colour", "unknown field"),
        ("inference.0.tp", 3, "inference.0", "tp=3 must divide the model's heads=32"),
    ],
)
def test_field_errors_are_located(path: str, value: Any, where: str, words: str) -> None:
    msg = error_of(with_(path, value))
    assert msg.startswith(f"{where}: "), msg
    assert words in msg


def test_fluid_is_a_tier_for_the_scenario_and_for_each_service() -> None:
    assert af.load(with_("fidelity", "fluid")).fidelity == "fluid"
    s = af.load(with_("inference.0.fidelity", "fluid"))
    assert s.fidelity == "fast" and s.inference[0].fidelity == "fluid"


def test_names_are_unique_among_services_and_jobs() -> None:
    msg = error_of(with_("inference", [BASE["inference"][0], BASE["inference"][0]]))
    assert msg.startswith("inference.1.name: 'chat' is already the name of inference.0")
    job = {"name": "chat", "model": "llama3-8b", "tokens": "1B", "seq_len": 4096,
           "global_batch_seqs": 8, "parallel": {"tp": 8}}
    msg = error_of(with_("training", [job]))
    assert msg.startswith("inference.0.name: 'chat' is also a training job's name")
    job["name"] = "pretrain"
    assert af.load(with_("training", [job])).training[0].name == "pretrain"


def test_unknown_pool() -> None:
    msg = error_of(with_("inference.0.pool", "a100"))
    assert msg == "inference.0.pool: unknown pool 'a100'; allowed: ['h100']"
    assert service(with_("inference.0.pool", "h100")).pool == "h100"


def test_tp_divides_a_node_or_spans_whole_nodes() -> None:
    # 6-GPU nodes: tp 4 neither divides 6 nor is a multiple of it; llama3-8b has 32 heads.
    data = with_("cluster.node_pools.0.gpus_per_node", 6)
    msg = error_of(with_("inference.0.tp", 4, data))
    assert msg.startswith("inference.0.tp: tp=4 neither divides nor is a multiple of the 6 GPUs")
    assert "allowed: 1, 2, 3, 6 (replicas share a node) or a multiple of 6" in msg
    assert service(with_("inference.0.tp", 2, data)).tp == 2
    # On 8-GPU nodes tp 16 spans two whole nodes per replica, two replicas fill the pool.
    svc = service(with_("inference.0.replicas", 2, with_("inference.0.tp", 16)))
    assert svc.nodes_for(svc.initial_replicas, 8) == 4
    assert svc.nodes_for(3, 8) == 6 and svc.nodes_for(0, 8) == 0


def test_weights_must_fit() -> None:
    # llama3-70b in bf16 is 141 GB of weights; one 80 GB H100 (80 GiB, 79.6 GiB of it visible:
    # 85.5 x 10^9 bytes) at 0.9 offers 77 GB.
    data = with_("inference.0.model", "llama3-70b")
    msg = error_of(data)
    assert msg.startswith("inference.0: llama3-70b at precision bf16 needs 141.1 GB of weights; "
                          "1 GPU of 80 GB (85.5 x 10^9 bytes visible) x gpu_memory_utilization 0.9 "
                          "give only 77.0 GB")
    assert "allowed: a larger tp, fp8/int4/fp4 weights, or a GPU with more memory" in msg
    # Each way out the message offers works.
    assert service(with_("inference.0.tp", 4, data)).tp == 4
    assert service(with_("inference.0.precision", "int4", data)).precision == "int4"
    bigger = with_("cluster.node_pools.0.gpu", {"base": "H100-SXM", "hbm_gb": 200}, data)
    assert service(bigger).model.name == "llama3-70b"
    # fp8 weights (72.7 GB) on two GPUs fit; at utilization 0.45 (77.0 GB, less 5.2 GB of
    # activations and workspaces) they no longer do.
    fp8 = with_("inference.0.tp", 2, with_("inference.0.precision", "fp8", data))
    assert service(fp8).tp == 2
    msg = error_of(with_("inference.0.gpu_memory_utilization", 0.45, fp8))
    assert ("at precision fp8 needs 72.7 GB of weights; 2 GPUs of 80 GB (85.5 x 10^9 bytes "
            "visible) x gpu_memory_utilization 0.45 give only 77.0 GB, less 5.2 GB") in msg
    assert msg.endswith("allowed: a larger tp, int4/fp4 weights, or a GPU with more memory")


def test_replicas_must_fit_the_pool() -> None:
    # 4 nodes: four tp=8 replicas fit, five do not; with a spare node, four do not either.
    data = with_("inference.0.tp", 8)
    assert service(with_("inference.0.replicas", 4, data)).initial_replicas == 4
    msg = error_of(with_("inference.0.replicas", 5, data))
    assert msg == ("inference.0.replicas: 5 replicas of tp=8 need 5 nodes of 8 GPUs, more than "
                   "pool 'h100''s 4 nodes")
    spare = with_("cluster.spare_nodes", 1, with_("inference.0.replicas", 4, data))
    assert "4 nodes less 1 spare nodes = 3" in error_of(spare)
    # The autoscaler's floor is where it starts, so it must fit too: four tp=2 replicas share
    # a node, 16 fill the pool, 17 need a fifth node. Its ceiling may exceed the pool.
    def scaled(floor: int) -> dict[str, Any]:
        return with_("inference.0.autoscaler", {"kind": "hpa", "target": 8, "max_replicas": 64,
                                                "min_replicas": floor},
                     with_("inference.0.tp", 2))

    assert service(scaled(16)).initial_replicas == 16
    msg = error_of(scaled(17))
    assert msg.startswith("inference.0.replicas: 17 replicas of tp=2 need 5 nodes of 8 GPUs")


def test_cold_start_needs_a_weight_source() -> None:
    no_storage = with_("cluster.storage", None)
    msg = error_of(no_storage)
    assert msg.startswith("inference.0.cold_start: a new replica reads its weights from")
    assert "give a measured cold_start.weights_s" in msg
    measured = service(with_("inference.0.cold_start.weights_s", 40, no_storage))
    assert measured.cold_start.weights_s == 40.0
    nvme = with_("cluster.node_pools.0.nvme", {"capacity_tb": 30, "read_gb_s": 25,
                                               "write_gb_s": 12}, no_storage)
    s = af.load(nvme)
    assert s.inference[0].cold_start.source(False, True) == "nvme"
    msg = error_of(with_("inference.0.cold_start.weights_from", "storage", nvme))
    assert msg.startswith("inference.0.cold_start.weights_from: 'storage' needs a cluster.storage")
    msg = error_of(with_("inference.0.cold_start.weights_from", "nvme"))
    assert msg.startswith("inference.0.cold_start.weights_from: 'nvme' needs pool 'h100'")
    assert service(with_("inference.0.cold_start.weights_from", "nvme", nvme)).cold_start.source(
        False, True) == "nvme"


def test_trace_file_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    data = with_("inference.0.traffic", {"kind": "trace", "path": str(missing)})
    msg = error_of(data)
    assert msg.startswith(f"inference.0.traffic.path: no such trace file: {missing}")
    missing.write_text("arrival_s,prompt_tokens,output_tokens\n0,10,10\n")
    assert service(data).traffic.kind == "trace"


# --- overrides by path ----------------------------------------------------------------------


def test_set_reaches_into_a_service() -> None:
    s = af.load(BASE, {"inference.0.traffic.rate_rps": 7, "inference.0.batching.max_num_seqs": 64,
                       "inference.0.slo.ttft_s": 0.5})
    svc = s.inference[0]
    assert isinstance(svc.traffic, PoissonTraffic) and svc.traffic.rate_rps == 7
    assert svc.batching.max_num_seqs == 64 and svc.batching.max_batched_tokens == 8192
    assert svc.slo == SLO(ttft_s=0.5)
    assert BASE["inference"][0]["traffic"]["rate_rps"] == 5  # the input is left alone


def test_set_below_a_catalog_model_overrides_that_entry() -> None:
    svc = af.load(BASE, {"inference.0.model.layers": 8}).inference[0]
    assert svc.model.name == "llama3-8b*" and svc.model.layers == 8
    assert svc.model.hidden == service().model.hidden
    assert af.load(BASE, {"inference.0.model": "llama3-70b",
                          "inference.0.tp": 4}).inference[0].model.name == "llama3-70b"


def test_cli_set_into_a_service(tmp_path: Path, capsys) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert main(["validate", str(path), "--set", "inference.0.traffic.rate_rps=9"]) == 0
    assert main(["validate", str(path), "--set", "inference.0.traffic.rate_rps=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: inference.0.traffic.poisson.rate_rps: ") and err.count("\n") == 1


def test_the_service_model_is_frozen() -> None:
    with pytest.raises(ValidationError):
        service().tp = 2  # type: ignore[misc]
