"""Map — the pool on its UMAP 2-D map with BiLAF's internals and every method's picks."""

from __future__ import annotations

import numpy as np
import streamlit as st

from bilaf_core import export, palette
from bilaf_core.errors import BilafError
from pages import _common as common
from pages import _figures as figs
from pages import _inspect_ui as inspect_ui
from pages import _selection_state as state_mod

GALLERY_MAX = 40
CHART_CONFIG = {"displaylogo": False, "scrollZoom": True, "modeBarButtonsToRemove": ["autoScale2d"]}

st.title("Map")
fs = common.feature_set_picker(key="map_fs")
if fs is None:
    st.stop()

coords = common.load_map(fs["path"])
map_kind = "umap"
if coords is None:
    # The UMAP map is computed once per feature set, in the background.  Meanwhile the pool and
    # its picks are drawn at once on a quick PCA layout, which the UMAP map replaces when ready.
    job_id = common.ensure_projection(fs)
    coords = common.load_quick_map(fs["path"])
    map_kind = "quick"
    st.info(
        "A **quick layout** (PCA) is drawn while the UMAP map of this feature set is computed in the background "
        "(once per feature set, then cached). Clusters overlap more here; the UMAP map replaces it on its own."
    )
    common.show_job(job_id, key="map_projection", title="UMAP map")

meta = common.feature_set_meta(fs)
labels = meta.get("labels")
class_names = meta.get("class_names")
rows = common.selections(fs["id"])
inspect_ui.follow_rerun(fs)  # a finished "re-run keeping my edits" switches the Map to its record

if not rows:
    selecting = common.job_manager().list(kind="select", tags={"feature_set": fs["id"]}, active_only=True)
    if selecting:
        # e.g. the BiLAF run that follows an extraction: its picks are drawn the moment it is saved
        st.info("A selection is running on this feature set; its picks are drawn here as soon as it finishes.")
        common.show_jobs(selecting, key="map_selecting", noun="selections")
    else:
        st.info("No selection on this feature set yet. Run BiLAF (and baselines) on the **Select** page; "
                "the pool is drawn below meanwhile.")
        st.page_link("pages/select.py", label="Select", icon=":material/checklist:")

# ------------------------------------------------------------------ which selection (one state behind every control)
by_id = {r["id"]: r for r in rows}
ids = [r["id"] for r in rows]
bilaf_ids = [r["id"] for r in rows if r.get("method") == "bilaf"]
main_id = None
overlay_ids: list[str] = []
pending = state_mod.pending_record(ids)
if rows:
    c1, c2 = st.columns([2, 3])
    with c1:
        default_main = pending or (bilaf_ids[0] if bilaf_ids else ids[0])
        main_id = st.selectbox(
            "Selection", ids, index=ids.index(default_main), key=state_mod.main_key(),
            format_func=lambda i: common.selection_title(by_id[i]),
            help="The selection whose picks, pseudo-classes, rings and noise are drawn (BiLAF shows all its internals). "
                 "The map, the gallery, the table, Add/Remove and Export all use it — with its unsaved preview or edits.",
        )
    others = [i for i in ids if i != main_id]
    with c2:
        overlay_ids = st.multiselect(
            "Also draw", others, default=[], key="map_overlay", format_func=lambda i: common.selection_title(by_id[i]),
            help="Other selections' picks on the same map, each in its method's colour (single map only).",
        )

main_row = by_id.get(main_id) if main_id else None
saved = common.load_selection(main_id) if main_id else None

# ------------------------------------------------------------------ live budget (BiLAF: same cores, new budget)
preview, preview_budget, preview_note, rebudget_job = None, None, None, None
budget_box = saved is not None and saved.method == "bilaf" and "core_indices" in saved.diagnostics and not main_row.get("parent_id")
if budget_box:
    cores = np.asarray(saved.diagnostics["core_indices"])
    bkey = state_mod.budget_key(main_id)
    if bkey not in st.session_state:  # a preview left unsaved on an earlier visit (or in another tab) comes back
        restored_budget = state_mod.draft_budget(main_id)
        if restored_budget is not None and cores.size <= restored_budget <= saved.n_pool:
            st.session_state[bkey] = restored_budget
    budget_panel = st.container(border=True)
    with budget_panel:
        b1, b2, b3 = st.columns([2, 3, 2], vertical_alignment="bottom")
        with b1:
            live_budget = st.number_input(
                "Budget (re-runs BiLAF on the same cores)", min_value=int(cores.size), max_value=int(saved.n_pool),
                value=int(saved.budget), step=max(1, saved.budget // 20), key=bkey,
                help="Changing the budget reuses this selection's core samples, so only BiLAF's boundary stage re-runs.",
            )
        if live_budget != saved.budget:
            ready = common.bilaf_at_budget_ready(fs, main_id, int(live_budget))
            try:
                if ready is None and fs["n"] * max(fs["dim"], 1) <= common.INLINE_BILAF_VALUES:
                    ready = common.bilaf_at_budget(fs, main_id, int(live_budget))
                if ready is not None:
                    preview, preview_budget = ready, int(live_budget)
                    preview_note = (f"Preview at B={preview_budget:,} — BiLAF's boundary stage took "
                                    f"{preview.timings.get('total', 0):.2f} s (not saved yet).")
                else:
                    rebudget_job = common.submit_bilaf_at_budget(fs, main_id, int(live_budget))
            except BilafError as exc:
                st.error(str(exc))

state = state_mod.resolve(main_row, preview=preview, preview_budget=preview_budget)
shown = state.shown
if state.error:
    st.error(state.error)

if budget_box:
    with budget_panel:
        with b2:
            if preview_note:
                st.caption(preview_note)
            elif rebudget_job:
                st.caption(f"BiLAF at B={int(live_budget):,} is running; the map shows the saved B={saved.budget:,} until it is ready.")
            else:
                st.caption(f"{cores.size} cores · {saved.budget - cores.size:,} boundary picks · seed {saved.seed}")
        with b3:
            if preview_note and st.button("Save this budget", key="map_save_budget", width="stretch",
                                          help=f"Saves “{state.preview_title}” as a new selection and shows it."):
                state_mod.save_budget(state, fs["id"])
                st.toast(f"Saved “{state.preview_title}”.")
                st.rerun()

if rebudget_job:
    common.show_job(rebudget_job, key="map_rebudget")

# ------------------------------------------------------------------ unsaved work: say where it is
if state.restored:
    st.info(f"Unsaved edits on **{state.parent_title}** were restored from an earlier visit: "
            f"+{len(state.edits['add'])} −{len(state.edits['remove'])}. Save or discard them below.")
for row, draft in state_mod.drafts_elsewhere(rows, main_id):
    st.warning(f"Unsaved work on **{common.selection_title(row)}**: {state_mod.draft_summary(draft)}. "
               "It is kept as a draft: choose that selection again to save or discard it.")

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

l1, l2, l4, l3 = st.columns([2, 3, 2, 2])
with l1:
    color_by = st.radio("Colour the pool by", color_options, key="map_color", horizontal=False)
with l2:
    st.markdown("**Layers**")
    show_cores = st.checkbox("pseudo-class centres (BiLAF's cores)", True, key="map_cores", disabled="core_indices" not in diag)
    show_picks = st.checkbox("picks (and hand edits)", True, key="map_picks", disabled=shown is None)
    show_noise = st.checkbox("removed as noise", False, key="map_noise", disabled="removed_as_noise" not in diag)
with l3:
    side_by_side = st.toggle("Side by side", value=False, key="map_side", disabled=not (shown is not None and len(rows) > 1),
                             help="The shown selection and another one on the same coordinates, one full-width map each, "
                                  "each with only its own layers.")
    side_id = None
    if side_by_side and shown is not None:
        cands = [i for i in ids if i != main_id]
        base_default = next((i for i in cands if by_id[i].get("method") != "bilaf"), cands[0] if cands else None)
        side_id = st.selectbox("Baseline", cands, index=cands.index(base_default) if base_default in cands else 0, key="map_side_id",
                               format_func=lambda i: common.selection_title(by_id[i]))
        if overlay_ids:
            st.caption("“Also draw” applies to the single map; side by side, each map shows only its own selection.")

# ------------------------------------------------------------------ inspection layers (coverage, gaps, duplicates, only-picked-by)
compared_ids = [side_id] if side_id else list(overlay_ids)
with l4:
    inspect_ctl = inspect_ui.controls(state, compared_ids, lambda i: common.selection_title(by_id[i]))
compared = {}
for oid in compared_ids:
    try:
        compared[oid] = (common.selection_title(by_id[oid]), common.load_selection(oid))
    except (BilafError, OSError, KeyError, ValueError):
        compared[oid] = (common.selection_title(by_id[oid]), None)
inspected = inspect_ui.build(fs, state, inspect_ctl, compared)
if inspected.background is not None:
    with l1:
        st.caption("The **coverage** layer colours the pool while it is on.")


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


def _selection_layers(selection) -> list[figs.PickLayer]:
    """A selection's own layers (a method's picks by role, keeping the method's counts), then its
    hand edits as layers of their own: "added by hand" and "removed by hand" (hollow)."""
    layers = []
    if selection is None:
        return layers
    d = selection.diagnostics
    method = selection.method
    label = palette.method_label(method)
    roles = np.asarray(export.pick_roles(selection))
    idx = selection.indices
    if method == "bilaf" and "is_core_pick" in d:
        boundary = roles == "boundary"
        score = np.asarray(d.get("boundary_score", np.full(idx.size, np.nan)), dtype=float)
        opp = np.asarray(d.get("opponent_cluster", np.full(idx.size, -1)))
        own = np.asarray(d.get("pick_cluster", np.full(idx.size, -1)))
        hover = [f"pseudo-class {c} → opponent {o}<br>boundary score {s:.3f}"
                 for c, o, s in zip(own[boundary], opp[boundary], score[boundary])]
        if show_picks:
            layers.append(figs.method_layer(method, idx[boundary], name=f"{label} boundary picks", hover=hover))
        if show_cores:
            layers.append(figs.core_layer(idx[roles == "core"], name=f"{label} pseudo-class centres"))
    elif show_picks:
        layers.append(figs.method_layer(method, idx[roles == "pick"], name=f"{label} picks"))
    if show_picks:
        added = idx[roles == "added"]
        removed = export.removed_by_hand(selection)
        if added.size:
            layers.append(figs.added_layer(added))
        if removed.size:
            layers.append(figs.removed_layer(removed))
    return layers


def _main_layers(with_overlays: bool) -> list[figs.PickLayer]:
    layers = []
    if shown is None:
        return layers
    if show_noise and "removed_as_noise" in diag:
        layers.append(figs.noise_layer(np.flatnonzero(np.asarray(diag["removed_as_noise"], dtype=bool))))
    layers += _selection_layers(shown)
    for oid in overlay_ids if with_overlays else []:
        other = common.load_selection(oid)
        layers.append(figs.method_layer(other.method, other.indices, name=common.selection_title(by_id[oid])))
    return layers + inspected.layers + inspected.highlight


ranges = figs.padded_ranges(coords)
background = _background()
uirev = f"{fs['id']}-{map_kind}"  # a new layout resets the zoom
events = []
if side_id:
    # one full-width map per selection, one above the other on the same coordinates, each with
    # only its own layers (the "Also draw" overlays stay on the single map)
    side = common.load_selection(side_id)
    height = figs.map_height(ranges, 1150, extra=110, lo=480, hi=760)
    for key, layers, title, bg in (("map_chart", _main_layers(False), state.title or None, inspected.background or background),
                                   ("map_chart_right", _selection_layers(side) + inspected.highlight,
                                    common.selection_title(by_id[side_id]), background)):
        fig = figs.map_figure(coords, layers, background=bg, title=title, height=height, uirevision=uirev, ranges=ranges)
        events.append(st.plotly_chart(fig, key=key, on_select="rerun", selection_mode=("points", "box", "lasso"),
                                      config=CHART_CONFIG, width="stretch"))
else:
    height = figs.map_height(ranges, 1150, extra=110, lo=480, hi=760)
    title = state.title if state.unsaved else None
    fig = figs.map_figure(coords, _main_layers(True), background=inspected.background or background, title=title, height=height,
                          uirevision=uirev, ranges=ranges)
    events.append(st.plotly_chart(fig, key="map_chart", on_select="rerun", selection_mode=("points", "box", "lasso"),
                                  config=CHART_CONFIG, width="stretch"))
if coords.shape[0] > figs.MAX_BACKGROUND:
    st.caption(f"{coords.shape[0]:,} images: the background shows a random {figs.MAX_BACKGROUND:,}; every pick is drawn.")
st.caption("Drag a box or lasso (toolbar, top right of the map) or click points to inspect them below; double-click clears.")
inspect_ui.below_map(fs, meta, state, inspect_ctl, inspected, compared)

# ------------------------------------------------------------------ inspected points: gallery, details, edits
picked_now = np.unique(np.concatenate([figs.selected_pool_indices(e) for e in events])) if events else np.zeros(0, np.int64)
if picked_now.size:
    st.subheader(f"{picked_now.size:,} point{'s' if picked_now.size != 1 else ''} selected on the map")
    pickers = {state.title: shown} if shown is not None else {}
    for oid in (overlay_ids if rows and not side_id else []) + ([side_id] if side_id else []):
        pickers[common.selection_title(by_id[oid])] = common.load_selection(oid)
    pick_sets = {name: set(sel.indices.tolist()) for name, sel in pickers.items() if sel is not None}
    details = state_mod.point_details(picked_now, state, pick_sets, meta)
    # the shown selection's picks first (in the gallery and the table): they are what the user is checking
    role_rank = {"core": 0, "boundary": 1, "pick": 1, "added": 2, "removed": 3, "": 4}
    picked_now = np.asarray(sorted(picked_now.tolist(), key=lambda i: (role_rank.get(details[int(i)]["role"], 4), i)), dtype=np.int64)
    gallery = picked_now[:GALLERY_MAX]
    thumbs = common.thumbnails(fs, tuple(int(i) for i in gallery))
    if thumbs is None:
        st.caption("No images behind these features (imported embeddings): details only.")
    per_row = 8
    for start in range(0, gallery.size, per_row):
        cols = st.columns(per_row)
        for col, i in zip(cols, gallery[start : start + per_row]):
            d = details[int(i)]
            with col:
                st.html(state_mod.badge_html(d["role"]))
                if thumbs is not None:
                    st.image(thumbs[int(i)], width="stretch")
                st.caption(d["caption"])
                inspect_ui.gallery_highlight_button(fs, int(i))  # thumbnail -> a ring on the map
    if picked_now.size > GALLERY_MAX:
        st.caption(f"Thumbnails of the first {GALLERY_MAX} of {picked_now.size:,}; all are in the table.")
    st.dataframe(state_mod.table_rows(details, picked_now), hide_index=True, width="stretch")

    if shown is not None:
        in_shown = state.picked(picked_now)
        n_add, n_remove = int((~in_shown).sum()), int(in_shown.sum())
        e1, e2, _ = st.columns([1, 1, 2])
        # only what can be done is offered: no "Add 0" / "Remove 0"
        if n_add and e1.button(f"Add {n_add:,} to the picks", key="map_add", width="stretch",
                               help=f"Adds them to “{state.title}” (unsaved until you save the edit)."):
            state_mod.add(state, picked_now[~in_shown])
            st.rerun()
        if n_remove and n_remove >= shown.budget:
            # an empty selection is not a selection: say so instead of offering it
            e2.caption(f"All {shown.budget:,} picks are among these points; removing them all would leave nothing. "
                       "Select fewer points to remove some.")
        elif n_remove and e2.button(f"Remove {n_remove:,} from the picks", key="map_remove", width="stretch",
                                    help=f"Removes them from “{state.title}” (unsaved until you save the edit)."):
            state_mod.remove(state, picked_now[in_shown])
            st.rerun()

if state.is_edited:
    added_n, removed_n = state.counts
    with st.container(border=True):
        st.markdown(
            f"**Edited selection** (unsaved): +{added_n} added, −{removed_n} removed → {shown.budget:,} picks. "
            f"Saving creates “{state.edit_name}”; "
            + ("the preview is saved first, as its parent; " if state.is_preview else "")
            + "the original stays as it is. Unsaved edits are kept as a draft if you leave or reload."
        )
        s1, s2, _ = st.columns([1, 1, 2])
        if s1.button("Save edited selection", type="primary", key="map_save_edit", width="stretch"):
            name = state.edit_name
            state_mod.save_edit(state, fs["id"])
            st.toast(f"Saved “{name}”.")
            st.rerun()
        if s2.button("Discard edits", key="map_discard_edit", width="stretch"):
            state_mod.discard(state)
            st.rerun()
inspect_ui.repair_panel(fs, meta, state)  # replacements for removed picks; re-run keeping the edits

# ------------------------------------------------------------------ export
if rows:
    st.subheader("Export")
    exportable = {}
    if shown is not None:
        exportable["shown"] = (shown, state.title)
    for oid in ids:
        if oid != main_id:
            exportable[oid] = (None, common.selection_title(by_id[oid]))
    choice = st.selectbox("Selection to export", list(exportable), key=state_mod.EXPORT_KEY, format_func=lambda k: exportable[k][1],
                          help="The first entry is what the map shows, unsaved preview or edits included.")
    sel = exportable[choice][0] if exportable[choice][0] is not None else common.load_selection(choice)
    stem = f"{fs['dataset']}-{sel.method}-B{sel.budget}".replace(" ", "_")
    x1, x2, _ = st.columns([1, 1, 2])
    x1.download_button("JSON (list of indices)", export.indices_json(sel.indices), file_name=f"{stem}.json",
                       mime="application/json", key="map_dl_json", width="stretch",
                       help="What the BiLAF / DeiT finetuning scripts read as --subset_ids.")
    x2.download_button("CSV (index, id, cluster, role, method, score)", export.selection_csv(sel, meta), file_name=f"{stem}.csv",
                       mime="text/csv", key="map_dl_csv", width="stretch")
