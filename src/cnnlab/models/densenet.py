"""DenseNet (Huang et al. 2016): every layer sees the feature maps of all layers before it.

``densenet121/169`` follow torchvision (DenseNet-BC: 1x1 bottleneck of
``bn_size * growth_rate`` channels, transitions halving the channels);
``densenet-small`` is d2l's textbook network (four blocks of four 3x3 layers,
growth rate 32, no bottleneck) for 96-pixel inputs. Layers are pre-activation
(norm -> act -> conv) as in the paper.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from cnnlab.errors import ModelError
from cnnlab.layers import ClassifierHead, LayerConfig, get_pool
from cnnlab.models import MODELS
from cnnlab.models.base import Network, ZeroOrMore, check_counts, choose


class DenseLayer(nn.Sequential):
    """(``conv1``: 1x1 bottleneck,) ``conv2``: 3x3 to ``growth`` maps; returns input ++ new maps."""

    def __init__(self, cfg: LayerConfig, in_channels: int, growth: int, bn_size: int) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        if bn_size:
            layers["conv1"] = cfg.preact_conv(in_channels, bn_size * growth, 1)
            channels = bn_size * growth
        layers["conv2"] = cfg.preact_conv(channels, growth, 3)
        super().__init__(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, super().forward(x)], dim=1)


def _imagenet_stem(cfg: LayerConfig, cin: int, cout: int) -> nn.Sequential:
    stem = cfg.conv(cin, cout, 7, 2, 3)
    stem.add_module("pool", get_pool("max", 3, 2, 1))  # `pool` is the transitions' choice
    return stem


def _small_stem(cfg: LayerConfig, cin: int, cout: int) -> nn.Sequential:
    return cfg.conv(cin, cout, 3, 1, 1)


STEMS = {"imagenet": _imagenet_stem, "small": _small_stem}


class DenseNet(Network):
    """``features``: ``stem``, ``block1``, ``transition1``, ..., ``blockN``, ``final``
    (norm + act); ``head``: global average pooling, dropout, ``fc``.
    """

    gap_head = True
    cam_layer = "features.final"

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int],
        growth_rate: int = 32,
        blocks: Sequence[int] = (6, 12, 24, 16),  # layers per dense block
        bn_size: ZeroOrMore = 4,  # bottleneck width in multiples of growth_rate; 0: no bottleneck
        compression: float = 0.5,  # channel factor of each transition
        init_features: int = 64,  # channels out of the stem
        stem: str = "imagenet",  # imagenet (7x7/2 + max pool) | small (3x3/1)
        dropout: float = 0.0,  # before the classifier
        activation: str = "relu",
        norm: str = "batch",
        pool: str = "avg",  # the transitions' pooling
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
        make_stem = choose(STEMS, stem, "stem")
        blocks = check_counts(blocks, "blocks", "[6, 12, 24, 16]")
        if not 0 < compression <= 1:
            raise ModelError(f"compression={compression!r} is not allowed; use a factor in (0, 1]")
        cfg = LayerConfig(activation, norm, pool)

        layers: OrderedDict[str, nn.Module] = OrderedDict(
            stem=make_stem(cfg, in_channels, init_features)
        )
        channels = init_features
        for i, count in enumerate(blocks, start=1):
            block = OrderedDict()
            for j in range(1, count + 1):
                block[f"layer{j}"] = DenseLayer(cfg, channels, growth_rate, bn_size)
                channels += growth_rate
            layers[f"block{i}"] = nn.Sequential(block)
            if i < len(blocks):
                out = int(channels * compression)
                layers[f"transition{i}"] = nn.Sequential(
                    OrderedDict(conv=cfg.preact_conv(channels, out, 1), pool=cfg.pool_layer(2))
                )
                channels = out
        layers["final"] = nn.Sequential(OrderedDict(norm=cfg.norm_layer(channels), act=cfg.act()))
        self.features = nn.Sequential(layers)
        self.head = ClassifierHead(channels, num_classes, dropout=dropout)


MODELS.add(
    "densenet121",
    partial(DenseNet, blocks=(6, 12, 24, 16)),
    description="DenseNet-121 (BC): growth 32, blocks 6-12-24-16, 224 px",
    input_size=(224, 224),
)
MODELS.add(
    "densenet169",
    partial(DenseNet, blocks=(6, 12, 32, 32)),
    description="DenseNet-169 (BC): growth 32, blocks 6-12-32-32, 224 px",
    input_size=(224, 224),
)
MODELS.add(
    "densenet-small",
    partial(DenseNet, blocks=(4, 4, 4, 4), bn_size=0),
    description="d2l's DenseNet: growth 32, four blocks of four 3x3 layers, 96 px",
    input_size=(96, 96),
)
