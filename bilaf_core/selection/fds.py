"""FDS: farthest-first traversal on the unit sphere, the "FDS" baseline of ActiveFT (Xie et al.,
"Active Finetuning", CVPR 2023, Table 1; farthest distance sampling).

How it differs from ``coreset`` on purpose:

* features are L2-normalised first, and distances are cosine-consistent: on unit vectors
  ‖a − b‖² = 2 − 2·cos(a, b), so "farthest in euclidean distance" is "least cosine similar";
  the diagnostics report the cosine distance 1 − cos = ‖a − b‖²/2;
* it is one-shot: it always starts from a single seeded-random sample and takes no initial set
  (``coreset`` is the multi-round k-center that starts from earlier picks, on raw features).

Each step adds the sample whose cosine distance to its nearest chosen sample is largest.  The
traversal uses ``_ops.farthest_first`` (one matrix-vector product per pick, exact
triangle-inequality pruning).
"""

from __future__ import annotations

import numpy as np

from . import _ops
from .base import RunContext, register_method


@register_method(
    "fds",
    summary="farthest-first traversal (cosine) from one random sample, on L2-normalised features",
    params=(),
    include_rule="the traversal starts from them instead of one random sample and adds the samples farthest from them",
)
def select_fds(features: np.ndarray, budget: int, ctx: RunContext) -> tuple[np.ndarray, dict]:
    """Farthest distance sampling.

    Parameters
    ----------
    features : (N, D) float32
        Validated pool features; L2-normalised here.
    budget : int
        Number B of picks.
    ctx : RunContext
        Seed (the random start), progress, stage timer.

    Returns
    -------
    indices : (B,) int64
        Picks in traversal order; ``indices[0]`` is the random start — or ``ctx.include``
        first, when given, as the starting set (NaN diagnostics); never an excluded index.
    diagnostics : dict
        ``min_distance_at_pick`` (B,) cosine distance of each pick to its nearest earlier pick
        (NaN for the start; non-increasing afterwards), ``cover_radius`` (B,) largest cosine
        distance from any sample to its nearest pick after each pick.
    """
    with ctx.stage("normalise"):
        x = _ops.l2_normalize(features)
    include = ctx.include
    blocked = ctx.excluded(x.shape[0])
    start = None if include.size else _ops.random_allowed(ctx.rng(0), blocked)
    with ctx.stage("traversal"):
        picks, d2_at_pick, radius2, _ = _ops.farthest_first(
            x, budget - include.size, initial=include if include.size else None, first=start,
            progress=lambda f: ctx.progress(f, "farthest-first traversal"), blocked=blocked if blocked.any() else None,
        )
    lead = np.full(include.size, np.nan, dtype=np.float32)  # includes: no traversal step of their own
    return np.concatenate([include, picks]), {
        "min_distance_at_pick": np.concatenate([lead, d2_at_pick / 2.0]).astype(np.float32),
        "cover_radius": np.concatenate([lead, radius2 / 2.0]).astype(np.float32),
    }
