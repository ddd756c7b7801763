"""A study worker: pop a run, train it (or resume it), report, repeat.

The one step that trains is :func:`train_plan` ("run one config"); a worker
takes it as ``run_fn`` so a runner that trains a group of fused runs at once
can take its place without touching the queue logic. Everything else here is
bookkeeping that makes a study safe to kill and to share:

- a run is trained under a file lock, so it never trains twice at once;
- a run whose folder already holds a finished summary is reported, not retrained;
- a run is resumed from its own checkpoint when a previous worker died;
- a diverged run is a result; an error is retried ``max_retries`` times, then
  recorded in the run folder as ``failed`` with its error.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.config import DataConfig, RunConfig
from cnnlab.errors import CheckpointError, CnnlabError
from cnnlab.studies.derive import source_ready, write_derived
from cnnlab.studies.folder import (
    FINISHED,
    FileLock,
    StudyFolder,
    read_summary,
    write_failed,
    write_study_json,
)
from cnnlab.studies.queue import Lease, Owner, StudyQueue
from cnnlab.studies.spec import RunPlan

log = logging.getLogger("cnnlab.studies")

# event name, info -> None; events: "start", "end", "retry", "failed", "skip"
EventFn = Callable[[str, dict[str, Any]], None]


class DataCache:
    """Loaded data sets kept between runs of one worker (most studies use one)."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._items: OrderedDict[tuple, Any] = OrderedDict()

    @staticmethod
    def _key(cfg: DataConfig) -> tuple:
        # What load_splits reads; subset, resize, permutation and augmentation
        # are applied per run by the trainer.
        return (cfg.name, cfg.root, cfg.data_dir, cfg.val_fraction, cfg.split_seed)

    def get(self, cfg: DataConfig) -> Any:
        from cnnlab.data import load_splits

        key = self._key(cfg)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        splits = load_splits(
            cfg.name,
            root=cfg.root,
            data_dir=cfg.data_dir,
            val_fraction=cfg.val_fraction,
            split_seed=cfg.split_seed,
            download=cfg.download,
        )
        self._items[key] = splits
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return splits


def with_device(config: RunConfig, device: str | None) -> RunConfig:
    if not device:
        return config
    return config.model_copy(update={"train": config.train.model_copy(update={"device": device})})


def train_plan(
    plan: RunPlan,
    run_dir: Path,
    *,
    device: str | None = None,
    data: DataCache | None = None,
    train_fn: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Train one planned run in ``run_dir`` (resuming it if it was started) and return its summary.

    Args:
        plan: the run (its config and seed).
        run_dir: the run folder; a previous attempt's checkpoint there is resumed.
        device: overrides ``train.device`` (not part of the run key).
        data: loaded data sets to reuse between runs.
        train_fn: the trainer, :func:`cnnlab.engine.trainer.train` by default.
    """
    if train_fn is None:
        from cnnlab.engine.trainer import train as train_fn
    config = with_device(plan.config, device)
    splits = data.get(config.data) if data is not None else None
    started = (run_dir / "config.yaml").is_file()
    try:
        run = train_fn(config, run_dir=run_dir, resume=started, splits=splits)
    except CheckpointError as exc:
        if not started:
            raise
        # The checkpoint cannot continue this config (for instance the device
        # changed): start the run again rather than fail it.
        log.warning("run %s: cannot resume (%s); starting it again", plan.key, exc)
        _clear_run(run_dir)
        run = train_fn(config, run_dir=run_dir, resume=False, splits=splits)
    return dict(run.summary)


def _clear_run(run_dir: Path) -> None:
    for child in run_dir.iterdir():
        if child.name == "study.json":
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _log_traceback(run_dir: Path, attempt: int) -> None:
    """Keep the full traceback of a failed attempt in the run's log.txt (the CLI shows one line)."""
    import traceback

    with contextlib.suppress(OSError), open(run_dir / "log.txt", "a") as fh:
        fh.write(f"attempt {attempt} failed:\n{traceback.format_exc()}")


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, CnnlabError):
        return str(exc)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class WorkerStats:
    trained: int = 0
    reused: int = 0
    failed: int = 0
    retried: int = 0
    duplicates: int = 0
    keys: list[str] = field(default_factory=list)


RunFn = Callable[..., Mapping[str, Any]]


class Worker:
    """Pops runs from one study's queue until none is waiting or running."""

    def __init__(
        self,
        queue: StudyQueue,
        folder: StudyFolder,
        *,
        metric: str = "test_acc",
        run_fn: RunFn = train_plan,
        device: str | None = None,
        on_event: EventFn | None = None,
        poll_seconds: float = 2.0,
        wait_for_others: bool = True,
    ) -> None:
        self.queue = queue
        self.folder = folder
        self.metric = metric
        self.run_fn = run_fn
        self.device = device
        self.emit = on_event or (lambda event, info: None)
        self.poll_seconds = poll_seconds
        self.wait_for_others = wait_for_others
        self.owner = Owner.me()
        self.data = DataCache()
        self.stats = WorkerStats()

    def run(self, max_runs: int | None = None) -> WorkerStats:
        """Work until the queue is drained (or ``max_runs`` runs were handled)."""
        handled = 0
        last_reap = -math.inf
        while max_runs is None or handled < max_runs:
            if time.monotonic() - last_reap >= self.queue.heartbeat_interval:
                # Dead workers' runs go back to the queue; checking once per
                # heartbeat interval keeps the store's load per run low.
                self.queue.reap()
                last_reap = time.monotonic()
            lease = self.queue.pop(self.owner)
            if lease is None:
                # Runs of other workers may still fail and come back; wait for them.
                if not self.wait_for_others or not self.queue.has_active():
                    break
                time.sleep(self.poll_seconds)
                continue
            self.handle(lease)
            handled += 1
        return self.stats

    def handle(self, lease: Lease) -> None:
        plan = lease.plan
        run_dir = self.folder.run_dir(plan.key)
        lock = FileLock(self.folder.locks / f"{plan.key}.lock")
        if not lock.acquire():
            # Another local worker trains this run right now (a duplicate trial).
            self.stats.duplicates += 1
            self.queue.release(lease, "duplicate")
            self.emit("skip", {"plan": plan, "reason": "being trained by another worker"})
            return
        try:
            with self.queue.heartbeat(lease):
                self._run_locked(lease, run_dir)
        finally:
            lock.release()

    def _run_locked(self, lease: Lease, run_dir: Path) -> None:
        plan = lease.plan
        summary = read_summary(run_dir)
        if summary is not None and summary.get("status") in FINISHED:
            self.stats.reused += 1
            self.queue.complete(lease, summary, outcome="reused", metric=self.metric)
            self._write_derived(plan, run_dir)
            self.emit("skip", {"plan": plan, "reason": "already finished"})
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        write_study_json(run_dir, plan)
        self.emit("start", {"plan": plan, "attempt": lease.attempt, "owner": self.owner})
        t0 = time.perf_counter()
        try:
            summary = dict(self.run_fn(plan, run_dir, device=self.device, data=self.data))
            if summary.get("status") not in FINISHED:
                raise RuntimeError(
                    summary.get("error") or f"run ended with status {summary.get('status')!r}"
                )
        except KeyboardInterrupt:
            self.queue.release(lease, "interrupted")
            raise
        except Exception as exc:  # noqa: BLE001 - a run's bug must not stop the study
            error = _one_line(exc)
            log.info(
                "run %s (%s, repeat %d) failed: %s", plan.key, plan.variant, plan.repeat, error
            )
            _log_traceback(run_dir, lease.attempt)
            if self.queue.fail(lease, error):
                self.stats.retried += 1
                self.emit("retry", {"plan": plan, "error": error, "attempt": lease.attempt})
            else:
                self.stats.failed += 1
                write_failed(run_dir, plan, error, attempts=lease.attempt)
                self.emit("failed", {"plan": plan, "error": error, "attempt": lease.attempt})
            return
        self.stats.trained += 1
        self.stats.keys.append(plan.key)
        self.queue.complete(
            lease, summary, outcome="trained", metric=self.metric, metrics=_metrics_rows(run_dir)
        )
        self._write_derived(plan, run_dir)
        self.emit("end", {"plan": plan, "summary": summary, "seconds": time.perf_counter() - t0})

    def _write_derived(self, plan: RunPlan, run_dir: Path) -> None:
        if not plan.derives or not source_ready(run_dir):
            return
        for derived in plan.derives:
            target = self.folder.run_dir(derived.key)
            if read_summary(target) is None or read_summary(target).get("status") not in FINISHED:
                summary = write_derived(run_dir, derived, target)
                self.emit("end", {"plan": derived, "summary": summary, "seconds": 0.0})


def _metrics_rows(run_dir: Path) -> list[dict[str, Any]] | None:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    from cnnlab.engine.run import read_metrics

    return read_metrics(path)


def set_threads(threads: int | None) -> None:
    """Limit torch's intra-op threads so several workers share the cores."""
    if not threads:
        return
    import torch

    torch.set_num_threads(max(1, int(threads)))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
