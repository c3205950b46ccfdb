"""The selection-quality benchmark: rows, the biased pool, fisher's target, labels kept out of
selection, the results file and the ``bench`` CLI.  Tiny synthetic feature sets; fast."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from bilaf_core import benchmark as bm
from bilaf_core.cli import main
from bilaf_core.errors import BilafError
from bilaf_core.features import import_embeddings, load_feature_set
from bilaf_core.selection import available_methods, run_selection

N_CLASSES = 10


def _feature_set(tmp_path, name, n, *, seed, labels=None, dim=8):
    """Gaussian blobs, one per class (class centres fixed, so train and test share them)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n) if labels is None else np.asarray(labels)
    centres = np.random.default_rng(123).normal(0, 1, (N_CLASSES, dim))
    x = (centres[y] + rng.normal(0, 0.3, (n, dim))).astype(np.float32)
    np.save(tmp_path / f"{name}.npy", x)
    np.save(tmp_path / f"{name}_labels.npy", y)
    return import_embeddings(tmp_path / f"{name}.npy", labels_path=tmp_path / f"{name}_labels.npy", out_dir=tmp_path / name)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    # balanced train pool: 400 per class, so the biased pool at ratio 10 keeps 2000 + 200
    train = _feature_set(tmp, "train", 4000, seed=0, labels=np.repeat(np.arange(N_CLASSES), 400))
    test = _feature_set(tmp, "test", 300, seed=1)
    return train, test


# ---------------------------------------------------------------------------------------------
# Method list, budgets, seeds
# ---------------------------------------------------------------------------------------------


def test_all_is_every_registered_method_plus_bilaf_reference():
    variants = bm.resolve_methods("all")
    assert [v.key for v in variants if v.key != bm.REFERENCE_KEY] == available_methods()
    # the paper-equation objective and the K ablation run only when named, after their method
    extras = bm.resolve_methods("all,bilaf-k0.1,activeft-paper-equation")
    keys = [v.key for v in extras]
    assert keys.index("bilaf-k0.1") == keys.index(bm.REFERENCE_KEY) + 1 and keys.index("activeft-paper-equation") == keys.index("activeft") + 1
    assert [v.label for v in bm.resolve_methods("bilaf (paper equation)")] == ["bilaf (paper equation)"]
    assert dict(bm.resolve_methods("bilaf-paper-equation")[0].options) == {"objective": "paper-equation"}
    reference = [v for v in variants if v.key == bm.REFERENCE_KEY]
    assert len(reference) == 1 and reference[0].method == "bilaf" and dict(reference[0].options) == {"compat": "reference"}
    assert reference[0].label == "bilaf (compat reference)"


def test_method_budget_seed_parsing():
    assert [v.key for v in bm.resolve_methods("random,bilaf")] == ["bilaf", "random"]  # display order
    assert bm.parse_budgets("50, 10,10") == [10, 50]
    assert bm.parse_seeds("3") == [0, 1, 2] and bm.parse_seeds("4,1") == [1, 4]
    assert bm.parse_seeds("2,") == [2]  # one seed is a list of one
    with pytest.raises(BilafError, match=r"--seeds 0,"):
        bm.parse_seeds("0")
    for bad in (lambda: bm.resolve_methods("bilaf,magic"), lambda: bm.parse_budgets("10,0"),
                lambda: bm.parse_budgets("ten"), lambda: bm.parse_seeds("0"), lambda: bm.parse_pools("skewed")):
        with pytest.raises(BilafError):
            bad()


# ---------------------------------------------------------------------------------------------
# The biased pool
# ---------------------------------------------------------------------------------------------


def test_percentage_budgets_resolve_per_pool():
    assert bm.parse_budgets("1%, 0.5%,10,2%,1%") == [10, "0.5%", "1%", "2%"]
    assert [bm.budget_count(b, 60_000) for b in ("0.5%", "1%", "2%", 7)] == [300, 600, 1200, 7]
    assert bm.budget_count("0.5%", 30_300) == 152 and bm.budget_count("0.001%", 50) == 1
    for bad in ("0%", "101%", "x%", "-1%"):
        with pytest.raises(BilafError, match="percentages"):
            bm.parse_budgets(bad)


def test_core_rules_of_the_k_ablation():
    assert bm.CoreRule(fraction=0.001).resolve(600, 60_000) == 60
    assert bm.CoreRule(fraction=0.005).resolve(200, 60_000) == 200  # capped to the budget: all cores
    assert bm.CoreRule(half_budget=True).resolve(1200, 60_000) == 600
    assert bm.CoreRule(fraction=0.001).resolve(20, 1000) == 2  # at least two pseudo-classes


def test_validation_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(4), [600, 300, 120, 6])
    pool, held = bm.validation_split(labels)
    assert np.intersect1d(pool, held).size == 0 and pool.size + held.size == labels.size
    assert list(np.bincount(labels[held], minlength=4)) == [100, 50, 20, 1]
    again, _ = bm.validation_split(labels)
    other, _ = bm.validation_split(labels, seed=1)
    np.testing.assert_array_equal(pool, again)
    assert not np.array_equal(pool, other)
    with pytest.raises(BilafError, match="between 0 and 1"):
        bm.validation_split(labels, fraction=1.0)


def _row(label, budget, seed, accuracy, pool="full", status="ok"):
    method = label.split(" ")[0]
    return bm.BenchRow(pool=pool, method=method, variant="", label=label, budget=budget, seed=seed,
                       accuracy=accuracy, selection_s=1.0, eval_s=0.1, n_pool=100, status=status)


def test_paired_differences_and_verdict_table():
    rows = [_row("bilaf", 100, s, a) for s, a in enumerate([0.70, 0.72, 0.74])]
    rows += [_row("random", 100, s, a) for s, a in enumerate([0.60, 0.63, 0.65])]  # diffs 0.10, 0.09, 0.09
    rows += [_row("kmeans", 100, s, a) for s, a in enumerate([0.75, 0.70, 0.77])]  # diffs -0.05, 0.02, -0.03
    rows += [_row("kmeans", 100, 3, 0.99)]  # no bilaf seed 3: not paired
    rows += [_row("typiclust", 100, 0, 0.5), _row("typiclust", 100, 1, 0.5, status="error")]
    diffs = bm.paired_differences(rows, "full", "bilaf", "random")
    mean, low, high, n = diffs[100]
    assert n == 3 and mean == pytest.approx(0.28 / 3)
    half = 4.302652729911275 * np.std([0.10, 0.09, 0.09], ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert (low, high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert bm.paired_differences(rows, "full", "bilaf", "kmeans")[100][3] == 3
    assert bm.paired_differences(rows, "full", "bilaf", "typiclust")[100][3] == 1
    table = bm.paired_table(rows, "full", "bilaf", ["random", "kmeans", "typiclust", "coreset"])
    lines = table.splitlines()
    assert lines[2].startswith("| random | ▲ +9.3 [")  # interval above zero
    assert lines[3].startswith("| kmeans | = -2.0 [")  # interval contains zero
    assert lines[4] == "| typiclust | +20.0 (n=1) |" and lines[5] == "| coreset | – |"


def test_biased_pool_imbalance_ratio():
    labels = np.repeat(np.arange(10), 6000)  # Fashion-MNIST's shape
    idx = bm.biased_pool(labels, ratio=100, seed=0)
    counts = np.bincount(labels[idx], minlength=10)
    # majority classes 0-4 whole; 30 000 / 100 = 300 drawn from the union of classes 5-9
    assert counts[:5].tolist() == [6000] * 5
    assert counts[5:].sum() == 300
    assert counts[5:].min() > 30  # uniform draw: about 60 each
    assert counts[:5].sum() / counts[5:].sum() == 100
    assert np.all(np.diff(idx) > 0) and idx.dtype == np.int64


def test_biased_pool_is_deterministic_and_seeded():
    labels = np.repeat(np.arange(10), 600)
    a, b = bm.biased_pool(labels, ratio=10, seed=3), bm.biased_pool(labels, ratio=10, seed=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, bm.biased_pool(labels, ratio=10, seed=4))
    np.testing.assert_array_equal(bm.minority_classes(labels), [5, 6, 7, 8, 9])


def test_biased_pool_bad_input():
    with pytest.raises(BilafError, match="imbalance"):
        bm.biased_pool(np.repeat(np.arange(10), 5), ratio=100, seed=0)
    with pytest.raises(BilafError, match="at least 1"):
        bm.biased_pool(np.repeat(np.arange(10), 5), ratio=0, seed=0)
    with pytest.raises(BilafError, match="two classes"):
        bm.biased_pool(np.zeros(10, dtype=int), ratio=2, seed=0)


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def test_rows_shape_and_values(sets):
    train, test = sets
    rows = list(bm.run_benchmark(train, methods="random,kmeans,kmeans-multibatch", budgets="10,30", seeds=2,
                                 pools="both", test_feature_dir=test, imbalance_ratio=10))
    assert len(rows) == 3 * 2 * 2 * 2
    assert len({r.key for r in rows}) == len(rows)
    for r in rows:
        assert r.status == "ok", r.error
        assert 0.0 <= r.accuracy <= 1.0 and r.selection_s >= 0 and r.eval_s > 0
        assert r.n_train == r.budget and 1 <= r.classes_covered <= N_CLASSES
        assert r.selection.indices.size == r.budget and r.evaluation.n_train == r.budget
        if r.pool == "full":
            assert r.n_pool == 4000 and r.minority_picks == -1 and math.isnan(r.minority_accuracy)
        else:
            assert r.n_pool == 2200 and r.imbalance_ratio == 10 and 0 <= r.minority_picks <= r.budget
            assert 0.0 <= r.minority_accuracy <= 1.0
    # separable blobs: 30 k-means picks cover the classes and the probe is near perfect
    assert np.mean([r.accuracy for r in rows if r.method == "kmeans" and r.budget == 30 and r.pool == "full"]) > 0.9
    # multi-batch: the B=30 set extends the B=10 set of the same seed and pool
    for pool in ("full", "biased"):
        mb = {r.budget: r.selection for r in rows if r.method == "kmeans-multibatch" and r.pool == pool and r.seed == 0}
        np.testing.assert_array_equal(mb[30].indices[:10], mb[10].indices)
        assert mb[30].params["rounds"] == [10, 30]


def test_rows_are_deterministic(sets):
    train, test = sets
    def run():
        return [(r.key, r.accuracy, tuple(r.selection.indices)) for r in bm.run_benchmark(
            train, methods="random,coreset", budgets="12", seeds=1, pools="both", test_feature_dir=test, imbalance_ratio=10)]
    assert run() == run()


def test_fisher_gets_the_test_features_on_the_biased_pool_only(sets, monkeypatch):
    import bilaf_core.selection as selection

    train, test = sets
    seen = []
    real = selection.run_selection

    def spy(method, features, budget, **kwargs):
        seen.append((method, features.shape[0], {k: v for k, v in kwargs.items() if k != "seed"}))
        return real(method, features, budget, **kwargs)

    monkeypatch.setattr(selection, "run_selection", spy)
    rows = list(bm.run_benchmark(train, methods="fisher,random", budgets="10", seeds=1, pools="both",
                                 test_feature_dir=test, imbalance_ratio=10))
    assert len(rows) == 4
    test_features = load_feature_set(test).features
    for method, n_pool, options in seen:
        if method == "fisher" and n_pool == 2200:
            np.testing.assert_array_equal(options["target_features"], test_features)
        else:
            assert options == {}, (method, n_pool, options)  # nothing extra, and never labels


def test_labels_never_reach_selection(sets, monkeypatch):
    """Every method rejects a labels option; the benchmark passes none."""
    import bilaf_core.selection as selection

    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    for method in available_methods():
        with pytest.raises(BilafError, match="does not take labels"):
            run_selection(method, x, 5, labels=np.zeros(60, dtype=int))
    train, test = sets
    passed = []
    real = selection.run_selection
    monkeypatch.setattr(selection, "run_selection", lambda m, f, b, **kw: passed.append(set(kw)) or real(m, f, b, **kw))
    list(bm.run_benchmark(train, methods="all", budgets="20", seeds=1, pools="both", test_feature_dir=test, imbalance_ratio=10))
    assert passed and all(not ({"labels", "y", "targets"} & keys) for keys in passed)
    assert all(keys <= {"seed", "compat", "target_features", "initial_indices"} for keys in passed)


def test_failed_selection_is_a_row_not_a_crash(sets):
    train, test = sets
    # BiLAF needs at least 2 core samples, so a budget of 1 cannot work; random can
    rows = list(bm.run_benchmark(train, methods="bilaf,random", budgets="1", seeds=1, test_feature_dir=test))
    by = {r.label: r for r in rows}
    assert by["bilaf"].status == "error" and by["bilaf"].error and math.isnan(by["bilaf"].accuracy)
    assert by["random"].status == "ok"
    assert "error" in bm.accuracy_table(rows, "full")


def test_biased_pool_needs_test_features(sets):
    train, _ = sets
    with pytest.raises(BilafError, match="--test-features"):
        next(bm.run_benchmark(train, methods="random", budgets="10", seeds=1, pools="biased"))


def test_unlabelled_features_are_rejected(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((20, 3), dtype=np.float32))
    folder = import_embeddings(tmp_path / "x.npy", out_dir=tmp_path / "nolabels")
    with pytest.raises(BilafError, match="no labels"):
        next(bm.run_benchmark(folder, methods="random", budgets="5", seeds=1))


# ---------------------------------------------------------------------------------------------
# Results file, resume, tables
# ---------------------------------------------------------------------------------------------


def test_results_roundtrip_and_resume(sets, tmp_path):
    train, test = sets
    out = tmp_path / "r.csv"
    first = list(bm.run_benchmark(train, methods="random,kmeans-multibatch", budgets="10", seeds=1, test_feature_dir=test))
    bm.write_results(out, first)
    back = bm.read_results(out)
    assert [r.key for r in back] == [r.key for r in first]
    assert [r.accuracy for r in back] == pytest.approx([r.accuracy for r in first], rel=1e-5)
    key = load_feature_set(train).meta["key"]
    done = bm.completed_keys(back, key)
    more = list(bm.run_benchmark(train, methods="random,kmeans-multibatch", budgets="10,20", seeds=1,
                                 test_feature_dir=test, done=done))
    assert sorted(r.key for r in more) == [("full", "kmeans-multibatch", 20, 0), ("full", "random", 20, 0)]
    # the resumed multi-batch round builds on the same B=10 set as before
    full = list(bm.run_benchmark(train, methods="kmeans-multibatch", budgets="10,20", seeds=1, test_feature_dir=test))
    np.testing.assert_array_equal(more[0].selection.indices if more[0].method == "kmeans-multibatch" else more[1].selection.indices,
                                  full[1].selection.indices)
    assert bm.completed_keys(back, "other-features") == set()


def test_read_results_rejects_other_files(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(BilafError, match="not a benchmark results file"):
        bm.read_results(bad)
    assert bm.read_results(tmp_path / "absent.csv") == []


def test_tables():
    rows = [bm.BenchRow("full", "random", "", "random", b, s, acc, 0.01, 0.2, 100)
            for b, s, acc in [(10, 0, 0.5), (10, 1, 0.7), (20, 0, 0.8)]]
    table = bm.accuracy_table(rows, "full")
    assert "| method | B=10 | B=20 |" in table
    assert "60.0 ± 14.1" in table and "80.0 ± 0.0 (n=1)" in table
    assert "< 0.1 s" in bm.time_table(rows, "full")
    assert "no rows" in bm.accuracy_table(rows, "biased")


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [bm.BenchRow(pool, m, v, lab, b, 0, 0.5 + b / 100, 0.01, 0.2, 100)
            for pool in ("full", "biased") for (m, v, lab) in [("bilaf", "", "bilaf"), ("bilaf", "compat reference", "bilaf (compat reference)"),
                                                              ("random", "", "random")] for b in (10, 20)]
    path = bm.plot_results(rows, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the y axis says how the rows were scored (a finetuned plot once claimed "linear-probe")
    assert bm.scoring_name(rows) == "linear-probe"
    finetuned = [dataclasses.replace(r, eval_mode="finetune") for r in rows]
    assert bm.scoring_name(finetuned) == "finetuned" and bm.scoring_name(rows + finetuned) == "mixed-scoring"


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_runs_and_prints_tables(sets, tmp_path, capsys):
    train, test = sets
    out = tmp_path / "res.csv"
    rc = main(["bench", "--features", str(train), "--test-features", str(test), "--budgets", "10,20", "--methods",
               "random,kmeans", "--seeds", "2", "--pool", "both", "--imbalance-ratio", "10", "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| method | B=10 | B=20 |" in text and "| kmeans |" in text and "biased pool (10x imbalance)" in text
    assert len(bm.read_results(out)) == 2 * 2 * 2 * 2
    # a second run finds everything done and only prints
    assert main(["bench", "--features", str(train), "--test-features", str(test), "--budgets", "10,20", "--methods",
                 "random,kmeans", "--seeds", "2", "--pool", "both", "--imbalance-ratio", "10", "--out", str(out), "--quiet"]) == 0
    assert len(bm.read_results(out)) == 16


@pytest.mark.parametrize("extra, message", [
    (["--budgets", "10,abc"], "--budgets"),
    (["--budgets", "0"], "--budgets"),
    (["--budgets", "99999"], "larger than the pool"),
    (["--methods", "bilaf,nope"], "unknown method"),
    (["--seeds", "0"], "--seeds"),
    (["--pool", "biased"], "--test-features"),
    (["--imbalance-ratio", "0", "--pool", "full"], "imbalance"),
    (["--plot", "out.pdf"], "--plot"),
])
def test_cli_bad_input_exits_2(sets, capsys, extra, message):
    train, _ = sets
    rc = main(["bench", "--features", str(train), "--methods", "random", "--seeds", "1", "--quiet", *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")


def test_cli_missing_features_exits_2(tmp_path, capsys):
    assert main(["bench", "--features", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_record_puts_full_pool_runs_in_the_workspace(sets, tmp_path, capsys):
    from bilaf_core.workspace import Workspace

    train, test = sets
    ws = tmp_path / "ws"
    rc = main(["bench", "--features", str(train), "--test-features", str(test), "--budgets", "10,20", "--methods",
               "random,kmeans-multibatch", "--seeds", "1", "--record", "--workspace", str(ws), "--quiet"])
    assert rc == 0
    workspace = Workspace(ws)
    selections = workspace.list_selections()
    assert len(selections) == 4
    evaluations = workspace.list_evaluations()
    assert len(evaluations) == 4
    # the multi-batch record at B=20 is the whole labelled set (both rounds)
    mb = [s for s in selections if s.get("method") == "kmeans-multibatch" and s.get("budget") == 20]
    assert mb and workspace.load_selection(mb[0]["id"]).indices.size == 20


def test_plan_counts_resolve_percentages_per_pool_and_skip_done_rows():
    labels = np.repeat(np.arange(10), 100)  # 1 000 images, 100 per class
    variants = bm.resolve_methods("random,kmeans")
    biased = bm.biased_pool(labels, ratio=10, seed=0).size
    done = {("full", "random", 10, 0), ("full", "kmeans", 20, 0), ("full", "random", 1, 0)}  # the last is not in the plan
    counts, total, todo = bm.plan_counts(labels, variants, ["1%", "2%"], [0, 1], ["full", "biased"], done, imbalance_ratio=10)
    assert counts[("full", 0)] == counts[("full", 1)] == [10, 20]
    assert counts[("biased", 0)] == sorted({bm.budget_count("1%", biased), bm.budget_count("2%", biased)})
    assert total == 2 * 2 * 2 + 2 * 2 * len(counts[("biased", 0)])
    assert todo == total - 2
