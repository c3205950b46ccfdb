"""Random selection: the baseline every active-finetuning paper reports.

B pool indices drawn uniformly without replacement from a generator seeded by the run's seed, so
the same seed always gives the same picks (the papers average several seeds; pass different
``--seed`` values for that).
"""

from __future__ import annotations

import numpy as np

from .base import RunContext, register_method


@register_method(
    "random",
    summary="uniform random sample without replacement (seeded)",
    params=(),
    include_rule="the includes are kept and the rest of the budget is drawn uniformly from the samples neither included nor excluded",
)
def select_random(features: np.ndarray, budget: int, ctx: RunContext) -> tuple[np.ndarray, dict]:
    """Draw ``budget`` distinct pool indices uniformly at random.

    Parameters
    ----------
    features : (N, D) float32
        Only its length is used: random selection ignores the features.
    budget : int
        Number of picks, 1 <= budget <= N.
    ctx : RunContext
        Supplies the seeded generator.

    Returns
    -------
    indices : (budget,) int64
        Distinct indices: ``ctx.include`` first, then the draws (never from ``ctx.exclude``).
    diagnostics : dict
        Empty: there is nothing to explain about a uniform draw.
    """
    n = features.shape[0]
    with ctx.stage("sample"):
        blocked = ctx.blocked(n)
        if blocked.any():
            free = np.flatnonzero(~blocked)
            drawn = free[ctx.rng(0).choice(free.size, size=budget - ctx.include.size, replace=False)]
            picks = np.concatenate([ctx.include, drawn])
        else:
            picks = ctx.rng(0).choice(n, size=budget, replace=False)
    return picks.astype(np.int64), {}
