"""Where data is looked for, and what a user is told when it is not there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.data import locate, locate_dataset
from cnnlab.errors import DataNotFoundError

from ._factories import make_idx_dataset


def test_search_roots_order_and_path_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_data: Path
) -> None:
    monkeypatch.setenv("CNNLAB_DATA", f"{tmp_path / 'e1'}{os.pathsep}{tmp_path / 'e2'}")
    monkeypatch.setattr(locate, "SYSTEM_ROOTS", ("/usr/share/datasets",))
    roots = locate.search_roots([f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}", tmp_path / "e1"])
    assert roots == [
        tmp_path / "a",
        tmp_path / "b",
        tmp_path / "e1",
        tmp_path / "e2",
        isolated_data / "data",
        Path("/usr/share/datasets"),
    ]


def test_debian_location_is_a_system_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_idx_dataset(tmp_path / "fashion-mnist")
    monkeypatch.setattr(locate, "SYSTEM_ROOTS", (str(tmp_path),))
    assert locate_dataset("fashion-mnist") == tmp_path / "fashion-mnist"


def test_partial_copy_is_mentioned(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(
        DataNotFoundError, match=r"has only some of the files \(missing t10k-labels-idx1-ubyte\)"
    ):
        locate_dataset("mnist", data_dir=tmp_path)


def test_cli_not_found_names_files_places_and_remedy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], isolated_data: Path
) -> None:
    code = main(["data", "info", "fashion-mnist", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "data set 'fashion-mnist' not found" in err
    assert "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]" in err
    assert f"{tmp_path}, {isolated_data / 'data'}" in err
    assert "FashionMNIST/raw" in err
    assert "apt install dataset-fashion-mnist" in err
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" in err
    assert "cnnlab data get fashion-mnist" in err


def test_cli_cifar_not_found(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", "cifar10"]) == 2
    err = capsys.readouterr().err
    assert "batches.meta, data_batch_1" in err and "cifar-10-batches-py" in err
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in err


def test_cli_list_shows_where_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_idx_dataset(tmp_path / "MNIST" / "raw")
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"found in {tmp_path / 'MNIST' / 'raw'}" in out
    assert "not found (cnnlab data get cifar10)" in out
    for name in ("mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder"):
        assert name in out
