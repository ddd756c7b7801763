"""Convolution written out by hand, from one channel to im2col.

The functions build on each other the way the idea does:

1. :func:`corr2d` slides one kernel over one channel (the definition, in loops).
2. :func:`conv2d` sums :func:`corr2d` over input channels, once per output
   channel, and adds a bias: that is all a convolutional layer computes.
3. :func:`conv1x1` shows that a 1x1 convolution is a matrix product over channels.
4. :func:`im2col` + :func:`conv2d_im2col` turn any convolution into one matrix
   product, which is how fast libraries do it.

Like ``torch.nn.functional.conv2d`` these compute cross-correlation (the kernel
is not flipped) and take ``x`` as ``(N, C, H, W)`` and weights as
``(C_out, C_in, kh, kw)``.
"""

from __future__ import annotations

import torch

from cnnlab.scratch._checks import pair, require_dims
from cnnlab.scratch.formulas import conv_output_size


def pad2d(x: torch.Tensor, padding: int | tuple[int, int], value: float = 0.0) -> torch.Tensor:
    """Surround the last two dimensions of ``x`` with ``value``.

    Convolution pads with zeros so border pixels are seen as often as inner ones
    and the output need not shrink; max pooling pads with ``-inf`` so the padding
    can never win.

    Args:
        x: a tensor whose last two dimensions are height and width.
        padding: rows/columns added on each side, ``p`` or ``(ph, pw)``.
        value: the fill value.

    Returns:
        A new tensor of height ``H + 2*ph`` and width ``W + 2*pw``.
    """
    ph, pw = pair(padding, "padding", minimum=0)
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dimensions, got shape {tuple(x.shape)}")
    *lead, h, w = x.shape
    out = x.new_full((*lead, h + 2 * ph, w + 2 * pw), value)
    out[..., ph : ph + h, pw : pw + w] = x
    return out


def _output_hw(
    h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[int, int]:
    return (
        conv_output_size(h, kernel[0], stride[0], padding[0]),
        conv_output_size(w, kernel[1], stride[1], padding[1]),
    )


def corr2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> torch.Tensor:
    """Two-dimensional cross-correlation of one channel with one kernel.

    Output ``(i, j)`` is the sum of the elementwise product of the kernel with
    the window of ``x`` whose top-left corner is at ``(i*sh, j*sw)``. Written
    with loops because the loops are the definition; autograd differentiates
    through them, which :func:`cnnlab.scratch.learn_edge_kernel` relies on.

    Args:
        x: the input, ``(H, W)``.
        kernel: the kernel, ``(kh, kw)``.
        stride: step between windows, ``s`` or ``(sh, sw)``.
        padding: zeros added on each side, ``p`` or ``(ph, pw)``.

    Returns:
        The output, ``(oh, ow)`` with ``oh = (H + 2*ph - kh) // sh + 1`` (same for ``ow``).
    """
    require_dims(x, 2, "x", "(H, W)")
    require_dims(kernel, 2, "kernel", "(kh, kw)")
    sh, sw = pair(stride, "stride")
    ph, pw = pair(padding, "padding", minimum=0)
    kh, kw = kernel.shape
    oh, ow = _output_hw(x.shape[0], x.shape[1], (kh, kw), (sh, sw), (ph, pw))
    x = pad2d(x, (ph, pw))
    y = x.new_zeros((oh, ow), dtype=torch.result_type(x, kernel))
    for i in range(oh):
        for j in range(ow):
            window = x[i * sh : i * sh + kh, j * sw : j * sw + kw]
            y[i, j] = (window * kernel).sum()
    return y


def _check_conv_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    require_dims(x, 4, "x", "(N, C_in, H, W)")
    require_dims(weight, 4, "weight", "(C_out, C_in, kh, kw)")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"weight expects {weight.shape[1]} input channels but x has {x.shape[1]}"
            f" (x shape {tuple(x.shape)}, weight shape {tuple(weight.shape)})"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(
            f"bias must have shape ({weight.shape[0]},) to match weight, got {tuple(bias.shape)}"
        )


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> torch.Tensor:
    """Multi-input, multi-output-channel convolution, built from :func:`corr2d`.

    Each output channel has one kernel per input channel; it cross-correlates
    each input channel with its kernel and sums the results (so the input
    channels are mixed), then adds its bias. Equal to
    ``torch.nn.functional.conv2d(x, weight, bias, stride, padding)``.

    Args:
        x: the input, ``(N, C_in, H, W)``.
        weight: the kernels, ``(C_out, C_in, kh, kw)``.
        bias: one number per output channel, ``(C_out,)``, or ``None``.
        stride: step between windows, ``s`` or ``(sh, sw)``.
        padding: zeros added on each side, ``p`` or ``(ph, pw)``.

    Returns:
        The output, ``(N, C_out, oh, ow)``.
    """
    _check_conv_args(x, weight, bias)
    samples = []
    for sample in x:
        channels = []
        for o, kernels in enumerate(weight):
            per_input = [
                corr2d(channel, kernel, stride=stride, padding=padding)
                for channel, kernel in zip(sample, kernels, strict=True)
            ]
            y = torch.stack(per_input).sum(dim=0)
            if bias is not None:
                y = y + bias[o]
            channels.append(y)
        samples.append(torch.stack(channels))
    return torch.stack(samples)


def conv1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> torch.Tensor:
    """A 1x1 convolution computed as one matrix product over channels.

    A 1x1 kernel sees a single pixel, so it cannot relate neighbours: at every
    position it is the same linear map from ``C_in`` to ``C_out`` numbers, i.e. a
    fully connected layer applied per pixel. Flattening the pixels into columns
    makes that literal: ``(C_out, C_in) @ (C_in, H*W)``.

    Args:
        x: the input, ``(N, C_in, H, W)``.
        weight: ``(C_out, C_in, 1, 1)`` as ``nn.Conv2d`` stores it, or ``(C_out, C_in)``.
        bias: ``(C_out,)`` or ``None``.
        stride: keep every ``s``-th pixel, ``s`` or ``(sh, sw)``.
        padding: zeros added on each side (those pixels output just the bias).

    Returns:
        The output, ``(N, C_out, oh, ow)``.
    """
    if weight.dim() == 2:
        weight = weight[:, :, None, None]
    _check_conv_args(x, weight, bias)
    if weight.shape[2:] != (1, 1):
        raise ValueError(f"conv1x1 needs a 1x1 kernel, got weight shape {tuple(weight.shape)}")
    sh, sw = pair(stride, "stride")
    x = pad2d(x, padding)[:, :, ::sh, ::sw]
    n, c_in, h, w = x.shape
    y = weight.reshape(weight.shape[0], c_in) @ x.reshape(n, c_in, h * w)
    if bias is not None:
        y = y + bias[:, None]
    return y.reshape(n, weight.shape[0], h, w)


def im2col(
    x: torch.Tensor,
    kernel_size: int | tuple[int, int],
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> torch.Tensor:
    """Lay every window of ``x`` out as one column of a matrix.

    Column ``l`` holds the ``C * kh * kw`` values that the output position ``l``
    (row-major over ``oh x ow``) sees. A convolution is then a single matrix
    product, which BLAS does far faster than the loops in :func:`conv2d`, at the
    cost of storing each input value up to ``kh * kw`` times. The loop runs over
    the ``kh * kw`` kernel offsets only: for each, one strided slice picks that
    tap's input for all windows at once. Same layout as
    ``torch.nn.functional.unfold``.

    Args:
        x: the input, ``(N, C, H, W)``.
        kernel_size: ``k`` or ``(kh, kw)``.
        stride: step between windows, ``s`` or ``(sh, sw)``.
        padding: zeros added on each side, ``p`` or ``(ph, pw)``.

    Returns:
        The columns, ``(N, C * kh * kw, oh * ow)``, rows ordered channel, kernel row, kernel column.
    """
    require_dims(x, 4, "x", "(N, C, H, W)")
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(stride, "stride")
    ph, pw = pair(padding, "padding", minimum=0)
    n, c, h, w = x.shape
    oh, ow = _output_hw(h, w, (kh, kw), (sh, sw), (ph, pw))
    x = pad2d(x, (ph, pw))
    taps = []
    for a in range(kh):
        for b in range(kw):
            # Input value under kernel tap (a, b) for every window: (N, C, oh, ow).
            taps.append(x[:, :, a : a + sh * (oh - 1) + 1 : sh, b : b + sw * (ow - 1) + 1 : sw])
    cols = torch.stack(taps, dim=2)  # (N, C, kh*kw, oh, ow)
    return cols.reshape(n, c * kh * kw, oh * ow)


def conv2d_im2col(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> torch.Tensor:
    """Convolution as one matrix multiplication: ``weight`` rows times :func:`im2col` columns.

    Flattening each output channel's kernels into a row of length
    ``C_in * kh * kw`` (the same order as the im2col rows) makes every output
    value a row-column dot product: ``(C_out, C_in*kh*kw) @ (C_in*kh*kw, oh*ow)``.

    Args:
        x: the input, ``(N, C_in, H, W)``.
        weight: the kernels, ``(C_out, C_in, kh, kw)``.
        bias: ``(C_out,)`` or ``None``.
        stride: step between windows, ``s`` or ``(sh, sw)``.
        padding: zeros added on each side, ``p`` or ``(ph, pw)``.

    Returns:
        The output, ``(N, C_out, oh, ow)``, equal to :func:`conv2d`'s.
    """
    _check_conv_args(x, weight, bias)
    c_out, c_in, kh, kw = weight.shape
    sh, sw = pair(stride, "stride")
    ph, pw = pair(padding, "padding", minimum=0)
    oh, ow = _output_hw(x.shape[2], x.shape[3], (kh, kw), (sh, sw), (ph, pw))
    cols = im2col(x, (kh, kw), stride=(sh, sw), padding=(ph, pw))
    y = weight.reshape(c_out, c_in * kh * kw) @ cols  # (N, C_out, oh*ow)
    if bias is not None:
        y = y + bias[:, None]
    return y.reshape(x.shape[0], c_out, oh, ow)
