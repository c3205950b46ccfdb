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


def nearest_rows(x: np.ndarray, centers: np.ndarray, *, chunk: int = DEFAULT_CHUNK):
    """For each row of `x`: index of and distance to its nearest row of `centers` (ties: the lower
    index), computed in chunks.  Also returns the second-nearest (index, distance), which callers
    use for 'nearest *other* centre' without a second pass; -1/inf when there is one centre."""
    n, k = x.shape[0], centers.shape[0]
    c_sq = sq_norms(centers)
    first_idx = np.empty(n, dtype=np.int64)
    first_dist = np.empty(n, dtype=np.float32)
    second_idx = np.full(n, -1, dtype=np.int64)
    second_dist = np.full(n, np.inf, dtype=np.float32)
    rows = np.arange(min(chunk, n))
    for start in range(0, n, chunk):
        block = pairwise_dist(x[start : start + chunk], centers, b_sq=c_sq)
        r = rows[: block.shape[0]]
        best = block.argmin(axis=1)
        first_idx[start : start + chunk] = best
        first_dist[start : start + chunk] = block[r, best]
        if k > 1:
            block[r, best] = np.inf
            second = block.argmin(axis=1)
            second_idx[start : start + chunk] = second
            second_dist[start : start + chunk] = block[r, second]
    return first_idx, first_dist, second_idx, second_dist


def flat_index(dim: int):
    """An exact L2 faiss index, on the GPU when faiss has one."""
    faiss = faiss_module()
    index = faiss.IndexFlatL2(dim)
    if gpu_count() > 0:  # pragma: no cover - CI has no GPU
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def knn(database: np.ndarray, queries: np.ndarray, k: int, *, chunk: int = 65536):
    """Exact k nearest neighbours (euclidean distances, not squared) of `queries` in `database`."""
    database = np.ascontiguousarray(database, dtype=np.float32)
    k = int(min(k, database.shape[0]))
    index = flat_index(database.shape[1])
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
