"""Accuracy of the offline attribute captioner on drawn scenes with known truth (tests/attribute_scenes.py):
the share of fields right, per kind of scene and overall (issue 12 part 2 target: at least 0.95).

    PYTHONPATH=. python bench/bench_attributes.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    import attribute_scenes as S

    t0 = time.perf_counter()
    items = S.scenes()
    acc, per = S.accuracy(items)
    seconds = time.perf_counter() - t0
    print(f"{'scenes':24s} {'fields':>6s} {'right':>6s}")
    tags = sorted({t for s in items for t in s.tags})
    for tag in tags:
        names = [s.name for s in items if tag in s.tags]
        n = sum(len(per[x]) for x in names)
        r = sum(sum(per[x].values()) for x in names)
        print(f"{tag:24s} {n:6d} {r / n:6.3f}")
    total = sum(len(v) for v in per.values())
    print(f"{'all (' + str(len(items)) + ' scenes)':24s} {total:6d} {acc:6.3f}   target >= 0.95   {seconds:.1f} s")
    for name, fields in per.items():
        bad = [k for k, ok in fields.items() if not ok]
        if bad:
            print(f"  wrong in {name}: {', '.join(bad)}")


if __name__ == "__main__":
    main()
