"""docs/learn.md is a doctest: every snippet in the guide must run and print what it shows."""

from __future__ import annotations

import doctest
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "learn.md"


def test_learn_guide_examples_run() -> None:
    result = doctest.testfile(
        str(GUIDE),
        module_relative=False,
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        raise_on_error=False,
        verbose=False,
        report=False,
    )
    assert result.attempted > 30, "the guide lost its examples"
    assert result.failed == 0, f"{result.failed} doctest example(s) in {GUIDE} failed"
