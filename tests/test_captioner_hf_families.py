"""The hf: backend on tiny random models of the families users run (LLaVA, Qwen2-VL, Idefics3 / SmolVLM), each
through its own processor, chat template and image-token expansion, in left-padded batches that mix normal
and anomalous images. The proof of constrained decoding: these random models answer garbage without it
(every record a fallback) and schema-valid records with it (every record "ok", asked as json_schema)."""
from __future__ import annotations

import json

import cv2
import jsonschema
import numpy as np
import pytest
import tiny_vlms

from mfsc_builder.captioners import CaptionRequest, make_captioner
from mfsc_builder.captioners.schema import answer_schema, validate_answer
from mfsc_builder.crop import crop_regions

FAMILIES = ["llava", "qwen2_vl", "idefics3"]
IMAGE_TOKENS = {"llava": "<image>", "qwen2_vl": "<|image_pad|>", "idefics3": "<image>"}
BOUNDS = {"max_string": 3, "max_items": 1}   # the grammar's bounds: small, so a random model ends quickly


@pytest.fixture(scope="module")
def models(tiny_vlm, tmp_path_factory):
    out = {"llava": tiny_vlm}
    for name in FAMILIES[1:]:
        out[name] = getattr(tiny_vlms, f"make_{name}")(tmp_path_factory.mktemp(name))
    return out


def _requests(kinds: str) -> list[CaptionRequest]:
    """One request per letter: n normal, a anomalous (a drawn block with a dark scratch)."""
    out = []
    for i, k in enumerate(kinds):
        img = np.full((64, 64, 3), 250, np.uint8)
        cv2.rectangle(img, (16 + i, 18), (46, 44), (40, 90, 200), -1)
        mask = None
        if k == "a":
            cv2.line(img, (22, 30), (40, 32), (20, 20, 20), 2)
            mask = np.zeros((64, 64), bool)
            mask[28:35, 20:42] = True
        out.append(CaptionRequest(f"toy/{'test/scratch' if k == 'a' else 'train/good'}/{i:03d}", "toy", img,
                                  crop_regions(img, mask), is_anomalous=k == "a",
                                  defect_type="scratch" if k == "a" else ""))
    return out


def _captioner(path, response_format="json_schema", batch_size=2):
    cap = make_captioner(f"hf:{path}", device="cpu", dtype="float32", batch_size=batch_size)
    cap.response_format = response_format
    cap.max_string, cap.max_items = BOUNDS["max_string"], BOUNDS["max_items"]
    cap.max_new_tokens = 600
    return cap


def _spy(cap, monkeypatch):
    calls = []
    real = cap._net.generate

    def spy(**kw):
        calls.append({k: v for k, v in kw.items() if hasattr(v, "shape")})
        out = real(**kw)
        calls[-1]["answers"] = cap._proc.batch_decode(out[:, kw["input_ids"].shape[1]:], skip_special_tokens=True)
        return out

    monkeypatch.setattr(cap._net, "generate", spy)
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_constrained_decoding_makes_a_random_model_answer_schema_valid_records(models, family, monkeypatch):
    cap = _captioner(models[family])
    calls = _spy(cap, monkeypatch)
    reqs = _requests("an" if family != "llava" else "ann")   # llava: two batches (2 + 1)
    res = cap.caption(reqs)
    assert [r.provenance.status for r in res] == ["ok"] * len(reqs), [c["answers"] for c in calls]
    assert {r.provenance.response_format for r in res} == {"json_schema"}
    assert [c["input_ids"].shape[0] for c in calls] == ([2] if family != "llava" else [2, 1])
    # every raw answer is valid under the schema of its own row (anomalous and normal rows differ)
    answers = [a for c in calls for a in c["answers"]]
    for req, text in zip(reqs, answers, strict=True):
        kind = "anomalous" if req.is_anomalous else "normal"
        jsonschema.validate(json.loads(text), answer_schema(kind, max_string=BOUNDS["max_string"]))
        assert validate_answer(json.loads(text), anomalous=req.is_anomalous)[1] == []
    assert res[0].fields.defect is not None and res[1].fields.defect is None
    # the family's image tokens were expanded in every row, and the batch is left-padded
    first = calls[0]
    image_id = cap._proc.tokenizer.convert_tokens_to_ids(IMAGE_TOKENS[family])
    per_row = (first["input_ids"] == image_id).sum(dim=1)
    assert (per_row == per_row[0]).all() and per_row[0] >= 4
    assert "pixel_values" in first
    mask = first["attention_mask"]
    assert (mask[:, -1] == 1).all()


def test_unconstrained_random_model_answers_garbage(models, monkeypatch):
    """The other half of the proof: the same model without the grammar gives no usable answer."""
    cap = _captioner(models["qwen2_vl"], response_format="prompt")
    cap.max_new_tokens = 40
    calls = _spy(cap, monkeypatch)
    res = cap.caption(_requests("an"))
    assert [r.provenance.status for r in res] == ["fallback", "fallback"]
    assert {r.provenance.response_format for r in res} == {"prompt"}
    assert len(calls) == 2   # asked, then retried once with the errors
