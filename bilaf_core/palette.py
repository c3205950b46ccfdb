"""One colour and one marker per selection method, used by every screen and figure.

BiLAF takes the theme's primary red; the baselines take the other strong Tableau colours.  The pool
behind the picks is drawn in light, desaturated colours so picks stay readable on top of it.
"""

from __future__ import annotations

import colorsys
import zlib

#: strong (saturated, fairly dark) colours for picks, one per method (registry names): each at
#: least ΔE 25 from every pool colour, so a pick never blends into a class (tests check it)
METHOD_COLORS: dict[str, str] = {
    "bilaf": "#d62728",
    "activeft": "#ff7f0e",
    "random": "#6b6b6b",
    "kmeans": "#1a5fa8",
    "kmeans-multibatch": "#0e9aa8",
    "coreset": "#2ca02c",
    "fds": "#7b3fb5",
    "typiclust": "#6b3a22",
    "probcover": "#c2188f",
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

#: layer colours on the map (each kept apart from every class and method colour; tests check it)
CORE_COLOR = "#111111"  # pseudo-class centres (BiLAF's core samples): black stars
NOISE_COLOR = "#4a5200"  # samples removed as noise: a dark olive of their own, never a pool colour
ADDED_COLOR = "#ff2fd6"  # picks added by hand: hot magenta
REMOVED_COLOR = "#111111"  # picks removed by hand: drawn hollow (a ring), so they read as "not picked"
EDITED_SUFFIX = " (edited)"

#: the Map's inspection layers (bilaf_core.inspect): each a dark, saturated colour at least ΔE 25 from
#: every pool colour (tests check it), drawn as open / outlined markers around the points
GAP_COLOR = "#6a00f4"  # the densest uncovered regions: numbered violet rings at their representatives
DUPLICATE_COLOR = "#005c53"  # near-duplicate picks: a dark teal bow-tie around each
ONLY_SHOWN_COLOR = "#000080"  # picks only the shown selection made (not the compared one): navy squares
ONLY_OTHER_COLOR = "#b35900"  # picks only the compared selection made: burnt-orange squares
HIGHLIGHT_COLOR = "#ff007f"  # the sample a thumbnail click points at: a large rose ring
#: coverage (distance to the nearest pick): near-white where covered, dark slate where far from
#: any pick, so the uncovered regions are what stands out and the saturated picks stay readable
COVERAGE_COLORSCALE = [[0.0, "#f4f6f9"], [0.35, "#b9c4d4"], [0.7, "#5d6f8c"], [1.0, "#1b2538"]]

#: base hues for the pool coloured by class / pseudo-class (20).  No red (BiLAF's picks are red)
#: and no grey (grey is nothing's: a pseudo-class in grey read as "removed as noise").
_CATEGORY_BASE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#5a9bd4", "#2f6f4f",
    "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94", "#f7b6d2", "#9edae5", "#dbdb8d", "#7bc8a4", "#d8b365",
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


#: muted (light, low-saturation) versions of the category colours, for the pool in the
#: background: picks are drawn saturated and outlined on top, so the two never look alike
CATEGORY_COLORS: tuple[str, ...] = tuple(_soften(c, 0.78, 0.5) for c in _CATEGORY_BASE[:10]) + tuple(
    _soften(c, 0.86, 0.42) for c in _CATEGORY_BASE[10:]
)


def category_color(i: int) -> str:
    return CATEGORY_COLORS[int(i) % len(CATEGORY_COLORS)]


def category_palette(n: int) -> list[str]:
    """`n` distinct muted colours for the pool by class or pseudo-class.  Up to 20: the
    :data:`CATEGORY_COLORS`; beyond (50-300 pseudo-classes), hues stepped by the golden angle
    over three lightness tiers, so neighbouring ids differ in hue *and* lightness and no colour
    repeats — a map of 300 pseudo-classes stays readable, each one a colour of its own."""
    n = max(int(n), 0)
    if n <= len(CATEGORY_COLORS):
        return list(CATEGORY_COLORS[:n])
    out, seen = [], set()
    golden = 0.6180339887498949
    i = 0
    while len(out) < n:
        hue = (0.07 + i * golden) % 1.0
        if 0.96 < hue or hue < 0.02:  # skip pure red: BiLAF's picks
            i += 1
            continue
        lightness = (0.78, 0.86, 0.72)[i % 3]
        saturation = (0.45, 0.35, 0.55)[(i // 3) % 3]
        r, g, b = colorsys.hls_to_rgb(hue, lightness, saturation)
        color = "#{:02x}{:02x}{:02x}".format(round(r * 255), round(g * 255), round(b * 255))
        if color not in seen:
            seen.add(color)
            out.append(color)
        i += 1
    return out


def category_colorscale(n: int | None = None) -> list[list]:
    """A stepped plotly colourscale over 0..n-1, one colour per category (see
    :func:`category_palette`): lets one Scattergl trace colour 60 000 points from a compact
    integer array instead of 60 000 strings."""
    colors = category_palette(len(CATEGORY_COLORS) if n is None else max(1, int(n)))
    k = len(colors)
    scale = []
    for i, color in enumerate(colors):
        scale.append([i / k, color])
        scale.append([(i + 1) / k, color])
    return scale


def _lab(hex_color: str) -> tuple[float, float, float]:
    """CIE L*a*b* (D65) of an sRGB hex colour."""
    rgb = [int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    x = (0.4124 * lin[0] + 0.3576 * lin[1] + 0.1805 * lin[2]) / 0.95047
    y = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    z = (0.0193 * lin[0] + 0.1192 * lin[1] + 0.9505 * lin[2]) / 1.08883
    f = [t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in (x, y, z)]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


def color_distance(a: str, b: str) -> float:
    """Perceptual distance (CIE76 ΔE) of two hex colours: about 2 is just noticeable, above 25
    two colours read as different at a glance."""
    la, lb = _lab(a), _lab(b)
    return sum((x - y) ** 2 for x, y in zip(la, lb)) ** 0.5


#: sequential scale for density-ring levels (inner rings dark, outer rings light)
RING_COLORSCALE = "Viridis"
