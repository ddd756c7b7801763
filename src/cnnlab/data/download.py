"""Downloading official data files, verified before they are kept.

A file is streamed to a temporary ``NAME.*.part`` of its own and only renamed
into place once its checksum matches, so an interrupted or tampered download
never looks like data. The temporary name is unique to each call: two processes
fetching the same file must not write into one shared ``.part``, or the slower
one would keep writing into the file the faster one had verified and renamed.
Mirrors are tried in order; the error lists what went wrong with each.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from cnnlab.data.base import Progress
from cnnlab.data.files import read_bytes
from cnnlab.errors import DataError, DataNotFoundError
from cnnlab.locks import FileLock

_CHUNK = 1 << 20


def fetch(
    url: str,
    target: Path,
    *,
    timeout: float = 30.0,
    progress: Progress | None = None,
    task: str | None = None,
) -> None:
    """Stream ``url`` into ``target`` (overwritten), reporting bytes done.

    Args:
        url: an ``http://`` or ``https://`` address.
        target: the file to write; its folder is created.
        timeout: seconds to wait for the server before giving up.
        progress: called as ``progress(task, bytes_done, bytes_total)``; total is 0 when unknown.
        task: the label passed to ``progress`` (default ``download <file name>``).

    Raises:
        DataError: the URL is not http(s), the server fails, or the file cannot be written.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise DataError(f"cannot download {url!r}: only http:// and https:// addresses are allowed")
    task = task or f"download {target.name}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(_CHUNK):
                try:
                    out.write(chunk)
                except OSError as exc:  # disk full: the destination's fault, not the server's
                    raise DataError(f"cannot write {target}: {exc.strerror or exc}") from None
                done += len(chunk)
                if progress is not None:
                    progress(task, done, total)
            if total and done != total:
                raise DataError(f"download of {url} stopped after {done} of {total} bytes")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise DataError(f"download of {url} failed: {reason}") from None


def fetch_verified(
    urls: Sequence[str],
    target: Path,
    *,
    check: Callable[[str, bytes], None],
    decompress: bool = False,
    progress: Progress | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download the first of ``urls`` whose content passes ``check`` into ``target``.

    Args:
        urls: the same file on several mirrors, tried in order.
        target: final path; written only after ``check`` accepts the content.
        check: raises DataError when the content is wrong; called with the URL and
            the bytes (decompressed when ``decompress``).
        decompress: gunzip before checking, for checksums of the decompressed payload.
        progress: see :func:`fetch`.
        timeout: per-connection timeout in seconds.

    Returns:
        ``target``.

    Raises:
        DataNotFoundError: no mirror delivered a valid file (the message lists each failure).
    """
    failures = []
    for url in urls:
        try:
            partial = _temporary(target)
        except DataError as exc:
            failures.append(str(exc))
            break  # the folder is not writable: no mirror can help
        try:
            fetch(url, partial, timeout=timeout, progress=progress, task=f"download {target.name}")
            data = read_bytes(partial) if decompress else partial.read_bytes()
            check(url, data)
            os.replace(partial, target)
        except OSError as exc:
            failures.append(f"cannot write {target}: {exc.strerror or exc}")
        except DataError as exc:
            failures.append(str(exc))
        else:
            return target
        finally:  # also on Ctrl-C: no temporary file outlives the call
            with contextlib.suppress(OSError):
                partial.unlink()
    raise DataNotFoundError("; ".join(failures) or f"no address to download {target.name} from")


def _temporary(target: Path) -> Path:
    """A new empty file next to ``target`` that no other download writes to."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise DataError(f"cannot write {target}: {exc.strerror or exc}") from None
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def download_lock(folder: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock on downloading data set ``name`` into ``folder``.

    A second ``cnnlab data get`` of the same set waits here, then finds the
    first one's copy instead of downloading over it or tripping on its
    half-extracted archive. The lock is released when the process ends, even
    when it is killed.
    """
    lock = FileLock(folder / f".{name}.lock")
    try:
        lock.acquire(blocking=True)
    except OSError as exc:
        raise DataError(f"cannot write {lock.path}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        lock.release()
