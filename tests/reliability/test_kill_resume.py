"""Training SIGKILLed at 20 random points (mid-epoch included), resumed each time.

The final weights must be bitwise equal to an uninterrupted run on the CPU, and
metrics.csv must have every epoch exactly once.
"""

from __future__ import annotations

import random
import signal

import pytest
import torch

from cnnlab.engine import checkpoint as ckpt
from cnnlab.engine.run import read_metrics
from tests.engine.test_resume import _run

STEPS_PER_EPOCH, EPOCHS = 8, 3
# Every point at which a kill can land, in the order a run passes them.
TIMELINE = [
    point
    for epoch in range(1, EPOCHS + 1)
    for point in [
        f"step:{(epoch - 1) * STEPS_PER_EPOCH + b}" for b in range(1, STEPS_PER_EPOCH + 1)
    ]
    + [f"epoch:{epoch}"]
]


@pytest.mark.slow
def test_twenty_random_kills(tmp_path):
    seed = 20261123
    points = sorted(random.Random(seed).sample(range(len(TIMELINE)), 20))
    reference = tmp_path / "reference"
    assert _run(reference, "none", resume=False) == 0

    killed = tmp_path / "killed"
    for i, p in enumerate(points):
        code = _run(killed, TIMELINE[p], resume=i > 0)
        assert code == -signal.SIGKILL, f"kill at {TIMELINE[p]} (seed {seed}) did not happen"
    assert _run(killed, "none", resume=True) == 0

    ref_w = ckpt.load_checkpoint(reference / "checkpoints" / "last.pt")["model"]
    got_w = ckpt.load_checkpoint(killed / "checkpoints" / "last.pt")["model"]
    for key in ref_w:
        assert torch.equal(ref_w[key], got_w[key]), key
    rows = read_metrics(killed / "metrics.csv")
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert [r["val_acc"] for r in rows] == [
        r["val_acc"] for r in read_metrics(reference / "metrics.csv")
    ]
