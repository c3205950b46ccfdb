"""The app's screens, driven with Streamlit's AppTest against a temporary workspace and the real
engine: Data & model (import, extraction job), Select (background selection jobs), Map (layers,
gallery, hand edits, live budget, export), plus reload / two-tab behaviour.

The pools are small (a few hundred points) so the whole file runs in well under a minute on two
cores: seeded Gaussian blobs imported with `import_embeddings`, and the `synthetic` image dataset
extracted with the bundled EfficientNet-Lite0 (for thumbnails).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from _app_workspace import blobs, blobs_workspace
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")
TIMEOUT = 180


# ------------------------------------------------------------------ fixtures
#: every AppTest run goes through app.py, as in a browser (the fixture is in conftest.py)
pytestmark = pytest.mark.usefixtures("through_app_py")



@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A workspace with one imported feature set (blobs with labels) and its map computed."""
    mp = pytest.MonkeyPatch()
    yield blobs_workspace(tmp_path_factory.mktemp("app"), mp)
    mp.undo()


def _page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page(f"pages/{page}.py")
    at.run()
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _manager():
    from pages import _common as common

    return common.job_manager()


def _wait_jobs(kind: str | None = None, timeout: float = TIMEOUT) -> list[dict]:
    """Wait until no job (of `kind`) is queued or running; return the records."""
    manager = _manager()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = manager.list(kind=kind, active_only=True)
        if not active:
            return manager.list(kind=kind)
        for record in active:
            manager.wait(record["id"], timeout=max(0.1, deadline - time.monotonic()))
    raise AssertionError(f"jobs still running after {timeout}s: {manager.list(kind=kind, active_only=True)}")


def _select_feature_set(at: AppTest, key: str, fs_id: str) -> None:
    box = at.selectbox(key=key)
    if box.value != fs_id:
        box.set_value(fs_id).run()
        _ok(at)


def _bilaf_selection(env, budget=24, seed=0) -> str:
    """A BiLAF selection saved in the workspace (the Select page's job, run directly)."""
    from bilaf_core.selection import run_selection

    for row in env["ws"].list_selections(env["fs_id"]):
        if row.get("method") == "bilaf" and row.get("budget") == budget and not row.get("parent_id"):
            return row["id"]
    x = np.load(Path(env["path"]) / "features.npy")
    sel = run_selection("bilaf", x, budget, seed=seed, core_budget=4, iterations=40)
    return env["ws"].save_selection(sel, env["fs_id"], name="BiLAF")


def _chart_traces(at: AppTest) -> list[list[str]]:
    return [[t.get("name", "") for t in json.loads(c.proto.spec)["data"]] for c in at.get("plotly_chart")]


# ------------------------------------------------------------------ Data & model


def test_data_page_lists_sets_and_imports_embeddings_with_clear_errors(env):
    at = _page("data")
    assert at.selectbox(key="data_dataset").value == "fashion-mnist"  # offline default preselected
    assert at.selectbox(key="data_backbone").value == "efficientnet-lite0"
    assert "first 10,000" in at.radio(key="data_pool_choice").value
    table = at.dataframe[-1].value
    assert (table["images"] == env["n"]).any() and "size" in table and "time taken" in table

    # a bad upload: 1-D array -> a message that says what is wrong, nothing registered
    before = len(env["ws"].list_feature_sets())
    buf = io.BytesIO()
    np.save(buf, np.arange(10, dtype=np.float32))
    at.file_uploader(key="data_up_npy").set_value(("bad.npy", buf.getvalue(), "application/octet-stream"))
    at.run()
    at.button(key="data_import").click().run()
    assert any("2-D" in e.value for e in at.error), [e.value for e in at.error]
    assert len(env["ws"].list_feature_sets()) == before

    # a good upload with labels -> a new feature set, and its map starts in the background
    x, labels = blobs(n_per=30, k=3, seed=5)
    good, lab = io.BytesIO(), io.BytesIO()
    np.save(good, x)
    np.save(lab, labels)
    at.file_uploader(key="data_up_npy").set_value(("mine.npy", good.getvalue(), "application/octet-stream"))
    at.file_uploader(key="data_up_labels").set_value(("labels.npy", lab.getvalue(), "application/octet-stream"))
    at.run()
    at.button(key="data_import").click().run()
    _ok(at)
    assert at.success, "no success message after a valid import"
    assert len(env["ws"].list_feature_sets()) == before + 1
    _wait_jobs("project")


def test_extraction_runs_as_a_job_then_selects_and_maps(env):
    at = _page("data")
    at.selectbox(key="data_dataset").set_value("synthetic").run()
    at.radio(key="data_pool_choice").set_value("custom").run()
    at.number_input(key="data_limit").set_value(80).run()
    _ok(at)
    at.button(key="data_extract").click().run()
    _ok(at)
    records = _wait_jobs("extract")
    assert records[0]["status"] == "done", records[0]
    fs_id = records[0]["result"]["feature_set_id"]
    _wait_jobs()  # the follow-up: BiLAF at 1% and the map
    sets = {s["id"]: s for s in env["ws"].list_feature_sets()}
    assert fs_id in sets
    rows = env["ws"].list_selections(fs_id)
    assert [r["method"] for r in rows] == ["bilaf"]
    at.run()
    _ok(at)
    assert at.success  # the finished job reports itself (and survives a rerun)


# ------------------------------------------------------------------ Select


def test_select_runs_methods_in_the_background_and_lists_results(env):
    at = _page("select")
    _select_feature_set(at, "select_fs", env["fs_id"])
    at.radio(key="select_budget_unit").set_value("count").run()
    at.number_input(key="select_budget_count").set_value(20).run()
    at.multiselect(key="select_methods").set_value(["bilaf", "kmeans", "random"]).run()
    # each parameter shows its registry help (with the paper's default) as a caption
    captions = " ".join(c.value for c in at.caption)
    assert "(paper: 1.1)" in captions and "(paper: 0.1)" in captions
    at.number_input(key="select_bilaf_core_budget").set_value(4).run()
    at.number_input(key="select_bilaf_iterations").set_value(40).run()
    before = {r["id"] for r in env["ws"].list_selections(env["fs_id"])}
    at.button(key="select_run").click().run()
    _ok(at)
    records = _wait_jobs("select")
    assert all(r["status"] == "done" for r in records[:3]), records[:3]
    rows = [r for r in env["ws"].list_selections(env["fs_id"]) if r["id"] not in before]
    assert sorted(r["method"] for r in rows) == ["bilaf", "kmeans", "random"]
    assert all(r["budget"] == 20 for r in rows)
    # a fresh session (a reloaded page) still lists the results
    again = _page("select")
    _select_feature_set(again, "select_fs", env["fs_id"])
    listed = set(again.dataframe[-1].value["id"])
    assert {r["id"] for r in rows} <= listed


def test_bad_budget_is_reported_not_run(env):
    at = _page("select")
    _select_feature_set(at, "select_fs", env["fs_id"])
    at.radio(key="select_budget_unit").set_value("count").run()
    at.number_input(key="select_budget_count").set_value(3).run()
    at.number_input(key="select_bilaf_core_budget").set_value(5).run()
    at.button(key="select_run").click().run()
    _wait_jobs("select")
    last = _manager().list(kind="select")[0]
    assert last["status"] == "failed" and "core" in last["error"]
    at.run()
    assert any("core" in e.value for e in at.error)


def test_two_tabs_run_selections_at_once_without_clobbering(env):
    tabs = [_page("select"), _page("select")]
    for at, method in zip(tabs, ["random", "coreset"]):
        _select_feature_set(at, "select_fs", env["fs_id"])
        at.radio(key="select_budget_unit").set_value("count").run()
        at.number_input(key="select_budget_count").set_value(15).run()
        at.multiselect(key="select_methods").set_value([method]).run()
    before = {r["id"] for r in env["ws"].list_selections(env["fs_id"])}
    for at in tabs:
        at.button(key="select_run").click().run()
    _wait_jobs("select")
    new = [r for r in env["ws"].list_selections(env["fs_id"]) if r["id"] not in before]
    assert sorted(r["method"] for r in new) == ["coreset", "random"]
    for r in new:
        sel = env["ws"].load_selection(r["id"])
        assert sel.budget == 15 and sel.method == r["method"]


# ------------------------------------------------------------------ Map


def test_map_draws_bilaf_internals_and_baselines(env):
    bilaf_id = _bilaf_selection(env)
    at = _page("map")
    _select_feature_set(at, "map_fs", env["fs_id"])
    at.selectbox(key="map_main").set_value(bilaf_id).run()
    _ok(at)
    names = _chart_traces(at)[0]
    assert any(n.startswith("BiLAF boundary picks") for n in names)
    assert any(n.startswith("BiLAF pseudo-class centres (4)") for n in names)
    assert at.radio(key="map_color").value == "true label"
    # noise layer, colour by ring level
    at.checkbox(key="map_noise").check().run()
    at.radio(key="map_color").set_value("density-ring level").run()
    _ok(at)
    names = _chart_traces(at)[0]
    assert any(n.startswith("removed as noise") for n in names)
    assert any("density-ring level" in n for n in names)
    # a baseline overlaid, then side by side
    from bilaf_core.selection import run_selection

    x = np.load(Path(env["path"]) / "features.npy")
    km_id = env["ws"].save_selection(run_selection("kmeans", x, 24, seed=0), env["fs_id"])
    at.run()
    at.multiselect(key="map_overlay").set_value([km_id]).run()
    assert any(n.startswith("K-Means") for n in _chart_traces(at)[0])
    at.toggle(key="map_side").set_value(True).run()
    at.selectbox(key="map_side_id").set_value(km_id).run()
    _ok(at)
    charts = _chart_traces(at)
    assert len(charts) == 2 and any(n.startswith("K-Means picks") for n in charts[1])
    # export buttons for the shown selection
    labels = [b.label for b in at.get("download_button")]
    assert any("JSON" in label for label in labels) and any("CSV" in label for label in labels)


def test_map_without_selection_says_what_to_do(env, tmp_path):
    from bilaf_core import projection
    from bilaf_core.features import import_embeddings

    x, _ = blobs(n_per=20, k=2, seed=9)
    np.save(tmp_path / "e.npy", x)
    path = import_embeddings(tmp_path / "e.npy", out_dir=Path(env["ws"].features_root) / "empty-one")
    fs_id = env["ws"].register_feature_set(path)
    projection.project_feature_set(path)
    at = _page("map")
    _select_feature_set(at, "map_fs", fs_id)
    assert any("Select" in i.value for i in at.info)
    assert len(at.get("plotly_chart")) == 1  # the pool is drawn meanwhile


def _map_on_bilaf(env):
    """The Map page showing the saved BiLAF selection: (AppTest, selection id, Selection)."""
    bilaf_id = _bilaf_selection(env)
    base = env["ws"].load_selection(bilaf_id)
    at = _page("map")
    _select_feature_set(at, "map_fs", env["fs_id"])
    at.selectbox(key="map_main").set_value(bilaf_id).run()
    return at, bilaf_id, base


def test_map_live_budget_reuses_the_cores_and_saves_a_new_record(env):
    at, bilaf_id, base = _map_on_bilaf(env)
    at.number_input(key=f"map_budget_{bilaf_id}").set_value(40).run()
    _ok(at)
    assert any("Preview at B=40" in c.value for c in at.caption)
    names = _chart_traces(at)[0]
    assert any(n.startswith("BiLAF boundary picks (36)") for n in names)
    at.button(key="map_save_budget").click().run()
    _ok(at)
    saved = [r for r in env["ws"].list_selections(env["fs_id"]) if r.get("budget") == 40 and r["method"] == "bilaf"]
    assert saved
    new = env["ws"].load_selection(saved[0]["id"])
    np.testing.assert_array_equal(new.diagnostics["core_indices"], base.diagnostics["core_indices"])


def test_map_point_selection_gallery_and_hand_edits(env):
    at, bilaf_id, base = _map_on_bilaf(env)
    # what st.plotly_chart's selection event delivers (customdata = pool index)
    outside = [i for i in range(env["n"]) if i not in set(base.to_list())][:2]
    inside = int(base.indices[-1])
    points = [{"curve_number": 0, "point_number": 0, "point_index": 0, "x": 0, "y": 0, "customdata": i} for i in outside + [inside]]
    event = {"selection": {"points": points, "point_indices": [0, 1, 2], "box": [], "lasso": []}}
    at.session_state["map_chart"] = event
    at.run()
    _ok(at)
    assert any("3 points selected" in h.value for h in at.subheader)
    table = at.dataframe[0].value
    assert list(table["index"])[0] == inside  # picks first
    assert set(table["id"]) == {f"img/{i:04d}.png" for i in outside + [inside]}
    at.button(key="map_add").click().run()
    # now select only the picked point and remove it
    at.session_state["map_chart"] = {"selection": {"points": points[2:], "point_indices": [2], "box": [], "lasso": []}}
    at.run()
    at.button(key="map_remove").click().run()
    _ok(at)
    assert any("+2 added" in m.value for m in at.markdown)
    at.button(key="map_save_edit").click().run()
    _ok(at)
    edited = [r for r in env["ws"].list_selections(env["fs_id"]) if r.get("parent_id") == bilaf_id]
    assert len(edited) == 1
    sel = env["ws"].load_selection(edited[0]["id"])
    assert set(sel.to_list()) == (set(base.to_list()) - {inside}) | set(outside)
    assert env["ws"].load_selection(bilaf_id).to_list() == base.to_list()  # the original stays


# ------------------------------------------------------------------ Finetune & compare


def _chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _accuracy_table(at: AppTest):
    return next(d.value for d in at.dataframe if "test accuracy (%)" in d.value)


def _axis_title(spec: dict, axis: str) -> str:
    title = spec["layout"].get(axis, {}).get("title", {})
    return title.get("text", "") if isinstance(title, dict) else str(title)


def test_compare_linear_probe_on_two_selections_table_curve_per_class_confusion(env):
    from bilaf_core.selection import run_selection

    bilaf_id = _bilaf_selection(env)
    x = np.load(Path(env["path"]) / "features.npy")
    random_id = env["ws"].save_selection(run_selection("random", x, 24, seed=1), env["fs_id"], name="Random")
    at = _page("compare")
    _select_feature_set(at, "compare_fs", env["fs_id"])
    at.multiselect(key="compare_selections").set_value([bilaf_id, random_id]).run()
    assert at.radio(key="compare_mode").value == "linear-probe"
    at.button(key="compare_run").click().run()
    _ok(at)
    records = _wait_jobs("evaluate")
    assert all(r["status"] == "done" for r in records[:2]), records[:2]
    at.run()
    _ok(at)

    # the table: one row per selection, accuracy on the held-out pool (imported embeddings: no test split)
    table = _accuracy_table(at)
    rows = {r["selection"]: r for r in table.to_dict("records")}
    assert {"BiLAF · B=24", "Random · B=24"} <= set(rows)
    for r in (rows["BiLAF · B=24"], rows["Random · B=24"]):
        assert r["training"] == "linear-probe" and r["trained on"] == 24
        assert 50 < r["test accuracy (%)"] <= 100  # four well-separated blobs
        assert "pool-holdout" in r["tested on"]

    specs = _chart_specs(at)
    curve = next(s for s in specs if _axis_title(s, "yaxis") == "test accuracy (%)")
    curve_names = [t["name"] for t in curve["data"] if t.get("showlegend", True) is not False]
    assert {"BiLAF", "Random"} <= set(curve_names)
    from bilaf_core import palette

    bilaf_trace = next(t for t in curve["data"] if t["name"] == "BiLAF")
    assert bilaf_trace["line"]["color"] == palette.method_color("bilaf")  # the map's colour
    per_class = next(s for s in specs if _axis_title(s, "yaxis") == "per-class accuracy (%)")
    assert len(per_class["data"]) == 2 and len(per_class["data"][0]["x"]) == 4
    confusion = next(s for s in specs if s["data"][0]["type"] == "heatmap")
    assert len(confusion["data"][0]["x"]) == len(confusion["data"][0]["y"]) == 4  # 4 x 4 classes
    assert any(s["layout"].get("title", {}).get("text") == "labelled picks per class" for s in specs)

    # a reloaded page (fresh session) shows the same results without running anything
    again = _page("compare")
    _select_feature_set(again, "compare_fs", env["fs_id"])
    assert set(_accuracy_table(again)["selection"]) >= {"BiLAF · B=24", "Random · B=24"}


def test_compare_budget_sweep_draws_one_line_per_method(env):
    at = _page("compare")
    _select_feature_set(at, "compare_fs", env["fs_id"])
    at.multiselect(key="compare_sweep_methods").set_value(["bilaf", "kmeans"]).run()
    at.text_input(key="compare_sweep_budgets").set_value("12, 30").run()
    at.selectbox(key="compare_sweep_mode").set_value("knn").run()
    _ok(at)
    at.button(key="compare_sweep_run").click().run()
    records = _wait_jobs("evaluate")
    assert all(r["status"] == "done" for r in records[:4]), [r.get("error") for r in records[:4]]
    at.run()
    _ok(at)
    if any(r.key == "compare_plot_mode" for r in at.radio):  # only when earlier tests left evaluations of another mode
        at.radio(key="compare_plot_mode").set_value("knn").run()
    curve = next(s for s in _chart_specs(at) if _axis_title(s, "yaxis") == "test accuracy (%)")
    lines = {t["name"]: t["x"] for t in curve["data"] if t.get("mode") == "lines+markers"}
    assert lines["BiLAF"] == [12, 30] and lines["K-Means"] == [12, 30]
    # the same sweep again has nothing left to do: its selections are saved and evaluated
    at.run()
    assert any("4 already done" in c.value for c in at.caption), [c.value for c in at.caption]
    assert at.button(key="compare_sweep_run").disabled


def test_compare_says_what_to_do_without_labels(env, tmp_path):
    from bilaf_core.features import import_embeddings

    x, _ = blobs(n_per=15, k=2, seed=4)
    np.save(tmp_path / "u.npy", x)
    path = import_embeddings(tmp_path / "u.npy", out_dir=Path(env["ws"].features_root) / "unlabelled")
    fs_id = env["ws"].register_feature_set(path)
    at = _page("compare")
    _select_feature_set(at, "compare_fs", fs_id)
    assert any("no labels" in w.value for w in at.warning)


def test_compare_finetune_of_imported_embeddings_says_why_not(env):
    bilaf_id = _bilaf_selection(env)
    at = _page("compare")
    _select_feature_set(at, "compare_fs", env["fs_id"])
    at.multiselect(key="compare_selections").set_value([bilaf_id]).run()
    at.radio(key="compare_mode").set_value("finetune").run()
    _ok(at)
    assert at.selectbox(key="compare_preset").value is None  # the engine's recommendation for this backbone
    at.button(key="compare_run").click().run()
    record = _wait_jobs("evaluate")[0]
    assert record["status"] == "failed" and "imported embeddings" in record["error"]
    at.run()
    assert any("imported embeddings" in e.value for e in at.error)  # shown on the page, with what to do


@pytest.mark.slow
def test_compare_finetunes_the_backbone_for_one_epoch(env):
    from bilaf_core.features import extract_features
    from bilaf_core.selection import run_selection

    path = extract_features("synthetic", "efficientnet-lite0", limit=120, cache_root=env["ws"].features_root)
    fs_id = env["ws"].register_feature_set(path)
    x = np.load(Path(path) / "features.npy")
    sel_id = env["ws"].save_selection(run_selection("random", x, 24, seed=0), fs_id, name="Random")
    at = _page("compare")
    _select_feature_set(at, "compare_fs", fs_id)
    at.multiselect(key="compare_selections").set_value([sel_id]).run()
    at.radio(key="compare_mode").set_value("finetune").run()
    at.selectbox(key="compare_preset").set_value("cpu-quick").run()
    at.number_input(key="compare_epochs").set_value(1).run()
    at.button(key="compare_run").click().run()
    record = _wait_jobs("evaluate", timeout=900)[0]
    assert record["status"] == "done", record.get("error")
    at.run()
    _ok(at)
    row = _accuracy_table(at).to_dict("records")[0]
    assert row["training"] == "finetune (cpu-quick)" and row["trained on"] == 24
