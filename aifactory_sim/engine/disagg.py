"""Disaggregated prefill and decode in the `step` and `fast` tiers: one service's requests over
two replica fleets, a prefill fleet and a decode fleet (engine/fleet.py, each with its own
layout, count, cold starts, failures and autoscaler), joined by KV-cache transfers.

A request arrives at the prefill router (the service's `router`, as in engine/inference.py)
and prefills on a prefill replica, whose ReplicaCore runs it with one output token: its first
token is sampled there (TTFT ends). Its KV cache then moves to a decode replica, picked at that
moment: the ready one with the fewest requests on it and a free seat (`max_num_seqs` of the
decode side); with none, the request waits at the decode router, first come first served, its
KV still on the prefill replica, until a decode replica has a seat. The move is a transfer over
the prefill replica's link (`kv_transfer.link`): the request's KV bytes (one copy of the
model's cache for its prompt, kernels.inference.kv_bytes_per_sequence) at the link's bandwidth,
after the transfers queued on that link before it (first come first served; the link is the
prefill replica's NICs, each GPU's achievable scale-out bandwidth, or its NVLink), plus the
link's latency:

    end = max(now, link free) + bytes / bandwidth + latency.

Transferred, the request joins its decode replica's queue of arrivals (ReplicaCore.
add_transferred) and is admitted, first come first served, when its blocks fit: a decode
replica's KV capacity bounds what it takes. It decodes from its second token there. A request of
one output token is done at its prefill.

What is simplified: the prefill replica frees the request's blocks at its first token (the
transfer reads from a copy); transfers on different links do not share a switch; a decode
replica's ingress is not a bottleneck; the prefill replica's prefix cache holds the prompts it
prefilled (a conversation's later turn finds its earlier prompts there, not the answers, which
were decoded elsewhere). A decode replica that fails sends its requests to another decode
replica, where they are prefilled again.

Every rule is the same in `step` and `fast`; the two fleets' replicas, the transfers and the
arrivals are one service's events, handled in one time-ordered loop (`advance_to`), so that a
choice made at a prefill's end sees the decode replicas as they are at that instant.
"""

from __future__ import annotations

import copy
import heapq
import math
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..kernels.collectives import leaf_share_slowdown
from ..kernels.inference import BLOCK_TOKENS, kv_bytes_per_sequence
from ..kernels.stats import latency_stats
from .inference import INF, RouterModel
from .replica import ReplicaCore

if TYPE_CHECKING:
    from ..spec.inference import InferenceService
    from .fleet import ReplicaSizing
    from .ports import FleetView, ReplicaView

__all__ = ["DecodeSide", "DisaggregatedModel", "kv_link"]


def kv_link(
    side: InferenceService,
    sizing: ReplicaSizing,
    link: str,
    latency_us: float | None,
    fabric_latency_us: float,
) -> tuple[float, float]:
    """(bytes/s, seconds of latency) of a prefill replica's KV link: its GPUs' achievable
    scale-out bandwidth (the kernels' nic_bytes_per_s, per GPU and direction) over the fabric,
    or their NVLink bandwidth x the family's nvlink_efficiency within an NVLink domain; the
    latency the fabric's (`fabric.latency_us`) or the GPU's NVLink alpha unless given."""
    gpus = side.gpus_per_replica
    g, par = sizing.gpu_args, sizing.parallel_args
    if link == "nvlink":
        bw = gpus * float(g["nvlink_bytes_per_s"]) * float(g["nvlink_efficiency"])
        lat = float(g["nvlink_alpha_s"]) if latency_us is None else latency_us * 1e-6
    else:
        bw = gpus * float(par["nic_bytes_per_s"])
        lat = (fabric_latency_us if latency_us is None else latency_us) * 1e-6
    return bw, lat


class DisaggregatedModel(RouterModel):
    """The `step` and `fast` serving model of a disaggregated service (see the module). The
    prefill fleet sees it as its serving model (RouterModel's routing over the prefill
    replicas); the decode fleet through a DecodeSide."""

    def __init__(
        self,
        service: InferenceService,
        prefill: ReplicaSizing,
        decode: ReplicaSizing,
        rngs: dict[str, np.random.Generator],
        *,
        tier: str,
        span_s: float,
        fabric_latency_us: float,
    ):
        assert service.disaggregation is not None
        self.service = service
        self.prefill_spec = service.side("prefill")
        self.decode_spec = service.side("decode")
        self.decode_sizing = decode
        super().__init__(self.prefill_spec, prefill, rngs, tier=tier, span_s=span_s)
        log = self.log
        n = len(log)
        # The prefill replicas see one output token; the decode replicas the whole output,
        # no prefix cache, and their own replica column. Both write the log's timestamps.
        self.plog = copy.copy(log)
        self.plog.output_list = [1] * n
        self._core_log, self._track_finished = self.plog, True
        self.dlog = copy.copy(log)
        self.dlog.prefix_list = None
        self.dlog.conversation_list = None
        self.dlog.replica = np.full(n, -1, dtype=np.int64)
        # KV transfers
        d = service.disaggregation
        self.link_bw, self.link_s = kv_link(
            self.prefill_spec,
            prefill,
            d.kv_transfer.link,
            d.kv_transfer.latency_us,
            fabric_latency_us,
        )
        self.kv_bytes = kv_bytes_per_sequence(
            prefill.model_args, log.prompt_tokens, service.kv_precision, 1
        )
        self._kv_bytes = self.kv_bytes.tolist()
        self.kv_start = np.full(n, math.nan)
        self.kv_end = np.full(n, math.nan)
        self._link_free: list[float] = []  # per prefill replica
        self._xfers: list[tuple[float, int]] = []  # (end, request)
        self._dest: dict[int, int] = {}  # request in transfer -> its decode replica
        self._handed = 0  # requests whose transfer ended (the decode side's arrivals)
        # the decode side: replicas, their requests in flight, the decode router's queue
        self.douts: list[int] = []
        self._dseqs: list[int] = []
        self._dcores: list[ReplicaCore] = []
        self._dheap: list[tuple[float, int, int]] = []
        self.dqueue: deque[int] = deque()
        self._dseats = self.decode_spec.batching.max_num_seqs
        # kv-aware routing: the blocks of the prompts on each decode replica or on their way
        self._kv_aware = d.decode_router == "kv-aware"
        self._blocks = (-(-(log.prompt_tokens + 1) // BLOCK_TOKENS)).tolist()
        self._dcommit: list[int] = []
        self._on: dict[int, int] = {}  # request -> the decode replica its blocks count on
        # the fabric's leaves (attach_fabric): None while transfers cannot be slowed
        self._leaf: np.ndarray | None = None
        self.kv_slowdown = np.full(n, math.nan)
        self.kv_cross = np.zeros(n, dtype=bool)  # a transfer that crossed leaves

    def _never_runs(self) -> np.ndarray:
        """What can never run: a prompt beyond a prefill replica's cache (or budget, without
        chunked prefill), or a prompt and its output beyond a decode replica's."""
        log, b = self.log, self.prefill_spec.batching
        too_long = (log.prompt_tokens + 1 > self.kv_tokens) | (
            log.prompt_tokens + log.output_tokens > self.decode_sizing.kv_tokens
        )
        if not b.chunked_prefill:
            too_long |= log.prompt_tokens > b.max_batched_tokens
        return too_long

    # --- the two fleets ------------------------------------------------------------------------
    def connect_decode(self, fleet: FleetView) -> None:
        self.dfleet = fleet
        self.dready = fleet.ready
        self.dreplicas: Sequence[ReplicaView] = fleet.replicas

    def new_core(self, index: int) -> ReplicaCore:
        core = super().new_core(index)  # a prefill replica: the prefill view of the log
        self._link_free.append(-INF)
        return core

    def new_decode_core(self, index: int) -> ReplicaCore:
        b = self.decode_spec.batching
        core = ReplicaCore(
            self.decode_sizing.table,
            self.dlog,
            kv_capacity_tokens=self.decode_sizing.kv_tokens,
            max_num_seqs=b.max_num_seqs,
            max_batched_tokens=b.max_batched_tokens,
            chunked_prefill=b.chunked_prefill,
            fast=self.fast,
            index=index,
            track_finished=True,
        )
        self.douts.append(0)
        self._dseqs.append(-1)
        self._dcores.append(core)
        self._dcommit.append(0)
        return core

    # --- the fabric --------------------------------------------------------------------------
    def attach_fabric(
        self, leaf: np.ndarray, nodes_per_leaf: int, oversubscription: float, node_bytes_s: float
    ) -> None:
        """Rate the transfers that cross leaf switches by their share of the up-links (the
        fabric calls `leaf_load` and `rated`, engine/fabric.py): `leaf` is the leaf of each node
        of the pool, `node_bytes_s` a node's scale-out bandwidth (one flow of the fabric)."""
        self._leaf = leaf
        self._npl, self._over = nodes_per_leaf, oversubscription
        self._node_bw = node_bytes_s
        self._own = self.link_bw / node_bytes_s  # a transfer's flows at its link's full rate
        n_leaves = int(leaf.max()) + 1 if leaf.size else 1
        self._flows = np.zeros(n_leaves)  # the leaves' flows as last rated
        self._sent = np.zeros(n_leaves)  # bytes across each leaf's up-links since the last load
        self._sent_since = self.prefill_spec.start_at

    def leaf_load(self, now: float) -> np.ndarray:
        """The mean flows the transfers put on each leaf's up-links since the last call (bytes
        over a node's bandwidth x the time), the service's events to `now` processed first."""
        self.advance_to(now)
        span = now - self._sent_since
        load = self._sent / (self._node_bw * span) if span > 0 else np.zeros_like(self._sent)
        self._sent = np.zeros_like(self._sent)
        self._sent_since = now
        return load

    def rated(self, flows: np.ndarray) -> None:
        """The flows on each leaf's up-links as the fabric last counted them (rings and
        transfers): what a transfer that crosses them shares."""
        self._flows = flows

    def _leaves(self, nodes: Sequence[int]) -> set[int]:
        assert self._leaf is not None
        return {int(self._leaf[k]) for k in nodes}

    # --- the clock -------------------------------------------------------------------------------
    def advance_to(self, t: float) -> None:
        """Every arrival, plan end (of either side) and transfer end at or before `t`, in time
        order; at one instant plan ends first (prefill, then decode), then transfers, then
        arrivals."""
        arrivals, n = self._arrivals, len(self._arrivals)
        heap, dheap, xfers, later = self._heap, self._dheap, self._xfers, self._later
        seqs, dseqs = self._seqs, self._dseqs
        heappop = heapq.heappop
        i = self._next
        while True:
            ta = arrivals[i] if i < n else INF
            if later and later[0][0] < ta:
                ta = later[0][0]
            while heap and seqs[heap[0][2]] != heap[0][1]:
                heappop(heap)
            while dheap and dseqs[dheap[0][2]] != dheap[0][1]:
                heappop(dheap)
            tp = heap[0][0] if heap else INF
            td = dheap[0][0] if dheap else INF
            tx = xfers[0][0] if xfers else INF
            te = min(tp, td)
            now = min(te, tx, ta)
            if now > t:
                break
            self._area += self._in_system * (now - self._area_t)
            self._area_t = now
            if te <= tx and te <= ta:
                if tp <= td:
                    self._plan_end(self.replicas[heappop(heap)[2]], now)
                else:
                    self._decode_plan_end(heappop(dheap)[2], now)
            elif tx <= ta:
                while xfers and xfers[0][0] == now:
                    self._delivered(heappop(xfers)[1], now)
            else:
                touched: list[ReplicaView] = []
                while i < n and arrivals[i] == now:
                    if not self._drop[i]:
                        self._in_system += 1
                        r = self._route(i, now)
                        if r is not None and self._cores[r.index].plan is None:
                            touched.append(r)
                    i += 1
                self._next = i
                while later and later[0][0] == now:
                    rid = heappop(later)[1]
                    self.log.arrival_s[rid] = now
                    self._later_arrived += 1
                    if not self._drop[rid]:
                        self._in_system += 1
                        r = self._route(rid, now)
                        if r is not None and self._cores[r.index].plan is None:
                            touched.append(r)
                for r in touched:
                    self._schedule(r, now)
        self._next = i

    # --- prefill ends: hand over ---------------------------------------------------------------
    def _finished(self, finished: list[int], now: float) -> None:
        """Prefills done at `now` (a prefill core's finished requests): each goes on to a decode
        replica, or is done if it wanted one token."""
        log = self.log
        for rid in finished:
            if log.output_list[rid] <= 1:
                self._in_system -= 1
                self._answered([rid], now)
                continue
            log.finish_s[rid] = math.nan  # it finishes on its decode replica
            d = self._pick_decode()
            if d < 0:
                self.dqueue.append(rid)
            else:
                self._transfer(rid, d, now)
        finished.clear()

    def _answered(self, finished: list[int], now: float) -> None:
        """Requests answered at `now`: their conversations' next turns (RouterModel's)."""
        if self.turns is not None:
            self._next_turns(finished, now)
        finished.clear()

    def _pick_decode(self) -> int:
        """Among the ready decode replicas with a free seat, least-loaded: the one with the
        fewest requests; kv-aware: the one with the fewest blocks of prompts on it or on their
        way (its prompts' KV and first token, as Dynamo's router counts a decode worker's
        active blocks when it adds a request; the blocks a request grows while it decodes are
        left out), then the fewest requests. Ties: the one ready longest. -1 if none."""
        outs = self.douts
        best = -1
        if self._kv_aware:
            blocks = self._dcommit
            for k in self.dready:
                if outs[k] < self._dseats and (
                    best < 0
                    or blocks[k] < blocks[best]
                    or (blocks[k] == blocks[best] and outs[k] < outs[best])
                ):
                    best = k
            return best
        for k in self.dready:
            if outs[k] < self._dseats and (best < 0 or outs[k] < outs[best]):
                best = k
        return best

    def _commit(self, rid: int, d: int) -> None:
        """Request `rid` is decode replica `d`'s now (kv-aware routing counts its blocks)."""
        if self._kv_aware:
            self._dcommit[d] += self._blocks[rid]
            self._on[rid] = d

    def _released(self, finished: Sequence[int]) -> None:
        """Requests done on their decode replicas: their blocks no longer count there."""
        on, commit, blocks = self._on, self._dcommit, self._blocks
        for rid in finished:
            d = on.pop(rid, -1)
            if d >= 0:
                commit[d] -= blocks[rid]

    def _transfer(self, rid: int, d: int, now: float) -> None:
        """Move request `rid`'s KV from its prefill replica to decode replica `d`: after the
        transfers before it on its link, at the link's bandwidth, over a fabric shared with
        what else crosses the leaves' up-links (see `_slowdown`)."""
        p = int(self.log.replica[rid])  # its prefill replica (the prefill log's column)
        start = max(now, self._link_free[p])
        busy = self._kv_bytes[rid] / self.link_bw
        if self._leaf is not None:
            slow = self._slowdown(rid, p, d)
            busy *= slow
            self.kv_slowdown[rid] = slow
        self._link_free[p] = start + busy
        end = start + busy + self.link_s
        self.kv_start[rid], self.kv_end[rid] = start, end
        self.douts[d] += 1
        self._commit(rid, d)
        self._dest[rid] = d
        heapq.heappush(self._xfers, (end, rid))

    def _slowdown(self, rid: int, p: int, d: int) -> float:
        """How much slower than its link's bandwidth a transfer from prefill replica `p` to
        decode replica `d` runs. Within one leaf it does not touch the up-links: 1. Across
        leaves it is one more flow, at its link's rate (`_own` flows of a node's bandwidth), on
        the up-links of every leaf either replica sits in, beside the flows the fabric last
        counted there (the training jobs' rings, whole, and the transfers' mean over the last
        window, engine/fabric.py): kernels.collectives.leaf_share_slowdown at the most loaded
        of them. Its bytes count toward the next window's load on those leaves."""
        leaves = self._leaves(self.replicas[p].nodes) | self._leaves(self.dreplicas[d].nodes)
        if len(leaves) < 2:
            return 1.0
        self.kv_cross[rid] = True
        idx = list(leaves)
        self._sent[idx] += self._kv_bytes[rid]
        crossed = self._flows[idx] + self._own
        return float(leaf_share_slowdown(crossed, self._npl, self._over).max())

    def _delivered(self, rid: int, now: float) -> None:
        d = self._dest.pop(rid)
        self._handed += 1
        if self.dreplicas[d].state != "ready":  # gone while the KV moved: prefill again
            self.douts[d] = max(self.douts[d] - 1, 0)
            self._released([rid])
            self._decode_reroute([rid], now)
            return
        core = self._dcores[d]
        plan = core.plan
        k_before = plan.k if plan is not None else 0
        core.add_transferred(rid, now)
        if plan is None:
            core.schedule(now)
            self._dpush(d)
        elif plan.k != k_before:
            self._dpush(d)

    # --- decode replicas -------------------------------------------------------------------------
    def _dpush(self, d: int) -> None:
        self._seq += 1
        self._dseqs[d] = self._seq
        plan = self._dcores[d].plan
        if plan is not None:
            heapq.heappush(self._dheap, (plan.end, self._seq, d))

    def _decode_plan_end(self, d: int, now: float) -> None:
        core = self._dcores[d]
        done = core.advance()
        if done:
            self.douts[d] -= done
            self._in_system -= done
            assert core.finished is not None
            if self._kv_aware:
                self._released(core.finished)
            self._answered(core.finished, now)
            if self.dqueue and self.dreplicas[d].state == "ready":
                self._fill_decode(d, now)
        core.schedule(now)
        self._dpush(d)

    def _fill_decode(self, d: int, now: float) -> None:
        """A decode replica has seats: the decode router's queue moves to it, oldest first."""
        while self.dqueue and self.douts[d] < self._dseats:
            self._transfer(self.dqueue.popleft(), d, now)

    def _decode_reroute(self, rids: list[int], now: float) -> None:
        """Requests whose decode replica is gone: prefilled again on another one (its own
        prefill, the KV lost), or queued at the decode router until one has a seat."""
        for rid in sorted(rids):
            d = self._pick_decode()
            if d < 0:
                self.dqueue.append(rid)  # a transfer again, once a seat frees
                continue
            core = self._dcores[d]
            core.add(rid, now)
            self.douts[d] += 1
            self._commit(rid, d)
            if core.plan is None:
                core.schedule(now)
            self._dpush(d)

    # --- results ---------------------------------------------------------------------------------
    def requests_frame(self) -> dict[str, np.ndarray]:
        cols = super().requests_frame()
        ids = cols["request"]
        cols["prefill_replica"] = cols.pop("replica")
        cols["decode_replica"] = self.dlog.replica[ids]
        cols["kv_transfer_start_s"] = self.kv_start[ids]
        cols["kv_transfer_end_s"] = self.kv_end[ids]
        cols["kv_bytes"] = self.kv_bytes[ids]
        slow = self.kv_slowdown[ids]
        moved = np.isfinite(cols["kv_transfer_start_s"])
        cols["kv_fabric_slowdown"] = np.where(moved & ~np.isfinite(slow), 1.0, slow)
        return cols

    def summary(self, horizon: float, active_s: float) -> dict[str, Any]:
        out = super().summary(horizon, active_s)
        done = np.isfinite(self.kv_end) & (self.kv_end <= horizon)
        dur = (self.kv_end - self.kv_start)[done]
        wait = (self.kv_start - self.log.first_token_s)[done]
        moved = float(self.kv_bytes[done].sum())
        links = max(len(self._cores), 1)
        out["kv_transfer"] = {
            "link": self.service.disaggregation.kv_transfer.link,  # type: ignore[union-attr]
            "transfers": int(done.sum()),
            "bytes_gb": moved / 1e9,
            "mean_gb": moved / 1e9 / max(int(done.sum()), 1),
            "time_s": latency_stats(dur),
            "wait_s": latency_stats(wait),
            "link_gb_s": self.link_bw / 1e9,
            "link_utilization": (moved / self.link_bw / (links * active_s) if active_s else 0.0),
        }
        if self._leaf is not None:  # the transfers' share of an oversubscribed fabric
            slow = self.kv_slowdown[done]
            out["kv_transfer"]["fabric"] = {
                "cross_leaf": float(self.kv_cross[done].mean()) if slow.size else 0.0,
                "slowdown_mean": float(slow.mean()) if slow.size else 1.0,
                "slowdown_max": float(slow.max()) if slow.size else 1.0,
            }
        return out

    # --- the decode fleet's calls (DecodeSide) ---------------------------------------------------
    def decode_row(self) -> tuple[float, float, float]:
        cores = self._dcores
        kv = [cores[k].kv_used_blocks() / max(cores[k].kv_blocks, 1) for k in self.dready]
        return (
            sum(self.douts[k] for k in self.dready) + len(self.dqueue),
            len(self.dqueue),
            float(np.mean(kv)) if kv else 0.0,
        )

    def decode_metric(self, kind: str) -> float:
        if kind == "queue":
            return float(
                len(self.dqueue)
                + sum(
                    len(self._dcores[k].waiting) + len(self._dcores[k].incoming)
                    for k in self.dready
                )
            )
        return float(len(self.dqueue) + sum(self.douts[k] for k in self.dready))

    def decode_ready(self, d: int, now: float) -> None:
        if self.dqueue:
            self._fill_decode(d, now)

    def decode_evicted(self, replica: ReplicaView, now: float) -> list[int]:
        orphans = self._dcores[replica.index].evict(now)
        self.douts[replica.index] = 0
        self._released(orphans)
        self._dseqs[replica.index] = -1
        # requests still in transfer to it come back when their transfer ends (_delivered)
        return [rid for rid in orphans if rid not in self._dest]

    def decode_stopped(self, replica: ReplicaView) -> None:
        self._dseqs[replica.index] = -1


class DecodeSide:
    """The decode fleet's serving model: a view of the DisaggregatedModel that owns the
    requests (ports.ServingModel). The prefill fleet starts, closes and reports the model; this
    side reports nothing of its own beyond the fleet's rows."""

    cores_track_busy = True
    holds_requests = True

    def __init__(self, model: DisaggregatedModel):
        self.model = model

    @property
    def tier(self) -> str:
        return self.model.tier

    def connect(self, fleet: FleetView) -> None:
        self.model.connect_decode(fleet)

    def new_core(self, index: int) -> ReplicaCore:
        return self.model.new_decode_core(index)

    def start(self, now: float) -> None:
        pass

    def advance_to(self, t: float) -> None:
        self.model.advance_to(t)

    def arrived(self) -> float:
        return self.model._handed

    def mean_lengths(self) -> tuple[float, float, float]:
        return self.model.mean_lengths()

    def metric(self, kind: str) -> float:
        return self.model.decode_metric(kind)

    def row(self) -> tuple[float, float, float]:
        return self.model.decode_row()

    def in_flight(self, index: int) -> int:
        return self.model.douts[index]

    def replica_ready(self, replica: ReplicaView, now: float) -> None:
        self.model.decode_ready(replica.index, now)
        core = self.model._dcores[replica.index]
        if core.plan is None:
            core.schedule(now)
            self.model._dpush(replica.index)

    def scaled_down(self, ready_before: int, ready_after: int) -> None:
        pass

    def node_failing(self, hit: Sequence[ReplicaView]) -> None:
        pass

    def evicted(self, replica: ReplicaView, now: float) -> list[int]:
        return self.model.decode_evicted(replica, now)

    def stopped(self, replica: ReplicaView) -> None:
        self.model.decode_stopped(replica)

    def reroute(self, requests: list[int], now: float) -> None:
        self.model._decode_reroute(requests, now)

    def close(self, horizon: float) -> None:
        pass

    def requests_frame(self) -> dict[str, np.ndarray]:
        return {}

    def summary(self, horizon: float, active_s: float) -> dict[str, Any]:
        return {}
