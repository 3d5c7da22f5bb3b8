"""Write docs/reference/scenario.md from the scenario's pydantic models.

    python docs/gen_reference.py          # rewrite the file
    python docs/gen_reference.py --check  # exit 1 if the file is out of date

The tables come from `aifactory_sim.spec.Scenario` and the models it nests: field names, types,
defaults and constraints from pydantic's `model_fields`, descriptions from each field's
`Field(description=...)`. Fields without a description get one from DESCRIPTIONS below,
marked with a dagger in the output, so that a missing description in the code stays visible.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from aifactory_sim import catalog
from aifactory_sim.spec import Scenario
from aifactory_sim.spec.estate import Estate
from aifactory_sim.units import parse_batch_tokens, parse_count, parse_duration_s, parse_gbit_s

OUT = Path(__file__).parent / "reference" / "scenario.md"

#: Descriptions for fields whose model gives none (keyed "Model.field"). Shown with a dagger.
DESCRIPTIONS = {
    "Scenario.name": "names the run in outputs and in the default results folder",
    "Scenario.seed": "seed of every random stream of the run",
    "Scenario.duration": "simulated horizon",
    "Scenario.cluster": "the hardware",
    "Scenario.power": "power draw and energy price: energy, peak and mean power of a run",
    "Scenario.cost": "capital and cloud prices: private and cloud cost of a run",
    "Scenario.scheduler": "queueing and placement of jobs",
    "Scenario.training": "training jobs, in any order",
    "Scenario.failures": "node failures, repairs and what restarting costs a job; none: nothing"
    " fails (see docs/background/reliability.md)",
    "Cluster.node_pools": "groups of identical nodes; the first pool is the default",
    "Cluster.fabric": "scale-out network between nodes",
    "Cluster.storage": "shared file system: data loading for jobs with data.source storage,"
    " checkpoint writes and reloads",
    "NodePool.name": "unique pool name, referred to by training[].pool",
    "NodePool.nodes": "number of nodes",
    "NodePool.gpu": "a catalog name, {base: NAME, field: value} to override one, or a full mapping",
    "NodePool.gpus_per_node": "GPUs per node, all on NVLink",
    "NodePool.nvme": "local drives; needed by jobs with data.source nvme",
    "NVMe.capacity_tb": "capacity per node, TB",
    "NVMe.read_gb_s": "read bandwidth per node, GB/s",
    "NVMe.write_gb_s": "write bandwidth per node, GB/s",
    "Fabric.kind": "topology",
    "Fabric.nodes_per_leaf": "nodes wired to one leaf switch",
    "Storage.read_gb_s": "aggregate read bandwidth, GB/s, max-min shared among data loaders"
    " and checkpoint reloads",
    "Storage.write_gb_s": "aggregate write bandwidth, GB/s, max-min shared among checkpoint"
    " writes",
    "Scheduler.placement": "pack: fewest leaf switches per job; spread: round-robin over leaves",
    "Parallel.microbatch_seqs": "sequences per microbatch",
    "DataSpec.source": "where the loader reads: shared storage, local NVMe, or nothing",
    "DataSpec.bytes_per_token": "bytes read per training token",
    "TrainingJob.name": "unique job name",
    "TrainingJob.model": "a catalog name, {base: NAME, field: value}, or an inline model",
    "TrainingJob.submit_at": "simulated time at which the job joins the queue",
    "TrainingJob.priority": "higher runs first under scheduler.policy priority and"
    " priority-backfill; with scheduler.preemption it may take lower-priority jobs' nodes",
    "TrainingJob.tokens": "tokens to train; the job finishes after ceil(tokens / batch tokens)"
    " steps",
    "TrainingJob.seq_len": "tokens per sequence",
    "TrainingJob.global_batch_seqs": "sequences per step (give this or global_batch_tokens)",
    "TrainingJob.parallel": "the parallel layout",
    "TrainingJob.recompute": "activation recomputation; auto picks the cheapest mode that fits"
    " in HBM",
    "TrainingJob.zero_stage": "ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also"
    " weights, over the dp x cp data- and context-parallel ranks",
    "TrainingJob.precision": "tensor-core precision; peak FLOP/s from the GPU's bf16_tflops or"
    " fp8_tflops",
    "TrainingJob.data": "training-data loading",
    "TrainingJob.checkpoint": "when and how the job saves its state; without this section it"
    " never checkpoints (interval none)",
    "TrainingJob.elastic": "lets the job run with fewer data-parallel replicas after a failure"
    " or a preemption; none: always its full width",
    "ElasticSpec.min_dp": "fewest data-parallel replicas the job runs with; at most"
    " parallel.dp",
    "Failures.distribution": "time to failure of a node, with the mean from the rate:"
    " `exponential` (also as a plain string) or {kind: weibull, shape: k}",
    "Failures.repair_h": "repair time of a failed node, hours: a plain number (fixed) or one of"
    " the three kinds below; software failures need none",
    "Exponential.kind": "exponential times to failure: a Poisson process while the node is up",
    "Weibull.kind": "Weibull times to failure of scale mean / Gamma(1 + 1/shape)",
    "FixedHours.kind": "every repair takes `value` hours",
    "ExponentialHours.kind": "exponential repair times of mean `mean`",
    "LognormalHours.kind": "median x exp(sigma Z), Z standard normal; the mean is median x"
    " exp(sigma^2 / 2)",
    "InferenceService.traffic": "when requests arrive: one of the five kinds below, e.g."
    " {kind: poisson, rate_rps: 5}",
    "InferenceService.prompt_tokens": "prompt length of a request: a plain number (fixed) or one"
    " of the five kinds below; may be left out for a trace with token columns",
    "InferenceService.output_tokens": "output length of a request, as prompt_tokens",
    "PoissonTraffic.kind": "constant-rate Poisson arrivals",
    "DiurnalTraffic.kind": "Poisson arrivals at a rate that follows a daily sinusoid",
    "BurstyTraffic.kind": "Poisson arrivals switching between a base and a burst rate",
    "OfflineTraffic.kind": "every request at t = 0",
    "TraceTraffic.kind": "arrivals (and token counts) replayed from a CSV file",
    "TraceTraffic.layout": "columns: azure (TIMESTAMP, ContextTokens, GeneratedTokens), plain"
    " (arrival_s, prompt_tokens, output_tokens), or auto: by the header row",
    "FixedTokens.kind": "every request the same length",
    "FixedTokens.value": "tokens",
    "UniformTokens.kind": "integers low..high, equally likely",
    "UniformTokens.low": "fewest tokens",
    "UniformTokens.high": "most tokens (at least low)",
    "LognormalTokens.kind": "long-tailed lengths around a median",
    "GeometricTokens.kind": "lengths of generations that stop with a constant probability per"
    " token",
    "EmpiricalTokens.kind": "draws from observed lengths",
    "EmpiricalTokens.values": "observed lengths, tokens",
    "HPA.kind": "Kubernetes Horizontal Pod Autoscaler",
    "KPA.kind": "Knative Pod Autoscaler",
    "GPUSpec.name": "shown in outputs; an altered catalog entry gets a trailing *",
    "GPUSpec.source": "where the figures come from",
    "ModelSpec.name": "shown in outputs; an altered catalog entry gets a trailing *",
    "ModelSpec.layers": "transformer layers",
    "ModelSpec.hidden": "hidden size (model width)",
    "ModelSpec.heads": "attention heads",
    "ModelSpec.vocab": "vocabulary size",
    "ModelSpec.ffn_kind": "gelu: two FFN matrices; swiglu: three (gated)",
    "ModelSpec.experts": "experts per layer (1: dense)",
    "ModelSpec.tie_embeddings": "input embedding shared with the output layer",
    "ModelSpec.source": "where the shape comes from",
}

ESTATE = """\
# Estate schema

A file with `sites` in place of `cluster` is an estate (shared/examples/hybrid-sovereign.yaml):
sites joined by links, datasets with a jurisdiction and a residency rule, and the work placed
on them; `docs/background/estate.md` explains the model. Its jobs and services take every field
of a one-site scenario's, and the few below.
"""

HEADER = """\
# Scenario schema

<!-- Generated by docs/gen_reference.py from aifactory_sim.spec.Scenario; do not edit by hand. -->

A scenario is one YAML or JSON mapping (or a Python dict) validated by the frozen pydantic
models in `aifactory_sim.spec`. Unknown fields are errors. Every problem is reported as one
message that names the field path, e.g. `training.0.parallel.tp: ...`.

Each table below is one section; `[]` in a path marks a list (`training[]` is the list of jobs,
addressed as `training.0`, `training.1`, ... in `--set` overrides). A section found at several
paths (a model under `training[]` and `inference[]`) is listed once with all of them.
Descriptions marked † are written in `docs/gen_reference.py` because the model gives none.

A scenario holds training jobs (`training`), inference services (`inference`) or both, on one
cluster. A service is a model served by identical replicas (vLLM-like engines with continuous
batching and a paged KV cache) behind a router: its `traffic` says when requests arrive,
`prompt_tokens` and `output_tokens` how long they are, `replicas` or an `autoscaler` (Kubernetes
HPA or Knative KPA) how many replicas serve them, and `slo` the latency it is held to. Overrides
reach into it like any section: `--set inference.0.traffic.rate_rps=20`.

## Values with units

- **duration**: a number of seconds, or a string with one of the units `ms`, `s`, `min` (or
  `m`), `h`, `d`, `w`: `"90s"`, `"30min"`, `"6h"`, `"54d"`. Stored in seconds.
- **count**: a number, or a string with a suffix `k`, `M`, `B` (or `G`), `T`: `"16M"`,
  `"1.5B"`, `2.0e12`. Stored as a float.
- **count (binary)**: `global_batch_tokens` only; written like a count, but its suffixes are
  powers of two (below).
- **rate (Gb/s)**: a number of Gb/s, or a string `"400Gb/s"` or `"50GB/s"` (bytes count x 8);
  `nic_gbit_s` also takes a network name from the catalog (`HDR`, `NDR`, `XDR`). Stored in Gb/s.

Prefixes are powers of ten (`T` is 10^12, `tokens: 16M` is 16,000,000), except in
`global_batch_tokens`, where they are binary as batch sizes are quoted in papers:
`global_batch_tokens: 16M` is 16 x 2^20 = 16,777,216 tokens, which at `seq_len: 8192` is 2,048
sequences (Llama 3's "16M-token" batch). A plain number there is taken as written: `16e6` is
16e6 / 8192 = 1,953.1 sequences, which rounds to 1,920 at `dp: 128` (whole microbatches on
every data-parallel rank).
PyYAML reads a number whose exponent has no sign
(`2e12`, `2.0e12`) as a string; count fields parse such strings, so `tokens: 2.0e12` works.
"""

RULES = """\
## Rules across fields

Checked when the scenario is loaded (`aifactory-sim validate`, `aifactory_sim.load`):

- Pool names, and training job names, are unique; `spare_nodes` is fewer than the first pool's
  nodes (spares are taken from it).
- A job gives exactly one of `global_batch_tokens` and `global_batch_seqs`. With
  `global_batch_tokens` the step holds `dp x microbatch_seqs x max(1, round(global_batch_tokens
  / seq_len / (dp x microbatch_seqs)))` sequences.
- `parallel.tp` divides the model's `heads`, and divides the node's `gpus_per_node` or the GPU's
  `nvlink_domain`; `pp x interleave` is at most the model's `layers`; `seq_len` is a multiple of
  `cp`.
- `tp x pp x dp x cp` is a whole number of nodes and at most the pool's GPUs less the spare
  nodes (first pool only). `pool`, when given, names a pool.
- The global batch is a multiple of `dp x microbatch_seqs`; an interleaved schedule
  (`interleave > 1`) needs the microbatches per rank, `global_batch_seqs / (dp x
  microbatch_seqs)`, to be a multiple of `pp`.
- The job fits in its GPU's HBM by the memory model of
  [the training model](../background/training-model.md) (with `recompute: auto`, in the
  cheapest mode that fits).
- `precision: fp8` needs a GPU with `fp8_tflops`; `data.source: storage` needs
  `cluster.storage`; `data.source: nvme` needs the pool's `nvme`.
- A GPU's `family` names an entry of `catalog/calibration.yaml`; a model's `hidden` is a
  multiple of `heads`, `heads` a multiple of `kv_heads`, and `top_k` at most `experts`.
- `failures` gives exactly one of `node_failures_per_1000_node_days` and `node_mtbf_h`;
  `components` names only `gpu`, `hbm`, `nic`, `switch`, `host` and `software`, with shares
  >= 0 and a positive sum (they are normalised; a component left out has share 0);
  `distribution: weibull` needs a shape, `{kind: weibull, shape: 0.8}`.
- `elastic.min_dp` is at most the job's `parallel.dp`; `checkpoint.interval` is `young-daly`,
  `none` or a positive duration.
- `fidelity: fluid` at the top level puts every inference service in the aggregate tier;
  training jobs, which have no fluid tier, then run `fast`.

Inference services (`inference[]`):

- Service names are unique, and no service has a training job's name. `pool`, when given,
  names a pool.
- `tp` divides the model's `heads`, and either divides the pool's `gpus_per_node` (replicas
  share a node) or is a multiple of it (a replica spans `tp / gpus_per_node` whole nodes).
- The weights fit: a replica's `tp` GPUs, at `gpu_memory_utilization` of their HBM, less the
  activation and workspace reserve that vLLM profiles for `batching.max_batched_tokens`, hold
  the weights at `precision` and at least one 16-token KV-cache block
  (`kernels.inference.kv_capacity_tokens`).
- The starting replicas fit the pool: `ceil(initial replicas x tp / gpus_per_node)` nodes at
  most the pool's nodes (less the spare nodes, first pool only). The starting count is
  `replicas`; else, with an autoscaler, `max(min_replicas, 1)` capped at `max_replicas`;
  else 1. With an autoscaler `replicas` lies within `min_replicas..max_replicas`.
- `batching.max_batched_tokens >= batching.max_num_seqs`; an `slo` gives `ttft_s`, `tpot_s` or
  both; traffic other than `trace` needs `prompt_tokens` and `output_tokens`.
- A new replica reads its weights from `cold_start.weights_from`, by default `cluster.storage`
  if there is one, else the pool's `nvme`: `storage` needs `cluster.storage`, `nvme` the pool's
  `nvme`, and a scenario with neither gives a measured `cold_start.weights_s`.
- A `trace` traffic's `path` is an existing file (relative paths start at the working
  directory).

Not checked at load: a job that checkpoints (an `interval` other than `none`, or `young-daly`
with a `failures` section) writes to `cluster.storage` unless it gives `checkpoint.write_s`;
with neither, the run stops with an internal error (exit status 1) when the job starts or
its first checkpoint is due.
"""


# --------------------------------------------------------------------------------------------

_UNIT_TYPES = {
    parse_duration_s: "duration",
    parse_count: "count",
    parse_batch_tokens: "count (binary)",
    parse_gbit_s: "rate (Gb/s)",
}


def _constraints(metadata: list[Any]) -> list[str]:
    out = []
    for m in metadata:
        if isinstance(m, at.Gt):
            out.append(f"> {m.gt}")
        elif isinstance(m, at.Ge):
            out.append(f">= {m.ge}")
        elif isinstance(m, at.Lt):
            out.append(f"< {m.lt}")
        elif isinstance(m, at.Le):
            out.append(f"<= {m.le}")
        elif isinstance(m, at.MinLen):
            out.append(
                f"at least {m.min_length} item{'s' if m.min_length > 1 else ''}"
                if m.min_length > 1
                else "not empty"
            )
        elif isinstance(m, at.MaxLen):
            out.append(f"at most {m.max_length}")
        elif isinstance(m, FieldInfo):
            out += _constraints(m.metadata)
    return out


def _unit_type(metadata: list[Any]) -> str | None:
    for m in metadata:
        func = getattr(m, "func", None)
        if func in _UNIT_TYPES:
            return _UNIT_TYPES[func]
    return None


def _section_models(tp: Any) -> list[type[BaseModel]]:
    """The BaseModel classes named anywhere inside a type (list[X], X | None, ...)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for arg in typing.get_args(tp) for m in _section_models(arg)]


def _type_name(tp: Any, metadata: list[Any], links: dict[type, str]) -> tuple[str, list[str]]:
    """A readable type and the constraints found inside it (Annotated metadata)."""
    unit = _unit_type(metadata)
    if unit:
        return unit, []
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        inner, *meta = args
        name, cons = _type_name(inner, list(meta), links)
        return name, cons + _constraints(list(meta))
    if origin is typing.Literal:
        return " \\| ".join(f"`{a!r}`".replace("'", '"') for a in args), []
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        names, cons = [], []
        several = sum(isinstance(a, type) and issubclass(a, BaseModel) for a in parts) > 1
        for a in parts:
            n, c = _type_name(a, [], links)
            if several and isinstance(a, type) and issubclass(a, BaseModel) and a in links:
                n = f"[{_kind(a) or a.__name__}](#{links[a]})"
            names.append(n)
            cons += c
        return " \\| ".join(names) + (" or none" if len(parts) < len(args) else ""), cons
    if origin is list:
        n, c = _type_name(args[0], [], links)
        return f"list of {n}", c
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"[section](#{links[tp]})" if tp in links else tp.__name__, []
    if tp is typing.Any:
        return "any", []
    return getattr(tp, "__name__", str(tp)), []


def _default(f: FieldInfo) -> str:
    if f.is_required():
        return "**required**"
    if f.default_factory is not None:
        val = f.default_factory()  # type: ignore[call-arg]
        return "`[]`" if val == [] else f"`{val!r}`"
    d = f.default
    if d is None:
        return "none"
    if isinstance(d, BaseModel):
        # a default instance that sets fields is shown, so that it is not mistaken for the
        # section's own defaults (a job without `checkpoint` has interval none, not young-daly)
        set_ = d.model_dump(mode="json", exclude_defaults=True)
        kind = _kind(type(d))
        if kind is not None:
            set_ = {"kind": kind, **set_}
        if not set_:
            return "section defaults"
        return "`{" + ", ".join(f"{k}: {v:g}" if isinstance(v, float) else f"{k}: {v}"
                                for k, v in set_.items()) + "}`"
    if isinstance(d, bool):
        return f"`{str(d).lower()}`"
    if isinstance(d, str):
        return f'`"{d}"`'
    if isinstance(d, float) and d.is_integer():
        return f"`{d:g}`" if abs(d) < 1e6 else f"`{d:.3g}`"
    return f"`{d!r}`"


def _walk(model: type[BaseModel], path: str, out: dict[type[BaseModel], list[str]]) -> None:
    """Every model under `model` with the paths it is found at, in order of first appearance; a
    model at several paths (ModelSpec under training and inference) is one section."""
    seen = model in out
    out.setdefault(model, []).append(path)
    if seen:
        return
    for name, f in model.model_fields.items():
        for sub in _section_models(f.annotation):
            is_list = typing.get_origin(f.annotation) is list
            _walk(sub, f"{path}.{name}{'[]' if is_list else ''}".lstrip("."), out)


def _summary(model: type[BaseModel]) -> str:
    """The docstring's first paragraph on one line; when it ends with a colon, the paragraph
    after it too, as a code block (an equation)."""
    paras = inspect.cleandoc(model.__doc__ or "").split("\n\n")
    first = " ".join(paras[0].split())
    if first.endswith(":") and len(paras) > 1:
        return first + "\n\n```\n" + inspect.cleandoc(paras[1]) + "\n```"
    return first


def _anchor(path: str) -> str:
    return path.replace(".", "").replace("[]", "").lower() or "scenario"


def _kind(model: type[BaseModel]) -> str | None:
    """The value of a variant's `kind` discriminator, if it has one."""
    f = model.model_fields.get("kind")
    return f.default if f is not None and isinstance(f.default, str) else None


def _links(found: dict[type[BaseModel], list[str]]) -> dict[type[BaseModel], str]:
    firsts = [paths[0] for paths in found.values()]
    shared = {p for p in firsts if firsts.count(p) > 1}  # one path, several variants
    return {model: _anchor(paths[0]) + (f"-{_kind(model) or model.__name__.lower()}"
                                        if paths[0] in shared else "")
            for model, paths in found.items()}


def _tables(found: dict[type[BaseModel], list[str]], links: dict[type[BaseModel], str],
            used: set[str], skip: dict[type[BaseModel], str] | None = None) -> list[str]:
    """One table per model found, but those in `skip` (documented above); a model extending
    one documented above lists only the fields it adds."""
    skip = skip or {}
    parts = []
    for model, paths in found.items():
        if model in skip:
            continue
        title = ", ".join(f"`{p or '(top level)'}`" for p in dict.fromkeys(paths))
        doc = _summary(model)
        parts.append(f'<a id="{links[model]}"></a>\n\n## {title} ({model.__name__})\n')
        if doc and not doc.startswith("!!!"):
            parts.append(doc + "\n")
        base = next((b for b in model.__mro__[1:] if b in skip), None)
        fields = model.model_fields
        if base is not None:
            parts.append(f"Every field of [{base.__name__}](#{skip[base]}), and:\n")
            fields = {k: v for k, v in fields.items()
                      if k not in base.model_fields or v.annotation != base.model_fields[k].annotation}
        parts.append("| field | type | default | constraints | description |")
        parts.append("|---|---|---|---|---|")
        for name, f in fields.items():
            tname, inner = _type_name(f.annotation, f.metadata, links)
            cons = _constraints(f.metadata) + inner
            key = f"{model.__name__}.{name}"
            if f.description:
                desc = f.description
            elif key in DESCRIPTIONS:
                desc = DESCRIPTIONS[key] + " †"
                used.add(key)
            else:
                desc = ""
            row = [
                f"`{name}`",
                tname,
                _default(f),
                ", ".join(dict.fromkeys(cons)),
                desc.replace("|", "\\|"),
            ]
            parts.append("| " + " | ".join(row) + " |")
        parts.append("")
    return parts


def build() -> str:
    found: dict[type[BaseModel], list[str]] = {}
    _walk(Scenario, "", found)
    links = _links(found)
    used: set[str] = set()
    parts = [HEADER, *_tables(found, links, used)]
    estate: dict[type[BaseModel], list[str]] = {}
    _walk(Estate, "", estate)
    elinks = {**{m: "estate-" + a for m, a in _links(estate).items()}, **links}
    parts.append(ESTATE)
    parts += _tables(estate, elinks, used, skip=links)
    stale = sorted(set(DESCRIPTIONS) - used)
    if stale:
        print(
            "gen_reference: descriptions for fields that now describe themselves or no longer"
            f" exist (remove them): {', '.join(stale)}",
            file=sys.stderr,
        )
    parts.append(RULES)
    parts.append(_catalog())
    return "\n".join(parts).rstrip() + "\n"


def _catalog() -> str:
    lines = [
        "## Catalog names",
        "",
        "`aifactory-sim catalog` prints every entry with its source. Names match",
        "case-insensitively.",
        "",
    ]
    gpus = catalog.table("gpu")
    lines.append("- GPUs: " + ", ".join(f"`{n}` ({e['family']})" for n, e in gpus.items()))
    lines.append(
        "- Networks (for `nic_gbit_s`): "
        + ", ".join(f"`{n}` ({e['gbit_s']} Gb/s)" for n, e in catalog.table("network").items())
    )
    lines.append("- Models: " + ", ".join(f"`{n}`" for n in catalog.names("model")))
    lines.append(
        "- Calibration families: " + ", ".join(f"`{n}`" for n in catalog.names("calibration"))
    )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = ap.parse_args()
    text = build()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date; run python docs/gen_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
