"""Fused groups: K runs trained as one batched computation must equal the K separate runs."""

import json

import pytest
import torch

from cnnlab.config import load_config
from cnnlab.engine import checkpoint as ckpt
from cnnlab.engine.fused import (
    FUSED_OPTIMIZERS,
    fusable_key,
    group_runs,
    group_size_for,
    train_group,
)
from cnnlab.engine.optim import build_optimizer
from cnnlab.engine.run import Run
from cnnlab.engine.trainer import train
from cnnlab.errors import ConfigError, RunError
from cnnlab.models import create_model
from tests.engine.synthetic import RUN_FILES

# Fused groups run NCHW; the single-run trainer would pick channels_last on a CPU, whose
# different summation order drifts by ~1e-5 over these steps at lr 0.9 (it is
# compared with NCHW in tests/engine/test_trainer.py). Compare like with like.
BASE = ["train.epochs=2", "train.batch_size=32", "train.device=cpu", "train.channels_last=false"]
ATOL = 1e-5  # plus rtol 1e-5: running variances reach ~15, where float32 steps are ~1e-6


def _cfgs(members, *extra):
    return [load_config(overrides=[*BASE, *extra, *m]) for m in members]


def _weights(path, which="last"):
    return ckpt.load_checkpoint(path / "checkpoints" / f"{which}.pt")["model"]


def _assert_close_weights(a, b, atol=ATOL):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].double(), b[key].double(), atol=atol, rtol=1e-5), key


def _separate(cfgs, tmp_path, splits, prefix="s"):
    return [train(c, run_dir=tmp_path / f"{prefix}{i}", splits=splits) for i, c in enumerate(cfgs)]


def _metric_rows(run):
    return [
        {k: v for k, v in r.items() if k not in ("examples_per_sec", "seconds")}
        for r in run.metrics
    ]


def _stop_at(epoch, batch=None):
    """A callback that raises Ctrl-C after step ``batch`` of ``epoch`` (None: its last step)."""

    def callback(event, info):
        if event == "step" and (info["epoch"], info["batch"]) == (epoch, batch or info["steps"]):
            raise KeyboardInterrupt

    return callback


def _whole_and_resumed(cfgs, tmp_path, splits, stop):
    """The group trained whole, and trained again, stopped by ``stop`` and resumed."""
    whole = train_group(cfgs, [tmp_path / f"w{i}" for i in range(len(cfgs))], splits=splits)
    dirs = [tmp_path / f"r{i}" for i in range(len(cfgs))]
    with pytest.raises(KeyboardInterrupt):
        train_group(cfgs, dirs, splits=splits, callback=stop)
    return whole, train_group(cfgs, dirs, splits=splits, resume=True)


MEMBERS = [
    ["train.seed=0", "optim.lr=0.9"],
    ["train.seed=1", "optim.lr=0.3", "optim.momentum=0.9"],
    ["train.seed=2", "optim.lr=0.5", "optim.weight_decay=0.01"],
]


def test_fused_group_equals_separate_runs(tmp_path, patch_splits):
    # textbook LeNet-5 with per-sample augmentation: each member must draw its own crops and flips
    cfgs = _cfgs(
        MEMBERS, "data.augment.crop_padding=2", "data.augment.hflip=0.5", "schedule=cosine"
    )
    fused = train_group(cfgs, [tmp_path / f"g{i}" for i in range(3)], splits=patch_splits)
    separate = _separate(cfgs, tmp_path, patch_splits)
    for f, s in zip(fused, separate):
        assert f.status == s.status == "completed"
        _assert_close_weights(_weights(f.path), _weights(s.path))
        _assert_close_weights(_weights(f.path, "best"), _weights(s.path, "best"))
        for rf, rs in zip(_metric_rows(f), _metric_rows(s), strict=True):
            assert rf.keys() == rs.keys()
            for key, value in rs.items():
                # metrics.csv keeps 6 significant digits
                assert rf[key] == (
                    value if value is None else pytest.approx(value, rel=1e-4, abs=1e-5)
                ), key
        # a normal run folder: the trainer's files and summary keys, and a loadable model
        assert RUN_FILES <= {p.name for p in f.path.iterdir()}
        summary = json.loads((f.path / "summary.json").read_text())
        assert set(s.summary) <= set(summary) and summary["fused"]["group_size"] == 3
        assert (
            summary["model_input"] == s.summary["model_input"]
            and summary["data"] == s.summary["data"]
        )
        loaded = Run.load(f.path)
        assert loaded.config == s.config and loaded.status == "completed"
        model = loaded.load_model("best")
        _assert_close_weights(model.state_dict(), _weights(f.path, "best"), atol=0)
    # the members really differ from each other
    w = [_weights(f.path) for f in fused]
    assert not torch.allclose(
        w[0]["features.conv1.conv.weight"], w[1]["features.conv1.conv.weight"]
    )


def test_diverging_member_is_masked_and_recorded(tmp_path, patch_splits):
    members = [
        ["train.seed=0", "optim.lr=0.05"],
        ["train.seed=1", "optim.lr=100", "optim.momentum=0.99"],
        ["train.seed=2", "optim.lr=0.1"],
    ]
    cfgs = _cfgs(members, "model=lenet5-modern", "optim.momentum=0.9")
    fused = train_group(cfgs, [tmp_path / f"g{i}" for i in range(3)], splits=patch_splits)
    separate = _separate(cfgs, tmp_path, patch_splits)
    assert (
        [f.status for f in fused]
        == [s.status for s in separate]
        == ["completed", "diverged", "completed"]
    )
    d, ds = fused[1].summary["diverged"], separate[1].summary["diverged"]
    assert (d["epoch"], d["step"], d["lr"]) == (ds["epoch"], ds["step"], ds["lr"])
    assert fused[1].summary["steps"] == separate[1].summary["steps"]
    for i in (0, 2):
        _assert_close_weights(_weights(fused[i].path), _weights(separate[i].path))


def test_batch_norm_members_keep_their_own_running_stats(tmp_path, patch_splits):
    cfgs = _cfgs(MEMBERS[:2], "model=lenet5-bn", "train.epochs=1")
    fused = train_group(cfgs, [tmp_path / f"g{i}" for i in range(2)], splits=patch_splits)
    separate = _separate(cfgs, tmp_path, patch_splits)
    key = "features.conv1.norm.running_var"
    for f, s in zip(fused, separate):
        wf, ws = _weights(f.path), _weights(s.path)
        _assert_close_weights(wf, ws)
        assert int(wf["features.conv1.norm.num_batches_tracked"]) == 8
    assert not torch.allclose(_weights(fused[0].path)[key], _weights(fused[1].path)[key])
    # evaluation uses each member's own statistics
    for f, s in zip(fused, separate):
        assert f.summary["final"]["val_loss"] == pytest.approx(
            s.summary["final"]["val_loss"], abs=1e-5
        )


def test_interrupted_members_resume_with_the_trainer_and_the_group(tmp_path, patch_splits):
    members = [
        ["train.seed=0", "optim.lr=0.05", "optim.momentum=0.9"],
        ["train.seed=1", "optim.lr=0.1", "optim.weight_decay=0.01"],
    ]
    cfgs = _cfgs(members, "model=lenet5-modern")
    separate = _separate(cfgs, tmp_path, patch_splits)
    # Ctrl-C mid-epoch 2; each member then resumes on its own with the single-run trainer
    with pytest.raises(KeyboardInterrupt):
        train_group(
            cfgs,
            [tmp_path / f"a{i}" for i in range(2)],
            splits=patch_splits,
            callback=_stop_at(2, 3),
        )
    assert all(
        json.loads((tmp_path / f"a{i}" / "summary.json").read_text())["status"] == "interrupted"
        for i in range(2)
    )
    for i, cfg in enumerate(cfgs):
        run = train(cfg, run_dir=tmp_path / f"a{i}", resume=True, splits=patch_splits)
        assert [r["epoch"] for r in run.metrics] == [1, 2]
        _assert_close_weights(_weights(run.path), _weights(separate[i].path))
    # ... or together, as a group
    with pytest.raises(KeyboardInterrupt):
        train_group(
            cfgs,
            [tmp_path / f"b{i}" for i in range(2)],
            splits=patch_splits,
            callback=_stop_at(1, 5),
        )
    with pytest.raises(RunError, match="already holds a run"):
        train_group(cfgs, [tmp_path / f"b{i}" for i in range(2)], splits=patch_splits)
    runs = train_group(
        cfgs, [tmp_path / f"b{i}" for i in range(2)], splits=patch_splits, resume=True
    )
    for run, s in zip(runs, separate):
        assert run.status == "completed" and [r["epoch"] for r in run.metrics] == [1, 2]
        _assert_close_weights(_weights(run.path), _weights(s.path))


@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_a_group_stopped_after_an_epochs_last_step_resumes_at_its_evaluation(
    tmp_path, patch_splits, optim
):
    # Ctrl-C after the last step of epoch 1 and before its evaluation leaves last.pt at
    # batch 8 of 8 (the trainer resumes such a run, tests/engine/test_resume.py): the
    # group then has no step left in that epoch, and its per-step tables are empty.
    cfgs = _cfgs(
        [["train.seed=0", "optim.lr=0.01"], ["train.seed=1", "optim.lr=0.02"]], f"optim={optim}"
    )
    whole, runs = _whole_and_resumed(cfgs, tmp_path, patch_splits, _stop_at(1))
    for run, w in zip(runs, whole):
        assert run.status == "completed" and _metric_rows(run) == _metric_rows(w)
        for key, value in _weights(w.path).items():
            assert torch.equal(value, _weights(run.path)[key]), key


def test_a_resumed_group_with_dropout_draws_the_uninterrupted_groups_masks(tmp_path, patch_splits):
    # The default path of a small single run on CUDA (a group of one replaying a graph):
    # resume must continue the generators the masks come from, as the trainer's does.
    cfgs = _cfgs(MEMBERS[:2], "model=lenet5-modern", "model.dropout=0.5", "optim.lr=0.05")
    whole, runs = _whole_and_resumed(cfgs, tmp_path, patch_splits, _stop_at(1, 3))
    for run, w in zip(runs, whole):
        assert _metric_rows(run) == _metric_rows(w)


def test_resuming_a_finished_group_leaves_its_folders_untouched(tmp_path, patch_splits):
    # As the trainer does: on CUDA a small single run resumes through a group of one.
    cfgs = _cfgs(MEMBERS[:1])
    (run,) = train_group(cfgs, [tmp_path / "r"], splits=patch_splits)
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    (again,) = train_group(cfgs, [tmp_path / "r"], splits=patch_splits, resume=True)
    assert again.status == "completed"
    assert {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()} == before


def test_early_stopping_members(tmp_path, patch_splits):
    members = [["train.seed=0", "optim.lr=1e-9"], ["train.seed=1", "optim.lr=0.05"]]
    cfgs = _cfgs(members, "model=lenet5-modern", "train.epochs=4", "train.patience=1")
    fused = train_group(cfgs, [tmp_path / f"g{i}" for i in range(2)], splits=patch_splits)
    separate = _separate(cfgs, tmp_path, patch_splits)
    for f, s in zip(fused, separate):
        assert len(f.metrics) == len(s.metrics) and f.status == s.status == "completed"
        assert f.metrics[-1]["test_acc"] == pytest.approx(s.metrics[-1]["test_acc"], abs=1e-6)
        _assert_close_weights(_weights(f.path), _weights(s.path))


@pytest.mark.parametrize(
    "options",
    [
        {"name": "sgd", "nesterov": True},
        {"name": "sgd"},
        {"name": "adam"},
        {"name": "adamw"},
        {"name": "adagrad"},
        {"name": "rmsprop"},
    ],
    ids=lambda o: o["name"] + ("-nesterov" if o.get("nesterov") else ""),
)
def test_fused_optimizers_follow_torch_optim(options):
    # Same gradients in, same weights and state out: members with their own lr, momentum and decay.
    hyper = [
        (0.1, 0.9, 0.0),
        (0.01, 0.5, 0.05),
        (0.3, 0.9 if options.get("nesterov") else 0.0, 0.1),
    ]
    cfgs = [
        load_config(
            overrides=[f"optim.{k}={v}" for k, v in options.items()]
            + [f"optim.lr={lr}", f"optim.momentum={m}", f"optim.weight_decay={wd}"]
        ).optim
        for lr, m, wd in hyper
    ]
    torch.manual_seed(0)
    models = [create_model("lenet5", num_classes=4, in_channels=1, input_size=12) for _ in cfgs]
    from cnnlab.engine.fused import _Stack

    stack = _Stack(models, len(models), torch.device("cpu"))
    fused = FUSED_OPTIMIZERS.get(options["name"])(
        cfgs, stack.decay, (stack.k, stack.size), torch.device("cpu")
    )
    references = [build_optimizer(m, c) for m, c in zip(models, cfgs)]
    steps = 4
    lrs = torch.tensor([[c.lr * (0.5**s) for c in cfgs] for s in range(steps)], dtype=torch.float64)
    coefs = {k: v.float() for k, v in fused.coefficients(lrs, 0).items()}
    gen = torch.Generator().manual_seed(1)
    for s in range(steps):
        grads = torch.randn(stack.k, stack.size, generator=gen)
        for k, (model, opt) in enumerate(zip(models, references)):
            for group in opt.param_groups:
                group["lr"] = float(lrs[s, k])
            for name, p in model.named_parameters():
                p.grad = grads[k, stack.flat_slice(name)].reshape(p.shape).clone()
            opt.step()
        with torch.no_grad():
            fused.step(
                stack.flat,
                grads,
                {n: c[s][:, None] for n, c in coefs.items()},
                torch.ones(stack.k, 1, dtype=torch.bool),
            )
        fused.steps += 1  # the caller counts steps (a replayed CUDA graph runs no Python)
    for k, model in enumerate(models):
        for name, p in model.named_parameters():
            assert torch.allclose(
                stack.flat[k, stack.flat_slice(name)], p.detach().reshape(-1), atol=1e-6, rtol=1e-6
            ), name
        # the state converts to torch's optimizer state (what a resumed single run loads)
        state = references[k].state_dict()["state"]
        ours = {}
        for i, (name, p) in enumerate(model.named_parameters()):
            if fused.has_state(k):
                ours[name] = fused.torch_state(k, stack.flat_slice(name), p.shape)
        by_name = {
            name: references[k].state[p]
            for name, p in model.named_parameters()
            if p in references[k].state
        }
        assert ours.keys() == by_name.keys() and bool(state) == bool(ours)
        for name, slots in by_name.items():
            assert ours[name].keys() == slots.keys()
            for slot, value in slots.items():
                assert torch.allclose(
                    ours[name][slot].double(), value.double(), atol=1e-5, rtol=1e-5
                ), (name, slot)


def test_frozen_members_do_not_move():
    cfg = load_config(overrides=["optim.momentum=0.9"]).optim
    torch.manual_seed(0)
    from cnnlab.engine.fused import _Stack

    stack = _Stack(
        [create_model("lenet5", num_classes=4, in_channels=1, input_size=12) for _ in range(2)],
        2,
        torch.device("cpu"),
    )
    opt = FUSED_OPTIMIZERS.get("sgd")([cfg, cfg], stack.decay, (2, stack.size), torch.device("cpu"))
    before = stack.flat.clone()
    grads = torch.randn(2, stack.size)
    grads[1, 0] = float("nan")
    with torch.no_grad():
        opt.step(
            stack.flat, grads, {"neg_lr": torch.full((2, 1), -0.1)}, torch.tensor([[True], [False]])
        )
    assert torch.equal(stack.flat[1], before[1]) and not torch.equal(stack.flat[0], before[0])
    assert torch.isfinite(opt.slots["momentum_buffer"]).all()


def test_fusable_key_and_grouping():
    a = load_config(overrides=["train.seed=0"])
    b = load_config(
        overrides=["train.seed=5", "optim.lr=0.1", "optim.momentum=0.9", "optim.weight_decay=1e-4"]
    )
    c = load_config(overrides=["train.batch_size=128"])
    d = load_config(overrides=["model.activation=relu"])
    assert fusable_key(a) == fusable_key(b) is not None
    assert fusable_key(a) != fusable_key(c) and fusable_key(a) != fusable_key(d)
    for unfusable in (["train.precision=fp16"], ["train.devices=2"], ["train.tensorboard=true"]):
        assert fusable_key(load_config(overrides=unfusable)) is None
    fp16 = load_config(overrides=["train.precision=fp16"])
    assert group_runs([a, c, b, fp16, fp16, a], max_size=2) == [[0, 2], [5], [1], [3], [4]]
    with pytest.raises(ConfigError, match=r"differ in train.batch_size \(256 vs 128\)"):
        train_group([a, c], ["x", "y"])


def test_group_size_for_follows_memory():
    cfg = load_config(overrides=["train.device=cpu"])
    small = group_size_for(cfg, free_bytes=200 * 2**20, max_size=1000)
    large = group_size_for(cfg, free_bytes=2000 * 2**20, max_size=1000)
    assert 1 <= small < large
    # on a CPU only small steps fuse (measured; see fused._CPU_FUSE_MACS), at most 8
    assert group_size_for(cfg, free_bytes=2**40) == 1
    assert (
        group_size_for(
            load_config(overrides=["train.device=cpu", "train.batch_size=4"]), free_bytes=2**40
        )
        == 8
    )
    assert group_size_for(cfg, free_bytes=0, max_size=1000) == 1
    assert (
        group_size_for(
            load_config(overrides=["model=resnet18", "train.device=cpu"]),
            free_bytes=2000 * 2**20,
            max_size=1000,
        )
        < small
    )


@pytest.mark.parametrize(
    "extra",
    [
        ("model=lenet5", "data.augment.crop_padding=2", "data.augment.hflip=0.5"),
        (
            "model=lenet5-bn",
            "optim=adam",
            "optim.lr=0.01",
            "schedule=cosine",
            "train.grad_clip=1.0",
        ),
    ],
    ids=["sgd-augment", "adam-bn-clip"],
)
def test_graph_step_reads_only_its_buffers(tmp_path, patch_splits, monkeypatch, extra):
    # A CUDA graph replays a step on fixed buffers. On the CPU, EagerGraphStep runs the very
    # step a graph would record, on those buffers, so a group trained that way must end exactly
    # where the plain group ends (a missed buffer refill would repeat a stale batch or lr).
    from cnnlab.engine import accel

    cfgs = _cfgs(MEMBERS[:2], *extra, "train.batch_size=48")
    plain = train_group(cfgs, [tmp_path / f"p{i}" for i in range(2)], splits=patch_splits)
    calls = []

    class Counting(accel.EagerGraphStep):
        def __call__(self):
            calls.append(1)
            return super().__call__()

    monkeypatch.setitem(accel.GRAPH_STEP, "cpu", Counting)
    monkeypatch.setattr(accel, "use_cuda_graph", lambda setting, device, compiled: True)
    graphed = train_group(cfgs, [tmp_path / f"g{i}" for i in range(2)], splits=patch_splits)
    # 2 epochs of 256 images at batch 48: 5 full batches each go through the buffers,
    # the last batch of 16 runs on its own tensors
    assert len(calls) == 10
    for a, b in zip(plain, graphed):
        assert _metric_rows(a) == _metric_rows(b)
        for key, value in _weights(a.path).items():
            assert torch.equal(value, _weights(b.path)[key]), key


def test_a_failed_graph_capture_trains_eagerly_and_says_so_once(
    tmp_path, patch_splits, monkeypatch
):
    from cnnlab.engine import accel
    from cnnlab.engine.fused import GRAPH_NOTE

    class Failing(accel.EagerGraphStep):
        def __call__(self):
            self.failure = "operation not permitted when stream is capturing"
            return super().__call__()

    cfgs = _cfgs(MEMBERS[:2], "train.batch_size=48")
    plain = train_group(cfgs, [tmp_path / f"p{i}" for i in range(2)], splits=patch_splits)
    monkeypatch.setitem(accel.GRAPH_STEP, "cpu", Failing)
    monkeypatch.setattr(accel, "use_cuda_graph", lambda setting, device, compiled: True)
    eager = train_group(cfgs, [tmp_path / f"e{i}" for i in range(2)], splits=patch_splits)
    for a, b in zip(plain, eager):
        notes = b.summary["notes"]
        assert GRAPH_NOTE not in notes
        assert [n for n in notes if "capture failed" in n] == [
            "CUDA graph capture failed (operation not permitted when stream is capturing); steps ran eagerly"
        ]
        assert (b.path / "log.txt").read_text().count("capture failed") == 1  # 2 epochs, said once
        assert _metric_rows(a) == _metric_rows(b)


def test_a_worker_sharing_the_device_plans_in_its_share_of_the_memory():
    from cnnlab.engine.fused import _free_bytes

    cpu = torch.device("cpu")
    whole, tiny = _free_bytes(cpu), _free_bytes(cpu, share=1e-4)
    assert 0 < tiny < whole
    with open("/proc/meminfo") as fh:
        total = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemTotal"))
    assert tiny == int(total * 1e-4 * 0.5)
    cfg = load_config(overrides=["train.device=cpu", "train.batch_size=4"])
    assert group_size_for(cfg, share=1.0) == 8
    assert group_size_for(cfg, share=1e-9) == 1  # not even one member fits its share


@pytest.mark.parametrize("graph", [False, True])
def test_a_finished_group_is_freed_without_the_cyclic_collector(
    tmp_path, patch_splits, monkeypatch, graph
):
    # A study worker trains group after group in one process and sizes each from the
    # device's free memory: a finished group (its K x P weights, its data on the device,
    # its CUDA graph's memory pool) must go when train_group returns, not when gc runs.
    import gc
    import weakref

    from cnnlab.engine import accel, fused

    groups = []
    init = fused._Group.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        groups.append(weakref.ref(self))

    monkeypatch.setattr(fused._Group, "__init__", recording_init)
    if graph:
        monkeypatch.setitem(accel.GRAPH_STEP, "cpu", accel.EagerGraphStep)
        monkeypatch.setattr(accel, "use_cuda_graph", lambda setting, device, compiled: True)
    cfgs = _cfgs(MEMBERS[:2], "train.batch_size=48")
    gc.disable()
    try:
        runs = train_group(cfgs, [tmp_path / f"r{i}" for i in range(2)], splits=patch_splits)
        assert len(groups) == 1 and groups[0]() is None
    finally:
        gc.enable()
    assert all(r.status == "completed" for r in runs)


def test_a_real_ctrl_c_inside_a_group_step_resumes_exactly(tmp_path, patch_splits):
    """A SIGINT mid-forward (batch-norm statistics and dropout draws already moved on)
    waits for the step to end, so the checkpoint never holds half a step."""
    import signal

    from torch import nn

    cfgs = _cfgs(MEMBERS[:2], "model=lenet5-bn", "model.dropout=0.3")
    whole = train_group(cfgs, [tmp_path / f"w{i}" for i in range(2)], splits=patch_splits)
    calls = [0]

    def forward_hook(module, args, output):
        if module.training and isinstance(module, nn.modules.batchnorm._BatchNorm):
            calls[0] += 1
            if calls[0] == 13:  # inside the fourth step (four norms per step)
                signal.raise_signal(signal.SIGINT)

    dirs = [tmp_path / f"r{i}" for i in range(2)]
    hook = nn.modules.module.register_module_forward_hook(forward_hook)
    try:
        with pytest.raises(KeyboardInterrupt):
            train_group(cfgs, dirs, splits=patch_splits)
    finally:
        hook.remove()
    assert calls[0] >= 13
    runs = train_group(cfgs, dirs, splits=patch_splits, resume=True)
    for run, w in zip(runs, whole):
        assert run.status == "completed" and _metric_rows(run) == _metric_rows(w)
        for key, value in _weights(w.path).items():
            assert torch.equal(value, _weights(run.path)[key]), key
