"""`bilaf_core.inspect` and `python -m bilaf_core inspect`, checked against brute-force numpy."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from bilaf_core.cli import main
from bilaf_core.errors import BilafError
from bilaf_core.inspect import (
    class_breakdown,
    find_gaps,
    inspect_selections,
    near_duplicate_pairs,
    nearest_pick,
    overlap_matrices,
    pool_density,
    rerun_keeping_edits,
    suggest_replacements,
)


def _blobs(seed=0, n_blobs=4, per=150, dim=16, spread=0.5, scale=5.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, scale, (n_blobs, dim))
    x = np.concatenate([rng.normal(c, spread, (per, dim)) for c in centers]).astype(np.float32)
    return x, np.repeat(np.arange(n_blobs), per)


def _normalized(x):
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_pairs(x, picks, threshold):
    out = []
    for a, b in itertools.combinations(sorted(picks), 2):
        d = float(np.linalg.norm(x[a] - x[b]))
        if d <= threshold:
            out.append((a, b))
    return sorted(out)


@pytest.fixture()
def planted():
    """A pool with planted exact duplicates: 17 = 3 = 250 (a triple) and 420 = 90."""
    x, blob = _blobs()
    x[3] = x[17]
    x[250] = x[17]
    x[420] = x[90]
    with_dups = np.array([17, 3, 250, 90, 420, 5, 160, 310, 470, 599])
    without = np.array([0, 150, 300, 450, 17, 90, 151, 301])
    return x, blob, with_dups, without


def test_planted_duplicates_exactly_and_none_without(planted):
    x, _, with_dups, without = planted
    result = inspect_selections(x, [with_dups, without], names=["dups", "clean"])
    dups, clean = result.report["selections"]
    assert [(i, j) for i, j, _ in dups["near_duplicates"]] == [(3, 17), (3, 250), (17, 250), (90, 420)]
    assert all(d == 0.0 for _, _, d in dups["near_duplicates"])
    assert clean["near_duplicates"] == []
    # the same pairs a brute-force float64 search finds at the default threshold (0.05, normalised)
    xn = _normalized(x)
    assert _brute_pairs(xn, with_dups, 0.05) == [(i, j) for i, j, _ in dups["near_duplicates"]]
    assert _brute_pairs(xn, without, 0.05) == []


def test_near_duplicate_threshold_option(planted):
    x, _, _, _ = planted
    x = x.copy()
    x[500] = x[40] * 1.0005 + 0.002  # a near (not exact) duplicate of 40
    picks = np.array([40, 500, 17, 3, 310])
    exact_only = near_duplicate_pairs(x, picks, 0.0)
    assert [(i, j) for i, j, _ in exact_only] == [(3, 17)]
    loose = near_duplicate_pairs(x, picks, 0.05)
    assert [(i, j) for i, j, _ in loose] == [(3, 17), (40, 500)]
    d = float(np.linalg.norm(_normalized(x)[40] - _normalized(x)[500]))
    assert loose[1][2] == pytest.approx(d, rel=1e-9, abs=1e-12)
    raw = near_duplicate_pairs(x, picks, 0.01, space="raw")
    assert [(i, j) for i, j, _ in raw] == _brute_pairs(x.astype(np.float64), picks, 0.01)


@pytest.mark.parametrize("space", ["normalized", "raw"])
def test_coverage_matches_brute_force(space, tmp_path):
    x, _ = _blobs(seed=3)
    picks = np.random.default_rng(0).choice(len(x), 37, replace=False)
    result = inspect_selections(x, [picks], space=space)
    xs = _normalized(x) if space == "normalized" else x.astype(np.float64)
    full = np.linalg.norm(xs[:, None, :] - xs[picks][None], axis=2)
    expected = full.min(axis=1)
    np.testing.assert_allclose(result.coverage[0], expected, atol=2e-4 * max(1.0, float(expected.max())))
    assert (result.nearest[0] == picks[full.argmin(axis=1)]).mean() > 0.999  # ties aside
    cov = result.report["selections"][0]["coverage"]
    tol = dict(rel=1e-3, abs=2e-4 * max(1.0, float(expected.max())))
    assert cov["mean"] == pytest.approx(expected.mean(), **tol)
    assert cov["p50"] == pytest.approx(np.percentile(expected, 50), **tol)
    assert cov["p95"] == pytest.approx(np.percentile(expected, 95), **tol)
    assert cov["max"] == pytest.approx(expected.max(), **tol)
    assert (result.coverage[0][picks] == 0).all()


def test_chunked_search_equals_one_pass():
    x, _ = _blobs(seed=4)
    picks = np.arange(0, len(x), 13)
    d1, n1 = nearest_pick(x, picks, chunk=64)
    d2, n2 = nearest_pick(x, picks, chunk=100_000)
    np.testing.assert_allclose(d1, d2, atol=1e-6)
    assert (n1 == n2).all()


def test_streaming_a_memory_mapped_pool_gives_the_same_report(tmp_path, monkeypatch, planted):
    """Pools too large to normalise in memory are read chunk by chunk from the .npy."""
    import bilaf_core.inspect as inspect_module

    x, blob, with_dups, without = planted
    np.save(tmp_path / "F.npy", x)
    held = inspect_selections(x, [with_dups, without], labels=[blob, blob])
    monkeypatch.setattr(inspect_module, "PREPARED_BYTES", 0)
    streamed = inspect_selections(np.load(tmp_path / "F.npy", mmap_mode="r"), [with_dups, without], labels=[blob, blob])
    assert streamed.pool_space == "normalized" and held.pool_space == "raw"
    np.testing.assert_allclose(streamed.coverage, held.coverage, atol=1e-6)
    for a, b in zip(streamed.report["selections"], held.report["selections"]):
        assert a["near_duplicates"] == b["near_duplicates"] and a["pseudo_classes"] == b["pseudo_classes"]
        assert [g["representative"] for g in a["gaps"]] == [g["representative"] for g in b["gaps"]]


def test_overlap_on_hand_made_picks():
    shared, jaccard = overlap_matrices([[1, 2, 3, 4], [3, 4, 5], [10]])
    assert shared == [[4, 2, 0], [2, 3, 0], [0, 0, 1]]
    assert jaccard == [[1.0, 0.4, 0.0], [0.4, 1.0, 0.0], [0.0, 0.0, 1.0]]
    x, _ = _blobs()
    report = inspect_selections(x, [[1, 2, 3, 4], [3, 4, 5], [10]]).report
    assert report["overlap"]["shared"] == shared and report["overlap"]["jaccard"] == jaccard


def test_the_largest_gap_is_the_blob_without_picks():
    x, blob = _blobs(seed=5)
    picks = np.concatenate([np.flatnonzero(blob == b)[:5] for b in (0, 1, 2)])  # blob 3 has none
    result = inspect_selections(x, [picks], n_gaps=3)
    gaps = result.report["selections"][0]["gaps"]
    assert gaps and blob[gaps[0]["representative"]] == 3
    assert gaps[0]["size"] >= 100  # most of the 150-sample blob lies in the region
    assert all(blob[i] == 3 for i in gaps[0]["examples"])
    assert gaps[0]["examples"][0] == gaps[0]["representative"]
    assert [g["rank"] for g in gaps] == list(range(1, len(gaps) + 1))
    sizes = [g["size"] for g in gaps]
    assert sizes == sorted(sizes, reverse=True)
    # a region = the samples closer to its representative than to their nearest pick: recount it
    xn = _normalized(x)
    cover = np.linalg.norm(xn[:, None] - xn[picks][None], axis=2).min(axis=1)
    for gap in gaps:
        to_rep = np.linalg.norm(xn - xn[gap["representative"]], axis=1)
        assert abs(gap["size"] - int((to_rep < cover).sum())) <= 1  # float32 rounding at the border
        assert all(to_rep[i] < cover[i] + 1e-5 for i in gap["examples"])
    # de-duplicated: a representative never lies inside the region of a better-scoring one
    for a, b in itertools.combinations(sorted(gaps, key=lambda g: -g["score"]), 2):
        assert np.linalg.norm(xn[b["representative"]] - xn[a["representative"]]) >= cover[b["representative"]] - 1e-5


def test_density_is_exact_knn_on_small_pools():
    x, _ = _blobs(n_blobs=2, per=40, dim=4)
    density = pool_density(x, neighbors=3, reference=1000)
    xn = _normalized(x)
    d = np.linalg.norm(xn[:, None] - xn[None], axis=2)
    np.fill_diagonal(d, np.inf)
    raw = 1.0 / np.sort(d, axis=1)[:, :3].mean(axis=1)
    np.testing.assert_allclose(density, raw / np.median(raw), rtol=1e-3)


def test_pseudo_classes_picks_against_members():
    x, blob = _blobs()
    picks = np.array([0, 1, 2, 150, 151, 300])
    out = class_breakdown(picks, blob)
    assert [(c["class"], c["members"], c["picks"]) for c in out["classes"]] == [(0, 150, 3), (1, 150, 2), (2, 150, 1), (3, 150, 0)]
    assert out["classes"][0]["expected"] == pytest.approx(6 * 150 / 600)
    assert out["without_picks"] == 1 and out["members_without_picks"] == 150
    report = inspect_selections(x, [picks, picks], labels=[blob, None]).report
    assert report["selections"][0]["pseudo_classes"] == out and report["selections"][1]["pseudo_classes"] is None


def test_replacements_nearest_unpicked_in_the_same_class_and_the_gap():
    x, blob = _blobs(seed=6)
    picks = np.array([0, 1, 150, 300, 450])
    xn = _normalized(x)
    out = suggest_replacements(x, picks, 300, labels=blob, n_neighbours=4)
    same = np.flatnonzero((blob == blob[300]) & ~np.isin(np.arange(len(x)), picks))
    expected = same[np.argsort(np.linalg.norm(xn[same] - xn[300], axis=1), kind="stable")[:4]]
    assert [n["index"] for n in out["neighbours"]] == expected.tolist()
    # without 300, blob 2 has no pick left: that is the largest gap
    assert blob[out["gap"]["representative"]] == 2
    # reusing the current coverage gives the same answer
    result = inspect_selections(x, [picks])
    again = suggest_replacements(result.pool, picks, 300, labels=blob, n_neighbours=4, space=result.pool_space,
                                 coverage=(result.coverage[0], result.nearest[0]), density=result.density)
    assert [n["index"] for n in again["neighbours"]] == [n["index"] for n in out["neighbours"]]
    assert again["gap"]["representative"] == out["gap"]["representative"]
    with pytest.raises(BilafError, match="not one of the picks"):
        suggest_replacements(x, picks, 7)


def test_rerun_keeping_edits_includes_kept_and_excludes_removed():
    x, _ = _blobs()
    first = np.array([5, 155, 305, 455, 6, 156])
    sel = rerun_keeping_edits("kmeans", x, 6, kept=first[:4], removed=first[4:], exclude=[7])
    assert set(first[:4]) <= set(sel.to_list()) and not {6, 156, 7} & set(sel.to_list())
    assert sel.diagnostics["include_indices"].tolist() == sorted(first[:4].tolist())


def test_find_gaps_with_every_sample_picked_is_empty():
    x, _ = _blobs(n_blobs=1, per=20)
    d, n = nearest_pick(x, np.arange(20))
    assert find_gaps(x, d, n, np.ones(20, np.float32)) == []


# --------------------------------------------------------------------------------------- CLI


@pytest.fixture()
def files(tmp_path, planted):
    x, blob, with_dups, without = planted
    np.save(tmp_path / "F.npy", x)
    (tmp_path / "a.json").write_text(json.dumps(with_dups.tolist()))
    (tmp_path / "b.json").write_text(json.dumps(without.tolist()))
    return tmp_path, x, blob


def test_cli_writes_report_and_per_sample_coverage(files, capsys):
    tmp, x, _ = files
    out = tmp / "report.json"
    code = main(["inspect", "--features", str(tmp / "F.npy"), "--picks", str(tmp / "a.json"), "--picks", str(tmp / "b.json"),
                 "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    cov = np.load(tmp / "report.coverage.npy")
    assert cov.shape == (2, len(x)) and cov.dtype == np.float32
    a, b = report["selections"]
    assert a["coverage"]["per_sample"] == {"file": "report.coverage.npy", "row": 0} and b["coverage"]["per_sample"]["row"] == 1
    assert a["coverage"]["max"] == pytest.approx(float(cov[0].max()))
    assert [p[:2] for p in a["near_duplicates"]] == [[3, 17], [3, 250], [17, 250], [90, 420]] and b["near_duplicates"] == []
    assert report["overlap"]["shared"] == [[10, 2], [2, 8]]
    assert report["overlap"]["jaccard"][0][1] == pytest.approx(2 / 16)
    assert report["duplicate_threshold"] == 0.05 and report["space"] == "normalized"
    text = capsys.readouterr().out
    assert "inspect: 600 samples x 16" in text and "overlap" in text
    assert not list(tmp.glob(".tmp-*"))


def test_cli_prints_json_without_out_and_reads_selection_folders(files, capsys):
    tmp, x, blob = files
    folder = tmp / "sel-1"
    folder.mkdir()
    (folder / "picks.json").write_text(json.dumps([0, 150, 300]))
    np.savez(folder / "diagnostics.npz", cluster=blob, indices=np.array([0, 150, 300]))
    code = main(["inspect", "--features", str(tmp / "F.npy"), "--picks", str(folder), "--duplicate-threshold", "0.5",
                 "--gaps", "2"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    entry = report["selections"][0]
    assert entry["name"] == "sel-1" and report["duplicate_threshold"] == 0.5 and len(entry["gaps"]) <= 2
    assert entry["pseudo_classes"]["source"] == "diagnostics"
    assert [c["picks"] for c in entry["pseudo_classes"]["classes"]] == [1, 1, 1, 0]
    np.save(tmp / "labels.npy", (blob == 0).astype(np.int64))
    main(["inspect", "--features", str(tmp / "F.npy"), "--picks", str(folder), "--pseudo-classes", str(tmp / "labels.npy")])
    entry = json.loads(capsys.readouterr().out)["selections"][0]
    assert entry["pseudo_classes"]["source"] == "--pseudo-classes"
    assert [(c["members"], c["picks"]) for c in entry["pseudo_classes"]["classes"]] == [(450, 2), (150, 1)]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--picks", "MISSING"], "does not exist"),
        (["--picks", "RANGE"], "picks of"),
        (["--picks", "REPEATED"], "repeated"),
        (["--picks", "EMPTY"], "holds no picks"),
        (["--picks", "NOT_JSON"], "not a JSON list"),
        (["--picks", "A", "--duplicate-threshold", "-1"], "must be a distance >= 0"),
        (["--picks", "A", "--gaps", "-2"], "--gaps must be >= 0"),
        (["--picks", "A", "--pseudo-classes", "SHORT"], "label 5 samples but the pool has 600"),
        (["--picks", "A", "--pseudo-classes", "NPZ_NO_KEY"], "holds none of cluster"),
        (["--picks", "FOLDER_NO_PICKS"], "holds no picks.json"),
    ],
)
def test_cli_bad_input_exit_2(files, capsys, args, message):
    tmp, _, _ = files
    (tmp / "empty-folder").mkdir()
    np.savez(tmp / "other.npz", something=np.arange(3))
    replacements = {
        "MISSING": str(tmp / "nope.json"),
        "RANGE": _write(tmp / "r.json", [1, 600]),
        "REPEATED": _write(tmp / "d.json", [1, 1]),
        "EMPTY": _write(tmp / "e.json", []),
        "NOT_JSON": _write(tmp / "x.json", "{oops"),
        "A": str(tmp / "a.json"),
        "SHORT": _write(tmp / "s.json", [0, 1, 0, 1, 0]),
        "NPZ_NO_KEY": str(tmp / "other.npz"),
        "FOLDER_NO_PICKS": str(tmp / "empty-folder"),
    }
    out = tmp / "rep.json"
    code = main(["inspect", "--features", str(tmp / "F.npy"), *[replacements.get(a, a) for a in args], "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists() and not (tmp / "rep.coverage.npy").exists()


def _write(path, obj):
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_cli_takes_a_workspace_selection_id(files, capsys):
    from bilaf_core.selection import run_selection
    from bilaf_core.workspace import Workspace

    tmp, x, _ = files
    folder = tmp / "fs"
    folder.mkdir()
    np.save(folder / "features.npy", x)
    (folder / "meta.json").write_text(json.dumps({"n": len(x), "dim": x.shape[1]}))
    workspace = Workspace(tmp / "ws")
    feature_set = workspace.register_feature_set(str(folder))
    selection = run_selection("kmeans", x, 6, seed=0)
    selection_id = workspace.save_selection(selection, feature_set)
    code = main(["--workspace", str(tmp / "ws"), "inspect", "--features", str(folder), "--picks", selection_id])
    entry = json.loads(capsys.readouterr().out)["selections"][0]
    assert code == 0 and entry["name"] == selection_id and entry["pseudo_classes"]["source"] == "diagnostics"
    code = main(["--workspace", str(tmp / "ws"), "inspect", "--features", str(folder), "--picks", "sel-nope"])
    assert code == 2 and "no selection 'sel-nope'" in capsys.readouterr().err
