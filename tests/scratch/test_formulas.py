"""Output-size and operation-count formulas, checked against real layers and a brute-force count.

The brute-force count runs the scratch operations under a ``TorchFunctionMode``
that sees every tensor operation they perform and tallies the arithmetic:
a product of ``n`` elements is ``n`` multiplications, a sum of ``n`` values
into ``m`` results is ``n - m`` additions, a matrix product with inner size
``k`` does ``k`` multiplications and ``k - 1`` additions per output.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnlab.scratch import (
    OpCount,
    avg_pool2d,
    conv1x1,
    conv2d,
    conv2d_im2col,
    conv_ops,
    conv_output_size,
    max_pool2d,
    pool_ops,
    pool_output_size,
)

from ._strategies import ConvCase, PoolCase, conv_cases, pool_cases

# Operations that move or allocate data but compute nothing.
_NO_ARITHMETIC = {
    "__get__", "__getitem__", "__setitem__", "dim", "new_empty", "new_full", "new_ones",
    "new_zeros", "reshape", "result_type", "stack", "unbind",
}  # fmt: skip


class _CountOps(TorchFunctionMode):
    """Tally the arithmetic of every torch operation run inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.multiplications = self.additions = self.divisions = self.comparisons = 0
        self.uncounted: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", repr(func))
        if name == "mul":
            self.multiplications += out.numel()
        elif name == "add":
            self.additions += out.numel()
        elif name == "div":
            self.divisions += out.numel()
        elif name == "sum":
            self.additions += args[0].numel() - out.numel()
        elif name == "amax":
            self.comparisons += args[0].numel() - out.numel()
        elif name == "matmul":
            inner = args[0].shape[-1]
            self.multiplications += out.numel() * inner
            self.additions += out.numel() * (inner - 1)
        elif name not in _NO_ARITHMETIC:
            self.uncounted.add(name)  # an operation this counter does not understand
        return out

    def total(self) -> OpCount:
        assert not self.uncounted, f"uncounted operations: {self.uncounted}"
        return OpCount(self.multiplications, self.additions, self.divisions, self.comparisons)


def _per_batch(count: OpCount, batch: int) -> OpCount:
    return OpCount(*(batch * v for v in (
        count.multiplications, count.additions, count.divisions, count.comparisons
    )))  # fmt: skip


# --- output sizes against real layers -------------------------------------------------------

_geometry = st.tuples(
    st.integers(1, 12),  # size
    st.integers(1, 5),  # kernel
    st.integers(1, 4),  # stride
    st.integers(0, 3),  # padding
    st.integers(1, 3),  # dilation
)


@settings(max_examples=40, deadline=None)
@given(_geometry, _geometry)
def test_conv_output_size_matches_nn_conv2d(rows, cols) -> None:
    layer = nn.Conv2d(
        1, 1, (rows[1], cols[1]), stride=(rows[2], cols[2]),
        padding=(rows[3], cols[3]), dilation=(rows[4], cols[4]),
    )  # fmt: skip
    x = torch.zeros(1, 1, rows[0], cols[0])
    try:
        want = tuple(layer(x).shape[2:])
    except RuntimeError:  # torch refuses a kernel larger than the padded input; so must we
        with pytest.raises(ValueError):
            conv_output_size(*rows), conv_output_size(*cols)
        return
    assert (conv_output_size(*rows), conv_output_size(*cols)) == want


@settings(max_examples=40, deadline=None)
@given(_geometry, st.booleans(), st.sampled_from(["max", "avg"]))
def test_pool_output_size_matches_nn_pooling(geometry, ceil_mode: bool, kind: str) -> None:
    size, kernel, stride, padding, dilation = geometry
    if kind == "max":
        layer = nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    else:
        dilation = 1  # average pooling has no dilation
        layer = nn.AvgPool2d(kernel, stride, padding, ceil_mode=ceil_mode)
    x = torch.zeros(1, 1, size, size)
    try:
        want = layer(x).shape[-1]
    except RuntimeError:  # padding over half the window, or no window fits
        with pytest.raises(ValueError):
            pool_output_size(size, kernel, stride, padding, dilation, ceil_mode)
        return
    assert pool_output_size(size, kernel, stride, padding, dilation, ceil_mode) == want


def test_pool_output_size_matches_nn_max_pool_on_a_full_grid() -> None:
    # ceil_mode's edge cases (a last window hanging over the end, or starting in the
    # padding) are rare in random draws, so also check every small geometry.
    x = torch.zeros(1, 1, 7, 7)
    for kernel, stride, padding, dilation, ceil_mode in itertools.product(
        range(1, 5), range(1, 4), range(3), range(1, 3), (False, True)
    ):
        for size in range(1, 8):
            layer = nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode)
            try:
                want = layer(x[..., :size, :size]).shape[-1]
            except RuntimeError:
                want = None
            try:
                got = pool_output_size(size, kernel, stride, padding, dilation, ceil_mode)
            except ValueError:
                got = None
            assert got == want, (size, kernel, stride, padding, dilation, ceil_mode)


def test_pool_stride_defaults_to_kernel_size() -> None:
    assert pool_output_size(28, 2) == 14
    assert pool_output_size(7, 2) == 3
    assert pool_output_size(7, 2, ceil_mode=True) == 4


# --- operation counts against a brute-force count -------------------------------------------


def _conv_formula(case: ConvCase) -> OpCount:
    out = tuple(
        conv_output_size(n, k, s, p)
        for n, k, s, p in zip(
            (case.height, case.width), case.kernel, case.stride, case.padding, strict=True
        )
    )
    count = conv_ops(case.in_channels, case.out_channels, case.kernel, out, bias=case.bias)
    return _per_batch(count, case.batch)


@settings(max_examples=25, deadline=None)
@given(conv_cases(max_size=5), st.sampled_from(["loops", "im2col"]))
def test_conv_ops_equal_brute_force_count(case: ConvCase, method: str) -> None:
    x, w, b = case.tensors()
    fn = conv2d if method == "loops" else conv2d_im2col
    with _CountOps() as counter:
        fn(x, w, b, stride=case.stride, padding=case.padding)
    assert counter.total() == _conv_formula(case)


@settings(max_examples=25, deadline=None)
@given(conv_cases(max_kernel=1, max_channels=4))
def test_conv1x1_ops_equal_brute_force_count(case: ConvCase) -> None:
    x, w, b = case.tensors()
    with _CountOps() as counter:
        conv1x1(x, w, b, stride=case.stride, padding=case.padding)
    assert counter.total() == _conv_formula(case)


@settings(max_examples=25, deadline=None)
@given(pool_cases(), st.sampled_from(["max", "avg"]))
def test_pool_ops_equal_brute_force_count(case: PoolCase, kind: str) -> None:
    n, c, h, w = case.x.shape
    stride = case.stride or case.kernel
    out = tuple(
        pool_output_size(*args)
        for args in zip((h, w), case.kernel, stride, case.padding, strict=True)
    )
    with _CountOps() as counter:
        if kind == "max":
            max_pool2d(case.x, case.kernel, case.stride, case.padding)
        else:
            avg_pool2d(case.x, case.kernel, case.stride, case.padding)
    assert counter.total() == _per_batch(pool_ops(c, case.kernel, out, kind=kind), n)


def test_counter_sees_the_arithmetic() -> None:
    # Guard against a counter that silently counts nothing.
    x = torch.ones(2, 3)
    with _CountOps() as counter:
        ((x * 2).sum(dim=1) + 1) / 4
    assert counter.total() == OpCount(multiplications=6, additions=4 + 2, divisions=2)


# --- worked values and errors -----------------------------------------------------------------


def test_lenet_first_layer_by_hand() -> None:
    # 6 kernels of 5x5 over a 28x28 output: each output is 25 products summed, plus the bias.
    ops = conv_ops(1, 6, 5, conv_output_size(32, 5))
    assert ops == OpCount(multiplications=6 * 28 * 28 * 25, additions=6 * 28 * 28 * 25)
    assert ops.macs == 117_600
    assert conv_ops(1, 6, 5, 28, bias=False).additions == 6 * 28 * 28 * 24


def test_grouped_convolution_counts_only_its_group() -> None:
    dense = conv_ops(8, 8, 3, 10, bias=False)
    depthwise = conv_ops(8, 8, 3, 10, bias=False, groups=8)
    assert dense.multiplications == 8 * depthwise.multiplications


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: conv_output_size(0, 3), "size must be an int >= 1, got 0"),
        (lambda: conv_output_size(5, 3, stride=0), "stride must be an int >= 1"),
        (lambda: conv_output_size(2, 5), "padded input has only 2"),
        (lambda: pool_output_size(8, 2, padding=2), "at most half the kernel size"),
        (lambda: conv_ops(3, 4, 3, 5, groups=2), "groups=2 must divide"),
        (lambda: pool_ops(3, 2, 4, kind="min"), "kind must be 'max' or 'avg'"),
    ],
)
def test_bad_arguments_raise(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
