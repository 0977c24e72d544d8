"""The model card of a checkpoint folder: ``README.md`` with YAML metadata, as the Hub shows it.

Why every checkpoint carries one: a detector shared on the Hub (``detector push``) must say what it is
without anyone loading it: the class, the shot images (file names), where the captions came from and how
they were made, the backbone and the SHA-256 of its weights (or that they are random), the recipe, the
training losses, and the evaluation when one was run. Everything is read from the checkpoint's own
``config.json`` meta and, after ``detector eval``, from ``evaluation.json`` (the last evaluation per branch,
written by ``record_evaluation``), so the card never states what the files do not.

``write_card`` runs after every save (``FineGrainedAD.save``) and after every evaluation.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from detector.errors import DetectorError
from detector.eval.metrics import METRICS
from detector.method.weights import RANDOM_WEIGHTS, is_random_weights
from detector.store.checkpoint import CONFIG_FILE, backbone_name, shot_files
from fsad_data.atomic import write_json_atomic, write_text_atomic
from fsad_data.folder_lock import FolderLock

CARD_FILE = "README.md"
EVALUATION_FILE = "evaluation.json"
EVALUATION_LOCK, EVALUATION_LOCK_SECONDS = ".evaluation.lock", 60.0  # while evaluation.json and the card change
RANDOM_NOTE = ("**Random backbone weights** (`--pretrained none`): this checkpoint proves that the pipeline runs; "
               "its scores and maps are not meaningful.")
METRIC_NAMES = {m.key: m.title for m in METRICS if m.detection}  # the card's table: the detection metrics


def _meta(ckpt_dir: Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / CONFIG_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8")).get("meta")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise DetectorError(f"{path} cannot be read ({exc}); pass a checkpoint folder from `detector train`") from exc
    if not isinstance(meta, dict):
        raise DetectorError(f"{path} has no meta object; pass a checkpoint folder from `detector train`")
    return meta


def read_evaluations(ckpt_dir: Path) -> dict[str, Any]:
    """``{branch: evaluation record}`` of CKPT/evaluation.json, {} when the checkpoint was never evaluated."""
    path = Path(ckpt_dir) / EVALUATION_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DetectorError(f"{path} is not valid JSON ({exc}); delete it or run `detector eval` again") from exc
    return data if isinstance(data, dict) else {}


def record_evaluation(ckpt_dir: Path, record: dict[str, Any]) -> None:
    """Keep the summary of ``detector eval``'s metrics.json record in the checkpoint, then refresh the card.
    Two evaluations of one checkpoint (other branches, at once) take turns, so neither loses the other's;
    ``FolderInUse`` when the other one holds it longer than ``EVALUATION_LOCK_SECONDS``."""

    keep = ("class_name", "branch", "resolution", "n_images", "n_anomalous", "n_normal", "meaningful",
            "metrics", "data", "pixel_metrics", "thresholds")  # thresholds: what --threshold auto takes
    with FolderLock(Path(ckpt_dir) / EVALUATION_LOCK, timeout=EVALUATION_LOCK_SECONDS):
        evals = read_evaluations(ckpt_dir)
        evals[str(record.get("branch", "fused"))] = {k: record.get(k) for k in keep if k in record}
        write_json_atomic(Path(ckpt_dir) / EVALUATION_FILE, evals)
        if (Path(ckpt_dir) / CONFIG_FILE).is_file():  # a model evaluated without a checkpoint has no card
            write_card(ckpt_dir)


def card_data(ckpt_dir: Path, repo_id: str | None = None) -> dict[str, Any]:
    """The YAML metadata of the card, from the checkpoint's files only."""
    meta = _meta(ckpt_dir)
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    bb = meta.get("backbone") if isinstance(meta.get("backbone"), dict) else {}
    record = meta.get("record") if isinstance(meta.get("record"), dict) else None
    pretrained = str(bb.get("pretrained") or cfg.get("pretrained") or RANDOM_WEIGHTS)
    random = is_random_weights(pretrained)
    history = meta.get("history") if isinstance(meta.get("history"), dict) else {}
    evals = read_evaluations(ckpt_dir)
    if record is not None:
        captions = {"source": cfg.get("captions"), "class_record": record.get("class_name"),
                    "reference_images": record.get("reference_images"),
                    "reference_selection": record.get("reference_selection"),
                    "defect_vocab": record.get("defect_vocab"), "provenance": record.get("provenance")}
    else:
        captions = {"source": None, "note": "no captions: class-name prompts (the PromptAD baseline)"}
    data: dict[str, Any] = {
        "library_name": "finegrained-ad",
        "tags": ["anomaly-detection", "few-shot", "clip", "finegrained-ad"],
        "finegrained_ad": {
            "class_name": meta.get("class_name"),
            "object_name": meta.get("object_name"),
            "method": "promptad" if meta.get("baseline") == "promptad" else "finegrained-ad",
            "shots": shot_files(meta) or [],
            "seed": cfg.get("seed"),
            "captions": captions,
            "backbone": {"name": backbone_name(meta), "pretrained": pretrained,
                         "weights_sha256": bb.get("weights_sha256"), "tap_layers": bb.get("tap_layers"),
                         "random_weights": random},
            "recipe": {k: cfg[k] for k in sorted(cfg) if k not in ("out", "data", "device", "restart", "captions")},
            "training": {k: {"epochs": len(v), "first": v[0], "last": v[-1]}
                         for k, v in history.items() if isinstance(v, list) and v},
            "evaluation": evals or None,
        },
    }
    if repo_id:
        data["finegrained_ad"]["repo_id"] = repo_id
    if evals and not random:
        data["model-index"] = [{"name": repo_id or f"finegrained-ad-{meta.get('class_name')}", "results": [
            {"task": {"type": "anomaly-detection", "name": "Few-shot anomaly detection"},
             "dataset": {"name": str(e.get("data") or "test split"), "type": str(e.get("class_name"))},
             "metrics": [{"type": k, "name": f"{METRIC_NAMES[k]} ({e.get('branch')}, {e.get('resolution')} px)",
                          "value": round(100 * float(v), 2)}
                         for k, v in (e.get("metrics") or {}).items() if k in METRIC_NAMES and v is not None]}
            for e in evals.values()]}]
    return data


def _table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def render_card(ckpt_dir: Path, repo_id: str | None = None) -> str:
    """The card: YAML metadata (``card_data``) and a short body saying the same in words."""

    data = card_data(ckpt_dir, repo_id)
    f = data["finegrained_ad"]
    bb = f["backbone"]
    name = repo_id or f"FineGrainedAD: {f['class_name']}"
    lines = [f"# {name}", "",
             (f"A FineGrainedAD few-shot anomaly detector for the class `{f['class_name']}` ({f['object_name']}), "
             f"trained from {len(f['shots'])} normal shot(s) with seed {f['seed']} ({f['method']} prompts)."), ""]
    if bb["random_weights"]:
        lines += [RANDOM_NOTE, ""]
    sha = bb["weights_sha256"] or ("none (random weights)" if bb["random_weights"] else "not recorded")
    lines += ["## Contents", "",
              f"- backbone: `{bb['name']}`, weights `{bb['pretrained']}`, SHA-256 `{sha}`",
              "- shots: " + (", ".join(f"`{s}`" for s in f["shots"]) or "none recorded"),
              "- captions: " + (f"`{f['captions']['source']}`, provenance "
                                f"`{json.dumps(f['captions'].get('provenance'))}`" if f["captions"].get("source")
                                else f["captions"].get("note", "from the caption record embedded in config.json")),
              "- files: `model.safetensors` (prompts, text features, visual memory; no pickles) and `config.json`",
              ""]
    if f["training"]:
        lines += ["## Training", "", _table([["prompt set", "epochs", "loss first", "loss last"]] + [
            [k, str(v["epochs"]), f"{v['first']:.4g}", f"{v['last']:.4g}"] for k, v in f["training"].items()]), ""]
    lines += ["## Evaluation", ""]
    if f["evaluation"]:
        rows = [["branch", "px", "images", *METRIC_NAMES.values()]]
        for e in f["evaluation"].values():
            m = e.get("metrics") or {}
            rows.append([str(e.get("branch")), str(e.get("resolution")), str(e.get("n_images")),
                         *("–" if m.get(k) is None else f"{100 * float(m[k]):.2f}" for k in METRIC_NAMES)])
        lines += [_table(rows), "", "Metrics in %, on the class's test split (`detector eval`)."
                  + (" Not meaningful: random weights." if bb["random_weights"] else ""), ""]
    else:
        lines += ["Not evaluated yet (`detector eval --checkpoint DIR --data ROOT --out EVAL` adds it here).", ""]
    lines += ["## Use", "", "```python", "from detector import Detector", "",
              f"det = Detector.load({json.dumps(repo_id or 'path/to/this/folder')})",
              "result = det.predict(['image.png'])[0]   # score, map, mask", "```", ""]
    header = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n\n" + "\n".join(lines)


def write_card(ckpt_dir: Path, repo_id: str | None = None) -> Path:
    """Write (replace) CKPT/README.md atomically."""

    path = Path(ckpt_dir) / CARD_FILE
    write_text_atomic(path, render_card(ckpt_dir, repo_id))
    return path
