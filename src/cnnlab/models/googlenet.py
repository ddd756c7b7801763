"""GoogLeNet / Inception v1 (Szegedy et al. 2014), without the auxiliary heads.

The nine Inception blocks are one table row each. ``googlenet`` is the paper's
network as d2l trains it (no normalization, 5x5 branch); ``googlenet-tv`` is
torchvision's (batch norm, and a 3x3 conv in the "5x5" branch, a quirk torchvision
keeps for its weights), which the parameter test compares against; its pooling
windows (padding 1 instead of ceil mode) and batch-norm eps (torch's 1e-5 instead of
1e-3) stay d2l's, so torchvision's weights would not give torchvision's logits. The auxiliary
classifiers are left out: they change what ``forward`` returns in training, and
d2l's version omits them too.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torch
from torch import nn

from cnnlab.layers import ClassifierHead, LayerConfig
from cnnlab.models import MODELS
from cnnlab.models.base import Network

# name, 1x1, (3x3 reduce, 3x3), (5x5 reduce, 5x5), pool projection; a str is a 3x3/2 pool.
BLOCKS: tuple[tuple[str, int, tuple[int, int], tuple[int, int], int] | str, ...] = (
    ("inception3a", 64, (96, 128), (16, 32), 32),
    ("inception3b", 128, (128, 192), (32, 96), 64),
    "pool3",
    ("inception4a", 192, (96, 208), (16, 48), 64),
    ("inception4b", 160, (112, 224), (24, 64), 64),
    ("inception4c", 128, (128, 256), (24, 64), 64),
    ("inception4d", 112, (144, 288), (32, 64), 64),
    ("inception4e", 256, (160, 320), (32, 128), 128),
    "pool4",
    ("inception5a", 256, (160, 320), (32, 128), 128),
    ("inception5b", 384, (192, 384), (48, 128), 128),
)


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: 1x1 | 1x1-3x3 | 1x1-5x5 | pool-1x1."""

    def __init__(
        self,
        cfg: LayerConfig,
        in_channels: int,
        c1: int,
        c3: tuple[int, int],
        c5: tuple[int, int],
        proj: int,
        *,
        branch_kernel: int,
    ) -> None:
        super().__init__()
        self.out_channels = c1 + c3[1] + c5[1] + proj
        self.branch1 = cfg.conv(in_channels, c1, 1)
        self.branch2 = nn.Sequential(
            OrderedDict(reduce=cfg.conv(in_channels, c3[0], 1), conv=cfg.conv(c3[0], c3[1], 3))
        )
        self.branch3 = nn.Sequential(
            OrderedDict(
                reduce=cfg.conv(in_channels, c5[0], 1),
                conv=cfg.conv(c5[0], c5[1], branch_kernel),
            )
        )
        self.branch4 = nn.Sequential(
            OrderedDict(pool=cfg.pool_layer(3, 1, 1), proj=cfg.conv(in_channels, proj, 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([b(x) for b in branches], dim=1)


class GoogLeNet(Network):
    """``features``: stem (``conv1``, ``pool1``, ``conv2``, ``conv3``, ``pool2``) and the
    Inception blocks; ``head``: global average pooling, dropout, ``fc``.
    """

    gap_head = True
    cam_layer = "features.inception5b"

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int],
        branch_kernel: int = 5,  # kernel of the "5x5" branch (torchvision uses 3)
        dropout: float = 0.0,  # before the classifier (paper 0.4, torchvision 0.2, d2l none)
        activation: str = "relu",
        norm: str = "none",
        pool: str = "max",
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
        cfg = LayerConfig(activation, norm, pool)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv1=cfg.conv(in_channels, 64, 7, 2, 3),
            pool1=cfg.pool_layer(3, 2, 1),
            conv2=cfg.conv(64, 64, 1),
            conv3=cfg.conv(64, 192, 3),
            pool2=cfg.pool_layer(3, 2, 1),
        )
        channels = 192
        for row in BLOCKS:
            if isinstance(row, str):
                layers[row] = cfg.pool_layer(3, 2, 1)
                continue
            name, *widths = row
            block = Inception(cfg, channels, *widths, branch_kernel=branch_kernel)
            layers[name] = block
            channels = block.out_channels
        self.features = nn.Sequential(layers)
        self.head = ClassifierHead(channels, num_classes, dropout=dropout)


MODELS.add(
    "googlenet",
    GoogLeNet,
    description="GoogLeNet (Inception v1) as in the paper / d2l, no aux heads, 224 px",
    input_size=(224, 224),
)
MODELS.add(
    "googlenet-tv",
    partial(GoogLeNet, norm="batch", branch_kernel=3, dropout=0.2),
    description="GoogLeNet as torchvision builds it: batch norm, 3x3 in the 5x5 branch",
    input_size=(224, 224),
)
