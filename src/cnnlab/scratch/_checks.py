"""Argument checks shared by the scratch operations.

Learners call these functions by hand, so a wrong argument should fail at once
with a message that names the value, not deep inside an indexing expression.
"""

from __future__ import annotations

import torch


def pair(value: int | tuple[int, int], name: str, *, minimum: int = 1) -> tuple[int, int]:
    """Turn ``3`` or ``(3, 5)`` into a ``(height, width)`` pair and check its range.

    Args:
        value: one int for both dimensions, or a pair.
        name: the argument's name, used in the error message.
        minimum: the smallest allowed entry (1 for sizes and strides, 0 for padding).

    Returns:
        The pair ``(h, w)``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        h = w = value
    elif (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        h, w = value
    else:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if h < minimum or w < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return h, w


def require_dims(x: torch.Tensor, dims: int, name: str, layout: str) -> None:
    """Raise ``ValueError`` unless ``x`` has exactly ``dims`` dimensions.

    Args:
        x: the tensor to check.
        dims: the number of dimensions expected.
        name: the argument's name, used in the error message.
        layout: the expected layout in words, e.g. ``"(N, C, H, W)"``.
    """
    if x.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D {layout}, got shape {tuple(x.shape)}")
