"""CUDA-only checks of the fast path (skipped without a GPU; run by `benchmarks/gpu.sh check`).

What they guard: graph replay trains the same networks as eager steps, a
single small run on CUDA goes through the graph group, and no step inside an
epoch makes the host wait for the device.
"""

import math

import pytest
import torch

from cnnlab.config import load_config
from cnnlab.engine import checkpoint as ckpt
from cnnlab.engine.fused import train_group
from cnnlab.engine.trainer import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

BASE = ["train.epochs=2", "train.batch_size=32", "train.device=cuda"]


def _cfgs(*extra, k=2):
    return [
        load_config(overrides=[*BASE, *extra, f"train.seed={i}", f"optim.lr={0.1 / (i + 1)}"])
        for i in range(k)
    ]


def _weights(run):
    return ckpt.load_checkpoint(run.path / "checkpoints" / "last.pt")["model"]


class _NoSyncInsideEpoch:
    """A step callback that turns host syncs into errors between the second and the last step."""

    def __init__(self, after: int = 1):
        self.after, self.checked = after, 0

    def __call__(self, event, info):
        if event != "step":
            return
        if info["batch"] >= info["steps"] - 1:
            # after the next-to-last step: the last step and the epoch's end read results
            torch.cuda.set_sync_debug_mode("default")
        elif info["batch"] >= self.after:
            torch.cuda.set_sync_debug_mode("error")
            self.checked += 1


@pytest.mark.parametrize(
    "extra", [("model=lenet5",), ("model=lenet5-bn", "data.augment.hflip=0.5")]
)
def test_graph_replay_equals_eager_steps(tmp_path, patch_splits, extra):
    # Batch 48: five full batches replay the graph, the last one (16 images) runs eagerly
    # on the same sums and weights after the capture.
    extra = (*extra, "train.batch_size=48")
    eager = train_group(
        _cfgs(*extra, "train.cuda_graph=false"),
        [tmp_path / f"e{i}" for i in range(2)],
        splits=patch_splits,
    )
    graph = train_group(
        _cfgs(*extra, "train.cuda_graph=true"),
        [tmp_path / f"g{i}" for i in range(2)],
        splits=patch_splits,
    )
    for e, g in zip(eager, graph):
        assert not any("capture failed" in n for n in g.summary["notes"]), g.summary["notes"]
        assert any("CUDA graph" in n for n in g.summary["notes"])
        for key, value in _weights(e).items():
            assert torch.allclose(
                value.double(), _weights(g)[key].double(), atol=1e-4, rtol=1e-4
            ), key


def test_single_small_run_on_cuda_replays_graphs_and_matches_cpu(
    tmp_path, patch_splits, monkeypatch
):
    # TF32 (cuDNN's default for convolutions) would compare 10-bit mantissas with fp32
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cfg = load_config(overrides=[*BASE, "model=lenet5-modern", "optim.lr=0.05"])
    gpu = train(cfg, run_dir=tmp_path / "gpu", splits=patch_splits)
    cpu = train(
        load_config(overrides=[*BASE, "model=lenet5-modern", "optim.lr=0.05", "train.device=cpu"]),
        run_dir=tmp_path / "cpu",
        splits=patch_splits,
    )
    assert any("CUDA graph" in n for n in gpu.summary["notes"])
    for a, b in zip(gpu.metrics, cpu.metrics):
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-3, abs_tol=1e-4)


@pytest.mark.parametrize("graph", ["true", "false"])
def test_fused_steps_do_not_sync_inside_an_epoch(tmp_path, patch_splits, graph):
    guard = _NoSyncInsideEpoch(after=5)  # graph capture (step 4) may synchronize by itself
    try:
        runs = train_group(
            _cfgs("model=lenet5", "train.batch_size=16", f"train.cuda_graph={graph}"),
            [tmp_path / f"r{i}" for i in range(2)],
            splits=patch_splits,
            callback=guard,
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert guard.checked > 0 and all(r.status == "completed" for r in runs)


def test_eager_trainer_does_not_sync_inside_an_epoch(tmp_path, patch_splits):
    # The eager path (large models, fp16, DDP): bf16 + channels_last, augmentation on the GPU.
    guard = _NoSyncInsideEpoch()
    cfg = load_config(
        overrides=[
            *BASE,
            "model=lenet5-bn",
            "train.batch_size=16",
            "train.cuda_graph=false",
            "train.precision=bf16",
            "data.augment.crop_padding=2",
            "data.augment.hflip=0.5",
        ]
    )
    try:
        run = train(cfg, run_dir=tmp_path / "r", splits=patch_splits, callback=guard)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert guard.checked > 0 and run.status == "completed"


@pytest.mark.parametrize("graph", ["true", "false"])
def test_a_run_with_dropout_resumes_to_the_uninterrupted_numbers(tmp_path, patch_splits, graph):
    # Ctrl-C after the capture (step 4), then resume: the masks must come from the generator
    # the checkpoint saved (the group's, or this GPU's for the eager trainer).
    overrides = [
        *BASE,
        "model=lenet5-modern",
        "model.dropout=0.5",
        "optim.lr=0.05",
        f"train.cuda_graph={graph}",
    ]
    whole = train(load_config(overrides=overrides), run_dir=tmp_path / "w", splits=patch_splits)

    def stop(event, info):
        if event == "step" and (info["epoch"], info["batch"]) == (1, 5):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(
            load_config(overrides=overrides),
            run_dir=tmp_path / "r",
            splits=patch_splits,
            callback=stop,
        )
    assert "cuda_run" in ckpt.load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["rng"]
    resumed = train(None, run_dir=tmp_path / "r", resume=True, splits=patch_splits)
    assert len(resumed.metrics) == len(whole.metrics) == 2
    for a, b in zip(whole.metrics, resumed.metrics):
        for key in ("train_loss", "val_loss"):
            assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-6), (key, a, b)
