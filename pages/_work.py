"""Background work started from the pages: the 2-D map, selections (reused when an identical
one is saved), BiLAF at another budget, extraction, embedding import, evaluations and sweeps.
Each is a job of :mod:`bilaf_core.jobs`; the computation itself is a call into ``bilaf_core``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import streamlit as st

from bilaf_core import palette
from bilaf_core.child import run_in_child
from pages._catalog import dataset_title
from pages._store import (_ARRAYS_LOCK, _SMALL, _memo_small, describe_feature_set, feature_sets, job_manager, load_features,
                          load_map, load_selection, workspace)
from pages._style import fmt_duration


def projection_job_key(fs: dict) -> str:
    from bilaf_core import projection

    return "project:" + projection.projection_key(projection.features_digest(fs["path"]), {})


def ensure_projection(fs: dict) -> str | None:
    """Start computing the map of `fs` unless it is cached or already being computed; return the
    job id (None when the map is ready)."""
    from bilaf_core import projection

    if load_map(fs["path"]) is not None:
        return None
    path = fs["path"]
    # numba's compiled UMAP kernels, cached in the workspace for every later map's child process
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(workspace().root) / ".numba-cache"))

    def work(progress):
        projection.project_feature_set(path, progress=progress, isolate=True)  # keeps the server's GIL free
        return {"feature_set": fs["id"]}

    return job_manager().submit(
        "project", f"2-D map of {fs['label']}", work, key=projection_job_key(fs), tags={"feature_set": fs["id"]}
    )


def _select_in_child(ws, fs: dict, method: str, budget: int, *, seed: int, options: dict, name: str, progress) -> dict:
    """Run `method` and save its selection in a child process; returns {"selection_id", "seconds"}.
    A child, not this server thread: ActiveFT's many small torch calls would otherwise queue for
    the server's GIL behind every page rerun (see bilaf_core/child.py)."""
    return run_in_child("select", {"workspace_root": str(ws.root), "feature_set_id": fs["id"], "feature_path": fs["path"],
                                   "method": method, "budget": int(budget), "seed": int(seed), "options": dict(options),
                                   "name": name}, progress, what=f"{name} at B={budget:,}")


def submit_selection(fs: dict, method: str, budget: int, *, seed: int, options: dict, name: str | None = None,
                     reuse: bool = True) -> str | None:
    """Run `method` on `fs` in the background and save the result in the workspace; return the
    job id.  With `reuse` (the default), an identical saved selection (same method, budget, seed
    and parameters on this pool) is not run again: None is returned and nothing is submitted
    (:func:`find_identical_selection` names it)."""
    import json as _json

    from bilaf_core.errors import BilafError
    from bilaf_core.selection import get_method

    spec = get_method(method)
    for k, v in options.items():  # fail now, in the page, rather than in the job
        if k not in {p.name for p in spec.params}:
            raise BilafError(f"{method} does not take {k}")
        spec.param(k).coerce(v, method)
    ws = workspace()
    if reuse and find_identical_selection(ws.list_selections(fs["id"]), method, budget, seed, options) is not None:
        return None
    label = name or palette.method_label(method)

    def work(progress):
        return _select_in_child(ws, fs, method, budget, seed=seed, options=options, name=label, progress=progress)

    key = "select:" + _json.dumps([fs["id"], method, budget, seed, sorted(options.items())], default=str)
    return job_manager().submit(
        "select", f"{label} · B={budget}", work, key=key,
        params={"method": method, "budget": budget, "seed": seed, **options},
        tags={"feature_set": fs["id"], "method": method},
    )


#: pools up to this many feature values (N x D) re-run BiLAF inline on a budget change (the page
#: shows the result as soon as it is drawn): 60 000 x 112 (Fashion-MNIST, EfficientNet-Lite0,
#: K = 300) costs ~2.6 s of CPU on two cores, nearly all of it BiLAF recomputing each
#: pseudo-class's distance matrix (bench/app_latency.py).  Larger pools run it as a background
#: job with progress, so the page never waits longer than that.
INLINE_BILAF_VALUES = 60_000 * 256


def bilaf_at_budget(fs: dict, selection_id: str, budget: int):
    """BiLAF re-run at another budget on the cores of a saved BiLAF selection (same seed and
    options), so only its boundary stage runs.  Memoised per (selection, budget)."""
    from bilaf_core.selection import get_method, run_selection

    def run():
        base = load_selection(selection_id)
        spec = get_method("bilaf")
        declared = {p.name for p in spec.params}
        # the recorded options, minus the core choice (given explicitly) and the budget
        options = {k: v for k, v in (base.params or {}).items() if k in declared and k not in ("core_budget", "core_indices")}
        features = load_features(fs["path"])
        return run_selection("bilaf", features, budget, seed=base.seed, core_indices=base.diagnostics["core_indices"], **options)

    return _memo_small(("bilaf_at_budget", fs["path"], selection_id, int(budget)), run)


def bilaf_at_budget_ready(fs: dict, selection_id: str, budget: int):
    """The memoised re-run, or None when it has not been computed yet (no work done here)."""
    with _ARRAYS_LOCK:
        return _SMALL.get("bilaf_at_budget", {}).get(("bilaf_at_budget", fs["path"], selection_id, int(budget)))


def submit_bilaf_at_budget(fs: dict, selection_id: str, budget: int) -> str:
    def work(progress):
        progress(0.0, f"BiLAF boundary stage at B={budget:,}")
        selection = bilaf_at_budget(fs, selection_id, budget)
        return {"seconds": selection.timings.get("total"), "budget": budget}

    return job_manager().submit(
        "rebudget", f"BiLAF at B={budget:,}", work, key=f"rebudget:{selection_id}:{budget}",
        tags={"feature_set": fs["id"], "selection": selection_id},
    )


def submit_rerun_keeping_edits(fs: dict, *, parent_id: str, name: str, method: str, budget: int, kept, removed,
                               exclude=None, seed: int = 0, options: dict | None = None) -> str:
    """Run `method` again at `budget` with the picks `kept` included and the `removed` ones (and
    `exclude`) never picked (:func:`bilaf_core.inspect.rerun_keeping_edits`), in the background;
    the result is saved as a child record of `parent_id` named `name`."""
    import hashlib

    import numpy as np

    ws = workspace()
    kept = np.asarray(kept, dtype=np.int64).reshape(-1)
    removed = np.asarray(removed, dtype=np.int64).reshape(-1)
    options = dict(options or {})

    def work(progress):  # in a child process, as every selection job (see _select_in_child)
        return run_in_child("rerun", {"workspace_root": str(ws.root), "feature_set_id": fs["id"], "feature_path": fs["path"],
                                      "method": method, "budget": int(budget), "kept": kept, "removed": removed,
                                      "exclude": None if exclude is None else np.asarray(exclude, dtype=np.int64),
                                      "seed": int(seed), "options": options, "name": name, "parent_id": parent_id},
                            progress, what=f"{name}")

    digest = hashlib.sha1(kept.tobytes() + b"|" + removed.tobytes()).hexdigest()[:12]
    return job_manager().submit(
        "select", name, work, key=f"rerun:{parent_id}:{budget}:{digest}",
        params={"method": method, "budget": budget, "seed": seed, "kept": int(kept.size), "removed": int(removed.size)},
        tags={"feature_set": fs["id"], "method": method, "selection": parent_id},
    )


def _recorded_params(method: str, options: dict) -> dict:
    """The parameters a run of `method` with `options` records (defaults filled in, values
    coerced), as JSON would store them: what an identical saved selection carries."""
    from bilaf_core.selection import get_method

    spec = get_method(method)
    params = {p.name: p.coerce(options.get(p.name, p.default), method) for p in spec.params}
    return json.loads(json.dumps(params, default=str))


def find_identical_selection(rows: list[dict], method: str, budget: int, seed: int, options: dict | None = None) -> str | None:
    """The id of a saved selection that a run of `method` at `budget` with `seed` and `options`
    on this pool would make again (same method, budget, seed and parameters; not a hand edit nor
    a derived record), or None.  Every method is deterministic given these, so reusing it is
    exact."""
    want = _recorded_params(method, dict(options or {}))
    for row in rows:
        if row.get("method") != method or row.get("budget") != budget or row.get("seed") != seed or row.get("parent_id"):
            continue
        params = {k: v for k, v in (row.get("params") or {}).items() if k != "budget"}
        if params == want:
            return row["id"]
    return None


def find_default_selection(rows: list[dict], method: str, budget: int, seed: int) -> str | None:
    """The id of a saved, unedited selection made by `method` at `budget` with `seed` and the
    method's default parameters (what a sweep point would make again), or None."""
    return find_identical_selection(rows, method, budget, seed, {})


def _follow_up(ws, fs_id: str, path: str, label: str) -> None:
    """After new features: draw the map and run BiLAF at 1% (both in the background)."""
    from bilaf_core import projection
    from bilaf_core.selection import resolve_budget

    fs = describe_feature_set({"id": fs_id, "path": path, "meta": __import__("json").loads((Path(path) / "meta.json").read_text())})
    projection.load_or_make_quick_layout(path)  # drawn at once by the Map until UMAP is done (well under a second)
    # BiLAF first: it is what the first map waits for (the quick layout stands in for UMAP meanwhile)
    submit_selection(fs, "bilaf", resolve_budget("1%", fs["n"]) if fs["n"] >= 200 else max(2, fs["n"] // 10), seed=0, options={})
    ensure_projection(fs)


def submit_extraction(dataset: str, backbone: str, *, limit: int | None, root: str | None, follow_up: bool, weights: str | None = None) -> str:
    ws = workspace()
    title = f"Extract {dataset_title(dataset).split(' (')[0]} · {backbone} · {'all' if limit is None else f'{limit:,}'} images"

    def work(progress):
        # in a child process: 3.5x faster than in a server thread on two cores (bilaf_core/child.py)
        path = run_in_child("extract", {"dataset": dataset, "backbone": backbone, "root": root, "limit": limit,
                                        "weights": weights, "cache_root": str(ws.features_root)}, progress,
                            what="feature extraction")["path"]
        fs_id = ws.register_feature_set(path)
        if follow_up:
            _follow_up(ws, fs_id, str(path), title)
        return {"feature_set_id": fs_id, "path": str(path)}

    key = "extract:" + "|".join(map(str, (dataset, backbone, limit, root, weights)))
    return job_manager().submit("extract", title, work, key=key, params={"dataset": dataset, "backbone": backbone, "limit": limit})


def extraction_done(record: dict) -> None:
    result = record.get("result") or {}
    st.success(
        f"{record.get('title')}: done in {fmt_duration(record.get('elapsed_s'))}. "
        + ("BiLAF and the map are on their way — open the **Map**." if (record.get("params") or {}) else "")
    )
    if result.get("feature_set_id"):
        st.session_state.setdefault("feature_set_id", result["feature_set_id"])


def import_embeddings(npy_path: Path, ids_path: Path | None, labels_path: Path | None, *, name: str) -> str:
    import re

    from bilaf_core import features

    ws = workspace()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "embeddings"
    out_dir = Path(ws.features_root) / f"import-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = features.import_embeddings(npy_path, ids_path=ids_path, labels_path=labels_path, out_dir=out_dir)
    fs_id = ws.register_feature_set(path)
    fs = next((f for f in feature_sets() if f["id"] == fs_id), None)
    if fs is not None:
        ensure_projection(fs)
    return fs_id


_EVAL_LOCKS: dict[str, Any] = {}


def _evaluation_lock(feature_dir: str):
    """One feature-based evaluation at a time per feature set: the first one extracts the
    dataset's test split (cached beside the pool) and the others must wait for that cache rather
    than extract the same split concurrently (which the extraction cache does not support).  A
    linear probe takes about a second once the test split is there."""
    with _ARRAYS_LOCK:
        return _EVAL_LOCKS.setdefault(str(feature_dir), __import__("threading").Lock())


def _evaluate(ws, path: str, selection_id: str, mode: str, *, seed: int, progress, options: dict) -> dict:
    """Evaluate a saved selection and save the result, in a child process (as every heavy job:
    bilaf_core/child.py); returns {"evaluation_id", "accuracy"}."""
    args = {"workspace_root": str(ws.root), "selection_id": selection_id, "feature_path": path, "mode": mode,
            "seed": int(seed), "options": dict(options)}
    if mode == "finetune":
        return run_in_child("evaluate", args, progress, what="the finetune")
    lock = _evaluation_lock(path)
    if not lock.acquire(blocking=False):
        progress(0.0, "waiting for another evaluation of this feature set to finish")
        while not lock.acquire(timeout=0.5):
            progress(0.0, "waiting for another evaluation of this feature set to finish")  # lets Cancel through
    try:
        return run_in_child("evaluate", args, progress, what=f"the {mode} evaluation")
    finally:
        lock.release()


def submit_evaluation(fs: dict, selection_id: str, mode: str, *, seed: int, title: str, options: dict | None = None) -> str:
    """Evaluate a saved selection in the background (`options`: ``preset``, ``epochs``… for a
    finetune) and save the result in the workspace."""
    ws = workspace()
    path = fs["path"]
    options = dict(options or {})

    def work(progress):
        return _evaluate(ws, path, selection_id, mode, seed=seed, progress=progress, options=options)

    key = f"evaluate:{selection_id}:{mode}:{seed}:{sorted(options.items())}"
    return job_manager().submit("evaluate", title, work, key=key, params={"mode": mode, "seed": seed, **options},
                                tags={"feature_set": fs["id"], "selection": selection_id})


def submit_sweep_point(fs: dict, method: str, budget: int, *, seed: int, mode: str) -> str:
    """Select with `method` at `budget`, save it, evaluate it (`mode`) and save the result — one
    background job per point of an accuracy-vs-budget sweep."""
    ws = workspace()
    path = fs["path"]
    label = palette.method_label(method)

    def work(progress):
        made = _select_in_child(ws, fs, method, budget, seed=seed, options={}, name=label,
                                progress=lambda f, m: progress(0.6 * f, m))
        evaluated = _evaluate(ws, path, made["selection_id"], mode, seed=seed, progress=lambda f, m: progress(0.6 + 0.4 * f, m),
                              options={})
        return {"selection_id": made["selection_id"], **evaluated}

    return job_manager().submit(
        "evaluate", f"{label} · B={budget:,} → {mode}", work, key=f"sweep:{fs['id']}:{method}:{budget}:{seed}:{mode}",
        params={"method": method, "budget": budget, "seed": seed, "mode": mode}, tags={"feature_set": fs["id"]},
    )
