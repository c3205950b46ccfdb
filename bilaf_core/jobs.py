"""Background jobs for the app: long work (extraction, projection, selection, finetuning) runs in
worker threads of the Streamlit server process while the page keeps answering.

* **Records on disk.**  Each job is one JSON file ``<root>/<job_id>.json`` (normally
  ``<workspace>/jobs``), rewritten atomically by the one thread that runs the job.  Reloading the
  page, or opening a second tab, reads the same records: a finished result is never lost and two
  tabs never write the same file.
* **Progress.**  The job function receives a ``progress(fraction, message)`` callback (the
  engine's convention).  The record carries the fraction, the message, the elapsed time and an
  ETA (a linear estimate from the start of the job, once a little progress is made).
* **Cancel.**  :meth:`JobManager.cancel` sets a flag (in memory, and a ``<job_id>.cancel`` file for
  a job run by another server process on the same workspace); the job's next progress call raises
  :class:`bilaf_core.errors.Cancelled`, which the engine lets propagate without half-written files.
* **De-duplication.**  A job may carry a ``key`` (e.g. "project feature set X with params P"):
  submitting a key that is already queued or running returns the running job instead of starting
  the same work twice — two tabs asking for the same map share one computation.
* **Crash safety.**  A record left "running" by a process that no longer exists reads back as
  ``interrupted``.

Job functions must not call Streamlit: they run outside any script run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import socket
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable

from .atomic import atomic_write_json
from .errors import BilafError, Cancelled

ProgressFn = Callable[[float, str], None]
JobFn = Callable[[ProgressFn], Any]

QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "queued",
    "running",
    "done",
    "failed",
    "cancelled",
    "interrupted",
)
ACTIVE = (QUEUED, RUNNING)
FINISHED = (DONE, FAILED, CANCELLED, INTERRUPTED)

#: how often a running job rewrites its record with new progress (seconds)
PERSIST_INTERVAL = 0.5
#: how often a running job looks for a cancel file written by another process (seconds)
CANCEL_POLL_INTERVAL = 0.5
#: finished records kept per folder; older ones are pruned
KEEP_FINISHED = 300

_HOST = socket.gethostname()
_PID = os.getpid()


def _now() -> float:
    return time.time()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class _Job:
    """In-memory state of a job run by this process."""

    def __init__(self, record: dict, fn: JobFn, path: Path, cancel_path: Path):
        self.record = record
        self.fn = fn
        self.path = path
        self.cancel_path = cancel_path
        self.cancel_event = threading.Event()
        self.lock = threading.Lock()
        self.last_persist = 0.0
        self.last_cancel_poll = 0.0
        self.future: concurrent.futures.Future | None = None

    def persist(self) -> None:
        with self.lock:
            snapshot = dict(self.record)
        atomic_write_json(self.path, snapshot, indent=1)


class JobManager:
    """Runs jobs in a small thread pool and keeps their records in `root` (one JSON per job)."""

    def __init__(self, root: str | os.PathLike, *, max_workers: int = 2):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="bilaf-job")
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._token = uuid.uuid4().hex[:12]

    # ------------------------------------------------------------------ submitting

    def submit(
        self,
        kind: str,
        title: str,
        fn: JobFn,
        *,
        key: str | None = None,
        params: dict | None = None,
        tags: dict | None = None,
    ) -> str:
        """Queue `fn(progress)`; return the job id.  When a job with the same `key` is already
        queued or running (in this process or another live one), return its id instead."""
        with self._lock:
            if key is not None:
                existing = self.find_active(key)
                if existing is not None:
                    return existing["id"]
            job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]
            record = {
                "id": job_id,
                "kind": kind,
                "title": title,
                "key": key,
                "params": params or {},
                "tags": tags or {},
                "status": QUEUED,
                "progress": 0.0,
                "message": "waiting for a free worker",
                "created": _now(),
                "started": None,
                "updated": _now(),
                "finished": None,
                "eta_s": None,
                "result": None,
                "error": None,
                "owner": {"host": _HOST, "pid": _PID, "manager": self._token},
            }
            job = _Job(record, fn, self.root / f"{job_id}.json", self.root / f"{job_id}.cancel")
            job.persist()
            self._jobs[job_id] = job
            job.future = self._pool.submit(self._run, job)
        self._prune()
        return job_id

    def _run(self, job: _Job) -> None:
        if self._cancel_requested(job, force_poll=True):
            self._finish(job, CANCELLED, message="cancelled before it started")
            return
        with job.lock:
            job.record.update(status=RUNNING, started=_now(), updated=_now(), message="starting")
        job.persist()

        def progress(fraction: float, message: str = "") -> None:
            now = _now()
            fraction = float(min(max(fraction, 0.0), 1.0))
            with job.lock:
                rec = job.record
                rec["progress"] = max(fraction, rec["progress"]) if fraction < 1.0 else 1.0
                rec["message"] = str(message)
                rec["updated"] = now
                elapsed = now - rec["started"]
                f = rec["progress"]
                rec["eta_s"] = elapsed * (1.0 - f) / f if f >= 0.02 and elapsed > 1.0 else None
            if now - job.last_persist >= PERSIST_INTERVAL:
                job.last_persist = now
                job.persist()
            if self._cancel_requested(job):
                raise Cancelled(f"job {job.record['id']} cancelled")

        try:
            result = job.fn(progress)
        except Cancelled:
            self._finish(job, CANCELLED, message="cancelled")
        except BilafError as exc:
            self._finish(job, FAILED, message="failed", error=str(exc))
        except Exception as exc:  # a bug: keep the traceback for the record
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self._finish(job, FAILED, message="failed", error=detail, trace=traceback.format_exc(limit=8))
        else:
            try:
                json.dumps(result)
            except (TypeError, ValueError):
                result = repr(result)
            self._finish(job, DONE, message="done", result=result)

    def _finish(self, job: _Job, status: str, *, message: str, result: Any = None, error: str | None = None, trace: str | None = None) -> None:
        with job.lock:
            job.record.update(
                status=status,
                message=message,
                updated=_now(),
                finished=_now(),
                eta_s=None,
                result=result,
                error=error,
            )
            if status == DONE:
                job.record["progress"] = 1.0
            if trace:
                job.record["traceback"] = trace
        job.persist()
        with contextlib.suppress(FileNotFoundError):
            job.cancel_path.unlink()

    def _cancel_requested(self, job: _Job, *, force_poll: bool = False) -> bool:
        if job.cancel_event.is_set():
            return True
        now = time.monotonic()
        if force_poll or now - job.last_cancel_poll >= CANCEL_POLL_INTERVAL:
            job.last_cancel_poll = now
            if job.cancel_path.exists():
                job.cancel_event.set()
                return True
        return False

    # ------------------------------------------------------------------ control

    def cancel(self, job_id: str) -> bool:
        """Ask a queued or running job to stop; True when the request was placed."""
        record = self.get(job_id)
        if record is None or record["status"] not in ACTIVE:
            return False
        job = self._jobs.get(job_id)
        if job is not None:
            job.cancel_event.set()
        # the file reaches a job run by another server process on the same workspace
        with contextlib.suppress(OSError):
            (self.root / f"{job_id}.cancel").touch()
        return True

    def wait(self, job_id: str, timeout: float | None = None) -> dict:
        """Block until the job finishes (tests, CLI); return its record."""
        job = self._jobs.get(job_id)
        if job is not None and job.future is not None:
            with contextlib.suppress(concurrent.futures.TimeoutError):
                job.future.result(timeout=timeout)
            return self.get(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.get(job_id)
            if record is None or record["status"] in FINISHED:
                return record
            if deadline is not None and time.monotonic() > deadline:
                return record
            time.sleep(0.1)

    # ------------------------------------------------------------------ reading

    def get(self, job_id: str) -> dict | None:
        """The job's record (live in-memory state for jobs of this process)."""
        job = self._jobs.get(job_id)
        if job is not None:
            with job.lock:
                record = dict(job.record)
        else:
            record = self._read(self.root / f"{job_id}.json")
            if record is None:
                return None
        return self._decorate(record)

    def list(self, *, kind: str | None = None, active_only: bool = False, tags: dict | None = None, limit: int | None = None) -> list[dict]:
        """Records newest first, optionally filtered by kind / active status / tag values."""
        records = []
        for path in self.root.glob("*.json"):
            job_id = path.stem
            record = self.get(job_id)
            if record is None:
                continue
            if kind is not None and record.get("kind") != kind:
                continue
            if active_only and record["status"] not in ACTIVE:
                continue
            if tags and any(record.get("tags", {}).get(k) != v for k, v in tags.items()):
                continue
            records.append(record)
        records.sort(key=lambda r: r.get("created") or 0, reverse=True)
        return records[:limit] if limit else records

    def find_active(self, key: str) -> dict | None:
        for record in self.list(active_only=True):
            if record.get("key") == key:
                return record
        return None

    def latest(self, *, kind: str | None = None, key: str | None = None, tags: dict | None = None) -> dict | None:
        for record in self.list(kind=kind, tags=tags):
            if key is None or record.get("key") == key:
                return record
        return None

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _decorate(self, record: dict) -> dict:
        """Add `elapsed_s`; turn a record orphaned by a dead process into `interrupted`."""
        record = dict(record)
        if record.get("status") in ACTIVE:
            owner = record.get("owner") or {}
            if owner.get("manager") == self._token:
                orphan = record["id"] not in self._jobs
            else:
                orphan = owner.get("host") == _HOST and not _pid_alive(int(owner.get("pid", 0) or 0))
            if orphan:
                record["status"] = INTERRUPTED
                record["message"] = "interrupted: the app was restarted while this job ran; start it again"
        start = record.get("started")
        end = record.get("finished") or (_now() if record.get("status") == RUNNING else None)
        record["elapsed_s"] = (end - start) if start and end else None
        return record

    def _prune(self) -> None:
        finished = [r for r in self.list() if r["status"] in FINISHED]
        for record in finished[KEEP_FINISHED:]:
            with contextlib.suppress(OSError):
                (self.root / f"{record['id']}.json").unlink()
            self._jobs.pop(record["id"], None)

    def shutdown(self, *, cancel: bool = True, wait: bool = True) -> None:
        if cancel:
            for job_id, job in list(self._jobs.items()):
                if job.record["status"] in ACTIVE:
                    job.cancel_event.set()
        self._pool.shutdown(wait=wait)


_MANAGERS: dict[str, JobManager] = {}
_MANAGERS_LOCK = threading.Lock()


def get_manager(root: str | os.PathLike, *, max_workers: int = 2) -> JobManager:
    """The one manager of this process for a jobs folder (every tab and rerun shares it)."""
    key = str(Path(root).resolve())
    with _MANAGERS_LOCK:
        manager = _MANAGERS.get(key)
        if manager is None:
            manager = _MANAGERS[key] = JobManager(root, max_workers=max_workers)
        return manager


def format_duration(seconds: float | None) -> str:
    """12 s, 3 min 05 s, 1 h 02 min — for progress lines and tables."""
    if seconds is None:
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def submit_pretrain(manager: JobManager, *, dataset: str, out_dir: str | os.PathLike, arch: str = "small-cnn",
                    method: str = "byol", epochs: int = 10, image_size: int | None = None, init: str = "random",
                    root: str | None = None, split: str = "train", limit: int | None = None, seed: int = 0,
                    batch_size: int | None = None, title: str | None = None) -> str:
    """Queue self-supervised pretraining (:func:`bilaf_core.pretrain.pretrain`) as a background job.

    One job per output folder: asking again while it runs returns the running job (and a run from
    another process on the same folder fails on the folder's lock).  A cancelled or interrupted
    job resumes from its last finished epoch when submitted again.  The result is
    :meth:`PretrainResult.to_dict` (``backbone`` is the ``pool:`` name to extract with).
    """
    from .pretrain import pretrain_command

    out = Path(out_dir).expanduser().resolve()
    options = dict(dataset=dataset, root=root, split=split, limit=limit, arch=arch, method=method, init=init,
                   epochs=int(epochs), image_size=image_size, seed=int(seed), batch_size=batch_size, out_dir=str(out))
    command = pretrain_command(**options)

    def work(progress: ProgressFn) -> dict:
        from .pretrain import pretrain

        return pretrain(command=command, progress=progress, **options).to_dict()

    title = title or f"Pretrain {arch} · {method} · {epochs} epochs on {dataset}" + ("" if limit is None else f" ({limit:,} images)")
    return manager.submit("pretrain", title, work, key=f"pretrain:{out}", params=options, tags={"out": str(out)})
