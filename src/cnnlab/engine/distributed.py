"""One run across several processes with PyTorch's own engine (torchrun + DDP).

``torchrun --nproc_per_node=N -m cnnlab train ...`` starts N copies of the same
command; each finds its rank in the environment torchrun sets. Every rank sees
the same global batch order (a function of seed and epoch only) and trains on
its own contiguous shard of each global batch; gradients are averaged by DDP
with the loss scaled so the update equals the single-process update on the
whole batch. Only rank 0 writes the run folder and the checkpoints, which hold
nothing rank-specific, so a run resumes with any number of ranks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else 0


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun prepared (gloo on CPU, nccl on CUDA)."""
    if not launched_by_torchrun():
        return DistContext(), device
    rank, world, local = (
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ.get("LOCAL_RANK", "0")),
    )
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world, local), device


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum tensors over ranks in place (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def broadcast_text(text: str, ctx: DistContext) -> str:
    """Rank 0's string on every rank (run folder names must agree)."""
    if not ctx.enabled:
        return text
    box = [text]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous part of ``t`` along dim 0."""
    return t.tensor_split(ctx.world_size)[ctx.rank] if ctx.enabled else t


def torchrun_command(nproc: int, cli_args: Sequence[str]) -> list[str]:
    """The command that re-runs ``cnnlab`` under torchrun with ``nproc`` processes on this machine."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "cnnlab",
        *cli_args,
    ]


def launch(nproc: int, cli_args: Sequence[str]) -> int:
    """Run the torchrun command and return its exit status."""
    return subprocess.call(torchrun_command(nproc, cli_args))
