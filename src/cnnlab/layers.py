"""Pluggable building blocks: activation, normalization and pooling by name.

Every model family builds its layers through these factories, so an option such
as ``activation=gelu`` or ``norm=group`` means the same thing in every network
and a new choice is one registry entry. :class:`LayerConfig` bundles the choices
a network was asked for, validates them once, and hands out layers built with them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from math import isfinite

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from cnnlab.errors import ModelError, RegistryError
from cnnlab.registry import Registry, normalize_name

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")
NORMS: Registry[Callable[[int, int], nn.Module]] = Registry("norm")
POOLS: Registry[Callable[..., nn.Module]] = Registry("pool")

ACTIVATIONS.add("relu", lambda: nn.ReLU(inplace=True), description="max(0, x)")
ACTIVATIONS.add("sigmoid", nn.Sigmoid, description="logistic sigmoid (classic LeNet)")
ACTIVATIONS.add("tanh", nn.Tanh, description="hyperbolic tangent")
ACTIVATIONS.add(
    "leaky-relu", lambda: nn.LeakyReLU(0.01, inplace=True), description="leaky ReLU, slope 0.01"
)
ACTIVATIONS.add("gelu", nn.GELU, description="Gaussian error linear unit")
ACTIVATIONS.add("silu", lambda: nn.SiLU(inplace=True), description="x * sigmoid(x) (swish)")
ACTIVATIONS.add("elu", lambda: nn.ELU(inplace=True), description="exponential linear unit")
ACTIVATIONS.add("identity", nn.Identity, description="no non-linearity")


def _group_count(channels: int) -> int:
    """Largest of 32, 16, 8, 4, 2, 1 groups that divides ``channels``."""
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


def _batch(channels: int, dim: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if dim == 2 else nn.BatchNorm1d(channels)


def _batch_frozen(channels: int, dim: int) -> nn.Module:
    """Batch norm whose scale and shift stay at 1 and 0 (the 'frozen affine' ablation)."""
    bn = _batch(channels, dim)
    bn.weight.requires_grad_(False)
    bn.bias.requires_grad_(False)
    return bn


def _instance(channels: int, dim: int) -> nn.Module:
    # Instance norm over a vector has nothing to normalize over; fall back to identity.
    return nn.InstanceNorm2d(channels, affine=True) if dim == 2 else nn.Identity()


def _layer(channels: int, dim: int) -> nn.Module:
    # For feature maps, GroupNorm with one group normalizes over (C, H, W): layer norm.
    return nn.GroupNorm(1, channels) if dim == 2 else nn.LayerNorm(channels)


def _group(channels: int, dim: int) -> nn.Module:
    if dim == 2:
        return nn.GroupNorm(_group_count(channels), channels)
    return nn.LayerNorm(channels)


NORMS.add("batch", _batch, description="batch normalization")
NORMS.add("batch-frozen", _batch_frozen, description="batch norm with scale/shift frozen at 1/0")
NORMS.add("instance", _instance, description="instance normalization (affine)")
NORMS.add("layer", _layer, description="layer normalization (GroupNorm with 1 group on maps)")
NORMS.add("group", _group, description="group normalization (up to 32 groups)")
NORMS.add("none", lambda channels, dim: nn.Identity(), description="no normalization")


def tile_window(pool: nn.AvgPool2d) -> int | None:
    """The window size when ``pool`` tiles its input with square windows; else None.

    Tiling means stride equal to kernel, no padding, floor mode and the plain
    mean: each input pixel then belongs to at most one window.
    """
    k = _pair(pool.kernel_size)
    stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
    if k[0] != k[1] or stride != k or _pair(pool.padding) != (0, 0):
        return None
    if pool.ceil_mode or pool.divisor_override:
        return None
    return int(k[0])


def _tile_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    h, w = x.shape[-2] // k * k, x.shape[-1] // k * k
    out = None
    for i in range(k):
        for j in range(k):
            part = x[..., i:h:k, j:w:k]
            out = part.clone() if out is None else out.add_(part)
    return out.mul_(1.0 / (k * k))


def _tile_spread(grad: torch.Tensor, k: int, shape: torch.Size) -> torch.Tensor:
    """The gradient of :func:`_tile_mean`: each window's gradient over its k x k pixels.

    k*k strided writes: 2.5x faster than expanding and reshaping the gradient.
    """
    h, w = grad.shape[-2] * k, grad.shape[-1] * k
    # Rows and columns past the last whole tile get no gradient.
    out = grad.new_empty(shape) if (h, w) == tuple(shape[-2:]) else grad.new_zeros(shape)
    share = grad * (1.0 / (k * k))
    for i in range(k):
        for j in range(k):
            out[..., i:h:k, j:w:k] = share
    return out


class _TileMean(torch.autograd.Function):
    """Average pooling over k x k tiles as k*k strided adds; backward spreads each gradient.

    ``generate_vmap_rule`` lets fused groups (``torch.func.vmap``) use it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, k: int) -> torch.Tensor:
        return _tile_mean(x, k)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, k = inputs
        ctx.k, ctx.shape = k, x.shape

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _tile_spread(grad, ctx.k, ctx.shape), None


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` with a faster CPU path when the windows tile the input.

    On a CPU, torch's NCHW average pooling is slow: classic LeNet-5's first
    pooling (256 x 6 x 28 x 28, one thread) takes 2.3 ms forward and 2.4 ms
    backward, where the same mean as k*k strided adds takes 0.6 ms and its
    backward 0.9 ms. Elsewhere (CUDA, channels_last batches, overlapping or
    padded windows) it is ``nn.AvgPool2d``. Same numbers up to float rounding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = tile_window(self)
        if (
            k is None
            # Before any test of a shape: the tracer warns of each such Python bool.
            or torch.jit.is_tracing()
            or torch.jit.is_scripting()
            or x.device.type != "cpu"
            or x.dim() not in (3, 4)
            or not x.is_contiguous()
            or min(x.shape[-2:]) < k  # torch's layer says the input is too small
        ):
            return super().forward(x)
        if torch.is_grad_enabled():  # x.requires_grad is False inside vmap
            return _TileMean.apply(x, k)
        return _tile_mean(x, k)


POOLS.add("max", nn.MaxPool2d, description="max pooling")
POOLS.add("avg", AvgPool2d, description="average pooling")


def _lookup(registry: Registry, name: str, option: str):
    try:
        return registry.get(name)
    except RegistryError:
        raise ModelError(
            f"{option}={name!r} is not allowed; choose one of: {', '.join(registry.names())}"
        ) from None


def get_act(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (relu, sigmoid, tanh, leaky-relu, gelu, ...)."""
    return _lookup(ACTIVATIONS, name, "activation")()


def get_norm(name: str, channels: int, dim: int = 2) -> nn.Module:
    """A normalization layer for ``channels`` features; ``dim=2`` for maps, ``1`` for vectors."""
    return _lookup(NORMS, name, "norm")(channels, dim)


def get_pool(name: str, kernel_size: int, stride: int | None = None, padding: int = 0) -> nn.Module:
    """A pooling layer; ``stride`` defaults to ``kernel_size`` as in torch."""
    return _lookup(POOLS, name, "pool")(kernel_size, stride=stride, padding=padding)


def check_choice(name: str, registry: Registry, option: str) -> str:
    """Validate a registry-backed option early (at model construction); return its canonical name."""
    _lookup(registry, name, option)
    return normalize_name(name)


def check_dropout(p: float) -> float:
    """Validate a dropout probability; 1.0 is refused because it zeroes every activation."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p < 1.0:
        raise ModelError(f"dropout={p!r} is not allowed; use a probability in [0, 1)")
    return float(p)


def make_dropout(p: float) -> nn.Module:
    """``nn.Dropout(p)``, or an identity when ``p == 0`` so it adds no row to a summary.

    ``p`` is checked first: a negative or NaN probability is refused, not read as zero.
    """
    return nn.Dropout(p) if check_dropout(p) > 0 else nn.Identity()


def scale_width(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1: the width multiplier of VGG/ResNet ablations."""
    ok = isinstance(width, int | float) and not isinstance(width, bool)
    if not ok or not isfinite(width) or width <= 0:
        raise ModelError(f"width={width!r} is not allowed; use a positive multiplier such as 0.5")
    return max(1, round(channels * width))


def _named(*layers: tuple[str, nn.Module]) -> OrderedDict[str, nn.Module]:
    """Children in order, dropping identities so summaries show only real layers."""
    return OrderedDict((n, m) for n, m in layers if not isinstance(m, nn.Identity))


def _as_channels_last(grad: torch.Tensor | None) -> torch.Tensor | None:
    # Autograd may hand a hook an undefined (None) gradient; it stays undefined.
    return None if grad is None else grad.contiguous(memory_format=torch.channels_last)


class Flatten(nn.Flatten):
    """``nn.Flatten`` that hands the gradient back in its input's memory format.

    Flattening a channels_last batch copies it into NCHW order, so autograd
    returns the gradient in NCHW order too, and the pooling layer before the
    flatten runs its backward on mixed formats: a slow path (LeNet-5, batch
    256, one CPU thread: ``avg_pool2d`` backward 1.33 ms with an NCHW gradient,
    0.16 ms + 0.05 ms for the conversion with a channels_last one; max pooling
    0.71 against 0.36 ms). A gradient hook converts it back. NCHW inputs, and
    inputs that need no gradient, pass as in ``nn.Flatten``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.requires_grad
            and x.dim() == 4
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
        ):
            x.register_hook(_as_channels_last)
        return super().forward(x)


class ConvNormAct(nn.Sequential):
    """conv -> norm -> act (or conv -> act -> norm with ``norm_after_act``).

    Children are named ``conv``, ``norm``, ``act`` (absent when they would be an
    identity), so layer names in summaries and ``--layer`` options read well. The
    conv has no bias when a norm with a shift follows it directly, as in
    torchvision, so parameter counts match the reference networks.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        *,
        activation: str = "relu",
        norm: str = "batch",
        norm_after_act: bool = False,
        bias: bool | None = None,
    ) -> None:
        if padding is None:
            padding = kernel_size // 2
        if bias is None:
            bias = normalize_name(norm) == "none" or norm_after_act
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        n, a = get_norm(norm, out_channels), get_act(activation)
        order = [("act", a), ("norm", n)] if norm_after_act else [("norm", n), ("act", a)]
        super().__init__(_named(("conv", conv), *order))


class NormActConv(nn.Sequential):
    """norm -> act -> conv: the pre-activation unit of DenseNet and pre-act ResNet.

    The conv keeps a bias only without normalization; otherwise the next unit's
    norm absorbs any shift (torchvision's DenseNet does the same).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        *,
        activation: str = "relu",
        norm: str = "batch",
    ) -> None:
        if padding is None:
            padding = kernel_size // 2
        bias = normalize_name(norm) == "none"
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        super().__init__(
            _named(
                ("norm", get_norm(norm, in_channels)), ("act", get_act(activation)), ("conv", conv)
            )
        )


class LinearNormAct(nn.Sequential):
    """linear -> norm -> act -> dropout: one hidden layer of an MLP or classic classifier."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        activation: str = "relu",
        norm: str = "none",
        norm_after_act: bool = False,
        dropout: float = 0.0,
    ) -> None:
        bias = normalize_name(norm) == "none" or norm_after_act
        n, a = get_norm(norm, out_features, dim=1), get_act(activation)
        order = [("act", a), ("norm", n)] if norm_after_act else [("norm", n), ("act", a)]
        linear = nn.Linear(in_features, out_features, bias=bias)
        super().__init__(_named(("linear", linear), *order, ("drop", make_dropout(dropout))))


@dataclass(frozen=True)
class LayerConfig:
    """The layer choices a network was asked for, validated once at construction.

    Families pass one of these to their blocks instead of threading four
    arguments through every constructor; a bad name fails here, naming the option,
    even for a layer the chosen variant never builds.
    """

    activation: str = "relu"
    norm: str = "batch"
    pool: str = "max"
    norm_after_act: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "activation", check_choice(self.activation, ACTIVATIONS, "activation")
        )
        object.__setattr__(self, "norm", check_choice(self.norm, NORMS, "norm"))
        object.__setattr__(self, "pool", check_choice(self.pool, POOLS, "pool"))
        if not isinstance(self.norm_after_act, bool):
            raise ModelError(
                f"norm_after_act={self.norm_after_act!r} is not allowed; use true or false"
            )

    def act(self) -> nn.Module:
        return get_act(self.activation)

    def norm_layer(self, channels: int, dim: int = 2) -> nn.Module:
        return get_norm(self.norm, channels, dim)

    def pool_layer(
        self, kernel_size: int, stride: int | None = None, padding: int = 0
    ) -> nn.Module:
        return get_pool(self.pool, kernel_size, stride, padding)

    def conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        *,
        act: bool = True,
        bias: bool | None = None,
    ) -> ConvNormAct:
        """conv-norm-act with this config; ``act=False`` for the conv before a residual add."""
        return ConvNormAct(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            activation=self.activation if act else "identity",
            norm=self.norm,
            norm_after_act=self.norm_after_act,
            bias=bias,
        )

    def preact_conv(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1
    ) -> NormActConv:
        return NormActConv(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            activation=self.activation,
            norm=self.norm,
        )

    def linear(self, in_features: int, out_features: int, *, dropout: float = 0.0) -> LinearNormAct:
        return LinearNormAct(
            in_features,
            out_features,
            activation=self.activation,
            norm=self.norm,
            norm_after_act=self.norm_after_act,
            dropout=dropout,
        )


class ClassifierHead(nn.Module):
    """Global pooling + flatten + dropout + linear: the usual ending of modern CNNs.

    Kept as one module so CAM can read ``fc.weight`` and ``forward_head`` is the
    same for every network that ends this way.
    """

    def __init__(
        self, in_features: int, num_classes: int, *, dropout: float = 0.0, pool: str = "avg"
    ) -> None:
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.flatten = Flatten(1)
        self.drop = make_dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.flatten(self.global_pool(x))))
