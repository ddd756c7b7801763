"""``cnnlab data info`` and ``show`` output on tiny generated data."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnlab.cli import main

from ._factories import make_cifar100, make_idx_dataset, make_tree


def test_info_reports_sizes_counts_stats_and_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_idx_dataset(tmp_path / "MNIST" / "raw", n_train=30, n_test=10)
    assert main(["data", "info", "mnist", "--data-dir", str(tmp_path), "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert f"found in: {tmp_path / 'MNIST' / 'raw'}" in out
    assert "train        30  1x28x28" in out and "test         10  1x28x28" in out
    assert "images per class:" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:1].isdigit()}
    assert lines["0"] == ["3", "1"] and len(lines) == 10


def test_info_many_classes_summarized(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_cifar100(tmp_path)
    assert main(["data", "info", "cifar100", "--data-dir", str(tmp_path), "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "classes (100): fine0, fine1" in out and "images per class (train): 2 to 2" in out


def test_show_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_tree(tmp_path / "t", {"train": 3})
    out = tmp_path / "grid.png"
    assert (
        main(
            [
                "data",
                "show",
                "imagefolder",
                "--root",
                str(tmp_path / "t"),
                "--out",
                str(out),
                "--count",
                "5",
            ]
        )
        == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_show_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_tree(tmp_path / "t", {"train": 1})
    args = ["data", "show", "imagefolder", "--root", str(tmp_path / "t")]
    assert main([*args, "--out", str(tmp_path / "missing" / "g.png")]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: cannot write {tmp_path / 'missing' / 'g.png'}")
        and err.count("\n") == 1
    )
    assert main([*args, "--out", str(tmp_path / "g.png"), "--count", "0"]) == 2
    assert "count=0 is not allowed" in capsys.readouterr().err
    # A huge grid would draw for minutes before anyone saw a line.
    assert main([*args, "--out", str(tmp_path / "g.png"), "--count", "100000"]) == 2
    assert "count=100000 is not allowed; show 1 to 400 images" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_get_refuses_a_timeout_that_is_not_positive(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "get", "fashion-mnist", "--timeout", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid value for '--timeout'") and err.count("\n") == 1, err
