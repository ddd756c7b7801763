"""The convolution MAC formula agrees with ``cnnlab.models.summary`` layer by layer.

Two independent counts of the same thing: :func:`cnnlab.scratch.conv_ops` from
the layer's hyperparameters and the output size given by
:func:`cnnlab.scratch.conv_output_size`, and the summary's own count from
running the model.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models import create_model
from cnnlab.models.summary import summary
from cnnlab.scratch import conv_ops, conv_output_size


def _expected_conv(layer: nn.Conv2d, in_hw: tuple[int, int]) -> tuple[tuple[int, int], int]:
    """Output (H, W) and MACs of ``layer`` on an input of size ``in_hw``, from the formulas."""
    out_hw = tuple(
        conv_output_size(n, k, s, p, d)
        for n, k, s, p, d in zip(
            in_hw, layer.kernel_size, layer.stride, layer.padding, layer.dilation, strict=True
        )
    )
    ops = conv_ops(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        out_hw,
        bias=layer.bias is not None,
        groups=layer.groups,
    )
    return out_hw, ops.macs


def _conv_stack() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.Conv2d(8, 16, (3, 5), stride=2, padding=(1, 2)),
        nn.Conv2d(16, 16, 3, groups=4, bias=False),
        nn.Conv2d(16, 4, 1, stride=2),
        nn.Conv2d(4, 6, 3, dilation=2, padding=2, bias=False),
    )


def test_conv_macs_match_summary_layer_by_layer() -> None:
    model = _conv_stack()
    result = summary(model, input_shape=(3, 17, 16))
    convs = {info.name: info for info in result.layers if info.type == "Conv2d"}
    assert len(convs) == len(model)
    hw = (17, 16)
    total = 0
    for name, layer in model.named_children():
        info = convs[name]
        hw, macs = _expected_conv(layer, hw)
        assert tuple(info.output_shape[-2:]) == hw, name
        assert info.macs == macs, name
        total += macs
    # A model made only of convolutions costs exactly the sum of its convolutions.
    assert result.macs == total


def test_conv_macs_match_summary_for_a_registered_model() -> None:
    model = create_model("lenet5", num_classes=10, in_channels=1, input_size=(28, 28))
    result = summary(model, input_shape=(1, 28, 28))
    modules = dict(model.named_modules())
    convs = [info for info in result.layers if isinstance(modules.get(info.name), nn.Conv2d)]
    conv_names = [name for name, m in modules.items() if isinstance(m, nn.Conv2d)]
    assert len(conv_names) == 2
    assert [info.name for info in convs] == conv_names
    # LeNet: 1x28x28 -(conv 5x5, pad 2)-> 6x28x28 -(pool)-> 6x14x14 -(conv 5x5)-> 16x10x10.
    for info, in_hw in zip(convs, [(28, 28), (14, 14)], strict=True):
        hw, macs = _expected_conv(modules[info.name], in_hw)
        assert tuple(info.output_shape[-2:]) == hw
        assert info.macs == macs
