"""Speed and memory of `inspect` (coverage, near-duplicates, gaps, overlap).

Prints a markdown table: per configuration, the in-process stage times of
`bilaf_core.inspect.inspect_selections` (best of --repeat runs, with the processor time of all
its threads — the load-independent part) and one whole process
(`python -m bilaf_core inspect … --out`, start-up, loading and writing included) with its peak
resident memory.  The machine's load average is printed beside the table: on a shared machine
the numbers move with it.

    python bench/inspect_speed.py                       # 60 000 x 384, 1 000 picks (the target: < 5 s)
    python bench/inspect_speed.py --n 200000 --dim 768  # other sizes
    python bench/inspect_speed.py --large               # + 1 000 000 x 768 (3 GB on disk; memory-bound check)

Pools are synthetic Gaussian clusters (seeded, `selection_speed.make_pool`); picks are seeded
random choices (the cost does not depend on how the picks were made).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/inspect_speed.py` from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_model  # noqa: E402
from selection_speed import make_pool, run_process  # noqa: E402


def in_process(features: np.ndarray, picks_files: list[np.ndarray], repeat: int) -> dict:
    from bilaf_core.inspect import inspect_selections

    best = None
    for _ in range(repeat):
        cpu = time.process_time()
        result = inspect_selections(features, picks_files)
        timings = dict(result.report["timings"], cpu=time.process_time() - cpu)
        if best is None or timings["total"] < best["total"]:
            best = timings
    return best


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="in-process runs per row; the best is shown")
    parser.add_argument("--large", action="store_true",
                        help="also 1 000 000 x 768 (writes 3 GB; one whole-process run, its stage times from its report)")
    parser.add_argument("--large-budget", type=int, default=1000, help="picks for --large (default 1 000)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "bilaf-bench"), help="where the pools are written")
    args = parser.parse_args()

    from bilaf_core.selection._ops import gpu_count

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    configs = [(args.n, args.dim, args.budget, 1), (args.n, args.dim, args.budget, 2)]
    if args.large:
        configs += [(1_000_000, 768, args.large_budget, 1)]
    rows = []
    for n, dim, budget, n_files in configs:
        pool_path = make_pool(cache / f"pool-{n}x{dim}.npy", n, dim, seed=0)
        features = np.load(pool_path, mmap_mode="r")
        rng = np.random.default_rng(1)
        picks = [np.sort(rng.choice(n, budget, replace=False)) for _ in range(n_files)]
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "bilaf_core", "inspect", "--features", str(pool_path), "--out", f"{tmp}/report.json"]
            for k, p in enumerate(picks):
                (Path(tmp) / f"p{k}.json").write_text(json.dumps(p.tolist()))
                cmd += ["--picks", f"{tmp}/p{k}.json"]
            cpu = child_cpu_seconds()
            wall, rss, _ = run_process(cmd, cwd=ROOT)
            timings = dict(json.loads((Path(tmp) / "report.json").read_text())["timings"], cpu=child_cpu_seconds() - cpu)
        if n <= 200_000:  # small pools: the best of a few in-process runs (less noise from the load)
            best = in_process(features, picks, args.repeat)
            timings = best if best["total"] < timings["total"] else timings
        rows.append((f"{n:,} x {dim}", n_files, budget, timings, wall, rss))

    load = os.getloadavg()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, faiss GPUs: {gpu_count()}, "
          f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)")
    print()
    print("| pool | picks files | picks each | density s | coverage s | near-dup s | gaps s | inspect total s | CPU s | whole process s | peak RSS GB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for pool, n_files, budget, t, wall, rss in rows:
        print(f"| {pool} | {n_files} | {budget:,} | {t['density']:.2f} | {t['coverage']:.2f} | {t['near_duplicates']:.3f} | "
              f"{t['gaps']:.2f} | {t['total']:.2f} | {t['cpu']:.2f} | {wall:.2f} | {rss:.2f} |")
    print()
    print("CPU s: processor time of all threads (the in-process run, or the whole process for large pools); on an "
          "otherwise idle machine with C cores the wall time is about CPU s / C where the work is matrix products.")
    return 0


if __name__ == "__main__":
    from bench._script import run

    run(main)
