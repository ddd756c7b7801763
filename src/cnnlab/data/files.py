"""Reading whole data files safely: transparent gzip, checksums, one-line errors.

Every failure here names the file, so a truncated download or a file from the
wrong data set is reported as such and never surfaces as a zlib or numpy traceback.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

from cnnlab.data.locate import FileSpec
from cnnlab.errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """The whole content of ``path``, gunzipped when it starts with the gzip magic number.

    The magic number decides, not the extension: users rename files, and
    torchvision keeps both compressed and decompressed copies.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head != _GZIP_MAGIC:
                return f.read()
            with gzip.GzipFile(fileobj=f) as gz:
                return gz.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(
            f"{path} is truncated or corrupt ({exc}); delete it and fetch it again"
        ) from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def digest(data: bytes, algorithm: str) -> str:
    """Hex digest of ``data``; md5 is only used to match published checksums."""
    return hashlib.new(algorithm, data, usedforsecurity=False).hexdigest()


def check_digest(path: Path | str, data: bytes, spec: FileSpec) -> None:
    """Raise DataError when ``data`` (the content of ``path``) does not match ``spec``'s checksum.

    Args:
        path: the file (or URL) the bytes came from, for the message.
        data: its (decompressed) content.
        spec: the expected checksums; a spec without any is accepted as is.
    """
    for algorithm in ("sha256", "md5"):
        expected = getattr(spec, algorithm)
        if expected is None:
            continue
        actual = digest(data, algorithm)
        if actual != expected:
            raise DataError(
                f"{path} does not match the official {spec.name}: {algorithm} {actual[:16]}... "
                f"expected {expected[:16]}...; the file is corrupt or from another data set "
                f"(delete it and fetch it again, or skip the check with --no-verify)"
            )
        return
