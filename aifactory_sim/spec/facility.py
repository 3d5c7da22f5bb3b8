"""The facility around the cluster: weather and the PUE it sets, the grid's carbon intensity,
a battery between the grid and the site, and the grid connection's limits
(docs/background/facility.md; the model is aifactory_sim/facility.py)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, PrivateAttr, model_validator

from .base import NonNegativeDurationS, PositiveDurationS, Spec


def read_series(path: str, column: str) -> tuple[list[float], list[float]]:
    """(times s, values) of an hourly CSV: `column` per row, each row an hour from t = 0, or
    from its `time_s` when the file has that column (ascending). ValueError naming the row or
    the column that is wrong."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no such file: {path}")
    with p.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or column not in rows[0]:
        have = ", ".join(rows[0]) if rows else "no rows"
        raise ValueError(f"{path} needs a column {column!r} (it has: {have})")
    times: list[float] = []
    values: list[float] = []
    for i, row in enumerate(rows):
        try:
            v = float(row[column])
            t = float(row["time_s"]) if "time_s" in row else 3600.0 * i
        except (TypeError, ValueError):
            raise ValueError(f"{path}: row {i + 2} is not a number") from None
        if not (math.isfinite(v) and math.isfinite(t)) or (times and t <= times[-1]):
            raise ValueError(f"{path}: row {i + 2}: times must ascend and values be finite")
        times.append(t)
        values.append(v)
    return times, values


def _bundled(table: str, what: str, name: str) -> None:
    """ValueError unless `name` is a profile of catalog/`table`.yaml."""
    from ..catalog import names

    if name not in names(table):
        raise ValueError(f"unknown {what} {name!r}; allowed: {', '.join(names(table))}")


class ProfileWeather(Spec):
    """A bundled typical-day-per-month profile (catalog/climate.yaml)."""

    kind: Literal["profile"] = "profile"
    location: str = Field(description="a profile of catalog/climate.yaml, e.g. phoenix-summer")

    @model_validator(mode="after")
    def _known(self) -> ProfileWeather:
        _bundled("climate", "location", self.location)
        return self


class ConstantWeather(Spec):
    kind: Literal["constant"] = "constant"
    temp_c: float = Field(description="dry-bulb temperature, C, all run long")


class _HourlyCsv(Spec):
    """An hourly series from a CSV: a column of values (`column`), one row per hour from the
    run's start, or each from its `time_s` when the file has that column. Read at load time,
    so that a bad file is a load-time error."""

    column: ClassVar[str]
    path: str = Field(min_length=1, description="CSV file; relative paths from the run's cwd")
    _series: tuple[list[float], list[float]] = PrivateAttr()

    @model_validator(mode="after")
    def _read(self) -> _HourlyCsv:
        self._series = read_series(self.path, self.column)
        return self

    def series(self) -> tuple[list[float], list[float]]:
        return self._series


class CsvWeather(_HourlyCsv):
    """Hourly temperatures from a CSV: a column `temp_c`."""

    column: ClassVar[str] = "temp_c"
    kind: Literal["csv"] = "csv"


Weather = Annotated[ProfileWeather | ConstantWeather | CsvWeather, Field(discriminator="kind")]


class EconomizerPUE(Spec):
    """PUE = base_pue + per_degree_above_c x max(0, T - threshold_c): free cooling (an air- or
    water-side economizer) below the threshold, mechanical cooling's share growing with the
    outdoor temperature above it."""

    kind: Literal["economizer"] = "economizer"
    base_pue: float = Field(ge=1.0, description="PUE on free cooling, at or below threshold_c")
    per_degree_above_c: float = Field(ge=0, description="PUE added per degree C above it")
    threshold_c: float = Field(description="outdoor dry-bulb temperature where free cooling ends")


class ConstantPUE(Spec):
    kind: Literal["constant"] = "constant"
    pue: float = Field(ge=1.0)


PUEModel = Annotated[EconomizerPUE | ConstantPUE, Field(discriminator="kind")]


class Battery(Spec):
    """A battery between the grid and the site that serves swings and peaks."""

    capacity_mwh: float = Field(gt=0, description="usable energy, MWh")
    power_mw: float = Field(gt=0, description="most it charges or discharges, MW")
    round_trip_efficiency: float = Field(
        0.9, gt=0, le=1, description="energy out over energy in (split evenly between the ways)"
    )
    initial_soc: float = Field(0.5, ge=0, le=1, description="state of charge at the start")
    smoothing_s: float = Field(
        900.0,
        gt=0,
        description="time constant of the grid draw it aims for (the site's power, low-pass "
        "filtered): swings faster than this come from the battery",
    )


class Smoothing(Spec):
    """Mitigations of a training job's step-by-step swings."""

    gpu_power_floor_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="a floor on a training GPU's power while its step waits (communication, "
        "bubble), as a share of TDP: a smaller swing for the energy it burns (the jobs with "
        "power_trace)",
    )


class ProfileCarbon(Spec):
    kind: Literal["profile"] = "profile"
    region: str = Field(description="a profile of catalog/carbon.yaml, e.g. us-southwest")

    @model_validator(mode="after")
    def _known(self) -> ProfileCarbon:
        _bundled("carbon", "region", self.region)
        return self


class ConstantCarbon(Spec):
    kind: Literal["constant"] = "constant"
    g_per_kwh: float = Field(ge=0, description="grams CO2e per kWh drawn from the grid")


class CsvCarbon(_HourlyCsv):
    """Hourly intensities from a CSV: a column `g_per_kwh`."""

    column: ClassVar[str] = "g_per_kwh"
    kind: Literal["csv"] = "csv"


Carbon = Annotated[ProfileCarbon | ConstantCarbon | CsvCarbon, Field(discriminator="kind")]


Workload = Literal["training", "inference"]
WORKLOADS: tuple[Workload, ...] = ("training", "inference")


class DemandResponse(Spec):
    """A grid operator's call: from `at`, for `duration`, draw `reduce_mw` less."""

    at: NonNegativeDurationS = Field(description="when the event starts, from the run's start")
    duration: PositiveDurationS
    reduce_mw: float = Field(gt=0, description="MW less than the site draws when it starts")
    priority_order: list[Workload] = Field(
        default_factory=lambda: list(WORKLOADS),
        min_length=1,
        description="what gives power first: training (its GPUs power-capped, lowest job "
        "priority first, down to idle power) and inference (replicas drained, lowest service "
        "priority first, one kept per service)",
    )
    training_action: Literal["cap", "pause"] = Field(
        "cap",
        description="how training gives power: cap (its GPUs held at a power cap, down to "
        "idle) or pause (it checkpoints, gives its nodes back and waits out the event; no "
        "training starts meanwhile)",
    )
    tolerance_mw: float | None = Field(
        None, ge=0, description="how far short still counts as met; default 5 % of reduce_mw"
    )


class Facility(Spec):
    """The site: its weather-driven PUE, its grid connection, a battery, the grid's carbon."""

    weather: Weather | None = Field(None, description="hourly outdoor temperature")
    pue_model: PUEModel | None = Field(
        None, description="PUE from the temperature; default: power.pue at every hour"
    )
    grid_limit_mw: float | None = Field(
        None,
        gt=0,
        description="contracted grid power, MW: GPUs are capped so that the site at full "
        "load in the hottest hour stays under it",
    )
    ramp_limit_mw_per_s: float | None = Field(
        None, gt=0, description="the utility's limit on how fast the draw may change, MW/s"
    )
    battery: Battery | None = None
    smoothing: Smoothing | None = None
    carbon: Carbon | None = Field(None, description="the grid's hourly carbon intensity")
    demand_response: list[DemandResponse] = Field(
        default_factory=list, description="the grid operator's calls to draw less"
    )

    @model_validator(mode="after")
    def _check(self) -> Facility:
        if isinstance(self.pue_model, EconomizerPUE) and self.weather is None:
            raise ValueError("pue_model economizer needs a weather timeline (facility.weather)")
        return self
