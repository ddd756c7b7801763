"""The ``cnnlab`` command line: a thin typer app over the library.

Each command group lives in its own module of this package and registers itself
on :data:`app`; this module owns the one place where known errors become a
one-line message and exit status 2. Heavy imports (torch, matplotlib, optuna)
happen inside the commands so ``cnnlab --help`` stays instant.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import typer
from typer.exceptions import Abort, Exit, TyperException

from cnnlab.errors import CnnlabError

app = typer.Typer(
    name="cnnlab",
    help="Convolutional-network experiments done properly: train, ablate, explain, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _register_commands() -> None:
    # Importing a module registers its commands on `app`. Order sets --help order.
    from cnnlab.cli import data as _data  # noqa: F401
    from cnnlab.cli import explain as _explain  # noqa: F401
    from cnnlab.cli import models as _models  # noqa: F401
    from cnnlab.cli import study as _study  # noqa: F401
    from cnnlab.cli import train as _train  # noqa: F401


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on stderr and return the exit to raise (status 2)."""
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(2)


def device_option(device: str) -> str:
    """``--device`` checked before any work: one line naming it when it is not usable here."""
    from cnnlab.engine.trainer import resolve_device

    resolve_device(device, "--device")
    return device


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit status.

    Tests call ``main([...])`` directly; the console script calls it with nothing.
    """
    _register_commands()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        # With standalone_mode=False, a command's `raise typer.Exit(n)` comes back as the return value.
        rc = app(args=args, prog_name="cnnlab", standalone_mode=False)
        if isinstance(rc, int):
            return rc
    except CnnlabError as exc:
        if not _left_for_launcher(str(exc)):
            typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except Exit as exc:
        return exc.exit_code
    except Abort:
        typer.echo("interrupted", err=True)
        return 130
    except TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            # A group called bare: show its help, as `git remote` would.
            typer.echo(exc.format_message())
            return 0
        # Usage errors: unknown option, missing argument, bad type. One line, status 2.
        msg = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"error: {' '.join(msg.split())}{hint}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    return 0


def _left_for_launcher(message: str) -> bool:
    """A rank of a ``train.devices=N`` relaunch leaves its error for the launcher to say once."""
    if "CNNLAB_RANK_ERRORS" not in os.environ:  # checked first: no torch import to print an error
        return False
    from cnnlab.engine.distributed import report_rank_error

    return report_rank_error(message)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
