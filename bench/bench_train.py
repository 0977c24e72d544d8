"""Benchmark: FineGrainedAD training time against the floor of necessary compute, and peak memory.

ViT-B-16-plus-240 with random weights (speed does not depend on the weights), k shots of one class of
the synthetic data set, a hand-written MFSC record of realistic size (image, background, three
components, four attribute levels). Measured in the same process:

- floor per epoch: one forward + backward of the text encoder over the prompt set (pixel set n_pro = 1,
  image set n_pro = 3), through the same spliced, truncated encoding the training uses;
- floor once: one image-encoder pass over the shots (plus, reported apart, the 4x4-tiled pass MLSA needs);
- training: seconds per epoch of each prompt set, and the whole run (excluding the backbone's
  construction), against epochs x floor + the image passes. Target ratio <= 1.3x;
- peak resident memory of the process (target < 4 GB on CPU);
- resumable training: the cost of saving the resumable state after every epoch, and of re-encoding the
  shots (+ regions) when a run resumes, both in pixel epochs.

Prints figures only, asserts nothing.

    python bench/bench_train.py [--epochs 3] [--image-epochs 2] [--shots 4] [--threads 0]
"""
from __future__ import annotations

import argparse
import os
import resource
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


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--image-epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="repeats of each floor measurement (min taken)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import fsad_data
    from detector.model import build_prompt_sets, load_backbone_for
    from detector.train import ResumableState, TrainConfig, encode_shots, train_model

    with tempfile.TemporaryDirectory() as tmp:
        root = fsad_data.make_demo_data(Path(tmp) / "synthetic", seed=0)
        samples = fsad_data.read_dataset(root, classes=["pill_box"])
        shots = fsad_data.select_shots(samples, "pill_box", args.shots, 0)
        images = [fsad_data.load_rgb(s.image_path) for s in shots]
    names = [s.file_name for s in shots]
    cfg = TrainConfig(class_name="pill_box", backbone=args.model, pretrained="none", shots=args.shots,
                      epochs=args.epochs, image_epochs=args.image_epochs, device=args.device)

    # ---- floor ----------------------------------------------------------------------------------
    t0 = time.perf_counter()
    bb = load_backbone_for({"name": args.model, "pretrained": "none"}, args.device, "fp32")
    t_load = time.perf_counter() - t0

    def best(fn) -> float:
        times = []
        for _ in range(max(1, args.repeats)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    bb.encode(bb.preprocess(images[:1]))  # warm-up: first calls pay for allocations and kernel selection
    t_img = best(lambda: bb.encode(bb.preprocess(images)))
    t_tiled = best(lambda: encode_shots(bb, images, tiles=4)) - t_img
    pixel, image = build_prompt_sets(bb, RECORD, "pill box", None, [], cfg.prompt_config(cfg.n_pro_pixel),
                                     cfg.prompt_config(cfg.n_pro_image))

    def fwd_bwd(prompts) -> None:
        feats = prompts.encode_prompts()
        feats.sum().backward()
        prompts.zero_grad(set_to_none=True)

    fwd_bwd(pixel)  # warm-up
    t_text_px = best(lambda: fwd_bwd(pixel))
    t_text_im = best(lambda: fwd_bwd(image))
    n_px, n_im = pixel.token_ids.shape, image.token_ids.shape
    pixel = image = bb = None  # free the floor's copies before training

    # ---- training -------------------------------------------------------------------------------
    model = train_model(cfg, progress=False, shot_images=images, shot_names=names, record=RECORD)
    tm = model.meta["timing_s"]
    with tempfile.TemporaryDirectory() as tmp:  # one epoch's state save, as train() does after every epoch
        state = ResumableState(TrainConfig(**{**cfg.__dict__, "out": str(Path(tmp) / "ckpt")}), names, RECORD)
        params = list(model.pixel_prompts.parameters())
        opt = torch.optim.SGD(params, lr=0.002, momentum=0.9)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
        for q in params:
            q.grad = torch.ones_like(q)
        opt.step()
        t_save = best(lambda: state.save("pixel", model.pixel_prompts, model.image_prompts, opt, sched))
    px_epoch = tm["pixel"] / max(1, args.epochs)
    im_epoch = tm["image"] / max(1, args.image_epochs)
    train_total = tm["encode_and_regions"] + tm["pixel"] + tm["image"]
    floor_total = t_img + t_tiled + args.epochs * t_text_px + args.image_epochs * t_text_im

    print(f"model {args.model} (random weights), {args.shots} shots of pill_box, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"backbone construction                 {t_load:8.2f} s (not counted)")
    print(f"prompt rows x tokens: pixel {tuple(n_px)}, image {tuple(n_im)}")
    print(f"floor: image-encoder pass over shots  {t_img:8.2f} s")
    print(f"floor: 4x4-tiled pass (MLSA)          {t_tiled:8.2f} s")
    print(f"floor: text fwd+bwd, pixel set        {t_text_px:8.2f} s")
    print(f"floor: text fwd+bwd, image set        {t_text_im:8.2f} s")
    print(f"train: pixel epoch                    {px_epoch:8.2f} s  ratio {px_epoch / t_text_px:5.2f}x")
    print(f"train: image epoch                    {im_epoch:8.2f} s  ratio {im_epoch / t_text_im:5.2f}x")
    print(f"train: encode shots + regions         {tm['encode_and_regions']:8.2f} s  ratio "
          f"{tm['encode_and_regions'] / (t_img + t_tiled):5.2f}x")
    print(f"train: whole ({args.epochs}+{args.image_epochs} epochs)          {train_total:8.2f} s  floor "
          f"{floor_total:8.2f} s  ratio {train_total / floor_total:5.2f}x (target <= 1.3x)")
    print(f"resume: state save per epoch          {t_save * 1000:8.1f} ms ({t_save / px_epoch:.1%} of a pixel epoch)")
    print(f"resume: re-encode shots + regions     {tm['encode_and_regions']:8.2f} s  "
          f"= {tm['encode_and_regions'] / px_epoch:.1f} pixel epochs")
    print(f"peak RSS                              {_rss_mb():8.0f} MB (target < 4096 MB)")


if __name__ == "__main__":
    main()
