"""The hf: backend end to end with a tiny random LLaVA saved to a temporary folder (real loading path,
offline). A random model answers garbage, so the fallback path is checked as is; the success and retry
paths by replacing the processor's decode."""
import json

import cv2
import numpy as np
import pytest

from mfsc_builder.captioners import CaptionRequest, make_captioner
from mfsc_builder.crop import crop_regions
from mfsc_builder.errors import BuildError

GOOD = {
    "image_view": {"foreground": "toy", "background": "plain white"},
    "foreground_view": {"count": 1, "relation": "a single blue block"},
    "components": [{"name": "blue block", "count": 1, "location": "center", "colour": "blue",
                    "texture": "smooth", "shape": "rectangular", "direction": "none",
                    "sentence": "a smooth blue block"}],
    "caption": "a blue toy block on white",
    "defect": None,
}


def _requests(n):
    img = np.full((64, 64, 3), 250, np.uint8)
    cv2.rectangle(img, (20, 20), (44, 44), (40, 90, 200), -1)
    regs = crop_regions(img)
    return [CaptionRequest(f"toy/train/good/{i:03d}", "toy", img, regs) for i in range(n)]


@pytest.fixture(scope="module")
def captioner(tiny_vlm):
    cap = make_captioner(f"hf:{tiny_vlm}", device="cpu", dtype="float32", batch_size=2)
    cap.max_new_tokens = 8
    return cap


def _spy_generate(cap, monkeypatch):
    calls = []
    real = cap._net.generate

    def spy(**kw):
        calls.append({k: v.clone() for k, v in kw.items() if hasattr(v, "clone")})
        return real(**kw)

    monkeypatch.setattr(cap._net, "generate", spy)
    return calls


def test_random_model_falls_back_with_provenance(captioner, monkeypatch):
    calls = _spy_generate(captioner, monkeypatch)
    res = captioner.caption(_requests(3))
    assert len(res) == 3
    # 3 requests in batches of 2, then the 3 invalid ones retried in batches of 2
    assert [c["input_ids"].shape[0] for c in calls] == [2, 1, 2, 1]
    for r in res:
        p = r.provenance
        assert (p.backend, p.status, p.prompt_version) == ("hf", "fallback", "mfsc_v1")
        assert "tiny-vlm" in p.model and p.revision.startswith("local-")
        assert r.fields.image_view.foreground == "toy" and r.fields.components[0].colour == "blue"
    assert captioner._proc.tokenizer.padding_side == "left"


def test_batches_are_left_padded(captioner, monkeypatch):
    calls = _spy_generate(captioner, monkeypatch)
    reqs = _requests(2)
    reqs[1].object_name = "toy with a much longer name for padding"
    captioner.caption(reqs)
    mask = calls[0]["attention_mask"]
    assert mask.shape[0] == 2 and (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()


def test_success_and_retry_paths(captioner, monkeypatch):
    answers = iter([["garbage", json.dumps(GOOD)], [json.dumps(GOOD)]])
    monkeypatch.setattr(captioner._proc, "batch_decode", lambda *a, **k: next(answers))
    res = captioner.caption(_requests(2))
    assert [r.provenance.status for r in res] == ["retried", "ok"]
    assert res[1].fields.components[0].name == "blue block"
    assert res[1].fields.region_names == ["blue block"]
    assert res[1].fields.components[0].area == pytest.approx(25 * 25 / 64**2, rel=0.05)
    monkeypatch.setattr(captioner._proc, "batch_decode", lambda *a, **k: ['["crack", "Dent"]'])
    assert captioner.propose_defects("toy", _requests(1)[0].image) == ["crack", "dent"]


def test_bad_model_path_and_dtype(tmp_path):
    with pytest.raises(BuildError, match="could not load"):
        make_captioner(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(BuildError, match="--dtype"):
        make_captioner(f"hf:{tmp_path}", dtype="int3")
