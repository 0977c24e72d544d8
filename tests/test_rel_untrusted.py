"""Untrusted files are data, never code: crafted pickles are refused without running, checkpoint configs are
validated, `trust_remote_code` stays off unless asked for, and no unsafe loader is used anywhere in the code."""
from __future__ import annotations

import ast
import json
import os
import pickle
import shlex
import sys
from pathlib import Path

import pytest
import torch

from detector.errors import DetectorError
from detector.store.saved_detector import save_detector

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("detector", "mfsc_builder", "fsad_data", "bench", "scripts")


class _Payload:
    """Unpickling this runs a shell command that creates ``marker`` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _evil_state_dict(path: Path, marker: Path) -> Path:
    """A torch file that looks like a state dict but executes code when unpickled without weights_only."""
    torch.save({"visual.proj": torch.zeros(2, 2), "hook": _Payload(marker)}, path)
    return path


def test_the_crafted_pickle_really_runs_code(tmp_path):
    """Proof that the payload is live: a plain unpickler (not the project's) writes the marker."""
    marker = tmp_path / "pwned"
    f = _evil_state_dict(tmp_path / "w.pt", marker)
    torch.load(f, weights_only=False)
    assert marker.exists()
    marker.unlink()
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("name", ["weights.pt", "pytorch_model.bin", "weights.pth", "w.ckpt"])
def test_pickled_pretrained_weights_are_refused_without_running(tmp_path, tiny_clip_name, name):
    from detector.method.backbone import load_backbone

    marker = tmp_path / "pwned"
    f = _evil_state_dict(tmp_path / name, marker)
    with pytest.raises(DetectorError) as e:
        load_backbone(tiny_clip_name, str(f))
    assert str(f) in str(e.value) and "safetensors" in str(e.value)
    assert not marker.exists()
    # the same file as the only weight file of a folder
    folder = tmp_path / "clip"
    folder.mkdir()
    os.replace(f, folder / name)
    with pytest.raises(DetectorError):
        load_backbone(tiny_clip_name, str(folder))
    assert not marker.exists()


def test_pickle_renamed_to_safetensors_is_refused(tmp_path, tiny_clip_name):
    from detector.method.backbone import load_backbone

    marker = tmp_path / "pwned"
    f = _evil_state_dict(tmp_path / "open_clip_model.safetensors", marker)
    with pytest.raises(DetectorError, match="open_clip_model.safetensors"):
        load_backbone(tiny_clip_name, str(f))
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_clip_name) -> Path:
    """A real (tiny, 1-epoch) FineGrainedAD checkpoint."""
    import numpy as np

    from detector.config import TrainConfig
    from detector.run.train import train_model

    record = {"class_name": "widget", "object_name": "widget", "texts": [
        {"level": "image", "group": "image", "normal": ["a photo of a widget"], "abnormal": ["a broken widget"]},
        {"level": "background", "group": "background", "normal": ["white background"],
         "abnormal": ["dirty white background"]},
    ]}
    img = np.full((64, 64, 3), 200, np.uint8)
    cfg = TrainConfig(class_name="widget", backbone=tiny_clip_name, pretrained="none", epochs=1, image_epochs=1,
                      shots=1)
    model = train_model(cfg, progress=False, shot_images=[img], shot_names=["good/000.png"], record=record)
    return save_detector(model, tmp_path_factory.mktemp("ckpt") / "widget")


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _edit_config(ckpt: Path, fn) -> None:
    cfg_path = ckpt / "config.json"
    cfg = json.loads(cfg_path.read_text())
    fn(cfg)
    cfg_path.write_text(json.dumps(cfg))


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_with_pickle_weights_is_refused(checkpoint, tmp_path):
    from detector.store.saved_detector import load_detector

    marker = tmp_path / "pwned"
    ckpt = _copy(checkpoint, tmp_path / "ckpt")
    (ckpt / "model.safetensors").unlink()
    _evil_state_dict(ckpt / "model.pt", marker)
    with pytest.raises(DetectorError, match="pickle") as e:
        load_detector(ckpt)
    assert str(ckpt) in str(e.value) and not marker.exists()


def test_pickle_disguised_as_checkpoint_weights_with_a_matching_checksum(checkpoint, tmp_path):
    """The attacker also fixes the checksum: the safetensors reader still refuses, nothing runs."""
    from detector.store.saved_detector import load_detector

    marker = tmp_path / "pwned"
    ckpt = _copy(checkpoint, tmp_path / "ckpt")
    _evil_state_dict(ckpt / "model.safetensors", marker)
    digest = _sha(ckpt / "model.safetensors")
    _edit_config(ckpt, lambda c: c.update(weights_sha256=digest))
    with pytest.raises(DetectorError, match="model.safetensors"):
        load_detector(ckpt)
    assert not marker.exists()


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.update(format_version=2), "format_version"),
    (lambda c: c.update(format_version="1"), "format_version"),
    (lambda c: c.update(format="pytorch"), "format"),
    (lambda c: c.update(meta=[1, 2]), "meta"),
    (lambda c: c.pop("weights_sha256"), "checksum"),
    (lambda c: c.update(weights_sha256=12), "checksum"),
])
def test_checkpoint_config_with_wrong_types_or_version_is_a_clear_error(checkpoint, tmp_path, edit, words):
    from detector.store.checkpoint import load_checkpoint

    ckpt = _copy(checkpoint, tmp_path / "ckpt")
    _edit_config(ckpt, edit)
    with pytest.raises(DetectorError, match=words) as e:
        load_checkpoint(ckpt)
    assert "config.json" in str(e.value) or "model.safetensors" in str(e.value)


def test_checkpoint_config_that_is_not_json_is_a_clear_error(checkpoint, tmp_path):
    from detector.store.checkpoint import load_checkpoint

    ckpt = _copy(checkpoint, tmp_path / "ckpt")
    (ckpt / "config.json").write_bytes(b"\x80\x04K\x01.")  # a pickle where JSON belongs
    with pytest.raises(DetectorError, match="not valid JSON"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("tensors", [5, "model", None, [1, 2]])
def test_checkpoint_tensor_list_of_the_wrong_type_is_a_clear_error(checkpoint, tmp_path, tensors):
    from detector.store.checkpoint import load_checkpoint

    ckpt = _copy(checkpoint, tmp_path / "ckpt")
    _edit_config(ckpt, lambda c: c.update(tensors=tensors))
    with pytest.raises(DetectorError, match="config.json"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("edit", [
    pytest.param(lambda m: m.pop("backbone"), id="no-backbone"),
    pytest.param(lambda m: m.update(backbone="ViT-B-16"), id="backbone-is-a-string"),
    pytest.param(lambda m: m.update(n_memory="two"), id="n_memory-not-int"),
    pytest.param(lambda m: m.update(n_memory=7), id="n_memory-too-many"),
    pytest.param(lambda m: m.pop("prompt_config_pixel"), id="no-prompt-config"),
    pytest.param(lambda m: m["prompt_config_pixel"].update(n_ctx="four"), id="prompt-config-type"),
    pytest.param(lambda m: m["prompt_config_pixel"].update(evil=1), id="prompt-config-unknown-key"),
    pytest.param(lambda m: m.update(pixel_names=3), id="names-not-list"),
])
def test_checkpoint_meta_with_wrong_fields_is_a_detector_error(checkpoint, tmp_path, edit):
    """The checksum only covers the weights: a hand-edited meta must still give a DetectorError naming the
    checkpoint, not a KeyError/TypeError traceback."""
    from detector.store.saved_detector import load_detector

    ckpt = _copy(checkpoint, tmp_path / "ckpt")
    _edit_config(ckpt, lambda c: edit(c["meta"]))
    with pytest.raises(DetectorError) as e:
        load_detector(ckpt)
    assert str(ckpt) in str(e.value)


def test_checkpoint_from_another_backbone_is_a_clear_error(checkpoint, tmp_path):
    """Reloading with a backbone of another width (a config swapped in meta) fails with a message."""
    from detector.store.saved_detector import load_detector

    other = json.loads((ROOT / "tests" / "assets" / "fgad-tiny-test.json").read_text())
    other["embed_dim"] = 48
    other["text_cfg"]["width"] = 48
    cfg_file = tmp_path / "fgad-tiny-wide.json"
    cfg_file.write_text(json.dumps(other))
    ckpt = _copy(checkpoint, tmp_path / "ckpt")
    _edit_config(ckpt, lambda c: c["meta"]["backbone"].update(name=str(cfg_file), model_name="fgad-tiny-wide"))
    with pytest.raises(DetectorError) as e:
        load_detector(ckpt)
    assert str(ckpt) in str(e.value) and "retrain" in str(e.value)


# -------------------------------------------------------------------------------------- trust_remote_code
class _Refuse(OSError):
    pass


def _spy_transformers(monkeypatch) -> list[dict]:
    """Record the keyword arguments the hf: backend passes to transformers, then fail the load."""
    import transformers

    calls: list[dict] = []

    def fake(*args, **kwargs):
        calls.append(kwargs)
        raise _Refuse("stop here")

    for cls in ("AutoProcessor", "AutoModelForImageTextToText"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", fake)
    return calls


def test_hf_captioner_does_not_trust_remote_code_by_default(monkeypatch, tmp_path):
    from mfsc_builder.build import BuildConfig
    from mfsc_builder.captioners import make_captioner
    from mfsc_builder.errors import BuildError

    calls = _spy_transformers(monkeypatch)
    with pytest.raises(BuildError, match="trust-remote-code"):
        make_captioner(f"hf:{tmp_path}")
    assert calls and all(c.get("trust_remote_code") is False for c in calls)
    assert BuildConfig().captioner.trust_remote_code is False
    assert BuildConfig.from_mapping({"source": "x"}).override(
        captioner={"trust_remote_code": None}).captioner.trust_remote_code is False
    calls.clear()
    with pytest.raises(BuildError):
        make_captioner(f"hf:{tmp_path}", trust_remote_code=True)
    assert calls and all(c.get("trust_remote_code") is True for c in calls)


def test_trust_remote_code_is_never_switched_on_in_the_code():
    """Every `trust_remote_code=` keyword in the project passes a variable or False, never True."""
    hits = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                hits.append(path)
                if isinstance(node.value, ast.Constant):
                    assert node.value.value is False, f"{path}:{node.value.lineno} passes trust_remote_code=True"
    assert hits, "the hf backend should pass trust_remote_code explicitly"


# -------------------------------------------------------------------------------------- unsafe loaders
def _sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    assert len(files) > 20
    return files


def _call_name(node: ast.Call) -> str:
    f = node.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def _kw(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return "<absent>"


def test_no_unsafe_deserialisation_anywhere_in_the_code():
    """No pickle/marshal/dill/joblib/shelve loads, torch.load only with weights_only=True, np.load never with
    allow_pickle=True, yaml only through safe_load, no eval/exec: user files stay data."""
    bad = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for m in mods:
                    if m.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"):
                        bad.append(f"{path}:{node.lineno} imports {m}")
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node)
            where = f"{path.relative_to(ROOT)}:{node.lineno} {name}"
            if isinstance(node.func, ast.Name) and name in ("eval", "exec") or name.endswith(("pickle.load", "pickle.loads", "marshal.loads")):
                bad.append(where)
            elif name.endswith("torch.load") or name == "load" and "torch" in ast.unparse(node.func):
                if _kw(node, "weights_only") is not True:
                    bad.append(where + " without weights_only=True")
            elif name in ("np.load", "numpy.load") and _kw(node, "allow_pickle") not in ("<absent>", False):
                bad.append(where + " with allow_pickle")
            elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                bad.append(where + " (use yaml.safe_load)")
    assert not bad, "\n".join(bad)


def test_the_source_scan_would_catch_an_unsafe_load(tmp_path, monkeypatch):
    """The scanner is not vacuous: it flags a planted torch.load without weights_only."""
    pkg = tmp_path / "detector"
    pkg.mkdir()
    for i in range(21):
        (pkg / f"m{i}.py").write_text("x = 1\n")
    (pkg / "bad.py").write_text("import torch\nstate = torch.load('w.pt')\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="bad.py:2 torch.load without weights_only"):
        test_no_unsafe_deserialisation_anywhere_in_the_code()


def test_caption_dataset_folder_with_a_loading_script_runs_no_code(tmp_path):
    """A published caption folder that ships a dataset script: the loader never imports it."""
    from detector.store.captions import load_class_record

    marker = tmp_path / "pwned"
    d = tmp_path / "caps"
    d.mkdir()
    (d / "README.md").write_text("---\nconfigs:\n- config_name: classes\n  data_files: classes.jsonl\n---\n")
    (d / "caps.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (d / "classes.jsonl").write_text(json.dumps({"schema_version": 1, "class_name": "x"}) + "\n")
    with pytest.raises(DetectorError):
        load_class_record(d, "x")
    assert not marker.exists()


def _model_with_custom_code(folder: Path, marker: Path) -> Path:
    """A local hf: model folder whose config points at its own Python code (auto_map), like a Hub repo would."""
    folder.mkdir()
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import PretrainedConfig, PreTrainedModel\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
        "class EvilModel(PreTrainedModel):\n    config_class = EvilConfig\n")
    auto = {"AutoConfig": "evil.EvilConfig", "AutoModelForImageTextToText": "evil.EvilModel",
            "AutoProcessor": "evil.EvilProcessor"}
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto,
                                                    "architectures": ["EvilModel"]}))
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "EvilProcessor",
                                                              "auto_map": {"AutoProcessor": "evil.EvilProcessor"}}))
    return folder


def test_hf_model_folder_with_custom_code_is_refused_without_the_flag(tmp_path):
    """No mocks: transformers itself is asked to load a folder with code; without --trust-remote-code the
    code never runs and the error says which flag would allow it."""
    from mfsc_builder.captioners import make_captioner
    from mfsc_builder.errors import BuildError

    marker = tmp_path / "pwned"
    model = _model_with_custom_code(tmp_path / "model", marker)
    with pytest.raises(BuildError, match="--trust-remote-code") as e:
        make_captioner(f"hf:{model}")
    assert str(model) in str(e.value) and not marker.exists()
    # the folder's code is live: with the flag it runs (and then fails to be a real model)
    with pytest.raises(Exception):  # noqa: B017 - any failure after the import is fine
        make_captioner(f"hf:{model}", trust_remote_code=True)
    assert marker.exists()
