"""The training loop: ``train(config) -> Run``.

Reads top to bottom in the order a run happens: resolve the run folder and
device, seed, load data onto the device, build model and optimizer, restore a
checkpoint when resuming, then epochs of (train, evaluate, record, checkpoint).
Metrics, augmentation draws and the divergence flag live on the device; on an
accelerator the host reads them once per epoch, so it never waits for the
device inside an epoch (on the CPU the flag is read every step, which costs
nothing there and stops a diverging run at once; see :mod:`cnnlab.engine.accel`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import platform
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import cnnlab
from cnnlab.config import RunConfig, build_config, check_device, flatten, read_yaml, setting
from cnnlab.data import DataSplits
from cnnlab.engine import checkpoint as ckpt
from cnnlab.engine import distributed as D
from cnnlab.engine.accel import (
    check_every_step,
    cuda_only_notes,
    keep_freed_host_memory,
    make_current,
    release_device_memory,
    single_run_as_graph,
    sum_dtype,
    use_channels_last,
)
from cnnlab.engine.batches import BatchPipeline, epoch_draws, eval_batches, train_batches
from cnnlab.engine.inputs import (
    build_pipeline,
    input_size,
    load_run_data,
    prepare_splits,
    to_device,
)
from cnnlab.engine.interrupts import InterruptGate, deferred_interrupt
from cnnlab.engine.optim import build_optimizer, init_weights
from cnnlab.engine.run import (
    Run,
    RunFolder,
    check_run_name,
    default_run_name,
    finished_run_error,
    new_run_dir,
    refuse_existing_run,
)
from cnnlab.engine.schedules import lr_at
from cnnlab.errors import CheckpointError, ConfigError, RunError, first_line
from cnnlab.models import check_forward, create_model

log = logging.getLogger("cnnlab.train")

Callback = Callable[[str, dict[str, Any]], None]
_CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------- setup helpers


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist.

    ``option`` names the setting in errors (``--device`` for the commands that use a run).
    """
    check_device(name, option)
    given, use = setting(option, name), setting(option, "cpu").replace("'", "")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{given} but CUDA is not available here; use {use} or auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(
            f"{given} but this machine has {torch.cuda.device_count()} CUDA device(s);"
            f" use cuda:0 to cuda:{torch.cuda.device_count() - 1}, cuda or auto"
        )
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError(f"{given} but MPS is not available here; use {use} or auto")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch (CUDA too); optionally ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # Set either way: the switch is process-wide, and a study worker's next run
    # must not inherit the last one's. (cuBLAS reads CUBLAS_WORKSPACE_CONFIG once
    # per process; for deterministic matrix products on CUDA set it beforehand.)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cnnlab": cnnlab.__version__,
        "platform": platform.platform(),
    }


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index}"
    return device.type


def autocast_for(cfg: RunConfig, device: torch.device, *, cache: bool = True):
    """The run's autocast context; ``cache=False`` inside CUDA graphs (torch requires it there)."""
    if device.type == "cuda" and cfg.train.precision != "fp32":
        dtype = torch.bfloat16 if cfg.train.precision == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype, cache_enabled=cache)
    return torch.autocast(device.type, enabled=False)


# ---------------------------------------------------------------- state


@dataclass
class TrainState:
    """Everything besides the weights that a checkpoint must restore."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # next batch within the current epoch (mid-epoch checkpoints)
    step: int = 0  # optimizer steps taken
    best_val: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, float] = field(default_factory=dict)  # running sums of an unfinished epoch
    train_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def is_better(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value > best if monitor == "val_acc" else value < best


def best_metric(monitor: str, has_val: bool) -> str:
    """The metric that picked the best epoch, as summary.json's ``best`` names it.

    Without a validation split (``data.val_fraction=0``) the training metric is
    monitored instead; calling it ``val_acc`` would let a study rank by
    ``best_val_acc`` on training accuracy.
    """
    return monitor if has_val else monitor.replace("val_", "train_", 1)


def run_summary(
    name: str,
    status: str,
    *,
    cfg: RunConfig,
    state: TrainState,
    splits: DataSplits,
    sizes: dict[str, int],
    device: str,
    world_size: int,
    notes: list[str],
    t_start: float,
    **extra: Any,
) -> dict[str, Any]:
    """summary.json of a run: final and best metrics, timings, versions, data, model input.

    Shared by the trainer and fused groups, so both write the same record.
    """
    last = state.rows[-1] if state.rows else {}
    train_examples = sizes["train"] * len(state.rows)
    return {
        "name": name,
        "status": status,
        "final": {
            k: last.get(k)
            for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
        },
        "best": {
            best_metric(cfg.train.monitor, sizes["val"] > 0): state.best_val,
            "epoch": state.best_epoch,
        },
        "time": {
            "train_seconds": state.train_seconds,
            "total_seconds": time.perf_counter() - t_start,
            "examples_per_sec": train_examples / state.train_seconds
            if state.train_seconds
            else None,
        },
        "epochs_completed": state.epoch,
        "steps": state.step,
        "diverged": None,
        "error": None,
        "device": device,
        "world_size": world_size,
        "seed": cfg.train.seed,
        "versions": versions(),
        "data": {
            "name": splits.name,
            "source": splits.source,
            "fingerprint": splits.fingerprint[:16],
            "sizes": dict(sizes),
            "classes": list(splits.classes),
        },
        "model_input": {
            "in_channels": splits.in_channels,
            "image_size": list(splits.image_size),
            "input_size": list(input_size(splits, cfg.data)),
            "classes": list(splits.classes),
            "mean": list(splits.mean),
            "std": list(splits.std),
        },
        "notes": notes,
        "config": cfg.to_dict(),
        **extra,
    }


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_tensors(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    pipeline: BatchPipeline,
    *,
    batch_size: int,
    autocast=None,
    ctx: D.DistContext | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy over a split held as tensors; ``(nan, nan)`` when empty.

    In a distributed run each rank evaluates its shard and the sums are reduced.
    """
    n = len(images)
    if n == 0:
        return math.nan, math.nan
    ctx = ctx or D.DistContext()
    if ctx.enabled:
        D.broadcast_buffers(model)
    images, labels = D.shard(images, ctx), D.shard(labels, ctx)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=images.device, dtype=sum_dtype(images.device))
    correct = torch.zeros((), device=images.device, dtype=torch.int64)
    for x, y in eval_batches(images, labels, batch_size):
        with autocast or torch.autocast(images.device.type, enabled=False):
            out = model(pipeline(x))
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum").to(loss_sum.dtype)
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    D.all_reduce_sum(loss_sum, correct)
    return loss_sum.item() / n, correct.item() / n


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _shard_sizes(batch: int, world_size: int) -> set[int]:
    """The sizes of a batch's parts on ``world_size`` ranks (as ``D.shard`` splits it)."""
    return {len(part) for part in torch.arange(batch).tensor_split(world_size)}


def check_last_batch(
    model: nn.Module,
    n_train: int,
    batch_size: int,
    input_shape: tuple[int, int, int],
    world_size: int = 1,
) -> None:
    """Refuse a training set that would give a rank a batch of one image the model cannot train on.

    Batch norm over a vector (or a 1x1 map) cannot normalize one value per channel,
    and torch raises in the middle of the first epoch; a data loader would drop that
    batch silently, which changes what an epoch is. Only when some batch would be
    one image per rank, one training-mode forward pass of a copy of the model says
    whether it can take it (batch norm over larger maps can).
    """
    last = n_train % batch_size
    sizes = _shard_sizes(batch_size, world_size) | (
        _shard_sizes(last, world_size) if last else set()
    )
    if 1 not in sizes or not _has_batch_norm(model):
        return
    device = next(model.parameters()).device
    probe = copy.deepcopy(model).train()
    try:
        with torch.no_grad():
            probe(torch.zeros(1, *input_shape, device=device))
    except ValueError as exc:
        where = "a last batch" if 1 not in _shard_sizes(batch_size, world_size) else "batches"
        per = f" per rank ({world_size} ranks)" if world_size > 1 else ""
        raise ConfigError(
            f"train.batch_size={batch_size} leaves {where} of 1 image{per} of the {n_train} "
            f"training images, and this network cannot train on one ({first_line(exc)}); "
            "choose another train.batch_size or data.subset"
        ) from None


# ---------------------------------------------------------------- the run


def prepare_run_dir(
    config: RunConfig, run_dir: Path | None, name: str | None, runs_root: Path, resume: bool
) -> Path:
    if run_dir is None:
        run_dir = Path(runs_root) / (name or default_run_name(config))
    run_dir = Path(run_dir)
    if not resume:
        refuse_existing_run(run_dir)
    # Check now, create later: a run that fails before training leaves no empty folder behind.
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "not a folder" if not existing.is_dir() else "permission denied"
        raise RunError(f"cannot write to run folder {str(run_dir)!r}: {str(existing)!r} is {why}")
    return run_dir


def _refuse_restart_of_finished(path: Path) -> None:
    """A finished run without checkpoints would train again from scratch over its results."""
    checkpoints = path / "checkpoints"
    if (checkpoints / "last.pt").exists() or (checkpoints / "last.prev.pt").exists():
        return  # resuming a finished run from its checkpoint changes nothing
    if not (path / "summary.json").is_file():
        return
    error = finished_run_error(path, Run.load(path).summary)
    if error is not None:
        raise error


class _NullFolder:
    """What ranks other than 0 write: nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def _make_run_folder(path: Path, ctx: D.DistContext) -> RunFolder:
    if not ctx.is_main:
        return _NullFolder()  # type: ignore[return-value]
    try:
        return RunFolder(path)
    except OSError as exc:
        raise RunError(f"cannot write to run folder {str(path)!r}: {exc.strerror or exc}") from None


def train(
    config: RunConfig | Mapping[str, Any] | None = None,
    *,
    run_dir: str | Path | None = None,
    name: str | None = None,
    runs_root: str | Path = "runs",
    resume: bool = False,
    callback: Callback | None = None,
    splits: DataSplits | None = None,
) -> Run:
    """Train one model on one data set and leave a complete run folder.

    Args:
        config: the run config (a RunConfig or a nested dict); defaults = textbook LeNet-5.
            When resuming, ``None`` means "the config saved in the run folder".
        run_dir: the run folder; default ``runs_root/name``.
        name: run name; default a timestamp plus model and data names.
        resume: continue from ``run_dir/checkpoints/last.pt`` (falls back to the
            previous good checkpoint if the newest is corrupt; starts fresh if none).
        callback: ``callback(event, info)`` for progress ("start", "step", "epoch", "end", "note").
        splits: already-loaded data (skips loading; subset/permutation still applied).

    Returns:
        The :class:`Run`; a diverged run returns normally with status ``diverged``.
    """
    t_start = time.perf_counter()
    emit = callback or (lambda event, info: None)

    if resume and config is None:
        if run_dir is None:
            raise RunError("resume needs the run folder")
        cfg_file = Path(run_dir) / "config.yaml"
        if not cfg_file.is_file():
            raise RunError(
                f"{str(run_dir)!r} is not a run folder (no config.yaml); nothing to resume"
            )
        config = build_config(read_yaml(cfg_file))
    if config is None:
        config = RunConfig()
    if not isinstance(config, RunConfig):
        config = build_config(config)
    cfg = config

    if run_dir is None and name is not None:
        check_run_name(name)
    if run_dir is None and not resume and D.launched_rank() == 0:
        # Other ranks of a torchrun share the folder rank 0 creates.
        run_dir = new_run_dir(runs_root, name or default_run_name(cfg))
    path = prepare_run_dir(cfg, Path(run_dir) if run_dir else None, name, Path(runs_root), resume)
    if resume:
        _refuse_restart_of_finished(path)
    ctx, device = D.setup(resolve_device(cfg.train.device))
    keep_freed_host_memory(device)
    make_current(device)
    path = Path(D.broadcast_text(str(path), ctx))
    if _as_graph_group(cfg, ctx, device):
        from cnnlab.engine.fused import train_group  # releases its device memory itself

        return train_group([cfg], [path], splits=splits, callback=callback, resume=resume)[0]
    try:
        run = _train(cfg, path, ctx, device, resume, emit, splits, t_start)
    except BaseException:
        D.teardown(ctx, wait=False)  # the other ranks may be gone (Ctrl-C, an error)
        raise
    finally:
        release_device_memory(device)
    D.teardown(ctx)
    return run


def _as_graph_group(cfg: RunConfig, ctx: D.DistContext, device: torch.device) -> bool:
    """Whether this run trains as a fused group of one, whose steps replay as CUDA graphs.

    The fused engine already keeps every step's inputs in fixed device buffers,
    which is what graph replay needs; it covers everything but multi-process
    runs, fp16's loss scaler, TensorBoard files and a few optimizers
    (:func:`cnnlab.engine.fused.fusable_key`). Its results equal this trainer's
    to float rounding (tests/engine/test_fused.py); dropout masks are drawn
    from the group's generator instead.
    """
    if ctx.enabled or device.type != "cuda":
        return False
    from cnnlab.engine.fused import fusable_key, step_macs

    if fusable_key(cfg) is None:
        return False
    return single_run_as_graph(cfg.train.cuda_graph, device, cfg.train.compile, step_macs(cfg))


def _train(
    cfg: RunConfig,
    path: Path,
    ctx: D.DistContext,
    device: torch.device,
    resume: bool,
    emit: Callback,
    splits: DataSplits | None,
    t_start: float,
) -> Run:
    """The run itself, once the folder, device and process group are settled."""
    if not ctx.is_main:
        emit = lambda event, info: None
    notes: list[str] = []
    notes += cuda_only_notes(cfg.train.precision, cfg.train.cuda_graph, device)

    seed_everything(cfg.train.seed, cfg.train.deterministic)

    # -- data, resident on the device
    if splits is None:
        splits = load_run_data(
            cfg.data,
            progress=lambda task, done, total: emit(
                "data", {"task": task, "done": done, "total": total}
            ),
        )
    else:
        splits = prepare_splits(splits, cfg.data)
    train_set, val_set, test_set = (
        to_device(s, device) for s in (splits.train, splits.val, splits.test)
    )

    # -- model and optimizer
    size = input_size(splits, cfg.data)
    model = create_model(
        cfg.model.name,
        num_classes=splits.num_classes,
        in_channels=splits.in_channels,
        input_size=size,
        **cfg.model.options(),
    )
    init_weights(model, cfg.model.init)
    model.to(device)
    # One real forward pass before the run folder exists: a model that cannot run fails here.
    check_forward(model, splits.in_channels, size, name=cfg.model.name, options=cfg.model.options())
    check_last_batch(
        model,
        len(train_set),
        cfg.train.batch_size,
        (splits.in_channels, *size),
        ctx.world_size if ctx.enabled else 1,
    )
    channels_last = use_channels_last(cfg.train.channels_last, model, device, cfg.train.precision)
    pipeline = build_pipeline(splits, cfg.data, channels_last=channels_last).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(
        "cuda", enabled=device.type == "cuda" and cfg.train.precision == "fp16"
    )
    forward = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        if _has_batch_norm(model):
            notes.append(
                "batch norm statistics are per rank (per shard of each batch) in this distributed run"
            )
    if cfg.train.compile:
        forward = torch.compile(forward)
    autocast = autocast_for(cfg, device)

    folder = _make_run_folder(path, ctx)
    board = _open_tensorboard(cfg, path, notes) if ctx.is_main else None

    # -- restore
    state = TrainState()
    if resume:
        try:
            saved, used = ckpt.load_latest_good(path / "checkpoints", "last")
        except CheckpointError as exc:
            if (path / "checkpoints" / "last.pt").exists() or (
                path / "checkpoints" / "last.prev.pt"
            ).exists():
                raise
            saved, used = None, None
            notes.append(f"no checkpoint to resume from ({exc}); starting from the beginning")
        if saved is not None:
            if not ckpt.resumes(saved, cfg):
                raise CheckpointError(
                    f"checkpoint {str(used)!r} was written by a different config; resume needs the run's own config.yaml"
                )
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            if saved.get("scaler"):  # empty when written with the scaler off (not fp16)
                scaler.load_state_dict(saved["scaler"])
            state = TrainState(**saved["state"])
            ckpt.set_rng_state(saved["rng"], device)
            if used.name != "last.pt":
                notes.append(f"newest checkpoint unusable; resumed from {used.name}")
    total_epochs = cfg.train.epochs
    last_epoch = total_epochs
    if state.epoch >= total_epochs or (
        cfg.train.patience and state.bad_epochs >= cfg.train.patience
    ):
        done = Run.load(path)
        if done.summary.get("status") in ("completed", "diverged"):
            return done  # nothing to do, and nothing in the folder is touched
        # Stopped after the last epoch's checkpoint and before the summary:
        # no epoch left to train, the run is only finished (test, curves, summary).
        last_epoch = state.epoch
        if cfg.train.patience and state.bad_epochs >= cfg.train.patience:
            # Early stopping ended it; the process that decided so did not live to say so.
            notes.append(_early_stopping_note(cfg, state))
    folder.write_config(cfg)

    steps_per_epoch = math.ceil(len(train_set) / cfg.train.batch_size)
    dev_label = device_label(device)
    for note in notes:
        log.info(note)
        folder.log(f"note: {note}")
        emit("note", {"text": note})
    folder.log(f"config: {cfg.short()}")
    if resume and state.step > 0:
        folder.log(
            f"resumed after epoch {state.epoch} (step {state.step}) from the saved checkpoint"
        )
    emit(
        "start",
        {
            "config": cfg,
            "path": path,
            "device": dev_label if not ctx.enabled else f"{ctx.world_size} x {dev_label}",
            "epochs": total_epochs,
            "start_epoch": state.epoch,
            "steps_per_epoch": steps_per_epoch,
            "num_train": len(train_set),
            "resumed": resume and state.step > 0,
        },
    )

    def summary(status: str, **extra: Any) -> dict[str, Any]:
        return run_summary(
            path.name,
            status,
            cfg=cfg,
            state=state,
            splits=splits,
            sizes={"train": len(train_set), "val": len(val_set), "test": len(test_set)},
            device=dev_label,
            world_size=ctx.world_size,
            notes=notes,
            t_start=t_start,
            **extra,
        )

    def checkpoint_state() -> dict[str, Any]:
        return {
            "version": _CHECKPOINT_VERSION,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "state": state.to_dict(),
            "rng": ckpt.rng_state(device),
            **ckpt.fingerprints(cfg),
        }

    def save_last() -> None:
        if ctx.is_main:
            ckpt.save_checkpoint(checkpoint_state(), folder.checkpoints / "last.pt")

    folder.write_summary(summary("running"))
    model.train()
    status = "completed"
    diverged: dict[str, Any] | None = None
    # Whether the current epoch's training time is not yet in epoch_seconds/train_seconds
    # (an interrupt then adds it; after the batch loop it is in, and must not count twice).
    epoch_open = False
    nonfinite: torch.Tensor | None = None  # the current epoch's divergence flag
    try:
        for epoch in range(state.epoch, last_epoch):
            t_epoch = time.perf_counter()
            epoch_open = True
            p = state.partial or {}
            loss_sum = torch.tensor(p.get("loss_sum", 0.0), device=device, dtype=sum_dtype(device))
            correct = torch.tensor(int(p.get("correct", 0)), device=device, dtype=torch.int64)
            seen = int(p.get("seen", 0))
            epoch_seconds = float(p.get("seconds", 0.0))
            nonfinite = torch.zeros((), device=device, dtype=torch.bool)
            last_finite = torch.tensor(math.nan, device=device)
            first_bad = torch.zeros((), device=device, dtype=torch.int64)  # 1-based step, 0 = none
            every_step = check_every_step(device)
            lr = optimizer.param_groups[0]["lr"]
            start_batch = state.batch
            draws = (
                epoch_draws(
                    pipeline,
                    [cfg.train.seed],
                    epoch,
                    len(train_set),
                    cfg.train.batch_size,
                    start_batch,
                    device,
                )
                if pipeline.random
                else None
            )
            with InterruptGate() as gate, D.interrupted_with_peers(gate, ctx):
                for b, xb, yb in train_batches(
                    train_set.images,
                    train_set.labels,
                    batch_size=cfg.train.batch_size,
                    seed=cfg.train.seed,
                    epoch=epoch,
                    start_batch=start_batch,
                ):
                    # Ctrl-C is handled here, between steps: inside one, the weights,
                    # batch-norm statistics or RNG may have moved on before it is counted.
                    gate.check()
                    lr = lr_at(
                        cfg.schedule, cfg.optim.lr, state.step, steps_per_epoch, total_epochs
                    )
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    x = pipeline(
                        xb, train=True, draws=draws[b - start_batch] if draws is not None else None
                    )
                    n_global = len(yb)
                    if ctx.enabled:
                        x, yb = D.shard(x, ctx), D.shard(yb, ctx)
                    with autocast:
                        out = forward(x)
                        # A last batch smaller than the ranks leaves some shard empty; its
                        # zero loss keeps it in DDP's gradient reduction (a mean over no
                        # rows would be NaN, and NaN times its weight 0 still NaN).
                        loss = (
                            F.cross_entropy(
                                out.float(), yb, label_smoothing=cfg.train.label_smoothing
                            )
                            if len(yb)
                            else out.float().sum() * 0.0
                        )
                    optimizer.zero_grad(set_to_none=True)
                    # DDP averages gradients over ranks; weighting each shard by its share of
                    # the global batch makes the update equal to the single-process one.
                    scaled = loss * (len(yb) * ctx.world_size / n_global) if ctx.enabled else loss
                    scaler.scale(scaled).backward()
                    finite = torch.isfinite(loss.detach())
                    if cfg.train.grad_clip is not None:
                        scaler.unscale_(optimizer)
                        norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                        if not scaler.is_enabled():
                            # With fp16's scaler an infinite norm is its overflow, which
                            # it handles by skipping the step, not a divergence.
                            finite = finite & torch.isfinite(norm)
                    # Up to the first non-finite step, remember the last finite loss and that
                    # step; later steps (on accelerators, the rest of the epoch) change neither.
                    fresh = ~finite & ~nonfinite
                    first_bad = torch.where(fresh, state.step + 1, first_bad)
                    last_finite = torch.where(
                        finite & ~nonfinite, loss.detach().float(), last_finite
                    )
                    nonfinite |= ~finite
                    if every_step or b + 1 == steps_per_epoch:
                        if ctx.enabled:
                            flag = nonfinite.to(torch.int32)
                            D.all_reduce_sum(flag)
                            nonfinite = flag > 0
                        if nonfinite.item():
                            diverged = _divergence(
                                cfg, epoch, first_bad, last_finite, state, steps_per_epoch
                            )
                            break
                    scaler.step(optimizer)
                    scaler.update()
                    # The batch's sums first, then the position: an interrupt between them
                    # must not leave a trained batch out of the epoch's numbers.
                    batch_loss = loss.detach().to(loss_sum.dtype) * len(yb)
                    batch_correct = (out.detach().argmax(1) == yb).sum()
                    if ctx.enabled:
                        # Summed over ranks every step, in step with the gradients: the
                        # sums a Ctrl-C saves are then the whole batch's, whatever the
                        # number of ranks that resumes them.
                        both = torch.stack([batch_loss, batch_correct.to(loss_sum.dtype)])
                        D.all_reduce_sum(both)
                        batch_loss, batch_correct = both[0], both[1].to(torch.int64)
                    loss_sum += batch_loss
                    correct += batch_correct
                    seen += n_global
                    state.step += 1
                    state.batch = b + 1
                    emit(
                        "step",
                        {
                            "epoch": epoch + 1,
                            "batch": b + 1,
                            "steps": steps_per_epoch,
                            "loss": loss.detach(),
                            "lr": lr,
                        },
                    )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - t_epoch
            epoch_seconds += elapsed
            state.train_seconds += elapsed
            epoch_open = False
            if diverged is not None:
                status = "diverged"
                folder.log(
                    f"diverged at epoch {diverged['epoch']} step {diverged['step']} "
                    f"(last finite loss {diverged['last_finite_loss']}, lr {diverged['lr']:.4g})"
                )
                break

            val_loss, val_acc = evaluate_tensors(
                model,
                val_set.images,
                val_set.labels,
                pipeline,
                batch_size=cfg.train.eval_batch_size,
                autocast=autocast,
                ctx=ctx,
            )
            test_loss = test_acc = None
            if cfg.train.test_every_epoch or epoch + 1 == total_epochs:
                test_loss, test_acc = evaluate_tensors(
                    model,
                    test_set.images,
                    test_set.labels,
                    pipeline,
                    batch_size=cfg.train.eval_batch_size,
                    autocast=autocast,
                    ctx=ctx,
                )
            row = {
                "epoch": epoch + 1,
                "train_loss": loss_sum.item() / max(seen, 1),
                "train_acc": correct.item() / max(seen, 1),
                "val_loss": None if math.isnan(val_loss) else val_loss,
                "val_acc": None if math.isnan(val_acc) else val_acc,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "lr": lr,
                "examples_per_sec": seen / epoch_seconds if epoch_seconds > 0 else None,
                "seconds": epoch_seconds,
            }
            monitored = (
                row[cfg.train.monitor]
                if row[cfg.train.monitor] is not None
                else (row["train_acc"] if cfg.train.monitor == "val_acc" else row["train_loss"])
            )
            better = is_better(monitored, state.best_val, cfg.train.monitor)
            if better and ctx.is_main:
                ckpt.save_checkpoint(
                    {"model": model.state_dict(), "epoch": epoch + 1, **ckpt.fingerprints(cfg)},
                    folder.checkpoints / "best.pt",
                    keep_previous=False,
                )
            # The epoch ends here, all at once: an interrupt before this block resumes at
            # the epoch's end (evaluated and compared again), one after it at the next epoch.
            with deferred_interrupt():
                if better:
                    state.best_val, state.best_epoch, state.bad_epochs = monitored, epoch + 1, 0
                else:
                    state.bad_epochs += 1
                state.rows.append(row)
                state.epoch, state.batch, state.partial = epoch + 1, 0, {}
                save_last()
            folder.write_metrics(state.rows)
            folder.log(epoch_line(row))
            folder.write_summary(summary("running"))
            if board is not None:
                for key, value in row.items():
                    if key != "epoch" and value is not None:
                        board.add_scalar(key, value, epoch + 1)
                board.flush()
            emit(
                "epoch",
                {
                    "row": row,
                    "epochs": total_epochs,
                    "best_val": state.best_val,
                    "best_epoch": state.best_epoch,
                },
            )
            if cfg.train.patience and state.bad_epochs >= cfg.train.patience:
                note = _early_stopping_note(cfg, state)
                notes.append(note)
                folder.log(f"note: {note}")
                emit("note", {"text": note})
                break
    except KeyboardInterrupt:
        # On an accelerator the flag is read at the epoch's end, so this epoch may have
        # gone non-finite before the interrupt. Its NaN weights are no point to resume
        # from: last.pt keeps the one before, and the resumed run diverges at the same
        # step again and records it (not the first step after the resume).
        unseen_divergence = nonfinite is not None and bool(nonfinite.item())
        where = f"epoch {state.epoch + 1} batch {state.batch}"
        if unseen_divergence:
            where += " after a non-finite loss in this epoch (the checkpoint before it is kept)"
        else:
            if state.batch == 0:
                # Between epochs (the last one's numbers are in its row): nothing is partial.
                state.partial = {}
            else:
                # Keep the partial epoch so --resume continues at the next batch.
                elapsed = time.perf_counter() - t_epoch if epoch_open else 0.0
                state.train_seconds += elapsed
                state.partial = {
                    "loss_sum": float(loss_sum.item()),
                    "correct": int(correct.item()),
                    "seen": seen,
                    "seconds": epoch_seconds + elapsed,
                }
            save_last()
        folder.write_metrics(state.rows)
        folder.write_summary(summary("interrupted"))
        folder.write_curves(state.rows, title=path.name)
        folder.log(f"interrupted at {where}; resume with: cnnlab train --resume {path}")
        raise

    if status == "completed" and state.rows and state.rows[-1].get("test_acc") is None:
        # Early stopping: the test split is measured once, at the end.
        test_loss, test_acc = evaluate_tensors(
            model,
            test_set.images,
            test_set.labels,
            pipeline,
            batch_size=cfg.train.eval_batch_size,
            autocast=autocast,
            ctx=ctx,
        )
        state.rows[-1].update(test_loss=test_loss, test_acc=test_acc)
        folder.write_metrics(state.rows)
        save_last()
    final = summary(status, diverged=diverged)
    if board is not None:
        metrics = {f"final/{k}": v for k, v in final["final"].items() if v is not None}
        hparams = {
            k: (v if isinstance(v, (int, float, str, bool)) else str(v))
            for k, v in flatten(cfg.to_dict()).items()
            if v is not None
        }
        board.add_hparams(hparams, metrics, run_name=".")
        board.close()
    folder.write_metrics(state.rows)
    folder.write_curves(state.rows, title=path.name)
    folder.log(summary_line(final))
    # Last: a finished summary.json marks the whole folder finished (a study
    # reuses such a folder as it is, so nothing may be missing after it).
    folder.write_summary(final)
    emit("end", {"summary": final, "path": path})
    return Run(path=path, config=cfg, summary=final)


def _early_stopping_note(cfg: RunConfig, state: TrainState) -> str:
    return (
        f"early stopping after epoch {state.epoch}: no {cfg.train.monitor} improvement"
        f" for {state.bad_epochs} epochs"
    )


def _divergence(
    cfg: RunConfig,
    epoch: int,
    first_bad: torch.Tensor,
    last_finite: torch.Tensor,
    state: TrainState,
    steps_per_epoch: int,
) -> dict[str, Any]:
    """The ``diverged`` record of summary.json, from the device-side bookkeeping.

    The step and lr are those of the first non-finite loss; where the flag was
    read only at the epoch end, later steps ran on non-finite weights and are
    not counted.
    """
    step = int(first_bad.item()) or state.step + 1
    state.step = step - 1
    finite = last_finite.item()
    return {
        "epoch": epoch + 1,
        "step": step,
        "last_finite_loss": None if math.isnan(finite) else finite,
        "lr": lr_at(cfg.schedule, cfg.optim.lr, step - 1, steps_per_epoch, cfg.train.epochs),
    }


def _open_tensorboard(cfg: RunConfig, path: Path, notes: list[str]):
    """A SummaryWriter in the run folder, or None (with a note) when tensorboard is missing."""
    if not cfg.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        notes.append(
            "train.tensorboard=true but the tensorboard package is not installed "
            "(pip install tensorboard); no event files written"
        )
        return None
    return SummaryWriter(log_dir=str(path / "tensorboard"))


def epoch_line(row: Mapping[str, Any]) -> str:
    parts = [f"epoch {row['epoch']}"]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc"):
        if row.get(key) is not None:
            parts.append(f"{key.replace('_', ' ')} {row[key]:.4f}")
    parts.append(f"lr {row['lr']:.4g}")
    if row.get("examples_per_sec"):
        parts.append(f"{row['examples_per_sec']:,.0f} ex/s")
    return ", ".join(parts)


def summary_line(summary: Mapping[str, Any]) -> str:
    """The textbook's closing line: ``loss 0.469, train acc 0.821, test acc 0.809, 11,069 examples/sec on cuda:0``."""
    f = summary.get("final", {})
    t = summary.get("time", {})
    if summary.get("status") == "diverged":
        d = summary.get("diverged") or {}
        return f"diverged at epoch {d.get('epoch')} step {d.get('step')} (lr {d.get('lr')}); last finite loss {d.get('last_finite_loss')}"

    def num(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    speed = t.get("examples_per_sec")
    speed_s = f"{speed:,.0f}" if speed else "n/a"
    return (
        f"loss {num(f.get('train_loss'))}, train acc {num(f.get('train_acc'))}, "
        f"test acc {num(f.get('test_acc'))}, {speed_s} examples/sec on {summary.get('device')}"
    )
