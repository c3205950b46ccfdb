"""UMAP 2-D map of a feature set, computed once and cached on disk beside the features.

Pipeline (each step reports progress and may be cancelled through the progress callback):

1. L2-normalise the rows (the selection methods compare features by cosine geometry, so the map
   should too) and reduce to ``pca_dims`` dimensions with a randomized PCA;
2. exact k nearest neighbours with faiss, in chunks (pynndescent would be JIT-compiled on first
   use, which costs ~30 s on two cores; faiss answers a 60 000-point pool in a few seconds);
3. UMAP's fuzzy graph and layout optimisation from those precomputed neighbours;
4. pools larger than ``fit_limit`` are fitted on a seeded random subsample and every other point
   is placed at the distance-weighted mean of its nearest fitted neighbours, so a 1 M pool maps
   in minutes, not hours.

``project_feature_set(..., isolate=True)`` runs all of it in a child Python process at a lower
CPU priority and relays its progress.  The app uses that: UMAP's numba kernels hold the GIL for
a whole layout epoch, which stalls every other thread of the server (page reruns measured 30x
slower while a map was being laid out in-process); a child process leaves the server's
interpreter free.  Cancelling interrupts the child (SIGINT), whose atomic writes then clean up.

The result is cached as ``<feature_dir>/projections/umap-<key>.npy`` (+ a ``.json`` beside it),
where ``key`` hashes the features' content digest and the parameters: a changed feature file or a
changed parameter gives a new map, the same ones are read back in milliseconds.  Writes are atomic.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .atomic import atomic_save_npy, atomic_write_json
from .errors import BilafError

ProgressFn = Callable[[float, str], None]

#: Default parameters of the map (UMAP's own defaults for neighbours / min_dist).
DEFAULT_PARAMS: dict[str, Any] = {
    "n_neighbors": 15,
    "min_dist": 0.1,
    "pca_dims": 50,
    "normalize": True,
    "fit_limit": 100_000,
    "seed": 0,
    "n_epochs": None,  # None: fitted to the pool's size (see layout_epochs)
}


def layout_epochs(n_fit: int) -> int:
    """Layout epochs for a map of `n_fit` points: UMAP's own default is 500 up to 10 000 points
    and 200 above; 200 already settles a 10 000-point map (the layout is dominated by the first
    epochs, later ones refine positions within clusters), so 500 is kept only for small pools,
    where it costs a second or two.  On 10 000 points it is 2.5x less layout time."""
    return 500 if n_fit <= 2_000 else 200

PROJECTION_DIR = "projections"
_DIGEST_FILE = ".features-digest.json"
_FEATURES_FILE = "features.npy"


# --------------------------------------------------------------------------- digests and keys


def array_digest(features: np.ndarray) -> str:
    """Content digest of an array (shape, dtype and bytes), hashed in 64 MB blocks."""
    features = np.ascontiguousarray(features)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{features.shape}|{features.dtype.str}".encode())
    flat = features.reshape(-1).view(np.uint8)
    block = 64 << 20
    for start in range(0, flat.size, block):
        h.update(flat[start : start + block])
    return h.hexdigest()


def features_digest(feature_dir: str | os.PathLike) -> str:
    """Digest of ``<feature_dir>/features.npy``, memoised beside it keyed by the file's size and
    modification time, so repeated look-ups do not re-read hundreds of MB."""
    feature_dir = Path(feature_dir)
    path = feature_dir / _FEATURES_FILE
    if not path.is_file():
        raise BilafError(f"{feature_dir} holds no {_FEATURES_FILE}; extract or import features first")
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    memo = feature_dir / _DIGEST_FILE
    try:
        saved = json.loads(memo.read_text())
        if saved.get("stat") == stamp and isinstance(saved.get("digest"), str):
            return saved["digest"]
    except (OSError, ValueError):
        pass
    digest = array_digest(np.load(path, mmap_mode="r"))
    try:
        atomic_write_json(memo, {"stat": stamp, "digest": digest})
    except OSError:  # read-only feature folder: fine, just slower next time
        pass
    return digest


def resolve_params(**params: Any) -> dict[str, Any]:
    """Defaults filled in and checked; raise BilafError naming a bad parameter."""
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise BilafError(f"projection does not take {', '.join(unknown)}; its options: {', '.join(DEFAULT_PARAMS)}")
    out = dict(DEFAULT_PARAMS)
    out.update({k: v for k, v in params.items() if v is not None})
    try:
        out["n_neighbors"] = int(out["n_neighbors"])
        out["min_dist"] = float(out["min_dist"])
        out["pca_dims"] = int(out["pca_dims"])
        out["normalize"] = bool(out["normalize"])
        out["fit_limit"] = int(out["fit_limit"])
        out["seed"] = int(out["seed"])
        out["n_epochs"] = None if out["n_epochs"] is None else int(out["n_epochs"])
    except (TypeError, ValueError) as exc:
        raise BilafError(f"projection parameter has the wrong type: {exc}") from None
    if out["n_neighbors"] < 2:
        raise BilafError(f"projection n_neighbors must be >= 2; got {out['n_neighbors']}")
    if not 0.0 <= out["min_dist"] <= 1.0:
        raise BilafError(f"projection min_dist must be within [0, 1]; got {out['min_dist']}")
    if out["pca_dims"] < 2:
        raise BilafError(f"projection pca_dims must be >= 2; got {out['pca_dims']}")
    if out["n_epochs"] is not None and out["n_epochs"] < 10:
        raise BilafError(f"projection n_epochs must be >= 10 (or empty: fitted to the pool); got {out['n_epochs']}")
    if out["fit_limit"] < 100:
        raise BilafError(f"projection fit_limit must be >= 100; got {out['fit_limit']}")
    return out


def projection_key(digest: str, params: dict[str, Any]) -> str:
    text = json.dumps({"digest": digest, "params": resolve_params(**params)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def projection_paths(feature_dir: str | os.PathLike, **params: Any) -> tuple[Path, Path]:
    """(coordinates .npy, metadata .json) of the cached map for these parameters."""
    key = projection_key(features_digest(feature_dir), params)
    base = Path(feature_dir) / PROJECTION_DIR
    return base / f"umap-{key}.npy", base / f"umap-{key}.json"


# --------------------------------------------------------------------------- computing


class _Stage:
    """Maps a stage's own 0..1 progress onto a slice [lo, hi] of the overall progress."""

    def __init__(self, progress: ProgressFn | None, lo: float, hi: float):
        self.progress, self.lo, self.hi = progress, lo, hi

    def __call__(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(self.lo + (self.hi - self.lo) * min(max(fraction, 0.0), 1.0), message)


class _EpochStream:
    """A file-like sink for UMAP's tqdm bar (formatted as ``n/total``) that forwards epoch
    progress to our callback.  An exception from the callback (Cancelled) propagates out of
    UMAP's epoch loop; afterwards the stream goes quiet so tqdm's clean-up cannot raise again."""

    _pattern = re.compile(r"(\d+)/(\d+)")

    def __init__(self, stage: _Stage):
        self.stage = stage
        self.failed = False

    def write(self, text: str) -> int:
        if not self.failed:
            found = self._pattern.findall(text)
            if found:
                n, total = map(int, found[-1])
                try:
                    self.stage(n / max(total, 1), f"laying out the map: epoch {n}/{total}")
                except BaseException:
                    self.failed = True
                    raise
        return len(text)

    def flush(self) -> None:
        pass


def _reduce(features: np.ndarray, params: dict[str, Any], stage: _Stage) -> np.ndarray:
    x = np.asarray(features, dtype=np.float32)
    if params["normalize"]:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    stage(0.1, "reducing dimensions (PCA)")
    dims = min(params["pca_dims"], x.shape[0], x.shape[1])
    if dims >= x.shape[1]:
        return np.ascontiguousarray(x - x.mean(axis=0), dtype=np.float32)
    from sklearn.decomposition import PCA

    reduced = PCA(dims, svd_solver="randomized", random_state=params["seed"]).fit_transform(x)
    stage(1.0, "reduced dimensions")
    return np.ascontiguousarray(reduced, dtype=np.float32)


def _knn(database: np.ndarray, queries: np.ndarray, k: int, stage: _Stage, chunk: int = 4096):
    import faiss

    index = faiss.IndexFlatL2(database.shape[1])
    index.add(np.ascontiguousarray(database, dtype=np.float32))
    n = queries.shape[0]
    dists = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        d2, i = index.search(np.ascontiguousarray(queries[start : start + chunk]), k)
        dists[start : start + chunk] = np.sqrt(np.maximum(d2, 0))
        ids[start : start + chunk] = i
        stage(min(start + chunk, n) / n, f"finding {k - 1} nearest neighbours: {min(start + chunk, n)}/{n}")
    return ids, dists


def compute_projection(
    features: np.ndarray,
    *,
    progress: ProgressFn | None = None,
    **params: Any,
) -> tuple[np.ndarray, dict[str, float]]:
    """Arrays in, arrays out: the (N, 2) float32 UMAP map of `features` and stage timings."""
    from .selection.base import validate_features

    params = resolve_params(**params)
    features = validate_features(features)
    n = features.shape[0]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    reduced = _reduce(features, params, _Stage(progress, 0.0, 0.08))
    timings["pca"] = time.perf_counter() - t0
    if n < 4:  # UMAP needs a neighbourhood; a handful of points is shown on its PCA plane
        coords = np.zeros((n, 2), dtype=np.float32)
        coords[:, : min(2, reduced.shape[1])] = reduced[:, :2]
        _Stage(progress, 0.0, 1.0)(1.0, "map ready")
        return coords, timings

    rng = np.random.default_rng([params["seed"], 7])
    if n > params["fit_limit"]:
        fit_rows = np.sort(rng.choice(n, size=params["fit_limit"], replace=False))
    else:
        fit_rows = np.arange(n)
    fit = reduced[fit_rows]
    k = min(params["n_neighbors"], fit.shape[0] - 1)

    t = time.perf_counter()
    knn_ids, knn_dists = _knn(fit, fit, k + 1, _Stage(progress, 0.08, 0.25))
    knn_ids, knn_dists = knn_ids[:, : k + 1], knn_dists[:, : k + 1]
    timings["neighbours"] = time.perf_counter() - t

    t = time.perf_counter()
    _Stage(progress, 0.25, 0.3)(0.0, "building the neighbour graph")
    import umap  # imported lazily: numba start-up is slow and most pages never need it

    stream = _EpochStream(_Stage(progress, 0.3, 0.95 if fit.shape[0] < n else 0.99))
    reducer = umap.UMAP(
        n_neighbors=k + 1,
        n_epochs=params["n_epochs"] or layout_epochs(fit.shape[0]),
        min_dist=params["min_dist"],
        random_state=params["seed"],
        n_jobs=1,
        precomputed_knn=(knn_ids, knn_dists, None),
        tqdm_kwds={"disable": False, "file": stream, "bar_format": "{n}/{total}\n", "mininterval": 0, "miniters": 1, "leave": True},
        verbose=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Two layouts at once on a small machine only slow each other down: run one at a time.
        with _layout_lock:
            embedded = reducer.fit_transform(fit)
    timings["umap"] = time.perf_counter() - t

    coords = np.empty((n, 2), dtype=np.float32)
    coords[fit_rows] = embedded
    if fit_rows.size < n:
        t = time.perf_counter()
        rest = np.setdiff1d(np.arange(n), fit_rows)
        place = _Stage(progress, 0.95, 1.0)
        ids, dists = _knn(fit, reduced[rest], 5, place)
        weights = 1.0 / np.maximum(dists, 1e-6)
        weights /= weights.sum(axis=1, keepdims=True)
        coords[rest] = np.einsum("rk,rkc->rc", weights, embedded[ids]).astype(np.float32)
        timings["placement"] = time.perf_counter() - t
    _Stage(progress, 0.0, 1.0)(1.0, "map ready")
    return coords, timings


_layout_lock = threading.Lock()


# --------------------------------------------------------------------------- a quick layout meanwhile

#: rows used to fit the quick layout's 2-D PCA (every row is then projected)
QUICK_FIT_ROWS = 20_000


def quick_layout(features: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """A 2-D PCA of the L2-normalised features: (N, 2) float32, in well under a second for
    10 000 points.  Not UMAP — clusters overlap more — but it is there at once, so the app can draw
    the pool and its picks while the UMAP map is computed, then replace it."""
    x = np.asarray(features, dtype=np.float32)
    n = x.shape[0]
    rng = np.random.default_rng([seed, 13])
    rows = np.sort(rng.choice(n, size=QUICK_FIT_ROWS, replace=False)) if n > QUICK_FIT_ROWS else np.arange(n)
    fit = x[rows] / np.maximum(np.linalg.norm(x[rows], axis=1, keepdims=True), 1e-12)
    mean = fit.mean(axis=0)
    if n < 3 or x.shape[1] < 2:
        out = np.zeros((n, 2), dtype=np.float32)
        out[:, : min(2, x.shape[1])] = (x - x.mean(axis=0))[:, :2]
        return out
    # the top two right singular vectors of the centred fit rows (exact; D is at most a few thousand)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    axes = vt[:2].T.astype(np.float32)
    out = np.empty((n, 2), dtype=np.float32)
    for start in range(0, n, 65_536):
        block = x[start : start + 65_536]
        block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        out[start : start + 65_536] = (block - mean) @ axes
    return out


def quick_layout_path(feature_dir: str | os.PathLike) -> Path:
    return Path(feature_dir) / PROJECTION_DIR / f"pca2-{features_digest(feature_dir)[:16]}.npy"


def load_or_make_quick_layout(feature_dir: str | os.PathLike) -> np.ndarray:
    """The feature set's quick layout, cached beside it (atomic write) after the first call."""
    path = quick_layout_path(feature_dir)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        pass
    coords = quick_layout(np.load(Path(feature_dir) / _FEATURES_FILE, mmap_mode="r"))
    with contextlib.suppress(OSError):  # a read-only feature folder: recomputed next time, that is all
        atomic_save_npy(path, coords)
    return coords


# --------------------------------------------------------------------------- the cache


def load_projection(feature_dir: str | os.PathLike, **params: Any) -> np.ndarray | None:
    """The cached map for these parameters, or None when it has not been computed yet."""
    coords_path, meta_path = projection_paths(feature_dir, **params)
    if not (coords_path.is_file() and meta_path.is_file()):
        return None
    try:
        coords = np.load(coords_path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return coords


def projection_info(feature_dir: str | os.PathLike, **params: Any) -> dict | None:
    """The metadata of the cached map (params, digest, timings, created), or None."""
    _, meta_path = projection_paths(feature_dir, **params)
    try:
        return json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None


def project_feature_set(
    feature_dir: str | os.PathLike,
    *,
    progress: ProgressFn | None = None,
    isolate: bool = False,
    **params: Any,
) -> np.ndarray:
    """The (N, 2) map of a feature-set folder: read from the cache, or computed and cached —
    in this process, or with ``isolate=True`` in a child process (see the module docstring)."""
    feature_dir = Path(feature_dir)
    params = resolve_params(**params)
    cached = load_projection(feature_dir, **params)
    if cached is not None:
        if progress is not None:
            progress(1.0, "map read from cache")
        return cached
    if isolate:
        return _project_in_child(feature_dir, params, progress)
    if progress is not None:
        progress(0.0, "reading features")
    features = np.load(feature_dir / _FEATURES_FILE, mmap_mode="r")
    digest = features_digest(feature_dir)
    start = time.perf_counter()
    coords, timings = compute_projection(np.asarray(features), progress=progress, **params)
    timings["total"] = time.perf_counter() - start
    coords_path, meta_path = projection_paths(feature_dir, **params)
    atomic_save_npy(coords_path, coords)
    # The .json is written last: its presence marks a complete entry.
    atomic_write_json(
        meta_path,
        {
            "method": "umap",
            "params": params,
            "features_digest": digest,
            "n": int(coords.shape[0]),
            "timings": timings,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        indent=1,
    )
    return coords


# --------------------------------------------------------------------------- in a child process

#: niceness added to the child that computes a map: the server's page reruns come first
CHILD_NICENESS = 5
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def numba_cache_dir() -> Path:
    """Where the map's child processes cache numba's compiled code: ``$BILAF_NUMBA_CACHE``, else
    ``<workspace>/.numba-cache`` when ``$BILAF_WORKSPACE`` is set, else ``~/.cache/bilaf/numba``."""
    if os.environ.get("BILAF_NUMBA_CACHE"):
        return Path(os.environ["BILAF_NUMBA_CACHE"])
    if os.environ.get("BILAF_WORKSPACE"):
        return Path(os.environ["BILAF_WORKSPACE"]) / ".numba-cache"
    return Path.home() / ".cache" / "bilaf" / "numba"


def _project_in_child(feature_dir: Path, params: dict[str, Any], progress: ProgressFn | None) -> np.ndarray:
    """Run :func:`project_feature_set` in a child process (:mod:`bilaf_core.child`) at
    CHILD_NICENESS, relaying its progress; Cancelled from `progress` interrupts it."""
    from .child import run_in_child

    # numba's compiled kernels cached across processes (a fresh child otherwise compiles all of
    # UMAP's kernels again each time: see _cache_numba_kernels); a user's own setting wins
    env = {"NUMBA_CACHE_DIR": os.environ.get("NUMBA_CACHE_DIR") or str(numba_cache_dir())}
    run_in_child("project", {"feature_dir": str(feature_dir), "params": params}, progress, niceness=CHILD_NICENESS,
                 env=env, what="computing the map")
    coords = load_projection(feature_dir, **params)
    if coords is None:
        raise RuntimeError(f"the map's child process finished but left no map in {feature_dir / PROJECTION_DIR}")
    return coords


def _cache_numba_kernels() -> None:
    """Make numba cache every kernel compiled in this process (before umap is imported).

    UMAP marks almost none of its numba kernels ``cache=True``, so each fresh child compiled them
    all again: measured 72-84 s of a 2 000-point fit under load 12 on two cores, against 20 s with
    every kernel cached from an earlier child (bench notes in docs/app.md).  Defaulting ``cache``
    to True is safe: numba keys each cache entry by the function's source file and signature, and
    a kernel it cannot cache (a closure over dynamic globals) is just compiled, with a warning."""
    import numba

    if getattr(numba, "_bilaf_cache_patched", False):
        return
    plain_njit, plain_jit = numba.njit, numba.jit

    def njit(*args, **kwargs):
        kwargs.setdefault("cache", True)
        return plain_njit(*args, **kwargs)

    def jit(*args, **kwargs):
        kwargs.setdefault("cache", True)
        return plain_jit(*args, **kwargs)

    numba.njit, numba.jit = njit, jit
    numba._bilaf_cache_patched = True
    warnings.filterwarnings("ignore", message=".*cannot cache.*")
