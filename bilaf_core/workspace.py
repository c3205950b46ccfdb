"""The workspace: where feature sets, selections (hand-edited ones included) and evaluation
results live, with what produced each of them.

Layout::

    <root>/index.sqlite          the index (SQLite in WAL mode): one row per record
    <root>/features/<key>/       feature sets (features.npy + meta.json, written by features.py)
    <root>/selections/<id>/      picks.json (JSON list of pool indices) + diagnostics.npz
    <root>/jobs/                 background-job records of the app (bilaf_core.jobs)

Safety, in the order things are written:

1. a selection's files go to ``selections/.tmp-<id>/`` and the folder is renamed to
   ``selections/<id>/`` when complete;
2. the index row is inserted in one ``BEGIN IMMEDIATE`` transaction.

A writer killed before 2 leaves no record (at most a folder nobody lists, removed at a later
open once it is an hour old); SQLite's journal makes the row itself all-or-nothing.  Every call
opens its own connection with a busy timeout, so threads, two app sessions and a CLI beside the
app share one workspace without corrupting it.

The root: ``Workspace(root)``, else ``$BILAF_WORKSPACE``, else ``<project>/workspace``
(``python -m bilaf_core --workspace DIR …`` sets the variable for one command).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sqlite3
import subprocess
import time
import uuid
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import __version__
from .atomic import atomic_save_npz, atomic_write_json, jsonable
from .datasets import workspace_root
from .errors import BilafError

SCHEMA_VERSION = 1
#: an unfinished selection folder older than this is an interrupted writer's, not a live one's
STALE_SECONDS = 3600.0
#: meta.json entries too large for the index (one value per pool sample)
_PER_SAMPLE_META = ("ids", "labels", "skipped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_sets (
    id          TEXT PRIMARY KEY,
    path        TEXT NOT NULL UNIQUE,
    created     TEXT,
    registered  TEXT NOT NULL,
    n           INTEGER NOT NULL,
    dim         INTEGER NOT NULL,
    dataset     TEXT,
    backbone    TEXT,
    has_labels  INTEGER NOT NULL,
    meta        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS selections (
    id              TEXT PRIMARY KEY,
    feature_set_id  TEXT NOT NULL REFERENCES feature_sets(id),
    method          TEXT NOT NULL,
    name            TEXT,
    budget          INTEGER NOT NULL,
    seed            INTEGER,
    n_pool          INTEGER NOT NULL,
    params          TEXT NOT NULL,
    timings         TEXT NOT NULL,
    seconds         REAL,
    parent_id       TEXT,
    created         TEXT NOT NULL,
    code_version    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS selections_by_set ON selections(feature_set_id);
CREATE TABLE IF NOT EXISTS evaluations (
    id              TEXT PRIMARY KEY,
    selection_id    TEXT NOT NULL REFERENCES selections(id),
    feature_set_id  TEXT NOT NULL,
    mode            TEXT NOT NULL,
    accuracy        REAL,
    seconds         REAL,
    result          TEXT NOT NULL,
    created         TEXT NOT NULL,
    code_version    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS evaluations_by_selection ON evaluations(selection_id);
CREATE INDEX IF NOT EXISTS evaluations_by_set ON evaluations(feature_set_id);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _new_id(prefix: str) -> str:
    # time-ordered prefix (readable, sorts by creation) + random suffix (unique across writers)
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


@lru_cache(maxsize=1)
def code_version() -> str:
    """``bilaf_core`` version plus the git commit of the checkout when there is one."""
    project = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=project, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "bilaf_core"],
                               cwd=project, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{out}{'.dirty' if dirty else ''}" if out else __version__


class Workspace:
    """The on-disk store of runs; see the module docstring.  Rows come back as plain dicts."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser().resolve() if root is not None else workspace_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "selections").mkdir(exist_ok=True)
            (self.root / "features").mkdir(exist_ok=True)
        except OSError as exc:
            raise BilafError(f"cannot create the workspace folder {self.root} ({exc.strerror}); "
                             "choose a writable folder with --workspace or $BILAF_WORKSPACE") from None
        self.index_path = self.root / "index.sqlite"
        with self._connect() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise BilafError(f"the workspace {self.root} was written by a newer BiLAF Studio (schema {version}); "
                                 "update this checkout or use another workspace")
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            with self._write(db):
                for statement in _SCHEMA.split(";"):  # idempotent (IF NOT EXISTS)
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._remove_stale_folders()

    # ----------------------------------------------------------------- plumbing

    @property
    def features_root(self) -> Path:
        return self.root / "features"

    @property
    def selections_root(self) -> Path:
        return self.root / "selections"

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.index_path, timeout=60.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise BilafError(f"cannot open the workspace index {self.index_path} ({exc})") from None
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout=60000")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        except sqlite3.DatabaseError as exc:
            if "malformed" in str(exc) or "not a database" in str(exc):
                raise BilafError(f"the workspace index {self.index_path} is damaged ({exc}); move the workspace "
                                 "folder aside and start a new one (its feature sets can be re-registered)") from None
            raise
        finally:
            db.close()

    @staticmethod
    @contextlib.contextmanager
    def _write(db: sqlite3.Connection) -> Iterator[None]:
        """One write transaction, taken before reading so two writers queue instead of failing."""
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _remove_stale_folders(self) -> None:
        """Selection folders of interrupted writers: unfinished (.tmp-*) or never indexed."""
        cutoff = time.time() - STALE_SECONDS
        try:
            entries = list(self.selections_root.iterdir())
        except OSError:
            return
        if not entries:
            return
        with self._connect() as db:
            known = {row[0] for row in db.execute("SELECT id FROM selections")}
        for entry in entries:
            name = entry.name[len(".tmp-"):] if entry.name.startswith(".tmp-") else entry.name
            if (entry.name.startswith(".tmp-") or name not in known) and entry.is_dir():
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        shutil.rmtree(entry, ignore_errors=True)

    # ----------------------------------------------------------------- feature sets

    def register_feature_set(self, path: str | os.PathLike) -> str:
        """Index a feature-set folder (features.npy + meta.json); returns its id.  Registering the
        same folder again refreshes its row and returns the same id."""
        folder = Path(path).expanduser().resolve()
        meta_path, features_path = folder / "meta.json", folder / "features.npy"
        if not meta_path.is_file() or not features_path.is_file():
            raise BilafError(f"{folder} is not a complete feature set (it needs features.npy and meta.json); "
                             "extract features or import embeddings first")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise BilafError(f"{meta_path} is unreadable ({exc}); re-extract this feature set") from None
        try:
            shape = np.load(features_path, mmap_mode="r", allow_pickle=False).shape
        except Exception as exc:
            raise BilafError(f"{features_path} is not a readable .npy array ({exc}); re-extract this feature set") from None
        if len(shape) != 2:
            raise BilafError(f"{features_path} has shape {shape}; a feature set holds an N x D array")
        if int(meta.get("n", shape[0])) != shape[0]:
            raise BilafError(f"{folder}: meta.json says {meta.get('n')} samples but features.npy has {shape[0]} rows; re-extract it")
        summary = {k: v for k, v in meta.items() if k not in _PER_SAMPLE_META}
        summary["n_skipped"] = len(meta.get("skipped") or [])
        dataset = meta.get("dataset")
        dataset_name = dataset.get("name") if isinstance(dataset, dict) else dataset
        feature_set_id = "fs-" + uuid.uuid5(uuid.NAMESPACE_URL, folder.as_uri()).hex[:12]
        row = (feature_set_id, str(folder), meta.get("created"), _now(), int(shape[0]), int(shape[1]),
               dataset_name, meta.get("backbone"), int(meta.get("labels") is not None), json.dumps(jsonable(summary)))
        with self._connect() as db, self._write(db):
            db.execute(
                "INSERT INTO feature_sets (id, path, created, registered, n, dim, dataset, backbone, has_labels, meta) "
                "VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET created=excluded.created, n=excluded.n, "
                "dim=excluded.dim, dataset=excluded.dataset, backbone=excluded.backbone, has_labels=excluded.has_labels, "
                "meta=excluded.meta",
                row,
            )
        return feature_set_id

    def _discover_feature_sets(self) -> None:
        """Index complete feature sets that landed under features/ without being registered
        (e.g. ``python -m bilaf_core extract`` into this workspace)."""
        try:
            folders = [p for p in self.features_root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except OSError:
            return
        with self._connect() as db:
            known = {row[0] for row in db.execute("SELECT path FROM feature_sets")}
        for folder in folders:
            if str(folder.resolve()) not in known and (folder / "meta.json").is_file() and (folder / "features.npy").is_file():
                with contextlib.suppress(BilafError):
                    self.register_feature_set(folder)

    @staticmethod
    def _feature_set_row(row: sqlite3.Row) -> dict:
        out = dict(row)
        out["meta"] = json.loads(out["meta"])
        out["has_labels"] = bool(out["has_labels"])
        out["timings"] = out["meta"].get("timings") or {}
        out["missing"] = not (Path(out["path"]) / "features.npy").is_file()
        return out

    def list_feature_sets(self, *, include_missing: bool = False) -> list[dict]:
        """Feature sets, newest first: id, path, created, n, dim, dataset, backbone, has_labels,
        timings, meta (meta.json without its per-sample lists).  Folders deleted from disk are
        left out unless `include_missing`."""
        self._discover_feature_sets()
        with self._connect() as db:
            rows = [self._feature_set_row(r) for r in db.execute("SELECT * FROM feature_sets ORDER BY COALESCE(created, registered) DESC")]
        return [r for r in rows if include_missing or not r["missing"]]

    def _one(self, table: str, record_id: str, what: str) -> sqlite3.Row:
        """The row `record_id` of `table`, or a BilafError naming the `what` that is missing."""
        with self._connect() as db:
            row = db.execute(f"SELECT * FROM {table} WHERE id=?", (record_id,)).fetchone()
        if row is None:
            raise BilafError(f"no {what} {record_id!r} in the workspace {self.root}; "
                             "`python -m bilaf_core runs` lists what it holds")
        return row

    def get_feature_set(self, feature_set_id: str) -> dict:
        return self._feature_set_row(self._one("feature_sets", feature_set_id, "feature set"))

    # ----------------------------------------------------------------- selections

    def save_selection(self, selection, feature_set_id: str, *, name: str | None = None,
                       parent_id: str | None = None) -> str:
        """Store a Selection (picks + diagnostics + provenance) for a feature set; returns its id.
        An edited selection names the selection it came from in `parent_id`."""
        fs = self.get_feature_set(feature_set_id)
        if int(selection.n_pool) != int(fs["n"]):
            raise BilafError(f"this selection was made on a pool of {selection.n_pool} samples but the feature set "
                             f"{feature_set_id} has {fs['n']}; save it with the feature set it was selected from")
        if parent_id is not None:
            self._selection_row(parent_id)  # raises when unknown
        selection_id = _new_id("sel")
        params = jsonable(selection.params or {})
        timings = jsonable(selection.timings or {})
        seconds = timings.get("total") if isinstance(timings.get("total"), (int, float)) else (
            float(sum(v for v in timings.values() if isinstance(v, (int, float)))) if timings else None)
        record = {
            "id": selection_id, "feature_set_id": feature_set_id, "method": selection.method, "name": name,
            "budget": int(selection.indices.size), "seed": None if selection.seed is None else int(selection.seed),
            "n_pool": int(selection.n_pool), "params": params, "timings": timings, "seconds": seconds,
            "parent_id": parent_id, "created": _now(), "code_version": code_version(),
            "features_path": fs["path"],
        }
        final = self.selections_root / selection_id
        staging = self.selections_root / f".tmp-{selection_id}"
        staging.mkdir(parents=True)
        try:
            arrays = {}
            for key, value in (selection.diagnostics or {}).items():
                if value is None:
                    continue
                array = np.asarray(value)
                if array.dtype == object:
                    raise BilafError(f"diagnostic {key!r} of {selection.method} is not a numeric array; it cannot be stored")
                arrays[key] = array
            atomic_save_npz(staging / "diagnostics.npz", **arrays)
            atomic_write_json(staging / "picks.json", selection.to_list())
            atomic_write_json(staging / "record.json", record, indent=1)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            with self._connect() as db, self._write(db):
                db.execute(
                    "INSERT INTO selections (id, feature_set_id, method, name, budget, seed, n_pool, params, timings, "
                    "seconds, parent_id, created, code_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (selection_id, feature_set_id, selection.method, name, record["budget"], record["seed"],
                     record["n_pool"], json.dumps(params), json.dumps(timings), seconds, parent_id,
                     record["created"], record["code_version"]),
                )
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        return selection_id

    def import_picks(self, feature_set_id: str, indices, *, name: str | None = None, source: str | None = None) -> str:
        """Store picks made elsewhere (a picks.json given to the CLI) as a selection of method
        ``imported``; duplicates and out-of-range ids are refused."""
        from .selection.base import Selection, check_indices

        fs = self.get_feature_set(feature_set_id)
        picks = check_indices(np.asarray(indices).reshape(-1), int(fs["n"]), what=f"picks{f' in {source}' if source else ''}")
        selection = Selection(method="imported", indices=picks, n_pool=int(fs["n"]), seed=None,
                              params={"source": source} if source else {}, diagnostics={}, timings={})
        return self.save_selection(selection, feature_set_id, name=name or (Path(source).name if source else "imported"))

    def _selection_row(self, selection_id: str) -> dict:
        return self._selection_dict(self._one("selections", selection_id, "selection"))

    @staticmethod
    def _selection_dict(row: sqlite3.Row) -> dict:
        out = dict(row)
        out["params"] = json.loads(out["params"])
        out["timings"] = json.loads(out["timings"])
        return out

    def get_selection(self, selection_id: str) -> dict:
        """The index row of one selection (no arrays)."""
        return self._selection_row(selection_id)

    def list_selections(self, feature_set_id: str | None = None) -> list[dict]:
        """Selections (of one feature set, or all), newest first, as index rows."""
        query, args = "SELECT * FROM selections", ()
        if feature_set_id is not None:
            query, args = query + " WHERE feature_set_id=?", (feature_set_id,)
        with self._connect() as db:
            return [self._selection_dict(r) for r in db.execute(query + " ORDER BY created DESC, id DESC", args)]

    def load_selection(self, selection_id: str):
        """The stored Selection, diagnostics included."""
        from .selection.base import Selection

        row = self._selection_row(selection_id)
        folder = self.selections_root / selection_id
        try:
            indices = np.asarray(json.loads((folder / "picks.json").read_text()), dtype=np.int64)
            with np.load(folder / "diagnostics.npz", allow_pickle=False) as npz:
                diagnostics = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise BilafError(f"the files of selection {selection_id} in {folder} are missing or damaged ({exc}); "
                             "run the selection again") from None
        diagnostics = {k: (v.item() if v.ndim == 0 else v) for k, v in diagnostics.items()}
        return Selection(method=row["method"], indices=indices, n_pool=row["n_pool"], seed=row["seed"],
                         params=row["params"], diagnostics=diagnostics, timings=row["timings"])

    def selection_files(self, selection_id: str) -> dict[str, Path]:
        """Paths of a stored selection's picks.json and diagnostics.npz."""
        self._selection_row(selection_id)
        folder = self.selections_root / selection_id
        return {"picks": folder / "picks.json", "diagnostics": folder / "diagnostics.npz"}

    def delete_selection(self, selection_id: str) -> None:
        """Remove a selection and its evaluations (edited selections made from it keep their own
        picks; their `parent_id` then names a selection that is gone)."""
        self._selection_row(selection_id)
        with self._connect() as db, self._write(db):
            db.execute("DELETE FROM evaluations WHERE selection_id=?", (selection_id,))
            db.execute("DELETE FROM selections WHERE id=?", (selection_id,))
        shutil.rmtree(self.selections_root / selection_id, ignore_errors=True)

    # ----------------------------------------------------------------- evaluations

    def save_evaluation(self, selection_id: str, result) -> str:
        """Store an evaluation result (``EvalResult`` or its dict) of a stored selection."""
        sel = self._selection_row(selection_id)
        data = result.to_dict() if hasattr(result, "to_dict") else dict(result)
        data = jsonable(data)
        if "mode" not in data or "accuracy" not in data:
            raise BilafError("an evaluation result needs at least 'mode' and 'accuracy'")
        timings = data.get("timings") or {}
        seconds = timings.get("total") if isinstance(timings, dict) else None
        evaluation_id = _new_id("eval")
        with self._connect() as db, self._write(db):
            db.execute(
                "INSERT INTO evaluations (id, selection_id, feature_set_id, mode, accuracy, seconds, result, created, "
                "code_version) VALUES (?,?,?,?,?,?,?,?,?)",
                (evaluation_id, selection_id, sel["feature_set_id"], str(data["mode"]), data["accuracy"], seconds,
                 json.dumps(data), _now(), code_version()),
            )
        return evaluation_id

    def list_evaluations(self, *, selection_id: str | None = None, feature_set_id: str | None = None) -> list[dict]:
        """Evaluations, newest first: id, selection_id, feature_set_id, mode, accuracy, seconds,
        created, code_version and `result` (the whole result dict: per-class accuracy, confusion…)."""
        clauses, args = [], []
        if selection_id is not None:
            clauses.append("selection_id=?")
            args.append(selection_id)
        if feature_set_id is not None:
            clauses.append("feature_set_id=?")
            args.append(feature_set_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._connect() as db:
            rows = [dict(r) for r in db.execute(f"SELECT * FROM evaluations{where} ORDER BY created DESC, id DESC", args)]
        for row in rows:
            row["result"] = json.loads(row["result"])
        return rows
