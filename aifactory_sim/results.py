"""What a run returns: a reproducible summary, tables, and the files they are saved to.

`summary` is a nested dict of plain numbers with no wall-clock figure in it, so the same
scenario and seed give a byte-identical `summary.json`. Run-time facts (wall time, versions)
live in `meta`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from .energy import POWER_COLUMNS
from .engine.inference import SERVICE_COLUMNS
from .errors import ScenarioError
from .metrics_export import write_metrics

if TYPE_CHECKING:
    from .spec.scenario import Scenario

#: The per-request table's columns after `service`.
REQUEST_COLUMNS = (
    "request",
    "arrival_s",
    "admitted_s",
    "first_token_s",
    "finish_s",
    "prompt_tokens",
    "output_tokens",
    "queue_wait_s",
    "preemptions",
    "replica",
    "dropped",
)

#: A folder holding this file was written by aifactory_sim and may be refreshed.
MARKER = "meta.json"


def partial_folder(out: str | Path, meta: dict[str, Any], force: bool) -> tuple[Path, Path]:
    """The results folder and a fresh OUT.partial beside it to write into: an existing folder
    is refreshed only when it holds an earlier run of the same scenario (its meta.json's
    scenario_hash) or `force` is set; anything else there is never overwritten."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ScenarioError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        marker = out / MARKER
        same = False
        if marker.exists():
            try:
                same = json.loads(marker.read_text())["scenario_hash"] == meta["scenario_hash"]
            except (ValueError, KeyError):
                same = False
        if not same:
            raise ScenarioError(
                f"{out} already holds other files; choose another --out or pass --force "
                "to overwrite"
            )
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return out, tmp


def summary_json(summary: dict[str, Any]) -> str:
    """The canonical text of a summary: sorted keys, fixed layout."""
    return json.dumps(summary, sort_keys=True, indent=2, allow_nan=False) + "\n"


class Results:
    """Summary, tables and plots of one run."""

    def __init__(
        self,
        scenario: Scenario,
        summary: dict[str, Any],
        meta: dict[str, Any],
        jobs: pd.DataFrame,
        timeseries: pd.DataFrame,
        ledger: pd.DataFrame,
        failures: pd.DataFrame | None = None,
        events: pd.DataFrame | None = None,
        requests: pd.DataFrame | None = None,
        services: pd.DataFrame | None = None,
        power: pd.DataFrame | None = None,
        facility: pd.DataFrame | None = None,
        *,
        gray: pd.DataFrame | None = None,
    ):
        self.scenario = scenario
        self.summary = summary
        self.meta = meta
        self.jobs = jobs
        self.timeseries = timeseries
        self.ledger = ledger
        self.failures = failures if failures is not None else pd.DataFrame()
        self.events = events if events is not None else pd.DataFrame()
        self.requests = (
            requests
            if requests is not None
            else pd.DataFrame(columns=["service", *REQUEST_COLUMNS])
        )
        self.services = (
            services
            if services is not None
            else pd.DataFrame(columns=["service", *SERVICE_COLUMNS])
        )
        self.power = power if power is not None else pd.DataFrame(columns=list(POWER_COLUMNS))
        #: with a scenario `facility`: the site and the grid over time (facility.py)
        self.facility = facility if facility is not None else pd.DataFrame()
        #: with failures.gray: every gray failure episode, what found it and when (gray.py)
        self.gray = gray if gray is not None else pd.DataFrame()

    # --- views ---------------------------------------------------------------------------
    @property
    def plot(self) -> Any:
        from .plots import Plotter

        return Plotter(self)

    def text(self) -> str:
        """A short human-readable summary for the terminal."""
        s = self.summary
        lines = [
            f"scenario {s['scenario']}  seed {s['seed']}  {s['gpus']:,} GPUs  "
            f"{s['duration_s'] / 86400:.2f} days  fidelity {s['fidelity']}"
            + "".join(
                f" ({name}: {v['fidelity']})"
                for name, v in s.get("inference", {}).items()
                if v["fidelity"] != s["fidelity"]
            ),
            "",
            "GPU-hour ledger",
        ]
        total = sum(s["ledger_gpu_h"].values())
        for bucket, hours in s["ledger_gpu_h"].items():
            if hours > 0:
                lines.append(f"  {bucket:<15}{hours:>16,.0f} GPU-h {hours / total:>7.1%}")
        lines.append(f"  {'total':<15}{total:>16,.0f} GPU-h")
        if s["failures"]["count"]:
            f = s["failures"]
            parts = ", ".join(f"{c} {n}" for c, n in f["by_component"].items())
            lines += ["", f"failures: {f['count']} ({parts}); {f['interrupting']} hit a job"]
        if s["training"]:
            lines += ["", "training jobs"]
            head = (
                f"  {'job':<20}{'state':<14}{'tokens':>12}{'step s':>9}{'MFU':>7}"
                f"{'start h':>9}{'finish h':>10}{'ETTR':>7}{'fails':>7}{'ckpts':>7}"
            )
            lines.append(head)
            for name, j in s["training"].items():
                step = "-" if j["step_time_s"] is None else f"{j['step_time_s']:.2f}"
                mfu = "-" if j["mfu"] is None else f"{j['mfu']:.1%}"
                start = "-" if j["started_at_s"] is None else f"{j['started_at_s'] / 3600:.1f}"
                fin = "-" if j["finished_at_s"] is None else f"{j['finished_at_s'] / 3600:.1f}"
                ettr = "-" if j["ettr"] is None else f"{j['ettr']:.1%}"
                lines.append(
                    f"  {name:<20}{j['state']:<14}{j['tokens_trained']:>12.3g}{step:>9}"
                    f"{mfu:>7}{start:>9}{fin:>10}{ettr:>7}{j['interruptions']:>7}"
                    f"{j['checkpoints']:>7}"
                )
            for name, j in s["training"].items():
                if "gang_availability" in j:
                    lines.append(
                        f"  note: {name} can have all its nodes only"
                        f" {j['gang_availability']:.2g} of the time (nodes down for repair"
                        " leave too few in its pool; spare nodes or a smaller dp would let it"
                        " run)"
                    )
        if s.get("inference"):
            lines += ["", "inference services"]
            lines.append(
                f"  {'service':<16}{'requests':>13}{'done':>13}{'tok/s':>10}"
                f"{'TTFT p50':>10}{'p99':>8}{'TPOT p50':>10}{'p99':>8}{'SLO':>7}"
                f"{'replicas':>10}"
            )
            for name, v in s["inference"].items():

                def ms(x: float | None) -> str:
                    if x is None:
                        return "-"
                    return f"{x * 1e3:.0f}ms" if x < 10 else f"{x:.0f}s"

                slo = "-" if v["slo_attainment"] is None else f"{v['slo_attainment']:.1%}"
                lines.append(
                    f"  {name:<16}{v['requests']:>13,}{v['completed']:>13,}"
                    f"{v['output_tokens_per_s']:>10,.0f}{ms(v['ttft_s']['p50']):>10}"
                    f"{ms(v['ttft_s']['p99']):>8}{ms(v['tpot_s']['p50']):>10}"
                    f"{ms(v['tpot_s']['p99']):>8}{slo:>7}"
                    f"{v['replicas_mean']:>6.1f}/{v['replicas_max']:<3}"
                )
            lines += self._serving_costs(s)
        if "facility" in s:
            lines += self._facility(s["facility"])
        return "\n".join(lines)

    @staticmethod
    def _facility(f: dict[str, Any]) -> list[str]:
        """The site: PUE and temperature, peak power against the grid limit, the battery, carbon."""

        def num(x: float | None, fmt: str) -> str:
            return "-" if x is None else format(x, fmt)

        lines = [
            "",
            "facility",
            f"  PUE {num(f['pue_mean'], '.3f')} mean, {num(f['pue_max'], '.3f')} at most"
            f"  (outdoor {num(f['temp_c_mean'], '.1f')} C mean, {num(f['temp_c_max'], '.1f')} C"
            " at most)",
            f"  site peak {f['site_peak_mw']:.2f} MW, grid peak {f['grid_peak_mw']:.2f} MW"
            + (
                f" of {f['grid_limit_mw']:.0f} MW contracted ({f['grid_over_limit_h']:.1f} h over)"
                if "grid_limit_mw" in f
                else ""
            )
            + f"; largest step {f['largest_step_mw']['site']:.2f} MW at the site,"
            f" {f['largest_step_mw']['grid']:.2f} MW at the grid",
        ]
        g = f.get("grid_limit")
        if g is not None and g["capped"]:
            caps = ", ".join(
                f"{name} at {p['gpu_cap_w']:.0f} W ({p['clock_slowdown']:.3f}x)"
                for name, p in g["pools"].items()
                if p["gpu_cap_w"] is not None
            )
            lost = sum(g["tokens_not_trained"].values())
            lines.append(
                f"  grid limit: full load {g['full_load_mw']:.2f} MW at PUE {g['pue_max']:.3f} held"
                f" to {g['held_mw']:.2f} MW by GPU caps ({caps}); {lost:.3g} tokens not trained"
            )
        b = f.get("battery")
        if b is not None:
            lines.append(
                f"  battery: {b['discharged_mwh']:.1f} MWh delivered, {b['charged_mwh']:.1f} MWh"
                f" charged, {b['losses_mwh']:.2f} MWh lost; charge {b['soc_min']:.0%} to"
                f" {b['soc_max']:.0%}"
            )
        for e in f.get("demand_response", []):
            met = "-" if e["met_mw"] is None else f"{e['met_mw']:.2f}"
            capped = ", ".join(
                [
                    f"paused {a['job']}"
                    if a.get("action") == "pause"
                    else f"capped {a['job']} to {a['cap_w']:.0f} W"
                    for a in e["actions"]
                ]
                + [
                    f"{a['service']} shed {a['replicas_shed']} of {a['replicas_before']} replicas"
                    for a in e["services"]
                ]
            )
            lines.append(
                f"  demand response at {e['at_s'] / 3600:.1f} h for {e['duration_s'] / 3600:.1f} h:"
                f" asked {e['asked_mw']:.2f} MW, met {met} MW"
                f" ({'met' if e['met'] else 'not met'}; {capped or 'nothing acted on'}"
                + (f", {e['shortfall_mw']:.2f} MW short" if e["shortfall_mw"] > 0 else "")
                + f"), {e['tokens_not_trained']:.3g} tokens not trained"
            )
            for a in e["services"]:
                was, now = a["before"], a["during"]
                if was is None or now is None:
                    continue
                lines.append(
                    f"    {a['service']}: SLO met by {num(now['slo_attainment'], '.1%')} of"
                    f" {now['requests']:,} requests during, {num(was['slo_attainment'], '.1%')}"
                    f" before; revenue lost {num(a['revenue_lost_usd'], ',.0f')} USD"
                )
        for gpu, e in f.get("efficiency_by_gpu", {}).items():
            parts = [
                f"{kind} {w['tokens_per_joule']:.3g} tokens/J,"
                f" {w['tokens_per_s_per_rated_kw']:.3g} tokens/s per rated kW"
                for kind, w in (("training", e["training"]), ("serving", e["serving"]))
                if w["tokens_per_joule"] is not None and w["tokens_per_s_per_rated_kw"] is not None
            ]
            if parts:
                lines.append(f"  {gpu} ({e['family']}): " + "; ".join(parts))
        c = f.get("carbon")
        if c is not None:
            lines.append(
                f"  carbon: {c['tonnes_co2e']:,.0f} t CO2e at {num(c['mean_g_per_kwh'], '.0f')}"
                f" g/kWh; {num(c['g_per_btok_trained'], ',.0f')} g per billion tokens trained,"
                f" {num(c['g_per_mtok_served'], ',.1f')} g per million served"
            )
        return lines

    @staticmethod
    def _serving_costs(s: dict[str, Any]) -> list[str]:
        """The services side by side: cost per million output tokens, owned and rented, the
        GPUs they hold on average (by pool when disaggregated), the KV moved between pools and
        the prefix caches' share of prompt tokens."""
        hours = float(s["duration_s"]) / 3600.0
        lines = [
            "",
            "serving costs and caches",
            f"  {'service':<16}{'$/Mtok own':>11}{'cloud':>8}{'GPUs held':>22}"
            f"{'KV moved':>12}{'cache hits':>12}",
        ]
        for name, v in s["inference"].items():
            usd = v.get("usd_per_mtok") or {}

            def money(x: float | None) -> str:
                return "-" if x is None else f"{x:.2f}"

            if "pools" in v:
                p, d = v["pools"]["prefill"], v["pools"]["decode"]
                gpus = f"{p['gpu_h']['held'] / hours:.0f} P + {d['gpu_h']['held'] / hours:.0f} D"
            else:
                gpus = f"{v['gpu_h']['held'] / hours:.0f}"
            kv = v.get("kv_transfer")
            moved = "-" if kv is None else f"{kv['bytes_gb'] / (hours * 3600.0):.1f} GB/s"
            pc = v.get("prefix_cache")
            hits = "-" if pc is None else f"{pc['hit_rate_tokens']:.1%}"
            lines.append(
                f"  {name:<16}{money(usd.get('private')):>11}{money(usd.get('cloud')):>8}"
                f"{gpus:>22}{moved:>12}{hits:>12}"
            )
        return lines

    # --- files ---------------------------------------------------------------------------
    def save(self, out: str | Path, *, plots: bool = True, force: bool = False) -> Path:
        """Write summary.json, meta.json, scenario.yaml, the tables as CSV and the plots as PNG.

        An existing folder is refreshed only when it holds an earlier run of the same scenario
        or `force` is set; anything else there is never overwritten.
        """
        out, tmp = partial_folder(out, self.meta, force)
        (tmp / "summary.json").write_text(summary_json(self.summary))
        (tmp / MARKER).write_text(json.dumps(self.meta, sort_keys=True, indent=2) + "\n")
        (tmp / "scenario.yaml").write_text(
            yaml.safe_dump(self.scenario.model_dump(mode="json"), sort_keys=False)
        )
        self.jobs.to_csv(tmp / "jobs.csv", index=False)
        self.timeseries.to_csv(tmp / "timeseries.csv", index=False)
        self.ledger.to_csv(tmp / "ledger.csv", index=False)
        self.failures.to_csv(tmp / "failures.csv", index=False)
        self.events.to_csv(tmp / "events.csv", index=False)
        if len(self.requests):
            self.requests.to_csv(tmp / "requests.csv", index=False)
        if len(self.services):
            self.services.to_csv(tmp / "services.csv", index=False)
        self.power.to_csv(tmp / "power.csv", index=False)
        if len(self.facility):
            self.facility.to_csv(tmp / "facility.csv", index=False)
        if len(self.gray):
            self.gray.to_csv(tmp / "gray.csv", index=False)
        tel = self.scenario.telemetry
        if tel is not None:  # a dashboard's metrics (metrics.om, metrics.parquet)
            write_metrics(self, tmp, tel.export, tel.interval_s)
        if plots:
            self.plot.save_all(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            f.replace(out / f.name)
        tmp.rmdir()
        return out
