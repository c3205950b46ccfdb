"""The one module every page imports first: it leaves Streamlit's legacy pages/ mode (below),
turns on BiLAF's kept plan for the Map's budget box, and re-exports the shared helpers, which live
in focused modules:

* :mod:`pages._style`     — chips, badges, CSS, number and time formatting
* :mod:`pages._catalog`   — datasets, backbones, finetuning recipes as the pages name them
* :mod:`pages._store`     — workspace, job manager, feature sets and selections, memoised loaders
* :mod:`pages._jobs_ui`   — live job panels (one ETA, Cancel, outcomes)
* :mod:`pages._pickers`   — the pool picker and method-parameter widgets
* :mod:`pages._work`      — background work started from the pages (map, selections, extraction…)
* :mod:`pages._selection_state` — the Map's one selection state (shown / preview / unsaved edit)

UI only: every computation is a call into ``bilaf_core``.
"""

from __future__ import annotations

import streamlit as st

from bilaf_core.selection.bilaf import keep_plans

# the Map's budget box re-runs BiLAF on the same cores: keep its budget-independent work
keep_plans()

# Streamlit runs a `pages/` folder beside the main script in its legacy multipage mode until the
# main script calls st.navigation — so the very first visit to a fresh server straight at /map
# would run the page alone, without app.py, and list every file of pages/ as a page.  The first
# import of this module (by that page) leaves that mode and reruns through app.py, which resolves
# the same URL with st.navigation; the mode is a server-wide flag, so once is enough.
from streamlit.runtime.pages_manager import PagesManager as _PagesManager  # noqa: E402


def run_through_app() -> None:
    """Rerun through app.py when Streamlit ran this page on its own (legacy pages/ mode)."""
    if _PagesManager.uses_pages_directory:
        _PagesManager.uses_pages_directory = False
        st.rerun()


run_through_app()

# re-exported for the pages (``common.x``); new code may import the focused modules directly
from pages._catalog import (backbone_bundled, backbone_names, backbone_summary, backbone_title,  # noqa: E402,F401
                            dataset_names, dataset_needs_root, dataset_summary, dataset_title, finetune_presets, split_size)
from pages._jobs_ui import (GROUP_ABOVE, POLL_SECONDS, active_jobs, job_progress_line, latest_per_work, page_opened_at,  # noqa: E402,F401
                            show_job, show_jobs)
from pages._pickers import editable_params, feature_set_picker, param_widget  # noqa: E402,F401
from pages._store import (describe_feature_set, evaluations, feature_set_bytes, feature_set_meta,  # noqa: E402,F401
                          feature_sets, job_manager, load_features, load_map, load_quick_map, load_selection, pool_feature_sets,
                          selection_rows, selection_title, selections, thumbnails, workspace)
from pages._style import (ASSETS, ROOT, asset_text, fmt_duration, fmt_size, fmt_time, fmt_time_of_day,  # noqa: E402,F401
                          method_chip, method_chip_css, param_title)
from pages._work import (INLINE_BILAF_VALUES, bilaf_at_budget, bilaf_at_budget_ready, ensure_projection,  # noqa: E402,F401
                         extraction_done, find_default_selection, find_identical_selection, import_embeddings,
                         projection_job_key, submit_bilaf_at_budget, submit_evaluation, submit_extraction,
                         submit_selection, submit_sweep_point)
