"""The textbook exercise: learn an edge-detection kernel from examples.

An image ``X`` has a black vertical stripe on white; cross-correlating it with
``[[1, -1]]`` gives ``Y``, which is 1 where white turns black, -1 where black
turns white and 0 elsewhere. Given only ``X`` and ``Y``, gradient descent on the
squared error recovers the kernel: this is what "a convolutional layer learns
its kernel from data" means, in a dozen lines (after Dive into Deep Learning,
section 7.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnlab.scratch._checks import pair, require_dims
from cnnlab.scratch.conv import corr2d


def stripe_image(height: int = 6, width: int = 8, stripe: tuple[int, int] = (2, 6)) -> torch.Tensor:
    """A white (1) image with a black (0) vertical stripe in columns ``stripe[0]:stripe[1]``.

    Args:
        height: rows.
        width: columns.
        stripe: first and one-past-last black column.

    Returns:
        The image, ``(height, width)``, float32.
    """
    height, width = pair((height, width), "image size")
    start, stop = stripe
    if not 0 <= start < stop <= width:
        raise ValueError(f"stripe must satisfy 0 <= start < stop <= width={width}, got {stripe!r}")
    x = torch.ones(height, width)
    x[:, start:stop] = 0.0
    return x


@dataclass(frozen=True)
class EdgeFit:
    """What :func:`learn_edge_kernel` found.

    Attributes:
        kernel: the learned kernel, detached from the graph.
        losses: the summed squared error before each step.
    """

    kernel: torch.Tensor
    losses: list[float]


def learn_edge_kernel(
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    *,
    kernel_size: int | tuple[int, int] = (1, 2),
    steps: int = 40,
    lr: float = 0.03,
    generator: torch.Generator | None = None,
) -> EdgeFit:
    """Fit a kernel ``K`` so that ``corr2d(x, K)`` matches ``y``, by plain gradient descent.

    Starts from a random kernel and repeats: predict with :func:`corr2d`, take
    the summed squared error, backpropagate, step against the gradient.

    Args:
        x: the input image, ``(H, W)``; default :func:`stripe_image`.
        y: the target, ``corr2d(x, K_true)``; default ``corr2d(x, [[1, -1]])``.
        kernel_size: shape of the kernel to learn, ``(1, 2)`` for the edge detector.
        steps: gradient-descent steps.
        lr: learning rate.
        generator: random source for the starting kernel.

    Returns:
        The learned kernel and the loss history; on the defaults the kernel is
        close to ``[[1, -1]]``.
    """
    if x is None:
        x = stripe_image()
    if y is None:
        y = corr2d(x, torch.tensor([[1.0, -1.0]], dtype=x.dtype, device=x.device))
    require_dims(x, 2, "x", "(H, W)")
    require_dims(y, 2, "y", "(oh, ow)")
    kh, kw = pair(kernel_size, "kernel_size")
    expected = (x.shape[0] - kh + 1, x.shape[1] - kw + 1)
    if tuple(y.shape) != expected:
        raise ValueError(
            f"y has shape {tuple(y.shape)} but a {kh}x{kw} kernel on x of shape"
            f" {tuple(x.shape)} gives {expected}"
        )
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")

    # drawn on the CPU (where the generator is), then moved to the image's device
    kernel = torch.randn((kh, kw), generator=generator, dtype=x.dtype).to(x.device)
    kernel.requires_grad_()
    losses = []
    for _ in range(steps):
        loss = ((corr2d(x, kernel) - y) ** 2).sum()
        losses.append(loss.item())
        loss.backward()
        with torch.no_grad():
            kernel -= lr * kernel.grad
            kernel.grad = None
    return EdgeFit(kernel=kernel.detach(), losses=losses)
