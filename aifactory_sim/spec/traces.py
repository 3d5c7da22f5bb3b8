"""Request traces: a CSV of requests read once, when the scenario is loaded.

The engine never opens a file: `TraceTraffic.requests()` hands it what `read_trace` read
during the scenario's validation (spec.scenario.Scenario checks each trace service), kept on
the spec object for as long as the fields that shape it (path, layout, speedup,
shift_to_zero) stay the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import ScenarioError

#: Column layouts a trace may use; `auto` picks by the header row.
TRACE_LAYOUTS = {
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "plain": ("arrival_s", "prompt_tokens", "output_tokens"),
    # JSON lines (Mooncake's public traces, FAST'25): times in ms, each row's block hashes
    "mooncake": ("timestamp", "input_length", "output_length"),
}
#: The column of block hashes a trace may carry: a row's prompt as a chain of fixed-size
#: blocks, each named by a hash of itself and every block before it (equal ids, equal prefix).
HASH_COLUMN = "hash_ids"


class TraceFields(Protocol):
    """The fields of spec.serving.TraceTraffic that shape what a trace file holds."""

    @property
    def path(self) -> str: ...
    @property
    def layout(self) -> str: ...
    @property
    def speedup(self) -> float: ...
    @property
    def shift_to_zero(self) -> bool: ...


def shape_key(traffic: TraceFields) -> tuple[str, str, float, bool]:
    """What a read of the trace depends on: a cached read is reused only while it matches."""
    return (traffic.path, traffic.layout, traffic.speedup, traffic.shift_to_zero)


@dataclass(frozen=True)
class Requests:
    """A workload drawn for one service, sorted by arrival. Token arrays are int64."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray | None
    output_tokens: np.ndarray | None
    #: each request's prompt block hashes (HASH_COLUMN), where the trace has them
    hash_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return int(self.arrival_s.size)


def read_trace(traffic: TraceFields) -> Requests:
    """The trace's requests, sorted by arrival (stable: ties keep file order), with `speedup`
    and `shift_to_zero` applied but not `loop` or a horizon. Token arrays are None when the
    file has no such column. Problems with the file raise ScenarioError naming it."""
    import pandas as pd

    path = Path(traffic.path)
    where = "traffic.path"
    if not path.is_file():
        raise ScenarioError(f"no such trace file: {path}", path=where)
    jsonl = traffic.layout == "mooncake" or (
        traffic.layout == "auto" and path.suffix.lower() in (".jsonl", ".json")
    )
    try:
        frame = (
            pd.read_json(path, lines=True, dtype=False)
            if jsonl
            else pd.read_csv(path, skipinitialspace=True)
        )
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        kind = "JSON lines" if jsonl else "CSV"
        raise ScenarioError(f"cannot read {path} as {kind}: {exc}", path=where) from None
    if frame.empty:
        raise ScenarioError(f"{path} holds no requests (a header row and no data)", path=where)
    by_lower = {str(c).strip().lower(): c for c in frame.columns}
    layout: str = traffic.layout
    if layout == "auto" and jsonl:  # JSON lines: Mooncake's layout (its TIMESTAMP is in ms)
        layout = "mooncake"
    if layout == "auto":
        found = [name for name, cols in TRACE_LAYOUTS.items() if cols[0].lower() in by_lower]
        if not found:
            raise ScenarioError(
                f"{path} has columns {list(frame.columns)}; a trace needs TIMESTAMP "
                "(+ ContextTokens, GeneratedTokens: the Azure layout) or arrival_s "
                "(+ prompt_tokens, output_tokens)",
                path=where,
            )
        layout = found[0]
    time_col, prompt_col, output_col = (by_lower.get(c.lower()) for c in TRACE_LAYOUTS[layout])
    if time_col is None:
        raise ScenarioError(
            f"{path} has no {TRACE_LAYOUTS[layout][0]} column ({layout} layout); "
            f"its columns: {list(frame.columns)}",
            path=where,
        )
    times = _trace_seconds(frame[time_col], traffic.shift_to_zero, path)
    if layout == "mooncake":
        times = times / 1000.0  # Mooncake's timestamps are milliseconds
    order = np.argsort(times, kind="stable")
    times = times[order]
    if traffic.shift_to_zero and times.size:
        times = times - times[0]
    tokens = [
        None if col is None else _trace_tokens(frame[col], str(col), path)[order]
        for col in (prompt_col, output_col)
    ]
    hashes = by_lower.get(HASH_COLUMN)
    chains = None if hashes is None else _trace_hashes(frame[hashes], path)
    if chains is not None:
        chains = [chains[i] for i in order.tolist()]
    return Requests(times / traffic.speedup, tokens[0], tokens[1], chains)


def _trace_hashes(column: object, path: Path) -> list[list[int]]:
    """Each row's block hashes: a JSON list (JSON lines) or the ids in a CSV cell, separated by
    spaces, commas or semicolons (brackets allowed)."""
    import pandas as pd

    out: list[list[int]] = []
    for row, cell in enumerate(pd.Series(column).tolist()):
        try:
            if isinstance(cell, list):
                ids = [int(x) for x in cell]
            elif cell is None or (isinstance(cell, float) and cell != cell):
                ids = []
            else:
                text = str(cell).strip().strip("[]")
                ids = [int(x) for x in text.replace(",", " ").replace(";", " ").split()]
        except (TypeError, ValueError):
            raise ScenarioError(
                f"{path}: column {HASH_COLUMN} must hold block ids (integers); data row "
                f"{row + 1} has {cell!r}",
                path="traffic.path",
            ) from None
        out.append(ids)
    return out


def _trace_seconds(column: object, shift_to_zero: bool, path: Path) -> np.ndarray:
    import pandas as pd

    series = pd.Series(column)
    numeric = pd.to_numeric(series, errors="coerce")
    if series.size and not numeric.isna().any():
        return numeric.to_numpy(dtype=float)
    try:
        stamps = pd.to_datetime(series.astype(str).str.strip(), format="ISO8601", utc=True)
    except (ValueError, TypeError) as exc:
        raise ScenarioError(
            f"{path}: column {series.name} holds neither seconds nor datetimes: {exc}",
            path="traffic.path",
        ) from None
    if stamps.isna().any():
        row = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise ScenarioError(
            f"{path}: column {series.name} is empty in data row {row + 1}", path="traffic.path"
        )
    origin = stamps.min() if shift_to_zero else stamps.min().normalize()
    return (stamps - origin).dt.total_seconds().to_numpy(dtype=float)


def _trace_tokens(column: object, name: str, path: Path) -> np.ndarray:
    import pandas as pd

    values = pd.to_numeric(pd.Series(column), errors="coerce")
    bad = values.isna() | (values != np.floor(values))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ScenarioError(
            f"{path}: column {name} must hold whole token counts; data row {row + 1} "
            f"has {pd.Series(column).iloc[row]!r}",
            path="traffic.path",
        )
    # A request of 0 tokens still costs a scheduling step; the simulator counts at least one.
    return np.maximum(values.to_numpy(dtype=np.int64), 1)
