"""The versioned MFSC prompt, the JSON answer schema and its validation, and the flow shared by the model
backends: ask, validate, retry once with the validation errors, else fall back to the attribute fields.

`answer_schema` is the JSON Schema of an answer, generated from the record types (`records.ImageView`,
`ForegroundView`, `ComponentView`, `DefectView`) and the word lists below; servers get it as a strict
`response_format` and the local backend decodes under it. Answers are still validated here by hand (rules a
schema cannot say, such as unique component names); every error names the field, so the retry message tells
the model what to fix.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from string import Template
from typing import Any, NamedTuple

import numpy as np

from mfsc_builder.captioners.attributes import AttributeCaptioner
from mfsc_builder.captioners.base import CaptionRequest, CaptionResult, LevelFields
from mfsc_builder.crop import LOCATION_WORDS, ORIENTATIONS
from mfsc_builder.english import bare
from mfsc_builder.errors import BuildError
from mfsc_builder.records import ComponentView, DefectView, ForegroundView, ImageView, Provenance

PROMPT_DIR = Path(__file__).resolve().parent.parent / "prompts"
DEFAULT_PROMPT = "mfsc_v1"
LOCATIONS = tuple(w for row in LOCATION_WORDS for w in row)
DIRECTIONS = (*ORIENTATIONS, "mixed")
MAX_COMPONENTS = 12
MAX_FIELD_CHARS = 400  # one answer field (a sentence is asked to stay under 25 words): longer is refused
TEXTURES = ("smooth", "textured", "striped", "granular")
SHAPES = ("circular", "rectangular", "elongated", "irregular")
SIZES = ("small", "medium", "large")
# how a model backend asked for the answer, most constrained first (recorded in provenance and build_info):
# the record schema itself (strict structured outputs / grammar), any JSON object, or the prompt alone
RESPONSE_FORMATS = ("json_schema", "json_object", "prompt")


@dataclass(frozen=True)
class Prompt:
    """A loaded prompt file: its version string, its sections and the SHA-256 of its bytes (a build records
    both, so an edited prompt file is never mixed with answers to the old one)."""

    version: str
    sections: dict[str, str]
    sha256: str = ""
    path: str = ""

    def render(self, section: str, **values: Any) -> str:
        if section not in self.sections:
            raise BuildError(f"prompt {self.version} ({self.path}) has no '### {section}' section; add it to the "
                             "prompt file")
        return Template(self.sections[section]).safe_substitute(**{k: str(v) for k, v in values.items()}).strip()


MAX_PROMPT_BYTES = 256 * 1024


def load_prompt(name: str = DEFAULT_PROMPT) -> Prompt:
    """The one place prompts come from: a built-in name (`mfsc_builder/prompts/<name>.txt`, e.g. "mfsc_v1") or
    the path of a user's own file (`--prompt FILE`). Format: a '# version: NAME' line, '#' comments, then
    '### section' blocks: caption (required), defects (for --defect-vocab model), retry (optional), with
    $placeholders filled by `caption_prompt`."""
    builtin = re.fullmatch(r"[A-Za-z0-9_.-]+", name) is not None and not name.endswith(".txt")
    path = PROMPT_DIR / f"{name}.txt" if builtin else Path(name).expanduser()
    if not path.is_file():
        raise BuildError(f"prompt file not found: {path}; give the path of a prompt file or one of "
                         f"{sorted(p.stem for p in PROMPT_DIR.glob('*.txt'))}")
    try:
        data = path.read_bytes()
        if len(data) > MAX_PROMPT_BYTES:
            raise BuildError(f"prompt file {path} is {len(data)} bytes; a prompt must stay under "
                             f"{MAX_PROMPT_BYTES} bytes")
        text = data.decode("utf-8")
    except OSError as exc:
        raise BuildError(f"cannot read prompt file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise BuildError(f"prompt file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    version, sections, current = "", {}, None
    for line in text.splitlines():
        m = re.match(r"#\s*version:\s*(\S+)", line)
        if m and current is None:
            version = m.group(1)
            continue
        if line.startswith("### "):
            current = line[4:].strip()
            sections[current] = ""
            continue
        if current is None:
            continue  # header comments
        sections[current] += line + "\n"
    if not version or not sections.get("caption", "").strip():
        raise BuildError(f"prompt file {path} needs a '# version: NAME' line and a non-empty '### caption' section")
    return Prompt(version, sections, hashlib.sha256(data).hexdigest(), str(path))


def measured_summary(req: CaptionRequest) -> str:
    """Stage-1 facts given to the model as a hint (regions with location and size)."""
    r = req.regions
    parts = [f"{len(r.components)} region(s) inside the foreground"]
    for c in r.components[:MAX_COMPONENTS]:
        parts.append(f"a region at the {c.location} covering {100 * c.area:.1f}% of the image")
    if r.textured:
        parts.append("the object fills the whole image (no background)")
    return "; ".join(parts) + "."


def caption_prompt(prompt: Prompt, req: CaptionRequest) -> str:
    defect_schema = ('{"type": "<defect kind>", "location": "<grid cell>", "size": "<small, medium or large>", '
                     '"colour": "<colour name>", "sentence": "<one sentence describing the defect>"}'
                     if req.is_anomalous else "null")
    if req.is_anomalous:
        where = ", ".join(d.location for d in req.regions.defects[:4]) or "unknown"
        hint = (f"This image is anomalous: it shows a {req.defect_type or 'defect'} at the {where}; describe the "
                "normal parts as they should be and the defect in \"defect\".")
    else:
        hint = "This image is normal: \"defect\" must be null."
    return prompt.render("caption", object_name=req.object_name, locations=", ".join(LOCATIONS),
                         defect_schema=defect_schema, measured=measured_summary(req), defect_hint=hint)


# ------------------------------------------------------------------------------------------- schema
_GRID = "|".join(LOCATIONS)
# per record type and field: the JSON Schema of what the model gives; fields not listed take their type
# (str -> string, int -> integer); fields in _MEASURED come from stage 1 and are not asked for
_CONSTRAINTS: dict[tuple[str, str], dict[str, Any]] = {
    ("ComponentView", "location"): {"type": "string", "pattern": f"^({_GRID})((, | and )({_GRID}))*$"},
    ("ComponentView", "texture"): {"type": "string", "enum": list(TEXTURES)},
    ("ComponentView", "shape"): {"type": "string", "enum": list(SHAPES)},
    ("ComponentView", "direction"): {"type": "string", "enum": list(DIRECTIONS)},
    ("DefectView", "location"): {"type": "string", "pattern": f"^({_GRID})((, | and )({_GRID}))*$"},
    ("DefectView", "size"): {"type": "string", "enum": list(SIZES)},
}
# local grammar decoding also bounds what a strict server schema may not say (a weak model must not write
# one endless string, number or list): strings 1..max characters, not starting with a space, no escapes
_BOUNDED: dict[tuple[str, str], dict[str, Any]] = {
    ("ComponentView", "location"): {"pattern": f"^({_GRID})((, | and )({_GRID})){{0,3}}$"},
    ("DefectView", "location"): {"pattern": f"^({_GRID})((, | and )({_GRID})){{0,3}}$"},
    ("ComponentView", "count"): {"minimum": 1, "maximum": 99},
    ("ForegroundView", "count"): {"minimum": 0, "maximum": 99},
}
_MEASURED = {("ComponentView", "area")}


def _bounded_string(max_string: int) -> dict[str, Any]:
    return {"type": "string", "pattern": f'^[^\\s"\\\\][^"\\\\\\n]{{0,{max_string - 1}}}$'}


def _record_schema(cls: type, max_string: int | None) -> dict[str, Any]:
    """A strict object schema (every field required, nothing else allowed) from a record dataclass."""
    props: dict[str, Any] = {}
    for f in fields(cls):
        key = (cls.__name__, f.name)
        if key in _MEASURED:
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if key in _CONSTRAINTS:  # an enum or a pattern bounds the value itself
            base = dict(_CONSTRAINTS[key])
        elif kind == "int":
            base = {"type": "integer"}
        else:
            base = _bounded_string(max_string) if max_string else {"type": "string"}
        if max_string:
            base.update(_BOUNDED.get(key, {}))
        props[f.name] = base
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


@lru_cache(maxsize=16)
def _schema_text(kind: str, max_string: int | None) -> str:
    string = _bounded_string(max_string) if max_string else {"type": "string"}
    if kind == "defects":  # strict structured outputs need an object at the root
        items: dict[str, Any] = {"type": "array", "items": string}
        if max_string:
            items.update(minItems=1, maxItems=8)
        props: dict[str, Any] = {"defects": items}
    else:
        comps: dict[str, Any] = {"type": "array", "items": _record_schema(ComponentView, max_string)}
        if max_string:
            comps.update(minItems=1, maxItems=MAX_COMPONENTS)
        props = {"image_view": _record_schema(ImageView, max_string),
                 "foreground_view": _record_schema(ForegroundView, max_string),
                 "components": comps,
                 "caption": dict(string),
                 "defect": _record_schema(DefectView, max_string) if kind == "anomalous" else {"type": "null"}}
    return json.dumps({"type": "object", "properties": props, "required": list(props),
                       "additionalProperties": False})


ANSWER_KINDS = ("normal", "anomalous", "defects")


def answer_schema(kind: str, *, max_string: int | None = None) -> dict[str, Any]:
    """The JSON Schema of one answer: "normal" / "anomalous" image (a normal image's "defect" is null) or the
    "defects" list. Without `max_string` it keeps to the subset that strict OpenAI structured outputs and vLLM's
    guided decoding accept (types, enum, pattern, required, additionalProperties: false); `max_string` adds
    bounds on strings, numbers and lists for local grammar decoding."""
    if kind not in ANSWER_KINDS:
        raise ValueError(f"unknown answer kind {kind!r}")
    return json.loads(_schema_text(kind, max_string))


def response_format(mode: str, kind: str) -> dict[str, Any] | None:
    """The chat/completions `response_format` field of a mode (None: prompt only)."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": f"mfsc_{kind}", "schema": answer_schema(kind),
                                                       "strict": True}}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


# ------------------------------------------------------------------------------------------- parsing
def extract_json(text: str) -> Any:
    """The JSON value in a model answer (code fences and text around the outermost braces are ignored)."""
    t = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", t, re.DOTALL)
    if fence:
        t = fence.group(1).strip()
    try:
        return json.loads(t)
    except json.JSONDecodeError:
        pass
    for open_, close in (("{", "}"), ("[", "]")):
        i, j = t.find(open_), t.rfind(close)
        if 0 <= i < j:
            try:
                return json.loads(t[i:j + 1])
            except json.JSONDecodeError:
                continue
    raise ValueError("the answer is not valid JSON")


def _str(obj: dict, key: str, where: str, errors: list[str], choices: tuple[str, ...] | None = None) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v.strip():
        errors.append(f"{where}.{key} must be a non-empty string")
        return ""
    if len(v) > MAX_FIELD_CHARS:
        errors.append(f"{where}.{key} is too long ({len(v)} characters); keep it under {MAX_FIELD_CHARS}")
        return ""
    v = " ".join(v.strip().lower().split()) if choices else " ".join(v.strip().split())
    if choices and v not in choices:
        errors.append(f"{where}.{key} is {v!r}; it must be one of: {', '.join(choices)}")
    return v


def _int(obj: dict, key: str, where: str, errors: list[str], minimum: int) -> int:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        errors.append(f"{where}.{key} must be an integer >= {minimum}")
        return minimum
    return v


def _location(obj: dict, where: str, errors: list[str]) -> str:
    """One grid word, or several joined by ' and ' / ', ' (a repeated component)."""
    v = _str(obj, "location", where, errors)
    words = [w.strip() for w in re.split(r",| and ", v) if w.strip()] if v else []
    bad = [w for w in words if w not in LOCATIONS]
    if v and (bad or not words):
        errors.append(f"{where}.location is {v!r}; use grid words: {', '.join(LOCATIONS)}")
    return v


def validate_answer(data: Any, *, anomalous: bool) -> tuple[LevelFields | None, list[str]]:
    """(fields, []) for a valid answer, (None, errors) otherwise."""
    errors: list[str] = []
    if not isinstance(data, dict):
        return None, ["the answer must be a JSON object"]
    iv, fv = data.get("image_view"), data.get("foreground_view")
    if not isinstance(iv, dict):
        errors.append("image_view must be an object with foreground and background")
        iv = {}
    if not isinstance(fv, dict):
        errors.append("foreground_view must be an object with count and relation")
        fv = {}
    image_view = ImageView(_str(iv, "foreground", "image_view", errors), _str(iv, "background", "image_view", errors))
    count = _int(fv, "count", "foreground_view", errors, 0)
    relation = _str(fv, "relation", "foreground_view", errors)
    comps_raw = data.get("components")
    components: list[ComponentView] = []
    if not isinstance(comps_raw, list) or not comps_raw:
        errors.append("components must be a non-empty list")
        comps_raw = []
    if len(comps_raw) > MAX_COMPONENTS:
        errors.append(f"components lists {len(comps_raw)} entries; give at most {MAX_COMPONENTS}")
    names: set[str] = set()
    for i, c in enumerate(comps_raw[:MAX_COMPONENTS]):
        w = f"components[{i}]"
        if not isinstance(c, dict):
            errors.append(f"{w} must be an object")
            continue
        name = _str(c, "name", w, errors).lower()
        if name in names:
            errors.append(f"{w}.name {name!r} is used twice; names must be unique")
        names.add(name)
        components.append(ComponentView(
            name=name, count=_int(c, "count", w, errors, 1), location=_location(c, w, errors),
            colour=_str(c, "colour", w, errors).lower(),
            texture=_str(c, "texture", w, errors, TEXTURES),
            shape=_str(c, "shape", w, errors, SHAPES),
            direction=_str(c, "direction", w, errors, DIRECTIONS), area=0.0,
            sentence=_str(c, "sentence", w, errors)))
    caption = _str(data, "caption", "answer", errors)
    defect = None
    d = data.get("defect")
    if anomalous:
        if not isinstance(d, dict):
            errors.append("defect must be an object with type, location, size, colour, sentence (the image is "
                          "anomalous)")
        else:
            defect = DefectView(_str(d, "type", "defect", errors), _location(d, "defect", errors),
                                _str(d, "size", "defect", errors, SIZES),
                                _str(d, "colour", "defect", errors).lower(), _str(d, "sentence", "defect", errors))
    elif d not in (None, {}):
        errors.append("defect must be null: the image is normal")
    if errors:
        return None, errors
    fg = ForegroundView(count or sum(c.count for c in components), relation)
    return LevelFields(image_view, fg, components, caption, defect), []


def align_regions(fields: LevelFields, req: CaptionRequest, fallback: LevelFields) -> LevelFields:
    """Give a model answer region names and areas: each stage-1 component region takes the model component
    at its location (else the attribute name); a component's area is the sum of its regions'."""
    by_loc: dict[str, str] = {}
    for c in fields.components:
        for w in re.split(r",| and ", c.location):
            by_loc.setdefault(w.strip(), c.name)
    names = []
    for i, r in enumerate(req.regions.components):
        fb = fallback.region_names[i] if i < len(fallback.region_names) else r.name
        names.append(by_loc.get(r.location, fb))
    for c in fields.components:
        c.area = round(float(sum(r.area for r, n in zip(req.regions.components, names, strict=False)
                                 if n == c.name)), 6)
    fields.region_names = names
    return fields


# ------------------------------------------------------------------------------------- the shared flow
Turn = tuple[str, str]  # (role, text); the image goes with the first user turn


class Ask(NamedTuple):
    """One conversation for a model: the image (with the first user turn), the turns, the answer kind."""

    image: np.ndarray | None
    turns: list[Turn]
    kind: str  # one of ANSWER_KINDS: which schema the answer follows


class Reply(NamedTuple):
    """A model's answer (None: the request failed) and the response format it was asked with."""

    text: str | None
    mode: str  # one of RESPONSE_FORMATS


Generate = Callable[[list[Ask]], list[Reply]]


def run_with_validation(requests: list[CaptionRequest], generate: Generate, prompt: Prompt,
                        provenance: Callable[[str, str], Provenance]) -> list[CaptionResult]:
    """Ask for every request, validate, retry the invalid ones once with their errors, fall back to the
    attribute captioner for what is still invalid; provenance (status, response format): status ok / retried /
    fallback, and the format the last answer was asked with."""
    attrs = AttributeCaptioner()
    kinds = ["anomalous" if r.is_anomalous else "normal" for r in requests]
    convs = [[("user", caption_prompt(prompt, r))] for r in requests]
    answers = generate([Ask(r.image, c, k) for r, c, k in zip(requests, convs, kinds, strict=True)])
    results: list[CaptionResult | None] = [None] * len(requests)
    retry: list[tuple[int, list[Turn]]] = []
    for i, (req, ans) in enumerate(zip(requests, answers, strict=True)):
        fields, errors = _check(ans.text, req)
        if fields is not None:
            results[i] = CaptionResult(align_regions(fields, req, attrs.fields(req)), provenance("ok", ans.mode))
        else:
            msg = prompt.render("retry", errors="; ".join(errors[:8])) if "retry" in prompt.sections else \
                "Your answer was invalid: " + "; ".join(errors[:8])
            retry.append((i, [*convs[i], ("assistant", ans.text or ""), ("user", msg)]))
    if retry:
        again = generate([Ask(requests[i].image, conv, kinds[i]) for i, conv in retry])
        for (i, _), ans in zip(retry, again, strict=True):
            req = requests[i]
            fb = attrs.fields(req)
            fields, _errors = _check(ans.text, req)
            if fields is not None:
                results[i] = CaptionResult(align_regions(fields, req, fb), provenance("retried", ans.mode))
            else:
                results[i] = CaptionResult(fb, provenance("fallback", ans.mode))
    return [r for r in results if r is not None]


def _check(answer: str | None, req: CaptionRequest) -> tuple[LevelFields | None, list[str]]:
    if answer is None:
        return None, ["no answer (request failed)"]
    try:
        data = extract_json(answer)
    except ValueError as exc:
        return None, [str(exc)]
    return validate_answer(data, anomalous=req.is_anomalous)


def parse_defect_list(answer: str | None) -> list[str] | None:
    """A model's list of plausible defects, cleaned; None when the answer is not a list of strings."""
    if not answer:
        return None
    try:
        data = extract_json(answer)
    except ValueError:
        return None
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        return None
    out = [bare(s.lower().replace("_", " ")) for s in data if isinstance(s, str)]
    out = [s for s in dict.fromkeys(out) if s and len(s) <= 40]
    return out[:8] or None
