"""``cnnlab study run|worker|status|report|combine`` and ``cnnlab recipes list|show|run``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cnnlab.cli import app

study_app = typer.Typer(
    help="Ablation studies: many runs, repeats, statistics and a report.", no_args_is_help=True
)
recipes_app = typer.Typer(
    help="Built-in studies that reproduce the classic CNN course experiments.", no_args_is_help=True
)
app.add_typer(study_app, name="study")
app.add_typer(recipes_app, name="recipes")

RootOpt = Annotated[Path, typer.Option("--root", help="folder that holds study folders")]
StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="optuna storage URL (default: SQLite file in the study folder)"),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        "-j",
        min=1,
        help="local worker processes (default: one per GPU, on CPU one per two cores)",
    ),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device", help="device for every run: auto, cpu, cuda, cuda:N, mps (default: the spec's)"
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="list the variants and run counts, train nothing")
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="torch threads per worker (default: cores / workers)"),
]
FuseOpt = Annotated[
    str | None,
    typer.Option(
        "--fuse",
        help="auto: train runs that differ only in seed/lr/momentum/weight decay as fused groups; "
        "off: one run at a time (default: the spec's fuse, auto)",
    ),
]
HeartbeatOpt = Annotated[
    int,
    typer.Option(
        "--heartbeat",
        min=1,
        help="seconds between heartbeats; a run silent for 3x this is put back",
    ),
]


class StudyProgress:
    """One line per finished run, plus status lines; the library never prints."""

    def __init__(self, total_hint: int | None = None) -> None:
        self.done = 0
        self.total = total_hint
        self.interactive = sys.stdout.isatty()

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{event}", None)
        if handler is not None:
            handler(info)

    def _on_open(self, info: dict[str, Any]) -> None:
        fuse = f", fuse {info['fuse']}" if info.get("fuse") else ""
        typer.echo(
            f"study folder {info['folder']}  (storage {info['storage']}, {info['workers']} worker(s){fuse})"
        )

    def _on_note(self, info: dict[str, Any]) -> None:
        typer.echo(f"note: {info['text']}")

    def _on_status(self, info: dict[str, Any]) -> None:
        status = info["status"]
        self.total = status.total
        self.done = status.done
        typer.echo(f"[{status.name}] {status.line()}")

    def _on_start(self, info: dict[str, Any]) -> None:
        plan = info["plan"]
        if info.get("attempt", 1) > 1:
            typer.echo(f"  {plan.variant} #{plan.repeat}: attempt {info['attempt']}")

    def _on_end(self, info: dict[str, Any]) -> None:
        from cnnlab.engine.trainer import summary_line

        plan, summary = info["plan"], info["summary"]
        self.done += 1
        where = f"[{self.done}/{self.total}]" if self.total else f"[{self.done}]"
        how = "from curves" if plan.derived_from else f"{info.get('seconds', 0):.1f}s"
        group = (summary.get("fused") or {}).get("group_size") or 1
        if not plan.derived_from and group > 1:
            how += f", fused group of {group}"
        typer.echo(f"{where} {plan.variant} #{plan.repeat}: {summary_line(summary)} ({how})")

    def _on_retry(self, info: dict[str, Any]) -> None:
        plan = info["plan"]
        typer.echo(
            f"  {plan.variant} #{plan.repeat} failed (attempt {info['attempt']}), will retry: {info['error']}"
        )

    def _on_failed(self, info: dict[str, Any]) -> None:
        plan = info["plan"]
        typer.echo(
            f"  {plan.variant} #{plan.repeat} failed for good after {info['attempt']} attempt(s): {info['error']}"
        )

    def _on_done(self, info: dict[str, Any]) -> None:
        status = info["status"]
        typer.echo(f"[{status.name}] {status.line()}")
        for err in status.errors[:10]:
            typer.echo(f"  failed: {err['variant']} #{err['repeat']}: {err['error']}")


def _run_one_study(
    spec,
    *,
    root: Path,
    storage,
    workers,
    device,
    heartbeat: int,
    threads: int | None = None,
    fuse: str | None = None,
    dry_run: bool = False,
):
    from cnnlab.studies.runner import check_device, describe_plans, run_study
    from cnnlab.studies.spec import expand
    from cnnlab.studies.worker import fuse_mode

    if fuse is not None:
        fuse = fuse_mode(fuse, what="--fuse")
    if dry_run:
        check_device(spec, device)  # what run_study checks before a real run
    plans = expand(spec)
    info = describe_plans(plans)
    typer.echo(
        f"study {spec.name}: {len(info['variants'])} variants x {spec.repeats} repeat(s) = {info['runs']} runs "
        f"({info['trained']} to train, {info['derived']} from curves)"
    )
    if dry_run:
        for variant in info["variants"]:
            typer.echo(f"  {variant}")
        return None
    progress = StudyProgress(total_hint=info["runs"])
    try:
        status = run_study(
            spec,
            root=root,
            storage=storage,
            workers=workers,
            device=device,
            on_event=progress,
            heartbeat_interval=heartbeat,
            threads=threads,
            fuse=fuse,
        )
    except KeyboardInterrupt:
        typer.echo(f"interrupted; run the same command again to finish study {spec.name}", err=True)
        raise typer.Exit(130) from None
    return status


OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="dotted overrides merged into the base, e.g. data.subset=5000 train.device=cuda"
    ),
]


@study_app.command("run")
def run_cmd(
    spec_file: Annotated[Path, typer.Argument(help="study spec (YAML)")],
    overrides: OverridesArg = None,
    workers: WorkersOpt = None,
    storage: StorageOpt = None,
    device: DeviceOpt = None,
    root: RootOpt = Path("studies"),
    quick: Annotated[
        bool, typer.Option("--quick", help="apply the spec's quick section (small and fast)")
    ] = False,
    heartbeat: HeartbeatOpt = 10,
    threads: ThreadsOpt = None,
    fuse: FuseOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Run a study, or finish an interrupted one (only missing runs are trained)."""
    from cnnlab.studies.spec import load_spec

    spec = load_spec(spec_file, quick=quick).with_overrides(overrides or [])
    status = _run_one_study(
        spec,
        root=root,
        storage=storage,
        workers=workers,
        device=device,
        heartbeat=heartbeat,
        threads=threads,
        fuse=fuse,
        dry_run=dry_run,
    )
    if status is not None:
        typer.echo(
            f"report: cnnlab study report {spec.name}"
            + (f" --root {root}" if root != Path("studies") else "")
        )
        _exit_if_failed([status], root)


@study_app.command("worker")
def worker_cmd(
    name: Annotated[str, typer.Option("--name", help="study name")],
    storage: StorageOpt = None,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root", help="folder holding the study folder (default: where the study was started)"
        ),
    ] = None,
    study_dir: Annotated[
        Path | None, typer.Option("--study-dir", help="the study folder itself")
    ] = None,
    device: DeviceOpt = None,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="torch threads for this worker")
    ] = None,
    heartbeat: HeartbeatOpt = 10,
    fuse: FuseOpt = None,
    memory_share: Annotated[
        float,
        typer.Option(
            "--memory-share",
            help="fraction of the device's memory this worker's fused groups may fill "
            "(0.25 each for four workers on one GPU; `study run` sets it for its own workers)",
        ),
    ] = 1.0,
) -> None:
    """Join a running study as one more worker (from another shell or machine)."""
    import logging

    from cnnlab.studies.runner import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    progress = StudyProgress()
    try:
        trained = run_worker(
            name,
            storage=storage,
            study_dir=study_dir,
            root=root,
            device=device,
            threads=threads,
            heartbeat_interval=heartbeat,
            on_event=progress,
            fuse=fuse,
            memory_share=memory_share,
        )
    except KeyboardInterrupt:
        typer.echo(
            "interrupted; the run in progress was checkpointed and put back in the queue", err=True
        )
        raise typer.Exit(130) from None
    typer.echo(f"worker done: trained {trained} run(s); nothing left in the queue")


def _open(name: str, root: Path, storage: str | None):
    """The study folder and, when reachable, its queue."""
    from cnnlab.studies.folder import find_study
    from cnnlab.studies.runner import open_queue

    folder = find_study(name, root)
    spec = folder.read_spec()
    queue = None
    if storage is not None or folder.db_file.exists():
        queue = open_queue(spec, folder, storage, create=False)
    return folder, spec, queue


@study_app.command("status")
def status_cmd(
    name: Annotated[str, typer.Argument(help="study name (or study folder)")],
    root: RootOpt = Path("studies"),
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the counts as JSON")] = False,
) -> None:
    """Done / running / pending / failed / diverged counts and an ETA."""
    from cnnlab.studies.runner import format_seconds, study_status

    folder, _spec, queue = _open(name, root, storage)
    status = study_status(folder, queue)
    if as_json:
        typer.echo(json.dumps(status.to_dict(), indent=2))
        return
    typer.echo(f"study {status.name}  ({status.path})")
    typer.echo(f"  total     {status.total}")
    typer.echo(f"  done      {status.done}  ({status.derived} answered from curves)")
    typer.echo(f"  running   {status.running}")
    typer.echo(f"  pending   {status.pending}")
    typer.echo(f"  failed    {status.failed}")
    typer.echo(f"  diverged  {status.diverged}")
    if status.eta_seconds is not None and not status.finished:
        typer.echo(f"  ETA       {format_seconds(status.eta_seconds)}")
    for err in status.errors[:20]:
        typer.echo(f"  failed: {err['variant']} #{err['repeat']} ({err['key']}): {err['error']}")


def _write_report(folder, out: Path | None) -> dict[str, Path]:
    from cnnlab.report.render import write_report

    files = write_report(folder.path, out_dir=out)
    for label, path in files.items():
        typer.echo(f"{label}: {path}")
    return files


@study_app.command("report")
def report_cmd(
    name: Annotated[str, typer.Argument(help="study name (or study folder)")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="output folder (default: report/ in the study folder)"),
    ] = None,
    root: RootOpt = Path("studies"),
    storage: StorageOpt = None,
) -> None:
    """Write report.md and a self-contained report.html (tables, plots, notes)."""
    from cnnlab.studies.runner import pull_results

    folder, _, queue = _open(name, root, storage)
    if queue is not None:
        pulled = pull_results(folder, queue)
        if pulled:
            typer.echo(f"note: wrote {pulled} run folder(s) from results held in the store")
    _write_report(folder, out)


@study_app.command("combine")
def combine_cmd(
    name: Annotated[str, typer.Argument(help="study name (or study folder)")],
    workers: WorkersOpt = None,
    storage: StorageOpt = None,
    device: DeviceOpt = None,
    root: RootOpt = Path("studies"),
    heartbeat: HeartbeatOpt = 10,
    threads: ThreadsOpt = None,
    fuse: FuseOpt = None,
) -> None:
    """Queue and run the variant taking each factor's best value (with repeats)."""
    from cnnlab.studies.runner import combine_study
    from cnnlab.studies.worker import fuse_mode

    if fuse is not None:
        fuse = fuse_mode(fuse, what="--fuse")

    progress = StudyProgress()
    try:
        status = combine_study(
            name,
            root=root,
            storage=storage,
            workers=workers,
            device=device,
            on_event=progress,
            heartbeat_interval=heartbeat,
            threads=threads,
            fuse=fuse,
        )
    except KeyboardInterrupt:
        typer.echo(f"interrupted; run the same command again to finish combining {name}", err=True)
        raise typer.Exit(130) from None
    _exit_if_failed([status], root)


# -- recipes ---------------------------------------------------------------------------


@recipes_app.command("list")
def recipes_list() -> None:
    """The built-in recipes."""
    from cnnlab.studies.recipes import list_recipes

    entries = list_recipes()
    width = max((len(n) for n, _ in entries), default=0)
    for name, description in entries:
        typer.echo(f"{name:<{width}}  {description}")


@recipes_app.command("show")
def recipes_show(
    name: Annotated[str, typer.Argument(help="recipe name")],
    quick: Annotated[bool, typer.Option("--quick", help="show the resolved quick form")] = False,
) -> None:
    """Print a recipe's spec (as shipped, or its resolved quick form)."""
    import yaml

    from cnnlab.studies.recipes import recipe_specs, recipe_text

    if not quick:
        typer.echo(recipe_text(name).rstrip())
        return
    for spec in recipe_specs(name, quick=True):
        data = spec.to_yaml_dict()
        typer.echo("---")
        typer.echo(yaml.safe_dump(data, sort_keys=False).rstrip())


@recipes_app.command("run")
def recipes_run(
    name: Annotated[str, typer.Argument(help="recipe name (see: cnnlab recipes list)")],
    overrides: OverridesArg = None,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="small and fast form (data subset, few epochs and repeats)"),
    ] = False,
    root: RootOpt = Path("studies"),
    workers: WorkersOpt = None,
    storage: StorageOpt = None,
    device: DeviceOpt = None,
    heartbeat: HeartbeatOpt = 10,
    threads: ThreadsOpt = None,
    fuse: FuseOpt = None,
    report: Annotated[
        bool, typer.Option("--report/--no-report", help="write each study's report at the end")
    ] = True,
    dry_run: DryRunOpt = False,
) -> None:
    """Run a built-in recipe (each of its studies), then write the report(s)."""
    from cnnlab.studies.folder import StudyFolder
    from cnnlab.studies.recipes import recipe_specs

    t0 = time.perf_counter()
    statuses = []
    for spec in recipe_specs(name, quick=quick, overrides=overrides or []):
        status = _run_one_study(
            spec,
            root=root,
            storage=storage,
            workers=workers,
            device=device,
            heartbeat=heartbeat,
            threads=threads,
            fuse=fuse,
            dry_run=dry_run,
        )
        if report and status is not None:
            _write_report(StudyFolder.at(root, spec.name), None)
        if status is not None:
            statuses.append(status)
    if not dry_run:
        typer.echo(f"recipe {name} done in {time.perf_counter() - t0:.0f}s")
    _exit_if_failed(statuses, root)


def _exit_if_failed(statuses, root: Path) -> None:
    """Exit with status 1 when runs failed for good, so scripts and CI notice.

    Diverged runs are results, not failures. The report is written first: the
    runs that finished are as good as ever.
    """
    failed = [s for s in statuses if s.failed]
    if not failed:
        return
    where = f" --root {root}" if root != Path("studies") else ""
    for s in failed:
        typer.echo(
            f"{s.failed} run(s) of study {s.name} failed after their retries; "
            f"see: cnnlab study status {s.name}{where}",
            err=True,
        )
    raise typer.Exit(1)
