"""One real-browser test: the app served by `streamlit run`, driven by headless Chromium.

Uses the system Chromium (/usr/bin/chromium, Debian package `chromium`) through Playwright's
Python API — no `playwright install`, no browser download.  A small feature set (seeded Gaussian
clusters, imported with `import_embeddings`) is registered in a temporary workspace; the test
runs BiLAF on it from the Select page, opens the Map, checks that the WebGL map is drawn with a
legend entry for BiLAF's picks, and saves a screenshot (``$BILAF_SCREENSHOT_DIR`` or the test's
temporary folder).
"""

from __future__ import annotations

import os
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

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Chromium: scripts/setup.sh --test installs it")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_workspace(root: Path) -> None:
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


@pytest.fixture
def server(tmp_path):
    _make_workspace(tmp_path)
    port = _free_port()
    env = dict(os.environ, BILAF_WORKSPACE=str(tmp_path / "ws"), PYTHONUNBUFFERED="1")
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.3)
    else:
        proc.terminate()
        pytest.fail("streamlit did not start: " + (tmp_path / "streamlit.log").read_text()[-2000:])
    yield url, tmp_path
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_bilaf_selection_then_map_in_a_real_browser(server):
    from playwright.sync_api import expect, sync_playwright

    url, tmp = server
    shots = Path(os.environ.get("BILAF_SCREENSHOT_DIR") or tmp)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url + "/select")
            page.get_by_text("Budget", exact=True).wait_for(timeout=60_000)
            page.get_by_role("button", name="Run selection").click()
            # the selection runs as a background job; its record appears in the table when done
            expect(page.get_by_text("Open the map")).to_be_visible(timeout=120_000)

            page.goto(url + "/map")
            plot = page.locator(".js-plotly-plot").first
            plot.wait_for(timeout=120_000)  # the map is computed in the background on first visit
            legend = page.locator(".legendtext", has_text="BiLAF boundary picks")
            expect(legend.first).to_be_visible(timeout=60_000)
            expect(page.locator(".legendtext", has_text="pseudo-class centres").first).to_be_visible()
            assert page.locator(".js-plotly-plot canvas").count() > 0  # WebGL scatter
            page.wait_for_timeout(800)
            page.screenshot(path=str(shots / "browser-map.png"), full_page=True)
        finally:
            browser.close()
    assert (shots / "browser-map.png").stat().st_size > 10_000
