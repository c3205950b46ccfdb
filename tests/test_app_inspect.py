"""Issue 11, the app half: the Map's inspection layers (coverage, gaps, near-duplicate picks, only
picked by X), the overlap matrix, map <-> gallery, and repair (replacements, re-run keeping the
edits).  AppTests on the blobs workspace (with three planted exact duplicates); every number is
checked against bilaf_core.inspect computed here independently of the page.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _app_workspace import blobs_workspace
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 180

pytestmark = pytest.mark.usefixtures("through_app_py")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from bilaf_core.selection import run_selection

    mp = pytest.MonkeyPatch()
    env = blobs_workspace(tmp_path_factory.mktemp("inspect"), mp, planted_duplicates=3)
    sel = run_selection("bilaf", env["x"], 24, seed=0, core_budget=4, iterations=40)
    env["bilaf"] = sel
    env["bilaf_id"] = env["ws"].save_selection(sel, env["fs_id"], name="BiLAF")
    km = run_selection("kmeans", env["x"], 24, seed=0)
    env["kmeans"] = km
    env["kmeans_id"] = env["ws"].save_selection(km, env["fs_id"], name="K-Means")
    # a selection that picks both copies of each planted duplicate
    dup_rows = sorted({i for pair in env["duplicates"] for i in pair})
    rnd = run_selection("random", env["x"], 20, seed=0, include=dup_rows)
    env["random"] = rnd
    env["random_id"] = env["ws"].save_selection(rnd, env["fs_id"], name="Random")
    yield env
    mp.undo()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _map(env, selection_id: str | None = None) -> AppTest:
    shutil.rmtree(Path(env["ws"].root) / "drafts", ignore_errors=True)  # no edits left by an earlier test
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page("pages/map.py")
    at.run()
    _ok(at)
    if at.selectbox(key="map_fs").value != env["fs_id"]:
        at.selectbox(key="map_fs").set_value(env["fs_id"]).run()
    at.selectbox(key="map_main").set_value(selection_id or env["bilaf_id"]).run()
    _ok(at)
    return at


def _traces(at: AppTest, chart: int = 0) -> list[dict]:
    return json.loads(at.get("plotly_chart")[chart].proto.spec)["data"]


def _array(value) -> np.ndarray:
    """A trace array, plain or as plotly's typed array."""
    import base64

    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value)


def _trace(at: AppTest, prefix: str, chart: int = 0) -> dict | None:
    found = [t for t in _traces(at, chart) if str(t.get("name", "")).startswith(prefix)]
    assert len(found) <= 1, [t["name"] for t in found]
    return found[0] if found else None


def _count(trace: dict) -> int:
    return int(trace["name"].rsplit("(", 1)[1].rstrip(")").replace(",", ""))


def _event(indices) -> dict:
    points = [{"curve_number": 0, "point_number": 0, "point_index": 0, "x": 0, "y": 0, "customdata": int(i)} for i in indices]
    return {"selection": {"points": points, "point_indices": list(range(len(points))), "box": [], "lasso": []}}


def _engine(env, selection):
    """The engine's inspection of a saved selection, computed here the way the docs say to call it."""
    from bilaf_core.inspect import inspect_selections

    return inspect_selections(env["x"], [selection.indices], labels=[selection.diagnostics.get("cluster")], n_gaps=10)


# ------------------------------------------------------------------ 1. layers


def test_coverage_and_gaps_layers_draw_the_engines_numbers(env):
    at = _map(env)
    assert _trace(at, "gaps (") is None and _trace(at, "pool by distance") is None  # off by default
    at.checkbox(key="map_insp_coverage").check().run()
    at.checkbox(key="map_insp_gaps").check().run()
    _ok(at)
    engine = _engine(env, env["bilaf"])
    # coverage: the pool coloured by the distance to its nearest pick, with a colourbar
    cov = _trace(at, "pool by distance to nearest pick")
    assert cov is not None and cov["marker"]["colorbar"]["title"]["text"] == "distance to nearest pick"
    rows = _array(cov["customdata"]).astype(int)
    np.testing.assert_allclose(_array(cov["marker"]["color"]).astype(float), engine.coverage[0][rows], atol=1e-5)
    assert np.all(_array(cov["marker"]["color"])[np.isin(rows, env["bilaf"].indices)] == 0)  # a pick covers itself
    # gaps: numbered markers at the representatives, largest first, and their strip below the map
    gaps = engine.report["selections"][0]["gaps"]
    trace = _trace(at, "gaps (")
    assert trace is not None and _count(trace) == len(gaps) > 0
    assert _array(trace["customdata"]).astype(int).tolist() == [g["representative"] for g in gaps]
    # each ring carries its number as a badge (an annotation: above the WebGL pool, unlike SVG trace text)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    badges = spec["layout"]["annotations"]
    assert [a["text"] for a in badges] == [f"<b>{i}</b>" for i in range(1, len(gaps) + 1)]
    coords = np.stack([_array(trace["x"]).astype(float), _array(trace["y"]).astype(float)], axis=1)
    np.testing.assert_allclose([[a["x"], a["y"]] for a in badges], coords, rtol=1e-5)
    strip = [b.key for b in at.button if b.key and b.key.startswith("map_hl_gap_")]
    assert strip == [f"map_hl_gap_{g['representative']}" for g in gaps]
    # the other layers still keep their counts
    assert _count(_trace(at, "BiLAF boundary picks")) == 20


def test_near_duplicate_picks_are_flagged_with_their_count(env):
    from bilaf_core.inspect import near_duplicate_pairs

    at = _map(env, env["random_id"])
    at.checkbox(key="map_insp_dups").check().run()
    _ok(at)
    pairs = near_duplicate_pairs(env["x"], env["random"].indices, 0.05)
    flagged = sorted({i for p in pairs for i in p[:2]})
    assert sorted({i for pair in env["duplicates"] for i in pair}) == flagged  # the planted pairs, and only them
    trace = _trace(at, "near-duplicate picks (")
    assert trace is not None and _count(trace) == len(flagged) == 6
    assert sorted(_array(trace["customdata"]).astype(int).tolist()) == flagged
    # a selection without duplicates: no layer, and the page says so
    at2 = _map(env)
    at2.checkbox(key="map_insp_dups").check().run()
    _ok(at2)
    assert _trace(at2, "near-duplicate picks") is None
    assert any("No near-duplicate picks" in c.value for c in at2.caption)


def test_only_picked_by_and_overlap_match_the_engine(env):
    from bilaf_core.inspect import overlap_matrices

    at = _map(env)
    assert at.checkbox(key="map_insp_only").disabled  # nothing compared yet
    at.multiselect(key="map_overlay").set_value([env["kmeans_id"], env["random_id"]]).run()
    at.checkbox(key="map_insp_only").check().run()
    at.selectbox(key="map_insp_other").set_value(env["kmeans_id"]).run()
    _ok(at)
    a, b = env["bilaf"].indices, env["kmeans"].indices
    mine, theirs = _trace(at, "only picked by BiLAF"), _trace(at, "only picked by K-Means")
    assert _count(mine) == np.setdiff1d(a, b).size and _count(theirs) == np.setdiff1d(b, a).size
    assert sorted(_array(mine["customdata"]).astype(int).tolist()) == np.setdiff1d(a, b).tolist()
    # the overlap matrices of the shown and the two compared selections
    shared, jaccard = overlap_matrices([a, b, env["random"].indices])
    frames = [d.value for d in at.dataframe if list(d.value.columns)[:1] == ["BiLAF · B=24"]]
    assert len(frames) == 2, [list(d.value.columns) for d in at.dataframe]
    assert frames[0].to_numpy().tolist() == shared
    np.testing.assert_allclose(frames[1].to_numpy(), np.round(jaccard, 3))
    assert list(frames[0].columns) == ["BiLAF · B=24", "K-Means · B=24", "Random · B=20"]


def test_a_compared_selection_from_another_pool_gets_a_message_not_a_traceback(env):
    from pages import _inspect_ui as ui
    from pages._selection_state import SelectionState

    other = env["kmeans"]
    foreign = type(other)(method=other.method, indices=other.indices, n_pool=other.n_pool + 5, seed=0, params={}, diagnostics={},
                          timings={})
    state = SelectionState(shown=env["bilaf"], saved=env["bilaf"], record={"name": "BiLAF", "budget": 24})
    names, shared, _, problems = ui.overlap_table(state, {"x": ("elsewhere", foreign), "k": ("K-Means", other)})
    assert names == ["BiLAF · B=24", "K-Means"] and len(shared) == 2
    assert len(problems) == 1 and "same feature set" in problems[0] and "elsewhere" in problems[0]
    with pytest.raises(Exception, match="no selection is shown"):
        ui.inspection({"path": str(env["path"]), "n": env["n"]}, SelectionState())


def test_inspection_marker_colours_never_equal_or_blend_into_class_colours():
    from bilaf_core import palette

    pool = set(palette.category_palette(300)) | set(palette.CATEGORY_COLORS)
    for name in ("GAP_COLOR", "DUPLICATE_COLOR", "ONLY_SHOWN_COLOR", "ONLY_OTHER_COLOR", "HIGHLIGHT_COLOR"):
        color = getattr(palette, name)
        assert min(palette.color_distance(color, c) for c in pool) >= 25, name


# ------------------------------------------------------------------ 2. map <-> gallery


def test_clicking_a_thumbnail_highlights_it_and_clicking_a_point_shows_it(env):
    at = _map(env)
    at.checkbox(key="map_insp_gaps").check().run()
    rep = int(_engine(env, env["bilaf"]).report["selections"][0]["gaps"][1]["representative"])
    assert _trace(at, "highlighted") is None
    at.button(key=f"map_hl_gap_{rep}").click().run()
    _ok(at)
    ring = _trace(at, "highlighted (")
    assert ring is not None and _array(ring["customdata"]).astype(int).tolist() == [rep]
    # the other way: a point clicked on the map is shown below it, and its own button rings it
    point = int(np.setdiff1d(np.arange(env["n"]), env["bilaf"].indices)[7])
    at.session_state["map_chart"] = _event([point])
    at.run()
    _ok(at)
    assert any(s.value == "1 point selected on the map" for s in at.subheader)
    assert at.dataframe[-1].value["index"].tolist() == [point]
    at.button(key=f"map_hl_gallery_{point}").click().run()
    assert _array(_trace(at, "highlighted (")["customdata"]).astype(int).tolist() == [point]
    at.button(key="map_hl_clear").click().run()
    assert _trace(at, "highlighted") is None


# ------------------------------------------------------------------ 3. repair


def test_removing_a_pick_offers_unpicked_replacements_in_its_pseudo_class(env):
    base = env["bilaf"]
    cluster = np.asarray(base.diagnostics["cluster"])
    boundary = base.indices[~np.asarray(base.diagnostics["is_core_pick"], bool)]
    target = int(boundary[0])
    at = _map(env)
    assert not [b for b in at.button if b.key and b.key.startswith("map_repl_")]  # nothing removed: nothing offered
    at.session_state["map_chart"] = _event([target])
    at.run()
    at.button(key="map_remove").click().run()
    _ok(at)
    offered = [int(b.key.rsplit("_", 1)[1]) for b in at.button if b.key and b.key.startswith("map_repl_") and b.key != "map_repl_gap"]
    assert len(offered) == 5
    assert not np.isin(offered, base.indices).any()
    assert all(cluster[i] == cluster[target] for i in offered)
    # nearest first, as the engine orders them
    from bilaf_core.inspect import rows_of

    x = rows_of(env["x"], np.arange(env["n"]))
    d = np.linalg.norm(x[offered] - x[target], axis=1)
    assert np.all(np.diff(d) >= -1e-6)
    assert any(b.key == "map_repl_gap" for b in at.button)
    # one click adds it
    at.button(key=f"map_repl_{offered[0]}").click().run()
    _ok(at)
    added = _trace(at, "added by hand (")
    assert added is not None and _array(added["customdata"]).astype(int).tolist() == [offered[0]]


def test_rerun_keeping_edits_saves_a_child_record_and_shows_it(env):
    from pages import _common as common

    base = env["bilaf"]
    boundary = base.indices[~np.asarray(base.diagnostics["is_core_pick"], bool)]
    removed = [int(boundary[1]), int(boundary[2])]
    at = _map(env)
    at.session_state["map_chart"] = _event(removed)
    at.run()
    at.button(key="map_remove").click().run()
    _ok(at)
    before = {r["id"] for r in env["ws"].list_selections(env["fs_id"])}
    at.button(key="map_rerun_edits").click().run()
    _ok(at)
    jobs = [j for j in common.job_manager().list(kind="select") if (j.get("key") or "").startswith(f"rerun:{env['bilaf_id']}")]
    assert len(jobs) == 1
    common.job_manager().wait(jobs[0]["id"], timeout=TIMEOUT)
    at.run()
    _ok(at)
    new = [r for r in env["ws"].list_selections(env["fs_id"]) if r["id"] not in before]
    assert len(new) == 1
    row = new[0]
    assert row["parent_id"] == env["bilaf_id"] and row["name"] == "BiLAF · B=24 → re-run keeping edits: +0 −2"
    child = env["ws"].load_selection(row["id"])
    kept = np.setdiff1d(base.indices, removed)
    assert child.budget == base.budget == 24
    assert np.isin(kept, child.indices).all() and not np.isin(removed, child.indices).any()
    # the Map shows it, and the edits it used are gone
    assert next(b for b in at.selectbox if b.label == "Selection").value == row["id"]
    assert not any("Edited selection" in m.value for m in at.markdown)


def test_rerun_is_not_offered_when_the_edit_keeps_more_than_the_budget_and_says_why(env):
    base = env["bilaf"]
    unpicked = np.setdiff1d(np.arange(env["n"]), base.indices)[:2]
    at = _map(env)
    at.session_state["map_chart"] = _event([int(i) for i in unpicked])
    at.run()
    at.button(key="map_add").click().run()
    _ok(at)
    warnings = [w.value for w in at.warning if "Re-run keeping the edits" in w.value]
    assert warnings and "more than the method's budget of 24" in warnings[0] and "remove 2 more" in warnings[0], warnings
    assert not [b for b in at.button if b.key == "map_rerun_edits"]


def test_side_by_side_coverage_is_on_the_shown_map_only_and_compares_the_baseline(env):
    at = _map(env)
    at.toggle(key="map_side").set_value(True).run()
    at.selectbox(key="map_side_id").set_value(env["kmeans_id"]).run()
    at.checkbox(key="map_insp_coverage").check().run()
    at.checkbox(key="map_insp_only").check().run()
    _ok(at)
    assert _trace(at, "pool by distance to nearest pick", 0) is not None
    assert _trace(at, "pool by distance to nearest pick", 1) is None  # the baseline's map is not coloured by BiLAF's coverage
    a, b = env["bilaf"].indices, env["kmeans"].indices
    assert _count(_trace(at, "only picked by K-Means", 0)) == np.setdiff1d(b, a).size
    assert _trace(at, "only picked by", 1) is None


def test_removing_every_pick_is_not_offered_and_leaves_no_broken_repair_panel(env):
    """A box over the whole map holds every pick: removing them all would leave an empty
    selection, so the page says so instead of offering it (it used to accept the click, refuse the
    empty edit with an error and show a repair panel built on the refused edit: an engine error)."""
    at = _map(env)
    at.session_state["map_chart"] = _event(range(env["n"]))
    at.run()
    _ok(at)
    assert not [b for b in at.button if b.key == "map_remove"]
    assert any("removing them all would leave nothing" in c.value for c in at.caption)
    assert not [e.value for e in at.error], [e.value for e in at.error]
    assert not [b for b in at.button if (b.key or "").startswith("map_repl_")]
