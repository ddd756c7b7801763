"""The registry of explanation methods: name -> how to compute it and how to make it a heat map.

Adding a method is one function (in :mod:`cnnlab.explain.attribution` or
:mod:`cnnlab.explain.cam`) and one ``METHODS.add`` line here; the CLI, the docs
table and the tests find it through the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.explain import attribution as A
from cnnlab.explain import cam as C
from cnnlab.registry import Registry

#: ``compute(model, x, target, layer, options) -> attribution`` (native resolution).
Compute = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, nn.Module | None, A.MethodOptions], torch.Tensor
]


def upsample_layer_map(attribution: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x 1 x h x w layer map -> N x H x W, bilinear (captum's ``LayerAttribution.interpolate``)."""
    from captum.attr import LayerAttribution

    if tuple(attribution.shape[-2:]) != tuple(size):
        attribution = LayerAttribution.interpolate(
            attribution, tuple(size), interpolate_mode="bilinear"
        )
    return attribution[:, 0]


def channel_max_abs(attribution: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x C x H x W -> N x H x W: the largest |value| over channels (Simonyan et al.'s saliency map)."""
    return attribution.abs().amax(dim=1)


def channel_sum_abs(attribution: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x C x H x W -> N x H x W: total |attribution| per pixel (keeps IG's completeness per pixel)."""
    return attribution.abs().sum(dim=1)


@dataclass(frozen=True)
class Method:
    """One explanation method.

    Attributes:
        compute: the attribution itself.
        uses_layer: whether it reads an inner layer (``--layer`` applies).
        to_map: attribution -> one N x H x W heat map at the input's size.
        check: raises ExplainError early when the model cannot be explained this way.
    """

    compute: Compute
    uses_layer: bool
    to_map: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]
    check: Callable[[nn.Module], None] | None = None


def _cam(model, x, target, layer, opts):
    return C.class_activation_map(model, x, target)


def _gradcam_pp(model, x, target, layer, opts):
    return C.grad_cam_plus_plus(model, x, target, layer)


METHODS: Registry[Method] = Registry("explanation method")
METHODS.add(
    "cam",
    Method(_cam, False, upsample_layer_map, C.check_gap_head),
    description="class activation map from the classifier weights (GAP networks only)",
)
METHODS.add(
    "gradcam",
    Method(A.grad_cam, True, upsample_layer_map),
    description="Grad-CAM: ReLU of gradient-weighted activations of a layer",
)
METHODS.add(
    "gradcam++",
    Method(_gradcam_pp, True, upsample_layer_map),
    description="Grad-CAM++: pixel-weighted gradients, closed form of the paper",
)
METHODS.add(
    "saliency",
    Method(A.saliency, False, channel_max_abs),
    description="|gradient| of the class score with respect to the input",
)
METHODS.add(
    "smoothgrad",
    Method(A.smoothgrad, False, channel_max_abs),
    description="saliency averaged over noisy copies of the input",
)
METHODS.add(
    "integrated-gradients",
    Method(A.integrated_gradients, False, channel_sum_abs),
    description="gradients integrated along the path from a baseline image",
)
METHODS.add(
    "guided-backprop",
    Method(A.guided_backprop, False, channel_max_abs),
    description="gradients with negative values stopped at each ReLU",
)
METHODS.add(
    "guided-gradcam",
    Method(A.guided_grad_cam, True, channel_max_abs),
    description="guided backprop times the upsampled Grad-CAM map",
)


def list_methods() -> list[str]:
    """Names accepted by ``explain(method=...)`` and ``cnnlab explain --method``."""
    return METHODS.names()
