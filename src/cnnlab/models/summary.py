"""Per-layer summary of a network: output shapes, parameters, multiply-accumulates, memory.

The forward pass runs on the meta device (see :func:`~cnnlab.models.base.meta_forward`),
so summarizing VGG-16 at 224 px costs no arithmetic and leaves a trained model
untouched. torchinfo is not used for the walk itself: its Mult-Adds count conv
biases and normalization parameters as multiplications and include the batch,
and it moves the model to a device; here every number is per sample, layers
carry the dotted names of ``named_modules()`` (what ``--layer`` options take),
and the conv/linear counts equal torchinfo's for bias-free layers (tested); transposed
convs are counted per input element, where torchinfo counts the stride's zeros too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from math import prod
from typing import Any

import torch
from torch import nn

from cnnlab.errors import ModelError
from cnnlab.models.base import meta_forward
from cnnlab.registry import normalize_name

FLOAT32_BYTES = 4


@dataclass
class LayerInfo:
    """One module of the network, named as in ``model.named_modules()``.

    ``params`` and ``macs`` of a container include its children; ``macs`` and
    ``output_shape`` are per sample (no batch dimension); ``depth`` is the number
    of dotted parts of the name (``features.conv1`` has depth 2).
    """

    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    depth: int


@dataclass
class ModelSummary:
    """What ``cnnlab summary`` shows; every count is per sample.

    ``macs`` are multiply-accumulates of conv and linear layers, ``flops`` is
    ``2 * macs`` (one multiply and one add each), and ``activation_bytes`` is the
    float32 memory of the forward activations (see :func:`summary`).
    """

    input_shape: tuple[int, ...]
    layers: list[LayerInfo]
    total_params: int
    trainable_params: int
    macs: int
    flops: int
    activation_bytes: int

    def to_rows(self) -> list[dict[str, Any]]:
        """Every layer as a plain dict (name, type, output_shape, params, macs, depth)."""
        return [asdict(layer) for layer in self.layers]

    def layer(self, name: str) -> LayerInfo:
        """The layer called ``name``; ModelError listing a few names if there is none."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        shown = ", ".join(layer.name for layer in self.table()[:8])
        raise ModelError(f"no layer named {name!r}; layers include: {shown}, ...")

    def table(self, max_depth: int | None = None) -> list[LayerInfo]:
        """The rows to display: leaves, or with ``max_depth`` the modules down to that depth
        (a container at ``max_depth`` stands for everything inside it).
        """
        parents = {layer.name.rsplit(".", 1)[0] for layer in self.layers if "." in layer.name}
        rows = []
        for layer in self.layers:
            is_leaf = layer.name not in parents
            if max_depth is None:
                keep = is_leaf
            else:
                keep = layer.depth == max_depth or (layer.depth < max_depth and is_leaf)
            if keep:
                rows.append(layer)
        return rows


def _conv_macs(module: nn.modules.conv._ConvNd, x: torch.Tensor | None, out: torch.Tensor) -> int:
    # Each output element: (in_channels / groups) * kernel multiply-accumulates.
    per_output = module.in_channels // module.groups * prod(module.kernel_size)
    return out[0].numel() * per_output


def _conv_transpose_macs(
    module: nn.modules.conv._ConvTransposeNd, x: torch.Tensor | None, out: torch.Tensor
) -> int:
    # A transposed conv scatters each input element into (out_channels / groups) * kernel
    # outputs; the conv formula (per output element) would count the stride's inserted
    # zeros as work, stride**2 times too much (fvcore counts it this way too).
    if x is None:  # called with the input as a keyword: only the output is known
        return _conv_macs(module, x, out)
    per_input = module.out_channels // module.groups * prod(module.kernel_size)
    return x[0].numel() * per_input


def _linear_macs(module: nn.Linear, x: torch.Tensor | None, out: torch.Tensor) -> int:
    return out[0].numel() * module.in_features


# Layer type -> per-sample MACs from the module, its (batched) input (None when it came as
# a keyword) and output; the most specific type in a module's MRO wins.
MAC_RULES: dict[type[nn.Module], Callable[[Any, torch.Tensor | None, torch.Tensor], int]] = {
    nn.modules.conv._ConvTransposeNd: _conv_transpose_macs,
    nn.modules.conv._ConvNd: _conv_macs,
    nn.Linear: _linear_macs,
}

# Layers whose output aliases their input, so they allocate no activation memory.
_NO_MEMORY = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout2d, nn.Dropout1d)


def _macs(module: nn.Module, args: tuple, out: torch.Tensor) -> int:
    for kind in type(module).__mro__:
        if kind in MAC_RULES:
            return MAC_RULES[kind](module, args[0] if args else None, out)
    return 0


def _allocates(module: nn.Module) -> bool:
    return not isinstance(module, _NO_MEMORY) and not getattr(module, "inplace", False)


def _input_shape(shape: Sequence[int]) -> tuple[int, ...]:
    dims = tuple(shape)
    if len(dims) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ModelError(f"input shape {shape!r} is not allowed; give C, H, W such as (1, 28, 28)")
    return dims


def summary(
    model: nn.Module | str, input_shape: Sequence[int] = (1, 28, 28), **options: Any
) -> ModelSummary:
    """Summarize ``model`` (a module, or a registered name built with ``options``).

    Args:
        model: an ``nn.Module`` (left unchanged), or a name for
            :func:`~cnnlab.models.create_model`; a name is built on the meta device,
            so even large networks summarize instantly.
        input_shape: ``(C, H, W)`` of one image.
        **options: for a name, ``num_classes`` and the family options.

    Returns:
        A :class:`ModelSummary`. What is counted: MACs of convolutions
        (``out_h * out_w * out_c * in_c / groups * k_h * k_w``) and linear layers
        (``in * out``), bias additions excluded; not counted: normalization,
        activations, pooling, residual additions and concatenations, which are
        memory-bound and conventionally left out (so the totals match published
        figures such as torchvision's 1.81 GMACs for ResNet-18).
        ``activation_bytes`` adds the float32 outputs of every leaf layer that
        allocates one (not identities, flatten, dropout or in-place activations):
        the memory an inference pass touches, not the peak of a training step.

    Raises:
        ModelError: bad input shape, or a network that cannot take it (naming the layer).
    """
    shape = _input_shape(input_shape)
    label = None
    if isinstance(model, str):
        from cnnlab.models import create_model

        label = normalize_name(model)
        with torch.device("meta"):  # the dry run below checks the input size
            model = create_model(
                model, in_channels=shape[0], input_size=shape[1:], check=False, **options
            )
    elif options:
        raise ModelError(f"options {sorted(options)} only apply when the model is given by name")

    modules = [(n, m) for n, m in model.named_modules() if n and not isinstance(m, nn.Identity)]
    leaves = {n for n, m in modules if not any(True for _ in m.children())}
    shapes: dict[str, tuple[int, ...]] = {}
    macs: dict[str, int] = {}
    memory = 0

    def record(name: str, module: nn.Module, args: tuple, out: object) -> None:
        nonlocal memory
        if not isinstance(out, torch.Tensor):
            return
        shapes[name] = tuple(out.shape[1:])
        if name in leaves:
            macs[name] = macs.get(name, 0) + _macs(module, args, out)
            if _allocates(module):
                memory += out[0].numel() * FLOAT32_BYTES

    handles = [
        m.register_forward_hook(lambda mod, args, out, _n=n: record(_n, mod, args, out))
        for n, m in modules
    ]
    try:
        meta_forward(model, shape)
    except ModelError as exc:
        raise type(exc)(f"model {label!r}: {exc}" if label else str(exc)) from None
    finally:
        for h in handles:
            h.remove()

    # A container's MACs are its leaves': add each leaf's count to all its ancestors.
    subtree: dict[str, int] = {}
    for leaf, count in macs.items():
        parts = leaf.split(".")
        for i in range(1, len(parts) + 1):
            key = ".".join(parts[:i])
            subtree[key] = subtree.get(key, 0) + count
    layers = [
        LayerInfo(
            name=name,
            type=type(module).__name__,
            output_shape=shapes.get(name, ()),
            params=sum(p.numel() for p in module.parameters()),
            macs=subtree.get(name, 0),
            depth=name.count(".") + 1,
        )
        for name, module in modules
    ]
    total_macs = sum(macs.values())
    return ModelSummary(
        input_shape=shape,
        layers=layers,
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=total_macs,
        flops=2 * total_macs,
        activation_bytes=memory,
    )
