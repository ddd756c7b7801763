"""CIFAR python batches: read through the restricted unpickler, checked, concatenated."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.cli import main
from cnnlab.data import load_dataset, load_splits
from cnnlab.data.cifar import load_pickle
from cnnlab.errors import DataError

from ._factories import cifar_batch, make_cifar10, make_cifar100, write


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_batches_concatenate_in_order(tmp_path: Path, protocol: int) -> None:
    root = make_cifar10(tmp_path, protocol=protocol)
    data = load_dataset("cifar10", data_dir=tmp_path, verify=False)
    assert data.images.shape == (50, 3, 32, 32) and data.images.dtype == torch.uint8
    first = pickle.loads((root / "data_batch_1").read_bytes())
    assert torch.equal(data.images[:10].reshape(10, -1), torch.from_numpy(first["data"]))
    assert data.labels[:10].tolist() == first["labels"]
    assert data.classes == tuple(f"class{i}" for i in range(10))
    assert len(load_dataset("cifar10", "test", data_dir=tmp_path, verify=False)) == 10


def test_cifar10_python2_style_bytes_keys(tmp_path: Path) -> None:
    """Batches pickled with bytes keys (as Python 2 ``str`` arrives with encoding='bytes')."""
    root = make_cifar10(tmp_path)
    batch = pickle.loads((root / "test_batch").read_bytes())
    write(root / "test_batch", pickle.dumps({k.encode(): v for k, v in batch.items()}, protocol=2))
    assert len(load_dataset("cifar10", "test", data_dir=tmp_path, verify=False)) == 10


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    make_cifar100(tmp_path)
    fine = load_dataset("cifar100", data_dir=tmp_path, verify=False)
    coarse = load_dataset("cifar100", data_dir=tmp_path, verify=False, labels="coarse")
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert torch.equal(coarse.labels, fine.labels // 5)
    splits = load_splits("cifar100", data_dir=tmp_path, verify=False, val_fraction=0.5)
    assert len(splits.train) == 100 and len(splits.val) == 100 and len(splits.test) == 200


def test_cifar100_bad_label_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_cifar100(tmp_path)
    assert (
        main(
            [
                "data",
                "info",
                "cifar100",
                "--data-dir",
                str(tmp_path),
                "--no-verify",
                "-o",
                "labels=medium",
            ]
        )
        == 2
    )
    assert (
        "labels='medium' is not allowed for cifar100; choose one of: fine, coarse"
        in capsys.readouterr().err
    )


def test_official_md5_checked_before_unpickling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_cifar10(tmp_path)
    assert main(["data", "info", "cifar10", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "batches.meta does not match the official batches.meta: md5" in err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b[: len(b) // 2], "is not a readable CIFAR batch"),
        (lambda b: b"", "is not a readable CIFAR batch"),
        (lambda b: pickle.dumps([1, 2, 3], protocol=2), "is not a CIFAR batch: no 'data' entry"),
        (lambda b: cifar_batch(12, 3, num_classes=12), "holds label 10; labels must be in 0..9"),
        (
            lambda b: pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}),
            "'data' must be a uint8 N x 3072 array",
        ),
        (
            lambda b: pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}),
            "2 images but 1 labels",
        ),
        (
            lambda b: pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": ["x"]}),
            "'labels' must be a list of integers",
        ),
    ],
)
def test_damaged_batches_name_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change, message: str
) -> None:
    root = make_cifar10(tmp_path)
    path = root / "data_batch_3"
    path.write_bytes(change(path.read_bytes()))
    assert main(["data", "info", "cifar10", "--data-dir", str(tmp_path), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") or f"{path} " in err
    assert message in err and err.count("\n") == 1


def test_restricted_unpickler_allows_only_batch_contents(tmp_path: Path) -> None:
    ok = {
        "a": [1, 2.5, "s", b"b", (1, 2), None, True],
        "arr": np.arange(6, dtype=np.int64).reshape(2, 3),
    }
    loaded = load_pickle(tmp_path / "f", pickle.dumps(ok, protocol=2))
    assert loaded["a"] == ok["a"] and np.array_equal(loaded["arr"], ok["arr"])
    with pytest.raises(DataError, match=r"asks to run collections\.OrderedDict"):
        from collections import OrderedDict

        load_pickle(tmp_path / "f", pickle.dumps(OrderedDict(a=1)))
