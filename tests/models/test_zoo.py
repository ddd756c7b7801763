"""Every registered model: shapes at its intended input, a real step at a small one, its surface."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import ExplainError, ModelError
from cnnlab.models import (
    create_model,
    default_in_channels,
    default_input_size,
    list_models,
    model_options,
)
from cnnlab.models.base import Network
from cnnlab.models.summary import summary

ALL = list_models()

# Real forward/backward passes run at the smallest size each architecture is meant to
# take, with its widest parts narrowed where only the wiring is under test. Models
# not listed run at their own input size.
SMALL: dict[str, tuple[tuple[int, int, int], dict]] = {
    "alexnet": ((1, 96, 96), {"hidden": 64}),
    "alexnet-tv": ((1, 64, 64), {"hidden": 64}),
    "alexnet-small": ((3, 32, 32), {"hidden": 64}),
    "nin": ((1, 96, 96), {"width": 0.25}),
    "googlenet": ((1, 32, 32), {}),
    "googlenet-tv": ((1, 32, 32), {}),
    "densenet121": ((1, 32, 32), {"growth_rate": 8}),
    "densenet169": ((1, 32, 32), {"growth_rate": 8}),
    "densenet-small": ((1, 32, 32), {}),
    **{f"resnet{d}": ((1, 32, 32), {"width": 0.25}) for d in (18, 34, 50, 101)},
    **{f"vgg{d}": ((1, 32, 32), {"hidden": 64, "width": 0.25}) for d in (11, 13, 16, 19)},
    **{f"vgg{d}-small": ((3, 32, 32), {"hidden": 64, "width": 0.25}) for d in (11, 13, 16, 19)},
}


def test_zoo_has_every_family_of_the_issue():
    expected = {
        "mlp", "lenet5", "lenet5-bn", "lenet5-modern", "lenet-cifar", "alexnet", "alexnet-small",
        "alexnet-tv", "vgg11", "vgg13", "vgg16", "vgg19", "vgg16-small", "nin", "googlenet",
        "resnet18", "resnet34", "resnet50", "resnet101", "densenet121", "densenet169",
        "densenet-small",
    }  # fmt: skip
    assert expected <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_intended_input_gives_logits_and_a_cam_layer(name):
    shape = (default_in_channels(name), *default_input_size(name))
    with torch.device("meta"):  # big networks cost nothing here
        model = create_model(name, num_classes=7, check=False)
    assert isinstance(model, Network)
    info = summary(model, shape)  # one dry run on the meta device
    assert info.layer("head").output_shape == (7,)
    if name == "mlp":
        return
    # Grad-CAM's default layer gives a C x H x W map, and no convolution runs after it.
    layer = model.default_cam_layer()
    assert len(info.layer(layer).output_shape) == 3
    names = [entry.name for entry in info.layers]
    later = [n for n in names[names.index(layer) + 1 :] if not n.startswith(layer + ".")]
    assert not any(isinstance(model.get_submodule(n), nn.Conv2d) for n in later)


@pytest.mark.parametrize("name", ALL)
def test_real_step_at_small_input(name):
    torch.manual_seed(0)
    shape, options = SMALL.get(name, ((default_in_channels(name), *default_input_size(name)), {}))
    model = create_model(name, num_classes=5, in_channels=shape[0], input_size=shape[1:], **options)
    x = torch.randn(2, *shape)
    model.train()
    logits = model(x)
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        split = model.forward_head(model.forward_features(x))
        assert torch.allclose(split, model(x))


@pytest.mark.parametrize("name", ALL)
def test_common_options_exist(name):
    options = model_options(name)
    assert {"activation", "norm", "dropout"} <= set(options)
    if name != "mlp":
        assert "pool" in options


@pytest.mark.parametrize("name", ALL)
def test_bad_activation_is_refused_naming_value(name):
    with torch.device("meta"), pytest.raises(ModelError, match=r"activation='swish2'.*relu"):
        create_model(name, activation="swish2")


def test_mlp_has_no_cam_layer():
    with pytest.raises(ModelError, match="no convolutional layer"):
        create_model("mlp").default_cam_layer()


GAP_MODELS = {
    "resnet18": ((1, 32, 32), {"width": 0.25, "stem": "small"}),
    "resnet50": ((1, 32, 32), {"width": 0.125, "preact": True}),
    "densenet-small": ((1, 32, 32), {}),
    "googlenet": ((3, 32, 32), {}),
    "nin": ((1, 96, 96), {"width": 0.25}),
}


@pytest.mark.parametrize("name", sorted(GAP_MODELS))
def test_cam_maps_average_to_the_logits(name):
    torch.manual_seed(0)
    shape, options = GAP_MODELS[name]
    model = create_model(name, num_classes=4, in_channels=shape[0], input_size=shape[1:], **options)
    assert model.gap_head
    model.eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        fmap = model.forward_features(x)
        cams = model.class_activation_maps(fmap)
        logits = model(x)
    assert cams.shape == (2, 4, *fmap.shape[2:])
    bias = model.get_classifier().bias if name != "nin" else torch.zeros(4)
    assert torch.allclose(cams.mean((-2, -1)) + bias, logits, atol=1e-5)


@pytest.mark.parametrize("name", ["lenet5", "alexnet-small", "vgg11-small", "mlp"])
def test_cam_is_refused_without_global_pooling(name):
    model = create_model(name)
    assert not model.gap_head
    with pytest.raises(ExplainError, match="gradcam"):
        model.class_activation_maps(torch.zeros(1, 3, 4, 4))
