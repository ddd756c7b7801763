"""Summaries read off a longer run's curves, including a source that diverged."""

from __future__ import annotations

import pytest

from cnnlab.errors import StudyError
from cnnlab.studies.derive import derived_summary
from cnnlab.studies.spec import expand, spec_from_dict
from tests.studies.conftest import tiny_spec


def _rows(n: int) -> list[dict]:
    return [
        {"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.1 * e, "val_loss": 1.0, "val_acc": [0.3, 0.5, 0.4, 0.6][e - 1],
         "test_loss": 2.0, "test_acc": 0.05 * e, "lr": 0.1, "examples_per_sec": 10.0 * e, "seconds": 1.5}
        for e in range(1, n + 1)
    ]  # fmt: skip


def _plan(epochs: int):
    spec = spec_from_dict(tiny_spec(vary={"train.epochs": [2, 3, 4]}, repeats=1))
    return next(p for p in expand(spec) if p.config.train.epochs == epochs)


def test_summary_at_an_epoch_of_a_completed_source():
    source = {"status": "completed", "epochs_completed": 4, "device": "cpu"}
    s = derived_summary(source, _rows(4), _plan(3), "src")
    assert s["status"] == "completed" and s["epochs_completed"] == 3
    assert s["final"]["test_acc"] == pytest.approx(0.15) and s["final"][
        "train_loss"
    ] == pytest.approx(1 / 3)
    assert s["best"] == {"val_acc": 0.5, "epoch": 2}  # best so far, not the source's best
    assert s["time"]["train_seconds"] == pytest.approx(4.5)
    assert s["time"]["examples_per_sec"] == pytest.approx(20.0)
    assert s["derived_from"] == "src" and "src" in s["notes"][0]


def test_a_diverged_source_answers_earlier_epochs_and_diverges_later_ones():
    diverged = {"epoch": 3, "step": 30, "lr": 0.1, "last_finite_loss": 0.9}
    source = {"status": "diverged", "epochs_completed": 2, "diverged": diverged}
    early = derived_summary(source, _rows(2), _plan(2), "src")
    assert early["status"] == "completed" and early["diverged"] is None
    late = derived_summary(source, _rows(2), _plan(3), "src")
    assert (
        late["status"] == "diverged"
        and late["diverged"] == diverged
        and late["epochs_completed"] == 2
    )


def test_missing_epochs_of_an_unfinished_source_are_an_error():
    with pytest.raises(StudyError, match="2 epochs of curves; 3 are needed"):
        derived_summary({"status": "completed"}, _rows(2), _plan(3), "src")


def test_without_a_validation_split_best_names_the_training_metric():
    # The best epoch is then picked by train_acc; calling it val_acc would rank a
    # study's best_val_acc by training accuracy.
    rows = [{**r, "val_loss": None, "val_acc": None} for r in _rows(4)]
    source = {"status": "completed", "epochs_completed": 4, "device": "cpu"}
    s = derived_summary(source, rows, _plan(3), "src")
    assert s["best"] == {"train_acc": pytest.approx(0.3), "epoch": 3}
