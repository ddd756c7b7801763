"""Batched transforms: exact results on small tensors, seeded randomness, CPU/GPU parity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlab.data import transforms as T
from cnnlab.errors import ConfigError


def _batch(n: int = 6, c: int = 3, h: int = 5, w: int = 7) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_normalize_per_channel() -> None:
    x = _batch()
    y = T.normalize(x, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    expected = (x.float() / 255 - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.5, 0.25, 2.0]
    ).view(1, 3, 1, 1)
    assert y.dtype == torch.float32 and torch.allclose(y, expected)
    assert torch.allclose(
        T.normalize(x.double() / 255, (0.1,), (0.5,)), (x.double() / 255 - 0.1) / 0.5
    )


def test_resize_float_and_uint8() -> None:
    x = _batch(h=8, w=8)
    y = T.resize(x.float(), 4)
    assert torch.allclose(y, F.interpolate(x.float(), size=(4, 4), mode="bilinear", antialias=True))
    u = T.resize(x, (16, 12))
    assert u.dtype == torch.uint8 and u.shape == (6, 3, 16, 12)
    assert T.resize(x, 8) is x


def test_random_crop_is_a_window_of_the_padded_image() -> None:
    x = _batch(n=20)
    y = T.random_crop(x, (5, 7), padding=2, generator=_g())
    padded = F.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(x)):
        windows = [
            (oy, ox)
            for oy in range(5)
            for ox in range(5)
            if torch.equal(padded[i, :, oy : oy + 5, ox : ox + 7], y[i])
        ]
        assert windows, f"crop {i} is not a window of its padded image"
        offsets.add(windows[0])
    assert len(offsets) > 3  # images get different offsets
    assert torch.equal(y, T.random_crop(x, (5, 7), padding=2, generator=_g()))
    assert torch.equal(T.random_crop(x, (5, 7)), x)
    with pytest.raises(
        ConfigError, match="crop size 9x9 is larger than the \\(padded\\) image 7x9"
    ):
        T.random_crop(x, 9, padding=1)


def test_flips() -> None:
    x = _batch(n=200)
    assert torch.equal(T.random_flip(x, 1.0, generator=_g()), x.flip(-1))
    assert torch.equal(T.random_flip(x, 1.0, dim=-2, generator=_g()), x.flip(-2))
    assert torch.equal(T.random_flip(x, 0.0, generator=_g()), x)
    y = T.random_flip(x, 0.5, generator=_g(3))
    flipped = sum(
        torch.equal(y[i], x[i].flip(-1)) and not torch.equal(x[i], x[i].flip(-1))
        for i in range(200)
    )
    assert 70 < flipped < 130
    with pytest.raises(ConfigError, match=r"flip probability p=1.5 is not allowed"):
        T.random_flip(x, 1.5)


def test_pixel_permutation_fixed_and_invertible() -> None:
    x = _batch()
    perm = T.pixel_permutation(5, 7, seed=4)
    assert torch.equal(perm, T.pixel_permutation(5, 7, seed=4)) and not torch.equal(
        perm, T.pixel_permutation(5, 7, 5)
    )
    y = T.permute_pixels(x, perm)
    assert torch.equal(y.flatten(2)[:, :, perm.argsort()], x.flatten(2))  # a bijection of positions
    assert torch.equal(y[:, :, 0, 0], x.flatten(2)[:, :, perm[0]])  # same move in every channel
    assert sorted(y.flatten().tolist()) == sorted(x.flatten().tolist())
    with pytest.raises(ConfigError, match="pixel permutation is for 35 pixels, images have 4x4"):
        T.permute_pixels(_batch(h=4, w=4), perm)


def test_pipeline_by_name() -> None:
    pipeline = T.Compose(
        (
            T.build_transform("crop", padding=1),
            T.build_transform("hflip", p=1.0),
            T.build_transform("permute-pixels", seed=2),
            T.build_transform("normalize", mean=(0.5,), std=(0.5,)),
        )
    )
    x = _batch()
    y = pipeline(x, _g())
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.equal(y, pipeline(x, _g()))
    with pytest.raises(ConfigError, match="unknown transform 'rotate'"):
        T.build_transform("rotate")
    with pytest.raises(ConfigError, match="transform 'hflip' got options \\['q'\\]; it accepts: p"):
        T.build_transform("hflip", q=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_results_on_gpu() -> None:
    x = _batch(n=64, h=32, w=32)
    steps = [
        lambda t, g: T.random_crop(t, 32, 4, generator=g),
        lambda t, g: T.random_flip(t, 0.5, generator=g),
        lambda t, g: T.random_flip(t, 0.3, dim=-2, generator=g),
        lambda t, g: T.permute_pixels(t, T.pixel_permutation(32, 32, 1)),
    ]
    for step in steps:
        assert torch.equal(step(x, _g(7)), step(x.cuda(), _g(7)).cpu())
    # Resizing uint8 rounds many exact .5 ties, which the GPU's summation order may
    # round the other way: one grey level, never more.
    cpu, gpu = T.resize(x, 40), T.resize(x.cuda(), 40).cpu()
    assert cpu.shape == gpu.shape and (cpu.int() - gpu.int()).abs().max() <= 1
    assert torch.allclose(
        T.normalize(x, (0.4,) * 3, (0.2,) * 3), T.normalize(x.cuda(), (0.4,) * 3, (0.2,) * 3).cpu()
    )
