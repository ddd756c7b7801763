"""Do the maps point at the evidence? Patch localization and the model-randomization check."""

from __future__ import annotations

import copy

import pytest
import torch
from scipy.stats import spearmanr

from cnnlab.explain import explain

from .conftest import CLASSES, preprocess


def _peaks_inside(maps: torch.Tensor, masks: torch.Tensor) -> float:
    """Fraction of maps whose largest value lies on the patch."""
    peak = maps.flatten(1).argmax(1)
    return masks.flatten(1)[torch.arange(len(maps)), peak].float().mean().item()


def test_patch_net_learned_the_task(trained_patch_net, patch_test):
    with torch.no_grad():
        predicted = trained_patch_net(preprocess(patch_test.images)).argmax(1)
    assert (predicted == patch_test.labels).float().mean() >= 0.95


@pytest.mark.parametrize("method", ["cam", "gradcam", "saliency"])
def test_map_peaks_fall_inside_the_patch(trained_patch_net, patch_test, method):
    result = explain(
        trained_patch_net,
        preprocess(patch_test.images),
        method,
        target="true",
        labels=patch_test.labels,
        classes=CLASSES,
        batch_size=50,
    )
    assert result.maps.shape == (100, 16, 16)
    assert _peaks_inside(result.maps, patch_test.masks) >= 0.9


def test_a_wrong_target_does_not_point_at_the_patch(trained_patch_net, patch_test):
    """The localization above is class-specific: CAM for the class one quadrant over looks elsewhere."""
    wrong = (patch_test.labels + 1) % 4
    result = explain(trained_patch_net, preprocess(patch_test.images), "cam", target=wrong)
    assert _peaks_inside(result.maps, patch_test.masks) < 0.5


def _randomized(model: torch.nn.Module) -> torch.nn.Module:
    """The same architecture with every layer re-initialized (Adebayo et al. 2018)."""
    fresh = copy.deepcopy(model)
    torch.manual_seed(123)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return fresh.eval()


@pytest.mark.parametrize("method", ["cam", "gradcam", "saliency"])
def test_randomized_model_gives_different_maps(trained_patch_net, patch_test, method):
    x = preprocess(patch_test.images[:40])
    labels = patch_test.labels[:40]
    trained = explain(trained_patch_net, x, method, target="true", labels=labels).maps
    again = explain(trained_patch_net, x, method, target="true", labels=labels).maps
    random = explain(_randomized(trained_patch_net), x, method, target="true", labels=labels).maps
    rho_random = [spearmanr(a.flatten(), b.flatten()).statistic for a, b in zip(trained, random)]
    rho_again = [spearmanr(a.flatten(), b.flatten()).statistic for a, b in zip(trained, again)]
    # nan (a constant random map) counts as "no correlation"
    mean_random = torch.tensor(rho_random).nan_to_num(0.0).abs().mean().item()
    assert min(rho_again) == pytest.approx(1.0)
    assert mean_random < 0.5, f"maps barely changed after randomization (|rho| {mean_random:.2f})"
