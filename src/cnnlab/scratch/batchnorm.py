"""Batch normalization with running statistics, as PyTorch computes it.

In training, each channel is normalized with the mean and variance of the
current mini-batch, and exponential moving averages of those statistics are
kept. In evaluation the moving averages are used instead, so a prediction does
not depend on which other examples share its batch.

Details that match ``nn.BatchNorm1d``/``nn.BatchNorm2d``:

* statistics are per channel (dimension 1), over the batch and every spatial
  position: ``(N, C)``, ``(N, C, L)`` and ``(N, C, H, W)`` inputs all work;
* normalization in training uses the *biased* batch variance (divide by ``m``),
  while the running variance is updated with the *unbiased* one (divide by
  ``m - 1``), ``m`` being the number of values per channel;
* ``running = (1 - momentum) * running + momentum * batch_statistic``; note that
  ``momentum`` is the weight of the *new* value, the opposite of an optimizer's.
"""

from __future__ import annotations

import torch
from torch import nn


def _check_momentum_eps(momentum: float, eps: float) -> None:
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    if not eps > 0.0:
        raise ValueError(f"eps must be > 0, got {eps!r}")


def batch_norm(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    *,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalize each channel of ``x``, then scale by ``gamma`` and shift by ``beta``.

    A pure function: instead of updating the running statistics in place it
    returns their new values (unchanged in evaluation mode).

    Args:
        x: ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``.
        gamma: learned scale, ``(C,)``.
        beta: learned shift, ``(C,)``.
        running_mean: moving average of the batch means, ``(C,)``.
        running_var: moving average of the unbiased batch variances, ``(C,)``.
        training: use batch statistics and update the running ones (``True``), or
            use the running statistics (``False``).
        momentum: weight of the current batch in the moving averages.
        eps: added to the variance so a constant channel does not divide by zero.

    Returns:
        ``(y, new_running_mean, new_running_var)``; ``y`` has the shape of ``x``.
    """
    if x.dim() not in (2, 3, 4):
        raise ValueError(f"x must be (N, C), (N, C, L) or (N, C, H, W), got shape {tuple(x.shape)}")
    channels = x.shape[1]
    for name, t in (
        ("gamma", gamma),
        ("beta", beta),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ):
        if tuple(t.shape) != (channels,):
            raise ValueError(f"{name} must have shape ({channels},), got {tuple(t.shape)}")
    _check_momentum_eps(momentum, eps)
    # Broadcast per-channel vectors against x: (C,) -> (1, C, 1, ...).
    shape = (1, channels) + (1,) * (x.dim() - 2)
    reduce_dims = [0, *range(2, x.dim())]
    if training:
        m = x.numel() // channels
        if m < 2:
            raise ValueError(
                f"training needs more than 1 value per channel, got input shape {tuple(x.shape)}"
            )
        mean = x.mean(dim=reduce_dims)
        var = ((x - mean.reshape(shape)) ** 2).mean(dim=reduce_dims)  # biased
        with torch.no_grad():  # the moving averages are bookkeeping, not part of the graph
            new_mean = (1 - momentum) * running_mean + momentum * mean
            new_var = (1 - momentum) * running_var + momentum * var * m / (m - 1)
    else:
        mean, var = running_mean, running_var
        new_mean, new_var = running_mean, running_var
    x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
    return gamma.reshape(shape) * x_hat + beta.reshape(shape), new_mean, new_var


class BatchNorm(nn.Module):
    """A batch-normalization layer for any of the shapes :func:`batch_norm` accepts.

    Holds ``gamma``/``beta`` as parameters and the running statistics as
    buffers, and switches between batch and running statistics with
    ``.train()``/``.eval()``, as ``nn.BatchNorm1d``/``nn.BatchNorm2d`` do.

    Args:
        num_features: channels ``C``.
        momentum: weight of the current batch in the moving averages.
        eps: added to the variance for numerical safety.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        _check_momentum_eps(momentum, eps)
        self.momentum = momentum
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, new_mean, new_var = batch_norm(
            x,
            self.gamma,
            self.beta,
            self.running_mean,
            self.running_var,
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
        )
        if self.training:
            self.running_mean.copy_(new_mean)
            self.running_var.copy_(new_var)
        return y
