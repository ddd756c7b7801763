"""VGG (Simonyan & Zisserman 2014): blocks of 3x3 convs, each block closed by a 2x2 max pool.

An architecture is just the number of convs per block (torchvision's configs
A, B, D, E); channels double from 64 up to 512. ``width`` scales the conv
channels (d2l trains VGG-11 with ``width=0.25``), ``norm=batch`` gives the
``_bn`` networks, and the ``-small`` variants replace the 4096-wide classifier by
a 512-wide one for 32-pixel images, whose feature map is 512x1x1.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from math import prod

from torch import nn

from cnnlab.layers import Flatten, LayerConfig, check_dropout, scale_width
from cnnlab.models import MODELS
from cnnlab.models.base import Network, output_shape

CHANNELS = (64, 128, 256, 512, 512)
DEPTHS: dict[str, tuple[int, ...]] = {  # convs per block
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}


class VGG(Network):
    """``features.block1..block5`` (``conv1..convN`` + ``pool``), then a 3-layer classifier.

    ``head``: ``flatten``, ``fc1``, ``fc2`` (linear-act-dropout), ``fc3`` (logits),
    the first sized from the real feature map: 512*7*7 at 224 px as in torchvision.
    """

    def __init__(
        self,
        depths: Sequence[int],
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int],
        width: float = 1.0,  # multiplies the conv channels (not the classifier)
        hidden: int = 4096,
        dropout: float = 0.5,
        activation: str = "relu",
        norm: str = "none",
        pool: str = "max",
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
        cfg = LayerConfig(activation, norm, pool)
        check_dropout(dropout)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for b, (n, c) in enumerate(zip(depths, CHANNELS, strict=True), start=1):
            out = scale_width(c, width)
            block: OrderedDict[str, nn.Module] = OrderedDict()
            for i in range(1, n + 1):
                # Biased even before batch norm, as torchvision's vgg*_bn (same parameter count).
                block[f"conv{i}"] = cfg.conv(channels, out, 3, 1, 1, bias=True)
                channels = out
            block["pool"] = cfg.pool_layer(2)
            blocks[f"block{b}"] = nn.Sequential(block)
        self.features = nn.Sequential(blocks)
        self.cam_layer = f"features.block{len(depths)}.conv{depths[-1]}"

        features = prod(output_shape(self.features, (in_channels, *input_size), prefix="features."))
        fc = replace(cfg, norm="none")  # torchvision's vgg*_bn has no norm in the classifier
        self.head = nn.Sequential(
            OrderedDict(
                flatten=Flatten(1),
                fc1=fc.linear(features, hidden, dropout=dropout),
                fc2=fc.linear(hidden, hidden, dropout=dropout),
                fc3=nn.Linear(hidden, num_classes),
            )
        )


_BIG = "conv blocks {}, 4096-4096 classifier, 224 px"
_SMALL = "conv blocks {}, 512-512 classifier, 32 px"
for _name, _depths in DEPTHS.items():
    _text = "-".join(map(str, _depths))
    MODELS.add(
        _name,
        partial(VGG, _depths),
        description=f"{_name.upper()}: " + _BIG.format(_text),
        input_size=(224, 224),
    )
    MODELS.add(
        f"{_name}-small",
        partial(VGG, _depths, hidden=512),
        description=f"{_name.upper()} for small inputs: " + _SMALL.format(_text),
        input_size=(32, 32),
        in_channels=3,
    )
