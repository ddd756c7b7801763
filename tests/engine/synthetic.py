"""A tiny learnable data set for engine tests: the class is the quadrant of a bright patch."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cnnlab.data import DataSplits, ImageSet
from cnnlab.data.stats import channel_stats

CLASSES = ("top-left", "top-right", "bottom-left", "bottom-right")

#: A small, fast run on these images (the engine tests add what each one varies).
SMALL_RUN = [
    "train.epochs=2",
    "train.batch_size=32",
    "train.device=cpu",
    "model=lenet5-modern",
    "optim.lr=0.05",
    "optim.momentum=0.9",
]
#: What every finished run folder holds.
RUN_FILES = {"config.yaml", "metrics.csv", "summary.json", "curves.png", "log.txt", "checkpoints"}


def subprocess_env() -> dict[str, str]:
    """The environment of a test's child Python: one thread, cnnlab from this checkout.

    src/ comes first: with the repository root alone the child imported the venv's
    editable install, so a worktree's subprocess runs used another tree's code.
    """
    root = Path(__file__).resolve().parents[2]
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join((str(root / "src"), str(root))),
    }


def patch_images(
    n: int, seed: int, size: int = 28, channels: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(CLASSES)
    images = torch.randint(0, 60, (n, channels, size, size), generator=g, dtype=torch.uint8)
    half, p = size // 2, size // 4
    for i, c in enumerate(labels.tolist()):
        oy = (c // 2) * half + int(torch.randint(0, half - p + 1, (1,), generator=g))
        ox = (c % 2) * half + int(torch.randint(0, half - p + 1, (1,), generator=g))
        images[i, :, oy : oy + p, ox : ox + p] = 230
    return images, labels


def make_splits(
    n_train: int = 256, n_val: int = 64, n_test: int = 64, size: int = 28, channels: int = 1
) -> DataSplits:
    sets = []
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1), ("test", n_test, 2)):
        x, y = patch_images(n, seed, size, channels)
        sets.append(ImageSet(x, y, CLASSES, name="patches", split=split, source="synthetic"))
    mean, std = channel_stats(sets[0].images)
    return DataSplits(train=sets[0], val=sets[1], test=sets[2], mean=mean, std=std)
