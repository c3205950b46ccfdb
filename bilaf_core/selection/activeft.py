"""ActiveFT core selection (Xie et al., "Active Finetuning", CVPR 2023, Algorithm 1).

A parametric model with B unit-norm centroids θ is optimised so that it matches the pool's
feature distribution while staying diverse, then each centroid is replaced by its most similar
real sample.  With features f_i (L2-normalised) and temperature τ the paper's loss is

    L(θ) = − 1/N Σ_i max_j f_iᵀθ_j / τ  +  λ · 1/B Σ_j log Σ_{k≠j} exp(θ_jᵀθ_k / τ)

(distribution matching − λ · diversity; Eq. 11, λ = `balance`).  We follow Algorithm 1:
random initialisation from B distinct samples, Adam, renormalise θ after every step (line 10),
then match centroid j (in order) to the most similar sample not taken yet (line 11, made
injective so there are exactly B distinct picks).

Implementation notes (why it looks the way it does):

* The regulariser is a log-sum-exp over k ≠ j computed with ``torch.logsumexp`` on a masked
  matrix — never ``log(exp(·))``, which overflows in float16/bfloat16 and loses precision at
  τ = 0.07 (exp(1/τ) ≈ 1.6e6).
* The data term's gradient is analytic: ∂/∂c_j of −mean_i max_k f_iᵀc_k/τ is
  −(1/(Sτ)) Σ_{i: argmax_i = j} f_i, a scatter-add.  So one iteration costs one S×D·D×B matrix
  product plus a scatter — the unavoidable part — instead of the three products autograd needs.
  Gradients then flow through the normalisation c = θ/‖θ‖ with autograd.
* Pools larger than `batch_size` draw a fresh random subset each iteration (as the paper's
  ImageNet code does), and every S×B block is processed in row chunks to bound memory.
* GPU when torch sees one (`device="auto"`), else CPU.

``compat="reference"`` reproduces the public reference code instead of the paper: its loss is
−log(e^{s_i} / (e^{s_i} + λ Σ_k e^{c̄_kᵀc_{j(i)}/τ})) per sample (the diversity term is weighted by
the samples assigned to each centroid, includes k = j, and one side is detached), θ is not
renormalised between steps, the initial samples come from Python's ``random.sample`` and the
picks are returned sorted by index.  It is meant for regenerating published core sets; floating
point on another device can still change near-tied picks.
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
    Param("compat", "str", "none", "'reference' reproduces the public reference code's loss, init and pick order instead of the paper's", choices=("none", "reference")),
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
    compat: str = "none",
    record_history: bool = False,
):
    """Run ActiveFT; return (indices in pick order, diagnostics).  See the module docstring."""
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
        return _activeft(torch, features, budget, ctx, dev, temperature, iterations, lr, balance, batch_size, reference, record_history)
    finally:
        torch.set_num_threads(previous_threads)


def _activeft(torch, features, budget, ctx, dev, temperature, iterations, lr, balance, batch_size, reference, record_history):
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
            loss_grad = _reference_loss_grad if reference else _paper_loss_grad
            loss_value, grad = loss_grad(torch, feats, rows, centroids.detach(), temperature, balance, chunk_rows, off_diagonal)
            # Chain the gradient w.r.t. the normalised centroids through c = θ/‖θ‖.
            centroids.backward(grad)
            optimizer.step()
            if not reference:
                with torch.no_grad():  # Algorithm 1, line 10: keep ‖θ_j‖ = 1
                    theta.copy_(torch.nn.functional.normalize(theta, dim=1))
            loss_history[it] = loss_value
            if history is not None and ((it + 1) % snapshot_every == 0 or it + 1 == iterations):
                history.append(torch.nn.functional.normalize(theta.detach(), dim=1).cpu().numpy())
            if it % 10 == 0 or it + 1 == iterations:
                ctx.progress(0.9 * (it + 1) / max(iterations, 1), f"ActiveFT iteration {it + 1}/{iterations}, loss {loss_value:.4f}")

    with ctx.stage("match"):
        centroids = torch.nn.functional.normalize(theta.detach(), dim=1)
        picks = _match_centroids(torch, feats, centroids, chunk_rows)
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


def _reference_loss_grad(torch, feats, rows, centroids, temperature, balance, chunk_rows, off_diagonal):
    """The reference code's per-sample loss and its gradient w.r.t. the normalised centroids."""
    total = feats.shape[0] if rows is None else rows.shape[0]
    c_leaf = centroids.clone().requires_grad_(True)
    # log Σ_k exp(c̄_kᵀ c_j / τ): one side detached and k = j included, as in the reference.
    log_mass = torch.logsumexp((c_leaf.detach() @ c_leaf.T) / temperature, dim=0)
    log_balance = math.log(balance) if balance > 0 else float("-inf")
    loss_value = 0.0
    for start in range(0, total, chunk_rows):
        block = slice(start, min(start + chunk_rows, total))
        x = feats[block] if rows is None else feats[rows[block]]
        best, owner = ((x @ c_leaf.T) / temperature).max(dim=1)
        # J_i = s_i − log(e^{s_i} + λ e^{log_mass_j}), written as a log-add-exp.
        j = best - torch.logaddexp(best, log_mass[owner] + log_balance)
        chunk_loss = -j.sum() / total
        chunk_loss.backward(retain_graph=True)
        loss_value += float(chunk_loss.detach())
    return loss_value, c_leaf.grad


def _match_centroids(torch, feats, centroids, chunk_rows, top: int = 16):
    """Each centroid in turn takes its most similar sample not taken yet (exactly B distinct).

    The top-`top` candidates per centroid come from a chunked top-k (no full sort of N); the
    rare centroid whose candidates are all taken falls back to one masked argmax over the pool.
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
    taken = np.zeros(n, dtype=bool)
    picks = np.empty(budget, dtype=np.int64)
    for j in range(budget):
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
)
def select_activeft(features, budget, ctx, **params):
    return activeft_optimize(features, budget, ctx, **params)
