"""``detector``: train, eval, predict, benchmark (FineGrainedAD, arXiv 2510.26464).

Heavy libraries (torch, open_clip) are imported inside the command bodies so ``detector --help`` is
instant. A ``DetectorError`` or ``DataError`` becomes one red line on stderr and exit code 1 (typer's
usage errors: 2), never a traceback.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

app = typer.Typer(help="FineGrainedAD few-shot anomaly detector: train, eval, predict, benchmark.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

T = TypeVar("T")


def _user_errors() -> tuple[type[BaseException], ...]:
    from detector.errors import DetectorError
    from fsad_data.errors import DataError

    return (DetectorError, DataError)


def _fail(message: str, code: int = 1) -> typer.Exit:
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, highlight=False, soft_wrap=True).print(Text(message, style="red"))
    return typer.Exit(code)


def _run(body: Callable[[], T]) -> T:
    """Run a command body; user errors become one red line and exit 1, Ctrl-C exit 130."""
    try:
        return body()
    except KeyboardInterrupt:
        raise _fail("interrupted; finished work is kept (benchmark cells resume on rerun)", 130) from None
    except _user_errors() as exc:
        raise _fail(f"error: {exc}") from None


def _quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=UserWarning, module="open_clip")


def _console():
    from rich.console import Console

    return Console(highlight=False)


# ---- train ---------------------------------------------------------------------------------------

CaptionsOpt = Annotated[str | None, typer.Option("--captions", help="Caption dataset folder (mfsc build) or Hub id.")]
DataOpt = Annotated[Path | None, typer.Option("--data", help="Data set root (MVTec-AD, VisA, ... layout).")]
BackboneOpt = Annotated[str | None, typer.Option("--backbone", help="open_clip model name [ViT-B-16-plus-240].")]
PretrainedOpt = Annotated[str | None, typer.Option(
    "--pretrained", help="open_clip weights tag, a local file, or 'none' for random weights [laion400m_e32].")]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", help="Pixel-level prompt epochs [100].")]
ImageEpochsOpt = Annotated[int | None, typer.Option("--image-epochs", help="Image-level prompt epochs [50].")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1, mps [cpu].")]
PrecisionOpt = Annotated[str | None, typer.Option("--precision", help="fp32, fp16 or bf16 [fp32].")]
LayoutOpt = Annotated[str | None, typer.Option("--layout", help="Data set layout: auto, mvtec, visa, ... [auto].")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TrainConfig YAML/JSON; flags override it.")]


def _train_overrides(**flags: Any) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items() if v is not None}


@app.command()
def train(
    captions: CaptionsOpt = None,
    data: DataOpt = None,
    class_name: Annotated[str | None, typer.Option("--class", help="Class (folder name) to train.")] = None,
    shots: Annotated[int | None, typer.Option("--shots", help="Number of normal shots k [4].")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Shot selection and prompt init seed [0].")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Checkpoint folder to write.")] = None,
    backbone: BackboneOpt = None,
    pretrained: PretrainedOpt = None,
    epochs: EpochsOpt = None,
    image_epochs: ImageEpochsOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    shots_file: Annotated[Path | None, typer.Option("--shots-file", help="File listing the shot images.")] = None,
    baseline: Annotated[str | None, typer.Option(
        "--baseline", help="'promptad': class-name prompts only (the PromptAD baseline).")] = None,
    config: ConfigOpt = None,
    layout: LayoutOpt = None,
) -> None:
    """Train FineGrainedAD for one class from k normal shots and its MFSC caption record."""

    def body() -> None:
        _quiet_libraries()
        from detector.train import TrainConfig
        from detector.train import train as train_fn

        overrides = _train_overrides(captions=captions, data=data, class_name=class_name, shots=shots, seed=seed,
                                     out=out, backbone=backbone, pretrained=pretrained, epochs=epochs,
                                     image_epochs=image_epochs, device=device, precision=precision,
                                     shots_file=shots_file, baseline=baseline, layout=layout)
        cfg = (TrainConfig.from_file(config, **overrides) if config is not None
               else TrainConfig.from_dict({}, source="flags", **overrides))
        path = train_fn(cfg, progress=True)
        _console().print(f"checkpoint written to {path}")

    _run(body)


# ---- eval ----------------------------------------------------------------------------------------

ExactMetricsOpt = Annotated[bool, typer.Option(
    "--exact-metrics", help="Keep every float32 map for exact pixel metrics (memory grows with the test set) "
    "instead of the constant-memory 2^16-level histogram.")]


@app.command("eval")
def eval_cmd(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Checkpoint folder from `detector train`.")],
    data: Annotated[Path, typer.Option("--data", help="Data set root holding the class's test split.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json, metrics.csv, overlays, report.")],
    resolution: Annotated[int, typer.Option("--resolution", help="Evaluation resolution (400 = the paper).")] = 256,
    branch: Annotated[str, typer.Option("--branch", help="fused, text or visual.")] = "fused",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    device: Annotated[str, typer.Option("--device")] = "cpu",
    precision: Annotated[str, typer.Option("--precision")] = "fp32",
    layout: Annotated[str, typer.Option("--layout")] = "auto",
    class_name: Annotated[str | None, typer.Option("--class", help="Override the checkpoint's class.")] = None,
    exact_metrics: ExactMetricsOpt = False,
) -> None:
    """Evaluate a checkpoint on its class's test split: metrics, overlays, HTML report, F1-max threshold."""

    def body() -> None:
        _quiet_libraries()
        from detector.evaluate import METRIC_COLUMNS, EvalConfig, run_eval

        res = run_eval(EvalConfig(checkpoint=checkpoint, data=data, out=out, resolution=resolution, branch=branch,
                                  batch_size=batch_size, device=device, precision=precision, layout=layout,
                                  class_name=class_name, exact_metrics=exact_metrics))
        _print_metrics(res.metrics, METRIC_COLUMNS, res.metrics_path)
        if res.report_path:
            _console().print(f"report: {res.report_path}")

    _run(body)


def _print_metrics(values: dict[str, float], columns: tuple[str, ...], metrics_path: Path) -> None:
    import json
    import math

    from rich.table import Table

    data = json.loads(Path(metrics_path).read_text())
    title = f"{data.get('class_name')} ({data.get('n_images')} test images, {data.get('resolution')} px)"
    short = {"image_auroc": "img AUROC", "pixel_auroc": "px AUROC", "aupro": "AUPRO", "image_f1_max": "img F1",
             "pixel_f1_max": "px F1", "image_ap": "img AP", "pixel_ap": "px AP"}
    table = Table(title=title + ", %")
    for c in columns:
        table.add_column(short.get(c, c), justify="right")
    table.add_row(*("–" if values.get(c) is None or math.isnan(values[c]) else f"{100 * values[c]:.2f}"
                    for c in columns))
    con = _console()
    con.print(table)
    if not data.get("meaningful", True):
        con.print("[yellow]random (untrained) backbone weights: these figures are not meaningful[/yellow]")
    con.print(f"metrics: {metrics_path}")


# ---- predict -------------------------------------------------------------------------------------


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Checkpoint folder from `detector train`.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for maps (.npy), overlays, masks, scores.")],
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    threshold: Annotated[str, typer.Option(
        "--threshold", help="auto (the F1-max threshold saved by `detector eval`), none, or a number.")] = "none",
    resolution: Annotated[int | None, typer.Option(
        "--resolution", help="Map resolution before resizing to each image [the threshold's, else 256].")] = None,
    branch: Annotated[str, typer.Option("--branch", help="fused, text or visual.")] = "fused",
    device: Annotated[str, typer.Option("--device")] = "cpu",
    precision: Annotated[str, typer.Option("--precision")] = "fp32",
) -> None:
    """Anomaly maps, overlays, optional binary masks and image scores for new images."""

    def body() -> None:
        _quiet_libraries()
        from detector.predict import PredictConfig, run_predict

        rows = run_predict(PredictConfig(checkpoint=checkpoint, inputs=list(inputs), out=out, batch_size=batch_size,
                                         threshold=threshold, resolution=resolution, branch=branch, device=device,
                                         precision=precision))
        _console().print(f"{len(rows)} image(s) scored; scores: {Path(out) / 'scores.csv'}")

    _run(body)


# ---- benchmark -----------------------------------------------------------------------------------


@app.command()
def benchmark(
    data: Annotated[Path, typer.Option("--data", help="Data set root (all classes, or --classes).")],
    out: Annotated[Path, typer.Option("--out", help="Benchmark folder (cells/, tables/, summary.md, report).")],
    captions: CaptionsOpt = None,
    shots: Annotated[str, typer.Option("--shots", help="Comma-separated shot counts.")] = "1,2,4",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")] = "0,1,2",
    classes: Annotated[str | None, typer.Option("--classes", help="Comma-separated classes [all].")] = None,
    baseline: Annotated[str | None, typer.Option(
        "--baseline", help="Also run this baseline ('promptad': class-name prompts).")] = None,
    num_shards: Annotated[int, typer.Option("--num-shards", min=1)] = 1,
    shard_index: Annotated[int, typer.Option("--shard-index", min=0)] = 0,
    merge: Annotated[bool, typer.Option("--merge", help="Only assemble the tables from OUT/cells.")] = False,
    main: Annotated[bool, typer.Option("--main/--no-main", help="Run FineGrainedAD itself (--no-main: only "
                                       "the baseline).")] = True,
    resolution: Annotated[int, typer.Option("--resolution", help="Evaluation resolution (400 = the paper).")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    exact_metrics: ExactMetricsOpt = False,
    dataset_name: Annotated[str | None, typer.Option(
        "--dataset-name", help="Name in the tables (mvtec/visa names add the paper's numbers) [data folder].")] = None,
    backbone: BackboneOpt = None,
    pretrained: PretrainedOpt = None,
    epochs: EpochsOpt = None,
    image_epochs: ImageEpochsOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    layout: Annotated[str, typer.Option("--layout")] = "auto",
    config: ConfigOpt = None,
) -> None:
    """The paper's protocol: train + evaluate every (class, shots, seed), then tables (resumable, shardable)."""

    def body() -> None:
        _quiet_libraries()
        from detector.benchmark import BenchmarkConfig, parse_int_list, run_benchmark

        cfg = BenchmarkConfig(
            data=data, out=out, captions=captions, shots=parse_int_list(shots, "--shots"),
            seeds=parse_int_list(seeds, "--seeds"),
            classes=[c for c in classes.split(",") if c] if classes else None, baseline=baseline,
            num_shards=num_shards, shard_index=shard_index, merge=merge, main=main, resolution=resolution,
            batch_size=batch_size, exact_metrics=exact_metrics, layout=layout, dataset_name=dataset_name,
            train_config=config,
            train=_train_overrides(backbone=backbone, pretrained=pretrained, epochs=epochs, image_epochs=image_epochs,
                                   device=device, precision=precision))
        con = _console()
        result = run_benchmark(cfg, log=con.print)
        if "summary_md" in result:
            con.print(result["summary_md"], markup=False)
            if not result.get("meaningful", True):
                con.print("[yellow]random (untrained) backbone weights: these figures are not meaningful[/yellow]")

    _run(body)


if __name__ == "__main__":  # pragma: no cover
    app()
