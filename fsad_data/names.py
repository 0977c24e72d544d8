"""Human-readable class names: the one table the caption texts and reports use ("pcb1" -> "printed circuit board").

Known classes of MVTec-AD (15), VisA (12), Real-IAD (30) and the synthetic demo set are listed; any other name
falls back to underscores/hyphens -> spaces, lower case, with a trailing number on a letter word dropped
("part2" -> "part").
"""
from __future__ import annotations

import re

MVTEC_AD = {
    "bottle": "bottle", "cable": "cable", "capsule": "capsule", "carpet": "carpet", "grid": "grid",
    "hazelnut": "hazelnut", "leather": "leather", "metal_nut": "metal nut", "pill": "pill", "screw": "screw",
    "tile": "tile", "toothbrush": "toothbrush", "transistor": "transistor", "wood": "wood", "zipper": "zipper",
}
VISA = {
    "candle": "candle", "capsules": "capsules", "cashew": "cashew", "chewinggum": "chewing gum",
    "fryum": "fryum", "macaroni1": "macaroni", "macaroni2": "macaroni", "pcb1": "printed circuit board",
    "pcb2": "printed circuit board", "pcb3": "printed circuit board", "pcb4": "printed circuit board",
    "pipe_fryum": "pipe fryum",
}
REAL_IAD = {
    "audiojack": "audio jack", "bottle_cap": "bottle cap", "button_battery": "button battery",
    "end_cap": "end cap", "eraser": "eraser", "fire_hood": "fire hood", "mint": "mint", "mounts": "mount",
    "pcb": "printed circuit board", "phone_battery": "phone battery", "plastic_nut": "plastic nut",
    "plastic_plug": "plastic plug", "porcelain_doll": "porcelain doll", "regulator": "regulator",
    "rolled_strip_base": "rolled strip base", "sim_card_set": "SIM card set", "switch": "switch", "tape": "tape",
    "terminalblock": "terminal block", "toothbrush": "toothbrush", "toy": "toy", "toy_brick": "toy brick",
    "transistor1": "transistor", "u_block": "U block", "usb": "USB plug", "usb_adaptor": "USB adaptor",
    "vcpill": "pill", "wooden_beads": "wooden beads", "woodstick": "wooden stick", "zipper": "zipper",
}
SYNTHETIC = {"pill_box": "pill box", "hex_nut": "hex nut", "fabric": "fabric"}

READABLE_NAMES: dict[str, str] = {**REAL_IAD, **VISA, **MVTEC_AD, **SYNTHETIC}


def readable_name(class_name: str) -> str:
    """The noun used in texts for a class folder name; unknown names: separators -> spaces, trailing digits off."""
    key = class_name.strip()
    if key in READABLE_NAMES:
        return READABLE_NAMES[key]
    if key.lower() in READABLE_NAMES:
        return READABLE_NAMES[key.lower()]
    words = [w for w in re.split(r"[_\-\s]+", key) if w]
    if words and re.fullmatch(r"[A-Za-z]+\d+", words[-1]):
        words[-1] = re.sub(r"\d+$", "", words[-1])
    text = " ".join(words).lower()
    return text or key
