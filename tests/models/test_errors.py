"""Every bad input to the model zoo gives one clear line, in Python and on the command line."""

from __future__ import annotations

import pytest
import torch

from cnnlab.cli import main
from cnnlab.errors import ModelError, RegistryError
from cnnlab.models import check_forward, check_options, create_model


def test_unknown_model_lists_what_exists():
    with pytest.raises(RegistryError, match=r"unknown model 'resnet7'; available: .*resnet18"):
        create_model("resnet7")


def test_names_accept_underscores_and_case():
    assert type(create_model("LeNet5_BN")) is type(create_model("lenet5-bn"))


def test_unknown_option_lists_the_options():
    with pytest.raises(
        ModelError, match=r"model 'resnet18' has no option 'depth'; options: .*blocks"
    ):
        create_model("resnet18", depth=14)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("lenet5", {"activation": "swish2"}, r"activation='swish2' is not allowed; choose one of"),
        ("lenet5", {"norm": "batchy"}, r"norm='batchy' is not allowed; choose one of: batch"),
        ("vgg11", {"pool": "min"}, r"pool='min' is not allowed; choose one of: avg, max"),
        ("resnet18", {"pool": "min", "stem": "small"}, r"pool='min'"),  # even if unused
        ("resnet18", {"stem": "cifar"}, r"stem='cifar' is not allowed; choose one of: imagenet"),
        ("resnet18", {"block": "wide"}, r"block='wide' is not allowed; choose one of: basic"),
        ("resnet18", {"shortcut": "B"}, r"shortcut='B' is not allowed; choose one of: projection"),
        ("resnet18", {"blocks": [2, 0]}, r"blocks=\[2, 0\] is not allowed"),
        ("resnet18", {"residual": "yes"}, r"residual='yes' is not allowed; use true or false"),
        ("resnet18", {"width": 0}, r"width=0 is not allowed; use a positive multiplier"),
        (
            "resnet18",
            {"dropout": 1.0},
            r"dropout=1.0 is not allowed; use a probability in \[0, 1\)",
        ),
        ("lenet5", {"channels": [6, 16, 32]}, r"channels=\[6, 16, 32\] is not allowed"),
        ("nin", {"pointwise_convs": -1}, r"pointwise_convs=-1 is not allowed"),
        ("densenet121", {"compression": 0}, r"compression=0 is not allowed"),
        ("densenet121", {"blocks": []}, r"blocks=\[\] is not allowed"),
        # Models whose only dropout is the classifier's once read these as "no dropout".
        ("resnet18", {"dropout": -0.5}, r"dropout=-0.5 is not allowed; use a probability"),
        ("googlenet", {"dropout": -0.1}, r"dropout=-0.1 is not allowed"),
        ("densenet-small", {"dropout": float("nan")}, r"dropout=nan is not allowed"),
        ("nin", {"dropout": -0.5}, r"dropout=-0.5 is not allowed"),
        ("resnet18", {"width": float("inf")}, r"width=inf is not allowed; use a positive"),
        ("vgg11", {"width": float("nan")}, r"width=nan is not allowed; use a positive"),
        ("lenet5", {"conv_activation": "swish2"}, r"conv_activation='swish2' is not allowed"),
    ],
)
def test_bad_option_values_name_the_value(name, options, message):
    with torch.device("meta"), pytest.raises(ModelError, match=f"model '{name}': {message}"):
        create_model(name, **options)


@pytest.mark.parametrize(
    ("name", "size", "layer"),
    [
        ("lenet5", 8, "features.conv2.conv"),
        ("alexnet", 32, "features.pool2"),
        ("vgg11", 16, "features.block5.pool"),
        ("nin", 64, "features.pool3"),
    ],
)
def test_impossible_input_size_names_the_layer(name, size, layer):
    with torch.device("meta"), pytest.raises(ModelError) as err:
        create_model(name, input_size=size)
    text = str(err.value)
    assert f"cannot take input 1x{size}x{size}" in text and f"layer '{layer}'" in text
    assert "\n" not in text


def test_instance_norm_on_a_one_pixel_map_fails_at_construction():
    with pytest.raises(ModelError, match=r"layer 'features.stage4.*norm"):
        create_model("resnet18", input_size=32, norm="instance")


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("lenet5", {"padding": -1}, r"padding=-1 is not allowed; use an integer >= 0"),
        ("lenet5", {"kernel_size": -1}, r"kernel_size=-1 is not allowed; use an integer >= 1"),
        ("lenet5", {"kernel_size": 0}, r"kernel_size=0 is not allowed; use an integer >= 1"),
        ("lenet5", {"kernel_size": "abc"}, r"kernel_size='abc' is not allowed; use an integer"),
        ("lenet5", {"conv2_kernel_size": 0}, r"conv2_kernel_size=0 is not allowed"),
        ("lenet5", {"pool_size": 0}, r"pool_size=0 is not allowed"),
        ("lenet5", {"pool_stride": 0}, r"pool_stride=0 is not allowed"),
        ("lenet5", {"hidden": [-5]}, r"hidden=\[-5\] is not allowed; use a list of integers >= 1"),
        ("lenet5", {"hidden": [0]}, r"hidden=\[0\] is not allowed; .* such as \[120, 84\]"),
        ("lenet5", {"hidden": -3}, r"hidden=-3 is not allowed; use a list of integers >= 1"),
        ("lenet5", {"hidden": "abc"}, r"hidden='abc' is not allowed; use a list of integers"),
        ("lenet5", {"channels": [-1, 16]}, r"channels=\[-1, 16\] is not allowed"),
        ("lenet5", {"channels": [6.5, 16]}, r"channels=\[6.5, 16\] is not allowed"),
        ("lenet5", {"channels": [True, 16]}, r"channels=\[True, 16\] is not allowed"),
        ("mlp", {"hidden": [-1]}, r"hidden=\[-1\] is not allowed"),
        ("vgg11", {"hidden": 0}, r"hidden=0 is not allowed; use an integer >= 1"),
        ("densenet121", {"bn_size": -1}, r"bn_size=-1 is not allowed; use an integer >= 0"),
        ("googlenet", {"branch_kernel": 0}, r"branch_kernel=0 is not allowed"),
        ("resnet18", {"width": "wide"}, r"width='wide' is not allowed; use a number"),
    ],
)
def test_option_values_are_checked_by_the_kind_the_builder_declares(name, options, message):
    with torch.device("meta"), pytest.raises(ModelError, match=f"model '{name}': {message}"):
        create_model(name, **options)
    with pytest.raises(ModelError, match=message):
        check_options(name, options)  # the same check without building (config, studies)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("lenet5", {"padding": 0}),
        ("densenet-small", {"bn_size": 0}),
        ("nin", {"pointwise_convs": 0}),
        ("mlp", {"hidden": []}),
        ("lenet5", {"pool_stride": None, "padding": None}),
    ],
)
def test_zero_and_none_stay_allowed_where_the_builder_says_so(name, options):
    with torch.device("meta"):
        create_model(name, **options)


def test_a_failure_the_checks_miss_is_one_line_naming_model_and_options(monkeypatch):
    from cnnlab import models

    monkeypatch.setattr(models, "check_option_values", lambda builder, options: None)
    with pytest.raises(ModelError) as err:
        create_model("lenet5", hidden=[-5])
    text = str(err.value)
    assert text.startswith("model 'lenet5' cannot be built with hidden=[-5] (")
    model = create_model("lenet5", padding=-1)  # the meta dry run does not see this one
    with pytest.raises(ModelError, match=r"model 'lenet5' cannot run with padding=-1 \(negative"):
        check_forward(model, 1, (28, 28), name="lenet5", options={"padding": -1})
    assert model.training  # the mode is restored


# -- the command line


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_summary_lenet5_shows_the_classic_table(capsys):
    code, out, err = _run(capsys, "summary", "lenet5", "--input", "1x28x28")
    assert code == 0, err
    for text in ("6x28x28", "6x14x14", "16x10x10", "16x5x5", "features.conv1.conv"):
        assert text in out
    lines = out.splitlines()
    assert any("parameters" in line and "61,706" in line for line in lines)
    assert any("MACs" in line and "416,520" in line for line in lines)
    assert any("FLOPs" in line and "833,040" in line for line in lines)
    assert any("activation memory" in line and "KiB" in line for line in lines)


def test_cli_summary_takes_yaml_options_and_depth(capsys):
    code, out, err = _run(
        capsys, "summary", "resnet18", "--input", "3x32x32", "--classes", "100",
        "--option", "blocks=[2,2,1,1]", "--option", "residual=false", "-o", "stem=small",
        "--depth", "2",
    )  # fmt: skip
    assert code == 0, err
    assert "features.stage4" in out and "512x4x4" in out and "100 classes" in out
    assert "shortcut" not in out


def test_cli_summary_defaults_to_the_models_input(capsys):
    code, out, _ = _run(capsys, "summary", "lenet-cifar")
    assert code == 0 and "input 3x32x32" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["summary", "lenet5", "--input", "28x28"],
            "--input '28x28' is not allowed; expected CxHxW",
        ),
        (["summary", "lenet5", "--input", "1x0x28"], "--input '1x0x28' is not allowed"),
        (["summary", "lenet6"], "unknown model 'lenet6'; available:"),
        (["summary", "lenet5", "-o", "kernel=3"], "model 'lenet5' has no option 'kernel'"),
        (["summary", "lenet5", "-o", "activation=swish2"], "activation='swish2' is not allowed"),
        (["summary", "lenet5", "-o", "norm"], "--option 'norm' is not allowed; expected KEY=VALUE"),
        (["summary", "lenet5", "-o", "hidden=[1,"], "is not a valid YAML value"),
        (["summary", "lenet5", "--input", "1x8x8"], "layer 'features.conv2.conv' fails"),
        (["summary", "lenet5", "-o", "kernel_size=0"], "kernel_size=0 is not allowed"),
        (["summary", "lenet5", "-o", "padding=-1"], "padding=-1 is not allowed"),
        (["summary", "lenet5", "-o", "hidden=[-1]"], "hidden=[-1] is not allowed"),
        (["summary", "resnet18", "-o", "width=.inf"], "width=inf is not allowed"),
        (["summary", "resnet18", "-o", "dropout=-0.5"], "dropout=-0.5 is not allowed"),
        (["summary", "lenet5", "--depth", "0"], "--depth 0 is not allowed; use 1 or more"),
        (["summary", "lenet5", "--depth", "-1"], "--depth -1 is not allowed"),
        (["models", "transformer"], "no model matches 'transformer'"),
    ],
)
def test_cli_errors_are_one_line_with_status_2(capsys, argv, message):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and not out
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1


def test_cli_models_lists_names_descriptions_and_inputs(capsys):
    code, out, _ = _run(capsys, "models")
    assert code == 0
    for text in ("lenet5", "sigmoid, avg pooling", "1x28x28", "resnet18", "vgg16-small", "3x32x32"):
        assert text in out
    code, out, _ = _run(capsys, "models", "resnet")
    assert code == 0 and "resnet50" in out and "lenet5" not in out
    code, out, _ = _run(capsys, "models", "vgg1?")
    assert code == 0 and "vgg16" in out and "vgg16-small" not in out
