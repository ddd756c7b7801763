"""``cnnlab models`` and ``cnnlab summary``."""

from __future__ import annotations

import re
import sys
from typing import Annotated, Any

import typer

from cnnlab.cli import app
from cnnlab.errors import ConfigError, RegistryError

_SHAPE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_input(text: str) -> tuple[int, int, int]:
    """``"1x28x28"`` -> ``(1, 28, 28)``; ConfigError naming the value otherwise."""
    match = _SHAPE.match(text)
    dims = tuple(int(g) for g in match.groups()) if match else ()
    if not dims or min(dims) < 1:
        raise ConfigError(f"--input {text!r} is not allowed; expected CxHxW such as 1x28x28")
    return dims  # type: ignore[return-value]


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["blocks=[2,2,2,2]", "residual=false"]`` -> options, values read as YAML.

    Keys may use ``-`` for ``_`` (``norm-after-act``). YAML 1.1 reads ``1e-3`` as a
    string, so a string that parses as a float becomes one.
    """
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ConfigError(
                f"--option {item!r} is not allowed; expected KEY=VALUE such as width=0.5"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"--option {item!r}: {raw!r} is not a valid YAML value") from None
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        options[key] = value
    return options


def _console():
    from rich.console import Console

    # Tables written to a pipe or a file stay unwrapped instead of folding at 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=160)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "-"


def _si(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f}"


@app.command("models")
def models_command(
    pattern: Annotated[
        str | None, typer.Argument(help="glob or substring of names, e.g. 'resnet*' or 'vgg'")
    ] = None,
) -> None:
    """List the registered models with their description and default input."""
    from rich.table import Table

    from cnnlab.models import MODELS, default_in_channels, list_models

    glob = pattern if pattern is None or any(c in pattern for c in "*?[") else f"*{pattern}*"
    names = list_models(glob)
    if not names:
        raise RegistryError(f"no model matches {pattern!r}; available: {', '.join(list_models())}")
    table = Table("model", "description", "default input")
    for name in names:
        entry = MODELS.entry(name)
        size = entry.meta.get("input_size")
        shape = f"{default_in_channels(name)}x{size[0]}x{size[1]}" if size else "any"
        table.add_row(name, entry.description, shape)
    _console().print(table)


@app.command("summary")
def summary_command(
    model: Annotated[str, typer.Argument(help="model name (see 'cnnlab models')")],
    input: Annotated[
        str | None,
        typer.Option(
            "--input", "-i", help="image shape CxHxW, e.g. 1x28x28 (default: the model's)"
        ),
    ] = None,
    classes: Annotated[int, typer.Option("--classes", "-c", help="number of output classes")] = 10,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="model option KEY=VALUE, value in YAML (repeatable)"),
    ] = None,
    depth: Annotated[
        int | None,
        typer.Option(
            "--depth", help="show modules down to this depth (1 or more) instead of the leaf layers"
        ),
    ] = None,
) -> None:
    """Per-layer output shapes, parameters and mult-adds, with totals."""
    from rich.table import Table

    from cnnlab.models import default_in_channels, default_input_size
    from cnnlab.models.summary import summary
    from cnnlab.registry import normalize_name

    if depth is not None and depth < 1:
        raise ConfigError(f"--depth {depth} is not allowed; use 1 or more (1: the top modules)")
    options = parse_options(option or [])
    if input is None:
        size = default_input_size(model) or (28, 28)
        shape = (default_in_channels(model), *size)
    else:
        shape = parse_input(input)
    info = summary(model, shape, num_classes=classes, **options)

    table = Table("layer", "type", "output shape", "parameters", "mult-adds")
    for layer in info.table(depth):
        macs = f"{layer.macs:,}" if layer.macs else "-"
        table.add_row(layer.name, layer.type, _shape(layer.output_shape), f"{layer.params:,}", macs)
    console = _console()
    console.print(f"{normalize_name(model)}, input {_shape(shape)}, {classes} classes")
    console.print(table)
    totals = Table.grid(padding=(0, 2))
    totals.add_row("parameters", f"{info.total_params:,}")
    totals.add_row("trainable", f"{info.trainable_params:,}")
    totals.add_row("MACs (mult-adds) per sample", f"{info.macs:,} ({_si(info.macs)})")
    totals.add_row("FLOPs (2 x MACs) per sample", f"{info.flops:,} ({_si(info.flops)})")
    kib = info.activation_bytes / 1024
    totals.add_row("activation memory per sample", f"{kib:,.1f} KiB (float32 forward outputs)")
    console.print(totals)
