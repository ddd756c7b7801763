import json
import math

import pytest
import torch

from cnnlab.config import load_config
from cnnlab.engine import checkpoint as ckpt
from cnnlab.engine.run import Run, read_metrics
from cnnlab.engine.trainer import summary_line, train
from cnnlab.errors import CheckpointError, RunError

BASE = ["train.epochs=2", "train.batch_size=32", "train.device=cpu", "model=lenet5-modern", "optim.lr=0.05", "optim.momentum=0.9"]


def _cfg(*extra):
    return load_config(overrides=[*BASE, *extra])


def test_run_folder_is_complete(tmp_path, patch_splits):
    run = train(_cfg(), run_dir=tmp_path / "r", splits=patch_splits)
    files = {p.name for p in run.path.iterdir()}
    assert {"config.yaml", "metrics.csv", "summary.json", "curves.png", "log.txt", "checkpoints"} <= files
    assert (run.path / "checkpoints" / "last.pt").is_file() and (run.path / "checkpoints" / "best.pt").is_file()
    s = json.loads((run.path / "summary.json").read_text())
    assert s["status"] == "completed" and s["epochs_completed"] == 2
    assert s["versions"]["torch"] == torch.__version__ and s["device"] == "cpu"
    assert len(s["data"]["fingerprint"]) == 16 and s["data"]["sizes"] == {"train": 256, "val": 64, "test": 64}
    rows = read_metrics(run.path / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["test_acc"] is not None and rows[0]["test_acc"] is None
    assert all(r["examples_per_sec"] > 0 for r in rows)
    # the patch task is easy: a modern LeNet must learn it in two epochs
    assert s["final"]["test_acc"] > 0.6
    line = summary_line(s)
    assert line.startswith("loss ") and "train acc" in line and "test acc" in line and line.endswith("examples/sec on cpu")
    loaded = Run.load(run.path)
    assert loaded.status == "completed" and loaded.config == run.config


def test_same_seed_same_metrics_different_seed_differs(tmp_path, patch_splits):
    a = train(_cfg(), run_dir=tmp_path / "a", splits=patch_splits)
    b = train(_cfg(), run_dir=tmp_path / "b", splits=patch_splits)
    c = train(_cfg("train.seed=1"), run_dir=tmp_path / "c", splits=patch_splits)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("examples_per_sec", "seconds")} for r in rows]
    assert strip(a.metrics) == strip(b.metrics)
    assert strip(a.metrics) != strip(c.metrics)
    wa = ckpt.load_checkpoint(a.path / "checkpoints" / "last.pt")["model"]
    wb = ckpt.load_checkpoint(b.path / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_divergence_is_a_result(tmp_path, patch_splits):
    run = train(_cfg("optim.lr=100", "optim.momentum=0.99", "train.epochs=3"), run_dir=tmp_path / "d", splits=patch_splits)
    s = run.summary
    assert s["status"] == "diverged"
    d = s["diverged"]
    assert d["epoch"] >= 1 and d["step"] >= 1 and d["lr"] == 100
    assert d["last_finite_loss"] is None or math.isfinite(d["last_finite_loss"])
    best = run.path / "checkpoints" / "best.pt"
    if best.exists():
        weights = ckpt.load_checkpoint(best)["model"]
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert "diverged" in summary_line(s)


def test_early_stopping_and_test_measured_once(tmp_path, patch_splits):
    # lr 0 never improves after the first epoch: patience 1 stops after epoch 2
    run = train(_cfg("train.epochs=6", "train.patience=1", "optim.lr=1e-9", "optim.momentum=0"), run_dir=tmp_path / "e", splits=patch_splits)
    rows = run.metrics
    assert len(rows) == 2 and rows[-1]["test_acc"] is not None
    assert any("early stopping" in n for n in run.summary["notes"])


def test_existing_run_folder_is_not_overwritten(tmp_path, patch_splits):
    train(_cfg("train.epochs=1"), run_dir=tmp_path / "r", splits=patch_splits)
    before = (tmp_path / "r" / "metrics.csv").read_text()
    with pytest.raises(RunError, match="already holds a run"):
        train(_cfg("train.epochs=1"), run_dir=tmp_path / "r", splits=patch_splits)
    assert (tmp_path / "r" / "metrics.csv").read_text() == before


def test_resume_of_finished_run_is_a_no_op_and_extends_nothing(tmp_path, patch_splits):
    run = train(_cfg("train.epochs=1"), run_dir=tmp_path / "r", splits=patch_splits)
    again = train(None, run_dir=run.path, resume=True, splits=patch_splits)
    assert len(again.metrics) == 1 and again.status == "completed"


def test_resume_refuses_checkpoint_of_other_config(tmp_path, patch_splits):
    run = train(_cfg("train.epochs=1"), run_dir=tmp_path / "r", splits=patch_splits)
    with pytest.raises(CheckpointError, match="different config"):
        train(_cfg("train.epochs=2", "optim.lr=0.01"), run_dir=run.path, resume=True, splits=patch_splits)


def test_augmentation_and_schedules_run(tmp_path, patch_splits):
    run = train(
        _cfg("data.augment.crop_padding=2", "data.augment.hflip=0.5", "schedule=cosine", "schedule.warmup_epochs=1", "train.label_smoothing=0.1", "train.grad_clip=1.0", "optim=adamw", "optim.lr=0.003", "optim.weight_decay=0.01"),
        run_dir=tmp_path / "aug",
        splits=patch_splits,
    )
    lrs = [r["lr"] for r in run.metrics]
    assert run.status == "completed" and lrs[0] != lrs[1]


def test_precision_on_cpu_is_ignored_with_a_note(tmp_path, patch_splits):
    run = train(_cfg("train.epochs=1", "train.precision=bf16", "train.channels_last=true"), run_dir=tmp_path / "p", splits=patch_splits)
    assert any("needs CUDA" in n for n in run.summary["notes"])
    assert any("channels_last" in n for n in run.summary["notes"])


def test_unwritable_run_folder(tmp_path, patch_splits):
    # a regular file where a folder should be: fails the same way for root and users
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    with pytest.raises(RunError, match="cannot write to run folder"):
        train(_cfg("train.epochs=1"), run_dir=blocker / "run", splits=patch_splits)
    assert blocker.read_text() == "not a folder"


def test_tensorboard_event_files(tmp_path, patch_splits):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (optional extra)")
    run = train(_cfg("train.epochs=1", "train.tensorboard=true"), run_dir=tmp_path / "tb", splits=patch_splits)
    events = list((run.path / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
