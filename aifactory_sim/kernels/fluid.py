"""The `fluid` serving tier's physics, pure numpy: a replica's operating points, its completion
table, the latency approximations, and weighted percentiles. No SimPy and no engine state:
engine/fluid.py (FlowModel) integrates the flows and keeps the state; its module docstring
describes the model step by step (1: operating points, 2: the flow, 3: latency).

- Operating points (`operating_points`): vLLM's steady state by Little's law per iteration,
  n = x t prompts and D = x (E[O] - 1) t decodes per iteration, t the fixed point of the
  kernel's iteration time (kernels/inference.py) over a grid of the per-replica rate x, up to
  the saturation rate x_max of kernels.inference.offline_steady_state's limits (token budget,
  seats, KV cache).
- The completion table (`completion_table`): G(l, a), the rate at which a replica holding l
  requests completes them while it admits a per second (the fluid limit of a server whose
  speed depends on its load; Chen & Yao, Fundamentals of Queueing Networks, 2001, ch. 7).
- Latency (`seat_wait`, `latency_samples`): the wait for a seat of Allen-Cunneen with
  Sakasegawa's probability of waiting (Hopp & Spearman, Factory Physics, 3rd ed., eq. 8.10;
  Sakasegawa, Ann. Inst. Stat. Math. 29, 1977), the residual of the iteration under way
  (size-biased among Poisson candidates), prefill chunks, Pollaczek-Khinchine for prompts
  longer than one iteration's budget (Kleinrock, Queueing Systems I, eq. 5.105), and decode
  paced along the request's way (`along`). Percentiles: kernels/stats.py.
"""

from __future__ import annotations

import bisect
import math
from typing import NamedTuple

import numpy as np
from scipy.special import gammaln

from .inference import BLOCK_TOKENS, IterationTable

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
#: Usage (the largest share of the token budget, the seats or the KV cache a row's steady
#: state needs) at which operating_points holds a row that has no fixed point.
T_CAP_USAGE = 64.0
#: Points of the completion-rate table G(l, a) over requests held and admission rate.
TABLE_L = 65
TABLE_A = 33


class FluidReplica(NamedTuple):
    """A replica as the fluid physics sees it: its iteration table (with the axes of its
    token and sequence columns), its limits, and the run's length moments."""

    table: IterationTable
    tok_axis: np.ndarray
    seq_axis: np.ndarray
    max_batched_tokens: int
    max_num_seqs: int
    kv_tokens: float
    mean_prompt: float
    mean_output: float
    mean_pairs: float  # E[I (I + 1) / 2], the causal attention pairs of a prompt
    mean_context: float  # c_bar: the context averaged over decode steps
    output_cv2: float  # squared coefficient of variation of the output lengths
    #: prompt tokens found in the prefix cache, on average: in the KV cache and the context,
    #: not prefilled (mean_prompt and mean_pairs are the prefilled part's)
    mean_cached: float = 0.0


def fluid_replica(
    table: IterationTable,
    prompt: np.ndarray,
    output: np.ndarray,
    *,
    max_batched_tokens: int,
    max_num_seqs: int,
    kv_tokens: float,
    cached: np.ndarray | None = None,
) -> FluidReplica:
    """The replica with the moments of the run's lengths (float arrays of prompt and output
    tokens, requests too long for the cache left out). With `cached` (each request's prompt
    tokens found in the prefix cache), `prompt` is the part prefilled after them: its chunks
    also attend to the cached tokens."""
    i, o = prompt, output
    s = np.zeros_like(i) if cached is None else cached
    mean_prompt = float(i.mean())
    mean_output = float(o.mean())
    mean_pairs = float((i * s + i * (i + 1.0) / 2.0).mean())
    mean_cached = float(s.mean())
    decode_steps = float((o - 1.0).mean())
    mean_context = (
        mean_prompt
        + mean_cached
        + (float((o * (o - 1.0) / 2.0).mean()) / decode_steps if decode_steps > 0 else 0.0)
    )
    output_cv2 = float(o.var() / o.mean() ** 2)
    return FluidReplica(
        table,
        np.arange(len(table.tokens), dtype=np.float64),
        np.arange(len(table.sampled), dtype=np.float64),
        max_batched_tokens,
        max_num_seqs,
        kv_tokens,
        mean_prompt,
        mean_output,
        mean_pairs,
        mean_context,
        output_cv2,
        mean_cached,
    )


def iteration_s(
    rep: FluidReplica,
    prefill: np.ndarray,
    decode: np.ndarray,
    context: np.ndarray,
    pairs: np.ndarray,
    prompts: np.ndarray,
) -> np.ndarray:
    """The kernel's iteration time for fractional batches: the replica's IterationTable,
    linear between whole tokens and sequences (exact at whole numbers; a decode-only batch,
    prefill 0, takes the table's decode_tokens)."""
    tab = rep.table
    tokens = np.clip(prefill + decode, 0.0, len(tab.tokens) - 1.0)
    seqs = np.clip(decode + prompts, 0.0, len(tab.sampled) - 1.0)
    by_tokens = np.interp(tokens, rep.tok_axis, tab.tokens)
    if tab.split:  # expert-parallel: decode-only iterations dispatch with their own kernels
        alone = np.interp(
            np.minimum(tokens, len(tab.decode_tokens) - 1.0), rep.seq_axis, tab.decode_tokens
        )
        by_tokens = np.where(prefill > 0, by_tokens, alone)
    per_context: float | np.ndarray = tab.per_context
    if tab.decode_per_context != tab.per_context:  # speculative: decode-only steps differ
        per_context = np.where(prefill > 0, tab.per_context, tab.decode_per_context)
    return (
        by_tokens
        + np.interp(seqs, rep.seq_axis, tab.sampled)
        + per_context * context
        + tab.per_prefill_pair * pairs
    )


#: Bisection steps for the carry of chunked prefill (kernels.fluid.mixture): 2^-32 of the room.
CARRY_BISECTIONS = 32


def mixture(rep: FluidReplica, n: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, ...]:
    """The mean iteration time when K ~ Poisson(n) prompts join D decodes, and the
    decode-only one (K = 0). Prompts of mean length, their prefill cut to the token budget
    left by the decodes (chunked prefill), the tokens cut carried into the next iterations:
    each iteration prefills min(K E[I] + c, room), with the carry c that makes the mean what
    arrives, n E[I] (room at most), as a replica's chunked prefill conserves tokens (without
    the carry a replica whose prompts fill the budget, a disaggregated prefill side, would
    prefill 27 % more prompts per second than `fast` does, llama3-70b TP4 at 2,480-token
    prompts). K runs over the Poisson's bulk (n +- 7 sqrt(n) + 8), whatever n."""
    width = int(min(np.ceil(14.0 * np.sqrt(float(n.max())) + 17.0), KMAX))
    lo = np.floor(np.maximum(n - 7.0 * np.sqrt(n) - 8.0, 0.0))
    k = lo + np.arange(width, dtype=np.float64)[None, :]
    k = np.concatenate((np.zeros_like(n), k), axis=1)
    safe_n = np.maximum(n, 1e-300)
    pmf = np.exp(k * np.log(safe_n) - n - gammaln(k + 1.0))
    pmf[:, :1] = 0.0  # K = 0 is evaluated apart, for the decode-only time
    pmf[:, 1:] = np.where(n > 0, pmf[:, 1:], (k[:, 1:] == 0).astype(np.float64))
    room = np.maximum(rep.max_batched_tokens - d, 0.0)
    arrive = k * rep.mean_prompt
    prefill = np.minimum(arrive, room)
    weight = pmf / np.maximum(pmf.sum(axis=1, keepdims=True), 1e-300)
    target = np.minimum(n * rep.mean_prompt, room)
    short = target - (weight * prefill).sum(axis=1, keepdims=True)
    rows = np.flatnonzero(short[:, 0] > 1e-9 * np.maximum(target[:, 0], 1.0))
    if rows.size:  # the carry, by bisection on the mean served (monotone in c)
        a, r, w, goal = arrive[rows], room[rows], weight[rows], target[rows]
        lo, hi = np.zeros_like(goal), r.copy()
        for _ in range(CARRY_BISECTIONS):
            c = (lo + hi) / 2.0
            over = (w * np.minimum(a + c, r)).sum(axis=1, keepdims=True) > goal
            hi, lo = np.where(over, c, hi), np.where(over, lo, c)
        prefill[rows] = np.minimum(a + (lo + hi) / 2.0, r)
    prompts = np.where(prefill > 0, np.maximum(k, 1.0), k)
    pairs = prefill * rep.mean_pairs / max(rep.mean_prompt, 1.0)
    f = iteration_s(rep, prefill, d, d * rep.mean_context, pairs, prompts)
    mean = (pmf * f).sum(axis=1, keepdims=True) / pmf.sum(axis=1, keepdims=True)
    return mean, f[:, :1]


class CompletionTable(NamedTuple):
    """G(l, a) and the batch (t, t_decode, n, D) on a grid of l (step dl) and a (step da)."""

    dl: float
    da: float
    rows: list[list[float]]
    batch_rows: list[list[list[float]]]


class OperatingPoints(NamedTuple):
    """A replica's steady states on the grid of per-replica rates x (the op_* columns), its
    saturation rate and seats, the fill of an empty replica, and its completion table."""

    x_max: float
    seats: float
    op_x: np.ndarray
    op_t: np.ndarray
    op_n: np.ndarray
    op_d: np.ndarray
    op_t_decode: np.ndarray
    op_service_s: np.ndarray
    op_kv: np.ndarray
    op_l: np.ndarray
    op_tau: np.ndarray
    fill_t: float
    fill_s: float
    prefill_rate: float  # prompts per second prefilled in iterations filled to the budget
    dec_steps: float
    completion: CompletionTable
    full_prefilling: float  # G at every seat taken while prompts wait unprefilled
    xs: list[float]  # op_x as a plain list (bisect on floats beats numpy per interval)
    l_list: list[float]
    rows: list[list[float]]  # (t, t_decode, n, D, T_s, kv share, tau) per grid point


def operating_points(rep: FluidReplica, saturation_rate: float) -> OperatingPoints:
    """The replica's steady state on a grid of per-replica admission rates (step 1 of
    engine/fluid.py's docstring) up to 1.5 `saturation_rate` (the closed form's at mean
    lengths, kernels.inference.offline_steady_state), and the saturation rate x_max."""
    b_tokens, b_seqs = rep.max_batched_tokens, rep.max_num_seqs
    ei, eo = rep.mean_prompt, rep.mean_output
    ek = ei + rep.mean_cached  # a prompt's tokens in the KV cache, cached prefix included
    dec_steps = max(eo - 1.0, 0.0)
    one = np.ones(1)
    t_min = float(iteration_s(rep, 0.0 * one, one, ek * one, 0.0 * one, 0.0 * one)[0])
    x_hi = 1.5 * saturation_rate
    x = x_hi * np.linspace(0.0, 1.0, GRID)[:, None]
    t = np.full((GRID, 1), t_min)
    resid = max(1.0, ei / b_tokens)
    half = (BLOCK_TOKENS - 1) / 2.0
    # Far beyond saturation the map has no fixed point (the iteration grows with the batch
    # faster than the batch with it): hold such rows where their usage (linear in t) reaches
    # T_CAP_USAGE, far past the usage-1 limit that ends the grid, so that no row runs off to
    # infinity; rows the grid keeps never reach it.
    per_t = np.maximum.reduce(
        [
            x * ei / b_tokens,
            x * (dec_steps + resid) / b_seqs,
            x * (dec_steps * (ek + eo / 2.0 + half) + resid * (ek + half)) / rep.kv_tokens,
        ]
    )
    t_cap = np.where(per_t > 0, T_CAP_USAGE / np.maximum(per_t, 1e-300), np.inf)
    for _ in range(FIXED_POINT_ITERATIONS):
        t_new = np.minimum(mixture(rep, x * t, x * dec_steps * t)[0], t_cap)
        if np.allclose(t_new, t, rtol=1e-12, atol=0.0):
            t = t_new
            break
        t = t_new

    def usage_of(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        n, d = x * t, x * dec_steps * t
        return np.maximum.reduce(
            [
                (n * ei + d) / b_tokens,
                (d + n * resid) / b_seqs,
                (d * (ek + eo / 2.0 + half) + n * resid * (ek + half)) / rep.kv_tokens,
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
    t_mean, t_decode = mixture(rep, n, d)
    stop = max(last, 1) + 1
    x_max = float(x[max(last, 1), 0])
    seats = min(float(b_seqs), rep.kv_tokens / (ek + eo / 2.0 + half))
    op_x = x[:stop, 0]
    op_t = t_mean[:stop, 0]
    op_n = n[:stop, 0]
    op_d = d[:stop, 0]
    op_t_decode = t_decode[:stop, 0]
    op_service_s = (resid + dec_steps) * op_t
    op_kv = (op_d * (ek + eo / 2.0 + half) + op_n * resid * (ek + half)) / (rep.kv_tokens)
    # Requests in service per replica, l(x) = x T_s(x), and its slope: the time constant
    # with which the number in service returns to l after a disturbance (FlowModel._metric).
    op_l = op_x * op_service_s
    slope = np.gradient(op_l, op_x) if op_x.size > 1 else op_service_s
    op_tau = np.maximum(slope, op_service_s)
    # A replica that takes l_top requests at once (joining a backlog) prefills their
    # prompts in iterations filled to the token budget beside the decodes of those already
    # prefilled, l_top / 2 on average: t_fill per iteration, the whole in fill_s.
    half_full = np.array([min(float(op_l[-1]), b_tokens - 1.0) / 2.0])
    room = b_tokens - half_full
    fill_t = float(
        iteration_s(
            rep,
            room,
            half_full,
            half_full * rep.mean_context,
            room * rep.mean_pairs / max(ei, 1.0),
            np.maximum(room / max(ei, 1.0), 1.0),
        )[0]
    )
    fill_s = float(op_l[-1]) * ei / float(room[0]) * fill_t
    prefill_rate = float(op_l[-1]) / fill_s
    table = completion_table(rep, op_x, op_t, op_l, resid, dec_steps)
    rows = np.stack(
        [op_t, op_t_decode, op_n, op_d, op_service_s, op_kv, op_tau],
        axis=1,
    ).tolist()
    return OperatingPoints(
        x_max,
        seats,
        op_x,
        op_t,
        op_n,
        op_d,
        op_t_decode,
        op_service_s,
        op_kv,
        op_l,
        op_tau,
        fill_t,
        fill_s,
        prefill_rate,
        dec_steps,
        table,
        completion(table, float(op_l[-1]), prefill_rate)[0],
        op_x.tolist(),
        op_l.tolist(),
        rows,
    )


def completion_table(
    rep: FluidReplica,
    op_x: np.ndarray,
    op_t: np.ndarray,
    op_l: np.ndarray,
    resid: float,
    dec_steps: float,
) -> CompletionTable:
    """G(l, a): the rate at which a replica holding l requests completes them while it
    admits a requests/s, on a grid of l in [0, l_top] and a in [0, 1.5 x_max] (a
    replica admitting more fills its seats with prompts it cannot prefill yet: FlowModel._serve).

    The prompts prefilled per iteration are those admitted, n = a t, not those completing:
    away from the steady state (G = a, where G is the operating point's g(l)) the two part.
    Of the l in service, n r are in prefill and D = l - n r decode, one token an iteration,
    so D / (E[O] - 1) complete per iteration (geometric or not: in the mean over the
    decoding sequences, as Little's law per iteration in step 1), and t is the fixed point
    of t = f(a t, D) (the kernel's mean iteration, `mixture`). A replica that took a backlog
    and admits little afterwards decodes without prefills, and completes up to 2.5 times
    faster than g(l) (llama3-70b FP8 TP4 holding 123 requests: 25 requests/s against 10). At
    fixed a, G grows with l faster than g does (prefill does not grow with l), so the number
    in service relaxes faster than l'(x)."""
    l_top = float(op_l[-1])
    a_top = float(op_x[-1]) * 1.5
    ls = l_top * np.linspace(0.0, 1.0, TABLE_L)[:, None]
    a = a_top * np.linspace(0.0, 1.0, TABLE_A)[None, :]
    ls, a = np.broadcast_arrays(ls, a)
    ls, a = ls.reshape(-1, 1), a.reshape(-1, 1)

    def batch(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = np.minimum(a * t, ls / resid)  # no more in prefill than are held
        return n, ls - resid * n

    def excess(t: np.ndarray) -> np.ndarray:
        return mixture(rep, *batch(t))[0] - t

    # Secant iterations on f(t) - t (smooth in t; plain iteration oscillates near the
    # knee, where more prefill shortens D as much as it lengthens t).
    t0 = np.interp(ls, op_l, op_t)  # the steady state's, where a = g(l)
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
        rate = np.interp(ls, op_l, op_x).reshape(TABLE_L, TABLE_A)
    # The batch of each state, for the latency model: (t, t_decode, n, D) per point.
    t_decode = mixture(rep, n, d)[1]
    batch_of = np.stack([t, t_decode, n, d], axis=-1).reshape(TABLE_L, TABLE_A, 4)
    return CompletionTable(
        l_top / (TABLE_L - 1), a_top / (TABLE_A - 1), rate.tolist(), batch_of.tolist()
    )


def cell(table: CompletionTable, held: float, admit: float) -> tuple[int, int, float, float]:
    """The completion table's cell holding (held, admit), clamped to the grid, and the
    position within it: (i, j, u, v)."""
    fl = min(max(held / table.dl, 0.0), TABLE_L - 1.000001)
    fa = min(max(admit / table.da, 0.0), TABLE_A - 1.000001)
    i, j = int(fl), int(fa)
    return i, j, fl - i, fa - j


def completion(table: CompletionTable, held: float, admit: float) -> tuple[float, float]:
    """(G(l, a), dG/dl at fixed a) per replica: bilinear on the table, the slope that of
    the l segment holding `held` (so an exponential-Euler step is exact within it).
    The cell is found as `cell` finds it, written out: this runs at every step of _serve."""
    fl = min(max(held / table.dl, 0.0), TABLE_L - 1.000001)
    fa = min(max(admit / table.da, 0.0), TABLE_A - 1.000001)
    i, j = int(fl), int(fa)
    u, v = fl - i, fa - j
    lo, hi = table.rows[i], table.rows[i + 1]
    g_lo = lo[j] + v * (lo[j + 1] - lo[j])
    g_hi = hi[j] + v * (hi[j + 1] - hi[j])
    return g_lo + u * (g_hi - g_lo), (g_hi - g_lo) / table.dl


def batch_at(table: CompletionTable, held: float, admit: float) -> list[float]:
    """(t, t_decode, n, D) of a replica holding `held` requests while it admits `admit`
    per second (bilinear on the completion table's grid)."""
    i, j, u, v = cell(table, held, admit)
    rows = table.batch_rows
    w00, w01, w10, w11 = (1.0 - u) * (1.0 - v), (1.0 - u) * v, u * (1.0 - v), u * v
    c00, c01, c10, c11 = rows[i][j], rows[i][j + 1], rows[i + 1][j], rows[i + 1][j + 1]
    # Summed left to right, written out (this runs twice per interval of the fluid tier).
    return [w00 * c00[q] + w01 * c01[q] + w10 * c10[q] + w11 * c11[q] for q in range(4)]


def op_at(ops: OperatingPoints, x: float) -> tuple[float, ...]:
    """(t, t_decode, n, D, T_s, kv share, tau) at per-replica rate x (linear interpolation on
    the grid; plain floats: called once per interval)."""
    xs, rows = ops.xs, ops.rows
    i = bisect.bisect_right(xs, x)
    if i <= 0:
        return tuple(rows[0])
    if i >= len(xs):
        return tuple(rows[-1])
    w = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return tuple([a + w * (b - a) for a, b in zip(rows[i - 1], rows[i], strict=True)])


def rate_at(ops: OperatingPoints, held: float) -> float:
    """g(l): the per-replica rate whose steady state holds `held` requests in service (the
    inverse of l(x) = x T_s(x), increasing; x_max beyond the last steady state)."""
    op_l, op_x = ops.l_list, ops.xs
    i = bisect.bisect_right(op_l, held)
    if i >= len(op_l):
        return op_x[-1]
    if i <= 0:
        return op_x[0]
    return op_x[i - 1] + (held - op_l[i - 1]) / (op_l[i] - op_l[i - 1]) * (op_x[i] - op_x[i - 1])


def seat_wait(
    area: float, dt: float, servers: float, service_s: float, output_cv2: float, backlogged: bool
) -> tuple[float, float]:
    """Allen-Cunneen's wait for one of `servers` seats with Sakasegawa's probability of waiting
    (Hopp & Spearman, Factory Physics, 3rd ed., eq. 8.10; Sakasegawa 1977): `area / dt` of them
    busy on average (utilisation u), P(wait) = u^(sqrt(2 (c + 1)) - 1) (0 while a backlog
    waits: the fluid FIFO wait has it), a wait then exponential with mean
    T_s / (c (1 - u)) (c_a^2 + c_s^2) / 2 (Poisson arrivals, c_a^2 = 1). (P(wait), mean)."""
    u = min(area / dt / servers, 0.999)
    p_wait = u ** (math.sqrt(2.0 * (servers + 1.0)) - 1.0) if not backlogged else 0.0
    mean_wait = service_s / (servers * (1.0 - u)) * (1.0 + output_cv2) / 2.0
    return p_wait, mean_wait


def latency_samples(
    intervals: list[tuple[float, ...]],
    rng: np.random.Generator,
    rep: FluidReplica,
    ops: OperatingPoints,
    pool_prompt: np.ndarray,
    pool_output: np.ndarray,
    kept: np.ndarray,
    edges: np.ndarray,
) -> dict[str, np.ndarray]:
    """Step 3 of engine/fluid.py's docstring, vectorised over every interval at once: latency
    samples of the intervals' records (weight, t0, t1, s0, s1, t_it, t_dec, n, D, P(wait), mean
    wait, busy share, fill, behind), drawn from the run's lengths (`pool_prompt`,
    `pool_output`); `kept` are the cumulative arrivals not dropped at the traffic grid's
    `edges` (A in the fluid FIFO wait)."""
    if not intervals:
        empty = np.zeros(0)
        return dict.fromkeys(
            ("weight", "ttft", "tpot", "tpot_weight", "e2e", "wait", "output"), empty
        )
    cols = np.array(intervals, dtype=np.float64).T
    weight, t0, t1, s0, s1, t_it, t_dec, n, d, p_wait, mean_wait, busy, fill, behind = cols
    k = weight.size
    m = int(np.clip(MAX_SAMPLES // max(k, 1), MIN_SAMPLES, SAMPLES))
    pick = rng.integers(0, pool_prompt.size, size=(k, m))
    prompt = pool_prompt[pick]
    output = pool_output[pick]
    col = (slice(None), None)
    # The fluid FIFO wait of the m-th of M admissions spread evenly over the interval: it
    # is admitted at t when S(t) = s, and arrived when A reached s.
    frac = (np.arange(m) + 0.5) / m
    t_adm = t0[col] + (t1 - t0)[col] * frac
    s_adm = s0[col] + (s1 - s0)[col] * frac
    fluid_wait = np.maximum(t_adm - np.interp(s_adm, kept, edges), 0.0)
    waits = (rng.random((k, m)) < p_wait[col]) * rng.exponential(1.0, (k, m)) * mean_wait[col]
    dd = np.broadcast_to(d[col], prompt.shape)
    room = np.maximum(rep.max_batched_tokens - dd, 1.0)
    ctx = dd * rep.mean_context
    sd_prompt = float(pool_prompt.std())

    def prompts_of(count: np.ndarray, cap: np.ndarray) -> np.ndarray:
        """Tokens of `count` prompts: their sum's mean and spread (normal), in [0, cap]."""
        z = rng.standard_normal(count.shape)
        return np.clip(count * rep.mean_prompt + np.sqrt(count) * sd_prompt * z, 0.0, cap)

    # Admission waits for the end of the iteration under way, picked in proportion to its
    # length among CANDIDATES iterations of Poisson(n) prompts each (size-biased sampling).
    cand = np.repeat(n[col], m, axis=1)[..., None] * np.ones(CANDIDATES)
    cand_k = rng.poisson(cand).astype(np.float64)
    dd3, room3 = dd[..., None], room[..., None]
    cand_p = prompts_of(cand_k, room3)
    cand_t = iteration_s(
        rep,
        np.minimum(cand_p, room3),
        dd3,
        dd3 * rep.mean_context,
        cand_p * (rep.mean_pairs / max(rep.mean_prompt, 1.0)),
        cand_k,
    )
    cum = np.cumsum(cand_t, axis=2)
    chosen = np.minimum((rng.random((k, m, 1)) * cum[..., -1:] > cum).sum(axis=2), CANDIDATES - 1)
    iteration = np.take_along_axis(cand_t, chosen[..., None], axis=2)[..., 0]
    residual = rng.random((k, m)) * iteration * busy[col]
    wait = fluid_wait + waits + residual + behind[col]
    # Prefill: chunks of at most the budget left by the decodes, each one iteration, with
    # the prompts that arrived during the wait for admission.
    chunks = np.ceil(prompt / room)
    last = prompt - (chunks - 1.0) * room
    joined_now = rng.poisson(n[col] / np.maximum(t_it[col], 1e-300) * residual)
    others = prompts_of(joined_now.astype(np.float64), room)
    others_pairs = others * (rep.mean_pairs / max(rep.mean_prompt, 1.0))
    nn = joined_now.astype(np.float64)

    def with_chunk(c: np.ndarray, before: np.ndarray) -> np.ndarray:
        tokens = np.minimum(others + c, room)
        return iteration_s(
            rep, tokens, dd, ctx, others_pairs + c * before + c * (c + 1) / 2.0, nn + 1.0
        )

    cached = rep.mean_cached  # a cached prefix the chunks attend to (its mean)
    full_chunk = with_chunk(room, room / 2.0 + cached)
    prefill = with_chunk(last, (chunks - 1.0) * room + cached)
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
    pk_mean = (beyond**2).mean(axis=1, keepdims=True) / np.maximum(2.0 * es * (1.0 - rho), 1e-300)
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
    own = prefill - chunks * iteration_s(rep, zero, dd, ctx, zero, zero)
    mean_own = own.mean(axis=1, keepdims=True)
    another = np.roll(own, 1, axis=1)  # another prompt of the interval, for the skew
    extra = joined * mean_own + np.sqrt(joined) * (another - mean_own)
    pace = (t_dec[col] + n[col] * mean_own)[:, 0]
    first = t_adm + (ttft - fluid_wait)
    scale = along(t0, t1, pace, first, steps) / pace[:, None]
    tpot = (t_dec[col] + np.maximum(extra, 0.0) / steps) * scale
    multi = output > 1
    # Fills (FlowModel._serve): a request taken into an empty replica waits for the prompts taken
    # before it (a uniform share u of fill_s), then decodes at the fill's pace, fill_t per
    # token, until the fill ends: it loses the tokens it would have made at its own pace
    # meanwhile and makes them up after.
    if (fill > 0).any():
        u = rng.random((k, m))
        took = rng.random((k, m)) < fill[col]
        ahead = np.where(took, u * ops.fill_s, 0.0)
        wait = wait + ahead
        ttft = ttft + ahead
        during = np.minimum((1.0 - u) * ops.fill_s, (output - 1.0) * ops.fill_t)
        lost = np.where(took, during / tpot - during / ops.fill_t, 0.0)
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


def along(
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
