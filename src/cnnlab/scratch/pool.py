"""Max and average pooling written out by hand, with PyTorch's semantics.

Pooling summarizes each window of each channel separately (no kernel, no
channel mixing), which makes a layer's output less sensitive to exactly where
a feature sits. The loops run over output positions and handle all samples and
channels at once.

Semantics, chosen to match ``torch.nn.functional.max_pool2d``/``avg_pool2d``:

* ``stride`` defaults to ``kernel_size`` (windows do not overlap);
* padding is at most half the window, so every window holds real input;
* max pooling pads with ``-inf``, so padding never wins the maximum;
* average pooling pads with zeros and, with ``count_include_pad=True`` (the
  default, as in PyTorch), divides by the full window size ``kh * kw`` even where
  the window hangs over the border; with ``False`` it divides by the number of
  real input values in the window;
* the output size rounds down (PyTorch's ``ceil_mode=False``).
"""

from __future__ import annotations

import torch

from cnnlab.scratch._checks import pair, require_dims
from cnnlab.scratch.conv import pad2d
from cnnlab.scratch.formulas import pool_output_size


def _window_geometry(
    x: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None,
    padding: int | tuple[int, int],
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Check the arguments; return kernel, stride, padding and output size as pairs."""
    require_dims(x, 4, "x", "(N, C, H, W)")
    kernel = pair(kernel_size, "kernel_size")
    step = kernel if stride is None else pair(stride, "stride")
    pad = pair(padding, "padding", minimum=0)
    out = (
        pool_output_size(x.shape[2], kernel[0], step[0], pad[0]),
        pool_output_size(x.shape[3], kernel[1], step[1], pad[1]),
    )
    return kernel, step, pad, out


def max_pool2d(
    x: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
) -> torch.Tensor:
    """The largest value in each window of each channel.

    Args:
        x: the input, ``(N, C, H, W)``.
        kernel_size: window size, ``k`` or ``(kh, kw)``.
        stride: step between windows; ``None`` means ``kernel_size``.
        padding: ``-inf`` added on each side, at most half the window.

    Returns:
        The output, ``(N, C, oh, ow)``.
    """
    (kh, kw), (sh, sw), pad, (oh, ow) = _window_geometry(x, kernel_size, stride, padding)
    x = pad2d(x, pad, value=float("-inf"))
    y = x.new_empty((x.shape[0], x.shape[1], oh, ow))
    for i in range(oh):
        for j in range(ow):
            window = x[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]
            y[:, :, i, j] = window.amax(dim=(2, 3))
    return y


def avg_pool2d(
    x: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    count_include_pad: bool = True,
) -> torch.Tensor:
    """The mean of each window of each channel.

    Args:
        x: the input, ``(N, C, H, W)``.
        kernel_size: window size, ``k`` or ``(kh, kw)``.
        stride: step between windows; ``None`` means ``kernel_size``.
        padding: zeros added on each side, at most half the window.
        count_include_pad: divide by ``kh * kw`` (``True``, PyTorch's default) or
            by the number of real input values in the window (``False``).

    Returns:
        The output, ``(N, C, oh, ow)``.
    """
    (kh, kw), (sh, sw), pad, (oh, ow) = _window_geometry(x, kernel_size, stride, padding)
    # Ones where the input is real, zeros over the padding: its window sums count real values.
    real = pad2d(x.new_ones(x.shape[2:]), pad)
    x = pad2d(x, pad)
    y = x.new_empty((x.shape[0], x.shape[1], oh, ow))
    for i in range(oh):
        for j in range(ow):
            rows = slice(i * sh, i * sh + kh)
            cols = slice(j * sw, j * sw + kw)
            count = kh * kw if count_include_pad else real[rows, cols].sum()
            y[:, :, i, j] = x[:, :, rows, cols].sum(dim=(2, 3)) / count
    return y
