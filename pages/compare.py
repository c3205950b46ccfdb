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
CHART_CONFIG = {"displaylogo": False}
#: bars per class in the per-class chart at most (the newest evaluated selections beyond)
PER_CLASS_MAX = 6

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
evaluations = common.evaluations(fs["id"])


def series_of(row: dict) -> str:
    """Legend name of a selection's method in the plots: hand-edited selections are their own series."""
    label = palette.method_label(str(row.get("method")))
    return f"{label}{palette.EDITED_SUFFIX}" if row.get("parent_id") else label


# ------------------------------------------------------------------ a budget sweep in one go
with st.expander("Accuracy vs budget in one go: select and evaluate several methods at several budgets", expanded=not rows):
    s1, s2, s3 = st.columns([2, 2, 1])
    methods_all = available_methods()
    sweep_methods = s1.multiselect("Methods", methods_all, default=[m for m in ("bilaf", "kmeans", "random") if m in methods_all],
                                   format_func=palette.method_label, key="compare_sweep_methods")
    sweep_budgets = s2.text_input("Budgets", "0.5%, 1%, 2%", key="compare_sweep_budgets",
                                  help="Counts or percentages of the pool, comma separated.")
    sweep_mode = s3.selectbox("Training", ["linear-probe", "knn"], key="compare_sweep_mode")
    try:
        budgets = sorted({resolve_budget(b.strip(), fs["n"]) for b in sweep_budgets.split(",") if b.strip()})
    except BilafError as exc:
        budgets = []
        st.error(str(exc))
    # a point whose selection is already saved (same method, budget, seed 0, default parameters) is only evaluated
    plan = [(m, b, common.find_default_selection(rows, m, b, 0)) for b in budgets for m in sweep_methods]
    evaluated_before = {(e["selection_id"], e["mode"]) for e in evaluations}
    pending = [(m, b, sid) for m, b, sid in plan if sid is None or (sid, sweep_mode) not in evaluated_before]
    if budgets:
        reused = sum(1 for _, _, sid in pending if sid is not None)
        st.caption(f"{len(plan)} points: budgets {', '.join(f'{b:,}' for b in budgets)}, seed 0, each method's default "
                   f"parameters; {len(pending) - reused} to select and evaluate, {reused} saved selections to evaluate, "
                   f"{len(plan) - len(pending)} already done. Every selection is saved.")
    if st.button("Run the sweep", disabled=not pending, key="compare_sweep_run"):
        for m, b, sid in pending:
            if sid is None:
                common.submit_sweep_point(fs, m, b, seed=0, mode=sweep_mode)
            else:
                common.submit_evaluation(fs, sid, sweep_mode, seed=0, title=f"{by_id[sid]['title']} → {sweep_mode}")
        st.rerun()

if not rows:
    common.show_jobs(common.job_manager().list(kind="evaluate", tags={"feature_set": fs["id"]}, active_only=True),
                     key="compare", noun="runs")
    st.info("No selection to evaluate yet: run the sweep above, or run BiLAF and a baseline or two on the **Select** page.")
    st.page_link("pages/select.py", label="Select", icon=":material/checklist:")
    st.stop()

# ------------------------------------------------------------------ run evaluations
evaluated = {(e["selection_id"], e["mode"]) for e in evaluations}


def _default_choice() -> list[str]:
    """The newest selection of each method (up to six), so a first press compares methods."""
    picked, methods = [], set()
    for r in rows:
        if r.get("method") not in methods and not r.get("parent_id"):
            picked.append(r["id"])
            methods.add(r.get("method"))
    return picked[:6] or [r["id"] for r in rows[:4]]


with st.container(border=True):
    chosen = st.multiselect(
        "Selections", list(by_id), default=_default_choice(), key="compare_selections",
        format_func=lambda i: common.selection_title(by_id[i]),
        help="Each is trained on its own picks with the same recipe; the charts below show the ones chosen here.",
    )
    c1, c2, c3 = st.columns([3, 2, 1])
    mode = c1.radio("Training", list(MODES), format_func=MODES.get, key="compare_mode")
    options: dict = {}
    with c2:
        if mode == "finetune":
            presets = common.finetune_presets()
            if presets:
                preset = st.selectbox(
                    "Recipe", [None, *presets], key="compare_preset",
                    format_func=lambda p: f"recommended for {fs['backbone']}" if p is None else p,
                    help="The training recipe (optimizer, schedule, image size); each one's summary is below.",
                )
                st.caption(" · ".join(f"**{name}**: {summary}" for name, summary in presets.items()))
                if preset is not None:
                    options["preset"] = preset
                epochs = st.number_input("epochs (empty: the recipe's)", min_value=1, value=None, step=1, key="compare_epochs",
                                         placeholder="the recipe's")
                if epochs:
                    options["epochs"] = int(epochs)
        else:
            st.caption("Trains a classifier on the cached features of the picks and tests it on the dataset's test split "
                       "(extracted once and cached), or on the unpicked pool samples when there is none.")
    seed = c3.number_input("seed", 0, 2**31 - 1, 0, key="compare_seed")
    again = [sid for sid in chosen if (sid, mode) in evaluated]
    if again:
        st.caption(f"{len(again)} of these already have a {mode} result; evaluating again adds a run (the table keeps the newest).")
    if st.button("Evaluate", type="primary", disabled=not chosen, key="compare_run"):
        for sid in chosen:
            try:
                common.submit_evaluation(fs, sid, mode, seed=int(seed), options=options,
                                         title=f"{MODES[mode].split(' (')[0]}: {common.selection_title(by_id[sid])}")
            except BilafError as exc:
                st.error(str(exc))
        st.rerun()

eval_jobs = [r for r in common.job_manager().list(kind="evaluate", tags={"feature_set": fs["id"]}, limit=30)
             if r["status"] in ("queued", "running")
             or (r["status"] in ("failed", "interrupted", "cancelled") and (r.get("finished") or 0) > common.page_opened_at())]
common.show_jobs(eval_jobs, key="compare", noun="evaluations")
n_running = sum(1 for r in common.latest_per_work(eval_jobs) if r["status"] in ("queued", "running"))

# ------------------------------------------------------------------ results
evaluations = [e for e in evaluations if e["selection_id"] in by_id]
if not evaluations:
    if n_running:
        st.info(f"{n_running} evaluation{'s are' if n_running > 1 else ' is'} running: the table and the charts appear here "
                "as soon as the first one finishes.")
    else:
        st.info("No result yet: pick selections above and press **Evaluate** (the linear probe takes seconds).")
    st.stop()

# the newest evaluation per (selection, training)
latest: dict[tuple[str, str], dict] = {}
for e in evaluations:
    latest.setdefault((e["selection_id"], e["mode"]), e)

st.subheader("Accuracy")
table = []
for (sid, mode_), e in latest.items():
    sel = by_id[sid]
    table.append({
        "selection": common.selection_title(sel),
        "method": series_of(sel),
        "budget": sel.get("budget"),
        "training": mode_ + (f" ({e['preset']})" if e.get("preset") else ""),
        "test accuracy (%)": round(100 * e["accuracy"], 2),
        "trained on": e.get("n_train"),
        "tested on": e.get("test_set") or "",
        "time": common.fmt_duration(e.get("train_seconds")),
        "runs": sum(1 for x in evaluations if x["selection_id"] == sid and x["mode"] == mode_),
        "when": common.fmt_time(e.get("created")),
    })
table.sort(key=lambda r: (r["training"], r["budget"] or 0, -r["test accuracy (%)"]))
st.dataframe(
    table, hide_index=True, width="stretch",
    column_config={
        "test accuracy (%)": st.column_config.ProgressColumn("test accuracy (%)", min_value=0, max_value=100, format="%.2f"),
        "runs": st.column_config.NumberColumn("runs", help="evaluations of this selection with this training; the newest is shown"),
        "time": st.column_config.TextColumn("time", help="training and scoring; preparing the test split (extracting its "
                                                         "features once, then cached) is not counted"),
    },
)

modes_present = sorted({m for _, m in latest})
if len(modes_present) > 1:
    plot_mode = st.radio("Charts for", modes_present, horizontal=True, key="compare_plot_mode",
                         format_func=lambda m: MODES.get(m, m).split(" (")[0])
else:
    plot_mode = modes_present[0]
in_mode = {sid: e for (sid, m), e in latest.items() if m == plot_mode}

points = [
    {"method": by_id[sid]["method"], "series": series_of(by_id[sid]), "edited": bool(by_id[sid].get("parent_id")),
     "budget": by_id[sid]["budget"], "accuracy": e["accuracy"]}
    for sid, e in in_mode.items()
]
left, right = st.columns(2)
with left:
    st.markdown(f"**Accuracy vs budget** · {plot_mode} · mean over the selections at each budget")
    st.plotly_chart(figs.accuracy_vs_budget_figure(points), width="stretch", key="compare_curve", config=CHART_CONFIG)

class_names = meta.get("class_names") or [str(c) for c in range(int(max(meta["labels"])) + 1)]
shown_ids = [sid for sid in chosen if sid in in_mode] or list(in_mode)
shown_ids = shown_ids[:PER_CLASS_MAX]
with right:
    st.markdown("**Per-class accuracy** · the selections chosen above")
    series = [(by_id[sid]["method"], common.selection_title(by_id[sid]), in_mode[sid]["per_class"])
              for sid in shown_ids if in_mode[sid].get("per_class")]
    names = in_mode[shown_ids[0]].get("class_names") or class_names
    st.plotly_chart(figs.per_class_figure(names, series), width="stretch", key="compare_per_class", config=CHART_CONFIG)

st.subheader("Confusion and class balance of one selection")
focus = st.selectbox("Selection", list(in_mode), index=list(in_mode).index(shown_ids[0]), key="compare_focus",
                     format_func=lambda i: common.selection_title(by_id[i]))
if focus:
    e = in_mode[focus]
    f1, f2 = st.columns(2)
    with f1:
        if e.get("confusion"):
            st.plotly_chart(figs.confusion_figure(e["confusion"], e.get("class_names") or class_names,
                                                  title=f"test-set confusion of the model trained on these picks ({plot_mode})"),
                            width="stretch", key="compare_confusion", config=CHART_CONFIG)
    with f2:
        picks = common.load_selection(focus).indices
        labels = np.asarray(meta["labels"])
        counts = np.bincount(labels[picks], minlength=len(class_names))
        pool_share = np.bincount(labels, minlength=len(class_names)) / labels.size
        st.plotly_chart(figs.class_balance_figure(class_names, counts, pool_share, by_id[focus]["method"]),
                        width="stretch", key="compare_balance", config=CHART_CONFIG)
