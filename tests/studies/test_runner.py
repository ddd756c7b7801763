"""The runner's choices: workers per device, fuse from the store or the command line.

No GPU is needed: the device is described by a made-up :class:`DeviceInfo`.
"""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from cnnlab.cli import main
from cnnlab.studies.folder import StudyFolder
from cnnlab.studies.recipes import recipe_specs
from cnnlab.studies.runner import (
    PROCESS_OVERHEAD_BYTES,
    DeviceInfo,
    StudyRunner,
    default_workers,
    fused_share,
    open_queue,
    run_worker,
    workers_for,
)
from cnnlab.studies.spec import expand, spec_from_dict, trained_plans
from cnnlab.studies.worker import Fusing
from tests.studies.conftest import FakeTrainer, tiny_spec

GiB = 1 << 30
H100 = DeviceInfo("cuda", cores=16, gpus=1, free_bytes=78 * GiB)


@pytest.mark.parametrize(
    ("info", "member", "expected"),
    [
        (DeviceInfo("cpu", cores=2), None, 1),  # one per two cores, as before
        (DeviceInfo("cpu", cores=16), None, 8),
        (H100, 32 << 20, 4),  # small runs: up to four per GPU
        (H100, None, 4),
        (DeviceInfo("cuda", cores=64, gpus=2, free_bytes=78 * GiB), GiB, 8),
        # memory bounds it: each worker needs its run plus a CUDA context
        (DeviceInfo("cuda", cores=16, gpus=1, free_bytes=5 * GiB), GiB, 2),
        (DeviceInfo("cuda", cores=16, gpus=1, free_bytes=GiB), 4 * GiB, 1),
        # and so do the cores that drive them
        (DeviceInfo("cuda", cores=2, gpus=1, free_bytes=78 * GiB), GiB, 2),
        (DeviceInfo("cuda", cores=4, gpus=4, free_bytes=78 * GiB), GiB, 4),
        (DeviceInfo("cuda", cores=16, gpus=0), None, 8),  # no GPU after all: CPU rule
    ],
)
def test_workers_for(info, member, expected):
    assert workers_for(info, member_bytes=member) == expected


def test_process_overhead_counts_once_per_worker():
    info = DeviceInfo("cuda", cores=16, gpus=1, free_bytes=3 * (GiB + PROCESS_OVERHEAD_BYTES))
    assert workers_for(info, member_bytes=GiB) == 3


def test_fused_share():
    sizes = {"a": 8, "b": 8, "c": 1}
    assert fused_share([], sizes.__getitem__) == 0.0
    assert fused_share(["a", "a", "b", None], sizes.__getitem__) == 0.5  # b alone has no partner
    assert fused_share(["a", "a", "c", "c"], sizes.__getitem__) == 0.5  # c fits one per group
    assert fused_share(["a"] * 9 + [None], sizes.__getitem__) == 0.9


def test_default_workers_for_the_lenet_ablation_on_a_made_up_gpu():
    (spec,) = recipe_specs("lenet-ablation")
    plans = trained_plans(expand(spec))
    sizes: Counter = Counter()

    def size(config, free):
        sizes[config.train.batch_size] += 1
        return 64

    assert default_workers("cuda", plans, Fusing(), info=H100, group_size=size) == 1
    assert sum(sizes.values()) == 18  # one estimate per fusable key
    two = DeviceInfo("cuda", cores=32, gpus=2, free_bytes=78 * GiB)
    assert default_workers("cuda", plans, Fusing(), info=two, group_size=size) == 2
    # fuse off, or groups of one: small runs, four workers on the GPU
    assert default_workers("cuda", plans, None, info=H100) == 4
    assert default_workers("cuda", plans, Fusing(), info=H100, group_size=lambda c, f: 1) == 4
    tight = DeviceInfo("cuda", cores=16, gpus=1, free_bytes=GiB + (GiB >> 1))
    assert default_workers("cuda", plans, None, info=tight) == 1
    assert default_workers("cpu", plans, Fusing(), info=DeviceInfo("cpu", cores=2)) == 1


def _stored_study(tmp_path, fuse: str):
    """A study whose spec (fuse included) is in the store and whose runs are queued."""
    spec = spec_from_dict(tiny_spec(name=f"store-{fuse}", vary={}, repeats=3, fuse=fuse))
    folder = StudyFolder.at(tmp_path, spec.name)
    folder.create()
    folder.write_spec(spec)
    queue = open_queue(spec, folder, None, create=True, heartbeat_interval=1)
    queue.set_info(spec=spec.to_yaml_dict(), study_dir=str(folder.path))
    StudyRunner(spec=spec, folder=folder, queue=queue).prepare(expand(spec))
    return spec, folder


class RecordingGroups:
    def __init__(self, trainer: FakeTrainer) -> None:
        self.trainer = trainer
        self.groups: list[int] = []

    def __call__(self, plans, run_dirs, **kwargs):
        self.groups.append(len(plans))
        return [self.trainer(p, d) for p, d in zip(plans, run_dirs)]


@pytest.mark.parametrize(
    ("stored", "override", "fused"),
    [("auto", None, True), ("off", None, False), ("auto", "off", False), ("off", "auto", True)],
)
def test_a_joining_worker_fuses_as_the_stored_spec_says_unless_told(
    tmp_path, stored, override, fused
):
    spec, folder = _stored_study(tmp_path, stored)
    trainer = FakeTrainer()
    groups = RecordingGroups(trainer)
    fusing = Fusing(key=lambda c: "same", size=lambda c, data: 8, train=groups)
    trained = run_worker(
        spec.name,
        study_dir=folder.path,
        heartbeat_interval=1,
        fuse=override,
        run_fn=trainer,
        fusing=fusing,
    )
    assert trained == 3 and set(trainer.calls.values()) == {1}
    assert groups.groups == ([3] if fused else [])


def _spec_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(name="cli")))
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "command",
    [
        ["study", "run", "SPEC", "--fuse", "bogus"],
        ["study", "run", "SPEC", "--fuse", "bogus", "--dry-run"],
        ["study", "worker", "--name", "cli", "--fuse", "bogus"],
        ["recipes", "run", "lenet-ablation", "--quick", "--fuse", "bogus"],
    ],
)
def test_a_bad_fuse_option_is_a_one_line_error(tmp_path, capsys, command):
    args = [str(_spec_file(tmp_path)) if a == "SPEC" else a for a in command]
    assert main([*args, "--root", str(tmp_path / "studies")]) == 2
    assert _one_line_error(capsys) == (
        "error: --fuse 'bogus' is not allowed; use auto (train fusable runs together) or off"
    )
    assert not (tmp_path / "studies").exists()  # nothing was started


def test_fuse_from_the_command_line_is_stored_with_the_spec(tmp_path, capsys):
    args = ["study", "run", str(_spec_file(tmp_path)), "--root", str(tmp_path / "dry")]
    assert main([*args, "--fuse", "OFF", "--dry-run"]) == 0
    capsys.readouterr()
    from cnnlab.studies.runner import run_study

    spec = spec_from_dict(tiny_spec(name="stored"))
    run_study(spec, root=tmp_path, workers=1, run_fn=FakeTrainer(), fuse="off", poll_seconds=0.05)
    folder = StudyFolder.at(tmp_path, "stored")
    assert folder.read_spec().fuse == "off"
    queue = open_queue(spec, folder, None, create=False)
    assert queue.info()["spec"]["fuse"] == "off"


# -- workers that share a device ------------------------------------------------------


def _runner(tmp_path, workers: int, device: str | None = "cpu") -> StudyRunner:
    spec, folder = _stored_study(tmp_path, "auto")
    queue = open_queue(spec, folder, None, create=False)
    return StudyRunner(spec=spec, folder=folder, queue=queue, workers=workers, device=device)


def _option(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_workers_on_one_device_split_its_memory(tmp_path):
    commands = _runner(tmp_path, 3).worker_commands(threads=1)
    assert len(commands) == 3
    assert {_option(c, "--memory-share") for c in commands} == {"0.333333"}
    assert {_option(c, "--device") for c in commands} == {"cpu"}
    (alone,) = _runner(tmp_path / "one", 1).worker_commands(threads=2)
    assert _option(alone, "--memory-share") is None and _option(alone, "--threads") == "2"


def test_local_workers_get_one_ctrl_c_not_two(tmp_path, monkeypatch):
    """Ctrl-C signals the terminal's process group; the runner passes SIGINT on to its
    workers, so a worker in that group would be interrupted twice (its checkpoint cut short)."""
    import os
    import sys

    runner = _runner(tmp_path, 2)
    probe = [sys.executable, "-c", "import os; print(os.getpgid(0), os.getpid())"]
    monkeypatch.setattr(StudyRunner, "worker_commands", lambda self, threads: [probe, probe])
    runner.poll_seconds = 0.05
    runner._work_in_subprocesses()
    for log in sorted(runner.folder.logs.glob("worker-*.log")):
        group, pid = log.read_text().split()
        assert group == pid != str(os.getpgid(0))  # a group of its own


def test_workers_spread_over_gpus_split_each_gpus_memory(tmp_path, monkeypatch):
    from cnnlab.studies import runner

    monkeypatch.setattr(
        runner, "_worker_devices", lambda device, n: [f"cuda:{i % 2}" for i in range(n)]
    )
    commands = _runner(tmp_path, 4, device="cuda").worker_commands(threads=4)
    assert [_option(c, "--device") for c in commands] == ["cuda:0", "cuda:1"] * 2
    assert {_option(c, "--memory-share") for c in commands} == {"0.5"}
    two = _runner(tmp_path / "two", 2, device="cuda").worker_commands(threads=4)
    assert [_option(c, "--memory-share") for c in two] == [None, None]  # one worker per GPU


def test_a_shared_worker_plans_its_groups_in_its_share():
    from cnnlab.studies.runner import study_fusing
    from cnnlab.studies.worker import group_size

    assert study_fusing("auto") == Fusing()
    half = study_fusing("auto", share=0.5)
    assert half.size.func is group_size and half.size.keywords == {"share": 0.5}
    assert study_fusing("off", share=0.5) is None


@pytest.mark.parametrize("share", ["0", "-0.5", "1.5", "nan"])
def test_a_bad_memory_share_is_a_one_line_error(tmp_path, capsys, share):
    args = ["study", "worker", "--name", "cli", "--memory-share", share]
    assert main([*args, "--root", str(tmp_path / "studies")]) == 2
    assert _one_line_error(capsys) == (
        f"error: --memory-share {float(share)!r} is not allowed; "
        "use a fraction above 0 and at most 1"
    )
    assert not (tmp_path / "studies").exists()


def test_free_gpu_memory_is_read_in_a_child_process(monkeypatch):
    from cnnlab.studies import runner

    # the child prints what torch.cuda.mem_get_info would; here, made-up numbers
    script = "import json, sys\nprint('noise')\nprint(json.dumps([int(i) * 7 + 1 for i in sys.argv[1:]]))\n"
    monkeypatch.setattr(runner, "_FREE_MEMORY_SCRIPT", script)
    assert runner.gpu_free_bytes([0, 2]) == [1, 15]


def test_free_gpu_memory_falls_back_to_this_process(monkeypatch, caplog):
    import torch

    from cnnlab.studies import runner

    monkeypatch.setattr(runner, "_FREE_MEMORY_SCRIPT", "raise SystemExit(3)")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (100 + i, 200))
    with caplog.at_level("WARNING", logger="cnnlab.studies"):
        assert runner.gpu_free_bytes([0, 1]) == [100, 101]
    assert "child process" in caplog.text
