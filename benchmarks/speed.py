"""cnnlab's engine against the textbook loop, on the same machine, in one table.

For each case the textbook loop (``textbook_loop.py``: torchvision data set,
``ToTensor``, shuffling DataLoader, ``.item()`` every step) and cnnlab's engine
train the same network with the same settings; the fused case trains a group of
K LeNets with :func:`cnnlab.engine.fused.train_group`. Columns:

- ``examples/s``: training images per second of training-loop wall time (all
  members for a fused group; the loader is inside the textbook's loop);
- ``train s``: that training-loop time (no evaluation, no data loading);
- ``runs/s``: finished runs per second of wall time, evaluation and run-folder
  writing included (data loading excluded: it is done once per study);
- ``test acc``: final test accuracy (mean over a group's members);
- ``x textbook``: examples/s ratio to the textbook loop (runs/s for groups).

``--quick`` shrinks every case (subsets, one epoch, four members) so the whole
table takes a few minutes on a 2-core CPU. On a GPU run it as
``python benchmarks/speed.py --device cuda``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

# The benchmark scripts sit side by side; the textbook loop is imported from beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import textbook_loop


@dataclass(frozen=True)
class Setting:
    """One side of a comparison: what to train and for how long."""

    model: str
    model_options: tuple[tuple[str, Any], ...]  # (key, value) pairs, so a Setting can key a cache
    data: str  # fashion-mnist or cifar10-jpeg
    epochs: int
    batch_size: int
    lr: float
    resize: int | None = None
    subset: int | None = None
    test_subset: int | None = None

    def engine_overrides(self) -> list[str]:
        out = [
            f"model={self.model}",
            f"optim.lr={self.lr}",
            f"train.batch_size={self.batch_size}",
            f"train.epochs={self.epochs}",
        ]
        out += [f"model.{k}={json.dumps(v)}" for k, v in self.model_options]
        if self.data == "cifar10-jpeg":
            out += ["data=imagefolder", f"data.root={textbook_loop.CIFAR_JPEG.resolve()}"]
        else:
            out += [f"data={self.data}"]
        if self.resize:
            out.append(f"data.resize={self.resize}")
        if self.subset:
            out.append(f"data.subset={self.subset}")
        if self.test_subset:
            out.append(f"data.test_subset={self.test_subset}")
        return out


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    full: Setting
    quick: Setting
    members: int = 0  # fused group size (0: a single run)
    quick_members: int = 0
    # Engine options on CUDA only: the configuration the GPU target refers to.
    cuda_options: tuple[str, ...] = ()


def _cifar_or_fashion(**kw: Any) -> Setting:
    if textbook_loop.CIFAR_JPEG.is_file():
        return Setting(data="cifar10-jpeg", **kw)
    return Setting(data="fashion-mnist", resize=32, **kw)


def cases() -> dict[str, Case]:
    lenet = Setting("lenet5", (), "fashion-mnist", epochs=10, batch_size=256, lr=0.9)
    resnet = _cifar_or_fashion(
        model="resnet18", model_options=(("stem", "small"),), epochs=2, batch_size=256, lr=0.05
    )
    vgg = Setting(
        "vgg11", (("width", 0.25),), "fashion-mnist", epochs=1, batch_size=128, lr=0.05, resize=224
    )
    return {
        "lenet": Case(
            "lenet", "LeNet-5 classic, lr 0.9, batch 256", lenet, replace(lenet, epochs=1)
        ),
        "resnet18": Case(
            "resnet18",
            "ResNet-18, small stem, 32x32",
            resnet,
            replace(resnet, epochs=1, subset=512, test_subset=256),
            # issue 6's 46,500 img/s reference is bf16 autocast + channels_last (auto with bf16)
            cuda_options=("train.precision=bf16",),
        ),
        "vgg11": Case(
            "vgg11",
            "VGG-11 (width 1/4), 224x224",
            vgg,
            replace(vgg, batch_size=64, subset=128, test_subset=64),
            cuda_options=("train.precision=bf16",),
        ),
        "fused-lenet": Case(
            "fused-lenet",
            "fused group of LeNet-5s (seeds and lrs differ)",
            lenet,
            replace(lenet, epochs=1, subset=10000, test_subset=2000),
            members=64,
            quick_members=4,
        ),
    }


@dataclass
class Row:
    case: str
    loop: str
    model: str
    data: str
    device: str
    examples_per_sec: float
    train_seconds: float
    runs_per_sec: float
    test_acc: float
    ratio: float | None = None
    cpu_seconds: float | None = None  # process CPU time (user + system) of the whole run(s)
    extra: dict[str, Any] = field(default_factory=dict)


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _label(s: Setting) -> tuple[str, str]:
    opts = ",".join(f"{k}={v}" for k, v in s.model_options)
    model = f"{s.model}({opts})" if opts else s.model
    data = s.data + (f"@{s.resize}" if s.resize else "") + (f" [{s.subset}]" if s.subset else "")
    return model, data


def run_textbook(case: str, s: Setting, device: str, workers: int) -> Row:
    """The textbook loop, with the host allocator set as the engine sets it on a CPU.

    With glibc's default, the textbook loop's speed depends on the process:
    5,200 or 7,000 examples/s from one start to the next on the development
    CPU, as its adaptive threshold happens to leave activations to be
    page-faulted in every step or not (docs/benchmarks.md). Giving it the
    engine's setting (:func:`cnnlab.engine.accel.keep_freed_host_memory`)
    measures the loop and not that luck, and gives the textbook its fast case.
    """
    from cnnlab.engine.accel import keep_freed_host_memory

    keep_freed_host_memory(torch.device(device))
    t, c = time.perf_counter(), _cpu_seconds()
    r = textbook_loop.train_textbook(
        s.model,
        s.data,
        model_options=dict(s.model_options),
        epochs=s.epochs,
        batch_size=s.batch_size,
        lr=s.lr,
        resize=s.resize,
        device=device,
        num_workers=workers,
        subset=s.subset,
        test_subset=s.test_subset,
    )
    wall = time.perf_counter() - t
    model, data = _label(s)
    return Row(
        case,
        f"textbook ({workers} workers)",
        model,
        data,
        r.device,
        r.examples_per_sec,
        r.train_seconds,
        1 / r.total_seconds,
        r.test_acc,
        cpu_seconds=_cpu_seconds() - c,
        extra={"d2l_examples_per_sec": r.d2l_examples_per_sec, "wall_seconds": wall},
    )


_SPLITS: dict[str, Any] = {}


def _splits(cfg) -> Any:
    from cnnlab.engine.inputs import load_run_data

    key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
    if key not in _SPLITS:
        _SPLITS[key] = load_run_data(cfg.data)
    return _SPLITS[key]


def run_engine(
    case: str, s: Setting, device: str, options: list[str], workdir: Path, members: int = 0
) -> Row:
    from cnnlab.config import load_config
    from cnnlab.engine.fused import train_group
    from cnnlab.engine.trainer import train

    k = max(members, 1)
    base = [*s.engine_overrides(), f"train.device={device}", *options]
    cfgs = [
        load_config(
            overrides=[*base, f"train.seed={i}", f"optim.lr={s.lr * (1 - 0.5 * i / k):.6g}"]
        )
        for i in range(k)
    ]
    splits = _splits(cfgs[0])
    dirs = [workdir / f"{case}-{'fused' if members else 'single'}-{i}" for i in range(k)]
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    t, c = time.perf_counter(), _cpu_seconds()
    if members:
        runs = train_group(cfgs, dirs, splits=splits)
    else:
        runs = [train(cfgs[0], run_dir=dirs[0], splits=splits)]
    wall = time.perf_counter() - t
    cpu = _cpu_seconds() - c
    summaries = [r.summary for r in runs]
    train_seconds = summaries[0]["time"]["train_seconds"]
    examples = sum(x["data"]["sizes"]["train"] * x["epochs_completed"] for x in summaries)
    accs = [x["final"]["test_acc"] for x in summaries if x["final"]["test_acc"] is not None]
    model, data = _label(s)
    return Row(
        case,
        (f"cnnlab fused x{k}" if members else "cnnlab")
        + (f" [{' '.join(o.split('.', 1)[-1] for o in options)}]" if options else ""),
        model,
        data,
        summaries[0]["device"],
        examples / train_seconds if train_seconds else float("nan"),
        train_seconds,
        k / wall,
        sum(accs) / len(accs) if accs else float("nan"),
        cpu_seconds=cpu,
        extra={
            "statuses": [x["status"] for x in summaries],
            "wall_seconds": wall,
            "notes": summaries[0]["notes"],
        },
    )


def machine() -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, torch threads, versions, GPU, load, date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def fmt(v: float | None, spec: str) -> str:
    """A table cell: ``-`` for a missing or NaN value."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def resolve_device(device: str) -> str:
    """``auto`` made concrete; a CUDA device where there is none is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {device!r} but CUDA is not available here; use cpu")
    return device


def markdown_table(columns: list[tuple[str, str]], rows: list[list[str]]) -> str:
    """A Markdown table (also readable in a terminal); ``columns`` are (title, ``---`` or ``---:``)."""
    lines = [
        "| " + " | ".join(title for title, _ in columns) + " |",
        "|" + "|".join(align for _, align in columns) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


TABLE = [("case", "---"), ("loop", "---"), ("model", "---"), ("data", "---"), ("device", "---")]
TABLE += [
    (t, "---:") for t in ("examples/s", "train s", "runs/s", "test acc", "x textbook", "CPU s")
]


def table(rows: list[Row]) -> str:
    """The results as a Markdown table."""
    return markdown_table(
        TABLE,
        [
            [
                r.case,
                r.loop,
                r.model,
                r.data,
                r.device,
                fmt(r.examples_per_sec, ",.0f"),
                fmt(r.train_seconds, ".2f"),
                fmt(r.runs_per_sec, ".3f"),
                fmt(r.test_acc, ".3f"),
                fmt(r.ratio, ".2f"),
                fmt(r.cpu_seconds, ".1f"),
            ]
            for r in rows
        ],
    )


def main(argv: list[str] | None = None) -> int:
    all_cases = cases()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument(
        "--quick", action="store_true", help="subsets, one epoch, 4 fused members (for a CPU)"
    )
    p.add_argument("--cases", nargs="+", default=list(all_cases), choices=list(all_cases))
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the textbook loop")
    p.add_argument(
        "--members", type=int, default=None, help="fused group size (default 64, 4 with --quick)"
    )
    p.add_argument("--epochs", type=int, default=None, help="override every case's epochs")
    p.add_argument("--subset", type=int, default=None, help="override every case's training subset")
    p.add_argument(
        "--test-subset", type=int, default=None, help="override every case's val/test subset"
    )
    p.add_argument(
        "--engine-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra engine config, e.g. train.precision=bf16",
    )
    p.add_argument("--no-textbook", action="store_true", help="skip the textbook loop")
    p.add_argument("--out", type=Path, default=None, help="folder for speed.json and speed.md")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    info = machine()
    print(
        f"# {info['date']}  {info.get('gpu', info['cpu'])}  ({info['cores']} cores, {info['torch_threads']} torch threads, load {info['load_average'][0]:.2f})",
        flush=True,
    )

    rows: list[Row] = []
    textbook_cache: dict[Setting, Row] = {}
    with tempfile.TemporaryDirectory(prefix="cnnlab-speed-") as tmp:
        for name in args.cases:
            case = all_cases[name]
            s = case.quick if args.quick else case.full
            if args.epochs is not None:
                s = replace(s, epochs=args.epochs)
            if args.subset is not None:
                s = replace(s, subset=args.subset)
            if args.test_subset is not None:
                s = replace(s, test_subset=args.test_subset)
            members = args.members or (case.quick_members if args.quick else case.members)
            reference = None
            if not args.no_textbook:
                if s not in textbook_cache:
                    textbook_cache[s] = run_textbook(name, s, device, args.workers)
                    rows.append(textbook_cache[s])
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
                reference = textbook_cache[s]
            options = [
                *(case.cuda_options if device.startswith("cuda") else ()),
                *args.engine_option,
            ]
            single = run_engine(name, s, device, options, Path(tmp))
            if reference is not None:
                single.ratio = single.examples_per_sec / reference.examples_per_sec
            rows.append(single)
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            if case.members:
                fused = run_engine(name, s, device, options, Path(tmp), members=members)
                if reference is not None:
                    fused.ratio = fused.runs_per_sec / reference.runs_per_sec
                fused.extra["runs_per_sec_vs_single_engine"] = (
                    fused.runs_per_sec / single.runs_per_sec
                )
                rows.append(fused)
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    info["load_average_end"] = os.getloadavg()
    print()
    print(table(rows))
    print(
        f"\nload average at the start {info['load_average'][0]:.2f}, at the end {info['load_average_end'][0]:.2f}"
    )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "speed.json").write_text(
            json.dumps(
                {"machine": info, "quick": args.quick, "rows": [asdict(r) for r in rows]},
                indent=2,
                default=str,
            )
            + "\n"
        )
        (args.out / "speed.md").write_text(
            f"Machine: {json.dumps(info, default=str)}\n\n{table(rows)}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
