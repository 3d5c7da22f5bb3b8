"""An inference service: a model served by replicas of vLLM-like engines, its traffic, router,
autoscaler, SLO and cold start, as an `inference` entry of shared/examples/factory.yaml spells it.

The workload (traffic, token lengths) comes from serving.py and the autoscaler from
autoscaling.py. Checks that need the rest of the scenario (the pool, storage, other names, the
weights against the GPU's memory) are in Scenario's validator.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator

from .autoscaling import Autoscaler
from .base import NonNegativeDurationS, Spec
from .hardware import ModelSpec, from_catalog
from .serving import Workload

# --- fidelity -------------------------------------------------------------------------------


#: The fidelity tiers of DESIGN.md: `step` (one event per iteration), `fast` (exact skipping),
#: `fluid` (aggregate flows, engine/fluid.py).
Fidelity = Literal["step", "fast", "fluid"]


# --- parts of a service ---------------------------------------------------------------------


class Batching(Spec):
    """Continuous batching, as vLLM's engine arguments set it."""

    max_num_seqs: int = Field(
        256, ge=1, description="most sequences in one iteration (vLLM max_num_seqs)"
    )
    max_batched_tokens: int = Field(
        8192,
        ge=1,
        description="most tokens in one iteration, prefill and decode together (vLLM "
        "max_num_batched_tokens)",
    )
    chunked_prefill: bool = Field(
        True,
        description="split long prompts over iterations, mixed with decodes (vLLM "
        "enable_chunked_prefill); false: a prompt is prefilled in one iteration",
    )

    @model_validator(mode="after")
    def _a_token_per_seat(self) -> Batching:
        if self.max_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_batched_tokens={self.max_batched_tokens} is below max_num_seqs="
                f"{self.max_num_seqs}: a full batch of decodes needs one token each (vLLM "
                f"refuses it too); allowed: max_batched_tokens >= {self.max_num_seqs}"
            )
        return self


class SLO(Spec):
    """Latency objectives of a service, at one percentile of its requests."""

    ttft_s: float | None = Field(
        None, gt=0, description="time to first token: arrival to the first output token"
    )
    tpot_s: float | None = Field(
        None,
        gt=0,
        description="time per output token after the first: (last token - first token) / "
        "(output tokens - 1)",
    )
    percentile: float = Field(
        99.0, gt=0, le=100, description="the percentile of requests the objectives hold at"
    )

    @model_validator(mode="after")
    def _one_objective(self) -> SLO:
        if self.ttft_s is None and self.tpot_s is None:
            raise ValueError("an SLO needs ttft_s, tpot_s or both")
        return self


class ColdStart(Spec):
    """What a new replica takes before it serves: its container, then its weights."""

    container_s: NonNegativeDurationS = Field(
        30.0,
        description="container and engine start with the image already on the node: CUDA "
        "context, profiling, CUDA-graph capture; weights not included. The 30 s default is an "
        "assumption, not a published figure: measure yours (vLLM's `vllm bench startup`)",
    )
    weights_from: Literal["storage", "nvme"] | None = Field(
        None,
        description="where the weights are read from, at that source's read bandwidth; none: "
        "cluster.storage if the scenario has one, else the pool's nvme",
    )
    weights_s: NonNegativeDurationS | None = Field(
        None, description="measured weight-loading time; overrides the bandwidth model"
    )

    def source(self, has_storage: bool, has_nvme: bool) -> Literal["storage", "nvme"] | None:
        """Where the weights come from in a cluster with (or without) storage and nvme; None
        when neither is there."""
        if self.weights_from is not None:
            return self.weights_from
        if has_storage:
            return "storage"
        return "nvme" if has_nvme else None


# --- the service ----------------------------------------------------------------------------


class PrefixCache(Spec):
    """Automatic prefix caching (vLLM's, on by default since its V1 engine; TensorRT-LLM's KV
    block reuse): the KV blocks of a prompt's shared prefix stay cached on the replica after
    its request leaves and a later request with the same prefix skips their prefill."""

    enabled: bool = Field(True, description="cache shared prefixes' KV blocks (vLLM V1 default)")


class Speculative(Spec):
    """Speculative decoding: a drafter proposes `draft_tokens` tokens per sequence, the model
    verifies them in one forward pass and keeps the longest accepted run plus one token of its
    own (Leviathan et al., ICML'23; DeepSeek-V3's multi-token prediction, arXiv 2412.19437 Sec.
    5.4.3). Modelled in expectation (kernels.inference.speculative_tokens_per_step)."""

    method: Literal["mtp", "draft"] = Field(
        description="mtp: the model's own multi-token-prediction module(s) (a model with "
        "mtp_modules >= 1); draft: a separate, smaller draft model (draft_model)"
    )
    draft_tokens: int = Field(
        ge=1, le=16, description="tokens drafted per sequence and verify step (k)"
    )
    acceptance: float | list[float] = Field(
        description="the chance a drafted token is accepted given the ones before it were: one "
        "rate for every position, or one per position (draft_tokens of them), each in (0, 1]"
    )
    draft_model: ModelSpec | None = Field(
        None,
        description="method draft: the draft model (a catalog name or an inline model) sharing "
        "the model's vocabulary; it runs on the replica's GPUs with the model's tp",
    )

    @field_validator("draft_model", mode="before")
    @classmethod
    def _draft_from_catalog(cls, value: Any) -> Any:
        return None if value is None else from_catalog("model", value)

    @model_validator(mode="after")
    def _check(self) -> Speculative:
        rates = self.acceptance if isinstance(self.acceptance, list) else [self.acceptance]
        if isinstance(self.acceptance, list) and len(rates) != self.draft_tokens:
            raise ValueError(
                f"acceptance lists {len(rates)} rates for draft_tokens={self.draft_tokens}; "
                "allowed: one rate, or one per drafted position"
            )
        bad = [a for a in rates if not 0.0 < a <= 1.0]
        if bad:
            raise ValueError(f"acceptance {bad[0]} is not a rate; allowed: 0 < acceptance <= 1")
        if self.method == "draft" and self.draft_model is None:
            raise ValueError("method draft needs draft_model (a catalog model name)")
        if self.method == "mtp" and self.draft_model is not None:
            raise ValueError("draft_model is for method draft; mtp drafts with the model itself")
        return self

    @property
    def rates(self) -> list[float]:
        """The acceptance rate of each drafted position."""
        a = self.acceptance
        return list(a) if isinstance(a, list) else [a] * self.draft_tokens


class PoolLayout(Spec):
    """One side of a disaggregated service: its replicas' layout and count."""

    tp: int = Field(1, ge=1, description="tensor-parallel GPUs per data-parallel rank")
    ep: int = Field(1, ge=1, description="expert-parallel groups (see the service's ep)")
    dp_attention: int = Field(
        1, ge=1, description="data-parallel attention ranks (see the service's dp_attention)"
    )
    replicas: int | None = Field(
        None, ge=0, description="replicas at the start; default 1 (or the planner's minimum)"
    )
    batching: Batching | None = Field(None, description="this side's limits; default the service's")


class KVTransfer(Spec):
    """How a request's KV cache moves from its prefill replica to its decode replica."""

    link: Literal["fabric", "nvlink"] = Field(
        "fabric",
        description="fabric: RDMA over the prefill replica's scale-out NICs (the pool's "
        "nic_gbit_s per GPU); nvlink: within one NVLink domain (both replicas in it) at the "
        "GPUs' NVLink bandwidth",
    )
    latency_us: float | None = Field(
        None,
        ge=0,
        description="fixed time of a transfer beyond its bytes; default: the fabric's latency_us "
        "(fabric) or the GPU's NVLink alpha (nvlink)",
    )


class Disaggregation(Spec):
    """Prefill and decode on separate replicas of one model (Splitwise, DistServe; DeepSeek's,
    Dynamo's and llm-d's deployments): a request prefills on a prefill replica, its KV cache
    moves to a decode replica (`kv_transfer`), and it decodes there."""

    prefill: PoolLayout = Field(description="the prefill replicas")
    decode: PoolLayout = Field(description="the decode replicas")
    kv_transfer: KVTransfer = Field(KVTransfer(), description="the KV cache's move")
    decode_router: Literal["least-loaded", "kv-aware"] = Field(
        "least-loaded",
        description="how a prefilled request's decode replica is picked among the ready ones "
        "with a free seat: least-loaded (fewest requests on it or on their way to it); kv-aware "
        "(the most KV blocks left after the prompts of the requests on it or on their way, "
        "as NVIDIA Dynamo's KV router and llm-d's KV-utilisation scorer weigh decode workers)",
    )


class InferenceService(Workload):
    """A model served by identical replicas behind one router."""

    name: str = Field(min_length=1, description="unique among services and training jobs")
    model: ModelSpec = Field(
        description="a catalog name, {base: NAME, field: value}, or an inline model"
    )
    pool: str | None = Field(None, description="node pool the replicas run on; default: the first")
    precision: Literal["bf16", "fp8", "int4", "fp4"] = Field(
        "bf16",
        description="weights: bf16; fp8 (W8A8 on FP8 tensor cores, W8A16 without); int4 (AWQ/GPTQ"
        " groups of 128, W4A16); fp4 (NVFP4, W4A4 on FP4 tensor cores, W4A16 without)",
    )
    kv_cache_dtype: Literal["bf16", "fp8", "fp4"] = Field(
        "bf16",
        # the older name is accepted as written, so that its errors name it
        validation_alias=AliasChoices("kv_cache_dtype", "kv_precision"),
        description="KV-cache elements (vLLM kv_cache_dtype); fp4 (NVFP4) needs a GPU with FP4 "
        "tensor cores. `kv_precision` is the older name of the same field",
    )
    ep: int = Field(
        1,
        ge=1,
        description="expert-parallel groups of a MoE model's routed experts: a divisor of the "
        "experts and of the replica's gpus_per_replica; 1: experts sharded like the rest",
    )
    dp_attention: int = Field(
        1,
        ge=1,
        description="data-parallel attention ranks per replica, each of tp GPUs with its own "
        "sequences, KV cache and a copy of the non-expert weights (SGLang --enable-dp-attention);"
        " a replica has tp x dp_attention GPUs",
    )
    allreduce: Literal["ring", "nvls", "auto"] = Field(
        "ring",
        description="the tensor-parallel all-reduce: ring; nvls (NVLink SHARP, in-switch "
        "reduction; a GPU with nvls: true); auto: the faster of the two for each message "
        "(NCCL with NVLS enabled). ring is what the TensorRT-LLM rows the serving constants "
        "were checked on fit best (docs/background/serving.md, NVLS)",
    )
    tp: int = Field(
        1,
        ge=1,
        description="tensor-parallel GPUs per replica: a divisor of gpus_per_node (replicas "
        "share a node) or a multiple of it (a replica spans whole nodes)",
    )
    queue: str | None = Field(
        None, description="the scheduler queue (scheduler.queues) its GPUs are charged to"
    )
    priority: int = Field(
        0,
        description="as a training job's: higher gets nodes first under scheduler.policy "
        "priority and priority-backfill; with scheduler.preemption it may take lower-priority "
        "jobs' nodes",
    )
    fidelity: Fidelity | None = Field(
        None,
        description="step, fast or fluid for this service; none: the scenario's fidelity",
    )
    start_at: NonNegativeDurationS = Field(
        0.0, description="when the service is deployed; requests start arriving then"
    )
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="share of each GPU's HBM the engine may use: weights, activations and KV "
        "cache (vLLM gpu_memory_utilization)",
    )
    batching: Batching = Field(Batching(), description="continuous-batching limits")
    router: Literal["least-outstanding", "round-robin", "random", "prefix-aware"] = Field(
        "least-outstanding",
        description="how a request picks a ready replica: fewest requests in flight, in turn, "
        "at random, or prefix-aware (the replica that served its conversation or system prompt "
        "while the load stays balanced, else the fewest in flight; SGLang's cache-aware router)",
    )
    replicas: int | None = Field(
        None,
        ge=0,
        description="a fixed count; with an autoscaler, the count at start_at (within its "
        "min_replicas..max_replicas). Default: 1, or max(min_replicas, 1) with an autoscaler",
    )
    autoscaler: Autoscaler | None = Field(
        None, description="hpa or kpa; none: `replicas` replicas throughout"
    )
    slo: SLO | None = Field(
        None, description="latency objectives to report attainment against; none: no SLO"
    )
    cold_start: ColdStart = Field(ColdStart(), description="what a new replica takes to start")
    network_rtt_s: NonNegativeDurationS = Field(
        0.0,
        description="round trip between the users and the replicas (a remote site's link, "
        "say): added to every request's TTFT and end-to-end latency as the users see them",
    )
    prefix_cache: PrefixCache = Field(
        PrefixCache(),
        description="automatic prefix caching of shared prefixes (system_prompts); on by default",
    )

    speculative: Speculative | None = Field(
        None, description="speculative decoding (mtp or a draft model); none: plain decoding"
    )
    disaggregation: Disaggregation | None = Field(
        None,
        description="prefill and decode on separate replicas, each side its own layout and "
        "count; the service's tp, ep, dp_attention and replicas then do not apply",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_from_catalog(cls, value: Any) -> Any:
        return from_catalog("model", value)

    @model_validator(mode="before")
    @classmethod
    def _kv_precision_alias(cls, data: Any) -> Any:
        """`kv_precision` (older name) and `kv_cache_dtype` name one field: both given must
        agree (the field's alias choices take either alone)."""
        if isinstance(data, dict) and "kv_precision" in data and "kv_cache_dtype" in data:
            old, new = data["kv_precision"], data["kv_cache_dtype"]
            if new != old:
                raise ValueError(
                    f"kv_precision={old!r} and kv_cache_dtype={new!r} name the same field and "
                    "disagree; allowed: give one of them"
                )
            data = {k: v for k, v in data.items() if k != "kv_precision"}
        return data

    @property
    def kv_precision(self) -> str:
        """The KV-cache element type (kv_cache_dtype; the older name)."""
        return self.kv_cache_dtype

    @property
    def gpus_per_replica(self) -> int:
        """GPUs one replica occupies: tp x dp_attention."""
        return self.tp * self.dp_attention

    @model_validator(mode="after")
    def _check(self) -> InferenceService:
        if self.model.heads % self.tp:
            raise ValueError(
                f"tp={self.tp} must divide the model's heads={self.model.heads} (each tensor "
                "rank takes whole heads)"
            )
        n = self.gpus_per_replica
        if self.ep > 1 and not self.model.is_moe:
            raise ValueError(
                f"ep={self.ep} needs a mixture-of-experts model; {self.model.name} has one FFN "
                "per layer; allowed: ep 1"
            )
        if self.ep > 1 and (n % self.ep or self.ep > self.model.experts * 2):
            allowed = [e for e in range(1, n + 1) if n % e == 0 and e <= self.model.experts * 2]
            raise ValueError(
                f"ep={self.ep} must divide the replica's tp x dp_attention = {n} GPUs (each "
                f"group holds ceil(experts / ep) experts of the model's {self.model.experts}, "
                f"the spare slots redundant copies); allowed: {', '.join(map(str, allowed))}"
            )
        sp = self.speculative
        if sp is not None and sp.method == "mtp" and self.model.mtp_modules < 1:
            raise ValueError(
                f"speculative.method mtp needs a model with multi-token-prediction modules; "
                f"{self.model.name} has mtp_modules 0; allowed: method draft with a draft_model"
            )
        if sp is not None and sp.draft_model is not None:
            d = sp.draft_model
            if d.vocab != self.model.vocab:
                raise ValueError(
                    f"speculative.draft_model {d.name} has vocab {d.vocab}, {self.model.name} "
                    f"{self.model.vocab}: a draft model must share the model's tokenizer"
                )
            if d.heads % self.tp:
                raise ValueError(
                    f"speculative.draft_model {d.name}: tp={self.tp} must divide its heads="
                    f"{d.heads} (it runs with the model's tensor parallelism)"
                )
        if self.disaggregation is not None:
            for which in ("prefill", "decode"):
                try:
                    self.side(which)
                except ValidationError as exc:
                    err = exc.errors()[0]
                    at = ".".join(str(p) for p in err["loc"])
                    msg = str(err["msg"]).removeprefix("Value error, ")
                    raise ValueError(
                        f"disaggregation.{which}{'.' + at if at else ''}: {msg}"
                    ) from None
        if self.autoscaler is not None and self.autoscaler.kind == "planner":
            slo = self.slo
            if slo is None or (slo.ttft_s is None and slo.tpot_s is None):
                raise ValueError(
                    "autoscaler planner sizes replicas against the service's SLO; allowed: "
                    "give slo with ttft_s and/or tpot_s, or an hpa/kpa autoscaler"
                )
        a = self.autoscaler
        if (
            a is not None
            and self.replicas is not None
            and not (a.min_replicas <= self.replicas <= a.max_replicas)
        ):
            raise ValueError(
                f"replicas={self.replicas} is the autoscaler's starting count and must lie "
                f"within min_replicas..max_replicas; allowed: {a.min_replicas}..{a.max_replicas}"
            )
        return self

    def side(self, which: str) -> InferenceService:
        """A disaggregated service's prefill or decode replicas as a service of their own
        (`name/prefill`, `name/decode`): its layout, count and batching from the side, the rest
        from the service. Validated like any service (a layout that does not fit fails here,
        named)."""
        d = self.disaggregation
        assert d is not None
        layout = d.prefill if which == "prefill" else d.decode
        data = self.model_dump(exclude={"disaggregation", "replicas"}, exclude_none=True)
        data["model"] = self.model.model_dump(exclude_none=True)
        if self.speculative is not None and self.speculative.draft_model is not None:
            data["speculative"]["draft_model"] = self.speculative.draft_model.model_dump(
                exclude_none=True
            )
        data.update(
            name=f"{self.name}/{which}",
            tp=layout.tp,
            ep=layout.ep,
            dp_attention=layout.dp_attention,
        )
        if layout.replicas is not None:
            data["replicas"] = layout.replicas
        if layout.batching is not None:
            data["batching"] = layout.batching.model_dump()
        if which == "prefill":  # a prefill replica does not decode: no drafter
            data.pop("speculative", None)
        return InferenceService.model_validate(data)

    def drafter_bytes(self) -> tuple[float, float]:
        """The speculative drafter's weights and KV bytes per token on a replica
        (kernels.inference.drafter_bytes); (0, 0) without speculative decoding."""
        sp = self.speculative
        if sp is None:
            return 0.0, 0.0
        from ..kernels.inference import drafter_bytes  # kernels are pure; imported lazily

        w, kv = drafter_bytes(
            self.model.kernel_args(),
            None if sp.draft_model is None else sp.draft_model.kernel_args(),
            mtp_modules=self.model.mtp_modules,
            precision=self.precision,
            kv_precision=self.kv_precision,
            tp=self.tp,
            dp_attention=self.dp_attention,
        )
        return float(w), float(kv)

    @property
    def most_replicas(self) -> int:
        """The largest fleet it may run: `replicas`, the autoscaler's max_replicas, else 1."""
        if self.replicas is not None:
            return self.replicas
        if self.autoscaler is not None:
            return self.autoscaler.max_replicas
        return 1

    @property
    def initial_replicas(self) -> int:
        """Replicas at start_at: `replicas` if given; else max(min_replicas, 1), at most
        max_replicas, with an autoscaler (one replica to serve the first requests); else 1."""
        if self.replicas is not None:
            return self.replicas
        if self.autoscaler is not None:
            return min(max(self.autoscaler.min_replicas, 1), self.autoscaler.max_replicas)
        return 1

    def nodes_for(self, replicas: int, gpus_per_node: int) -> int:
        """Whole nodes `replicas` replicas occupy: gpus_per_node / n of them share a node, or
        each spans n / gpus_per_node nodes (n = gpus_per_replica)."""
        return -(-replicas * self.gpus_per_replica // gpus_per_node)
