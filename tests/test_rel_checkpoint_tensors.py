"""A checkpoint whose tensors are valid safetensors with a valid checksum but hold values the detector cannot use
(issue 22): NaN or infinite values are refused at load in one line naming the folder and the tensor (before, they
scored every image NaN: empty columns, no message); float16 / bfloat16 tensors are read as float32 (before:
``RuntimeError: expected m1 and m2 to have the same dtype`` in model.py), and predict gives the scores of the
float32 checkpoint they round to."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from detector_fixtures import RECORD, make_image

from detector.config import TrainConfig
from detector.errors import DetectorError
from detector.run.train import train_model
from detector.store.checkpoint import load_checkpoint, save_checkpoint
from detector.store.saved_detector import load_detector, save_detector

IMAGES = [make_image(), make_image((40, 8, 16))]


@pytest.fixture(scope="module")
def ckpt(tiny_clip_name, tmp_path_factory) -> Path:
    cfg = TrainConfig(class_name="widget", backbone=tiny_clip_name, pretrained="none", epochs=2, image_epochs=1,
                      shots=2)
    model = train_model(cfg, progress=False, shot_images=[make_image(), make_image()],
                        shot_names=["good/000.png", "good/001.png"], record=RECORD)
    return save_detector(model, tmp_path_factory.mktemp("tensors") / "ckpt")


def _rewritten(src: Path, dst: Path, change) -> Path:
    """A copy of ``src`` whose tensors went through ``change``, saved with a valid checksum."""
    tensors, meta = load_checkpoint(src)
    shutil.copytree(src, dst)
    save_checkpoint(dst, change(dict(tensors)), meta)
    return dst


@pytest.mark.parametrize("name", ["pixel_prompts.ctx", "text.image_abnormal", "memory.0", "region_weights"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_with_nan_tensors_is_refused_in_one_line(ckpt, tmp_path, name, value):
    def poison(t):
        x = t[name].clone()
        x.view(-1)[0] = value
        return {**t, name: x}

    bad = _rewritten(ckpt, tmp_path / "bad", poison)
    with pytest.raises(DetectorError) as err:
        load_detector(bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and repr(name) in msg, msg
    assert "NaN" in msg and "retrain or restore" in msg, msg


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_checkpoint_loads_and_predicts(ckpt, tmp_path, dtype):
    """Every tensor stored in half precision: loaded as float32, predict gives the scores of the float32
    checkpoint holding the same (rounded) values."""
    half = _rewritten(ckpt, tmp_path / "half", lambda t: {k: v.to(dtype) for k, v in t.items()})
    rounded = _rewritten(ckpt, tmp_path / "rounded", lambda t: {k: v.to(dtype).float() for k, v in t.items()})
    assert load_checkpoint(half)[0]["text.pixel_normal"].dtype == dtype
    model = load_detector(half)
    got, want = model.predict(IMAGES, resolution=32), load_detector(rounded).predict(IMAGES, resolution=32)
    assert all(t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())
    assert np.isfinite(got.scores).all() and np.isfinite(got.maps).all()
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.maps, want.maps)


def test_a_float16_prompt_tensor_alone_loads(ckpt, tmp_path):
    """One prompt tensor and the cached text features in float16, the rest float32 (a partly converted file)."""
    def mixed(t):
        return {k: v.half() if k.startswith(("pixel_prompts.", "text.")) else v for k, v in t.items()}

    model = load_detector(_rewritten(ckpt, tmp_path / "mixed", mixed))
    pred = model.predict(IMAGES, resolution=32)
    assert np.isfinite(pred.scores).all() and pred.maps.shape == (2, 32, 32)


def test_an_integer_tensor_is_refused_in_one_line(ckpt, tmp_path):
    bad = _rewritten(ckpt, tmp_path / "int", lambda t: {**t, "region_weights": t["region_weights"].long()})
    with pytest.raises(DetectorError, match=r"'region_weights'.*int64.*retrain or restore") as err:
        load_detector(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
