"""The facility's hourly timelines: the outdoor temperature, the PUE it sets and the grid's
carbon intensity (scenario `facility`; docs/background/facility.md). energy.py cuts the power
timeline at their hours and takes the PUE from here; facility.py builds the site on them."""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from .catalog import entry, table_notes
from .spec.facility import ProfileCarbon, ProfileWeather

if TYPE_CHECKING:
    from .spec.facility import Facility

#: A non-leap year for the profiles' calendar (a typical year has 365 days).
_YEAR = 2025

HOUR_S = 3600.0


def hour_edges(duration_s: float) -> np.ndarray:
    """0, 3600, ... up to (not including) the run's end."""
    return np.arange(0.0, duration_s, HOUR_S)


def _profile_temperature(location: str, t: np.ndarray) -> np.ndarray:
    """A bundled typical-day-per-month profile (catalog/climate.yaml) at times t (s from the
    run's start, which is 00:00 local on the 1st of the profile's start_month): the month's
    normal daily maximum less the ASHRAE fraction of its daily range for the hour. The profile's
    months follow each other from start_month; a run past the last starts them again."""
    prof = entry("climate", location)
    frac = np.asarray(table_notes("climate")["diurnal_fraction"], dtype=float)
    months = {int(k): v for k, v in prof["months"].items()}
    start = int(prof.get("start_month", min(months)))
    tmax: list[float] = []
    tmin: list[float] = []
    m = start
    while m in months and len(tmax) < 366:  # consecutive months from the start, day by day
        first = date(_YEAR, m, 1)
        days = ((first.replace(day=28) + timedelta(days=4)).replace(day=1) - first).days
        tmax += [float(months[m][0])] * days
        tmin += [float(months[m][1])] * days
        m = m % 12 + 1
        if m == start:
            break
    day = np.floor(t / 86400.0).astype(np.int64) % len(tmax)
    hour = np.floor((t % 86400.0) / HOUR_S).astype(np.int64)
    hi, lo = np.asarray(tmax)[day], np.asarray(tmin)[day]
    return hi - frac[hour] * (hi - lo)


def _series_at(times: list[float], values: list[float], t: np.ndarray) -> np.ndarray:
    """A CSV series (each value holds from its time on; the first also before it) at t."""
    idx = np.searchsorted(np.asarray(times), t, side="right") - 1
    return np.asarray(values)[np.clip(idx, 0, len(values) - 1)]


def _timeline(spec: Any, constant: str, t: np.ndarray) -> np.ndarray:
    """A constant's or a CSV's series at times t."""
    if spec.kind == "constant":
        return np.full(t.size, float(getattr(spec, constant)))
    times, values = spec.series()
    return _series_at(times, values, t)


def temperature_c(f: Facility, t: np.ndarray) -> np.ndarray | None:
    """Outdoor dry-bulb temperature (C) at times t (s), hourly; None without weather."""
    w = f.weather
    if w is None:
        return None
    if isinstance(w, ProfileWeather):
        return _profile_temperature(w.location, t)
    return _timeline(w, "temp_c", t)


def pue_at(f: Facility | None, default_pue: float, t: np.ndarray) -> np.ndarray:
    """PUE at times t: the economizer model on the temperature, a constant, or power.pue.

    Economizer: PUE = base + k max(0, T - T0). Free cooling holds the PUE near its base below
    the economizer's limit and mechanical cooling's share grows with the outdoor temperature
    above it: the linear-above-a-threshold shape of the climate dependence in Lei & Masanet,
    "Statistical analysis for predicting location-specific data center PUE and its
    improvement potential", Energy 201 (2020) 117556; the coefficients are the scenario's."""
    m = None if f is None else f.pue_model
    if m is None:
        return np.full(t.size, float(default_pue))
    if m.kind == "constant":
        return np.full(t.size, float(m.pue))
    temp = temperature_c(f, t)  # type: ignore[arg-type]
    assert temp is not None  # the spec requires weather for an economizer
    return m.base_pue + m.per_degree_above_c * np.maximum(temp - m.threshold_c, 0.0)


def carbon_at(f: Facility | None, t: np.ndarray) -> np.ndarray | None:
    """Grid carbon intensity (g CO2e / kWh) at times t, hourly; None without a carbon timeline.
    A bundled profile (catalog/carbon.yaml) gives a mean per hour of the day (local time)."""
    c = None if f is None else f.carbon
    if c is None:
        return None
    if not isinstance(c, ProfileCarbon):
        return _timeline(c, "g_per_kwh", t)
    hourly = np.asarray(entry("carbon", c.region)["hourly_g_per_kwh"], dtype=float)
    return hourly[np.floor((t % 86400.0) / HOUR_S).astype(np.int64) % 24]


def cuts(f: Facility | None, duration_s: float) -> np.ndarray:
    """Times at which the facility's timelines may change (the hours), or none."""
    if f is None or (f.weather is None and f.pue_model is None and f.carbon is None):
        return np.zeros(0)
    return hour_edges(duration_s)
