"""The Map's inspection: what the shown selection covers and misses, and its repair.

Everything here is computed by :mod:`bilaf_core.inspect` from the Map's one selection state
(:attr:`pages._selection_state.SelectionState.shown`: the saved record, its unsaved budget
preview or its unsaved hand edit) and the selections it is compared with ("Also draw" / side by
side) — never from a copy of the picks kept elsewhere:

* layers: **coverage** (the pool coloured by the distance to its nearest pick), **gaps** (the
  densest uncovered regions, numbered at their representatives), **near-duplicate picks** and
  **only picked by X** (picks one selection made and the compared one did not);
* the **overlap** matrices (shared picks, Jaccard) of the shown and compared selections;
* a **highlighted** sample (a thumbnail click rings it on the map);
* **repair**: replacements for a removed pick (nearest unpicked neighbours in its pseudo-class,
  the largest gap) and "Re-run within the budget, keeping my edits" (a background job whose
  result is saved as a child record of the shown one, and shown).

The inspection is memoised per selection state (feature set, record, distance space and the
shown picks), so toggling a layer or clicking a point does not recompute it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from bilaf_core import export, palette
from bilaf_core.errors import BilafError
from pages import _figures as figs
from pages import _selection_state as state_mod
from pages._store import DERIVED_ARROW, _memo_small, _stat_key, job_manager, load_features, thumbnails, workspace

#: widget keys of the inspection layers
COVERAGE_KEY, GAPS_KEY, DUPLICATES_KEY, ONLY_KEY, OTHER_KEY = (
    "map_insp_coverage", "map_insp_gaps", "map_insp_dups", "map_insp_only", "map_insp_other")
#: the sample a thumbnail click points at: (feature set id, pool index)
HIGHLIGHT_KEY = "map_highlight"
#: the running "re-run keeping my edits" job of this session: {"job", "parent"}
RERUN_KEY = "map_rerun_job"
REPAIR_FOR_KEY = "map_repair_for"

#: legend names (tests and the browser check read them)
COVERAGE_NAME = "pool by distance to nearest pick"
COVERAGE_BAR = "distance to nearest pick"
GAPS_NAME = "gaps"
DUPLICATES_NAME = "near-duplicate picks"
HIGHLIGHT_NAME = "highlighted"
ONLY_PREFIX = "only picked by "

N_GAPS = 10
N_REPLACEMENTS = 5
STRIP_MAX = 10


def space_for(method: str) -> str:
    """Where the method measures distances: Core-Set on the features as given, every other
    method (ActiveFT, BiLAF's cores, k-means, TypiClust, ProbCover, FDS, Fisher) on L2-normalised
    ones (random: either; normalised, as the CLI's default)."""
    return "raw" if method == "coreset" else "normalized"


def _digest(indices) -> str:
    return hashlib.sha1(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------- the inspection (memoised)


@dataclasses.dataclass
class Inspection:
    """The engine's inspection of the shown selection (``result`` is an InspectResult)."""

    result: Any
    space: str
    labels: np.ndarray | None  # the shown selection's pseudo-classes (None when it has none)
    key: tuple

    @property
    def entry(self) -> dict:
        return self.result.report["selections"][0]

    @property
    def coverage(self) -> np.ndarray:
        return self.result.coverage[0]

    @property
    def gaps(self) -> list[dict]:
        return self.entry["gaps"]

    @property
    def duplicates(self) -> list[list]:
        return self.entry["near_duplicates"]


def _prepared_pool(fs: dict, space: str):
    """The pool as the searches read it (normalised once when asked), shared by every selection."""
    from bilaf_core import inspect as insp

    path = Path(fs["path"]) / "features.npy"
    return _memo_small(("inspect_pool",) + _stat_key(path) + (space,), lambda: insp.prepared_pool(load_features(fs["path"]), space))


def inspection(fs: dict, state) -> Inspection:
    """The inspection of ``state.shown`` on `fs` (memoised per selection state)."""
    from bilaf_core import inspect as insp

    shown = state.shown
    if shown is None:
        raise BilafError("no selection is shown: choose one in the Selection box (or run one on the Select page)")
    if int(shown.n_pool) != int(fs["n"]):
        raise BilafError(f"the shown selection was made on a pool of {shown.n_pool:,} samples but this feature set has "
                         f"{fs['n']:,}: inspect it on the feature set it was selected from")
    space = space_for(shown.method)
    found = insp.labels_from_diagnostics(shown.diagnostics)
    labels = None
    if found is not None and np.asarray(found[1]).reshape(-1).shape[0] == int(fs["n"]):
        labels = np.asarray(found[1]).reshape(-1)
    key = ("inspect",) + _stat_key(Path(fs["path"]) / "features.npy") + (state.record_id, space, _digest(shown.indices))

    def run():
        pool, pool_space = _prepared_pool(fs, space)
        return insp.inspect_selections(pool, [shown.indices], names=["shown"], labels=[labels], space=pool_space, n_gaps=N_GAPS)

    return Inspection(result=_memo_small(key, run), space=space, labels=labels, key=key)


# --------------------------------------------------------------------------- controls


@dataclasses.dataclass
class Controls:
    coverage: bool = False
    gaps: bool = False
    duplicates: bool = False
    only: bool = False
    other_id: str | None = None  # the compared selection of "only picked by"

    @property
    def needs_inspection(self) -> bool:
        return self.coverage or self.gaps or self.duplicates


def controls(state, compared: list[str], title_of) -> Controls:
    """The Inspect layer checkboxes (drawn where the page calls this)."""
    off = state.shown is None
    st.markdown("**Inspect**")
    ctl = Controls()
    ctl.coverage = st.checkbox("coverage", False, key=COVERAGE_KEY, disabled=off,
                               help="Colours the pool by the distance of each sample to its nearest pick (dark = far from "
                                    "every pick). Replaces “Colour the pool by” while on.")
    ctl.gaps = st.checkbox("gaps (numbered)", False, key=GAPS_KEY, disabled=off,
                           help="The densest regions with no pick nearby, numbered largest first, with their images below the map.")
    ctl.duplicates = st.checkbox("near-duplicate picks", False, key=DUPLICATES_KEY, disabled=off,
                                 help="Picks that are (near-)identical to another pick: budget spent twice on the same image.")
    ctl.only = st.checkbox("only picked by …", False, key=ONLY_KEY, disabled=off or not compared,
                           help="Picks the shown selection made that the compared one did not, and vice versa. "
                                "Compare by choosing a selection in “Also draw” or side by side.")
    if ctl.only and compared:
        ctl.other_id = compared[0]
        if len(compared) > 1:
            ctl.other_id = st.selectbox("compared with", compared, key=OTHER_KEY, format_func=title_of)
    return ctl


# --------------------------------------------------------------------------- layers


@dataclasses.dataclass
class Built:
    """What the inspection adds to the map: a background (coverage), layers for the main map,
    the highlight layer (every map) and messages to show."""

    background: figs.Background | None = None
    layers: list = dataclasses.field(default_factory=list)
    highlight: list = dataclasses.field(default_factory=list)
    inspection: Inspection | None = None
    errors: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)


def highlighted(fs: dict) -> int | None:
    value = st.session_state.get(HIGHLIGHT_KEY)
    if not value or value[0] != fs["id"] or not 0 <= int(value[1]) < int(fs["n"]):
        return None
    return int(value[1])


def set_highlight(fs: dict, index: int) -> None:
    st.session_state[HIGHLIGHT_KEY] = (fs["id"], int(index))


def gap_layer(gaps: list[dict]) -> figs.PickLayer:
    return figs.PickLayer(
        name=GAPS_NAME, indices=np.asarray([g["representative"] for g in gaps], dtype=np.int64), color=palette.GAP_COLOR,
        symbol="circle-open", size=26, line_width=3.0, outline=palette.GAP_COLOR, labels=[str(g["rank"]) for g in gaps],
        hover=[f"gap {g['rank']}: {g['size']:,} samples closer to it than to their nearest pick<br>"
               f"distance to nearest pick {g['distance_to_nearest_pick']:.3f} · density {g['density']:.2f}" for g in gaps],
    )


def duplicate_layer(pairs: list[list]) -> figs.PickLayer:
    partner: dict[int, list[str]] = {}
    for i, j, d in pairs:
        partner.setdefault(int(i), []).append(f"#{int(j)} ({d:.3f})")
        partner.setdefault(int(j), []).append(f"#{int(i)} ({d:.3f})")
    idx = np.asarray(sorted(partner), dtype=np.int64)
    return figs.PickLayer(name=DUPLICATES_NAME, indices=idx, color=palette.DUPLICATE_COLOR, symbol="bowtie-open", size=20,
                          line_width=2.5, outline=palette.DUPLICATE_COLOR,
                          hover=["near-duplicate of " + ", ".join(partner[int(i)]) for i in idx])


def only_layers(shown, shown_title: str, other, other_title: str) -> list[figs.PickLayer]:
    """Two layers: picks only the shown selection made, and picks only the other one made."""
    a = np.setdiff1d(shown.indices, other.indices)
    b = np.setdiff1d(other.indices, shown.indices)
    return [
        figs.PickLayer(name=ONLY_PREFIX + shown_title, indices=a, color=palette.ONLY_SHOWN_COLOR, symbol="square-open", size=17,
                       line_width=2.5, outline=palette.ONLY_SHOWN_COLOR),
        figs.PickLayer(name=ONLY_PREFIX + other_title, indices=b, color=palette.ONLY_OTHER_COLOR, symbol="diamond-tall-open", size=19,
                       line_width=2.5, outline=palette.ONLY_OTHER_COLOR),
    ]


def highlight_layer(index: int) -> figs.PickLayer:
    return figs.PickLayer(name=HIGHLIGHT_NAME, indices=np.asarray([index], dtype=np.int64), color=palette.HIGHLIGHT_COLOR,
                          symbol="circle-open", size=32, line_width=4.0, outline=palette.HIGHLIGHT_COLOR)


def same_pool_problem(shown, other, other_title: str) -> str | None:
    """A message when `other` cannot be compared with the shown selection (another pool)."""
    if other is None:
        return f"“{other_title}” could not be read from the workspace; it is left out of the comparison."
    if shown is not None and int(other.n_pool) != int(shown.n_pool):
        return (f"“{other_title}” was made on a pool of {other.n_pool:,} samples and the shown selection on one of "
                f"{shown.n_pool:,}: only selections of the same feature set can be compared; it is left out.")
    return None


def build(fs: dict, state, ctl: Controls, compared: dict[str, tuple[str, Any]]) -> Built:
    """The inspection layers for the shown selection of `state` (`compared`: id -> (title, Selection))."""
    out = Built()
    shown = state.shown
    h = highlighted(fs)
    if h is not None:
        out.highlight.append(highlight_layer(h))
    if shown is None:
        return out
    if ctl.needs_inspection:
        try:
            with st.spinner("Inspecting the selection (coverage, gaps, near-duplicates)…"):
                out.inspection = inspection(fs, state)
        except BilafError as exc:
            out.errors.append(f"Cannot inspect the shown selection: {exc}")
    insp = out.inspection
    if insp is not None:
        if ctl.coverage:
            out.background = figs.Background("continuous", insp.coverage, None, COVERAGE_NAME, colorbar=COVERAGE_BAR)
        if ctl.gaps:
            if insp.gaps:
                out.layers.append(gap_layer(insp.gaps))
            else:
                out.notes.append("No gaps: every sample lies within the median distance of a pick.")
        if ctl.duplicates:
            if insp.duplicates:
                out.layers.append(duplicate_layer(insp.duplicates))
            else:
                out.notes.append(f"No near-duplicate picks (no two picks within "
                                 f"{insp.result.report['duplicate_threshold']:.3g} of each other).")
    if ctl.only and ctl.other_id in compared:
        title, other = compared[ctl.other_id]
        problem = same_pool_problem(shown, other, title)
        if problem:
            out.errors.append(problem)
        else:
            out.layers += only_layers(shown, state.title, other, title)
    return out


# --------------------------------------------------------------------------- under the map


def _strip(fs: dict, indices: list[int], captions: list[str], key: str) -> None:
    """Thumbnails (or, without images, captions) with a "Show on map" button each."""
    thumbs = thumbnails(fs, tuple(int(i) for i in indices))
    per_row = 5 if len(indices) <= 5 else 8
    for start in range(0, len(indices), per_row):
        cols = st.columns(per_row)
        for col, i, cap in zip(cols, indices[start : start + per_row], captions[start : start + per_row]):
            with col:
                if thumbs is not None:
                    st.image(thumbs[int(i)], width="stretch")
                st.caption(cap)
                if st.button("Show on map", key=f"map_hl_{key}_{int(i)}", width="stretch",
                             help=f"Rings sample #{int(i)} on the map (“{HIGHLIGHT_NAME}”)."):
                    set_highlight(fs, int(i))
                    st.rerun()


def _label_of(meta: dict, i: int) -> str:
    labels, names = meta.get("labels"), meta.get("class_names")
    if labels is None or labels[i] is None:
        return ""
    return str(names[int(labels[i])]) if names else str(labels[i])


def below_map(fs: dict, meta: dict, state, ctl: Controls, built: Built, compared: dict[str, tuple[str, Any]]) -> None:
    """Messages, the coverage summary, the gaps' thumbnail strip and the overlap matrix."""
    for message in built.errors:
        st.error(message)
    for message in built.notes:
        st.caption(message)
    if highlighted(fs) is not None:
        h = highlighted(fs)
        c1, c2 = st.columns([4, 1], vertical_alignment="center")
        c1.caption(f"Highlighted on the map: sample #{h}" + (f" ({_label_of(meta, h)})" if _label_of(meta, h) else "")
                   + " — the large rose ring.")
        if c2.button("Clear highlight", key="map_hl_clear", width="stretch"):
            st.session_state.pop(HIGHLIGHT_KEY, None)
            st.rerun()
    insp = built.inspection
    if insp is not None:
        cov = insp.entry["coverage"]
        where = "L2-normalised features" if insp.space == "normalized" else "the features as given"
        st.caption(f"Distance to the nearest pick (on {where}, as {state.shown.method} selects): mean {cov['mean']:.3f} · "
                   f"median {cov['p50']:.3f} · 95th percentile {cov['p95']:.3f} · max {cov['max']:.3f}. "
                   f"{len(insp.duplicates)} near-duplicate pair{'s' if len(insp.duplicates) != 1 else ''}; "
                   f"{len(insp.gaps)} gap{'s' if len(insp.gaps) != 1 else ''}.")
        if ctl.gaps and insp.gaps:
            gaps = insp.gaps[:STRIP_MAX]
            st.markdown("**Gaps** — the densest regions with no pick nearby, largest first (the numbers on the map)")
            _strip(fs, [g["representative"] for g in gaps],
                   [f"gap {g['rank']} · {g['size']:,} samples · #{g['representative']}"
                    + (f" · {_label_of(meta, g['representative'])}" if _label_of(meta, g["representative"]) else "") for g in gaps],
                   "gap")
            ranks = [g["rank"] for g in gaps]
            rank = st.selectbox("Examples of gap", ranks, key="map_gap_examples",
                                format_func=lambda r: f"gap {r} ({gaps[ranks.index(r)]['size']:,} samples)")
            ex = gaps[ranks.index(rank)]["examples"]
            _strip(fs, ex, [f"#{i}" + (f" · {_label_of(meta, i)}" if _label_of(meta, i) else "") for i in ex], f"gapex{rank}")
    overlap_matrix(state, compared)


def overlap_table(state, compared: dict[str, tuple[str, Any]]):
    """(names, shared, jaccard, problems) of the shown selection and the compared ones (same pool only)."""
    from bilaf_core.inspect import overlap_matrices

    shown = state.shown
    names, picks, problems = [state.title], [shown.indices], []
    for title, other in compared.values():
        problem = same_pool_problem(shown, other, title)
        if problem:
            problems.append(problem)
            continue
        names.append(title)
        picks.append(other.indices)
    shared, jaccard = overlap_matrices(picks)
    return names, shared, jaccard, problems


def overlap_matrix(state, compared: dict[str, tuple[str, Any]]) -> None:
    if state.shown is None or not compared:
        return
    import pandas as pd

    names, shared, jaccard, problems = overlap_table(state, compared)
    for p in problems:
        st.warning(p)
    if len(names) < 2:
        return
    st.markdown("**Overlap** of the shown selection and the compared ones")
    c1, c2 = st.columns(2)
    c1.caption("picks in both (the diagonal: each selection's size)")
    c1.dataframe(pd.DataFrame(shared, index=names, columns=names), width="stretch")
    c2.caption("Jaccard: shared / picks in either")
    c2.dataframe(pd.DataFrame(jaccard, index=names, columns=names).round(3), width="stretch")


# --------------------------------------------------------------------------- repair


def gallery_highlight_button(fs: dict, index: int) -> None:
    """Under a gallery thumbnail: ring this sample on the map."""
    if st.button("Show on map", key=f"map_hl_gallery_{int(index)}", width="stretch",
                 help=f"Rings sample #{int(index)} on the map (“{HIGHLIGHT_NAME}”)."):
        set_highlight(fs, int(index))
        st.rerun()


def replacements(fs: dict, state, removed_pick: int) -> dict:
    """The engine's replacements for `removed_pick` (a pick the pending edit removed): its nearest
    unpicked neighbours in its pseudo-class and the largest gap of the shown picks (memoised)."""
    from bilaf_core.inspect import suggest_replacements

    insp = inspection(fs, state)
    shown = state.shown
    others = [int(i) for i in export.removed_by_hand(shown).tolist() if int(i) != int(removed_pick)]
    excluded = shown.diagnostics.get("exclude_indices") if shown.diagnostics else None
    if excluded is not None:
        others += [int(i) for i in np.asarray(excluded).reshape(-1).tolist()]
    blocked = np.setdiff1d(np.unique(np.asarray(others, dtype=np.int64)), np.append(shown.indices, removed_pick))

    def run():
        res = insp.result
        return suggest_replacements(res.pool, np.append(shown.indices, int(removed_pick)), int(removed_pick), labels=insp.labels,
                                    n_neighbours=N_REPLACEMENTS, exclude=blocked if blocked.size else None, space=res.pool_space,
                                    coverage=(res.coverage[0], res.nearest[0]), density=res.density)

    return _memo_small(("repair",) + insp.key + (int(removed_pick), _digest(blocked)), run)


def rerun_plan(state) -> dict | None:
    """What "Re-run within the budget, keeping my edits" would run, or None when the shown
    selection has no hand edits.  Raises BilafError when it cannot run (say why)."""
    from bilaf_core.selection import get_method

    shown = state.shown
    if shown is None:
        return None
    roles = np.asarray(export.pick_roles(shown))
    removed = export.removed_by_hand(shown)
    added = int((roles == "added").sum())
    if removed.size == 0 and added == 0:
        return None
    budget = int((roles != "added").sum()) + int(removed.size)  # the method's own budget
    kept = np.asarray(shown.indices, dtype=np.int64)
    if kept.size > budget:
        raise BilafError(f"the edit keeps {kept.size:,} picks, more than the method's budget of {budget:,} (you added "
                         f"{added} and removed {removed.size}): remove {kept.size - budget:,} more, or save the edit as it is")
    try:
        spec = get_method(shown.method)
    except BilafError:
        raise BilafError(f"“{shown.method}” is not a method this version can run again; save the edit as it is") from None
    declared = {p.name for p in spec.params}
    options = {k: v for k, v in (state.base.params or {}).items()
               if k in declared and not (isinstance(v, str) and v.startswith("<") and v.endswith(" values>"))}
    diag = shown.diagnostics or {}
    if shown.method == "bilaf":
        options.pop("core_indices", None)
        cores = np.asarray(diag.get("core_indices", np.zeros(0)), dtype=np.int64).reshape(-1)
        if cores.size and not np.isin(cores, removed).any():
            # the same cores (hence pseudo-classes and rings): only picks near the edits change
            options["core_indices"] = cores.tolist()
            options.pop("core_budget", None)
    exclude = diag.get("exclude_indices")
    exclude = None if exclude is None else np.setdiff1d(np.asarray(exclude, dtype=np.int64).reshape(-1), kept)
    parent = state.preview_title if state.is_preview else state.parent_title
    return {
        "method": shown.method, "budget": budget, "kept": kept, "removed": removed, "exclude": exclude, "seed": shown.seed or 0,
        "options": options, "added": added,
        "name": f"{parent}{DERIVED_ARROW}re-run keeping edits: +{added} −{removed.size}",
    }


def start_rerun(fs: dict, state, plan: dict) -> str:
    """Submit the re-run (the preview, when shown, is saved first as its parent)."""
    from pages._work import submit_rerun_keeping_edits

    parent_id = state.record_id
    if state.is_preview:
        parent_id = workspace().save_selection(state.preview, fs["id"], name=state.preview_title)
    job_id = submit_rerun_keeping_edits(fs, parent_id=parent_id, name=plan["name"], method=plan["method"], budget=plan["budget"],
                                        kept=plan["kept"], removed=plan["removed"], exclude=plan["exclude"], seed=plan["seed"],
                                        options=plan["options"])
    st.session_state[RERUN_KEY] = {"job": job_id, "record": state.record_id, "fs": fs["id"]}
    return job_id


def follow_rerun(fs: dict) -> None:
    """At the top of the page: the re-run's progress; once it is saved, the Map switches to the
    child record (before the Selection box is drawn) and the edits it used are cleared."""
    from bilaf_core import jobs as jobs_mod
    from pages._jobs_ui import show_job

    info = st.session_state.get(RERUN_KEY)
    if not info or info.get("fs") != fs["id"]:
        return
    record = job_manager().get(info["job"])
    if record is None:
        st.session_state.pop(RERUN_KEY, None)
        return
    if record["status"] in jobs_mod.ACTIVE:
        show_job(info["job"], key="map_rerun")
        return
    st.session_state.pop(RERUN_KEY, None)
    new_id = (record.get("result") or {}).get("selection_id")
    if record["status"] == jobs_mod.DONE and new_id:
        state_mod.forget(info["record"])
        state_mod.switch_to(new_id)
        st.toast(f"Saved “{record.get('title')}” and switched the Map to it.")
    else:
        show_job(info["job"], key="map_rerun")


def repair_panel(fs: dict, meta: dict, state) -> None:
    """Replacements for the picks the pending edit removed, and the re-run keeping the edits."""
    shown = state.shown
    if shown is None or state.error:  # an edit the state refused (the page says why): nothing to repair from
        return
    removed_now = [int(i) for i in state.edits.get("remove", [])]
    try:
        plan = rerun_plan(state)
    except BilafError as exc:
        plan, plan_error = None, str(exc)
    else:
        plan_error = None
    if not removed_now and plan is None and plan_error is None:
        return
    with st.container(border=True):
        st.markdown("**Repair**")
        if removed_now:
            target = removed_now[-1]
            if len(removed_now) > 1:
                target = st.selectbox("Replacements for", removed_now[::-1], key=REPAIR_FOR_KEY, format_func=lambda i: f"#{i}")
            try:
                with st.spinner("Finding replacements…"):
                    sugg = replacements(fs, state, target)
            except BilafError as exc:
                st.error(f"No replacements for #{target}: {exc}")
                sugg = None
            if sugg is not None:
                where = "in its pseudo-class" if inspection(fs, state).labels is not None else "(this selection has no pseudo-classes)"
                near = [n["index"] for n in sugg["neighbours"]]
                st.caption(f"Removed #{target}: its nearest unpicked samples {where}, and the largest gap of the picks left.")
                if not near:
                    st.caption("No unpicked sample is left in its pseudo-class.")
                thumbs = thumbnails(fs, tuple(near + ([sugg["gap"]["representative"]] if sugg["gap"] else [])))
                cols = st.columns(N_REPLACEMENTS + 1)
                for col, n in zip(cols, sugg["neighbours"]):
                    i = int(n["index"])
                    with col:
                        if thumbs is not None:
                            st.image(thumbs[i], width="stretch")
                        st.caption(f"#{i} · d={n['distance']:.3f}" + (f" · {_label_of(meta, i)}" if _label_of(meta, i) else ""))
                        if st.button(f"Add #{i}", key=f"map_repl_{i}", width="stretch",
                                     help=f"Adds #{i} to “{state.title}” in place of #{target} (unsaved until you save)."):
                            state_mod.add(state, [i])
                            st.rerun()
                gap = sugg["gap"]
                if gap is not None:
                    g = int(gap["representative"])
                    with cols[-1]:
                        if thumbs is not None:
                            st.image(thumbs[g], width="stretch")
                        st.caption(f"largest gap · {gap['size']:,} samples · #{g}")
                        if st.button(f"Add gap #{g}", key="map_repl_gap", width="stretch",
                                     help="Adds the representative of the largest gap the picks leave."):
                            state_mod.add(state, [g])
                            st.rerun()
        if plan_error:
            st.warning(f"Re-run keeping the edits: {plan_error}")
        elif plan is not None:
            busy = bool(st.session_state.get(RERUN_KEY))
            if st.button("Re-run within the budget, keeping my edits", key="map_rerun_edits", disabled=busy,
                         help=f"Runs {plan['method']} again at B={plan['budget']:,} with your {plan['kept'].size:,} picks kept "
                              f"(included) and the {plan['removed'].size} you removed excluded; saved as “{plan['name']}”."):
                try:
                    start_rerun(fs, state, plan)
                except BilafError as exc:
                    st.error(str(exc))
                else:
                    st.rerun()
            st.caption(f"Runs {plan['method']} again at B={plan['budget']:,}: your {plan['kept'].size:,} picks stay, the "
                       f"{plan['removed'].size} removed are never picked, the rest is filled by the method. Saved as a child "
                       "record of this one, and shown.")
