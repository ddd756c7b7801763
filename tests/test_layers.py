"""cnnlab's own pooling and flatten layers compute what torch's do, only faster."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.func import vmap
from torch.nn.modules.utils import _pair

from cnnlab import layers
from cnnlab.layers import AvgPool2d, Flatten, get_pool, tile_window

CL = torch.channels_last


def _forward_and_grad(pool: nn.Module, x: torch.Tensor, seed: int = 0):
    x = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    out = pool(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (grad,) = torch.autograd.grad(out, x, g)
    return out, grad


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 7, 9), (3, 6, 6)])
@pytest.mark.parametrize(
    ("kernel", "stride", "padding"), [(2, None, 0), (3, None, 0), (2, 1, 0), (3, 2, 1)]
)
def test_avg_pool_matches_torch_forward_and_backward(shape, kernel, stride, padding):
    x = torch.randn(shape, dtype=torch.float64)
    ours, stock = AvgPool2d(kernel, stride, padding), nn.AvgPool2d(kernel, stride, padding)
    (out, grad), (ref, ref_grad) = _forward_and_grad(ours, x), _forward_and_grad(stock, x)
    assert out.shape == ref.shape and torch.allclose(out, ref)
    assert torch.allclose(grad, ref_grad)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref)


def test_avg_pool_takes_the_strided_path_only_where_windows_tile_an_nchw_cpu_batch(monkeypatch):
    calls = []
    real = layers._tile_mean
    monkeypatch.setattr(layers, "_tile_mean", lambda x, k: calls.append(k) or real(x, k))
    x = torch.randn(2, 3, 8, 8)
    AvgPool2d(2)(x)
    assert calls == [2]
    AvgPool2d(2, stride=1)(x)  # overlapping windows
    AvgPool2d(2, padding=1)(x)
    AvgPool2d(2, ceil_mode=True)(x)
    AvgPool2d(2)(x.contiguous(memory_format=CL))  # channels_last: torch's own kernel is fast there
    assert calls == [2]
    assert [tile_window(p) for p in (AvgPool2d(3), AvgPool2d((2, 3)), AvgPool2d(2, 1))] == [
        3,
        None,
        None,
    ]


def test_avg_pool_on_an_input_smaller_than_its_window_fails_as_torch_does():
    with pytest.raises(RuntimeError, match="too small"):
        AvgPool2d(4)(torch.randn(1, 2, 3, 3))


def test_avg_pool_is_what_the_registry_builds_and_is_still_an_nn_avg_pool():
    pool = get_pool("avg", 2)
    assert type(pool) is AvgPool2d and isinstance(pool, nn.AvgPool2d)


def test_tiled_avg_pool_has_first_and_second_derivatives():
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(AvgPool2d(2), (x,))
    assert torch.autograd.gradgradcheck(AvgPool2d(2), (x,))


def test_tiled_avg_pool_under_vmap_matches_torch():
    """Fused groups call every layer under torch.func.vmap."""
    x = torch.randn(3, 4, 2, 8, 8, dtype=torch.float64)
    (out, grad), (ref, ref_grad) = (
        _forward_and_grad(lambda t, p=p: vmap(p)(t), x) for p in (AvgPool2d(2), nn.AvgPool2d(2))
    )
    assert torch.allclose(out, ref) and torch.allclose(grad, ref_grad)


def test_flatten_hands_the_gradient_back_in_its_input_memory_format():
    leaf = torch.randn(2, 3, 4, 4, requires_grad=True)
    x = leaf.contiguous(memory_format=CL)  # a channels_last activation, as a network makes it
    seen = {}
    out = Flatten(1)(x)
    x.register_hook(lambda g: seen.setdefault("grad", g))  # runs after Flatten's own hook
    out.backward(torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape))
    assert torch.equal(out, nn.Flatten(1)(x))
    assert seen["grad"].is_contiguous(memory_format=CL) and not seen["grad"].is_contiguous()
    assert torch.equal(leaf.grad, torch.arange(out.numel(), dtype=out.dtype).reshape(x.shape))
    plain = torch.randn(2, 3, 4, 4, requires_grad=True)
    Flatten(1)(plain).sum().backward()
    assert plain.grad.is_contiguous()


def test_tracing_the_tiled_pooling_warns_of_nothing():
    """Export traces the model: the shape tests must come after the tracing test."""
    import warnings

    pool = AvgPool2d(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates tracing itself
        traced = torch.jit.trace(pool, torch.randn(2, 3, 8, 8))
    x = torch.randn(1, 3, 6, 6)
    assert torch.allclose(traced(x), torch.nn.functional.avg_pool2d(x, 2))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL])
@pytest.mark.parametrize(("start", "end"), [(1, -1), (0, -1), (2, 3), (1, 2)])
def test_flatten_passes_gradcheck_like_nn_flatten(memory_format, start, end):
    """Including gradcheck's undefined-gradient pass, where the hook receives None."""
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=memory_format)
    assert torch.autograd.gradcheck(Flatten(start, end), (x.requires_grad_(),))


def _pool_cases():
    """Every kernel/stride/padding/ceil_mode/divisor torch accepts on a few odd shapes."""
    for kernel, stride, padding, ceil, include_pad, divisor in itertools.product(
        [1, 2, 3, (2, 3)], [None, 1, 2, 3], [0, 1], [False, True], [True, False], [None, 3]
    ):
        if 2 * padding <= min(_pair(kernel)):
            yield kernel, stride, padding, ceil, include_pad, divisor


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (3, 6, 6), (1, 2, 3, 3)])
def test_avg_pool_gradcheck_and_torch_parity_over_every_accepted_setting(shape):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, generator=generator)
    inputs = [x, x.transpose(-1, -2).contiguous().transpose(-1, -2)]  # and a non-contiguous one
    if x.dim() == 4:
        inputs.append(x.contiguous(memory_format=CL))
    for args in _pool_cases():
        ours, stock = AvgPool2d(*args), nn.AvgPool2d(*args)
        try:
            stock(x)
        except RuntimeError:  # an output too small: ours must refuse it too
            with pytest.raises(RuntimeError):
                ours(x)
            continue
        for t in inputs:
            (out, grad), (ref, ref_grad) = _forward_and_grad(ours, t), _forward_and_grad(stock, t)
            assert out.shape == ref.shape and torch.allclose(out, ref), args
            assert torch.allclose(grad, ref_grad), args
        assert torch.autograd.gradcheck(ours, (x.clone().requires_grad_(),)), args
