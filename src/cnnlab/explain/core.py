"""``explain(model, images, method)``: heat maps of what a network looks at, in batches."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.errors import ExplainError
from cnnlab.explain.attribution import MethodOptions
from cnnlab.explain.methods import METHODS, Method
from cnnlab.explain.modules import default_layer, explainable_copy, resolve_layer
from cnnlab.explain.targets import Target, resolve_targets


@dataclass
class Explanation:
    """The maps of one call, on the CPU, in input order.

    Attributes:
        method: registry name of the method.
        layer: the inner layer it read (None for methods that explain the input directly).
        maps: N x H x W heat maps at the input's size (signed for CAM, else >= 0).
        attributions: the method's own output before reduction: N x 1 x h x w at the
            layer's resolution for the CAM family, N x C x H x W for input methods.
        targets: the class each map explains.
        probs: N x K softmax of the model's outputs.
    """

    method: str
    layer: str | None
    maps: torch.Tensor
    attributions: torch.Tensor
    targets: torch.Tensor
    probs: torch.Tensor

    @property
    def predicted(self) -> torch.Tensor:
        return self.probs.argmax(1)


@contextlib.contextmanager
def _quiet_captum() -> Iterator[None]:
    """Silence captum's notices about what it does on purpose (the library never prints)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Input Tensor \d+ did not already require gradients"
        )
        warnings.filterwarnings("ignore", message=r"Setting backward hooks on ReLU activations")
        yield


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _check_inputs(inputs: torch.Tensor) -> None:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ExplainError(
            f"inputs must be a float N x C x H x W batch (normalized as in training), got {shape}"
        )
    if len(inputs) == 0:
        raise ExplainError("no images to explain")


def _layer_for(method_name: str, method: Method, model: nn.Module, layer: str | None) -> str | None:
    """The layer a method reads: the one asked for, the default, or None for input methods."""
    if not method.uses_layer:
        if layer:
            users = ", ".join(n for n in METHODS.names() if METHODS.get(n).uses_layer)
            raise ExplainError(
                f"method {method_name!r} does not read a layer, so --layer {layer!r} has no "
                f"meaning; layers apply to: {users}"
            )
        return None
    name = layer or default_layer(model)
    resolve_layer(model, name)
    return name


def _forward_checked(
    model: nn.Module, x: torch.Tensor, layer: nn.Module | None, layer_name: str | None, method: str
) -> torch.Tensor:
    """Logits of ``x``; also checks the layer gives a feature map (hook removed before returning)."""
    seen: list[object] = []
    handle = (
        layer.register_forward_hook(lambda m, a, out: seen.append(out))
        if layer is not None
        else None
    )
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        if handle is not None:
            handle.remove()
    if layer is not None:
        out = seen[-1] if seen else None
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            got = (
                "x".join(map(str, out.shape[1:])) if isinstance(out, torch.Tensor) else "no tensor"
            )
            raise ExplainError(
                f"layer {layer_name!r} outputs {got}; {method} needs a layer with a C x H x W "
                "feature map, such as a convolution"
            )
    if logits.dim() != 2:
        raise ExplainError(
            f"the model returns shape {tuple(logits.shape)}; expected N x classes logits"
        )
    return logits.float()


def explain(
    model: nn.Module,
    inputs: torch.Tensor,
    method: str = "gradcam",
    *,
    target: Target = "pred",
    layer: str | None = None,
    labels: torch.Tensor | Sequence[int] | None = None,
    classes: Sequence[str] | None = None,
    batch_size: int = 16,
    options: MethodOptions | None = None,
) -> Explanation:
    """Explain a model's decisions on a batch of images.

    The model is copied (eval mode, in-place activations made out-of-place) and
    every hook lives on the copy, so ``model`` is left exactly as it was; work is
    done ``batch_size`` images at a time on the model's device.

    Args:
        model: a classifier (any ``nn.Module`` returning N x K logits; CAM needs a
            cnnlab network with ``gap_head``).
        inputs: float N x C x H x W batch, preprocessed as the model expects.
        method: one of :func:`cnnlab.explain.list_methods`.
        target: ``pred``, ``true`` (with ``labels``), a class index or name, or one index per image.
        layer: dotted module name for gradcam, gradcam++ and guided-gradcam;
            default: the last convolutional feature map (:func:`default_layer`).
        labels: true labels, for ``target="true"``.
        classes: class names, for targets given by name.
        batch_size: images per pass (bounds memory together with ``options.internal_batch_size``).
        options: knobs of SmoothGrad and Integrated Gradients.

    Returns:
        An :class:`Explanation` with N x H x W maps at the input's size.

    Raises:
        RegistryError: unknown method. ExplainError: unknown layer, a layer with no
        feature map, CAM on a network without global average pooling, bad target.
    """
    entry = METHODS.entry(method)
    name, spec = entry.name, entry.obj
    _check_inputs(inputs)
    if spec.check is not None:
        spec.check(model)
    layer_name = _layer_for(name, spec, model, layer)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExplainError(f"batch_size={batch_size!r} is not allowed; use a positive integer")
    opts = options or MethodOptions()

    prepared = explainable_copy(model)
    layer_module = resolve_layer(prepared, layer_name) if layer_name else None
    device = _model_device(prepared)
    size = tuple(inputs.shape[-2:])
    chunks = [inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)]

    logits = torch.cat(
        [
            _forward_checked(prepared, c.to(device), layer_module, layer_name, name).cpu()
            for c in chunks
        ]
    )
    targets = resolve_targets(target, logits, labels, classes)

    maps, attributions = [], []
    start = 0
    for chunk in chunks:
        x = chunk.to(device)
        t = targets[start : start + len(chunk)].to(device)
        start += len(chunk)
        with torch.enable_grad(), _quiet_captum():
            attribution = spec.compute(prepared, x, t, layer_module, opts).detach()
        maps.append(spec.to_map(attribution, size).float().cpu())
        attributions.append(attribution.float().cpu())
    return Explanation(
        method=name,
        layer=layer_name,
        maps=torch.cat(maps),
        attributions=torch.cat(attributions),
        targets=targets,
        probs=logits.softmax(1),
    )


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each map rescaled to [0, 1] (min-max per map; a constant map becomes zeros).

    The scale of a heat map means nothing across methods or images; this is the
    form they are displayed and compared in.
    """
    flat = maps.reshape(len(maps), -1)
    low = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - low
    out = (flat - low) / torch.where(span > 0, span, torch.ones_like(span))
    return out.reshape(maps.shape)
