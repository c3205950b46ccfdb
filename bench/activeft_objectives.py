"""ActiveFT's two objectives on blobs in a cone: where do the centroids go?

    python bench/activeft_objectives.py                 # 10 000 x 128, 20 blobs, B = 20, 3 seeds
    python bench/activeft_objectives.py --lr 1e-2       # the same with a 10x larger step

Real backbone features occupy a cone (every pair has a positive cosine).  This builds such a
pool — blob centres scattered around one axis, samples around the centres, all L2-normalised —
and runs `activeft` with each objective (`published`, the default; `paper-equation`, the
paper's Eq. 11 taken literally), printing per objective (mean over seeds):

* picks identical to their random start sample (the centroid never left it);
* centroids that own < 10 samples at the end (they left the data);
* mean centroid-centroid cosine (how far apart the optimiser pushed them);
* mean angle each centroid moved from its start, in degrees;
* blobs covered by the picks (of the pool's blobs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bilaf_core.selection import run_selection  # noqa: E402


def cone_pool(seed: int, n: int, dim: int, n_blobs: int, centre_spread: float, noise: float):
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=dim)
    axis /= np.linalg.norm(axis)
    centres = axis + centre_spread * rng.normal(size=(n_blobs, dim)) / np.sqrt(dim)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, n_blobs, size=n)
    x = centres[labels] + noise * rng.normal(size=(n, dim)) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels, centres


def measure(x, labels, budget, seed, objective, lr, temperature):
    start = time.perf_counter()
    sel = run_selection("activeft", x, budget, seed=seed, objective=objective, lr=lr, temperature=temperature, device="cpu")
    seconds = time.perf_counter() - start
    cents = sel.diagnostics["centroids"].astype(np.float64)
    init = sel.diagnostics["init_indices"]
    owners = np.argmax(x @ cents.T, axis=1)
    owned = np.bincount(owners, minlength=budget)
    gram = cents @ cents.T
    off = ~np.eye(budget, dtype=bool)
    start_dirs = x[init].astype(np.float64)
    moved = np.degrees(np.arccos(np.clip(np.sum(start_dirs * cents, axis=1), -1, 1)))
    return {
        "same_as_start": int((sel.indices == init).sum()),
        "owning_lt10": int((owned < 10).sum()),
        "mean_cos": float(gram[off].mean()),
        "moved_deg": float(moved.mean()),
        "blobs": len(set(labels[sel.indices].tolist())),
        "seconds": seconds,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--blobs", type=int, default=20)
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--centre-spread", type=float, default=1.0, help="blob centres' scatter around the cone axis")
    parser.add_argument("--noise", type=float, default=0.35, help="samples' scatter around their centre")
    args = parser.parse_args(argv)
    x, labels, centres = cone_pool(0, args.n, args.dim, args.blobs, args.centre_spread, args.noise)
    sample_cos = x[:2000] @ x[:2000].T
    centre_cos = centres @ centres.T
    print(f"pool: {args.n} x {args.dim}, {args.blobs} blobs in a cone; centre-centre cosine mean "
          f"{centre_cos[~np.eye(args.blobs, dtype=bool)].mean():.2f}; sample-sample cosine min {sample_cos.min():.2f}, "
          f"mean {sample_cos.mean():.2f}")
    print(f"B = {args.budget}, tau = {args.temperature}, lr = {args.lr}, 300 iterations, seeds 0..{args.seeds - 1}; load {os.getloadavg()[0]:.1f}\n")
    print("| | published (default) | paper-equation |")
    print("|---|---:|---:|")
    results = {obj: [measure(x, labels, args.budget, s, obj, args.lr, args.temperature) for s in range(args.seeds)]
               for obj in ("published", "paper-equation")}
    rows = [("picks identical to their random start sample", "same_as_start", "{:.1f} / %d" % args.budget),
            ("centroids that own < 10 samples at the end", "owning_lt10", "{:.1f}"),
            ("mean centroid-centroid cosine", "mean_cos", "{:.2f}"),
            ("mean angle a centroid moved from its start", "moved_deg", "{:.0f}°"),
            ("blobs covered by the picks (of %d)" % args.blobs, "blobs", "{:.1f}"),
            ("seconds per run", "seconds", "{:.1f}")]
    for title, key, fmt in rows:
        cells = [fmt.format(np.mean([r[key] for r in results[obj]])) for obj in ("published", "paper-equation")]
        print(f"| {title} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    from bench._script import run

    run(main)
