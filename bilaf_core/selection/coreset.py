"""Core-set selection: greedy k-center (Sener & Savarese, "Active Learning for Convolutional Neural
Networks: A Core-Set Approach", ICLR 2018, Algorithm 1).

Starting from the already-labelled centres s⁰ (``initial_indices``; one seeded-random sample when
there are none), repeatedly add the pool sample u = argmax_i min_{j ∈ s} Δ(x_i, x_j) — the
sample farthest from its nearest centre — until B new centres are chosen.  Δ is the euclidean
distance on the features *as given* (the paper uses raw penultimate-layer activations; see
``fds`` for the variant on L2-normalised features).  This greedy is the paper's 2-approximation of
the k-center problem; its robust MIP refinement is not part of the usual baseline and is not
done here.

The running minimum distance is updated with one matrix-vector product per pick, and only for the
rows whose minimum can change (triangle-inequality test in ``_ops.farthest_first``), so B = 1000
on 60 000 samples takes seconds, not the N·B distance evaluations of a naive loop.  The public
low-budget code (UCDvision/low-budget-al ``core_set``) rebuilds a faiss index and loops over the
pool in Python for every pick; the result is the same greedy.
"""

from __future__ import annotations

import numpy as np

from . import _ops
from .base import Param, RunContext, register_method


@register_method(
    "coreset",
    summary="greedy k-center (Core-Set): repeatedly the sample farthest from all chosen ones",
    params=(
        Param("initial_indices", "indices", None, "pool indices picked in earlier rounds; they are the starting centres and are never picked again (empty = start from one random sample)"),
    ),
    include_rule="k-center starts from them: the includes (with any --initial-indices) are the starting centres and the greedy adds the farthest samples around them",
)
def select_coreset(features: np.ndarray, budget: int, ctx: RunContext, *, initial_indices=None) -> tuple[np.ndarray, dict]:
    """Greedy k-center selection.

    Parameters
    ----------
    features : (N, D) float32
        Validated pool features, used as given (euclidean distance).
    budget : int
        Number B of new picks.
    ctx : RunContext
        Seed (first centre when ``initial_indices`` is empty), progress, stage timer.
    initial_indices : (K,) int or None
        Earlier picks used as starting centres; distinct, in range, B + K <= N.

    Returns
    -------
    indices : (B,) int64
        ``ctx.include`` first (they are starting centres too), then the new centres in pick order
        (the random first centre leads when there are no starting centres); never an index of
        ``ctx.exclude`` (excluded samples are still covered: they enter the cover radius).
    diagnostics : dict
        ``cover_radius`` (B,) max over the pool of the distance to the nearest centre after each
        pick, ``min_distance`` (N,) final distance of every sample to its nearest centre,
        ``distance_at_pick`` (B,) each pick's distance to the centres chosen before it (NaN for a
        random first centre).
    """
    n = features.shape[0]
    initial = _ops.constrained_initial(initial_indices, ctx, n, budget, "coreset")
    include = ctx.include
    centres = np.concatenate([initial, include])
    blocked = ctx.excluded(n)
    first = None if centres.size else _ops.random_allowed(ctx.rng(0), blocked)
    with ctx.stage("k-center"):
        picks, d2_at_pick, radius2, min_d2 = _ops.farthest_first(
            features, budget - include.size, initial=centres, first=first,
            progress=lambda f: ctx.progress(f, "k-center greedy"), blocked=blocked if blocked.any() else None,
        )
    # the includes lead, with NaN for the per-pick values they have no step of their own for
    lead = np.full(include.size, np.nan, dtype=np.float32)
    return np.concatenate([include, picks]), {
        "cover_radius": np.concatenate([lead, np.sqrt(radius2)]),
        "min_distance": np.sqrt(min_d2),
        "distance_at_pick": np.concatenate([lead, np.sqrt(d2_at_pick)]),
    }
