"""cnnlab.report.render: the report's content, its self-containment, and partial studies."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from cnnlab.errors import StudyError
from cnnlab.report.render import write_report


def test_writes_every_output(report_paths: dict[str, Path]) -> None:
    assert set(report_paths) == {"markdown", "html", "csv", "figures"}
    for key in ("markdown", "html", "csv"):
        assert report_paths[key].stat().st_size > 0
    # Overview effects figure + a value plot and a curves plot per factor (4 factors).
    assert len(list(report_paths["figures"].glob("*.png"))) == 9


def test_markdown_tables_and_links(report_paths: dict[str, Path]) -> None:
    text = report_paths["markdown"].read_text()
    assert "## Factor: train.batch\\_size" in text
    # The write-up layout: rows loss / train acc / test acc, one column per value.
    assert "|  | 2 | 64 | 256 (base) | 1024 |" in text
    assert re.search(r"\| test acc \| 0\.\d{3} ± 0\.\d{3} \|", text)
    links = re.findall(r"!\[[^\]]*\]\(<([^>]+)>\)", text)
    assert len(links) == 9
    for link in links:
        assert (report_paths["markdown"].parent / link).is_file()


def test_notes_on_diverged_failed_pending_and_derived(report_paths: dict[str, Path]) -> None:
    text = report_paths["markdown"].read_text()
    notes = text.split("## Notes on runs")[1].split("## Environment")[0]
    assert "Diverged: optim.lr=1.7: 2 of 3 runs (at epochs 2, 3; lr 1.7)" in notes
    assert "RuntimeError: CUDA out of memory" in notes
    assert "No result yet for 1 run" in notes
    assert "Derived: train.epochs=2 was not trained separately" in notes
    assert "24 runs: 20 completed, 2 diverged, 1 failed, 1 pending or running" in text


def test_environment_and_spec(report_paths: dict[str, Path]) -> None:
    text = report_paths["markdown"].read_text()
    env = text.split("## Environment")[1].split("## Spec")[0]
    assert "| torch | 2.5.1 |" in env and "| device | cpu |" in env
    assert "metric: test_acc" in text.split("## Spec")[1]


def test_html_is_self_contained(report_paths: dict[str, Path], parse_page: type) -> None:
    page = parse_page(report_paths["html"].read_text())
    images = page.find("img")
    assert len(images) == 9
    for attrs in images:
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for _, attrs in page.tags:
        for name in ("src", "href", "action", "poster", "data"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value or value.startswith("data:"), (name, value[:60])
    assert not page.find("link") and not page.find("script") and not page.find("iframe")
    assert "Content-Security-Policy" in [a.get("http-equiv") for a in page.find("meta")]
    assert "Study report: mini-ablation" in page.text


def test_csv_has_every_run(report_paths: dict[str, Path]) -> None:
    lines = report_paths["csv"].read_text().splitlines()
    assert len(lines) == 1 + 24 and lines[0].startswith("key,study,variant,group")


def _copy_runs(study_dir: Path, dest: Path, prefixes: tuple[str, ...]) -> Path:
    """Part of the fixture study (the base plus some variants): fewer figures, faster tests."""
    for folder in (study_dir / "runs").iterdir():
        if folder.name.startswith(prefixes):
            shutil.copytree(folder, dest / "runs" / folder.name)
    return dest


def test_report_without_spec_reads_the_run_folders(study_dir: Path, tmp_path: Path) -> None:
    copy = _copy_runs(study_dir, tmp_path / "copy", ("base", "batch_size"))
    paths = write_report(copy)
    assert paths["html"].parent == copy / "report"
    text = paths["markdown"].read_text()
    assert "There is no spec.yaml" in text
    assert "|  | 2 | 64 | 256 (base) | 1024 |" in text  # base value from the runs' configs


def test_report_of_a_study_with_no_runs_yet(tmp_path: Path) -> None:
    study = tmp_path / "fresh"
    study.mkdir()
    spec = {"name": "fresh", "vary": {"optim.lr": [0.1, 0.5]}}
    (study / "spec.yaml").write_text(yaml.safe_dump(spec))
    text = write_report(study)["markdown"].read_text()
    assert "0 runs: 0 completed" in text and "No run folders yet" in text
    assert "Missing: optim.lr has no runs yet for 0.1, 0.5" in text


def test_report_with_broken_and_short_studies(study_dir: Path, tmp_path: Path) -> None:
    copy = _copy_runs(study_dir, tmp_path / "broken", ("base", "activation"))
    (copy / "runs" / "base0" / "summary.json").write_text("{not json")
    shutil.rmtree(copy / "runs" / "activationrelu-2")
    spec = yaml.safe_load((study_dir / "spec.yaml").read_text())
    spec["vary"] = {"model.activation": ["sigmoid", "relu", "tanh"]}
    (copy / "spec.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "09-old-factor-test_acc.png").write_bytes(b"stale")
    text = write_report(copy, out)["markdown"].read_text()
    assert "Failed: base repeat 0 (run base0): summary.json is unreadable" in text
    assert "Missing: model.activation has no runs yet for tanh" in text
    assert "Missing: model.activation=relu has 2 of 3 repeats on disk" in text
    # Figures of factors no longer in the study do not linger.
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "00-effects.png",
        "01-model-activation-curves.png",
        "01-model-activation-test_acc.png",
    ]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="does not exist"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match="not a study folder"):
        write_report(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "spec.yaml").write_text(json.dumps({"name": "x", "metric": "f1"}))
    with pytest.raises(StudyError, match="metric 'f1'"):
        write_report(bad)


def test_a_failed_report_leaves_the_previous_one_whole(
    study_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = _copy_runs(study_dir, tmp_path / "study", ("base", "activation"))
    shutil.copy(study_dir / "spec.yaml", copy / "spec.yaml")
    paths = write_report(copy)
    before = {p.name: p.read_bytes() for p in paths["figures"].iterdir()}
    texts = {k: paths[k].read_bytes() for k in ("markdown", "html", "csv")}

    def fail(*args: object, **kwargs: object) -> str:
        raise OSError(28, "No space left on device")

    # Half-way: the figures and the Markdown are built, the HTML cannot be written.
    monkeypatch.setattr("cnnlab.report.render.to_html", fail)
    with pytest.raises(StudyError, match="No space left on device"):
        write_report(copy)
    monkeypatch.undo()
    # A spec that no longer reads: the report fails before anything is drawn.
    spec = yaml.safe_load((copy / "spec.yaml").read_text())
    (copy / "spec.yaml").write_text(yaml.safe_dump({**spec, "metric": "f1"}))
    with pytest.raises(StudyError, match="metric 'f1'"):
        write_report(copy)
    assert {p.name: p.read_bytes() for p in paths["figures"].iterdir()} == before
    assert {k: paths[k].read_bytes() for k in ("markdown", "html", "csv")} == texts
    assert sorted(p.name for p in paths["markdown"].parent.iterdir()) == [
        "figures",
        "report.html",
        "report.md",
        "runs.csv",
    ]


def test_a_labelled_value_with_runs_is_not_called_missing(tmp_path: Path) -> None:
    from tests.report.conftest import BASE_CONFIG, write_run, write_spec

    study = tmp_path / "labelled"
    # spec.yaml as cnnlab writes it: plain values, their labels under `companions`.
    write_spec(
        study,
        {
            "name": "labelled",
            "base": {**BASE_CONFIG, "model": {**BASE_CONFIG["model"], "pool": "max"}},
            "vary": {"model.pool": ["max", "avg"], "optim.name": ["sgd", "adam"]},
            "companions": {"vary": {"model.pool": [None, {"label": "mean pool"}]}},
            "repeats": 2,
        },
    )
    for repeat in range(2):
        write_run(study, f"base{repeat}", repeat=repeat)
        write_run(
            study,
            f"avg{repeat}",
            variant="model.pool=mean pool",
            factors={"model.pool": "avg"},
            repeat=repeat,
        )
    notes = write_report(study)["markdown"].read_text().split("## Notes on runs")[1]
    assert "model.pool has no runs" not in notes
    assert "Missing: optim.name has no runs yet for adam." in notes


def test_small_nonzero_numbers_do_not_print_as_zero(tmp_path: Path) -> None:
    from tests.report.conftest import BASE_CONFIG, write_run, write_spec

    study = tmp_path / "close"
    write_spec(
        study,
        {"name": "close", "base": BASE_CONFIG, "vary": {"optim.lr": [0.9, 0.5]}, "repeats": 2},
    )
    for repeat, (base_acc, lr_acc, seconds) in enumerate(
        [(0.9, 0.9003, 10.0), (0.9002, 0.9005, 10.02)]
    ):
        final = {"train_acc": 0.95, "val_acc": 0.9, "train_seconds": seconds}
        write_run(study, f"b{repeat}", repeat=repeat, final={**final, "test_acc": base_acc})
        write_run(
            study,
            f"v{repeat}",
            variant="optim.lr=0.5",
            factors={"optim.lr": 0.5},
            repeat=repeat,
            final={**final, "test_acc": lr_acc},
        )
    text = write_report(study)["markdown"].read_text()
    # Difference 0.0003 and spreads of 0.00014 are not "+0.000" and "0.000".
    assert "| 0.5 | 2 | 0.900 ± 0.00014 | +0.0003 ± 0.001 | 0.168 |" in text
    assert "| test acc | 0.900 ± 0.00014 | 0.900 ± 0.00014 |" in text
    # Training times 10.00 and 10.02 s: std 0.014 s, not 0.0.
    assert "10.0 ± 0.014 (CI ±0.1)" in text
