"""Live panels for background jobs: progress, one ETA, Cancel; several jobs as one panel;
outcomes (done / cancelled / failed) that clear once a newer run of the same work succeeded."""

from __future__ import annotations

import html
import re
import time
from typing import Callable

import streamlit as st

from bilaf_core import jobs as jobs_mod
from pages._store import job_manager


#: how often a page polls a running job (seconds)
POLL_SECONDS = 1.0


def page_opened_at() -> float:
    """When this browser session first ran (failures older than that are not re-announced)."""
    return st.session_state.setdefault("_opened_at", time.time())


_OWN_ETA = re.compile(r"\b(ETA|left)\b")


def job_progress_line(record: dict) -> str:
    """``37% · extracting 3,712/10,000 images · 48 img/s · ETA 2m11s · elapsed 1m18s``: one
    ETA only.  A stage that estimates its own (extraction, finetuning: from its measured rate)
    is more exact than the job's linear estimate from its start, so that one is then left out."""
    pct = 100 * float(record.get("progress") or 0.0)
    message = record.get("message") or ""
    parts = [f"{pct:.0f}%", message]
    if record.get("elapsed_s") is not None:
        parts.append(f"elapsed {jobs_mod.format_duration(record['elapsed_s'])}")
    if record.get("eta_s") is not None and not _OWN_ETA.search(message):
        parts.append(f"about {jobs_mod.format_duration(record['eta_s'])} left")
    return " · ".join(p for p in parts if p)


def latest_per_work(records: list[dict]) -> list[dict]:
    """The newest record of each piece of work (same job key), so an old "cancelled" or
    "failed" notice goes away once the same work was started again; order kept."""
    newest: dict[str, dict] = {}
    for r in records:
        k = r.get("key") or r["id"]
        if k not in newest or (r.get("created") or 0) > (newest[k].get("created") or 0):
            newest[k] = r
    keep = {r["id"] for r in newest.values()}
    return [r for r in records if r["id"] in keep]


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
    records = latest_per_work(records)
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
