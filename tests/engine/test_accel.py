"""Device policies: which runs use channels_last and CUDA graphs (no GPU needed to decide)."""

import platform

import pytest
import torch

from cnnlab.config import load_config
from cnnlab.engine import accel
from cnnlab.engine import distributed as D
from cnnlab.engine.accel import GRAPH_MAX_STEP_MACS, single_run_as_graph
from cnnlab.engine.fused import step_macs
from cnnlab.engine.trainer import _as_graph_group

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_small_steps_replay_as_graphs_large_ones_stay_eager():
    lenet = load_config(overrides=["model=lenet5"])
    resnet = load_config(overrides=["model=resnet18", "model.stem=small", "data.resize=32"])
    assert step_macs(lenet) < GRAPH_MAX_STEP_MACS < step_macs(resnet)
    assert single_run_as_graph("auto", CUDA, False, step_macs(lenet))
    assert not single_run_as_graph("auto", CUDA, False, step_macs(resnet))
    assert single_run_as_graph(True, CUDA, False, step_macs(resnet))
    assert not single_run_as_graph("auto", CPU, False, step_macs(lenet))
    assert not single_run_as_graph("auto", CUDA, True, step_macs(lenet))  # compiled


def test_which_single_runs_go_through_the_graph_group():
    ctx = D.DistContext()
    assert _as_graph_group(load_config(), ctx, CUDA)
    assert not _as_graph_group(load_config(), ctx, CPU)
    for unfusable in ("train.precision=fp16", "train.tensorboard=true"):
        assert not _as_graph_group(load_config(overrides=[unfusable]), ctx, CUDA), unfusable
    assert not _as_graph_group(load_config(overrides=["train.cuda_graph=false"]), ctx, CUDA)


def test_cuda_graph_setting_is_validated():
    import pytest

    from cnnlab.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"train.cuda_graph='sometimes' is not allowed; use true, false or auto"
    ):
        load_config(overrides=["train.cuda_graph=sometimes"])


def test_channels_last_policy():
    from torch import nn

    from cnnlab.engine.accel import use_channels_last

    conv, mlp = nn.Sequential(nn.Conv2d(1, 2, 3)), nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_channels_last("auto", conv, cpu, "fp32")
    assert not use_channels_last("auto", mlp, cpu, "fp32")
    assert not use_channels_last("auto", conv, cuda, "fp32")
    assert use_channels_last("auto", conv, cuda, "bf16")
    assert use_channels_last(True, mlp, cpu, "fp32") and not use_channels_last(
        False, conv, cpu, "fp32"
    )


@pytest.mark.parametrize(
    ("model", "options", "nhwc"),
    [
        ("lenet5", {}, False),  # 6 and 16 channels, tiled average pooling: NCHW is faster
        ("lenet5", {"activation": "relu"}, False),
        ("lenet5", {"pool": "max"}, True),
        ("lenet5", {"pool_stride": 1}, True),  # overlapping windows: torch's own pooling
        ("lenet5-modern", {}, True),
        ("vgg11", {"pool": "avg", "width": 0.25}, True),  # up to 128 channels
        ("resnet18", {"stem": "small"}, True),
    ],
)
def test_channels_last_on_the_cpu_except_small_nets_pooled_by_tiled_averages(model, options, nhwc):
    from cnnlab.engine.accel import use_channels_last
    from cnnlab.models import create_model

    assert use_channels_last("auto", create_model(model, **options), CPU, "fp32") is nhwc


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)
def test_training_on_the_cpu_keeps_freed_host_memory(monkeypatch):
    from cnnlab.engine import accel

    monkeypatch.setattr(accel, "_host_tuned", None)
    assert not accel.keep_freed_host_memory(CUDA)
    assert accel._host_tuned is None  # an accelerator run leaves the host allocator alone
    assert accel.keep_freed_host_memory(CPU) and accel._host_tuned is True


def test_cuda_graph_policy():
    from cnnlab.engine.accel import use_cuda_graph

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_cuda_graph("auto", cuda, compiled=False)
    assert not use_cuda_graph("auto", cuda, compiled=True)
    assert not use_cuda_graph(True, cpu, compiled=False)
    assert not use_cuda_graph(False, cuda, compiled=False)


def test_a_numbered_gpu_is_made_current_and_nothing_else_is(monkeypatch):
    # Streams, pinned staging and graph capture act on the current device: a run on
    # cuda:1 must make it current (tested without a GPU by recording the call).
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    for device in ("cuda:1", "cuda", "cpu"):
        accel.make_current(torch.device(device))
    assert calls == [torch.device("cuda", 1)]


def test_releasing_device_memory_touches_no_gpu_on_a_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    accel.release_device_memory(torch.device("cpu"))
    assert calls == []
    accel.release_device_memory(torch.device("cuda", 0))
    assert calls == ["empty"]
