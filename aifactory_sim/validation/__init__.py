"""Validation workloads and reference data that the tests, the tools and the docs share.

- `fluid`: the fixed workloads on which the `fluid` serving tier is held to `fast` (issue 5's
  table): the scenarios, the metrics compared, their tolerances, and the reproducible part of
  the table that docs/gen_fluid.py writes.
- `trtllm`: the TensorRT-LLM published throughput rows (Llama 3.1 8B FP8 on one H100-SXM) that
  the Hopper inference constants are fitted on and that the serving tests run.

Pure data and scenario builders: nothing here reads or writes a file or plots. Import the
submodules (`from aifactory_sim.validation import fluid`); this `__init__` imports nothing.
"""
