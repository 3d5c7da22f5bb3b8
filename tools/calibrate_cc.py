"""Confidential computing's host time per serving iteration, from one published figure.

    python tools/calibrate_cc.py

Zhu et al., "Confidential Computing on NVIDIA Hopper GPUs: A Performance Benchmark Study"
(arXiv 2409.03992, Table 1; vLLM 0.5.4 on an H100 NVL, AMD SEV-SNP host): Llama 3.1 8B, BF16,
batch 1 lost 6.85 % of its output tokens per second in CC mode. The overhead is the encrypted
bounce-buffer copies between host and GPU, a fixed cost per iteration (the paper: TTFT suffers
more than ITL, "the bottleneck is likely introduced by the I/O"). So, with t our batch-1 decode
iteration, CC adds d = t x 0.0685 / (1 - 0.0685) to every iteration (engine/estate.py
CC_ITERATION_S). Held out, predicted from d alone: the same table's 70B (4-bit) row (about 0 %)
and its dynamic-batch 8B row (3.22 %, a batch of tens of sequences).
"""

from __future__ import annotations

import aifactory_sim as af
from aifactory_sim.engine.estate import CC_ITERATION_S
from aifactory_sim.engine.fleet import replica_sizing

#: H100 NVL, NVIDIA H100 NVL product brief (2023): 94 GB HBM3 at 3.9 TB/s, 835 TFLOP/s BF16 dense
H100_NVL = {"base": "H100-SXM", "hbm_gb": 94, "hbm_tb_s": 3.9, "bf16_tflops": 835.0,
            "fp8_tflops": 1670.0, "name": "H100-NVL"}
#: ShareGPT's mean prompt and answer (the paper's prompts), tokens: the context a decode reads
CONTEXT = 500
LOSS_8B_BATCH1 = 0.0685  # Table 1, H100, TPS
HELD_OUT = {  # (model, precision, sequences in the batch): the published loss
    ("llama3-70b", "int4", 1): 0.0,   # Table 1, H100, 70B 4-bit: "about 0"
    ("llama3-8b", "bf16", 32): 0.0322,  # Table 1, H100, QPS at a dynamic batch
}


def decode_s(model: str, precision: str, batch: int, extra: float = 0.0) -> float:
    sc = af.load({
        "duration": "1h",
        "cluster": {"node_pools": [{"name": "p", "nodes": 1, "gpu": H100_NVL, "gpus_per_node": 1}]},
        "inference": [{"name": "s", "model": model, "precision": precision, "replicas": 1,
                       "traffic": {"kind": "poisson", "rate_rps": 1},
                       "prompt_tokens": {"kind": "fixed", "value": 200},
                       "output_tokens": {"kind": "fixed", "value": 300},
                       "cold_start": {"weights_s": 60}}],
    })
    sizing = replica_sizing(sc.inference[0], sc.cluster.node_pools[0], 1.0, extra)
    t = sizing.table
    return float(t.decode_base[batch] + t.decode_per_context * CONTEXT * batch)


def main() -> int:
    t = decode_s("llama3-8b", "bf16", 1)
    d = t * LOSS_8B_BATCH1 / (1 - LOSS_8B_BATCH1)
    print(f"8B BF16 batch-1 decode iteration {t * 1e3:.2f} ms -> CC adds {d * 1e6:.0f} us"
          f" (CC_ITERATION_S = {CC_ITERATION_S * 1e6:.0f} us)")
    for (model, prec, batch), published in HELD_OUT.items():
        base = decode_s(model, prec, batch)
        loss = CC_ITERATION_S / (base + CC_ITERATION_S)
        print(f"held out {model} {prec} batch {batch}: iteration {base * 1e3:.2f} ms, predicted"
              f" loss {loss:.2%}, published {published:.2%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
