"""The run folder: the complete, trustworthy record of one training run.

``runs/<name>/`` holds config.yaml (resolved), metrics.csv (one row per epoch),
summary.json (final and best metrics, status, timings, versions, device, data
fingerprint), curves.png, log.txt and checkpoints/{last,best}.pt. Every file
that a reader relies on is replaced atomically, so a crash never leaves a
half-written record. :class:`Run` is the read side and the Python API for using
a finished run (evaluate, predict, export).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cnnlab.config import RunConfig, build_config, read_yaml, save_config
from cnnlab.engine.checkpoint import atomic_write_text
from cnnlab.errors import RunError

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "lr",
    "examples_per_sec",
    "seconds",
)


def default_run_name(config: RunConfig, now: datetime | None = None) -> str:
    """A readable, sortable name: ``20261123-101502-lenet5-fashion-mnist``."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{config.model.name}-{config.data.name}"


_RUN_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_run_name(name: str) -> str:
    """``name`` if it is a plain folder name, so a run lands directly under its runs folder."""
    if not _RUN_NAME.fullmatch(name) or name in (".", ".."):
        raise RunError(
            f"run name {name!r} is not allowed; use a plain folder name of letters, digits,"
            " '.', '_' and '-' (not '.' or '..')"
        )
    return name


def new_run_dir(runs_root: str | Path, name: str) -> Path:
    """The folder for a new run named ``name``: refused when anything is already there.

    A folder that holds a run is resumed with ``--resume``; one that does not may
    hold someone's files, and a new run would overwrite them.
    """
    path = Path(runs_root) / check_run_name(name)
    refuse_existing_run(path)
    if path.exists() or path.is_symlink():
        raise RunError(
            f"{str(path)!r} already exists and is not a run folder (no config.yaml); choose another --name"
        )
    return path


def refuse_existing_run(path: Path) -> None:
    """A new run must not start in a folder that already holds one (it is resumed instead)."""
    if (path / "config.yaml").exists():
        raise RunError(
            f"run folder {str(path)!r} already holds a run; resume it with --resume {path} or choose another --name"
        )


def finished_run_error(path: Path, summary: dict[str, Any]) -> RunError | None:
    """Why a finished run (completed or diverged) cannot be resumed; None when it can."""
    status = summary.get("status")
    epochs = summary.get("epochs_completed")
    if status == "completed":
        return RunError(
            f"run {str(path)!r} is already completed ({epochs} epoch{'' if epochs == 1 else 's'});"
            " nothing to resume."
            f" To train longer, start a new run: cnnlab train --config {path / 'config.yaml'}"
            " train.epochs=N --name NEW"
        )
    if status == "diverged":
        where = (summary.get("diverged") or {}).get("epoch", epochs)
        return RunError(
            f"run {str(path)!r} diverged at epoch {where}; nothing to resume."
            " Start a new run with other settings (a lower optim.lr, train.grad_clip)"
        )
    return None


def check_output_file(path: str | Path) -> Path:
    """``path`` as a file we can (over)write, checked before any work, or a one-line error."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise RunError(f"cannot write {str(path)!r}: it is a folder; give a file name")
    if not parent.exists():
        raise RunError(f"cannot write {str(path)!r}: folder {str(parent)!r} does not exist")
    if not parent.is_dir():
        raise RunError(f"cannot write {str(path)!r}: {str(parent)!r} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise RunError(f"cannot write {str(path)!r}: permission denied")
    return path


def _fmt_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class RunFolder:
    """Writer side of a run folder (used by the trainer)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: RunConfig) -> None:
        save_config(config, self.path / "config.yaml")

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite metrics.csv from the rows the trainer holds (never appends: no duplicates)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(METRIC_COLUMNS)
        for row in rows:
            writer.writerow([_fmt_cell(row.get(c)) for c in METRIC_COLUMNS])
        atomic_write_text(self.path / "metrics.csv", buf.getvalue())

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(
            self.path / "summary.json", json.dumps(summary, indent=2, default=str) + "\n"
        )

    def log(self, line: str) -> None:
        with open(self.path / "log.txt", "a") as fh:
            fh.write(line.rstrip("\n") + "\n")

    def write_curves(self, rows: list[dict[str, Any]], title: str = "") -> Path | None:
        if not rows:
            return None
        from cnnlab.engine.curves import plot_run_curves

        out = self.path / "curves.png"
        plot_run_curves(rows, out, title=title)
        return out


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.csv as a list of dicts with floats (None for empty cells)."""
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if value in ("", None):
                    row[key] = None
                elif key == "epoch":
                    row[key] = int(value)
                else:
                    row[key] = float(value)
            rows.append(row)
    return rows


@dataclass
class Run:
    """A run folder, read back: config, summary and per-epoch metrics."""

    path: Path
    config: RunConfig
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Run:
        """Read a run folder written by :func:`cnnlab.train`.

        Raises:
            RunError: not a run folder (no config.yaml).
        """
        path = Path(path)
        cfg_path = path / "config.yaml"
        if not cfg_path.is_file():
            raise RunError(f"{str(path)!r} is not a run folder (no config.yaml)")
        config = build_config(read_yaml(cfg_path))
        summary: dict[str, Any] = {}
        if (path / "summary.json").is_file():
            try:
                summary = json.loads((path / "summary.json").read_text())
            except json.JSONDecodeError:
                raise RunError(f"{str(path / 'summary.json')!r} is not valid JSON") from None
        return cls(path=path, config=config, summary=summary)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "pending"))

    @property
    def metrics(self) -> list[dict[str, Any]]:
        p = self.path / "metrics.csv"
        return read_metrics(p) if p.is_file() else []

    def checkpoint_path(self, which: str = "best") -> Path:
        if which not in ("best", "last"):
            raise RunError(f"checkpoint {which!r} is not allowed; choose best or last")
        return self.path / "checkpoints" / f"{which}.pt"

    # The methods below live in engine.evaluate / engine.export; imported lazily
    # so reading a run folder does not import torch.
    def load_model(self, checkpoint: str = "best", device: str = "cpu"):
        from cnnlab.engine.evaluate import load_model

        return load_model(self, checkpoint=checkpoint, device=device)

    def evaluate(self, split: str = "test", checkpoint: str = "best", device: str = "auto"):
        from cnnlab.engine.evaluate import evaluate_run

        return evaluate_run(self, split=split, checkpoint=checkpoint, device=device)

    def predict(
        self,
        split: str | None = "test",
        files: list[str | Path] | None = None,
        checkpoint: str = "best",
        top_k: int = 3,
        device: str = "auto",
    ):
        from cnnlab.engine.evaluate import predict_files, predict_split

        if files:
            return predict_files(self, files, checkpoint=checkpoint, top_k=top_k, device=device)
        return predict_split(self, split=split or "test", checkpoint=checkpoint, device=device)

    def export(self, fmt: str = "onnx", out: str | Path | None = None, checkpoint: str = "best"):
        from cnnlab.engine.export import export_run

        return export_run(self, fmt=fmt, out=out, checkpoint=checkpoint)
