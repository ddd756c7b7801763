"""The surface every cnnlab network shares.

``features`` maps an image batch to the last feature map, ``head`` maps that to
logits. Tools that look inside a network (CAM, Grad-CAM, feature maps, the
summary table) rely only on this split, never on a family's internals.
"""

from __future__ import annotations

import torch
from torch import nn


class Network(nn.Module):
    """Base class: ``forward(x) == head(features(x))``.

    Subclasses set ``self.features`` and ``self.head`` in ``__init__``. A network
    whose head is global average pooling followed by one linear layer sets
    ``gap_head = True`` so CAM can use the classifier weights directly.
    """

    features: nn.Module
    head: nn.Module
    gap_head: bool = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The final linear layer (the one that produces the logits)."""
        last = None
        for module in self.head.modules():
            if isinstance(module, nn.Linear):
                last = module
        if last is None:
            raise AttributeError(f"{type(self).__name__} has no linear classifier")
        return last

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
