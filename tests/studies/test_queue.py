"""The queue and runner logic with a fake trainer: idempotence, retries, spec changes, liveness."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings

import pytest

from cnnlab.errors import StudyError
from cnnlab.studies.folder import StudyFolder, read_summary
from cnnlab.studies.queue import Owner, StudyQueue
from cnnlab.studies.runner import StudyRunner, open_queue, run_study, study_status
from cnnlab.studies.spec import expand, spec_from_dict, trained_plans
from tests.studies.conftest import FakeTrainer, tiny_spec


def _run(tmp_path, data, trainer, **kwargs):
    spec = spec_from_dict(data)
    return spec, run_study(
        spec, root=tmp_path, workers=1, run_fn=trainer, poll_seconds=0.05, **kwargs
    )


def _queued(root, data):
    """A study folder and its store with every run of ``data`` enqueued, none trained."""
    spec = spec_from_dict(data)
    folder = StudyFolder.at(root, spec.name)
    folder.create()
    folder.write_spec(spec)
    queue = open_queue(spec, folder, None, create=True)
    StudyRunner(spec=spec, folder=folder, queue=queue).prepare(expand(spec))
    return spec, folder, queue


def _dead_owner() -> Owner:
    """An owner on this machine whose process is gone, as a killed worker's is."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return Owner(Owner.me().host, dead.pid, "gone")


def _trials_by_key(tmp_path, spec):
    queue = open_queue(spec, StudyFolder.at(tmp_path, spec.name), None, create=False)
    out: dict[str, list] = {}
    for t in queue.trials():
        out.setdefault((t.system_attrs.get("fixed_params") or {}).get("key"), []).append(t)
    return out


def test_study_runs_every_plan_once_and_rerun_trains_nothing(tmp_path):
    trainer = FakeTrainer()
    spec, status = _run(tmp_path, tiny_spec(), trainer)
    plans = expand(spec)
    assert status.done == status.total == len(plans) == 4
    assert status.finished and status.failed == status.diverged == 0
    assert set(trainer.calls) == {p.key for p in plans} and set(trainer.calls.values()) == {1}
    folder = StudyFolder.at(tmp_path, spec.name)
    for p in plans:
        meta = json.loads((folder.run_dir(p.key) / "study.json").read_text())
        assert meta == {**p.meta()}
        assert read_summary(folder.run_dir(p.key))["status"] == "completed"
    assert folder.run_keys() == sorted(p.key for p in plans)

    # Again: nothing trained, nothing enqueued twice.
    _, again = _run(tmp_path, tiny_spec(), trainer)
    assert again.done == 4 and set(trainer.calls.values()) == {1}
    trials = _trials_by_key(tmp_path, spec)
    assert {k: len(v) for k, v in trials.items()} == {p.key: 1 for p in plans}
    assert all(v[0].state.name == "COMPLETE" for v in trials.values())


def test_enqueue_is_idempotent(tmp_path):
    spec = spec_from_dict(tiny_spec(repeats=3))
    folder = StudyFolder.at(tmp_path, spec.name)
    folder.create()
    folder.write_spec(spec)
    queue = open_queue(spec, folder, None, create=True)
    plans = expand(spec)
    for _ in range(3):
        runner = StudyRunner(spec=spec, folder=folder, queue=queue)
        assert runner.prepare(plans) == len(plans)
    assert queue.counts()["WAITING"] == len(plans)
    for p in plans:  # skip_if_exists at the optuna level too
        queue.enqueue(p)
    assert queue.counts()["WAITING"] == len(plans)


def test_diverged_runs_are_results_and_never_retried(tmp_path):
    trainer = FakeTrainer(diverge=("optim.lr=0.1",))
    spec, status = _run(tmp_path, tiny_spec(), trainer)
    assert status.diverged == 2 and status.done == 4 and status.failed == 0
    assert set(trainer.calls.values()) == {1}
    trials = _trials_by_key(tmp_path, spec)
    diverged = [p.key for p in expand(spec) if p.variant == "optim.lr=0.1"]
    assert all([t.state.name for t in trials[k]] == ["PRUNED"] for k in diverged)
    _run(tmp_path, tiny_spec(), trainer)  # a re-run does not retry them either
    assert set(trainer.calls.values()) == {1}


def test_failures_are_retried_a_bounded_number_of_times(tmp_path):
    trainer = FakeTrainer(fail={"optim.lr=0.1": 99})
    spec, status = _run(tmp_path, tiny_spec(max_retries=2), trainer)
    failing = [p for p in expand(spec) if p.variant == "optim.lr=0.1"]
    assert all(trainer.calls[p.key] == 3 for p in failing)  # first try + 2 retries
    assert status.failed == 2 and status.done == 2
    assert {e["error"] for e in status.errors} == {"RuntimeError: boom in optim.lr=0.1"}
    folder = StudyFolder.at(tmp_path, spec.name)
    summary = read_summary(folder.run_dir(failing[0].key))
    assert (
        summary["status"] == "failed" and summary["error"] == "RuntimeError: boom in optim.lr=0.1"
    )
    assert summary["attempts"] == 3
    log = (folder.run_dir(failing[0].key) / "log.txt").read_text()
    assert "attempt 3 failed" in log and "Traceback" in log and "boom in optim.lr=0.1" in log
    trials = _trials_by_key(tmp_path, spec)
    assert [t.state.name for t in trials[failing[0].key]] == ["FAIL"] * 3

    # Re-running the study gives failed runs a fresh, still bounded, budget.
    _, again = _run(tmp_path, tiny_spec(max_retries=2), trainer)
    assert all(trainer.calls[p.key] == 6 for p in failing)
    assert again.failed == 2


def test_a_run_that_fails_once_then_succeeds(tmp_path):
    trainer = FakeTrainer(fail={"base": 1})
    _spec, status = _run(tmp_path, tiny_spec(), trainer)
    assert status.done == 4 and status.failed == 0
    assert sorted(trainer.calls.values()) == [1, 1, 2, 2]


def test_changing_the_spec_keeps_matching_runs_and_archives_the_rest(tmp_path):
    trainer = FakeTrainer()
    a = tiny_spec(vary={"optim.lr": [0.1, 0.2]})
    b = tiny_spec(vary={"optim.lr": [0.1, 0.3]})
    spec_a, _ = _run(tmp_path, a, trainer)
    assert len(trainer.calls) == 6
    spec_b, status = _run(tmp_path, b, trainer)
    assert status.done == status.total == 6
    assert len(trainer.calls) == 8 and set(trainer.calls.values()) == {1}  # only lr=0.3 trained
    folder = StudyFolder.at(tmp_path, "tiny")
    assert folder.run_keys() == sorted(p.key for p in expand(spec_b))
    moved = sorted(p.key for p in expand(spec_a) if p.variant == "optim.lr=0.2")
    assert sorted(p.name for p in folder.archive.iterdir()) == moved
    # And back: the archived runs return without training.
    _run(tmp_path, a, trainer)
    assert len(trainer.calls) == 8 and folder.run_keys() == sorted(p.key for p in expand(spec_a))


def test_waiting_runs_the_spec_dropped_are_withdrawn(tmp_path):
    spec_a = spec_from_dict(tiny_spec(vary={"optim.lr": [0.1, 0.2]}))
    folder = StudyFolder.at(tmp_path, "tiny")
    folder.create()
    folder.write_spec(spec_a)
    queue = open_queue(spec_a, folder, None, create=True)
    StudyRunner(spec=spec_a, folder=folder, queue=queue).prepare(
        expand(spec_a)
    )  # queued, never run
    trainer = FakeTrainer()
    _spec_b, status = _run(tmp_path, tiny_spec(vary={"optim.lr": [0.1]}), trainer)
    assert status.done == 4 and len(trainer.calls) == 4
    assert not any(p.key in trainer.calls for p in expand(spec_a) if p.variant == "optim.lr=0.2")


def test_epochs_factor_writes_derived_run_folders(tmp_path):
    trainer = FakeTrainer()
    spec, status = _run(tmp_path, tiny_spec(vary={"train.epochs": [1, 3]}), trainer)
    assert status.done == 4 and status.derived == 2
    assert len(trainer.calls) == 2  # only the 3-epoch runs
    folder = StudyFolder.at(tmp_path, spec.name)
    for plan in (p for p in expand(spec) if p.derived_from):
        run_dir = folder.run_dir(plan.key)
        summary = read_summary(run_dir)
        meta = json.loads((run_dir / "study.json").read_text())
        assert meta["derived_from"] == plan.derived_from and meta["variant"] == "base"
        assert summary["derived_from"] == plan.derived_from and summary["epochs_completed"] == 1
        assert summary["final"]["test_acc"] == pytest.approx(0.5 / 10 + 1 / 100 + plan.seed / 1000)
        assert (run_dir / "metrics.csv").read_text().count("\n") == 2  # header + epoch 1


def test_combine_runs_each_factors_best_value_together(tmp_path):
    class PoolMatters(FakeTrainer):
        def __call__(self, plan, run_dir, **kw):
            summary = super().__call__(plan, run_dir, **kw)
            if plan.config.model.options().get("pool") == "max":
                summary["final"]["test_acc"] += 0.01
                (run_dir / "summary.json").write_text(json.dumps(summary))
            return summary

    trainer = PoolMatters()
    data = tiny_spec(vary={"optim.lr": [0.1, 0.9], "model.pool": ["max"]}, combine=True)
    spec, status = _run(tmp_path, data, trainer)
    folder = StudyFolder.at(tmp_path, spec.name)
    chosen = json.loads((folder.path / "combine.json").read_text())
    assert chosen["settings"] == {"optim.lr": 0.9, "model.pool": "max"}
    best = [p for p in trained_plans(expand(spec))]
    assert status.total == len(best) + 2 and status.done == status.total
    metas = [json.loads((folder.run_dir(k) / "study.json").read_text()) for k in folder.run_keys()]
    combined = [m for m in metas if m["variant"] == "best"]
    assert len(combined) == 2 and {m["repeat"] for m in combined} == {0, 1}
    assert combined[0]["factors"] == {"optim.lr": 0.9, "model.pool": "max"}
    n = len(trainer.calls)
    _run(tmp_path, data, trainer)  # idempotent, combination included
    assert len(trainer.calls) == n


def test_a_combination_equal_to_the_longest_epochs_run_is_not_trained_again(tmp_path):
    """That run measures test accuracy every epoch (to answer shorter ones); it is the same run."""
    trainer = FakeTrainer()  # accuracy grows with epochs: 2 epochs is best
    spec, status = _run(tmp_path, tiny_spec(vary={"train.epochs": [2]}, combine=True), trainer)
    chosen = json.loads((StudyFolder.at(tmp_path, spec.name).path / "combine.json").read_text())
    assert chosen["settings"] == {"train.epochs": 2}
    assert len(trainer.calls) == 2  # the two 2-epoch runs; no 'best' copies of them
    assert status.done == status.total == 4


def test_a_combination_chosen_under_an_earlier_spec_is_not_trained(tmp_path):
    """After a base change the old choice (lr 0.9, no longer a level) must not run as 'best'."""
    _run(tmp_path, tiny_spec(vary={"optim.lr": [0.1, 0.9]}, combine=True), FakeTrainer())
    data = tiny_spec(vary={"optim.lr": [0.1, 0.2]}, combine=True)
    data["base"]["train"]["epochs"] = 2
    started = []
    _run(
        tmp_path,
        data,
        FakeTrainer(),
        on_event=lambda e, i: started.append(i["plan"].variant) if e == "start" else None,
    )
    assert "best" not in started  # the new results pick the base: nothing to combine


def test_status_counts_and_eta(tmp_path):
    trainer = FakeTrainer()
    _, folder, queue = _queued(tmp_path, tiny_spec())
    st = study_status(folder, queue)
    assert (st.total, st.pending, st.done, st.eta_seconds) == (4, 4, 0, None)
    from cnnlab.studies.worker import Worker

    Worker(queue, folder, run_fn=trainer, wait_for_others=False).run(max_runs=1)
    st = study_status(folder, queue)
    assert (st.done, st.pending) == (1, 3)
    assert st.eta_seconds == pytest.approx(3 * 0.1)
    assert "1/4 done" in st.line() and "ETA" in st.line()


def test_the_eta_counts_only_runs_that_train(tmp_path):
    """Runs answered from the longest run's curves take no training time."""
    from cnnlab.studies.worker import Worker

    trainer = FakeTrainer()
    _, folder, queue = _queued(tmp_path, tiny_spec(vary={"train.epochs": [2, 3]}))
    Worker(queue, folder, run_fn=trainer, wait_for_others=False).run(max_runs=1)
    st = study_status(folder, queue)
    # Each repeat trains the 3-epoch run and reads base (1 epoch) and 2 epochs off its curves.
    assert (st.done, st.pending) == (3, 3)
    assert st.eta_seconds == pytest.approx(0.3)  # one 3-epoch run left, 0.1 s per epoch


def test_a_dead_workers_run_goes_back_to_the_queue(tmp_path):
    _, _, queue = _queued(tmp_path, tiny_spec(repeats=1, vary={}))
    lease = queue.pop(_dead_owner())
    assert lease is not None and queue.counts()["RUNNING"] == 1
    assert queue.pop(Owner.me()) is None  # nothing else waits
    assert queue.reap() == 1
    counts = queue.counts()
    assert counts["RUNNING"] == 0 and counts["WAITING"] == 1 and counts["FAIL"] == 1
    again = queue.pop(Owner.me())
    assert again is not None and again.key == lease.key and again.attempt == 2
    # A live owner is left alone.
    assert queue.reap() == 0


def test_status_does_not_count_a_killed_workers_run_as_running(tmp_path):
    """After a kill -9 or a crash nothing trains the run; status says pending until a rerun."""
    _, folder, queue = _queued(tmp_path, tiny_spec(repeats=1, vary={}))
    assert queue.pop(_dead_owner()) is not None
    st = study_status(folder, queue)
    assert (st.running, st.pending) == (0, 1)
    queue.reap()
    lease = queue.pop(Owner.me())
    assert lease is not None
    assert study_status(folder, queue).running == 1  # a live worker's run is running


def test_a_run_whose_worker_died_while_popping_it_goes_back_to_the_queue(tmp_path):
    # A worker killed between ask() (the trial is running) and naming itself left a
    # trial no heartbeat makes stale: every later worker waited for it forever.
    spec = spec_from_dict(tiny_spec(repeats=1, vary={}))
    folder = StudyFolder.at(tmp_path, spec.name)
    folder.create()
    folder.write_spec(spec)
    StudyRunner(
        spec=spec, folder=folder, queue=open_queue(spec, folder, None, create=True)
    ).prepare(expand(spec))
    queue = StudyQueue.open(
        spec.name, folder.default_storage(), heartbeat_interval=1, grace_period=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        orphan = queue.study.ask()  # what pop() does first
    assert queue.counts()["RUNNING"] == 1 and queue.has_active()
    assert queue.reap() == 0  # within the grace period a live worker may still name itself
    time.sleep(1.2)
    assert queue.reap() == 1
    assert queue.counts()["RUNNING"] == 0 and queue.counts()["WAITING"] == 1
    assert queue.trials()[orphan.number].user_attrs["outcome"] == "worker died while popping"
    again = queue.pop(Owner.me())
    assert again is not None and again.attempt == 1  # the run never started: no retry spent
    assert queue.reap() == 0


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("not a url", "is not a database URL"),
        ("foo://host/db", "cannot open study storage 'foo://host/db'"),
        ("sqlite:////no/such/folder/x.db", "folder '/no/such/folder' does not exist"),
        (
            "postgresql://me:secret@127.0.0.1:1/db",
            "cannot open study storage 'postgresql://me:***@127.0.0.1:1/db'",
        ),
    ],
)
def test_bad_storage_is_one_line_naming_it(url, needle):
    with pytest.raises(StudyError) as info:
        StudyQueue.open("x", url, create=True)
    message = str(info.value)
    assert needle in message and "\n" not in message and "secret" not in message


def test_unknown_study_in_a_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'q.db'}"
    StudyQueue.open("exists", url, create=True)
    with pytest.raises(StudyError, match="no study named 'other'.*studies there: exists"):
        StudyQueue.open("other", url)


def test_results_in_the_store_rebuild_missing_run_folders(tmp_path):
    """Workers on machines without the study folder: the report side pulls results from the store."""
    import shutil

    from cnnlab.studies.runner import pull_results

    spec, _ = _run(tmp_path, tiny_spec(vary={"train.epochs": [1, 2]}), FakeTrainer())
    folder = StudyFolder.at(tmp_path, spec.name)
    before = {k: read_summary(folder.run_dir(k)) for k in folder.run_keys()}
    shutil.rmtree(folder.runs)
    queue = open_queue(spec, folder, None, create=False)
    assert pull_results(folder, queue) == 4  # 2 trained + 2 answered from their curves
    assert folder.run_keys() == sorted(before)
    for key, summary in before.items():
        assert read_summary(folder.run_dir(key))["final"] == summary["final"]
        assert json.loads((folder.run_dir(key) / "study.json").read_text())["key"] == key
    assert pull_results(folder, queue) == 0


def test_results_of_an_earlier_spec_stay_out_of_the_run_folders(tmp_path):
    """The store keeps every spec version's results; pulling them must not undo the archive."""
    from cnnlab.studies.runner import pull_results

    first = tiny_spec()
    _run(tmp_path, first, FakeTrainer())
    changed = tiny_spec()
    changed["base"]["train"]["epochs"] = 2  # every run's config changes
    spec, _ = _run(tmp_path, changed, FakeTrainer())
    folder = StudyFolder.at(tmp_path, spec.name)
    planned = sorted(p.key for p in expand(spec))
    assert folder.run_keys() == planned
    queue = open_queue(spec, folder, None, create=False)
    assert pull_results(folder, queue) == 0
    assert folder.run_keys() == planned


def test_runs_a_worker_on_another_machine_trained_are_not_trained_again(tmp_path):
    """A worker that writes into its own folder (--root elsewhere) reports into the store only."""
    from cnnlab.studies.worker import Worker

    spec, folder, queue = _queued(tmp_path / "here", tiny_spec())
    remote = Worker(
        queue,
        StudyFolder.at(tmp_path / "there", spec.name),
        run_fn=FakeTrainer(),
        poll_seconds=0.05,
    )
    away = remote.run(max_runs=2).keys
    assert len(away) == 2
    assert study_status(folder, queue).done == 2
    local = FakeTrainer()
    _, status = _run(tmp_path / "here", tiny_spec(), local)
    assert not set(local.calls) & set(away)
    assert status.done == status.total == 4
    assert all(read_summary(folder.run_dir(k))["status"] == "completed" for k in away)


def test_sqlite_on_a_network_file_system_warns(tmp_path):
    from pathlib import Path

    from cnnlab.studies.queue import filesystem_type, warn_if_network_filesystem

    mounts = "/dev/vda / ext4 rw 0 0\nserver:/export /mnt/shared nfs4 rw 0 0\n"
    assert filesystem_type(Path("/mnt/shared/studies/x/study.db"), mounts) == "nfs4"
    assert filesystem_type(Path("/mnt/sharedother/study.db"), mounts) == "ext4"
    with pytest.warns(UserWarning, match="network file system .*nfs4.*postgresql"):
        warn_if_network_filesystem(Path("/mnt/shared/studies/x/study.db"), mounts)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_network_filesystem(Path("/tmp/study.db"), mounts) is None


def test_a_finished_run_a_dead_worker_never_reported_is_recorded_not_lost(tmp_path):
    # The worker wrote the run's summary and was killed before reporting it (a
    # fused group writes all its summaries first), more often than the retry
    # budget allows: the reaper gives the trial up, but the folder holds the result.
    spec, folder, queue = _queued(tmp_path, tiny_spec(repeats=1, vary={}, max_retries=0))
    (plan,) = expand(spec)
    lease = queue.pop(_dead_owner())
    folder.run_dir(plan.key).mkdir(parents=True)
    FakeTrainer()(plan, folder.run_dir(plan.key))
    assert queue.reap() == 1
    assert queue.counts()["WAITING"] == 0, "the retry budget was meant to be spent"

    trainer = FakeTrainer()
    _, status = _run(tmp_path, tiny_spec(repeats=1, vary={}, max_retries=0), trainer)
    assert status.done == status.total == 1 and not trainer.calls  # reported, not retrained
    states = [t.state.name for t in _trials_by_key(tmp_path, spec)[lease.key]]
    assert sorted(states) == ["COMPLETE", "FAIL"]


@pytest.mark.parametrize(
    ("device", "needle"),
    [("tpu", "--device 'tpu' is not allowed; use auto, cpu"), ("cuda:7", "--device 'cuda:7' but")],
)
def test_a_device_the_study_cannot_use_is_refused_before_anything_is_written(
    tmp_path, device, needle, monkeypatch
):
    import torch

    from cnnlab.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = spec_from_dict(tiny_spec())
    with pytest.raises(ConfigError, match=needle):
        run_study(spec, root=tmp_path, workers=1, run_fn=FakeTrainer(), device=device)
    assert list(tmp_path.iterdir()) == []


def test_a_store_that_cannot_be_opened_leaves_the_spec_as_it_was(tmp_path):
    spec, _ = _run(tmp_path, tiny_spec(repeats=1, vary={}), FakeTrainer())
    folder = StudyFolder.at(tmp_path, spec.name)
    before = folder.spec_file.read_bytes()
    with pytest.raises(StudyError, match="nowhere' does not exist"):
        run_study(
            spec.model_copy(update={"combine": True}),
            root=tmp_path,
            storage=f"sqlite:///{tmp_path}/nowhere/x.db",
            workers=1,
            run_fn=FakeTrainer(),
        )
    assert folder.spec_file.read_bytes() == before
