"""Plotly figures for the app (no Streamlit here, so benches and tests can build them too).

Every figure takes its colours and markers from :mod:`bilaf_core.palette`, so a method looks the
same on the map, in the Learn walkthrough and in the accuracy plots.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from bilaf_core import palette

#: background points drawn at most; above this the pool is sampled (every pick is still drawn)
MAX_BACKGROUND = 60_000
FONT = dict(family="Inter, Segoe UI, Helvetica, Arial, sans-serif", size=13)


@dataclasses.dataclass
class PickLayer:
    """Points drawn on top of the pool: a method's picks, the centres, the noise…"""

    name: str  # legend entry
    indices: np.ndarray  # pool indices
    color: str
    symbol: str = "circle"
    size: float = 9.0
    hover: Sequence[str] | None = None  # one line per point, appended to the hover box
    outline: str = palette.PICK_OUTLINE
    opacity: float = 1.0
    visible: bool = True
    #: a short label per point (e.g. a gap's number), drawn as a badge beside it: a plotly
    #: annotation, which lies above the WebGL canvas (SVG trace text would lie under the pool)
    labels: Sequence[str] | None = None
    line_width: float | None = None  # marker outline width (default: 2 for open symbols, else 0.8)


def method_layer(method: str, indices, *, name: str | None = None, hover=None, size: float = 9.0) -> PickLayer:
    return PickLayer(
        name=name or f"{palette.method_label(method)} picks",
        indices=np.asarray(indices, dtype=np.int64),
        color=palette.method_color(method),
        symbol=palette.method_symbol(method),
        hover=hover,
        size=size,
    )


def core_layer(indices, *, name: str = "pseudo-class centres (cores)") -> PickLayer:
    return PickLayer(name=name, indices=np.asarray(indices, dtype=np.int64), color=palette.CORE_COLOR, symbol="star", size=14, outline="white")


def noise_layer(indices, *, name: str = "removed as noise") -> PickLayer:
    return PickLayer(name=name, indices=np.asarray(indices, dtype=np.int64), color=palette.NOISE_COLOR, symbol="x-thin-open",
                     size=7, outline=palette.NOISE_COLOR, opacity=0.9)


#: legend names of the hand-edit layers (the browser acceptance check reads them)
ADDED_NAME = "added by hand"
REMOVED_NAME = "removed by hand"


def added_layer(indices, *, hover=None) -> PickLayer:
    """Picks a person added on the Map: their own colour and layer, never a method's."""
    return PickLayer(name=ADDED_NAME, indices=np.asarray(indices, dtype=np.int64), color=palette.ADDED_COLOR, symbol="circle",
                     size=9, hover=hover)


def removed_layer(indices) -> PickLayer:
    """The method's picks a person removed: drawn hollow (a ring), so they read as not picked."""
    return PickLayer(name=REMOVED_NAME, indices=np.asarray(indices, dtype=np.int64), color=palette.REMOVED_COLOR,
                     symbol="circle-open", size=12, outline=palette.REMOVED_COLOR)


@dataclasses.dataclass
class Background:
    """How the pool is coloured: by `values` (category ids or ring levels) or plain grey."""

    mode: str = "plain"  # plain | category | ring | continuous
    values: np.ndarray | None = None
    names: Sequence[str] | None = None  # category names (legend) when there are few
    title: str = ""
    colorbar: str = ""  # continuous: the colourbar's title


def _sample_background(n: int, max_points: int, seed: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng([seed, 11])
    return np.sort(rng.choice(n, size=max_points, replace=False))


def _background_traces(coords: np.ndarray, rows: np.ndarray, bg: Background, marker_size: float) -> list:
    x, y = coords[rows, 0], coords[rows, 1]
    rows = rows.astype(np.int32)  # customdata travels as a typed array: int32 is half of int64
    common = dict(mode="markers", hoverinfo="skip" if rows.size > 20_000 else None, customdata=rows)
    hover = "#%{customdata}<extra>%{fullData.name}</extra>"
    if bg.mode == "category" and bg.values is not None:
        values = np.asarray(bg.values)[rows]
        n_cat = int(np.asarray(bg.values).max()) + 1 if np.asarray(bg.values).size else 0
        if bg.names is not None and 0 < n_cat <= 20:
            traces = []
            for c in range(n_cat):
                sel = values == c
                if not sel.any():
                    continue
                traces.append(
                    go.Scattergl(
                        x=x[sel], y=y[sel], name=str(bg.names[c]) if c < len(bg.names) else str(c),
                        marker=dict(size=marker_size, color=palette.category_color(c), line=dict(width=0)),
                        hovertemplate=hover, **{**common, "customdata": rows[sel]},
                    )
                )
            return traces
        # many categories (50-300 pseudo-classes): one colour each from a large muted palette, no
        # cycling (a cycled palette gave 5 pseudo-classes the same colour), the id in the hover
        n_cat = max(n_cat, 1)
        return [
            go.Scattergl(
                x=x, y=y, name=bg.title or "pool",
                marker=dict(size=marker_size, color=values.astype(np.int16), colorscale=palette.category_colorscale(n_cat),
                            cmin=-0.5, cmax=n_cat - 0.5, line=dict(width=0)),
                **{**common, "hovertemplate": "#%{customdata} · " + (bg.title.split(" (")[0].replace("pool by ", "") or "category")
                   + " %{marker.color}<extra></extra>"},
            )
        ]
    if bg.mode == "continuous" and bg.values is not None:
        # a value per sample (e.g. the distance to the nearest pick) on a sequential scale, with a colourbar
        values = np.asarray(bg.values, dtype=np.float32)
        top = float(np.max(bg.values)) if np.asarray(bg.values).size else 1.0
        label = bg.colorbar or bg.title or "value"
        return [
            go.Scattergl(
                x=x, y=y, name=bg.title or label,
                marker=dict(size=marker_size, color=values[rows], colorscale=palette.COVERAGE_COLORSCALE, cmin=0.0,
                            cmax=max(top, 1e-9), line=dict(width=0),
                            colorbar=dict(title=dict(text=label, side="right"), thickness=12, len=0.6, x=1.0, y=0.5)),
                **{**common, "hovertemplate": "#%{customdata} · " + label + " %{marker.color:.3f}<extra></extra>"},
            )
        ]
    if bg.mode == "ring" and bg.values is not None:
        values = np.asarray(bg.values)[rows].astype(np.float32)
        ringed = values > 0
        traces = []
        if (~ringed).any():
            traces.append(
                go.Scattergl(x=x[~ringed], y=y[~ringed], name="not ringed (small pseudo-class)",
                             marker=dict(size=marker_size, color="#d9d9d9", line=dict(width=0)),
                             hovertemplate=hover, **{**common, "customdata": rows[~ringed]})
            )
        traces.append(
            go.Scattergl(
                x=x[ringed], y=y[ringed], name=bg.title or "density-ring level",
                marker=dict(size=marker_size, color=values[ringed], colorscale=palette.RING_COLORSCALE, reversescale=False,
                            cmin=1, cmax=max(2.0, float(values.max())), line=dict(width=0),
                            colorbar=dict(title=dict(text="ring", side="right"), thickness=12, len=0.6, x=1.0, y=0.5)),
                **{**common, "customdata": rows[ringed], "hovertemplate": "#%{customdata}, ring %{marker.color}<extra></extra>"},
            )
        )
        return traces
    return [
        go.Scattergl(x=x, y=y, name=bg.title or "pool", marker=dict(size=marker_size, color="#c9ced6", line=dict(width=0)),
                     hovertemplate=hover, **common)
    ]


def map_figure(
    coords: np.ndarray,
    layers: Sequence[PickLayer] = (),
    *,
    background: Background | None = None,
    max_background: int = MAX_BACKGROUND,
    seed: int = 0,
    title: str | None = None,
    height: int = 640,
    uirevision: str | None = None,
    ranges: tuple[tuple[float, float], tuple[float, float]] | None = None,
    show_legend: bool = True,
    legend_below: bool = False,
) -> go.Figure:
    """The pool on its 2-D map (WebGL) with pick layers on top.

    Every trace's ``customdata`` holds pool indices, so a selection event maps straight back to
    samples.  Above `max_background` points the background is sampled; layers are never sampled.
    """
    coords = np.asarray(coords, dtype=np.float32)
    n = coords.shape[0]
    background = background or Background()
    rows = _sample_background(n, max_background, seed)
    marker_size = 4.0 if rows.size > 20_000 else (5.0 if rows.size > 3_000 else 7.0)
    traces = _background_traces(coords, rows, background, marker_size)
    badges: list[dict] = []  # labels of labelled layers (annotations)
    if rows.size < n:
        traces[0].name = f"{traces[0].name} (sample of {rows.size:,} / {n:,})"
    for layer in layers:
        idx = np.asarray(layer.indices, dtype=np.int64)
        hover = "#%{customdata}" + ("<br>%{hovertext}" if layer.hover is not None else "") + f"<extra>{layer.name}</extra>"
        width = layer.line_width if layer.line_width is not None else (2.0 if layer.symbol.endswith("-open") else 0.8)
        traces.append(
            go.Scattergl(
                x=coords[idx, 0], y=coords[idx, 1], mode="markers", name=f"{layer.name} ({idx.size:,})",
                customdata=idx.astype(np.int32), hovertext=list(layer.hover) if layer.hover is not None else None, hovertemplate=hover,
                opacity=layer.opacity, visible=True if layer.visible else "legendonly",
                marker=dict(size=layer.size, color=layer.color, symbol=layer.symbol, line=dict(width=width, color=layer.outline)),
                unselected=dict(marker=dict(opacity=0.55)),
            )
        )
        for i, text in zip(idx, layer.labels if layer.labels is not None else ()):
            badges.append(dict(x=float(coords[i, 0]), y=float(coords[i, 1]), text=f"<b>{text}</b>", showarrow=False,
                               xshift=layer.size * 0.55, yshift=layer.size * 0.55, font=dict(color=layer.color, size=12),
                               bgcolor="rgba(255,255,255,0.9)", bordercolor=layer.color, borderwidth=1.5, borderpad=1))
    fig = go.Figure(data=traces)
    fig.update_layout(
        legend_title_text=f"{background.title}:" if background.mode == "category" and background.names is not None else None,
        title=dict(text=title, x=0.01, font=dict(size=15)) if title else None,
        height=height,
        margin=dict(l=10, r=10, t=40 if title else 10, b=10),
        font=FONT,
        plot_bgcolor="white",
        paper_bgcolor="white",
        dragmode="select",
        hovermode="closest",
        uirevision=uirevision,
        showlegend=show_legend,
        annotations=badges or None,
        legend=dict(orientation="h", yanchor="top" if legend_below else "bottom", y=-0.01 if legend_below else 1.0,
                    xanchor="left", x=0, bgcolor="rgba(255,255,255,0.85)", itemsizing="constant"),
    )
    axis = dict(showgrid=False, zeroline=False, showticklabels=False, title=None, showline=True, linecolor="#e3e3e3", mirror=True)
    fig.update_xaxes(**axis)
    fig.update_yaxes(**axis, scaleanchor="x", scaleratio=1)
    if ranges is not None:
        fig.update_xaxes(range=list(ranges[0]))
        fig.update_yaxes(range=list(ranges[1]))
    return fig


#: plotly marker symbols as text, for legends drawn outside a figure
_SYMBOL_GLYPHS = {
    "diamond": "◆", "star": "★", "circle": "●", "square": "■", "square-open": "□", "triangle-up": "▲",
    "triangle-down": "▼", "pentagon": "⬟", "hexagon": "⬢", "cross": "✚", "x-thin-open": "✕", "circle-open": "○",
}


def legend_html(background: Background | None, layers: Sequence[PickLayer] = ()) -> str:
    """One shared legend (HTML) for maps drawn without their own: the pool's category colours
    (when named) and one entry per pick layer, in the same colours and symbols as the figure."""
    import html

    def entry(glyph: str, color: str, text: str, outline: bool = False) -> str:
        shadow = ";text-shadow:0 0 1px #1a1a1a" if outline else ""
        return (f"<span style='white-space:nowrap;margin-right:14px'><span style='color:{color};font-size:1.05em{shadow}'>"
                f"{glyph}</span>&nbsp;{html.escape(text)}</span>")

    parts = []
    if background is not None and background.mode == "category" and background.names is not None:
        names = list(background.names)
        parts.append(f"<span style='color:#666;margin-right:8px'>{html.escape(background.title)}:</span>")
        parts += [entry("●", palette.category_color(c), str(name)) for c, name in enumerate(names)]
        parts.append("<br>")
    seen = set()
    for layer in layers:
        text = f"{layer.name} ({np.asarray(layer.indices).size:,})"
        if text in seen:
            continue
        seen.add(text)
        parts.append(entry(_SYMBOL_GLYPHS.get(layer.symbol, "●"), layer.color, text, outline=layer.outline == palette.PICK_OUTLINE))
    return "<div style='font-size:0.88em;line-height:1.9'>" + "".join(parts) + "</div>"


def map_height(ranges, width_px: float, *, extra: int = 0, lo: int = 340, hi: int = 760) -> int:
    """A figure height that fits the map's aspect ratio (equal axis scales) at about `width_px`."""
    (x0, x1), (y0, y1) = ranges
    ratio = (y1 - y0) / max(x1 - x0, 1e-9)
    return int(min(max(width_px * ratio + extra, lo), hi))


def padded_ranges(coords: np.ndarray, pad: float = 0.04):
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.maximum(hi - lo, 1e-6)
    return ((float(lo[0] - pad * span[0]), float(hi[0] + pad * span[0])), (float(lo[1] - pad * span[1]), float(hi[1] + pad * span[1])))


def selected_pool_indices(event) -> np.ndarray:
    """Pool indices of the points in a Streamlit plotly selection event (customdata)."""
    if not event:
        return np.zeros(0, dtype=np.int64)
    selection = event.get("selection") if isinstance(event, dict) else getattr(event, "selection", None)
    points = (selection or {}).get("points", []) if selection is not None else []
    out = []
    for p in points:
        cd = p.get("customdata")
        if isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        if cd is not None:
            out.append(int(cd))
    return np.unique(np.asarray(out, dtype=np.int64))


# --------------------------------------------------------------------------- Learn page figures


def toy_figure(
    xy: np.ndarray,
    *,
    color_values: np.ndarray | None = None,
    color_mode: str = "plain",  # plain | category | ring | blob
    layers: Sequence[PickLayer] = (),
    lines: Sequence[tuple[np.ndarray, dict]] = (),
    title: str | None = None,
    height: int = 460,
    show_legend: bool = True,
    ranges=None,
) -> go.Figure:
    """A small SVG scatter of the 2-D toy pool with optional line overlays (trajectories…)."""
    traces = []
    xy = np.asarray(xy)
    idx = np.arange(xy.shape[0])
    base = dict(mode="markers", customdata=idx, hovertemplate="#%{customdata}<extra></extra>")
    if color_mode in ("category", "blob") and color_values is not None:
        values = np.asarray(color_values)
        for c in np.unique(values):
            sel = values == c
            if color_mode == "blob" and c < 0:
                name, color = "outliers", "#c4c4c4"
            else:
                name = f"class {c}" if color_mode == "blob" else f"pseudo-class {c}"
                color = palette.category_color(int(c))
            traces.append(go.Scatter(x=xy[sel, 0], y=xy[sel, 1], name=name, showlegend=False,
                                     marker=dict(size=6, color=color, line=dict(width=0)), **{**base, "customdata": idx[sel]}))
    elif color_mode == "ring" and color_values is not None:
        values = np.asarray(color_values).astype(float)
        ringed = values > 0
        if (~ringed).any():
            traces.append(go.Scatter(x=xy[~ringed, 0], y=xy[~ringed, 1], name="not ringed", showlegend=False,
                                     marker=dict(size=6, color="#d9d9d9"), **{**base, "customdata": idx[~ringed]}))
        traces.append(go.Scatter(
            x=xy[ringed, 0], y=xy[ringed, 1], name="ring level", showlegend=False,
            marker=dict(size=6, color=values[ringed], colorscale=palette.RING_COLORSCALE, cmin=1, cmax=max(2, values.max()),
                        colorbar=dict(title=dict(text="ring"), thickness=10, len=0.7)),
            **{**base, "customdata": idx[ringed], "hovertemplate": "#%{customdata}, ring %{marker.color}<extra></extra>"},
        ))
    else:
        traces.append(go.Scatter(x=xy[:, 0], y=xy[:, 1], name="pool", showlegend=False, marker=dict(size=6, color="#c9ced6"), **base))
    for points, style in lines:
        traces.append(go.Scatter(x=points[:, 0], y=points[:, 1], mode="lines", hoverinfo="skip", **style))
    for layer in layers:
        i = np.asarray(layer.indices, dtype=np.int64)
        traces.append(go.Scatter(
            x=xy[i, 0], y=xy[i, 1], mode="markers", name=f"{layer.name} ({i.size})", customdata=i,
            text=list(layer.hover) if layer.hover is not None else None,
            hovertemplate="#%{customdata}" + ("<br>%{text}" if layer.hover is not None else "") + f"<extra>{layer.name}</extra>",
            opacity=layer.opacity,
            marker=dict(size=layer.size + 2, color=layer.color, symbol=layer.symbol, line=dict(width=1, color=layer.outline)),
        ))
    fig = go.Figure(data=traces)
    fig.update_layout(
        title=dict(text=title, x=0.01, font=dict(size=14)) if title else None,
        height=height, font=FONT, plot_bgcolor="white", paper_bgcolor="white",
        margin=dict(l=5, r=5, t=36 if title else 8, b=5), showlegend=show_legend, hovermode="closest",
        legend=dict(orientation="h", yanchor="top", y=-0.02, xanchor="left", x=0, itemsizing="constant"),
        dragmode="pan",
    )
    axis = dict(showgrid=False, zeroline=False, showticklabels=False, showline=True, linecolor="#e3e3e3", mirror=True)
    fig.update_xaxes(**axis)
    fig.update_yaxes(**axis, scaleanchor="x", scaleratio=1)
    if ranges is not None:
        fig.update_xaxes(range=list(ranges[0]))
        fig.update_yaxes(range=list(ranges[1]))
    return fig


# --------------------------------------------------------------------------- accuracy figures


def accuracy_vs_budget_figure(rows: Sequence[dict], *, height: int = 420) -> go.Figure:
    """rows: dicts with method, budget, accuracy (0..1) and optionally `series` (the legend name
    and grouping, default the method's label; hand-edited selections get a dashed line).  One
    line per series: the mean over the selections at each budget (several seeds), single
    selections drawn as faint dots when a budget has more than one."""
    fig = go.Figure()
    by_series: dict[str, list[dict]] = {}
    for r in rows:
        by_series.setdefault(r.get("series") or palette.method_label(r["method"]), []).append(r)
    all_budgets = sorted({int(r["budget"]) for r in rows})
    for name, items in by_series.items():
        method = items[0]["method"]
        budgets = sorted({int(r["budget"]) for r in items})
        means = [float(np.mean([r["accuracy"] for r in items if int(r["budget"]) == b])) for b in budgets]
        runs = [sum(1 for r in items if int(r["budget"]) == b) for b in budgets]
        color = palette.method_color(method)
        fig.add_trace(go.Scatter(
            x=budgets, y=[100 * m for m in means], mode="lines+markers", name=name, customdata=runs,
            line=dict(color=color, width=2.5, dash="dash" if items[0].get("edited") else "solid"),
            marker=dict(color=color, symbol=palette.method_symbol(method), size=10, line=dict(width=1, color="white")),
            hovertemplate="%{fullData.name}<br>budget %{x:,}<br>accuracy %{y:.2f}% (mean of %{customdata})<extra></extra>",
        ))
        if len(items) > len(budgets):
            fig.add_trace(go.Scatter(
                x=[int(r["budget"]) for r in items], y=[100 * r["accuracy"] for r in items], mode="markers", name=name,
                marker=dict(color=color, size=6, opacity=0.35), showlegend=False, hoverinfo="skip",
            ))
    log_x = len(all_budgets) > 1 and all_budgets[-1] >= 8 * max(all_budgets[0], 1)
    fig.update_layout(
        height=height, font=FONT, plot_bgcolor="white", paper_bgcolor="white", margin=dict(l=10, r=10, t=10, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0), hovermode="closest",
        xaxis=dict(title="budget (labelled samples)" + (", log scale" if log_x else ""), gridcolor="#eeeeee",
                   type="log" if log_x else "linear", tickvals=all_budgets if len(all_budgets) <= 8 else None),
        yaxis=dict(title="test accuracy (%)", gridcolor="#eeeeee"),
    )
    return fig


#: bar patterns that tell apart two selections of the same method (same colour) in one chart
_PATTERNS = ("", "/", "x", ".", "\\", "+")


def per_class_figure(class_names: Sequence[str], series: Sequence[tuple[str, str, Sequence[float]]], *, height: int = 380) -> go.Figure:
    """Grouped bars: one group per class, one bar per (method, legend name, per-class accuracy);
    a class with no test sample (None) has no bar."""
    fig = go.Figure()
    seen: dict[str, int] = {}
    for method, name, values in series:
        repeat = seen[method] = seen.get(method, -1) + 1
        fig.add_trace(go.Bar(
            x=list(class_names), y=[None if v is None else 100 * v for v in values], name=name,
            marker=dict(color=palette.method_color(method), pattern=dict(shape=_PATTERNS[repeat % len(_PATTERNS)], fillmode="overlay")),
            hovertemplate="%{x}<br>%{y:.1f}%<extra>" + name + "</extra>",
        ))
    fig.update_layout(
        barmode="group", height=height, font=FONT, plot_bgcolor="white", paper_bgcolor="white",
        margin=dict(l=10, r=10, t=10, b=10), legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
        yaxis=dict(title="per-class accuracy (%)", gridcolor="#eeeeee", range=[0, 100]), xaxis=dict(tickangle=-30),
    )
    return fig


def confusion_figure(confusion: Sequence[Sequence[float]], class_names: Sequence[str], *, title: str = "", height: int = 460) -> go.Figure:
    """Row-normalised confusion matrix (true class rows, predicted columns), counts in the hover."""
    counts = np.asarray(confusion, dtype=np.float64)
    totals = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    share = 100 * counts / totals
    names = list(class_names)
    fig = go.Figure(go.Heatmap(
        z=share, x=names, y=names, colorscale="Blues", zmin=0, zmax=100, customdata=counts,
        hovertemplate="true %{y}<br>predicted %{x}<br>%{z:.1f}% of the class (%{customdata:.0f})<extra></extra>",
        colorbar=dict(title=dict(text="% of row"), thickness=12),
    ))
    text = np.where(share >= 0.5, np.char.mod("%.0f", share), "")
    fig.update_traces(text=text, texttemplate="%{text}", textfont=dict(size=10))
    fig.update_layout(
        title=dict(text=title, x=0.01, font=dict(size=14)) if title else None, height=height, font=FONT,
        margin=dict(l=10, r=10, t=36 if title else 10, b=10), paper_bgcolor="white",
        xaxis=dict(title="predicted", side="bottom", tickangle=-35), yaxis=dict(title="true class", autorange="reversed"),
    )
    return fig


def class_balance_figure(class_names: Sequence[str], counts, pool_share, method: str, *, height: int = 460) -> go.Figure:
    """Picks per true class (bars, method colour) against the class's share of the pool (line):
    how balanced the labelled subset is."""
    counts = np.asarray(counts, dtype=float)
    total = max(counts.sum(), 1.0)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=list(class_names), y=counts, name="picks", marker_color=palette.method_color(method),
                         hovertemplate="%{x}: %{y:.0f} picks<extra></extra>"))
    fig.add_trace(go.Scatter(x=list(class_names), y=np.asarray(pool_share) * total, name="if picked in pool proportion",
                             mode="lines+markers", line=dict(color="#444444", dash="dot"), marker=dict(size=6),
                             hovertemplate="%{x}: %{y:.1f} expected<extra></extra>"))
    fig.update_layout(
        title=dict(text="labelled picks per class", x=0.01, font=dict(size=14)), height=height, font=FONT,
        plot_bgcolor="white", paper_bgcolor="white", margin=dict(l=10, r=10, t=36, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0.4), xaxis=dict(tickangle=-35),
        yaxis=dict(title="picks", gridcolor="#eeeeee"),
    )
    return fig
