"""The user guide names what the registries and the config hold, no more and no less.

A model, data set, recipe, explanation method, schedule, optimizer or layer
choice that is registered but not documented is invisible to users; one that
is documented but not registered is a promise the code does not keep.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cnnlab.config import RunConfig
from cnnlab.data import DATASETS
from cnnlab.data.transforms import TRANSFORMS
from cnnlab.engine.export import EXPORTERS
from cnnlab.engine.optim import INITS, OPTIMIZERS
from cnnlab.engine.schedules import SCHEDULES
from cnnlab.explain.methods import METHODS
from cnnlab.layers import ACTIVATIONS, NORMS, POOLS
from cnnlab.models import list_models
from cnnlab.registry import normalize_name
from cnnlab.studies.recipes import list_recipes

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _ticked(text: str) -> set[str]:
    """Every `name` written in backticks."""
    return set(re.findall(r"`([^`\s]+)`", text))


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """The body rows of the first Markdown table whose header row starts with ``heading``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {heading} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _names(registry) -> set[str]:
    return {normalize_name(n) for n in registry.names()}


def _normalized(names) -> set[str]:
    return {normalize_name(n) for n in names}


def test_every_model_is_in_the_models_table_and_every_listed_model_exists():
    rows = _table_rows(_page("models.md"), "family")
    listed = set().union(*(_ticked(models) for _, models, _ in rows))
    assert listed == set(list_models())


def test_every_data_set_is_in_the_data_table_and_no_other():
    rows = _table_rows(_page("data.md"), "name")
    assert {row[0].strip("`") for row in rows} == _names(DATASETS)


def test_every_recipe_is_in_the_recipe_table_and_no_other():
    rows = _table_rows(_page("studies.md"), "recipe")
    assert {row[0].strip("`") for row in rows} == {name for name, _ in list_recipes()}


def test_every_explanation_method_is_in_the_method_table_and_no_other():
    rows = _table_rows(_page("explain.md"), "method")
    assert {row[0].strip("`") for row in rows} == _names(METHODS)


def _config_choices(section: str, key: str) -> set[str]:
    """The values training.md lists in parentheses after ``key`` in ``section``'s row."""
    rows = dict(_table_rows(_page("training.md"), "section"))
    match = re.search(rf"`{key}` \(([^)]*)\)", rows[f"`{section}`"])
    assert match, f"training.md lists no choices for {section}.{key}"
    return _normalized(v.strip() for v in match.group(1).split(","))


@pytest.mark.parametrize(
    ("section", "key", "registry"),
    [
        ("optim", "name", OPTIMIZERS),
        ("schedule", "name", SCHEDULES),
        ("model", "init", INITS),
    ],
)
def test_config_choices_in_training_md_are_the_registered_ones(section, key, registry):
    assert _config_choices(section, key) == _names(registry)


@pytest.mark.parametrize("section", ["data", "optim", "schedule", "train"])
def test_the_config_table_lists_every_key_of_a_section_and_no_other(section):
    rows = dict(_table_rows(_page("training.md"), "section"))
    cell = re.sub(r"\([^)]*\)", "", rows[f"`{section}`"])  # drop the choices and defaults
    fields = RunConfig.model_fields[section].annotation.model_fields
    keys = set()
    for name, field in fields.items():
        sub = getattr(field.annotation, "model_fields", None)
        keys |= {f"{name}.{s}" for s in sub} if sub else {name}
    assert _ticked(cell) == keys


@pytest.mark.parametrize(
    ("option", "registry"), [("activation", ACTIVATIONS), ("norm", NORMS), ("pool", POOLS)]
)
def test_common_model_options_list_the_registered_values(option, registry):
    rows = {row[0].strip("`"): row[1] for row in _table_rows(_page("models.md"), "option")}
    assert _normalized(_ticked(rows[option])) == _names(registry)


def test_export_formats_and_batch_transforms_are_named():
    assert {"onnx", "torchscript"} == _names(EXPORTERS)
    assert "--format onnx|torchscript" in _page("training.md")
    transforms = _page("data.md").split("`build_transform(name, **options)`")[1]
    assert _normalized(_ticked(transforms.split("\n\n")[0])) == _names(TRANSFORMS)
