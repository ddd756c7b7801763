"""cnnlab.report.plots: every figure is a real, non-blank PNG, and the axis choices hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnlab.report import plots
from cnnlab.studies import stats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_real_png(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC
    pixels = mpimg.imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    # Not a blank canvas: a drawn figure has many distinct colours.
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20


@pytest.mark.parametrize(
    ("values", "log"),
    [
        ([2, 4, 8, 1024], True),  # batch sizes
        ([1e-4, 1e-3, 1e-2], True),  # lr over decades
        ([0.1, 0.5, 0.9, 1.7], False),  # lr on a linear range
        ([0, 1, 1000], False),  # zero cannot go on a log axis
        ([-1, 10, 1000], False),
        ([3, 4, 5], False),
    ],
)
def test_use_log_scale(values: list[float], log: bool) -> None:
    assert plots.use_log_scale(values) is log


def test_report_figures_are_real_pngs(report_paths: dict[str, Path]) -> None:
    """The report drew every kind: effects, numeric (log and linear), categorical, curves."""
    names = sorted(p.name for p in report_paths["figures"].glob("*.png"))
    assert names == [
        "00-effects.png",
        "01-optim-lr-curves.png",
        "01-optim-lr-test_acc.png",
        "02-train-batch-size-curves.png",
        "02-train-batch-size-test_acc.png",
        "03-model-activation-curves.png",
        "03-model-activation-test_acc.png",
        "04-train-epochs-curves.png",
        "04-train-epochs-test_acc.png",
    ]
    for name in names:
        _assert_real_png(report_paths["figures"] / name)


def test_factor_plot_when_a_value_only_diverged(study_dir: Path, tmp_path: Path) -> None:
    runs = stats.collect_runs(study_dir)
    runs.loc[runs["variant"] == "optim.lr=1.7", "status"] = "diverged"
    path = plots.plot_factor(runs, "optim.lr", "test_acc", tmp_path / "sub" / "lr.png")
    assert path == tmp_path / "sub" / "lr.png"
    _assert_real_png(path)


def test_effects_plot_with_nothing_to_compare(study_dir: Path, tmp_path: Path) -> None:
    runs = stats.collect_runs(study_dir)
    empty = stats.factor_effects(runs[runs["variant"] == "base"], "test_acc")
    assert plots.plot_effects(empty, "test_acc", tmp_path / "none.png").stat().st_size > 1000


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list:
    """The matplotlib Figures the plot functions save, to look at what they drew."""
    figures: list = []
    save = plots._save

    def keep(fig: object, path: Path) -> Path:
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_numeric_factor_plot_shows_every_value_and_no_bar_for_one_run(
    study_dir: Path, tmp_path: Path, drawn: list
) -> None:
    runs = stats.collect_runs(study_dir)
    runs.loc[runs["variant"] == "optim.lr=0.1", "status"] = "pending"
    plots.plot_factor(runs, "optim.lr", "test_acc", tmp_path / "lr.png")
    ax = drawn[-1].axes[0]
    # lr 1.7 has one completed run (two diverged): no ±std bar, which would claim no spread.
    segments = ax.containers[0].lines[2][0].get_segments()
    assert [float(s[0][0]) for s in segments if len(s)] == [0.9]
    # lr 0.1 has no completed run: it is still on the axis, and says so.
    low, high = ax.get_xlim()
    assert low < 0.1 and high > 1.7
    assert sorted(t.get_text() for t in ax.texts) == ["2 diverged", "no completed run"]


def test_categorical_factor_plot_draws_no_zero_bar_for_a_value_without_runs(
    study_dir: Path, tmp_path: Path, drawn: list
) -> None:
    from matplotlib.container import BarContainer

    runs = stats.collect_runs(study_dir)
    runs.loc[runs["variant"] == "model.activation=relu", "status"] = "pending"
    plots.plot_factor(runs, "model.activation", "test_acc", tmp_path / "act.png")
    ax = drawn[-1].axes[0]
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    heights = [p.get_height() for p in bars.patches]
    assert heights[0] == pytest.approx(0.8, abs=0.02) and np.isnan(heights[1])
    assert [t.get_text() for t in ax.texts] == ["no completed run"]


def test_factor_plot_with_no_completed_run(study_dir: Path, tmp_path: Path, drawn: list) -> None:
    runs = stats.collect_runs(study_dir)
    runs["status"] = "diverged"
    plots.plot_factor(runs, "train.batch_size", "test_acc", tmp_path / "bs.png")
    ax = drawn[-1].axes[0]
    low, high = ax.get_xlim()
    assert low < 2 and high > 1024
    assert "no completed runs yet" in [t.get_text() for t in ax.texts]
    assert [t.get_text() for t in ax.texts].count("3 diverged") == 4


def test_effects_plot_draws_no_ci_bar_where_there_is_no_test(
    study_dir: Path, tmp_path: Path, drawn: list
) -> None:
    effects = stats.factor_effects(stats.collect_runs(study_dir), "test_acc")
    plots.plot_effects(effects, "test_acc", tmp_path / "effects.png")
    ax = drawn[-1].axes[0]
    shown = effects[~effects["is_base"] & effects["diff"].notna()]
    tested = shown["diff_ci95"].notna()
    assert 0 < tested.sum() < len(shown)  # lr 1.7 has one completed run: no test
    from matplotlib.container import ErrorbarContainer

    (bars,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    segments = [s for s in bars.lines[2][0].get_segments() if len(s)]
    assert len(segments) == tested.sum()
    assert all(abs(s[1][0] - s[0][0]) > 0 for s in segments)


def test_a_label_with_newlines_is_drawn_on_one_line(
    study_dir: Path, tmp_path: Path, drawn: list
) -> None:
    import warnings

    runs = stats.collect_runs(study_dir)
    relu = runs["variant"] == "model.activation=relu"
    runs.loc[relu, "variant"] = "model.activation=re\r\nlu $x$"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Glyph 13 missing from font"
        plots.plot_factor(runs, "model.activation", "test_acc", tmp_path / "act.png")
    ticks = [t.get_text() for t in drawn[-1].axes[0].get_xticklabels()]
    assert ticks == ["sigmoid", r"re lu \$x\$"]


def test_curves_plot_with_no_completed_run_says_so(
    study_dir: Path, tmp_path: Path, drawn: list
) -> None:
    runs = stats.collect_runs(study_dir)
    runs["status"] = "diverged"
    plots.plot_curves(runs, stats.curves(study_dir), "optim.lr", tmp_path / "curves.png")
    for ax in drawn[-1].axes:
        assert [t.get_text() for t in ax.texts] == ["no completed runs yet"]


def test_grid_points_are_told_apart_on_the_axis_and_in_the_legend(
    tmp_path: Path, drawn: list
) -> None:
    from tests.report.conftest import BASE_CONFIG, write_run, write_spec

    study = tmp_path / "grid"
    grid = {"model.activation": ["sigmoid", "relu"], "model.pool": ["avg", "max"]}
    base = {**BASE_CONFIG, "model": {**BASE_CONFIG["model"], "pool": "avg"}}
    write_spec(study, {"name": "grid", "base": base, "grid": grid, "repeats": 1})
    write_run(study, "base", epochs=1)
    points = [("sigmoid", "max"), ("relu", "avg"), ("relu", "max")]
    for activation, pool in points:
        write_run(
            study,
            f"{activation}-{pool}",
            variant=f"model.activation={activation},model.pool={pool}",
            factors={"model.activation": activation, "model.pool": pool},
            epochs=1,
        )
    runs = stats.collect_runs(study)
    (factor,) = stats.factor_names(runs)
    plots.plot_factor(runs, factor, "test_acc", tmp_path / "grid.png")
    ticks = [t.get_text() for t in drawn[-1].axes[0].get_xticklabels()]
    assert ticks == ["base", "sigmoid, max", "relu, avg", "relu, max"]
    plots.plot_curves(runs, stats.curves(study), factor, tmp_path / "curves.png")
    axes = drawn[-1].axes
    legend = [t.get_text() for t in axes[-1].get_legend().get_texts()]
    assert legend == ["base", "sigmoid, max", "relu, avg", "relu, max"]
    # One epoch: each curve is a visible point, on an axis that reads "1".
    assert all(line.get_marker() == "o" for line in axes[0].get_lines())
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["1"]


def test_effects_plot_tells_grid_points_apart(tmp_path: Path, drawn: list) -> None:
    import pandas as pd

    group = "model.activation × model.pool"
    effects = pd.DataFrame(
        {
            "factor": [group, group, group, "optim.lr"],
            "level": [
                "model.activation=sigmoid,model.pool=max",
                "model.activation=relu,model.pool=avg",
                "best",
                "0.1",
            ],
            "is_base": False,
            "diff": [0.01, -0.02, 0.03, 0.04],
            "diff_ci95": 0.01,
        }
    )
    plots.plot_effects(effects, "test_acc", tmp_path / "effects.png")
    labels = [t.get_text() for t in drawn[-1].axes[0].get_yticklabels()]
    assert labels == [
        "activation=sigmoid,pool=max",
        "activation=relu,pool=avg",
        "best",
        "optim.lr = 0.1",
    ]
