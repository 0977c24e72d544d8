"""``detector fit-folder``: from a folder of one's own images to a trained detector, its evaluation and report.

The engineer's path in one command, each step the project's own command with its own guarantees (resume,
ownership of its output folder, one-line errors):
1. ``mfsc build FOLDER --out OUT/captions`` (offline attribute captioner by default), run as a command: the
   detector reads captions only through the dataset (docs/ARCHITECTURE.md), never by importing the builder;
2. ``detector train`` into ``OUT/checkpoint`` with the paper's recipe; on a machine without a CUDA GPU with
   CPU-sized epochs (``CPU_EPOCHS``, said in one line; the progress lines give the time left);
3. ``detector eval`` into ``OUT/eval`` when the test split holds anomalous images (its thresholds are then what
   ``--threshold auto`` finds), else one line saying why there is no evaluation.
A killed run is resumed by the same command: the build and the training continue where they stopped, a finished
step is not redone, the evaluation is written again.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from detector.config import TrainConfig
from detector.errors import DetectorError
from detector.recipes import build_train_config, train_config_fields
from detector.run.evaluate import EvalConfig, run_eval
from detector.store.data import image_level_only
from fsad_data import DataError, read_dataset

CPU_EPOCHS = {"epochs": 4, "image_epochs": 2}  # the paper's 100 + 50 take hours on a CPU; the demo uses these too
CAPTIONS, CHECKPOINT, EVALUATION = "captions", "checkpoint", "eval"  # the sub-folders of OUT


@dataclass
class FitFolderConfig:
    """What ``detector fit-folder`` was given (None: decided from the folder and the machine)."""

    folder: Path
    out: Path
    class_name: str | None = None
    shots: int | None = None
    seed: int = 0
    layout: str = "auto"
    captioner: str | None = None  # None: mfsc build's default (the offline attribute captioner)
    recipe: str | None = None
    config: Path | None = None
    train_overrides: dict[str, Any] = field(default_factory=dict)  # the train flags given (they win)


@dataclass
class FitFolderResult:
    captions: Path
    checkpoint: Path
    evaluation: Path | None  # None when the folder has no anomalous test image
    report: Path | None
    metrics: dict[str, float] | None
    metrics_path: Path | None


def plan(cfg: FitFolderConfig, say: Callable[[str], None]) -> tuple[str, int, dict[str, Any], bool]:
    """(class, shots, train fields, evaluate?) for the folder and this machine; each decision said in one line.
    Everything that can refuse the folder does so here, before any caption or training work."""


    try:
        samples = read_dataset(cfg.folder, layout=cfg.layout, classes=[cfg.class_name] if cfg.class_name else None)
    except DataError as exc:
        raise DetectorError(str(exc)) from None
    classes = sorted({s.class_name for s in samples})
    if cfg.class_name is None and len(classes) > 1:
        raise DetectorError(f"{cfg.folder} holds {len(classes)} classes ({', '.join(classes[:8])}"
                            f"{' ...' if len(classes) > 8 else ''}); pick one with --class")
    name = cfg.class_name or classes[0]
    mine = [s for s in samples if s.class_name == name]
    train = [s for s in mine if s.split == "train" and not s.label]
    anomalous = [s for s in mine if s.split == "test" and s.label]
    if not train:
        raise DetectorError(f"{cfg.folder}: class {name!r} has no normal training image; put a few in "
                            f"{cfg.folder}/normal/ (or train/normal/)")
    image_level = image_level_only([s for s in mine if s.split == "test"])  # mixed masks: refused now
    defaults = {f.name: f.default for f in dataclass_fields(TrainConfig)}
    chosen = {**train_config_fields(cfg.recipe, cfg.config), **cfg.train_overrides}  # what the user set
    shots = cfg.shots if cfg.shots is not None else min(int(chosen.get("shots", defaults["shots"])), len(train))
    if shots > len(train):
        raise DetectorError(f"--shots {shots}: class {name!r} has {len(train)} normal training image(s); "
                            f"pass --shots {len(train)} or add images")
    fields = dict(cfg.train_overrides)
    device = str(chosen.get("device") or _auto_device())
    fields["device"] = device
    if not device.startswith("cuda"):
        unset = {k: v for k, v in CPU_EPOCHS.items() if k not in chosen}
        if unset:
            fields.update(unset)
            paper = " + ".join(str(defaults[k]) for k in CPU_EPOCHS)
            epochs = " + ".join(str(fields.get(k, chosen.get(k))) for k in CPU_EPOCHS)
            say(f"fit-folder: no CUDA GPU, so CPU-sized training: {epochs} (pixel + image) epochs instead of the "
                f"paper's {paper}, which take hours on a CPU (--epochs / --image-epochs to change); training "
                "prints the time left as it goes")
    say(f"fit-folder: class {name}, {shots} shot(s) of {len(train)} normal training images, "
        f"{len(mine) - len(train)} test images ({len(anomalous)} anomalous"
        f"{', no masks: image-level evaluation' if image_level else ''}), device {device}")
    return name, shots, fields, bool(anomalous)


def run_fit_folder(cfg: FitFolderConfig, say: Callable[[str], None] = print) -> FitFolderResult:
    """Build the captions, train, and evaluate when anomalous test images exist (see the module docstring)."""
    from detector.run.train import train  # torch: the plan (and --dry-run) runs without it

    out = Path(cfg.out)
    name, shots, fields, evaluate = plan(cfg, say)
    captions = out / CAPTIONS
    build_captions(cfg, name, shots, captions, say)
    train_cfg = build_train_config(cfg.recipe, cfg.config, **{
        **fields, "captions": str(captions), "data": str(cfg.folder), "class_name": name, "shots": shots,
        "seed": cfg.seed, "out": str(out / CHECKPOINT), "layout": cfg.layout})
    say(f"fit-folder: training into {train_cfg.out}")
    checkpoint = train(train_cfg, progress=True)
    if not evaluate:
        say(f"fit-folder: no anomalous test image in {cfg.folder}, so no evaluation and no thresholds (add some "
            "under anomaly/ to get them); predict with --threshold none or a number")
        return FitFolderResult(captions, checkpoint, None, None, None, None)

    say(f"fit-folder: evaluating on the test split into {out / EVALUATION}")
    res = run_eval(EvalConfig(checkpoint=checkpoint, data=Path(cfg.folder), out=out / EVALUATION,
                              layout=cfg.layout, class_name=name, device=train_cfg.device,
                              precision=train_cfg.precision, progress=True))
    return FitFolderResult(captions, checkpoint, out / EVALUATION, res.report_path, res.metrics, res.metrics_path)


def build_captions(cfg: FitFolderConfig, class_name: str, shots: int, captions: Path,
                   say: Callable[[str], None]) -> None:
    """``mfsc build`` for the one class, as a command (it resumes, and keeps a finished build)."""
    command = [sys.executable, "-m", "mfsc_builder.cli", "build", str(cfg.folder), "--out", str(captions),
               "--classes", class_name, "--layout", cfg.layout, "--shots", str(shots), "--seed", str(cfg.seed)]
    if cfg.captioner is not None:
        command += ["--captioner", cfg.captioner]
    say(f"fit-folder: captions ({cfg.captioner or 'the offline attribute captioner'}) into {captions}")
    sys.stdout.flush()
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise DetectorError(f"mfsc build stopped (exit {code}; its message is above); fix that and rerun the same "
                            f"command (what was finished is kept), or, after changing --shots, --seed or "
                            f"--captioner, move {captions} away or use another --out")


def _auto_device() -> str:
    import torch  # torch: the plan runs without it

    return "cuda" if torch.cuda.is_available() else "cpu"
