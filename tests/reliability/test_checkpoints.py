"""Checkpoint faults: killed mid-write, disk full, read-only folder, corruption, pickle payloads."""

from __future__ import annotations

import builtins
import errno
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.cli import main
from cnnlab.config import load_config
from cnnlab.engine import checkpoint as ckpt
from cnnlab.engine.run import read_metrics
from cnnlab.engine.trainer import train
from cnnlab.errors import CheckpointError
from tests.engine.synthetic import make_splits, subprocess_env

ROOT = Path(__file__).resolve().parents[2]
QUICK = [
    "train.epochs=3",
    "train.batch_size=64",
    "train.device=cpu",
    "model=lenet5-modern",
    "optim.lr=0.05",
    "optim.momentum=0.9",
]


def _body(run_dir: Path, mode: str, resume: bool = False) -> subprocess.CompletedProcess:
    env = subprocess_env()
    args = [sys.executable, "-m", "tests.reliability.ckpt_body", str(run_dir), mode] + (
        ["resume"] if resume else []
    )
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _weights(path: Path) -> dict:
    return ckpt.load_checkpoint(path)["model"]


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "run"
    assert _body(path, "none").returncode == 0
    return path


@pytest.mark.slow
def test_killed_during_checkpoint_write(tmp_path, reference):
    run = tmp_path / "run"
    proc = _body(run, "kill-mid-write")
    assert proc.returncode == -signal.SIGKILL
    ckdir = run / "checkpoints"
    assert not _no_temp_files(ckdir)  # the half-written file is there ...
    # last.pt is still epoch 1's, complete and verified; the half-written temp file is ignored
    state = ckpt.load_checkpoint(ckdir / "last.pt")
    assert state["state"]["epoch"] == 1
    assert _body(run, "none", resume=True).returncode == 0
    assert _no_temp_files(ckdir)  # the dead process's half file is cleaned up by the next write
    ref_w, got_w = _weights(reference / "checkpoints" / "last.pt"), _weights(ckdir / "last.pt")
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [1, 2, 3]


@pytest.mark.slow
def test_disk_full_keeps_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = _body(run, "disk-full")
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert (
        err.startswith("error: could not write checkpoint") and "previous checkpoint is kept" in err
    )
    ckdir = run / "checkpoints"
    assert ckpt.load_checkpoint(ckdir / "last.pt")["state"]["epoch"] == 1
    assert _no_temp_files(ckdir)


def test_read_only_checkpoint_folder(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint({"x": torch.ones(2)}, path)
    if os.geteuid() == 0:
        # root ignores permission bits: refuse writes in that folder at the open() call instead
        real_open = builtins.open

        def read_only_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and Path(file).parent == tmp_path:
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", read_only_open)
    else:
        tmp_path.chmod(0o500)
    try:
        with pytest.raises(
            CheckpointError,
            match=r"could not write checkpoint .*Permission denied.*previous checkpoint is kept",
        ):
            ckpt.save_checkpoint({"x": torch.zeros(2)}, path)
    finally:
        monkeypatch.undo()
        tmp_path.chmod(0o700)
    assert torch.equal(ckpt.load_checkpoint(path)["x"], torch.ones(2))
    assert _no_temp_files(tmp_path)


def _finished_run(tmp_path: Path) -> Path:
    run = train(load_config(overrides=QUICK), run_dir=tmp_path / "run", splits=make_splits())
    return run.path


@pytest.mark.parametrize("damage", ["truncate", "flip-bit"])
def test_corrupt_checkpoint_is_refused_and_resume_falls_back(tmp_path, damage):
    cfg = load_config(overrides=[*QUICK, "train.epochs=2"])
    run = train(cfg, run_dir=tmp_path / "run", splits=make_splits()).path
    last = run / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 3]
    else:
        data[len(data) // 2] ^= 0x10
    last.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.load_checkpoint(last)
    state, used = ckpt.load_latest_good(run / "checkpoints")
    assert used.name == "last.prev.pt" and state["state"]["epoch"] == 1
    # extend the run by resuming: it continues from epoch 1's good checkpoint
    resumed = train(None, run_dir=run, resume=True, splits=make_splits())
    assert any("last.prev.pt" in n for n in resumed.summary["notes"])
    assert [r["epoch"] for r in resumed.metrics] == [1, 2]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("force_env", [False, True])
def test_pickle_payload_is_refused(tmp_path, monkeypatch, capsys, force_env):
    marker = tmp_path / "pwned"
    run = _finished_run(tmp_path)
    best = run / "checkpoints" / "best.pt"
    with open(best, "wb") as fh:
        pickle.dump({"model": _Payload(marker)}, fh)
    # a matching sidecar: the hash check passes, so weights_only is what must refuse it
    (run / "checkpoints" / "best.pt.sha256").write_text(ckpt._sha256(best.read_bytes()) + "\n")
    if force_env:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="refused"):
        ckpt.load_checkpoint(best)
    assert main(["export", str(run), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint") and "refused" in err and "\n" not in err
    assert not marker.exists()
    if force_env:
        assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # restored after loading


def test_nan_statistics_in_data_stop_before_training(tmp_path):
    from dataclasses import replace

    from cnnlab.errors import DataError

    splits = replace(make_splits(), mean=(float("nan"),))
    with pytest.raises(DataError, match="invalid statistics"):
        train(load_config(overrides=QUICK), run_dir=tmp_path / "run", splits=splits)
    assert not (tmp_path / "run").exists()
