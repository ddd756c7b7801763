"""Checkpoints that are written atomically, verified, and loaded without pickle code.

A checkpoint is written to a temporary file in the same folder, flushed and
fsynced, then renamed over the old one, so a crash or a full disk never leaves
a half-written ``last.pt``. A ``.sha256`` file beside it lets a reader refuse a
truncated or bit-flipped file, and the previous good checkpoint is kept as
``*.prev.pt`` so resume can fall back to it. Loading uses
``torch.load(weights_only=True)`` only; a file that needs arbitrary unpickling
is refused, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.errors import CheckpointError, first_line


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, flushed and fsynced; return its name."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a mix."""
    path = Path(path)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(state: dict[str, Any], path: Path, *, keep_previous: bool = True) -> None:
    """Serialize ``state`` and write it atomically with a sha256 sidecar.

    Order matters: the new bytes go to a temporary file first (a full disk or a
    read-only folder fails here and changes nothing); then the current file
    becomes ``*.prev.pt``; then the sidecar and the file are renamed into place.
    A crash at any point leaves a good ``last.pt`` or a good ``last.prev.pt``.

    Raises:
        CheckpointError: the write failed; the previous checkpoint is left intact.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    sidecar = path.with_name(path.name + ".sha256")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _write_temp(path, data)
        if keep_previous and path.exists() and verify(path):
            prev = path.with_name(path.stem + ".prev.pt")
            os.replace(path, prev)
            os.replace(sidecar, prev.with_name(prev.name + ".sha256"))
        atomic_write_text(sidecar, _sha256(data) + "\n")
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
        for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
    except OSError as exc:
        raise CheckpointError(
            f"could not write checkpoint {str(path)!r}: {exc.strerror or exc}; "
            "the previous checkpoint is kept"
        ) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def verify(path: Path) -> bool:
    """True when the file's sha256 matches its sidecar."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    try:
        expected = sidecar.read_text().strip()
        return _sha256(path.read_bytes()) == expected
    except OSError:
        return False


class _NoForcedUnpickling:
    """Hide TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD while loading, so weights_only cannot be turned off."""

    _VARS = ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",)

    def __enter__(self) -> None:
        self._saved = {k: os.environ.pop(k) for k in self._VARS if k in os.environ}

    def __exit__(self, *exc: object) -> None:
        os.environ.update(self._saved)


def load_checkpoint(
    path: Path, *, map_location: str | torch.device = "cpu", check_hash: bool = True
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, after checking its sha256 sidecar.

    Raises:
        CheckpointError: missing, corrupt, or carrying anything but tensors and plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    sidecar = path.with_name(path.name + ".sha256")
    if check_hash:
        if not sidecar.is_file():
            raise CheckpointError(
                f"checkpoint {str(path)!r} has no {sidecar.name}; cannot verify it"
            )
        if not verify(path):
            raise CheckpointError(
                f"checkpoint {str(path)!r} is corrupt (sha256 does not match {sidecar.name})"
            )
    try:
        with _NoForcedUnpickling():
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError ...
        raise CheckpointError(
            f"checkpoint {str(path)!r} refused: it cannot be loaded as plain weights "
            f"({first_line(exc)[:160]})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds {type(state).__name__}, expected a dict"
        )
    return state


def load_latest_good(folder: Path, stem: str = "last") -> tuple[dict[str, Any], Path]:
    """Load ``stem.pt``, falling back to ``stem.prev.pt`` when the newest is corrupt."""
    folder = Path(folder)
    errors = []
    for candidate in (folder / f"{stem}.pt", folder / f"{stem}.prev.pt"):
        if candidate.exists():
            try:
                return load_checkpoint(candidate), candidate
            except CheckpointError as exc:
                errors.append(str(exc))
    if errors:
        raise CheckpointError(errors[0])
    raise CheckpointError(f"no checkpoint {stem}.pt in {str(folder)!r}")


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every global RNG state, as tensors and plain data (weights_only-loadable).

    ``device``: the run's device; on CUDA its generator is also kept on its own
    (``cuda_run``), because a run may resume on another GPU (see :func:`set_rng_state`).
    """
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _python_state_to_tensor(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
        if device is not None and device.type == "cuda":
            state["cuda_run"] = torch.cuda.get_rng_state(device)
    return state


def fingerprints(cfg: Any) -> dict[str, str]:
    """What a checkpoint records of the config that wrote it (see :func:`resumes`)."""
    return {
        "config_fingerprint": cfg.fingerprint(),
        "resume_fingerprint": cfg.resume_fingerprint(),
    }


def resumes(saved: Mapping[str, Any], cfg: Any) -> bool:
    """Whether checkpoint ``saved`` can continue ``cfg``: the same config, on any GPU.

    Checkpoints from before ``resume_fingerprint`` need the exact config.
    """
    if "resume_fingerprint" in saved:
        return saved["resume_fingerprint"] == cfg.resume_fingerprint()
    return saved.get("config_fingerprint") == cfg.fingerprint()


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore :func:`rng_state`; ``device`` is the resumed run's device.

    A run saved on ``cuda:0`` and resumed on ``cuda:1`` continues its own GPU's
    generator on ``cuda:1`` (the per-GPU list alone would give ``cuda:1`` the
    state of a generator the run never used).
    """
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    random.setstate(_python_state_from_tensor(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        # One state per GPU the saving process saw; this one may see fewer.
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    if "cuda_run" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_run"], device)


def _python_state_to_tensor(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {
        "version": version,
        "internal": torch.tensor(internal, dtype=torch.int64),
        "gauss": gauss,
    }


def _python_state_from_tensor(state: dict[str, Any]) -> tuple:
    return (state["version"], tuple(int(v) for v in state["internal"].tolist()), state["gauss"])
