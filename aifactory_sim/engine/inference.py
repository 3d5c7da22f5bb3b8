"""The serving model of the `step` and `fast` tiers: requests, a router, and a ReplicaCore per
replica (engine/replica.py), on top of a replica fleet (engine/fleet.py: nodes, cold starts,
the autoscaler, drains, failures, the GPU-hour meters), which it talks to through
ports.FleetView and which talks to it through ports.ServingModel.

Time inside a service. Requests and replica iterations are the service's own events, handled in
plain Python in time order (`advance_to`), not as SimPy events: a million requests would
otherwise cost a million SimPy events and more. The model catches up to the simulated clock
whenever something outside it happens or may need to: an autoscaler tick (one SimPy timeout per
sync period), a cold start finishing, a node failing, the end of a draining replica's work, the
end of the run. Between two such moments nothing outside the service depends on its state, so
catching up later gives the same result as stepping along. Every rule below is the same in the
`step` and `fast` tiers; only the replica's planning differs (engine/replica.py).

Router (how a request reaches a replica):
- `least-outstanding` (default): the ready replica with the fewest requests in flight (queued
  or running on it; ties to the lowest index). When every ready replica already holds
  `max_num_seqs` requests the request waits in the router's FIFO queue and goes to the first
  replica that drops below it; with `max_num_seqs: 1` this is the M/M/c queue of Erlang's
  formula (one central queue, c servers).
- `round-robin`, `random`: at once to the next ready replica in turn, or one drawn uniformly;
  each replica queues what it cannot admit.
With no ready replica (all starting) requests wait in the router's queue.

Requests that can never run are dropped on arrival: a prompt plus output longer than a
replica's whole KV cache (vLLM refuses a prompt over `max_model_len`), or, without chunked
prefill, a prompt longer than the token budget.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..kernels.inference import BLOCK_TOKENS
from ..kernels.stats import latency_stats, slo_attainment
from ..spec.serving import TraceTraffic
from .fleet import SERVICE_COLUMNS, Fleet, ReplicaSizing, ServiceRow
from .replica import ReplicaCore, RequestLog, chain_key
from .traffic import Turns, draw_conversations, draw_prefixes, draw_requests

if TYPE_CHECKING:
    from ..spec.inference import InferenceService
    from .ports import FleetView, ReplicaView

__all__ = ["SERVICE_COLUMNS", "RouterModel", "Service", "ServiceRow"]

INF = math.inf

#: prefix-aware routing (RouterModel._affinity): the share of a prompt a replica's past
#: requests must match, and when the load is out of balance (busiest - idlest > BALANCE_ABS
#: requests and busiest > BALANCE_REL x idlest). sgl-router's cache_aware defaults
#: (--cache-threshold 0.3, --balance-abs-threshold 64, --balance-rel-threshold 1.5), which
#: vLLM's router shares.
CACHE_THRESHOLD = 0.3
BALANCE_ABS = 64
BALANCE_REL = 1.5

#: The service as the broker, the factory and the runner see it: its replica fleet.
Service = Fleet


class RouterModel:
    """The `step` and `fast` serving model of one `inference` service (see the module)."""

    def __init__(
        self,
        spec: InferenceService,
        sizing: ReplicaSizing,
        rngs: dict[str, np.random.Generator],
        *,
        tier: str,
        span_s: float,
    ):
        self.spec = spec
        self.table = sizing.table
        self.kv_tokens = sizing.kv_tokens
        self.fast = tier != "step"
        self._next = 0  # requests arrived so far
        self._init_requests(rngs, span_s)
        self.outs: list[int] = []  # requests in flight per replica (by index)
        self._seqs: list[int] = []  # each replica's live heap entry (-1: none)
        self._cores: list[ReplicaCore] = []  # each replica's core (the fleet's replica.core)
        self.queue: deque[int] = deque()  # the router's queue
        self._rr = 0
        self._policy = spec.router
        #: prefix-aware routing's record: conversation -> (replica of its last turn, that
        #: turn's prompt and answer tokens); system prompt -> replicas that served it
        self._conv_at: dict[int, tuple[int, int]] = {}
        self._sys_at: dict[int, set[int]] = {}
        self._seats = spec.batching.max_num_seqs
        # Whether the ready replicas are every replica, in index order (None: to be checked):
        # then least-outstanding's first replica with the fewest in flight is
        # outs.index(min(outs)), two C loops instead of a key call per replica. Every change to
        # the fleet's ready list is followed by a call below that resets it before any routing.
        self._in_order: bool | None = None
        self._heap: list[tuple[float, int, int]] = []  # (plan end, seq, replica)
        self._seq = 0
        # Requests in the system (arrived, not dropped, not finished) and their time integral,
        # kept from the events themselves: Little's law checks it against the request table.
        self._in_system = 0
        self._area = 0.0
        self._area_t = 0.0

    def connect(self, fleet: FleetView) -> None:
        self.fleet = fleet
        self.ready = fleet.ready  # the fleet's list, never rebound
        self.replicas: Sequence[ReplicaView] = fleet.replicas

    def _init_requests(self, rngs: dict[str, np.random.Generator], span_s: float) -> None:
        """Every request of the run, drawn at once (vectorised)."""
        spec = self.spec
        reqs = draw_requests(
            spec.traffic,
            spec.prompt_tokens,
            spec.output_tokens,
            span_s,
            arrivals_rng=rngs["arrivals"],
            prompt_rng=rngs["prompts"],
            output_rng=rngs["outputs"],
        )
        assert reqs.prompt_tokens is not None and reqs.output_tokens is not None  # drawn
        arrival, prompt, output = reqs.arrival_s, reqs.prompt_tokens, reqs.output_tokens
        prefix, conv = None, None
        self.turns: Turns | None = None
        if spec.conversations is not None:  # first turns in arrival order, then later turns
            assert spec.prompt_tokens is not None and spec.output_tokens is not None
            turns = self.turns = draw_conversations(
                spec.conversations,
                reqs,
                spec.prompt_tokens,
                spec.output_tokens,
                conversation_rng=rngs["conversations"],
                prompt_rng=rngs["prompts"],
                output_rng=rngs["outputs"],
            )
            arrival, prompt, output = turns.arrival_s, turns.prompt_tokens, turns.output_tokens
            conv = turns.conversation
            self._next_turn = turns.next_turn.tolist()
            self._think = turns.think_s.tolist()
        sp = spec.system_prompts
        if sp is not None:  # a system prompt before each request's own tokens
            if conv is None:
                prefix = draw_prefixes(sp, prompt.size, rngs["prefixes"])
            else:  # one per conversation, for every turn of it
                prefix = draw_prefixes(sp, int(conv.max(initial=-1)) + 1, rngs["prefixes"])[conv]
            prompt = prompt + sp.tokens
        self.log = RequestLog(arrival + spec.start_at, prompt, output, prefix, conv)
        on = spec.prefix_cache.enabled
        #: KV blocks per trace hash block, when the trace has hashes and caching is on (else 0)
        self.chain_blocks = 0
        if reqs.hash_ids is not None and on and isinstance(spec.traffic, TraceTraffic):
            hb = spec.traffic.hash_block_tokens
            self.chain_blocks = hb // BLOCK_TOKENS
            self.log.chains = [
                [chain_key(h) for h in ids[: int(p) // hb]]
                for ids, p in zip(reqs.hash_ids, reqs.prompt_tokens.tolist(), strict=True)
            ]
        #: the tokens of a shared prefix the replicas may cache (0: no prefix caching)
        self.prefix_tokens = sp.tokens if sp is not None and on else 0
        self.cache_conversations = conv is not None and on
        #: later turns: (arrival, id) of those whose time is known and has not come yet
        self._later: list[tuple[float, int]] = []
        self._later_arrived = 0
        self._firsts = len(reqs.arrival_s) if conv is None else int(conv.max(initial=-1)) + 1
        too_long = self._never_runs()
        self.dropped = too_long
        self._arrivals = self.log.arrival_s[: self._firsts].tolist()
        self._drop = too_long.tolist()
        self._uniform = (
            rngs["router"].random(len(self.log)).tolist() if spec.router == "random" else None
        )

    cores_track_busy = True  # each ReplicaCore counts its iterations' time
    holds_requests = True  # each replica's requests in flight (outs)

    @property
    def tier(self) -> str:
        return "fast" if self.fast else "step"

    #: the log the replicas' cores write (a disaggregated model's prefill view) and whether
    #: they list the requests they finish (RouterModel reads them only for conversations)
    _core_log: RequestLog | None = None
    _track_finished = False

    def _never_runs(self) -> np.ndarray:
        """The requests no replica can ever hold: a prompt and its output beyond the KV cache,
        or, without chunked prefill, a prompt beyond the token budget."""
        log, b = self.log, self.spec.batching
        too_long = log.prompt_tokens + log.output_tokens > self.kv_tokens
        if not b.chunked_prefill:
            too_long |= log.prompt_tokens > b.max_batched_tokens
        return too_long

    def new_core(self, index: int) -> ReplicaCore:
        b = self.spec.batching
        core = ReplicaCore(
            self.table,
            self.log if self._core_log is None else self._core_log,
            kv_capacity_tokens=self.kv_tokens,
            max_num_seqs=b.max_num_seqs,
            max_batched_tokens=b.max_batched_tokens,
            chunked_prefill=b.chunked_prefill,
            fast=self.fast,
            index=index,
            prefix_tokens=self.prefix_tokens,
            cache_conversations=self.cache_conversations,
            track_finished=self._track_finished,
            chain_blocks=self.chain_blocks,
        )
        self.outs.append(0)
        self._seqs.append(-1)
        self._in_order = None
        self._cores.append(core)
        return core

    # --- the model's clock ---------------------------------------------------------------------

    def start(self, now: float) -> None:
        self._area_t = now

    def advance_to(self, t: float) -> None:
        """Handle every arrival and plan end at or before `t`, in time order (a plan end before
        an arrival at the same instant: the finished request frees its seat first)."""
        arrivals, n = self._arrivals, len(self._arrivals)
        heap, replicas, seqs, cores = self._heap, self.replicas, self._seqs, self._cores
        drop, route, plan_end = self._drop, self._route, self._plan_end
        heappop = heapq.heappop
        later = self._later  # never rebound
        i = self._next
        while True:
            ta = arrivals[i] if i < n else INF
            if later and later[0][0] < ta:
                ta = later[0][0]
            while heap:
                top = heap[0]
                if seqs[top[2]] == top[1]:
                    break
                heappop(heap)  # a plan that was cut or cancelled
            tr = heap[0][0] if heap else INF
            if tr <= ta:
                if tr > t:
                    break
                self._area += self._in_system * (tr - self._area_t)
                self._area_t = tr
                self._in_system -= plan_end(replicas[heappop(heap)[2]], tr)
            else:
                if ta > t:
                    break
                self._area += self._in_system * (ta - self._area_t)
                self._area_t = ta
                touched: list[ReplicaView] = []
                while i < n and arrivals[i] == ta:  # requests arriving together
                    if not drop[i]:
                        self._in_system += 1
                        r = route(i, ta)
                        if r is not None and cores[r.index].plan is None:
                            touched.append(r)
                    i += 1
                self._next = i
                while later and later[0][0] == ta:  # conversations' later turns
                    rid = heappop(later)[1]
                    self.log.arrival_s[rid] = ta
                    self._later_arrived += 1
                    if not drop[rid]:
                        self._in_system += 1
                        r = route(rid, ta)
                        if r is not None and cores[r.index].plan is None:
                            touched.append(r)
                for r in touched:
                    self._schedule(r, ta)
        self._next = i

    def _push(self, r: ReplicaView) -> None:
        self._seq += 1
        self._seqs[r.index] = self._seq
        plan = self._cores[r.index].plan
        if plan is not None:
            heapq.heappush(self._heap, (plan.end, self._seq, r.index))

    def _schedule(self, r: ReplicaView, now: float) -> None:
        core = self._cores[r.index]
        if core.plan is None:
            core.schedule(now)
            self._push(r)

    def _plan_end(self, r: ReplicaView, now: float) -> int:
        """A replica's plan ends: its finished requests leave (their number is returned), the
        router's queue refills it, and it plans again."""
        k = r.index
        core = self._cores[k]
        done = core.advance()
        if done:
            self.outs[k] -= done
            if core.finished:
                self._finished(core.finished, now)
            if self.queue and r.state == "ready":
                self._fill_from_queue(r, now)
        # core.schedule(now) and self._push(r), written out: this runs at every plan end, the
        # hottest call of the step and fast tiers (about 3 % of a fast-tier run)
        if core.plan is None and (core.running or core.waiting):
            core._plan(now)
        self._seq += 1
        self._seqs[k] = self._seq
        plan = core.plan
        if plan is not None:
            heapq.heappush(self._heap, (plan.end, self._seq, k))
        return done

    def _finished(self, finished: list[int], now: float) -> None:
        """Requests a replica finished at `now` (the list its core keeps, emptied here): their
        conversations go on (a disaggregated service's prefill side hands them over instead,
        disagg.DisaggregatedModel)."""
        self._next_turns(finished, now)

    def _next_turns(self, finished: list[int], now: float) -> None:
        """Turns of conversations answered at `now`: each one's next turn arrives after its
        think time."""
        nxt, think, later = self._next_turn, self._think, self._later
        for rid in finished:
            j = nxt[rid]
            if j >= 0:
                heapq.heappush(later, (now + think[j], j))
        finished.clear()

    # --- router ------------------------------------------------------------------------------
    def _route(self, rid: int, now: float) -> ReplicaView | None:
        """Send request `rid` to a replica (returned), or to the router's queue (None)."""
        ready = self.ready
        if not ready or self.queue:
            self.queue.append(rid)
            return None
        policy = self._policy
        if policy == "prefix-aware":
            k = self._affinity(rid)
            if k >= 0:
                return self._send(self.replicas[k], rid, now)
            policy = "least-outstanding"
        if policy == "least-outstanding":
            outs = self.outs
            in_order = self._in_order
            if in_order is None:
                in_order = self._in_order = ready == list(range(len(outs)))
            k = outs.index(min(outs)) if in_order else min(ready, key=outs.__getitem__)
            if outs[k] >= self._seats:
                self.queue.append(rid)
                return None
        elif policy == "round-robin":
            k = ready[self._rr % len(ready)]
            self._rr += 1
        else:
            assert self._uniform is not None
            k = ready[int(self._uniform[rid] * len(ready))]
        return self._send(self.replicas[k], rid, now)

    def _affinity(self, rid: int) -> int:
        """`prefix-aware` routing: the ready replica whose past requests share the longest prefix
        with this one (the replica of its conversation's last turn, matching that turn's prompt
        and answer; else the least loaded replica that served its system prompt), when the match
        is over CACHE_THRESHOLD of the prompt and the replica has a free seat; -1 (least
        outstanding instead) otherwise, or when the load is out of balance: the busiest ready
        replica holds BALANCE_ABS more requests than the idlest and BALANCE_REL times as many.
        SGLang's and vLLM's cache-aware routers (sgl-router `cache_aware`, its defaults), with
        the router's record of past requests exact and never evicted."""
        outs, ready, replicas = self.outs, self.ready, self.replicas
        if not ready:
            return -1
        lo = min(outs[j] for j in ready)
        hi = max(outs[j] for j in ready)
        if hi - lo > BALANCE_ABS and hi > BALANCE_REL * lo:
            return -1
        log = self.log
        prompt = log.prompt_list[rid]
        best, match = -1, 0
        if self.turns is not None:
            at = self._conv_at.get(log.conversation_list[rid])  # type: ignore[index]
            if at is not None and replicas[at[0]].state == "ready":
                best, match = at[0], min(at[1], prompt)
        if log.prefix_list is not None and self.spec.system_prompts is not None:
            tokens = self.spec.system_prompts.tokens
            held = self._sys_at.get(log.prefix_list[rid])
            if held and tokens > match:
                up = [j for j in held if replicas[j].state == "ready"]
                if up:
                    best, match = min(up, key=outs.__getitem__), tokens
        if best < 0 or match <= CACHE_THRESHOLD * prompt or outs[best] >= self._seats:
            return -1
        return best

    def _send(self, r: ReplicaView, rid: int, now: float) -> ReplicaView:
        k = r.index
        if self._policy == "prefix-aware":  # what the router remembers of past requests
            log = self.log
            if log.conversation_list is not None:
                conv = log.conversation_list[rid]
                self._conv_at[conv] = (k, log.prompt_list[rid] + log.output_list[rid])
            if log.prefix_list is not None:
                self._sys_at.setdefault(log.prefix_list[rid], set()).add(k)
        core = self._cores[k]
        plan = core.plan
        k_before = plan.k if plan is not None else 0
        core.add(rid, now)
        self.outs[k] += 1
        if plan is not None and plan.k != k_before:
            self._push(r)  # the decode stretch was cut
        return r

    def _fill_from_queue(self, r: ReplicaView, now: float) -> None:
        """A replica has room: hand it the router's queue, oldest first."""
        queue = self.queue
        if self.spec.router in ("least-outstanding", "prefix-aware"):
            seats = self.spec.batching.max_num_seqs
            while queue and self.outs[r.index] < seats:
                self._send(r, queue.popleft(), now)
        else:
            waiting = list(queue)
            queue.clear()
            for rid in waiting:
                target = self._route(rid, now)
                if target is not None:
                    self._schedule(target, now)

    # --- what the fleet asks -------------------------------------------------------------------
    def mean_lengths(self) -> tuple[float, float, float]:
        """Mean prompt tokens to prefill, found cached (unknown ahead: 0), and output tokens
        of the requests that can run (a planner's sizing, fleet.slo_capacity_rps)."""
        keep = ~self.dropped
        if not keep.any():
            return 0.0, 0.0, 0.0
        log = self.log
        return (
            float(log.prompt_tokens[keep].mean()),
            0.0,
            float(log.output_tokens[keep].mean()),
        )

    def arrived(self) -> float:
        return self._next + self._later_arrived

    def metric(self, kind: str) -> float:
        if kind == "queue":
            return float(len(self.queue) + sum(len(self._cores[k].waiting) for k in self.ready))
        return float(len(self.queue) + sum(self.outs[k] for k in self.ready))

    def row(self) -> tuple[float, float, float]:
        cores = self._cores
        kv = [cores[k].kv_used_blocks() / max(cores[k].kv_blocks, 1) for k in self.ready]
        return (
            sum(self.outs[k] for k in self.ready) + len(self.queue),
            len(self.queue),
            float(np.mean(kv)) if kv else 0.0,
        )

    def in_flight(self, index: int) -> int:
        return self.outs[index]

    def replica_ready(self, replica: ReplicaView, now: float) -> None:
        self._in_order = None
        if self.queue:
            self._fill_from_queue(replica, now)
            self._schedule(replica, now)

    def scaled_down(self, ready_before: int, ready_after: int) -> None:
        self._in_order = None  # the removed replicas drain their own requests

    def node_failing(self, hit: Sequence[ReplicaView]) -> None:
        self._in_order = None  # their requests come back through `evicted`

    def evicted(self, replica: ReplicaView, now: float) -> list[int]:
        self._in_order = None
        orphans = replica.core.evict(now)
        self.outs[replica.index] = 0
        self._seqs[replica.index] = -1
        return orphans

    def stopped(self, replica: ReplicaView) -> None:
        self._seqs[replica.index] = -1
        self._in_order = None

    def reroute(self, requests: list[int], now: float) -> None:
        self._in_order = None
        for rid in sorted(requests):
            target = self._route(rid, now)
            if target is not None:
                self._schedule(target, now)

    # --- end of the run ---------------------------------------------------------------------------
    def close(self, horizon: float) -> None:
        late = self.log.first_token_s > horizon  # a chained plan's head, applied ahead
        self.log.first_token_s[late] = math.nan
        self._check_little(horizon)

    def _arrived(self) -> slice | np.ndarray:
        """The requests that arrived, as an index of the log: the first `_next` without
        conversations; with them, every first turn and later turn that came, in arrival order
        (ties by id)."""
        if self.turns is None:
            return slice(0, self._next)
        arrival = self.log.arrival_s
        ids = np.concatenate(
            (
                np.arange(self._next),
                self._firsts + np.flatnonzero(np.isfinite(arrival[self._firsts :])),
            )
        )
        return ids[np.lexsort((ids, arrival[ids]))]

    def _check_little(self, horizon: float) -> None:
        """Little's law on every run: the time integral of requests in the system, kept from
        the engine's own arrivals and completions, must equal the sum over the request table
        of each request's time in the system (to the end of the run). A mismatch means a
        request was lost or counted twice: an internal error, never a user's."""
        n = self._arrived()
        log = self.log
        keep = ~self.dropped[n]
        spent = np.minimum(np.nan_to_num(log.finish_s[n], nan=horizon), horizon)
        total = float((spent - log.arrival_s[n])[keep].sum())
        self._area += self._in_system * (horizon - self._area_t)
        self._area_t = horizon
        if not math.isclose(self._area, total, rel_tol=1e-9, abs_tol=1e-6):
            raise RuntimeError(
                f"service {self.spec.name}: requests in system integrate to "
                f"{self._area} request-s, the request table to {total}"
            )

    # --- results --------------------------------------------------------------------------------
    def requests_frame(self) -> dict[str, np.ndarray]:
        """The per-request table's columns (requests that arrived before the end of the run)."""
        log = self.log
        n = self._arrived()
        arrival = log.arrival_s[n]
        ids = np.arange(self._next) if isinstance(n, slice) else n
        cols: dict[str, np.ndarray] = {
            "request": ids,
            "arrival_s": arrival,
            "admitted_s": log.admitted_s[n],
            "first_token_s": log.first_token_s[n],
            "finish_s": log.finish_s[n],
            "prompt_tokens": log.prompt_tokens[n],
            "output_tokens": log.output_tokens[n],
            "queue_wait_s": log.admitted_s[n] - arrival,
            "preemptions": log.preemptions[n],
            "replica": log.replica[n],
            "dropped": self.dropped[n],
        }
        # with system prompts: each request's (its index); with conversations, each request's
        # conversation (the id of its first turn) and turn (from 1); with either, the prompt
        # tokens its first admission found in its replica's prefix cache
        if log.prefix is not None:
            cols["prefix"] = log.prefix[n]
        if self.turns is not None:
            cols["conversation"] = self.turns.conversation[n]
            cols["turn"] = self.turns.turn[n]
        if log.prefix is not None or self.turns is not None or log.chains is not None:
            cols["cached_tokens"] = log.cached_tokens[n]
        return cols

    def summary(self, horizon: float, active_s: float) -> dict[str, Any]:
        """The requests' part of the service's summary (docs/reference/metrics.md)."""
        cols = self.requests_frame()
        done = np.isfinite(cols["finish_s"])
        arrival = cols["arrival_s"][done]
        first = cols["first_token_s"][done]
        finish = cols["finish_s"][done]
        out = cols["output_tokens"][done]
        rtt = self.spec.network_rtt_s  # the users' round trip to the replicas
        ttft = first - arrival + rtt
        multi = out > 1
        tpot = (finish[multi] - first[multi]) / (out[multi] - 1)
        e2e = finish - arrival + rtt
        wait = cols["queue_wait_s"][done]
        dropped = int(cols["dropped"].sum())
        slo = self.spec.slo
        attained: float | None = None
        met: dict[str, bool] = {}
        if slo is not None:
            tpot_all = np.where(multi, (finish - first) / np.maximum(out - 1, 1), 0.0)
            attained, met = slo_attainment(slo, ttft, tpot_all, tpot, dropped=dropped)
        return {
            "requests": int(cols["arrival_s"].size),
            "completed": int(done.sum()),
            "dropped": dropped,
            "in_flight": int(cols["arrival_s"].size - done.sum() - dropped),
            "output_tokens": int(out.sum()),
            "output_tokens_per_s": float(out.sum() / active_s) if active_s else 0.0,
            "ttft_s": latency_stats(ttft),
            "tpot_s": latency_stats(tpot),
            "e2e_s": latency_stats(e2e),
            "queue_wait_s": latency_stats(wait),
            "preemptions": int(cols["preemptions"].sum()),
            "slo_attainment": attained,
            "slo_met": met,
            "in_system_mean": self._area / active_s if active_s else 0.0,
            **self._prefix_summary(cols),
            **self._conversation_summary(cols),
        }

    def _conversation_summary(self, cols: dict[str, np.ndarray]) -> dict[str, Any]:
        """With conversations: how many started, their turns so far, and how often a later
        turn found its conversation's context cached (docs/reference/metrics.md)."""
        if self.turns is None:
            return {}
        turn = cols["turn"]
        later = turn > 1
        sp = self.spec.system_prompts
        system = (sp.tokens // BLOCK_TOKENS) * BLOCK_TOKENS if sp is not None else 0
        admitted = later & np.isfinite(cols["admitted_s"])
        hits = admitted & (cols["cached_tokens"] > system)
        started = int((turn == 1).sum())
        hit_rate = float(hits.sum() / admitted.sum()) if admitted.any() else 0.0
        return {
            "conversations": {
                "started": started,
                "turns": int(turn.size),
                "turns_per_conversation": float(turn.size / started) if started else 0.0,
                "later_turns": int(later.sum()),
                "later_turn_hit_rate": hit_rate,
                "later_turn_prompt_tokens_mean": (
                    float(cols["prompt_tokens"][later].mean()) if later.any() else 0.0
                ),
            }
        }

    def _prefix_summary(self, cols: dict[str, np.ndarray]) -> dict[str, Any]:
        """With system prompts: the prefix cache's hit rate in prompt tokens (of the requests
        admitted), the prefill tokens it saved and the requests that hit (docs/reference/
        metrics.md)."""
        if "cached_tokens" not in cols:
            return {}
        admitted = np.isfinite(cols["admitted_s"])
        cached = cols["cached_tokens"][admitted]
        prompt = int(cols["prompt_tokens"][admitted].sum())
        evictions = sum(c.prefixes.evictions for c in self._cores if c.prefixes is not None)
        return {
            "prefix_cache": {
                "enabled": self.prefix_tokens > 0
                or self.cache_conversations
                or self.chain_blocks > 0,
                "hit_rate_tokens": float(cached.sum() / prompt) if prompt else 0.0,
                "prefill_tokens_saved": int(cached.sum()),
                "requests_hit": int((cached > 0).sum()),
                "requests_admitted": int(admitted.sum()),
                "evictions": int(evictions),
            }
        }
