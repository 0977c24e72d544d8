"""The report's threshold explorer in a real browser: headless Chromium (Debian's chromium and
chromium-driver) through Selenium. The slider is moved to given values and by the keyboard; the counts the
page shows must equal those computed in Python, and no script error may be logged.

Locally the test skips with one line when no browser is installed; with CI=true a missing browser fails
(`.ci/run` installs it)."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from detector import report

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = ("/usr/bin/chromedriver",)


def _find(paths, name):
    return next((p for p in paths if Path(p).is_file()), None) or shutil.which(name)


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    binary, driver = _find(CHROMIUM, "chromium"), _find(DRIVER, "chromedriver")
    if webdriver is None or not binary or not driver:
        why = ("no headless Chromium for the browser test (apt-get install chromium chromium-driver; "
               "pip install selenium)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1600"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    yield drv
    drv.quit()


def _page(tmp_path, rng):
    """A page of 14 images (8 normal, 6 anomalous) with known flag thresholds and 3 overlays."""
    labels = [0] * 8 + [1] * 6
    flags = np.round(rng.uniform(0.2, 0.9, len(labels)), 4)
    flags[3] = -np.inf  # an image with no region at any threshold (min_area larger than its map)
    rows = [{"id": f"cls/test/{'good' if lab == 0 else 'crack'}/{i:03d}", "label": lab,
             "defect_type": "good" if lab == 0 else "crack", "flag": float(f)}
            for i, (lab, f) in enumerate(zip(labels, flags))]
    thumbs = []
    for r in rows[6:9]:
        amap = rng.random((40, 40)).astype(np.float32)
        thumbs.append(report.Thumb(r["id"], r["id"], rng.integers(0, 255, (80, 80, 3), dtype=np.uint8),
                                   report.quantise_map(amap, 0.0, 1.0, 40), ["scratch on the cap, top, 1.0%"]))
    html = report.threshold_explorer(rows, 0.5, 0.0, 1.0, thumbs, command="detector predict --checkpoint C X")
    path = report.write_report(tmp_path / "report.html", report.Report("explorer", sections=[html]))
    return path, rows


def _shown(drv):
    from selenium.webdriver.common.by import By

    get = lambda i: drv.find_element(By.ID, i)
    flips = [li.get_attribute("data-id") for li in get("flip-list").find_elements(By.TAG_NAME, "li")]
    return (float(get("thr-value").text), int(get("false-alarms").get_attribute("data-count")),
            int(get("misses").get_attribute("data-count")), int(get("flips-count").get_attribute("data-count")),
            flips, len(drv.find_elements(By.CSS_SELECTOR, ".thumb.flagged")))


def _expected(rows, t):
    flags = np.array([r["flag"] for r in rows])
    labels = np.array([r["label"] for r in rows])
    now, ref = report.decision_at(flags, t), report.decision_at(flags, 0.5)
    flips = [r["id"] for r, a, b in zip(rows, now, ref) if a != b]
    flagged_thumbs = int(now[6:9].sum())
    return t, int((now & (labels == 0)).sum()), int((~now & (labels == 1)).sum()), len(flips), flips, flagged_thumbs


def test_slider_counts_equal_python_and_no_script_error(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    path, rows = _page(tmp_path, np.random.default_rng(3))
    browser.get(path.as_uri())
    assert _shown(browser) == _expected(rows, 0.5)  # starts at the reference
    slider = browser.find_element(By.ID, "thr")
    for value in (0.2, 0.35, 0.61234567, 0.9, float(rows[5]["flag"])):
        browser.execute_script("arguments[0].value = arguments[1];"
                               "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));", slider, str(value))
        assert _shown(browser) == _expected(rows, report.slider_value(value)), value
    slider.send_keys(Keys.ARROW_LEFT)  # a real key press moves it too
    moved = float(browser.find_element(By.ID, "thr-value").text)
    assert moved < report.slider_value(float(rows[5]["flag"]))
    assert _shown(browser) == _expected(rows, moved)
    browser.find_element(By.ID, "reset").click()
    assert _shown(browser) == _expected(rows, 0.5)
    browser.find_element(By.ID, "copy").click()
    assert "0.5" in browser.find_element(By.ID, "copied").text
    assert browser.find_element(By.ID, "cmd").text == "detector predict --checkpoint C X --threshold 0.5"
    # the outlines are drawn: some magenta pixels on the first overlay's canvas at a low threshold
    browser.execute_script("arguments[0].value = 0.3; arguments[0].dispatchEvent(new Event('input'));", slider)
    magenta = browser.execute_script(
        "const c = document.querySelector('.thumb canvas'); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
        "for (let i = 0; i < d.length; i += 4) if (d[i] === 255 && d[i + 1] === 0 && d[i + 2] === 255) n++;"
        "return n;")
    assert magenta > 0
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
