"""The paper's own MFSC captions: the public ``PromptAD/fine_grained_prompts.py`` as a ``classes`` dataset.

Why: the paper's numbers come from one GPT-4o record per class, hand-edited and published only as a Python
module (RetoFan233/FineGrainedAD). ``mfsc import-official FILE --out DIR`` turns that module into a caption
dataset (schema v1, provenance backend ``official``), so ``detector train --captions DIR`` runs on the
captions and class-specific defect states the paper used.

The file is read, never imported or executed: it is parsed with ``ast`` and only the literal values assigned
at module level to the records below go through ``ast.literal_eval`` (its ``__main__`` block and any other
code are never run). Records read:
  - ``fine_grained_normal_prompts_v3``: list of per-class dicts ``Level_1`` (foreground, background),
    ``Level_2`` (entity, number, location, relation), ``Level_3`` (direction, color, texture, shape,
    entity_caption), ``caption``;
  - ``total_classes2id``: class folder name -> index into that list;
  - ``class_state_abnormal_refined``: class -> templates such as ``"{} with large breakage"``;
  - ``class_mapping``: class -> noun (``"pcb1" -> "printed circuit board"``); absent classes keep their name;
  - ``fine_grained_{color,texture,shape,location}_list``: the vocabularies its handcrafted abnormal texts use.
A missing or unknown field is one error naming the class and the field.

The texts are the public prompt learner's descriptions D (the detector adds the learned tokens; the public
code also appends a "." to each D when it builds its prompt strings):
  - image: the caption; abnormal: the caption with its foreground noun replaced by each defect template;
  - background: "<background> background"; abnormal: that text followed by each template's state;
  - component (one per ``Level_2`` entity): its ``entity_caption``; abnormal: the caption lower-cased, the
    state put after the entity (or its plural) and its location word swapped for another location. The
    public code draws ONE state and ONE other location at random per run (unseeded); here every state
    gives one text, the k-th state with the k-th other location of ``fine_grained_location_list``
    (deterministic, and it covers the states the random draw picks from), and the detector's ``paper``
    recipe keeps one of them per component, drawn with the run's seed (``component_texts``, FIDELITY.md #41);
  - relation: the relation sentence; abnormal: every entity name replaced by the template, per template;
  - colour / texture / shape: the class's values joined by "."; abnormal: each value of the file's list
    that the class does not have.
Texts are cut at a word boundary to fit CLIP's context with the learned tokens (the public tokenizer
truncates at 77 tokens as well); an abnormal text that equals a normal text (ignoring case, as CLIP's
tokenizer does) is dropped, and a group left without one is reported, never dropped silently.

Bounds (a hostile file is refused in one line naming it, before the work it would cost): the file's size
(``MAX_BYTES``, checked before it is read: Python's parser needs up to about 900 bytes of memory per byte of
source), an expression too deep for the parser, values of the wrong shape, and the size of what the import
would make (``MAX_OUTPUT``: records shared by many classes or very long lists multiply it). Each text made by a
replacement is cut to ``LONGEST`` characters as it is made (the public relation rule replaces every entity in
turn, so a few bytes of file could otherwise ask for an exponentially long text).
"""
from __future__ import annotations

import ast
import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsad_data.names import MVTEC_AD, VISA, readable_name
from mfsc_builder.errors import BuildError
from mfsc_builder.ownership import LEGACY_LOCK_NAME, check_apart, holding
from mfsc_builder.records import (
    SCHEMA_VERSION,
    ClassRecord,
    ComponentView,
    ForegroundView,
    ImageView,
    PromptText,
    Provenance,
)

PROMPTS = "fine_grained_normal_prompts_v3"
STATES = "class_state_abnormal_refined"
CLASS_IDS = "total_classes2id"
NAMES = "class_mapping"
VOCABULARIES = {"colour": "fine_grained_color_list", "texture": "fine_grained_texture_list",
                "shape": "fine_grained_shape_list", "location": "fine_grained_location_list"}
REQUIRED = (PROMPTS, STATES, CLASS_IDS, *VOCABULARIES.values())
OPTIONAL = (NAMES,)
BACKEND = "official"
INFO_NAME = "import_info.json"

MAX_BYTES = 512 * 1024  # the public file is about 100 KB; worst-case parser memory about 0.5 GB at this size
LONGEST = 1024  # characters of a text made here: a 77-token CLIP text has a few hundred
TEXT_COST = 256  # what one text counts towards MAX_OUTPUT (its characters and its row)
MAX_OUTPUT = 16_000_000  # characters of records and texts of one import: over ten times the public file's

FIELDS = {  # the record shape of fine_grained_normal_prompts_v3: level -> (required keys, per-entity keys)
    "Level_1": ({"foreground", "background"}, set()),
    "Level_2": ({"entity", "number", "location", "relation"}, {"entity", "number", "location"}),
    "Level_3": ({"direction", "color", "texture", "shape", "entity_caption"}, {"entity_caption"}),
}
TOP_FIELDS = {"Level_1", "Level_2", "Level_3", "caption"}


@dataclass
class ImportSummary:
    """What `import_official` wrote: the folder, the classes, and notes on groups left without a text."""

    out: Path
    classes: list[str]
    sha256: str
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- reading
def read_official(path: str | Path) -> dict[str, Any]:
    """The literal records of the public prompts module, by name, parsed with ``ast`` (never executed)."""
    return _read(Path(path))[0]


def _source_bytes(path: Path) -> bytes:
    """The file's bytes, its size checked against ``MAX_BYTES`` before anything is read."""
    if not path.is_file():
        raise BuildError(f"{path} not found; give the path of PromptAD/fine_grained_prompts.py")
    fix = (f"is it PromptAD/fine_grained_prompts.py? If it is a larger version, delete the records the importer "
           f"does not read (it reads only {', '.join((*REQUIRED, *OPTIONAL))}; not e.g. "
           "fine_grained_normal_prompts_old or class_state_abnormal_refined_filo) and run again")
    too_big = f"over the importer's bound of 512 KiB ({MAX_BYTES} bytes; the public file is about 100 KB)"
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise BuildError(f"{path} is {size} bytes, {too_big}; {fix}")
        with path.open("rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise BuildError(f"cannot read {path} ({exc.strerror or exc}); give the public fine_grained_prompts.py"
                         ) from None
    if len(data) > MAX_BYTES:  # it grew after the check
        raise BuildError(f"{path} is more than {MAX_BYTES} bytes, {too_big}; {fix}")
    return data


def _read(path: Path) -> tuple[dict[str, Any], str]:
    """The literal records and the SHA-256 of the bytes they were read from."""
    data = _source_bytes(path)
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BuildError(f"cannot read {path} as UTF-8 text ({exc}); give the public fine_grained_prompts.py"
                         ) from None
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise BuildError(f"{path} line {exc.lineno}: not valid Python ({exc.msg}); give the public "
                         "fine_grained_prompts.py unchanged") from None
    except (MemoryError, RecursionError):  # the parser's own stack ("too complex") or its AST conversion
        raise BuildError(f"{path}: an expression is nested too deeply to parse (Python's parser gave up); the "
                         "public file has none: give the public fine_grained_prompts.py unchanged") from None
    wanted = set(REQUIRED) | set(OPTIONAL)
    found: dict[str, Any] = {}
    for node in tree.body:  # module level only: nothing under `if __name__ == "__main__":` or in functions
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for target in targets:
            if isinstance(target, ast.Name) and target.id in wanted:
                try:
                    found[target.id] = ast.literal_eval(value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    raise BuildError(f"{path} line {node.lineno}: {target.id} is not a literal value; the importer "
                                     "reads literals only (it never runs the file)") from None
    del tree
    missing = [name for name in REQUIRED if name not in found]
    if missing:
        raise BuildError(f"{path} has no module-level {', '.join(missing)}; is it PromptAD/fine_grained_prompts.py?")
    _check_shapes(found, path)
    found.setdefault(NAMES, {})
    return found, hashlib.sha256(data).hexdigest()


def _check_shapes(found: dict[str, Any], path: Path) -> None:
    """The records' types, the keys and values of the three dicts, and text the output can hold (UTF-8)."""
    for name, kind in ((PROMPTS, list), (STATES, dict), (CLASS_IDS, dict), (NAMES, dict),
                       *((v, list) for v in VOCABULARIES.values())):
        if name in found and not isinstance(found[name], kind):
            raise BuildError(f"{path}: {name} is a {type(found[name]).__name__}, expected a {kind.__name__}")
    for name in VOCABULARIES.values():
        if not all(isinstance(v, str) for v in found[name]):
            raise BuildError(f"{path}: {name} must be a list of strings")
    values = {CLASS_IDS: (int, "an index (a whole number) into " + PROMPTS), NAMES: (str, "a string"),
              STATES: (list, "a list of templates such as '{} with crack'")}
    for name, (kind, what) in values.items():
        for key, value in found.get(name, {}).items():
            if not isinstance(key, str):
                raise BuildError(f"{path}: {name} has the key {key!r:.40}; its keys must be class names (strings "
                                 "such as 'bottle')")
            if not isinstance(value, kind) or isinstance(value, bool):
                raise BuildError(f"{path}: {name} maps {key!r:.40} to {value!r:.40}; it must map each class to "
                                 f"{what}")
    for name in (*REQUIRED, *OPTIONAL):
        for text in _all_strings(found.get(name)):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise BuildError(f"{path}: {name} holds the text {text!r:.60} with a lone surrogate escape "
                                 "(\\ud800-\\udfff), which no dataset can store; fix that text") from None


def _all_strings(value: Any) -> Iterable[str]:
    """Every string in a literal (keys too), without recursion."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            stack += [*v.keys(), *v.values()]
        elif isinstance(v, (list, tuple, set, frozenset)):
            stack += list(v)


def _chars(value: Any) -> int:
    return sum(len(s) for s in _all_strings(value))


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BuildError(f"{where} must be a list of strings, got {value!r:.80}")
    return [" ".join(v.split()) for v in value]


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BuildError(f"{where} must be a non-empty string, got {value!r:.80}")
    return " ".join(value.split())


def _level(record: dict, level: str, where: str) -> dict:
    """``record[level][0]`` checked against the known keys (missing and unknown ones are errors)."""
    value = record.get(level)
    if not isinstance(value, list) or not value or not isinstance(value[0], dict):
        raise BuildError(f"{where} lacks {level} (a list holding one dict)")
    if len(value) > 1:
        raise BuildError(f"{where}: {level} holds {len(value)} dicts; the public code reads only the first, "
                         "give one")
    d = value[0]
    required, _ = FIELDS[level]
    missing, unknown = sorted(required - set(d)), sorted(set(d) - required)
    if missing:
        raise BuildError(f"{where} lacks {level}.{', '.join(missing)}")
    if unknown:
        raise BuildError(f"{where} has unknown field(s) {level}.{', '.join(unknown)} (known: "
                         f"{', '.join(sorted(required))}); is it another version of the file?")
    return d


# ----------------------------------------------------------------------------------------------- texts
def _fit(text: str) -> str:
    """`text` cut at word boundaries to fit CLIP's context with the learned tokens (as `mfsc build` texts): the
    most words that fit (at least one), found by bisection (a word adds at least one token, so the count only
    grows with the words), then cut to ``LONGEST`` characters (a single hostile word)."""
    # here, not at the top: fill imports crop (OpenCV, numpy), which only the making of texts needs
    from mfsc_builder.fill import MAX_TOKENS, token_length

    words = text.split()[:MAX_TOKENS]  # every word is at least one token: later ones never fit
    if len(words) > 1 and token_length(" ".join(words)) > MAX_TOKENS:
        lo, hi = 1, len(words) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if token_length(" ".join(words[:mid])) <= MAX_TOKENS else (lo, mid - 1)
        words = words[:lo]
    return " ".join(words)[:LONGEST]


def _swap(text: str, old: str, new: str) -> str:
    """``text.replace(old, new)[:LONGEST]`` in bounded memory: no more replacements than can begin before the
    cut (the text itself is one read from the file or an earlier cut text)."""
    grow = len(new) - len(old)
    if grow <= 0:
        return text.replace(old, new)[:LONGEST]
    return text.replace(old, new, -(-LONGEST // grow))[:LONGEST]


def _entry(level: str, group: str, normal: list[str], abnormal: Iterable[str], where: str,
           notes: list[str]) -> PromptText | None:
    """One group's texts, fitted; ``abnormal`` is consumed one text at a time (each made and cut in turn)."""
    normal = list(dict.fromkeys(_fit(t) for t in normal))
    seen = {t.lower() for t in normal}
    ab = [t for t in dict.fromkeys(_fit(t) for t in abnormal) if t and t.lower() not in seen]
    if not ab:
        notes.append(f"{where}: {level} group {group!r} left out: each of its abnormal texts equals its normal "
                     "text (the public replacement found nothing to replace)")
        return None
    return PromptText(level, group, normal, ab)


def _component_abnormal(caption: str, entity: str, location: str, suffix: str, new_location: str) -> str:
    """The public rule: lower-case, state after the entity (its plural if present), location swapped."""
    text = caption.lower()
    if not entity.endswith("s") and entity + "s" in text:
        text = _swap(text, entity + "s", entity + "s" + suffix)
    else:
        text = _swap(text, entity, entity + suffix)
    if location == "center":
        return _swap(_swap(text, "center", new_location), "centrally", new_location)
    return _swap(text, location, new_location)


def _unique_names(entities: list[str], locations: list[str]) -> list[str]:
    """Group names: the entity, with its location where entities repeat ("candle (top left)")."""
    counts = Counter(entities)
    names = [e if counts[e] == 1 else f"{e} ({loc})" for e, loc in zip(entities, locations)]
    counts = Counter(names)
    return [n if counts[n] == 1 else f"{n} #{i + 1}" for i, n in enumerate(names)]


def _count(number: str, where: str) -> int:
    """A Level_2 number as an int; a word such as "multiple" or "many" (no number given) is 0."""
    n = number.strip()
    if not n.isdigit():
        return 0
    if not (n.isascii() and len(n) <= 9):
        raise BuildError(f"{where} Level_2.number {number!r:.20} is not a count (digits 0-9, at most 9 of them) nor "
                         "a word such as 'multiple'")
    return int(n)


def _attribute(values: list[str], joined: str, i: int, n: int) -> str:
    """Component i's value of a Level_3 list: one per entity, else (a class-wide list) all of them (``joined``)."""
    return values[i] if len(values) == n else joined


def _planned_output(data: dict[str, Any], class_name: str, sizes: dict[int, int]) -> int:
    """At most how many characters ``official_class_record`` makes for the class (its record, copied into each
    component's view, and ``TEXT_COST`` per text), from the raw values without copying them; a value of the
    wrong shape counts nothing here (its class is refused when it is read). ``sizes``: the records' characters
    by index, counted once however many classes share a record."""
    def length(level: str, key: str) -> int:
        try:
            v = rec[level][0][key]
        except (TypeError, KeyError, IndexError):
            return 0
        return len(v) if isinstance(v, list) else 0

    index = data[CLASS_IDS].get(class_name)
    records = data[PROMPTS]
    rec = records[index] if isinstance(index, int) and 0 <= index < len(records) else None
    states = data[STATES].get(class_name)
    n, t = length("Level_2", "entity"), len(states) if isinstance(states, list) else 0
    vocab = sum(len(data[VOCABULARIES[k]]) for k in ("colour", "texture", "shape"))
    if rec is not None and index not in sizes:
        sizes[index] = _chars(rec)
    return (1 + n) * sizes.get(index, 0) + _chars(states) + TEXT_COST * (t * (3 + 2 * n) + vocab + 3)


@dataclass
class _Fields:
    """The checked values of one class's record of the public file (``_fields``), ``where`` it was read."""

    where: str
    caption: str
    fg: str
    bg: str
    relation: str
    entities: list[str]
    counts: list[int]
    locations: list[str]
    captions: list[str]
    attrs: dict[str, list[str]]  # direction, color, texture, shape: one value per entity or class-wide


def _class_entry(data: dict[str, Any], class_name: str, source: str) -> tuple[dict, str]:
    """The class's record in ``PROMPTS`` (by its ``CLASS_IDS`` index) with its known top fields, and the words
    that name it in errors."""
    ids = data[CLASS_IDS]
    if class_name not in ids:
        raise BuildError(f"class {class_name!r} is not in {CLASS_IDS} of {source} (classes: "
                         f"{', '.join(sorted(map(str, ids)))})")
    index = ids[class_name]
    records = data[PROMPTS]
    if not isinstance(index, int) or not 0 <= index < len(records):
        raise BuildError(f"class {class_name!r}: {CLASS_IDS} gives index {index!r} but {PROMPTS} holds "
                         f"{len(records)} records")
    rec = records[index]
    where = f"{source}: class {class_name!r} ({PROMPTS}[{index}])"
    if not isinstance(rec, dict):
        raise BuildError(f"{where} is not a dict")
    missing, unknown = sorted(TOP_FIELDS - set(rec)), sorted(set(rec) - TOP_FIELDS)
    if missing:
        raise BuildError(f"{where} lacks {', '.join(missing)}")
    if unknown:
        raise BuildError(f"{where} has unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(TOP_FIELDS))})")
    return rec, where


def _fields(rec: dict, where: str) -> _Fields:
    """The record's level values, each checked for its type, and one entry per entity in every per-entity list."""
    l1, l2, l3 = (_level(rec, lv, where) for lv in ("Level_1", "Level_2", "Level_3"))
    caption = _text(rec["caption"], f"{where} caption")
    fg = _text(l1["foreground"], f"{where} Level_1.foreground")
    bg = _text(l1["background"], f"{where} Level_1.background")
    relation = _text(l2["relation"], f"{where} Level_2.relation")
    entities, numbers, locations = (_strings(l2[k], f"{where} Level_2.{k}") for k in ("entity", "number", "location"))
    counts = [_count(v, where) for v in numbers]
    captions = _strings(l3["entity_caption"], f"{where} Level_3.entity_caption")
    attrs = {k: _strings(l3[k], f"{where} Level_3.{k}") for k in ("direction", "color", "texture", "shape")}
    n = len(entities)
    if n == 0:
        raise BuildError(f"{where}: Level_2.entity is empty; the public code needs at least one entity")
    lengths = {"Level_2.number": len(numbers), "Level_2.location": len(locations),
               "Level_3.entity_caption": len(captions)}
    bad = {k: v for k, v in lengths.items() if v != n}
    if bad:
        raise BuildError(f"{where}: {n} entities but " + ", ".join(f"{v} in {k}" for k, v in bad.items()))
    return _Fields(where, caption, fg, bg, relation, entities, counts, locations, captions, attrs)


def _templates(data: dict[str, Any], class_name: str, source: str) -> list[str]:
    """The class's defect templates (``"{} with large breakage"``), each with exactly one ``{}`` slot."""
    if class_name not in data[STATES]:
        raise BuildError(f"class {class_name!r} has no defect states in {STATES} of {source}")
    templates = _strings(data[STATES][class_name], f"{source}: class {class_name!r} {STATES}")
    no_slot = [t for t in templates if t.count("{}") != 1]
    if no_slot or not templates:
        raise BuildError(f"{source}: class {class_name!r} {STATES} needs templates with one '{{}}' each "
                         f"(got {no_slot or templates!r:.80})")
    return templates


def _components(f: _Fields, names: list[str]) -> list[ComponentView]:
    """One component per entity; a class-wide attribute list (not one value per entity) gives each all of it."""
    n = len(f.entities)
    joined = {k: " and ".join(dict.fromkeys(v)) for k, v in f.attrs.items()}

    def attribute(key: str, i: int) -> str:
        return _attribute(f.attrs[key], joined[key], i, n)

    return [ComponentView(name=names[i], count=f.counts[i], location=f.locations[i], colour=attribute("color", i),
                          texture=attribute("texture", i), shape=attribute("shape", i),
                          direction=attribute("direction", i), sentence=f.captions[i])
            for i in range(n)]


def _relation_abnormal(relation: str, entities: list[str], templates: list[str]) -> Iterable[str]:
    """The public relation rule: per template, every entity name in the relation replaced by the template."""
    for t in templates:
        r = relation
        for e in entities:
            r = _swap(r, e, t.replace("{}", e))
        yield r


def _official_texts(f: _Fields, names: list[str], templates: list[str], suffixes: list[str],
                    vocab: dict[str, list[str]], notes: list[str]) -> list[PromptText]:
    """The detector texts of the public rules (module docstring), per level; a group left without an abnormal
    text is noted, and dropped, except the image level, which must have one."""
    where = f.where
    image_abnormal = (_swap(f.caption, f.fg, t.replace("{}", f.fg)) for t in templates)
    image = _entry("image", "image", [f.caption], image_abnormal, where, notes)
    if image is None:
        raise BuildError(f"{where}: the caption does not contain the foreground {f.fg!r}, so no image-level abnormal "
                         "text can be made the public way; fix Level_1.foreground or the caption")
    texts: list[PromptText | None] = [image]
    background = f"{f.bg} background"
    texts.append(_entry("background", "background", [background], (background + s for s in suffixes), where,
                        notes))
    for i, (entity, location, sentence) in enumerate(zip(f.entities, f.locations, f.captions)):
        others = [loc for loc in vocab["location"] if loc != location] or [location]
        abnormal = (_component_abnormal(sentence, entity, location, s, others[k % len(others)])
                    for k, s in enumerate(suffixes))
        texts.append(_entry("component", names[i], [sentence], abnormal, where, notes))
    texts.append(_entry("relation", "relation", [f.relation], _relation_abnormal(f.relation, f.entities, templates),
                        where, notes))
    for level, key in (("colour", "color"), ("texture", "texture"), ("shape", "shape")):
        values = f.attrs[key]
        if values:
            have = set(values)
            texts.append(_entry(level, level, [".".join(values)], (v for v in vocab[level] if v not in have),
                                where, notes))
    return [t for t in texts if t is not None]


def official_class_record(data: dict[str, Any], class_name: str, source: str, sha256: str,
                          notes: list[str] | None = None) -> ClassRecord:
    """The MFSC class record and detector texts of one class of the parsed public file."""
    notes = notes if notes is not None else []
    rec, where = _class_entry(data, class_name, source)
    f = _fields(rec, where)
    templates = _templates(data, class_name, source)
    suffixes = [t.replace("{}", "") for t in templates]  # " with large breakage": what the public code appends
    object_name = str(data[NAMES].get(class_name) or readable_name(class_name))
    vocab = {k: list(data[v]) for k, v in VOCABULARIES.items()}
    names = _unique_names(f.entities, f.locations)
    components = _components(f, names)
    texts = _official_texts(f, names, templates, suffixes, vocab, notes)
    return ClassRecord(
        class_name=class_name, object_name=object_name,
        source_layout="mvtec" if class_name in MVTEC_AD else "visa" if class_name in VISA else "folder",
        reference_images=[], reference_selection="official: the paper's record (its reference image is not published)",
        image_view=ImageView(f.fg, f.bg), foreground_view=ForegroundView(sum(c.count for c in components), f.relation),
        components=components, caption=f.caption,
        defect_states=[s.strip().removeprefix("with ").strip() for s in suffixes],
        defect_vocab=f"file:{Path(source).name}", texts=texts,
        provenance=Provenance(backend=BACKEND, model=Path(source).name, revision=f"sha256:{sha256}",
                              prompt_version=PROMPTS, status="ok"),
    )


# ----------------------------------------------------------------------------------------------- writing
def _check_out(out: Path, source: Path) -> None:
    """Refuse an ``out`` this command may not write: a file, one holding the input, or a non-empty folder that is
    not its earlier output (no ``INFO_NAME``; a lone lock file is what a run killed at its start by an earlier
    version left)."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} is a file; give a folder")
    check_apart(out, [source])
    if out.is_dir() and not (out / INFO_NAME).is_file() and any(p.name != LEGACY_LOCK_NAME for p in out.iterdir()):
        raise BuildError(f"--out {out} is not empty and holds files not written by `mfsc import-official` (no "
                         f"{INFO_NAME}); it never writes beside or replaces files it did not write: choose an empty "
                         "or new folder")


def import_official(path: str | Path, out: str | Path, classes: Sequence[str] | None = None) -> ImportSummary:
    """Parse the public prompts file and write ``out/classes`` (schema v1) plus ``out/import_info.json``.

    ``out`` is held by the one lock of an mfsc output folder (``ownership.holding``) while it is written: a second
    run into it, of this command or another (`mfsc build`, `merge`), is refused at once."""
    path, out = Path(path), Path(out)
    _check_out(out, path)
    with holding(out, "mfsc import-official"):
        return _import_held(path, out, classes)


def _import_held(path: Path, out: Path, classes: Sequence[str] | None) -> ImportSummary:
    """``import_official`` with the lock of ``out`` held."""
    import datasets

    from fsad_data.atomic import staged_folder, write_json_atomic  # it imports numpy
    from mfsc_builder.records import CLASSES_FEATURES  # made on first use, with datasets

    _check_out(out, path)  # again, holding the lock: what another run wrote before it took it counts
    data, sha256 = _read(path)
    ids = data[CLASS_IDS]
    names = list(dict.fromkeys(classes)) if classes else sorted(ids, key=lambda c: ids[c])
    if not names:
        raise BuildError(f"{path}: {CLASS_IDS} is empty; nothing to import")
    sizes: dict[int, int] = {}
    planned = sum(_planned_output(data, c, sizes) for c in names)
    if planned > MAX_OUTPUT:
        raise BuildError(f"{path}: importing its {len(names)} classes would make up to {planned:,} characters of "
                         f"records and texts, over the importer's bound of {MAX_OUTPUT:,} (more than ten times "
                         "the public file's); import fewer classes with --classes, or check the file for records "
                         "shared by many classes or very long lists")
    notes: list[str] = []
    rows = [official_class_record(data, c, str(path), sha256, notes).to_row() for c in names]

    write_json_atomic(out / INFO_NAME, {  # the marker first: a folder holding it is this command's to replace
        "command": "mfsc import-official", "schema_version": SCHEMA_VERSION, "source": path.name,
        "sha256": sha256, "classes": names, "notes": notes,
    })
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with staged_folder(out / "classes") as tmp:  # complete beside the old one, then swapped in
            datasets.Dataset.from_list(rows, features=CLASSES_FEATURES).save_to_disk(str(tmp))
    finally:
        if bars:
            datasets.enable_progress_bars()
    return ImportSummary(out, names, sha256, notes)
