"""Where a training epoch's time goes: kernels, launches and host syncs, per step.

Trains one epoch of a run under ``torch.profiler`` and prints the operators
sorted by device (or CPU) self time, and the CUDA runtime calls that matter
for launch-bound small models: kernel launches, graph launches, copies and
stream/device synchronisations, each per training step. It is the profile
docs/benchmarks.md asks for where a speed target is missed.

    python benchmarks/profile_step.py --device cuda                      # LeNet-5, graph replay
    python benchmarks/profile_step.py --device cuda --option train.cuda_graph=false
    python benchmarks/profile_step.py --device cpu --subset 5000         # what a CPU step does
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

# The benchmark scripts sit side by side; speed.py owns the shared helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import resolve_device

RUNTIME_CALLS = (
    "cudaLaunchKernel",
    "cudaLaunchKernelExC",
    "cudaGraphLaunch",
    "cudaMemcpyAsync",
    "cudaMemsetAsync",
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--model", default="lenet5")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.9)
    p.add_argument("--subset", type=int, default=None, help="training images (default all)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rows", type=int, default=25, help="operators to list")
    p.add_argument("--out", type=Path, default=None, help="folder for profile.json and profile.txt")
    args = p.parse_args(argv)

    from cnnlab.config import load_config
    from cnnlab.engine.inputs import load_run_data
    from cnnlab.engine.trainer import train

    device = resolve_device(args.device)
    overrides = [
        f"model={args.model}",
        f"train.batch_size={args.batch_size}",
        f"optim.lr={args.lr}",
        f"train.device={device}",
        "data=fashion-mnist",
        *args.option,
    ]
    if args.subset:
        overrides.append(f"data.subset={args.subset}")
    splits = load_run_data(load_config(overrides=overrides).data)
    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-profile-"))
    try:
        # One unprofiled epoch first: lazy initialisation, cuDNN plans, allocator growth.
        train(
            load_config(overrides=[*overrides, "train.epochs=1"]),
            run_dir=tmp / "warm",
            splits=splits,
        )
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as prof:
            run = train(
                load_config(overrides=[*overrides, "train.epochs=1"]),
                run_dir=tmp / "run",
                splits=splits,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    steps = run.summary["steps"]
    events = prof.key_averages()
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    table = events.table(sort_by=sort, row_limit=args.rows)
    counts = {e.key: e.count for e in events if e.key in RUNTIME_CALLS}
    lines = [
        (
            f"# {args.model}, batch {args.batch_size}, {device}, 1 epoch, {steps} steps, "
            f"train {run.summary['time']['train_seconds']:.3f} s, notes: {run.summary['notes']}"
        ),
        table,
        "CUDA runtime calls per training step (whole epoch incl. evaluation / steps):",
    ]
    lines += [f"  {name}: {counts.get(name, 0) / max(steps, 1):.2f}" for name in RUNTIME_CALLS]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profile.txt").write_text(text + "\n")
        (args.out / "profile.json").write_text(
            json.dumps(
                {"steps": steps, "summary": run.summary, "runtime_calls": counts},
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
