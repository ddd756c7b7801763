"""The surface every cnnlab network shares, and the meta-device dry run.

``features`` maps an image batch to the last feature map, ``head`` maps that to
logits. Tools that look inside a network (CAM, Grad-CAM, feature maps, the
summary table) rely only on this split and on :meth:`Network.default_cam_layer`,
never on a family's internals.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Annotated, Any, TypeVar

import torch
from torch import nn
from torch.func import functional_call

from cnnlab.errors import ExplainError, InputSizeError, ModelError, first_line
from cnnlab.registry import normalize_name

T = TypeVar("T")

# Batch size of dry runs: 2, because batch norm in training mode refuses a batch of one.
_DRY_BATCH = 2


def choose(choices: Mapping[str, T], value: str, option: str) -> T:
    """Look up a family-specific choice (``stem``, ``block``, ...) with a one-line error."""
    key = normalize_name(value) if isinstance(value, str) else value
    if key not in choices:
        raise ModelError(f"{option}={value!r} is not allowed; choose one of: {', '.join(choices)}")
    return choices[key]


def check_counts(values: Sequence[int], option: str, example: str) -> tuple[int, ...]:
    """Validate a non-empty list of positive counts (blocks per stage, layers per block)."""
    ok = bool(values) and all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in values
    )
    if not ok:
        raise ModelError(
            f"{option}={values!r} is not allowed; give positive counts such as {example}"
        )
    return tuple(values)


@dataclass(frozen=True)
class AtLeast:
    """Marker in a builder's annotation: ``Annotated[int, AtLeast(0)]``."""

    minimum: int


# An integer option that may be zero (padding, an optional bottleneck); other integer
# options (channels, widths, kernel sizes, counts) must be at least 1.
ZeroOrMore = Annotated[int, AtLeast(0)]


def _option_hints(builder: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations of a builder (a class, function or ``functools.partial``)."""
    while isinstance(builder, functools.partial):
        builder = builder.func
    target = builder.__init__ if inspect.isclass(builder) else builder
    try:
        return typing.get_type_hints(target, include_extras=True)
    except (NameError, TypeError):  # an annotation that cannot be resolved: no checks
        return {}


def _int_minimum(hint: Any) -> int | None:
    """``1`` for ``int``, ``n`` for ``Annotated[int, AtLeast(n)]``, None for other types."""
    if hint is int:
        return 1
    if typing.get_origin(hint) is Annotated:
        base, *extras = typing.get_args(hint)
        if base is int:
            return next((e.minimum for e in extras if isinstance(e, AtLeast)), 1)
    return None


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _example(default: Any) -> str:
    if isinstance(default, (list, tuple)) and default:
        return f" such as [{', '.join(map(str, default))}]"
    if isinstance(default, str):
        return f" such as {default!r}"
    return ""


def check_option_value(hint: Any, option: str, value: Any, default: Any = None) -> None:
    """Check one model option's value against its kind, read from the builder's annotation.

    Integers (channels, widths, kernel sizes, counts) must be whole numbers >= 1
    (>= 0 where the builder says :data:`ZeroOrMore`), lists of them lists of such
    numbers, floats real numbers, booleans true or false, names strings. Ranges
    beyond that (dropout in [0, 1), a list's length) stay with the family.

    Raises:
        ModelError: ``kernel_size=0 is not allowed; use an integer >= 1``.
    """
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) != 1:
            return  # a real union (``bool | Literal["auto"]``): left to the family
        hint = kinds[0]
    minimum = _int_minimum(hint)
    if minimum is not None:
        if not _is_int(value, minimum):
            raise ModelError(f"{option}={value!r} is not allowed; use an integer >= {minimum}")
        return
    origin = typing.get_origin(hint)
    if origin in (Sequence, list, tuple):
        items = typing.get_args(hint)
        minimum = _int_minimum(items[0]) if items else None
        if minimum is None:
            return
        ok = isinstance(value, (list, tuple)) and all(_is_int(v, minimum) for v in value)
        if not ok:
            raise ModelError(
                f"{option}={value!r} is not allowed; use a list of integers >= {minimum}"
                f"{_example(default)}"
            )
        return
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModelError(f"{option}={value!r} is not allowed; use a number{_example(default)}")
    elif hint is bool:
        if not isinstance(value, bool):
            raise ModelError(f"{option}={value!r} is not allowed; use true or false")
    elif hint is str and not isinstance(value, str):
        raise ModelError(f"{option}={value!r} is not allowed; use a name{_example(default)}")


def canonical_option_value(hint: Any, value: Any) -> Any:
    """One spelling for each model option value, read from the builder's annotation.

    Values that build the same network must give the same run key and study
    level: names as their registry form (``ReLU`` and ``relu``, ``zero_pad`` and
    ``zero-pad``: every family looks names up through :func:`normalize_name`),
    whole numbers for float options as floats (``dropout: 0`` is the default
    ``0.0``), and a bare ``none`` typed on the command line (read as null) as the
    name ``'none'`` for options that take a name and never null (``norm=none``).
    Anything else is returned as given, for :func:`check_option_value` to judge.
    """
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or len(kinds) != 1:
            return value
        hint = kinds[0]
    elif hint is str and value is None:
        return "none"
    if hint is str and isinstance(value, str):
        return normalize_name(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def canonical_option_values(
    builder: Callable[..., Any], options: Mapping[str, Any]
) -> dict[str, Any]:
    """``options`` with each value in its one spelling (see :func:`canonical_option_value`)."""
    hints = _option_hints(builder)
    return {k: canonical_option_value(hints[k], v) if k in hints else v for k, v in options.items()}


def check_option_values(builder: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """Check every option in ``options`` against ``builder``'s signature (see above)."""
    hints = _option_hints(builder)
    params = inspect.signature(builder).parameters
    for option, value in options.items():
        if option in hints and option in params:
            check_option_value(hints[option], option, value, params[option].default)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


# Normalization layers keep their input's shape; on meta tensors torch runs them through
# Python decompositions (~10 ms each), so dry runs pass their input straight through.
_SHAPE_PRESERVING = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@contextmanager
def _dry_run_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode and pass-through norms for the duration of a dry run; restored after."""
    modes = [(m, m.training) for m in module.modules()]
    norms = [m for m in module.modules() if isinstance(m, _SHAPE_PRESERVING)]
    module.eval()  # shapes are the same; it also spares batch norm's batch-size check
    for m in norms:
        m.forward = _identity
    try:
        yield
    finally:
        for m in norms:
            del m.forward
        for m, mode in modes:
            m.training = mode


def meta_forward(
    module: nn.Module, input_shape: tuple[int, ...], *, prefix: str = ""
) -> torch.Size:
    """Run ``module`` on a meta tensor of shape ``(2, *input_shape)``; return the output shape.

    The weights are swapped for meta stand-ins through ``functional_call``, so the
    pass costs no arithmetic, allocates nothing and leaves the module (weights,
    device, train/eval mode, running statistics) as it was. Forward hooks fire,
    which is what :func:`cnnlab.models.summary.summary` relies on.

    Raises:
        InputSizeError: the input cannot pass; the message names the innermost module
            (as ``prefix`` + its name in ``named_modules()``) that was running and
            torch's reason.
    """
    running: list[str] = []  # names of the modules whose forward has begun and not ended

    def leave(mod: nn.Module, args: object, out: object) -> None:
        running.pop()  # returns None: a forward hook's return value would replace the output

    handles = []
    for name, mod in module.named_modules():
        handles.append(mod.register_forward_pre_hook(lambda m, a, _n=name: running.append(_n)))
        handles.append(mod.register_forward_hook(leave))
    tensors = chain(
        module.named_parameters(remove_duplicate=False),
        module.named_buffers(remove_duplicate=False),
    )
    meta = {n: torch.empty_like(t, device="meta") for n, t in tensors}
    x = torch.empty(_DRY_BATCH, *input_shape, device="meta")
    try:
        with torch.no_grad(), _dry_run_mode(module):
            out = functional_call(module, meta, (x,), strict=False)
    except (RuntimeError, ValueError, IndexError, ZeroDivisionError, TypeError) as exc:
        inner = running[-1] if running else ""
        layer = (prefix + inner).rstrip(".") or "input"
        raise InputSizeError(
            f"cannot take input {_shape_text(input_shape)}: layer '{layer}' fails ({first_line(exc)})"
        ) from None
    finally:
        for h in handles:
            h.remove()
    return out.shape


def output_shape(
    module: nn.Module, input_shape: tuple[int, ...], *, prefix: str = ""
) -> tuple[int, ...]:
    """Per-sample output shape of ``module`` (batch dimension dropped); see :func:`meta_forward`.

    Families use it to size the first linear layer after ``features`` from the
    real input size, instead of hard-wiring ImageNet's 7x7 or LeNet's 5x5.
    """
    return tuple(meta_forward(module, input_shape, prefix=prefix)[1:])


class Network(nn.Module):
    """Base class: ``forward(x) == head(features(x))``.

    Subclasses set ``self.features`` and ``self.head`` in ``__init__``. A network
    whose head is global average pooling followed by one linear layer (or, like
    NiN, global average pooling of per-class maps) sets ``gap_head = True`` so
    :meth:`class_activation_maps` is defined, and every
    convolutional network sets ``cam_layer`` to the module whose output is its
    last convolutional feature map (the default layer of Grad-CAM).
    """

    features: nn.Module
    head: nn.Module
    gap_head: bool = False
    cam_layer: str = ""

    def __init__(
        self,
        *,
        num_classes: int | None = None,
        in_channels: int | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        # Kept for tools that rebuild inputs (summary, explain); not used by forward.
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.input_size = tuple(input_size) if input_size is not None else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The final linear layer (the one that produces the logits)."""
        last = None
        for module in self.head.modules():
            if isinstance(module, nn.Linear):
                last = module
        if last is None:
            raise AttributeError(f"{type(self).__name__} has no linear classifier")
        return last

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def default_cam_layer(self) -> str:
        """Dotted name of the module whose output is the last convolutional feature map.

        Falls back to the last ``nn.Conv2d`` inside ``features`` when a subclass
        does not say. Raises ModelError for a network without convolutions (MLP).
        """
        names = dict(self.named_modules())
        if self.cam_layer and self.cam_layer in names:
            return self.cam_layer
        convs = [n for n, m in self.features.named_modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            raise ModelError(
                f"{type(self).__name__} has no convolutional layer to explain; "
                "pass a layer name shown by 'cnnlab summary'"
            )
        return f"features.{convs[-1]}"

    def class_activation_maps(self, feature_map: torch.Tensor) -> torch.Tensor:
        """CAM: one map per class from the output of ``forward_features``, shape N x K x H x W.

        ``map_k = sum_c w_kc * feature_map_c`` with ``w`` the classifier weights, so
        in eval mode ``map_k.mean((-2, -1)) + bias_k`` equals logit ``k`` exactly
        (Zhou et al. 2016). Only defined when the head is global average pooling
        followed by one linear layer (``gap_head``).
        """
        if not self.gap_head:
            raise ExplainError(
                f"{type(self).__name__} does not end in global average pooling + one linear "
                "layer, so CAM is undefined for it; use gradcam"
            )
        weight = self.get_classifier().weight
        return torch.einsum("kc,nchw->nkhw", weight, feature_map)
