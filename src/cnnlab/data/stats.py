"""Per-channel statistics of uint8 image tensors, exact and cheap.

A uint8 channel has only 256 values, so a histogram gives the exact mean and
standard deviation without ever materialising a float copy of the data set.
"""

from __future__ import annotations

import torch


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and (population) standard deviation of each channel, in ``[0, 1]`` units.

    Args:
        images: uint8 tensor ``N x C x H x W`` on any device.

    Returns:
        ``(mean, std)``, one float per channel.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"expected a uint8 N x C x H x W tensor, got {images.dtype} {tuple(images.shape)}"
        )
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).cpu().to(torch.float64)
        total = counts.sum()
        if total == 0:
            means.append(float("nan"))
            stds.append(float("nan"))
            continue
        mean = (counts * values).sum() / total
        var = (counts * (values - mean) ** 2).sum() / total
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return tuple(means), tuple(stds)
