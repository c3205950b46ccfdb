"""One colour and one marker per selection method, used by every screen and figure.

BiLAF takes the theme's primary red; the baselines take the other strong Tableau colours.  The pool
behind the picks is drawn in light, desaturated colours so picks stay readable on top of it.
"""

from __future__ import annotations

import colorsys
import zlib

#: strong colours for picks, one per method (registry names)
METHOD_COLORS: dict[str, str] = {
    "bilaf": "#d62728",
    "activeft": "#ff7f0e",
    "random": "#6b6b6b",
    "kmeans": "#1f77b4",
    "kmeans-multibatch": "#17becf",
    "coreset": "#2ca02c",
    "fds": "#9467bd",
    "typiclust": "#8c564b",
    "probcover": "#e377c2",
    "fisher": "#bcbd22",
}

#: plotly marker symbols: each method is recognisable without colour too
METHOD_SYMBOLS: dict[str, str] = {
    "bilaf": "diamond",
    "activeft": "star",
    "random": "circle",
    "kmeans": "square",
    "kmeans-multibatch": "square-open",
    "coreset": "triangle-up",
    "fds": "triangle-down",
    "typiclust": "pentagon",
    "probcover": "hexagon",
    "fisher": "cross",
}

METHOD_LABELS: dict[str, str] = {
    "bilaf": "BiLAF",
    "activeft": "ActiveFT",
    "random": "Random",
    "kmeans": "K-Means",
    "kmeans-multibatch": "K-Means (multi-batch)",
    "coreset": "Core-Set",
    "fds": "FDS",
    "typiclust": "TypiClust",
    "probcover": "ProbCover",
    "fisher": "Fisher",
}

_SPARE_COLORS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354")

#: layer colours on the map
CORE_COLOR = "#111111"  # pseudo-class centres (BiLAF's core samples)
NOISE_COLOR = "#9e9e9e"  # samples removed as noise
EDITED_SUFFIX = " (edited)"

#: light colours for the pool coloured by class / pseudo-class (20, cycled).  No strong red among
#: the first ten: BiLAF's picks are red and must stand out on any class.
_CATEGORY_BASE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#2f4f4f",
    "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5", "#ff9896",
)
#: outline of pick markers: dark, so a pick is visible on a background point of its own colour
PICK_OUTLINE = "#1a1a1a"


def method_color(method: str) -> str:
    """The method's colour; a stable spare colour for a method the palette does not know."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _SPARE_COLORS[zlib.crc32(method.encode()) % len(_SPARE_COLORS)]


def method_symbol(method: str) -> str:
    return METHOD_SYMBOLS.get(method, "circle")


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _soften(hex_color: str, lightness: float = 0.66, saturation: float = 0.6) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5))
    h, _, s = colorsys.rgb_to_hls(r, g, b)
    r, g, b = colorsys.hls_to_rgb(h, lightness, min(s, saturation))
    return "#{:02x}{:02x}{:02x}".format(round(r * 255), round(g * 255), round(b * 255))


#: light versions of the category colours, for the pool in the background
CATEGORY_COLORS: tuple[str, ...] = tuple(_soften(c) for c in _CATEGORY_BASE[:10]) + tuple(
    _soften(c, 0.8, 0.35) for c in _CATEGORY_BASE[10:]
)


def category_color(i: int) -> str:
    return CATEGORY_COLORS[int(i) % len(CATEGORY_COLORS)]


def category_colorscale(n: int | None = None) -> list[list]:
    """A stepped plotly colourscale over 0..n-1 (n <= 20 colours, cycled beyond): lets one
    Scattergl trace colour 60 000 points from a compact integer array instead of 60 000 strings."""
    n = len(CATEGORY_COLORS) if n is None else max(1, min(int(n), len(CATEGORY_COLORS)))
    scale = []
    for i in range(n):
        color = CATEGORY_COLORS[i]
        scale.append([i / n, color])
        scale.append([(i + 1) / n, color])
    return scale


#: sequential scale for density-ring levels (inner rings dark, outer rings light)
RING_COLORSCALE = "Viridis"
