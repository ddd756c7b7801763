"""Exact channel statistics from histograms equal the direct float computation."""

from __future__ import annotations

import pytest
import torch

from cnnlab.data.stats import channel_stats


def test_matches_float_computation() -> None:
    images = torch.randint(
        0, 256, (37, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    mean, std = channel_stats(images)
    x = images.double() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-12)


def test_constant_and_rejects_float() -> None:
    assert channel_stats(torch.full((2, 1, 3, 3), 255, dtype=torch.uint8)) == ((1.0,), (0.0,))
    with pytest.raises(ValueError, match="expected a uint8"):
        channel_stats(torch.zeros(2, 1, 3, 3))
