"""The resumable state of one training run, kept in ``<out>.partial/`` beside the checkpoint folder.

After every epoch the state is saved atomically (``detector.store.checkpoint``'s format); rerunning the same command
continues from there and writes a checkpoint bit-identical to an uninterrupted run, whatever instant the kill hit
(what a kill inside a save leaves is recognised as ours and undone, an old state moved aside put back); ``detector.run.train``
removes the folder once the checkpoint is written (renamed aside first, so a kill never leaves half of it).
A state written by another config, other shots or another caption record is refused (its fingerprint differs),
never silently mixed in; the shots count by their pixels, so an image edited between a kill and the rerun is
not served from cached features. The fingerprint is also recorded in the checkpoint: a rerun of a finished run
finds its checkpoint and does nothing (whatever a killed clean-up left is removed). ``detector.store.files.output_lock``
keeps two runs out of one ``--out``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from detector.errors import DetectorError
from detector.store.checkpoint import (
    CONFIG_FILE,
    checkpoint_meta,
    is_checkpoint_folder,
    load_checkpoint,
    save_checkpoint,
)
from fsad_data.atomic import clean_orphans, discard_folder, leftovers, restore_set_aside

if TYPE_CHECKING:
    from detector.config import TrainConfig

# where and how a run is written, and how its memory is spent: left out of the resume fingerprint
RUN_ONLY_FIELDS = ("out", "restart", "text_checkpointing", "on_error")  # on_error: its effect is in the shots
PHASES = ("pixel", "image")
STATE, FEATURES = "state", "features"  # the two checkpoint folders inside <out>.partial/


def partial_dir(config: TrainConfig) -> Path:
    """Where a run keeps its resumable state: ``<out>.partial`` beside the checkpoint folder."""
    out = Path(config.out)
    return out.with_name(out.name + ".partial")


def image_digests(images: list[Any] | None) -> list[str]:
    """SHA-256 of each shot's decoded pixels (shape included): what training sees, whatever the file format."""
    out = []
    for img in images or []:
        h = hashlib.sha256(repr((tuple(img.shape), str(img.dtype))).encode())
        h.update(img.tobytes())
        out.append(h.hexdigest())
    return out


def run_fingerprint(config: TrainConfig, shot_names: list[str] | None, record: dict | None,
                    shot_digests: list[str] | None = None) -> str:
    """SHA-256 of what the trained tensors depend on: the TrainConfig (minus out/restart), the shots' names and
    pixels, the caption record."""
    cfg = {k: v for k, v in asdict(config).items() if k not in RUN_ONLY_FIELDS}
    blob = json.dumps({"config": cfg, "shots": list(shot_names or []), "shot_pixels": list(shot_digests or []),
                       "record": record}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def finished_checkpoint(config: TrainConfig, fingerprint: str) -> bool:
    """Whether ``--out`` already holds the checkpoint of exactly this run (same fingerprint)."""
    out = Path(config.out)
    if not is_checkpoint_folder(out):
        return False
    try:
        return checkpoint_meta(out).get("run_fingerprint") == fingerprint
    except DetectorError:
        return False


def discard_state(config: TrainConfig) -> None:
    """Remove ``<out>.partial`` (renamed aside first: never seen half-deleted) and orphans of killed runs."""
    d = partial_dir(config)
    _check_own_state(d)
    discard_folder(d)
    clean_orphans(d)


def _check_own_state(d: Path) -> None:
    """``<out>.partial`` is used or removed only when it holds nothing but this tool's state folders and what a
    run killed while replacing them left (``.state.old-PID-*``, ``.features.tmp-PID-*``): a kill at any instant
    resumes with the same command, a user's file is never touched."""
    if d.exists() and (not d.is_dir() or any(p.name not in _own_names(d) for p in d.iterdir())):
        raise DetectorError(f"{d} holds files that are not a training state of `detector train`; it is never "
                            "deleted: move it away or choose another --out")


def _own_names(d: Path) -> set[str]:
    return {STATE, FEATURES, *(p.name for name in (STATE, FEATURES) for p in leftovers(d / name))}


def _recover(d: Path) -> None:
    """Undo what a killed save left: the old state put back if it was moved aside without the new one moved
    in (one epoch lost, not all), then the temporary and set-aside folders of dead runs removed."""
    restore_set_aside(d / STATE)
    for name in (STATE, FEATURES):
        clean_orphans(d / name)


def optim_state(opt: Optimizer, sched: LRScheduler) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """SGD + cosine schedule state as (tensors, JSON): momentum buffers by parameter index, the rest plain."""
    sd = opt.state_dict()
    tensors = {f"optim.{i}.momentum_buffer": s["momentum_buffer"] for i, s in sd["state"].items()
               if s.get("momentum_buffer") is not None}
    return tensors, {"param_groups": sd["param_groups"], "scheduler": sched.state_dict()}


class ResumableState:
    """The resumable state of one training run, kept in ``<out>.partial/`` (``detector.store.checkpoint``'s atomic format).

    ``features/``, written once before the first epoch: the shots' frozen features and region weights.
    ``state/``, replaced after every epoch (under 100 kB, milliseconds): both prompt sets' parameters,
    the running phase's SGD momentum buffers, learning rates and cosine schedule, and the loss history of
    both phases (its lengths are the epoch counters). Both carry the run's fingerprint. Training draws no
    random numbers after the seeded prompt initialisation (no shuffling, no dropout), so there is no RNG
    state to keep: a resumed run rebuilds the same initial prompts, loads this, and continues bit-identically.
    """

    def __init__(self, config: TrainConfig, shot_names: list[str] | None, record: dict | None,
                 shot_digests: list[str] | None = None, fingerprint: str | None = None) -> None:
        """``fingerprint``: the run's ``run_fingerprint`` when the caller has it already (else computed here)."""
        self.dir = partial_dir(config)
        self.shots = dict(zip(shot_names or [], shot_digests or [], strict=False))
        self.fingerprint = fingerprint or run_fingerprint(config, shot_names, record, shot_digests)
        self.history: dict[str, list[float]] = {"pixel_loss": [], "image_loss": []}
        self.phase = PHASES[0]
        self.features: dict[str, Tensor] | None = None
        self.tensors: dict[str, Tensor] = {}
        self.optim: dict[str, Any] | None = None
        _check_own_state(self.dir)
        _recover(self.dir)
        clean_orphans(self.dir)
        if config.restart:
            discard_folder(self.dir)
        elif self.dir.exists():
            self._load()

    def _read(self, name: str) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        d = self.dir / name
        if not d.exists():
            return None
        fix = f"delete {self.dir} or pass --restart to train from the first epoch"
        try:
            tensors, meta = load_checkpoint(d)
        except DetectorError as e:
            raise DetectorError(f"resumable training state {d} is unreadable ({e}); {fix}") from e
        if meta.get("fingerprint") != self.fingerprint:
            saved = meta.get("shot_pixels") if isinstance(meta.get("shot_pixels"), dict) else {}
            changed = [n for n, h in self.shots.items() if n in saved and saved[n] != h]
            if changed:
                raise DetectorError(f"shot image {changed[0]} changed since the state in {self.dir} was saved; "
                                    "pass --restart to train from the first epoch on the new image (or restore "
                                    "the file)")
            raise DetectorError(f"{self.dir} holds the state of a training run with another config, shots or "
                                f"caption record; {fix}")
        return tensors, meta

    def _load(self) -> None:
        features = self._read(FEATURES)
        self.features = features[0] if features is not None else None
        got = self._read(STATE)
        if got is None:
            return
        tensors, meta = got
        history, phase = meta.get("history"), meta.get("phase")
        if phase not in PHASES or not isinstance(history, dict) or not all(
                isinstance(history.get(k), list) for k in self.history) or self.features is None:
            raise DetectorError(f"{self.dir / STATE}: phase, history or features missing; delete {self.dir} or "
                                "pass --restart to train from the first epoch")
        self.history = {k: [float(v) for v in history[k]] for k in self.history}
        self.phase = phase
        self.tensors = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
        buffers = {k.split(".")[1]: v for k, v in tensors.items() if k.startswith("optim.")}
        if isinstance(meta.get("optim"), dict):
            self.optim = {**meta["optim"], "buffers": buffers}

    def load_prompts(self, pixel: nn.Module, image: nn.Module) -> None:
        """Put the saved prompt parameters into freshly built prompt sets (nothing to do on a fresh run)."""
        if not self.tensors:
            return
        for prefix, mod in (("pixel_prompts.", pixel), ("image_prompts.", image)):
            state = {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}
            try:
                mod.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise DetectorError(f"{self.dir}: prompt tensors do not fit ({str(e).splitlines()[0]}); delete it "
                                    "or pass --restart") from e

    def optim_for(self, phase: str) -> dict[str, Any] | None:
        """The saved optimiser state of ``phase``, if the run stopped inside it."""
        return self.optim if self.phase == phase else None

    def save_features(self, tensors: dict[str, Tensor]) -> None:
        """Keep the shots' features and region weights (once, before the first epoch)."""
        save_checkpoint(self.dir / FEATURES, {k: v.detach().cpu().clone() for k, v in tensors.items()},
                        {"fingerprint": self.fingerprint, "shot_pixels": self.shots})

    def save(self, phase: str, pixel: nn.Module, image: nn.Module, opt: Optimizer, sched: LRScheduler) -> None:
        """Atomically replace the saved state with the current one (called after every epoch)."""
        buffers, optim = optim_state(opt, sched)
        tensors = {**{f"pixel_prompts.{k}": v for k, v in pixel.state_dict().items()},
                   **{f"image_prompts.{k}": v for k, v in image.state_dict().items()}, **buffers}
        meta = {"fingerprint": self.fingerprint, "shot_pixels": self.shots, "phase": phase, "history": self.history,
                "optim": optim}
        save_checkpoint(self.dir / STATE, {k: v.detach().cpu().clone() for k, v in tensors.items()}, meta)


def describe_partial(config: TrainConfig) -> str:
    """One line for a Ctrl-C: what was saved and how to resume (reads JSON only: no torch needed)."""
    d = partial_dir(config)
    try:
        meta = json.loads((d / STATE / CONFIG_FILE).read_text(encoding="utf-8"))["meta"]
        done = {k: len(v) for k, v in meta["history"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        if (d / FEATURES).is_dir():
            return (f"interrupted before the first epoch ended; the shot features are kept in {d}: rerun the same "
                    "command to resume (--restart starts over)")
        return "interrupted before any state was saved; rerun the same command to start again"
    return (f"interrupted after {done.get('pixel_loss', 0)}/{config.epochs} pixel and "
            f"{done.get('image_loss', 0)}/{config.image_epochs} image epochs; state saved in {d}: rerun the same "
            "command to resume (--restart starts over)")
