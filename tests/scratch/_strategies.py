"""Hypothesis strategies for the scratch tests: small geometries and seeded tensors.

Shapes stay tiny (the scratch convolution loops in Python), and tensors are
float64 so comparisons with PyTorch can use tight tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st


def randn(*shape: int, seed: int) -> torch.Tensor:
    """A reproducible float64 standard-normal tensor."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@dataclass(frozen=True)
class ConvCase:
    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    bias: bool
    seed: int

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Input ``(N, C_in, H, W)``, weight ``(C_out, C_in, kh, kw)`` and bias or ``None``."""
        x = randn(self.batch, self.in_channels, self.height, self.width, seed=self.seed)
        w = randn(self.out_channels, self.in_channels, *self.kernel, seed=self.seed + 1)
        b = randn(self.out_channels, seed=self.seed + 2) if self.bias else None
        return x, w, b


@st.composite
def conv_cases(
    draw: st.DrawFn,
    *,
    max_kernel: int = 3,
    max_channels: int = 3,
    max_size: int = 7,
) -> ConvCase:
    """Convolution geometries in which the kernel fits the padded input."""
    kernel = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    height = draw(st.integers(max(1, kernel[0] - 2 * padding[0]), max_size))
    width = draw(st.integers(max(1, kernel[1] - 2 * padding[1]), max_size))
    return ConvCase(
        batch=draw(st.integers(1, 2)),
        in_channels=draw(st.integers(1, max_channels)),
        out_channels=draw(st.integers(1, max_channels)),
        height=height,
        width=width,
        kernel=kernel,
        stride=stride,
        padding=padding,
        bias=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@dataclass(frozen=True)
class PoolCase:
    x: torch.Tensor
    kernel: tuple[int, int]
    stride: tuple[int, int] | None
    padding: tuple[int, int]


@st.composite
def pool_cases(draw: st.DrawFn) -> PoolCase:
    """Pooling geometries PyTorch accepts: padding at most half the window."""
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    height = draw(st.integers(max(1, kernel[0] - 2 * padding[0]), 8))
    width = draw(st.integers(max(1, kernel[1] - 2 * padding[1]), 8))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), height, width)
    return PoolCase(randn(*shape, seed=draw(st.integers(0, 2**31 - 1))), kernel, stride, padding)
