"""Output sizes and operation counts of convolution and pooling, as formulas.

These are the numbers to reason with before building a network: how fast a
feature map shrinks, and where the arithmetic goes. The tests check them
against the shapes real ``nn.Conv2d``/``nn.MaxPool2d`` layers produce and
against a brute-force count of what :func:`cnnlab.scratch.conv2d` computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cnnlab.scratch._checks import pair


def _check_int(value: int, name: str, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def conv_output_size(
    size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """Length of a convolution's output along one dimension.

    ``floor((size + 2*padding - dilation*(kernel_size - 1) - 1) / stride) + 1``:
    the padded input has ``size + 2*padding`` positions, a (dilated) kernel covers
    ``dilation*(kernel_size - 1) + 1`` of them, and it moves ``stride`` at a time.

    Args:
        size: input length (height or width).
        kernel_size: kernel length along the same dimension.
        stride: step between windows.
        padding: zeros added on each side.
        dilation: spacing between kernel taps.

    Returns:
        The output length, at least 1.
    """
    for value, name, minimum in (
        (size, "size", 1),
        (kernel_size, "kernel_size", 1),
        (stride, "stride", 1),
        (padding, "padding", 0),
        (dilation, "dilation", 1),
    ):
        _check_int(value, name, minimum)
    span = dilation * (kernel_size - 1) + 1
    if size + 2 * padding < span:
        raise ValueError(
            f"kernel spans {span} positions but the padded input has only {size + 2 * padding}"
        )
    return (size + 2 * padding - span) // stride + 1


def pool_output_size(
    size: int,
    kernel_size: int,
    stride: int | None = None,
    padding: int = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Length of a pooling layer's output along one dimension, with PyTorch's rules.

    Pooling differs from convolution in two ways: the stride defaults to the
    kernel size (non-overlapping windows), and ``ceil_mode`` rounds up so a
    partial window at the end still produces an output, except that a window
    must start inside the input or its left padding.

    Args:
        size: input length.
        kernel_size: window length.
        stride: step between windows; ``None`` means ``kernel_size``.
        padding: implicit padding on each side; at most half of ``kernel_size``.
        dilation: spacing between window taps.
        ceil_mode: round the window count up instead of down.

    Returns:
        The output length, at least 1.
    """
    stride = kernel_size if stride is None else stride
    for value, name, minimum in (
        (size, "size", 1),
        (kernel_size, "kernel_size", 1),
        (stride, "stride", 1),
        (padding, "padding", 0),
        (dilation, "dilation", 1),
    ):
        _check_int(value, name, minimum)
    span = dilation * (kernel_size - 1) + 1
    if 2 * padding > kernel_size:  # PyTorch's limit, on the undilated kernel size
        raise ValueError(
            f"padding must be at most half the kernel size ({kernel_size}), got {padding}"
        )
    extra = stride - 1 if ceil_mode else 0
    out = (size + 2 * padding - span + extra) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window would start in the right padding
    if out < 1:  # with ceil_mode a window may hang over the end, so check the count itself
        raise ValueError(
            f"window spans {span} positions but the padded input has only {size + 2 * padding}"
        )
    return out


@dataclass(frozen=True)
class OpCount:
    """Arithmetic done by one layer for one sample.

    Attributes:
        multiplications: products of two numbers.
        additions: sums of two numbers (a sum of ``k`` terms counts ``k - 1``).
        divisions: divisions (average pooling divides each sum once).
        comparisons: comparisons (max pooling).
    """

    multiplications: int
    additions: int
    divisions: int = 0
    comparisons: int = 0

    @property
    def macs(self) -> int:
        """Multiply-accumulate operations: one per multiplication, the usual FLOP proxy."""
        return self.multiplications


def conv_ops(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    output_size: int | tuple[int, int],
    *,
    bias: bool = True,
    groups: int = 1,
) -> OpCount:
    """Multiplications and additions of a 2-D convolution for one sample.

    Each output value is a dot product of the kernel with one window:
    ``k = (in_channels / groups) * kh * kw`` multiplications and ``k - 1``
    additions to sum them, plus one more addition for the bias. There are
    ``out_channels * oh * ow`` output values.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: ``k`` or ``(kh, kw)``.
        output_size: ``o`` or ``(oh, ow)``, e.g. from :func:`conv_output_size`.
        bias: whether the layer adds a bias.
        groups: channel groups (``in_channels`` for a depthwise convolution).

    Returns:
        The operation count; ``.macs`` equals ``.multiplications``.
    """
    _check_int(in_channels, "in_channels", 1)
    _check_int(out_channels, "out_channels", 1)
    _check_int(groups, "groups", 1)
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
        )
    kh, kw = pair(kernel_size, "kernel_size")
    oh, ow = pair(output_size, "output_size")
    per_output = (in_channels // groups) * kh * kw
    outputs = out_channels * oh * ow
    return OpCount(
        multiplications=outputs * per_output,
        additions=outputs * (per_output - 1 + int(bias)),
    )


def pool_ops(
    channels: int,
    kernel_size: int | tuple[int, int],
    output_size: int | tuple[int, int],
    *,
    kind: Literal["max", "avg"] = "max",
) -> OpCount:
    """Operations of a 2-D pooling layer for one sample.

    Max pooling finds the largest of ``kh * kw`` values with ``kh * kw - 1``
    comparisons; average pooling adds them (``kh * kw - 1`` additions) and
    divides once. Pooling has no multiplications, which is why it is cheap.

    Args:
        channels: channels (pooling works on each channel separately).
        kernel_size: ``k`` or ``(kh, kw)``.
        output_size: ``o`` or ``(oh, ow)``, e.g. from :func:`pool_output_size`.
        kind: ``"max"`` or ``"avg"``.

    Returns:
        The operation count.
    """
    _check_int(channels, "channels", 1)
    kh, kw = pair(kernel_size, "kernel_size")
    oh, ow = pair(output_size, "output_size")
    outputs = channels * oh * ow
    window = kh * kw
    if kind == "max":
        return OpCount(multiplications=0, additions=0, comparisons=outputs * (window - 1))
    if kind == "avg":
        return OpCount(multiplications=0, additions=outputs * (window - 1), divisions=outputs)
    raise ValueError(f"kind must be 'max' or 'avg', got {kind!r}")
