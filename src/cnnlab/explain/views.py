"""Other ways to look inside: a layer's feature maps, a convolution's kernels, the worst mistakes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.errors import ExplainError
from cnnlab.explain.modules import explainable_copy, first_conv, resolve_layer


def feature_maps(model: nn.Module, image: torch.Tensor, layer: str) -> torch.Tensor:
    """The output of module ``layer`` for one image, C x h x w on the CPU.

    Args:
        model: the network (left untouched: the hook goes on a copy).
        image: float C x H x W or 1 x C x H x W, preprocessed as the model expects.
        layer: dotted module name (``cnnlab summary`` lists them).

    Raises:
        ExplainError: unknown layer, or a layer whose output is not a feature map.
    """
    resolve_layer(model, layer)
    prepared = explainable_copy(model)
    module = resolve_layer(prepared, layer)
    x = image.unsqueeze(0) if image.dim() == 3 else image
    if x.dim() != 4 or len(x) != 1:
        raise ExplainError(
            f"feature maps are shown for one C x H x W image, got shape {tuple(image.shape)}"
        )
    device = next(iter(prepared.parameters()), x).device
    seen: list[object] = []
    handle = module.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            prepared(x.to(device))
    finally:
        handle.remove()
    out = seen[0] if seen else None
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        got = "x".join(map(str, out.shape[1:])) if isinstance(out, torch.Tensor) else "no tensor"
        raise ExplainError(
            f"layer {layer!r} outputs {got}, not feature maps; choose a convolutional layer or block"
        )
    return out[0].float().cpu()


def layer_kernels(model: nn.Module, layer: str | None = None) -> tuple[str, torch.Tensor]:
    """``(name, weight)`` of the first convolution at or inside ``layer`` (default: the model's first).

    The weight is O x I x k x k on the CPU. First-layer kernels are the ones worth
    looking at: they act on pixels directly, so edge and colour detectors show.
    """
    name, conv = first_conv(model, layer)
    return name, conv.weight.detach().float().cpu()


def confident_mistakes(probs: torch.Tensor, labels: torch.Tensor, k: int = 16) -> torch.Tensor:
    """Indices of the ``k`` wrong predictions made with the highest confidence, most confident first."""
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    order = confidence[wrong].argsort(descending=True, stable=True)
    return wrong[order[:k]]


@dataclass(frozen=True)
class ClassAccuracy:
    """One row of the per-class accuracy table."""

    name: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def per_class_accuracy(
    predicted: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]
) -> list[ClassAccuracy]:
    """Correct and total counts per true class, in class order."""
    k = len(classes)
    totals = torch.bincount(labels, minlength=k)
    correct = torch.bincount(labels[predicted == labels], minlength=k)
    return [ClassAccuracy(str(c), int(correct[i]), int(totals[i])) for i, c in enumerate(classes)]
