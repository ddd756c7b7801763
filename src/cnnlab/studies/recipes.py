"""Built-in recipes: study specs shipped with the package (``cnnlab/recipes/*.yaml``).

A recipe file is one study spec, or a ``parts`` list of specs when a classic
write-up compares things that do not share one base (each part is its own
study folder and report). Every spec has a ``quick`` section: a data subset,
few epochs, repeats and values, small enough for a laptop CPU in minutes.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from cnnlab.config import load_yaml_text
from cnnlab.errors import StudyError
from cnnlab.registry import Registry
from cnnlab.studies.spec import StudySpec, spec_from_dict

RECIPES: Registry[Path] = Registry("recipe")
_loaded = False


def _recipe_dir() -> Path:
    return Path(str(resources.files("cnnlab").joinpath("recipes")))


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    folder = _recipe_dir()
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        data = load_yaml_text(path.read_text()) or {}
        RECIPES.add(
            path.stem, path, description=_first_sentence(str(data.get("description") or ""))
        )


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    end = text.find(": ")
    end = text.find(". ") if end < 0 else end
    return text if end < 0 else text[:end]


def list_recipes() -> list[tuple[str, str]]:
    """(name, one-line description) of every built-in recipe."""
    _load()
    return [(e.name, e.description) for e in RECIPES.entries()]


def recipe_path(name: str) -> Path:
    _load()
    return RECIPES.get(name)


def recipe_text(name: str) -> str:
    """The recipe's YAML as shipped."""
    return recipe_path(name).read_text()


def _parts(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    if "parts" not in data:
        return [data]
    parts = data["parts"]
    if not isinstance(parts, list) or not parts:
        raise StudyError(f"recipe {name!r}: parts must be a non-empty list of study specs")
    return parts


def recipe_specs(
    name: str, *, quick: bool = False, overrides: list[str] | tuple[str, ...] = ()
) -> list[StudySpec]:
    """The validated study spec(s) of a recipe, with ``quick`` and then ``overrides``
    (dotted keys merged into every part's base) applied."""
    path = recipe_path(name)
    data = load_yaml_text(path.read_text()) or {}
    specs = []
    for i, part in enumerate(_parts(data, name)):
        spec = spec_from_dict(
            part, source=f"recipe {name!r} part {i + 1}" if "parts" in data else f"recipe {name!r}"
        )
        spec = spec.with_quick() if quick else spec
        specs.append(spec.with_overrides(overrides))
    return specs
