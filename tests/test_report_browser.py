"""The report's threshold explorer in a real browser: headless Chromium (Debian's chromium and
chromium-driver) through Selenium. Both sliders are moved to given values and by the keyboard; what the page
shows (flags, false alarms, misses and flips by image score >= the image threshold; images with a region at the
pixel threshold; the command) must equal the Python re-statements, and no script error may be logged. On a real
`detector eval` page, the command the page shows is run as pasted (IMAGES replaced by the test images) and its
``anomalous`` column must equal the page's flags.

Locally the test skips with one line when no browser is installed; with CI=true a missing browser fails
(`.ci/run` installs it)."""
import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from headless_browser import headless_chromium
from typer.testing import CliRunner

from detector.eval import report

CLASS = "pill_box"


@pytest.fixture(scope="module")
def browser():
    yield from headless_chromium()


BASE = "detector predict --checkpoint C IMAGES --out predictions --resolution 64 --min-area 0.001"


def _page(tmp_path, rng, image_reference=0.5):
    """A page of 14 images (8 normal, 6 anomalous) with known image scores and region thresholds and 3
    overlays."""
    labels = [0] * 8 + [1] * 6
    scores = np.round(rng.uniform(0.2, 0.9, len(labels)), 4)
    regions = np.round(rng.uniform(0.2, 0.9, len(labels)), 4)
    regions[3] = -np.inf  # an image with no region at any threshold (min_area larger than its map)
    scores[0] = 0.5  # an image exactly at the F1-max image threshold: flagged there, and on the page
    rows = [{"id": f"cls/test/{'good' if lab == 0 else 'crack'}/{i:03d}", "label": lab,
             "defect_type": "good" if lab == 0 else "crack", "score": float(s), "region": float(g)}
            for i, (lab, s, g) in enumerate(zip(labels, scores, regions))]
    thumbs = []
    for r in rows[6:9]:
        amap = rng.random((40, 40)).astype(np.float32)
        thumbs.append(report.Thumb(r["id"], r["id"], rng.integers(0, 255, (80, 80, 3), dtype=np.uint8),
                                   report.quantise_map(amap, 0.0, 1.0, 40), ["scratch on the cap, top, 1.0%"]))
    html = report.threshold_explorer(rows, image_reference, 0.5, 0.0, 1.0, thumbs, command=BASE,
                                     no_image="no anomalous image")
    path = report.write_report(tmp_path / "report.html", report.Report("explorer", sections=[html]))
    return path, rows


def _shown(drv):
    """What the page says: the image side (None without an image threshold), the pixel side, the command."""
    from selenium.webdriver.common.by import By

    get = lambda i: drv.find_element(By.ID, i)
    count = lambda i: int(get(i).get_attribute("data-count"))
    flagged = sorted(f.get_attribute("data-id") for f in drv.find_elements(By.CSS_SELECTOR, ".thumb.flagged"))
    image = None
    if drv.find_elements(By.ID, "img-thr"):
        flips = [li.get_attribute("data-id") for li in get("flip-list").find_elements(By.TAG_NAME, "li")]
        image = (float(get("img-value").text), count("false-alarms"), count("misses"), count("flips-count"), flips)
    return image, flagged, (float(get("px-value").text), count("regions-count")), get("cmd").text


def _data(drv):
    from selenium.webdriver.common.by import By

    return json.loads(drv.find_element(By.ID, "explorer-data").get_attribute("textContent"))


def _expected(rows, ti, tp, ref, thumb_ids, base=BASE):
    """The page's figures computed in Python from the rows: image score >= ti flags (false alarms, misses, flips
    against the reference ``ref``, the frame on the thumbnails), region threshold >= tp counts."""
    scores = np.array([np.nan if r["score"] is None else r["score"] for r in rows], np.float64)
    regions = np.array([-np.inf if r["region"] is None else r["region"] for r in rows], np.float64)
    labels = np.array([r["label"] for r in rows])
    pixel = (tp, int(report.regions_at(regions, tp).sum()))
    if ti is None:
        return None, [], pixel, report.predict_command(base, tp, None)
    now, before = report.flagged_at(scores, ti), report.flagged_at(scores, ref)
    flips = [r["id"] for r, a, b in zip(rows, now, before) if a != b]
    image = (ti, int((now & (labels == 0)).sum()), int((~now & (labels == 1)).sum()), len(flips), flips)
    flagged = sorted(r["id"] for r, a in zip(rows, now) if a and r["id"] in thumb_ids)
    return image, flagged, pixel, report.predict_command(base, tp, ti)


def _move(drv, slider_id, value):
    from selenium.webdriver.common.by import By

    drv.execute_script("arguments[0].value = arguments[1];"
                       "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
                       drv.find_element(By.ID, slider_id), str(value))


def test_both_sliders_count_as_python_and_no_script_error(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    path, rows = _page(tmp_path, np.random.default_rng(3))
    browser.get(path.as_uri())
    data = _data(browser)
    ref, pref = data["image"]["reference"], data["pixel"]["reference"]
    assert ref == report.page_threshold(0.5, [r["score"] for r in rows]) and ref < 0.5
    assert pref == report.page_threshold(0.5, [r["region"] for r in rows if np.isfinite(r["region"])])
    thumbs = {t["id"] for t in data["thumbs"]}
    expect = lambda ti, tp: _expected(rows, ti, tp, ref, thumbs)
    assert _shown(browser) == expect(ref, pref)  # starts at the references
    assert rows[0]["id"] not in _shown(browser)[0][4]  # the image at the exact F1-max decides as there
    ti, tp = ref, pref
    low, high = min(r["score"] for r in rows), max(r["score"] for r in rows)
    for value in (low, 0.35, 0.61234567, high + 0.001, rows[5]["score"]):  # from all flagged to none
        _move(browser, "img-thr", value)
        ti = report.slider_value(value)
        assert _shown(browser) == expect(ti, tp), value
    for value in (0.25, 0.71234567, rows[6]["region"]):  # the pixel slider leaves the image decision alone
        _move(browser, "px-thr", value)
        tp = report.slider_value(value)
        assert _shown(browser) == expect(ti, tp), value
    browser.find_element(By.ID, "img-thr").send_keys(Keys.ARROW_LEFT)  # a real key press moves it too
    moved = float(browser.find_element(By.ID, "img-value").text)
    assert moved < ti
    assert _shown(browser) == expect(moved, tp)
    browser.find_element(By.ID, "img-reset").click()
    assert _shown(browser) == expect(ref, tp)
    browser.find_element(By.ID, "px-reset").click()
    assert _shown(browser) == expect(ref, pref)
    command = browser.find_element(By.ID, "cmd").text
    assert command == f"{BASE} --threshold {report.js_number(pref)} --image-threshold {report.js_number(ref)}"
    # the button copies the text shown; a refused clipboard selects it and says so (as without one)
    browser.execute_script("Object.defineProperty(navigator, 'clipboard', {configurable: true, value: "
                           "{writeText: (t) => { window.copiedText = t; return Promise.resolve(); }}});")
    browser.find_element(By.ID, "copy").click()
    assert browser.execute_script("return window.copiedText;") == command
    assert browser.find_element(By.ID, "copied").text == "copied"
    browser.execute_script("Object.defineProperty(navigator, 'clipboard', {configurable: true, value: "
                           "{writeText: () => Promise.reject(new Error('denied'))}});")
    browser.find_element(By.ID, "copy").click()
    assert browser.find_element(By.ID, "copied").text == f"select and copy: {command}"
    assert browser.execute_script("return window.getSelection().toString();") == command
    # the outlines are drawn: some magenta pixels on the first overlay's canvas at a low pixel threshold
    _move(browser, "px-thr", 0.3)
    magenta = browser.execute_script(
        "const c = document.querySelector('.thumb canvas'); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
        "for (let i = 0; i < d.length; i += 4) if (d[i] === 255 && d[i + 1] === 0 && d[i + 2] === 255) n++;"
        "return n;")
    assert magenta > 0
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_without_an_image_threshold_the_page_says_so_and_the_pixel_slider_works(browser, tmp_path):
    from selenium.webdriver.common.by import By

    path, rows = _page(tmp_path, np.random.default_rng(4), image_reference=None)
    browser.get(path.as_uri())
    assert "No image threshold: no anomalous image." in browser.find_element(By.ID, "no-image-threshold").text
    pref = _data(browser)["pixel"]["reference"]
    assert _shown(browser) == _expected(rows, None, pref, None, set())
    _move(browser, "px-thr", 0.4)
    assert _shown(browser) == _expected(rows, None, 0.4, None, set())
    assert browser.find_element(By.ID, "cmd").text == f"{BASE} --threshold 0.4"  # no image decision to carry
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


@pytest.fixture(scope="module")
def evaluated(browser, demo_root, tmp_path_factory, tiny_clip_name):
    """A tiny checkpoint and its `detector eval` (made only where a browser runs)."""
    from detector_fixtures import train_and_evaluate

    return train_and_evaluate(tmp_path_factory.mktemp("report-browser"), demo_root, tiny_clip_name, CLASS)


def _run_pasted(command, images, cwd, monkeypatch):
    """The page's command as a shell would split it, IMAGES replaced, run by the real CLI in ``cwd``: the
    predictions' anomalous ids and scores.json."""
    from detector.cli import app

    args = shlex.split(command)
    assert args[0] == "detector" and args.count("IMAGES") == 1 and "--out" in args
    args[args.index("IMAGES")] = str(images)
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    res = CliRunner().invoke(app, args[1:])
    assert res.exit_code == 0, res.output
    out = cwd / args[args.index("--out") + 1]
    table = list(csv.DictReader((out / "scores.csv").open()))
    flagged = sorted(f"{CLASS}/test/{Path(r['name']).with_suffix('').as_posix()}" for r in table
                     if r["anomalous"] == "True")
    return flagged, json.loads((out / "scores.json").read_text()), len(table)


def test_the_command_on_an_eval_page_runs_as_pasted_and_flags_what_the_page_flags(browser, evaluated, demo_root,
                                                                                 tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By

    ckpt, ev = evaluated
    browser.get((ev / "report.html").as_uri())
    data = _data(browser)
    rows = data["images"]
    thumbs = {t["id"] for t in data["thumbs"]}
    assert len(thumbs) == len(rows) == 12  # every image on the page: its flags are the thumbnails' frames
    picked = json.loads((ev / "threshold.json").read_text())["fused"]
    ref, pref = data["image"]["reference"], data["pixel"]["reference"]
    scores = [r["score"] for r in rows]
    assert (report.flagged_at(scores, ref) == report.flagged_at(scores, picked["image_threshold"])).all()
    base = f"detector predict --checkpoint {shlex.quote(str(ckpt.resolve()))} IMAGES --out predictions " \
           f"--resolution 64 --min-area 0.001"
    assert data["command"] == base
    shown = _shown(browser)
    assert shown == _expected(rows, ref, pref, ref, thumbs, base)
    images = demo_root / CLASS / "test"
    flagged, used, n = _run_pasted(shown[3], images, tmp_path / "at-reference", monkeypatch)
    assert n == 12 and flagged == shown[1]
    assert (used["threshold"]["pixel"], used["threshold"]["image"], used["resolution"]) == (pref, ref, 64)
    # moved: the image threshold half way across the widest gap between the scores, the pixel one elsewhere
    s = np.unique(scores)
    k = int(np.argmax(np.diff(s[1:-1]))) + 1 if len(s) > 3 else 0
    ti = report.slider_value((s[k] + s[k + 1]) / 2)
    _move(browser, "img-thr", ti)
    _move(browser, "px-thr", (pref + data["vmax"]) / 2)
    tp = float(browser.find_element(By.ID, "px-value").text)
    shown = _shown(browser)
    assert shown == _expected(rows, ti, tp, ref, thumbs, base)
    assert shown[1] != _expected(rows, ref, tp, ref, thumbs, base)[1] or len(s) <= 3  # the move changed flags
    flagged, used, _ = _run_pasted(shown[3], images, tmp_path / "moved", monkeypatch)
    assert flagged == shown[1] and (used["threshold"]["pixel"], used["threshold"]["image"]) == (tp, ti)
    assert re.fullmatch(r".* --threshold \S+ --image-threshold \S+", shown[3])
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
