"""Rewrite the table of docs/background/validation.md from the validation tables of the other
background pages.

    python docs/gen_validation_index.py          # rewrite the table in place
    python docs/gen_validation_index.py --check  # exit 1 if the page is out of date

It runs nothing: it reads the blocks between the generators' markers in training-model.md,
reliability.md and serving.md (and the hand-written power-validation block of power-cost.md),
so run it after the generators of those pages (docs/index.md lists them). Under a second.
"""

from __future__ import annotations

import re
from pathlib import Path

from _generated import replace_block, run

BG = Path(__file__).parent / "background"
DOC = BG / "validation.md"


def block(page: str, name: str) -> str:
    """The text between <!-- name:begin ... --> and <!-- name:end --> of a background page."""
    text = (BG / page).read_text()
    m = re.search(rf"<!-- {name}:begin[^>]*-->\n(.*?)<!-- {name}:end -->", text, re.S)
    if not m:
        raise SystemExit(f"docs/background/{page}: block {name!r} not found")
    return m.group(1)


def anchor(page: str, name: str) -> str:
    """`page#slug` of the heading above a block, GitHub's slug rule."""
    text = (BG / page).read_text()
    head = text[: text.index(f"<!-- {name}:begin")]
    title = re.findall(r"^#+ (.+)$", head, re.M)[-1]
    slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
    return f"[{page.removesuffix('.md')}]({page}#{slug})"


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table of a block, as rows of header -> cell."""
    out, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|-"):
            head = cells(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(head, cells(lines[i]), strict=True)))
                i += 1
            out.append(rows)
        else:
            i += 1
    return out


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def pct(x: str) -> float:
    """'+3.1 %' -> 0.031."""
    return float(x.replace("%", "").replace(",", "").replace("**", "").strip()) / 100.0


def num(x: str) -> float:
    return float(re.sub(r"[^\d.\-+eE]", "", x))


def training() -> list[list[str]]:
    where = anchor("training-model.md", "validation")
    rows = []
    for r in tables(block("training-model.md", "validation"))[0]:
        rows.append([
            "training", f"TFLOP/s per GPU, {r['params (B)']}B GPT on {r['GPUs']} A100 "
            f"(TP{r['TP']} PP{r['PP']} DP{r['DP']})", "Megatron-LM, SC'21, Table 1",
            r["published TFLOP/s"], r["simulated TFLOP/s"], r["error"],
            "10 % (one constant fitted to all ten rows)", where,
        ])
    where = anchor("training-model.md", "crosscheck")
    r = tables(block("training-model.md", "crosscheck"))[0][0]
    rows.append([
        "training", "model TFLOP/s per GPU, Llama 3 405B on 16,384 H100 (recompute auto)",
        "Llama 3 Herd, arXiv 2407.21783, Table 4", r["published TFLOP/s/GPU"],
        r["simulated model TFLOP/s/GPU"], r["error"], "reported, not tested", where,
    ])
    return rows


def reliability() -> list[list[str]]:
    rows = []
    where = anchor("reliability.md", "daly")
    for r in tables(block("reliability.md", "daly"))[0]:
        rows.append([
            "reliability", f"mean wall time, M = {r['M (h)']} h, tau = {r['tau (s)']} s, "
            f"delta = {r['delta (s)']} s, R = {r['R (s)']} s", "Daly (2006), closed form",
            f"{r['Daly T (s)']} s", f"{r['simulated mean (s)']} s", r["error"], "3 %", where,
        ])
    where = anchor("reliability.md", "sweep")
    text = block("reliability.md", "sweep")
    least = re.search(r"Least simulated mean at tau = ([\d.]+) tau_opt", text)
    rows.append([
        "reliability", "checkpoint interval with the least mean wall time",
        "Daly's optimum tau_opt", "1 tau_opt", f"{least.group(1) if least else '?'} tau_opt",
        "-", "one grid step (a factor of 2)", where,
    ])
    where = anchor("reliability.md", "counts")
    for r in tables(block("reliability.md", "counts"))[0]:
        exp, obs = num(r["expected"]), num(r["observed"])
        poisson = r["process"].startswith("Poisson")
        rows.append([
            "reliability", f"failure count, {r['process']}, {r['nodes x days']} node-days",
            "Poisson mean" if poisson else "renewal theory (Ross)", r["expected"],
            f"{r['observed']} ({r['test']})", f"{obs / exp - 1:+.1%}".replace("%", " %"),
            "p > 0.001" if poisson else "5 standard deviations", where,
        ])
    where = anchor("reliability.md", "llama3")
    first = tables(block("reliability.md", "llama3"))[0]
    ettr = next(r["value"] for r in first if "ETTR**, simulated" in r["figure"])
    hits = next(r["value"] for r in first if r["figure"].startswith("interruptions of the job"))
    seeds = re.search(r"ETTR ([\d.]+%) on average, ([\d.]+%) to ([\d.]+%)",
                      block("reliability.md", "llama3"))
    spread = f"; seeds 1-10: {seeds.group(1)} ({seeds.group(2)}-{seeds.group(3)})" if seeds else ""
    rows.append([
        "reliability", "effective training time, Llama 3 405B, 54 days",
        "Llama 3 Herd, Sec. 3.3.4", "over 90 %", f"{ettr.strip('*')} (seed 1){spread}",
        "-", "reported, not tested", where,
    ])
    rows.append([
        "reliability", "unexpected interruptions of the job in 54 days", "Llama 3 Herd, Table 5",
        "419", f"{hits} (seed 1)", f"{num(hits) / 419 - 1:+.1%}".replace("%", " %"),
        "reported, not tested", where,
    ])
    return rows


def serving() -> list[list[str]]:
    rows = []
    where = anchor("serving.md", "tensorrt")
    for r in tables(block("serving.md", "tensorrt"))[0]:
        name = f"output tokens/s, Llama 3.1 8B FP8, one H100, ISL/OSL {r['ISL / OSL']}"
        src = "TensorRT-LLM perf overview"
        rows.append(["serving", f"{name}, through the engine", src, r["published tok/s"],
                     r["engine tok/s"], r["engine error"], "15 %", where])
        rows.append(["serving", f"{name}, closed form (fitted)", src, r["published tok/s"],
                     r["closed form tok/s"], r["closed-form error"], "6 %", where])
    where = anchor("serving.md", "erlang")
    for r in tables(block("serving.md", "erlang"))[0]:
        rows.append([
            "serving", f"mean queue wait, M/M/4 at rho = {r['rho']}",
            "Erlang C (Kleinrock, Eq. 3.41)", f"{r['Erlang-C mean wait (ms)']} ms",
            f"{r['simulated mean wait (ms)']} ms", r["error"], "5 %", where,
        ])
    where = anchor("serving.md", "tiers")
    tiers = block("serving.md", "tiers")
    worst = max((float(x) for x in re.findall(r"below ([\d.e\-]+) s", tiers)), default=None)
    rows.append([
        "serving", "per-request timestamps, `fast` against `step` (three workloads)",
        "the `step` tier (reference)", "equal", f"equal to < {worst:g} s" if worst else "?",
        "-", "1e-9 s", where,
    ])
    where = anchor("serving.md", "fluid-validation")
    text = block("serving.md", "fluid-validation")
    spec = text.split("Tolerances:")[1].split(";")[0]
    tol = {}
    for item in spec.split(","):
        metric, value = item.strip().rsplit(" ", 2)[:2]
        tol[metric] = float(value) / 100.0
    for r in tables(text)[0]:
        errs = []
        for col, t in tol.items():
            fast, err = r[col].rsplit(", ", 1)
            e = pct(err.replace("(out)", ""))
            errs.append((abs(e) / t, e, col, t, fast.strip(), "(out)" in err))
        _, e, col, t, fast, out = max(errs)
        rows.append([
            "serving", f"`fluid` against `fast`, {r['workload']}: largest error against its "
            f"tolerance ({col})", "the `fast` tier", fast, "-", f"{e:+.1%}".replace("%", " %"),
            f"{t:.0%}".replace("%", " %") + (" (not held: shown as a limit)" if out else ""),
            where,
        ])
    return rows


def power() -> list[list[str]]:
    where = "[power-cost](power-cost.md#validation)"
    rows = []
    for r in tables(block("power-cost.md", "power-validation"))[0]:
        rows.append(["power and cost", r["check"], r["reference"], r["reference value"],
                     r["ours"], r["error"], r["tolerance"], where])
    return rows


HEAD = ["model", "check", "reference", "reference value", "ours", "error", "tolerance", "from"]


def build(old: str) -> tuple[str, str]:
    rows = training() + reliability() + serving() + power()
    lines = ["| " + " | ".join(HEAD) + " |", "|---|---|---|---:|---:|---:|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return replace_block(DOC, old, "index", "\n".join(lines)), f"{len(rows)} rows"


if __name__ == "__main__":
    raise SystemExit(run(DOC, build, __doc__.splitlines()[0], "gen_validation_index.py"))
