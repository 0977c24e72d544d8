"""`mfsc`: build, merge, publish and inspect MFSC caption datasets, and make the synthetic demo set.

Heavy libraries (datasets, torch, transformers, OpenCV) are imported inside the commands so that
`mfsc --help` is instant. A `BuildError` or `DataError`, or an `OSError` (a full disk, a file where a folder
must go), becomes one red line on stderr and exit code 1 (usage errors: 2, from typer), never a traceback
(`fsad_data.cli_guard`, shared with `detector`).
"""
from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console

from fsad_data.cli_guard import run_guarded
from fsad_data.progress import ProgressLines
from mfsc_builder.errors import BuildError, BuildInterrupted

if TYPE_CHECKING:  # annotations only: the command modules load when their command runs
    from mfsc_builder.build import BuildSummary

app = typer.Typer(
    name="mfsc",
    help="Build Multi-Level Fine-Grained Semantic Caption (MFSC) datasets for few-shot anomaly detection.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
T = TypeVar("T")
P = ParamSpec("P")


def _guard(fn: Callable[[], T]) -> T:
    """Run a command body under the shared guard (``fsad_data.cli_guard``); Ctrl-C gives a resume hint."""
    return run_guarded(fn, (BuildError,), stopped=(BuildInterrupted,),
                       interrupted="interrupted; finished work is kept: run the same command again to resume")


def _guarded(command: Callable[P, None]) -> Callable[P, None]:
    """A command whose whole body runs under `_guard` (typer reads its signature and help through `wraps`)."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        _guard(lambda: command(*args, **kwargs))

    return run


def _not_a_file(path: Path | str | None, what: str) -> None:
    """Refuse a file given where a folder goes, before any work starts."""
    if path and Path(path).exists() and not Path(path).is_dir():
        raise BuildError(f"{path} is a file; give {what}")


def _setup_logging(quiet: bool) -> None:
    from huggingface_hub.utils import disable_progress_bars
    from rich.logging import RichHandler

    disable_progress_bars()  # datasets' and transformers' tqdm bars (ours is the only one)

    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_time=False, show_path=False)], force=True)
    for noisy in ("datasets", "huggingface_hub", "transformers", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _parse_crop(items: list[str] | None) -> dict[str, Any] | None:
    import yaml  # 40 ms: only when --crop is given, not for --help

    if not items:
        return None
    values: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise BuildError(f"--crop {item!r}: use KEY=VALUE, e.g. --crop grabcut=true")
        k, v = item.split("=", 1)
        values[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return values


# --------------------------------------------------------------------------- build
def _setting(kind: Any, text: str, shown: str, *names: str) -> Any:
    """The type of an optional `mfsc build` flag: None when not given, so that the settings file's value, or
    the default (``shown`` in --help), stands (``BuildConfig.override``)."""
    return Annotated[kind | None, typer.Option(*names, help=text, show_default=shown)]


# The options of `mfsc build`, one alias each, so that the command's signature stays one line an option.
_Source = Annotated[Path | None, typer.Argument(help="Data set root (MVTec-AD, VisA, Real-IAD or folder layout).")]
_Out = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (images/, classes/, work/).")]
_Config = Annotated[Path | None, typer.Option(help="YAML/JSON file of build settings; flags override it.")]
_Layout = _setting(str, "auto, mvtec, visa, visa_raw, realiad, folder.", "auto")
_Classes = _setting(str, "Comma-separated class names.", "all")
_Captioner = _setting(str, "attributes | hf:<model id or dir> | openai:<model>.", "attributes")
_ApiBase = _setting(str, "Base URL of an OpenAI-compatible server.", "$OPENAI_BASE_URL, else OpenAI's")
_Device = _setting(str, "Device of an hf: model: cpu, cuda, cuda:1, mps.", "cpu")
_Dtype = _setting(str, "dtype of an hf: model: auto, float32, bfloat16, float16.", "auto")
_BatchSize = _setting(int, "Images per captioner call.", "4")
_Concurrency = _setting(int, "Parallel requests of the openai backend.", "4")
_Timeout = _setting(float, "Seconds per openai request.", "60")
_MaxRetries = _setting(int, "Retries of a failed openai request.", "3")
_TrustRemoteCode = _setting(bool, "Allow an hf: model's own code.", "no")
_Prompt = _setting(str, "Prompt of an hf:/openai: model: a built-in name or your own FILE (see mfsc_builder/prompts/).",
                   "mfsc_v1")
_ResponseFormat = _setting(str, "How a model is asked: json_schema (the record schema), json_object, prompt.",
                           "json_schema")
_Shots = _setting(int, "Reference normal images per class.", "1", "--shots", "-k")
_Seed = _setting(int, "Seed of the reference selection.", "0")
_ShotsFile = _setting(str, "PromptAD/WinCLIP-style seed file of shots.", "none: by --seed")
_DefectVocab = _setting(str, "generic | dataset (leaks test info) | model | FILE.", "generic")
_NumShards = _setting(int, "Split the work over N machines.", "1")
_ShardIndex = _setting(int, "Which of the N parts this run builds, 0-based.", "0")
_OnError = _setting(str, "raise (stop) or skip (record and go on).", "raise")
_Crop = _setting(list[str], "Cropping setting KEY=VALUE, repeatable.", "none")
_Images = _setting(str, "embed: keep the image files in the dataset (unchanged when they are 8-bit RGB PNG or JPEG); "
                   "reference: keep only their relative names, sizes and SHA-256 (for licences that forbid "
                   "redistribution; users read the images from their copy).", "embed")
_Workers = _setting(int, "Processes that crop and run the attribute captioner (1: none).", "every core, <= 8")
_WorkerTimeout = _setting(float, "Seconds the worker processes may take to start, or to finish one job, before the "
                          "build stops with an error (a hung worker never makes a build wait for ever).", "120")
_Force = Annotated[bool, typer.Option(help="Discard earlier results in --out and start over.")]
_Quiet = Annotated[bool, typer.Option(
    "--quiet", "-q", help="No progress bar (there is none either when stderr is not a terminal).")]


@app.command()
@_guarded
def build(
    source: _Source = None,
    out_dir: _Out = None,
    config: _Config = None,
    layout: _Layout = None,
    classes: _Classes = None,
    captioner: _Captioner = None,
    api_base: _ApiBase = None,
    device: _Device = None,
    dtype: _Dtype = None,
    batch_size: _BatchSize = None,
    concurrency: _Concurrency = None,
    timeout: _Timeout = None,
    max_retries: _MaxRetries = None,
    trust_remote_code: _TrustRemoteCode = None,
    prompt: _Prompt = None,
    response_format: _ResponseFormat = None,
    shots: _Shots = None,
    seed: _Seed = None,
    shots_file: _ShotsFile = None,
    defect_vocab: _DefectVocab = None,
    num_shards: _NumShards = None,
    shard_index: _ShardIndex = None,
    on_error: _OnError = None,
    crop: _Crop = None,
    images: _Images = None,
    workers: _Workers = None,
    worker_timeout: _WorkerTimeout = None,
    force: _Force = False,
    quiet: _Quiet = False,
) -> None:
    """Build the `images` and `classes` datasets of a data set (resumes an interrupted build)."""
    flags = {
        "source": str(source) if source else None, "out": str(out_dir) if out_dir else None, "layout": layout,
        "classes": [c.strip() for c in classes.split(",") if c.strip()] if classes else None,
        "captioner": {"name": captioner, "api_base": api_base, "device": device, "dtype": dtype,
                      "batch_size": batch_size, "concurrency": concurrency, "timeout": timeout,
                      "max_retries": max_retries, "trust_remote_code": trust_remote_code, "prompt": prompt,
                      "response_format": response_format},
        "shots": shots, "seed": seed, "shots_file": shots_file, "defect_vocab": defect_vocab,
        "num_shards": num_shards, "shard_index": shard_index, "on_error": on_error, "crop": crop, "images": images,
        "workers": workers, "worker_timeout": worker_timeout,
    }
    _run_build(config, flags, force=force, quiet=quiet)


def _run_build(config: Path | None, flags: dict[str, Any], *, force: bool, quiet: bool) -> None:
    """The body of `mfsc build`: the settings (the file, then the flags over it; ``--crop`` items parsed here,
    under the guard, so a bad one is one line), the build under a progress display, and what it wrote."""
    from mfsc_builder.build import run_build
    from mfsc_builder.build_config import BuildConfig

    _setup_logging(quiet)
    cfg = BuildConfig.from_file(config) if config else BuildConfig()
    cfg = cfg.override(**{**flags, "crop": _parse_crop(flags["crop"])})
    _not_a_file(cfg.out, "an output folder to --out")
    summary = _with_progress(quiet, lambda cb: run_build(cfg, force=force, progress=cb))
    _report_build(summary)


def _report_build(summary: BuildSummary) -> None:
    """What a build wrote, and the two things its user must not miss: skipped images and records that hold the
    attribute captioner's fields because the model failed."""
    counts = ", ".join(f"{k}: {v}" for k, v in summary.images.items())
    out.print(f"[green]wrote[/green] {summary.out}/images ({counts}) and {summary.out}/classes "
              f"({len(summary.classes)} classes)" + (" [dim](resumed)[/dim]" if summary.resumed else ""),
              soft_wrap=True)
    if summary.skipped:
        err.print(f"[yellow]{len(summary.skipped)} image(s) skipped; listed in {summary.out}/build_info.json"
                  "[/yellow]")
    fallback, total = _fallback_count(summary.out)
    if fallback:
        err.print(f"{fallback} of {total} image records hold the attribute captioner's fields, not the "
                  "model's (provenance.status = fallback): its answers were invalid or it could not be "
                  "reached; fix the backend and rebuild with --force", style="yellow", markup=False,
                  soft_wrap=True)


def _fallback_count(build_out: Path) -> tuple[int, int]:
    """(image records the model did not caption, all image records): a model server that was down or
    answered nonsense for hours must not pass unnoticed."""
    import datasets

    images = datasets.load_from_disk(str(Path(build_out) / "images"))
    statuses = [p["status"] for split in images.values() for p in split["provenance"]]
    return statuses.count("fallback"), len(statuses)


def _with_progress(quiet: bool, run: Callable[[Callable[[str, int, int], None] | None], T]) -> T:
    """Run ``run(callback)`` under a rich progress bar on a terminal, plain lines in a log, nothing when quiet."""
    if quiet:
        return run(None)
    if not err.is_terminal:  # a log or a pipe: a plain line at most every 15 s (a bar would print nothing)
        lines = ProgressLines("mfsc build", lambda line: err.print(line, markup=False, highlight=False,
                                                                    soft_wrap=True))
        return run(lambda what, done, total: lines(what, done, total))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def cb(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        return run(cb)


# --------------------------------------------------------------------------- merge
@app.command()
@_guarded
def merge(
    parts: Annotated[list[Path], typer.Argument(help="Output folders of `mfsc build --num-shards N --shard-index I`.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder of the joined build.")],
) -> None:
    """Join the parts of a sharded build into one build (equal to a single-machine build)."""
    from mfsc_builder.build import merge_builds

    _setup_logging(False)
    _not_a_file(out_dir, "an output folder to --out")
    s = merge_builds(list(parts), out_dir)
    counts = ", ".join(f"{k}: {v}" for k, v in s.images.items())
    out.print(f"[green]merged[/green] {len(parts)} parts into {s.out} ({counts}; {len(s.classes)} classes)",
              soft_wrap=True)


# --------------------------------------------------------------------------- publish
@app.command()
@_guarded
def publish(
    build_dir: Annotated[Path, typer.Argument(help="Output folder of `mfsc build`.")],
    repo_id: Annotated[str, typer.Option(help="Hub dataset repository, ORG/NAME.")] = "ORG/NAME",
    private: Annotated[bool, typer.Option(help="Create the repository as private.")] = False,
    dry_run: Annotated[Path | None, typer.Option(help="Write what would be uploaded into this folder instead.")]
    = None,
    license: Annotated[str | None, typer.Option(
        help="Hub license id.", show_default="the source data set's")] = None,
) -> None:
    """Push both configs and the card to the Hub, or write them locally with --dry-run OUT."""
    from mfsc_builder import publish as pub

    _setup_logging(False)
    _not_a_file(build_dir, "the output folder of `mfsc build`")
    _not_a_file(dry_run, "a folder to --dry-run")
    if dry_run is not None:
        folder = pub.dry_run(build_dir, dry_run, repo_id=repo_id, license=license)
        out.print(f"[green]dry run[/green] written to {folder} (README.md + data/<config>/<split>-*.parquet)")
        return
    if repo_id == "ORG/NAME":
        raise BuildError("give --repo-id ORG/NAME (or --dry-run OUT to only write the files)")
    url = pub.push(build_dir, repo_id, private=private, license=license)
    out.print(f"[green]published[/green] {url}")


# --------------------------------------------------------------------------- import-official
@app.command("import-official")
@_guarded
def import_official(
    file: Annotated[Path, typer.Argument(help="The public PromptAD/fine_grained_prompts.py (read, never run).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the classes dataset.")],
    classes: Annotated[str | None, typer.Option(
        help="Comma-separated class names.", show_default="all in total_classes2id")] = None,
) -> None:
    """Write the paper's own captions and defect states as a `classes` dataset (provenance official)."""
    from mfsc_builder.official import import_official as run

    _setup_logging(False)
    _not_a_file(out_dir, "an output folder to --out")
    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    s = run(file, out_dir, names)
    out.print(f"[green]imported[/green] {len(s.classes)} classes from {file} into {s.out}/classes "
              f"(sha256 {s.sha256[:12]}; train with --captions {s.out})", soft_wrap=True)
    for note in s.notes:
        err.print(note, style="yellow", markup=False, soft_wrap=True)


# --------------------------------------------------------------------------- show
@app.command()
@_guarded
def show(
    build_dir: Annotated[Path, typer.Argument(help="Output folder of `mfsc build` (or of `mfsc merge`).")],
    class_name: Annotated[str | None, typer.Option("--class", help="Class to show.", show_default="the first")] = None,
    image_id: Annotated[str | None, typer.Option(
        "--image", help="Image id to show.", show_default="an anomalous image of the class")]
    = None,
) -> None:
    """Print a class record and one image record of a build, readably."""
    from mfsc_builder.show import show_build

    show_build(build_dir, class_name=class_name, image_id=image_id, console=out)


# --------------------------------------------------------------------------- demo data
@app.command("demo-data")
@_guarded
def demo_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder for the synthetic data set (MVTec-AD layout).")],
    seed: Annotated[int, typer.Option(help="Seed: same seed, same bytes.")] = 0,
    visa_raw: Annotated[Path | None, typer.Option(help="Also convert it to the VisA raw layout here.")] = None,
) -> None:
    """Write the project's small synthetic data set (3 classes, about 0.5 MB, in about a second)."""
    from fsad_data import make_demo_data, to_visa_raw

    _not_a_file(visa_raw, "a folder to --visa-raw")
    root = make_demo_data(out_dir, seed=seed)
    out.print(f"[green]demo data[/green] written to {root}")
    if visa_raw is not None:
        out.print(f"[green]VisA raw layout[/green] written to {to_visa_raw(root, visa_raw)}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
