"""``cnnlab explain / features / filters / errors`` on real run folders written by the trainer."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main
from cnnlab.explain import list_methods

from .conftest import CLASSES, patch_data

STEMS = {m: m.replace("+", "p") for m in list_methods()}


def _write_tree(root: Path, colour: bool) -> Path:
    """An image-folder tree of patch images: train/<class>/*.png and test/<class>/*.png."""
    for split, n, seed in (("train", 150, 11), ("test", 30, 12)):
        data = patch_data(n, seed)
        for i, (image, label) in enumerate(zip(data.images, data.labels)):
            folder = root / split / CLASSES[int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = image[0].numpy()
            if colour:  # tint it, so the three channels differ
                pixels = np.stack([pixels, pixels // 2 + 60, 255 - pixels // 3], axis=-1)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """A LeNet run on grayscale images and a ResNet-18 (small stem) run on colour images.

    The ResNet-18 runs at a quarter of the usual width so the run folder is made
    in seconds; test_methods runs every method on the full-width network.
    """
    from cnnlab.engine.trainer import train

    base = tmp_path_factory.mktemp("explain-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE", str(base / "cache"))
        specs = {
            "lenet": ({"name": "lenet5-modern"}, False, 3),
            "resnet": ({"name": "resnet18", "stem": "small", "width": 0.25}, True, 1),
        }
        paths = {}
        for key, (model, colour, epochs) in specs.items():
            tree = _write_tree(base / f"{key}-tree", colour)
            config = {
                "data": {"name": "imagefolder", "root": str(tree), "val_fraction": 0.1},
                "model": model,
                "optim": {"name": "adam", "lr": 0.003},
                "train": {"epochs": epochs, "batch_size": 32, "device": "cpu"},
            }
            paths[key] = train(config, run_dir=base / key).path
        yield paths


@pytest.fixture
def cli(runs, capsys, monkeypatch):
    """``cli(args) -> (status, stdout, stderr)`` with the runs' data cache in place."""
    monkeypatch.setenv("CNNLAB_CACHE", str(Path(runs["lenet"]).parent / "cache"))

    def call(*args):
        status = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return status, out, err

    return call


@pytest.mark.parametrize("run", ["lenet", "resnet"])
@pytest.mark.parametrize("method", list_methods())
def test_explain_writes_a_grid_and_the_maps(cli, runs, tmp_path, run, method):
    status, out, err = cli(
        "explain",
        runs[run],
        "--method",
        method,
        "--images",
        3,
        "--target",
        "true",
        "--out",
        tmp_path,
    )
    if method == "cam" and run == "lenet":
        assert status == 2
        assert err.startswith(
            "error: method 'cam' needs a network ending in global average pooling"
        )
        assert "use --method gradcam" in err and err.count("\n") == 1
        return
    assert status == 0, err
    stem = STEMS[method]
    with Image.open(tmp_path / f"{stem}-000.png") as img:
        assert img.format == "PNG"
    maps = np.load(tmp_path / f"{stem}-000.npy")
    assert maps.shape == (3, 16, 16) and maps.dtype == np.float32 and np.isfinite(maps).all()
    with open(tmp_path / f"{stem}.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    assert all(r["target"] == r["true"] for r in rows)  # --target true
    assert f"{stem}-000.png" in out


def test_explain_a_whole_split_in_batches(cli, runs, tmp_path):
    status, _out, err = cli(
        "explain", runs["lenet"], "--split", "test", "--batch", 8, "--out", tmp_path
    )
    assert status == 0, err
    grids = sorted(tmp_path.glob("gradcam-*.png"))
    assert len(grids) == 4  # 30 test images, 8 per grid
    assert np.load(tmp_path / "gradcam-003.npy").shape == (6, 16, 16)


def test_explain_image_files_and_a_class_target(cli, runs, tmp_path):
    colour = next(
        (Path(runs["resnet"]).parent / "resnet-tree" / "test" / "top-right").glob("*.png")
    )
    gray = next((Path(runs["lenet"]).parent / "lenet-tree" / "test" / "empty").glob("*.png"))
    status, _out, err = cli(
        "explain",
        runs["resnet"],
        colour,
        gray,
        "--method",
        "gradcam++",
        "--target",
        "top-right",
        "--out",
        tmp_path,
    )
    assert status == 0, err
    assert np.load(tmp_path / "gradcampp-000.npy").shape == (2, 16, 16)
    with open(tmp_path / "gradcampp.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows] == [colour.name, gray.name]
    assert {r["target"] for r in rows} == {"top-right"}


def test_features_filters_and_errors(cli, runs, tmp_path):
    status, out, err = cli(
        "features",
        runs["resnet"],
        "--layer",
        "features.stage1",
        "--image",
        4,
        "--out",
        tmp_path / "fm.png",
    )
    assert status == 0, err
    assert (tmp_path / "fm.png").stat().st_size > 0

    status, out, err = cli("filters", runs["lenet"], "--out", tmp_path / "filters.png")
    assert status == 0, err
    with Image.open(tmp_path / "filters.png") as img:
        assert img.format == "PNG"
    status, out, err = cli("filters", runs["resnet"])
    assert status == 0, err
    assert (Path(runs["resnet"]) / "filters.png").is_file()

    status, out, err = cli("errors", runs["lenet"], "--out", tmp_path / "errors.png", "--count", 5)
    assert status == 0, err
    assert (tmp_path / "errors.png").is_file()
    for name in CLASSES:
        assert name in out
    assert "of 30 wrong" in out


@pytest.fixture
def unreadable(tmp_path) -> Path:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("explain", "{lenet}", "--method", "lime"),
            "unknown explanation method 'lime'; available: cam, gradcam",
        ),
        (
            ("explain", "{lenet}", "--layer", "features.conv9"),
            "unknown layer 'features.conv9'; valid names include:",
        ),
        (
            ("explain", "{lenet}", "--method", "cam"),
            "method 'cam' needs a network ending in global average pooling",
        ),
        (("explain", "{lenet}", "{unreadable}"), "cannot read image file"),
        (("explain", "{lenet}", "{missing}"), "does not exist"),
        (("explain", "{lenet}", "--target", "zebra"), "target 'zebra' is not allowed"),
        (
            ("explain", "{lenet}", "{unreadable}", "--images", "2"),
            "give image files or --split/--images, not both",
        ),
        (("explain", "{lenet}", "--split", "holdout"), "split 'holdout' is not allowed"),
        (("explain", "{lenet}", "--images", "0"), "--images 0 is not allowed"),
        (
            ("explain", "{lenet}", "--method", "saliency", "--layer", "features.conv1"),
            "does not read a layer",
        ),
        (("explain", "{nowhere}"), "is not a run folder"),
        (
            ("features", "{lenet}", "--layer", "head.fc3", "--image", "0", "--out", "{tmp}/fm.png"),
            "not feature maps",
        ),
        (
            (
                "features",
                "{lenet}",
                "--layer",
                "features.conv1",
                "--image",
                "{unreadable}",
                "--out",
                "{tmp}/fm.png",
            ),
            "cannot read image file",
        ),
        (
            (
                "features",
                "{lenet}",
                "--layer",
                "features.conv1",
                "--image",
                "999",
                "--out",
                "{tmp}/fm.png",
            ),
            "image index 999 is out of range",
        ),
        (
            (
                "features",
                "{lenet}",
                "--layer",
                "features.conv1",
                "--image",
                "0",
                "--out",
                "{tmp}/fm.txt",
            ),
            "must end in one of: .png",
        ),
        (("filters", "{lenet}", "--layer", "head"), "layer 'head' has no convolution"),
        (("errors", "{lenet}", "--split", "holdout"), "split 'holdout' is not allowed"),
        (("explain", "{lenet}", "--device", "tpu"), "--device 'tpu' is not allowed; use auto"),
        (
            ("features", "{lenet}", "--layer", "features.conv1", "--image", "0", "--device", "tpu"),
            "--device 'tpu' is not allowed; use auto",
        ),
        (("errors", "{lenet}", "--device", "tpu"), "--device 'tpu' is not allowed; use auto"),
        (
            (
                "features",
                "{lenet}",
                "--layer",
                "features.conv1",
                "--image",
                "dev:3",
                "--out",
                "{tmp}/fm.png",
            ),
            "--image 'dev:3' is not allowed; use an image file, N or SPLIT:N (N an index from 0, SPLIT one of train, val, test)",
        ),
        (
            (
                "features",
                "{lenet}",
                "--layer",
                "features.conv1",
                "--image",
                "-1",
                "--out",
                "{tmp}/fm.png",
            ),
            "--image '-1' is not allowed; use an image file, N or SPLIT:N (N an index from 0, SPLIT one of train, val, test)",
        ),
        (
            (
                "features",
                "{lenet}",
                "--layer",
                "features.conv1",
                "--image",
                "test:-2",
                "--out",
                "{tmp}/fm.png",
            ),
            "--image 'test:-2' is not allowed; use an image file, N or SPLIT:N (N an index from 0, SPLIT one of train, val, test)",
        ),
        (
            (
                "features",
                "{lenet}",
                "--layer",
                "features.conv1",
                "--image",
                "2.5",
                "--out",
                "{tmp}/fm.png",
            ),
            "--image '2.5' is not allowed; use an image file, N or SPLIT:N (N an index from 0, SPLIT one of train, val, test)",
        ),
    ],
)
def test_bad_input_gives_one_clear_line(cli, runs, tmp_path, unreadable, args, message):
    fill = {
        "lenet": runs["lenet"],
        "unreadable": unreadable,
        "missing": tmp_path / "missing.png",
        "nowhere": tmp_path / "nowhere",
        "tmp": tmp_path,
    }
    status, out, err = cli(*(a.format(**fill) for a in args))
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err + out


@pytest.mark.parametrize(
    "bad", [("--layer", "features.conv9"), ("--method", "cam"), ("--target", "zebra")]
)
def test_a_failed_explanation_leaves_no_empty_output_folder(cli, runs, tmp_path, bad):
    out = tmp_path / "new" / "maps"
    status, _, err = cli("explain", str(runs["lenet"]), *bad, "--out", str(out))
    assert status == 2, err
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    status, _, _ = cli("explain", str(runs["lenet"]), *bad, "--out", str(kept))
    assert status == 2 and kept.is_dir()
