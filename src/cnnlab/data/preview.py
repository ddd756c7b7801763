"""A labelled grid of sample images, to see what a data set (or a transform) looks like."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from cnnlab.data.base import ImageSet
from cnnlab.errors import DataError


def sample_indices(data: ImageSet, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` distinct indices drawn with ``seed`` (all of them if the split is smaller)."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(len(data), generator=generator)[: min(count, len(data))].sort().values


#: Most images one grid shows: each is a labelled subplot (1,000 take about 30 s to draw on
#: one CPU core), and beyond a few hundred the labels are unreadable anyway.
MAX_GRID_IMAGES = 400


def save_grid(
    data: ImageSet, path: str | Path, *, count: int = 64, seed: int = 0, columns: int | None = None
) -> Path:
    """Save ``count`` random images of ``data`` with their class names as a PNG (or any
    format matplotlib writes, by suffix).

    Args:
        data: the split to sample from.
        path: output file; its folder must exist.
        count: number of images (at most the split size).
        seed: which images are drawn.
        columns: images per row (default: a square-ish grid).

    Returns:
        ``path``.

    Raises:
        DataError: ``count`` is outside 1..:data:`MAX_GRID_IMAGES`, or the file cannot be written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not 1 <= count <= MAX_GRID_IMAGES:
        raise DataError(
            f"count={count} is not allowed; show 1 to {MAX_GRID_IMAGES} images per grid"
        )
    path = Path(path)
    index = sample_indices(data, count, seed)
    cols = columns or math.ceil(math.sqrt(len(index)))
    rows = math.ceil(len(index) / cols)
    fig = Figure(figsize=(1.3 * cols, 1.5 * rows))
    FigureCanvasAgg(fig)
    for k, i in enumerate(index.tolist()):
        ax = fig.add_subplot(rows, cols, k + 1)
        image = data.images[i].cpu()
        if image.shape[0] == 1:
            ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(image[:3].permute(1, 2, 0).numpy())
        ax.set_title(data.classes[int(data.labels[i])], fontsize=7)
        ax.axis("off")
    fig.suptitle(f"{data.name} {data.split}: {len(index)} of {len(data)}", fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return path
