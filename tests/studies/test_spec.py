"""Spec validation and expansion: what runs a spec means, and errors that name the key."""

from __future__ import annotations

import pytest
import yaml

from cnnlab.errors import StudyError
from cnnlab.studies.spec import expand, load_spec, run_key, spec_from_dict, trained_plans
from tests.studies.conftest import tiny_spec


def test_one_factor_at_a_time_with_repeats_and_paired_seeds():
    spec = spec_from_dict(
        tiny_spec(vary={"optim.lr": [0.1, 0.5, 0.9], "model.pool": ["max"]}, repeats=3)
    )
    plans = expand(spec)
    variants = list(dict.fromkeys(p.variant for p in plans))
    # lr=0.5 equals the base: dropped, not run twice.
    assert variants == ["base", "optim.lr=0.1", "optim.lr=0.9", "model.pool=max"]
    assert len(plans) == 4 * 3
    for p in plans:
        assert p.seed == p.repeat == p.config.train.seed
        assert p.key == run_key(p.config)
    assert len({p.key for p in plans}) == len(plans)
    lr01 = [p for p in plans if p.variant == "optim.lr=0.1"]
    assert all(p.factor == "optim.lr" and p.factors == {"optim.lr": 0.1} for p in lr01)
    base = [p for p in plans if p.variant == "base"]
    assert all(p.factor is None and p.factors == {} for p in base)


def test_seeds_start_at_the_base_seed():
    data = tiny_spec(repeats=2)
    data["base"]["train"]["seed"] = 7
    plans = expand(spec_from_dict(data))
    assert sorted({p.seed for p in plans}) == [7, 8]


def test_grid_and_named_variants():
    spec = spec_from_dict(
        tiny_spec(
            vary={},
            grid={"model.pool": ["avg", "max"], "model.activation": ["sigmoid", "relu"]},
            variants={"wide": {"model.channels": [8, 16]}},
            repeats=1,
        )
    )
    plans = expand(spec)
    labels = [p.variant for p in plans]
    # (avg, sigmoid) is the base; three more grid points; one named variant.
    assert labels == [
        "base",
        "model.pool=avg,model.activation=relu",
        "model.pool=max,model.activation=sigmoid",
        "model.pool=max,model.activation=relu",
        "wide",
    ]
    # Every grid point is in the grid's group and names every grid key, also where
    # it differs from the base in one key only.
    assert [p.factor for p in plans] == [None, *["model.pool × model.activation"] * 3, None]
    assert plans[1].factors == {"model.pool": "avg", "model.activation": "relu"}
    assert plans[3].factors == {"model.pool": "max", "model.activation": "relu"}
    assert plans[4].factors == {"model.channels": [8, 16]}


def test_values_that_read_alike_are_refused_with_a_request_for_a_label():
    twice = {"optim.name": [{"value": "adam", "with": {"optim.lr": 0.001}}, {"value": "adam"}]}
    with pytest.raises(StudyError, match=r"vary.optim.name\[1\]: 'adam' is listed twice.*label"):
        expand(spec_from_dict(tiny_spec(vary=twice)))
    like_base = {"optim.name": [{"value": "sgd", "with": {"optim.momentum": 0.9}}]}
    with pytest.raises(StudyError, match=r"'sgd' reads like the base's value.*optim.momentum"):
        expand(spec_from_dict(tiny_spec(vary=like_base)))
    labelled = {
        "optim.name": [
            {"value": "adam", "with": {"optim.lr": 0.001}, "label": "adam-1e-3"},
            {"value": "adam", "with": {"optim.lr": 0.1}, "label": "adam-0.1"},
            {"value": "sgd", "with": {"optim.momentum": 0.9}, "label": "sgd-momentum"},
        ]
    }
    plans = expand(spec_from_dict(tiny_spec(vary=labelled, repeats=1)))
    assert [p.variant for p in plans] == [
        "base",
        "optim.name=adam-1e-3",
        "optim.name=adam-0.1",
        "optim.name=sgd-momentum",
    ]


def test_values_with_companion_settings_and_labels():
    spec = spec_from_dict(
        tiny_spec(
            vary={
                "model.name": [{"value": "mlp", "with": {"model.hidden": [64]}, "label": "an-mlp"}]
            },
            repeats=1,
        )
    )
    plans = expand(spec)
    mlp = plans[1]
    assert mlp.variant == "model.name=an-mlp"
    assert mlp.factor == "model.name"
    assert mlp.config.model.name == "mlp"
    options = mlp.config.model.options()
    assert options["hidden"] == [64] and "channels" not in options  # lenet5's options dropped
    assert mlp.factors["model.name"] == "mlp"


def test_shorthand_factor_keys():
    spec = spec_from_dict(tiny_spec(vary={"optim": ["adam"]}, repeats=1))
    assert list(spec.vary) == ["optim.name"]
    assert expand(spec)[1].config.optim.name == "adam"


def test_device_is_not_part_of_the_run_key():
    a = expand(spec_from_dict(tiny_spec()))
    data = tiny_spec()
    data["base"]["train"]["device"] = "auto"
    b = expand(spec_from_dict(data))
    assert [p.key for p in a] == [p.key for p in b]


def test_epochs_factor_is_answered_from_the_longest_run():
    spec = spec_from_dict(tiny_spec(vary={"train.epochs": [1, 2, 3], "optim.lr": [0.1]}, repeats=2))
    plans = expand(spec)
    trained = trained_plans(plans)
    # Per repeat: the 3-epoch run is trained (testing every epoch); base (1) and 2 are read off it.
    assert sorted((p.variant, p.repeat) for p in trained) == [
        ("optim.lr=0.1", 0), ("optim.lr=0.1", 1), ("train.epochs=3", 0), ("train.epochs=3", 1),
    ]  # fmt: skip
    for source in (p for p in trained if p.variant == "train.epochs=3"):
        assert source.config.train.test_every_epoch
        assert {d.variant for d in source.derives} == {"base", "train.epochs=2"}
        assert all(d.derived_from == source.key and d.seed == source.seed for d in source.derives)
    derived = [p for p in plans if p.derived_from]
    assert len(derived) == 4 and not any(p.config.train.test_every_epoch for p in derived)


def test_epochs_factor_trains_every_run_when_the_schedule_depends_on_epochs():
    data = tiny_spec(vary={"train.epochs": [1, 2]}, repeats=1)
    data["base"]["schedule"] = {"name": "cosine"}
    plans = expand(spec_from_dict(data))
    assert all(p.derived_from is None and not p.derives for p in plans)
    data["base"]["schedule"] = {"name": "step", "step_size": 1}
    data["epochs_from_curves"] = False
    assert all(p.derived_from is None for p in expand(spec_from_dict(data)))


def test_quick_overrides():
    data = tiny_spec(
        vary={"optim.lr": [0.1, 0.2, 0.3], "model.pool": ["max"]},
        repeats=10,
        quick={
            "base": {"data": {"subset": 100}},
            "vary": {"optim.lr": [0.1], "model.pool": None},
            "repeats": 1,
        },
    )
    spec = spec_from_dict(data).with_quick()
    assert spec.repeats == 1
    assert list(spec.vary) == ["optim.lr"]
    assert spec.base_config().data.subset == 100
    assert len(expand(spec)) == 2


def test_resolved_spec_round_trips(tmp_path):
    data = tiny_spec(
        vary={"model.name": [{"value": "mlp", "with": {"model.hidden": [64]}}], "optim.lr": [0.1]}
    )
    spec = spec_from_dict(data)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.to_yaml_dict()))
    again = load_spec(path)
    assert [p.key for p in expand(again)] == [p.key for p in expand(spec)]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"vary": {"optim.lrr": [0.1]}}, "vary.optim.lrr[0]: unknown key 'optim.lrr'"),
        ({"vary": {"optim.lr": [-1]}}, "vary.optim.lr[0]: optim.lr=-1"),
        ({"vary": {"model.pooling": ["max"]}}, "model.pooling is not an option of 'lenet5'"),
        ({"vary": {"optim.lr": 0.1}}, "vary.optim.lr must be a non-empty list"),
        ({"vary": {"optim.lr": []}}, "vary.optim.lr must be a non-empty list"),
        ({"grid": {"train.batch_size": [0]}}, "grid point train.batch_size=0: train.batch_size=0"),
        (
            {"variants": {"x": {"data.name": "nope"}}},
            "variants.x: data.name='nope' is not a data set",
        ),
        ({"repeats": 0}, "repeats=0"),
        ({"metric": "accuracy"}, "metric='accuracy'"),
        ({"fuse": "yes"}, "fuse='yes'"),
        ({"repeat": 3}, "unknown key 'repeat'"),
        ({"name": "../evil"}, "name='../evil'"),
    ],
)
def test_spec_errors_name_the_key(change, needle):
    with pytest.raises(StudyError) as info:
        spec_from_dict({**tiny_spec(), **change})
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            {"variants": {"wide": {"model.channels": [12]}}},
            "study 'tiny' variants.wide: model 'lenet5': channels=[12] is not allowed",
        ),
        (
            {"vary": {"model.kernel_size": [3, 0]}},
            "study 'tiny' vary.model.kernel_size[1]: model 'lenet5': kernel_size=0 is not allowed",
        ),
        (
            {"grid": {"model.hidden": [[16], [-1]], "optim.lr": [0.1]}},
            "model 'lenet5': hidden=[-1] is not allowed; use a list of integers >= 1",
        ),
        (
            {"variants": {"r": {"model": "resnet18", "model.blocks": [2, 0]}}},
            "study 'tiny' variants.r: model 'resnet18': blocks=[2, 0] is not allowed",
        ),
    ],
)
def test_a_model_that_cannot_be_built_is_refused_before_anything_trains(change, needle):
    # such a variant passed --dry-run, then failed three times in a real run that exited 0
    with pytest.raises(StudyError) as info:
        spec_from_dict({**tiny_spec(), **change})
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            {"variants": {"mine": {"data.root": "/some/tree"}}},
            "study 'tiny' variants.mine: data set 'fashion-mnist' has no option 'root'",
        ),
        (
            {"vary": {"data.name": ["imagefolder"]}},
            "study 'tiny' vary.data.name[0]: data set 'imagefolder' needs root=...",
        ),
    ],
)
def test_a_data_option_train_refuses_is_refused_before_anything_trains(change, needle):
    # such a spec passed --dry-run, then every run failed its retries (exit 1)
    with pytest.raises(StudyError) as info:
        spec_from_dict({**tiny_spec(), **change})
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_data_options_a_data_set_has_are_accepted():
    spec = spec_from_dict(tiny_spec(variants={"own": {"data": "imagefolder", "data.root": "/t"}}))
    assert "own" in {p.variant for p in expand(spec)}  # the tree is only read when it trains


def test_an_input_size_is_left_to_the_data():
    # pool_size=6 does not fit lenet5's own 28x28 (4x4 before the 5x5 conv2) but fits the
    # 64x64 images this variant trains on: the expansion builds at the model's size and
    # leaves sizes to the trainer, which checks them against the real images.
    spec = spec_from_dict(tiny_spec(variants={"big": {"model.pool_size": 6, "data.resize": 64}}))
    assert "big" in {p.variant for p in expand(spec)}


def test_base_errors_name_the_key(tmp_path):
    data = tiny_spec()
    data["base"]["train"]["epochs"] = "ten"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(StudyError, match=r"base: train.epochs='ten'"):
        load_spec(path)


def test_yaml_with_python_tags_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nbase: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_spec(path)


def test_spec_name_defaults_to_the_file_name(tmp_path):
    data = tiny_spec()
    del data["name"]
    path = tmp_path / "my-study.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_spec(path).name == "my-study"


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "{}\n"])
def test_an_empty_spec_file_is_an_error_not_a_default_run(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(
        StudyError, match=r"study spec '.*empty.yaml' is empty; give at least base: or vary:"
    ):
        load_spec(path)


def test_fuse_off_written_bare_in_yaml_means_off(tmp_path):
    # YAML reads a bare `off` as false; the docs write `fuse: off`.
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec()) + "fuse: off\n")
    assert load_spec(path).fuse == "off"


def test_option_values_written_differently_from_the_base_are_the_base():
    # dropout 0 is the default 0.0 and Sigmoid is lenet5's sigmoid: the same network.
    vary = {"model.dropout": [0, 0.5], "model.activation": ["Sigmoid", "relu"]}
    plans = expand(spec_from_dict(tiny_spec(vary=vary, repeats=1)))
    assert [p.variant for p in plans] == [
        "base",
        "model.dropout=0.5",
        "model.activation=relu",
    ]
