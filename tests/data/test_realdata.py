"""The real data sets on this machine, checked against their published facts.

Skipped with a reason where the data is absent. Fashion-MNIST comes from Debian's
``dataset-fashion-mnist``; MNIST and the JPEG CIFAR-10 tree from ../shared/data.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.data import load_dataset, load_splits, locate

from .conftest import SHARED_DATA

pytestmark = pytest.mark.realdata

DEBIAN = Path("/usr/share/datasets")
CIFAR_JPEG = SHARED_DATA / "cifar-10-jpeg.tar.gz"


@pytest.mark.skipif(
    not (DEBIAN / "fashion-mnist").is_dir(), reason="apt install dataset-fashion-mnist"
)
def test_fashion_mnist_found_offline_in_debian_location(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(locate, "SYSTEM_ROOTS", (str(DEBIAN),))
    assert main(["data", "info", "fashion-mnist"]) == 0
    out = capsys.readouterr().out
    assert f"found in: {DEBIAN / 'fashion-mnist'}" in out
    assert (
        "train     60000  1x28x28    0.2860" in out and "test      10000  1x28x28    0.2868" in out
    )
    assert out.count("    6000    1000") == 10
    s = load_splits("fashion-mnist")  # checksums verified by default
    assert (len(s.train), len(s.val), len(s.test)) == (54000, 6000, 10000)
    assert s.val.class_counts() == [600] * 10


@pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason=f"no MNIST in {SHARED_DATA}"
)
def test_mnist_torchvision_layout_with_official_checksums() -> None:
    train = load_dataset("mnist", data_dir=SHARED_DATA)
    test = load_dataset("mnist", "test", data_dir=SHARED_DATA)
    assert train.class_counts() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert test.class_counts() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    s = load_splits("mnist", data_dir=SHARED_DATA, val_fraction=0)
    assert s.mean[0] == pytest.approx(0.130660, abs=1e-6) and s.std[0] == pytest.approx(
        0.308108, abs=1e-6
    )


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_JPEG.is_file(), reason=f"no {CIFAR_JPEG}")
def test_cifar10_jpeg_tree_from_archive() -> None:
    """60,000 JPEGs: extracted safely, decoded once with progress, then served from the cache."""
    import cnnlab.data

    calls: list[tuple] = []
    s = load_splits(
        "imagefolder", root=CIFAR_JPEG, val_fraction=0, progress=lambda *a: calls.append(a)
    )
    assert (len(s.train), len(s.test), s.val) == (50000, 10000, None)
    assert s.train.class_counts() == [5000] * 10 and s.test.class_counts() == [1000] * 10
    assert s.classes == (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )
    assert s.train.images.shape[1:] == (3, 32, 32)
    assert s.mean == pytest.approx((0.4913, 0.4821, 0.4465), abs=2e-4)
    assert {c[0] for c in calls} >= {"extract cifar-10-jpeg.tar.gz", "decode train", "decode test"}
    cnnlab.data.clear_cache()
    calls.clear()
    again = load_dataset(
        "imagefolder", "test", root=CIFAR_JPEG, progress=lambda *a: calls.append(a)
    )
    assert calls == [] and len(again) == 10000
