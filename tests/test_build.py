"""The staged build on the synthetic set: schema, resume equivalence, config refusal, shards + merge."""
import json
from pathlib import Path

import pytest

from mfsc_builder.build import BuildConfig, merge_builds, run_build, shard_of
from mfsc_builder.errors import BuildError, BuildInterrupted
from mfsc_builder.store import StageStore

CLASSES = ["pill_box"]  # one object class keeps the file fast; the CLI test builds fabric


def _cfg(demo_root: Path, out: Path, **kw) -> BuildConfig:
    kw.setdefault("part_size", 5)  # 20 images -> 4 parts per stage
    return BuildConfig(source=str(demo_root), out=str(out), classes=CLASSES, **kw)


MINI = ("train/good/000.png", "train/good/001.png", "train/good/002.png", "test/good/003.png",
        "test/color_spot/000.png", "ground_truth/color_spot/000_mask.png")


def _mini(demo_root: Path, dest: Path) -> Path:
    """A 5-image pill_box data set (3 train, 2 test, one anomalous) for tests that need no volume."""
    import shutil

    for rel in MINI:
        (dest / "pill_box" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_root / "pill_box" / rel, dest / "pill_box" / rel)
    return dest


def _tables(out: Path) -> dict[str, list[dict]]:
    """Every row of both datasets as plain Python (image/mask PNG bytes included)."""
    import datasets

    images = datasets.load_from_disk(str(out / "images"))
    classes = datasets.load_from_disk(str(out / "classes"))
    res = {f"images/{s}": images[s].data.to_pylist() for s in images}
    res["classes"] = classes.data.to_pylist()
    return res


@pytest.fixture(scope="module")
def reference(demo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "build"
    run_build(_cfg(demo_root, out))
    return out


def test_build_writes_both_datasets_with_the_documented_schema(reference, demo_root):
    import datasets

    from mfsc_builder.records import CLASSES_FEATURES, IMAGES_FEATURES

    images = datasets.load_from_disk(str(reference / "images"))
    classes = datasets.load_from_disk(str(reference / "classes"))
    assert isinstance(images, datasets.DatasetDict) and list(images) == ["train", "test"]
    assert images["train"].features == IMAGES_FEATURES and classes.features == CLASSES_FEATURES
    # 8 train/good + (6 good + 6 anomalous) test images per class in the synthetic set
    assert images["train"].num_rows == 8 and images["test"].num_rows == 12
    ids = images["test"]["id"]
    assert ids == sorted(ids)
    raw = images["test"].cast_column("image", datasets.Image(decode=False)).cast_column(
        "mask", datasets.Image(decode=False))
    row = next(r for r in raw if r["label"] == 1)
    assert row["image"]["path"] is None and row["image"]["bytes"].startswith(b"\x89PNG")
    assert row["mask"]["bytes"].startswith(b"\x89PNG") and row["defect"]["type"]
    assert any(r["kind"] == "defect" for r in row["regions"])
    assert all(r["mask"] is None for r in raw if r["label"] == 0)
    # the class record merges exactly the selected reference image and says so
    from fsad_data import read_dataset, select_shots

    samples = read_dataset(demo_root, classes=CLASSES)
    for c in classes:
        shots = select_shots(samples, c["class_name"], 1, 0)
        assert c["reference_images"] == [s.file_name for s in shots]
        assert c["reference_selection"] == "k=1 seed=0" and c["source_layout"] == "mvtec"
        assert [t["level"] for t in c["texts"]].count("image") == 1
    refs = [r["id"] for r in images["train"] if r["is_reference"]]
    assert len(refs) == 1
    info = json.loads((reference / "build_info.json").read_text())
    assert info["synthetic"] is True and info["images"] == {"train": 8, "test": 12}


class _Crash(RuntimeError):
    pass


class _CrashingCaptioner:
    """The real attribute captioner that dies (like a killed process) after `after` images."""

    def __init__(self, after: int) -> None:
        from mfsc_builder.captioners import make_captioner

        self.inner = make_captioner("attributes")
        self.name, self.model = self.inner.name, self.inner.model
        self.revision, self.prompt_version = self.inner.revision, self.inner.prompt_version
        self.left = after

    def caption(self, requests):
        if self.left < len(requests):
            raise _Crash("killed")
        self.left -= len(requests)
        return self.inner.caption(requests)

    def propose_defects(self, object_name, image):
        return self.inner.propose_defects(object_name, image)


def test_resume_after_a_crash_gives_the_same_datasets(reference, demo_root, tmp_path):
    out = tmp_path / "b"
    with pytest.raises(_Crash):
        run_build(_cfg(demo_root, out), captioner=_CrashingCaptioner(after=13))
    assert not (out / "images").exists()
    before = len(StageStore(out / "work" / "caption").load())
    assert before == 10  # parts of 5 in batches of 4+1: 10 images were captioned and stored before the crash
    summary = run_build(_cfg(demo_root, out))
    assert summary.resumed and summary.computed["caption"] == 20 - before
    assert _tables(out) == _tables(reference)


def test_resume_after_a_truncated_shard(reference, demo_root, tmp_path):
    out = tmp_path / "b"
    run_build(_cfg(demo_root, out))
    last = max((out / "work" / "fill").glob("part-*.jsonl"))
    last.write_bytes(last.read_bytes()[:100])  # a half-written part (e.g. copied from a dying disk)
    max((out / "work" / "crop").glob("part-*.jsonl")).unlink()  # its crops are lost too
    summary = run_build(_cfg(demo_root, out))
    assert summary.computed["fill"] == 5 and summary.computed["crop"] == 5 and summary.computed["caption"] == 0
    assert (out / "work" / "fill" / (last.name + ".corrupt")).exists()
    assert _tables(out) == _tables(reference)


def test_changed_configuration_is_refused_then_forced(demo_root, tmp_path):
    src = _mini(demo_root, tmp_path / "src")
    out = tmp_path / "b"
    run_build(_cfg(src, out, part_size=64))
    with pytest.raises(BuildError, match=r"changed: .*shots.*new --out.*--force"):
        run_build(_cfg(src, out, shots=2))
    with pytest.raises(BuildError, match=r"changed: crop"):
        run_build(_cfg(src, out, crop={"min_delta": 20.0}))
    with pytest.raises(BuildError, match=r"changed: crop"):
        run_build(_cfg(src, out, crop={"work_size": 512}))
    # settings that do not change the output (device, batch size, part size) resume fine
    assert run_build(_cfg(src, out, captioner={"batch_size": 2}, part_size=5)).resumed
    s = run_build(_cfg(src, out, shots=2), force=True)
    assert not s.resumed


def test_shards_and_merge_equal_a_single_build(reference, demo_root, tmp_path):
    parts = []
    for i in range(2):
        p = tmp_path / f"part{i}"
        run_build(_cfg(demo_root, p, num_shards=2, shard_index=i))
        parts.append(p)
    import datasets

    sizes = [sum(d.num_rows for d in datasets.load_from_disk(str(p / "images")).values()) for p in parts]
    assert sum(sizes) == 20 and min(sizes) > 0
    with pytest.raises(BuildError, match="exactly once"):
        merge_builds([parts[0], parts[0]], tmp_path / "bad")
    merged = tmp_path / "merged"
    merge_builds(list(reversed(parts)), merged)
    assert _tables(merged) == _tables(reference)


def test_shard_of_is_stable_and_balanced():
    ids = [f"c/test/good/{i:03d}" for i in range(400)]
    counts = [sum(shard_of(i, 4) == k for i in ids) for k in range(4)]
    assert min(counts) > 70
    assert shard_of("bottle/train/good/000", 3) == shard_of("bottle/train/good/000", 3)
    assert all(shard_of(i, 1) == 0 for i in ids)


def test_ctrl_c_stores_work_and_says_how_to_resume(reference, demo_root, tmp_path):
    import os
    import signal

    class _CtrlC(_CrashingCaptioner):
        def caption(self, requests):
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C during the first captioner call
            return self.inner.caption(requests)

    out = tmp_path / "b"
    with pytest.raises(BuildInterrupted, match="4 of 20 images are stored.*run the same command again to resume"):
        run_build(_cfg(demo_root, out), captioner=_CtrlC(after=0))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert len(StageStore(out / "work" / "fill").load()) == 4  # the batch in flight was finished and stored
    assert run_build(_cfg(demo_root, out)).computed["caption"] == 16
    assert _tables(out) == _tables(reference)


def test_config_file_and_overrides(tmp_path, demo_root):
    f = tmp_path / "c.yaml"
    f.write_text(f"source: {demo_root}\nout: {tmp_path / 'o'}\nshots: 2\ncrop:\n  grabcut: true\ncaptioner:\n  batch-size: 8\n")
    cfg = BuildConfig.from_file(f)
    assert (cfg.shots, cfg.captioner.batch_size, cfg.crop) == (2, 8, {"grabcut": True})
    cfg2 = cfg.override(shots=4, seed=None)
    assert (cfg2.shots, cfg2.seed) == (4, 0)
    assert cfg2.crop_config(textured=True).textured and cfg2.crop_config().grabcut
    assert not cfg2.override(crop={"textured": False}).crop_config(textured=True).textured  # explicit wins
    (tmp_path / "bad.yaml").write_text("shot: 2\n")
    with pytest.raises(BuildError, match="bad.yaml: unknown key.*shot"):
        BuildConfig.from_file(tmp_path / "bad.yaml")
    with pytest.raises(BuildError, match="shard-index 2 must be in 0..1"):
        BuildConfig(source=str(demo_root), out="x", num_shards=2, shard_index=2).validate()
    with pytest.raises(BuildError, match="unknown crop setting.*nope"):
        BuildConfig(source=str(demo_root), out="x", crop={"nope": 1}).validate()


def test_model_defect_vocabulary_and_its_honest_fallback(demo_root, tmp_path):
    class _Proposing(_CrashingCaptioner):
        def propose_defects(self, object_name, image):
            assert image.ndim == 3 and object_name == "pill box"
            return ["dent", "burn mark"]

    src = _mini(demo_root, tmp_path / "src")
    run_build(_cfg(src, tmp_path / "m", defect_vocab="model"), captioner=_Proposing(after=10**6))
    rec = _tables(tmp_path / "m")["classes"][0]
    assert (rec["defect_states"], rec["defect_vocab"]) == (["dent", "burn mark"], "model")
    # the attribute captioner cannot propose: the record says "generic", not "model"
    run_build(_cfg(src, tmp_path / "g", defect_vocab="model"))
    rec = _tables(tmp_path / "g")["classes"][0]
    assert rec["defect_vocab"] == "generic" and "crack" in rec["defect_states"]


def test_bad_image_is_skipped_and_listed_or_stops_the_build(demo_root, tmp_path):

    from fsad_data import DataError

    src = _mini(demo_root, tmp_path / "src")
    bad = src / "pill_box" / "test" / "good" / "003.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="003.png"):
        run_build(BuildConfig(source=str(src), out=str(tmp_path / "r")))
    s = run_build(BuildConfig(source=str(src), out=str(tmp_path / "s"), on_error="skip"))
    assert s.images == {"train": 3, "test": 1}
    assert [sid for sid, _ in s.skipped] == ["pill_box/test/good/003"]
    info = json.loads((tmp_path / "s" / "build_info.json").read_text())
    assert info["skipped"][0][0] == "pill_box/test/good/003" and "003.png" in info["skipped"][0][1]


def test_an_image_lost_before_writing_is_named(demo_root, tmp_path):
    import shutil

    from fsad_data import DataError

    src = _mini(demo_root, tmp_path / "src")
    cfg = BuildConfig(source=str(src), out=str(tmp_path / "o"))
    run_build(cfg)
    shutil.rmtree(tmp_path / "o" / "images")
    # stages are done; the write step reads the pixels again and must name the file that went bad
    bad = src / "pill_box" / "train" / "good" / "001.png"
    bad.write_bytes(b"x" * bad.stat().st_size)  # same size: the listing check cannot see it
    with pytest.raises(DataError, match="001.png"):
        run_build(cfg)


def test_build_with_the_hf_backend_and_a_tiny_random_model(demo_root, tmp_path, tiny_vlm):
    """Real transformers loading and generation inside the staged build: a random model's answers are
    invalid, so every record falls back to the attribute fields and says so in its provenance."""

    from mfsc_builder.captioners import make_captioner

    src = _mini(demo_root, tmp_path / "src")
    cap = make_captioner(f"hf:{tiny_vlm}", device="cpu", dtype="float32", batch_size=2)
    cap.max_new_tokens = 8
    out = tmp_path / "hf"
    cfg = BuildConfig(source=str(src), out=str(out), captioner={"name": f"hf:{tiny_vlm}", "dtype": "float32"},
                      defect_vocab="model")
    s = run_build(cfg, captioner=cap)
    assert s.images == {"train": 3, "test": 2}
    t = _tables(out)
    provs = [r["provenance"] for r in t["images/train"] + t["images/test"]]
    assert {p["backend"] for p in provs} == {"hf"} and {p["status"] for p in provs} == {"fallback"}
    assert t["classes"][0]["provenance"]["backend"] == "hf"
    # the random model proposes no defect list either: the record says which vocabulary was really used
    assert (t["classes"][0]["defect_vocab"], t["classes"][0]["defect_states"][0]) == ("generic", "crack")
    info = json.loads((out / "build_info.json").read_text())
    assert info["captioner"]["name"] == "hf" and info["captioner"]["prompt_version"]


def test_an_unknown_surface_class_is_found_by_its_reference_images(demo_root, tmp_path):
    """`cloth` (the synthetic fabric under a name no list knows) is a surface by the majority of its
    references, so every image gets the whole-image foreground; on its own, train/good/005 would get a
    tiny "object" (its border looks plain)."""
    import shutil

    from fsad_data import load_rgb
    from mfsc_builder.crop import CropConfig, foreground_mask

    src = tmp_path / "src" / "cloth"
    for rel in ("train/good/000.png", "train/good/005.png", "train/good/006.png", "test/hole/000.png",
                "ground_truth/hole/000_mask.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_root / "fabric" / rel, src / rel)
    assert not foreground_mask(load_rgb(src / "train/good/005.png"), CropConfig())[1]
    out = tmp_path / "b"
    run_build(BuildConfig(source=str(src.parent), out=str(out), shots=3))
    t = _tables(out)
    for row in t["images/train"] + t["images/test"]:
        fg = next(r for r in row["regions"] if r["kind"] == "foreground")
        assert fg["area"] == 1.0 and not any(r["kind"] == "background" for r in row["regions"]), row["id"]
    rec = t["classes"][0]
    assert rec["image_view"]["background"] == "none" and [c["name"] for c in rec["components"]] == ["cloth surface"]
    assert json.loads((out / "build_info.json").read_text())["textured_classes"] == ["cloth"]


def test_model_defect_vocabulary_with_the_openai_backend(demo_root, tmp_path, monkeypatch):
    """The openai: backend proposes the states (articles and case cleaned); an answer that is no list
    falls back to the generic states and the record says "generic"."""
    from fake_openai_server import FakeOpenAIServer

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("MFSC_API_KEY", raising=False)
    src = _mini(demo_root, tmp_path / "src")

    def scripts(answer):
        return lambda key, text: [("content", answer)] if "kinds of defects" in text else [("ok",)]

    with FakeOpenAIServer(scripts('["a Scratch", "missing_part", "dents"]')) as srv:
        run_build(_cfg(src, tmp_path / "m", captioner={"name": "openai:fake-vlm", "api_base": srv.url},
                         defect_vocab="model"))
    rec = _tables(tmp_path / "m")["classes"][0]
    assert (rec["defect_vocab"], rec["defect_states"]) == ("model", ["scratch", "missing part", "dents"])
    image = next(t for t in rec["texts"] if t["level"] == "image")
    assert "a photo of a pill box with a missing part" in image["abnormal"]
    assert "a photo of a pill box with dents" in image["abnormal"]
    with FakeOpenAIServer(scripts("I cannot tell.")) as srv:
        run_build(_cfg(src, tmp_path / "g", captioner={"name": "openai:fake-vlm", "api_base": srv.url},
                         defect_vocab="model"))
    rec = _tables(tmp_path / "g")["classes"][0]
    assert rec["defect_vocab"] == "generic" and "crack" in rec["defect_states"]


def test_image_above_work_size_embeds_the_original_and_records_original_boxes(demo_root, tmp_path):
    """The anomalous image and its mask upscaled 5x (1280 px, above crop.work_size 1024): the dataset embeds
    them at 1280 px and its regions are those of the 256 px image scaled by 5 (boxes within one 256 px pixel:
    the morphology kernels differ between the two sizes)."""
    import cv2
    import datasets
    import numpy as np

    from fsad_data import load_mask, load_rgb
    from mfsc_builder.crop import CropConfig, crop_regions

    src = _mini(demo_root, tmp_path / "src")
    img_p, mask_p = (src / "pill_box" / rel for rel in MINI[4:])
    small = crop_regions(load_rgb(img_p), load_mask(mask_p, size=(256, 256)), CropConfig())
    for p in (img_p, mask_p):
        a = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(p), cv2.resize(a, None, fx=5, fy=5, interpolation=cv2.INTER_NEAREST))
    run_build(_cfg(src, tmp_path / "b", part_size=64))
    row = next(r for r in datasets.load_from_disk(str(tmp_path / "b" / "images"))["test"]
               if r["id"] == "pill_box/test/color_spot/000")
    image, mask = np.asarray(row["image"].convert("RGB")), np.asarray(row["mask"])
    assert image.shape == (1280, 1280, 3) and (image == load_rgb(img_p)).all() and mask.shape == (1280, 1280)
    kept = [r for r in small.all() if not (r.kind == "background" and r.empty)]
    assert [r["kind"] for r in row["regions"]] == [r.kind for r in kept]
    for got, want in zip(row["regions"], kept, strict=True):
        assert (got["location"], got["orientation"]) == (want.location, want.orientation)
        assert got["area"] == pytest.approx(want.area, abs=0.01)
        assert np.abs(np.array(got["box"]) - 5 * np.array(want.box)).max() <= 5, (got, want)  # one 256 px pixel


def test_image_record_keeps_the_original_size_above_the_working_size():
    """Cropping works on a copy of at most work_size px; the record still states the image's own size."""
    import numpy as np

    from fsad_data import Sample
    from mfsc_builder.captioners import CaptionRequest, make_captioner
    from mfsc_builder.crop import CropConfig, crop_regions, working_image
    from mfsc_builder.fill import image_record

    img = np.full((600, 900, 3), 245, np.uint8)
    img[150:450, 250:650] = (40, 90, 200)
    regions = crop_regions(img, config=CropConfig(work_size=128))
    work = working_image(img, 128)  # the captioner sees the working copy, as in the build
    result = make_captioner("attributes").caption([CaptionRequest("toy/train/good/000", "toy", work, regions)])[0]
    sample = Sample("toy/train/good/000", "toy", "train", 0, "good", Path("000.png"), None, "train/good/000.png")
    rec = image_record(sample, regions, result, object_name="toy", is_reference=True)
    assert (rec.width, rec.height) == (900, 600)
    x0, y0, x1, y1 = rec.regions[0].box
    assert abs(x0 - 250) <= 8 and abs(y0 - 150) <= 8 and abs(x1 - 650) <= 8 and abs(y1 - 450) <= 8
