"""Subprocess body for the DDP test: one run on synthetic data, under torchrun or alone.

Usage: [torchrun --nproc_per_node=N -m] tests.engine.ddp_body RUN_DIR [stop|resume]

``stop``: every rank stops (as on Ctrl-C) before the fourth step of epoch 1;
``resume``: continue the run in RUN_DIR; ``bn``: the run with batch norm.
"""

from __future__ import annotations

import sys

import torch

from cnnlab.config import load_config
from cnnlab.engine import trainer
from tests.engine.synthetic import make_splits

OVERRIDES = [
    "train.epochs=2",
    "train.batch_size=30",  # not a multiple of 2: uneven shards must still give the global update
    "train.device=cpu",
    "model=lenet5-modern",
    "optim.lr=0.05",
    "optim.momentum=0.9",
    "data.augment.crop_padding=2",
    "data.augment.hflip=0.5",
]


class _StopAtFourthStep(trainer.InterruptGate):
    """A Ctrl-C that every rank sees before the same step (the gate's check raises it)."""

    checks = 0

    def check(self) -> None:
        _StopAtFourthStep.checks += 1
        if _StopAtFourthStep.checks == 4:
            raise KeyboardInterrupt


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode = sys.argv[2] if len(sys.argv) > 2 else ""
    if mode == "stop":
        trainer.InterruptGate = _StopAtFourthStep
    try:
        trainer.train(
            load_config(overrides=[*OVERRIDES, *(["model=lenet5-bn"] if mode == "bn" else [])])
            if mode != "resume"
            else None,
            run_dir=sys.argv[1],
            resume=mode == "resume",
            # 241 = 8 x 30 + 1: the last batch leaves rank 1 of 2 an empty shard (batch
            # norm in training cannot take a batch of one: 240 for it)
            splits=make_splits(n_train=240 if mode == "bn" else 241, n_val=50, n_test=50),
        )
    except KeyboardInterrupt:
        sys.exit(130)
