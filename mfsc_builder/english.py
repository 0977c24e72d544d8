"""English for the template texts: articles, mass nouns and plurals, so MFSC texts read as sentences.

Why: CLIP's text encoder was trained on real captions; "a pill box with crack made of ..." is not one, while
"a pill box with a crack, made of ..." is. Rules are small and explicit (no NLP dependency):
- a noun phrase takes "a"/"an" by its first sound, none when its head (last word) is a mass noun
  ("contamination", "fabric") or a plural ("scratches", "teeth"), or when it already has a determiner;
- a defect state whose head is an adjective or participle (data set folder names such as "bent",
  "misplaced", "broken large") gets the head noun "part", "color" gets "defect".
"""
from __future__ import annotations

import re

MASS_NOUNS = frozenset({
    "contamination", "corrosion", "damage", "debris", "dirt", "discoloration", "discolouration", "dust",
    "glue", "grease", "insulation", "liquid", "oil", "oxidation", "residue", "rust", "wear", "fraying",
    "fabric", "leather", "wood", "cloth", "metal", "plastic", "glass", "paper", "chewing gum", "gum", "macaroni",
})
IRREGULAR_PLURALS = frozenset({"teeth", "people", "feet", "mice", "leaves"})
DETERMINERS = ("a", "an", "the", "no", "some", "one", "two", "three", "four", "several", "many")
ADJECTIVES = frozenset({"bent", "broken", "rough", "missing", "faulty", "large", "small", "wrong", "loose",
                        "damaged", "flip", "dirty", "burnt", "worn", "torn", "open"})
HEADLESS = {"color": "color defect", "colour": "colour defect"}
_AN_EXCEPTIONS = ("uni", "us", "uti", "one", "eu", "u ")    # vowel letters with a consonant sound
_AN_CONSONANTS = ("hour", "honest", "honour", "honor")       # a silent h


def indefinite(phrase: str) -> str:
    """The indefinite article for the first word of `phrase`: "an" before a vowel sound, else "a"."""
    word = phrase.strip().lower() + " "
    if word.startswith(_AN_CONSONANTS):
        return "an"
    if word[:1] in "aeiou" and not word.startswith(_AN_EXCEPTIONS):
        return "an"
    return "a"


def is_plural(word: str) -> bool:
    word = word.lower()
    return word in IRREGULAR_PLURALS or (word.endswith("s") and not word.endswith(("ss", "us", "is", "ics")))


def _head_is_mass(phrase: str) -> bool:
    low = phrase.lower()
    return any(low == m or low.endswith(" " + m) for m in MASS_NOUNS)


def a(phrase: str) -> str:
    """`phrase` with an indefinite article where English needs one: "a crack", "an eraser",
    "contamination", "scratches", "fabric"; a phrase that already starts with a determiner is kept."""
    phrase = " ".join(phrase.split())
    words = phrase.lower().split()
    if not words or words[0] in DETERMINERS or is_plural(words[-1]) or _head_is_mass(phrase):
        return phrase
    return f"{indefinite(phrase)} {phrase}"


def bare(phrase: str) -> str:
    """`phrase` without a leading article ("a scratch" -> "scratch"): states are stored bare."""
    return re.sub(r"^(a|an|the)\s+", "", " ".join(phrase.split()), flags=re.IGNORECASE)


def state_phrase(state: str) -> str:
    """A defect state as the noun phrase that follows "with": "a crack", "contamination", "a bent part"."""
    state = bare(state)
    words = state.split()
    if not words:
        return state
    if state.lower() in HEADLESS:
        state = HEADLESS[state.lower()]
    elif words[-1].lower() in ADJECTIVES or (words[-1].lower().endswith("ed") and not words[-1].lower().endswith("eed") and len(words[-1]) > 4):
        state = f"{state} part"
    return a(state)
