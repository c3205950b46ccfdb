"""BiLAF: Bi-Level Active Finetuning (Lu et al., "Boundary Matters", NeurIPS 2024).

Stage 1 picks K *core* samples with ActiveFT (or takes them from the caller).  Stage 2 treats
each core as a pseudo-class centre and spends the rest of the budget on *boundary* samples:

1. **Assignment.** Every sample joins its nearest core (euclidean on the features as given).
2. **Denoising** (per cluster of n ≥ 10 members).  Ring 1 is the r = max(1, ⌊p_in·n⌋) members
   nearest the core; each later ring adds the r not-yet-ringed members with the smallest mean
   distance to their k nearest members of the grown set (a density-driven growth outwards).
   The last-added ⌊p_rm·n⌋ members are dropped as noise.
3. **Budget split.** The budget B (cores included) is divided over clusters in proportion to
   their denoised size — largest remainder, every cluster keeps its core (≥ 1 pick) and never
   gets more picks than members; what a cluster cannot use is redistributed.
4. **Boundary picks.** Per cluster of n members and b picks: start from the core; repeatedly
   drop the ⌊n/b⌋ candidates nearest the last pick, multiply the penalty of the last pick's
   opponent cluster by δ (`opponent_penalty`), and pick the candidate with the lowest boundary
   score (outer·penalty − inner) / max(outer, inner), where inner = mean distance to the
   cluster's members and outer = distance to the nearest other core.

Default mode vs ``compat="reference"``
-------------------------------------
The public reference implementation (Thinklab-SJTU/BiLAF, ``density_cluster.py``) has defects
that the default mode does not reproduce:

* its denoising takes the k nearest *positions inside the grown-set list* and then reads the
  distance row at those positions as if they were sample positions, so the "k nearest members of
  the grown set" are really arbitrary members (mostly the cluster's first few samples);
* its ring loop stops after ⌊n/r⌋ rings, so up to r − 1 members are never ringed and silently
  disappear from the cluster;
* its budget split can give a cluster 0 picks (then ``n / 0`` crashes) or more picks than
  members (then the same sample is picked repeatedly: duplicate ids);
* it builds dense N×K float64 distance matrices (65 GB at ImageNet scale) and loops per sample
  in Python.

``compat="reference"`` reproduces the reference's picks exactly — its denoising indexing, its
ring count, its remainder rule (smallest allocation first) and its tie-breaking (sorting
(distance, position) pairs, argsort's order, first minimum) — for users who must regenerate
published subsets.  Where the reference would crash or return duplicates, compat mode raises a
:class:`BilafError` saying so instead.  Both modes are vectorised and chunked.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass, replace

import numpy as np

from ..errors import BilafError
from ._ops import nearest_rows, pairwise_dist, sq_norms, torch_gpu_device
from .activeft import ACTIVEFT_PARAMS, activeft_optimize
from .base import Param, RunContext, check_indices, register_method

#: Clusters smaller than this are not denoised (fixed in the paper's code as well).
MIN_DENOISE_SIZE = 10
#: Elements per distance block inside one cluster (rows x columns), bounds memory.
_BLOCK_ELEMENTS = 8 * 1024 * 1024

BILAF_PARAMS = (
    Param("core_budget", "int", None, "number K of core samples (pseudo-class centres) chosen by ActiveFT; default min(0.5% of the pool, half the budget), at least 2", minimum=2),
    Param("core_indices", "indices", None, "use these pool indices as the cores instead of running ActiveFT (e.g. a published core set)"),
    Param("density_neighbors", "int", 10, "k: a ring candidate's density is its mean distance to its k nearest members of the grown set (paper: 10)", minimum=1),
    Param("removal_fraction", "float", 0.1, "p_rm: fraction of each cluster dropped as noise, the last-added ring members (paper: 0.1)", minimum=0.0, maximum=0.9),
    Param("ring_fraction", "float", 0.1, "p_in: each density ring adds this fraction of the cluster (paper: 0.1)", minimum=0.0, exclusive_minimum=True, maximum=1.0),
    Param("opponent_penalty", "float", 1.1, "δ: each pick multiplies its opponent cluster's penalty by δ, spreading picks over boundaries (paper: 1.1)", minimum=1.0),
    Param("compat", "str", "none", "'reference' reproduces the public reference code's picks exactly, its denoising bug included", choices=("none", "reference")),
) + tuple(
    # The ActiveFT core stage's own options, under the same names as for `activeft`.
    Param(p.name, p.kind, p.default,
          "core stage (ActiveFT) and the assignment to the nearest core: auto (GPU when present), cpu or cuda"
          if p.name == "device" else "core stage (ActiveFT): " + p.help,
          p.choices, p.minimum, p.maximum, p.exclusive_minimum)
    for p in ACTIVEFT_PARAMS
    if p.name not in ("compat", "record_history")
)


def default_core_budget(budget: int, n_pool: int) -> int:
    """The paper uses K = 0.5% of the pool (0.1% for CIFAR10); we also keep at least half of the
    budget for boundary samples so small budgets still get boundaries."""
    return int(max(2, min(round(0.005 * n_pool), budget // 2)))


# --------------------------------------------------------------------------------------------
# Default mode (the paper's algorithm, correct and vectorised)
# --------------------------------------------------------------------------------------------


def assign_to_cores(features: np.ndarray, core_indices: np.ndarray, device: str | None = None):
    """Step 1.  Nearest core of every sample (ties: the lower core position) and the nearest
    *other* core, in one chunked pass (on the torch `device` when given, e.g. ``"cuda"``: the
    N x K product is the whole-process hot spot at ImageNet scale).

    Each core is forced into its own cluster: with duplicate features two cores are equally near
    and a core must never end up outside its own pseudo-class.
    Returns (cluster (N,), opponent cluster (N,), distance to the opponent core (N,)).
    """
    first, first_dist, second, second_dist = nearest_rows(features, features[core_indices], device=device)
    cluster = first.copy()
    cluster[core_indices] = np.arange(core_indices.size)
    own_is_first = first == cluster
    opponent = np.where(own_is_first, second, first)
    outer = np.where(own_is_first, second_dist, first_dist)
    return cluster, opponent, outer


class ClusterDistances:
    """Euclidean distances inside one cluster.

    A cluster's pairwise distances are needed twice — by the density rings (candidates to the
    grown set) and by the boundary score (mean distance to the cluster) — so for clusters up to
    `max_cached` members the full n x n matrix is computed once with one BLAS product and both
    steps gather from it.  Larger clusters compute the blocks they ask for, so memory stays
    bounded whatever the cluster sizes.
    """

    max_cached = 8192  # 8192^2 float32 = 268 MB

    def __init__(self, points: np.ndarray):
        self.points = points
        self.sq = sq_norms(points)
        n = points.shape[0]
        self.full = pairwise_dist(points, points, a_sq=self.sq, b_sq=self.sq) if n <= self.max_cached else None

    def block(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self.full is not None:
            # Symmetric: gather the few `cols` rows (contiguous copies), then take `rows` from
            # them — 10x faster than np.ix_ fancy indexing on a large matrix (measured).
            return np.take(self.full[cols], rows, axis=1).T
        return pairwise_dist(self.points[rows], self.points[cols], a_sq=self.sq[rows], b_sq=self.sq[cols])

    def to_one(self, rows: np.ndarray, col: int) -> np.ndarray:
        if self.full is not None:
            return self.full[col, rows].copy()  # symmetric: a contiguous row read
        return self.block(rows, np.array([col]))[:, 0]

    def row_means(self, members: np.ndarray) -> np.ndarray:
        """Mean distance of each member to all `members` (itself included, as in the paper)."""
        out = np.empty(members.size, dtype=np.float64)
        step = max(1, _BLOCK_ELEMENTS // max(members.size, 1))
        for start in range(0, members.size, step):
            rows = members[start : start + step]
            if self.full is not None:
                out[start : start + step] = np.take(self.full[rows], members, axis=1).sum(axis=1, dtype=np.float64)
            else:
                out[start : start + step] = self.block(rows, members).sum(axis=1, dtype=np.float64)
        return out / members.size


def _merge_nearest(nearest, dists: ClusterDistances, rows, new_members, k):
    """Fold the distances from `rows` to `new_members` into each row's k smallest (in place)."""
    step = max(1, _BLOCK_ELEMENTS // (k + new_members.size))
    for start in range(0, rows.size, step):
        block = dists.block(rows[start : start + step], new_members)
        merged = np.concatenate([nearest[start : start + step], block], axis=1)
        if merged.shape[1] > k:
            merged = np.partition(merged, k - 1, axis=1)[:, :k]
        nearest[start : start + step] = merged


def denoise_cluster(dists: ClusterDistances, core_pos: int, *, k: int, ring_fraction: float, removal_fraction: float):
    """Step 2 for one cluster (rows in ascending sample id order; `core_pos` is the core's row).
    Returns (ring_level (n,), removed mask (n,)).

    Ties (equal distances or densities) go to the lower sample id, so results are reproducible.
    """
    n = dists.points.shape[0]
    levels = np.zeros(n, dtype=np.int32)
    removed = np.zeros(n, dtype=bool)
    if n < MIN_DENOISE_SIZE:
        return levels, removed
    ring_size = max(1, int(math.floor(ring_fraction * n + 1e-9)))
    to_core = dists.to_one(np.arange(n), core_pos)
    to_core[core_pos] = -1.0  # the core opens ring 1 even when it has exact duplicates
    order = np.argsort(to_core, kind="stable")
    ring = order[:ring_size]
    levels[ring] = 1
    added = [ring]
    unringed = np.sort(order[ring_size:])
    nearest = np.full((unringed.size, k), np.inf, dtype=np.float32)
    if unringed.size:
        _merge_nearest(nearest, dists, unringed, ring, k)
    grown = ring_size
    level = 1
    while unringed.size:
        level += 1
        # Density of a candidate = mean distance to its min(k, |grown|) nearest grown members.
        used = min(k, grown)
        density = np.where(np.isfinite(nearest), nearest, 0.0).sum(axis=1) / used
        take = min(ring_size, unringed.size)
        chosen = np.argsort(density, kind="stable")[:take]
        ring = unringed[chosen]
        levels[ring] = level
        added.append(ring)
        keep = np.ones(unringed.size, dtype=bool)
        keep[chosen] = False
        unringed, nearest = unringed[keep], nearest[keep]
        if unringed.size:
            _merge_nearest(nearest, dists, unringed, ring, k)
        grown += take
    n_removed = int(math.floor(removal_fraction * n + 1e-9))
    if n_removed:
        removed[np.concatenate(added)[n - n_removed :]] = True
    return levels, removed


def split_budget(sizes: np.ndarray, budget: int, *, lower: np.ndarray | None = None,
                 upper: np.ndarray | None = None) -> np.ndarray:
    """Step 3.  Integer allocation proportional to `sizes` with lower_i <= a_i <= upper_i,
    sum = budget (defaults: lower = 1, the core; upper = sizes).

    Water-filling: clusters whose proportional quota exceeds their upper bound are capped (and
    the rest re-split), then clusters whose quota is below their lower bound get exactly that;
    the others share what is left by largest remainder (ties: the larger cluster, then the lower
    index).  Constrained runs raise the lower bound by the includes a cluster holds (they are
    picks already taken there) and cap the upper bound at what can still be picked.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    k = sizes.size
    lower = np.ones(k, dtype=np.int64) if lower is None else np.asarray(lower, dtype=np.int64)
    upper = sizes if upper is None else np.asarray(upper, dtype=np.int64)
    if budget < lower.sum():
        if lower.sum() == k:
            raise BilafError(f"budget {budget} is smaller than the {k} core samples; raise the budget or lower --core-budget")
        raise BilafError(
            f"budget {budget} cannot hold the {k} core samples plus the {int(lower.sum()) - k} included samples; "
            "raise the budget, lower --core-budget or include fewer"
        )
    if budget > upper.sum():
        if upper is sizes:
            raise BilafError(
                f"budget {budget} is larger than the {int(sizes.sum())} samples left after denoising; "
                "lower the budget or --removal-fraction"
            )
        raise BilafError(
            f"budget {budget} is larger than the {int(upper.sum())} samples that can be picked (left after denoising, "
            "minus the excluded ones, plus the included ones); lower the budget, --removal-fraction or exclude fewer"
        )
    alloc = np.zeros(k, dtype=np.int64)
    fixed = np.zeros(k, dtype=bool)
    for bound in ("upper", "lower"):
        while True:
            free = np.flatnonzero(~fixed)
            remaining = budget - alloc[fixed].sum()
            quota = remaining * sizes[free] / sizes[free].sum()
            violators = free[quota > upper[free]] if bound == "upper" else free[quota < lower[free]]
            if violators.size == 0:
                break
            alloc[violators] = upper[violators] if bound == "upper" else lower[violators]
            fixed[violators] = True
    free = np.flatnonzero(~fixed)
    if free.size:
        remaining = budget - alloc[fixed].sum()
        quota = remaining * sizes[free] / sizes[free].sum()
        base = np.minimum(np.floor(quota).astype(np.int64), upper[free])
        base = np.maximum(base, lower[free])
        left = int(remaining - base.sum())
        if left > 0:
            fraction = np.where(base < upper[free], quota - base, -np.inf)
            order = np.lexsort((free, -sizes[free], -fraction))
            base[order[:left]] += 1
        alloc[free] = base
    if alloc.sum() != budget or (alloc < lower).any() or (alloc > upper).any():  # pragma: no cover
        raise AssertionError(f"budget split failed: {alloc.sum()} != {budget}")
    return alloc


def boundary_picks(dists: ClusterDistances, members: np.ndarray, core_pos, picks_wanted, outer, opponent, n_clusters,
                   opponent_penalty, inner: np.ndarray | None = None, *, taken=(), blocked: np.ndarray | None = None):
    """Step 4 for one cluster.  `members` are the kept rows of `dists` (ascending sample ids),
    `core_pos` the core's index into `members`; `inner` (mean distance of each member to
    `members`) is computed when not given.  Returns (indices into `members`, scores, opponents)
    of the *chosen* picks in order; the core comes first with score NaN and opponent -1.

    Constraints: `taken` is a list of (row of `dists`, opponent cluster) for the includes of
    this cluster: picks already made, so the walk treats each as a previous pick (drops its
    nearest candidates, penalises its opponent) before choosing ``picks_wanted − 1 − len(taken)``
    new ones.  `blocked` (len(members),) bool marks members that are never candidates
    (excluded or included)."""
    positions, scores, opponents = [core_pos], [np.nan], [-1]
    n = members.size
    n_new = picks_wanted - 1 - len(taken)
    if n_new <= 0:
        return positions, scores, opponents
    if inner is None:
        inner = dists.row_means(members)
    penalty = np.ones(n_clusters, dtype=np.float64)
    drop = n // picks_wanted
    candidates = np.arange(n) if blocked is None else np.flatnonzero(~blocked | (np.arange(n) == core_pos))
    # the previous pick: (row of `dists`, its opponent or -1 for the core)
    previous = [(int(members[core_pos]), -1)] + [(int(row), int(opp)) for row, opp in taken]

    def retire(candidates, row, opp, still_needed):
        # drop the candidates nearest the previous pick (itself first, when it is one) and
        # penalise its opponent; never drop below what the remaining picks need
        to_last = dists.to_one(members[candidates], row)
        is_last = members[candidates] == row
        to_last[is_last] = -np.inf  # the last pick always leaves the candidates
        count = max(int(is_last.any()), min(drop, candidates.size - still_needed))
        survivors = np.argsort(to_last, kind="stable")[count:]
        if opp >= 0:
            penalty[opp] *= opponent_penalty
        return np.sort(candidates[survivors])

    for row, opp in previous[:-1]:  # every earlier pick but the last: its step is already over
        candidates = retire(candidates, row, opp, n_new)
    last_row, last_opp = previous[-1]
    for t in range(n_new):
        candidates = retire(candidates, last_row, last_opp, n_new - t)
        out, inn = outer[candidates], inner[candidates]
        score = (out * penalty[opponent[candidates]] - inn) / np.maximum(np.maximum(out, inn), 1e-12)
        best = int(np.argmin(score))  # first minimum = lowest sample id
        last = int(candidates[best])
        last_row, last_opp = int(members[last]), int(opponent[last])
        positions.append(last)
        scores.append(float(score[best]))
        opponents.append(int(opponent[last]))
    return positions, scores, opponents


@dataclass
class _ClusterPlan:
    """What BiLAF knows about one pseudo-class before the budget is split (steps 1-2)."""

    members: np.ndarray  # ascending sample ids
    dists: ClusterDistances
    levels: np.ndarray
    drop: np.ndarray
    kept: np.ndarray  # rows of `dists` that survive denoising
    core_kept: int
    inner: np.ndarray | None = None  # mean distance to the kept members, once a budget needed it


@dataclass
class _Plan:
    """Steps 1-2 for one pool, set of cores and denoising parameters: nothing in them depends on
    the budget, so a budget change (the app's budget box) only re-runs steps 3-4."""

    cluster: np.ndarray
    opponent: np.ndarray
    outer: np.ndarray
    clusters: list  # _ClusterPlan per core, filled as they are visited


#: plans kept between calls: the latest one, when its distance matrices fit in this many bytes
#: (60 000 Fashion-MNIST features with 300 cores: ~120 MB).  0 = off, the default: a one-shot
#: run (the CLI) would only pay for hashing the pool and holding the matrices.  Long-running
#: hosts that re-run BiLAF at other budgets (the app) turn it on with `keep_plans()`.
PLAN_CACHE_BYTES = 0
#: pools up to this many values are fingerprinted (hashed) to recognise a repeated call
_PLAN_HASH_VALUES = 64 * 1024 * 1024
_PLANS: dict = {}
_PLANS_LOCK = threading.Lock()


def keep_plans(max_bytes: int = 512 * 1024 * 1024) -> None:
    """Keep BiLAF's budget-independent work (assignment, per-cluster distance matrices,
    denoising) for the latest pool and cores, up to `max_bytes` of matrices, so that a run at
    another budget re-does only the budget split and the boundary picks.  0 turns it off."""
    global PLAN_CACHE_BYTES
    PLAN_CACHE_BYTES = int(max_bytes)
    if PLAN_CACHE_BYTES <= 0:
        with _PLANS_LOCK:
            _PLANS.clear()


def _plan_key(features, core_indices, *params):
    if features.size > _PLAN_HASH_VALUES or PLAN_CACHE_BYTES <= 0:
        return None
    digest = hashlib.blake2b(np.ascontiguousarray(features).view(np.uint8), digest_size=16)
    digest.update(np.asarray(features.shape, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(core_indices, dtype=np.int64).tobytes())
    return (digest.hexdigest(), tuple(float(p) for p in params))


def _bilaf_default(features, core_indices, budget, ctx, *, density_neighbors, removal_fraction, ring_fraction, opponent_penalty,
                   device=None):
    n = features.shape[0]
    k_cores = core_indices.size
    key = _plan_key(features, core_indices, density_neighbors, removal_fraction, ring_fraction)
    with _PLANS_LOCK:
        plan = _PLANS.get(key) if key is not None else None
    fresh = plan is None
    with ctx.stage("assign"):
        if fresh:
            plan = _Plan(*assign_to_cores(features, core_indices, device), clusters=[])
        order = np.argsort(plan.cluster, kind="stable")  # members of each cluster, ascending ids
        bounds = np.searchsorted(plan.cluster[order], np.arange(k_cores + 1))
    ctx.progress(0.62, "assigned samples to pseudo-class centres")

    with ctx.stage("allocate"):
        # Denoising drops exactly ⌊p_rm·n⌋ members of every cluster of n ≥ 10, so the denoised
        # sizes — and the budget split — are known before any ring is grown.  That lets each
        # cluster be denoised and picked in one visit, with its distance matrix computed once.
        cluster_sizes = np.diff(bounds)
        sizes = np.where(
            cluster_sizes >= MIN_DENOISE_SIZE,
            cluster_sizes - np.floor(removal_fraction * cluster_sizes + 1e-9).astype(np.int64),
            cluster_sizes,
        )
    keep_plan = (fresh and key is not None and cluster_sizes.max() <= ClusterDistances.max_cached
                 and 4 * float(np.square(cluster_sizes, dtype=np.float64).sum()) <= PLAN_CACHE_BYTES)

    def visit(c):
        """Cluster c's plan: assignment rows, distances and denoising (kept in the plan when
        plans are kept, recomputed otherwise)."""
        if not fresh:
            return plan.clusters[c]
        members = order[bounds[c] : bounds[c + 1]]
        dists = ClusterDistances(features[members])
        core_pos = int(np.searchsorted(members, core_indices[c]))
        levels, drop = denoise_cluster(
            dists, core_pos, k=density_neighbors, ring_fraction=ring_fraction, removal_fraction=removal_fraction
        )
        kept = np.flatnonzero(~drop)  # rows of `dists`, ascending ids
        part = _ClusterPlan(members, dists, levels, drop, kept, int(np.searchsorted(kept, core_pos)))
        if keep_plan:
            plan.clusters.append(part)
        return part

    lower = upper = None
    include, blocked = ctx.include, ctx.blocked(n)
    denoised = {}
    if blocked.any():
        with ctx.stage("denoise+boundary"):
            # Constraints: includes are picks already taken in their pseudo-class (cores are
            # picks anyway), so a class gets at least its core plus its includes; its new picks
            # come from the denoised members that are neither blocked nor the core — known only
            # after denoising, so here every cluster is denoised first (its distances are
            # rebuilt for the picks below unless the plan keeps them).
            for c in range(k_cores):
                part = visit(c)
                denoised[c] = part if keep_plan or not fresh else replace(part, dists=None)
                if c % max(1, k_cores // 50) == 0:
                    ctx.progress(0.62 + 0.19 * (c + 1) / k_cores, f"denoising cluster {c + 1}/{k_cores}")
        extra = include[~np.isin(include, core_indices)]
        lower = 1 + np.bincount(plan.cluster[extra], minlength=k_cores)
        candidates = np.zeros(n, dtype=bool)
        for c, part in denoised.items():
            candidates[part.members[part.kept]] = True
        candidates &= ~blocked
        candidates[core_indices] = False
        upper = lower + np.bincount(plan.cluster[candidates], minlength=k_cores)
    with ctx.stage("allocate"):
        allocation = split_budget(sizes, budget, lower=lower, upper=upper)

    ring_level = np.zeros(n, dtype=np.int32)
    removed = np.zeros(n, dtype=bool)
    picks, scores, opponents, pick_cluster = [], [], [], []
    with ctx.stage("denoise+boundary"):
        for c in range(k_cores):
            part = denoised.pop(c, None) or visit(c)
            if part.dists is None:
                part.dists = ClusterDistances(features[part.members])
            ring_level[part.members] = part.levels
            removed[part.members] = part.drop
            if allocation[c] > 1 and part.inner is None:
                inner = part.dists.row_means(part.kept)
                if keep_plan or not fresh:
                    part.inner = inner
            else:
                inner = part.inner
            kept_ids = part.members[part.kept]
            taken, kept_blocked, taken_ids = (), None, np.empty(0, dtype=np.int64)
            if lower is not None:
                taken_ids = extra[plan.cluster[extra] == c]
                taken = list(zip(np.searchsorted(part.members, taken_ids), plan.opponent[taken_ids]))
                kept_blocked = blocked[kept_ids]
            pos, sc, opp = boundary_picks(part.dists, part.kept, part.core_kept, int(allocation[c]), plan.outer[kept_ids],
                                          plan.opponent[kept_ids], k_cores, opponent_penalty, inner=inner,
                                          taken=taken, blocked=kept_blocked)
            # the core, then the includes of this class (picks already taken), then the new picks
            picks.extend(kept_ids[pos[:1]])
            picks.extend(taken_ids)
            picks.extend(kept_ids[pos[1:]])
            scores.extend([sc[0]] + [np.nan] * taken_ids.size + sc[1:])
            opponents.extend([opp[0]] + [int(o) for o in plan.opponent[taken_ids]] + opp[1:])
            pick_cluster.extend([c] * (len(pos) + taken_ids.size))
            if c % max(1, k_cores // 50) == 0:
                ctx.progress(0.62 + 0.38 * (c + 1) / k_cores, f"denoising and picking in cluster {c + 1}/{k_cores}")
    if keep_plan:
        with _PLANS_LOCK:
            _PLANS.clear()  # one plan at a time: memory stays bounded by PLAN_CACHE_BYTES
            _PLANS[key] = plan
    return picks, scores, opponents, pick_cluster, plan.cluster.copy(), ring_level, removed, allocation, sizes


# --------------------------------------------------------------------------------------------
# compat="reference": the public reference code's exact behaviour (see the module docstring)
# --------------------------------------------------------------------------------------------


def _cdist(a, b):
    from scipy.spatial.distance import cdist  # the reference's distance, bit for bit

    return cdist(a, b, "euclidean")


def _reference_assign(features64, core_indices, chunk=4096):
    cores = features64[core_indices]
    cluster = np.empty(features64.shape[0], dtype=np.int64)
    for start in range(0, features64.shape[0], chunk):
        cluster[start : start + chunk] = _cdist(features64[start : start + chunk], cores).argmin(axis=1)
    return cluster


def _reference_kept_size(n: int, ring_fraction: float, removal_fraction: float) -> int:
    """How many members the reference keeps: its rings cover r·⌊n/r⌋ members (the rest are never
    ringed and vanish), then it truncates with Python's float arithmetic."""
    if n < MIN_DENOISE_SIZE:
        return n
    ring_size = int(n * ring_fraction) or 1
    return int(ring_size * int(n / ring_size) * (1 - removal_fraction))


def _reference_denoise(dist, core_pos, k, ring_fraction, removal_fraction):
    """`dist` is the class's cdist matrix.  Returns (kept positions in the reference's list
    order, ring levels)."""
    n = dist.shape[0]
    levels = np.zeros(n, dtype=np.int32)
    if n < MIN_DENOISE_SIZE:
        return np.arange(n), levels
    ring_size = int(n * ring_fraction) or 1
    positions = np.arange(n)
    grown = list(np.lexsort((positions, dist[core_pos]))[:ring_size])
    levels[grown] = 1
    for level in range(2, int(n / ring_size) + 1):
        candidates = np.flatnonzero(levels == 0)
        if candidates.size == 0:
            break
        grown_arr = np.asarray(grown)
        # The reference's defect, reproduced: argsort positions *within the grown list* are used
        # to index the candidate's distance row as if they were positions in the cluster.
        nearest_list_pos = np.argsort(dist[np.ix_(candidates, grown_arr)], axis=1)[:, :k]
        density = np.take_along_axis(dist[candidates], nearest_list_pos, axis=1).mean(axis=1)
        new = candidates[np.lexsort((candidates, density))[:ring_size]]
        levels[new] = level
        grown.extend(new)
    kept = np.asarray(grown[: int(len(grown) * (1 - removal_fraction))], dtype=np.int64)
    return kept, levels


def _reference_split(sizes, budget):
    proportions = 1.0 * sizes / sizes.sum()
    alloc = np.floor(proportions * budget).astype(np.int64)
    index = np.arange(sizes.size)
    for _ in range(int(budget - alloc.sum())):
        # smallest allocation first; ties: larger proportion, then the first index
        alloc[np.lexsort((index, -proportions, alloc))[0]] += 1
    return alloc


def _bilaf_reference(features, core_indices, budget, ctx, *, density_neighbors, removal_fraction, ring_fraction, opponent_penalty):
    features64 = features.astype(np.float64)
    k_cores = core_indices.size
    n = features.shape[0]
    with ctx.stage("assign"):
        cluster = _reference_assign(features64, core_indices)
        order = np.argsort(cluster, kind="stable")
        bounds = np.searchsorted(cluster[order], np.arange(k_cores + 1))
    with ctx.stage("allocate"):
        sizes = np.array(
            [_reference_kept_size(int(m), ring_fraction, removal_fraction) for m in np.diff(bounds)], dtype=np.int64
        )
        allocation = _reference_split(sizes, budget)
        if (allocation == 0).any():
            c = int(np.flatnonzero(allocation == 0)[0])
            raise BilafError(
                f"compat=reference: pseudo-class {c} gets 0 picks, where the reference implementation divides by zero; "
                "raise the budget or use the default mode"
            )
        if (allocation > sizes).any():
            c = int(np.flatnonzero(allocation > sizes)[0])
            raise BilafError(
                f"compat=reference: pseudo-class {c} gets {int(allocation[c])} picks for {int(sizes[c])} members, where the "
                "reference implementation returns duplicate picks; lower the budget or use the default mode"
            )
    ring_level = np.zeros(n, dtype=np.int32)
    removed = np.ones(n, dtype=bool)
    cores64 = features64[core_indices]
    picks, scores, opponents, pick_cluster = [], [], [], []
    with ctx.stage("denoise+boundary"):
        for c in range(k_cores):
            members = order[bounds[c] : bounds[c + 1]]
            where = np.flatnonzero(members == core_indices[c])
            if where.size == 0:
                raise BilafError(
                    f"compat=reference: core {int(core_indices[c])} is not nearest to itself (an identical core comes "
                    "first), where the reference implementation fails its assertion; remove duplicate cores or use the default mode"
                )
            # One cdist per class serves both steps: the reference recomputes the same values.
            class_dist = _cdist(features64[members], features64[members])
            kept, levels = _reference_denoise(class_dist, int(where[0]), density_neighbors, ring_fraction, removal_fraction)
            ring_level[members] = levels
            removed[members[kept]] = False
            inner_dist = np.take(class_dist[kept], kept, axis=1)
            inner = np.array([np.mean(row) for row in inner_dist])
            outer_dist = _cdist(features64[members[kept]], cores64)
            outer_dist[:, c] = 1e9 + 7
            outer, opponent = outer_dist.min(axis=1), outer_dist.argmin(axis=1)
            where = np.flatnonzero(members[kept] == core_indices[c])
            if where.size == 0:
                raise BilafError(
                    f"compat=reference: core {int(core_indices[c])} was removed as noise, where the reference implementation "
                    "fails its assertion; lower --removal-fraction or use the default mode"
                )
            core_pos = int(where[0])
            chosen, chosen_scores, chosen_opp = [core_pos], [np.nan], [-1]
            penalty = np.ones(k_cores, dtype=np.float64)
            drop = int(kept.size / allocation[c])
            candidates = np.arange(kept.size)
            while len(chosen) < allocation[c]:
                node = chosen[-1]
                candidates = candidates[np.lexsort((candidates, inner_dist[node, candidates]))][drop:]
                if node != core_pos:
                    penalty[opponent[node]] *= opponent_penalty
                out, inn = outer[candidates], inner[candidates]
                score = (out * penalty[opponent[candidates]] - inn) / np.maximum(out, inn)
                best = int(np.argmin(score))
                node = int(candidates[best])
                if node in chosen:
                    raise BilafError(
                        "compat=reference: the reference implementation picks the same sample twice here (duplicate feature "
                        "rows); deduplicate the features or use the default mode"
                    )
                chosen.append(node)
                chosen_scores.append(float(score[best]))
                chosen_opp.append(int(opponent[node]))
            picks.extend(members[kept[chosen]])
            scores.extend(chosen_scores)
            opponents.extend(chosen_opp)
            pick_cluster.extend([c] * len(chosen))
            ctx.progress(0.62 + 0.38 * (c + 1) / k_cores, f"denoising and picking in cluster {c + 1}/{k_cores}")
    return picks, scores, opponents, pick_cluster, cluster, ring_level, removed, allocation, sizes


# --------------------------------------------------------------------------------------------
# The registered method
# --------------------------------------------------------------------------------------------


def _child_context(ctx: RunContext, low: float, high: float) -> RunContext:
    """Same seed and exclusions (a core is never an excluded sample); progress mapped into
    [low, high] of the parent's bar.  The includes stay with the boundary stage."""
    return RunContext(ctx.seed, lambda f, m: ctx.progress(low + (high - low) * f, m), exclude=ctx.exclude)


#: shown by `select --help`; the why: the pseudo-classes (cores from ActiveFT, same seed -> same
#: cores) stay as they were, so "re-run keeping my edits" only changes picks near the edits.
BILAF_INCLUDE_RULE = (
    "the includes count as boundary picks already taken in the pseudo-class they fall in: that class gets at "
    "least its core plus its includes, and the boundary walk starts after them (drops their nearest candidates, "
    "penalises their opponent class), so new picks spread away from them; the cores still come from ActiveFT "
    "(never an excluded sample) or --core-indices.  Why: with the same seed the cores, hence the pseudo-classes, "
    "stay where they were, so re-running with kept picks included and removed ones excluded only changes picks "
    "near the edits"
)


@register_method(
    "bilaf",
    summary="BiLAF: ActiveFT core samples as pseudo-class centres, density-ring denoising, then iterative boundary samples with an opponent penalty",
    params=BILAF_PARAMS,
    include_rule=BILAF_INCLUDE_RULE,
)
def select_bilaf(
    features,
    budget,
    ctx,
    *,
    core_budget=None,
    core_indices=None,
    density_neighbors=10,
    removal_fraction=0.1,
    ring_fraction=0.1,
    opponent_penalty=1.1,
    compat="none",
    **core_options,
):
    n = features.shape[0]
    reference = compat == "reference"
    if reference and (ctx.include.size or ctx.exclude.size):
        raise BilafError("--compat reference reproduces the published code, which has no --include/--exclude; "
                         "drop them or use the default mode")
    if core_indices is not None and core_budget is not None and core_budget != len(core_indices):
        raise BilafError(f"--core-budget {core_budget} disagrees with the {len(core_indices)} --core-indices given; pass one of them")
    if core_indices is not None:
        core_indices = check_indices(core_indices, n, what="core indices")
        if core_indices.size < 2:
            raise BilafError("BiLAF needs at least 2 core samples (boundaries lie between pseudo-classes); give more core indices")
        if core_indices.size > budget:
            raise BilafError(f"budget {budget} is smaller than the {core_indices.size} core indices; the budget counts the cores")
        excluded_cores = np.intersect1d(core_indices, ctx.exclude)
        if excluded_cores.size:
            raise BilafError(f"{excluded_cores.size} --core-indices are also in --exclude (first: {int(excluded_cores[0])}); "
                             "a core is always picked — remove it from one of the two files")
        core_diagnostics = {}
    else:
        if budget < 2:
            raise BilafError("BiLAF needs a budget of at least 2 (two pseudo-class centres); use another method for one pick")
        k_cores = default_core_budget(budget, n) if core_budget is None else int(core_budget)
        if k_cores > budget:
            raise BilafError(f"budget {budget} is smaller than the core count {k_cores}; raise the budget or lower --core-budget")
        child = _child_context(ctx, 0.0, 0.6)
        core_indices, core_diagnostics = activeft_optimize(
            features, k_cores, child, compat="reference" if reference else "none", **core_options
        )
        for stage, seconds in child.timings.items():
            ctx.timings[f"core_{stage}"] = seconds
    ctx.progress(0.6, f"{core_indices.size} core samples chosen")

    stage_options = dict(density_neighbors=density_neighbors, removal_fraction=removal_fraction,
                         ring_fraction=ring_fraction, opponent_penalty=opponent_penalty)
    if reference:  # the reference's float64 cdist, bit for bit: always on the CPU
        run = _bilaf_reference
    else:
        run = _bilaf_default
        stage_options["device"] = torch_gpu_device(core_options.get("device", "auto"))
    picks, scores, opponents, pick_cluster, cluster, ring_level, removed, allocation, sizes = run(
        features, np.asarray(core_indices, dtype=np.int64), budget, ctx, **stage_options
    )
    picks = np.asarray(picks, dtype=np.int64)
    diagnostics = {
        "core_indices": np.asarray(core_indices, dtype=np.int64),
        "cluster": cluster.astype(np.int64),
        "ring_level": ring_level,
        "removed_as_noise": removed,
        "boundary_score": np.asarray(scores, dtype=np.float64),
        "opponent_cluster": np.asarray(opponents, dtype=np.int64),
        "pick_cluster": np.asarray(pick_cluster, dtype=np.int64),
        "is_core_pick": np.isin(picks, core_indices),
        "allocation": allocation,
        "denoised_size": sizes,
    }
    if "centroids" in core_diagnostics:
        diagnostics["core_centroids"] = core_diagnostics["centroids"]
        diagnostics["core_loss_history"] = core_diagnostics["loss_history"]
    return picks, diagnostics
