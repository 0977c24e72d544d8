"""Which file holds an open_clip weights tag, whether it is here, and whether it is the right file.

Why this module: open_clip 3.3's registry sends the Hugging Face route of ``ViT-B-16-plus-240`` /
``laion400m_e32`` (the paper's weights) to the ``timm/vit_base_patch16_plus_clip_240.laion400m_e31``
repository, i.e. the epoch-31 weights, while its release URL names the epoch-32 file
``vit_b_16_plus_240-laion400m_e32-699c4b84.pt`` (the name carries the first hex digits of its SHA-256).
Rule here: when a tag's Hub repository is named for another tag (timm's ``<model>.<tag>`` repositories),
the release URL is used instead, and a file whose name carries a checksum is verified. Every loaded file's
SHA-256 goes into the checkpoint.

Where files are looked for, as the two download routes leave them:
  - Hub route: ``HF_HUB_CACHE`` (``$HF_HOME/hub``): ``models--ORG--NAME/snapshots/REV/FILE``, the
    safetensors file first, as open_clip tries it first;
  - URL route: open_clip's URL cache ``~/.cache/clip/FILE``.

`python -m detector.method.weights NAME TAG` exits 0 when the weights are cached or can be downloaded, and 1
with one line saying why not (the demo then falls back to `--pretrained none`); open_clip would otherwise
retry a failed download for about a minute.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from detector.errors import DetectorError
from fsad_data.digest import file_sha256

HUB_HOST = "huggingface.co"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")  # files torch.load would unpickle
RANDOM_WEIGHTS = "none"  # the --pretrained value for random (untrained) backbone weights


def is_random_weights(tag: object) -> bool:
    """Whether a ``--pretrained`` value (or a checkpoint's record of it) means random weights: ``none`` in any
    case, empty or missing. The one test every reader uses, so a run on random weights is never called
    meaningful (``--pretrained None`` once trained on random weights while metrics.json said otherwise)."""
    return tag is None or str(tag).strip().lower() in ("", RANDOM_WEIGHTS)

URL_CACHE = "~/.cache/clip"  # open_clip's download_pretrained_from_url default


@dataclass(frozen=True)
class WeightsRoute:
    """Where one tag's file comes from: the Hub (repo + candidate file names) or a release URL."""

    kind: str  # "hub" | "url"
    repo_id: str = ""
    filenames: tuple[str, ...] = ()
    url: str = ""
    sha256_prefix: str = ""  # from a release file name; "" when the name carries none

    @property
    def where(self) -> str:
        return f"hf-hub:{self.repo_id}" if self.kind == "hub" else self.url


def _url_checksum(url: str) -> str:
    """The SHA-256 (prefix) a release URL names, as open_clip reads it; "" when it names none."""
    parts = urlparse(url).path.split("/")
    if "openaipublic" in url and len(parts) >= 2:
        return parts[-2].lower()
    if "mlfoundations" in url:
        tail = os.path.splitext(parts[-1])[0].rsplit("-", 1)[-1].lower()
        return tail if len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail) else ""
    return ""


def _hub_names_other_tag(repo_id: str, tag: str) -> bool:
    """timm-style repositories are named ``<model>.<tag>``; True when that tag is not the one asked for."""
    name = repo_id.rsplit("/", 1)[-1]
    return "." in name and name.rsplit(".", 1)[-1] != tag


def weights_route(name: str, tag: str) -> WeightsRoute | None:
    """The route this project loads ``tag`` of ``name`` from; None for an unknown tag."""
    import open_clip  # open_clip / huggingface_hub: the checkpoint readers import weights.py without them
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        return None
    url, hub = cfg.get("url", ""), cfg.get("hf_hub", "")
    clean_tag = tag.lower()
    if hub:
        repo_id, filename = os.path.split(hub)  # "org/repo/" -> ("org/repo", ""); "org/repo/f.bin" -> file
        if not (url and _hub_names_other_tag(repo_id, clean_tag)):
            names = (filename,) if filename else (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME)
            if filename.endswith((".bin", ".pth")) and filename != HF_WEIGHTS_NAME:
                names = (filename[:-4] + ".safetensors", filename)
            return WeightsRoute("hub", repo_id=repo_id, filenames=names)
    if url:
        return WeightsRoute("url", url=url, filenames=(os.path.basename(urlparse(url).path),),
                            sha256_prefix=_url_checksum(url))
    return None


def cached_file(route: WeightsRoute) -> Path | None:
    """The route's file if it is in the local cache (Hub cache layout or open_clip's URL cache)."""
    if route.kind == "url":
        p = Path(os.path.expanduser(URL_CACHE)) / route.filenames[0]
        return p if p.is_file() else None
    from huggingface_hub import constants, try_to_load_from_cache  # only to look into the Hub cache

    for filename in route.filenames:
        hit = try_to_load_from_cache(route.repo_id, filename, cache_dir=constants.HF_HUB_CACHE)
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def verify(path: Path, route: WeightsRoute, name: str, tag: str) -> str:
    """The file's SHA-256, after checking it against the checksum its release name carries."""
    digest = file_sha256(path)
    if route.sha256_prefix and not digest.startswith(route.sha256_prefix):
        raise DetectorError(
            f"weights file {path} has SHA-256 {digest[:12]}..., not that of the {name}/{tag} release file "
            f"({route.sha256_prefix}...); delete it and download it again, or pass a verified file to --pretrained"
        )
    return digest


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")


def fetch_weights(name: str, tag: str) -> tuple[Path, str]:
    """(file, SHA-256) of weights ``tag`` of ``name``: from the cache, else downloaded; always verified."""
    route = weights_route(name, tag)
    if route is None:
        raise DetectorError(f"'{tag}' is not an open_clip weights tag of {name}")
    path = cached_file(route)
    if path is None:
        if _offline():
            raise DetectorError(f"pretrained weights {name}/{tag} ({route.where}) are not cached and this run is "
                                "offline (HF_HUB_OFFLINE=1); use --pretrained none or a local file")
        from open_clip.pretrained import (  # only to download
            download_pretrained_from_hf,
            download_pretrained_from_url,
        )

        try:
            if route.kind == "url":
                path = Path(download_pretrained_from_url(route.url))
            else:
                path = Path(download_pretrained_from_hf(route.repo_id, filename=route.filenames[-1]))
        except Exception as e:  # urllib / hub errors of many kinds: one line for all
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise DetectorError(f"cannot download pretrained weights {name}/{tag} from {route.where} "
                                f"({type(e).__name__}: {first}); check the network, or use --pretrained none "
                                "or a local file") from e
    return path, verify(path, route, name, tag)


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def weights_problem(name: str, tag: str) -> str | None:
    """None when weights `tag` of model `name` are local, cached (and right) or downloadable; else why not."""
    if is_random_weights(tag) or Path(tag).expanduser().exists():
        return None
    route = weights_route(name, tag)
    if route is None:
        return f"'{tag}' is not an open_clip weights tag of {name}"
    path = cached_file(route)
    if path is not None:
        try:
            verify(path, route, name, tag)
        except DetectorError as e:
            return str(e)
        return None
    if _offline():
        return f"pretrained weights {name}/{tag} are not cached and HF_HUB_OFFLINE=1 forbids downloading them"
    host = HUB_HOST if route.kind == "hub" else (urlparse(route.url).hostname or HUB_HOST)
    if not _reachable(host):
        return f"pretrained weights {name}/{tag} are not cached and {host} cannot be reached (no internet)"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m detector.method.weights MODEL_NAME TAG", file=sys.stderr)
        return 2
    problem = weights_problem(argv[0], argv[1])
    if problem:
        print(f"NOTE: {problem}: continuing with RANDOM weights; every figure below is NOT meaningful.")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
