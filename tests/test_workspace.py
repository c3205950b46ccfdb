"""The workspace: records with provenance, round trips, edits, clear errors, a killed writer and
concurrent writers (separate processes, as two app servers or a CLI beside the app would be)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from bilaf_core import cli
from bilaf_core.errors import BilafError
from bilaf_core.features import import_embeddings
from bilaf_core.selection import run_selection
from bilaf_core.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


def _feature_set(root: Path, n: int = 120, dim: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(c, 1.0, (n // 3, dim)) for c in (-4, 0, 4)]).astype(np.float32)
    np.save(root / "emb.npy", x)
    np.save(root / "labels.npy", np.repeat(np.arange(3), n // 3))
    return import_embeddings(root / "emb.npy", labels_path=root / "labels.npy", out_dir=root / "ws" / "features" / "blobs")


@pytest.fixture()
def ws_fs(tmp_path):
    path = _feature_set(tmp_path)
    ws = Workspace(tmp_path / "ws")
    return ws, ws.register_feature_set(path), np.load(path / "features.npy")


def test_selection_round_trip_with_provenance(ws_fs):
    ws, fs_id, x = ws_fs
    sel = run_selection("bilaf", x, 12, seed=3, core_budget=3, iterations=30)
    sid = ws.save_selection(sel, fs_id, name="BiLAF")
    back = ws.load_selection(sid)
    np.testing.assert_array_equal(back.indices, sel.indices)
    assert back.method == "bilaf" and back.seed == 3 and back.n_pool == x.shape[0]
    for key in ("cluster", "ring_level", "removed_as_noise", "core_indices", "boundary_score"):
        np.testing.assert_array_equal(back.diagnostics[key], sel.diagnostics[key])
    (row,) = ws.list_selections(fs_id)
    # every record says what produced it
    assert row["method"] == "bilaf" and row["budget"] == 12 and row["seed"] == 3 and row["feature_set_id"] == fs_id
    assert row["params"]["core_budget"] == 3 and row["params"]["iterations"] == 30
    assert row["seconds"] is not None and row["seconds"] >= 0 and row["code_version"].startswith("0.")
    assert json.loads((ws.selections_root / sid / "picks.json").read_text()) == sel.to_list()


def test_feature_sets_registered_once_and_discovered(tmp_path):
    path = _feature_set(tmp_path)
    ws = Workspace(tmp_path / "ws")
    # extracted into features/ without registering: listed anyway
    (listed,) = ws.list_feature_sets()
    assert listed["path"] == str(path.resolve()) and listed["n"] == 120 and listed["dim"] == 8 and listed["has_labels"]
    assert "labels" not in listed["meta"] and "ids" not in listed["meta"]  # per-sample lists stay in meta.json
    assert ws.register_feature_set(path) == listed["id"] == ws.register_feature_set(str(path) + "/")
    assert len(ws.list_feature_sets()) == 1
    with pytest.raises(BilafError, match="not a complete feature set"):
        ws.register_feature_set(tmp_path)


def test_edited_selection_keeps_the_original(ws_fs):
    from bilaf_core.export import edit_selection

    ws, fs_id, x = ws_fs
    sid = ws.save_selection(run_selection("random", x, 10, seed=0), fs_id)
    original = ws.load_selection(sid)
    extra = int(np.setdiff1d(np.arange(x.shape[0]), original.indices)[0])
    edited = edit_selection(original, add=[extra], remove=[int(original.indices[0])], parent_id=sid)
    eid = ws.save_selection(edited, fs_id, name="random (edited)", parent_id=sid)
    np.testing.assert_array_equal(ws.load_selection(sid).indices, original.indices)
    assert ws.get_selection(eid)["parent_id"] == sid
    assert extra in ws.load_selection(eid).indices and original.indices[0] not in ws.load_selection(eid).indices
    with pytest.raises(BilafError, match="no selection"):
        ws.save_selection(edited, fs_id, parent_id="sel-missing")


def test_bad_records_are_refused_with_clear_messages(ws_fs):
    ws, fs_id, x = ws_fs
    with pytest.raises(BilafError, match="pool of 50 samples"):
        ws.save_selection(run_selection("random", x[:50], 5), fs_id)
    with pytest.raises(BilafError, match="no feature set"):
        ws.save_selection(run_selection("random", x, 5), "fs-nope")
    with pytest.raises(BilafError, match="repeat"):
        ws.import_picks(fs_id, [1, 2, 2], source="picks.json")
    with pytest.raises(BilafError, match="range"):
        ws.import_picks(fs_id, [1, 10_000])
    with pytest.raises(BilafError, match="no selection"):
        ws.load_selection("sel-nope")
    assert ws.list_selections(fs_id) == []  # nothing half-stored


def test_evaluations_are_stored_and_filtered(ws_fs):
    ws, fs_id, x = ws_fs
    a = ws.save_selection(run_selection("random", x, 10, seed=0), fs_id)
    b = ws.import_picks(fs_id, [0, 5, 9], source="mine.json")
    assert ws.get_selection(b)["method"] == "imported" and ws.get_selection(b)["name"] == "mine.json"
    ws.save_evaluation(a, {"mode": "knn", "accuracy": 0.75, "per_class": [1.0, float("nan"), 0.5], "timings": {"total": 0.2}})
    ws.save_evaluation(b, {"mode": "linear-probe", "accuracy": 0.5})
    assert {e["selection_id"] for e in ws.list_evaluations(feature_set_id=fs_id)} == {a, b}
    (only_a,) = ws.list_evaluations(selection_id=a)
    assert only_a["accuracy"] == 0.75 and only_a["seconds"] == 0.2 and only_a["result"]["per_class"] == [1.0, None, 0.5]
    ws.delete_selection(a)
    assert [e["selection_id"] for e in ws.list_evaluations()] == [b]
    assert not (ws.selections_root / a).exists()


# ------------------------------------------------------------------ killed and concurrent writers

_WRITER = textwrap.dedent(
    """
    import sys, os, signal, contextlib
    import numpy as np
    from bilaf_core.workspace import Workspace
    from bilaf_core.selection import run_selection
    root, fs_id, count, tag, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    ws = Workspace(root)
    x = np.load(ws.get_feature_set(fs_id)["path"] + "/features.npy")
    if kill_at == "rename":      # files complete, folder about to be renamed into place
        real = os.replace
        def dying(src, dst):
            if os.path.basename(str(src)).startswith(".tmp-sel-"):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        os.replace = dying
    elif kill_at == "commit":    # row inserted, transaction not committed
        @contextlib.contextmanager
        def dying_write(db):
            db.execute("BEGIN IMMEDIATE")
            yield
            os.kill(os.getpid(), signal.SIGKILL)
        Workspace._write = staticmethod(dying_write)
    for i in range(count):
        sel = run_selection("random", x, 5 + i % 7, seed=i)
        sid = ws.save_selection(sel, fs_id, name=f"{tag}-{i}")
        ws.save_evaluation(sid, {"mode": "knn", "accuracy": i / count})
        print(sid, flush=True)
    """
)


def _writer(ws: Workspace, fs_id: str, count: int, tag: str, kill_at: str = "none") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(ws.root), fs_id, str(count), tag, kill_at],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _check_consistent(ws: Workspace) -> None:
    with sqlite3.connect(ws.index_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for row in ws.list_selections():
        assert ws.load_selection(row["id"]).budget == row["budget"]


@pytest.mark.parametrize("kill_at", ["rename", "commit"])
def test_a_killed_writer_leaves_no_half_written_record(ws_fs, kill_at, monkeypatch):
    ws, fs_id, _ = ws_fs
    proc = _writer(ws, fs_id, 1, "killed", kill_at)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert ws.list_selections() == [] and ws.list_evaluations() == []
    _check_consistent(ws)
    # the workspace stays writable (no lock left behind) ...
    ws.save_selection(run_selection("random", np.load(Path(ws.get_feature_set(fs_id)["path"]) / "features.npy"), 4), fs_id)
    # ... and the interrupted writer's files are cleaned up once stale
    leftovers = [p for p in ws.selections_root.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers or kill_at == "commit"
    monkeypatch.setattr("bilaf_core.workspace.STALE_SECONDS", 0.0)
    Workspace(ws.root)
    assert sorted(p.name for p in ws.selections_root.iterdir()) == [r["id"] for r in ws.list_selections()]


def test_writer_killed_at_random_moments(ws_fs):
    ws, fs_id, _ = ws_fs
    rng = np.random.default_rng(0)
    for _ in range(4):
        proc = _writer(ws, fs_id, 200, "loop")
        time.sleep(float(rng.uniform(1.0, 2.5)))  # start-up (imports) then a stream of writes
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        _check_consistent(ws)
    assert len(ws.list_selections()) > 0


def test_two_concurrent_writers(ws_fs):
    ws, fs_id, _ = ws_fs
    procs = [_writer(ws, fs_id, 25, tag) for tag in ("a", "b")]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    ids = [line for out, _ in outputs for line in out.split()]
    rows = ws.list_selections(fs_id)
    assert sorted(r["id"] for r in rows) == sorted(ids) and len(ids) == 50
    assert {r["name"] for r in rows} == {f"{t}-{i}" for t in "ab" for i in range(25)}
    assert len(ws.list_evaluations(feature_set_id=fs_id)) == 50
    _check_consistent(ws)


# ------------------------------------------------------------------ the runs command


def test_runs_command_lists_the_workspace(ws_fs, capsys):
    ws, fs_id, x = ws_fs
    sid = ws.save_selection(run_selection("kmeans", x, 6, seed=1), fs_id, name="k-means six")
    ws.save_evaluation(sid, {"mode": "linear-probe", "accuracy": 0.8123, "n_train": 6})
    assert cli.main(["runs", "--workspace", str(ws.root)]) == 0
    out = capsys.readouterr().out
    assert fs_id in out and sid in out and "k-means six" in out and "81.23%" in out
    assert cli.main(["--workspace", str(ws.root), "runs", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["id"] for s in doc["selections"]] == [sid] and doc["evaluations"][0]["accuracy"] == 0.8123
    assert os.environ.get("BILAF_WORKSPACE") != str(ws.root)  # the flag does not leak into the caller
    assert cli.main(["runs", "--workspace", str(ws.root), "--feature-set", "fs-nope"]) == 2
    assert "no feature set" in capsys.readouterr().err
    assert cli.main(["runs", "--workspace", str(ws.root), "--delete", sid]) == 0
    assert ws.list_selections() == []


def test_select_record_stores_the_selection(ws_fs, tmp_path, capsys):
    ws, fs_id, _ = ws_fs
    folder = ws.get_feature_set(fs_id)["path"]
    out = tmp_path / "picks.json"
    assert cli.main(["select", "--workspace", str(ws.root), "--features", folder, "--method", "fds", "--budget", "7",
                     "--out", str(out), "--record"]) == 0
    (row,) = ws.list_selections(fs_id)
    assert row["method"] == "fds" and row["budget"] == 7 and row["id"] in capsys.readouterr().out
    assert ws.load_selection(row["id"]).to_list() == json.loads(out.read_text())
    np.save(tmp_path / "plain.npy", np.load(Path(folder) / "features.npy"))
    assert cli.main(["select", "--features", str(tmp_path / "plain.npy"), "--method", "fds", "--budget", "7",
                     "--out", str(tmp_path / "p2.json"), "--record"]) == 2
    assert "feature-set folder" in capsys.readouterr().err and not (tmp_path / "p2.json").exists()
