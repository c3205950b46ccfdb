"""Look and text of the pages: asset texts, method chips and their CSS, role badges, number
and time formatting.  No workspace access here."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import streamlit as st

from bilaf_core import jobs as jobs_mod
from bilaf_core import palette


ROOT = Path(__file__).resolve().parent.parent


ASSETS = ROOT / "assets"


@st.cache_data(show_spinner=False)
def asset_text(relative: str) -> str:
    path = ASSETS / relative
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def param_title(param) -> str:
    return param.name.replace("_", " ")


def method_chip(method: str, label: str | None = None) -> str:
    """An inline coloured badge (HTML) for a method, in its palette colour."""
    color = palette.method_color(method)
    text = html.escape(label or palette.method_label(method))
    return (
        f"<span style='display:inline-block;padding:1px 8px;border-radius:10px;background:{color};"
        f"color:white;font-size:0.85em;font-weight:600'>{text}</span>"
    )


def method_chip_css() -> str:
    """A <style> that gives every method's chips in multiselects (methods, or selections whose
    title starts with the method's label) the method's colour, as on the map and in the plots.
    Longer labels come later so "K-Means (multi-batch)" wins over "K-Means"."""
    rules = []
    for method in sorted(palette.METHOD_LABELS, key=lambda m: len(palette.method_label(m))):
        label = palette.method_label(method).replace('"', "")
        rules.append(f'[data-testid="stMultiSelect"] span[data-tag][aria-label^="{label}"]'
                     f"{{background-color:{palette.method_color(method)};color:white}}")
    return "<style>" + "\n".join(rules) + "</style>"


def fmt_size(n_bytes: float | None) -> str:
    if n_bytes is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.1f} GB"


def _local_datetime(ts: Any):
    """An ISO string or epoch seconds as a datetime in local time (ValueError when neither)."""
    import datetime as _dt

    when = _dt.datetime.fromtimestamp(ts) if isinstance(ts, (int, float)) else _dt.datetime.fromisoformat(str(ts))
    return when.astimezone() if when.tzinfo is not None else when


def fmt_time(ts: Any) -> str:
    """ISO string or epoch seconds -> 'YYYY-MM-DD HH:MM' in local time."""
    if ts is None or ts == "":
        return "—"
    try:
        return _local_datetime(ts).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(ts)[:16].replace("T", " ")


def fmt_time_of_day(ts: Any) -> str:
    """'HH:MM:SS' (local time) of an ISO timestamp or epoch seconds."""
    if ts is None or ts == "":
        return "—"
    try:
        return _local_datetime(ts).strftime("%H:%M:%S")
    except ValueError:
        return str(ts)[11:19]


fmt_duration = jobs_mod.format_duration
