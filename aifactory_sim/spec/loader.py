"""Reading scenarios: YAML/JSON files or mappings, overrides by dotted path, clear errors.

Every problem becomes one `ScenarioError` whose message names the field path (`training.0.
parallel.tp`), the value given and what is allowed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ScenarioError
from .estate import Estate
from .scenario import Scenario


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ScenarioError(f"no such scenario file: {path}")
    if path.is_dir():
        raise ScenarioError(f"{path} is a folder; give a .yaml or .json scenario file")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        where = " ".join(str(exc).split())  # PyYAML's message spans lines: keep one
        raise ScenarioError(f"{path} is not valid YAML/JSON: {where}") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{path} is not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path} must hold a mapping of sections (name, cluster, ...)")
    return data


def parse_value(text: str) -> Any:
    """A command-line value: YAML scalars and flow collections ('64', '6h', '[1, 2]', 'true')."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `data` with the field at dotted `path` set; list items by index (`training.0`)."""
    out = copy.deepcopy(data)
    keys = path.split(".")
    node: Any = out
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        where = ".".join(keys[: i + 1])
        if isinstance(node, list):
            if not key.lstrip("-").isdigit():
                raise ScenarioError(f"{where}: a list is indexed by position, e.g. 0", path=path)
            idx = int(key)
            if not -len(node) <= idx < len(node):
                raise ScenarioError(
                    f"index {idx} is out of range: the list has {len(node)} items", path=where
                )
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                if node.get(key) is None:
                    node[key] = {}
                elif key in CATALOG_REFERENCES and isinstance(node[key], str):
                    node[key] = {"base": node[key]}  # override a field of a catalog entry
                node = node[key]
        else:
            parent = ".".join(keys[:i]) or "(top)"
            raise ScenarioError(f"{parent} is a value, not a section: cannot set {path}")
    return out


#: Fields that name a catalog entry; setting a field below one overrides that entry's field.
CATALOG_REFERENCES = ("model", "gpu")


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith("[") and "] " in msg:  # a located message from a model validator
            loc, msg = msg[1:].split("] ", 1)
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see `aifactory-sim validate --help`)"
        given = e.get("input")
        shown = ""
        if e["type"] not in ("extra_forbidden", "missing") and not isinstance(given, dict | list):
            shown = f" (got {given!r})"
        lines.append(f"{loc or '(scenario)'}: {msg}{shown}")
    return "; ".join(dict.fromkeys(lines))


def validate(data: dict[str, Any]) -> Scenario | Estate:
    """A Scenario from a mapping (an Estate where it has `sites`), or a ScenarioError that names
    each bad field."""
    try:
        if "sites" in data:
            if "cluster" in data:
                raise ScenarioError(
                    "give either cluster (one site) or sites (an estate), not both", path="sites"
                )
            return Estate.model_validate(data)
        return Scenario.model_validate(data)
    except ValidationError as err:
        raise ScenarioError(_format_error(err)) from None
    except KeyError as err:  # an unknown catalog name raised while resolving
        raise ScenarioError(str(err.args[0])) from None


def scenario_data(
    source: str | Path | Mapping[str, Any] | Scenario | Estate,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The scenario as a mapping, before validation: a YAML/JSON file's own content, a copy of
    a mapping, or a Scenario's fields; `overrides` ({"training.0.parallel.dp": 64}) applied."""
    if isinstance(source, Scenario | Estate):
        data = source.model_dump(mode="python", exclude_none=True)
    elif isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
    elif isinstance(source, str | os.PathLike):
        data = _read(Path(source))
    else:
        raise ScenarioError(
            f"scenario: a Scenario, a mapping or a file path (got {type(source).__name__})"
        )
    for path, value in (overrides or {}).items():
        data = set_path(data, path, value)
    return data


def load(
    source: str | Path | Mapping[str, Any] | Scenario | Estate,
    overrides: Mapping[str, Any] | None = None,
) -> Scenario | Estate:
    """Load a scenario from a YAML/JSON file, a mapping or a Scenario, applying `overrides`
    ({"training.0.parallel.dp": 64}) first."""
    return validate(scenario_data(source, overrides))


def content_hash(scenario: Scenario | Estate) -> str:
    """A stable short hash of a scenario's content (names output folders, keys sweeps)."""
    text = json.dumps(scenario.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
