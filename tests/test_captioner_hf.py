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


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    """A 2-layer LLaVA (CLIP vision 32 px + Llama) with a byte-level tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")
    tok.chat_template = template
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                             crop_size={"height": 32, "width": 32}),
                          tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=template)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8192,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-1)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-vlm")
    LlavaForConditionalGeneration(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out


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
        assert p.model.endswith("tiny-vlm0") and p.revision.startswith("local-")
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
