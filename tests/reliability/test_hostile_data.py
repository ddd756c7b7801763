"""Hostile data files: archives that try to escape their folder, pickles that try to run code.

Each must be refused with a one-line message, write nothing outside the
target (nothing at all, in fact), and never execute the payload.
"""

from __future__ import annotations

import io
import os
import pickle
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

import cnnlab.data
import cnnlab.data.locate
from cnnlab.cli import main
from cnnlab.data.archive import safe_extract
from cnnlab.errors import DataError


@pytest.fixture(autouse=True)
def _hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setattr(cnnlab.data.locate, "SYSTEM_ROOTS", ())
    cnnlab.data.clear_cache()
    yield
    cnnlab.data.clear_cache()


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", linkname: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _hostile_tar(path: Path, bad: tuple[tarfile.TarInfo, bytes]) -> Path:
    """A tar with a harmless file, the bad member, then another file that would land after it."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in [_member("tree/ok.txt"), bad, _member("tree/escaped/after.txt")]:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


HOSTILE = {
    "dotdot": (lambda t: _member("../escaped.txt"), "points outside the target folder with '..'"),
    "dotdot-deep": (
        lambda t: _member("tree/../../escaped.txt"),
        "points outside the target folder",
    ),
    "absolute": (lambda t: _member(str(t / "escaped-abs.txt")), "has an absolute path"),
    "symlink": (
        lambda t: _member("tree/link", tarfile.SYMTYPE, linkname=str(t / "escaped-link")),
        "is a symbolic link",
    ),
    "symlink-dir": (
        lambda t: _member("tree/escaped", tarfile.SYMTYPE, linkname=str(t)),
        "is a symbolic link",
    ),
    "hardlink": (
        lambda t: _member("tree/hard", tarfile.LNKTYPE, linkname="../../escaped-hard"),
        "is a hard link",
    ),
    "chardev": (lambda t: _member("tree/null", tarfile.CHRTYPE), "is a device node"),
    "blockdev": (lambda t: _member("tree/sda", tarfile.BLKTYPE), "is a device node"),
    "fifo": (lambda t: _member("tree/pipe", tarfile.FIFOTYPE), "is a FIFO"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tar_is_refused_and_writes_nothing(tmp_path: Path, case: str) -> None:
    make, message = HOSTILE[case]
    work = tmp_path / "work"
    work.mkdir()
    archive = _hostile_tar(tmp_path / "evil.tar.gz", make(work))
    before = _snapshot(tmp_path)
    with pytest.raises(DataError, match=message) as err:
        safe_extract(archive, work / "dest")
    assert str(archive) in str(err.value) and "\n" not in str(err.value)
    assert _snapshot(tmp_path) == before  # nothing in dest, nothing beside it


def test_hostile_tar_through_imagefolder_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _hostile_tar(tmp_path / "evil.tar.gz", _member("../../escaped.txt"))
    before = _snapshot(tmp_path)
    assert main(["data", "info", "imagefolder", "--root", str(archive)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: refusing to extract {archive}: member '../../escaped.txt'")
        and err.count("\n") == 1
    )
    assert _snapshot(tmp_path) - before <= {
        "cache",
        "cache/extracted",
    }  # only the empty cache folder


@pytest.mark.parametrize(
    ("name", "attr", "message"),
    [
        ("../escaped.txt", 0, "points outside the target folder"),
        ("/tmp/escaped-zip.txt", 0, "has an absolute path"),
        ("C:/escaped.txt", 0, "has an absolute path"),
        ("tree/link", stat.S_IFLNK | 0o777, "is a symbolic link"),
        ("tree/dev", stat.S_IFCHR | 0o666, "is a device node"),
    ],
)
def test_hostile_zip_is_refused(tmp_path: Path, name: str, attr: int, message: str) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("tree/ok.txt", b"ok")
        info = zipfile.ZipInfo(name)
        info.external_attr = attr << 16
        zf.writestr(info, b"/etc/passwd")
    before = _snapshot(tmp_path)
    with pytest.raises(DataError, match=message):
        safe_extract(archive, tmp_path / "dest")
    assert _snapshot(tmp_path) == before
    assert not Path("/tmp/escaped-zip.txt").exists()


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload(_Payload):
    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


def _cifar_folder(root: Path, batch: dict) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2)
    )
    good = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(good, protocol=2))
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    return folder / "data_batch_2"


@pytest.mark.parametrize("payload", [_Payload, _EvalPayload])
@pytest.mark.parametrize("where", ["data", "labels", "top"])
def test_cifar_batch_with_pickle_payload_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], payload: type, where: str
) -> None:
    marker = tmp_path / "PWNED"
    evil = payload(marker)
    batch = (
        evil
        if where == "top"
        else {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], where: evil}
    )
    path = _cifar_folder(tmp_path / "d", batch)
    code = main(["data", "info", "cifar10", "--data-dir", str(tmp_path / "d"), "--no-verify"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"refusing to load {path}: it asks to run" in err
    assert "posix.system" in err or "__builtin__.eval" in err
    assert not marker.exists()


def test_cifar_payload_refused_by_checksum_before_unpickling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "PWNED"
    path = _cifar_folder(tmp_path / "d", {"data": _Payload(marker), "labels": [0, 1]})
    (path.parent / "batches.meta").write_bytes(b"")  # checked first: make sure the batch is reached
    assert main(["data", "info", "cifar10", "--data-dir", str(tmp_path / "d")]) == 2
    assert "does not match the official" in capsys.readouterr().err
    assert not marker.exists()
