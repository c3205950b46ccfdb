"""Baseline selection methods: invariants, error messages, and agreement with slow brute-force
versions written loop by loop from each paper's definition (float64, no vectorisation)."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

from bilaf_core.errors import BilafError, Cancelled
from bilaf_core.selection import _ops, get_method, run_selection

# Register the baseline methods even while the package's import list is being edited elsewhere
# (importing a module twice is a no-op, so this never double-registers).
for _mod in ("random_method", "kmeans", "coreset", "fds", "typiclust", "probcover", "fisher"):
    importlib.import_module(f"bilaf_core.selection.{_mod}")

from bilaf_core.selection import fisher as fisher_mod  # noqa: E402
from bilaf_core.selection import probcover as probcover_mod  # noqa: E402

METHODS = ["random", "kmeans", "kmeans-multibatch", "coreset", "fds", "typiclust", "probcover", "fisher"]


def blobs(seed=0, n_per=40, k=8, d=32, scale=10.0):
    """k well-separated Gaussian blobs: centres on orthogonal directions, unit noise."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    centres = q.T * scale
    lab = np.repeat(np.arange(k), n_per)
    x = (centres[lab] + rng.standard_normal((k * n_per, d))).astype(np.float32)
    return x, lab


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dists(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0))


# ---------------------------------------------------------------------------------------------
# Invariants shared by every method
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_exactly_budget_distinct_and_deterministic(method):
    x, _ = blobs(1, n_per=15, k=6, d=12)
    a = run_selection(method, x, 9, seed=3)
    b = run_selection(method, x, 9, seed=3)
    assert a.indices.dtype == np.int64 and a.indices.shape == (9,)
    assert np.unique(a.indices).size == 9
    assert a.indices.min() >= 0 and a.indices.max() < len(x)
    np.testing.assert_array_equal(a.indices, b.indices)
    for key, value in a.diagnostics.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(b.diagnostics[key]), err_msg=key)
    assert "total" in a.timings


@pytest.mark.parametrize("method", METHODS)
def test_budget_equal_to_pool(method):
    x, _ = blobs(2, n_per=5, k=4, d=6)
    sel = run_selection(method, x, len(x), seed=0)
    assert sorted(sel.to_list()) == list(range(len(x)))


@pytest.mark.parametrize("method", ["random", "fds"])
def test_different_seeds_differ(method):
    x, _ = blobs(0)
    picks = {tuple(run_selection(method, x, 10, seed=s).to_list()) for s in range(4)}
    assert len(picks) > 1


def test_every_method_documents_its_params():
    for name in METHODS:
        spec = get_method(name)
        assert spec.summary
        for p in spec.params:
            assert p.help and "\n" not in p.help, (name, p.name)


@pytest.mark.parametrize("method", ["coreset", "probcover", "kmeans", "fisher"])
def test_cancel_propagates(method):
    x, _ = blobs(0)

    def cancel(fraction, message):
        if fraction > 0.0:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        run_selection(method, x, 30, seed=0, progress=cancel)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["kmeans-multibatch", "coreset"])
def test_initial_indices_errors(method):
    x, _ = blobs(0, n_per=5, k=4, d=6)  # 20 samples
    with pytest.raises(BilafError, match="lower the budget to at most 5"):
        run_selection(method, x, 6, initial_indices=list(range(15)))
    with pytest.raises(BilafError, match="repeated"):
        run_selection(method, x, 3, initial_indices=[1, 2, 2])
    with pytest.raises(BilafError, match="out of range"):
        run_selection(method, x, 3, initial_indices=[0, 20])
    with pytest.raises(BilafError, match="integer"):
        run_selection(method, x, 3, initial_indices=[0.5, 1.0])


@pytest.mark.parametrize("method", ["kmeans-multibatch", "coreset"])
def test_initial_indices_are_never_picked(method):
    x, lab = blobs(0)
    initial = np.flatnonzero(lab == 0)  # a whole blob already labelled
    sel = run_selection(method, x, 40, seed=1, initial_indices=initial)
    assert not np.isin(sel.indices, initial).any()
    assert np.unique(sel.indices).size == 40
    # budget exactly the unpicked remainder
    sel = run_selection(method, x, len(x) - len(initial), seed=1, initial_indices=initial)
    assert sorted(sel.to_list()) == sorted(set(range(len(x))) - set(initial.tolist()))


def test_fisher_target_errors():
    x, _ = blobs(0)
    with pytest.raises(BilafError, match="31 dims but the pool has 32"):
        run_selection("fisher", x, 5, target_features=np.zeros((4, 31), np.float32))
    bad = x[:4].copy()
    bad[1, 3] = np.nan
    with pytest.raises(BilafError, match="NaN"):
        run_selection("fisher", x, 5, target_features=bad)
    with pytest.raises(BilafError, match="2-D"):
        run_selection("fisher", x, 5, target_features=np.zeros(32))


def test_probcover_purity_errors():
    x = np.tile(np.array([[1.0, 2.0, 3.0]], np.float32), (30, 1))  # one point repeated: one pseudo-class
    with pytest.raises(BilafError, match="--delta"):
        run_selection("probcover", x, 3)
    # an explicit δ still works and covers everything with the first pick
    sel = run_selection("probcover", x, 3, delta=0.1)
    assert sel.diagnostics["coverage"][0] == 1.0


# ---------------------------------------------------------------------------------------------
# Cluster coverage on well-separated blobs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "method,budget,options",
    [
        ("kmeans", 16, {}),
        ("kmeans-multibatch", 16, {}),
        ("typiclust", 16, {}),
        ("probcover", 16, {"purity_clusters": 8}),
        ("probcover", 8, {"purity_clusters": 8}),
    ],
)
def test_every_blob_gets_a_pick(method, budget, options, seed):
    x, lab = blobs(seed)
    sel = run_selection(method, x, budget, seed=seed, **options)
    assert set(lab[sel.indices].tolist()) == set(range(8))


def test_random_misses_blobs_sometimes():
    # sanity check that the blob test above can fail: random with B=8 rarely hits all 8 blobs
    x, lab = blobs(0)
    hits = [len(set(lab[run_selection("random", x, 8, seed=s).indices].tolist())) for s in range(10)]
    assert min(hits) < 8


# ---------------------------------------------------------------------------------------------
# k-means
# ---------------------------------------------------------------------------------------------


def test_kmeans_exactly_b_with_duplicate_rows():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.tile(rng.standard_normal((1, 8)), (50, 1)), rng.standard_normal((10, 8))]).astype(np.float32)
    for method in ("kmeans", "kmeans-multibatch"):
        sel = run_selection(method, x, 20, seed=0)
        assert np.unique(sel.indices).size == 20
        cop = sel.diagnostics["centroid_of_pick"]
        assert sorted(cop.tolist()) == list(range(20))


def test_kmeans_picks_nearest_sample_to_each_centroid():
    x, _ = blobs(3)
    sel = run_selection("kmeans", x, 16, seed=0)
    xn = unit(x)
    centroids = sel.diagnostics["centroids"]
    nearest = dists(centroids, xn).argmin(axis=1)
    if np.unique(nearest).size == 16:  # no two centroids share a nearest sample
        np.testing.assert_array_equal(sel.indices, nearest[sel.diagnostics["centroid_of_pick"]])
    assign = sel.diagnostics["assignment"]
    np.testing.assert_array_equal(assign, dists(xn, centroids).argmin(axis=1))


def test_unique_nearest_resolves_conflicts_greedily():
    from bilaf_core.selection.kmeans import unique_nearest

    x = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [9.0, 0.0]], np.float32)
    # three centroids all nearest to sample 0; tightest first gets it, the others the next nearest
    centroids = np.array([[0.0, 0.0], [0.1, 0.0], [-0.5, 0.0]], np.float32)
    picks, order = unique_nearest(x, centroids)
    assert order.tolist() == [0, 1, 2]
    assert picks.tolist() == [0, 1, 2]
    # allowed subset: sample 0 excluded
    picks, order = unique_nearest(x, centroids[:1], allowed=np.array([1, 2, 3]))
    assert picks.tolist() == [1]


def test_multibatch_takes_nearest_free_member():
    x, lab = blobs(4)
    initial = np.arange(0, len(x), 3)
    sel = run_selection("kmeans-multibatch", x, 12, seed=0, initial_indices=initial)
    d = sel.diagnostics
    xn = unit(x)
    free = np.ones(len(x), bool)
    free[initial] = False
    for pick, c, own in zip(sel.indices, d["centroid_of_pick"], d["from_own_cluster"]):
        members = np.flatnonzero((d["assignment"] == c) & free)
        if own:
            dd = dists(d["centroids"][c : c + 1], xn[members])[0]
            assert pick == members[dd.argmin()]
        else:
            assert members.size == 0


# ---------------------------------------------------------------------------------------------
# Core-set and FDS against a slow k-center
# ---------------------------------------------------------------------------------------------


def slow_kcenter(x, budget, initial, first):
    x = np.asarray(x, np.float64)
    centres = list(initial) if len(initial) else [first]
    picks = [] if len(initial) else [first]
    mind = [min(math.dist(x[i], x[c]) for c in centres) for i in range(len(x))]
    at_pick = [] if len(initial) else [float("nan")]
    while len(picks) < budget:
        best, best_d = -1, -1.0
        for i in range(len(x)):
            if i in centres:
                continue
            if mind[i] > best_d:
                best, best_d = i, mind[i]
        picks.append(best)
        centres.append(best)
        at_pick.append(best_d)
        for i in range(len(x)):
            mind[i] = min(mind[i], math.dist(x[i], x[best]))
    return picks, at_pick, mind


def test_coreset_matches_slow_kcenter():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((150, 5)) * [1, 2, 3, 1, 0.5]).astype(np.float32)
    initial = [3, 77, 120]
    sel = run_selection("coreset", x, 25, seed=0, initial_indices=initial)
    picks, at_pick, mind = slow_kcenter(x, 25, initial, None)
    assert sel.to_list() == picks
    np.testing.assert_allclose(sel.diagnostics["distance_at_pick"], at_pick, rtol=1e-4)
    np.testing.assert_allclose(sel.diagnostics["min_distance"], mind, rtol=1e-4, atol=1e-5)
    radius = sel.diagnostics["cover_radius"]
    assert np.all(np.diff(radius) <= 1e-6)
    # without an initial set the first pick is the seeded random start
    sel = run_selection("coreset", x, 10, seed=5)
    picks, _, _ = slow_kcenter(x, 10, [], int(sel.indices[0]))
    assert sel.to_list() == picks


def test_fds_is_cosine_farthest_first():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((120, 6)) + 2.0).astype(np.float32) * rng.uniform(0.2, 5.0, (120, 1)).astype(np.float32)
    sel = run_selection("fds", x, 20, seed=2)
    picks, at_pick, _ = slow_kcenter(unit(x), 20, [], int(sel.indices[0]))
    assert sel.to_list() == picks
    cos_dist = np.asarray(at_pick[1:]) ** 2 / 2  # 1 − cos on unit vectors
    np.testing.assert_allclose(sel.diagnostics["min_distance_at_pick"][1:], cos_dist, rtol=1e-4)
    assert np.isnan(sel.diagnostics["min_distance_at_pick"][0])
    # norms are ignored: rescaling rows does not change the picks
    scaled = x * rng.uniform(0.1, 10, (120, 1)).astype(np.float32)
    assert run_selection("fds", scaled, 20, seed=2).to_list() == sel.to_list()


def test_farthest_first_pruning_is_exact_in_low_dimension():
    # in 2-D the triangle-inequality test skips most rows; the result must equal the slow greedy
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 100, (600, 2)).astype(np.float32)
    picks, _, radius2, _ = _ops.farthest_first(x, 60, first=7)
    slow, _, _ = slow_kcenter(x, 60, [], 7)
    assert picks.tolist() == slow


def test_kmeanspp_seeds_distinct_even_with_duplicates():
    x = np.zeros((30, 4), np.float32)
    x[:5] = np.eye(5, 4)
    seeds = _ops.kmeanspp_seeds(x, 12, np.random.default_rng(0))
    assert np.unique(seeds).size == 12


# ---------------------------------------------------------------------------------------------
# TypiClust
# ---------------------------------------------------------------------------------------------


def slow_typiclust_pick(assign, typicality, budget, min_size):
    clusters = sorted(set(assign.tolist()))
    size = {c: int((assign == c).sum()) for c in clusters}
    taken = {c: 0 for c in clusters}
    picked = []
    for _ in range(budget):
        left = [c for c in clusters if taken[c] < size[c]]
        eligible = [c for c in left if size[c] >= min_size] or left
        fewest = min(taken[c] for c in eligible)
        eligible = [c for c in eligible if taken[c] == fewest]
        c = max(eligible, key=lambda c: (size[c], -c))
        members = [i for i in range(len(assign)) if assign[i] == c and i not in picked]
        picked.append(max(members, key=lambda i: (typicality[i], -i)))
        taken[c] += 1
    return picked


def test_typiclust_matches_definition():
    rng = np.random.default_rng(0)
    x, _ = blobs(5, n_per=30, k=5, d=10)
    outliers = (rng.standard_normal((3, 10)) * 0.2 + 25).astype(np.float32)
    x = np.concatenate([x, outliers])
    sel = run_selection("typiclust", x, 13, seed=0, neighbors=7)
    d = sel.diagnostics
    assign, typ = d["assignment"], d["typicality"]
    xn = unit(x)
    # typicality: 1 / mean distance to the k nearest other members, k = min(7, size − 1)
    for c in np.unique(assign):
        members = np.flatnonzero(assign == c)
        if members.size == 1:
            assert typ[members[0]] == 0
            continue
        k = min(7, members.size - 1)
        dd = np.sort(dists(xn[members], xn[members]), axis=1)[:, 1 : k + 1]
        np.testing.assert_allclose(typ[members], 1 / (dd.mean(axis=1) + 1e-8), rtol=2e-3)
    assert sel.to_list() == slow_typiclust_pick(assign, typ, 13, 5)
    # the 3 outliers form a small cluster, skipped while larger clusters have samples left
    small = [c for c in np.unique(assign) if (assign == c).sum() < 5]
    assert small and not np.isin(d["cluster_of_pick"], small).any()
    sel1 = run_selection("typiclust", x, 13, seed=0, neighbors=7, min_cluster_size=1)
    assert np.isin(sel1.diagnostics["cluster_of_pick"], small).any()


def test_typicality_dense_and_faiss_paths_agree(monkeypatch):
    from bilaf_core.selection import typiclust

    x, _ = blobs(10, n_per=50, k=3, d=8)
    xn = _ops.l2_normalize(x)
    assign = np.repeat(np.arange(3), 50)
    dense, order_d, _ = typiclust.cluster_typicality(xn, assign, 3, 20)
    monkeypatch.setattr(typiclust, "_DENSE_MAX", 0)
    viafaiss, order_f, _ = typiclust.cluster_typicality(xn, assign, 3, 20)
    np.testing.assert_allclose(dense, viafaiss, rtol=1e-3)
    assert np.all(dense > 0)


def test_typiclust_more_picks_than_clusters_cycles_and_exhausts():
    x, _ = blobs(6, n_per=6, k=4, d=8)  # 24 samples
    sel = run_selection("typiclust", x, 20, seed=0, max_clusters=4)
    d = sel.diagnostics
    assert d["cluster_size"].size == 4
    assert sel.to_list() == slow_typiclust_pick(d["assignment"], d["typicality"], 20, 5)


# ---------------------------------------------------------------------------------------------
# ProbCover
# ---------------------------------------------------------------------------------------------


def brute_force_purity_delta(x, labels, alpha):
    xn = unit(x)
    d = dists(xn, xn)
    d[labels[:, None] == labels[None, :]] = np.inf
    dx = d.min(axis=1)
    return max(v for v in np.unique(dx) if np.mean(dx >= v) >= alpha)


@pytest.mark.parametrize("alpha", [0.95, 0.8])
def test_probcover_delta_is_purity_rule(alpha):
    x, _ = blobs(7, n_per=40, k=6, d=16, scale=4.0)
    sel = run_selection("probcover", x, 10, seed=0, purity_clusters=6, purity_threshold=alpha)
    d = sel.diagnostics
    expected = brute_force_purity_delta(x, d["pseudo_label"], alpha)
    assert d["delta"] == pytest.approx(expected, rel=1e-4)
    assert d["purity"] >= alpha


def test_probcover_sampled_radius_path_is_exact(monkeypatch):
    # large-pool path: provisional radius from a sample, then the check; and the fallback when the
    # sample's bound is too small
    x, _ = blobs(8, n_per=60, k=6, d=16, scale=4.0)
    exact = run_selection("probcover", x, 10, seed=0, purity_clusters=6)
    monkeypatch.setattr(probcover_mod, "PURITY_SAMPLE", 50)
    sampled = run_selection("probcover", x, 10, seed=0, purity_clusters=6)
    assert sampled.diagnostics["delta"] == pytest.approx(exact.diagnostics["delta"], rel=1e-5)
    assert sampled.to_list() == exact.to_list()
    monkeypatch.setattr(probcover_mod, "_BOUND_SIGMAS", -40.0)  # U far too small: check fails
    fallback = run_selection("probcover", x, 10, seed=0, purity_clusters=6)
    assert fallback.diagnostics["delta"] == pytest.approx(exact.diagnostics["delta"], rel=1e-5)
    assert fallback.to_list() == exact.to_list()


def slow_max_coverage(x, delta, budget, seed):
    xn = unit(x)
    ball = dists(xn, xn) < delta
    n = len(x)
    prio = np.random.default_rng([seed, 2]).permutation(n)
    covered = np.zeros(n, bool)
    picks, coverage = [], []
    for _ in range(budget):
        gains = [(int((ball[i] & ~covered).sum()), prio[i], i) for i in range(n)]
        gain, _, best = max(gains)
        if gain == 0:
            break
        covered |= ball[best]
        picks.append(best)
        coverage.append(covered.mean())
    return picks, coverage, covered


def test_probcover_greedy_matches_slow_coverage():
    x, _ = blobs(9, n_per=30, k=5, d=10, scale=3.0)
    xn = unit(x)
    pair = np.sort(dists(xn, xn).ravel())
    delta = 0.6
    assert np.abs(pair - delta).min() > 1e-4  # no pair on the boundary
    sel = run_selection("probcover", x, 12, seed=4, delta=delta)
    picks, coverage, covered = slow_max_coverage(x, delta, 12, 4)
    assert sel.to_list()[: len(picks)] == picks
    np.testing.assert_allclose(sel.diagnostics["coverage"][: len(picks)], coverage)
    assert sel.diagnostics["delta"] == delta


def test_probcover_fills_randomly_once_everything_is_covered():
    x, _ = blobs(0, n_per=10, k=3, d=8)
    sel = run_selection("probcover", x, 12, seed=0, delta=0.9)
    cov = sel.diagnostics["coverage"]
    assert cov[-1] == 1.0 and sel.diagnostics["covered"].all()
    assert np.unique(sel.indices).size == 12
    full = int(np.argmax(cov == 1.0))
    assert full < 11  # the fill really happened
    other = run_selection("probcover", x, 12, seed=1, delta=0.9)
    assert sel.to_list() != other.to_list()


# ---------------------------------------------------------------------------------------------
# Fisher-kernel matching
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.1, 0.7])
def test_fisher_gradient_matches_autograd(temperature):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    f = unit(rng.standard_normal((7, 6)))
    W = unit(rng.standard_normal((4, 6)))
    ft = torch.tensor(f, requires_grad=True)
    logits = ft @ torch.tensor(W).T / temperature
    loss = torch.nn.functional.cross_entropy(logits, logits.argmax(dim=1).detach(), reduction="sum")
    loss.backward()
    auto = ft.grad.numpy()
    np.testing.assert_allclose(fisher_mod.head_gradient(f, W, temperature), auto, rtol=1e-9, atol=1e-12)
    # the descriptor's gradient half is that gradient's direction, in an orthonormal basis of span(W)
    desc, labels = fisher_mod.descriptors(f.astype(np.float32), W, temperature)
    q = fisher_mod.gradient_basis(W)
    np.testing.assert_allclose(desc[:, 6:] @ q.T, unit(auto), atol=1e-5)
    np.testing.assert_array_equal(labels, (f @ W.T).argmax(axis=1))
    # kernel = cos(features) + cos(gradients)
    explicit = f @ f.T + unit(auto) @ unit(auto).T
    np.testing.assert_allclose(desc.astype(np.float64) @ desc.T, explicit, atol=1e-5)


def test_fisher_gradient_direction_survives_confident_logits():
    rng = np.random.default_rng(1)
    f = unit(rng.standard_normal((60, 8)))
    W = unit(rng.standard_normal((3, 8)))
    z = np.sort(f @ W.T, axis=1)
    f = f[(z[:, 2] - z[:, 1] > 0.08) & (z[:, 1] - z[:, 0] > 0.01)]  # clear winner and runner-up
    assert len(f) >= 5
    # T = 1e-4: every exp(z_j − z_y) underflows and softmax is exactly one-hot, but the gradient's
    # direction is still defined: its limit is W_runner-up − W_y
    desc, labels = fisher_mod.descriptors(f.astype(np.float32), W, 1e-4)
    q = fisher_mod.gradient_basis(W)
    second = np.argsort(f @ W.T, axis=1)[:, -2]
    np.testing.assert_allclose(desc[:, 8:] @ q.T, unit(W[second] - W[labels]), atol=1e-5)


def test_fisher_picks_follow_the_target():
    x, lab = blobs(0)
    rng = np.random.default_rng(11)
    centre = x[lab == 2].mean(axis=0)
    target = (centre + rng.standard_normal((30, x.shape[1]))).astype(np.float32)
    sel = run_selection("fisher", x, 16, seed=0, target_features=target)
    in_region = np.mean(lab[sel.indices] == 2)
    assert in_region >= 0.75  # random would give 1/8
    assert sel.diagnostics["target_representatives"].max() < 30
    assert sel.diagnostics["match_count"][lab != 2].sum() < sel.diagnostics["match_count"][lab == 2].sum()
    # without a target the pool is its own target: picks spread over the blobs
    own = run_selection("fisher", x, 16, seed=0)
    assert len(set(lab[own.indices].tolist())) == 8


def test_fisher_small_repeated_target_fills_exactly_b():
    x, _ = blobs(0)
    target = np.repeat(x[:1], 10, axis=0)
    sel = run_selection("fisher", x, 100, seed=0, target_features=target)
    assert np.unique(sel.indices).size == 100
    rank = sel.diagnostics["rank_of_pick"]
    assert (rank == -1).any() and (rank >= 0).any()
    assert np.all(rank[: np.argmax(rank == -1)] >= 0)
