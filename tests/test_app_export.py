"""Selection export (JSON / CSV), hand edits of a selection, and the shared palette."""

import csv
import io
import json

import numpy as np
import pytest

from bilaf_core import export, palette
from bilaf_core.errors import BilafError
from bilaf_core.selection import Selection, available_methods, run_selection


def _pool(n=240, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (4, 16))
    return np.concatenate([rng.normal(c, 1.0, (n // 4, 16)) for c in centres]).astype(np.float32)


@pytest.fixture(scope="module")
def bilaf_selection():
    return run_selection("bilaf", _pool(), 24, seed=0, core_budget=4, iterations=30)


def test_json_is_the_plain_list_of_indices_in_pick_order(bilaf_selection):
    data = json.loads(export.indices_json(bilaf_selection.indices))
    assert data == bilaf_selection.to_list()


def test_csv_rows_carry_cluster_role_and_score(bilaf_selection):
    meta = {"ids": [f"img_{i:04d}.png" for i in range(240)], "labels": [i // 60 for i in range(240)],
            "class_names": ["a", "b", "c", "d"]}
    rows = list(csv.DictReader(io.StringIO(export.selection_csv(bilaf_selection, meta).decode())))
    assert [int(r["index"]) for r in rows] == bilaf_selection.to_list()
    assert list(rows[0]) == list(export.CSV_COLUMNS)
    d = bilaf_selection.diagnostics
    assert [int(r["cluster"]) for r in rows] == d["pick_cluster"].tolist()
    roles = [r["role"] for r in rows]
    assert roles.count("core") == 4 and roles.count("boundary") == 20
    for r, core in zip(rows, d["is_core_pick"]):
        assert (r["score"] == "") == bool(core)  # cores have no boundary score
    first = rows[0]
    assert first["id"] == f"img_{int(first['index']):04d}.png" and first["label"] in "abcd"
    assert all(r["method"] == "bilaf" for r in rows)


def test_csv_of_a_method_without_diagnostics_and_without_meta():
    sel = Selection(method="random", indices=np.array([5, 2, 9]), n_pool=10, seed=0, params={}, diagnostics={}, timings={})
    rows = list(csv.DictReader(io.StringIO(export.selection_csv(sel).decode())))
    assert [r["index"] for r in rows] == ["5", "2", "9"]
    assert all(r["cluster"] == "" and r["score"] == "" and r["role"] == "pick" for r in rows)


def test_edit_keeps_order_reindexes_per_pick_diagnostics_and_leaves_the_parent(bilaf_selection):
    parent = bilaf_selection
    before = parent.indices.copy()
    boundary = parent.indices[~parent.diagnostics["is_core_pick"]]
    drop = [int(boundary[0]), int(boundary[3])]
    outside = [i for i in range(240) if i not in set(parent.indices.tolist())][:3]
    edited = export.edit_selection(parent, add=outside + [outside[0]], remove=drop, parent_id="sel-1")
    np.testing.assert_array_equal(parent.indices, before)  # the original is untouched
    assert edited.budget == parent.budget - 2 + 3
    kept = [i for i in parent.to_list() if i not in drop]
    assert edited.to_list() == kept + outside
    d = edited.diagnostics
    assert d["boundary_score"].shape == (edited.budget,) and np.isnan(d["boundary_score"][-3:]).all()
    assert d["pick_cluster"][-3:].tolist() == [-1, -1, -1]
    assert d["edited_added"].tolist() == [False] * len(kept) + [True] * 3
    np.testing.assert_array_equal(d["cluster"], parent.diagnostics["cluster"])  # pool-level unchanged
    assert edited.params["edited_from"] == "sel-1" and edited.params["added"] == 3 and edited.params["removed"] == 2
    rows = list(csv.DictReader(io.StringIO(export.selection_csv(edited).decode())))
    assert [r["role"] for r in rows[-3:]] == ["added"] * 3
    # editing an edited selection keeps the marks consistent
    again = export.edit_selection(edited, remove=[outside[1]])
    assert again.diagnostics["edited_added"].tolist() == [False] * len(kept) + [True, True]


def test_edit_rejects_an_empty_or_out_of_range_result():
    sel = Selection(method="random", indices=np.array([1, 2]), n_pool=5, seed=0, params={}, diagnostics={}, timings={})
    with pytest.raises(BilafError, match="empty"):
        export.edit_selection(sel, remove=[1, 2])
    with pytest.raises(BilafError, match="out of range"):
        export.edit_selection(sel, add=[7])


def test_every_registered_method_has_its_own_colour_label_and_symbol():
    methods = available_methods()
    colours = [palette.method_color(m) for m in methods]
    assert len(set(colours)) == len(colours)
    for m in methods:
        assert palette.method_label(m) and palette.method_symbol(m)
        assert m in palette.METHOD_COLORS, f"add {m} to bilaf_core/palette.py"
    assert palette.method_color("not-a-method") == palette.method_color("not-a-method")
    scale = palette.category_colorscale(20)
    assert scale[0][0] == 0 and scale[-1][0] == 1
