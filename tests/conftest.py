"""Shared test set-up: offline Hugging Face, a tiny open_clip config, the synthetic data set."""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf-home-"))
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from pathlib import Path

import pytest

from detector.store.saved_detector import save_detector

ASSETS = Path(__file__).parent / "assets"
TINY_CLIP_CONFIG = ASSETS / "fgad-tiny-test.json"
TINY_CLIP_NAME = "fgad-tiny-test"  # registered with open_clip under its file stem


@pytest.fixture(scope="session")
def tiny_clip_name() -> str:
    """Name of a tiny ViT registered with open_clip (8x8 patch grid, 4 blocks, random weights)."""
    import open_clip

    open_clip.add_model_config(TINY_CLIP_CONFIG)
    return TINY_CLIP_NAME


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The project's synthetic data set (MVTec-AD layout), made once per test session."""
    from fsad_data.synthetic import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo") / "synthetic", seed=0)


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def widget_checkpoint(tmp_path_factory, tiny_clip_name) -> Path:
    """A 1-epoch class-name checkpoint (tiny CLIP, 2 drawn shots) of a class named 'widget'; do not modify it."""
    from detector_fixtures import make_image

    from detector.config import TrainConfig
    from detector.run.train import train_model

    cfg = TrainConfig(class_name="widget", backbone=tiny_clip_name, pretrained="none", epochs=1, image_epochs=1,
                      shots=2, baseline="promptad")
    model = train_model(cfg, progress=False, shot_images=[make_image(), make_image((5, 40, 6))],
                        shot_names=["good/000.png", "good/001.png"], record=None)
    return save_detector(model, tmp_path_factory.mktemp("widget-ckpt") / "widget")
