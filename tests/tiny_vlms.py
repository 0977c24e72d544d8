"""Tiny random image-text-to-text models of the families users run with `hf:`, built offline from configs and
saved with save_pretrained (weights, processor, chat template): LLaVA (CLIP vision + Llama, in conftest),
Qwen2-VL (its own vision tower, <|image_pad|> expansion by image grid, M-RoPE) and Idefics3 / SmolVLM (SigLIP
vision, pixel shuffle, <image> expanded to <fake_token_around_image><global-img>... rows). Each has 2 layers
and a hidden size of 32: a few hundred kB, loaded in well under a second. Their answers are garbage, which is
the point: only constrained decoding makes them schema-valid.
"""
from __future__ import annotations

from pathlib import Path

# a chat template of the usual shape: role, then the content parts, the image as the family's placeholder
_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
             "IMAGE{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
             "{% if add_generation_prompt %}assistant: {% endif %}")


def byte_tokenizer(specials: list[str], eos: str = "</s>", pad: str = "<pad>"):
    """A byte-level BPE tokenizer (no merges) whose vocabulary starts with `specials`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = ["<unk>", "<s>", "</s>", "<pad>"]
    names = base + [t for t in specials if t not in base]
    vocab = {t: i for i, t in enumerate(names + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token=eos,
                                  pad_token=pad)
    tok.add_special_tokens({"additional_special_tokens": [t for t in specials if t not in base]})
    return tok


def _text_config(cls, tok, **kw):
    return cls(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8192,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw)


def make_qwen2_vl(out: Path) -> Path:
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLTextConfig,
        Qwen2VLVideoProcessor,
    )

    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = byte_tokenizer(specials)
    template = _TEMPLATE.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>")
    tok.chat_template = template
    pixels = 56 * 56  # a 2 x 2 grid of merged patches: 4 image tokens
    proc = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels),
                            tokenizer=tok, video_processor=Qwen2VLVideoProcessor(), chat_template=template)
    ids = tok.convert_tokens_to_ids
    text = _text_config(Qwen2VLTextConfig, tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                 "mrope_section": [2, 3, 3]}).to_dict()
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2}
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision,
                        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out


def make_idefics3(out: Path) -> Path:
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        LlamaConfig,
    )

    specials = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
    tok = byte_tokenizer(specials)
    template = _TEMPLATE.replace("IMAGE", "<image>")
    tok.chat_template = template
    image_proc = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 32},
                                        max_image_size={"longest_edge": 32})
    proc = Idefics3Processor(image_processor=image_proc, tokenizer=tok, image_seq_len=4, chat_template=template)
    cfg = Idefics3Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        text_config=_text_config(LlamaConfig, tok).to_dict(), scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out
