"""Unit parsing: durations, counts and network rates as scenario files write them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aifactory_sim.units import parse_count, parse_duration_s, parse_gbit_s

# Finite floats whose products with the largest scale (a week, a tera) stay finite.
reasonable = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("30min", 1800.0),
        ("30m", 1800.0),
        ("6h", 6 * 3600.0),
        ("54d", 54 * 86400.0),
        ("1w", 7 * 86400.0),
        ("250ms", 0.25),
        (" 1.5 h ", 5400.0),
        ("2e3s", 2000.0),
        ("45", 45.0),  # a bare number in a string is seconds
        (3600, 3600.0),
        (0.5, 0.5),
    ],
)
def test_duration_values(text: object, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds, rel=1e-15)


@pytest.mark.parametrize("bad", ["3 fortnights", "6H", "h", "", "1.2.3s", "six hours", "nan"])
def test_bad_duration_names_allowed_units(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_duration_s(bad)
    msg = str(err.value)
    assert repr(bad) in msg
    for unit in ("s", "min", "h", "d", "w"):
        assert unit in msg
    assert "'30min'" in msg


@pytest.mark.parametrize("bad", [True, None, [1], float("inf"), float("nan")])
def test_duration_rejects_non_numbers(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration_s(bad)


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("16M", 16e6),
        ("2.0e12", 2.0e12),
        ("1.5B", 1.5e9),
        ("1.5G", 1.5e9),
        ("64k", 64e3),
        ("64K", 64e3),
        ("3T", 3e12),
        ("1000", 1000.0),
        (2048, 2048.0),
    ],
)
def test_count_values(text: object, count: float) -> None:
    # SI prefixes are powers of ten (units.py docstring): 16M is 16e6, not 16 x 2^20.
    assert parse_count(text) == pytest.approx(count, rel=1e-15)


@pytest.mark.parametrize("bad", ["16 mega", "16Mi", "M", "2e12 tokens", "16m"])
def test_bad_count_names_allowed_suffixes(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_count(bad)
    msg = str(err.value)
    assert repr(bad) in msg
    for suffix in ("k", "M", "B", "T"):
        assert suffix in msg


@pytest.mark.parametrize(
    ("text", "gbit_s"),
    [
        ("400Gb/s", 400.0),
        ("400Gbps", 400.0),
        ("50GB/s", 400.0),  # bytes: x 8
        ("1.6Tb/s", 1600.0),
        ("800Mb/s", 0.8),
        ("25GB/s", 200.0),
        (200, 200.0),
    ],
)
def test_rate_values(text: object, gbit_s: float) -> None:
    assert parse_gbit_s(text) == pytest.approx(gbit_s, rel=1e-12)


@pytest.mark.parametrize("bad", ["fast", "400G", "400 Gib/s", "400gb/s", "50GB"])
def test_bad_rate_names_allowed_units(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_gbit_s(bad)
    msg = str(err.value)
    assert repr(bad) in msg
    assert "Gb/s" in msg
    assert "GB/s" in msg


@settings(max_examples=100, deadline=None)
@given(reasonable)
def test_hours_round_trip(x: float) -> None:
    # repr(x) reads back as exactly x, so the only rounding is the one multiplication.
    assert parse_duration_s(f"{x}h") == x * 3600.0


@settings(max_examples=100, deadline=None)
@given(reasonable, st.sampled_from([("s", 1.0), ("min", 60.0), ("d", 86400.0), ("w", 604800.0)]))
def test_duration_units_round_trip(x: float, unit: tuple[str, float]) -> None:
    name, scale = unit
    assert parse_duration_s(f"{x}{name}") == x * scale
    assert parse_duration_s(x) == x


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0, max_value=1e6, allow_nan=False), st.sampled_from("kMBT"))
def test_count_round_trip(x: float, suffix: str) -> None:
    scale = {"k": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[suffix]
    assert parse_count(f"{x}{suffix}") == x * scale


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_bytes_are_eight_bits(x: float) -> None:
    assert math.isclose(parse_gbit_s(f"{x}GB/s"), 8.0 * parse_gbit_s(f"{x}Gb/s"), rel_tol=1e-15)
    assert parse_gbit_s(f"{x}Gb/s") == x


def test_compound_durations_read_from_the_largest_unit_down():
    from aifactory_sim.units import parse_duration_s

    assert parse_duration_s("6d14h") == 6 * 86400 + 14 * 3600
    assert parse_duration_s("1h30min") == 5400
    assert parse_duration_s("1d 12h") == 129600
    for bad in ("14h6d", "6d14", "1h1h", "3x"):
        with pytest.raises(ValueError, match="largest"):
            parse_duration_s(bad)
