"""Pluggable building blocks: activation, normalization and pooling by name.

Every model family builds its layers through these factories, so an option such
as ``activation=gelu`` or ``norm=group`` means the same thing in every network
and a new choice is one registry entry.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cnnlab.errors import ModelError, RegistryError
from cnnlab.registry import Registry

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")
NORMS: Registry[Callable[[int, int], nn.Module]] = Registry("norm")
POOLS: Registry[Callable[..., nn.Module]] = Registry("pool")

ACTIVATIONS.add("relu", lambda: nn.ReLU(inplace=True), description="max(0, x)")
ACTIVATIONS.add("sigmoid", nn.Sigmoid, description="logistic sigmoid (classic LeNet)")
ACTIVATIONS.add("tanh", nn.Tanh, description="hyperbolic tangent")
ACTIVATIONS.add("leaky-relu", lambda: nn.LeakyReLU(0.01, inplace=True), description="leaky ReLU, slope 0.01")
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
    return nn.GroupNorm(_group_count(channels), channels) if dim == 2 else nn.LayerNorm(channels)


NORMS.add("batch", _batch, description="batch normalization")
NORMS.add("batch-frozen", _batch_frozen, description="batch norm with scale/shift frozen at 1/0")
NORMS.add("instance", _instance, description="instance normalization (affine)")
NORMS.add("layer", _layer, description="layer normalization (GroupNorm with 1 group on maps)")
NORMS.add("group", _group, description="group normalization (up to 32 groups)")
NORMS.add("none", lambda channels, dim: nn.Identity(), description="no normalization")

POOLS.add("max", nn.MaxPool2d, description="max pooling")
POOLS.add("avg", nn.AvgPool2d, description="average pooling")


def _lookup(registry: Registry, name: str, option: str):
    try:
        return registry.get(name)
    except RegistryError:
        raise ModelError(
            f"{option}={name!r} is not allowed; choose one of: {', '.join(registry.names())}"
        ) from None


def get_act(name: str) -> nn.Module:
    """A fresh activation module for ``name`` (relu, sigmoid, tanh, leaky-relu, gelu, silu, ...)."""
    return _lookup(ACTIVATIONS, name, "activation")()


def get_norm(name: str, channels: int, dim: int = 2) -> nn.Module:
    """A normalization layer for ``channels`` features; ``dim=2`` for maps, ``1`` for vectors."""
    return _lookup(NORMS, name, "norm")(channels, dim)


def get_pool(name: str, kernel_size: int, stride: int | None = None, padding: int = 0) -> nn.Module:
    """A pooling layer; ``stride`` defaults to ``kernel_size`` as in torch."""
    return _lookup(POOLS, name, "pool")(kernel_size, stride=stride, padding=padding)


def check_choice(name: str, registry: Registry, option: str) -> str:
    """Validate a registry-backed option early (at model construction)."""
    _lookup(registry, name, option)
    from cnnlab.registry import normalize_name

    return normalize_name(name)


class ConvNormAct(nn.Sequential):
    """conv -> norm -> act (or conv -> act -> norm with ``norm_after_act``).

    The conv has no bias when a norm with a shift follows it directly, as in
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
            bias = norm == "none" or norm_after_act
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        n = get_norm(norm, out_channels)
        a = get_act(activation)
        layers = [conv, a, n] if norm_after_act else [conv, n, a]
        super().__init__(*[m for m in layers if not isinstance(m, nn.Identity)] or [conv])


class ClassifierHead(nn.Module):
    """Global pooling + flatten + dropout + linear: the usual ending of modern CNNs.

    Kept as one module so CAM can read ``fc.weight`` and ``forward_head`` is the
    same for every network that ends this way.
    """

    def __init__(self, in_features: int, num_classes: int, *, dropout: float = 0.0, pool: str = "avg") -> None:
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten(1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.fc(self.drop(self.flatten(self.global_pool(x))))
