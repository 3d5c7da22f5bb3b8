"""Request traffic and token lengths, drawn in vectorised numpy (no per-request Python loop).

- `arrivals`: sorted arrival times in [0, horizon) for every `traffic.kind`.
- `counts_per_tick`: arrivals per tick for the aggregate (`fluid`) tier, Poisson counts of the
  integrated intensity, without drawing each arrival.
- `lengths`: prompt or output token counts, int64 >= 1.
- `mean_rate`, `expected_arrivals`, `mean_length`: the intensity, its integral and the mean
  length, exact, for plots, sizing and tests.
- `draw_requests`: a whole workload at once (a trace's file is read by spec loading,
  spec.traces.read_trace, never here).

Every random function takes its `numpy.random.Generator`; the caller owns the streams (one
named stream each for arrivals, prompt and output lengths, see `engine.factory.rng_for`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy.special import ndtr

from ..errors import ScenarioError
from ..kernels.caching import zipf
from ..spec.serving import (
    BurstyTraffic,
    Conversations,
    DiurnalTraffic,
    EmpiricalTokens,
    FixedTokens,
    GeometricTokens,
    LognormalTokens,
    OfflineTraffic,
    PoissonTraffic,
    SystemPrompts,
    TokenLengths,
    TraceTraffic,
    Traffic,
    UniformTokens,
)
from ..spec.traces import Requests

#: Largest block of random draws made at once (memory, not correctness: blocks chain exactly).
MAX_BLOCK = 1 << 22
#: Lognormal means are summed term by term up to this many tokens, then integrated.
_EXACT_TERMS = 1 << 20


# --- arrivals -------------------------------------------------------------------------------


def arrivals(traffic: Traffic, horizon_s: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted arrival times (s, float64) in [0, horizon_s).

    poisson: cumulative sums of exponential gaps, in blocks. diurnal: thinning (Lewis &
    Shedler, "Simulation of nonhomogeneous Poisson processes by thinning", Naval Research
    Logistics Quarterly 26, 1979) of a Poisson process at the peak rate, each point kept with
    probability rate(t) / peak. bursty: the state sojourns first, then a Poisson count per
    sojourn placed uniformly in it (given its count, a Poisson process's points on an interval
    are uniform). offline: `requests` zeros. trace: the file's times (`read_trace`).
    """
    horizon_s = _horizon(horizon_s)
    if isinstance(traffic, PoissonTraffic):
        return _poisson_times(traffic.rate_rps, horizon_s, rng)
    if isinstance(traffic, DiurnalTraffic):
        peak = traffic.mean_rps * (1.0 + traffic.amplitude)
        times = _poisson_times(peak, horizon_s, rng)
        keep = rng.random(times.size) * peak < mean_rate(traffic, times)
        return times[keep]
    if isinstance(traffic, BurstyTraffic):
        starts, durations, rates = _mmpp_path(traffic, horizon_s, rng)
        counts = rng.poisson(rates * durations)
        times = np.repeat(starts, counts) + rng.random(int(counts.sum())) * np.repeat(
            durations, counts
        )
        times.sort()
        return times[times < horizon_s]
    if isinstance(traffic, OfflineTraffic):
        return np.zeros(traffic.requests if horizon_s > 0 else 0)
    if isinstance(traffic, TraceTraffic):
        return _trace_within(traffic, horizon_s).arrival_s
    raise TypeError(f"not a traffic spec: {traffic!r}")


def counts_per_tick(
    traffic: Traffic, tick_s: float, horizon_s: float, rng: np.random.Generator
) -> np.ndarray:
    """Arrivals (int64) in each tick [k tick_s, (k + 1) tick_s) of [0, horizon_s); the last tick
    is cut at the horizon when tick_s does not divide it.

    For the Poisson kinds a count is Poisson with mean the intensity integrated over the tick:
    the same process as `arrivals`, counted instead of placed. bursty integrates the drawn state
    path; offline puts every request in the first tick; a trace is binned.
    """
    horizon_s = _horizon(horizon_s)
    if not tick_s > 0:
        raise ValueError(f"tick_s must be > 0, got {tick_s}")
    edges = tick_edges(tick_s, horizon_s)
    if isinstance(traffic, PoissonTraffic | DiurnalTraffic):
        return rng.poisson(np.diff(expected_arrivals(traffic, edges)))
    if isinstance(traffic, BurstyTraffic):
        starts, durations, rates = _mmpp_path(traffic, horizon_s, rng)
        ends = np.concatenate(([0.0], starts + durations))
        cumulative = np.concatenate(([0.0], np.cumsum(rates * durations)))
        # The integrated rate is piecewise linear in time: exact by interpolation.
        return rng.poisson(np.diff(np.interp(edges, ends, cumulative)))
    if isinstance(traffic, OfflineTraffic):
        counts = np.zeros(edges.size - 1, dtype=np.int64)
        if counts.size:
            counts[0] = traffic.requests
        return counts
    if isinstance(traffic, TraceTraffic):
        times = _trace_within(traffic, horizon_s).arrival_s
        return np.diff(np.searchsorted(times, edges, side="left")).astype(np.int64)
    raise TypeError(f"not a traffic spec: {traffic!r}")


def tick_edges(tick_s: float, horizon_s: float) -> np.ndarray:
    """0, tick_s, 2 tick_s, ..., horizon_s: the bounds of `counts_per_tick`'s ticks."""
    # A tick that float division leaves a hair short of a multiple is not a tick of its own.
    n = max(1, math.ceil(horizon_s / tick_s - 1e-9)) if horizon_s > 0 else 0
    edges = np.minimum(np.arange(n + 1) * tick_s, horizon_s)
    if n:
        edges[-1] = horizon_s
    return edges


def mean_rate(traffic: Traffic, t: float | np.ndarray) -> float | np.ndarray:
    """The expected intensity E[rate(t)] in requests per second, at time(s) t.

    diurnal: mean_rps (1 + a cos(2 pi (t - phase) / period)). bursty: the rate averaged over
    the hidden state, which relaxes from the initial state to the long-run rate at speed
    1/mean_burst + 1/mean_gap. offline: 0 (its requests form a point mass at t = 0, see
    `expected_arrivals`). A trace has no intensity function: bin its arrivals instead.
    """
    t = np.asarray(t, dtype=float)
    if isinstance(traffic, PoissonTraffic):
        out = np.full(t.shape, traffic.rate_rps)
    elif isinstance(traffic, DiurnalTraffic):
        angle = 2.0 * np.pi * (t - traffic.phase) / traffic.period
        out = traffic.mean_rps * (1.0 + traffic.amplitude * np.cos(angle))
    elif isinstance(traffic, BurstyTraffic):
        q, excess = _mmpp_relaxation(traffic)
        out = traffic.long_run_rps + excess * np.exp(-q * t)
    elif isinstance(traffic, OfflineTraffic):
        out = np.zeros(t.shape)
    elif isinstance(traffic, TraceTraffic):
        raise ValueError("a trace has no intensity function; bin its arrivals (counts_per_tick)")
    else:
        raise TypeError(f"not a traffic spec: {traffic!r}")
    return float(out) if out.ndim == 0 else out


def expected_arrivals(traffic: Traffic, t: float | np.ndarray) -> float | np.ndarray:
    """E[number of arrivals in [0, t)]: the integral of `mean_rate` from 0 to t.

    diurnal: mean_rps (t + a period / (2 pi) (sin(2 pi (t - phase) / period)
    + sin(2 pi phase / period))). offline: `requests` for every t > 0.
    """
    t = np.asarray(t, dtype=float)
    if isinstance(traffic, PoissonTraffic):
        out = traffic.rate_rps * t
    elif isinstance(traffic, DiurnalTraffic):
        w = 2.0 * np.pi / traffic.period
        swing = np.sin(w * (t - traffic.phase)) + np.sin(w * traffic.phase)
        out = traffic.mean_rps * (t + traffic.amplitude / w * swing)
    elif isinstance(traffic, BurstyTraffic):
        q, excess = _mmpp_relaxation(traffic)
        out = traffic.long_run_rps * t + excess * -np.expm1(-q * t) / q
    elif isinstance(traffic, OfflineTraffic):
        out = np.where(t > 0, float(traffic.requests), 0.0)
    elif isinstance(traffic, TraceTraffic):
        raise ValueError("a trace has no intensity function; count its arrivals instead")
    else:
        raise TypeError(f"not a traffic spec: {traffic!r}")
    return float(out) if out.ndim == 0 else out


def _horizon(horizon_s: float) -> float:
    horizon_s = float(horizon_s)
    if not (horizon_s >= 0 and math.isfinite(horizon_s)):
        raise ValueError(f"horizon_s must be finite and >= 0, got {horizon_s}")
    return horizon_s


def _poisson_times(rate: float, horizon_s: float, rng: np.random.Generator) -> np.ndarray:
    """Homogeneous Poisson points in [0, horizon_s): cumulated exponential gaps, drawn in
    blocks sized to the expected remainder (so one block almost always suffices)."""
    if rate <= 0 or horizon_s <= 0:
        return np.empty(0)
    blocks: list[np.ndarray] = []
    t = 0.0
    while t < horizon_s:
        remaining = rate * (horizon_s - t)
        size = min(MAX_BLOCK, int(remaining + 6.0 * math.sqrt(remaining)) + 16)
        block = t + np.cumsum(rng.standard_exponential(size)) / rate
        blocks.append(block)
        t = float(block[-1])
    times = np.concatenate(blocks)
    return times[: np.searchsorted(times, horizon_s, side="left")]


def _mmpp_relaxation(traffic: BurstyTraffic) -> tuple[float, float]:
    """(q, e): E[rate(t)] = long-run rate + e exp(-q t) for the two-state chain, where q is the
    sum of the switching rates and e the initial state's excess over the long-run rate."""
    q = 1.0 / traffic.mean_burst + 1.0 / traffic.mean_gap
    p_burst = {"stationary": traffic.burst_share, "base": 0.0, "burst": 1.0}[traffic.initial_state]
    excess = (traffic.burst_rps - traffic.base_rps) * (p_burst - traffic.burst_share)
    return q, excess


def _mmpp_path(
    traffic: BurstyTraffic, horizon_s: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hidden state path on [0, horizon_s): (start, duration, rate) of each sojourn, the
    last one cut at the horizon. Sojourns alternate and are exponential (memoryless, so a
    stationary start needs no residual-time correction)."""
    if horizon_s <= 0:
        return np.empty(0), np.empty(0), np.empty(0)
    if traffic.initial_state == "stationary":
        burst_first = bool(rng.random() < traffic.burst_share)
    else:
        burst_first = traffic.initial_state == "burst"
    means = np.array([traffic.mean_gap, traffic.mean_burst])
    rates = np.array([traffic.base_rps, traffic.burst_rps])
    cycle = traffic.mean_gap + traffic.mean_burst
    blocks: list[np.ndarray] = []
    states: list[np.ndarray] = []
    done, t = 0, 0.0
    while t < horizon_s:
        expected = 2.0 * (horizon_s - t) / cycle
        size = min(MAX_BLOCK, int(expected + 6.0 * math.sqrt(expected)) + 16)
        state = (np.arange(done, done + size) + int(burst_first)) % 2
        ends = t + np.cumsum(rng.standard_exponential(size) * means[state])
        blocks.append(ends)
        states.append(state)
        done += size
        t = float(ends[-1])
    ends = np.concatenate(blocks)
    state = np.concatenate(states)
    n = int(np.searchsorted(ends, horizon_s, side="left")) + 1
    ends = np.minimum(ends[:n], horizon_s)
    starts = np.concatenate(([0.0], ends[:-1]))
    return starts, ends - starts, rates[state[:n]]


# --- token lengths --------------------------------------------------------------------------


def lengths(dist: TokenLengths, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` token counts (int64, each in [1, max]) drawn from `dist`.

    lognormal: round(median exp(sigma Z)), kept in [1, max]. geometric: numpy's geometric on
    {1, 2, ...} with p = 1 / mean. Every kind is then cut to `max` (draws above it become max).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cap = float(dist.max) if dist.max is not None else float(2**53)
    if isinstance(dist, FixedTokens):
        out = np.full(n, dist.value, dtype=np.int64)
    elif isinstance(dist, UniformTokens):
        out = rng.integers(dist.low, dist.high, size=n, endpoint=True, dtype=np.int64)
    elif isinstance(dist, LognormalTokens):
        draws = np.rint(dist.median * np.exp(dist.sigma * rng.standard_normal(n)))
        out = np.clip(draws, 1.0, cap).astype(np.int64)
    elif isinstance(dist, GeometricTokens):
        out = rng.geometric(1.0 / dist.mean, size=n).astype(np.int64)
    elif isinstance(dist, EmpiricalTokens):
        values = np.asarray(dist.values, dtype=np.int64)
        if dist.weights is None:
            out = values[rng.integers(0, values.size, size=n)]
        else:
            w = np.asarray(dist.weights, dtype=float)
            out = rng.choice(values, size=n, p=w / w.sum())
    else:
        raise TypeError(f"not a token length spec: {dist!r}")
    if dist.max is not None:
        np.minimum(out, dist.max, out=out)
    return out


def mean_length(dist: TokenLengths) -> float:
    """The exact mean of `lengths(dist, ...)`, the `max` cut included.

    geometric with cap M: sum_{k<M} (1 - p)^k = (1 - (1 - p)^M) / p. lognormal: 1 +
    sum_{k>=1} P(round(X) > k) over the capped range, term by term up to 2**20 tokens and by
    the midpoint rule beyond (lognormal partial expectations), which is exact to ~1e-9.
    """
    m = dist.max
    if isinstance(dist, FixedTokens):
        return float(min(dist.value, m) if m is not None else dist.value)
    if isinstance(dist, UniformTokens):
        k = np.arange(dist.low, dist.high + 1, dtype=float)
        return float(np.mean(np.minimum(k, m) if m is not None else k))
    if isinstance(dist, GeometricTokens):
        p = 1.0 / dist.mean
        if m is None or p == 1.0:
            return dist.mean if m is None else 1.0
        return float(-np.expm1(m * np.log1p(-p)) / p)
    if isinstance(dist, EmpiricalTokens):
        v = np.asarray(dist.values, dtype=float)
        v = np.minimum(v, m) if m is not None else v
        w = np.ones_like(v) if dist.weights is None else np.asarray(dist.weights, dtype=float)
        return float(np.dot(v, w) / w.sum())
    if isinstance(dist, LognormalTokens):
        return _lognormal_mean(dist.median, dist.sigma, m)
    raise TypeError(f"not a token length spec: {dist!r}")


def _lognormal_mean(median: float, sigma: float, cap: int | None) -> float:
    mu = math.log(median)

    def survival(x: np.ndarray) -> np.ndarray:  # P(X > x)
        return ndtr(-(np.log(x) - mu) / sigma)

    def mean_min(c: float) -> float:  # E[min(X, c)]
        if math.isinf(c):
            return math.exp(mu + sigma**2 / 2)
        z = (math.log(c) - mu) / sigma
        return math.exp(mu + sigma**2 / 2) * float(ndtr(z - sigma)) + c * float(ndtr(-z))

    # clip(round(X), 1, M) = 1 + #{k in 1..M-1 : round(X) > k} = 1 + #{k : X > k + 1/2}
    upper = math.inf if cap is None else float(cap)
    exact_to = min(upper, float(_EXACT_TERMS))
    k = np.arange(1, int(exact_to), dtype=float)
    total = 1.0 + math.fsum(survival(k + 0.5))
    if upper > exact_to:
        # sum_{k = K}^{M-1} P(X > k + 1/2) ~ integral_K^M P(X > x) dx (midpoint rule)
        total += mean_min(upper) - mean_min(exact_to)
    return total


# --- traces and whole workloads -------------------------------------------------------------


def _trace_within(traffic: TraceTraffic, horizon_s: float) -> Requests:
    """The trace on [0, horizon_s): looped when asked, then cut at the horizon (and before 0,
    for times written below 0 with `shift_to_zero: false`)."""
    trace = traffic.requests()  # read when the scenario was loaded (spec.traces)
    times = trace.arrival_s
    columns = [trace.prompt_tokens, trace.output_tokens]
    chains = trace.hash_ids
    if traffic.loop and times.size:
        if times.size < 2 or times[-1] <= times[0]:
            raise ScenarioError(
                "loop needs a trace of at least two distinct arrival times", path="traffic.loop"
            )
        period = times[-1] + (times[-1] - times[0]) / (times.size - 1)
        copies = max(1, math.ceil(horizon_s / period))
        times = (times[None, :] + period * np.arange(copies)[:, None]).ravel()
        columns = [None if c is None else np.tile(c, copies) for c in columns]
        chains = None if chains is None else chains * copies
    lo = int(np.searchsorted(times, 0.0, side="left"))
    hi = int(np.searchsorted(times, horizon_s, side="left"))
    cut = slice(lo, hi)
    prompt, output = (None if c is None else c[cut] for c in columns)
    return Requests(times[cut], prompt, output, None if chains is None else chains[lo:hi])


def draw_requests(
    traffic: Traffic,
    prompt_tokens: TokenLengths | None,
    output_tokens: TokenLengths | None,
    horizon_s: float,
    *,
    arrivals_rng: np.random.Generator,
    prompt_rng: np.random.Generator,
    output_rng: np.random.Generator,
) -> Requests:
    """A service's requests on [0, horizon_s). Three streams, so that changing one distribution
    shifts no other draw. A trace's token columns are used where it has them; a distribution
    given fills a missing column."""
    chains = None
    if isinstance(traffic, TraceTraffic):
        trace = _trace_within(traffic, horizon_s)
        times, from_trace = trace.arrival_s, (trace.prompt_tokens, trace.output_tokens)
        chains = trace.hash_ids
    else:
        times, from_trace = arrivals(traffic, horizon_s, arrivals_rng), (None, None)
    drawn = []
    for name, given, dist, rng in zip(
        ("prompt_tokens", "output_tokens"),
        from_trace,
        (prompt_tokens, output_tokens),
        (prompt_rng, output_rng),
        strict=True,
    ):
        if given is not None:
            drawn.append(given)
        elif dist is not None:
            drawn.append(lengths(dist, times.size, rng))
        else:
            raise ScenarioError(f"{traffic.kind} traffic needs a {name} distribution", path=name)
    return Requests(times, drawn[0], drawn[1], chains)


class Turns(NamedTuple):
    """A run's requests with conversations (`draw_conversations`), indexed by request id: the
    conversations' first turns first, in arrival order (id = conversation), then the later
    turns, conversation by conversation and turn by turn."""

    arrival_s: np.ndarray  # first turns' arrival times; nan for later turns (known when asked)
    prompt_tokens: np.ndarray  # the conversation so far and the turn's own tokens
    output_tokens: np.ndarray
    conversation: np.ndarray  # its conversation (= the id of its first turn)
    turn: np.ndarray  # 1, 2, ... within its conversation
    next_turn: np.ndarray  # the id of the conversation's next turn; -1 after the last
    think_s: np.ndarray  # the pause before this turn, after the answer to the one before


def draw_conversations(
    conv: Conversations,
    reqs: Requests,
    prompt_tokens: TokenLengths,
    output_tokens: TokenLengths,
    *,
    conversation_rng: np.random.Generator,
    prompt_rng: np.random.Generator,
    output_rng: np.random.Generator,
) -> Turns:
    """Conversations from a run's drawn requests `reqs` (arrivals at the traffic's rate, with
    their lengths): each arrival starts a conversation with chance 1 / turns_mean and is its
    first turn; a conversation has Geometric(1 / turns_mean) turns (at most turns_max); each
    later turn draws its own prompt and output tokens from the two distributions (continuing
    their streams) and a think time, exponential of mean think_time_s. Turn j's prompt is the
    turns before it (their prompts' own tokens and their answers) and its own tokens."""
    assert reqs.prompt_tokens is not None and reqs.output_tokens is not None
    q = 1.0 / conv.turns_mean
    first = conversation_rng.random(reqs.arrival_s.size) < q
    c = int(first.sum())
    turns = conversation_rng.geometric(q, size=c).astype(np.int64) if q < 1.0 else np.ones(c, int)
    if conv.turns_max is not None:
        turns = np.minimum(turns, conv.turns_max)
    m = int((turns - 1).sum())
    own_later = lengths(prompt_tokens, m, prompt_rng)
    out_later = lengths(output_tokens, m, output_rng)
    think = conversation_rng.exponential(1.0, size=m) * conv.think_time_s
    # Flat order: conversation by conversation, turn by turn.
    n = c + m
    conv_of = np.repeat(np.arange(c), turns)
    starts = np.concatenate(([0], np.cumsum(turns)[:-1])).astype(np.int64)
    turn = np.arange(n) - starts[conv_of]  # from 0
    later_start = np.concatenate(([0], np.cumsum(turns - 1)[:-1])).astype(np.int64)
    rid = np.where(turn == 0, conv_of, c + later_start[conv_of] + turn - 1)
    is_first = turn == 0
    own = np.empty(n, dtype=np.int64)
    out = np.empty(n, dtype=np.int64)
    own[is_first], own[~is_first] = reqs.prompt_tokens[first], own_later
    out[is_first], out[~is_first] = reqs.output_tokens[first], out_later
    step = own + out
    done = np.cumsum(step) - step  # tokens of the turns before, over all conversations
    before = done - done[starts][conv_of]
    nxt = np.where(turn + 1 < turns[conv_of], np.roll(rid, -1), -1)
    arrival = np.full(n, math.nan)
    arrival[:c] = reqs.arrival_s[first]
    pause = np.zeros(n)
    pause[c:] = think
    order = np.empty(n, dtype=np.int64)
    order[rid] = np.arange(n)  # id -> flat position
    return Turns(
        arrival,
        (before + own)[order],
        out[order],
        conv_of[order],
        (turn + 1)[order],
        nxt[order],
        pause,
    )


def draw_prefixes(system_prompts: SystemPrompts, n: int, rng: np.random.Generator) -> np.ndarray:
    """Each of `n` requests' system prompt (0 .. count - 1, the most popular first), drawn
    independently with Zipf weights rank^-popularity (kernels.caching.zipf)."""
    w = zipf(system_prompts.count, system_prompts.popularity)
    return np.searchsorted(np.cumsum(w), rng.random(n), side="right").clip(0, w.size - 1)
