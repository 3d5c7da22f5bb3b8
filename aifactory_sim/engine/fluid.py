"""The `fluid` serving tier: a service advanced as aggregate flows, for weeks of heavy traffic.

A fluid service keeps everything of a per-request one that is about replicas (nodes, cold
starts, the autoscaler, drains, failures, the ledger; engine/inference.py) and replaces the
requests by flows. Per interval between two moments that matter (a tick of the traffic grid, an
autoscaler decision, a replica becoming ready, a failure) it knows R ready replicas, the
arrivals of the interval and a backlog Q, and computes:

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
2. The flow (FluidService._serve). Per replica, l requests in service complete at G(l, a)
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
   (FluidService._fluctuation: variance R x l'(x), the linear-noise approximation).
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
from scipy.special import gammaln

from ..kernels.inference import BLOCK_TOKENS, offline_steady_state
from .fleet import ReplicaSizing
from .traffic import counts_per_tick, draw_requests, lengths, tick_edges

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..spec.inference import InferenceService
    from .ports import FleetView, ReplicaView

#: Length draws the latency model and the moments come from.
POOL = 1 << 16
#: Latency samples per interval: 32, fewer (down to 8) when a long run has many intervals,
#: so that a run never draws much more than MAX_SAMPLES in all.
SAMPLES = 32
MIN_SAMPLES = 8
MAX_SAMPLES = 1 << 19
#: Candidate iterations per sample for the size-biased choice of the one under way.
CANDIDATES = 6
#: Points of the operating-point grid over x in [0, x_hi].
GRID = 512
#: Widest range of prompt counts per iteration the Poisson mixture sums over.
KMAX = 512
#: Fixed-point iterations (the map is a contraction: t grows slower than linearly in t).
FIXED_POINT_ITERATIONS = 100
#: Points of the completion-rate table G(l, a) over requests held and admission rate.
TABLE_L = 65
TABLE_A = 33


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
    ):
        self.spec = spec
        self.table = sizing.table
        self.kv_tokens = sizing.kv_tokens
        self.model_args, self.gpu_args = sizing.model_args, sizing.gpu_args
        self.interval_s = interval_s
        self._init_requests(rngs, span_s)

    @property
    def tier(self) -> str:
        return "fluid"

    def connect(self, fleet: FleetView) -> None:
        self.fleet = fleet

    @property
    def ready(self) -> list[int]:
        """The fleet's ready replicas (read through the fleet: a test may rebind the list)."""
        return self.fleet.ready

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
            if prompt is None or output is None or prompt.size == 0:
                prompt = output = np.ones(1, dtype=np.int64)
        else:
            assert spec.prompt_tokens is not None and spec.output_tokens is not None
            prompt = lengths(spec.prompt_tokens, POOL, rngs["prompts"])
            output = lengths(spec.output_tokens, POOL, rngs["outputs"])
        too_long = prompt + output > self.kv_tokens
        if not b.chunked_prefill:
            too_long |= prompt > b.max_batched_tokens
        self.drop_share = float(too_long.mean())
        keep = ~too_long if not too_long.all() else np.ones_like(too_long)
        self.pool_prompt = prompt[keep].astype(np.float64)
        self.pool_output = output[keep].astype(np.float64)
        self._mc_rng = rngs["router"]
        self._noise_rng = rngs["metric"]
        self._noise = 0.0
        self._noise_t = start
        self._count_at, self._drawn = math.nan, 0.0
        i, o = self.pool_prompt, self.pool_output
        self.mean_prompt = float(i.mean())
        self.mean_output = float(o.mean())
        self.mean_pairs = float((i * (i + 1.0) / 2.0).mean())
        decode_steps = float((o - 1.0).mean())
        self.mean_context = self.mean_prompt + (
            float((o * (o - 1.0) / 2.0).mean()) / decode_steps if decode_steps > 0 else 0.0
        )
        self.output_cv2 = float(o.var() / o.mean() ** 2)
        self._operating_points()
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

    def _iteration_s(
        self,
        prefill: np.ndarray,
        decode: np.ndarray,
        context: np.ndarray,
        pairs: np.ndarray,
        prompts: np.ndarray,
    ) -> np.ndarray:
        """The kernel's iteration time for fractional batches: the replica's IterationTable,
        linear between whole tokens and sequences (exact at whole numbers)."""
        tab = self.table
        tokens = np.clip(prefill + decode, 0.0, len(tab.tokens) - 1.0)
        seqs = np.clip(decode + prompts, 0.0, len(tab.sampled) - 1.0)
        return (
            np.interp(tokens, self._tok_axis, tab.tokens)
            + np.interp(seqs, self._seq_axis, tab.sampled)
            + tab.per_context * context
            + tab.per_prefill_pair * pairs
        )

    def _operating_points(self) -> None:
        """The replica's steady state on a grid of per-replica admission rates (step 1 of the
        module docstring), and the saturation rate x_max."""
        spec, b = self.spec, self.spec.batching
        tab = self.table
        self._tok_axis = np.arange(len(tab.tokens), dtype=np.float64)
        self._seq_axis = np.arange(len(tab.sampled), dtype=np.float64)
        ei, eo = self.mean_prompt, self.mean_output
        dec_steps = max(eo - 1.0, 0.0)
        one = np.ones(1)
        t_min = float(self._iteration_s(0.0 * one, one, ei * one, 0.0 * one, 0.0 * one)[0])
        closed = offline_steady_state(  # the saturation rate at mean lengths, closed form
            self.model_args,
            self.gpu_args,
            prompt_tokens=ei,
            output_tokens=eo,
            max_num_seqs=b.max_num_seqs,
            max_batched_tokens=b.max_batched_tokens,
            tp=spec.tp,
            precision=spec.precision,
            kv_precision=spec.kv_precision,
            kv_capacity=self.kv_tokens,
        )
        x_hi = 1.5 * float(closed["requests_per_iteration"] / closed["iteration_time_s"])
        x = x_hi * np.linspace(0.0, 1.0, GRID)[:, None]
        t = np.full((GRID, 1), t_min)
        for _ in range(FIXED_POINT_ITERATIONS):
            t_new = self._mixture(x * t, x * dec_steps * t)[0]
            if np.allclose(t_new, t, rtol=1e-12, atol=0.0):
                t = t_new
                break
            t = t_new
        resid = max(1.0, ei / b.max_batched_tokens)
        half = (BLOCK_TOKENS - 1) / 2.0

        def usage_of(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            n, d = x * t, x * dec_steps * t
            return np.maximum.reduce(
                [
                    (n * ei + d) / b.max_batched_tokens,
                    (d + n * resid) / b.max_num_seqs,
                    (d * (ei + eo / 2.0 + half) + n * resid * (ei + half)) / self.kv_tokens,
                ]
            )[:, 0]

        usage = usage_of(x, t)
        fits = np.flatnonzero(usage <= 1.0)
        last = int(fits[-1]) if fits.size else 0
        if 0 < last < GRID - 1 and usage[last] < 1.0:
            # The limit falls between two grid points, where l(x) is steep (17 requests a
            # step for llama3-70b TP4): end the grid on it, at usage 1 (linear in between).
            w = (1.0 - usage[last]) / (usage[last + 1] - usage[last])
            x_end = x[last] + w * (x[last + 1] - x[last])
            t_end = t[last] + w * (t[last + 1] - t[last])
            if usage_of(x_end[None, :], t_end[None, :])[0] <= 1.0 + 1e-9:
                last += 1
                x = np.concatenate((x[:last], x_end[None, :]))
                t = np.concatenate((t[:last], t_end[None, :]))
        n = x * t
        d = x * dec_steps * t
        t_mean, t_decode = self._mixture(n, d)
        stop = max(last, 1) + 1
        self.x_max = float(x[max(last, 1), 0])
        self.seats = min(float(b.max_num_seqs), self.kv_tokens / (ei + eo / 2.0 + half))
        self.op_x = x[:stop, 0]
        self.op_t = t_mean[:stop, 0]
        self.op_n = n[:stop, 0]
        self.op_d = d[:stop, 0]
        self.op_t_decode = t_decode[:stop, 0]
        self.op_service_s = (resid + dec_steps) * self.op_t
        self.op_kv = (self.op_d * (ei + eo / 2.0 + half) + self.op_n * resid * (ei + half)) / (
            self.kv_tokens
        )
        # Requests in service per replica, l(x) = x T_s(x), and its slope: the time constant
        # with which the number in service returns to l after a disturbance (see _metric).
        self.op_l = self.op_x * self.op_service_s
        slope = np.gradient(self.op_l, self.op_x) if self.op_x.size > 1 else self.op_service_s
        self.op_tau = np.maximum(slope, self.op_service_s)
        # A replica that takes l_top requests at once (joining a backlog) prefills their
        # prompts in iterations filled to the token budget beside the decodes of those already
        # prefilled, l_top / 2 on average: t_fill per iteration, the whole in fill_s.
        half_full = np.array([min(float(self.op_l[-1]), b.max_batched_tokens - 1.0) / 2.0])
        room = b.max_batched_tokens - half_full
        self.fill_t = float(
            self._iteration_s(
                room,
                half_full,
                half_full * self.mean_context,
                room * self.mean_pairs / max(ei, 1.0),
                np.maximum(room / max(ei, 1.0), 1.0),
            )[0]
        )
        self.fill_s = float(self.op_l[-1]) * ei / float(room[0]) * self.fill_t
        #: Prompts per second a replica prefills in iterations filled to the budget.
        self.prefill_rate = float(self.op_l[-1]) / self.fill_s
        self._dec_steps = dec_steps
        self._completion_table(resid, dec_steps)
        #: G at every seat taken while prompts wait unprefilled (_serve's full replicas).
        self._full_prefilling = self._completion(float(self.op_l[-1]), self.prefill_rate)[0]
        # Plain lists for the per-interval look-ups (bisect on floats beats numpy there).
        self._op_xs = self.op_x.tolist()
        self._op_l_list = self.op_l.tolist()
        self._op_rows = np.stack(
            [
                self.op_t,
                self.op_t_decode,
                self.op_n,
                self.op_d,
                self.op_service_s,
                self.op_kv,
                self.op_tau,
            ],
            axis=1,
        ).tolist()

    def _completion_table(self, resid: float, dec_steps: float) -> None:
        """G(l, a): the rate at which a replica holding l requests completes them while it
        admits a requests/s, on a grid of l in [0, l_top] and a in [0, 1.5 x_max] (a
        replica admitting more fills its seats with prompts it cannot prefill yet: _serve).

        The prompts prefilled per iteration are those admitted, n = a t, not those completing:
        away from the steady state (G = a, where G is the operating point's g(l)) the two part.
        Of the l in service, n r are in prefill and D = l - n r decode, one token an iteration,
        so D / (E[O] - 1) complete per iteration (geometric or not: in the mean over the
        decoding sequences, as Little's law per iteration in step 1 of the module docstring),
        and t is the fixed point of t = f(a t, D) (the kernel's mean iteration, _mixture). A
        replica that took a backlog and admits little afterwards decodes without prefills,
        and completes up to 2.5 times faster than g(l) (llama3-70b FP8 TP4 holding 123
        requests: 25 requests/s against 10). At fixed a, G grows with l faster than g does
        (prefill does not grow with l), so the number in service relaxes faster than l'(x)."""
        l_top = float(self.op_l[-1])
        a_top = float(self.op_x[-1]) * 1.5
        ls = l_top * np.linspace(0.0, 1.0, TABLE_L)[:, None]
        a = a_top * np.linspace(0.0, 1.0, TABLE_A)[None, :]
        ls, a = np.broadcast_arrays(ls, a)
        ls, a = ls.reshape(-1, 1), a.reshape(-1, 1)

        def batch(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            n = np.minimum(a * t, ls / resid)  # no more in prefill than are held
            return n, ls - resid * n

        def excess(t: np.ndarray) -> np.ndarray:
            return self._mixture(*batch(t))[0] - t

        # Secant iterations on f(t) - t (smooth in t; plain iteration oscillates near the
        # knee, where more prefill shortens D as much as it lengthens t).
        t0 = np.interp(ls, self.op_l, self.op_t)  # the steady state's, where a = g(l)
        r0 = excess(t0)
        t = t0 + r0
        for _ in range(FIXED_POINT_ITERATIONS):
            r1 = excess(t)
            if np.all(np.abs(r1) <= 1e-8 * t):
                break
            slope = (r1 - r0) / np.where(t != t0, t - t0, 1.0)
            step = np.where((t != t0) & (slope < 0.0), -r1 / np.where(slope < 0.0, slope, -1.0), r1)
            t0, r0 = t, r1
            t = np.maximum(t + step, 1e-9)
        n, d = batch(t)
        rate = (d / (max(dec_steps, 1e-9) * t)).reshape(TABLE_L, TABLE_A)
        if dec_steps <= 0:  # every request completes with its prefill: the 1-D g(l)
            rate = np.interp(ls, self.op_l, self.op_x).reshape(TABLE_L, TABLE_A)
        self._g_dl = l_top / (TABLE_L - 1)
        self._g_da = a_top / (TABLE_A - 1)
        self._g_rows = rate.tolist()
        # The batch of each state, for the latency model: (t, t_decode, n, D) per point.
        t_decode = self._mixture(n, d)[1]
        batch_of = np.stack([t, t_decode, n, d], axis=-1).reshape(TABLE_L, TABLE_A, 4)
        self._batch_rows = batch_of.tolist()

    def _cell(self, held: float, admit: float) -> tuple[int, int, float, float]:
        """The completion table's cell holding (held, admit), clamped to the grid, and the
        position within it: (i, j, u, v)."""
        fl = min(max(held / self._g_dl, 0.0), TABLE_L - 1.000001)
        fa = min(max(admit / self._g_da, 0.0), TABLE_A - 1.000001)
        i, j = int(fl), int(fa)
        return i, j, fl - i, fa - j

    def _completion(self, held: float, admit: float) -> tuple[float, float]:
        """(G(l, a), dG/dl at fixed a) per replica: bilinear on the table, the slope that of
        the l segment holding `held` (so an exponential-Euler step is exact within it)."""
        i, j, u, v = self._cell(held, admit)
        lo, hi = self._g_rows[i], self._g_rows[i + 1]
        g_lo = lo[j] + v * (lo[j + 1] - lo[j])
        g_hi = hi[j] + v * (hi[j + 1] - hi[j])
        return g_lo + u * (g_hi - g_lo), (g_hi - g_lo) / self._g_dl

    def _batch(self, held: float, admit: float) -> list[float]:
        """(t, t_decode, n, D) of a replica holding `held` requests while it admits `admit`
        per second (bilinear on the completion table's grid)."""
        i, j, u, v = self._cell(held, admit)
        rows = self._batch_rows
        w = ((1.0 - u) * (1.0 - v), (1.0 - u) * v, u * (1.0 - v), u * v)
        corners = (rows[i][j], rows[i][j + 1], rows[i + 1][j], rows[i + 1][j + 1])
        return [sum(wk * c[q] for wk, c in zip(w, corners, strict=True)) for q in range(4)]

    def _mixture(self, n: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, ...]:
        """The mean iteration time when K ~ Poisson(n) prompts join D decodes, and the
        decode-only one (K = 0). Prompts of mean length, their prefill
        cut to the token budget left by the decodes (chunked prefill). K runs over the
        Poisson's bulk (n +- 7 sqrt(n) + 8), whatever n."""
        b = self.spec.batching
        width = int(min(np.ceil(14.0 * np.sqrt(float(n.max())) + 17.0), KMAX))
        lo = np.floor(np.maximum(n - 7.0 * np.sqrt(n) - 8.0, 0.0))
        k = lo + np.arange(width, dtype=np.float64)[None, :]
        k = np.concatenate((np.zeros_like(n), k), axis=1)
        safe_n = np.maximum(n, 1e-300)
        pmf = np.exp(k * np.log(safe_n) - n - gammaln(k + 1.0))
        pmf[:, :1] = 0.0  # K = 0 is evaluated apart, for the decode-only time
        pmf[:, 1:] = np.where(n > 0, pmf[:, 1:], (k[:, 1:] == 0).astype(np.float64))
        room = np.maximum(b.max_batched_tokens - d, 0.0)
        prefill = np.minimum(k * self.mean_prompt, room)
        share = np.where(k > 0, prefill / np.maximum(k * self.mean_prompt, 1.0), 0.0)
        f = self._iteration_s(prefill, d, d * self.mean_context, k * self.mean_pairs * share, k)
        mean = (pmf * f).sum(axis=1, keepdims=True) / pmf.sum(axis=1, keepdims=True)
        return mean, f[:, :1]

    def new_core(self, index: int) -> FluidCore:
        return FluidCore()

    def _op(self, x: float) -> tuple[float, ...]:
        """(t, t_decode, n, D, T_s, kv share, tau) at per-replica rate x (linear interpolation on
        the grid; plain floats: called once per interval)."""
        xs, rows = self._op_xs, self._op_rows
        i = bisect.bisect_right(xs, x)
        if i <= 0:
            return tuple(rows[0])
        if i >= len(xs):
            return tuple(rows[-1])
        w = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
        return tuple(a + w * (b - a) for a, b in zip(rows[i - 1], rows[i], strict=True))

    # --- the flows --------------------------------------------------------------------------
    def _arrivals_until(self, t: float) -> float:
        """Cumulative arrivals at t: the tick's count spread evenly over the tick."""
        edges, cum = self._edges_list, self._cum_list
        k = bisect.bisect_right(edges, t) - 1
        if k < 0:
            return 0.0
        if k >= len(edges) - 1:
            return cum[-1]
        return cum[k] + (cum[k + 1] - cum[k]) * (t - edges[k]) / (edges[k + 1] - edges[k])

    def advance_to(self, t: float) -> None:
        """Integrate the flows to `t`, in pieces that never cross a tick of the traffic grid."""
        edges = self.edges
        while self._t < t:
            k = int(np.searchsorted(edges, self._t, side="right"))
            t1 = min(t, float(edges[k])) if k < edges.size else t
            self._flow(self._t, t1)
            self._t = t1

    def _flow(self, t0: float, t1: float) -> None:
        dt = t1 - t0
        if dt <= 0:
            return
        arrived = self._arrivals_until(t1) - self._arrivals_until(t0)
        self._arrived += arrived
        dropped = arrived * self.drop_share
        self._dropped += dropped
        self._piece(t0, t1, (arrived - dropped) / dt)

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
        x_held = self._rate_at(held)
        t_it, t_dec, n, d, service_s = self._op(x_held)[:5]
        admit = max(admitted - filled, 0.0) / (r * dt)
        if held > 0 and abs(admit - x_held) > 1e-9 * x_held:
            now_b, steady_b = self._batch(held, admit), self._batch(held, x_held)
            t_it *= now_b[0] / steady_b[0]
            t_dec *= now_b[1] / steady_b[1]
            n = max(n + now_b[2] - steady_b[2], 0.0)
            d = max(d + now_b[3] - steady_b[3], 0.0)
            service_s *= x_held / max(self._completion(held, admit)[0], 1e-12)
        busy = 1.0 - math.exp(-in_service / r)
        self.fleet.book_busy(self.spec.tp * r * dt * busy)
        self._fluid_area += area + (q0 + q1) / 2.0 * dt + drained
        self._admitted += admitted
        self._x = x_held
        if admitted > 0:
            # Admission waits only for a seat (a replica's max_num_seqs, or the sequences its
            # KV cache holds at mean lengths): c seats, busy a share u of the time.
            servers = max(r * self.seats, 1.0)
            u = min(area / dt / servers, 0.999)
            p_wait = u ** (math.sqrt(2.0 * (servers + 1.0)) - 1.0) if q1 <= 0 else 0.0
            mean_wait = service_s / (servers * (1.0 - u)) * (1.0 + self.output_cv2) / 2.0
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
        service_s = self._op(self._rate_at(total / r))[4]
        busy_start = backlog > 0 or bool(self._fills) or self._unprefilled > 0
        x_pf = self.prefill_rate
        unprefilled = self._unprefilled
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
                g0, k = self._completion(l0, max(a, x_pf) if w > 0 else a)
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
                x_top = self._op_xs[-1]
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
        service_s = self._op(self._x)[4]
        left = self._draining * math.exp(-dt / service_s)
        area = (self._draining - left) * service_s
        self._draining = left if left > 1e-9 else 0.0
        return area

    def _rate_at(self, held: float) -> float:
        """g(l): the per-replica rate whose steady state holds `held` requests in service (the
        inverse of l(x) = x T_s(x), increasing; x_max beyond the last steady state)."""
        op_l, op_x = self._op_l_list, self._op_xs
        i = bisect.bisect_right(op_l, held)
        if i >= len(op_l):
            return op_x[-1]
        if i <= 0:
            return op_x[0]
        return op_x[i - 1] + (held - op_l[i - 1]) / (op_l[i] - op_l[i - 1]) * (
            op_x[i] - op_x[i - 1]
        )

    # --- what the fleet asks ------------------------------------------------------------------
    def start(self, now: float) -> None:
        pass  # the flows start at the service's start (set up with the traffic grid)

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
            self._drawn = self._fluctuation()  # drawn whatever the state: the AR(1) goes on
        # The seats bound the count in service: full replicas (a backlog waits) hold l_top
        # each, whatever the fluctuation, and none holds fewer than none.
        held = self._in_service + (self._drawn if self._backlog <= 0 else 0.0)
        seats = max(len(self.ready) * self._op_l_list[-1], self._in_service)
        return self._backlog + min(max(held, 0.0), seats)

    def _fluctuation(self) -> float:
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
        now = self.fleet.now
        gap, self._noise_t = now - self._noise_t, now
        if not r or self._in_service <= 0:
            self._noise = 0.0
            return 0.0
        x = self._rate_at(self._in_service / r)
        tau = self._op(x)[6]
        u = self.interval_s / tau
        share = 1.0 - math.tanh(u / 2.0) / u
        variance = r * x * tau * share
        rho = math.exp(-gap / tau)
        self._noise = rho * self._noise + math.sqrt(1.0 - rho * rho) * float(
            self._noise_rng.standard_normal()
        )
        return math.sqrt(variance) * self._noise

    def row(self) -> tuple[float, float, float]:
        kv = self._op(self._x)[5] if self.ready else 0.0
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

    def requests_frame(self) -> dict[str, np.ndarray]:
        return {}  # no per-request table in this tier

    def _latency_samples(self) -> dict[str, np.ndarray]:
        """Step 3 of the module docstring, vectorised over every interval at once."""
        if not self._intervals:
            empty = np.zeros(0)
            return dict.fromkeys(
                ("weight", "ttft", "tpot", "tpot_weight", "e2e", "wait", "output"), empty
            )
        cols = np.array(self._intervals, dtype=np.float64).T
        weight, t0, t1, s0, s1, t_it, t_dec, n, d, p_wait, mean_wait, busy, fill, behind = cols
        k = weight.size
        m = int(np.clip(MAX_SAMPLES // max(k, 1), MIN_SAMPLES, SAMPLES))
        rng = self._mc_rng
        pick = rng.integers(0, self.pool_prompt.size, size=(k, m))
        prompt = self.pool_prompt[pick]
        output = self.pool_output[pick]
        col = (slice(None), None)
        # The fluid FIFO wait of the m-th of M admissions spread evenly over the interval: it
        # is admitted at t when S(t) = s, and arrived when A reached s.
        frac = (np.arange(m) + 0.5) / m
        t_adm = t0[col] + (t1 - t0)[col] * frac
        s_adm = s0[col] + (s1 - s0)[col] * frac
        kept = self.cum_arrivals * (1.0 - self.drop_share)
        fluid_wait = np.maximum(t_adm - np.interp(s_adm, kept, self.edges), 0.0)
        waits = (rng.random((k, m)) < p_wait[col]) * rng.exponential(1.0, (k, m)) * mean_wait[col]
        b = self.spec.batching
        dd = np.broadcast_to(d[col], prompt.shape)
        room = np.maximum(b.max_batched_tokens - dd, 1.0)
        ctx = dd * self.mean_context
        sd_prompt = float(self.pool_prompt.std())

        def prompts_of(count: np.ndarray, cap: np.ndarray) -> np.ndarray:
            """Tokens of `count` prompts: their sum's mean and spread (normal), in [0, cap]."""
            z = rng.standard_normal(count.shape)
            return np.clip(count * self.mean_prompt + np.sqrt(count) * sd_prompt * z, 0.0, cap)

        # Admission waits for the end of the iteration under way, picked in proportion to its
        # length among CANDIDATES iterations of Poisson(n) prompts each (size-biased sampling).
        cand = np.repeat(n[col], m, axis=1)[..., None] * np.ones(CANDIDATES)
        cand_k = rng.poisson(cand).astype(np.float64)
        dd3, room3 = dd[..., None], room[..., None]
        cand_p = prompts_of(cand_k, room3)
        cand_t = self._iteration_s(
            np.minimum(cand_p, room3),
            dd3,
            dd3 * self.mean_context,
            cand_p * (self.mean_pairs / max(self.mean_prompt, 1.0)),
            cand_k,
        )
        cum = np.cumsum(cand_t, axis=2)
        chosen = np.minimum(
            (rng.random((k, m, 1)) * cum[..., -1:] > cum).sum(axis=2), CANDIDATES - 1
        )
        iteration = np.take_along_axis(cand_t, chosen[..., None], axis=2)[..., 0]
        residual = rng.random((k, m)) * iteration * busy[col]
        wait = fluid_wait + waits + residual + behind[col]
        # Prefill: chunks of at most the budget left by the decodes, each one iteration, with
        # the prompts that arrived during the wait for admission.
        chunks = np.ceil(prompt / room)
        last = prompt - (chunks - 1.0) * room
        joined_now = rng.poisson(n[col] / np.maximum(t_it[col], 1e-300) * residual)
        others = prompts_of(joined_now.astype(np.float64), room)
        others_pairs = others * (self.mean_pairs / max(self.mean_prompt, 1.0))
        nn = joined_now.astype(np.float64)

        def with_chunk(c: np.ndarray, before: np.ndarray) -> np.ndarray:
            tokens = np.minimum(others + c, room)
            return self._iteration_s(
                tokens, dd, ctx, others_pairs + c * before + c * (c + 1) / 2.0, nn + 1.0
            )

        full_chunk = with_chunk(room, room / 2.0)
        prefill = with_chunk(last, (chunks - 1.0) * room)
        many = chunks > 1
        if many.any():
            prefill = prefill + np.where(many, (chunks - 1.0) * full_chunk, 0.0)
        # Prompts longer than one iteration's budget queue for it: the budget is one server
        # taking prompts first come first served, a prompt holding it for the iterations
        # beyond its first (the first is the residual above). M/G/1 (Pollaczek-Khinchine,
        # Kleinrock, Queueing Systems I, eq. 5.105): busy with probability rho = lambda E[S],
        # a wait then exponential with mean E[S^2] / (2 E[S] (1 - rho)).
        beyond = np.maximum(prompt / room - 1.0, 0.0) * full_chunk
        lam = (n / np.maximum(t_it, 1e-300))[col]
        es = beyond.mean(axis=1, keepdims=True)
        rho = np.minimum(lam * es, 0.95)
        pk_mean = (beyond**2).mean(axis=1, keepdims=True) / np.maximum(
            2.0 * es * (1.0 - rho), 1e-300
        )
        queued = (rng.random((k, m)) < rho) * rng.exponential(1.0, (k, m)) * pk_mean
        wait = wait + queued
        ttft = wait + prefill
        # TPOT: decode-only iterations, plus the prompts prefilled while it decodes: their
        # number Poisson(n (O - 1)), each adding its prefill's excess over decode-only
        # iterations (all its chunks); the spread of that excess from the prompts drawn here.
        # The request decodes its O - 1 tokens through the intervals that follow its first
        # token, not all in the one it was admitted in: the whole is scaled by the mean
        # iteration along its way over the interval's own (the path integral of 1 / t_it; a
        # request admitted as the seats fill up decodes its first tokens beside many prompts,
        # then at the pace of full replicas; in a steady state the scale is 1).
        steps = np.maximum(output - 1.0, 1.0)
        joined = rng.poisson(n[col] * steps)
        zero = np.zeros_like(prompt)
        own = prefill - chunks * self._iteration_s(zero, dd, ctx, zero, zero)
        mean_own = own.mean(axis=1, keepdims=True)
        another = np.roll(own, 1, axis=1)  # another prompt of the interval, for the skew
        extra = joined * mean_own + np.sqrt(joined) * (another - mean_own)
        pace = (t_dec[col] + n[col] * mean_own)[:, 0]
        first = t_adm + (ttft - fluid_wait)
        scale = self._along(t0, t1, pace, first, steps) / pace[:, None]
        tpot = (t_dec[col] + np.maximum(extra, 0.0) / steps) * scale
        multi = output > 1
        # Fills (_serve): a request taken into an empty replica waits for the prompts taken
        # before it (a uniform share u of fill_s), then decodes at the fill's pace, fill_t per
        # token, until the fill ends: it loses the tokens it would have made at its own pace
        # meanwhile and makes them up after.
        if (fill > 0).any():
            u = rng.random((k, m))
            took = rng.random((k, m)) < fill[col]
            ahead = np.where(took, u * self.fill_s, 0.0)
            wait = wait + ahead
            ttft = ttft + ahead
            during = np.minimum((1.0 - u) * self.fill_s, (output - 1.0) * self.fill_t)
            lost = np.where(took, during / tpot - during / self.fill_t, 0.0)
            tpot = np.where(multi, tpot + np.maximum(lost, 0.0) * tpot / steps, tpot)
        e2e = ttft + (output - 1.0) * tpot
        w = np.broadcast_to((weight / m)[col], prompt.shape)
        return {
            "weight": w.ravel(),
            "ttft": ttft.ravel(),
            "tpot": tpot[multi],
            "tpot_weight": w[multi],
            "e2e": e2e.ravel(),
            "wait": wait.ravel(),
            "output": output.ravel(),
        }

    @staticmethod
    def _along(
        t0: np.ndarray, t1: np.ndarray, pace: np.ndarray, start: np.ndarray, tokens: np.ndarray
    ) -> np.ndarray:
        """Mean seconds per token of `tokens` iterations from `start`, when iterations last
        pace[i] during interval [t0[i], t1[i]] (the intervals in time order; a gap, and the
        time after the last, at the pace before it): the iterations run by time t are
        C(t) = integral of 1 / pace, and the last token comes at C^-1(C(start) + tokens)."""
        pace = np.maximum(pace, 1e-9)
        ends = np.append(t0[1:], t1[-1] + 1e9)  # each interval's pace holds until the next
        times = np.concatenate(([t0[0]], ends))
        count = np.concatenate(([0.0], np.cumsum((ends - t0) / pace)))
        c0 = np.interp(start, times, count)
        done = np.interp(c0 + tokens, count, times)
        return (done - np.maximum(start, t0[0])) / tokens

    def summary(self, horizon: float, active_s: float) -> dict[str, Any]:
        """The flows' part of the service's summary (docs/reference/metrics.md)."""
        lat = self._latency
        w = lat["weight"]
        completed = max(self._admitted - self._in_service - self._draining, 0.0)
        slo = self.spec.slo
        attained: float | None = None
        met: dict[str, bool] = {}
        if slo is not None and w.size:
            ok = np.ones(w.size, dtype=bool)
            tpot_all = np.where(
                lat["output"] > 1,
                (lat["e2e"] - lat["ttft"]) / np.maximum(lat["output"] - 1.0, 1.0),
                0.0,
            )
            if slo.ttft_s is not None:
                ok &= lat["ttft"] <= slo.ttft_s
                met["ttft"] = bool(
                    weighted_percentiles(lat["ttft"], w, [slo.percentile])[0] <= slo.ttft_s
                )
            if slo.tpot_s is not None:
                ok &= tpot_all <= slo.tpot_s
                if lat["tpot"].size:
                    met["tpot"] = bool(
                        weighted_percentiles(lat["tpot"], lat["tpot_weight"], [slo.percentile])[0]
                        <= slo.tpot_s
                    )
            judged = w.sum() + self._dropped
            attained = float((w * ok).sum() / judged) if judged > 0 else None
        output_tokens = completed * self.mean_output
        requests = round(self._arrived)
        done = min(round(completed), requests)
        dropped = min(round(self._dropped), requests - done)
        return {
            "requests": requests,
            "completed": done,
            "dropped": dropped,
            "in_flight": requests - done - dropped,
            "output_tokens": round(output_tokens),
            "output_tokens_per_s": output_tokens / active_s if active_s else 0.0,
            "ttft_s": weighted_stats(lat["ttft"], w),
            "tpot_s": weighted_stats(lat["tpot"], lat["tpot_weight"]),
            "e2e_s": weighted_stats(lat["e2e"], w),
            "queue_wait_s": weighted_stats(lat["wait"], w),
            "preemptions": round(self._preempted),
            "slo_attainment": attained,
            "slo_met": met,
            "in_system_mean": self._fluid_area / active_s if active_s else 0.0,
        }


def weighted_percentiles(x: np.ndarray, w: np.ndarray, q: list[float]) -> np.ndarray:
    """Percentiles q (0-100) of samples x with weights w: the smallest x whose cumulative
    weight reaches q % of the total (the inverse of the weighted empirical CDF)."""
    order = np.argsort(x, kind="stable")
    cw = np.cumsum(w[order])
    idx = np.searchsorted(cw, np.asarray(q) / 100.0 * cw[-1], side="left")
    return x[order][np.minimum(idx, x.size - 1)]


def weighted_stats(x: np.ndarray, w: np.ndarray) -> dict[str, float | None]:
    """mean, p50, p90, p99 of weighted samples; None for none."""
    if x.size == 0 or not w.sum() > 0:
        return dict.fromkeys(("mean", "p50", "p90", "p99"))
    p50, p90, p99 = weighted_percentiles(x, w, [50, 90, 99])
    return {
        "mean": float(np.average(x, weights=w)),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
    }
