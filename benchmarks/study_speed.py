"""A whole recipe end to end, with fused groups and without, in one table.

Runs a built-in recipe (default ``lenet-ablation``: about 350 runs, small batch
sizes included, plus the best combination) with ``fuse: auto`` and then with
``fuse: off`` on one device, each in a fresh temporary study root, exactly as
``cnnlab recipes run`` would (workers, queue, run folders, derived runs,
combination). Columns:

- ``workers``: local workers the runner chose (or ``--workers``);
- ``runs``: runs in the finished study (derived and combined runs included);
- ``trained``: runs actually trained (the rest are read off longer runs' curves);
- ``wall s``: wall time of the whole study, data loading and bookkeeping included;
- ``runs/s``: runs per wall second;
- ``test acc``: mean final test accuracy over the completed runs;
- ``diverged``: runs that diverged (a result, counted in ``runs``).

``--quick`` uses the recipe's quick form (a few minutes on a 2-core CPU). On a
GPU: ``python benchmarks/study_speed.py --device cuda --out results/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# The benchmark scripts sit side by side; speed.py owns the shared helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import fmt, machine, markdown_table, resolve_device


@dataclass
class Row:
    recipe: str
    device: str
    fuse: str
    workers: int
    runs: int
    trained: int
    wall_seconds: float
    runs_per_sec: float
    test_acc: float | None
    diverged: int
    failed: int


class Progress:
    """A line every tenth of the study, so a long benchmark shows it is alive."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, max(1, total), 0
        self.t0 = time.perf_counter()
        self.every = max(1, self.total // 10)

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "open":
            self.workers = int(info["workers"])
        if event != "end":
            return
        self.done += 1
        if self.done % self.every == 0:
            # (the best combination, when the recipe has one, comes on top of the total)
            print(
                f"  [{self.label}] {self.done} runs of {self.total}, {time.perf_counter() - self.t0:.0f}s",
                flush=True,
            )


def study_results(root: Path, name: str) -> tuple[list[float], int, int, int]:
    """Final test accuracies of the completed runs, and the counts of trained, diverged, failed."""
    from cnnlab.studies.folder import StudyFolder, read_summary

    folder = StudyFolder.at(root, name)
    accs, trained, diverged, failed = [], 0, 0, 0
    for key in folder.run_keys():
        summary = read_summary(folder.run_dir(key)) or {}
        status = summary.get("status")
        diverged += status == "diverged"
        failed += status == "failed"
        trained += status in ("completed", "diverged") and not summary.get("derived_from")
        acc = (summary.get("final") or {}).get("test_acc")
        if status == "completed" and acc is not None and math.isfinite(acc):
            accs.append(float(acc))
    return accs, trained, diverged, failed


def warm_up(recipe: str, *, quick: bool, device: str, overrides: list[str]) -> float:
    """Train the recipe's first config briefly, alone and as a fused pair, untimed.

    Without it, whichever fuse setting runs first pays the one-time costs of
    the process (imports, reading the data set, oneDNN/cuDNN and vmap start-up,
    matplotlib): about 3 s on the development CPU, a third of the quick study.
    Returns the seconds it took.
    """
    from cnnlab.config import build_config
    from cnnlab.engine.fused import fusable_key, train_group
    from cnnlab.engine.trainer import train
    from cnnlab.studies.recipes import recipe_specs
    from cnnlab.studies.runner import run_study
    from cnnlab.studies.spec import expand, spec_from_dict

    t0 = time.perf_counter()
    tree = expand(recipe_specs(recipe, quick=quick, overrides=overrides)[0])[0].config.to_dict()
    tree["data"].update(subset=256, test_subset=128)
    tree["train"].update(epochs=1, device=device)
    config = build_config(tree)
    with tempfile.TemporaryDirectory(prefix="cnnlab-study-speed-warmup-") as tmp:
        train(config, run_dir=Path(tmp) / "one")
        if fusable_key(config) is not None:
            other = build_config(
                {**tree, "train": {**tree["train"], "seed": tree["train"]["seed"] + 1}}
            )
            train_group([config, other], [Path(tmp) / "a", Path(tmp) / "b"])
        # and a one-run study: optuna, SQLAlchemy and the study store start up too
        spec = spec_from_dict({"name": "warmup", "base": tree, "repeats": 1})
        run_study(spec, root=Path(tmp) / "studies", workers=1, device=device, poll_seconds=0.5)
    return time.perf_counter() - t0


def run_recipe(
    recipe: str,
    *,
    quick: bool,
    device: str,
    fuse: str,
    workers: int | None,
    threads: int | None,
    overrides: list[str],
) -> Row:
    """One recipe, start to finish, in a fresh temporary study root."""
    from cnnlab.studies.recipes import recipe_specs
    from cnnlab.studies.runner import run_study
    from cnnlab.studies.spec import expand

    specs = recipe_specs(recipe, quick=quick, overrides=overrides)
    runs = trained = diverged = failed = 0
    accs: list[float] = []
    used_workers = 0
    with tempfile.TemporaryDirectory(prefix=f"cnnlab-study-speed-{fuse}-") as tmp:
        t0 = time.perf_counter()
        for spec in specs:
            progress = Progress(f"{spec.name}, fuse {fuse}", len(expand(spec)))
            status = run_study(
                spec,
                root=tmp,
                workers=workers,
                device=device,
                fuse=fuse,
                threads=threads,
                on_event=progress,
                poll_seconds=0.5,
            )
            runs += status.total
            used_workers = max(used_workers, getattr(progress, "workers", 0))
            a, t, d, f = study_results(Path(tmp), spec.name)
            accs += a
            trained, diverged, failed = trained + t, diverged + d, failed + f
        wall = time.perf_counter() - t0
    return Row(
        recipe=recipe + (" (quick)" if quick else ""),
        device=device,
        fuse=fuse,
        workers=used_workers,
        runs=runs,
        trained=trained,
        wall_seconds=wall,
        runs_per_sec=runs / wall if wall > 0 else float("nan"),
        test_acc=sum(accs) / len(accs) if accs else None,
        diverged=diverged,
        failed=failed,
    )


TABLE = [("recipe", "---"), ("device", "---"), ("fuse", "---")]
TABLE += [
    (t, "---:") for t in ("workers", "runs", "trained", "wall s", "runs/s", "test acc", "diverged")
]


def table(rows: list[Row]) -> str:
    """The results as a Markdown table."""
    return markdown_table(
        TABLE,
        [
            [
                r.recipe,
                r.device,
                r.fuse,
                str(r.workers),
                str(r.runs),
                str(r.trained),
                fmt(r.wall_seconds, ".1f"),
                fmt(r.runs_per_sec, ".2f"),
                fmt(r.test_acc, ".4f"),
                str(r.diverged),
            ]
            for r in rows
        ],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--recipe", default="lenet-ablation", help="a built-in recipe (cnnlab recipes list)"
    )
    p.add_argument("--quick", action="store_true", help="the recipe's quick form")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--fuse",
        nargs="+",
        default=["auto", "off"],
        choices=["auto", "off"],
        help="the fuse settings to compare, in this order",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="local workers (default: the runner's rule)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override of every run's base config, e.g. train.batch_size=8",
    )
    p.add_argument("--out", type=Path, default=None, help="folder for study_speed.json and .md")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    if device.startswith("cuda"):
        import torch

        torch.zeros(1, device=device)  # CUDA start-up is not part of the first study's time
    info = machine()
    print(
        f"# {info['date']}  {info.get('gpu', info['cpu'])}  ({info['cores']} cores, load {info['load_average'][0]:.2f})",
        flush=True,
    )
    warm = warm_up(args.recipe, quick=args.quick, device=device, overrides=args.override)
    print(f"# warm-up (untimed): {warm:.1f}s", flush=True)
    rows: list[Row] = []
    for fuse in args.fuse:
        rows.append(
            run_recipe(
                args.recipe,
                quick=args.quick,
                device=device,
                fuse=fuse,
                workers=args.workers,
                threads=args.threads,
                overrides=args.override,
            )
        )
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    info["load_average_end"] = os.getloadavg()
    print()
    print(table(rows))
    print(
        f"\nload average at the start {info['load_average'][0]:.2f}, at the end {info['load_average_end'][0]:.2f}"
    )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "study_speed.json").write_text(
            json.dumps(
                {
                    "machine": info,
                    "recipe": args.recipe,
                    "quick": args.quick,
                    "overrides": args.override,
                    "rows": [asdict(r) for r in rows],
                },
                indent=2,
                default=str,
            )
            + "\n"
        )
        (args.out / "study_speed.md").write_text(
            f"Machine: {json.dumps(info, default=str)}\n\n{table(rows)}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
