"""Figures of a sweep table (what `aifactory_sim.sweep` returns); each returns a matplotlib
Figure and, given `save`, also writes it as PNG. matplotlib is imported lazily (Agg: no
display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import ScenarioError
from .plots import _figure, _service_colours
from .sweep import parameter_columns, pareto_front, summarize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 120


def _save(fig: Figure, save: str | Path | None) -> Figure:
    if save is not None:
        fig.savefig(Path(save), dpi=DPI)
    return fig


def _pick(df: pd.DataFrame, given: str | None, what: str, skip: tuple[str, ...] = ()) -> str:
    """The parameter to plot against: the one given, else the only one left."""
    params = parameter_columns(df)
    if given is not None:
        if given not in df.columns:
            raise ScenarioError(
                f"{what}: no column {given!r}; the parameters are {', '.join(params) or 'none'}"
            )
        return given
    left = [p for p in params if p not in skip]
    if len(left) != 1:
        raise ScenarioError(f"{what}: name the parameter, one of {', '.join(left) or 'none'}")
    return left[0]


def _check_metric(df: pd.DataFrame, metric: str) -> None:
    if metric not in df.columns:
        raise ScenarioError(f"metric: no column {metric!r} in the sweep table")


def metric_vs_param(
    df: pd.DataFrame,
    metric: str,
    param: str | None = None,
    *,
    by: str | None = None,
    save: str | Path | None = None,
) -> Figure:
    """`metric` against one parameter: the mean over replications with its 95 % confidence
    band (Student's t, see `summarize`) and each replication as a dot; one line per value of
    `by` when given. A parameter of non-numbers is spaced evenly, in order of appearance."""
    _check_metric(df, metric)
    skip = (by,) if by else ()
    param = _pick(df, param, "param", skip)
    keys = [param, *([by] if by else [])]
    stats = summarize(df, [metric], by=keys)
    numeric = pd.api.types.is_numeric_dtype(df[param])
    levels = list(dict.fromkeys(df[param]))
    position = (lambda v: v) if numeric else (lambda v: levels.index(v))
    fig = _figure()
    ax = fig.subplots()
    groups = [(None, stats)] if not by else list(stats.groupby(by, sort=False))
    colours = _service_colours(len(groups))
    for (value, part), colour in zip(groups, colours, strict=True):
        if not part["mean"].notna().any():
            continue  # every run of this line failed
        part = part.sort_values(param, key=lambda s: s.map(position))
        x = np.array([position(v) for v in part[param]], dtype=float)
        label = "mean" if by is None else f"{by} = {value}"
        ax.plot(x, part["mean"], marker="o", color=colour, lw=1.6, label=label)
        if part["n"].max() >= 2:
            ax.fill_between(
                x,
                part["ci95_lo"],
                part["ci95_hi"],
                color=colour,
                alpha=0.2,
                lw=0,
                label="95 % CI" if by is None else None,
            )
        rows = df if by is None else df[df[by] == value]
        raw = pd.to_numeric(rows[metric], errors="coerce")
        ax.scatter([position(v) for v in rows[param]], raw, s=10, color=colour, alpha=0.5)
    if not numeric:
        ax.set_xticks(range(len(levels)), [str(v) for v in levels])
    ax.set_xlabel(param)  # axes carry the dotted keys: the names to type to get the columns
    ax.set_ylabel(metric)
    reps = int(stats["n"].max()) if len(stats) else 0
    ax.set_title(
        f"{metric} against {param} ({reps} replication{'s' * (reps != 1)} a point)", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, save)


def heatmap(
    df: pd.DataFrame,
    metric: str,
    x: str | None = None,
    y: str | None = None,
    *,
    save: str | Path | None = None,
) -> Figure:
    """The mean of `metric` over replications on a grid of two parameters, each cell labelled
    with its value; cells with no successful run are left blank."""
    _check_metric(df, metric)
    params = parameter_columns(df)
    if x is None or y is None:
        rest = [p for p in params if p not in (x, y)]
        if len(rest) != 2 - (x is not None) - (y is not None):
            raise ScenarioError(f"heatmap: name x and y, two of {', '.join(params) or 'none'}")
        x = x if x is not None else rest.pop(0)
        y = y if y is not None else rest.pop(0)
    for name in (x, y):
        if name not in df.columns:
            raise ScenarioError(f"heatmap: no column {name!r}")
    stats = summarize(df, [metric], by=[y, x])
    table = stats.pivot(index=y, columns=x, values="mean")
    table = table.reindex(
        index=sorted(table.index, key=_order), columns=sorted(table.columns, key=_order)
    )
    values = table.to_numpy(dtype=float)
    fig = _figure()
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), origin="lower", aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label=metric)
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    if values.size <= 400:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(
                    j,
                    i,
                    f"{v:.3g}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v < middle else "black",
                )
    ax.set_xticks(range(len(table.columns)), [_tick(v) for v in table.columns])
    ax.set_yticks(range(len(table.index)), [_tick(v) for v in table.index])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{metric}: mean over replications", fontsize=10)
    return _save(fig, save)


def _order(value: Any) -> tuple[int, Any]:
    return (0, float(value)) if isinstance(value, int | float | np.number) else (1, str(value))


def _tick(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float | np.floating) else str(value)


def pareto(
    df: pd.DataFrame,
    x: str,
    y: str,
    *,
    minimize: tuple[bool, bool] = (True, True),
    save: str | Path | None = None,
) -> Figure:
    """Each point (its mean over replications) in the plane of two metrics, the Pareto front
    (`pareto_front`) joined and labelled with its parameters."""
    _check_metric(df, x)
    _check_metric(df, y)
    params = parameter_columns(df)
    means = (
        df.groupby(params, dropna=False, sort=False)[[x, y]].mean().reset_index()
        if params
        else df[[x, y]].apply(pd.to_numeric, errors="coerce")
    )
    means = means[means[x].notna() & means[y].notna()]
    front = pareto_front(means, x, y, minimize)
    fig = _figure()
    ax = fig.subplots()
    ax.scatter(means.loc[~front, x], means.loc[~front, y], s=18, color="#9e9e9e", label="dominated")
    best = means[front].sort_values(x)
    ax.plot(best[x], best[y], marker="o", color="#c62828", lw=1.4, label="Pareto front")
    if len(best) <= 12:
        for _, row in best.iterrows():
            text = ", ".join(f"{p.rsplit('.', 1)[-1]}={_tick(row[p])}" for p in params)
            ax.annotate(
                text, (row[x], row[y]), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
    ax.set_xlabel(x + (" (lower is better)" if minimize[0] else " (higher is better)"))
    ax.set_ylabel(y + (" (lower is better)" if minimize[1] else " (higher is better)"))
    ax.set_title(f"Pareto front: {len(best)} of {len(means)} points", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, save)
