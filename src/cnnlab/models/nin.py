"""Network in Network (Lin et al. 2013), as in d2l.

Each block is a conv followed by 1x1 convs (the "micro network" shared across
positions); the last block outputs one map per class and global average pooling
turns the maps into logits, with no fully connected layer at all.
``pointwise_convs`` sets the number of 1x1 convs per block (the one-vs-two ablation).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnlab.errors import ModelError
from cnnlab.layers import Flatten, LayerConfig, make_dropout, scale_width
from cnnlab.models import MODELS
from cnnlab.models.base import Network, ZeroOrMore

# (out channels, kernel, stride, padding) of the first conv of each block; the last
# block's channel count is the number of classes.
BLOCKS = ((96, 11, 4, 0), (256, 5, 1, 2), (384, 3, 1, 1), (None, 3, 1, 1))


class NiNBlock(nn.Sequential):
    """``conv`` (k x k) then ``pw1`` ... ``pwN`` (1x1), each with its norm and activation."""

    def __init__(
        self,
        cfg: LayerConfig,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        padding: int,
        pointwise: int,
    ) -> None:
        layers = OrderedDict(conv=cfg.conv(in_channels, out_channels, kernel, stride, padding))
        for i in range(1, pointwise + 1):
            layers[f"pw{i}"] = cfg.conv(out_channels, out_channels, 1, 1, 0)
        super().__init__(layers)


class NiN(Network):
    """``features``: ``block1``, ``pool1``, ..., ``pool3``, ``drop``, ``block4`` (class maps);
    ``head``: global average pooling + flatten.
    """

    gap_head = True
    cam_layer = "features.block4"

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int],
        pointwise_convs: ZeroOrMore = 2,  # 1x1 convs per block
        width: float = 1.0,  # multiplies the channels of blocks 1-3
        dropout: float = 0.5,  # before the last block, which acts as the classifier
        activation: str = "relu",
        norm: str = "none",
        pool: str = "max",
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
        if (
            isinstance(pointwise_convs, bool)
            or not isinstance(pointwise_convs, int)
            or pointwise_convs < 0
        ):
            raise ModelError(
                f"pointwise_convs={pointwise_convs!r} is not allowed; use a count such as 1 or 2"
            )
        cfg = LayerConfig(activation, norm, pool)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for i, (out, kernel, stride, padding) in enumerate(BLOCKS, start=1):
            last = i == len(BLOCKS)
            out = num_classes if last else scale_width(out, width)
            if last:
                layers["drop"] = make_dropout(dropout)
            layers[f"block{i}"] = NiNBlock(
                cfg, channels, out, kernel, stride, padding, pointwise_convs
            )
            if not last:
                layers[f"pool{i}"] = cfg.pool_layer(3, 2)
            channels = out
        self.features = nn.Sequential(layers)
        self.head = nn.Sequential(
            OrderedDict(global_pool=nn.AdaptiveAvgPool2d(1), flatten=Flatten(1))
        )

    def class_activation_maps(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The class maps themselves: NiN's logits are their spatial means, exactly.

        NiN has no linear classifier (``get_classifier`` raises), but its head is
        global average pooling of per-class maps, so CAM is defined and trivial.
        """
        return feature_map


MODELS.add(
    "nin",
    NiN,
    description="Network in Network: conv + 1x1 conv blocks, class maps + global average pool",
    input_size=(224, 224),
)
