"""``cnnlab data list|get|info|show``: find, download, inspect and preview data sets."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from cnnlab.cli import app
from cnnlab.errors import ConfigError

data_app = typer.Typer(help="Find, download, inspect and preview data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DataDirOpt = Annotated[
    list[str] | None,
    typer.Option("--data-dir", help="folder(s) searched first; repeat or join with ':'"),
]
RootOpt = Annotated[
    str | None,
    typer.Option(
        "--root", help="imagefolder: the tree (folder with train/) or a .tar.gz/.zip of it"
    ),
]
OptionOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--option", "-o", help="data-set option key=value (e.g. image_size=64, labels=coarse)"
    ),
]
VerifyOpt = Annotated[
    bool,
    typer.Option("--verify/--no-verify", help="check files against the official checksums"),
]


def _options(root: str | None, pairs: list[str] | None) -> dict[str, Any]:
    """``--root`` and ``-o key=value`` as keyword options for the data library."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {pair!r} is not key=value")
        options[key.strip().replace("-", "_")] = value.strip()
    if root is not None:
        options["root"] = root
    return options


@contextlib.contextmanager
def _progress() -> Iterator[Any]:
    """A rich progress bar on stderr when it is a terminal; otherwise no callback."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total or None)
            bar.update(tasks[task], completed=done, total=total or None)

        yield update


@data_app.command("list")
def list_(data_dir: DataDirOpt = None) -> None:
    """Registered data sets, and where each was found on this machine."""
    from cnnlab.data import DATASETS, locate_dataset
    from cnnlab.errors import DataError

    width = max(len(n) for n in DATASETS.names())
    for entry in DATASETS.entries():
        if any(opt.required for opt in entry.obj.options.values()):
            where = "give --root PATH"
        else:
            try:
                where = f"found in {locate_dataset(entry.name, data_dir=data_dir)}"
            except DataError:
                where = f"not found (cnnlab data get {entry.name})"
        typer.echo(f"{entry.name:<{width}}  {entry.description}")
        typer.echo(f"{'':<{width}}  {where}")


@data_app.command()
def get(
    name: Annotated[str, typer.Argument(help="data set name (see 'cnnlab data list')")],
    dest: Annotated[
        Path | None, typer.Option("--dest", help="download folder (default ~/.cache/cnnlab/data)")
    ] = None,
    data_dir: DataDirOpt = None,
    mirror: Annotated[
        list[str] | None,
        typer.Option("--mirror", help="base URL to download from instead of the official one"),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="seconds to wait on a silent server")
    ] = 30.0,
    force: Annotated[
        bool, typer.Option("--force", help="download even if a copy is found")
    ] = False,
) -> None:
    """Download a data set from its official source, verifying checksums (skipped if already here)."""
    from cnnlab.data import default_data_dir, download_dataset, get_source, locate_dataset
    from cnnlab.data.download import download_lock
    from cnnlab.errors import DataNotFoundError

    source = get_source(name)
    if not source.can_download:
        download_dataset(source.name, dest)  # raises: how to get it by hand
    searched = [*([str(dest)] if dest else []), *(data_dir or [])]
    target = dest.expanduser() if dest is not None else default_data_dir()
    # Checked under the lock: a concurrent get of the same set finishes first.
    with download_lock(target, source.name):
        if not force:
            with contextlib.suppress(DataNotFoundError):
                found = locate_dataset(source.name, data_dir=searched)
                typer.echo(f"{source.name}: already present in {found}")
                return
        with _progress() as progress:
            folder = download_dataset(
                source.name,
                target,
                data_dir=data_dir,
                mirrors=mirror,
                progress=progress,
                timeout=timeout,
            )
    typer.echo(f"{source.name}: downloaded and verified in {folder}")


def _format_stats(values: tuple[float, ...]) -> str:
    return ", ".join(f"{v:.4f}" for v in values)


@data_app.command()
def info(
    name: Annotated[str, typer.Argument(help="data set name (see 'cnnlab data list')")],
    data_dir: DataDirOpt = None,
    root: RootOpt = None,
    option: OptionOpt = None,
    verify: VerifyOpt = True,
) -> None:
    """Sizes, images per class, channel mean/std and where the files were found."""
    from cnnlab.data.info import describe_dataset

    with _progress() as progress:
        summary = describe_dataset(
            name, data_dir=data_dir, verify=verify, progress=progress, **_options(root, option)
        )
    typer.echo(f"{summary.name}: {summary.description}")
    sources = sorted({s.source for s in summary.splits})
    if len(sources) == 1:
        typer.echo(f"found in: {sources[0]}")
    else:
        for s in summary.splits:
            typer.echo(f"{s.split} found in: {s.source}")
    classes = summary.classes
    shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
    typer.echo(f"classes ({len(classes)}): {shown}")
    typer.echo("")
    typer.echo(f"{'split':<6} {'images':>8}  {'shape':<10} {'mean':<26} std")
    for s in summary.splits:
        shape = "x".join(map(str, s.shape))
        typer.echo(
            f"{s.split:<6} {s.count:>8}  {shape:<10} {_format_stats(s.mean):<26} {_format_stats(s.std)}"
        )
    typer.echo("")
    if len(classes) <= 20:
        header = "".join(f"{s.split:>8}" for s in summary.splits)
        width = max(len(c) for c in (*classes, "class"))
        typer.echo("images per class:")
        typer.echo(f"{'class':<{width}}{header}")
        for i, c in enumerate(classes):
            typer.echo(f"{c:<{width}}" + "".join(f"{s.class_counts[i]:>8}" for s in summary.splits))
    else:
        for s in summary.splits:
            typer.echo(
                f"images per class ({s.split}): {min(s.class_counts)} to {max(s.class_counts)}"
            )


@data_app.command()
def show(
    name: Annotated[str, typer.Argument(help="data set name (see 'cnnlab data list')")],
    out: Annotated[Path, typer.Option("--out", help="image file to write (PNG by suffix)")],
    split: Annotated[str, typer.Option("--split", help="train, val or test")] = "train",
    count: Annotated[int, typer.Option("--count", help="number of images")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="which images are drawn")] = 0,
    data_dir: DataDirOpt = None,
    root: RootOpt = None,
    option: OptionOpt = None,
    verify: VerifyOpt = True,
) -> None:
    """Save a grid of sample images labelled with their classes."""
    from cnnlab.data import load_dataset
    from cnnlab.data.preview import save_grid

    with _progress() as progress:
        data = load_dataset(
            name,
            split,
            data_dir=data_dir,
            verify=verify,
            progress=progress,
            **_options(root, option),
        )
    path = save_grid(data, out, count=count, seed=seed)
    typer.echo(f"wrote {path} ({min(count, len(data))} {data.name} {data.split} images)")
