"""From a data config to device-resident splits and the batch pipeline.

Subsetting and the pixel permutation are applied once to the uint8 tensors, so
every epoch and every evaluation sees the same images at no per-batch cost.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from cnnlab.config import DataConfig
from cnnlab.data import DataSplits, ImageSet, load_splits
from cnnlab.data import transforms as T
from cnnlab.engine.batches import BatchPipeline, derive_seed, generator
from cnnlab.errors import DataError


def load_run_data(cfg: DataConfig, progress=None) -> DataSplits:
    """Load the splits a run config names and apply subset and permutation."""
    options = {"root": cfg.root} if cfg.root else {}
    splits = load_splits(
        cfg.name,
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed,
        data_dir=cfg.data_dir,
        download=cfg.download,
        progress=progress,
        **options,
    )
    return prepare_splits(splits, cfg)


def _empty(like: ImageSet, split: str) -> ImageSet:
    return like.subset(torch.empty(0, dtype=torch.int64), split=split)


def _subset(s: ImageSet, n: int | None, seed: int) -> ImageSet:
    if n is None or n >= len(s):
        return s
    idx = torch.randperm(len(s), generator=generator(derive_seed(seed, n)))[:n]
    return s.subset(idx.sort().values)


def prepare_splits(splits: DataSplits, cfg: DataConfig) -> DataSplits:
    """Apply ``subset``/``test_subset`` (seeded by split_seed) and ``permute_pixels``.

    Missing val/test splits become empty ones so the loop needs no special cases.

    Raises:
        DataError: the data set has fewer than two classes (an image folder with
            one class folder): every prediction would be right, and accuracy 1.0
            would say nothing.
    """
    if splits.num_classes < 2:
        raise DataError(
            f"data set {splits.name!r} has {splits.num_classes} class"
            f" ({', '.join(map(repr, splits.classes)) or 'none'}) in {splits.source};"
            " a classifier needs at least 2 (one sub-folder of train/ per class)"
        )
    train = _subset(splits.train, cfg.subset, cfg.split_seed)
    val = _subset(
        splits.val if splits.val is not None else _empty(splits.train, "val"),
        cfg.test_subset,
        cfg.split_seed + 1,
    )
    test = _subset(
        splits.test if splits.test is not None else _empty(splits.train, "test"),
        cfg.test_subset,
        cfg.split_seed + 2,
    )
    if cfg.permute_pixels:
        h, w = splits.image_size
        perm = T.pixel_permutation(h, w, cfg.permute_seed)
        train, val, test = (
            replace(s, images=T.permute_pixels(s.images, perm)) for s in (train, val, test)
        )
    if len(train) == 0:
        raise DataError(f"data set {splits.name!r} has an empty training split")
    bad = [v for v in (*splits.mean, *splits.std) if not math.isfinite(v)] + [
        v for v in splits.std if v <= 0
    ]
    if bad:
        raise DataError(
            f"data set {splits.name!r} has invalid statistics (mean {splits.mean}, std {splits.std}); the images may be corrupt"
        )
    return replace(splits, train=train, val=val, test=test)


def input_size(splits: DataSplits, cfg: DataConfig) -> tuple[int, int]:
    return (cfg.resize, cfg.resize) if cfg.resize else tuple(splits.image_size)


def build_pipeline(
    splits: DataSplits, cfg: DataConfig, *, channels_last: bool = False
) -> BatchPipeline:
    size = (cfg.resize, cfg.resize) if cfg.resize else None
    mean, std = (splits.mean, splits.std) if cfg.normalize else ((), ())
    return BatchPipeline(
        mean=tuple(mean),
        std=tuple(std),
        size=size,
        augment=cfg.augment,
        channels_last=channels_last,
    )


def to_device(s: ImageSet, device: torch.device) -> ImageSet:
    return s.to(device)
