"""One epoch on the real Fashion-MNIST: the main job works end to end with a sensible accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnlab.cli import main

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not DEBIAN.is_dir(), reason="Fashion-MNIST absent: apt install dataset-fashion-mnist"
)
def test_one_epoch_of_modern_lenet_on_fashion_mnist(tmp_path, capsys):
    code = main(
        [
            "train",
            "model=lenet5-modern",
            "optim.lr=0.1",
            "optim.momentum=0.9",
            "train.epochs=1",
            "--runs",
            str(tmp_path),
            "--name",
            "real",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "examples/sec on cpu" in out
    summary = json.loads((tmp_path / "real" / "summary.json").read_text())
    assert summary["data"]["sizes"] == {"train": 54000, "val": 6000, "test": 10000}
    assert summary["data"]["source"].startswith(str(DEBIAN))
    # one epoch of a ReLU LeNet with momentum reaches ~0.8 on Fashion-MNIST; chance is 0.1
    assert summary["final"]["test_acc"] > 0.75
