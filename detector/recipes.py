"""Recipes: named sets of TrainConfig method options, stored as data (detector/configs/recipes/*.json).

``paper`` holds the public code's behaviour (it equals the TrainConfig defaults; docs/FIDELITY.md), ``ours``
the project's own choices. ``--recipe paper|ours|FILE`` on ``detector train`` and ``detector benchmark``
picks one; a config file and single flags override it (recipe < --config file < flags). A config file may
name its recipe itself (``"recipe": "ours"``). Variants for ``detector benchmark --variants`` are parsed
here too.
"""
from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from detector.errors import DetectorError

RECIPE_DIR = Path(__file__).parent / "configs" / "recipes"
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def recipe_names() -> list[str]:
    """The recipes shipped with the package."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def read_mapping(path: Path) -> dict[str, Any]:
    """A YAML or JSON file holding one mapping, through the one settings reader (``fsad_data.config``)."""
    from fsad_data.config import (  # pydantic + yaml: the CLI imports recipes at start, `--help` stays fast
        ConfigError,
        read_config_file,
    )

    try:
        return dict(read_config_file(path))
    except ConfigError as e:
        raise DetectorError(str(e)) from None


def load_recipe(recipe: str | Path) -> dict[str, Any]:
    """TrainConfig fields of a recipe: a shipped name (paper, ours) or a YAML/JSON file; records its name."""
    name = str(recipe)
    if name in recipe_names():
        fields = read_mapping(RECIPE_DIR / f"{name}.json")
    elif Path(name).is_file():
        fields = read_mapping(Path(name))
        fields.setdefault("recipe", Path(name).stem)
    else:
        raise DetectorError(f"recipe {name!r} is neither {' nor '.join(recipe_names())} nor an existing file")
    return fields


def train_config_fields(recipe: str | Path | None, config_file: Path | None) -> dict[str, Any]:
    """The merged mapping recipe < config file (a file's own ``recipe`` key names its base recipe)."""
    raw = read_mapping(config_file) if config_file is not None else {}
    base_name = recipe if recipe is not None else raw.get("recipe")
    base = load_recipe(base_name) if base_name is not None else {}
    merged = {**base, **raw}
    if recipe is not None:
        merged["recipe"] = base["recipe"]
    if config_file is not None:
        _check_values(merged, str(config_file))
    return merged


def _check_values(fields: dict[str, Any], source: str) -> None:
    """Every value of a config file has its field's type even where a flag replaces it (``epochs: "abc"`` with
    ``--epochs 1`` is still a broken file); combinations of options are judged on the final settings."""
    from detector.config import TrainConfig  # pydantic: see read_mapping
    from fsad_data.config import ConfigError, to_config

    try:
        to_config(TrainConfig, fields, source)
    except ConfigError as e:
        raise DetectorError(str(e)) from None
    except DetectorError:
        pass  # a check across options (detector.method.options): the flags may complete it


def build_train_config(recipe: str | Path | None, config_file: Path | None, **overrides: Any) -> Any:
    """TrainConfig from a recipe, a config file and flag overrides (non-None flags win)."""
    from detector.config import TrainConfig  # pydantic: see read_mapping

    source = str(config_file) if config_file is not None else (f"recipe {recipe}" if recipe else "flags")
    return TrainConfig.from_dict(train_config_fields(recipe, config_file), source=source, **overrides)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _known_fields() -> set[str]:

    from detector.config import TrainConfig  # pydantic: see read_mapping

    return {f.name for f in fields(TrainConfig)}


def parse_settings(items: list[str] | None, where: str = "--set") -> dict[str, Any]:
    """['tau=exp', 'vv_blocks=half'] -> TrainConfig fields (JSON values, else strings); ``recipe=NAME`` expands."""
    known = _known_fields()
    spec: dict[str, Any] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise DetectorError(f"{where} {item!r} is not KEY=VALUE, e.g. tau=exp")
        if key == "recipe":
            spec.update(load_recipe(value))
        elif key not in known:
            raise DetectorError(f"{where}: unknown option {key!r}; use TrainConfig fields (docs/FIDELITY.md), "
                                "e.g. tau=exp vv_blocks=half")
        else:
            spec[key] = _value(value)
    return spec


def parse_variants(text: str | None) -> list[tuple[str, dict[str, Any]]]:
    """'NAME=OPTIONS;NAME=OPTIONS' -> [(name, TrainConfig fields)]; OPTIONS are space-separated key=value
    (JSON values, else strings), ``recipe=ours`` expands to the recipe's fields (options after it win).

    Example: ``paper=;ours=recipe=ours;ours_stored=recipe=ours tau=stored``.
    """
    if not text or not text.strip():
        return []
    out: list[tuple[str, dict[str, Any]]] = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, _, opts = part.partition("=")
        name = name.strip()
        if not VARIANT_NAME.match(name):
            raise DetectorError(f"--variants: {name!r} is not a variant name (letters, digits, _ . -); write "
                                "NAME=OPTIONS;NAME=OPTIONS, e.g. 'paper=;ours=recipe=ours'")
        spec = parse_settings(opts.split(), where=f"--variants {name}")
        if any(n == name for n, _ in out):
            raise DetectorError(f"--variants: {name!r} given twice")
        out.append((name, spec))
    return out
