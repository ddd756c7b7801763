"""Learning-rate schedules as pure functions of the step.

The lr is a function of (step, steps per epoch, total steps) only, so a resumed
run needs nothing but its step counter to continue the schedule exactly, and a
schedule can be plotted or tested without building an optimizer.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from cnnlab.config import ScheduleConfig
from cnnlab.registry import Registry

# name -> f(cfg, base_lr, epoch_float, total_epochs) -> lr
SCHEDULES: Registry[Callable[[ScheduleConfig, float, float, int], float]] = Registry("schedule")


@SCHEDULES.register("constant")
def _constant(cfg: ScheduleConfig, lr: float, epoch: float, epochs: int) -> float:
    """The same lr throughout."""
    return lr


@SCHEDULES.register("step")
def _step(cfg: ScheduleConfig, lr: float, epoch: float, epochs: int) -> float:
    """Multiply by gamma every step_size epochs (decays at epoch boundaries)."""
    return lr * cfg.gamma ** (int(epoch) // cfg.step_size)


@SCHEDULES.register("multistep")
def _multistep(cfg: ScheduleConfig, lr: float, epoch: float, epochs: int) -> float:
    """Multiply by gamma at each milestone epoch."""
    return lr * cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), int(epoch))


@SCHEDULES.register("exponential")
def _exponential(cfg: ScheduleConfig, lr: float, epoch: float, epochs: int) -> float:
    """Multiply by gamma after every epoch."""
    return lr * cfg.gamma ** int(epoch)


@SCHEDULES.register("cosine")
def _cosine(cfg: ScheduleConfig, lr: float, epoch: float, epochs: int) -> float:
    """Linear warm-up, then half a cosine from lr down to min_lr, per step."""
    warm = min(cfg.warmup_epochs, epochs)
    if epoch < warm:
        return lr * (epoch + 1e-12) / warm
    span = max(epochs - warm, 1e-12)
    t = min((epoch - warm) / span, 1.0)
    return cfg.min_lr + (lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))


@SCHEDULES.register("onecycle")
def _onecycle(cfg: ScheduleConfig, lr: float, epoch: float, epochs: int) -> float:
    """Cosine rise from lr/25 to lr over pct_start, then cosine fall to lr/1e4 (as torch's OneCycleLR)."""
    t = min(epoch / max(epochs, 1e-12), 1.0)
    start, peak, end = lr / 25.0, lr, lr / 25.0 / 1e4
    if t < cfg.pct_start:
        u = t / cfg.pct_start
        return peak + (start - peak) * 0.5 * (1 + math.cos(math.pi * u))
    u = (t - cfg.pct_start) / (1 - cfg.pct_start)
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * u))


def lr_at(
    cfg: ScheduleConfig, base_lr: float, step: int, steps_per_epoch: int, epochs: int
) -> float:
    """The lr for optimizer step ``step`` (0-based) of a run of ``epochs`` epochs."""
    epoch = step / max(steps_per_epoch, 1)
    return SCHEDULES.get(cfg.name)(cfg, base_lr, epoch, epochs)


def depends_on_epochs(cfg: ScheduleConfig) -> bool:
    """Whether the lr at a given epoch changes with the total epoch count.

    Studies use this: for schedules that don't, a 10-epoch run is exactly the
    first 10 epochs of a 100-epoch run, so an epochs factor can be read off curves.
    """
    return cfg.name in ("cosine", "onecycle")
