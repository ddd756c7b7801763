"""Many workers on one PostgreSQL store: every run exactly once, a killed worker's run finishes elsewhere.

Starts a real PostgreSQL server (Debian's package) on loopback in a temporary
cluster; skips with a reason where the server binaries are missing or it cannot start.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from cnnlab.errors import StudyError
from cnnlab.studies.folder import StudyFolder
from cnnlab.studies.runner import open_queue
from cnnlab.studies.spec import expand, spec_from_dict
from tests.studies.conftest import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fashion_mnist")]


@pytest.fixture(scope="session")
def fashion_mnist():
    from tests.studies.conftest import fashion_mnist as check

    return check.__wrapped__()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        pytest.skip("PostgreSQL server binaries not installed (apt install postgresql)")
    bin_dir = Path(bins[-1])
    as_pg: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as 'postgres'
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        as_pg = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="cnnlab-pg-"))
    data = base / "data"
    if as_pg:
        shutil.chown(base, "postgres")
    port = _free_port()
    try:
        subprocess.run(
            [*as_pg, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                *as_pg,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(base / "log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-h 127.0.0.1 -p {port} -k {base}",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not start here: {exc}")
    try:
        subprocess.run(
            [
                str(bin_dir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                "cnnlab",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/cnnlab"
    finally:
        subprocess.run(
            [*as_pg, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


def _cli(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # The child holds its own copy of the descriptor; ours can close at once.
    with open(log, "w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "cnnlab", *args], stdout=fh, stderr=subprocess.STDOUT, env=env
        )


def test_four_workers_on_postgres_with_one_killed(tmp_path, postgres_url):
    data = tiny_spec(name="pg", vary={"optim.lr": [0.1, 0.2, 0.3]}, repeats=2)
    data["base"]["data"]["subset"] = 3000
    data["base"]["train"]["epochs"] = 3
    spec_file = tmp_path / "pg.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    spec = spec_from_dict(data)
    root = tmp_path / "studies"
    common = ["--storage", postgres_url, "--heartbeat", "1"]
    procs = [
        _cli(
            "study",
            "run",
            str(spec_file),
            "--root",
            str(root),
            "--workers",
            "1",
            *common,
            log=tmp_path / "run.log",
        )
    ]
    folder = StudyFolder.at(root, spec.name)
    deadline = time.time() + 120
    queue = None
    while queue is None and time.time() < deadline:  # wait until the study is in the store
        try:
            queue = open_queue(spec, folder, postgres_url, create=False)
        except StudyError:
            time.sleep(0.5)
    assert queue is not None, (tmp_path / "run.log").read_text()[-3000:]
    workers = [
        _cli(
            "study",
            "worker",
            "--name",
            spec.name,
            "--root",
            str(root),
            "--threads",
            "1",
            *common,
            log=tmp_path / f"w{i}.log",
        )
        for i in range(3)
    ]
    procs += workers

    # kill one extra worker while it trains a run that already has a checkpoint
    worker_pids = {p.pid for p in workers}
    victim_key = None
    deadline = time.time() + 300
    while victim_key is None and time.time() < deadline:
        for t in queue.trials():
            owner = (t.user_attrs.get("worker") or {}).get("pid")
            key = (t.system_attrs.get("fixed_params") or {}).get("key")
            checkpointed = key and (folder.run_dir(key) / "checkpoints" / "last.pt").exists()
            if t.state.name == "RUNNING" and owner in worker_pids and checkpointed:
                os.kill(owner, signal.SIGKILL)
                victim_key, victim_pid = key, owner
                break
        time.sleep(0.2)
    assert victim_key is not None, "no worker was caught mid-run"

    for p in procs:
        p.wait(timeout=600)
    assert procs[0].returncode == 0, (tmp_path / "run.log").read_text()[-3000:]

    plans = expand(spec)
    assert folder.run_keys() == sorted(p.key for p in plans)
    finished: Counter[str] = Counter()
    for t in open_queue(spec, folder, postgres_url, create=False).trials():
        key = (t.system_attrs.get("fixed_params") or {}).get("key")
        finished[key] += t.state.name == "COMPLETE"
    assert all(finished[p.key] == 1 for p in plans), finished
    for p in plans:
        import json

        summary = json.loads((folder.run_dir(p.key) / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["epochs_completed"] == 3
    log = (folder.run_dir(victim_key) / "log.txt").read_text()
    assert "resumed after epoch" in log, log  # finished from its checkpoint, not from scratch
    assert victim_pid not in {
        (t.user_attrs.get("worker") or {}).get("pid")
        for t in queue.trials()
        if t.state.name == "COMPLETE"
        and (t.system_attrs.get("fixed_params") or {}).get("key") == victim_key
    }
