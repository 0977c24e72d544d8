"""Pretrained weights: the demo's fast check (one line, no minute of download retries), caches found in the
Hub and open_clip URL layouts, the paper tag's epoch-32 release file verified, its SHA-256 in the checkpoint."""
import hashlib
import json

import numpy as np
import pytest
import torch

from detector.errors import DetectorError
from detector.method.weights import cached_file, main, weights_problem, weights_route
from detector.store.saved_detector import save_detector


def test_none_and_local_paths_need_nothing(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    assert weights_problem("ViT-B-16-plus-240", "none") is None
    assert weights_problem("ViT-B-16-plus-240", str(weights)) is None


def test_unknown_tag_is_named():
    problem = weights_problem("ViT-B-16-plus-240", "no_such_tag")
    assert problem is not None and "no_such_tag" in problem


def test_offline_and_not_cached_says_so_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    problem = weights_problem("ViT-B-16-plus-240", "laion400m_e32")
    assert problem is not None and "HF_HUB_OFFLINE" in problem
    assert main(["ViT-B-16-plus-240", "laion400m_e32"]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "NOT meaningful" in out


# ------------------------------------------------------------------------------ the right file, from the cache

PAPER = ("ViT-B-16-plus-240", "laion400m_e32")
E32_FILE = "vit_b_16_plus_240-laion400m_e32-699c4b84.pt"


def _hub_cache(root, repo_id: str, filename: str, data: bytes = b"weights"):
    """A file laid out as huggingface_hub leaves a download: models--ORG--NAME/{refs/main, snapshots/REV/FILE}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (snap / filename).write_bytes(data)
    return snap / filename


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty, private Hub and open_clip URL caches (HOME moved), offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "home" / ".cache" / "clip").mkdir(parents=True)
    return tmp_path / "hub", tmp_path / "home" / ".cache" / "clip"


def test_the_paper_tag_loads_the_epoch_32_release_file_not_the_e31_hub_repo():
    import open_clip

    route = weights_route(*PAPER)
    assert route.kind == "url" and route.filenames == (E32_FILE,) and route.sha256_prefix == "699c4b84"
    assert "e31" not in route.url
    if "laion400m_e31" in open_clip.get_pretrained_cfg(*PAPER)["hf_hub"]:  # open_clip 3.3's registry entry
        assert route.where.endswith(E32_FILE)
    e31 = weights_route("ViT-B-16-plus-240", "laion400m_e31")  # a Hub repo named for its own tag is kept
    assert e31.kind == "hub" and e31.repo_id == "timm/vit_base_patch16_plus_clip_240.laion400m_e31"


def test_cached_weights_are_found_in_the_hub_and_url_layouts(caches):
    hub, url_cache = caches
    assert weights_problem(*PAPER) is not None  # nothing cached, offline
    # the e31 repository in the Hub cache is found for e31 ...
    f = _hub_cache(hub, "timm/vit_base_patch16_plus_clip_240.laion400m_e31", "open_clip_model.safetensors")
    assert cached_file(weights_route("ViT-B-16-plus-240", "laion400m_e31")) == f
    assert weights_problem("ViT-B-16-plus-240", "laion400m_e31") is None
    assert main(["ViT-B-16-plus-240", "laion400m_e31"]) == 0
    # ... but never stands in for e32
    assert "not cached" in weights_problem(*PAPER)
    # a file in open_clip's URL cache with the wrong bytes is named, with the checksum it should have
    (url_cache / E32_FILE).write_bytes(b"not the release file")
    problem = weights_problem(*PAPER)
    assert problem is not None and "699c4b84" in problem and E32_FILE in problem
    with pytest.raises(DetectorError, match="699c4b84"):
        from detector.method.backbone import load_backbone

        load_backbone(*PAPER)


def _tiny_release(tiny_clip_name, folder, seed: int):
    """A tiny CLIP's weights saved as a release .pt whose name carries its SHA-256 prefix; (path, sha)."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(tiny_clip_name, pretrained=None)
    tmp = folder / "w.pt"
    torch.save(model.state_dict(), tmp)
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    return tmp, sha, model


def test_a_verified_file_is_loaded_and_its_sha256_recorded(caches, tiny_clip_name, tmp_path, monkeypatch):
    import open_clip.pretrained as P

    from detector.method.backbone import load_backbone

    _, url_cache = caches
    tmp, sha, model = _tiny_release(tiny_clip_name, tmp_path, seed=1)
    name = f"fgad-tiny-laion400m_e32-{sha[:8]}.pt"
    tmp.rename(url_cache / name)
    url = f"https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/{name}"
    # registered like the paper's tag: a release URL with a checksum, a Hub repo named for another epoch
    monkeypatch.setitem(P._PRETRAINED, tiny_clip_name, {"laion400m_e32": P._pcfg(
        url=url, hf_hub="timm/fgad_tiny.laion400m_e31/")})
    bb = load_backbone(tiny_clip_name, "laion400m_e32")
    assert bb.weights_sha256 == sha
    for k, v in model.state_dict().items():
        assert torch.equal(bb.model.state_dict()[k], v), k
    assert load_backbone(tiny_clip_name, "laion400m_e32", expected_sha256=sha).weights_sha256 == sha
    with pytest.raises(DetectorError, match="trained on CLIP weights") as e:
        load_backbone(tiny_clip_name, "laion400m_e32", expected_sha256="f" * 64)
    assert "\n" not in str(e.value)
    assert load_backbone(tiny_clip_name, "none").weights_sha256 is None
    # a checkpoint records the file's SHA-256 and reloads only on the same file
    from detector.config import TrainConfig
    from detector.run.train import train_model
    from detector.store.saved_detector import load_detector

    cfg = TrainConfig(class_name="widget", backbone=tiny_clip_name, pretrained="laion400m_e32", epochs=1,
                      image_epochs=1, shots=1, baseline="promptad")
    trained = train_model(cfg, progress=False, shot_images=[np.full((64, 64, 3), 200, np.uint8)],
                          shot_names=["good/000.png"], record=None)
    ckpt = save_detector(trained, tmp_path / "ckpt")
    meta = json.loads((ckpt / "config.json").read_text())
    assert meta.get("meta", meta)["backbone"]["weights_sha256"] == sha
    assert load_detector(ckpt).backbone.weights_sha256 == sha
    other, _, _ = _tiny_release(tiny_clip_name, tmp_path, seed=2)  # the cached file swapped
    other.replace(url_cache / name)
    with pytest.raises(DetectorError, match="not that of the .* release file"):
        load_detector(ckpt)
