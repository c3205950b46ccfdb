"""Map — the pool on its UMAP 2-D map with BiLAF's internals and every method's picks."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st

from bilaf_core import export, palette
from bilaf_core.errors import BilafError
from pages import _common as common
from pages import _figures as figs

GALLERY_MAX = 40
CHART_CONFIG = {"displaylogo": False, "scrollZoom": True, "modeBarButtonsToRemove": ["autoScale2d"]}

st.title("Map")
fs = common.feature_set_picker(key="map_fs")
if fs is None:
    st.stop()

coords = common.load_map(fs["path"])
if coords is None:
    job_id = common.ensure_projection(fs)
    st.info(
        "Drawing the 2-D map of this feature set: UMAP runs once per feature set and is cached beside the features "
        "(about a minute for 60 000 images on two cores). You can leave this page; the map will be here when you return."
    )
    common.show_job(job_id, key="map_projection", title="2-D map")
    st.stop()

meta = common.feature_set_meta(fs)
labels = meta.get("labels")
class_names = meta.get("class_names")
rows = common.selections(fs["id"])

if not rows:
    st.info("No selection on this feature set yet. Run BiLAF (and baselines) on the **Select** page; the pool is drawn below meanwhile.")
    st.page_link("pages/select.py", label="Select", icon=":material/checklist:")

# ------------------------------------------------------------------ which selections
by_id = {r["id"]: r for r in rows}
ids = [r["id"] for r in rows]
bilaf_ids = [r["id"] for r in rows if r.get("method") == "bilaf"]
main_id = None
if rows:
    default_main = st.session_state.get("map_main_default") or (bilaf_ids[0] if bilaf_ids else ids[0])
    c1, c2 = st.columns([2, 3])
    with c1:
        main_id = st.selectbox(
            "Selection", ids, index=ids.index(default_main) if default_main in ids else 0, key="map_main",
            format_func=lambda i: common.selection_title(by_id[i]),
            help="The selection whose picks, pseudo-classes, rings and noise are drawn (BiLAF shows all its internals).",
        )
    others = [i for i in ids if i != main_id]
    with c2:
        overlay_ids = st.multiselect(
            "Also draw", others, default=[], key="map_overlay", format_func=lambda i: common.selection_title(by_id[i]),
            help="Other selections' picks on the same map, each in its method's colour.",
        )

main = common.load_selection(main_id) if main_id else None
main_row = by_id.get(main_id) if main_id else None

# ------------------------------------------------------------------ live budget (BiLAF: same cores, new budget)
preview_note = None
rebudget_job = None
if main is not None and main.method == "bilaf" and "core_indices" in main.diagnostics and not (main_row or {}).get("parent_id"):
    cores = np.asarray(main.diagnostics["core_indices"])
    with st.container(border=True):
        b1, b2, b3 = st.columns([2, 3, 2], vertical_alignment="bottom")
        with b1:
            live_budget = st.number_input(
                "Budget (re-runs BiLAF on the same cores)", min_value=int(cores.size), max_value=int(main.n_pool),
                value=int(main.budget), step=max(1, main.budget // 20), key=f"map_budget_{main_id}",
                help="Changing the budget reuses this selection's core samples, so only BiLAF's boundary stage re-runs.",
            )
        if live_budget != main.budget:
            ready = common.bilaf_at_budget_ready(fs, main_id, int(live_budget))
            try:
                if ready is None and fs["n"] * max(fs["dim"], 1) <= common.INLINE_BILAF_VALUES:
                    ready = common.bilaf_at_budget(fs, main_id, int(live_budget))
                if ready is not None:
                    main = ready
                    preview_note = f"Preview at B={int(live_budget):,} — BiLAF's boundary stage took {main.timings.get('total', 0):.2f} s (not saved yet)."
                else:
                    rebudget_job = common.submit_bilaf_at_budget(fs, main_id, int(live_budget))
            except BilafError as exc:
                st.error(str(exc))
        with b2:
            if preview_note:
                st.caption(preview_note)
            else:
                st.caption(f"{cores.size} cores · {main.budget - cores.size:,} boundary picks · seed {main.seed}")
        with b3:
            if preview_note and st.button("Save this budget", key="map_save_budget", width="stretch"):
                new_id = common.workspace().save_selection(main, fs["id"], name=f"BiLAF B={main.budget}")
                st.session_state["map_main_default"] = new_id
                st.session_state.pop(f"map_budget_{main_id}", None)
                st.toast("Saved as a new selection.")
                st.rerun()

if rebudget_job:
    common.show_job(rebudget_job, key="map_rebudget")

# ------------------------------------------------------------------ pending hand edits
edit_key = f"map_edits_{main_id}"
edits = st.session_state.setdefault(edit_key, {"add": [], "remove": []}) if main is not None else {"add": [], "remove": []}
shown = main
if main is not None and (edits["add"] or edits["remove"]):
    try:
        shown = export.edit_selection(main, add=edits["add"], remove=edits["remove"], parent_id=main_id)
    except BilafError as exc:
        st.error(str(exc))
        shown = main

# ------------------------------------------------------------------ layers
diag = shown.diagnostics if shown is not None else {}
has_cluster = "cluster" in diag
color_options = []
if labels is not None:
    color_options.append("true label")
if has_cluster:
    color_options.append("pseudo-class")
if "ring_level" in diag:
    color_options.append("density-ring level")
color_options.append("none")

l1, l2, l3 = st.columns([2, 2, 3])
with l1:
    color_by = st.radio("Colour the pool by", color_options, key="map_color", horizontal=False)
with l2:
    st.markdown("**Layers**")
    show_cores = st.checkbox("pseudo-class centres (BiLAF's cores)", True, key="map_cores", disabled="core_indices" not in diag)
    show_picks = st.checkbox("picks", True, key="map_picks", disabled=shown is None)
    show_noise = st.checkbox("removed as noise", False, key="map_noise", disabled="removed_as_noise" not in diag)
with l3:
    side_by_side = st.toggle("Side by side", value=False, key="map_side", disabled=not (shown is not None and len(rows) > 1),
                             help="The main selection and a baseline on the same coordinates.")
    side_id = None
    if side_by_side and shown is not None:
        cands = [i for i in ids if i != main_id]
        base_default = next((i for i in cands if by_id[i].get("method") != "bilaf"), cands[0] if cands else None)
        side_id = st.selectbox("Baseline", cands, index=cands.index(base_default) if base_default in cands else 0, key="map_side_id",
                               format_func=lambda i: common.selection_title(by_id[i]))


def _background() -> figs.Background:
    if color_by == "true label" and labels is not None:
        names = class_names or [str(c) for c in range(int(np.max(labels)) + 1)]
        return figs.Background("category", np.asarray(labels), names, "true label")
    if color_by == "pseudo-class" and has_cluster:
        k = int(np.asarray(diag["cluster"]).max()) + 1
        return figs.Background("category", np.asarray(diag["cluster"]), [f"pseudo-class {c}" for c in range(k)] if k <= 20 else None,
                               f"pool by pseudo-class ({k})")
    if color_by == "density-ring level" and "ring_level" in diag:
        return figs.Background("ring", np.asarray(diag["ring_level"]), None, "density-ring level")
    return figs.Background("plain", None, None, "pool")


def _selection_layers(selection, name_prefix: str | None = None) -> list[figs.PickLayer]:
    layers = []
    d = selection.diagnostics
    method = selection.method
    label = name_prefix or palette.method_label(method)
    if method == "bilaf" and "is_core_pick" in d:
        is_core = np.asarray(d["is_core_pick"], dtype=bool)
        score = np.asarray(d.get("boundary_score", np.full(selection.budget, np.nan)), dtype=float)
        opp = np.asarray(d.get("opponent_cluster", np.full(selection.budget, -1)))
        own = np.asarray(d.get("pick_cluster", np.full(selection.budget, -1)))
        added = np.asarray(d.get("edited_added", np.zeros(selection.budget, bool)), dtype=bool)
        boundary = ~is_core
        hover = [
            ("added by hand" if a else f"pseudo-class {c} → opponent {o}<br>boundary score {s:.3f}")
            for c, o, s, a in zip(own[boundary], opp[boundary], score[boundary], added[boundary])
        ]
        if show_picks:
            layers.append(figs.method_layer(method, selection.indices[boundary], name=f"{label} boundary picks", hover=hover))
        if show_cores:
            layers.append(figs.core_layer(selection.indices[is_core], name=f"{label} pseudo-class centres"))
    elif show_picks:
        layers.append(figs.method_layer(method, selection.indices, name=f"{label} picks"))
    return layers


def _main_layers() -> list[figs.PickLayer]:
    layers = []
    if shown is None:
        return layers
    if show_noise and "removed_as_noise" in diag:
        layers.append(figs.noise_layer(np.flatnonzero(np.asarray(diag["removed_as_noise"], dtype=bool))))
    layers += _selection_layers(shown)
    for oid in overlay_ids if rows else []:
        other = common.load_selection(oid)
        layers.append(figs.method_layer(other.method, other.indices, name=common.selection_title(by_id[oid])))
    return layers


ranges = figs.padded_ranges(coords)
background = _background()
uirev = f"{fs['id']}"
events = []
if side_id:
    side = common.load_selection(side_id)
    main_layers, side_layers = _main_layers(), _selection_layers(side)
    # One shared legend above both maps (the class colours once, then every pick layer), so the
    # two plotting areas are the same size and the same point sits at the same place in both.
    st.html(figs.legend_html(background, main_layers + side_layers))
    height = figs.map_height(ranges, 560, extra=50, lo=320, hi=640)
    left, right = st.columns(2)
    with left:
        main_title = common.selection_title({**main_row, "title": None, "budget": shown.budget}) + (" (preview)" if preview_note else "")
        fig = figs.map_figure(coords, main_layers, background=background, title=main_title, height=height,
                              uirevision=uirev, ranges=ranges, show_legend=False)
        events.append(st.plotly_chart(fig, key="map_chart_left", on_select="rerun", selection_mode=("points", "box", "lasso"),
                                      config=CHART_CONFIG, width="stretch"))
    with right:
        fig = figs.map_figure(coords, side_layers, background=background, title=common.selection_title(by_id[side_id]),
                              height=height, uirevision=uirev, ranges=ranges, show_legend=False)
        events.append(st.plotly_chart(fig, key="map_chart_right", on_select="rerun", selection_mode=("points", "box", "lasso"),
                                      config=CHART_CONFIG, width="stretch"))
else:
    height = figs.map_height(ranges, 1150, extra=110, lo=480, hi=760)
    fig = figs.map_figure(coords, _main_layers(), background=background, height=height, uirevision=uirev, ranges=ranges)
    events.append(st.plotly_chart(fig, key="map_chart", on_select="rerun", selection_mode=("points", "box", "lasso"),
                                  config=CHART_CONFIG, width="stretch"))
if coords.shape[0] > figs.MAX_BACKGROUND:
    st.caption(f"{coords.shape[0]:,} images: the background shows a random {figs.MAX_BACKGROUND:,}; every pick is drawn.")
st.caption("Drag a box or lasso (toolbar, top right of the map) or click points to inspect them below; double-click clears.")

# ------------------------------------------------------------------ inspected points: gallery, details, edits
picked_now = np.unique(np.concatenate([figs.selected_pool_indices(e) for e in events])) if events else np.zeros(0, np.int64)
if picked_now.size:
    st.subheader(f"{picked_now.size:,} point{'s' if picked_now.size != 1 else ''} selected on the map")
    pickers = {common.selection_title(main_row) if main_row else "": shown} if shown is not None else {}
    for oid in (overlay_ids if rows else []) + ([side_id] if side_id else []):
        pickers[common.selection_title(by_id[oid])] = common.load_selection(oid)
    pick_sets = {name: set(sel.indices.tolist()) for name, sel in pickers.items() if sel is not None}
    details = common.point_details(picked_now, shown, pick_sets, meta)
    # picks first (in the gallery and the table): they are what the user is checking
    any_pick = np.array([any(int(i) in s for s in pick_sets.values()) for i in picked_now], dtype=bool)
    picked_now = np.concatenate([picked_now[any_pick], picked_now[~any_pick]])
    gallery = picked_now[:GALLERY_MAX]
    thumbs = common.thumbnails(fs, tuple(int(i) for i in gallery))
    if thumbs is None:
        st.caption("No images behind these features (imported embeddings): details only.")
    else:
        per_row = 8
        for start in range(0, gallery.size, per_row):
            cols = st.columns(per_row)
            for col, i in zip(cols, gallery[start : start + per_row]):
                d = details[int(i)]
                with col:
                    st.image(thumbs[int(i)], width="stretch")
                    st.caption(d["caption"])
        if picked_now.size > GALLERY_MAX:
            st.caption(f"Thumbnails of the first {GALLERY_MAX} of {picked_now.size:,}; all are in the table.")
    st.dataframe([details[int(i)]["row"] for i in picked_now], hide_index=True, width="stretch")

    if shown is not None:
        in_main = np.isin(picked_now, shown.indices)
        e1, e2, _ = st.columns([1, 1, 2])
        if e1.button(f"Add {int((~in_main).sum())} to the picks", disabled=not (~in_main).any(), key="map_add", width="stretch"):
            add = [int(i) for i in picked_now[~in_main]]
            edits["remove"] = [i for i in edits["remove"] if i not in add]
            edits["add"] = edits["add"] + [i for i in add if i not in main.indices]
            st.rerun()
        if e2.button(f"Remove {int(in_main.sum())} from the picks", disabled=not in_main.any(), key="map_remove", width="stretch"):
            rem = [int(i) for i in picked_now[in_main]]
            edits["add"] = [i for i in edits["add"] if i not in rem]
            edits["remove"] = edits["remove"] + [i for i in rem if i in set(main.indices.tolist())]
            st.rerun()

if shown is not None and (edits["add"] or edits["remove"]):
    with st.container(border=True):
        st.markdown(
            f"**Edited selection** (unsaved): +{len(edits['add'])} added, −{len(edits['remove'])} removed → {shown.budget:,} picks. "
            "Saving creates a new selection; the original stays as it is."
        )
        s1, s2, _ = st.columns([1, 1, 2])
        if s1.button("Save edited selection", type="primary", key="map_save_edit", width="stretch"):
            name = f"{by_id[main_id].get('name') or palette.method_label(shown.method)}{palette.EDITED_SUFFIX}"
            new_id = common.workspace().save_selection(shown, fs["id"], name=name, parent_id=main_id)
            st.session_state[edit_key] = {"add": [], "remove": []}
            st.session_state["map_main_default"] = new_id
            st.toast("Edited selection saved.")
            st.rerun()
        if s2.button("Discard edits", key="map_discard_edit", width="stretch"):
            st.session_state[edit_key] = {"add": [], "remove": []}
            st.rerun()

# ------------------------------------------------------------------ export
if rows:
    st.subheader("Export")
    exportable = {}
    if shown is not None:
        exportable["shown"] = (shown, common.selection_title(main_row) + (" (as shown)" if shown is not main or preview_note else ""))
    for oid in ids:
        if oid != main_id:
            exportable[oid] = (None, common.selection_title(by_id[oid]))
    choice = st.selectbox("Selection to export", list(exportable), key="map_export_choice", format_func=lambda k: exportable[k][1])
    sel = exportable[choice][0] if exportable[choice][0] is not None else common.load_selection(choice)
    stem = f"{fs['dataset']}-{sel.method}-B{sel.budget}".replace(" ", "_")
    x1, x2, _ = st.columns([1, 1, 2])
    x1.download_button("JSON (list of indices)", export.indices_json(sel.indices), file_name=f"{stem}.json",
                       mime="application/json", key="map_dl_json", width="stretch",
                       help="What the BiLAF / DeiT finetuning scripts read as --subset_ids.")
    x2.download_button("CSV (index, id, cluster, method, score)", export.selection_csv(sel, meta), file_name=f"{stem}.csv",
                       mime="text/csv", key="map_dl_csv", width="stretch")
