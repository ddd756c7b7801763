"""Answer shorter epoch counts from the per-epoch curves of the longest run.

When the lr schedule does not depend on the total epoch count (constant, step,
multistep, exponential) and nothing stops a run early, the first ``e`` epochs of
an ``E``-epoch run are exactly an ``e``-epoch run with the same seed: same
initialization, same shuffles, same lr at every step. The longest run measures
test accuracy every epoch, so its row ``e`` holds everything the shorter run's
summary would. Derived run folders carry ``derived_from`` in study.json and
summary.json, and the report says so.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from cnnlab.config import save_config
from cnnlab.errors import StudyError
from cnnlab.studies.folder import atomic_write, read_summary, write_json, write_study_json
from cnnlab.studies.spec import RunPlan

_FINAL_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


def source_ready(source_dir: Path) -> bool:
    """Whether the source run has finished (completed or diverged)."""
    summary = read_summary(source_dir)
    return summary is not None and summary.get("status") in ("completed", "diverged")


def derived_summary(
    source: dict[str, Any], rows: list[dict[str, Any]], plan: RunPlan, source_key: str
) -> dict[str, Any]:
    """The summary an ``epochs``-epoch run would have written, from the source's rows."""
    from cnnlab.engine.trainer import best_metric

    epochs = plan.config.train.epochs
    head = [r for r in rows if int(r["epoch"]) <= epochs]
    if len(head) >= epochs:
        status, diverged = "completed", None
    elif source.get("status") == "diverged":
        status, diverged = "diverged", source.get("diverged")
    else:
        raise StudyError(
            f"run {source_key} has {len(head)} epochs of curves; {epochs} are needed to answer run {plan.key}"
        )
    last = head[-1] if head else {}
    monitor = plan.config.train.monitor
    # No validation split: the trainer monitored the training metric, and names it.
    metric = best_metric(monitor, any(row.get(monitor) is not None for row in head))
    best_val, best_epoch = None, None
    for row in head:
        value = row.get(metric)
        if value is not None and (
            best_val is None or (value > best_val if monitor == "val_acc" else value < best_val)
        ):
            best_val, best_epoch = value, int(row["epoch"])
    seconds = sum(float(r.get("seconds") or 0.0) for r in head)
    speeds = [float(r["examples_per_sec"]) for r in head if r.get("examples_per_sec")]
    note = f"answered from the per-epoch curves of run {source_key} ({source.get('epochs_completed')} epochs); not trained separately"
    return {
        "name": plan.key,
        "status": status,
        "final": {k: last.get(k) for k in _FINAL_KEYS},
        "best": {metric: best_val, "epoch": best_epoch},
        "time": {
            "train_seconds": seconds,
            "total_seconds": None,
            "examples_per_sec": sum(speeds) / len(speeds) if speeds else None,
        },
        "epochs_completed": len(head),
        "diverged": diverged,
        "error": None,
        "device": source.get("device"),
        "seed": plan.seed,
        "versions": source.get("versions"),
        "data": source.get("data"),
        "model_input": source.get("model_input"),
        "notes": [note],
        "config": plan.config.to_dict(),
        "derived_from": source_key,
    }


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    from cnnlab.engine.run import METRIC_COLUMNS

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in METRIC_COLUMNS])
    atomic_write(path, buf.getvalue())


def write_derived(source_dir: Path, plan: RunPlan, run_dir: Path) -> dict[str, Any]:
    """Write the run folder of a derived plan from its finished source run.

    The folder gets config.yaml, metrics.csv (the first ``epochs`` rows),
    summary.json and study.json; no checkpoints (nothing was trained).
    """
    from cnnlab.engine.run import read_metrics

    source = read_summary(source_dir)
    if source is None or source.get("status") not in ("completed", "diverged"):
        raise StudyError(
            f"run {source_dir.name} has not finished; cannot answer run {plan.key} from it"
        )
    rows = (
        read_metrics(source_dir / "metrics.csv") if (source_dir / "metrics.csv").is_file() else []
    )
    summary = derived_summary(source, rows, plan, source_dir.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(plan.config, run_dir / "config.yaml")
    _write_metrics(
        run_dir / "metrics.csv", [r for r in rows if int(r["epoch"]) <= plan.config.train.epochs]
    )
    write_study_json(run_dir, plan)
    write_json(run_dir / "summary.json", summary)  # last: its presence means "done"
    return summary
