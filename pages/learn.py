"""Learn — a guided walkthrough of BiLAF on a 2-D toy pool, beside k-means and random."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from bilaf_core import palette
from bilaf_core.errors import BilafError
from bilaf_core.selection import available_methods, get_method, run_selection
from pages import _common as common
from pages import _figures as figs
from pages._toy import toy_pool

STEPS = [
    ("1_pool", "1 · Pool"),
    ("2_cores", "2 · Core samples"),
    ("3_assign", "3 · Pseudo-classes"),
    ("4_rings", "4 · Density rings"),
    ("5_denoise", "5 · Denoising"),
    ("6_boundary", "6 · Boundary picks"),
    ("7_compare", "7 · Compare"),
]
BILAF_KNOBS = ("removal_fraction", "ring_fraction", "opponent_penalty", "density_neighbors")

st.title("Learn: how BiLAF chooses what to label")
st.caption(
    "A toy pool in two dimensions, so every step of the method can be drawn. The same engine runs here as on the real "
    "map: ActiveFT picks the cores, then BiLAF's denoising and boundary selection run on them. Move any slider — "
    "everything redraws."
)

# ------------------------------------------------------------------ controls
spec = get_method("bilaf")
with st.sidebar:
    st.subheader("Toy pool")
    n_blobs = st.slider("classes (blobs)", 3, 9, 6, key="learn_blobs", help="hidden classes; no method sees them")
    per_blob = st.slider("points per class", 30, 200, 90, step=10, key="learn_per_blob")
    noise = st.slider("outliers (% of the pool)", 0, 30, 8, key="learn_noise", help="uniform noise points scattered over the plane")
    seed = st.number_input("seed", 0, 10_000, 0, key="learn_seed", help="same seed, same pool and same picks")

st.markdown("#### Budget and parameters")
c1, c2 = st.columns(2)
with c1:
    cores = st.slider(
        "core samples K (pseudo-class centres)", 2, 15, n_blobs, key="learn_cores",
        help=spec.param("core_budget").help,
    )
with c2:
    budget = st.slider("budget B (samples to label, cores included)", cores, 120, max(cores, 36), key="learn_budget")

knob_cols = st.columns(len(BILAF_KNOBS))
knobs = {}
for col, name in zip(knob_cols, BILAF_KNOBS):
    p = spec.param(name)
    with col:
        if p.kind == "int":
            knobs[name] = st.slider(common.param_title(p), int(p.minimum or 1), 30, int(p.default), key=f"learn_{name}", help=p.help)
        else:
            hi = {"opponent_penalty": 2.0}.get(name, float(p.maximum or 1.0))
            lo = float(p.minimum or 0.0)
            if p.exclusive_minimum:
                lo = 0.02
            hi = min(hi, 0.5) if name in ("removal_fraction", "ring_fraction") else hi
            knobs[name] = st.slider(common.param_title(p), lo, hi, float(p.default), step=0.01, key=f"learn_{name}", help=p.help)
        st.caption(p.help)


# ------------------------------------------------------------------ the engine, cached per input
@st.cache_data(show_spinner=False, max_entries=32)
def _pool(n_blobs, per_blob, noise, seed):
    return toy_pool(n_blobs=n_blobs, per_blob=per_blob, noise_fraction=noise / 100, seed=seed)


@st.cache_data(show_spinner="ActiveFT is placing the cores…", max_entries=32)
def _cores(n_blobs, per_blob, noise, seed, cores):
    pool = _pool(n_blobs, per_blob, noise, seed)
    sel = run_selection("activeft", pool.features, cores, seed=seed, record_history=True)
    return sel.indices, sel.diagnostics.get("centroid_history"), sel.diagnostics.get("init_indices")


@st.cache_data(show_spinner=False, max_entries=64)
def _bilaf(n_blobs, per_blob, noise, seed, cores, budget, knobs_items):
    pool = _pool(n_blobs, per_blob, noise, seed)
    core_idx, _, _ = _cores(n_blobs, per_blob, noise, seed, cores)
    # The same cores BiLAF's own ActiveFT stage would choose (same seed and options).
    sel = run_selection("bilaf", pool.features, budget, seed=seed, core_indices=core_idx, **dict(knobs_items))
    return sel.indices, {k: np.asarray(v) for k, v in sel.diagnostics.items()}


@st.cache_data(show_spinner=False, max_entries=64)
def _baseline(method, n_blobs, per_blob, noise, seed, budget):
    pool = _pool(n_blobs, per_blob, noise, seed)
    return run_selection(method, pool.features, budget, seed=seed).indices


pool = _pool(n_blobs, per_blob, noise, seed)
try:
    core_idx, history, init_idx = _cores(n_blobs, per_blob, noise, seed, cores)
    picks, diag = _bilaf(n_blobs, per_blob, noise, seed, cores, budget, tuple(sorted(knobs.items())))
except BilafError as exc:
    st.error(str(exc))
    st.stop()

ranges = figs.padded_ranges(pool.xy, 0.06)
cluster = diag["cluster"]
ring = diag["ring_level"]
removed = diag["removed_as_noise"].astype(bool)
is_core = diag["is_core_pick"].astype(bool)
boundary = picks[~is_core]

# ------------------------------------------------------------------ the walkthrough
labels = dict(STEPS)
if "learn_step" not in st.session_state:
    st.session_state["learn_step"] = STEPS[0][0]
step = st.segmented_control(
    "Step", [k for k, _ in STEPS], format_func=lambda k: labels[k], key="learn_step", label_visibility="collapsed"
) or STEPS[0][0]
position = [k for k, _ in STEPS].index(step)


def _go(delta):
    keys = [k for k, _ in STEPS]
    st.session_state["learn_step"] = keys[min(max(position + delta, 0), len(keys) - 1)]


def _cores_figure():
    fig = figs.toy_figure(pool.xy, color_mode="plain", layers=[], height=480, ranges=ranges)
    if history is None:
        fig.add_trace(go.Scatter(x=pool.xy[core_idx, 0], y=pool.xy[core_idx, 1], mode="markers", name="cores",
                                 marker=dict(symbol="star", size=16, color=palette.CORE_COLOR)))
        return fig
    paths = pool.locate(history)  # (snapshots, K, 2)
    trail_x, trail_y = [], []
    for j in range(paths.shape[1]):
        trail_x += list(paths[:, j, 0]) + [None]
        trail_y += list(paths[:, j, 1]) + [None]
    color = palette.method_color("activeft")
    fig.add_trace(go.Scatter(x=trail_x, y=trail_y, mode="lines", name="centroid path", hoverinfo="skip",
                             line=dict(color=color, width=1.5, dash="dot")))
    fig.add_trace(go.Scatter(x=paths[0, :, 0], y=paths[0, :, 1], mode="markers", name="start",
                             marker=dict(symbol="circle-open", size=11, color=color, line=dict(width=2))))
    fig.add_trace(go.Scatter(x=paths[-1, :, 0], y=paths[-1, :, 1], mode="markers", name="end",
                             marker=dict(symbol="circle", size=12, color=color, line=dict(width=1, color="white"))))
    # centroid j is matched to core sample j (ActiveFT's matching order)
    link_x, link_y = [], []
    for j, i in enumerate(core_idx):
        link_x += [paths[-1, j, 0], pool.xy[i, 0], None]
        link_y += [paths[-1, j, 1], pool.xy[i, 1], None]
    fig.add_trace(go.Scatter(x=link_x, y=link_y, mode="lines", name="→ its nearest sample", hoverinfo="skip",
                             line=dict(color="#555555", width=1)))
    fig.add_trace(go.Scatter(x=pool.xy[core_idx, 0], y=pool.xy[core_idx, 1], mode="markers", name="core samples",
                             marker=dict(symbol="star", size=17, color=palette.CORE_COLOR, line=dict(width=1, color="white"))))
    moving = len(fig.data) - 3  # the "centroids" trace is animated
    frames = [go.Frame(data=[go.Scatter(x=paths[s, :, 0], y=paths[s, :, 1])], traces=[moving], name=str(s)) for s in range(paths.shape[0])]
    fig.frames = frames
    fig.update_layout(
        height=540,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0),
        margin=dict(t=50, b=60),
        updatemenus=[dict(type="buttons", showactive=False, x=0.0, y=-0.06, xanchor="left", yanchor="top",
                          buttons=[dict(label="▶ replay", method="animate",
                                        args=[None, dict(frame=dict(duration=60, redraw=False), fromcurrent=False, transition=dict(duration=0))])])],
        sliders=[dict(active=paths.shape[0] - 1, y=-0.02, x=0.16, len=0.84, pad=dict(t=0), yanchor="top",
                      currentvalue=dict(prefix="snapshot ", font=dict(size=11)),
                      steps=[dict(method="animate", label=str(s), args=[[str(s)], dict(mode="immediate", frame=dict(duration=0, redraw=False))])
                             for s in range(paths.shape[0])])],
    )
    return fig


def _step_figure(key: str) -> go.Figure:
    core_layer = figs.core_layer(core_idx, name="core samples")
    if key == "1_pool":
        return figs.toy_figure(pool.xy, color_values=pool.blob, color_mode="blob", height=480, ranges=ranges,
                               title="hidden classes (colour) and outliers (grey) — for your eyes only")
    if key == "2_cores":
        return _cores_figure()
    if key == "3_assign":
        return figs.toy_figure(pool.xy, color_values=cluster, color_mode="category", layers=[core_layer], height=480, ranges=ranges)
    if key == "4_rings":
        return figs.toy_figure(pool.xy, color_values=ring, color_mode="ring", layers=[core_layer], height=480, ranges=ranges)
    if key == "5_denoise":
        return figs.toy_figure(pool.xy, color_values=cluster, color_mode="category",
                               layers=[core_layer, figs.noise_layer(np.flatnonzero(removed))], height=480, ranges=ranges)
    if key == "6_boundary":
        opp = diag["opponent_cluster"][~is_core]
        score = diag["boundary_score"][~is_core]
        own = diag["pick_cluster"][~is_core]
        order_in_cluster = np.zeros(boundary.size, dtype=int)
        for c in np.unique(own):
            where = np.flatnonzero(own == c)
            order_in_cluster[where] = np.arange(1, where.size + 1)
        hover = [f"pseudo-class {c}, pick {o}<br>opponent {t}, score {s:.3f}" for c, o, t, s in zip(own, order_in_cluster, opp, score)]
        seg_x, seg_y = [], []
        for i, t in zip(boundary, opp):
            seg_x += [pool.xy[i, 0], pool.xy[core_idx[t], 0], None]
            seg_y += [pool.xy[i, 1], pool.xy[core_idx[t], 1], None]
        lines = [(np.c_[np.array(seg_x, dtype=float), np.array(seg_y, dtype=float)],
                  dict(name="to the opponent core", line=dict(color=palette.method_color("bilaf"), width=1), opacity=0.35))]
        return figs.toy_figure(
            pool.xy, color_values=cluster, color_mode="category", height=480, ranges=ranges, lines=lines,
            layers=[figs.noise_layer(np.flatnonzero(removed)), core_layer,
                    figs.method_layer("bilaf", boundary, name="BiLAF boundary picks", hover=hover)],
        )
    raise KeyError(key)


def _facts(key: str) -> list[str]:
    n = pool.n
    k = core_idx.size
    if key == "1_pool":
        return [f"{n} points: {int((pool.blob >= 0).sum())} in {n_blobs} classes, {int((pool.blob < 0).sum())} outliers",
                f"budget {budget} = {100 * budget / n:.1f}% of the pool"]
    if key == "2_cores":
        snaps = 0 if history is None else history.shape[0]
        return [f"K = {k} centroids, {get_method('activeft').param('iterations').default} iterations ({snaps} snapshots drawn)",
                "press ▶ to replay how they moved"]
    if key == "3_assign":
        sizes = np.bincount(cluster, minlength=k)
        facts = [f"{k} pseudo-classes of {sizes.min()}–{sizes.max()} members"]
        merged = merged_classes(pool.blob, cluster)
        if merged:
            groups = "; ".join(" and ".join(f"class {b}" for b in group) + f" share pseudo-class {c}" for c, group in merged)
            facts.append(f"**Not one pseudo-class per class here:** {groups} — the cores missed a class "
                         "(ActiveFT optimises coverage of the feature space, not the hidden classes). "
                         "Try another seed or more cores.")
        else:
            facts.append(f"each of the {n_blobs} hidden classes has a pseudo-class of its own")
        return facts
    if key == "4_rings":
        return [f"up to {int(ring.max())} rings per pseudo-class", f"ring fraction {knobs['ring_fraction']:.2f}: each ring adds that share of its cluster"]
    if key == "5_denoise":
        outliers_removed = int((removed & (pool.blob < 0)).sum())
        return [f"{int(removed.sum())} samples removed as noise", f"{outliers_removed} of the {int((pool.blob < 0).sum())} true outliers among them"]
    if key == "6_boundary":
        return [f"{k} cores + {boundary.size} boundary picks = {budget}", f"opponent penalty δ = {knobs['opponent_penalty']:.2f}"]
    return []


def merged_classes(blob: np.ndarray, cluster: np.ndarray) -> list[tuple[int, list[int]]]:
    """(pseudo-class, [hidden classes]) for every pseudo-class that holds the majority of more
    than one hidden class — what step 3 must admit when the cores missed a class."""
    majority: dict[int, list[int]] = {}
    for b in np.unique(blob[blob >= 0]):
        majority.setdefault(int(np.bincount(cluster[blob == b]).argmax()), []).append(int(b))
    return [(c, group) for c, group in sorted(majority.items()) if len(group) > 1]


def _classes_covered(indices):
    hit = pool.blob[np.asarray(indices)]
    return int(np.unique(hit[hit >= 0]).size), int((hit < 0).sum())


def _nav_buttons():
    b1, b2 = st.columns(2)
    b1.button("← previous", on_click=_go, args=(-1,), disabled=position == 0, width="stretch", key="learn_prev")
    b2.button("next →", on_click=_go, args=(1,), disabled=position == len(STEPS) - 1, width="stretch", key="learn_next")


if step != "7_compare":
    left, right = st.columns([3, 2], gap="large")
    with right:
        st.markdown(common.asset_text(f"learn/{step}.md"))
        for line in _facts(step):
            st.markdown(f"- {line}")
        _nav_buttons()
    with left:
        st.plotly_chart(_step_figure(step), width="stretch", key=f"learn_fig_{step}", config={"displaylogo": False})
else:
    text, nav = st.columns([3, 1], gap="large", vertical_alignment="bottom")
    with text:
        st.markdown(common.asset_text(f"learn/{step}.md"))
    with nav:
        _nav_buttons()

if step == "7_compare":
    methods = ["bilaf"] + [m for m in ("kmeans", "random") if m in available_methods()]
    cols = st.columns(len(methods))
    summary = []
    for col, method in zip(cols, methods):
        chosen = picks if method == "bilaf" else _baseline(method, n_blobs, per_blob, noise, seed, budget)
        with col:
            if method == "bilaf":  # its two kinds of picks, as in steps 2 and 6: core stars and boundary diamonds
                layers = [figs.method_layer("bilaf", boundary, name="BiLAF boundary picks"), figs.core_layer(core_idx, name="core samples")]
            else:
                layers = [figs.method_layer(method, chosen)]
            fig = figs.toy_figure(pool.xy, color_values=pool.blob, color_mode="blob", height=360, ranges=ranges, show_legend=False,
                                  layers=layers, title=palette.method_label(method))
            st.plotly_chart(fig, width="stretch", key=f"learn_cmp_{method}", config={"displaylogo": False})
        covered, outliers = _classes_covered(chosen)
        summary.append({"method": palette.method_label(method), "classes with ≥ 1 pick": f"{covered} / {n_blobs}",
                        "outliers picked": outliers, "budget": int(len(chosen))})
    st.dataframe(summary, hide_index=True, width="stretch")
    missing = [m for m in ("kmeans", "random") if m not in available_methods()]
    if missing:
        st.info(f"{', '.join(missing)} not available in this engine build; only the available methods are compared.")
