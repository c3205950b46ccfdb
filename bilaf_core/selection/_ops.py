"""Vectorised building blocks shared by the selection methods.

Everything N x K is computed in row chunks so memory stays bounded at ImageNet scale; k-means and
exact nearest-neighbour search go through faiss (a GPU index when faiss has GPUs).
"""

from __future__ import annotations

import os

import numpy as np

#: rows per chunk for N x K blocks: 8192 x 8192 float32 = 256 MB at most.
DEFAULT_CHUNK = 8192


def faiss_module():
    import faiss  # imported lazily: the CLI's --help and the app's start-up stay fast

    return faiss


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu, or when BILAF_NO_GPU is set)."""
    if os.environ.get("BILAF_NO_GPU"):
        return 0
    faiss = faiss_module()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x, dtype=np.float64).astype(x.dtype, copy=False)


def pairwise_dist(a: np.ndarray, b: np.ndarray, *, a_sq=None, b_sq=None, squared=False) -> np.ndarray:
    """Euclidean distances between rows of `a` and `b` via one matrix product (BLAS)."""
    a_sq = sq_norms(a) if a_sq is None else a_sq
    b_sq = sq_norms(b) if b_sq is None else b_sq
    d2 = a @ b.T
    d2 *= -2
    d2 += a_sq[:, None]
    d2 += b_sq[None, :]
    np.maximum(d2, 0, out=d2)
    return d2 if squared else np.sqrt(d2, out=d2)


def torch_gpu_device(device: str | None = "auto"):
    """Where torch-based N x K work should run: ``"cuda"`` when asked for (or, for ``"auto"``, when
    torch sees a GPU), else None (the numpy path).

    ``"auto"`` does not import torch (unless it is loaded already) on a machine without NVIDIA
    device files (``/dev/nvidiactl``; ``/dev/dxg`` under WSL), so CPU-only command lines keep
    their fast start-up; ``BILAF_NO_GPU`` forces the CPU, as for faiss.
    """
    import sys

    from ..errors import BilafError

    device = (device or "auto").lower()
    if device == "cpu":
        return None
    if device not in ("auto", "cuda") and not device.startswith("cuda:"):
        raise BilafError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device == "auto":
        if os.environ.get("BILAF_NO_GPU"):
            return None
        if "torch" not in sys.modules and not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/dxg")):
            return None
    import torch

    if torch.cuda.is_available():
        return "cuda" if device == "auto" else device
    if device == "auto":
        return None
    raise BilafError(f"device {device!r} was asked for but torch sees no CUDA GPU; use auto or cpu")


def nearest_rows(x: np.ndarray, centers: np.ndarray, *, chunk: int = DEFAULT_CHUNK, device: str | None = None):
    """For each row of `x`: index of and distance to its nearest row of `centers` (ties: the lower
    index), computed in chunks.  Also returns the second-nearest (index, distance), which callers
    use for 'nearest *other* centre' without a second pass; -1/inf when there is one centre.

    This is the N x K hot spot at ImageNet scale (1.28 M x 6 405), so per chunk it makes one GEMM
    and as few passes as possible: ‖x‖² is constant along a row and cannot change the argmin, so
    the ranking uses ‖c‖² − 2·xᵀc (the −2 folded into the centres, exact in floating point) and
    only the two winners per row get the full distance and a square root.

    `device` None (or ``"cpu"``) runs numpy/BLAS here; a torch device name (``"cuda"``) runs the
    same arithmetic in float32 through torch on that device (:func:`torch_gpu_device` picks it).
    Results agree with the numpy path except where two centres tie to float rounding.
    """
    if device is not None and str(device) != "cpu":
        return nearest_rows_torch(x, centers, device=device)
    n, k = x.shape[0], centers.shape[0]
    centers = np.ascontiguousarray(centers, dtype=np.float32)
    c_sq = sq_norms(centers)
    minus_two_c = centers * np.float32(-2.0)
    first_idx = np.empty(n, dtype=np.int64)
    first_dist = np.empty(n, dtype=np.float32)
    second_idx = np.full(n, -1, dtype=np.int64)
    second_dist = np.full(n, np.inf, dtype=np.float32)
    rows = np.arange(min(chunk, n))
    for start in range(0, n, chunk):
        block_x = x[start : start + chunk]
        x_sq = sq_norms(block_x)
        score = block_x @ minus_two_c.T
        score += c_sq[None, :]
        r = rows[: score.shape[0]]
        best = score.argmin(axis=1)
        first_idx[start : start + chunk] = best
        first_dist[start : start + chunk] = np.sqrt(np.maximum(score[r, best] + x_sq, 0))
        if k > 1:
            score[r, best] = np.inf
            second = score.argmin(axis=1)
            second_idx[start : start + chunk] = second
            second_dist[start : start + chunk] = np.sqrt(np.maximum(score[r, second] + x_sq, 0))
    return first_idx, first_dist, second_idx, second_dist


#: elements per N x K score block on a torch device: 2**28 float32 = 1 GB
TORCH_BLOCK_ELEMENTS = 1 << 28


def nearest_rows_torch(x: np.ndarray, centers: np.ndarray, *, device="cuda", block_elements: int = TORCH_BLOCK_ELEMENTS):
    """:func:`nearest_rows` through torch on `device` (any torch device; the GPU is the point).

    The centres stay on the device; the rows of `x` go there one block at a time, so a pool
    larger than the GPU's memory works too.  Same ranking as the numpy path (‖c‖² − 2·xᵀc, ties to
    the lower index: ``argmin`` returns the first minimum), in float32 matrix products (not TF32:
    torch's default float32 precision is left as it is, and the default is full float32).
    """
    import torch

    dev = torch.device(device)
    n, k = x.shape[0], centers.shape[0]
    centers = np.ascontiguousarray(centers, dtype=np.float32)
    c = torch.from_numpy(centers).to(dev)
    c_sq = torch.from_numpy(sq_norms(centers)).to(dev)
    minus_two_c_t = (c * -2.0).T.contiguous()
    first_idx = np.empty(n, dtype=np.int64)
    first_dist = np.empty(n, dtype=np.float32)
    second_idx = np.full(n, -1, dtype=np.int64)
    second_dist = np.full(n, np.inf, dtype=np.float32)
    rows = max(1, int(block_elements) // max(k, 1))
    with torch.inference_mode():
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            block_np = np.ascontiguousarray(x[start:stop], dtype=np.float32)
            block = torch.from_numpy(block_np).to(dev)
            x_sq = torch.from_numpy(sq_norms(block_np)).to(dev)
            score = torch.addmm(c_sq.unsqueeze(0), block, minus_two_c_t)
            best = score.argmin(dim=1, keepdim=True)
            first_idx[start:stop] = best[:, 0].cpu().numpy()
            first_dist[start:stop] = torch.sqrt(torch.clamp(score.gather(1, best)[:, 0] + x_sq, min=0)).cpu().numpy()
            if k > 1:
                score.scatter_(1, best, float("inf"))
                second = score.argmin(dim=1, keepdim=True)
                second_idx[start:stop] = second[:, 0].cpu().numpy()
                second_dist[start:stop] = torch.sqrt(torch.clamp(score.gather(1, second)[:, 0] + x_sq, min=0)).cpu().numpy()
    return first_idx, first_dist, second_idx, second_dist


#: the largest k faiss' GPU indexes can search (GPU_MAX_SELECTION_K); larger k stays on the CPU
FAISS_GPU_MAX_K = 2048


def flat_index(dim: int, *, k: int = 1, metric: str = "l2"):
    """An exact faiss index (L2 or inner product), on the GPU when faiss has one and `k`, the
    number of neighbours it will be asked for, is within what GPU search supports."""
    faiss = faiss_module()
    index = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
    if gpu_count() > 0 and k <= FAISS_GPU_MAX_K:  # pragma: no cover - CI has no GPU
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def knn(database: np.ndarray, queries: np.ndarray, k: int, *, chunk: int = 65536):
    """Exact k nearest neighbours (euclidean distances, not squared) of `queries` in `database`."""
    database = np.ascontiguousarray(database, dtype=np.float32)
    k = int(min(k, database.shape[0]))
    index = flat_index(database.shape[1], k=k)
    index.add(database)
    dists = np.empty((queries.shape[0], k), dtype=np.float32)
    ids = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], chunk):
        q = np.ascontiguousarray(queries[start : start + chunk], dtype=np.float32)
        d2, i = index.search(q, k)
        dists[start : start + chunk] = np.sqrt(np.maximum(d2, 0))
        ids[start : start + chunk] = i
    return dists, ids


def kmeans(x: np.ndarray, k: int, *, seed: int, niter: int = 20, nredo: int = 1, max_points_per_centroid: int = 256):
    """faiss k-means.  Returns (centroids (k, D), assignment (N,), distance to own centroid (N,))."""
    faiss = faiss_module()
    x = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(
        x.shape[1],
        int(k),
        niter=int(niter),
        nredo=int(nredo),
        seed=int(seed) % (2**31 - 1),
        gpu=gpu_count() > 0,
        max_points_per_centroid=max_points_per_centroid,
        verbose=False,
    )
    km.train(x)
    centroids = km.centroids.copy()
    assign, dist, _, _ = nearest_rows(x, centroids)
    return centroids, assign, dist


# ---------------------------------------------------------------------------------------------
# Helpers for the baseline methods (coreset, fds, fisher, k-means seeding, multi-round options)
# ---------------------------------------------------------------------------------------------


def resolve_initial(initial, n_pool: int, budget: int, method: str) -> np.ndarray:
    """Check an ``initial_indices`` option (picks made in earlier rounds) and that ``budget`` new
    picks still fit in the rest of the pool.  Returns the indices as int64 (empty when None)."""
    from ..errors import BilafError
    from .base import check_indices

    if initial is None:
        return np.empty(0, dtype=np.int64)
    initial = check_indices(np.asarray(initial).reshape(-1), n_pool, what=f"{method}: --initial-indices")
    free = n_pool - initial.size
    if budget > free:
        raise BilafError(
            f"{method}: budget {budget} plus {initial.size} already-picked samples exceeds the pool of "
            f"{n_pool}; lower the budget to at most {free} or pass fewer --initial-indices"
        )
    return initial


def farthest_first(
    x: np.ndarray,
    n_picks: int,
    *,
    initial: np.ndarray | None = None,
    first: int | None = None,
    progress=None,
    chunk: int = DEFAULT_CHUNK,
    choose=None,
    blocked: np.ndarray | None = None,
):
    """Greedy k-center / farthest-first traversal in euclidean distance.

    Starts from the centres ``initial`` (pool indices) or, when there are none, from the single
    sample ``first``; then repeatedly adds the sample whose distance to its nearest centre is
    largest.  The running minimum distance is updated with one matrix-vector product per pick.
    Only rows whose minimum *can* shrink are recomputed: by the triangle inequality a new centre
    c can be closer to x than x's current centre o only if d(o, c) < 2·d(x, o), so rows with
    d(o, c)² ≥ 4·d(x, o)² (plus a rounding margin) are skipped.  This is exact, and after the
    first few dozen picks it skips most of the pool.

    Returns ``(picks (n_picks,), d2_at_pick (n_picks,), radius2 (n_picks,), min_d2 (N,))``:
    the new picks in order (``first`` is picks[0] when given), each pick's squared distance to
    its nearest earlier centre (NaN for ``first``), the squared cover radius (max over the pool
    of the squared distance to the nearest centre) after each pick, and the final squared
    distance of every sample to its nearest centre (0 for centres).

    ``choose(min_d2) -> index`` replaces the argmax rule (``min_d2`` is −inf at centres); k-means++
    seeding passes a D²-sampler here and reuses the same pruned distance updates.

    ``blocked`` (N,) bool: samples that are never picked (``--exclude``).  They still count as
    pool samples to cover — their distances are updated and enter the cover radius — they are
    only hidden from the choice (−inf in the array the argmax or ``choose`` sees).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.shape[0]
    x_sq = sq_norms(x)
    initial = np.empty(0, dtype=np.int64) if initial is None else np.asarray(initial, dtype=np.int64)
    if initial.size == 0 and first is None:
        raise ValueError("farthest_first needs initial centres or a first sample")
    n_centres = initial.size + n_picks
    centres = np.empty((n_centres, x.shape[1]), dtype=np.float32)
    centres_sq = np.empty(n_centres, dtype=np.float32)
    # rounding margin for the pruning test: float32 squared distances computed through
    # ||a||² + ||b||² − 2ab carry an absolute error of a few ulps of the largest squared norm.
    tol = 1e-5 * 4.0 * float(x_sq.max(initial=0.0))

    picks = np.empty(n_picks, dtype=np.int64)
    d2_at_pick = np.full(n_picks, np.nan, dtype=np.float32)
    radius2 = np.empty(n_picks, dtype=np.float32)
    taken = np.zeros(n, dtype=bool)

    if initial.size:
        centres[: initial.size] = x[initial]
        centres_sq[: initial.size] = x_sq[initial]
        owner, dist, _, _ = nearest_rows(x, centres[: initial.size], chunk=chunk)
        min_d2 = dist.astype(np.float32) ** 2
        n_c = initial.size
        taken[initial] = True
        start = 0
    else:
        c = x[first]
        min_d2 = np.maximum(x_sq + x_sq[first] - 2.0 * (x @ c), 0).astype(np.float32)
        owner = np.zeros(n, dtype=np.int64)
        centres[0] = c
        centres_sq[0] = x_sq[first]
        n_c = 1
        picks[0] = first
        taken[first] = True
        start = 1
    # centres are marked −inf so argmax never returns them again and the pruning test below never
    # selects them (duplicates of a centre stay at 0 and remain pickable)
    min_d2[taken] = -np.inf
    if start:
        radius2[0] = max(float(min_d2.max()), 0.0)

    step = max(1, n_picks // 100)
    for t in range(start, n_picks):
        visible = min_d2 if blocked is None else np.where(blocked, -np.inf, min_d2)
        i = int(np.argmax(visible)) if choose is None else int(choose(visible))
        d2_at_pick[t] = min_d2[i]
        picks[t] = i
        taken[i] = True
        c = x[i]
        c_sq = x_sq[i]
        # squared distance of the new centre to every existing centre (small: n_c × D)
        cc2 = np.maximum(centres_sq[:n_c] + c_sq - 2.0 * (centres[:n_c] @ c), 0)
        centres[n_c] = c
        centres_sq[n_c] = c_sq
        maybe = 4.0 * min_d2 + tol >= cc2[owner]
        n_maybe = int(np.count_nonzero(maybe))
        if n_maybe * 4 >= n:
            # Most rows are candidates (typical early on, and in high dimension where distances
            # concentrate): a contiguous matrix-vector product over the whole pool is several
            # times faster than gathering the candidate rows first.
            d2 = x_sq + c_sq - 2.0 * (x @ c)
            better = d2 < min_d2
        else:
            cand = np.flatnonzero(maybe)
            d2 = x_sq[cand] + c_sq - 2.0 * (x[cand] @ c)
            better = np.zeros(n, dtype=bool)
            better[cand] = d2 < min_d2[cand]
            d2_full = np.empty(n, dtype=np.float32)
            d2_full[cand] = d2
            d2 = d2_full
        min_d2[better] = np.maximum(d2[better], 0)
        owner[better] = n_c
        n_c += 1
        min_d2[i] = -np.inf
        radius2[t] = max(float(min_d2.max()), 0.0)
        if progress is not None and (t % step == 0):
            progress(t / n_picks)
    final = np.maximum(min_d2, 0)
    return picks, d2_at_pick, radius2, final


def random_allowed(rng: np.random.Generator, blocked: np.ndarray) -> int:
    """One seeded-random sample index that is not `blocked` (the same draw as
    ``rng.integers(N)`` when nothing is blocked, so unconstrained runs keep their picks)."""
    if not blocked.any():
        return int(rng.integers(blocked.size))
    allowed = np.flatnonzero(~blocked)
    return int(allowed[rng.integers(allowed.size)])


def constrained_initial(initial, ctx, n_pool: int, budget: int, method: str) -> np.ndarray:
    """`resolve_initial` for a method that also takes --include/--exclude: earlier-round picks
    (never picked again) may not be included again, and the new picks must still fit in what
    is neither earlier, included nor excluded."""
    from ..errors import BilafError

    initial = resolve_initial(initial, n_pool, budget, method)
    if initial.size and ctx.include.size:
        both = np.intersect1d(initial, ctx.include)
        if both.size:
            raise BilafError(f"{method}: {both.size} --include indices are also --initial-indices (first: {int(both[0])}); "
                             "earlier picks are never picked again — remove them from the include file")
    taken = np.zeros(n_pool, dtype=bool)
    taken[initial] = True
    taken[ctx.exclude] = True
    taken[ctx.include] = True
    free = n_pool - int(taken.sum())
    new = budget - ctx.include.size
    if new > free:
        raise BilafError(f"{method}: {new} new picks do not fit in the {free} samples that are neither --initial-indices, "
                         "--include nor --exclude; lower the budget or pass fewer indices")
    return initial


def uncovered_clusters(assign: np.ndarray, n_clusters: int, covered_by: np.ndarray, n_wanted: int) -> np.ndarray:
    """The `n_wanted` largest clusters (ties: lower id) that hold none of the samples
    `covered_by` (the includes), as a sorted array of cluster ids.  With k = B clusters and
    B − |include| wanted there are always enough: |include| samples cover at most |include|."""
    sizes = np.bincount(assign, minlength=n_clusters)
    free = np.ones(n_clusters, dtype=bool)
    free[assign[covered_by]] = False
    ids = np.flatnonzero(free)
    ids = ids[np.lexsort((ids, -sizes[ids]))][:n_wanted]
    return np.sort(ids)


def ip_topk(database: np.ndarray, queries: np.ndarray, k: int, *, chunk: int = 16384):
    """Exact top-k rows of `database` by inner product for each query (faiss IndexFlatIP).
    Returns (similarities (Q, k) descending, ids (Q, k))."""
    database = np.ascontiguousarray(database, dtype=np.float32)
    k = int(min(k, database.shape[0]))
    index = flat_index(database.shape[1], k=k, metric="ip")
    index.add(database)
    sims = np.empty((queries.shape[0], k), dtype=np.float32)
    ids = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], chunk):
        q = np.ascontiguousarray(queries[start : start + chunk], dtype=np.float32)
        s, i = index.search(q, k)
        sims[start : start + chunk] = s
        ids[start : start + chunk] = i
    return sims, ids


def kmeanspp_seeds(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): a uniform first centre, then each next
    centre drawn with probability proportional to its squared distance to the nearest chosen one.
    Returns k distinct row indices.  Uses the pruned updates of `farthest_first`."""

    def d2_sample(min_d2):
        w = np.maximum(min_d2, 0).astype(np.float64)
        cum = np.cumsum(w)
        if cum[-1] <= 0:  # only exact duplicates of the centres are left: any unchosen row
            return int(np.argmax(min_d2))
        return int(min(np.searchsorted(cum, rng.random() * cum[-1], side="right"), len(cum) - 1))

    first = int(rng.integers(x.shape[0]))
    picks, _, _, _ = farthest_first(x, k, first=first, choose=d2_sample)
    return picks


def kmeanspp_init(x: np.ndarray, k: int, rng: np.random.Generator, *, seed_sample: int | None = None) -> np.ndarray:
    """k initial centroids (k, D) by k-means++ seeding.

    Seeding is sequential (one pass over the data per centre, memory-bound), so for large k it
    runs on a uniform random subsample of ``seed_sample`` rows (default max(8k, 4096)), as
    scikit-learn's MiniBatchKMeans does; Lloyd's iterations then use the whole pool.
    """
    n, k = x.shape[0], int(k)
    m = max(8 * k, 4096) if seed_sample is None else max(int(seed_sample), k)
    if n > m:
        rows = np.sort(rng.choice(n, size=m, replace=False))
        return x[rows[kmeanspp_seeds(x[rows], k, rng)]]
    return x[kmeanspp_seeds(x, k, rng)]


def lloyd(x: np.ndarray, init: np.ndarray, *, niter: int, seed: int, max_points_per_centroid: int = 256):
    """faiss Lloyd iterations from the centroids `init`.  Returns (centroids (k, D), objective):
    the objective is faiss's sum of squared distances at the last assignment step (over its
    training sample when the pool exceeds k·max_points_per_centroid)."""
    faiss = faiss_module()
    x = np.ascontiguousarray(x, dtype=np.float32)
    k = init.shape[0]
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=int(niter),
        nredo=1,
        seed=int(seed) % (2**31 - 1),
        gpu=gpu_count() > 0,
        max_points_per_centroid=max_points_per_centroid,
        # only a warning threshold in faiss; small pools with k close to N are legitimate here
        min_points_per_centroid=1,
        verbose=False,
    )
    km.train(x, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
    obj = float(km.obj[-1]) if len(km.obj) else float("inf")
    return km.centroids.copy(), obj


def assign_nearest(x: np.ndarray, centroids: np.ndarray):
    """Nearest centroid of every row and the distance to it (exact faiss 1-NN)."""
    dist, ids = knn(centroids, x, 1)
    return ids[:, 0].astype(np.int64), dist[:, 0]


def kmeans_pp(x: np.ndarray, k: int, *, seed: int, niter: int = 20, max_points_per_centroid: int = 256,
              seed_sample: int | None = None):
    """faiss k-means (Lloyd) started from k-means++ seeds instead of faiss's uniform random ones.

    faiss's random initialisation regularly leaves well-separated groups without a centroid and
    splits others; k-means++ seeding (see `kmeanspp_init`) makes that unlikely.  Same return
    values as `kmeans`: (centroids (k, D), assignment (N,), distance to own centroid (N,)).
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    rng = np.random.default_rng(int(seed))
    init = kmeanspp_init(x, k, rng, seed_sample=seed_sample)
    centroids, _ = lloyd(x, init, niter=niter, seed=seed, max_points_per_centroid=max_points_per_centroid)
    assign, dist = assign_nearest(x, centroids)
    return centroids, assign, dist
