"""Tiny study folders written by hand, in the layout the study runner writes.

Numbers come from a seeded RNG; nothing here trains. The main fixture has a
numeric factor spanning decades (batch size), a numeric factor on a linear
range (lr) with diverged runs, a categorical factor, a derived epochs factor,
a failed run and a pending run, so every part of the report has something to show.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

BASE_CONFIG = {
    "data": {"name": "fashion-mnist"},
    "model": {"name": "lenet5", "activation": "sigmoid"},
    "optim": {"name": "sgd", "lr": 0.9},
    "train": {"epochs": 4, "batch_size": 256},
}


def write_spec(study: Path, spec: dict[str, Any]) -> None:
    study.mkdir(parents=True, exist_ok=True)
    (study / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def write_run(
    study: Path,
    key: str,
    *,
    variant: str = "base",
    factors: dict[str, Any] | None = None,
    repeat: int = 0,
    status: str | None = "completed",
    final: dict[str, float | None] | None = None,
    epochs: int = 4,
    rng: np.random.Generator | None = None,
    error: str | None = None,
    derived_from: str | None = None,
    diverged: dict[str, Any] | None = None,
    name: str | None = None,
    versions: dict[str, str] | None = None,
    device: str = "cpu",
) -> Path:
    """One run folder; ``status=None`` leaves out summary.json (a pending run)."""
    factors = dict(factors or {})
    folder = study / "runs" / key
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "study": study.name,
        "key": key,
        "variant": variant,
        "factors": factors,
        "factor": next(iter(factors)) if len(factors) == 1 else None,
        "repeat": repeat,
        "seed": 1000 + repeat,
        "derived_from": derived_from,
    }
    (folder / "study.json").write_text(json.dumps(meta))
    rng = rng or np.random.default_rng(0)
    final = dict(final or {})
    last = {
        k: 0.5 if final.get(k) is None else final[k] for k in ("train_loss", "train_acc", "val_acc")
    }
    rows = []
    for epoch in range(1, epochs + 1):
        frac = epoch / epochs
        rows.append(
            {
                "epoch": epoch,
                "train_loss": 2.0 - frac * (2.0 - last["train_loss"]) + rng.normal(0, 0.01),
                "train_acc": frac * last["train_acc"],
                "val_loss": 2.1 - frac,
                "val_acc": frac * last["val_acc"],
                "test_loss": "",
                "test_acc": "",
                "lr": 0.9,
                "examples_per_sec": 5000.0,
                "seconds": 1.5,
            }
        )
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(str(r[h]) for h in header) for r in rows]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    if status is None:
        return folder
    config = json.loads(json.dumps(BASE_CONFIG))
    for dotted, value in factors.items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    summary = {
        "name": name or f"{study.name}-{key}",
        "status": status,
        "final": {
            k: final.get(k)
            for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
        },
        "best": {"val_acc": final.get("best_val_acc", final.get("val_acc")), "epoch": epochs},
        "time": {
            "train_seconds": final.get("train_seconds", 10.0),
            "total_seconds": 12.0,
            "examples_per_sec": 5000.0,
        },
        "epochs_completed": epochs,
        "diverged": diverged,
        "error": error,
        "device": device,
        "versions": versions or {"python": "3.11.2", "torch": "2.5.1", "cnnlab": "0.1.0"},
        "config": config,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def _finals(rng: np.random.Generator, acc: float) -> dict[str, float]:
    return {
        "train_loss": float(1.2 - acc + rng.normal(0, 0.02)),
        "train_acc": float(acc + 0.02 + rng.normal(0, 0.01)),
        "val_loss": float(1.3 - acc + rng.normal(0, 0.02)),
        "val_acc": float(acc + rng.normal(0, 0.01)),
        "test_loss": float(1.3 - acc + rng.normal(0, 0.02)),
        "test_acc": float(acc + rng.normal(0, 0.01)),
        "train_seconds": float(10 + rng.normal(0, 1)),
    }


STUDY_SPEC = {
    "name": "mini-ablation",
    "base": BASE_CONFIG,
    "vary": {
        "optim.lr": [0.1, 0.9, 1.7],
        "train.batch_size": [2, 64, 1024],
        "model.activation": ["sigmoid", "relu"],
        "train.epochs": [2, 4],
    },
    "repeats": 3,
    "metric": "test_acc",
}

# Mean test accuracy of each one-factor variant (the base is 0.80).
EFFECTS = {
    ("optim.lr", 0.1): 0.70,
    ("optim.lr", 1.7): 0.82,
    ("train.batch_size", 2): 0.60,
    ("train.batch_size", 64): 0.84,
    ("train.batch_size", 1024): 0.75,
    ("model.activation", "relu"): 0.86,
}


def make_study(root: Path) -> Path:
    """The main fixture study: see the module docstring."""
    study = root / "mini-ablation"
    write_spec(study, STUDY_SPEC)
    rng = np.random.default_rng(1234)
    for r in range(3):
        write_run(study, f"base{r}", repeat=r, final=_finals(rng, 0.80), rng=rng)
    for (factor, value), acc in EFFECTS.items():
        label = f"{factor}={value}"
        slug = f"{factor.split('.')[-1]}{value}"
        for r in range(3):
            key, kwargs = (
                f"{slug}-{r}",
                {"variant": label, "factors": {factor: value}, "repeat": r, "rng": rng},
            )
            if (factor, value) == ("optim.lr", 1.7) and r < 2:
                diverged = {"epoch": 2 + r, "step": 40, "last_finite_loss": 2.3, "lr": 1.7}
                write_run(
                    study,
                    key,
                    status="diverged",
                    diverged=diverged,
                    final={"train_loss": None},
                    **kwargs,
                )
            elif (factor, value) == ("train.batch_size", 2) and r == 2:
                write_run(
                    study, key, status="failed", error="RuntimeError: CUDA out of memory", **kwargs
                )
            elif (factor, value) == ("optim.lr", 0.1) and r == 2:
                write_run(study, key, status=None, **kwargs)
            else:
                write_run(study, key, final=_finals(rng, acc), **kwargs)
    for r in range(3):
        final = _finals(rng, 0.78)
        write_run(
            study,
            f"epochs2-{r}",
            variant="train.epochs=2",
            factors={"train.epochs": 2},
            repeat=r,
            final=final,
            epochs=2,
            derived_from=f"base{r}",
            rng=rng,
        )
    return study


HOSTILE = {
    "script": "<script>alert('x')</script>",
    "img": '"><img src=x onerror=alert(1)>',
    "js": "javascript:alert(document.cookie)",
    "template": "{{7*7}}",
}


def make_hostile_study(root: Path) -> Path:
    """A study whose user text (labels, values, errors, names, versions) is hostile."""
    study = root / "hostile"
    bad_value = HOSTILE["img"]
    spec = {
        "name": HOSTILE["script"],
        "base": {
            **BASE_CONFIG,
            "data": {"name": HOSTILE["template"], "classes": [HOSTILE["script"], "```html", "cat"]},
        },
        "vary": {"model.activation": ["sigmoid", bad_value]},
        "repeats": 2,
        "metric": "test_acc",
    }
    write_spec(study, spec)
    rng = np.random.default_rng(7)
    for r in range(2):
        write_run(
            study, f"base{r}", repeat=r, final=_finals(rng, 0.8), rng=rng, name=HOSTILE["template"]
        )
        write_run(
            study,
            f"bad{r}",
            variant=f"model.activation={bad_value}",
            factors={"model.activation": bad_value},
            repeat=r,
            final=_finals(rng, 0.7),
            rng=rng,
            versions={"torch": HOSTILE["script"], "cnnlab": HOSTILE["template"]},
            device=HOSTILE["img"],
        )
    write_run(
        study,
        "failed0",
        variant=HOSTILE["script"],
        factors={"model.activation": HOSTILE["js"]},
        repeat=0,
        status="failed",
        error=f"{HOSTILE['js']} {HOSTILE['script']} {HOSTILE['img']}",
        rng=rng,
    )
    return study


@pytest.fixture(scope="session")
def study_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="session")
def report_paths(study_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from cnnlab.report.render import write_report

    return write_report(study_dir, tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="session")
def hostile_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from cnnlab.report.render import write_report

    return write_report(make_hostile_study(tmp_path_factory.mktemp("hostile")))


class Page(HTMLParser):
    """Every start tag with its attributes, and the page's text, as a browser would parse them."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.chunks: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def find(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


@pytest.fixture(scope="session")
def parse_page() -> type[Page]:
    """The :class:`Page` parser (a fixture, so test modules need not import conftest)."""
    return Page
