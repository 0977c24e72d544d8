"""``mfsc show``: print one class record and one of its image records of a build, readably (no pixels)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from fsad_data.plain_tables import print_table
from mfsc_builder.errors import BuildError

if TYPE_CHECKING:  # heavy: imported in show_build's body
    import datasets


def show_build(build_dir: Path, class_name: str | None = None, image_id: str | None = None,
               console: Console | None = None) -> None:
    """Print the class record of ``class_name`` (default: the first) and one of its image records (default: an
    anomalous one), or the image ``image_id``."""
    import datasets  # heavy: loaded when the command runs

    console = console or Console(highlight=False)
    build_dir = Path(build_dir)
    if build_dir.exists() and not build_dir.is_dir():
        raise BuildError(f"{build_dir} is a file; give the output folder of `mfsc build`")
    for sub in ("classes", "images"):
        if not (build_dir / sub).is_dir():
            raise BuildError(f"{build_dir / sub} not found; run `mfsc build SOURCE --out {build_dir}` first")
    datasets.disable_progress_bars()
    try:
        classes = datasets.load_from_disk(str(build_dir / "classes"))
        names = classes["class_name"]
        images = datasets.load_from_disk(str(build_dir / "images"))
    except Exception as exc:  # noqa: BLE001 - a damaged arrow file: datasets and pyarrow raise many types
        raise BuildError(f"{build_dir} does not hold a readable MFSC build ({type(exc).__name__}: "
                         f"{str(exc)[:160]}); rebuild it with mfsc build") from None
    if not names:
        raise BuildError(f"{build_dir / 'classes'} holds no class record; rebuild")
    name = class_name or names[0]
    if name not in names:
        raise BuildError(f"class {name!r} is not in {build_dir}; it has: {', '.join(names)}")
    split, index = _pick_image(images, name, image_id, build_dir)
    _print_class(console, name, classes[names.index(name)])
    _print_image(console, images[split].remove_columns(["image", "mask"])[index])


def _pick_image(images: datasets.DatasetDict, name: str, image_id: str | None, build_dir: Path) -> tuple[str, int]:
    """(split, row) of ``image_id``, else of an anomalous image of class ``name``, else of any of its images."""
    best: tuple[int, str, int] | None = None  # (priority, split, index)
    for split in images:
        cols = images[split].select_columns(["id", "class_name", "label"])
        for i, (sid, cn, lab) in enumerate(zip(cols["id"], cols["class_name"], cols["label"])):
            prio = (0 if sid == image_id else None) if image_id else (
                (0 if lab == 1 else 1) if cn == name else None)
            if prio is not None and (best is None or prio < best[0]):
                best = (prio, split, i)
    if best is None:
        example = images[next(iter(images))].select_columns(["id"])[0]["id"]
        raise BuildError(f"no image record {image_id or 'of class ' + name} in {build_dir / 'images'}; give an "
                         f"--image id like {example} (<class>/<split>/<defect type>/<stem>)")
    return best[1], best[2]


def _attrs(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items() if v not in ("", None))


def _print_class(console: Console, name: str, c: dict[str, Any]) -> None:
    head = Table.grid(padding=(0, 2))
    head.add_row("object", c["object_name"])
    head.add_row("source layout", c["source_layout"])
    head.add_row("references", f"{', '.join(c['reference_images'])} ({c['reference_selection']})")
    head.add_row("image view", _attrs(c["image_view"]))
    head.add_row("foreground view", _attrs(c["foreground_view"]))
    head.add_row("caption", c["caption"])
    head.add_row("defect states", f"{', '.join(c['defect_states'])} ({c['defect_vocab']})")
    head.add_row("provenance", _attrs(c["provenance"]))
    print_table(console, Panel(head, title=f"class {name}", expand=False))
    comps = Table("component", "count", "location", "colour", "texture", "shape", "direction", "area",
                  "sentence", title="components")
    for k in c["components"]:
        comps.add_row(k["name"], str(k["count"]), k["location"], k["colour"], k["texture"], k["shape"],
                      k["direction"], f"{k['area']:.3f}", k["sentence"])
    print_table(console, comps)
    texts = Table("level", "group", "normal", "abnormal", title="texts for the detector")
    for t in c["texts"]:
        texts.add_row(t["level"], t["group"], "\n".join(t["normal"]),
                      "\n".join(t["abnormal"][:3]) + (f"\n(+{len(t['abnormal']) - 3} more)"
                                                      if len(t["abnormal"]) > 3 else ""))
    print_table(console, texts)


def _print_image(console: Console, row: dict[str, Any]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_row("split / label", f"{row['split']} / {'anomaly' if row['label'] else 'normal'} ({row['defect_type']})")
    grid.add_row("file", f"{row['file_name']} ({row['width']}x{row['height']})"
                 + (" reference" if row["is_reference"] else ""))
    if row.get("image_file"):  # builds before the file columns lack them
        grid.add_row("source file", f"{row['image_file']} ({row['image_file_size']} bytes, sha256 "
                     f"{row['image_sha256'][:12]}…)" + (f"; mask {row['mask_file']}" if row.get("mask_file") else ""))
    grid.add_row("image view", _attrs(row["image_view"]))
    grid.add_row("foreground view", _attrs(row["foreground_view"]))
    grid.add_row("caption", row["caption"])
    for k in row["components"]:
        grid.add_row(f"component {k['name']}", _attrs({x: k[x] for x in ("count", "location", "colour", "texture",
                                                                          "shape", "direction", "sentence")}))
    if row["label"]:
        grid.add_row("defect", _attrs(row["defect"]))
    grid.add_row("provenance", _attrs(row["provenance"]))
    print_table(console, Panel(grid, title=f"image {row['id']}", expand=False))
    regs = Table("kind", "name", "location", "orientation", "box", "area", title="regions")
    for r in row["regions"]:
        regs.add_row(r["kind"], r["name"], r["location"], r["orientation"], str(list(r["box"])), f"{r['area']:.3f}")
    print_table(console, regs)
