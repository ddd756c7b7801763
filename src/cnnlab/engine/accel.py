"""How a run uses its device: memory format and how often the host waits for it.

Each rule here was chosen by measurement (docs/benchmarks.md has the numbers):

- **channels_last.** oneDNN's convolutions and max pooling run NHWC batches
  faster than NCHW on a CPU (one thread, 2-core development machine: LeNet-5
  with max pooling 1.2-1.4x, DenseNet-121 1.2-1.3x, ResNet-18 and VGG-11
  1.1-1.2x). The exception is a small network that pools only by tiled
  averages, such as classic LeNet-5: :class:`cnnlab.layers.AvgPool2d` has a
  fast path for NCHW, and convolutions of a few channels gain nothing from
  NHWC, so NCHW is 1.06-1.3x faster there. On CUDA the gain comes
  with reduced precision (tensor-core convolutions want NHWC: issue 6 measured
  ResNet-18 at 19,800 img/s in fp32 NCHW against 46,500 img/s with bf16 +
  channels_last on an H100), so ``auto`` turns it on there only for bf16/fp16.
  Networks without convolutions (the MLP) gain nothing and keep NCHW.
- **Host synchronisation.** Reading a device value (``.item()``) makes the host
  wait for the GPU, which leaves it idle while Python prepares the next step. On
  an accelerator the divergence flag is read once per epoch; on the CPU reading
  it is free, so it is read every step and a diverging run stops at once.
- **Host allocator.** glibc may hand big blocks (a LeNet-5 activation at
  batch 256 is 4.8 MB) back to the kernel as soon as they are freed, and
  then every step page-faults its activations and gradients in again: a bare
  LeNet-5 step on one CPU thread took 28-31 ms with 3,700 page faults against
  20-21 ms with one. Whether it does depends on glibc's adaptive threshold,
  that is on what the process happened to allocate first, so training on the
  CPU tells glibc to keep freed memory for reuse.
"""

from __future__ import annotations

import ctypes
import gc
import platform
from typing import Literal

import torch
from torch import nn
from torch.nn.modules import pooling

from cnnlab.layers import tile_window

ChannelsLast = bool | Literal["auto"]


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


#: Widest convolution (output channels) of a network that stays in NCHW on the CPU when it
#: pools only by tiled averages (classic LeNet-5 has 6 and 16). VGG-11 at width 1/4 with
#: average pooling (16-128 channels) was 5% faster in channels_last.
_SMALL_CONV_CHANNELS = 64


_POOLING = (pooling._AvgPoolNd, pooling._MaxPoolNd, pooling._AdaptiveMaxPoolNd, pooling._LPPoolNd)


def _small_and_tile_averaged(model: nn.Module) -> bool:
    """Whether every pooling layer of ``model`` tiles with an average, and its convolutions are small."""
    pools = [m for m in model.modules() if isinstance(m, _POOLING)]
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return (
        bool(pools)
        and all(isinstance(m, nn.AvgPool2d) and tile_window(m) is not None for m in pools)
        and all(m.out_channels <= _SMALL_CONV_CHANNELS for m in convs)
    )


def use_channels_last(
    setting: ChannelsLast, model: nn.Module, device: torch.device, precision: str
) -> bool:
    """Whether to run ``model`` with channels_last weights and batches.

    ``True``/``False`` are obeyed (on every device type, MPS included); ``auto``
    means: convolutional networks on the CPU, except small ones that pool only
    by tiled averages, and on CUDA with bf16 or fp16.
    """
    if setting != "auto":
        return bool(setting)
    if not has_convolutions(model):
        return False
    if device.type == "cpu":
        return not _small_and_tile_averaged(model)
    return device.type == "cuda" and precision in ("bf16", "fp16")


#: mallopt parameters (glibc's malloc.h) and the values training on the CPU sets: blocks
#: up to 32 MiB (glibc's ceiling on 64-bit) come from the heap, and up to 2 GiB of free
#: heap is kept rather than trimmed. Setting either one turns glibc's adaptive threshold
#: off, so both are set: measured, the trim threshold alone made steps slower.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_FREED = ((_M_MMAP_THRESHOLD, 32 * 2**20), (_M_TRIM_THRESHOLD, 2**31 - 1))
_host_tuned: bool | None = None


def keep_freed_host_memory(device: torch.device) -> bool:
    """Make glibc reuse freed blocks instead of returning them to the kernel; True if it did.

    Applies once per process, only to training on the CPU (on an accelerator
    the big tensors live in its own caching allocator) and only where the C
    library is glibc (elsewhere there is nothing to call). The cost is that a
    process keeps its peak host memory until it exits.
    """
    global _host_tuned
    if device.type != "cpu":
        return False
    if _host_tuned is None:
        _host_tuned = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):
                return False
            _host_tuned = all(mallopt(param, value) == 1 for param, value in _KEEP_FREED)
    return _host_tuned


def cuda_only_notes(precision: str, cuda_graph: bool | str, device: torch.device) -> list[str]:
    """Notes for a run's summary: settings asked for that only CUDA has, ignored on ``device``."""
    if device.type == "cuda":
        return []
    notes = []
    if precision != "fp32":
        notes.append(f"train.precision={precision} needs CUDA; running fp32 on {device.type}")
    if cuda_graph is True:
        notes.append(f"train.cuda_graph=true needs CUDA; running eagerly on {device.type}")
    return notes


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype of an epoch's loss sums on ``device``: float64, except on Apple's MPS.

    A float32 sum of tens of thousands of per-batch losses drifts in its last
    digits, so sums are kept in double; MPS has no float64 at all (a double
    tensor there is an error), and its float32 sums are rounded like a CPU's.
    """
    return torch.float32 if device.type == "mps" else torch.float64


def check_every_step(device: torch.device) -> bool:
    """Whether the divergence flag is read after every step (else once per epoch)."""
    return device.type == "cpu"


# ---------------------------------------------------------------- CUDA graphs
#
# A small network's training step is dozens of kernels of a few microseconds
# each; launched one by one from Python the GPU waits for the host most of the
# time (issue 6: 2.5 ms per LeNet-5 step with a naive resident loop on an H100,
# where the arithmetic takes a fraction of that). A CUDA graph records the
# whole step (forward, backward, optimizer, metric sums) once and replays it
# with one launch. Replays read and write fixed memory, so everything a step
# takes in (batch indices, augmentation draws, learning rates) is copied into
# fixed buffers first and everything it produces is accumulated in place.


def use_cuda_graph(setting: bool | Literal["auto"], device: torch.device, compiled: bool) -> bool:
    """Whether fused groups (and single runs on CUDA, as groups of one) replay steps as graphs.

    ``auto`` means on CUDA unless the step is already compiled (torch.compile
    manages its own graphs); ``True`` on another device is ignored with a note
    (:func:`cuda_only_notes`).
    """
    if device.type != "cuda":
        return False
    return (not compiled) if setting == "auto" else bool(setting)


#: Work per step (multiply-accumulates of one batch's forward pass) up to which a single
#: run on CUDA trains as a fused group of one with graph replay. LeNet-5 at batch 256 is
#: 0.1 G: launches dominate. ResNet-18 (small stem, 32x32) at batch 256 is 143 G: the
#: arithmetic keeps an H100 busy, and the eager trainer's channels_last + bf16 path
#: (which a fused group cannot use) is what makes it fast.
GRAPH_MAX_STEP_MACS = 10 * 10**9


def single_run_as_graph(
    setting: bool | Literal["auto"], device: torch.device, compiled: bool, macs: int
) -> bool:
    """Whether a single run replays its steps as CUDA graphs (as a fused group of one).

    ``auto``: on CUDA for small steps (:data:`GRAPH_MAX_STEP_MACS`); ``True``: on CUDA always.
    """
    if not use_cuda_graph(setting, device, compiled):
        return False
    return setting is True or macs <= GRAPH_MAX_STEP_MACS


def make_current(device: torch.device) -> None:
    """Make ``cuda:N`` the current CUDA device of this process (no-op elsewhere).

    Streams, pinned-memory staging and graph capture act on the current device;
    a run on ``cuda:1`` whose process left GPU 0 current would create a
    context there and capture its graph on a stream of the wrong GPU.
    """
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def release_device_memory(device: torch.device) -> None:
    """Return a finished run's or group's cached GPU memory (no-op elsewhere).

    A study worker trains group after group in one process and sizes each from
    the GPU's free memory; what the caching allocator still holds from the last
    one would count as used.
    """
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


class CudaGraphStep:
    """Run a step function eagerly a few times, then capture it once and replay it.

    ``step()`` must take its inputs from buffers that the caller refills before
    every call and keep its results in tensors that live as long as this object.
    The warm-up calls run on a side stream, as torch requires before capture
    (lazy initialisation, cuDNN workspaces, autograd's accumulators); they are
    real training steps. If capture fails (an operation that cannot be
    recorded), the step runs eagerly from then on and :attr:`failure` says why.

    Everything runs with ``device`` current and captures on a stream of that
    device: ``torch.cuda.graph`` without a stream would capture on one made on
    whichever device was current when it was first used (GPU 0), and the
    kernels of a ``cuda:1`` step would escape the graph. What a replay returns
    is the graph's own output tensor, overwritten by the next replay.
    """

    warmup = 3

    def __init__(self, step, device: torch.device) -> None:
        self.step = step
        self.device = device
        self.calls = 0
        self.graph = None
        self.out = None
        self.failure: str | None = None
        self._stream = None

    def __call__(self):
        self.calls += 1
        if self.failure is not None:
            return self.step()
        if self.graph is not None:
            self.graph.replay()
            return self.out
        with torch.cuda.device(self.device):
            if self._stream is None:
                self._stream = torch.cuda.Stream(self.device)
            if self.calls <= self.warmup:
                return self._warm_up()
            return self._capture()

    def _warm_up(self):
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            out = self.step()
        current.wait_stream(self._stream)
        return out

    def _capture(self):
        current = torch.cuda.current_stream(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream):
                out = self.step()
        except RuntimeError as exc:
            # torch.cuda.graph ends the capture before it restores the stream, so a
            # capture that fails there leaves its stream current: put ours back.
            torch.cuda.set_stream(current)
            torch.cuda.synchronize(self.device)
            # Nothing ran during the failed capture: run this step eagerly.
            self.failure = " ".join(str(exc).split())[:200]
            return self.step()
        self.graph, self.out = graph, out
        graph.replay()  # capture records the step without running it
        return out


class EagerGraphStep(CudaGraphStep):
    """CudaGraphStep's contract without CUDA: calls the step on the fixed buffers every time.

    Used by the tests on the CPU, so the discipline a graph needs (inputs only
    through buffers, results accumulated in place) is checked where no GPU is.
    """

    def __call__(self):
        self.calls += 1
        return self.step()


#: What fused groups use to replay steps on CUDA (tests put EagerGraphStep here).
GRAPH_STEP: dict[str, type[CudaGraphStep]] = {"cuda": CudaGraphStep}
