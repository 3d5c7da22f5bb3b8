"""The TensorRT-LLM perf overview's rows for Llama 3.1 8B FP8 on one H100-SXM.

Source: shared/reference/README.md (TensorRT-LLM perf overview, max-throughput runs; the model
is the catalog's llama3-8b). tools/calibrate_inference.py fits the Hopper family's inference
constants on them (catalog/calibration.yaml, `hopper`); tests/test_serving.py runs them through
the engine.
"""

from __future__ import annotations

#: (ISL, OSL, published output tokens/s, max_batch_size, max_num_tokens). The last two are what
#: trtllm-bench picks by default for each row (tensorrt_llm/bench/build/tuning.py,
#: calc_engine_setting: KV-cache requests at ISL + OSL, capped at 4096 and rounded up; tokens
#: = that x (1 + ISL/OSL), at least 2048, rounded up) on an 80 GB H100 with FP8 weights and KV.
ROWS: list[tuple[int, int, int, int, int]] = [
    (128, 128, 28_312, 4096, 8192),
    (128, 2048, 22_714, 640, 2048),
    (1000, 1000, 15_220, 640, 2048),
    (2048, 2048, 9_305, 384, 2048),
    (5000, 500, 3_459, 224, 2304),
]

__all__ = ["ROWS"]
