"""Checkpoint folder I/O: bit-exact round trip, atomic replacement, pickles refused, JSON validated."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from detector.errors import DetectorError
from detector.store.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    checkpoint_info,
    load_checkpoint,
    save_checkpoint,
)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    return {
        "prompts.ctx": torch.randn(3, 4, 8, generator=g),
        "gates": torch.tensor([float("-inf"), -0.0, 1e-38, 3.4e38]),  # edge values survive bit-exactly
        "bf16": torch.randn(5, generator=g).to(torch.bfloat16),
        "labels": torch.arange(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "strided": base.t(),  # non-contiguous input is saved by value
    }


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().flatten().view(torch.uint8)


META = {"backbone": "fgad-tiny-test", "epochs": 3, "lr": 0.002, "shots": ["a.png", "b.png"], "nested": {"k": None}}


def test_round_trip_is_bit_exact(tmp_path) -> None:
    t = _tensors()
    out = save_checkpoint(tmp_path / "ck", t, META)
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    got, meta = load_checkpoint(out)
    assert meta == META
    assert sorted(got) == sorted(t)
    for k, v in t.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        assert torch.equal(_bytes(got[k]), _bytes(v))
    assert torch.equal(got["gates"], t["gates"]) and torch.signbit(got["gates"][1])  # -0.0 kept


def test_existing_checkpoint_replaced_and_no_temp_left(tmp_path) -> None:
    save_checkpoint(tmp_path / "ck", {"a": torch.zeros(2)}, {"v": 1})
    save_checkpoint(tmp_path / "ck", {"b": torch.ones(3)}, {"v": 2})
    got, meta = load_checkpoint(tmp_path / "ck")
    assert meta == {"v": 2} and list(got) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temp or backup folder left behind


def test_failed_save_keeps_the_old_checkpoint(tmp_path) -> None:
    save_checkpoint(tmp_path / "ck", {"a": torch.zeros(2)}, {"v": 1})
    with pytest.raises(DetectorError):
        save_checkpoint(tmp_path / "ck", {"a": torch.ones(2)}, {"bad": object()})
    with pytest.raises(DetectorError):
        save_checkpoint(tmp_path / "ck", {"a": torch.ones(2)}, {"nan": float("nan")})
    got, meta = load_checkpoint(tmp_path / "ck")
    assert meta == {"v": 1} and torch.equal(got["a"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_refuses_to_overwrite_a_non_checkpoint_folder(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("x")
    with pytest.raises(DetectorError, match="not a checkpoint folder"):
        save_checkpoint(tmp_path / "data", {"a": torch.zeros(1)}, {})
    assert (tmp_path / "data" / "precious.txt").read_text() == "x"


def test_pickles_are_refused(tmp_path) -> None:
    d = tmp_path / "pk"
    d.mkdir()
    (d / "model.pt").write_bytes(pickle.dumps({"a": 1}))
    (d / CONFIG_FILE).write_text("{}")
    with pytest.raises(DetectorError, match="pickle"):
        load_checkpoint(d)


def test_config_is_validated(tmp_path) -> None:
    out = save_checkpoint(tmp_path / "ck", {"a": torch.zeros(2)}, {"v": 1})
    cfg = json.loads((out / CONFIG_FILE).read_text())
    cfg["format_version"] = 99
    (out / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(DetectorError, match="format_version 99"):
        load_checkpoint(out)
    (out / CONFIG_FILE).write_text("{not json")
    with pytest.raises(DetectorError, match="not valid JSON"):
        load_checkpoint(out)
    with pytest.raises(DetectorError, match="not found"):
        load_checkpoint(tmp_path / "missing")


def test_weights_checksum_catches_a_swapped_file(tmp_path) -> None:
    a = save_checkpoint(tmp_path / "a", {"x": torch.zeros(2)}, {})
    b = save_checkpoint(tmp_path / "b", {"x": torch.ones(2)}, {})
    (b / WEIGHTS_FILE).replace(a / WEIGHTS_FILE)
    with pytest.raises(DetectorError, match="checksum"):
        load_checkpoint(a)


def test_crash_while_writing_leaves_old_checkpoint_and_no_temp(tmp_path, monkeypatch) -> None:
    import safetensors.torch

    save_checkpoint(tmp_path / "ck", {"a": torch.zeros(2)}, {"v": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save", boom)
    with pytest.raises(DetectorError, match="disk full"):  # one clear error, not an OSError traceback
        save_checkpoint(tmp_path / "ck", {"a": torch.ones(2)}, {"v": 2})
    monkeypatch.undo()
    got, meta = load_checkpoint(tmp_path / "ck")
    assert meta == {"v": 1} and torch.equal(got["a"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_checkpoint_info_reads_train_meta():
    meta = {"class_name": "bottle", "shots": ["train/good/000.png"], "baseline": None,
            "config": {"shots": 1, "seed": 2, "pretrained": "none", "recipe": "ours"},
            "backbone": {"name": "fgad-tiny-test", "pretrained": "none", "weights_sha256": "ab" * 32},
            "method": {"tau": "exp", "vv_blocks": 6},
            "record": {"defect_vocab": "dataset", "provenance": {"backend": "openai", "model": "gpt-4o"}}}
    info = checkpoint_info(meta)
    assert info == {"shots": 1, "seed": 2, "method": "finegrainedad", "backbone": "fgad-tiny-test",
                    "pretrained": "none", "shot_files": ["train/good/000.png"], "meaningful": False,
                    "recipe": "ours", "method_options": {"tau": "exp", "vv_blocks": 6},
                    "captions": "openai (gpt-4o)", "defect_vocab": "dataset", "weights_sha256": "ab" * 32}
