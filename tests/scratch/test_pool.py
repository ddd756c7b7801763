"""The scratch pooling equals ``torch.nn.functional.max_pool2d``/``avg_pool2d``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.scratch import avg_pool2d, max_pool2d

from ._strategies import PoolCase, pool_cases

FAST = settings(max_examples=40, deadline=None)


@FAST
@given(pool_cases())
def test_max_pool2d_matches_torch(case: PoolCase) -> None:
    got = max_pool2d(case.x, case.kernel, case.stride, case.padding)
    want = F.max_pool2d(case.x, case.kernel, case.stride, case.padding)
    assert torch.equal(got, want)  # a maximum is exact


@FAST
@given(pool_cases(), st.booleans())
def test_avg_pool2d_matches_torch(case: PoolCase, count_include_pad: bool) -> None:
    got = avg_pool2d(case.x, case.kernel, case.stride, case.padding, count_include_pad)
    want = F.avg_pool2d(
        case.x, case.kernel, case.stride, case.padding, count_include_pad=count_include_pad
    )
    torch.testing.assert_close(got, want)


def test_max_pool_padding_never_wins() -> None:
    # All inputs negative: zero padding would win every border window, -inf padding never does.
    x = -torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    assert max_pool2d(x, 3, stride=1, padding=1)[0, 0].tolist() == [
        [-1.0, -1.0, -2.0],
        [-1.0, -1.0, -2.0],
        [-4.0, -4.0, -5.0],
    ]


def test_avg_pool_count_include_pad_divides_by_full_window() -> None:
    x = torch.ones(1, 1, 2, 2)
    # The corner window holds one real 1 and three zeros of padding.
    assert avg_pool2d(x, 2, stride=1, padding=1)[0, 0, 0, 0] == 0.25
    assert avg_pool2d(x, 2, stride=1, padding=1, count_include_pad=False)[0, 0, 0, 0] == 1.0


def test_stride_defaults_to_kernel_size() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert max_pool2d(x, 2)[0, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]
    assert avg_pool2d(x, 2)[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]


@pytest.mark.parametrize("pool", [max_pool2d, avg_pool2d])
@pytest.mark.parametrize(
    ("x", "kwargs", "message"),
    [
        (torch.zeros(1, 1, 4, 4), {"kernel_size": 2, "padding": 2}, "at most half the kernel size"),
        (torch.zeros(1, 1, 2, 2), {"kernel_size": 3}, "padded input has only 2"),
        (torch.zeros(1, 4, 4), {"kernel_size": 2}, r"x must be 4-D"),
        (torch.zeros(1, 1, 4, 4), {"kernel_size": 0}, "kernel_size must be >= 1"),
    ],
)
def test_bad_arguments_raise(pool, x: torch.Tensor, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pool(x, **kwargs)
