"""Input widgets shared by the pages: the feature-set (pool) picker and the method-parameter
widgets introspected from the selection registry."""

from __future__ import annotations

from typing import Any

import streamlit as st

from pages._jobs_ui import show_jobs
from pages._store import job_manager, pool_feature_sets
from pages._style import param_title


def feature_set_picker(*, key: str) -> dict | None:
    """Select a pool (shared across pages): only feature sets that are pools are offered, never a
    test split an evaluation extracted.  An empty state says what to do when there is none, or
    that an extraction is running."""
    sets = pool_feature_sets()
    if not sets:
        running = job_manager().list(kind="extract", active_only=True)
        if running:
            # another tab (or this one, before a reload) started an extraction: say so, with its progress
            st.info("Features are being extracted. The pool appears here as soon as they are ready; "
                    "the map and a first BiLAF selection follow on their own.")
            show_jobs(running, key=f"{key}_extract", noun="extractions")
            return None
        st.info(
            "No feature set yet. Go to **Data & model**, pick a dataset (Fashion-MNIST works offline) and press "
            "**Extract features** — or upload your own embeddings there."
        )
        st.page_link("pages/data.py", label="Data & model", icon=":material/dataset:")
        return None
    ids = [s["id"] for s in sets]
    current = st.session_state.get("feature_set_id")
    index = ids.index(current) if current in ids else 0
    chosen = st.selectbox("Feature set", ids, index=index, key=key, format_func=lambda i: sets[ids.index(i)]["label"])
    st.session_state["feature_set_id"] = chosen
    return sets[ids.index(chosen)]


def param_widget(method: str, param, *, key: str, value: Any = None, label: str | None = None):
    """One input for a declared method parameter, with its help text (from the registry) as a
    caption and the paper's default as the initial value.  Returns the chosen value."""
    title = label or param_title(param)
    k = f"{key}_{method}_{param.name}"
    default = param.default if value is None else value
    if param.choices is not None:
        choices = list(param.choices)
        out = st.selectbox(title, choices, index=choices.index(default) if default in choices else 0, key=k, help=param.help)
    elif param.kind == "bool":
        out = st.checkbox(title, value=bool(default), key=k, help=param.help)
    elif param.kind == "int":
        kwargs = {}
        if param.minimum is not None:
            kwargs["min_value"] = int(param.minimum) + (1 if param.exclusive_minimum else 0)
        if param.maximum is not None:
            kwargs["max_value"] = int(param.maximum)
        out = st.number_input(title, value=None if default is None else int(default), step=1, key=k, help=param.help,
                              placeholder="automatic", **kwargs)
    elif param.kind == "float":
        kwargs = {}
        if param.minimum is not None:
            kwargs["min_value"] = float(param.minimum)
        if param.maximum is not None:
            kwargs["max_value"] = float(param.maximum)
        out = st.number_input(title, value=None if default is None else float(default), key=k, help=param.help,
                              format="%.4g", placeholder="automatic", **kwargs)
    else:  # str without choices
        out = st.text_input(title, value="" if default is None else str(default), key=k, help=param.help) or None
    st.caption(param.help)
    return out


def editable_params(spec, *, skip: tuple[str, ...] = ()) -> list:
    """Parameters the app exposes as widgets (indices/arrays come from other screens)."""
    return [p for p in spec.params if p.kind not in ("indices", "array") and p.name not in skip]
