"""The fusing worker: which popped runs join a group, queue order, and the queue logic around groups.

The logic tests use a fake trainer on a real SQLite queue (no torch training);
``test_fused_study.py`` trains real fused groups.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from cnnlab.config import load_config
from cnnlab.errors import StudyError
from cnnlab.studies.folder import StudyFolder, read_summary
from cnnlab.studies.runner import StudyRunner, open_queue
from cnnlab.studies.spec import expand, spec_from_dict
from cnnlab.studies.worker import (
    Fusing,
    ResumeKey,
    Worker,
    admit,
    fuse_mode,
    group_closed,
    run_state,
    sequential_steps,
    work_order,
)
from tests.studies.conftest import FakeTrainer, tiny_spec

# -- pure decisions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("group_key", "joined", "key", "state", "expected"),
    [
        (None, 0, "a", "fresh", "join"),  # the first run starts the group
        (None, 0, "a", "started", "alone"),  # a dead worker's run resumes by itself
        (None, 0, "a", "finished", "reuse"),
        (None, 0, "a", "busy", "duplicate"),
        ("a", 2, "a", "fresh", "join"),
        ("a", 2, "b", "fresh", "carry"),  # another key starts the next group
        ("a", 2, None, "fresh", "carry"),  # a run that cannot fuse never joins
        (None, 1, None, "fresh", "carry"),  # nor does anything join a run that cannot fuse
        ("a", 2, "a", "started", "alone"),
        ("a", 2, "b", "started", "carry"),
        ("a", 2, "b", "finished", "reuse"),  # a finished run is reported whatever its key
        ("a", 2, "b", "busy", "duplicate"),
        # runs Ctrl-C stopped together resume together: their key holds where they stopped
        (None, 0, ResumeKey("a", (1, 5)), "stopped", "join"),
        (ResumeKey("a", (1, 5)), 1, ResumeKey("a", (1, 5)), "stopped", "join"),
        (ResumeKey("a", (1, 5)), 1, ResumeKey("a", (1, 6)), "stopped", "carry"),
        ("a", 2, ResumeKey("a", (1, 5)), "stopped", "carry"),  # never with fresh runs
        (None, 0, None, "stopped", "alone"),  # one that cannot fuse resumes alone
    ],
)
def test_admit(group_key, joined, key, state, expected):
    assert admit(group_key, joined, key, state) == expected


@pytest.mark.parametrize(
    ("action", "joined", "size", "closed"),
    [
        ("join", 1, 3, False),
        ("join", 3, 3, True),
        ("reuse", 0, 1, False),  # still looking for a first member
        ("duplicate", 2, 3, False),
        ("alone", 1, 3, True),
        ("carry", 1, 3, True),
    ],
)
def test_group_closed(action, joined, size, closed):
    assert group_closed(action, joined, size) is closed


def test_work_order_keeps_keys_together_in_order_of_first_appearance_at_equal_cost():
    keys = {"a1": "a", "b1": "b", "a2": "a", "x": None, "c1": "c", "b2": "b", "y": None}
    ordered = work_order(list(keys), keys.__getitem__, steps=lambda p: 1)
    assert ordered == ["a1", "a2", "b1", "b2", "x", "c1", "y"]
    assert work_order([], keys.__getitem__) == []


def test_work_order_puts_the_longest_units_first():
    keys = {"a1": "a", "b1": "b", "a2": "a", "x": None, "c1": "c", "b2": "b", "y": None}
    steps = {"a1": 10, "a2": 10, "b1": 30, "b2": 30, "x": 20, "c1": 5, "y": 40}
    ordered = work_order(list(keys), keys.__getitem__, steps=steps.__getitem__)
    assert ordered == ["y", "b1", "b2", "x", "a1", "a2", "c1"]
    # without fusing every run is its own unit
    assert work_order(list(keys), lambda p: None, steps=steps.__getitem__)[:3] == ["y", "b1", "b2"]


def test_sequential_steps():
    cfg = load_config(overrides=["train.epochs=3", "train.batch_size=256"])
    assert sequential_steps(cfg) == 3 * 196  # nominal 50,000 images
    small = load_config(overrides=["data.subset=1000", "train.batch_size=32", "train.epochs=2"])
    assert sequential_steps(small) == 2 * 32


def test_work_order_puts_a_recipes_fusable_runs_together_and_small_batches_first():
    from cnnlab.engine.fused import fusable_key
    from cnnlab.studies.recipes import recipe_specs

    (spec,) = recipe_specs("lenet-ablation")
    plans = [p for p in expand(spec) if p.derived_from is None]
    ordered = work_order(plans, lambda p: fusable_key(p.config))
    assert sorted(p.key for p in ordered) == sorted(p.key for p in plans)
    keys = [fusable_key(p.config) for p in ordered]
    runs = [k for i, k in enumerate(keys) if i == 0 or k != keys[i - 1]]
    assert len(runs) == len(set(runs)), "a key's runs are split"
    # 330 runs to train, 18 keys: the lr factor and every variant's 10 repeats fuse
    assert len(plans) == 330 and len(set(keys)) == 18
    # batch 2 (250,000 steps) goes first, then batch 4, 8, 16, then the 100 epochs
    firsts = [ordered[i].config.train for i in range(0, 50, 10)]
    assert [(t.batch_size, t.epochs) for t in firsts] == [
        (2, 10),
        (4, 10),
        (8, 10),
        (16, 10),
        (256, 100),
    ]


def test_run_state(tmp_path):
    run = tmp_path / "r"
    assert run_state(run) == "fresh"
    run.mkdir()
    (run / "study.json").write_text("{}")
    assert run_state(run) == "fresh"
    (run / "config.yaml").write_text("x: 1\n")
    assert run_state(run) == "started"
    (run / "summary.json").write_text('{"status": "interrupted"}')
    assert run_state(run) == "started"
    (run / "summary.json").write_text('{"status": "diverged"}')
    assert run_state(run) == "finished"


def test_fuse_mode():
    assert fuse_mode("auto") == "auto" and fuse_mode(" OFF ") == "off"
    with pytest.raises(StudyError) as info:
        fuse_mode("bogus", what="--fuse")
    assert str(info.value) == (
        "--fuse 'bogus' is not allowed; use auto (train fusable runs together) or off"
    )


# -- the worker with a fake group trainer ----------------------------------------------


class FakeGroups:
    """A fused-group trainer that trains each member with the fake trainer and records the groups.

    ``held`` records, per group, the keys the worker held (kept heartbeats for)
    while the group trained; ``fail`` makes that many calls raise first.
    """

    def __init__(self, trainer: FakeTrainer, worker_ref: list, fail: int = 0) -> None:
        self.trainer = trainer
        self.worker_ref = worker_ref
        self.fail = fail
        self.groups: list[list[str]] = []
        self.held: list[list[str]] = []

    def __call__(self, plans, run_dirs, *, device=None, data=None, resume=False):
        self.held.append([lease.key for lease in self.worker_ref[0]._held])
        if self.fail:
            self.fail -= 1
            raise RuntimeError("out of memory\nwhile stacking")
        self.groups.append([p.key for p in plans])
        return [self.trainer(p, Path(d)) for p, d in zip(plans, run_dirs)]


def _queue_with(tmp_path, data, order):
    """A study folder and a queue that holds its plans in ``order`` (a function of the expanded plans)."""
    spec = spec_from_dict(data)
    folder = StudyFolder.at(tmp_path, spec.name)
    folder.create()
    folder.write_spec(spec)
    queue = open_queue(spec, folder, None, create=True)
    plans = order(expand(spec))
    for plan in plans:
        queue.enqueue(plan)
    return folder, queue, plans


def _worker(queue, folder, trainer, *, size=4, fail=0):
    ref: list = []
    groups = FakeGroups(trainer, ref, fail=fail)
    fusing = Fusing(key=lambda c: c.train.batch_size, size=lambda c, data: size, train=groups)
    worker = Worker(
        queue, folder, run_fn=trainer, fusing=fusing, wait_for_others=False, poll_seconds=0.05
    )
    ref.append(worker)
    return worker, groups


def _outcomes(queue):
    by_key: dict[str, Counter] = {}
    for t in queue.trials():
        key = (t.system_attrs.get("fixed_params") or {}).get("key")
        by_key.setdefault(key, Counter())[(t.state.name, t.user_attrs.get("outcome"))] += 1
    return by_key


def _two_keys(name):
    # batch size 50 and 100: two fusable keys (the fake key is the batch size), three runs each
    return tiny_spec(name=name, vary={"train.batch_size": [50]}, repeats=3)


def test_a_popped_run_of_another_key_starts_the_next_group_and_nothing_is_lost(tmp_path):
    def interleave(plans):
        a = [p for p in plans if p.config.train.batch_size == 100]
        b = [p for p in plans if p.config.train.batch_size == 50]
        return [a[0], a[1], b[0], b[1], a[2], b[2]]

    folder, queue, plans = _queue_with(tmp_path, _two_keys("carry"), interleave)
    trainer = FakeTrainer()
    worker, groups = _worker(queue, folder, trainer)
    stats = worker.run()
    k = [p.key for p in plans]
    # a0 a1 | b0 carried: b0 b1 | a2 carried: a2 | b2 carried: b2 (groups of one train alone)
    assert groups.groups == [[k[0], k[1]], [k[2], k[3]]]
    assert stats.groups == groups.groups
    # the carried run was held (its heartbeat kept) while the group before it trained
    assert groups.held == [[k[0], k[1], k[2]], [k[2], k[3], k[4]]]
    assert Counter(trainer.calls) == {key: 1 for key in k}
    assert stats.trained == 6 and sorted(stats.keys) == sorted(k)
    assert _outcomes(queue) == {key: {("COMPLETE", "trained"): 1} for key in k}
    for plan in plans:
        assert read_summary(folder.run_dir(plan.key))["status"] == "completed"
        assert (folder.run_dir(plan.key) / "study.json").is_file()
    assert worker._held == []


def test_groups_stop_at_their_size_and_finished_runs_are_reused(tmp_path):
    folder, queue, plans = _queue_with(
        tmp_path, tiny_spec(name="sizes", vary={"optim.lr": [0.1, 0.2]}, repeats=2), list
    )
    done = plans[1]
    FakeTrainer()(done, _mkdir(folder.run_dir(done.key)))  # finished earlier
    trainer = FakeTrainer()
    worker, groups = _worker(queue, folder, trainer, size=2)
    stats = worker.run()
    rest = [p.key for p in plans if p is not done]
    assert groups.groups == [rest[0:2], rest[2:4]] and rest[4] in trainer.calls
    assert done.key not in trainer.calls
    assert stats.reused == 1 and stats.trained == 5
    assert _outcomes(queue)[done.key] == {("COMPLETE", "reused"): 1}


def test_a_run_started_by_a_dead_worker_resumes_alone(tmp_path):
    folder, queue, plans = _queue_with(
        tmp_path, tiny_spec(name="dead", vary={"optim.lr": [0.1]}, repeats=2), list
    )
    started = plans[2]
    (_mkdir(folder.run_dir(started.key)) / "config.yaml").write_text("train: {}\n")
    seen: dict[str, bool] = {}
    trainer = FakeTrainer()

    def single(plan, run_dir, **kw):
        seen[plan.key] = (run_dir / "config.yaml").is_file()
        return trainer(plan, run_dir, **kw)

    worker, groups = _worker(queue, folder, trainer, size=4)
    worker.run_fn = single
    worker.run()
    k = [p.key for p in plans]
    # p0 p1 join; p2 (started) ends the group and resumes alone; p3 is a group of one
    assert groups.groups == [[k[0], k[1]]]
    assert seen == {k[2]: True, k[3]: False}
    assert Counter(trainer.calls) == {key: 1 for key in k}


def test_a_failed_group_retries_every_member_with_a_one_line_error(tmp_path):
    folder, queue, plans = _queue_with(tmp_path, tiny_spec(name="boom", vary={}, repeats=3), list)
    trainer = FakeTrainer()
    worker, groups = _worker(queue, folder, trainer, fail=1)
    events: list[tuple[str, str]] = []
    worker.emit = lambda event, info: events.append((event, info["plan"].key))
    stats = worker.run()
    k = [p.key for p in plans]
    assert stats.retried == 3 and stats.trained == 3 and groups.groups == [k]
    assert [e for e, _ in events] == ["start"] * 3 + ["retry"] * 3 + ["start"] * 3 + ["end"] * 3
    for key in k:
        assert _outcomes(queue)[key] == {("FAIL", "error"): 1, ("COMPLETE", "trained"): 1}
    errors = {t.user_attrs.get("error") for t in queue.trials() if t.state.name == "FAIL"}
    assert errors == {"RuntimeError: out of memory while stacking"}
    assert "attempt 1 failed" in (folder.run_dir(k[0]) / "log.txt").read_text()


def test_a_group_that_keeps_failing_is_recorded_failed_per_member(tmp_path):
    folder, queue, plans = _queue_with(
        tmp_path, tiny_spec(name="fails", vary={}, repeats=2, max_retries=0), list
    )
    queue.max_retry = 0
    worker, _ = _worker(queue, folder, FakeTrainer(), fail=5)
    stats = worker.run()
    assert stats.failed == 2 and stats.trained == 0
    for plan in plans:
        summary = read_summary(folder.run_dir(plan.key))
        assert summary["status"] == "failed"
        assert summary["error"] == "RuntimeError: out of memory while stacking"


def test_runs_whose_group_size_cannot_be_estimated_train_one_by_one(tmp_path):
    folder, queue, plans = _queue_with(tmp_path, tiny_spec(name="nosize", vary={}), list)
    trainer = FakeTrainer()
    worker, groups = _worker(queue, folder, trainer)

    def no_data(config, data):
        raise RuntimeError("no such data set")

    worker.fusing = Fusing(key=worker.fusing.key, size=no_data, train=groups)
    stats = worker.run()
    assert groups.groups == [] and stats.trained == 2
    assert Counter(trainer.calls) == {p.key: 1 for p in plans}


def test_an_interrupted_worker_puts_every_held_run_back(tmp_path):
    folder, queue, plans = _queue_with(tmp_path, _two_keys("ctrlc"), list)
    worker, _ = _worker(queue, folder, FakeTrainer())

    def interrupted(plans, run_dirs, **kw):
        raise KeyboardInterrupt

    worker.fusing = Fusing(key=worker.fusing.key, size=worker.fusing.size, train=interrupted)
    with pytest.raises(KeyboardInterrupt):
        worker.run()
    assert worker._held == []
    counts = queue.counts()
    # the three members and the carried run went back, uncounted; nothing else was popped
    assert counts["WAITING"] == 6 and counts["RUNNING"] == 0
    again = [queue.pop(worker.owner) for _ in range(6)]
    assert sorted(lease.key for lease in again) == sorted(p.key for p in plans)
    assert {lease.attempt for lease in again} == {1}


def test_the_runner_enqueues_fusable_runs_together_and_fuses_only_when_on(tmp_path):
    from cnnlab.studies.queue import Owner

    # base (batch 100), then the grid: batch 50 twice, batch 100 twice; the
    # batch-50 runs take more steps and go first, the batch-100 ones join the base
    data = tiny_spec(
        name="order", vary={}, grid={"train.batch_size": [50, 100], "optim.lr": [0.1, 0.2]}
    )
    spec = spec_from_dict(data)
    folder = StudyFolder.at(tmp_path, spec.name)
    folder.create()
    queue = open_queue(spec, folder, None, create=True)
    fusing = Fusing(key=lambda c: c.train.batch_size)
    runner = StudyRunner(spec=spec, folder=folder, queue=queue, fusing=fusing)
    plans = expand(spec)
    ordered = runner.enqueue_order(plans)
    sizes = [p.config.train.batch_size for p in ordered]
    assert plans[0].config.train.batch_size == 100
    assert sizes == sorted(sizes) and set(sizes) == {50, 100}
    assert runner.prepare(plans) == len(plans)
    owner = Owner.me()
    popped = [queue.pop(owner) for _ in plans]
    assert [lease.key for lease in popped] == [p.key for p in ordered]

    off = StudyRunner(spec=spec.model_copy(update={"fuse": "off"}), folder=folder, queue=queue)
    assert off.active_fusing() is None
    assert [p.key for p in off.enqueue_order(plans)] == [p.key for p in ordered]
    # a replaced single-run step without a group trainer of its own: runs are not fused
    fake = StudyRunner(spec=spec, folder=folder, queue=queue, run_fn=FakeTrainer())
    assert fake.active_fusing() is None
    assert StudyRunner(spec=spec, folder=folder, queue=queue).active_fusing() == Fusing()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_a_group_out_of_device_memory_is_split_not_failed(tmp_path):
    """The size estimate was wrong, not the runs: halve the groups, spend no retry."""
    folder, queue, plans = _queue_with(
        tmp_path, tiny_spec(name="oom", vary={"optim.lr": [0.1]}, repeats=3, max_retries=0), list
    )
    trainer = FakeTrainer()
    worker, groups = _worker(queue, folder, trainer, size=6)
    tried: list[int] = []

    def small_groups_only(plans, run_dirs, **kw):
        tried.append(len(plans))
        if len(plans) > 3:
            (Path(run_dirs[0]) / "last.pt").write_text("half a group's work")
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return groups(plans, run_dirs, **kw)

    events: list[str] = []
    worker.emit = lambda event, info: events.append(event)
    worker.fusing = Fusing(key=worker.fusing.key, size=worker.fusing.size, train=small_groups_only)
    stats = worker.run()
    assert tried == [6, 3, 3]
    assert stats.failed == 0 and stats.trained == 6 and events.count("retry") == 6
    assert [len(g) for g in groups.groups] == [3, 3]
    assert Counter(trainer.calls) == {p.key: 1 for p in plans}
    for plan in plans:
        assert read_summary(folder.run_dir(plan.key))["status"] == "completed"
        assert not (folder.run_dir(plan.key) / "last.pt").exists()
