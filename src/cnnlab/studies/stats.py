"""Statistics over a study's run folders: one table a reader can trust.

Everything here reads only the run folders (``runs/<key>/study.json``,
``summary.json``, ``metrics.csv``) and ``spec.yaml``, never the queue database,
so a study can be reported while it runs, after its store is gone, or when some
runs failed. Reading produces plain DataFrames; the statistics are pure
functions of those frames so they can be checked against hand computations.

Conventions used throughout:

- Only runs with status ``completed`` enter means, standard deviations and
  tests. Diverged runs are results too, but their "final" numbers describe a
  broken model, so they are counted (``n_diverged``) instead of averaged.
  Failed runs (bugs) are counted separately and never compared.
- ``std`` is the sample standard deviation (``ddof=1``); the 95% confidence
  interval half-width is ``t(0.975, n-1) * std / sqrt(n)`` (Student t), NaN
  when ``n < 2``.
- A factor's *levels* are the values it takes; the base run is the level at the
  base value, so every factor is compared with the same base runs.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cnnlab.config import load_yaml_text
from cnnlab.errors import StudyError, first_line

log = logging.getLogger(__name__)

BASE = "base"
COMPLETED = "completed"
DIVERGED = "diverged"
FAILED_STATUSES = ("failed", "unreadable")
FINAL_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
CURVE_COLUMNS = FINAL_KEYS + ("lr", "examples_per_sec", "seconds")
# The per-variant numbers the issue asks for, in the order write-ups show them.
METRICS = ("train_loss", "train_acc", "val_acc", "test_acc", "best_val_acc", "train_seconds")
WIDE_ROWS = ("train_loss", "train_acc", "test_acc")
METRIC_LABELS = {
    "train_loss": "loss",
    "train_acc": "train acc",
    "val_loss": "val loss",
    "val_acc": "val acc",
    "test_loss": "test loss",
    "test_acc": "test acc",
    "best_val_acc": "best val acc",
    "train_seconds": "train time (s)",
    "total_seconds": "total time (s)",
    "examples_per_sec": "examples/s",
}
RUN_COLUMNS = (
    "key",
    "study",
    "variant",
    "group",
    "factor",
    "factors",
    "repeat",
    "seed",
    "derived_from",
    "run_name",
    "status",
    *FINAL_KEYS,
    "best_val_acc",
    "best_epoch",
    "train_seconds",
    "total_seconds",
    "examples_per_sec",
    "epochs_completed",
    "diverged_epoch",
    "diverged_step",
    "diverged_lr",
    "last_finite_loss",
    "error",
    "device",
    "versions",
    "group_rank",
    "value_rank",
)
GROUP_SEPARATOR = " × "


# --------------------------------------------------------------------------- reading


def read_spec(study_dir: str | Path) -> dict[str, Any]:
    """The study's ``spec.yaml`` as a plain mapping, ``{}`` when the file is absent.

    No validation happens here on purpose: a report must describe whatever is on
    disk, even a spec an older cnnlab wrote. ``safe_load`` keeps Python tags out.

    Args:
        study_dir: The study folder.

    Returns:
        The parsed mapping (empty when there is no spec file).

    Raises:
        StudyError: When the file exists but is not a YAML mapping.
    """
    path = Path(study_dir) / "spec.yaml"
    if not path.is_file():
        return {}
    try:
        data = load_yaml_text(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise StudyError(f"{path}: cannot read the study spec ({first_line(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise StudyError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


def spec_factors(spec: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Every factor key of a spec (``vary`` first, then ``grid``) with its values in order."""
    out: dict[str, list[Any]] = {}
    for section in ("vary", "grid"):
        block = spec.get(section) or {}
        if isinstance(block, Mapping):
            for key, values in block.items():
                listed = list(values) if isinstance(values, (list, tuple)) else [values]
                out.setdefault(str(key), []).extend(listed)
    return out


def value_column(factor: str) -> str:
    """Name of the runs column that holds each run's resolved value of ``factor``.

    A prefix keeps factor keys from ever colliding with the fixed columns.
    """
    return f"value[{factor}]"


def format_value(value: Any) -> str:
    """A factor value as the short text tables and plots show (``0.1``, ``relu``, ``true``).

    Integral floats print like ints so ``lr: 1`` in a spec and ``1.0`` in a
    resolved config land in the same column.
    """
    if isinstance(value, np.generic):  # pandas hands back numpy scalars
        value = value.item()
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def collect_runs(study_dir: str | Path) -> pd.DataFrame:
    """One row per run folder: its identity, status, final metrics and times.

    Args:
        study_dir: The study folder holding ``runs/`` (and usually ``spec.yaml``).

    Returns:
        A frame with the columns of :data:`RUN_COLUMNS` plus one
        :func:`value_column` per factor (of the spec, or named by a run), holding each run's value of
        that factor (from its own factors, else its resolved config, else the
        spec's base). Runs without ``summary.json`` have status ``pending``;
        folders whose files cannot be parsed have status ``unreadable`` and say
        why in ``error``.

    Raises:
        StudyError: When ``study_dir`` is not a folder or its spec is unreadable.
    """
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise StudyError(f"study folder {str(study_dir)!r} does not exist")
    spec = read_spec(study_dir)
    factors = spec_factors(spec)
    base_flat = flatten(spec.get("base") or {}) if isinstance(spec.get("base"), Mapping) else {}
    runs_dir = study_dir / "runs"
    folders = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    read = [_run_row(folder, factors) for folder in folders]
    # Factor keys: the spec's, then any a run names that the spec does not (an
    # edited or missing spec), so every factor still gets its value column.
    keys = list(dict.fromkeys([*factors, *(k for row, _ in read for k in row["factors"])]))
    rows = []
    for row, config_flat in read:
        for key in keys:
            if key in row["factors"]:
                row[value_column(key)] = row["factors"][key]
            else:
                row[value_column(key)] = config_flat.get(key, base_flat.get(key))
        rows.append(row)
    columns = list(RUN_COLUMNS) + [value_column(k) for k in keys]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({c: "float64" for c in _FLOAT_COLUMNS})


_FLOAT_COLUMNS = (
    *FINAL_KEYS,
    "best_val_acc",
    "train_seconds",
    "total_seconds",
    "examples_per_sec",
    "diverged_lr",
    "last_finite_loss",
    "group_rank",
    "value_rank",
)


def _run_row(
    folder: Path, factors: Mapping[str, list[Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The row of one run folder and its flattened resolved config (``{}`` if unknown)."""
    row: dict[str, Any] = {c: None for c in RUN_COLUMNS}
    row.update(key=folder.name, variant=folder.name, group="?", factors={}, status="pending")
    meta, problem = _read_json(folder / "study.json")
    if meta is None:
        row.update(status="unreadable", error=problem or "study.json is missing")
        return row, {}
    run_factors = meta.get("factors") if isinstance(meta.get("factors"), Mapping) else {}
    row.update(
        key=str(meta.get("key") or folder.name),
        study=meta.get("study"),
        variant=str(meta.get("variant") or BASE),
        factor=meta.get("factor"),
        factors=dict(run_factors),
        repeat=meta.get("repeat"),
        seed=meta.get("seed"),
        derived_from=meta.get("derived_from"),
    )
    row["group"] = _group_of(row["factor"], row["factors"], factors)
    row["group_rank"], row["value_rank"] = _ranks(row["group"], row["factors"], factors)
    summary: Mapping[str, Any] = {}
    if (folder / "summary.json").exists():
        data, problem = _read_json(folder / "summary.json")
        if data is None:
            row.update(status="unreadable", error=problem)
        else:
            summary = data
            row.update(_summary_fields(summary))
    config = summary.get("config") if isinstance(summary.get("config"), Mapping) else {}
    return row, flatten(config) if config else {}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``.

    Kept here rather than imported from :mod:`cnnlab.config` because that module
    validates against the model and data registries (torch) at import time, and
    reading a study's numbers must not need either.
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _read_json(path: Path) -> tuple[dict | None, str | None]:
    """``(data, None)`` or ``(None, why)``: one bad file must not stop a report."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except (OSError, ValueError) as exc:
        return None, f"{path.name} is unreadable ({first_line(exc)})"
    if not isinstance(data, dict):
        return None, f"{path.name} is not a JSON object"
    return data, None


def _summary_fields(summary: Mapping[str, Any]) -> dict[str, Any]:
    final = _mapping(summary.get("final"))
    best = _mapping(summary.get("best"))
    timing = _mapping(summary.get("time"))
    diverged = _mapping(summary.get("diverged"))
    out: dict[str, Any] = {k: _number(final.get(k)) for k in FINAL_KEYS}
    out.update(
        run_name=summary.get("name"),
        status=str(summary.get("status") or "unknown"),
        best_val_acc=_number(best.get("val_acc")),
        best_epoch=best.get("epoch"),
        train_seconds=_number(timing.get("train_seconds")),
        total_seconds=_number(timing.get("total_seconds")),
        examples_per_sec=_number(timing.get("examples_per_sec")),
        epochs_completed=summary.get("epochs_completed"),
        diverged_epoch=diverged.get("epoch"),
        diverged_step=diverged.get("step"),
        diverged_lr=_number(diverged.get("lr")),
        last_finite_loss=_number(diverged.get("last_finite_loss")),
        error=None if summary.get("error") is None else str(summary.get("error")),
        device=None if summary.get("device") is None else str(summary.get("device")),
        versions=dict(_mapping(summary.get("versions"))),
    )
    return out


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float:
    """JSON number -> float; null, text and booleans -> NaN (never a crash)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _group_of(factor: Any, run_factors: Mapping[str, Any], factors: Mapping[str, Any]) -> str:
    """The factor a run belongs to: its one factor, ``base``, or the joined grid keys."""
    if factor:
        return str(factor)
    if not run_factors:
        return BASE
    keys = sorted(run_factors, key=lambda k: (list(factors).index(k) if k in factors else 10**6, k))
    return GROUP_SEPARATOR.join(keys)


def _ranks(
    group: str, run_factors: Mapping[str, Any], factors: Mapping[str, list[Any]]
) -> tuple[float, float]:
    """Spec order of a run's group and value, so tables follow the spec, not hash order."""
    if group == BASE:
        return 0.0, 0.0
    names = list(factors)
    if group in factors:
        listed = [format_value(v) for v in factors[group]]
        text = format_value(run_factors.get(group))
        return float(names.index(group) + 1), float(
            listed.index(text)
        ) if text in listed else math.nan
    # Grid point: rank by its place in the cartesian order of the listed values.
    rank = 0.0
    for key in group.split(GROUP_SEPARATOR):
        listed = [format_value(v) for v in factors.get(key, [])]
        text = format_value(run_factors.get(key))
        if text not in listed:
            return float(len(names) + 1), math.nan
        rank = rank * len(listed) + listed.index(text)
    return float(len(names) + 1), rank


def curves(study_dir: str | Path) -> pd.DataFrame:
    """Every run's per-epoch metrics in one long frame.

    Args:
        study_dir: The study folder.

    Returns:
        Columns ``key, variant, repeat, epoch`` and :data:`CURVE_COLUMNS`
        (NaN where a run did not record a metric). Runs without a readable
        ``metrics.csv`` contribute no rows; a corrupt file is logged, not raised,
        so one damaged run does not hide the rest of the study.
    """
    runs_dir = Path(study_dir) / "runs"
    frames = []
    folders = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    for folder in folders:
        meta, _ = _read_json(folder / "study.json")
        path = folder / "metrics.csv"
        if meta is None or not path.is_file():
            continue
        try:
            table = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            log.warning("skipping curves of %s: %s", folder.name, first_line(exc))
            continue
        if "epoch" not in table.columns or table.empty:
            continue
        part = pd.DataFrame({"epoch": pd.to_numeric(table["epoch"], errors="coerce")})
        for column in CURVE_COLUMNS:
            values = table[column] if column in table.columns else np.nan
            part[column] = (
                pd.to_numeric(values, errors="coerce") if column in table.columns else values
            )
        part.insert(0, "repeat", meta.get("repeat"))
        part.insert(0, "variant", str(meta.get("variant") or BASE))
        part.insert(0, "key", str(meta.get("key") or folder.name))
        frames.append(part.dropna(subset=["epoch"]))
    columns = ["key", "variant", "repeat", "epoch", *CURVE_COLUMNS]
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)[columns]
    out["epoch"] = out["epoch"].astype(int)
    return out


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and 95% CI half-width of one sample."""

    n: int
    mean: float
    std: float
    ci95: float


def summarize(values: Iterable[float]) -> Summary:
    """Describe a sample, ignoring NaN (a run that did not record the metric).

    Args:
        values: The per-run numbers.

    Returns:
        ``n`` finite values, their mean, ``std`` with ``ddof=1`` and the Student-t
        95% half-width; ``std`` and ``ci95`` are NaN for ``n < 2`` (one run says
        nothing about spread) and the mean is NaN for ``n == 0``.
    """
    from scipy import stats

    sample = _finite(values)
    n = len(sample)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan)
    mean = float(np.mean(sample))
    if n < 2:
        return Summary(1, mean, math.nan, math.nan)
    std = float(np.std(sample, ddof=1))
    return Summary(n, mean, std, float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)))


def _finite(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    return array[np.isfinite(array)]


def higher_is_better(metric: str) -> bool:
    """Accuracies are maximized; losses and times are minimized."""
    return not metric.endswith(("loss", "seconds"))


def variant_table(runs: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Per variant: run counts and mean, std and 95% CI of each metric.

    Args:
        runs: The frame from :func:`collect_runs`.
        metrics: Run columns to describe.

    Returns:
        One row per variant in spec order with ``variant, group, n`` (completed
        runs), ``n_diverged, n_failed, n_pending``, ``derived`` (whether its runs
        were answered from other runs' curves) and ``<metric>_mean``,
        ``<metric>_std``, ``<metric>_ci95`` for each metric, computed over the
        completed runs only.
    """
    columns = ["variant", "group", "n", "n_diverged", "n_failed", "n_pending", "derived"]
    columns += [f"{m}_{s}" for m in metrics for s in ("mean", "std", "ci95")]
    rows = []
    for variant, group in _ordered(runs, "variant"):
        row = {"variant": variant, "group": group["group"].iloc[0], **_counts(group)}
        row["derived"] = bool(group["derived_from"].notna().any())
        done = group[group["status"] == COMPLETED]
        for metric in metrics:
            s = summarize(done[metric])
            row.update({f"{metric}_mean": s.mean, f"{metric}_std": s.std, f"{metric}_ci95": s.ci95})
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def _counts(group: pd.DataFrame) -> dict[str, int]:
    status = group["status"]
    n = int((status == COMPLETED).sum())
    n_diverged = int((status == DIVERGED).sum())
    n_failed = int(status.isin(FAILED_STATUSES).sum())
    return {
        "n": n,
        "n_diverged": n_diverged,
        "n_failed": n_failed,
        "n_pending": len(group) - n - n_diverged - n_failed,
    }


def _ordered(runs: pd.DataFrame, by: str) -> list[tuple[Any, pd.DataFrame]]:
    """Groups of ``runs`` in spec order (base first), falling back to their labels."""
    if runs.empty:
        return []
    ranks = runs.assign(
        _g=runs["group_rank"].fillna(math.inf) if "group_rank" in runs else 0.0,
        _v=runs["value_rank"].fillna(math.inf) if "value_rank" in runs else 0.0,
        _base=(runs["variant"] != BASE).astype(int),
    )
    firsts = ranks.groupby(by, sort=False)[["_base", "_g", "_v"]].min()
    firsts["_label"] = firsts.index.astype(str)
    order = firsts.sort_values(["_base", "_g", "_v", "_label"]).index
    return [(label, runs[runs[by] == label]) for label in order]


def factor_names(runs: pd.DataFrame) -> list[str]:
    """The factors present in ``runs`` (one-factor keys and grid groups), in spec order."""
    if runs.empty:
        return []
    return [g for g, _ in _ordered(runs[runs["group"].notna()], "group") if g not in (BASE, "?")]


def factor_levels(runs: pd.DataFrame, factor: str, base_variant: str = BASE) -> pd.DataFrame:
    """The runs that describe one factor: its variants plus the base runs.

    Args:
        runs: The frame from :func:`collect_runs`.
        factor: A factor key (``optim.lr``) or a grid group (``a × b``).
        base_variant: Label of the base variant.

    Returns:
        Those runs with ``level`` (the text label: for a one-key factor the
        value as its variant reads it, ``label`` included, else the variant
        label), ``level_value`` (the raw value) and ``is_base``; ``level`` is an
        ordered categorical (numbers ascending, otherwise base first, then spec
        order) so groupbys keep that order.
    """
    column = value_column(factor)
    single = column in runs.columns
    members = runs[(runs["group"] == factor) | (runs["variant"] == base_variant)].copy()
    members["is_base"] = members["variant"] == base_variant
    if single:
        raw = members[column]
        levels = [
            _level_text(factor, str(variant), value, base)
            for variant, value, base in zip(members["variant"], raw, members["is_base"])
        ]
    else:
        raw = members["variant"].where(~members["is_base"], base_variant)
        levels = [str(v) for v in raw]
    members["level_value"] = list(raw)
    members["level"] = levels
    order = _level_order(members)
    members["level"] = pd.Categorical(members["level"], categories=order, ordered=True)
    return members


def _level_text(factor: str, variant: str, value: Any, is_base: bool) -> str:
    """A one-key level's text: what its variant label says after ``factor=``, else the value.

    The variant label carries a value's ``label``, so two values that are equal
    but come with different companion settings stay two levels.
    """
    prefix = f"{factor}="
    if not is_base and variant.startswith(prefix):
        return variant[len(prefix) :]
    return format_value(value)


def _level_order(members: pd.DataFrame) -> list[str]:
    firsts: dict[str, tuple] = {}
    numeric = is_numeric(members["level_value"])
    for _, row in members.iterrows():
        label = row["level"]
        if numeric:
            key: tuple = (float(row["level_value"]), 0 if row["is_base"] else 1, label)
        else:
            rank = row["value_rank"] if pd.notna(row.get("value_rank")) else math.inf
            key = (0 if row["is_base"] else 1, rank, label)
        firsts[label] = min(firsts.get(label, key), key)
    return sorted(firsts, key=lambda label: firsts[label])


def is_numeric(values: Iterable[Any]) -> bool:
    """Whether every value is a finite real number (booleans are categories)."""
    items = list(values)
    return bool(items) and all(
        isinstance(v, (int, float, np.integer, np.floating))
        and not isinstance(v, (bool, np.bool_))
        and math.isfinite(float(v))
        for v in items
    )


def welch(a: Iterable[float], b: Iterable[float]) -> tuple[float, float, str]:
    """Welch's t-test of ``mean(a) - mean(b)`` with its 95% CI half-width.

    Args:
        a: The variant's sample.
        b: The base's sample.

    Returns:
        ``(p_value, ci95_of_difference, note)``. With fewer than two values on
        either side, or no variance at all, there is no test: p and CI are NaN
        and ``note`` says why instead of letting scipy warn or divide by zero.
    """
    from scipy import stats

    x, y = _finite(a), _finite(b)
    if len(x) < 2 or len(y) < 2:
        return math.nan, math.nan, "n<2: no test"
    # Equal values, not a variance of 0: np.var of [0.8] * 3 is 1.8e-32 after rounding, and
    # scipy would then test a difference of means against that noise (p ~ 1e-16).
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        return math.nan, math.nan, "zero variance: no test"
    vx, vy = np.var(x, ddof=1) / len(x), np.var(y, ddof=1) / len(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(x, y, equal_var=False).pvalue)
    # Welch-Satterthwaite degrees of freedom, the same the test uses.
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return p, float(stats.t.ppf(0.975, df) * math.sqrt(vx + vy)), ""


def factor_effects(
    runs: pd.DataFrame, metric: str = "test_acc", base_variant: str = BASE
) -> pd.DataFrame:
    """Per factor and level: mean, difference from the base, Welch p-value, best level.

    Args:
        runs: The frame from :func:`collect_runs`.
        metric: The run column compared (the spec's ``metric``).
        base_variant: Label of the base variant.

    Returns:
        One row per (factor, level) with ``factor, level, value, variant, is_base,
        n, n_diverged, n_failed, mean, std, diff`` (level mean minus base mean),
        ``diff_ci95`` (Welch 95% half-width), ``p_value``, ``best`` and ``note``.
        The best level maximizes the mean (minimizes it for losses and times)
        among levels with completed runs and no diverged run; only if every
        level diverged somewhere are all completed levels considered, so a value
        that blows up in some repeats does not win on its survivors. Equal means go
        to the base, then to the value the spec lists first (as `study combine` does).
    """
    base_runs = runs[(runs["variant"] == base_variant) & (runs["status"] == COMPLETED)]
    base_sample = _finite(base_runs[metric])
    no_base = f"no base run recorded {metric}" if len(base_runs) else "no completed base runs"
    rows = []
    for factor in factor_names(runs):
        members = factor_levels(runs, factor, base_variant)
        block = []
        for level, group in members.groupby("level", observed=True, sort=True):
            row = _effect_row(factor, str(level), group, metric, base_sample, no_base)
            # Tie-break for the best level (not an output column): the base, then spec order.
            rank = group["value_rank"].min() if "value_rank" in group else math.nan
            row["_order"] = (0 if row["is_base"] else 1, rank if pd.notna(rank) else math.inf)
            block.append(row)
        _mark_best(block, metric)
        rows.extend(block)
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


EFFECT_COLUMNS = (
    "factor", "level", "value", "variant", "is_base", "n", "n_diverged", "n_failed",
    "mean", "std", "diff", "diff_ci95", "p_value", "best", "note",
)  # fmt: skip


def _effect_row(
    factor: str,
    level: str,
    group: pd.DataFrame,
    metric: str,
    base_sample: np.ndarray,
    no_base: str,
) -> dict[str, Any]:
    """One level of one factor against the base sample (``no_base``: the note when it is empty).

    ``n`` counts the completed runs that recorded ``metric``: the runs the mean,
    the spread and the test are computed from.
    """
    done = _finite(group.loc[group["status"] == COMPLETED, metric])
    s = summarize(done)
    counts = _counts(group)
    is_base = bool(group["is_base"].any())
    others = [
        v
        for v in dict.fromkeys(group["variant"])
        if v not in set(group.loc[group["is_base"], "variant"])
    ]
    row = {
        "factor": factor,
        "level": level,
        "value": group["level_value"].iloc[0],
        "variant": ", ".join(dict.fromkeys(group["variant"])),
        "is_base": is_base,
        "n": s.n,
        "n_diverged": counts["n_diverged"],
        "n_failed": counts["n_failed"],
        "mean": s.mean,
        "std": s.std,
        "diff": s.mean - float(np.mean(base_sample)) if len(base_sample) and s.n else math.nan,
        "diff_ci95": math.nan,
        "p_value": math.nan,
        "best": False,
    }
    if is_base:
        row["note"] = f"base (with runs of {', '.join(others)})" if others else "base"
    elif not len(base_sample):
        row["note"] = no_base
    else:
        row["p_value"], row["diff_ci95"], row["note"] = welch(done, base_sample)
    return row


def _mark_best(block: list[dict], metric: str) -> None:
    for row in block:
        row["best"] = False
    candidates = [r for r in block if r["n"] > 0 and math.isfinite(r["mean"])]
    clean = [r for r in candidates if r["n_diverged"] == 0]
    pool = clean or candidates
    if not pool:
        return
    sign = 1.0 if higher_is_better(metric) else -1.0
    top = max(sign * r["mean"] for r in pool)
    # Equal means (a constant predictor scores the same at every value) go to the base,
    # then to the value listed first: the choice `study combine` makes, so the report's
    # best value is the one that was combined.
    tied = [r for r in pool if sign * r["mean"] == top]
    min(tied, key=lambda r: r.get("_order", (1, math.inf)))["best"] = True


def best_values(effects: pd.DataFrame) -> dict[str, Any]:
    """``{factor: value}`` of each one-key factor's best level.

    ``study combine`` picks the same levels (``runner.combine_settings``) and
    applies their companion settings (``with:``) too; this returns the values alone.

    Args:
        effects: The frame from :func:`factor_effects`.

    Returns:
        The raw best value per factor; grid groups are left out because their
        levels are combinations, not values of one key.
    """
    best = effects[effects["best"].astype(bool)]
    return {
        row.factor: _python(row.value)
        for row in best.itertuples()
        if GROUP_SEPARATOR not in row.factor
    }


def _python(value: Any) -> Any:
    """numpy scalars -> Python ones, so values can go back into YAML and JSON."""
    return value.item() if isinstance(value, np.generic) else value


# --------------------------------------------------------------------------- tables


def format_fixed(value: float, digits: int = 3, sign: str = "") -> str:
    """``value`` with ``digits`` decimals, unless that would print a non-zero number as zero.

    A spread of 0.0004 or a time difference of 0.04 s printed as ``0.000`` reads
    as "no spread" or "no difference"; such numbers get two significant digits
    instead. ``sign="+"`` always writes the sign (differences).
    """
    text = f"{value:{sign}.{digits}f}"
    if value != 0 and math.isfinite(value) and float(text) == 0:
        return f"{value:{sign}.2g}"
    return text


def format_mean_std(s: Summary, digits: int = 3) -> str:
    """``0.873 ± 0.004``; one run shows its value alone, none shows ``–``."""
    if s.n == 0:
        return "–"
    if s.n == 1:
        return format_fixed(s.mean, digits)
    return f"{format_fixed(s.mean, digits)} ± {format_fixed(s.std, digits)}"


def wide_table(
    runs: pd.DataFrame,
    factor: str,
    metrics: Sequence[str] = WIDE_ROWS,
    *,
    digits: int = 3,
    base_variant: str = BASE,
    include_n: bool = False,
) -> pd.DataFrame:
    """The write-up layout: one row per metric, one column per value, cells ``mean ± std``.

    Args:
        runs: The frame from :func:`collect_runs`.
        factor: The factor key (or grid group) to lay out.
        metrics: Run columns, one row each (labelled ``loss``, ``train acc``...).
        digits: Decimals shown.
        base_variant: Label of the base variant; its column reads ``<value> (base)``.
        include_n: Add a row ``n`` with completed runs and any diverged or failed.

    Returns:
        A frame of strings indexed by metric label, columns in level order.
    """
    members = factor_levels(runs, factor, base_variant)
    table: dict[str, list[str]] = {}
    for level, group in members.groupby("level", observed=True, sort=True):
        label = str(level)
        if group["is_base"].any() and label != base_variant:
            label += " (base)"
        done = group[group["status"] == COMPLETED]
        cells = [format_mean_std(summarize(done[m]), digits) for m in metrics]
        if include_n:
            cells.append(_count_text(_counts(group)))
        table[label] = cells
    index = [METRIC_LABELS.get(m, m) for m in metrics] + (["n"] if include_n else [])
    return pd.DataFrame(table, index=index, dtype=object)


def _count_text(counts: Mapping[str, int]) -> str:
    extra = [
        f"{counts[k]} {name}"
        for k, name in (("n_diverged", "diverged"), ("n_failed", "failed"))
        if counts[k]
    ]
    return f"{counts['n']}" + (f" (+{', '.join(extra)})" if extra else "")


def long_csv(runs: pd.DataFrame, path: str | Path) -> Path:
    """Write every run as one CSV row (dict columns as JSON) for analysis elsewhere.

    Args:
        runs: The frame from :func:`collect_runs`.
        path: Where to write; parent folders are created.

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = runs.drop(columns=["group_rank", "value_rank"], errors="ignore").copy()
    for column in out.columns:
        if out[column].map(lambda v: isinstance(v, (dict, list, tuple))).any():
            out[column] = out[column].map(lambda v: json.dumps(v, sort_keys=True, default=str))
    out.to_csv(path, index=False)
    return path


METRIC_COLUMNS = (*FINAL_KEYS, "best_val_acc", "train_seconds", "total_seconds", "examples_per_sec")


def resolve_metric(name: str) -> str:
    """The run column for a spec's ``metric`` (``test_acc``, ``best.val_acc``, ``final.test_acc``).

    Args:
        name: The metric as written in a spec.

    Returns:
        The matching column of :func:`collect_runs`.

    Raises:
        StudyError: When it names no per-run number.
    """
    text = str(name).strip()
    for candidate in (
        text,
        text.removeprefix("final."),
        text.replace(".", "_"),
        text.removeprefix("time."),
    ):
        if candidate in METRIC_COLUMNS:
            return candidate
    raise StudyError(
        f"metric {text!r} is not a per-run number; choose one of: {', '.join(METRIC_COLUMNS)}"
    )
