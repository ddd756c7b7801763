"""The typed run config: one object with sections data, model, optim, schedule, train.

A config comes from defaults, then an optional YAML file, then dotted overrides
typed on the command line (``optim.lr=0.05 model=resnet18 model.stem=small``).
Every failure (unknown key, wrong type, out-of-range value) becomes one
:class:`~cnnlab.errors.ConfigError` line naming the key, the value and what is
allowed, before any work starts.

The defaults reproduce the textbook baseline: classic LeNet-5 on Fashion-MNIST,
SGD with lr 0.9, batch 256, 10 epochs, Xavier init, no weight decay.
"""

from __future__ import annotations

import hashlib
import json
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.registry import normalize_name


def _is_numeric(annotation: Any) -> bool:
    """Whether a field holds numbers (``int``, ``float | None``, ``list[int]``, ...) and no bools."""
    if annotation in (int, float):
        return True
    args = typing.get_args(annotation)
    return bool(args) and bool not in args and any(_is_numeric(a) for a in args)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, data: Any) -> Any:
        # pydantic reads true as 1 for int and float fields: optim.lr=true would train at lr 1.0.
        if isinstance(data, Mapping):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                values = value if isinstance(value, (list, tuple)) else [value]
                if _is_numeric(field.annotation) and any(isinstance(v, bool) for v in values):
                    raise PydanticCustomError(
                        "number_not_bool", "expected a number", {"field": name}
                    )
        return data


class AugmentConfig(_Section):
    """Batch augmentations applied to training batches only (per-sample random draws)."""

    crop_padding: int = Field(0, ge=0, le=64, description="random crop after zero padding; 0 = off")
    hflip: float = Field(0.0, ge=0.0, le=1.0, description="probability of a horizontal flip")
    vflip: float = Field(0.0, ge=0.0, le=1.0, description="probability of a vertical flip")


class DataConfig(_Section):
    """Which data set, how it is split and how batches are prepared."""

    name: str = "fashion-mnist"
    root: str | None = Field(None, description="tree for the imagefolder data set")
    data_dir: str | None = Field(None, description="extra places to look (path list)")
    download: bool = False
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="carved from train when the set has no val split"
    )
    split_seed: int = Field(0, description="seed of the train/val split (kept fixed across runs)")
    subset: int | None = Field(
        None, ge=10, description="use only this many training images (a seeded uniform sample)"
    )
    test_subset: int | None = Field(None, ge=10, description="use only this many val/test images")
    resize: int | None = Field(None, ge=4, le=1024, description="resize images to this square size")
    normalize: bool = True
    permute_pixels: bool = Field(
        False, description="apply one fixed pixel permutation to every image"
    )
    permute_seed: int = 0
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="after")
    def _known_dataset(self) -> DataConfig:
        from cnnlab.data import DATASETS

        if self.name not in DATASETS:
            raise ValueError(
                f"data.name={self.name!r} is not a data set; choose one of: {', '.join(DATASETS.names())}"
            )
        object.__setattr__(self, "name", normalize_name(self.name))
        return self


class ModelConfig(BaseModel):
    """The model name, its initialization, and any family option as an extra key."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = "lenet5"
    init: Literal["default", "xavier", "kaiming"] = "xavier"

    @model_validator(mode="after")
    def _known_model(self) -> ModelConfig:
        from cnnlab.models import (
            MODELS,
            canonical_options,
            check_options,
            list_models,
            model_options,
        )

        if self.name not in MODELS and self.name not in list_models():
            raise ValueError(
                f"model.name={self.name!r} is not a model; choose one of: {', '.join(list_models())}"
            )
        allowed = model_options(self.name)
        for key in self.options():
            if key not in allowed:
                raise ValueError(
                    f"model.{key} is not an option of {normalize_name(self.name)!r}; "
                    f"options: {', '.join(sorted(allowed)) or 'none'}"
                )
        # One spelling per value (ReLU/relu, dropout 0/0.0): the same network, the same run key.
        self.model_extra.update(canonical_options(self.name, self.options()))
        # Values by the kind the builder declares (kernel_size=0, hidden=[-1]), before any data loads.
        check_options(self.name, self.options())
        object.__setattr__(self, "name", normalize_name(self.name))
        return self

    def options(self) -> dict[str, Any]:
        """Family options (everything but ``name`` and ``init``)."""
        return dict(self.model_extra or {})


class OptimConfig(_Section):
    name: Literal["sgd", "adam", "adamw", "adagrad", "rmsprop"] = "sgd"
    lr: float = Field(0.9, gt=0.0, le=100.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)

    @field_validator("betas", mode="before")
    @classmethod
    def _two_betas(cls, value: Any) -> Any:
        # pydantic's own message names the missing member: "optim.betas.1: field required".
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"optim.betas={_fmt_yaml(value)}: give two numbers, e.g. [0.9, 0.999]")
        return value

    @field_validator("betas")
    @classmethod
    def _betas_below_one(cls, value: tuple[float, float]) -> tuple[float, float]:
        # torch refuses them only when the optimizer is built, with a traceback.
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(
                f"optim.betas={_fmt_yaml(list(value))} is not allowed; "
                "use two numbers in [0, 1) such as [0.9, 0.999]"
            )
        return value

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise ValueError("optim.nesterov=true needs optim.name=sgd and optim.momentum > 0")
        return self


class ScheduleConfig(_Section):
    """Learning-rate schedule, stepped once per batch (see engine.schedules)."""

    name: Literal["constant", "step", "multistep", "exponential", "cosine", "onecycle"] = "constant"
    step_size: int = Field(30, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step/multistep/exponential decay factor")
    milestones: list[int] = Field(
        default_factory=list, description="multistep: epochs at which to decay"
    )
    warmup_epochs: float = Field(0.0, ge=0.0, description="cosine: linear warm-up length")
    min_lr: float = Field(0.0, ge=0.0, description="cosine: final lr")
    pct_start: float = Field(0.3, gt=0.0, lt=1.0, description="onecycle: fraction spent rising")

    @field_validator("milestones")
    @classmethod
    def _positive_milestones(cls, value: list[int]) -> list[int]:
        # Epoch 0 (or below) would decay the lr from the first step; the schedule sorts them.
        if any(m < 1 for m in value):
            raise ValueError(
                f"schedule.milestones={_fmt_yaml(value)} is not allowed; "
                "use epochs >= 1 such as [30, 60]"
            )
        return value


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def check_device(value: Any, option: str = "--device") -> str:
    """``value`` if it names a device cnnlab can use; ``option`` names the setting in the error.

    Shared by ``train.device`` and every command's ``--device``, so all say the same.
    """
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise ConfigError(
            f"{setting(option, value)} is not allowed; use auto, cpu, cuda, cuda:N or mps"
        )
    return value


def setting(option: str, value: Any) -> str:
    """How a message shows a value: ``train.device='tpu'`` for a key, ``--device 'tpu'`` for an option."""
    return f"{option} {value!r}" if option.startswith("--") else f"{option}={value!r}"


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(256, ge=1, le=1_000_000)
    eval_batch_size: int = Field(1024, ge=1)
    seed: int = Field(0, ge=0, lt=2**63)
    deterministic: bool = False
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N, mps")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool | Literal["auto"] = Field(
        "auto",
        description="NHWC batches and weights; auto: conv nets on CPU (not small ones that pool only by tiled averages), and on CUDA with bf16/fp16",
    )
    compile: bool = False
    cuda_graph: bool | Literal["auto"] = Field(
        "auto",
        description="replay each training step as one CUDA graph; auto: on CUDA when the run can",
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(None, gt=0.0, description="max global gradient norm")
    patience: int | None = Field(
        None, ge=1, description="early stopping: epochs without val improvement"
    )
    monitor: Literal["val_acc", "val_loss"] = "val_acc"
    test_every_epoch: bool = False
    tensorboard: bool = False
    devices: int = Field(
        1, ge=1, le=1024, description="processes for a DistributedDataParallel run"
    )

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> Any:
        try:
            return check_device(value, "train.device")
        except ConfigError as exc:  # pydantic reports ValueErrors with the key's context
            raise ValueError(str(exc)) from None

    @field_validator("channels_last", "cuda_graph", mode="before")
    @classmethod
    def _tri_state(cls, value: Any, info: Any) -> Any:
        # One clear message instead of pydantic's two (one per member of the union).
        if isinstance(value, bool) or value == "auto":
            return value
        text = str(value).strip().lower()
        if text in ("true", "false"):
            return text == "true"
        raise ValueError(
            f"train.{info.field_name}={value!r} is not allowed; use true, false or auto"
        )


_SHORTHANDS = ("data", "model", "optim", "schedule")  # `model=resnet18` means `model.name=resnet18`


class RunConfig(_Section):
    """Everything that determines a run (not where it is written or what it is called)."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _cosine_ends_below_its_start(self) -> RunConfig:
        # The cosine goes from optim.lr to schedule.min_lr: a higher min_lr would raise
        # the lr through the run (to 5.0 from 0.9) while the log calls it a decay.
        if self.schedule.name == "cosine" and self.schedule.min_lr > self.optim.lr:
            raise ValueError(
                f"schedule.min_lr={self.schedule.min_lr!r} is above optim.lr={self.optim.lr!r}; "
                "the cosine schedule decays from optim.lr down to schedule.min_lr"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def short(self) -> str:
        """One line for logs: the values that differ from the defaults."""
        diff = flatten(self.to_dict(), skip_equal_to=flatten(RunConfig().to_dict()))
        return " ".join(f"{k}={_fmt(v)}" for k, v in diff.items()) or "(defaults)"

    def fingerprint(self) -> str:
        """Stable hash of the resolved config (studies key run folders by it)."""
        return _hash(self.to_dict())

    def resume_fingerprint(self) -> str:
        """:meth:`fingerprint` with the GPU's number left out (``cuda:1`` counts as ``cuda``).

        What a checkpoint must match to resume: a study's workers each own one
        GPU, and a run interrupted on one may be picked up by another's worker.
        """
        tree = self.to_dict()
        if str(tree["train"]["device"]).startswith("cuda:"):
            tree["train"]["device"] = "cuda"
        return _hash(tree)


def _hash(tree: Mapping[str, Any]) -> str:
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _fmt(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def flatten(
    tree: Mapping[str, Any], prefix: str = "", skip_equal_to: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``; with ``skip_equal_to``, only the differences."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{path}.", None))
        else:
            out[path] = value
    if skip_equal_to is not None:
        out = {k: v for k, v in out.items() if skip_equal_to.get(k, object()) != v}
    return out


# PyYAML follows YAML 1.1, where a float needs a dot: ``1e-3`` would stay the
# string '1e-3' (refused by model options, a different run key from 0.001, a
# different study level). YAML 1.2 and every other reader take it as a number.
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """``safe_load`` that also reads ``1e-3`` as a float (no Python object tags, ever)."""


class _Dumper(yaml.SafeDumper):
    """``safe_dump`` that quotes the string '1e-3', so it reads back as a string."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789"))


def load_yaml_text(text: str) -> Any:
    """YAML text as cnnlab reads it everywhere (safe, and ``1e-3`` is a number)."""
    return yaml.load(text, Loader=_Loader)


def dump_yaml(data: Any, **kwargs: Any) -> str:
    """``yaml.safe_dump`` whose output :func:`load_yaml_text` reads back unchanged."""
    return yaml.dump(data, Dumper=_Dumper, **kwargs)


def parse_value(text: str) -> Any:
    """A command-line value as YAML scalar or list (``0.1``, ``1e-3``, ``true``, ``[2,2,2,2]``, ``none``)."""
    if text.strip().lower() in ("none", "null", "~"):
        return None
    try:
        return load_yaml_text(text)
    except yaml.YAMLError:
        return text


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["optim.lr=0.1", "model=resnet18"]`` -> nested dict; ``=`` is required."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"override {item!r} must look like key=value (for example optim.lr=0.05)"
            )
        value = parse_value(raw)
        if isinstance(value, dict):  # optim={name: adam, lr: 0.01}: each key, as if typed alone
            for dotted, leaf in flatten(value, f"{key}.").items():
                set_dotted(tree, dotted, leaf)
            continue
        if key in _SHORTHANDS:
            key = f"{key}.name"
        set_dotted(tree, key, value)
    return tree


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"key {dotted!r} goes below {part!r}, which holds a value, not a section"
            )
        node = child
    node[parts[-1]] = value


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge; a changed ``model.name`` drops the old model's options."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            old = dict(out[key])
            if (
                key == "model"
                and "name" in value
                and normalize_name(str(value["name"])) != normalize_name(str(old.get("name", "")))
            ):
                old = {k: v for k, v in old.items() if k == "init"}
            out[key] = merge(old, value)
        else:
            out[key] = value
    return out


class _UniqueKeyLoader(_Loader):
    """:func:`load_yaml_text`'s loader that refuses a key written twice in one mapping.

    Plain YAML keeps the last of two ``optim:`` sections without a word, so
    half of what the user wrote would silently not apply.
    """

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (lines {seen[key]} and {line}); keep one",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``safe_load`` (no Python object tags, ever)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r}); "
            "configs and specs are YAML text"
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python tags
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (data, model, ...), got {type(data).__name__}"
        )
    return data


def _describe_error(err: dict[str, Any], raw: Mapping[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int) or True]
    key = ".".join(loc)
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid value"))
    if kind == "extra_forbidden":
        section = loc[:-1]
        allowed = _allowed_keys(section)
        where = f" in {'.'.join(section)}" if section else ""
        return f"unknown key {key!r}; allowed keys{where}: {', '.join(allowed)}"
    if kind == "number_not_bool":
        field = err["ctx"]["field"]
        value = _fmt_yaml(err["input"].get(field))
        return f"{'.'.join([*loc, field])}={value}: expected a number"
    if kind.startswith("value_error"):
        return msg.removeprefix("Value error, ")
    value = err.get("input")
    return f"{key}={value!r}: {msg[0].lower() + msg[1:]}"


def _fmt_yaml(value: Any) -> str:
    """A value as it was typed: ``true``, ``[0.9, true]``."""
    return json.dumps(value) if isinstance(value, (bool, list, tuple)) else repr(value)


def _allowed_keys(section: list[str]) -> list[str]:
    cls: type[BaseModel] = RunConfig
    for part in section:
        field = cls.model_fields.get(part)
        if (
            field is None
            or not isinstance(field.annotation, type)
            or not issubclass(field.annotation, BaseModel)
        ):
            return []
        cls = field.annotation
    return sorted(cls.model_fields)


def build_config(tree: Mapping[str, Any]) -> RunConfig:
    """Validate a nested dict into a RunConfig, turning pydantic errors into one line."""
    try:
        return RunConfig.model_validate(dict(tree))
    except ValidationError as exc:
        raise ConfigError(_describe_error(exc.errors()[0], tree)) from None
    except CnnlabError as exc:
        raise ConfigError(str(exc)) from None


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | RunConfig | None = None,
) -> RunConfig:
    """Defaults, then ``base``, then the YAML file at ``path``, then dotted ``overrides``."""
    tree: dict[str, Any] = {}
    if base is not None:
        tree = base.to_dict() if isinstance(base, RunConfig) else dict(base)
    if path is not None:
        tree = merge(tree, read_yaml(path))
    tree = merge(tree, parse_overrides(overrides))
    return build_config(tree)


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(dump_yaml(config.to_dict(), sort_keys=False))
