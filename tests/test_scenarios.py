"""The bundled scenario library (aifactory_sim/scenarios/): every file validates and says where
its numbers come from; the GB200 variant and the build-or-rent study pass a physics check each.

Kept fast: validation and the step-time estimate, and one short run (build-or-rent, one day)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from shared_paths import SHARED

import aifactory_sim as af
from aifactory_sim.cli import main
from aifactory_sim.estimate import as_gpu
from aifactory_sim.kernels import power as kp

SCENARIOS = Path(af.__file__).parent / "scenarios"
ALL = sorted(p.name for p in SCENARIOS.glob("*.yaml"))
#: factory.yaml, serving-frontier.yaml and power-grid.yaml are byte-for-byte copies of
#: shared/examples/; their provenance lives in the shared docs, so they carry no block of their own.
COPIES = ("factory.yaml", "serving-frontier.yaml", "power-grid.yaml", "hybrid-sovereign.yaml")
#: Words that show a provenance block names sources, not just prose.
SOURCE = re.compile(r"arXiv|datasheet|Table \d|Sec\. \d|shared/reference|catalog|et al\.")


def leading_comments(path: Path) -> list[str]:
    """The comment lines before the first YAML key."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            lines.append(line)
        elif line.strip():
            break
    return lines


def test_the_library_holds_the_documented_scenarios():
    assert {"default.yaml", "chat-diurnal.yaml", "factory.yaml", "llama3-405b-54d.yaml",
            "megatron-1t-a100.yaml", "gb200-nvl72-405b.yaml", "build-or-rent.yaml"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_every_bundled_scenario_validates(name, capsys):
    assert main(["validate", str(SCENARIOS / name)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


@pytest.mark.parametrize("name", [n for n in ALL if n not in COPIES])
def test_every_bundled_scenario_opens_with_its_provenance(name):
    """A new scenario without a provenance block fails here: say what it answers and where each
    number comes from (paper, datasheet, table), and which are assumptions."""
    block = leading_comments(SCENARIOS / name)
    assert len(block) >= 5, f"{name}: open with a comment block on what it models and why"
    text = "\n".join(block)
    assert "provenance" in text.lower(), f"{name}: its opening comments need a Provenance part"
    assert SOURCE.search(text), f"{name}: its provenance names no source"


@pytest.mark.parametrize("name", COPIES)
def test_copied_examples_are_the_shared_ones_unchanged(name):
    shared = SHARED / "examples" / name
    if not shared.is_file():
        pytest.skip(f"shared/examples/{name} is not reachable")
    assert (SCENARIOS / name).read_bytes() == shared.read_bytes()


# --- GB200 NVL72 against H100 ----------------------------------------------------------------


def step_estimate(name: str) -> tuple[af.TrainingEstimate, af.Scenario]:
    """The step-time model on the scenario's first job, as placed on its pool and fabric."""
    sc = af.load(SCENARIOS / name)
    job, pool, fab = sc.training[0], sc.pool(sc.training[0].pool), sc.cluster.fabric
    par = job.parallel
    est = af.estimate_training(
        job.model, pool.gpu, tp=par.tp, pp=par.pp, dp=par.dp, cp=par.cp, seq_len=job.seq_len,
        global_batch_seqs=job.batch_seqs, microbatch_seqs=par.microbatch_seqs,
        interleave=par.interleave, recompute=job.recompute, zero_stage=job.zero_stage,
        gpus_per_node=pool.gpus_per_node, nic_gbit_s=pool.nic_gbit_s,
        oversubscription=fab.oversubscription, nodes_per_leaf=fab.nodes_per_leaf,
        net_latency_us=fab.latency_us)
    return est, sc


def test_gb200_nvl72_runs_the_llama3_405b_step_faster_than_h100_within_physics():
    """Same model, layout, batch and tokens; only the hardware moves. The GB200 step must be
    shorter, but by no more than its BF16 peak over H100's times 4/3: dropping full
    recompute (80 GB does not hold the layout, 186 GB does) saves at most one of four GEMM
    passes. A faster result would mean a term of the step escaped the hardware."""
    h100, sc_h = step_estimate("llama3-405b-54d.yaml")
    gb200, sc_g = step_estimate("gb200-nvl72-405b.yaml")
    jh, jg = sc_h.training[0], sc_g.training[0]
    assert (jh.model, jh.parallel, jh.seq_len, jh.batch_seqs, jh.tokens) == (
        jg.model, jg.parallel, jg.seq_len, jg.batch_seqs, jg.tokens)
    assert sc_g.pool(None).gpu.nvlink_domain == 72
    assert bool(h100.fits) and bool(gb200.fits)
    assert gb200.step_time_s < h100.step_time_s
    peak = as_gpu("GB200").bf16_tflops / as_gpu("H100-SXM").bf16_tflops
    speedup = h100.step_time_s / gb200.step_time_s
    assert 1.0 < speedup <= peak * 4.0 / 3.0
    assert gb200.mfu <= 1.0


# --- build or rent ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def build_or_rent():
    """One day of the month: the cost closed forms do not depend on the horizon."""
    return af.run(SCENARIOS / "build-or-rent.yaml", overrides={"duration": "1d"})


def test_build_or_rent_prices_every_way_to_pay():
    sc = af.load(SCENARIOS / "build-or-rent.yaml")
    c = sc.cost
    assert c.node_capex_usd > 0 and c.network_capex_per_node_usd > 0
    assert sc.power.usd_per_kwh > 0 and sc.power.pue > 1.0
    assert c.cloud_spot_usd_per_gpu_hour < c.cloud_reserved_usd_per_gpu_hour < (
        c.cloud_usd_per_gpu_hour)


def test_build_or_rent_break_even_matches_the_closed_form(build_or_rent):
    """u* = (k + e0) / (r - de) (kernels/power.break_even_utilisation). The run's u* takes the
    mean power of a used GPU from the run; it must equal the closed form fed that power (to
    1e-9) and lie between the closed forms for a used GPU at idle power and at TDP. That
    bracket is narrow (capex dominates energy): the run's u* is within 2.5% of the TDP bound."""
    sc, s, p = build_or_rent.scenario, build_or_rent.summary, build_or_rent.power
    c, pool = sc.cost, sc.cluster.node_pools[0]
    u = s["break_even_utilisation"]
    assert u is not None and 0.0 < u < 1.0
    k = kp.capex_per_gpu_hour_usd(c.node_capex_usd, c.network_capex_per_node_usd,
                                  pool.gpus_per_node, c.amortization_years,
                                  c.opex_share_per_year)
    overhead = sc.power.node_overhead_w / pool.gpus_per_node
    idle = float(kp.idle_power_w(pool.gpu.tdp_w, pool.gpu.idle_w)) + overhead
    pue, price, rate = sc.power.pue, sc.power.usd_per_kwh, c.cloud_usd_per_gpu_hour

    def closed(busy_w: float) -> float:
        return kp.break_even_utilisation(k, idle, busy_w, pue, price, rate)

    used_h = sum(v for b, v in s["ledger_gpu_h"].items() if b not in ("unallocated", "down"))
    t = p["time_s"].to_numpy()
    used_j = float(((p["facility_w"] - p["idle_w"]).to_numpy()[:-1] * (t[1:] - t[:-1])).sum())
    busy = used_j / pue / (used_h * 3600.0)
    assert idle < busy <= pool.gpu.tdp_w + overhead
    assert u == pytest.approx(closed(busy), rel=1e-9)
    lo, hi = closed(idle), closed(pool.gpu.tdp_w + overhead)
    assert 0.0 < lo <= u <= hi < 1.0
    assert u == pytest.approx(hi, rel=0.025)


def test_build_or_rent_bills_add_up(build_or_rent):
    s = build_or_rent.summary
    cloud = s["cost_usd"]["cloud"]
    c = build_or_rent.scenario.cost
    assert cloud["reserved"] == pytest.approx(cloud["gpu_h"] * c.cloud_reserved_usd_per_gpu_hour)
    assert cloud["spot"] == pytest.approx(cloud["gpu_h"] * c.cloud_spot_usd_per_gpu_hour)
    assert s["inference"]["chat"]["completed"] > 0
