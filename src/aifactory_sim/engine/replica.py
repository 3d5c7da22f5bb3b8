"""One serving replica's continuous batching, as a plain state machine (no SimPy).

Scheduling follows vLLM's (Kwon et al., SOSP'23; the V1 scheduler with chunked prefill): each
iteration first gives every running sequence that has finished its prefill one decode token,
then spends what is left of the `max_batched_tokens` budget on prefill chunks of running
sequences, then admits waiting requests first-come first-served while `max_num_seqs` and the KV
cache allow. The KV cache is paged in blocks of 16 tokens; when the running sequences' next
tokens do not fit, the newest running sequence is preempted and recomputed later (its prompt and
the tokens it generated are prefilled again; vLLM's recompute preemption).

Two tiers share every rule:
- `step`: one iteration per plan.
- `fast`: a stretch of decode-only iterations with the same sequences is one plan. Their times
  come from one vectorised kernel call (the context grows by one token per sequence per
  iteration), their boundaries from one cumulative sum; the stretch ends at the first sequence
  to finish or the first iteration whose KV blocks would not fit, and an arrival that could be
  admitted cuts it at the first boundary at or after the arrival (`searchsorted`). Per-request
  progress is derived from the number of iterations applied, never token by token.
Both tiers give the same timestamps up to floating-point summation order.

The driver (the engine, or a test) calls `add` for an arrival, `next_time` for when the current
plan ends, and `advance` at that time; `records` holds each request's timestamps.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: Tokens per KV-cache block (vLLM's default block size).
BLOCK_TOKENS = 16

#: iteration time(prefill_tokens, decode_seqs, context_tokens, prefill_context, prefill_seqs),
#: numpy arrays in and out (kernels.inference.iteration_time_s with a model and GPU bound).
IterationTime = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Record:
    """One request's timestamps and counts."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    admitted_s: float = math.nan
    first_token_s: float = math.nan
    finish_s: float = math.nan
    preemptions: int = 0


@dataclass
class Seq:
    rid: int
    target: int  # tokens to prefill: the prompt, plus tokens generated before a preemption
    output: int  # tokens to generate in all
    order: int  # admission order: the newest is preempted first
    prefilled: int = 0
    generated: int = 0
    cached: int = 0  # tokens in the KV cache

    @property
    def decoding(self) -> bool:
        return self.prefilled >= self.target


@dataclass
class _Plan:
    """What the replica runs from `start`: `k` iterations ending at `ends` (absolute times)."""

    start: float
    ends: np.ndarray
    decode_only: bool
    chunks: dict[int, int] = field(default_factory=dict)  # rid -> prefill tokens (k == 1)


class ReplicaCore:
    def __init__(
        self,
        iteration_time: IterationTime,
        *,
        kv_capacity_tokens: float,
        max_num_seqs: int,
        max_batched_tokens: int,
        chunked_prefill: bool = True,
        fast: bool = True,
    ):
        self.iteration_time = iteration_time
        self.kv_blocks = int(kv_capacity_tokens // BLOCK_TOKENS)
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.chunked_prefill = chunked_prefill
        self.fast = fast
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.records: dict[int, Record] = {}
        self.plan: _Plan | None = None
        self.iterations = 0
        self._order = 0

    # --- the driver's calls ----------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, rid: int, prompt: int, output: int, now: float) -> None:
        """A request arrives. An idle replica starts an iteration now; a decode stretch that
        could admit it ends at its first iteration boundary at or after `now`."""
        self.records[rid] = Record(now, int(prompt), int(output))
        self.waiting.append(Seq(rid, int(prompt), int(output), order=-1))
        if self.plan is None:
            self._plan(now)
        elif (self.plan.decode_only and len(self.running) < self.max_num_seqs
              and len(self.waiting) == 1):
            cut = int(np.searchsorted(self.plan.ends, now, side="left"))
            if cut < self.plan.ends.size - 1:
                self.plan.ends = self.plan.ends[: cut + 1]

    def next_time(self) -> float:
        """When the current plan ends (inf when idle)."""
        return math.inf if self.plan is None else float(self.plan.ends[-1])

    def advance(self) -> None:
        """Apply the current plan at its end and plan what comes next."""
        plan = self.plan
        assert plan is not None
        end = float(plan.ends[-1])
        k = plan.ends.size
        self.iterations += k
        if plan.decode_only:
            for s in self.running:
                s.generated += k
                s.cached += k
        else:
            for s in self.running:
                chunk = plan.chunks.get(s.rid)
                if chunk is not None:
                    s.prefilled += chunk
                    s.cached += chunk
                    if s.decoding:  # the last chunk samples a token
                        self._token(s, end)
                elif s.decoding:
                    s.generated += 1
                    s.cached += 1
        for s in list(self.running):
            if s.generated >= s.output:
                self.running.remove(s)
                self.records[s.rid].finish_s = end
        self.plan = None
        if self.running or self.waiting:
            self._plan(end)

    # --- scheduling --------------------------------------------------------------------------
    def _token(self, s: Seq, t: float) -> None:
        s.generated += 1
        rec = self.records[s.rid]
        if math.isnan(rec.first_token_s):
            rec.first_token_s = t

    @staticmethod
    def _blocks(tokens: int) -> int:
        return -(-tokens // BLOCK_TOKENS)

    def _plan(self, now: float) -> None:
        """Schedule the iteration that starts at `now` (and, fast, the stretch after it)."""
        # KV for the running sequences' next tokens; preempt the newest until they fit.
        while True:
            need = sum(self._blocks(s.cached + 1) if s.decoding else self._blocks(s.cached)
                       for s in self.running)
            if need <= self.kv_blocks or not self.running:
                break
            victim = max(self.running, key=lambda s: s.order)
            self.running.remove(victim)
            self.records[victim.rid].preemptions += 1
            victim.target = self.records[victim.rid].prompt_tokens + victim.generated
            victim.prefilled = victim.cached = 0
            self.waiting.appendleft(victim)
        decodes = [s for s in self.running if s.decoding]
        budget = self.max_batched_tokens - len(decodes)
        chunks: dict[int, int] = {}
        used = sum(self._blocks(s.cached + 1) for s in decodes)
        for s in self.running:  # prefills already under way, oldest first
            if s.decoding or budget <= 0:
                continue
            c = min(s.target - s.prefilled, budget)
            if not self.chunked_prefill and c < s.target - s.prefilled:
                continue
            chunks[s.rid] = c
            budget -= c
        used += sum(self._blocks(s.cached + chunks.get(s.rid, 0))
                    for s in self.running if not s.decoding)
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            head = self.waiting[0]
            c = min(head.target, budget)
            if not self.chunked_prefill and c < head.target:
                break
            if used + self._blocks(c) > self.kv_blocks:
                break
            self.waiting.popleft()
            head.order = self._order
            self._order += 1
            rec = self.records[head.rid]
            if math.isnan(rec.admitted_s):
                rec.admitted_s = now
            self.running.append(head)
            chunks[head.rid] = c
            budget -= c
            used += self._blocks(c)
        if not self.running:
            self.plan = None  # nothing fits (a prompt larger than the whole cache): stay idle
            return
        n = len(decodes)
        ctx = float(sum(s.cached for s in decodes))
        if chunks:  # a prefill iteration: always one at a time
            by_rid = {s.rid: s for s in self.running}
            pre_tok = float(sum(chunks.values()))
            pre_ctx = float(sum(c * by_rid[r].prefilled + c * (c + 1) / 2
                                for r, c in chunks.items()))
            finishing = float(sum(1 for r, c in chunks.items()
                                  if by_rid[r].prefilled + c >= by_rid[r].target))
            dt = self.iteration_time(np.array([pre_tok]), np.array([float(n)]),
                                     np.array([ctx]), np.array([pre_ctx]),
                                     np.array([finishing]))
            self.plan = _Plan(now, now + np.cumsum(dt), decode_only=False, chunks=chunks)
            return
        # A decode-only stretch: until the first sequence finishes or the KV cache overflows.
        k = min(s.output - s.generated for s in decodes)
        if not self.fast:
            k = 1
        if k > 1:
            cached = np.array([s.cached for s in decodes], dtype=np.int64)
            last = -(-(cached + k) // BLOCK_TOKENS)  # blocks for the stretch's last token
            if last.sum() > self.kv_blocks:
                steps = np.arange(k)
                need = (-(-(cached[:, None] + steps[None, :] + 1) // BLOCK_TOKENS)).sum(axis=0)
                k = max(int(np.searchsorted(need, self.kv_blocks, side="right")), 1)
        i = np.arange(k, dtype=np.float64)
        zeros = np.zeros(k)
        dt = self.iteration_time(zeros, np.full(k, float(n)), ctx + n * i, zeros, zeros)
        self.plan = _Plan(now, now + np.cumsum(dt), decode_only=True)
