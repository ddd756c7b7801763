"""Archive extraction: what a well-formed archive yields, and broken ones.

Hostile archives (``..``, absolute paths, links, devices) are in
tests/reliability/test_hostile_data.py.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from cnnlab.data.archive import list_members, safe_extract
from cnnlab.errors import DataError


def _tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o4755  # setuid bit: must not survive extraction
            tar.addfile(info, io.BytesIO(data))
    return path


FILES = {"./tree/train/a/1.txt": b"one", "tree/train/b/2.txt": b"two" * 1000, "tree/readme": b""}


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_extracts_files_with_plain_permissions(tmp_path: Path, mode: str) -> None:
    archive = _tar(tmp_path / "a.tar", FILES, mode)
    calls = []
    tops = safe_extract(archive, tmp_path / "out", progress=lambda *a: calls.append(a))
    assert tops == [tmp_path / "out" / "tree"]
    assert (tmp_path / "out/tree/train/a/1.txt").read_bytes() == b"one"
    assert (tmp_path / "out/tree/train/b/2.txt").read_bytes() == b"two" * 1000
    assert not (tmp_path / "out/tree/train/a/1.txt").stat().st_mode & 0o4000
    size = archive.stat().st_size
    assert calls[-1] == ("extract a.tar", size, size) and all(c[1] <= size for c in calls)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["tree"]  # no staging left


def test_zip_extracts(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("tree/", "")
        zf.writestr("tree/x/y.txt", b"y")
    safe_extract(tmp_path / "a.zip", tmp_path / "out")
    assert (tmp_path / "out/tree/x/y.txt").read_bytes() == b"y"
    assert [m.path for m in list_members(tmp_path / "a.zip")] == ["tree", "tree/x/y.txt"]


def test_existing_target_is_not_overwritten(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", FILES)
    (tmp_path / "out" / "tree").mkdir(parents=True)
    with pytest.raises(DataError, match=r"out/tree already exists; remove it first"):
        safe_extract(archive, tmp_path / "out")


def test_truncated_archive_leaves_nothing(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar.gz", {f"tree/{i}": bytes(range(256)) * 400 for i in range(5)})
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(DataError, match=r"(cannot read archive|cannot extract) .*a\.tar\.gz"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x.tar").write_bytes(b"hello")
    with pytest.raises(DataError, match=r"cannot extract .*x\.tar into .*out: "):
        safe_extract(tmp_path / "x.tar", tmp_path / "out")
    assert not (tmp_path / "out").exists()
