"""The switches the ablation studies turn do what their names say."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.layers import LinearNormAct
from cnnlab.models import create_model
from cnnlab.models.resnet import ZeroPadShortcut
from cnnlab.models.summary import summary


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def _shape(info, name):
    return info.layer(name).output_shape


# -- LeNet


@pytest.mark.parametrize(("kernel", "conv1_out"), [(3, 28), (4, 29), (5, 28)])
def test_lenet_conv1_kernel(kernel, conv1_out):
    model = create_model("lenet5", kernel_size=kernel)
    assert model.features.conv1.conv.kernel_size == (kernel, kernel)
    info = summary(model, (1, 28, 28))
    assert _shape(info, "features.conv1") == (6, conv1_out, conv1_out)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_lenet_pool_size_one_keeps_the_resolution():
    info = summary("lenet5", (1, 28, 28), pool_size=1)
    assert _shape(info, "features.pool1") == (6, 28, 28)
    assert _shape(info, "features.pool2") == (16, 24, 24)
    assert info.layer("head.fc1.linear").params == 16 * 24 * 24 * 120 + 120


def test_lenet_activation_pooling_and_conv_only_activation():
    relu_convs = create_model("lenet5", conv_activation="relu")
    assert isinstance(relu_convs.features.conv1.act, nn.ReLU)
    assert isinstance(relu_convs.head.fc1.act, nn.Sigmoid)
    assert isinstance(relu_convs.features.pool1, nn.AvgPool2d)
    modern = create_model("lenet5-modern")
    assert isinstance(modern.head.fc1.act, nn.ReLU) and isinstance(
        modern.features.pool1, nn.MaxPool2d
    )
    gelu = create_model("lenet5", activation="leaky_relu", pool="max")
    assert isinstance(gelu.features.conv2.act, nn.LeakyReLU)


def test_lenet_norm_position_channels_hidden_and_dropout():
    before = create_model("lenet5", norm="batch")
    after = create_model("lenet5", norm="batch", norm_after_act=True)
    assert list(dict(before.features.conv1.named_children())) == ["conv", "norm", "act"]
    assert list(dict(after.features.conv1.named_children())) == ["conv", "act", "norm"]
    assert isinstance(before.head.fc1.norm, nn.BatchNorm1d)
    assert before.features.conv1.conv.bias is None and after.features.conv1.conv.bias is not None
    wide = create_model("lenet5", channels=[12, 32], hidden=[64], dropout=0.3)
    info = summary(wide, (1, 28, 28))
    assert _shape(info, "features.pool2") == (32, 5, 5)
    assert [
        n for n, m in wide.head.named_children() if isinstance(m, (nn.Linear, LinearNormAct))
    ] == [
        "fc1",
        "fc2",
    ]
    assert wide.head.fc1.drop.p == 0.3


def test_lenet_cifar_is_the_small_cifar_network():
    info = summary("lenet-cifar", (3, 32, 32))
    assert _shape(info, "features.conv1") == (6, 28, 28)
    assert _shape(info, "features.pool2") == (16, 5, 5)
    assert [_shape(info, f"head.fc{i}") for i in (1, 2, 3)] == [(120,), (84,), (10,)]


# -- ResNet


def _resnet(**options):
    return create_model("resnet18", input_size=32, **options)


def test_resnet_stems():
    big, small = summary("resnet18", (1, 64, 64)), summary("resnet18", (1, 64, 64), stem="small")
    assert _shape(big, "features.stem") == (64, 16, 16)
    assert _shape(small, "features.stem") == (64, 64, 64)
    assert _shape(small, "features.stage4") == (512, 8, 8)


def test_resnet_residual_off_removes_shortcuts_and_changes_the_function():
    torch.manual_seed(0)
    plain = _resnet(residual=False, shortcut="zero-pad")
    torch.manual_seed(0)
    residual = _resnet(shortcut="zero-pad")
    assert plain.state_dict().keys() == residual.state_dict().keys()  # same weights ...
    residual.load_state_dict(plain.state_dict())
    plain.eval(), residual.eval()
    x = torch.randn(2, 1, 32, 32)
    assert not torch.allclose(plain(x), residual(x))  # ... different network
    assert all(block.shortcut is None for block in plain.features.stage2)


def test_resnet_shortcut_kinds():
    projection, zero = _resnet(), _resnet(shortcut="zero-pad")
    assert isinstance(zero.features.stage2[0].shortcut, ZeroPadShortcut)
    assert zero.features.stage1[0].shortcut is None
    extra = sum(
        sum(
            p.numel()
            for p in projection.features.get_submodule(f"stage{i}")[0].shortcut.parameters()
        )
        for i in (2, 3, 4)
    )
    assert projection.num_parameters() - zero.num_parameters() == extra > 0


def test_resnet_preact_puts_norm_and_activation_first():
    model = _resnet(preact=True)
    block = model.features.stage1[0]
    assert list(dict(block.body.conv1.named_children())) == ["norm", "act", "conv"]
    assert block.act is None
    assert isinstance(model.features.final.norm, nn.BatchNorm2d)
    post = _resnet().features.stage1[0]
    assert list(dict(post.body.conv1.named_children())) == ["conv", "norm", "act"]
    assert list(dict(post.body.conv2.named_children())) == ["conv", "norm"]


def test_resnet_width_depth_dropout_and_norm():
    half = summary("resnet18", (1, 32, 32), width=0.5)
    assert _shape(half, "features.stage4") == (256, 1, 1)
    net14 = _resnet(blocks=[2, 2, 1, 1])
    weighted = [m for m in net14.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    shortcuts = [m for m in net14.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(weighted) - len(shortcuts) == 14
    deep = _resnet(blocks=[3, 4, 6, 3])
    assert deep.num_parameters() == create_model("resnet34", input_size=32).num_parameters()
    dropped = _resnet(dropout=0.2, norm="none")
    assert dropped.head.drop.p == 0.2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in dropped.modules())
    assert all(c.bias is not None for c in _convs(dropped.features.stage1))
    for norm, kind in [("instance", nn.InstanceNorm2d), ("group", nn.GroupNorm)]:
        model = create_model("resnet18", input_size=64, norm=norm)
        assert any(isinstance(m, kind) for m in model.modules())


def test_resnet_bottleneck_expands_by_four():
    info = summary("resnet50", (1, 32, 32), width=0.25)
    assert _shape(info, "features.stage1") == (64, 8, 8)
    assert _shape(info, "features.stage4") == (512, 1, 1)


# -- VGG, NiN, GoogLeNet, DenseNet, AlexNet


def test_vgg_width_scales_convs_not_the_classifier():
    info = summary("vgg11", (1, 224, 224), width=0.25)
    assert _shape(info, "features.block1") == (16, 112, 112)
    assert _shape(info, "features.block5") == (128, 7, 7)
    assert info.layer("head.fc1.linear").params == 128 * 7 * 7 * 4096 + 4096
    bn = create_model("vgg11", norm="batch", input_size=32)
    assert isinstance(bn.features.block1.conv1.norm, nn.BatchNorm2d)
    small = summary("vgg16-small", (3, 32, 32))
    assert _shape(small, "features.block5") == (512, 1, 1)
    assert _shape(small, "head.fc1") == (512,)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_nin_pointwise_convs_per_block(count):
    model = create_model("nin", input_size=96, pointwise_convs=count)
    pointwise = [c for c in _convs(model) if c.kernel_size == (1, 1)]
    assert len(pointwise) == 4 * count
    assert model.features.block4.conv.conv.out_channels == 10


def test_googlenet_branch_kernel_and_norm():
    paper, tv_like = (
        create_model("googlenet", input_size=32),
        create_model("googlenet-tv", input_size=32),
    )
    assert paper.features.inception3a.branch3.conv.conv.kernel_size == (5, 5)
    assert tv_like.features.inception3a.branch3.conv.conv.kernel_size == (3, 3)
    info = summary("googlenet", (1, 96, 96))
    assert _shape(info, "features.inception3a") == (256, 12, 12)
    assert _shape(info, "features.inception5b") == (1024, 3, 3)


def test_densenet_growth_blocks_and_bottleneck():
    info = summary("densenet-small", (1, 96, 96))
    # 64 + 4*32 = 192 -> 96, +128 = 224 -> 112, +128 = 240 -> 120, +128 = 248
    assert _shape(info, "features.block1") == (192, 24, 24)
    assert _shape(info, "features.transition1") == (96, 12, 12)
    assert _shape(info, "features.final") == (248, 3, 3)
    custom = summary("densenet-small", (1, 32, 32), growth_rate=12, blocks=[2, 2], stem="small")
    assert _shape(custom, "features.block1") == (64 + 24, 32, 32)
    assert _shape(custom, "features.final") == (44 + 24, 16, 16)
    bc = create_model("densenet121", input_size=32)
    assert bc.features.block1.layer1.conv1.conv.out_channels == 4 * 32


def test_alexnet_textbook_shapes():
    info = summary("alexnet", (1, 224, 224))
    assert _shape(info, "features.conv1") == (96, 54, 54)
    assert _shape(info, "features.pool3") == (256, 5, 5)
    assert info.layer("head.fc1.linear").params == 6400 * 4096 + 4096
    small = summary("alexnet-small", (3, 32, 32))
    assert _shape(small, "features.pool3") == (256, 4, 4)


def test_mlp_hidden_sizes():
    model = create_model("mlp", hidden=[64, 32], dropout=0.1)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [64, 32, 10]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
