"""Hostile inputs against `detector predict` and `detector export` (issue 22): an export.json whose values or
shape would cost unbounded memory, a 12000 x 12000 picture, a 244-byte file name, a full disk, two runs into one
--out. Each gives a clean result: one line naming the file (or folder), bounded memory, or the images scored."""
from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from disk_full import fill_disk_on_fdopen
from PIL import Image
from typer.testing import CliRunner

from detector.cli import app
from detector.errors import DetectorError

ROOT = Path(__file__).resolve().parents[1]


def _invoke(args: list) -> tuple:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res, " ".join(res.output.split())


def _one_error_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output and lines and lines[-1].startswith("error:"), res.output
    return " ".join(res.output.split())


def _scene(size: int = 48) -> np.ndarray:
    a = np.full((size, size, 3), 220, np.uint8)
    a[10:30, 12:36] = (30, 90, 200)
    return a


@pytest.fixture(scope="module")
def onnx_export(widget_checkpoint, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    from detector.deploy.export import export_checkpoint

    return export_checkpoint(widget_checkpoint, "onnx", tmp_path_factory.mktemp("onnx") / "widget-onnx",
                             resolution=32)


def _edited_export(onnx_export: Path, tmp_path: Path, edit) -> Path:
    folder = Path(shutil.copytree(onnx_export, tmp_path / "export"))
    spec = json.loads((folder / "export.json").read_text())
    text = edit(spec)
    (folder / "export.json").write_text(text if isinstance(text, str) else json.dumps(spec))
    return folder


# --------------------------------------------------------------------------- 1. export.json bounds
@pytest.mark.parametrize("edit, words", [
    (lambda s: s["input"].__setitem__("size", [60000, 60000]), "input.size"),
    (lambda s: s["input"].__setitem__("size", ["a", "b"]), "input.size"),
    (lambda s: s["input"].__setitem__("size", [True, True]), "input.size"),
    (lambda s: s["input"].__setitem__("size", [64, 32]), "input.size"),
    (lambda s: s["input"].__setitem__("size", [128, 128]), "input.size"),  # in range, not the graph's 64
    (lambda s: s.__setitem__("resolution", 10**9), "resolution"),
    (lambda s: s.__setitem__("resolution", 0), "resolution"),
    (lambda s: s["input"].__setitem__("resize", ["bicubic"]), "input.resize"),
    (lambda s: s.__setitem__("checkpoint_meta", [1, 2]), "checkpoint_meta"),
])
def test_export_json_values_out_of_bounds_are_one_line(onnx_export, tmp_path, edit, words):
    """An export.json whose input size is 60000 (2.8 GB and rising before), not numbers, or any value the
    runtime reads of the wrong type or out of range: one DetectorError naming the file and the key, before any
    image is scored."""
    from detector.run.runtime import load_exported

    folder = _edited_export(onnx_export, tmp_path, edit)
    with pytest.raises(DetectorError) as info:
        load_exported(folder)
    assert "export.json" in str(info.value) and words in str(info.value), str(info.value)
    Image.fromarray(_scene()).save(tmp_path / "x.png")
    res, _ = _invoke(["predict", tmp_path / "x.png", "--checkpoint", folder, "--engine", "onnx",
                      "--out", tmp_path / "out"])
    line = _one_error_line(res)
    assert "export.json" in line and words in line, line
    assert not (tmp_path / "out").exists()


def test_export_json_nested_deep_or_huge_is_refused_before_parsing(onnx_export, tmp_path):
    """export.json nested 100000 deep (RecursionError before) or of megabytes (read whole before): one line."""
    from detector.run.runtime import load_exported

    folder = _edited_export(onnx_export, tmp_path, lambda s: '{"format": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(DetectorError, match=r"export\.json.*(deep|nest)"):
        load_exported(folder)
    padded = json.dumps(json.loads((onnx_export / "export.json").read_text())) + " " * (2 << 20)
    (folder / "export.json").write_text(padded)
    with pytest.raises(DetectorError, match=r"export\.json.*bytes"):
        load_exported(folder)


def test_export_refuses_a_resolution_the_runtime_would_refuse(widget_checkpoint, tmp_path):
    from detector.deploy.export import export_checkpoint
    from detector.run.runtime import MAX_RESOLUTION

    with pytest.raises(DetectorError, match="--resolution"):
        export_checkpoint(widget_checkpoint, "onnx", tmp_path / "o", resolution=MAX_RESOLUTION + 1)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- 2. large images
def _write_png(path: Path, width: int, height: int, mode: str = "RGB") -> None:
    """A PNG of width x height written row by row (never the whole picture in memory): a dark frame with a
    bright square in the middle, so it compresses to a few megabytes."""
    channels = {"RGB": 3, "L": 1}[mode]
    colour = {"RGB": 2, "L": 0}[mode]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    plain = b"\x00" + bytes([40] * (width * channels))
    spot = bytearray(plain)
    lo, hi = width // 3, 2 * width // 3
    spot[1 + lo * channels : 1 + hi * channels] = bytes([230] * ((hi - lo) * channels))
    spot = bytes(spot)
    z = zlib.compressobj(1)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)))
        for y in range(height):
            data = z.compress(spot if height // 3 <= y < 2 * height // 3 else plain)
            if data:
                f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IDAT", z.flush()) + chunk(b"IEND", b""))


# the peak of this process (VmHWM: ru_maxrss would also count the pytest process it was forked from)
_PEAK = """
import sys
import numpy as np
from fsad_data.images import load_rgb
a = load_rgb(sys.argv[1], max_pixels=int(sys.argv[2]))
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(a.shape[1], a.shape[0], int(a[a.shape[0] // 2, a.shape[1] // 2, 0]), int(a[2, 2, 0]), hwm // 1024)
"""


def test_a_12000_px_png_decodes_reduced_in_bounded_memory(tmp_path):
    """12000 x 12000 RGB PNG (under Pillow's bomb limit): 3 GB and more before. Decoded reduced by a whole
    factor to at most max_pixels, the peak stays about Pillow's own decoded copy (4 bytes a pixel)."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak memory is read from /proc (Linux)")
    path = tmp_path / "big.png"
    _write_png(path, 12000, 12000)
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(25_000_000)], check=False, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    w, h, centre, corner, peak_mb = map(int, out.stdout.split())
    assert (w, h) == (4000, 4000) and centre == 230 and corner == 40
    assert peak_mb < 12000 * 12000 * 4 / 2**20 + 250, peak_mb  # Pillow's decoded copy (549 MiB) and little more


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "I;16", "F", "1"])
def test_reduced_decoding_is_the_box_reduction_of_the_full_one(tmp_path, mode):
    """Whatever the mode, the reduced decode equals the full decode (load_rgb's RGB rules, alpha dropped with the
    colours kept) reduced by the same whole factor: the bands are an implementation detail."""
    from fsad_data.images import load_rgb

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (301, 203, 3), dtype=np.uint8)
    if mode == "RGBA":
        im = Image.fromarray(np.dstack([rgb, rng.integers(0, 2, (301, 203), dtype=np.uint8) * 255]), "RGBA")
    elif mode == "I;16":
        im = Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257)
    elif mode == "F":
        im = Image.fromarray(rgb[:, :, 0].astype(np.float32) / 255.0)
    else:
        im = Image.fromarray(rgb).convert(mode)
    path = tmp_path / ("x.tif" if mode == "F" else "x.png")
    im.save(path)
    full = load_rgb(path)
    got = load_rgb(path, max_pixels=60 * 40)
    want = np.asarray(Image.fromarray(full).reduce(6))  # ceil(203/6) * ceil(301/6) = 34 * 51 <= 2400
    assert got.shape == want.shape == (51, 34, 3)
    np.testing.assert_array_equal(got, want)
    assert load_rgb(path, max_pixels=301 * 203).shape == full.shape  # at the limit: not reduced


def test_a_large_jpeg_is_reduced_while_decoding(tmp_path):
    from fsad_data.images import load_rgb

    rng = np.random.default_rng(2)
    big = np.kron(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8), np.ones((32, 32, 1), np.uint8))
    Image.fromarray(big).save(tmp_path / "x.jpg", quality=95)  # 1280 x 1600
    got = load_rgb(tmp_path / "x.jpg", max_pixels=320 * 400)
    assert got.shape[0] * got.shape[1] <= 320 * 400 and got.shape[0] >= 300
    want = np.asarray(Image.fromarray(load_rgb(tmp_path / "x.jpg")).resize((got.shape[1], got.shape[0]),
                                                                           Image.BOX))
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 4


def test_predict_scores_a_large_image_at_a_bounded_size_and_records_the_scale(widget_checkpoint, tmp_path,
                                                                              monkeypatch):
    """An image above predict's pixel limit is scored, not refused: its maps, masks and overlays are at the
    reduced size, and scores.csv/json record the file's own size and the scale."""
    import detector.run.predict as P

    monkeypatch.setattr(P, "MAX_IMAGE_PIXELS", 400 * 480)
    Image.fromarray(np.kron(_scene(), np.ones((20, 20, 1), np.uint8))[:, :800]).save(tmp_path / "big.png")  # 800x960
    Image.fromarray(_scene()).save(tmp_path / "small.png")
    out = tmp_path / "out"
    res, text = _invoke(["predict", tmp_path / "big.png", tmp_path / "small.png", "--checkpoint", widget_checkpoint,
                         "--out", out, "--resolution", "32", "--threshold", "0.5"])
    assert res.exit_code == 0, text
    rows = {r["name"]: r for r in csv.DictReader((out / "scores.csv").open())}
    big, small = rows["big.png"], rows["small.png"]
    assert (int(big["width"]), int(big["height"]), float(big["scale"])) == (800, 960, 0.5)
    assert (int(small["width"]), int(small["height"]), float(small["scale"])) == (48, 48, 1.0)
    assert np.load(out / big["map"]).shape == (480, 400)
    assert np.asarray(Image.open(out / big["mask"])).shape == (480, 400)
    assert Image.open(out / big["overlay"]).size[0] == 400  # the picture's width (above the caption band)
    assert np.load(out / small["map"]).shape == (48, 48)
    data = json.loads((out / "scores.json").read_text())
    assert {i["name"]: i["scale"] for i in data["images"]} == {"big.png": 0.5, "small.png": 1.0}


# --------------------------------------------------------------------------- 3. long file names
def test_output_stems_shorten_over_long_names_deterministically():
    from detector.run.predict import output_stems

    long_a, long_b = "a" * 240 + "1.png", "a" * 240 + "2.png"
    nested = "sub/" + "é" * 120 + ".png"  # 240 bytes in UTF-8
    stems = output_stems([long_a, long_b, nested, "x.png"])
    assert stems == output_stems([long_a, long_b, nested, "x.png"])  # the same on every run
    assert len({s.casefold() for s in stems}) == 4
    assert stems[3] == "x" and stems[2].startswith("sub/é")
    for s in stems:
        assert len(s.rsplit("/", 1)[-1].encode()) + len(".npy") + 14 <= 255, s  # atomic temp name included
    assert stems[0].startswith("a" * 100) and stems[0] != stems[1]
    assert output_stems([long_a])[0] == stems[0]  # one name's stem does not depend on the others


def test_predict_scores_an_image_with_a_244_byte_name(widget_checkpoint, tmp_path):
    name = "p" * 240 + ".png"
    assert len(name.encode()) == 244
    Image.fromarray(_scene()).save(tmp_path / name)
    out = tmp_path / "out"
    res, text = _invoke(["predict", tmp_path / name, "--checkpoint", widget_checkpoint, "--out", out,
                         "--resolution", "32", "--threshold", "0.5"])
    assert res.exit_code == 0, text
    row = next(csv.DictReader((out / "scores.csv").open()))
    assert row["name"] == name
    for kind in ("map", "overlay", "mask"):
        assert (out / row[kind]).is_file(), row[kind]


# --------------------------------------------------------------------------- 4. full disk
def test_predict_on_a_full_disk_names_the_output_folder(widget_checkpoint, tmp_path, monkeypatch):
    Image.fromarray(_scene()).save(tmp_path / "x.png")
    out = tmp_path / "out"
    fill_disk_on_fdopen(monkeypatch)
    res, _ = _invoke(["predict", tmp_path / "x.png", "--checkpoint", widget_checkpoint, "--out", out,
                      "--resolution", "32"])
    monkeypatch.undo()
    line = _one_error_line(res)
    assert os.strerror(errno.ENOSPC) in line and str(out) in line and ".tmp" not in line, line
    assert not out.exists()


def test_export_on_a_full_disk_names_the_output_folder(widget_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "exp"
    fill_disk_on_fdopen(monkeypatch)
    res, _ = _invoke(["export", "--checkpoint", widget_checkpoint, "--out", out, "--resolution", "32"])
    monkeypatch.undo()
    line = _one_error_line(res)
    assert os.strerror(errno.ENOSPC) in line and str(out) in line and ".tmp" not in line, line
    assert not out.exists()


# --------------------------------------------------------------------------- 5. one run per --out
def test_predict_into_a_folder_another_run_holds_is_refused_at_once(widget_checkpoint, tmp_path):
    from detector.store.files import output_lock

    Image.fromarray(_scene()).save(tmp_path / "x.png")
    out = tmp_path / "out"
    args = ["predict", tmp_path / "x.png", "--checkpoint", widget_checkpoint, "--out", out, "--resolution", "32"]
    with output_lock(out, "detector predict"):
        line = _one_error_line(_invoke(args)[0])
    assert str(out) in line and "in use by another run" in line and "`detector predict`" in line, line
    assert not out.exists()
    res, text = _invoke(args)  # released: the next run writes
    assert res.exit_code == 0, text


def test_export_into_a_folder_another_run_holds_is_refused_at_once(widget_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    from detector.store.files import output_lock

    out = tmp_path / "exp"
    with output_lock(out, "detector export"):
        line = _one_error_line(_invoke(["export", "--checkpoint", widget_checkpoint, "--out", out])[0])
    assert str(out) in line and "in use by another run" in line and "`detector export`" in line, line
    assert not out.exists()


def test_eval_into_a_folder_another_run_holds_is_refused_at_once(widget_checkpoint, demo_root, tmp_path):
    from detector.store.files import output_lock

    out = tmp_path / "ev"
    args = ["eval", "--checkpoint", widget_checkpoint, "--data", demo_root, "--class", "hex_nut", "--out", out,
            "--resolution", "32"]
    with output_lock(out, "detector eval"):
        line = _one_error_line(_invoke(args)[0])
    assert str(out) in line and "in use by another run" in line and "`detector eval`" in line, line
    assert not out.exists()
    res, text = _invoke(args)  # released: the next run writes
    assert res.exit_code == 0, text
