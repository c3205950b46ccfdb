"""The UMAP map: shape, determinism, cache keyed by content + params, progress, cancel, atomicity."""

import json
import os

import numpy as np
import pytest

from bilaf_core import projection
from bilaf_core.errors import BilafError, Cancelled


def _blobs(n_per=80, centres=4, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(0, 6, (centres, dim))
    x = np.concatenate([rng.normal(ci, 1.0, (n_per, dim)) for ci in c]).astype(np.float32)
    labels = np.repeat(np.arange(centres), n_per)
    return x, labels


def _feature_dir(tmp_path, x):
    d = tmp_path / "fs"
    d.mkdir()
    np.save(d / "features.npy", x)
    (d / "meta.json").write_text(json.dumps({"n": int(x.shape[0]), "dim": int(x.shape[1])}))
    return d


def test_map_separates_blobs_and_is_deterministic():
    x, labels = _blobs()
    a, timings = projection.compute_projection(x, seed=3)
    b, _ = projection.compute_projection(x, seed=3)
    assert a.shape == (x.shape[0], 2) and a.dtype == np.float32
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert {"pca", "neighbours", "umap"} <= set(timings)
    # each blob's points lie nearer their own blob's centre than any other blob's on the map
    centres = np.stack([a[labels == c].mean(axis=0) for c in range(4)])
    nearest = np.argmin(((a[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).mean() > 0.95


def test_progress_is_monotone_and_reaches_one():
    x, _ = _blobs(n_per=40)
    seen = []
    projection.compute_projection(x, progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions[-1] == 1.0
    assert all(b >= a - 1e-9 for a, b in zip(fractions, fractions[1:]))
    assert any("epoch" in m for _, m in seen)


def test_cancel_propagates_from_the_layout_loop(tmp_path):
    x, _ = _blobs(n_per=60)
    d = _feature_dir(tmp_path, x)

    def progress(fraction, message):
        if "epoch" in message and fraction > 0.5:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        projection.project_feature_set(d, progress=progress)
    # nothing cached, no stray temporary files
    assert projection.load_projection(d) is None
    leftovers = [p.name for p in (d / projection.PROJECTION_DIR).glob("*")] if (d / projection.PROJECTION_DIR).exists() else []
    assert leftovers == []


def test_cache_is_keyed_by_content_and_params(tmp_path):
    x, _ = _blobs(n_per=40)
    d = _feature_dir(tmp_path, x)
    assert projection.load_projection(d) is None
    first = projection.project_feature_set(d)
    assert projection.load_projection(d) is not None
    info = projection.projection_info(d)
    assert info["n"] == x.shape[0] and info["params"]["n_neighbors"] == 15
    # read back from the cache: the progress says so and the array is identical
    messages = []
    again = projection.project_feature_set(d, progress=lambda f, m: messages.append(m))
    np.testing.assert_array_equal(first, again)
    assert messages == ["map read from cache"]
    # other params -> another entry
    assert projection.load_projection(d, min_dist=0.5) is None
    # changed content -> the digest changes, the old map is not served
    x2 = x.copy()
    x2[0, 0] += 1.0
    np.save(d / "features.npy", x2)
    os.utime(d / "features.npy", ns=(1, 1))  # a new stat stamp even on coarse-mtime filesystems
    assert projection.load_projection(d) is None


def test_large_pool_is_fitted_on_a_sample_and_placed(tmp_path):
    x, labels = _blobs(n_per=150)
    coords, timings = projection.compute_projection(x, fit_limit=200)
    assert "placement" in timings and np.isfinite(coords).all()
    centres = np.stack([coords[labels == c].mean(axis=0) for c in range(4)])
    nearest = np.argmin(((coords[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert (nearest == labels).mean() > 0.9


def test_tiny_pools_and_bad_params():
    coords, _ = projection.compute_projection(np.eye(3, dtype=np.float32))
    assert coords.shape == (3, 2)
    coords, _ = projection.compute_projection(np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32))
    assert coords.shape == (12, 2) and np.isfinite(coords).all()
    with pytest.raises(BilafError, match="n_neighbors"):
        projection.resolve_params(n_neighbors=1)
    with pytest.raises(BilafError, match="does not take"):
        projection.resolve_params(perplexity=30)
    with pytest.raises(BilafError, match="NaN"):
        projection.compute_projection(np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32))


def test_missing_features_file_says_what_to_do(tmp_path):
    with pytest.raises(BilafError, match="extract or import"):
        projection.project_feature_set(tmp_path)


def test_isolated_projection_runs_in_a_child_and_caches_the_same_map(tmp_path):
    x, _ = _blobs(n_per=50)
    d = _feature_dir(tmp_path, x)
    seen = []
    coords = projection.project_feature_set(d, isolate=True, progress=lambda f, m: seen.append((f, m)))
    assert coords.shape == (x.shape[0], 2)
    assert seen and seen[-1][0] == 1.0 and any("epoch" in m for _, m in seen)  # relayed from the child
    np.testing.assert_array_equal(coords, projection.load_projection(d))
    np.testing.assert_array_equal(coords, projection.compute_projection(x)[0])  # same map as in-process


def test_isolated_projection_reports_bad_input_and_cancels(tmp_path):
    d = tmp_path / "fs"
    d.mkdir()
    np.save(d / "features.npy", np.full((20, 4), np.nan, dtype=np.float32))
    with pytest.raises(BilafError):
        projection.project_feature_set(d, isolate=True)
    x, _ = _blobs(n_per=60)
    (tmp_path / "b").mkdir()
    d2 = _feature_dir(tmp_path / "b", x)

    def progress(fraction, message):
        if "epoch" in message:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        projection.project_feature_set(d2, isolate=True, progress=progress)
    # The child's progress lines reach us through a pipe: on a busy machine a small map can be
    # finished and saved before we read its first "epoch" line and interrupt it.  Either way no
    # half-written file is left, and a map that is there is the complete one.
    assert not list(d2.rglob(".tmp-*"))
    left = projection.load_projection(d2)
    if left is not None:
        np.testing.assert_array_equal(left, projection.compute_projection(x)[0])


def test_quick_layout_is_immediate_cached_and_separates_blobs(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.3, (200, 16)) for c in (np.eye(16)[0] * 6, np.eye(16)[1] * 6)]).astype(np.float32)
    np.save(tmp_path / "features.npy", x)
    coords = projection.load_or_make_quick_layout(tmp_path)
    assert coords.shape == (400, 2) and coords.dtype == np.float32
    assert projection.quick_layout_path(tmp_path).is_file()
    np.testing.assert_array_equal(projection.load_or_make_quick_layout(tmp_path), coords)  # read back, same
    a, b = coords[:200].mean(axis=0), coords[200:].mean(axis=0)
    assert np.linalg.norm(a - b) > 3 * coords[:200].std(axis=0).max()  # the two blobs lie apart


def test_layout_epochs_are_fitted_to_the_pool():
    assert projection.layout_epochs(1_000) == 500
    assert projection.layout_epochs(10_000) == 200  # UMAP's own default would be 500 here
    assert projection.resolve_params(n_epochs=50)["n_epochs"] == 50
    with pytest.raises(BilafError, match="n_epochs"):
        projection.resolve_params(n_epochs=3)


def test_child_caches_every_numba_kernel(tmp_path):
    """The map's child makes numba cache all kernels (UMAP marks few cache=True): a kernel
    compiled there leaves cache files in NUMBA_CACHE_DIR."""
    import subprocess
    import sys

    module = tmp_path / "kernel_mod.py"
    module.write_text("import numba\n\n@numba.njit\ndef twice(x):\n    return 2 * x\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from bilaf_core.projection import _cache_numba_kernels; "
            "_cache_numba_kernels(); import kernel_mod; assert kernel_mod.twice(3) == 6")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(projection._PROJECT_ROOT))
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env, timeout=300)
    assert list((tmp_path / "cache").rglob("*.nbi")), "numba left no cache index"
