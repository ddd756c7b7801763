"""Batches from a data set held whole in (device) memory.

There is no DataLoader and no per-sample Python: an epoch is slices of one
seeded ``randperm``, and each batch is converted and augmented as one tensor.
Every random draw comes from a generator seeded by (seed, epoch[, batch]), so
the order and the augmentation of any batch can be recomputed from nothing but
those numbers — which is what makes mid-epoch resume exact without saving
generator state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from cnnlab.config import AugmentConfig
from cnnlab.data import transforms as T

_MASK = (1 << 63) - 1


def derive_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed (splitmix64-style), stable across platforms."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & _MASK


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


@dataclass(frozen=True)
class BatchPipeline:
    """uint8 batch -> float batch ready for the model: normalize, resize, augment.

    Attributes:
        mean, std: per-channel statistics on the 0..1 scale (empty = no normalization).
        size: output (H, W) when resizing, else None.
        augment: training-time augmentation (ignored for evaluation).
        channels_last: convert the batch to channels_last memory format.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int] | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    channels_last: bool = False

    def __call__(
        self, x: torch.Tensor, g: torch.Generator | None = None, train: bool = False
    ) -> torch.Tensor:
        x = T.normalize(x, self.mean, self.std) if self.mean else T.to_float(x)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = T.resize(x, self.size)
        if train and g is not None:
            a = self.augment
            if a.crop_padding:
                x = T.random_crop(x, tuple(x.shape[-2:]), a.crop_padding, generator=g)
            if a.hflip:
                x = T.random_flip(x, a.hflip, dim=-1, generator=g)
            if a.vflip:
                x = T.random_flip(x, a.vflip, dim=-2, generator=g)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def epoch_order(n: int, seed: int, epoch: int, device: torch.device | str) -> torch.Tensor:
    """The shuffled index order of one epoch (a function of seed and epoch only)."""
    # Drawn on the CPU so a GPU run sees the same order as a CPU run with the same seed.
    return torch.randperm(n, generator=generator(derive_seed(seed, epoch))).to(device)


def train_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    start_batch: int = 0,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Generator]]:
    """Yield ``(batch_index, x_uint8, y, augment_generator)`` for one epoch.

    The last partial batch is kept (as the textbook loop does). A distributed
    run augments the whole global batch with the same generator and then takes
    its shard, so every image is augmented exactly as in a single process.
    """
    device = images.device
    order = epoch_order(len(images), seed, epoch, device)
    steps = (len(images) + batch_size - 1) // batch_size
    for b in range(start_batch, steps):
        idx = order[b * batch_size : (b + 1) * batch_size]
        g = generator(derive_seed(seed, epoch, b, 1))
        yield b, images[idx], labels[idx], g


def eval_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(images), batch_size):
        yield images[i : i + batch_size], labels[i : i + batch_size]
