"""Fisher-kernel density matching after Gudovskiy, Hodgkinson, Yamaguchi and Tsukizawa, "Deep
Active Learning for Biased Datasets via Fisher Kernel Self-Supervision" (CVPR 2020).

The paper describes every sample by its features and the gradient of the loss with respect to
them under a pseudo-label (a Fisher-kernel descriptor), and selects pool samples whose
descriptors match those of a target set (validation / deployment images), so a biased pool is
re-balanced towards the target distribution.  Here, without a trained classifier:

1. **Pseudo-head.**  Features are L2-normalised; k-means (``head_clusters``) gives centroids,
   normalised to unit length, that act as the weights W (C × D) of a cosine classifier with
   logits z = W f / T (``temperature``).  The pseudo-label is y = argmax z (the paper's "naive
   probability maximisation" pseudo-label).
2. **Descriptor.**  The cross-entropy ℓ = −log softmax(z)_y has ∂ℓ/∂z = p − e_y, and
   z = W f / T gives ∂z/∂f = W / T, so ∇_f ℓ = Wᵀ(p − e_y) / T (see ``head_gradient``; the test
   checks it against torch.autograd).  The descriptor is [f ; ĝ] with ĝ = ∇_f ℓ / ‖∇_f ℓ‖.
   (ĝ is stored by its coordinates in an orthonormal basis of span(W), C numbers instead of D,
   since every such gradient lies in that span — same inner products, half the search cost.)
   Both halves have unit length, so the kernel k(a, b) = ⟨desc_a, desc_b⟩ = cos(f_a, f_b) +
   cos(g_a, g_b) weights feature and gradient similarity equally — the paper's code sums the
   two inner products the same way (its "Pcc" variant standardises each part first, which also
   makes their scales equal).  ĝ is computed from the ratios exp(z_j − z_runner-up), a positive
   rescaling of p − e_y, so it stays an accurate direction even where p is numerically one-hot.
3. **Target.**  ``target_features`` (M × D, e.g. unlabelled test images) get descriptors from the
   same pseudo-head; without a target the pool is its own target.
4. **Matching, as in the paper's code (``main_descr.py``, "topK" matching), re-implemented:**
   (a) if B < M the target is first reduced to B representatives by k-center greedy in
   descriptor space (the paper's code: start from a random target sample, repeatedly add the one
   least similar to the chosen ones; for unit-norm halves ‖a − b‖² = 4 − 2k(a, b), so this is
   farthest-first traversal, ``_ops.farthest_first``), else all M target samples are used;
   (b) every representative lists its top-L pool samples by kernel (``top_l``, the code's
   K = 32; raised to 2⌈B / #representatives⌉ when the target is small so that enough distinct
   candidates exist);
   (c) the candidates are ordered rank-major — all representatives' best matches first, sorted by
   kernel value, then all second-best matches, and so on — and the first B distinct pool samples
   in that order are the picks.  So every representative gets its best match before any gets a
   second one: the picks spread over the target like the target's own density.
   If fewer than B distinct candidates exist (heavy duplication), the remaining picks are the
   unpicked pool samples with the highest kernel to any representative.

Bugs noticed in the public code (gudovskiy/al-fk-self-supervision), not reproduced: when the
first B candidates contain duplicates it appends ``sortedindex_sim[augment_size + i]`` starting
from i = 1, so the candidate at position B is always skipped; it indexes past the end when the
K × #representatives list holds fewer than B distinct samples; ``torch.unique`` then re-sorts
the picks by index (their priority order is lost); and its seeds come from ``time.time()``, so
runs are not reproducible.  With no target the method selects a k-center cover of the pool in
descriptor space, since every representative's best match is itself.
"""

from __future__ import annotations

import math

import numpy as np

from . import _ops
from ..errors import BilafError
from .base import Param, RunContext, register_method, validate_features

_CHUNK = 16384


def head_gradient(f: np.ndarray, W: np.ndarray, temperature: float) -> np.ndarray:
    """∇_f of the cross-entropy of logits z = f Wᵀ / T at the pseudo-label y = argmax z.

    ℓ(f) = −z_y + log Σ_j exp(z_j), so ∂ℓ/∂z = softmax(z) − e_y and, with ∂z/∂f = W / T,
    ∇_f ℓ = Wᵀ (softmax(z) − e_y) / T.  Computed in float64; returns (N, D) float64.
    """
    z = (np.asarray(f, np.float64) @ np.asarray(W, np.float64).T) / temperature
    y = z.argmax(axis=1)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p @ np.asarray(W, np.float64) / temperature


def gradient_basis(W: np.ndarray) -> np.ndarray:
    """Orthonormal basis Q (D × r, r = min(C, D)) of a space containing every row of W.

    Every head gradient Wᵀ(p − e_y)/T is a combination of W's rows, so it is stored by its r
    coordinates ĝ Q: inner products (hence the kernel) are unchanged and the descriptor has
    D + r numbers instead of 2D, which halves the cost of every search over descriptors.
    """
    q, _ = np.linalg.qr(np.asarray(W, np.float64).T)
    return q


def descriptors(f: np.ndarray, W: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Fisher descriptors [f ; ĝ Q] (N, D + r) float32 of unit-norm features f, and pseudo-labels.

    ĝ is the direction of ``head_gradient``: p − e_y equals c · (r − e_y Σ r) with
    r_j = exp(z_j − z_(2)) for j ≠ y, r_y = 0, z_(2) the runner-up logit and c > 0 a factor that
    the normalisation drops.  The runner-up has r = 1, so r never underflows to all zeros and ĝ
    is an accurate direction at any temperature (as T → 0 it tends to W_(2) − W_y), where
    softmax itself is exactly one-hot.  ĝ is stored in the coordinates of ``gradient_basis(W)``;
    with a single head cluster the gradient is 0 and so is ĝ.
    """
    n, d = f.shape
    W64 = np.asarray(W, np.float64)
    Q = gradient_basis(W64)
    out = np.empty((n, d + Q.shape[1]), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    for s in range(0, n, _CHUNK):
        fc = np.asarray(f[s : s + _CHUNK], np.float64)
        z = fc @ W64.T / temperature
        y = z.argmax(axis=1)
        rows = np.arange(len(y))
        if z.shape[1] > 1:
            runner_up = np.partition(z, z.shape[1] - 2, axis=1)[:, -2]
            # j ≠ y has z_j <= z_(2); clipping only touches y, whose entry is overwritten next
            r = np.exp(np.minimum(z - runner_up[:, None], 0.0))
            r[rows, y] = 0.0
            r[rows, y] = -r.sum(axis=1)
        else:
            r = np.zeros_like(z)
        g = (r @ W64) @ Q
        norm = np.linalg.norm(g, axis=1, keepdims=True)
        g = np.divide(g, norm, out=np.zeros_like(g), where=norm > 0)
        out[s : s + _CHUNK, :d] = fc
        out[s : s + _CHUNK, d:] = g
        labels[s : s + _CHUNK] = y
    return out, labels


@register_method(
    "fisher",
    summary="Fisher-kernel matching: pool samples whose [feature; gradient] descriptors match a target set",
    params=(
        Param("target_features", "array", None, "(M, D) features of the images the model must serve (e.g. unlabelled test images); none = match the pool itself"),
        Param("head_clusters", "int", 10, "k-means clusters that form the pseudo-classifier whose gradients make the descriptors", minimum=2),
        Param("temperature", "float", 0.1, "softmax temperature T of the pseudo-classifier (logits = cosine / T)", minimum=0.0, exclusive_minimum=True),
        Param("top_l", "int", 32, "L: pool candidates listed per target representative (paper code: 32)", minimum=1),
    ),
    include_rule="a target representative that lists an include among its top-L matches counts as served, so the rest "
                 "of the budget goes to the representatives the includes do not match",
)
def select_fisher(features: np.ndarray, budget: int, ctx: RunContext, *, target_features=None,
                  head_clusters: int = 10, temperature: float = 0.1, top_l: int = 32) -> tuple[np.ndarray, dict]:
    """Fisher-kernel density matching.

    Parameters
    ----------
    features : (N, D) float32
        Validated pool features; L2-normalised here.
    budget : int
        Number B of picks.
    ctx : RunContext
        Seed (k-means, first representative), progress, stage timer.
    target_features : (M, D) array or None
        Target images' features in the same space as the pool.
    head_clusters, temperature, top_l
        See the module docstring.

    Returns
    -------
    indices : (B,) int64
        Picks in matching order.
    diagnostics : dict
        ``match_count`` (N,) how many target representatives list the sample among their top-L,
        ``target_coverage`` (scalar) fraction of representatives with at least one of their top-L
        picked, ``target_representatives`` (indices into the target, or the pool without one),
        ``rank_of_pick`` (B,) the match rank a pick came from (−1: filled by best kernel, −2: an
        include, listed first),
        ``pseudo_label`` (N,).
    """
    n, dim = features.shape
    if target_features is not None:
        target = validate_features(target_features, name="fisher: --target-features")
        if target.shape[1] != dim:
            raise BilafError(
                f"fisher: --target-features has {target.shape[1]} dims but the pool has {dim}; extract the "
                "target images with the same backbone and layer as the pool"
            )
    with ctx.stage("normalise"):
        x = _ops.l2_normalize(features)
        t = x if target_features is None else _ops.l2_normalize(target)
    with ctx.stage("pseudo-head"):
        ctx.progress(0.0, "k-means pseudo-head")
        k = min(head_clusters, n)
        seed = int(ctx.rng(0).integers(0, 2**31 - 1))
        centroids, _, _ = _ops.kmeans_pp(x, k, seed=seed, niter=20)
        W = _ops.l2_normalize(centroids)
    with ctx.stage("descriptors"):
        ctx.progress(0.1, "Fisher descriptors")
        pool_desc, pseudo = descriptors(x, W, temperature)
        target_desc = pool_desc if target_features is None else descriptors(t, W, temperature)[0]
    m = target_desc.shape[0]
    with ctx.stage("representatives"):
        if budget < m:
            first = int(ctx.rng(1).integers(m))
            reps, _, _, _ = _ops.farthest_first(
                target_desc, budget, first=first,
                progress=lambda f: ctx.progress(0.2 + 0.5 * f, "target representatives (k-center)"),
            )
        else:
            reps = ctx.rng(1).permutation(m).astype(np.int64)
    with ctx.stage("match"):
        ctx.progress(0.7, "top-L matches")
        n_reps = reps.size
        L = int(min(n, max(top_l, 2 * math.ceil(budget / n_reps))))
        sims, ids = _ops.ip_topk(pool_desc, target_desc[reps], L)
        # Rank-major order: column r holds every representative's r-th best match; within a column,
        # the strongest matches first (stable: ties keep the representatives' order).
        by_sim = np.argsort(-sims, axis=0, kind="stable")
        ordered = np.take_along_axis(ids, by_sim, axis=0).T.ravel()
        rank = np.repeat(np.arange(L), n_reps)
        include, blocked = ctx.include, ctx.blocked(n)
        n_new = budget - include.size
        if blocked.any():
            # Constraints: representatives an include already serves drop out, and no blocked
            # sample (excluded or included) is a candidate.
            served = np.isin(ids, include).any(axis=1)
            keep = ~served[by_sim.T.ravel()] & ~blocked[ordered]
            ordered, rank = ordered[keep], rank[keep]
        _, first_pos = np.unique(ordered, return_index=True)
        first_pos = np.sort(first_pos)[:n_new]
        picks = ordered[first_pos]
        rank_of_pick = rank[first_pos]
        if picks.size < n_new:
            # Not enough distinct candidates: the unpicked samples closest (by kernel) to any representative.
            best, _ = _ops.ip_topk(target_desc[reps], pool_desc, 1)
            free = ~blocked
            free[picks] = False
            rest = np.flatnonzero(free)
            extra = rest[np.argsort(-best[rest, 0], kind="stable")[: n_new - picks.size]]
            picks = np.concatenate([picks, extra])
            rank_of_pick = np.concatenate([rank_of_pick, np.full(extra.size, -1)])
        picks = np.concatenate([include, picks])
        rank_of_pick = np.concatenate([np.full(include.size, -2), rank_of_pick])
        picked = np.zeros(n, dtype=bool)
        picked[picks] = True
    return picks.astype(np.int64), {
        "match_count": np.bincount(ids.ravel(), minlength=n).astype(np.int64),
        "target_coverage": float(picked[ids].any(axis=1).mean()),
        "target_representatives": reps.astype(np.int64),
        "rank_of_pick": rank_of_pick.astype(np.int64),
        "pseudo_label": pseudo,
    }
