"""Selection quality: every method × budgets × seeds on the offline default, linear-probe accuracy.

    python bench/quality.py                     # low-budget regime: 60 000-image pool, B = 10…500, 3 seeds, both pools
    python bench/quality.py --regime papers     # the papers' regime: B = 0.5 %, 1 %, 2 % of the pool, 3 seeds, both pools
    python bench/quality.py --validation --methods bilaf-k0.1,bilaf-k0.5,bilaf-khalf --budgets 50,100,200,0.5%,1%,2% --pool full
                                                # choose a default on the validation split of the training pool
    python bench/quality.py --quick             # a few minutes: first 10 000 train images, B = 10…100, 2 seeds
    python bench/quality.py --tables [--regime papers]   # only reprint the tables and redraw the plot from the CSV

The pool is Fashion-MNIST's training split, the evaluation its test split, both as
EfficientNet-Lite0 features (extracted once and cached in the workspace).  Two pools: the full
training split, and the same split with a 100× class imbalance (see ``bilaf_core/benchmark.py``)
where ``fisher`` matches the unlabeled test features.  Every selection is scored by the linear
probe of ``bilaf_core.finetune`` on the whole test split.

``--validation`` never touches the test split: a stratified sixth of the training split (10 000
images) is held out, the methods select from the other 50 000, and the held-out labels score them.
Defaults are chosen there (and only there).

Output (``--out``, default ``bench/out/``): ``<name>.csv`` (one row per selection, written as each
finishes) and ``<name>.png``, name = ``quality`` / ``quality-papers`` (+ ``-validation``).  The run
is resumable: rows already in the CSV (same features) are skipped, so an interrupted run continues
where it stopped.  Prints markdown tables: accuracy per pool (mean ± std over seeds, in %),
selection time per method, and BiLAF's paired verdict against ActiveFT, random, k-means and
TypiClust (per-seed differences with 95 % intervals).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # other work shares the cores (see tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bilaf_core import benchmark as bm  # noqa: E402
from bilaf_core.errors import BilafError  # noqa: E402

from _machine import cpu_model  # noqa: E402 — bench/_machine.py (this script's folder is on sys.path)

FULL = {"budgets": "10,20,50,100,200,500", "seeds": "3", "limit": None, "name": "quality"}
PAPERS = {"budgets": "0.5%,1%,2%", "seeds": "3", "limit": None, "name": "quality-papers"}
#: what BiLAF's paired verdict compares it with
VERDICT_AGAINST = ("activeft", "random", "kmeans", "typiclust", "bilaf (compat reference)", "bilaf (paper equation)")
#: Fashion-MNIST's classes
N_CLASSES = 10
QUICK = {"budgets": "10,20,50,100", "seeds": "2", "limit": 10_000, "name": "quality-quick"}


def extract(split: str, limit, log) -> Path:
    from bilaf_core.features import extract_features

    last = [0.0]

    def progress(fraction, message):
        if time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            log(f"  {split}: {message}")

    limit = limit if split == "train" else None
    return extract_features("fashion-mnist", "efficientnet-lite0", split=split, limit=limit, progress=progress)


def validation_sets(train_dir, folder: Path):
    """The validation split of the training pool as two feature sets: (pool, held-out)."""
    from bilaf_core.features import load_feature_set

    fs = load_feature_set(train_dir)
    pool_idx, held_idx = bm.validation_split(fs.labels)
    rule = {"rule": "validation split", "fraction": bm.VALIDATION_FRACTION, "seed": 0}
    pool_dir = bm.write_subset(fs, pool_idx, folder / "pool", key_suffix="valpool", rule={**rule, "part": "pool"})
    held_dir = bm.write_subset(fs, held_idx, folder / "held-out", key_suffix="valheld", rule={**rule, "part": "held-out"})
    return pool_dir, held_dir


def all_labels_accuracy(train_dir, test_dir, pools, imbalance_ratio) -> dict:
    """The probe trained on *every* pool image (all labels): the ceiling the budgets climb to.
    The biased pool is the one of seed 0."""
    import tempfile

    import numpy as np

    from bilaf_core.features import load_feature_set
    from bilaf_core.finetune import evaluate_selection

    fs = load_feature_set(train_dir)
    out = {}
    for pool in pools:
        if pool == "full":
            out[pool] = (evaluate_selection(train_dir, np.arange(fs.n), test_feature_dir=test_dir).accuracy, fs.n)
        else:
            idx = bm.biased_pool(fs.labels, ratio=imbalance_ratio, seed=0)
            with tempfile.TemporaryDirectory() as tmp:
                folder = bm.write_biased_pool(fs, idx, Path(tmp) / "biased", ratio=imbalance_ratio, seed=0)
                out[pool] = (evaluate_selection(folder, np.arange(idx.size), test_feature_dir=test_dir).accuracy, idx.size)
    return out


def print_tables(rows, pools, out=sys.stdout) -> None:
    for pool in pools:
        if not any(r.pool == pool for r in rows):
            continue
        title = {"full": "Full pool", "biased": "Biased pool"}[pool]
        sample = next(r for r in rows if r.pool == pool)
        extra = f", {sample.imbalance_ratio}x imbalance" if pool == "biased" else ""
        scored = bm.scoring_name(r for r in rows if r.pool == pool) + (" (cpu-quick)" if sample.eval_mode == "finetune" else "")
        print(f"\n#### {title} ({sample.n_pool:,} images{extra}) — {scored} test accuracy, % (mean ± std over seeds)\n", file=out)
        print(bm.accuracy_table(rows, pool), file=out)
        print(f"\n#### {title} — selection time per method (mean over seeds)\n", file=out)
        print(bm.time_table(rows, pool), file=out)
        print(f"\n#### {title} — classes among the picks (mean over seeds, of {N_CLASSES})\n", file=out)
        print(bm.mean_table(rows, pool, "classes_covered"), file=out)
        if pool == "biased":
            print(f"\n#### {title} — picks from the under-represented classes (mean over seeds)\n", file=out)
            print(bm.mean_table(rows, pool, "minority_picks"), file=out)
            print(f"\n#### {title} — test accuracy on the under-represented classes, % (mean over seeds)\n", file=out)
            print(bm.mean_table([dataclasses.replace(r, minority_accuracy=100 * r.minority_accuracy) for r in rows],
                                pool, "minority_accuracy"), file=out)
        if any(r.label == "bilaf" for r in rows if r.pool == pool):
            print(f"\n#### {title} — BiLAF's paired verdict: bilaf minus each method, points, mean over seeds [95 % interval]\n", file=out)
            print(bm.paired_table(rows, pool, "bilaf", [a for a in VERDICT_AGAINST if any(r.label == a for r in rows)]), file=out)
    errors = [r for r in rows if r.status != "ok"]
    if errors:
        print(f"\n{len(errors)} selections failed:", file=out)
        for r in errors:
            print(f"  {r.pool} {r.label} B={r.budget} seed {r.seed}: {r.error}", file=out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="first 10 000 training images, B = 10,20,50,100, 2 seeds")
    parser.add_argument("--regime", choices=("low", "papers"), default="low",
                        help="low: B = 10…500 (default); papers: B = 0.5 %%, 1 %%, 2 %% of the pool, as in the ActiveFT/BiLAF tables")
    parser.add_argument("--mode", choices=("linear-probe", "finetune"), default="linear-probe",
                        help="score each selection with the linear probe (default) or by finetuning the backbone (cpu-quick preset)")
    parser.add_argument("--min-steps", type=int, default=None,
                        help="with --mode finetune: train at least this many optimiser steps (the training length follows the budget)")
    parser.add_argument("--validation", action="store_true",
                        help="select from 5/6 of the training split and score on the held-out sixth (choose defaults here, never on the test split)")
    parser.add_argument("--budgets", help=f"comma-separated (default {FULL['budgets']}; --quick {QUICK['budgets']})")
    parser.add_argument("--seeds", help="a count (3 = seeds 0,1,2) or a list (0,5,7; one seed: 2,) (default 3; --quick 2)")
    parser.add_argument("--methods", default="all", help="'all' (every method + bilaf-reference) or a comma-separated list")
    parser.add_argument("--pool", default="both", choices=("full", "biased", "both"))
    parser.add_argument("--imbalance-ratio", type=int, default=bm.DEFAULT_IMBALANCE_RATIO)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"), help="folder for the CSV and the plot (default bench/out)")
    parser.add_argument("--tables", action="store_true", help="do not run: print the tables and draw the plot from the CSV")
    parser.add_argument("--ceiling", action="store_true", help="with --tables: also compute the all-labels ceiling (the full run always does)")
    args = parser.parse_args(argv)
    preset = dict(QUICK if args.quick else (PAPERS if args.regime == "papers" else FULL))
    if args.min_steps is not None and args.mode != "finetune":
        raise BilafError("--min-steps goes with --mode finetune")
    eval_options = {}
    if args.mode == "finetune":
        # No default yet: the training length is to be chosen on the validation split
        # (--validation --mode finetune --methods random --min-steps S for a few S), never on the test split.
        if args.min_steps is None:
            raise BilafError("--mode finetune needs --min-steps S (choose S on the validation split first: "
                             "--validation --mode finetune --methods random --budgets 1% --min-steps S for a few S)")
        min_steps = args.min_steps
        eval_options = {"preset": "cpu-quick", "min_steps": min_steps}
        preset["name"] += f"-finetune{min_steps}"
    if args.validation:
        preset["name"] += "-validation"
    budgets = bm.parse_budgets(args.budgets or preset["budgets"])
    seeds = bm.parse_seeds(args.seeds or preset["seeds"])
    pools = bm.parse_pools(args.pool)
    out_dir = Path(args.out)
    csv_path = out_dir / f"{preset['name']}.csv"
    plot_path = out_dir / f"{preset['name']}.png"

    def log(message):
        print(message, flush=True)

    rows = bm.read_results(csv_path)
    if not args.tables:
        log(f"machine: {cpu_model()}, {os.cpu_count()} cores; python {platform.python_version()}")
        started = time.perf_counter()
        train_dir = extract("train", preset["limit"], log)
        test_dir = extract("test", None, log)
        if args.validation:
            train_dir, test_dir = validation_sets(train_dir, out_dir / "validation")
        log(f"features: {train_dir}\n          {test_dir}  ({time.perf_counter() - started:.0f} s)")
        from bilaf_core.features import load_feature_set

        train_fs = load_feature_set(train_dir)
        key = train_fs.meta.get("key", "")
        stale = [r for r in rows if r.features_key != key]
        if stale:
            log(f"{csv_path}: {len(stale)} rows from other features ({stale[0].features_key}) are kept but not reused")
        done = bm.completed_keys(rows, key)
        variants = bm.resolve_methods(args.methods)
        _, total, left = bm.plan_counts(train_fs.labels, variants, budgets, seeds, pools, done,
                                        imbalance_ratio=args.imbalance_ratio)
        log(f"plan: {len(variants)} methods x {len(budgets)} budgets x {len(seeds)} seeds ({','.join(map(str, seeds))}) x {len(pools)} pools = {total} rows; "
            f"{total - left} already in {csv_path}, {left} to run")
        run_started = time.perf_counter()
        finished = 0
        for row in bm.run_benchmark(train_dir, methods=args.methods, budgets=budgets, seeds=seeds, pools=pools,
                                    test_feature_dir=test_dir, imbalance_ratio=args.imbalance_ratio, done=done,
                                    eval_mode=args.mode, eval_options=eval_options):
            rows.append(row)
            bm.write_results(csv_path, rows)
            finished += 1
            elapsed = time.perf_counter() - run_started
            result = f"{100 * row.accuracy:5.1f}%" if row.status == "ok" else f"error: {row.error}"
            log(f"[{finished}/{left} {elapsed / 60:5.1f} min] seed {row.seed} {row.pool:6s} B={row.budget:<4d} {row.label:26s} "
                f"{result}  select {row.selection_s:7.2f}s  eval {row.eval_s:5.2f}s  classes {row.classes_covered}"
                + (f"  minority picks {row.minority_picks}" if row.pool == "biased" else ""))
    if not rows:
        raise BilafError(f"{csv_path} holds no results yet; run without --tables first")
    print_tables(rows, pools)
    if (not args.tables or args.ceiling) and not args.validation:
        train_dir = extract("train", preset["limit"], log)
        test_dir = extract("test", None, log)
        for pool, (accuracy, n) in all_labels_accuracy(train_dir, test_dir, pools, args.imbalance_ratio).items():
            log(f"\nceiling, {pool} pool: the probe on all {n:,} pool images labelled reaches {100 * accuracy:.1f}% test accuracy")
    bm.plot_results(rows, plot_path, pools=pools)
    log(f"\nwrote {csv_path} and {plot_path}")
    return 0


if __name__ == "__main__":
    from bench._script import run

    run(main)
