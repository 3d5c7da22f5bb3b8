"""Trace replay with prefix identity: a Mooncake-style trace's block hashes (JSON lines, or a CSV
column) drive the replicas' prefix caches; fast against step, the fluid tier against fast."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import aifactory_sim as af
from aifactory_sim.kernels.caching import zipf

BLOCK = 512


def _write_trace(path: Path, n: int, rate: float, docs: int, seed: int) -> None:
    """n requests, Poisson at `rate`: each reads one of `docs` documents of 4 hash blocks
    (Zipf 0.8) and adds a block of its own and 1-300 tokens; 50 tokens out."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, n)) * 1000.0
    doc = rng.choice(docs, size=n, p=zipf(docs, 0.8))
    with path.open("w") as f:
        for i in range(n):
            ids = [int(doc[i]) * 10 + j for j in range(4)] + [10**6 + i]
            row = {"timestamp": int(t[i]), "input_length": 5 * BLOCK + int(rng.integers(1, 300)),
                   "output_length": 50, "hash_ids": ids}
            f.write(json.dumps(row) + "\n")


def _scenario(path: Path, *, replicas: int = 1, util: float = 0.9, tier: str = "fast",
              duration: str = "5m") -> dict[str, Any]:
    return {
        "name": "trace-prefixes", "seed": 1, "duration": duration, "fidelity": tier,
        "cluster": {"node_pools": [{"name": "h100", "nodes": 1, "gpu": "H100-SXM"}]},
        "inference": [{
            "name": "chat", "model": "llama3-8b", "precision": "fp8", "replicas": replicas,
            "gpu_memory_utilization": util, "cold_start": {"container_s": 0, "weights_s": 0},
            "traffic": {"kind": "trace", "path": str(path)},
        }],
    }


def test_a_trace_reads_its_block_hashes(tmp_path):
    """JSON lines in Mooncake's layout (times in ms) and a CSV column of ids read alike."""
    jl = tmp_path / "t.jsonl"
    _write_trace(jl, 20, 5.0, 3, seed=2)
    sc = af.load(_scenario(jl))
    reqs = sc.inference[0].traffic.requests()
    rows = [json.loads(line) for line in jl.read_text().splitlines()]
    assert reqs.hash_ids == [r["hash_ids"] for r in rows]
    np.testing.assert_allclose(reqs.arrival_s, [(r["timestamp"] - rows[0]["timestamp"]) / 1000
                                                for r in rows])
    csv = tmp_path / "t.csv"
    csv.write_text("arrival_s,prompt_tokens,output_tokens,hash_ids\n"
                   "0,600,5,\"1 2\"\n1,1100,5,\"[1, 2, 3]\"\n")
    reqs = af.load(_scenario(csv)).inference[0].traffic.requests()
    assert reqs.hash_ids == [[1, 2], [1, 2, 3]]
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,prompt_tokens,output_tokens,hash_ids\n0,600,5,x1\n")
    with pytest.raises(af.ScenarioError) as err:
        af.load(_scenario(bad))
    assert "traffic.path" in str(err.value) and "hash_ids" in str(err.value)


def test_requests_sharing_a_document_skip_its_blocks(tmp_path):
    """One replica with room to spare: a request whose document another request has read
    before skips its 4 hash blocks (2,048 tokens) and no more (its own block is its own); each
    document misses about once (twice if two readers overlap)."""
    path = tmp_path / "t.jsonl"
    _write_trace(path, 1500, 5.0, 30, seed=3)
    res = af.run(af.load(_scenario(path)))
    req = res.requests[np.isfinite(res.requests["admitted_s"])]
    cached = req["cached_tokens"].to_numpy()
    assert set(np.unique(cached)) <= {0, 4 * BLOCK}
    misses = int((cached == 0).sum())
    assert 20 <= misses <= 30 + 10
    pc = res.summary["inference"]["chat"]["prefix_cache"]
    assert pc["enabled"] and pc["requests_hit"] == len(req) - misses


def test_fast_equals_step_with_trace_prefixes_under_pressure(tmp_path):
    """A KV cache that evicts hash blocks and preempts: the same timestamps and cached tokens
    in both tiers."""
    path = tmp_path / "t.jsonl"
    _write_trace(path, 1200, 12.0, 200, seed=4)
    out = {}
    for tier in ("fast", "step"):
        out[tier] = af.run(af.load(_scenario(path, util=0.2, tier=tier, duration="100s")))
    f, s = out["fast"].requests, out["step"].requests
    cols = ["admitted_s", "first_token_s", "finish_s"]
    np.testing.assert_allclose(f[cols].to_numpy(), s[cols].to_numpy(), rtol=1e-9, atol=1e-9)
    assert f["cached_tokens"].equals(s["cached_tokens"])
    summary = out["fast"].summary["inference"]["chat"]
    assert summary["prefix_cache"]["evictions"] > 0
    assert 0 < summary["prefix_cache"]["hit_rate_tokens"] < 0.8


@pytest.mark.parametrize(("docs", "util", "tol"), [(30, 0.9, 0.03), (600, 0.2, 0.08)])
def test_fluid_tier_models_trace_prefixes(tmp_path, docs, util, tol):
    """The fluid tier's hit rate (Che's approximation over the hash blocks, a row's leading run
    of hits) against the fast tier's counted one: within 0.03 with room to spare (the cold
    misses are the difference) and 0.08 with the KV cache evicting; TTFT medians within 25 %."""
    path = tmp_path / "t.jsonl"
    _write_trace(path, 3000, 10.0, docs, seed=5)
    out = {}
    for tier in ("fast", "fluid"):
        d = _scenario(path, replicas=2, util=util, tier=tier)
        out[tier] = af.run(af.load(d)).summary["inference"]["chat"]
    fast, fluid = out["fast"], out["fluid"]
    assert fluid["prefix_cache"]["hit_rate_tokens"] == pytest.approx(
        fast["prefix_cache"]["hit_rate_tokens"], abs=tol)
    assert fluid["ttft_s"]["p50"] == pytest.approx(fast["ttft_s"]["p50"], rel=0.25)
