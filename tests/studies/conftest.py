"""Shared helpers for the study tests: a fake trainer for queue logic, tiny real specs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cnnlab.studies.spec import RunPlan


class FakeTrainer:
    """Stands in for ``train_plan``: writes a run folder without torch.

    ``diverge`` / ``fail`` pick runs by variant label; ``fail_times`` makes a run
    raise that many times before it succeeds. ``calls`` counts calls per key.
    """

    def __init__(self, diverge: tuple[str, ...] = (), fail: dict[str, int] | None = None) -> None:
        self.diverge = diverge
        self.fail = dict(fail or {})
        self.calls: Counter[str] = Counter()

    def __call__(
        self, plan: RunPlan, run_dir: Path, *, device: str | None = None, data: Any = None
    ) -> dict[str, Any]:
        self.calls[plan.key] += 1
        if self.calls[plan.key] <= self.fail.get(plan.variant, 0):
            raise RuntimeError(f"boom in {plan.variant}")
        cfg = plan.config
        rows = [
            {
                "epoch": e,
                "train_loss": 1.0 / e,
                "train_acc": 0.5,
                "val_loss": 1.0,
                "val_acc": 0.4 + e / 100,
                "test_loss": 1.0,
                "test_acc": min(0.99, cfg.optim.lr / 10 + e / 100 + plan.seed / 1000),
                "lr": cfg.optim.lr,
                "examples_per_sec": 100.0,
                "seconds": 0.1,
            }
            for e in range(1, cfg.train.epochs + 1)
        ]
        (run_dir / "metrics.csv").write_text(
            ",".join(rows[0])
            + "\n"
            + "".join(",".join(str(v) for v in r.values()) + "\n" for r in rows)
        )
        status = "diverged" if plan.variant in self.diverge else "completed"
        last = rows[-1]
        summary = {
            "name": run_dir.name,
            "status": status,
            "final": {
                k: last[k]
                for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
            },
            "best": {"val_acc": last["val_acc"], "epoch": len(rows)},
            "time": {"train_seconds": 0.1 * len(rows)},
            "epochs_completed": len(rows),
            "diverged": {"epoch": 1} if status == "diverged" else None,
            "config": cfg.to_dict(),
        }
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return summary


@pytest.fixture
def fake_trainer() -> FakeTrainer:
    return FakeTrainer()


def tiny_spec(name: str = "tiny", **extra: Any) -> dict[str, Any]:
    """A spec on real Fashion-MNIST small enough to train in about a second per run."""
    spec: dict[str, Any] = {
        "name": name,
        "base": {
            "data": {"name": "fashion-mnist", "subset": 300, "test_subset": 100},
            "model": {"name": "lenet5", "channels": [4, 8], "hidden": [32]},
            "optim": {"name": "sgd", "lr": 0.5},
            "train": {"epochs": 1, "batch_size": 100, "device": "cpu"},
        },
        "vary": {"optim.lr": [0.1, 0.5]},
        "repeats": 2,
    }
    spec.update(extra)
    return spec


@pytest.fixture(scope="session")
def fashion_mnist() -> None:
    """Skip when no copy of Fashion-MNIST is found (Debian: dataset-fashion-mnist)."""
    from cnnlab.data import load_splits
    from cnnlab.errors import DataError

    try:
        load_splits("fashion-mnist")
    except DataError as exc:
        pytest.skip(f"Fashion-MNIST not available: {exc}")
