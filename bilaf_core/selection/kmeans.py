"""k-means selection (one-shot) and its multi-round variant.

``kmeans`` — cluster the L2-normalised pool into k = B clusters with faiss and annotate the real
sample nearest to each centroid.  This is the low-budget baseline of Pourahmadi, Nooralinejad and
Pirsiavash, "A simple baseline for low-budget active learning" (2021), and the "K-Means" row of
the ActiveFT / BiLAF tables.

``kmeans-multibatch`` — the same paper's multi-round variant ("accumulative k-means" in its public
code, UCDvision/low-budget-al): the whole pool, already-labelled samples included, is clustered
into B *new* centroids and each centroid takes its nearest member that was not picked before.

Both guarantee exactly B distinct picks.  The reference code does not: when a centroid's 200
nearest samples contain none of its cluster's (unlabelled) members, or a cluster is empty, it
silently returns fewer picks than the budget.  Here, a centroid whose natural pick is gone
(shared with a tighter centroid, or no free member) takes its next-nearest unused sample instead.

k-means itself: k-means++ seeding (faiss's uniform random seeds often leave a well-separated
group without a centroid), then faiss Lloyd iterations.  Restarts: each gets its own seeding and
5 iterations, and only the lowest-inertia one is run to ``iterations`` (see ``best_kmeans``); the
paper's code runs 5 full faiss restarts (``nredo=5``), which on a CPU costs minutes at B = 1000.
Restarts run one at a time, so progress is reported and a cancel takes effect between them.
"""

from __future__ import annotations

import numpy as np

from . import _ops
from .base import Param, RunContext, register_method

KMEANS_PARAMS = (
    Param("restarts", "int", 3, "k-means++ seedings tried; each gets 5 Lloyd iterations and the lowest-inertia one is finished (more = stabler, slower)", minimum=1),
    Param("iterations", "int", 20, "Lloyd iterations per k-means run (paper: 20)", minimum=1),
)

INCLUDE_RULE = ("the includes count as covering the cluster they fall in; the rest of the budget goes to the largest "
                "uncovered clusters, one pick each")

#: candidates per centroid fetched in the first matching round; conflicts beyond that are rare
#: and are resolved by a second, exact round.
_FIRST_ROUND_CANDIDATES = 16
#: Lloyd iterations each restart runs before the restarts are compared
_TRIAL_ITERATIONS = 5


def best_kmeans(x: np.ndarray, k: int, ctx: RunContext, *, restarts: int, iterations: int, stream: int,
                progress_span: tuple[float, float] = (0.0, 0.8)):
    """k-means with restarts: every restart gets its own k-means++ seeding (seed drawn from
    ``ctx.rng(stream)``) and ``_TRIAL_ITERATIONS`` Lloyd iterations; the restart with the lowest
    inertia then continues to ``iterations`` in total.  Most of the inertia gap between restarts
    is settled after a few iterations, so this keeps the benefit of restarts at about half the
    cost of finishing every run (a run costs one N × k × D product per iteration).

    Returns ``(centroids (k, D), assignment (N,), distance to own centroid (N,), inertia)``, the
    inertia being the sum of squared distances over the whole pool.
    """
    seeds = ctx.rng(stream).integers(0, 2**31 - 1, size=restarts)
    trial = iterations if restarts == 1 else min(_TRIAL_ITERATIONS, iterations)
    lo, hi = progress_span
    steps = restarts * trial + (iterations - trial)
    best = None
    for r, seed in enumerate(seeds):
        ctx.progress(lo + (hi - lo) * r * trial / steps, f"k-means restart {r + 1}/{restarts} (k={k})")
        init = _ops.kmeanspp_init(x, k, np.random.default_rng(int(seed)))
        centroids, objective = _ops.lloyd(x, init, niter=trial, seed=int(seed))
        if best is None or objective < best[1]:
            best = (centroids, objective, int(seed))
    centroids, _, seed = best
    if iterations > trial:
        ctx.progress(lo + (hi - lo) * restarts * trial / steps, f"k-means: finishing the best restart (k={k})")
        centroids, _ = _ops.lloyd(x, centroids, niter=iterations - trial, seed=seed)
    assign, dist = _ops.assign_nearest(x, centroids)
    inertia = float(np.dot(dist.astype(np.float64), dist.astype(np.float64)))
    return centroids, assign, dist, inertia


def unique_nearest(x: np.ndarray, centroids: np.ndarray, allowed: np.ndarray | None = None):
    """Match every centroid to a distinct real sample, as close as possible.

    Each centroid wants its nearest allowed sample.  Centroids are served in order of tightness
    (distance to their nearest candidate, smallest first): a centroid sitting on the data gets the
    sample it sits on, while a centroid far from everything loses little by taking its
    second-nearest.  A centroid whose candidates are all taken gets its next-nearest unused one.

    Parameters
    ----------
    x : (N, D) float32
        Pool features (the space the centroids live in).
    centroids : (K, D) float32
        K <= number of allowed samples.
    allowed : (M,) int64 or None
        Pool indices that may be picked (None: all of them).

    Returns
    -------
    picks : (K,) int64
        Pool index matched to each centroid, in serving order.
    centroid_order : (K,) int64
        The centroid behind each pick (``picks[j]`` serves ``centroids[centroid_order[j]]``).
    """
    allowed = np.arange(x.shape[0], dtype=np.int64) if allowed is None else np.asarray(allowed, dtype=np.int64)
    k = centroids.shape[0]
    if k > allowed.size:
        raise ValueError("more centroids than allowed samples")
    db = x[allowed]
    # Round 1: a handful of nearest candidates per centroid (one faiss search), greedy in order of
    # tightness.  `used` is over positions in `allowed`.
    dist, cand = _ops.knn(db, centroids, min(_FIRST_ROUND_CANDIDATES, allowed.size))
    used = np.zeros(allowed.size, dtype=bool)
    match = np.full(k, -1, dtype=np.int64)
    order = []
    unresolved = []
    for c in np.argsort(dist[:, 0], kind="stable"):
        row = cand[c]
        free = ~used[row]
        if free.any():
            j = row[int(np.argmax(free))]
            used[j] = True
            match[c] = j
            order.append(c)
        else:
            unresolved.append(c)
    if unresolved:
        # Round 2, exact: m centroids left, each fetches its m nearest *unused* samples, so greedy
        # can never run out (each earlier centroid uses up at most one of them).
        unresolved = np.asarray(unresolved, dtype=np.int64)
        rest = np.flatnonzero(~used)
        m = unresolved.size
        dist2, cand2 = _ops.knn(db[rest], centroids[unresolved], min(m, rest.size))
        for r in np.argsort(dist2[:, 0], kind="stable"):
            row = rest[cand2[r]]
            j = row[int(np.argmax(~used[row]))]
            used[j] = True
            match[unresolved[r]] = j
            order.append(int(unresolved[r]))
    order = np.asarray(order, dtype=np.int64)
    return allowed[match[order]], order


@register_method(
    "kmeans",
    summary="k-means (k = budget) on L2-normalised features; the sample nearest each centroid",
    params=KMEANS_PARAMS,
    include_rule=INCLUDE_RULE,
)
def select_kmeans(features: np.ndarray, budget: int, ctx: RunContext, *, restarts: int = 3,
                  iterations: int = 20) -> tuple[np.ndarray, dict]:
    """k-means selection (Pourahmadi et al. 2021).

    Parameters
    ----------
    features : (N, D) float32
        Validated pool features; L2-normalised here (the paper clusters normalised SSL features).
    budget : int
        B = number of clusters = number of picks.
    ctx : RunContext
        Seed, progress and stage timer.
    restarts, iterations : int
        k-means runs (best inertia kept) and Lloyd iterations per run.

    Returns
    -------
    indices : (B,) int64
        One distinct sample per centroid, tightest centroid first; with ``ctx.include`` the
        includes lead (``centroid_of_pick`` = their own cluster) and the largest clusters
        without an include get the new picks.  Never an index of ``ctx.exclude``.
    diagnostics : dict
        ``centroids`` (B, D), ``assignment`` (N,) nearest centroid of every sample,
        ``centroid_of_pick`` (B,), ``pick_distance`` (B,) distance of each pick to its centroid,
        ``inertia`` (scalar).
    """
    with ctx.stage("normalise"):
        x = _ops.l2_normalize(features)
    with ctx.stage("kmeans"):
        centroids, assign, _, inertia = best_kmeans(x, budget, ctx, restarts=restarts, iterations=iterations, stream=0)
    with ctx.stage("match"):
        ctx.progress(0.85, "matching centroids to samples")
        n, include = x.shape[0], ctx.include
        blocked = ctx.blocked(n)
        if blocked.any():
            # includes cover their own cluster; the largest uncovered clusters get the new picks
            wanted = _ops.uncovered_clusters(assign, budget, include, budget - include.size)
            picks, order = unique_nearest(x, centroids[wanted], np.flatnonzero(~blocked))
            picks = np.concatenate([include, picks])
            order = np.concatenate([assign[include], wanted[order]])
        else:
            picks, order = unique_nearest(x, centroids)
        pick_distance = np.linalg.norm(x[picks] - centroids[order], axis=1)
    return picks, {
        "centroids": centroids,
        "assignment": assign.astype(np.int64),
        "centroid_of_pick": order,
        "pick_distance": pick_distance.astype(np.float32),
        "inertia": inertia,
    }


@register_method(
    "kmeans-multibatch",
    summary="multi-round k-means: B new centroids, the nearest not-yet-picked member of each",
    params=(
        Param("initial_indices", "indices", None, "pool indices picked in earlier rounds; they are clustered with the rest but never picked again (empty = first round)"),
    )
    + KMEANS_PARAMS,
    include_rule=INCLUDE_RULE,
)
def select_kmeans_multibatch(features: np.ndarray, budget: int, ctx: RunContext, *, initial_indices=None,
                             restarts: int = 3, iterations: int = 20) -> tuple[np.ndarray, dict]:
    """Multi-round k-means (Pourahmadi et al. 2021, "accumulative" variant of their code).

    The whole pool, earlier picks included, is clustered into B centroids (so the clusters follow
    the data distribution, not the leftover of earlier rounds); each centroid then takes the
    member of its own cluster nearest to it among the samples not picked yet.  Clusters are
    disjoint, so those picks never collide.  A centroid whose cluster has no free member (all of
    it picked before, or empty) falls back to its nearest free sample not used by another
    centroid, so there are always exactly B new picks.

    Parameters
    ----------
    features : (N, D) float32
        Validated pool features; L2-normalised here.
    budget : int
        B = number of new picks = number of clusters.
    ctx : RunContext
        Seed, progress and stage timer.
    initial_indices : (K,) int or None
        Earlier picks; must be distinct and in range, and B + K <= N.
    restarts, iterations : int
        k-means runs (best inertia kept) and Lloyd iterations per run.

    Returns
    -------
    indices : (B,) int64
        New picks: ``ctx.include`` first (each covers its own cluster), then own-cluster picks of
        the largest uncovered clusters (closest to their centroid first), then fallbacks.  Never
        an index of ``ctx.exclude`` or ``initial_indices``.
    diagnostics : dict
        ``centroids`` (B, D), ``assignment`` (N,), ``centroid_of_pick`` (B,),
        ``from_own_cluster`` (B, bool: False for fallback picks), ``inertia`` (scalar).
    """
    n = features.shape[0]
    initial = _ops.constrained_initial(initial_indices, ctx, n, budget, "kmeans-multibatch")
    include = ctx.include
    with ctx.stage("normalise"):
        x = _ops.l2_normalize(features)
    with ctx.stage("kmeans"):
        centroids, assign, dist, inertia = best_kmeans(x, budget, ctx, restarts=restarts, iterations=iterations, stream=0)
    with ctx.stage("match"):
        ctx.progress(0.85, "matching centroids to unpicked members")
        free = ~ctx.blocked(n)
        free[initial] = False
        # includes cover their own cluster; the largest uncovered clusters get the new picks
        wanted = np.zeros(budget, dtype=bool)
        wanted[_ops.uncovered_clusters(assign, budget, include, budget - include.size)] = True
        idx = np.flatnonzero(free & wanted[assign])
        # Sort the free samples by (cluster, distance to its centroid): the first of each run is the
        # nearest free member of that cluster.
        idx = idx[np.lexsort((dist[idx], assign[idx]))]
        first = np.ones(idx.size, dtype=bool)  # (empty when the includes fill the budget)
        first[1:] = assign[idx][1:] != assign[idx][:-1]
        member_pick = idx[first]
        member_cluster = assign[member_pick]
        by_closeness = np.argsort(dist[member_pick], kind="stable")
        member_pick, member_cluster = member_pick[by_closeness], member_cluster[by_closeness]

        lacking = np.setdiff1d(np.flatnonzero(wanted), member_cluster)
        if lacking.size:
            free[member_pick] = False
            fb_picks, fb_order = unique_nearest(x, centroids[lacking], np.flatnonzero(free))
            picks = np.concatenate([member_pick, fb_picks])
            centroid_of_pick = np.concatenate([member_cluster, lacking[fb_order]])
        else:
            picks, centroid_of_pick = member_pick, member_cluster
        picks = np.concatenate([include, picks])
        centroid_of_pick = np.concatenate([assign[include], centroid_of_pick])
        from_own = np.zeros(budget, dtype=bool)
        from_own[: include.size + member_pick.size] = True
    return picks.astype(np.int64), {
        "centroids": centroids,
        "assignment": assign.astype(np.int64),
        "centroid_of_pick": centroid_of_pick.astype(np.int64),
        "from_own_cluster": from_own,
        "inertia": inertia,
    }
