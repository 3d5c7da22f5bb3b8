"""Disaggregated prefill and decode: a KV transfer alone against size / bandwidth + latency,
transfers queued on one link, the decode replicas' KV bound, fast against step, the published
96-H100 DeepSeek deployment (LMSYS) within 25 %, and the summary's accounting."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from shared_paths import SHARED

import aifactory_sim as af
from aifactory_sim.cli import main
from aifactory_sim.engine.fleet import replica_sizing
from aifactory_sim.kernels.inference import kv_bytes_per_sequence

BASE: dict[str, Any] = {
    "name": "pd", "seed": 4, "duration": "10m",
    "cluster": {
        "node_pools": [{"name": "h100", "nodes": 2, "gpu": "H100-SXM", "nic_gbit_s": 400}],
        "fabric": {"kind": "fat-tree", "latency_us": 5},
    },
    "inference": [{
        "name": "chat", "model": "llama3-70b", "precision": "fp8", "kv_cache_dtype": "fp8",
        "cold_start": {"container_s": 0, "weights_s": 0},
        "disaggregation": {"prefill": {"tp": 4, "replicas": 1},
                           "decode": {"tp": 4, "replicas": 2}},
        "traffic": {"kind": "poisson", "rate_rps": 4},
        "prompt_tokens": {"kind": "lognormal", "median": 2000, "sigma": 0.7, "max": 8000},
        "output_tokens": {"kind": "geometric", "mean": 200},
    }],
}


def _with(duration: str = "10m", **fields: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d["duration"] = duration
    d["inference"][0].update(fields)
    return d


def _run(d: dict[str, Any]):
    res = af.run(af.load(d))
    return res, res.summary["inference"]["chat"]


def _link_bytes_per_s(d: dict[str, Any]) -> float:
    """4 GPUs x 400 Gb/s / 8 x the Hopper family's achievable share of it."""
    sc = af.load(d)
    pre = sc.inference[0].side("prefill")
    sz = replica_sizing(pre, sc.cluster.node_pools[0], 1.0)
    return 4 * float(sz.parallel_args["nic_bytes_per_s"])


def test_a_transfer_alone_takes_size_over_bandwidth_plus_latency():
    """One request at a time (1 per minute): each transfer starts at its first token and ends
    bytes / bandwidth + the fabric's 5 us later, bytes = the model's KV for its prompt
    (kernels.inference.kv_bytes_per_sequence, one copy); its second token needs it."""
    d = _with(traffic={"kind": "poisson", "rate_rps": 1 / 60})
    res, s = _run(d)
    req = res.requests[res.requests["output_tokens"] > 1].dropna(subset=["kv_transfer_end_s"])
    assert len(req) >= 3
    bw = _link_bytes_per_s(d)
    m = af.load(d).inference[0].model.kernel_args()
    size = kv_bytes_per_sequence(m, req["prompt_tokens"].to_numpy(), "fp8", 1)
    np.testing.assert_allclose(req["kv_bytes"], size, rtol=1e-12)
    np.testing.assert_allclose(req["kv_transfer_start_s"], req["first_token_s"], atol=1e-12)
    np.testing.assert_allclose(req["kv_transfer_end_s"] - req["kv_transfer_start_s"],
                               size / bw + 5e-6, rtol=1e-9)
    assert (req["finish_s"] > req["kv_transfer_end_s"]).all()
    assert s["kv_transfer"]["link_gb_s"] == pytest.approx(bw / 1e9)


def test_transfers_on_one_link_queue_first_come_first_served():
    """At load, a transfer starts when the one before it on its prefill replica's link has
    moved its bytes (the latency overlaps): start = max(first token, previous end - latency)."""
    res, s = _run(_with(traffic={"kind": "poisson", "rate_rps": 6}, duration="5m"))
    req = res.requests.dropna(subset=["kv_transfer_start_s"]).sort_values("kv_transfer_start_s")
    req = req[req["prefill_replica"] == 0]
    free = (req["kv_transfer_end_s"] - 5e-6).shift(1).fillna(-np.inf).cummax()
    expect = np.maximum(req["first_token_s"].to_numpy(), free.to_numpy())
    wait = req["kv_transfer_start_s"].to_numpy() - req["first_token_s"].to_numpy()
    assert (wait >= -1e-12).all()
    # queued on the link, or waiting for a decode seat (none here: 256 seats each)
    np.testing.assert_allclose(req["kv_transfer_start_s"], expect, rtol=0, atol=1e-9)
    assert s["kv_transfer"]["transfers"] == int(np.isfinite(res.requests["kv_transfer_end_s"]).sum())
    assert s["kv_transfer"]["bytes_gb"] == pytest.approx(
        res.requests["kv_bytes"][np.isfinite(res.requests["kv_transfer_end_s"])].sum() / 1e9)


def test_fast_equals_step_disaggregated():
    """Prefix caching, conversations, speculative decoding and a tight decode KV cache that
    makes requests wait for blocks: the same timestamps in both tiers."""
    out = {}
    for tier in ("fast", "step"):
        d = _with(
            duration="4m",
            traffic={"kind": "poisson", "rate_rps": 5},
            system_prompts={"count": 5, "tokens": 800},
            conversations={"turns_mean": 3, "think_time_s": 10},
            speculative={"method": "draft", "draft_model": "llama3-8b", "draft_tokens": 2,
                         "acceptance": 0.7},
            gpu_memory_utilization=0.6,
        )
        d["fidelity"] = tier
        out[tier] = _run(d)
    (fast, sf), (step, _) = out["fast"], out["step"]
    cols = ["arrival_s", "admitted_s", "first_token_s", "finish_s", "kv_transfer_start_s",
            "kv_transfer_end_s"]
    np.testing.assert_allclose(fast.requests[cols].to_numpy(), step.requests[cols].to_numpy(),
                               rtol=1e-9, atol=1e-9)
    for col in ("request", "cached_tokens", "preemptions", "prefill_replica", "decode_replica"):
        assert fast.requests[col].equals(step.requests[col]), col
    assert sf["prefix_cache"]["hit_rate_tokens"] > 0.1
    assert sf["completed"] > 500


def test_a_decode_replica_takes_what_its_kv_cache_holds():
    """One decode replica with room for about 26 sequences of this length against a load that
    would keep more there: its KV cache fills (the share sampled every 15 s passes 0.9) and
    never overflows (<= 1); requests beyond it wait, and the service falls behind."""
    d = _with(traffic={"kind": "poisson", "rate_rps": 6}, duration="5m",
              output_tokens={"kind": "fixed", "value": 600},
              prompt_tokens={"kind": "fixed", "value": 6000})
    d["inference"][0]["disaggregation"]["decode"]["replicas"] = 1
    d["inference"][0]["gpu_memory_utilization"] = 0.32
    res, s = _run(d)
    kv = s["pools"]["decode"]["kv_capacity_tokens"]
    assert 8 * 6600 < kv < 30 * 6600
    rows = res.services[res.services["service"] == "chat/decode"]
    assert rows["kv_used"].max() <= 1.0 + 1e-12
    assert rows["kv_used"].max() > 0.9
    assert s["in_flight"] > 50


def _lmsys(prefill_nodes: int, decode_nodes: int) -> tuple[Any, Any]:
    """LMSYS's layout on H100 (tp 1, DP attention and EP over every GPU of a side)."""
    gp, gd = 8 * prefill_nodes, 8 * decode_nodes
    d = {
        "name": "lmsys", "seed": 1, "duration": "1m",
        "cluster": {"node_pools": [{"name": "h100", "nodes": prefill_nodes + decode_nodes,
                                    "gpu": "H100-SXM", "nic_gbit_s": 400}]},
        "inference": [{
            "name": "v3", "model": "deepseek-v3", "precision": "fp8", "kv_cache_dtype": "fp8",
            "cold_start": {"container_s": 0, "weights_s": 0},
            "disaggregation": {
                "prefill": {"ep": gp, "dp_attention": gp, "replicas": 1,
                            "batching": {"max_num_seqs": 4 * gp, "max_batched_tokens": 4096 * gp}},
                "decode": {"ep": gd, "dp_attention": gd, "replicas": 1,
                           "batching": {"max_num_seqs": 256 * gd,
                                        "max_batched_tokens": 256 * gd}},
            },
            "traffic": {"kind": "poisson", "rate_rps": 1},
            "prompt_tokens": {"kind": "fixed", "value": 2000},
            "output_tokens": {"kind": "fixed", "value": 100},
        }],
    }
    sc = af.load(d)
    svc, pool = sc.inference[0], sc.cluster.node_pools[0]
    return (replica_sizing(svc.side("prefill"), pool, 1.0),
            replica_sizing(svc.side("decode"), pool, 1.0))


def test_the_lmsys_96_h100_deployment():
    """LMSYS, "Deploying DeepSeek with PD Disaggregation and Large-scale Expert Parallelism on
    96 H100 GPUs" (SGLang, 2025-05-05): prefill on 4 nodes (EP32, DP attention 32), decode on
    9 nodes (EP72, DP attention 72), 52.3k input tokens/s per prefill node and 22.3k output
    tokens/s per decode node at 2,000-token inputs, measured side by side as each side's
    throughput. Ours, same layouts on H100 in FP8: a prefill iteration of 4,096 tokens per rank
    (chunks of 2,000-token prompts) and a decode iteration of 256 sequences per rank at 2,050
    tokens of context, both within 25 %; and the decode iteration's time near the ~100 ms ITL
    the post reports as a limitation (within 25 %)."""
    pre, dec = _lmsys(4, 9)
    b, p = 4096 * 32, 2000
    k = b / p
    t = pre.table.time_s(b, 0, 0.0, k * p * (p + 1) / 2, int(k))
    assert b / t / 4 == pytest.approx(52_300, rel=0.25)
    n, ctx = 256 * 72, 2050.0
    itl = dec.table.decode_run(n, n * ctx)[0]
    assert n / itl / 9 == pytest.approx(22_300, rel=0.25)
    assert itl == pytest.approx(0.100, rel=0.25)
    assert dec.kv_tokens >= n * ctx  # the batch fits the decode side's cache


def test_the_summary_adds_up_the_two_pools():
    res, s = _run(_with(duration="5m"))
    pools = s["pools"]
    assert set(pools) == {"prefill", "decode"}
    for key in ("held", "busy", "cold_start"):
        assert s["gpu_h"][key] == pytest.approx(pools["prefill"]["gpu_h"][key]
                                               + pools["decode"]["gpu_h"][key])
    assert s["replicas_mean"] == pytest.approx(3.0)
    assert set(res.services["service"]) == {"chat/prefill", "chat/decode"}
    ledger = res.summary["ledger_gpu_h"]
    assert ledger["inference_busy"] == pytest.approx(s["gpu_h"]["busy"])
    assert s["usd_per_mtok"]["private"] > 0


@pytest.mark.parametrize("rate", [4, 8])
def test_fluid_tier_models_both_pools(rate):
    """An hour at half and at 96 % of the prefill replica's throughput: the fluid tier's
    prefill side (an M/G/1 queue of prompts per replica) and decode side (requests arriving
    with their KV) against the fast tier: TTFT and TPOT medians within 15 % (the fluid tier's
    tolerance), the KV moved and the transfers' mean time within 2 %."""
    out = {}
    for tier in ("fast", "fluid"):
        d = _with(duration="1h", traffic={"kind": "poisson", "rate_rps": rate})
        d["fidelity"] = tier
        out[tier] = _run(d)[1]
    fast, fluid = out["fast"], out["fluid"]
    for key in ("ttft_s", "tpot_s"):
        assert fluid[key]["p50"] == pytest.approx(fast[key]["p50"], rel=0.15), key
    for key in ("bytes_gb", "link_utilization"):
        assert fluid["kv_transfer"][key] == pytest.approx(fast["kv_transfer"][key], rel=0.02)
    assert fluid["kv_transfer"]["time_s"]["mean"] == pytest.approx(
        fast["kv_transfer"]["time_s"]["mean"], rel=0.02)
    assert fluid["completed"] == pytest.approx(fast["completed"], rel=0.02)


@pytest.mark.parametrize(("fields", "where"), [
    (dict(disaggregation={"prefill": {"tp": 3}, "decode": {"tp": 4}}),
     "inference.0: disaggregation.prefill: tp=3"),
    (dict(disaggregation={"prefill": {"tp": 4}, "decode": {"tp": 4},
                          "kv_transfer": {"link": "ethernet"}}),
     "inference.0.disaggregation.kv_transfer.link"),
    (dict(disaggregation={"prefill": {"tp": 4}, "decode": {"tp": 4, "replicas": -1}}),
     "inference.0.disaggregation.decode.replicas"),
])
def test_bad_fields_are_named(fields, where):
    with pytest.raises(af.ScenarioError) as err:
        af.load(_with(**fields))
    assert where in str(err.value)


def test_serving_frontier_runs_unchanged(tmp_path, capsys):
    """shared/examples/serving-frontier.yaml from the CLI as written but for the tier: a day in
    the fluid tier (a day of fast simulates some 20 million requests one by one), both services
    side by side in the printed summary, each with what the issue asks of its report."""
    path = SHARED / "examples" / "serving-frontier.yaml"
    assert main(["validate", str(path)]) == 0
    out = tmp_path / "run"
    assert main(["run", str(path), "--set", "fidelity=fluid", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "serving costs and caches" in text
    for name in ("assistant", "dense-70b"):
        assert name in text.split("serving costs and caches")[1]
    s = json.loads((out / "summary.json").read_text())["inference"]
    a, d = s["assistant"], s["dense-70b"]
    assert set(a["pools"]) == {"prefill", "decode"}
    assert a["pools"]["prefill"]["gpus_per_replica"] == 32
    assert a["pools"]["decode"]["gpus_per_replica"] == 144
    assert a["kv_transfer"]["bytes_gb"] > 0 and a["speculative"]["tokens_per_step"] == 1.85
    assert 0 < a["prefix_cache"]["hit_rate_tokens"] < 1
    assert a["conversations"]["later_turn_hit_rate"] > 0
    for svc in (a, d):
        assert svc["usd_per_mtok"]["private"] > 0 and svc["slo_attainment"] is not None
    # the same file's first ten minutes in the fast tier, unchanged but for the duration
    fast = af.run(af.load(path, overrides={"duration": "10m"}))
    assert fast.summary["inference"]["assistant"]["kv_transfer"]["transfers"] > 1000


def test_the_fluid_decode_side_takes_what_the_prefill_side_completes():
    """Half an hour at 12 requests/s, 1.4x what the one prefill replica prefills (8.5/s in
    `fast`): the prefill side falls behind, and the decode side sees only what it completes.
    The fluid tier's completions, backlog and TTFT against `fast`'s: within 2 %, 5 % and the
    tier's 15 %; what the decode side took in is what the prefill side finished."""
    out = {}
    for tier in ("fast", "fluid"):
        d = _with(duration="30m", traffic={"kind": "poisson", "rate_rps": 12})
        d["fidelity"] = tier
        out[tier] = _run(d)[1]
    fast, fluid = out["fast"], out["fluid"]
    assert fast["in_flight"] > 0.2 * fast["requests"]  # overloaded, as meant
    assert fluid["completed"] == pytest.approx(fast["completed"], rel=0.02)
    assert fluid["in_flight"] == pytest.approx(fast["in_flight"], rel=0.05)
    assert fluid["ttft_s"]["p50"] == pytest.approx(fast["ttft_s"]["p50"], rel=0.15)


def _decode_blocks_at(req, rid_time: float, replica: int) -> int:
    """Blocks of the prompts (and their first token) on `replica` just before `rid_time`:
    requests picked for it earlier (at their first token) and not finished."""
    on = req[(req["decode_replica"] == replica) & (req["first_token_s"] < rid_time)
             & ~(req["finish_s"] < rid_time)]
    return int((-(-(on["prompt_tokens"] + 1) // 16)).sum())


def test_kv_aware_decode_routing_picks_the_replica_with_the_fewest_blocks():
    """kv-aware: each request goes to the decode replica holding the fewest blocks of prompts
    at its first token (recounted from the requests table); least-loaded counts requests
    instead, and with prompts of very different lengths leaves the replicas' KV further apart.
    fast == step with it, per request."""
    fields = dict(duration="3m", traffic={"kind": "poisson", "rate_rps": 3},
                  prompt_tokens={"kind": "lognormal", "median": 1500, "sigma": 1.2,
                                 "max": 16000})
    runs = {}
    for router in ("kv-aware", "least-loaded"):
        d = _with(**fields)
        d["inference"][0]["disaggregation"]["decode_router"] = router
        d["inference"][0]["disaggregation"]["decode"]["replicas"] = 3
        d["cluster"]["node_pools"][0]["nodes"] = 3
        runs[router] = _run(d)
    req = runs["kv-aware"][0].requests
    req = req[req["output_tokens"] > 1].sort_values("first_token_s")
    times = req["first_token_s"].to_numpy()
    checked = 0
    for i, row in enumerate(req.itertuples()):
        t = row.first_token_s
        if (i and times[i - 1] == t) or (i + 1 < len(times) and times[i + 1] == t):
            continue  # picked at one instant with another: their order is the log's
        mine = _decode_blocks_at(req, t, row.decode_replica)
        assert all(mine <= _decode_blocks_at(req, t, k) for k in range(3)), row.request
        checked += 1
    assert checked > 300
    spread = {}
    for router, (res, _) in runs.items():
        r = res.requests[res.requests["output_tokens"] > 1]
        samples = np.linspace(30, 170, 30)
        gaps = [np.ptp([_decode_blocks_at(r, t, k) for k in range(3)]) for t in samples]
        spread[router] = float(np.mean(gaps))
    assert spread["kv-aware"] < 0.8 * spread["least-loaded"]
    d = _with(**fields)
    d["inference"][0]["disaggregation"]["decode_router"] = "kv-aware"
    d["inference"][0]["disaggregation"]["decode"]["replicas"] = 3
    d["cluster"]["node_pools"][0]["nodes"] = 3
    d["fidelity"] = "step"
    step = _run(d)[0].requests
    d["fidelity"] = "fast"
    fast_kv = _run(d)[0].requests
    np.testing.assert_allclose(fast_kv[["first_token_s", "finish_s"]].to_numpy(),
                               step[["first_token_s", "finish_s"]].to_numpy(), rtol=1e-9, atol=1e-9)
    assert fast_kv["decode_replica"].equals(step["decode_replica"])


def _shared_fabric(with_job: bool = True, with_service: bool = True) -> dict[str, Any]:
    """8 nodes, 2 a leaf, up-links oversubscribed 4:1 (half a node's bandwidth a leaf), nodes
    dealt round-robin over the leaves: an 8B job on 4 nodes (one a leaf, its ring crossing every
    leaf), a 70B service's prefill and decode replicas (one node each) on two other leaves."""
    d = _with(duration="10m", traffic={"kind": "poisson", "rate_rps": 4})
    d["cluster"]["node_pools"][0]["nodes"] = 8
    d["cluster"]["fabric"] = {"kind": "fat-tree", "latency_us": 5, "nodes_per_leaf": 2,
                              "oversubscription": 4.0}
    d["scheduler"] = {"placement": "spread"}
    d["inference"][0]["disaggregation"] = {"prefill": {"tp": 8, "replicas": 1},
                                           "decode": {"tp": 8, "replicas": 1}}
    if with_job:
        d["training"] = [{"name": "pre", "model": "llama3-8b", "tokens": 1e12, "seq_len": 4096,
                          "global_batch_seqs": 128, "parallel": {"tp": 1, "pp": 1, "dp": 32}}]
    if not with_service:
        d.pop("inference")
    return d


def test_kv_transfers_share_the_fabric_with_training():
    """The transfers cross leaves: each is one more flow of a node's bandwidth beside the ring
    and the transfers' mean load of the 15 s window before (bytes / (node bandwidth x 15 s),
    recounted from the requests table): slowdown = (1 + load + 1) x 4 / 2 exactly, and its time
    bytes x slowdown / bandwidth + latency. The job's ring, slowed 2x by its own leaf share,
    is slowed (1 + load) x 2 at most by the transfers; without the service, exactly 2. The step
    tier moves every transfer at the same times."""
    res, s = _run(_shared_fabric())
    req = res.requests.dropna(subset=["kv_transfer_end_s"]).sort_values("first_token_s")
    assert len(req) > 1000
    assert (req["prefill_replica"] == 0).all() and (req["decode_replica"] == 0).all()
    bw = 8 * _link_bytes_per_s(_with()) / 4  # a node's 8 GPUs' NICs: the tp=8 link
    window = np.floor(req["first_token_s"].to_numpy() / 15.0 - 1e-12)
    sent = pd.Series(req["kv_bytes"].to_numpy()).groupby(window).sum()
    load_before = np.array([sent.get(w - 1, 0.0) for w in window]) / (bw * 15.0)
    expect = (1.0 + load_before + 1.0) * 4.0 / 2.0
    np.testing.assert_allclose(req["kv_fabric_slowdown"], expect, rtol=1e-9)
    np.testing.assert_allclose(req["kv_transfer_end_s"] - req["kv_transfer_start_s"],
                               req["kv_bytes"] * expect / bw + 5e-6, rtol=1e-9)
    fab = s["kv_transfer"]["fabric"]
    assert fab["cross_leaf"] == 1.0
    assert fab["slowdown_mean"] == pytest.approx(float(expect.mean()), rel=1e-9)
    job = res.summary["training"]["pre"]
    peak = float(sent.max()) / (bw * 15.0)
    assert job["fabric_slowdown_max"] == pytest.approx((1.0 + peak) * 2.0, rel=1e-9)
    assert job["fabric_slowdown_max"] > 2.0
    alone = af.run(af.load(_shared_fabric(with_service=False))).summary["training"]["pre"]
    assert alone["fabric_slowdown_max"] == 2.0
    d = _shared_fabric()
    d["fidelity"] = "step"
    step = _run(d)[0].requests.dropna(subset=["kv_transfer_end_s"]).sort_values("first_token_s")
    np.testing.assert_allclose(step["kv_transfer_end_s"], req["kv_transfer_end_s"], rtol=1e-12)


def test_kv_transfers_within_a_leaf_or_on_a_full_fabric_are_not_slowed():
    """Oversubscription 1 (every leaf's up-links carry its nodes at line rate): no fabric block
    and transfers at their link's bandwidth, as without a training job."""
    d = _shared_fabric()
    d["cluster"]["fabric"]["oversubscription"] = 1.0
    res, s = _run(d)
    assert "fabric" not in s["kv_transfer"]
    req = res.requests.dropna(subset=["kv_transfer_end_s"])
    assert (req["kv_fabric_slowdown"] == 1.0).all()
