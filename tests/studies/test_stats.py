"""cnnlab.studies.stats: reading run folders and the numbers of the report.

Every statistic is checked against an independent computation (numpy, or scipy
called directly) on samples drawn from a seeded RNG.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from cnnlab.errors import StudyError
from cnnlab.studies import stats

SPEC = {
    "name": "s",
    "base": {
        "optim": {"lr": 0.9},
        "train": {"batch_size": 256},
        "model": {"activation": "sigmoid"},
    },
    "vary": {"train.batch_size": [1024, 2, 64], "model.activation": ["sigmoid", "relu"]},
    "repeats": 4,
}


def _write_run(
    study: Path, key: str, variant: str, factors: dict[str, Any], repeat: int, **summary: Any
) -> Path:
    """A run folder; ``summary=None`` leaves summary.json out (pending)."""
    folder = study / "runs" / key
    folder.mkdir(parents=True)
    meta = {
        "study": "s",
        "key": key,
        "variant": variant,
        "factors": factors,
        "factor": next(iter(factors)) if len(factors) == 1 else None,
        "repeat": repeat,
        "seed": repeat,
        "derived_from": summary.pop("derived_from", None),
    }
    (folder / "study.json").write_text(json.dumps(meta))
    if summary.pop("pending", False):
        return folder
    final = {k: summary.pop(k, None) for k in stats.FINAL_KEYS}
    body = {
        "name": f"run-{key}",
        "status": summary.pop("status", "completed"),
        "final": final,
        "best": {"val_acc": summary.pop("best_val_acc", final["val_acc"]), "epoch": 3},
        "time": {
            "train_seconds": summary.pop("train_seconds", 5.0),
            "total_seconds": 6.0,
            "examples_per_sec": 1e4,
        },
        "epochs_completed": 3,
        "diverged": summary.pop("diverged", None),
        "error": summary.pop("error", None),
        "device": "cpu",
        "versions": {"torch": "2.5.1"},
        "config": summary.pop("config", {"optim": {"lr": 0.9}, "train": {"batch_size": 256}}),
    }
    assert not summary, summary
    (folder / "summary.json").write_text(json.dumps(body))
    return folder


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Base, three batch sizes and one activation; 4 repeats; returns the test_acc samples."""
    root = tmp_path / "s"
    root.mkdir()
    (root / "spec.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    rng = np.random.default_rng(42)
    means = {
        "base": 0.80,
        "train.batch_size=2": 0.60,
        "train.batch_size=64": 0.84,
        "train.batch_size=1024": 0.75,
    }
    means["model.activation=relu"] = 0.86
    samples: dict[str, np.ndarray] = {}
    for variant, mean in means.items():
        factors = (
            {}
            if variant == "base"
            else {variant.split("=")[0]: yaml.safe_load(variant.split("=")[1])}
        )
        acc = mean + rng.normal(0, 0.02, size=4)
        samples[variant] = acc
        for r in range(4):
            _write_run(
                root,
                f"{variant.replace('=', '-')}-{r}",
                variant,
                factors,
                r,
                test_acc=float(acc[r]),
                train_acc=float(acc[r] + 0.05),
                train_loss=float(1 - acc[r]),
                val_acc=float(acc[r] - 0.01),
            )
    return root, samples


# --------------------------------------------------------------------------- summaries and tests


def test_summarize_matches_numpy_and_student_t() -> None:
    sample = np.random.default_rng(0).normal(0.8, 0.03, size=7)
    s = stats.summarize(list(sample) + [math.nan])  # NaN = a run without the metric
    assert s.n == 7
    assert s.mean == pytest.approx(np.mean(sample))
    assert s.std == pytest.approx(np.std(sample, ddof=1))
    low, high = sps.t.interval(0.95, 6, loc=np.mean(sample), scale=sps.sem(sample))
    assert s.ci95 == pytest.approx((high - low) / 2)


def test_summarize_small_samples() -> None:
    one = stats.summarize([0.5])
    assert (one.n, one.mean) == (1, 0.5) and math.isnan(one.std) and math.isnan(one.ci95)
    empty = stats.summarize([])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_welch_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.85, 0.01, size=5), rng.normal(0.80, 0.03, size=8)
    p, ci, note = stats.welch(a, b)
    result = sps.ttest_ind(a, b, equal_var=False)
    assert p == pytest.approx(result.pvalue)
    interval = result.confidence_interval(0.95)
    assert ci == pytest.approx((interval.high - interval.low) / 2)
    assert note == ""


@pytest.mark.parametrize(
    ("a", "b", "note"),
    [
        ([0.9], [0.8, 0.81], "n<2"),
        ([0.9, 0.9], [0.8, 0.8], "zero variance"),
        # np.var of these is ~1e-32, not 0: still no test, not p ~ 1e-16.
        ([0.9] * 3, [0.8] * 3, "zero variance"),
        ([0.1] * 5, [0.1] * 3, "zero variance"),
        ([], [0.8, 0.7], "n<2"),
    ],
)
def test_welch_degenerate_gives_nan_and_a_note_without_warnings(
    a: list, b: list, note: str
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p, ci, text = stats.welch(a, b)
    assert math.isnan(p) and math.isnan(ci)
    assert note in text


def test_higher_is_better() -> None:
    assert stats.higher_is_better("test_acc") and not stats.higher_is_better("train_loss")
    assert not stats.higher_is_better("train_seconds")


# --------------------------------------------------------------------------- reading


def test_collect_runs_reads_fields_and_resolves_factor_values(study: tuple[Path, dict]) -> None:
    root, samples = study
    runs = stats.collect_runs(root)
    assert len(runs) == 20
    row = runs[runs["key"] == "train.batch_size-2-3"].iloc[0]
    assert row["variant"] == "train.batch_size=2" and row["group"] == "train.batch_size"
    assert (
        row["status"] == "completed"
        and row["repeat"] == 3
        and row["run_name"] == "run-train.batch_size-2-3"
    )
    assert row["test_acc"] == pytest.approx(samples["train.batch_size=2"][3])
    # The factor's own value, the resolved config's value, and the spec's base value.
    assert row[stats.value_column("train.batch_size")] == 2
    base = runs[runs["variant"] == "base"].iloc[0]
    assert base["group"] == "base" and base[stats.value_column("train.batch_size")] == 256
    assert base[stats.value_column("model.activation")] == "sigmoid"  # only in the spec's base
    assert runs["versions"].iloc[0] == {"torch": "2.5.1"}


def test_collect_runs_marks_pending_and_unreadable(tmp_path: Path) -> None:
    _write_run(tmp_path, "p", "base", {}, 0, pending=True)
    broken = _write_run(tmp_path, "b", "base", {}, 1, test_acc=0.5)
    (broken / "summary.json").write_text('{"status": "compl')
    (tmp_path / "runs" / "stray").mkdir()
    runs = stats.collect_runs(tmp_path).set_index("key")
    assert runs.loc["p", "status"] == "pending"
    assert runs.loc["b", "status"] == "unreadable" and "summary.json" in runs.loc["b", "error"]
    assert (
        runs.loc["stray", "status"] == "unreadable" and "study.json" in runs.loc["stray", "error"]
    )


def test_collect_runs_errors(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="does not exist"):
        stats.collect_runs(tmp_path / "nope")
    (tmp_path / "spec.yaml").write_text("- a list\n")
    with pytest.raises(StudyError, match="expected a mapping"):
        stats.collect_runs(tmp_path)
    (tmp_path / "spec.yaml").write_text("name: [unclosed\n")
    with pytest.raises(StudyError, match="cannot read the study spec"):
        stats.collect_runs(tmp_path)


def test_collect_runs_without_runs_is_empty_with_columns(tmp_path: Path) -> None:
    runs = stats.collect_runs(tmp_path)
    assert runs.empty and set(stats.RUN_COLUMNS) <= set(runs.columns)
    assert stats.variant_table(runs).empty and stats.factor_effects(runs).empty


def test_curves_long_frame(tmp_path: Path) -> None:
    folder = _write_run(tmp_path, "k", "base", {}, 0, test_acc=0.5)
    (folder / "metrics.csv").write_text(
        "epoch,train_loss,train_acc,val_loss,val_acc,test_loss,test_acc,lr,examples_per_sec,seconds\n"
        "1,2.0,0.3,2.1,0.3,,,0.9,100,1\n2,1.0,0.6,1.1,0.55,,,0.9,100,1\n"
    )
    (_write_run(tmp_path, "bad", "base", {}, 1) / "metrics.csv").write_text(
        'epoch,train_loss\n"1,2\n'
    )
    frame = stats.curves(tmp_path)
    assert list(frame["epoch"]) == [1, 2] and set(frame["key"]) == {"k"}
    assert list(frame["train_loss"]) == [2.0, 1.0] and frame["test_acc"].isna().all()


# --------------------------------------------------------------------------- tables


def test_variant_table_numbers_and_order(study: tuple[Path, dict]) -> None:
    root, samples = study
    table = stats.variant_table(stats.collect_runs(root), metrics=("test_acc", "train_loss"))
    # Base first, then the spec's factor order and value order.
    assert list(table["variant"]) == [
        "base",
        "train.batch_size=1024",
        "train.batch_size=2",
        "train.batch_size=64",
        "model.activation=relu",
    ]
    row = table.set_index("variant").loc["train.batch_size=64"]
    x = samples["train.batch_size=64"]
    assert row["n"] == 4 and row["n_diverged"] == 0
    assert row["test_acc_mean"] == pytest.approx(x.mean())
    assert row["test_acc_std"] == pytest.approx(x.std(ddof=1))
    assert row["test_acc_ci95"] == pytest.approx(sps.t.ppf(0.975, 3) * x.std(ddof=1) / 2)
    assert row["train_loss_mean"] == pytest.approx(np.mean(1 - x))


def test_variant_table_counts_diverged_and_failed_apart(tmp_path: Path) -> None:
    _write_run(tmp_path, "a", "base", {}, 0, test_acc=0.8)
    _write_run(tmp_path, "b", "base", {}, 1, test_acc=0.6)
    _write_run(tmp_path, "c", "base", {}, 2, test_acc=0.1, status="diverged")
    _write_run(tmp_path, "d", "base", {}, 3, status="failed", error="boom")
    _write_run(tmp_path, "e", "base", {}, 4, pending=True)
    row = stats.variant_table(stats.collect_runs(tmp_path)).iloc[0]
    assert (row["n"], row["n_diverged"], row["n_failed"], row["n_pending"]) == (2, 1, 1, 1)
    assert row["test_acc_mean"] == pytest.approx(0.7)  # the diverged 0.1 is not averaged


def test_factor_effects_against_scipy(study: tuple[Path, dict]) -> None:
    root, samples = study
    effects = stats.factor_effects(stats.collect_runs(root), "test_acc")
    batch = effects[effects["factor"] == "train.batch_size"]
    assert list(batch["level"]) == ["2", "64", "256", "1024"]  # numbers ascending, base included
    row = batch.set_index("level").loc["64"]
    x, base = samples["train.batch_size=64"], samples["base"]
    assert row["diff"] == pytest.approx(x.mean() - base.mean())
    assert row["p_value"] == pytest.approx(sps.ttest_ind(x, base, equal_var=False).pvalue)
    base_row = batch.set_index("level").loc["256"]
    assert base_row["is_base"] and base_row["note"] == "base" and math.isnan(base_row["p_value"])
    expected_best = max(["base", "train.batch_size=2", "train.batch_size=64", "train.batch_size=1024"],
                        key=lambda v: samples[v].mean())  # fmt: skip
    assert batch.loc[batch["best"], "variant"].tolist() == [expected_best]
    act = effects[effects["factor"] == "model.activation"]
    assert list(act["level"]) == ["sigmoid", "relu"]  # categorical: base first, then spec order


def test_best_avoids_values_that_diverged_and_minimizes_losses(tmp_path: Path) -> None:
    for r, (good, risky) in enumerate([(0.80, 0.95), (0.82, 0.96)]):
        _write_run(tmp_path, f"b{r}", "base", {}, r, test_acc=good, train_loss=0.5 + r / 10)
        _write_run(
            tmp_path, f"r{r}", "optim.lr=2", {"optim.lr": 2}, r, test_acc=risky, train_loss=0.2
        )
    _write_run(tmp_path, "r2", "optim.lr=2", {"optim.lr": 2}, 2, status="diverged")
    runs = stats.collect_runs(tmp_path)
    effects = stats.factor_effects(runs, "test_acc")
    assert effects.loc[effects["best"], "variant"].tolist() == ["base"]
    assert stats.best_values(effects) == {"optim.lr": 0.9}  # from the base's resolved config
    assert type(stats.best_values(effects)["optim.lr"]) is float
    losses = stats.factor_effects(runs[runs["status"] != "diverged"], "train_loss")
    assert losses.loc[losses["best"], "variant"].tolist() == ["optim.lr=2"]


def test_factor_effects_without_base_runs(tmp_path: Path) -> None:
    for r in range(2):
        _write_run(tmp_path, f"x{r}", "optim.lr=2", {"optim.lr": 2}, r, test_acc=0.5 + r / 10)
    row = stats.factor_effects(stats.collect_runs(tmp_path)).iloc[0]
    assert row["note"] == "no completed base runs" and math.isnan(row["diff"])
    _write_run(tmp_path, "b0", "base", {}, 0, test_acc=0.7)  # completed, but no val_acc
    rows = stats.factor_effects(stats.collect_runs(tmp_path), "val_acc")
    assert rows.loc[~rows["is_base"], "note"].tolist() == ["no base run recorded val_acc"]


def test_n_counts_the_runs_the_mean_and_test_use(tmp_path: Path) -> None:
    for r, acc in enumerate((0.80, 0.82, 0.81)):
        _write_run(tmp_path, f"b{r}", "base", {}, r, test_acc=acc)
    for r, acc in enumerate((0.90, None, 0.92)):  # one completed run without test_acc
        _write_run(tmp_path, f"x{r}", "optim.lr=2", {"optim.lr": 2}, r, test_acc=acc)
    row = stats.factor_effects(stats.collect_runs(tmp_path)).set_index("level").loc["2"]
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.91)
    expected = sps.ttest_ind([0.90, 0.92], [0.80, 0.82, 0.81], equal_var=False).pvalue
    assert row["p_value"] == pytest.approx(expected)


def test_wide_table_layout(study: tuple[Path, dict]) -> None:
    root, samples = study
    table = stats.wide_table(stats.collect_runs(root), "train.batch_size", include_n=True)
    assert list(table.index) == ["loss", "train acc", "test acc", "n"]
    assert list(table.columns) == ["2", "64", "256 (base)", "1024"]
    x = samples["train.batch_size=1024"]
    assert table.loc["test acc", "1024"] == f"{x.mean():.3f} ± {x.std(ddof=1):.3f}"
    assert table.loc["loss", "1024"] == f"{np.mean(1 - x):.3f} ± {np.std(1 - x, ddof=1):.3f}"
    assert table.loc["n", "2"] == "4"


def test_wide_table_counts_and_single_runs(tmp_path: Path) -> None:
    _write_run(tmp_path, "b", "base", {}, 0, test_acc=0.81234, train_acc=0.9, train_loss=0.3)
    _write_run(tmp_path, "d", "optim.lr=2", {"optim.lr": 2}, 0, status="diverged")
    table = stats.wide_table(stats.collect_runs(tmp_path), "optim.lr", include_n=True)
    assert table.loc["test acc", "0.9 (base)"] == "0.812"
    assert table.loc["test acc", "2"] == "–" and table.loc["n", "2"] == "0 (+1 diverged)"


def test_long_csv_round_trip(study: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = study
    runs = stats.collect_runs(root)
    path = stats.long_csv(runs, tmp_path / "out" / "runs.csv")
    back = pd.read_csv(path)
    assert len(back) == len(runs) and "group_rank" not in back.columns
    assert back["test_acc"].to_numpy() == pytest.approx(runs["test_acc"].to_numpy())
    factors = back.set_index("key").loc["train.batch_size-64-0", "factors"]
    assert json.loads(factors) == {"train.batch_size": 64}


def test_format_value_and_resolve_metric() -> None:
    assert [stats.format_value(v) for v in (1.0, 0.1, 256, True, None, [2, 2], "relu")] == [
        "1", "0.1", "256", "true", "none", "[2, 2]", "relu",
    ]  # fmt: skip
    assert stats.resolve_metric("best.val_acc") == "best_val_acc"
    assert stats.resolve_metric("final.test_acc") == "test_acc"
    with pytest.raises(StudyError, match="metric 'f1'"):
        stats.resolve_metric("f1")


def test_grid_points_form_one_group_labelled_by_variant(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for r in range(3):
        _write_run(tmp_path, f"b{r}", "base", {}, r, test_acc=float(0.8 + rng.normal(0, 0.01)))
        for lr, wd in ((0.1, 0.0), (0.1, 0.01)):
            label = f"optim.lr={lr},optim.weight_decay={wd}"
            factors = {"optim.lr": lr, "optim.weight_decay": wd}
            _write_run(
                tmp_path,
                f"g{lr}-{wd}-{r}",
                label,
                factors,
                r,
                test_acc=float(0.7 + wd + rng.normal(0, 0.01)),
            )
    runs = stats.collect_runs(tmp_path)
    assert stats.factor_names(runs) == ["optim.lr × optim.weight_decay"]
    effects = stats.factor_effects(runs)
    assert list(effects["level"]) == [
        "base",
        "optim.lr=0.1,optim.weight_decay=0.0",
        "optim.lr=0.1,optim.weight_decay=0.01",
    ]
    assert effects["p_value"].iloc[1:].notna().all()
    assert stats.best_values(effects) == {}  # a combination is not one key's value
    table = stats.wide_table(runs, "optim.lr × optim.weight_decay")
    assert list(table.columns) == ["base", *effects["level"].iloc[1:]]


def _write_plans(root: Path, data: dict[str, Any], acc: dict[str, list[float]]) -> None:
    """Run folders as a real study writes them: ``study.json`` from :func:`expand`'s plans."""
    from cnnlab.studies.spec import expand, spec_from_dict
    from tests.studies.conftest import tiny_spec

    spec = spec_from_dict(tiny_spec(**data))
    (root / "spec.yaml").write_text(yaml.safe_dump(spec.to_yaml_dict()))
    for plan in expand(spec):
        folder = _write_run(root, plan.key, plan.variant, {}, plan.repeat)
        (folder / "study.json").write_text(json.dumps(plan.meta()))
        summary = json.loads((folder / "summary.json").read_text())
        summary["final"]["test_acc"] = acc[plan.variant][plan.repeat]
        (folder / "summary.json").write_text(json.dumps(summary))


def test_grid_points_that_differ_from_the_base_in_one_key_stay_in_the_grid(tmp_path: Path) -> None:
    grid = {"model.activation": ["sigmoid", "relu"], "model.pool": ["avg", "max"]}
    # (sigmoid, avg) is the base; the others in the grid's cartesian order.
    points = ["model.activation=sigmoid,model.pool=max", "model.activation=relu,model.pool=avg"]
    points.append("model.activation=relu,model.pool=max")
    acc = {v: [0.8 + i / 100, 0.81 + i / 100] for i, v in enumerate(["base", *points])}
    _write_plans(tmp_path, {"vary": {}, "grid": grid, "repeats": 2}, acc)
    runs = stats.collect_runs(tmp_path)
    assert stats.factor_names(runs) == ["model.activation × model.pool"]
    effects = stats.factor_effects(runs)
    assert list(effects["level"]) == ["base", *points]
    assert effects["n"].tolist() == [2, 2, 2, 2]


def test_equal_values_with_different_companions_are_separate_levels(tmp_path: Path) -> None:
    vary = {
        "optim.name": [
            {"value": "adam", "with": {"optim.lr": 0.001}, "label": "adam-1e-3"},
            {"value": "adam", "with": {"optim.lr": 0.1}, "label": "adam-0.1"},
            {"value": "sgd", "with": {"optim.momentum": 0.9}, "label": "sgd-momentum"},
        ]
    }
    acc = {
        "base": [0.80, 0.81, 0.79],
        "optim.name=adam-1e-3": [0.88, 0.89, 0.87],
        "optim.name=adam-0.1": [0.30, 0.31, 0.29],
        "optim.name=sgd-momentum": [0.85, 0.86, 0.84],
    }
    _write_plans(tmp_path, {"vary": vary, "repeats": 3}, acc)
    effects = stats.factor_effects(stats.collect_runs(tmp_path)).set_index("level")
    assert sorted(effects.index) == ["adam-0.1", "adam-1e-3", "sgd", "sgd-momentum"]
    assert effects.loc["sgd", "note"] == "base" and effects.loc["sgd", "n"] == 3
    assert effects.loc["adam-1e-3", "mean"] == pytest.approx(0.88)
    assert effects.loc["adam-1e-3", "best"] and effects["best"].sum() == 1
    assert effects.loc["sgd-momentum", "diff"] == pytest.approx(0.05)


def test_format_value_of_numpy_scalars() -> None:
    assert stats.format_value(np.bool_(True)) == "true"
    assert (
        stats.format_value(np.int64(256)) == "256" and stats.format_value(np.float64(0.5)) == "0.5"
    )


def test_equal_means_make_the_base_best_then_the_first_listed_value(tmp_path: Path) -> None:
    # A model that predicts one class scores the same at every value: no value beats the base,
    # and `study combine` (base first, then spec order) keeps the base.
    spec = {**SPEC, "vary": {"train.batch_size": [1024, 2, 64]}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    for r, acc in enumerate([0.1, 0.12]):
        _write_run(tmp_path, f"b{r}", "base", {}, r, test_acc=acc)
        for size in (1024, 2):
            factors = {"train.batch_size": size}
            _write_run(
                tmp_path, f"s{size}-{r}", f"train.batch_size={size}", factors, r, test_acc=acc
            )
    effects = stats.factor_effects(stats.collect_runs(tmp_path), "test_acc")
    assert effects.loc[effects["best"], "variant"].tolist() == ["base"]
    assert stats.best_values(effects) == {"train.batch_size": 256}
    no_base = stats.collect_runs(tmp_path)
    no_base = no_base[no_base["variant"] != "base"]
    effects = stats.factor_effects(no_base, "test_acc")
    assert effects.loc[effects["best"], "variant"].tolist() == ["train.batch_size=1024"]
