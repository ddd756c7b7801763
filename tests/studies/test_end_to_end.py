"""Real training: kill-and-rerun, two workers on one SQLite store, curves-derived epochs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from cnnlab.cli import main
from cnnlab.engine.run import read_metrics
from cnnlab.studies.folder import StudyFolder, read_summary
from cnnlab.studies.runner import open_queue, run_study, study_status
from cnnlab.studies.spec import expand, spec_from_dict, trained_plans
from tests.studies.conftest import tiny_spec

pytestmark = pytest.mark.usefixtures("fashion_mnist")

FINAL = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
        **kw,
    )


def _write_spec(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _trained_since(root: Path, t: float) -> bool:
    runs = list((root).glob("*/runs/*/*"))
    return any(p.stat().st_mtime > t for p in runs if p.exists())


def _kill_at_random_moments(args, root: Path, rng: random.Random, latest: float) -> int:
    """Start the study up to three times, SIGKILL it at a random moment while it trains; the kills."""
    kills = 0
    for _ in range(3):
        started = time.time()
        proc = _cli(*args)
        # Kill while this process trains (not while it imports torch): at a random
        # moment after it last wrote into a run folder.
        while (
            proc.poll() is None
            and not _trained_since(root, started)
            and time.time() - started < 120
        ):
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, latest))
        if proc.poll() is not None:
            proc.communicate()
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills += 1
    return kills


def _check_complete(
    root: Path, spec, *, epochs_of=lambda p: p.config.train.epochs
) -> dict[str, dict]:
    """Every planned run finished exactly once: one folder per key, whole curves, one result in the store."""
    folder = StudyFolder.at(root, spec.name)
    plans = expand(spec)
    assert folder.run_keys() == sorted(p.key for p in plans)
    summaries = {}
    for p in plans:
        run_dir = folder.run_dir(p.key)
        summary = read_summary(run_dir)
        assert summary["status"] == "completed", (p.variant, summary.get("error"))
        epochs = [int(r["epoch"]) for r in read_metrics(run_dir / "metrics.csv")]
        assert epochs == list(range(1, epochs_of(p) + 1)), (p.variant, epochs)
        assert json.loads((run_dir / "study.json").read_text()) == p.meta()
        summaries[p.key] = summary
    queue = open_queue(spec, folder, None, create=False)
    finished = Counter()
    trained = Counter()
    for t in queue.trials():
        key = (t.system_attrs.get("fixed_params") or {}).get("key")
        finished[key] += t.state.name in ("COMPLETE", "PRUNED")
        trained[key] += t.user_attrs.get("outcome") == "trained"
    for p in trained_plans(plans):
        assert finished[p.key] == 1, (p.variant, p.repeat)
        assert trained[p.key] <= 1
    return summaries


def test_killed_at_random_moments_and_rerun_loses_and_duplicates_nothing(tmp_path, capsys):
    data = tiny_spec(name="killme", vary={"optim.lr": [0.1]}, repeats=2)
    data["base"]["train"]["epochs"] = 3
    spec_file = _write_spec(tmp_path / "killme.yaml", data)
    spec = spec_from_dict(data)
    # The seed of the kill moments is printed with any failure: CNNLAB_TEST_SEED=N repeats it.
    seed = int(os.environ.get("CNNLAB_TEST_SEED", "0")) or random.randrange(1, 10**6)
    rng = random.Random(seed)
    # pytest shows captured stderr with a failure (stdout is read below for the status).
    print(f"kill moments from CNNLAB_TEST_SEED={seed}", file=sys.stderr)
    latest = 1.5  # seconds after the last write into a run folder
    for attempt in range(4):
        root = tmp_path / f"studies-{attempt}"
        args = (
            "study",
            "run",
            str(spec_file),
            "--root",
            str(root),
            "--workers",
            "1",
            "--threads",
            "1",
        )
        kills = _kill_at_random_moments(args, root, rng, latest)
        if kills:
            break
        # A quiet machine finished the whole study inside the random wait: kill sooner.
        latest /= 2
    assert kills >= 1, f"the study always finished before the first kill (seed {seed})"
    final = _cli(*args)
    try:
        out, _ = final.communicate(timeout=300)
    finally:
        final.kill()  # a rerun that hangs must not outlive the test
    assert final.returncode == 0, f"seed {seed}: {out}"
    summaries = _check_complete(root, spec)

    # Nothing lost: the same numbers as an uninterrupted study (exact resume on CPU).
    reference = run_study(spec, root=tmp_path / "reference", workers=1, threads=1)
    assert reference.done == reference.total == 4
    for key, summary in summaries.items():
        ref = read_summary(StudyFolder.at(tmp_path / "reference", spec.name).run_dir(key))
        for metric in FINAL:
            assert summary["final"][metric] == pytest.approx(
                ref["final"][metric], rel=1e-5, abs=1e-7
            ), (metric, seed)

    # status from the CLI agrees.
    assert main(["study", "status", "killme", "--root", str(root), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    counts = tuple(status[k] for k in ("done", "total", "failed", "pending", "running"))
    assert counts == (4, 4, 0, 0, 0), seed


def test_two_local_workers_on_one_sqlite_store_run_every_run_exactly_once(tmp_path):
    data = tiny_spec(name="pair", vary={"optim.lr": [0.1, 0.2, 0.3]}, repeats=2)
    spec_file = _write_spec(tmp_path / "pair.yaml", data)
    spec = spec_from_dict(data)
    root = tmp_path / "studies"
    proc = _cli(
        "study", "run", str(spec_file), "--root", str(root), "--workers", "2", "--threads", "1"
    )
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    _check_complete(root, spec)
    folder = StudyFolder.at(root, spec.name)
    logs = sorted(p.name for p in folder.logs.iterdir())
    assert logs == ["worker-0.log", "worker-1.log"]
    queue = open_queue(spec, folder, None, create=False)
    owners = {
        t.user_attrs["worker"]["pid"]
        for t in queue.trials()
        if t.user_attrs.get("outcome") == "trained"
    }
    assert 1 <= len(owners) <= 2


def test_epochs_read_off_the_longest_curve_equal_a_separate_run(tmp_path):
    from cnnlab.engine.trainer import train

    data = tiny_spec(name="epochs", vary={"train.epochs": [1, 2]}, repeats=1)
    spec = spec_from_dict(data)
    status = run_study(spec, root=tmp_path, workers=1, threads=1)
    assert (status.done, status.total, status.derived) == (2, 2, 1)
    base = next(p for p in expand(spec) if p.variant == "base")
    assert base.derived_from is not None
    derived = read_summary(StudyFolder.at(tmp_path, spec.name).run_dir(base.key))
    separate = train(base.config, run_dir=tmp_path / "separate").summary
    for metric in FINAL:
        assert derived["final"][metric] == pytest.approx(
            separate["final"][metric], rel=1e-5, abs=1e-7
        ), metric
    assert derived["best"]["epoch"] == separate["best"]["epoch"]
    assert derived["best"]["val_acc"] == pytest.approx(separate["best"]["val_acc"], rel=1e-6)
    st = study_status(StudyFolder.at(tmp_path, spec.name))
    assert st.derived == 1


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = _write_spec(tmp_path / "bad.yaml", tiny_spec(vary={"optim.lr": [0]}))
    assert main(["study", "run", str(bad), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: study 'tiny' vary.optim.lr[0]: optim.lr=0") and "\n" not in err
    assert main(["study", "status", "nope", "--root", str(tmp_path)]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err
    good = _write_spec(tmp_path / "good.yaml", tiny_spec())
    assert (
        main(
            [
                "study",
                "run",
                str(good),
                "--root",
                str(tmp_path),
                "--storage",
                "mysql+nodriver://x/y",
            ]
        )
        == 2
    )
    assert "cannot open study storage" in capsys.readouterr().err
