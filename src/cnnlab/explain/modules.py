"""Which module to look at, and a copy of the model that is safe to instrument.

Explanation methods attach hooks and ask for gradients; doing that on a private
copy means the user's model never carries a leftover hook, never has its
``inplace`` flags changed and never has its parameters' ``requires_grad`` touched,
whatever happens mid-call.
"""

from __future__ import annotations

import copy
import difflib

from torch import nn

from cnnlab.errors import CnnlabError, ExplainError

# How many valid names an "unknown layer" message shows.
_NAMES_SHOWN = 6


def explainable_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode, with every in-place activation made out-of-place.

    In-place ReLUs overwrite the tensor a backward hook needs (captum's guided
    backprop and layer hooks fail or give wrong gradients on them). Parameters
    of the copy do not require gradients: explanations differentiate with respect
    to the input or a layer's output, never the weights, so this saves memory.
    """
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    clone.eval()
    clone.requires_grad_(False)
    clone.zero_grad(set_to_none=True)  # gradients the user's model holds are not ours to carry
    return clone


def layer_names(model: nn.Module) -> list[str]:
    """Every dotted module name ``--layer`` accepts, in ``named_modules()`` order."""
    return [name for name, _ in model.named_modules() if name]


def _suggestions(model: nn.Module, name: str) -> list[str]:
    """Valid names close to ``name`` first, then convolution-bearing ones, a few in all."""
    names = layer_names(model)
    close = difflib.get_close_matches(name, names, n=_NAMES_SHOWN, cutoff=0.5)
    convs = [n for n, m in model.named_modules() if n and isinstance(m, nn.Conv2d)]
    shown: list[str] = []
    for n in [*close, *convs[-_NAMES_SHOWN:], *names]:
        if n not in shown:
            shown.append(n)
    return shown[:_NAMES_SHOWN]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The module called ``name`` (a dotted name from ``named_modules()``).

    Raises:
        ExplainError: no such module; the message lists a few valid names.
    """
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    shown = ", ".join(_suggestions(model, str(name)))
    raise ExplainError(
        f"unknown layer {name!r}; valid names include: {shown} (all: 'cnnlab summary')"
    )


def default_layer(model: nn.Module) -> str:
    """The layer Grad-CAM and its relatives look at when none is given.

    A cnnlab :class:`~cnnlab.models.base.Network` names it itself (the module whose
    output is the last convolutional feature map, falling back to its last
    ``nn.Conv2d`` inside ``features``); for any other module it is the last
    ``nn.Conv2d`` in ``named_modules()`` order.
    """
    if hasattr(model, "default_cam_layer"):
        try:
            return model.default_cam_layer()
        except CnnlabError as exc:
            raise ExplainError(str(exc)) from None
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ExplainError(
            f"{type(model).__name__} has no convolutional layer; pass --layer with a module name"
        )
    return convs[-1]


def first_conv(model: nn.Module, name: str | None = None) -> tuple[str, nn.Conv2d]:
    """The first ``nn.Conv2d`` at or inside module ``name`` (whole model when None).

    Lets ``--layer features.conv1`` name a conv-norm-act block as well as the
    convolution inside it.
    """
    root = resolve_layer(model, name) if name else model
    prefix = f"{name}." if name else ""
    for sub, module in root.named_modules():
        if isinstance(module, nn.Conv2d):
            return (prefix + sub).rstrip("."), module
    where = f"layer {name!r}" if name else type(model).__name__
    raise ExplainError(f"{where} has no convolution whose kernels could be shown")
