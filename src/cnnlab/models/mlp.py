"""Multilayer perceptron: the baseline a CNN has to beat (``cnn-vs-mlp``).

It sees the image as a flat vector, so shuffling the pixels with a fixed
permutation leaves its accuracy unchanged, which is the point of the comparison.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from cnnlab.errors import ModelError
from cnnlab.layers import NORMS, LayerConfig, check_dropout
from cnnlab.models import MODELS
from cnnlab.models.base import Network


class MLP(Network):
    """flatten -> (linear -> norm -> act -> dropout) per hidden size -> linear.

    ``features`` ends with the last hidden layer (a vector, not a map), ``head`` is
    the output layer.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int],
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        norm: str = "none",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
        cfg = LayerConfig(activation=activation, norm=norm)
        if cfg.norm == "instance":
            # Instance norm needs feature maps; on vectors it is an identity, so an
            # MLP with it would be the MLP without it under another name.
            raise ModelError(
                "norm='instance' has no effect in an MLP (it normalizes feature maps); "
                f"choose one of: {', '.join(n for n in NORMS.names() if n != 'instance')}"
            )
        check_dropout(dropout)
        width = in_channels * input_size[0] * input_size[1]
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten(1))
        for i, size in enumerate(hidden, start=1):
            layers[f"fc{i}"] = cfg.linear(width, int(size), dropout=dropout)
            width = int(size)
        self.features = nn.Sequential(layers)
        self.head = nn.Linear(width, num_classes)


MODELS.add(
    "mlp",
    MLP,
    description="multilayer perceptron on flattened pixels (hidden sizes via hidden=[...])",
    input_size=(28, 28),
)
