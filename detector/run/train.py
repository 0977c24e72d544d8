"""Training FineGrainedAD for one class from files: the file-level entry points (the settings: ``detector.config``).

``train`` (the ``detector train`` command) and ``train_and_save`` (each benchmark cell), through ``train_model``:
1. shots: ``detector.store.data`` (normal train images, by sorted file name; a shots file wins);
2. caption record: ``detector.store.captions.load_class_record`` (the PromptAD baseline uses class-name
   prompts and no record);
3. the frozen backbone: ``detector.store.saved_detector.load_backbone_for`` (an open_clip name or JSON config, weights tag);
4. ``detector.method.fit.fit``: the method's training on those tensors (encoding, MLSA regions, both prompt sets);
5. the checkpoint: written only at the end, atomically, so a Ctrl-C leaves no half checkpoint.

Interruptible and resumable: after every epoch the state is saved in ``<out>.partial/``
(``detector.store.train_state``); rerunning the same command continues from there, and the folder goes when the
checkpoint is written. A Ctrl-C prints one line saying what was kept.

The method's options (``tau`` = CLIP's stored log-space logit scale by default, as the public code, V-V
blocks, loss forms, ...) are read in ``detector.method.options``; docs/FIDELITY.md lists them; ``detector.recipes``
builds a TrainConfig from a recipe, a config file and flags.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console

from detector.config import TrainConfig
from detector.errors import DetectorError
from detector.method.fit import fit
from detector.run.outputs import epoch_bars
from detector.store import captions, data
from detector.store.checkpoint import CHECKPOINT_OUTPUT
from detector.store.files import check_replaceable, output_lock
from detector.store.model_card import CARD_FILE, write_card
from detector.store.saved_detector import load_backbone_for, load_detector, save_detector
from detector.store.train_state import (
    ResumableState,
    describe_partial,
    discard_state,
    finished_checkpoint,
    image_digests,
    run_fingerprint,
)
from fsad_data import readable_name

if TYPE_CHECKING:
    from detector.method.model import FineGrainedAD

def loss_line(label: str, history: list[float]) -> str:
    """One line that shows a prompt set's loss going down, e.g. 'pixel prompts: loss 2.31 -> 0.87 over 100 epochs'."""
    if not history:
        return f"{label}: no epochs"
    return f"{label}: loss {history[0]:.4g} -> {history[-1]:.4g} over {len(history)} epochs"


def load_shots(config: TrainConfig) -> tuple[list[np.ndarray], list[str]]:
    """The shot images (RGB uint8) and their file names (``detector.store.data``: by sorted file name or a shots file)."""
    if not config.data:
        raise DetectorError("no data root: pass --data ROOT (the data set folder)")
    if not config.class_name:
        raise DetectorError("no class: pass --class NAME")
    samples = data.class_samples(config.data, config.class_name, layout=config.layout)
    if config.on_error == "skip":  # only the shot candidates (normal train images) are decoded to check them
        candidates = [s for s in samples if s.split == "train" and int(s.label) == 0]
        good, skipped = data.readable(candidates, "skip")
        for k in skipped:
            print(f"skipped {k['path']}: {k['error']}", file=sys.stderr, flush=True)
        left_out = {s.id for s in candidates} - {s.id for s in good}
        samples = [s for s in samples if s.id not in left_out]
    shots = data.select_class_shots(samples, config.class_name, int(config.shots), int(config.seed),
                                    shots_file=config.shots_file)
    if config.baseline != "promptad" and config.captions:  # the shots are the files the captions were built from
        captions.check_shot_files(config.captions, config.class_name, shots)
    return data.load_images(shots), [s.file_name for s in shots]


def caption_record(config: TrainConfig) -> dict | None:
    """The class's MFSC caption record; None for the PromptAD baseline (class-name prompts)."""
    if config.baseline == "promptad":
        return None
    if not config.captions:
        raise DetectorError("no caption dataset: pass --captions DIR_OR_HUB_ID (an `mfsc build` output), "
                            "or --baseline promptad for class-name-only prompts")
    return captions.load_class_record(config.captions, config.class_name)


def train_model(config: TrainConfig, progress: bool = True, shot_images: list[np.ndarray] | None = None,
                shot_names: list[str] | None = None, record: dict | None = None,
                resume: bool = False) -> FineGrainedAD:
    """Train and return the in-memory FineGrainedAD (``train`` saves it). Tests may pass images/record directly.

    ``resume``: save the resumable state after every epoch in ``<out>.partial/`` and continue from it
    when it is there (``train`` does; the caller removes the folder once the checkpoint is written).
    """

    t0 = time.perf_counter()
    if shot_images is None:
        shot_images, shot_names = load_shots(config)
    if config.baseline == "promptad":
        record = None
    elif record is None:
        record = caption_record(config)
    digests = image_digests(shot_images)
    fingerprint = run_fingerprint(config, shot_names, record, digests)  # once: the state and the meta carry it
    state = ResumableState(config, shot_names, record, digests, fingerprint) if resume else None
    object_name = str((record or {}).get("object_name") or readable_name(config.class_name))
    bb_meta = {"name": config.backbone, "pretrained": config.pretrained, "tap_layers": config.taps,
               "vv_blocks": config.vv_blocks, "init_seed": 0}
    backbone = load_backbone_for(bb_meta, config.device, config.precision)
    # "name" stays as given (an open_clip name or a JSON config path); "model_name" is open_clip's name
    bb_meta.update(model_name=backbone.name, pretrained=backbone.pretrained, tap_layers=list(backbone.tap_layers),
                   weights_sha256=backbone.weights_sha256, vv_blocks=backbone.vv_blocks)
    t_load = time.perf_counter() - t0
    with epoch_bars(progress) as report:
        model = fit(config, backbone, shot_images, record, object_name, state=state, report=report)
    history = model.meta["history"]
    if progress:
        console = Console(highlight=False)
        console.print(loss_line("pixel prompts", history["pixel_loss"]))
        console.print(loss_line("image prompts", history["image_loss"]))
    model.meta.update(class_name=config.class_name, shots=list(shot_names or []), backbone=bb_meta,
                      run_fingerprint=fingerprint)
    model.meta["timing_s"] = {"load": t_load, **model.meta["timing_s"]}
    return model


def train(config: TrainConfig, progress: bool = True) -> Path:
    """Train one class and write its checkpoint folder (atomically, only at the end); returns the folder.

    Resumable: a rerun after an interruption continues from ``<out>.partial/`` (removed once the checkpoint
    is written); a Ctrl-C prints one line saying so.
    """

    try:
        train_and_save(config, progress=progress, log=print if progress else None)
    except KeyboardInterrupt:
        print(describe_partial(config), file=sys.stderr, flush=True)
        raise
    return Path(config.out)


def train_and_save(config: TrainConfig, progress: bool = True, log: Callable[[str], None] | None = None, *,
                   shots: tuple[list[np.ndarray], list[str]] | None = None, record: dict | None = None
                   ) -> FineGrainedAD:
    """Resumable training, then the checkpoint, then the resumable state removed; returns the in-memory model.

    Before any work: an ``--out`` that is not this tool's checkpoint is refused, and the folder is locked
    against a second run. A checkpoint of exactly this run already in place (a rerun, or a run killed while
    removing its state) wins: it is loaded, the leftover state removed, nothing trained (``--restart`` retrains).
    ``shots`` (images, file names): read already by the caller (the anomalib model draws them from its
    datamodule), with ``record`` its caption record (None: none); else both are read as ``config`` names them.
    """

    out = Path(config.out)
    check_replaceable(out, CHECKPOINT_OUTPUT)
    with output_lock(out, "detector train"):
        check_replaceable(out, CHECKPOINT_OUTPUT)  # again under the lock: another run may have written it meanwhile
        if shots is None:
            shot_images, shot_names = load_shots(config)
            record = caption_record(config)
        else:
            shot_images, shot_names = shots
        if not config.restart and finished_checkpoint(
                config, run_fingerprint(config, shot_names, record, image_digests(shot_images))):

            discard_state(config)
            _complete_card(out)
            if log is not None:
                log(f"{out} already holds the checkpoint of this run (same settings, shots and captions); nothing "
                    "to train (--restart retrains)")
            return load_detector(out, device=config.device, precision=config.precision)
        model = train_model(config, progress=progress, shot_images=shot_images, shot_names=shot_names,
                            record=record, resume=True)
        save_detector(model, out)
        discard_state(config)
    return model


def _complete_card(out: Path) -> None:
    """A run killed between writing its checkpoint and the checkpoint's README.md: the rerun writes the card (and
    drops the temporary file a kill inside that write left), so it ends as an uninterrupted run."""

    for tmp in out.glob(f".{CARD_FILE}.*.tmp"):
        tmp.unlink(missing_ok=True)
    if not (out / CARD_FILE).is_file():
        write_card(out)
