"""curves.png for one run: loss and accuracy per epoch, train vs validation vs test."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_run_curves(rows: list[dict[str, Any]], out: Path, title: str = "") -> Path:
    """Two panels (loss, accuracy) against epoch; missing values are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in rows]
    for split, style in (("train", "-"), ("val", "--"), ("test", ":")):
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
            pts = [(e, r.get(f"{split}_{metric}")) for e, r in zip(epochs, rows)]
            pts = [(e, v) for e, v in pts if v is not None]
            if pts:
                ax.plot(*zip(*pts), style, marker="o", markersize=3, label=split)
    for ax, label in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
