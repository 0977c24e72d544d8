"""Publishing: the card, the Hub parquet layout of the dry run (loads offline), the mocked push."""
import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml
from PIL import Image

from mfsc_builder.build import BUILD_INFO_NAME
from mfsc_builder.captioners.attributes import ATTRIBUTES_VERSION
from mfsc_builder.errors import BuildError
from mfsc_builder.ownership import DRY_RUN_MARKER
from mfsc_builder.publish import card_info, dry_run, license_for, push, render_card, size_category
from mfsc_builder.records import ClassRecord, ComponentView, ImageRecord, ImageView, PromptText, Provenance
from mfsc_builder.write import write_datasets


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    """A tiny build made by hand: 2 train + 1 test image of one class, one class record."""
    root = tmp_path_factory.mktemp("pub")
    src = root / "src"
    img = np.zeros((16, 20, 3), np.uint8)
    img[4:12, 5:15] = (200, 30, 30)
    mask = np.zeros((16, 20), np.uint8)
    mask[6:8, 6:9] = 1  # a VisA-like small label value: must come out 0/255
    prov = Provenance("attributes", "", "", "attr-1", "ok")
    recs = []
    for i, (split, label) in enumerate([("train", 0), ("train", 0), ("test", 1)]):
        p = _png(src / f"{split}{i}.png", img)
        m = _png(src / f"m{i}.png", mask) if label else None
        recs.append(ImageRecord(
            id=f"widget/{split}/{'crack' if label else 'good'}/{i:03d}", class_name="widget", object_name="widget",
            split=split, label=label, defect_type="crack" if label else "good", file_name=p.name,
            image_path=str(p), mask_path=None if m is None else str(m), width=20, height=16,
            is_reference=i == 0, image_view=ImageView("widget", "black"), caption=f"a red widget {i}",
            provenance=prov).to_dict())
    cls = ClassRecord("widget", "widget", "mvtec", ["train0.png"], "k=1 seed=0", ImageView("widget", "black"),
                      components=[ComponentView(name="body", colour="red", area=0.25)], caption="a red widget",
                      defect_states=["crack"], defect_vocab="dataset",
                      texts=[PromptText("image", "image", ["a photo of a widget"], ["a photo of a widget with a crack"])],
                      provenance=prov)
    out = root / "build"
    write_datasets(out, {"train": recs[:2], "test": recs[2:]}, [cls.to_dict()], source=root)
    (out / BUILD_INFO_NAME).write_text(json.dumps({"source_name": "widgets", "source_layout": "mvtec",
                                                   "synthetic": False, "schema_version": 1}))
    return out


def test_written_datasets_embed_png_not_paths(build_dir):
    import datasets

    images = datasets.load_from_disk(str(build_dir / "images"))
    assert list(images) == ["train", "test"] and images["train"].num_rows == 2
    raw = images["test"].cast_column("mask", datasets.Image(decode=False))[0]
    assert raw["mask"]["path"] is None and raw["mask"]["bytes"].startswith(b"\x89PNG")
    m = np.asarray(images["test"][0]["mask"])
    assert set(np.unique(m)) == {0, 255} and (m > 0).sum() == 6
    assert images["train"][0]["mask"] is None
    assert np.asarray(images["train"][0]["image"].convert("RGB"))[5, 6].tolist() == [200, 30, 30]
    classes = datasets.load_from_disk(str(build_dir / "classes"))
    assert classes.num_rows == 1 and classes[0]["reference_images"] == ["train0.png"]


def test_card_metadata_and_body(build_dir):
    info = card_info(build_dir, "org/mfsc-widgets")
    text = render_card(info)
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "cc-by-nc-sa-4.0"
    assert meta["size_categories"] == ["n<1K"]
    assert "image-to-text" in meta["task_categories"]
    cfgs = {c["config_name"]: c["data_files"] for c in meta["configs"]}
    assert cfgs["images"] == [{"split": "train", "path": "data/images/train-*"},
                              {"split": "test", "path": "data/images/test-*"}]
    assert cfgs["classes"] == [{"split": "train", "path": "data/classes/train-*"}]
    body = text.split("---\n", 2)[2]
    assert "test information leak" in body  # defect_vocab=dataset
    assert "no model and no prompt" in body and "validated" not in body  # the attribute backend has no prompt
    assert "ok: 3" in body and "`widget`" in body and "widgets" in body
    assert "- `widget` (dataset): crack" in body and "skipped because they could not be read:\nnone" in body
    import dataclasses

    model = render_card(dataclasses.replace(info, backend="openai", model="gpt-4o", prompt_version="mfsc_v1",
                                            requested_vocab="model", skipped=["widget/test/crack/009"]))
    assert "model `gpt-4o`" in model and "prompt version\n   `mfsc_v1`" in model and "validated" in model
    assert "- `widget` (dataset; the captioning model proposed no usable list): crack" in model
    assert "read:\n1 (`widget/test/crack/009`)" in model


def test_card_of_a_synthetic_build_is_true(demo_root, tmp_path):
    """The card of a real build says what the build did: license, backend, states, surfaces, no leak."""
    from mfsc_builder.build import BuildConfig, run_build

    out = tmp_path / "b"
    run_build(BuildConfig(source=str(demo_root), out=str(out), classes=["fabric"]))
    text = render_card(card_info(out, "org/mfsc-demo"))
    meta, body = yaml.safe_load(text.split("---\n")[1]), text.split("---\n", 2)[2]
    assert meta["license"] == "cc0-1.0" and "synthetic images drawn by this project" in body
    assert "Backend `attributes`" in body and f"`{ATTRIBUTES_VERSION}`" in body and "ok: 20" in body
    assert "- `fabric` (generic): crack, scratch, hole" in body and "test information leak" not in body
    assert "no background is described): `fabric`." in body
    assert "| `images` | train (8), test (12) | 20 |" in body


def test_licenses_follow_the_source():
    assert license_for("visa")[0] == "cc-by-4.0" and license_for("visa_raw")[0] == "cc-by-4.0"
    assert license_for("mvtec")[0] == "cc-by-nc-sa-4.0"
    assert license_for("realiad")[0] == "other" and "license_name" in license_for("realiad")[1]
    assert license_for("mvtec", synthetic=True)[0] == "cc0-1.0"
    assert license_for("folder", override="mit")[0] == "mit"
    assert (size_category(999), size_category(1000), size_category(123_456)) == ("n<1K", "1K<n<10K", "100K<n<1M")


def test_dry_run_layout_loads_offline_with_load_dataset(build_dir, tmp_path):
    import datasets

    out = dry_run(build_dir, tmp_path / "upload", repo_id="org/mfsc-widgets")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [DRY_RUN_MARKER, "README.md", "data/classes/train-00000-of-00001.parquet",
                     "data/images/test-00000-of-00001.parquet", "data/images/train-00000-of-00001.parquet"]
    classes = datasets.load_dataset(str(out), "classes")
    assert list(classes) == ["train"] and classes["train"][0]["class_name"] == "widget"
    assert classes["train"][0]["texts"][0]["abnormal"] == ["a photo of a widget with a crack"]
    images = datasets.load_dataset(str(out), "images")
    assert images["test"].features["label"].names == ["normal", "anomaly"]
    assert isinstance(images["test"].features["image"], datasets.Image)
    assert np.asarray(images["test"][0]["mask"]).max() == 255
    # a second dry run into the same folder replaces it; a foreign folder is refused
    dry_run(build_dir, out, repo_id="org/mfsc-widgets")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="not an earlier dry run"):
        dry_run(build_dir, foreign)


def test_dry_run_shards_big_splits(build_dir, tmp_path):
    out = dry_run(build_dir, tmp_path / "up", max_shard_bytes=1)
    names = sorted(p.name for p in (out / "data" / "images").iterdir())
    assert names == ["test-00000-of-00001.parquet", "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]


def test_push_uploads_the_dry_run_folder(build_dir):
    api = mock.Mock()
    api.create_repo.return_value = "https://huggingface.co/datasets/org/mfsc-widgets"
    seen = {}

    def upload_folder(**kw):
        folder = Path(kw["folder_path"])
        seen["files"] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        seen["card"] = (folder / "README.md").read_text()
        return "commit"

    api.upload_folder.side_effect = upload_folder
    url = push(build_dir, "org/mfsc-widgets", private=True, api=api)
    assert url.endswith("org/mfsc-widgets")
    api.create_repo.assert_called_once_with("org/mfsc-widgets", repo_type="dataset", private=True, exist_ok=True)
    kw = api.upload_folder.call_args.kwargs
    assert kw["repo_id"] == "org/mfsc-widgets" and kw["repo_type"] == "dataset"
    assert kw["delete_patterns"] == ["data/**"] and kw["ignore_patterns"] == [DRY_RUN_MARKER]
    assert "README.md" in seen["files"] and "data/classes/train-00000-of-00001.parquet" in seen["files"]
    assert 'load_dataset("org/mfsc-widgets", "classes"' in seen["card"]


def test_push_errors_are_build_errors(build_dir):
    with pytest.raises(BuildError, match="ORG/NAME"):
        push(build_dir, "no-slash", api=mock.Mock())
    api = mock.Mock()
    api.create_repo.side_effect = RuntimeError("401 Unauthorized")
    with pytest.raises(BuildError, match="401 Unauthorized.*HF_TOKEN"):
        push(build_dir, "org/x", api=api)


def test_missing_build_is_a_clear_error(tmp_path):
    with pytest.raises(BuildError, match="run `mfsc build"):
        dry_run(tmp_path / "nothing", tmp_path / "out")
