"""The explanation tools applied to a finished run folder: what the ``cnnlab`` commands call.

Each function reloads the run's model and preprocessing, picks the images
(image files, or a split of the run's data set), computes, and writes its
files; it returns the paths and numbers so callers (the CLI, notebooks) decide
what to show.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnlab.errors import ExplainError
from cnnlab.explain.attribution import MethodOptions
from cnnlab.explain.core import explain
from cnnlab.explain.methods import METHODS
from cnnlab.explain.views import (
    ClassAccuracy,
    confident_mistakes,
    feature_maps,
    layer_kernels,
    per_class_accuracy,
)

SPLITS = ("train", "val", "test")
#: Images explained when neither files, --images nor --split is given.
DEFAULT_COUNT = 8
#: File types the figures can be written as (matplotlib picks the format from the suffix).
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
_INDEX = re.compile(r"^(?:(train|val|test):)?(\d+)$")
#: Text meant as ``N`` or ``SPLIT:N`` that is not one (a split name or index that does not exist).
_INDEX_LIKE = re.compile(r"^(?:[\w-]*:)?\s*[-+]?[\d.,]+$|^[\w-]*:\s*\w*$")


@dataclass
class Images:
    """Images picked for a command: uint8 as stored, labels when known, a name for each."""

    pixels: torch.Tensor
    labels: torch.Tensor | None
    names: list[str]


@dataclass
class _Loaded:
    model: torch.nn.Module
    pipeline: object
    classes: list[str]


def _model_input(run) -> dict:
    from cnnlab.engine.evaluate import model_input

    return model_input(run)


def _load(run, checkpoint: str, device: str) -> _Loaded:
    from cnnlab.engine.evaluate import load_model, run_pipeline
    from cnnlab.engine.trainer import resolve_device

    model = load_model(run, checkpoint=checkpoint, device=resolve_device(device))
    return _Loaded(model, run_pipeline(run), list(_model_input(run)["classes"]))


def _split_set(run, split: str):
    from cnnlab.engine.inputs import load_run_data

    if split not in SPLITS:
        raise ExplainError(f"split {split!r} is not allowed; choose one of: {', '.join(SPLITS)}")
    data = getattr(load_run_data(run.config.data), split)
    if data is None or len(data) == 0:
        raise ExplainError(f"split {split!r} of run {run.name!r} is empty; choose another split")
    return data


def read_files(run, files: Sequence[str | Path]) -> Images:
    """Image files converted to the run's channels, size and pixel permutation (DataError for unreadable ones)."""
    from cnnlab.engine.evaluate import read_run_images

    return Images(read_run_images(run, files), None, [Path(f).name for f in files])


def select_images(
    run,
    *,
    files: Sequence[str | Path] = (),
    split: str | None = None,
    count: int | None = None,
) -> Images:
    """Image files, the first ``count`` images of ``split``, or the whole ``split``.

    With nothing given: the first 8 test images. ``count`` alone reads the test split.
    """
    if files:
        if split is not None or count is not None:
            raise ExplainError("give image files or --split/--images, not both")
        return read_files(run, files)
    if count is not None and (isinstance(count, bool) or count < 1):
        raise ExplainError(f"--images {count!r} is not allowed; use a positive number")
    if split is None and count is None:
        count = DEFAULT_COUNT
    split = split or "test"
    data = _split_set(run, split)
    n = len(data) if count is None else min(count, len(data))
    return Images(data.images[:n].cpu(), data.labels[:n].cpu(), [f"{split} #{i}" for i in range(n)])


def _output_dir(path: str | Path) -> Path:
    """``path`` as a folder we can write into (created when missing), or a one-line error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExplainError(f"cannot write to folder {str(path)!r}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise ExplainError(f"cannot write to folder {str(path)!r}: permission denied")
    return path


@contextlib.contextmanager
def _new_output_dir(path: str | Path) -> Iterator[Path]:
    """:func:`_output_dir`, removed again (with the parents it made) if the work fails empty-handed.

    The folder is made first so that an unwritable place fails before the work;
    a bad layer or target found during the work must not leave it behind.
    """
    path = Path(path).absolute()
    made = [p for p in (path, *path.parents) if not p.exists()]
    folder = _output_dir(path)
    try:
        yield folder
    except BaseException:
        for p in made:  # the deepest first
            try:
                p.rmdir()  # only when empty
            except OSError:
                break
        raise


def _output_file(path: str | Path) -> Path:
    """``path`` as an image file matplotlib can write, in a writable folder."""
    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise ExplainError(f"output {str(path)!r} must end in one of: {', '.join(FIGURE_SUFFIXES)}")
    _output_dir(path.parent)
    return path


@dataclass
class ExplainOutputs:
    """Files written by :func:`explain_run`: one grid and one array per batch, plus an index."""

    grids: list[Path] = field(default_factory=list)
    arrays: list[Path] = field(default_factory=list)
    index: Path | None = None


def _caption(name: str, label: int | None, pred: int, prob: float, classes: Sequence[str]) -> str:
    first = f"true: {classes[label]}" if label is not None else name
    return f"{first}\npred: {classes[pred]} ({prob:.2f})"


def _black_baseline(pipeline, pixels: torch.Tensor) -> torch.Tensor:
    """A black image preprocessed like the inputs: the usual Integrated Gradients reference."""
    return pipeline(torch.zeros_like(pixels[:1]))


def explain_run(
    run,
    method: str,
    *,
    out: str | Path,
    files: Sequence[str | Path] = (),
    split: str | None = None,
    count: int | None = None,
    target: str | int = "pred",
    layer: str | None = None,
    checkpoint: str = "best",
    device: str = "auto",
    per_grid: int = 8,
    options: MethodOptions | None = None,
) -> ExplainOutputs:
    """Explain a run's predictions and write ``<method>-NNN.png`` / ``.npy`` per batch of ``per_grid``.

    The .npy holds that batch's N x H x W maps (float32, before display scaling);
    ``<method>.csv`` lists every image with its grid, row, true and predicted
    class, confidence and the class its map explains.
    """
    from cnnlab.explain.render import explanation_grid

    name = METHODS.entry(method).name  # unknown method: fail before any work
    with _new_output_dir(out) as folder:
        images = select_images(run, files=files, split=split, count=count)
        loaded = _load(run, checkpoint, device)
        x = loaded.pipeline(images.pixels)
        opts = options or MethodOptions()
        if opts.baseline is None:
            opts = dataclasses.replace(
                opts, baseline=_black_baseline(loaded.pipeline, images.pixels)
            )
        result = explain(
            loaded.model,
            x,
            name,
            target=target,
            layer=layer,
            labels=images.labels,
            classes=loaded.classes,
            batch_size=per_grid,
            options=opts,
        )
        outputs = ExplainOutputs()
        rows = []
        confidence, predicted = result.probs.max(1)
        stem = name.replace("+", "p")  # gradcam++ -> gradcampp: safe in every file system and URL
        for grid, start in enumerate(range(0, len(x), per_grid)):
            part = slice(start, start + per_grid)
            labels = (
                images.labels[part].tolist() if images.labels is not None else [None] * len(x[part])
            )
            captions = [
                _caption(n, lab, int(p), float(c), loaded.classes)
                for n, lab, p, c in zip(
                    images.names[part], labels, predicted[part], confidence[part]
                )
            ]
            targets = [loaded.classes[int(t)] for t in result.targets[part]]
            heading = f"{run.name} · {name}" + (f" · layer {result.layer}" if result.layer else "")
            outputs.grids.append(
                explanation_grid(
                    images.pixels[part],
                    result.maps[part],
                    captions,
                    targets,
                    folder / f"{stem}-{grid:03d}.png",
                    title=heading,
                )
            )
            array = folder / f"{stem}-{grid:03d}.npy"
            np.save(array, result.maps[part].numpy().astype(np.float32))
            outputs.arrays.append(array)
            for row, (n, lab, p, c, t) in enumerate(
                zip(images.names[part], labels, predicted[part], confidence[part], targets)
            ):
                true = loaded.classes[lab] if lab is not None else ""
                rows.append([grid, row, n, true, loaded.classes[int(p)], f"{float(c):.4f}", t])
        outputs.index = folder / f"{stem}.csv"
        with open(outputs.index, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["grid", "row", "image", "true", "predicted", "probability", "target"])
            writer.writerows(rows)
        return outputs


def _one_image(run, image: str | Path) -> tuple[torch.Tensor, str]:
    """A file path, or ``N`` / ``split:N`` for an image of the run's data set."""
    path = Path(image)
    match = _INDEX.match(str(image))
    if match and not path.exists():
        split, index = match.group(1) or "test", int(match.group(2))
        data = _split_set(run, split)
        if index >= len(data):
            raise ExplainError(
                f"image index {index} is out of range; split {split!r} has {len(data)} images"
            )
        return data.images[index].cpu(), f"{split} #{index}"
    if _INDEX_LIKE.match(str(image)) and not path.exists():
        raise ExplainError(
            f"--image {str(image)!r} is not allowed; use an image file, N or SPLIT:N"
            f" (N an index from 0, SPLIT one of {', '.join(SPLITS)})"
        )
    return read_files(run, [path]).pixels[0], path.name


def features_run(
    run,
    layer: str,
    image: str | Path,
    out: str | Path,
    *,
    checkpoint: str = "best",
    device: str = "auto",
) -> Path:
    """Write the feature maps of ``layer`` for one image (a file, or ``N``/``split:N``) as a grid PNG."""
    out = _output_file(out)
    pixels, label = _one_image(run, image)
    loaded = _load(run, checkpoint, device)
    maps = feature_maps(loaded.model, loaded.pipeline(pixels.unsqueeze(0))[0], layer)
    from cnnlab.explain.render import feature_map_grid

    title = (
        f"{run.name} · {layer} · {label} · {maps.shape[0]} maps of {maps.shape[1]}x{maps.shape[2]}"
    )
    return feature_map_grid(maps, out, title=title)


def filters_run(
    run, layer: str | None = None, out: str | Path | None = None, *, checkpoint: str = "best"
) -> Path:
    """Write the kernels of the first convolution (or of ``layer``) as images; default ``RUN/filters.png``."""
    out = _output_file(out if out is not None else run.path / "filters.png")
    loaded = _load(run, checkpoint, "cpu")
    name, weight = layer_kernels(loaded.model, layer)
    from cnnlab.explain.render import kernel_grid

    title = f"{run.name} · {name} · {weight.shape[0]} kernels {weight.shape[2]}x{weight.shape[3]}"
    return kernel_grid(weight, out, title=title)


@dataclass
class ErrorReport:
    """What :func:`errors_run` found: the figure, overall accuracy and the per-class table."""

    figure: Path
    accuracy: float
    mistakes: int
    total: int
    per_class: list[ClassAccuracy]


def errors_run(
    run,
    out: str | Path,
    *,
    split: str = "test",
    count: int = 16,
    checkpoint: str = "best",
    device: str = "auto",
) -> ErrorReport:
    """The ``count`` most confident mistakes on ``split`` as a figure, plus per-class accuracy."""
    from cnnlab.engine.evaluate import logits_for

    if isinstance(count, bool) or count < 1:
        raise ExplainError(f"--count {count!r} is not allowed; use a positive number")
    out = _output_file(out)
    data = _split_set(run, split)
    loaded = _load(run, checkpoint, device)
    probs = logits_for(loaded.model, data.images, loaded.pipeline).softmax(1)
    labels = data.labels.cpu()
    worst = confident_mistakes(probs, labels, count)
    confidence, predicted = probs.max(1)
    captions = [
        f"true: {loaded.classes[int(labels[i])]}\npred: {loaded.classes[int(predicted[i])]} ({float(confidence[i]):.2f})"
        for i in worst
    ]
    from cnnlab.explain.render import mistakes_grid

    wrong = int((predicted != labels).sum())
    title = f"{run.name} · {split}: {wrong} of {len(labels)} wrong · most confident mistakes"
    figure = mistakes_grid(data.images[worst].cpu(), captions, out, title=title)
    return ErrorReport(
        figure=figure,
        accuracy=float((predicted == labels).float().mean()),
        mistakes=wrong,
        total=len(labels),
        per_class=per_class_accuracy(predicted, labels, loaded.classes),
    )
