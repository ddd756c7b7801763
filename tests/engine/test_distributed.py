"""DistributedDataParallel on CPU (gloo): 2 processes give the single-process result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.engine import checkpoint as ckpt
from cnnlab.engine.distributed import torchrun_command
from cnnlab.engine.run import read_metrics
from tests.engine.synthetic import subprocess_env as _env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run(
        [sys.executable, "-m", "tests.engine.ddp_body", str(single)],
        cwd=ROOT,
        env=_env(),
        check=True,
        timeout=300,
        capture_output=True,
    )
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "tests.engine.ddp_body",
        str(multi),
    ]
    proc = subprocess.run(
        launcher, cwd=ROOT, env=_env(), timeout=300, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    a, b = read_metrics(single / "metrics.csv"), read_metrics(multi / "metrics.csv")
    assert [r["epoch"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-5), key
    wa = ckpt.load_checkpoint(single / "checkpoints" / "last.pt")["model"]
    wb = ckpt.load_checkpoint(multi / "checkpoints" / "last.pt")["model"]
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-5, rtol=1e-4), key
    summary = json.loads((multi / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "completed"


@pytest.mark.slow
def test_a_run_stopped_mid_epoch_on_two_ranks_resumes_to_the_single_process_numbers(tmp_path):
    """The epoch's partial sums a Ctrl-C saves are both ranks' (rank 0's alone lost rank 1's
    share: train_loss 1.2338 over 196 examples instead of 1.2579 over 241)."""
    single, run = tmp_path / "single", tmp_path / "run"
    body = [sys.executable, "-m", "tests.engine.ddp_body"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    common = {"cwd": ROOT, "env": _env(), "timeout": 300, "capture_output": True, "text": True}
    subprocess.run([*body, str(single)], check=True, **common)
    stop = [*launcher, "-m", "tests.engine.ddp_body", str(run), "stop"]
    stopped = subprocess.run(stop, check=False, **common)
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted", stopped.stderr
    subprocess.run([*body, str(run), "resume"], check=True, **common)  # one process goes on
    a, b = read_metrics(single / "metrics.csv"), read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-5), (rb["epoch"], key)


@pytest.mark.slow
def test_two_ranks_with_batch_norm_record_the_saved_models_numbers(tmp_path):
    """Each rank's last step moves its own running statistics; rank 0's are saved, so
    every rank evaluates with them."""
    from cnnlab.config import load_config
    from cnnlab.engine.inputs import build_pipeline, prepare_splits
    from cnnlab.engine.run import Run
    from cnnlab.engine.trainer import evaluate_tensors
    from tests.engine.ddp_body import OVERRIDES
    from tests.engine.synthetic import make_splits

    run = tmp_path / "bn"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*launcher, "-m", "tests.engine.ddp_body", str(run), "bn"],
        cwd=ROOT,
        env=_env(),
        timeout=300,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config(overrides=[*OVERRIDES, "model=lenet5-bn"])
    splits = prepare_splits(make_splits(n_train=240, n_val=50, n_test=50), cfg.data)
    model = Run.load(run).load_model("last")
    val_loss, val_acc = evaluate_tensors(
        model,
        splits.val.images,
        splits.val.labels,
        build_pipeline(splits, cfg.data),
        batch_size=cfg.train.eval_batch_size,
    )
    last = read_metrics(run / "metrics.csv")[-1]
    assert last["val_loss"] == pytest.approx(val_loss, rel=1e-5)
    assert last["val_acc"] == pytest.approx(val_acc)


def test_torchrun_command_relaunches_cnnlab():
    cmd = torchrun_command(4, ["train", "--name", "x"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=4" in cmd and cmd[-4:] == ["cnnlab", "train", "--name", "x"]


@pytest.mark.parametrize("rank", ["0", "1"])
def test_only_rank_0_speaks_when_interrupted(monkeypatch, capsys, rank):
    # rank 1 said "interrupted before training started; there is nothing to resume" beside
    # rank 0's "the checkpoint is saved": its progress is silent, so it never learns the folder
    from cnnlab.cli import main
    from cnnlab.engine import trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    assert main(["train", "train.devices=2", "--name", "r"]) == 130
    err = capsys.readouterr().err
    said = "interrupted before training started; there is nothing to resume\n"
    assert err == (said if rank == "0" else "")


def _cnnlab(args, cwd):
    cmd = [sys.executable, "-m", "cnnlab", *args]
    return subprocess.run(
        cmd, cwd=cwd, env=_env(), timeout=300, capture_output=True, text=True, check=False
    )


@pytest.mark.slow
def test_a_rank_error_is_one_line_once_with_status_2(tmp_path):
    # each rank printed it, then torchrun its failure report with a traceback (status 1)
    (tmp_path / "empty").mkdir()
    args = ["train", "train.devices=2", "train.device=cpu", "data=imagefolder"]
    proc = _cnnlab([*args, f"data.root={tmp_path / 'empty'}", "--name", "r"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "is not an image-folder tree" in proc.stderr
    assert not (tmp_path / "runs" / "r").exists()


@pytest.mark.slow
def test_ctrl_c_of_a_relaunched_run_leaves_it_resumable_and_says_so_once(tmp_path):
    # the parent's subprocess.call killed torchrun 0.25 s after Ctrl-C: torchrun's traceback,
    # status 1, and the prompt back before rank 0 had saved
    import signal
    import time

    from PIL import Image

    from tests.engine.synthetic import CLASSES, patch_images

    for split, n, seed in (("train", 400, 0), ("test", 40, 2)):
        images, labels = patch_images(n, seed)
        for i, (img, label) in enumerate(zip(images, labels.tolist())):
            folder = tmp_path / "tree" / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0].numpy()).save(folder / f"{i:04d}.png")
    args = ["train", "train.devices=2", "train.device=cpu", "data=imagefolder"]
    args += [f"data.root={tmp_path / 'tree'}", "model=lenet5-modern", "optim.lr=0.05"]
    args += ["train.epochs=100000", "--name", "r"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", *args],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    metrics = tmp_path / "runs" / "r" / "metrics.csv"
    deadline = time.monotonic() + 120
    while not metrics.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert (
        err == "interrupted; the checkpoint is saved. Resume with: cnnlab train --resume runs/r\n"
    )
    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert ckpt.load_checkpoint(tmp_path / "runs" / "r" / "checkpoints" / "last.pt")
