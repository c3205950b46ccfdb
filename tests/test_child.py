"""bilaf_core.child: the app's heavy jobs in a child process — same results as in-process,
errors with their own message, cancellation that leaves nothing behind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bilaf_core.child import run_in_child
from bilaf_core.errors import BilafError, Cancelled
from bilaf_core.selection import run_selection
from tests._app_workspace import blobs_workspace


def test_selection_in_a_child_saves_the_same_picks_as_in_process(tmp_path, monkeypatch):
    env = blobs_workspace(tmp_path, monkeypatch)
    seen = []
    made = run_in_child("select", {"workspace_root": str(env["ws"].root), "feature_set_id": env["fs_id"],
                                   "feature_path": str(env["path"]), "method": "bilaf", "budget": 12, "seed": 3,
                                   "options": {"core_budget": np.int64(4)}, "name": "BiLAF"},
                        lambda f, m: seen.append((f, m)))
    saved = env["ws"].load_selection(made["selection_id"])
    here = run_selection("bilaf", env["x"], 12, seed=3, core_budget=4)
    np.testing.assert_array_equal(saved.indices, here.indices)
    np.testing.assert_array_equal(saved.diagnostics["core_indices"], here.diagnostics["core_indices"])
    assert seen and all(0.0 <= f <= 1.0 for f, _ in seen)  # the child's progress reached us
    assert env["ws"].list_selections(env["fs_id"])[0]["name"] == "BiLAF"


def test_a_child_raises_the_error_it_met_and_saves_nothing(tmp_path, monkeypatch):
    env = blobs_workspace(tmp_path, monkeypatch)
    args = {"workspace_root": str(env["ws"].root), "feature_set_id": env["fs_id"], "feature_path": str(env["path"]),
            "method": "kmeans", "budget": env["n"] + 1, "seed": 0, "options": {}, "name": "K-Means"}
    with pytest.raises(BilafError, match="budget"):
        run_in_child("select", args, what="k-means")
    with pytest.raises(BilafError, match="does not take"):
        run_in_child("select", {**args, "budget": 5, "options": {"no_such_option": 1}})
    assert env["ws"].list_selections(env["fs_id"]) == []
    with pytest.raises(ValueError, match="unknown child task"):
        run_in_child("no-such-task", {})
    with pytest.raises(TypeError, match="cannot be sent as JSON"):
        run_in_child("select", {**args, "options": {"x": object()}})


def test_cancelling_interrupts_the_child_and_leaves_no_record(tmp_path, monkeypatch):
    env = blobs_workspace(tmp_path, monkeypatch)

    def progress(fraction, message):
        raise Cancelled("stop")  # at the child's first progress line

    with pytest.raises(Cancelled):
        run_in_child("select", {"workspace_root": str(env["ws"].root), "feature_set_id": env["fs_id"],
                                "feature_path": str(env["path"]), "method": "activeft", "budget": 20, "seed": 0,
                                "options": {"iterations": 100000}, "name": "ActiveFT"}, progress)
    assert env["ws"].list_selections(env["fs_id"]) == []
    assert not list((env["ws"].root).rglob(".tmp-*"))


def test_evaluation_in_a_child_saves_the_same_result_as_in_process(tmp_path, monkeypatch):
    from bilaf_core.finetune import evaluate_selection

    env = blobs_workspace(tmp_path, monkeypatch)
    picks = run_selection("kmeans", env["x"], 12, seed=0)
    selection_id = env["ws"].save_selection(picks, env["fs_id"], name="K-Means")
    made = run_in_child("evaluate", {"workspace_root": str(env["ws"].root), "selection_id": selection_id,
                                     "feature_path": str(env["path"]), "mode": "knn", "seed": 0, "options": {}})
    here = evaluate_selection(env["path"], picks.indices, "knn", seed=0)
    assert made["accuracy"] == here.accuracy
    assert [e["id"] for e in env["ws"].list_evaluations(selection_id=selection_id)] == [made["evaluation_id"]]


def test_extraction_in_a_child_writes_the_same_features(tmp_path):
    from bilaf_core.features import extract_features

    small = dict(dataset="synthetic", backbone="efficientnet-lite0", root=None, limit=48, weights=None)
    made = run_in_child("extract", {**small, "cache_root": str(tmp_path / "child")})
    here = extract_features(**small, cache_root=tmp_path / "here")
    child_meta = json.loads((tmp_path / "child" / made["path"].rsplit("/", 1)[-1] / "meta.json").read_text())
    assert child_meta["n"] == 48
    np.testing.assert_array_equal(np.load(f"{made['path']}/features.npy"), np.load(here / "features.npy"))

