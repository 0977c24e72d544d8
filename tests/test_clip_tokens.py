"""The builder's CLIP token count (`fill.token_length`, `clip_tokens`) is open_clip's tokenizer count, and
counting does not import torch."""
import random
import subprocess
import sys

import pytest

from mfsc_builder import clip_tokens, fill


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    import open_clip

    return open_clip.get_tokenizer(fill.TOKENIZER_NAME)


def _varied_texts(n: int = 400) -> list[str]:
    """Deterministic strings over what captions and users' vocabularies may hold: punctuation, digits,
    contractions, case, accents, CJK, emoji, combining marks, mojibake (ftfy repairs it), HTML entities,
    odd whitespace, the special tokens' spellings, and long texts on both sides of the 77-token context."""
    rng = random.Random(12)
    words = ["a", "red", "bottle", "with", "crack", "on", "the", "top-left", "metal_nut", "pill box", "PCB4",
             "it's", "they'll", "we've", "I'm", "you'd", "don't", "U.S.A.", "3.5mm", "x2", "1/4", "50%", "#12",
             "café", "naïve", "Ångström", "Straße", "ﬁne", "日本語", "한국어", "Привет", "مرحبا", "🙂", "👍🏽", "e\u0301",
             "Ã©", "â€™", "&amp;", "&lt;b&gt;", "&amp;lt;", "<start_of_text>", "<END_OF_TEXT>", "<tag>", "...",
             "--", "(left)", "[x]", "{y}", "\"quoted\"", "'single'", "¡hola!", "¿qué?", "a\tb", "line\nbreak",
             "\u00a0nbsp", "x\u200by", "½", "²", "٣", "Ⅻ", "°C", "±0.1", "µm", "naïveté", "ABCdef", "aaaaaaaaaa",
             "supercalifragilisticexpialidocious", "zipper's", "screw-bag", "dark grey", "granular", ";", ",", ":"]
    out = []
    for i in range(n):
        k = rng.choice([1, 2, 3, 5, 8, 13, 30, 45, 60, 70, 75, 90])
        sep = rng.choice([" ", " ", " ", "", "  ", ", "])
        text = sep.join(rng.choice(words) for _ in range(k))
        if i % 7 == 0:
            text = " " + text.upper() + " \n"
        out.append(text)
    out += ["", " ", "a", "!!!", "0123456789", "1,000,000.00", "🙂" * 40, "ab" * 200, "a " * 80, "x-" * 60]
    return out


def _demo_build_texts(demo_root, tmp_path) -> list[str]:
    """Every text a demo build stores: the detector texts of the class records and the image captions."""
    import datasets

    from mfsc_builder.build import BuildConfig, run_build

    out = tmp_path / "build"
    run_build(BuildConfig(source=str(demo_root), out=str(out)))
    classes = datasets.load_from_disk(str(out / "classes"))
    texts = [x for row in classes for t in row["texts"] for x in (*t["normal"], *t["abnormal"])]
    images = datasets.load_from_disk(str(out / "images"))
    for split in images:
        rows = images[split].select_columns(["caption", "components"])
        texts += [r["caption"] for r in rows] + [c["sentence"] for r in rows for c in r["components"]]
    return texts


def _check_counts(texts, tok):
    counts = [fill.token_length(t) for t in texts]
    assert counts == [len(tok.encode(t)) + 2 for t in texts]
    short = [t for t, c in zip(texts, counts, strict=True) if c <= fill.CONTEXT_LENGTH]
    ids = tok(short)  # what the text encoder is fed: start, tokens, end, zero padding (0 is also "!")
    ends = [int((row == tok.eot_token_id).nonzero()[-1, 0]) + 1 for row in ids]  # the text may hold one too
    assert ends == [c for c in counts if c <= fill.CONTEXT_LENGTH]


def test_counts_equal_open_clip_on_varied_strings(open_clip_tokenizer):
    texts = _varied_texts()
    counts = [fill.token_length(t) for t in texts]
    assert min(counts) == 2 and max(counts) > fill.CONTEXT_LENGTH  # empty and overlong texts are covered
    assert sum(fill.CONTEXT_LENGTH - 6 <= c <= fill.CONTEXT_LENGTH + 6 for c in counts) >= 10  # and the limit
    _check_counts(texts, open_clip_tokenizer)


def test_counts_equal_open_clip_on_every_text_of_a_demo_build(demo_root, tmp_path, open_clip_tokenizer):
    texts = _demo_build_texts(demo_root, tmp_path)
    assert len(texts) > 300
    _check_counts(texts, open_clip_tokenizer)
    # fitting stops at the budget open_clip would count
    long = " ; ".join(texts[:40])
    fitted = fill.fit_tokens(long)
    assert len(open_clip_tokenizer.encode(fitted)) + 2 <= fill.MAX_TOKENS < len(open_clip_tokenizer.encode(long))


def test_fitting_tokens_imports_neither_torch_nor_open_clip():
    code = ("import sys\nfrom mfsc_builder import fill\n"
            "assert fill.fit_tokens('a red bottle with a crack ' * 30).startswith('a red bottle')\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_vocabulary_is_open_clips_own_file():
    import open_clip.tokenizer

    assert clip_tokens.vocab_path().samefile(open_clip.tokenizer.default_bpe())
