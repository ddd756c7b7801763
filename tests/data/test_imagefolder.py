"""Image-folder trees: layouts, decoding, the decode cache, and bad trees."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.cli import main
from cnnlab.data import available_splits, load_dataset, load_splits
from cnnlab.errors import DataError

from ._factories import image_array, make_tree, save_image


def _expected(items: list[tuple[Path, np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack(
        [
            torch.from_numpy(a).permute(2, 0, 1) if a.ndim == 3 else torch.from_numpy(a)[None]
            for _, a, _ in items
        ]
    )
    return images, torch.tensor([label for _, _, label in items])


def test_pixels_labels_and_classes_exact(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", {"train": 4, "val": 2, "test": 3})
    for split in ("train", "val", "test"):
        data = load_dataset("imagefolder", split, root=tmp_path / "t")
        images, labels = _expected(tree[split])
        assert data.classes == ("cat", "dog", "frog")
        assert torch.equal(data.images, images) and torch.equal(data.labels, labels)
        assert data.source == str(tmp_path / "t" / split)


def test_own_val_split_is_used_else_carved(tmp_path: Path) -> None:
    make_tree(tmp_path / "a", {"train": 10, "val": 2, "test": 1})
    s = load_splits("imagefolder", root=tmp_path / "a", val_fraction=0.5)
    assert (len(s.train), len(s.val), len(s.test)) == (30, 6, 3)
    make_tree(tmp_path / "b", {"train": 10, "test": 1})
    s = load_splits("imagefolder", root=tmp_path / "b", val_fraction=0.2)
    assert (len(s.train), len(s.val), len(s.test)) == (24, 6, 3)
    assert s.val.class_counts() == [2, 2, 2]
    make_tree(tmp_path / "c", {"train": 10})
    s = load_splits("imagefolder", root=tmp_path / "c")
    assert s.test is None and len(s.val) == 3


def test_grayscale_kept_and_channels_option(tmp_path: Path) -> None:
    make_tree(tmp_path / "g", {"train": 2}, channels=1)
    assert load_dataset("imagefolder", root=tmp_path / "g").images.shape == (6, 1, 8, 8)
    assert load_dataset("imagefolder", root=tmp_path / "g", channels=3).images.shape == (6, 3, 8, 8)
    make_tree(tmp_path / "c", {"train": 2})
    gray = load_dataset("imagefolder", root=tmp_path / "c", channels="1")
    assert gray.images.shape == (6, 1, 8, 8)


def test_jpeg_and_nested_and_hidden_files(tmp_path: Path) -> None:
    save_image(tmp_path / "t/train/a/x/deep.jpg", image_array(1, (16, 16)))
    save_image(tmp_path / "t/train/b/b.JPEG", image_array(2, (16, 16)))
    (tmp_path / "t/train/b/.DS_Store").write_bytes(b"junk")
    (tmp_path / "t/train/b/notes.txt").write_text("not an image")
    (tmp_path / "t/train/.hidden").mkdir()
    data = load_dataset("imagefolder", root=tmp_path / "t")
    assert (
        data.images.shape == (2, 3, 16, 16)
        and data.labels.tolist() == [0, 1]
        and data.classes == ("a", "b")
    )


def test_tiny_imagenet_layout(tmp_path: Path) -> None:
    root = tmp_path / "tiny-imagenet-200"
    arrays = {}
    for c, wnid in enumerate(("n01", "n02")):
        for i in range(3):
            save_image(
                root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG",
                image_array(10 * c + i, (8, 8)),
            )
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for i, wnid in enumerate(("n02", "n01", "n02")):
        arrays[i] = image_array(100 + i, (8, 8))
        save_image(root / "val" / "images" / f"val_{i}.png", arrays[i])
        lines.append(f"val_{i}.png\t{wnid}\t0\t0\t7\t7")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    save_image(root / "test" / "images" / "test_0.JPEG", image_array(7, (8, 8)))
    (root / "wnids.txt").write_text("n01\nn02\n")
    assert available_splits("imagefolder", root=tmp_path) == (
        "train",
        "val",
    )  # the tree is found one level down
    s = load_splits("imagefolder", root=root)
    assert len(s.train) == 6 and s.test is None and s.val.labels.tolist() == [1, 0, 1]
    assert torch.equal(s.val.images[0], torch.from_numpy(arrays[0]).permute(2, 0, 1))


def test_decoded_once_then_reused_until_the_tree_changes(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", {"train": 3})
    calls: list[tuple] = []
    first = load_dataset("imagefolder", root=tmp_path / "t", progress=lambda *a: calls.append(a))
    assert calls and calls[-1] == ("decode train", 9, 9)

    import cnnlab.data

    cnnlab.data.clear_cache()
    calls.clear()
    again = load_dataset("imagefolder", root=tmp_path / "t", progress=lambda *a: calls.append(a))
    assert calls == [] and torch.equal(again.images, first.images)

    path, _, _ = tree["train"][4]
    new = image_array(999)
    save_image(path, new)
    os.utime(path, ns=(1, 1))
    changed = load_dataset("imagefolder", root=tmp_path / "t", progress=lambda *a: calls.append(a))
    assert calls and torch.equal(changed.images[4], torch.from_numpy(new).permute(2, 0, 1))


def test_archive_root_is_extracted_once(tmp_path: Path, isolated_data: Path) -> None:
    make_tree(tmp_path / "src" / "mytree", {"train": 2, "test": 1})
    archive = tmp_path / "mytree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "mytree", arcname="mytree")
    s = load_splits("imagefolder", root=archive, val_fraction=0)
    assert len(s.train) == 6 and len(s.test) == 3 and s.val is None
    extracted = list((isolated_data / "extracted").iterdir())
    assert len(extracted) == 1 and s.train.source.startswith(str(extracted[0]))
    load_splits("imagefolder", root=archive, val_fraction=0)
    assert list((isolated_data / "extracted").iterdir()) == extracted


def test_relative_root_found_in_data_dir(tmp_path: Path) -> None:
    make_tree(tmp_path / "data" / "trees" / "t", {"train": 1})
    assert len(load_dataset("imagefolder", root="trees/t", data_dir=tmp_path / "data")) == 3


def test_resize_option(tmp_path: Path) -> None:
    save_image(tmp_path / "t/train/a/1.png", image_array(1, (8, 8)))
    save_image(tmp_path / "t/train/a/2.png", image_array(2, (12, 10)))
    data = load_dataset("imagefolder", root=tmp_path / "t", image_size="6x4")
    assert data.images.shape == (2, 3, 6, 4)


def _cli_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["data", "info", "imagefolder", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _cli_error(capsys)
    assert "data set 'imagefolder' needs root=...: the tree (folder with train/)" in err
    err = _cli_error(capsys, "--root", str(tmp_path / "missing"))
    assert f"image-folder root {tmp_path / 'missing'} does not exist" in err
    (tmp_path / "empty").mkdir()
    err = _cli_error(capsys, "--root", str(tmp_path / "empty"))
    assert (
        f"{tmp_path / 'empty'} is not an image-folder tree: expected train/<class>/<images>" in err
    )

    make_tree(tmp_path / "t", {"train": 2, "test": 1})
    err = _cli_error(capsys, "--root", str(tmp_path / "t"), "-o", "image_size=0")
    assert "image_size='0' is not allowed" in err
    err = _cli_error(capsys, "--root", str(tmp_path / "t"), "-o", "channels=2")
    assert "channels='2' is not allowed; choose 1 (grayscale) or 3 (RGB)" in err
    err = _cli_error(capsys, "--root", str(tmp_path / "t"), "-o", "colour=yes")
    assert (
        "data set 'imagefolder' has no option 'colour'; options: channels, image_size, root" in err
    )

    bad = tmp_path / "t/test/dog/broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    err = _cli_error(capsys, "--root", str(tmp_path / "t"))
    assert f"cannot decode image {bad}" in err

    bad.unlink()
    odd = save_image(tmp_path / "t/test/dog/odd.png", image_array(5, (9, 8)))
    err = _cli_error(capsys, "--root", str(tmp_path / "t"))
    assert f"{odd} is 9x8 but" in err and "pass image_size=HxW" in err

    odd.unlink()
    save_image(tmp_path / "t/test/horse/1.png", image_array(5))
    err = _cli_error(capsys, "--root", str(tmp_path / "t"))
    assert f"{tmp_path / 't/test/horse'} is not a class of this tree" in err


def test_cli_empty_class_folder_and_bad_annotations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "t/train/a").mkdir(parents=True)
    err = _cli_error(capsys, "--root", str(tmp_path / "t"))
    assert f"{tmp_path / 't/train'} holds no images" in err
    make_tree(tmp_path / "u", {"train": 1})
    (tmp_path / "u/val/images").mkdir(parents=True)
    (tmp_path / "u/val/val_annotations.txt").write_text("x.png\tzebra\n")
    err = _cli_error(capsys, "--root", str(tmp_path / "u"))
    assert "val_annotations.txt line 1: expected '<file>\\t<class>' with a class from train/" in err


def test_sixteen_bit_and_float_grayscale_are_scaled_not_clipped(tmp_path: Path) -> None:
    from PIL import Image

    make_tree(tmp_path / "d", {"train": 1}, classes=("a", "b"), size=(2, 4), channels=1)
    deep = np.array([[0, 1000, 30000, 65535]] * 2, dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "d" / "train" / "a" / "deep.png")  # mode I;16
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.25]] * 2, np.float32)).save(
        tmp_path / "d" / "train" / "b" / "float.tif"
    )
    data = load_dataset("imagefolder", root=tmp_path / "d")
    files = sorted((tmp_path / "d" / "train").rglob("*.*"))
    row = {f.name: data.images[i, 0, 0].tolist() for i, f in enumerate(files)}
    assert row["deep.png"] == [0, 4, 117, 255]  # v / 257; PIL's convert("L") clipped at 255
    assert row["float.tif"] == [0, 128, 255, 64]
    rgb = load_dataset("imagefolder", root=tmp_path / "d", channels=3)
    assert (
        rgb.images[files.index(tmp_path / "d" / "train" / "a" / "deep.png"), :, 0].tolist()
        == [[0, 4, 117, 255]] * 3
    )
    Image.fromarray(np.full((2, 4), 3.0, np.float32)).save(tmp_path / "d" / "train" / "b" / "x.tif")
    with pytest.raises(DataError, match=r"x.tif: a float image must hold values in \[0, 1\]"):
        load_dataset("imagefolder", root=tmp_path / "d")


def test_linked_sub_folders_are_followed_once_and_broken_links_named(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", {"train": 2}, classes=("a", "b"))
    extra = make_tree(tmp_path / "more", {"train": 1}, classes=("a",))
    os.symlink(tmp_path / "more" / "train" / "a", tmp_path / "t" / "train" / "a" / "linked")
    os.symlink(tmp_path / "t" / "train" / "b", tmp_path / "t" / "train" / "b" / "loop")  # a cycle
    data = load_dataset("imagefolder", root=tmp_path / "t")
    # 2 + 1 linked images of a; b's loop leads back to itself and is read once
    assert data.class_counts() == [3, 2]
    assert len(extra["train"]) == 1 and len(tree["train"]) == 4
    os.symlink(tmp_path / "nowhere.png", tmp_path / "t" / "train" / "a" / "dangling.png")
    with pytest.raises(DataError, match=r"cannot read image .*dangling.png: No such file"):
        load_dataset("imagefolder", root=tmp_path / "t")


def test_an_empty_class_folder_in_train_is_refused(tmp_path: Path) -> None:
    make_tree(tmp_path / "t", {"train": 2, "test": 1})
    (tmp_path / "t" / "test" / "zebra").mkdir()  # not a class of train/
    with pytest.raises(DataError, match="zebra is not a class"):
        load_dataset("imagefolder", "test", root=tmp_path / "t")
    (tmp_path / "t" / "test" / "zebra").rmdir()
    (tmp_path / "t" / "test" / "cat").joinpath("000.png").unlink()  # val/test may lack a class
    assert load_dataset("imagefolder", "test", root=tmp_path / "t").class_counts() == [0, 1, 1]
    (tmp_path / "t" / "train" / "zebra").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/zebra holds no images"):
        load_dataset("imagefolder", root=tmp_path / "t")
