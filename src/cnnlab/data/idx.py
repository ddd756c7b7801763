"""IDX files (the MNIST format) and the data sets stored in them.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values. Images are
``0x00000803`` (uint8, N x H x W), labels ``0x00000801`` (uint8, N).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from cnnlab.data.base import DataDirs, DataSource, ImageSet, Progress
from cnnlab.data.download import fetch_verified
from cnnlab.data.files import check_digest, read_bytes
from cnnlab.data.locate import FileSpec, Search, not_found_message, search
from cnnlab.errors import DataError, DataNotFoundError

# IDX type code -> numpy dtype (multi-byte types are big-endian).
_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def parse_idx(data: bytes, path: Path) -> tuple[int, np.ndarray]:
    """Decode an IDX payload into ``(magic, array)``, checking it is complete.

    Args:
        data: the decompressed file content.
        path: where it came from, named in every error.

    Returns:
        The magic number and a writable array with the header's shape.
    """
    if len(data) < 4 or data[0] or data[1] or data[2] not in _IDX_TYPES or data[3] == 0:
        shown = data[:4].hex() or "empty"
        raise DataError(f"{path} is not an IDX file (magic number {shown}, expected 0000080N)")
    magic = int.from_bytes(data[:4], "big")
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{path} is truncated: the IDX header needs {header} bytes, found {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        problem = "is truncated" if found < expected else "has trailing data"
        raise DataError(
            f"{path} {problem}: header says {'x'.join(map(str, dims))} "
            f"({expected} bytes of data), file holds {found}"
        )
    array = np.frombuffer(data, dtype, count=math.prod(dims), offset=header).reshape(dims)
    return magic, array.astype(dtype.newbyteorder("="), copy=True)


def read_idx_images(path: Path, data: bytes, shape: tuple[int, int]) -> torch.Tensor:
    """uint8 ``N x 1 x H x W`` images from an IDX image file, checking magic and size."""
    magic, array = parse_idx(data, path)
    if magic != IMAGES_MAGIC or array.shape[1:] != shape:
        raise DataError(
            f"{path} is not an image file of {shape[0]}x{shape[1]} uint8 images "
            f"(magic 0x{magic:08x}, shape {'x'.join(map(str, array.shape))}; "
            f"expected magic 0x{IMAGES_MAGIC:08x})"
        )
    return torch.from_numpy(array).unsqueeze(1)


def read_idx_labels(path: Path, data: bytes, num_classes: int) -> torch.Tensor:
    """int64 labels from an IDX label file, checking magic and range."""
    magic, array = parse_idx(data, path)
    if magic != LABELS_MAGIC:
        raise DataError(
            f"{path} is not a label file (magic 0x{magic:08x}, expected 0x{LABELS_MAGIC:08x})"
        )
    if array.size and int(array.max()) >= num_classes:
        raise DataError(
            f"{path} holds label {int(array.max())}; labels must be in 0..{num_classes - 1}"
        )
    return torch.from_numpy(array.astype(np.int64))


@dataclass(frozen=True)
class IdxSource(DataSource):
    """A data set shipped as IDX image/label pairs (MNIST, Fashion-MNIST)."""

    name: str
    description: str
    classes: tuple[str, ...]
    #: split -> (images file, labels file)
    files: Mapping[str, tuple[FileSpec, FileSpec]]
    #: folders tried inside each search root, in order
    subfolders: tuple[str, ...]
    #: base URLs the ``.gz`` files are downloaded from, tried in order
    mirrors: tuple[str, ...]
    #: folder (inside the destination) a download goes to
    download_folder: str
    how_to_get: str
    image_shape: tuple[int, int] = (28, 28)
    splits: tuple[str, ...] = ("train", "test")
    can_download: ClassVar[bool] = True

    def _specs(self, splits: Sequence[str]) -> list[FileSpec]:
        unknown = [s for s in splits if s not in self.files]
        if unknown:
            raise DataError(
                f"data set {self.name!r} has no split {unknown[0]!r}; splits: {', '.join(self.files)}"
            )
        return [spec for s in splits for spec in self.files[s]]

    def _search(self, splits: Sequence[str], data_dir: DataDirs) -> tuple[Search, list[FileSpec]]:
        specs = self._specs(splits)
        found = search(specs, self.subfolders, data_dir)
        if found.folder is None:
            raise DataNotFoundError(
                not_found_message(self.name, specs, self.subfolders, found, self.hint())
            )
        return found, specs

    def locate(self, splits: Sequence[str], data_dir: DataDirs, **options: Any) -> Path:
        found, _ = self._search(splits, data_dir)
        assert found.folder is not None
        return found.folder

    def cache_key(self, split: str, data_dir: DataDirs, **options: Any) -> tuple:
        found, _ = self._search([split], data_dir)
        stats = [
            (str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in found.files.values()
        ]
        return (self.name, split, tuple(stats))

    def load(
        self,
        split: str,
        *,
        data_dir: DataDirs = None,
        verify: bool = True,
        progress: Progress | None = None,
        **options: Any,
    ) -> ImageSet:
        found, specs = self._search([split], data_dir)
        image_spec, label_spec = specs
        image_path, label_path = found.files[image_spec.name], found.files[label_spec.name]
        image_data, label_data = read_bytes(image_path), read_bytes(label_path)
        if verify:
            check_digest(image_path, image_data, image_spec)
            check_digest(label_path, label_data, label_spec)
        images = read_idx_images(image_path, image_data, self.image_shape)
        labels = read_idx_labels(label_path, label_data, len(self.classes))
        if len(images) != len(labels):
            raise DataError(
                f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels"
            )
        return ImageSet(images, labels, self.classes, self.name, split, str(found.folder))

    def download(
        self,
        dest: Path,
        *,
        mirrors: Sequence[str] | None = None,
        progress: Progress | None = None,
        timeout: float = 30.0,
    ) -> Path:
        folder = dest / self.download_folder
        for split in self.splits:
            for spec in self.files[split]:
                fetch_verified(
                    [f"{base.rstrip('/')}/{spec.name}.gz" for base in (mirrors or self.mirrors)],
                    folder / f"{spec.name}.gz",
                    check=lambda path, data, spec=spec: check_digest(path, data, spec),
                    decompress=True,
                    progress=progress,
                    timeout=timeout,
                )
        return folder

    def hint(self) -> str:
        return self.how_to_get
