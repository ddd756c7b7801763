"""Data sets as whole in-memory tensors: find, check, load, split, transform.

``load_dataset("fashion-mnist", "train")`` returns every image of the split as
one uint8 ``N x C x H x W`` tensor with int64 labels and the class names;
``load_splits`` adds a validation split and the normalization statistics. Files
are found in the user's folders, the cnnlab cache or system locations
(:mod:`cnnlab.data.locate`), checked against the official checksums, and read
once per process.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnlab.data.base import DataDirs, DataSource, DataSplits, ImageSet, Option, Progress
from cnnlab.data.catalog import DATASETS
from cnnlab.data.locate import default_data_dir, search_roots, split_dirs
from cnnlab.data.splits import stratified_split
from cnnlab.data.stats import channel_stats
from cnnlab.errors import DataError, DataNotFoundError

# Splits read in this process, newest last; bounded so a sweep over data sets cannot hoard memory.
_MEMORY: OrderedDict[tuple, ImageSet] = OrderedDict()
_MEMORY_SLOTS = 8


def list_datasets(pattern: str | None = None) -> list[str]:
    """Registered data set names, optionally filtered by a glob such as ``cifar*``."""
    return DATASETS.names(pattern)


def get_source(name: str) -> DataSource:
    """The registered source for ``name``; RegistryError lists the names that exist."""
    return DATASETS.get(name)


def dataset_options(name: str) -> dict[str, Option]:
    """The extra options ``name`` accepts (``root`` for ``imagefolder``, ...)."""
    return dict(get_source(name).options)


def _check_options(source: DataSource, options: dict[str, Any]) -> dict[str, Any]:
    allowed = source.options
    # None means "not set", so callers may pass every option of every data set uniformly.
    unknown = sorted(k for k, v in options.items() if k not in allowed and v is not None)
    if unknown:
        raise DataError(
            f"data set {source.name!r} has no option {unknown[0]!r}; "
            f"options: {', '.join(sorted(allowed)) or 'none'}"
        )
    merged = {k: opt.default for k, opt in allowed.items()}
    merged.update({k: v for k, v in options.items() if k in allowed and v is not None})
    missing = [k for k, opt in allowed.items() if opt.required and merged.get(k) in (None, "")]
    if missing:
        raise DataError(
            f"data set {source.name!r} needs {missing[0]}=...: {allowed[missing[0]].help}"
        )
    return merged


def check_dataset_options(name: str, **options: Any) -> dict[str, Any]:
    """The data set's options with defaults filled in, checked without reading any file.

    Raises:
        RegistryError: unknown name. DataError: an option the data set does not
            have, or a required one missing (one line naming it).
    """
    return _check_options(get_source(name), options)


def clear_cache() -> None:
    """Forget the splits held in memory (files on disk are untouched)."""
    _MEMORY.clear()


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: DataDirs = None,
    verify: bool = True,
    progress: Progress | None = None,
    **options: Any,
) -> ImageSet:
    """One whole split of a registered data set.

    Args:
        name: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100`` or ``imagefolder``
            (``list_datasets()`` has them all).
        split: ``train`` or ``test`` (``val`` where the data set ships one).
        data_dir: folders searched before ``CNNLAB_DATA``, the cache and system locations.
        verify: check files against the official checksums (turn off only for
            files you made yourself).
        progress: ``progress(task, done, total)`` for slow steps (decoding a tree).
        **options: data-set options, e.g. ``root=PATH`` for ``imagefolder``,
            ``labels="coarse"`` for ``cifar100``.

    Returns:
        The split; the same object is returned again while its files are unchanged.

    Raises:
        RegistryError: unknown name. DataNotFoundError: no copy found (the message
        lists every folder searched). DataError: a file is corrupt or inconsistent.
    """
    source = get_source(name)
    opts = _check_options(source, options)
    try:
        key = source.cache_key(split, data_dir, **opts)
        if key is not None and (key, verify) in _MEMORY:
            _MEMORY.move_to_end((key, verify))
            return _MEMORY[(key, verify)]
        data = source.load(split, data_dir=data_dir, verify=verify, progress=progress, **opts)
    except DataNotFoundError as exc:
        raise DataNotFoundError(
            f"{exc}; or run 'cnnlab data get {source.name}' where the network allows"
        ) from None
    if key is not None:
        _MEMORY[(key, verify)] = data
        while len(_MEMORY) > _MEMORY_SLOTS:
            _MEMORY.popitem(last=False)
    return data


def available_splits(name: str, *, data_dir: DataDirs = None, **options: Any) -> tuple[str, ...]:
    """The splits a data set has (for ``imagefolder``: those present in the tree)."""
    source = get_source(name)
    return source.available_splits(data_dir=data_dir, **_check_options(source, options))


def load_splits(
    name: str,
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    data_dir: DataDirs = None,
    verify: bool = True,
    download: bool = False,
    progress: Progress | None = None,
    **options: Any,
) -> DataSplits:
    """Train, validation and test splits of a data set, plus normalization statistics.

    The data set's own validation split is used when it has one; otherwise
    ``val_fraction`` of each class of train is set aside with ``split_seed``. The
    test split is returned for final reporting and must not steer model selection.

    Args:
        name: registered data set name.
        val_fraction: share of train held out for validation when there is no
            validation split, in ``[0, 1)``; 0 means no validation split.
        split_seed: seed of the held-out selection (keep it fixed so runs compare).
        data_dir: folders searched first (see :func:`load_dataset`).
        verify: check files against the official checksums.
        download: fetch the official files into the cache when no copy is found.
        progress: ``progress(task, done, total)`` for slow steps.
        **options: data-set options (``root=...`` for ``imagefolder``).

    Returns:
        :class:`DataSplits` with per-channel ``mean``/``std`` of the train part.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction!r} is not allowed; use a number in [0, 1)")
    if download:
        ensure_dataset(name, data_dir=data_dir, progress=progress, **options)
    load = dict(data_dir=data_dir, verify=verify, progress=progress, **options)
    train = load_dataset(name, "train", **load)  # first: it reports extraction progress
    have = available_splits(name, data_dir=data_dir, **options)
    val = load_dataset(name, "val", **load) if "val" in have else None
    if val is None and val_fraction > 0:
        train_idx, val_idx = stratified_split(train.labels, val_fraction, split_seed)
        train, val = train.subset(train_idx), train.subset(val_idx, split="val")
    test = load_dataset(name, "test", **load) if "test" in have else None
    mean, std = channel_stats(train.images)
    return DataSplits(train=train, val=val, test=test, mean=mean, std=std)


def ensure_dataset(
    name: str, *, data_dir: DataDirs = None, progress: Progress | None = None, **options: Any
) -> Path:
    """The folder of a data set, downloading it into the cache first if no copy is found."""
    try:
        return locate_dataset(name, data_dir=data_dir, **options)
    except DataNotFoundError:
        return download_dataset(name, data_dir=data_dir, progress=progress)


def locate_dataset(
    name: str, *, data_dir: DataDirs = None, splits: Sequence[str] | None = None, **options: Any
) -> Path:
    """The folder a data set's files were found in (nothing is read).

    Raises:
        DataNotFoundError: with every folder searched and how to get the data.
    """
    source = get_source(name)
    return source.locate(
        tuple(splits or source.splits), data_dir, **_check_options(source, options)
    )


def download_dataset(
    name: str,
    dest: str | Path | None = None,
    *,
    data_dir: DataDirs = None,
    mirrors: Sequence[str] | None = None,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download a data set's official files, verify their checksums, and return their folder.

    Args:
        name: registered data set name.
        dest: folder to download into (default ``~/.cache/cnnlab/data``, which is searched).
        data_dir: the user's data folders, named in the message when the download fails.
        mirrors: base URLs to use instead of the official ones (tried in order).
        progress: ``progress(task, done, total)`` in bytes.
        timeout: seconds to wait on a silent server.

    Raises:
        DataNotFoundError: offline or every mirror failed; the message names the
        URLs, the files, the folders searched and how to get the data by hand.
    """
    source = get_source(name)
    target = Path(dest).expanduser() if dest is not None else default_data_dir()
    try:
        return source.download(target, mirrors=mirrors, progress=progress, timeout=timeout)
    except DataNotFoundError as exc:
        try:
            source.locate(source.splits, [target, *split_dirs(data_dir)])
            searched = ""
        except DataNotFoundError as missing:
            searched = f"; {missing}"
        raise DataNotFoundError(f"could not download {source.name}: {exc}{searched}") from None


__all__ = [
    "DATASETS",
    "DataSource",
    "DataSplits",
    "ImageSet",
    "Option",
    "available_splits",
    "channel_stats",
    "check_dataset_options",
    "clear_cache",
    "dataset_options",
    "default_data_dir",
    "download_dataset",
    "ensure_dataset",
    "get_source",
    "list_datasets",
    "load_dataset",
    "load_splits",
    "locate_dataset",
    "search_roots",
    "split_dirs",
]
