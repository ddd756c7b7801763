import pytest

from cnnlab.config import RunConfig, load_config, parse_overrides, read_yaml
from cnnlab.errors import ConfigError


def test_defaults_are_the_textbook_baseline():
    cfg = RunConfig()
    assert (cfg.model.name, cfg.data.name) == ("lenet5", "fashion-mnist")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("sgd", 0.9, 0.0)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.model.init) == (256, 10, "xavier")


def test_dotted_overrides_and_shorthands():
    cfg = load_config(
        overrides=[
            "model=resnet18",
            "model.stem=small",
            "data=cifar10",
            "optim.lr=0.1",
            "train.epochs=30",
        ]
    )
    assert cfg.model.name == "resnet18" and cfg.model.options() == {"stem": "small"}
    assert cfg.data.name == "cifar10" and cfg.optim.lr == 0.1 and cfg.train.epochs == 30


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("optim:\n  lr: 0.05\n  name: adam\ntrain:\n  epochs: 3\n")
    cfg = load_config(f, ["train.epochs=4"])
    assert (cfg.optim.name, cfg.optim.lr, cfg.train.epochs) == ("adam", 0.05, 4)


def test_changing_model_drops_old_options():
    base = load_config(overrides=["model=resnet18", "model.stem=small"])
    cfg = load_config(overrides=["model=lenet5"], base=base)
    assert cfg.model.options() == {}


@pytest.mark.parametrize(
    "override, needles",
    [
        ("optim.lrr=0.1", ["optim.lrr", "allowed keys in optim", "lr"]),
        ("trian.epochs=3", ["trian", "allowed keys", "train"]),
        ("optim.lr=-1", ["optim.lr=-1", "greater than 0"]),
        ("optim.lr=abc", ["optim.lr='abc'", "number"]),
        ("train.epochs=0", ["train.epochs=0", "greater than or equal to 1"]),
        ("optim=lbfgs", ["optim.name='lbfgs'", "sgd"]),
        ("model=resnet9000", ["resnet9000", "lenet5"]),
        ("model.wings=2", ["model.wings", "lenet5"]),
        ("data=imagenet22k", ["imagenet22k", "fashion-mnist"]),
        ("train.device=tpu", ["train.device='tpu'"]),
        ("optim.nesterov=true", ["nesterov", "momentum"]),
        ("epochs", ["key=value"]),
    ],
)
def test_bad_values_name_key_value_and_allowed(override, needles):
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=[override])
    msg = str(exc.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_yaml_python_tags_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.yaml"
    f.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(f)
    assert not marker.exists()


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(f)


def test_parse_overrides_types():
    tree = parse_overrides(
        [
            "model.blocks=[1,1,1]",
            "train.grad_clip=none",
            "data.augment.hflip=0.5",
            "model.residual=false",
        ]
    )
    assert tree == {
        "model": {"blocks": [1, 1, 1], "residual": False},
        "train": {"grad_clip": None},
        "data": {"augment": {"hflip": 0.5}},
    }


def test_fingerprint_stable_and_sensitive():
    a, b = load_config(overrides=["optim.lr=0.1"]), load_config(overrides=["optim.lr=0.1"])
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != load_config(overrides=["optim.lr=0.2"]).fingerprint()
    assert "optim.lr=0.1" in a.short()


def test_resume_fingerprint_ignores_only_which_gpu():
    def fp(*overrides):
        return load_config(overrides=["optim.lr=0.1", *overrides])

    assert (
        fp("train.device=cuda:0").resume_fingerprint()
        == fp("train.device=cuda:1").resume_fingerprint()
    )
    assert (
        fp("train.device=cuda:1").resume_fingerprint()
        == fp("train.device=cuda").resume_fingerprint()
    )
    assert fp("train.device=cuda:0").fingerprint() != fp("train.device=cuda:1").fingerprint()
    assert (
        fp("train.device=cpu").resume_fingerprint() != fp("train.device=cuda").resume_fingerprint()
    )
    assert fp().resume_fingerprint() != fp("optim.lr=0.2").resume_fingerprint()


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=true", "optim.lr=true: expected a number"),
        ("train.epochs=true", "train.epochs=true: expected a number"),
        ("train.batch_size=true", "train.batch_size=true: expected a number"),
        ("data.subset=true", "data.subset=true: expected a number"),
        ("data.augment.hflip=false", "data.augment.hflip=false: expected a number"),
        ("train.grad_clip=true", "train.grad_clip=true: expected a number"),
        ("optim.betas=[0.9,true]", "optim.betas=[0.9, true]: expected a number"),
        ("schedule.milestones=[true]", "schedule.milestones=[true]: expected a number"),
    ],
)
def test_booleans_are_not_numbers(override, message):
    # pydantic reads true as 1: optim.lr=true trained at lr 1.0, train.epochs=true for one epoch
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=[override])
    assert str(exc.value) == message


def test_booleans_stay_booleans_and_tri_states_keep_auto():
    cfg = load_config(overrides=["train.deterministic=true", "train.cuda_graph=false"])
    assert cfg.train.deterministic is True and cfg.train.cuda_graph is False


@pytest.mark.parametrize("betas", ["[0.9]", "0.9", "[0.9,0.99,0.5]"])
def test_betas_need_two_numbers(betas):
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["optim=adam", f"optim.betas={betas}"])
    assert str(exc.value).endswith(": give two numbers, e.g. [0.9, 0.999]")
    assert str(exc.value).startswith("optim.betas=")


@pytest.mark.parametrize("milestones", ["[-1]", "[0,5]"])
def test_milestones_are_epochs_from_one(milestones):
    with pytest.raises(ConfigError, match=r"schedule.milestones=.* use epochs >= 1"):
        load_config(overrides=["schedule=multistep", f"schedule.milestones={milestones}"])
    cfg = load_config(overrides=["schedule=multistep", "schedule.milestones=[10,5]"])
    assert cfg.schedule.milestones == [10, 5]


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model.kernel_size=0",
            "model 'lenet5': kernel_size=0 is not allowed; use an integer >= 1",
        ),
        ("model.hidden=-3", "model 'lenet5': hidden=-3 is not allowed; use a list of integers"),
        ("model.padding=-1", "model 'lenet5': padding=-1 is not allowed; use an integer >= 0"),
    ],
)
def test_model_option_values_are_checked_with_the_config(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=[override])
    assert str(exc.value).startswith(message)


@pytest.mark.parametrize("text, value", [("1e-3", 0.001), ("1E3", 1000.0), ("-2e+2", -200.0)])
def test_exponent_floats_are_numbers(text, value):
    # PyYAML (YAML 1.1) reads 1e-3 as the string '1e-3'; a model option then refused it.
    from cnnlab.config import parse_value

    assert parse_value(text) == value and isinstance(parse_value(text), float)
    if value < 1:
        assert load_config(overrides=[f"model.dropout={text}"]).model.options() == {
            "dropout": value
        }


def test_exponent_floats_in_files_and_overrides_mean_the_same_run(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model:\n  dropout: 1e-1\noptim:\n  lr: 1e-3\n")
    from_file = load_config(f)
    typed = load_config(overrides=["model.dropout=1e-1", "optim.lr=1e-3"])
    plain = load_config(overrides=["model.dropout=0.1", "optim.lr=0.001"])
    assert from_file.model.options() == {"dropout": 0.1}
    assert from_file.fingerprint() == typed.fingerprint() == plain.fingerprint()


def test_saved_config_reads_back_strings_that_look_like_exponents(tmp_path):
    from cnnlab.config import save_config

    cfg = load_config(overrides=["data.root='1e3'"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.data.root == "1e3" and again.fingerprint() == cfg.fingerprint()


@pytest.mark.parametrize(
    "spellings, stored",
    [
        (["model.activation=ReLU", "model.activation=relu"], {"activation": "relu"}),
        (
            ["model=lenet5-modern model.dropout=0", "model=lenet5-modern model.dropout=0.0"],
            {"dropout": 0.0},
        ),
        (
            ["model=resnet18 model.shortcut=zero_pad", "model=resnet18 model.shortcut=zero-pad"],
            {"shortcut": "zero-pad"},
        ),
        (["model=resnet18 model.width=1", "model=resnet18 model.width=1.0"], {"width": 1.0}),
    ],
)
def test_model_option_spellings_of_one_network_are_one_run(spellings, stored):
    # Names are looked up case-insensitively and 0 is 0.0: a different run key would
    # train the same network twice in a study and report it as a level of its own.
    configs = [load_config(overrides=s.split()) for s in spellings]
    assert len({c.fingerprint() for c in configs}) == 1
    assert configs[0].model.options() == stored


@pytest.mark.parametrize("value", ["none", "null", "~"])
def test_norm_none_can_be_typed_on_the_command_line(value):
    # `none` is read as null on the command line; norm takes the name 'none' and never null.
    cfg = load_config(overrides=["model=resnet18", f"model.norm={value}"])
    assert cfg.model.options() == {"norm": "none"}
    assert load_config(overrides=["model.conv_activation=none"]).model.options() == {
        "conv_activation": None
    }


@pytest.mark.parametrize("betas", ["[1.5,0.99]", "[0.9,1]", "[-0.1,0.9]", "[.nan,0.9]"])
def test_betas_are_below_one(betas):
    # torch refused them only when building the optimizer, with a traceback.
    with pytest.raises(ConfigError, match=r"optim.betas=.* use two numbers in \[0, 1\)"):
        load_config(overrides=["optim=adam", f"optim.betas={betas}"])


def test_cosine_min_lr_above_the_lr_is_refused():
    # It raised the lr from 0.9 to 5 over the run instead of decaying it.
    with pytest.raises(ConfigError, match="schedule.min_lr=5.0 is above optim.lr=0.9"):
        load_config(overrides=["schedule=cosine", "schedule.min_lr=5"])
    assert load_config(overrides=["schedule=step", "schedule.min_lr=5"]).schedule.min_lr == 5


@pytest.mark.parametrize(
    "overrides",
    [
        ["optim={name: adam, lr: 0.01}"],
        ["optim=adam", "optim={lr: 0.01}"],
        ["optim={lr: 0.01}", "optim=adam"],
    ],
)
def test_a_whole_section_can_be_set(overrides):
    # `optim={...}` was read as the optimizer's name: "optim.name={'name': 'adam', ...}".
    cfg = load_config(overrides=overrides)
    assert (cfg.optim.name, cfg.optim.lr) == ("adam", 0.01)
    cfg = load_config(overrides=["model=resnet18", "model={stem: small, width: 0.5}"])
    assert cfg.model.name == "resnet18" and cfg.model.options() == {"stem": "small", "width": 0.5}
