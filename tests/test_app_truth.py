"""Issue 10, "The Map tells the truth": one AppTest (or unit) test per problem the issue lists,
each of which failed before the fix.  The browser side (box-select the whole map, add, save; the
Select page's pool picker; a budget of 0; /data opened directly) is in tests/test_browser.py.

Small pools (a few hundred seeded Gaussian points, imported embeddings with labels and ids) in a
temporary workspace; the real engine throughout.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _app_workspace import blobs, blobs_workspace
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 180

pytestmark = pytest.mark.usefixtures("through_app_py")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from bilaf_core.selection import run_selection

    mp = pytest.MonkeyPatch()
    env = blobs_workspace(tmp_path_factory.mktemp("truth"), mp)
    sel = run_selection("bilaf", env["x"], 24, seed=0, core_budget=4, iterations=40)
    env["bilaf_id"] = env["ws"].save_selection(sel, env["fs_id"], name="BiLAF")
    yield env
    mp.undo()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page(f"pages/{page}.py")
    at.run()
    _ok(at)
    return at


def _traces(at: AppTest, chart: int = 0) -> list[dict]:
    return json.loads(at.get("plotly_chart")[chart].proto.spec)["data"]


def _names(at: AppTest, chart: int = 0) -> list[str]:
    return [t.get("name", "") for t in _traces(at, chart)]


def _customdata(trace: dict) -> list[int]:
    """A trace's customdata (pool indices), plain or as plotly's typed array."""
    import base64

    cd = trace.get("customdata")
    if isinstance(cd, dict) and "bdata" in cd:
        return np.frombuffer(base64.b64decode(cd["bdata"]), dtype=np.dtype(cd["dtype"])).astype(int).tolist()
    return [int(i) for i in cd]


def _count(names: list[str], prefix: str) -> int | None:
    for n in names:
        if n.startswith(prefix + " ("):
            return int(n[len(prefix) + 2 : -1].replace(",", ""))
    return None


def _event(indices) -> dict:
    points = [{"curve_number": 0, "point_number": 0, "point_index": 0, "x": 0, "y": 0, "customdata": int(i)} for i in indices]
    return {"selection": {"points": points, "point_indices": list(range(len(points))), "box": [], "lasso": []}}


def _selection_box(at: AppTest):
    """The Map's Selection box (its key changes when the page switches records after a save)."""
    return next(b for b in at.selectbox if b.label == "Selection")


def _map(env, selection_id: str | None = None) -> AppTest:
    at = _page("map")
    if at.selectbox(key="map_fs").value != env["fs_id"]:
        at.selectbox(key="map_fs").set_value(env["fs_id"]).run()
    at.selectbox(key="map_main").set_value(selection_id or env["bilaf_id"]).run()
    _ok(at)
    return at


def _fresh_edits(env):
    """No drafts left by an earlier test."""
    shutil.rmtree(Path(env["ws"].root) / "drafts", ignore_errors=True)


def _manager():
    from pages import _common as common

    return common.job_manager()


# ------------------------------------------------------------------ 1. hand edits are their own layers


def test_1_hand_edits_are_layers_of_their_own_and_method_layers_keep_their_counts(env):
    _fresh_edits(env)
    base = env["ws"].load_selection(env["bilaf_id"])
    at = _map(env)
    names = _names(at)
    boundary, cores = _count(names, "BiLAF boundary picks"), _count(names, "BiLAF pseudo-class centres")
    assert (boundary, cores) == (20, 4)
    outside = [i for i in range(env["n"]) if i not in set(base.to_list())][:5]
    at.session_state["map_chart"] = _event(outside)
    at.run()
    at.button(key="map_add").click().run()
    _ok(at)
    names = _names(at)
    assert _count(names, "added by hand") == 5
    assert _count(names, "BiLAF boundary picks") == boundary and _count(names, "BiLAF pseudo-class centres") == cores
    # removing a core: it moves to a hollow "removed by hand" layer, it does not silently vanish
    core = int(base.indices[np.asarray(base.diagnostics["is_core_pick"], bool)][0])
    at.session_state["map_chart"] = _event([core])
    at.run()
    at.button(key="map_remove").click().run()
    _ok(at)
    traces = {t["name"]: t for t in _traces(at)}
    removed = [t for n, t in traces.items() if n.startswith("removed by hand (")]
    assert removed and removed[0]["marker"]["symbol"] == "circle-open" and _customdata(removed[0]) == [core]
    assert _count(list(traces), "BiLAF boundary picks") == boundary
    # saved, the record draws the same layers
    at.button(key="map_save_edit").click().run()
    _ok(at)
    names = _names(at)
    assert _count(names, "added by hand") == 5 and _count(names, "removed by hand") == 1
    assert _count(names, "BiLAF boundary picks") == boundary


def _map_with_three_unpicked_selected(env):
    """The Map on the saved BiLAF selection, no edits yet, with three points it did not pick box-selected."""
    _fresh_edits(env)
    base = env["ws"].load_selection(env["bilaf_id"])
    at = _map(env)
    outside = [i for i in range(env["n"]) if i not in set(base.to_list())][:3]
    at.session_state["map_chart"] = _event(outside)
    at.run()
    return at, base, outside


# ------------------------------------------------------------------ 2. saving switches every control, named after the parent


def test_2_saving_an_edit_shows_the_new_record_everywhere_and_unsaved_edits_survive_a_reload(env):
    at, base, outside = _map_with_three_unpicked_selected(env)
    at.button(key="map_add").click().run()
    # a reload (a new session) before saving: the edit is restored, and the page says so
    again = _map(env)
    assert any("restored" in i.value for i in again.info), [i.value for i in again.info]
    assert _count(_names(again), "added by hand") == 3
    again.button(key="map_save_edit").click().run()
    _ok(again)
    new = [r for r in env["ws"].list_selections(env["fs_id"]) if r.get("parent_id") == env["bilaf_id"]
           and r.get("name") == "BiLAF · B=24 → edited: +3 −0"]
    assert len(new) == 1, [r.get("name") for r in env["ws"].list_selections(env["fs_id"])]
    # every control now reads the new record
    assert _selection_box(again).value == new[0]["id"]
    assert _selection_box(again).format_func(new[0]["id"]) == "BiLAF · B=24 → edited: +3 −0"
    export_box = again.selectbox(key="map_export_choice")
    assert export_box.value == "shown" and export_box.format_func("shown") == "BiLAF · B=24 → edited: +3 −0"
    assert not any("unsaved" in m.value.lower() for m in again.markdown if "Edited selection" in m.value)


# ------------------------------------------------------------------ 3. the budget preview is what everything reads


def test_3_budget_preview_drives_gallery_picked_by_add_remove_and_export(env):
    _fresh_edits(env)
    saved = env["ws"].load_selection(env["bilaf_id"])
    at = _map(env)
    at.number_input(key=f"map_budget_{env['bilaf_id']}").set_value(40).run()
    _ok(at)
    assert _count(_names(at), "BiLAF boundary picks") == 36
    from pages import _common as common

    fs = next(f for f in common.feature_sets() if f["id"] == env["fs_id"])
    preview = common.bilaf_at_budget(fs, env["bilaf_id"], 40)
    only_in_preview = [int(i) for i in preview.indices if int(i) not in set(saved.to_list())][:4]
    assert only_in_preview
    at.session_state["map_chart"] = _event(only_in_preview)
    at.run()
    _ok(at)
    # they are picks of what is shown: Remove counts them, Add is not offered, the table says so
    assert any(b.label == f"Remove {len(only_in_preview)} from the picks" for b in at.button)
    assert not any(b.label.startswith("Add ") for b in at.button)
    table = at.dataframe[0].value
    assert all("B=40" in by for by in table["picked by"]), list(table["picked by"])
    assert set(table["role"]) <= {"boundary", "core"}
    # Export's first entry is the preview, with its 40 picks
    box = at.selectbox(key="map_export_choice")
    assert box.value == "shown" and "B=40" in box.format_func("shown") and "preview" in box.format_func("shown")
    # saving the budget switches to the new record named after its parent
    at.button(key="map_save_budget").click().run()
    _ok(at)
    rows = {r["id"]: r for r in env["ws"].list_selections(env["fs_id"])}
    new_id = _selection_box(at).value
    assert rows[new_id]["budget"] == 40 and rows[new_id]["name"] == "BiLAF · B=24 → B=40"


# ------------------------------------------------------------------ 4. an invalid budget disables Run and says why


@pytest.mark.parametrize("count", [0, 20_000])
def test_4_invalid_budget_disables_run_and_says_why(env, count):
    at = _page("select")
    at.selectbox(key="select_fs").set_value(env["fs_id"]).run()
    at.radio(key="select_budget_unit").set_value("count").run()
    at.number_input(key="select_budget_count").set_value(count).run()
    _ok(at)
    assert at.button(key="select_run").disabled
    assert any("budget" in e.value.lower() for e in at.error), [e.value for e in at.error]
    # (AppTest, like a browser, cannot press a disabled button: nothing can run)
    assert "Run is disabled until the budget is valid." in [c.value for c in at.caption]


# ------------------------------------------------------------------ 5. a test split is never offered as a pool


def test_5_test_split_is_not_offered_as_a_pool(env):
    test_dir = Path(env["ws"].features_root) / "blobs-test-split"
    if not test_dir.exists():
        shutil.copytree(env["path"], test_dir, ignore=shutil.ignore_patterns("projections", ".features-digest.json"))
        meta = json.loads((test_dir / "meta.json").read_text())
        meta["dataset"] = {**(meta.get("dataset") or {}), "name": "fashion-mnist", "split": "test", "limit": None}
        (test_dir / "meta.json").write_text(json.dumps(meta))
    test_id = env["ws"].register_feature_set(test_dir)
    for page, key in (("select", "select_fs"), ("map", "map_fs"), ("compare", "compare_fs")):
        at = _page(page)
        labels = at.selectbox(key=key).options  # what the user sees (the formatted labels)
        assert labels and all("test split" not in str(o) for o in labels), (page, labels)
        assert at.selectbox(key=key).value != test_id
    from pages import _store

    assert test_id not in [f["id"] for f in _store.pool_feature_sets()]
    assert test_id in [f["id"] for f in _store.feature_sets()]  # still listed on Data & model


# ------------------------------------------------------------------ 6. identical selections are reused


def test_6_identical_selection_is_reused_not_run_again(env):
    at = _page("select")
    at.selectbox(key="select_fs").set_value(env["fs_id"]).run()
    at.radio(key="select_budget_unit").set_value("count").run()
    at.number_input(key="select_budget_count").set_value(30).run()
    at.multiselect(key="select_methods").set_value(["kmeans"]).run()
    at.button(key="select_run").click().run()
    for r in _manager().list(kind="select", active_only=True):
        _manager().wait(r["id"], timeout=TIMEOUT)
    made = [r for r in env["ws"].list_selections(env["fs_id"]) if r["method"] == "kmeans" and r["budget"] == 30]
    assert len(made) == 1
    at.run()
    assert any("reused" in c.value for c in at.caption), [c.value for c in at.caption]
    before = len(_manager().list(kind="select"))
    at.button(key="select_run").click().run()
    _ok(at)
    assert len(_manager().list(kind="select")) == before
    assert len([r for r in env["ws"].list_selections(env["fs_id"]) if r["method"] == "kmeans" and r["budget"] == 30]) == 1


# ------------------------------------------------------------------ 7. colours


def test_7_pick_colours_never_blend_into_pool_colours_and_noise_has_its_own():
    from bilaf_core import palette

    pool = set(palette.category_palette(300)) | set(palette.CATEGORY_COLORS)
    markers = {**palette.METHOD_COLORS, "core": palette.CORE_COLOR, "noise": palette.NOISE_COLOR, "added": palette.ADDED_COLOR}
    for name, color in markers.items():
        nearest = min(palette.color_distance(color, c) for c in pool)
        assert nearest >= 25, (name, color, nearest)
    # 50-300 pseudo-classes: one colour each, none grey (grey read as noise)
    for n in (50, 120, 300):
        colors = palette.category_palette(n)
        assert len(set(colors)) == n
    import colorsys

    for c in palette.category_palette(300):
        r, g, b = (int(c[i : i + 2], 16) / 255 for i in (1, 3, 5))
        assert colorsys.rgb_to_hls(r, g, b)[2] > 0.2, c


def test_7_many_pseudo_classes_are_not_cycled_and_side_by_side_maps_hold_only_their_own_layers(env):
    from bilaf_core.selection import run_selection

    _fresh_edits(env)
    sel = run_selection("bilaf", env["x"], 90, seed=1, core_budget=45, iterations=20)
    many_id = env["ws"].save_selection(sel, env["fs_id"], name="BiLAF many")
    at = _map(env, many_id)
    at.radio(key="map_color").set_value("pseudo-class").run()
    _ok(at)
    pool_trace = _traces(at)[0]
    scale = pool_trace["marker"]["colorscale"]
    assert len({c for _, c in scale}) == 45  # one colour per pseudo-class, none repeated
    km = env["ws"].save_selection(run_selection("random", env["x"], 24, seed=3), env["fs_id"], name="Random")
    at.run()
    at.multiselect(key="map_overlay").set_value([km]).run()
    assert any(n.startswith("Random") for n in _names(at))
    at.toggle(key="map_side").set_value(True).run()
    at.selectbox(key="map_side_id").set_value(km).run()
    _ok(at)
    main, side = _names(at, 0), _names(at, 1)
    assert not any(n.startswith("Random") for n in main)  # the overlay stays off the side-by-side panel
    assert not any(n.startswith("BiLAF") for n in side) and any(n.startswith("Random picks") for n in side)
    # full-width panels: neither map sits in a column
    assert len(at.get("plotly_chart")) == 2
    for column in at.columns:
        assert not column.get("plotly_chart")
    for chart in at.get("plotly_chart"):
        assert json.loads(chart.proto.spec)["layout"]["showlegend"] is True


# ------------------------------------------------------------------ 8. exact feedback


def test_8_one_eta_per_job_line():
    from pages._jobs_ui import job_progress_line

    line = job_progress_line({"progress": 0.2, "message": "extracting 2,000/10,000 images · 40 img/s · ETA 3m20s",
                              "elapsed_s": 50, "eta_s": 399})
    assert line.count("ETA") + line.count(" left") == 1, line
    line = job_progress_line({"progress": 0.5, "message": "laying out the map", "elapsed_s": 20, "eta_s": 20})
    assert "about 20s left" in line or "left" in line


def test_8_stale_outcomes_clear_after_a_successful_rerun():
    from pages._jobs_ui import latest_per_work

    old = {"id": "a", "key": "select:x", "status": "cancelled", "created": 1.0}
    new = {"id": "b", "key": "select:x", "status": "done", "created": 2.0}
    other = {"id": "c", "key": "select:y", "status": "failed", "created": 1.5}
    assert [r["id"] for r in latest_per_work([new, other, old])] == ["b", "c"]


def test_8_compare_says_running_while_evaluations_run_and_a_second_tab_sees_extraction(env, tmp_path, monkeypatch):
    from pages import _common as common

    release = threading.Event()

    def wait(progress):
        while not release.wait(0.1):
            progress(0.1, "training")
        return {}

    job = _manager().submit("evaluate", "linear probe: test", wait, tags={"feature_set": env["fs_id"]}, key=f"eval-test-{time.time()}")
    try:
        at = _page("compare")
        at.selectbox(key="compare_fs").set_value(env["fs_id"]).run()
        texts = [i.value for i in at.info]
        assert any("running" in t for t in texts) and not any(t.startswith("No result yet") for t in texts), texts
    finally:
        release.set()
        _manager().wait(job, timeout=30)
    # a second tab opened while features are extracted (empty workspace): says extraction is running
    monkeypatch.setenv("BILAF_WORKSPACE", str(tmp_path / "empty-ws"))
    release2 = threading.Event()
    manager = common.job_manager()
    ext = manager.submit("extract", "Extract Fashion-MNIST · efficientnet-lite0 · 10,000 images",
                         lambda progress: release2.wait(30) and {}, key="extract:test")
    try:
        at = _page("select")
        texts = [i.value for i in at.info]
        assert any("being extracted" in t for t in texts), texts
        assert not any("No feature set yet" in t for t in texts)
    finally:
        release2.set()
        manager.wait(ext, timeout=30)


# ------------------------------------------------------------------ 9. upload errors name the user's file


def test_9_upload_errors_name_the_users_file_never_a_temp_path_nor_pickle_advice(env):
    at = _page("data")
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}, {"b": 2}], dtype=object), allow_pickle=True)
    at.file_uploader(key="data_up_npy").set_value(("my embeddings.npy", obj.getvalue(), "application/octet-stream"))
    at.run()
    at.button(key="data_import").click().run()
    errors = [e.value for e in at.error]
    assert errors and any("my embeddings.npy" in e for e in errors), errors
    assert not any("/tmp" in e or "allow_pickle" in e for e in errors), errors
    # bad ids file: named as the user named it
    good = io.BytesIO()
    np.save(good, np.zeros((5, 3), np.float32) + np.arange(5)[:, None])
    at.file_uploader(key="data_up_npy").set_value(("emb.npy", good.getvalue(), "application/octet-stream"))
    at.file_uploader(key="data_up_ids").set_value(("ids_short.txt", b"a\nb\n", "text/plain"))
    at.run()
    at.button(key="data_import").click().run()
    errors = [e.value for e in at.error]
    assert any("ids_short.txt" in e for e in errors) and not any("/tmp" in e for e in errors), errors
    # a .txt embedding file: a clear message, Import stays off
    at.file_uploader(key="data_up_ids").set_value(None)
    at.file_uploader(key="data_up_npy").set_value(("emb.txt", b"1 2 3\n4 5 6\n", "text/plain"))
    at.run()
    assert any("emb.txt" in e.value and ".npy" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="data_import").disabled


# ------------------------------------------------------------------ 10. the gallery and the table


def test_10_gallery_badges_roles_no_raw_none_and_no_remove_zero(env):
    at, base, outside = _map_with_three_unpicked_selected(env)
    _ok(at)
    # nothing picked among them: no "Remove 0" offered
    assert not any(b.label.startswith("Remove 0") for b in at.button)
    assert any(b.label == "Add 3 to the picks" for b in at.button)
    at.button(key="map_add").click().run()
    core = int(base.indices[np.asarray(base.diagnostics["is_core_pick"], bool)][0])
    boundary = int(base.indices[~np.asarray(base.diagnostics["is_core_pick"], bool)][0])
    at.session_state["map_chart"] = _event(outside + [core, boundary])
    at.run()
    _ok(at)
    table = at.dataframe[0].value
    roles = dict(zip(table["index"], table["role"]))
    assert roles[core] == "core" and roles[boundary] == "boundary" and all(roles[i] == "added" for i in outside)
    assert not table.isna().any().any()
    assert not (table.astype(str) == "None").any().any()
    # imported embeddings have no thumbnails; the badges are HTML built for each role
    from pages import _selection_state as state_mod

    for role in state_mod.ROLES:
        assert f"data-role='{role}'" in state_mod.badge_html(role)


# ------------------------------------------------------------------ 11. Learn


@pytest.fixture
def learn(tmp_path, monkeypatch):
    monkeypatch.setenv("BILAF_WORKSPACE", str(tmp_path / "ws"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page("pages/learn.py")
    at.run()
    _ok(at)
    return at


def test_11_learn_texts_match_what_is_drawn(learn):
    at = learn
    at.session_state["learn_step"] = "5_denoise"
    at.run()
    text = " ".join(m.value for m in at.markdown)
    assert "grey" not in text.lower()
    from bilaf_core import palette

    noise = [t for t in _traces(at) if t.get("name", "").startswith("removed as noise")][0]
    assert noise["marker"]["color"] == palette.NOISE_COLOR
    # step 3 admits a merge when two hidden classes share a pseudo-class (the default seed has one)
    at.session_state["learn_step"] = "3_assign"
    at.run()
    _ok(at)
    text = " ".join(m.value for m in at.markdown)
    assert "share pseudo-class" in text and "has a pseudo-class of its own" not in text, text
    # step 7 draws BiLAF's core stars beside its boundary picks
    at.session_state["learn_step"] = "7_compare"
    at.run()
    _ok(at)
    bilaf = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    assert any(t.get("name", "").startswith("core samples") and t["marker"]["symbol"] == "star" for t in bilaf)
