"""Export a trained run's model to ONNX or TorchScript.

The exported graph takes the normalized float batch (N x C x H x W) the network
sees in training; a JSON file beside it records the channels, input size,
class names and normalization (and the pixel permutation of a permuted run)
so a consumer can prepare inputs the same way.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from cnnlab.data import transforms as T
from cnnlab.engine.evaluate import load_model, model_input
from cnnlab.engine.run import Run, check_output_file
from cnnlab.errors import RunError
from cnnlab.registry import Registry


def _onnx(model: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(out),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )


def _torchscript(model: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    traced = torch.jit.trace(model, example)
    traced.save(str(out))


EXPORTERS: Registry[Callable[[torch.nn.Module, torch.Tensor, Path], None]] = Registry(
    "export format"
)
EXPORTERS.add(
    "onnx", _onnx, description="ONNX graph (opset chosen by torch), dynamic batch", suffix=".onnx"
)
EXPORTERS.add("torchscript", _torchscript, description="TorchScript via tracing", suffix=".pt")


def _permutation(run: Run, info: dict) -> dict:
    """The pixel permutation of a ``data.permute_pixels`` run, which its inputs need too.

    Without it a consumer prepares unpermuted images and the exported network, which
    never saw one, answers near chance.
    """
    cfg = run.config.data
    if not cfg.permute_pixels:
        return {}
    h, w = info["image_size"]
    return {
        "input": "float32 N x C x H x W: pixel-permuted at image_size, normalized, resized"
        " to input_size",
        "pixel_permutation": T.pixel_permutation(h, w, cfg.permute_seed).tolist(),
    }


def export_run(
    run: Run, fmt: str = "onnx", out: str | Path | None = None, checkpoint: str = "best"
) -> Path:
    """Write the model in ``fmt`` and a ``.json`` with its input description; return the model path."""
    entry = EXPORTERS.entry(fmt)
    info = model_input(run)
    out = Path(out) if out else run.path / f"model{entry.meta['suffix']}"
    meta_path = out.with_suffix(out.suffix + ".json")
    # Before tracing: a bad path fails with one line, not after the tracer's warnings.
    check_output_file(out)
    check_output_file(meta_path)
    model = load_model(run, checkpoint, "cpu")
    example = torch.randn(2, info["in_channels"], *info["input_size"])
    try:
        with warnings.catch_warnings():
            # torch announces deprecations of the tracing exporters; the files they write are fine.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            entry.obj(model, example, out)
    except OSError as exc:
        raise RunError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    meta = {
        "format": entry.name,
        "checkpoint": checkpoint,
        "input": "float32 N x C x H x W, normalized",
        **info,
        **_permutation(run, info),
    }
    try:
        meta_path.write_text(json.dumps(meta, indent=2))
    except OSError as exc:
        raise RunError(f"cannot write {str(meta_path)!r}: {exc.strerror or exc}") from None
    return out
