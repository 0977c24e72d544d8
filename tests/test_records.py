"""MFSC records: JSON round trip, and rows that the Hugging Face Features encode and decode unchanged."""
import io
import json

import numpy as np
from PIL import Image

from mfsc_builder import records as R


def _image_record(tmp_path, with_mask=True):
    img = np.zeros((6, 8, 3), np.uint8)
    img[:, :4] = (255, 0, 0)
    ip = tmp_path / "img.png"
    Image.fromarray(img).save(ip)
    mp = None
    if with_mask:
        m = np.zeros((6, 8), np.uint8)
        m[1:3, 2:5] = 255
        mp = tmp_path / "mask.png"
        Image.fromarray(m).save(mp)
    return R.ImageRecord(
        id="bottle/test/broken/000", class_name="bottle", object_name="bottle", split="test", label=1,
        defect_type="broken", file_name="test/broken/000.png", image_path=str(ip),
        mask_path=None if mp is None else str(mp), width=8, height=6, is_reference=False,
        image_view=R.ImageView("bottle", "black"), foreground_view=R.ForegroundView(2, "a cap above a body"),
        components=[R.ComponentView("cap", 1, "top", "red", "smooth", "circular", "none", 0.25, "a red cap"),
                    R.ComponentView("body", 1, "center", "white", "smooth", "rectangular", "vertical", 0.5,
                                    "a white body")],
        caption="a bottle", regions=[R.RegionView("defect", "defect 1", [2, 1, 5, 3], 0.125, "top", "horizontal")],
        defect=R.DefectView("broken", "top", "small", "black", "a small broken area at the top"),
        provenance=R.Provenance("attributes", "opencv", "1", "mfsc_v1", "ok"),
    )


def _class_record():
    return R.ClassRecord(
        class_name="metal_nut", object_name="metal nut", source_layout="mvtec",
        reference_images=["train/good/000.png"], reference_selection="k=1 seed=0",
        image_view=R.ImageView("metal nut", "black"), foreground_view=R.ForegroundView(1, "one part"),
        components=[R.ComponentView("nut", 1, "center", "gray", "smooth", "circular", "none", 0.4, "a gray nut")],
        caption="a gray metal nut", defect_states=["scratch"], defect_vocab="generic",
        texts=[R.PromptText("image", "image", ["a gray metal nut"], ["a gray metal nut with scratch"])],
        provenance=R.Provenance(),
    )


def test_json_round_trip(tmp_path):
    rec = _image_record(tmp_path)
    d = json.loads(json.dumps(rec.to_dict()))
    assert R.ImageRecord.from_dict(d) == rec
    cr = _class_record()
    d = json.loads(json.dumps(cr.to_dict()))
    assert d["schema_version"] == R.SCHEMA_VERSION == 1
    assert R.ClassRecord.from_dict(d) == cr


def test_from_dict_ignores_unknown_keys():
    d = _class_record().to_dict()
    d["future_field"] = 3
    d["components"][0]["extra"] = "x"
    assert R.ClassRecord.from_dict(d) == _class_record()


def test_features_match_contract_keys():
    img_keys = list(R.IMAGES_FEATURES)
    assert img_keys == ["id", "class_name", "object_name", "split", "label", "defect_type", "file_name", "image",
                        "mask", "image_file", "image_file_size", "image_sha256", "mask_file", "mask_file_size",
                        "mask_sha256", "width", "height", "is_reference", "image_view", "foreground_view", "components",
                        "caption", "regions", "defect", "provenance"]
    assert R.IMAGES_FEATURES["label"].names == ["normal", "anomaly"]
    assert "schema_version" in R.CLASSES_FEATURES and "texts" in R.CLASSES_FEATURES


def test_rows_encode_through_datasets(tmp_path):
    import datasets

    rec = _image_record(tmp_path)
    normal = _image_record(tmp_path, with_mask=False)
    normal.label, normal.defect = 0, R.DefectView()
    ds = datasets.Dataset.from_list([rec.to_row(), normal.to_row()], features=R.IMAGES_FEATURES)
    ds.save_to_disk(str(tmp_path / "images"))
    back = datasets.load_from_disk(str(tmp_path / "images"))
    row = back[0]
    assert row["label"] == 1 and row["components"][1]["name"] == "body"
    assert row["regions"][0]["box"] == [2, 1, 5, 3]
    img = np.asarray(row["image"].convert("RGB"))
    assert img.shape == (6, 8, 3) and tuple(img[0, 0]) == (255, 0, 0)
    assert np.asarray(row["mask"]).astype(bool).sum() == 6
    assert back[1]["mask"] is None
    # bytes are embedded, not paths: removing the source files keeps the data readable
    (tmp_path / "img.png").unlink()
    raw = back.with_format(None).cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert raw["bytes"] and Image.open(io.BytesIO(raw["bytes"])).size == (8, 6)

    cds = datasets.Dataset.from_list([_class_record().to_row()], features=R.CLASSES_FEATURES)
    c = cds[0]
    assert c["texts"][0]["abnormal"] == ["a gray metal nut with scratch"]
    assert R.ClassRecord.from_dict(c) == _class_record()
