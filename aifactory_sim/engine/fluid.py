"""The `fluid` serving tier: a service advanced as aggregate flows, for weeks of heavy traffic.

A fluid service keeps everything of a per-request one that is about replicas (nodes, cold
starts, the autoscaler, drains, failures, the ledger: the same replica fleet, engine/fleet.py)
and replaces the requests and the router by flows (FlowModel, the fleet's serving model). The
pure physics below (operating points, the completion table, the latency approximations) is in
kernels/fluid.py; this module keeps the flows' state and integrates them. Per interval
between two moments that matter (a tick of the traffic grid, an autoscaler decision, a replica
becoming ready, a failure) it knows R ready replicas, the arrivals of the interval and a
backlog Q, and computes:

1. The operating point of a replica fed x requests/s. In vLLM's steady state (Little's law per
   iteration of length t): n = x t prompts start per iteration, D = x (E[O] - 1) t sequences
   decode, P = n E[I] prompt tokens are prefilled, the decoding sequences attend to
   D c_bar tokens (c_bar = E[I] + E[O (O - 1) / 2] / E[O - 1], the context averaged over decode
   steps, weighted by how many steps each request has), and the prompts' causal attention
   covers n E[I (I + 1) / 2] query-key pairs. t is the fixed point of the kernel's iteration
   time t = f(P, D, context, pairs, n) (kernels/inference.py), solved once per service on a grid
   of x, vectorised. A replica saturates at x_max, the largest x that keeps the token budget
   (P + D), the seats (D + n r, r = max(1, E[I] / budget) iterations in prefill) and the KV
   cache (D (E[I] + E[O] / 2 + 7.5) + n r (E[I] + 7.5) tokens, blocks half full on average)
   within their limits: kernels.inference.offline_steady_state's limits, at the run's mean
   lengths.
2. The flow (FlowModel._serve). Per replica, l requests in service complete at G(l, a)
   while a are admitted per second: of l, n r are in prefill (n = a t prompts start per
   iteration) and D = l - n r decode, D / (E[O] - 1) complete per iteration, and t is the
   kernel's iteration for that batch (a table over l and a, solved once per service). In the
   steady state a = G and G(l, a) = g(l), the inverse of l(x) = x T_s(x)
   (T_s = (r + E[O] - 1) t the time in service). dl/dt = a - G(l, a): the fluid limit of a
   server whose speed depends on its load and on the prompts it takes in. Near the knee G is
   flat and l moves slowly; a replica that admits less than it completes drains at the pace
   of its decodes.
   A replica admits what arrives while it has a seat (l below l_top = l(x_max)); full, it
   admits what completes, and the backlog Q takes the rest. Admitting faster than it can
   prefill (x_pf prompts/s in iterations filled to the token budget), it holds the excess w
   unprefilled and completes little until w is prefilled. Requests that wait are taken at
   once by replicas that become ready (a fill): those prefill l_top prompts back to back in
   iterations filled to the token budget; the share already prefilled decodes meanwhile, one
   token per fill iteration, and what waits takes the seats its completions free (prefilled
   last, so the fill ends that much later). A scaled-down
   replica's requests drain outside the autoscaler's count. The share of time a replica
   iterates (for the ledger) is 1 - exp(-L / R) (a Poisson number in service). The
   autoscaler's concurrency metric is L + Q plus the fluctuation of a count about the flow
   (FlowModel._fluctuation: variance R x l'(x), the linear-noise approximation).
3. Latency, from a documented model sampled per interval (M = 32 requests drawn from the
   run's lengths, fewer in runs of more than 16,384 intervals, each standing for s dt / M
   requests served in the interval):
   - queue wait: the fluid FIFO wait t - A^-1(S(t)) (A: cumulative arrivals, S: cumulative
     admissions; zero while nothing is backlogged), plus, below saturation, the wait for a
     seat of Allen-Cunneen with Sakasegawa's probability of waiting (Hopp & Spearman, Factory
     Physics, 3rd ed., eq. 8.10; Sakasegawa, Ann. Inst. Stat. Math. 29, 1977): c = R x seats
     servers (seats: max_num_seqs, or the sequences the KV cache holds at mean lengths),
     utilisation u = (R x T_s) / c, P(wait) = u^(sqrt(2 (c + 1)) - 1), a wait then exponential
     with mean T_s / (c (1 - u)) (c_a^2 + c_s^2) / 2 (Poisson arrivals, c_a^2 = 1; c_s^2 of the
     time in service from the output lengths), plus the rest of the iteration under way when
     it arrives (admission happens at a boundary; the iteration is drawn size-biased among
     candidates of Poisson(n) prompts of the run's lengths);
   - time to first token: that wait plus the iterations that prefill its prompt, each costing
     the kernel's time for the interval's batch with the prompt's chunk added;
   - time per output token: the decode-only iteration at the interval's batch plus the prefill
     work other prompts add to the O - 1 iterations it decodes through: their number is
     Poisson (n per iteration), their mean cost the mean iteration's excess over decode-only,
     their spread the second moment of a prompt's excess (normal approximation of the sum);
   - a request taken in a fill waits for the prompts ahead of it (a uniform share of the
     fill) and decodes at the fill's pace until the fill ends.
   - a request admitted while its replica holds prompts it has not prefilled (w, see step 2)
     waits behind them, w / x_pf;
   - a request decodes through the intervals that follow its first token, not only the one it
     was admitted in: its time per output token is scaled by the mean iteration along its way
     over its own interval's (the path integral of 1 / t; 1 in a steady state).
   The interval's batch is the operating point whose steady state holds the interval's mean
   number in service, moved by the completion table's difference between that steady state
   and one admitting what the interval admitted (a drain: fewer prompts; seats filling: more).
   A fill's requests are a record of their own at the moment it took them.
   The run's percentiles are those of all samples weighted by the requests they stand for.

The arrivals are the traffic grid's, except in two cases. With conversations the later turns
are a closed loop (TurnLoop): they arrive after the answers to the turns before, and a service
that falls behind gets fewer of them. A disaggregated service is two FlowModels, a prefill
side and a decode side (`feed`): the decode side's arrivals are the prefill side's
completions, so a prefill side that falls behind holds its backlog.

What this tier leaves out, by design: per-request preemptions (reported as 0), the nodes of a
draining replica (its requests finish, but its nodes go back at once), the router's policy
(every policy is the ideal central queue), dropped requests counted by the share of the run's
lengths too long for the cache. docs/background/serving.md holds the
validation against the `fast` tier.
"""

from __future__ import annotations

import bisect
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import brentq
from scipy.special import gammainc

from ..kernels.caching import lru_hit_ratio, zipf
from ..kernels.fluid import (
    batch_at,
    completion,
    fluid_replica,
    latency_samples,
    op_at,
    operating_points,
    rate_at,
    seat_wait,
)
from ..kernels.inference import BLOCK_TOKENS, kv_bytes_per_sequence, offline_steady_state
from ..kernels.stats import latency_stats, slo_attainment
from ..spec.traces import Requests
from .fleet import ReplicaSizing
from .traffic import Turns, counts_per_tick, draw_conversations, draw_requests, lengths, tick_edges

#: Time constant (s) of a prefill side's utilisation for its M/G/1 queue (FlowModel._piece).
PREFILL_QUEUE_S = 300.0
#: Rounds of the fixed point between the prefix cache's hit ratio and the KV it leaves.
PREFIX_ROUNDS = 8

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..spec.inference import InferenceService
    from .ports import FleetView, ReplicaView

#: Length draws the latency model and the moments come from.
POOL = 1 << 16


class FluidCore:
    """What the replica life cycle asks of a replica's core, for a replica without requests of
    its own: nothing in flight, no plan; the service books its busy time."""

    __slots__ = ("busy_s", "plan")

    outstanding = 0

    def __init__(self) -> None:
        self.busy_s = 0.0
        self.plan = None

    def busy_until(self, t: float) -> float:
        return 0.0

    def evict(self, now: float) -> list[int]:
        return []

    def next_time(self) -> float:
        return math.inf


def running_total(times: list[float], totals: list[float], t: float) -> float:
    """A running total recorded at `times`, at `t`: linear in between, 0 before the first,
    the last after it."""
    k = bisect.bisect_right(times, t) - 1
    if k < 0:
        return 0.0
    if k >= len(times) - 1:
        return totals[-1]
    return totals[k] + (totals[k + 1] - totals[k]) * (t - times[k]) / (times[k + 1] - times[k])


class TurnLoop:
    """Conversations' later turns as a closed loop in the fluid tier: a turn answered goes on
    with chance `goes_on` (the pool's share of turns that have a next one), its conversation
    thinks for an exponential time of mean `think_s`, and its next turn arrives, as in `fast`
    (engine/traffic.draw_conversations). The thinking conversations Z are a fluid with
    dZ/dt = goes_on x answers/s - Z / think_s; a piece of length dt takes its later turns from
    the Z of its start and from the answers at the last piece's rate (exact for a constant
    rate), and the answers it actually gave correct Z afterwards (nothing is lost: what was
    over- or under-estimated is still thinking). New conversations are the traffic's arrivals
    thinned 1 in turns_mean. Below saturation the arrivals are the traffic's; a service that
    falls behind answers later, and its later turns come later, as they do in `fast`."""

    def __init__(self, start_share: float, goes_on: float, think_s: float):
        self.start_share, self.goes_on, self.think_s = start_share, goes_on, think_s
        self.thinking = 0.0
        self.started = 0.0  # conversations begun
        self._rate = 0.0  # answers going on per second over the last piece
        self._planned = 0.0  # of them, assumed to join within the piece
        self._answered = 0.0  # the service's completions counted so far

    def arrivals(self, traffic: float, dt: float) -> float:
        """Requests arriving over the next `dt` s when the traffic brings `traffic`."""
        th = self.think_s
        left = -math.expm1(-dt / th) if th > 0 else 1.0  # share of a thinker done by dt
        z0, r = self.thinking, self._rate
        later = z0 * left + r * (dt - th * left)
        self.thinking = z0 * (1.0 - left) + r * th * left
        self._planned = r * dt
        self.started += traffic * self.start_share
        return traffic * self.start_share + later

    def answered(self, completed: float, dt: float) -> None:
        """The service's completions so far, at the end of the piece just flowed."""
        inflow = self.goes_on * max(completed - self._answered, 0.0)
        self._answered = max(completed, self._answered)
        self.thinking = max(self.thinking + inflow - self._planned, 0.0)
        self._rate = inflow / dt if dt > 0 else 0.0


class FlowModel:
    """The serving model of an `inference` service in the `fluid` tier, on top of its replica
    fleet (see the module docstring)."""

    def __init__(
        self,
        spec: InferenceService,
        sizing: ReplicaSizing,
        rngs: dict[str, np.random.Generator],
        *,
        interval_s: float,
        span_s: float,
        role: str = "both",
    ):
        self.spec = spec
        #: both; or one side of a disaggregated service: prefill (every request one output
        #: token) or decode (every prompt's KV arrived: one token to admit, the rest cached)
        self.role = role
        #: a prefill side's decode side, and its KV link (bytes/s, s): set by the factory
        self.partner: FlowModel | None = None
        #: a decode side's prefill side, whose completions are its arrivals (set by `feed`)
        self.source: FlowModel | None = None
        #: a prefill side's completions so far at the end of each piece of its flows:
        #: times and running totals (the decode side's cumulative arrivals)
        self._done_t: list[float] = []
        self._done_n: list[float] = []
        self.link = (math.inf, 0.0)
        self._pf_u: float | None = None  # a prefill side's smoothed utilisation
        self.spec_link = "fabric"
        self.table = sizing.table
        self.kv_tokens = sizing.kv_tokens
        self.model_args, self.gpu_args = sizing.model_args, sizing.gpu_args
        self.parallel_args = sizing.parallel_args
        self.interval_s = interval_s
        self._init_requests(rngs, span_s)

    cores_track_busy = False  # busy time is booked as flows (fleet.book_busy), per piece
    holds_requests = False  # the requests are flows, no replica's own

    @property
    def tier(self) -> str:
        return "fluid"

    def connect(self, fleet: FleetView) -> None:
        self.fleet = fleet
        self.ready = fleet.ready  # the fleet's list, never rebound

    # --- set-up ---------------------------------------------------------------------------
    def _init_requests(self, rngs: dict[str, np.random.Generator], span_s: float) -> None:
        spec, b = self.spec, self.spec.batching
        start = spec.start_at
        self.edges = (
            tick_edges(self.interval_s, span_s) + start if span_s > 0 else np.array([start, start])
        )
        counts = (
            counts_per_tick(spec.traffic, self.interval_s, span_s, rngs["arrivals"]).astype(
                np.float64
            )
            if span_s > 0
            else np.zeros(1)
        )
        self.cum_arrivals = np.concatenate(([0.0], np.cumsum(counts)))
        self._edges_list = self.edges.tolist()
        self._cum_list = self.cum_arrivals.tolist()
        if spec.traffic.kind == "trace":  # the trace's own lengths, each row once
            reqs = draw_requests(
                spec.traffic,
                spec.prompt_tokens,
                spec.output_tokens,
                span_s,
                arrivals_rng=rngs["arrivals"],
                prompt_rng=rngs["prompts"],
                output_rng=rngs["outputs"],
            )
            prompt, output = reqs.prompt_tokens, reqs.output_tokens
            chains = reqs.hash_ids
            if prompt is None or output is None or prompt.size == 0:
                prompt = output = np.ones(1, dtype=np.int64)
                chains = None
        else:
            assert spec.prompt_tokens is not None and spec.output_tokens is not None
            prompt = lengths(spec.prompt_tokens, POOL, rngs["prompts"])
            output = lengths(spec.output_tokens, POOL, rngs["outputs"])
        if spec.traffic.kind != "trace":
            chains = None
        self.turns: Turns | None = None
        if spec.conversations is not None:  # the pool as turns of conversations
            assert spec.prompt_tokens is not None and spec.output_tokens is not None
            self.turns = draw_conversations(
                spec.conversations,
                Requests(np.zeros(prompt.size), prompt, output),
                spec.prompt_tokens,
                spec.output_tokens,
                conversation_rng=rngs["conversations"],
                prompt_rng=rngs["prompts"],
                output_rng=rngs["outputs"],
            )
            prompt, output = self.turns.prompt_tokens, self.turns.output_tokens
        sp = spec.system_prompts
        if sp is not None:  # a system prompt before each request's own tokens
            prompt = prompt + sp.tokens
        role = self.role
        if role == "prefill":
            output = np.ones_like(output)
        too_long = prompt + output > self.kv_tokens
        if not b.chunked_prefill and role != "decode":
            too_long |= prompt > b.max_batched_tokens
        self.drop_share = float(too_long.mean())
        keep = ~too_long if not too_long.all() else np.ones_like(too_long)
        self.pool_prompt = prompt[keep].astype(np.float64)
        #: a trace's block hashes of the rows kept (whole hash blocks within the prompt)
        self._chains: list[list[int]] | None = None
        if chains is not None and spec.prefix_cache.enabled and role != "decode":
            hb = spec.traffic.hash_block_tokens  # type: ignore[union-attr]
            raw = prompt - (sp.tokens if sp is not None else 0)
            self._chains = [
                c[: int(n) // hb]
                for c, n, k in zip(chains, raw.tolist(), keep.tolist(), strict=True)
                if k
            ]
        self.pool_output = output[keep].astype(np.float64)
        #: with conversations: each pooled turn's conversation context its replica may hold
        #: (tokens in whole blocks, the system prompt's included; 0 for a first turn), whether
        #: the conversation goes on after it, and the share of first turns
        self.pool_context = np.zeros_like(self.pool_prompt)
        if self.turns is not None:
            t = self.turns
            prev = np.full(t.turn.size, -1)
            later = t.next_turn >= 0
            prev[t.next_turn[later]] = np.flatnonzero(later)
            held = (prompt + output - 1) // BLOCK_TOKENS * BLOCK_TOKENS  # a turn's, when done
            context = np.where(prev >= 0, held[np.maximum(prev, 0)], 0)
            self.pool_context = context[keep].astype(np.float64)
            self.pool_goes_on = later[keep]
            self.first_share = float((t.turn[keep] == 1).mean())
            self._pool_keep, self._pool_prev = keep, prev
            self._pool_held = held.astype(np.float64)
        self._mc_rng = rngs["router"]
        self._noise_rng = rngs["metric"]
        self._noise = 0.0
        self._noise_t = start
        self._count_at, self._drawn = math.nan, 0.0
        self.pool_cached = np.zeros_like(self.pool_prompt)
        if role == "decode":
            self.pool_cached = np.maximum(self.pool_prompt - 1.0, 0.0)
        self._replica()
        skip = (sp.tokens // BLOCK_TOKENS) * BLOCK_TOKENS if sp is not None else 0
        self.conv_hit = 0.0
        if role == "decode":
            pass  # the decode side caches no prefixes; its prompts arrive with their KV
        elif self._chains is not None:
            self._chain_hits(rngs["prefixes"], span_s)
        elif self.turns is not None and spec.prefix_cache.enabled:
            self._conversation_hits(rngs["prefixes"], skip, span_s)
        elif sp is not None and skip and spec.prefix_cache.enabled:
            # The hit ratio and the load it leaves on the KV cache depend on each other: from
            # a cache as large as the whole KV, to their fixed point (a few rounds).
            u = rngs["prefixes"].random(self.pool_prompt.size)
            weights = zipf(sp.count, sp.popularity)
            hit = lru_hit_ratio(weights, self.kv_tokens // skip)
            for _ in range(PREFIX_ROUNDS):
                self.pool_cached = np.where(u < hit, float(skip), 0.0)
                self._replica()
                before, hit = hit, self._prefix_hit_ratio(weights, sp.count, skip, span_s)
                if abs(hit - before) < 1e-3:
                    break
        #: with conversations, the later turns' closed loop (not on a decode side, whose
        #: arrivals are its prefill side's completions); the arrivals kept over time
        self._loop: TurnLoop | None = None
        if self.turns is not None and role != "decode":
            conv = spec.conversations
            assert conv is not None
            self._loop = TurnLoop(
                1.0 / conv.turns_mean, float(self.pool_goes_on.mean()), conv.think_time_s
            )
        self._arr_t: list[float] = [start]
        self._arr_n: list[float] = [0.0]
        # The flows.
        self._t = start
        self._backlog = 0.0
        self._in_service = 0.0
        self._x = 0.0  # per-replica admission rate of the last interval
        self._arrived = self._arrived_at_tick = 0.0
        self._admitted = 0.0
        self._draining = 0.0  # in service on replicas scaled down
        self._dropped = 0.0
        self._fluid_area = 0.0
        self._preempted = 0.0
        self._intervals: list[tuple[float, ...]] = []
        #: Requests taken at once into empty replicas, still prefilling: (ends, requests).
        self._fills: list[tuple[float, float]] = []
        self._fill_at: float | None = None
        #: Requests admitted to the other replicas faster than they prefill prompts, waiting
        #: in them for the token budget (all replicas together).
        self._unprefilled = 0.0

    def _replica(self) -> None:
        """The fluid replica and its operating points from the length pools (each prompt's
        prefilled part: its tokens not found in the prefix cache)."""
        b = self.spec.batching
        self.pool_prefill = self.pool_prompt - self.pool_cached
        self.rep = fluid_replica(
            self.table,
            self.pool_prefill,
            self.pool_output,
            max_batched_tokens=b.max_batched_tokens,
            max_num_seqs=b.max_num_seqs,
            kv_tokens=self.kv_tokens,
            cached=self.pool_cached,
        )
        self.mean_prompt, self.mean_output = self.rep.mean_prompt, self.rep.mean_output
        self.output_cv2 = self.rep.output_cv2
        self._operating_points()

    def _prefix_hit_ratio(self, weights: np.ndarray, count: int, skip: int, span_s: float) -> float:
        """The share of requests whose system prompt their replica has cached. Che's
        approximation (kernels/caching.py) of each replica's LRU over the `count` prompts'
        Zipf `weights`, for the prefixes of `skip` tokens that fit in the KV cache its sequences
        leave at the run's mean load per starting replica (op_kv of the operating points, the
        cache uncounted); less the cold misses, each replica's first request for each prefix
        it holds. One figure for the run: it does not follow the load over the day."""
        replicas = max(self.spec.initial_replicas, 1)
        arrived = float(self.cum_arrivals[-1]) * (1.0 - self.drop_share)
        x = min(arrived / max(span_s, 1e-9) / replicas, self.x_max)
        kv_share = float(np.interp(x, self.ops.op_x, self.ops.op_kv))
        capacity = math.floor(max(self.kv_tokens * (1.0 - kv_share), 0.0) / skip)
        hit = lru_hit_ratio(weights, capacity)
        cold = replicas * min(count, capacity) / max(arrived, 1.0)
        return max(hit - cold, 0.0)

    def _chain_hits(self, rng: np.random.Generator, span_s: float) -> None:
        """A trace's block hashes: each pooled row's cached tokens from Che's approximation of
        one replica's LRU over the hash blocks (kernels/caching.py; time counted in the
        replica's requests): block i is used by a share q_i of the rows, the rows a replica
        sees are 1 / replicas of them, and T fills the KV the load leaves (in hash blocks);
        a row finds the leading run of its blocks each cached with chance 1 - exp(-q_i T),
        less the cold misses (each replica's first use of a block: replicas / c_i of its c_i
        uses), drawn block by block up to the first miss. A fixed point with the KV the cache
        leaves, as for system prompts."""
        chains = self._chains
        assert chains is not None
        hb = self.spec.traffic.hash_block_tokens  # type: ignore[union-attr]
        ids, inverse = np.unique(
            np.fromiter((h for c in chains for h in c), dtype=np.int64), return_inverse=True
        )
        counts = np.bincount(inverse, minlength=ids.size).astype(np.float64)
        q = counts / max(len(chains), 1)
        at = np.concatenate(([0], np.cumsum([len(c) for c in chains]))).astype(np.int64)
        u = rng.random(inverse.size)
        replicas = max(self.spec.initial_replicas, 1)
        arrived = float(self.cum_arrivals[-1]) * (1.0 - self.drop_share)
        cap_rows = np.floor((self.pool_prompt - 1.0) / hb)
        for _ in range(PREFIX_ROUNDS):
            x = min(arrived / max(span_s, 1e-9) / replicas, self.x_max)
            kv_share = float(np.interp(x, self.ops.op_x, self.ops.op_kv))
            items = math.floor(max(self.kv_tokens * (1.0 - kv_share), 0.0) / hb)
            if items <= 0 or not ids.size:
                hit_p = np.zeros(ids.size)
            elif items >= ids.size:
                hit_p = np.ones(ids.size)
            else:
                hi = 1.0
                while float(np.sum(-np.expm1(-q * hi))) < items:
                    hi *= 2.0
                t = brentq(lambda y, c=items: float(np.sum(-np.expm1(-q * y))) - c, 0.0, hi)
                hit_p = -np.expm1(-q * t)
            # less the cold misses: each replica's first use of a block (of c_i uses)
            hit_p = hit_p * np.maximum(1.0 - replicas / np.maximum(counts, 1.0), 0.0)
            ok = u < hit_p[inverse]
            # the leading run of hits of each row: its first miss (or its length)
            miss = np.flatnonzero(~ok)
            first = np.searchsorted(miss, at[:-1])
            run = np.where(first < miss.size, miss[np.minimum(first, miss.size - 1)], at[1:])
            run = np.minimum(run, at[1:]) - at[:-1]
            before = float(self.pool_cached.mean())
            self.pool_cached = np.minimum(run, cap_rows).astype(np.float64) * hb
            self._replica()
            if abs(float(self.pool_cached.mean()) - before) < 1e-3 * max(before, 1.0):
                break

    def _conversation_hits(self, rng: np.random.Generator, skip: int, span_s: float) -> None:
        """The prefix cache with conversations: each pooled turn's cached tokens, from the share
        h_s of requests whose system prompt is cached and, for a later turn, whether a replica
        it lands on still holds its conversation's context.

        One LRU per replica, Che's approximation in time (kernels/caching.py): an entry stays
        for a characteristic time T after its last use. A turn lands on the replica of the turn
        before with chance a (1 with prefix-aware routing, else 1 / replicas); so the last turn
        on its replica is G turns back, G ~ Geometric(a) (none if G reaches past the first
        turn), and that turn's context (its prompt and answer, whole blocks) survived if the G
        think times since (exponential, mean theta; service times left out) fit in T: chance
        P(Gamma(G, theta) < T). Per replica, at the run's mean rate lambda per starting replica,
        system prompt i (Zipf weight p_i) is used at lambda p_i, and every turn leaves its
        context (mean s tokens beyond the system prompt) until a later turn of the conversation
        uses it on this replica (chance u = g a / (1 - g (1 - a)), g the share of turns followed
        by another; after about theta_u = theta / (1 - g (1 - a))) or it is evicted; T fills the
        KV the load's sequences leave (the operating point's KV share):
            skip sum_i (1 - exp(-lambda p_i T))
                + lambda s [u theta_u (1 - exp(-T / theta_u)) + (1 - u) T] = free KV.
        h_s = sum_i p_i (1 - exp(-lambda p_i T)) less the cold misses (as `_prefix_hit_ratio`);
        a conversation's blocks match only behind its cached system prompt (h_s = 1 without
        system prompts). A fixed point with the KV the cache leaves, as for system prompts."""
        spec = self.spec
        sp, conv = spec.system_prompts, spec.conversations
        assert conv is not None and self.turns is not None
        replicas = max(spec.initial_replicas, 1)
        a = 1.0 if spec.router == "prefix-aware" else 1.0 / replicas
        theta = conv.think_time_s
        g = float(self.pool_goes_on.mean())
        use = g * a / (1.0 - g * (1.0 - a))
        theta_u = theta / (1.0 - g * (1.0 - a))
        weights = zipf(sp.count, sp.popularity) if sp is not None and skip else np.ones(1)
        size = self.pool_prompt.size
        u_sys, u_conv = rng.random(size), rng.random(size)
        # G turns back to the last turn on the same replica, and that turn's context
        t, keep = self.turns, self._pool_keep
        back = rng.geometric(a, size) if a < 1.0 else np.ones(size, dtype=np.int64)
        turn = t.turn[keep]
        reach = (turn > back) & (turn > 1)
        at = np.flatnonzero(keep)
        for step in range(int(back[reach].max(initial=0))):
            at = np.where(reach & (back > step), self._pool_prev[at], at)
        context = np.where(reach, self._pool_held[np.maximum(at, 0)], 0.0)
        arrived = float(self.cum_arrivals[-1]) * (1.0 - self.drop_share)
        lam = arrived / max(span_s, 1e-9) / replicas
        system = float(skip) if sp is not None else 0.0
        left = float(np.mean(self._pool_held[keep])) - system

        def occupancy(y: float) -> float:
            held = system * float(np.sum(-np.expm1(-lam * weights * y))) if system else 0.0
            kept = use * theta_u * -math.expm1(-y / theta_u) if theta_u > 0 else 0.0
            return held + lam * left * (kept + (1.0 - use) * y)

        h_s, hits = 1.0, np.zeros(size, dtype=bool)
        later = turn > 1
        for _ in range(PREFIX_ROUNDS):
            x = min(lam, self.x_max)
            kv_share = float(np.interp(x, self.ops.op_x, self.ops.op_kv))
            free = max(self.kv_tokens * (1.0 - kv_share), 0.0)
            hi = 1.0
            while occupancy(hi) < free and hi < 1e12:
                hi *= 2.0
            big_t = (
                brentq(lambda y, f=free: occupancy(y) - f, 0.0, hi) if occupancy(hi) >= free else hi
            )
            before = (h_s, float(hits[later].mean()) if later.any() else 0.0)
            if system:
                hit = float(np.sum(weights * -np.expm1(-lam * weights * big_t)))
                cold = replicas * len(weights) / max(arrived, 1.0)
                h_s = max(hit - cold, 0.0)
            survive = gammainc(back, big_t / theta) if theta > 0 else np.ones(size)
            hits = reach & (u_conv < survive * h_s)
            sys_hit = np.where(u_sys < h_s, system, 0.0)
            self.pool_cached = np.where(hits, context, sys_hit)
            self._replica()
            h_c = float(hits[later].mean()) if later.any() else 0.0
            if abs(h_s - before[0]) < 1e-3 and abs(h_c - before[1]) < 1e-3:
                break
        self.conv_hit = float(hits[later].mean()) if later.any() else 0.0

    @property
    def _prefill_service(self) -> tuple[float, float]:
        """A prompt's prefill time at a full token budget (mean, squared coefficient of
        variation) over the pool: prefilled tokens / (budget / the budget's iteration time)."""
        b = self.spec.batching.max_batched_tokens
        p = self.pool_prefill
        mean = float(p.mean())
        k = b / max(mean, 1.0)
        pairs = k * (mean * float(self.pool_cached.mean()) + mean * (mean + 1.0) / 2.0)
        seqs = min(max(1, round(k)), len(self.table.sampled) - 1)
        rate = b / self.table.time_s(b, 0, 0.0, pairs, seqs)
        return mean / rate, float(p.var() / max(mean, 1.0) ** 2)

    def _operating_points(self) -> None:
        """The replica's steady states (kernels.fluid.operating_points) up to the saturation
        rate of the closed form at mean lengths, kept as the model's look-ups."""
        spec, b = self.spec, self.spec.batching
        closed = offline_steady_state(  # the saturation rate at mean lengths, closed form
            self.model_args,
            self.gpu_args,
            prompt_tokens=self.mean_prompt,
            output_tokens=self.mean_output,
            max_num_seqs=b.max_num_seqs,
            max_batched_tokens=b.max_batched_tokens,
            tp=spec.tp,
            precision=spec.precision,
            kv_precision=spec.kv_precision,
            kv_capacity=self.kv_tokens,
            **self.parallel_args,
        )
        ops = self.ops = operating_points(
            self.rep, float(closed["requests_per_iteration"] / closed["iteration_time_s"])
        )
        self._ct = ops.completion
        self.x_max, self.seats = ops.x_max, ops.seats
        self.op_x, self.op_l = ops.op_x, ops.op_l
        self.fill_t, self.fill_s, self.prefill_rate = ops.fill_t, ops.fill_s, ops.prefill_rate
        self._dec_steps = ops.dec_steps
        self._full_prefilling = ops.full_prefilling
        self._op_xs, self._op_l_list = ops.xs, ops.l_list

    def new_core(self, index: int) -> FluidCore:
        return FluidCore()

    # --- the flows --------------------------------------------------------------------------
    def feed(self, decode: FlowModel) -> None:
        """Make `decode` this prefill side's decode side: the requests this side completes (their
        first token sampled) arrive there, their KV moved (a transfer's milliseconds are left
        out of when they arrive; the summary adds them to the latencies). A request too long
        for a decode replica is dropped there, as a share of what arrives (the decode pool's
        drops beyond this side's: the two pools are the same draws)."""
        self.partner, decode.source = decode, self
        self._done_t, self._done_n = [self._t], [0.0]
        over = max(decode.drop_share - self.drop_share, 0.0)
        decode.drop_share = over / max(1.0 - self.drop_share, 1e-12)

    def _completed(self) -> float:
        return max(self._admitted - self._in_service - self._draining, 0.0)

    def _arrivals_until(self, t: float) -> float:
        """Cumulative arrivals at t: the tick's count spread evenly over the tick; a decode
        side's, its prefill side's completions (linear between the ends of its pieces)."""
        if self.source is not None:  # it has run at least to t
            return running_total(self.source._done_t, self.source._done_n, t)
        return running_total(self._edges_list, self._cum_list, t)

    def advance_to(self, t: float) -> None:
        """Integrate the flows to `t`, in pieces that never cross a tick of the traffic grid (a
        decode side's prefill side first, whose completions are its arrivals)."""
        if self.source is not None:
            self.source.advance_to(t)
        edges = self.edges
        while self._t < t:
            k = int(np.searchsorted(edges, self._t, side="right"))
            t1 = min(t, float(edges[k])) if k < edges.size else t
            self._flow(self._t, t1)
            self._t = t1
            if self.partner is not None:  # a running total: a failure's requests go back
                self._done_t.append(t1)
                self._done_n.append(max(self._completed(), self._done_n[-1]))

    def _flow(self, t0: float, t1: float) -> None:
        dt = t1 - t0
        if dt <= 0:
            return
        arrived = self._arrivals_until(t1) - self._arrivals_until(t0)
        loop = self._loop
        if loop is not None:
            arrived = loop.arrivals(arrived, dt)
        self._arrived += arrived
        dropped = arrived * self.drop_share
        self._dropped += dropped
        self._piece(t0, t1, (arrived - dropped) / dt)
        if loop is not None:
            loop.answered(self._completed(), dt)
            self._arr_t.append(t1)
            self._arr_n.append(self._arr_n[-1] + arrived - dropped)

    def _piece(self, t0: float, t1: float, lam: float) -> None:
        """Serve [t0, t1] while lam requests/s arrive (step 2 of the module docstring)."""
        dt = t1 - t0
        r = len(self.ready)
        q0 = self._backlog
        drained = self._drain(dt)
        if not r:
            self._backlog = q0 + lam * dt
            self._fluid_area += (q0 + self._backlog) / 2.0 * dt + drained
            return
        behind = self._unprefilled
        admitted, area, filled = self._serve(lam, dt)
        # Admitted faster than they prefill, requests wait in their replica behind the prompts
        # not yet prefilled (w per replica, taken at x_pf per second, first come first served).
        filling = sum(f for _, f in self._fills)
        behind = (
            (behind + self._unprefilled)
            / 2.0
            / max(r - filling / self._op_l_list[-1], 1e-9)
            / self.prefill_rate
        )
        q1 = self._backlog
        in_service = self._in_service
        # The replicas' batches are those of the requests they hold while they admit what they
        # admitted: the operating point whose steady state holds the interval's mean number in
        # service, moved by the completion table's difference between that steady state and
        # the interval's (a drain: fewer prompts, more decodes; seats filling: more prompts).
        # A fill's prompts are apart (the latency model takes them as a fill).
        held = area / (r * dt)
        x_held = rate_at(self.ops, held)
        t_it, t_dec, n, d, service_s = op_at(self.ops, x_held)[:5]
        admit = max(admitted - filled, 0.0) / (r * dt)
        if held > 0 and abs(admit - x_held) > 1e-9 * x_held:
            now_b, steady_b = batch_at(self._ct, held, admit), batch_at(self._ct, held, x_held)
            t_it *= now_b[0] / steady_b[0]
            t_dec *= now_b[1] / steady_b[1]
            n = max(n + now_b[2] - steady_b[2], 0.0)
            d = max(d + now_b[3] - steady_b[3], 0.0)
            service_s *= x_held / max(completion(self._ct, held, admit)[0], 1e-12)
        busy = 1.0 - math.exp(-in_service / r)
        self.fleet.book_busy(self.spec.gpus_per_replica * r * dt * busy)
        self._fluid_area += area + (q0 + q1) / 2.0 * dt + drained
        self._admitted += admitted
        self._x = x_held
        if admitted > 0:
            # Admission waits only for a seat (a replica's max_num_seqs, or the sequences its
            # KV cache holds at mean lengths): c seats, busy a share u of the time.
            servers = max(r * self.seats, 1.0)
            p_wait, mean_wait = seat_wait(area, dt, servers, service_s, self.output_cv2, q1 > 0)
            if self.role == "prefill":
                # A prefill replica is one server of prompts, first come first served at its
                # prefill rate (a full token budget's tokens per second): M/G/1 at the load
                # each replica admits (Allen-Cunneen with c = 1, P(wait) = rho)
                # each replica admits, smoothed over PREFILL_QUEUE_S (a queue near saturation
                # takes that long to build; one tick's Poisson count does not make it)
                s_mean, s_cv2 = self._prefill_service
                u = admitted / (r * dt) * s_mean
                w = -math.expm1(-dt / PREFILL_QUEUE_S)
                self._pf_u = u if self._pf_u is None else self._pf_u + w * (u - self._pf_u)
                p_wait, mean_wait = seat_wait(self._pf_u * dt, dt, 1.0, s_mean, s_cv2, q1 > 0)
            # A fill takes its requests at one moment (a replica becoming ready): a record of
            # its own at that moment, first (they were the backlog's oldest), so that their
            # admissions are not spread over the interval; the rest over the interval.
            start = self._admitted - admitted
            if filled > 0:
                at = self._fill_at if self._fill_at is not None else t0
                self._intervals.append(
                    (
                        filled,
                        at,
                        at,
                        start,
                        start + filled,
                        t_it,
                        t_dec,
                        n,
                        d,
                        p_wait,
                        mean_wait,
                        busy,
                        1.0,
                        behind,
                    )
                )
            if admitted - filled > 1e-12:
                self._intervals.append(
                    (
                        admitted - filled,
                        t0,
                        t1,
                        start + filled,
                        self._admitted,
                        t_it,
                        t_dec,
                        n,
                        d,
                        p_wait,
                        mean_wait,
                        busy,
                        0.0,
                        behind,
                    )
                )

    def _serve(self, lam: float, dt: float) -> tuple[float, float, float]:
        """Advance the backlog and the requests in service of the ready replicas by dt while
        lam arrive per second. Returns the requests admitted, the integral of those in service,
        and how many of the admitted were taken at once into empty replicas (fills).

        Per replica, l requests in service complete at G(l, a) while a are admitted per
        second (_completion_table; G(l, g(l)) = g(l), the inverse of l(x) = x T_s(x)):
        dl/dt = a - G(l, a), the fluid limit of a server whose speed depends on its load and
        on the prompts it takes in (Chen & Yao, Fundamentals of Queueing Networks, 2001,
        ch. 7). Near the knee G grows slowly with l and the count climbs slowly, as it does in
        `fast`; a replica that admits less than it completes (after a fill, or when a
        scale-up spreads the load) drains at the pace of its decodes, faster than g(l). Each
        step is exact for G linear in l about its start (exponential Euler), stable at any
        length.

        A replica admits what arrives while it has a free seat (l below l_top = l(x_max), the
        seats of its steady state at saturation); full (from the moment within a step at which
        l reaches l_top), it admits what completes, x_max, and the rest waits. Admitted faster
        than it prefills prompts (x_pf = l_top / fill_s per second, iterations filled to the
        token budget), a replica holds the excess w unprefilled: its iterations stay full of
        prompts and it completes little, G(l, x_pf), until w is prefilled, full or not (a
        replica left with five replicas' load by a scale-down, in `fast` as here).

        Free seats while requests wait are those of replicas that just became ready: they take
        l_top requests each at once and prefill their prompts back to back, in iterations
        filled to the token budget (fill_s in all). The share prefilled so far decodes, one
        token per fill iteration, and completes (D / (E[O] - 1) per iteration); the backlog
        takes the seats that frees at once, and their prompts, prefilled last, make the fill
        longer by their share of it. Then the fill's requests join the others in service. A
        replica joining a backlog serves little until it has prefilled it, as in `fast`."""
        r = len(self.ready)
        total, backlog = self._in_service, self._backlog
        l_top = self._op_l_list[-1]
        now = self._t
        self._fill_at = None  # when the first fill of this call took the backlog
        service_s = op_at(self.ops, rate_at(self.ops, total / r))[4]
        busy_start = backlog > 0 or bool(self._fills) or self._unprefilled > 0
        x_pf = self.prefill_rate
        unprefilled = self._unprefilled
        ct, x_top_steady = self._ct, self._op_xs[-1]
        steps = 16 if busy_start else max(1, min(8, math.ceil(dt / max(service_s, 1e-9))))
        h = dt / steps
        admitted = area = filled = 0.0
        for step in range(steps):
            t = now + step * h
            if self._fills and min(end for end, _ in self._fills) <= t:
                self._fills = [c for c in self._fills if c[0] > t]  # prefilled: they join the rest
            filling = sum(f for _, f in self._fills)
            r_free = max(r - filling / l_top, 1e-9)
            held = total - filling
            if backlog > 0 and held < l_top * r_free:
                take = min(backlog, l_top * r_free - held)
                backlog -= take
                total += take
                admitted += take
                filled += take
                self._fills.append((t + self.fill_s, take))
                if self._fill_at is None:
                    self._fill_at = t
                filling += take
                r_free = max(r - filling / l_top, 1e-9)
            if self._fills and self._dec_steps > 0:
                # A fill's prompts are prefilled in order, so a share of its requests already
                # decode, one token per fill iteration: they complete meanwhile (D / (E[O] - 1)
                # per iteration), and what waits takes their seats at once, as in `fast`.
                cohorts = []
                for end, count in self._fills:
                    decoding = count * min(max((t + h / 2.0 - end) / self.fill_s + 1.0, 0.0), 1.0)
                    done = min(decoding * h / (self._dec_steps * self.fill_t), count)
                    refill = min(done, backlog)
                    backlog -= refill
                    admitted += refill
                    filled += refill
                    total -= done - refill
                    area += (done - refill) * h / 2.0  # the mean over the step, not its end
                    # The prompts taken into freed seats are prefilled after the rest, at the
                    # fill's pace: the fill ends that much later (l_top / x_pf = fill_s).
                    later = refill * self.fill_s / count if count > 0 else 0.0
                    cohorts.append((end + later, count - done + refill))
                self._fills = cohorts
                filling = sum(f for _, f in cohorts)
                r_free = max(r - filling / l_top, 1e-9)
            a = lam / r_free
            l0 = held / r_free
            w = unprefilled / r_free
            full = h  # how long the replicas are full in this step
            held_s = 0.0  # the integral over the step of those in service, per replica
            if l0 < l_top * (1.0 - 1e-9):
                # Admitted faster than it prefills, or still prefilling what was: every
                # iteration is filled to the budget with prompts (the table at a >= x_pf).
                g0, k = completion(ct, l0, max(a, x_pf) if w > 0 else a)
                w = max(w + (a - x_pf) * h, 0.0) if (w > 0 or a > x_pf) else 0.0
                if k > 1e-12:
                    target = l0 + (a - g0) / k
                    l1 = target + (l0 - target) * math.exp(-h * k)
                else:
                    target, l1 = math.inf, l0 + (a - g0) * h
                if l1 <= l_top:
                    full = 0.0
                    admitted += a * h * r_free
                    held_s = (l0 + max(l1, 0.0)) / 2.0 * h
                else:  # full within the step: below the seats until then
                    if k > 1e-12:
                        fill = -math.log((target - l_top) / (target - l0)) / k
                    else:
                        fill = (l_top - l0) / max(a - g0, 1e-12)
                    full = max(h - fill, 0.0)
                    admitted += a * (h - full) * r_free
                    held_s = (l0 + l_top) / 2.0 * (h - full)
                    l0 = l_top
            if full > 0:  # full: admits what completes, the rest waits
                x_top = min(x_top_steady, x_pf)  # no faster than it prefills
                if w > 0:  # the prompts admitted but not prefilled go first, little completes
                    slow = self._full_prefilling
                    clear = min(w / max(x_pf - slow, 1e-9), full)
                    w -= (x_pf - slow) * clear
                    x_top = (slow * clear + x_top * (full - clear)) / full
                inflow = min(x_top * full, a * full + backlog / r_free)
                l1 = l0 - x_top * full + inflow
                backlog += (a * full - inflow) * r_free
                admitted += inflow * r_free
                held_s += (l0 + l1) / 2.0 * full
            l1 = max(l1, 0.0)
            unprefilled = min(max(w, 0.0), l1) * r_free
            area += held_s * r_free + filling * h
            total = l1 * r_free + filling
        self._in_service, self._backlog = total, max(backlog, 0.0)
        self._unprefilled = unprefilled
        return admitted, area, filled

    def _drain(self, dt: float) -> float:
        """Requests left on replicas that were scaled down finish at the pace of one time in
        service of the remaining ones, outside the autoscaler's count (as a draining replica's
        in `fast`); returns their integral over dt."""
        if self._draining <= 0:
            return 0.0
        service_s = op_at(self.ops, self._x)[4]
        left = self._draining * math.exp(-dt / service_s)
        area = (self._draining - left) * service_s
        self._draining = left if left > 1e-9 else 0.0
        return area

    def _rate_at(self, held: float) -> float:
        """g(l): the per-replica rate whose steady state holds `held` requests (kernels)."""
        return rate_at(self.ops, held)

    # --- what the fleet asks ------------------------------------------------------------------
    def start(self, now: float) -> None:
        pass  # the flows start at the service's start (set up with the traffic grid)

    def mean_lengths(self) -> tuple[float, float, float]:
        """Mean prompt tokens prefilled and found cached, and output tokens, of the pool."""
        return (
            float(self.pool_prefill.mean()),
            float(self.pool_cached.mean()),
            float(self.pool_output.mean()),
        )

    def arrived(self) -> float:
        return self._arrived

    def metric(self, kind: str) -> float:
        if kind == "queue":
            return self._backlog
        return self._count()

    def _count(self) -> float:
        """The requests in the service (waiting or in service on a ready replica) as a count
        taken now would find them: the flow's plus its fluctuation, one draw per moment, shared
        by the autoscaler's metric and the `in_flight` column of the time series (the flow's
        part as it stands at the call: a scale-down between the two leaves the drained
        requests out of the column, as in `fast`)."""
        now = self.fleet.now
        if self._count_at != now:
            self._count_at = now
            self._drawn = self._fluctuation(now)  # drawn whatever the state: the AR(1) goes on
        # The seats bound the count in service: full replicas (a backlog waits) hold l_top
        # each, whatever the fluctuation, and none holds fewer than none.
        held = self._in_service + (self._drawn if self._backlog <= 0 else 0.0)
        seats = max(len(self.ready) * self._op_l_list[-1], self._in_service)
        return self._backlog + min(max(held, 0.0), seats)

    def _fluctuation(self, now: float) -> float:
        """What a count of the requests in service would add to the flow's mean now.

        The number in service is a birth-death process: arrivals at rate Lambda, completions at
        D(L) = R g(L / R), g the inverse of l(x) = x T_s(x). Its linear-noise approximation
        (van Kampen, Stochastic Processes in Physics and Chemistry, 3rd ed., ch. X; an
        Ornstein-Uhlenbeck process about the flow) has variance (Lambda + D) / (2 D') =
        R x l'(x) and time constant tau = l'(x): Poisson with mean L, as M/G/inf, where T_s
        does not grow with load, and wider and slower near a replica's knee, where it does. The
        flow already follows the tick's arrival count, an average of the arrival noise over the
        tick dt that carries a share (tau / dt) tanh(dt / (2 tau)) of that variance (an AR(1)
        with coefficient exp(-dt / tau) fed by the tick's rate); the draw adds the rest, as an
        AR(1) over the time between ticks. `fast` runs show the variance: 4 replicas of
        llama3-8b at 40 to 66 requests per second vary by 136 to 906 requests squared about their
        mean, this model 127 to 818 (docs/background/serving.md). The flow itself (_serve)
        relaxes faster, with 1 / (dG/dl) at the admissions held; the fluctuation keeps the
        steady state's l'(x), whose variance is the one `fast`'s counts show (tests/
        test_fluid.py); with 1 / (dG/dl) in its place the variance would be 20 % to 60 %
        smaller (the two time constants' ratio: 0.81 for llama3-8b at 10 requests/s, 0.39
        for llama3-70b TP4 at 10)."""
        r = len(self.ready)
        gap, self._noise_t = now - self._noise_t, now
        if not r or self._in_service <= 0:
            self._noise = 0.0
            return 0.0
        x = rate_at(self.ops, self._in_service / r)
        tau = op_at(self.ops, x)[6]
        u = self.interval_s / tau
        share = 1.0 - math.tanh(u / 2.0) / u
        variance = r * x * tau * share
        rho = math.exp(-gap / tau)
        self._noise = rho * self._noise + math.sqrt(1.0 - rho * rho) * float(
            self._noise_rng.standard_normal()
        )
        return math.sqrt(variance) * self._noise

    def row(self) -> tuple[float, float, float]:
        kv = op_at(self.ops, self._x)[5] if self.ready else 0.0
        return self._count(), self._backlog, kv

    def in_flight(self, index: int) -> int:
        return 0  # no requests of a replica's own

    def replica_ready(self, replica: ReplicaView, now: float) -> None:
        pass  # a replica joining a backlog takes it in the flows (a fill, _serve)

    def scaled_down(self, ready_before: int, ready_after: int) -> None:
        """A scale-down: the removed replicas' share of the requests in service drains (see
        _drain) while their nodes go back at once."""
        if ready_before and ready_after < ready_before:
            self._draining += self._take_share((ready_before - ready_after) / ready_before)

    def _take_share(self, share: float) -> float:
        """Remove a share of the requests in service (and of each fill) and return it."""
        out = self._in_service * share
        self._in_service -= out
        self._unprefilled *= 1.0 - share
        self._fills = [(end, count * (1.0 - share)) for end, count in self._fills]
        return out

    def node_failing(self, hit: Sequence[ReplicaView]) -> None:
        """The requests in service on the replicas of a failed node go back to the backlog."""
        ready = sum(1 for r in hit if r.state == "ready")
        if ready and self.ready:
            lost = self._take_share(ready / len(self.ready))
            self._backlog += lost
            self._preempted += lost

    def evicted(self, replica: ReplicaView, now: float) -> list[int]:
        return []

    def stopped(self, replica: ReplicaView) -> None:
        pass

    def reroute(self, requests: list[int], now: float) -> None:
        pass

    # --- results ------------------------------------------------------------------------------
    def close(self, horizon: float) -> None:
        self._latency = self._latency_samples()
        rtt = self.spec.network_rtt_s  # the users' round trip: on the first token, once
        if rtt > 0 and self.role != "decode":
            lat = self._latency
            lat["ttft"] = lat["ttft"] + rtt
            lat["e2e"] = lat["e2e"] + rtt

    def requests_frame(self) -> dict[str, np.ndarray]:
        return {}  # no per-request table in this tier

    def _latency_samples(self) -> dict[str, np.ndarray]:
        """Step 3 of the module docstring (kernels.fluid.latency_samples)."""
        return latency_samples(
            self._intervals,
            self._mc_rng,
            self.rep,
            self.ops,
            self.pool_prefill,
            self.pool_output,
            *self._kept_arrivals(),
        )

    def _kept_arrivals(self) -> tuple[np.ndarray, np.ndarray]:
        """The cumulative arrivals not dropped and the times they are counted at: the traffic
        grid's, or a decode side's, its prefill side's completions."""
        if self.source is not None:
            done = np.asarray(self.source._done_n) * (1.0 - self.drop_share)
            return done, np.asarray(self.source._done_t)
        if self._loop is not None:
            return np.asarray(self._arr_n), np.asarray(self._arr_t)
        return self.cum_arrivals * (1.0 - self.drop_share), self.edges

    def summary(self, horizon: float, active_s: float) -> dict[str, Any]:
        """The flows' part of the service's summary (docs/reference/metrics.md); a
        disaggregated service's prefill side reports both sides' (`_disaggregated_summary`),
        its decode side nothing of its own."""
        if self.role == "decode":
            return {}
        if self.partner is not None:
            return self._disaggregated_summary(active_s)
        lat = self._latency
        w = lat["weight"]
        completed = max(self._admitted - self._in_service - self._draining, 0.0)
        slo = self.spec.slo
        attained: float | None = None
        met: dict[str, bool] = {}
        if slo is not None and w.size:
            tpot_all = np.where(
                lat["output"] > 1,
                (lat["e2e"] - lat["ttft"]) / np.maximum(lat["output"] - 1.0, 1.0),
                0.0,
            )
            attained, met = slo_attainment(
                slo,
                lat["ttft"],
                tpot_all,
                lat["tpot"],
                dropped=self._dropped,
                weights=w,
                tpot_weights=lat["tpot_weight"],
            )
        return {
            **self._counts(completed, self._dropped, self.mean_output, active_s),
            "ttft_s": latency_stats(lat["ttft"], w),
            "tpot_s": latency_stats(lat["tpot"], lat["tpot_weight"]),
            "e2e_s": latency_stats(lat["e2e"], w),
            "queue_wait_s": latency_stats(lat["wait"], w),
            "preemptions": round(self._preempted),
            "slo_attainment": attained,
            "slo_met": met,
            "in_system_mean": self._fluid_area / active_s if active_s else 0.0,
            **self._prefix_summary(),
            **self._conversation_summary(),
        }

    def _counts(
        self, completed: float, dropped: float, mean_output: float, active_s: float
    ) -> dict[str, Any]:
        """The summary's request counts and tokens from the flows' totals, rounded."""
        output_tokens = completed * mean_output
        requests = round(self._arrived)
        done = min(round(completed), requests)
        drop = min(round(dropped), requests - done)
        return {
            "requests": requests,
            "completed": done,
            "dropped": drop,
            "in_flight": requests - done - drop,
            "output_tokens": round(output_tokens),
            "output_tokens_per_s": output_tokens / active_s if active_s else 0.0,
        }

    def _disaggregated_summary(self, active_s: float) -> dict[str, Any]:
        """A disaggregated service in the fluid tier: TTFT from the prefill side's flows, the
        later tokens from the decode side's (whose requests arrive with their KV and take one
        token to admit), the two taken as independent. A request's KV moves over its prefill
        replica's link, an M/G/1 queue of transfers: service S = bytes / bandwidth (the pool's
        prompts), mean wait W = lambda E[S^2] / (2 (1 - rho)) at the mean rate per prefill
        replica (Pollaczek-Khinchine), its distribution taken as P(wait > 0) = rho and
        exponential beyond; a transfer's time S + latency, added to the second token (and so
        to TPOT over the output's later tokens and to E2E). E2E's percentiles by Monte Carlo
        over the two sides' samples."""
        d = self.partner
        assert d is not None
        a, b = self._latency, d._latency
        wa, wb = a["weight"], b["weight"]
        bw, lat_s = self.link
        m = self.model_args
        size = kv_bytes_per_sequence(m, self.pool_prompt, self.spec.kv_precision, 1)
        s = size / bw
        replicas = max(self.spec.initial_replicas, 1)
        lam = float(self.cum_arrivals[-1]) * (1.0 - self.drop_share) / max(active_s, 1e-9)
        lam /= replicas
        rho = min(lam * float(s.mean()), 0.999)
        wait = lam * float((s * s).mean()) / (2.0 * (1.0 - rho))
        xfer = s + lat_s
        rng = np.random.default_rng(self._mc_rng.integers(1 << 62))
        k = 20_000
        wait_draw = np.where(rng.random(k) < rho, rng.exponential(wait / max(rho, 1e-12), k), 0.0)
        move = xfer[rng.integers(0, xfer.size, k)] + wait_draw
        # the decode side's time from its request's arrival there to its last token, over the
        # output's later tokens (its one admission token stands for the first decode step)
        out_b = np.maximum(b["output"] - 1.0, 1.0)
        if wa.size and wb.size:
            ia = rng.choice(wa.size, size=k, p=wa / wa.sum())
            ib = rng.choice(wb.size, size=k, p=wb / wb.sum())
            ttft_draw = a["ttft"][ia]
            e2e = ttft_draw + move + b["e2e"][ib]
            tpot_draw = np.where(b["output"][ib] > 1, (b["e2e"][ib] + move) / out_b[ib], 0.0)
        else:
            ttft_draw = e2e = tpot_draw = np.zeros(0)
        multi = b["output"] > 1
        tpot = (b["e2e"] + float(move.mean())) / out_b
        # done on the decode side, whose arrivals are this side's completions; dropped on
        # either side
        completed = d._completed()
        slo = self.spec.slo
        attained: float | None = None
        met: dict[str, bool] = {}
        dropped = self._dropped + d._dropped
        if slo is not None and ttft_draw.size:
            attained, met = slo_attainment(
                slo, ttft_draw, tpot_draw, tpot_draw[tpot_draw > 0], dropped=0.0
            )
            if attained is not None and self._arrived > 0:
                attained *= 1.0 - dropped / max(self._arrived, 1.0)
        counts = self._counts(completed, dropped, d.mean_output, active_s)
        moved = completed * float(size.mean())
        qs = np.array([0.5, 0.9, 0.99])
        tail = np.maximum(0.0, -(wait / max(rho, 1e-12)) * np.log((1.0 - qs) / max(rho, 1e-12)))
        return {
            **counts,
            "ttft_s": latency_stats(a["ttft"], wa),
            "tpot_s": latency_stats(tpot[multi], wb[multi]),
            "e2e_s": latency_stats(e2e),
            "queue_wait_s": latency_stats(a["wait"], wa),
            "preemptions": round(self._preempted + d._preempted),
            "slo_attainment": attained,
            "slo_met": met,
            "in_system_mean": (self._fluid_area + d._fluid_area) / active_s if active_s else 0.0,
            **self._prefix_summary(),
            **self._conversation_summary(),
            "kv_transfer": {
                "link": self.spec_link,
                "transfers": counts["completed"],
                "bytes_gb": moved / 1e9,
                "mean_gb": float(size.mean()) / 1e9,
                "time_s": latency_stats(xfer),
                "wait_s": {
                    "mean": wait,
                    "p50": float(tail[0]),
                    "p90": float(tail[1]),
                    "p99": float(tail[2]),
                },
                "link_gb_s": bw / 1e9,
                "link_utilization": rho,
            },
        }

    def _conversation_summary(self) -> dict[str, Any]:
        """With conversations: the turns as modelled (the arrivals, the pool's share of first
        turns, the modelled share of later turns that hit)."""
        if self.turns is None:
            return {}
        turns = round(self._arrived)
        started = round(self._loop.started) if self._loop is not None else 0
        later = self.pool_context > 0
        return {
            "conversations": {
                "started": started,
                "turns": turns,
                "turns_per_conversation": turns / started if started else 0.0,
                "later_turns": turns - started,
                "later_turn_hit_rate": self.conv_hit,
                "later_turn_prompt_tokens_mean": (
                    float(self.pool_prompt[later].mean()) if later.any() else 0.0
                ),
            }
        }

    def _prefix_summary(self) -> dict[str, Any]:
        """With system prompts: the prefix cache as modelled (the share of requests that hit,
        kernels/caching.py, times the requests admitted)."""
        sp = self.spec.system_prompts
        if sp is None and self.turns is None and self._chains is None:
            return {}
        admitted = self._admitted
        mean_prompt = float(self.pool_prompt.mean())
        cached = float(self.pool_cached.mean())
        return {
            "prefix_cache": {
                "enabled": bool(
                    self.spec.prefix_cache.enabled
                    and (
                        self.turns is not None
                        or self._chains is not None
                        or (sp is not None and sp.tokens >= BLOCK_TOKENS)
                    )
                ),
                "hit_rate_tokens": cached / mean_prompt if mean_prompt else 0.0,
                "prefill_tokens_saved": round(admitted * cached),
                "requests_hit": round(admitted * float((self.pool_cached > 0).mean())),
                "requests_admitted": round(admitted),
                "evictions": 0,
            }
        }
