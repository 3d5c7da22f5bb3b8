"""Rewrite the generated tables of docs/background/reliability.md.

    python docs/gen_reliability.py          # rewrite the tables in place
    python docs/gen_reliability.py --check  # exit 1 if the file is out of date

Each table sits between a pair of HTML-comment markers in the Markdown file:
- `daly`: the mean wall time of seeded replications against Daly's expected wall time
  (Daly 2006, Eq. 20), for the four workloads of tests/test_failures.py.
- `sweep`: the mean wall time over a grid of checkpoint intervals around Daly's optimum (Eq. 37).
- `counts`: failure counts of an idle cluster against a Poisson process, and against the
  renewal rate 1/(M + r) with fixed repairs, for exponential and Weibull times to failure.
- `llama3`: scenarios/llama3-405b-54d.yaml: its figures, failures by component, ledger and
  ETTR over seeds.

The scenarios are rebuilt here (nothing is imported from tests/); the runs are seeded, so the
tables are reproducible to the digit. The whole script takes about 40 s.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from _generated import replace_block, run
from scipy import stats
from scipy.special import gamma

import aifactory_sim as af
from aifactory_sim import catalog
from aifactory_sim.kernels.reliability import (
    daly_expected_wall_s,
    daly_interval_s,
    job_mtbf_s,
)

DOC = Path(__file__).parent / "background" / "reliability.md"
LLAMA3 = Path(af.__file__).parent / "scenarios" / "llama3-405b-54d.yaml"

#: Step time of the one-node job of the Daly workloads (llama3-8b, dp 8, 8 x 2048 tokens, H100).
STEP_S = float(
    af.estimate_training(
        "llama3-8b", "H100-SXM", tp=1, pp=1, dp=8, seq_len=2048, global_batch_seqs=8
    ).step_time_s
)

#: (node MTBF h, tau s, delta s, R s): the workloads of test_mean_wall_time_matches_daly.
DALY_CASES = [
    (2.0, 1800.0, 300.0, 600.0),
    (1.0, 1200.0, 120.0, 300.0),
    (8.0, 3600.0, 600.0, 1200.0),
    (4.0, 600.0, 60.0, 900.0),
]
DALY_REPS = 200
SWEEP = dict(mtbf_h=2.0, delta_s=300.0, restart_s=600.0, reps=150, seed=11)
SWEEP_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
LLAMA3_SEEDS = range(1, 11)
#: What-if variants of the Llama 3 scenario: (label, overrides).
LLAMA3_WHATIF = [
    ("as published", {}),
    ("detect 60 s, restart 120 s", {"failures.detect_s": 60, "failures.restart_s": 120}),
    ("storage 200 GB/s", {"cluster.storage.read_gb_s": 200, "cluster.storage.write_gb_s": 200}),
    ("storage 20 GB/s", {"cluster.storage.read_gb_s": 20, "cluster.storage.write_gb_s": 20}),
    ("storage 20 GB/s, async", {"cluster.storage.read_gb_s": 20,
                                "cluster.storage.write_gb_s": 20,
                                "training.0.checkpoint.mode": "async"}),
    ("interval 1h", {"training.0.checkpoint.interval": "1h"}),
]


# --- the workloads --------------------------------------------------------------------------


def one_node_job(name: str, solve_s: float, **kw: Any) -> dict[str, Any]:
    """A llama3-8b job on one 8-GPU node whose failure-free compute is about `solve_s`."""
    steps = round(solve_s / STEP_S)
    spec: dict[str, Any] = {
        "name": name, "model": "llama3-8b", "tokens": steps * 8 * 2048, "seq_len": 2048,
        "global_batch_seqs": 8, "parallel": {"dp": 8},
    }
    spec.update(kw)
    return spec


def daly_scenario(reps: int, mtbf_h: float, tau_s: float, delta_s: float, restart_s: float,
                  solve_s: float, seed: int = 0) -> dict[str, Any]:
    """`reps` one-node jobs, each alone on its node, so they are independent replications.
    Failures are software-only (no repair), so each node fails as a Poisson process of mean
    interval M; a sync checkpoint of fixed cost delta every tau of compute; R = detection 60 s
    + start-up (R - 120 s) + reload 60 s."""
    ckpt = {"interval": tau_s, "mode": "sync", "write_s": delta_s, "reload_s": 60}
    return {
        "name": "daly", "seed": seed, "duration": 60 * solve_s,
        "cluster": {"node_pools": [{"name": "p", "nodes": reps, "gpu": "H100-SXM"}]},
        "failures": {"node_mtbf_h": mtbf_h, "components": {"software": 1}, "detect_s": 60,
                     "restart_s": restart_s - 120},
        "training": [one_node_job(f"j{i}", solve_s, checkpoint=ckpt) for i in range(reps)],
    }


def wall_times(res: Any) -> np.ndarray:
    """Each job's wall time from the end of its first start-up to its end (Daly's T)."""
    ev = res.events
    first = ev[ev["event"] == "restart"].groupby("job")["time_s"].min()
    out = []
    for name, j in res.summary["training"].items():
        if j["state"] != "finished":
            raise SystemExit(f"daly workload: job {name} did not finish ({j['state']})")
        out.append(j["finished_at_s"] - first[name])
    return np.asarray(out)


def mean_ci95(x: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t confidence interval."""
    return float(x.mean()), float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1)
                                   / math.sqrt(x.size))


def idle_cluster(nodes: int, days: float, failures: dict[str, Any], seed: int = 5) -> dict:
    return {"name": "idle", "seed": seed, "duration": f"{days}d", "failures": failures,
            "cluster": {"node_pools": [{"name": "p", "nodes": nodes, "gpu": "H100-SXM"}]}}


# --- the tables ---------------------------------------------------------------------------


def daly_table() -> tuple[str, float]:
    lines = [
        "| M (h) | tau (s) | delta (s) | R (s) | T_s (s) | Daly T (s) | simulated mean (s) "
        "| 95% CI (s) | error |",
        "|" + "---:|" * 9,
    ]
    worst = 0.0
    for mtbf_h, tau, delta, restart in DALY_CASES:
        solve = 40 * tau
        res = af.run(daly_scenario(DALY_REPS, mtbf_h, tau, delta, restart, solve))
        mean, half = mean_ci95(wall_times(res))
        expected = float(daly_expected_wall_s(solve, tau, delta, restart, mtbf_h * 3600))
        err = 100.0 * (mean / expected - 1.0)
        worst = max(worst, abs(err))
        lines.append(
            f"| {mtbf_h:g} | {tau:,.0f} | {delta:,.0f} | {restart:,.0f} | {solve:,.0f} "
            f"| {expected:,.0f} | {mean:,.0f} | ±{half:,.0f} | {err:+.1f} % |"
        )
    lines += [
        "",
        f"{DALY_REPS} replications per row (seed 0); T_s = 40 tau; step time "
        f"{STEP_S:.3f} s. Largest |error|: **{worst:.1f} %**.",
    ]
    return "\n".join(lines), worst


def sweep_table() -> str:
    p = SWEEP
    mtbf_s = p["mtbf_h"] * 3600
    opt = float(daly_interval_s(p["delta_s"], mtbf_s))
    solve = 40 * opt
    rows = []
    for f in SWEEP_FACTORS:
        tau = opt * f
        res = af.run(daly_scenario(p["reps"], p["mtbf_h"], tau, p["delta_s"], p["restart_s"],
                                   solve, seed=p["seed"]))
        mean, half = mean_ci95(wall_times(res))
        expected = float(daly_expected_wall_s(solve, tau, p["delta_s"], p["restart_s"], mtbf_s))
        rows.append((f, tau, expected, mean, half))
    best_sim = min(rows, key=lambda r: r[3])
    best_daly = min(rows, key=lambda r: r[2])
    lines = [
        "| tau / tau_opt | tau (s) | Daly T (s) | simulated mean (s) | 95% CI (s) |",
        "|" + "---:|" * 5,
    ]
    for f, tau, expected, mean, half in rows:
        mark = " **least**" if (f, tau) == best_sim[:2] else ""
        lines.append(f"| {f:g} | {tau:,.0f} | {expected:,.0f} | {mean:,.0f}{mark} | ±{half:,.0f} |")
    lines += [
        "",
        f"M = {p['mtbf_h']:g} h, delta = {p['delta_s']:g} s, R = {p['restart_s']:g} s: Daly's "
        f"optimum tau_opt = {opt:,.0f} s (Young's sqrt(2 delta M) = "
        f"{math.sqrt(2 * p['delta_s'] * mtbf_s):,.0f} s). T_s = 40 tau_opt = {solve:,.0f} s for "
        f"every row; {p['reps']} replications per row (seed {p['seed']}). Least simulated mean at "
        f"tau = {best_sim[0]:g} tau_opt; least Daly T at tau = {best_daly[0]:g} tau_opt.",
    ]
    return "\n".join(lines)


def counts_table() -> str:
    nodes, days, rate = 400, 60, 6.5
    res = af.run(idle_cluster(nodes, days, {"node_failures_per_1000_node_days": rate,
                                            "components": {"software": 1}}))
    count = res.summary["failures"]["count"]
    mean = nodes * days * rate / 1000
    p = 2 * min(stats.poisson.cdf(count, mean), stats.poisson.sf(count - 1, mean))
    lines = [
        "| process | nodes x days | expected | observed | test |",
        "|---|---:|---:|---:|---|",
        f"| Poisson: {rate:g} per 1000 node-days, software only (no repair) "
        f"| {nodes} x {days} | {mean:,.1f} | {count:,} | two-sided p = {min(p, 1.0):.2f} |",
    ]
    rnodes, rdays, mtbf_h, repair_h = 300, 400, 2000.0, 48.0
    t, cycle = rdays * 24.0, mtbf_h + repair_h
    first = rnodes * t / cycle
    for shape in (None, 0.8, 1.5):
        dist = {"kind": "exponential"} if shape is None else {"kind": "weibull", "shape": shape}
        r = af.run(idle_cluster(rnodes, rdays, {"node_mtbf_h": mtbf_h, "distribution": dist,
                                                "repair_h": repair_h, "components": {"gpu": 1}}))
        n = r.summary["failures"]["count"]
        k = 1.0 if shape is None else shape
        cv2 = (gamma(1 + 2 / k) / gamma(1 + 1 / k) ** 2 - 1) * (mtbf_h / cycle) ** 2
        expected = rnodes * ((t + repair_h) / cycle + (cv2 - 1) / 2)
        z = (n - expected) / math.sqrt(cv2 * expected)
        name = "exponential" if shape is None else f"Weibull, shape {shape:g}"
        lines.append(
            f"| renewal: {name}, M = {mtbf_h:,.0f} h, fixed repair {repair_h:g} h "
            f"| {rnodes} x {rdays} | {expected:,.1f} | {n:,} | z = {z:+.2f} |"
        )
    lines += [
        "",
        f"Seed 5. Renewal rows: expected N ((t + r)/(M + r) + (CV_X^2 - 1)/2), z = (observed - "
        f"expected) / sqrt(CV_X^2 expected) (see the text); the first-order N t/(M + r) is "
        f"{first:,.1f} for all three.",
    ]
    return "\n".join(lines)


def llama3_tables() -> str:
    sc = af.load(LLAMA3)
    res = af.run(sc)
    s = res.summary
    name, j = next(iter(s["training"].items()))
    job = sc.training[0]
    f = sc.failures
    assert f is not None and sc.cluster.storage is not None
    nodes = j["nodes"]
    gpus = j["gpus"]
    mtbf = float(job_mtbf_s(f.node_mtbf_s, nodes))
    ckpt_bytes = job.model.params * job.checkpoint.bytes_per_param
    delta = ckpt_bytes / (sc.cluster.storage.write_gb_s * 1e9)
    reload = ckpt_bytes / (sc.cluster.storage.read_gb_s * 1e9)
    restart = f.detect_s + f.restart_s + reload
    tau = j["checkpoint_interval_s"]
    daly_ettr = tau / (mtbf * math.exp(restart / mtbf) * math.expm1((tau + delta) / mtbf))
    days = s["duration_s"] / 86400
    expected_int = nodes * days / (f.node_mtbf_s / 86400)
    since_h = s["duration_s"] / 3600 if j["finished_at_s"] is None else (
        j["finished_at_s"] - j["started_at_s"]) / 3600
    pool = sc.cluster.node_pools[0]
    # every recovery ends in a `restart` event, the first one being the start-up
    done_rec = int((res.events["event"] == "restart").sum()) - 1
    cut = j["interruptions"] - done_rec
    lines = [
        "| figure | value |",
        "|---|---:|",
        f"| nodes: job, cluster (spares) | {nodes:,}, {pool.nodes:,} "
        f"({sc.cluster.spare_nodes}) |",
        f"| node MTBF at {f.node_failures_per_1000_node_days:g} per 1000 node-days "
        f"| {f.node_mtbf_s / 86400:,.1f} days |",
        f"| job MTBF M = node MTBF / {nodes:,} | {mtbf:,.0f} s ({mtbf / 3600:.2f} h) |",
        f"| checkpoint: {job.model.params / 1e9:,.0f}B params x "
        f"{job.checkpoint.bytes_per_param:g} bytes | {ckpt_bytes / 1e12:.2f} TB |",
        f"| delta = sync write at {sc.cluster.storage.write_gb_s:,.0f} GB/s | {delta:.2f} s |",
        f"| Daly's interval tau (`checkpoint_interval_s`) | {tau:.1f} s |",
        f"| R = detect {f.detect_s:g} s + restart {f.restart_s:g} s + reload at "
        f"{sc.cluster.storage.read_gb_s:,.0f} GB/s | {restart:.1f} s |",
        f"| mean step time | {j['step_time_s']:.2f} s |",
        f"| failures, all {pool.nodes:,} nodes | {s['failures']['count']:,} |",
        f"| interruptions of the job (expected {nodes:,} x {days:g} d / node MTBF = "
        f"{expected_int:,.1f}) | {j['interruptions']:,} |",
        f"| checkpoints | {j['checkpoints']:,} |",
        f"| lost work per interruption | {j['lost_work_h'] * 3600 / j['interruptions']:.0f} s |",
        f"| recoveries cut short by another failure (they start again from detection) "
        f"| {cut} |",
        f"| recovery per GPU: start-up {f.restart_s:g} s + {done_rec} x R + the {cut} cut short "
        f"| {j['recovery_h']:.1f} h |",
        f"| **ETTR**, simulated (seed {sc.seed}) | **{j['ettr']:.1%}** |",
        f"| ETTR by Daly: tau / (M e^(R/M) (e^((tau + delta)/M) - 1)) | {daly_ettr:.1%} |",
        "",
    ]
    # failures by component: the paper's 419 interruptions against those that hit the job
    paper = catalog.entry("reliability", "llama3-16k-h100")["components"]
    fails = res.failures
    hit = fails[fails["job"].notna()]
    lines += [
        "| component | Llama 3, Table 5 (grouped) | simulated: hit the job "
        "| simulated: all nodes |",
        "|---|---:|---:|---:|",
    ]
    for c in sorted(paper, key=lambda c: -paper[c]):
        lines.append(f"| {c} | {paper[c]} | {int((hit['component'] == c).sum())} "
                     f"| {int((fails['component'] == c).sum())} |")
    lines.append(f"| total | {sum(paper.values())} | {len(hit)} | {len(fails)} |")
    lines.append("")
    # the ledger, of the cluster and of the job
    ledger = s["ledger_gpu_h"]
    total = sum(ledger.values())
    job_h = {
        "training": j["ettr"] * since_h,
        "checkpoint": ledger["checkpoint"] / gpus,
        "lost_work": j["lost_work_h"],
        "recovery": j["recovery_h"],
    }
    lines += [
        f"| bucket | GPU-h | share of the cluster's {total:,.0f} GPU-h | hours per job GPU "
        f"| share of the job's {since_h:,.0f} h |",
        "|---|---:|---:|---:|---:|",
    ]
    for b, h in ledger.items():
        if h <= 0:
            continue
        jh = job_h.get(b)
        cells = ("-", "-") if jh is None else (f"{jh:,.1f}", f"{jh / since_h:.1%}")
        lines.append(f"| `{b}` | {h:,.0f} | {h / total:.1%} | {cells[0]} | {cells[1]} |")
    lines.append("")
    # ETTR over seeds
    rows = []
    for seed in LLAMA3_SEEDS:
        r = res if seed == sc.seed else af.run(sc, overrides={"seed": seed})
        jj = r.summary["training"][name]
        rows.append((seed, r.summary["failures"]["count"], jj["interruptions"],
                     jj["checkpoints"], jj["ettr"]))
    ettr = np.array([r[4] for r in rows])
    ints = np.array([r[2] for r in rows])
    lines += [
        f"Over seeds {LLAMA3_SEEDS.start}-{LLAMA3_SEEDS.stop - 1}: interruptions "
        f"{ints.mean():,.1f} on average (expected {expected_int:,.1f}), ETTR "
        f"{ettr.mean():.1%} on average, {ettr.min():.1%} to {ettr.max():.1%}.",
        "",
        "| seed | failures | interruptions | checkpoints | ETTR |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {sd} | {n:,} | {i:,} | {c:,} | {e:.1%} |" for sd, n, i, c, e in rows]
    lines += [
        "",
        f"What if (seed {sc.seed}; shares of the job's time since its start):",
        "",
        "| variant | tau (s) | checkpoints | checkpoint | lost work | recovery | ETTR |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, over in LLAMA3_WHATIF:
        r = res if not over else af.run(sc, overrides=over)
        jj = r.summary["training"][name]
        ck = r.summary["ledger_gpu_h"]["checkpoint"] / gpus
        lines.append(
            f"| {label} | {jj['checkpoint_interval_s']:,.1f} | {jj['checkpoints']:,} "
            f"| {ck / since_h:.1%} | {jj['lost_work_h'] / since_h:.1%} "
            f"| {jj['recovery_h'] / since_h:.1%} | {jj['ettr']:.1%} |"
        )
    return "\n".join(lines)


# --- the file -------------------------------------------------------------------------------


def build(text: str) -> tuple[str, float]:
    table, worst = daly_table()
    text = replace_block(DOC, text, "daly", table)
    text = replace_block(DOC, text, "sweep", sweep_table())
    text = replace_block(DOC, text, "counts", counts_table())
    text = replace_block(DOC, text, "llama3", llama3_tables())
    return text, worst


def main() -> int:

    def build_with_message(old: str) -> tuple[str, str]:
        new, worst = build(old)
        return new, f"largest |error| against Daly's expected wall time: {worst:.2f} %"

    return run(DOC, build_with_message, __doc__.splitlines()[0], "gen_reliability.py")


if __name__ == "__main__":
    raise SystemExit(main())
