"""The `aifactory-sim` command.

    aifactory-sim run [SCENARIO] [--out DIR] [--json] [--set path=value ...] [--no-plots] [--force]
                      [--report]
    aifactory-sim report RESULTS_DIR [--out FILE]
    aifactory-sim validate SCENARIO [--set path=value ...]
    aifactory-sim sweep [SCENARIO] [--grid path=v1,v2 ...] [--lhs|--random path=lo:hi ... --n N]
                        [--replications R] [--workers W | --dask ADDRESS] [--out DIR] [--resume]
                        [--set path=value ...] [--metric M ...] [--plot M] [--no-progress]
    aifactory-sim catalog [gpus|networks|models]
    aifactory-sim plan-serving MODEL GPU --prompt N --output N [--rate RPS] [--ttft S] [--tpot S]
                               [--usd-per-gpu-hour X] [--top K] [--csv PATH] [--plot PATH]

Exit 0 when all went well, 2 for a bad scenario or argument (one line on stderr, no traceback),
1 for an internal error (set AIFACTORY_DEBUG=1 to see its traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ScenarioError

DEFAULT_SCENARIO = "default.yaml"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ScenarioError(f"{self.prog}: {message} (see --help)")


def _overrides(pairs: list[str]) -> dict[str, Any]:
    from .spec.loader import parse_value

    out: dict[str, Any] = {}
    for pair in pairs:
        path, sep, value = pair.partition("=")
        if not sep or not path.strip():
            raise ScenarioError(
                f"--set expects path=value (e.g. training.0.parallel.dp=64), got {pair!r}"
            )
        out[path.strip()] = parse_value(value)
    return out


def bundled_scenario(name: str = DEFAULT_SCENARIO) -> Path:
    """Path of a scenario shipped inside the package."""
    return Path(str(resources.files("aifactory_sim").joinpath("scenarios", name)))


def _load(path: str | None, sets: list[str]) -> Any:
    from .spec.loader import load

    return load(path if path else bundled_scenario(), _overrides(sets))


def _cmd_run(args: argparse.Namespace) -> int:
    from .results import summary_json
    from .runner import run
    from .spec.loader import content_hash

    if args.report and args.no_save:
        raise ScenarioError("--report writes into the results folder; drop --no-save")
    scenario = _load(args.scenario, args.set)
    res = run(scenario)
    default_out = Path("results") / f"{scenario.name}-{content_hash(scenario)}"
    out = Path(args.out) if args.out else default_out
    if args.json:
        sys.stdout.write(summary_json(res.summary))
    else:
        print(res.text())
    if not args.no_save:
        written = res.save(out, plots=not args.no_plots, force=args.force)
        names = ", ".join(sorted(p.name for p in written.iterdir()))
        print(f"\nwrote {out}/ ({names})", file=sys.stderr if args.json else sys.stdout)
        if args.report:
            from .report import write_report

            page = write_report(out)
            print(f"wrote {page}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    page = write_report(args.results_dir, out=args.out)
    figures = page.read_text(encoding="utf-8").count('data-file="')
    print(f"wrote {page} ({figures} figures embedded, also as PNG files beside it)")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .spec.estate import Estate

    scenario = _load(args.scenario, args.set)
    if isinstance(scenario, Estate):
        place = scenario.placements()
        where = ", ".join(f"{w} at {s}" for w, s in place.items())
        print(
            f"ok: {scenario.name}: {len(scenario.sites)} site(s), {len(scenario.links)} link(s), "
            f"{len(scenario.training)} training job(s), {len(scenario.inference)} inference "
            f"service(s), {scenario.duration / 86400:g} days; placed: {where}"
        )
        return 0
    gpus = sum(p.gpus for p in scenario.cluster.node_pools)
    print(
        f"ok: {scenario.name}: {len(scenario.cluster.node_pools)} pool(s), {gpus:,} GPUs, "
        f"{len(scenario.training)} training job(s), {len(scenario.inference)} inference "
        f"service(s), {scenario.duration / 86400:g} days"
    )
    return 0


def _sweep_grid(pairs: list[str]) -> dict[str, list[Any]]:
    from .spec.loader import parse_value

    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        path, sep, text = pair.partition("=")
        path = path.strip()
        if not sep or not path or not text.strip():
            raise ScenarioError(
                f"--grid expects path=v1,v2,... (e.g. training.0.parallel.dp="
                f"16,32,64) or path=[v1, v2], got {pair!r}"
            )
        if path in grid:
            raise ScenarioError(f"--grid {path} is given twice; list all its values once")
        if text.strip().startswith("["):
            values = parse_value(text)
            if not isinstance(values, list) or not values:
                raise ScenarioError(f"--grid {path}: {text!r} is not a non-empty YAML list")
        else:
            values = [parse_value(v.strip()) for v in text.split(",")]
        grid[path] = values
    return grid


def _sweep_ranges(pairs: list[str], flag: str) -> dict[str, tuple[float, float]]:
    from .spec.loader import parse_value

    ranges: dict[str, tuple[float, float]] = {}
    for pair in pairs:
        path, sep, text = pair.partition("=")
        path = path.strip()
        lo, colon, hi = text.partition(":")
        bounds = (parse_value(lo.strip()), parse_value(hi.strip()))
        numbers = all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
        if not sep or not path or not colon or not numbers or not bounds[0] < bounds[1]:
            raise ScenarioError(
                f"{flag} expects path=lo:hi, two numbers with lo < hi (e.g. "
                f"inference.0.traffic.rate_rps=5:20), got {pair!r}"
            )
        if path in ranges:
            raise ScenarioError(f"{flag} {path} is given twice")
        ranges[path] = bounds  # type: ignore[assignment]
    return ranges


#: Summary keys shown by `sweep` when no --metric is given (those the runs have).
HEADLINE = ("utilisation.training", "utilisation.serving", "energy_mwh", "cost_usd.private.total")
HEADLINE_SERVICE = ("ttft_s.p99", "usd_per_mtok.private")
HEADLINE_JOB = ("ettr",)


def _headline(df: Any) -> list[str]:
    cols = [c for c in HEADLINE if c in df.columns]
    for c in df.columns:
        parts = c.split(".")
        if (
            len(parts) >= 3 and parts[0] == "inference" and ".".join(parts[2:]) in HEADLINE_SERVICE
        ) or (len(parts) == 3 and parts[0] == "training" and parts[2] in HEADLINE_JOB):
            cols.append(c)
    return [c for c in cols if (df[c].fillna(0) != 0).any()][:6]  # leave out all-zero ones


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "-" if x != x else f"{x:.4g}"
    return str(x)


def _cmd_sweep(args: argparse.Namespace) -> int:
    import pandas as pd

    from .sweep import parameter_columns, summarize, sweep

    if args.lhs and args.random:
        raise ScenarioError("--lhs and --random are two designs; give one of them")
    ranges = _sweep_ranges(args.lhs or args.random or [], "--lhs" if args.lhs else "--random")
    if ranges and args.n is None:
        raise ScenarioError(
            f"{'--lhs' if args.lhs else '--random'} needs --n N, the number of points to draw"
        )
    if args.n is not None and not ranges:
        raise ScenarioError("--n needs --lhs or --random ranges to draw the points in")
    if args.n is not None and args.n < 1:
        raise ScenarioError(f"--n must be >= 1, got {args.n}")
    if args.replications < 1:
        raise ScenarioError(f"--replications must be >= 1, got {args.replications}")
    if args.workers is not None and args.workers < 1:
        raise ScenarioError(f"--workers must be >= 1, got {args.workers}")
    if args.dask and args.workers is not None:
        raise ScenarioError(
            "--workers sizes the local process pool; with --dask the cluster "
            "has its own workers: drop one of them"
        )
    if args.resume and not args.out:
        raise ScenarioError("--resume needs --out DIR, the folder of the sweep to finish")
    if args.plot and not args.out:
        raise ScenarioError("--plot writes a PNG into --out DIR; give --out")
    executor: Any = None
    client = None
    if args.dask:
        try:
            from distributed import Client
        except ImportError:
            raise ScenarioError("--dask needs Dask: pip install 'aifactory_sim[dask]'") from None
        try:
            client = Client(args.dask, timeout="10s")
        except (OSError, TimeoutError) as err:
            raise ScenarioError(
                f"--dask: cannot reach a scheduler at {args.dask!r} ({err})"
            ) from None
        executor = client
    try:
        df = sweep(
            args.scenario if args.scenario else bundled_scenario(),
            _sweep_grid(args.grid),
            ranges=ranges or None,
            samples=args.n,
            design="random" if args.random else "lhs",
            seeds=args.replications,
            overrides=_overrides(args.set),
            executor=executor,
            workers=args.workers,
            out=args.out,
            resume=args.resume,
            progress=not args.no_progress,
        )
    finally:
        if client is not None:
            client.close()
    params = parameter_columns(df)
    shown = args.metric or _headline(df)
    missing = [m for m in shown if m not in df.columns]
    if missing:
        raise ScenarioError(
            f"--metric {missing[0]}: no such column in the sweep table (the "
            "summary flattened to dotted keys, e.g. utilisation.training)"
        )
    failed = int(df["error"].notna().sum())
    if args.replications > 1:
        stats = summarize(df, shown)
        wide = (
            stats[params].drop_duplicates().reset_index(drop=True)
            if params
            else (pd.DataFrame(index=[0]))
        )
        for metric in shown:
            part = stats[stats["metric"] == metric].reset_index(drop=True)
            wide[metric] = [
                f"{_fmt(m)} ± {_fmt((hi - lo) / 2)}"
                for m, lo, hi in zip(part["mean"], part["ci95_lo"], part["ci95_hi"], strict=True)
            ]
        print(
            f"{len(wide)} points x {args.replications} replications: mean ± half-width of "
            "its 95 % confidence interval (Student's t)"
        )
        print(wide.to_string(index=False))
    else:
        print(f"{len(df)} points")
        print(df[[*params, *shown]].to_string(index=False, float_format=_fmt))
    if failed:
        print(f"\n{failed} run(s) failed; first error: {df['error'].dropna().iloc[0]}")
    if args.out:
        out = Path(args.out)
        print(f"\nwrote {out}/ (manifest.json, points/, sweep.csv)")
        if args.plot:
            from . import sweep_plots

            if args.plot not in df.columns:
                raise ScenarioError(f"--plot {args.plot}: no such column in the sweep table")
            name = out / f"sweep-{args.plot.replace('/', '_')}.png"
            if len(params) == 2:
                sweep_plots.heatmap(df, args.plot, save=name)
            elif len(params) == 1:
                sweep_plots.metric_vs_param(df, args.plot, save=name)
            else:
                raise ScenarioError(
                    "--plot draws a sweep of one parameter (the metric against "
                    f"it) or two (a heatmap); this one has {len(params)}"
                )
            print(f"wrote {name}")
    return 0


def _cmd_catalog(args: argparse.Namespace) -> int:
    from . import catalog

    kinds = {"gpus": "gpu", "networks": "network", "models": "model"}
    chosen = [args.kind] if args.kind else list(kinds)
    for i, plural in enumerate(chosen):
        table = catalog.table(kinds[plural])
        if args.json:
            print(json.dumps(table, indent=2))
            continue
        if i:
            print()
        print(f"{plural}:")
        fields = list(dict.fromkeys(k for e in table.values() for k in e if k != "source"))
        width = max(len(n) for n in table) + 2
        widths = [
            max(len(f), *(len(str(e.get(f, "-"))) for e in table.values())) + 2 for f in fields
        ]
        print(
            "  "
            + "name".ljust(width)
            + "".join(f"{f:>{w}}" for f, w in zip(fields, widths, strict=True))
        )
        for name, entry in table.items():
            cells = "".join(
                f"{'-' if entry.get(f) is None else entry.get(f)!s:>{w}}"
                for f, w in zip(fields, widths, strict=True)
            )
            print("  " + name.ljust(width) + cells)
        print("  sources:")
        for name, entry in table.items():
            print(f"    {name}: {entry['source']}")
    return 0


def _layout_name(row: Any) -> str:
    moe = row["ep"] > 1 or row["dp_attention"] > 1
    par = f" dp-attention{row['dp_attention']} ep{row['ep']}" if moe else ""
    return (
        f"tp{row['tp']}{par} {row['precision']} kv-{row['kv_cache_dtype']} "
        f"max_num_seqs {row['max_num_seqs']} max_batched_tokens {row['max_batched_tokens']}"
    )


def _cmd_plan_serving(args: argparse.Namespace) -> int:
    from .plan_serving import plan_serving, plot_serving

    for flag, path in (("--csv", args.csv), ("--plot", args.plot)):
        if path and Path(path).exists() and not args.force:
            raise ScenarioError(f"{flag} {path} exists; choose another path or pass --force")
    if args.top < 1:
        raise ScenarioError(f"--top must be a positive integer; got {args.top}")
    df = plan_serving(
        args.model,
        args.gpu,
        prompt=args.prompt,
        output=args.output,
        ttft_s=args.ttft,
        tpot_s=args.tpot,
        percentile=args.percentile,
        load_rps=args.rate,
        gpus_per_node=args.gpus_per_node,
        usd_per_gpu_hour=args.usd_per_gpu_hour,
        nic_gbit_s=args.nic_gbit_s,
        allreduce=args.allreduce,
    )
    best = df.attrs["cheapest"]
    slo = ", ".join(f"{k} <= {v:g} s" for k, v in (("TTFT", args.ttft), ("TPOT", args.tpot)) if v)
    if best is None:
        raise ScenarioError(
            f"no layout of {df.attrs['model']} on {df.attrs['gpu']} meets {slo or 'the SLO'}"
            f"{f' at {args.rate:g} requests/s' if args.rate else ''}: the best TTFT "
            f"p{args.percentile:g} reachable is {df.attrs['best_ttft_s']:.4g} s and the best "
            f"TPOT {df.attrs['best_tpot_s']:.4g} s (at the lightest load)"
        )
    price = "usd_per_million_tokens" in df
    cost = (
        f"${best['usd_per_million_tokens']:.4g} per million output tokens"
        if price
        else f"{best['gpu_hours_per_million_tokens']:.4g} GPU-hours per million output tokens"
    )
    fleet = (
        f"{best['gpus']} GPUs ({best['replicas']} replicas of {best['gpus_per_replica']})"
        if args.rate
        else f"{best['gpus_per_replica']} GPUs a replica, "
        f"{best['slo_requests_per_s_per_replica']:.3g} requests/s each within the SLO"
    )
    print(
        f"cheapest layout of {df.attrs['model']} on {df.attrs['gpu']} meeting "
        f"{slo or 'no SLO'}{f' at {args.rate:g} requests/s' if args.rate else ''}: "
        f"{_layout_name(best)}: {fleet}, {cost}; TTFT p{args.percentile:g} "
        f"{best['ttft_s']:.3g} s, TPOT {best['tpot_s']:.3g} s"
    )
    moe = bool((df["ep"] > 1).any() or (df["dp_attention"] > 1).any())
    cols = [
        "tp",
        *(["dp_attention", "ep"] if moe else []),
        "precision",
        "kv_cache_dtype",
        "max_num_seqs",
        "max_batched_tokens",
        *(["replicas", "gpus"] if args.rate else []),
        "output_tokens_per_s_per_gpu",
        "slo_output_tokens_per_s_per_gpu",
        "tpot_s",
        "ttft_s",
        "usd_per_million_tokens" if price else "gpu_hours_per_million_tokens",
        "pareto",
    ]
    print(f"\ntop {min(args.top, len(df))} of {len(df):,} layouts that fit:")
    print(df[cols].head(args.top).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if args.csv:
        df.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    if args.plot:
        plot_serving(df, args.plot)
        print(f"wrote {args.plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="aifactory-sim",
        description="Simulate an AI factory: GPU clusters that "
        "train and serve generative-AI models.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run a scenario and write its results")
    r.add_argument("scenario", nargs="?", help="scenario file (default: the bundled one)")
    r.add_argument("--out", help="results folder (default: results/NAME-HASH)")
    r.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a field, e.g. training.0.parallel.dp=64 (repeatable)",
    )
    r.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    r.add_argument("--no-save", action="store_true", help="write no files")
    r.add_argument(
        "--force", action="store_true", help="overwrite an --out folder that holds other files"
    )
    r.add_argument(
        "--report",
        action="store_true",
        help="also write the review report (report.html) into the results folder",
    )
    r.set_defaults(func=_cmd_run)

    rep = sub.add_parser(
        "report", help="write the review report (one HTML page) of a results folder"
    )
    rep.add_argument("results_dir", metavar="RESULTS_DIR", help="a folder written by `run`")
    rep.add_argument(
        "--out",
        help="the page to write (default: RESULTS_DIR/report.html); the "
        "figures go beside it as NAME-FIGURE.png",
    )
    rep.set_defaults(func=_cmd_report)

    v = sub.add_parser("validate", help="check a scenario without running it")
    v.add_argument("scenario")
    v.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    v.set_defaults(func=_cmd_validate)

    sw = sub.add_parser(
        "sweep",
        help="run a scenario over a grid or a sample of variants, "
        "with replications, on local cores or a Dask cluster",
    )
    sw.add_argument("scenario", nargs="?", help="scenario file (default: the bundled one)")
    sw.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="PATH=V1,V2",
        help="sweep a field over these values (repeatable: the full factorial)",
    )
    sw.add_argument(
        "--lhs",
        action="append",
        metavar="PATH=LO:HI",
        help="draw the field from [LO, HI] by Latin hypercube (repeatable; --n)",
    )
    sw.add_argument(
        "--random",
        action="append",
        metavar="PATH=LO:HI",
        help="draw the field uniformly from [LO, HI] (repeatable; --n)",
    )
    sw.add_argument("--n", type=int, help="points to draw over the --lhs/--random ranges")
    sw.add_argument(
        "--replications",
        type=int,
        default=1,
        metavar="R",
        help="runs of each point, each with its own seed (default 1)",
    )
    sw.add_argument(
        "--workers", type=int, metavar="W", help="local processes (default: one per core)"
    )
    sw.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run on a Dask cluster, e.g. tcp://10.0.0.5:8786 (needs the dask extra)",
    )
    sw.add_argument("--out", help="folder for the manifest, one file per run and sweep.csv")
    sw.add_argument(
        "--resume",
        action="store_true",
        help="finish the sweep in --out: run only the points not yet there",
    )
    sw.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="a fixed override for every point (repeatable)",
    )
    sw.add_argument(
        "--metric",
        action="append",
        metavar="KEY",
        help="summary key to print, e.g. inference.chat.ttft_s.p99 (repeatable)",
    )
    sw.add_argument(
        "--plot",
        metavar="KEY",
        help="also draw this metric into --out: against the parameter, or a heatmap over two",
    )
    sw.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    sw.set_defaults(func=_cmd_sweep)

    c = sub.add_parser("catalog", help="list the GPUs, networks and models in the catalog")
    c.add_argument("kind", nargs="?", choices=["gpus", "networks", "models"])
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cmd_catalog)

    ps = sub.add_parser(
        "plan-serving",
        help="rank serving layouts (tp, and for MoE dp_attention and ep; precision, KV dtype, "
        "batch limits) of a model on a GPU "
        "and size the cheapest fleet that meets a latency SLO",
    )
    ps.add_argument("model", metavar="MODEL", help="a catalog model, e.g. llama3-70b")
    ps.add_argument("gpu", metavar="GPU", help="a catalog GPU, e.g. H100-SXM")
    ps.add_argument("--prompt", type=int, required=True, help="mean prompt tokens")
    ps.add_argument("--output", type=int, required=True, help="mean output tokens")
    ps.add_argument("--rate", type=float, metavar="RPS", help="load to size the fleet for")
    ps.add_argument("--ttft", type=float, metavar="S", help="time-to-first-token SLO, seconds")
    ps.add_argument("--tpot", type=float, metavar="S", help="time-per-output-token SLO, seconds")
    ps.add_argument(
        "--percentile", type=float, default=50.0, help="TTFT percentile the SLO holds (50)"
    )
    ps.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (8)")
    ps.add_argument(
        "--nic-gbit-s",
        type=float,
        default=400.0,
        metavar="G",
        help="scale-out NIC per GPU, Gb/s, for a MoE model's expert all-to-all (400)",
    )
    ps.add_argument(
        "--allreduce",
        choices=("ring", "nvls", "auto"),
        default="ring",
        help="tensor-parallel all-reduce: ring, nvls (NVLink SHARP) or auto, the faster (ring)",
    )
    ps.add_argument(
        "--usd-per-gpu-hour", type=float, metavar="X", help="price, for the cost per token"
    )
    ps.add_argument("--top", type=int, default=10, metavar="K", help="rows to print (10)")
    ps.add_argument("--csv", metavar="PATH", help="write every layout to this CSV file")
    ps.add_argument("--plot", metavar="PATH", help="draw throughput per GPU against per user")
    ps.add_argument("--force", action="store_true", help="overwrite an existing --csv/--plot")
    ps.set_defaults(func=_cmd_plan_serving)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except ScenarioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # an internal error: say so plainly
        if os.environ.get("AIFACTORY_DEBUG"):
            traceback.print_exc()
        print(
            f"internal error: {type(err).__name__}: {err} (set AIFACTORY_DEBUG=1 for the "
            "traceback; please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
