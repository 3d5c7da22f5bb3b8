"""GPU, node and facility power; the slowdown a power cap costs; the cost of owning or renting.

Pure numpy on arrays (or floats), no SimPy, no I/O. Equations and sources are in the
docstrings; docs/background/power-cost.md explains the model and its limits.

Power of one GPU at activity ``a`` in [0, 1] (the share of the compute pipeline kept busy):

    P(a) = P_idle + (P_tdp - P_idle) * a,            then  min(P(a), cap)

Linear in activity, the form of the node-power models fitted to measurements of 8x H100
training by Newkirk et al. 2025 ("Empirically-Calibrated H100 Node Power Models", arXiv
2506.14551) and of the utilisation-linear server models since Fan et al. 2007 ("Power
provisioning for a warehouse-sized computer", ISCA).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Idle board power over TDP when the catalog gives no `idle_w`. 80.3 W idle of a 700 W
#: H200 SXM (nvidia-smi, vLLM ladder, api.serialalice.pt GPU energy benchmark, 2026);
#: ~75 W of 700 W on H200 (RunPod, nvidia-smi 1 s, conservemode.com validation study).
IDLE_FRACTION = 0.115

#: MFU at which a training step keeps the GPU at TDP. Latif et al. 2024 (arXiv 2412.08602,
#: IEEE Access 13) measured at most 8.4 kW on an 8x H100 node training Llama2-13b "with
#: GPUs near full utilization", and Newkirk et al. 2025 76% of the node's 10.2 kW rating
#: for compute-intensive training: about 700 W per GPU once ~2 kW of host is taken off.
#: Well-tuned LLM training runs at MFU 0.38-0.43 (Llama 3 405B: 38-43%), so activity
#: a = min(1, MFU / 0.40) puts such runs at TDP and halves the dynamic power at MFU 0.20.
MFU_AT_TDP = 0.40

#: Activity of a serving GPU while it iterates (continuous batching, decode dominated).
#: Decode is memory-bound and draws well under TDP: 517 W on an H200 at batch 128
#: (api.serialalice.pt benchmark), 267-680 W on H100 SXM over batch 1-128 (same source),
#: 137-300 W on H200 at small batches (Ma et al. 2026, arXiv 2605.11999); Patel et al.
#: ASPLOS'24 (POLCA) find inference rarely near TDP. 0.65 gives 481 W on an H100.
SERVING_ACTIVITY = 0.65

#: Exponent of the power-frequency curve under a cap: P_cap / P_tdp = (f / f_max)^k on the
#: compute-bound part. k = 1.4 gives +11.6% step time at 600 W of 700 W, in the 10-15%
#: measured for transformer pretraining on H100 at a 600 W cap (factryze.ai scale atlas,
#: "Power capping"); pure DVFS (V ~ f) would give k = 3, the voltage floor flattens it.
CAP_EXPONENT = 1.4

HOURS_PER_YEAR = 8766.0  # 365.25 days


def idle_power_w(tdp_w: Any, idle_w: Any = None) -> Any:
    """Idle board power: the catalog's `idle_w`, else IDLE_FRACTION x TDP."""
    if idle_w is None:
        return IDLE_FRACTION * np.asarray(tdp_w, dtype=float)
    return np.asarray(idle_w, dtype=float)


def gpu_power_w(activity: Any, tdp_w: Any, idle_w: Any, cap_w: Any = None) -> Any:
    """P = min(P_idle + (P_tdp - P_idle) * clip(a, 0, 1), cap): board power at an activity."""
    a = np.clip(np.asarray(activity, dtype=float), 0.0, 1.0)
    p = idle_w + (np.asarray(tdp_w, dtype=float) - idle_w) * a
    if cap_w is not None:
        p = np.minimum(p, cap_w)
    return p


def training_activity(mfu: Any) -> Any:
    """a = min(1, MFU / MFU_AT_TDP). The reported MFU averages over a job's computing time
    (data stalls included), so a stalled job's lower MFU already lowers its power."""
    return np.clip(np.asarray(mfu, dtype=float) / MFU_AT_TDP, 0.0, 1.0)


def cap_slowdown(cap_w: Any, tdp_w: Any, compute_share: Any) -> Any:
    """Time multiplier of work under a power cap (>= 1).

    The compute-bound share of the time runs at f/f_max = (cap / tdp)^(1/k) (CAP_EXPONENT k);
    the memory-bound rest (decode's weight and KV reads) is held by HBM bandwidth and does not
    slow:  slowdown = 1 + s * ((tdp / min(cap, tdp))^(1/k) - 1),  s = compute share in [0, 1].
    """
    ratio = np.asarray(tdp_w, dtype=float) / np.minimum(cap_w, tdp_w)
    share = np.clip(np.asarray(compute_share, dtype=float), 0.0, 1.0)
    return 1.0 + share * (ratio ** (1.0 / CAP_EXPONENT) - 1.0)


def facility_power_w(it_w: Any, pue: float) -> Any:
    """Facility power = IT power x PUE (cooling, conversion losses, lighting)."""
    return np.asarray(it_w, dtype=float) * pue


def capex_per_gpu_hour_usd(
    node_capex_usd: float,
    network_capex_per_node_usd: float,
    gpus_per_node: float,
    amortization_years: float,
    opex_share_per_year: float = 0.0,
) -> float:
    """Straight-line amortisation plus opex, per GPU-hour of ownership:
    k = (capex_node + network_node) x (1/years + opex_share) / (GPUs per node x 8766 h)."""
    per_node = node_capex_usd + network_capex_per_node_usd
    return (
        per_node
        * (1.0 / amortization_years + opex_share_per_year)
        / (gpus_per_node * HOURS_PER_YEAR)
    )


def private_cost_per_gpu_hour_usd(
    utilisation: Any, k_usd: float, idle_w: float, busy_w: float, pue: float, usd_per_kwh: float
) -> Any:
    """Owning one GPU for an hour at utilisation u (share of the hour in use):
    k + PUE x (P_idle + u (P_busy - P_idle)) / 1000 x price. P includes the node overhead
    share of the GPU."""
    u = np.asarray(utilisation, dtype=float)
    return k_usd + pue * (idle_w + u * (busy_w - idle_w)) / 1000.0 * usd_per_kwh


def cloud_cost_per_gpu_hour_usd(utilisation: Any, rate_usd: float) -> Any:
    """Renting only the hours used: u x rate."""
    return np.asarray(utilisation, dtype=float) * rate_usd


def break_even_utilisation(
    k_usd: float, idle_w: float, busy_w: float, pue: float, usd_per_kwh: float, rate_usd: float
) -> float | None:
    """u* where owning costs what renting the used hours does:
    u r = k + e0 + u de  =>  u* = (k + e0) / (r - de),
    e0 = PUE P_idle price / 1000, de = PUE (P_busy - P_idle) price / 1000. None when the
    cloud rate does not exceed the marginal energy price (renting is always cheaper);
    u* > 1 means owning never pays at this rate."""
    e0 = pue * idle_w / 1000.0 * usd_per_kwh
    de = pue * (busy_w - idle_w) / 1000.0 * usd_per_kwh
    if rate_usd <= de:
        return None
    return float((k_usd + e0) / (rate_usd - de))
