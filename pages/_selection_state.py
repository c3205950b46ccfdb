"""The Map's one selection state: what every control of the Map reads.

The *shown* selection is the saved record chosen in the Selection box, or its unsaved budget
preview (BiLAF re-run on the same cores at another budget), or an unsaved hand edit of either.
The map's layers, the gallery's badges, the table's "role" and "picked by" columns, the Add /
Remove counts and Export all read :attr:`SelectionState.shown` — never the saved record behind
it — so what is drawn, listed and exported is the same thing.

Saving a budget or an edit stores a new record named after its parent ("BiLAF · B=100 → B=200",
"BiLAF · B=100 → edited: +96 −9") and switches every control to it on the next run
(:func:`switch_to`).  Unsaved work (a preview budget, pending edits) is kept as a *draft* file in
the workspace, per saved record, so a reload or another tab restores it instead of losing it; the
page says so whenever a draft exists.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from bilaf_core import export, palette
from bilaf_core.errors import BilafError
from pages._store import DERIVED_ARROW, load_selection, selection_title, workspace

#: session keys of the Map's controls that a switch to another record must reset
MAIN_KEY = "map_main"
PENDING_KEY = "map_pending_main"
GENERATION_KEY = "map_main_generation"
EXPORT_KEY = "map_export_choice"

#: roles of a pool index relative to the shown selection (gallery badge, table column)
ROLES = ("core", "boundary", "pick", "added", "removed")
ROLE_COLORS = {
    "core": palette.CORE_COLOR,
    "boundary": palette.method_color("bilaf"),
    "pick": "#3b4a5a",
    "added": palette.ADDED_COLOR,
    "removed": "#8a8a8a",
}


def budget_key(record_id: str) -> str:
    return f"map_budget_{record_id}"


def edits_key(record_id: str) -> str:
    return f"map_edits_{record_id}"


# --------------------------------------------------------------------------- drafts (unsaved work)


def _draft_path(record_id: str) -> Path:
    return Path(workspace().root) / "drafts" / f"map-{record_id}.json"


def load_draft(record_id: str) -> dict | None:
    """The unsaved work on a record ({"budget", "add", "remove"}), or None."""
    try:
        draft = json.loads(_draft_path(record_id).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(draft, dict):
        return None
    return {"budget": draft.get("budget"), "add": [int(i) for i in draft.get("add") or []],
            "remove": [int(i) for i in draft.get("remove") or []]}


def _write_draft(record_id: str, budget: int | None, edits: dict) -> None:
    from bilaf_core.atomic import atomic_write_json

    path = _draft_path(record_id)
    if budget is None and not edits["add"] and not edits["remove"]:
        path.unlink(missing_ok=True)
        return
    draft = {"budget": budget, "add": list(map(int, edits["add"])), "remove": list(map(int, edits["remove"]))}
    if load_draft(record_id) != draft:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, draft)


def drafts_elsewhere(rows: list[dict], current_id: str | None) -> list[tuple[dict, dict]]:
    """(row, draft) of the other records of this pool that have unsaved work."""
    out = []
    for row in rows:
        if row["id"] != current_id:
            draft = load_draft(row["id"])
            if draft is not None:
                out.append((row, draft))
    return out


def draft_summary(draft: dict) -> str:
    bits = []
    if draft.get("budget") is not None:
        bits.append(f"budget preview B={int(draft['budget']):,}")
    if draft.get("add") or draft.get("remove"):
        bits.append(f"edits +{len(draft.get('add') or [])} −{len(draft.get('remove') or [])}")
    return " and ".join(bits)


# --------------------------------------------------------------------------- the state


@dataclasses.dataclass
class SelectionState:
    """The record chosen, its unsaved preview and edit, and the one selection they make."""

    record_id: str | None = None
    record: dict | None = None
    saved: Any = None  # the saved Selection
    preview_budget: int | None = None  # set while an unsaved budget preview is shown
    preview: Any = None  # the saved selection re-run at preview_budget
    edits: dict = dataclasses.field(default_factory=lambda: {"add": [], "remove": []})
    shown: Any = None  # what every control reads
    restored: bool = False  # the unsaved work came from a draft (an earlier visit or another tab)
    error: str | None = None

    @property
    def base(self):
        """What the edits apply to: the preview when there is one, else the saved record."""
        return self.preview if self.preview is not None else self.saved

    @property
    def is_preview(self) -> bool:
        return self.preview is not None

    @property
    def is_edited(self) -> bool:
        return self.shown is not None and self.shown is not self.base

    @property
    def unsaved(self) -> bool:
        return self.is_preview or self.is_edited

    @property
    def parent_title(self) -> str:
        return selection_title(self.record) if self.record else ""

    @property
    def counts(self) -> tuple[int, int]:
        """(added, removed) by the pending edit."""
        if not self.is_edited:
            return 0, 0
        params = self.shown.params or {}
        return int(params.get("added", 0)), int(params.get("removed", 0))

    @property
    def preview_title(self) -> str:
        return f"{self.parent_title}{DERIVED_ARROW}B={self.preview_budget}"

    @property
    def edit_name(self) -> str:
        """The name an edit is saved under: its parent's title, then what the edit did."""
        added, removed = self.counts
        parent = self.preview_title if self.is_preview else self.parent_title
        return f"{parent}{DERIVED_ARROW}edited: +{added} −{removed}"

    @property
    def title(self) -> str:
        """What the shown selection is, for the map's title, Export and "picked by"."""
        if self.is_edited:
            return f"{self.edit_name} (unsaved)"
        if self.is_preview:
            return f"{self.preview_title} (preview, unsaved)"
        return self.parent_title

    # ---------------------------------------------------------------- per point

    def roles(self) -> dict[int, str]:
        """Pool index -> role (core / boundary / pick / added / removed) for every index the
        shown selection picks or a hand edit removed."""
        if self.shown is None:
            return {}
        out = {int(i): r for i, r in zip(self.shown.indices.tolist(), export.pick_roles(self.shown))}
        for i in export.removed_by_hand(self.shown).tolist():
            out.setdefault(int(i), "removed")
        return out

    def picked(self, indices) -> np.ndarray:
        """Mask over `indices`: picked by the shown selection."""
        if self.shown is None:
            return np.zeros(len(indices), dtype=bool)
        return np.isin(np.asarray(indices, dtype=np.int64), self.shown.indices)


def main_key() -> str:
    """The Selection box's widget key.  A switch made by the page (after a save) gives the box a
    new key rather than writing the old one: a browser may still send the old box's value with
    its next event (seen in Chromium: the map's selection event re-sent after the save), which
    would put the old record back on screen."""
    generation = int(st.session_state.get(GENERATION_KEY, 0))
    return MAIN_KEY if generation == 0 else f"{MAIN_KEY}_{generation}"


def switch_to(record_id: str) -> None:
    """Make `record_id` the shown record on the next run (every control follows)."""
    st.session_state[GENERATION_KEY] = int(st.session_state.get(GENERATION_KEY, 0)) + 1
    st.session_state[PENDING_KEY] = record_id
    st.session_state.pop(SWITCH_TRIES_KEY, None)


#: runs in which a switch is written into the Selection box until the browser sends it back
SWITCH_RUNS = 4
SWITCH_TRIES_KEY = "map_pending_tries"


def pending_record(ids: list[str]) -> str | None:
    """Before the Selection box is drawn: the record a :func:`switch_to` asked for (None if
    none), written into the box's state, with Export reset to the shown selection.

    The switch is written again on each run until the browser sends the new value back (at
    most SWITCH_RUNS runs): in Chromium the run right after a save can be superseded by the
    browser's next event, which carries the box's old value and put the old record back."""
    pending = st.session_state.get(PENDING_KEY)
    if pending is None:
        return None
    tries = int(st.session_state.get(SWITCH_TRIES_KEY, 0))
    if pending not in ids or tries >= SWITCH_RUNS or (tries > 0 and st.session_state.get(main_key()) == pending):
        st.session_state.pop(PENDING_KEY, None)
        st.session_state.pop(SWITCH_TRIES_KEY, None)
        return None
    st.session_state[SWITCH_TRIES_KEY] = tries + 1
    st.session_state[main_key()] = pending
    if tries == 0:
        st.session_state.pop(EXPORT_KEY, None)
    return pending


def session_edits(record_id: str) -> tuple[dict, bool]:
    """The pending edits of a record in this session, restored from its draft the first time
    (the bool says whether it was restored)."""
    key = edits_key(record_id)
    restored_key = f"map_restored_{record_id}"
    if key not in st.session_state:
        draft = load_draft(record_id)
        edits = {"add": list(draft["add"]), "remove": list(draft["remove"])} if draft else {"add": [], "remove": []}
        st.session_state[key] = edits
        # said on every run until the restored edits are saved or discarded, not just once
        st.session_state[restored_key] = bool(edits["add"] or edits["remove"])
    edits = st.session_state[key]
    return edits, bool(st.session_state.get(restored_key)) and bool(edits["add"] or edits["remove"])


def draft_budget(record_id: str) -> int | None:
    draft = load_draft(record_id)
    return None if not draft or draft.get("budget") is None else int(draft["budget"])


def resolve(record: dict | None, *, preview=None, preview_budget: int | None = None) -> SelectionState:
    """The state for the chosen record, its budget preview (already computed, or None) and this
    session's pending edits, which are applied to the preview when there is one."""
    if record is None:
        return SelectionState()
    saved = load_selection(record["id"])
    state = SelectionState(record_id=record["id"], record=record, saved=saved,
                           preview_budget=int(preview_budget) if preview is not None else None, preview=preview)
    state.edits, state.restored = session_edits(record["id"])
    state.shown = state.base
    if state.edits["add"] or state.edits["remove"]:
        try:
            state.shown = export.edit_selection(state.base, add=state.edits["add"], remove=state.edits["remove"],
                                                parent_id=record["id"])
        except BilafError as exc:
            state.error = str(exc)
            state.shown = state.base
    _write_draft(record["id"], state.preview_budget, state.edits)
    return state


# --------------------------------------------------------------------------- changes


def add(state: SelectionState, indices) -> None:
    """Add pool indices to the shown selection (pending until saved)."""
    add_ = [int(i) for i in indices]
    edits = state.edits
    base = set(state.base.indices.tolist())
    edits["remove"] = [i for i in edits["remove"] if i not in set(add_)]
    have = set(edits["add"])
    edits["add"] = edits["add"] + [i for i in add_ if i not in base and i not in have]
    _write_draft(state.record_id, state.preview_budget, edits)


def remove(state: SelectionState, indices) -> None:
    """Remove pool indices from the shown selection (pending until saved)."""
    rem = set(int(i) for i in indices)
    edits = state.edits
    base = set(state.base.indices.tolist())
    edits["add"] = [i for i in edits["add"] if i not in rem]
    have = set(edits["remove"])
    edits["remove"] = edits["remove"] + [i for i in sorted(rem) if i in base and i not in have]
    _write_draft(state.record_id, state.preview_budget, edits)


def discard(state: SelectionState) -> None:
    """Drop the pending edits (and the draft's edits; a preview budget stays)."""
    st.session_state[edits_key(state.record_id)] = {"add": [], "remove": []}
    st.session_state.pop(f"map_restored_{state.record_id}", None)
    _write_draft(state.record_id, state.preview_budget, {"add": [], "remove": []})


def discard_preview(state: SelectionState) -> None:
    st.session_state.pop(budget_key(state.record_id), None)
    _write_draft(state.record_id, None, state.edits)


def _clear(record_id: str) -> None:
    st.session_state.pop(f"map_restored_{record_id}", None)
    st.session_state.pop(edits_key(record_id), None)
    st.session_state.pop(budget_key(record_id), None)
    _draft_path(record_id).unlink(missing_ok=True)


def forget(record_id: str) -> None:
    """Drop a record's unsaved work (edits, preview budget, draft): it was used by a derived
    record, e.g. the Map's "re-run keeping my edits"."""
    _clear(record_id)


def save_budget(state: SelectionState, feature_set_id: str) -> str:
    """Save the preview as a new record named after its parent; pending edits move to it.
    Switches every control to the new record."""
    ws = workspace()
    new_id = ws.save_selection(state.preview, feature_set_id, name=state.preview_title)
    edits = {"add": list(state.edits["add"]), "remove": list(state.edits["remove"])}
    _clear(state.record_id)
    st.session_state[edits_key(new_id)] = edits
    _write_draft(new_id, None, edits)
    switch_to(new_id)
    return new_id


def save_edit(state: SelectionState, feature_set_id: str) -> str:
    """Save the pending edit (of the preview: that is saved first, as its parent) as a new
    record named after its parent.  Switches every control to the new record."""
    ws = workspace()
    name = state.edit_name
    parent_id = state.record_id
    if state.is_preview:
        parent_id = ws.save_selection(state.preview, feature_set_id, name=state.preview_title)
    shown = export.edit_selection(state.base, add=state.edits["add"], remove=state.edits["remove"], parent_id=parent_id)
    new_id = ws.save_selection(shown, feature_set_id, name=name, parent_id=parent_id)
    _clear(state.record_id)
    switch_to(new_id)
    return new_id


# --------------------------------------------------------------------------- inspected points


def _cell(value):
    return "—" if value is None else value


def point_details(indices, state: SelectionState, pick_sets: dict[str, set], meta: dict) -> dict[int, dict]:
    """Per inspected pool index: its role relative to the shown selection (the gallery badge), a
    short caption and a table row (id, label, role, pseudo-class, ring level, boundary score, the
    selections that picked it).  No raw None: a missing value is "—", a column nothing has is
    left out (:func:`table_rows`)."""
    shown = state.shown
    ids = meta.get("ids")
    labels = meta.get("labels")
    class_names = meta.get("class_names")
    diag = shown.diagnostics if shown is not None else {}
    cluster = np.asarray(diag["cluster"]) if "cluster" in diag else None
    ring = np.asarray(diag["ring_level"]) if "ring_level" in diag else None
    noise = np.asarray(diag["removed_as_noise"], dtype=bool) if "removed_as_noise" in diag else None
    score_of = {}
    if shown is not None and "boundary_score" in diag:
        scores = np.asarray(diag["boundary_score"], dtype=float)
        if scores.size == shown.indices.size:
            score_of = dict(zip(shown.indices.tolist(), scores.tolist()))
    roles = state.roles()
    out = {}
    for i in (int(x) for x in indices):
        label = ""
        if labels is not None and labels[i] is not None:
            label = class_names[int(labels[i])] if class_names else str(labels[i])
        by = [name for name, s in pick_sets.items() if i in s]
        score = score_of.get(i)
        score = None if score is None or score != score else round(float(score), 4)
        role = roles.get(i, "")
        row = {
            "index": i,
            "id": ids[i] if ids else None,
            "label": label or None,
            "role": role or "not picked",
            "pseudo-class": int(cluster[i]) if cluster is not None else None,
            "ring level": int(ring[i]) if ring is not None else None,
            "removed as noise": ("yes" if noise[i] else "no") if noise is not None else None,
            "boundary score": score,
            "picked by": ", ".join(by) if by else "—",
        }
        bits = [f"#{i}"]
        if label:
            bits.append(str(label))
        if cluster is not None:
            bits.append(f"c{int(cluster[i])}")
        if ring is not None:
            bits.append(f"ring {int(ring[i])}")
        if score is not None:
            bits.append(f"s={score:.2f}")
        out[i] = {"row": row, "caption": " · ".join(bits), "role": role}
    return out


def table_rows(details: dict[int, dict], order) -> list[dict]:
    """The table of inspected points: columns no point has a value for are left out, and a
    missing value in the others reads "—" (numbers then shown as text in that column only)."""
    rows = [dict(details[int(i)]["row"]) for i in order]
    if not rows:
        return rows
    keep = [k for k in rows[0] if any(r[k] is not None for r in rows)]
    out = []
    for r in rows:
        out.append({k: r[k] for k in keep})
    for k in keep:
        if any(r[k] is None for r in out):
            for r in out:
                r[k] = "—" if r[k] is None else str(r[k])
    return out


def badge_html(role: str) -> str:
    """A small coloured badge for a gallery thumbnail: core, boundary, pick, added, removed."""
    import html

    if not role:
        return "<span style='font-size:0.75em;color:#888'>not picked</span>"
    color = ROLE_COLORS.get(role, "#3b4a5a")
    style = (f"border:2px solid {color};color:{color};background:white" if role == "removed"
             else f"background:{color};color:white")
    return (f"<span data-role='{html.escape(role)}' style='display:inline-block;padding:0 7px;border-radius:9px;"
            f"font-size:0.75em;font-weight:700;{style}'>{html.escape(role)}</span>")
