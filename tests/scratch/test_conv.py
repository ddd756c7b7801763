"""The scratch convolutions equal ``torch.nn.functional.conv2d``/``unfold``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.scratch import conv1x1, conv2d, conv2d_im2col, corr2d, im2col, pad2d

from ._strategies import ConvCase, conv_cases, randn

FAST = settings(max_examples=30, deadline=None)


def test_corr2d_textbook_example() -> None:
    x = torch.arange(9.0).reshape(3, 3)
    k = torch.arange(4.0).reshape(2, 2)
    assert corr2d(x, k).tolist() == [[19.0, 25.0], [37.0, 43.0]]


def test_pad2d_surrounds_with_value() -> None:
    out = pad2d(torch.ones(1, 2, 3), (1, 2), value=-1.0)
    assert out.shape == (1, 4, 7)
    assert out[0, 1:3, 2:5].eq(1).all()
    assert out.sum() == 6 - (28 - 6)


@FAST
@given(conv_cases(max_channels=1))
def test_corr2d_matches_torch(case: ConvCase) -> None:
    x, w, _ = case.tensors()
    got = corr2d(x[0, 0], w[0, 0], stride=case.stride, padding=case.padding)
    want = F.conv2d(x[:1], w[:1], stride=case.stride, padding=case.padding)[0, 0]
    torch.testing.assert_close(got, want)


@FAST
@given(conv_cases())
def test_conv2d_matches_torch(case: ConvCase) -> None:
    x, w, b = case.tensors()
    got = conv2d(x, w, b, stride=case.stride, padding=case.padding)
    torch.testing.assert_close(got, F.conv2d(x, w, b, stride=case.stride, padding=case.padding))


@FAST
@given(conv_cases(max_kernel=4, max_size=9))
def test_conv2d_im2col_matches_torch(case: ConvCase) -> None:
    x, w, b = case.tensors()
    got = conv2d_im2col(x, w, b, stride=case.stride, padding=case.padding)
    torch.testing.assert_close(got, F.conv2d(x, w, b, stride=case.stride, padding=case.padding))


@FAST
@given(conv_cases(max_kernel=4, max_size=9))
def test_im2col_matches_unfold(case: ConvCase) -> None:
    x, _, _ = case.tensors()
    got = im2col(x, case.kernel, stride=case.stride, padding=case.padding)
    want = F.unfold(x, case.kernel, stride=case.stride, padding=case.padding)
    assert torch.equal(got, want)  # pure data movement: must be exact


@FAST
@given(conv_cases(max_kernel=1, max_channels=4), st.booleans())
def test_conv1x1_matches_torch(case: ConvCase, flat_weight: bool) -> None:
    x, w, b = case.tensors()
    weight = w[:, :, 0, 0] if flat_weight else w
    got = conv1x1(x, weight, b, stride=case.stride, padding=case.padding)
    torch.testing.assert_close(got, F.conv2d(x, w, b, stride=case.stride, padding=case.padding))


@settings(max_examples=10, deadline=None)
@given(conv_cases(max_channels=2, max_size=5))
def test_conv2d_gradients_match_torch(case: ConvCase) -> None:
    x, w, b = case.tensors()
    grads = []
    for fn in (conv2d, F.conv2d):
        leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
        out = fn(*leaves, stride=case.stride, padding=case.padding)
        (out * randn(*out.shape, seed=case.seed + 3)).sum().backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: conv2d(torch.zeros(1, 2, 4, 4), torch.zeros(3, 1, 2, 2)), "input channels"),
        (lambda: conv2d(torch.zeros(2, 4, 4), torch.zeros(3, 2, 2, 2)), r"x must be 4-D"),
        (
            lambda: conv2d(torch.zeros(1, 2, 4, 4), torch.zeros(3, 2, 2, 2), torch.zeros(2)),
            r"bias must have shape \(3,\)",
        ),
        (
            lambda: conv2d(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2), stride=0),
            "stride must be >= 1, got 0",
        ),
        (
            lambda: conv2d_im2col(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2), padding=-1),
            "padding must be >= 0, got -1",
        ),
        (lambda: corr2d(torch.zeros(2, 2), torch.zeros(3, 3)), "only 2"),
        (lambda: corr2d(torch.zeros(4, 4), torch.zeros(2, 2), stride=(1, 2, 3)), "pair of ints"),
        (lambda: conv1x1(torch.zeros(1, 2, 4, 4), torch.zeros(3, 2, 3, 3)), "1x1 kernel"),
        (lambda: im2col(torch.zeros(1, 1, 4, 4), 2.5), "kernel_size must be an int"),
    ],
)
def test_bad_arguments_raise_one_line_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
