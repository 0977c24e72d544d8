"""Checkpoints on the Hugging Face Hub: ``detector push`` uploads one, loaders resolve ``ORG/NAME`` to a folder.

Why a folder: a checkpoint (``model.safetensors`` + ``config.json`` + card) and an export (``model.onnx`` or
OpenVINO files + ``export.json``) are both plain folders, so a Hub snapshot of one is exactly the folder that
was uploaded and every loader (``load_detector``, the ONNX runtime) reads it unchanged. Downloads go through
``huggingface_hub.snapshot_download`` (its cache, ``HF_HUB_OFFLINE=1`` for cache-only); pickles are never
downloaded. A push uploads the checkpoint's safetensors and JSON files and its model card (rendered for the
repo id), nothing else: what goes up is exactly the ``--dry-run`` folder.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from detector.errors import DetectorError
from detector.store.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint
from detector.store.files import OwnOutput, check_replaceable, output_lock
from detector.store.model_card import CARD_FILE, EVALUATION_FILE, render_card
from detector.store.thresholds import THRESHOLD_FILE
from fsad_data.atomic import staged_folder

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.md", "*.onnx", "*.onnx.data", "*.xml", "*.bin"]


def is_hub_id(source: str) -> bool:
    """``ORG/NAME`` as the Hub spells repo ids (one slash, no leading dot or slash)."""
    return bool(HUB_ID.match(source)) and ".." not in source


def resolve_checkpoint(source: str | Path, revision: str | None = None) -> Path:
    """The local folder of ``source``: an existing folder as given, else the snapshot of Hub repo ``ORG/NAME``.

    OpenVINO's ``.bin`` weights are raw buffers, not pickles; torch pickles (``*.pt``, ``*.pth``, ``*.ckpt``)
    are not in the allowed patterns and a snapshot is never unpickled.
    """
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DetectorError(f"{path} is a file; pass a checkpoint or export folder, or a Hub id ORG/NAME")
        return path
    name = str(source)
    if not is_hub_id(name):
        raise DetectorError(f"{name} not found: pass a checkpoint folder (`detector train --out`), an export "
                            "folder (`detector export --out`) or a Hub model id ORG/NAME")
    from huggingface_hub import snapshot_download  # huggingface_hub: only for a Hub id

    try:
        folder = snapshot_download(name, repo_type="model", revision=revision, allow_patterns=ALLOW_PATTERNS)
    except Exception as exc:  # huggingface_hub raises many types (offline, 404, auth): one clear line
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DetectorError(f"{name} is no local folder and could not be fetched from the Hub ({type(exc).__name__}: "
                            f"{first}); check the path or id, `hf auth login` for private repos, and the network "
                            "(HF_HUB_OFFLINE=1 uses only the local cache)") from exc
    return Path(folder)


PUSH_FILES = (WEIGHTS_FILE, CONFIG_FILE, THRESHOLD_FILE, EVALUATION_FILE)
DRY_RUN_MARKER = ".detector-dry-run"  # written by --dry-run only (never uploaded): a folder it may replace


DRY_RUN_OUTPUT = OwnOutput("an earlier dry run of `detector push`", DRY_RUN_MARKER,
                           lambda path: (path / DRY_RUN_MARKER).is_file())


def stage_upload(ckpt_dir: str | Path, out: str | Path, repo_id: str = "ORG/NAME", marker: bool = False) -> Path:
    """Write exactly what ``push_checkpoint`` uploads into ``out`` (replaced whole): the checkpoint's safetensors
    and JSON files and a card rendered for ``repo_id``. Nothing else (never a pickle) is copied. ``out`` is
    replaced only when it is new, empty or an earlier dry run (``DRY_RUN_MARKER``, which ``marker`` writes): a
    README.md alone proves nothing (a thesis, a project). ``out`` is locked while it is written."""

    ckpt = Path(ckpt_dir)
    load_checkpoint(ckpt)  # a complete, checksum-verified checkpoint, or one clear error
    out = Path(out)
    with output_lock(out, "detector push --dry-run"):
        return _stage(ckpt, out, repo_id, marker)


def _stage(ckpt: Path, out: Path, repo_id: str, marker: bool) -> Path:
    """``stage_upload`` under the lock of ``out``."""


    check_replaceable(out, DRY_RUN_OUTPUT, flag="--dry-run")
    with staged_folder(out) as tmp:
        for name in PUSH_FILES:
            if (ckpt / name).is_file():
                shutil.copyfile(ckpt / name, tmp / name)
        (tmp / CARD_FILE).write_text(render_card(ckpt, repo_id), encoding="utf-8")
        if marker:
            (tmp / DRY_RUN_MARKER).write_text(f"detector push --dry-run of {ckpt} for {repo_id}\n", encoding="utf-8")
    return out


def push_checkpoint(ckpt_dir: str | Path, repo_id: str, private: bool = False, dry_run: str | Path | None = None,
                    token: str | None = None, api: Any = None) -> str | Path:
    """Upload a checkpoint folder to the Hub model repo ``repo_id`` (created if needed); returns the repo URL.

    ``dry_run`` (a folder): only write what would be uploaded there and return that folder. The token comes
    from the environment or the Hub login, never from the command line, and is never printed.
    """

    if not is_hub_id(repo_id):
        raise DetectorError(f"--repo-id {repo_id!r} must look like ORG/NAME")
    if dry_run is not None:
        return stage_upload(ckpt_dir, dry_run, repo_id, marker=True)
    if api is None:
        from huggingface_hub import HfApi  # huggingface_hub: only to push

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="detector-push-") as tmp:
        folder = stage_upload(ckpt_dir, Path(tmp) / "upload", repo_id)
        try:
            url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                              commit_message="Upload FineGrainedAD checkpoint (detector push)")
        except Exception as exc:  # network/auth errors of huggingface_hub: one clear line
            raise DetectorError(f"upload of {ckpt_dir} to {repo_id} failed: {type(exc).__name__}: {exc}; check "
                                "`hf auth login` / HF_TOKEN and the network, or use --dry-run OUT") from exc
    return str(url)
