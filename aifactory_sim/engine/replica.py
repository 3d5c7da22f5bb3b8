"""One serving replica's continuous batching, as a plain state machine (no SimPy).

Scheduling follows vLLM's (Kwon et al., SOSP'23; the V1 scheduler with chunked prefill): each
iteration first gives every running sequence that has finished its prefill one decode token,
then spends what is left of the `max_batched_tokens` budget on prefill chunks of running
sequences, then admits waiting requests first-come first-served while `max_num_seqs` and the KV
cache allow. The KV cache is paged in blocks of 16 tokens; when the running sequences' next
tokens do not fit, the newest running sequence is preempted and recomputed later (its prompt and
the tokens it generated are prefilled again; vLLM's recompute preemption).

Two tiers share every rule and every number:
- `step`: one iteration per plan.
- `fast`: a stretch of decode-only iterations with the same sequences is one plan. The
  iteration time is affine in the summed context (kernels.inference.IterationTable), and the
  context grows by one token per sequence per iteration, so the stretch's boundaries are an
  arithmetic series: its end, and the first boundary at or after an arrival (a quadratic's
  root), are closed forms. The stretch ends at the first sequence to finish (a heap of finish
  iterations) or the first iteration whose KV blocks would not fit (a binary search over a
  closed-form block count); an arrival that could be admitted cuts it.
Nothing is updated token by token or sequence by sequence while decoding: a decoding sequence
is (iteration it started decoding at, tokens then), and the replica keeps sums over them, so a
plan costs microseconds whatever the batch. Both tiers give the same timestamps up to the
floating-point order of a sum.

The driver (the service engine, or a test) calls `add` for a request routed here, `schedule`
when the replica is idle, `next_time` for when the current plan ends and `advance` at that
time. Timestamps go to a `RequestLog` shared by the service's replicas.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque

import numpy as np

from ..kernels.inference import BLOCK_TOKENS, IterationTable

__all__ = ["BLOCK_TOKENS", "PrefixCacheState", "ReplicaCore", "RequestLog", "conversation_key"]


class RequestLog:
    """Per-request columns, indexed by request id: what the results' request table holds."""

    def __init__(
        self,
        arrival_s: np.ndarray,
        prompt_tokens: np.ndarray,
        output_tokens: np.ndarray,
        prefix: np.ndarray | None = None,
        conversation: np.ndarray | None = None,
    ):
        n = arrival_s.size
        self.arrival_s = np.asarray(arrival_s, dtype=np.float64)
        self.prompt_tokens = np.asarray(prompt_tokens, dtype=np.int64)
        self.output_tokens = np.asarray(output_tokens, dtype=np.int64)
        self.admitted_s = np.full(n, math.nan)
        self.first_token_s = np.full(n, math.nan)
        self.finish_s = np.full(n, math.nan)
        self.preemptions = np.zeros(n, dtype=np.int64)
        self.replica = np.full(n, -1, dtype=np.int64)
        #: each request's shared prefix (system prompt index), or None: no shared prefixes;
        #: `cached_tokens`, the prompt tokens its first admission found in the prefix cache
        self.prefix: np.ndarray | None = None
        self.prefix_list: list[int] | None = None
        if prefix is not None:
            self.prefix = np.asarray(prefix, dtype=np.int64)
            self.prefix_list = self.prefix.tolist()
        self.cached_tokens = np.zeros(n, dtype=np.int64)
        #: with a trace's block hashes: each request's chain of cache keys (chain_key), its
        #: whole hash blocks within the prompt; else None
        self.chains: list[list[int]] | None = None
        #: with conversations: each request's (the id of its first turn), else None
        self.conversation: np.ndarray | None = None
        self.conversation_list: list[int] | None = None
        if conversation is not None:
            self.conversation = np.asarray(conversation, dtype=np.int64)
            self.conversation_list = self.conversation.tolist()
        #: the lengths as Python ints, for the replicas' reads (a list index is several times
        #: cheaper than a NumPy scalar's)
        self.prompt_list: list[int] = self.prompt_tokens.tolist()
        self.output_list: list[int] = self.output_tokens.tolist()

    def __len__(self) -> int:
        return self.arrival_s.size


class Seq:
    """A request on a replica. While prefilling its progress is explicit; once decoding it is
    (start, tokens at start): at iteration count I it has generated `generated + I - start`
    tokens and caches `cached + I - start`."""

    __slots__ = (
        "alive",
        "cached",
        "chain",
        "chain_held",
        "conv",
        "conv_held",
        "finish_at",
        "generated",
        "order",
        "output",
        "prefilled",
        "prefix",
        "rid",
        "shared",
        "start",
        "target",
        "transferred",
        "x",
    )

    def __init__(self, rid: int, prompt: int, output: int, prefix: int = -1, conv: int = -1):
        self.rid = rid
        self.prefix = prefix  # its shared prefix (-1: none)
        self.conv = conv  # its conversation's key in the prefix cache (-1: none)
        self.shared = 0  # blocks it uses from the prefix cache (not its own)
        self.conv_held = 0  # of them, the blocks of its conversation's entry
        self.chain: list[int] | None = None  # its trace block hashes' cache keys
        self.chain_held: list[int] = []  # of them, those whose entries it uses
        self.target = prompt  # tokens to prefill: the prompt, plus tokens generated before
        self.output = output  # a preemption
        self.order = -1
        self.prefilled = 0
        self.generated = 0
        self.cached = 0
        self.start = 0
        self.finish_at = 0
        self.x = 0  # cached - start + 16 - 16 shared: own blocks for the next token = (x + I) // 16
        self.alive = False  # decoding, and in the finish heap
        self.transferred = False  # prefilled elsewhere: its prompt's KV arrives with it


class _Plan:
    """What a replica runs from `start`: an optional head iteration with prefill `chunks`
    (`head` seconds), then `k` decode-only iterations of times first + growth x i; it ends at
    `end`. `applied`: the head's effects were applied when it was planned (a chained plan)."""

    __slots__ = ("applied", "chunks", "end", "first", "growth", "head", "k", "start")

    def __init__(
        self,
        start: float,
        head: float,
        chunks: list[tuple[Seq, int]] | None,
        k: int,
        first: float,
        growth: float,
        applied: bool = False,
    ):
        self.start = start
        self.head = head
        self.chunks = chunks
        self.first = first
        self.growth = growth
        self.applied = applied
        self.k = k
        self.end = start + head + k * first + growth * (k * (k - 1.0) / 2.0)  # decode_run_s

    def set_k(self, k: int) -> None:
        self.k = k
        self.end = self.end_of(k)

    def end_of(self, j: int) -> float:
        """End of the j-th decode iteration (0: of the head)."""
        return self.start + self.head + IterationTable.decode_run_s(self.first, self.growth, j)


class PrefixCacheState:
    """A replica's prefix cache: vLLM's automatic prefix caching (Kwon et al., SOSP'23; the V1
    KV cache manager) at the granularity of one shared prefix. A system prompt's full KV blocks
    (`blocks_each`: only whole blocks are hashed and shared) become an entry when the first
    request with it finishes its prefill there; a later request with the same prefix admitted
    while the entry is cached uses those blocks instead of its own and starts its prefill after
    them. A conversation's entry (a negative key, `conversation_key`) holds the full blocks of
    its context after the system prompt's, stored when a turn finishes (`store`: what vLLM keeps
    of a finished request's blocks) and used by the next turn after the system prompt's entry
    (a block's hash chains through every block before it, so the conversation's blocks match only
    behind a cached system prompt). Entries count against the replica's KV blocks; one that no
    running sequence uses may be evicted, least recently used first, when blocks are needed for
    admission or for the running sequences' next tokens, before any of them is preempted. Two
    requests that miss together keep their own copies; only the first is cached."""

    __slots__ = ("blocks", "blocks_each", "entries", "evictions", "sizes")

    def __init__(self, blocks_each: int):
        self.blocks_each = blocks_each
        #: key -> running sequences using it, least recently used first
        self.entries: OrderedDict[int, int] = OrderedDict()
        self.sizes: dict[int, int] = {}  # key -> its blocks
        self.blocks = 0  # blocks the entries hold
        self.evictions = 0

    def use(self, key: int) -> int:
        """A request admitted with a cached prefix: the blocks it shares."""
        self.entries[key] += 1
        self.entries.move_to_end(key)
        return self.sizes[key]

    def register(self, prefix: int) -> int:
        """A request's prefill of `prefix` is done: cache its blocks (the blocks it now shares)
        unless another request's are already cached."""
        if prefix in self.entries:
            return 0
        self.entries[prefix] = 1
        self.sizes[prefix] = self.blocks_each
        self.blocks += self.blocks_each
        return self.blocks_each

    def store(self, key: int, blocks: int) -> None:
        """A conversation's turn finished (its references released): its context's full blocks
        beyond the system prompt's replace the conversation's entry, as the most recent."""
        old = self.sizes.pop(key, 0)
        if old:
            del self.entries[key]
            self.blocks -= old
        if blocks > 0:
            self.entries[key] = 0
            self.sizes[key] = blocks
            self.blocks += blocks

    def release(self, prefix: int) -> None:
        self.entries[prefix] -= 1

    def evictable(self) -> bool:
        return any(refs == 0 for refs in self.entries.values())

    def evict(self, need: int, keep: tuple[int, ...] = ()) -> int:
        """Evict unused entries, least recently used first (never those in `keep`), until
        `need` blocks are free or none is left to evict: the blocks freed."""
        freed = 0
        if need > 0:
            sizes, victims = self.sizes, []
            for key, refs in self.entries.items():  # least recently used first; stop when done
                if refs == 0 and key not in keep:
                    victims.append(key)
                    freed += sizes[key]
                    if freed >= need:
                        break
            for key in victims:
                del self.entries[key]
                del sizes[key]
            self.evictions += len(victims)
        self.blocks -= freed
        return freed

    def blocks_in_use(self) -> int:
        sizes = self.sizes
        return sum(sizes[k] for k, refs in self.entries.items() if refs)

    def clear(self) -> None:
        self.entries.clear()
        self.sizes.clear()
        self.blocks = 0


def chain_key(block_hash: int) -> int:
    """A trace block hash's key in a PrefixCacheState (below every conversation's key)."""
    return -(1 << 40) - block_hash


def conversation_key(conversation: int) -> int:
    """A conversation's key in a PrefixCacheState (system prompts' keys are 0, 1, ...)."""
    return -2 - conversation


class ReplicaCore:
    def __init__(
        self,
        table: IterationTable,
        log: RequestLog,
        *,
        kv_capacity_tokens: float,
        max_num_seqs: int,
        max_batched_tokens: int,
        chunked_prefill: bool = True,
        fast: bool = True,
        index: int = 0,
        prefix_tokens: int = 0,
        cache_conversations: bool = False,
        track_finished: bool = False,
        chain_blocks: int = 0,
    ):
        if max_batched_tokens < max_num_seqs:
            raise ValueError(
                f"max_batched_tokens={max_batched_tokens} < max_num_seqs="
                f"{max_num_seqs}: a decode token per seat must fit the budget"
            )
        if len(table.tokens) <= max_batched_tokens or len(table.sampled) <= max_num_seqs:
            raise ValueError("the iteration table is smaller than the batch limits")
        self.table = table
        self.log = log
        self.index = index
        self.kv_blocks = int(kv_capacity_tokens // BLOCK_TOKENS)
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.chunked_prefill = chunked_prefill
        self.fast = fast
        self.waiting: deque[Seq] = deque()
        #: requests prefilled elsewhere, their KV here (add_transferred), first come first served
        self.incoming: deque[Seq] = deque()
        self.running: dict[int, Seq] = {}  # admission order -> seq; the last is the newest
        self.prefilling: dict[int, Seq] = {}  # the running ones still in prefill, oldest first
        self.plan: _Plan | None = None
        self.iterations = 0  # I: iterations run so far
        self.busy_s = 0.0  # time spent iterating (completed plans)
        self._order = 0
        # Sums over the decoding sequences (functions of I through them, see Seq):
        self._n_dec = 0
        self._ctx0 = 0  # context at iteration I = _ctx0 + _n_dec x I
        self._blk_q = 0  # blocks for the next tokens at I = _blk_q + _n_dec (I // 16)
        self._blk_r = [0] * BLOCK_TOKENS  # + #{x % 16 >= 16 - I % 16}
        self._finish: list[tuple[int, int, Seq]] = []  # (finish iteration, order, seq)
        self._pre_blocks = 0  # blocks held by the sequences in prefill
        self._shared_dec = 0  # prefix-cache blocks the decoding sequences use (not their own)
        # The prefix cache (see PrefixCacheState): on when the log's requests carry prefixes
        # and `prefix_tokens` (each prefix's length) fills at least one block, or when
        # `cache_conversations` (the log's requests are turns of conversations).
        conv = cache_conversations and log.conversation_list is not None
        #: KV blocks one trace hash block holds (0: no chains)
        self.chain_blocks = chain_blocks if log.chains is not None else 0
        on = conv or (log.prefix_list is not None and prefix_tokens >= BLOCK_TOKENS)
        on = on or self.chain_blocks > 0
        self.prefixes = PrefixCacheState(prefix_tokens // BLOCK_TOKENS) if on else None
        self._conversations = log.conversation_list if conv else None
        #: with conversations, the requests finished since the driver last took them (their
        #: next turns come after them); else None
        track = track_finished or log.conversation_list is not None
        self.finished: list[int] | None = [] if track else None

    # --- the driver's calls ----------------------------------------------------------------
    @property
    def outstanding(self) -> int:
        return len(self.waiting) + len(self.running) + len(self.incoming)

    def add(self, rid: int, now: float) -> None:
        """Queue request `rid` (lengths from the log). A decode stretch that could admit it ends
        at its first iteration boundary at or after `now`; an idle replica waits for
        `schedule`, so that requests arriving together are admitted together."""
        log = self.log
        prefix = -1 if log.prefix_list is None else log.prefix_list[rid]
        conv = -1 if self._conversations is None else -2 - self._conversations[rid]
        s = Seq(rid, log.prompt_list[rid], log.output_list[rid], prefix, conv)
        if self.chain_blocks:
            s.chain = log.chains[rid]  # type: ignore[index]
        self.waiting.append(s)
        log.replica[rid] = self.index
        plan = self.plan
        if (
            plan is not None
            and plan.k > (0 if plan.chunks is not None else 1)
            and len(self.running) < self.max_num_seqs
            and len(self.waiting) == 1
        ):
            self._cut(plan, now)

    def add_transferred(self, rid: int, now: float) -> None:
        """Queue request `rid` prefilled on another replica (disaggregated serving): its prompt's
        KV cache has arrived and its first token was sampled there; admitted as its blocks fit,
        it decodes from its second token. Cuts a decode stretch as `add` does."""
        log = self.log
        s = Seq(rid, log.prompt_list[rid], log.output_list[rid])
        s.prefilled = s.cached = s.target
        s.generated = 1
        s.transferred = True
        self.incoming.append(s)
        log.replica[rid] = self.index
        plan = self.plan
        if (
            plan is not None
            and plan.k > (0 if plan.chunks is not None else 1)
            and len(self.running) < self.max_num_seqs
            and len(self.incoming) == 1
        ):
            self._cut(plan, now)

    def _admit_transferred(self, now: float, cap: int) -> None:
        """Admit the transferred requests at the head of the queue while seats and KV blocks
        allow: they start decoding at once (no prefill), first come first served."""
        waiting, log = self.incoming, self.log
        i = self.iterations
        while waiting and len(self.running) < self.max_num_seqs:
            head = waiting[0]
            need = -(-(head.cached + 1) // BLOCK_TOKENS)  # its KV and its next token's
            if self._decode_blocks(i) + self._pre_blocks + need > cap:
                break
            waiting.popleft()
            head.transferred = False
            head.order = self._order
            self._order += 1
            if math.isnan(log.admitted_s[head.rid]):
                log.admitted_s[head.rid] = now
            self.running[head.order] = head
            self._start_decoding(head)

    def schedule(self, now: float) -> None:
        """Plan from `now` when idle and there is work."""
        if self.plan is None and (self.running or self.waiting or self.incoming):
            self._plan(now)

    def next_time(self) -> float:
        """When the current plan ends (inf when idle)."""
        return math.inf if self.plan is None else self.plan.end

    def advance(self) -> int:
        """Apply the current plan at its end; the replica is then idle until `schedule`.
        Returns the number of requests that finished."""
        plan = self.plan
        assert plan is not None
        end = plan.end
        self.busy_s += end - plan.start
        self.plan = None
        done = 0
        if plan.chunks is not None and not plan.applied:
            done = self._apply_head(plan.chunks, end)
        self.iterations += plan.k
        heap = self._finish
        now_i = self.iterations
        while heap and heap[0][0] <= now_i:
            at, order, s = heapq.heappop(heap)
            if s.alive and s.order == order and s.finish_at == at:
                self._stop_decoding(s)
                self._done(s, end)
                done += 1
        return done

    def _apply_head(self, chunks: list[tuple[Seq, int]], t: float) -> int:
        """One iteration with prefill chunks, ending at `t`: the chunks are cached, a finished
        prompt samples its first token and starts decoding. Returns the requests finished
        (a one-token output)."""
        self.iterations += 1
        log = self.log
        done = 0
        for s, c in chunks:
            before = -(-s.cached // BLOCK_TOKENS)
            s.prefilled += c
            s.cached += c
            if s.prefilled < s.target:
                self._pre_blocks += -(-s.cached // BLOCK_TOKENS) - before
                continue
            self._pre_blocks -= before - s.shared  # prefill done: its own blocks now decode
            del self.prefilling[s.order]
            cache = self.prefixes
            if cache is not None and s.prefix >= 0 and not s.shared and cache.blocks_each:
                s.shared = cache.register(s.prefix)  # its prefix blocks, now cached
            if s.chain:  # its hash blocks not yet cached, now cached
                s.shared += self._register_chain(s)
            s.generated += 1  # the last chunk samples a token
            if math.isnan(log.first_token_s[s.rid]):
                log.first_token_s[s.rid] = t
            if s.generated >= s.output:
                self._done(s, t)
                done += 1
            else:
                self._start_decoding(s)
        return done

    def kv_used_blocks(self) -> int:
        """Blocks the running sequences hold (decoding ones counted with their next token),
        cached prefixes in use included (an unused one is free to evict, as vLLM counts it)."""
        used = self._decode_blocks(self.iterations) + self._pre_blocks
        return used if self.prefixes is None else used + self.prefixes.blocks_in_use()

    def evict(self, now: float) -> list[int]:
        """Drop every request at `now` (the replica is gone): their ids, oldest first, for the
        router to send elsewhere; their progress is lost and counts as a preemption."""
        rids = [s.rid for s in self.running.values()] + [s.rid for s in self.waiting]
        rids += [s.rid for s in self.incoming]
        self.incoming.clear()
        log = self.log
        for s in self.running.values():
            log.preemptions[s.rid] += 1
            if log.first_token_s[s.rid] > now:  # a chained plan's head that never ran
                log.first_token_s[s.rid] = math.nan
        self.running.clear()
        self.prefilling.clear()
        self.waiting.clear()
        self._finish.clear()
        if self.prefixes is not None:
            self.prefixes.clear()
        self._n_dec = self._ctx0 = self._blk_q = self._pre_blocks = self._shared_dec = 0
        self._blk_r = [0] * BLOCK_TOKENS
        self.plan = None
        return rids

    def busy_until(self, t: float) -> float:
        """Time spent iterating up to `t` (the current plan counted up to `t`)."""
        plan = self.plan
        if plan is None or t <= plan.start:
            return self.busy_s
        return self.busy_s + min(t, plan.end) - plan.start

    # --- decoding sequences -----------------------------------------------------------------
    def _start_decoding(self, s: Seq) -> None:
        i = self.iterations
        s.start = i
        s.finish_at = i + s.output - s.generated
        s.x = s.cached - i + BLOCK_TOKENS * (1 - s.shared)
        s.alive = True
        self._shared_dec += s.shared
        self._n_dec += 1
        self._ctx0 += s.cached - i
        self._blk_q += s.x // BLOCK_TOKENS
        self._blk_r[s.x % BLOCK_TOKENS] += 1
        heapq.heappush(self._finish, (s.finish_at, s.order, s))

    def _stop_decoding(self, s: Seq) -> None:
        """Take a decoding sequence out of the sums; its explicit state is brought up to date."""
        i = self.iterations
        s.generated += i - s.start
        s.cached += i - s.start
        s.alive = False
        self._shared_dec -= s.shared
        self._n_dec -= 1
        self._ctx0 -= s.cached - i
        self._blk_q -= s.x // BLOCK_TOKENS
        self._blk_r[s.x % BLOCK_TOKENS] -= 1

    def _decode_blocks(self, i: int) -> int:
        """Blocks the decoding sequences need for their token of iteration `i` (>= now):
        sum of ceil((cached + 1) / 16) = sum of (x + i) // 16."""
        phase = i % BLOCK_TOKENS
        extra = sum(self._blk_r[BLOCK_TOKENS - phase :]) if phase else 0
        return self._blk_q + self._n_dec * (i // BLOCK_TOKENS) + extra

    def _register_chain(self, s: Seq) -> int:
        """A prefill done: each of its hash blocks after those it used becomes a cache entry
        unless one is there (another request's copy: it keeps its own). The blocks it now
        shares."""
        cache = self.prefixes
        assert cache is not None and s.chain is not None
        size, held, added = self.chain_blocks, s.chain_held, 0
        for key in s.chain[len(held) :]:
            if key in cache.entries:
                continue
            cache.entries[key] = 1
            cache.sizes[key] = size
            cache.blocks += size
            held.append(key)
            added += size
        return added

    def _release(self, s: Seq) -> None:
        """A sequence leaves (done or preempted): it stops using its cached entries."""
        cache = self.prefixes
        assert cache is not None
        own = s.shared - s.conv_held - self.chain_blocks * len(s.chain_held)
        if s.conv_held:
            cache.release(s.conv)
        for key in s.chain_held:
            cache.release(key)
        if own:
            cache.release(s.prefix)
        s.shared = s.conv_held = 0
        s.chain_held = []

    def _done(self, s: Seq, end: float) -> None:
        del self.running[s.order]
        self.log.finish_s[s.rid] = end
        if s.shared:
            self._release(s)
        if self.finished is not None:
            self.finished.append(s.rid)
            if s.conv != -1:  # its context stays cached for the conversation's next turn
                cache = self.prefixes
                assert cache is not None
                system = cache.blocks_each if s.prefix >= 0 else 0
                cache.store(s.conv, s.cached // BLOCK_TOKENS - system)

    # --- scheduling --------------------------------------------------------------------------
    def _cut(self, plan: _Plan, now: float) -> None:
        """End a plan at its first iteration boundary at or after `now`."""
        d0 = plan.start + plan.head  # where the decode iterations start
        if now <= d0:
            j = 0 if plan.chunks is not None else 1
        else:
            a, b = plan.growth / 2.0, plan.first - plan.growth / 2.0  # T(j) = a j^2 + b j
            c = now - d0
            root = c / b if a == 0.0 else (-b + math.sqrt(b * b + 4.0 * a * c)) / (2.0 * a)
            j = max(1, math.ceil(root))
            # plan.end_of(j) inlined: d0 + decode_run_s(first, growth, j)
            first, growth = plan.first, plan.growth
            while j > 1 and d0 + ((j - 1) * first + growth * ((j - 1) * (j - 2.0) / 2.0)) >= now:
                j -= 1
            while j < plan.k and d0 + (j * first + growth * (j * (j - 1.0) / 2.0)) < now:
                j += 1
        if j < plan.k:
            plan.set_k(j)

    def _preempt(self, victim: Seq) -> None:
        del self.running[victim.order]
        if victim.alive:
            self._stop_decoding(victim)
        else:
            del self.prefilling[victim.order]
            self._pre_blocks -= -(-victim.cached // BLOCK_TOKENS) - victim.shared
        if victim.shared:
            self._release(victim)
        self.log.preemptions[victim.rid] += 1
        victim.target = self.log.prompt_list[victim.rid] + victim.generated
        victim.prefilled = victim.cached = 0
        self.waiting.appendleft(victim)

    def _plan(self, now: float) -> None:
        """Schedule the iteration that starts at `now` (and, fast, the stretch after it)."""
        i = self.iterations
        cache = self.prefixes
        cap = self.kv_blocks if cache is None else self.kv_blocks - cache.blocks
        # KV for the running sequences' next tokens; preempt the newest until they fit, once
        # the prefix cache has given up every prefix no running sequence uses.
        # (ceil((c + 1) / 16) <= (c + 16) / 16: when that bound fits, skip the exact count.)
        n = self._n_dec
        base = (
            self._pre_blocks
            + (self._ctx0 + n * (i + BLOCK_TOKENS)) // BLOCK_TOKENS
            - self._shared_dec
        )
        if base > cap:
            if cache is not None:
                cap += cache.evict(self._decode_blocks(i) + self._pre_blocks - cap)
            while self.running and self._decode_blocks(i) + self._pre_blocks > cap:
                self._preempt(self.running[next(reversed(self.running))])
            n = self._n_dec
            base = (
                self._pre_blocks
                + (self._ctx0 + n * (i + BLOCK_TOKENS)) // BLOCK_TOKENS
                - self._shared_dec
            )
        if self.incoming:
            self._admit_transferred(now, cap)
            n = self._n_dec
            base = (
                self._pre_blocks
                + (self._ctx0 + n * (i + BLOCK_TOKENS)) // BLOCK_TOKENS
                - self._shared_dec
            )
        if not (self.prefilling or self.waiting):
            if self.running:
                self._decode_stretch(now, i, cap)
            return
        # `base`, blocks in use, is that upper bound; the exact count (a sum over 16 residues)
        # is taken only when a decision hangs on it, so every decision is the exact count's.
        exact = False
        budget = self.max_batched_tokens - self._n_dec
        chunks: list[tuple[Seq, int]] = []
        extra = 0  # blocks the chunks add
        for s in list(self.prefilling.values()) if self.prefilling else ():  # oldest first
            if budget <= 0:
                break
            left = s.target - s.prefilled
            c = min(left, budget)
            if not self.chunked_prefill and c < left:
                continue
            more = -(-(s.cached + c) // BLOCK_TOKENS) - -(-s.cached // BLOCK_TOKENS)
            # vLLM V1: a running request's new tokens get blocks, preempting the newest running
            # request (possibly itself, which ends the pass) until they do.
            while base + extra + more > cap and s.order in self.running:
                if not exact:
                    base, exact = self._decode_blocks(i) + self._pre_blocks, True
                    continue
                if cache is not None and cache.evictable():
                    cap += cache.evict(base + extra + more - cap)
                    continue
                self._preempt(self.running[next(reversed(self.running))])
                base = self._decode_blocks(i) + self._pre_blocks
                budget = self.max_batched_tokens - self._n_dec - sum(c for _, c in chunks)
            if s.order not in self.running:
                break
            chunks.append((s, c))
            budget -= c
            extra += more
        added = extra  # blocks the iteration's chunks add
        n = self._n_dec
        waiting = self.waiting
        while waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            head = waiting[0]
            hit = chit = False
            skip = 0
            if cache is not None:
                entries = cache.entries
                hit = head.prefix >= 0 and head.prefix in entries
                skip = cache.blocks_each * BLOCK_TOKENS if hit else 0
                # its conversation's blocks, behind its system prompt's (if it has one)
                chit = (
                    head.conv != -1
                    and head.conv in entries
                    and (hit or head.prefix < 0 or not cache.blocks_each)
                )
                if chit:
                    skip += cache.sizes[head.conv] * BLOCK_TOKENS
                chain = head.chain
                if chain:  # the leading hash blocks cached (an id names its whole prefix)
                    k, size = 0, self.chain_blocks
                    most = (head.target - 1) // (size * BLOCK_TOKENS)  # one token to prefill
                    while k < len(chain) and k < most and chain[k] in entries:
                        k += 1
                    used = chain[:k]
                    skip += k * size * BLOCK_TOKENS
            c = min(head.target - skip, budget)
            if not self.chunked_prefill and c < head.target - skip:
                break
            blocks = -(-c // BLOCK_TOKENS)
            if base + added + blocks > cap:
                if not exact:
                    base, exact = self._decode_blocks(i) + self._pre_blocks, True
                if base + added + blocks > cap and cache is not None:
                    # the entries it is about to use stay
                    keep: tuple[int, ...] = (head.prefix if hit else -1, head.conv if chit else -1)
                    if head.chain:
                        keep = (*keep, *used)
                    cap += cache.evict(base + added + blocks - cap, keep)
                if base + added + blocks > cap:
                    break
            waiting.popleft()
            head.order = self._order
            self._order += 1
            if skip:  # its prefix's blocks are the cache's: prefill starts after them
                assert cache is not None
                if hit:
                    head.shared = cache.use(head.prefix)
                if chit:
                    head.conv_held = cache.use(head.conv)
                    head.shared += head.conv_held
                if head.chain and used:  # the tail first, so that LRU evicts it first
                    for key in reversed(used):
                        head.shared += cache.use(key)
                    head.chain_held = list(used)
                head.prefilled = head.cached = skip
            if math.isnan(self.log.admitted_s[head.rid]):
                self.log.admitted_s[head.rid] = now
                self.log.cached_tokens[head.rid] = skip
            self.running[head.order] = head
            self.prefilling[head.order] = head
            chunks.append((head, c))
            budget -= c
            added += blocks
        if not chunks:
            if self._n_dec:
                self._decode_stretch(now, i, cap)
            return  # else nothing fits (a prompt larger than the whole cache): stay idle
        tokens = 0
        pairs = 0.0
        finishing = 0
        for s, c in chunks:  # a prefill iteration: always one at a time
            tokens += c
            pairs += c * s.prefilled + c * (c + 1) / 2.0
            if s.prefilled + c >= s.target:
                finishing += 1
        dt = self.table.time_s(tokens, n, self._ctx0 + n * i, pairs, finishing)
        if self.fast and self._chains(chunks, finishing, i):
            # Nothing can change between this iteration and the decode stretch after it
            # unless a request arrives, which cuts the plan: apply the iteration now and plan
            # both at once (one plan less per request; the step tier plans them apart).
            self._apply_head(chunks, now + dt)
            i += 1
            n = self._n_dec
            if cache is not None:  # a prefix registered by the head moved into the cache
                cap = self.kv_blocks - cache.blocks
            if (
                self._pre_blocks
                + (self._ctx0 + n * (i + BLOCK_TOKENS)) // BLOCK_TOKENS
                - self._shared_dec
                > cap
                and self._decode_blocks(i) > cap
            ):
                self.plan = _Plan(now, dt, chunks, 0, 0.0, 0.0, applied=True)  # preempts next
                return
            k, first, growth = self._stretch(i, cap)
            self.plan = _Plan(now, dt, chunks, k, first, growth, applied=True)
            return
        self.plan = _Plan(now, dt, chunks, 0, 0.0, 0.0)

    def _chains(self, chunks: list[tuple[Seq, int]], finishing: int, i: int) -> bool:
        """Whether a prefill iteration is followed by a decode stretch whatever happens: every
        prompt in prefill finishes in it, none of them is done after one token, nobody waits
        and no decoding sequence finishes in it (a finish must end a plan: the router hears
        of it)."""
        if (
            self.waiting
            or self.incoming
            or finishing != len(self.prefilling)
            or len(chunks) != finishing
        ):
            return False
        for s, _ in chunks:
            if s.generated + 1 >= s.output:
                return False
        heap = self._finish
        while heap and not (
            heap[0][2].alive
            and heap[0][2].order == heap[0][1]
            and heap[0][2].finish_at == heap[0][0]
        ):
            heapq.heappop(heap)  # left by a preempted sequence
        return not heap or heap[0][0] > i + 1

    def _decode_stretch(self, now: float, i: int, cap: int) -> None:
        k, first, growth = self._stretch(i, cap)
        self.plan = _Plan(now, 0.0, None, k, first, growth)

    def _stretch(self, i: int, cap: int) -> tuple[int, float, float]:
        """Decode-only iterations from iteration `i` until the first sequence finishes or the
        KV cache overflows (one iteration in the step tier): (k, first, growth)."""
        heap = self._finish
        top = heap[0]
        while not (top[2].alive and top[2].order == top[1] and top[2].finish_at == top[0]):
            heapq.heappop(heap)  # left by a preempted sequence
            top = heap[0]
        k = top[0] - i if self.fast else 1
        n = self._n_dec
        last = i + k - 1  # the stretch's last iteration; the bound first, as in _plan
        if (
            k > 1
            and (self._ctx0 + n * (last + BLOCK_TOKENS)) // BLOCK_TOKENS - self._shared_dec > cap
            and self._decode_blocks(last) > cap
        ):
            lo, hi = 1, k - 1  # the last k that fits lies in [lo, hi]
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._decode_blocks(i + mid - 1) <= cap:
                    lo = mid
                else:
                    hi = mid - 1
            k = lo
        first, growth = self.table.decode_run(n, self._ctx0 + n * i)
        return k, first, growth
