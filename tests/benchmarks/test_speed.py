"""Smoke test: the speed benchmark runs end to end on a tiny slice of Fashion-MNIST."""

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.realdata
@pytest.mark.skipif(
    not FASHION.is_file(), reason="Fashion-MNIST not installed (apt install dataset-fashion-mnist)"
)
def test_speed_quick_runs_and_writes_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.syspath_prepend(str(BENCH))
    speed = importlib.import_module("speed")
    args = [
        "--quick",
        "--device",
        "cpu",
        "--cases",
        "lenet",
        "fused-lenet",
        "--subset",
        "256",
        "--test-subset",
        "128",
    ]
    assert speed.main([*args, "--members", "2", "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "speed.json").read_text())
    loops = [(r["case"], r["loop"]) for r in result["rows"]]
    # one textbook run serves both cases (same settings), then the engine, then the fused group
    assert loops == [
        ("lenet", "textbook (0 workers)"),
        ("lenet", "cnnlab"),
        ("fused-lenet", "cnnlab"),
        ("fused-lenet", "cnnlab fused x2"),
    ]
    for row in result["rows"]:
        assert (
            row["examples_per_sec"] > 0 and row["train_seconds"] > 0 and 0 <= row["test_acc"] <= 1
        )
        assert row["loop"].startswith("textbook") or (
            row["ratio"] > 0 and set(row["extra"]["statuses"]) == {"completed"}
        )
    assert (
        result["rows"][0]["extra"]["d2l_examples_per_sec"] >= result["rows"][0]["examples_per_sec"]
    )
    table = (tmp_path / "out" / "speed.md").read_text()
    assert "| fused-lenet | cnnlab fused x2 |" in table
    for name in ("speed", "textbook_loop"):
        sys.modules.pop(name, None)


def test_the_textbook_network_is_built_from_torch_stock_layers(monkeypatch):
    """The textbook loop trains cnnlab's network with nn.AvgPool2d and nn.Flatten, as d2l does."""
    import torch
    from torch import nn

    from cnnlab import layers
    from cnnlab.models import create_model

    monkeypatch.syspath_prepend(str(BENCH))
    textbook_loop = importlib.import_module("textbook_loop")
    ours = create_model("lenet5")
    stock = textbook_loop.stock_layers(create_model("lenet5"))
    stock.load_state_dict(ours.state_dict())
    assert not any(isinstance(m, layers.AvgPool2d | layers.Flatten) for m in stock.modules())
    assert sum(type(m) is nn.AvgPool2d for m in stock.modules()) == 2
    assert sum(type(m) is nn.Flatten for m in stock.modules()) == 1
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(stock(x), ours(x), atol=1e-6)
    sys.modules.pop("textbook_loop", None)


def test_the_cifar_archive_is_found_where_the_gpu_kit_carries_it(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    textbook_loop = importlib.import_module("textbook_loop")
    (tmp_path / "cifar-10-jpeg.tar.gz").write_bytes(b"")
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    assert textbook_loop._cifar_archive() == tmp_path / "cifar-10-jpeg.tar.gz"
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "elsewhere"))
    assert textbook_loop._cifar_archive().parent.name == "data"  # ../shared/data
