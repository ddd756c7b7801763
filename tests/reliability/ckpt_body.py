"""Subprocess body for checkpoint faults: train, and break the second epoch's checkpoint write.

Usage: python -m tests.reliability.ckpt_body RUN_DIR MODE [resume]
MODE: ``kill-mid-write`` (SIGKILL after half the bytes reached the temp file),
``disk-full`` (RLIMIT_FSIZE below the checkpoint size from epoch 2 on), ``none``.
"""

from __future__ import annotations

import os
import resource
import signal
import sys

import torch

import cnnlab.engine.checkpoint as ckpt
from cnnlab.cli import _register_commands  # noqa: F401 - keep imports identical to a CLI run
from cnnlab.config import load_config
from cnnlab.engine.trainer import train
from cnnlab.errors import CnnlabError
from tests.engine.killable import OVERRIDES
from tests.engine.synthetic import make_splits


def main() -> int:
    run_dir, mode = sys.argv[1], sys.argv[2]
    resume = len(sys.argv) > 3
    torch.set_num_threads(1)
    real_write_temp = ckpt._write_temp
    writes = {"n": 0}

    def breaking_write_temp(path, data):
        if path.name == "last.pt":
            writes["n"] += 1
            if writes["n"] == 2 and mode == "kill-mid-write":
                tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
                with open(tmp, "wb") as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            if writes["n"] == 2 and mode == "disk-full":
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (len(data) // 2, resource.RLIM_INFINITY))
        return real_write_temp(path, data)

    ckpt._write_temp = breaking_write_temp
    config = None if resume else load_config(overrides=OVERRIDES)
    try:
        train(config, run_dir=run_dir, resume=resume, splits=make_splits())
    except CnnlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
