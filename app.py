"""BiLAF Studio — choose, without labels, which images of an unlabeled pool to annotate.

Run:  .venv/bin/streamlit run app.py      (serves on http://127.0.0.1:8501, works offline)
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent
PAGES = ROOT / "pages"

st.set_page_config(page_title="BiLAF Studio", page_icon=str(ROOT / "assets" / "logo.svg"), layout="wide")

from pages import _common as common  # noqa: E402  (after set_page_config)

data_page = st.Page(str(PAGES / "data.py"), title="Data & model", icon=":material/dataset:", url_path="data")


def _start() -> None:
    """The root URL: Data & model.  Data & model itself is not the default page, because
    Streamlit serves its default page at "/" only, and /data — a link someone shares or a reload
    after a redirect — would then answer "Page not found"."""
    st.switch_page(data_page)


pages = {
    "Workflow": [
        st.Page(_start, title="Start", url_path="start", default=True, visibility="hidden"),
        data_page,
        st.Page(str(PAGES / "select.py"), title="Select", icon=":material/checklist:", url_path="select"),
        st.Page(str(PAGES / "map.py"), title="Map", icon=":material/scatter_plot:", url_path="map"),
        st.Page(str(PAGES / "compare.py"), title="Finetune & compare", icon=":material/leaderboard:", url_path="compare"),
    ],
    "Teach": [
        st.Page(str(PAGES / "learn.py"), title="Learn", icon=":material/school:", url_path="learn"),
    ],
}
nav = st.navigation(pages)
common.page_opened_at()  # the session's start: later failures are announced, older ones not

with st.sidebar:
    st.logo(str(ROOT / "assets" / "logo.svg"), size="large")
    st.markdown("**BiLAF Studio** · one-shot active finetuning")


def _running_jobs_list(running: list[dict]) -> None:
    st.caption(f"{len(running)} job{'s' if len(running) > 1 else ''} running")
    for record in running[:4]:
        st.progress(float(record.get("progress") or 0.0), text=f"{record.get('title')}: {common.job_progress_line(record)}")


@st.fragment(run_every=2.0)
def _running_jobs_live() -> None:
    running = common.active_jobs()
    if not running:
        st.rerun(scope="app")  # all finished: one full rerun, then the sidebar stops polling
    _running_jobs_list(running)


with st.sidebar:
    # Poll only while something runs: an idle page has no timer reruns competing with the user's.
    if common.active_jobs():
        _running_jobs_live()
    st.caption(f"Workspace: `{common.workspace().root}`  \nSet `BILAF_WORKSPACE` to use another folder.")

st.html(common.method_chip_css())  # one colour per method, on every screen
nav.run()
