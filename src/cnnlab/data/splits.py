"""Carving a validation set out of train, the same way every time.

The test split is for the final report only; model selection needs a
validation split. When a data set has none, ``val_fraction`` of every class is
set aside with a fixed seed, so class balance is kept and two runs with the
same seed see exactly the same images.
"""

from __future__ import annotations

import torch

from cnnlab.errors import DataError


def class_quota(counts: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """How many images of each class go to validation.

    The total is ``round(fraction * N)``; each class gets the floor of its exact
    share and the remaining images go to the classes with the largest
    remainders (ties broken at random), so every class is within one image of
    its exact share even when classes are tiny.
    """
    exact = counts.double() * fraction
    quota = exact.floor().long()
    missing = int(fraction * int(counts.sum()) + 0.5) - int(quota.sum())
    tie_break = torch.rand(len(counts), generator=generator, dtype=torch.float64) * 1e-6
    order = torch.argsort(exact - quota + tie_break, descending=True)
    quota[order[: max(missing, 0)]] += 1
    return torch.minimum(quota, counts)


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices ``0..N-1`` into train and validation, per class.

    Each class contributes its share of ``fraction`` (see :func:`class_quota`) to
    validation, chosen by a permutation drawn from ``seed``. Both index tensors
    are sorted, so the remaining train images keep their original order.

    Args:
        labels: int64 labels, one per image.
        fraction: share of the images that goes to validation, in ``[0, 1)``.
        seed: seed of the selection.

    Returns:
        ``(train_indices, val_indices)``, int64 tensors on the CPU.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"val_fraction={fraction!r} is not allowed; use a number in [0, 1)")
    labels = labels.cpu()
    generator = torch.Generator().manual_seed(int(seed))
    counts = torch.bincount(labels) if len(labels) else torch.zeros(0, dtype=torch.int64)
    quota = class_quota(counts, fraction, generator)
    train_parts, val_parts = (
        [torch.empty(0, dtype=torch.int64)],
        [torch.empty(0, dtype=torch.int64)],
    )
    for c, k in enumerate(quota.tolist()):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        val_parts.append(members[:k])
        train_parts.append(members[k:])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values
