"""Using a finished run: reload its model, evaluate a split, predict splits or image files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cnnlab.data import transforms as T
from cnnlab.engine import checkpoint as ckpt
from cnnlab.engine.batches import BatchPipeline, eval_batches
from cnnlab.engine.inputs import build_pipeline, load_run_data
from cnnlab.engine.run import Run, check_output_file
from cnnlab.engine.trainer import resolve_device
from cnnlab.errors import DataError, RunError
from cnnlab.models import create_model

SPLITS = ("train", "val", "test")


def model_input(run: Run) -> dict[str, Any]:
    """What the model was trained on: channels, input size, classes, normalization."""
    info = run.summary.get("model_input")
    if not info:
        raise RunError(
            f"run {str(run.path)!r} has no finished summary.json; train or resume it first"
        )
    return info


def load_model(
    run: Run, checkpoint: str = "best", device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """Rebuild the run's model and load ``best`` or ``last`` weights (weights_only)."""
    info = model_input(run)
    model = create_model(
        run.config.model.name,
        num_classes=len(info["classes"]),
        in_channels=info["in_channels"],
        input_size=tuple(info["input_size"]),
        check=False,
        **run.config.model.options(),
    )
    path = run.checkpoint_path(checkpoint)
    state = ckpt.load_checkpoint(path)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def run_pipeline(run: Run) -> BatchPipeline:
    info = model_input(run)
    cfg = run.config.data
    mean, std = (tuple(info["mean"]), tuple(info["std"])) if cfg.normalize else ((), ())
    size = tuple(info["input_size"]) if cfg.resize else None
    return BatchPipeline(mean=mean, std=std, size=size)


@torch.no_grad()
def logits_for(
    model: torch.nn.Module, images: torch.Tensor, pipeline: BatchPipeline, batch_size: int = 1024
) -> torch.Tensor:
    """Logits for uint8 images, in order, computed in batches."""
    device = next(model.parameters()).device
    outs = [
        model(pipeline(x.to(device))).float().cpu()
        for x, _ in eval_batches(images, images[:, 0, 0, 0], batch_size)
    ]
    return torch.cat(outs) if outs else torch.empty(0, 0)


@dataclass
class Evaluation:
    split: str
    checkpoint: str
    loss: float
    accuracy: float
    per_class: dict[str, float]
    confusion: torch.Tensor  # [true, predicted] counts
    classes: tuple[str, ...]
    confusion_png: Path | None = None


def _split_data(run: Run, split: str):
    if split not in SPLITS:
        raise RunError(f"split {split!r} is not allowed; choose one of: {', '.join(SPLITS)}")
    splits = load_run_data(run.config.data)
    return getattr(splits, split), splits


def evaluate_run(
    run: Run,
    split: str = "test",
    checkpoint: str = "best",
    device: str = "auto",
    write_png: bool = True,
) -> Evaluation:
    """Loss, accuracy, per-class accuracy and confusion matrix of a run on one split."""
    if write_png:  # a read-only run folder fails before the work, as explain's outputs do
        check_output_file(run.path / "confusion.png")
    data, splits = _split_data(run, split)
    if len(data) == 0:
        raise RunError(
            f"split {split!r} of {splits.name!r} is empty for this run (val_fraction=0?)"
        )
    dev = resolve_device(device)
    model = load_model(run, checkpoint, dev)
    logits = logits_for(model, data.images, run_pipeline(run))
    labels = data.labels
    loss = F.cross_entropy(logits, labels).item()
    pred = logits.argmax(1)
    k = len(splits.classes)
    confusion = torch.bincount(labels * k + pred, minlength=k * k).reshape(k, k)
    totals = confusion.sum(1)
    per_class = {
        c: (confusion[i, i] / totals[i]).item() if totals[i] else float("nan")
        for i, c in enumerate(splits.classes)
    }
    result = Evaluation(
        split,
        checkpoint,
        loss,
        (pred == labels).float().mean().item(),
        per_class,
        confusion,
        tuple(splits.classes),
    )
    if write_png:
        result.confusion_png = plot_confusion(
            confusion,
            splits.classes,
            run.path / "confusion.png",
            title=f"{run.name} — {split} ({checkpoint})",
        )
    return result


def plot_confusion(confusion: torch.Tensor, classes, out: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(classes)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    norm = confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), [str(c) for c in classes], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), [str(c) for c in classes], fontsize=8)
        for i in range(k):
            for j in range(k):
                v = int(confusion[i, j])
                if v:
                    ax.text(
                        j,
                        i,
                        str(v),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=100)
    except OSError as exc:
        raise RunError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out


@dataclass
class SplitPredictions:
    classes: tuple[str, ...]
    predicted: torch.Tensor  # class index per example, data order
    probs: torch.Tensor  # N x K


def predict_split(
    run: Run, split: str = "test", checkpoint: str = "best", device: str = "auto"
) -> SplitPredictions:
    data, splits = _split_data(run, split)
    model = load_model(run, checkpoint, resolve_device(device))
    probs = logits_for(model, data.images, run_pipeline(run)).softmax(1)
    return SplitPredictions(tuple(splits.classes), probs.argmax(1), probs)


def read_image_file(path: str | Path, in_channels: int, size: tuple[int, int]) -> torch.Tensor:
    """An image file as uint8 C x H x W, read as image folders read it (16-bit gray
    scaled, not clipped), converted to the run's channels and resized to ``size``."""
    from cnnlab.data.imagefolder import read_image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {str(path)!r} does not exist")
    try:
        array = read_image(path, "L" if in_channels == 1 else "RGB", size)
    except DataError as exc:
        reason = str(exc).removeprefix(f"cannot decode image {path}: ")
        raise DataError(f"cannot read image file {str(path)!r}: {reason}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


@dataclass
class FilePrediction:
    file: str
    predicted: str
    top: list[tuple[str, float]]


def read_run_images(run: Run, files) -> torch.Tensor:
    """Image files as the run's uint8 data: its channels, its stored image size, and its
    fixed pixel permutation when it trained with ``data.permute_pixels`` (applied to the
    splits once when they load, so the batch pipeline does not repeat it).

    Without the permutation a permuted run sees files in an order it never learned and
    its predictions are close to chance.
    """
    info = model_input(run)
    size = tuple(info.get("image_size") or info["input_size"])
    batch = torch.stack([read_image_file(f, int(info["in_channels"]), size) for f in files])
    cfg = run.config.data
    if cfg.permute_pixels:
        batch = T.permute_pixels(batch, T.pixel_permutation(*size, cfg.permute_seed))
    return batch


def predict_files(
    run: Run, files, checkpoint: str = "best", top_k: int = 3, device: str = "auto"
) -> list[FilePrediction]:
    """Predict image files, converted, resized, permuted and normalized as in training."""
    info = model_input(run)
    batch = read_run_images(run, files)
    model = load_model(run, checkpoint, resolve_device(device))
    probs = logits_for(model, batch, run_pipeline(run)).softmax(1)
    classes = info["classes"]
    k = max(1, min(top_k, len(classes)))
    out = []
    for f, p in zip(files, probs):
        values, idx = p.topk(k)
        top = [(classes[i], v) for i, v in zip(idx.tolist(), values.tolist())]
        out.append(FilePrediction(str(f), top[0][0], top))
    return out


__all__ = [
    "Evaluation",
    "build_pipeline",
    "evaluate_run",
    "load_model",
    "predict_files",
    "predict_split",
    "read_run_images",
]
