"""detector.store.captions.load_class_record on the three sources, with schema and class checks."""
from __future__ import annotations

import pytest

from detector.errors import DetectorError
from detector.store.captions import load_class_record


def _features():
    """The classes schema written from docs/CONTRACTS.md (schema_version 1)."""
    from datasets import Features, List, Value

    s = Value("string")
    return Features({
        "schema_version": Value("int32"),
        "class_name": s,
        "object_name": s,
        "source_layout": s,
        "reference_images": List(s),
        "reference_selection": s,
        "image_view": {"foreground": s, "background": s},
        "foreground_view": {"count": Value("int32"), "relation": s},
        "components": List({
            "name": s, "count": Value("int32"), "location": s, "colour": s, "texture": s, "shape": s,
            "direction": s, "area": Value("float32"), "sentence": s,
        }),
        "caption": s,
        "defect_states": List(s),
        "defect_vocab": s,
        "texts": List({"level": s, "group": s, "normal": List(s), "abnormal": List(s)}),
        "provenance": {"backend": s, "model": s, "revision": s, "prompt_version": s, "status": s,
                       "response_format": s},
    })


def _row(class_name: str, version: int = 1) -> dict:
    noun = class_name.replace("_", " ")
    return {
        "schema_version": version,
        "class_name": class_name,
        "object_name": noun,
        "source_layout": "mvtec",
        "reference_images": ["train/good/000.png"],
        "reference_selection": "k=1 seed=0",
        "image_view": {"foreground": noun, "background": "white"},
        "foreground_view": {"count": 1, "relation": f"a cap on top of the {noun}"},
        "components": [{
            "name": "cap", "count": 1, "location": "top", "colour": "red", "texture": "smooth", "shape": "round",
            "direction": "horizontal", "area": 0.25, "sentence": "a red round cap at the top",
        }],
        "caption": f"a photo of a {noun} on a white background",
        "defect_states": ["broken", "scratched"],
        "defect_vocab": "generic",
        "texts": [
            {"level": "image", "group": "image", "normal": [f"a {noun}"], "abnormal": [f"a {noun} with a crack"]},
            {"level": "background", "group": "background", "normal": ["white background"],
             "abnormal": ["white background with a stain"]},
            {"level": "component", "group": "cap", "normal": ["a red round cap at the top"],
             "abnormal": ["a red round cap at the bottom"]},
        ],
        "provenance": {"backend": "attributes", "model": "", "revision": "", "prompt_version": "1", "status": "ok",
                       "response_format": ""},
    }


def _dataset(rows: list[dict]):
    import datasets

    return datasets.Dataset.from_list(rows, features=_features())


@pytest.fixture
def build_dir(tmp_path):
    d = tmp_path / "build"
    _dataset([_row("pill_box"), _row("hex_nut")]).save_to_disk(str(d / "classes"))
    return d


def test_local_build_folder(build_dir) -> None:
    rec = load_class_record(build_dir, "hex_nut")
    assert rec["class_name"] == "hex_nut" and rec["object_name"] == "hex nut"
    assert rec == _row("hex_nut") | {"components": rec["components"]}
    assert rec["components"][0]["name"] == "cap"
    assert rec["components"][0]["area"] == pytest.approx(0.25)
    assert [t["level"] for t in rec["texts"]] == ["image", "background", "component"]
    # DIR/classes itself is accepted too
    assert load_class_record(build_dir / "classes", "pill_box")["class_name"] == "pill_box"


def test_publish_dry_run_folder(tmp_path) -> None:
    out = tmp_path / "pub"
    (out / "data" / "classes").mkdir(parents=True)
    _dataset([_row("fabric")]).to_parquet(str(out / "data" / "classes" / "train-00000-of-00001.parquet"))
    (out / "README.md").write_text(
        "---\nconfigs:\n- config_name: classes\n  data_files:\n  - split: train\n    path: data/classes/train-*\n"
        "---\n# card\n"
    )
    rec = load_class_record(str(out), "fabric")
    assert rec["caption"] == "a photo of a fabric on a white background"
    assert rec["texts"][2]["abnormal"] == ["a red round cap at the bottom"]


def test_missing_class_lists_the_classes_present(build_dir) -> None:
    with pytest.raises(DetectorError, match=r"class 'bottle' is not .*classes: hex_nut, pill_box"):
        load_class_record(build_dir, "bottle")


def test_wrong_schema_version_says_which_and_to_rebuild(tmp_path) -> None:
    d = tmp_path / "old"
    _dataset([_row("pill_box", version=2)]).save_to_disk(str(d / "classes"))
    with pytest.raises(DetectorError, match=r"schema_version 2.*rebuild"):
        load_class_record(d, "pill_box")


def test_not_a_caption_dataset(tmp_path) -> None:
    import datasets

    d = tmp_path / "other"
    datasets.Dataset.from_list([{"class_name": "x"}]).save_to_disk(str(d / "classes"))
    with pytest.raises(DetectorError, match="not an MFSC classes dataset"):
        load_class_record(d, "x")
    with pytest.raises(DetectorError, match="neither"):
        load_class_record(tmp_path, "x")  # an unrelated folder
    with pytest.raises(DetectorError, match="not found"):
        load_class_record(tmp_path / "nope" / "deeper", "x")


def test_hub_id_offline_gives_one_clear_error() -> None:
    with pytest.raises(DetectorError, match="Hugging Face Hub"):
        load_class_record("fgad-test-user/no-such-mfsc-dataset", "x")


def test_schema_matches_the_builder_features() -> None:
    """The contract is checked on both sides: the builder's Features equal the documented schema used here."""
    records = pytest.importorskip("mfsc_builder.records")
    assert records.CLASSES_FEATURES == _features()
