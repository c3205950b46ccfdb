"""TypiClust (Hacohen, Dekel and Weinshall, "Active Learning on a Budget: Opposite Strategies Suit
High and Low Budgets", ICML 2022, Algorithm 1).

1. Cluster the (L2-normalised) pool with k-means into K = min(B, ``max_clusters``) clusters
   (paper: |L| + B clusters capped at 500; there is no labelled set here, so |L| = 0).
2. Typicality of x inside its cluster: 1 / (mean euclidean distance to its k nearest neighbours
   in the same cluster), k = min(``neighbors``, |cluster| − 1) (paper: 20).
3. Repeat B times: among the clusters that still have unpicked members, take those with the
   fewest picks so far, among them the largest (original size; ties: lowest cluster id), and
   pick its most typical not-yet-picked member.  Clusters smaller than ``min_cluster_size``
   (paper: 5) are skipped while any larger cluster still has unpicked members.

Differences from the public reference (avihu111/TypiClust, ``deep-al/pycls/al/typiclust.py``),
read to confirm the details; its code was not copied:

* it keeps only clusters with *more than* ``MIN_CLUSTER_SIZE`` = 5 members, so clusters of
  exactly 5 are dropped too; here clusters with fewer than ``min_cluster_size`` members are the
  ones skipped, and only while larger clusters still have unpicked samples (it drops them for
  good);
* it computes typicality with k = min(20, |remaining cluster| // 2) on the *unlabelled* remainder
  of the cluster, recomputed after every pick; for a cluster of one sample that is k = 0 and a
  mean over an empty array (NaN), and once a cluster runs out of unlabelled samples the next
  visit crashes on an empty array — nothing stops it from cycling back to an exhausted cluster.
  Here typicality is computed once per cluster on all its members (the paper's definition) and
  exhausted clusters are never chosen; a singleton cluster has typicality 0;
* its cluster order is a static sort by (labelled count, −size) visited round-robin; the
  bincount of labelled samples is indexed by cluster id and misaligns when k-means leaves a
  cluster id empty.  The dynamic "fewest picks, then largest" rule used here is the paper's and
  gives the same order when nothing is exhausted;
* its k-means (scikit-learn, no random_state) is not reproducible; faiss with the run's seed is;
* its neighbour search drops column 0 as "the sample itself"; with duplicate rows column 0 may
  be the duplicate, which is at the same distance 0, so the mean is unaffected (same here).
"""

from __future__ import annotations

import numpy as np

from . import _ops
from .base import Param, RunContext, register_method

#: guards 1 / mean-distance when a sample has k exact duplicates in its cluster
_EPS = 1e-8
#: clusters up to this size get their kNN from one dense distance block (numpy BLAS); larger
#: ones from faiss.  Hundreds of tiny faiss calls cost more in thread start-up than in arithmetic,
#: especially on a busy machine.
_DENSE_MAX = 2048


def cluster_typicality(x: np.ndarray, assign: np.ndarray, n_clusters: int, neighbors: int, progress=None):
    """Typicality of every sample inside its own cluster (exact kNN per cluster).

    Returns ``(typicality (N,) float32, members_by_typicality (N,) int64, starts (K+1,) int64)``:
    the pool indices grouped by cluster (cluster c's members are
    ``members_by_typicality[starts[c]:starts[c+1]]``), most typical first.
    """
    n = x.shape[0]
    typicality = np.zeros(n, dtype=np.float32)
    order = np.argsort(assign, kind="stable")
    sizes = np.bincount(assign, minlength=n_clusters)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for c in np.flatnonzero(sizes > 1):
        members = order[starts[c] : starts[c + 1]]
        k = min(neighbors, members.size - 1)
        xm = x[members]
        # The k + 1 nearest include the sample itself at distance 0 (or an exact duplicate, also
        # at 0); dropping the smallest of them leaves the k nearest others.
        if members.size <= _DENSE_MAX:
            near = np.partition(_ops.pairwise_dist(xm, xm), k, axis=1)[:, : k + 1]
            mean = (near.sum(axis=1) - near.min(axis=1)) / k
        else:
            dist, _ = _ops.knn(xm, xm, k + 1)
            mean = dist[:, 1:].mean(axis=1)
        typicality[members] = 1.0 / (mean + _EPS)
        if progress is not None:
            progress(starts[c + 1] / n)
    # Within each cluster, most typical first (ties: lower pool index).
    by_typ = np.lexsort((np.arange(n), -typicality, assign))
    return typicality, by_typ, starts


@register_method(
    "typiclust",
    summary="TypiClust: k-means clusters, the most typical (densest) sample of the largest uncovered cluster",
    params=(
        Param("max_clusters", "int", 500, "number of k-means clusters is min(budget, this) (paper: 500)", minimum=1),
        Param("min_cluster_size", "int", 5, "clusters with fewer members are skipped while larger ones have samples left (paper: 5)", minimum=1),
        Param("neighbors", "int", 20, "typicality = 1 / mean distance to this many nearest neighbours in the cluster (paper: 20)", minimum=1),
    ),
    include_rule="the includes count as picks already made in their clusters (a cluster holding one is covered), so the "
                 "fewest-picks rule sends the rest of the budget to the clusters they leave uncovered",
)
def select_typiclust(features: np.ndarray, budget: int, ctx: RunContext, *, max_clusters: int = 500,
                     min_cluster_size: int = 5, neighbors: int = 20) -> tuple[np.ndarray, dict]:
    """TypiClust selection.

    Parameters
    ----------
    features : (N, D) float32
        Validated pool features; L2-normalised here (the reference normalises its SSL features).
    budget : int
        Number B of picks.
    ctx : RunContext
        Seed (k-means), progress, stage timer.
    max_clusters, min_cluster_size, neighbors : int
        See the module docstring.

    Returns
    -------
    indices : (B,) int64
        Picks in selection order, ``ctx.include`` first (counted as picks of their clusters);
        never an index of ``ctx.exclude`` (excluded samples still shape clusters and typicality).
    diagnostics : dict
        ``typicality`` (N,), ``assignment`` (N,) k-means cluster of every sample,
        ``cluster_of_pick`` (B,), ``cluster_size`` (K,).
    """
    n = features.shape[0]
    n_clusters = min(budget, max_clusters)
    with ctx.stage("normalise"):
        x = _ops.l2_normalize(features)
    with ctx.stage("kmeans"):
        ctx.progress(0.0, f"k-means (k={n_clusters})")
        seed = int(ctx.rng(0).integers(0, 2**31 - 1))
        _, assign, _ = _ops.kmeans_pp(x, n_clusters, seed=seed, niter=20)
    with ctx.stage("typicality"):
        typicality, by_typ, starts = cluster_typicality(
            x, assign, n_clusters, neighbors, progress=lambda f: ctx.progress(0.3 + 0.6 * f, "typicality")
        )
    with ctx.stage("select"):
        sizes = np.diff(starts)
        include = ctx.include
        # The candidates of each cluster, most typical first: every member that is neither
        # included (already a pick) nor excluded (never a pick).  Without constraints: all.
        blocked = ctx.blocked(n)
        by_typ = by_typ[~blocked[by_typ]]
        avail_starts = np.concatenate([[0], np.cumsum(np.bincount(assign[by_typ], minlength=n_clusters))])
        avail_sizes = np.diff(avail_starts)
        used = np.zeros(n_clusters, dtype=np.int64)  # candidates picked so far per cluster
        taken = np.bincount(assign[include], minlength=n_clusters).astype(np.int64)  # picks per cluster, includes too
        large = sizes >= min_cluster_size
        picks = np.empty(budget, dtype=np.int64)
        cluster_of_pick = np.empty(budget, dtype=np.int64)
        picks[: include.size] = include
        cluster_of_pick[: include.size] = assign[include]
        for t in range(include.size, budget):
            left = used < avail_sizes
            eligible = left & large
            if not eligible.any():  # only small clusters have samples left: use them
                eligible = left
            cand = np.flatnonzero(eligible)
            cand = cand[taken[cand] == taken[cand].min()]  # fewest picks so far ...
            c = cand[int(np.argmax(sizes[cand]))]  # ... then the largest (argmax: lowest id on ties)
            picks[t] = by_typ[avail_starts[c] + used[c]]
            cluster_of_pick[t] = c
            taken[c] += 1
            used[c] += 1
    return picks, {
        "typicality": typicality,
        "assignment": assign.astype(np.int64),
        "cluster_of_pick": cluster_of_pick,
        "cluster_size": sizes.astype(np.int64),
    }
