"""Parsing of quantities written with units in scenario files.

Durations accept seconds as numbers or strings such as ``"90s"``, ``"30min"``, ``"6h"``,
``"54d"``, ``"1w"``; counts accept ``16M``, ``2.0e12``, ``1.5B``, ``64k``; bandwidths accept
``"400Gb/s"`` (bits) or ``"25GB/s"`` (bytes). SI prefixes are powers of ten (tera is 10**12).
"""

from __future__ import annotations

import itertools
import math
import re

_DURATION_S = {
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
    "w": 604800.0,
    "wk": 604800.0,
}
_COUNT_SCALE = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
_BINARY_SCALE = {
    "": 1.0,
    "k": 2.0**10,
    "K": 2.0**10,
    "M": 2.0**20,
    "B": 2.0**30,
    "G": 2.0**30,
    "T": 2.0**40,
}
_NUMBER = r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
_DURATION_RE = re.compile(rf"^\s*{_NUMBER}\s*([a-zA-Z]*)\s*$")
#: One part of a compound duration such as '6d14h' or '1h30min': a number and its unit.
_PART_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)")
_COUNT_RE = re.compile(rf"^\s*{_NUMBER}\s*([kKMBGT]?)\s*$")
_RATE_RE = re.compile(rf"^\s*{_NUMBER}\s*([kMGT]?)([bB])(?:/s|ps)\s*$")


def _finite(x: float, what: str) -> float:
    if not math.isfinite(x):
        raise ValueError(f"{what} must be a finite number, got {x!r}")
    return x


def parse_duration_s(value: object) -> float:
    """Seconds from a number (already seconds) or a string with a unit (s, min, h, d, w)."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '30min'")
    if isinstance(value, int | float):
        return _finite(float(value), "duration")
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            number, unit = m.groups()
            scale = _DURATION_S.get(unit or "s")
            if scale is not None:
                return _finite(float(number) * scale, "duration")
        parts = _PART_RE.findall(value)
        whole = "".join(f"{n}{u}" for n, u in parts) == "".join(value.split())
        scales = [_DURATION_S.get(u, 0.0) for _, u in parts]
        falling = all(a > b for a, b in itertools.pairwise(scales))
        if len(parts) > 1 and whole and all(scales) and falling:
            # a compound, '6d14h', its units from the largest down
            total = sum(float(n) * sc for (n, _), sc in zip(parts, scales, strict=True))
            return _finite(total, "duration")
    raise ValueError(
        f"cannot read {value!r} as a duration; write seconds (3600) or a number with one of "
        "the units ms, s, min, h, d, w ('90s', '30min', '6h', '54d'), or such parts from the "
        "largest ('6d14h', '1h30min')"
    )


def parse_count(value: object) -> float:
    """A count such as tokens: a number, '16M', '2.0e12', '1.5B', '64k' (powers of ten)."""
    if isinstance(value, bool):
        raise ValueError("a count must be a number or a string like '16M'")
    if isinstance(value, int | float):
        return _finite(float(value), "count")
    if isinstance(value, str):
        m = _COUNT_RE.match(value)
        if m:
            number, suffix = m.groups()
            return _finite(float(number) * _COUNT_SCALE[suffix], "count")
    raise ValueError(
        f"cannot read {value!r} as a count; write a number (2.0e12) or one with a suffix "
        "k, M, B/G or T ('16M', '1.5B')"
    )


def parse_gbit_s(value: object) -> float:
    """Network rate in Gb/s from a number (already Gb/s) or '400Gb/s', '50GB/s' (bytes x 8)."""
    if isinstance(value, bool):
        raise ValueError("a rate must be a number of Gb/s or a string like '400Gb/s'")
    if isinstance(value, int | float):
        return _finite(float(value), "rate")
    if isinstance(value, str):
        m = _RATE_RE.match(value)
        if m:
            number, prefix, bit_or_byte = m.groups()
            scale = {"": 1e-9, "k": 1e-6, "M": 1e-3, "G": 1.0, "T": 1e3}[prefix]
            return _finite(float(number) * scale * (8.0 if bit_or_byte == "B" else 1.0), "rate")
    raise ValueError(
        f"cannot read {value!r} as a rate; write Gb/s as a number (400) or a number with one of "
        "the units b/s, kb/s, Mb/s, Gb/s, Tb/s (bits) or B/s, kB/s, MB/s, GB/s, TB/s (bytes): "
        "'400Gb/s', '50GB/s'"
    )


def parse_batch_tokens(value: object) -> float:
    """Tokens per training step. Papers quote batch sizes with binary suffixes (Llama 3's "16M
    tokens" is 2048 x 8192 = 2**24), so here '16M' is 16 x 2**20; plain numbers are taken as
    written."""
    if isinstance(value, str):
        m = _COUNT_RE.match(value)
        if m and m.group(2):
            number, suffix = m.groups()
            return _finite(float(number) * _BINARY_SCALE[suffix], "count")
    return parse_count(value)
