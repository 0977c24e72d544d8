"""The one reader of settings files (``mfsc build --config``, ``detector train/benchmark --config``) and the one
check that turns a mapping into a typed config.

Why one: both CLIs take YAML or JSON, and each bad file must give one short line naming the file and what is
wrong, never a traceback: a file that is not UTF-8, a YAML syntax or tag error, a top level that is not a
mapping, a value of the wrong type, not finite or out of range, an unknown key. A YAML file can make a huge
object from a few lines with aliases ("billion laughs"); the reader refuses files over ``MAX_BYTES`` before
reading them and documents with more than ``MAX_ALIASES`` aliases before building anything, so memory stays
bounded. The typed check is pydantic (v2) over the caller's dataclass: ``to_config(TrainConfig, data, origin)``
reports the first problem as ``FILE: key 'epochs': expected an integer, got 'abc'``.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from fsad_data.errors import DataError

MAX_BYTES = 1 << 20  # a settings file is a few hundred bytes; a megabyte is already absurd
MAX_ALIASES = 50  # anchors/aliases are fine for sharing a block or two, not for exponential expansion

# field types for the configs' dataclasses: pydantic reads these constraints when it checks a mapping. Counts
# are strict: true, "3" and 3.0 are not whole numbers (pydantic's lax mode would read them as 1, 3 and 3)
StrictInt = Annotated[int, Field(strict=True)]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
Seed = Annotated[int, Field(strict=True, ge=0, le=2**32 - 1)]  # shot ranking, torch and numpy seeds all take it
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]

# unknown keys refused, no inf/nan, numbers accepted where text goes (a class folder named 01)
_PYDANTIC = ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True)
T = TypeVar("T")


class ConfigError(DataError):
    """A settings file or value cannot be used; the message names the file and key and says what is expected."""


# --------------------------------------------------------------------------- reading
class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a document with too many aliases while composing it (before any
    object is built)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise ConfigError(f"more than {MAX_ALIASES} YAML aliases (line {mark.line + 1}); write the values "
                                  "out instead of expanding anchors")
        return super().compose_node(parent, index)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the alias bound (what ``yaml.load`` does, with our SafeLoader subclass)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class TextFileProblem(Exception):
    """Why ``read_utf8`` could not give a file's text, worded to follow the file's name: ": 9 bytes is too big
    (limit 8)", " is a folder", ": cannot be read (reason)", " is not UTF-8 text (byte 0xff at offset 10)"
    (``binary``: which byte, for a file that is not text at all, such as a pickle where JSON belongs)."""

    def __init__(self, words: str, binary: str | None = None) -> None:
        super().__init__(words)
        self.binary = binary


def read_utf8(path: Path, limit: int) -> str:
    """The text of a UTF-8 file of at most ``limit`` bytes (the size is checked before anything is read)."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise TextFileProblem(f": {size} bytes is too big (limit {limit})")
        raw = path.read_bytes()
    except IsADirectoryError:
        raise TextFileProblem(" is a folder") from None
    except OSError as exc:
        raise TextFileProblem(f": cannot be read ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        raise TextFileProblem(f" is not UTF-8 text ({where})", binary=where) from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON file (``.json`` is read as JSON, anything else as YAML; empty = ``{}``)."""
    path = Path(path)
    try:
        text = read_utf8(path, MAX_BYTES)
    except TextFileProblem as p:
        raise ConfigError(f"{path}{p}; give a YAML or JSON settings file (UTF-8) to --config") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    else:
        try:
            data = _load_yaml(text)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            what = " ".join(str(exc.problem or exc.context or "syntax error").split())
            raise ConfigError(f"{path} is not valid YAML{where}: {what}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings (key: value lines), not a {_kind(data)}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: key {bad[0]!r} is not text; settings are named, e.g. epochs: 10")
    return data


# --------------------------------------------------------------------------- checking
def to_config(cls: type[T], data: Mapping[str, Any], origin: str = "settings") -> T:
    """``cls`` (a dataclass) built from ``data`` after pydantic checked every value against the field types.

    Top-level keys may use dashes (``batch-size``). The first problem is raised as one line naming ``origin``.
    """
    norm = {str(k).replace("-", "_"): v for k, v in data.items()}
    try:
        return type_adapter(cls).validate_python(norm)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {describe_error(exc, cls)}") from None


def describe_error(exc: ValidationError, cls: type | None = None) -> str:
    """pydantic's first error as ``key 'epochs': expected an integer, got 'abc'``."""
    e = exc.errors(include_url=False)[0]
    key = _dotted(e["loc"])
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        owner = _owner(cls, e["loc"][:-1]) if cls is not None else None
        known = f"; known: {', '.join(_fields(owner))}" if owner is not None else ""
        return f"unknown key '{key}'{known}"
    if kind == "missing":
        return f"key '{key}' is required"
    what = _EXPECTED.get(kind) or _bound(kind, ctx) or str(e["msg"]).removeprefix("Input should be ")
    return f"key '{key}': expected {what}, got {_short(e['input'])}"


_EXPECTED = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "finite_number": "a finite number",
    "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "text", "list_type": "a list", "dict_type": "a mapping", "tuple_type": "a list",
    "dataclass_type": "a mapping", "dataclass_exact_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping", "too_short": "a non-empty list",
}


def _bound(kind: str, ctx: Mapping[str, Any]) -> str | None:
    words = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
             "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}
    if kind in words:
        word, key = words[kind]
        return f"a value {word} {ctx.get(key)}"
    if kind == "literal_error":
        return f"one of {ctx.get('expected')}"
    if kind == "value_error" and ctx.get("error") is not None:
        return str(ctx["error"])  # a field's own check says what it expects
    return None


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    return {list: "list", str: "text", int: "number", float: "number", bool: "true/false"}.get(
        type(value), type(value).__name__)


def _owner(cls: type, loc: tuple[Any, ...]) -> type | None:
    """The (nested) dataclass that holds the key at ``loc``, for the list of its known keys."""
    for part in loc:
        hint = get_type_hints(cls).get(part) if dataclasses.is_dataclass(cls) else None
        if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            return None
        cls = hint
    return cls


def _fields(cls: type) -> list[str]:
    return list(getattr(cls, "__dataclass_fields__", {}) or getattr(cls, "model_fields", {}))


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def type_adapter(model: Any) -> TypeAdapter[Any]:
    """The cached pydantic ``TypeAdapter`` of ``model`` (a settings dataclass gets this module's strict config
    first; a pydantic model or an annotated type is adapted as it is): built once per type, both halves share it."""
    if model not in _ADAPTERS:
        if dataclasses.is_dataclass(model):
            model.__pydantic_config__ = _PYDANTIC  # type: ignore[attr-defined]  # how pydantic configures a dataclass
        _ADAPTERS[model] = TypeAdapter(model)
    return _ADAPTERS[model]
