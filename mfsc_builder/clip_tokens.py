"""CLIP BPE token counts without torch: the count open_clip's tokenizer gives, for the 77-token budget of fill.

Why not open_clip itself: importing it imports torch (seconds, gigabytes of libraries) only to count tokens.
The count is open_clip's `SimpleTokenizer` (the tokenizer of `fill.TOKENIZER_NAME`) step for step: the same
cleaning (ftfy, HTML unescape twice, whitespace collapsed, lower case), the same pre-token pattern (`regex`), the
same byte-to-unicode table, and the BPE merges done by the `tokenizers` library's BPE model built from open_clip's
own vocabulary file (`bpe_simple_vocab_16e6.txt.gz`, found with `importlib.util.find_spec`, which does not
import the package). `tests/test_clip_tokens.py` checks the counts against open_clip's tokenizer.
"""
from __future__ import annotations

import gzip
import html
import importlib.util
from functools import lru_cache
from pathlib import Path

from mfsc_builder.errors import BuildError

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2        # merges open_clip reads from the file (its `merges[1:49152-256-2+1]`)
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
END_OF_WORD = "</w>"
CACHE_WORDS = 100_000


def vocab_path() -> Path:
    """open_clip's BPE vocabulary file, located without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise BuildError(f"open_clip's BPE vocabulary {VOCAB_FILE} was not found; install open_clip_torch "
                     "(pip install open_clip_torch), which the text budget of the captions is counted with")


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table (printable Latin-1 bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars), strict=True))


class ClipTokenCounter:
    """Counts the BPE tokens of open_clip's `SimpleTokenizer` (default `clean="lower"`)."""

    def __init__(self, path: Path | None = None) -> None:
        # with the first count, not at import: every worker process imports fill (and this module) and counts nothing
        import regex
        from tokenizers import models

        with gzip.open(path or vocab_path()) as f:
            lines = f.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1: N_MERGES + 1]]
        self.byte_chars = _bytes_to_unicode()
        base = list(self.byte_chars.values())
        vocab = [*base, *(c + END_OF_WORD for c in base), *("".join(m) for m in merges), *SPECIAL_TOKENS]
        self.bpe = models.BPE({v: i for i, v in enumerate(vocab)}, merges, end_of_word_suffix=END_OF_WORD)
        self.pattern = regex.compile("|".join(SPECIAL_TOKENS)
                                     + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                     regex.IGNORECASE)
        self.cache: dict[str, int] = dict.fromkeys(SPECIAL_TOKENS, 1)

    @staticmethod
    def clean(text: str) -> str:
        """open_clip's `_clean_lower`: ftfy.fix_text, HTML unescaped twice, whitespace collapsed, lower case."""
        import ftfy  # about 90 ms of imports: with the first count

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return " ".join(text.split()).lower()

    def _word(self, word: str) -> int:
        n = self.cache.get(word)
        if n is None:
            n = len(self.bpe.tokenize("".join(self.byte_chars[b] for b in word.encode("utf-8"))))
            if len(self.cache) >= CACHE_WORDS:  # memory stays bounded on any input
                self.cache = dict.fromkeys(SPECIAL_TOKENS, 1)
            self.cache[word] = n
        return n

    def count(self, text: str) -> int:
        """Tokens of `text` without the start and end tokens (open_clip's `len(tokenizer.encode(text))`)."""
        return sum(self._word(w) for w in self.pattern.findall(self.clean(text)))


@lru_cache(maxsize=1)
def counter() -> ClipTokenCounter:
    """The process's one counter (building it reads the vocabulary once, about 0.1 s)."""
    return ClipTokenCounter()
