"""Exact resume: SIGKILL a CPU run at several points, resume each time, compare bitwise."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.engine import checkpoint as ckpt
from cnnlab.engine.run import read_metrics
from tests.engine.synthetic import subprocess_env

ROOT = Path(__file__).resolve().parents[2]


def _run(run_dir: Path, kill_at: str, resume: bool) -> int:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.engine.killable",
            str(run_dir),
            kill_at,
            "1" if resume else "0",
        ],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,  # killed on purpose; the status is checked below
    )
    if proc.returncode not in (0, -signal.SIGKILL, -signal.SIGINT):
        raise AssertionError(proc.stderr[-3000:])
    return proc.returncode


def _weights(run_dir: Path) -> dict:
    return ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


@pytest.mark.slow
def test_sigkill_mid_epoch_and_ctrl_c_then_resume_is_bitwise_equal(tmp_path):
    """Kill mid-epoch, then Ctrl-C mid-epoch (resumes from the mid-epoch checkpoint).

    tests/reliability/test_kill_resume.py adds 20 random kill points.
    """
    reference = tmp_path / "reference"
    assert _run(reference, "none", resume=False) == 0

    killed = tmp_path / "killed"
    assert _run(killed, "step:13", resume=False) == -signal.SIGKILL
    assert _run(killed, "int:19", resume=True) == -signal.SIGINT
    assert "interrupted" in (killed / "summary.json").read_text()
    assert _run(killed, "none", resume=True) == 0

    ref_w, got_w = _weights(reference), _weights(killed)
    assert ref_w.keys() == got_w.keys()
    for key in ref_w:
        assert torch.equal(ref_w[key], got_w[key]), key

    ref_rows, got_rows = (
        read_metrics(reference / "metrics.csv"),
        read_metrics(killed / "metrics.csv"),
    )
    assert [r["epoch"] for r in got_rows] == [1, 2, 3]
    for a, b in zip(ref_rows, got_rows):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr"):
            assert a[key] == b[key], (key, a, b)


def test_a_checkpoint_resumes_its_config_on_any_gpu_and_old_ones_need_the_exact_config():
    from cnnlab.config import load_config

    on0, on1 = (load_config(overrides=[f"train.device=cuda:{i}"]) for i in (0, 1))
    saved = ckpt.fingerprints(on0)
    assert ckpt.resumes(saved, on0) and ckpt.resumes(saved, on1)
    assert not ckpt.resumes(saved, load_config(overrides=["train.device=cuda:1", "optim.lr=0.5"]))
    old = {"config_fingerprint": on0.fingerprint()}  # written before resume_fingerprint
    assert ckpt.resumes(old, on0) and not ckpt.resumes(old, on1)


def test_cuda_rng_states_of_gpus_this_process_does_not_see_are_dropped(monkeypatch):
    state = ckpt.rng_state()
    state["cuda"] = [torch.zeros(8, dtype=torch.uint8) + i for i in range(8)]  # saved with 8 GPUs
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    ckpt.set_rng_state(state)
    assert [int(s[0]) for s in restored] == [0, 1]


def test_a_run_resumed_on_another_gpu_continues_its_own_gpus_generator(monkeypatch):
    # A study's worker on cuda:0 may resume a run interrupted on cuda:1: the generator the
    # run used (cuda:1's) must continue on cuda:0, not the one cuda:0 had in the old process.
    gpus = {i: torch.full((8,), i, dtype=torch.uint8) for i in range(2)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [gpus[0], gpus[1]])
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: gpus[device.index].clone())
    state = ckpt.rng_state(torch.device("cuda", 1))
    gpus[1] += 10  # what the run drew after the checkpoint is gone

    def set_state(new, device):
        gpus[device.index] = new

    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: None)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    ckpt.set_rng_state(state, torch.device("cuda", 0))
    assert int(gpus[0][0]) == 1


def _interrupted_then_resumed(run_dir: Path, event: str, when) -> None:
    """Ctrl-C (in process) at the first ``event`` for which ``when(info)`` holds, then resume."""
    from cnnlab.config import load_config
    from cnnlab.engine.trainer import train
    from tests.engine.killable import OVERRIDES
    from tests.engine.synthetic import make_splits

    def stop(name: str, info: dict) -> None:
        if name == event and when(info):
            raise KeyboardInterrupt

    torch.set_num_threads(1)
    with pytest.raises(KeyboardInterrupt):
        train(
            load_config(overrides=OVERRIDES), run_dir=run_dir, callback=stop, splits=make_splits()
        )
    train(None, run_dir=run_dir, resume=True, splits=make_splits())


@pytest.mark.parametrize(
    ("event", "when"),
    [
        # after epoch 1 is recorded: its numbers were carried into epoch 2 as a partial
        ("epoch", lambda info: info["row"]["epoch"] == 1),
        # after epoch 2's last step, before its evaluation: resumes at the epoch's end
        ("step", lambda info: info["epoch"] == 2 and info["batch"] == info["steps"]),
        # mid-epoch
        ("step", lambda info: info["epoch"] == 2 and info["batch"] == 3),
    ],
    ids=["after-epoch", "before-evaluation", "mid-epoch"],
)
def test_ctrl_c_anywhere_in_an_epoch_resumes_to_the_same_numbers(tmp_path, event, when):
    reference = tmp_path / "reference"
    _run(reference, "none", resume=False)
    stopped = tmp_path / "stopped"
    _interrupted_then_resumed(stopped, event, when)
    ref_rows, got_rows = (
        read_metrics(reference / "metrics.csv"),
        read_metrics(stopped / "metrics.csv"),
    )
    assert [r["epoch"] for r in got_rows] == [1, 2, 3]
    for a, b in zip(ref_rows, got_rows):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (key, a["epoch"])
    # The run's training time is the sum of its epochs', however it was cut.
    import json

    summary = json.loads((stopped / "summary.json").read_text())
    seconds = sum(r["seconds"] for r in got_rows)
    assert summary["time"]["train_seconds"] == pytest.approx(seconds, rel=1e-6, abs=1e-6)
    reference_best = json.loads((reference / "summary.json").read_text())["best"]
    assert summary["best"] == reference_best
