"""Transforms on whole batches (``N x C x H x W``), so they run the same on CPU and GPU.

Each transform is a pure function of a batch plus, for the random ones, a
``torch.Generator``. Random numbers are always drawn on the CPU and then moved
to the batch's device: with the same seed, a run on a GPU sees exactly the same
crops and flips as a run on the CPU, and a resumed run the same as an
uninterrupted one. The small dataclasses below wrap the functions with their
settings so a pipeline can be built by name from a config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from cnnlab.errors import ConfigError, RegistryError
from cnnlab.registry import Registry


def to_float(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``0..255`` to float ``0..1``; float input is only cast."""
    return x.to(dtype) / 255.0 if x.dtype == torch.uint8 else x.to(dtype)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel, with uint8 input first scaled to ``[0, 1]``.

    Args:
        x: ``N x C x H x W`` batch, uint8 or float.
        mean: one value per channel (or one for all), in ``[0, 1]`` units.
        std: likewise; must be positive.

    Returns:
        A float tensor (float32 for uint8 input) on ``x``'s device.
    """
    x = to_float(x) if x.dtype == torch.uint8 else x
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return (x - m) / s


def resize(x: torch.Tensor, size: int | Sequence[int], *, antialias: bool = True) -> torch.Tensor:
    """Bilinear resize to ``size`` (``H`` or ``(H, W)``); uint8 in, uint8 out (rounded)."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == hw:
        return x
    y = F.interpolate(
        to_float(x, torch.float32) if x.dtype == torch.uint8 else x,
        size=hw,
        mode="bilinear",
        align_corners=False,
        antialias=antialias,
    )
    return (y * 255).round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y


def random_crop(
    x: torch.Tensor,
    size: int | Sequence[int],
    padding: int = 0,
    *,
    generator: torch.Generator | None = None,
    fill: float = 0,
) -> torch.Tensor:
    """A crop of ``size`` at an independent random place in each image, after zero ``padding``.

    Args:
        x: ``N x C x H x W`` batch.
        size: ``H`` or ``(H, W)`` of the crops; at most the padded image size.
        padding: pixels of ``fill`` added on every side first (4 for the classic CIFAR recipe).
        generator: CPU generator for the offsets.
        fill: value of the padding.
    """
    th, tw = (size, size) if isinstance(size, int) else tuple(size)
    if padding:
        x = F.pad(x, (padding,) * 4, value=fill)
    n, _, h, w = x.shape
    if th > h or tw > w:
        raise ConfigError(f"crop size {th}x{tw} is larger than the (padded) image {h}x{w}")
    oy = torch.randint(0, h - th + 1, (n,), generator=generator)
    ox = torch.randint(0, w - tw + 1, (n,), generator=generator)
    return crop_at(x, oy, ox, (th, tw))


def crop_at(
    x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, size: Sequence[int]
) -> torch.Tensor:
    """Each image's ``size`` window whose top-left corner is at ``(oy[i], ox[i])``.

    The deterministic half of :func:`random_crop`: a pipeline that draws its
    offsets ahead of time (a whole epoch at once) applies them with this.
    """
    th, tw = size
    oy, ox = oy.to(x.device), ox.to(x.device)
    rows = (oy[:, None] + torch.arange(th, device=x.device))[:, :, None]
    cols = (ox[:, None] + torch.arange(tw, device=x.device))[:, None, :]
    batch = torch.arange(len(x), device=x.device)[:, None, None]
    # Advanced indexing puts the indexed dims first: N x th x tw x C.
    return x[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(
    x: torch.Tensor, p: float = 0.5, *, dim: int = -1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Flip each image along ``dim`` (-1 horizontal, -2 vertical) with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"flip probability p={p!r} is not allowed; use a number in [0, 1]")
    return flip_where(x, torch.rand(len(x), generator=generator) < p, dim=dim)


def flip_where(x: torch.Tensor, mask: torch.Tensor, *, dim: int = -1) -> torch.Tensor:
    """Flip the images where ``mask`` is true along ``dim``: the deterministic half of :func:`random_flip`."""
    return torch.where(mask.to(x.device, torch.bool)[:, None, None, None], x.flip(dim), x)


def pixel_permutation(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A fixed random order of the ``height * width`` pixel positions, from ``seed``."""
    return torch.randperm(height * width, generator=torch.Generator().manual_seed(int(seed)))


def permute_pixels(x: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Move every pixel to a fixed new place (the same for all images and channels).

    Spatial structure is gone, the pixel values are not: an MLP does exactly as
    well as before, a CNN loses what its locality assumption bought it.
    """
    n, c, h, w = x.shape
    if permutation.numel() != h * w:
        raise ConfigError(
            f"pixel permutation is for {permutation.numel()} pixels, images have {h}x{w}"
        )
    return x.reshape(n, c, h * w)[:, :, permutation.to(x.device)].reshape(n, c, h, w)


class BatchTransform(Protocol):
    """What a pipeline step is: a batch in, a batch out, randomness from ``generator``."""

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class Normalize:
    """Scale to ``[0, 1]`` and standardize with the data set's per-channel mean and std."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return normalize(x, self.mean, self.std)


@dataclass(frozen=True)
class Resize:
    """Bilinear resize to ``size`` (e.g. 224 for networks built for ImageNet)."""

    size: int | tuple[int, int]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return resize(x, self.size)


@dataclass(frozen=True)
class RandomCrop:
    """Pad by ``padding`` then crop back to ``size`` at a random place (default size: unchanged)."""

    padding: int = 4
    size: int | tuple[int, int] | None = None

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return random_crop(x, self.size or tuple(x.shape[-2:]), self.padding, generator=generator)


@dataclass(frozen=True)
class HorizontalFlip:
    """Mirror left-right with probability ``p``."""

    p: float = 0.5

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return random_flip(x, self.p, dim=-1, generator=generator)


@dataclass(frozen=True)
class VerticalFlip:
    """Mirror top-bottom with probability ``p``."""

    p: float = 0.5

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return random_flip(x, self.p, dim=-2, generator=generator)


@dataclass(frozen=True)
class PermutePixels:
    """Shuffle pixel positions with one fixed permutation drawn from ``seed``."""

    seed: int = 0
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) not in self._cache:
            self._cache[(h, w)] = pixel_permutation(h, w, self.seed)
        return permute_pixels(x, self._cache[(h, w)])


@dataclass(frozen=True)
class Compose:
    """Apply ``steps`` in order, sharing one generator."""

    steps: tuple[BatchTransform, ...] = ()

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for step in self.steps:
            x = step(x, generator)
        return x


TRANSFORMS: Registry[Callable[..., BatchTransform]] = Registry("transform")
TRANSFORMS.add("normalize", Normalize)
TRANSFORMS.add("resize", Resize)
TRANSFORMS.add("crop", RandomCrop)
TRANSFORMS.add("hflip", HorizontalFlip)
TRANSFORMS.add("vflip", VerticalFlip)
TRANSFORMS.add("permute-pixels", PermutePixels)


def build_transform(name: str, **options: Any) -> BatchTransform:
    """One transform by registry name (``crop``, ``hflip``, ``permute-pixels``, ...).

    Args:
        name: a name from :data:`TRANSFORMS`.
        **options: the dataclass fields of that transform (``padding=4``, ``p=0.5``, ...).

    Raises:
        ConfigError: unknown name or option.
    """
    try:
        factory = TRANSFORMS.get(name)
    except RegistryError as exc:
        raise ConfigError(str(exc)) from None
    try:
        return factory(**options)
    except TypeError:
        fields = [f for f in getattr(factory, "__dataclass_fields__", {}) if not f.startswith("_")]
        raise ConfigError(
            f"transform {name!r} got options {sorted(options)}; it accepts: {', '.join(fields) or 'none'}"
        ) from None
