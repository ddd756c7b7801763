"""cnnlab: convolutional-network experiments done properly.

The public API is loaded lazily so ``import cnnlab`` (and ``cnnlab --help``)
does not pay for importing torch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "create_model": "cnnlab.models",
    "list_models": "cnnlab.models",
    "summary": "cnnlab.models.summary",
    "load_dataset": "cnnlab.data",
    "load_splits": "cnnlab.data",
    "list_datasets": "cnnlab.data",
    "RunConfig": "cnnlab.config",
    "load_config": "cnnlab.config",
    "train": "cnnlab.engine.trainer",
    "Run": "cnnlab.engine.run",
}

__all__ = sorted(_API) + ["__version__"]  # noqa: PLE0605 - from _API, so the two cannot disagree


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
