"""Real-browser tests: the app served by `streamlit run`, driven by headless Chromium.

Uses the system Chromium (/usr/bin/chromium, Debian package `chromium`) through Playwright's
Python API — no `playwright install`, no browser download.

* ``test_bilaf_selection_then_map_in_a_real_browser`` (default suite): a small feature set
  (seeded Gaussian clusters, imported with `import_embeddings`) in a temporary workspace; the
  test runs BiLAF on it from the Select page, opens the Map, checks that the WebGL map is drawn
  with legend entries for BiLAF's picks and that red pick markers are on the canvas, and saves
  a screenshot (the test's temporary folder, and ``$BILAF_SCREENSHOT_DIR`` when set).
* ``test_offline_default_from_a_fresh_workspace`` (slow): what a newcomer does — the offline
  default (Fashion-MNIST, first 10 000 images, EfficientNet-Lite0) from an empty workspace to
  a BiLAF map, then two baselines, the side-by-side map, an accuracy sweep on Compare and the
  Learn walkthrough.  It prints how long each stage took and saves the README's screenshots
  (``map.png``, ``compare.png``, ``learn.png``) to ``$BILAF_SCREENSHOT_DIR`` (or its tmp dir)::

      BILAF_SCREENSHOT_DIR=docs/screenshots .venv/bin/python -m pytest -m slow tests/test_browser.py -s
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
BILAF_RED = (0xD6, 0x27, 0x28)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"needs Chromium at {CHROMIUM} (Debian package `chromium`; scripts/setup.sh --test installs it)",
)


# ------------------------------------------------------------------ the server and the browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _streamlit(workspace: Path, log_path: Path):
    """`streamlit run app.py` on a free 127.0.0.1 port with BILAF_WORKSPACE=workspace; yields the URL."""
    port = _free_port()
    env = dict(os.environ, BILAF_WORKSPACE=str(workspace), PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 90
            while True:
                try:
                    with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("streamlit did not start: " + log_path.read_text()[-2000:])
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextlib.contextmanager
def _page(width: int = 1500, height: int = 1500):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def _shot_dirs(tmp: Path) -> list[Path]:
    dirs = [tmp]
    if os.environ.get("BILAF_SCREENSHOT_DIR"):
        dirs.append(Path(os.environ["BILAF_SCREENSHOT_DIR"]))
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def _save(png: bytes, name: str, dirs: list[Path]) -> Path:
    for d in dirs:
        (d / name).write_bytes(png)
    return dirs[0] / name


def _pixels_near(png: bytes, rgb: tuple[int, int, int], tol: int = 40) -> int:
    """How many pixels of a PNG are within `tol` of a colour (per channel)."""
    import io

    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    return int((np.abs(image - np.asarray(rgb, dtype=np.int16)) <= tol).all(axis=-1).sum())


def _wait_idle(page, timeout_s: float = 600) -> None:
    """Wait until the sidebar no longer lists running jobs."""
    from playwright.sync_api import expect

    page.wait_for_timeout(1500)
    expect(page.get_by_text(re.compile(r"^\d+ jobs? running$"))).to_have_count(0, timeout=timeout_s * 1000)


def _choose(page, multiselect_label: str, options: list[str]) -> None:
    """Add options to the multiselect labelled `multiselect_label`."""
    box = page.locator("[data-testid=stMultiSelect]").filter(has_text=multiselect_label).first
    for option in options:
        box.locator("input").click()
        page.get_by_role("option", name=option, exact=True).click()
        page.wait_for_timeout(300)
    page.keyboard.press("Escape")


# ------------------------------------------------------------------ default suite: a small pool


def _small_workspace(root: Path) -> None:
    from bilaf_core.features import import_embeddings
    from bilaf_core.workspace import Workspace

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (5, 24))
    x = np.concatenate([rng.normal(c, 1.0, (80, 24)) for c in centres]).astype(np.float32)
    labels = np.repeat(np.arange(5), 80)
    order = rng.permutation(x.shape[0])
    src = root / "src"
    src.mkdir(parents=True)
    np.save(src / "emb.npy", x[order])
    np.save(src / "labels.npy", labels[order])
    ws = Workspace(root / "ws")
    path = import_embeddings(src / "emb.npy", labels_path=src / "labels.npy", out_dir=Path(ws.features_root) / "browser-blobs")
    ws.register_feature_set(path)


def test_bilaf_selection_then_map_in_a_real_browser(tmp_path):
    from playwright.sync_api import expect

    _small_workspace(tmp_path)
    dirs = _shot_dirs(tmp_path)
    with _streamlit(tmp_path / "ws", tmp_path / "streamlit.log") as url, _page(1400, 1500) as page:
        page.goto(url + "/select")
        page.get_by_role("button", name="Run selection").wait_for()
        page.get_by_text("count", exact=True).click()
        count = page.get_by_label("images to label")
        count.fill("20")
        count.press("Enter")
        expect(page.get_by_text("of 400 images (5.00%)")).to_be_visible()
        page.get_by_role("button", name="Run selection").click()
        # the selection runs as a background job; the table lists it when done
        expect(page.get_by_text("Open the map")).to_be_visible(timeout=300_000)  # generous: a loaded 2-core machine

        page.goto(url + "/map")
        plot = page.locator(".js-plotly-plot").first
        plot.wait_for(timeout=180_000)  # a quick layout at once; the UMAP map replaces it when computed
        # K = min(0.5% of 400, 20 / 2) -> 2 cores, so 18 boundary picks
        expect(page.locator(".legendtext", has_text="BiLAF boundary picks (18)").first).to_be_visible(timeout=60_000)
        _wait_idle(page)  # the UMAP map is there: the figure no longer changes under the mouse
        expect(page.locator(".legendtext", has_text="BiLAF boundary picks (18)").first).to_be_visible(timeout=60_000)
        expect(page.locator(".legendtext", has_text="BiLAF pseudo-class centres (2)").first).to_be_visible()
        assert page.locator(".js-plotly-plot canvas").count() > 0  # WebGL scatter
        page.wait_for_timeout(1000)
        drawn = plot.screenshot()
        assert _pixels_near(drawn, BILAF_RED) > 100, "no BiLAF-red pick markers on the drawn map"
        shot = _save(page.screenshot(), "browser-map.png", dirs)

        # a box drawn over the whole plotting area selects every point (Streamlit's selection event)
        _box_select_until(page, plot, page.get_by_text("400 points selected on the map"))
        expect(page.get_by_role("button", name="Add 380 to the picks")).to_be_visible()
        # every pick is in the box: removing them all would leave an empty selection, so it is not offered
        expect(page.get_by_text("removing them all would leave nothing", exact=False)).to_be_visible()
        expect(page.get_by_role("button", name=re.compile(r"^Remove \d+ from the picks$"))).to_have_count(0)
    assert shot.stat().st_size > 20_000


def _box_select(page, plot, fraction: float = 1.0) -> None:
    """Drag a box over the left `fraction` of the plotting area, full height (1.0: the whole
    area, every point); Streamlit turns it into a selection event."""
    drag = plot.locator(".nsewdrag").first
    area = None
    for _ in range(30):  # the figure may be redrawn just now (a rerun): wait until it is laid out
        drag.wait_for(state="visible", timeout=60_000)
        area = drag.bounding_box()
        if area:
            break
        page.wait_for_timeout(1000)
    assert area, "the map's plotting area never showed"
    page.mouse.move(area["x"] + 3, area["y"] + 3)
    page.mouse.down()
    page.mouse.move(area["x"] + area["width"] * fraction / 2, area["y"] + area["height"] / 2, steps=5)
    page.mouse.move(area["x"] + area["width"] * fraction - 3, area["y"] + area["height"] - 3, steps=5)
    page.mouse.up()


def _box_select_until(page, plot, shown, fraction: float = 1.0, tries: int = 3) -> None:
    """Box-select (see _box_select) until `shown` (a locator) is visible: a drag that lands while
    the page is being redrawn can be lost, so it is tried again, at most `tries` times."""
    from playwright.sync_api import expect

    for attempt in range(tries):
        _box_select(page, plot, fraction)
        try:
            expect(shown).to_be_visible(timeout=40_000)
            return
        except AssertionError:
            if attempt == tries - 1:
                raise


def test_map_tells_the_truth_in_a_real_browser(tmp_path):
    """Issue 10's acceptance check: /data opens directly; Select's pool picker offers no test
    split; a budget of 0 runs nothing; after box-selecting the whole map, adding every shown
    image and saving, the legend has "added by hand (N)" and BiLAF's boundary-pick count is
    unchanged, and the Selection box shows the new record named after its parent."""
    import json
    import shutil

    from playwright.sync_api import expect

    from bilaf_core.workspace import Workspace

    _small_workspace(tmp_path)
    ws = Workspace(tmp_path / "ws")
    pool_dir = Path(ws.features_root) / "browser-blobs"
    test_dir = Path(ws.features_root) / "browser-blobs-test"
    shutil.copytree(pool_dir, test_dir)
    meta = json.loads((test_dir / "meta.json").read_text())
    meta["dataset"] = {"name": "fashion-mnist", "split": "test", "limit": None}
    (test_dir / "meta.json").write_text(json.dumps(meta))
    ws.register_feature_set(test_dir)

    with _streamlit(tmp_path / "ws", tmp_path / "streamlit.log") as url, _page(1400, 1500) as page:
        # /data opened directly (a shared link, a reload) is the Data & model page, not "Page not found"
        page.goto(url + "/data")
        expect(page.get_by_role("heading", name="Data & model")).to_be_visible(timeout=120_000)
        expect(page.get_by_text("Page not found")).to_have_count(0)

        page.goto(url + "/select")
        page.get_by_role("button", name="Run selection").wait_for()
        # the pool picker: the imported pool only, never the test split
        page.locator("[data-testid=stSelectbox]").filter(has_text="Feature set").first.click()
        options = page.get_by_role("option").all_inner_texts()
        page.keyboard.press("Escape")
        assert options and not any("test split" in o for o in options), options

        # a budget of 0: Run is disabled, the page says why, nothing runs
        page.get_by_text("count", exact=True).click()
        count = page.get_by_label("images to label")
        count.fill("0")
        count.press("Enter")
        expect(page.get_by_text("Budget 0 cannot run")).to_be_visible()
        expect(page.get_by_role("button", name="Run selection")).to_be_disabled()
        expect(page.get_by_text("No selection yet")).to_be_visible()

        count.fill("20")
        count.press("Enter")
        expect(page.get_by_text("of 400 images (5.00%)")).to_be_visible()
        page.get_by_role("button", name="Run selection").click()
        expect(page.get_by_text("Open the map")).to_be_visible(timeout=600_000)  # generous: a shared, loaded machine

        page.goto(url + "/map")
        legend = page.locator(".legendtext")
        expect(legend.filter(has_text="BiLAF boundary picks (18)").first).to_be_visible(timeout=600_000)
        _wait_idle(page)
        # the UMAP map has replaced the quick layout: the figure stays put from here
        expect(page.get_by_text("quick layout")).to_have_count(0, timeout=600_000)
        expect(legend.filter(has_text="BiLAF boundary picks (18)").first).to_be_visible(timeout=60_000)
        page.wait_for_timeout(2000)
        plot = page.locator(".js-plotly-plot").first
        _box_select_until(page, plot, page.get_by_text("400 points selected on the map"))
        page.get_by_role("button", name="Add 380 to the picks").click()
        expect(legend.filter(has_text="added by hand (380)").first).to_be_visible(timeout=60_000)
        page.get_by_role("button", name="Save edited selection").click()
        # saved: the unsaved-edit panel is gone, and the legend has the hand edits as their own
        # layer with BiLAF's counts unchanged
        expect(page.get_by_text("Edited selection", exact=False)).to_have_count(0, timeout=60_000)
        expect(legend.filter(has_text="added by hand (380)").first).to_be_visible(timeout=60_000)
        expect(legend.filter(has_text="BiLAF boundary picks (18)").first).to_be_visible()
        expect(legend.filter(has_text="BiLAF pseudo-class centres (2)").first).to_be_visible()
        # the Selection box *displays* the new record, named after its parent (what the browser draws, not
        # only the server's widget state, which tests/test_app_truth.py checks through AppTest)
        selection_box = page.locator("[data-testid=stSelectbox]").filter(has_text="Selection").first.locator("input")
        expect(selection_box).to_have_value(re.compile(r"^BiLAF · B=20 → edited: \+380 −0$"), timeout=60_000)


# ------------------------------------------------------------------ slow: the offline default, end to end


def _clip(page, top_locator, *bottom_locators, pad: int = 12) -> dict:
    """A screenshot clip of the main area from the top of one element to the lowest bottom of
    the others."""
    page.evaluate("document.activeElement && document.activeElement.blur()")  # no focus ring in the picture
    main = page.locator("[data-testid=stMain]").bounding_box()
    top = top_locator.bounding_box()
    bottom = max(b["y"] + b["height"] for b in (loc.bounding_box() for loc in bottom_locators))
    return {"x": main["x"] + 40, "y": max(top["y"] - pad, 0), "width": main["width"] - 80,
            "height": bottom - top["y"] + 2 * pad}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
                    reason="needs the Debian package dataset-fashion-mnist")
def test_offline_default_from_a_fresh_workspace(tmp_path, capsys):
    from playwright.sync_api import expect

    dirs = _shot_dirs(tmp_path)
    times: dict[str, float] = {}
    with _streamlit(tmp_path / "ws", tmp_path / "streamlit.log") as url, _page(1600, 1300) as page:
        # Data & model: the defaults are the offline default; one press
        page.goto(url)
        page.get_by_role("button", name="Extract features").wait_for()
        start = time.monotonic()
        page.get_by_role("button", name="Extract features").click()
        page.wait_for_timeout(2000)
        page.goto(url + "/map")
        expect(page.locator(".legendtext", has_text="BiLAF boundary picks").first).to_be_visible(timeout=900_000)
        times["fresh workspace → BiLAF map (extract 10 000 + map + BiLAF at 1%)"] = time.monotonic() - start
        _wait_idle(page)

        # Select: two baselines at the same budget
        page.goto(url + "/select")
        page.get_by_role("button", name="Run selection").wait_for()
        _choose(page, "Methods to run", ["K-Means", "Random"])
        page.locator("[data-testid=stMultiSelect]").filter(has_text="Methods to run").locator("span[data-tag][aria-label='BiLAF'] button").click()
        start = time.monotonic()
        page.get_by_role("button", name="Run selection").click()
        _wait_idle(page)
        times["K-Means and Random at 1%"] = time.monotonic() - start

        # Map: BiLAF beside K-Means on the same coordinates (the page reads and draws 10 000 points:
        # seconds on a quiet machine, more on a loaded one)
        page.goto(url + "/map")
        expect(page.locator(".legendtext", has_text="BiLAF boundary picks").first).to_be_visible(timeout=120_000)
        page.get_by_text("Side by side").click()
        baseline = page.locator("[data-testid=stSelectbox]").filter(has_text="Baseline")
        baseline.click()
        page.get_by_role("option", name=re.compile(r"^K-Means · B=100")).click()
        expect(page.locator("[data-testid=stPlotlyChart]")).to_have_count(2)
        page.wait_for_timeout(2500)
        charts = page.locator("[data-testid=stPlotlyChart]")
        assert _pixels_near(charts.nth(0).screenshot(), BILAF_RED) > 200
        clip = _clip(page, page.get_by_text("Colour the pool by"), charts.nth(1))
        _save(page.screenshot(clip=clip), "map.png", dirs)

        # Finetune & compare: a sweep of three methods at three budgets, linear probe
        page.goto(url + "/compare")
        page.get_by_text("Accuracy vs budget in one go").click()
        start = time.monotonic()
        page.get_by_role("button", name="Run the sweep").click()
        _wait_idle(page, 1200)
        times["Compare sweep: 3 methods × 3 budgets, select + linear probe (first one extracts the test split)"] = time.monotonic() - start
        page.set_viewport_size({"width": 1600, "height": 2600})  # clips must lie inside the viewport
        page.reload()
        expect(page.get_by_text("Per-class accuracy", exact=True)).to_be_visible(timeout=60_000)
        page.wait_for_timeout(2500)
        charts = page.locator("[data-testid=stPlotlyChart]")
        clip = _clip(page, page.get_by_role("heading", name="Accuracy", exact=True), charts.nth(0), charts.nth(1))
        _save(page.screenshot(clip=clip), "compare.png", dirs)

        # Learn: the boundary step
        page.set_viewport_size({"width": 1600, "height": 1300})
        page.goto(url + "/learn")
        page.get_by_text("6 · Boundary picks", exact=True).click()
        page.wait_for_timeout(3000)
        figure = page.locator("[data-testid=stPlotlyChart]").first
        clip = _clip(page, page.get_by_role("heading", name="Budget and parameters"), figure)
        _save(page.screenshot(clip=clip), "learn.png", dirs)

    with capsys.disabled():
        print(f"\n{os.cpu_count()} CPU cores ({_cpu_model()}):")
        for what, seconds in times.items():
            print(f"  {seconds:7.1f} s  {what}")
    for name in ("map.png", "compare.png", "learn.png"):
        assert (tmp_path / name).stat().st_size > 30_000


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"
