"""Benchmark: FineGrainedAD training time against the floor of necessary compute, and peak memory per phase.

ViT-B-16-plus-240 with random weights (speed does not depend on the weights), k shots of pill_box of the
synthetic data set, and its caption record as ``mfsc build`` writes it with the attribute captioner (built
here, seconds; ``--record small`` takes the smaller hand-written record below instead). Each part runs in
its own subprocess, so that one part's memory never counts in another's peak:

- floor: one forward + backward of the text encoder over each prompt set (pixel set n_pro = 1, image set
  n_pro = 3) through the same spliced, truncated encoding the training uses, without checkpointing; one
  image-encoder pass over the shots (plus, reported apart, the 4x4-tiled pass MLSA needs);
- training, once with text checkpointing off and once on: seconds per pixel and image epoch against the
  floor (target ratio <= 1.3x), the whole run (excluding the backbone's construction), and peak RSS per
  phase (target < 4 GB on CPU). Peaks per phase: the kernel's high-water mark VmHWM is reset (write "5" to
  /proc/self/clear_refs, Linux) when a phase starts and read when it ends; the phases are "encode" (backbone
  load, shot encoding, region weights) and each prompt set's epochs (bench wraps detector.method.fit.fit_prompt_set).
  "rss at end" is the resident size when the phase ends: far above the next phase's start would mean freed
  memory the allocator keeps;
- ``--malloc-check``: the "on" run again with glibc told to return freed memory (MALLOC_ARENA_MAX=1,
  MALLOC_MMAP_THRESHOLD_=65536, MALLOC_TRIM_THRESHOLD_=0): equal peaks mean fragmentation is not the issue;
- resumable training: the cost of saving the resumable state after every epoch, and of re-encoding the
  shots (+ regions) when a run resumes, both in pixel epochs.

Prints figures only, asserts nothing.

    python bench/bench_train.py [--epochs 3] [--image-epochs 2] [--shots 4] [--threads 0] [--record real|small]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECORD = {
    "schema_version": 1,
    "class_name": "pill_box",
    "object_name": "pill box",
    "texts": [
        {"level": "image", "group": "image",
         "normal": ["a photo of a blue pill box with three round pills on a white background",
                    "a blue rounded pill box holding a red, a yellow and a green pill"],
         "abnormal": ["a photo of a pill box with a missing pill", "a photo of a pill box with a purple spot",
                      "a photo of a broken blue pill box", "a photo of a scratched blue pill box"]},
        {"level": "background", "group": "background", "normal": ["a plain white background"],
         "abnormal": ["a white background with a stain", "a dirty white background"]},
        {"level": "component", "group": "red pill", "normal": ["a small red round pill at the top left"],
         "abnormal": ["a small red round pill at the bottom", "a small blue round pill at the top left"]},
        {"level": "component", "group": "yellow pill", "normal": ["a small yellow round pill at the center"],
         "abnormal": ["a small yellow round pill at the right", "a small purple round pill at the center"]},
        {"level": "component", "group": "green pill", "normal": ["a small green round pill at the bottom right"],
         "abnormal": ["a small green round pill at the top", "a small red round pill at the bottom right"]},
        {"level": "relation", "group": "relation", "normal": ["three pills in a diagonal line across the box"],
         "abnormal": ["two pills in a diagonal line across the box"]},
        {"level": "colour", "group": "colour", "normal": ["blue, red, yellow and green colours"],
         "abnormal": ["purple and orange colours"]},
        {"level": "texture", "group": "texture", "normal": ["a smooth texture"], "abnormal": ["a rough texture"]},
        {"level": "shape", "group": "shape", "normal": ["round shapes"], "abnormal": ["square shapes"]},
    ],
}


MALLOC_RETURN = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmHWM, VmRSS) in MB."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) / 1024.0


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def _real_record(tmp: Path, root: Path) -> dict:
    """pill_box's record as `mfsc build` writes it with the offline attribute captioner."""
    from detector.store.captions import load_class_record
    from mfsc_builder.build import BuildConfig, run_build

    run_build(BuildConfig(source=str(root), out=str(tmp / "captions"), classes=["pill_box"]))
    return load_class_record(tmp / "captions", "pill_box")


def _shots(args: argparse.Namespace, tmp: Path) -> tuple[list, list[str]]:
    import fsad_data

    root = fsad_data.make_demo_data(tmp / "synthetic", seed=0)
    samples = fsad_data.read_dataset(root, classes=["pill_box"])
    shots = fsad_data.select_shots(samples, "pill_box", args.shots, 0)
    return [fsad_data.load_rgb(s.image_path) for s in shots], [s.file_name for s in shots]


def _config(args: argparse.Namespace, mode: str):
    from detector.config import TrainConfig

    return TrainConfig(class_name="pill_box", backbone=args.model, pretrained="none", shots=args.shots,
                       epochs=args.epochs, image_epochs=args.image_epochs, device=args.device,
                       text_checkpointing=mode)


def _best(args: argparse.Namespace, fn) -> float:
    times = []
    for _ in range(max(1, args.repeats)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _floor(args: argparse.Namespace, images: list, record: dict) -> dict:
    """Seconds of the necessary compute: image passes over the shots, one text fwd+bwd per prompt set."""
    from detector.method.fit import encode_shots
    from detector.method.model import build_prompt_sets
    from detector.store.saved_detector import load_backbone_for

    cfg = _config(args, "off")
    t0 = time.perf_counter()
    bb = load_backbone_for({"name": args.model, "pretrained": "none"}, args.device, "fp32")
    t_load = time.perf_counter() - t0
    bb.encode(bb.preprocess(images[:1]))  # warm-up: first calls pay for allocations and kernel selection
    t_img = _best(args, lambda: bb.encode(bb.preprocess(images)))
    t_tiled = _best(args, lambda: encode_shots(bb, images, tiles=4)) - t_img
    pixel, image = build_prompt_sets(bb, record, "pill box", None, [], cfg.prompt_config(cfg.n_pro_pixel),
                                     cfg.prompt_config(cfg.n_pro_image))

    def fwd_bwd(prompts) -> None:
        prompts.encode_prompts().sum().backward()
        prompts.zero_grad(set_to_none=True)

    fwd_bwd(pixel)  # warm-up
    return {"load": t_load, "image_pass": t_img, "tiled_pass": t_tiled, "text_pixel": _best(args, lambda: fwd_bwd(pixel)),
            "text_image": _best(args, lambda: fwd_bwd(image)), "rows_pixel": list(pixel.token_ids.shape),
            "rows_image": list(image.token_ids.shape)}


def _train(args: argparse.Namespace, mode: str, images: list, names: list[str], record: dict) -> dict:
    """One training run with text checkpointing ``mode``: phase times, per-phase peaks, the state save cost."""
    import torch

    import detector.method.fit as fit_mod
    from detector.config import TrainConfig
    from detector.run.train import train_model
    from detector.store.train_state import ResumableState

    phases: dict[str, dict] = {}
    fit = fit_mod.fit_prompt_set

    def measured_fit(prompts, loss_fn, epochs, config, label, *rest, **kw):
        phases.setdefault("encode", {"peak_mb": _status_mb("VmHWM"), "rss_end_mb": _status_mb("VmRSS")})
        _reset_peak()
        out = fit(prompts, loss_fn, epochs, config, label, *rest, **kw)
        phases[label.split()[0]] = {"peak_mb": _status_mb("VmHWM"), "rss_end_mb": _status_mb("VmRSS"),
                                    "checkpointed": bool(prompts.checkpoint_text)}
        _reset_peak()
        return out

    cfg = _config(args, mode)
    fit_mod.fit_prompt_set = measured_fit
    _reset_peak()
    try:
        model = train_model(cfg, progress=False, shot_images=images, shot_names=names, record=record)
    finally:
        fit_mod.fit_prompt_set = fit
    with tempfile.TemporaryDirectory() as tmp:  # one epoch's state save, as train() does after every epoch
        state = ResumableState(TrainConfig(**{**cfg.__dict__, "out": str(Path(tmp) / "ckpt")}), names, record)
        params = list(model.pixel_prompts.parameters())
        opt = torch.optim.SGD(params, lr=0.002, momentum=0.9)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
        for q in params:
            q.grad = torch.ones_like(q)
        opt.step()
        t_save = _best(args, lambda: state.save("pixel", model.pixel_prompts, model.image_prompts, opt, sched))
    return {"timing_s": model.meta["timing_s"], "phases": phases, "state_save": t_save}


def _child(args: argparse.Namespace) -> None:
    """One part of the benchmark in this process; prints its figures as one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    record = json.loads(Path(args.record_file).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        images, names = _shots(args, Path(tmp))
    if args.child == "floor":
        out = _floor(args, images, record)
    else:
        out = _train(args, args.child.split("+")[0], images, names, record)
    out["threads"] = torch.get_num_threads()
    print(json.dumps(out))


def _run_child(args: argparse.Namespace, part: str, record_file: Path) -> dict:
    env = {**os.environ, **(MALLOC_RETURN if part.endswith("+malloc") else {})}
    cmd = [sys.executable, __file__, "--child", part, "--record-file", str(record_file)]
    for name in ("model", "shots", "epochs", "image_epochs", "repeats", "threads", "device"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    res = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"bench part {part} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _report(args: argparse.Namespace, floor: dict, runs: dict[str, dict]) -> None:
    print(f"model {args.model} (random weights), {args.shots} shots of pill_box, record {args.record}, "
          f"device {args.device}, torch threads {floor['threads']}")
    print(f"backbone construction                 {floor['load']:8.2f} s (not counted)")
    print(f"prompt rows x tokens: pixel {tuple(floor['rows_pixel'])}, image {tuple(floor['rows_image'])}")
    print(f"floor: image-encoder pass over shots  {floor['image_pass']:8.2f} s")
    print(f"floor: 4x4-tiled pass (MLSA)          {floor['tiled_pass']:8.2f} s")
    print(f"floor: text fwd+bwd, pixel set        {floor['text_pixel']:8.2f} s")
    print(f"floor: text fwd+bwd, image set        {floor['text_image']:8.2f} s")
    floor_total = (floor["image_pass"] + floor["tiled_pass"] + args.epochs * floor["text_pixel"]
                   + args.image_epochs * floor["text_image"])
    for part, run in runs.items():
        tm, ph = run["timing_s"], run["phases"]
        px, im = tm["pixel"] / max(1, args.epochs), tm["image"] / max(1, args.image_epochs)
        total = tm["encode_and_regions"] + tm["pixel"] + tm["image"]
        print(f"--- text checkpointing {part} (pixel set {'on' if ph['pixel']['checkpointed'] else 'off'}, "
              f"image set {'on' if ph['image']['checkpointed'] else 'off'})")
        print(f"train: pixel epoch                    {px:8.2f} s  ratio {px / floor['text_pixel']:5.2f}x")
        print(f"train: image epoch                    {im:8.2f} s  ratio {im / floor['text_image']:5.2f}x")
        print(f"train: encode shots + regions         {tm['encode_and_regions']:8.2f} s  ratio "
              f"{tm['encode_and_regions'] / (floor['image_pass'] + floor['tiled_pass']):5.2f}x")
        print(f"train: whole ({args.epochs}+{args.image_epochs} epochs)          {total:8.2f} s  floor "
              f"{floor_total:8.2f} s  ratio {total / floor_total:5.2f}x (target <= 1.3x)")
        for name in ("encode", "pixel", "image"):
            print(f"peak RSS {name:<6}                       {ph[name]['peak_mb']:8.0f} MB  rss at end "
                  f"{ph[name]['rss_end_mb']:6.0f} MB (target < 4096 MB)")
        print(f"resume: state save per epoch          {run['state_save'] * 1000:8.1f} ms "
              f"({run['state_save'] / px:.1%} of a pixel epoch)")
        print(f"resume: re-encode shots + regions     {tm['encode_and_regions']:8.2f} s  "
              f"= {tm['encode_and_regions'] / px:.1f} pixel epochs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--image-epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="repeats of each floor measurement (min taken)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--record", choices=("real", "small"), default="real",
                    help="caption record: mfsc build's for pill_box (real) or the hand-written one (small)")
    ap.add_argument("--malloc-check", action="store_true", help="also run 'on' with glibc returning freed memory")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--record-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if args.child:
        _child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.record == "real":
            import fsad_data

            record = _real_record(tmp, fsad_data.make_demo_data(tmp / "synthetic", seed=0))
        else:
            record = RECORD
        record_file = tmp / "record.json"
        record_file.write_text(json.dumps(record))
        floor = _run_child(args, "floor", record_file)
        parts = ["off", "on"] + (["on+malloc"] if args.malloc_check else [])
        runs = {part: _run_child(args, part, record_file) for part in parts}
    _report(args, floor, runs)


if __name__ == "__main__":
    main()
