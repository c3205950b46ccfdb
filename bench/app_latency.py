"""Map latency: how long the Map page takes to redraw after the budget changes.

With features and the 2-D map cached, changing the budget on the Map page re-runs BiLAF on the
cores of the saved selection (only its boundary stage: assignment, denoising, budget split and
boundary picks) and rebuilds the WebGL figure.  This script times exactly that path, per budget:

* ``select``  — ``run_selection("bilaf", features, B, core_indices=cores, …)``
* ``figure``  — ``pages/_figures.map_figure`` with the pool coloured by label, the centres, the
  boundary picks and the noise layer
* ``json``    — ``plotly.io.to_json(fig, validate=False)``, what ``st.plotly_chart`` sends

and prints a markdown table.  The browser's WebGL draw (tens of ms for 60 000 points) comes on top.

    python bench/app_latency.py                                   # synthetic 60 000 x 112 pool
    python bench/app_latency.py --feature-dir workspace/features/<set>   # a real feature set
    python bench/app_latency.py --cores activeft                  # real ActiveFT cores (minutes)

Synthetic pools are seeded Gaussian clusters (uneven sizes, like real features).  Unless
``--cores activeft``, the K cores are a seeded random choice: the boundary stage's cost does not
depend on how the cores were found.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bilaf_core.selection import run_selection  # noqa: E402
from pages import _figures as figs  # noqa: E402


def synthetic_pool(n: int, dim: int, seed: int, n_modes: int = 10):
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(n_modes, 2.0))
    labels = rng.choice(n_modes, size=n, p=weights)
    centres = rng.normal(0, 1, (n_modes, dim)).astype(np.float32)
    sub = rng.normal(0, 0.6, (n_modes * 20, dim)).astype(np.float32)  # sub-modes inside each class
    sub_of = labels * 20 + rng.integers(0, 20, n)
    x = centres[labels] + sub[sub_of] + rng.normal(0, 0.8, (n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--feature-dir", type=Path, help="a feature-set folder (features.npy + meta.json); default: synthetic")
    ap.add_argument("--n", type=int, default=60_000, help="synthetic pool size")
    ap.add_argument("--dim", type=int, default=112, help="synthetic feature dimension (the default EfficientNet-Lite0 blocks.4 features: 112)")
    ap.add_argument("--budgets", default="0.5%,1%,2%,5%", help="budgets to time, comma separated")
    ap.add_argument("--cores", choices=("random", "activeft"), default="random")
    ap.add_argument("--core-budget", type=int, default=None, help="K; default: 0.5%% of the pool")
    ap.add_argument("--repeat", type=int, default=2, help="runs per budget; the table reports the median")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t = time.perf_counter()
    if args.feature_dir:
        features = np.ascontiguousarray(np.load(args.feature_dir / "features.npy"), dtype=np.float32)
        meta = json.loads((args.feature_dir / "meta.json").read_text())
        labels = np.asarray(meta["labels"]) if meta.get("labels") is not None else None
        source = f"{args.feature_dir.name} ({meta.get('dataset', {}).get('name', '?')}, {meta.get('backbone', '?')})"
    else:
        features, labels = synthetic_pool(args.n, args.dim, args.seed)
        source = f"synthetic Gaussian clusters, seed {args.seed}"
    load_s = time.perf_counter() - t
    n, dim = features.shape

    coords = None
    if args.feature_dir:
        from bilaf_core.projection import load_projection

        coords = load_projection(args.feature_dir)
    map_source = "cached UMAP"
    if coords is None:  # the map's content does not change the timing; a cheap 2-D stand-in
        coords = (features @ np.random.default_rng(1).normal(size=(dim, 2)).astype(np.float32)).astype(np.float32)
        map_source = "random 2-D projection (no cached map)"

    k = args.core_budget or max(2, round(0.005 * n))
    t = time.perf_counter()
    if args.cores == "activeft":
        cores = run_selection("activeft", features, k, seed=args.seed).indices
    else:
        cores = np.random.default_rng([args.seed, 3]).choice(n, size=k, replace=False)
    cores_s = time.perf_counter() - t

    import plotly.io

    rows = []
    for budget_text in [b.strip() for b in args.budgets.split(",") if b.strip()]:
        samples = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            sel = run_selection("bilaf", features, budget_text, seed=args.seed, core_indices=cores)
            t1 = time.perf_counter()
            d = sel.diagnostics
            is_core = np.asarray(d["is_core_pick"], dtype=bool)
            background = (
                figs.Background("category", labels, [str(c) for c in range(int(labels.max()) + 1)], "true label")
                if labels is not None
                else figs.Background("category", d["cluster"], None, "pseudo-class")
            )
            fig = figs.map_figure(
                coords,
                [
                    figs.noise_layer(np.flatnonzero(d["removed_as_noise"])),
                    figs.method_layer("bilaf", sel.indices[~is_core], name="BiLAF boundary picks"),
                    figs.core_layer(sel.indices[is_core]),
                ],
                background=background,
            )
            t2 = time.perf_counter()
            payload = plotly.io.to_json(fig, validate=False)
            t3 = time.perf_counter()
            samples.append((t1 - t0, t2 - t1, t3 - t2, len(payload), sel.budget, dict(sel.timings)))
        med = lambda i: float(np.median([s[i] for s in samples]))  # noqa: E731
        stages = samples[-1][5]
        rows.append((budget_text, samples[-1][4], med(0), med(1), med(2), med(0) + med(1) + med(2), samples[-1][3], stages))

    cpu = os.cpu_count()
    print(f"# Map latency — {n:,} x {dim} pool, K = {k} cores\n")
    print(f"- features: {source}; loaded in {load_s:.1f} s (once per server, then memoised)")
    print(f"- cores: {args.cores} ({cores_s:.1f} s, once per selection); map: {map_source}")
    print(f"- machine: {platform.processor() or platform.machine()}, {cpu} CPU cores, Python {platform.python_version()}\n")
    print("| budget | picks | select (s) | figure (s) | json (s) | total (s) | payload (MB) | BiLAF stages |")
    print("|---|---|---|---|---|---|---|---|")
    for b, picks, s, f, j, total, size, stages in rows:
        stage_text = ", ".join(f"{name} {sec:.2f}" for name, sec in stages.items() if name != "total")
        print(f"| {b} | {picks:,} | {s:.2f} | {f:.2f} | {j:.2f} | **{total:.2f}** | {size / 1e6:.1f} | {stage_text} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
