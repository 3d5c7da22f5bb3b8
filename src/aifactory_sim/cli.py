"""The `aifactory-sim` command.

    aifactory-sim run [SCENARIO] [--out DIR] [--json] [--set path=value ...] [--no-plots] [--force]
                      [--report]
    aifactory-sim report RESULTS_DIR [--out FILE]
    aifactory-sim validate SCENARIO [--set path=value ...]
    aifactory-sim catalog [gpus|networks|models]

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
            raise ScenarioError(f"--set expects path=value (e.g. training.0.parallel.dp=64), "
                                f"got {pair!r}")
        out[path.strip()] = parse_value(value)
    return out


def bundled_scenario(name: str = DEFAULT_SCENARIO) -> Path:
    """Path of a scenario shipped inside the package."""
    return Path(str(resources.files("aifactory_sim").joinpath("scenarios", name)))


def _load(path: str | None, sets: list[str]) -> Any:
    from .spec.loader import load

    return load(path if path else bundled_scenario(), _overrides(sets))


def _cmd_run(args: argparse.Namespace) -> int:
    from .engine.factory import run
    from .results import summary_json
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
    scenario = _load(args.scenario, args.set)
    gpus = sum(p.gpus for p in scenario.cluster.node_pools)
    print(f"ok: {scenario.name}: {len(scenario.cluster.node_pools)} pool(s), {gpus:,} GPUs, "
          f"{len(scenario.training)} training job(s), {len(scenario.inference)} inference "
          f"service(s), {scenario.duration / 86400:g} days")
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
        widths = [max(len(f), *(len(str(e.get(f, "-"))) for e in table.values())) + 2
                  for f in fields]
        print("  " + "name".ljust(width) + "".join(f"{f:>{w}}" for f, w in zip(fields, widths,
                                                                                   strict=True)))
        for name, entry in table.items():
            cells = "".join(f"{'-' if entry.get(f) is None else entry.get(f)!s:>{w}}"
                            for f, w in zip(fields, widths, strict=True))
            print("  " + name.ljust(width) + cells)
        print("  sources:")
        for name, entry in table.items():
            print(f"    {name}: {entry['source']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="aifactory-sim", description="Simulate an AI factory: GPU clusters that "
                "train and serve generative-AI models.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run a scenario and write its results")
    r.add_argument("scenario", nargs="?", help="scenario file (default: the bundled one)")
    r.add_argument("--out", help="results folder (default: results/NAME-HASH)")
    r.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    r.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field, e.g. training.0.parallel.dp=64 (repeatable)")
    r.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    r.add_argument("--no-save", action="store_true", help="write no files")
    r.add_argument("--force", action="store_true",
                   help="overwrite an --out folder that holds other files")
    r.add_argument("--report", action="store_true",
                   help="also write the review report (report.html) into the results folder")
    r.set_defaults(func=_cmd_run)

    rep = sub.add_parser("report", help="write the review report (one HTML page) of a results "
                         "folder")
    rep.add_argument("results_dir", metavar="RESULTS_DIR", help="a folder written by `run`")
    rep.add_argument("--out", help="the page to write (default: RESULTS_DIR/report.html); the "
                     "figures go beside it as NAME-FIGURE.png")
    rep.set_defaults(func=_cmd_report)

    v = sub.add_parser("validate", help="check a scenario without running it")
    v.add_argument("scenario")
    v.add_argument("--set", action="append", default=[], metavar="PATH=VALUE")
    v.set_defaults(func=_cmd_validate)

    c = sub.add_parser("catalog", help="list the GPUs, networks and models in the catalog")
    c.add_argument("kind", nargs="?", choices=["gpus", "networks", "models"])
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cmd_catalog)
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
        print(f"internal error: {type(err).__name__}: {err} (set AIFACTORY_DEBUG=1 for the "
              "traceback; please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
