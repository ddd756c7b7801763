"""Smoke test: benchmarks/study_speed.py runs a recipe's quick form end to end (tiny generated data)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from tests.engine.synthetic import make_splits

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_study_speed_quick_writes_one_row_per_fuse_setting(tmp_path, monkeypatch, capsys):
    splits = make_splits(n_train=256, n_val=32, n_test=32)
    monkeypatch.setattr("cnnlab.data.load_splits", lambda *args, **kwargs: splits)
    monkeypatch.syspath_prepend(str(BENCH))
    study_speed = importlib.import_module("study_speed")
    args = ["--quick", "--device", "cpu", "--workers", "1", "--threads", "1"]
    # batch 8: the CPU fuses such small steps, so the auto row trains real groups
    overrides = ["data.subset=32", "data.test_subset=32", "train.batch_size=8"]
    args += [a for o in overrides for a in ("--override", o)]
    try:
        assert study_speed.main([*args, "--out", str(tmp_path / "out")]) == 0
    finally:
        sys.modules.pop("study_speed", None)
    result = json.loads((tmp_path / "out" / "study_speed.json").read_text())
    rows = result["rows"]
    assert [(r["fuse"], r["device"], r["workers"]) for r in rows] == [
        ("auto", "cpu", 1),
        ("off", "cpu", 1),
    ]
    for row in rows:
        assert row["recipe"] == "lenet-ablation (quick)" and row["failed"] == 0
        assert row["runs"] >= row["trained"] > 0 and row["wall_seconds"] > 0
        assert 0 <= row["test_acc"] <= 1
    # the same study either way: the same runs, the same results up to float rounding
    assert rows[0]["runs"] == rows[1]["runs"] and rows[0]["trained"] == rows[1]["trained"]
    assert abs(rows[0]["test_acc"] - rows[1]["test_acc"]) < 0.02
    table = (tmp_path / "out" / "study_speed.md").read_text()
    assert "| lenet-ablation (quick) | cpu | auto | 1 |" in table
    assert "| recipe | device | fuse | workers | runs |" in capsys.readouterr().out
