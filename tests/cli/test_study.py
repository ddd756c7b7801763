"""cnnlab study / recipes: bad input is one line and exit status 2, and changes nothing."""

from __future__ import annotations

import pytest

from cnnlab.cli import main


def _one_line_error(capsys, needle: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err, err


@pytest.mark.parametrize("command", ["status", "report"])
def test_a_damaged_spec_in_the_study_folder_is_one_line(tmp_path, capsys, command):
    study = tmp_path / "studies" / "c2"
    study.mkdir(parents=True)
    (study / "spec.yaml").write_text("base: [1,\n")
    assert main(["study", command, "c2", "--root", str(tmp_path / "studies")]) == 2
    _one_line_error(capsys, "spec.yaml line 2: not valid YAML")


def test_a_spec_that_is_not_utf8_text_is_one_line(tmp_path, capsys):
    spec = tmp_path / "binary.yaml"
    spec.write_bytes(b"\xff\xfebase: 1")
    assert main(["study", "run", str(spec), "--dry-run"]) == 2
    _one_line_error(capsys, "binary.yaml: not a UTF-8 text file (byte 0: b'\\xff')")
    assert main(["train", "--config", str(spec)]) == 2
    _one_line_error(capsys, "not a UTF-8 text file")


def test_a_dry_run_checks_the_device(tmp_path, capsys):
    args = ["recipes", "run", "lenet-ablation", "--quick", "--dry-run", "--device", "tpu"]
    assert main([*args, "--root", str(tmp_path)]) == 2
    _one_line_error(capsys, "--device 'tpu' is not allowed; use auto, cpu, cuda, cuda:N or mps")


def test_a_study_whose_runs_failed_for_good_exits_1_after_its_report_line(
    tmp_path, capsys, monkeypatch
):
    import yaml

    from cnnlab.studies import runner
    from tests.studies.conftest import FakeTrainer, tiny_spec

    run_study = runner.run_study
    trainer = FakeTrainer(fail={"optim.lr=0.1": 99})  # fails every retry
    monkeypatch.setattr(
        runner, "run_study", lambda spec, **kw: run_study(spec, run_fn=trainer, **kw)
    )
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec(name="s", repeats=1)))
    args = ["study", "run", str(spec), "--root", str(tmp_path / "studies"), "--workers", "1"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "report: cnnlab study report s" in captured.out
    assert "1 run(s) of study s failed after their retries; see: cnnlab study status s" in (
        captured.err
    )
    trainer.fail.clear()  # the cause fixed: a rerun gives the failed run a fresh budget
    assert main(args) == 0


def test_report_help_names_the_folder_the_report_goes_to(capsys):
    # It said "default: the study folder"; the report goes to STUDY/report (docs/report.md).
    assert main(["study", "report", "--help"]) == 0
    assert "output folder (default: STUDY/report)" in " ".join(capsys.readouterr().out.split())
