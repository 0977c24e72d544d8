"""Training: the loss goes down, gradients reach exactly the prompts, determinism, baseline, config, checkpoint."""
import json

import numpy as np
import pytest
import torch
from detector_fixtures import RECORD, make_image

from detector.config import TrainConfig
from detector.errors import DetectorError
from detector.run.train import train, train_model

SHOTS = [make_image(), make_image()]
NAMES = ["good/000.png", "good/001.png"]


def _cfg(tiny_clip_name, **kw) -> TrainConfig:
    base = {"class_name": "widget", "backbone": tiny_clip_name, "pretrained": "none", "epochs": 6,
            "image_epochs": 4, "shots": 2}
    base.update(kw)
    return TrainConfig(**base)


def _train(cfg, record=RECORD):
    return train_model(cfg, progress=False, shot_images=SHOTS, shot_names=NAMES, record=record)


def test_loss_goes_down(tiny_clip_name):
    m = _train(_cfg(tiny_clip_name, lr=0.01))
    px, im = m.meta["history"]["pixel_loss"], m.meta["history"]["image_loss"]
    assert len(px) == 6 and len(im) == 4
    assert px[-1] < 0.8 * px[0] and im[-1] < 0.8 * im[0]
    assert m.meta["regions"] == "dpc-knn" and m.region_weights.shape == (2, 3, 8, 8)


def test_gradients_reach_exactly_the_prompts(tiny_clip_name):
    """One loss step: ctx, abnormal tokens and gates (of the attributes present) get gradients, CLIP none."""
    import torch.nn.functional as F

    from detector.method.losses import mlsa_loss
    from detector.method.model import build_prompt_sets
    from detector.store.saved_detector import load_backbone_for

    cfg = _cfg(tiny_clip_name)
    bb = load_backbone_for({"name": tiny_clip_name, "pretrained": "none"}, "cpu", "fp32")
    pixel, _ = build_prompt_sets(bb, RECORD, "widget", None, [], cfg.prompt_config(1), cfg.prompt_config(3))
    out = bb.encode(bb.preprocess(SHOTS))
    tokens = F.normalize(out.patches, dim=-1).reshape(-1, out.patches.shape[-1])
    loss, _ = mlsa_loss(tokens, None, pixel(), 14.0, 0.001)
    loss.backward()
    trainable = dict(pixel.named_parameters())
    assert set(trainable) == {"ctx", "abnormal_tokens", "gates"}
    assert trainable["ctx"].grad is not None and trainable["ctx"].grad.abs().sum() > 0
    assert trainable["abnormal_tokens"].grad.abs().sum() > 0
    g = trainable["gates"].grad
    colour = 1  # gate columns: relation, colour, texture, shape; the record only has a colour level
    assert g[:, colour].abs().sum() > 0 and g[:, [0, 2, 3]].abs().sum() == 0
    assert all(p.grad is None and not p.requires_grad for p in bb.parameters())


def test_deterministic_for_a_seed(tiny_clip_name):
    a = _train(_cfg(tiny_clip_name, epochs=3, image_epochs=2))
    b = _train(_cfg(tiny_clip_name, epochs=3, image_epochs=2))
    c = _train(_cfg(tiny_clip_name, epochs=3, image_epochs=2, seed=1))
    assert a.meta["history"] == b.meta["history"]
    for (_, p), (_, q) in zip(a.pixel_prompts.state_dict().items(), b.pixel_prompts.state_dict().items()):
        assert torch.equal(p, q)
    assert torch.equal(a.image_normal, b.image_normal) and torch.equal(a.region_weights, b.region_weights)
    assert not torch.equal(a.pixel_prompts.ctx, c.pixel_prompts.ctx)


def test_promptad_baseline_trains(tiny_clip_name):
    m = _train(_cfg(tiny_clip_name, baseline="promptad", lr=0.01), record=None)
    assert m.pixel_names == ["image"] and m.meta["regions"] == "uniform" and m.meta["record"] is None
    assert bool((m.region_weights == 1).all()) and m.region_weights.shape == (2, 1, 8, 8)
    px = m.meta["history"]["pixel_loss"]
    assert px[-1] < px[0]
    pred = m.predict([make_image((40, 8, 16))], resolution=32)
    assert pred.maps.shape == (1, 32, 32)


def test_config_file_and_overrides(tmp_path):
    from detector.recipes import build_train_config

    p = tmp_path / "train.yaml"
    p.write_text("class_name: bottle\nshots: 2\nepochs: 7\ndrop_levels: [component]\n")
    cfg = build_train_config(None, p, epochs=3, seed=None)
    assert (cfg.class_name, cfg.shots, cfg.epochs, cfg.seed, cfg.drop_levels) == ("bottle", 2, 3, 0, ["component"])
    j = tmp_path / "train.json"
    j.write_text(json.dumps({"class_name": "x", "baseline": "promptad", "lr": 0.01}))
    assert build_train_config(None, j).lr == 0.01
    bad = tmp_path / "bad.yaml"
    bad.write_text("class_name: x\nepoch: 3\n")
    with pytest.raises(DetectorError, match="epoch"):
        build_train_config(None, bad)
    with pytest.raises(DetectorError):
        TrainConfig(baseline="winclip")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(DetectorError, match="mapping"):
        build_train_config(None, listy)


def test_interrupt_leaves_no_checkpoint(tiny_clip_name, tmp_path, monkeypatch):
    import detector.method.fit
    import detector.run.train as tr

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(detector.method.fit, "fit_prompt_set", boom)
    out = tmp_path / "ckpt"
    monkeypatch.setattr(tr, "load_shots", lambda cfg: (SHOTS, NAMES))
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_clip_name, out=str(out), baseline="promptad"), progress=False)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["ckpt.partial"]
    assert sorted(p.name for p in (tmp_path / "ckpt.partial").iterdir()) == ["features"]  # kept for the rerun


def _pill_box_record() -> dict:
    """A hand-written MFSC classes row for the synthetic pill_box class (schema_version 1)."""
    parts = [("red pill", "top left", "red"), ("yellow pill", "center", "yellow"),
             ("green pill", "bottom right", "green")]
    texts = [
        {"level": "image", "group": "image", "normal": ["a blue pill box"], "abnormal": ["a broken blue pill box"]},
        {"level": "background", "group": "background", "normal": ["white background"],
         "abnormal": ["stained white background"]},
    ]
    for n, loc, _ in parts:
        moved = "bottom" if loc == "top left" else "top"
        texts.append({"level": "component", "group": n, "normal": [f"a {n} at the {loc}"],
                      "abnormal": [f"a {n} at the {moved}"]})
    return {
        "schema_version": 1, "class_name": "pill_box", "object_name": "pill box",
        "image_view": {"foreground": "pill box", "background": "white"},
        "foreground_view": {"count": 3, "relation": "three pills on a blue box"},
        "components": [{"name": n, "count": 1, "location": loc, "colour": c, "texture": "smooth", "shape": "round",
                        "direction": "none", "area": 0.02, "sentence": f"a {n} at the {loc}"} for n, loc, c in parts],
        "caption": "a blue pill box with three pills on a white background", "defect_states": ["broken"],
        "texts": texts,
    }


def test_train_end_to_end_on_demo_and_visual_wiring(demo_root, tiny_clip_name, tmp_path):
    """train() from the data root and a caption dataset; the reloaded model's visual map finds the defects."""
    import cv2
    import datasets
    from sklearn.metrics import roc_auc_score

    import fsad_data
    from detector.store.saved_detector import load_detector

    datasets.Dataset.from_list([_pill_box_record()]).save_to_disk(str(tmp_path / "caps" / "classes"))
    cfg = TrainConfig(captions=str(tmp_path / "caps"), data=str(demo_root), class_name="pill_box", shots=4,
                      epochs=2, image_epochs=2, backbone=tiny_clip_name, pretrained="none",
                      out=str(tmp_path / "ckpt"))
    ckpt = train(cfg, progress=False)
    model = load_detector(ckpt)
    samples = fsad_data.read_dataset(demo_root, classes=["pill_box"])
    expected = [s.file_name for s in fsad_data.select_shots(samples, "pill_box", 4, 0)]
    assert model.meta["shots"] == expected
    assert model.meta["region_groups"] == ["image", "background", "red pill", "yellow pill", "green pill"]
    test = [s for s in samples if s.split == "test"]
    pred = model.predict([fsad_data.load_rgb(s.image_path) for s in test], resolution=64, branch="visual")
    masks = [cv2.resize(fsad_data.load_mask(s.mask_path).astype(np.uint8), (64, 64),
                        interpolation=cv2.INTER_NEAREST) > 0 if s.mask_path else np.zeros((64, 64), bool)
             for s in test]
    gt = np.concatenate([m.ravel() for m in masks])
    auroc = roc_auc_score(gt, np.concatenate([m.ravel() for m in pred.maps]))
    transposed = roc_auc_score(gt, np.concatenate([m.T.ravel() for m in pred.maps]))
    assert auroc > 0.85 and auroc > transposed + 0.1  # measured 0.90 vs 0.67 with this tiny random CLIP


def test_tau_is_the_stored_logit_scale_by_default(tiny_clip_name):
    import math

    from detector.method.fit import resolve_tau
    from detector.store.saved_detector import load_backbone_for

    bb = load_backbone_for({"name": tiny_clip_name, "pretrained": "none"}, "cpu", "fp32")
    # open_clip's init stores log(1 / 0.07); the public code multiplies by that value as it is
    assert abs(resolve_tau(_cfg(tiny_clip_name), bb) - math.log(1 / 0.07)) < 1e-5
    assert abs(resolve_tau(_cfg(tiny_clip_name, tau="exp"), bb) - 1 / 0.07) < 1e-3
    assert resolve_tau(_cfg(tiny_clip_name, tau=50.0), bb) == 50.0
    assert resolve_tau(_cfg(tiny_clip_name, tau="50"), bb) == 50.0  # a number given on the command line
    with pytest.raises(DetectorError, match="tau"):
        _cfg(tiny_clip_name, tau="log")


def test_missing_captions_is_a_clear_error(tiny_clip_name):
    with pytest.raises(DetectorError, match="--captions"):
        train_model(_cfg(tiny_clip_name), progress=False, shot_images=SHOTS, shot_names=NAMES, record=None)


class _StopAt:
    """Wraps a loss function: raises KeyboardInterrupt (a Ctrl-C) on its n-th call, counts calls."""

    def __init__(self, fn, n: int | None):
        self.fn, self.n, self.calls = fn, n, 0

    def __call__(self, *a, **k):
        self.calls += 1
        if self.n is not None and self.calls == self.n:
            raise KeyboardInterrupt
        return self.fn(*a, **k)


def _resumable(monkeypatch, tiny_clip_name, out, **kw) -> TrainConfig:
    import detector.run.train as tr
    import detector.store.captions

    monkeypatch.setattr(tr, "load_shots", lambda cfg: (SHOTS, NAMES))
    monkeypatch.setattr(detector.store.captions, "load_class_record", lambda captions, name: RECORD)
    return _cfg(tiny_clip_name, captions="caps", out=str(out), epochs=4, image_epochs=3, **kw)


def _run_stopping(monkeypatch, cfg, pixel_stop=None, image_stop=None):
    """train() with the pixel / image loss raising Ctrl-C on the given call; returns the two call counters."""
    from detector.method import losses

    px, im = _StopAt(losses.mlsa_loss, pixel_stop), _StopAt(losses.image_loss, image_stop)
    with monkeypatch.context() as m:
        m.setattr(losses, "mlsa_loss", px)
        m.setattr(losses, "image_loss", im)
        if pixel_stop or image_stop:
            with pytest.raises(KeyboardInterrupt):
                train(cfg, progress=False)
        else:
            train(cfg, progress=False)
    return px.calls, im.calls


def test_interrupted_training_resumes_bit_identically(tiny_clip_name, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the pixel phase, then in the image phase; each rerun continues where the last saved epoch
    left off, and the final checkpoint equals an uninterrupted run's tensor for tensor."""
    import detector.method.fit
    from detector.store.checkpoint import load_checkpoint
    from detector.store.saved_detector import load_detector

    ref = train(_resumable(monkeypatch, tiny_clip_name, tmp_path / "ref"), progress=False)
    cfg = _resumable(monkeypatch, tiny_clip_name, tmp_path / "run")
    partial = tmp_path / "run.partial"
    assert _run_stopping(monkeypatch, cfg, pixel_stop=3) == (3, 0)  # Ctrl-C inside pixel epoch 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "after 2/4 pixel and 0/3 image epochs" in err and "rerun" in err
    assert partial.is_dir() and not (tmp_path / "run").exists()
    monkeypatch.setattr(detector.method.fit, "encode_shots", lambda *a, **k: pytest.fail("shots re-encoded on resume"))
    # the rerun does pixel epochs 3 and 4 only, then stops inside image epoch 2
    assert _run_stopping(monkeypatch, cfg, image_stop=2) == (2, 2)
    assert "after 4/4 pixel and 1/3 image epochs" in capsys.readouterr().err
    assert _run_stopping(monkeypatch, cfg) == (0, 2)  # image epochs 2 and 3
    assert not partial.exists()
    (a, meta_a), (b, meta_b) = load_checkpoint(ref), load_checkpoint(tmp_path / "run")
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert meta_a["history"] == meta_b["history"]
    # predict needs only the checkpoint: this test has no data set or caption dataset on disk at all
    pred = load_detector(tmp_path / "run").predict([make_image((40, 8, 16))], resolution=32)
    assert pred.maps.shape == (1, 32, 32) and np.isfinite(pred.maps).all()


def test_stale_partial_state_of_another_config_is_refused(tiny_clip_name, tmp_path, monkeypatch, capsys):
    from detector.store.checkpoint import load_checkpoint

    cfg = _resumable(monkeypatch, tiny_clip_name, tmp_path / "run")
    _run_stopping(monkeypatch, cfg, pixel_stop=2)
    other = _resumable(monkeypatch, tiny_clip_name, tmp_path / "run", lr=0.01)
    with pytest.raises(DetectorError, match=r"another config.*--restart"):
        train(other, progress=False)
    # --restart discards it and trains from the first epoch
    restart = _resumable(monkeypatch, tiny_clip_name, tmp_path / "run", lr=0.01, restart=True)
    assert _run_stopping(monkeypatch, restart) == (4, 3)
    assert not (tmp_path / "run.partial").exists()
    assert load_checkpoint(tmp_path / "run")[1]["config"]["lr"] == 0.01
    # a damaged state is refused the same way
    _run_stopping(monkeypatch, cfg, pixel_stop=2)
    (tmp_path / "run.partial" / "state" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(DetectorError, match=r"unreadable.*--restart"):
        train(cfg, progress=False)


def test_end_of_training_prints_the_loss_of_each_prompt_set(tiny_clip_name, capsys):
    from detector.run.train import loss_line

    assert loss_line("pixel prompts", [2.31, 1.2, 0.87]) == "pixel prompts: loss 2.31 -> 0.87 over 3 epochs"
    m = train_model(_cfg(tiny_clip_name, baseline="promptad", epochs=2, image_epochs=1), progress=True,
                    shot_images=SHOTS, shot_names=NAMES, record=None)
    out = capsys.readouterr().out
    px, im = m.meta["history"]["pixel_loss"], m.meta["history"]["image_loss"]
    assert loss_line("pixel prompts", px) in out and loss_line("image prompts", im) in out


@pytest.mark.slow
def test_full_size_backbone_trains_and_predicts(demo_root, tmp_path):
    """ViT-B-16-plus-240 (random weights, the paper's architecture): 1 pixel + 1 image epoch on 1 shot, predict 2."""
    import datasets

    import fsad_data
    from detector.store.saved_detector import load_detector

    datasets.Dataset.from_list([_pill_box_record()]).save_to_disk(str(tmp_path / "caps" / "classes"))
    cfg = TrainConfig(captions=str(tmp_path / "caps"), data=str(demo_root), class_name="pill_box", shots=1,
                      epochs=1, image_epochs=1, backbone="ViT-B-16-plus-240", pretrained="none",
                      out=str(tmp_path / "ckpt"))
    model = load_detector(train(cfg, progress=False))
    assert model.backbone.grid == (15, 15) and model.region_weights.shape == (1, 5, 15, 15)
    assert [m.shape for m in model.memory] == [(225, 896), (225, 896)]
    assert model.pixel_normal.shape == model.image_normal.shape == (5, 640)
    test = [s for s in fsad_data.read_dataset(demo_root, classes=["pill_box"]) if s.split == "test"][:2]
    pred = model.predict([fsad_data.load_rgb(s.image_path) for s in test], resolution=64)
    assert pred.scores.shape == (2,) and pred.maps.shape == (2, 64, 64)
    assert np.isfinite(pred.scores).all() and np.isfinite(pred.maps).all()
    assert all(np.isfinite(v) for h in model.meta["history"].values() for v in h)


def test_pixel_loss_gets_each_groups_region_weights_in_token_order(tiny_clip_name, monkeypatch):
    """Wiring of MLSA: row g of the loss weights is group g's region weights of shot 0, then shot 1, ...,
    aligned with the flattened patch tokens (a wrong permute/reshape would mix groups or shots)."""
    import torch.nn.functional as F

    from detector.method import losses

    seen = {}
    real = losses.mlsa_loss

    def spy(tokens, weights, *a, **k):
        seen.update(tokens=tokens, weights=weights)
        return real(tokens, weights, *a, **k)

    monkeypatch.setattr(losses, "mlsa_loss", spy)
    shots = [make_image((8, 8, 24)), make_image((30, 30, 20))]  # different shots: different region weights
    m = train_model(_cfg(tiny_clip_name, epochs=1, image_epochs=0), progress=False, shot_images=shots,
                    shot_names=NAMES, record=RECORD)
    rw = m.region_weights  # (B, G, h, w)
    b, g = rw.shape[:2]
    assert not torch.equal(rw[0], rw[1]) and not torch.equal(rw[:, 1], rw[:, 2])
    n = rw[0, 0].numel()
    for gi in range(g):
        for bi in range(b):
            assert torch.equal(seen["weights"][gi, bi * n : (bi + 1) * n], rw[bi, gi].flatten())
    out = m.backbone.encode(m.backbone.preprocess(shots))
    assert torch.allclose(seen["tokens"], F.normalize(out.patches, dim=-1).reshape(-1, out.patches.shape[-1]))


def test_text_checkpointing_trains_the_same_and_resumes_across_settings(tiny_clip_name, tmp_path, monkeypatch):
    """on/off give the same prompts (the setting is left out of the resume fingerprint: a run interrupted
    with it off resumes with it on); auto follows the activation estimate; unknown values are refused."""
    from detector.method import fit
    from detector.store.checkpoint import load_checkpoint

    off = _train(_cfg(tiny_clip_name, epochs=3, image_epochs=2, text_checkpointing="off"))
    on = _train(_cfg(tiny_clip_name, epochs=3, image_epochs=2, text_checkpointing="on"))
    assert on.pixel_prompts.checkpoint_text and on.image_prompts.checkpoint_text
    assert not off.pixel_prompts.checkpoint_text and not off.image_prompts.checkpoint_text
    assert off.meta["history"] == on.meta["history"]
    for mod in ("pixel_prompts", "image_prompts"):
        a, b = getattr(off, mod).state_dict(), getattr(on, mod).state_dict()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), (mod, k)

    cfg = _cfg(tiny_clip_name)
    pixel, image = off.pixel_prompts, off.image_prompts
    assert not fit.text_checkpoint(cfg, pixel)  # tiny tower: far below 1 GiB
    rows, length = image.token_ids.shape
    monkeypatch.setattr(fit, "TEXT_CHECKPOINT_AUTO_BYTES", image.tower.activation_bytes(rows, length) - 1)
    assert fit.text_checkpoint(cfg, image) and not fit.text_checkpoint(cfg, pixel)  # image set: 3x the rows
    with pytest.raises(DetectorError, match="text_checkpointing='maybe'"):
        _cfg(tiny_clip_name, text_checkpointing="maybe")

    ref = train(_resumable(monkeypatch, tiny_clip_name, tmp_path / "ref"), progress=False)
    _run_stopping(monkeypatch, _resumable(monkeypatch, tiny_clip_name, tmp_path / "run", text_checkpointing="off"),
                  pixel_stop=3)
    resumed = _resumable(monkeypatch, tiny_clip_name, tmp_path / "run", text_checkpointing="on")
    assert _run_stopping(monkeypatch, resumed) == (2, 3)  # continued, not restarted
    (a, _), (b, _) = load_checkpoint(ref), load_checkpoint(tmp_path / "run")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


def test_fit_is_pure_and_is_what_train_model_runs(tiny_clip_name, tmp_path, monkeypatch, capsys):
    """detector.method.fit.fit: tensors + record in, the detector out; no file written, nothing printed, and the
    same prompts as train_model (which only adds the files, the backbone and the console around it)."""
    from detector.method.fit import fit
    from detector.store.saved_detector import load_backbone_for

    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tiny_clip_name, epochs=2, image_epochs=1, out=str(tmp_path / "never"))
    bb = load_backbone_for({"name": tiny_clip_name, "pretrained": "none"}, "cpu", "fp32")
    seen = []
    model = fit(cfg, bb, SHOTS, RECORD, "widget", report=lambda *a: seen.append(a))
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr() == ("", "")
    assert [(label, done, total) for label, done, total, _ in seen] == [
        ("pixel prompts", 0, 2), ("pixel prompts", 1, 2), ("pixel prompts", 2, 2),
        ("image prompts", 0, 1), ("image prompts", 1, 1)]
    ref = _train(cfg)
    assert model.meta["history"] == ref.meta["history"]
    for (_, p), (_, q) in zip(model.pixel_prompts.state_dict().items(), ref.pixel_prompts.state_dict().items()):
        assert torch.equal(p, q)
    assert "shots" not in model.meta and ref.meta["shots"] == NAMES  # where the inputs came from: train_model's
