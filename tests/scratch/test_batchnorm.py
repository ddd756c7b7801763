"""The scratch batch normalization equals ``nn.BatchNorm1d``/``nn.BatchNorm2d``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlab.scratch import BatchNorm, batch_norm

from ._strategies import randn

# Input shapes by rank, and the torch layer that handles them.
_TORCH_LAYER = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}


@st.composite
def bn_inputs(draw: st.DrawFn) -> tuple[tuple[int, ...], float, float, int]:
    rank = draw(st.sampled_from([2, 3, 4]))
    batch = draw(st.integers(2, 4))
    channels = draw(st.integers(1, 4))
    spatial = tuple(draw(st.integers(1, 3)) for _ in range(rank - 2))
    momentum = draw(st.floats(0.0, 1.0))
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    return (batch, channels, *spatial), momentum, eps, draw(st.integers(0, 2**31 - 1))


def _twin_layers(channels: int, rank: int, momentum: float, eps: float, seed: int):
    ours = BatchNorm(channels, momentum=momentum, eps=eps).double()
    theirs = _TORCH_LAYER[rank](channels, momentum=momentum, eps=eps).double()
    with torch.no_grad():  # non-trivial affine parameters, the same in both
        for mine, torch_param in ((ours.gamma, theirs.weight), (ours.beta, theirs.bias)):
            mine.copy_(randn(channels, seed=seed))
            torch_param.copy_(mine)
            seed += 1
    return ours, theirs


@settings(max_examples=40, deadline=None)
@given(bn_inputs())
def test_training_then_eval_matches_torch(args) -> None:
    shape, momentum, eps, seed = args
    ours, theirs = _twin_layers(shape[1], len(shape), momentum, eps, seed)
    for step in range(3):
        # Shifted, scaled batches so the running statistics move away from (0, 1).
        x = 3.0 * randn(*shape, seed=seed + 10 + step) + step
        torch.testing.assert_close(ours(x), theirs(x))
        torch.testing.assert_close(ours.running_mean, theirs.running_mean)
        torch.testing.assert_close(ours.running_var, theirs.running_var)
    ours.eval()
    theirs.eval()
    x = randn(*shape, seed=seed + 20)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_var, theirs.running_var)  # eval does not update


@settings(max_examples=15, deadline=None)
@given(bn_inputs())
def test_training_gradients_match_torch(args) -> None:
    shape, momentum, eps, seed = args
    ours, theirs = _twin_layers(shape[1], len(shape), momentum, eps, seed)
    x = randn(*shape, seed=seed + 5)
    upstream = randn(*shape, seed=seed + 6)
    grads = []
    for layer in (ours, theirs):
        xi = x.clone().requires_grad_()
        (layer(xi) * upstream).sum().backward()
        grads.append([xi.grad, *(p.grad for p in layer.parameters())])
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want)


def test_running_variance_is_unbiased_and_normalization_biased() -> None:
    x = torch.tensor([[0.0], [2.0]])  # one channel: mean 1, biased var 1, unbiased var 2
    y, mean, var = batch_norm(
        x,
        torch.ones(1),
        torch.zeros(1),
        torch.zeros(1),
        torch.zeros(1),
        training=True,
        momentum=1.0,
        eps=0.0 + 1e-12,
    )
    torch.testing.assert_close(y, torch.tensor([[-1.0], [1.0]]))
    assert mean.item() == 1.0
    assert var.item() == 2.0


def test_batch_norm_function_is_pure() -> None:
    running_mean, running_var = torch.zeros(2), torch.ones(2)
    _, new_mean, _ = batch_norm(
        randn(4, 2, seed=0),
        torch.ones(2, dtype=torch.float64),
        torch.zeros(2, dtype=torch.float64),
        running_mean,
        running_var,
        training=True,
    )
    assert running_mean.eq(0).all() and running_var.eq(1).all()
    assert not new_mean.eq(0).all()


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.zeros(1, 3), "more than 1 value per channel"),
        (torch.zeros(4, 2), r"gamma must have shape \(2,\)"),
        (torch.zeros(4), "got shape"),
    ],
)
def test_bad_inputs_raise(x: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchNorm(3)(x)


def test_bad_hyperparameters_raise() -> None:
    with pytest.raises(ValueError, match="momentum must be in"):
        BatchNorm(3, momentum=1.5)
    with pytest.raises(ValueError, match="num_features"):
        BatchNorm(0)
