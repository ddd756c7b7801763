"""The edge-detection exercise: gradient descent recovers the kernel [[1, -1]]."""

from __future__ import annotations

import pytest
import torch

from cnnlab.scratch import corr2d, learn_edge_kernel, stripe_image


def test_stripe_image_and_its_edges() -> None:
    x = stripe_image()
    assert x.shape == (6, 8)
    assert x[0].tolist() == [1, 1, 0, 0, 0, 0, 1, 1]
    y = corr2d(x, torch.tensor([[1.0, -1.0]]))
    # White-to-black gives 1, black-to-white gives -1, flat regions 0.
    assert (y == torch.tensor([0.0, 1, 0, 0, 0, -1, 0])).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_descent_recovers_the_edge_kernel(seed: int) -> None:
    fit = learn_edge_kernel(generator=torch.Generator().manual_seed(seed))
    assert fit.kernel.shape == (1, 2)
    assert torch.allclose(fit.kernel, torch.tensor([[1.0, -1.0]]), atol=0.05)
    assert fit.losses[-1] < 1e-3 * fit.losses[0]


def test_learns_another_kernel_from_other_examples() -> None:
    # Nothing is special about [[1, -1]]: a 2x2 kernel is recovered from a random image.
    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 7, generator=g)
    target = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    fit = learn_edge_kernel(x, corr2d(x, target), kernel_size=2, steps=300, lr=0.02, generator=g)
    torch.testing.assert_close(fit.kernel, target, atol=0.01, rtol=0)


def test_target_of_wrong_shape_raises() -> None:
    with pytest.raises(ValueError, match=r"y has shape \(6, 8\)"):
        learn_edge_kernel(stripe_image(), stripe_image())
