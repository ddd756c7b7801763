"""``cnnlab explain``, ``features``, ``filters`` and ``errors``: look inside a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnnlab.cli import app, device_option

DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps")]
_METHOD_HELP = "cam, gradcam, gradcam++, saliency, smoothgrad, integrated-gradients, guided-backprop, guided-gradcam"


def _load_run(path: Path):
    from cnnlab.engine.run import Run

    return Run.load(path)


@app.command()
def explain(
    run_dir: Annotated[Path, typer.Argument(help="run folder")],
    files: Annotated[
        list[Path] | None, typer.Argument(help="image files to explain (default: test images)")
    ] = None,
    method: Annotated[str, typer.Option("--method", "-m", help=_METHOD_HELP)] = "gradcam",
    images: Annotated[
        int | None, typer.Option("--images", help="explain the first N images of the split")
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="test, val or train (alone: the whole split)")
    ] = None,
    target: Annotated[
        str, typer.Option("--target", help="pred, true, or a class index or name")
    ] = "pred",
    layer: Annotated[
        str | None,
        typer.Option("--layer", help="module name (see 'cnnlab summary'); default: last conv"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="output folder (default: RUN/explain)")
    ] = None,
    per_grid: Annotated[
        int, typer.Option("--batch", min=1, help="images per grid (and per pass)")
    ] = 8,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last")] = "best",
    device: DeviceOpt = "auto",
) -> None:
    """Heat maps of what the network looks at: a grid per batch (PNG) and the raw maps (.npy)."""
    from cnnlab.explain import explain_run

    device_option(device)
    run = _load_run(run_dir)
    result = explain_run(
        run,
        method,
        out=out if out is not None else run.path / "explain",
        files=list(files or []),
        split=split,
        count=images,
        target=target,
        layer=layer,
        checkpoint=checkpoint,
        device=device,
        per_grid=per_grid,
    )
    for grid, array in zip(result.grids, result.arrays):
        typer.echo(f"wrote {grid}  ({array.name})")
    typer.echo(f"index: {result.index}")


@app.command()
def features(
    run_dir: Annotated[Path, typer.Argument(help="run folder")],
    layer: Annotated[str, typer.Option("--layer", help="module name (see 'cnnlab summary')")],
    image: Annotated[
        str, typer.Option("--image", help="image file, or N / split:N for a data set image")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="PNG to write (default: RUN/features-LAYER.png)")
    ] = None,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last")] = "best",
    device: DeviceOpt = "auto",
) -> None:
    """The feature maps of one layer for one image, as a grid."""
    from cnnlab.explain import features_run

    device_option(device)
    run = _load_run(run_dir)
    target = out if out is not None else run.path / f"features-{layer}.png"
    path = features_run(run, layer, image, target, checkpoint=checkpoint, device=device)
    typer.echo(f"wrote {path}")


@app.command()
def filters(
    run_dir: Annotated[Path, typer.Argument(help="run folder")],
    layer: Annotated[
        str | None, typer.Option("--layer", help="conv layer or block (default: the first conv)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="PNG to write (default: RUN/filters.png)")
    ] = None,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last")] = "best",
) -> None:
    """The kernels of the first convolution (or of --layer) as images."""
    from cnnlab.explain import filters_run

    path = filters_run(_load_run(run_dir), layer, out, checkpoint=checkpoint)
    typer.echo(f"wrote {path}")


@app.command()
def errors(
    run_dir: Annotated[Path, typer.Argument(help="run folder")],
    out: Annotated[
        Path | None, typer.Option("--out", help="PNG to write (default: RUN/errors.png)")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="test, val or train")] = "test",
    count: Annotated[int, typer.Option("--count", min=1, help="mistakes to show")] = 16,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last")] = "best",
    device: DeviceOpt = "auto",
) -> None:
    """The most confident mistakes on a split, and accuracy per class."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from cnnlab.explain import errors_run

    device_option(device)
    run = _load_run(run_dir)
    report = errors_run(
        run,
        out if out is not None else run.path / "errors.png",
        split=split,
        count=count,
        checkpoint=checkpoint,
        device=device,
    )
    console = Console()
    console.print(
        f"{escape(run.name)}  split={escape(split)}: {report.mistakes} of {report.total} wrong, accuracy {report.accuracy:.4f}"
    )
    table = Table("class", "accuracy", "correct", "n")
    for row in report.per_class:
        table.add_row(escape(row.name), f"{row.accuracy:.4f}", str(row.correct), str(row.total))
    console.print(table)
    console.print(f"wrote {escape(str(report.figure))}")
