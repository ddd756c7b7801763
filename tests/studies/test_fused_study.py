"""Real fused studies on CPU: tiny LeNet runs fuse, and match the same study trained run by run.

Small steps (LeNet-5 at batch 8) are where the CPU fuses too, so these tests
train real fused groups without a GPU, on a tiny generated data set patched in
for Fashion-MNIST.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from cnnlab.engine import checkpoint as ckpt
from cnnlab.studies.folder import StudyFolder, read_summary
from cnnlab.studies.runner import open_queue, run_study
from cnnlab.studies.spec import expand, spec_from_dict
from tests.engine.synthetic import make_splits

FINAL = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


@pytest.fixture
def patches(monkeypatch):
    """Every data set a worker loads is the tiny patch-quadrant set (128/32/32 images)."""
    splits = make_splits(n_train=128, n_val=32, n_test=32)
    monkeypatch.setattr("cnnlab.data.load_splits", lambda *args, **kwargs: splits)
    return splits


def fused_spec(name: str) -> dict:
    """Eight runs with one fusable key: four variants (lr, momentum) x two seeds."""
    return {
        "name": name,
        "base": {
            "data": {"name": "fashion-mnist"},
            "model": {"name": "lenet5"},
            "optim": {"name": "sgd", "lr": 0.3},
            "train": {"epochs": 1, "batch_size": 8, "device": "cpu"},
        },
        "vary": {"optim.lr": [0.1, 0.9], "optim.momentum": [0.9]},
        "repeats": 2,
    }


def _run(spec, root, **kwargs):
    return run_study(spec, root=root, workers=1, threads=1, poll_seconds=0.05, **kwargs)


def _trained_once(root, spec) -> None:
    folder = StudyFolder.at(root, spec.name)
    queue = open_queue(spec, folder, None, create=False)
    outcomes = Counter()
    for t in queue.trials():
        key = (t.system_attrs.get("fixed_params") or {}).get("key")
        outcomes[key, t.state.name, t.user_attrs.get("outcome")] += 1
    assert outcomes == Counter({(p.key, "COMPLETE", "trained"): 1 for p in expand(spec)})


def _weights(run_dir):
    return ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def _assert_same_results(root_a, root_b, spec) -> None:
    a, b = StudyFolder.at(root_a, spec.name), StudyFolder.at(root_b, spec.name)
    for plan in expand(spec):
        sa, sb = read_summary(a.run_dir(plan.key)), read_summary(b.run_dir(plan.key))
        assert sa["status"] == sb["status"] == "completed"
        for metric in FINAL:
            assert sa["final"][metric] == pytest.approx(sb["final"][metric], rel=1e-5, abs=1e-6), (
                plan.variant,
                metric,
            )
        wa, wb = _weights(a.run_dir(plan.key)), _weights(b.run_dir(plan.key))
        for name in wb:
            assert torch.allclose(wa[name], wb[name], rtol=1e-5, atol=1e-5), (plan.variant, name)


def test_a_fused_study_equals_the_same_study_run_by_run(tmp_path, patches):
    spec = spec_from_dict(fused_spec("fused"))
    events = Counter()
    fused = _run(spec, tmp_path / "auto", on_event=lambda event, info: events.update([event]))
    assert fused.done == fused.total == 8 and fused.failed == 0
    assert events["start"] == events["end"] == 8
    folder = StudyFolder.at(tmp_path / "auto", spec.name)
    groups = Counter()
    for plan in expand(spec):
        summary = read_summary(folder.run_dir(plan.key))
        groups[summary["fused"]["group_size"]] += 1
        assert (folder.run_dir(plan.key) / "study.json").is_file()
    assert groups == {8: 8}  # one group of eight (the CPU's cap for such small steps)
    _trained_once(tmp_path / "auto", spec)

    separate = _run(spec, tmp_path / "off", fuse="off")
    assert separate.done == 8
    off = StudyFolder.at(tmp_path / "off", spec.name)
    assert all("fused" not in read_summary(off.run_dir(p.key)) for p in expand(spec))
    assert off.read_spec().fuse == "off"
    _assert_same_results(tmp_path / "auto", tmp_path / "off", spec)


def _stop_first_two(spec, folder, splits, *, after_steps: int = 5):
    """A fused worker trains the first two runs as a group and is stopped mid-epoch."""
    from cnnlab.engine.fused import train_group
    from cnnlab.studies.folder import write_study_json

    stopped = expand(spec)[:2]
    for plan in stopped:
        folder.run_dir(plan.key).mkdir(parents=True)
        write_study_json(folder.run_dir(plan.key), plan)

    def stop(event, info):
        if event == "step" and info["batch"] == after_steps:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_group(
            [p.config for p in stopped],
            [folder.run_dir(p.key) for p in stopped],
            splits=splits,
            callback=stop,
        )
    assert {read_summary(folder.run_dir(p.key))["status"] for p in stopped} == {"interrupted"}
    return stopped


def test_members_stopped_together_resume_together_to_the_uninterrupted_numbers(tmp_path, patches):
    spec = spec_from_dict(fused_spec("stopped"))
    folder = StudyFolder.at(tmp_path / "auto", spec.name)
    stopped = _stop_first_two(spec, folder, patches)

    status = _run(spec, tmp_path / "auto")
    assert status.done == 8 and status.failed == 0
    for plan in expand(spec):
        summary = read_summary(folder.run_dir(plan.key))
        log = (folder.run_dir(plan.key) / "log.txt").read_text()
        if plan in stopped:  # resumed as one group in the fused engine, not one by one
            assert summary["fused"]["group_size"] == 2 and "resumed" in log, plan.variant
        else:
            assert summary["fused"]["group_size"] == 6
    _trained_once(tmp_path / "auto", spec)

    whole = _run(spec, tmp_path / "whole")  # the same study, never interrupted
    assert whole.done == 8
    a, b = StudyFolder.at(tmp_path / "whole", spec.name), folder
    for plan in expand(spec):
        sa, sb = read_summary(a.run_dir(plan.key)), read_summary(b.run_dir(plan.key))
        assert {m: sa["final"][m] for m in FINAL} == {m: sb["final"][m] for m in FINAL}, (
            plan.variant
        )
        wa, wb = _weights(a.run_dir(plan.key)), _weights(b.run_dir(plan.key))
        assert all(torch.equal(wa[name], wb[name]) for name in wa), plan.variant


def test_runs_a_killed_fused_worker_left_resume_alone_and_lose_nothing(tmp_path, patches):
    spec = spec_from_dict(fused_spec("dead"))
    folder = StudyFolder.at(tmp_path / "auto", spec.name)
    dead = _stop_first_two(spec, folder, patches)
    # SIGKILL writes no "interrupted": the summaries still say what training wrote first.
    for plan in dead:
        path = folder.run_dir(plan.key) / "summary.json"
        path.write_text(path.read_text().replace('"interrupted"', '"running"'))

    status = _run(spec, tmp_path / "auto")
    assert status.done == 8 and status.failed == 0
    for plan in expand(spec):
        summary = read_summary(folder.run_dir(plan.key))
        log = (folder.run_dir(plan.key) / "log.txt").read_text()
        if plan in dead:
            # resumed by the single-run trainer from the fused checkpoint, not in a group
            assert "fused" not in summary and "resumed" in log, plan.variant
        else:
            assert summary["fused"]["group_size"] == 6
    _trained_once(tmp_path / "auto", spec)

    _run(spec, tmp_path / "off", fuse="off")
    _assert_same_results(tmp_path / "auto", tmp_path / "off", spec)


def test_the_cli_shows_each_member_of_a_fused_group(tmp_path, patches, capsys):
    import yaml

    from cnnlab.cli import main

    spec_file = tmp_path / "fused.yaml"
    spec_file.write_text(yaml.safe_dump(fused_spec("cli-fused")))
    args = ["study", "run", str(spec_file), "--root", str(tmp_path), "--workers", "1"]
    assert main([*args, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 worker(s), fuse auto)" in out
    ends = [line for line in out.splitlines() if line.startswith("[") and "#" in line]
    assert len(ends) == 8 and all(line.endswith(", fused group of 8)") for line in ends), ends
    assert [line.split("]")[0] for line in ends] == [f"[{i}/8" for i in range(1, 9)]
