"""CIFAR-10 and CIFAR-100 in their ``*-python`` pickle layout, read without trusting pickle.

``pickle.load`` runs whatever a file asks for, so batches are read with an
unpickler that can build only what a CIFAR batch holds: dicts, lists, strings,
numbers and plain numpy arrays. Anything else (``os.system``, ``eval``, ...) is
refused before it is called. With ``verify`` the file must also match the
published md5 first.
"""

from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch

from cnnlab.data.archive import safe_extract
from cnnlab.data.base import DataDirs, DataSource, ImageSet, Option, Progress
from cnnlab.data.download import fetch_verified
from cnnlab.data.files import check_digest, read_bytes
from cnnlab.data.locate import FileSpec, Search, not_found_message, search
from cnnlab.errors import DataError, DataNotFoundError


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes, limited to latin-1."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a CIFAR batch needs."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise _RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _RefusedGlobal("a persistent id")


def load_pickle(path: Path, data: bytes) -> Any:
    """Unpickle ``data`` (the content of ``path``) with :class:`RestrictedUnpickler`.

    Args:
        path: the file, named in errors.
        data: its bytes.

    Returns:
        The object, built only from dicts, lists, strings, numbers and numpy arrays.

    Raises:
        DataError: the file asks for anything else, or is not a complete pickle.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _RefusedGlobal as exc:
        raise DataError(
            f"refusing to load {path}: it asks to run {exc} (a CIFAR batch holds only "
            f"arrays, lists and strings); the file is not a genuine CIFAR batch"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any parse failure of untrusted bytes
        raise DataError(
            f"{path} is not a readable CIFAR batch ({type(exc).__name__}: {exc}); "
            f"the file is truncated or corrupt"
        ) from None


def _field(path: Path, batch: Any, key: str) -> Any:
    """``batch[key]``; keys pickled as bytes (Python 2 ``str`` read as bytes) count too."""
    if isinstance(batch, dict) and key not in batch and key.encode() in batch:
        return batch[key.encode()]
    if not isinstance(batch, dict) or key not in batch:
        keys = ", ".join(map(str, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{path} is not a CIFAR batch: no {key!r} entry (found {keys})")
    return batch[key]


def read_batch(
    path: Path, data: bytes, labels_key: str, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 ``N x 3 x 32 x 32``) and labels (int64) of one CIFAR batch file."""
    batch = load_pickle(path, data)
    images = _field(path, batch, "data")
    labels = _field(path, batch, labels_key)
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 2
        or images.shape[1] != 3072
    ):
        shape = getattr(images, "shape", None)
        raise DataError(
            f"{path}: 'data' must be a uint8 N x 3072 array, found {type(images).__name__} {shape}"
        )
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {labels_key!r} must be a list of integers") from None
    if labels.shape != (len(images),):
        raise DataError(f"{path}: {len(images)} images but {labels.size} labels")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise DataError(f"{path} holds label {int(bad[0])}; labels must be in 0..{num_classes - 1}")
    return torch.from_numpy(images.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def read_names(path: Path, data: bytes, key: str) -> tuple[str, ...]:
    """Class names stored under ``key`` of a CIFAR meta file."""
    names = _field(path, load_pickle(path, data), key)
    if not isinstance(names, list) or not all(isinstance(n, str | bytes) for n in names):
        raise DataError(f"{path}: {key!r} must be a list of class names")
    return tuple(n.decode() if isinstance(n, bytes) else n for n in names)


@dataclass(frozen=True)
class LabelSet:
    """Which label list of a batch to use, and where its class names are."""

    labels_key: str
    names_key: str


@dataclass(frozen=True)
class CifarSource(DataSource):
    """A data set in the CIFAR ``*-python`` layout: pickled batches plus a meta file."""

    name: str
    description: str
    #: split -> its batch files, concatenated in this order
    files: Mapping[str, tuple[FileSpec, ...]]
    meta: FileSpec
    #: label choice -> keys; the first is the default
    label_sets: Mapping[str, LabelSet]
    num_classes: Mapping[str, int]
    subfolders: tuple[str, ...]
    archive: FileSpec
    mirrors: tuple[str, ...]
    how_to_get: str
    splits: tuple[str, ...] = ("train", "test")
    can_download: ClassVar[bool] = True

    @property
    def options(self) -> Mapping[str, Option]:  # type: ignore[override]
        if len(self.label_sets) < 2:
            return MappingProxyType({})
        choices = "|".join(self.label_sets)
        default = next(iter(self.label_sets))
        return MappingProxyType({"labels": Option(default, f"which labels to use: {choices}")})

    def _search(self, splits: Sequence[str]) -> list[FileSpec]:
        unknown = [s for s in splits if s not in self.files]
        if unknown:
            raise DataError(
                f"data set {self.name!r} has no split {unknown[0]!r}; splits: {', '.join(self.files)}"
            )
        return [self.meta, *(spec for s in splits for spec in self.files[s])]

    def _find(self, splits: Sequence[str], data_dir: DataDirs) -> Search:
        specs = self._search(splits)
        found = search(specs, self.subfolders, data_dir)
        if found.folder is None:
            raise DataNotFoundError(
                not_found_message(self.name, specs, self.subfolders, found, self.hint())
            )
        return found

    def locate(self, splits: Sequence[str], data_dir: DataDirs, **options: Any) -> Path:
        folder = self._find(splits, data_dir).folder
        assert folder is not None
        return folder

    def _label_set(self, labels: str | None) -> tuple[str, LabelSet]:
        choice = labels or next(iter(self.label_sets))
        if choice not in self.label_sets:
            raise DataError(
                f"labels={choice!r} is not allowed for {self.name}; choose one of: {', '.join(self.label_sets)}"
            )
        return choice, self.label_sets[choice]

    def cache_key(self, split: str, data_dir: DataDirs, **options: Any) -> tuple:
        found = self._find([split], data_dir)
        stats = [
            (str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in found.files.values()
        ]
        return (self.name, split, self._label_set(options.get("labels"))[0], tuple(stats))

    def load(
        self,
        split: str,
        *,
        data_dir: DataDirs = None,
        verify: bool = True,
        progress: Progress | None = None,
        **options: Any,
    ) -> ImageSet:
        choice, keys = self._label_set(options.get("labels"))
        found = self._find([split], data_dir)

        def content(spec: FileSpec) -> tuple[Path, bytes]:
            path = found.files[spec.name]
            data = read_bytes(path)
            if verify:  # a matching md5 means the official file: checked before unpickling
                check_digest(path, data, spec)
            return path, data

        classes = read_names(*content(self.meta), keys.names_key)
        if len(classes) != self.num_classes[choice]:
            raise DataError(
                f"{found.files[self.meta.name]} lists {len(classes)} classes under "
                f"{keys.names_key!r}, expected {self.num_classes[choice]}"
            )
        parts = []
        for i, spec in enumerate(self.files[split], 1):
            parts.append(read_batch(*content(spec), keys.labels_key, len(classes)))
            if progress is not None:
                progress(f"read {self.name} {split}", i, len(self.files[split]))
        images = torch.cat([p[0] for p in parts])
        labels = torch.cat([p[1] for p in parts])
        return ImageSet(images, labels, classes, self.name, split, str(found.folder))

    def download(
        self,
        dest: Path,
        *,
        mirrors: Sequence[str] | None = None,
        progress: Progress | None = None,
        timeout: float = 30.0,
    ) -> Path:
        archive = dest / self.archive.name
        fetch_verified(
            [f"{base.rstrip('/')}/{self.archive.name}" for base in (mirrors or self.mirrors)],
            archive,
            check=lambda url, data: check_digest(url, data, self.archive),
            progress=progress,
            timeout=timeout,
        )
        try:
            tops = safe_extract(archive, dest, progress=progress)
        finally:
            archive.unlink(missing_ok=True)
        return tops[0] if len(tops) == 1 else dest

    def hint(self) -> str:
        return self.how_to_get
