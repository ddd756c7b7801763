"""ResNet (He et al. 2015) and its pre-activation form (He et al. 2016), for ablations.

A depth is a block kind plus blocks per stage, one registration line each;
``blocks=[2, 2, 1, 1]`` builds a 14-layer network. The options are the switches
the studies turn: ``stem`` (``imagenet``: 7x7/2 + max pool; ``small``: 3x3/1 for
32-64 px), ``residual=False`` (the same network without shortcuts), ``shortcut``
(``projection``: 1x1 conv + norm, torchvision's choice; ``zero-pad``: the paper's
parameter-free option A), ``preact``, ``width`` and ``dropout`` before the
classifier. With the defaults the parameter counts equal torchvision's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import ModelError
from cnnlab.layers import ClassifierHead, LayerConfig, scale_width
from cnnlab.models import MODELS
from cnnlab.models.base import Network, check_counts, choose

BASE_WIDTH = 64  # channels of the stem and stage 1; each later stage doubles them


@dataclass(frozen=True)
class BlockKind:
    """The convs of a residual branch: (kernel, channels as a multiple of the stage width,
    whether it carries the stage's stride). The last conv's multiple is the expansion.
    """

    convs: tuple[tuple[int, int, bool], ...]

    @property
    def expansion(self) -> int:
        return self.convs[-1][1]


BLOCK_KINDS = {
    "basic": BlockKind(((3, 1, True), (3, 1, False))),
    # torchvision's v1.5 bottleneck: the stride sits on the 3x3 conv.
    "bottleneck": BlockKind(((1, 1, False), (3, 1, True), (1, 4, False))),
}


class ZeroPadShortcut(nn.Module):
    """Option A of the ResNet paper: subsample by the stride, zero-fill the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = out_channels - in_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


def _projection(cfg: LayerConfig, cin: int, cout: int, stride: int, preact: bool) -> nn.Module:
    if preact:  # He et al. 2016 project with a bare 1x1 conv
        return nn.Conv2d(cin, cout, 1, stride, bias=False)
    return cfg.conv(cin, cout, 1, stride, 0, act=False)


def _zero_pad(cfg: LayerConfig, cin: int, cout: int, stride: int, preact: bool) -> nn.Module:
    if cout < cin:
        raise ModelError(f"shortcut='zero-pad' cannot reduce {cin} channels to {cout}")
    return ZeroPadShortcut(cin, cout, stride)


SHORTCUTS: dict[str, Callable[..., nn.Module]] = {"projection": _projection, "zero-pad": _zero_pad}


class ResidualBlock(nn.Module):
    """``body(x) + shortcut(x)``, then the activation (post-activation blocks only).

    ``body`` holds ``conv1``, ``conv2`` (, ``conv3``); ``shortcut`` is absent when
    the shapes already match (identity) and when ``residual`` is off.
    """

    def __init__(
        self,
        body: nn.Sequential,
        shortcut: nn.Module | None,
        act: nn.Module | None,
        *,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.body, self.shortcut, self.act, self.residual = body, shortcut, act, residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.residual:
            y = y + (x if self.shortcut is None else self.shortcut(x))
        return y if self.act is None else self.act(y)


def _block(
    cfg: LayerConfig,
    kind: BlockKind,
    cin: int,
    planes: int,
    stride: int,
    *,
    preact: bool,
    residual: bool,
    shortcut: str,
) -> ResidualBlock:
    body: OrderedDict[str, nn.Module] = OrderedDict()
    c = cin
    for i, (kernel, mult, strided) in enumerate(kind.convs, start=1):
        s, out, last = (stride if strided else 1), planes * mult, i == len(kind.convs)
        if preact:
            body[f"conv{i}"] = cfg.preact_conv(c, out, kernel, s)
        else:  # the last conv's activation comes after the addition
            body[f"conv{i}"] = cfg.conv(c, out, kernel, s, act=not last)
        c = out
    short = None
    if residual and (stride != 1 or cin != c):
        short = choose(SHORTCUTS, shortcut, "shortcut")(cfg, cin, c, stride, preact)
    act = None if preact else cfg.act()
    return ResidualBlock(nn.Sequential(body), short, act, residual=residual)


def _imagenet_stem(cfg: LayerConfig, cin: int, cout: int) -> nn.Sequential:
    stem = cfg.conv(cin, cout, 7, 2, 3)
    stem.add_module("pool", cfg.pool_layer(3, 2, 1))
    return stem


def _small_stem(cfg: LayerConfig, cin: int, cout: int) -> nn.Sequential:
    return cfg.conv(cin, cout, 3, 1, 1)


STEMS = {"imagenet": _imagenet_stem, "small": _small_stem}


class ResNet(Network):
    """``features``: ``stem``, ``stage1`` ... ``stageN`` (pre-activation adds ``final``,
    the last norm + act); ``head``: global average pooling, dropout, ``fc``.
    """

    gap_head = True

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int],
        block: str = "basic",  # basic | bottleneck
        blocks: Sequence[int] = (2, 2, 2, 2),  # residual blocks per stage
        stem: str = "imagenet",  # imagenet (7x7/2 + max pool) | small (3x3/1)
        residual: bool = True,
        shortcut: str = "projection",  # projection | zero-pad, where a stage changes shape
        preact: bool = False,  # norm-act-conv blocks (He et al. 2016)
        width: float = 1.0,  # multiplies every stage's channels
        dropout: float = 0.0,  # before the classifier
        activation: str = "relu",
        norm: str = "batch",
        pool: str = "max",  # the stem's pooling
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
        kind = choose(BLOCK_KINDS, block, "block")
        make_stem = choose(STEMS, stem, "stem")
        choose(SHORTCUTS, shortcut, "shortcut")
        blocks = check_counts(blocks, "blocks", "[2, 2, 2, 2]")
        for option, value in (("residual", residual), ("preact", preact)):
            if not isinstance(value, bool):
                raise ModelError(f"{option}={value!r} is not allowed; use true or false")
        cfg = LayerConfig(activation, norm, pool)
        if make_stem is _small_stem and cfg.pool != "max":
            # A study varying pool with the small stem would compare identical networks.
            raise ModelError(
                f"pool={pool!r} has no effect with stem='small' (that stem has no pooling); "
                "use stem=imagenet to vary the pooling"
            )

        channels = scale_width(BASE_WIDTH, width)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            stem=make_stem(cfg, in_channels, channels)
        )
        for i, count in enumerate(blocks):
            planes = scale_width(BASE_WIDTH * 2**i, width)
            stage = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                stage.append(
                    _block(
                        cfg,
                        kind,
                        channels,
                        planes,
                        stride,
                        preact=preact,
                        residual=residual,
                        shortcut=shortcut,
                    )
                )
                channels = planes * kind.expansion
            layers[f"stage{i + 1}"] = nn.Sequential(*stage)
        if preact:  # the last block ends in a conv: normalize and activate before pooling
            layers["final"] = nn.Sequential(
                OrderedDict(norm=cfg.norm_layer(channels), act=cfg.act())
            )
        self.features = nn.Sequential(layers)
        self.cam_layer = "features.final" if preact else f"features.stage{len(blocks)}"
        self.head = ClassifierHead(channels, num_classes, dropout=dropout)


def _register(name: str, block: str, blocks: tuple[int, ...]) -> None:
    text = f"ResNet-{name[6:]}: {block} blocks {'-'.join(map(str, blocks))}, 224 px"
    builder = partial(ResNet, block=block, blocks=blocks)
    MODELS.add(name, builder, description=text, input_size=(224, 224))


_register("resnet18", "basic", (2, 2, 2, 2))
_register("resnet34", "basic", (3, 4, 6, 3))
_register("resnet50", "bottleneck", (3, 4, 6, 3))
_register("resnet101", "bottleneck", (3, 4, 23, 3))
