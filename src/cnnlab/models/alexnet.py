"""AlexNet (Krizhevsky et al. 2012): the textbook 224-pixel network and its relatives.

Three architectures written as data: ``alexnet`` is d2l's single-GPU version
(96-256-384-384-256 channels, sized for 1-channel 224x224 Fashion-MNIST),
``alexnet-tv`` is torchvision's (64-192-384-256-256, 6x6 adaptive pooling, same
parameter count), and ``alexnet-small`` keeps the five-conv shape for 32-pixel
CIFAR images with 3x3 kernels and 2x2 pooling.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import partial
from math import prod

from torch import nn

from cnnlab.layers import Flatten, LayerConfig, check_dropout, scale_width
from cnnlab.models import MODELS
from cnnlab.models.base import Network, output_shape


@dataclass(frozen=True)
class ConvSpec:
    """One conv layer: output channels, kernel, stride, padding, and a max pool after it."""

    out: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: bool = False


@dataclass(frozen=True)
class AlexNetArch:
    convs: tuple[ConvSpec, ...]
    pool_kernel: int = 3  # overlapping 3x3/2 pooling, as in the paper
    pool_stride: int = 2
    adaptive_pool: int | None = None  # torchvision pools to 6x6 before the classifier


D2L = AlexNetArch(
    (
        ConvSpec(96, 11, 4, 1, pool=True),
        ConvSpec(256, 5, 1, 2, pool=True),
        ConvSpec(384, 3, 1, 1),
        ConvSpec(384, 3, 1, 1),
        ConvSpec(256, 3, 1, 1, pool=True),
    )
)
TORCHVISION = AlexNetArch(
    (
        ConvSpec(64, 11, 4, 2, pool=True),
        ConvSpec(192, 5, 1, 2, pool=True),
        ConvSpec(384, 3, 1, 1),
        ConvSpec(256, 3, 1, 1),
        ConvSpec(256, 3, 1, 1, pool=True),
    ),
    adaptive_pool=6,
)
SMALL = AlexNetArch(
    (
        ConvSpec(64, 3, 1, 1, pool=True),
        ConvSpec(192, 3, 1, 1, pool=True),
        ConvSpec(384, 3, 1, 1),
        ConvSpec(256, 3, 1, 1),
        ConvSpec(256, 3, 1, 1, pool=True),
    ),
    pool_kernel=2,
)


class AlexNet(Network):
    """Five convs (``features.conv1..conv5`` with ``pool1..pool3``), then three linear layers.

    ``head``: optional ``avgpool`` (torchvision variant), ``flatten``, ``fc1``,
    ``fc2`` (linear-act-dropout) and ``fc3`` (logits). The first linear layer is
    sized from the actual feature map, so other input sizes work where the
    convolutions allow them.
    """

    cam_layer = "features.conv5"

    def __init__(
        self,
        arch: AlexNetArch,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int],
        width: float = 1.0,  # multiplies every conv's channels
        hidden: int = 4096,
        dropout: float = 0.5,
        activation: str = "relu",
        norm: str = "none",
        pool: str = "max",
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
        cfg = LayerConfig(activation, norm, pool)
        check_dropout(dropout)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, pools = in_channels, 0
        for i, spec in enumerate(arch.convs, start=1):
            out = scale_width(spec.out, width)
            layers[f"conv{i}"] = cfg.conv(channels, out, spec.kernel, spec.stride, spec.padding)
            if spec.pool:
                pools += 1
                layers[f"pool{pools}"] = cfg.pool_layer(arch.pool_kernel, arch.pool_stride)
            channels = out
        self.features = nn.Sequential(layers)

        head: OrderedDict[str, nn.Module] = OrderedDict()
        if arch.adaptive_pool:
            head["avgpool"] = nn.AdaptiveAvgPool2d(arch.adaptive_pool)
            features = channels * arch.adaptive_pool**2
        else:
            features = prod(
                output_shape(self.features, (in_channels, *input_size), prefix="features.")
            )
        fc = replace(cfg, norm="none")  # like torchvision, no normalization in the classifier
        head["flatten"] = Flatten(1)
        head["fc1"] = fc.linear(features, hidden, dropout=dropout)
        head["fc2"] = fc.linear(hidden, hidden, dropout=dropout)
        head["fc3"] = nn.Linear(hidden, num_classes)
        self.head = nn.Sequential(head)


MODELS.add(
    "alexnet",
    partial(AlexNet, D2L),
    description="AlexNet as in d2l: 96-256-384-384-256 convs, 4096-4096 classifier, 224 px",
    input_size=(224, 224),
)
MODELS.add(
    "alexnet-tv",
    partial(AlexNet, TORCHVISION),
    description="AlexNet as torchvision builds it (64-192-384-256-256, 6x6 adaptive pool)",
    input_size=(224, 224),
)
MODELS.add(
    "alexnet-small",
    partial(AlexNet, SMALL, hidden=1024),
    description="AlexNet shape for 32-px images: 3x3 convs, 2x2 pooling, 1024-1024 classifier",
    input_size=(32, 32),
    in_channels=3,
)
