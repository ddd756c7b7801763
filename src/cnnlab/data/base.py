"""Typed containers for data sets held in memory, and the interface every source implements.

A split is small enough to live in memory as one uint8 tensor (MNIST is 47 MB,
CIFAR-10 150 MB), so the training loop can slice batches straight out of it on
any device, as airbench does, instead of going through a per-sample loader.
"""

from __future__ import annotations

import abc
import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from cnnlab.errors import DataError

#: ``progress(task, done, total)``: called while a long step (decoding, downloading) runs.
Progress = Callable[[str, int, int], None]

#: What ``data_dir`` may be: one folder, an ``os.pathsep``-separated list, or a sequence of them.
DataDirs = str | Path | Sequence[str | Path] | None


@dataclass(frozen=True, eq=False)
class ImageSet:
    """One split of a data set: every image and label, in memory.

    Attributes:
        images: uint8 tensor ``N x C x H x W``. Shared with the loader's cache:
            treat it as read-only (every transform returns a new tensor).
        labels: int64 tensor ``N`` with values in ``0 .. len(classes) - 1``.
        classes: class names, index = label.
        name: registry name of the data set (``mnist``).
        split: ``train``, ``val`` or ``test``.
        source: where the data came from (a folder or file), for reports.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    split: str
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"{self.name} {self.split}: images must be a uint8 N x C x H x W tensor, "
                f"got {self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise DataError(
                f"{self.name} {self.split}: labels must be int64 with one per image, "
                f"got {self.labels.dtype} {tuple(self.labels.shape)} for {len(self.images)} images"
            )
        if len(self.labels) and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)
        ):
            raise DataError(
                f"{self.name} {self.split}: labels must be in 0..{len(self.classes) - 1}, "
                f"found {int(self.labels.min())}..{int(self.labels.max())}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def class_counts(self) -> list[int]:
        """Number of images per class, index = label."""
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes).tolist()

    def subset(self, indices: torch.Tensor, split: str | None = None) -> ImageSet:
        """The images at ``indices`` (a new tensor, so the parent stays untouched)."""
        return ImageSet(
            images=self.images[indices],
            labels=self.labels[indices],
            classes=self.classes,
            name=self.name,
            split=split or self.split,
            source=self.source,
        )

    def to(self, device: torch.device | str) -> ImageSet:
        """The same split on ``device``, still uint8 (4x less memory than float)."""
        return ImageSet(
            self.images.to(device),
            self.labels.to(device),
            self.classes,
            self.name,
            self.split,
            self.source,
        )


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train, validation and test splits of one data set, ready for an experiment.

    ``val`` comes from the data set's own validation split when it has one, or is
    carved out of train (stratified, seeded); it is None only with
    ``val_fraction=0``. ``test`` is reported, never used to choose models or
    hyperparameters; it is None for a tree without a labelled ``test/``.
    ``mean``/``std`` are per-channel statistics of ``train`` in ``[0, 1]``
    units, the ones normalization should use.
    """

    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def name(self) -> str:
        return self.train.name

    @property
    def source(self) -> str:
        """Where the training files were found."""
        return self.train.source

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of every image and label of every split: equal exactly when the data is."""
        h = hashlib.sha256()
        for split, data in self.items():
            h.update(f"{split}:{tuple(data.images.shape)}:{','.join(data.classes)}".encode())
            h.update(data.images.detach().contiguous().cpu().numpy())
            h.update(data.labels.detach().contiguous().cpu().numpy())
        return h.hexdigest()

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def in_channels(self) -> int:
        return self.train.in_channels

    @property
    def image_size(self) -> tuple[int, int]:
        return self.train.image_size

    def items(self) -> list[tuple[str, ImageSet]]:
        """``(split name, ImageSet)`` for the splits that exist, in train/val/test order."""
        return [(s.split, s) for s in (self.train, self.val, self.test) if s is not None]


@dataclass(frozen=True)
class Option:
    """A data-set option (``root``, ``image_size``, ...) with its default and help text."""

    default: Any
    help: str
    required: bool = False


class DataSource(abc.ABC):
    """What every registered data set provides.

    A source knows where its files may lie, how to check and read them, and
    (when it has official files) how to download them. ``load`` returns one
    whole split; caching and option checking happen in :mod:`cnnlab.data`.
    """

    name: str
    description: str
    #: Splits the data set ships with, in order (``train`` always first).
    splits: tuple[str, ...] = ("train", "test")
    #: Extra options ``load`` accepts, beyond data_dir/verify/progress.
    options: Mapping[str, Option] = MappingProxyType({})
    #: Whether :meth:`download` can fetch official files.
    can_download: bool = False

    def available_splits(self, **options: Any) -> tuple[str, ...]:
        """The splits present on disk (for sources whose layout decides, like ImageFolder)."""
        return self.splits

    @abc.abstractmethod
    def locate(self, splits: Sequence[str], data_dir: DataDirs, **options: Any) -> Path:
        """The folder holding the files of ``splits``; raises DataNotFoundError if none does."""

    @abc.abstractmethod
    def load(
        self,
        split: str,
        *,
        data_dir: DataDirs,
        verify: bool,
        progress: Progress | None,
        **options: Any,
    ) -> ImageSet:
        """Read, check and return one split."""

    def cache_key(self, split: str, data_dir: DataDirs, **options: Any) -> tuple | None:
        """A key that changes when the files behind ``split`` change; None disables caching."""
        return None

    def download(
        self,
        dest: Path,
        *,
        mirrors: Sequence[str] | None = None,
        progress: Progress | None = None,
        timeout: float = 30.0,
    ) -> Path:
        """Fetch the official files into ``dest`` and return the folder they are in."""
        raise DataError(f"data set {self.name!r} has no official download; {self.hint()}")

    def hint(self) -> str:
        """How a user obtains this data set (shown when it is not found)."""
        return ""
