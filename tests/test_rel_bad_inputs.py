"""Bad inputs across the stack (mfsc build, the caption loader, detector train, the atomic writers): each one
gives a message that names the file and the fix, and nothing is left half-written."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from disk_full import fill_disk_on_fdopen
from PIL import Image

from fsad_data.errors import DataError
from mfsc_builder.build import BuildConfig, run_build
from mfsc_builder.errors import BuildError

ROOT = Path(__file__).resolve().parents[1]
SIZE = 40


def _scene(seed: int, defect: bool = False) -> np.ndarray:
    """A white background with a blue square (and a red defect blob): what the cropper can segment."""
    rng = np.random.default_rng(seed)
    a = np.full((SIZE, SIZE, 3), 235, np.uint8)
    o = int(rng.integers(8, 12))
    a[o:o + 20, o:o + 20] = (40, 60, 200)
    if defect:
        a[o + 4:o + 9, o + 4:o + 9] = (220, 30, 30)
    return a


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def make_class(root: Path, name: str = "widget", n_train: int = 2, train_names: list[str] | None = None) -> Path:
    """MVTec-layout class: train/good, test/good, test/crack with ground_truth masks (40 px images)."""
    c = root / name
    for i, fn in enumerate(train_names or [f"{i:03d}.png" for i in range(n_train)]):
        _png(c / "train" / "good" / fn, _scene(i))
    _png(c / "test" / "good" / "000.png", _scene(10))
    _png(c / "test" / "crack" / "000.png", _scene(11, defect=True))
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[14:19, 14:19] = 255
    _png(c / "ground_truth" / "crack" / "000_mask.png", m)
    return c


def _cfg(src: Path, out: Path, **kw) -> BuildConfig:
    return BuildConfig(source=str(src), out=str(out), **kw)


def _listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to show that nothing changed)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _temporaries(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.startswith(".") and (".tmp" in p.name or ".write-" in p.name
                                                                              or ".old" in p.name)]


def _rows(out: Path) -> dict[str, list[dict]]:
    import datasets

    images = datasets.load_from_disk(str(out / "images"))
    return {s: images[s].cast_column("image", datasets.Image(decode=False))
            .cast_column("mask", datasets.Image(decode=False)).data.to_pylist() for s in images}


def _decode(cell: dict) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(cell["bytes"])))


# ------------------------------------------------------------------------------------------ broken files
CORRUPT = {
    "zero-byte": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "not-an-image": lambda p: p.write_text("name,score\nfoo,1\n"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_broken_image_stops_the_build_naming_the_file_and_writes_nothing(tmp_path, kind):
    src = tmp_path / "src"
    make_class(src)
    bad = src / "widget" / "test" / "good" / "000.png"
    CORRUPT[kind](bad)
    out = tmp_path / "out"
    with pytest.raises((DataError, BuildError)) as e:
        run_build(_cfg(src, out))
    msg = str(e.value)
    assert str(bad) in msg and ("on_error" in msg or "re-download" in msg or "re-export" in msg), msg
    assert not (out / "images").exists() and not (out / "classes").exists()
    assert not (out / "build_info.json").exists() and not _temporaries(tmp_path)
    # --on-error skip: the file is listed as skipped (with its reason), every other image is built
    summary = run_build(_cfg(src, out, on_error="skip"))
    assert [s for s, _ in summary.skipped if "test/good/000" in s or str(bad) in s], summary.skipped
    rows = _rows(out)
    assert len(rows["train"]) == 2 and [r["file_name"] for r in rows["test"]] == ["test/crack/000.png"]
    info = json.loads((out / "build_info.json").read_text())
    assert any("test/good/000" in s[0] or str(bad) in s[0] for s in info["skipped"])


def test_broken_image_through_the_cli_is_one_line_naming_the_file(tmp_path):
    from typer.testing import CliRunner

    from mfsc_builder.cli import app

    src = tmp_path / "src"
    make_class(src)
    bad = src / "widget" / "train" / "good" / "001.png"
    bad.write_bytes(b"")
    res = CliRunner().invoke(app, ["build", str(src), "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 1, res.output
    err = res.stderr if hasattr(res, "stderr") else res.output
    assert "Traceback" not in res.output and str(bad) in " ".join(err.split()), err


# ---------------------------------------------------------------------------------------- image modes
def test_gray_rgba_16bit_and_palette_images_are_converted_to_rgb(tmp_path):
    """One image per mode in train/good; the stored dataset image is RGB with the hand-computed pixels."""
    import cv2

    src = tmp_path / "src"
    c = make_class(src, n_train=0, train_names=[])
    g = _scene(1)
    gray = cv2.cvtColor(g, cv2.COLOR_RGB2GRAY)
    alpha = np.full((SIZE, SIZE), 7, np.uint8)
    gray16 = gray.astype(np.uint16) * 257 + 3  # high byte = gray
    rgb16 = g.astype(np.uint16) * 256 + 200
    pal = Image.fromarray(g).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    tg = c / "train" / "good"
    _png(tg / "a_gray.png", gray)
    _png(tg / "b_rgba.png", np.dstack([g, alpha]))
    _png(tg / "c_gray16.png", gray16)
    cv2.imwrite(str(tg / "d_rgb16.png"), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    pal.save(tg / "e_palette.png")
    Image.fromarray(np.dstack([gray, alpha])).save(tg / "f_gray_alpha.png")
    expect = {
        "a_gray": np.repeat(gray[..., None], 3, 2),
        "b_rgba": g,
        "c_gray16": np.repeat(gray[..., None], 3, 2),
        "d_rgb16": g,
        "e_palette": np.asarray(pal.convert("RGB")),
        "f_gray_alpha": np.repeat(gray[..., None], 3, 2),
    }
    assert Image.open(tg / "c_gray16.png").mode.startswith("I")  # really 16 bit on disk
    run_build(_cfg(src, tmp_path / "out", shots=2))
    rows = {Path(r["file_name"]).stem: r for r in _rows(tmp_path / "out")["train"]}
    assert sorted(rows) == sorted(expect)
    for stem, want in expect.items():
        got = _decode(rows[stem]["image"])
        assert got.shape == (SIZE, SIZE, 3) and got.dtype == np.uint8, stem
        assert np.array_equal(got, want), stem


# ------------------------------------------------------------------------------------------------ masks
def test_mask_of_another_size_stops_the_build_naming_mask_and_image(tmp_path):
    src = tmp_path / "src"
    c = make_class(src)
    mask = c / "ground_truth" / "crack" / "000_mask.png"
    _png(mask, np.zeros((SIZE + 2, SIZE), np.uint8))
    out = tmp_path / "out"
    with pytest.raises((DataError, BuildError)) as e:
        run_build(_cfg(src, out))
    msg = str(e.value)
    assert str(mask) in msg and str(c / "test" / "crack" / "000.png") in msg and "re-export" in msg, msg
    assert not (out / "images").exists() and not _temporaries(tmp_path)


@pytest.mark.parametrize("values, mode", [((0, 1, 2, 38), None), ((0, 128, 200, 255), None), ((0, 3, 5, 1), "P")])
def test_non_binary_masks_are_binarised_as_nonzero(tmp_path, values, mode):
    """VisA label masks (small values), soft/antialiased masks and palette masks: > 0 is defect, stored 0/255."""
    src = tmp_path / "src"
    c = make_class(src)
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[10:14, 10:30] = values[1]
    m[20:22, 5:9] = values[2]
    m[30, 30] = values[3]
    path = c / "ground_truth" / "crack" / "000_mask.png"
    if mode == "P":
        im = Image.fromarray(m, mode="L").convert("P")  # palette mask: indices are the label values
        im.putpalette([0, 0, 0] * 256)  # every palette colour black: only the indices tell the defect
        im.save(path)
        assert np.array_equal(np.asarray(Image.open(path)), m)
    else:
        _png(path, m)
    run_build(_cfg(src, tmp_path / "out"))
    row = next(r for r in _rows(tmp_path / "out")["test"] if r["label"] == 1)
    stored = _decode(row["mask"])
    assert set(np.unique(stored)) <= {0, 255}
    assert np.array_equal(stored > 0, m > 0)
    defect = [r for r in row["regions"] if r["kind"] == "defect"]
    assert defect and sum(r["area"] for r in defect) == pytest.approx((m > 0).mean(), abs=1e-6)


# ------------------------------------------------------------------------------------------ names, classes
def test_file_and_class_names_with_spaces_and_non_ascii(tmp_path):
    src = tmp_path / "src dir é"
    names = ["good image 01.png", "bild_ä_ö 02.png", "画像 03.png"]
    make_class(src, name="wid get ü", train_names=names)
    out = tmp_path / "out ü"
    run_build(_cfg(src, out, shots=2))
    rows = _rows(out)
    assert sorted(r["file_name"] for r in rows["train"]) == sorted(f"train/good/{n}" for n in names)
    assert {r["class_name"] for r in rows["train"]} == {"wid get ü"}
    import datasets

    classes = datasets.load_from_disk(str(out / "classes"))
    assert all(f.removeprefix("train/good/") in names for f in classes[0]["reference_images"])


def test_empty_class_is_a_clear_error_and_writes_nothing(tmp_path):
    src = tmp_path / "src"
    make_class(src)
    (src / "hollow" / "train" / "good").mkdir(parents=True)
    (src / "hollow" / "test" / "good").mkdir(parents=True)
    out = tmp_path / "out"
    with pytest.raises((DataError, BuildError)) as e:
        run_build(_cfg(src, out, classes=["hollow"]))
    assert "hollow" in str(e.value), str(e.value)
    assert not (out / "images").exists()


def test_class_asked_for_that_is_not_in_the_data_set(tmp_path):
    src = tmp_path / "src"
    make_class(src)
    with pytest.raises((DataError, BuildError)) as e:
        run_build(_cfg(src, tmp_path / "out", classes=["gadget"]))
    assert "gadget" in str(e.value) and "widget" in str(e.value), str(e.value)


# ------------------------------------------------------------------------------- caption datasets (detector)
def _classes_dataset(path: Path, **override) -> Path:
    import datasets

    row = {"schema_version": 1, "class_name": "widget", "object_name": "widget", "image_view": {"foreground": "x"},
           "foreground_view": {"count": 1}, "components": [], "caption": "a widget", "defect_states": ["crack"],
           "texts": [{"level": "image", "group": "image", "normal": ["a widget"], "abnormal": ["a broken widget"]}]}
    row.update(override)
    datasets.Dataset.from_list([row]).save_to_disk(str(path / "classes"))
    return path


@pytest.mark.parametrize("override, words", [
    ({"class_name": "gadget"}, ["'widget' is not in the caption dataset", "gadget"]),
    ({"schema_version": 2}, ["schema_version 2", "rebuild"]),
])
def test_detector_train_refuses_a_caption_dataset_without_the_class_or_of_another_schema(tmp_path, override, words):
    """Through the CLI: one line naming the caption dataset, exit 1, and no checkpoint folder."""
    from typer.testing import CliRunner

    from detector.cli import app

    src = tmp_path / "src"
    make_class(src)
    caps = _classes_dataset(tmp_path / "caps", **override)
    out = tmp_path / "ckpt"
    res = CliRunner().invoke(app, ["train", "--captions", str(caps), "--data", str(src), "--class", "widget",
                                   "--out", str(out), "--backbone", str(ROOT / "tests/assets/fgad-tiny-test.json"),
                                   "--pretrained", "none", "--epochs", "1", "--image-epochs", "1", "--shots", "1"])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "Traceback" not in text, res.output
    assert str(caps) in text and all(w in text for w in words), text
    assert not out.exists()


# ------------------------------------------------------------------------------------------ huge images
_RSS_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    n = int(sys.argv[2])
    a = np.full((n, n, 3), 230, np.uint8)
    a[n // 4: 3 * n // 4, n // 4: 3 * n // 4] = (200, 60, 40)
    def rss():  # peak RSS of this program: VmHWM (ru_maxrss would carry the forking parent's peak over exec)
        try:
            with open("/proc/self/status") as f:
                return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if sys.argv[3] == "write":
        import cv2
        cv2.imwrite(sys.argv[1], a[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
        base = rss()
    elif sys.argv[3] == "load":  # a fresh process: the peak before decoding is the interpreter and one array
        from fsad_data import load_rgb
        del a
        base = rss()
        img = load_rgb(sys.argv[1])
        assert img.shape == (n, n, 3) and tuple(img[n // 2, n // 2]) == (200, 60, 40)
    else:  # made in memory: the peak before cropping is small, so the growth is the crop's own
        from mfsc_builder.crop import crop_regions
        base = rss()
        regions = crop_regions(a, None)
        assert regions.foreground.area > 0.2
    print(rss() - base, base)
""")


def _peak_rss(tmp_path: Path, n: int, what: str) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / f"big{n}.png"), str(n), what],
                         check=False, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return int(res.stdout.split()[0])


def test_a_10000_px_image_decodes_within_its_own_size(tmp_path):
    """load_rgb of a 10000x10000 PNG (300 MB of RGB): the growth of the peak RSS stays near one copy (<= 2.5x)."""
    n = 10000
    _peak_rss(tmp_path, n, "write")
    grew = _peak_rss(tmp_path, n, "load")
    assert grew <= 2.5 * n * n * 3, f"load_rgb grew the peak RSS by {grew / 2**20:.0f} MB"


def test_crop_stage_memory_is_bounded_for_large_images(tmp_path):
    """Measured at 2500 px (fast); the budget is what a 10000 px image may cost: 2 GB -> 20 bytes per pixel."""
    n = 2500
    grew = _peak_rss(tmp_path, n, "crop")
    assert grew <= 20 * n * n, f"crop_regions grew the peak RSS by {grew / n / n:.0f} bytes per pixel"


def test_image_above_pillows_pixel_limit_says_it_is_too_large(tmp_path, monkeypatch):
    """A huge (decompression-bomb sized) image must not be called 'corrupt': the message says it is too large."""
    import PIL.Image

    from fsad_data import load_rgb

    p = _png(tmp_path / "huge.png", np.zeros((200, 300, 3), np.uint8))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 20000)  # 60000 px > 2x the limit: Pillow refuses
    with pytest.raises(DataError) as e:
        load_rgb(p)
    msg = str(e.value)
    assert str(p) in msg and "too large" in msg and "Downscale" in msg and "corrupt" not in msg, msg


# -------------------------------------------------------------------------------------------- disk full
def test_disk_full_in_fsad_atomic_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    from fsad_data.atomic import write_json_atomic

    target = tmp_path / "scores.json"
    write_json_atomic(target, {"v": 1})
    before = target.read_bytes()
    fill_disk_on_fdopen(monkeypatch)
    with pytest.raises(OSError) as e:
        write_json_atomic(target, {"v": 2, "pad": "x" * 10000})
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["scores.json"]


def test_disk_full_during_the_build_keeps_stored_parts_and_resumes_to_the_same_dataset(tmp_path, monkeypatch):
    """ENOSPC while the stage store writes a part: a BuildError saying to free space, no temp file, and the
    rerun (disk freed) ends with exactly the datasets of an uninterrupted build."""
    src = tmp_path / "src"
    make_class(src, n_train=4)
    ref = tmp_path / "ref"
    run_build(_cfg(src, ref, part_size=2))
    out = tmp_path / "out"
    calls = fill_disk_on_fdopen(monkeypatch, after=3)  # manifest + a few parts succeed, then the disk is full
    with pytest.raises(BuildError, match="free some disk space") as e:
        run_build(_cfg(src, out, part_size=2))
    assert calls[0] > 3 and str(out) in str(e.value)
    monkeypatch.undo()
    assert not _temporaries(out) and not (out / "images").exists()
    summary = run_build(_cfg(src, out, part_size=2))
    assert summary.resumed
    assert _rows(out) == _rows(ref)


def test_disk_full_while_writing_the_datasets_keeps_the_previous_ones(tmp_path, monkeypatch):
    """A rebuild whose save_to_disk hits ENOSPC: BuildError, the earlier images/ and classes/ are unchanged,
    no temporary folder is left behind."""
    import datasets

    src = tmp_path / "src"
    make_class(src)
    out = tmp_path / "out"
    run_build(_cfg(src, out))
    before = {k: v for k, v in _listing(out).items() if not k.startswith("work")}
    real = datasets.Dataset.save_to_disk

    def save_then_fail(self, path, *a, **kw):
        real(self, path, *a, **kw)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", save_then_fail)
    with pytest.raises(BuildError, match="free space") as e:
        run_build(_cfg(src, out))
    assert str(out) in str(e.value)
    monkeypatch.undo()
    after = {k: v for k, v in _listing(out).items() if not k.startswith("work")}
    assert after == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_disk_full_while_saving_a_checkpoint_is_a_clear_error_and_keeps_the_old_one(tmp_path, monkeypatch):
    import torch

    from detector.errors import DetectorError
    from detector.store.checkpoint import load_checkpoint, save_checkpoint

    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, {"w": torch.ones(3)}, {"v": 1})
    import safetensors.torch

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save", full)  # the weights are serialised, then written atomically
    with pytest.raises(DetectorError) as e:
        save_checkpoint(ckpt, {"w": torch.zeros(3)}, {"v": 2})
    assert str(ckpt) in str(e.value) and "space" in str(e.value)
    monkeypatch.undo()
    tensors, meta = load_checkpoint(ckpt)
    assert meta == {"v": 1} and torch.equal(tensors["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ckpt"]
