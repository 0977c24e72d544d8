"""FineGrainedAD as an anomalib 2.x model: ``anomalib fit --model detector.integrations.anomalib.FineGrainedAD``.

Cut as anomalib cuts its own models (``models/image/winclip``, ``padim``): a torch model (``FineGrainedADModel``:
images in, anomalib's ``InferenceBatch`` out) and a thin ``AnomalibModule`` (``FineGrainedAD``: where the shots,
captions and settings come from, and anomalib's pre/post-processing). Neither restates the method: training is
``detector.run.train.train_model`` (``detector.method.fit.fit`` inside), the checkpoint is
``detector.store.saved_detector``, scoring is ``detector.method.model.FineGrainedAD.predict``, the settings are a
``TrainConfig`` built by ``detector.recipes`` (``recipe="paper"`` by default, a config file, single settings).

- Few-shot as WinCLIP: ``learning_type`` is ``FEW_SHOT``, so ``Engine.fit`` runs anomalib's validation only and
  training happens in ``setup``. The ``k_shot`` shots are drawn from the datamodule's train split (or from
  ``few_shot_source``, a folder of normal images, or a PromptAD/WinCLIP ``shots_file``) by the project's one
  rule (``fsad_data.select_shots``: seeded, by file name relative to the class folder), so a seed names the
  same shots as ``detector train --shots K --seed S`` on the same folder. They are read from their files by
  the project's reader (full resolution, as ``detector train``), not from the resized batches.
- Captions: an MFSC dataset (``captions``: a ``mfsc build`` folder or a Hub id) read by
  ``detector.store.captions``; none given, they are built from the shots by ``mfsc build`` with the offline
  attribute captioner (``detector.run.fit_folder.build_captions``), said in one line. ``baseline="promptad"``
  needs none.
- The trained detector is written as the project's checkpoint folder (safetensors + JSON) in
  ``out`` (default ``<default_root_dir>/finegrained_ad``): ``detector eval/predict/export`` read it, a rerun
  with the same shots, captions and settings loads it instead of training, and ``checkpoint=DIR`` loads a
  trained one. The Lightning checkpoint holds no tensor of it.
- ``Engine.test`` / ``predict``: maps at the size the pre-processor gives (``resolution``, default 256: a
  Resize only; the backbone's own resize and normalisation run inside, as in ``detector eval``), scores and maps
  as ``detector eval`` computes them. The default post-processor keeps anomalib's adaptive thresholds
  (``pred_label``, ``pred_mask``) but not its min-max normalisation: the scores and maps are already in
  [0, 1], and the normalisation clips what lies outside the validation range, which would change the pixel
  AUROC against ``detector eval``.
- Export: ``engine.export(..., ExportType.ONNX | OPENVINO)`` traces the same graph as ``detector export``
  (``detector.deploy.export.ExportGraph``) behind a torch resize to the backbone's input size (PIL's resize in
  the PyTorch path: maps agree to a few 1e-3, not bit for bit); ``detector export`` keeps the thresholds,
  the model card and the int8 drift check.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detector.deploy.export import ExportGraph
from detector.errors import DetectorError
from detector.method.model import FineGrainedAD as MethodModel
from detector.method.scoring import BRANCHES, DEFAULT_BRANCH, MAP_RESOLUTION
from detector.recipes import build_train_config
from detector.run.fit_folder import FitFolderConfig, build_captions
from detector.run.train import train_and_save
from detector.store import captions as caption_store
from detector.store.data import load_images
from detector.store.saved_detector import load_detector
from fsad_data import DataError, Sample, select_shots
from fsad_data.layouts.common import list_images

ANOMALIB_MISSING = ("detector.integrations.anomalib needs anomalib 2.x: pip install 'finegrained-ad[anomalib]' "
                    "(it does not need anomalib's clip extra)")
try:
    from anomalib import LearningType
    from anomalib.data import Batch, InferenceBatch
    from anomalib.models.components import AnomalibModule
    from anomalib.post_processing import PostProcessor
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Resize
except ImportError as exc:  # only a missing anomalib gets the install line; its own broken imports stay visible
    if (exc.name or "").split(".")[0] != "anomalib":
        raise
    raise ImportError(ANOMALIB_MISSING) from None

WORK_FOLDER = "finegrained_ad"  # under the trainer's default_root_dir when ``out`` is not given
CHECKPOINT, CAPTIONS = "checkpoint", "captions"
STAGING = ".finegrained_ad-shots"  # the shots copied for the caption build (replaced by each run)


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """anomalib's float images (B, 3, H, W) in [0, 1] -> the RGB uint8 (H, W, 3) arrays the method reads.
    anomalib decodes uint8 files as x / 255, so an image it did not resize comes back byte for byte."""
    x = (images.detach().float() * 255.0).round().clamp(0, 255).to(torch.uint8)
    return list(x.permute(0, 2, 3, 1).cpu().numpy())


class FineGrainedADModel(nn.Module):
    """The torch model: a trained detector behind anomalib's batch interface.

    ``forward(images (B, 3, H, W) in [0, 1])`` -> ``InferenceBatch(pred_score (B,), anomaly_map (B, H, W))``:
    ``FineGrainedAD.predict`` at R = max(H, W) (resized to (H, W) if the input is not square). While
    ``torch.export`` traces it (anomalib's ONNX / OpenVINO export) the same scoring runs as one graph
    (``ExportGraph``) after a torch resize to the backbone's input size. The detector is kept out of the module
    tree: its tensors live in the project's checkpoint folder, not in Lightning's."""

    def __init__(self, branch: str = DEFAULT_BRANCH) -> None:
        super().__init__()
        if branch not in BRANCHES:
            raise DetectorError(f"branch {branch!r}: use one of {', '.join(BRANCHES)}")
        self.branch = branch
        self._detector: list[MethodModel] = []  # a list: not registered as a submodule

    @property
    def ready(self) -> bool:
        return bool(self._detector)

    @property
    def detector(self) -> MethodModel:
        if not self._detector:
            raise DetectorError("FineGrainedAD is not trained yet: run Engine.fit (or pass checkpoint=DIR)")
        return self._detector[0]

    def set_detector(self, detector: MethodModel) -> None:
        self._detector[:] = [detector.eval()]

    def forward(self, images: torch.Tensor) -> InferenceBatch:
        h, w = int(images.shape[-2]), int(images.shape[-1])
        r = max(h, w)
        if torch.compiler.is_exporting():
            scores, maps = self._graph(images, r)
        else:
            pred = self.detector.predict(to_uint8(images), resolution=r, branch=self.branch)
            scores, maps = torch.from_numpy(pred.scores), torch.from_numpy(pred.maps)
        if (h, w) != (r, r):
            maps = F.interpolate(maps[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        return InferenceBatch(pred_score=scores.to(images.device), anomaly_map=maps.to(images.device))

    def _graph(self, images: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The exported path: resize to the backbone's S x S in torch, then ``detector export``'s graph (which
        takes 0-255 values in (B, S, S, 3) and applies the backbone's mean and std itself)."""
        det = self.detector
        s = det.backbone.image_size
        mode = "bilinear" if det.backbone.interpolation == "bilinear" else "bicubic"
        x = F.interpolate(images.float(), size=(s, s), mode=mode, align_corners=False, antialias=True)
        graph = ExportGraph(det, resolution).to(images.device)
        if self.branch != DEFAULT_BRANCH:
            raise DetectorError(f"export scores the {DEFAULT_BRANCH} branch only (branch={self.branch!r})")
        return graph((x.clamp(0, 1) * 255.0).permute(0, 2, 3, 1))


class FineGrainedAD(AnomalibModule):
    """FineGrainedAD (fine-grained captions, few-shot) as an anomalib model.

    Args:
        class_name: the class (as the caption dataset names it); default the datamodule's category or name.
        k_shot: normal reference images (the paper: 1, 2 or 4).
        seed: picks the shots (and the prompts' initialisation); recorded in the checkpoint.
        few_shot_source: a folder of normal images to draw the shots from instead of the train split.
        shots_file: a PromptAD/WinCLIP seed file naming the shots (``detector train --shots-file``).
        captions: an MFSC caption dataset (``mfsc build`` folder or Hub id); None: built from the shots with
            the offline attribute captioner (or ``captioner``, an ``mfsc build --captioner`` value).
        recipe: ``paper`` (default), ``ours`` or a recipe file; ``config``: a TrainConfig YAML/JSON file;
            ``settings``: TrainConfig fields that win over both (e.g. ``{"tau": "exp"}``).
        backbone, pretrained, epochs, image_epochs, baseline, precision: the same TrainConfig fields, as flags.
        checkpoint: a trained detector folder (``detector train`` or an earlier run): loaded, nothing trained.
        out: where the checkpoint (and built captions) go; default ``<default_root_dir>/finegrained_ad``.
        resolution: the pre-processor's square size = the maps' size (256 as ``detector predict``; the paper
            evaluates at 400).
        branch: fused (the method), text or visual.
    """

    def __init__(
        self,
        class_name: str | None = None,
        k_shot: int = 4,
        seed: int = 0,
        few_shot_source: str | None = None,
        shots_file: str | None = None,
        captions: str | None = None,
        captioner: str | None = None,
        recipe: str | None = "paper",
        config: str | None = None,
        settings: dict[str, Any] | None = None,
        backbone: str | None = None,
        pretrained: str | None = None,
        epochs: int | None = None,
        image_epochs: int | None = None,
        baseline: str | None = None,
        precision: str | None = None,
        checkpoint: str | None = None,
        out: str | None = None,
        resolution: int = MAP_RESOLUTION,
        branch: str = DEFAULT_BRANCH,
        pre_processor: nn.Module | bool = True,
        post_processor: nn.Module | bool = True,
        evaluator: Any = True,
        visualizer: Any = True,
    ) -> None:
        if pre_processor is True:
            pre_processor = self.configure_pre_processor((int(resolution), int(resolution)))
        super().__init__(pre_processor=pre_processor, post_processor=post_processor, evaluator=evaluator,
                         visualizer=visualizer)
        self.model = FineGrainedADModel(branch)
        self.class_name, self.k_shot, self.seed = class_name, int(k_shot), int(seed)
        self.few_shot_source, self.shots_file = few_shot_source, shots_file
        self.captions, self.captioner, self.checkpoint, self.out = captions, captioner, checkpoint, out
        self.recipe, self.config_file = recipe, config
        self.train_fields = {**(settings or {}), **{k: v for k, v in {
            "backbone": backbone, "pretrained": pretrained, "epochs": epochs, "image_epochs": image_epochs,
            "baseline": baseline, "precision": precision}.items() if v is not None}}
        self.checkpoint_dir: Path | None = None  # the checkpoint folder in use, once set up

    # ---- anomalib's interface ----------------------------------------------------------------------
    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """A resize to the map size only: the backbone resizes to its input size and normalises inside, as
        ``detector eval`` does (a Normalize here would be applied twice)."""
        size = tuple(image_size) if image_size is not None else (MAP_RESOLUTION, MAP_RESOLUTION)
        return PreProcessor(transform=Resize(size, antialias=True))

    def configure_post_processor(self) -> PostProcessor:
        """anomalib's adaptive thresholds without its min-max normalisation (the module docstring says why)."""
        return PostProcessor(enable_normalization=False)

    @property
    def learning_type(self) -> LearningType:
        return LearningType.FEW_SHOT

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def configure_optimizers() -> None:
        """No Lightning optimiser: the prompts are trained by the method's own fit, in ``setup``."""
        return

    def validation_step(self, batch: Batch, *args: Any, **kwargs: Any) -> Batch:
        del args, kwargs
        return batch.update(**self.model(batch.image)._asdict())

    def setup(self, stage: str) -> None:
        """Train (or load) the detector once, before anomalib's validation, test or predict."""
        del stage
        if self.model.ready:
            return
        device = self._train_device()
        if self.checkpoint is not None:
            self.checkpoint_dir = Path(self.checkpoint)
            self.model.set_detector(load_detector(self.checkpoint_dir, device=device,
                                                  precision=self.train_fields.get("precision", "fp32")))
            return
        self.model.set_detector(self._train(device))

    # ---- training -----------------------------------------------------------------------------------
    def _train(self, device: str) -> MethodModel:
        class_name = self._class_name()
        shots, root = self.draw_shots(class_name)
        work = self._work_dir()
        images = load_images(shots)
        names = [s.file_name for s in shots]
        say(f"FineGrainedAD: {len(shots)} shot(s) of class {class_name} (seed {self.seed}) from {root}: "
            f"{', '.join(names)}")
        captions = self._captions(class_name, shots, work)
        cfg = build_train_config(self.recipe, Path(self.config_file) if self.config_file else None, **{
            **self.train_fields, "class_name": class_name, "shots": len(shots), "seed": self.seed,
            "captions": captions, "data": str(root), "out": str(work / CHECKPOINT), "device": device,
            "shots_file": self.shots_file})
        record = None if cfg.baseline == "promptad" else caption_store.load_class_record(captions, class_name)
        self.checkpoint_dir = Path(cfg.out)
        model = train_and_save(cfg, progress=True, log=say, shots=(images, names), record=record)
        say(f"FineGrainedAD: the checkpoint is {cfg.out} (detector eval / predict / export read it)")
        return model

    def draw_shots(self, class_name: str) -> tuple[list[Sample], Path]:
        """The k shots (``fsad_data.select_shots``) and the folder their file names are relative to."""
        paths = self._pool_paths()
        if not paths:
            raise DetectorError("no normal training image to draw shots from: give the datamodule a train split "
                                "or few_shot_source=FOLDER")
        root = Path(paths[0]).parent if len(paths) == 1 else Path(_common_folder(paths))
        if self.few_shot_source is None and self._datamodule() is not None:
            root = Path(_common_folder([*paths, *self._test_paths()]))  # the class folder (train/, test/ ...)
        pool = [Sample(id=f"{class_name}/train/good/{i}", class_name=class_name, split="train", label=0,
                       defect_type="good", image_path=Path(p), mask_path=None,
                       file_name=Path(p).relative_to(root).as_posix()) for i, p in enumerate(paths)]
        try:
            shots = select_shots(pool, class_name, self.k_shot, self.seed, shots_file=self.shots_file)
        except DataError as exc:  # one line naming what to change
            raise DetectorError(str(exc)) from None
        return list(shots), root

    def _pool_paths(self) -> list[str]:
        if self.few_shot_source is not None:
            return [str(p) for p in list_images(Path(self.few_shot_source))]
        dm = self._datamodule()
        if dm is None:
            raise DetectorError("no datamodule to draw shots from: pass few_shot_source=FOLDER or checkpoint=DIR")
        if getattr(dm, "train_data", None) is None:
            dm.setup("fit")
        frame = dm.train_data.samples
        normal = frame[frame["label_index"] == 0]
        return sorted(str(p) for p in normal["image_path"])

    def _test_paths(self) -> list[str]:
        data = getattr(self._datamodule(), "test_data", None)
        return [] if data is None else [str(p) for p in data.samples["image_path"]]

    def _captions(self, class_name: str, shots: list[Sample], work: Path) -> str | None:
        """The caption dataset to read: the one given, or one built now from the shots (offline captioner)."""
        if self.captions is not None or self.train_fields.get("baseline") == "promptad":
            return self.captions
        out = work / CAPTIONS
        say(f"FineGrainedAD: no captions given, so they are built from the {len(shots)} shot(s) with "
            f"{self.captioner or 'the offline attribute captioner'} into {out}")
        # the shots alone, in fsad_data's folder layout, under a name only this model writes (so it is ours to
        # replace), and the same one on every run: a rerun's `mfsc build` then finds its finished build
        staging = work / STAGING
        if staging.exists():
            shutil.rmtree(staging)
        folder = staging / class_name / "train" / "normal"
        folder.mkdir(parents=True)
        for s in shots:
            shutil.copy2(s.image_path, folder / s.file_name.replace("/", "__"))
        build_captions(FitFolderConfig(folder=staging, out=work, seed=self.seed, layout="folder",
                                       captioner=self.captioner), class_name, len(shots), out, say)
        return str(out)

    # ---- where things are ----------------------------------------------------------------------------
    def _datamodule(self) -> Any:
        trainer = getattr(self, "_trainer", None)
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def _class_name(self) -> str:
        if self.class_name:
            return self.class_name
        dm = self._datamodule()
        name = getattr(dm, "category", None) or getattr(dm, "name", None)
        if not name:
            raise DetectorError("no class name: pass class_name (as the caption dataset names the class)")
        return str(name)

    def _work_dir(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        trainer = getattr(self, "_trainer", None)
        return Path(trainer.default_root_dir if trainer is not None else ".") / WORK_FOLDER

    def _train_device(self) -> str:
        trainer = getattr(self, "_trainer", None)
        return str(trainer.strategy.root_device) if trainer is not None else "cpu"


def _common_folder(paths: Sequence[str]) -> str:
    return os.path.commonpath([str(Path(p).parent) for p in paths])


def say(line: str) -> None:
    """One line on the console, as the project's commands say what they decided (anomalib's logging is off
    unless its CLI configured it)."""
    print(line, flush=True)


__all__ = ["FineGrainedAD", "FineGrainedADModel"]
