"""Built-in recipes: every spec is valid, and every quick form runs end to end with a report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnlab.cli import main
from cnnlab.studies.recipes import list_recipes, recipe_specs
from cnnlab.studies.spec import expand

RECIPES = ("lenet-ablation", "cnn-vs-mlp", "cifar10-basics", "modern-cnns", "resnet-ablation")
SHARED_DATA = Path("/work/shared/data")


def test_the_five_recipes_are_registered():
    assert [name for name, _ in list_recipes()] == sorted(RECIPES)
    assert all(description for _, description in list_recipes())


@pytest.mark.parametrize("name", RECIPES)
def test_full_and_quick_forms_are_valid_and_quick_is_small(name):
    full = recipe_specs(name)
    quick = recipe_specs(name, quick=True)
    assert [s.name for s in full] == [s.name for s in quick]
    for f, q in zip(full, quick):
        n_full, n_quick = len(expand(f)), len(expand(q))
        assert n_quick <= n_full
        assert n_quick <= 20, f"{q.name}: quick form has {n_quick} runs"
        base = q.base_config()
        assert base.data.subset is not None and base.data.subset <= 1000
        assert base.train.epochs <= 2 and q.repeats <= 2


def test_lenet_ablation_is_the_textbook_study():
    (spec,) = recipe_specs("lenet-ablation")
    base = spec.base_config()
    assert (
        base.model.name,
        base.optim.name,
        base.optim.lr,
        base.train.batch_size,
        base.train.epochs,
    ) == ("lenet5", "sgd", 0.9, 256, 10)
    assert [v.value for v in spec.vary["optim.lr"]] == pytest.approx(
        [round(0.1 * i, 1) for i in range(1, 18)]
    )
    assert [v.value for v in spec.vary["train.batch_size"]] == [2**i for i in range(1, 11)]
    assert spec.repeats == 10 and spec.combine
    plans = expand(spec)
    assert len(plans) == 350 and sum(p.derived_from is not None for p in plans) == 20


def _image_tree(root: Path, size: int = 32, per_class: int = 12) -> Path:
    """A tiny colour ImageFolder tree (train/test, 10 classes) of generated PNGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                pixels[:, :, c % 3] += np.uint8(40 * (c // 3 + 1))
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_tree(tmp_path_factory, monkeypatch) -> Path:
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    return _image_tree(tmp_path_factory.mktemp("tree"))


def _overrides(name: str, request) -> list[str]:
    if name in ("cifar10-basics", "resnet-ablation"):
        # CIFAR-10 is rarely on disk in CI: the same recipe on a generated ImageFolder tree.
        tree = request.getfixturevalue("image_tree")
        return ["data.name=imagefolder", f"data.root={tree}"]
    if name == "cnn-vs-mlp":
        from cnnlab.data import load_splits
        from cnnlab.errors import DataError

        data_dir = str(SHARED_DATA) if SHARED_DATA.is_dir() else None
        try:
            load_splits("mnist", data_dir=data_dir)
        except DataError as exc:
            pytest.skip(f"MNIST not available: {exc}")
        return [f"data.data_dir={data_dir}"] if data_dir else []
    return []


@pytest.mark.usefixtures("fashion_mnist")
@pytest.mark.parametrize("name", RECIPES)
def test_quick_recipe_runs_end_to_end_with_a_report(name, tmp_path, request, capsys):
    overrides = _overrides(name, request)
    root = tmp_path / "studies"
    args = ["--root", str(root), "--workers", "1", "--threads", "1", *overrides]
    code = main(["recipes", "run", name, "--quick", *args])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    for spec in recipe_specs(name, quick=True, overrides=overrides):
        folder = root / spec.name
        assert (folder / "spec.yaml").is_file()
        runs = sorted((folder / "runs").iterdir())
        assert len(runs) >= len(expand(spec))
        assert all((r / "summary.json").is_file() and (r / "study.json").is_file() for r in runs)
        report = folder / "report"
        assert (report / "report.md").is_file() and (report / "report.html").is_file()
        if spec.vary or spec.grid:
            assert "<img" in (report / "report.html").read_text()
