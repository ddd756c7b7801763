"""Image-folder trees: ``train/<class>/*.jpg`` with ``val/`` and/or ``test/`` beside it.

Also read: the Tiny-ImageNet-200 layout, where ``val/`` holds ``images/`` plus
``val_annotations.txt`` (file name, class) and ``test/`` is unlabelled; and an
archive of such a tree (``.tar.gz``, ``.zip``), extracted safely into the cache.

Decoding tens of thousands of JPEGs takes a while, so each split is decoded once
into a cache file (plain ``.npy`` arrays, never pickle) and reused while the
tree's file names, sizes and modification times are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch

from cnnlab.data.archive import is_archive, safe_extract
from cnnlab.data.base import DataDirs, DataSource, ImageSet, Option, Progress
from cnnlab.data.locate import cache_root, search_roots
from cnnlab.errors import DataError

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".pgm",
    ".pbm",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)
ANNOTATIONS = "val_annotations.txt"
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
_CACHE_FORMAT = 2  # 2: high-bit-depth grayscale scaled, linked sub-folders followed


@dataclass(frozen=True)
class FolderSplit:
    """The labelled image files of one split of a tree."""

    folder: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursively, as Tiny-ImageNet nests them), sorted.

    Symbolically linked sub-folders are followed, as torchvision's ImageFolder does,
    each real folder once (a link back up the tree would otherwise never end).
    """
    found = []
    visited = {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if not d.startswith(".") and real not in visited:
                visited.add(real)
                keep.append(d)
        dirnames[:] = keep
        found.extend(
            Path(dirpath, f)
            for f in filenames
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        )
    return sorted(found)


def tree_root(root: Path) -> Path:
    """The folder holding ``train/``: ``root`` itself or its only sub-folder that has one."""
    if (root / "train").is_dir():
        return root
    inner = (
        [d for d in root.iterdir() if d.is_dir() and _visible(d) and (d / "train").is_dir()]
        if root.is_dir()
        else []
    )
    if len(inner) == 1:
        return inner[0]
    raise DataError(
        f"{root} is not an image-folder tree: expected train/<class>/<images> "
        f"with val/ and/or test/ beside it"
    )


def class_names(train: Path) -> tuple[str, ...]:
    """Class names = the sorted sub-folders of ``train/``."""
    classes = tuple(sorted(d.name for d in train.iterdir() if d.is_dir() and _visible(d)))
    if not classes:
        raise DataError(f"{train} has no class sub-folders; expected train/<class>/<images>")
    return classes


def is_labelled(folder: Path, classes: Sequence[str]) -> bool:
    """Whether a val/test folder carries labels (class folders or Tiny-ImageNet annotations).

    Tiny-ImageNet's ``test/images/`` has no labels; such a split is left out.
    """
    if not folder.is_dir():
        return False
    if (folder / ANNOTATIONS).is_file():
        return True
    subs = {d.name for d in folder.iterdir() if d.is_dir() and _visible(d)}
    if not subs:
        return False
    return subs != {"images"} or "images" in classes


def _scan_classes(folder: Path, classes: tuple[str, ...]) -> tuple[list[Path], list[int]]:
    index = {c: i for i, c in enumerate(classes)}
    files: list[Path] = []
    labels: list[int] = []
    for sub in sorted(d for d in folder.iterdir() if d.is_dir() and _visible(d)):
        if sub.name not in index:
            raise DataError(
                f"{sub} is not a class of this tree; classes come from train/: "
                f"{', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}"
            )
        images = _images_under(sub)
        files += images
        labels += [index[sub.name]] * len(images)
    return files, labels


def _scan_annotations(folder: Path, classes: tuple[str, ...]) -> tuple[list[Path], list[int]]:
    """Tiny-ImageNet's ``val/``: ``images/NAME`` labelled by ``val_annotations.txt``."""
    index = {c: i for i, c in enumerate(classes)}
    notes = folder / ANNOTATIONS
    files: list[Path] = []
    labels: list[int] = []
    for lineno, line in enumerate(notes.read_text(errors="replace").splitlines(), 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(
                f"{notes} line {lineno}: expected '<file>\\t<class>' with a class from train/, got {line[:60]!r}"
            )
        path = folder / "images" / fields[0]
        if "/" in fields[0] or "\\" in fields[0] or not path.is_file():
            raise DataError(
                f"{notes} line {lineno}: image {fields[0]!r} not found in {folder / 'images'}"
            )
        files.append(path)
        labels.append(index[fields[1]])
    return files, labels


def scan_split(folder: Path, classes: tuple[str, ...], *, every_class: bool = False) -> FolderSplit:
    """List the images and labels of one split folder.

    Args:
        folder: ``train/``, ``val/`` or ``test/`` of a tree.
        classes: the tree's classes (from ``train/``); label = index in it.
        every_class: refuse a class without images (``train/``: a class no training
            image shows is an output the network never learns; torchvision's
            ImageFolder refuses such a tree too). ``val/`` and ``test/`` may lack one.

    Returns:
        The files in a fixed order (sorted by class, then path) with their labels.
    """
    if (folder / ANNOTATIONS).is_file():
        files, labels = _scan_annotations(folder, classes)
    else:
        files, labels = _scan_classes(folder, classes)
    if not files:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if every_class:
        present = set(labels)
        empty = [c for i, c in enumerate(classes) if i not in present]
        if empty:
            raise DataError(
                f"class folder {folder / empty[0]} holds no images"
                f"{f' (nor do {len(empty) - 1} more)' if len(empty) > 1 else ''}; "
                "remove it or add images"
            )
    return FolderSplit(folder, tuple(files), tuple(labels), classes)


def fingerprint(split: FolderSplit) -> str:
    """Digest of every file's path, size and modification time: changes when the tree does."""
    h = hashlib.sha256("\n".join(split.classes).encode())
    extra = [split.folder / ANNOTATIONS] if (split.folder / ANNOTATIONS).is_file() else []
    for path, label in zip(
        (*split.files, *extra), (*split.labels, *[-1] * len(extra)), strict=True
    ):
        try:
            st = path.stat()
        except OSError as exc:  # a broken symbolic link, a file removed meanwhile
            raise DataError(f"cannot read image {path}: {exc.strerror or exc}") from None
        h.update(
            f"\n{path.relative_to(split.folder)}\t{label}\t{st.st_size}\t{st.st_mtime_ns}".encode()
        )
    return h.hexdigest()


def parse_size(value: Any) -> tuple[int, int] | None:
    """``image_size`` as ``(H, W)``: accepts 32, "32", "64x48", (64, 48) or None."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, str):
            parts = [int(p) for p in value.lower().split("x")]
        elif isinstance(value, int):
            parts = [value]
        else:
            parts = [int(p) for p in value]
    except (TypeError, ValueError):
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise DataError(
            f"image_size={value!r} is not allowed; use a positive size such as 32 or 64x48"
        )
    return parts[0], parts[1]


def parse_channels(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if str(value) not in ("1", "3"):
        raise DataError(f"channels={value!r} is not allowed; choose 1 (grayscale) or 3 (RGB)")
    return int(value)


def _eight_bit(img, path: Path):
    """A 16-bit or 32-bit grayscale image scaled to 8 bits ("L"); other images unchanged.

    PIL's ``convert("L")`` clips such values at 255 instead of scaling them, so
    a 16-bit PNG became black and white. Integers are read as 16-bit (0..65535
    to 0..255); floats must lie in [0, 1].
    """
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L"):
        values = np.asarray(img, dtype=np.float64)
        scaled = np.clip(values, 0, 65535) / 257.0
    elif img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if values.size and (np.nanmin(values) < 0 or np.nanmax(values) > 1):
            raise DataError(
                f"cannot decode image {path}: a float image must hold values in [0, 1], "
                f"found {np.nanmin(values):g} to {np.nanmax(values):g}"
            )
        scaled = np.nan_to_num(values) * 255.0
    else:
        return img
    return Image.fromarray(np.rint(scaled).astype(np.uint8))  # 2-D uint8: mode "L"


def read_image(path: Path, mode: str | None, size: tuple[int, int] | None) -> np.ndarray:
    """One image as ``H x W x C`` uint8, converted to ``mode`` and resized to ``size`` (H, W).

    The one place pixels are read from a file: image folders use it, and so do
    ``predict`` and ``explain`` on image files, so a file is seen as in training.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            if mode is None:
                mode = "L" if img.mode in _GRAY_MODES else "RGB"
            img = _eight_bit(img, path).convert(mode)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None
    return array[:, :, None] if array.ndim == 2 else array


def _decode_chunk(
    files: Sequence[Path],
    mode: str,
    size: tuple[int, int] | None,
    shape: tuple[int, ...],
    first: Path,
) -> np.ndarray:
    out = np.empty((len(files), shape[2], shape[0], shape[1]), np.uint8)
    for i, path in enumerate(files):
        array = read_image(path, mode, size)
        if array.shape != shape:
            raise DataError(
                f"{path} is {array.shape[0]}x{array.shape[1]} but {first} is "
                f"{shape[0]}x{shape[1]}; all images must have one size, "
                f"or pass image_size=HxW to resize them"
            )
        out[i] = array.transpose(2, 0, 1)
    return out


def decode_images(
    files: Sequence[Path],
    *,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    progress: Progress | None = None,
    task: str = "decode",
    workers: int | None = None,
) -> np.ndarray:
    """Decode ``files`` into one uint8 ``N x C x H x W`` array.

    Pillow releases the GIL while it decodes, so chunks of files are decoded by
    a few threads; the result does not depend on how many.

    Args:
        files: image paths, in the order wanted.
        channels: 1 or 3; by default that of the first image (grayscale stays grayscale).
        size: ``(H, W)`` to resize every image to; by default all must share the first one's size.
        progress: called as ``progress(task, done, total)``.
        task: label passed to ``progress``.
        workers: decoding threads (default: up to 8, one per CPU core).
    """
    mode = {1: "L", 3: "RGB", None: None}[channels]
    first = read_image(files[0], mode, size)
    mode = mode or ("L" if first.shape[2] == 1 else "RGB")
    chunk = 500
    starts = range(0, len(files), chunk)
    out = np.empty((len(files), first.shape[2], first.shape[0], first.shape[1]), np.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = pool.map(
            lambda s: _decode_chunk(files[s : s + chunk], mode, size, first.shape, files[0]), starts
        )
        for start, part in zip(starts, parts, strict=True):
            out[start : start + len(part)] = part
            if progress is not None:
                progress(task, start + len(part), len(files))
    return out


def _read_cache(folder: Path, stamp: str) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != _CACHE_FORMAT or meta.get("fingerprint") != stamp:
            return None
        images = np.load(folder / "images.npy", allow_pickle=False)
        labels = np.load(folder / "labels.npy", allow_pickle=False)
    except (OSError, ValueError, json.JSONDecodeError):
        return None  # missing or damaged: decode again
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (len(images),):
        return None
    return images, labels, list(meta["classes"])


def _write_cache(
    folder: Path, stamp: str, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]
) -> None:
    """Write atomically (temporary name, then rename); meta last, so it vouches for the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (folder / "meta.json").unlink()
    tag = f".tmp-{os.getpid()}"
    for name, array in (("images.npy", images), ("labels.npy", labels)):
        with open(folder / (name + tag), "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(folder / (name + tag), folder / name)
    meta = {
        "format": _CACHE_FORMAT,
        "fingerprint": stamp,
        "classes": list(classes),
        "count": len(labels),
    }
    (folder / ("meta.json" + tag)).write_text(json.dumps(meta))
    os.replace(folder / ("meta.json" + tag), folder / "meta.json")


def extract_cached(archive: Path, progress: Progress | None = None) -> Path:
    """Extract ``archive`` once into the cache; later calls reuse the copy while the archive is unchanged."""
    st = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[
        :16
    ]
    stem = archive.name.split(".")[0] or "archive"
    dest = cache_root() / "extracted" / f"{stem}-{key}"
    if dest.is_dir():
        return dest
    staging = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        safe_extract(archive, staging, progress=progress)
        try:
            staging.rename(dest)
        except OSError:
            if not dest.is_dir():  # another process finished first otherwise
                raise
    except OSError as exc:
        raise DataError(f"cannot extract {archive} into {dest.parent}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


@dataclass(frozen=True)
class ImageFolderSource(DataSource):
    """Any image-folder tree (or an archive of one) given as ``root``."""

    name: str = "imagefolder"
    description: str = (
        "any image-folder tree (train/<class>/*.jpg, val/ and/or test/), or an archive of one"
    )
    splits: tuple[str, ...] = ("train", "val", "test")
    options: ClassVar[Mapping[str, Option]] = MappingProxyType(
        {
            "root": Option(
                None, "the tree (folder with train/) or a .tar.gz/.zip of it", required=True
            ),
            "image_size": Option(None, "resize every image to HxW (default: keep; all must match)"),
            "channels": Option(None, "1 or 3 (default: that of the first image)"),
        }
    )

    def hint(self) -> str:
        return (
            "it is your own tree: give it as data.root=PATH (cnnlab train) or --root PATH "
            "(cnnlab data), a folder with train/<class>/ images or a .tar.gz/.zip of one"
        )

    def _root(self, root: Any, data_dir: DataDirs, progress: Progress | None = None) -> Path:
        """The tree for the ``root`` option; a relative path is also tried in the data folders."""
        if root is None or str(root) == "":
            raise DataError(
                "data set 'imagefolder' needs root=PATH: a folder with train/<class>/ (or an archive of one)"
            )
        path = Path(root).expanduser()
        if not path.exists() and not path.is_absolute():
            path = next((r / path for r in search_roots(data_dir) if (r / path).exists()), path)
        if not path.exists():
            raise DataError(f"image-folder root {root} does not exist")
        if is_archive(path):
            path = extract_cached(path, progress)
        return tree_root(path)

    def available_splits(self, data_dir: DataDirs = None, **options: Any) -> tuple[str, ...]:
        tree = self._root(options.get("root"), data_dir)
        classes = class_names(tree / "train")
        return ("train", *(s for s in ("val", "test") if is_labelled(tree / s, classes)))

    def locate(self, splits: Sequence[str], data_dir: DataDirs, **options: Any) -> Path:
        return self._root(options.get("root"), data_dir)

    def load(
        self,
        split: str,
        *,
        data_dir: DataDirs = None,
        verify: bool = True,
        progress: Progress | None = None,
        **options: Any,
    ) -> ImageSet:
        size = parse_size(options.get("image_size"))
        channels = parse_channels(options.get("channels"))
        tree = self._root(options.get("root"), data_dir, progress)
        classes = class_names(tree / "train")
        if split not in self.splits or not is_labelled(tree / split, classes):
            have = ", ".join(s for s in self.splits if is_labelled(tree / s, classes))
            raise DataError(f"{tree} has no labelled {split!r} split; it has: {have}")
        listing = scan_split(tree / split, classes, every_class=split == "train")
        stamp = fingerprint(listing)
        key = f"{listing.folder.resolve()}|{size}|{channels}"
        folder = cache_root() / "imagefolder" / hashlib.sha256(key.encode()).hexdigest()[:20]
        cached = _read_cache(folder, stamp)
        if cached is not None:
            images, labels, _ = cached
        else:
            images = decode_images(
                listing.files,
                channels=channels,
                size=size,
                progress=progress,
                task=f"decode {split}",
            )
            labels = np.asarray(listing.labels, dtype=np.int64)
            with contextlib.suppress(OSError):  # a read-only cache only costs speed
                _write_cache(folder, stamp, images, labels, classes)
        return ImageSet(
            torch.from_numpy(images),
            torch.from_numpy(labels),
            classes,
            self.name,
            split,
            str(listing.folder),
        )
