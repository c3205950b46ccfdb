"""Streamlit helpers shared by the pages: workspace and job access, job progress panels,
parameter widgets introspected from the method registry, small formatting helpers.

UI only: every computation is a call into ``bilaf_core``.
"""

from __future__ import annotations

import html
import os
import time
from pathlib import Path
from typing import Any, Callable

import streamlit as st

from bilaf_core import jobs as jobs_mod
from bilaf_core import palette
from bilaf_core.selection.bilaf import keep_plans

# the Map's budget box re-runs BiLAF on the same cores: keep its budget-independent work
keep_plans()

# Streamlit runs a `pages/` folder beside the main script in its legacy multipage mode until the
# main script calls st.navigation — so the very first visit to a fresh server straight at /map
# would run the page alone, without app.py, and list every file of pages/ as a page.  The first
# import of this module (by that page) leaves that mode and reruns through app.py, which resolves
# the same URL with st.navigation; the mode is a server-wide flag, so once is enough.
from streamlit.runtime.pages_manager import PagesManager as _PagesManager  # noqa: E402


def run_through_app() -> None:
    """Rerun through app.py when Streamlit ran this page on its own (legacy pages/ mode)."""
    if _PagesManager.uses_pages_directory:
        _PagesManager.uses_pages_directory = False
        st.rerun()


run_through_app()

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
#: how often a page polls a running job (seconds)
POLL_SECONDS = 1.0


# --------------------------------------------------------------------------- assets and text


@st.cache_data(show_spinner=False)
def asset_text(relative: str) -> str:
    path = ASSETS / relative
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def param_title(param) -> str:
    return param.name.replace("_", " ")


def method_chip(method: str, label: str | None = None) -> str:
    """An inline coloured badge (HTML) for a method, in its palette colour."""
    color = palette.method_color(method)
    text = html.escape(label or palette.method_label(method))
    return (
        f"<span style='display:inline-block;padding:1px 8px;border-radius:10px;background:{color};"
        f"color:white;font-size:0.85em;font-weight:600'>{text}</span>"
    )


def method_chip_css() -> str:
    """A <style> that gives every method's chips in multiselects (methods, or selections whose
    title starts with the method's label) the method's colour, as on the map and in the plots.
    Longer labels come later so "K-Means (multi-batch)" wins over "K-Means"."""
    rules = []
    for method in sorted(palette.METHOD_LABELS, key=lambda m: len(palette.method_label(m))):
        label = palette.method_label(method).replace('"', "")
        rules.append(f'[data-testid="stMultiSelect"] span[data-tag][aria-label^="{label}"]'
                     f"{{background-color:{palette.method_color(method)};color:white}}")
    return "<style>" + "\n".join(rules) + "</style>"


def fmt_size(n_bytes: float | None) -> str:
    if n_bytes is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} GB"


def fmt_time(ts: Any) -> str:
    """ISO string or epoch seconds -> 'YYYY-MM-DD HH:MM' in local time."""
    import datetime as _dt

    if ts is None or ts == "":
        return "—"
    try:
        when = _dt.datetime.fromtimestamp(ts) if isinstance(ts, (int, float)) else _dt.datetime.fromisoformat(str(ts))
    except ValueError:
        return str(ts)[:16].replace("T", " ")
    if when.tzinfo is not None:
        when = when.astimezone()
    return when.strftime("%Y-%m-%d %H:%M")


# --------------------------------------------------------------------------- workspace and jobs


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


def job_progress_line(record: dict) -> str:
    pct = 100 * float(record.get("progress") or 0.0)
    parts = [f"{pct:.0f}%", record.get("message") or ""]
    if record.get("elapsed_s") is not None:
        parts.append(f"elapsed {jobs_mod.format_duration(record['elapsed_s'])}")
    if record.get("eta_s") is not None:
        parts.append(f"about {jobs_mod.format_duration(record['eta_s'])} left")
    return " · ".join(p for p in parts if p)


def show_job(job_id: str | None, *, key: str, on_done: Callable[[dict], None] | None = None, title: str | None = None) -> dict | None:
    """A live panel for one job: progress bar, message, ETA and a Cancel button, refreshed by a
    fragment every second while the job runs; when it finishes the whole page reruns once so
    the result appears.  Returns the record as of this run."""
    if not job_id:
        return None
    manager = job_manager()
    record = manager.get(job_id)
    if record is None:
        return None
    if record["status"] in jobs_mod.ACTIVE:
        _job_fragment(job_id, key, title)
    else:
        _job_outcome(record, key, on_done)
    return record


def _job_outcome(record: dict, key: str, on_done) -> None:
    status = record["status"]
    label = record.get("title") or record.get("kind")
    took = jobs_mod.format_duration(record.get("elapsed_s"))
    if status == jobs_mod.DONE:
        if on_done is not None:
            on_done(record)
        else:
            st.success(f"{label}: done in {took}.")
    elif status == jobs_mod.CANCELLED:
        st.warning(f"{label}: cancelled after {took}. Nothing was saved; start it again when you are ready.")
    elif status == jobs_mod.INTERRUPTED:
        st.warning(f"{label}: {record.get('message')}")
    else:
        st.error(f"{label} failed: {record.get('error')}")
        if record.get("traceback"):
            with st.expander("details for a bug report"):
                st.code(record["traceback"])


@st.fragment(run_every=POLL_SECONDS)
def _job_fragment(job_id: str, key: str, title: str | None) -> None:
    manager = job_manager()
    record = manager.get(job_id)
    if record is None:
        return
    if record["status"] not in jobs_mod.ACTIVE:
        # finished since the last tick: rerun the page so its result shows everywhere
        st.rerun(scope="app")
    label = title or record.get("title") or record.get("kind")
    cols = st.columns([5, 1], vertical_alignment="center")
    with cols[0]:
        st.progress(float(record.get("progress") or 0.0), text=f"**{html.escape(label)}** — {job_progress_line(record)}")
    with cols[1]:
        if st.button("Cancel", key=f"cancel_{key}_{job_id}", width="stretch"):
            manager.cancel(job_id)
            st.toast("Cancelling… the job stops at its next checkpoint.")


#: more running jobs than this are shown as one combined panel
GROUP_ABOVE = 3


def show_jobs(records: list[dict], *, key: str, noun: str = "jobs") -> None:
    """Live panels for several jobs: one each (with Cancel) for up to GROUP_ABOVE running ones,
    otherwise one combined progress bar with a Cancel-all button and the list in an expander —
    a sweep of nine runs stays one line and one poll.  Finished records are shown as outcomes."""
    active = [r["id"] for r in records if r["status"] in jobs_mod.ACTIVE]
    if len(active) <= GROUP_ABOVE:
        for record in records:
            show_job(record["id"], key=key)
        return
    for record in records:
        if record["status"] not in jobs_mod.ACTIVE:
            show_job(record["id"], key=key)
    _job_group_fragment(tuple(active), key, noun)


@st.fragment(run_every=POLL_SECONDS)
def _job_group_fragment(job_ids: tuple[str, ...], key: str, noun: str) -> None:
    manager = job_manager()
    records = [r for r in (manager.get(j) for j in job_ids) if r is not None]
    running = [r for r in records if r["status"] == jobs_mod.RUNNING]
    queued = [r for r in records if r["status"] == jobs_mod.QUEUED]
    if not running and not queued:
        st.rerun(scope="app")
    done = len(records) - len(running) - len(queued)
    overall = sum(1.0 if r["status"] not in jobs_mod.ACTIVE else float(r.get("progress") or 0.0) for r in records) / max(len(records), 1)
    now = " · ".join(f"{r.get('title')} {100 * float(r.get('progress') or 0):.0f}%" for r in running)
    cols = st.columns([5, 1], vertical_alignment="center")
    with cols[0]:
        st.progress(overall, text=f"**{len(records)} {noun}**: {done} finished, {len(running)} running, {len(queued)} queued"
                                  + (f" — {html.escape(now)}" if now else ""))
    with cols[1]:
        if st.button("Cancel all", key=f"cancel_all_{key}", width="stretch"):
            for r in running + queued:
                manager.cancel(r["id"])
            st.toast("Cancelling… each job stops at its next checkpoint.")
    with st.expander("each job"):
        for r in records:
            st.markdown(f"- **{html.escape(str(r.get('title')))}** — {r['status']} · {html.escape(job_progress_line(r))}")


def active_jobs() -> list[dict]:
    try:
        return job_manager().list(active_only=True)
    except Exception:  # the workspace may not be importable yet on a half-installed machine
        return []


# --------------------------------------------------------------------------- method parameters


def param_widget(method: str, param, *, key: str, value: Any = None, label: str | None = None):
    """One input for a declared method parameter, with its help text (from the registry) as a
    caption and the paper's default as the initial value.  Returns the chosen value."""
    title = label or param_title(param)
    k = f"{key}_{method}_{param.name}"
    default = param.default if value is None else value
    if param.choices is not None:
        choices = list(param.choices)
        out = st.selectbox(title, choices, index=choices.index(default) if default in choices else 0, key=k, help=param.help)
    elif param.kind == "bool":
        out = st.checkbox(title, value=bool(default), key=k, help=param.help)
    elif param.kind == "int":
        kwargs = {}
        if param.minimum is not None:
            kwargs["min_value"] = int(param.minimum) + (1 if param.exclusive_minimum else 0)
        if param.maximum is not None:
            kwargs["max_value"] = int(param.maximum)
        out = st.number_input(title, value=None if default is None else int(default), step=1, key=k, help=param.help,
                              placeholder="automatic", **kwargs)
    elif param.kind == "float":
        kwargs = {}
        if param.minimum is not None:
            kwargs["min_value"] = float(param.minimum)
        if param.maximum is not None:
            kwargs["max_value"] = float(param.maximum)
        out = st.number_input(title, value=None if default is None else float(default), key=k, help=param.help,
                              format="%.4g", placeholder="automatic", **kwargs)
    else:  # str without choices
        out = st.text_input(title, value="" if default is None else str(default), key=k, help=param.help) or None
    st.caption(param.help)
    return out


def editable_params(spec, *, skip: tuple[str, ...] = ()) -> list:
    """Parameters the app exposes as widgets (indices/arrays come from other screens)."""
    return [p for p in spec.params if p.kind not in ("indices", "array") and p.name not in skip]


# --------------------------------------------------------------------------- feature sets, selections


_ARRAYS: dict[tuple, Any] = {}
_ARRAYS_LOCK = __import__("threading").Lock()
_ARRAYS_KEEP = 3


def _memo_array(key: tuple, load: Callable[[], Any]):
    """A tiny process-wide LRU for big read-only arrays (features, maps): shared by every tab,
    rerun and job thread, so a 300 MB feature matrix is read once, not on every slider move."""
    with _ARRAYS_LOCK:
        if key in _ARRAYS:
            value = _ARRAYS.pop(key)
            _ARRAYS[key] = value
            return value
    value = load()
    with _ARRAYS_LOCK:
        _ARRAYS[key] = value
        while len(_ARRAYS) > _ARRAYS_KEEP:
            _ARRAYS.pop(next(iter(_ARRAYS)))
    return value


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

    def work(progress):
        projection.project_feature_set(path, progress=progress, isolate=True)  # keeps the server's GIL free
        return {"feature_set": fs["id"]}

    return job_manager().submit(
        "project", f"2-D map of {fs['label']}", work, key=projection_job_key(fs), tags={"feature_set": fs["id"]}
    )


def feature_sets() -> list[dict]:
    """The workspace's feature sets, each with `id`, `path`, `n`, `dim`, `label`…: pools first
    (newest first), then the test splits that evaluation extracted beside them."""
    out = [describe_feature_set(row) for row in workspace().list_feature_sets()]
    out.sort(key=lambda r: str(r.get("created") or ""), reverse=True)
    out.sort(key=lambda r: r["split"] == "test")  # stable: keeps newest first within each group
    return out


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


def feature_set_picker(*, key: str) -> dict | None:
    """Select a feature set (shared across pages); an empty state that says what to do when
    the workspace has none."""
    sets = feature_sets()
    if not sets:
        st.info(
            "No feature set yet. Go to **Data & model**, pick a dataset (Fashion-MNIST works offline) and press "
            "**Extract features** — or upload your own embeddings there."
        )
        st.page_link("pages/data.py", label="Data & model", icon=":material/dataset:")
        return None
    ids = [s["id"] for s in sets]
    current = st.session_state.get("feature_set_id")
    index = ids.index(current) if current in ids else 0
    chosen = st.selectbox("Feature set", ids, index=index, key=key, format_func=lambda i: sets[ids.index(i)]["label"])
    st.session_state["feature_set_id"] = chosen
    return sets[ids.index(chosen)]


def selection_title(row: dict) -> str:
    """``BiLAF · B=100`` — with the time it was made when another selection has the same name
    and budget (see :func:`selections`)."""
    if row.get("title"):
        return row["title"]
    name = row.get("name") or palette.method_label(str(row.get("method")))
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


def fmt_time_of_day(ts: Any) -> str:
    """'HH:MM:SS' (local time) of an ISO timestamp or epoch seconds."""
    import datetime as _dt

    if ts is None or ts == "":
        return "—"
    try:
        when = _dt.datetime.fromtimestamp(ts) if isinstance(ts, (int, float)) else _dt.datetime.fromisoformat(str(ts))
    except ValueError:
        return str(ts)[11:19]
    if when.tzinfo is not None:
        when = when.astimezone()
    return when.strftime("%H:%M:%S")


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


def submit_selection(fs: dict, method: str, budget: int, *, seed: int, options: dict, name: str | None = None) -> str:
    """Run `method` on `fs` in the background and save the result in the workspace."""
    import json as _json

    from bilaf_core.selection import get_method, run_selection

    spec = get_method(method)
    for k, v in options.items():  # fail now, in the page, rather than in the job
        spec.param(k).coerce(v, method)
    ws = workspace()
    path = fs["path"]
    label = name or palette.method_label(method)

    def work(progress):
        features = load_features(path)
        selection = run_selection(method, features, budget, seed=seed, progress=progress, **options)
        selection_id = ws.save_selection(selection, fs["id"], name=label)
        return {"selection_id": selection_id, "seconds": selection.timings.get("total")}

    key = "select:" + _json.dumps([fs["id"], method, budget, seed, sorted(options.items())], default=str)
    return job_manager().submit(
        "select", f"{label} · B={budget}", work, key=key,
        params={"method": method, "budget": budget, "seed": seed, **options},
        tags={"feature_set": fs["id"], "method": method},
    )


def feature_set_meta(fs: dict) -> dict:
    """meta.json of a feature set (ids, labels, class names, dataset, backbone…)."""
    import json as _json

    path = Path(fs["path"]) / "meta.json"
    return _memo_small(("meta",) + _stat_key(path), lambda: _json.loads(path.read_text()))


_SMALL: dict[str, dict[tuple, Any]] = {}
#: entries kept per namespace (key[0]); others default to 32
_SMALL_KEEP = {"thumb": 512, "bilaf_at_budget": 16, "meta": 16}


def _memo_small(key: tuple, load: Callable[[], Any]):
    """Process-wide LRU per namespace (``key[0]``) for small results shared by every tab."""
    space = key[0]
    with _ARRAYS_LOCK:
        table = _SMALL.setdefault(space, {})
        if key in table:
            value = table.pop(key)
            table[key] = value
            return value
    value = load()
    with _ARRAYS_LOCK:
        table[key] = value
        while len(table) > _SMALL_KEEP.get(space, 32):
            table.pop(next(iter(table)))
    return value


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


def point_details(indices, shown, pick_sets: dict[str, set], meta: dict) -> dict[int, dict]:
    """Per inspected pool index: a short caption for the gallery and a table row with its id,
    label, cluster, ring level, boundary score and the selections that picked it."""
    import numpy as np

    ids = meta.get("ids")
    labels = meta.get("labels")
    class_names = meta.get("class_names")
    diag = shown.diagnostics if shown is not None else {}
    cluster = np.asarray(diag["cluster"]) if "cluster" in diag else None
    ring = np.asarray(diag["ring_level"]) if "ring_level" in diag else None
    noise = np.asarray(diag["removed_as_noise"], dtype=bool) if "removed_as_noise" in diag else None
    score_of = {}
    if shown is not None and "boundary_score" in diag:
        for i, s in zip(shown.indices.tolist(), np.asarray(diag["boundary_score"], dtype=float).tolist()):
            score_of[i] = s
    out = {}
    for i in (int(x) for x in indices):
        label = ""
        if labels is not None and labels[i] is not None:
            label = class_names[int(labels[i])] if class_names else str(labels[i])
        by = [name for name, s in pick_sets.items() if i in s]
        score = score_of.get(i)
        row = {
            "index": i,
            "id": ids[i] if ids else "",
            "label": label,
            "pseudo-class": int(cluster[i]) if cluster is not None else None,
            "ring level": int(ring[i]) if ring is not None else None,
            "removed as noise": bool(noise[i]) if noise is not None else None,
            "boundary score": None if score is None or score != score else round(float(score), 4),
            "picked by": ", ".join(by),
        }
        bits = [f"#{i}"]
        if cluster is not None:
            bits.append(f"c{int(cluster[i])}")
        if ring is not None:
            bits.append(f"ring {int(ring[i])}")
        if row["boundary score"] is not None:
            bits.append(f"s={row['boundary score']:.2f}")
        if by:
            bits.append("✓ " + ", ".join(by))
        out[i] = {"row": row, "caption": " · ".join(bits)}
    return out


# --------------------------------------------------------------------------- datasets, extraction, import

fmt_duration = jobs_mod.format_duration

_DATASET_TITLES = {
    "fashion-mnist": "Fashion-MNIST (offline)",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "imagefolder": "Image folder (your images)",
    "synthetic": "Synthetic shapes (tests, demos)",
}
_BACKBONE_TITLES = {
    "efficientnet-lite0": "EfficientNet-Lite0 · ImageNet (bundled, offline)",
    "dino-vits16": "DINO ViT-S/16 (the paper's; download or local checkpoint)",
}


def _names(items) -> list[str]:
    return [item if isinstance(item, str) else getattr(item, "name", str(item)) for item in items]


def dataset_names() -> list[str]:
    from bilaf_core.datasets import available_datasets

    return _names(available_datasets())


def backbone_names() -> list[str]:
    from bilaf_core.backbones import available_backbones

    return _names(available_backbones())


def dataset_title(name: str) -> str:
    return _DATASET_TITLES.get(name, name)


def backbone_title(name: str) -> str:
    return _BACKBONE_TITLES.get(name, name)


def dataset_needs_root(name: str) -> bool:
    from bilaf_core.datasets import get_dataset_spec

    return bool(get_dataset_spec(name).needs_root)


def backbone_bundled(name: str) -> bool:
    from bilaf_core.backbones import get_backbone_spec

    return bool(get_backbone_spec(name).bundled_weights)


def backbone_summary(name: str) -> str:
    from bilaf_core.backbones import get_backbone_spec

    return get_backbone_spec(name).summary


def dataset_summary(name: str) -> str:
    from bilaf_core.datasets import get_dataset_spec

    return get_dataset_spec(name).summary


@st.cache_data(show_spinner=False)
def split_size(name: str) -> int | None:
    """Images in the dataset's train split, or None when unknown without a download."""
    from bilaf_core.datasets import get_dataset

    if dataset_needs_root(name):
        return None
    try:
        return len(get_dataset(name))
    except Exception:  # not available offline, or needs a root: the page shows "all"
        return None


def feature_set_bytes(fs: dict) -> int | None:
    try:
        return (Path(fs["path"]) / "features.npy").stat().st_size
    except OSError:
        return None


def _follow_up(ws, fs_id: str, path: str, label: str) -> None:
    """After new features: draw the map and run BiLAF at 1% (both in the background)."""
    fs = describe_feature_set({"id": fs_id, "path": path, "meta": __import__("json").loads((Path(path) / "meta.json").read_text())})
    ensure_projection(fs)
    from bilaf_core.selection import resolve_budget

    submit_selection(fs, "bilaf", resolve_budget("1%", fs["n"]) if fs["n"] >= 200 else max(2, fs["n"] // 10), seed=0, options={})


def submit_extraction(dataset: str, backbone: str, *, limit: int | None, root: str | None, follow_up: bool, weights: str | None = None) -> str:
    from bilaf_core.features import extract_features

    ws = workspace()
    title = f"Extract {dataset_title(dataset).split(' (')[0]} · {backbone} · {'all' if limit is None else f'{limit:,}'} images"

    def work(progress):
        path = extract_features(dataset, backbone, root=root, limit=limit, weights=weights, cache_root=ws.features_root, progress=progress)
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


# --------------------------------------------------------------------------- evaluation


def page_opened_at() -> float:
    """When this browser session first ran (failures older than that are not re-announced)."""
    return st.session_state.setdefault("_opened_at", time.time())


_EVAL_LOCKS: dict[str, Any] = {}


def _evaluation_lock(feature_dir: str):
    """One feature-based evaluation at a time per feature set: the first one extracts the
    dataset's test split (cached beside the pool) and the others must wait for that cache rather
    than extract the same split concurrently (which the extraction cache does not support).  A
    linear probe takes about a second once the test split is there."""
    with _ARRAYS_LOCK:
        return _EVAL_LOCKS.setdefault(str(feature_dir), __import__("threading").Lock())


def _evaluate(path: str, picks, mode: str, *, seed: int, progress, options: dict):
    from bilaf_core.finetune import evaluate_selection

    if mode == "finetune":
        return evaluate_selection(path, picks, mode, seed=seed, progress=progress, **options)
    lock = _evaluation_lock(path)
    if not lock.acquire(blocking=False):
        progress(0.0, "waiting for another evaluation of this feature set to finish")
        while not lock.acquire(timeout=0.5):
            progress(0.0, "waiting for another evaluation of this feature set to finish")  # lets Cancel through
    try:
        return evaluate_selection(path, picks, mode, seed=seed, progress=progress, **options)
    finally:
        lock.release()


def submit_evaluation(fs: dict, selection_id: str, mode: str, *, seed: int, title: str, options: dict | None = None) -> str:
    """Evaluate a saved selection in the background (`options`: ``preset``, ``epochs``… for a
    finetune) and save the result in the workspace."""
    ws = workspace()
    path = fs["path"]
    options = dict(options or {})

    def work(progress):
        selection = ws.load_selection(selection_id)
        result = _evaluate(path, selection.indices, mode, seed=seed, progress=progress, options=options)
        evaluation_id = ws.save_evaluation(selection_id, result)
        return {"evaluation_id": evaluation_id, "accuracy": result.accuracy}

    key = f"evaluate:{selection_id}:{mode}:{seed}:{sorted(options.items())}"
    return job_manager().submit("evaluate", title, work, key=key, params={"mode": mode, "seed": seed, **options},
                                tags={"feature_set": fs["id"], "selection": selection_id})


def finetune_presets() -> dict[str, str]:
    """Finetuning recipes the engine offers: name -> one-line summary."""
    from bilaf_core import finetune

    return {name: getattr(p, "summary", "") for name, p in getattr(finetune, "PRESETS", {}).items()}


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
            "created": row.get("created"),
        })
    out.sort(key=lambda r: str(r.get("created") or ""), reverse=True)
    return out


#: pools up to this many feature values (N x D) re-run BiLAF inline on a budget change (the page
#: shows the result as soon as it is drawn): 60 000 x 112 (Fashion-MNIST, EfficientNet-Lite0,
#: K = 300) costs ~2.6 s of CPU on two cores, nearly all of it BiLAF recomputing each
#: pseudo-class's distance matrix (bench/app_latency.py).  Larger pools run it as a background
#: job with progress, so the page never waits longer than that.
INLINE_BILAF_VALUES = 60_000 * 256


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


def find_default_selection(rows: list[dict], method: str, budget: int, seed: int) -> str | None:
    """The id of a saved, unedited selection made by `method` at `budget` with `seed` and the
    method's default parameters (what a sweep point would make again), or None."""
    import json as _json

    from bilaf_core.selection import get_method

    defaults = _json.loads(_json.dumps(get_method(method).defaults(), default=str))
    for row in rows:
        if row.get("method") != method or row.get("budget") != budget or row.get("seed") != seed or row.get("parent_id"):
            continue
        params = {k: v for k, v in (row.get("params") or {}).items() if k != "budget"}
        if params == defaults:
            return row["id"]
    return None


def submit_sweep_point(fs: dict, method: str, budget: int, *, seed: int, mode: str) -> str:
    """Select with `method` at `budget`, save it, evaluate it (`mode`) and save the result — one
    background job per point of an accuracy-vs-budget sweep."""
    from bilaf_core.selection import run_selection

    ws = workspace()
    path = fs["path"]
    label = palette.method_label(method)

    def work(progress):
        features = load_features(path)
        selection = run_selection(method, features, budget, seed=seed, progress=lambda f, m: progress(0.6 * f, m))
        selection_id = ws.save_selection(selection, fs["id"], name=label)
        result = _evaluate(path, selection.indices, mode, seed=seed, progress=lambda f, m: progress(0.6 + 0.4 * f, m), options={})
        evaluation_id = ws.save_evaluation(selection_id, result)
        return {"selection_id": selection_id, "evaluation_id": evaluation_id, "accuracy": result.accuracy}

    return job_manager().submit(
        "evaluate", f"{label} · B={budget:,} → {mode}", work, key=f"sweep:{fs['id']}:{method}:{budget}:{seed}:{mode}",
        params={"method": method, "budget": budget, "seed": seed, "mode": mode}, tags={"feature_set": fs["id"]},
    )
