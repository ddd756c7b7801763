"""Where data files are looked for, and how a missing data set is reported.

Search order: ``data_dir`` (``--data-dir``), then ``CNNLAB_DATA`` (both path
lists), then ``~/.cache/cnnlab/data`` (where ``cnnlab data get`` puts files),
then system locations such as Debian's ``/usr/share/datasets``. Inside each of
those roots a data set is looked for in a few sub-folders, including
torchvision's own layouts (``MNIST/raw``, ``cifar-10-batches-py``), so data a
user already has is found where it lies.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.data.base import DataDirs

#: Roots searched after the user's own; a module attribute so tests can replace it.
SYSTEM_ROOTS: tuple[str, ...] = ("/usr/share/datasets",)


@dataclass(frozen=True)
class FileSpec:
    """One file of a data set and what its content must hash to.

    Checksums are of the *decompressed* content: Debian and mirrors recompress
    the ``.gz`` files, so only the payload identifies the data.
    """

    name: str
    sha256: str | None = None
    md5: str | None = None
    #: Whether ``name + ".gz"`` is accepted in place of ``name``.
    gzip_ok: bool = True


def cache_root() -> Path:
    """cnnlab's cache folder: ``$CNNLAB_CACHE``, else ``$XDG_CACHE_HOME/cnnlab``, else ``~/.cache/cnnlab``."""
    if os.environ.get("CNNLAB_CACHE"):
        return Path(os.environ["CNNLAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "cnnlab"


def default_data_dir() -> Path:
    """Where downloaded data sets go when no ``data_dir`` is given."""
    return cache_root() / "data"


def split_dirs(data_dir: DataDirs) -> list[Path]:
    """``data_dir`` as a list of paths; strings may hold several, joined by ``os.pathsep``."""
    if data_dir is None:
        return []
    items: Iterable[str | Path] = [data_dir] if isinstance(data_dir, str | Path) else data_dir
    out: list[Path] = []
    for item in items:
        parts = str(item).split(os.pathsep) if isinstance(item, str) else [item]
        out.extend(Path(p).expanduser() for p in parts if str(p))
    return out


def search_roots(data_dir: DataDirs = None) -> list[Path]:
    """Every root searched for data, in order, without duplicates."""
    roots = [
        *split_dirs(data_dir),
        *split_dirs(os.environ.get("CNNLAB_DATA")),
        default_data_dir(),
        *(Path(p) for p in SYSTEM_ROOTS),
    ]
    seen: set[str] = set()
    unique = []
    for root in roots:
        key = os.path.abspath(root)
        if key not in seen:
            seen.add(key)
            unique.append(root)
    return unique


def find_file(folder: Path, spec: FileSpec) -> Path | None:
    """``folder/name`` or, when allowed, ``folder/name.gz``; None if neither is a file."""
    candidates = [folder / spec.name]
    if spec.gzip_ok:
        candidates.append(folder / f"{spec.name}.gz")
    return next((p for p in candidates if p.is_file()), None)


@dataclass
class Search:
    """The outcome of looking for a set of files in every root and sub-folder."""

    folder: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    roots: list[Path] = field(default_factory=list)
    #: Folders holding some but not all of the files, with what was missing.
    partial: list[tuple[Path, list[str]]] = field(default_factory=list)


def search(specs: Sequence[FileSpec], subfolders: Sequence[str], data_dir: DataDirs) -> Search:
    """Find the first folder, in search order, that holds every file in ``specs``.

    Args:
        specs: the files that must all be present.
        subfolders: relative folders tried inside each root (``""`` is the root itself).
        data_dir: the user's folders, searched first.

    Returns:
        A :class:`Search`; ``folder`` is None when no folder had everything.
    """
    result = Search(roots=search_roots(data_dir))
    for root in result.roots:
        for sub in subfolders:
            folder = root / sub if sub else root
            if not folder.is_dir():
                continue
            found = {s.name: find_file(folder, s) for s in specs}
            missing = [name for name, path in found.items() if path is None]
            if not missing:
                result.folder = folder
                result.files = {name: path for name, path in found.items() if path is not None}
                return result
            if len(missing) < len(specs):
                result.partial.append((folder, missing))
    return result


def not_found_message(
    name: str,
    specs: Sequence[FileSpec],
    subfolders: Sequence[str],
    result: Search,
    hint: str,
) -> str:
    """One line naming the files wanted, every place searched and how to get them."""
    wanted = ", ".join(f"{s.name}[.gz]" if s.gzip_ok else s.name for s in specs)
    subs = ", ".join(s or "." for s in subfolders)
    roots = ", ".join(str(r) for r in result.roots)
    msg = (
        f"data set {name!r} not found: looked for {wanted} in each of {roots} "
        f"(and in their sub-folders {subs})"
    )
    if result.partial:
        folder, missing = result.partial[0]
        msg += f"; {folder} has only some of the files (missing {', '.join(missing)})"
    return f"{msg}; {hint}" if hint else msg
