"""Validation carved from train: stratified, seeded, disjoint; and the DataSplits it feeds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from cnnlab.cli import main
from cnnlab.data import load_dataset, load_splits
from cnnlab.data.splits import stratified_split
from cnnlab.data.stats import channel_stats
from cnnlab.errors import DataError

from ._factories import make_idx_dataset


def test_stratified_exact_per_class_and_disjoint() -> None:
    labels = torch.arange(1000) % 10
    labels[:50] = 3  # uneven classes
    train, val = stratified_split(labels, 0.1, seed=0)
    exact = torch.bincount(labels, minlength=10).double() * 0.1
    got = torch.bincount(labels[val], minlength=10)
    assert len(val) == 100 and ((got - exact).abs() < 1).all()
    assert len(set(train.tolist()) | set(val.tolist())) == 1000 and not set(train.tolist()) & set(
        val.tolist()
    )
    assert torch.equal(train, train.sort().values)


def test_tiny_classes_still_give_the_right_total() -> None:
    labels = torch.arange(40) % 10  # 4 per class: exact share 0.4 each
    train, val = stratified_split(labels, 0.1, seed=0)
    assert len(val) == 4 and len(set(labels[val].tolist())) == 4 and len(train) == 36
    many = torch.arange(6000) % 10
    assert torch.equal(many[stratified_split(many, 0.1)[1]].bincount(), torch.full((10,), 60))


def test_seed_fixes_the_split() -> None:
    labels = torch.arange(200) % 4
    a = stratified_split(labels, 0.25, seed=1)[1]
    assert torch.equal(a, stratified_split(labels, 0.25, seed=1)[1])
    assert not torch.equal(a, stratified_split(labels, 0.25, seed=2)[1])


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2])
def test_fraction_range(fraction: float) -> None:
    with pytest.raises(
        DataError, match=rf"val_fraction={fraction!r} is not allowed; use a number in \[0, 1\)"
    ):
        stratified_split(torch.zeros(4, dtype=torch.long), fraction)


def test_load_splits_carves_val_and_keeps_test(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path, n_train=100, n_test=20)
    s = load_splits("mnist", data_dir=tmp_path, verify=False, val_fraction=0.2, split_seed=3)
    full = load_dataset("mnist", data_dir=tmp_path, verify=False)
    assert (len(s.train), len(s.val), len(s.test)) == (80, 20, 20)
    assert s.val.split == "val" and s.test.split == "test" and s.val.class_counts() == [2] * 10
    assert (s.mean, s.std) == channel_stats(s.train.images)
    assert (
        s.name == "mnist"
        and s.num_classes == 10
        and s.in_channels == 1
        and s.image_size == (28, 28)
    )
    assert s.source == str(tmp_path)
    # train + val is exactly the original train split
    merged = torch.cat([s.train.images, s.val.images]).flatten(1)
    assert sorted(map(bytes, merged.numpy())) == sorted(map(bytes, full.images.flatten(1).numpy()))
    assert load_splits("mnist", data_dir=tmp_path, verify=False, val_fraction=0).val is None


def test_fingerprint_tracks_content(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path)
    a = load_splits("mnist", data_dir=tmp_path, verify=False)
    b = load_splits("mnist", data_dir=tmp_path, verify=False)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    assert (
        load_splits("mnist", data_dir=tmp_path, verify=False, split_seed=1).fingerprint
        != a.fingerprint
    )
    images = a.train.images.clone()
    images[0, 0, 0, 0] ^= 1
    changed = dataclasses.replace(a, train=dataclasses.replace(a.train, images=images))
    assert changed.fingerprint != a.fingerprint


def test_none_options_are_ignored_so_callers_can_pass_all(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path)
    assert len(load_splits("mnist", data_dir=str(tmp_path), verify=False, root=None).train) == 36


def test_cli_unknown_names_and_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert (
        "unknown data set 'imagenet'; available: cifar10, cifar100, fashion-mnist, imagefolder, mnist"
        in err
    )
    assert main(["data", "info", "mnist", "-o", "root=/x"]) == 2
    assert "data set 'mnist' has no option 'root'; options: none" in capsys.readouterr().err
    assert main(["data", "info", "mnist", "-o", "novalue"]) == 2
    assert "--option 'novalue' is not key=value" in capsys.readouterr().err
    make_idx_dataset(tmp_path)
    assert (
        main(
            [
                "data",
                "show",
                "mnist",
                "--data-dir",
                str(tmp_path),
                "--no-verify",
                "--split",
                "val",
                "--out",
                str(tmp_path / "g.png"),
            ]
        )
        == 2
    )
    assert "data set 'mnist' has no split 'val'; splits: train, test" in capsys.readouterr().err
