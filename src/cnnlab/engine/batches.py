"""Batches from a data set held whole in (device) memory.

There is no DataLoader and no per-sample Python: an epoch is slices of one
seeded ``randperm``, and each batch is converted and augmented as one tensor.
Every random draw comes from a generator seeded by (seed, epoch[, batch]), so
the order and the augmentation of any batch can be recomputed from nothing but
those numbers — which is what makes mid-epoch resume exact without saving
generator state.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

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

    One pipeline serves the single-run trainer, fused groups, evaluation and
    prediction, so every path sees the same arithmetic. Random augmentation is
    split in two: :meth:`draws` takes the random numbers of one batch from a CPU
    generator (so a GPU run sees the crops and flips of a CPU run with the same
    seed), and :meth:`augment_with` applies them on the batch's device.
    :func:`epoch_draws` takes a whole epoch's draws at its start and copies them
    to the device once, so a training step never waits for a host-to-device copy.

    Attributes:
        mean, std: per-channel statistics on the 0..1 scale (empty = no normalization).
        size: output (H, W) when resizing, else None.
        augment: training-time augmentation (ignored for evaluation).
        channels_last: convert the batch to channels_last memory format.
        stats: mean and std as ``1 x C x 1 x 1`` tensors on the device (:meth:`to`);
            without them every batch would copy the statistics to the device again.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int] | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    channels_last: bool = False
    stats: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, compare=False, repr=False)

    def to(self, device: torch.device | str) -> BatchPipeline:
        """This pipeline with its statistics cached on ``device``."""
        if not self.mean:
            return self
        shape = (1, -1, 1, 1)
        m = torch.tensor(self.mean, dtype=torch.float32).reshape(shape).to(device)
        s = torch.tensor(self.std, dtype=torch.float32).reshape(shape).to(device)
        return replace(self, stats=(m, s))

    @property
    def random(self) -> bool:
        """Whether training batches are augmented at random."""
        a = self.augment
        return bool(a.crop_padding or a.hflip or a.vflip)

    def convert(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> normalized float, resized; no augmentation, no memory-format change."""
        x = self._normalize(x)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = T.resize(x, self.size)
        return x

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float on the 0..1 scale, normalized when the pipeline has statistics."""
        if not self.mean:
            return T.to_float(x)
        if self.stats is not None and self.stats[0].device == x.device:
            return T.normalize(x, *self.stats)  # as_tensor keeps the cached tensors: no copy
        return T.normalize(x, self.mean, self.std)

    def draws(self, n: int, g: torch.Generator) -> list[torch.Tensor]:
        """The random numbers of one batch of ``n`` images, in a fixed order, on the CPU.

        Crop offsets (rows, then columns) in ``0 .. 2 * crop_padding``, then a 0/1
        flip decision per image for each enabled flip.
        """
        a = self.augment
        out = []
        if a.crop_padding:
            span = 2 * a.crop_padding + 1
            out.append(torch.randint(0, span, (n,), generator=g))
            out.append(torch.randint(0, span, (n,), generator=g))
        if a.hflip:
            out.append((torch.rand(n, generator=g) < a.hflip).long())
        if a.vflip:
            out.append((torch.rand(n, generator=g) < a.vflip).long())
        return out

    def pad_black(self, x: torch.Tensor, padding: int) -> torch.Tensor:
        """``x`` with ``padding`` black pixels on every side, black as :meth:`convert` maps it.

        The crop's zero padding means zero pixels, as in the classic recipe that pads
        the image before normalizing it; padding the normalized batch with 0 would add a
        frame of the mean colour instead (grey around Fashion-MNIST's black background),
        and a different one with ``data.normalize`` on than off.
        """
        if not self.mean:
            return F.pad(x, (padding,) * 4, value=0.0)
        zero = torch.zeros(1, x.shape[1], 1, 1, dtype=torch.uint8, device=x.device)
        black = self._normalize(zero)
        n, c, h, w = x.shape
        out = black.to(x.dtype).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
        out[:, :, padding : padding + h, padding : padding + w] = x
        return out

    def augment_with(self, x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Crop and flip ``x`` (``N x C x H x W``) per image with ``draws`` (``rows x N``)."""
        a, i = self.augment, 0
        if a.crop_padding:
            size = tuple(x.shape[-2:])
            x = T.crop_at(self.pad_black(x, a.crop_padding), draws[0], draws[1], size)
            i = 2
        for p, dim in ((a.hflip, -1), (a.vflip, -2)):
            if p:
                x = T.flip_where(x, draws[i], dim=dim)
                i += 1
        return x

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(
        self,
        x: torch.Tensor,
        g: torch.Generator | None = None,
        train: bool = False,
        *,
        draws: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The model's input for a uint8 batch; augmented when ``train`` with ``draws`` or ``g``."""
        x = self.convert(x)
        if train and self.random:
            if draws is None and g is not None:
                draws = torch.stack(self.draws(len(x), g)).to(x.device)
            if draws is not None:
                x = self.augment_with(x, draws)
        return self.finish(x)


def epoch_draws(
    pipeline: BatchPipeline,
    seeds: Sequence[int],
    epoch: int,
    n: int,
    batch_size: int,
    start: int,
    device: torch.device | str,
) -> list[torch.Tensor]:
    """Every batch's augmentation draws for one epoch, for one or more runs, moved to the device at once.

    Batch ``b`` of the run with seed ``s`` draws from the generator of
    ``(s, epoch, b)`` (what makes mid-epoch resume exact); the tensor of a batch
    is ``D x (K * rows)``, runs one after the other as in a fused group's stacked
    batch. Element ``i`` of the result is batch ``start + i``.
    """
    steps = (n + batch_size - 1) // batch_size
    shapes, chunks = [], []
    for b in range(start, steps):
        rows = min(batch_size, n - b * batch_size)
        per_run = [pipeline.draws(rows, batch_generator(s, epoch, b)) for s in seeds]
        batch = torch.stack([torch.cat(kind) for kind in zip(*per_run)])
        shapes.append(batch.shape)
        chunks.append(batch.reshape(-1))
    if not chunks:
        return []
    flat = torch.cat(chunks)
    device = torch.device(device)
    if device.type == "cuda":
        flat = flat.pin_memory()
    flat = flat.to(device, non_blocking=True)
    pieces = torch.split(flat, [math.prod(sh) for sh in shapes])
    return [piece.view(sh) for piece, sh in zip(pieces, shapes)]


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The augmentation generator of one batch of one run."""
    return generator(derive_seed(seed, epoch, batch, 1))


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
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(batch_index, x_uint8, y)`` for one epoch.

    The last partial batch is kept (as the textbook loop does). Its augmentation
    draws come from :func:`batch_generator` of the same batch (taken a whole
    epoch at a time by :func:`epoch_draws`); a distributed run augments the
    whole global batch and then takes its shard, so every image is augmented
    exactly as in a single process.
    """
    device = images.device
    order = epoch_order(len(images), seed, epoch, device)
    steps = (len(images) + batch_size - 1) // batch_size
    for b in range(start_batch, steps):
        idx = order[b * batch_size : (b + 1) * batch_size]
        yield b, images[idx], labels[idx]


def eval_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(images), batch_size):
        yield images[i : i + batch_size], labels[i : i + batch_size]
