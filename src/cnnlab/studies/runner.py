"""Run a study: plan, enqueue what is missing, drive workers, combine the best.

:func:`run_study` is idempotent. It expands the spec, moves run folders the
spec no longer has to ``archive/`` (and back when it has them again), answers
derived runs whose source finished, withdraws waiting runs the spec dropped,
enqueues every run that is neither finished nor queued, and then works the
queue with local workers (in this process for one worker, ``cnnlab study
worker`` subprocesses for more). Re-running it after a crash, a kill or a
spec change therefore trains exactly what is missing.

Runs are enqueued longest first (:func:`~cnnlab.studies.worker.work_order`),
and with ``fuse: auto`` runs that can train as one fused group (equal configs
but for seed, lr, momentum and weight decay) next to each other, so a worker
popping in order fills whole groups. :func:`default_workers` picks one
worker per GPU when runs fuse and several when they do not; workers that
share a device plan their fused groups in their share of its memory.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cnnlab.config import RunConfig
from cnnlab.errors import StudyError
from cnnlab.studies.derive import source_ready, write_derived
from cnnlab.studies.folder import (
    FINISHED,
    StudyFolder,
    find_study,
    read_json,
    read_summary,
    sync_archive,
    write_json,
)
from cnnlab.studies.queue import DEFAULT_HEARTBEAT, KeyState, StudyQueue, describe_url, trial_key
from cnnlab.studies.spec import (
    RunPlan,
    StudySpec,
    apply_settings,
    build_config,
    expand,
    factor_diff,
    metric_direction,
    metric_value,
    run_key,
    trained_plans,
)
from cnnlab.studies.worker import (
    EventFn,
    FuseMode,
    Fusing,
    RunFn,
    Worker,
    fuse_key,
    fuse_mode,
    group_size,
    set_threads,
    train_plan,
    with_device,
    work_order,
)

log = logging.getLogger("cnnlab.studies")

COMBINED = "best"  # variant label of the best-combination runs


# -- status --------------------------------------------------------------------------


@dataclass
class StudyStatus:
    """Counts of a study's runs, from the run folders first and the queue second."""

    name: str
    path: Path
    total: int = 0
    done: int = 0
    diverged: int = 0
    failed: int = 0
    running: int = 0
    pending: int = 0
    derived: int = 0
    eta_seconds: float | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.running == 0 and self.pending == 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}

    def line(self) -> str:
        parts = [
            f"{self.done}/{self.total} done",
            f"{self.running} running",
            f"{self.pending} pending",
            f"{self.failed} failed",
            f"{self.diverged} diverged",
        ]
        if self.eta_seconds is not None and not self.finished:
            parts.append(f"ETA {format_seconds(self.eta_seconds)}")
        return ", ".join(parts)


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def study_status(
    folder: StudyFolder, queue: StudyQueue | None = None, plans: list[RunPlan] | None = None
) -> StudyStatus:
    """Done / running / pending / failed / diverged counts and an ETA.

    ``done`` counts completed and diverged runs (a diverged run is a result).
    """
    spec = folder.read_spec()
    plans = plans if plans is not None else current_plans(spec, folder)
    states = queue.key_states() if queue is not None else {}
    st = StudyStatus(name=spec.name, path=folder.path, total=len(plans))
    seconds: list[float] = []
    to_train = 0  # pending or running runs that take training time
    for plan in plans:
        summary = read_summary(folder.run_dir(plan.key)) or {}
        status = summary.get("status")
        qs = states.get(plan.key)
        if status in FINISHED:
            st.done += 1
            st.diverged += status == "diverged"
            st.derived += plan.derived_from is not None
            t = (summary.get("time") or {}).get("train_seconds")
            if plan.derived_from is None and t:
                seconds.append(float(t))
        elif qs is not None and qs.reported:
            # Trained by a worker that wrote into another folder; the store holds the result.
            st.done += 1
            st.diverged += "COMPLETE" not in qs.states
        elif qs is not None and qs.running > qs.orphaned:
            st.running += 1
            to_train += 1
        elif status == "failed" and not (qs is not None and qs.waiting):
            st.failed += 1
            st.errors.append(
                {
                    "key": plan.key,
                    "variant": plan.variant,
                    "repeat": plan.repeat,
                    "error": summary.get("error"),
                }
            )
        else:
            st.pending += 1
            to_train += plan.derived_from is None  # a derived run is read off curves, not trained
    if seconds:
        st.eta_seconds = to_train * (sum(seconds) / len(seconds)) / max(1, st.running)
    return st


# -- planning ------------------------------------------------------------------------


def combine_settings(
    spec: StudySpec, folder: StudyFolder, plans: list[RunPlan]
) -> dict[str, Any] | None:
    """Each ``vary`` factor's best value (by the mean of the spec's metric over repeats).

    Values with a diverged repeat are not chosen while another value has none;
    a factor whose best value is the base's contributes nothing.

    Returns:
        ``{"settings": {dotted key: value}, "choices": {factor: label}}``, or
        None when no factor has a finished result.
    """
    maximize = metric_direction(spec.metric) == "maximize"
    by_variant: dict[str, list[float]] = {}
    diverged: Counter[str] = Counter()
    for plan in plans:
        summary = read_summary(folder.run_dir(plan.key)) or {}
        if summary.get("status") == "diverged":
            diverged[plan.variant] += 1
        value = metric_value(summary, spec.metric) if summary.get("status") == "completed" else None
        if value is not None:
            by_variant.setdefault(plan.variant, []).append(value)
    if not by_variant:
        return None
    settings: dict[str, Any] = {}
    choices: dict[str, str] = {}
    base_tree = spec.base_config().to_dict()
    for key, values in spec.vary.items():
        candidates = [("base", {})] + [
            (f"{key}={fv.text()}", {key: fv.value, **fv.with_}) for fv in values
        ]
        scored = [
            (diverged[label] > 0, sum(by_variant[label]) / len(by_variant[label]), label, s)
            for label, s in candidates
            if by_variant.get(label)
        ]
        if not scored:
            continue
        scored.sort(key=lambda t: (t[0], -t[1] if maximize else t[1]))
        _, _, label, chosen = scored[0]
        choices[key] = label
        settings.update(chosen)
    settings = {k: v for k, v in settings.items() if _get_dotted(base_tree, k) != v}
    return {"settings": settings, "choices": choices}


def _get_dotted(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return object()
        node = node[part]
    return node


def _variant_key(config: RunConfig, base: RunConfig) -> str:
    """The run key with the seed and ``test_every_epoch`` at the base's values.

    Which variant a config is: the repeats differ only in seed, and the
    longest run of an epochs factor measures test accuracy every epoch (its
    curves answer the shorter runs) yet is the same variant.
    """
    train = config.train.model_copy(
        update={"seed": base.train.seed, "test_every_epoch": base.train.test_every_epoch}
    )
    return run_key(config.model_copy(update={"train": train}))


def combine_plans(
    spec: StudySpec, folder: StudyFolder, plans: list[RunPlan], settings: Mapping[str, Any]
) -> list[RunPlan]:
    """Plans of the best-combination variant; none when it equals the base or a planned variant."""
    base = spec.base_config()
    try:
        config = build_config(apply_settings(base.to_dict(), settings))
    except Exception as exc:  # noqa: BLE001 - combined factors can clash (e.g. an option of another model)
        log.warning("best combination %s is not a valid config: %s", settings, exc)
        return []
    existing = {_variant_key(p.config, base) for p in plans}
    if _variant_key(config, base) in existing:
        return []
    out = []
    for r in range(spec.repeats):
        seed = config.train.seed + r
        cfg = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
        out.append(
            RunPlan(
                study=spec.name,
                key=run_key(cfg),
                variant=COMBINED,
                factors=factor_diff(cfg, base),
                factor=None,
                repeat=r,
                seed=seed,
                config=cfg,
            )
        )
    return out


def _combine_file(folder: StudyFolder) -> Path:
    return folder.path / "combine.json"


def _plans_id(plans: list[RunPlan]) -> str:
    """A fingerprint of the runs a combination was chosen from (their keys)."""
    import hashlib

    blob = ",".join(sorted(p.key for p in plans if p.variant != COMBINED))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def current_plans(spec: StudySpec, folder: StudyFolder) -> list[RunPlan]:
    """The spec's runs, plus the best combination's when one has been chosen.

    A choice made from the runs of an earlier version of the spec (``combine.json``
    records which) is not used: its "best" would pair the old results' values with
    the new base and train runs the study chooses again anyway once its own runs finish.
    """
    plans = expand(spec)
    if spec.combine:
        chosen = read_json(_combine_file(folder))
        current = _plans_id(plans)
        if (
            chosen
            and chosen.get("settings") is not None
            and chosen.get("plans", current) == current
        ):
            plans = plans + combine_plans(spec, folder, plans, chosen["settings"])
    return plans


# -- running ---------------------------------------------------------------------------


def study_fusing(
    mode: FuseMode, fusing: Fusing | None = None, run_fn: RunFn = train_plan, share: float = 1.0
) -> Fusing | None:
    """The fusing policy a study's workers use, or None when they train runs one by one.

    ``fuse: off`` turns it off. So does a replaced single-run step (``run_fn``)
    given without a ``fusing`` of its own: the caller wants every run to go
    through that step, and a fused group would not. ``share``: the fraction of
    the device the worker's groups may fill (several workers on one GPU).
    """
    if mode == "off":
        return None
    if fusing is not None:
        return fusing
    if run_fn is not train_plan:
        return None
    return Fusing() if share >= 1 else Fusing(size=functools.partial(group_size, share=share))


MAX_WORKERS_PER_GPU = 4
# What each worker process adds on a GPU besides its runs: the CUDA context,
# cuDNN workspaces and the caching allocator's slack.
PROCESS_OVERHEAD_BYTES = 1 << 30


@dataclass(frozen=True)
class DeviceInfo:
    """What the default worker count depends on."""

    kind: Literal["cpu", "cuda"]
    cores: int
    gpus: int = 0  # GPUs the workers spread over
    free_bytes: int | None = None  # free memory of the fullest of them


def workers_for(info: DeviceInfo, *, member_bytes: int | None = None) -> int:
    """The default number of local workers for runs trained one at a time.

    On a CPU, one per two cores. On GPUs, a single small run leaves its GPU
    mostly idle, waiting on the host between kernels, so up to
    :data:`MAX_WORKERS_PER_GPU` workers per GPU: as many as its free memory
    holds (``member_bytes`` per run plus :data:`PROCESS_OVERHEAD_BYTES` per
    process) and no more than there are CPU cores to drive them. (Fused runs:
    one worker per GPU, see :func:`default_workers`.)
    """
    if info.kind != "cuda" or info.gpus < 1:
        return max(1, info.cores // 2)
    per_gpu = MAX_WORKERS_PER_GPU
    if info.free_bytes is not None and member_bytes:
        per_gpu = min(per_gpu, info.free_bytes // (member_bytes + PROCESS_OVERHEAD_BYTES))
    per_gpu = min(per_gpu, info.cores // info.gpus)
    return info.gpus * max(1, per_gpu)


def fused_share(keys: Sequence[Hashable | None], size_of: Callable[[Hashable], int]) -> float:
    """The fraction of runs that would train in fused groups of two or more.

    ``keys`` are the runs' fusable keys (None: cannot fuse); ``size_of(key)`` is
    the group size the device allows for that key.
    """
    counts = Counter(k for k in keys if k is not None)
    fused = sum(n for k, n in counts.items() if n > 1 and size_of(k) > 1)
    return fused / len(keys) if keys else 0.0


# Runs in a child process: reading free memory creates a CUDA context, which
# would otherwise stay in the runner's process (several hundred MB of the GPU)
# for the study's whole life while the workers train in their own processes.
_FREE_MEMORY_SCRIPT = (
    "import json, sys, torch\n"
    "print(json.dumps([torch.cuda.mem_get_info(int(i))[0] for i in sys.argv[1:]]))\n"
)


def gpu_free_bytes(ids: Sequence[int]) -> list[int]:
    """Free memory of each GPU in ``ids``, read without a CUDA context in this process.

    Falls back to reading it here when the child process fails.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", _FREE_MEMORY_SCRIPT, *map(str, ids)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        values = json.loads(done.stdout.strip().splitlines()[-1])
        if len(values) != len(ids):
            raise ValueError(f"{len(values)} value(s) for {len(ids)} GPU(s)")
        return [int(v) for v in values]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        log.warning("could not read GPU memory in a child process (%s); reading it here", exc)
        import torch

        return [int(torch.cuda.mem_get_info(i)[0]) for i in ids]


def probe_device(device: str | None) -> DeviceInfo:
    """The device the workers will use: CPU, or the GPUs ``device`` names and their free memory."""
    import torch

    cores = os.cpu_count() or 2
    text = device or "auto"
    if text == "cpu" or not text.startswith(("auto", "cuda")) or not torch.cuda.is_available():
        return DeviceInfo("cpu", cores)
    if text.startswith("cuda:"):
        ids = [int(text.split(":", 1)[1])]
    else:
        ids = list(range(torch.cuda.device_count()))
    return DeviceInfo("cuda", cores, len(ids), min(gpu_free_bytes(ids)))


def _engine_group_size(config: Any, free_bytes: int) -> int:
    from cnnlab.engine.fused import group_size_for

    return group_size_for(config, free_bytes=free_bytes)


def _member_bytes(config: Any) -> int:
    from cnnlab.engine.fused import input_of, member_bytes

    return member_bytes(config, *input_of(config, None))


def default_workers(
    device: str | None,
    plans: Sequence[RunPlan] = (),
    fusing: Fusing | None = None,
    *,
    info: DeviceInfo | None = None,
    group_size: Callable[[Any, int], int] = _engine_group_size,
) -> int:
    """The default worker count for ``plans`` on ``device``.

    Runs "fuse" when at least half of them would train in groups of two or more;
    then one worker per GPU, else :func:`workers_for`.

    Args:
        device: the study's device override (None: each run's own, ``auto`` by default).
        plans: the runs to train; they decide whether runs fuse and how big one is.
        fusing: how runs fuse (None: they do not).
        info: the device (default: :func:`probe_device`); tests pass a made-up one.
        group_size: ``(config, free bytes) -> runs per fused group`` on the GPU
            (default: the engine's memory estimate).
    """
    info = info or probe_device(device)
    if info.kind != "cuda":
        return workers_for(info)
    configs = [with_device(p.config, device) for p in plans]
    budget = int((info.free_bytes or 0) * 0.8)
    if fusing is not None and configs:
        keys = [fusing.key(c) for c in configs]
        example = {k: c for k, c in zip(keys, configs) if k is not None}
        sizes: dict[Hashable, int] = {}

        def size_of(key: Hashable) -> int:
            if key not in sizes:
                sizes[key] = group_size(example[key], budget)
            return sizes[key]

        if fused_share(keys, size_of) >= 0.5:
            # One fusing worker per GPU. Several would interleave (without MPS
            # their kernels take turns), which could fill a small-batch group's
            # gaps but could as well stretch the longest group, the study's
            # critical path, by the others' time slices; unmeasured, so not
            # the default (benchmarks/gpu.sh study-shared measures it).
            return info.gpus
    # The biggest run sets how many fit. Runs that differ only in seed, lr or weight
    # decay take the same memory, so one of each fusable key (and momentum or not) is measured.
    distinct = {(fuse_key(c) or run_key(c), c.optim.momentum != 0): c for c in configs}
    biggest = max((_member_bytes(c) for c in distinct.values()), default=None)
    return workers_for(info, member_bytes=biggest)


def _unreported(qs: KeyState | None) -> bool:
    """A finished run folder whose result never reached the queue.

    A worker killed after the trainer wrote a run's summary and before it
    reported the run (plots and checkpoints come in between; a fused group
    writes all its summaries first) leaves the folder finished and the trial
    failed by the reaper, requeued or, once its retries are spent, not. Such a
    run is queued again (or its waiting trial kept) so a worker records the
    folder's result without training ("reused"); otherwise the store would
    never hold it.
    """
    return qs is not None and not qs.reported


@dataclass
class StudyRunner:
    """Drives one study to completion with local workers."""

    spec: StudySpec
    folder: StudyFolder
    queue: StudyQueue
    workers: int = 1
    device: str | None = None
    run_fn: RunFn = train_plan
    fusing: Fusing | None = None
    on_event: EventFn | None = None
    heartbeat_interval: int = DEFAULT_HEARTBEAT
    poll_seconds: float = 2.0
    threads: int | None = None
    _enqueued: Counter[str] = field(default_factory=Counter)

    def emit(self, event: str, info: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event, info)

    def active_fusing(self) -> Fusing | None:
        """How this study fuses runs, or None when it does not.

        Off when the spec says ``fuse: off``; also when a caller replaced the
        single-run step (``run_fn``) without saying how groups train, because a
        fused group would not go through that step.
        """
        return study_fusing(self.spec.fuse, self.fusing, self.run_fn)

    def prepare(self, plans: list[RunPlan]) -> int:
        """Bring folder and queue in line with ``plans``; returns the number of runs queued or running."""
        keys = {p.key for p in plans}
        restored, archived = sync_archive(self.folder, keys)
        if restored or archived:
            self.emit(
                "note",
                {
                    "text": f"{restored} run(s) restored from archive/, {archived} moved to archive/ (not in the spec now)"
                },
            )
        self.queue.reap()
        cancelled = self.queue.cancel_waiting(keys)
        if cancelled:
            self.emit(
                "note", {"text": f"withdrew {cancelled} queued run(s) the spec no longer has"}
            )
        # Results of workers that write into another folder (another machine) count
        # as done here too; otherwise their runs would be queued and trained again.
        pulled = pull_results(self.folder, self.queue, plans)
        if pulled:
            self.emit(
                "note", {"text": f"wrote {pulled} run folder(s) from results held in the store"}
            )
        self.answer_derived(plans)
        states = self.queue.key_states()
        active = 0
        todo: list[tuple[RunPlan, bool]] = []
        for plan in plans:
            if plan.derived_from is not None:
                continue
            summary = read_summary(self.folder.run_dir(plan.key)) or {}
            qs = states.get(plan.key)
            if summary.get("status") in FINISHED and not _unreported(qs):
                continue
            if qs is not None and qs.active:
                active += 1
                continue
            if self._enqueued[plan.key] >= 1 and summary.get("status") == "failed":
                continue  # retried max_retries times in this invocation already
            if self._enqueued[plan.key] >= 2:
                continue
            todo.append((plan, qs is not None))
        again = {plan.key: a for plan, a in todo}
        for plan in self.enqueue_order([plan for plan, _ in todo]):
            self.queue.enqueue(plan, again=again[plan.key])
            self._enqueued[plan.key] += 1
            active += 1
        return active

    def enqueue_order(self, plans: list[RunPlan]) -> list[RunPlan]:
        """The plans in the order to enqueue them: longest first, fusable runs adjacent when fusing."""
        fusing = self.active_fusing()
        if fusing is None:
            return work_order(plans, lambda p: None)
        return work_order(plans, lambda p: fusing.key(with_device(p.config, self.device)))

    def answer_derived(self, plans: list[RunPlan]) -> int:
        return answer_derived(self.folder, plans)

    def run(self) -> StudyStatus:
        plans = current_plans(self.spec, self.folder)
        combined = False
        for _ in range(6):  # bounded: each round either finishes runs or gives up on them
            active = self.prepare(plans)
            if active:
                self.emit("status", {"status": study_status(self.folder, self.queue, plans)})
                self.work()
                continue
            if self.spec.combine and not combined:
                combined = True
                chosen = combine_settings(
                    self.spec, self.folder, [p for p in plans if p.variant != COMBINED]
                )
                if chosen is not None:
                    chosen["plans"] = _plans_id(plans)
                    write_json(_combine_file(self.folder), chosen)
                    new = combine_plans(
                        self.spec,
                        self.folder,
                        [p for p in plans if p.variant != COMBINED],
                        chosen["settings"],
                    )
                    self.emit(
                        "note",
                        {
                            "text": f"best combination: {', '.join(f'{k}={v}' for k, v in chosen['settings'].items()) or 'the base'}"
                        },
                    )
                    plans = [p for p in plans if p.variant != COMBINED] + new
                    continue
            break
        self.answer_derived(plans)
        status = study_status(self.folder, self.queue, plans)
        self.emit("done", {"status": status})
        return status

    def work(self) -> None:
        if self.workers <= 1:
            worker = Worker(
                self.queue,
                self.folder,
                metric=self.spec.metric,
                run_fn=self.run_fn,
                fusing=self.active_fusing(),
                device=self.device,
                on_event=self.on_event,
                poll_seconds=self.poll_seconds,
            )
            worker.run()
        else:
            self._work_in_subprocesses()

    def worker_commands(self, threads: int) -> list[list[str]]:
        """The ``cnnlab study worker`` command line of each local worker process.

        Workers spread over the GPUs; those that share one device each get
        ``--memory-share 1/N`` so their fused groups together fit it.
        """
        devices = _worker_devices(self.device, self.workers)
        sharing = Counter(devices)
        commands = []
        for device in devices:
            cmd = [
                sys.executable, "-m", "cnnlab", "study", "worker",
                "--storage", self.queue.url, "--name", self.spec.name,
                "--study-dir", str(self.folder.path),
                "--threads", str(threads), "--heartbeat", str(self.heartbeat_interval),
                "--fuse", self.spec.fuse,
            ]  # fmt: skip
            if device:
                cmd += ["--device", device]
            if sharing[device] > 1:
                cmd += ["--memory-share", f"{1 / sharing[device]:.6g}"]
            commands.append(cmd)
        return commands

    def _work_in_subprocesses(self) -> None:
        """Start ``cnnlab study worker`` processes and follow the queue until they exit."""
        cores = os.cpu_count() or 2
        threads = self.threads or max(1, cores // self.workers)
        procs: list[subprocess.Popen] = []
        self.folder.logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        try:
            for i, cmd in enumerate(self.worker_commands(threads)):
                logfile = open(self.folder.logs / f"worker-{i}.log", "a")  # noqa: SIM115 - closed below
                # A process group of their own: Ctrl-C reaches only this process, which
                # passes one SIGINT on to each worker. In the terminal's group a worker
                # would get a second one (the terminal's and ours), which cuts short its
                # checkpoint and leaves its run neither saved as interrupted nor given back.
                procs.append(
                    subprocess.Popen(
                        cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env, process_group=0
                    )
                )
                logfile.close()
            last = None
            while any(p.poll() is None for p in procs):
                time.sleep(self.poll_seconds)
                status = study_status(self.folder, self.queue)
                if last is None or status.line() != last:
                    last = status.line()
                    self.emit("status", {"status": status})
        except KeyboardInterrupt:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)  # workers checkpoint and put their run back
            for p in procs:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
            raise
        bad = [p.returncode for p in procs if p.returncode not in (0, None)]
        if bad:
            self.emit(
                "note",
                {"text": f"{len(bad)} worker(s) exited with status {bad}; see {self.folder.logs}"},
            )


def _worker_devices(device: str | None, workers: int) -> list[str | None]:
    """Spread workers over the GPUs when the device is auto/cuda and there are several."""
    if device in (None, "auto", "cuda"):
        try:
            import torch

            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception:  # noqa: BLE001
            n = 0
        if n > 1:
            return [f"cuda:{i % n}" for i in range(workers)]
    return [device] * workers


def open_queue(
    spec: StudySpec,
    folder: StudyFolder,
    storage: str | None,
    *,
    create: bool,
    heartbeat_interval: int = DEFAULT_HEARTBEAT,
) -> StudyQueue:
    url = storage or folder.default_storage()
    return StudyQueue.open(
        spec.name,
        url,
        metric=spec.metric,
        create=create,
        max_retry=spec.max_retries,
        heartbeat_interval=heartbeat_interval,
    )


def run_study(
    spec: StudySpec,
    *,
    root: str | Path = "studies",
    storage: str | None = None,
    workers: int | None = None,
    device: str | None = None,
    fuse: str | None = None,
    run_fn: RunFn = train_plan,
    fusing: Fusing | None = None,
    on_event: EventFn | None = None,
    heartbeat_interval: int = DEFAULT_HEARTBEAT,
    poll_seconds: float = 2.0,
    threads: int | None = None,
) -> StudyStatus:
    """Run (or finish) a study and return its status.

    Args:
        spec: the study spec (see :mod:`cnnlab.studies.spec`).
        root: folder holding study folders; the study lives in ``root/NAME``.
        storage: optuna storage URL; default ``sqlite:///root/NAME/study.db``.
        workers: local worker processes; default the spec's ``workers``, else
            :func:`default_workers` (on GPUs one per GPU when runs fuse, up to four
            per GPU when they do not; on CPU one per two cores).
        device: overrides ``train.device`` of every run (``cpu``, ``cuda``, ``cuda:1``).
        fuse: ``auto`` or ``off``; overrides the spec's ``fuse`` (and is stored with it).
        run_fn: the "train one run" step (tests replace it); only used by the
            in-process worker (``workers=1``).
        fusing: how fused groups form and train (tests replace it); see
            :func:`study_fusing` for when runs fuse.
        on_event: progress callback ``(event, info)``.
        threads: torch threads per worker; default the machine's cores divided
            among the workers. On a busy or small CPU, 1 is often much faster
            for small models.
    """
    if fuse is not None:
        spec = spec.model_copy(update={"fuse": fuse_mode(fuse)})
    check_device(spec, device)
    folder = StudyFolder.at(root, spec.name)
    folder.create()
    queue = open_queue(spec, folder, storage, create=True, heartbeat_interval=heartbeat_interval)
    folder.write_spec(spec)  # after the store opened: a command that fails changes nothing
    queue.set_info(spec=spec.to_yaml_dict(), study_dir=str(folder.path))
    n = workers or spec.workers
    if not n:
        n = default_workers(
            device, trained_plans(expand(spec)), study_fusing(spec.fuse, fusing, run_fn)
        )
    if n <= 1:
        set_threads(threads or os.cpu_count() or 1)
    runner = StudyRunner(
        spec=spec,
        folder=folder,
        queue=queue,
        workers=n,
        device=device,
        run_fn=run_fn,
        fusing=fusing,
        on_event=on_event,
        heartbeat_interval=heartbeat_interval,
        poll_seconds=poll_seconds,
        threads=threads,
    )
    runner.emit(
        "open",
        {
            "folder": folder.path,
            "storage": describe_url(queue.url),
            "workers": n,
            "fuse": spec.fuse,
        },
    )
    return runner.run()


def check_device(spec: StudySpec, device: str | None) -> None:
    """The device the study's runs train on must be one cnnlab knows and this machine has.

    Checked before anything is written or queued: otherwise every run fails its
    retries one after another on a device that is not there.

    Raises:
        ConfigError: naming the device (``--device`` or the spec's ``train.device``)
            and what is allowed or available.
    """
    from cnnlab.engine.trainer import resolve_device

    if device is not None:
        resolve_device(device, "--device")
    else:
        resolve_device(spec.base_config().train.device)


def run_worker(
    name: str,
    *,
    storage: str | None = None,
    study_dir: str | Path | None = None,
    root: str | Path | None = None,
    device: str | None = None,
    threads: int | None = None,
    heartbeat_interval: int = DEFAULT_HEARTBEAT,
    on_event: EventFn | None = None,
    fuse: str | None = None,
    run_fn: RunFn = train_plan,
    fusing: Fusing | None = None,
    memory_share: float = 1.0,
) -> int:
    """Join a study's queue as one more worker; returns the number of runs trained.

    The study folder is ``study_dir``, else ``root/NAME``, else the folder the
    study was started in (recorded in the store). With no storage, the
    study's default SQLite file is used. Runs fuse as the spec in the store
    says (``fuse``, ``auto`` when it has none) unless ``fuse`` overrides it.
    ``memory_share`` (0 < share <= 1) is the fraction of the device's memory
    this worker's fused groups may fill, for workers that share a GPU.
    """
    mode = fuse_mode(fuse, what="--fuse") if fuse is not None else None
    if not 0 < memory_share <= 1:
        raise StudyError(
            f"--memory-share {memory_share!r} is not allowed; use a fraction above 0 and at most 1"
        )
    if study_dir is not None:
        folder = StudyFolder(Path(study_dir).expanduser().resolve())
    elif root is not None:
        folder = StudyFolder.at(root, name)
    else:
        folder = None
    if storage is None:
        if folder is None:
            folder = find_study(name)
        storage = folder.default_storage()
    queue = StudyQueue.open(name, storage, heartbeat_interval=heartbeat_interval)
    info = queue.info()
    if folder is None:
        if not info.get("study_dir"):
            raise StudyError(f"study {name!r} records no folder; pass --root or --study-dir")
        folder = StudyFolder(Path(info["study_dir"]))
    folder.create()
    spec_data = info.get("spec") or {}
    if not folder.spec_file.exists() and spec_data:
        from cnnlab.config import dump_yaml

        folder.spec_file.write_text(dump_yaml(spec_data, sort_keys=False))
    queue.max_retry = int(spec_data.get("max_retries", queue.max_retry))
    if mode is None:
        mode = fuse_mode(spec_data.get("fuse", "auto"), what=f"study {name!r} fuse")
    set_threads(threads)
    worker = Worker(
        queue,
        folder,
        metric=spec_data.get("metric", "test_acc"),
        run_fn=run_fn,
        fusing=study_fusing(mode, fusing, run_fn, memory_share),
        device=device,
        on_event=on_event,
    )
    return worker.run().trained


def combine_study(name: str, *, root: str | Path = "studies", **kwargs: Any) -> StudyStatus:
    """Queue and run the variant that takes each factor's best value, with repeats."""
    folder = find_study(name, root)
    spec = folder.read_spec()
    if not spec.vary:
        raise StudyError(f"study {spec.name!r} has no 'vary' factors to combine")
    spec = spec.model_copy(update={"combine": True})
    return run_study(spec, root=folder.path.parent, **kwargs)


def answer_derived(folder: StudyFolder, plans: list[RunPlan]) -> int:
    """Write the folders of derived runs whose source has finished; returns how many."""
    written = 0
    for plan in plans:
        if plan.derived_from is None:
            continue
        target = folder.run_dir(plan.key)
        source = folder.run_dir(plan.derived_from)
        if (read_summary(target) or {}).get("status") in FINISHED or not source_ready(source):
            continue
        write_derived(source, plan, target)
        written += 1
    return written


def pull_results(folder: StudyFolder, queue: StudyQueue, plans: list[RunPlan] | None = None) -> int:
    """Write run folders from results held in the store (workers that did not
    share this study folder), and the derived runs they answer; returns how many
    were written.

    Only runs of the current spec (``plans``, by default the folder's) are
    written: the store keeps the results of every earlier version of the spec
    too, whose runs belong in ``archive/``, not in the report. A run a local
    worker holds right now (its file lock) is left to that worker.
    """
    from cnnlab.config import save_config
    from cnnlab.studies.derive import _write_metrics

    if plans is None:
        plans = current_plans(folder.read_spec(), folder)
    wanted = {p.key for p in plans}
    written = 0
    for t in queue.trials():
        result = t.user_attrs.get("result") or {}
        summary = result.get("summary")
        plan_data = t.user_attrs.get("plan")
        if not summary or not plan_data or t.user_attrs.get("outcome") != "trained":
            continue
        if trial_key(t) not in wanted:
            continue
        plan = RunPlan.from_dict(plan_data)
        run_dir = folder.run_dir(plan.key)
        if (read_summary(run_dir) or {}).get("status") in FINISHED:
            continue
        lock = folder.run_lock(plan.key)
        if not lock.acquire():
            continue
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(plan.config, run_dir / "config.yaml")
            if result.get("metrics"):
                _write_metrics(run_dir / "metrics.csv", result["metrics"])
            write_json(run_dir / "study.json", plan.meta())
            write_json(run_dir / "summary.json", summary)
        finally:
            lock.release()
        written += 1
    if written:
        written += answer_derived(folder, plans)
    return written


def describe_plans(plans: list[RunPlan]) -> dict[str, Any]:
    """Variants, runs to train and runs answered from curves (for dry runs and logs)."""
    variants = list(dict.fromkeys(p.variant for p in plans))
    return {
        "variants": variants,
        "runs": len(plans),
        "trained": sum(p.derived_from is None for p in plans),
        "derived": sum(p.derived_from is not None for p in plans),
    }


__all__ = [
    "DeviceInfo",
    "StudyRunner",
    "StudyStatus",
    "combine_study",
    "current_plans",
    "default_workers",
    "fused_share",
    "gpu_free_bytes",
    "pull_results",
    "run_study",
    "run_worker",
    "study_fusing",
    "study_status",
    "workers_for",
]
