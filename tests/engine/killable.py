"""Subprocess body for the kill-and-resume tests: train, and SIGKILL ourselves at a chosen point.

Usage: python -m tests.engine.killable RUN_DIR KILL_AT RESUME
KILL_AT is ``step:N`` (SIGKILL after optimizer step N, mid-epoch), ``epoch:N``
(SIGKILL right after epoch N is recorded), ``int:N`` (SIGINT, i.e. Ctrl-C, after
step N: the trainer saves a mid-epoch checkpoint) or ``none``.
"""

from __future__ import annotations

import os
import signal
import sys

import torch

from cnnlab.config import load_config
from cnnlab.engine.trainer import train
from tests.engine.synthetic import make_splits

OVERRIDES = [
    "train.epochs=3",
    "train.batch_size=32",
    "train.device=cpu",
    "model=lenet5-modern",
    "model.dropout=0.3",
    "optim.lr=0.05",
    "optim.momentum=0.9",
    "schedule=cosine",
    "data.augment.crop_padding=2",
    "data.augment.hflip=0.5",
]


def main() -> None:
    run_dir, kill_at, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    torch.set_num_threads(1)
    kind, _, n = kill_at.partition(":")
    steps_per_epoch = 8  # 256 images / batch 32

    def callback(event: str, info: dict) -> None:
        step = (info["epoch"] - 1) * steps_per_epoch + info["batch"] if event == "step" else None
        if kind in ("step", "int") and step == int(n):
            os.kill(os.getpid(), signal.SIGKILL if kind == "step" else signal.SIGINT)
        if kind == "epoch" and event == "epoch" and info["row"]["epoch"] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)

    config = None if resume else load_config(overrides=OVERRIDES)
    train(config, run_dir=run_dir, resume=resume, callback=callback, splits=make_splits())


if __name__ == "__main__":
    main()
