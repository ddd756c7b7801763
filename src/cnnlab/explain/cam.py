"""CAM and Grad-CAM++, written out here because no library implements them as published.

Both return maps at the resolution of the layer they read (N x 1 x h x w);
:func:`cnnlab.explain.explain` upsamples them to the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import ExplainError


def check_gap_head(model: nn.Module) -> None:
    """CAM needs global average pooling + one linear layer at the end; say so otherwise."""
    if not getattr(model, "gap_head", False) or not hasattr(model, "class_activation_maps"):
        raise ExplainError(
            f"method 'cam' needs a network ending in global average pooling + one linear layer "
            f"(nin, googlenet, resnet, densenet); {type(model).__name__} does not, "
            "use --method gradcam instead"
        )


@torch.no_grad()
def class_activation_map(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: nn.Module | None = None
) -> torch.Tensor:
    """CAM (Zhou et al. 2016): the target class's classifier weights applied to the last feature map.

    ``cam = sum_c w[target, c] * A_c`` with ``A = forward_features(x)``; the map is
    kept signed, so ``cam.mean() + bias[target]`` is exactly the target's logit.
    ``layer`` is unused: CAM is defined only on the map the classifier pools.
    """
    check_gap_head(model)
    maps = model.class_activation_maps(model.forward_features(x))  # N x K x h x w
    index = target.view(-1, 1, 1, 1).expand(-1, 1, *maps.shape[-2:])
    return maps.gather(1, index)


def _layer_output_and_grad(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output A and d(score_target)/dA, with the hook removed before returning."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        with torch.enable_grad():
            # The copy's weights do not require grad, so the graph must start at the input.
            logits = model(x.detach().requires_grad_(True))
            if not seen or not isinstance(seen[-1], torch.Tensor) or seen[-1].dim() != 4:
                raise ExplainError(
                    "gradcam++ needs a layer whose output is an N x C x H x W feature map; "
                    "choose a convolutional layer"
                )
            activation = seen[-1]
            score = logits.gather(1, target.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, activation)
    finally:
        handle.remove()
    return activation.detach(), grad.detach()


def grad_cam_plus_plus(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: nn.Module
) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018), closed form with an exponential score.

    With ``Y = exp(S)`` the higher derivatives of ``Y`` follow from the first-order
    gradient ``g = dS/dA`` of a piecewise-linear network (second-order terms of S
    vanish), and ``exp(S)`` cancels out of the pixel weights:

        alpha_ij^k = g_ij^2 / (2 g_ij^2 + g_ij^3 sum_ab A_ab^k)
        w^k        = sum_ij alpha_ij^k relu(dY/dA_ij^k)
        map        = relu(sum_k w^k A^k)

    ``dY/dA = exp(S) g``: the factor ``exp(S)`` is one positive number per image
    that only rescales the map, so it is left out (it overflows for large logits).
    The third derivative is taken at the pixel being weighted (the paper's eq. 19):
    it stands outside the sum over the map, which only the map a global average
    pooling reads (where g is the same at every pixel) cannot tell apart. Where
    the denominator is zero, alpha is zero (the paper's reference code does the same).
    """
    activation, g = _layer_output_and_grad(model, x, target, layer)
    g2 = g.pow(2)
    g3 = g.pow(3)
    denominator = 2 * g2 + g3 * activation.sum(dim=(2, 3), keepdim=True)
    nonzero = denominator != 0
    alpha = torch.where(nonzero, g2 / torch.where(nonzero, denominator, 1.0), 0.0)
    weights = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)
    return F.relu((weights * activation).sum(dim=1, keepdim=True))
