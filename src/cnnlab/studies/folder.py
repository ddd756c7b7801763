"""The study folder: the durable record of a study, readable without the database.

::

    studies/NAME/
      spec.yaml          the resolved spec (base fully expanded)
      study.db           the optuna queue (default SQLite store)
      runs/<key>/        one run folder per (variant, repeat), plus study.json
      archive/<key>/     finished runs of an earlier spec that the current one no longer has
      locks/             one lock file per run being trained (local workers)
      logs/              worker logs

A run folder's ``summary.json`` is the source of truth: a run counts as done
when its status is ``completed`` or ``diverged``, whatever the queue says.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.config import dump_yaml, read_yaml
from cnnlab.errors import ConfigError, StudyError
from cnnlab.locks import FileLock
from cnnlab.studies.spec import RunPlan, StudySpec, spec_from_dict

FINISHED = ("completed", "diverged")


@dataclass(frozen=True)
class StudyFolder:
    """Paths of one study's folder."""

    path: Path

    @classmethod
    def at(cls, root: str | Path, name: str) -> StudyFolder:
        return cls(Path(root).expanduser().resolve() / name)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def spec_file(self) -> Path:
        return self.path / "spec.yaml"

    @property
    def db_file(self) -> Path:
        return self.path / "study.db"

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    @property
    def archive(self) -> Path:
        return self.path / "archive"

    @property
    def locks(self) -> Path:
        return self.path / "locks"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def run_dir(self, key: str) -> Path:
        return self.runs / key

    def run_lock(self, key: str) -> FileLock:
        """The lock a local process holds while it trains or writes run ``key``."""
        return FileLock(self.locks / f"{key}.lock")

    def default_storage(self) -> str:
        return f"sqlite:///{self.db_file}"

    def exists(self) -> bool:
        return self.spec_file.is_file()

    def create(self) -> None:
        try:
            for p in (self.runs, self.locks, self.logs):
                p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StudyError(
                f"cannot create study folder {str(self.path)!r}: {exc.strerror or exc}"
            ) from None

    def write_spec(self, spec: StudySpec) -> None:
        text = dump_yaml(spec.to_yaml_dict(), sort_keys=False, allow_unicode=True)
        atomic_write(self.spec_file, text)

    def read_spec(self) -> StudySpec:
        if not self.spec_file.is_file():
            raise StudyError(
                f"no study at {str(self.path)!r} (no spec.yaml); start it with: cnnlab study run SPEC.yaml"
            )
        try:
            data = read_yaml(self.spec_file)
        except ConfigError as exc:  # a hand-edited or damaged spec.yaml: one line, not a traceback
            raise StudyError(f"study {self.path.name!r}: {exc}") from None
        return spec_from_dict(data, source=str(self.spec_file))

    def run_keys(self) -> list[str]:
        return (
            sorted(p.name for p in self.runs.iterdir() if p.is_dir()) if self.runs.is_dir() else []
        )


def find_study(name_or_path: str | Path, root: str | Path = "studies") -> StudyFolder:
    """The study folder for ``NAME`` under ``root`` (or a path to a study folder)."""
    candidate = Path(name_or_path).expanduser()
    if (candidate / "spec.yaml").is_file():
        return StudyFolder(candidate.resolve())
    folder = StudyFolder.at(root, str(name_or_path))
    if not folder.exists():
        raise StudyError(
            f"no study named {str(name_or_path)!r} under {str(Path(root))!r}; "
            "pass --root, or start it with: cnnlab study run SPEC.yaml"
        )
    return folder


# -- run folders ---------------------------------------------------------------------


def atomic_write(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    return read_json(run_dir / "summary.json")


def run_status(run_dir: Path) -> str | None:
    """The status in the run's summary.json (None when it has none)."""
    summary = read_summary(run_dir)
    return None if summary is None else str(summary.get("status"))


def is_finished(run_dir: Path) -> bool:
    return run_status(run_dir) in FINISHED


def write_study_json(run_dir: Path, plan: RunPlan) -> None:
    write_json(run_dir / "study.json", plan.meta())


def write_failed(run_dir: Path, plan: RunPlan, error: str, attempts: int) -> None:
    """Record a run that kept failing with an error: summary status ``failed``."""
    previous = read_summary(run_dir) or {}
    summary = {
        **previous,
        "name": run_dir.name,
        "status": "failed",
        "error": error,
        "attempts": attempts,
        "config": plan.config.to_dict(),
        "seed": plan.seed,
    }
    summary.setdefault("final", {})
    summary.setdefault("best", {})
    summary.setdefault("time", {})
    write_study_json(run_dir, plan)
    write_json(run_dir / "summary.json", summary)


def sync_archive(
    folder: StudyFolder, keys: Iterable[str], *, keep: Iterable[str] = ()
) -> tuple[int, int]:
    """Make ``runs/`` hold exactly the current plan's runs.

    Runs of ``keys`` found in ``archive/`` move back (a spec changed back costs
    nothing); run folders under ``runs/`` whose key is neither planned nor in
    ``keep`` move to ``archive/``, so the report never mixes in runs of an
    earlier spec. Nothing is deleted.

    Returns:
        (restored, archived) counts.
    """
    wanted = set(keys) | set(keep)
    restored = archived = 0
    if folder.archive.is_dir():
        for key in sorted(wanted):
            src = folder.archive / key
            if src.is_dir() and not folder.run_dir(key).exists():
                folder.runs.mkdir(parents=True, exist_ok=True)
                os.replace(src, folder.run_dir(key))
                restored += 1
    for key in folder.run_keys():
        if key in wanted:
            continue
        dst = folder.archive / key
        folder.archive.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(folder.run_dir(key), dst)
        archived += 1
    return restored, archived


# -- locks ---------------------------------------------------------------------------
