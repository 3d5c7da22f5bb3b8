"""Hardware and model data: GPUs, scale-out networks, transformer models, calibration.

Data lives in YAML files beside this module, one entry per name, each with a `source`. The
functions return plain dicts (copies), so callers cannot alter the catalog.
"""

from __future__ import annotations

import copy
import difflib
from functools import cache
from importlib import resources
from typing import Any

import yaml

_FILES = {
    "gpu": "gpus.yaml",
    "network": "networks.yaml",
    "model": "models.yaml",
    "calibration": "calibration.yaml",
    "reliability": "reliability.yaml",
    "climate": "climate.yaml",
    "carbon": "carbon.yaml",
}


#: Tables whose entries sit under a top-level `profiles` key (beside the file's method notes).
_PROFILES = ("climate", "carbon")


@cache
def _table(kind: str) -> dict[str, dict[str, Any]]:
    text = resources.files(__package__).joinpath(_FILES[kind]).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    return data["profiles"] if kind in _PROFILES else data


@cache
def table_notes(kind: str) -> dict[str, Any]:
    """A profile table's keys beside its profiles (its method, shared shapes)."""
    text = resources.files(__package__).joinpath(_FILES[kind]).read_text(encoding="utf-8")
    return {k: v for k, v in yaml.safe_load(text).items() if k != "profiles"}


def names(kind: str) -> list[str]:
    """Entry names of one catalog table: 'gpu', 'network', 'model' or 'calibration'."""
    return list(_table(kind))


def entry(kind: str, name: str) -> dict[str, Any]:
    """A copy of one catalog entry; KeyError with the allowed names (and a close match)."""
    table = _table(kind)
    if name in table:
        return copy.deepcopy(table[name])
    lowered = {k.lower(): k for k in table}
    if name.lower() in lowered:
        return copy.deepcopy(table[lowered[name.lower()]])
    close = difflib.get_close_matches(name, list(table), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise KeyError(f"unknown {kind} {name!r}{hint}; the catalog has: {', '.join(table)}")


def canonical_name(kind: str, name: str) -> str:
    """The catalog's own spelling of a name matched case-insensitively."""
    table = _table(kind)
    if name in table:
        return name
    lowered = {k.lower(): k for k in table}
    if name.lower() in lowered:
        return lowered[name.lower()]
    entry(kind, name)  # raises with the list of names
    raise AssertionError("unreachable")


def table(kind: str) -> dict[str, dict[str, Any]]:
    """A copy of a whole catalog table."""
    return copy.deepcopy(_table(kind))
