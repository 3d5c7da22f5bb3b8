"""The catalog against published figures: GPU datasheets, model sizes, calibration sources."""

from __future__ import annotations

import csv

import pytest
from shared_paths import ROOT, SHARED

from aifactory_sim import catalog
from aifactory_sim.estimate import as_gpu, as_model, gpu_kernel_args

# The project's shared reference data (tables, the example factory): see shared_paths.py.
REFERENCE = SHARED / "reference"
GPU_CSV = REFERENCE / "gpus.csv"


def _gpu_rows() -> list[dict[str, str]]:
    with GPU_CSV.open(newline="") as f:
        return list(csv.DictReader(f))


# catalog field -> reference column
GPU_FIELDS = {
    "bf16_tflops": "bf16_dense_tflops",
    "fp8_tflops": "fp8_dense_tflops",
    "hbm_gb": "hbm_gb",
    "hbm_tb_s": "hbm_tb_s",
    "tdp_w": "tdp_w",
    "nvlink_gb_s": "nvlink_gb_s_per_gpu",
    "nvlink_domain": "nvlink_domain_gpus",
}


def test_reference_gpus_are_all_in_the_catalog() -> None:
    assert {r["gpu"] for r in _gpu_rows()} <= set(catalog.names("gpu"))


@pytest.mark.parametrize("row", _gpu_rows(), ids=lambda r: r["gpu"])
@pytest.mark.parametrize("field", list(GPU_FIELDS))
def test_gpu_matches_reference(row: dict[str, str], field: str) -> None:
    # 1%: the reference and the datasheets round differently (A100 HBM 2.039 vs 2.04 TB/s,
    # MI300X 1307.4 vs 1307 TFLOP/s); anything further apart is a wrong figure.
    ours = catalog.entry("gpu", row["gpu"])[field]
    ref = row[GPU_FIELDS[field]]
    if ref == "":
        assert ours is None, f"{row['gpu']}.{field}: the reference has no value"
    else:
        assert ours == pytest.approx(float(ref), rel=0.01)


@pytest.mark.parametrize("kind", ["gpu", "network", "model", "calibration"])
def test_every_entry_names_its_source(kind: str) -> None:
    table = catalog.table(kind)
    assert table, f"the {kind} table is empty"
    for name, entry in table.items():
        source = entry.get("source")
        assert isinstance(source, str) and source.strip(), f"{kind} {name!r} has no source"


def test_every_gpu_family_has_calibration() -> None:
    families = set(catalog.names("calibration"))
    for name in catalog.names("gpu"):
        assert catalog.entry("gpu", name)["family"] in families, name


# Published total parameter counts. Llama 3: the released checkpoints' sizes (8.03B, 70.6B,
# 405.9B, Llama 3 Herd paper and model cards); Mixtral: 46.7B total (Jiang et al. 2024, Sec. 2);
# GPT-3: 175B (Brown et al. 2020, Table 2.1). 1.5%: published sizes are rounded to 3-4
# significant figures, and GPT-3's 175B includes position embeddings (2048 x 12288 = 25M) and
# biases, which the catalog model (no biases, no learned positions) omits: about 0.25%.
PUBLISHED_PARAMS_B = {
    "llama3-8b": 8.03,
    "llama3-70b": 70.6,
    "llama3-405b": 405.9,
    "gpt3-175b": 175.0,
    "mixtral-8x7b": 46.7,
}


@pytest.mark.parametrize(("name", "billions"), list(PUBLISHED_PARAMS_B.items()))
def test_model_parameter_counts(name: str, billions: float) -> None:
    assert as_model(name).params == pytest.approx(billions * 1e9, rel=0.015)


def test_mixtral_active_parameters() -> None:
    # Mixtral uses 12.9B active parameters per token (Jiang et al. 2024, Sec. 2): the model with
    # only top_k=2 of its experts. 1.5% as above.
    m = as_model("mixtral-8x7b")
    active = as_model({"base": "mixtral-8x7b", "experts": 2, "top_k": 2}).params
    assert active == pytest.approx(12.9e9, rel=0.015)
    assert active < m.params


def test_network_line_rates() -> None:
    # InfiniBand generations per port (ConnectX-6/7/8 datasheets).
    assert {n: catalog.entry("network", n)["gbit_s"] for n in ("HDR", "NDR", "XDR")} == {
        "HDR": 200,
        "NDR": 400,
        "XDR": 800,
    }


def test_h100_collective_calibration_matches_nccl_tests() -> None:
    # shared/reference README: 8-GPU NVLink4 ring all-reduce busbw about 365-370 GB/s; multi-node
    # with 8 x 400G NICs, 320-340 GB/s per node. The calibration must land inside those ranges.
    g = gpu_kernel_args(as_gpu("H100-SXM"))
    nvlink_busbw = g["nvlink_bytes_per_s"] * g["nvlink_efficiency"]
    assert 365e9 <= nvlink_busbw <= 370e9
    node_busbw = 8 * 400e9 / 8 * g["net_efficiency"]
    assert 320e9 <= node_busbw <= 340e9


def test_lookup_is_case_insensitive_and_returns_copies() -> None:
    assert catalog.canonical_name("gpu", "h100-sxm") == "H100-SXM"
    e = catalog.entry("gpu", "h100-sxm")
    e["hbm_gb"] = 1
    assert catalog.entry("gpu", "H100-SXM")["hbm_gb"] == 80
    t = catalog.table("model")
    t["llama3-8b"]["layers"] = 1
    assert catalog.entry("model", "llama3-8b")["layers"] == 32


def test_unknown_name_lists_the_catalog() -> None:
    with pytest.raises(KeyError) as err:
        catalog.entry("gpu", "H10-SXM")
    msg = str(err.value.args[0])
    assert "'H10-SXM'" in msg
    assert "did you mean 'H100-SXM'" in msg
    for name in catalog.names("gpu"):
        assert name in msg


def test_the_tests_copy_of_the_shared_data_is_current():
    # tests/shared lets a lone clone run the tests; where ../shared exists it must match it.
    real = ROOT.parent / "shared"
    if not (real / "reference").is_dir():
        pytest.skip("no ../shared beside this checkout to compare with")
    copy = ROOT / "tests" / "shared"
    for rel in ("reference/gpus.csv", "reference/megatron_2021_table1.csv",
                "reference/README.md", "examples/factory.yaml"):
        assert (copy / rel).read_bytes() == (real / rel).read_bytes(), rel
