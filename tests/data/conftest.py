"""Every data test runs hermetically: its own cache, no user or system data folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cnnlab.data
import cnnlab.data.locate

SHARED_DATA = Path(
    os.environ.get("CNNLAB_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)


@pytest.fixture(autouse=True)
def isolated_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the cache at a temporary folder and hide CNNLAB_DATA and /usr/share/datasets."""
    cache = tmp_path / "cnnlab-cache"
    monkeypatch.setenv("CNNLAB_CACHE", str(cache))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    monkeypatch.setattr(cnnlab.data.locate, "SYSTEM_ROOTS", ())
    cnnlab.data.clear_cache()
    yield cache
    cnnlab.data.clear_cache()
