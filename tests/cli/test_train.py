"""The train / evaluate / predict / export commands, end to end on a generated ImageFolder tree."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from cnnlab.cli import main
from cnnlab.errors import RunError
from tests.engine.synthetic import CLASSES, patch_images


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("patches")
    for split, n, seed in (("train", 160, 0), ("test", 40, 2)):
        images, labels = patch_images(n, seed)
        for i, (img, label) in enumerate(zip(images, labels.tolist())):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0].numpy()).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


def _train_args(tree, runs, *extra):
    return [
        "train",
        "data=imagefolder",
        f"data.root={tree}",
        "model=lenet5-modern",
        "train.epochs=2",
        "train.batch_size=32",
        "optim.lr=0.05",
        "optim.momentum=0.9",
        "--runs",
        str(runs),
        "--name",
        "r",
        *extra,
    ]


def _one_line_error(capsys, needle):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert needle in err, err
    return err


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to check that nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def done_run(tree, tmp_path_factory):
    """A completed one-epoch run; tests that change it work on a copy (see ``run_copy``)."""
    base = tmp_path_factory.mktemp("done")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE", str(base / "cache"))
        args = _train_args(tree, base / "runs")
        args[args.index("train.epochs=2")] = "train.epochs=1"
        assert main(args) == 0
    return base / "runs" / "r"


@pytest.fixture
def run_copy(done_run, tmp_path):
    return Path(shutil.copytree(done_run, tmp_path / "copy" / "r"))


def test_train_evaluate_predict_export(tree, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(_train_args(tree, runs)) == 0
    out = capsys.readouterr().out
    assert "epoch 1," in out and "epoch 2," in out
    assert "examples/sec on cpu" in out
    run = runs / "r"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["data"]["classes"] == sorted(CLASSES)

    assert main(["evaluate", str(run), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and (run / "confusion.png").is_file()

    preds = tmp_path / "test.txt"
    probs = tmp_path / "probs.csv"
    assert (
        main(["predict", str(run), "--split", "test", "--out", str(preds), "--probs", str(probs)])
        == 0
    )
    lines = preds.read_text().splitlines()
    assert len(lines) == 40 and set(lines) <= set(CLASSES)
    assert probs.read_text().splitlines()[0].startswith("index,predicted,")

    some = next((tree / "test" / CLASSES[0]).iterdir())
    capsys.readouterr()
    assert main(["predict", str(run), str(some), "--top-k", "2"]) == 0
    assert str(some) in capsys.readouterr().out

    assert (
        main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    )
    assert (tmp_path / "m.pt").is_file()

    # a second train into the same name is refused and leaves the run intact
    before = (run / "metrics.csv").read_text()
    assert main(_train_args(tree, runs)) == 2
    _one_line_error(capsys, "already holds a run")
    assert (run / "metrics.csv").read_text() == before

    # resume of a finished run is refused and changes nothing
    before = _snapshot(run)
    assert main(["train", "--resume", str(run)]) == 2
    _one_line_error(capsys, "is already completed (2 epochs); nothing to resume")
    assert _snapshot(run) == before


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "optim.lr=-3"], "optim.lr=-3"),
        (["train", "optim.lrr=3"], "unknown key 'optim.lrr'"),
        (["train", "model=lenet6"], "model.name='lenet6'"),
        (["train", "data=imagenet"], "data.name='imagenet'"),
        (["train", "train.batch_size=big"], "train.batch_size='big'"),
        (["train", "lr0.1"], "must look like key=value"),
        (["train", "--resume", "/nonexistent/run"], "not a run folder"),
        (["train", "--config", "/nonexistent/run.yaml"], "cannot read config file"),
        (["evaluate", "/nonexistent/run"], "not a run folder"),
        (["predict", "/nonexistent/run"], "not a run folder"),
        (["export", "/nonexistent/run"], "not a run folder"),
        (["train", "--bogus"], "No such option"),
    ],
)
def test_bad_input_is_one_line_and_status_2(args, needle, capsys):
    assert main(args) == 2
    _one_line_error(capsys, needle)


def test_model_that_cannot_take_the_input_fails_before_training(tree, tmp_path, capsys):
    # classic AlexNet needs large inputs; a 28-pixel tree must fail at construction, naming a layer
    assert main(_train_args(tree, tmp_path / "runs", "model=alexnet")) == 2
    err = _one_line_error(capsys, "cannot take input")
    assert "layer" in err
    assert not (tmp_path / "runs").exists()  # nothing left behind


@pytest.mark.parametrize(
    "override, needle",
    [
        (
            "model.padding=-1",
            "model 'lenet5-modern': padding=-1 is not allowed; use an integer >= 0",
        ),
        ("model.kernel_size=0", "kernel_size=0 is not allowed; use an integer >= 1"),
        ("model.hidden=-3", "hidden=-3 is not allowed; use a list of integers >= 1"),
        ("model.hidden=abc", "hidden='abc' is not allowed"),
        ("model.channels=[6.5,16]", "channels=[6.5, 16] is not allowed"),
    ],
)
def test_bad_model_option_values_fail_before_the_run_folder(
    tree, tmp_path, capsys, override, needle
):
    assert main(_train_args(tree, tmp_path / "runs", override)) == 2
    _one_line_error(capsys, needle)
    assert not (tmp_path / "runs").exists()


def test_a_model_that_cannot_run_fails_before_the_run_folder(tree, tmp_path, capsys, monkeypatch):
    # the safety net behind the option checks: one real forward pass before the folder exists
    from cnnlab import models

    monkeypatch.setattr(models, "check_option_values", lambda builder, options: None)
    assert main(_train_args(tree, tmp_path / "runs", "model.padding=-1")) == 2
    _one_line_error(capsys, "model 'lenet5-modern' cannot run with padding=-1 (negative padding")
    assert not (tmp_path / "runs").exists()


def test_devices_2_relaunches_under_torchrun_with_a_fixed_name(tree, tmp_path, monkeypatch):
    # the launch itself is covered by tests/engine/test_distributed.py; here: what the CLI asks for
    from cnnlab.engine import distributed

    calls = []
    monkeypatch.setattr(distributed, "launch", lambda n, args: calls.append((n, list(args))) or 0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = _train_args(tree, tmp_path / "runs", "train.devices=2")
    args.remove("--name")
    args.remove("r")
    assert main(args) == 0
    ((n, relaunched),) = calls
    assert n == 2 and relaunched[0] == "train" and "train.devices=2" in relaunched
    name = relaunched[relaunched.index("--name") + 1]
    assert name.endswith("-lenet5-modern-imagefolder")
    assert not (tmp_path / "runs").exists()


def test_exit_status_of_a_relaunch_is_passed_through(tree, tmp_path, monkeypatch):
    from cnnlab.engine import distributed

    monkeypatch.setattr(distributed, "launch", lambda n, args: 3)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(_train_args(tree, tmp_path / "runs", "train.devices=2")) == 3


@pytest.mark.parametrize("name", [".", "..", "../escape", "a/b", "/abs/path", "", "a b", "r\\x"])
def test_run_name_must_be_a_plain_folder_name(tree, tmp_path, monkeypatch, capsys, name):
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    monkeypatch.chdir(work)
    args = _train_args(tree, "runs")
    args[args.index("--name") + 1] = name
    assert main(args) == 2
    err = _one_line_error(capsys, f"run name {name!r} is not allowed")
    assert "letters, digits" in err
    assert [p.name for p in tmp_path.rglob("*")] == ["work", "runs"]  # nothing written


def test_a_new_run_never_writes_into_an_existing_folder(tree, tmp_path, capsys):
    victim = tmp_path / "victim" / "mine"
    victim.mkdir(parents=True)
    (victim / "metrics.csv").write_text("the user's own numbers\n")
    assert main(_train_args(tree, tmp_path / "victim")[:-1] + ["mine"]) == 2
    _one_line_error(capsys, "already exists and is not a run folder (no config.yaml)")
    assert [p.name for p in victim.iterdir()] == ["metrics.csv"]
    assert (victim / "metrics.csv").read_text() == "the user's own numbers\n"


def test_ranks_of_a_torchrun_share_the_folder_rank_0_creates(tree, tmp_path, monkeypatch):
    # a rank other than 0 may find the folder already made; it writes nothing itself
    from cnnlab.engine import trainer

    (tmp_path / "runs" / "r").mkdir(parents=True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    seen = []
    monkeypatch.setattr(
        trainer, "prepare_run_dir", lambda cfg, run_dir, *a: seen.append(run_dir) or 1 / 0
    )
    with pytest.raises(ZeroDivisionError):
        trainer.train(run_dir=None, name="r", runs_root=tmp_path / "runs")
    assert seen == [None]  # not refused: the folder is found, as rank 0 made it
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RunError, match="already exists"):
        trainer.train(run_dir=None, name="r", runs_root=tmp_path / "runs")


def test_resume_of_a_completed_run_without_checkpoints_is_refused(run_copy, capsys):
    shutil.rmtree(run_copy / "checkpoints")
    before = _snapshot(run_copy)
    assert main(["train", "--resume", str(run_copy)]) == 2
    _one_line_error(capsys, "is already completed (1 epoch); nothing to resume")
    assert _snapshot(run_copy) == before
    assert not (run_copy / "checkpoints").exists()
    # the library refuses too rather than train again over the results
    from cnnlab.engine.trainer import train

    with pytest.raises(RunError, match="already completed"):
        train(run_dir=run_copy, resume=True)
    assert _snapshot(run_copy) == before


def test_library_resume_of_a_finished_run_touches_nothing(run_copy):
    from cnnlab.engine.trainer import train

    before = _snapshot(run_copy)
    run = train(run_dir=run_copy, resume=True)
    assert run.status == "completed"
    assert _snapshot(run_copy) == before


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--name", "other"], "drop --name"),
        (["--runs", "elsewhere"], "drop --runs"),
        (["--data-dir", "/tmp"], "drop --data-dir"),
        (["--config", "c.yaml"], "drop --config"),
        (["optim.lr=0.1"], "drop the overrides (optim.lr=0.1)"),
    ],
)
def test_resume_refuses_options_it_would_ignore(done_run, capsys, extra, needle):
    before = _snapshot(done_run)
    assert main(["train", "--resume", str(done_run), *extra]) == 2
    err = _one_line_error(capsys, needle)
    assert "--resume continues a run" in err
    assert _snapshot(done_run) == before


@pytest.mark.parametrize("command", [["evaluate"], ["predict"], ["predict", "--split", "val"]])
@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu0", ""])
def test_bad_device_is_one_line(done_run, capsys, command, device):
    assert main([command[0], str(done_run), *command[1:], "--device", device]) == 2
    _one_line_error(
        capsys, f"--device {device!r} is not allowed; use auto, cpu, cuda, cuda:N or mps"
    )


def test_unavailable_device_names_the_option(done_run, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["evaluate", str(done_run), "--device", "cuda:1"]) == 2
    _one_line_error(capsys, "--device 'cuda:1' but CUDA is not available here; use --device cpu")


def test_train_device_message_matches_the_commands(capsys):
    assert main(["train", "train.device=tpu"]) == 2
    _one_line_error(capsys, "train.device='tpu' is not allowed; use auto, cpu, cuda, cuda:N or mps")


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder nobody may write into (root ignores permission bits: os.access says no then)."""
    import os

    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "old.txt").write_text("kept\n")
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = os.access

        def access(path, mode, *args, **kwargs):
            if mode & os.W_OK and Path(path).resolve().is_relative_to(folder.resolve()):
                return False
            return real(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    yield folder
    folder.chmod(0o755)


def test_predict_checks_its_outputs_before_the_work(done_run, tmp_path, read_only, capsys):
    (tmp_path / "afile").write_text("x")
    cases = [
        (["--out", str(tmp_path)], "it is a folder"),
        (["--out", str(tmp_path / "afile" / "x.txt")], "is not a folder"),
        (["--out", str(read_only / "x.txt")], "permission denied"),
        (["--out", str(read_only / "old.txt")], "permission denied"),
        (["--probs", str(read_only / "x.csv")], "permission denied"),
        (["--out", str(tmp_path / "p.txt"), "--probs", str(tmp_path / "p.txt")], "same file"),
    ]
    for extra, needle in cases:
        assert main(["predict", str(done_run), *extra]) == 2, extra
        out, err = capsys.readouterr()
        assert out == ""  # nothing printed, then lost
        err = err.strip()
        assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert sorted(p.name for p in read_only.iterdir()) == ["old.txt"]
    assert not (tmp_path / "p.txt").exists()


def test_export_checks_its_output_before_tracing(done_run, tmp_path, read_only, capsys):
    for fmt in ("torchscript", "onnx"):
        for out, needle in (
            (tmp_path, "it is a folder"),
            (read_only / "m.pt", "permission denied"),
        ):
            assert main(["export", str(done_run), "--format", fmt, "--out", str(out)]) == 2
            captured = capsys.readouterr()
            assert "Warning" not in captured.err + captured.out
            assert captured.err.count("\n") == 1 and needle in captured.err, captured.err
    assert sorted(p.name for p in read_only.iterdir()) == ["old.txt"]


def test_evaluate_of_a_read_only_run_fails_before_the_work(run_copy, monkeypatch, capsys):
    import os

    real = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda path, mode, *a, **k: (
            False if Path(path) == run_copy and mode & os.W_OK else real(path, mode, *a, **k)
        ),
    )
    before = _snapshot(run_copy)
    assert main(["evaluate", str(run_copy)]) == 2
    err = _one_line_error(capsys, "confusion.png': permission denied")
    assert str(run_copy) in err
    assert _snapshot(run_copy) == before


@pytest.mark.parametrize("extra", [["--out", "o.txt"], ["--split", "val"], ["--probs", "p.csv"]])
def test_predict_refuses_image_files_with_split_options(done_run, tree, tmp_path, capsys, extra):
    some = next((tree / "test" / CLASSES[0]).iterdir())
    extra = [str(tmp_path / e) if e.endswith((".txt", ".csv")) else e for e in extra]
    assert main(["predict", str(done_run), str(some), *extra]) == 2
    _one_line_error(capsys, "give image files or --split/--out/--probs, not both")
    assert capsys.readouterr().out == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("rank", "speaks"), [("0", True), ("1", False)])
def test_only_rank_0_of_a_torchrun_run_prints(tree, tmp_path, capsys, monkeypatch, rank, speaks):
    # Every rank runs the same command line; the lines appeared once per process.
    import cnnlab.engine.distributed as dist

    monkeypatch.setattr(dist, "launched_rank", lambda: int(rank))  # trains in this process
    assert main(_train_args(tree, tmp_path / "runs", "train.epochs=1")) == 0
    out = capsys.readouterr().out
    assert (out.count("run folder:") == 1) is speaks and (out.count("epoch 1") == 1) is speaks


def test_ctrl_c_names_the_run_folder_to_resume(tree, tmp_path, capsys, monkeypatch):
    # The message said "cnnlab train --resume runs/<name>", a placeholder, not the folder.
    from cnnlab.cli.train import Progress

    shown = Progress._on_epoch

    def stop_after_epoch_1(self, info):
        shown(self, info)
        raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "_on_epoch", stop_after_epoch_1)
    runs = tmp_path / "runs"
    assert main(_train_args(tree, runs)) == 130
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"Resume with: cnnlab train --resume {runs / 'r'}"), err
    monkeypatch.undo()
    assert main(["train", "--resume", str(runs / "r")]) == 0
    assert json.loads((runs / "r" / "summary.json").read_text())["epochs_completed"] == 2


def test_ctrl_c_before_training_says_there_is_nothing_to_resume(
    tree, tmp_path, capsys, monkeypatch
):
    from cnnlab.engine import trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    assert main(_train_args(tree, tmp_path / "runs")) == 130
    err = capsys.readouterr().err.strip()
    assert err == "interrupted before training started; there is nothing to resume", err


def test_a_run_config_trains_the_same_run_again(tree, tmp_path):
    # Values written the way users type them (1e-3, none, ReLU, a section mapping):
    # the saved config.yaml must reload to the same config and start the same run.
    from cnnlab.config import load_config

    args = _train_args(
        tree,
        tmp_path / "runs",
        "train.epochs=1",
        "optim={name: adam, lr: 1e-3, betas: [0.9, 0.99]}",
        "model.norm=none",
        "model.activation=ReLU",
        "model.dropout=0",
        "model.channels=[6,16]",
        "data.resize=32",
    )
    assert main(args) == 0
    first = tmp_path / "runs" / "r"
    cfg = load_config(first / "config.yaml")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.betas) == ("adam", 0.001, (0.9, 0.99))
    assert cfg.model.options() == {
        "norm": "none",
        "activation": "relu",
        "dropout": 0.0,
        "channels": [6, 16],
    }
    assert f"config: {cfg.short()}" in (first / "log.txt").read_text()
    again = ["train", "--config", str(first / "config.yaml"), "--runs", str(tmp_path / "runs")]
    assert main([*again, "--name", "r2"]) == 0
    second = tmp_path / "runs" / "r2"
    assert (second / "config.yaml").read_text() == (first / "config.yaml").read_text()
    assert load_config(second / "config.yaml").fingerprint() == cfg.fingerprint()
    summaries = [json.loads((p / "summary.json").read_text()) for p in (first, second)]
    assert summaries[0]["final"] == summaries[1]["final"]


def test_without_a_validation_split_best_names_the_training_metric(tree, tmp_path):
    # summary.json called the best train accuracy "val_acc" (studies read it as best_val_acc).
    args = _train_args(tree, tmp_path / "runs", "train.epochs=1", "data.val_fraction=0")
    assert main(args) == 0
    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert summary["final"]["val_acc"] is None
    assert summary["best"] == {"train_acc": summary["final"]["train_acc"], "epoch": 1}
