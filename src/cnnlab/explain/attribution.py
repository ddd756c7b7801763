"""Gradient attribution methods through captum, with the settings we want fixed in one place.

Each function takes the prepared (copied, eval-mode, out-of-place) model, a
normalized input batch, one target class per image and the options, and
returns captum's attribution: N x C x H x W for input methods, N x 1 x h x w
for Grad-CAM. captum is imported inside the functions so importing cnnlab stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MethodOptions:
    """Knobs of the sampling methods; the defaults follow the papers.

    Attributes:
        smoothgrad_samples: noisy copies per image (Smilkov et al. use 50; 25 looks the same).
        smoothgrad_noise: noise standard deviation as a fraction of each image's value range
            (the paper recommends 10-20%).
        ig_steps: Riemann steps of Integrated Gradients.
        internal_batch_size: how many noisy or interpolated inputs go through the network at
            once, so memory stays bounded whatever ``ig_steps`` or the batch size.
        baseline: Integrated Gradients' reference input (same shape as the input, or a
            number); None means all zeros in the normalized space, the mean image.
        seed: seed of SmoothGrad's noise, so two calls give the same maps.
    """

    smoothgrad_samples: int = 25
    smoothgrad_noise: float = 0.15
    ig_steps: int = 32
    internal_batch_size: int = 64
    baseline: torch.Tensor | float | None = None
    seed: int = 0


def saliency(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer, opts: MethodOptions
) -> torch.Tensor:
    """|d score / d input| (Simonyan et al. 2014)."""
    from captum.attr import Saliency

    return Saliency(model).attribute(x, target=target, abs=True)


def smoothgrad(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer, opts: MethodOptions
) -> torch.Tensor:
    """Saliency averaged over noisy copies of each input (Smilkov et al. 2017).

    Each image's noise is scaled by its own value range, and the draws come from
    a CPU generator seeded with ``opts.seed``, the same for every image: a map
    depends on its image alone, not on the images beside it, the batch size or
    the device. (captum's NoiseTunnel takes one noise level for the whole batch
    and draws from the global generator per batch.)
    """
    from captum.attr import Saliency

    n, shape = len(x), x.shape[1:]
    flat = x.detach().flatten(1)
    spread = flat.amax(1) - flat.amin(1)
    scale = torch.where(spread > 0, spread, torch.ones_like(spread)) * opts.smoothgrad_noise
    draws = torch.Generator().manual_seed(opts.seed)
    noise = torch.randn((opts.smoothgrad_samples, *shape), generator=draws)
    noise = noise.to(device=x.device, dtype=x.dtype)
    saliency = Saliency(model)
    per_call = max(1, opts.internal_batch_size // max(1, n))
    total = torch.zeros_like(x)
    for start in range(0, len(noise), per_call):
        chunk = noise[start : start + per_call]  # s x C x H x W, shared by the n images
        noisy = x.detach()[None] + chunk[:, None] * scale.view(1, n, 1, 1, 1)
        grads = saliency.attribute(
            noisy.reshape(-1, *shape), target=target.repeat(len(chunk)), abs=True
        )
        total += grads.view(len(chunk), n, *shape).sum(0)
    return total / len(noise)


def _baseline(x: torch.Tensor, baseline: torch.Tensor | float | None) -> torch.Tensor | float:
    if baseline is None:
        return 0.0
    if isinstance(baseline, torch.Tensor):
        base = baseline.to(x.device, x.dtype)
        return base.expand_as(x) if base.dim() < x.dim() or base.shape[0] == 1 else base
    return float(baseline)


def integrated_gradients(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer, opts: MethodOptions
) -> torch.Tensor:
    """Path integral of gradients from a baseline to the input (Sundararajan et al. 2017)."""
    from captum.attr import IntegratedGradients

    return IntegratedGradients(model).attribute(
        x,
        baselines=_baseline(x, opts.baseline),
        target=target,
        n_steps=opts.ig_steps,
        # captum needs room for at least two steps of every image per pass.
        internal_batch_size=max(2 * len(x), opts.internal_batch_size),
    )


def guided_backprop(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer, opts: MethodOptions
) -> torch.Tensor:
    """Gradients with negative values stopped at every ReLU (Springenberg et al. 2015)."""
    from captum.attr import GuidedBackprop

    return GuidedBackprop(model).attribute(x, target=target)


def grad_cam(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: nn.Module, opts: MethodOptions
) -> torch.Tensor:
    """ReLU of the gradient-weighted layer activations (Selvaraju et al. 2017), at layer resolution."""
    from captum.attr import LayerGradCam

    return LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)


def guided_grad_cam(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: nn.Module, opts: MethodOptions
) -> torch.Tensor:
    """Guided backprop times the upsampled Grad-CAM map: class-specific and pixel-sharp."""
    from captum.attr import GuidedGradCam

    return GuidedGradCam(model, layer).attribute(x, target=target, interpolate_mode="bilinear")
