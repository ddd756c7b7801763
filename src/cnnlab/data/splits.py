"""Carving a validation set out of train, the same way every time.

The test split is for the final report only; model selection needs a
validation split. When a data set has none, ``val_fraction`` of every class is
set aside with a fixed seed, so class balance is kept and two runs with the
same seed see exactly the same images.
"""

from __future__ import annotations

import torch

from cnnlab.errors import DataError


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices ``0..N-1`` into train and validation, per class.

    Each class contributes ``round(fraction * count)`` images to validation,
    chosen by a permutation drawn from ``seed``. Both index tensors are sorted,
    so the remaining train images keep their original order.

    Args:
        labels: int64 labels, one per image.
        fraction: share of each class that goes to validation, in ``[0, 1)``.
        seed: seed of the permutation.

    Returns:
        ``(train_indices, val_indices)``, int64 tensors on the CPU.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"val_fraction={fraction!r} is not allowed; use a number in [0, 1)")
    labels = labels.cpu()
    generator = torch.Generator().manual_seed(int(seed))
    train_parts, val_parts = [], []
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        k = int(fraction * len(members) + 0.5)
        val_parts.append(members[:k])
        train_parts.append(members[k:])
    empty = torch.empty(0, dtype=torch.int64)
    train = torch.cat(train_parts).sort().values if train_parts else empty
    val = torch.cat(val_parts).sort().values if val_parts else empty
    return train, val
