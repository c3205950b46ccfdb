"""Every CUDA path of the project, run for real in one command — prints one table, writes JSON.

    python bench/gpu_check.py --out gpu_check.json          # on a GPU machine: <= 8 min on one H200
    python bench/gpu_check.py --quick                       # smaller sizes, ~1-2 min
    python bench/gpu_check.py --only bilaf,activeft         # some checks
    python bench/gpu_check.py --cpu-smoke                   # every check's code at tiny sizes on the CPU

The checks (issue 12; goals for one H100/H200-class GPU):

============  ==========================================================  ===========================
check         what                                                        goal
============  ==========================================================  ===========================
extract       EfficientNet-Lite0 and ViT-S/16 (random weights, DINO's      ViT-S/16 >= 5 000 img/s;
              shapes) at 224 px, bf16, channels-last, batch sizes tried;   say whether decoding or
              JPEG decoding (DataLoader workers) vs the GPU, end to end    the GPU is the limit
activeft      50 000 x 384, B = 1 000, 300 iterations; 1 281 167 x 384,    <= 1.5 x its own S x D . D x B
              B = 6 405, 100 000 drawn per iteration                       product per iteration
faiss         k-means (1 M x 384, k = 1 000) and exact k-NN through the    identical picks up to float
              GPU faiss build, against the CPU build on the same data      ties
bilaf         1 281 167 x 384, 6 405 cores -> 12 811 picks, the            < 20 s whole process
              assignment on the GPU, as a whole `select` process
finetune      `paper` preset, DINO-shaped ViT-S/16, 1 epoch on 1 000       runs; images/s
              images, bf16
ddp           torchrun with NCCL, world = number of GPUs: extraction and   same features as one process
              one finetune step
============  ==========================================================  ===========================

Each check runs in a child process of its own (a crash, a CUDA error or a time-out is reported
for that check and the others still run) with its share of an overall time budget.  Every GPU
timing is taken between ``torch.cuda.synchronize()`` calls (CUDA events for single products).
The pools are synthetic and seeded: Gaussian clusters of uneven sizes, as bench/selection_speed.py
uses, and generated JPEG photos; backbones use random weights (nothing is downloaded).

Without a CUDA GPU (and without --cpu-smoke) every check is reported as skipped with the reason,
in seconds, and the exit status is 0.  Exit status 1 means a check failed its goal or errored.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does (bilaf_core/backbones.py)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

CHECKS = ("extract", "activeft", "faiss", "bilaf", "finetune", "ddp")
#: seconds each check may take at most in the full run (their sum stays under the 8-minute total)
CHECK_BUDGET = {"extract": 110, "activeft": 70, "faiss": 90, "bilaf": 110, "finetune": 80, "ddp": 90}
TOTAL_BUDGET = 480.0
#: --cpu-smoke's default budget: it is a test of the script, on whatever CPU runs the tests
SMOKE_BUDGET = 1800.0

# Sizes per mode.  "full" is the table; "quick" the same code at about a quarter of the
# work; "cpu-smoke" tiny sizes that run every line on two CPU cores in seconds.
SIZES = {
    "full": dict(
        image_size=224, batches=(128, 256, 512, 1024), timed_batches=10, jpeg_count=4096, jpeg_wh=(500, 375),
        aft_small=(50_000, 384, 1_000, 50_000, 300), aft_large=(1_281_167, 384, 6_405, 100_000, 300),
        faiss_n=1_000_000, faiss_k=1_000, faiss_niter=20, knn_queries=5_000, knn_k=10,
        bilaf=(1_281_167, 384, 6_405, 12_811), bilaf_with_activeft=True, bilaf_iterations=300, compare_rows=100_000,
        ft_train=1_000, ft_test=200, ft_wh=(320, 240), ft_options={}, ft_warm_epochs=4,
        ddp_images=1_024, ddp_test=64, ddp_picks=512, ddp_batch=128, ddp_chunk=256, ddp_workers=None, ddp_ft_options={},
    ),
    "quick": dict(
        image_size=224, batches=(256, 512), timed_batches=6, jpeg_count=1024, jpeg_wh=(500, 375),
        aft_small=(50_000, 384, 1_000, 50_000, 100), aft_large=(1_281_167, 384, 6_405, 100_000, 50),
        faiss_n=250_000, faiss_k=1_000, faiss_niter=10, knn_queries=2_000, knn_k=10,
        bilaf=(1_281_167, 384, 6_405, 12_811), bilaf_with_activeft=False, bilaf_iterations=300, compare_rows=50_000,
        ft_train=1_000, ft_test=200, ft_wh=(320, 240), ft_options={}, ft_warm_epochs=0,
        ddp_images=512, ddp_test=64, ddp_picks=512, ddp_batch=128, ddp_chunk=256, ddp_workers=None, ddp_ft_options={},
    ),
    "cpu-smoke": dict(
        image_size=32, batches=(4, 8), timed_batches=2, jpeg_count=24, jpeg_wh=(64, 48),
        aft_small=(2_000, 32, 20, 2_000, 5), aft_large=(5_000, 32, 50, 1_000, 5),
        faiss_n=5_000, faiss_k=20, faiss_niter=5, knn_queries=200, knn_k=5,
        # the ActiveFT-cores `select` row only repeats run_cli with other flags (the activeft check
        # covers the optimiser): skipped here, it is a 30 s torch start on a busy 2-core machine
        bilaf=(5_000, 32, 20, 60), bilaf_with_activeft=False, bilaf_iterations=5, compare_rows=2_000,
        ft_train=40, ft_test=10, ft_wh=(48, 40), ft_options=dict(image_size=32, batch_size=8, num_workers=0),
        ft_warm_epochs=0,
        ddp_images=16, ddp_test=8, ddp_picks=8, ddp_batch=4, ddp_chunk=4, ddp_workers=0,
        ddp_ft_options=dict(image_size=32, batch_size=4, workers=0),
    ),
}
#: relative distance gap under which two different answers count as a float tie
TIE_RTOL = 1e-3


class Skip(Exception):
    """A check that cannot run here; its message is the reason shown in the table."""


# ---------------------------------------------------------------------------------------------
# Shared helpers (children)
# ---------------------------------------------------------------------------------------------


class Env:
    """What a check gets: its mode, sizes, device, a work folder, and a place for result rows."""

    def __init__(self, name: str, mode: str, workdir: Path):
        self.name, self.mode, self.workdir = name, mode, workdir
        self.sizes = SIZES[mode]
        self.device = "cpu" if mode == "cpu-smoke" else "cuda"
        self.rows: list[dict] = []
        self.details: dict = {}

    @property
    def smoke(self) -> bool:
        return self.mode == "cpu-smoke"

    def row(self, case: str, goal: str, measured: str, passed: bool | None, seconds: float | None = None) -> None:
        """One table row.  `passed` None = no goal (reported only).  In cpu-smoke mode goals are not
        judged (tiny sizes on a CPU): a row that ran is 'ran'."""
        if self.smoke:
            status = "ran"
        else:
            status = "info" if passed is None else ("pass" if passed else "FAIL")
        self.rows.append({"check": self.name, "case": case, "goal": goal, "measured": measured, "status": status,
                          "seconds": None if seconds is None else round(float(seconds), 2)})

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def timed(self, fn):
        """(fn(), wall seconds) with the device synchronised on both sides."""
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - start

    def subprocess_env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.smoke:
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env


def fmt_rate(value: float) -> str:
    return f"{value:,.0f} img/s"


def fmt_n(value: int) -> str:
    return f"{value:,}".replace(",", " ")


def clustered_pool(workdir: Path, n: int, dim: int, seed: int = 0, n_modes: int = 1000) -> np.ndarray:
    """A seeded N x D float32 pool of Gaussian clusters of uneven sizes (memory-mapped, cached in
    `workdir` so that several checks share one file)."""
    path = workdir.parent / f"pool-{n}x{dim}-seed{seed}.npy"
    if not path.exists():
        rng = np.random.default_rng(seed)
        modes = rng.standard_normal((n_modes, dim), dtype=np.float32)
        weights = rng.dirichlet(np.full(n_modes, 2.0))
        tmp = path.with_name(path.stem + ".tmp.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for start in range(0, n, 262_144):
            m = min(262_144, n - start)
            block = rng.standard_normal((m, dim), dtype=np.float32)
            block *= np.float32(0.45)
            block += modes[rng.choice(n_modes, size=m, p=weights)]
            out[start:start + m] = block
        out.flush()
        del out
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def _write_jpeg(job) -> None:
    path, seed, width, height = job
    from PIL import Image

    rng = np.random.default_rng(seed)
    # smooth colour fields plus fine noise: photo-like JPEG sizes and decode cost (pure noise
    # would compress badly, flat colour too well)
    coarse = rng.integers(0, 256, (max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def jpeg_folder(root: Path, count: int, size: tuple, *, classes: int = 10, seed: int = 0, test: int = 0) -> Path:
    """An ImageNet-layout folder: root/train/<class>/*.jpg (and root/test/… when `test`)."""
    from concurrent.futures import ProcessPoolExecutor

    from bilaf_core.backbones import cpu_count

    jobs = []
    for split, n, offset in (("train", count, 0), ("test", test, 10_000_000)):
        for i in range(n):
            folder = root / split / f"class{i % classes:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((folder / f"img{i:07d}.jpg", seed * 100_000_000 + offset + i, size[0], size[1]))
    workers = max(1, cpu_count())
    if workers == 1 or len(jobs) < 64:
        for job in jobs:
            _write_jpeg(job)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_jpeg, jobs, chunksize=64))
    return root


def product_seconds(env: Env, rows: int, dim: int, budget: int, repeat: int = 20) -> float:
    """Median time of one float32 (rows x dim) @ (dim x budget) product on the check's device."""
    import torch

    dev = torch.device(env.device)
    a = torch.randn(rows, dim, device=dev)
    b = torch.randn(budget, dim, device=dev)
    times = []
    for i in range(repeat + 3):
        if env.device == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b.T
            stop.record()
            stop.synchronize()
            seconds = start.elapsed_time(stop) / 1000.0
        else:
            tick = time.perf_counter()
            a @ b.T
            seconds = time.perf_counter() - tick
        if i >= 3:
            times.append(seconds)
    return float(np.median(times))


def run_cli(env: Env, args: list[str], *, timeout: float, torchrun: int = 0, log_name: str) -> tuple[float, str]:
    """Run ``python -m …`` (or under torchrun with `torchrun` processes); (wall seconds, stdout).
    Raises RuntimeError with the output's tail on a non-zero exit."""
    if torchrun:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}", *args]
    else:
        command = [sys.executable, *args]
    tick = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env.subprocess_env(), capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - tick
    (env.workdir / f"{log_name}.log").write_text(f"$ {' '.join(command)}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + "\n" + proc.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"{' '.join(args[:3])}… exited with {proc.returncode}:\n{tail}")
    return seconds, proc.stdout


def relative_gap(a: np.ndarray, b: np.ndarray) -> float:
    """|a − b| / max(|a|, |b|, tiny), elementwise max."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    return float((np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-12)).max())


# ---------------------------------------------------------------------------------------------
# extract
# ---------------------------------------------------------------------------------------------


def check_extract(env: Env) -> None:
    import torch

    from bilaf_core.backbones import build_backbone, cpu_count, get_backbone_spec, resolve_weights
    from bilaf_core.datasets import get_dataset
    from bilaf_core.features import _iter_batches, _to_model_input, extract_features, load_feature_set

    s = env.sizes
    size, on_gpu = s["image_size"], env.device == "cuda"
    dev = torch.device(env.device)
    rng = np.random.default_rng(0)
    best = {}
    for name in ("efficientnet-lite0", "dino-vits16"):
        spec = get_backbone_spec(name)
        model = build_backbone(spec, resolve_weights(spec, "random"), image_size=size)
        module = model.module.to(dev).to(memory_format=torch.channels_last)
        per_batch = {}
        for batch in s["batches"]:
            pixels = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)

            def pipeline():  # what extraction does per batch once the images are decoded
                x = _to_model_input(pixels, size, model.mean, model.std, dev, channels_last=True, pin=on_gpu)
                with torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else torch.autocast("cpu", enabled=False):
                    return module(x).float().cpu()

            x_dev = _to_model_input(pixels, size, model.mean, model.std, dev, channels_last=True, pin=False)

            def model_only():
                with torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else torch.autocast("cpu", enabled=False):
                    return module(x_dev)

            try:
                with torch.inference_mode():
                    for _ in range(2):
                        pipeline()
                    _, seconds = env.timed(lambda: [pipeline() for _ in range(s["timed_batches"])])
                    model_only()
                    _, model_seconds = env.timed(lambda: [model_only() for _ in range(s["timed_batches"])])
            except torch.cuda.OutOfMemoryError:
                per_batch[batch] = {"error": "out of memory"}
                torch.cuda.empty_cache()
                break
            per_batch[batch] = {"pipeline_img_s": batch * s["timed_batches"] / seconds,
                                "model_img_s": batch * s["timed_batches"] / model_seconds}
        env.details[name] = {"layer": model.layer, "batches": {str(k): v for k, v in per_batch.items()}}
        rated = {b: v for b, v in per_batch.items() if "pipeline_img_s" in v}
        if not rated:
            raise RuntimeError(f"{name}: no batch size ran ({per_batch})")
        top = max(rated, key=lambda b: rated[b]["pipeline_img_s"])
        best[name] = (top, rated[top]["pipeline_img_s"], rated[top]["model_img_s"])
        tried = ", ".join(f"{b}: {fmt_rate(v['pipeline_img_s'])}" for b, v in rated.items())
        label = "ViT-S/16 (DINO shapes)" if name == "dino-vits16" else "EfficientNet-Lite0"
        measured = (f"{fmt_rate(best[name][1])} at batch {top} (model alone {fmt_rate(best[name][2])}); "
                    f"layer {model.layer}; batches {tried}")
        if name == "dino-vits16":
            env.row(f"{label} {size} px bf16, uint8 host batch -> features", ">= 5 000 img/s", measured,
                    best[name][1] >= 5000)
        else:
            env.row(f"{label} {size} px bf16, uint8 host batch -> features", "(reported)", measured, None)
        del module, model
        if on_gpu:
            torch.cuda.empty_cache()

    # JPEG decoding (DataLoader workers, as extraction runs them) vs the GPU, then end to end
    tick = time.perf_counter()
    root = jpeg_folder(env.workdir / "jpegs", s["jpeg_count"], s["jpeg_wh"])
    make_seconds = time.perf_counter() - tick
    pool = get_dataset("imagefolder", root=root, split="train")
    vit_batch, vit_rate, _ = best["dino-vits16"]
    plan = [(0, np.arange(i, min(i + vit_batch, len(pool)), dtype=np.int64)) for i in range(0, len(pool), vit_batch)]
    cores = cpu_count()
    default_workers = min(8, cores) if on_gpu else 1  # extraction's defaults (features._extract)
    decode = {}
    for workers in sorted({default_workers, cores if on_gpu else default_workers}):
        _, seconds = env.timed(lambda: sum(len(b.indices) for b in _iter_batches(pool, plan, size, workers)))
        decode[workers] = len(pool) / seconds
    out_dir = env.workdir / "e2e"
    _, e2e_seconds = env.timed(lambda: extract_features(
        "imagefolder", "dino-vits16", root=root, split="train", weights="random", image_size=size,
        batch_size=vit_batch, device=env.device, out_dir=out_dir))
    meta = load_feature_set(out_dir).meta
    e2e_rate = meta["timings"]["images_per_second"]
    if meta["n"] != len(pool) or meta["skipped"]:
        raise RuntimeError(f"end-to-end extraction kept {meta['n']} of {len(pool)} images ({len(meta['skipped'])} skipped)")
    decode_rate = decode[default_workers]
    gpu_bound = decode_rate >= vit_rate
    limit = "the GPU" if gpu_bound else f"JPEG decoding ({default_workers} workers)"
    env.details["decode"] = {"jpegs": len(pool), "size": list(s["jpeg_wh"]), "make_seconds": make_seconds,
                             "decode_img_s_by_workers": {str(k): v for k, v in decode.items()},
                             "end_to_end_img_s": e2e_rate, "end_to_end_seconds": e2e_seconds, "device": meta["device"]}
    by_workers = "; ".join(f"{w} workers {fmt_rate(r)}" for w, r in decode.items())
    env.row(f"ViT-S/16 end to end on {fmt_n(len(pool))} JPEGs {s['jpeg_wh'][0]}x{s['jpeg_wh'][1]} ({cores} CPU cores)",
            "decoding keeps up with the GPU (say which is the limit)",
            f"limit: {limit}; decode {by_workers}; GPU {fmt_rate(vit_rate)}; extract_features {fmt_rate(e2e_rate)}",
            gpu_bound, e2e_seconds)


# ---------------------------------------------------------------------------------------------
# activeft
# ---------------------------------------------------------------------------------------------


def check_activeft(env: Env) -> None:
    from bilaf_core.selection.activeft import activeft_optimize
    from bilaf_core.selection.base import RunContext

    for n, dim, budget, drawn, iterations in (env.sizes["aft_small"], env.sizes["aft_large"]):
        features = np.ascontiguousarray(clustered_pool(env.workdir, n, dim))
        # warm-up (CUDA context, cuBLAS handles, Adam's first-step imports: seconds, once per process)
        activeft_optimize(features[: min(n, 4 * budget)], budget, RunContext(1), iterations=3,
                          batch_size=min(drawn, 2 * budget), device=env.device)
        ctx = RunContext(0)
        (picks, diagnostics), seconds = env.timed(lambda: activeft_optimize(
            features, budget, ctx, iterations=iterations, batch_size=drawn, device=env.device))
        if len(set(picks.tolist())) != budget or not np.isfinite(diagnostics["loss_history"]).all():
            raise RuntimeError(f"ActiveFT on {n} x {dim}: {len(set(picks.tolist()))} distinct picks of {budget}, "
                               f"finite loss: {bool(np.isfinite(diagnostics['loss_history']).all())}")
        per_iteration = ctx.timings["optimise"] / max(iterations, 1)
        rows = min(n, drawn)
        product = product_seconds(env, rows, dim, budget)
        ratio = per_iteration / product
        env.details[f"{n}x{dim}"] = {"budget": budget, "drawn": rows, "iterations": iterations, "timings": ctx.timings,
                                     "per_iteration_s": per_iteration, "product_s": product, "ratio": ratio,
                                     "loss_first_last": [float(diagnostics["loss_history"][0]),
                                                         float(diagnostics["loss_history"][-1])]}
        drawn_text = "" if rows == n else f", {fmt_n(rows)} drawn per iteration"
        env.row(f"{fmt_n(n)} x {dim}, B = {fmt_n(budget)}, {iterations} iterations{drawn_text}",
                "<= 1.5 x its S x D . D x B product per iteration",
                f"{per_iteration * 1e3:.2f} ms per iteration vs product {product * 1e3:.2f} ms: {ratio:.2f}x "
                f"(whole call {seconds:.1f} s)", ratio <= 1.5, seconds)


# ---------------------------------------------------------------------------------------------
# faiss
# ---------------------------------------------------------------------------------------------


def _faiss_both(fn):
    """fn() run on faiss' GPU (when it has one) and with BILAF_NO_GPU set: ((gpu, s), (cpu, s))."""
    results = []
    for no_gpu in (False, True):
        previous = os.environ.pop("BILAF_NO_GPU", None)
        if no_gpu:
            os.environ["BILAF_NO_GPU"] = "1"
        try:
            tick = time.perf_counter()
            out = fn()
            results.append((out, time.perf_counter() - tick))
        finally:
            os.environ.pop("BILAF_NO_GPU", None)
            if previous is not None:
                os.environ["BILAF_NO_GPU"] = previous
    return results


def check_faiss(env: Env) -> None:
    from bilaf_core.selection import _ops

    try:
        faiss = _ops.faiss_module()
    except ImportError as exc:
        raise Skip(f"faiss is not installed ({exc}); scripts/setup.sh --gpu installs the GPU build") from None
    os.environ.pop("BILAF_NO_GPU", None)
    gpus = _ops.gpu_count()
    if not env.smoke and gpus == 0:
        raise Skip(f"faiss {faiss.__version__} here has no GPU support (get_num_gpus() = 0: a CPU build); "
                   "scripts/setup.sh --gpu installs faiss-gpu")
    where = "both sides on the CPU build (cpu-smoke)" if env.smoke else f"faiss {faiss.__version__}, {gpus} GPU(s)"
    s = env.sizes
    pool_n, pool_dim = s["bilaf"][:2]  # the first rows of the bilaf check's pool file (written once, shared)
    x = np.ascontiguousarray(clustered_pool(env.workdir, pool_n, pool_dim)[: s["faiss_n"]])
    n, dim = x.shape

    # k-means: the project's faiss k-means (fixed seed) on each side, compared under the CPU centroids
    (gpu_km, gpu_s), (cpu_km, cpu_s) = _faiss_both(lambda: _ops.kmeans(x, s["faiss_k"], seed=0, niter=s["faiss_niter"]))
    (c_gpu, a_gpu, _), (c_cpu, a_cpu, d_cpu) = gpu_km, cpu_km
    differ = np.flatnonzero(a_gpu != a_cpu)
    gap_assign = 0.0
    if differ.size:
        d_other = np.linalg.norm(x[differ] - c_cpu[a_gpu[differ]], axis=1)
        gap_assign = relative_gap(d_cpu[differ], d_other)
    # picks = the sample nearest each centroid (what the k-means selection method returns)
    _, p_cpu = _ops.knn(x, c_cpu, 1)
    _, p_gpu = _ops.knn(x, c_gpu, 1)
    pick_differ = np.flatnonzero(p_cpu[:, 0] != p_gpu[:, 0])
    gap_picks = 0.0
    if pick_differ.size:
        centres = c_cpu[pick_differ]
        gap_picks = relative_gap(np.linalg.norm(x[p_cpu[pick_differ, 0]] - centres, axis=1),
                                 np.linalg.norm(x[p_gpu[pick_differ, 0]] - centres, axis=1))
    centroid_shift = float(np.abs(c_gpu - c_cpu).max())
    ok = max(gap_assign, gap_picks) <= TIE_RTOL
    env.details["kmeans"] = {"n": n, "dim": dim, "k": s["faiss_k"], "niter": s["faiss_niter"], "gpu_s": gpu_s,
                             "cpu_s": cpu_s, "assign_differ": int(differ.size), "assign_gap": gap_assign,
                             "picks_differ": int(pick_differ.size), "picks_gap": gap_picks,
                             "max_centroid_diff": centroid_shift}
    env.row(f"k-means {fmt_n(n)} x {dim}, k = {fmt_n(s['faiss_k'])}, {s['faiss_niter']} iterations ({where})",
            "GPU picks = CPU picks up to float ties",
            f"GPU {gpu_s:.2f} s, CPU {cpu_s:.2f} s; {differ.size} of {fmt_n(n)} assignments and {pick_differ.size} of "
            f"{s['faiss_k']} picks differ, largest distance gap {max(gap_assign, gap_picks):.1e} (ties: <= {TIE_RTOL:g}); "
            f"centroids differ by <= {centroid_shift:.1e}", ok, gpu_s + cpu_s)

    # exact k-NN through the project's faiss flat index
    queries = x[np.random.default_rng(1).choice(n, size=s["knn_queries"], replace=False)]
    (gpu_knn, gpu_s), (cpu_knn, cpu_s) = _faiss_both(lambda: _ops.knn(x, queries, s["knn_k"]))
    (d_gpu, i_gpu), (d_cpu, i_cpu) = gpu_knn, cpu_knn
    rows_differ = np.flatnonzero((i_gpu != i_cpu).any(axis=1))
    gap = relative_gap(d_gpu[rows_differ], d_cpu[rows_differ]) if rows_differ.size else 0.0
    env.details["knn"] = {"queries": len(queries), "k": s["knn_k"], "gpu_s": gpu_s, "cpu_s": cpu_s,
                          "rows_differ": int(rows_differ.size), "gap": gap,
                          "max_distance_diff": float(np.abs(d_gpu - d_cpu).max())}
    env.row(f"exact k-NN, {fmt_n(len(queries))} queries in {fmt_n(n)} x {dim}, k = {s['knn_k']} ({where})",
            "GPU neighbours = CPU neighbours up to float ties",
            f"GPU {gpu_s:.2f} s, CPU {cpu_s:.2f} s; {rows_differ.size} of {fmt_n(len(queries))} neighbour lists differ, "
            f"largest distance gap there {gap:.1e} (ties: <= {TIE_RTOL:g})", gap <= TIE_RTOL, gpu_s + cpu_s)


# ---------------------------------------------------------------------------------------------
# bilaf
# ---------------------------------------------------------------------------------------------


def _select_stages(stdout: str) -> str:
    """The stage timings the select command prints: '(load 1.2s, assign 0.4s, …, wall 9.9s)'."""
    line = [l for l in stdout.splitlines() if " picks from " in l]
    if not line or "(" not in line[-1]:
        return "?"
    return line[-1][line[-1].rindex("(") + 1:].rstrip(")")


def check_bilaf(env: Env) -> None:
    import torch

    from bilaf_core.selection._ops import nearest_rows, nearest_rows_torch

    n, dim, k_cores, budget = env.sizes["bilaf"]
    features = clustered_pool(env.workdir, n, dim)
    cores = np.sort(np.random.default_rng(0).choice(n, size=k_cores, replace=False))
    cores_path = env.workdir / "cores.json"
    cores_path.write_text(json.dumps(cores.tolist()))
    pool_path = env.workdir.parent / f"pool-{n}x{dim}-seed0.npy"

    # the GPU assignment against the numpy one, on the first rows
    rows = np.ascontiguousarray(features[: env.sizes["compare_rows"]])
    centres = np.ascontiguousarray(features[cores])
    ref = nearest_rows(rows, centres)
    got = nearest_rows_torch(rows, centres, device=env.device)
    differ = np.flatnonzero(ref[0] != got[0])
    gap = relative_gap(ref[1][differ], np.linalg.norm(rows[differ] - centres[got[0][differ]], axis=1)) if differ.size else 0.0
    second_differ = int(np.count_nonzero(ref[2] != got[2]))
    dist_gap = float(np.abs(ref[1] - got[1]).max())
    env.details["assignment_vs_numpy"] = {"rows": len(rows), "nearest_differ": int(differ.size), "gap": gap,
                                          "second_differ": second_differ, "max_distance_diff": dist_gap}
    env.row(f"assignment to {fmt_n(k_cores)} cores on {env.device} vs numpy, first {fmt_n(len(rows))} rows",
            "same nearest core up to float ties",
            f"{differ.size} nearest and {second_differ} second-nearest cores differ; gap {gap:.1e}; "
            f"distances differ by <= {dist_gap:.1e}", gap <= TIE_RTOL)
    del rows, ref, got
    if env.device == "cuda":
        torch.cuda.empty_cache()

    device_flag = ["--device", env.device]
    base = ["-m", "bilaf_core", "select", "--features", str(pool_path), "--method", "bilaf", "--budget", str(budget)]
    seconds, stdout = run_cli(env, base + ["--core-indices", str(cores_path), "--out", str(env.workdir / "picks.json"),
                                           *device_flag], timeout=300, log_name="select-given-cores")
    picks = json.loads((env.workdir / "picks.json").read_text())
    if len(picks) != budget or len(set(picks)) != budget:
        raise RuntimeError(f"select wrote {len(picks)} picks ({len(set(picks))} distinct), expected {budget}")
    stages = _select_stages(stdout)
    env.details["given_cores"] = {"seconds": seconds, "stages": stages}
    env.row(f"{fmt_n(n)} x {dim}, {fmt_n(k_cores)} given cores -> {fmt_n(budget)} picks, whole `select` process",
            "< 20 s whole process (128 s on 2 CPU cores)", f"{seconds:.1f} s ({stages})", seconds < 20, seconds)
    if env.sizes["bilaf_with_activeft"]:
        iterations = env.sizes["bilaf_iterations"]
        seconds, stdout = run_cli(env, base + ["--core-budget", str(k_cores), "--iterations", str(iterations),
                                               "--out", str(env.workdir / "picks-aft.json"), *device_flag],
                                  timeout=300, log_name="select-activeft-cores")
        stages = _select_stages(stdout)
        env.details["activeft_cores"] = {"seconds": seconds, "stages": stages}
        env.row(f"the same with ActiveFT's {fmt_n(k_cores)} cores ({iterations} iterations, 100 000 drawn) on {env.device}",
                "(reported)", f"{seconds:.1f} s ({stages})", None, seconds)


# ---------------------------------------------------------------------------------------------
# finetune
# ---------------------------------------------------------------------------------------------


def _labelled_feature_set(env: Env, folder: str, count: int, test: int, size_wh: tuple, image_size: int,
                          batch: int) -> Path:
    """JPEG folder with train/ and test/ splits, its DINO ViT-S/16 (random weights) feature set."""
    from bilaf_core.features import extract_features

    root = jpeg_folder(env.workdir / folder, count, size_wh, test=test)
    return extract_features("imagefolder", "dino-vits16", root=root, split="train", weights="random",
                            image_size=image_size, batch_size=batch, device=env.device,
                            out_dir=env.workdir / f"{folder}-features")


def check_finetune(env: Env) -> None:
    from bilaf_core.finetune import PRESETS, evaluate_selection

    s = env.sizes
    image_size = s["ft_options"].get("image_size", PRESETS["paper"].image_size)
    feature_dir = _labelled_feature_set(env, "ft", s["ft_train"], s["ft_test"], s["ft_wh"], image_size, 64)
    runs = [("1 epoch", 1)] + ([(f"again, {s['ft_warm_epochs']} epochs (warm process)", s["ft_warm_epochs"])]
                               if s["ft_warm_epochs"] else [])
    for label, epochs in runs:
        result, seconds = env.timed(lambda: evaluate_selection(
            feature_dir, np.arange(s["ft_train"]), mode="finetune", preset="paper", seed=0, epochs=epochs,
            weights="random", device=env.device, checkpoint_dir=env.workdir / f"ft-checkpoint-{epochs}",
            **s["ft_options"]))
        p = result.params
        env.details[label] = {"params": {k: p.get(k) for k in ("amp", "steps", "final_train_loss", "train_images_per_second",
                                                               "batch_size", "image_size", "device", "n_test")},
                              "timings": result.timings, "accuracy": result.accuracy}
        amp_ok = p.get("amp") == "bf16"
        measured = (f"train {p.get('train_images_per_second') or 0:,.0f} img/s over {p.get('steps')} steps of "
                    f"{p.get('batch_size')} (loss {p.get('final_train_loss'):.3f}, amp {p.get('amp')}); "
                    f"tested {p.get('n_test')} images; stages " +
                    ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
        if epochs == 1:
            env.row(f"`paper` preset, ViT-S/16 {image_size} px, {label} on {fmt_n(s['ft_train'])} images",
                    "runs, bf16; images/s", measured, amp_ok and np.isfinite(p.get("final_train_loss", np.nan)), seconds)
        else:
            env.row(f"`paper` preset, {label}", "(reported)", measured, None, seconds)


# ---------------------------------------------------------------------------------------------
# ddp
# ---------------------------------------------------------------------------------------------


def check_ddp(env: Env) -> None:
    import torch

    from bilaf_core.features import load_feature_set

    s = env.sizes
    if env.smoke:
        world, backend = 2, "gloo"
    else:
        world, backend = torch.cuda.device_count(), "nccl"
        if world < 2:
            raise Skip(f"{world} GPU here: torchrun with world size 1 runs the single-process path and never opens an "
                       "NCCL process group; this check needs 2 or more GPUs")
    image_size = s["ddp_ft_options"].get("image_size", 224)
    root = jpeg_folder(env.workdir / "ddp", s["ddp_images"], (320, 240), test=s["ddp_test"])
    common = ["-m", "bilaf_core", "extract", "--dataset", "imagefolder", "--root", str(root), "--backbone", "dino-vits16",
              "--weights", "random", "--image-size", str(image_size), "--batch-size", str(s["ddp_batch"]),
              "--chunk-size", str(s["ddp_chunk"]), "--device", env.device, "--quiet"]
    if s["ddp_workers"] is not None:
        common += ["--workers", str(s["ddp_workers"])]
    one_s, _ = run_cli(env, common + ["--out", str(env.workdir / "one")], timeout=180, log_name="extract-1")
    many_s, _ = run_cli(env, common + ["--out", str(env.workdir / "many")], timeout=180, torchrun=world,
                        log_name=f"extract-{world}")
    one, many = load_feature_set(env.workdir / "one"), load_feature_set(env.workdir / "many")
    if one.ids != many.ids:
        raise RuntimeError("torchrun's feature set lists other images (or another order) than the single process's")
    identical = np.array_equal(one.features, many.features)
    diff = float(np.abs(one.features - many.features).max())
    rel = diff / max(float(np.abs(one.features).max()), 1e-12)
    env.details["extract"] = {"world": world, "backend": backend, "one_s": one_s, "many_s": many_s, "identical": identical,
                              "max_abs_diff": diff, "device": many.meta.get("device")}
    env.row(f"extract {fmt_n(one.n)} JPEGs, torchrun {world} x {backend} vs 1 process",
            "same features as one process",
            f"{'bit-identical' if identical else f'max |diff| {diff:.1e} ({rel:.1e} of max |feature|)'}; "
            f"1 process {one_s:.1f} s, {world} processes {many_s:.1f} s ({many.meta.get('device')})",
            identical or rel <= 1e-3, many_s)

    picks = env.workdir / "picks.json"
    picks.write_text(json.dumps(list(range(s["ddp_picks"]))))
    finetune = ["-m", "bilaf_core.finetune", "--features", str(env.workdir / "one"), "--picks", str(picks),
                "--preset", "paper", "--epochs", "1", "--weights", "random", "--device", env.device, "--no-record",
                "--quiet", "--checkpoint-dir", str(env.workdir / "ddp-checkpoint"), "--out", str(env.workdir / "ddp.json")]
    for name, value in s["ddp_ft_options"].items():
        finetune += [f"--{name.replace('_', '-')}", str(value)]
    seconds, _ = run_cli(env, finetune, timeout=180, torchrun=world, log_name=f"finetune-{world}")
    result = json.loads((env.workdir / "ddp.json").read_text())
    params = result.get("params", {})
    ran = params.get("world_size") == world and params.get("steps", 0) >= 1
    env.details["finetune"] = {k: params.get(k) for k in ("world_size", "steps", "final_train_loss", "amp", "device")}
    env.row(f"finetune `paper`, {s['ddp_picks']} picks, torchrun {world} x {backend}", "runs (DDP, one step or more)",
            f"world {params.get('world_size')}, {params.get('steps')} step(s), loss {params.get('final_train_loss'):.3f}, "
            f"amp {params.get('amp')}, {seconds:.1f} s", ran, seconds)


CHECK_FUNCTIONS = {"extract": check_extract, "activeft": check_activeft, "faiss": check_faiss, "bilaf": check_bilaf,
                   "finetune": check_finetune, "ddp": check_ddp}


def run_child(name: str, mode: str, workdir: Path, result_path: Path) -> int:
    """Run one check in this process; write {'rows', 'details', 'skip'|'error'} to `result_path`."""
    env = Env(name, mode, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = {"check": name}
    try:
        CHECK_FUNCTIONS[name](env)
    except Skip as reason:
        out["skip"] = str(reason)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, the parent goes on
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc()
        traceback.print_exc()
    out["rows"], out["details"] = env.rows, env.details
    from bilaf_core.atomic import atomic_write_json, jsonable

    atomic_write_json(result_path, jsonable(out), indent=1)
    return 0


# ---------------------------------------------------------------------------------------------
# The parent: header, children, table
# ---------------------------------------------------------------------------------------------


def machine_header() -> tuple[dict, str | None]:
    """What the table says about the machine, and why there is no GPU to check (None if there is)."""
    from bench._machine import cpu_model
    from bilaf_core.backbones import cpu_count

    header = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
              "numpy": np.__version__, "cpu": f"{cpu_model()}, {cpu_count()} cores",
              "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    reason = None
    try:
        import torch

        header["torch"] = torch.__version__
        header["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            header["gpus"] = [torch.cuda.get_device_name(i) for i in range(count)]
            props = torch.cuda.get_device_properties(0)
            header["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            header["compute_capability"] = f"{props.major}.{props.minor}"
        else:
            reason = (f"no CUDA GPU: torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}) sees none")
    except ImportError as exc:
        reason = f"torch is not installed ({exc})"
    try:
        import timm

        header["timm"] = timm.__version__
    except ImportError:
        header["timm"] = None
    try:
        import faiss

        header["faiss"] = f"{faiss.__version__} ({faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0} GPUs)"
    except ImportError:
        header["faiss"] = None
    if shutil.which("nvidia-smi"):
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            lines = [l.strip() for l in smi.stdout.splitlines() if l.strip()]
            if lines:
                header["nvidia_smi"] = lines
                header["driver"] = lines[0].split(",")[1].strip()
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    return header, reason


def render(header: dict, rows: list[dict], mode: str, total: float) -> str:
    gpus = header.get("gpus")
    lines = [f"# GPU check ({mode}), {header['date_utc']}",
             f"GPU: {', '.join(gpus) if gpus else 'none'}"
             + (f" ({header.get('gpu_memory_gib')} GiB, cc {header.get('compute_capability')})" if gpus else "")
             + f"; driver {header.get('driver', '-')}; CUDA (torch build) {header.get('torch_cuda') or '-'}; "
               f"torch {header.get('torch', '-')}; timm {header.get('timm') or '-'}; faiss {header.get('faiss') or '-'}; "
               f"numpy {header['numpy']}; Python {header['python']}",
             f"CPU: {header['cpu']}; load average {header.get('load_average')} at start; total {total:.0f} s", "",
             "| check | case | goal | measured | result | s |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["check"], r["case"], r["goal"], r["measured"], r["status"], "" if r.get("seconds") is None else f"{r['seconds']:.1f}"]
        lines.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def run_in_group(command: list[str], env: dict, limit: float) -> tuple[str, int | None]:
    """Run a check's process in a process group of its own; past `limit` seconds the whole group
    (its select / torchrun children too) is killed, so nothing keeps the GPU busy for the next
    check.  Returns (output, exit status or None when it timed out)."""
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                            process_group=0)
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        code = None
    except BaseException:  # Ctrl-C or SIGTERM of this script: take the check's processes along
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers (a rank that did not exit) and, on time-out, everything
    except ProcessLookupError:
        pass
    proc.wait()
    log.seek(0)
    return log.read(), code


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", metavar="FILE", help="also write the results as JSON here (and the children's logs beside it, FILE.log)")
    parser.add_argument("--only", metavar="CHECKS", help=f"comma-separated subset of: {', '.join(CHECKS)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a quarter of the work)")
    parser.add_argument("--cpu-smoke", action="store_true", help="run every check's code at tiny sizes on the CPU (tests)")
    parser.add_argument("--budget", type=float, metavar="S",
                        help=f"seconds for all checks together (default {TOTAL_BUDGET:.0f}, --cpu-smoke "
                             f"{SMOKE_BUDGET:.0f}); each check gets its share and is stopped past it")
    parser.add_argument("--workdir", metavar="DIR", help="scratch folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-mode", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.only:
        chosen = [c.strip() for c in args.only.split(",") if c.strip()]
        unknown = [c for c in chosen if c not in CHECKS]
        if unknown or not chosen:
            parser.error(f"--only: unknown check(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(CHECKS)}")
        args.checks = [c for c in CHECKS if c in chosen]
    else:
        args.checks = list(CHECKS)
    if args.quick and args.cpu_smoke:
        parser.error("--quick and --cpu-smoke exclude each other")
    if args.budget is None:
        args.budget = SMOKE_BUDGET if args.cpu_smoke else TOTAL_BUDGET
    if args.budget <= 0:
        parser.error("--budget must be a positive number of seconds")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        return run_child(args.child, args.child_mode, Path(args.workdir), Path(args.child_out))

    started = time.perf_counter()
    mode = "cpu-smoke" if args.cpu_smoke else ("quick" if args.quick else "full")
    header, no_gpu = machine_header()
    if mode == "cpu-smoke":
        no_gpu = None
    results, rows, log_parts = {}, [], []
    scratch = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu_check-"))

    def save(final: bool) -> str:
        """The table so far; with --out, the JSON and the log too (after every check, so that a run
        stopped from outside still leaves what it measured)."""
        total = time.perf_counter() - started
        table = render(header, rows, mode, total)
        if args.out:
            from bilaf_core.atomic import atomic_write_json, atomic_write_text, jsonable

            atomic_write_json(args.out, jsonable({"mode": mode, "complete": final, "header": header,
                                                  "no_gpu_reason": no_gpu, "rows": rows, "checks": results,
                                                  "total_seconds": round(total, 2), "table": table}), indent=1)
            if log_parts:
                atomic_write_text(str(args.out) + ".log", "\n".join(log_parts))
        return table

    def stop(signum, frame):  # a SIGTERM from outside: unwind, so the running check's group is killed
        raise SystemExit(128 + signum)

    previous_handler = signal.signal(signal.SIGTERM, stop)
    try:
        budget_total = args.budget
        for position, name in enumerate(args.checks):
            if no_gpu:
                results[name] = {"status": "skip", "reason": no_gpu}
                rows.append({"check": name, "case": "-", "goal": "-", "measured": f"skipped: {no_gpu}", "status": "skip",
                             "seconds": None})
                continue
            remaining = budget_total - (time.perf_counter() - started)
            later = sum(CHECK_BUDGET[c] for c in args.checks[position + 1:])
            share = remaining * CHECK_BUDGET[name] / max(CHECK_BUDGET[name] + later, 1)
            limit = max(share, min(remaining, 30.0))
            if remaining < 15:
                reason = f"the {budget_total:.0f} s budget is spent"
                results[name] = {"status": "skip", "reason": reason}
                rows.append({"check": name, "case": "-", "goal": "-", "measured": f"skipped: {reason}", "status": "skip",
                             "seconds": None})
                continue
            print(f"[gpu_check] {name}: running ({mode}, up to {limit:.0f} s)", file=sys.stderr, flush=True)
            workdir = scratch / name
            child_out = scratch / f"{name}.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-mode", mode,
                       "--workdir", str(workdir), "--child-out", str(child_out)]
            # the checks' own extractions and runs stay in the scratch folder, not the user's workspace
            env = dict(os.environ, PYTHONUNBUFFERED="1", BILAF_WORKSPACE=str(scratch / "workspace"))
            if mode == "cpu-smoke":
                env["CUDA_VISIBLE_DEVICES"] = ""
            tick = time.perf_counter()
            output, code = run_in_group(command, env, limit)
            seconds = time.perf_counter() - tick
            log_parts.append(f"===== {name} ({seconds:.1f} s, exit {code}) =====\n{output}")
            for extra in sorted(workdir.glob("*.log")) if workdir.is_dir() else []:
                log_parts.append(f"----- {name}: {extra.name} -----\n{extra.read_text(errors='replace')}")
            child = json.loads(child_out.read_text()) if child_out.is_file() else None
            child_rows = (child or {}).get("rows", [])
            rows.extend(child_rows)
            if code is None:
                status, reason = "ERROR", f"timed out after {limit:.0f} s"
            elif child is None:
                status, reason = "ERROR", f"the check's process died (exit {code}) before reporting"
            elif "error" in child:
                status, reason = "ERROR", child["error"]
            elif "skip" in child:
                status, reason = "skip", child["skip"]
            else:
                status = "FAIL" if any(r["status"] == "FAIL" for r in child_rows) else "pass"
                reason = None
            if status in ("ERROR", "skip"):
                first_line = (reason or "").strip().splitlines()[0] if reason else ""
                rows.append({"check": name, "case": "-", "goal": "-",
                             "measured": ("skipped: " if status == "skip" else "") + first_line[:300],
                             "status": status, "seconds": round(seconds, 2)})
            if status == "ERROR":
                print(f"[gpu_check] {name}: ERROR — {reason}\n" + "\n".join(output.strip().splitlines()[-30:]),
                      file=sys.stderr, flush=True)
            else:
                print(f"[gpu_check] {name}: {status} in {seconds:.1f} s", file=sys.stderr, flush=True)
            results[name] = {"status": status, "reason": reason, "seconds": round(seconds, 2),
                             "details": (child or {}).get("details", {})}
            save(final=False)
    except (KeyboardInterrupt, SystemExit):
        # stopped from outside (a time limit's SIGTERM, Ctrl-C): show what was measured, then stop
        print(save(final=False) + "\n(stopped from outside before every check ran)", flush=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        if not args.workdir:
            shutil.rmtree(scratch, ignore_errors=True)
    print(save(final=True), flush=True)
    bad = [r for r in rows if r["status"] in ("ERROR", "FAIL")]
    return 1 if bad else 0


if __name__ == "__main__":
    from bench._script import run

    run(main)
