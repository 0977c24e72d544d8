"""Speed of the per-image analysis on one core: stage 1 (`crop.crop_regions`) plus the attribute captioner's
`fields`, this tree against a baseline commit loaded from git into the same process, image by image in
alternating order; and the start-up cost of the CLIP token counter against open_clip's tokenizer.

The images are the synthetic demo set at its own 256 x 256 and upscaled to 1024 x 1024 (bicubic; masks
nearest), each flat (as drawn), noisy (Gaussian noise, sigma 8, seeded) and woven (a fine sine weave added),
so a speed-up is not one for flat images only; and a shaded stripy metal plate at 1024 x 1024 that the
colours cut into some 50 pieces, for the shading merge's cost with many parts (`stripy_plate`). For each set
the bench also says on how many images the two codes' crop results and caption fields differ (for a speed
change they should not, see tests/test_analysis_reference.py; against a base before a rule change, such as
81706e7 before issue 27's rules, they may). Prints figures; asserts nothing.

    PYTHONPATH=. python bench/bench_analysis.py [--base 1f0c3f6] [--limit 60] [--sizes 256,1024] [--plates 3]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: what one build worker gets

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BASE = "1f0c3f6"  # main before issue 12 part 3's analysis work
TOKEN_TEXT = "a photo of a red pill box with a crack, made of a smooth white rectangular part"


def load_base(rev: str, folder: Path) -> tuple[types.ModuleType, types.ModuleType] | None:
    """crop.py and captioners/attributes.py of commit `rev` (and its shading.py, where it has one), written to
    `folder` and imported as the modules `_base_crop` and `_base_attributes` (the base captioner reads the base
    crop module, which reads `_base_shading`); None without git or without that commit."""
    mods = []
    for rel, name in (("mfsc_builder/shading.py", "_base_shading"), ("mfsc_builder/crop.py", "_base_crop"),
                      ("mfsc_builder/captioners/attributes.py", "_base_attributes")):
        try:
            src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{rel}"], capture_output=True,
                                 text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            if name == "_base_shading":
                continue  # before issue 27
            return None
        path = folder / f"{name}.py"
        path.write_text(src.replace("from mfsc_builder.crop import", "from _base_crop import")
                        .replace("from mfsc_builder.shading import", "from _base_shading import"))
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses and the captioner look their module up
        spec.loader.exec_module(mod)
        mods.append(mod)
    return mods[-2], mods[-1]


def stripy_plate(size: int, seed: int) -> np.ndarray:
    """A shaded, stripy metal plate on a dark background: bright and dark stripes (period 110 px at 1024)
    under light that varies across and down the plate, so the colour clustering cuts it into some 50 pieces
    that the shading merge weighs pair by pair (its worst case in pieces)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) * (1024.0 / size)
    img = np.full((size, size, 3), (35, 40, 60), np.float32)
    plate = (np.abs(xx - 512) < 430) & (np.abs(yy - 512) < 430)
    v = 165 + 45 * np.sign(np.sin(2 * np.pi * (yy + 7 * seed) / 110)) + 40 * np.sin(2 * np.pi * xx / 1024 * 1.3) \
        - 30 * (yy / 1024)
    img[plate] = v[plate][:, None]
    img += rng.normal(0, 2, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def image_sets(demo: Path, size: int, variant: str) -> list[tuple[str, np.ndarray, np.ndarray | None, str]]:
    """(class, RGB image, defect mask or None, defect type) for every demo image at `size`, as drawn
    ("flat"), with Gaussian noise of sigma 8 ("noisy") or with a fine woven pattern added ("woven")."""
    from fsad_data import load_mask, load_rgb

    rng = np.random.default_rng(0)
    out = []
    for cls in sorted(p.name for p in demo.iterdir() if p.is_dir()):
        for path in sorted((demo / cls).glob("*/*/*.png")):
            if path.parts[-3] == "ground_truth":
                continue
            img = load_rgb(path)
            mpath = demo / cls / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
            mask = load_mask(mpath, size=img.shape[1::-1]) if mpath.exists() else None
            if size != img.shape[0]:
                img = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
                if mask is not None:
                    mask = cv2.resize(mask.view(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
            if variant == "noisy":
                img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            elif variant == "woven":
                yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
                weave = 14 * np.sin(xx / 1.7) * np.sin(yy / 1.7) + rng.normal(0, 2, yy.shape)
                img = np.clip(img + weave[..., None], 0, 255).astype(np.uint8)
            out.append((cls, img, mask, path.parent.name if mask is not None else ""))
    return out


def run_one(crop, attrs, item, textured: bool) -> tuple[float, float, dict, dict]:
    from mfsc_builder.captioners.base import CaptionRequest

    cls, img, mask, defect = item
    t0 = time.perf_counter()
    regions = crop.crop_regions(img, mask, crop.CropConfig(textured=textured))
    t1 = time.perf_counter()
    fields = attrs.AttributeCaptioner().fields(CaptionRequest("x", cls, img, regions, mask is not None, defect))
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, regions.to_dict(), fields.to_dict()


def compare(codes: dict[str, tuple], items: list, label: str) -> None:
    """Seconds per image of each code on `items`, alternating which runs first; differences of the outputs."""
    names = list(codes)
    textured = {}
    for name, (crop, _) in codes.items():  # the class decision as the build takes it (not timed)
        for cls in {it[0] for it in items}:
            refs = [it[1] for it in items if it[0] == cls and it[2] is None][:8]
            textured[name, cls] = crop.class_is_textured(cls, refs)
    secs = {n: [0.0, 0.0] for n in names}
    outs: dict[str, list] = {n: [] for n in names}
    for i, item in enumerate(items):
        for name in names if i % 2 == 0 else names[::-1]:
            crop, attrs = codes[name]
            c, f, r, d = run_one(crop, attrs, item, textured[name, item[0]])
            secs[name][0] += c
            secs[name][1] += f
            outs[name].append((r, d))
    n = len(items)
    ref = names[0]
    for name in names:
        c, f = secs[name][0] / n, secs[name][1] / n
        line = f"  {label:18s} {name:6s} crop {c:7.4f}  caption {f:7.4f}  total {c + f:7.4f} s/image"
        if name != ref:
            tb, tn = sum(secs[ref]), sum(secs[name])
            crops = sum(a[0] != b[0] for a, b in zip(outs[ref], outs[name], strict=True))
            fields = sum(a[1] != b[1] for a, b in zip(outs[ref], outs[name], strict=True))
            line += (f"   x{tb / tn:5.2f} faster (crop x{secs[ref][0] / secs[name][0]:.2f}, caption "
                     f"x{secs[ref][1] / secs[name][1]:.2f}); crop differs on {crops}/{n}, fields on {fields}/{n}")
        print(line, flush=True)


def token_counter_start() -> None:
    """Seconds to import and make the first count, each in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    codes = {"ours (fill.token_length)":
             f"from mfsc_builder.fill import token_length; token_length({TOKEN_TEXT!r})",
             "ours (clip_tokens alone)":
             f"from mfsc_builder.clip_tokens import counter; counter().count({TOKEN_TEXT!r})",
             "open_clip tokenizer":
             f"import open_clip; open_clip.get_tokenizer('ViT-B-16-plus-240').encode({TOKEN_TEXT!r})"}
    took = {}
    for name, code in codes.items():
        timed = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
        runs = [float(subprocess.run([sys.executable, "-c", timed], env=env, capture_output=True, text=True,
                                     check=True).stdout.split()[-1]) for _ in range(3)]
        took[name] = min(runs)
        print(f"  {name:26s} import + first count {took[name]:6.3f} s (best of 3, warm disk cache)")
    ours, alone, theirs = took.values()
    print(f"  token counting starts x{theirs / ours:.0f} faster than open_clip's tokenizer "
          f"(the counter alone x{theirs / alone:.0f})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=BASE, help="baseline commit (default %(default)s)")
    ap.add_argument("--limit", type=int, default=60, help="images per set (default all 60)")
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--variants", default="flat,noisy,woven", help="image variants (default %(default)s)")
    ap.add_argument("--plates", type=int, default=3, help="images of the many-piece stripy plate (default 3)")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    from fsad_data import make_demo_data
    from mfsc_builder import crop
    from mfsc_builder.captioners import attributes

    codes: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = load_base(args.base, Path(tmp))
        if base is None:
            print(f"no git or no commit {args.base} here: printing this tree's figures only")
        else:
            codes["base"] = base
        codes["ours"] = (crop, attributes)
        print(f"per-image analysis, one core (cv2 threads 1), base = {args.base}")
        demo = make_demo_data(Path(tmp) / "demo", seed=0)
        for size in (int(s) for s in args.sizes.split(",")):
            for variant in args.variants.split(","):
                every = image_sets(demo, size, variant)
                items = every[:: max(1, len(every) // args.limit)][: args.limit]  # all classes
                compare(codes, items, f"{size}² {variant} ({len(items)})")
        if args.plates:
            plates = [("plate", stripy_plate(1024, seed), None, "") for seed in range(args.plates)]
            compare(codes, plates, f"1024² plate ({len(plates)})")
    print("CLIP token counter")
    token_counter_start()


if __name__ == "__main__":
    main()
