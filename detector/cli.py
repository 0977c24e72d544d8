"""``detector``: train, eval, predict, export, push, benchmark (FineGrainedAD, arXiv 2510.26464).

Heavy libraries (torch, open_clip) are imported inside the command bodies so ``detector --help`` is
instant. A ``DetectorError`` or ``DataError``, or an ``OSError`` (a full disk, a file where a folder must
go), becomes one red line on stderr and exit code 1 (typer's usage errors: 2), never a traceback
(``fsad_data.cli_guard``, shared with ``mfsc``). Settings that would fail every cell of a benchmark are
refused before the first cell trains. The training flags of ``train`` and ``benchmark`` are written once
(``TRAIN_FLAGS``, added to both by ``with_train_flags``).
"""
from __future__ import annotations

import functools
import inspect
import json
import math
import os
import shlex
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from detector.deploy import serve_settings as serve_defaults  # stdlib only: `serve`'s flag defaults
from detector.errors import DetectorError
from detector.method.scoring import BRANCHES, DEFAULT_BRANCH, EVAL_RESOLUTION, MAP_RESOLUTION
from detector.recipes import parse_settings
from fsad_data.cli_guard import run_guarded

app = typer.Typer(help="FineGrainedAD few-shot anomaly detector: train, eval, predict, benchmark.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

T = TypeVar("T")


def _run(body: Callable[[], T], interrupted: str | None) -> T:
    """Run a command body under the shared guard (``fsad_data.cli_guard``): user and file system errors become
    one red line and exit 1, Ctrl-C exit 130 with the line ``interrupted`` (None: the body has said what was
    kept)."""
    return run_guarded(body, (DetectorError,), interrupted=interrupted)


def _not_a_file(path: Path | None, flag: str, what: str) -> None:
    """Refuse a file given where a folder goes, before any work starts."""
    if path is not None and path.exists() and not path.is_dir():
        raise DetectorError(f"{flag} {path} is a file; give {what}")


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("FGAD_LEAN_OPEN_CLIP", "1")  # open_clip without transformers/timm: backbone.import_open_clip
    warnings.filterwarnings("ignore", category=UserWarning, module="open_clip")


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)  # log lines and Markdown tables stay whole in files


# ---- options shared by several commands ---------------------------------------------------------

CaptionsOpt = Annotated[str | None, typer.Option("--captions", help="Caption dataset folder (mfsc build) or Hub id.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TrainConfig YAML/JSON; flags override it.")]
LayoutOpt = Annotated[str | None, typer.Option(
    "--layout", help="Data set layout: auto, mvtec, visa, ...", show_default="auto")]
BranchOpt = Annotated[Literal[BRANCHES], typer.Option(  # a tuple subscript: Literal["fused", "text", "visual"]
    "--branch", help="Map to score: fused (the method), text or visual (ablations).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
EvalCkptOpt = Annotated[Path, typer.Option("--checkpoint", help="Checkpoint folder from `detector train`, or a "
                                           "Hub id ORG/NAME (its snapshot is read, never written).")]
RunDeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, mps.")]
RunPrecisionOpt = Annotated[str, typer.Option("--precision", help="fp32, fp16 or bf16.")]
PredictCkptOpt = Annotated[Path, typer.Option("--checkpoint", help="Checkpoint folder from `detector train`, a "
                                              "`detector export` folder (with --engine), or a Hub id ORG/NAME.")]
CKPT_FOLDER = "the checkpoint folder written by `detector train`"
EvalResolutionOpt = Annotated[int, typer.Option(
    "--resolution", min=8, help="Evaluation resolution in pixels (400 = the paper).")]

# The training flags of `train` and `benchmark`, written once: name -> (option, default). None = not given, the
# recipe's / TrainConfig's default applies (show_default names it; a test checks it against TrainConfig).
TRAIN_FLAGS: dict[str, tuple[Any, Any]] = {
    "recipe": (Annotated[str | None, typer.Option(
        "--recipe", help="Method recipe: paper (the public code, default), ours, or a YAML/JSON file of TrainConfig "
        "fields (docs/FIDELITY.md); --config and flags override it.", show_default="paper")], None),
    "settings": (Annotated[list[str] | None, typer.Option(
        "--set", help="One TrainConfig option KEY=VALUE over the recipe, repeatable (e.g. --set tau=exp "
        "--set vv_blocks=half).", show_default="the recipe's")], None),
    "backbone": (Annotated[str | None, typer.Option(
        "--backbone", help="open_clip model name.", show_default="ViT-B-16-plus-240")], None),
    "pretrained": (Annotated[str | None, typer.Option(
        "--pretrained", help="open_clip weights tag, a local file, or 'none' for random weights.",
        show_default="laion400m_e32")], None),
    "epochs": (Annotated[int | None, typer.Option(
        "--epochs", help="Pixel-level prompt epochs.", show_default="100")], None),
    "image_epochs": (Annotated[int | None, typer.Option(
        "--image-epochs", help="Image-level prompt epochs.", show_default="50")], None),
    "device": (Annotated[str | None, typer.Option(
        "--device", help="cpu, cuda, cuda:1, mps.", show_default="cpu")], None),
    "precision": (Annotated[str | None, typer.Option(
        "--precision", help="fp32, fp16 or bf16.", show_default="fp32")], None),
    "text_checkpointing": (Annotated[Literal["auto", "on", "off"] | None, typer.Option(
        "--text-checkpointing", help="Recompute the text blocks in backward to save memory: on, off, or auto (on "
        "where a prompt set's text activations would pass 1 GiB).", show_default="auto")], None),
    "restart": (Annotated[bool, typer.Option(
        "--restart", help="Discard the saved state of an interrupted training (<out>.partial/) and start over "
        "(a benchmark keeps its finished cells).")], False),
}


@dataclass
class TrainFlags:
    """The TRAIN_FLAGS a command was given: the recipe, the raw --set items, the TrainConfig fields set by flags."""

    recipe: str | None
    settings: list[str] | None
    fields: dict[str, Any]

    def overrides(self) -> dict[str, Any]:
        """TrainConfig overrides over the recipe and config file: the --set items, then the flags (they win).
        Called inside the command body, so a bad --set is one red line."""
        return {**parse_settings(self.settings), **self.fields}


def with_train_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the TRAIN_FLAGS options; its body receives them as one ``train_flags: TrainFlags``."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "train_flags"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=option)
             for name, (option, default) in TRAIN_FLAGS.items()]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        flags = {name: kwargs.pop(name) for name in TRAIN_FLAGS}
        recipe, settings = flags.pop("recipe"), flags.pop("settings")
        command(**kwargs, train_flags=TrainFlags(recipe, settings, _train_overrides(**flags)))

    params = [*own, *extra]
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def _train_overrides(**flags: Any) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items() if v is not None}


OnErrorOpt = Annotated[Literal["raise", "skip"] | None, typer.Option(
    "--on-error", help="An image that does not decode or is smaller than 8 px: raise (stop, naming it) or skip "
    "(leave it out, listed).", show_default="raise")]


# ---- train ---------------------------------------------------------------------------------------


@app.command()
@with_train_flags
def train(
    captions: CaptionsOpt = None,
    data: Annotated[Path | None, typer.Option("--data", help="Data set root (MVTec-AD, VisA, ... layout).")] = None,
    class_name: Annotated[str | None, typer.Option("--class", help="Class (folder name) to train.")] = None,
    shots: Annotated[int | None, typer.Option("--shots", help="Number of normal shots k.", show_default="4")] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Shot selection and prompt init seed.", show_default="0")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Checkpoint folder to write.", show_default="out/checkpoint")] = None,
    shots_file: Annotated[Path | None, typer.Option("--shots-file", help="File listing the shot images.")] = None,
    baseline: Annotated[str | None, typer.Option(
        "--baseline", help="'promptad': class-name prompts only (the PromptAD baseline).")] = None,
    config: ConfigOpt = None,
    layout: LayoutOpt = None,
    on_error: OnErrorOpt = None,
    *,
    train_flags: TrainFlags,  # from with_train_flags (not a CLI option itself)
) -> None:
    """Train FineGrainedAD for one class from k normal shots and its MFSC caption record (resumes)."""

    def body() -> None:
        _quiet_libraries()
        from detector.recipes import build_train_config
        from detector.run.train import train as train_fn

        overrides = _train_overrides(captions=captions, data=data, class_name=class_name, shots=shots, seed=seed,
                                     out=out, shots_file=shots_file, baseline=baseline, layout=layout,
                                     on_error=on_error)
        cfg = build_train_config(train_flags.recipe, config, **{**train_flags.overrides(), **overrides})
        _not_a_file(Path(cfg.out), "--out", "a folder name for the checkpoint")
        path = train_fn(cfg, progress=True)
        _console().print(f"checkpoint written to {path}")

    _run(body, interrupted=None)  # train says how many epochs were saved and how to resume


# ---- fit-folder ----------------------------------------------------------------------------------


@app.command("fit-folder")
@with_train_flags
def fit_folder(
    folder: Annotated[Path, typer.Argument(help="Your images: FOLDER/normal/ (+ FOLDER/anomaly/[<defect>/], "
                                           "optional FOLDER/masks/), or any layout of --layout.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for captions/, checkpoint/ and eval/.")],
    class_name: Annotated[str | None, typer.Option(
        "--class", help="Class to fit when FOLDER holds several.", show_default="the only one")] = None,
    shots: Annotated[int | None, typer.Option(
        "--shots", min=1, help="Normal shots k.", show_default="4, or fewer when FOLDER has fewer")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Shot selection and prompt init seed.")] = 0,
    captioner: Annotated[str | None, typer.Option(
        "--captioner", help="Captioner of `mfsc build` (attributes: offline; or hf:MODEL, openai:MODEL).",
        show_default="attributes")] = None,
    layout: Annotated[str, typer.Option("--layout", help="Data set layout: auto, folder, mvtec, ...")] = "auto",
    config: ConfigOpt = None,
    *,
    train_flags: TrainFlags,  # from with_train_flags (not a CLI option itself)
) -> None:
    """Your folder in one command: MFSC captions, a trained detector, and an evaluation with its report when
    FOLDER has anomalous images (CPU-sized epochs without a GPU). Rerun the same command to resume."""

    def body() -> None:
        _quiet_libraries()
        from detector.run.fit_folder import FitFolderConfig, run_fit_folder

        _not_a_file(out, "--out", "a folder for the captions, checkpoint and evaluation")
        con = _console()
        res = run_fit_folder(FitFolderConfig(
            folder=folder, out=out, class_name=class_name, shots=shots, seed=seed, layout=layout,
            captioner=captioner, recipe=train_flags.recipe, config=config, train_overrides=train_flags.overrides()),
            say=lambda line: con.print(line, markup=False, highlight=False))
        if res.metrics is not None and res.metrics_path is not None:
            _print_metrics(res.metrics, res.metrics_path)
        con.print(f"checkpoint: {res.checkpoint}" + (f"   report: {res.report}" if res.report else ""),
                  markup=False, highlight=False)
        threshold = "auto" if res.evaluation is not None else "none"
        con.print(f"next: detector predict --checkpoint {shlex.quote(str(res.checkpoint))} IMAGES --out "
                  f"{shlex.quote(str(Path(out) / 'predictions'))} --threshold {threshold}", markup=False,
                  highlight=False, soft_wrap=True)

    _run(body, interrupted="interrupted; rerun the same command to resume (captions and training continue where "
         "they stopped)")


# ---- eval ----------------------------------------------------------------------------------------

MinAreaOpt = Annotated[float | None, typer.Option(
    "--min-area", min=0.0, max=1.0, help="Named defects: smallest region kept, as a fraction of the image.",
    show_default="0.001")]
MinMarginOpt = Annotated[float | None, typer.Option(
    "--min-margin", min=0.0, max=1.0, help="Named defects: a state needs this probability margin over the "
    "second best, else it is 'unknown'.", show_default="0.1")]


def _naming_settings(min_area: float | None, min_margin: float | None) -> dict[str, float]:
    """The named-defect flags given (the defaults live in detector.eval.defects)."""
    return {k: v for k, v in (("min_area", min_area), ("min_margin", min_margin)) if v is not None}


ExactMetricsOpt = Annotated[bool, typer.Option(
    "--exact-metrics", help="Keep every float32 map for exact pixel metrics (memory grows with the test set) "
    "instead of the constant-memory 2^16-level histogram.")]


@app.command("eval")
def eval_cmd(
    checkpoint: EvalCkptOpt,
    data: Annotated[Path, typer.Option("--data", help="Data set root holding the class's test split.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json, metrics.csv, overlays, report.")],
    resolution: EvalResolutionOpt = EVAL_RESOLUTION,
    branch: BranchOpt = DEFAULT_BRANCH,
    batch_size: BatchOpt = 8,
    device: RunDeviceOpt = "cpu",
    precision: RunPrecisionOpt = "fp32",
    layout: Annotated[str, typer.Option("--layout", help="Data set layout: auto, mvtec, visa, ...")] = "auto",
    class_name: Annotated[str | None, typer.Option(
        "--class", help="Class to evaluate.", show_default="the checkpoint's class")] = None,
    exact_metrics: ExactMetricsOpt = False,
    captions: Annotated[str | None, typer.Option(
        "--captions", help="Caption dataset (mfsc build folder or Hub id) holding the test images' regions, "
        "for naming_accuracy.", show_default="the training captions")] = None,
    min_area: MinAreaOpt = None,
    min_margin: MinMarginOpt = None,
    on_error: OnErrorOpt = None,
) -> None:
    """Evaluate a checkpoint on its class's test split: metrics, named defects, overlays, HTML report with a
    threshold explorer, F1-max threshold."""

    def body() -> None:
        _quiet_libraries()
        from detector.run.evaluate import EvalConfig, run_eval

        _not_a_file(checkpoint, "--checkpoint", CKPT_FOLDER)
        _not_a_file(out, "--out", "a folder for the evaluation outputs")

        res = run_eval(EvalConfig(checkpoint=checkpoint, data=data, out=out, resolution=resolution, branch=branch,
                                  batch_size=batch_size, device=device, precision=precision, layout=layout,
                                  class_name=class_name, exact_metrics=exact_metrics, captions=captions,
                                  progress=True, on_error=on_error or "raise",
                                  **_naming_settings(min_area, min_margin)))
        _print_metrics(res.metrics, res.metrics_path)
        _say_skipped(res.skipped, res.metrics_path, "test image")
        if res.card_note:
            _console().print(f"[yellow]{res.card_note}[/yellow]")
        if res.report_path:
            _console().print(f"report: {res.report_path}")

    _run(body, interrupted="interrupted; metrics.json was not written: rerun the same command")


def _say_skipped(skipped: list[dict[str, str]], listed_in: Path, what: str) -> None:
    if skipped:
        _console().print(f"[yellow]{len(skipped)} {what}(s) skipped (--on-error skip), listed in {listed_in}: "
                         f"{skipped[0]['path']}{' ...' if len(skipped) > 1 else ''}[/yellow]")


def _print_metrics(values: dict[str, float], metrics_path: Path) -> None:
    from detector.eval.metrics import METRICS  # numpy: not for --help

    data = json.loads(Path(metrics_path).read_text())
    title = f"{data.get('class_name')} ({data.get('n_images')} test images, {data.get('resolution')} px)"
    table = Table(title=title + ", %")
    for m in METRICS:
        table.add_column(m.short, justify="right")
    table.add_row(*("–" if values.get(m.key) is None or math.isnan(values[m.key]) else f"{100 * values[m.key]:.2f}"
                    for m in METRICS))
    from fsad_data.plain_tables import print_table

    con = _console()
    print_table(con, table)
    naming = data.get("naming")
    if isinstance(naming, dict) and naming.get("n_defect_regions"):
        def pct(v: object) -> str:
            return "–" if not isinstance(v, int | float) or math.isnan(v) else f"{100 * v:.1f}%"

        con.print(f"defect naming: {pct(naming.get('naming_accuracy'))} of {naming['n_defect_regions']} ground-truth "
                  f"regions named as the captions name them ({naming.get('n_missed_regions', 0)} missed), state "
                  f"{pct(naming.get('state_accuracy'))}; per region in defects.json")
    pixel = data.get("pixel_metrics")
    if isinstance(pixel, dict) and pixel.get("method") == "none" and pixel.get("why"):
        con.print(f"pixel metrics: none ({pixel['why']})", markup=False)
    if not data.get("meaningful", True):
        from detector.run.evaluate import RANDOM_WEIGHTS_NOTE

        con.print(RANDOM_WEIGHTS_NOTE, style="yellow", markup=False)
    con.print(f"metrics: {metrics_path}")


# ---- predict -------------------------------------------------------------------------------------


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    checkpoint: PredictCkptOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for maps (.npy), overlays, masks, scores.")],
    batch_size: BatchOpt = 8,
    threshold: Annotated[str, typer.Option(
        "--threshold", help="An evaluation folder of `detector eval` or its threshold.json (the F1-max threshold), "
        "auto (the checkpoint's latest evaluation, as `detector eval` recorded it), none, or a number (the pixel "
        "threshold: masks and named regions).")] = "none",
    image_threshold: Annotated[float | None, typer.Option(
        "--image-threshold", help="Image score at or above which an image is anomalous (scores.csv's anomalous); "
        "replaces the evaluation's image threshold.", show_default="the evaluation's, with --threshold EVAL/auto")]
    = None,
    resolution: Annotated[int | None, typer.Option(
        "--resolution", min=8, help="Map resolution before resizing to each image.",
        show_default=f"the threshold's, else {MAP_RESOLUTION}")] = None,
    branch: BranchOpt = DEFAULT_BRANCH,
    device: RunDeviceOpt = "cpu",
    precision: RunPrecisionOpt = "fp32",
    engine: Annotated[Literal["torch", "onnx", "openvino"], typer.Option(
        "--engine", help="torch (a checkpoint), or onnx / openvino (a `detector export` folder as --checkpoint).")]
    = "torch",
    min_area: MinAreaOpt = None,
    min_margin: MinMarginOpt = None,
    on_error: OnErrorOpt = None,
    overlays: Annotated[bool, typer.Option(
        "--overlays/--no-overlays", help="Write overlays/ (PNG: heat map, outlined regions, a caption with the "
        "verdict and the named defects); --no-overlays saves their PNG encoding, the slowest output on large "
        "images.")] = True,
    maps: Annotated[bool, typer.Option(
        "--maps/--no-maps", help="Write maps/ (the float32 anomaly map of every image as .npy, 4 bytes per "
        "pixel).")] = True,
) -> None:
    """Anomaly maps, overlays, image scores and, with a threshold, masks and named defects for new images."""

    def body() -> None:
        _quiet_libraries()
        from detector.run.predict import SCORES_JSON, PredictConfig, run_predict, summary_line

        _not_a_file(checkpoint, "--checkpoint", CKPT_FOLDER)
        _not_a_file(out, "--out", "a folder for the maps and scores")

        rows = run_predict(PredictConfig(checkpoint=checkpoint, inputs=list(inputs), out=out, batch_size=batch_size,
                                         threshold=threshold, image_threshold=image_threshold,
                                         resolution=resolution, branch=branch, device=device,
                                         precision=precision, progress=True, engine=engine,
                                         on_error=on_error or "raise", overlays=overlays, maps=maps,
                                         **_naming_settings(min_area, min_margin)))
        _console().print(summary_line(rows, Path(out)), soft_wrap=True)
        _say_skipped(getattr(rows, "skipped", []), Path(out) / SCORES_JSON, "image")

    _run(body, interrupted="interrupted; --out was left as it was (nothing of this run written): rerun the same "
         "command")


# ---- export --------------------------------------------------------------------------------------


@app.command()
def export(
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="Checkpoint folder from `detector train`, or a "
                                            "Hub id ORG/NAME.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the graph and export.json.")],
    fmt: Annotated[Literal["onnx", "openvino"], typer.Option("--format", help="onnx, or openvino (optional "
                                                             "extra).")] = "onnx",
    precision: Annotated[Literal["fp32", "fp16", "int8"], typer.Option(
        "--precision", help="fp32; fp16 (OpenVINO's fp16 weight compression); int8 (OpenVINO, NNCF's quantisation "
        "calibrated on --data's normal images of the class, refused past --max-drift).")] = "fp32",
    resolution: Annotated[int | None, typer.Option(
        "--resolution", min=8, help="Map resolution of the graph's output.",
        show_default=f"the checkpoint's threshold resolution, else {MAP_RESOLUTION}")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="int8: the data set root; its normal training images of the class calibrate and check the "
        "graph, its test images (if any) measure the metrics' change.")] = None,
    layout: LayoutOpt = None,
    class_name: Annotated[str | None, typer.Option(
        "--class", help="int8: the class in --data.", show_default="the checkpoint's class")] = None,
    max_drift: Annotated[list[str] | None, typer.Option(
        "--max-drift", help="int8: KEY=VALUE, a drift limit (map_mean, score_spearman, auroc_points); repeat.",
        show_default="map_mean=0.02, score_spearman=0.9, auroc_points=1")] = None,
) -> None:
    """One static graph (uint8 RGB images in; scores and fused maps out) for ONNX Runtime or OpenVINO."""

    def body() -> None:
        _quiet_libraries()
        from detector.deploy.export import export_checkpoint
        from detector.deploy.quantise import Calibration, DriftLimits, drift_line

        _not_a_file(out, "--out", "a folder for the export")
        if precision == "int8":
            _console().print("int8: quantising on the class's normal images and checking the drift from fp32 "
                             "(minutes for ViT-B on a CPU)")
        asked = data is not None or class_name is not None or bool(max_drift) or layout is not None
        calibration = None if not asked else Calibration(str(data or ""), class_name or "", layout or "auto",
                                                         DriftLimits.parse(max_drift))
        path = export_checkpoint(checkpoint, fmt, out, precision=precision, resolution=resolution,
                                 calibration=calibration)
        if precision == "int8":
            _console().print(drift_line(json.loads((Path(path) / "export.json").read_text())["int8"]["drift"]))
        _console().print(f"{fmt} export written to {path} (run it: detector predict IMAGES --checkpoint {path} "
                         f"--engine {fmt} --out DIR)")

    _run(body, interrupted="interrupted; nothing was written: rerun the same command")


# ---- push ----------------------------------------------------------------------------------------


@app.command()
def push(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder from `detector train`.")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub model repo ORG/NAME (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    dry_run: Annotated[Path | None, typer.Option(
        "--dry-run", help="Only write what would be uploaded into this folder.",
        show_default="off: upload")] = None,
) -> None:
    """Upload a checkpoint (safetensors + JSON + model card, never pickles) to the Hugging Face Hub."""

    def body() -> None:
        from detector.store.hub import push_checkpoint

        _not_a_file(checkpoint, "CHECKPOINT", CKPT_FOLDER)
        where = push_checkpoint(checkpoint, repo_id, private=private, dry_run=dry_run)
        _console().print(f"dry run written to {where}" if dry_run is not None else f"pushed to {where}")

    _run(body, interrupted="interrupted; nothing was uploaded: rerun the same command")


# ---- benchmark -----------------------------------------------------------------------------------


@app.command()
@with_train_flags
def benchmark(
    data: Annotated[Path, typer.Option("--data", help="Data set root (all classes, or --classes).")],
    out: Annotated[Path, typer.Option("--out", help="Benchmark folder (cells/, tables/, summary.md, report).")],
    captions: CaptionsOpt = None,
    shots: Annotated[str, typer.Option("--shots", help="Comma-separated shot counts.")] = "1,2,4",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")] = "0,1,2",
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Comma-separated classes.", show_default="all")] = None,
    baseline: Annotated[str | None, typer.Option(
        "--baseline", help="Also run this baseline ('promptad': class-name prompts).")] = None,
    num_shards: Annotated[int, typer.Option("--num-shards", min=1, help="Split the cells over N machines/GPUs.")] = 1,
    shard_index: Annotated[int, typer.Option("--shard-index", min=0, help="Which of the N parts to run (0-based).")]
    = 0,
    merge: Annotated[bool, typer.Option("--merge", help="Only assemble the tables from OUT/cells.")] = False,
    main: Annotated[bool, typer.Option("--main/--no-main", help="Run FineGrainedAD itself (--no-main: only "
                                       "the baseline).")] = True,
    resolution: EvalResolutionOpt = EVAL_RESOLUTION,
    batch_size: BatchOpt = 8,
    exact_metrics: ExactMetricsOpt = False,
    dataset_name: Annotated[str | None, typer.Option(
        "--dataset-name", help="Name in the tables (mvtec/visa names add the paper's numbers).",
        show_default="the data folder's name")] = None,
    layout: LayoutOpt = None,
    config: ConfigOpt = None,
    variants: Annotated[str | None, typer.Option(
        "--variants", help="Run several recipes on the same cells, side by side: 'NAME=OPTIONS;NAME=OPTIONS', "
        "OPTIONS space-separated KEY=VALUE over the run's recipe (recipe=ours expands), e.g. "
        "'paper=;ours=recipe=ours;ours_stored=recipe=ours tau=stored'.", show_default="the recipe alone")] = None,
    on_error: OnErrorOpt = None,
    *,
    train_flags: TrainFlags,  # from with_train_flags (not a CLI option itself)
) -> None:
    """The paper's protocol: train + evaluate every (class, shots, seed), then tables (resumable, shardable)."""

    def body() -> None:
        _quiet_libraries()
        from detector.recipes import parse_variants
        from detector.run.benchmark import BenchmarkConfig, check_cells, parse_int_list, run_benchmark

        _not_a_file(out, "--out", "a folder for the benchmark")
        cfg = BenchmarkConfig(
            data=data, out=out, captions=captions, shots=parse_int_list(shots, "--shots"),
            seeds=parse_int_list(seeds, "--seeds"),
            classes=[c for c in classes.split(",") if c] if classes else None, baseline=baseline,
            num_shards=num_shards, shard_index=shard_index, merge=merge, main=main, resolution=resolution,
            batch_size=batch_size, exact_metrics=exact_metrics, layout=layout or "auto", dataset_name=dataset_name,
            train_config=config, recipe=train_flags.recipe, variants=parse_variants(variants),
            train=train_flags.overrides(), on_error=on_error or "raise")
        if not merge:
            check_cells(cfg)
        con = _console()
        result = run_benchmark(cfg, log=lambda line: con.print(line, markup=False))
        if "summary_md" in result:
            con.print(result["summary_md"], markup=False)
            if not result.get("meaningful", True):
                from detector.run.evaluate import RANDOM_WEIGHTS_NOTE

                con.print(RANDOM_WEIGHTS_NOTE, style="yellow", markup=False)

    _run(body, interrupted="interrupted; finished cells are kept: rerun the same command to resume")


# ---- serve ---------------------------------------------------------------------------------------


@app.command()
def serve(
    sources: Annotated[list[str], typer.Argument(
        help="Checkpoint folders, `detector export` folders or Hub ids ORG/NAME to serve; NAME=SOURCE names one "
        "(the URL's /v1/detectors/NAME/predict; default: the folder's name).")],
    host: Annotated[str, typer.Option("--host", help="Address to bind: 127.0.0.1 (this machine only), 0.0.0.0 or "
                                      "::.")] = serve_defaults.DEFAULT_HOST,
    port: Annotated[int, typer.Option("--port", min=1024, max=65535, help="TCP port.")] = serve_defaults.DEFAULT_PORT,
    api_key_env: Annotated[str | None, typer.Option(
        "--api-key-env", help="Name of an environment variable holding the API key clients must send (X-API-Key "
        "or Authorization: Bearer); the key itself never goes on the command line.", show_default="no key")] = None,
    watch: Annotated[Path | None, typer.Option(
        "--watch", help="A folder whose newest images the operator page lists (by name) to score.",
        show_default="none")] = None,
    allow_threshold_change: Annotated[bool, typer.Option(
        "--allow-threshold-change", help="Let the API and the page change the served thresholds (default: the "
        "page's threshold decides on the page only).")] = False,
    max_upload_mb: Annotated[int, typer.Option("--max-upload-mb", min=1, help="Largest request body, MiB.")] = serve_defaults.MAX_UPLOAD_MB,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=64, help="Most pixels of one image (W x H), "
                                            "read from its header before it is decoded.")] = serve_defaults.MAX_PIXELS,
    max_images: Annotated[int, typer.Option("--max-images", min=1, help="Most images in one request.")] = serve_defaults.MAX_IMAGES,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Requests scored together in one "
                                           "forward pass (LitServe's max_batch_size).")] = serve_defaults.MAX_BATCH,
    batch_timeout: Annotated[float, typer.Option("--batch-timeout", min=0.0, help="Seconds a batch waits to "
                                                 "fill.")] = serve_defaults.BATCH_TIMEOUT,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Inference processes per detector and "
                                         "device.")] = 1,
    device: RunDeviceOpt = "cpu",
    engine: Annotated[Literal["onnx", "openvino"] | None, typer.Option(
        "--engine", help="Runtime of the export folders.", show_default="the one each was exported for")] = None,
    log_level: Annotated[Literal["critical", "error", "warning", "info", "debug"], typer.Option(
        "--log-level", help="Server log level.")] = "warning",
) -> None:
    """Serve detectors over HTTP (LitServe): POST /v1/detectors/NAME/predict, GET /v1/detectors, /health,
    /metrics, and the operator page at /. SIGTERM finishes the requests in flight, then exits."""

    def body() -> None:
        _quiet_libraries()
        from detector.deploy.serve import Limits, ServeSettings, run

        key = None
        if api_key_env is not None:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise DetectorError(f"--api-key-env {api_key_env}: that environment variable is empty or unset; "
                                    f"export {api_key_env}=... (a long random key) before starting the server")
        settings = ServeSettings(
            list(sources), host=host, port=port, api_key=key, limits=Limits(max_upload_mb << 20, max_pixels,
                                                                            max_images),
            max_batch=max_batch, batch_timeout=batch_timeout, workers=workers, device=device, engine=engine,
            watch=watch, allow_threshold_change=allow_threshold_change, log_level=log_level)
        con = _console()
        run(settings, say=lambda line: con.print(line, markup=False))
        con.print("server stopped", markup=False)

    _run(body, interrupted="server stopped")


if __name__ == "__main__":  # pragma: no cover
    app()
