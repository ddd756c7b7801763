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

import torch
from torch import nn

from cnnlab.errors import ModelError, first_line
from cnnlab.models.base import (
    Network,
    canonical_option_values,
    check_option_values,
    meta_forward,
)
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


def check_options(name: str, options: dict[str, Any]) -> None:
    """Check option names and values of model ``name`` without building it.

    Each value is checked by the kind its builder's signature declares (see
    :func:`~cnnlab.models.base.check_option_value`), so the run config, ``summary``
    and study expansion refuse ``kernel_size=0`` or ``hidden=[-1]`` in one line
    before any work starts.

    Raises:
        RegistryError: unknown name. ModelError: unknown option or a value of the wrong kind.
    """
    _load_families()
    entry = MODELS.entry(name)
    allowed = model_options(entry.name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ModelError(
            f"model {entry.name!r} has no option {unknown[0]!r}; "
            f"options: {', '.join(sorted(allowed)) or 'none'}"
        )
    try:
        check_option_values(entry.obj, options)
    except ModelError as exc:
        raise ModelError(f"model {entry.name!r}: {exc}") from None


def canonical_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` of model ``name`` with one spelling per value (``ReLU`` -> ``relu``,
    ``dropout: 0`` -> ``0.0``, ``norm: null`` -> ``'none'``), so that values that
    build the same network make the same run config."""
    _load_families()
    return canonical_option_values(MODELS.get(name), options)


def _options_text(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(options.items())) or "default options"


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
    check_options(entry.name, options)
    if num_classes < 1 or in_channels < 1 or len(input_size) != 2 or min(input_size) < 1:
        raise ModelError(
            f"num_classes, in_channels and input size (H, W) must be positive, got "
            f"{num_classes}, {in_channels}, {input_size}"
        )
    try:
        model = entry.obj(
            num_classes=num_classes, in_channels=in_channels, input_size=input_size, **options
        )
    except ModelError as exc:  # InputSizeError stays one: studies tell the two apart
        raise type(exc)(f"model {entry.name!r}: {exc}") from None
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError, IndexError) as exc:
        # A combination the checks above let through: one line naming the options, no traceback.
        raise ModelError(
            f"model {entry.name!r} cannot be built with {_options_text(options)} ({first_line(exc)})"
        ) from None
    if check:
        check_input_size(model, in_channels, input_size, name=entry.name)
    return model


def check_forward(
    model: nn.Module,
    in_channels: int,
    input_size: tuple[int, int],
    *,
    name: str = "model",
    options: dict[str, Any] | None = None,
) -> None:
    """Run one zero image through ``model`` where its weights live (eval mode, no grad).

    The meta-device dry run checks shapes only; some kernels refuse arguments only
    when they compute (negative padding, say). The trainer calls this before it
    creates the run folder, so a model that cannot run leaves nothing behind.
    Weights, running statistics and train/eval modes are left as they were.

    Raises:
        ModelError: naming the model, its options and torch's reason.
    """
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    device = tensor.device if tensor is not None else None
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, *input_size, device=device))
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, ZeroDivisionError, TypeError, IndexError) as exc:
        raise ModelError(
            f"model {name!r} cannot run with {_options_text(options or {})} ({first_line(exc)})"
        ) from None
    finally:
        for m, mode in modes:
            m.training = mode


def check_input_size(
    model: nn.Module, in_channels: int, input_size: tuple[int, int], *, name: str = "model"
) -> None:
    """Dry-run ``model`` on the meta device; raise ModelError naming the layer that breaks."""
    try:
        meta_forward(model, (in_channels, *input_size))
    except ModelError as exc:
        raise type(exc)(f"model {name!r}: {exc}") from None


__all__ = [
    "MODELS",
    "Network",
    "check_forward",
    "check_input_size",
    "check_options",
    "create_model",
    "default_in_channels",
    "default_input_size",
    "list_models",
    "model_options",
]
