"""What ``cnnlab data info`` reports: sizes, class balance, statistics, location."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnnlab.data.base import DataDirs, ImageSet, Progress


@dataclass(frozen=True)
class SplitInfo:
    """Summary of one split: size, image shape, images per class, channel mean/std in [0, 1]."""

    split: str
    count: int
    shape: tuple[int, int, int]
    class_counts: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


@dataclass(frozen=True)
class DatasetInfo:
    """Summary of a data set as found on this machine."""

    name: str
    description: str
    classes: tuple[str, ...]
    splits: tuple[SplitInfo, ...]


def summarize(data: ImageSet) -> SplitInfo:
    """The :class:`SplitInfo` of one loaded split."""
    from cnnlab.data.stats import channel_stats

    mean, std = channel_stats(data.images)
    return SplitInfo(
        split=data.split,
        count=len(data),
        shape=(data.in_channels, *data.image_size),
        class_counts=tuple(data.class_counts()),
        mean=mean,
        std=std,
        source=data.source,
    )


def describe_dataset(
    name: str,
    *,
    data_dir: DataDirs = None,
    verify: bool = True,
    progress: Progress | None = None,
    **options: Any,
) -> DatasetInfo:
    """Load every split a data set ships with (no carved validation) and summarize it.

    Args:
        name: registered data set name.
        data_dir, verify, progress, **options: as for :func:`cnnlab.data.load_dataset`.
    """
    from cnnlab.data import available_splits, get_source, load_dataset

    source = get_source(name)
    splits = available_splits(name, data_dir=data_dir, **options)
    loaded = [
        load_dataset(name, s, data_dir=data_dir, verify=verify, progress=progress, **options)
        for s in splits
    ]
    return DatasetInfo(
        name=source.name,
        description=source.description,
        classes=loaded[0].classes,
        splits=tuple(summarize(d) for d in loaded),
    )
