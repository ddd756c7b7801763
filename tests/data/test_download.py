"""Downloads against a local HTTP server serving files these tests generate."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnnlab.cli import main
from cnnlab.data import catalog, download_dataset
from cnnlab.data.download import fetch_verified
from cnnlab.data.locate import FileSpec
from cnnlab.errors import DataError, DataNotFoundError

from ._factories import idx_specs, make_cifar10, make_idx_dataset


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder and the http:// URL that serves it."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder))
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_idx_download_verified_then_loadable(served: tuple[Path, str], tmp_path: Path) -> None:
    folder, url = served
    arrays = make_idx_dataset(folder, gz=True)
    source = dataclasses.replace(catalog.MNIST, files=idx_specs(arrays))
    calls = []
    where = source.download(tmp_path / "dest", mirrors=[url], progress=lambda *a: calls.append(a))
    assert where == tmp_path / "dest" / "mnist"
    assert sorted(p.name for p in where.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert calls[0][0] == "download train-images-idx3-ubyte.gz"
    size = (folder / "t10k-labels-idx1-ubyte.gz").stat().st_size
    assert calls[-1] == ("download t10k-labels-idx1-ubyte.gz", size, size)
    data = source.load("test", data_dir=tmp_path / "dest", verify=True)
    assert len(data) == 20


def test_second_mirror_used_when_first_fails(
    served: tuple[Path, str], tmp_path: Path, closed_port: str
) -> None:
    folder, url = served
    arrays = make_idx_dataset(folder, gz=True)
    source = dataclasses.replace(catalog.MNIST, files=idx_specs(arrays))
    source.download(tmp_path / "dest", mirrors=[closed_port, url], timeout=5)
    assert len(source.load("train", data_dir=tmp_path / "dest")) == 40


def test_checksum_mismatch_keeps_nothing(served: tuple[Path, str], tmp_path: Path) -> None:
    folder, url = served
    (folder / "f.gz").write_bytes(gzip.compress(b"payload"))
    spec = FileSpec("f", sha256=hashlib.sha256(b"other").hexdigest())
    from cnnlab.data.files import check_digest

    with pytest.raises(DataNotFoundError, match=r"f\.gz does not match the official f: sha256"):
        fetch_verified(
            [url + "f.gz"],
            tmp_path / "f.gz",
            check=lambda u, d: check_digest(u, d, spec),
            decompress=True,
        )
    assert list(tmp_path.glob("f.gz*")) == []


def test_only_http_urls(tmp_path: Path) -> None:
    with pytest.raises(
        DataNotFoundError, match=r"cannot download 'file:///etc/passwd': only http:// and https://"
    ):
        fetch_verified(["file:///etc/passwd"], tmp_path / "x", check=lambda u, d: None)


def test_cifar_archive_download_extracts_safely(served: tuple[Path, str], tmp_path: Path) -> None:
    folder, url = served
    batches = make_cifar10(tmp_path / "made")
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")

    def md5(path: Path) -> str:
        return hashlib.md5(path.read_bytes()).hexdigest()

    source = dataclasses.replace(
        catalog.CIFAR10,
        archive=FileSpec("cifar-10-python.tar.gz", md5=md5(archive), gzip_ok=False),
        meta=FileSpec("batches.meta", md5=md5(batches / "batches.meta"), gzip_ok=False),
        files={
            split: tuple(FileSpec(s.name, md5=md5(batches / s.name), gzip_ok=False) for s in specs)
            for split, specs in catalog.CIFAR10.files.items()
        },
    )
    where = source.download(tmp_path / "dest", mirrors=[url])
    assert where == tmp_path / "dest" / "cifar-10-batches-py"
    assert not (tmp_path / "dest" / "cifar-10-python.tar.gz").exists()
    assert len(source.load("train", data_dir=tmp_path / "dest", verify=True)) == 50


def test_cli_get_wrong_checksum(
    served: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, url = served
    make_idx_dataset(folder, gz=True)
    assert main(["data", "get", "mnist", "--dest", str(tmp_path / "dest"), "--mirror", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (
        f"could not download mnist: {url}train-images-idx3-ubyte.gz does not match the official"
        in err
    )
    assert not list((tmp_path / "dest").rglob("*.gz"))


def test_cli_get_offline_explains_everything(
    tmp_path: Path, closed_port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "data",
        "get",
        "fashion-mnist",
        "--dest",
        str(tmp_path / "dest"),
        "--data-dir",
        str(tmp_path / "mine"),
    ]
    assert main([*args, "--mirror", closed_port, "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"download of {closed_port}train-images-idx3-ubyte.gz failed" in err
    assert "t10k-labels-idx1-ubyte[.gz]" in err
    assert str(tmp_path / "dest") in err and str(tmp_path / "mine") in err
    assert "apt install dataset-fashion-mnist" in err
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" in err


def test_cli_get_skips_when_present(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_idx_dataset(tmp_path / "dest" / "mnist")
    assert main(["data", "get", "mnist", "--dest", str(tmp_path / "dest")]) == 0
    assert f"mnist: already present in {tmp_path / 'dest' / 'mnist'}" in capsys.readouterr().out


def test_imagefolder_has_no_download(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "get", "imagefolder"]) == 2
    assert "data set 'imagefolder' has no official download" in capsys.readouterr().err


def test_download_dataset_error_type(tmp_path: Path, closed_port: str) -> None:
    with pytest.raises(DataError, match="could not download cifar100"):
        download_dataset("cifar100", tmp_path, mirrors=[closed_port], timeout=5)


class _Held(http.server.BaseHTTPRequestHandler):
    """Serves ``body`` in two halves and waits on ``resume`` between them."""

    body = b""
    sent_half = threading.Event()
    resume = threading.Event()

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        half = len(self.body) // 2
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[:half])
        self.wfile.flush()
        self.sent_half.set()
        self.resume.wait(10)
        self.wfile.write(self.body[half:])


def test_concurrent_download_cannot_write_into_the_verified_file(
    served: tuple[Path, str], tmp_path: Path
) -> None:
    # A slow download of a bad copy starts first; a good copy of the same file
    # is fetched, verified and renamed meanwhile. The slow one must not keep
    # writing into the kept file (it did when both shared one NAME.part).
    folder, url = served
    good = bytes(range(256)) * 12_000  # over one read chunk, so both halves are written
    (folder / "f").write_bytes(good)
    spec = FileSpec("f", sha256=hashlib.sha256(good).hexdigest())
    from cnnlab.data.files import check_digest

    class Held(_Held):
        body = b"x" * len(good)
        sent_half = threading.Event()
        resume = threading.Event()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Held)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = tmp_path / "dest" / "f"
    errors: list[Exception] = []

    def slow() -> None:
        try:
            fetch_verified(
                [f"http://127.0.0.1:{server.server_address[1]}/f"],
                target,
                check=lambda u, d: check_digest(u, d, spec),
            )
        except DataError as exc:
            errors.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        assert Held.sent_half.wait(10)
        time.sleep(0.3)  # let the slow download write its first half
        fetch_verified([url + "f"], target, check=lambda u, d: check_digest(u, d, spec))
    finally:
        Held.resume.set()
        thread.join(10)
        server.shutdown()
        server.server_close()
    assert target.read_bytes() == good
    assert len(errors) == 1 and "does not match the official f" in str(errors[0])
    assert sorted(p.name for p in target.parent.iterdir()) == ["f"]


def test_interrupted_download_leaves_nothing(served: tuple[Path, str], tmp_path: Path) -> None:
    folder, url = served
    (folder / "f").write_bytes(b"x" * 3_000_000)

    def ctrl_c(task: str, done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch_verified(
            [url + "f"], tmp_path / "dest" / "f", check=lambda u, d: None, progress=ctrl_c
        )
    assert list((tmp_path / "dest").iterdir()) == []


def test_cli_get_waits_for_a_concurrent_get_then_finds_its_copy(
    tmp_path: Path, closed_port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # While another get holds the lock, this one must wait rather than download
    # over it (or trip on its half-extracted archive), then use its copy.
    from cnnlab.data.download import download_lock

    dest = tmp_path / "dest"
    codes: list[int] = []
    args = ["data", "get", "mnist", "--dest", str(dest), "--mirror", closed_port, "--timeout", "5"]
    with download_lock(dest, "mnist"):
        thread = threading.Thread(target=lambda: codes.append(main(args)))
        thread.start()
        time.sleep(0.5)
        assert codes == []  # still waiting
        make_idx_dataset(dest / "mnist")  # the other get finishes
    thread.join(10)
    assert codes == [0]
    assert f"mnist: already present in {dest / 'mnist'}" in capsys.readouterr().out


def test_cli_get_unwritable_destination_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("x")
    dest = tmp_path / "a-file" / "dest"
    assert main(["data", "get", "mnist", "--dest", str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"error: cannot write {dest}" in err


def test_disk_full_names_the_file_and_leaves_nothing(
    served: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from cnnlab.data import download

    folder, url = served
    (folder / "f").write_bytes(b"x" * 1000)

    class Full(io.BytesIO):
        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download, "open", lambda *a, **k: Full(), raising=False)
    with pytest.raises(DataNotFoundError) as info:
        fetch_verified([url + "f"], tmp_path / "dest" / "f", check=lambda u, d: None)
    assert str(info.value).startswith(f"cannot write {tmp_path / 'dest' / 'f'}.")
    assert "No space left on device" in str(info.value)
    assert list((tmp_path / "dest").iterdir()) == []
