"""ActiveFT's two objectives: analytic gradients against autograd, the engine against a slow
loop-by-loop version of the published objective, and what each does on blobs in a cone."""

from __future__ import annotations

import numpy as np
import pytest

from bilaf_core.errors import BilafError
from bilaf_core.selection import run_selection


def cone_blobs(seed: int, n_blobs: int = 12, per: int = 60, dim: int = 32, centre_spread: float = 0.5, noise: float = 0.25):
    """Blobs whose centres all lie in a cone around one direction (as real backbone features do:
    every pair of samples has a positive cosine), L2-normalised."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=dim)
    axis /= np.linalg.norm(axis)
    centres = axis + centre_spread * rng.normal(size=(n_blobs, dim)) / np.sqrt(dim)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, per, axis=0) + noise * rng.normal(size=(n_blobs * per, dim)) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(n_blobs), per)


# ---------------------------------------------------------------------------------------------
# The published objective's analytic gradient equals autograd through the public code's loss
# ---------------------------------------------------------------------------------------------


def _public_form_loss(torch, x, theta, temperature, balance):
    """The loss as the public code writes it (normalise, exp, max, detached centroid mass with
    k = j included), differentiated by autograd.  float64 keeps exp() exact enough here."""
    c = torch.nn.functional.normalize(theta, dim=1)
    prod_exp = torch.exp(x @ c.T / temperature)
    pos, owner = prod_exp.max(dim=1)
    mass = torch.exp(c.detach() @ c.T / temperature).sum(dim=0)
    return -(torch.log(pos) - torch.log(pos + mass[owner] * balance)).mean()


@pytest.mark.parametrize("subset,balance", [(False, 1.0), (True, 1.0), (False, 0.5)])
def test_published_gradient_matches_autograd(subset, balance):
    import torch

    from bilaf_core.selection.activeft import _published_loss_grad

    gen = torch.Generator().manual_seed(3)
    feats = torch.nn.functional.normalize(torch.randn(300, 16, generator=gen, dtype=torch.float64), dim=1)
    theta = torch.randn(12, 16, generator=gen, dtype=torch.float64) * 1.3  # not unit norm: θ is raw
    rows = torch.randperm(300, generator=gen)[:100] if subset else None
    cents = torch.nn.functional.normalize(theta, dim=1)
    value, grad_c = _published_loss_grad(torch, feats, rows, cents, 0.07, balance, 64, None)  # 64-row chunks
    # chain through the normalisation as the engine does, and compare with autograd w.r.t. θ
    leaf_c = cents.clone().requires_grad_(True)
    theta_engine = theta.clone().requires_grad_(True)
    torch.nn.functional.normalize(theta_engine, dim=1).backward(grad_c)
    theta_auto = theta.clone().requires_grad_(True)
    x = feats if rows is None else feats[rows]
    loss = _public_form_loss(torch, x, theta_auto, 0.07, balance)
    loss.backward()
    assert value == pytest.approx(float(loss.detach()), rel=1e-10)
    torch.testing.assert_close(theta_engine.grad, theta_auto.grad, atol=1e-12, rtol=1e-9)
    del leaf_c


def test_published_loss_is_stable_where_the_literal_form_overflows():
    """At a tiny temperature exp(s/τ) overflows float32; the log-add-exp form stays finite."""
    import torch

    from bilaf_core.selection.activeft import _published_loss_grad

    gen = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(200, 8, generator=gen), dim=1)
    cents = feats[:5].clone()
    value, grad = _published_loss_grad(torch, feats, None, cents, 0.005, 1.0, 1000, None)
    assert np.isfinite(value) and torch.isfinite(grad).all()
    literal = torch.exp(feats @ cents.T / 0.005)
    assert not torch.isfinite(literal).all()  # what log(exp(·)) would have met


# ---------------------------------------------------------------------------------------------
# The engine against a slow loop-by-loop version of the public code's algorithm
# ---------------------------------------------------------------------------------------------


def slow_activeft_published(x, init_ids, iterations, lr=1e-3, temperature=0.07, balance=1.0):
    """Per-sample loops; loss by autograd; Adam written out; no renormalisation of θ; then each
    centroid in order takes its most similar sample not taken yet."""
    import math

    import torch

    feats = torch.nn.functional.normalize(torch.from_numpy(np.asarray(x, np.float64)), dim=1)
    theta = feats[list(init_ids)].clone()
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for step in range(1, iterations + 1):
        t = theta.clone().requires_grad_(True)
        c = torch.nn.functional.normalize(t, dim=1)
        total = 0.0
        for i in range(feats.shape[0]):
            sims = [float(feats[i] @ c[j].detach()) for j in range(c.shape[0])]
            j = sims.index(max(sims))
            s = feats[i] @ c[j] / temperature
            mass = sum(torch.exp(c[k].detach() @ c[j] / temperature) for k in range(c.shape[0]))
            total = total - (s - torch.log(torch.exp(s) + balance * mass))
        (total / feats.shape[0]).backward()
        g = t.grad
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        theta = theta - lr * (m / (1 - b1**step)) / ((v / (1 - b2**step)).sqrt() + eps)
    c = torch.nn.functional.normalize(theta, dim=1)
    taken, picks = set(), []
    for j in range(c.shape[0]):
        sims = [(-float(c[j] @ feats[i]), i) for i in range(feats.shape[0])]
        for _, i in sorted(sims):
            if i not in taken:
                taken.add(i)
                picks.append(i)
                break
    return picks, c.numpy()


@pytest.mark.parametrize("seed", [0, 1])
def test_published_objective_matches_slow_loop_version(seed):
    x, _ = cone_blobs(seed, n_blobs=5, per=16, dim=8)
    sel = run_selection("activeft", x, 6, seed=seed, iterations=25, lr=1e-2, device="cpu")
    picks, centroids = slow_activeft_published(x, sel.diagnostics["init_indices"], 25, lr=1e-2)
    np.testing.assert_allclose(sel.diagnostics["centroids"], centroids, atol=2e-5)
    assert sel.to_list() == picks


# ---------------------------------------------------------------------------------------------
# What the objectives do on real-looking features (the reason the default is `published`)
# ---------------------------------------------------------------------------------------------


def _blobs_covered(sel, labels):
    return len(set(labels[sel.indices].tolist()))


def test_published_objective_spreads_over_blobs_in_a_cone_and_the_literal_equation_does_not():
    x, labels = cone_blobs(7, n_blobs=16, per=100, dim=48)
    covered = {}
    stuck = {}
    for objective in ("published", "paper-equation"):
        covered[objective], stuck[objective] = [], []
        for seed in range(3):
            sel = run_selection("activeft", x, 16, seed=seed, objective=objective)
            covered[objective].append(_blobs_covered(sel, labels))
            stuck[objective].append(int((sel.indices == sel.diagnostics["init_indices"]).sum()))
    # the default spreads its picks over most blobs and moves off its random start
    assert np.mean(covered["published"]) >= 13
    assert np.mean(covered["published"]) >= np.mean(covered["paper-equation"]) + 1
    assert np.mean(stuck["published"]) <= 3
    # the literal equation's centroids leave the cone and fall back to their random start samples
    assert np.mean(stuck["paper-equation"]) > np.mean(stuck["published"]) + 3


def test_default_objective_is_published_and_recorded():
    x, _ = cone_blobs(0, n_blobs=4, per=30, dim=8)
    sel = run_selection("activeft", x, 4, iterations=5)
    assert sel.params["objective"] == "published"
    b = run_selection("bilaf", x, 8, iterations=5, objective="paper-equation")
    assert b.params["objective"] == "paper-equation"
    with pytest.raises(BilafError, match="must be one of"):
        run_selection("activeft", x, 4, objective="literal")


def test_compat_reference_changes_start_and_order_not_the_objective():
    """compat=reference: Python random start and sorted picks; same objective otherwise — the
    centroids it reaches from its own start equal the default engine's from that start."""
    import random

    x, _ = cone_blobs(2, n_blobs=6, per=40, dim=16)
    ref = run_selection("activeft", x, 8, seed=4, iterations=40, compat="reference")
    assert ref.to_list() == sorted(ref.to_list())
    expected_start = sorted(random.Random(4).sample(range(x.shape[0]), 8))
    assert sorted(ref.diagnostics["init_indices"].tolist()) == expected_start
    for objective in ("published", "paper-equation"):
        a = run_selection("activeft", x, 8, seed=4, iterations=40, compat="reference", objective=objective)
        assert a.params["objective"] == objective
    # the objective really differs: the two final centroid sets are not the same
    a = run_selection("activeft", x, 8, seed=4, iterations=40, compat="reference", objective="published")
    b = run_selection("activeft", x, 8, seed=4, iterations=40, compat="reference", objective="paper-equation")
    assert not np.allclose(a.diagnostics["centroids"], b.diagnostics["centroids"], atol=1e-3)
