"""``cnnlab train``, ``evaluate``, ``predict`` and ``export``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cnnlab.cli import app, device_option
from cnnlab.errors import RunError


class Progress:
    """Progress display owned by the CLI: a rich bar per epoch on a terminal, one line per epoch otherwise."""

    def __init__(self, interactive: bool | None = None, *, shown: bool = True) -> None:
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.shown = shown  # False: another process (rank 0 of a torchrun run) shows it
        self._bar = None
        self._task = None
        self._last_update = 0.0
        self.path: Path | None = None  # the run folder, once training starts (Ctrl-C names it)

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "start":
            self.path = info["path"]
        if self.shown:
            getattr(self, f"_on_{event}", lambda info: None)(info)

    def _on_data(self, info: dict[str, Any]) -> None:
        """Decoding or downloading data: a bar on a terminal, nothing in logs."""
        if not self.interactive:
            return
        from rich.progress import Progress as RichProgress

        if getattr(self, "_data_bar", None) is None:
            self._data_bar = RichProgress(transient=True)
            self._data_bar.start()
            self._data_task = self._data_bar.add_task(info["task"], total=info["total"] or None)
        self._data_bar.update(self._data_task, completed=info["done"], description=info["task"])
        if info["total"] and info["done"] >= info["total"]:
            self._data_bar.stop()
            self._data_bar = None

    def _on_note(self, info: dict[str, Any]) -> None:
        typer.echo(f"note: {info['text']}")

    def _on_start(self, info: dict[str, Any]) -> None:
        cfg = info["config"]
        typer.echo(f"run {info['path']}  ({info['device']}, {info['num_train']:,} training images)")
        typer.echo(f"config: {cfg.short()}")
        if info.get("resumed"):
            typer.echo(f"resuming after epoch {info['start_epoch']}")
        self.epochs = info["epochs"]
        self.steps = info["steps_per_epoch"]

    def _ensure_bar(self, epoch: int) -> None:
        if not self.interactive or self._bar is not None:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        self._bar = RichProgress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(
            "train", total=self.steps, epoch=epoch, epochs=self.epochs, stats=""
        )

    def _on_step(self, info: dict[str, Any]) -> None:
        if not self.interactive:
            return
        self._ensure_bar(info["epoch"])
        now = time.monotonic()
        if now - self._last_update < 0.25 and info["batch"] != info["steps"]:
            return
        self._last_update = now
        stats = f"loss {info['loss'].item():.4f}  lr {info['lr']:.3g}"
        self._bar.update(self._task, completed=info["batch"], epoch=info["epoch"], stats=stats)

    def _on_epoch(self, info: dict[str, Any]) -> None:
        from cnnlab.engine.trainer import epoch_line

        line = epoch_line(info["row"])
        if self._bar is not None:
            self._bar.console.print(line)
            self._bar.reset(
                self._task, total=self.steps, completed=0, epoch=info["row"]["epoch"] + 1, stats=""
            )
        else:
            typer.echo(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _on_end(self, info: dict[str, Any]) -> None:
        self.close()


@app.command(context_settings={"allow_extra_args": False})
def train(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="dotted overrides, e.g. model=resnet18 optim.lr=0.05 train.epochs=30"),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML run config read before the overrides"),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="run name (default: timestamp-model-data)")
    ] = None,
    runs_root: Annotated[
        Path | None, typer.Option("--runs", help="folder that holds run folders (default: runs)")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue the run in this folder")
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="extra data locations (path list)")
    ] = None,
) -> None:
    """Train one model on one data set (default: textbook LeNet-5 on Fashion-MNIST)."""
    from cnnlab.config import load_config
    from cnnlab.engine.run import Run, check_run_name, finished_run_error, new_run_dir
    from cnnlab.engine.trainer import summary_line
    from cnnlab.engine.trainer import train as run_training

    overrides = list(overrides or [])
    if resume is not None:
        if not (resume / "config.yaml").is_file():
            raise RunError(
                f"{str(resume)!r} is not a run folder (no config.yaml); nothing to resume"
            )
        given = [
            option
            for option, value in (
                ("--config", config),
                ("--data-dir", data_dir),
                ("--name", name),
                ("--runs", runs_root),
                (f"the overrides ({' '.join(overrides)})", overrides),
            )
            if value
        ]
        if given:
            raise RunError(
                f"--resume continues a run in its folder with its saved config; drop {' and '.join(given)}"
            )
        saved = Run.load(resume)
        finished = finished_run_error(resume, saved.summary)
        if finished is not None:
            raise finished
        cfg = None
        devices = saved.config.train.devices
    else:
        if data_dir:
            overrides.append(f"data.data_dir={data_dir}")
        if name is not None:
            check_run_name(name)
        cfg = load_config(config, overrides)
        devices = cfg.train.devices
    runs_root = runs_root if runs_root is not None else Path("runs")
    if devices > 1:
        from cnnlab.engine import distributed

        if not distributed.launched_by_torchrun():
            # Re-run this command under torchrun, one process per device, with a fixed name
            # so every rank writes to the same run folder.
            from cnnlab.engine.run import default_run_name

            if resume is not None:
                args = ["train", "--resume", str(resume)]
            else:
                name = name or default_run_name(cfg)
                new_run_dir(runs_root, name)  # refuse now, not once per rank
                args = ["train", "--runs", str(runs_root), *overrides, "--name", name]
                if config is not None:
                    args += ["--config", str(config)]
            raise typer.Exit(distributed.launch(devices, args))
    # Under torchrun every rank runs this command; rank 0 alone speaks for the run.
    from cnnlab.engine.distributed import launched_rank

    speaks = launched_rank() == 0
    progress = Progress(shown=speaks)
    try:
        run = run_training(
            cfg,
            run_dir=resume,
            name=name,
            runs_root=runs_root,
            resume=resume is not None,
            callback=progress,
        )
    except KeyboardInterrupt:
        progress.close()
        where = resume or progress.path
        if not speaks:
            pass  # rank 0 says it (other ranks never learn the run folder's path)
        elif where is None:  # still loading data or building the model: no run folder yet
            typer.echo("interrupted before training started; there is nothing to resume", err=True)
        else:
            typer.echo(
                f"interrupted; the checkpoint is saved. Resume with: cnnlab train --resume {where}",
                err=True,
            )
        raise typer.Exit(130) from None
    finally:
        progress.close()
    if speaks:
        typer.echo(summary_line(run.summary))
        typer.echo(f"run folder: {run.path}")


def _load_run(path: Path):
    from cnnlab.engine.run import Run

    return Run.load(path)


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="run folder")],
    split: Annotated[str, typer.Option("--split", help="test, val or train")] = "test",
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last")] = "best",
    device: Annotated[
        str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps")
    ] = "auto",
) -> None:
    """Loss, accuracy and per-class accuracy of a trained run; writes confusion.png."""
    from rich.console import Console
    from rich.table import Table

    device_option(device)
    run = _load_run(run_dir)
    result = run.evaluate(split=split, checkpoint=checkpoint, device=device)
    console = Console()
    console.print(f"{run.name}  split={split}  checkpoint={checkpoint}")
    console.print(f"loss {result.loss:.4f}, accuracy {result.accuracy:.4f}")
    table = Table("class", "accuracy", "n")
    totals = result.confusion.sum(1).tolist()
    for (cls, acc), n in zip(result.per_class.items(), totals):
        table.add_row(str(cls), f"{acc:.4f}", str(n))
    console.print(table)
    console.print(f"confusion matrix: {result.confusion_png}")


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="run folder")],
    files: Annotated[list[Path] | None, typer.Argument(help="image files to classify")] = None,
    split: Annotated[
        str | None,
        typer.Option("--split", help="predict a whole split: test (default), val or train"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="write one predicted class per line")
    ] = None,
    probs: Annotated[
        Path | None, typer.Option("--probs", help="write class probabilities as CSV")
    ] = None,
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k", min=1, help="classes listed per image file (--probs gives all, for a split)"
        ),
    ] = 3,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last")] = "best",
    device: Annotated[
        str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps")
    ] = "auto",
) -> None:
    """Predict a split (one class per line, data order) or individual image files."""
    device_option(device)
    from cnnlab.engine.run import check_output_file

    if files and (split is not None or out is not None or probs is not None):
        # --out and --probs describe a split's predictions (one line per image, data order).
        raise RunError("give image files or --split/--out/--probs, not both")
    run = _load_run(run_dir)
    if files:
        for p in run.predict(files=files, checkpoint=checkpoint, top_k=top_k, device=device):
            tops = ", ".join(f"{c} {v:.3f}" for c, v in p.top)
            typer.echo(f"{p.file}: {p.predicted}  ({tops})")
        return
    # Check both outputs before the work: a failure after printing predictions loses them.
    targets = [check_output_file(t) for t in (out, probs) if t is not None]
    if len(targets) == 2 and targets[0].resolve() == targets[1].resolve():
        raise RunError(f"--out and --probs are the same file {str(out)!r}; give two names")
    result = run.predict(split=split or "test", checkpoint=checkpoint, device=device)
    names = [result.classes[i] for i in result.predicted.tolist()]
    text = "\n".join(names) + "\n"
    if out is not None:
        _write_output(out, text)
        typer.echo(f"wrote {len(names)} predictions to {out}")
    else:
        typer.echo(text, nl=False)
    if probs is not None:
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["index", "predicted", *result.classes])
        for i, (name, row) in enumerate(zip(names, result.probs.tolist())):
            w.writerow([i, name, *(f"{v:.6f}" for v in row)])
        _write_output(probs, buf.getvalue())
        typer.echo(f"wrote probabilities to {probs}")


def _write_output(path: Path, text: str) -> None:
    try:
        with open(path, "w", newline="") as fh:
            fh.write(text)
    except OSError as exc:
        raise RunError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="run folder")],
    fmt: Annotated[str, typer.Option("--format", help="onnx or torchscript")] = "onnx",
    out: Annotated[
        Path | None, typer.Option("--out", help="output file (default: in the run folder)")
    ] = None,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last")] = "best",
) -> None:
    """Export the trained model to ONNX or TorchScript."""
    run = _load_run(run_dir)
    path = run.export(fmt=fmt, out=out, checkpoint=checkpoint)
    typer.echo(f"wrote {path}")
