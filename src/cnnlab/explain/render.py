"""Figures: explanation grids, feature maps, kernels, mistakes. Pure drawing, no model code.

Everything takes CPU tensors and a path, writes one PNG and returns the path.
matplotlib is imported inside the functions (Agg backend), so importing cnnlab
never touches a display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

# Inches per image cell; small images are drawn with nearest-neighbour pixels.
_CELL = 2.0
_HEAT_CMAP = "jet"
_OVERLAY_ALPHA = 0.45


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain(text: str) -> str:
    """Text shown as typed: class and run names come from users, and ``$`` would start mathtext."""
    return str(text).replace("$", r"\$")


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    _pyplot().close(fig)
    return out


def _image_array(image: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """uint8 C x H x W -> (H x W gray or H x W x 3 RGB array, colormap to use)."""
    arr = image.detach().cpu().numpy()
    if arr.shape[0] == 1:
        return arr[0], "gray"
    if arr.shape[0] == 3:
        return np.transpose(arr, (1, 2, 0)), None
    return arr.mean(0), "gray"  # other channel counts: show the mean as gray


def _unit(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant array becomes zeros."""
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values, dtype=float)


def _blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def explanation_grid(
    images: torch.Tensor,
    maps: torch.Tensor,
    captions: Sequence[str],
    target_names: Sequence[str],
    out: str | Path,
    *,
    title: str = "",
) -> Path:
    """One row per image: original, heat map, overlay.

    Args:
        images: uint8 N x C x H x W, as stored (not normalized).
        maps: N x H x W heat maps; each is min-max scaled for display.
        captions: per image, e.g. ``"true: cat\\npred: dog (0.93)"``.
        target_names: per image, the class the map explains.
        out: PNG path.
    """
    plt = _pyplot()
    n = len(images)
    fig, axes = plt.subplots(
        n, 3, figsize=(3 * _CELL, n * _CELL + 0.4), squeeze=False, layout="constrained"
    )
    for row in range(n):
        picture, cmap = _image_array(images[row])
        heat = _unit(maps[row].numpy().astype(float))
        ax_img, ax_heat, ax_over = axes[row]
        ax_img.imshow(picture, cmap=cmap, interpolation="nearest")
        ax_img.set_ylabel(_plain(captions[row]), fontsize=7)
        ax_heat.imshow(heat, cmap=_HEAT_CMAP, vmin=0, vmax=1, interpolation="nearest")
        ax_heat.set_xlabel(_plain(f"target: {target_names[row]}"), fontsize=7)
        ax_over.imshow(picture, cmap=cmap, interpolation="nearest")
        ax_over.imshow(
            heat, cmap=_HEAT_CMAP, vmin=0, vmax=1, alpha=_OVERLAY_ALPHA, interpolation="bilinear"
        )
        for ax in (ax_img, ax_heat, ax_over):
            _blank(ax)
    for ax, name in zip(axes[0], ("image", "heat map", "overlay")):
        ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(_plain(title), fontsize=9)
    return _save(fig, out)


def _grid_shape(count: int, max_cols: int = 8) -> tuple[int, int]:
    cols = min(max_cols, max(1, math.ceil(math.sqrt(count))))
    return math.ceil(count / cols), cols


def feature_map_grid(maps: torch.Tensor, out: str | Path, *, title: str = "") -> Path:
    """C x h x w activations as a grid of tiles, one per channel, each scaled on its own."""
    plt = _pyplot()
    rows, cols = _grid_shape(len(maps))
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * 1.3, rows * 1.3 + 0.4), squeeze=False, layout="constrained"
    )
    for i, ax in enumerate(axes.flat):
        _blank(ax)
        if i < len(maps):
            ax.imshow(maps[i].numpy(), cmap="viridis", interpolation="nearest")
            ax.set_title(str(i), fontsize=6, pad=1)
        else:
            ax.axis("off")
    if title:
        fig.suptitle(_plain(title), fontsize=9)
    return _save(fig, out)


def kernel_grid(
    weights: torch.Tensor, out: str | Path, *, title: str = "", max_in: int = 16
) -> Path:
    """Convolution kernels O x I x k x k as images.

    Three input channels are drawn as one colour tile per kernel (the classic
    first-layer picture); otherwise each (output, input) pair is a gray tile,
    one row per output channel, at most ``max_in`` inputs wide.
    """
    plt = _pyplot()
    w = weights.detach().float().cpu().numpy()
    colour = w.shape[1] == 3
    if colour or w.shape[1] == 1:
        rows, cols = _grid_shape(len(w))
        tiles = [
            (np.transpose(_unit(k), (1, 2, 0)) if colour else _unit(k[0]), str(o))
            for o, k in enumerate(w)
        ]
    else:
        rows, cols = len(w), min(w.shape[1], max_in)
        tiles = [(_unit(w[o, i]), f"{o}.{i}") for o in range(rows) for i in range(cols)]
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * 0.9, rows * 0.9 + 0.4), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        _blank(ax)
        ax.axis("off")
    for ax, (tile, label) in zip(axes.flat, tiles):
        ax.axis("on")
        ax.imshow(tile, cmap=None if colour else "gray", interpolation="nearest")
        ax.set_title(label, fontsize=5, pad=1)
    if title:
        fig.suptitle(_plain(title), fontsize=9)
    return _save(fig, out)


def mistakes_grid(
    images: torch.Tensor, captions: Sequence[str], out: str | Path, *, title: str = ""
) -> Path:
    """Misclassified images with their caption (true, predicted, confidence)."""
    plt = _pyplot()
    rows, cols = _grid_shape(max(1, len(images)), max_cols=6)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(cols * _CELL, rows * (_CELL + 0.3) + 0.4),
        squeeze=False,
        layout="constrained",
    )
    for i, ax in enumerate(axes.flat):
        _blank(ax)
        if i < len(images):
            picture, cmap = _image_array(images[i])
            ax.imshow(picture, cmap=cmap, interpolation="nearest")
            ax.set_xlabel(_plain(captions[i]), fontsize=7)
        else:
            ax.axis("off")
    if len(images) == 0:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    if title:
        fig.suptitle(_plain(title), fontsize=9)
    return _save(fig, out)
