"""A study worker: pop a run, train it (or resume it), report, repeat.

The one step that trains is :func:`train_plan` ("run one config"), taken as
``run_fn``. With fusing on (the spec's ``fuse: auto``), a worker pops up to N
runs that differ only in seed, lr, momentum or weight decay and trains them as
one fused group (:func:`train_plans`, :mod:`cnnlab.engine.fused`), N from the
device's memory estimate; :func:`admit` decides, run by run, what joins the
group. Everything else here is bookkeeping that makes a study safe to kill and
to share:

- a run is trained under a file lock, so it never trains twice at once;
- a run whose folder already holds a finished summary is reported, not retrained;
- a run is resumed from its own checkpoint when a previous worker died, alone
  (never as part of a group, whose members would have to stand at one point);
- a diverged run is a result; an error is retried ``max_retries`` times, then
  recorded in the run folder as ``failed`` with its error.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from cnnlab.config import DataConfig, RunConfig
from cnnlab.errors import CheckpointError, CnnlabError, StudyError
from cnnlab.locks import FileLock
from cnnlab.studies.derive import source_ready, write_derived
from cnnlab.studies.folder import (
    FINISHED,
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


# -- fusing -------------------------------------------------------------------------

FuseMode = Literal["auto", "off"]
FUSE_MODES: tuple[str, ...] = get_args(FuseMode)


def fuse_mode(value: str, *, what: str = "fuse") -> FuseMode:
    """Check a ``fuse`` setting (``auto`` or ``off``); ``what`` names it in the error.

    Raises:
        StudyError: one line naming the bad value and the allowed ones.
    """
    text = str(value).strip().lower()
    if text not in FUSE_MODES:
        raise StudyError(
            f"{what} {value!r} is not allowed; use auto (train fusable runs together) or off"
        )
    return text  # type: ignore[return-value]


def fuse_key(config: RunConfig) -> Hashable | None:
    """:func:`cnnlab.engine.fused.fusable_key` (torch is imported only when a study fuses)."""
    from cnnlab.engine.fused import fusable_key

    return fusable_key(config)


def group_size(config: RunConfig, data: DataCache, share: float = 1.0) -> int:
    """How many runs like ``config`` one fused group takes on its device (memory estimate).

    ``share``: the fraction of the device this worker may fill, when several
    workers share it (see :func:`cnnlab.engine.fused.group_size_for`).
    """
    from cnnlab.engine.fused import group_size_for

    return group_size_for(config, splits=data.get(config.data), share=share)


def train_plans(
    plans: Sequence[RunPlan],
    run_dirs: Sequence[Path],
    *,
    device: str | None = None,
    data: DataCache | None = None,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Train planned runs as one fused group (fresh, or ``resume`` members stopped
    together); one summary per run, in order.

    A diverged member comes back with status ``diverged`` like a separate run.
    """
    from cnnlab.engine.fused import train_group

    configs = [with_device(p.config, device) for p in plans]
    splits = data.get(configs[0].data) if data is not None else None
    runs = train_group(configs, run_dirs, splits=splits, resume=resume)
    return [dict(run.summary) for run in runs]


GroupFn = Callable[..., Sequence[Mapping[str, Any]]]


@dataclass(frozen=True)
class Fusing:
    """How a worker fuses: which runs group together, how many at once, what trains a group.

    The defaults are the engine's; tests replace them to check the queue logic
    without training.
    """

    key: Callable[[RunConfig], Hashable | None] = fuse_key
    size: Callable[[RunConfig, DataCache], int] = group_size
    train: GroupFn = train_plans


RunState = Literal["fresh", "started", "stopped", "finished", "busy"]
Admit = Literal["join", "alone", "carry", "reuse", "duplicate"]


def run_state(run_dir: Path) -> RunState:
    """Whether a run folder is untouched, was started (a previous worker died), was
    ``stopped`` by Ctrl-C as a member of a fused group (:func:`stop_point`), or finished."""
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status") in FINISHED:
        return "finished"
    if stop_point(summary) is not None:
        return "stopped"
    return "started" if (run_dir / "config.yaml").is_file() else "fresh"


def stop_point(summary: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """Where a fused member interrupted by Ctrl-C stopped: (epochs completed, steps).

    Its checkpoint is at that point, and so are its group's other members', so they
    resume together in the fused engine and end as the uninterrupted group would;
    resumed alone by the single-run trainer they would match it only up to rounding.
    """
    if not summary or summary.get("status") != "interrupted" or not summary.get("fused"):
        return None
    epochs, steps = summary.get("epochs_completed"), summary.get("steps")
    if not isinstance(epochs, int) or not isinstance(steps, int):
        return None
    return epochs, steps


@dataclass(frozen=True)
class ResumeKey:
    """The fusable key of stopped members: only members stopped at one point resume together."""

    key: Hashable
    point: tuple[int, int]


def admit(group_key: Hashable | None, joined: int, key: Hashable | None, state: RunState) -> Admit:
    """What a worker forming a fused group does with the next run it popped.

    Args:
        group_key: the fusable key of the group's members (None: cannot fuse).
        joined: members so far; 0 while the first is sought.
        key: the popped run's fusable key.
        state: its folder (``busy``: another local worker holds its lock).

    Returns:
        ``join`` the group (a ``stopped`` run joins stopped runs of its key and
        point, which resume together); train it ``alone`` (a started run resumes
        from its own checkpoint, and ends the group so it is not held long); ``carry`` it over
        as the start of the next group (its key differs); ``reuse`` its finished
        result; or give it back as a ``duplicate``.
    """
    if state == "busy":
        return "duplicate"
    if state == "finished":
        return "reuse"
    if joined and (group_key is None or key != group_key):
        return "carry"
    if state == "started" or (state == "stopped" and key is None):
        return "alone"
    return "join"


def group_closed(action: Admit, joined: int, size: int) -> bool:
    """Whether to stop popping: the group is full, or a run that cannot join ended it."""
    return action in ("alone", "carry") or joined >= size


# Without loading the data a planner does not know a training set's size; runs
# without a subset are costed as if they had this many images, so runs on
# unequal data sets compare by epochs and batch size alone.
NOMINAL_TRAIN_IMAGES = 50_000


def sequential_steps(config: RunConfig) -> int:
    """Optimizer steps a run takes one after another: epochs x batches per epoch.

    A fused group takes as many steps as one member, however many members it
    has, and on a GPU a small network's step costs about the same at batch 2
    as at 256 (kernel launches, not arithmetic), so this, not the number of
    examples, says how long a group trains there: LeNet at batch 2 takes 128
    times as long as at batch 256.
    """
    images = config.data.subset or NOMINAL_TRAIN_IMAGES
    return config.train.epochs * math.ceil(images / config.train.batch_size)


def work_order(
    plans: Sequence[RunPlan],
    key: Callable[[RunPlan], Hashable | None],
    steps: Callable[[RunPlan], float] = lambda plan: sequential_steps(plan.config),
) -> list[RunPlan]:
    """``plans`` in the order to queue them: longest work first, fusable runs side by side.

    Runs with one fusable key are one unit, kept together so that FIFO popping
    forms full groups; a run that cannot fuse (key None) is a unit of its own.
    Units go longest first (``steps``, most first; ties keep the order of first
    appearance): a long group started last would decide the study's wall time
    while the other workers sit idle, whereas started first it overlaps
    everything else. With one worker the total time is the same either way.
    """
    first: dict[Hashable, int] = {}
    slots = []
    for i, plan in enumerate(plans):
        k = key(plan)
        slot = ("alone", i) if k is None else ("key", k)
        first.setdefault(slot, i)
        slots.append(first[slot])
    cost: dict[int, float] = {}
    for i, plan in enumerate(plans):
        cost[slots[i]] = max(cost.get(slots[i], 0.0), float(steps(plan)))
    order = sorted(range(len(plans)), key=lambda i: (-cost[slots[i]], slots[i]))
    return [plans[i] for i in order]


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
    # the run keys of each fused group trained (groups of two or more)
    groups: list[list[str]] = field(default_factory=list)


RunFn = Callable[..., Mapping[str, Any]]


@dataclass
class _Batch:
    """What a fusing worker holds at once: a group, runs to resume alone, the next group's first run."""

    key: Hashable | None = None
    size: int = 1
    members: list[tuple[Lease, Path]] = field(default_factory=list)
    alone: list[tuple[Lease, Path]] = field(default_factory=list)
    carry: Lease | None = None
    locks: list[FileLock] = field(default_factory=list)


class Worker:
    """Pops runs from one study's queue until none is waiting or running.

    With ``fusing``, runs that can train as one fused group are popped and
    trained together; without it (or for runs that cannot fuse) one at a time.
    """

    def __init__(
        self,
        queue: StudyQueue,
        folder: StudyFolder,
        *,
        metric: str = "test_acc",
        run_fn: RunFn = train_plan,
        fusing: Fusing | None = None,
        device: str | None = None,
        on_event: EventFn | None = None,
        poll_seconds: float = 2.0,
        wait_for_others: bool = True,
    ) -> None:
        self.queue = queue
        self.folder = folder
        self.metric = metric
        self.run_fn = run_fn
        self.fusing = fusing
        self.device = device
        self.emit = on_event or (lambda event, info: None)
        self.poll_seconds = poll_seconds
        self.wait_for_others = wait_for_others
        self.owner = Owner.me()
        self.data = DataCache()
        self.stats = WorkerStats()
        # Leases popped and not yet reported; one heartbeat thread keeps them all alive.
        self._held: list[Lease] = []
        self._closed = 0
        self._sizes: dict[Hashable, int] = {}

    def run(self, max_runs: int | None = None) -> WorkerStats:
        """Work until the queue is drained (or about ``max_runs`` runs were handled;
        a fused group is never cut short)."""
        last_reap = -math.inf
        carry: Lease | None = None
        beating = (
            self.queue.heartbeats(lambda: self._held)
            if self.fusing is not None
            else contextlib.nullcontext()
        )
        with beating:
            try:
                while max_runs is None or self._closed < max_runs:
                    if time.monotonic() - last_reap >= self.queue.heartbeat_interval:
                        # Dead workers' runs go back to the queue; checking once per
                        # heartbeat interval keeps the store's load per run low.
                        self.queue.reap()
                        last_reap = time.monotonic()
                    lease, carry = carry or self._pop(), None
                    if lease is None:
                        # Runs of other workers may still fail and come back; wait for them.
                        if not self.wait_for_others or not self.queue.has_active():
                            break
                        time.sleep(self.poll_seconds)
                        continue
                    if self.fusing is None:
                        self.handle(lease)
                    else:
                        carry = self._handle_group(lease)
            except KeyboardInterrupt:
                self._give_back("interrupted")
                raise
            self._give_back("returned")
        return self.stats

    def _pop(self) -> Lease | None:
        lease = self.queue.pop(self.owner)
        if lease is not None and self.fusing is not None:
            self._held.append(lease)
        return lease

    def _close(self, lease: Lease) -> None:
        """A lease was reported (completed, failed or released): stop beating for it."""
        self._closed += 1
        with contextlib.suppress(ValueError):
            self._held.remove(lease)

    def _give_back(self, outcome: str) -> None:
        """Queue again, uncounted, the runs still held (interrupted, or popped past ``max_runs``)."""
        for lease in list(self._held):
            self.queue.release(lease, outcome, requeue=True)
            self._close(lease)

    # -- one run at a time ---------------------------------------------------------------

    def handle(self, lease: Lease) -> None:
        plan = lease.plan
        run_dir = self.folder.run_dir(plan.key)
        lock = self.folder.run_lock(plan.key)
        if not lock.acquire():
            # Another local worker trains this run right now (a duplicate trial).
            self._duplicate(lease)
            return
        try:
            with self.queue.heartbeat(lease):
                self._run_locked(lease, run_dir)
        finally:
            lock.release()

    def _run_locked(self, lease: Lease, run_dir: Path) -> None:
        plan = lease.plan
        if run_state(run_dir) == "finished":
            self._reuse(lease, run_dir)
            return
        self._start(lease, run_dir)
        t0 = time.perf_counter()
        try:
            summary = dict(self.run_fn(plan, run_dir, device=self.device, data=self.data))
        except KeyboardInterrupt:
            self._release(lease, "interrupted")
            raise
        except Exception as exc:  # noqa: BLE001 - a run's bug must not stop the study
            error = _one_line(exc)
            log.info(
                "run %s (%s, repeat %d) failed: %s", plan.key, plan.variant, plan.repeat, error
            )
            _log_traceback(run_dir, lease.attempt)
            self._error(lease, run_dir, error)
            return
        self._finish(lease, run_dir, summary, time.perf_counter() - t0)

    # -- fused groups ----------------------------------------------------------------------

    def _handle_group(self, first: Lease) -> Lease | None:
        """Pop a group that starts with ``first``, train it; returns the run that starts the next."""
        batch = _Batch()
        try:
            self._collect(first, batch)
            if len(batch.members) == 1:
                self._run_locked(*batch.members[0])
            elif batch.members:
                self._run_group(batch.members, batch.key)
            for lease, run_dir in batch.alone:
                self._run_locked(lease, run_dir)
        finally:
            for lock in batch.locks:
                lock.release()
        return batch.carry

    def _collect(self, lease: Lease | None, batch: _Batch) -> None:
        """Pop runs into ``batch`` until the group is full, ended, or nothing waits."""
        assert self.fusing is not None
        while lease is not None:
            config = with_device(lease.plan.config, self.device)
            key = self.fusing.key(config)
            run_dir = self.folder.run_dir(lease.key)
            lock = self.folder.run_lock(lease.key)
            state: RunState = run_state(run_dir) if lock.acquire() else "busy"
            if state == "stopped" and key is not None:
                key = ResumeKey(key, stop_point(read_summary(run_dir)))
            action = admit(batch.key, len(batch.members), key, state)
            if action == "join":
                if not batch.members:
                    batch.key, batch.size = key, self._group_size(key, config)
                batch.members.append((lease, run_dir))
            elif action == "alone":
                batch.alone.append((lease, run_dir))
            elif action == "carry":
                batch.carry = lease
            elif action == "reuse":
                self._reuse(lease, run_dir)
            else:
                self._duplicate(lease)
            if action in ("join", "alone"):
                batch.locks.append(lock)
            else:
                lock.release()
            if group_closed(action, len(batch.members), batch.size):
                return
            lease = self._pop()

    def _group_size(self, key: Hashable | None, config: RunConfig) -> int:
        if key is None:
            return 1
        if key not in self._sizes:
            assert self.fusing is not None
            try:
                size = max(1, int(self.fusing.size(config, self.data)))
            except Exception as exc:  # noqa: BLE001 - e.g. the data cannot be loaded
                # Train these runs one by one: the single-run path reports the
                # error per run, with its retries.
                log.warning("no fused groups for %s: %s", config.short(), _one_line(exc))
                size = 1
            self._sizes[key] = size
        return self._sizes[key]

    def _run_group(self, members: list[tuple[Lease, Path]], key: Hashable | None = None) -> None:
        """Train runs as one fused group (fresh, or stopped together: ``key`` a
        :class:`ResumeKey`); each member's result reports its own lease."""
        import torch  # loaded already by whatever trains the group

        assert self.fusing is not None
        for lease, run_dir in members:
            self._start(lease, run_dir, group=len(members))
        plans = [lease.plan for lease, _ in members]
        t0 = time.perf_counter()
        resume = isinstance(key, ResumeKey)
        try:
            summaries = list(
                self.fusing.train(
                    plans,
                    [run_dir for _, run_dir in members],
                    device=self.device,
                    data=self.data,
                    resume=resume,
                )
            )
            if len(summaries) != len(members):
                raise RuntimeError(
                    f"fused group of {len(members)} returned {len(summaries)} result(s)"
                )
        except Exception as exc:  # noqa: BLE001 - the members are retried like single runs
            if isinstance(exc, torch.OutOfMemoryError) and len(members) > 1:
                self._shrink(members, key, exc)
                return
            if resume and isinstance(exc, CnnlabError):
                # Their checkpoints cannot continue as one group (say one was replaced):
                # each resumes alone, as a dead worker's run does.
                log.warning("stopped runs resume one by one: %s", _one_line(exc))
                for lease, run_dir in members:
                    self._run_locked(lease, run_dir)
                return
            error = _one_line(exc)
            log.info("fused group of %d runs (%s, ...) failed: %s", len(plans), plans[0].key, error)
            for lease, run_dir in members:
                _log_traceback(run_dir, lease.attempt)
                self._error(lease, run_dir, error)
            return
        seconds = time.perf_counter() - t0
        self.stats.groups.append([plan.key for plan in plans])
        for (lease, run_dir), summary in zip(members, summaries):
            self._finish(lease, run_dir, dict(summary), seconds)

    def _shrink(
        self, members: list[tuple[Lease, Path]], key: Hashable | None, exc: BaseException
    ) -> None:
        """A group ran out of device memory: halve this kind's group size and queue the
        members again, uncounted (the estimate was wrong, not the runs).

        Without this every retry would build a group of the same size and fail the
        same way, until all its runs were recorded failed.
        """
        size = max(1, len(members) // 2)
        for kind in {key, getattr(key, "key", key)} - {None}:  # stopped runs start again fresh
            self._sizes[kind] = size
        log.warning(
            "fused group of %d ran out of device memory (%s); trying groups of %d",
            len(members),
            _one_line(exc),
            size,
        )
        import torch

        gc.collect()  # the failed group's tensors, before the smaller groups size themselves
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        for lease, run_dir in members:
            _clear_run(run_dir)
            self.queue.release(lease, "out of memory", requeue=True)
            self._close(lease)
            self.emit(
                "retry",
                {
                    "plan": lease.plan,
                    "error": f"out of memory in a group of {len(members)}",
                    "attempt": lease.attempt,
                },
            )

    # -- reporting one run -----------------------------------------------------------------

    def _start(self, lease: Lease, run_dir: Path, group: int = 1) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_study_json(run_dir, lease.plan)
        info = {"plan": lease.plan, "attempt": lease.attempt, "owner": self.owner}
        self.emit("start", {**info, "group": group} if group > 1 else info)

    def _finish(self, lease: Lease, run_dir: Path, summary: dict[str, Any], seconds: float) -> None:
        """Report a trained run; a status other than completed/diverged is an error."""
        plan = lease.plan
        if summary.get("status") not in FINISHED:
            error = summary.get("error") or f"run ended with status {summary.get('status')!r}"
            self._error(lease, run_dir, _one_line(RuntimeError(error)))
            return
        self.stats.trained += 1
        self.stats.keys.append(plan.key)
        self.queue.complete(
            lease, summary, outcome="trained", metric=self.metric, metrics=_metrics_rows(run_dir)
        )
        self._close(lease)
        self._write_derived(plan, run_dir)
        self.emit("end", {"plan": plan, "summary": summary, "seconds": seconds})

    def _error(self, lease: Lease, run_dir: Path, error: str) -> None:
        """Retry a run that raised, or record it as failed once its retries are spent."""
        plan = lease.plan
        if self.queue.fail(lease, error):
            self.stats.retried += 1
            self._close(lease)
            self.emit("retry", {"plan": plan, "error": error, "attempt": lease.attempt})
        else:
            self.stats.failed += 1
            self._close(lease)
            write_failed(run_dir, plan, error, attempts=lease.attempt)
            self.emit("failed", {"plan": plan, "error": error, "attempt": lease.attempt})

    def _reuse(self, lease: Lease, run_dir: Path) -> None:
        self.stats.reused += 1
        self.queue.complete(
            lease, read_summary(run_dir) or {}, outcome="reused", metric=self.metric
        )
        self._close(lease)
        self._write_derived(lease.plan, run_dir)
        self.emit("skip", {"plan": lease.plan, "reason": "already finished"})

    def _duplicate(self, lease: Lease) -> None:
        self.stats.duplicates += 1
        self._release(lease, "duplicate")
        self.emit("skip", {"plan": lease.plan, "reason": "being trained by another worker"})

    def _release(self, lease: Lease, outcome: str) -> None:
        self.queue.release(lease, outcome)
        self._close(lease)

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
