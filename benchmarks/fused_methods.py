"""How to train K small networks at once: the measurement behind cnnlab.engine.fused.

Times one training step (forward, backward, SGD update) of K classic LeNet-5s on
a batch of 256 Fashion-MNIST-sized images per member, three ways:

- ``separate``: K ordinary modules, one after the other (K studies' worth of
  ``cnnlab train``, minus process start-up);
- ``vmap``: :mod:`cnnlab.engine.fused`'s step (``torch.func.vmap`` over
  ``functional_call``, weights in one ``K x P`` tensor, the fused optimizer);
- ``grouped``: the same network written by hand with grouped convolutions
  (``groups=K``) and batched matrix products, which is what vmap lowers to.

Prints milliseconds per step and training images per second (all members).
Run ``python benchmarks/fused_methods.py --k 1 4 8 16``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn


def _time(fn, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def separate_step(k: int, batch: int, device: torch.device):
    from cnnlab.models import create_model

    models = [
        create_model("lenet5", num_classes=10, in_channels=1, input_size=28).to(device)
        for _ in range(k)
    ]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    x = torch.randn(k, batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (k, batch), device=device)

    def step():
        for i, (m, o) in enumerate(zip(models, opts)):
            loss = F.cross_entropy(m(x[i]), y[i])
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

    return step


def vmap_step(k: int, batch: int, device: torch.device):
    from torch.func import functional_call, vmap

    from cnnlab.config import load_config
    from cnnlab.engine.fused import FUSED_OPTIMIZERS, _Stack
    from cnnlab.models import create_model

    stack = _Stack(
        (create_model("lenet5", num_classes=10, in_channels=1, input_size=28) for _ in range(k)),
        k,
        device,
    )
    cfg = load_config(overrides=["optim.lr=0.1"]).optim
    opt = FUSED_OPTIMIZERS.get("sgd")([cfg] * k, stack.decay, (k, stack.size), device)
    coef = {"neg_lr": torch.full((k, 1), -0.1, device=device)}
    update = torch.ones(k, 1, dtype=torch.bool, device=device)
    template = stack.template

    def member(params, buffers, x, y):
        return F.cross_entropy(functional_call(template, (params, buffers), (x,)), y)

    loss_fn = vmap(member, randomness="different")
    x = torch.randn(k, batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (k, batch), device=device)

    def step():
        losses = loss_fn(stack.params, stack.buffers, x, y)
        stack.grad.zero_()
        with warnings.catch_warnings():  # grads are views of one K x P tensor (see fused._Stack)
            warnings.filterwarnings("ignore", message="grad and param do not obey")
            losses.sum().backward()
        with torch.no_grad():
            opt.step(stack.flat, stack.grad, coef, update)

    return step


class GroupedLeNet(nn.Module):
    """K classic LeNet-5s as one network: grouped convolutions, batched linear layers."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.conv1 = nn.Conv2d(k, 6 * k, 5, padding=2, groups=k)
        self.conv2 = nn.Conv2d(6 * k, 16 * k, 5, groups=k)
        self.fc = nn.ParameterList()
        for fan_in, fan_out in ((400, 120), (120, 84), (84, 10)):
            self.fc.append(nn.Parameter(torch.randn(k, fan_in, fan_out) / fan_in**0.5))
            self.fc.append(nn.Parameter(torch.zeros(k, 1, fan_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: K x B x 1 x 28 x 28
        k, b = x.shape[:2]
        h = x.transpose(0, 1).reshape(b, k, 28, 28)
        h = F.avg_pool2d(torch.sigmoid(self.conv1(h)), 2)
        h = F.avg_pool2d(torch.sigmoid(self.conv2(h)), 2)  # B x 16K x 5 x 5
        h = h.reshape(b, k, 400).transpose(0, 1)  # K x B x 400
        for i in range(0, 6, 2):
            h = torch.baddbmm(self.fc[i + 1], h, self.fc[i])
            if i < 4:
                h = torch.sigmoid(h)
        return h  # K x B x 10


def grouped_step(k: int, batch: int, device: torch.device):
    net = GroupedLeNet(k).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(k, batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (k, batch), device=device)

    def step():
        out = net(x)
        loss = F.cross_entropy(out.reshape(-1, 10), y.reshape(-1), reduction="sum") / batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


METHODS = {"separate": separate_step, "vmap": vmap_step, "grouped": grouped_step}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} per member"
    )
    print(f"{'K':>4} {'method':>9} {'ms/step':>9} {'images/s':>10}")
    for k in args.k:
        for name in args.methods:
            seconds = _time(METHODS[name](k, args.batch, device), args.steps)
            print(f"{k:>4} {name:>9} {seconds * 1e3:>9.1f} {k * args.batch / seconds:>10,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
