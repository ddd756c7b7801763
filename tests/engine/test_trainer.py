import json
import math

import pytest
import torch

from cnnlab.config import load_config
from cnnlab.engine import checkpoint as ckpt
from cnnlab.engine.run import Run, read_metrics
from cnnlab.engine.trainer import summary_line, train
from cnnlab.errors import CheckpointError, ConfigError, RunError
from tests.engine.synthetic import RUN_FILES, SMALL_RUN


def _cfg(*extra):
    return load_config(overrides=[*SMALL_RUN, *extra])


def test_run_folder_is_complete(tmp_path, patch_splits):
    run = train(_cfg(), run_dir=tmp_path / "r", splits=patch_splits)
    files = {p.name for p in run.path.iterdir()}
    assert RUN_FILES <= files
    assert (run.path / "checkpoints" / "last.pt").is_file() and (
        run.path / "checkpoints" / "best.pt"
    ).is_file()
    s = json.loads((run.path / "summary.json").read_text())
    assert s["status"] == "completed" and s["epochs_completed"] == 2
    assert s["versions"]["torch"] == torch.__version__ and s["device"] == "cpu"
    assert len(s["data"]["fingerprint"]) == 16 and s["data"]["sizes"] == {
        "train": 256,
        "val": 64,
        "test": 64,
    }
    rows = read_metrics(run.path / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["test_acc"] is not None and rows[0]["test_acc"] is None
    assert all(r["examples_per_sec"] > 0 for r in rows)
    # the patch task is easy: a modern LeNet must learn it in two epochs
    assert s["final"]["test_acc"] > 0.6
    line = summary_line(s)
    assert (
        line.startswith("loss ")
        and "train acc" in line
        and "test acc" in line
        and line.endswith("examples/sec on cpu")
    )
    loaded = Run.load(run.path)
    assert loaded.status == "completed" and loaded.config == run.config


def test_same_seed_same_metrics_different_seed_differs(tmp_path, patch_splits):
    a = train(_cfg(), run_dir=tmp_path / "a", splits=patch_splits)
    b = train(_cfg(), run_dir=tmp_path / "b", splits=patch_splits)
    c = train(_cfg("train.seed=1"), run_dir=tmp_path / "c", splits=patch_splits)
    strip = lambda rows: [
        {k: v for k, v in r.items() if k not in ("examples_per_sec", "seconds")} for r in rows
    ]
    assert strip(a.metrics) == strip(b.metrics)
    assert strip(a.metrics) != strip(c.metrics)
    wa = ckpt.load_checkpoint(a.path / "checkpoints" / "last.pt")["model"]
    wb = ckpt.load_checkpoint(b.path / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_divergence_is_a_result(tmp_path, patch_splits):
    run = train(
        _cfg("optim.lr=100", "optim.momentum=0.99", "train.epochs=3"),
        run_dir=tmp_path / "d",
        splits=patch_splits,
    )
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
    run = train(
        _cfg("train.epochs=6", "train.patience=1", "optim.lr=1e-9", "optim.momentum=0"),
        run_dir=tmp_path / "e",
        splits=patch_splits,
    )
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


def test_killed_after_the_last_checkpoint_resume_finishes_the_run(tmp_path, patch_splits):
    # A kill after the last epoch's checkpoint and before summary.json leaves
    # a "running" summary and no curves: resume trains nothing and finishes it.
    run = train(_cfg(), run_dir=tmp_path / "r", splits=patch_splits)
    done = json.loads((run.path / "summary.json").read_text())
    (run.path / "curves.png").unlink()
    (run.path / "summary.json").write_text(json.dumps({**done, "status": "running"}))
    again = train(None, run_dir=run.path, resume=True, splits=patch_splits)
    assert again.status == "completed" and (run.path / "curves.png").is_file()
    assert [r["epoch"] for r in again.metrics] == [1, 2]
    assert again.summary["final"] == done["final"]
    assert Run.load(run.path).status == "completed"


def test_resume_refuses_checkpoint_of_other_config(tmp_path, patch_splits):
    run = train(_cfg("train.epochs=1"), run_dir=tmp_path / "r", splits=patch_splits)
    with pytest.raises(CheckpointError, match="different config"):
        train(
            _cfg("train.epochs=2", "optim.lr=0.01"),
            run_dir=run.path,
            resume=True,
            splits=patch_splits,
        )


def test_augmentation_and_schedules_run(tmp_path, patch_splits):
    run = train(
        _cfg(
            "data.augment.crop_padding=2",
            "data.augment.hflip=0.5",
            "schedule=cosine",
            "schedule.warmup_epochs=1",
            "train.label_smoothing=0.1",
            "train.grad_clip=1.0",
            "optim=adamw",
            "optim.lr=0.003",
            "optim.weight_decay=0.01",
        ),
        run_dir=tmp_path / "aug",
        splits=patch_splits,
    )
    lrs = [r["lr"] for r in run.metrics]
    assert run.status == "completed" and lrs[0] != lrs[1]


def test_precision_on_cpu_is_ignored_with_a_note(tmp_path, patch_splits):
    run = train(
        _cfg("train.epochs=1", "train.precision=bf16"), run_dir=tmp_path / "p", splits=patch_splits
    )
    assert any("needs CUDA" in n for n in run.summary["notes"])


@pytest.mark.parametrize("model", ["lenet5", "lenet5-bn", "mlp"])
def test_channels_last_trains_the_same_network(tmp_path, patch_splits, model):
    # channels_last (auto on a CPU) only changes the memory layout, so the run must match
    # NCHW up to float summation order.
    runs = {
        cl: train(
            _cfg(f"model={model}", "optim.lr=0.1", f"train.channels_last={cl}"),
            run_dir=tmp_path / cl,
            splits=patch_splits,
        )
        for cl in ("true", "false", "auto")
    }
    for cl in ("true", "auto"):
        a, b = runs[cl].metrics, runs["false"].metrics
        for ra, rb in zip(a, b):
            for key in ("train_loss", "val_loss", "test_loss"):
                if rb[key] is not None:
                    assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-5), (cl, key)
        wa, wb = (
            ckpt.load_checkpoint(r.path / "checkpoints" / "last.pt")["model"]
            for r in (runs[cl], runs["false"])
        )
        for key in wb:
            if wb[key].is_floating_point():
                assert torch.allclose(wa[key], wb[key], rtol=1e-3, atol=1e-4), (cl, key)


def test_divergence_read_once_per_epoch_gives_the_same_record(tmp_path, patch_splits, monkeypatch):
    # On accelerators the flag is read at the epoch end; the record must name the same step,
    # last finite loss and lr as the every-step check of the CPU.
    cfg = _cfg("optim.lr=100", "optim.momentum=0.99", "train.epochs=3")
    every = train(cfg, run_dir=tmp_path / "every", splits=patch_splits).summary
    monkeypatch.setattr("cnnlab.engine.trainer.check_every_step", lambda device: False)
    once = train(cfg, run_dir=tmp_path / "once", splits=patch_splits).summary
    assert every["status"] == once["status"] == "diverged"
    assert once["diverged"] == every["diverged"]
    assert once["steps"] == every["steps"] == every["diverged"]["step"] - 1


def test_an_interrupt_after_an_unread_divergence_keeps_the_checkpoint_before_it(
    tmp_path, patch_splits, monkeypatch
):
    # On accelerators the flag is read at the epoch end: Ctrl-C after a non-finite step and
    # before that read must not save the NaN weights as the point to resume from, or the
    # resumed run records its first step after the resume as the divergence.
    monkeypatch.setattr("cnnlab.engine.trainer.check_every_step", lambda device: False)
    cfg = _cfg("optim.lr=50", "train.epochs=3")
    whole = train(cfg, run_dir=tmp_path / "whole", splits=patch_splits).summary
    assert whole["diverged"]["step"] < 6  # the interrupt below comes after it

    def stop(event, info):
        if event == "step" and info["batch"] == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir=tmp_path / "r", splits=patch_splits, callback=stop)
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()
    resumed = train(None, run_dir=tmp_path / "r", resume=True, splits=patch_splits).summary
    assert resumed["diverged"] == whole["diverged"]


def test_per_epoch_augmentation_draws_equal_per_batch_transforms(patch_splits):
    # The trainer takes an epoch's crops and flips up front; they must be the very draws of
    # the per-batch transforms in cnnlab.data.transforms with each batch's generator.
    from cnnlab.config import AugmentConfig
    from cnnlab.data import transforms as T
    from cnnlab.engine.batches import BatchPipeline, batch_generator, epoch_draws, train_batches

    images = patch_splits.train.images[:100]
    labels = patch_splits.train.labels[:100]
    pipe = BatchPipeline(
        mean=(0.5,), std=(0.25,), augment=AugmentConfig(crop_padding=3, hflip=0.5, vflip=0.3)
    ).to("cpu")
    draws = epoch_draws(pipe, [7], 2, len(images), 32, 1, "cpu")
    batches = list(train_batches(images, labels, batch_size=32, seed=7, epoch=2, start_batch=1))
    assert len(draws) == len(batches) == 3
    for (b, xb, _y), d in zip(batches, draws):
        g = batch_generator(7, 2, b)
        x = T.normalize(xb, (0.5,), (0.25,))
        want = T.random_flip(
            T.random_flip(
                T.random_crop(x, x.shape[-2:], 3, generator=g, fill=(0 - 0.5) / 0.25),
                0.5,
                generator=g,
            ),
            0.3,
            dim=-2,
            generator=g,
        )
        assert torch.equal(pipe(xb, train=True, draws=d), want)
        assert torch.equal(pipe(xb, batch_generator(7, 2, b), train=True), want)


def test_unwritable_run_folder(tmp_path, patch_splits):
    # a regular file where a folder should be: fails the same way for root and users
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    with pytest.raises(RunError, match="cannot write to run folder"):
        train(_cfg("train.epochs=1"), run_dir=blocker / "run", splits=patch_splits)
    assert blocker.read_text() == "not a folder"


def test_tensorboard_event_files(tmp_path, patch_splits):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (optional extra)")
    run = train(
        _cfg("train.epochs=1", "train.tensorboard=true"),
        run_dir=tmp_path / "tb",
        splits=patch_splits,
    )
    events = list((run.path / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)


def test_deterministic_mode_does_not_outlive_its_run():
    # A study worker trains run after run in one process; the switch is process-wide.
    from cnnlab.engine.trainer import seed_everything

    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        seed_everything(0, deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


class _NoDoubles(torch.utils._python_dispatch.TorchDispatchMode):
    """Fails on any op that makes a float64 tensor, as Apple's MPS device does."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                raise AssertionError(f"{func} made a float64 tensor")
        return out


def test_a_device_without_float64_trains_with_float32_sums(tmp_path, patch_splits, monkeypatch):
    """MPS has no float64: sums there are float32, and no other double tensor is made."""
    from cnnlab.engine import trainer

    assert trainer.sum_dtype(torch.device("mps")) == torch.float32
    assert trainer.sum_dtype(torch.device("cpu")) == torch.float64
    double = train(_cfg("train.epochs=1"), run_dir=tmp_path / "d", splits=patch_splits)
    monkeypatch.setattr(trainer, "sum_dtype", lambda device: torch.float32)
    with _NoDoubles():
        single = train(_cfg("train.epochs=1"), run_dir=tmp_path / "s", splits=patch_splits)
    a, b = read_metrics(double.path / "metrics.csv"), read_metrics(single.path / "metrics.csv")
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert b[0][key] == pytest.approx(a[0][key], rel=1e-5), key


def test_cuda_graphs_asked_for_on_cpu_are_ignored_with_a_note(tmp_path, patch_splits):
    run = train(
        _cfg("train.epochs=1", "train.cuda_graph=true"), run_dir=tmp_path / "g", splits=patch_splits
    )
    assert run.status == "completed"
    assert any("train.cuda_graph=true needs CUDA" in n for n in run.summary["notes"])


def test_a_last_batch_of_one_for_batch_norm_is_refused_before_training(tmp_path):
    from cnnlab.engine.trainer import check_last_batch
    from cnnlab.models import create_model
    from tests.engine.synthetic import make_splits

    cfg = _cfg("model=lenet5-bn", "train.epochs=1")  # batch 32; batch norm over vectors
    with pytest.raises(ConfigError, match="leaves a last batch of 1 image of the 33"):
        train(cfg, run_dir=tmp_path / "r", splits=make_splits(n_train=33))
    assert not (tmp_path / "r" / "metrics.csv").exists()
    run = train(_cfg("train.epochs=1"), run_dir=tmp_path / "ok", splits=make_splits(n_train=33))
    assert run.status == "completed"  # without batch norm a batch of one trains
    # batch norm over 28x28 maps takes one image: not refused
    small = ["model=resnet18", "model.stem=small", "model.blocks=[1,1,1,1]", "model.width=0.125"]
    run = train(_cfg("train.epochs=1", *small), run_dir=tmp_path / "maps", splits=make_splits(33))
    assert run.status == "completed"
    # on 2 ranks a batch of 3 leaves one rank a single image in every step
    lenet = create_model("lenet5-bn", num_classes=4, in_channels=1, input_size=(28, 28))
    check_last_batch(lenet, 240, 3, (1, 28, 28))
    with pytest.raises(ConfigError, match="leaves batches of 1 image per rank"):
        check_last_batch(lenet, 240, 3, (1, 28, 28), world_size=2)
