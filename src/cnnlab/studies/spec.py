"""The study spec and its expansion into explicit runs.

A spec names a ``base`` run config, the factors to ``vary`` one at a time, an
optional ``grid`` (cartesian product), hand-made ``variants`` and the number of
``repeats``. :func:`expand` turns it into :class:`RunPlan` objects, one per
(variant, repeat), each with a fully validated :class:`~cnnlab.config.RunConfig`
and a key that names its run folder. Everything here is pure: no files are
written, no optuna, no torch.

A factor value is a plain value, or a mapping ``{value: X, with: {key: v, ...},
label: "..."}`` when one setting needs companions (``model.name: alexnet`` with
``data.resize: 224`` and its textbook lr).

Seeds are paired across variants: repeat ``r`` of every variant uses seed
``base.train.seed + r``, so differences between variants are not blurred by
different initializations and data orders.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cnnlab.config import (
    RunConfig,
    build_config,
    flatten,
    merge,
    parse_overrides,
    read_yaml,
    set_dotted,
)
from cnnlab.errors import CnnlabError, ConfigError, InputSizeError, StudyError

# Metrics a study can rank variants by, as they appear in summary.json.
METRICS: dict[str, tuple[str, str]] = {
    "test_acc": ("final", "test_acc"),
    "test_loss": ("final", "test_loss"),
    "val_acc": ("final", "val_acc"),
    "val_loss": ("final", "val_loss"),
    "train_acc": ("final", "train_acc"),
    "train_loss": ("final", "train_loss"),
    "best_val_acc": ("best", "val_acc"),
}

# `vary: {model: [...]}` means `model.name`, as on the command line.
_SHORTHANDS = ("data", "model", "optim", "schedule")
# Keys that say how a run is executed, not what it measures: not part of the run key.
_EXECUTION_KEYS = ("train.device",)
# Keys a study sets itself; never reported as a factor.
_BOOKKEEPING_KEYS = ("train.seed", "train.test_every_epoch", "train.device")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def metric_direction(metric: str) -> Literal["maximize", "minimize"]:
    """Losses are minimized, accuracies maximized."""
    return "minimize" if metric.endswith("loss") else "maximize"


def metric_value(summary: Mapping[str, Any], metric: str) -> float | None:
    """The value of ``metric`` in a run's summary.json (None when absent)."""
    section, key = METRICS[metric]
    value = (summary.get(section) or {}).get(key)
    return None if value is None else float(value)


class FactorValue(BaseModel):
    """One value of a factor, with the settings that go with it."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    value: Any
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    label: str | None = None

    def text(self) -> str:
        return self.label or format_value(self.value)

    def to_yaml(self) -> Any:
        if not self.with_ and self.label is None:
            return self.value
        out: dict[str, Any] = {"value": self.value}
        if self.with_:
            out["with"] = dict(self.with_)
        if self.label is not None:
            out["label"] = self.label
        return out


class StudySpec(BaseModel):
    """A study: the base run, what to vary, how many repeats and what to rank by."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="study name; also its folder under the studies root")
    description: str = ""
    base: dict[str, Any] = Field(
        default_factory=dict, description="a run config, as for `cnnlab train --config`"
    )
    vary: dict[str, list[FactorValue]] = Field(
        default_factory=dict, description="one factor at a time"
    )
    grid: dict[str, list[FactorValue]] = Field(
        default_factory=dict, description="cartesian product"
    )
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named variants: dotted key -> value"
    )
    repeats: int = Field(1, ge=1, le=1000, description="independent seeds per variant")
    metric: Literal[tuple(METRICS)] = "test_acc"  # type: ignore[valid-type]
    fuse: Literal["auto", "off"] = "auto"
    workers: int | None = Field(None, ge=1, le=1024, description="default --workers")
    combine: bool = Field(
        False, description="after the study, also run each factor's best value together"
    )
    max_retries: int = Field(
        2, ge=0, le=20, description="retries of a run that fails with an error"
    )
    epochs_from_curves: bool = Field(
        True, description="answer an epochs factor from the longest run's curves"
    )
    quick: dict[str, Any] | None = Field(
        None, description="overrides for a small, fast version (--quick)"
    )

    @model_validator(mode="before")
    @classmethod
    def _fold_companions(cls, data: Any) -> Any:
        # spec.yaml keeps factor values plain and their `with`/`label` under
        # `companions` (aligned by position); fold them back into the values.
        if not isinstance(data, Mapping) or "companions" not in data:
            return data
        data = dict(data)
        companions = data.pop("companions") or {}
        if not isinstance(companions, Mapping):
            raise ValueError("companions must map vary/grid to {factor: [settings per value]}")  # noqa: TRY004 - pydantic reports ValueError
        for section, factors in companions.items():
            block = dict(data.get(section) or {})
            for key, entries in (factors or {}).items():
                values = block.get(key)
                if (
                    not isinstance(values, list)
                    or not isinstance(entries, list)
                    or len(entries) != len(values)
                ):
                    raise ValueError(
                        f"companions.{section}.{key} must list one entry per value of {section}.{key}"
                    )
                block[key] = [v if not e else {"value": v, **e} for v, e in zip(values, entries)]
            data[section] = block
        return data

    @field_validator("fuse", mode="before")
    @classmethod
    def _fuse_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false: `fuse: off`, as the docs write it, means "off".
        return "off" if v is False else v

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                f"name={v!r}: use letters, digits, '.', '_' and '-' (it becomes a folder name)"
            )
        return v

    @field_validator("vary", "grid", mode="before")
    @classmethod
    def _factor_lists(cls, v: Any, info: Any) -> Any:
        if v is None:
            return {}
        if not isinstance(v, Mapping):
            raise ValueError(f"{info.field_name} must map dotted config keys to lists of values")  # noqa: TRY004 - pydantic reports ValueError
        out = {}
        for key, values in v.items():
            if isinstance(values, Mapping):
                raise ValueError(  # noqa: TRY004 - pydantic reports ValueError
                    f"{info.field_name}.{key}: write factors as dotted keys with lists, e.g. {info.field_name}: {{{key}.lr: [0.1, 0.5]}}"
                )
            key = _canonical_key(str(key))
            if not isinstance(values, list) or not values:
                raise ValueError(
                    f"{info.field_name}.{key} must be a non-empty list of values, got {values!r}"
                )
            out[key] = [_factor_value(x) for x in values]
        return out

    @field_validator("variants", mode="before")
    @classmethod
    def _variant_maps(cls, v: Any) -> Any:
        if v is None:
            return {}
        if not isinstance(v, Mapping):
            raise ValueError("variants must map variant names to {dotted key: value}")  # noqa: TRY004 - pydantic reports ValueError
        for name, settings in v.items():
            if not isinstance(settings, Mapping) or not settings:
                raise ValueError(
                    f"variants.{name} must be a non-empty mapping of dotted keys to values"
                )
        return {str(k): {_canonical_key(str(kk)): vv for kk, vv in s.items()} for k, s in v.items()}

    def base_config(self) -> RunConfig:
        """The validated base run config, every model option explicit."""
        try:
            return resolve_config(self.base)
        except ConfigError as exc:
            raise StudyError(f"study {self.name!r} base: {exc}") from None

    def to_yaml_dict(self) -> dict[str, Any]:
        """The spec as plain data (what spec.yaml holds), base fully resolved."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["base"] = self.base_config().to_dict()
        companions: dict[str, dict[str, list[Any]]] = {}
        for section in ("vary", "grid"):
            factors = getattr(self, section)
            if factors:
                # Plain values, so a reader of spec.yaml (the report) sees each
                # factor's levels; companion settings and labels go beside them.
                out[section] = {k: [v.value for v in vals] for k, vals in factors.items()}
                extra = {
                    k: [_companion(v) for v in vals]
                    for k, vals in factors.items()
                    if any(_companion(v) for v in vals)
                }
                if extra:
                    companions[section] = extra
        if companions:
            out["companions"] = companions
        if self.variants:
            out["variants"] = {k: dict(v) for k, v in self.variants.items()}
        out.update(
            repeats=self.repeats,
            metric=self.metric,
            fuse=self.fuse,
            workers=self.workers,
            combine=self.combine,
            max_retries=self.max_retries,
            epochs_from_curves=self.epochs_from_curves,
        )
        return out

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> StudySpec:
        """The spec with dotted overrides (``data.subset=1000``) merged into its base."""
        if not overrides:
            return self
        try:
            tree = parse_overrides(overrides)
        except ConfigError as exc:
            raise StudyError(str(exc)) from None
        data = self.model_dump(by_alias=True)
        data["vary"] = {k: [v.to_yaml() for v in vals] for k, vals in self.vary.items()}
        data["grid"] = {k: [v.to_yaml() for v in vals] for k, vals in self.grid.items()}
        data["base"] = merge(data["base"], tree)
        return spec_from_dict(data, source=f"study {self.name!r} with {' '.join(overrides)}")

    def with_quick(self) -> StudySpec:
        """The spec with its ``quick`` overrides applied (itself when it has none).

        ``quick.base`` is merged into the base; in ``quick.vary``/``quick.grid``
        a list replaces that factor's values and ``null`` drops the factor;
        other keys (``repeats``, ``variants``, ...) replace the spec's.
        """
        if not self.quick:
            return self
        data = self.model_dump(by_alias=True, exclude={"quick"})
        data["vary"] = {k: [v.to_yaml() for v in vals] for k, vals in self.vary.items()}
        data["grid"] = {k: [v.to_yaml() for v in vals] for k, vals in self.grid.items()}
        quick = dict(self.quick)
        unknown = sorted(
            k for k in quick if k not in StudySpec.model_fields or k in ("name", "quick")
        )
        if unknown:
            raise StudyError(
                f"study {self.name!r}: quick.{unknown[0]} cannot be overridden; quick takes base, vary, grid, variants, repeats, ..."
            )
        if "base" in quick:
            data["base"] = merge(data["base"], _nested(quick.pop("base"), "quick.base"))
        for section in ("vary", "grid"):
            if section in quick:
                changes = quick.pop(section) or {}
                if not isinstance(changes, Mapping):
                    raise StudyError(
                        f"study {self.name!r}: quick.{section} must map factors to lists (or null to drop one)"
                    )
                merged = dict(data[section])
                for key, values in changes.items():
                    key = _canonical_key(str(key))
                    if values is None:
                        merged.pop(key, None)
                    else:
                        merged[key] = values
                data[section] = merged
        data.update(quick)
        return spec_from_dict(data, source=f"study {self.name!r} quick")


def _companion(fv: FactorValue) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    if fv.with_:
        out["with"] = dict(fv.with_)
    if fv.label is not None:
        out["label"] = fv.label
    return out or None


def _canonical_key(key: str) -> str:
    key = key.strip()
    return f"{key}.name" if key in _SHORTHANDS else key


def _factor_value(x: Any) -> Any:
    if isinstance(x, FactorValue):
        return x
    if isinstance(x, Mapping) and "value" in x and set(x) <= {"value", "with", "label"}:
        raw = dict(x)
        if "with" in raw:
            if not isinstance(raw["with"], Mapping):
                raise ValueError(f"'with' of value {raw['value']!r} must map dotted keys to values")
            raw["with"] = {_canonical_key(str(k)): v for k, v in raw["with"].items()}
        return raw
    return {"value": x}


def _nested(tree: Any, where: str) -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        raise StudyError(f"{where} must be a mapping of config sections")
    return dict(tree)


def format_value(value: Any) -> str:
    """A factor value as it appears in a variant label (``0.1``, ``relu``, ``true``).

    The same text the report uses (integral floats print like ints).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return f"unknown key {loc!r}; allowed keys: {', '.join(StudySpec.model_fields)}"
    if kind == "missing":
        return f"missing key {loc!r}"
    if kind.startswith("value_error"):
        return msg
    return f"{loc}={err.get('input')!r}: {msg[0].lower() + msg[1:]}"


def spec_from_dict(data: Mapping[str, Any], *, source: str = "spec") -> StudySpec:
    """Validate plain data (parsed YAML) into a StudySpec, and every run it expands to.

    Raises:
        StudyError: one line naming the key that is wrong.
    """
    if not isinstance(data, Mapping):
        raise StudyError(f"{source}: expected a mapping with name, base, vary, ...")
    try:
        spec = StudySpec.model_validate(dict(data))
    except ValidationError as exc:
        raise StudyError(f"{source}: {_describe(exc)}") from None
    expand(spec)  # every run config must be valid before any work starts
    return spec


def load_spec(path: str | Path, *, quick: bool = False) -> StudySpec:
    """Read a spec file (YAML, safe_load); with ``quick``, apply its ``quick`` section."""
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        raise StudyError(str(exc)) from None
    if not data:
        # An empty file is a mistake (a wrong path such as /dev/null, an unsaved
        # editor), not a request to run the default config once.
        raise StudyError(
            f"study spec {str(path)!r} is empty; give at least base: or vary: (see docs/studies.md)"
        )
    if "name" not in data:
        data = {"name": Path(path).stem, **data}
    spec = spec_from_dict(data, source=str(path))
    return spec.with_quick() if quick else spec


# -- expansion ---------------------------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    """One run of a study: a variant at one repeat, ready to train.

    ``meta()`` is what the run folder's ``study.json`` holds.
    """

    study: str
    key: str
    variant: str
    factors: dict[str, Any]
    factor: str | None
    repeat: int
    seed: int
    config: RunConfig
    derived_from: str | None = None
    # Runs with fewer epochs that this run's curves answer (see studies.derive).
    derives: tuple[RunPlan, ...] = ()

    def meta(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "key": self.key,
            "variant": self.variant,
            "factors": self.factors,
            "factor": self.factor,
            "repeat": self.repeat,
            "seed": self.seed,
            "derived_from": self.derived_from,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to run this plan elsewhere (stored with its queue entry)."""
        return {
            **self.meta(),
            "config": self.config.to_dict(),
            "derives": [d.to_dict() for d in self.derives],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunPlan:
        return cls(
            study=data["study"],
            key=data["key"],
            variant=data["variant"],
            factors=dict(data["factors"]),
            factor=data.get("factor"),
            repeat=int(data["repeat"]),
            seed=int(data["seed"]),
            config=build_config(data["config"]),
            derived_from=data.get("derived_from"),
            derives=tuple(cls.from_dict(d) for d in data.get("derives") or ()),
        )


def run_key(config: RunConfig) -> str:
    """Hash of the resolved config, seed included, that names a run folder.

    Execution-only keys (the device) are left out, so a study moved from CPU to
    GPU keeps its finished runs.
    """
    tree = config.to_dict()
    for dotted in _EXECUTION_KEYS:
        section, key = dotted.split(".")
        tree.get(section, {}).pop(key, None)
    blob = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Variant:
    label: str
    factor: str | None
    tree: dict[str, Any]
    where: str
    names: tuple[str, ...] = ()  # keys whose values its runs record even where equal to the base's


def apply_settings(base: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    update: dict[str, Any] = {}
    for key, value in settings.items():
        set_dotted(update, key, value)
    return merge(base, update)


def _variants(spec: StudySpec) -> list[_Variant]:
    from cnnlab.studies.stats import GROUP_SEPARATOR

    base = spec.base_config().to_dict()
    _check_level_names(spec, flatten(base))
    out = [_Variant("base", None, base, "base")]
    for key, values in spec.vary.items():
        for i, fv in enumerate(values):
            settings = {key: fv.value, **fv.with_}
            out.append(
                _Variant(
                    f"{key}={fv.text()}", key, apply_settings(base, settings), f"vary.{key}[{i}]"
                )
            )
    if spec.grid:
        keys = list(spec.grid)
        for combo in itertools.product(*(spec.grid[k] for k in keys)):
            settings: dict[str, Any] = {}
            for key, fv in zip(keys, combo):
                settings[key] = fv.value
                settings.update(fv.with_)
            label = ",".join(f"{k}={fv.text()}" for k, fv in zip(keys, combo))
            # Every grid point belongs to the grid's group, also one whose values are all
            # but one the base's (its differences from the base alone would say otherwise).
            out.append(
                _Variant(
                    label,
                    GROUP_SEPARATOR.join(keys),
                    apply_settings(base, settings),
                    f"grid point {label}",
                    tuple(keys),
                )
            )
    for name, settings in spec.variants.items():
        out.append(_Variant(name, None, apply_settings(base, settings), f"variants.{name}"))
    return out


def _check_level_names(spec: StudySpec, base: Mapping[str, Any]) -> None:
    """Each factor's values must read differently, and differently from the base's value.

    Tables, plots and tests tell a factor's levels apart by their text (the value,
    or its ``label``): two values that read ``adam`` but bring different
    companion settings (``with:``) would be pooled into one level, and one that
    reads like the base's value into the base's.

    Raises:
        StudyError: naming the factor and the text, and asking for a ``label``.
    """
    for section in ("vary", "grid"):
        for key, values in getattr(spec, section).items():
            seen: set[str] = set()
            for i, fv in enumerate(values):
                text = fv.text()
                where = f"study {spec.name!r} {section}.{key}[{i}]"
                if text in seen:
                    raise StudyError(
                        f"{where}: {text!r} is listed twice; give the values distinct labels "
                        f"(value: ..., label: ...)"
                    )
                seen.add(text)
                if fv.with_ and key in base and text == format_value(base[key]):
                    raise StudyError(
                        f"{where}: {text!r} reads like the base's value but changes "
                        f"{', '.join(fv.with_)}; give it a label (value: ..., label: ...)"
                    )


def resolve_config(tree: Mapping[str, Any]) -> RunConfig:
    """Validate a config tree and make every model option explicit.

    ``model.pool: avg`` written out and left to its default are the same run;
    filling in the defaults gives them the same key and lets the report show
    each run's actual value of every factor.
    """
    import inspect

    from cnnlab.models import model_options

    config = build_config(tree)
    options = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in model_options(config.model.name).items()
        if v is not inspect.Parameter.empty
    }
    explicit = config.model.options()
    if set(options) <= set(explicit):
        return config
    full = config.to_dict()
    full["model"] = {"name": config.model.name, "init": config.model.init, **options, **explicit}
    return build_config(full)


def _validated(spec: StudySpec, variant: _Variant) -> RunConfig:
    try:
        return resolve_config(variant.tree)
    except ConfigError as exc:
        raise StudyError(f"study {spec.name!r} {variant.where}: {exc}") from None


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@functools.lru_cache(maxsize=256)
def _build_problem(name: str, options_json: str) -> str | None:
    """Why model ``name`` cannot be built with these options, or None when it can.

    The config already checked each option by its kind; what only the family knows
    (LeNet has two conv layers, so ``channels: [12]`` is refused) shows when it is
    built. Built once per distinct model on the meta device: no weights, no data,
    about a millisecond for LeNet and tens for the ImageNet networks. An input size
    the model cannot take is the data's business (the trainer checks it with the
    real images), so the model's own default size is used and such errors pass.
    """
    import torch

    from cnnlab.models import create_model

    try:
        with torch.device("meta"):
            create_model(name, check=False, **json.loads(options_json))
    except InputSizeError:
        return None
    except CnnlabError as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=64)
def _data_problem(name: str, root: str | None) -> str | None:
    """Why data set ``name`` does not take these options, or None when it does.

    What ``cnnlab train`` refuses before it starts (``data.root`` for a data set
    without that option, ``imagefolder`` without one), checked without reading
    the data, which may live only on the machines that train.
    """
    from cnnlab.data import check_dataset_options

    try:
        check_dataset_options(name, **({"root": root} if root else {}))
    except CnnlabError as exc:
        return str(exc)
    return None


def factor_diff(config: RunConfig, base: RunConfig) -> dict[str, Any]:
    diff = flatten(config.to_dict(), skip_equal_to=flatten(base.to_dict()))
    for key in _BOOKKEEPING_KEYS:
        diff.pop(key, None)
    return diff


def expand(spec: StudySpec) -> list[RunPlan]:
    """Every run of the study: base, one-factor variants, grid points and named
    variants, times ``repeats``.

    Variants whose config equals the base's (or an earlier variant's) are
    dropped, so a factor list that includes the base value costs nothing extra.
    With ``epochs_from_curves``, an ``train.epochs`` factor whose schedule does
    not depend on the epoch count trains only the longest run (measuring test
    accuracy every epoch) and answers the shorter ones from its curves.

    Raises:
        StudyError: a variant's config is invalid; the message names the key.
    """
    base = spec.base_config()
    seen: dict[str, str] = {}
    chosen: list[tuple[_Variant, RunConfig]] = []
    for variant in _variants(spec):
        config = _validated(spec, variant)
        ident = run_key(config)
        if ident in seen:
            continue
        seen[ident] = variant.label
        chosen.append((variant, config))
    for variant, config in chosen:
        problem = _build_problem(config.model.name, _json(config.model.options()))
        problem = problem or _data_problem(config.data.name, config.data.root)
        if problem:
            raise StudyError(f"study {spec.name!r} {variant.where}: {problem}")

    plans: list[RunPlan] = []
    for variant, config in chosen:
        factors = factor_diff(config, base)
        if variant.names:
            flat = flatten(config.to_dict())
            factors = {**{k: flat[k] for k in variant.names if k in flat}, **factors}
        for r in range(spec.repeats):
            seed = config.train.seed + r
            cfg = config.model_copy(
                update={"train": config.train.model_copy(update={"seed": seed})}
            )
            plans.append(
                RunPlan(
                    study=spec.name,
                    key=run_key(cfg),
                    variant=variant.label,
                    factors=factors,
                    factor=variant.factor,
                    repeat=r,
                    seed=seed,
                    config=cfg,
                )
            )
    if spec.epochs_from_curves:
        plans = _derive_epochs(spec, plans)
    return plans


def epochs_derivable(config: RunConfig) -> bool:
    """A shorter run is exactly the start of a longer one: the lr schedule must not
    depend on the epoch count and nothing may stop the run early."""
    from cnnlab.engine.schedules import depends_on_epochs

    return not depends_on_epochs(config.schedule) and config.train.patience is None


def _derive_epochs(spec: StudySpec, plans: list[RunPlan]) -> list[RunPlan]:
    if "train.epochs" not in spec.vary:
        return plans
    group = [p for p in plans if p.factor == "train.epochs" or p.variant == "base"]
    if not group or not epochs_derivable(group[0].config):
        return plans
    replaced: dict[str, RunPlan] = {}
    for r in range(spec.repeats):
        members = sorted((p for p in group if p.repeat == r), key=lambda p: p.config.train.epochs)
        if len(members) < 2:
            continue
        longest = members[-1]
        train = longest.config.train.model_copy(update={"test_every_epoch": True})
        source_cfg = longest.config.model_copy(update={"train": train})
        source_key = run_key(source_cfg)
        derives = tuple(replace(p, derived_from=source_key) for p in members[:-1])
        replaced[longest.key] = replace(longest, key=source_key, config=source_cfg, derives=derives)
        replaced.update((d.key, d) for d in derives)
    return [replaced.get(p.key, p) for p in plans]


def trained_plans(plans: list[RunPlan]) -> list[RunPlan]:
    """The plans that need training (derived runs are read off their source's curves)."""
    return [p for p in plans if p.derived_from is None]
