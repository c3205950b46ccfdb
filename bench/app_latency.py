"""Map latency: how long the Map page takes to redraw after the budget changes.

With features and the 2-D map cached, changing the budget on the Map page re-runs BiLAF on the
cores of the saved selection (only its boundary stage: assignment, denoising, budget split and
boundary picks) and rebuilds the WebGL figure.  This script times exactly that path, per budget:

* ``select``  — ``run_selection("bilaf", features, B, core_indices=cores, …)``
* ``figure``  — ``pages/_figures.map_figure`` with the pool coloured by label, the centres, the
  boundary picks and the noise layer
* ``json``    — ``plotly.io.to_json(fig, validate=False)``, what ``st.plotly_chart`` sends

and prints a markdown table.

``--browser`` measures the whole loop a user sees instead: ``streamlit run app.py`` on a
temporary workspace holding the feature set (its UMAP map computed once) and a BiLAF selection
at 1 % (real ActiveFT cores), the Map page open in headless Chromium (/usr/bin/chromium through
Playwright), then for each budget: type it into the Map's budget box, press Enter, and stop the
clock when the legend shows the new number of boundary picks — the server's rerun (BiLAF's
boundary stage, the figure), the transfer and the browser's WebGL redraw.  A budget seen before
is memoised, which the last column shows.

``--first-map`` measures a newcomer's first press: from *Extract features* on a fresh workspace
(the offline default, 10 000 images) to the Map drawing BiLAF's picks, in headless Chromium —
first on the quick PCA layout, then on the UMAP map that replaces it.

``--during-jobs`` measures whether long work freezes the page: the Select page's rerun time
(Streamlit's AppTest, in this process like the server's script threads) while nothing runs,
while a UMAP map is computed in a worker thread of the same process (as the app did at first),
while it is computed in a child process (``isolate=True``, as the app does now), and while
features are extracted in a worker thread.

    python bench/app_latency.py --during-jobs                    # 30 000 x 112 synthetic pool

    python bench/app_latency.py                                   # synthetic 60 000 x 112 pool
    python bench/app_latency.py --feature-dir workspace/features/<set>   # a real feature set
    python bench/app_latency.py --cores activeft                  # real ActiveFT cores (minutes)
    python bench/app_latency.py --browser --feature-dir workspace/features/<set>   # end to end
    python bench/app_latency.py --first-map                        # fresh workspace → first BiLAF map

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
from bilaf_core.selection.bilaf import keep_plans  # noqa: E402

keep_plans()  # as the app does (pages/_common.py): budget changes reuse BiLAF's plan
from pages import _figures as figs  # noqa: E402

from _machine import cpu_model  # noqa: E402 — bench/_machine.py (this script's folder is on sys.path)


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
    ap.add_argument("--browser", action="store_true", help="end to end: the Map page in headless Chromium (see above)")
    ap.add_argument("--during-jobs", action="store_true", help="page rerun times while background jobs run (see above)")
    ap.add_argument("--first-map", action="store_true",
                    help="end to end in Chromium: Extract features click on a fresh workspace → drawn BiLAF map")
    ap.add_argument("--numba-cache", type=Path, default=None, help="with --first-map: numba cache folder kept across runs")
    ap.add_argument("--seed-features-from", type=Path, default=None,
                    help="with --first-map: a full-split feature set of the offline default whose first 10 000 rows seed the "
                         "extraction cache (times everything after extraction)")
    ap.add_argument("--workspace", type=Path, default=None,
                    help="--browser: workspace folder to use (kept; default: a temporary one)")
    args = ap.parse_args(argv)
    if args.first_map:
        return first_map_bench(args)
    if args.browser:
        return browser_bench(args)
    if args.during_jobs:
        return during_jobs_bench(args)

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
            t0, c0 = time.perf_counter(), time.process_time()
            sel = run_selection("bilaf", features, budget_text, seed=args.seed, core_indices=cores)
            t1, cpu = time.perf_counter(), time.process_time() - c0
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
            samples.append((t1 - t0, t2 - t1, t3 - t2, len(payload), sel.budget, dict(sel.timings), cpu))
        med = lambda i: float(np.median([s[i] for s in samples]))  # noqa: E731
        stages = samples[-1][5]
        rows.append((budget_text, samples[-1][4], med(0), med(6), med(1), med(2), med(0) + med(1) + med(2), samples[-1][3], stages))

    cpu = os.cpu_count()
    print(f"# Map latency — {n:,} x {dim} pool, K = {k} cores\n")
    print(f"- features: {source}; loaded in {load_s:.1f} s (once per server, then memoised)")
    print(f"- cores: {args.cores} ({cores_s:.1f} s, once per selection); map: {map_source}")
    print(f"- machine: {cpu_model()}, {cpu} CPU cores, load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}")
    print("- select CPU = CPU time of all this process's threads (BLAS uses both cores); wall times grow with the load\n")
    print("| budget | picks | select (s) | select CPU (s) | figure (s) | json (s) | total (s) | payload (MB) | BiLAF stages (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for b, picks, s, c, f, j, total, size, stages in rows:
        stage_text = ", ".join(f"{name} {sec:.2f}" for name, sec in stages.items() if name != "total")
        print(f"| {b} | {picks:,} | {s:.2f} | {c:.2f} | {f:.2f} | {j:.2f} | **{total:.2f}** | {size / 1e6:.1f} | {stage_text} |")
    return 0


#: headless Chromium as the tests start it (no network chatter on this closed machine)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _wait_healthy(url: str, tries: int = 300) -> None:
    """Wait until the Streamlit server at `url` answers its health check (at most ~tries × 0.3 s)."""
    import urllib.request

    for _ in range(tries):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2)
            return
        except OSError:
            time.sleep(0.3)


def browser_bench(args) -> int:
    """The Map page's budget box, end to end in a real browser (see the module docstring)."""
    import socket
    import subprocess
    import tempfile

    from playwright.sync_api import expect, sync_playwright

    from bilaf_core import projection
    from bilaf_core.features import import_embeddings
    from bilaf_core.workspace import Workspace

    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        print(f"--browser needs Chromium at {chromium} (Debian package chromium)", file=sys.stderr)
        return 2
    root = args.workspace or Path(tempfile.mkdtemp(prefix="bilaf-latency-"))
    ws = Workspace(root)
    if args.feature_dir:
        feature_dir = args.feature_dir.resolve()
    else:
        feature_dir = Path(ws.features_root) / f"synthetic-{args.n}x{args.dim}-seed{args.seed}"
        if not (feature_dir / "meta.json").is_file():
            features, labels = synthetic_pool(args.n, args.dim, args.seed)
            src = Path(tempfile.mkdtemp(prefix="bilaf-latency-src-"))
            np.save(src / "features.npy", features)
            np.save(src / "labels.npy", labels)
            import_embeddings(src / "features.npy", labels_path=src / "labels.npy", out_dir=feature_dir)
    fs_id = ws.register_feature_set(feature_dir)
    n = ws.get_feature_set(fs_id)["n"]
    t = time.perf_counter()
    projection.project_feature_set(feature_dir)
    map_s = time.perf_counter() - t
    base = [r for r in ws.list_selections(fs_id) if r["method"] == "bilaf" and r["budget"] == max(2, round(0.01 * n))]
    t = time.perf_counter()
    if not base:
        features = np.ascontiguousarray(np.load(feature_dir / "features.npy"), dtype=np.float32)
        selection = run_selection("bilaf", features, "1%", seed=args.seed)
        ws.save_selection(selection, fs_id, name="BiLAF")
    base_s = time.perf_counter() - t
    selection_id = [r for r in ws.list_selections(fs_id) if r["method"] == "bilaf"][0]["id"]
    cores = int(np.asarray(ws.load_selection(selection_id).diagnostics["core_indices"]).size)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(root / "streamlit.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.headless", "true", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=dict(os.environ, BILAF_WORKSPACE=str(root)), stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        _wait_healthy(url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1200})
            t = time.perf_counter()
            page.goto(url + "/map")
            legend = page.locator(".legendtext")
            expect(legend.filter(has_text="BiLAF boundary picks").first).to_be_visible(timeout=300_000)
            open_s = time.perf_counter() - t
            box = page.get_by_label("Budget (re-runs BiLAF on the same cores)", exact=True).and_(page.get_by_test_id("stNumberInputField"))
            budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
            seen = set()
            for text in budgets + budgets[:1]:
                from bilaf_core.selection import resolve_budget

                budget = resolve_budget(text, n)
                if budget <= cores:  # no boundary picks: the map has no such legend entry to wait for
                    print(f"- skipped budget {text} ({budget:,}): not above the {cores:,} cores", file=sys.stderr)
                    continue
                box.fill(str(budget))
                t = time.perf_counter()
                box.press("Enter")
                # polled on every animation frame (Playwright's expect() backs off up to 1 s between checks)
                page.wait_for_function(
                    "text => [...document.querySelectorAll('.legendtext')].some(e => e.textContent.includes(text))",
                    arg=f"BiLAF boundary picks ({budget - cores:,})", polling="raf", timeout=120_000,
                )
                rows.append((text, budget, time.perf_counter() - t, budget in seen))
                seen.add(budget)
            browser.close()
    finally:
        server.terminate()
        server.wait(15)
        log.close()

    print(f"# Map budget change, end to end in Chromium — {n:,}-image pool, K = {cores} cores\n")
    print(f"- feature set: {feature_dir.name}; UMAP map {map_s:.1f} s (cached: 0); BiLAF at 1 % {base_s:.1f} s (cached: 0)")
    print(f"- page opened and map drawn in {open_s:.1f} s (features read, figure built and sent once)")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}; Chromium headless, "
          "software WebGL\n")
    print("| budget | picks | Enter → legend redrawn (s) | |")
    print("|---|---|---|---|")
    for text, budget, seconds, again in rows:
        print(f"| {text} | {budget:,} | **{seconds:.2f}** | {'seen before (memoised)' if again else 'BiLAF boundary stage re-run'} |")
    return 0


def _seed_extraction_cache(source_dir: Path, workspace: Path, *, limit: int) -> Path:
    """Put the first `limit` rows of an extracted full-split feature set (same dataset, backbone,
    layer, image size) where the app's *Extract features* with that limit looks for its cache,
    so --first-map can time everything after extraction on a machine too loaded to extract."""
    from bilaf_core.atomic import atomic_write_json
    from bilaf_core.backbones import get_backbone_spec, resolve_weights
    from bilaf_core.features import feature_key

    meta = json.loads((Path(source_dir) / "meta.json").read_text())
    spec = get_backbone_spec(meta["backbone"])
    source = resolve_weights(spec, None, allow_network=False)
    if source.digest != meta.get("weights_digest"):
        raise SystemExit(f"{source_dir} was extracted with other weights than the bundled ones")
    dataset = meta["dataset"]
    key = feature_key(dataset=dataset["name"], root=None, split=dataset.get("split") or "train", limit=limit, backbone=spec.name,
                      variant=spec.variant(), layer=meta["layer"], weights_digest=source.digest, image_size=int(meta["image_size"]))
    out = workspace / "features" / key
    out.mkdir(parents=True, exist_ok=True)
    features = np.load(Path(source_dir) / "features.npy", mmap_mode="r")[:limit]
    np.save(out / "features.npy", np.ascontiguousarray(features))
    meta = {**meta, "key": key, "n": int(limit), "ids": meta["ids"][:limit],
            "labels": meta["labels"][:limit] if meta.get("labels") is not None else None,
            "dataset": {**dataset, "limit": limit}}
    atomic_write_json(out / "meta.json", meta)
    return out


def first_map_bench(args) -> int:
    """From the *Extract features* click on a fresh workspace to a drawn BiLAF map, in Chromium:
    the offline default (Fashion-MNIST, first 10 000 images, EfficientNet-Lite0), the same press a
    newcomer makes.  The clock stops when the Map's legend shows BiLAF's boundary picks (on the
    quick layout, if UMAP is still running), then again when the UMAP map has replaced it.
    ``--numba-cache DIR`` keeps numba's cache in DIR across runs (default: inside the fresh
    workspace, i.e. a cold cache, as on a first install)."""
    import socket
    import subprocess
    import tempfile

    from playwright.sync_api import expect, sync_playwright

    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        print(f"--first-map needs Chromium at {chromium} (Debian package chromium)", file=sys.stderr)
        return 2
    root = args.workspace or Path(tempfile.mkdtemp(prefix="bilaf-first-map-"))
    seeded = None
    if args.seed_features_from:
        seeded = _seed_extraction_cache(args.seed_features_from, root, limit=10_000)
    env = dict(os.environ, BILAF_WORKSPACE=str(root))
    if args.numba_cache:
        env["NUMBA_CACHE_DIR"] = str(args.numba_cache)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(root / "streamlit.log", "w") if root.exists() else None
    if log is None:
        root.mkdir(parents=True)
        log = open(root / "streamlit.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
         "--server.headless", "true", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    load_before = os.getloadavg()
    try:
        _wait_healthy(url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1200})
            page.goto(url + "/data")
            page.get_by_role("button", name="Extract features").wait_for(timeout=120_000)
            start = time.perf_counter()
            page.get_by_role("button", name="Extract features").click()
            page.wait_for_timeout(1000)
            page.goto(url + "/map")
            legend = page.locator(".legendtext")
            expect(legend.filter(has_text="BiLAF boundary picks").first).to_be_visible(timeout=900_000)
            first_s = time.perf_counter() - start
            quick = page.get_by_text("quick layout").count() > 0
            expect(page.get_by_text("quick layout")).to_have_count(0, timeout=900_000)
            expect(legend.filter(has_text="BiLAF boundary picks").first).to_be_visible(timeout=120_000)
            umap_s = time.perf_counter() - start
            browser.close()
    finally:
        server.terminate()
        server.wait(15)
        log.close()
    load_after = os.getloadavg()
    info = None
    for meta in root.glob("features/*/projections/umap-*.json"):
        info = json.loads(meta.read_text())
    print("# First map: Extract features click → drawn BiLAF map (Fashion-MNIST, first 10 000 images)\n")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} CPU cores, load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after (1-minute); Chromium headless, software WebGL")
    print(f"- numba cache: {env.get('NUMBA_CACHE_DIR') or 'in the fresh workspace (cold)'}")
    if seeded:
        print(f"- extraction cache seeded with the first 10 000 rows of {Path(args.seed_features_from).name}: the click finds "
              "the features cached, so this times everything after extraction (extraction itself is not measured here)")
    if info:
        t = info.get("timings") or {}
        print(f"- UMAP map (child process): {t.get('total', float('nan')):.1f} s total, layout {t.get('umap', float('nan')):.1f} s, "
              f"{info.get('params', {}).get('n_epochs') or 'auto'} epochs setting")
    print()
    print("| step | seconds |")
    print("|---|---|")
    print(f"| click → BiLAF map drawn{' (quick layout)' if quick else ''} | **{first_s:.1f}** |")
    print(f"| click → UMAP map drawn | {umap_s:.1f} |")
    return 0


def during_jobs_bench(args) -> int:
    """Select-page rerun times (AppTest) while background work runs in this process."""
    import shutil
    import tempfile
    import threading

    from streamlit.testing.v1 import AppTest

    from bilaf_core import projection
    from bilaf_core.features import import_embeddings
    from bilaf_core.workspace import Workspace

    n = args.n if args.n != 60_000 else 30_000
    root = Path(tempfile.mkdtemp(prefix="bilaf-during-"))
    os.environ["BILAF_WORKSPACE"] = str(root)
    ws = Workspace(root)
    features, labels = synthetic_pool(n, args.dim, args.seed)
    np.save(root / "f.npy", features)
    np.save(root / "l.npy", labels)
    feature_dir = import_embeddings(root / "f.npy", labels_path=root / "l.npy", out_dir=Path(ws.features_root) / "pool")
    ws.register_feature_set(feature_dir)
    small = features[:2000]
    t = time.perf_counter()
    projection.compute_projection(small)  # compile UMAP's numba kernels once, as a running server has
    warm_s = time.perf_counter() - t

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.switch_page("pages/select.py")
    at.run()

    def page_times(while_alive: threading.Thread | None, runs: int = 10) -> list[float]:
        """One rerun every half second (a user clicking), timed, until the background work ends."""
        out = []
        while (while_alive is None and len(out) < runs) or (while_alive is not None and while_alive.is_alive()):
            t0 = time.perf_counter()
            at.run()
            out.append(time.perf_counter() - t0)
            if at.exception:
                raise RuntimeError(at.exception[0].value)
            time.sleep(0.5)
        return out

    def clear_map():
        shutil.rmtree(feature_dir / projection.PROJECTION_DIR, ignore_errors=True)

    def background(fn) -> threading.Thread:
        thread = threading.Thread(target=fn, daemon=True)
        thread.start()
        time.sleep(1.0)  # past start-up, into the heavy part
        return thread

    rows = [("nothing", page_times(None), None)]
    clear_map()
    t = time.perf_counter()
    job = background(lambda: projection.project_feature_set(feature_dir, isolate=False))
    rows.append(("UMAP map in a worker thread (in-process)", page_times(job), time.perf_counter() - t))
    clear_map()
    t = time.perf_counter()
    job = background(lambda: projection.project_feature_set(feature_dir, isolate=True))
    rows.append(("UMAP map in a child process (isolate=True, the app's way)", page_times(job), time.perf_counter() - t))
    if Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        from bilaf_core.features import extract_features

        t = time.perf_counter()
        job = background(lambda: extract_features("fashion-mnist", "efficientnet-lite0", limit=5000,
                                                  cache_root=root / "extract", out_dir=None))
        rows.append(("extracting 5 000 Fashion-MNIST images (worker thread)", page_times(job), time.perf_counter() - t))

    print(f"# Page reruns while background jobs run — {n:,} x {args.dim} pool\n")
    print(f"- the Select page rerun by Streamlit's AppTest every 0.5 s in the server's process; UMAP kernels compiled "
          f"beforehand ({warm_s:.0f} s)")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}\n")
    print("| background work | job took (s) | page reruns | median (s) | 90th percentile (s) | slowest (s) |")
    print("|---|---|---|---|---|---|")
    for what, times, took in rows:
        print(f"| {what} | {'—' if took is None else f'{took:.0f}'} | {len(times)} | {np.median(times):.2f} | "
              f"**{np.percentile(times, 90):.2f}** | {max(times):.2f} |")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    from bench._script import run

    run(main)
