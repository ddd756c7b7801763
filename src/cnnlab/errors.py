"""The project's exception types.

Every error a user can cause derives from :class:`CnnlabError`; its message is
one line that names the bad value and what is allowed. The CLI prints exactly
that line and exits with status 2; anything else is a bug and shows a traceback.
"""

from __future__ import annotations


class CnnlabError(Exception):
    """Base class: a user-facing, one-line problem (bad input, missing file, ...)."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep messages to one line so logs and the CLI stay readable.
        super().__init__(" ".join(str(message).split()))


class RankError(CnnlabError):
    """One rank of a multi-process run failed with this (already user-facing) error."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ConfigError(CnnlabError):
    """A config key, value or spec is invalid."""


class RegistryError(CnnlabError):
    """An unknown name was asked of a registry (model, data set, method, ...)."""


class DataError(CnnlabError):
    """A data file is missing, corrupt or inconsistent."""


class DataNotFoundError(DataError):
    """No copy of a data set was found and it could not be downloaded."""


class ModelError(CnnlabError):
    """A model cannot be built with the requested options or input size."""


class InputSizeError(ModelError):
    """A model cannot take the input size asked of it (a fact about the data, not the options)."""


class CheckpointError(CnnlabError):
    """A checkpoint is missing, corrupt, or unsafe to load."""


class RunError(CnnlabError):
    """A run folder is missing or incomplete."""


class StudyError(CnnlabError):
    """A study spec, store or state is invalid."""


class ExplainError(CnnlabError):
    """An explanation method cannot be applied as asked."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when empty), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
