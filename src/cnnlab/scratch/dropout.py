"""Inverted dropout, as ``torch.nn.functional.dropout`` does it.

During training each value is zeroed with probability ``p`` and the survivors
are divided by ``1 - p``. The division keeps every value's expected value
unchanged (``(1 - p) * x / (1 - p) = x``), so the next layer sees inputs of
the same scale in training and in evaluation, where dropout does nothing.
"""

from __future__ import annotations

import torch


def dropout(
    x: torch.Tensor,
    p: float = 0.5,
    *,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zero each value with probability ``p`` and scale the rest by ``1 / (1 - p)``.

    Args:
        x: any tensor.
        p: the probability of dropping a value, in ``[0, 1]``.
        training: drop (``True``) or return ``x`` unchanged (``False``).
        generator: random source, for reproducible masks.

    Returns:
        A tensor shaped like ``x``; every value is either 0 or ``x / (1 - p)``
        (all zeros when ``p == 1``).
    """
    if not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1], got {p!r}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)  # nothing survives; avoid dividing by zero
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1.0 - p)
