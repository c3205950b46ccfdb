"""Issue 11 in a real browser: the Map's coverage and gaps layers, drawn by headless Chromium.

A BiLAF selection is saved in a small workspace (seeded Gaussian clusters, its map computed
up front); the test opens /map, turns on **coverage** and **gaps** and checks what Chromium drew:
the legend entries, the colourbar's title and the numbered gap markers (their numbers are
plotly annotations, SVG text above the WebGL canvas), against ``bilaf_core.inspect`` run on the same picks.

The README's screenshot ``docs/img/inspect-coverage-gaps.png`` is this test run on a real-ish
workspace (the first 10 000 Fashion-MNIST training images, EfficientNet-Lite0 features, its UMAP
map and a BiLAF selection at B=100 already in it)::

    BILAF_INSPECT_WORKSPACE=/path/to/ws BILAF_SCREENSHOT_DIR=docs/img \\
        .venv/bin/python -m pytest -m slow tests/test_browser_inspect.py -s
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from test_browser import CHROMIUM, _box_select_until, _choose, _page, _shot_dirs, _small_workspace, _streamlit

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs Chromium at {CHROMIUM} (Debian package `chromium`)")

SHOT = "inspect-coverage-gaps.png"


def _blobs_workspace(root: Path) -> Path:
    """test_browser's small workspace (400 seeded points in 5 clusters, imported with labels),
    with its map computed and BiLAF at B=20 saved."""
    from bilaf_core import projection
    from bilaf_core.selection import run_selection
    from bilaf_core.workspace import Workspace

    _small_workspace(root)
    ws = Workspace(root / "ws")
    (fs,) = ws.list_feature_sets()
    projection.project_feature_set(fs["path"])
    x = np.load(Path(fs["path"]) / "features.npy")
    ws.save_selection(run_selection("bilaf", x, 20, seed=0, core_budget=2, iterations=40), fs["id"], name="BiLAF")
    return root / "ws"


def _save_small(png: bytes, dirs: list[Path], limit: int = 290_000) -> Path:
    """The screenshot as a 256-colour PNG (a map of flat colours loses nothing visible), scaled
    down in steps until it is under `limit` bytes (the README's images stay small)."""
    from PIL import Image

    full = Image.open(io.BytesIO(png)).convert("RGB")
    scale = 1.0
    while True:
        size = (round(full.width * scale), round(full.height * scale))
        image = full if scale == 1.0 else full.resize(size, Image.Resampling.LANCZOS)
        image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        buf = io.BytesIO()
        image.save(buf, format="PNG", optimize=True)
        if buf.tell() < limit or scale < 0.4:
            break
        scale *= 0.85
    for d in dirs:
        (d / SHOT).write_bytes(buf.getvalue())
    return dirs[0] / SHOT


@pytest.mark.slow
def test_coverage_and_gaps_layers_in_a_real_browser(tmp_path):
    from playwright.sync_api import expect

    from bilaf_core.inspect import inspect_selections
    from bilaf_core.workspace import Workspace

    given = os.environ.get("BILAF_INSPECT_WORKSPACE")
    ws_root = Path(given) if given else _blobs_workspace(tmp_path)
    ws = Workspace(ws_root)
    fs = ws.list_feature_sets()[0]
    row = next(r for r in ws.list_selections(fs["id"]) if r["method"] == "bilaf" and not r.get("parent_id"))
    sel = ws.load_selection(row["id"])
    features = np.load(Path(fs["path"]) / "features.npy")
    engine = inspect_selections(features, [sel.indices], labels=[sel.diagnostics.get("cluster")], n_gaps=10)
    gaps = engine.report["selections"][0]["gaps"]
    assert gaps

    dirs = _shot_dirs(tmp_path)
    with _streamlit(ws_root, tmp_path / "streamlit.log") as url, _page(1400, 1700) as page:
        page.goto(url + "/map")
        legend = page.locator(".legendtext")
        expect(legend.filter(has_text=re.compile(r"^BiLAF boundary picks \(")).first).to_be_visible(timeout=300_000)
        page.locator("[data-testid=stCheckbox]").filter(has_text=re.compile(r"^coverage$")).click()
        expect(legend.filter(has_text="pool by distance to nearest pick").first).to_be_visible(timeout=300_000)
        page.locator("[data-testid=stCheckbox]").filter(has_text="gaps (numbered)").click()
        expect(legend.filter(has_text=f"gaps ({len(gaps)})").first).to_be_visible(timeout=300_000)
        # the colourbar of the coverage scale, with its title
        expect(page.locator(".js-plotly-plot .colorbar .cbtitle").first).to_have_text("distance to nearest pick")
        # the numbered gap markers: badges 1..N (plotly annotations, SVG above the WebGL canvas)
        numbers = page.locator(".js-plotly-plot .annotation-text")
        expect(numbers).to_have_count(len(gaps), timeout=60_000)
        assert numbers.all_text_contents() == [str(i) for i in range(1, len(gaps) + 1)]  # SVG text has no innerText
        # the gaps' thumbnail strip below the map, one "Show on map" per representative
        first_gap = page.get_by_text(re.compile(r"^gap 1 · ")).first
        expect(first_gap).to_be_visible()
        page.wait_for_timeout(2500)
        page.evaluate("document.activeElement && document.activeElement.blur()")
        main = page.locator("[data-testid=stMain]").bounding_box()
        top = page.get_by_text("Colour the pool by").bounding_box()
        strip = first_gap.bounding_box()
        clip = {"x": main["x"] + 40, "y": max(top["y"] - 12, 0), "width": main["width"] - 80,
                "height": strip["y"] + strip["height"] + 60 - top["y"]}
        shot = _save_small(page.screenshot(clip=clip), dirs)
    assert 20_000 < shot.stat().st_size < 300_000


def _tick(page, checkbox) -> None:
    """Tick a Streamlit checkbox and wait until the page has it ticked (a click that lands while
    the previous rerun is still being applied can be lost: click again, at most three times)."""
    from playwright.sync_api import expect

    for attempt in range(3):
        if not checkbox.locator("input").is_checked():
            checkbox.click()
        try:
            expect(checkbox.locator("input")).to_be_checked(timeout=15_000)
            page.wait_for_timeout(1000)
            if checkbox.locator("input").is_checked():
                return
        except AssertionError:
            if attempt == 2:
                raise


@pytest.mark.slow
def test_compare_highlight_and_repair_in_a_real_browser(tmp_path):
    """Only-picked-by against a compared selection and the overlap matrix, a gap thumbnail's
    "Show on map" ringing it, and repair: removing the picks offers replacements, and "Re-run
    within the budget, keeping my edits" saves a child record that the Selection box shows."""
    from playwright.sync_api import expect

    from bilaf_core.selection import run_selection
    from bilaf_core.workspace import Workspace

    ws_root = _blobs_workspace(tmp_path)
    ws = Workspace(ws_root)
    fs = ws.list_feature_sets()[0]
    bilaf_row = next(r for r in ws.list_selections(fs["id"]) if r["method"] == "bilaf")
    bilaf = ws.load_selection(bilaf_row["id"])
    kmeans = run_selection("kmeans", np.load(Path(fs["path"]) / "features.npy"), 20, seed=0)
    ws.save_selection(kmeans, fs["id"], name="K-Means")
    only_bilaf = np.setdiff1d(bilaf.indices, kmeans.indices).size
    only_kmeans = np.setdiff1d(kmeans.indices, bilaf.indices).size
    assert only_bilaf and only_kmeans

    with _streamlit(ws_root, tmp_path / "streamlit.log") as url, _page(1400, 1700) as page:
        page.goto(url + "/map")
        legend = page.locator(".legendtext")
        expect(legend.filter(has_text="BiLAF boundary picks (18)").first).to_be_visible(timeout=300_000)
        _choose(page, "Also draw", ["K-Means · B=20"])
        expect(legend.filter(has_text="K-Means · B=20 (20)").first).to_be_visible(timeout=120_000)
        only = page.locator("[data-testid=stCheckbox]").filter(has_text="only picked by")
        expect(only.locator("input")).to_be_enabled(timeout=60_000)  # enabled once a selection is compared
        _tick(page, only)
        expect(legend.filter(has_text=f"only picked by BiLAF · B=20 ({only_bilaf})").first).to_be_visible(timeout=120_000)
        expect(legend.filter(has_text=f"only picked by K-Means · B=20 ({only_kmeans})").first).to_be_visible()
        expect(page.get_by_text("picks in both (the diagonal: each selection's size)")).to_be_visible()

        _tick(page, page.locator("[data-testid=stCheckbox]").filter(has_text="gaps (numbered)"))
        expect(page.get_by_text(re.compile(r"^gap 1 · ")).first).to_be_visible(timeout=120_000)
        page.get_by_role("button", name="Show on map").first.click()
        expect(legend.filter(has_text="highlighted").first).to_be_visible(timeout=60_000)

        # repair: a box over the left half of the map holds some of the picks; remove them
        plot = page.locator(".js-plotly-plot").first
        remove = page.get_by_role("button", name=re.compile(r"^Remove \d+ from the picks$"))
        _box_select_until(page, plot, remove, fraction=0.5)
        removed = int(re.match(r"Remove (\d+)", remove.inner_text()).group(1))
        assert 0 < removed < 20
        remove.click()
        expect(legend.filter(has_text=f"removed by hand ({removed})").first).to_be_visible(timeout=60_000)
        expect(page.get_by_role("button", name=re.compile(r"^Add gap #\d+$"))).to_be_visible(timeout=60_000)
        page.get_by_role("button", name="Re-run within the budget, keeping my edits").click()
        selection_box = page.locator("[data-testid=stSelectbox]").filter(has_text="Selection").first.locator("input")
        expect(selection_box).to_have_value(f"BiLAF · B=20 → re-run keeping edits: +0 −{removed}", timeout=300_000)

    children = [r for r in ws.list_selections(fs["id"]) if r.get("parent_id") == bilaf_row["id"]]
    assert len(children) == 1
    child = ws.load_selection(children[0]["id"])
    kept = np.setdiff1d(bilaf.indices, child.indices)
    assert child.budget == 20 and kept.size == removed  # every kept pick is in it, none of the removed ones
