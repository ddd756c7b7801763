"""Inverted dropout: exact zero/scale structure and expected value preserved."""

from __future__ import annotations

import math

import pytest
import torch

from cnnlab.scratch import dropout


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_values_are_zero_or_scaled_exactly(p: float) -> None:
    x = torch.randn(50, 40, generator=_gen(1), dtype=torch.float64)
    y = dropout(x, p, generator=_gen(2))
    kept = y != 0
    assert torch.equal(y[kept], x[kept] / (1 - p))
    assert 0 < kept.sum() < x.numel()  # some dropped, some kept


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_drop_rate_and_expected_value(p: float) -> None:
    # With n values the kept fraction has standard deviation sqrt(p(1-p)/n), about 0.001 here,
    # and the output mean (of ones) sqrt(p/((1-p) n)). Six of those is the tolerance: a correct
    # dropout fails with probability ~1e-9, while a missing rescale (mean 1-p), or keeping with
    # probability p instead of 1-p, misses by at least 0.2.
    n = 200_000
    y = dropout(torch.ones(n), p, generator=_gen(3))
    kept_fraction = (y != 0).double().mean().item()
    assert abs(kept_fraction - (1 - p)) < 6 * math.sqrt(p * (1 - p) / n)
    assert abs(y.mean().item() - 1.0) < 6 * math.sqrt(p / ((1 - p) * n))


def test_same_generator_state_gives_same_mask() -> None:
    x = torch.ones(100)
    assert torch.equal(dropout(x, 0.5, generator=_gen(4)), dropout(x, 0.5, generator=_gen(4)))
    assert not torch.equal(dropout(x, 0.5, generator=_gen(4)), dropout(x, 0.5, generator=_gen(5)))


def test_gradient_is_the_scaled_mask() -> None:
    x = torch.randn(1000, generator=_gen(6)).requires_grad_()
    y = dropout(x, 0.3, generator=_gen(7))
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.7)


def test_eval_mode_and_p_zero_are_identity_p_one_is_zero() -> None:
    x = torch.randn(10, generator=_gen(8))
    assert dropout(x, 0.9, training=False) is x
    assert torch.equal(dropout(x, 0.0), x)
    assert torch.equal(dropout(x, 1.0), torch.zeros(10))


@pytest.mark.parametrize("p", [-0.1, 1.5, "0.5"])
def test_bad_probability_raises(p) -> None:
    with pytest.raises(ValueError, match="dropout probability p must be in"):
        dropout(torch.ones(3), p)
