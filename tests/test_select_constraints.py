"""`select --include/--exclude`: every registered method honours them, each method builds around
the includes its own way, and every bad constraint gets one clear message (exit 2 on the CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bilaf_core.cli import main
from bilaf_core.errors import BilafError
from bilaf_core.selection import available_methods, get_method, run_selection

#: small, fast settings for methods whose defaults are sized for real pools
FAST = {"activeft": {"iterations": 30}, "bilaf": {"iterations": 30}}


def _blobs(seed=0, n_blobs=5, per=30, dim=8, spread=0.6, scale=4.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, scale, (n_blobs, dim))
    x = np.concatenate([rng.normal(c, spread, (per, dim)) for c in centers]).astype(np.float32)
    return x, np.repeat(np.arange(n_blobs), per)


@pytest.mark.parametrize("method", available_methods())
def test_exclude_is_never_returned(method):
    x, _ = _blobs()
    plain = run_selection(method, x, 20, seed=2, **FAST.get(method, {}))
    # exclude what the method picks on its own plus a seeded random third of the pool, so the
    # exclusion bites wherever the method looks
    rng = np.random.default_rng(1)
    exclude = np.union1d(plain.indices, rng.choice(len(x), size=50, replace=False))
    a = run_selection(method, x, 20, seed=2, exclude=exclude, **FAST.get(method, {}))
    b = run_selection(method, x, 20, seed=2, exclude=exclude.tolist(), **FAST.get(method, {}))
    assert not np.isin(a.indices, exclude).any()
    assert len(set(a.to_list())) == 20 and a.to_list() == b.to_list()
    assert a.params["exclude"] == f"<{exclude.size} values>"
    assert a.diagnostics["exclude_indices"].tolist() == exclude.tolist()


@pytest.mark.parametrize("method", available_methods())
def test_exclude_down_to_exactly_the_budget(method):
    """Excluding all but B samples leaves exactly one possible answer."""
    x, _ = _blobs()
    keep = np.arange(0, len(x), 6)[:22]
    exclude = np.setdiff1d(np.arange(len(x)), keep)
    # BiLAF never picks what its denoising drops as noise: without denoising it can take any sample
    options = dict(FAST.get(method, {}), removal_fraction=0.0) if method == "bilaf" else FAST.get(method, {})
    sel = run_selection(method, x, keep.size, seed=0, exclude=exclude, **options)
    assert sorted(sel.to_list()) == keep.tolist()


@pytest.mark.parametrize("method", available_methods())
def test_include_is_honoured_with_exclude(method):
    assert get_method(method).include_rule, f"{method} must say in `select --help` how it treats --include"
    x, _ = _blobs()
    include = np.array([3, 44, 100])
    exclude = np.array([0, 1, 2, 45, 46, 101, 149])
    sel = run_selection(method, x, 12, seed=4, include=include, exclude=exclude, **FAST.get(method, {}))
    picks = sel.to_list()
    assert len(set(picks)) == 12 and set(include) <= set(picks) and not set(exclude) & set(picks)
    again = run_selection(method, x, 12, seed=4, include=include, exclude=exclude, **FAST.get(method, {}))
    assert again.to_list() == picks
    # per-pick diagnostics stay aligned with the picks
    for key in ("pick_cluster", "cluster_of_pick", "centroid_of_pick", "rank_of_pick", "boundary_score", "coverage"):
        if key in sel.diagnostics:
            assert np.asarray(sel.diagnostics[key]).shape == (12,), key


@pytest.mark.parametrize("method", available_methods())
def test_include_as_large_as_the_budget_returns_the_includes(method):
    x, _ = _blobs()
    include = [5, 35, 65, 95, 125]
    # BiLAF's cores are picks too: here two of the includes
    options = {"core_indices": [5, 35]} if method == "bilaf" else FAST.get(method, {})
    sel = run_selection(method, x, 5, seed=0, include=include, **options)
    assert sorted(sel.to_list()) == sorted(include)


@pytest.mark.parametrize("method", ["kmeans", "kmeans-multibatch", "typiclust", "coreset", "fds"])
def test_includes_cover_their_region(method):
    """Five well-separated blobs, budget 5, one include in blob 0: covering methods (k-means
    clusters, TypiClust clusters, k-center) put the four new picks in the four other blobs."""
    x, blob = _blobs(spread=0.3, scale=20.0)
    for include in ([0], [0, 30]):
        sel = run_selection(method, x, 5, seed=3, include=include)
        assert np.bincount(blob[sel.indices], minlength=5).tolist() == [1, 1, 1, 1, 1], include


def test_coreset_starts_from_the_includes():
    x, _ = _blobs()
    include = np.array([7, 77])
    sel = run_selection("coreset", x, 4, seed=0, include=include)
    assert sel.to_list()[:2] == include.tolist()
    d = np.linalg.norm(x[:, None, :].astype(np.float64) - x[include][None], axis=2).min(axis=1)
    assert sel.indices[2] == int(np.argmax(d))  # the farthest sample from the includes comes next


def test_probcover_counts_the_included_balls_as_covered():
    x, _ = _blobs()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    delta = 0.3
    sel = run_selection("probcover", x, 6, seed=0, include=[10], delta=delta)
    ball = np.linalg.norm(xn - xn[10], axis=1) < delta
    assert sel.indices[0] == 10
    assert sel.diagnostics["coverage"][0] == pytest.approx(ball.mean())
    assert sel.diagnostics["covered"][ball].all()


def test_activeft_rerun_keeping_edits_keeps_the_kept_and_replaces_the_removed():
    x, _ = _blobs()
    first = run_selection("activeft", x, 10, seed=1, iterations=30)
    kept, removed = first.indices[:7], first.indices[7:]
    again = run_selection("activeft", x, 10, seed=1, iterations=30, include=kept, exclude=removed)
    assert set(kept) <= set(again.to_list()) and not set(removed) & set(again.to_list())
    # same seed, same centroids: every kept pick stands on the centroid it was matched to before
    assert [again.indices[j] for j in range(7)] == kept.tolist()


def test_bilaf_includes_are_picks_already_taken_in_their_pseudo_class():
    x, blob = _blobs()
    cores = [0, 30, 60, 90, 120]
    plain = run_selection("bilaf", x, 15, core_indices=cores)
    include = np.array([1, 2, 3, 4])  # four extra picks in pseudo-class 0
    sel = run_selection("bilaf", x, 15, core_indices=cores, include=include)
    alloc, pick_cluster = sel.diagnostics["allocation"], sel.diagnostics["pick_cluster"]
    assert alloc[0] >= 5 and alloc.sum() == 15
    assert np.bincount(pick_cluster, minlength=5).tolist() == alloc.tolist()
    assert set(include) <= set(sel.to_list()) and set(cores) <= set(sel.to_list())
    # class 0 was given more picks than without the includes; the others share what is left
    assert alloc[0] > plain.diagnostics["allocation"][0]
    # the includes have no score of their own (NaN), like the cores
    scores = sel.diagnostics["boundary_score"]
    assert np.isnan(scores[np.isin(sel.indices, include)]).all()


def test_bilaf_says_when_denoising_leaves_too_few_allowed_samples():
    x, _ = _blobs()
    keep = np.arange(0, len(x), 6)[:22]
    with pytest.raises(BilafError, match="samples that can be picked"):
        run_selection("bilaf", x, keep.size, core_indices=keep[:4], exclude=np.setdiff1d(np.arange(len(x)), keep),
                      removal_fraction=0.5)


def test_bilaf_never_takes_an_excluded_core():
    x, _ = _blobs()
    plain = run_selection("bilaf", x, 10, seed=0, iterations=30, core_budget=3)
    cores = plain.diagnostics["core_indices"]
    sel = run_selection("bilaf", x, 10, seed=0, iterations=30, core_budget=3, exclude=cores[:1])
    assert cores[0] not in sel.diagnostics["core_indices"] and cores[0] not in sel.to_list()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"include": [1, 2], "exclude": [2, 3]}, "share 1 indices (first: 2)"),
        ({"include": list(range(11))}, "holds 11 indices but the budget is 10"),
        ({"exclude": list(range(145))}, "leaves 5 of the 150 samples, fewer than the budget 10"),
        ({"exclude": [0, 150]}, "--exclude: 1 out of range for a pool of 150"),
        ({"include": [4, 4]}, "--include: 1 repeated"),
    ],
)
def test_bad_constraints_say_what_to_fix(kwargs, message):
    x, _ = _blobs()
    with pytest.raises(BilafError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_selection("random", x, 10, **kwargs)


def test_method_specific_constraint_errors():
    x, _ = _blobs()
    with pytest.raises(BilafError, match="also --initial-indices"):
        run_selection("coreset", x, 5, initial_indices=[1, 2], include=[2])
    with pytest.raises(BilafError, match="do not fit"):
        run_selection("coreset", x, 10, initial_indices=list(range(70)), exclude=list(range(70, 145)))
    with pytest.raises(BilafError, match="also in --exclude"):
        run_selection("bilaf", x, 10, core_indices=[0, 30], exclude=[30])
    with pytest.raises(BilafError, match="compat reference"):
        run_selection("bilaf", x, 10, core_indices=[0, 30], compat="reference", exclude=[5])
    with pytest.raises(BilafError, match="core samples plus the 3 included"):
        run_selection("bilaf", x, 4, core_indices=[0, 30], include=[1, 2, 3])


@pytest.fixture()
def pool_files(tmp_path):
    x, _ = _blobs()
    path = tmp_path / "F.npy"
    np.save(path, x)
    return path


def _write(path, obj):
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_cli_include_exclude(pool_files, tmp_path):
    out = tmp_path / "p.json"
    code = main(["select", "--features", str(pool_files), "--method", "kmeans", "--budget", "8",
                 "--include", _write(tmp_path / "i.json", [3, 90]), "--exclude", _write(tmp_path / "e.json", [4, 5, 6]),
                 "--out", str(out)])
    picks = json.loads(out.read_text())
    assert code == 0 and len(picks) == 8 and {3, 90} <= set(picks) and not {4, 5, 6} & set(picks)


@pytest.mark.parametrize(
    "flag,content,message",
    [
        ("--exclude", [0, 999], "--exclude: 1 out of range for a pool of 150 (first: 999)"),
        ("--include", [1, 1], "--include: 1 repeated (first: 1)"),
        ("--exclude", "{broken", "--exclude file"),
        ("--include", [[1, 2]], "must hold a flat list of integers"),
        ("--include", list(range(9)), "holds 9 indices but the budget is 8"),
        ("--exclude", list(range(145)), "fewer than the budget 8"),
        ("--exclude", None, "does not exist"),
    ],
)
def test_cli_bad_constraint_files_exit_2(pool_files, tmp_path, capsys, flag, content, message):
    target = tmp_path / "c.json"
    value = str(tmp_path / "absent.json") if content is None else _write(target, content)
    out = tmp_path / "p.json"
    code = main(["select", "--features", str(pool_files), "--method", "coreset", "--budget", "8", flag, value,
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_include_and_exclude_overlap_exit_2(pool_files, tmp_path, capsys):
    code = main(["select", "--features", str(pool_files), "--method", "typiclust", "--budget", "8",
                 "--include", _write(tmp_path / "i.json", [3, 4]), "--exclude", _write(tmp_path / "e.json", [4]),
                 "--out", str(tmp_path / "p.json")])
    assert code == 2 and "share 1 indices" in capsys.readouterr().err


def test_help_says_how_each_method_treats_include(capsys):
    with pytest.raises(SystemExit):
        main(["select", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in available_methods():
        rule = " ".join(get_method(name).include_rule.split())
        assert f"{name}: {rule}" in text


def test_bilaf_constraints_with_kept_plans_give_the_same_picks():
    """The app keeps BiLAF's budget-independent plan between runs; constrained runs must give the
    same picks whether the plan is fresh, kept, or not kept at all."""
    from bilaf_core.selection import bilaf

    x, _ = _blobs()
    cores = [0, 30, 60, 90, 120]
    kwargs = dict(core_indices=cores, include=[1, 31, 32], exclude=[2, 3, 61, 62, 63])
    plain = run_selection("bilaf", x, 20, **kwargs).to_list()
    try:
        bilaf.keep_plans()
        fresh = run_selection("bilaf", x, 20, **kwargs).to_list()
        kept = run_selection("bilaf", x, 20, **kwargs).to_list()
        other_budget = run_selection("bilaf", x, 25, **kwargs).to_list()
    finally:
        bilaf.keep_plans(0)
    assert plain == fresh == kept
    assert other_budget == run_selection("bilaf", x, 25, **kwargs).to_list()
