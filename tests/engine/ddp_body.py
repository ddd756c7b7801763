"""Subprocess body for the DDP test: one run on synthetic data, under torchrun or alone.

Usage: [torchrun --nproc_per_node=N -m] tests.engine.ddp_body RUN_DIR
"""

from __future__ import annotations

import sys

import torch

from cnnlab.config import load_config
from cnnlab.engine.trainer import train
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

if __name__ == "__main__":
    torch.set_num_threads(1)
    train(
        load_config(overrides=OVERRIDES),
        run_dir=sys.argv[1],
        # 241 = 8 x 30 + 1: the last batch leaves rank 1 of 2 an empty shard
        splits=make_splits(n_train=241, n_val=50, n_test=50),
    )
