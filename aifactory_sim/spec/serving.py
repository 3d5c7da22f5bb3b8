"""Serving workload models: request traffic (`traffic`) and token lengths (`prompt_tokens`,
`output_tokens`), as an `inference` service in shared/examples/factory.yaml spells them.

Only the models live here; `engine/traffic.py` draws arrivals and lengths from them. Rates are
requests per second, durations accept unit strings ("30min", "1d") like the rest of `spec/`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator

from ..units import parse_count
from .base import NonNegativeDurationS, PositiveDurationS, Spec
from .traces import Requests, read_trace, shape_key


class _Serving(Spec):
    # A rate or a length of inf/nan is a typo, never a model; pydantic floats allow them.
    model_config = ConfigDict(allow_inf_nan=False)


# --- traffic --------------------------------------------------------------------------------


class PoissonTraffic(_Serving):
    """Homogeneous Poisson arrivals: independent exponential gaps of mean 1 / rate_rps."""

    kind: Literal["poisson"] = "poisson"
    rate_rps: float = Field(gt=0, description="requests per second")

    @property
    def long_run_rps(self) -> float:
        return self.rate_rps


class DiurnalTraffic(_Serving):
    """A non-homogeneous Poisson process with a sinusoidal day:

    rate(t) = mean_rps x (1 + a cos(2 pi (t - phase) / period)),  a = (r - 1) / (r + 1),

    so that rate(phase) / rate(phase + period / 2) = r = peak_to_trough exactly and the
    average over a period is mean_rps. `phase` is the time of the peak, counted from the start
    of the run (t = 0): the default 0 starts the run at the peak; with a run that starts at
    midnight, `phase: 14h` puts the peak at 2 pm and the trough at 2 am. Values beyond one
    period wrap around.
    """

    kind: Literal["diurnal"] = "diurnal"
    mean_rps: float = Field(gt=0, description="average requests per second over a period")
    peak_to_trough: float = Field(
        ge=1, description="highest over lowest rate in a period; 1 is a constant rate"
    )
    period: PositiveDurationS = Field(86400.0, description="length of one cycle (default 1d)")
    phase: NonNegativeDurationS = Field(
        0.0, description="time of the peak after the start of the run (default 0: at the start)"
    )

    @property
    def amplitude(self) -> float:
        """a in rate(t) = mean (1 + a cos(...)): (r - 1) / (r + 1), in [0, 1)."""
        return (self.peak_to_trough - 1.0) / (self.peak_to_trough + 1.0)

    @property
    def long_run_rps(self) -> float:
        return self.mean_rps


class BurstyTraffic(_Serving):
    """A two-state Markov-modulated Poisson process (MMPP; Fischer & Meier-Hellstern, "The
    Markov-modulated Poisson process (MMPP) cookbook", Performance Evaluation 18, 1993).

    The source alternates between a base state (Poisson at `base_rps`) and a burst state
    (Poisson at `burst_rps`). It stays in each for an exponential time: `mean_burst` on average
    in a burst, `mean_gap` on average in the base state between two bursts. The long-run rate
    is (base_rps x mean_gap + burst_rps x mean_burst) / (mean_gap + mean_burst). With
    `base_rps: 0` it is an interrupted Poisson process (an on/off source).
    """

    kind: Literal["bursty"] = "bursty"
    base_rps: float = Field(ge=0, description="requests per second outside bursts")
    burst_rps: float = Field(gt=0, description="requests per second during a burst")
    mean_burst: PositiveDurationS = Field(description="average length of a burst")
    mean_gap: PositiveDurationS = Field(description="average time between two bursts")
    initial_state: Literal["stationary", "base", "burst"] = Field(
        "stationary",
        description="state at t = 0: drawn from the long-run shares (default), or given",
    )

    @model_validator(mode="after")
    def _burst_above_base(self) -> BurstyTraffic:
        if self.burst_rps < self.base_rps:
            raise ValueError(
                f"burst_rps={self.burst_rps} must be at least base_rps={self.base_rps} "
                "(a burst is the busier state)"
            )
        return self

    @property
    def burst_share(self) -> float:
        """Long-run fraction of time spent in bursts."""
        return self.mean_burst / (self.mean_burst + self.mean_gap)

    @property
    def long_run_rps(self) -> float:
        return (self.base_rps * self.mean_gap + self.burst_rps * self.mean_burst) / (
            self.mean_gap + self.mean_burst
        )


class OfflineTraffic(_Serving):
    """A batch: all `requests` arrive at t = 0 (throughput benchmarks)."""

    kind: Literal["offline"] = "offline"
    requests: Annotated[int, BeforeValidator(parse_count)] = Field(
        gt=0, description="number of requests, e.g. 1000 or '10k'"
    )


class TraceTraffic(_Serving):
    """Replay of a CSV of requests, one row each.

    Layouts (header row, names case-insensitive; token columns optional):
    - `azure`, the public Azure LLM inference traces (AzurePublicDataset): TIMESTAMP,
      ContextTokens, GeneratedTokens; TIMESTAMP as datetime strings ("2023-11-16
      18:15:46.6805900", optionally with a UTC offset) or as seconds.
    - `plain`: arrival_s, prompt_tokens, output_tokens.
    - `mooncake`, JSON lines as Mooncake's public traces (Qin et al., FAST'25): timestamp (ms),
      input_length, output_length, hash_ids; `auto` takes a .jsonl file as this layout.
    Any layout may carry `hash_ids`, each row's prompt as a chain of `hash_block_tokens`-token
    blocks named by hashes (equal ids, equal prefix): the replicas' prefix caches then reuse
    the blocks requests share. Rows need not be sorted. By default times are shifted so that
    the first request arrives at t = 0; with `shift_to_zero: false` numeric times are kept as
    written and datetime TIMESTAMPs count from midnight (UTC) of the first request's day, which
    keeps the trace's time of day. Token counts below 1 are raised to 1.
    """

    kind: Literal["trace"] = "trace"
    path: str = Field(min_length=1, description="CSV file; relative paths from the run's cwd")
    layout: Literal["auto", "azure", "plain", "mooncake"] = "auto"
    hash_block_tokens: int = Field(
        512,
        ge=16,
        multiple_of=16,
        description="tokens each of a row's hash_ids stands for (Mooncake's traces: 512); a "
        "multiple of the KV cache's 16-token blocks",
    )
    speedup: float = Field(
        1.0, gt=0, description="replay this many times faster: arrival times are divided by it"
    )
    loop: bool = Field(
        False,
        description="repeat the trace until the end of the run; one repetition lasts from 0 to "
        "the last arrival plus the trace's mean gap between arrivals",
    )
    shift_to_zero: bool = Field(True, description="move the first arrival to t = 0")
    _read: tuple[tuple[str, str, float, bool], Requests] | None = PrivateAttr(default=None)

    def requests(self) -> Requests:
        """The trace's requests (spec.traces.read_trace), read once: the scenario's validation
        reads it, so that the engine opens no file and a bad file is a load-time error."""
        key = shape_key(self)
        if self._read is None or self._read[0] != key:
            self._read = (key, read_trace(self))
        return self._read[1]


TRAFFIC_KINDS = ("poisson", "diurnal", "bursty", "offline", "trace")
TOKEN_KINDS = ("fixed", "uniform", "lognormal", "geometric", "empirical")


def _needs_kind(what: str, kinds: tuple[str, ...]) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, dict) and "kind" not in value:
            raise ValueError(f"{what} needs a kind; allowed: {', '.join(kinds)}")
        return value

    return BeforeValidator(check)


Traffic = Annotated[
    Annotated[
        PoissonTraffic | DiurnalTraffic | BurstyTraffic | OfflineTraffic | TraceTraffic,
        Field(discriminator="kind"),
    ],
    _needs_kind("traffic", TRAFFIC_KINDS),
]


# --- token lengths --------------------------------------------------------------------------


class _Tokens(_Serving):
    max: int | None = Field(
        None, ge=1, description="cap: longer draws are cut to it (a context or output limit)"
    )


class FixedTokens(_Tokens):
    """Every request has `value` tokens (cut to `max` when given)."""

    kind: Literal["fixed"] = "fixed"
    value: int = Field(ge=1)


class UniformTokens(_Tokens):
    """Integers from `low` to `high`, both included, equally likely."""

    kind: Literal["uniform"] = "uniform"
    low: int = Field(ge=1)
    high: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> UniformTokens:
        if self.low > self.high:
            raise ValueError(f"low={self.low} must not exceed high={self.high}")
        return self


class LognormalTokens(_Tokens):
    """exp(N(ln median, sigma^2)) rounded to the nearest integer, then kept in [1, max]."""

    kind: Literal["lognormal"] = "lognormal"
    median: float = Field(gt=0, description="tokens")
    sigma: float = Field(gt=0, description="standard deviation of the log")


class GeometricTokens(_Tokens):
    """Geometric on {1, 2, ...} with the given mean (success probability 1 / mean): the length
    of a generation that stops after each token with a constant probability."""

    kind: Literal["geometric"] = "geometric"
    mean: float = Field(ge=1, description="tokens, before the `max` cut")


class EmpiricalTokens(_Tokens):
    """Draws from a list of observed lengths, equally likely or with `weights`."""

    kind: Literal["empirical"] = "empirical"
    values: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    weights: list[Annotated[float, Field(ge=0)]] | None = Field(
        None, description="relative frequencies, one per value (need not sum to 1)"
    )

    @model_validator(mode="after")
    def _weights(self) -> EmpiricalTokens:
        if self.weights is not None:
            if len(self.weights) != len(self.values):
                raise ValueError(
                    f"weights has {len(self.weights)} entries but values has "
                    f"{len(self.values)}; give one weight per value"
                )
            if not math.fsum(self.weights) > 0:
                raise ValueError("weights must have a positive sum")
        return self


def _plain_tokens(value: Any) -> Any:
    """`prompt_tokens: 512` is shorthand for `{kind: fixed, value: 512}`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"kind": "fixed", "value": value}
    return value


TokenLengths = Annotated[
    Annotated[
        FixedTokens | UniformTokens | LognormalTokens | GeometricTokens | EmpiricalTokens,
        Field(discriminator="kind"),
    ],
    _needs_kind("a token length distribution", TOKEN_KINDS),
    BeforeValidator(_plain_tokens),
]


class SystemPrompts(_Serving):
    """Shared prefixes: every request starts with one of `count` system prompts of `tokens`
    tokens each, then its own part (`prompt_tokens` is that part: a request's prompt is
    tokens + its draw). Prompt r (from 1) is drawn with weight r^-popularity (Zipf's law;
    0: all alike), independently for each request."""

    count: int = Field(ge=1, description="distinct system prompts")
    tokens: int = Field(ge=1, description="tokens of each system prompt")
    popularity: float = Field(
        0.0,
        ge=0.0,
        description="Zipf exponent of how often each prompt is drawn (weight rank^-popularity); "
        "0: uniform",
    )


class Conversations(_Serving):
    """Multi-turn chats: each conversation's later turns come `think_time_s` (on average,
    exponentially distributed) after the answer to the turn before, and carry the whole
    conversation so far (its system prompt, every earlier prompt and answer) before their own
    tokens; prefix caching can reuse that context's KV. The traffic draws when conversations
    start: of its arrivals, one in `turns_mean` starts a conversation (an independent thinning,
    which keeps the traffic's shape), so that requests, first and later turns together, come at
    about the traffic's rate."""

    turns_mean: float = Field(
        ge=1.0,
        description="mean turns per conversation: geometric on 1, 2, ... (each turn the last with "
        "chance 1 / turns_mean)",
    )
    think_time_s: NonNegativeDurationS = Field(
        description="mean time from an answer to the next turn (exponential)"
    )
    turns_max: int | None = Field(
        None, ge=1, description="most turns a conversation has; none: no limit"
    )


class Workload(_Serving):
    """The requests of one service: when they come and how long they are; the fields an
    `inference` service carries (a base for that model). For a `trace` the trace's token
    columns are used and the two distributions may be left out."""

    traffic: Traffic
    prompt_tokens: TokenLengths | None = None
    output_tokens: TokenLengths | None = None
    system_prompts: SystemPrompts | None = Field(
        None,
        description="shared system prompts before each request's own tokens (prefix caching "
        "reuses their KV cache); none: no shared prefix",
    )

    conversations: Conversations | None = Field(
        None,
        description="multi-turn conversations whose later turns carry the earlier turns' tokens; "
        "none: every request is on its own",
    )

    @model_validator(mode="after")
    def _lengths_given(self) -> Workload:
        if self.conversations is not None and isinstance(self.traffic, TraceTraffic):
            raise ValueError(
                "conversations draw their later turns' times from the answers; a trace gives "
                "every request's time; allowed: conversations with poisson, diurnal, bursty or "
                "offline traffic"
            )
        if not isinstance(self.traffic, TraceTraffic):
            missing = [
                name for name in ("prompt_tokens", "output_tokens") if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    f"{self.traffic.kind} traffic needs {' and '.join(missing)} "
                    "(kinds: fixed, uniform, lognormal, geometric, empirical)"
                )
        return self
