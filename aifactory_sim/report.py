"""The architecture-review report: one self-contained HTML page built from a results folder.

`write_report(folder)` reads what `Results.save` wrote (summary.json, scenario.yaml and the CSV
tables), draws the figures with `Plotter`, and writes `report.html` with every figure embedded
as a base64 PNG (no network, no external CSS or JS) plus the same figures as `report-NAME.png`.
A figure a run has no data for (no services, no power model) is left out with a one-line note.

The summary is read by name, with the keys of its schema (`aifactory_sim.schema.Summary`); a
summary saved by an older version may lack a section, which the page then leaves out.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, cast

import numpy as np
import yaml

from .errors import ScenarioError
from .results import MARKER, Results
from .schema import CORE_KEYS, JobSummary, Ledger, ServiceSummary, SloMet, Summary
from .spec.scenario import TRACE_PREFIX

#: The page names its generator so that a later report may replace it and its figures.
GENERATOR = "aifactory-sim report"

#: Tables the report reads, with the Results attribute each becomes.
TABLES = {
    "jobs": "jobs.csv",
    "timeseries": "timeseries.csv",
    "ledger": "ledger.csv",
    "failures": "failures.csv",
    "events": "events.csv",
    "requests": "requests.csv",
    "services": "services.csv",
    "power": "power.csv",
}

#: Summary sections the headline and the sections below already show: the engine's
#: (`schema.CoreSummary`). The others, energy, power and cost (`schema.EnergySummary`) and any
#: key a later version adds, are listed in a table of their own.
KNOWN_SECTIONS = CORE_KEYS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- reading a results folder ------------------------------------------------------------------


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ScenarioError(
            f"{folder} is not a results folder (not a folder); write one with "
            "`aifactory-sim run SCENARIO --out DIR`"
        )
    missing = [
        n
        for n in (MARKER, "summary.json", "timeseries.csv", "ledger.csv")
        if not (folder / n).is_file()
    ]
    if missing:
        raise ScenarioError(
            f"{folder} is not a results folder (no {', '.join(missing)}); write "
            "one with `aifactory-sim run SCENARIO --out DIR`"
        )


def _namespace(value: Any) -> Any:
    """A scenario mapping as attributes, for when the saved scenario no longer validates."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_namespace(v) for v in value]
    return value


def load_results(folder: str | Path) -> tuple[Results, list[str]]:
    """A Results rebuilt from a saved folder, and notes on what could not be read as saved."""
    import pandas as pd

    from .spec.loader import load

    folder = Path(folder)
    _check_folder(folder)
    notes: list[str] = []
    try:
        summary = json.loads((folder / "summary.json").read_text())
        meta = json.loads((folder / MARKER).read_text())
    except ValueError as err:
        raise ScenarioError(f"{folder}: summary.json or {MARKER} is not valid JSON: {err}") from err
    scenario: Any = None
    if (folder / "scenario.yaml").is_file():
        try:
            scenario = load(folder / "scenario.yaml")
        except ScenarioError as err:
            # An older run whose scenario the current schema refuses: keep its fields as read.
            notes.append(
                f"scenario.yaml does not validate with this version ({err}); its "
                "fields are shown as saved"
            )
            scenario = _namespace(yaml.safe_load((folder / "scenario.yaml").read_text()))
    tables: dict[str, Any] = {}
    for attr, name in TABLES.items():
        path = folder / name
        if not path.is_file():
            continue
        try:
            tables[attr] = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            tables[attr] = pd.DataFrame()
    power = tables.pop("power", None)
    res = Results(
        scenario,
        summary,
        meta,
        tables.get("jobs", pd.DataFrame()),
        tables["timeseries"],
        tables["ledger"],
        failures=tables.get("failures"),
        events=tables.get("events"),
        requests=tables.get("requests"),
        services=tables.get("services"),
    )
    if res.events is not None and not len(res.events.columns):
        res.events = pd.DataFrame(columns=["job", "time_s", "event"])
    if power is not None:
        res.power = power  # type: ignore[attr-defined]
    return res, notes


# --- numbers -----------------------------------------------------------------------------------


def _leaves(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) for every scalar in a nested summary section."""
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out += _leaves(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, value)]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e6:
            return f"{value:.3g}"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1e3:.0f} ms" if x < 10 else f"{x:,.0f} s"


def _usd(x: float) -> str:
    return f"${x:,.0f}" if abs(x) >= 100 else f"${x:,.2f}"


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:g} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:g} hours"
    return f"{seconds / 60:g} minutes"


def _number(value: object) -> float | None:
    """A summary figure as a float, or None where there is none (null, absent, not a number)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _energy_cards(summary: Summary) -> list[tuple[str, str]]:
    """Energy, peak power and cost from the summary's energy section (`schema.EnergySummary`):
    `energy_mwh`, `peak_mw`, `cost_usd.private.total` and `cost_usd.cloud.total`. A summary
    without that section (saved by an older version) has none of these cards."""
    cards: list[tuple[str, str]] = []
    energy = _number(summary.get("energy_mwh"))
    if energy is not None:
        cards.append(("energy", f"{energy:,.3g} MWh"))
    peak = _number(summary.get("peak_mw"))
    if peak is not None:
        cards.append(("peak power", f"{peak:,.3g} MW"))
    cost = summary.get("cost_usd") or {}
    # Owning: capex + opex + energy; renting: on demand.
    for side, part in (("private", cost.get("private")), ("cloud", cost.get("cloud"))):
        total = None if part is None else _number(part.get("total"))
        if total is not None:
            cards.append((f"cost, {side}", _usd(total)))
    return cards


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    out = [f"<table{attr}><thead><tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _against(slo: Any, met: SloMet, key: Literal["ttft", "tpot"]) -> str:
    """A service's SLO target for `key` (ttft, tpot) at its percentile, met or missed."""
    target = getattr(slo, f"{key}_s", None)
    if target is None:
        return "-"
    ok = met.get(key)
    verdict = "" if ok is None else (" met" if ok else " missed")
    return f"{_ms(target)} at p{slo.percentile:g}{verdict}"


def _summary(res: Results) -> Summary:
    """The run's summary with its schema's keys (a plain dict: nothing is converted)."""
    return cast(Summary, res.summary)


def _ledger_total(ledger: Ledger) -> float:
    """GPU-hours of every bucket: gpus x duration_s / 3600."""
    return sum(cast("dict[str, float]", ledger).values())


def _job_row(name: str, j: JobSummary) -> list[str]:
    """A training job's row of the headline table."""
    return [
        name,
        str(j.get("state", "-")),
        f"{j.get('gpus', 0):,}",
        f"{j.get('tokens_trained', 0):.3g}",
        _pct(j.get("mfu")),
        _pct(j.get("ettr")),
        f"{j.get('interruptions', 0)}",
        f"{j.get('checkpoints', 0)}",
    ]


def _service_row(name: str, v: ServiceSummary, slo: Any) -> list[str]:
    """An inference service's row of the headline table, against its scenario `slo`."""
    met: SloMet = v.get("slo_met") or {}
    ttft = v.get("ttft_s", {})
    tpot = v.get("tpot_s", {})
    return [
        name,
        f"{v.get('requests', 0):,}",
        f"{v.get('completed', 0):,}",
        f"{v.get('output_tokens_per_s', 0):,.0f}",
        _ms(ttft.get("p50")),
        _ms(ttft.get("p99")),
        _against(slo, met, "ttft"),
        _ms(tpot.get("p50")),
        _ms(tpot.get("p99")),
        _against(slo, met, "tpot"),
        _pct(v.get("slo_attainment")),
        f"{v.get('replicas_mean', 0):.1f} / {v.get('replicas_max', 0)}",
    ]


def _headline(res: Results) -> str:
    s = _summary(res)
    ledger = s.get("ledger_gpu_h", {})
    total = _ledger_total(ledger) or 1.0
    util = s.get("utilisation", {})
    cards = [
        ("GPUs", f"{s['gpus']:,}"),
        ("duration", _duration(s["duration_s"])),
        ("fidelity", str(s.get("fidelity", "-"))),
        ("goodput (training GPU-h)", _pct(ledger.get("training", 0.0) / total)),
        ("allocated", _pct(util.get("allocated"))),
        ("serving busy", _pct(util.get("serving"))),
        ("failures", f"{s.get('failures', {}).get('count', 0):,}"),
    ]
    cards += _energy_cards(s)
    parts = ['<div class="cards">']
    for label, value in cards:
        parts.append(
            f'<div class="card"><div class="v">{html.escape(value)}</div>'
            f'<div class="k">{html.escape(label)}</div></div>'
        )
    parts.append("</div>")
    if s.get("training"):
        rows = [_job_row(name, j) for name, j in s["training"].items()]
        parts.append("<h3>Training jobs</h3>")
        parts.append(
            _table(
                ["job", "state", "GPUs", "tokens", "MFU", "ETTR", "interruptions", "checkpoints"],
                rows,
            )
        )
    if s.get("inference"):
        specs = {svc.name: svc for svc in (getattr(res.scenario, "inference", None) or [])}
        rows = [
            _service_row(name, v, getattr(specs.get(name), "slo", None))
            for name, v in s["inference"].items()
        ]
        parts.append("<h3>Inference services</h3>")
        parts.append(
            _table(
                [
                    "service",
                    "requests",
                    "completed",
                    "output tok/s",
                    "TTFT p50",
                    "TTFT p99",
                    "TTFT SLO",
                    "TPOT p50",
                    "TPOT p99",
                    "TPOT SLO",
                    "SLO attainment",
                    "replicas mean / max",
                ],
                rows,
            )
        )
    extra = _leaves({k: v for k, v in s.items() if k not in KNOWN_SECTIONS})
    if extra:
        # The energy, power and cost section (and any key a later version adds), each number by
        # its dotted key, in the summary's order.
        parts.append("<h3>Energy, cost and other figures</h3>")
        parts.append(_table(["quantity", "value"], [[key, _fmt(x)] for key, x in extra], cls="kv"))
    return "".join(parts)


# --- figures -----------------------------------------------------------------------------------

#: (figure, section title, caption); the order of the page.
FIGURES = (
    (
        "ledger",
        "GPU-hour ledger",
        "Where the GPU-hours went: from all GPU-hours of the run down to productive training.",
    ),
    (
        "allocation",
        "Allocation over time",
        "GPUs held by each training job and by the inference services, with GPUs down in repair.",
    ),
    (
        "utilisation",
        "Utilisation: training and serving",
        "What the GPUs did over time: training, serving (iterating or idle), down; the rest free.",
    ),
    ("power", "Facility power", "Facility power over the run."),
    (
        "replicas",
        "Replicas against load",
        "Replicas ready, provisioned and desired by the autoscaler, with the arrival rate.",
    ),
    (
        "latency",
        "Latency against the SLO",
        "Empirical CDFs of TTFT, TPOT and end-to-end latency, with each SLO target.",
    ),
    ("kv_cache", "KV cache and requests in flight", "KV-cache use and requests in flight."),
    (
        "cost",
        "Cost: private against cloud",
        "What the run costs on owned hardware and in the cloud.",
    ),
    (
        "timeline",
        "Job timelines",
        "One row per training job: when it ran, its failures, checkpoints and restarts.",
    ),
    (
        "ettr",
        "Effective training time ratio",
        "Each job's time since its first start: productive, lost work, recovery, the rest.",
    ),
)


def _absent(res: Results, name: str, plotter: Any) -> str | None:
    """Why figure `name` is left out of this run's report, or None to draw it."""
    s = _summary(res)
    has_energy = getattr(res, "power", None) is not None or any(
        k in s for k in ("energy_mwh", "peak_mw", "mean_mw")
    )
    has_cost = "cost_usd" in s  # what the cost figure draws
    if name in ("power", "cost") and getattr(plotter, name, None) is None:
        return f"not drawn: this version of aifactory_sim has no {name} figure"
    if name == "power" and not has_energy:
        return "not drawn: this run has no power data"
    if name == "cost" and not has_cost:
        return "not drawn: this run's summary has no cost section"
    if name in ("timeline", "ettr") and not s.get("training"):
        return "not drawn: this run has no training jobs"
    if name == "latency" and not len(plotter._frame("requests")):
        return (
            "not drawn: no per-request table (a run without services, or services on the "
            "fluid tier)"
        )
    if name in ("replicas", "kv_cache") and not len(plotter._frame("services")):
        return "not drawn: this run has no inference services"
    return None


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


# --- the page ----------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1200px;padding:1.5em;color:#212121;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
.sub{color:#616161;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:.6em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em .9em;min-width:9em}
.card .v{font-size:1.35em;font-weight:600}.card .k{color:#616161;font-size:.85em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
table.kv td:first-child{font-family:ui-monospace,monospace}
figure{margin:.5em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#616161;font-size:.9em}
.note{color:#757575;font-style:italic}
pre{background:#f5f5f5;padding:.8em;overflow:auto;font-size:.8em}
"""

#: Marks the page once every figure has decoded, so a headless browser can tell it rendered.
SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img");
  var ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok += 1; }
  }
  document.body.setAttribute("data-figures", imgs.length);
  document.body.setAttribute("data-figures-rendered", ok);
});
"""


def _owned(html_path: Path) -> set[str] | None:
    """Files an earlier report at `html_path` wrote (itself included), or None when a file
    there is not such a report."""
    if not html_path.exists():
        return set()
    if not html_path.is_file():
        return None
    text = html_path.read_text(errors="replace")
    if f'<meta name="generator" content="{GENERATOR}">' not in text:
        return None
    return {html_path.name, *re.findall(r'data-file="([^"/\\]+)"', text)}


def write_report(results_dir: str | Path, *, out: str | Path | None = None) -> Path:
    """Write the review report of a saved run and return the path of its HTML page.

    `out` is the page's path (default `RESULTS_DIR/report.html`; a folder means `report.html`
    in it); the figures go beside it as `STEM-NAME.png`. Files that an earlier report did not
    write are never overwritten.
    """
    folder = Path(results_dir)
    if _is_estate(folder):
        return write_estate_report(folder, out=out)
    res, notes = load_results(folder)
    page = Path(out) if out is not None else folder / "report.html"
    if page.is_dir():
        page = page / "report.html"
    if page.suffix.lower() not in (".html", ".htm"):
        raise ScenarioError(
            f"--out {page}: the report is an HTML page; name a .html file or a folder"
        )
    owned = _owned(page)
    if owned is None:
        raise ScenarioError(f"{page} exists and was not written by a report; choose another --out")

    plotter = res.plot
    sections: list[tuple[str, str]] = []
    figures: dict[str, bytes] = {}
    for name, _title, _caption in FIGURES:
        why = _absent(res, name, plotter)
        if why is None:
            try:
                figures[name] = _png(getattr(plotter, name)())
            except (ValueError, KeyError, TypeError) as err:
                if name not in ("power", "cost"):  # the core figures must draw
                    raise
                why = f"not drawn: {type(err).__name__}: {err}"
        sections.append((name, why or ""))

    files = {name: page.with_name(f"{page.stem}-{name}.png") for name in figures}
    for path in files.values():
        if path.exists() and path.name not in owned:
            raise ScenarioError(
                f"{path} exists and was not written by a report; choose another --out"
            )

    s = _summary(res)
    title = f"Architecture review: {s['scenario']}"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">seed {s["seed"]}, {s["gpus"]:,} GPUs, {_duration(s["duration_s"])}, '
        f"fidelity {html.escape(str(s.get('fidelity', '-')))}; scenario hash "
        f"{html.escape(str(res.meta.get('scenario_hash', '-')))}, aifactory_sim "
        f"{html.escape(str(res.meta.get('version', '-')))}</p>",
    ]
    for note in notes:
        body.append(f'<p class="note">{html.escape(note)}</p>')
    body += ["<h2>Headline numbers</h2>", _headline(res)]
    body += _operations(s)
    captions = {name: (title, caption) for name, title, caption in FIGURES}
    for name, why in sections:
        sec_title, caption = captions[name]
        body.append(f'<h2 id="{name}">{html.escape(sec_title)}</h2>')
        if name in figures:
            data = base64.b64encode(figures[name]).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(sec_title)}" '
                f'data-file="{files[name].name}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        else:
            body.append(f'<p class="note">{html.escape(sec_title)}: {html.escape(why)}.</p>')
    if (folder / "scenario.yaml").is_file():
        body += [
            "<h2>Scenario as run</h2>",
            "<details><summary>scenario.yaml</summary><pre>",
            html.escape((folder / "scenario.yaml").read_text()),
            "</pre></details>",
        ]
    text = _page(title, body)

    page.parent.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        path.write_bytes(figures[name])
    tmp = page.with_name(page.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(page)
    return page


# --- an estate --------------------------------------------------------------------------------
def _operations(s: Any) -> list[str]:
    """Gray failures by kind, the teams' queues against their quotas, and the replayed trace's
    job completion times (only what the run has)."""
    out: list[str] = []
    gray = s.get("gray")
    if gray:
        rows = [
            [
                html.escape(kind),
                str(g["episodes"]),
                str(g["hit_jobs"]),
                str(g["detected"]),
                _duration(g["detect_s_mean"]) if g["detect_s_mean"] is not None else "-",
                _duration(g["detect_s_max"]) if g["detect_s_max"] is not None else "-",
                f"{g['lost_gpu_h']:,.1f}",
            ]
            for kind, g in gray.items()
            if isinstance(g, dict) and "episodes" in g
        ]
        out += [
            "<h2>Gray failures and monitoring</h2>",
            _table(
                ["kind", "episodes", "hit a job", "found", "mean delay", "longest", "lost GPU-h"],
                rows,
            ),
        ]
        w = gray.get("without_monitoring")
        if w:
            out.append(
                f"<p>The same seed without monitoring loses {w['lost_gpu_h']:,.1f} GPU-h to gray "
                f"failures; monitoring saved {w['saved_gpu_h']:,.1f} GPU-h of lost work and "
                f"recovery and {w['extra_tokens_trained'] / 1e9:,.2f} B tokens.</p>"
            )
    queues = s.get("queues")
    if queues:
        rows = [
            [
                html.escape(name),
                f"{q['quota_gpus']:,}",
                f"{q['mean_gpus']:,.1f}",
                f"{q['peak_gpus']:,}",
                _pct(q["quota_use"]),
                f"{q['borrowed_gpu_h']:,.1f}",
                _duration(q["wait_s_p50"]) if q["wait_s_p50"] is not None else "-",
                _duration(q["wait_s_p90"]) if q["wait_s_p90"] is not None else "-",
                str(q["reclaims"]),
            ]
            for name, q in queues.items()
        ]
        out += [
            "<h2>Queues against their quotas</h2>",
            _table(
                [
                    "queue",
                    "quota GPUs",
                    "mean GPUs",
                    "peak",
                    "quota use",
                    "borrowed GPU-h",
                    "wait p50",
                    "wait p90",
                    "reclaims",
                ],
                rows,
            ),
        ]
    jct = [
        j["finished_at_s"] - j["submitted_at_s"]
        for name, j in s.get("training", {}).items()
        if name.startswith(TRACE_PREFIX) and j.get("finished_at_s") is not None
    ]
    if jct:
        pct = np.percentile(np.asarray(jct), [50, 90, 99])
        out += [
            "<h2>Replayed trace: job completion times</h2>",
            f"<p>{len(jct):,} trace jobs finished: JCT p50 {_duration(pct[0])}, p90 "
            f"{_duration(pct[1])}, p99 {_duration(pct[2])}.</p>",
        ]
    return out


def _is_estate(folder: Path) -> bool:
    try:
        return "estate" in json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return False


def _page(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta name="generator" content="{GENERATOR}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{CSS}</style>",
            f"<script>{SCRIPT}</script>",
            "</head><body>",
            *body,
            "</body></html>",
            "",
        ]
    )


def write_estate_report(folder: Path, *, out: str | Path | None = None) -> Path:
    """An estate's review page (what EstateResults.save wrote): utilisation and cost by site,
    the bursts, the transfers and their egress, the audit table, the work and where it ran,
    with each site's own report (its site-NAME folder) linked."""
    import pandas as pd

    if not (folder / MARKER).is_file():
        raise ScenarioError(f"{folder} is not a results folder (no {MARKER})")
    page = Path(out) if out is not None else folder / "report.html"
    if page.is_dir():
        page = page / "report.html"
    owned = _owned(page)
    if owned is None:
        raise ScenarioError(f"{page} exists and was not written by a report; choose another --out")
    s = json.loads((folder / "summary.json").read_text())
    e = s["estate"]
    title = f"Estate review: {s['scenario']}"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="sub">seed {s["seed"]}, {len(e["sites"])} sites, {s["gpus"]:,} GPUs, '
        f"{_duration(s['duration_s'])}; total {_usd(e['cost_usd']['total'])}</p>",
        "<h2>Sites</h2>",
    ]
    rows = []
    for name, r in e["sites"].items():
        sub = folder / f"site-{name}"
        link = ""
        if (sub / MARKER).is_file() and (r["jobs"] or r["services"]):
            write_report(sub)
            link = f"site-{name}/report.html"
        u = r["utilisation"]
        rows.append(
            [
                name,
                r["kind"],
                r["jurisdiction"],
                f"{r['gpus']:,}",
                _pct(u["allocated"]),
                _pct(u["training"]),
                _pct(u["serving"]),
                _usd(r["cost_usd"]["total"]),
                ", ".join(
                    f"{k} {_usd(v)}" for k, v in r["cost_usd"].items() if k != "total" and v > 0
                )
                or "-",
                _fmt(r["usd_per_btok_trained"]),
                _fmt(r["usd_per_mtok_served"]),
                link or "-",
            ]
        )
    body.append(
        _table(
            [
                "site",
                "kind",
                "jurisdiction",
                "GPUs",
                "allocated",
                "training",
                "serving",
                "cost",
                "of which",
                "USD / Btok trained",
                "USD / Mtok served",
                "site report",
            ],
            rows,
        )
    )
    png = folder / "estate.png"
    if png.is_file():
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        body.append(
            f'<figure><img alt="utilisation and cost by site" src="data:image/png;base64,{data}">'
            "<figcaption>Each site's GPUs in use over the run, and its cost by part.</figcaption>"
            "</figure>"
        )
    body.append("<h2>Bursts</h2>")
    if e["bursts"]:
        body.append(
            _table(
                ["job", "from", "to", "price", "queued", "left at"],
                [
                    [
                        b["job"],
                        b["src"],
                        b["dst"],
                        b["price"],
                        _duration(b["queued_s"]),
                        _duration(b["at_s"]),
                    ]
                    for b in e["bursts"]
                ],
            )
        )
    else:
        body.append('<p class="note">No job waited past its burst.when_queued_s.</p>')
    t = e["transfers"]
    body.append("<h2>Transfers and egress</h2>")
    body.append(
        f"<p>{t['count']} transfers, {t['bytes'] / 1e12:,.2f} TB, egress "
        f"{_usd(t['egress_usd'])}.</p>"
    )
    for name, attr in (("transfers.csv", "transfers"), ("audit.csv", "audit")):
        path = folder / name
        try:
            df = pd.read_csv(path) if path.is_file() else pd.DataFrame()
        except pd.errors.EmptyDataError:
            df = pd.DataFrame()
        if attr == "audit":
            body.append("<h2>Audit: every placement of classified work</h2>")
            a = e["audit"]
            body.append(
                f"<p>{a['placements']} placements, {a['outside_rule']} outside their rule.</p>"
            )
        if len(df):
            body.append(
                _table(list(df.columns), [[_fmt(v) for v in row] for row in df.head(500).values])
            )
    body.append("<h2>Work</h2>")
    body.append(
        _table(
            ["work", "site", "state / requests", "tokens trained / SLO"],
            [
                [f"job {n}", j["site"], j["state"], f"{j['tokens_trained']:.3g}"]
                for n, j in s["training"].items()
            ]
            + [
                [f"service {n}", v["site"], f"{v['requests']:,}", _pct(v["slo_attainment"])]
                for n, v in s["inference"].items()
            ],
        )
    )
    page.parent.mkdir(parents=True, exist_ok=True)
    tmp = page.with_name(page.name + ".partial")
    tmp.write_text(_page(title, body), encoding="utf-8")
    tmp.replace(page)
    return page
