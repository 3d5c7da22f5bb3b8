"""kernels/: collectives and the training step against closed forms, published tables and
monotonicity properties."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shared_paths import SHARED

import aifactory_sim as af
from aifactory_sim import catalog
from aifactory_sim.estimate import as_gpu, as_model, gpu_kernel_args
from aifactory_sim.kernels.collectives import (
    allreduce_busbw,
    ring_allgather_s,
    ring_allreduce_s,
)
from aifactory_sim.kernels.training import (
    memory_per_gpu,
    param_count,
    step_flops,
    step_time,
)

# The project's shared reference data (tables, the example factory): see shared_paths.py.
MEGATRON_CSV = SHARED / "reference" / "megatron_2021_table1.csv"
PROPS = settings(max_examples=150, deadline=None)


def gpt(layers: Any, hidden: Any, heads: Any, vocab: Any = 51200) -> dict[str, Any]:
    """Kernel arguments of a GPT model as Megatron's equations assume it: no GQA, FFN 4h,
    GeLU, dense, tied embeddings, trained with dropout."""
    return {
        "layers": layers,
        "hidden": hidden,
        "heads": heads,
        "kv_heads": heads,
        "ffn_hidden": 4 * np.asarray(hidden),
        "vocab": vocab,
        "gated_ffn": False,
        "experts": 1,
        "top_k": 1,
        "tie_embeddings": True,
        "dropout": True,
    }


def gpu_args(name: str, **overrides: Any) -> dict[str, Any]:
    return {**gpu_kernel_args(as_gpu(name)), **overrides}


# --- collectives -------------------------------------------------------------------------------


@PROPS
@given(
    nbytes=st.floats(1.0, 1e11),
    ranks=st.integers(1, 4096),
    bw=st.floats(1e8, 1e12),
    alpha=st.floats(0.0, 1e-3),
)
def test_ring_allreduce_closed_form(nbytes: float, ranks: int, bw: float, alpha: float) -> None:
    # Patarasuk & Yuan 2009 / shared reference README: 2(p-1) alpha + 2 n (p-1) / (p B).
    expected = 2 * (ranks - 1) * alpha + 2 * nbytes * (ranks - 1) / (ranks * bw)
    assert ring_allreduce_s(nbytes, ranks, bw, alpha) == pytest.approx(expected, rel=1e-12)
    # Reduce-scatter / all-gather move half the bytes in half the steps.
    half = (ranks - 1) * alpha + nbytes * (ranks - 1) / (ranks * bw)
    assert ring_allgather_s(nbytes, ranks, bw, alpha) == pytest.approx(half, rel=1e-12)


def test_one_rank_costs_nothing() -> None:
    assert ring_allreduce_s(1e9, 1, 1e9, 1e-3) == 0.0
    assert ring_allgather_s(1e9, 1, 1e9, 1e-3) == 0.0
    out = ring_allreduce_s(np.array([1e9, 1e9]), np.array([1, 2]), 1e9, 1e-3)
    assert out[0] == 0.0 and out[1] > 0.0


@PROPS
@given(nbytes=st.floats(1e3, 1e11), ranks=st.integers(2, 4096), bw=st.floats(1e8, 1e12))
def test_busbw_recovers_link_bandwidth(nbytes: float, ranks: int, bw: float) -> None:
    # nccl-tests doc/PERFORMANCE.md: busbw = algbw x 2(n-1)/n is defined so that a latency-free
    # ring all-reduce shows the link bandwidth, whatever the rank count.
    t = ring_allreduce_s(nbytes, ranks, bw)
    assert allreduce_busbw(nbytes / t, ranks) == pytest.approx(bw, rel=1e-12)


def test_collectives_broadcast_over_arrays() -> None:
    n = np.array([[1e6], [1e9]])
    p = np.array([2, 8, 64])
    out = ring_allreduce_s(n, p, 1e10, 1e-5)
    assert out.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert out[i, j] == ring_allreduce_s(n[i, 0], p[j], 1e10, 1e-5)


# --- FLOPs and parameters against Megatron's equations -----------------------------------------

GPT_SHAPES = [  # (layers, hidden, heads, vocab, seq_len, batch)
    (24, 2304, 24, 51200, 2048, 512),
    (96, 12288, 96, 51200, 2048, 1536),
    (128, 25600, 160, 51200, 2048, 3072),
    (12, 768, 12, 50257, 1024, 8),
    (2, 64, 4, 1000, 16384, 3),
]


@pytest.mark.parametrize(("n", "h", "a", "v", "s", "b"), GPT_SHAPES)
def test_step_flops_megatron_eq3(n: int, h: int, a: int, v: int, s: int, b: int) -> None:
    # n is Megatron's l, the layer count (ruff forbids `l` as a name).
    # Narayanan et al. SC'21 Eq. 3, hardware FLOPs with full recomputation; exact in floating
    # point up to summation order (1e-12).
    eq3 = 96 * b * s * n * h**2 * (1 + s / (6 * h) + v / (16 * n * h))
    model, hardware = step_flops(gpt(n, h, a, v), s, b, recompute=2)
    assert hardware == pytest.approx(eq3, rel=1e-12)
    # Without recomputation: Korthikanti et al. 2022 (arXiv 2205.05198) Sec. 6 model FLOPs,
    # 72 B s l h^2 (1 + s/(6h) + V/(12 l h)). The layer terms are 3/4 of Eq. 3's; the logit
    # layer (6 B s h V) is never recomputed, so it is the same in both.
    mf = 72 * b * s * n * h**2 * (1 + s / (6 * h) + v / (12 * n * h))
    assert model == pytest.approx(mf, rel=1e-12)
    for rc in (0, 1):
        assert step_flops(gpt(n, h, a, v), s, b, recompute=rc)[0] == pytest.approx(mf, rel=1e-12)
    assert step_flops(gpt(n, h, a, v), s, b, recompute=0)[1] == pytest.approx(mf, rel=1e-12)
    # Selective recompute redoes only the attention core's forward, 4 B s^2 h per layer.
    sel = step_flops(gpt(n, h, a, v), s, b, recompute=1)[1]
    assert sel == pytest.approx(mf + 4 * b * s**2 * h * n, rel=1e-12)


def _megatron_rows() -> pd.DataFrame:
    return pd.read_csv(MEGATRON_CSV)


@pytest.mark.parametrize(
    "row", [r for _, r in _megatron_rows().iterrows()], ids=lambda r: f"{r.params_b}B"
)
def test_param_count_megatron_eq2(row: pd.Series) -> None:
    n, h, v, s = int(row.layers), int(row.hidden), 51200, 2048
    eq2 = 12 * n * h**2 * (1 + 13 / (12 * h) + (v + s) / (12 * n * h))
    ours = float(param_count(gpt(n, h, int(row.heads), v)))
    # Eq. 2 counts learned position embeddings (s h) and biases (13 h per layer, with the
    # norms' 4 h); ours has no position embeddings and norm weights only (2 h per layer), plus a
    # final norm h. Exactly: Eq. 2 - ours = 11 l h + s h - h, under 0.5% for every row.
    assert eq2 - ours == pytest.approx(11 * n * h + s * h - h, rel=1e-9)
    assert ours == pytest.approx(eq2, rel=0.005)
    # The table's sizes are Eq. 2 rounded to 0.1B.
    assert abs(ours - row.params_b * 1e9) <= 0.05e9 + 0.005 * ours


# --- memory: Korthikanti et al. 2022 ------------------------------------------------------------

# memory_per_gpu's arguments for one GPU holding the whole model with one microbatch in flight,
# no parallelism and no ZeRO; each test overrides what it varies.
MEMORY_BASE: dict[str, Any] = dict(
    tp=1,
    pp=1,
    dp=1,
    cp=1,
    seq_len=4096,
    microbatch_seqs=1,
    microbatches=1,
    interleave=1,
    recompute=2,
    zero_stage=0,
    flash_attention=True,
    sequence_parallel=True,
)


def memory(m: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return memory_per_gpu(m, **{**MEMORY_BASE, **overrides})


@pytest.mark.parametrize(
    ("n", "h", "a", "v", "s", "t"),
    [(*shape[:5], t) for shape in GPT_SHAPES[:4] for t in (1, 2, 4, 8) if shape[2] % t == 0],
)
@pytest.mark.parametrize(
    ("recompute", "seqpar", "per_layer"),
    [
        # Korthikanti et al., Table 2, activation bytes per layer / (s b h).
        (0, False, lambda t, a, s, h: 10 + 24 / t + 5 * a * s / (h * t)),  # tensor parallel
        (0, True, lambda t, a, s, h: 34 / t + 5 * a * s / (h * t)),  # + sequence parallel
        (1, False, lambda t, a, s, h: 10 + 24 / t),  # + selective recompute
        (1, True, lambda t, a, s, h: 34 / t),  # + sequence parallel + selective
        (2, False, lambda t, a, s, h: 2),  # full recompute: the layer input only
        (2, True, lambda t, a, s, h: 2 / t),  # ...sharded by sequence parallelism
    ],
)
def test_activation_memory_korthikanti(
    n: int, h: int, a: int, v: int, s: int, t: int, recompute: int, seqpar: bool, per_layer: Any
) -> None:
    mb = 2
    mem = memory(
        gpt(n, h, a, v),
        tp=t,
        seq_len=s,
        microbatch_seqs=mb,
        recompute=recompute,
        flash_attention=False,
        sequence_parallel=seqpar,
    )
    # pp = 1 and one microbatch in flight: all n layers' activations, plus (the model's own
    # addition, not in Korthikanti) the last stage's fp32 logits of one microbatch, 4 s b V / t.
    expected = s * mb * h * per_layer(t, a, s, h) * n + 4 * s * mb * v / t
    assert mem["activations"] == pytest.approx(expected, rel=1e-12)
    # The total is states + activations + a fixed reserve; states are 18 bytes per local
    # parameter with no ZeRO (Megatron-LM distrib_optimizer.md: bf16 2 + fp32 grad 4 + Adam 12).
    assert mem["states"] == pytest.approx(18 * mem["params_per_gpu"], rel=1e-12)
    assert mem["total"] - mem["states"] - mem["activations"] == pytest.approx(3e9, rel=1e-9)


@pytest.mark.parametrize(("p", "v"), [(2, 1), (4, 1), (4, 2), (8, 3), (12, 2)])
def test_pipeline_first_stage_holds_p_microbatches(p: int, v: int) -> None:
    # Korthikanti et al. Sec. 4.2.3: under 1F1B the first stage keeps p microbatches of its
    # l/p layers, the whole model's worth: s b h l (10 + 24/t + 5 a s/(h t)); interleaving
    # multiplies that by 1 + (p-1)/(p v). Needs microbatches >= p.
    n, h, a, v_, s, b, t = 96, 12288, 96, 51200, 2048, 1, 8
    mem = memory(
        gpt(n, h, a, v_),
        tp=t,
        pp=p,
        seq_len=s,
        microbatch_seqs=b,
        microbatches=4 * p,
        interleave=v,
        recompute=0,
        flash_attention=False,
        sequence_parallel=False,
    )
    factor = 1 + (p - 1) / (p * v) if v > 1 else 1.0
    expected = s * b * h * n * (10 + 24 / t + 5 * a * s / (h * t)) * factor
    assert mem["activations"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["llama3-8b", "llama3-70b", "gpt3-175b", "mixtral-8x7b"])
def test_one_gpu_holds_every_parameter(name: str) -> None:
    # tp = pp = 1: the one stage holds the whole model (embedding and any untied output layer);
    # the kernel omits only the final norm's h weights.
    m = as_model(name).kernel_args()
    mem = memory(m, tp=1, pp=1)
    assert mem["params_per_gpu"] == pytest.approx(float(param_count(m)) - m["hidden"], rel=1e-12)


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_zero_state_bytes(zero: int) -> None:
    # ZeRO (Rajbhandari et al. SC'20, Sec. 5) with this model's byte counts: stage 1 shards the
    # 12 optimizer bytes over d ranks, stage 2 also the 4 gradient bytes, stage 3 the 2 weight
    # bytes.
    d = 16
    m = as_model("llama3-70b").kernel_args()
    mem = memory(m, tp=8, pp=4, dp=d, seq_len=8192, microbatches=8, zero_stage=zero)
    per_param = (
        (2 / d if zero >= 3 else 2) + (4 / d if zero >= 2 else 4) + (12 / d if zero >= 1 else 12)
    )
    assert mem["states"] == pytest.approx(per_param * mem["params_per_gpu"], rel=1e-12)


# --- step time: closed-form pieces --------------------------------------------------------------

# step_time's arguments for tp 8 in one 8-GPU node, no pipeline, data or context parallelism,
# full recompute, no ZeRO, 50 GB/s NICs on a non-blocking fabric, overlapped gradient reduction
# and no data loading; each test overrides what it varies.
STEP_BASE: dict[str, Any] = dict(
    tp=8,
    pp=1,
    dp=1,
    cp=1,
    seq_len=8192,
    global_batch_seqs=64,
    microbatch_seqs=1,
    interleave=1,
    recompute=2,
    zero_stage=0,
    gpus_per_node=8,
    nic_bytes_per_s=50e9,
    net_alpha_s=5e-6,
    cross_leaf_slowdown=1.0,
    overlap_dp=True,
    data_bytes_per_step=0.0,
    data_bytes_per_s=np.inf,
)


def step(m: dict[str, Any], g: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return step_time(m, g, **{**STEP_BASE, **overrides})


def _bubble(layers: int, p: int, v: int, m: int) -> tuple[dict[str, Any], float]:
    """A GPT of `layers` layers on A100s at pp p, interleave v, m microbatches a rank: the step
    and its bubble over the ideal (pipelined microbatches') time."""
    d = 4
    r = step(gpt(layers, 8192, 64), gpu_args("A100-SXM-80GB"), pp=p, dp=d, seq_len=2048,
             global_batch_seqs=m * d, microbatch_seqs=1, interleave=v, nic_bytes_per_s=25e9)
    ideal = r["compute_s"] + r["tp_comm_s"] + r["cp_comm_s"] + r["pp_comm_s"]
    return r, float(r["bubble_s"] / ideal)


@pytest.mark.parametrize(("p", "v", "m"), [(2, 1, 8), (4, 2, 8), (8, 1, 32), (8, 4, 16)])
def test_pipeline_bubble_fraction(p: int, v: int, m: int) -> None:
    # Narayanan et al. Sec. 2.2: bubble / ideal time = (p-1)/m, interleaved (p-1)/(v m).
    r, bubble = _bubble(48, p, v, m)
    assert r["microbatches"] == m
    assert bubble == pytest.approx((p - 1) / (v * m), rel=1e-12)


@pytest.mark.parametrize(("p", "v", "m"), [(16, 4, 7), (8, 2, 3), (16, 1, 7), (4, 4, 4)])
def test_pipeline_bubble_with_fewer_microbatches_than_stages(p: int, v: int, m: int) -> None:
    # With m < p microbatches each of a rank's v chunks waits for its microbatches to come round
    # the p ranks: a 1F1B step spans p v + m - 1 chunk-microbatches of t_mb / v each, so the
    # bubble is (p v + m - 1)/v - m microbatches (m + p - 1 in all at v = 1, Narayanan Sec. 2.2;
    # at m = p both forms give (p-1)/v). Checked against a schedule drawn slot by slot below.
    _, bubble = _bubble(64, p, v, m)
    # forward slots: chunk c of microbatch j runs on rank r at slot c p + r + j when nothing
    # collides (m <= p), the last at (v-1) p + (p-1) + (m-1); backward mirrors it
    slots = {(c * p + rank + j, rank) for c in range(v) for rank in range(p) for j in range(m)}
    assert len(slots) == v * p * m  # no rank runs two chunks at once
    span = max(t for t, _ in slots) + 1
    assert bubble == pytest.approx((span / v - m) / m, rel=1e-12)


@pytest.mark.parametrize("recompute", [0, 1, 2])
@pytest.mark.parametrize("name", ["gpt3-175b", "llama3-70b", "mixtral-8x7b"])
def test_gemm_time_is_hardware_flops_at_calibrated_rate(recompute: int, name: str) -> None:
    # One stage (pp = 1) runs all the step's hardware FLOPs (step_flops, checked against Eq. 3
    # above), split over t x d GPUs, at peak x gemm_efficiency, whatever is recomputed.
    m, g = as_model(name).kernel_args(), gpu_args("H100-SXM")
    t, d, s, bsz = 8, 4, 4096, 32
    r = step(
        m,
        g,
        tp=t,
        dp=d,
        seq_len=s,
        global_batch_seqs=bsz,
        microbatch_seqs=2,
        recompute=recompute,
        zero_stage=1,
    )
    _, hw = step_flops(m, s, bsz, recompute)
    rate = g["peak_flops"] * g["gemm_efficiency"]
    assert r["gemm_s"] == pytest.approx(hw / (t * d) / rate, rel=1e-12)


@pytest.mark.parametrize(("recompute", "n_allreduce"), [(0, 4), (1, 4), (2, 6)])
@pytest.mark.parametrize("t", [2, 4, 8])
def test_tensor_parallel_traffic(recompute: int, n_allreduce: int, t: int) -> None:
    # Narayanan et al. Sec. 3.3: per layer and microbatch, two all-reduces of the b s h bf16
    # layer output forward and two backward, two more when the forward is recomputed; ring
    # all-reduces over NVLink at line rate x efficiency, alpha per hop.
    m, g = gpt(48, 8192, 64), gpu_args("A100-SXM-80GB")
    p, d, b, s, micro = 4, 2, 2, 2048, 8
    r = step(
        m,
        g,
        tp=t,
        pp=p,
        dp=d,
        seq_len=s,
        global_batch_seqs=micro * d * b,
        microbatch_seqs=b,
        recompute=recompute,
        nic_bytes_per_s=25e9,
    )
    bw, alpha, nbytes = g["nvlink_bytes_per_s"] * g["nvlink_efficiency"], 1e-6, 2 * b * s * 8192
    one = 2 * (t - 1) * alpha + 2 * nbytes * (t - 1) / (t * bw)
    assert g["nvlink_alpha_s"] == alpha
    assert r["tp_comm_s"] == pytest.approx(micro * (48 / p) * n_allreduce * one, rel=1e-12)


def test_dp_allreduce_without_overlap_is_a_ring_over_the_nics() -> None:
    # tp 8 fills a node, so each of the d data-parallel ranks sits in its own node and the
    # gradient ring runs over one NIC per GPU: 2(d-1) alpha + 2 n (d-1)/(d B), n = 4 bytes per
    # local parameter, B the NIC rate times the calibrated efficiency.
    g = gpu_args("H100-SXM")
    d, nic, alpha = 16, 50e9, 5e-6
    m = as_model("llama3-8b").kernel_args()
    r = step(m, g, tp=8, dp=d, nic_bytes_per_s=nic, net_alpha_s=alpha, overlap_dp=False)
    n = 4 * (float(param_count(m)) - m["hidden"]) / 8
    bw = nic * g["net_efficiency"]
    expected = 2 * (d - 1) * alpha + 2 * n * (d - 1) / (d * bw)
    assert r["dp_comm_s"] == pytest.approx(expected, rel=1e-9)


def test_data_stall_is_what_the_loader_cannot_hide() -> None:
    kw = dict(dp=2, seq_len=4096, global_batch_seqs=32, recompute=0, zero_stage=1)
    m, g = as_model("llama3-8b").kernel_args(), gpu_args("H100-SXM")
    fast = step(m, g, data_bytes_per_step=1e9, data_bytes_per_s=np.inf, **kw)
    busy = float(fast["step_time_s"])
    assert fast["data_stall_s"] == 0.0
    slow = step(m, g, data_bytes_per_step=1e9, data_bytes_per_s=1e9 / (3 * busy), **kw)
    assert slow["step_time_s"] == pytest.approx(3 * busy, rel=1e-12)
    assert slow["data_stall_s"] == pytest.approx(2 * busy, rel=1e-12)


# --- Megatron-LM SC'21 Table 1 ------------------------------------------------------------------


def _table1_kernel_call() -> tuple[pd.DataFrame, dict[str, Any], np.ndarray, np.ndarray]:
    """All ten rows in one vectorised kernel call (the model's shape varies per row, which a
    ModelSpec cannot hold, so this goes through kernels/ with the A100's estimate arguments)."""
    df = _megatron_rows()
    m = gpt(df.layers.to_numpy(), df.hidden.to_numpy(), df.heads.to_numpy())
    g = gpu_args("A100-SXM-80GB")
    tp, pp = df.tp.to_numpy(), df.pp.to_numpy()
    dp = df.gpus.to_numpy() // (tp * pp)
    bsz = df.batch_seqs.to_numpy()
    r = step(
        m,
        g,
        tp=tp,
        pp=pp,
        dp=dp,
        seq_len=2048,
        global_batch_seqs=bsz,
        microbatch_seqs=df.microbatch_seqs.to_numpy(),
        interleave=df.interleave.to_numpy(),
        nic_bytes_per_s=200e9 / 8,
        overlap_dp=(df.ddp == "torch").to_numpy(),
    )
    _, hw_flops = step_flops(m, 2048, bsz, 2)
    tflops = hw_flops / df.gpus.to_numpy() / r["step_time_s"] / 1e12
    return df, r, tflops, g


TABLE1 = _table1_kernel_call()


@pytest.mark.parametrize("i", range(len(TABLE1[0])), ids=[f"{p}B" for p in TABLE1[0].params_b])
def test_megatron_table1_tflops(i: int) -> None:
    df, _, tflops, _ = TABLE1
    row = df.iloc[i]
    # 10%: the model is calibrated by one constant (gemm_efficiency) over all ten rows, and the
    # published figures carry about 0.5% rounding; a row further off means the model misses a
    # cost that varies with scale.
    assert tflops[i] == pytest.approx(row.tflops_per_gpu, rel=0.10)
    # The public API (one call per row) gives the same number as the vectorised kernel call.
    est = af.estimate_training(
        {
            "layers": int(row.layers),
            "hidden": int(row.hidden),
            "heads": int(row.heads),
            "vocab": 51200,
            "tie_embeddings": True,
        },
        "A100-SXM-80GB",
        tp=int(row.tp),
        pp=int(row.pp),
        dp=int(row.gpus // (row.tp * row.pp)),
        seq_len=2048,
        global_batch_seqs=int(row.batch_seqs),
        microbatch_seqs=int(row.microbatch_seqs),
        interleave=int(row.interleave),
        recompute="full",
        zero_stage=0,
        gpus_per_node=8,
        nic_gbit_s=200,
        overlap_dp=(row.ddp == "torch"),
    )
    assert est.hardware_tflops_per_gpu == pytest.approx(tflops[i], rel=1e-12)
    assert est.fits  # Selene ran these on 80 GB GPUs
    assert est.recompute == "full"


def test_megatron_table1_one_gemm_efficiency() -> None:
    # The FLOPs the slowest (last) stage runs per step, from Eq. 3's pieces: ceil(l/p) layers of
    # 4 x (24 b s h^2 + 4 b s^2 h) plus the logits' 6 b s h V, split over t tensor ranks, m times.
    # Dividing by the modelled GEMM time must give one and the same efficiency for every row:
    # the catalog's single Ampere constant, never a per-row value.
    df, r, _, g = TABLE1
    n, h, t, p = df.layers, df.hidden, df.tp, df.pp
    b, s, v = df.microbatch_seqs, 2048, 51200
    layer = 4 * (24 * b * s * h**2 + 4 * b * s**2 * h)
    stage = (np.ceil(n / p) * layer + 6 * b * s * h * v) / t
    implied = (stage * r["microbatches"] / r["gemm_s"] / g["peak_flops"]).to_numpy()
    constant = catalog.entry("calibration", "ampere")["gemm_efficiency"]
    assert g["gemm_efficiency"] == constant
    np.testing.assert_allclose(implied, constant, rtol=1e-9)


# --- properties ---------------------------------------------------------------------------------

PROP_MODELS = {
    "gpt-1.3b": gpt(24, 2048, 16),
    "llama3-8b": as_model("llama3-8b").kernel_args(),
    "llama3-70b": as_model("llama3-70b").kernel_args(),
    "mixtral-8x7b": as_model("mixtral-8x7b").kernel_args(),
}
PROP_GPUS = {n: gpu_args(n) for n in ("A100-SXM-80GB", "H100-SXM", "GB200")}


@st.composite
def configs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A model, a GPU and the keyword arguments of step_time."""
    m = PROP_MODELS[draw(st.sampled_from(sorted(PROP_MODELS)))]
    g = dict(PROP_GPUS[draw(st.sampled_from(sorted(PROP_GPUS)))])
    g["flash_attention"] = draw(st.booleans())
    g["sequence_parallel"] = draw(st.booleans())
    tp = draw(st.sampled_from([1, 2, 4, 8]))
    pp = draw(st.sampled_from([1, 2, 4, 8]))
    v = draw(st.sampled_from([1, 2])) if pp > 1 else 1
    dp = draw(st.sampled_from([1, 2, 4, 16, 64]))
    cp = draw(st.sampled_from([1, 2, 4]))
    mb = draw(st.sampled_from([1, 2, 4]))
    micro = draw(st.integers(1, 64))
    seq = draw(st.sampled_from([1024, 4096, 8192]))
    bytes_per_token = draw(st.sampled_from([0.0, 4.0]))
    kw = dict(
        tp=tp,
        pp=pp,
        dp=dp,
        cp=cp,
        seq_len=seq,
        global_batch_seqs=dp * mb * micro,
        microbatch_seqs=mb,
        interleave=v,
        recompute=draw(st.sampled_from([0, 1, 2])),
        zero_stage=draw(st.sampled_from([0, 1, 2, 3])),
        gpus_per_node=draw(st.sampled_from([4, 8])),
        nic_bytes_per_s=10.0 ** draw(st.floats(8.0, 11.0)),  # 0.8 to 800 Gb/s, log-uniform
        net_alpha_s=draw(st.floats(0.0, 1e-4)),
        cross_leaf_slowdown=draw(st.floats(1.0, 4.0)),
        overlap_dp=draw(st.booleans()),
        data_bytes_per_step=dp * mb * micro * seq * bytes_per_token,
        data_bytes_per_s=draw(st.sampled_from([np.inf, 1e9, 1e11])),
    )
    return m, g, kw


def _t(m: dict[str, Any], g: dict[str, Any], kw: dict[str, Any]) -> float:
    return float(step_time(m, g, **kw)["step_time_s"])


# Tolerance 1e-12 relative: a pure floating-point allowance, the properties are exact.
NOT_FASTER = 1 - 1e-12


@PROPS
@given(configs(), st.floats(0.05, 0.99), st.floats(0.0, 1e-4))
def test_slower_nvlink_never_speeds_a_step(cfg: Any, factor: float, extra_alpha: float) -> None:
    m, g, kw = cfg
    base = _t(m, g, kw)
    slower = {**g, "nvlink_bytes_per_s": g["nvlink_bytes_per_s"] * factor}
    assert _t(m, slower, kw) >= base * NOT_FASTER
    # Less efficient tensor-parallel traffic (more bytes per useful byte) is the same thing.
    lossier = {**g, "nvlink_efficiency": g["nvlink_efficiency"] * factor}
    assert _t(m, lossier, kw) >= base * NOT_FASTER
    later = {**g, "nvlink_alpha_s": g["nvlink_alpha_s"] + extra_alpha}
    assert _t(m, later, kw) >= base * NOT_FASTER


@PROPS
@given(configs(), st.floats(0.05, 0.99), st.floats(1.0, 8.0), st.floats(0.0, 1e-3))
def test_slower_network_never_speeds_a_step(
    cfg: Any, factor: float, slowdown: float, extra_alpha: float
) -> None:
    m, g, kw = cfg
    base = _t(m, g, kw)
    assert _t(m, g, {**kw, "nic_bytes_per_s": kw["nic_bytes_per_s"] * factor}) >= base * NOT_FASTER
    worse = kw["cross_leaf_slowdown"] * slowdown
    assert _t(m, g, {**kw, "cross_leaf_slowdown": worse}) >= base * NOT_FASTER
    assert _t(m, g, {**kw, "net_alpha_s": kw["net_alpha_s"] + extra_alpha}) >= base * NOT_FASTER


@PROPS
@given(configs(), st.integers(1, 64))
def test_larger_batch_never_shortens_a_step(cfg: Any, more: int) -> None:
    m, g, kw = cfg
    unit = kw["dp"] * kw["microbatch_seqs"]
    bigger = kw["global_batch_seqs"] + more * unit
    per_seq = kw["data_bytes_per_step"] / kw["global_batch_seqs"]
    kw2 = {**kw, "global_batch_seqs": bigger, "data_bytes_per_step": bigger * per_seq}
    assert _t(m, g, kw2) >= _t(m, g, kw) * NOT_FASTER


@PROPS
@given(configs())
def test_more_recompute_never_faster(cfg: Any) -> None:
    m, g, kw = cfg
    times = [_t(m, g, {**kw, "recompute": rc}) for rc in (0, 1, 2)]
    assert times[0] <= times[1] / NOT_FASTER
    assert times[1] <= times[2] / NOT_FASTER


def _mem(m: dict[str, Any], g: dict[str, Any], kw: dict[str, Any], **over: Any) -> Any:
    args = {
        k: kw[k]
        for k in (
            "tp",
            "pp",
            "dp",
            "cp",
            "seq_len",
            "microbatch_seqs",
            "interleave",
            "recompute",
            "zero_stage",
        )
    }
    args["microbatches"] = kw["global_batch_seqs"] / (kw["dp"] * kw["microbatch_seqs"])
    args.update(over)
    return memory_per_gpu(
        m, flash_attention=g["flash_attention"], sequence_parallel=g["sequence_parallel"], **args
    )


@PROPS
@given(configs())
def test_memory_never_grows_with_zero_stage(cfg: Any) -> None:
    m, g, kw = cfg
    totals = [float(_mem(m, g, kw, zero_stage=z)["total"]) for z in (0, 1, 2, 3)]
    assert all(a >= b for a, b in itertools.pairwise(totals)), totals
    if kw["dp"] > 1:
        assert totals[3] < totals[0]


@PROPS
@given(configs())
def test_recompute_never_uses_more_activation_memory(cfg: Any) -> None:
    m, g, kw = cfg
    act = [float(_mem(m, g, kw, recompute=rc)["activations"]) for rc in (0, 1, 2)]
    assert act[2] <= act[1] <= act[0], act


def test_zero3_gathers_and_the_reduction_share_one_window() -> None:
    # Regression (found by the property above): llama3-70b, tp 8 x dp 16, ZeRO-3 on 1 GB/s
    # NICs is bound by the weight gathers. The reduction's overlap window was also granted on
    # top, so slowing NVLink 100x (longer microbatches, a longer window) cut the step from
    # 219.5 s to 196.7 s. Now the step can only get longer.
    m, g = as_model("llama3-70b").kernel_args(), gpu_args("H100-SXM")
    kw = {**STEP_BASE, "dp": 16, "zero_stage": 3, "nic_bytes_per_s": 1e9}
    times = [
        _t(m, {**g, "nvlink_bytes_per_s": g["nvlink_bytes_per_s"] * f}, kw)
        for f in (1.0, 0.5, 0.1, 0.01)
    ]
    assert times == sorted(times)


# --- vectorisation ------------------------------------------------------------------------------


def test_array_call_equals_scalar_calls() -> None:
    grid = [
        (tp, pp, dp, cp, mb, v, rc, z)
        for tp in (1, 2, 8)
        for pp in (1, 4)
        for dp in (2, 8)
        for cp in (1, 2)
        for mb in (1, 2)
        for v in (1, 2)
        for rc in ("none", "selective", "full", "auto")
        for z in (0, 1, 3)
        if not (v > 1 and pp == 1)
    ]
    # The grid's columns, in order: one array each for the vectorised call.
    keys = ("tp", "pp", "dp", "cp", "microbatch_seqs", "interleave", "recompute", "zero_stage")
    columns = {k: np.array([g[j] for g in grid]) for j, k in enumerate(keys)}
    common = dict(
        seq_len=8192,
        global_batch_seqs=64,
        nic_gbit_s=400,
        gpus_per_node=8,
        nodes_per_leaf=2,
        oversubscription=2.0,
        data_bytes_per_token=4.0,
        data_gb_s=5,
    )
    vec = af.estimate_training("llama3-70b", "H100-SXM", **columns, **common)
    fields = (
        "step_time_s",
        "tokens_per_s",
        "hardware_tflops_per_gpu",
        "model_tflops_per_gpu",
        "mfu",
        "memory_gb_per_gpu",
        "microbatches",
    )
    assert len(set(vec.recompute)) == 3  # the grid exercises every mode, auto included
    for i, layout in enumerate(grid):
        args = dict(zip(keys, layout, strict=True))
        one = af.estimate_training("llama3-70b", "H100-SXM", **args, **common)
        for f in fields:
            assert getattr(one, f) == pytest.approx(getattr(vec, f)[i], rel=1e-12), (grid[i], f)
        for k, x in one.breakdown.items():
            assert x == pytest.approx(vec.breakdown[k][i], rel=1e-12, abs=1e-300), (grid[i], k)
        assert one.fits == vec.fits[i]
        assert one.recompute == vec.recompute[i]


# --- sharing the spine (kernels.collectives.ring_leaf_flows, leaf_share_slowdown) -------------
def test_ring_leaf_flows_counts_one_flow_per_spanning_stage_block():
    from aifactory_sim.kernels.collectives import ring_leaf_flows

    leaf = np.repeat(np.arange(4), 4)  # 16 nodes on 4 leaves of 4, in rank order
    # One stage: a ring over all 16 nodes leaves each leaf once.
    assert ring_leaf_flows(leaf, 1, 4).tolist() == [1, 1, 1, 1]
    # Four stages of 4 nodes, one per leaf: every ring stays inside its leaf.
    assert ring_leaf_flows(leaf, 4, 4).tolist() == [0, 0, 0, 0]
    # Two stages of 8 nodes: each block spans two leaves.
    assert ring_leaf_flows(leaf, 2, 4).tolist() == [1, 1, 1, 1]
    # Three stages over 16 nodes: blocks of nodes 0-5, 6-10, 11-15 touch leaves {0,1}, {1,2},
    # {2,3}, so the middle leaves carry two flows.
    assert ring_leaf_flows(leaf, 3, 4).tolist() == [1, 2, 2, 1]
    # Fewer nodes than stages: each stage sits inside a node, nothing crosses.
    assert ring_leaf_flows(np.array([0, 1]), 4, 4).tolist() == [0, 0, 0, 0]
    # A job on one leaf puts nothing on the spine.
    assert ring_leaf_flows(np.zeros(4, dtype=np.int64), 1, 4).tolist() == [0, 0, 0, 0]


@given(flows=st.integers(0, 64), per_leaf=st.integers(1, 64), over=st.floats(1.0, 16.0))
def test_leaf_share_slowdown_is_the_max_min_fair_share(flows, per_leaf, over):
    from aifactory_sim.kernels.collectives import leaf_share_slowdown

    s = float(leaf_share_slowdown(flows, per_leaf, over))
    capacity = per_leaf / over  # up-links, in flows at line rate
    # Each flow gets min(line rate, capacity / flows): the slowdown is its inverse.
    share = 1.0 if flows == 0 else min(1.0, capacity / flows)
    assert s == pytest.approx(1.0 / share, rel=1e-12)
    assert s >= 1.0
