"""What a selection covers, what it misses and how selections overlap.

Given the pool's features and one or more picks (lists of pool indices), :func:`inspect_selections`
computes per selection

* ``coverage`` — the distance from every pool sample to its nearest pick (exact), summarised as
  mean / p50 / p95 / max (the per-sample array is returned for the map and written as .npy);
* ``near_duplicates`` — pairs of picks closer than a threshold (exact distances);
* ``gaps`` — the densest regions of the pool with no pick nearby: pool samples ranked by
  density × distance to the nearest pick, de-duplicated into regions (a region = the samples
  closer to its representative than to their own nearest pick, i.e. what one pick there would
  serve better), ordered by how many pool samples the region holds;
* ``pseudo_classes`` — picks against members per pseudo-class / cluster, when labels are given
  (a selection's own ``cluster`` / ``assignment`` / ``pseudo_label`` diagnostics, or one
  labelling for all);

and across selections the ``overlap`` matrices ``shared`` (picks in both) and ``jaccard``
(shared / picks in either).

Repair helpers for the app: :func:`suggest_replacements` (for a removed pick: its nearest unpicked
neighbours in the same pseudo-class, and the largest gap once it is gone) and
:func:`rerun_keeping_edits` (the method again, kept picks as ``include``, removed ones as
``exclude``).

Distances are euclidean, by default on L2-normalised features (``space="normalized"``: most
methods select there — ActiveFT, BiLAF's core stage, k-means, TypiClust, ProbCover, FDS, Fisher —
and distances are then scale-free, 0 to 2); ``space="raw"`` uses the features as given (BiLAF's
boundary stage and Core-Set measure there).

Scale: the pool is read in row chunks (a memory-mapped .npy is never loaded whole) and every
nearest-neighbour search is exact faiss brute force against a small database (the picks, a
density reference sample or the gap representatives), on the GPU when faiss has one.  Memory is
O(chunk × D + picks × D), so 1 M × 768 fits easily in 24 GB.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import numpy as np

from .errors import BilafError
from .selection import _ops
from .selection.base import check_indices, validate_features

SPACES = ("normalized", "raw")
#: near-duplicate threshold, as a fraction of the median feature length in the space used:
#: 0.05 on normalised features (unit length), i.e. cosine similarity >= 0.99875.
DEFAULT_DUPLICATE_FRACTION = 0.05
#: gap regions reported per selection
DEFAULT_GAPS = 10
#: density = 1 / mean distance to this many nearest samples of the reference sample
DEFAULT_DENSITY_NEIGHBORS = 10
#: pool samples (seeded uniform) the density is measured against; the whole pool when smaller
DEFAULT_DENSITY_REFERENCE = 1024
#: top-scoring samples considered when de-duplicating gaps into regions
GAP_CANDIDATES = 4096
#: pool samples of each gap listed nearest-first (the app's thumbnail strip)
GAP_EXAMPLES = 8
#: diagnostics that label every pool sample with a pseudo-class / cluster, in order of preference
LABEL_DIAGNOSTICS = ("cluster", "assignment", "pseudo_label")
#: pool rows per chunk: 65 536 x 768 float32 = 192 MB
CHUNK = 65536
#: pools up to this size are L2-normalised once and held (saves a normalising pass per search);
#: larger ones are normalised chunk by chunk as they stream
PREPARED_BYTES = 2 * 1024**3

ProgressFn = Callable[[float, str], None]


# ---------------------------------------------------------------------------------------------
# Building blocks (arrays in, arrays out)
# ---------------------------------------------------------------------------------------------


def _check_space(space: str) -> None:
    if space not in SPACES:
        raise BilafError(f"space must be one of {', '.join(SPACES)}; got {space!r}")


def _prepare(block: np.ndarray, space: str) -> np.ndarray:
    block = np.ascontiguousarray(block, dtype=np.float32)
    return _ops.l2_normalize(block) if space == "normalized" else block


def pool_chunks(features: np.ndarray, space: str = "normalized", chunk: int = CHUNK):
    """Yield ``(start, rows)``: the pool in row chunks, float32, normalised when asked."""
    for start in range(0, features.shape[0], chunk):
        yield start, _prepare(features[start : start + chunk], space)


def rows_of(features: np.ndarray, indices: np.ndarray, space: str = "normalized", dtype=np.float32) -> np.ndarray:
    """Rows `indices` of the pool (in that order) as `dtype`, normalised (in `dtype`) when asked.
    Reads a memory-mapped pool in ascending order."""
    indices = np.asarray(indices, dtype=np.int64)
    order = np.argsort(indices, kind="stable")
    out = np.empty((indices.size, features.shape[1]), dtype=dtype)
    out[order] = np.asarray(features[indices[order]], dtype=dtype)
    if space == "normalized":
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def nearest_pick(features: np.ndarray, picks: np.ndarray, *, space: str = "normalized", chunk: int = CHUNK):
    """Exact distance from every pool sample to its nearest pick, and which pick that is.

    Returns ``(distance (N,) float32, nearest (N,) int64 pool index of the nearest pick)``;
    a pick's own distance is 0 (itself).  faiss brute force with the picks as the database,
    the pool streamed in chunks (GPU index when faiss has a GPU).
    """
    _check_space(space)
    picks = np.asarray(picks, dtype=np.int64)
    n = features.shape[0]
    index = _ops.flat_index(features.shape[1])
    index.add(rows_of(features, picks, space))
    distance = np.empty(n, dtype=np.float32)
    nearest = np.empty(n, dtype=np.int64)
    for start, block in pool_chunks(features, space, chunk):
        d2, ids = index.search(block, 1)
        distance[start : start + block.shape[0]] = np.sqrt(np.maximum(d2[:, 0], 0))
        nearest[start : start + block.shape[0]] = picks[ids[:, 0]]
    # a pick is its own nearest pick (float rounding in ‖a‖² + ‖b‖² − 2ab would say ~1e-4)
    distance[picks] = 0.0
    nearest[picks] = picks
    return distance, nearest


def coverage_summary(distance: np.ndarray) -> dict:
    """mean / p50 / p95 / max of the distances to the nearest pick (numpy's linear percentiles)."""
    d = np.asarray(distance, dtype=np.float64)
    p50, p95 = np.percentile(d, [50, 95])
    return {"mean": float(d.mean()), "p50": float(p50), "p95": float(p95), "max": float(d.max())}


def default_duplicate_threshold(features: np.ndarray, space: str = "normalized", *, sample: int = 4096,
                                seed: int = 0) -> float:
    """``DEFAULT_DUPLICATE_FRACTION`` × the median feature length in `space` (exactly 0.05 for
    normalised features; for raw ones measured on a seeded sample of ``sample`` rows)."""
    _check_space(space)
    if space == "normalized":
        return DEFAULT_DUPLICATE_FRACTION
    n = features.shape[0]
    rows = np.arange(n) if n <= sample else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    norms = np.linalg.norm(np.asarray(features[rows], dtype=np.float32), axis=1)
    return float(DEFAULT_DUPLICATE_FRACTION * np.median(norms))


def near_duplicate_pairs(features: np.ndarray, picks: np.ndarray, threshold: float, *, space: str = "normalized",
                         block: int = 4096) -> list[list]:
    """Pairs of picks at distance <= `threshold`: ``[[i, j, distance], …]`` with pool indices
    i < j, sorted by distance, then i, then j.

    Candidates come from a faiss range search over the picks (upper triangle only, a little
    wider than the threshold to absorb float32 rounding); every candidate's distance is then
    recomputed exactly in float64 from the two rows, so exact duplicates report 0.0.
    """
    _check_space(space)
    if not np.isfinite(threshold) or threshold < 0:
        raise BilafError(f"the near-duplicate threshold must be a distance >= 0; got {threshold}")
    picks = np.asarray(picks, dtype=np.int64)
    if picks.size < 2:
        return []
    x = rows_of(features, picks, space)
    faiss = _ops.faiss_module()
    sq_max = float(_ops.sq_norms(x).max())
    # ‖a‖² + ‖b‖² − 2ab in float32 is off by a few ulps of the largest squared norm
    radius2 = (float(threshold) * (1 + 1e-4) + 1e-12) ** 2 + 1e-5 * 4.0 * max(sq_max, 1e-30)
    rows_i, rows_j = [], []
    for s in range(0, picks.size, block):
        q = min(block, picks.size - s)
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x[s:])
        lims, _, lab = index.range_search(x[s : s + q], radius2)
        rows = np.repeat(np.arange(s, s + q), np.diff(lims.astype(np.int64)))
        cols = lab.astype(np.int64) + s
        upper = cols > rows
        rows_i.append(rows[upper])
        rows_j.append(cols[upper])
    i, j = np.concatenate(rows_i), np.concatenate(rows_j)
    if i.size == 0:
        return []
    # exact distances from the rows as stored, in float64 (normalised in float64 when asked)
    used = np.unique(np.concatenate([i, j]))
    exact = np.zeros((picks.size, x.shape[1]), dtype=np.float64)
    exact[used] = rows_of(features, picks[used], space, dtype=np.float64)
    dist = np.sqrt(((exact[i] - exact[j]) ** 2).sum(axis=1))
    keep = dist <= threshold
    pi, pj = picks[i[keep]], picks[j[keep]]
    lo, hi, dist = np.minimum(pi, pj), np.maximum(pi, pj), dist[keep]
    order = np.lexsort((hi, lo, dist))
    return [[int(lo[k]), int(hi[k]), float(dist[k])] for k in order]


class PoolDensity:
    """Density of pool samples, computed on demand: 1 / mean distance to the `neighbors`
    nearest samples of a seeded uniform reference sample of `reference` pool samples (a sample
    never counts itself), scaled so that the reference sample's median density is 1.  With a
    pool no larger than `reference` this is the exact k-nearest-neighbour density.

    Only gap candidates need a density (samples at least the median distance from any pick), so
    rows are computed when first asked for (``at(rows)``) and kept; that halves the work on a
    typical pool compared with the whole pool up front.
    """

    def __init__(self, features: np.ndarray, *, space: str = "normalized", neighbors: int = DEFAULT_DENSITY_NEIGHBORS,
                 reference: int = DEFAULT_DENSITY_REFERENCE, seed: int = 0, chunk: int = CHUNK):
        _check_space(space)
        n = features.shape[0]
        self.features, self.space, self.chunk = features, space, chunk
        self.reference = np.arange(n) if n <= reference else np.sort(np.random.default_rng(seed).choice(n, reference, replace=False))
        self.neighbors = int(max(1, min(neighbors, self.reference.size - 1)))
        self._position = np.full(n, -1, dtype=np.int64)
        self._position[self.reference] = np.arange(self.reference.size)
        self._values = np.full(n, np.nan, dtype=np.float32)
        self._index = None
        self._scale = 1.0
        self.seconds = 0.0  # time spent so far (index building and searches)
        if n >= 2:
            self._index = _ops.flat_index(features.shape[1])
            self._index.add(rows_of(features, self.reference, space))
            raw = self._raw(self.reference)
            self._scale = float(np.median(raw))
            self._values[self.reference] = raw / self._scale
        else:
            self._values[:] = 1.0

    def _raw(self, rows: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self._search(rows)
        finally:
            self.seconds += time.perf_counter() - started

    def _search(self, rows: np.ndarray) -> np.ndarray:
        k = self.neighbors
        out = np.empty(rows.size, dtype=np.float64)
        for start in range(0, rows.size, self.chunk):
            part = rows[start : start + self.chunk]
            d2, ids = self._index.search(rows_of(self.features, part, self.space), k + 1)
            d = np.sqrt(np.maximum(d2, 0)).astype(np.float64)
            # drop the sample itself when it is in the reference, else the (k+1)-th neighbour
            own = ids == self._position[part, None]
            drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
            d[np.arange(d.shape[0]), drop] = np.nan
            out[start : start + part.size] = 1.0 / np.maximum(np.nanmean(d, axis=1), 1e-12)
        return out

    def at(self, rows: np.ndarray) -> np.ndarray:
        """Densities of the pool samples `rows` (computed now when not known yet)."""
        rows = np.asarray(rows, dtype=np.int64)
        missing = np.unique(rows[np.isnan(self._values[rows])])
        if missing.size:
            self._values[missing] = self._raw(missing) / self._scale
        return self._values[rows]

    @property
    def values(self) -> np.ndarray:
        """(N,) float32: the densities computed so far, NaN elsewhere."""
        return self._values


def pool_density(features: np.ndarray, *, space: str = "normalized", neighbors: int = DEFAULT_DENSITY_NEIGHBORS,
                 reference: int = DEFAULT_DENSITY_REFERENCE, seed: int = 0, chunk: int = CHUNK) -> np.ndarray:
    """`PoolDensity` of every pool sample, (N,) float32 (the reference sample's median is 1)."""
    density = PoolDensity(features, space=space, neighbors=neighbors, reference=reference, seed=seed, chunk=chunk)
    return density.at(np.arange(features.shape[0]))


def _scan_pool(features, centres: np.ndarray, *, space: str, examples: int, limit: np.ndarray | None = None,
               exclude: np.ndarray | None = None, chunk: int = CHUNK):
    """One pass over the pool for a few centre rows.

    Returns ``(counts (G,), indices (G, examples), distances (G, examples))``: with `limit`
    (N,), how many pool samples x lie closer to each centre than ``limit[x]``, and the
    `examples` nearest pool samples of each centre among those (all samples without `limit`),
    never an `exclude`d one (N,) bool; nearest first, ties to the lower index, −1/inf padding.
    """
    g = centres.shape[0]
    counts = np.zeros(g, dtype=np.int64)
    best_d = np.full((g, examples), np.inf, dtype=np.float64)
    best_i = np.full((g, examples), -1, dtype=np.int64)
    c_sq = _ops.sq_norms(centres)
    for start, block in pool_chunks(features, space, chunk):
        rows = slice(start, start + block.shape[0])
        # float32 row norms: a float64 accumulation costs more than the product itself here
        d = _ops.pairwise_dist(centres, block, a_sq=c_sq, b_sq=np.einsum("ij,ij->i", block, block)).astype(np.float64)
        if limit is not None:
            inside = d < limit[rows][None, :]
            counts += inside.sum(axis=1)
            d[~inside] = np.inf
        if exclude is not None:
            d[:, exclude[rows]] = np.inf
        m = min(examples, d.shape[1])
        part = np.argpartition(d, m - 1, axis=1)[:, :m] if m < d.shape[1] else np.broadcast_to(np.arange(m), (g, m))
        merged_d = np.concatenate([best_d, np.take_along_axis(d, part, axis=1)], axis=1)
        merged_i = np.concatenate([best_i, part + start], axis=1)
        top = np.lexsort((merged_i, merged_d), axis=1)[:, :examples]  # nearest first; ties: lower index
        best_d = np.take_along_axis(merged_d, top, axis=1)
        best_i = np.take_along_axis(merged_i, top, axis=1)
    best_i[~np.isfinite(best_d)] = -1
    return counts, best_i, best_d


def find_gaps(features: np.ndarray, distance: np.ndarray, nearest: np.ndarray, density, *,
              n_gaps: int = DEFAULT_GAPS, space: str = "normalized", candidates: int = GAP_CANDIDATES,
              examples: int = GAP_EXAMPLES, chunk: int = CHUNK) -> list[dict]:
    """The densest regions of the pool with no pick nearby.

    A gap's *region* is the set of pool samples that lie closer to its representative than to
    their own nearest pick — the samples a pick at the representative would serve better, so its
    ``size`` is what adding that one pick would fix.

    A sample can represent a gap only if it is at least the median distance from any pick (the
    better-covered half of the pool is not searched).  Those samples score density × distance
    to their nearest pick; the `candidates` best are de-duplicated greedily: the best remaining
    one becomes a representative and the candidates inside its region are dropped.  Regions are
    returned largest first (ties: higher score), each as a dict: ``representative``,
    ``distance_to_nearest_pick``, ``nearest_pick``, ``density`` (1 = the median of the density
    reference sample), ``score``, ``size`` and ``examples`` (up to `examples` members nearest the
    representative, itself first).  Regions of different gaps may share samples.

    `density` is a `PoolDensity` (rows computed on demand) or an (N,) array.
    """
    _check_space(space)
    distance = np.asarray(distance, dtype=np.float64)
    density_at = density.at if isinstance(density, PoolDensity) else (lambda rows: np.asarray(density)[rows])
    far = np.flatnonzero((distance >= np.median(distance)) & (distance > 0))
    if far.size == 0 or n_gaps <= 0:
        return []
    score = np.zeros(distance.size, dtype=np.float64)
    score[far] = density_at(far).astype(np.float64) * distance[far]
    positive = far[score[far] > 0]
    if positive.size == 0:
        return []
    t = min(candidates, positive.size)
    cand = positive[np.argpartition(-score[positive], t - 1)[:t]] if t < positive.size else positive
    cand = cand[np.lexsort((cand, -score[cand]))]  # best first; ties: lower index
    xc = rows_of(features, cand, space)
    xc_sq = _ops.sq_norms(xc)
    alive = np.ones(cand.size, dtype=bool)
    reps = []
    while len(reps) < n_gaps and alive.any():
        p = int(np.argmax(alive))  # best alive (cand is sorted by score)
        d = _ops.pairwise_dist(xc[p : p + 1], xc, a_sq=xc_sq[p : p + 1], b_sq=xc_sq)[0]
        alive &= d >= distance[cand]  # drop the candidates inside this region
        alive[p] = False
        reps.append(p)
    rep_ids = cand[np.asarray(reps)]
    counts, ex_i, _ = _scan_pool(features, xc[np.asarray(reps)], space=space, limit=distance,
                                 examples=int(min(examples, features.shape[0])), chunk=chunk)
    gaps = []
    for r, idx in enumerate(rep_ids):
        members = [int(i) for i in ex_i[r] if i >= 0 and i != idx]  # the representative goes first
        gaps.append({
            "representative": int(idx),
            "distance_to_nearest_pick": float(distance[idx]),
            "nearest_pick": int(nearest[idx]),
            "density": float(density_at(np.array([idx]))[0]),
            "score": float(score[idx]),
            "size": int(max(counts[r], 1)),
            "examples": [int(idx)] + members[: max(0, examples - 1)],
        })
    gaps.sort(key=lambda gap: (-gap["size"], -gap["score"], gap["representative"]))
    for rank, gap in enumerate(gaps, start=1):
        gap["rank"] = rank
    return gaps


def class_breakdown(picks: np.ndarray, labels: np.ndarray) -> dict:
    """Picks against members per pseudo-class / cluster.

    Returns ``{"classes": [{"class", "members", "picks", "expected"}…], "without_picks",
    "members_without_picks"}``; ``expected`` is the class's share of the budget if picks
    followed the pool's distribution (budget × members / N)."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise BilafError(f"pseudo-class labels must be integers, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise BilafError("pseudo-class labels must be >= 0")
    k = int(labels.max()) + 1 if labels.size else 0
    members = np.bincount(labels, minlength=k)
    picked = np.bincount(labels[np.asarray(picks, dtype=np.int64)], minlength=k)
    budget, n = int(len(picks)), int(labels.size)
    classes = [
        {"class": int(c), "members": int(members[c]), "picks": int(picked[c]), "expected": budget * float(members[c]) / n}
        for c in np.flatnonzero(members)
    ]
    empty = (members > 0) & (picked == 0)
    return {"classes": classes, "without_picks": int(empty.sum()), "members_without_picks": int(members[empty].sum())}


def overlap_matrices(picks_list: Sequence[np.ndarray]):
    """``shared[a][b]`` = picks in both a and b (the diagonal: each selection's size) and
    ``jaccard[a][b]`` = shared / picks in either, as nested lists."""
    sets = [np.unique(np.asarray(p, dtype=np.int64)) for p in picks_list]
    s = len(sets)
    shared = [[0] * s for _ in range(s)]
    jaccard = [[0.0] * s for _ in range(s)]
    for a in range(s):
        for b in range(s):
            both = int(np.intersect1d(sets[a], sets[b], assume_unique=True).size)
            either = int(sets[a].size + sets[b].size - both)
            shared[a][b] = both
            jaccard[a][b] = both / either if either else 0.0
    return shared, jaccard


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class InspectResult:
    """``report``: the JSON-able report (see the module docstring); ``coverage`` (S, N) float32:
    distance of every pool sample to the nearest pick of each selection; ``nearest`` (S, N)
    int64: that pick; ``density``: the `PoolDensity` used; ``pool`` / ``pool_space``: the
    prepared pool — pass all of them to `suggest_replacements` to answer a click fast."""

    report: dict
    coverage: np.ndarray
    nearest: np.ndarray
    density: "PoolDensity"
    #: the pool as the searches read it and the space to pass with it (see `prepared_pool`)
    pool: np.ndarray = None
    pool_space: str = "normalized"


def prepared_pool(features: np.ndarray, space: str = "normalized") -> tuple[np.ndarray, str]:
    """``(pool, space)`` to pass to the searches: for ``"normalized"`` a pool up to
    ``PREPARED_BYTES`` is L2-normalised once into memory and returned with ``"raw"`` (it needs no
    more normalising); anything else is returned as it is, to be normalised chunk by chunk."""
    _check_space(space)
    n, dim = features.shape
    if space != "normalized" or n * dim * 4 > PREPARED_BYTES:
        return features, space
    work = np.empty((n, dim), dtype=np.float32)
    for start, block in pool_chunks(features, space):
        work[start : start + block.shape[0]] = block
    return work, "raw"


def labels_from_diagnostics(diagnostics: dict | None) -> tuple[str, np.ndarray] | None:
    """The first pool-wide pseudo-class labelling in a selection's diagnostics, as (name, labels)."""
    for name in LABEL_DIAGNOSTICS:
        if diagnostics and name in diagnostics and diagnostics[name] is not None:
            return name, np.asarray(diagnostics[name])
    return None


def inspect_selections(
    features: Any,
    picks_list: Sequence[Any],
    *,
    names: Sequence[str] | None = None,
    labels: Sequence[Any] | None = None,
    space: str = "normalized",
    duplicate_threshold: float | None = None,
    n_gaps: int = DEFAULT_GAPS,
    density_neighbors: int = DEFAULT_DENSITY_NEIGHBORS,
    density_reference: int = DEFAULT_DENSITY_REFERENCE,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> InspectResult:
    """Inspect one or more selections of the same pool.

    Parameters
    ----------
    features : (N, D) array (a memory-mapped .npy is fine; it is read in chunks)
    picks_list : sequence of S lists/arrays of distinct pool indices
    names : S display names (default ``selection 1``…)
    labels : S entries, each None or an (N,) int pseudo-class labelling for that selection
    space : ``"normalized"`` (default) or ``"raw"``: where distances are measured
    duplicate_threshold : distance at or below which two picks are near-duplicates (default:
        ``DEFAULT_DUPLICATE_FRACTION`` × the median feature length, 0.05 when normalised)
    n_gaps : regions reported per selection
    density_neighbors, density_reference, seed : the density estimate (see `pool_density`)
    progress : ``fn(fraction, message)``; may raise Cancelled

    Returns
    -------
    InspectResult
    """
    _check_space(space)
    report_progress = progress or (lambda f, m: None)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    features = validate_features(features)
    n, dim = features.shape
    picks_list = list(picks_list)
    if not picks_list:
        raise BilafError("give at least one picks file to inspect")
    names = [f"selection {i + 1}" for i in range(len(picks_list))] if names is None else [str(x) for x in names]
    if len(names) != len(picks_list):
        raise BilafError(f"{len(names)} names for {len(picks_list)} selections")
    labels = [None] * len(picks_list) if labels is None else list(labels)
    if len(labels) != len(picks_list):
        raise BilafError(f"{len(labels)} pseudo-class labellings for {len(picks_list)} selections")
    checked = []
    for name, picks in zip(names, picks_list):
        picks = check_indices(np.asarray(picks).reshape(-1), n, what=f"picks of {name}")
        if picks.size == 0:
            raise BilafError(f"{name} holds no picks; nothing to inspect")
        checked.append(picks)
    for name, lab in zip(names, labels):
        if lab is not None and np.asarray(lab).reshape(-1).shape[0] != n:
            raise BilafError(f"the pseudo-classes of {name} label {np.asarray(lab).reshape(-1).shape[0]} samples but the "
                             f"pool has {n}; use the labels of the selection made on these features")
    threshold = default_duplicate_threshold(features, space, seed=seed) if duplicate_threshold is None else float(duplicate_threshold)
    if not np.isfinite(threshold) or threshold < 0:
        raise BilafError(f"--duplicate-threshold must be a distance >= 0; got {duplicate_threshold}")
    timings["validate"] = time.perf_counter() - started

    # Every pass below reads the pool; normalise it once when the copy is small enough to hold.
    t = time.perf_counter()
    work, work_space = prepared_pool(features, space)
    timings["normalise"] = time.perf_counter() - t
    report_progress(0.05, "pool density")
    density = PoolDensity(work, space=work_space, neighbors=density_neighbors, reference=density_reference, seed=seed)

    coverage = np.empty((len(checked), n), dtype=np.float32)
    nearest = np.empty((len(checked), n), dtype=np.int64)
    selections = []
    for s, (name, picks, lab) in enumerate(zip(names, checked, labels)):
        base = 0.1 + 0.85 * s / len(checked)
        report_progress(base, f"{name}: coverage")
        t = time.perf_counter()
        coverage[s], nearest[s] = nearest_pick(work, picks, space=work_space)
        timings["coverage"] = timings.get("coverage", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        duplicates = near_duplicate_pairs(features, picks, threshold, space=space)
        timings["near_duplicates"] = timings.get("near_duplicates", 0.0) + time.perf_counter() - t
        report_progress(base + 0.5 * 0.85 / len(checked), f"{name}: gaps")
        t = time.perf_counter()
        density_before = density.seconds
        gaps = find_gaps(work, coverage[s], nearest[s], density, n_gaps=n_gaps, space=work_space)
        # the densities the gaps asked for are counted under "density", the rest under "gaps"
        timings["gaps"] = timings.get("gaps", 0.0) + time.perf_counter() - t - (density.seconds - density_before)
        entry = {
            "name": name,
            "budget": int(picks.size),
            "coverage": coverage_summary(coverage[s]),
            "near_duplicates": duplicates,
            "gaps": gaps,
            "pseudo_classes": None if lab is None else class_breakdown(picks, np.asarray(lab).reshape(-1)),
        }
        selections.append(entry)
    shared, jaccard = overlap_matrices(checked)
    timings["density"] = density.seconds
    timings["total"] = time.perf_counter() - started
    report = {
        "n_pool": int(n),
        "dim": int(dim),
        "space": space,
        "duplicate_threshold": threshold,
        "density": {"neighbors": density.neighbors, "reference": int(density.reference.size), "seed": int(seed),
                    "rows_computed": int(np.count_nonzero(~np.isnan(density.values)))},
        "selections": selections,
        "overlap": {"names": list(names), "shared": shared, "jaccard": jaccard},
        "timings": timings,
    }
    report_progress(1.0, "done")
    return InspectResult(report=report, coverage=coverage, nearest=nearest, density=density, pool=work, pool_space=work_space)


# ---------------------------------------------------------------------------------------------
# Repair (the app's "remove a pick" and "re-run keeping my edits")
# ---------------------------------------------------------------------------------------------


def suggest_replacements(
    features: Any,
    picks: Any,
    removed: int,
    *,
    labels: Any = None,
    n_neighbours: int = 5,
    exclude: Any = None,
    space: str = "normalized",
    coverage: tuple[np.ndarray, np.ndarray] | None = None,
    density: "PoolDensity | np.ndarray | None" = None,
    seed: int = 0,
) -> dict:
    """Replacements for the pick `removed`.

    ``neighbours``: its `n_neighbours` nearest samples that are not picked (nor in `exclude`),
    restricted to its own pseudo-class when `labels` (N,) are given, as
    ``[{"index", "distance"}…]`` nearest first.  ``gap``: the largest gap (see `find_gaps`) of
    the picks without `removed`, or None when every sample is a pick.

    ``coverage`` = ``(distance, nearest)`` of the current picks (from `nearest_pick` or
    ``InspectResult``) and ``density`` are reused when given: then only the samples whose nearest
    pick was `removed` are searched again.
    """
    _check_space(space)
    features = validate_features(features)
    n = features.shape[0]
    picks = check_indices(np.asarray(picks).reshape(-1), n, what="picks")
    removed = int(removed)
    if removed not in set(picks.tolist()):
        raise BilafError(f"sample {removed} is not one of the picks; only a pick can be removed")
    blocked = np.zeros(n, dtype=bool)
    blocked[picks] = True
    if exclude is not None:
        blocked[check_indices(np.asarray(exclude).reshape(-1), n, what="exclude")] = True
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != n:
            raise BilafError(f"labels cover {labels.shape[0]} samples but the pool has {n}")
        blocked |= labels != labels[removed]
    centre = rows_of(features, np.array([removed]), space)
    k = int(min(n_neighbours, max(n - int(blocked.sum()), 0)))
    neighbours = []
    if k > 0:
        _, ids, dists = _scan_pool(features, centre, space=space, examples=k, exclude=blocked)
        neighbours = [{"index": int(i), "distance": float(d)} for i, d in zip(ids[0], dists[0]) if i >= 0 and np.isfinite(d)]

    remaining = picks[picks != removed]
    gap = None
    if remaining.size:
        if coverage is not None:
            distance, nearest = (np.array(a, copy=True) for a in coverage)
            stale = np.flatnonzero(nearest == removed)
            if stale.size:
                d, near = _nearest_among(features, stale, remaining, space)
                distance[stale], nearest[stale] = d, near
        else:
            distance, nearest = nearest_pick(features, remaining, space=space)
        if density is None:
            density = PoolDensity(features, space=space, seed=seed)
        gaps = find_gaps(features, distance, nearest, density, n_gaps=1, space=space)
        gap = gaps[0] if gaps else None
    return {"removed": removed, "neighbours": neighbours, "gap": gap}


def _nearest_among(features, rows: np.ndarray, picks: np.ndarray, space: str):
    """Exact nearest pick (pool index) and distance for the pool rows `rows`."""
    index = _ops.flat_index(features.shape[1])
    index.add(rows_of(features, picks, space))
    d2, ids = index.search(rows_of(features, rows, space), 1)
    return np.sqrt(np.maximum(d2[:, 0], 0)).astype(np.float32), picks[ids[:, 0]]


def rerun_keeping_edits(method: str, features: Any, budget: int | str, *, kept: Any, removed: Any = None,
                        exclude: Any = None, seed: int = 0, progress: ProgressFn | None = None, **options):
    """Run `method` again within `budget`, keeping the user's edits: the picks `kept` are
    included (they count against the budget) and the `removed` ones — with any other `exclude` —
    are never picked.  Returns the new :class:`~bilaf_core.selection.Selection`; its diagnostics
    carry ``include_indices`` / ``exclude_indices`` for the child record."""
    from .selection import run_selection

    parts = [np.asarray(x, dtype=np.int64).reshape(-1) for x in (removed, exclude) if x is not None]
    never = np.unique(np.concatenate(parts)) if parts else None
    return run_selection(method, features, budget, seed=seed, progress=progress,
                         include=np.asarray(kept, dtype=np.int64).reshape(-1), exclude=never, **options)
