"""Publishing an MFSC build: the dataset card, the Hub's parquet layout (dry run), and the Hub push.

Why a dry run: what goes to the Hub is exactly the dry-run folder (``README.md`` plus
``data/<config>/<split>-XXXXX-of-XXXXX.parquet``), so it can be inspected and loaded offline with
``datasets.load_dataset(OUT, "classes")`` before anything is uploaded. The card's YAML names the two
configurations (``images`` with the splits present, ``classes`` with one ``train`` split), the license
of the source data set, the task categories and the size category.
"""
from __future__ import annotations

import json
import math
import string
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fsad_data.atomic import staged_folder
from mfsc_builder.crop import TEXTURED_CLASSES
from mfsc_builder.errors import BuildError
from mfsc_builder.ownership import (
    DRY_RUN_MARKER,
    check_dry_run_output,
    holding,
    image_storage,
    read_build_info,
)

if TYPE_CHECKING:  # types only: both are heavy, loaded in the command bodies
    import datasets
    from huggingface_hub import HfApi

CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "data_cards" / "mfsc.md"
DEFAULT_MAX_SHARD_BYTES = 500 * 1024 * 1024

# Source data set -> (Hub license id, extra YAML lines, words for the card body).
LICENSES: dict[str, tuple[str, str, str]] = {
    "mvtec": ("cc-by-nc-sa-4.0", "", "MVTec-AD: CC BY-NC-SA 4.0, non-commercial use"),
    "visa": ("cc-by-4.0", "", "VisA: CC BY 4.0"),
    "visa_raw": ("cc-by-4.0", "", "VisA: CC BY 4.0"),
    "realiad": (
        "other",
        "license_name: real-iad-terms\nlicense_link: https://realiad4ad.github.io/Real-IAD/\n",
        "Real-IAD: per the Real-IAD terms of use (research only; accept them on the Real-IAD page)",
    ),
    "synthetic": ("cc0-1.0", "", "synthetic images drawn by this project with fsad_data.synthetic, CC0 1.0"),
    "folder": (
        "other",
        "license_name: see-source\n",
        "the license of the source folder (unknown to the builder: pass --license when publishing)",
    ),
}


@dataclass
class CardInfo:
    """Everything the card template needs, read from a build folder."""

    repo_id: str
    source_name: str
    source_layout: str
    license: str
    license_extra: str
    license_text: str
    splits: dict[str, int]
    classes: list[str]
    backend: str
    model: str
    revision: str
    prompt_version: str
    defect_vocab: str
    reference_selection: str
    status_counts: dict[str, int] = field(default_factory=dict)
    schema_version: int = 1
    class_states: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # class -> (vocab, states)
    textured_classes: list[str] | None = None  # None: not recorded by the build
    skipped: list[str] = field(default_factory=list)  # images the build could not read
    requested_vocab: str = ""  # --defect-vocab as given (a class record says what was really used)
    image_storage: str = "embed"  # mfsc build --images: embed or reference

    @property
    def n_images(self) -> int:
        return sum(self.splits.values())


def size_category(n: int) -> str:
    """The Hub's size bucket for ``n`` rows."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    for limit, name in bounds:
        if n < limit:
            return name
    return "n>1T" if n > 10**12 else "1B<n<10B"


def license_for(layout: str, synthetic: bool = False, override: str | None = None) -> tuple[str, str, str]:
    """(license id, extra YAML, card text) of the source data set; ``override`` is a Hub license id."""
    if override:
        return override, "", f"{override} (set by the publisher)"
    key = "synthetic" if synthetic else layout
    if key not in LICENSES:
        return LICENSES["folder"]
    return LICENSES[key]


def _load_build(build_dir: Path) -> tuple[Any, Any, dict]:
    """(images DatasetDict, classes Dataset, build info) of a build folder, with clear errors."""
    import datasets

    build_dir = Path(build_dir)
    for sub in ("images", "classes"):
        if not (build_dir / sub).is_dir():
            raise BuildError(f"{build_dir / sub} not found; run `mfsc build SOURCE --out {build_dir}` first")
    try:
        images = datasets.load_from_disk(str(build_dir / "images"))
        classes = datasets.load_from_disk(str(build_dir / "classes"))
    except Exception as exc:  # datasets raises several types for a damaged folder
        raise BuildError(f"{build_dir} does not hold a readable MFSC build ({exc}); rebuild it") from exc
    if not isinstance(images, datasets.DatasetDict) or not isinstance(classes, datasets.Dataset):
        raise BuildError(f"{build_dir}: images must be a DatasetDict and classes a Dataset; rebuild it")
    return images, classes, read_build_info(build_dir, must_exist=False)


def _one(values: list[str], default: str = "") -> str:
    """The single value of a column, or the distinct values joined (mixed builds say so)."""
    distinct = sorted({v for v in values if v})
    return ", ".join(distinct) if distinct else default


def card_info(build_dir: Path, repo_id: str, license: str | None = None) -> CardInfo:
    """Read what the card says from the build itself (records carry their provenance)."""
    images, classes, info = _load_build(build_dir)
    rows = classes.select_columns(
        ["class_name", "source_layout", "defect_vocab", "defect_states", "reference_selection", "provenance"]
    ).to_list()
    layout = _one([r["source_layout"] for r in rows], info.get("source_layout", "folder"))
    lic, extra, text = license_for(layout, bool(info.get("synthetic")), license)
    statuses: Counter[str] = Counter()
    for split in images:
        statuses.update(p["status"] for p in images[split]["provenance"])
    prov = [r["provenance"] for r in rows]
    return CardInfo(
        repo_id=repo_id,
        source_name=str(info.get("source_name") or Path(build_dir).resolve().name),
        source_layout=layout,
        license=lic,
        license_extra=extra,
        license_text=text,
        splits={s: images[s].num_rows for s in images},
        classes=sorted(r["class_name"] for r in rows),
        backend=_one([p["backend"] for p in prov], "unknown"),
        model=_one([p["model"] for p in prov], "none"),
        revision=_one([p["revision"] for p in prov], "none"),
        prompt_version=_one([p["prompt_version"] for p in prov], "none"),
        defect_vocab=_one([r["defect_vocab"] for r in rows], "generic"),
        reference_selection=_one([r["reference_selection"] for r in rows], "unknown"),
        status_counts=dict(sorted(statuses.items())),
        schema_version=int(info.get("schema_version", 1)),
        class_states={r["class_name"]: (r["defect_vocab"], list(r["defect_states"])) for r in rows},
        textured_classes=info.get("textured_classes"),
        skipped=[str(x[0]) for x in info.get("skipped", [])],
        requested_vocab=str(info.get("config", {}).get("defect_vocab", "")),
        image_storage=image_storage(info),
    )


def _configs_yaml(splits: list[str]) -> str:
    lines = ["configs:", "- config_name: images", "  data_files:"]
    for s in splits:
        lines += [f"  - split: {s}", f"    path: data/images/{s}-*"]
    lines += ["- config_name: classes", "  data_files:", "  - split: train", "    path: data/classes/train-*"]
    return "\n".join(lines)


LEAK_WARNING = (
    "> **Warning: test information leak.** The defect states were taken from the test folders' defect\n"
    "> names (`--defect-vocab dataset`). Abnormal texts therefore name the real test defects; results of\n"
    "> a detector trained on them are not few-shot results without auxiliary knowledge. Use the `generic`\n"
    "> vocabulary for clean comparisons.\n\n"
)


VOCAB_TEXT = {
    "generic": "`generic`: one fixed list for every class, chosen without looking at any test image",
    "model": "`model`: proposed by the captioning model from a normal reference image of the class",
    "dataset": "`dataset`: the names of the class's test defect folders (see the warning below)",
    "file": "`file:<name>`: a list given by whoever ran the build",
}
ATTRIBUTES_TEXT = (
    "Backend `attributes`, the offline attribute captioner: no model and no prompt (rules version\n"
    "   `{revision}`). It measures the stage-1 regions with OpenCV: colour (the nearest of 18 named colours\n"
    "   in CIE Lab), texture (smooth, striped, granular, textured), shape, count, 3x3 location and\n"
    "   orientation. Records by `provenance.status`: {status}."
)
MODEL_TEXT = (
    "Backend `{backend}`, model `{model}`, revision `{revision}`, prompt version\n"
    "   `{prompt}`. Model answers are validated against the MFSC level schema; an invalid answer is\n"
    "   retried with the validation error and then replaced by the offline attribute captioner's fields.\n"
    "   Per record `provenance.status` says which happened ({status})."
)


def _captioning_text(info: CardInfo, status: str) -> str:
    if info.backend == "attributes":
        return ATTRIBUTES_TEXT.format(revision=info.revision, status=status)
    return MODEL_TEXT.format(backend=info.backend, model=info.model, revision=info.revision,
                             prompt=info.prompt_version, status=status)


def _states_text(info: CardInfo) -> str:
    """Which vocabularies were used (each explained) and every class's states."""
    used = sorted({v.split(":")[0] for v, _ in info.class_states.values()} or {info.defect_vocab})
    lines = [f"- {VOCAB_TEXT.get(v, f'`{v}`')}" for v in used]
    for c, (v, states) in sorted(info.class_states.items()):
        why = ("; the captioning model proposed no usable list"
               if info.requested_vocab == "model" and v != "model" else "")
        lines.append(f"- `{c}` ({v}{why}): {', '.join(states) or 'none'}")
    return "\n".join(lines)


def _textured_text(info: CardInfo) -> str:
    rule = (f"a class is a surface when its name is a known surface class ({', '.join(sorted(TEXTURED_CLASSES))}) "
            "or when most of its reference normal images show no background that can be separated")
    if info.textured_classes is None:
        return f"Foreground masks come from colour statistics; {rule}."
    names = ", ".join(f"`{c}`" for c in info.textured_classes) or "none"
    return (f"Foreground masks come from colour statistics; {rule}. Classes treated as surfaces (the whole "
            f"image is the foreground, no background is described): {names}.")


def _skipped_text(info: CardInfo) -> str:
    if not info.skipped:
        return "none"
    shown = ", ".join(f"`{s}`" for s in info.skipped[:10])
    return f"{len(info.skipped)} ({shown}{', ...' if len(info.skipped) > 10 else ''}); they have no rows"


IMAGE_ROW = {  # the card's "one row is" for the images configuration, per mfsc build --images
    "embed": "one image (train and test) with its mask, regions and MFSC record",
    "reference": "one image's MFSC record, regions and file reference (no pixels: see below)",
}
IMAGE_STORAGE_TEXT = {
    "embed": "The `image` column holds each source file itself when it is an 8-bit RGB PNG or JPEG, else an "
             "RGB PNG of its pixels (gray, 16-bit, palette or rotated files), so every image decodes to RGB. `mask` is a "
             "0/255 PNG (255: defect). `image_file`, `image_file_size` and `image_sha256` (and the "
             "same for `mask_`) name the source file and let you check it.",
    "reference": "**No image or mask pixels are included** (built with `mfsc build --images reference`, for a "
                 "source whose license does not allow redistribution): `image` and `mask` are empty, and "
                 "`image_file` / `mask_file` give each file's path relative to the root of the source data set, "
                 "with `image_file_size` and `image_sha256` (and the same for `mask_`) to check your copy. "
                 "Get the images from the data set's publisher; FineGrainedAD's `detector` reads them from your "
                 "copy with `--data`.",
}


def render_card(info: CardInfo, template: Path = CARD_TEMPLATE) -> str:
    """Fill the card template; the YAML header is checked to parse."""
    if not Path(template).exists():
        raise BuildError(f"card template {template} is missing; reinstall the project from its repository")
    q = json.dumps  # a JSON string is a valid YAML scalar: no quoting surprises
    values = {
        "license": info.license,
        "license_extra": info.license_extra,
        "pretty_name": q(f"MFSC captions for {info.source_name}"),
        "size_category": size_category(info.n_images),
        "configs": _configs_yaml(list(info.splits)),
        "title": f"MFSC captions for {info.source_name}",
        "source_name": info.source_name,
        "source_layout": info.source_layout,
        "license_text": info.license_text,
        "image_splits": ", ".join(f"{s} ({n})" for s, n in info.splits.items()),
        "image_row": IMAGE_ROW[info.image_storage],
        "image_storage": IMAGE_STORAGE_TEXT[info.image_storage],
        "n_images": info.n_images,
        "n_classes": len(info.classes),
        "repo_id": info.repo_id,
        "class_list": ", ".join(f"`{c}`" for c in info.classes) or "none",
        "schema_version": info.schema_version,
        "captioning": _captioning_text(
            info, ", ".join(f"{k}: {v}" for k, v in info.status_counts.items()) or "none"),
        "reference_selection": info.reference_selection,
        "defect_states": _states_text(info),
        "textured": _textured_text(info),
        "skipped": _skipped_text(info),
        "leak_warning": LEAK_WARNING if "dataset" in info.defect_vocab.split(", ") else "",
    }
    text = string.Template(Path(template).read_text(encoding="utf-8")).substitute(values)
    try:
        meta = yaml.safe_load(text.split("---\n", 2)[1])
    except yaml.YAMLError as exc:  # a bug here, not a user error; still say where
        raise BuildError(f"the card rendered from {template} has invalid YAML metadata: {exc}") from exc
    assert isinstance(meta, dict) and "configs" in meta
    return text


def _write_parquet(ds: datasets.Dataset, folder: Path, split: str, max_shard_bytes: int) -> list[Path]:
    """``<split>-XXXXX-of-XXXXX.parquet`` shards of at most about ``max_shard_bytes`` each."""
    n = max(1, math.ceil(ds.data.nbytes / max_shard_bytes)) if ds.num_rows else 1
    n = min(n, max(1, ds.num_rows))
    out = []
    for i in range(n):
        path = folder / f"{split}-{i:05d}-of-{n:05d}.parquet"
        ds.shard(num_shards=n, index=i, contiguous=True).to_parquet(str(path))
        out.append(path)
    return out


def dry_run(build_dir: Path, out: Path, repo_id: str = "ORG/NAME", license: str | None = None,
            max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Write exactly what ``publish`` would upload into ``out`` (replaced atomically as a whole)."""

    out = Path(out)
    with holding(out, "mfsc publish --dry-run"):
        return _dry_run(build_dir, out, repo_id, license, max_shard_bytes)


def _dry_run(build_dir: Path, out: Path, repo_id: str, license: str | None, max_shard_bytes: int) -> Path:
    """``dry_run`` under the lock of ``out``."""
    import datasets

    check_dry_run_output(out)
    info = card_info(build_dir, repo_id, license)
    images, classes, _ = _load_build(build_dir)
    try:
        with staged_folder(out) as tmp:
            was = datasets.is_progress_bar_enabled()
            datasets.disable_progress_bars()
            try:
                for split in images:
                    (tmp / "data" / "images").mkdir(parents=True, exist_ok=True)
                    _write_parquet(images[split], tmp / "data" / "images", split, max_shard_bytes)
                (tmp / "data" / "classes").mkdir(parents=True, exist_ok=True)
                _write_parquet(classes, tmp / "data" / "classes", "train", max_shard_bytes)
            finally:
                if was:
                    datasets.enable_progress_bars()
            (tmp / "README.md").write_text(render_card(info), encoding="utf-8")
            (tmp / DRY_RUN_MARKER).write_text(f"mfsc publish --dry-run of {Path(build_dir).resolve()}\n",
                                              encoding="utf-8")
    except OSError as exc:
        raise BuildError(f"could not write the dry run to {out}: {exc}; check free space and permissions") from exc
    return out


def push(build_dir: Path, repo_id: str, private: bool = False, license: str | None = None,
         token: str | None = None, api: HfApi | None = None) -> str:
    """Create the dataset repo (if needed) and upload the dry-run folder; returns the repo URL.

    Old parquet files under ``data/`` are deleted in the same commit, so a smaller rebuild leaves no
    stale shards behind. The token comes from the environment or the Hub login, never from arguments
    that would end up in shell history, and is never printed.
    """
    if "/" not in repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise BuildError(f"--repo-id {repo_id!r} must look like ORG/NAME")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="mfsc-publish-") as tmp:
        folder = dry_run(build_dir, Path(tmp) / "upload", repo_id=repo_id, license=license)
        try:
            url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            api.upload_folder(
                repo_id=repo_id, repo_type="dataset", folder_path=str(folder),
                commit_message="Upload MFSC captions (mfsc publish)", delete_patterns=["data/**"],
                ignore_patterns=[DRY_RUN_MARKER],
            )
        except BuildError:
            raise
        except Exception as exc:  # network/auth errors of huggingface_hub: one clear line
            raise BuildError(
                f"upload of {build_dir} to {repo_id} failed: {type(exc).__name__}: {exc}; "
                "check `hf auth login` / HF_TOKEN and the network, or use --dry-run OUT"
            ) from exc
    return str(url)
