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

ROOT = Path(__file__).resolve().parents[2]


def _env():
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join((str(ROOT / "src"), str(ROOT))),
    }


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
