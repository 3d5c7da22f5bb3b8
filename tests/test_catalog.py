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


# --- GPUs added for issue 15 ----------------------------------------------------------------


def test_export_hoppers_keep_what_the_rules_left() -> None:
    # H800: the H100 SXM die, clocks and HBM, NVLink cut from 18 to 8 links (900 -> 400 GB/s).
    h100, h800, h20 = (catalog.entry("gpu", n) for n in ("H100-SXM", "H800", "H20"))
    for key in ("bf16_tflops", "fp8_tflops", "hbm_gb", "hbm_tb_s", "tdp_w"):
        assert h800[key] == h100[key], key
    assert h800["nvlink_gb_s"] == 8 * 50 < h100["nvlink_gb_s"]
    # H20: under a sixth of the H100's tensor throughput, but more HBM and more bandwidth.
    assert h20["bf16_tflops"] < h100["bf16_tflops"] / 6
    assert h20["fp8_tflops"] == 2 * h20["bf16_tflops"]
    assert h20["hbm_gb"] > h100["hbm_gb"] and h20["hbm_tb_s"] > h100["hbm_tb_s"]


def test_blackwell_ultra_and_cdna_refreshes() -> None:
    b200, b300, gb300 = (catalog.entry("gpu", n) for n in ("B200", "B300", "GB300"))
    # Blackwell Ultra: B200's BF16/FP8 rates, 1.5x its dense FP4, 288 GB instead of 192.
    assert (b300["bf16_tflops"], b300["fp8_tflops"]) == (b200["bf16_tflops"], b200["fp8_tflops"])
    assert b300["fp4_tflops"] == pytest.approx(1.5 * b200["fp4_tflops"])
    assert b300["hbm_gb"] == gb300["hbm_gb"] == 288 > b200["hbm_gb"]
    assert gb300["nvlink_domain"] == 72 and b300["nvlink_domain"] == 8
    mi300, mi325, mi355 = (catalog.entry("gpu", n) for n in ("MI300X", "MI325X", "MI355X"))
    # MI325X: MI300X's compute with 256 GB at 6 TB/s; MI355X (CDNA4): about twice the matrix
    # rate, FP4 at twice FP8.
    assert mi325["bf16_tflops"] == mi300["bf16_tflops"] and mi325["hbm_gb"] == 256
    assert mi355["family"] == "cdna4" and mi355["fp4_tflops"] == pytest.approx(
        2 * mi355["fp8_tflops"], rel=1e-3)
    assert 1.9 < mi355["bf16_tflops"] / mi300["bf16_tflops"] < 2.0


def test_fp4_only_where_the_tensor_cores_have_it() -> None:
    for name in catalog.names("gpu"):
        g = catalog.entry("gpu", name)
        if g.get("fp4_tflops") is not None:
            assert g["family"] in ("blackwell", "cdna4"), name
            assert g["fp4_tflops"] >= 1.999 * g["fp8_tflops"], name  # datasheet rounding
