"""The study figures, as PNG files drawn by matplotlib (Agg).

Each function takes the frames from :mod:`cnnlab.studies.stats`, writes one PNG
and returns its path; matplotlib is imported inside them (no pyplot, no display) so
importing cnnlab stays cheap. Error bars and bands are ±1 sample standard
deviation over repeats, the same spread the tables print as ``mean ± std``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cnnlab.studies.stats import (
    BASE,
    COMPLETED,
    DIVERGED,
    GROUP_SEPARATOR,
    METRIC_LABELS,
    factor_levels,
    format_value,
    higher_is_better,
    is_numeric,
    summarize,
    value_column,
)

FIGSIZE = (6.0, 3.8)
DPI = 100
BASE_COLOR = "#d62728"
COLOR = "#1f77b4"


def _figure(figsize: tuple[float, float]) -> Any:
    """A bare matplotlib Figure, outside pyplot.

    Without pyplot there is no global figure registry and no backend switch, so
    a report written from a notebook leaves the user's backend alone and
    ``savefig`` renders PNG with Agg.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def use_log_scale(values: Any) -> bool:
    """Log x-axis when all values are positive and span at least two decades.

    That is the case for batch sizes (2..1024) and lr ranges (1e-4..1e-1),
    where a linear axis would crush all but the largest values together.
    """
    array = np.asarray(list(values), dtype=float)
    return bool(len(array) and np.all(array > 0) and array.max() / array.min() >= 100.0)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _level_stats(members: pd.DataFrame, metric: str, factor: str = "") -> pd.DataFrame:
    rows = []
    for level, group in members.groupby("level", observed=True, sort=True):
        s = summarize(group.loc[group["status"] == COMPLETED, metric])
        rows.append(
            {
                "n_diverged": int((group["status"] == DIVERGED).sum()),
                "level": str(level),
                "tick": _tick_text(factor, str(level), group),
                "value": group["level_value"].iloc[0],
                "is_base": bool(group["is_base"].any()),
                "n": s.n,
                "mean": s.mean,
                # NaN for a single run: no bar, where a bar of 0 would claim "no spread".
                "std": s.std,
            }
        )
    return pd.DataFrame(
        rows, columns=["level", "tick", "value", "is_base", "n", "n_diverged", "mean", "std"]
    )


def _tick_text(factor: str, level: str, group: pd.DataFrame) -> str:
    """A level as a tick label: a grid point shows its values alone (``sigmoid, avg``).

    Its level text repeats every key (``model.activation=sigmoid,model.pool=avg``),
    so once trimmed all points of a grid would read alike; the axis label names
    the keys. The base and named variants keep their names.
    """
    keys = factor.split(GROUP_SEPARATOR)
    columns = [value_column(k) for k in keys]
    if len(keys) < 2 or not level.startswith(f"{keys[0]}=") or not set(columns) <= set(group):
        return level
    return ", ".join(format_value(group[c].iloc[0]) for c in columns)


def _mark_diverged(ax: Any, x: Any, table: pd.DataFrame) -> None:
    """Say on the plot where repeats diverged, or a value has no completed run yet.

    Their points are missing from the mean; a value without any would
    otherwise just be absent (or, as a bar, look like a score of 0).
    """
    for xi, (_, row) in zip(x, table.iterrows(), strict=True):
        if row["n_diverged"] or not row["n"]:
            # Below the point, or just inside the bottom of the axes when there is none.
            has_point = math.isfinite(row["mean"])
            y = row["mean"] if has_point else ax.get_ylim()[0]
            text = f"{row['n_diverged']} diverged" if row["n_diverged"] else "no completed run"
            ax.annotate(
                text,
                (xi, y),
                textcoords="offset points",
                xytext=(0, -14 if has_point else 4),
                ha="center",
                fontsize="x-small",
                color=BASE_COLOR,
            )


def plot_factor(runs: pd.DataFrame, factor: str, metric: str, path: str | Path) -> Path:
    """The metric against the factor's values, with ±std error bars.

    A numeric factor is drawn as points joined by a line over a numeric axis
    (log scale when :func:`use_log_scale`); anything else as bars, one per
    value. The base value is drawn in red.

    Args:
        runs: The frame from :func:`~cnnlab.studies.stats.collect_runs`.
        factor: The factor key (or grid group).
        metric: The run column to plot.
        path: Where to write the PNG.

    Returns:
        The written path.
    """
    table = _level_stats(factor_levels(runs, factor), metric, factor)
    shown = table[table["n"] > 0]
    fig = _figure(FIGSIZE)
    ax = fig.subplots()
    label = METRIC_LABELS.get(metric, metric)
    if shown.empty:
        ax.text(
            0.5, 0.5, "no completed runs yet", ha="center", va="center", transform=ax.transAxes
        )  # fmt: skip
    if is_numeric(table["value"]):
        x = shown["value"].astype(float).to_numpy()
        ax.errorbar(x, shown["mean"], yerr=shown["std"], fmt="o-", color=COLOR, capsize=3)
        base = shown[shown["is_base"]]
        ax.plot(
            base["value"].astype(float), base["mean"], "o", color=BASE_COLOR, label="base", zorder=3
        )
        every = table["value"].astype(float).to_numpy()
        if use_log_scale(table["value"]):
            ax.set_xscale("log", base=2 if _powers_of_two(table["value"]) else 10)
            # Tick every value of the factor, written as in the spec (64, not 2^6).
            ax.set_xticks(every, [format_value(v) for v in table["value"]], minor=False)
            ax.minorticks_off()
        if len(shown) < len(table):
            _cover(ax, every, log=use_log_scale(table["value"]))
        _mark_diverged(ax, every, table)
    else:
        positions = np.arange(len(table))
        colors = [BASE_COLOR if b else COLOR for b in table["is_base"]]
        # A value without completed runs gets no bar (NaN), not a bar of height 0.
        ax.bar(positions, table["mean"], yerr=table["std"], color=colors, capsize=3)
        ticks = [_short(t) for t in table["tick"]]
        crowded = len(ticks) > 4 or sum(len(t) for t in ticks) > 48
        ax.set_xticks(positions, ticks, rotation=30 if crowded else 0)
        ax.plot([], [], "s", color=BASE_COLOR, label="base")
        _mark_diverged(ax, positions, table)
    ax.set_xlabel(_short(factor, 60))
    ax.set_ylabel(f"{label} (mean ± std)")
    ax.set_title(_short(f"{label} vs {factor}", 70))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def _cover(ax: Any, values: np.ndarray, *, log: bool) -> None:
    """Widen the x-axis to every value, also those with no point (nothing completed there)."""
    low, high = float(values.min()), float(values.max())
    if log:
        span = (high / low) ** 0.05 if high > low else 2.0
        ax.set_xlim(low / span, high * span)
    else:
        pad = 0.05 * (high - low) if high > low else 0.5 * max(abs(low), 1.0)
        ax.set_xlim(low - pad, high + pad)


def _effect_label(factor: str, level: str) -> str:
    """``optim.lr = 0.1``; a grid point as ``activation=relu,pool=max``; a named variant by its name.

    ``factor = level`` of a grid point repeats every full key twice, so after
    trimming all points of a grid would read alike.
    """
    keys = factor.split(GROUP_SEPARATOR)
    if len(keys) == 1:
        return f"{factor} = {level}"
    if not level.startswith(f"{keys[0]}="):
        return level  # a named variant, or the best combination
    for key in keys:
        level = level.replace(f"{key}=", f"{key.rsplit('.', 1)[-1]}=")
    return level


def _powers_of_two(values: Any) -> bool:
    array = np.asarray(list(values), dtype=float)
    return bool(np.all(array > 0)) and bool(np.allclose(np.log2(array), np.round(np.log2(array))))


def _short(text: Any, limit: int = 24) -> str:
    """Trim long labels to one line; matplotlib text is drawn as pixels, never interpreted as markup.

    A label's newlines would stack a tick label over its neighbours (and a
    carriage return has no glyph), so whitespace runs become one space.
    """
    text = " ".join(str(text).split()).replace("$", r"\$")  # '$' would switch to mathtext
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plot_curves(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    factor: str,
    path: str | Path,
    metrics: tuple[str, ...] = ("train_loss", "val_acc"),
) -> Path:
    """Mean training curves per value of a factor, with a shaded ±std band.

    Only completed runs are averaged (a diverged run's NaN losses would erase
    the band); at each epoch the mean is over the runs that reached it.

    Args:
        runs: The frame from :func:`~cnnlab.studies.stats.collect_runs`.
        curves: The frame from :func:`~cnnlab.studies.stats.curves`.
        factor: The factor key (or grid group).
        path: Where to write the PNG.
        metrics: Curve columns, one panel each.

    Returns:
        The written path.
    """
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    members = factor_levels(runs, factor)
    members = members[members["status"] == COMPLETED]
    data = curves.merge(members[["key", "level"]], on="key", how="inner")
    fig = _figure((FIGSIZE[0] * 1.6, FIGSIZE[1]))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    cmap = colormaps["viridis"]
    levels = [lv for lv in members["level"].cat.categories if (data["level"] == lv).any()]
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, level in enumerate(levels):
            stats = (
                data[data["level"] == level]
                .groupby("epoch")[metric]
                .agg(["mean", "std"])
                .dropna(subset=["mean"])
            )
            if stats.empty:
                continue
            color = cmap(i / max(len(levels) - 1, 1))
            std = stats["std"].fillna(0.0)
            label = _short(_tick_text(factor, level, members[members["level"] == level]))
            # A one-epoch curve is a single point: a line alone would not show it.
            marker = "o" if len(stats) == 1 else None
            ax.plot(stats.index, stats["mean"], color=color, label=label, marker=marker)
            ax.fill_between(
                stats.index, stats["mean"] - std, stats["mean"] + std, color=color, alpha=0.2
            )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if data["epoch"].nunique() == 1:  # else the axis spans 0.95..1.05 in odd ticks
            epoch = int(data["epoch"].iloc[0])
            ax.set_xlim(epoch - 0.5, epoch + 0.5)
            ax.set_xticks([epoch])
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.grid(alpha=0.3)
    if levels:
        axes[0][-1].legend(title=_short(factor, 30), fontsize="small", loc="best")
    else:
        for ax in axes[0]:  # empty axes alone would not say why
            ax.text(
                0.5, 0.5, "no completed runs yet", ha="center", va="center", transform=ax.transAxes
            )  # fmt: skip
    fig.suptitle(_short(f"mean curves by {factor} (band: ±std)", 80))
    return _save(fig, path)


def plot_effects(effects: pd.DataFrame, metric: str, path: str | Path) -> Path:
    """Every factor level's difference from the base, with Welch 95% CI bars.

    One horizontal bar per non-base level, grouped by factor, so the whole
    study reads at a glance: bars right of zero beat the base (for accuracies).

    Args:
        effects: The frame from :func:`~cnnlab.studies.stats.factor_effects`.
        metric: The metric the effects were computed on (for labels).
        path: Where to write the PNG.

    Returns:
        The written path.
    """
    shown = effects[~effects["is_base"].astype(bool) & effects["diff"].notna()]
    height = max(FIGSIZE[1], 0.28 * len(shown) + 1.2)
    fig = _figure((FIGSIZE[0] * 1.2, height))
    ax = fig.subplots()
    if shown.empty:
        ax.text(
            0.5,
            0.5,
            "no comparisons with the base yet",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        return _save(fig, path)
    y = np.arange(len(shown))[::-1]
    better = shown["diff"] > 0 if higher_is_better(metric) else shown["diff"] < 0
    colors = np.where(better, "#2ca02c", "#7f7f7f")
    # No CI (fewer than two runs a side, no variance): no bar, not a bar of width 0.
    ax.barh(y, shown["diff"], xerr=shown["diff_ci95"], color=colors, capsize=2)
    labels = [
        _short(_effect_label(f, lv), 40)
        for f, lv in zip(shown["factor"], shown["level"], strict=True)
    ]
    ax.set_yticks(y, labels, fontsize="small")
    ax.axvline(0.0, color="black", linewidth=0.8)
    name = METRIC_LABELS.get(metric, metric)
    ax.set_xlabel(f"{name}: variant − {BASE} (bars: 95% CI, Welch)")
    ax.set_title("effect of each factor value against the base")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
