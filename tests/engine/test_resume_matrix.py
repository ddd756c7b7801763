"""Exact resume across the optimizer and schedule registries and the run options with state.

docs/training.md promises that a run stopped by Ctrl-C anywhere (mid-epoch, after an epoch's
last step, between epochs) and resumed ends as the uninterrupted run: the same metrics.csv
rows (timing columns aside), the same weights and optimizer state, bit for bit. Each case
trains a tiny uninterrupted reference and a copy stopped at every kind of point in turn
(resuming after each stop, so it also resumes several times in a row), then compares.
Parametrized over the registries, so a newly registered optimizer or schedule is checked
the day it is added (and fails here until it is given a case).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from cnnlab.config import load_config
from cnnlab.data import DataSplits
from cnnlab.engine import checkpoint as ckpt
from cnnlab.engine.optim import OPTIMIZERS
from cnnlab.engine.run import RunFolder, read_metrics
from cnnlab.engine.schedules import SCHEDULES
from cnnlab.engine.trainer import train
from cnnlab.errors import CheckpointError
from tests.engine.synthetic import SMALL_RUN, make_splits

#: 100 training images in batches of 32: 4 steps an epoch, the last one a partial batch of 4.
BASE = [*SMALL_RUN, "train.epochs=2"]
STEPS = 4
TIMING = ("examples_per_sec", "seconds")

Stop = tuple[str, int, int]  # (event, epoch, batch); batch -1 = the epoch's last step
#: Every kind of stop, in the order a run meets them; each one is resumed from.
EVERY_STOP: list[Stop] = [
    ("step", 1, 2),  # mid-epoch
    ("step", 1, -1),  # the epoch's last step, before its evaluation
    ("epoch", 1, 0),  # between epochs, after epoch 1 is recorded
    ("step", 2, 1),  # mid-epoch again, after a resume
    ("epoch", 2, 0),  # after the last epoch is recorded, before the run is finished
]

OPTIMIZER_CASES: dict[str, list[list[str]]] = {
    "sgd": [
        ["optim.momentum=0"],
        ["optim.momentum=0.9", "optim.nesterov=true", "optim.weight_decay=0.01"],
    ],
    "adam": [["optim.lr=0.002", "optim.weight_decay=0.01"]],
    "adamw": [["optim.lr=0.002", "optim.weight_decay=0.05", "optim.betas=[0.8,0.95]"]],
    "adagrad": [["optim.lr=0.02"]],
    "rmsprop": [["optim.lr=0.001", "optim.momentum=0.5"]],
}
SCHEDULE_CASES: dict[str, list[str]] = {
    "constant": [],
    "step": ["schedule.step_size=1", "schedule.gamma=0.5"],
    "multistep": ["schedule.milestones=[1]", "schedule.gamma=0.3"],
    "exponential": ["schedule.gamma=0.7"],
    "cosine": ["schedule.warmup_epochs=0.5", "schedule.min_lr=0.001"],
    "onecycle": ["schedule.pct_start=0.4"],
}
OPTION_CASES: dict[str, list[str]] = {
    "augment": ["data.augment.crop_padding=3", "data.augment.hflip=0.5", "data.augment.vflip=0.3"],
    "dropout": ["model.dropout=0.4"],
    "batch-norm": ["model=lenet5-bn"],
    "grad-clip": ["train.grad_clip=0.05"],
    "label-smoothing": ["train.label_smoothing=0.2"],
    "subset": ["data.subset=70"],
    "deterministic": ["train.deterministic=true"],
    "test-every-epoch": ["train.test_every_epoch=true"],
    "monitor-val-loss": ["train.monitor=val_loss"],
    # All of them at once, on a decaying schedule with adaptive state.
    "everything": [
        "model=lenet5-bn",
        "model.dropout=0.3",
        "data.augment.crop_padding=2",
        "data.augment.hflip=0.5",
        "optim=adamw",
        "optim.lr=0.003",
        "optim.weight_decay=0.05",
        "schedule=onecycle",
        "train.grad_clip=1.0",
        "train.label_smoothing=0.1",
        "train.test_every_epoch=true",
    ],
}


@pytest.fixture(autouse=True)
def _fast_run_folders(monkeypatch):
    """Skip the curve plots and fsyncs: they are most of a tiny run's time and hold no state."""
    monkeypatch.setattr(RunFolder, "write_curves", lambda self, rows, title="": None)
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    torch.set_num_threads(1)


def _splits() -> DataSplits:
    return make_splits(n_train=100, n_val=32, n_test=32)


def _stopper(stop: Stop | None):
    def callback(event: str, info: dict[str, Any]) -> None:
        if stop is None or event != stop[0]:
            return
        if event == "epoch":
            hit = info["row"]["epoch"] == stop[1]
        else:
            batch = info["steps"] if stop[2] == -1 else stop[2]
            hit = info["epoch"] == stop[1] and info["batch"] == batch
        if hit:
            raise KeyboardInterrupt

    return callback


def _reference(run_dir: Path, overrides: Sequence[str], splits: DataSplits | None) -> None:
    train(load_config(overrides=list(overrides)), run_dir=run_dir, splits=splits)


def _stopped_and_resumed(
    run_dir: Path, overrides: Sequence[str], stops: Sequence[Stop], splits: DataSplits | None
) -> None:
    """Train with Ctrl-C at ``stops[0]``, resume with Ctrl-C at ``stops[1]``, ..., then finish."""
    config = load_config(overrides=list(overrides))
    for i, stop in enumerate(stops):
        with pytest.raises(KeyboardInterrupt):
            train(
                config if i == 0 else None,
                run_dir=run_dir,
                resume=i > 0,
                callback=_stopper(stop),
                splits=splits,
            )
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "interrupted", stop
    train(None, run_dir=run_dir, resume=bool(stops), splits=splits)


def _assert_equal_state(a: Any, b: Any, where: str) -> None:
    """Nested dicts/lists of tensors and plain values, compared exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_state(x, y, f"{where}[{i}]")
    else:
        both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
        assert a == b or both_nan, (where, a, b)


def _without_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _assert_same_run(reference: Path, resumed: Path) -> None:
    ref_rows, got_rows = (read_metrics(p / "metrics.csv") for p in (reference, resumed))
    assert _without_timing(got_rows) == _without_timing(ref_rows)
    ref_last, got_last = (
        ckpt.load_checkpoint(p / "checkpoints" / "last.pt") for p in (reference, resumed)
    )
    for key in ("model", "optimizer", "scaler"):
        _assert_equal_state(ref_last[key], got_last[key], key)
    ref_state, got_state = ref_last["state"], got_last["state"]
    assert _without_timing(got_state["rows"]) == _without_timing(ref_state["rows"])  # full floats
    for key in ("epoch", "batch", "step", "best_val", "best_epoch", "bad_epochs", "partial"):
        assert got_state[key] == ref_state[key], key
    ref_best, got_best = (
        ckpt.load_checkpoint(p / "checkpoints" / "best.pt") for p in (reference, resumed)
    )
    assert ref_best["epoch"] == got_best["epoch"]
    _assert_equal_state(ref_best["model"], got_best["model"], "best.model")
    ref_sum, got_sum = (json.loads((p / "summary.json").read_text()) for p in (reference, resumed))
    for key in ("status", "final", "best", "epochs_completed", "steps", "diverged"):
        assert got_sum[key] == ref_sum[key], key


def _check(tmp_path: Path, overrides: Sequence[str], stops: Sequence[Stop] = EVERY_STOP) -> None:
    splits = _splits()
    _reference(tmp_path / "reference", overrides, splits)
    _stopped_and_resumed(tmp_path / "resumed", overrides, stops, splits)
    _assert_same_run(tmp_path / "reference", tmp_path / "resumed")


def test_every_registered_optimizer_and_schedule_has_a_case():
    assert set(OPTIMIZER_CASES) == set(OPTIMIZERS.names())
    assert set(SCHEDULE_CASES) == set(SCHEDULES.names())


@pytest.mark.parametrize(
    "stop", EVERY_STOP[:4], ids=["mid-epoch", "last-step", "between-epochs", "mid-epoch-2"]
)
def test_one_ctrl_c_anywhere_resumes_exactly(tmp_path, stop):
    _check(tmp_path, [*BASE, "data.augment.crop_padding=2", "model.dropout=0.3"], [stop])


@pytest.mark.parametrize(
    "overrides",
    [[f"optim={name}", *extra] for name, cases in OPTIMIZER_CASES.items() for extra in cases],
    ids=lambda o: "-".join(x.split("=")[1] for x in o[:2]),
)
def test_every_optimizer_resumes_exactly(tmp_path, overrides):
    _check(tmp_path, [*BASE, *overrides])


@pytest.mark.parametrize("name", sorted(SCHEDULE_CASES))
def test_every_schedule_resumes_exactly(tmp_path, name):
    _check(tmp_path, [*BASE, f"schedule={name}", *SCHEDULE_CASES[name]])


@pytest.mark.parametrize("name", sorted(OPTION_CASES))
def test_every_stateful_option_resumes_exactly(tmp_path, name):
    _check(tmp_path, [*BASE, *OPTION_CASES[name]])


#: Early stopping that certainly triggers: an lr too small to change val_acc, so epoch 1 is
#: the best and epochs 2 and 3 are the two bad ones patience allows (epoch 4 never runs).
EARLY_STOP = [*SMALL_RUN, "train.epochs=4", "optim.lr=1e-9", "train.patience=2"]


@pytest.mark.parametrize(
    "stops",
    [
        EVERY_STOP,  # the patience counter (1 after epoch 2) is carried over a stop
        [("epoch", 2, 0), ("step", 3, -1)],  # counter carried, then stopped before evaluation
        [("epoch", 3, 0)],  # stopped as the epoch that ends the run is recorded
    ],
    ids=["every-stop", "before-evaluation", "stopping-epoch"],
)
def test_early_stopping_resumes_exactly(tmp_path, stops):
    _check(tmp_path, EARLY_STOP, stops)
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["epochs_completed"] == 3
    assert summary["best"]["epoch"] == 1
    assert any("early stopping after epoch 3" in note for note in summary["notes"])
    assert "early stopping after epoch 3" in (tmp_path / "resumed" / "log.txt").read_text()


def test_a_run_without_validation_resumes_exactly(tmp_path):
    # No val split: the best epoch is picked on the training metric instead.
    splits = _splits()
    splits = DataSplits(
        train=splits.train, val=None, test=splits.test, mean=splits.mean, std=splits.std
    )
    _reference(tmp_path / "reference", BASE, splits)
    _stopped_and_resumed(tmp_path / "resumed", BASE, EVERY_STOP, splits)
    _assert_same_run(tmp_path / "reference", tmp_path / "resumed")


def test_a_carved_validation_split_resumes_exactly(tmp_path):
    # Data loaded by the run itself (no splits handed in): val carved by data.val_fraction.
    from tests.data._factories import make_tree

    make_tree(tmp_path / "tree", {"train": 30, "test": 4}, size=(12, 12), channels=1)
    overrides = [
        *BASE,
        "model=mlp",
        "data=imagefolder",
        f"data.root={tmp_path / 'tree'}",
        "data.val_fraction=0.2",
        "data.subset=60",
        "train.batch_size=16",
        "data.augment.hflip=0.5",
    ]
    _reference(tmp_path / "reference", overrides, None)
    _stopped_and_resumed(tmp_path / "resumed", overrides, EVERY_STOP[:3], None)
    _assert_same_run(tmp_path / "reference", tmp_path / "resumed")
    sizes = json.loads((tmp_path / "resumed" / "summary.json").read_text())["data"]["sizes"]
    assert sizes["val"] == 18 and sizes["train"] == 60


@pytest.mark.parametrize("stop", [("step", 2, 2), ("epoch", 1, 0)], ids=["mid-epoch", "between"])
def test_a_corrupt_last_checkpoint_falls_back_to_the_previous_one_and_still_ends_exactly(
    tmp_path, stop
):
    splits = _splits()
    overrides = [*BASE, "data.augment.crop_padding=2", "model.dropout=0.3", "schedule=cosine"]
    _reference(tmp_path / "reference", overrides, splits)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(
            load_config(overrides=overrides),
            run_dir=resumed,
            callback=_stopper(stop),
            splits=splits,
        )
    last = resumed / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flipped bits: the sha256 check refuses it
    last.write_bytes(bytes(data))
    run = train(None, run_dir=resumed, resume=True, splits=splits)
    assert "newest checkpoint unusable; resumed from last.prev.pt" in run.summary["notes"]
    _assert_same_run(tmp_path / "reference", resumed)


def test_resume_refuses_a_changed_epoch_count_and_leaves_the_run_as_it_was(tmp_path):
    # docs/training.md: a checkpoint resumes only the config that wrote it; to train
    # longer, start a new run from its config.
    splits = _splits()
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(
            load_config(overrides=BASE),
            run_dir=run_dir,
            callback=_stopper(("step", 1, 2)),
            splits=splits,
        )
    before = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="different config"):
        train(
            load_config(overrides=[*BASE, "train.epochs=3"]),
            run_dir=run_dir,
            resume=True,
            splits=splits,
        )
    assert {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    train(None, run_dir=run_dir, resume=True, splits=splits)  # still resumes as it was
    _reference(tmp_path / "reference", BASE, splits)
    _assert_same_run(tmp_path / "reference", run_dir)


def _sigint_at(kind: str, count: int):
    """A global torch hook that sends this process a real SIGINT (Ctrl-C) at its ``count``-th call.

    ``optimizer-step``: right after an optimizer has updated the weights, before the trainer
    has counted the step; ``forward``: inside a training forward pass, after a batch-norm
    layer has updated its running statistics (and with dropout masks already drawn).
    """
    import signal

    from torch import nn
    from torch.optim.optimizer import register_optimizer_step_post_hook

    calls = [0]

    def fire() -> None:
        calls[0] += 1
        if calls[0] == count:
            signal.raise_signal(signal.SIGINT)

    if kind == "optimizer-step":
        return register_optimizer_step_post_hook(lambda *args: fire())

    def forward_hook(module, args, output):
        if module.training and isinstance(module, nn.modules.batchnorm._BatchNorm):
            fire()

    return nn.modules.module.register_module_forward_hook(forward_hook)


@pytest.mark.parametrize(("kind", "count"), [("optimizer-step", 6), ("forward", 20)])
def test_a_real_ctrl_c_inside_a_training_step_resumes_exactly(tmp_path, kind, count):
    # Ctrl-C arrives wherever Python happens to be; inside a step, the weights, batch-norm
    # statistics or RNG may already have moved on while the step is not yet counted.
    splits = _splits()
    overrides = [*BASE, "model=lenet5-bn", "model.dropout=0.3", "data.augment.hflip=0.5"]
    _reference(tmp_path / "reference", overrides, splits)
    resumed = tmp_path / "resumed"
    hook = _sigint_at(kind, count)
    try:
        with pytest.raises(KeyboardInterrupt):
            _reference(resumed, overrides, splits)
    finally:
        hook.remove()
    assert json.loads((resumed / "summary.json").read_text())["status"] == "interrupted"
    train(None, run_dir=resumed, resume=True, splits=splits)
    _assert_same_run(tmp_path / "reference", resumed)
