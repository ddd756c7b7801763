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
    ("info", "fuses", "member", "expected"),
    [
        (DeviceInfo("cpu", cores=2), False, None, 1),  # one per two cores, as before
        (DeviceInfo("cpu", cores=16), True, None, 8),
        (H100, True, GiB, 1),  # a fused group keeps its GPU busy
        (DeviceInfo("cuda", cores=32, gpus=4, free_bytes=78 * GiB), True, GiB, 4),
        (H100, False, 32 << 20, 4),  # small runs: up to four per GPU
        (H100, False, None, 4),
        (DeviceInfo("cuda", cores=64, gpus=2, free_bytes=78 * GiB), False, GiB, 8),
        # memory bounds it: each worker needs its run plus a CUDA context
        (DeviceInfo("cuda", cores=16, gpus=1, free_bytes=5 * GiB), False, GiB, 2),
        (DeviceInfo("cuda", cores=16, gpus=1, free_bytes=GiB), False, 4 * GiB, 1),
        # and so do the cores that drive them
        (DeviceInfo("cuda", cores=2, gpus=1, free_bytes=78 * GiB), False, GiB, 2),
        (DeviceInfo("cuda", cores=4, gpus=4, free_bytes=78 * GiB), False, GiB, 4),
        (DeviceInfo("cuda", cores=16, gpus=0), False, None, 8),  # no GPU after all: CPU rule
    ],
)
def test_workers_for(info, fuses, member, expected):
    assert workers_for(info, fuses=fuses, member_bytes=member) == expected


def test_process_overhead_counts_once_per_worker():
    info = DeviceInfo("cuda", cores=16, gpus=1, free_bytes=3 * (GiB + PROCESS_OVERHEAD_BYTES))
    assert workers_for(info, fuses=False, member_bytes=GiB) == 3


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
