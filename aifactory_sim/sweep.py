"""Sweeps: one scenario run over many variants, in this process, on local cores or on a Dask
cluster, streamed to disk point by point and resumable.

    df = aifactory_sim.sweep("scenarios/default.yaml",
                             grid={"training.0.parallel.dp": [16, 32]}, seeds=3)
    aifactory_sim.summarize(df, ["utilisation.training"])

A *point* is one assignment of the swept parameters; each point runs `seeds` times
(replications), each with its own scenario `seed`. The table has one row per point and
replication. Variants are addressed by the dotted paths of `run --set` (`training.0.parallel.dp`,
`cluster.node_pools.0.nodes`), applied with `spec.loader.set_path` before validation.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ScenarioError

#: Columns of every sweep table after the parameters, in this order; the metrics follow.
FIXED_COLUMNS = ("point", "replication", "seed", "error")
DESIGNS = ("lhs", "random")
EXECUTORS = ("processes", "inprocess")
FORMATS = ("csv", "parquet")
MANIFEST = "manifest.json"
TABLE = "sweep"  # sweep.csv / sweep.parquet
POINTS = "points"
#: First words of the SeedSequence spawn keys, so that design sampling and point seeds never
#: draw from the same stream.
_KEY_DESIGN = 0x5D
_KEY_POINT = 0x5E


# ---------------------------------------------------------------------------------------------
# Flattening a summary
# ---------------------------------------------------------------------------------------------


def flatten(summary: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The nested summary as one level of dotted keys (`inference.chat.ttft_s.p99`).

    Lists are flattened by position like the override paths (`key.0`, `key.1`); empty mappings
    and lists leave no column; `None` stays `None` (an empty cell, NaN in the table).
    """
    out: dict[str, Any] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list | tuple):
            out.update(flatten({str(i): v for i, v in enumerate(value)}, name + "."))
        elif isinstance(value, np.generic):
            out[name] = value.item()
        else:
            out[name] = value
    return out


# ---------------------------------------------------------------------------------------------
# The design: which points to run
# ---------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON-able copy of a parameter value (numpy scalars and tuples become plain)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _walk(data: Any, path: str) -> tuple[bool, Any]:
    """(True, value) when `path` reaches a value of `data`, or passes a missing section (None),
    which set_path would create; (False, None) when a key or index does not exist."""
    node = data
    for key in path.split("."):
        if node is None:
            return True, None
        if isinstance(node, list):
            if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
                return False, None
            node = node[int(key)]
        elif isinstance(node, Mapping):
            if key not in node:
                return False, None
            node = node[key]
        else:
            return False, None
    return True, node


def _check_path(path: Any, raw: dict[str, Any], full: dict[str, Any], what: str) -> Any:
    """Raise unless `path` names a field of the scenario; return the field's current value."""
    if not isinstance(path, str) or not path:
        raise ScenarioError(
            f"{what}: a parameter is a dotted path (e.g. training.0.parallel.dp), got {path!r}"
        )
    if path == "seed" or path.startswith("seed."):
        raise ScenarioError(
            f"{what}: seed cannot be swept; replications get their own seeds "
            "(seeds=R, --replications R)",
            path=path,
        )
    ok_full, value = _walk(full, path)
    ok_raw, _ = _walk(raw, path)
    if not ok_full and not ok_raw:
        raise ScenarioError(
            f"{what}: no such field in the scenario (check the spelling; lists "
            "are indexed by position, e.g. training.0.parallel.dp)",
            path=path,
        )
    return value


def _point_key(params: Mapping[str, Any]) -> str:
    """The identity of a point: a hash of its parameter values, whatever its position."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def point_seed(base_seed: int, params: Mapping[str, Any], replication: int) -> int:
    """The scenario seed of one run of a sweep.

    `SeedSequence(base_seed, spawn_key=(K, h0..h3, replication))`: the child that
    `SeedSequence(base_seed).spawn` would make, keyed by the point's content (h0..h3, 128 bits
    of the SHA-256 of its parameter values) instead of its position, so a run's seed, and so
    its result, depends neither on the worker that ran it nor on the order of the points.
    """
    digest = _point_key(params)
    words = tuple(int(digest[i : i + 8], 16) for i in range(0, 32, 8))
    ss = np.random.SeedSequence(base_seed, spawn_key=(_KEY_POINT, *words, replication))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))  # < 2**63


def latin_hypercube(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """n points in [0, 1)^d, one in each of the n equal strata of every dimension (McKay,
    Beckman and Conover 1979, Technometrics 21(2)); drawn by scipy.stats.qmc.LatinHypercube."""
    from scipy.stats import qmc

    try:
        sampler = qmc.LatinHypercube(d=d, rng=rng)
    except TypeError:  # scipy < 1.15 names it seed
        sampler = qmc.LatinHypercube(d=d, seed=rng)
    return sampler.random(n)


def _design(
    raw: dict[str, Any],
    full: dict[str, Any],
    base_seed: int,
    grid: Mapping[str, Sequence[Any]] | None,
    ranges: Mapping[str, Sequence[float]] | None,
    samples: int | None,
    design: str,
) -> tuple[list[str], list[dict[str, Any]]]:
    """The parameter paths and the points: the grid's cartesian product (first path slowest),
    each crossed with the `samples` points drawn over `ranges`."""
    grid = dict(grid or {})
    ranges = dict(ranges or {})
    for path, values in grid.items():
        _check_path(path, raw, full, "grid")
        if isinstance(values, str | bytes | Mapping) or not isinstance(values, Sequence):
            raise ScenarioError(
                f"grid: give a list of values, e.g. [16, 32, 64] (got {values!r})", path=path
            )
        if not values:
            raise ScenarioError("grid: the list of values is empty", path=path)
    if ranges and samples is None:
        raise ScenarioError("ranges need samples=N, the number of points to draw")
    if samples is not None and not ranges:
        raise ScenarioError("samples=N needs ranges={path: (lo, hi)} to draw the points in")
    if samples is not None and (
        isinstance(samples, bool) or not isinstance(samples, int) or samples < 1
    ):
        raise ScenarioError(f"samples: a whole number of points >= 1 (got {samples!r})")
    if design not in DESIGNS:
        raise ScenarioError(f"design: {design!r} is not one of {', '.join(DESIGNS)}")
    integer: dict[str, bool] = {}
    for path, bounds in ranges.items():
        if path in grid:
            raise ScenarioError("both in grid and in ranges; give it in one", path=path)
        current = _check_path(path, raw, full, "ranges")
        ok = (
            isinstance(bounds, Sequence)
            and not isinstance(bounds, str)
            and len(bounds) == 2
            and all(
                isinstance(b, int | float | np.number)
                and not isinstance(b, bool)
                and math.isfinite(b)
                for b in bounds
            )
        )
        if not ok or not bounds[0] < bounds[1]:
            raise ScenarioError(
                f"ranges: give (lo, hi), two numbers with lo < hi (got {bounds!r})", path=path
            )
        # An integer field (its current value an int), or a new field with integer bounds.
        integer[path] = (isinstance(current, int) and not isinstance(current, bool)) or (
            current is None and all(isinstance(b, int | np.integer) for b in bounds)
        )
    sampled: list[dict[str, Any]] = [{}]
    if ranges:
        rng = np.random.default_rng(np.random.SeedSequence(base_seed, spawn_key=(_KEY_DESIGN,)))
        assert samples is not None
        unit = (
            latin_hypercube(samples, len(ranges), rng)
            if design == "lhs"
            else rng.random((samples, len(ranges)))
        )
        sampled = []
        for row in unit:
            point: dict[str, Any] = {}
            for u, (path, (lo, hi)) in zip(row, ranges.items(), strict=True):
                x = float(lo) + float(u) * (float(hi) - float(lo))
                point[path] = int(np.rint(x)) if integer[path] else x
            sampled.append(point)
    paths = [*grid, *ranges]
    points = [
        {**{p: _plain(v) for p, v in zip(grid, combo, strict=True)}, **s}
        for combo in itertools.product(*grid.values())
        for s in sampled
    ]
    return paths, points


# ---------------------------------------------------------------------------------------------
# One run (in a worker)
# ---------------------------------------------------------------------------------------------


def _run_point(
    base: dict[str, Any], task: tuple[int, int, int, dict[str, Any]]
) -> tuple[int, int, dict[str, Any] | str]:
    """Run one (point, replication): its flattened summary, or the text of its error."""
    from .runner import run
    from .spec.loader import load

    point, replication, seed, params = task
    try:
        scenario = load(base, {**params, "seed": seed})
        summary = flatten(run(scenario).summary)
    except ScenarioError as err:
        return point, replication, str(err)
    except Exception as err:  # a bug in one variant must not stop the others
        return point, replication, f"internal error: {type(err).__name__}: {err}"
    summary.pop("seed", None)  # the table's own seed column holds it
    return point, replication, summary


# ---------------------------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------------------------


def _is_dask_client(obj: Any) -> bool:
    return (
        type(obj).__module__.split(".")[0] == "distributed"
        and hasattr(obj, "submit")
        and hasattr(obj, "scatter")
    )


def _execute(
    executor: Any,
    workers: int | None,
    base: dict[str, Any],
    tasks: list[tuple[int, int, int, dict[str, Any]]],
) -> Iterator[tuple[int, int, dict[str, Any] | str]]:
    """Yield each task's result as it finishes, on the chosen executor."""
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise ScenarioError(f"workers: a whole number of processes >= 1 (got {workers!r})")
    if workers is not None and executor not in (None, "processes"):
        raise ScenarioError(
            "workers: sets the size of the default process pool; with another "
            "executor, size that executor instead"
        )
    if not tasks:
        return
    if executor == "inprocess":
        for task in tasks:
            yield _run_point(base, task)
        return
    if executor is None or executor == "processes":
        n = min(workers or os.cpu_count() or 1, len(tasks))
        with ProcessPoolExecutor(max_workers=n) as pool:
            yield from _from_executor(pool, base, tasks)
        return
    if isinstance(executor, Executor):
        yield from _from_executor(executor, base, tasks)
        return
    if _is_dask_client(executor):
        from distributed import as_completed as dask_completed

        shared = executor.scatter(base, broadcast=True)
        futures = [executor.submit(_run_point, shared, task, pure=False) for task in tasks]
        try:
            for fut in dask_completed(futures):
                yield fut.result()
        finally:
            executor.cancel([f for f in futures if not f.done()])
        return
    raise ScenarioError(
        f"executor: {executor!r} is not one of {', '.join(EXECUTORS)}, a "
        "concurrent.futures.Executor or a dask.distributed Client"
    )


def _from_executor(
    pool: Executor, base: dict[str, Any], tasks: list[Any]
) -> Iterator[tuple[int, int, dict[str, Any] | str]]:
    futures = [pool.submit(_run_point, base, task) for task in tasks]
    try:
        for fut in as_completed(futures):
            yield fut.result()
    finally:
        for fut in futures:
            fut.cancel()


# ---------------------------------------------------------------------------------------------
# Rows as text: one formatting for memory, point files and the combined table
# ---------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    """A cell's text: floats by repr (they read back exactly), None as empty, collections as
    JSON."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(_plain(value), sort_keys=True)
    return str(value)


def _record(
    params: Mapping[str, Any], point: int, replication: int, seed: int, result: dict[str, Any] | str
) -> dict[str, str]:
    row = {
        **{p: _cell(v) for p, v in params.items()},
        "point": str(point),
        "replication": str(replication),
        "seed": str(seed),
        "error": result if isinstance(result, str) else "",
    }
    if not isinstance(result, str):
        for key, value in result.items():
            if key not in row:
                row[key] = _cell(value)
    return row


def _csv_text(rows: Sequence[Mapping[str, str]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


#: pandas before 3 parses floats fast but not always exactly unless asked; 3 is exact already
#: (and deprecates the argument).
_EXACT = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


def _frame(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), **_EXACT)  # type: ignore[arg-type]


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a reader (or a resumed sweep)
    sees the whole file or none of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class _Store:
    """The output folder: manifest.json, points/pNNNNN-rR.csv, sweep.csv."""

    def __init__(self, out: str | Path, manifest: dict[str, Any], resume: bool, fmt: str):
        self.out = Path(out)
        self.fmt = fmt
        self.points = self.out / POINTS
        if self.out.exists() and not self.out.is_dir():
            raise ScenarioError(f"out: {self.out} is a file, not a folder")
        old = self.out / MANIFEST
        nonempty = self.out.exists() and any(self.out.iterdir())
        if nonempty and not resume:
            raise ScenarioError(
                f"out: {self.out} already holds files; pass resume=True "
                "(--resume) to finish the sweep there, or choose another folder"
            )
        if nonempty:
            if not old.is_file():
                raise ScenarioError(
                    f"out: {self.out} holds files but no {MANIFEST}: not a "
                    "sweep folder; choose another folder"
                )
            try:
                before = json.loads(old.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise ScenarioError(f"out: {old} is not readable JSON") from None
            for key in ("scenario_hash", "design", "parameters", "points", "format"):
                if before.get(key) != manifest[key]:
                    raise ScenarioError(
                        f"out: cannot resume: {self.out} holds a sweep with another {key} "
                        f"({_short(before.get(key))} there, {_short(manifest[key])} now); "
                        "choose another folder"
                    )
        self.points.mkdir(parents=True, exist_ok=True)
        for stale in self.points.glob(".*.tmp"):  # an interrupted write of ours
            stale.unlink()
        if not nonempty:
            _write_atomic(old, (json.dumps(manifest, indent=1) + "\n").encode())

    def path(self, point: int, replication: int) -> Path:
        return self.points / f"p{point:05d}-r{replication}.{self.fmt}"

    def read(self, point: int, replication: int) -> dict[str, str] | None:
        path = self.path(point, replication)
        if not path.is_file():
            return None
        if self.fmt == "parquet":
            row = pd.read_parquet(path).iloc[0]
            return {str(k): str(v) for k, v in row.items()}
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return rows[0] if len(rows) == 1 else None

    def write(self, point: int, replication: int, row: dict[str, str]) -> None:
        path = self.path(point, replication)
        if self.fmt == "parquet":
            buf = io.BytesIO()
            pd.DataFrame([row], dtype=str).to_parquet(buf, index=False)
            _write_atomic(path, buf.getvalue())
        else:
            _write_atomic(path, _csv_text([row]).encode())

    def write_table(self, text: str, df: pd.DataFrame) -> Path:
        path = self.out / f"{TABLE}.{self.fmt}"
        if self.fmt == "parquet":
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            _write_atomic(path, buf.getvalue())
        else:
            _write_atomic(path, text.encode())
        return path


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------


def _base(scenario: Any, overrides: Mapping[str, Any] | None) -> tuple[dict[str, Any], Any]:
    """The base scenario as a mapping (the file's own text when there is one, so that paths
    mean what they mean to `run --set`), and validated."""
    from .spec.loader import scenario_data, validate

    data = scenario_data(scenario, overrides)
    return data, validate(data)


def sweep(
    scenario: Any,
    grid: Mapping[str, Sequence[Any]] | None = None,
    *,
    ranges: Mapping[str, Sequence[float]] | None = None,
    samples: int | None = None,
    design: str = "lhs",
    seeds: int = 1,
    overrides: Mapping[str, Any] | None = None,
    executor: Any = None,
    workers: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    format: str = "csv",
) -> pd.DataFrame:
    """Run `scenario` at every point of a design, `seeds` times each; one row per run.

    Points: the full factorial of `grid` ({path: [values]}, first path slowest), crossed with
    `samples` points drawn over `ranges` ({path: (lo, hi)}) by `design`: "lhs" (a Latin
    hypercube, McKay et al. 1979) or "random" (uniform). A sampled field whose current value
    is an integer (or, for a field the scenario lacks, whose bounds are both integers) is
    rounded to the nearest integer. Paths index lists by position, as `run --set` does;
    `overrides` are fixed overrides applied first. The design's draws come from the scenario
    `seed`; each run's seed from `point_seed` (the scenario seed, the point's values and the
    replication), so results do not depend on the executor, the workers or the order.

    `executor`: None or "processes" (a process pool, `workers` processes, default one per
    core), "inprocess", any `concurrent.futures.Executor`, or a `dask.distributed.Client`.

    The table: one column per parameter (named by its path), `point`, `replication`, `seed`,
    `error` (empty, or the error text of a run that failed: the sweep goes on), then the
    run's summary flattened to dotted keys (`ledger_gpu_h.training`,
    `inference.chat.ttft_s.p99`, `training.pretrain-70b.mfu`); lists in the summary become one
    column per item (`key.0`, ...). Sorted by point and replication; identical for the same
    inputs whatever the executor.

    `out`: a folder to write `manifest.json`, one file per finished run under `points/` (each
    written atomically as it finishes) and the whole table as `sweep.csv` (`format="parquet"`:
    Parquet files, which needs pyarrow). A folder that holds files is refused unless `resume`,
    which runs only the missing points of the same sweep (same base scenario and design).
    `progress`: a tqdm bar with ETA on stderr.
    """
    from .spec.loader import content_hash
    from .version import __version__

    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ScenarioError(
            f"seeds: the number of replications, a whole number >= 1 (got {seeds!r})"
        )
    if format not in FORMATS:
        raise ScenarioError(f"format: {format!r} is not one of {', '.join(FORMATS)}")
    if format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ScenarioError(
                "format: parquet needs pyarrow (pip install pyarrow); or use csv"
            ) from None
    if resume and out is None:
        raise ScenarioError("resume: needs out, the folder of the sweep to finish")
    raw, base = _base(scenario, overrides)
    full = base.model_dump(mode="python")
    paths, points = _design(raw, full, base.seed, grid, ranges, samples, design)
    seeds_of = [[point_seed(base.seed, params, r) for r in range(seeds)] for params in points]
    store = None
    if out is not None:
        manifest = {
            "tool": "aifactory_sim.sweep",
            "version": __version__,
            "scenario": base.name,
            "scenario_hash": content_hash(base),
            "base_seed": base.seed,
            "design": json.loads(
                json.dumps(
                    {
                        "grid": {p: _plain(list(v)) for p, v in (grid or {}).items()},
                        "ranges": {p: _plain(list(v)) for p, v in (ranges or {}).items()},
                        "samples": samples,
                        "design": design if ranges else None,
                        "replications": seeds,
                        "overrides": _plain(dict(overrides or {})),
                    }
                )
            ),
            "parameters": paths,
            "format": format,
            "points": json.loads(
                json.dumps(
                    [
                        {
                            "point": i,
                            "id": _point_key(params)[:12],
                            "params": params,
                            "seeds": seeds_of[i],
                        }
                        for i, params in enumerate(points)
                    ]
                )
            ),
        }
        store = _Store(out, manifest, resume, format)

    rows: dict[tuple[int, int], dict[str, str]] = {}
    tasks = []
    for i, params in enumerate(points):
        for r in range(seeds):
            found = store.read(i, r) if store else None
            if found is not None:
                rows[i, r] = found
            else:
                tasks.append((i, r, seeds_of[i][r], params))

    from tqdm.auto import tqdm

    from .engine import factory  # noqa: F401  (a forked worker inherits it instead of importing)

    total = len(points) * seeds
    with tqdm(
        total=total,
        initial=total - len(tasks),
        disable=not progress,
        file=sys.stderr,
        desc=f"sweep {base.name}",
        unit="run",
        dynamic_ncols=True,
    ) as bar:
        failed = 0
        for i, r, result in _execute(executor, workers, raw, tasks):
            row = _record(points[i], i, r, seeds_of[i][r], result)
            if store:
                store.write(i, r, row)
            rows[i, r] = row
            failed += isinstance(result, str)
            if failed:
                bar.set_postfix(failed=failed, refresh=False)
            bar.update()

    ordered = [rows[key] for key in sorted(rows)]
    # Parameters first, in the design's order, whatever the first row held.
    head = {c: "" for c in [*paths, *FIXED_COLUMNS]}
    text = _csv_text([{**head, **row} for row in ordered])
    df = _frame(text)
    if store:
        store.write_table(text, df)
    return df


# ---------------------------------------------------------------------------------------------
# Analysis of a sweep table
# ---------------------------------------------------------------------------------------------


def parameter_columns(df: pd.DataFrame) -> list[str]:
    """The parameter columns of a sweep table: those before `point`."""
    if "point" not in df.columns:
        raise ScenarioError("not a sweep table: it has no 'point' column")
    return list(df.columns[: list(df.columns).index("point")])


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The numeric metric columns of a sweep table (booleans and all-empty columns left out)."""
    start = list(df.columns).index("error") + 1 if "error" in df.columns else 0
    return [
        c
        for c in df.columns[start:]
        if pd.api.types.is_numeric_dtype(df[c])
        and not pd.api.types.is_bool_dtype(df[c])
        and df[c].notna().any()
    ]


def summarize(
    df: pd.DataFrame,
    metrics: str | Sequence[str] | None = None,
    by: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Mean and 95 % confidence interval of each metric over the replications of each point.

    One row per group (`by`: default the parameter columns) and metric, with `n` (the runs
    with a value), `mean`, `std` (sample standard deviation, n - 1 in the denominator) and
    `ci95_lo`, `ci95_hi` = mean -/+ t(0.975, n - 1) * std / sqrt(n), Student's t interval
    for the mean of n independent replications (Student 1908; Law, Simulation Modeling and
    Analysis, 5th ed., sec. 4.5). NaN bounds when n < 2. Failed runs have no values and are
    not counted.
    """
    from scipy import stats

    chosen = (
        metric_columns(df)
        if metrics is None
        else [metrics]
        if isinstance(metrics, str)
        else list(metrics)
    )
    missing = [m for m in chosen if m not in df.columns]
    if missing:
        raise ScenarioError(f"metrics: no column {missing[0]!r} in the sweep table")
    keys = parameter_columns(df) if by is None else [by] if isinstance(by, str) else list(by)
    frames = []
    for metric in chosen:
        values = pd.to_numeric(df[metric], errors="coerce")
        grouped = (
            values.groupby([df[k] for k in keys], dropna=False, sort=False)
            if keys
            else values.groupby(np.zeros(len(df), dtype=int))
        )
        part = grouped.agg(["count", "mean", "std"]).reset_index(drop=not keys)
        part = part.rename(columns={"count": "n"})
        n = part["n"].to_numpy(dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(n >= 2, stats.t.ppf(0.975, np.maximum(n - 1, 1)), np.nan)
            half = t * part["std"].to_numpy(dtype=float) / np.sqrt(n)
        part.insert(len(keys), "metric", metric)
        part["ci95_lo"] = part["mean"] - half
        part["ci95_hi"] = part["mean"] + half
        frames.append(part)
    columns = [*keys, "metric", "n", "mean", "std", "ci95_lo", "ci95_hi"]
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)[columns]
    out["n"] = out["n"].astype(int)
    return out


def pareto_front(
    df: pd.DataFrame,
    x: str,
    y: str,
    minimize: tuple[bool, bool] = (True, True),
) -> pd.Series:
    """A boolean mask of the rows on the Pareto front of (x, y): those no other row dominates
    (at least as good in both, better in one). Rows with a missing x or y are never on it;
    rows equal in both are both on it. `minimize` says, per metric, whether lower is better.
    """
    for name in (x, y):
        if name not in df.columns:
            raise ScenarioError(f"no column {name!r} in the table")
    a = pd.to_numeric(df[x], errors="coerce").to_numpy(dtype=float)
    b = pd.to_numeric(df[y], errors="coerce").to_numpy(dtype=float)
    a = a if minimize[0] else -a
    b = b if minimize[1] else -b
    ok = np.flatnonzero(np.isfinite(a) & np.isfinite(b))
    mask = np.zeros(len(df), dtype=bool)
    order = ok[np.lexsort((b[ok], a[ok]))]  # by x, then y
    best = math.inf  # the lowest y of all rows with a strictly lower x
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and a[order[j]] == a[order[i]]:
            j += 1
        low = b[order[i]]  # the group's lowest y (sorted by y within equal x)
        if low < best:
            for k in order[i:j]:
                mask[k] = b[k] == low
            best = low
        i = j
    return pd.Series(mask, index=df.index, name="pareto")
