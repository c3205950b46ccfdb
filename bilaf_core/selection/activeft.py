"""ActiveFT core selection (Xie et al., "Active Finetuning", CVPR 2023, Algorithm 1).

A parametric model with B centroids θ (used normalised, c_j = θ_j/‖θ_j‖) is optimised so that it
matches the pool's feature distribution while staying diverse, then each centroid is replaced by
its most similar real sample.  Features f_i are L2-normalised; τ is the temperature, λ the
balance, c(i) = argmax_j f_iᵀc_j the centroid that owns sample i and s_i = f_iᵀc_{c(i)}/τ.

Two objectives (``objective``):

``published`` (the default)
    What the public ActiveFT code optimises, and therefore what produced every published ActiveFT
    and BiLAF number (BiLAF ships that code unchanged for its core stage).  Per sample

        J_i = −log( e^{s_i} / (e^{s_i} + λ·M_{c(i)}) ),   M_j = Σ_k exp(c̄_kᵀc_j/τ)  (k = j included,
                                                                                 c̄ detached)

    averaged over the samples.  θ is a raw parameter, normalised in the forward pass and never
    renormalised in place.  Because the k = j term e^{1/τ} dominates M_j, and its gradient is
    radial (cancelled by the normalisation), the repulsion only acts between near-duplicate
    centroids: in effect a soft spherical k-means by gradient descent from a random start, which
    keeps the centroids inside the data.

``paper-equation``
    The paper's Eq. 11 taken literally,

        L(θ) = − 1/N Σ_i max_j f_iᵀc_j / τ  +  λ · 1/B Σ_j log Σ_{k≠j} exp(c_jᵀc_k / τ),

    with θ renormalised after every step (Algorithm 1, line 10).  Its diversity term weights
    every centroid equally and is smallest for near-orthogonal centroids, so it pushes centroids
    out of the cone that real backbone features occupy; the hard-max data term pulls a centroid
    only by the samples it owns, so a centroid that escaped owns none, stops moving, and is
    finally matched back to (often exactly) its random starting sample.  Kept for those who want
    the text of the paper; docs/methods.md shows the measurement.

Both then match centroid j (in order) to the most similar sample not taken yet (Algorithm 1,
line 11, made injective so that there are exactly B distinct picks — as the public code does).

Implementation notes (why it looks the way it does):

* Both gradients are analytic: one S×D·D×B matrix product plus a (weighted) scatter-add per
  iteration — the unavoidable part — instead of the three products autograd needs.  The tests
  check each against autograd of its loss.  Gradients then flow through the normalisation
  c = θ/‖θ‖ with autograd.
* Every log of a sum of exponentials is a ``logsumexp`` / ``logaddexp`` — never ``log(exp(·))``,
  which overflows in float16/bfloat16 (exp(1/τ) ≈ 1.6e6 at τ = 0.07) and loses precision.
* Pools larger than `batch_size` draw a fresh random subset each iteration (as the public
  ImageNet code does), and every S×B block is processed in row chunks to bound memory.
* GPU when torch sees one (`device="auto"`), else CPU.  The random start and the subsets come
  from the run's seed.

``compat="reference"`` changes only what bit-for-bit regeneration of a published core set needs:
the start samples come from Python's ``random.sample`` (seeded with the run's seed; the public
code leaves it unseeded, so its published CIFAR core sets came from an unknown start) and the
picks are returned sorted by index.  It does not change the objective.  Pools larger than
`batch_size` cannot be regenerated bit for bit: the public code continues Python's ``random``
stream for its per-iteration subsets, which we do not imitate.
"""

from __future__ import annotations

import math
import warnings
import random as _pyrandom

import numpy as np

from ..errors import BilafError
from .base import Param, RunContext, register_method

ACTIVEFT_PARAMS = (
    Param("temperature", "float", 0.07, "softmax temperature τ of the similarity model (paper: 0.07)", minimum=0.0, exclusive_minimum=True),
    Param("iterations", "int", 300, "optimisation steps of the parametric model (paper: 300)", minimum=0),
    Param("lr", "float", 1e-3, "Adam learning rate (paper: 0.001)", minimum=0.0, exclusive_minimum=True),
    Param("balance", "float", 1.0, "weight λ of the diversity regulariser (paper: 1.0)", minimum=0.0),
    Param("batch_size", "int", 100_000, "samples per iteration; larger pools draw a fresh random subset each step (paper's ImageNet code: 100 000)", minimum=1),
    Param("device", "str", "auto", "where to optimise: auto (GPU when present), cpu or cuda", choices=("auto", "cpu", "cuda")),
    Param("objective", "str", "published", "'published': the loss of the public ActiveFT code, which produced every published ActiveFT/BiLAF number; 'paper-equation': the paper's Eq. 11 taken literally (drifts out of the data on real features, see the docs)", choices=("published", "paper-equation")),
    Param("compat", "str", "none", "'reference' starts from Python's random.sample and returns the picks sorted, as the public code does (for regenerating published core sets); the objective is its own option", choices=("none", "reference")),
    Param("record_history", "bool", False, "keep centroid snapshots for teaching animations (small pools only)"),
)

#: elements per S×B similarity block (chunk rows = this // B): 32M float32 = 128 MB.
_BLOCK_ELEMENTS = 32 * 1024 * 1024
#: on a GPU, 256M float32 = 1 GB: at ImageNet scale (100 000 drawn, B = 6 405) 3 products per
#: iteration instead of 20, each followed by a host sync for the loss value
_BLOCK_ELEMENTS_CUDA = 256 * 1024 * 1024


def _resolve_device(torch, device: str):
    if device == "cuda" and not torch.cuda.is_available():
        raise BilafError("--device cuda was asked for but torch sees no CUDA GPU; use --device auto or cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def activeft_optimize(
    features: np.ndarray,
    budget: int,
    ctx: RunContext,
    *,
    temperature: float = 0.07,
    iterations: int = 300,
    lr: float = 1e-3,
    balance: float = 1.0,
    batch_size: int = 100_000,
    device: str = "auto",
    objective: str = "published",
    compat: str = "none",
    record_history: bool = False,
):
    """Run ActiveFT; return (indices in pick order, diagnostics).  See the module docstring."""
    if objective not in _LOSSES:
        raise BilafError(f"unknown ActiveFT objective {objective!r}; use one of: {', '.join(_LOSSES)}")
    import torch  # lazy: keeps `select --method bilaf --core-indices …` free of torch start-up

    n, dim = features.shape
    if budget > n:
        raise BilafError(f"ActiveFT budget {budget} is larger than the pool ({n})")
    reference = compat == "reference"
    dev = _resolve_device(torch, device)
    previous_threads = torch.get_num_threads()
    if dev.type == "cpu" and min(n, batch_size) * budget * dim < 50_000_000:
        # Small products: OpenMP fork/join costs more than it saves, and on a busy 2-core machine
        # spinning threads made one iteration 25x slower (measured).  One thread for these.
        torch.set_num_threads(1)
    try:
        return _activeft(torch, features, budget, ctx, dev, temperature, iterations, lr, balance, batch_size, objective,
                         reference, record_history)
    finally:
        torch.set_num_threads(previous_threads)


def _activeft(torch, features, budget, ctx, dev, temperature, iterations, lr, balance, batch_size, objective, reference,
              record_history):
    n, dim = features.shape
    # The per-iteration subsets are drawn where the features are: a CPU randperm of 1.28 M rows
    # takes tens of milliseconds, longer than a whole GPU iteration at ImageNet scale.  On the CPU
    # this is the same generator (and the same picks) as before.
    gen = torch.Generator(device=dev).manual_seed(ctx.seed)

    with ctx.stage("normalise"):
        with warnings.catch_warnings():
            # a memory-mapped pool is read-only; it is only read here (normalize makes a new tensor)
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            feats = torch.from_numpy(features).to(dev)
        feats = torch.nn.functional.normalize(feats, dim=1)

    with ctx.stage("optimise"):
        if reference:
            init_ids = np.asarray(_pyrandom.Random(ctx.seed).sample(range(n), budget), dtype=np.int64)
        else:
            init_ids = ctx.rng(1).choice(n, size=budget, replace=False)
        theta = torch.nn.Parameter(feats[torch.from_numpy(init_ids).to(dev)].clone())
        optimizer = torch.optim.Adam([theta], lr=lr)
        batch = min(n, int(batch_size))
        block_elements = _BLOCK_ELEMENTS_CUDA if dev.type == "cuda" else _BLOCK_ELEMENTS
        chunk_rows = max(1, min(batch, block_elements // max(budget, 1)))
        off_diagonal = ~torch.eye(budget, dtype=torch.bool, device=dev)
        loss_history = np.empty(iterations, dtype=np.float64)
        history = [] if record_history else None
        snapshot_every = max(1, iterations // 60)
        if history is not None:
            history.append(torch.nn.functional.normalize(theta.detach(), dim=1).cpu().numpy())

        for it in range(iterations):
            optimizer.zero_grad(set_to_none=True)
            centroids = torch.nn.functional.normalize(theta, dim=1)
            rows = torch.randperm(n, generator=gen, device=dev)[:batch] if batch < n else None
            loss_value, grad = _LOSSES[objective](torch, feats, rows, centroids.detach(), temperature, balance, chunk_rows,
                                                  off_diagonal)
            # Chain the gradient w.r.t. the normalised centroids through c = θ/‖θ‖.
            centroids.backward(grad)
            optimizer.step()
            if objective == "paper-equation":
                with torch.no_grad():  # Algorithm 1, line 10: keep ‖θ_j‖ = 1 (the public code does not)
                    theta.copy_(torch.nn.functional.normalize(theta, dim=1))
            loss_history[it] = loss_value
            if history is not None and ((it + 1) % snapshot_every == 0 or it + 1 == iterations):
                history.append(torch.nn.functional.normalize(theta.detach(), dim=1).cpu().numpy())
            if it % 10 == 0 or it + 1 == iterations:
                ctx.progress(0.9 * (it + 1) / max(iterations, 1), f"ActiveFT iteration {it + 1}/{iterations}, loss {loss_value:.4f}")

    with ctx.stage("match"):
        centroids = torch.nn.functional.normalize(theta.detach(), dim=1)
        picks = _match_centroids(torch, feats, centroids, chunk_rows, include=ctx.include, blocked=ctx.blocked(n))
        ctx.progress(1.0, "ActiveFT matched centroids to samples")
    if reference:
        picks = np.sort(picks)
    diagnostics = {
        "centroids": centroids.cpu().numpy().astype(np.float32),
        "loss_history": loss_history,
        "init_indices": init_ids.astype(np.int64),
    }
    if history is not None:
        diagnostics["centroid_history"] = np.stack(history).astype(np.float32)
    return picks, diagnostics


def _paper_loss_grad(torch, feats, rows, centroids, temperature, balance, chunk_rows, off_diagonal):
    """The paper's loss and its gradient w.r.t. the normalised centroids."""
    budget = centroids.shape[0]
    total = feats.shape[0] if rows is None else rows.shape[0]
    # Diversity: λ · mean_j logsumexp_{k≠j} c_jᵀc_k/τ, autograd on a B×B matrix.
    c_leaf = centroids.clone().requires_grad_(True)
    if budget > 1:
        pair = ((c_leaf @ c_leaf.T) / temperature).masked_fill(~off_diagonal, float("-inf"))
        reg = torch.logsumexp(pair, dim=1).mean()
        (balance * reg).backward()
        grad, reg_value = c_leaf.grad, float(reg.detach())
    else:
        grad, reg_value = torch.zeros_like(centroids), 0.0
    # Distribution matching: analytic gradient of −mean_i max_j f_iᵀc_j/τ (a scatter-add).
    data_sum = 0.0
    scatter = torch.zeros_like(centroids)
    for start in range(0, total, chunk_rows):
        block = slice(start, min(start + chunk_rows, total))
        x = feats[block] if rows is None else feats[rows[block]]
        best, owner = (x @ centroids.T).max(dim=1)
        data_sum += float(best.sum())
        scatter.index_add_(0, owner, x)
    grad = grad - scatter / (total * temperature)
    return -data_sum / (total * temperature) + balance * reg_value, grad


def _published_loss_grad(torch, feats, rows, centroids, temperature, balance, chunk_rows, off_diagonal):
    """The public code's loss and its analytic gradient w.r.t. the normalised centroids.

    With o_i = log λ + log M_{c(i)} and w_i = σ(o_i − s_i) = λM/(e^{s_i} + λM):
    ∂L/∂c_j = −(1/(Sτ)) Σ_{i: c(i)=j} w_i f_i  +  (1/S) (Σ_{i: c(i)=j} w_i) · Σ_k p_kj c̄_k / τ,
    p_kj = softmax over k of c̄_kᵀc_j/τ (the gradient of log M_j; c̄ is detached, so only c_j moves).
    """
    budget = centroids.shape[0]
    total = feats.shape[0] if rows is None else rows.shape[0]
    pair = (centroids @ centroids.T) / temperature  # [k, j] = c̄_kᵀc_j/τ (symmetric)
    log_mass = torch.logsumexp(pair, dim=0)  # log M_j
    log_balance = math.log(balance) if balance > 0 else float("-inf")
    weighted = torch.zeros_like(centroids)
    owned_weight = torch.zeros(budget, dtype=centroids.dtype, device=centroids.device)
    loss_sum = 0.0
    for start in range(0, total, chunk_rows):
        block = slice(start, min(start + chunk_rows, total))
        x = feats[block] if rows is None else feats[rows[block]]
        best, owner = (x @ centroids.T).max(dim=1)
        score = best / temperature
        other = log_mass[owner] + log_balance
        # J_i = s_i − log(e^{s_i} + λ M_{c(i)}), as a log-add-exp (stable at any τ and precision)
        loss_sum -= float((score - torch.logaddexp(score, other)).sum())
        weight = torch.sigmoid(other - score)
        weighted.index_add_(0, owner, x * weight[:, None])
        owned_weight.index_add_(0, owner, weight)
    pull = torch.softmax(pair, dim=0).T @ centroids  # row j: Σ_k p_kj c̄_k
    grad = (owned_weight[:, None] * pull - weighted) / (total * temperature)
    return loss_sum / total, grad


#: objective name -> loss-and-gradient function
_LOSSES = {"published": _published_loss_grad, "paper-equation": _paper_loss_grad}


def _match_centroids(torch, feats, centroids, chunk_rows, top: int = 16, *, include=None, blocked=None):
    """Each centroid in turn takes its most similar sample not taken yet (exactly B distinct).

    The top-`top` candidates per centroid come from a chunked top-k (no full sort of N); the
    rare centroid whose candidates are all taken falls back to one masked argmax over the pool.

    Constraints: `blocked` (N,) bool samples are never taken (``--exclude``, and the includes
    themselves); each of `include` first claims a centroid — the most similar (include, centroid)
    pair first — and stands as that centroid's pick, so it replaces the part of the
    distribution it represents.  With the same seed (same centroids), a re-run that includes
    some earlier picks and excludes others normally gives each kept pick back its own centroid.
    """
    n = feats.shape[0]
    budget = centroids.shape[0]
    top = min(top, n)
    best_vals = torch.full((budget, top), float("-inf"), device=feats.device)
    best_ids = torch.zeros((budget, top), dtype=torch.long, device=feats.device)
    for start in range(0, n, chunk_rows):
        sims = centroids @ feats[start : start + chunk_rows].T
        k = min(top, sims.shape[1])
        vals, ids = sims.topk(k, dim=1)
        merged_vals = torch.cat([best_vals, vals], dim=1)
        merged_ids = torch.cat([best_ids, ids + start], dim=1)
        best_vals, pos = merged_vals.topk(top, dim=1)
        best_ids = merged_ids.gather(1, pos)
    candidates = best_ids.cpu().numpy()
    scores = best_vals.cpu().numpy()
    taken = np.zeros(n, dtype=bool) if blocked is None else blocked.copy()
    picks = np.full(budget, -1, dtype=np.int64)
    if include is not None and len(include):
        sims = (feats[torch.from_numpy(np.asarray(include)).to(feats.device)] @ centroids.T).cpu().numpy()
        order = np.argsort(-sims, axis=None, kind="stable")
        claimed = np.zeros(len(include), dtype=bool)
        for flat in order:  # |include| x B pairs, most similar first; each side used once
            i, j = divmod(int(flat), budget)
            if not claimed[i] and picks[j] < 0:
                picks[j] = include[i]
                claimed[i] = True
                if claimed.all():
                    break
        taken[include] = True
    for j in range(budget):
        if picks[j] >= 0:
            continue
        order = np.lexsort((candidates[j], -scores[j]))  # ties: the lower sample index
        free = [c for c in candidates[j][order] if not taken[c]]
        if free:
            choice = int(free[0])
        else:
            sims = (feats @ centroids[j]).cpu().numpy()
            sims[taken] = -np.inf
            choice = int(np.argmax(sims))
        taken[choice] = True
        picks[j] = choice
    return picks


@register_method(
    "activeft",
    summary="ActiveFT: B centroids optimised to match the pool's feature distribution while staying diverse, each mapped to its nearest sample",
    params=ACTIVEFT_PARAMS,
    include_rule="after the optimisation each include claims its most similar centroid (most similar pair first) and "
                 "stands as its pick; the other centroids take their nearest free samples as usual",
)
def select_activeft(features, budget, ctx, **params):
    return activeft_optimize(features, budget, ctx, **params)
