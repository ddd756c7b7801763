"""Tiny data sets written in the real on-disk formats, for tests that must not need real data."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np

from cnnlab.data.locate import FileSpec

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file: magic (0, 0, type, ndim), big-endian dims, then the values."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def mnist_arrays(n: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), labels.astype(np.uint8)


def make_idx_dataset(
    folder: Path, *, n_train: int = 40, n_test: int = 20, gz: bool = True, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST-format files in ``folder``; returns split -> (images, labels)."""
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = mnist_arrays(n, seed + (split == "test"))
        write(folder / IDX_NAMES[split][0], idx_bytes(images), gz)
        write(folder / IDX_NAMES[split][1], idx_bytes(labels), gz)
        out[split] = (images, labels)
    return out


def idx_specs(
    arrays: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, tuple[FileSpec, FileSpec]]:
    """FileSpecs whose sha256 match the files :func:`make_idx_dataset` wrote."""
    return {
        split: tuple(
            FileSpec(name, sha256=hashlib.sha256(idx_bytes(array)).hexdigest())
            for name, array in zip(IDX_NAMES[split], arrays[split], strict=True)
        )
        for split in arrays
    }


def cifar_batch(n: int, seed: int, num_classes: int = 10, protocol: int = 2, **extra) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {
        "batch_label": f"batch {seed}",
        "labels": [int(v) for v in np.arange(n) % num_classes],
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
        **extra,
    }
    return pickle.dumps(batch, protocol=protocol)


def make_cifar10(folder: Path, *, per_batch: int = 10, protocol: int = 2) -> Path:
    """A ``cifar-10-batches-py`` folder with five train batches and a test batch."""
    root = folder / "cifar-10-batches-py"
    names = [f"class{i}" for i in range(10)]
    write(
        root / "batches.meta",
        pickle.dumps({"label_names": names, "num_cases_per_batch": per_batch}, protocol=protocol),
    )
    for i in range(1, 6):
        write(root / f"data_batch_{i}", cifar_batch(per_batch, i, protocol=protocol))
    write(root / "test_batch", cifar_batch(per_batch, 99, protocol=protocol))
    return root


def make_cifar100(folder: Path, *, n: int = 200) -> Path:
    root = folder / "cifar-100-python"
    write(
        root / "meta",
        pickle.dumps(
            {
                "fine_label_names": [f"fine{i}" for i in range(100)],
                "coarse_label_names": [f"coarse{i}" for i in range(20)],
            },
            protocol=2,
        ),
    )
    for split, seed in (("train", 1), ("test", 2)):
        rng = np.random.default_rng(seed)
        fine = np.arange(n) % 100
        batch = {
            "fine_labels": fine.tolist(),
            "coarse_labels": (fine // 5).tolist(),
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        write(root / split, pickle.dumps(batch, protocol=2))
    return root


def image_array(seed: int, size: tuple[int, int] = (8, 8), channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (*size, channels) if channels == 3 else size
    return rng.integers(0, 256, shape, dtype=np.uint8)


def save_image(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_tree(
    root: Path,
    splits: dict[str, int] | None = None,
    classes: tuple[str, ...] = ("cat", "dog", "frog"),
    size: tuple[int, int] = (8, 8),
    channels: int = 3,
) -> dict[str, list[tuple[Path, np.ndarray, int]]]:
    """An image-folder tree of PNGs (lossless, so pixels can be compared exactly).

    Returns split -> [(path, pixels H x W [x C], label)] in the order the reader sorts them.
    """
    splits = splits or {"train": 4, "test": 2}
    out: dict[str, list[tuple[Path, np.ndarray, int]]] = {}
    seed = 0
    for split, per_class in splits.items():
        out[split] = []
        for label, name in enumerate(classes):
            for i in range(per_class):
                seed += 1
                array = image_array(seed, size, channels)
                path = save_image(root / split / name / f"{i:03d}.png", array)
                out[split].append((path, array, label))
    return out
