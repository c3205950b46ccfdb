"""Background jobs: records on disk, progress/ETA, cancel, de-duplication, failures, restarts."""

import json
import threading
import time

import pytest

from bilaf_core import jobs
from bilaf_core.errors import BilafError


@pytest.fixture
def manager(tmp_path):
    m = jobs.JobManager(tmp_path / "jobs")
    yield m
    m.shutdown()


def test_result_is_persisted_and_readable_by_a_fresh_manager(manager, tmp_path):
    def work(progress):
        for i in range(5):
            progress(i / 5, f"step {i}")
        return {"selection_id": "abc"}

    job_id = manager.submit("select", "BiLAF on pool", work, params={"budget": 10}, tags={"feature_set": "fs1"})
    record = manager.wait(job_id, timeout=10)
    assert record["status"] == jobs.DONE and record["progress"] == 1.0
    assert record["result"] == {"selection_id": "abc"}
    # another manager (a reloaded page in a restarted server, or a second process) sees the same
    other = jobs.JobManager(tmp_path / "jobs")
    try:
        again = other.get(job_id)
        assert again["status"] == jobs.DONE and again["result"] == {"selection_id": "abc"}
        assert other.latest(kind="select", tags={"feature_set": "fs1"})["id"] == job_id
        assert other.latest(kind="select", tags={"feature_set": "other"}) is None
    finally:
        other.shutdown()
    on_disk = json.loads((tmp_path / "jobs" / f"{job_id}.json").read_text())
    assert on_disk["status"] == jobs.DONE


def test_progress_message_and_eta_while_running(manager):
    gate = threading.Event()
    release = threading.Event()

    def work(progress):
        progress(0.0, "warming up")
        time.sleep(1.2)
        progress(0.5, "halfway")
        gate.set()
        release.wait(10)
        return 1

    job_id = manager.submit("extract", "extract", work)
    assert gate.wait(10)
    record = manager.get(job_id)
    assert record["status"] == jobs.RUNNING
    assert record["progress"] == 0.5 and record["message"] == "halfway"
    assert record["eta_s"] is not None and 0.5 < record["eta_s"] < 5
    assert record["elapsed_s"] >= 1.0
    release.set()
    assert manager.wait(job_id, timeout=10)["status"] == jobs.DONE


def test_cancel_raises_in_the_progress_callback(manager):
    started = threading.Event()
    saw_cancel = []

    def work(progress):
        started.set()
        try:
            for i in range(1000):
                progress(i / 1000, "looping")
                time.sleep(0.01)
        except jobs.Cancelled:
            saw_cancel.append(True)
            raise
        return "finished anyway"

    job_id = manager.submit("select", "slow", work)
    assert started.wait(10)
    assert manager.cancel(job_id)
    record = manager.wait(job_id, timeout=10)
    assert record["status"] == jobs.CANCELLED and saw_cancel == [True]
    assert record["result"] is None
    assert not manager.cancel(job_id)  # already finished


def test_cancel_file_reaches_a_job_of_another_manager(manager, tmp_path):
    started = threading.Event()

    def work(progress):
        started.set()
        for _ in range(1000):
            progress(0.1, "looping")
            time.sleep(0.01)

    job_id = manager.submit("select", "slow", work)
    assert started.wait(10)
    other = jobs.JobManager(tmp_path / "jobs")
    try:
        assert other.cancel(job_id)  # writes <id>.cancel; the owner polls it
    finally:
        other.shutdown()
    assert manager.wait(job_id, timeout=10)["status"] == jobs.CANCELLED


def test_same_key_shares_one_job(manager):
    release = threading.Event()
    calls = []

    def work(progress):
        calls.append(1)
        release.wait(10)
        return "map"

    a = manager.submit("project", "map", work, key="fs1:umap")
    b = manager.submit("project", "map", work, key="fs1:umap")
    assert a == b
    release.set()
    manager.wait(a, timeout=10)
    c = manager.submit("project", "map", work, key="fs1:umap")  # finished: a new one may start
    manager.wait(c, timeout=10)
    assert c != a and len(calls) == 2


def test_failures_are_recorded_with_their_message(manager):
    def bad_input(progress):
        raise BilafError("budget 900 is larger than the pool (100 samples); lower it")

    def bug(progress):
        raise ZeroDivisionError("oops")

    a = manager.submit("select", "x", bad_input)
    b = manager.submit("select", "y", bug)
    ra, rb = manager.wait(a, timeout=10), manager.wait(b, timeout=10)
    assert ra["status"] == jobs.FAILED and "lower it" in ra["error"]
    assert rb["status"] == jobs.FAILED and "ZeroDivisionError" in rb["error"] and "traceback" in rb


def test_a_running_record_of_a_dead_process_reads_as_interrupted(tmp_path):
    root = tmp_path / "jobs"
    root.mkdir()
    record = {
        "id": "20200101-000000-deadbeef",
        "kind": "extract",
        "title": "old",
        "key": "k",
        "status": "running",
        "progress": 0.3,
        "message": "",
        "created": 1.0,
        "started": 1.0,
        "finished": None,
        "owner": {"host": jobs._HOST, "pid": 2**22 + 12345},  # no such pid
    }
    (root / f"{record['id']}.json").write_text(json.dumps(record))
    m = jobs.JobManager(root)
    try:
        assert m.get(record["id"])["status"] == jobs.INTERRUPTED
        assert m.find_active("k") is None  # so the work can be started again
    finally:
        m.shutdown()


def test_get_manager_is_one_per_folder(tmp_path):
    a = jobs.get_manager(tmp_path / "j")
    b = jobs.get_manager(tmp_path / "j")
    assert a is b


def test_format_duration():
    assert jobs.format_duration(None) == "—"
    assert jobs.format_duration(4.2) == "4.2 s"
    assert jobs.format_duration(42) == "42 s"
    assert jobs.format_duration(185) == "3 min 05 s"
    assert jobs.format_duration(3720) == "1 h 02 min"
