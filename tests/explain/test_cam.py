"""CAM and Grad-CAM++, checked against their definitions."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from cnnlab.errors import ExplainError
from cnnlab.explain import default_layer, explain, normalize_maps
from cnnlab.models import create_model

from .conftest import preprocess


def _gap_models(trained_patch_net, patch_test):
    """(name, model, input batch) for GAP networks of different families."""
    torch.manual_seed(0)
    colour = torch.randn(4, 3, 32, 32)
    return [
        ("patchnet", trained_patch_net, preprocess(patch_test.images[:8])),
        (
            "resnet18",
            create_model(
                "resnet18", num_classes=5, in_channels=3, input_size=32, stem="small"
            ).eval(),
            colour,
        ),
        (
            "densenet-small",
            create_model(
                "densenet-small", num_classes=5, in_channels=3, input_size=32, stem="small"
            ).eval(),
            colour,
        ),
    ]


@pytest.fixture
def gap_models(trained_patch_net, patch_test):
    return _gap_models(trained_patch_net, patch_test)


def test_cam_mean_plus_bias_is_the_logit(gap_models):
    """Zhou et al.: the spatial mean of class k's CAM plus its bias is exactly logit k."""
    for name, model, x in gap_models:
        with torch.no_grad():
            logits = model(x)
        for k in (0, 3):
            cam = explain(model, x, "cam", target=k).attributions[:, 0]
            bias = model.get_classifier().bias[k]
            torch.testing.assert_close(
                cam.mean((-2, -1)) + bias, logits[:, k], rtol=1e-4, atol=1e-4, msg=name
            )


def test_cam_and_gradcam_agree_on_gap_networks(gap_models):
    """On the map the classifier pools, Grad-CAM's weights are w_k / (h*w): ReLU(CAM) up to scale."""
    for name, model, x in gap_models:
        layer = default_layer(model)
        seen = []
        handle = dict(model.named_modules())[layer].register_forward_hook(
            lambda m, a, out, seen=seen: seen.append(out)
        )
        with torch.no_grad():
            features = model.forward_features(x)
        handle.remove()
        assert torch.equal(seen[0], features), f"{name}: {layer} is not the pooled feature map"

        cam = explain(model, x, "cam")
        gradcam = explain(model, x, "gradcam", layer=layer)
        assert gradcam.layer == layer
        assert cam.attributions.shape == gradcam.attributions.shape
        expected = normalize_maps(F.relu(cam.attributions[:, 0]))
        got = normalize_maps(gradcam.attributions[:, 0])
        assert (got.flatten(1).amax(1) > 0).any(), f"{name}: all Grad-CAM maps are empty"
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, msg=name)
        assert cam.maps.shape == (len(x), *x.shape[-2:])


def test_cam_refuses_networks_without_global_pooling():
    model = create_model("lenet5-modern", num_classes=4, in_channels=1, input_size=16)
    with pytest.raises(ExplainError, match="global average pooling.*gradcam"):
        explain(model, torch.randn(2, 1, 16, 16), "cam")


def test_cam_has_no_layer_option(trained_patch_net, patch_test):
    with pytest.raises(ExplainError, match="does not read a layer"):
        explain(trained_patch_net, preprocess(patch_test.images[:2]), "cam", layer="features.conv2")


def _grad_cam_pp_reference(model, x, target, layer):
    """The paper's formulas (eq. 19) with Y = exp(S) spelled out, in float64, plain autograd."""
    model = model.double().eval()
    for m in model.modules():  # an in-place ReLU after the layer would overwrite A
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False
    module = dict(model.named_modules())[layer]
    seen = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        seen["A"] = output

    handle = module.register_forward_hook(keep)
    try:
        scores = model(x.double()).gather(1, target.view(-1, 1))[:, 0]
        scores.sum().backward()
    finally:
        handle.remove()
    a, g = seen["A"].detach(), seen["A"].grad
    e = scores.detach().exp().view(-1, 1, 1, 1)
    # Piecewise-linear after the layer: the higher derivatives of Y = exp(S) are exact, and
    # the third one is taken at the pixel (i, j) being weighted, outside the sum over (a, b).
    d1, d2, d3 = e * g, e * g**2, e * g**3
    denominator = 2 * d2 + d3 * a.sum((2, 3), keepdim=True)
    alpha = torch.where(denominator != 0, d2 / denominator, 0.0)
    weights = (alpha * F.relu(d1)).sum((2, 3), keepdim=True)
    return F.relu((weights * a).sum(1))


@pytest.mark.parametrize("layer", ["features.act3", "features.conv2", "features.conv1"])
def test_grad_cam_plus_plus_matches_the_paper(trained_patch_net, patch_test, layer):
    # features.act3 is the map the pooling reads (g constant over each map); at the
    # earlier layers g varies from pixel to pixel, where a misplaced sum shows.
    x = preprocess(patch_test.images[:8])
    target = patch_test.labels[:8]
    ours = explain(trained_patch_net, x, "gradcam++", target=target, layer=layer)
    reference = _grad_cam_pp_reference(copy.deepcopy(trained_patch_net), x, target, layer)
    torch.testing.assert_close(
        normalize_maps(ours.attributions[:, 0]).double(),
        normalize_maps(reference),
        rtol=1e-4,
        atol=1e-4,
    )


def test_grad_cam_plus_plus_is_not_grad_cam_under_another_name(trained_patch_net, patch_test):
    x = preprocess(patch_test.images[:8])
    target = patch_test.labels[:8]
    ours = explain(trained_patch_net, x, "gradcam++", target=target, layer="features.act3")
    gradcam = explain(trained_patch_net, x, "gradcam", target=target, layer="features.act3")
    assert not torch.allclose(
        normalize_maps(gradcam.attributions), normalize_maps(ours.attributions), atol=1e-2
    )


def test_grad_cam_plus_plus_needs_a_feature_map(trained_patch_net, patch_test):
    with pytest.raises(ExplainError, match="head.fc.*feature map"):
        explain(trained_patch_net, preprocess(patch_test.images[:2]), "gradcam++", layer="head.fc")
