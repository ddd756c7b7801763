"""IDX reading (MNIST format): layouts, gzip or not, and every way a file can be wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.cli import main
from cnnlab.data import load_dataset
from cnnlab.data.idx import parse_idx
from cnnlab.errors import DataError

from ._factories import IDX_NAMES, idx_bytes, make_idx_dataset, write


@pytest.mark.parametrize("layout", ["", "mnist", "MNIST/raw", "MNIST"])
@pytest.mark.parametrize("gz", [True, False])
def test_reads_every_layout_gzipped_or_not(tmp_path: Path, layout: str, gz: bool) -> None:
    folder = tmp_path / "d" / layout if layout else tmp_path / "d"
    arrays = make_idx_dataset(folder, gz=gz)
    for split in ("train", "test"):
        data = load_dataset("mnist", split, data_dir=tmp_path / "d", verify=False)
        images, labels = arrays[split]
        assert data.images.dtype == torch.uint8 and data.images.shape == (len(images), 1, 28, 28)
        assert torch.equal(data.images[:, 0], torch.from_numpy(images))
        assert torch.equal(data.labels, torch.from_numpy(labels).long())
        assert data.source == str(folder)
        assert data.classes == tuple("0123456789")


def test_torchvision_fashion_layout(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path / "FashionMNIST" / "raw", n_train=20)
    data = load_dataset("fashion_mnist", data_dir=tmp_path, verify=False)
    assert len(data) == 20 and data.classes[0] == "T-shirt/top"


def test_loaded_once_then_reloaded_when_files_change(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path, gz=False)
    first = load_dataset("mnist", data_dir=tmp_path, verify=False)
    assert load_dataset("mnist", data_dir=tmp_path, verify=False) is first
    make_idx_dataset(tmp_path, gz=False, n_train=12, seed=5)
    second = load_dataset("mnist", data_dir=tmp_path, verify=False)
    assert len(second) == 12


def test_search_order_data_dir_then_env_then_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_data: Path
) -> None:
    for name, n in (("mine", 10), ("env", 20), ("cache", 30)):
        make_idx_dataset(tmp_path / name, n_train=n)
    monkeypatch.setenv("CNNLAB_DATA", f"{tmp_path / 'nowhere'}:{tmp_path / 'env'}")
    make_idx_dataset(isolated_data / "data" / "mnist", n_train=30)
    assert len(load_dataset("mnist", data_dir=tmp_path / "mine", verify=False)) == 10
    assert len(load_dataset("mnist", verify=False)) == 20
    monkeypatch.delenv("CNNLAB_DATA")
    assert len(load_dataset("mnist", verify=False)) == 30


def test_parse_idx_checks_header_and_length(tmp_path: Path) -> None:
    good = idx_bytes(np.zeros((2, 3, 4), np.uint8))
    magic, array = parse_idx(good, tmp_path / "f")
    assert magic == 0x803 and array.shape == (2, 3, 4) and array.flags.writeable
    with pytest.raises(
        DataError, match=r"f is truncated: header says 2x3x4 \(24 bytes of data\), file holds 23"
    ):
        parse_idx(good[:-1], tmp_path / "f")
    with pytest.raises(DataError, match="has trailing data"):
        parse_idx(good + b"\0", tmp_path / "f")
    with pytest.raises(DataError, match="is not an IDX file"):
        parse_idx(b"PK\x03\x04rest", tmp_path / "f")
    with pytest.raises(DataError, match="magic number empty"):
        parse_idx(b"", tmp_path / "f")


def _info(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["data", "info", "mnist", "--data-dir", str(tmp_path), *extra])
    err = capsys.readouterr().err
    return code, err


def _assert_one_line(err: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_truncated_gzip_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_idx_dataset(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:500])
    code, err = _info(tmp_path, capsys, "--no-verify")
    assert code == 2
    _assert_one_line(err)
    assert f"{path} is truncated or corrupt" in err


def test_cli_truncated_idx_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_idx_dataset(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    code, err = _info(tmp_path, capsys, "--no-verify")
    assert code == 2
    _assert_one_line(err)
    assert f"{path} is truncated: header says 20x28x28" in err


def test_cli_labels_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_idx_dataset(tmp_path, gz=False)
    labels = np.zeros(40, np.uint8)
    labels[7] = 12
    write(tmp_path / IDX_NAMES["train"][1], idx_bytes(labels))
    code, err = _info(tmp_path, capsys, "--no-verify")
    assert code == 2
    assert "train-labels-idx1-ubyte holds label 12; labels must be in 0..9" in err


def test_cli_images_and_labels_swapped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arrays = make_idx_dataset(tmp_path, gz=False)
    write(tmp_path / IDX_NAMES["train"][0], idx_bytes(arrays["train"][1]))
    code, err = _info(tmp_path, capsys, "--no-verify")
    assert code == 2
    assert (
        "train-images-idx3-ubyte is not an image file of 28x28 uint8 images (magic 0x00000801"
        in err
    )


def test_cli_count_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_idx_dataset(tmp_path, gz=False)
    write(tmp_path / IDX_NAMES["test"][1], idx_bytes(np.zeros(3, np.uint8)))
    code, err = _info(tmp_path, capsys, "--no-verify")
    assert code == 2
    assert "t10k-images-idx3-ubyte holds 20 images but" in err and "holds 3 labels" in err


def test_cli_checksum_mismatch_is_refused_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_idx_dataset(tmp_path)
    code, err = _info(tmp_path, capsys)
    assert code == 2
    _assert_one_line(err)
    assert (
        "train-images-idx3-ubyte.gz does not match the official train-images-idx3-ubyte: sha256"
        in err
    )
    assert "--no-verify" in err


def test_checksum_is_of_the_decompressed_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recompressed copies (as Debian ships) pass; the check is on the payload."""
    import dataclasses

    from cnnlab.data import DATASETS, catalog

    from ._factories import idx_specs

    arrays = make_idx_dataset(tmp_path / "a", gz=True)
    make_idx_dataset(tmp_path / "b", gz=False)
    source = dataclasses.replace(catalog.MNIST, files=idx_specs(arrays))
    for folder in ("a", "b"):
        data = source.load("train", data_dir=tmp_path / folder, verify=True)
        assert len(data) == 40
    assert DATASETS.get("mnist") is catalog.MNIST
