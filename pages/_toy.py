"""The Learn page's toy pool: seeded Gaussian blobs in the plane plus uniform noise points.

Selection methods do not see the 2-D points directly: they see *random Fourier features* of them,
256-D vectors whose dot products approximate a Gaussian kernel of the planar distance
(Rahimi & Recht, 2007).  That mimics what a backbone's features look like: near points are
near-parallel, far points (other classes) near-orthogonal, and the pool spans much of the unit
sphere.  On the raw 2-D points lifted into 3-D instead, ActiveFT's diversity term (which pushes
centroids apart on the sphere) drives its centroids onto the outliers at the rim — a geometry
no real feature set has.  BiLAF's euclidean distances on these features grow monotonically with
the planar distance up to a few blob widths, so every drawn step reads naturally in the plane.

ActiveFT's centroids are vectors in feature space; :meth:`ToyPool.locate` draws one at the
similarity-weighted mean position of the samples it is most similar to.  No selection logic lives
here.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ToyPool:
    xy: np.ndarray  # (N, 2) points as drawn
    blob: np.ndarray  # (N,) generating blob, -1 for a uniform noise point (never shown to methods)
    features: np.ndarray  # (N, FEATURE_DIM) float32: what the selection methods receive

    def locate(self, vectors: np.ndarray, temperature: float = 0.01) -> np.ndarray:
        """Plane positions (…, 2) of feature-space vectors (…, D): the softmax(similarity / t)
        weighted mean of the pool's points."""
        vectors = np.asarray(vectors, dtype=np.float64)
        flat = vectors.reshape(-1, vectors.shape[-1])
        sims = flat @ self.features.T.astype(np.float64)
        sims /= np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
        weights = np.exp((sims - sims.max(axis=1, keepdims=True)) / temperature)
        weights /= weights.sum(axis=1, keepdims=True)
        return (weights @ self.xy.astype(np.float64)).reshape(*vectors.shape[:-1], 2).astype(np.float32)

    @property
    def n(self) -> int:
        return int(self.xy.shape[0])


def toy_pool(*, n_blobs: int = 6, per_blob: int = 90, noise_fraction: float = 0.08, spread: float = 0.9, seed: int = 0) -> ToyPool:
    rng = np.random.default_rng([seed, 2024])
    # blob centres on a jittered ring so blobs touch without overlapping completely
    angles = np.linspace(0, 2 * np.pi, n_blobs, endpoint=False) + rng.uniform(-0.25, 0.25, n_blobs)
    radii = rng.uniform(3.5, 5.5, n_blobs)
    centres = np.c_[radii * np.cos(angles), radii * np.sin(angles)]
    sizes = np.maximum(10, (per_blob * rng.uniform(0.6, 1.4, n_blobs)).astype(int))
    parts = [rng.normal(c, spread * rng.uniform(0.7, 1.3), (s, 2)) for c, s in zip(centres, sizes)]
    blob = [np.full(s, b) for b, s in enumerate(sizes)]
    n_noise = int(round(noise_fraction * sizes.sum()))
    if n_noise:
        lim = np.abs(np.concatenate(parts)).max() + spread
        parts.append(rng.uniform(-lim, lim, (n_noise, 2)))
        blob.append(np.full(n_noise, -1))
    xy = np.concatenate(parts)
    order = rng.permutation(xy.shape[0])  # pool order carries no information
    xy, blob = xy[order], np.concatenate(blob)[order]
    return ToyPool(xy=xy.astype(np.float32), blob=blob.astype(np.int64), features=fourier_features(xy, bandwidth=spread * 1.1))


#: dimension of the toy pool's features
FEATURE_DIM = 256


def fourier_features(xy: np.ndarray, *, bandwidth: float, dim: int = FEATURE_DIM, seed: int = 5) -> np.ndarray:
    """sqrt(2/D) cos(W x + b), W ~ N(0, 1/bandwidth²): dot products ≈ exp(-|x-y|² / 2 bandwidth²)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 1.0 / bandwidth, (2, dim))
    b = rng.uniform(0.0, 2 * np.pi, dim)
    return (np.sqrt(2.0 / dim) * np.cos(np.asarray(xy, dtype=np.float64) @ w + b)).astype(np.float32)
