"""Tiny data and networks for the explanation tests.

The patch data set: 1 x 16 x 16 images whose class is the quadrant holding a
bright 4 x 4 patch (classes 0-3), plus an "empty" class with no patch (4).
Three design decisions make "the map peaks inside the patch" a fair test of the
methods rather than of luck:

* A network ending in global average pooling is translation-equivariant, so it
  can only learn *where* the patch is from the zero padding at the border, and
  its evidence then sits between patch and border. :class:`PatchNet` therefore
  gates its features by the pixel coordinates (CoordConv-style), so position
  can be read where the patch is.
* Without the empty class, "the other three quadrants are dark" is as good
  evidence as "the patch is here", and saliency rightly lights up the dark
  quadrants. With an empty class, darkness elsewhere no longer separates a
  quadrant from "no patch", so the network must use the patch itself.
* Each image gets its own background level, so darkness is not a reliable
  feature either.
* The classifier weights are centered after training (see
  :func:`center_classifier`), so saliency is not blurred by the part of the
  weights the loss never trains.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.layers import ClassifierHead
from cnnlab.models.base import Network

SIZE = 16
PATCH = 4
EMPTY = 4
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")
CLASSES = (*QUADRANTS, "empty")


@dataclass
class PatchData:
    images: torch.Tensor  # uint8 N x 1 x 16 x 16
    labels: torch.Tensor  # int64 N
    masks: torch.Tensor  # bool N x 16 x 16, True on the patch


def patch_data(n: int, seed: int, *, with_empty: bool = True) -> PatchData:
    """``n`` images; the patch lies anywhere inside its quadrant (jitter 0-4 pixels)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES) if with_empty else len(QUADRANTS), (n,), generator=g)
    level = torch.randint(0, 121, (n, 1, 1, 1), generator=g)
    images = level + torch.randint(0, 60, (n, 1, SIZE, SIZE), generator=g)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    half = SIZE // 2
    offsets = torch.randint(0, half - PATCH + 1, (n, 2), generator=g)
    for i, c in enumerate(labels.tolist()):
        if c == EMPTY:
            continue
        top = (c // 2) * half + int(offsets[i, 0])
        left = (c % 2) * half + int(offsets[i, 1])
        images[i, 0, top : top + PATCH, left : left + PATCH] = 255
        masks[i, top : top + PATCH, left : left + PATCH] = True
    return PatchData(images.clamp(0, 255).to(torch.uint8), labels, masks)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> normalized float, as a run's pipeline would."""
    return (images.float() / 255 - 0.5) / 0.25


class CoordGate(nn.Module):
    """``[A, A * y, A * x]``: features gated by the pixel's coordinates in [-1, 1]."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        h, w = a.shape[-2:]
        ys = torch.linspace(-1, 1, h, device=a.device, dtype=a.dtype).view(1, 1, h, 1)
        xs = torch.linspace(-1, 1, w, device=a.device, dtype=a.dtype).view(1, 1, 1, w)
        return torch.cat([a, a * ys, a * xs], dim=1)


class PatchNet(Network):
    """conv-relu, conv-relu, coordinate gate, 1x1 conv-relu, global average pool, linear.

    Full resolution throughout and in-place ReLUs (which the explainers must cope with).
    """

    gap_head = True
    cam_layer = "features.act3"

    def __init__(
        self, num_classes: int = len(CLASSES), in_channels: int = 1, width: int = 24
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, input_size=(SIZE, SIZE))
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, width, 3, padding=1),
                act1=nn.ReLU(inplace=True),
                conv2=nn.Conv2d(width, width, 3, padding=1),
                act2=nn.ReLU(inplace=True),
                gate=CoordGate(),
                conv3=nn.Conv2d(3 * width, width, 1),
                act3=nn.ReLU(inplace=True),
            )
        )
        self.head = ClassifierHead(width, num_classes)


def center_classifier(model: PatchNet) -> None:
    """Subtract the mean class weight from the classifier: no probability changes.

    The softmax ignores a shift shared by all logits, so cross-entropy never trains
    the part of the classifier weights common to every class; it keeps its random
    initial value and adds input-gradient noise that has nothing to do with the
    decision. Removing it makes a single logit's gradient (saliency) reflect only
    what separates the classes.
    """
    with torch.no_grad():
        fc = model.head.fc
        fc.weight -= fc.weight.mean(0, keepdim=True)
        fc.bias -= fc.bias.mean()


def train_patch_net(steps: int = 200, seed: int = 0) -> PatchNet:
    """A few seconds of Adam on fresh patch images; reaches ~100% test accuracy."""
    torch.manual_seed(seed)
    model = PatchNet()
    data = patch_data(4096, seed=1)
    x_all = preprocess(data.images)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (64,), generator=g)
        loss = F.cross_entropy(model(x_all[idx]), data.labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        before = model(x_all[:256]).softmax(1)
        center_classifier(model)
        assert torch.allclose(model(x_all[:256]).softmax(1), before, atol=1e-5)
    return model


@pytest.fixture(scope="session")
def trained_patch_net() -> PatchNet:
    return train_patch_net()


@pytest.fixture(scope="session")
def patch_test() -> PatchData:
    """100 test images that all have a patch (the empty class has nothing to localize)."""
    data = patch_data(100, seed=2, with_empty=False)
    return data


def hooks_on(model: nn.Module) -> dict[str, int]:
    """Modules of ``model`` that carry any hook, with the number of hooks."""
    found = {}
    for name, module in model.named_modules():
        count = sum(
            len(getattr(module, attr))
            for attr in (
                "_forward_hooks",
                "_forward_pre_hooks",
                "_backward_hooks",
                "_backward_pre_hooks",
                "_state_dict_hooks",
            )
        )
        if count:
            found[name or "<root>"] = count
    return found
