"""Many runs of one network trained together, as one batched computation.

A study trains the same architecture on the same data dozens of times, varying
only the seed, the learning rate, momentum or weight decay. One such run keeps a
GPU mostly idle; K of them stacked along a new leading dimension
(``torch.func.vmap`` over ``functional_call``) run every layer once for all
members (convolutions become one grouped convolution, linear layers one batched
matrix product), and the optimizer updates all members' weights, held in one
``K x P`` tensor, with a handful of elementwise kernels.

Every member reproduces :func:`cnnlab.engine.trainer.train` for its own config:
the same initial weights (``seed_everything``, ``create_model``, ``init_weights``
in the trainer's order), its own shuffle order and augmentation draws (from its
seed, through :mod:`cnnlab.engine.batches`), its own lr schedule
(:func:`~cnnlab.engine.schedules.lr_at`), and ``torch.optim``'s arithmetic with
its own lr, momentum and weight decay. Batch-norm running statistics are stacked
per member. A member whose loss turns non-finite is frozen and recorded as
diverged while the others go on; one that stops early is frozen likewise. Each
member gets an ordinary run folder whose ``last.pt`` the single-run trainer can
resume. Inside an epoch nothing is read back to the host: divergence masks,
losses and accuracies stay on the device and are read once per epoch.

Dropout is the one thing a fused member does not reproduce bit for bit: its
masks come from the group's generator, so they are independent draws of the
same distribution rather than the separate run's exact ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from cnnlab.config import OptimConfig, RunConfig, build_config, flatten
from cnnlab.data import DataSplits
from cnnlab.engine import accel
from cnnlab.engine import checkpoint as ckpt
from cnnlab.engine.batches import epoch_draws, epoch_order, eval_batches
from cnnlab.engine.inputs import build_pipeline, input_size, load_run_data, prepare_splits
from cnnlab.engine.interrupts import InterruptGate
from cnnlab.engine.optim import build_optimizer, init_weights, param_groups
from cnnlab.engine.run import Run, RunFolder
from cnnlab.engine.schedules import lr_at
from cnnlab.engine.trainer import (
    TrainState,
    autocast_for,
    device_label,
    epoch_line,
    is_better,
    prepare_run_dir,
    resolve_device,
    run_summary,
    seed_everything,
    summary_line,
)
from cnnlab.errors import CheckpointError, ConfigError, RunError
from cnnlab.models import create_model, default_in_channels, default_input_size
from cnnlab.registry import Registry

log = logging.getLogger("cnnlab.train")

Callback = Callable[[str, dict[str, Any]], None]

#: The settings fused members may differ in; everything else in their configs must be equal.
MEMBER_KEYS = ("train.seed", "optim.lr", "optim.momentum", "optim.weight_decay")

# Must match the trainer's, so a fused member's last.pt resumes with `cnnlab train --resume`.
_CHECKPOINT_VERSION = 1

# On a CPU a fused step is one grouped convolution instead of K plain ones, which
# oneDNN runs no faster, so fusing pays only where per-step overhead dominates:
# measured with classic LeNet-5 (0.42 MMACs per image), fused K=8 ran 1.6x as fast
# as separate runs at batch 4-8, tied at batch 16 and was 1.5-2x slower at batch
# 32-256 (docs/benchmarks.md). Groups of up to 8 are formed below this much work per step.
_CPU_FUSE_MACS = 4_000_000
_CPU_MAX_GROUP = 8
_GPU_MAX_GROUP = 64


# ---------------------------------------------------------------- which runs fuse


def fusable_key(config: RunConfig) -> tuple | None:
    """A key equal for runs that can be trained as one fused group; None if this one cannot.

    Runs fuse when everything but :data:`MEMBER_KEYS` (seed, lr, momentum, weight
    decay) is equal: model and options, data and augmentation, batch size, epochs,
    schedule, precision, device. Multi-process runs, fp16 (whose loss scaler is
    per run) and runs that write TensorBoard files are not fused.
    """
    t = config.train
    if (
        t.devices > 1
        or t.precision == "fp16"
        or t.tensorboard
        or config.optim.name not in FUSED_OPTIMIZERS
    ):
        return None
    flat = flatten(config.to_dict())
    return tuple(
        (k, json.dumps(v, sort_keys=True)) for k, v in sorted(flat.items()) if k not in MEMBER_KEYS
    )


def group_runs(configs: Sequence[RunConfig], max_size: int | None = None) -> list[list[int]]:
    """Indices of ``configs`` grouped by :func:`fusable_key`, in order of first appearance.

    Groups are cut to ``max_size`` members; a run that cannot fuse is a group of one.
    """
    groups: dict[Any, list[int]] = {}
    for i, cfg in enumerate(configs):
        key = fusable_key(cfg)
        groups.setdefault(key if key is not None else ("single", i), []).append(i)
    size = max_size or len(configs) or 1
    return [g[j : j + size] for g in groups.values() for j in range(0, len(g), size)]


def _first_difference(a: RunConfig, b: RunConfig) -> str:
    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    for key in sorted(set(fa) | set(fb)):
        if key not in MEMBER_KEYS and fa.get(key) != fb.get(key):
            return f"{key} ({fa.get(key)!r} vs {fb.get(key)!r})"
    return "nothing"


# ---------------------------------------------------------------- memory estimate


def _summary_of(config: RunConfig, input_shape: tuple[int, int, int], num_classes: int):
    options = config.model.options()
    key = (config.model.name, json.dumps(options, sort_keys=True), input_shape, num_classes)
    return _cached_summary(key, options)


_SUMMARIES: dict[tuple, Any] = {}


def _cached_summary(key: tuple, options: Mapping[str, Any]):
    """One layer summary per architecture and input: a study planner asks for the
    same few dozens of times (one memory estimate per fusable key and worker count)."""
    from cnnlab.models.summary import summary

    if key not in _SUMMARIES:
        name, _, shape, classes = key
        _SUMMARIES[key] = summary(name, shape, num_classes=classes, **options)
    return _SUMMARIES[key]


def member_bytes(
    config: RunConfig, input_shape: tuple[int, int, int], num_classes: int = 10
) -> int:
    """Estimated device memory of one fused member during a training step, in bytes.

    Weights, gradients, optimizer state and the optimizer's temporaries (P floats
    each), plus the batch and the activations autograd keeps: about two float32
    tensors per layer output (the output and what its backward needs).
    """
    s = _summary_of(config, input_shape, num_classes)
    slots = FUSED_OPTIMIZERS.get(config.optim.name).slots_for(config.optim)
    per_param = 4 * (2 + slots + 3)
    per_sample = 2 * s.activation_bytes + 4 * math.prod(input_shape)
    return s.total_params * per_param + config.train.batch_size * per_sample


def _free_bytes(device: torch.device, share: float = 1.0) -> int:
    """Memory a fused group may plan with: 80% of the GPU's free memory (half the
    available RAM on a CPU), and no more than ``share`` of the device's total.

    ``share`` is what a worker gets when several share one device (the study
    runner gives each of W workers 1/W). It caps the total, not the free memory:
    a worker that starts after the others have filled their groups sees less
    free memory already, and dividing that again would shrink its groups twice.
    """
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        # What this process's caching allocator holds but does not use is free to it.
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(min(free, total * share) * 0.8)
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        return int(min(info["MemAvailable"], info["MemTotal"] * share) * 0.5)
    except (OSError, KeyError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        avail, total = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PHYS_PAGES")
        return int(page * min(avail, total * share) * 0.5)


def input_of(config: RunConfig, splits: DataSplits | None) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) of the model's input and the number of classes, from the data or the config.

    Without the data (a study runner planning workers before loading anything),
    the shape comes from ``data.resize`` or the model's designed input, and 10 classes.
    """
    if splits is not None:
        return (splits.in_channels, *input_size(splits, config.data)), splits.num_classes
    size = (
        (config.data.resize,) * 2
        if config.data.resize
        else (default_input_size(config.model.name) or (28, 28))
    )
    return (default_in_channels(config.model.name), *size), 10


def step_macs(config: RunConfig, splits: DataSplits | None = None) -> int:
    """Multiply-accumulates of one forward pass over a training batch of one run."""
    shape, classes = input_of(config, splits)
    return config.train.batch_size * _summary_of(config, shape, classes).macs


def group_size_for(
    config: RunConfig,
    device: str | torch.device | None = None,
    *,
    splits: DataSplits | None = None,
    max_size: int | None = None,
    free_bytes: int | None = None,
    share: float = 1.0,
) -> int:
    """How many runs like ``config`` to fuse into one group on ``device``.

    Args:
        config: one member's config (all members share what matters here).
        device: default ``config.train.device``.
        splits: the data, for the input shape and its own footprint; without it the
            shape comes from ``data.resize`` and the model's designed input.
        max_size: upper bound; default 64 on a GPU and 8 on a CPU. On a CPU,
            runs whose step is more than a few million multiply-accumulates get 1
            (not fused), because fusing them is slower there (see _CPU_FUSE_MACS).
        free_bytes: memory to plan with; default 80% of the GPU's free memory, or
            half of the available RAM.
        share: the fraction of the device this worker may use when it shares the
            device with others (ignored with ``free_bytes``); see :func:`_free_bytes`.

    Returns:
        At least 1, even when one member alone does not seem to fit.
    """
    dev = resolve_device(str(device) if device is not None else config.train.device)
    shape, classes = input_of(config, splits)
    data = sum(s.images.numel() for _, s in splits.items()) if splits is not None else 0
    if dev.type == "cpu" and max_size is None and step_macs(config, splits) > _CPU_FUSE_MACS:
        return 1
    budget = (free_bytes if free_bytes is not None else _free_bytes(dev, share)) - data
    cap = max_size or (_GPU_MAX_GROUP if dev.type == "cuda" else _CPU_MAX_GROUP)
    per = member_bytes(config, shape, classes)
    return int(max(1, min(cap, budget // max(per, 1))))


# ---------------------------------------------------------------- stacked weights


class _Stack:
    """K members' weights in one ``K x P`` tensor, their buffers stacked, and the module they fill.

    Each parameter is a leaf view into ``flat`` whose ``.grad`` is a view into
    ``grad``, so backward accumulates every member's gradient straight into one
    ``K x P`` tensor and the optimizer needs no gather.
    """

    def __init__(self, models: Iterable[nn.Module], k: int, device: torch.device) -> None:
        """Fill the stack from ``k`` models, built one at a time (only one is ever held besides it)."""
        models = iter(models)
        self.template = next(models).to(device)
        self.k = k
        named = list(self.template.named_parameters())
        self.spans: dict[str, tuple[int, torch.Size]] = {}
        offset = 0
        for name, p in named:
            self.spans[name] = (offset, p.shape)
            offset += p.numel()
        self.size = offset
        self.flat = torch.empty(k, self.size, device=device)
        self.grad = torch.zeros_like(self.flat)
        self.buffers = {
            name: torch.empty((k, *b.shape), dtype=b.dtype, device=device)
            for name, b in self.template.named_buffers()
        }
        self.load_member(
            0, dict(self.template.named_parameters()) | dict(self.template.named_buffers())
        )
        for i, model in enumerate(models, start=1):
            self.load_member(i, dict(model.named_parameters()) | dict(model.named_buffers()))
        self.params: dict[str, torch.Tensor] = {}
        for name, (off, shape) in self.spans.items():
            view = self.flat[:, off : off + shape.numel()].view(k, *shape)
            view.requires_grad_()
            view.grad = self.grad[:, off : off + shape.numel()].view(k, *shape)
            self.params[name] = view
        # The trainer's weight-decay split (conv/linear weights only), as a mask over P.
        groups = param_groups(self.template, 1.0)
        decayed = {id(p) for g in groups if g["weight_decay"] for p in g["params"]}
        mask = torch.zeros(self.size, dtype=torch.bool)
        for name, p in named:
            if id(p) in decayed:
                mask[self.flat_slice(name)] = True
        self.decay = mask.to(device)[None, :]
        self.keys = list(self.template.state_dict().keys())

    def state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member ``k``'s weights as the single run's ``model.state_dict()`` (CPU copies)."""
        src = {**self.params, **self.buffers}
        return {key: src[key][k].detach().to("cpu", copy=True) for key in self.keys}

    def load_member(self, k: int, state: Mapping[str, torch.Tensor]) -> None:
        """Put one member's weights and buffers (a state dict) into row ``k``."""
        with torch.no_grad():
            for name, (off, shape) in self.spans.items():
                self.flat[k, off : off + shape.numel()] = (
                    state[name].reshape(-1).to(self.flat.device)
                )
            for name, buf in self.buffers.items():
                if name in state:
                    buf[k] = state[name].to(buf.device)

    def flat_slice(self, name: str) -> slice:
        off, shape = self.spans[name]
        return slice(off, off + shape.numel())


# ---------------------------------------------------------------- optimizers on K x P


def _col(values: Iterable[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.float64).to(device=device, dtype=torch.float32)[
        :, None
    ]


class FusedOptimizer:
    """``torch.optim``'s update on all members at once, with lr, momentum and decay per member.

    The arithmetic follows torch's single-tensor implementations operation by
    operation, in place, so a member's weights track its separate run to float
    rounding. Scalars that torch computes in double on the host (``-lr``, Adam's
    step size) are computed the same way for a whole epoch by
    :meth:`coefficients` and moved to the device once. A member that must not
    move (diverged, stopped) gets a zero gradient and a zero step size, so its
    weights stay exactly as they are without a masked copy of ``K x P`` tensors.
    State tensors carry torch's names, so :meth:`torch_state` and
    :meth:`load_torch_state` convert to and from a single run's optimizer.
    """

    slot_names: ClassVar[tuple[str, ...]] = ()
    counts_steps: ClassVar[bool] = True  # torch keeps a "step" in the state
    #: Coefficients that scale a step (zeroed for frozen members), and factors (set to 1).
    step_coefficients: ClassVar[tuple[str, ...]] = ("neg_lr",)
    factor_coefficients: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        cfgs: Sequence[OptimConfig],
        decay: torch.Tensor,
        shape: tuple[int, int],
        device: torch.device,
    ) -> None:
        self.cfg = cfgs[0]
        self.weight_decay = [c.weight_decay for c in cfgs]
        self.any_wd = any(self.weight_decay)
        self.momentum_host = [c.momentum for c in cfgs]
        self.momentum = _col(self.momentum_host, device)
        self.any_momentum = any(self.momentum_host)
        self.decay = decay
        # weight decay per entry: the member's decay on conv/linear weights, 0 elsewhere
        self.wd = _col(self.weight_decay, device) * decay if self.any_wd else None
        self.steps = 0
        self.slots = {name: torch.zeros(shape, device=device) for name in self.active_slots(cfgs)}
        self._zero = torch.zeros((), device=device)

    @classmethod
    def active_slots(cls, cfgs: Sequence[OptimConfig]) -> tuple[str, ...]:
        return cls.slot_names

    @classmethod
    def slots_for(cls, cfg: OptimConfig) -> int:
        """State tensors per weight (for the memory estimate)."""
        return len(cls.active_slots([cfg]))

    def coefficients(self, lrs: torch.Tensor, first_step: int) -> dict[str, torch.Tensor]:
        """Per-step, per-member scalars (``S x K``, float64) for steps ``first_step + 1 ...``."""
        return {"neg_lr": -lrs}

    def step(
        self,
        p: torch.Tensor,
        g: torch.Tensor,
        coef: Mapping[str, torch.Tensor],
        update: torch.Tensor,
    ) -> None:
        """One step on ``p`` (``K x P``) with gradients ``g`` (overwritten).

        ``coef`` values and ``update`` (bool, false for members that must not move) are ``K x 1``.
        The caller counts :attr:`steps` (a step replayed from a CUDA graph runs no Python).
        """
        torch.where(update, g, self._zero, out=g)  # also clears a frozen member's NaNs
        gated = dict(coef)
        for name in self.step_coefficients:
            gated[name] = coef[name] * update
        for name in self.factor_coefficients:
            gated[name] = torch.where(update, coef[name], 1.0)
        if self.wd is not None and not self.decoupled_decay:
            g.addcmul_(p, self.wd)  # torch: grad.add(param, alpha=weight_decay)
        self.apply(p, g, gated)

    decoupled_decay: ClassVar[bool] = False

    def apply(self, p: torch.Tensor, d: torch.Tensor, coef: Mapping[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def has_state(self, k: int) -> bool:
        """Whether torch's optimizer of member ``k`` would hold state by now."""
        return bool(self.slots) and self.steps > 0

    def torch_state(self, k: int, piece: slice, shape: torch.Size) -> dict[str, Any]:
        """Member ``k``'s state for one parameter, as torch's optimizer holds it."""
        state: dict[str, Any] = {
            n: self.slots[n][k, piece].reshape(shape).to("cpu", copy=True) for n in self.slots
        }
        if self.counts_steps:
            state["step"] = torch.tensor(float(self.steps))
        return state

    def load_torch_state(self, k: int, piece: slice, state: Mapping[str, Any]) -> None:
        for name, slot in self.slots.items():
            if name in state:
                slot[k, piece] = state[name].reshape(-1).to(slot.device)


FUSED_OPTIMIZERS: Registry[type[FusedOptimizer]] = Registry("fused optimizer")


@FUSED_OPTIMIZERS.register("sgd")
class _SGD(FusedOptimizer):
    """torch.optim.SGD: ``buf = m*buf + g``; nesterov ``g + m*buf``; ``p += -lr * step``."""

    counts_steps = False

    @classmethod
    def active_slots(cls, cfgs: Sequence[OptimConfig]) -> tuple[str, ...]:
        return ("momentum_buffer",) if any(c.momentum for c in cfgs) else ()

    def apply(self, p, d, coef):
        if self.any_momentum:
            # torch's first buffer is a clone of the gradient: m * 0 + d == d. A member
            # without momentum gets buf == d, which is torch's plain step.
            buf = self.slots["momentum_buffer"].mul_(self.momentum).add_(d)
            d = d.addcmul_(buf, self.momentum) if self.cfg.nesterov else buf
        p.addcmul_(d, coef["neg_lr"])  # torch: param.add_(grad, alpha=-lr)

    def has_state(self, k: int) -> bool:
        return self.steps > 0 and self.momentum_host[k] != 0


@FUSED_OPTIMIZERS.register("adam")
class _Adam(FusedOptimizer):
    """torch.optim.Adam (weight decay as L2 through the gradient)."""

    slot_names = ("exp_avg", "exp_avg_sq")
    step_coefficients = ("neg_step_size",)

    def coefficients(self, lrs, first_step):
        # In Python doubles, as torch computes them, then one tensor per epoch.
        b1, b2 = self.cfg.betas
        size, bias2, decay = [], [], []
        for s, row in enumerate(lrs.tolist()):
            t = float(first_step + 1 + s)
            b1t, b2t = 1 - b1**t, 1 - b2**t
            size.append([-(lr / b1t) for lr in row])
            bias2.append([b2t**0.5] * len(row))
            decay.append([1 - lr * wd for lr, wd in zip(row, self.weight_decay)])
        coef = {
            "neg_step_size": torch.tensor(size, dtype=torch.float64),
            "bias2_sqrt": torch.tensor(bias2, dtype=torch.float64),
        }
        if self.decoupled_decay:
            coef["decay_factor"] = torch.tensor(decay, dtype=torch.float64)
        return coef

    def apply(self, p, d, coef):
        b1, b2 = self.cfg.betas
        if self.decoupled_decay and self.any_wd:
            p.copy_(torch.where(self.decay, p * coef["decay_factor"], p))  # param.mul_(1 - lr * wd)
        exp_avg = self.slots["exp_avg"].lerp_(d, 1 - b1)
        exp_avg_sq = self.slots["exp_avg_sq"].mul_(b2).addcmul_(d, d, value=1 - b2)
        denom = exp_avg_sq.sqrt().div_(coef["bias2_sqrt"]).add_(self.cfg.eps)
        p.addcdiv_(
            exp_avg * coef["neg_step_size"], denom
        )  # addcdiv_(exp_avg, denom, value=-step_size)


@FUSED_OPTIMIZERS.register("adamw")
class _AdamW(_Adam):
    """torch.optim.AdamW (decoupled weight decay on the decayed entries)."""

    decoupled_decay = True
    factor_coefficients = ("decay_factor",)


@FUSED_OPTIMIZERS.register("adagrad")
class _Adagrad(FusedOptimizer):
    """torch.optim.Adagrad (lr_decay 0, zero initial accumulator)."""

    slot_names = ("sum",)

    def apply(self, p, d, coef):
        std = self.slots["sum"].addcmul_(d, d).sqrt().add_(self.cfg.eps)
        p.addcdiv_(d * coef["neg_lr"], std)  # addcdiv_(grad, std, value=-lr)

    def has_state(self, k: int) -> bool:
        return True  # torch creates Adagrad's state with the optimizer


@FUSED_OPTIMIZERS.register("rmsprop")
class _RMSprop(FusedOptimizer):
    """torch.optim.RMSprop (alpha 0.99, not centered), momentum per member."""

    alpha = 0.99

    @classmethod
    def active_slots(cls, cfgs: Sequence[OptimConfig]) -> tuple[str, ...]:
        if any(c.momentum for c in cfgs):
            return ("square_avg", "momentum_buffer")
        return ("square_avg",)

    def apply(self, p, d, coef):
        square_avg = self.slots["square_avg"].mul_(self.alpha).addcmul_(d, d, value=1 - self.alpha)
        avg = square_avg.sqrt().add_(self.cfg.eps)
        if not self.any_momentum:
            p.addcdiv_(d * coef["neg_lr"], avg)  # addcdiv_(grad, avg, value=-lr)
            return
        buf = self.slots["momentum_buffer"].mul_(self.momentum).addcdiv_(d, avg)
        if all(self.momentum_host):
            p.addcmul_(buf, coef["neg_lr"])  # add_(buf, alpha=-lr)
            return
        plain = d.mul_(coef["neg_lr"]).div_(avg)
        p.add_(torch.where(self.momentum > 0, buf * coef["neg_lr"], plain))

    def torch_state(self, k, piece, shape):
        state = super().torch_state(k, piece, shape)
        if self.momentum_host[k] == 0:
            state.pop("momentum_buffer", None)
        return state


# ---------------------------------------------------------------- batches for K members


# ---------------------------------------------------------------- members


@dataclass
class _Member:
    index: int
    cfg: RunConfig
    path: Path
    folder: RunFolder | None = None
    state: TrainState = field(default_factory=TrainState)
    notes: list[str] = field(default_factory=list)
    # running, stopped (early, finishing this epoch), completed, diverged, done (finished before a resume)
    status: str = "running"
    diverged: dict[str, Any] | None = None


def _summary(
    m: _Member,
    status: str,
    *,
    splits: DataSplits,
    sizes: dict[str, int],
    dev: str,
    group: dict[str, Any],
    t_start: float,
    **extra: Any,
) -> dict[str, Any]:
    """The trainer's summary.json for one member, plus a ``fused`` section."""
    return run_summary(
        m.path.name,
        status,
        cfg=m.cfg,
        state=m.state,
        splits=splits,
        sizes=sizes,
        device=dev,
        world_size=1,
        notes=m.notes,
        t_start=t_start,
        fused={**group, "member": m.index},
        **extra,
    )


# ---------------------------------------------------------------- the group


def _check_group(
    configs: Sequence[RunConfig | Mapping[str, Any]], run_dirs: Sequence[str | Path]
) -> list[RunConfig]:
    if not configs:
        raise RunError("a fused group needs at least one run")
    if len(configs) != len(run_dirs):
        raise RunError(f"a fused group got {len(configs)} configs but {len(run_dirs)} run folders")
    cfgs = [c if isinstance(c, RunConfig) else build_config(c) for c in configs]
    key = fusable_key(cfgs[0])
    if key is None:
        raise ConfigError(
            f"run cannot be fused (optim.name={cfgs[0].optim.name}, train.precision={cfgs[0].train.precision}, "
            f"train.devices={cfgs[0].train.devices}, train.tensorboard={cfgs[0].train.tensorboard}); "
            "train it with cnnlab.train"
        )
    for cfg in cfgs[1:]:
        if fusable_key(cfg) != key:
            raise ConfigError(
                f"runs cannot be fused: they differ in {_first_difference(cfgs[0], cfg)}"
            )
    paths = [Path(p).resolve() for p in run_dirs]
    if len(set(paths)) != len(paths):
        raise RunError("a fused group got the same run folder twice")
    return cfgs


def _build_models(cfgs: Sequence[RunConfig], splits: DataSplits) -> Iterator[nn.Module]:
    """Each member's initial model exactly as the trainer builds it: seed, create, init."""
    for cfg in cfgs:
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        model = create_model(
            cfg.model.name,
            num_classes=splits.num_classes,
            in_channels=splits.in_channels,
            input_size=input_size(splits, cfg.data),
            **cfg.model.options(),
        )
        init_weights(model, cfg.model.init)
        yield model


class _Group:
    """The state of a fused group while it trains (weights, optimizer, members, data)."""

    def __init__(
        self,
        cfgs: list[RunConfig],
        members: list[_Member],
        splits: DataSplits,
        device: torch.device,
    ) -> None:
        self.cfg = cfgs[0]
        self.cfgs = cfgs
        self.members = members
        self.splits = splits
        self.device = device
        self.train_set, self.val_set, self.test_set = (
            s.to(device) for s in (splits.train, splits.val, splits.test)
        )
        self.prep = build_pipeline(splits, self.cfg.data).to(device)
        self.stack = _Stack(_build_models(cfgs, splits), len(cfgs), device)
        self.opt = FUSED_OPTIMIZERS.get(self.cfg.optim.name)(
            [c.optim for c in cfgs], self.stack.decay, (self.stack.k, self.stack.size), device
        )
        self.use_graph = accel.use_cuda_graph(
            self.cfg.train.cuda_graph, device, self.cfg.train.compile
        )
        self.autocast = autocast_for(self.cfg, device, cache=not self.use_graph)
        self.steps_per_epoch = math.ceil(len(self.train_set) / self.cfg.train.batch_size)
        self.has_dropout = any(
            isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
            for m in self.stack.template.modules()
        )
        # The closures take locals, not self: a group referring to itself through
        # train_fn would outlive train_group until the cyclic collector ran.
        template, smoothing = self.stack.template, self.cfg.train.label_smoothing
        autocast = self.autocast

        def member_loss(params, buffers, x, y):
            with autocast:
                out = functional_call(template, (params, buffers), (x,))
                loss = F.cross_entropy(out.float(), y, label_smoothing=smoothing)
            return loss, (out.argmax(1) == y).sum()

        def member_eval(params, buffers, x, y):
            with autocast:
                out = functional_call(template, (params, buffers), (x,))
            return F.cross_entropy(out.float(), y, reduction="sum"), (out.argmax(1) == y).sum()

        self.train_fn = vmap(member_loss, randomness="different")
        self.eval_fn = vmap(member_eval, in_dims=(0, 0, None, None), randomness="different")
        if self.cfg.train.compile:
            self.train_fn = torch.compile(self.train_fn)
            self.eval_fn = torch.compile(self.eval_fn)

    # -- checkpoints in the single-run trainer's format

    def optimizer_state(self, k: int) -> dict[str, Any]:
        """Member ``k``'s optimizer as ``torch.optim``'s ``state_dict()`` (what the trainer resumes)."""
        model = self.stack.template
        opt = build_optimizer(model, self.cfgs[k].optim)
        if self.opt.has_state(k):
            for name, p in model.named_parameters():
                opt.state[p] = self.opt.torch_state(k, self.stack.flat_slice(name), p.shape)
        return opt.state_dict()

    def load_optimizer_state(self, k: int, saved: Mapping[str, Any]) -> None:
        model = self.stack.template
        opt = build_optimizer(model, self.cfgs[k].optim)
        opt.load_state_dict(saved)
        for name, p in model.named_parameters():
            if p in opt.state:
                self.opt.load_torch_state(k, self.stack.flat_slice(name), opt.state[p])

    def checkpoint(self, m: _Member) -> dict[str, Any]:
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        return {
            "version": _CHECKPOINT_VERSION,
            "model": self.stack.state_dict(m.index),
            "optimizer": self.optimizer_state(m.index),
            "scaler": scaler.state_dict(),
            "state": m.state.to_dict(),
            "rng": ckpt.rng_state(self.device),
            **ckpt.fingerprints(m.cfg),
        }

    def save_last(self, m: _Member) -> None:
        ckpt.save_checkpoint(self.checkpoint(m), m.folder.checkpoints / "last.pt")

    # -- evaluation

    @torch.no_grad()
    def evaluate(self, split) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-member loss sum and correct count over a split (device tensors), or None when empty."""
        if len(split) == 0:
            return None
        k = self.stack.k
        loss = torch.zeros(k, device=self.device, dtype=torch.float64)
        correct = torch.zeros(k, device=self.device, dtype=torch.int64)
        self.stack.template.eval()
        params = {n: p.detach() for n, p in self.stack.params.items()}
        for x, y in eval_batches(split.images, split.labels, self.cfg.train.eval_batch_size):
            l, c = self.eval_fn(params, self.stack.buffers, self.prep.convert(x), y)
            loss += l.double()
            correct += c
        self.stack.template.train()
        return loss / len(split), correct.double() / len(split)


def train_group(
    configs: Sequence[RunConfig | Mapping[str, Any]],
    run_dirs: Sequence[str | Path],
    *,
    splits: DataSplits | None = None,
    callback: Callback | None = None,
    resume: bool = False,
) -> list[Run]:
    """Train several runs at once as one fused computation; one normal run folder each.

    Args:
        configs: the members' configs; equal :func:`fusable_key` required (they may
            differ in seed, lr, momentum and weight decay).
        run_dirs: one run folder per member (must not hold a run unless resuming).
        splits: already-loaded data (subset/permutation still applied), shared by all.
        callback: ``callback(event, info)``: "start", "step", "epoch", "end" and
            "note" like the trainer's; per-member events ("epoch", "end") carry ``member``
            and ``path``; "step" has the trainer's keys (mean loss, member 0's lr) plus
            ``losses`` (a device tensor, overwritten by the next step when steps
            replay a CUDA graph: clone it to keep it) and ``lrs``.
        resume: continue from the members' ``last.pt``; all members must stop at the
            same point (a group that was interrupted together).

    Returns:
        One :class:`Run` per member, in order; diverged members return normally
        with status ``diverged``.

    Raises:
        ConfigError: the runs cannot be fused. RunError: a folder already holds a run,
        or the members of a resumed group are at different points.
    """
    t_start = time.perf_counter()
    emit = callback or _no_events
    cfgs = _check_group(configs, run_dirs)
    cfg = cfgs[0]
    paths = [prepare_run_dir(c, Path(d), None, Path("."), resume) for c, d in zip(cfgs, run_dirs)]
    device = resolve_device(cfg.train.device)
    accel.keep_freed_host_memory(device)
    accel.make_current(device)
    notes: list[str] = [f"trained in a fused group of {len(cfgs)}"] if len(cfgs) > 1 else []
    notes += accel.cuda_only_notes(cfg.train.precision, cfg.train.cuda_graph, device)
    if cfg.train.channels_last is True:
        notes.append(
            "train.channels_last is ignored in a fused group (its convolutions are grouped over the members)"
        )

    splits = load_run_data(cfg.data) if splits is None else prepare_splits(splits, cfg.data)
    members = [_Member(i, c, p, notes=list(notes)) for i, (c, p) in enumerate(zip(cfgs, paths))]
    group = _Group(cfgs, members, splits, device)
    if group.use_graph:
        for m in members:
            m.notes.append(GRAPH_NOTE)
    if group.has_dropout:
        for m in members:
            m.notes.append(
                "dropout masks come from the fused group's generator, not this run's seed"
            )
    for m in members:
        try:
            m.folder = RunFolder(m.path)
        except OSError as exc:
            raise RunError(
                f"cannot write to run folder {str(m.path)!r}: {exc.strerror or exc}"
            ) from None
    if resume:
        _restore(group)
    sizes = {"train": len(group.train_set), "val": len(group.val_set), "test": len(group.test_set)}
    dev = device_label(device)
    info = {"group_size": len(members), "members": [str(m.path) for m in members]}

    def member_summary(m: _Member, status: str, **extra: Any) -> dict[str, Any]:
        return _summary(
            m, status, splits=splits, sizes=sizes, dev=dev, group=info, t_start=t_start, **extra
        )

    def write_summary(m: _Member, status: str, **extra: Any) -> dict[str, Any]:
        s = member_summary(m, status, **extra)
        m.folder.write_summary(s)
        return s

    def finish(m: _Member, status: str) -> None:
        final = member_summary(m, status, diverged=m.diverged)
        m.folder.write_metrics(m.state.rows)
        m.folder.write_curves(m.state.rows, title=m.path.name)
        m.folder.log(summary_line(final))
        # Last, as in the trainer: a finished summary.json means the folder is whole.
        m.folder.write_summary(final)
        emit("end", {"summary": final, "path": m.path, "member": m.index})

    total_epochs = cfg.train.epochs
    for note in notes:
        log.info(note)
        emit("note", {"text": note})
    for m in members:
        if m.status == "done":
            continue  # finished before this resume: its folder is left exactly as it is
        m.folder.write_config(m.cfg)
        for note in m.notes:
            m.folder.log(f"note: {note}")
        m.folder.log(f"config: {m.cfg.short()}")
        if resume and m.state.step > 0:
            m.folder.log(
                f"resumed after epoch {m.state.epoch} (step {m.state.step}) from the saved "
                f"checkpoint, in a fused group of {len(members)}"
            )
        write_summary(m, "running")
    start = next((m.state for m in members if m.status == "running"), members[0].state)
    emit(
        "start",
        {
            "config": cfg,
            "configs": cfgs,
            "path": paths[0],
            "paths": paths,
            "device": dev,
            "epochs": total_epochs,
            "start_epoch": start.epoch,
            "steps_per_epoch": group.steps_per_epoch,
            "num_train": sizes["train"],
            "resumed": resume and start.step > 0,
            "group_size": len(members),
        },
    )
    try:
        _train_epochs(group, emit, write_summary, finish)
    except KeyboardInterrupt:
        for m in members:
            if m.status == "running":
                write_summary(m, "interrupted")
                m.folder.write_metrics(m.state.rows)
                m.folder.write_curves(m.state.rows, title=m.path.name)
                m.folder.log(
                    f"interrupted at epoch {m.state.epoch + 1} batch {m.state.batch}; resume with: cnnlab train --resume {m.path}"
                )
        raise
    finally:
        del group
        accel.release_device_memory(device)
    return [Run.load(m.path) for m in members]


def _restore(group: _Group) -> None:
    """Load the members' last.pt; those still training must all stand at the same point.

    A member whose summary says it finished (completed or diverged) is left as it is.
    The random number generators continue from the first restored member's checkpoint,
    so a group with dropout draws the masks an uninterrupted group would have drawn.
    """
    points = []
    rng = None
    for m in group.members:
        try:
            status = json.loads((m.path / "summary.json").read_text()).get("status")
        except (OSError, ValueError):
            status = None
        if status in ("completed", "diverged"):
            m.status = "done"
            continue
        try:
            saved, used = ckpt.load_latest_good(m.folder.checkpoints, "last")
        except CheckpointError:
            if any((m.folder.checkpoints / f).exists() for f in ("last.pt", "last.prev.pt")):
                raise
            points.append((0, 0, 0))
            continue
        if not ckpt.resumes(saved, m.cfg):
            raise CheckpointError(
                f"checkpoint {str(used)!r} was written by a different config; resume needs the run's own config.yaml"
            )
        group.stack.load_member(m.index, saved["model"])
        group.load_optimizer_state(m.index, saved["optimizer"])
        m.state = TrainState(**saved["state"])
        rng = saved["rng"] if rng is None else rng
        if used.name != "last.pt":
            m.notes.append(f"newest checkpoint unusable; resumed from {used.name}")
        points.append((m.state.epoch, m.state.batch, m.state.step))
    if len(set(points)) > 1:
        raise RunError(
            "members of a fused group stopped at different points (epoch, batch, step: "
            + ", ".join(str(p) for p in points)
            + "); resume them one by one with cnnlab train --resume"
        )
    if rng is not None:
        ckpt.set_rng_state(rng, group.device)


GRAPH_NOTE = "training steps replayed as a CUDA graph"


def _no_events(event: str, info: dict[str, Any]) -> None:
    """The callback of a group trained without one."""


class _Step:
    """One training step of the group: inputs from buffers, results accumulated in place.

    The per-epoch sums (loss, correct), the divergence bookkeeping and the mask
    of members still training live in tensors allocated once, and the step
    number is a device counter the step itself advances, so the same step can
    be replayed from a CUDA graph (:class:`cnnlab.engine.accel.CudaGraphStep`)
    and run eagerly with identical results. Full batches go through fixed
    input buffers (:meth:`fill`); the last, smaller batch of an epoch runs
    eagerly on its own tensors.
    """

    def __init__(self, group: _Group, use_graph: bool) -> None:
        self.group = group
        k, bs, device = group.stack.k, group.cfg.train.batch_size, group.device
        self.running = torch.zeros(k, dtype=torch.bool, device=device)
        self.loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
        self.correct = torch.zeros(k, dtype=torch.int64, device=device)
        self.last_finite = torch.full((k,), math.nan, device=device)
        self.diverged_at = torch.zeros(k, dtype=torch.int64, device=device)
        self.step_no = torch.zeros((), dtype=torch.int64, device=device)
        self.idx = torch.zeros(k, bs, dtype=torch.int64, device=device)
        self.draws: torch.Tensor | None = None
        self.coef: dict[str, torch.Tensor] = {}
        # The graph calls this step back through a weak reference: holding the bound
        # method would make step and graph a cycle, which keeps the graph's memory
        # pool and the group's tensors until the cyclic collector runs.
        fixed = weakref.WeakMethod(self._fixed)
        self.graph = accel.GRAPH_STEP[device.type](lambda: fixed()(), device) if use_graph else None

    def start_epoch(self, loss_sum, correct, running, step: int) -> None:
        self.loss_sum.copy_(loss_sum)
        self.correct.copy_(correct)
        self.running.copy_(running)
        self.last_finite.fill_(math.nan)
        self.diverged_at.zero_()
        self.step_no.fill_(step)

    def __call__(self, idx, draws, coef) -> torch.Tensor:
        """One step on batch ``idx`` (``K x rows``); returns the members' losses (``K``)."""
        if self.graph is None or idx.shape[1] != self.idx.shape[1]:
            return self.body(idx, draws, coef)
        self.idx.copy_(idx)
        if draws is not None:
            if self.draws is None:
                self.draws = torch.empty_like(draws)
            self.draws.copy_(draws)
        for name, value in coef.items():
            if name not in self.coef:
                self.coef[name] = torch.empty_like(value)
            self.coef[name].copy_(value)
        return self.graph()

    def _fixed(self) -> torch.Tensor:
        return self.body(self.idx, self.draws, self.coef)

    def body(self, idx, draws, coef) -> torch.Tensor:
        group, stack = self.group, self.group.stack
        k, rows = idx.shape
        x = group.prep.convert(group.train_set.images[idx.reshape(-1)])
        if draws is not None:
            x = group.prep.augment_with(x, draws)
        x = x.reshape(k, rows, *x.shape[1:])
        y = group.train_set.labels[idx]
        losses, hits = group.train_fn(stack.params, stack.buffers, x, y)
        stack.grad.zero_()
        with warnings.catch_warnings():
            # The grads are views into one K x P tensor on purpose (see _Stack).
            warnings.filterwarnings("ignore", message="grad and param do not obey")
            losses.sum().backward()
        losses = losses.detach()
        finite = torch.isfinite(losses)
        clip = group.cfg.train.grad_clip
        if clip is not None:
            norms = torch.linalg.vector_norm(stack.grad, dim=1)
            finite = finite & torch.isfinite(norms)
            stack.grad.mul_(torch.clamp(clip / (norms + 1e-6), max=1.0)[:, None])
        # A member whose loss is not finite takes no step and stays frozen (the trainer stops there).
        upd = self.running & finite
        self.step_no += 1
        self.diverged_at.copy_(torch.where(self.running & ~finite, self.step_no, self.diverged_at))
        self.last_finite.copy_(torch.where(upd, losses.float(), self.last_finite))
        with torch.no_grad():
            group.opt.step(stack.flat, stack.grad, coef, upd[:, None])
        self.running.copy_(upd)
        self.loss_sum += torch.where(upd, losses.double() * rows, 0.0)
        self.correct += torch.where(upd, hits, 0)
        return losses


def _train_epochs(
    group: _Group,
    emit: Callback,
    write_summary: Callable[..., Any],
    finish: Callable[[_Member, str], None],
) -> None:
    """Epochs of (train every running member, evaluate, record, checkpoint), as the trainer's."""
    cfg, stack, device, opt = group.cfg, group.stack, group.device, group.opt
    members = [m for m in group.members if m.status == "running"]
    if not members:
        return
    n, bs = len(group.train_set), cfg.train.batch_size
    spe, total_epochs = group.steps_per_epoch, cfg.train.epochs
    seeds = [c.train.seed for c in group.cfgs]
    running = torch.tensor([m.status == "running" for m in group.members], device=device)
    start_epoch, start_batch, step = (
        members[0].state.epoch,
        members[0].state.batch,
        members[0].state.step,
    )
    opt.steps = step
    stack.template.train()
    stepper = _Step(group, group.use_graph)
    for epoch in range(start_epoch, total_epochs):
        t_epoch = time.perf_counter()
        b0 = start_batch if epoch == start_epoch else 0
        partial = members[0].state.partial if b0 else {}
        stepper.start_epoch(
            torch.tensor(
                [
                    float((m.state.partial or {}).get("loss_sum", 0.0)) if b0 else 0.0
                    for m in group.members
                ],
                dtype=torch.float64,
            ),
            torch.tensor(
                [
                    int((m.state.partial or {}).get("correct", 0)) if b0 else 0
                    for m in group.members
                ],
                dtype=torch.int64,
            ),
            running,
            step,
        )
        seen = int(partial.get("seen", 0))
        epoch_seconds = float(partial.get("seconds", 0.0))
        step0 = step
        # Everything the epoch needs from the host goes to the device here, once.
        orders = torch.stack([epoch_order(n, s, epoch, "cpu") for s in seeds]).to(device)
        lrs = torch.tensor(
            [
                [lr_at(c.schedule, c.optim.lr, step0 + i, spe, total_epochs) for c in group.cfgs]
                for i in range(spe - b0)
            ],
            dtype=torch.float64,
        ).reshape(spe - b0, len(group.cfgs))
        # Steps x members x 1, also with no step left (a run stopped after its epoch's
        # last step and before the evaluation, whose empty lists would lose a dimension).
        coefs = {
            name: t.to(device=device, dtype=torch.float32).reshape(spe - b0, len(group.cfgs), 1)
            for name, t in opt.coefficients(lrs, step0).items()
        }
        draws = (
            epoch_draws(group.prep, seeds, epoch, n, bs, b0, device) if group.prep.random else None
        )
        try:
            with InterruptGate() as gate:
                for b in range(b0, spe):
                    # Ctrl-C is handled here, between steps, never inside one
                    # (engine/interrupts.py).
                    gate.check()
                    i = b - b0
                    idx = orders[:, b * bs : (b + 1) * bs]
                    rows = idx.shape[1]
                    losses = stepper(
                        idx,
                        draws[i] if draws is not None else None,
                        {name: t[i] for name, t in coefs.items()},
                    )
                    opt.steps += 1
                    seen += rows
                    step += 1
                    for m in members:
                        m.state.step, m.state.batch = step, b + 1
                    # The trainer's event (a 0-dim loss tensor, a float lr), plus every member's;
                    # built only for a listener (its mean is one more launch per step).
                    if emit is not _no_events:
                        emit(
                            "step",
                            {
                                "epoch": epoch + 1,
                                "batch": b + 1,
                                "steps": spe,
                                "loss": losses.mean(),
                                "lr": float(lrs[i, 0]),
                                "losses": losses,
                                "lrs": lrs[i].tolist(),
                            },
                        )
        except KeyboardInterrupt:
            _save_partial(
                group,
                members,
                stepper.loss_sum,
                stepper.correct,
                seen,
                epoch_seconds + time.perf_counter() - t_epoch,
                stepper.running,
            )
            raise
        loss_sum, correct, running = stepper.loss_sum, stepper.correct, stepper.running
        failure = stepper.graph.failure if stepper.graph is not None else None
        if failure is not None and GRAPH_NOTE in members[0].notes:
            # Said once: the graph note goes, the reason comes in its place.
            note = f"CUDA graph capture failed ({failure}); steps ran eagerly"
            log.warning(note)
            emit("note", {"text": note})
            for m in members:
                m.notes[m.notes.index(GRAPH_NOTE)] = note
                m.folder.log(f"note: {note}")
        diverged_at, last_finite = stepper.diverged_at, stepper.last_finite
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t_epoch
        epoch_seconds += seconds
        last_epoch = epoch + 1 == total_epochs
        val = group.evaluate(group.val_set)
        test = group.evaluate(group.test_set) if cfg.train.test_every_epoch or last_epoch else None
        # The one read of the epoch.
        tensors = [
            loss_sum,
            correct.double(),
            diverged_at.double(),
            last_finite.double(),
            running.double(),
        ]
        tensors += [t for ev in (val, test) if ev is not None for t in ev]
        host = torch.stack(tensors).cpu().tolist()
        loss_h, correct_h, diverged_h, finite_h, running_h = host[:5]
        val_h = host[5:7] if val is not None else None
        test_h = host[-2:] if test is not None else None
        for m in list(members):
            j, state = m.index, m.state
            state.train_seconds += seconds
            if not running_h[j]:
                at = int(diverged_h[j])
                state.step, state.batch = at - 1, 0
                m.diverged = {
                    "epoch": epoch + 1,
                    "step": at,
                    "last_finite_loss": None if math.isnan(finite_h[j]) else finite_h[j],
                    "lr": lr_at(m.cfg.schedule, m.cfg.optim.lr, at - 1, spe, total_epochs),
                }
                m.status = "diverged"
                d = m.diverged
                m.folder.log(
                    f"diverged at epoch {d['epoch']} step {d['step']} (last finite loss {d['last_finite_loss']}, lr {d['lr']:.4g})"
                )
                finish(m, "diverged")
                members.remove(m)
                continue
            row = {
                "epoch": epoch + 1,
                "train_loss": loss_h[j] / max(seen, 1),
                "train_acc": correct_h[j] / max(seen, 1),
                "val_loss": val_h[0][j] if val_h else None,
                "val_acc": val_h[1][j] if val_h else None,
                "test_loss": test_h[0][j] if test_h else None,
                "test_acc": test_h[1][j] if test_h else None,
                "lr": lr_at(m.cfg.schedule, m.cfg.optim.lr, step - 1, spe, total_epochs),
                "examples_per_sec": seen / epoch_seconds if epoch_seconds > 0 else None,
                "seconds": epoch_seconds,
            }
            state.rows.append(row)
            state.epoch, state.batch, state.partial = epoch + 1, 0, {}
            monitor = m.cfg.train.monitor
            monitored = (
                row[monitor]
                if row[monitor] is not None
                else (row["train_acc"] if monitor == "val_acc" else row["train_loss"])
            )
            if is_better(monitored, state.best_val, monitor):
                state.best_val, state.best_epoch, state.bad_epochs = monitored, epoch + 1, 0
                best = {
                    "model": stack.state_dict(j),
                    "epoch": epoch + 1,
                    **ckpt.fingerprints(m.cfg),
                }
                ckpt.save_checkpoint(best, m.folder.checkpoints / "best.pt", keep_previous=False)
            else:
                state.bad_epochs += 1
            group.save_last(m)
            m.folder.write_metrics(state.rows)
            m.folder.log(epoch_line(row))
            write_summary(m, "running")
            emit(
                "epoch",
                {
                    "row": row,
                    "epochs": total_epochs,
                    "best_val": state.best_val,
                    "best_epoch": state.best_epoch,
                    "member": j,
                    "path": m.path,
                },
            )
            if cfg.train.patience and state.bad_epochs >= cfg.train.patience:
                note = f"early stopping after epoch {epoch + 1}: no {monitor} improvement for {state.bad_epochs} epochs"
                m.notes.append(note)
                m.folder.log(f"note: {note}")
                emit("note", {"text": note, "member": j, "path": m.path})
                m.status = "stopped"
        stopped = [m for m in members if m.status == "stopped"]
        if len(group.test_set) and any(m.state.rows[-1]["test_acc"] is None for m in stopped):
            # The trainer measures the test split once, after the last epoch it trains.
            test_loss, test_acc = (t.tolist() for t in group.evaluate(group.test_set))
            for m in stopped:
                if m.state.rows[-1]["test_acc"] is None:
                    m.state.rows[-1].update(
                        test_loss=test_loss[m.index], test_acc=test_acc[m.index]
                    )
                    m.folder.write_metrics(m.state.rows)
                    group.save_last(m)
        for m in list(members):
            if m.status == "stopped" or last_epoch:
                m.status = "completed"
                finish(m, "completed")
                members.remove(m)
        if not members:
            break
        running = torch.tensor([m in members for m in group.members], device=device)


def _save_partial(
    group: _Group,
    members: list[_Member],
    loss_sum: torch.Tensor,
    correct: torch.Tensor,
    seen: int,
    seconds: float,
    running: torch.Tensor,
) -> None:
    """Ctrl-C inside an epoch: each running member's last.pt at the current batch, resumable by the trainer."""
    loss_h, correct_h, running_h = (
        torch.stack([loss_sum, correct.double(), running.double()]).cpu().tolist()
    )
    for m in members:
        if running_h[m.index]:
            m.state.partial = {
                "loss_sum": loss_h[m.index],
                "correct": int(correct_h[m.index]),
                "seen": seen,
                "seconds": seconds,
            }
            group.save_last(m)
