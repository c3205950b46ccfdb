"""ProbCover (Yehuda, Dekel, Hacohen and Weinshall, "Active Learning Through a Covering Lens",
NeurIPS 2022).

On L2-normalised features, every sample x owns the ball B_δ(x) = {y : ‖x − y‖ < δ}.  The
δ-ball graph has an edge x → y iff y ∈ B_δ(x) (x ∈ B_δ(x) always).  Selection is greedy maximum
coverage (paper, Alg. 1): repeatedly pick the sample whose ball covers the most not-yet-covered
samples, then remove the edges into the newly covered samples.  Once everything is covered, the
remaining picks are drawn at random (seeded) among the unpicked samples — the paper leaves this
case open; the reference code would keep returning the same zero-degree sample.

Choosing δ (paper, Sec. 4.1): with pseudo-labels from k-means, a ball is *pure* iff all its
members share the centre's pseudo-label, and δ is the largest radius for which at least
α = ``purity_threshold`` (0.95) of the balls are pure.  Ball B_δ(x) is pure iff x's nearest
differently-labelled sample is at distance d(x) >= δ, so purity(δ) = #{x : d(x) >= δ} / N, a
non-increasing step function, and the largest admissible δ is exactly the m-th largest d(x) with
m = ⌈αN⌉.  The paper uses k = the number of classes; the classes are unknown without labels, so
``purity_clusters`` (default 10) is a guess the user should set to the expected number of classes.

How d(x) and the graph are computed (exactly, with faiss):

* The graph: faiss ``range_search`` over the upper triangle only (query block [s, s + q) against
  rows >= s), which halves the N² D work and measures every pair once, so the graph is exactly
  symmetric; stored as CSR with a self loop per sample.
* Small pools (N <= ``PURITY_SAMPLE``): d(x) for every sample with a nearest-neighbour search
  of each pseudo-class against the other classes, then the graph at δ.
* Large pools: both d(x) and the graph need all N² distances, and on a CPU one pass of those
  dominates everything.  So a single range search is made at a radius U that is almost surely
  >= δ: U is an upper order statistic of d(x) on a random sample of ``PURITY_SAMPLE`` samples
  (binomial bound, 5 standard deviations).  Every d(x) < U is then known exactly from the ball's
  members; δ, the m-th largest d(x), lies below U whenever at least N − m + 1 of them are below U,
  which is *checked*; the graph at δ is the graph at U with the longer edges dropped.  If the
  check fails (or the graph at U is too large) the exact two-pass computation runs instead, so
  the result never depends on the sample.

The reference implementation (avihu111/TypiClust, ``deep-al/pycls/al/prob_cover.py``) was read
for the greedy; its code was not copied.  Notes on it: its graph loop runs over
``len(features) // batch_size`` batches, so the last ``N mod 500`` samples get no outgoing edges
and can only be covered, never chosen; it stores edges in a pandas frame and filters the whole
frame on every pick (O(B·E)); it picks argmax (lowest index) on degree ties; and its δ is a
command-line constant (the purity search is not in the public code).
"""

from __future__ import annotations

import math

import numpy as np

from . import _ops
from ..errors import BilafError
from .base import Param, RunContext, register_method

#: samples whose exact d(x) sets the provisional radius U on large pools (see module docstring)
PURITY_SAMPLE = 2048
#: standard deviations of the binomial bound for U
_BOUND_SIGMAS = 5.0
#: most δ-graph edges kept in memory (≈ 20 bytes each at the peak); beyond, lower δ
MAX_EDGES = 120_000_000
#: query rows per faiss range search call (bounds faiss's temporary result buffers)
_QUERY_CHUNK = 4096


class _TooManyEdges(Exception):
    pass


def nearest_other_label_d2(x_sorted: np.ndarray, starts: np.ndarray, q_labels: np.ndarray, xq: np.ndarray,
                           progress=None) -> np.ndarray:
    """Squared distance from each query to its nearest pool sample with a different pseudo-label.

    ``x_sorted`` is the pool sorted by pseudo-label, label a occupying rows
    ``starts[a]:starts[a+1]``; so "every other label" is two contiguous slices and the search is an
    exact faiss 1-NN against each.  Returns inf where there is no other label.
    """
    faiss = _ops.faiss_module()
    out = np.full(xq.shape[0], np.inf, dtype=np.float32)
    labels = np.unique(q_labels)
    n = x_sorted.shape[0]
    for step, a in enumerate(labels):
        rows = np.flatnonzero(q_labels == a)
        queries = np.ascontiguousarray(xq[rows])
        for lo, hi in ((0, starts[a]), (starts[a + 1], n)):
            if hi > lo:
                # faiss.knn searches the slice in place (no index copy of the pool per label)
                d2, _ = faiss.knn(queries, x_sorted[lo:hi], 1)
                out[rows] = np.minimum(out[rows], np.maximum(d2[:, 0], 0))
        if progress is not None:
            progress((step + 1) / labels.size)
    return out


def range_pairs(x: np.ndarray, radius: float, *, progress=None, max_edges: int = MAX_EDGES):
    """Every pair i < j with ‖x_i − x_j‖ < radius, with its squared distance.

    The distance matrix is symmetric, so each block of query rows [s, s + q) is searched (faiss
    ``range_search``, exact) only against rows s and after — half the N² D work of searching the
    whole pool — and each pair is measured once, which makes the graph exactly symmetric.
    Returns ``(i int32, j int32, d2 float32)``; raises ``_TooManyEdges`` when the graph would
    exceed ``max_edges`` directed edges.
    """
    faiss = _ops.faiss_module()
    n = x.shape[0]
    r2 = float(radius) ** 2
    rows_out, cols_out, d2_out = [], [], []
    pairs = 0
    work_total = sum((n - s) * min(_QUERY_CHUNK, n - s) for s in range(0, n, _QUERY_CHUNK))
    work_done = 0
    for s in range(0, n, _QUERY_CHUNK):
        q = min(_QUERY_CHUNK, n - s)
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x[s:])
        lims, dist, lab = index.range_search(x[s : s + q], r2)
        rows = np.repeat(np.arange(s, s + q, dtype=np.int32), np.diff(lims.astype(np.int64)))
        cols = (lab + s).astype(np.int32)
        upper = cols > rows
        pairs += int(np.count_nonzero(upper))
        if 2 * pairs + n > max_edges:
            raise _TooManyEdges(2 * pairs + n)
        rows_out.append(rows[upper])
        cols_out.append(cols[upper])
        d2_out.append(dist[upper].astype(np.float32, copy=False))
        work_done += (n - s) * q
        if progress is not None:
            progress(work_done / work_total)
    return np.concatenate(rows_out), np.concatenate(cols_out), np.concatenate(d2_out)


def ball_graph(n: int, i: np.ndarray, j: np.ndarray):
    """Symmetric CSR (indptr int64, indices int32) of the pairs (i, j), plus every self loop
    (x is always in its own ball, whatever rounding does to ‖x − x‖)."""
    import scipy.sparse as sp

    self_ids = np.arange(n, dtype=np.int32)
    rows = np.concatenate([i, j, self_ids])
    cols = np.concatenate([j, i, self_ids])
    adj = sp.csr_matrix((np.ones(rows.size, dtype=np.bool_), (rows, cols)), shape=(n, n))
    return adj.indptr.astype(np.int64), adj.indices.astype(np.int32, copy=False)


def _gather(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Concatenated CSR rows `rows` (vectorised: no loop over rows)."""
    starts = indptr[rows]
    lens = indptr[rows + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, dtype=indices.dtype)
    shift = np.repeat(starts - (np.cumsum(lens) - lens), lens)
    return indices[shift + np.arange(total)]


def purity_delta(x: np.ndarray, labels: np.ndarray, n_labels: int, alpha: float, ctx: RunContext,
                 *, progress_span=(0.05, 0.8)):
    """δ by the purity rule, and the δ-graph (see the module docstring).

    Returns ``(delta, purity achieved, indptr, indices)``.
    """
    n = x.shape[0]
    lo, hi = progress_span
    m = max(1, math.ceil(alpha * n - 1e-9))  # balls that must be pure
    q = n - m + 1  # δ is the q-th smallest d(x)
    order = np.argsort(labels, kind="stable")
    x_sorted = np.ascontiguousarray(x[order])
    starts = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=n_labels))])

    def finish(d2, i, j, pd2):
        delta2 = float(np.partition(d2, q - 1)[q - 1])
        _check_delta(delta2)
        keep = pd2 < delta2
        indptr, indices = ball_graph(n, i[keep], j[keep])
        return math.sqrt(delta2), float(np.mean(d2 >= delta2)), indptr, indices

    if n > PURITY_SAMPLE:
        # Provisional radius U from an exact sample of d(x): the j-th smallest sample value, j a
        # 5-sigma binomial upper bound on the rank of the q-th smallest population value.
        rng = ctx.rng(1)
        sample = np.sort(rng.choice(n, size=PURITY_SAMPLE, replace=False))
        d2_sample = np.sort(nearest_other_label_d2(x_sorted, starts, labels[sample], x[sample]))
        p = q / n
        jj = max(1, math.ceil(PURITY_SAMPLE * p + _BOUND_SIGMAS * math.sqrt(PURITY_SAMPLE * p * (1 - p)) + 1))
        ctx.progress(lo + 0.05 * (hi - lo), "purity: provisional radius")
        if jj <= PURITY_SAMPLE and np.isfinite(d2_sample[jj - 1]) and d2_sample[jj - 1] > 0:
            u2 = float(d2_sample[jj - 1])
            try:
                i, j, pd2 = range_pairs(
                    x, math.sqrt(u2), progress=lambda f: ctx.progress(lo + (hi - lo) * (0.05 + 0.95 * f), "δ-ball graph")
                )
            except _TooManyEdges:
                i = None
            if i is not None:
                # d(x)² for every x whose nearest other-label sample lies inside its U-ball
                other = labels[i] != labels[j]
                d2 = np.full(n, np.inf, dtype=np.float32)
                np.minimum.at(d2, i[other], pd2[other])
                np.minimum.at(d2, j[other], pd2[other])
                if int(np.count_nonzero(d2 < u2)) >= q:  # the check: δ < U, so δ is exact
                    return finish(d2, i, j, pd2)
                del i, j, pd2, other
    # Exact two-pass computation: d(x) for every sample, then the graph at δ.
    d2 = nearest_other_label_d2(x_sorted, starts, labels, x,
                                progress=lambda f: ctx.progress(lo + (hi - lo) * 0.5 * f, "purity: nearest other pseudo-class"))
    delta2 = float(np.partition(d2, q - 1)[q - 1])
    _check_delta(delta2)
    i, j, pd2 = _pairs_or_raise(x, math.sqrt(delta2), ctx, (lo + (hi - lo) * 0.5, hi))
    return finish(d2, i, j, pd2)


def _check_delta(delta2: float) -> None:
    if not np.isfinite(delta2):
        raise BilafError(
            "probcover: the pseudo-labels put every sample in one class, so every ball is pure and the "
            "purity rule has no largest δ; pass an explicit --delta or more --purity-clusters"
        )
    if delta2 <= 0:
        raise BilafError(
            "probcover: the purity rule gives δ = 0 (samples of different pseudo-classes coincide); "
            "pass an explicit --delta or lower --purity-threshold"
        )


def _pairs_or_raise(x, delta, ctx, span):
    lo, hi = span
    try:
        return range_pairs(x, delta, progress=lambda f: ctx.progress(lo + (hi - lo) * f, "δ-ball graph"))
    except _TooManyEdges:
        raise BilafError(
            f"probcover: δ = {delta:.4g} links more than {MAX_EDGES:,} pairs (the balls hold a large part of "
            "the pool); pass a smaller --delta, or raise --purity-clusters / --purity-threshold"
        ) from None


def greedy_max_coverage(indptr: np.ndarray, indices: np.ndarray, budget: int, rng: np.random.Generator,
                        progress=None, *, forced: np.ndarray | None = None, blocked: np.ndarray | None = None):
    """Greedy maximum coverage on the ball graph (row i = samples covered by picking i).

    Degrees (uncovered samples in each ball) are kept up to date with one ``np.bincount`` over
    the neighbours of the newly covered samples per pick — the graph is symmetric, so a sample's
    neighbours are exactly the balls that contain it — instead of re-filtering the edge list.
    Degree ties go to a seeded random priority; once everything is covered, the rest of the
    budget is a seeded random sample of the unpicked.

    ``forced``: picks made first, in order, whatever their degree (``--include``: their balls are
    covered before the greedy starts).  ``blocked`` (N,) bool: never chosen by the greedy or
    the random fill (``--exclude``, and the forced picks themselves).

    Returns ``(picks (B,), coverage (B,) fraction covered after each pick, covered (N,) bool)``.
    """
    n = indptr.size - 1
    deg = np.diff(indptr).astype(np.int64)
    prio = rng.permutation(n).astype(np.int64)
    key = deg * n + prio  # argmax: largest degree, ties by random priority
    forced = np.empty(0, dtype=np.int64) if forced is None else np.asarray(forced, dtype=np.int64)
    if blocked is not None:
        key[blocked] = -1  # negative for good: later updates only lower it, unblocked keys stay >= 0
    covered = np.zeros(n, dtype=bool)
    n_covered = 0
    picks = np.empty(budget, dtype=np.int64)
    coverage = np.empty(budget, dtype=np.float64)
    step = max(1, budget // 100)
    t = 0
    while t < budget:
        if t < forced.size:
            c = int(forced[t])
        else:
            c = int(np.argmax(key))
            if deg[c] <= 0:
                break  # everything is covered
        ball = indices[indptr[c] : indptr[c + 1]]
        new = ball[~covered[ball]]
        covered[new] = True
        n_covered += new.size
        dec = np.bincount(_gather(indptr, indices, new), minlength=n)
        deg -= dec
        key -= dec * n
        picks[t] = c
        coverage[t] = n_covered / n
        t += 1
        if progress is not None and t % step == 0:
            progress(t / budget)
    if t < budget:
        mask = np.ones(n, dtype=bool) if blocked is None else ~blocked
        mask[picks[:t]] = False
        picks[t:] = rng.permutation(np.flatnonzero(mask))[: budget - t]
        coverage[t:] = n_covered / n
    return picks, coverage, covered


@register_method(
    "probcover",
    summary="ProbCover: greedy max coverage of δ-balls, δ from the pseudo-label purity rule",
    params=(
        Param("delta", "float", 0.0, "ball radius δ on L2-normalised features (distance 0–2); 0 = choose δ by the purity rule", minimum=0.0),
        Param("purity_clusters", "int", 10, "k-means pseudo-classes for the purity rule; set it to the expected number of classes (paper: #classes)", minimum=2),
        Param("purity_threshold", "float", 0.95, "α: δ is the largest radius with at least this fraction of pure balls (paper: 0.95)", minimum=0.0, exclusive_minimum=True, maximum=1.0),
    ),
    include_rule="the includes' δ-balls count as covered before the greedy starts, so the rest of the budget covers what they leave",
)
def select_probcover(features: np.ndarray, budget: int, ctx: RunContext, *, delta: float = 0.0,
                     purity_clusters: int = 10, purity_threshold: float = 0.95) -> tuple[np.ndarray, dict]:
    """ProbCover selection.

    Parameters
    ----------
    features : (N, D) float32
        Validated pool features; L2-normalised here (as in the paper).
    budget : int
        Number B of picks.
    ctx : RunContext
        Seed (k-means, sample for U, tie-breaks, fill), progress, stage timer.
    delta : float
        Ball radius; 0 selects it with the purity rule.
    purity_clusters : int
        Pseudo-classes for the purity rule (ignored when ``delta`` > 0).
    purity_threshold : float
        α of the purity rule.

    Returns
    -------
    indices : (B,) int64
        Picks in greedy order, ``ctx.include`` first (their balls covered first); never an index
        of ``ctx.exclude`` (excluded samples still need covering: they are in the graph).
    diagnostics : dict
        ``delta`` (scalar), ``coverage`` (B,) fraction of the pool covered after each pick,
        ``covered`` (N, bool), ``mean_degree`` (scalar, ball size incl. itself),
        and for the purity rule ``purity`` (achieved fraction of pure balls) and
        ``pseudo_label`` (N,).
    """
    n = features.shape[0]
    with ctx.stage("normalise"):
        x = _ops.l2_normalize(features)
    diagnostics: dict = {}
    if delta > 0:
        with ctx.stage("graph"):
            i, j, _ = _pairs_or_raise(x, delta, ctx, (0.0, 0.8))
            indptr, indices = ball_graph(n, i, j)
            del i, j
    else:
        with ctx.stage("pseudo-labels"):
            ctx.progress(0.0, "k-means pseudo-labels")
            k = min(purity_clusters, n)
            seed = int(ctx.rng(0).integers(0, 2**31 - 1))
            _, labels, _ = _ops.kmeans_pp(x, k, seed=seed, niter=20)
        with ctx.stage("purity+graph"):
            delta, purity, indptr, indices = purity_delta(x, labels, k, purity_threshold, ctx)
        diagnostics["purity"] = purity
        diagnostics["pseudo_label"] = labels.astype(np.int64)
    with ctx.stage("greedy"):
        blocked = ctx.blocked(n)
        picks, coverage, covered = greedy_max_coverage(
            indptr, indices, budget, ctx.rng(2), progress=lambda f: ctx.progress(0.8 + 0.2 * f, "greedy coverage"),
            forced=ctx.include, blocked=blocked if blocked.any() else None,
        )
    diagnostics.update(
        delta=float(delta),
        coverage=coverage,
        covered=covered,
        mean_degree=float(indices.size / n),
    )
    return picks, diagnostics
