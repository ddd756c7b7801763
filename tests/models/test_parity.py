"""Parameter counts and MACs equal torchvision's for the same architectures at 1000 classes."""

from __future__ import annotations

import pytest
import torch
from torchvision import models as tv

from cnnlab.models import create_model
from cnnlab.models.summary import summary

# cnnlab name + options -> torchvision builder (+ its kwargs)
PAIRS = {
    "resnet18": ("resnet18", {}, tv.resnet18, {}),
    "resnet34": ("resnet34", {}, tv.resnet34, {}),
    "resnet50": ("resnet50", {}, tv.resnet50, {}),
    "vgg11": ("vgg11", {}, tv.vgg11, {}),
    "vgg11_bn": ("vgg11", {"norm": "batch"}, tv.vgg11_bn, {}),
    "vgg16": ("vgg16", {}, tv.vgg16, {}),
    "vgg16_bn": ("vgg16", {"norm": "batch"}, tv.vgg16_bn, {}),
    "densenet121": ("densenet121", {}, tv.densenet121, {}),
    "googlenet": ("googlenet-tv", {}, tv.googlenet, {"aux_logits": False, "init_weights": True}),
    "alexnet": ("alexnet-tv", {}, tv.alexnet, {}),
}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("key", sorted(PAIRS))
def test_parameter_count_equals_torchvision(key):
    name, options, builder, tv_options = PAIRS[key]
    with torch.device("meta"):  # counting needs shapes, not values
        ours = create_model(name, num_classes=1000, in_channels=3, input_size=224, **options)
        theirs = builder(weights=None, num_classes=1000, **tv_options)
    assert _count(ours) == _count(theirs)


# torchvision publishes per-image GFLOPS (conv + linear multiply-accumulates, despite
# the name) with each set of weights; the builders are the same as above.
OPS = {
    "resnet18": tv.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": tv.ResNet50_Weights.IMAGENET1K_V2,
    "vgg16": tv.VGG16_Weights.IMAGENET1K_V1,
    "densenet121": tv.DenseNet121_Weights.IMAGENET1K_V1,
    "googlenet": tv.GoogLeNet_Weights.IMAGENET1K_V1,
    "alexnet": tv.AlexNet_Weights.IMAGENET1K_V1,
}


@pytest.mark.parametrize("key", sorted(OPS))
def test_macs_equal_torchvision_published_ops(key):
    name, options, _, _ = PAIRS[key]
    info = summary(name, (3, 224, 224), num_classes=1000, **options)
    assert round(info.macs / 1e9, 3) == pytest.approx(OPS[key].meta["_ops"], abs=1e-3)
    assert info.total_params == OPS[key].meta["num_params"]
    assert info.flops == 2 * info.macs
