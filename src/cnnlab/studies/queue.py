"""The study queue on optuna: explicit runs enqueued, popped by workers, reported back.

Optuna is used as a durable, multi-process queue and store, not as a sampler:
the runner expands the spec itself and enqueues one trial per run with
``enqueue_trial({"key": key}, skip_if_exists=True)``; the full plan travels in
the trial's user attributes, so a worker on another machine needs nothing but
the storage URL and the study name. ``study.ask()`` pops a waiting trial
(never GridSampler, which skips and duplicates points under parallel workers).

Liveness: a worker records a heartbeat for the trial it trains; a trial whose
heartbeat goes stale is failed and re-enqueued by optuna's
``RetryHeartbeatStaleTrialCallback`` (bounded ``max_retry``), and the next
worker resumes it from its checkpoint. On one machine a dead worker is noticed
at once (its pid is gone), without waiting for the grace period.

Trial states: completed run -> COMPLETE (value = the spec's metric),
diverged run -> PRUNED (a result, never retried), error -> FAIL (re-enqueued
a bounded number of times with the same retry history as stale trials).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import StudyError
from cnnlab.locks import FileLock
from cnnlab.studies.spec import RunPlan, metric_direction, metric_value

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("cnnlab.studies")

DEFAULT_HEARTBEAT = 10  # seconds between heartbeats of a running trial
ACTIVE = ("WAITING", "RUNNING")


@dataclass(frozen=True)
class Owner:
    """Who holds a trial: enough to tell, on the same machine, whether it is alive."""

    host: str
    pid: int
    token: str

    @classmethod
    def me(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:8])

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "pid": self.pid, "token": self.token}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Owner:
        return cls(raw["host"], int(raw["pid"]), raw["token"])

    def is_dead_here(self) -> bool:
        """True only when the owner ran on this machine and its process is gone."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return _is_zombie(self.pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def describe_url(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for display
        return url.split("@")[-1] if "@" in url else url


def normalize_storage(url: str | os.PathLike[str]) -> str:
    """Accept a SQLAlchemy URL, or a path to a SQLite file (``study.db``)."""
    text = os.fspath(url).strip()
    if "://" not in text:
        if text.endswith((".db", ".sqlite", ".sqlite3")):
            return f"sqlite:///{Path(text).expanduser().resolve()}"
        raise StudyError(
            f"storage {text!r} is not a database URL; use sqlite:///path/study.db or postgresql://user@host/db"
        )
    return text


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other back ends and memory)."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    db = make_url(url).database
    return Path(db) if db and db != ":memory:" else None


NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "afs", "9p", "fuse.sshfs"}
)


def filesystem_type(path: Path, mounts: str | None = None) -> str | None:
    """The file system type of the mount that holds ``path`` (longest /proc/mounts prefix)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target = str(Path(path).resolve())
    best, kind = "", None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def warn_if_network_filesystem(path: Path, mounts: str | None = None) -> str | None:
    """Warn (UserWarning) when an SQLite store lies on NFS/SMB, where its locking is unsafe."""
    import warnings

    kind = filesystem_type(path.parent if not path.exists() else path, mounts)
    if kind in NETWORK_FILESYSTEMS:
        message = (
            f"study store {str(path)!r} is on a network file system ({kind}), where SQLite locking "
            "is unreliable and runs can be lost or duplicated; use --storage postgresql://... for many machines"
        )
        warnings.warn(message, UserWarning, stacklevel=3)
        return message
    return None


def _sqlite_connector(path: Path):
    """Connections to a study's SQLite file, tuned for several local workers.

    Write-ahead logging lets readers (status, other workers) run while one
    process writes, and ``synchronous=NORMAL`` commits without an fsync each
    time while staying safe against a killed process. Busy waits up to a
    minute instead of failing with "database is locked".
    """
    import sqlite3

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return connect


def open_storage(
    url: str,
    *,
    heartbeat_interval: int = DEFAULT_HEARTBEAT,
    grace_period: int | None = None,
    max_retry: int = 2,
):
    """An optuna RDBStorage with heartbeats and bounded retry of stale trials.

    Raises:
        StudyError: the URL is malformed, its driver is missing or the database
            cannot be reached; one line, password hidden.
    """
    import optuna
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = normalize_storage(url)
    shown = describe_url(url)
    db_file = sqlite_path(url)
    if db_file is not None:
        warn_if_network_filesystem(db_file)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StudyError(
            f"storage {shown!r} is not a valid database URL (sqlite:///path/study.db, postgresql://user@host/db)"
        ) from None
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is not None and not path.parent.is_dir():
            raise StudyError(f"storage {shown!r}: folder {str(path.parent)!r} does not exist")
        if path is not None:
            engine_kwargs["creator"] = _sqlite_connector(path)
    else:
        engine_kwargs["pool_pre_ping"] = True
    grace = grace_period if grace_period is not None else 3 * heartbeat_interval
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=callback,
            )
    except Exception as exc:  # noqa: BLE001 - every driver raises its own types
        reason = " ".join(str(exc).split()) or type(exc).__name__
        cause = exc.__cause__ or exc.__context__
        if cause is not None and str(cause).strip():
            reason = " ".join(str(cause).split())
        if (
            isinstance(exc, (ModuleNotFoundError, ImportError))
            or "NoSuchModule" in type(exc).__name__
        ):
            reason = f"database driver not installed ({reason}); for PostgreSQL: pip install 'cnnlab[postgres]'"
        raise StudyError(f"cannot open study storage {shown!r}: {reason[:300]}") from None


def _sampler():
    # Every trial is enqueued with its parameters fixed, so the sampler never
    # samples; a random one costs nothing per ask (TPE would fit models).
    import optuna

    return optuna.samplers.RandomSampler(seed=0)


def trial_key(trial: optuna.trial.FrozenTrial) -> str | None:
    params = trial.system_attrs.get("fixed_params") or trial.params
    key = params.get("key") if isinstance(params, Mapping) else None
    return str(key) if key is not None else None


@dataclass
class Lease:
    """A trial a worker has popped: the plan to run and the trial to report on."""

    trial: Any  # optuna.Trial
    plan: RunPlan
    attempt: int
    owner: Owner

    @property
    def key(self) -> str:
        return self.plan.key


@dataclass
class KeyState:
    """What the queue knows about one run key."""

    waiting: int = 0
    running: int = 0
    # Running trials whose worker was a process of this machine that is gone (killed,
    # crashed): nothing trains them; the next worker's reap puts them back.
    orphaned: int = 0
    states: list[str] = field(default_factory=list)
    error: str | None = None
    gave_up: bool = False

    @property
    def active(self) -> bool:
        return self.waiting + self.running > 0

    @property
    def reported(self) -> bool:
        """Whether a trial of this key holds a result (complete, or pruned as diverged)."""
        return any(s in ("COMPLETE", "PRUNED") for s in self.states)


class StudyQueue:
    """One study's queue in an optuna storage (SQLite file, PostgreSQL, ...)."""

    def __init__(
        self,
        study: optuna.Study,
        url: str,
        *,
        max_retry: int,
        heartbeat_interval: int,
        grace_period: int | None = None,
    ) -> None:
        self.study = study
        self.url = url
        self.max_retry = max_retry
        self.heartbeat_interval = heartbeat_interval
        # Seconds without a heartbeat after which a running trial's worker counts as dead.
        self.grace_period = grace_period or 2 * heartbeat_interval
        db = sqlite_path(url)
        # SQLite cannot lock a row for update, so two processes could pop the
        # same waiting trial; local workers take turns through a file lock.
        self._pop_lock = FileLock(db.with_name(db.name + ".pop.lock")) if db is not None else None

    # -- opening -------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        name: str,
        storage: str,
        *,
        metric: str = "test_acc",
        create: bool = False,
        max_retry: int = 2,
        heartbeat_interval: int = DEFAULT_HEARTBEAT,
        grace_period: int | None = None,
    ) -> StudyQueue:
        """Open (or with ``create``, create) the queue of study ``name``.

        Raises:
            StudyError: bad storage, or no such study in it.
        """
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        url = normalize_storage(storage)
        rdb = open_storage(
            url,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            max_retry=max_retry,
        )
        try:
            if create:
                study = optuna.create_study(
                    study_name=name,
                    storage=rdb,
                    load_if_exists=True,
                    direction=metric_direction(metric),
                    sampler=_sampler(),
                )
            else:
                study = optuna.load_study(study_name=name, storage=rdb, sampler=_sampler())
        except KeyError:
            names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(rdb)) or "none"
            raise StudyError(
                f"no study named {name!r} in storage {describe_url(url)!r} (studies there: {names})"
            ) from None
        except Exception as exc:  # noqa: BLE001 - database errors surface here too
            raise StudyError(
                f"cannot open study {name!r} in storage {describe_url(url)!r}: {' '.join(str(exc).split())[:300]}"
            ) from None
        return cls(
            study,
            url,
            max_retry=max_retry,
            heartbeat_interval=heartbeat_interval,
            grace_period=rdb.grace_period,
        )

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def _storage(self) -> Any:
        # Withdrawing, reaping and heartbeats need the storage itself; optuna keeps it private.
        return self.study._storage

    def set_info(self, **info: Any) -> None:
        """Study-level facts workers need (spec, study folder); stored as user attrs."""
        for key, value in info.items():
            self.study.set_user_attr(key, value)

    def info(self) -> dict[str, Any]:
        return dict(self.study.user_attrs)

    # -- reading ---------------------------------------------------------------------

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def key_states(self) -> dict[str, KeyState]:
        out: dict[str, KeyState] = {}
        for t in self.trials():
            key = trial_key(t)
            if key is None:
                continue
            st = out.setdefault(key, KeyState())
            st.states.append(t.state.name)
            if t.state.name == "WAITING":
                st.waiting += 1
            elif t.state.name == "RUNNING":
                st.running += 1
                raw = t.user_attrs.get("worker")
                if raw and Owner.from_dict(raw).is_dead_here():
                    st.orphaned += 1
            if t.user_attrs.get("error"):
                st.error = t.user_attrs["error"]
            if t.user_attrs.get("gave_up"):
                st.gave_up = True
        return out

    def counts(self) -> dict[str, int]:
        states = [t.state.name for t in self.trials() if trial_key(t) is not None]
        return {s: states.count(s) for s in ("WAITING", "RUNNING", "COMPLETE", "PRUNED", "FAIL")}

    def has_active(self) -> bool:
        return any(t.state.name in ACTIVE for t in self.trials() if trial_key(t) is not None)

    # -- enqueueing ------------------------------------------------------------------

    def enqueue(self, plan: RunPlan, *, again: bool = False) -> None:
        """Queue ``plan``; with ``again``, even if an older (finished or failed) trial has its key."""
        self.study.enqueue_trial(
            {"key": plan.key},
            user_attrs={"plan": plan.to_dict(), "variant": plan.variant, "repeat": plan.repeat},
            skip_if_exists=not again,
        )

    def cancel_waiting(self, keep: set[str]) -> int:
        """Withdraw waiting trials whose key is not in ``keep`` (runs a changed spec dropped)."""
        from optuna.trial import TrialState

        storage = self._storage
        cancelled = 0
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            key = trial_key(t)
            if key in keep:
                continue
            with contextlib.suppress(Exception):
                if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    storage.set_trial_user_attr(t._trial_id, "outcome", "cancelled")
                    storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                    cancelled += 1
        return cancelled

    # -- popping -----------------------------------------------------------------------

    def pop(self, owner: Owner) -> Lease | None:
        """Take the next waiting run, or None when nothing waits."""
        from optuna.trial import TrialState

        with self._popping():
            waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if not waiting:
                return None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize"
                trial = self.study.ask()
        frozen = self._storage.get_trial(trial._trial_id)
        key = (frozen.system_attrs.get("fixed_params") or {}).get("key")
        if key is None or "plan" not in frozen.user_attrs:
            # Another machine took the last waiting trial between our look and our ask:
            # optuna made a fresh, empty trial. Close it; it never counts.
            self.study.tell(trial, state=TrialState.FAIL)
            return None
        # A worker killed between ask() and these two writes leaves a running trial
        # with neither an owner nor a heartbeat: reap() puts it back after the grace period.
        trial.set_user_attr("worker", owner.to_dict())
        self.record_heartbeat(trial)
        history = frozen.system_attrs.get("retry_history", [])
        return Lease(
            trial=trial,
            plan=RunPlan.from_dict(frozen.user_attrs["plan"]),
            attempt=len(history) + 1,
            owner=owner,
        )

    @contextlib.contextmanager
    def _popping(self) -> Iterator[None]:
        if self._pop_lock is None:
            yield
            return
        with self._pop_lock:
            yield

    # -- heartbeats and stale trials -----------------------------------------------

    def record_heartbeat(self, trial: Any) -> None:
        storage = self._storage
        with contextlib.suppress(Exception):
            storage.record_heartbeat(trial._trial_id)

    def heartbeat(self, lease: Lease) -> contextlib.AbstractContextManager[None]:
        """Record heartbeats for the lease's trial while the block runs."""
        return self.heartbeats(lambda: (lease,), name=f"heartbeat-{lease.key}")

    @contextlib.contextmanager
    def heartbeats(
        self, held: Callable[[], Iterable[Lease]], *, name: str = "heartbeats"
    ) -> Iterator[None]:
        """Record heartbeats for every lease ``held()`` returns, while the block runs.

        One thread serves a worker that holds several runs at once (a fused
        group, and the run popped after it that starts the next group); ``held``
        is asked again at each beat, so leases taken or closed meanwhile count.
        """
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_interval):
                for lease in list(held()):
                    self.record_heartbeat(lease.trial)

        thread = threading.Thread(target=beat, name=name, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def reap(self) -> int:
        """Put back the runs of dead workers; returns how many were put back.

        Trials whose heartbeat is stale are failed and re-enqueued by optuna's
        retry callback; trials owned by a process of this machine that no longer
        exists are handled the same way at once.
        """
        import optuna
        from optuna.trial import TrialState

        reaped = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            before = self.counts()["FAIL"]
            optuna.storages.fail_stale_trials(self.study)
            reaped += self.counts()["FAIL"] - before
        storage = self._storage
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            raw = t.user_attrs.get("worker")
            if not raw:
                reaped += self._reap_unclaimed(t)
                continue
            owner = Owner.from_dict(raw)
            if not owner.is_dead_here():
                continue
            try:
                storage.set_trial_user_attr(t._trial_id, "outcome", "worker died")
                if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            self._requeue(storage.get_trial(t._trial_id), count=True)
            reaped += 1
        if reaped:
            log.info("put back %d run(s) of workers that stopped", reaped)
        return reaped

    def _reap_unclaimed(self, trial: optuna.trial.FrozenTrial) -> int:
        """Put back a run taken by a worker that died before it wrote its name; 1 if it did.

        ``pop`` marks the trial running, then names its worker and beats once;
        a worker killed in between leaves a trial that no heartbeat will ever
        make stale and no owner check can clear, and every later worker would
        wait for it forever. It is put back once it is older than the grace
        period (a live worker names itself within milliseconds), without
        counting against the run's retries: the run never started.
        """
        import optuna
        from optuna.trial import TrialState

        started = trial.datetime_start
        if started is None or (datetime.now() - started).total_seconds() < self.grace_period:
            return 0
        cancelled = trial.user_attrs.get("outcome") == "cancelled"  # cancel_waiting's, cut short
        try:
            if not cancelled:
                self._storage.set_trial_user_attr(
                    trial._trial_id, "outcome", "worker died while popping"
                )
            if not self._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                return 0
        except optuna.exceptions.UpdateFinishedTrialError:
            return 0
        if not cancelled and trial_key(trial) is not None and "plan" in trial.user_attrs:
            self._requeue(self._storage.get_trial(trial._trial_id), count=False)
        return 1

    def _requeue(self, trial: optuna.trial.FrozenTrial, *, count: bool) -> bool:
        """A new waiting trial for the same run; False when the retry budget is spent."""
        import optuna

        system_attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
        history = list(system_attrs["retry_history"])
        if count:
            history.append(trial.number)
            if len(history) > self.max_retry:
                return False
        system_attrs["retry_history"] = history
        user_attrs = {
            k: v for k, v in trial.user_attrs.items() if k in ("plan", "variant", "repeat")
        }
        self.study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING,
                user_attrs=user_attrs,
                system_attrs=system_attrs,
            )
        )
        return True

    # -- reporting -------------------------------------------------------------------

    def complete(
        self,
        lease: Lease,
        summary: Mapping[str, Any],
        *,
        outcome: str,
        metric: str,
        metrics: list | None = None,
    ) -> None:
        """Report a finished run: COMPLETE with the metric, or PRUNED when it diverged."""
        from optuna.trial import TrialState

        trial = lease.trial
        trial.set_user_attr("outcome", outcome)
        if outcome == "trained":
            # The database holds the result too, so a study can be rebuilt where
            # workers did not share the study folder.
            trial.set_user_attr("result", {"summary": dict(summary), "metrics": metrics})
        value = metric_value(summary, metric)
        if summary.get("status") == "completed" and value is not None and math.isfinite(value):
            self._tell(trial, values=value)
        else:
            self._tell(trial, state=TrialState.PRUNED)

    def fail(self, lease: Lease, error: str, *, retry: bool = True) -> bool:
        """Report an error; re-enqueue unless the budget is spent. Returns whether it was re-enqueued."""
        from optuna.trial import TrialState

        trial = lease.trial
        trial.set_user_attr("outcome", "error")
        trial.set_user_attr("error", error[:2000])
        requeued = False
        if retry:
            frozen = self._storage.get_trial(trial._trial_id)
            requeued = self._requeue(frozen, count=True)
        if not requeued:
            trial.set_user_attr("gave_up", True)
        self._tell(trial, state=TrialState.FAIL)
        return requeued

    def release(self, lease: Lease, outcome: str, *, requeue: bool | None = None) -> None:
        """Give a run back untouched.

        Args:
            lease: the popped run.
            outcome: why, recorded on the trial ("interrupted", "duplicate", "returned").
            requeue: queue the run again, without counting a retry; by default only
                when ``outcome`` is "interrupted" (a duplicate has its other trial).
        """
        from optuna.trial import TrialState

        lease.trial.set_user_attr("outcome", outcome)
        if requeue if requeue is not None else outcome == "interrupted":
            frozen = self._storage.get_trial(lease.trial._trial_id)
            self._requeue(frozen, count=False)
        self._tell(lease.trial, state=TrialState.FAIL)

    def _tell(self, trial: Any, **kwargs: Any) -> None:
        import optuna

        try:
            self.study.tell(trial, **kwargs)
        except optuna.exceptions.UpdateFinishedTrialError:
            # The trial was declared dead (stale heartbeat) while we worked; the run
            # folder still holds our result, which is what counts.
            log.warning(
                "trial %s was already closed by another process; its run folder holds the result",
                trial.number,
            )
        except ValueError as exc:
            if "finished" not in str(exc).lower():
                raise
            log.warning("trial %s was already closed: %s", trial.number, exc)


def wait_until(predicate, timeout: float, interval: float = 0.5) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (small helper for loops and tests)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
