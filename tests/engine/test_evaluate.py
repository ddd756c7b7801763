import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.config import load_config
from cnnlab.engine.evaluate import evaluate_run, predict_files, read_image_file
from cnnlab.engine.run import Run
from cnnlab.engine.trainer import train
from cnnlab.errors import DataError, RegistryError, RunError
from tests.engine.synthetic import CLASSES, SMALL_RUN, patch_images


@pytest.fixture(scope="module")
def trained(tmp_path_factory, patch_splits):
    path = tmp_path_factory.mktemp("runs") / "r"
    return train(load_config(overrides=SMALL_RUN), run_dir=path, splits=patch_splits)


def _split_data(monkeypatch, splits):
    # evaluate/predict reload data from the run config; serve the synthetic splits instead
    import cnnlab.engine.evaluate as ev
    from cnnlab.engine.inputs import prepare_splits

    monkeypatch.setattr(ev, "load_run_data", lambda cfg: prepare_splits(splits, cfg))


def test_evaluate_matches_training_record(trained, patch_splits, monkeypatch):
    _split_data(monkeypatch, patch_splits)
    run = Run.load(trained.path)
    result = evaluate_run(run, split="test", checkpoint="last", device="cpu")
    assert result.accuracy == pytest.approx(run.summary["final"]["test_acc"], abs=1e-6)
    assert result.loss == pytest.approx(run.summary["final"]["test_loss"], rel=1e-4)
    assert int(result.confusion.sum()) == 64 and result.confusion.shape == (4, 4)
    assert set(result.per_class) == set(CLASSES)
    assert result.confusion_png.is_file()
    with pytest.raises(RunError, match="split 'dev' is not allowed"):
        evaluate_run(run, split="dev")
    with pytest.raises(RunError, match="checkpoint 'worst' is not allowed"):
        evaluate_run(run, checkpoint="worst")


def test_predict_split_and_files(trained, patch_splits, monkeypatch, tmp_path):
    _split_data(monkeypatch, patch_splits)
    run = Run.load(trained.path)
    preds = run.predict(split="test", checkpoint="last", device="cpu")
    assert preds.predicted.shape == (64,) and torch.allclose(preds.probs.sum(1), torch.ones(64))
    # image files go through the same conversion: PNGs of test images predict like the tensors
    images, _ = patch_images(6, seed=2)
    files = []
    for i, img in enumerate(images):
        f = tmp_path / f"img{i}.png"
        Image.fromarray(img[0].numpy()).save(f)
        files.append(f)
    got = predict_files(run, files, checkpoint="last", top_k=2, device="cpu")
    assert [p.predicted for p in got] == [CLASSES[i] for i in preds.predicted[:6].tolist()]
    assert all(len(p.top) == 2 and p.top[0][1] >= p.top[1][1] for p in got)


def test_unreadable_image_files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image file .*bad.png"):
        read_image_file(bad, 1, (28, 28))
    with pytest.raises(DataError, match="does not exist"):
        read_image_file(tmp_path / "missing.png", 1, (28, 28))


def test_colour_file_is_converted_to_grayscale(tmp_path):
    f = tmp_path / "c.png"
    Image.fromarray(np.full((40, 30, 3), 200, dtype=np.uint8)).save(f)
    t = read_image_file(f, 1, (28, 28))
    assert t.shape == (1, 28, 28) and t.dtype == torch.uint8


def test_export_onnx_and_torchscript_match(trained, tmp_path):
    run = Run.load(trained.path)
    model = run.load_model("best")
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
    ts = run.export("torchscript", out=tmp_path / "m.pt")
    loaded = torch.jit.load(str(ts))
    assert torch.allclose(loaded(x), expected, atol=1e-5)
    assert (tmp_path / "m.pt.json").is_file()
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    onnx_path = run.export("onnx", out=tmp_path / "m.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    assert np.allclose(got, expected.numpy(), atol=1e-4)
    with pytest.raises(RegistryError, match="unknown export format 'tflite'"):
        run.export("tflite")


def test_image_files_are_read_as_image_folders_read_them(tmp_path):
    """A 16-bit grayscale file is scaled to 8 bits, not clipped to white."""
    f = tmp_path / "deep.png"
    Image.fromarray(np.full((28, 28), 32896, dtype=np.uint16)).save(f)  # 128 * 257
    t = read_image_file(f, 1, (28, 28))
    assert t.shape == (1, 28, 28) and int(t.unique().item()) == 128
    rgb = read_image_file(f, 3, (14, 14))
    assert rgb.shape == (3, 14, 14) and int(rgb.max()) == 128


def test_files_of_a_pixel_permuted_run_are_permuted_as_its_data(
    patch_splits, monkeypatch, tmp_path
):
    # The splits are permuted once when they load; image files must get the same
    # permutation, or the run predicts files it never learned to read (4/32 agreed).
    from cnnlab.explain.runs import read_files

    _split_data(monkeypatch, patch_splits)
    overrides = [*SMALL_RUN, "data.permute_pixels=true", "data.permute_seed=3"]
    run = Run.load(
        train(load_config(overrides=overrides), run_dir=tmp_path / "r", splits=patch_splits).path
    )
    files = []
    for i, img in enumerate(patch_splits.test.images[:16]):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(img[0].numpy()).save(files[-1])
    preds = run.predict(split="test", checkpoint="last", device="cpu")
    got = predict_files(run, files, checkpoint="last", device="cpu")
    assert [p.predicted for p in got] == [CLASSES[i] for i in preds.predicted[:16].tolist()]
    from cnnlab.engine.inputs import prepare_splits

    permuted = prepare_splits(patch_splits, run.config.data).test.images[:16]
    assert torch.equal(read_files(run, files).pixels, permuted)


def test_export_records_the_pixel_permutation(patch_splits, tmp_path):
    # A consumer of the exported network must permute its inputs as training did.
    import json

    from cnnlab.engine.inputs import prepare_splits

    overrides = [*SMALL_RUN, "train.epochs=1", "data.permute_pixels=true", "data.permute_seed=3"]
    run = Run.load(
        train(load_config(overrides=overrides), run_dir=tmp_path / "r", splits=patch_splits).path
    )
    meta = json.loads(
        (run.export("torchscript", out=tmp_path / "m.pt").with_suffix(".pt.json")).read_text()
    )
    raw = patch_splits.test.images[:4]
    perm = torch.tensor(meta["pixel_permutation"])
    mine = raw.reshape(4, 1, 28 * 28)[:, :, perm].reshape(4, 1, 28, 28)
    assert torch.equal(mine, prepare_splits(patch_splits, run.config.data).test.images[:4])
    assert "pixel-permuted" in meta["input"]
