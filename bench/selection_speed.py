"""Selection speed and memory: BiLAF's boundary stage vs the public reference, and ActiveFT.

Prints markdown tables.  Every BiLAF figure is a *whole process* (`python -m bilaf_core select`),
start-up, loading and writing included, with its peak resident memory — the same way the
reference script is timed.

    python bench/selection_speed.py                          # 50 000 x 384 pool, ours only
    python bench/selection_speed.py --reference-script PATH  # + the public density_cluster.py
    python bench/selection_speed.py --imagenet               # + 1 281 167 x 384, 6 405 -> 12 811
    python bench/selection_speed.py --activeft               # + ActiveFT per-iteration cost

The pools are synthetic: Gaussian clusters (seeded) so that the clusters BiLAF finds have the
uneven sizes real features give.  Core indices are a seeded random choice (the boundary stage's
cost does not depend on how the cores were found).  With --reference-script, our
`--compat reference` picks are also checked for exact equality with the reference's picks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/selection_speed.py` from anywhere


def make_pool(path: Path, n: int, dim: int, seed: int, n_modes: int = 1000) -> Path:
    """Write a clustered float32 pool to `path` chunk by chunk (ImageNet scale fits in memory
    only once)."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    modes = rng.normal(0, 1, (n_modes, dim)).astype(np.float32)
    weights = rng.dirichlet(np.full(n_modes, 2.0))
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
    chunk = 200_000
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        which = rng.choice(n_modes, size=m, p=weights)
        out[start : start + m] = modes[which] + rng.normal(0, 0.45, (m, dim)).astype(np.float32)
    out.flush()
    del out
    os.replace(tmp, path)
    return path


def run_process(cmd: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """Run a command; return (wall seconds, peak RSS in GB of that child, stdout)."""
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "dt = time.perf_counter() - t\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "sys.stdout.write(p.stdout)\n"
        "sys.stderr.write(p.stderr)\n"
        "print(f'@@ {dt} {rss}')\n"
        "sys.exit(p.returncode)\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    last = [line for line in proc.stdout.splitlines() if line.startswith("@@ ")][-1].split()
    return float(last[1]), float(last[2]) / 1024 / 1024, proc.stdout


def ours(features: Path, cores: Path, budget: int, out: Path, compat: bool = False):
    cmd = [sys.executable, "-m", "bilaf_core", "select", "--features", str(features), "--method", "bilaf",
           "--core-indices", str(cores), "--budget", str(budget), "--out", str(out)]
    if compat:
        cmd += ["--compat", "reference"]
    return run_process(cmd, cwd=ROOT)


def reference(script: Path, features: Path, cores: Path, n_cores: int, budget: int, workdir: Path):
    """The public script reads features with a label column appended and writes
    Density_{budget}_from_ActiveFT{K}.json into --output_dir."""
    with_labels = workdir / f"{features.stem}_with_labels.npy"
    if not with_labels.exists():
        x = np.load(features)
        np.save(with_labels, np.concatenate([x, np.zeros((x.shape[0], 1), np.float32)], axis=1))
    out_dir = workdir / "reference_out"
    cmd = [sys.executable, str(script), "--features_inputs", str(with_labels), "--indices_file_name", str(cores),
           "--cur_number", str(n_cores), "--budget", str(budget), "--output_dir", str(out_dir)]
    wall, rss, _ = run_process(cmd, cwd=script.parent)
    picks = json.loads((out_dir / f"Density_{budget}_from_ActiveFT{n_cores}.json").read_text())
    return wall, rss, picks


def boundary_table(args, workdir: Path):
    features = make_pool(workdir / "pool_50000x384.npy", 50_000, 384, seed=0)
    rows = []
    for n_cores, budget in ((50, 500), (250, 1000)):
        cores = workdir / f"cores_{n_cores}.json"
        ids = np.random.default_rng(n_cores).choice(50_000, n_cores, replace=False)
        cores.write_text(json.dumps([int(i) for i in ids]))
        t_ours, m_ours, _ = ours(features, cores, budget, workdir / "ours.json")
        t_compat, m_compat, _ = ours(features, cores, budget, workdir / "compat.json", compat=True)
        row = {"case": f"{n_cores} cores -> {budget} picks", "ours": t_ours, "ours_gb": m_ours, "compat": t_compat}
        if args.reference_script:
            t_ref, m_ref, ref_picks = reference(Path(args.reference_script), features, cores, n_cores, budget, workdir)
            compat_picks = json.loads((workdir / "compat.json").read_text())
            row.update(reference=t_ref, reference_gb=m_ref, identical=compat_picks == ref_picks)
        rows.append(row)
    print("\n### BiLAF boundary stage, 50 000 x 384 pool (whole processes)\n")
    if args.reference_script:
        print("| case | reference | ours (default) | speed-up | ours (compat=reference) | speed-up | compat picks == reference picks | peak RSS ours / reference |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['case']} | {r['reference']:.2f} s | {r['ours']:.2f} s | {r['reference'] / r['ours']:.0f}x | "
                  f"{r['compat']:.2f} s | {r['reference'] / r['compat']:.1f}x | {r['identical']} | {r['ours_gb']:.2f} / {r['reference_gb']:.2f} GB |")
    else:
        print("| case | ours (default) | ours (compat=reference) | peak RSS |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['case']} | {r['ours']:.2f} s | {r['compat']:.2f} s | {r['ours_gb']:.2f} GB |")


def imagenet_table(workdir: Path):
    n, budget, n_cores = 1_281_167, 12_811, 6_405
    t = time.perf_counter()
    features = make_pool(workdir / f"pool_{n}x384.npy", n, 384, seed=1, n_modes=5000)
    made = time.perf_counter() - t
    cores = workdir / "cores_imagenet.json"
    cores.write_text(json.dumps([int(i) for i in np.random.default_rng(7).choice(n, n_cores, replace=False)]))
    wall, rss, out = ours(features, cores, budget, workdir / "ours_imagenet.json")
    print(f"\n### ImageNet scale: {n} x 384, {n_cores} cores -> {budget} picks (pool written in {made:.0f} s)\n")
    print("| stage timings (from the CLI) | whole process | peak RSS |")
    print("|---|---|---|")
    print(f"| {out.strip().splitlines()[-2] if len(out.strip().splitlines()) > 1 else out.strip()} | {wall:.1f} s | {rss:.2f} GB |")


def activeft_table(workdir: Path):
    import torch

    from bilaf_core.selection import run_selection

    print("\n### ActiveFT: time per iteration vs its unavoidable matrix product\n")
    print("| device | pool | B | per iteration | S x D @ D x B product alone | ratio |")
    print("|---|---|---|---|---|---|")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for n, budget in ((50_000, 250), (50_000, 1000)):
            x = np.load(make_pool(workdir / "pool_50000x384.npy", 50_000, 384, seed=0))[:n]
            iters = 20
            sel = run_selection("activeft", x, budget, iterations=iters, device=device)
            per_iter = sel.timings["optimise"] / iters
            feats = torch.nn.functional.normalize(torch.from_numpy(x).to(device), dim=1)
            cents = feats[:budget].clone()
            reps = 5
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(reps):
                (feats @ cents.T).max(dim=1)
            if device == "cuda":
                torch.cuda.synchronize()
            product = (time.perf_counter() - t) / reps
            print(f"| {device} | {n} x 384 | {budget} | {per_iter * 1000:.1f} ms | {product * 1000:.1f} ms | {per_iter / product:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-script", help="path to the public BiLAF density_cluster.py (not shipped with this project)")
    parser.add_argument("--imagenet", action="store_true", help="also run the ImageNet-scale boundary stage (~2 GB pool file)")
    parser.add_argument("--activeft", action="store_true", help="also time ActiveFT iterations")
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "out"), help="where pools and picks are written")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024**3:.0f} GB RAM, Python {platform.python_version()}")
    boundary_table(args, workdir)
    if args.imagenet:
        imagenet_table(workdir)
    if args.activeft:
        activeft_table(workdir)


if __name__ == "__main__":
    from bench._script import run

    run(main)
