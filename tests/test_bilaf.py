"""BiLAF and ActiveFT: vectorised engine vs deliberately slow loop-by-loop versions, invariants,
and every bad input's message."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bilaf_core.errors import BilafError
from bilaf_core.selection import run_selection
from bilaf_core.selection.bilaf import split_budget

# ---------------------------------------------------------------------------------------------
# Slow references, written loop by loop from the paper's four steps (float64, no vectorisation)
# ---------------------------------------------------------------------------------------------


def _dist(a, b):
    return float(np.sqrt(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def slow_bilaf_default(x, cores, budget, k=10, removal=0.1, ring=0.1, penalty_factor=1.1):
    n, n_cores = len(x), len(cores)
    # 1. nearest core; a core always belongs to its own cluster
    cluster = []
    for i in range(n):
        ds = [_dist(x[i], x[c]) for c in cores]
        cluster.append(ds.index(min(ds)))
    for j, c in enumerate(cores):
        cluster[c] = j
    # 2. density rings and denoising
    ring_level = [0] * n
    kept = {}
    for j in range(n_cores):
        members = [i for i in range(n) if cluster[i] == j]
        if len(members) < 10:
            kept[j] = members
            continue
        r = max(1, math.floor(ring * len(members) + 1e-9))
        by_core = sorted(members, key=lambda i: (-1.0 if i == cores[j] else _dist(x[i], x[cores[j]]), i))
        order = by_core[:r]
        for i in order:
            ring_level[i] = 1
        level = 1
        while len(order) < len(members):
            level += 1
            dens = []
            for i in members:
                if ring_level[i]:
                    continue
                near = sorted(_dist(x[i], x[m]) for m in order)[:k]
                dens.append((sum(near) / len(near), i))
            dens.sort()
            for _, i in dens[:r]:
                ring_level[i] = level
                order.append(i)
        n_removed = math.floor(removal * len(members) + 1e-9)
        kept[j] = sorted(order[: len(members) - n_removed])
    # 3. budget split (checked separately against split_budget's contract)
    allocation = split_budget(np.array([len(kept[j]) for j in range(n_cores)]), budget)
    # 4. boundary picks
    picks = []
    for j in range(n_cores):
        members = kept[j]
        b = int(allocation[j])
        chosen = [cores[j]]
        inner = {i: sum(_dist(x[i], x[m]) for m in members) / len(members) for i in members}
        outer, opp = {}, {}
        for i in members:
            best = min((_dist(x[i], x[cores[o]]), o) for o in range(n_cores) if o != j)
            outer[i], opp[i] = best
        pen = [1.0] * n_cores
        drop = len(members) // b
        cands = list(members)
        while len(chosen) < b:
            last = chosen[-1]
            cands = sorted(cands, key=lambda i: (-math.inf if i == last else _dist(x[i], x[last]), i))[drop:]
            cands.sort()
            if last != cores[j]:
                pen[opp[last]] *= penalty_factor
            scores = [((outer[i] * pen[opp[i]] - inner[i]) / max(outer[i], inner[i], 1e-12), i) for i in cands]
            chosen.append(min(scores)[1])
        picks.extend(chosen)
    return picks, ring_level


def slow_bilaf_reference(x, cores, budget, k=10, removal=0.1, ring=0.1, penalty_factor=1.1):
    """The public reference code's semantics, loop by loop (its denoising defect included)."""
    from scipy.spatial.distance import cdist

    x = np.asarray(x, np.float64)
    n_cores = len(cores)
    full = cdist(x, x[cores])
    lists = [[] for _ in range(n_cores)]
    for i in range(len(x)):
        lists[int(np.argmin(full[i]))].append(i)
    for j in range(n_cores):
        members = lists[j]
        if len(members) < 10:
            continue
        d = cdist(x[members], x[members])
        core_pos = members.index(cores[j])
        r = int(len(members) * ring) or 1
        pairs = sorted((d[core_pos][i], i) for i in range(len(members)))
        grown = [p[1] for p in pairs[:r]]
        level = [0] * len(members)
        for i in grown:
            level[i] = 1
        for it in range(2, int(len(members) / r) + 1):
            cand = [i for i in range(len(members)) if level[i] == 0]
            if not cand:
                break
            dens = []
            for i in cand:
                pos = np.argsort(d[i][grown])[:k]  # positions inside `grown`…
                dens.append((np.mean(d[i][pos]), i))  # …read as cluster positions (the defect)
            dens.sort()
            new = [t[1] for t in dens[:r]]
            for i in new:
                level[i] = it
            grown.extend(new)
        grown = grown[: int(len(grown) * (1 - removal))]
        lists[j] = [members[i] for i in grown]
    sizes = np.array([len(lst) for lst in lists], dtype=float)
    prop = sizes / sizes.sum()
    alloc = [int(v) for v in np.floor(prop * budget)]
    for _ in range(budget - sum(alloc)):
        cur = 0
        for i in range(n_cores):
            if alloc[i] < alloc[cur] or (alloc[i] == alloc[cur] and prop[i] > prop[cur]):
                cur = i
        alloc[cur] += 1
    picks = []
    for j in range(n_cores):
        members = lists[j]
        feats = x[members]
        inner_d = cdist(feats, feats)
        inner = [np.mean(row) for row in inner_d]
        od = cdist(feats, x[cores])
        outer, opp = [], []
        for i in range(len(members)):
            od[i][j] = 1e9 + 7
            outer.append(np.min(od[i]))
            opp.append(int(np.argmin(od[i])))
        pen = [1.0] * n_cores
        core_pos = members.index(cores[j])
        chosen = [core_pos]
        invalid = int(len(members) / alloc[j])
        cands = list(range(len(members)))
        while len(chosen) < alloc[j]:
            node = chosen[-1]
            cands = [t[1] for t in sorted((inner_d[node][i], i) for i in cands)][invalid:]
            if node != core_pos:
                pen[opp[node]] *= penalty_factor
            scores = [(outer[i] * pen[opp[i]] - inner[i]) / max(outer[i], inner[i]) for i in cands]
            chosen.append(cands[int(np.argmin(scores))])
        picks.extend(members[i] for i in chosen)
    return picks


def blobs(seed, n_blobs=5, per=40, dim=6, spread=0.6, scale=3.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, scale, (n_blobs, dim))
    x = np.concatenate([rng.normal(c, spread, (per, dim)) for c in centers]).astype(np.float32)
    labels = np.repeat(np.arange(n_blobs), per)
    return x, labels


# ---------------------------------------------------------------------------------------------
# Vectorised == loop-by-loop
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seed,budget,n_cores,params",
    [
        (0, 30, 5, {}),
        (1, 24, 4, {"density_neighbors": 5}),
        (2, 40, 6, {"removal_fraction": 0.2, "ring_fraction": 0.15}),
        (3, 18, 3, {"opponent_penalty": 1.5}),
        (4, 60, 8, {"ring_fraction": 0.05, "density_neighbors": 3}),
    ],
)
def test_default_matches_slow_loop_version(seed, budget, n_cores, params):
    x, _ = blobs(seed, n_blobs=n_cores, per=25 + seed * 3)
    rng = np.random.default_rng(100 + seed)
    cores = rng.choice(len(x), n_cores, replace=False)
    sel = run_selection("bilaf", x, budget, core_indices=cores, **params)
    slow_kwargs = {
        "k": params.get("density_neighbors", 10),
        "removal": params.get("removal_fraction", 0.1),
        "ring": params.get("ring_fraction", 0.1),
        "penalty_factor": params.get("opponent_penalty", 1.1),
    }
    picks, levels = slow_bilaf_default(x, list(cores), budget, **slow_kwargs)
    assert sel.to_list() == picks
    assert sel.diagnostics["ring_level"].tolist() == levels


@pytest.mark.parametrize("seed,budget,n_cores", [(0, 30, 5), (5, 40, 4), (6, 25, 5), (7, 50, 7)])
def test_compat_reference_matches_slow_loop_version(seed, budget, n_cores):
    x, _ = blobs(seed, n_blobs=n_cores, per=30)
    cores = np.random.default_rng(seed).choice(len(x), n_cores, replace=False)
    sel = run_selection("bilaf", x, budget, core_indices=cores, compat="reference")
    assert sel.to_list() == slow_bilaf_reference(x, list(cores), budget)


def test_default_and_reference_differ_where_the_reference_bug_bites():
    # The reference's denoising reads arbitrary members as "nearest"; on enough data the two
    # modes must disagree somewhere (if they never did, compat mode would be pointless).
    x, _ = blobs(11, n_blobs=4, per=80)
    cores = np.random.default_rng(3).choice(len(x), 4, replace=False)
    a = run_selection("bilaf", x, 40, core_indices=cores)
    b = run_selection("bilaf", x, 40, core_indices=cores, compat="reference")
    assert a.to_list() != b.to_list()


# ---------------------------------------------------------------------------------------------
# Invariants and diagnostics
# ---------------------------------------------------------------------------------------------


def test_bilaf_invariants_and_diagnostics():
    x, labels = blobs(0, n_blobs=6, per=50)
    sel = run_selection("bilaf", x, 48, seed=3, core_budget=6, iterations=60)
    d = sel.diagnostics
    assert sel.budget == 48 and len(set(sel.to_list())) == 48
    assert set(d["core_indices"].tolist()) <= set(sel.to_list())
    assert d["cluster"].shape == (len(x),) and d["ring_level"].shape == (len(x),)
    assert d["removed_as_noise"].dtype == bool and d["removed_as_noise"].any()
    assert not d["removed_as_noise"][sel.indices].any()  # noise is never picked
    assert np.isnan(d["boundary_score"][d["is_core_pick"]]).all()
    assert np.isfinite(d["boundary_score"][~d["is_core_pick"]]).all()
    assert (d["opponent_cluster"][~d["is_core_pick"]] != d["pick_cluster"][~d["is_core_pick"]]).all()
    assert d["allocation"].sum() == 48
    # same seed -> same picks; another seed -> (here) other cores
    again = run_selection("bilaf", x, 48, seed=3, core_budget=6, iterations=60)
    assert again.to_list() == sel.to_list()


def test_budget_split_contract():
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(1, 30))
        sizes = rng.integers(1, 60, size=k)
        budget = int(rng.integers(k, sizes.sum() + 1))
        alloc = split_budget(sizes, budget)
        assert alloc.sum() == budget
        assert (alloc >= 1).all() and (alloc <= sizes).all()
        # proportional: a larger cluster never gets fewer picks than a smaller one
        order = np.argsort(sizes, kind="stable")
        assert (np.diff(alloc[order]) >= 0).all() or (np.diff(sizes[order]) == 0).any()


def test_cluster_of_one_and_duplicate_features():
    x, _ = blobs(2, n_blobs=3, per=30)
    x = np.concatenate([x, x[:10], [[50.0] * x.shape[1]]]).astype(np.float32)  # duplicates + an outlier
    outlier = len(x) - 1
    cores = np.array([0, 30, 60, outlier, 90])  # 90 duplicates core 0
    sel = run_selection("bilaf", x, 20, core_indices=cores)
    assert sel.budget == 20 and len(set(sel.to_list())) == 20
    assert sel.diagnostics["cluster"][outlier] == 3 and sel.diagnostics["allocation"][3] == 1
    assert sel.diagnostics["cluster"][90] == 4  # a duplicated core keeps its own cluster


def test_blobs_are_covered_by_activeft_and_bilaf():
    x, labels = blobs(1, n_blobs=8, per=100, dim=16, spread=0.3, scale=4.0)
    covered = []
    for seed in range(4):
        # Defaults (the published objective, lr 1e-3).  Like k-means from a random start, it can
        # leave two centroids in one blob and none in another (seed 1 here): 7 of 8 at worst.
        sel = run_selection("activeft", x, 16, seed=seed)
        covered.append(len(set(labels[sel.indices])))
        sel = run_selection("bilaf", x, 32, seed=seed, core_budget=16)
        assert len(set(labels[sel.indices])) == 8
    assert min(covered) >= 7 and sum(c == 8 for c in covered) >= 3


def test_activeft_loss_decreases_and_reference_form_runs():
    x, _ = blobs(4, n_blobs=4, per=50)
    sel = run_selection("activeft", x, 8, iterations=50, record_history=True)
    loss = sel.diagnostics["loss_history"]
    assert loss[-1] < loss[0]
    assert sel.diagnostics["centroid_history"].shape[1:] == (8, x.shape[1])
    ref = run_selection("activeft", x, 8, iterations=50, compat="reference")
    assert ref.to_list() == sorted(ref.to_list())  # the reference returns sorted ids
    # subset-per-iteration path (pool larger than batch_size) gives exactly B distinct picks
    sub = run_selection("activeft", x, 8, iterations=20, batch_size=64)
    assert len(set(sub.to_list())) == 8


# ---------------------------------------------------------------------------------------------
# Bad input: one clear message each
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,budget,message",
    [
        ({"core_indices": [0, 1, 2, 3]}, 3, "smaller than the 4 core indices"),
        ({"core_indices": [0, 0, 5]}, 10, "repeated"),
        ({"core_indices": [0, 5000]}, 10, "out of range"),
        ({"core_indices": [7]}, 10, "at least 2 core samples"),
        ({"core_budget": 12}, 10, "smaller than the core count 12"),
        ({"core_budget": 4, "core_indices": [1, 2, 3]}, 10, "disagrees"),
        ({"core_indices": [0, 50], "removal_fraction": 0.5}, 100, "left after denoising"),
        ({"compat": "bogus"}, 10, "must be one of"),
        ({"opponent_penalty": 0.5}, 10, "must be >= 1.0"),
        ({"labels": [0, 1]}, 10, "does not take labels"),
    ],
)
def test_bad_input_messages(kwargs, budget, message):
    x, _ = blobs(0, n_blobs=2, per=50)
    with pytest.raises(BilafError, match=message):
        run_selection("bilaf", x, budget, iterations=5, **kwargs)


def test_budget_and_feature_validation():
    x, _ = blobs(0, n_blobs=2, per=20)
    with pytest.raises(BilafError, match="larger than the pool"):
        run_selection("bilaf", x, 41)
    with pytest.raises(BilafError, match="at least 1"):
        run_selection("bilaf", x, 0)
    bad = x.copy()
    bad[[3, 7]] = np.nan
    with pytest.raises(BilafError, match="NaN or infinite values in 2 of 40 rows.*3, 7"):
        run_selection("bilaf", bad, 10)
    with pytest.raises(BilafError, match="2-D"):
        run_selection("bilaf", x[0], 1)
    assert run_selection("random", x, "10%").budget == 4


@pytest.mark.parametrize("subset", [False, True])
def test_activeft_analytic_gradient_matches_autograd(subset):
    """The paper's loss: the scatter-add gradient of the data term plus the autograd regulariser
    equal autograd through the whole loss (float64, full pool and a random subset)."""
    import torch

    from bilaf_core.selection.activeft import _paper_loss_grad

    gen = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(300, 16, generator=gen, dtype=torch.float64), dim=1)
    cents = torch.nn.functional.normalize(torch.randn(12, 16, generator=gen, dtype=torch.float64), dim=1)
    off = ~torch.eye(12, dtype=torch.bool)
    rows = torch.randperm(300, generator=gen)[:100] if subset else None
    value, grad = _paper_loss_grad(torch, feats, rows, cents, 0.07, 1.0, 64, off)  # 64-row chunks
    leaf = cents.clone().requires_grad_(True)
    x = feats if rows is None else feats[rows]
    data = -(x @ leaf.T / 0.07).max(dim=1).values.mean()
    reg = torch.logsumexp((leaf @ leaf.T / 0.07).masked_fill(~off, float("-inf")), dim=1).mean()
    (data + reg).backward()
    assert value == pytest.approx(float((data + reg).detach()), abs=1e-10)
    torch.testing.assert_close(grad, leaf.grad, atol=1e-12, rtol=0)


def test_budget_changes_reuse_the_plan_and_give_the_same_picks(monkeypatch):
    """Steps 1-2 do not depend on the budget: a second budget on the same pool and cores reuses
    the kept plan (no distance matrix is rebuilt) and picks exactly what a fresh run picks."""
    from bilaf_core.selection import bilaf as bilaf_mod

    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(c, 1.0, (120, 12)) for c in rng.normal(0, 4, (6, 12))]).astype(np.float32)
    cores = rng.choice(x.shape[0], 12, replace=False)

    monkeypatch.setattr(bilaf_mod, "PLAN_CACHE_BYTES", 0)  # fresh runs: no plan kept or used
    expected = {b: run_selection("bilaf", x, b, core_indices=cores) for b in (30, 70, 12)}
    monkeypatch.setattr(bilaf_mod, "PLAN_CACHE_BYTES", 512 * 1024 * 1024)
    bilaf_mod._PLANS.clear()
    run_selection("bilaf", x, 50, core_indices=cores)  # builds and keeps the plan
    built = []
    real = bilaf_mod.ClusterDistances.__init__
    monkeypatch.setattr(bilaf_mod.ClusterDistances, "__init__", lambda self, pts: (built.append(1), real(self, pts))[1])
    for budget, want in expected.items():
        got = run_selection("bilaf", x, budget, core_indices=cores)
        np.testing.assert_array_equal(got.indices, want.indices)
        for name in ("cluster", "ring_level", "removed_as_noise", "boundary_score", "opponent_cluster", "allocation"):
            np.testing.assert_array_equal(got.diagnostics[name], want.diagnostics[name])
    assert built == []  # every budget came from the plan
    # another pool (same shape) or other cores is a new plan
    run_selection("bilaf", x + 1e-3, 30, core_indices=cores)
    assert built
