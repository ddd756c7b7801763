"""Optimizers by name, and weight initialization schemes.

Weight decay is applied to weights of conv and linear layers only, not to
biases or normalization parameters (the usual practice; with the default
``weight_decay=0`` it makes no difference to the textbook baseline).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from cnnlab.config import OptimConfig
from cnnlab.registry import Registry

OPTIMIZERS: Registry[Callable[[Iterable, OptimConfig], torch.optim.Optimizer]] = Registry(
    "optimizer"
)

OPTIMIZERS.add(
    "sgd",
    lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov),
    description="stochastic gradient descent (momentum, nesterov)",
)
OPTIMIZERS.add(
    "adam",
    lambda params, c: torch.optim.Adam(params, lr=c.lr, betas=c.betas, eps=c.eps),
    description="Adam",
)
OPTIMIZERS.add(
    "adamw",
    lambda params, c: torch.optim.AdamW(
        params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=0.0
    ),
    description="AdamW (decoupled decay)",
)
OPTIMIZERS.add(
    "adagrad",
    lambda params, c: torch.optim.Adagrad(params, lr=c.lr, eps=c.eps),
    description="Adagrad",
)
OPTIMIZERS.add(
    "rmsprop",
    lambda params, c: torch.optim.RMSprop(params, lr=c.lr, momentum=c.momentum, eps=c.eps),
    description="RMSprop",
)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed conv/linear weights, and everything else undecayed."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_weight = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
            (decay if is_weight else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.name)(param_groups(model, cfg.weight_decay), cfg)


def _xavier(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight)


def _kaiming(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.Linear):
        nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")


INITS: Registry[Callable[[nn.Module], None] | None] = Registry("init")
INITS.add("default", None, description="each layer's own PyTorch initialization")
INITS.add(
    "xavier",
    _xavier,
    description="Xavier/Glorot uniform on conv and linear weights (the textbook's)",
)
INITS.add("kaiming", _kaiming, description="Kaiming/He normal on conv, uniform on linear weights")


def init_weights(model: nn.Module, scheme: str) -> None:
    fn = INITS.get(scheme)
    if fn is not None:
        model.apply(fn)
