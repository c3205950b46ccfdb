"""Reading the workspace from the pages: the workspace and job manager of this server, feature
sets and selections as the pages list them, and process-wide memos for big read-only arrays
(features, maps), metadata and thumbnails, shared by every tab and rerun."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import streamlit as st

from bilaf_core import jobs as jobs_mod
from bilaf_core import palette
from pages._catalog import dataset_title
from pages._style import fmt_time, fmt_time_of_day


def workspace():
    """The workspace for this server (``$BILAF_WORKSPACE`` or ``<project>/workspace``)."""
    root = os.environ.get("BILAF_WORKSPACE") or None
    return _workspace_for(root)


@st.cache_resource(show_spinner=False)
def _workspace_for(root: str | None):
    from bilaf_core.workspace import Workspace

    return Workspace(root)


def job_manager() -> jobs_mod.JobManager:
    ws = workspace()
    return jobs_mod.get_manager(Path(ws.root) / "jobs")


_ARRAYS: dict[tuple, Any] = {}


_ARRAYS_LOCK = __import__("threading").Lock()


_ARRAYS_KEEP = 3


def _memo_array(key: tuple, load: Callable[[], Any]):
    """A tiny process-wide LRU for big read-only arrays (features, maps): shared by every tab,
    rerun and job thread, so a 300 MB feature matrix is read once, not on every slider move."""
    return _lru_get(_ARRAYS, _ARRAYS_KEEP, key, load)


def _lru_get(table: dict, keep: int, key: tuple, load: Callable[[], Any]):
    """`table[key]`, loaded (outside the lock) on a miss; at most `keep` entries, least recently used
    dropped first (a dict keeps insertion order, so a hit is moved to the end)."""
    with _ARRAYS_LOCK:
        if key in table:
            value = table.pop(key)
            table[key] = value
            return value
    value = load()
    with _ARRAYS_LOCK:
        table[key] = value
        while len(table) > keep:
            table.pop(next(iter(table)))
    return value


_SMALL: dict[str, dict[tuple, Any]] = {}


#: entries kept per namespace (key[0]); others default to 32
_SMALL_KEEP = {"thumb": 512, "bilaf_at_budget": 16, "meta": 16, "inspect": 8, "inspect_pool": 2}


def _memo_small(key: tuple, load: Callable[[], Any]):
    """Process-wide LRU per namespace (``key[0]``) for small results shared by every tab."""
    space = key[0]
    with _ARRAYS_LOCK:
        table = _SMALL.setdefault(space, {})
    return _lru_get(table, _SMALL_KEEP.get(space, 32), key, load)


def _stat_key(path: Path) -> tuple:
    st_ = path.stat()
    return (str(path), st_.st_size, st_.st_mtime_ns)


def load_features(feature_dir: str | os.PathLike):
    """The (N, D) float32 features of a feature-set folder (memoised, read-only)."""
    import numpy as np

    path = Path(feature_dir) / "features.npy"

    def load():
        array = np.load(path, allow_pickle=False)
        array = np.ascontiguousarray(array, dtype=np.float32)
        array.setflags(write=False)
        return array

    return _memo_array(("features",) + _stat_key(path), load)


def load_map(feature_dir: str | os.PathLike):
    """The cached 2-D map of a feature set, or None when it has not been computed yet."""
    from bilaf_core import projection

    coords_path, _ = projection.projection_paths(feature_dir)
    if not coords_path.is_file():
        return None
    return _memo_array(("map",) + _stat_key(coords_path), lambda: projection.load_projection(feature_dir))


def load_quick_map(feature_dir: str | os.PathLike):
    """A quick 2-D layout (PCA) of a feature set, drawn while its UMAP map is computed."""
    from bilaf_core import projection

    path = Path(feature_dir) / "features.npy"
    return _memo_array(("quick-map",) + _stat_key(path), lambda: projection.load_or_make_quick_layout(feature_dir))


def feature_set_meta(fs: dict) -> dict:
    """meta.json of a feature set (ids, labels, class names, dataset, backbone…)."""
    import json as _json

    path = Path(fs["path"]) / "meta.json"
    return _memo_small(("meta",) + _stat_key(path), lambda: _json.loads(path.read_text()))


_IMPORT_FOLDER = __import__("re").compile(r"^import-(.+?)(?:-\d{8}-\d{6})?$")


def describe_feature_set(row: dict) -> dict:
    """A workspace row (or ``{"id", "path", "meta"}``) as the pages show it, with a `label`
    such as ``Fashion-MNIST · efficientnet-lite0 · 10,000 images`` or
    ``mine (imported embeddings) · 400 × 24``."""
    meta = row.get("meta") or {}
    get = lambda k, default=None: row[k] if row.get(k) is not None else meta.get(k, default)  # noqa: E731
    dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {"name": row.get("dataset")}
    ds_name = dataset.get("name") or "embeddings"
    limit, split = dataset.get("limit"), dataset.get("split")
    n = int(get("n", 0) or 0)
    dim = int(get("dim", 0) or 0)
    backbone = get("backbone") or "imported"
    timings = dict(get("timings") or {})
    timings.setdefault("total", timings.get("import"))
    if ds_name == "imported" or backbone == "imported":
        folder = Path(str(row.get("path") or "")).name
        found = _IMPORT_FOLDER.match(folder)
        name = found.group(1) if found else folder or "embeddings"
        label = f"{name} (imported embeddings) · {n:,} × {dim}"
        ds_name, backbone = "imported", "imported"
    else:
        title = dataset_title(ds_name).split(" (")[0]
        part = "" if split in (None, "train") else f" {split} split"
        label = f"{title}{part} · {backbone} · {n:,} images"
    return {
        **row,
        "id": str(row.get("id") or row.get("feature_set_id")),
        "path": str(row.get("path")),
        "n": n,
        "dim": dim,
        "dataset": ds_name,
        "split": split,
        "limit": limit,
        "backbone": backbone,
        "created": get("created"),
        "timings": timings,
        "has_labels": bool(get("has_labels", meta.get("labels") is not None)),
        "label": label,
    }


def feature_sets() -> list[dict]:
    """The workspace's feature sets, each with `id`, `path`, `n`, `dim`, `label`…: pools first
    (newest first), then the test splits that evaluation extracted beside them."""
    out = [describe_feature_set(row) for row in workspace().list_feature_sets()]
    out.sort(key=lambda r: str(r.get("created") or ""), reverse=True)
    out.sort(key=lambda r: not is_pool(r))  # stable: keeps newest first within each group
    return out


def is_pool(fs: dict) -> bool:
    """Whether a feature set is a pool to select from: a dataset's train split, a folder of
    images or imported embeddings.  A test (or validation) split that an evaluation extracted
    beside a pool is not: selecting from it, or mapping it, would be a mistake."""
    return fs.get("split") in (None, "train")


def pool_feature_sets() -> list[dict]:
    """The feature sets that are pools (see :func:`is_pool`), newest first."""
    return [fs for fs in feature_sets() if is_pool(fs)]


#: joins a derived selection's name to its parent's title: "BiLAF · B=100 → edited: +96 −9"
DERIVED_ARROW = " → "


def selection_title(row: dict) -> str:
    """``BiLAF · B=100`` — with the time it was made when another selection has the same name
    and budget (see :func:`selections`).  A selection derived on the Map (an edit, a new budget)
    is named after its parent, e.g. ``BiLAF · B=100 → edited: +96 −9``, and that name is its
    title as it stands."""
    if row.get("title"):
        return row["title"]
    name = row.get("name") or palette.method_label(str(row.get("method")))
    if DERIVED_ARROW in name:
        return name
    budget = row.get("budget")
    return f"{name} · B={budget}" if budget is not None else name


def selections(feature_set_id: str) -> list[dict]:
    """The feature set's selections, newest first, each with a `title` that tells it apart."""
    rows = [dict(r) for r in workspace().list_selections(feature_set_id)]
    rows.sort(key=lambda r: str(r.get("created") or ""), reverse=True)
    base = [selection_title({k: v for k, v in r.items() if k != "title"}) for r in rows]
    for row, title in zip(rows, base):
        row["title"] = title if base.count(title) == 1 else f"{title} · {fmt_time_of_day(row.get('created'))}"
    return rows


def selection_rows(feature_set_id: str) -> list[dict]:
    out = []
    for r in selections(feature_set_id):
        out.append({
            "name": r.get("name") or "",
            "method": palette.method_label(str(r.get("method"))),
            "budget": r.get("budget"),
            "seed": r.get("seed"),
            "edited from": r.get("parent_id") or "",
            "created": fmt_time(r.get("created")),
            "id": r.get("id"),
        })
    return out


def load_selection(selection_id: str):
    return workspace().load_selection(selection_id)


@st.cache_resource(show_spinner=False, max_entries=4)
def _dataset_for(path: str, stamp: tuple):
    from bilaf_core.datasets import dataset_from_meta

    return dataset_from_meta(feature_set_meta({"path": path}))


def thumbnails(fs: dict, indices: tuple[int, ...], size: int = 96) -> dict[int, Any] | None:
    """Thumbnails (PIL images) of pool samples, or None when no images are behind the features."""
    from bilaf_core.errors import BilafError

    try:
        dataset = _dataset_for(fs["path"], _stat_key(Path(fs["path"]) / "meta.json"))
    except (BilafError, FileNotFoundError, OSError, KeyError, TypeError, ValueError):
        return None
    out = {}
    for i in indices:
        try:
            out[i] = _memo_small(("thumb", fs["path"], i, size), lambda i=i: dataset.thumbnail(i, size=size))
        except (BilafError, OSError, IndexError, ValueError):
            return None
    return out


def feature_set_bytes(fs: dict) -> int | None:
    try:
        return (Path(fs["path"]) / "features.npy").stat().st_size
    except OSError:
        return None


def _minus(total, part):
    if total is None:
        return None
    return max(float(total) - float(part or 0.0), 0.0)


def evaluations(feature_set_id: str) -> list[dict]:
    """The workspace's evaluations of this feature set's selections, newest first, as flat dicts
    (selection_id, mode, accuracy, per_class, confusion, class_names, n_train, test_set, seconds,
    created)."""
    out = []
    for row in workspace().list_evaluations(feature_set_id=feature_set_id):
        result = row.get("result") or {}
        get = lambda k, default=None: row[k] if row.get(k) is not None else result.get(k, default)  # noqa: E731
        timings = result.get("timings") or {}
        params = result.get("params") or {}
        if get("accuracy") is None:
            continue
        out.append({
            "id": row.get("id"),
            "selection_id": row.get("selection_id"),
            "mode": get("mode"),
            "preset": params.get("preset"),
            "accuracy": float(get("accuracy")),
            "per_class": result.get("per_class"),
            "confusion": result.get("confusion"),
            "class_names": result.get("class_names"),
            "n_train": result.get("n_train"),
            "test_set": params.get("test_set"),
            "seed": params.get("seed"),
            "seconds": row.get("seconds") if row.get("seconds") is not None else timings.get("total"),
            # the evaluation's own time: without preparing (extracting, the first time) the test split
            "train_seconds": _minus(row.get("seconds") if row.get("seconds") is not None else timings.get("total"),
                                    timings.get("test_set")),
            "created": row.get("created"),
        })
    out.sort(key=lambda r: str(r.get("created") or ""), reverse=True)
    return out
