"""``bench``: selection quality — methods × budgets × seeds, each scored by a linear probe."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ORDER = 45


def add_parser(subparsers) -> None:
    from ..benchmark import DEFAULT_BUDGETS, DEFAULT_IMBALANCE_RATIO, REFERENCE_KEY

    parser = subparsers.add_parser(
        "bench",
        help="benchmark selection methods: linear-probe test accuracy over budgets and seeds",
        description=(
            "Run selection methods at several budgets and seeds on a labelled feature set and score each "
            "selection with a linear probe on the test split (labels are read only to score).  Prints a "
            "markdown table per pool: rows = methods, columns = budgets, cells = mean ± std test accuracy "
            "in %, then the selection time per method."),
    )
    parser.add_argument("--features", required=True, help="the pool: a feature-set folder with labels (from extract or import)")
    parser.add_argument("--budgets", default=",".join(map(str, DEFAULT_BUDGETS)),
                        help="comma-separated budgets (default %(default)s)")
    parser.add_argument("--methods", default="all",
                        help=f"'all' (every method, plus {REFERENCE_KEY} = bilaf --compat reference) or a comma-separated list (default all)")
    parser.add_argument("--seeds", default="3", help="number of seeds, 3 = seeds 0,1,2; or a list such as 0,5,7 (one seed: 2,) (default 3)")
    parser.add_argument("--test-features", help="the test split's feature set (default: the dataset's test split, found by "
                        "the evaluation; required for --pool biased)")
    parser.add_argument("--pool", default="full", choices=("full", "biased", "both"),
                        help="full: the feature set as given; biased: the same pool with a class imbalance, fisher "
                        "matching the test features (default full)")
    parser.add_argument("--imbalance-ratio", type=int, default=DEFAULT_IMBALANCE_RATIO,
                        help="biased pool: each under-represented class keeps 1/ratio of its samples (default %(default)s)")
    parser.add_argument("--mode", default="linear-probe", choices=("linear-probe", "knn"),
                        help="how a selection is scored (default linear-probe)")
    parser.add_argument("--out", help="results CSV, one row per selection, written as each finishes; rows already in it "
                        "(same features) are not run again, so an interrupted run continues")
    parser.add_argument("--plot", help="also draw accuracy vs budget (one panel per pool) to this PNG or SVG")
    parser.add_argument("--record", action="store_true",
                        help="also record every full-pool selection and its evaluation in the workspace (see --workspace)")
    parser.add_argument("--quiet", action="store_true", help="no per-selection lines on stderr")
    parser.set_defaults(func=run)


def run(args) -> int:
    from .. import benchmark as bm
    from ..errors import BilafError
    from ..features import load_feature_set

    # Everything that can be wrong with the input is checked before the first selection runs.
    variants = bm.resolve_methods(args.methods)
    budgets = bm.parse_budgets(args.budgets)
    seeds = bm.parse_seeds(args.seeds)
    pools = bm.parse_pools(args.pool)
    if args.imbalance_ratio < 1:
        raise BilafError(f"--imbalance-ratio must be at least 1; got {args.imbalance_ratio}")
    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".svg"):
        raise BilafError(f"--plot must name a .png or .svg file; got {args.plot}")
    features = Path(args.features)
    if not features.exists():
        raise BilafError(f"--features {features} does not exist; extract features first (python -m bilaf_core extract …)")
    fs = load_feature_set(features)
    if fs.labels is None:
        raise BilafError(f"{fs.path} has no labels; the benchmark scores selections with them — extract a labelled "
                         "dataset, or import embeddings with their labels")
    if args.test_features is not None and not Path(args.test_features).exists():
        raise BilafError(f"--test-features {args.test_features} does not exist; extract the test split first "
                         "(python -m bilaf_core extract --split test …)")
    too_big = [b for b in budgets if b > fs.n]
    if too_big:
        raise BilafError(f"budget {too_big[0]} is larger than the pool ({fs.n} samples); lower --budgets")
    recorder = _Recorder(fs.path) if args.record else None

    key = fs.meta.get("key", "")
    rows = bm.read_results(args.out) if args.out else []
    done = bm.completed_keys(rows, key)
    started = time.perf_counter()
    for row in bm.run_benchmark(fs.path, methods=[v.key for v in variants], budgets=budgets, seeds=seeds, pools=pools,
                                test_feature_dir=args.test_features, imbalance_ratio=args.imbalance_ratio,
                                eval_mode=args.mode, done=done):
        rows.append(row)
        if args.out:
            bm.write_results(args.out, rows)
        if recorder is not None and row.pool == "full" and row.status == "ok":
            recorder.record(row)
        if not args.quiet:
            result = f"{100 * row.accuracy:.1f}%" if row.status == "ok" else f"error: {row.error}"
            print(f"[{time.perf_counter() - started:7.1f}s] {row.pool} B={row.budget} seed {row.seed} {row.label}: {result} "
                  f"(select {row.selection_s:.2f}s, eval {row.eval_s:.2f}s)", file=sys.stderr, flush=True)
    wanted = {v.label for v in variants}
    shown = [r for r in rows if r.label in wanted and r.budget in budgets and r.seed in seeds and r.features_key == key]
    for pool in pools:
        label = {"full": "full pool", "biased": f"biased pool ({args.imbalance_ratio}x imbalance)"}[pool]
        n_pool = next((r.n_pool for r in shown if r.pool == pool), 0)
        print(f"\n{label}, {n_pool:,} samples: {args.mode} test accuracy, % (mean ± std over {len(seeds)} seeds)\n")
        print(bm.accuracy_table(shown, pool))
        print(f"\n{label}: selection time per method (mean over seeds)\n")
        print(bm.time_table(shown, pool))
    failed = [r for r in shown if r.status != "ok"]
    for r in failed:
        print(f"{r.pool} {r.label} B={r.budget} seed {r.seed} failed: {r.error}", file=sys.stderr)
    if args.plot:
        bm.plot_results(shown, args.plot, pools=pools)
    if args.out:
        print(f"\nresults: {args.out}" + (f", plot: {args.plot}" if args.plot else ""))
    return 0


class _Recorder:
    """``--record``: every full-pool selection of the run and its evaluation go into the workspace
    (biased-pool selections index a temporary sub-pool, so they are left out)."""

    def __init__(self, feature_dir):
        from ..workspace import Workspace

        self.workspace = Workspace()
        self.fs_id = self.workspace.register_feature_set(feature_dir)

    def record(self, row) -> str:
        name = f"bench {row.label} B={row.budget} seed {row.seed}"
        sel_id = self.workspace.save_selection(row.selection, self.fs_id, name=name)
        self.workspace.save_evaluation(sel_id, row.evaluation)
        return sel_id
