"""Build a study's report from its folder and write ``report.md`` and ``report.html``.

The report reads only the study folder (``spec.yaml`` and the run folders),
so it works without the queue database, while runs are still going, and when
some failed; it says what is missing instead of refusing. The content is built
once as a :class:`~cnnlab.report.document.Document` and rendered twice.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cnnlab.errors import StudyError
from cnnlab.report import plots
from cnnlab.report.document import Block, Bullets, Code, Document, Figure, Paragraph, Section, Table
from cnnlab.report.html import to_html
from cnnlab.report.markdown import to_markdown
from cnnlab.studies import stats
from cnnlab.studies.stats import BASE, COMPLETED, DIVERGED, FAILED_STATUSES, METRIC_LABELS

STATS_NOTE = (
    "Means and standard deviations use completed runs only (std with n−1); the 95% CI is "
    "mean ± t(0.975, n−1)·std/√n. Diverged runs are counted, not averaged. p-values are "
    "Welch's t-test of each value against the base runs."
)


def write_report(study_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write the study report (Markdown, self-contained HTML, CSV of runs, figures).

    Args:
        study_dir: The study folder (``spec.yaml`` and ``runs/``).
        out_dir: Where to write; defaults to ``<study_dir>/report``.

    Returns:
        Paths keyed ``markdown``, ``html``, ``csv`` and ``figures`` (the folder of PNGs).

    Raises:
        StudyError: When the folder is missing, holds neither a spec nor runs,
            or the spec names an unknown metric.
    """
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise StudyError(f"study folder {str(study_dir)!r} does not exist")
    if not (study_dir / "spec.yaml").is_file() and not (study_dir / "runs").is_dir():
        raise StudyError(f"{str(study_dir)!r} is not a study folder (no spec.yaml and no runs/)")
    out = Path(out_dir) if out_dir is not None else study_dir / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Everything is built in a hidden folder beside the old report and moved in
        # only when complete: a report that fails half-way (an unreadable spec, a
        # full disk) leaves the previous report and its figures as they were.
        stage = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    except OSError as exc:
        raise StudyError(
            f"cannot write the report to {str(out)!r}: {exc.strerror or exc}"
        ) from None
    try:
        runs = stats.collect_runs(study_dir)
        document = build_document(study_dir, stage / "figures", runs)
        (stage / "report.md").write_text(to_markdown(document, stage), encoding="utf-8")
        (stage / "report.html").write_text(to_html(document), encoding="utf-8")
        stats.long_csv(runs, stage / "runs.csv")
        _publish(stage, out)
    except OSError as exc:
        raise StudyError(
            f"cannot write the report to {str(out)!r}: {exc.strerror or exc}"
        ) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {
        "markdown": out / "report.md",
        "html": out / "report.html",
        "csv": out / "runs.csv",
        "figures": out / "figures",
    }


def _publish(stage: Path, out: Path) -> None:
    """Move a complete staged report into ``out`` by renames (same file system).

    Old PNGs go first (a factor removed from the spec must not leave a stale
    figure); other files a user keeps in ``figures/`` stay.
    """
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    new = {p.name: p for p in (stage / "figures").glob("*.png")}
    for old in figures.glob("*.png"):
        if old.name not in new:
            old.unlink()
    for name, path in new.items():
        os.replace(path, figures / name)
    for name in ("runs.csv", "report.html", "report.md"):
        os.replace(stage / name, out / name)


def build_document(
    study_dir: str | Path, figures_dir: str | Path, runs: pd.DataFrame | None = None
) -> Document:
    """Read the study and assemble the report content, drawing figures into ``figures_dir``.

    Args:
        study_dir: The study folder.
        figures_dir: Folder for the PNGs (created if needed).
        runs: The study's runs if already read (so the CSV and the report agree).

    Returns:
        The report as a :class:`Document`.
    """
    study_dir, figures_dir = Path(study_dir), Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    spec = stats.read_spec(study_dir)
    runs = stats.collect_runs(study_dir) if runs is None else runs
    metric = stats.resolve_metric(spec.get("metric") or "test_acc")
    name = str(spec.get("name") or _first(runs["study"]) or study_dir.name)
    effects = stats.factor_effects(runs, metric) if len(runs) else pd.DataFrame()
    sections = [_overview(runs, spec, metric, effects, figures_dir)]
    sections += _factor_sections(runs, stats.curves(study_dir), effects, metric, figures_dir)
    sections += [
        _variant_section(runs),
        _notes_section(runs, spec),
        _environment_section(runs),
        _spec_section(study_dir),
    ]
    return Document(title=f"Study report: {name}", sections=tuple(sections))


def _first(series: pd.Series) -> Any:
    values = series.dropna()
    return values.iloc[0] if len(values) else None


# --------------------------------------------------------------------------- formatting


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return stats.format_fixed(value, digits)


def _pvalue(p: float) -> str:
    if not math.isfinite(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return slug[:40] or "factor"


def _status_counts(runs: pd.DataFrame) -> str:
    counts = Counter(runs["status"])
    done, diverged = counts.pop(COMPLETED, 0), counts.pop(DIVERGED, 0)
    failed = sum(counts.pop(s, 0) for s in FAILED_STATUSES)
    other = sum(counts.values())
    return f"{len(runs)} runs: {done} completed, {diverged} diverged, {failed} failed, {other} pending or running"


# --------------------------------------------------------------------------- sections


def _overview(
    runs: pd.DataFrame, spec: Mapping, metric: str, effects: pd.DataFrame, figures: Path
) -> Section:
    label = METRIC_LABELS.get(metric, metric)
    repeats = spec.get("repeats", "not given")
    blocks: list[Block] = [
        Paragraph(
            f"{_status_counts(runs)}. Compared metric: {label} ({metric}); repeats: {repeats}."
        ),
        Paragraph(STATS_NOTE),
    ]
    if effects.empty:
        blocks.append(Paragraph("No factor has runs yet, so there is nothing to compare."))
        return Section("Overview", tuple(blocks))
    best = effects[effects["best"].astype(bool)]
    caption = "Best value of each factor; a value with diverged runs is not picked while another is clean."
    blocks.append(_effects_table(best, label, caption, overview=True))
    path = plots.plot_effects(effects, metric, figures / "00-effects.png")
    caption = f"Difference of {label} from the base for every factor value (95% CI, Welch; no bar where there is no test)."
    blocks.append(Figure(path, caption))
    return Section("Overview", tuple(blocks))


def _effects_table(effects: pd.DataFrame, label: str, caption: str, *, overview: bool) -> Table:
    """Effect rows as a table: the overview's best values, or one factor's every value."""
    diff = "difference from base (95% CI)"
    if overview:
        header = ("factor", "best value", "n", f"{label} mean ± std", diff, "p (Welch)")
    else:
        header = ("value", "n", f"{label} mean ± std", diff, "p (Welch)", "best", "note")
    rows = []
    for r in effects.itertuples():
        numbers = (
            f"{r.n}",
            _mean_std(r.mean, r.std),
            _signed(r.diff, r.diff_ci95),
            _pvalue(r.p_value),
        )
        if overview:
            level = r.level + (" (base)" if r.is_base and r.level != BASE else "")
            rows.append((r.factor, level, *numbers))
        else:
            rows.append((r.level, *numbers, "yes" if r.best else "", r.note))
    return Table(header, tuple(rows), caption=caption)


def _mean_std(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "–"
    return _num(mean) if not math.isfinite(std) else f"{_num(mean)} ± {_num(std)}"


def _signed(diff: float, ci: float) -> str:
    if not math.isfinite(diff):
        return "–"
    text = stats.format_fixed(diff, 3, sign="+")
    return text if not math.isfinite(ci) else f"{text} ± {_num(ci)}"


def _factor_sections(
    runs: pd.DataFrame, curves: pd.DataFrame, effects: pd.DataFrame, metric: str, figures: Path
) -> list[Section]:
    label = METRIC_LABELS.get(metric, metric)
    sections = []
    for i, factor in enumerate(stats.factor_names(runs), start=1):
        wide = stats.wide_table(runs, factor, include_n=True)
        cells = tuple(
            (index, *row)
            for index, row in zip(wide.index, wide.itertuples(index=False), strict=True)
        )
        caption = "mean ± std over completed repeats; n counts completed runs (diverged and failed apart)."
        blocks: list[Block] = [Table(("", *wide.columns), cells, caption=caption)]
        caption = "p-values compare each value's runs with the base runs; none with fewer than 2 on a side."
        blocks.append(
            _effects_table(effects[effects["factor"] == factor], label, caption, overview=False)
        )
        stem = f"{i:02d}-{_slug(factor)}"
        path = plots.plot_factor(runs, factor, metric, figures / f"{stem}-{metric}.png")
        caption = f"{label} against {factor} (error bars: ±std over completed repeats, none for a single run; base in red)."
        blocks.append(Figure(path, caption))
        if len(curves):
            path = plots.plot_curves(runs, curves, factor, figures / f"{stem}-curves.png")
            blocks.append(
                Figure(path, f"Mean training curves for each value of {factor} (band: ±std).")
            )
        sections.append(Section(f"Factor: {factor}", tuple(blocks)))
    return sections


def _variant_section(runs: pd.DataFrame) -> Section:
    table = stats.variant_table(runs)
    header = ("variant", "n", "diverged", "failed", "pending") + tuple(
        METRIC_LABELS[m] for m in stats.METRICS
    )
    rows = []
    for r in table.to_dict("records"):
        cells = [
            r["variant"] + (" (derived)" if r["derived"] else ""),
            r["n"],
            r["n_diverged"],
            r["n_failed"],
        ]
        cells.append(r["n_pending"])
        for m in stats.METRICS:
            digits = 1 if m.endswith("seconds") else 3
            mean, std, ci = r[f"{m}_mean"], r[f"{m}_std"], r[f"{m}_ci95"]
            text = _num(mean, digits)
            if math.isfinite(std):
                text += f" ± {_num(std, digits)} (CI ±{_num(ci, digits)})"
            cells.append(text)
        rows.append(tuple(str(c) for c in cells))
    caption = (
        "mean ± std (95% CI half-width, Student t) over completed runs; times are training seconds."
    )
    if not rows:
        return Section("All variants", (Paragraph("No run folders yet."),))
    return Section("All variants", (Table(header, tuple(rows), caption=caption),))


def _notes_section(runs: pd.DataFrame, spec: Mapping) -> Section:
    notes: list[str] = []
    for variant, group in runs[runs["status"] == DIVERGED].groupby("variant", sort=True):
        total = int((runs["variant"] == variant).sum())
        epochs = (
            ", ".join(stats.format_value(e) for e in group["diverged_epoch"] if pd.notna(e)) or "?"
        )
        lrs = ", ".join(sorted({f"{lr:g}" for lr in group["diverged_lr"].dropna()})) or "?"
        notes.append(
            f"Diverged: {variant}: {len(group)} of {_runs(total)} (at epochs {epochs}; lr {lrs})."
        )
    for r in runs[runs["status"].isin(FAILED_STATUSES)].to_dict("records"):
        repeat = "" if r["repeat"] is None or pd.isna(r["repeat"]) else f" repeat {r['repeat']}"
        notes.append(
            f"Failed: {r['variant']}{repeat} (run {r['key']}): {r['error'] or 'no error recorded'}"
        )
    waiting = runs[~runs["status"].isin((COMPLETED, DIVERGED, *FAILED_STATUSES))]
    if len(waiting):
        variants = ", ".join(dict.fromkeys(waiting["variant"]))
        notes.append(
            f"No result yet for {_runs(len(waiting))} (pending, running or interrupted) of: {variants}."
        )
    notes += _missing_notes(runs, spec)
    notes += _derived_notes(runs)
    if len(runs) and not ((runs["variant"] == BASE) & (runs["status"] == COMPLETED)).any():
        notes.append(
            "There is no completed base run, so no difference from the base can be computed yet."
        )
    if not notes:
        notes.append("Every run completed; nothing diverged, failed or is missing.")
    return Section("Notes on runs", (Bullets(tuple(notes)),))


def _missing_notes(runs: pd.DataFrame, spec: Mapping) -> list[str]:
    """Values the spec lists that have no run folder yet, and variants short of repeats."""
    notes = []
    vary = spec.get("vary") if isinstance(spec.get("vary"), Mapping) else {}
    for factor, values in vary.items():
        listed = _listed_levels(spec, str(factor), values)
        present = set()
        if len(runs):
            present = set(stats.factor_levels(runs, str(factor))["level"].astype(str))
        missing = [text for text in listed if text not in present]
        if missing:
            notes.append(f"Missing: {factor} has no runs yet for {', '.join(missing)}.")
    repeats = spec.get("repeats")
    if isinstance(repeats, int) and not isinstance(repeats, bool) and len(runs):
        for variant, group in runs.groupby("variant", sort=True):
            have = group["repeat"].dropna().nunique()
            if group["derived_from"].isna().all() and have < repeats:
                notes.append(f"Missing: {variant} has {have} of {repeats} repeats on disk.")
    return notes


def _listed_levels(spec: Mapping, factor: str, values: Any) -> list[str]:
    """The level text of each value a ``vary`` factor lists: its ``label`` when it has one.

    Runs of a labelled value read as the label (that is how levels are told
    apart), so comparing the bare value would call them missing. spec.yaml keeps
    labels under ``companions`` (aligned by position); a hand-written spec may
    still hold ``{value:, label:}`` entries.
    """
    listed = values if isinstance(values, list) else [values]
    companions = _mapping(_mapping(spec.get("companions")).get("vary")).get(factor)
    extras = companions if isinstance(companions, list) else []
    texts = []
    for i, value in enumerate(listed):
        extra = _mapping(extras[i]) if i < len(extras) else {}
        if isinstance(value, Mapping) and "value" in value:
            extra, value = value, value["value"]
        label = extra.get("label")
        texts.append(str(label) if label is not None else stats.format_value(value))
    return texts


def _mapping(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def _derived_notes(runs: pd.DataFrame) -> list[str]:
    notes = []
    variant_of = dict(zip(runs["key"], runs["variant"], strict=True))
    derived = runs[runs["derived_from"].notna()]
    for variant, group in derived.groupby("variant", sort=True):
        by_source: dict[str, list[str]] = {}
        for key in group["derived_from"]:
            by_source.setdefault(variant_of.get(key, "runs not on disk"), []).append(str(key))
        sources = "; ".join(
            f"{src} ({', '.join(sorted(set(keys)))})" for src, keys in sorted(by_source.items())
        )
        notes.append(
            f"Derived: {variant} was not trained separately; its {_runs(len(group))} were answered from the "
            f"per-epoch curves of longer runs: {sources}."
        )
    return notes


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _environment_section(runs: pd.DataFrame) -> Section:
    done = runs[runs["status"].isin((COMPLETED, DIVERGED))]
    rows = []
    versions = [v for v in done["versions"] if isinstance(v, Mapping)]
    for key in sorted({k for v in versions for k in v}):
        counts = Counter(str(v.get(key)) for v in versions if key in v)
        rows.append((key, _counted(counts)))
    devices = Counter(str(d) for d in done["device"] if d is not None and not pd.isna(d))
    if devices:
        rows.append(("device", _counted(devices)))
    if not rows:
        return Section(
            "Environment", (Paragraph("No finished run has recorded its environment yet."),)
        )
    caption = (
        "From the runs' summaries; several values mean the runs did not share one environment."
    )
    return Section("Environment", (Table(("", "value (runs)"), tuple(rows), caption=caption),))


def _counted(counts: Counter) -> str:
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{value} ({n})" for value, n in counts.most_common())


def _spec_section(study_dir: Path) -> Section:
    path = study_dir / "spec.yaml"
    if not path.is_file():
        return Section(
            "Spec",
            (Paragraph("There is no spec.yaml; this report was built from the run folders."),),
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    return Section("Spec", (Paragraph("The study spec as written (spec.yaml):"), Code(text)))
