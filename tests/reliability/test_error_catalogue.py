"""The catalogue of bad command lines and files (docs/errors.md lists the same cases).

Each must end with exit status 2, one line on stderr that starts with ``error:``
and names the problem, and no traceback.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

import cnnlab.data
import cnnlab.data.locate
from cnnlab.cli import main
from tests.engine.synthetic import CLASSES, patch_images


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny ImageFolder tree, one trained run on it, and some bad files."""
    root = tmp_path_factory.mktemp("catalogue")
    mp = pytest.MonkeyPatch()
    mp.setenv("CNNLAB_CACHE", str(root / "cache"))
    mp.delenv("CNNLAB_DATA", raising=False)
    mp.setattr(cnnlab.data.locate, "SYSTEM_ROOTS", ())
    tree = root / "tree"
    for split, n, seed in (("train", 80, 0), ("test", 20, 2)):
        images, labels = patch_images(n, seed)
        for i, (img, label) in enumerate(zip(images, labels.tolist())):
            folder = tree / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0].numpy()).save(folder / f"{i:03d}.png")
    args = [
        "train",
        "data=imagefolder",
        f"data.root={tree}",
        "model=lenet5-modern",
        "train.epochs=1",
        "train.batch_size=32",
    ]
    assert main([*args, "--runs", str(root / "runs"), "--name", "ok"]) == 0
    corrupt = root / "runs" / "corrupt"
    shutil.copytree(root / "runs" / "ok", corrupt)
    best = corrupt / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:100])
    (root / "bad.yaml").write_text("optim: [unclosed\n")
    (root / "evil.yaml").write_text("train: !!python/object/apply:os.system ['true']\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "binary.yaml").write_bytes(b"\xff\xfeoptim: 1")
    (root / "one" / "train" / "cat").mkdir(parents=True)  # a tree of a single class
    for i in range(4):
        Image.new("L", (28, 28), 60 * i).save(root / "one" / "train" / "cat" / f"{i}.png")
    (root / "twice.yaml").write_text("optim: {lr: 0.1}\ntrain: {epochs: 1}\noptim: {lr: 0.2}\n")
    (root / "unknown.yaml").write_text("optim:\n  lrr: 0.1\n")
    (root / "bad.png").write_bytes(b"\x89PNG not really")
    (root / "spec-unknown.yaml").write_text(
        "name: s\nbase: {}\nvary:\n  optim.lr: [0.1]\nrepeatz: 3\n"
    )
    (root / "spec-badkey.yaml").write_text("name: s\nbase: {}\nvary:\n  optim.lrr: [0.1]\n")
    (root / "spec-badbase.yaml").write_text(
        "name: s\nbase:\n  model:\n    name: lenet9\nvary:\n  optim.lr: [0.1]\n"
    )
    (root / "spec-badvariant.yaml").write_text(
        "name: s\nbase: {}\nvariants:\n  wide: {model.channels: [12]}\n"
    )
    ctx = {
        "run": str(root / "runs" / "ok"),
        "corrupt": str(corrupt),
        "tmp": str(root),
        "tree": str(tree),
        "image": str(next((tree / "test" / CLASSES[0]).iterdir())),
    }
    yield ctx
    mp.undo()


SHOW_GRID = ["data", "show", "imagefolder", "--root", "{tree}", "--out", "{tmp}/g.png", "--count"]

CASES = [
    # train: config values, keys and files
    (["train", "model=lenet6"], "model.name='lenet6'"),
    (["train", "data=imagenet"], "data.name='imagenet'"),
    (["train", "optim.lr=-1"], "optim.lr=-1"),
    (["train", "optim.lr=abc"], "optim.lr='abc'"),
    (["train", "train.epochs=0"], "train.epochs=0"),
    (["train", "train.batch_size=0"], "train.batch_size=0"),
    (["train", "optim=lbfgs"], "optim.name='lbfgs'"),
    (["train", "schedule=warp"], "schedule.name='warp'"),
    (["train", "unknown.key=1"], "unknown key 'unknown'"),
    (["train", "optim.lrr=1"], "unknown key 'optim.lrr'"),
    (["train", "model.wings=3"], "model.wings"),
    (
        [
            "train",
            "data=imagefolder",
            "data.root={tree}",
            "model.activation=swishy",
            "--runs",
            "{tmp}/r3",
        ],
        "swishy",
    ),
    (["train", "model.kernel_size=0"], "kernel_size=0 is not allowed; use an integer >= 1"),
    (["train", "model.hidden=abc"], "hidden='abc' is not allowed"),
    (["train", "optim.lr=true"], "optim.lr=true: expected a number"),
    (["train", "optim.betas=[0.9]"], "give two numbers"),
    (["train", "optim=adam", "optim.betas=[1.5,0.99]"], "use two numbers in [0, 1)"),
    (["train", "schedule=cosine", "schedule.min_lr=5"], "schedule.min_lr=5.0 is above optim.lr"),
    (["train", "schedule.milestones=[-1]"], "schedule.milestones=[-1]"),
    (["train", "lr0.1"], "must look like key=value"),
    (["train", "data.val_fraction=1.5"], "data.val_fraction=1.5"),
    (["train", "train.device=tpu"], "train.device='tpu'"),
    (["train", "optim.nesterov=true"], "nesterov"),
    (["train", "--config", "{tmp}/missing.yaml"], "cannot read config file"),
    (["train", "--config", "{tmp}/bad.yaml"], "not valid YAML"),
    (["train", "--config", "{tmp}/evil.yaml"], "not valid YAML"),
    (["train", "--config", "{tmp}/list.yaml"], "expected a mapping"),
    (["train", "--config", "{tmp}/unknown.yaml"], "unknown key 'optim.lrr'"),
    (["train", "--resume", "{tmp}/no-such-run"], "not a run folder"),
    (["train", "--resume", "{run}", "optim.lr=0.1"], "drop the overrides (optim.lr=0.1)"),
    (["train", "--resume", "{run}", "--name", "other"], "drop --name"),
    (["train", "--resume", "{run}"], "nothing to resume"),
    (["train", "--name", "../escape"], "run name '../escape' is not allowed"),
    (["train", "--runs", "{tmp}", "--name", "tree"], "already exists and is not a run folder"),
    (["train", "data=imagefolder"], "root"),
    (["train", "data=imagefolder", "data.root={tmp}/nowhere"], "nowhere"),
    (
        ["train", "data=imagefolder", "data.root={tree}", "model=alexnet", "--runs", "{tmp}/r2"],
        "cannot take input",
    ),
    (
        [
            "train",
            "data=imagefolder",
            "data.root={tree}",
            "model=lenet5-bn",
            "train.batch_size=71",
            "--runs",
            "{tmp}/r-one-left",
        ],
        "leaves a last batch of 1 image of the 72",
    ),
    (
        ["train", "data=imagefolder", "data.root={tree}", "--runs", "{tmp}/runs", "--name", "ok"],
        "already holds a run",
    ),
    (
        ["train", "data=imagefolder", "data.root={tree}", "--runs", "{tmp}/bad.png/runs"],
        "cannot write to run folder",
    ),
    (["train", "--bogus"], "No such option"),
    # models
    (["summary", "lenet9"], "unknown model 'lenet9'"),
    (["summary", "lenet5", "--input", "28x28x"], "28x28x"),
    (["summary", "lenet5", "--input", "1x4x4"], "cannot take input"),
    (["summary", "lenet5", "-o", "wings=2"], "wings"),
    (["summary", "resnet18", "-o", "shortcut=teleport"], "teleport"),
    (["summary", "lenet5", "-o", "padding=-1"], "padding=-1 is not allowed"),
    (["summary", "lenet5", "--depth", "0"], "--depth 0"),
    (["summary", "mlp", "-o", "norm=instance"], "norm='instance' has no effect in an MLP"),
    (
        ["summary", "resnet18", "-o", "stem=small", "-o", "pool=avg"],
        "has no effect with stem='small'",
    ),
    # data
    (["data", "info", "imagenet"], "imagenet"),
    (["data", "info", "imagefolder", "--root", "{tmp}/nowhere"], "nowhere"),
    (["data", "info", "mnist", "--data-dir", "{tmp}/nowhere"], "mnist"),
    (["data", "get", "imagenet"], "imagenet"),
    # using a run
    (["evaluate", "{tmp}/no-such-run"], "not a run folder"),
    (["evaluate", "{run}", "--split", "dev"], "split 'dev'"),
    (["evaluate", "{run}", "--checkpoint", "worst"], "checkpoint 'worst'"),
    (["evaluate", "{run}", "--device", "tpu"], "--device 'tpu' is not allowed"),
    (["evaluate", "{corrupt}"], "corrupt"),
    (["predict", "{run}", "--out", "{tmp}/no/such/dir/test.txt"], "does not exist"),
    (["predict", "{run}", "--out", "{tmp}"], "it is a folder; give a file name"),
    (["predict", "{run}", "--out", "{tmp}/bad.png/x.txt"], "is not a folder"),
    (
        ["predict", "{run}", "{image}", "--split", "val"],
        "give image files or --split/--out/--probs",
    ),
    (["export", "{run}", "--format", "torchscript", "--out", "{tmp}"], "it is a folder"),
    (["predict", "{run}", "{tmp}/bad.png"], "cannot read image file"),
    (["predict", "{run}", "{tmp}/missing.png"], "does not exist"),
    (["export", "{run}", "--format", "tflite"], "tflite"),
    (["export", "{run}", "--out", "{tmp}/no/such/dir/m.onnx"], "does not exist"),
    # explanations
    (["explain", "{run}", "--method", "vibes"], "vibes"),
    (["explain", "{run}", "--layer", "features.nope", "--images", "2"], "features.nope"),
    (["explain", "{run}", "--method", "cam", "--images", "2"], "gradcam"),
    (["explain", "{run}", "{tmp}/bad.png"], "bad.png"),
    (["features", "{run}", "--layer", "features.nope", "--image", "0"], "features.nope"),
    (
        ["features", "{run}", "--layer", "features.conv1", "--image", "dev:3"],
        "--image 'dev:3' is not allowed; use an image file, N or SPLIT:N",
    ),
    # studies
    (["study", "run", "{tmp}/missing-spec.yaml"], "missing-spec.yaml"),
    (["study", "run", "{tmp}/evil.yaml"], "YAML"),
    (
        ["study", "run", "{tmp}/spec-unknown.yaml", "--root", "{tmp}/studies", "--dry-run"],
        "repeatz",
    ),
    (
        ["study", "run", "{tmp}/spec-badkey.yaml", "--root", "{tmp}/studies", "--dry-run"],
        "optim.lrr",
    ),
    (["study", "run", "{tmp}/spec-badbase.yaml", "--root", "{tmp}/studies", "--dry-run"], "lenet9"),
    (
        ["study", "run", "{tmp}/spec-badvariant.yaml", "--root", "{tmp}/studies", "--dry-run"],
        "channels=[12]",
    ),
    (["study", "status", "no-such-study", "--root", "{tmp}/studies"], "no-such-study"),
    (["study", "report", "no-such-study", "--root", "{tmp}/studies"], "no-such-study"),
    (["recipes", "show", "no-such-recipe"], "no-such-recipe"),
    (
        ["recipes", "run", "lenet-ablation", "--quick", "--dry-run", "--device", "tpu"],
        "--device 'tpu' is not allowed; use auto, cpu, cuda, cuda:N or mps",
    ),
    (["train", "--config", "{tmp}/binary.yaml"], "binary.yaml: not a UTF-8 text file"),
    (["train", "--config", "{tmp}/twice.yaml"], "key 'optim' appears twice (lines 1 and 3)"),
    (["study", "run", "{tmp}/twice.yaml", "--dry-run"], "key 'optim' appears twice"),
    ([*SHOW_GRID, "1e5"], "--count"),
    ([*SHOW_GRID, "100000"], "count=100000 is not allowed; show 1 to 400 images per grid"),
    (["data", "get", "fashion-mnist", "--timeout", "-1"], "Invalid value for '--timeout'"),
    (["data", "get", "imagefolder"], "no official download; it is your own tree: give it as"),
    (
        ["train", "data=imagefolder", "data.root={tmp}/one", "--runs", "{tmp}/r-one"],
        "has 1 class ('cat')",
    ),
]


@pytest.mark.parametrize("args, needle", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_gives_one_line_and_status_2(env, args, needle, capsys):
    argv = [a.format(**env) for a in args]
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (argv, captured.out[-500:], err[-1500:])
    assert err.startswith("error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    assert needle.format(**env) in err, err


def test_catalogue_is_large_and_documented():
    assert len(CASES) >= 40
    doc = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    for _, needle in CASES:
        if "{" not in needle:
            assert needle in doc, f"docs/errors.md does not mention {needle!r}"
