"""Select — choose a budget, the methods and their parameters; runs in the background."""

from __future__ import annotations

import streamlit as st

from bilaf_core import palette
from bilaf_core.errors import BilafError
from bilaf_core.selection import available_methods, get_method, resolve_budget
from pages import _common as common

st.title("Select")
st.caption(
    "Choose how many images to label and which methods choose them. Each method runs as a background job: "
    "leave the page, reload it or open another tab — results land in the workspace."
)

fs = common.feature_set_picker(key="select_fs")
if fs is None:
    st.stop()
n_pool = int(fs["n"])

# ------------------------------------------------------------------ budget and cores
st.subheader("Budget")
c1, c2, c3 = st.columns([1.2, 1.2, 1])
with c1:
    unit = st.radio("Budget as", ["percentage of the pool", "count"], horizontal=True, key="select_budget_unit")
with c2:
    # No min/max on these boxes: a bounded st.number_input keeps its last valid value when the user
    # types 0 or 20 000 (a red box, then Run ran at the old budget).  Every value is accepted here
    # and checked below, where a bad one disables Run and says why.
    if unit == "count":
        budget_value = st.number_input("images to label", value=min(max(2, n_pool // 100), n_pool), step=10, key="select_budget_count")
        budget_text = None if budget_value is None else str(int(budget_value))
    else:
        pct = st.number_input("% of the pool", value=1.0, step=0.5, format="%.2f", key="select_budget_pct")
        budget_text = None if pct is None else f"{pct:g}%"
with c3:
    seed = st.number_input("seed", 0, 2**31 - 1, 0, key="select_seed", help="same inputs + seed = same picks")
budget, budget_problem = None, None
if budget_text is None:
    budget_problem = "Enter a budget: how many images to label."
else:
    try:
        budget = resolve_budget(budget_text, n_pool)
    except BilafError as exc:
        budget_problem = f"Budget {budget_text} cannot run: {exc}"
if budget_problem:
    st.error(budget_problem)
else:
    st.caption(f"**{budget:,}** of {n_pool:,} images ({100 * budget / n_pool:.2f}%).")

# ------------------------------------------------------------------ methods
st.subheader("Methods")
methods_all = available_methods()
m1, m2 = st.columns([3, 1])
with m1:
    methods = st.multiselect(
        "Methods to run", methods_all, default=[m for m in ("bilaf",) if m in methods_all], key="select_methods",
        format_func=palette.method_label,
        help="BiLAF is the flagship; run baselines too to compare them on the map and in the accuracy table.",
    )
core_budget = None
with m2:
    if "bilaf" in methods:
        core_budget = common.param_widget("bilaf", get_method("bilaf").param("core_budget"), key="select", label="BiLAF core count K")
with st.expander("What each method does"):
    for m in methods_all:
        st.markdown(f"{common.method_chip(m)} {get_method(m).summary}", unsafe_allow_html=True)

options: dict[str, dict] = {}
for method in methods:
    spec = get_method(method)
    with st.expander(f"{palette.method_label(method)} parameters", expanded=False):
        values = {"core_budget": core_budget} if method == "bilaf" else {}
        params = common.editable_params(spec, skip=("core_budget",))
        cols = st.columns(2)
        for i, p in enumerate(params):
            with cols[i % 2]:
                values[p.name] = common.param_widget(method, p, key="select")
        if not params and method != "bilaf":
            st.caption("This method has no parameters besides the budget and the seed.")
        options[method] = {k: v for k, v in values.items() if v is not None and v != get_method(method).param(k).default}

rows_saved = common.workspace().list_selections(fs["id"])


def _identical(method: str) -> str | None:
    try:
        return common.find_identical_selection(rows_saved, method, budget, int(seed), options.get(method, {}))
    except BilafError:  # a bad option: the run reports it
        return None


reused = {m: _identical(m) for m in methods} if budget else {}
why_not = budget_problem or ("Pick at least one method above." if not methods else None)
run = st.button("Run selection", type="primary", disabled=why_not is not None, key="select_run",
                help=why_not or "Runs each method in the background; an identical saved selection is reused, not run again.")
if why_not and not budget_problem:
    st.info(why_not)
elif budget_problem:
    st.caption("Run is disabled until the budget is valid.")
if reused and any(reused.values()):
    titles = {r["id"]: r["title"] for r in common.selections(fs["id"])}
    st.caption("Already saved with these settings (reused, not run again): "
               + ", ".join(titles.get(sid, sid) for sid in reused.values() if sid))
if run and not why_not:
    for method in methods:
        try:
            common.submit_selection(fs, method, budget, seed=int(seed), options=options.get(method, {}))
        except BilafError as exc:
            st.error(f"{palette.method_label(method)}: {exc}")
    common.ensure_projection(fs)  # the map is needed next: compute it alongside
    st.rerun()

# ------------------------------------------------------------------ jobs and results
jobs_here = common.job_manager().list(kind="select", tags={"feature_set": fs["id"]}, limit=12)
opened = common.page_opened_at()
shown_jobs = [r for r in jobs_here if r["status"] in ("queued", "running") or (r.get("finished") or 0) >= opened][:6]
if shown_jobs:
    st.subheader("Runs")
common.show_jobs(shown_jobs, key="select", noun="selections")

st.subheader("Selections on this feature set")
rows = common.selection_rows(fs["id"])
if not rows:
    st.info("No selection yet: choose a budget and methods above and press **Run selection**.")
else:
    st.dataframe(rows, hide_index=True, width="stretch", column_config={"method": st.column_config.TextColumn("method")})
    st.page_link("pages/map.py", label="Open the map", icon=":material/scatter_plot:")
