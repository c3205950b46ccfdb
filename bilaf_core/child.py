"""Heavy work in a child Python process, with its progress relayed and cancellation by SIGINT.

The app runs its jobs in worker threads of the Streamlit server.  Work that is many small torch
or numba calls (feature extraction, ActiveFT's iterations, UMAP's layout) needs the GIL between
calls, and the server's own threads (page reruns, timer fragments, the websocket loop) hold it
often: measured on two cores, extracting 10 000 Fashion-MNIST images took 80 s in a server
thread against 23 s in a plain process (152 vs 635 images/s; the job thread got ~6 % of a core
while the event loop and a script thread took the rest).  A child process has its own
interpreter, so the server keeps answering and the work runs at full speed.

One mechanism for every such task: ``run_in_child(task, args, progress)`` starts
``python -c "from bilaf_core.child import main; main()" <task> <args json>`` (a fresh
interpreter, never a fork of the threaded server), reads JSON lines from its stdout —
``{"progress": f, "message": m}`` relayed to `progress`, then ``{"result": …}`` or
``{"error": …, "kind": …}`` — and returns the result.  When `progress` raises (the job was
cancelled, or the server is stopping) the child gets SIGINT; every writer in bilaf_core is atomic,
so an interrupted child leaves nothing half-written.  The tasks are the functions in
:data:`TASKS`; each takes JSON-able keyword arguments and returns a JSON-able dict.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import BilafError, Cancelled

ProgressFn = Callable[[float, str], None]

_PROJECT_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the tasks (run in the child)


def _task_extract(progress: ProgressFn, *, dataset: str, backbone: str, root: str | None, limit: int | None,
                  weights: str | None, cache_root: str) -> dict:
    from .features import extract_features

    path = extract_features(dataset, backbone, root=root, limit=limit, weights=weights, cache_root=cache_root, progress=progress)
    return {"path": str(path)}


def _pool_features(feature_path: str):
    """The pool as the app's in-process memo gives it (pages/_store.load_features)."""
    import numpy as np

    return np.ascontiguousarray(np.load(Path(feature_path) / "features.npy", allow_pickle=False), dtype=np.float32)


def _saved(workspace_root: str, selection, feature_set_id: str, name: str | None, parent_id: str | None = None) -> dict:
    from .workspace import Workspace

    selection_id = Workspace(workspace_root).save_selection(selection, feature_set_id, name=name, parent_id=parent_id)
    return {"selection_id": selection_id, "seconds": selection.timings.get("total")}


def _task_select(progress: ProgressFn, *, workspace_root: str, feature_set_id: str, feature_path: str, method: str,
                 budget: int, seed: int, options: dict, name: str | None) -> dict:
    from .selection import run_selection

    selection = run_selection(method, _pool_features(feature_path), int(budget), seed=int(seed), progress=progress, **options)
    return _saved(workspace_root, selection, feature_set_id, name)


def _task_rerun(progress: ProgressFn, *, workspace_root: str, feature_set_id: str, feature_path: str, method: str,
                budget: int, kept: list, removed: list, exclude: list | None, seed: int, options: dict, name: str,
                parent_id: str) -> dict:
    import numpy as np

    from .inspect import rerun_keeping_edits

    selection = rerun_keeping_edits(method, _pool_features(feature_path), int(budget), kept=np.asarray(kept, dtype=np.int64),
                                    removed=np.asarray(removed, dtype=np.int64),
                                    exclude=None if exclude is None else np.asarray(exclude, dtype=np.int64),
                                    seed=int(seed), progress=progress, **options)
    return _saved(workspace_root, selection, feature_set_id, name, parent_id)


def _task_evaluate(progress: ProgressFn, *, workspace_root: str, selection_id: str, feature_path: str, mode: str, seed: int,
                   options: dict) -> dict:
    from .finetune import evaluate_selection
    from .workspace import Workspace

    ws = Workspace(workspace_root)
    picks = ws.load_selection(selection_id).indices
    result = evaluate_selection(feature_path, picks, mode, seed=int(seed), progress=progress, **options)
    return {"evaluation_id": ws.save_evaluation(selection_id, result), "accuracy": result.accuracy}


def _task_project(progress: ProgressFn, *, feature_dir: str, params: dict) -> dict:
    from . import projection

    if os.environ.get("NUMBA_CACHE_DIR"):
        projection._cache_numba_kernels()
    projection.project_feature_set(feature_dir, progress=progress, **params)
    return {"feature_dir": feature_dir}


TASKS: dict[str, Callable[..., dict]] = {"extract": _task_extract, "select": _task_select, "rerun": _task_rerun,
                                         "evaluate": _task_evaluate, "project": _task_project}


# --------------------------------------------------------------------------- the parent side


def _plain(value):
    """JSON for the numpy values a task's arguments may hold (option values, index arrays)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple, Path)):
        return list(value) if not isinstance(value, Path) else str(value)
    raise TypeError(f"a child task's argument cannot be sent as JSON: {type(value).__name__}")


def run_in_child(task: str, args: dict, progress: ProgressFn | None = None, *, niceness: int = 0,
                 env: dict[str, str] | None = None, what: str | None = None) -> dict:
    """Run ``TASKS[task](progress, **args)`` in a child process and return its result.

    `niceness` is added to the child's (a background refinement such as the UMAP map yields
    the cores to what the user waits for); `env` adds environment variables.  BilafError and
    Cancelled raised in the child are raised here with the same message; any other failure is
    a RuntimeError carrying the child's traceback.  `what` names the work in those messages."""
    import signal
    import subprocess

    if task not in TASKS:
        raise ValueError(f"unknown child task {task!r}; known: {', '.join(TASKS)}")
    what = what or task
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env["PYTHONPATH"] = os.pathsep.join([str(_PROJECT_ROOT)] + ([child_env["PYTHONPATH"]] if child_env.get("PYTHONPATH") else []))
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env["BILAF_CHILD_NICENESS"] = str(int(niceness))
    # stderr to a file, not a pipe: a chatty child (warnings) must never block on a full pipe
    with tempfile.TemporaryFile(mode="w+", prefix="bilaf-child-") as stderr_file:
        child = subprocess.Popen(
            [sys.executable, "-c", "from bilaf_core.child import main; main()", task, json.dumps(args, default=_plain)],
            stdout=subprocess.PIPE, stderr=stderr_file, text=True, env=child_env, cwd=str(_PROJECT_ROOT),
        )
        result, error = None, None
        try:
            for line in child.stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue  # a stray print of a library
                if "progress" in message:
                    if progress is not None:
                        progress(float(message["progress"]), str(message.get("message", "")))
                elif "result" in message:
                    result = message["result"]
                elif "error" in message:
                    error = message
        except BaseException:  # Cancelled, or the server stopping: interrupt the child, let it clean up
            with contextlib.suppress(OSError):
                child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            raise
        finally:
            child.stdout.close()
            child.wait()
        stderr_file.seek(0)
        stderr = stderr_file.read()
    if error is not None:
        if error.get("kind") == "BilafError":
            raise BilafError(error["error"])
        if error.get("kind") == "Cancelled":
            raise Cancelled(error["error"])
        raise RuntimeError(f"{what} failed in its child process: {error['error']}\n{error.get('traceback', '')}")
    if child.returncode != 0 or result is None:
        raise RuntimeError(f"{what}: the child process exited with status {child.returncode} without a result: "
                           f"{stderr.strip()[-2000:]}")
    return result


# --------------------------------------------------------------------------- the child side


def main() -> None:
    """Entry point of the child: ``<task> <args json>``; JSON lines on stdout."""
    import traceback

    def say(**message) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    niceness = int(os.environ.get("BILAF_CHILD_NICENESS", "0") or 0)
    if niceness:
        with contextlib.suppress(OSError):
            os.nice(niceness)
    task, args = sys.argv[1], json.loads(sys.argv[2])
    try:
        result = TASKS[task](lambda f, m: say(progress=f, message=m), **args)
    except KeyboardInterrupt:  # SIGINT from the parent: the atomic writes have cleaned up
        say(error="cancelled", kind="Cancelled")
        sys.exit(1)
    except (BilafError, Cancelled) as exc:
        say(error=str(exc), kind=type(exc).__name__)
        sys.exit(1)
    except Exception as exc:  # a bug: the parent reports it with this traceback
        say(error=f"{type(exc).__name__}: {exc}", kind="bug", traceback=traceback.format_exc(limit=8))
        sys.exit(1)
    say(result=result)
