"""Model registry: ``create_model(name, **options)`` and ``list_models(pattern)``.

Each family lives in its own module and registers one entry per named variant.
A builder has the signature ``builder(*, num_classes, in_channels, input_size, **options)``
and returns a :class:`~cnnlab.models.base.Network`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from cnnlab.errors import ModelError
from cnnlab.models.base import Network, meta_forward
from cnnlab.registry import Registry

MODELS: Registry[Callable[..., Network]] = Registry("model")

# Family modules; importing one registers its models.
_FAMILIES = ("mlp", "lenet", "alexnet", "vgg", "nin", "googlenet", "resnet", "densenet")
_loaded = False


def _load_families() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for family in _FAMILIES:
            importlib.import_module(f"cnnlab.models.{family}")


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a glob such as ``resnet*``."""
    _load_families()
    return MODELS.names(pattern)


def model_options(name: str) -> dict[str, Any]:
    """The options a model accepts, with their defaults (``inspect.Parameter.empty`` if required)."""
    _load_families()
    sig = inspect.signature(MODELS.get(name))
    skip = {"num_classes", "in_channels", "input_size"}
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name not in skip and p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def default_input_size(name: str) -> tuple[int, int] | None:
    """The input size a model was designed for (``None`` when any size works)."""
    _load_families()
    return MODELS.entry(name).meta.get("input_size")


def default_in_channels(name: str) -> int:
    """Channels of the data a model was designed for: 3 for the CIFAR variants, else 1."""
    _load_families()
    return int(MODELS.entry(name).meta.get("in_channels", 1))


def create_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    check: bool = True,
    **options: Any,
) -> Network:
    """Build a registered model.

    Args:
        name: registry name (``lenet5``, ``resnet18``, ...); ``cnnlab models`` lists them.
        num_classes: size of the output layer.
        in_channels: 1 for grayscale, 3 for colour; defaults to the model's own
            (see :func:`default_in_channels`).
        input_size: ``H`` or ``(H, W)`` of the images; defaults to the model's own.
        check: dry-run a batch on the meta device so an input size the network
            cannot take fails here, naming the layer, rather than at the first batch.
        **options: family options (``activation``, ``norm``, ``pool``, ``dropout``, ...);
            :func:`model_options` lists them with their defaults.

    Raises:
        RegistryError: unknown name. ModelError: unknown option, bad value or impossible shape.
    """
    _load_families()
    entry = MODELS.entry(name)
    if input_size is None:
        input_size = entry.meta.get("input_size", (28, 28))
    if in_channels is None:
        in_channels = int(entry.meta.get("in_channels", 1))
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    input_size = tuple(int(s) for s in input_size)
    allowed = model_options(entry.name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ModelError(
            f"model {entry.name!r} has no option {unknown[0]!r}; "
            f"options: {', '.join(sorted(allowed)) or 'none'}"
        )
    if num_classes < 1 or in_channels < 1 or len(input_size) != 2 or min(input_size) < 1:
        raise ModelError(
            f"num_classes, in_channels and input size (H, W) must be positive, got "
            f"{num_classes}, {in_channels}, {input_size}"
        )
    try:
        model = entry.obj(
            num_classes=num_classes, in_channels=in_channels, input_size=input_size, **options
        )
    except ModelError as exc:
        raise ModelError(f"model {entry.name!r}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {entry.name!r}: {exc}") from None
    if check:
        check_input_size(model, in_channels, input_size, name=entry.name)
    return model


def check_input_size(
    model: nn.Module, in_channels: int, input_size: tuple[int, int], *, name: str = "model"
) -> None:
    """Dry-run ``model`` on the meta device; raise ModelError naming the layer that breaks."""
    try:
        meta_forward(model, (in_channels, *input_size))
    except ModelError as exc:
        raise ModelError(f"model {name!r}: {exc}") from None


__all__ = [
    "MODELS",
    "Network",
    "check_input_size",
    "create_model",
    "default_in_channels",
    "default_input_size",
    "list_models",
    "model_options",
]
