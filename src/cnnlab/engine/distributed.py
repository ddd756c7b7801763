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
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from cnnlab.engine.interrupts import InterruptGate


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


def teardown(ctx: DistContext, *, wait: bool = True) -> None:
    """Leave the process group; ``wait=False`` when leaving on an exception.

    Waiting for ranks that have already exited fails with gloo's "Connection closed
    by peer" traceback, which then hides the exception (a Ctrl-C, a one-line error).
    """
    if ctx.enabled and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum tensors over ranks in place (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank (no-op alone).

    Each rank's last training step moves its own running statistics with its own
    shard; only rank 0's are saved, so the ranks evaluate with those, and the
    recorded numbers are the saved model's.
    """
    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


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


@contextmanager
def interrupted_with_peers(gate: InterruptGate, ctx: DistContext) -> Iterator[None]:
    """A collective that fails while a Ctrl-C is held is this rank's Ctrl-C.

    Every rank gets the Ctrl-C and stops at its next step boundary; a rank that had
    already begun the next step waits there for peers that have stopped, and its
    collective fails when they exit (a traceback beside rank 0's "interrupted"). That
    step's updates come after its collectives, so stopping there is stopping before it.
    """
    try:
        yield
    except RuntimeError:  # torch.distributed.DistBackendError and gloo's own errors
        if ctx.enabled and gate.held:
            raise KeyboardInterrupt from None
        raise


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


#: Where the ranks of a ``train.devices=N`` relaunch leave their one-line errors for the launcher.
ERROR_DIR_VAR = "CNNLAB_RANK_ERRORS"


def report_rank_error(message: str) -> bool:
    """Leave a rank's one-line error for :func:`launch` to raise once; False when not relaunched.

    Every rank of a run meets the same bad input, so printing it per rank said it N times.
    """
    folder = os.environ.get(ERROR_DIR_VAR)
    if not folder or not launched_by_torchrun():
        return False
    try:
        (Path(folder) / f"rank{launched_rank()}.txt").write_text(message)
    except OSError:
        return False
    return True


def launch(nproc: int, cli_args: Sequence[str]) -> int:
    """Run ``cnnlab`` under torchrun with ``nproc`` processes and return the run's exit status.

    torchrun runs in this process rather than as a child: its workers have their own session,
    so a terminal's Ctrl-C reaches only this process, and torchrun passes it on as SIGINT
    (each rank then stops between steps and rank 0 saves the checkpoint). A child torchrun
    was killed by ``subprocess.call`` 0.25 s after Ctrl-C and printed its traceback.

    Raises:
        RankError: the first rank to fail failed with this one-line error (said once here,
            not once per rank and then in torchrun's failure report).
    """
    import logging
    import tempfile

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    from cnnlab.errors import RankError

    # torchrun's warnings and failure reports repeat what the ranks said (its loggers each
    # have their own level, so the parent's would not do)
    quiet = {
        logger: logger.level
        for name, logger in logging.root.manager.loggerDict.items()
        if name.startswith("torch.distributed") and isinstance(logger, logging.Logger)
    }
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="cnnlab-ranks-") as errors:
        os.environ[ERROR_DIR_VAR] = errors
        try:
            torchrun(parse_args(torchrun_command(nproc, cli_args)[3:]))
            return 0
        except SignalException:
            return 130
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            status = failure.exitcode if failure.exitcode > 0 else 1
            said = Path(errors, f"rank{rank}.txt")
            if said.is_file():
                raise RankError(said.read_text(), status) from None
            return status  # a crash: the rank printed its traceback
        finally:
            os.environ.pop(ERROR_DIR_VAR, None)
            for logger, level in quiet.items():
                logger.setLevel(level)
