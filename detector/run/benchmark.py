"""The paper's protocol in one command: train + evaluate every (class, shots, seed) cell, then tables.

Cells live in ``OUT/cells/<method>/<class>/k<shots>_s<seed>/`` (``checkpoint/``, metrics.json, overlays,
report). A cell is finished when its metrics.json exists (written atomically, last), so a rerun skips it:
the benchmark resumes after a crash or Ctrl-C. ``method`` is ``finegrainedad``, plus ``promptad`` (the
class-name-only baseline) with ``--baseline promptad``. With ``--variants 'NAME=OPTIONS;...'``
(detector.recipes) each variant NAME replaces ``finegrainedad``: the same cells trained with the run's recipe
plus the variant's options, and a side-by-side table per shot count.

Shards: the cell list is sorted (method, class, shots, seed) and cell i belongs to shard i mod N, so N
machines with ``--num-shards N --shard-index I`` share the work without talking; ``--merge`` then
assembles the tables from whatever OUT/cells holds (copy the cell folders together first).

Tables (``OUT/tables``): per method and shot count, one row per class and a mean row, each metric as
mean ± sample std (ddof 1; 0 for one seed) over seeds, in percent. The mean row averages the classes
within each seed first, then takes mean ± std of those per-seed means. ``summary.md`` sets the mean
image / pixel AUROC next to the paper's reported numbers (marked "paper") when the data set is
MVTec-AD or VisA, and under "What was run" the recipe, caption source (the records' provenance),
defect vocabulary, evaluation resolution and weights (tag, SHA-256) the cells used: numbers from another
recipe, captions or weights are not the paper's table. ``report.html`` shows the same tables.
"""
from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from detector.config import TrainConfig
from detector.errors import DetectorError
from detector.eval import report
from detector.eval.metrics import METRIC, METRIC_KEYS, METRICS
from detector.method.choices import BASELINES
from detector.method.scoring import DEFAULT_BRANCH, EVAL_RESOLUTION
from detector.method.weights import is_random_weights
from detector.recipes import train_config_fields
from detector.run.evaluate import METRICS_JSON, RANDOM_WEIGHTS_NOTE, EvalSettings, Predictor, evaluate_model
from detector.run.outputs import write_csv
from detector.run.train import train_and_save
from detector.store.captions import load_class_record
from detector.store.checkpoint import CONFIG_FILE, checkpoint_info
from detector.store.data import class_test_samples, readable, select_class_shots
from detector.store.files import BENCHMARK_FORMAT, OwnOutput, check_replaceable, output_lock
from detector.store.schemas import read_cell_metrics, read_json
from detector.store.thresholds import checkpoint_sha256
from fsad_data import Sample, read_dataset
from fsad_data.atomic import write_text_atomic

METHOD = "finegrainedad"
PAPER_FILE = Path(__file__).resolve().parents[1] / "configs" / "paper_results.json"  # beside the recipes


def _paper_results() -> tuple[tuple[str, ...], dict[tuple[str, str], dict[int, tuple[float, ...]]]]:
    """The paper's figures the summary sets beside ours (``configs/paper_results.json``): its metric keys and
    ``{(method, data set): {k: figures in %}}``."""
    data = json.loads(PAPER_FILE.read_text(encoding="utf-8"))
    results = {(method, dataset): {int(k): tuple(v) for k, v in by_k.items()}
               for method, by_set in data["results"].items() for dataset, by_k in by_set.items()}
    return tuple(data["metrics"]), results


# the paper reports these for every shot count (PAPER), and the side-by-side tables of --variants compare them
SUMMARY_METRICS, PAPER = _paper_results()


@dataclass(frozen=True, order=True)
class Cell:
    """One (method, class, shots, seed) experiment."""

    method: str
    class_name: str
    shots: int
    seed: int

    def folder(self, out: Path) -> Path:
        return Path(out) / "cells" / self.method / self.class_name / f"k{self.shots}_s{self.seed}"


@dataclass
class BenchmarkConfig:
    """Flags of ``detector benchmark``; ``train`` holds TrainConfig overrides (backbone, epochs, ...)."""

    data: Path
    out: Path
    captions: str | None = None
    shots: list[int] = field(default_factory=lambda: [1, 2, 4])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    classes: list[str] | None = None
    baseline: str | None = None
    num_shards: int = 1
    shard_index: int = 0
    merge: bool = False  # only assemble the tables
    resolution: int = EVAL_RESOLUTION
    batch_size: int = 8
    exact_metrics: bool = False  # keep every float32 map (see detector.run.evaluate) instead of the histogram
    layout: str = "auto"
    dataset_name: str | None = None  # default: the data folder's name
    train_config: Path | None = None  # a TrainConfig YAML/JSON the flags override
    recipe: str | None = None  # --recipe: paper (default), ours or a file (detector.recipes)
    variants: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # --variants: (name, fields)
    train: dict[str, Any] = field(default_factory=dict)
    main: bool = True  # run FineGrainedAD itself (False: only the baseline)
    on_error: str = "raise"  # an image that does not decode: stop the cell (naming it) or skip it (listed per cell)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.baseline not in (None, *BASELINES):
            raise DetectorError(f"--baseline {self.baseline!r}: use one of {', '.join(BASELINES)} or leave it out")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise DetectorError(f"--shard-index {self.shard_index} must be in 0..{self.num_shards - 1} "
                                f"(--num-shards {self.num_shards})")
        if not self.main and not self.baseline:
            raise DetectorError("nothing to run: --no-main needs --baseline promptad")
        if self.main and not self.merge and not self.captions and not self.train_config:
            raise DetectorError("FineGrainedAD needs captions: pass --captions DIR (from `mfsc build`) or a Hub "
                                "id; for the class-name baseline alone pass --baseline promptad --no-main")
        for name, _spec in self.variants:
            if name in BASELINES:
                raise DetectorError(f"--variants: {name!r} is a baseline's name; choose another variant name")
        if not self.shots or not self.seeds:
            raise DetectorError("--shots and --seeds need at least one value each, e.g. --shots 1,2,4 --seeds 0,1,2")


def parse_int_list(text: str | list[int] | None, flag: str) -> list[int]:
    """"1,2,4" -> [1, 2, 4] (a clear error otherwise)."""
    if text is None:
        return []
    if isinstance(text, list):
        return [int(v) for v in text]
    try:
        return [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError as exc:
        raise DetectorError(f"{flag} {text!r}: give comma-separated integers, e.g. 1,2,4") from exc


def dataset_key(name: str) -> str | None:
    """'mvtec' / 'visa' when the data set name says so (for the paper's reference numbers)."""
    low = name.lower().replace("-", "").replace("_", "")
    if "mvtec" in low:
        return "mvtec"
    if "visa" in low:
        return "visa"
    return None


def all_cells(config: BenchmarkConfig, classes: list[str]) -> list[Cell]:
    """Every cell, in the fixed sorted order the shards split."""
    main = [name for name, _ in config.variants] or [METHOD]
    methods = (main if config.main else []) + ([config.baseline] if config.baseline else [])
    return sorted(Cell(m, c, int(k), int(s)) for m in methods for c in classes
                  for k in config.shots for s in config.seeds)


def shard_cells(cells: list[Cell], num_shards: int, shard_index: int) -> list[Cell]:
    """Cell i goes to shard i mod N (deterministic, balanced across classes and seeds)."""
    return [c for i, c in enumerate(sorted(cells)) if i % num_shards == shard_index]


def is_finished(cell: Cell, out: Path) -> bool:
    return (cell.folder(out) / METRICS_JSON).is_file()


def train_config_for(cell: Cell, config: BenchmarkConfig) -> TrainConfig:
    """The TrainConfig of one cell: recipe < file < flags < the cell's variant < its class/shots/seed/out."""
    own = {"captions": config.captions, "data": str(config.data), "class_name": cell.class_name,
           "shots": cell.shots, "seed": cell.seed, "layout": config.layout,
           "out": str(cell.folder(config.out) / "checkpoint"), "on_error": config.on_error,
           "baseline": cell.method if cell.method in BASELINES else None}
    overrides = {k: v for k, v in config.train.items() if v is not None}
    base = train_config_fields(config.recipe, config.train_config)
    variant = dict(config.variants).get(cell.method, {})
    merged = {**base, **overrides, **variant, **own}
    where = f"{config.train_config} (with the benchmark's flags)" if config.train_config else "benchmark flags"
    return TrainConfig.from_dict(merged, source=where)


def default_trainer(train_config: TrainConfig) -> Predictor:
    """Train one cell (resumable inside the cell: ``<checkpoint>.partial/``) and save its checkpoint;
    returns the in-memory model (no reload needed)."""
    return train_and_save(train_config, progress=False)


def run_cell(cell: Cell, config: BenchmarkConfig, samples: list[Sample],
             trainer: Callable[[TrainConfig], Predictor] = default_trainer,
             skipped: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Train and evaluate one cell into its folder; returns the metrics. ``skipped``: the test images left out
    under --on-error skip (recorded in the cell's metrics.json)."""
    tc = train_config_for(cell, config)
    t0 = time.perf_counter()
    model = trainer(tc)
    t1 = time.perf_counter()
    meta = getattr(model, "meta", {}) or {}
    info = checkpoint_info(meta) if meta else {"meaningful": not is_random_weights(tc.pretrained)}
    info.update(method=cell.method, shots=cell.shots, seed=cell.seed, dataset=dataset_name(config),
                checkpoint=str(Path(tc.out)), timing_s={"train": t1 - t0})
    if skipped:
        info["skipped"] = skipped
    ckpt = Path(tc.out)
    sha = checkpoint_sha256(ckpt) if (ckpt / CONFIG_FILE).is_file() else None
    res = evaluate_model(model, samples, cell.folder(config.out), EvalSettings(class_name=cell.class_name,
                         resolution=config.resolution, branch=DEFAULT_BRANCH, batch_size=config.batch_size,
                         info=info, checkpoint_sha256=sha, card_dir=ckpt if sha else None,
                         exact_metrics=config.exact_metrics, captions=tc.captions))
    return res.metrics


MANIFEST = "benchmark.json"  # the settings every finished cell of OUT was computed with
CELL_NAME = re.compile(r"^k(\d+)_s(\d+)$")
# what may differ between the cells of one benchmark (the grid, where things are written, how memory is spent,
# where the inputs live) and so is left out of the settings a rerun must share
CELL_FIELDS = ("class_name", "shots", "seed", "out", "baseline", "restart", "text_checkpointing", "device", "data",
               "captions", "layout", "on_error")


def method_settings(config: BenchmarkConfig, classes: list[str]) -> dict[str, dict[str, Any]]:
    """Per method (FineGrainedAD, a variant, a baseline): the training and evaluation settings of its cells."""
    out: dict[str, dict[str, Any]] = {}
    for cell in all_cells(config, classes):
        if cell.method in out:
            continue
        tc = asdict(train_config_for(cell, config))
        settings = {k: v for k, v in tc.items() if k not in CELL_FIELDS}
        settings.update(resolution=config.resolution, exact_metrics=config.exact_metrics)
        out[cell.method] = json.loads(json.dumps(settings, default=str))
    return out


def check_settings(config: BenchmarkConfig, classes: list[str]) -> None:
    """Refuse a rerun into OUT with other settings than its finished cells were computed with (they would be
    reported as if run with these); more classes, shots, seeds or methods extend the same benchmark. Records the
    settings in OUT/benchmark.json."""
    out = Path(config.out)
    path = out / MANIFEST
    current = method_settings(config, classes)
    stored: dict[str, Any] = {}
    if path.is_file():
        data = read_json(path, f"delete it only together with {out / 'cells'}, or use another --out")
        if not isinstance(data, dict) or data.get("format") != BENCHMARK_FORMAT or not isinstance(
                data.get("methods"), dict):
            raise DetectorError(f"{path} is not a benchmark manifest of `detector benchmark`; use another --out")
        stored = data["methods"]
    for method, now in current.items():
        before = stored.get(method)
        if not isinstance(before, dict) or before == now:
            continue
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        what = ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
        raise DetectorError(f"{out} holds a benchmark run with other settings ({method}: {what}); its finished "
                            f"cells would be reported as if run with these: use another --out, or delete "
                            f"{out / 'cells'} and {path} to recompute")
    merged = {**stored, **current}
    if merged != stored or not path.is_file():
        write_text_atomic(path, json.dumps({"format": BENCHMARK_FORMAT, "methods": merged}, indent=2, sort_keys=True)
                          + "\n")


def check_cells(config: BenchmarkConfig) -> None:
    """Refuse what would fail every cell of a day-long run, before the first one trains: shot counts (at
    least 1, at most the class's normal train images), classes missing from the captions, a missing GPU."""
    import torch  # here: the rest of the benchmark's bookkeeping needs no torch

    classes = discover_classes(config)
    cells = all_cells(config, classes)
    device = train_config_for(cells[0], config).device
    try:
        cuda = torch.device(device).type == "cuda"
    except RuntimeError as exc:
        raise DetectorError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from exc
    if cuda and not torch.cuda.is_available():
        raise DetectorError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    samples = read_dataset(config.data, layout=config.layout, classes=classes)
    captioned: set[str] = set()
    for cell in cells:
        tc = train_config_for(cell, config)
        select_class_shots(samples, cell.class_name, tc.shots, tc.seed, tc.shots_file)
        if cell.method not in BASELINES and cell.class_name not in captioned:  # FineGrainedAD or a variant
            load_class_record(tc.captions, cell.class_name)
            captioned.add(cell.class_name)


def dataset_name(config: BenchmarkConfig) -> str:
    return config.dataset_name or Path(config.data).resolve().name


def discover_classes(config: BenchmarkConfig) -> list[str]:
    """The classes to run: --classes, else every class of the data set."""
    if config.classes:
        return list(config.classes)
    found = sorted({s.class_name for s in read_dataset(config.data, layout=config.layout)})
    if not found:
        raise DetectorError(f"{config.data}: no classes found; check --data and --layout")
    return found


# summary.md, report.html and tables/ would overwrite a user's files of those names: only a benchmark is replaced
BENCHMARK_OUTPUT = OwnOutput("a benchmark of `detector benchmark`", f"{MANIFEST} or cells/",
                             lambda path: (path / MANIFEST).is_file() or (path / "cells").is_dir())


def run_benchmark(config: BenchmarkConfig, trainer: Callable[[TrainConfig], Predictor] = default_trainer,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run this shard's unfinished cells, then (single shard, or --merge) write the tables.

    One run per OUT (per shard of OUT when sharded: shards may share a folder), and one per cell, locked
    with ``detector.store.files.output_lock``: a second benchmark into the same folder is refused at once, never
    trains or evaluates a cell that another run is computing."""
    out = Path(config.out)
    check_replaceable(out, BENCHMARK_OUTPUT)
    sharded = config.num_shards > 1 and not config.merge
    shard = f"{out.name}.shard-{config.shard_index}-of-{config.num_shards}" if sharded else None
    with output_lock(out, "detector benchmark", name=shard):
        if config.merge:
            return merge(out, dataset_name(config), log=log)
        return _run_shard(config, trainer, log)


def _run_shard(config: BenchmarkConfig, trainer: Callable[[TrainConfig], Predictor],
               log: Callable[[str], None]) -> dict[str, Any]:
    out = Path(config.out)
    classes = discover_classes(config)
    check_settings(config, classes)
    cells = shard_cells(all_cells(config, classes), config.num_shards, config.shard_index)
    todo = [c for c in cells if not is_finished(c, out)]
    log(f"shard {config.shard_index + 1}/{config.num_shards}: {len(cells)} cells, {len(cells) - len(todo)} "
        f"already finished, {len(todo)} to run")
    samples_by_class: dict[str, tuple[list[Sample], list[dict[str, str]]]] = {}
    failures: list[str] = []
    for i, cell in enumerate(todo, 1):
        if cell.class_name not in samples_by_class:
            samples_by_class[cell.class_name] = readable(
                class_test_samples(config.data, cell.class_name, config.layout), config.on_error)
        t0 = time.perf_counter()
        with output_lock(cell.folder(out), "detector benchmark"):  # another shard split may hold this cell
            if is_finished(cell, out):  # finished by another run since this one listed its cells
                log(f"[{i}/{len(todo)}] {cell.method} {cell.class_name} k={cell.shots} seed={cell.seed}: finished "
                    "by another run")
                continue
            try:
                test, skipped = samples_by_class[cell.class_name]
                m = run_cell(cell, config, test, trainer, skipped)
            except Exception as exc:  # noqa: BLE001 - one failed cell must not stop the others
                write_text_atomic(cell.folder(out) / "error.txt", f"{exc.__class__.__name__}: {exc}\n")
                failures.append(f"{cell.method}/{cell.class_name}/k{cell.shots}_s{cell.seed}: {exc}")
                log(f"[{i}/{len(todo)}] {cell.method} {cell.class_name} k={cell.shots} seed={cell.seed}: FAILED: "
                    f"{exc}")
                continue
            (cell.folder(out) / "error.txt").unlink(missing_ok=True)  # an earlier failure of this cell is history
        log(f"[{i}/{len(todo)}] {cell.method} {cell.class_name} k={cell.shots} seed={cell.seed}: "
            + ", ".join(f"{METRIC[k].title} {_pct(m.get(k))}" for k in SUMMARY_METRICS)
            + f" ({time.perf_counter() - t0:.1f} s)")
    result: dict[str, Any] = {"cells": len(cells), "ran": len(todo) - len(failures), "failures": failures}
    failed = DetectorError(f"{len(failures)} cell(s) failed (see error.txt in their folders): "
                           + "; ".join(failures[:3]))
    if failures and len(failures) == len(todo) and not any(is_finished(c, out) for c in cells):
        raise failed  # nothing to tabulate: the cells' own errors say more than an empty merge would
    if config.num_shards == 1:
        result.update(merge(out, dataset_name(config), log=log))
    else:
        log("shard done; after all shards finish run the same command with --merge to write the tables")
    if failures:
        raise failed
    return result


def _pct(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * float(v):.2f}"


# ---- merge ---------------------------------------------------------------------------------------


def collect_cells(out: Path) -> list[dict[str, Any]]:
    """Every finished cell's metrics.json under OUT/cells, as flat rows."""
    rows = []
    for path in sorted((Path(out) / "cells").glob(f"*/*/*/{METRICS_JSON}")):
        method, class_name, ks = path.parts[-4], path.parts[-3], path.parts[-2]
        name = CELL_NAME.match(ks)
        if name is None:
            raise DetectorError(f"{path.parent}: a cell folder is named k<shots>_s<seed> (e.g. k1_s0), so its shots "
                                "and seed are known; rename or remove it before --merge")
        data = read_cell_metrics(path)
        row = {"method": method, "class_name": class_name, "shots": int(name[1]), "seed": int(name[2]),
               "meaningful": data.meaningful}
        for m in METRIC_KEYS:
            v = data.metrics.get(m)
            row[m] = float("nan") if v is None else float(v)
        rows.append(row)
    return rows


def run_settings(out: Path) -> tuple[list[str], list[list[str]]]:
    """What the cells actually ran, per method (distinct values joined): recipe, caption source, defect
    vocabulary, evaluation resolution, weights (tag and SHA-256), so the paper's numbers are read beside them."""
    seen: dict[str, dict[str, list[str]]] = {}
    for path in sorted((Path(out) / "cells").glob(f"*/*/k*_s*/{METRICS_JSON}")):
        d = json.loads(path.read_text())
        sha = d.get("weights_sha256")
        weights = (f"{d.get('backbone')} / {d.get('pretrained')}" + (f" (sha256 {sha[:12]}…)" if sha else "")
                   if d.get("meaningful", True) else f"{d.get('backbone')} / random (not meaningful)")
        values = {"recipe": d.get("recipe") or "paper (default)", "captions": d.get("captions") or "–",
                  "defect_vocab": d.get("defect_vocab") or "–", "resolution": str(d.get("resolution") or "–"),
                  "weights": weights}
        per = seen.setdefault(path.parts[-4], {})
        for k, v in values.items():
            if str(v) not in per.setdefault(k, []):
                per[k].append(str(v))
    header = ["method", "recipe", "captions", "defect vocabulary", "resolution (px)", "weights"]
    keys = ("recipe", "captions", "defect_vocab", "resolution", "weights")
    return header, [[m, *(" / ".join(per[k]) for k in keys)] for m, per in sorted(seen.items())]


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per (method, shots, class), plus a 'mean' class (classes averaged per seed)."""
    out: list[dict[str, Any]] = []
    keys = sorted({(r["method"], r["shots"]) for r in rows})
    for method, k in keys:
        sub = [r for r in rows if r["method"] == method and r["shots"] == k]
        classes = sorted({r["class_name"] for r in sub})
        for c in classes:
            cr = [r for r in sub if r["class_name"] == c]
            entry: dict[str, Any] = {"method": method, "shots": k, "class_name": c, "n_seeds": len(cr)}
            for m in METRIC_KEYS:
                entry[f"{m}_mean"], entry[f"{m}_std"] = _mean_std([r[m] for r in cr])
            out.append(entry)
        seeds = sorted({r["seed"] for r in sub})
        entry = {"method": method, "shots": k, "class_name": "mean", "n_seeds": len(seeds)}
        for m in METRIC_KEYS:
            per_seed = []
            for s in seeds:
                vals = [r[m] for r in sub if r["seed"] == s and not math.isnan(r[m])]
                if vals:
                    per_seed.append(sum(vals) / len(vals))
            entry[f"{m}_mean"], entry[f"{m}_std"] = _mean_std(per_seed)
        out.append(entry)
    return out


def side_by_side(agg: list[dict[str, Any]]) -> dict[int, tuple[list[str], list[list[str]]]]:
    """Per shot count with more than one method (variants, baseline): one row per class (and the mean), the
    image and pixel AUROC of every method in adjacent columns."""
    out: dict[int, tuple[list[str], list[list[str]]]] = {}
    for k in sorted({a["shots"] for a in agg}):
        sub = [a for a in agg if a["shots"] == k]
        methods = sorted({a["method"] for a in sub}, key=lambda m: (m in BASELINES, m))
        if len(methods) < 2:
            continue
        header = ["class", *(f"{m}: {METRIC[key].title}" for m in methods for key in SUMMARY_METRICS)]
        classes = sorted({a["class_name"] for a in sub} - {"mean"}) + ["mean"]
        by = {(a["method"], a["class_name"]): a for a in sub}
        rows = []
        for c in classes:
            row = [c]
            for m in methods:
                a = by.get((m, c))
                for key in SUMMARY_METRICS:
                    row.append(_pm(a[f"{key}_mean"], a[f"{key}_std"]) if a else "–")
            rows.append(row)
        out[k] = (header, rows)
    return out


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def benchmark_plots(agg: list[dict[str, Any]], key: str | None) -> list[Any]:
    """Per method and summary metric: bars per class (and the mean) for each shot count, mean ± std over
    seeds as error bars, the paper's mean beside ours (MVTec-AD / VisA)."""
    plots = []
    for method in sorted({a["method"] for a in agg}):
        sub = [a for a in agg if a["method"] == method]
        classes = [c for c in dict.fromkeys(a["class_name"] for a in sub) if c != "mean"] + ["mean"]
        paper_method = method if method in BASELINES else METHOD
        for i, metric in enumerate(SUMMARY_METRICS):
            series, reference = {}, {}
            for k in sorted({a["shots"] for a in sub}):
                cells = {a["class_name"]: a for a in sub if a["shots"] == k}
                series[f"{k}-shot"] = ([100 * cells[c][f"{metric}_mean"] if c in cells else math.nan for c in classes],
                                       [100 * cells[c][f"{metric}_std"] if c in cells else math.nan for c in classes])
                ref = PAPER.get((paper_method, key), {}).get(k) if key else None
                if ref:
                    reference[f"{k}-shot"] = ref[i]
            title = f"{method}: {METRIC[metric].title} per class (%, mean ± std over seeds)"
            plots.append(report.Plot(title + ("; black ticks: the paper's mean" if reference else ""),
                                     report.bars_plot(title, classes, series, reference or None)))
    return plots


def merge(out: Path, dataset: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Assemble OUT/tables/*.csv|md, OUT/summary.md and OUT/report.html from the finished cells."""
    out = Path(out)
    rows = collect_cells(out)
    if not rows:
        raise DetectorError(f"{out}/cells holds no finished cell (metrics.json); run the benchmark first")
    agg = aggregate(rows)
    meaningful = all(r["meaningful"] for r in rows)
    tables_dir = out / "tables"
    write_csv(out / "cells.csv", rows)
    md_parts = [f"# Benchmark: {dataset}", ""]
    if not meaningful:
        md_parts += [f"**{RANDOM_WEIGHTS_NOTE[0].upper()}{RANDOM_WEIGHTS_NOTE[1:]}.**", ""]
    html_tables = []
    header = ["class", "seeds", *(m.title for m in METRICS)]
    for method, k in sorted({(a["method"], a["shots"]) for a in agg}):
        sub = [a for a in agg if a["method"] == method and a["shots"] == k]
        name = f"{dataset}_{method}_k{k}"
        write_csv(tables_dir / f"{name}.csv", sub)
        body = [[a["class_name"], str(a["n_seeds"]), *(_pm(a[f"{m}_mean"], a[f"{m}_std"]) for m in METRIC_KEYS)]
                for a in sub]
        table_md = markdown_table(header, body)
        write_text_atomic(tables_dir / f"{name}.md", f"## {dataset}, {method}, {k}-shot (%, mean ± std over seeds)\n\n"
                          f"{table_md}\n")
        md_parts += [f"## {method}, {k}-shot (%, mean ± std over seeds)", "", table_md, ""]
        html_tables.append(report.Table(f"{method}, {k}-shot (%, mean ± std over seeds)", header, body))
    # summary: mean image / pixel AUROC per method and shots, next to the paper's numbers
    key = dataset_key(dataset)
    s_header = ["method", "shots", *(METRIC[k].title for k in SUMMARY_METRICS),
                *(f"paper {METRIC[k].title}" for k in SUMMARY_METRICS)]
    s_rows = []
    for a in agg:
        if a["class_name"] != "mean":
            continue
        paper_method = a["method"] if a["method"] in BASELINES else METHOD  # variants compare with the paper's
        ref = PAPER.get((paper_method, key), {}).get(a["shots"]) if key else None
        s_rows.append([a["method"], str(a["shots"]), *(_pm(a[f"{k}_mean"], a[f"{k}_std"]) for k in SUMMARY_METRICS),
                       *(f"{v:.2f} (paper)" if ref else "–" for v in (ref or (None,) * len(SUMMARY_METRICS)))])
    summary_md = markdown_table(s_header, s_rows)
    side = side_by_side(agg)
    for k, (v_header, v_rows) in side.items():
        title = f"Side by side, {k}-shot (image / pixel AUROC, %, mean ± std over seeds)"
        v_md = markdown_table(v_header, v_rows)
        write_text_atomic(tables_dir / f"{dataset}_side_by_side_k{k}.md", f"## {dataset}, {title}\n\n{v_md}\n")
        md_parts += [f"## {title}", "", v_md, ""]
        html_tables.append(report.Table(title, v_header, v_rows))
    r_header, r_rows = run_settings(out)
    md_parts[2:2] = ["## Summary (mean over classes)", "", summary_md, "", "## What was run", "",
                     markdown_table(r_header, r_rows), ""]
    write_text_atomic(out / "summary.md", "\n".join(md_parts) + "\n")
    notes = [] if meaningful else [RANDOM_WEIGHTS_NOTE]
    report.write_report(out / "report.html", report.Report(
        f"FineGrainedAD benchmark: {dataset}", notes,
        [report.Table("Summary (mean over classes)", s_header, s_rows), report.Table("What was run", r_header, r_rows),
         *html_tables],
        plots=benchmark_plots(agg, key)))
    log(f"tables written to {tables_dir}, summary {out / 'summary.md'}, report {out / 'report.html'}")
    return {"rows": rows, "aggregate": agg, "summary": s_rows, "summary_md": summary_md,
            "meaningful": meaningful}
