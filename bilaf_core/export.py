"""Selections leaving the engine's hands: edited by a person on the map, exported as a JSON list
of pool indices (what the BiLAF / DeiT finetuning scripts read) or a CSV with one row per pick."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Sequence

import numpy as np

CSV_COLUMNS = ("index", "pick_order", "id", "label", "cluster", "role", "method", "score")

#: per-pick diagnostics (length B) that an edit must re-index; everything else is per pool or global
_PER_PICK_FILL = {"boundary_score": np.nan, "opponent_cluster": -1, "pick_cluster": -1, "is_core_pick": False}


def edit_selection(selection, *, add=(), remove=(), parent_id: str | None = None):
    """A new :class:`~bilaf_core.selection.Selection` with picks removed and added by hand.

    Kept picks keep their order and their per-pick diagnostics; added picks come last, in the
    order given, with an empty score (NaN / -1) and ``edited_added`` True.  The method's own picks
    removed by hand are recorded in ``edited_removed`` (pool indices, accumulated over successive
    edits; a pick added by hand and removed again simply goes), so the map can draw them as a
    layer of their own while the method's layers keep counting only the method's picks.
    Pool-level diagnostics (cluster, ring level, noise mask, cores) are carried over unchanged,
    so the edited selection draws on the map like its parent.  The parent is not modified.
    """
    from .errors import BilafError
    from .selection.base import Selection, check_indices

    remove = set(int(i) for i in np.asarray(list(remove), dtype=np.int64).reshape(-1))
    base = selection.indices
    keep_mask = np.array([int(i) not in remove for i in base], dtype=bool)
    kept = base[keep_mask]
    add = [int(i) for i in np.asarray(list(add), dtype=np.int64).reshape(-1)]
    already = set(kept.tolist())
    added = []
    for i in add:
        if i not in already:
            added.append(i)
            already.add(i)
    indices = np.concatenate([kept, np.asarray(added, dtype=np.int64)]).astype(np.int64)
    if indices.size == 0:
        raise BilafError("the edited selection would be empty; keep at least one pick")
    check_indices(indices, selection.n_pool, what="edited picks")
    n_old = base.size
    diagnostics = {}
    for name, value in (selection.diagnostics or {}).items():
        array = np.asarray(value) if value is not None else None
        if array is not None and array.ndim == 1 and array.size == n_old and name in _PER_PICK_FILL:
            fill = np.full(len(added), _PER_PICK_FILL[name], dtype=array.dtype)
            diagnostics[name] = np.concatenate([array[keep_mask], fill])
        elif array is not None and array.ndim == 1 and array.size == n_old and name == "edited_added":
            diagnostics[name] = np.concatenate([array[keep_mask], np.ones(len(added), dtype=bool)])
        else:
            diagnostics[name] = value
    if "edited_added" not in diagnostics:
        diagnostics["edited_added"] = np.concatenate([np.zeros(kept.size, dtype=bool), np.ones(len(added), dtype=bool)])
    # the method's picks removed by hand (earlier edits' too), minus any added back since
    was_added = np.asarray((selection.diagnostics or {}).get("edited_added", np.zeros(n_old, dtype=bool)), dtype=bool)
    if was_added.size != n_old:
        was_added = np.zeros(n_old, dtype=bool)
    removed_now = base[~keep_mask & ~was_added]
    before = np.asarray((selection.diagnostics or {}).get("edited_removed", np.zeros(0, np.int64)), dtype=np.int64).reshape(-1)
    removed_all = np.union1d(before, removed_now).astype(np.int64)
    diagnostics["edited_removed"] = removed_all[~np.isin(removed_all, indices)]
    params = dict(selection.params or {})
    params.update(budget=int(indices.size), edited_from=parent_id, added=len(added), removed=int((~keep_mask).sum()))
    return Selection(
        method=selection.method,
        indices=indices,
        n_pool=selection.n_pool,
        seed=selection.seed,
        params=params,
        diagnostics=diagnostics,
        timings={},
    )


def indices_json(indices: Sequence[int] | np.ndarray) -> bytes:
    """``[12, 7, …]`` — the pool indices in pick order, one JSON list."""
    return (json.dumps([int(i) for i in np.asarray(indices).reshape(-1)]) + "\n").encode()


def pick_roles(selection) -> list[str]:
    """Per pick, in pick order: ``core`` / ``boundary`` (BiLAF), ``added`` (by hand) or ``pick``."""
    return _pick_columns(selection)[2]


def removed_by_hand(selection) -> np.ndarray:
    """Pool indices of the method's picks that a hand edit removed (empty when none)."""
    value = (selection.diagnostics or {}).get("edited_removed")
    return np.zeros(0, np.int64) if value is None else np.asarray(value, dtype=np.int64).reshape(-1)


def _pick_columns(selection) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per pick: cluster (pseudo-class or the method's own cluster, -1 when none), score (NaN when
    the method has none) and role (core / boundary / pick / added)."""
    diag = selection.diagnostics or {}
    n_picks = selection.indices.size
    cluster = np.full(n_picks, -1, dtype=np.int64)
    score = np.full(n_picks, np.nan, dtype=np.float64)
    roles = ["pick"] * n_picks

    def per_pick(name):
        value = diag.get(name)
        if value is None:
            return None
        value = np.asarray(value)
        return value if value.ndim == 1 and value.size == n_picks else None

    def per_pool(name):
        value = diag.get(name)
        if value is None:
            return None
        value = np.asarray(value)
        return value[selection.indices] if value.ndim == 1 and value.size == selection.n_pool else None

    pick_cluster = per_pick("pick_cluster")
    if pick_cluster is None:
        pick_cluster = per_pool("cluster")
    if pick_cluster is None:
        pick_cluster = per_pool("assignment")
    if pick_cluster is not None:
        cluster = pick_cluster.astype(np.int64)
    for name in ("boundary_score", "typicality", "score"):
        values = per_pick(name)
        if values is None:
            values = per_pool(name)
        if values is not None:
            score = values.astype(np.float64)
            break
    is_core = per_pick("is_core_pick")
    if is_core is not None:
        roles = ["core" if c else "boundary" for c in is_core.astype(bool)]
    added = per_pick("edited_added")
    if added is not None:
        roles = ["added" if a else r for a, r in zip(added.astype(bool), roles)]
    return cluster, score, roles


def selection_rows(selection, meta: dict[str, Any] | None = None, *, method: str | None = None) -> list[dict]:
    """One dict per pick, columns as :data:`CSV_COLUMNS`."""
    meta = meta or {}
    ids = meta.get("ids")
    labels = meta.get("labels")
    class_names = meta.get("class_names")
    cluster, score, roles = _pick_columns(selection)
    method = method or selection.method
    rows = []
    for order, index in enumerate(selection.indices.tolist()):
        label = ""
        if labels is not None and index < len(labels) and labels[index] is not None:
            label = labels[index]
            if class_names and 0 <= int(label) < len(class_names):
                label = class_names[int(label)]
        s = float(score[order])
        rows.append(
            {
                "index": index,
                "pick_order": order,
                "id": ids[index] if ids is not None and index < len(ids) else "",
                "label": label,
                "cluster": int(cluster[order]) if cluster[order] >= 0 else "",
                "role": roles[order],
                "method": method,
                "score": "" if math.isnan(s) else f"{s:.6g}",
            }
        )
    return rows


def selection_csv(selection, meta: dict[str, Any] | None = None, *, method: str | None = None) -> bytes:
    """CSV text (UTF-8) of :func:`selection_rows`, with a header line."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(selection_rows(selection, meta, method=method))
    return buf.getvalue().encode("utf-8")
