"""Finetune & compare — train on each selection's picks, compare accuracies across methods."""

from __future__ import annotations

import numpy as np
import streamlit as st

from bilaf_core import palette
from bilaf_core.errors import BilafError
from bilaf_core.selection import available_methods, resolve_budget
from pages import _common as common
from pages import _figures as figs

MODES = {
    "linear-probe": "linear probe on the features (seconds)",
    "knn": "k-nearest-neighbour classifier on the features (seconds)",
    "finetune": "full finetune of the backbone (background job, minutes to hours)",
}

st.title("Finetune & compare")
st.caption(
    "Label the picks (the pool's labels stand in for the annotators here), train on them and measure test accuracy. "
    "The same training for every selection, so the table compares the choices, not the training."
)

fs = common.feature_set_picker(key="compare_fs")
if fs is None:
    st.stop()
meta = common.feature_set_meta(fs)
if meta.get("labels") is None:
    st.warning(
        "This feature set has no labels, so nothing can be trained or scored on it. Evaluate on a labelled dataset "
        "(e.g. Fashion-MNIST), or import your embeddings together with a labels file."
    )
    st.stop()

rows = common.selections(fs["id"])
by_id = {r["id"]: r for r in rows}

# ------------------------------------------------------------------ a budget sweep in one go
with st.expander("Accuracy vs budget in one go: select and evaluate several methods at several budgets", expanded=not rows):
    s1, s2, s3 = st.columns([2, 2, 1])
    sweep_methods = s1.multiselect("Methods", available_methods(), default=[m for m in ("bilaf", "kmeans", "random") if m in available_methods()],
                                   format_func=palette.method_label, key="compare_sweep_methods")
    sweep_budgets = s2.text_input("Budgets", "0.5%, 1%, 2%", key="compare_sweep_budgets",
                                  help="Counts or percentages of the pool, comma separated.")
    sweep_mode = s3.selectbox("Training", ["linear-probe", "knn"], key="compare_sweep_mode")
    try:
        budgets = sorted({resolve_budget(b.strip(), fs["n"]) for b in sweep_budgets.split(",") if b.strip()})
        st.caption(f"{len(sweep_methods) * len(budgets)} runs: budgets {', '.join(f'{b:,}' for b in budgets)}, seed 0; each selection is saved.")
    except BilafError as exc:
        budgets = []
        st.error(str(exc))
    if st.button("Run the sweep", disabled=not (sweep_methods and budgets), key="compare_sweep_run"):
        for b in budgets:
            for m in sweep_methods:
                common.submit_sweep_point(fs, m, b, seed=0, mode=sweep_mode)
        st.rerun()

if not rows:
    for record in common.job_manager().list(kind="evaluate", tags={"feature_set": fs["id"]}, active_only=True):
        common.show_job(record["id"], key="compare")
    st.info("No selection to evaluate yet: run the sweep above, or run BiLAF and a baseline or two on the **Select** page.")
    st.page_link("pages/select.py", label="Select", icon=":material/checklist:")
    st.stop()

# ------------------------------------------------------------------ run evaluations
with st.container(border=True):
    chosen = st.multiselect(
        "Selections", list(by_id), default=list(by_id)[: min(4, len(by_id))], key="compare_selections",
        format_func=lambda i: common.selection_title(by_id[i]),
    )
    c1, c2 = st.columns([3, 1])
    mode = c1.radio("Training", list(MODES), format_func=MODES.get, key="compare_mode", horizontal=False)
    seed = c2.number_input("seed", 0, 2**31 - 1, 0, key="compare_seed")
    if st.button("Evaluate", type="primary", disabled=not chosen, key="compare_run"):
        for sid in chosen:
            try:
                common.submit_evaluation(fs, sid, mode, seed=int(seed), title=f"{MODES[mode].split(' (')[0]}: {common.selection_title(by_id[sid])}")
            except BilafError as exc:
                st.error(str(exc))
        st.rerun()

for record in common.job_manager().list(kind="evaluate", tags={"feature_set": fs["id"]}, limit=20):
    if record["status"] in ("queued", "running"):
        common.show_job(record["id"], key="compare")
    elif record["status"] in ("failed", "interrupted") and (record.get("finished") or 0) > common.page_opened_at():
        common.show_job(record["id"], key="compare")

# ------------------------------------------------------------------ results
evaluations = common.evaluations(fs["id"])
if not evaluations:
    st.info("No result yet: pick selections above and press **Evaluate** (the linear probe takes seconds).")
    st.stop()

st.subheader("Accuracy")
table = []
for e in evaluations:
    sel = by_id.get(e["selection_id"], {})
    table.append({
        "selection": common.selection_title(sel) if sel else e["selection_id"],
        "method": palette.method_label(str(sel.get("method", ""))),
        "budget": sel.get("budget"),
        "training": e["mode"],
        "test accuracy (%)": round(100 * e["accuracy"], 2),
        "trained on": e.get("n_train"),
        "time": common.fmt_duration(e.get("seconds")),
        "when": common.fmt_time(e.get("created")),
    })
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"test accuracy (%)": st.column_config.ProgressColumn("test accuracy (%)", min_value=0, max_value=100, format="%.2f")})

modes_present = sorted({e["mode"] for e in evaluations})
plot_mode = st.radio("Plot", modes_present, horizontal=True, key="compare_plot_mode", format_func=lambda m: MODES.get(m, m).split(" (")[0]) if len(modes_present) > 1 else modes_present[0]
points = [
    {"method": by_id[e["selection_id"]]["method"], "budget": by_id[e["selection_id"]]["budget"], "accuracy": e["accuracy"]}
    for e in evaluations if e["mode"] == plot_mode and e["selection_id"] in by_id
]
left, right = st.columns(2)
with left:
    st.markdown("**Accuracy vs budget** (mean over runs; faint dots = single runs)")
    st.plotly_chart(figs.accuracy_vs_budget_figure(points), width="stretch", key="compare_curve", config={"displaylogo": False})

# latest evaluation per selection in this mode
latest = {}
for e in evaluations:
    if e["mode"] == plot_mode and e["selection_id"] in by_id and e["selection_id"] not in latest:
        latest[e["selection_id"]] = e
class_names = meta.get("class_names") or [str(c) for c in range(int(max(meta["labels"])) + 1)]
with right:
    st.markdown("**Per-class accuracy**")
    series = [(by_id[sid]["method"], common.selection_title(by_id[sid]), e["per_class"]) for sid, e in latest.items() if e.get("per_class")]
    st.plotly_chart(figs.per_class_figure(class_names, series), width="stretch", key="compare_per_class", config={"displaylogo": False})

st.subheader("Confusion and class balance of one selection")
focus = st.selectbox("Selection", list(latest), key="compare_focus", format_func=lambda i: common.selection_title(by_id[i]))
if focus:
    e = latest[focus]
    f1, f2 = st.columns(2)
    with f1:
        if e.get("confusion"):
            st.plotly_chart(figs.confusion_figure(e["confusion"], e.get("class_names") or class_names,
                                                  title="test-set confusion of the model trained on these picks"),
                            width="stretch", key="compare_confusion", config={"displaylogo": False})
    with f2:
        picks = common.load_selection(focus).indices
        labels = np.asarray(meta["labels"])
        counts = np.bincount(labels[picks], minlength=len(class_names))
        pool_share = np.bincount(labels, minlength=len(class_names)) / labels.size
        st.plotly_chart(figs.class_balance_figure(class_names, counts, pool_share, by_id[focus]["method"]),
                        width="stretch", key="compare_balance", config={"displaylogo": False})
