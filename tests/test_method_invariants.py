"""Invariants every registered selection method must keep, checked on tiny data.

New methods are picked up automatically from the registry."""

from __future__ import annotations

import numpy as np
import pytest

from bilaf_core.errors import BilafError
from bilaf_core.selection import available_methods, get_method, run_selection

#: small, fast settings for methods whose defaults are sized for real pools
FAST = {"activeft": {"iterations": 30}, "bilaf": {"iterations": 30}}


def _pool(seed=0, n_blobs=5, per=30, dim=8):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (n_blobs, dim))
    return np.concatenate([rng.normal(c, 0.6, (per, dim)) for c in centers]).astype(np.float32)


def test_every_documented_method_is_registered():
    expected = {"bilaf", "activeft", "random", "kmeans", "kmeans-multibatch", "coreset", "fds", "typiclust", "probcover", "fisher"}
    assert expected <= set(available_methods())
    assert available_methods()[0] == "bilaf"  # the flagship leads every list and legend


@pytest.mark.parametrize("method", available_methods())
@pytest.mark.parametrize("budget", [1, 7, 40])
def test_exact_distinct_in_range_and_deterministic(method, budget):
    if method == "bilaf" and budget < 2:
        with pytest.raises(BilafError, match="at least 2"):
            run_selection(method, _pool(), budget, **FAST.get(method, {}))
        return
    x = _pool()
    a = run_selection(method, x, budget, seed=5, **FAST.get(method, {}))
    b = run_selection(method, x, budget, seed=5, **FAST.get(method, {}))
    assert a.indices.dtype == np.int64 and a.indices.shape == (budget,)
    assert len(set(a.to_list())) == budget
    assert a.indices.min() >= 0 and a.indices.max() < len(x)
    assert a.to_list() == b.to_list()
    assert a.timings["total"] > 0 and a.params["budget"] == budget


@pytest.mark.parametrize("method", available_methods())
def test_every_parameter_is_documented(method):
    spec = get_method(method)
    assert spec.summary
    for param in spec.params:
        assert param.help and len(param.help) > 15, f"{method}.{param.name} needs a one-line explanation"
        assert "label" not in param.name.lower(), "labels are never an input to selection"


@pytest.mark.parametrize("method", available_methods())
def test_labels_are_rejected(method):
    x = _pool()
    with pytest.raises(BilafError, match="does not take labels"):
        run_selection(method, x, 5, labels=np.zeros(len(x), dtype=int))


@pytest.mark.parametrize("method", available_methods())
def test_duplicate_rows_still_give_exact_budget(method):
    x = np.concatenate([np.repeat(_pool()[:3], 20, axis=0), _pool(1)[:30]])
    sel = run_selection(method, x, 25, seed=1, **FAST.get(method, {}))
    assert len(set(sel.to_list())) == 25


@pytest.mark.parametrize("method", available_methods())
def test_progress_reaches_one_and_cancel_propagates(method):
    from bilaf_core.errors import Cancelled

    seen = []
    run_selection(method, _pool(), 10, progress=lambda f, m: seen.append(f), **FAST.get(method, {}))
    assert seen and seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)
    # the method itself reports while it works, so a cancel can land mid-run (a uniform random
    # draw is one vectorised call: nothing to report in between)
    if method != "random":
        assert any(0.0 < f < 1.0 for f in seen), f"{method} never reports progress while it works"

    def cancel(fraction, message):
        raise Cancelled()

    with pytest.raises(Cancelled):
        run_selection(method, _pool(), 10, progress=cancel, **FAST.get(method, {}))
