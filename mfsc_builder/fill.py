"""MFSC stage 3, multi-level template filling: records per image and per class, and the detector's texts.

The class record merges the level fields of the reference normal images (the shots): a component is kept
when it appears on at least half of them, each attribute takes its most frequent value. From the merged
record come the MLLP texts per level (docs/CONTRACTS.md): one normal description D per group and the
handcrafted abnormal variants D~ built by replacement:
  - the object (or component) noun becomes "<noun> with <defect state>", one text per state;
  - a location word is swapped for its opposite ("top left" -> "bottom right", "center" -> "top left");
  - an attribute the class does not have is put in (a colour, texture or shape seen on no reference).
Every abnormal text differs from the normal texts of its entry, no text is empty, and every text fits CLIP's
77-token context with room for the learned tokens (`MAX_TOKENS` including start and end tokens). Articles and
the comma after an inserted state follow `english` ("a pill box with a crack, made of ...", "contamination").
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsad_data.samples import Sample
from mfsc_builder import clip_tokens
from mfsc_builder.captioners.base import CaptionResult
from mfsc_builder.crop import ImageRegions
from mfsc_builder.english import a, bare, state_phrase
from mfsc_builder.errors import BuildError
from mfsc_builder.records import (
    ClassRecord,
    ComponentView,
    DefectView,
    ForegroundView,
    ImageRecord,
    ImageView,
    PromptText,
    Provenance,
    RegionView,
)

CONTEXT_LENGTH = 77
LEARNED_TOKENS = 6          # room kept for learned context / abnormal tokens
MAX_TOKENS = CONTEXT_LENGTH - LEARNED_TOKENS
TOKENIZER_NAME = "ViT-B-16-plus-240"

GENERIC_DEFECTS = ("crack", "scratch", "hole", "stain", "dent", "missing part", "broken part", "contamination",
                   "color spot", "deformation")
OPPOSITE_LOCATION = {
    "top left": "bottom right", "bottom right": "top left", "top right": "bottom left",
    "bottom left": "top right", "top": "bottom", "bottom": "top", "left": "right", "right": "left",
    "center": "top left",
}
OPPOSITE_RELATION = {"above": "below", "below": "above", "left of": "right of", "right of": "left of",
                     "inside": "outside", "outside": "inside"}
# Attribute values that may be "put in" when the class does not have them; contrasting ones first.
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown", "cyan",
           "grey", "beige", "navy", "silver", "dark red", "dark green", "dark grey")
TEXTURES = ("smooth", "striped", "granular", "textured")
SHAPES = ("circular", "rectangular", "elongated", "irregular")
STATUS_RANK = {"ok": 0, "retried": 1, "fallback": 2}


# ----------------------------------------------------------------------------------------------- records
def image_record(sample: Sample, regions: ImageRegions, result: CaptionResult, *, object_name: str,
                 is_reference: bool) -> ImageRecord:
    """The MFSC record of one image from its `fsad_data.Sample`, stage-1 regions and stage-2 result."""
    f = result.fields
    w, h = regions.size if all(regions.size) else regions.foreground.mask.shape[::-1]  # original pixels
    names = list(f.region_names) + [""] * max(0, len(regions.components) - len(f.region_names))
    views = [RegionView("foreground", object_name, list(regions.foreground.box), regions.foreground.area,
                        regions.foreground.location, regions.foreground.orientation)]
    if not regions.background.empty:
        b = regions.background
        views.append(RegionView("background", "background", list(b.box), b.area, b.location, b.orientation))
    for r, name in zip(regions.components, names, strict=False):
        views.append(RegionView("component", name or r.name, list(r.box), r.area, r.location, r.orientation))
    for r in regions.defects:
        views.append(RegionView("defect", r.name, list(r.box), r.area, r.location, r.orientation))
    anomalous = int(sample.label) == 1
    defect = (f.defect or DefectView(type=_readable(sample.defect_type))) if anomalous else DefectView()
    return ImageRecord(
        id=sample.id, class_name=sample.class_name, object_name=object_name, split=sample.split,
        label=int(sample.label), defect_type=sample.defect_type, file_name=sample.file_name,
        image_path=str(sample.image_path), mask_path=None if sample.mask_path is None else str(sample.mask_path),
        width=int(w), height=int(h), is_reference=bool(is_reference), image_view=f.image_view,
        foreground_view=f.foreground_view, components=list(f.components), caption=f.caption, regions=views,
        defect=defect, provenance=result.provenance,
    )


def _readable(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").strip()


def _mode(values: Iterable[Any]) -> Any:
    """Most frequent value; ties go to the value seen first (deterministic)."""
    values = list(values)
    if not values:
        return ""
    counts = Counter(values)
    best = max(counts.values())
    return next(v for v in values if counts[v] == best)


def merge_components(references: Sequence[ImageRecord]) -> list[ComponentView]:
    """Components present on at least half of the references, attributes by majority, in first-seen order."""
    by_name: dict[str, list[ComponentView]] = {}
    for rec in references:
        for c in rec.components:
            by_name.setdefault(c.name, []).append(c)
    need = max(1, (len(references) + 1) // 2)
    merged = []
    for name, views in by_name.items():
        if len(views) < need:
            continue
        colour, texture, shape = _mode(v.colour for v in views), _mode(v.texture for v in views), \
            _mode(v.shape for v in views)
        location, direction = _mode(v.location for v in views), _mode(v.direction for v in views)
        count = int(_mode(v.count for v in views))
        fitting = [v for v in views if (v.colour, v.texture, v.shape, v.location, v.count)
                   == (colour, texture, shape, location, count)]
        sentence = (fitting or views)[0].sentence
        area = round(sum(v.area for v in views) / len(views), 6)
        merged.append(ComponentView(name, count, location, colour, texture, shape, direction, area, sentence))
    return merged


def merge_provenance(provs: Sequence[Provenance]) -> Provenance:
    """The shared backend/model of the references; the worst status (fallback > retried > ok)."""
    if not provs:
        return Provenance()
    first = provs[0]
    status = max((p.status for p in provs), key=lambda s: STATUS_RANK.get(s, 3))
    return Provenance(first.backend, _mode(p.model for p in provs), _mode(p.revision for p in provs),
                      first.prompt_version, status, _mode(p.response_format for p in provs))


def class_record(class_name: str, object_name: str, references: list[ImageRecord], *,
                 defect_states: list[str], defect_vocab: str, source_layout: str,
                 reference_selection: str) -> ClassRecord:
    """The merged class record from its reference normal images (the shots), with the detector's texts."""
    if not references:
        raise BuildError(f"class {class_name!r} has no reference normal images to merge; check that its "
                         "train/good folder holds images and that --shots is at least 1")
    components = merge_components(references)
    names = [c.name for c in components]
    fitting = [r for r in references if [c.name for c in r.components] == names]
    base = (fitting or list(references))[0]
    image_view = ImageView(_mode(r.image_view.foreground for r in references) or object_name,
                           _mode(r.image_view.background for r in references))
    relation = _mode(r.foreground_view.relation for r in (fitting or references))
    fg = ForegroundView(sum(c.count for c in components), relation)
    states = [s for s in dict.fromkeys(bare(_readable(s)) for s in defect_states) if s]
    texts = detector_texts(object_name, image_view, fg, components, base.caption, states)
    return ClassRecord(
        class_name=class_name, object_name=object_name, source_layout=source_layout,
        reference_images=[r.file_name for r in references], reference_selection=reference_selection,
        image_view=image_view, foreground_view=fg, components=components, caption=base.caption,
        defect_states=states, defect_vocab=defect_vocab, texts=texts,
        provenance=merge_provenance([r.provenance for r in references]),
    )


# ---------------------------------------------------------------------------------------- defect states
def defect_vocabulary(kind: str, samples: Iterable[Sample], class_name: str) -> list[str]:
    """Defect states: "generic" (a fixed list), "dataset" (the class's test defect folders: this leaks test
    information, say so), or a file (text: one state per line, '#' comments; JSON: a list, or a dict
    from class name to list with "*" as default). "model" is asked of the captioner by the caller."""
    if kind == "generic":
        return list(GENERIC_DEFECTS)
    if kind == "dataset":
        states = sorted({_readable(s.defect_type) for s in samples
                         if s.class_name == class_name and int(s.label) == 1 and s.defect_type != "good"})
        if not states:
            raise BuildError(f"--defect-vocab dataset: class {class_name!r} has no anomalous test folders; "
                             "use --defect-vocab generic or a file")
        return states
    path = Path(kind.removeprefix("file:"))
    if not path.is_file():
        raise BuildError(f"defect vocabulary {kind!r} is neither 'generic', 'dataset' nor an existing file; "
                         "give a text file with one defect state per line or a JSON list/dict")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BuildError(f"defect vocabulary file {path} is not valid JSON ({exc}); fix it") from exc
        if isinstance(data, dict):
            data = data.get(class_name, data.get("*"))
        if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
            raise BuildError(f"defect vocabulary file {path} has no list of strings for class {class_name!r} "
                             "(nor a '*' default); give a JSON list, or a dict of class name -> list")
        states = data
    else:
        states = [ln.split("#", 1)[0] for ln in text.splitlines()]
    out = [s for s in dict.fromkeys(_readable(s) for s in states) if s]
    if not out:
        raise BuildError(f"defect vocabulary file {path} holds no defect states; add one per line")
    return out


def defect_vocab_label(kind: str) -> str:
    """The `defect_vocab` field value for a --defect-vocab argument."""
    if kind in ("generic", "dataset", "model"):
        return kind
    return "file:" + Path(kind.removeprefix("file:")).name


# ----------------------------------------------------------------------------------------------- texts
def token_length(text: str) -> int:
    """CLIP BPE tokens of `text` including the start and end tokens: the count of open_clip's tokenizer of
    `TOKENIZER_NAME`, without importing torch (`clip_tokens`)."""
    return clip_tokens.counter().count(text) + 2


def fit_tokens(text: str, limit: int = MAX_TOKENS) -> str:
    """`text` shortened at word boundaries (a trailing clause first) until it fits `limit` tokens."""
    text = " ".join(text.split())
    if token_length(text) <= limit:
        return text
    for sep in ("; ", ", ", ": "):  # drop trailing clauses while that keeps some text
        while sep in text and token_length(text) > limit:
            text = text.rsplit(sep, 1)[0]
    words = text.split()
    while len(words) > 1 and token_length(" ".join(words)) > limit:
        words.pop()
    return " ".join(words)


_LOC_RE = re.compile(r"\b(" + "|".join(sorted(OPPOSITE_LOCATION, key=len, reverse=True)) + r")\b")
_REL_RE = re.compile(r"\b(" + "|".join(sorted(OPPOSITE_RELATION, key=len, reverse=True)) + r")\b")


# words that start a modifier of the noun before them: a comma keeps the state attached to the noun
# ("a pill box with a crack, made of ...", "a round part with a hole, at the top left")
_MODIFIER_START = re.compile(r"\s+(made|seen|shown|placed|set|lying|filling|at|on|in|inside|near|under|over|"
                             r"against|with|of|from|along|between|\w{3,}ing|\w{3,}ed)\b", re.IGNORECASE)


def with_state(text: str, noun: str, state: str) -> str:
    """The first whole-word `noun` in `text` becomes "<noun> with <a state>" (prefixed when absent)."""
    phrase = state_phrase(state)
    pat = re.compile(r"\b" + re.escape(noun) + r"\b", re.IGNORECASE) if noun else None
    m = pat.search(text) if pat is not None else None
    if m is None:
        return f"{a(noun or 'object')} with {phrase}: {text}"
    rest = text[m.end():]
    comma = "," if _MODIFIER_START.match(rest) else ""
    return f"{text[:m.end()]} with {phrase}{comma}{rest}"


def swap_locations(text: str) -> str:
    return _LOC_RE.sub(lambda m: OPPOSITE_LOCATION[m.group(1)], text)


def swap_relations(text: str) -> str:
    return _REL_RE.sub(lambda m: OPPOSITE_RELATION[m.group(1)], text)


def replace_word(text: str, old: str, new: str) -> str:
    if not old:
        return text
    return re.sub(r"\b" + re.escape(old) + r"\b", new, text, count=1)


def _unseen(candidates: Sequence[str], seen: Iterable[str]) -> str | None:
    seen_set = {s for s in seen if s}
    seen_words = set(" ".join(seen_set).split())
    return next((c for c in candidates if c not in seen_set and not set(c.split()) & seen_words), None)


def _entry(level: str, group: str, normal: list[str], abnormal: list[str]) -> PromptText | None:
    """Fit, de-duplicate and check one entry; abnormal texts equal to a normal text are dropped."""
    normal = [t for t in dict.fromkeys(fit_tokens(t) for t in normal) if t]
    if not normal:
        return None
    ab = [t for t in dict.fromkeys(fit_tokens(t) for t in abnormal) if t and t not in normal]
    if not ab:
        return None
    return PromptText(level, group, normal, ab)


def _join(words: Sequence[str]) -> str:
    words = [w for w in words if w]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


@dataclass(frozen=True)
class _Unseen:
    """The colour, texture and shape that abnormal texts put in: values no component of the class has."""

    colour: str | None
    texture: str | None
    shape: str | None


def detector_texts(object_name: str, image_view: ImageView, foreground_view: ForegroundView,
                   components: Sequence[ComponentView], caption: str, defect_states: Sequence[str]
                   ) -> list[PromptText]:
    """MLLP texts per level: image, background, one per component, relation, colour, texture, shape."""
    obj = object_name or image_view.foreground or "object"
    states = list(defect_states) or list(GENERIC_DEFECTS)
    colours = list(dict.fromkeys(c.colour for c in components if c.colour))
    textures = list(dict.fromkeys(c.texture for c in components if c.texture))
    shapes = list(dict.fromkeys(c.shape for c in components if c.shape))
    bg = image_view.background
    bg_words = [w for w in bg.split() if w not in ("plain",)]
    new = _Unseen(_unseen(COLOURS, [*colours, *bg_words]), _unseen(TEXTURES, textures), _unseen(SHAPES, shapes))
    entries = [_image_entry(obj, caption, states, colours, new.colour),
               _background_entry(obj, bg, bg_words, colours, states)]
    entries += [_component_entry(c, states, new) for c in components]
    entries += [_relation_entry(obj, foreground_view.relation, components, states),
                *_attribute_entries(obj, colours, textures, shapes, states)]
    return [e for e in entries if e is not None]


def _image_entry(obj: str, caption: str, states: list[str], colours: list[str], new_colour: str | None
                 ) -> PromptText:
    """The image level: the caption and a plain photo sentence; abnormal: a state on the object (or its
    surface), locations swapped, an unseen colour. It always has abnormal texts (there are states)."""
    cap = fit_tokens(caption or f"a photo of {a(obj)}")
    normal = [cap, f"a photo of {a('flawless ' + obj)}"]
    noun = f"{obj} surface" if re.search(rf"\b{re.escape(obj)} surface\b", cap) else obj
    abnormal = [with_state(cap, noun, s) for s in states] + [f"a photo of {a(obj)} with {state_phrase(s)}"
                                                             for s in states]
    if swap_locations(cap) != cap:
        abnormal.append(swap_locations(cap))
    if new_colour and colours:
        abnormal.append(replace_word(cap, colours[0], new_colour))
    image_entry = _entry("image", "image", normal, abnormal)
    if image_entry is None:  # cannot happen with states present; keep the contract explicit
        raise BuildError(f"no image-level abnormal text could be made for {obj!r}; check the defect states")
    return image_entry


def _background_entry(obj: str, bg: str, bg_words: list[str], colours: list[str], states: list[str]
                      ) -> PromptText | None:
    """The background with a state, or recoloured; a surface class (no background) says so in both."""
    if bg and bg != "none":
        bnorm = a(f"{bg} background")
        babn = [f"{bnorm} with {state_phrase(s)}" for s in states]
        other = _unseen(COLOURS, [*bg_words, *colours])
        bcol = next((w for w in bg_words if w in COLOURS), None)
        if other and bcol:
            babn.append(replace_word(bnorm, bcol, other))
    else:
        bnorm = f"no background, the {obj} fills the whole image"
        babn = [f"no background, the {obj} with {state_phrase(s)} fills the whole image" for s in states]
    return _entry("background", "background", [bnorm], babn)


def _component_entry(c: ComponentView, states: list[str], new: _Unseen) -> PromptText | None:
    """One component's sentence; abnormal: a state on it, locations swapped, an unseen colour, texture or
    shape put in for its own."""
    sent = fit_tokens(c.sentence or a(f"{c.colour} {c.name}".strip()))
    abn = [with_state(sent, c.name.split()[-1] if c.name not in sent else c.name, s) for s in states]
    if swap_locations(sent) != sent:
        abn.append(swap_locations(sent))
    if new.colour and c.colour and c.colour in sent:
        abn.append(replace_word(sent, c.colour, new.colour))
    if new.texture and c.texture and c.texture in sent:
        abn.append(replace_word(sent, c.texture, new.texture))
    if new.shape and c.shape and c.shape in sent:
        abn.append(replace_word(sent, c.shape, new.shape))
    return _entry("component", c.name, [sent], abn)


def _relation_entry(obj: str, relation: str, components: Sequence[ComponentView], states: list[str]
                    ) -> PromptText | None:
    """The relation sentence with its relations and locations swapped, or a state on the first component."""
    if not relation:
        return None
    rel = fit_tokens(relation)
    rabn = [swap_relations(rel), swap_locations(rel)]
    rabn += [with_state(rel, components[0].name if components else obj, s) for s in states[:3]]
    return _entry("relation", "relation", [rel], rabn)


def _attribute_entries(obj: str, colours: list[str], textures: list[str], shapes: list[str], states: list[str]
                       ) -> list[PromptText | None]:
    """The colour, texture and shape levels (those the class has): another value added, or a state."""
    out: list[PromptText | None] = []
    if colours:
        cn = f"{a(obj)} in {_join(colours)}"
        cabn = [f"{a(obj)} in {_join([*colours, c])}" for c in COLOURS if c not in colours
                and not set(c.split()) & set(" ".join(colours).split())][:3]
        out.append(_entry("colour", "colour", [cn], cabn))
    if textures:
        tn = f"{a(obj)} with {_join(textures)} surfaces"
        tabn = [f"{a(obj)} with {t} surfaces" for t in TEXTURES if t not in textures]
        tabn += [f"{tn} and {state_phrase(s)}" for s in states[:2]]
        out.append(_entry("texture", "texture", [tn], tabn))
    if shapes:
        sn = f"{a(obj)} with {_join(shapes)} parts"
        sabn = [f"{a(obj)} with {_join([*shapes, s])} parts" for s in SHAPES if s not in shapes]
        sabn += [f"{sn} and {state_phrase(s)}" for s in states[:2]]
        out.append(_entry("shape", "shape", [sn], sabn))
    return out
