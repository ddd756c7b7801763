"""LeNet-5 (LeCun et al. 1998) as taught in d2l, with every knob its ablations turn.

The classic network is sigmoid + average pooling + 5x5 kernels with padding 2 on
conv1, so a 28x28 Fashion-MNIST image gives 6x28x28, 6x14x14, 16x10x10, 16x5x5,
120, 84, 10 and 61,706 parameters. The first linear layer is sized from the real
input, so changing a kernel, a pooling size or the input size just works.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from math import prod

from torch import nn

from cnnlab.errors import ModelError
from cnnlab.layers import ACTIVATIONS, Flatten, LayerConfig, check_choice, check_dropout
from cnnlab.models import MODELS
from cnnlab.models.base import Network, ZeroOrMore, output_shape


class LeNet(Network):
    """Two conv-pool stages, then a stack of fully connected layers.

    ``features``: ``conv1``, ``pool1``, ``conv2``, ``pool2``; ``head``: ``flatten``,
    ``fc1`` ... ``fcN`` (the last one gives the logits).
    """

    cam_layer = "features.conv2"

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int],
        activation: str = "sigmoid",
        conv_activation: str | None = None,  # overrides `activation` on the conv layers only
        pool: str = "avg",
        pool_size: int = 2,
        pool_stride: int | None = None,  # None: equal to pool_size (non-overlapping)
        kernel_size: int = 5,  # conv1, the kernel-size ablation
        conv2_kernel_size: int = 5,
        padding: ZeroOrMore | None = None,  # conv1; None: kernel_size // 2 (2 for the classic 5x5)
        channels: Sequence[int] = (6, 16),
        hidden: Sequence[int] = (120, 84),
        norm: str = "none",
        norm_after_act: bool = False,
        dropout: float = 0.0,  # after each hidden fully connected layer
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
        if len(channels) != 2:
            raise ModelError(
                f"channels={list(channels)!r} is not allowed; LeNet has two conv layers, "
                "give two counts such as [6, 16]"
            )
        fc = LayerConfig(activation, norm, pool, norm_after_act)
        if conv_activation is not None:  # checked here so the error names this option
            check_choice(conv_activation, ACTIVATIONS, "conv_activation")
        conv = LayerConfig(conv_activation or activation, norm, pool, norm_after_act)
        check_dropout(dropout)
        c1, c2 = (int(c) for c in channels)
        pad = kernel_size // 2 if padding is None else padding
        self.features = nn.Sequential(
            OrderedDict(
                conv1=conv.conv(in_channels, c1, kernel_size, 1, pad),
                pool1=conv.pool_layer(pool_size, pool_stride),
                conv2=conv.conv(c1, c2, conv2_kernel_size, 1, 0),
                pool2=conv.pool_layer(pool_size, pool_stride),
            )
        )
        width = prod(output_shape(self.features, (in_channels, *input_size), prefix="features."))
        head: OrderedDict[str, nn.Module] = OrderedDict(flatten=Flatten(1))
        for i, size in enumerate(hidden, start=1):
            head[f"fc{i}"] = fc.linear(width, int(size), dropout=dropout)
            width = int(size)
        head[f"fc{len(hidden) + 1}"] = nn.Linear(width, num_classes)
        self.head = nn.Sequential(head)


MODELS.add(
    "lenet5",
    LeNet,
    description="LeNet-5 as in the 1998 paper / d2l: sigmoid, avg pooling, 5x5 kernels",
    input_size=(28, 28),
)
MODELS.add(
    "lenet5-bn",
    partial(LeNet, norm="batch"),
    description="LeNet-5 with batch norm after every conv and hidden linear layer",
    input_size=(28, 28),
)
MODELS.add(
    "lenet5-modern",
    partial(LeNet, activation="relu", pool="max"),
    description="LeNet-5 with ReLU and max pooling",
    input_size=(28, 28),
)
MODELS.add(
    "lenet-cifar",
    partial(LeNet, activation="relu", pool="max", padding=0),
    description="small CIFAR LeNet: conv 3-6-16 5x5 unpadded, max pool, ReLU, FC 120-84-10",
    input_size=(32, 32),
    in_channels=3,
)
