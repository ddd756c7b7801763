"""Parameter counts, weight layouts, outputs and MACs equal the reference networks.

torchvision's builders are the reference for the ImageNet networks (at 1000 and at 10
classes); d2l's code, rewritten below in plain torch, for the textbook ones. Where
the weight layouts agree, copying the reference's weights into ours in order must
give the same logits: the wiring is the same, not just the counts.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models as tv

from cnnlab.models import create_model
from cnnlab.models.summary import summary

# cnnlab name + options -> torchvision builder (+ its kwargs)
PAIRS = {
    "resnet18": ("resnet18", {}, tv.resnet18, {}),
    "resnet34": ("resnet34", {}, tv.resnet34, {}),
    "resnet50": ("resnet50", {}, tv.resnet50, {}),
    "resnet101": ("resnet101", {}, tv.resnet101, {}),
    "vgg11": ("vgg11", {}, tv.vgg11, {}),
    "vgg11_bn": ("vgg11", {"norm": "batch"}, tv.vgg11_bn, {}),
    "vgg13": ("vgg13", {}, tv.vgg13, {}),
    "vgg16": ("vgg16", {}, tv.vgg16, {}),
    "vgg16_bn": ("vgg16", {"norm": "batch"}, tv.vgg16_bn, {}),
    "vgg19": ("vgg19", {}, tv.vgg19, {}),
    "vgg19_bn": ("vgg19", {"norm": "batch"}, tv.vgg19_bn, {}),
    "densenet121": ("densenet121", {}, tv.densenet121, {}),
    "densenet169": ("densenet169", {}, tv.densenet169, {}),
    "googlenet": ("googlenet-tv", {}, tv.googlenet, {"aux_logits": False, "init_weights": True}),
    "alexnet": ("alexnet-tv", {}, tv.alexnet, {}),
}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layout(model: nn.Module) -> list[tuple[int, ...]]:
    """Shapes of the weights and buffers in registration order."""
    return [tuple(t.shape) for t in model.state_dict().values()]


@pytest.mark.parametrize("classes", [1000, 10])
@pytest.mark.parametrize("key", sorted(PAIRS))
def test_parameter_count_and_layout_equal_torchvision(key, classes):
    name, options, builder, tv_options = PAIRS[key]
    with torch.device("meta"):  # counting needs shapes, not values
        ours = create_model(name, num_classes=classes, in_channels=3, input_size=224, **options)
        theirs = builder(weights=None, num_classes=classes, **tv_options)
    assert _count(ours) == _count(theirs)
    assert _layout(ours) == _layout(theirs)


def _copy_weights(ours: nn.Module, reference: nn.Module) -> None:
    """Load ``reference``'s weights and buffers into ``ours`` by position."""
    ours.load_state_dict(dict(zip(ours.state_dict(), reference.state_dict().values(), strict=True)))


def _randomize_norms(model: nn.Module) -> None:
    """Batch norm that is not an identity in eval mode, so the comparison sees it."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)


# Not googlenet-tv: its pooling windows (padding 1, as in d2l, where torchvision uses
# ceil mode) and batch-norm eps (1e-5, torchvision 1e-3) differ; docs/models.md says so.
@pytest.mark.parametrize(
    ("key", "size"), [("resnet18", 64), ("resnet50", 64), ("densenet121", 64), ("alexnet", 64)]
)
def test_torchvision_weights_give_the_same_logits(key, size):
    name, options, builder, tv_options = PAIRS[key]
    torch.manual_seed(0)
    theirs = builder(weights=None, num_classes=10, **tv_options).eval()
    _randomize_norms(theirs)
    ours = create_model(name, num_classes=10, in_channels=3, input_size=size, **options).eval()
    _copy_weights(ours, theirs)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)


# torchvision publishes per-image GFLOPS (conv + linear multiply-accumulates, despite
# the name) with each set of weights; the builders are the same as above.
OPS = {
    "resnet18": tv.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": tv.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": tv.ResNet50_Weights.IMAGENET1K_V2,
    "resnet101": tv.ResNet101_Weights.IMAGENET1K_V2,
    "vgg11": tv.VGG11_Weights.IMAGENET1K_V1,
    "vgg11_bn": tv.VGG11_BN_Weights.IMAGENET1K_V1,
    "vgg13": tv.VGG13_Weights.IMAGENET1K_V1,
    "vgg16": tv.VGG16_Weights.IMAGENET1K_V1,
    "vgg19": tv.VGG19_Weights.IMAGENET1K_V1,
    "densenet121": tv.DenseNet121_Weights.IMAGENET1K_V1,
    "densenet169": tv.DenseNet169_Weights.IMAGENET1K_V1,
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


# -- d2l's textbook networks, written out as in the book (1-channel input, 10 classes)


def _d2l_lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2, 2),
        nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.AvgPool2d(2, 2), nn.Flatten(),
        nn.Linear(400, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10),
    )  # fmt: skip


def _d2l_alexnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 96, 11, 4, 1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Linear(6400, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 10),
    )  # fmt: skip


def _nin_block(cin: int, cout: int, kernel: int, stride: int, padding: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding), nn.ReLU(),
        nn.Conv2d(cout, cout, 1), nn.ReLU(), nn.Conv2d(cout, cout, 1), nn.ReLU(),
    )  # fmt: skip


def _d2l_nin() -> nn.Module:
    return nn.Sequential(
        _nin_block(1, 96, 11, 4, 0), nn.MaxPool2d(3, 2),
        _nin_block(96, 256, 5, 1, 2), nn.MaxPool2d(3, 2),
        _nin_block(256, 384, 3, 1, 1), nn.MaxPool2d(3, 2), nn.Dropout(0.5),
        _nin_block(384, 10, 3, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


class _D2LInception(nn.Module):
    def __init__(self, cin: int, c1: int, c2: tuple, c3: tuple, c4: int) -> None:
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(cin, c1, 1), nn.ReLU())
        self.b2 = nn.Sequential(
            nn.Conv2d(cin, c2[0], 1), nn.ReLU(), nn.Conv2d(c2[0], c2[1], 3, padding=1), nn.ReLU()
        )
        self.b3 = nn.Sequential(
            nn.Conv2d(cin, c3[0], 1), nn.ReLU(), nn.Conv2d(c3[0], c3[1], 5, padding=2), nn.ReLU()
        )
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(cin, c4, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


def _d2l_googlenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 64, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(64, 64, 1), nn.ReLU(), nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        _D2LInception(192, 64, (96, 128), (16, 32), 32),
        _D2LInception(256, 128, (128, 192), (32, 96), 64), nn.MaxPool2d(3, 2, 1),
        _D2LInception(480, 192, (96, 208), (16, 48), 64),
        _D2LInception(512, 160, (112, 224), (24, 64), 64),
        _D2LInception(512, 128, (128, 256), (24, 64), 64),
        _D2LInception(512, 112, (144, 288), (32, 64), 64),
        _D2LInception(528, 256, (160, 320), (32, 128), 128), nn.MaxPool2d(3, 2, 1),
        _D2LInception(832, 256, (160, 320), (32, 128), 128),
        _D2LInception(832, 384, (192, 384), (48, 128), 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, 10),
    )  # fmt: skip


# name, reference, input size of the logits comparison, d2l's parameter count
TEXTBOOK = {
    "lenet5": (_d2l_lenet, 28, 61_706),
    "alexnet": (_d2l_alexnet, 224, 46_764_746),
    "nin": (_d2l_nin, 224, 1_992_166),
    "googlenet": (_d2l_googlenet, 96, 5_977_530),
}


@pytest.mark.parametrize("name", sorted(TEXTBOOK))
def test_textbook_networks_equal_d2l(name):
    build, size, count = TEXTBOOK[name]
    torch.manual_seed(0)
    reference = build().eval()
    ours = create_model(name, input_size=size).eval()
    assert _count(ours) == _count(reference) == count
    assert _layout(ours) == _layout(reference)
    _copy_weights(ours, reference)
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-6)
