"""Feature extraction: images → (N, D) float32 features, resumable, cached, optionally distributed.

A *feature set* is a folder holding ``features.npy`` (N × D float32, row i = ``meta["ids"][i]``)
and ``meta.json`` (see docs/CONTRACTS.md).  :func:`extract_features` builds one:

* **Cached.**  The folder is named by a key over (dataset, root, split, limit, backbone and its
  architecture variant, layer, weights digest, image size); asking again returns it at once.
* **Resumable.**  Work is written in chunks (``.partial/chunk-*.npz``, each atomically) as it
  goes.  An interrupted run — a crash, Ctrl-C, or the progress callback raising
  :class:`~bilaf_core.errors.Cancelled` — continues where it stopped, with the same chunk and
  batch sizes, so the result is byte-identical to an uninterrupted run.
* **Atomic.**  ``features.npy`` then ``meta.json`` appear by rename; ``meta.json`` is written last
  and is what marks the set complete.
* **Robust.**  An unreadable or corrupt image is skipped: it has no row in ``features.npy`` and is
  listed in ``meta["skipped"]`` with its error.
* **Distributed.**  Under ``torchrun`` (WORLD_SIZE > 1) the chunks are dealt round-robin to the
  ranks (gloo on CPU, NCCL on GPUs); rank 0 gathers them and writes the result, identical to a
  single-process run.

On a GPU the batches are pinned, moved asynchronously, run channels-last under bf16 autocast,
and file datasets are decoded by DataLoader workers.  On a CPU the thread count is set to the
cores available to the process (split between local ranks), restored afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import __version__
# backbones also sets OMP_WAIT_POLICY before torch loads (see there); neither module imports torch
from .backbones import build_backbone, cpu_count, get_backbone_spec, resolve_weights
from .atomic import atomic_path, atomic_save_npy, atomic_write_json, exclusive_lock
from .datasets import get_dataset, get_dataset_spec, workspace_root
from .errors import BilafError

ProgressFn = Callable[[float, str], None]

FEATURES_FILE = "features.npy"
META_FILE = "meta.json"
PARTIAL_DIR = ".partial"
PLAN_FILE = "plan.json"
#: bump when a change makes old cached features different from what the code now computes
KEY_VERSION = 1
#: samples per resumable chunk (a multiple of the default batch sizes)
DEFAULT_CHUNK_SIZE = 2048
DEFAULT_BATCH_SIZE = {"cpu": 64, "cuda": 256}
#: channels-last helps oneDNN's depthwise convolutions on CPU too (bench/extract_speed.py)
CPU_CHANNELS_LAST = True
#: DataLoader decode workers for image files on CPU.  Measured on 2 cores (bench/extract_speed.py,
#: docs/extraction.md, "Speed"): the model scales poorly from 1 to 2 threads at 64 px, so one worker
#: decoding photos beside it overlaps the work (500x375 JPEGs: 599 -> 834 img/s); two compete
#: with the model's threads (768 img/s).  In-memory datasets never use workers.
CPU_FILE_WORKERS = 1


# --------------------------------------------------------------------------------------------
# Feature sets
# --------------------------------------------------------------------------------------------


@dataclass
class FeatureSet:
    """A loaded feature set: ``features`` (N, D) float32 and its ``meta`` dict."""

    path: Path
    features: np.ndarray
    meta: dict

    @property
    def ids(self) -> list[str]:
        return self.meta["ids"]

    @property
    def labels(self) -> np.ndarray | None:
        labels = self.meta.get("labels")
        return None if labels is None else np.asarray(labels, dtype=np.int64)

    @property
    def class_names(self) -> list[str] | None:
        return self.meta.get("class_names")

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def load_feature_set(path) -> FeatureSet:
    """Open a feature-set folder (or its ``features.npy``); BilafError when absent or inconsistent."""
    folder = Path(path)
    if folder.name == FEATURES_FILE:
        folder = folder.parent
    meta_path, features_path = folder / META_FILE, folder / FEATURES_FILE
    if not meta_path.is_file() or not features_path.is_file():
        raise BilafError(f"{folder} is not a complete feature set (needs {FEATURES_FILE} and {META_FILE}); extract or import features first")
    try:
        meta = json.loads(meta_path.read_text())
        features = np.load(features_path, allow_pickle=False)
    except Exception as exc:
        raise BilafError(f"feature set {folder} is unreadable ({exc}); re-extract it") from None
    if features.ndim != 2 or features.shape[0] != meta.get("n") or features.shape[1] != meta.get("dim") or len(meta.get("ids", ())) != features.shape[0]:
        raise BilafError(f"feature set {folder}: {FEATURES_FILE} {features.shape} does not match {META_FILE}; re-extract it")
    return FeatureSet(path=folder, features=features, meta=meta)


def _is_complete(folder: Path, key: str) -> bool:
    """True when `folder` holds a finished feature set made with `key` (reads headers only)."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
        if meta.get("key") != key:
            return False
        with open(folder / FEATURES_FILE, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = read_header(fh)
        return tuple(shape) == (meta["n"], meta["dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def feature_key(*, dataset: str, root, split: str, limit, backbone: str, variant: str, layer: str,
                weights_digest: str, image_size: int) -> str:
    """The cache key: a readable prefix plus a hash of everything that changes the features."""
    fields = {
        "dataset": dataset, "root": None if root is None else str(Path(root).expanduser().resolve()),
        "split": split, "limit": limit, "backbone": backbone, "variant": variant, "layer": layer,
        "weights": weights_digest, "image_size": int(image_size), "version": KEY_VERSION,
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    readable = f"{dataset}-{split}-{'all' if limit is None else limit}-{backbone}-{layer}-{image_size}px"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", readable) + "-" + digest


def default_cache_root() -> Path:
    """``<workspace>/features`` with workspace = ``$BILAF_WORKSPACE`` or ``<project>/workspace``."""
    return workspace_root() / "features"


# --------------------------------------------------------------------------------------------
# Devices, threads, distributed
# --------------------------------------------------------------------------------------------


def resolve_device(device: str = "auto"):
    """``auto`` → cuda when available, else cpu; ``cuda`` without CUDA is a BilafError."""
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BilafError("--device cuda was asked for but CUDA is not available here; use --device cpu or auto")
    if not (device == "cpu" or device.startswith("cuda")):
        raise BilafError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


@dataclass
class _Dist:
    """This process's place in a torchrun job (world 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    created_group: bool = False

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list | None:
        """Every rank's `obj`, on rank 0 (None elsewhere)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out


def _init_distributed(device_kind: str) -> _Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":
        torch.cuda.set_device(local_rank)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        created = True
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                 local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))), created_group=created)


@contextlib.contextmanager
def _cpu_threads(count: int):
    """Use `count` intra-op threads, restoring the previous setting (the app shares the process)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    """One batch: dataset indices that decoded, their uint8 pixels, and the ones that did not."""

    chunk: int
    indices: np.ndarray
    pixels: np.ndarray  # (n, H, W) or (n, H, W, 3) uint8
    skipped: list  # [(dataset index, error message)]


class _DecodeBatches:
    """Map-style dataset whose item i is the i-th planned batch, decoded (for DataLoader workers)."""

    def __init__(self, dataset, plan: list, size: int):
        self.dataset, self.plan, self.size = dataset, plan, size

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, item: int) -> _Batch:
        chunk, indices = self.plan[item]
        return _decode(self.dataset, chunk, indices, self.size)


def _decode(dataset, chunk: int, indices: np.ndarray, size: int) -> _Batch:
    """Decode and resize the images of one batch; a failing file is recorded, never fatal."""
    if dataset.in_memory:
        return _Batch(chunk, indices, dataset.load_array_batch(indices), [])
    kept, pixels, skipped = [], [], []
    for index in indices.tolist():  # per-image decoding is the one unavoidable Python loop
        try:
            pixels.append(dataset.load_resized(index, size))
            kept.append(index)
        except Exception as exc:  # truncated/corrupt/unsupported files: OSError, ValueError, SyntaxError…
            skipped.append((index, f"{type(exc).__name__}: {exc}"))
    array = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)
    return _Batch(chunk, np.asarray(kept, dtype=np.int64), array, skipped)


def _iter_batches(dataset, plan: list, size: int, workers: int) -> Iterator[_Batch]:
    """Yield the planned batches in order, decoded in `workers` background processes if > 0."""
    if dataset.in_memory or workers <= 0:
        for chunk, indices in plan:
            yield _decode(dataset, chunk, indices, size)
        return
    import threading

    from torch.utils.data import DataLoader

    # Forking a process that runs other threads (the app's server, its job threads) can copy a
    # lock held mid-operation into the child; there, workers start from a clean fork server.
    # A single-threaded CLI or torchrun rank forks directly, which starts faster.
    context = None if threading.active_count() == 1 else "forkserver"
    loader = DataLoader(_DecodeBatches(dataset, plan, size), batch_size=None, shuffle=False, num_workers=workers,
                        pin_memory=False, prefetch_factor=4, persistent_workers=False, multiprocessing_context=context)
    yield from loader


def _to_model_input(pixels: np.ndarray, size: int, mean, std, device, *, channels_last: bool, pin: bool):
    """uint8 (n, H, W[, 3]) → normalised float (n, 3, size, size) on `device`, vectorised.

    Resizing of in-memory images happens here, on the device, for the whole batch (shorter side
    to `size`, bilinear with antialiasing, centre crop); grayscale is repeated to three channels
    after resizing, which is the same result for a third of the work.
    """
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(pixels))
    if pin:
        tensor = tensor.pin_memory()
    tensor = tensor.to(device, non_blocking=True)
    x = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    x = x.float().div_(255.0)
    height, width = x.shape[-2:]
    if (height, width) != (size, size):
        scale = size / min(height, width)
        new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        x = x[:, :, top:top + size, left:left + size]
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean_t = torch.tensor(mean, device=device, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device, dtype=x.dtype).view(1, 3, 1, 1)
    x = (x - mean_t) / std_t
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


# --------------------------------------------------------------------------------------------
# Chunks
# --------------------------------------------------------------------------------------------


def _chunk_path(partial: Path, chunk: int) -> Path:
    return partial / f"chunk-{chunk:06d}.npz"


def _save_chunk(path: Path, rows: np.ndarray, features: np.ndarray, skipped: list) -> None:
    buf = io.BytesIO()
    np.savez(buf, rows=rows.astype(np.int64), features=features.astype(np.float32, copy=False),
             skipped_rows=np.asarray([s[0] for s in skipped], dtype=np.int64),
             skipped_errors=np.asarray([s[1] for s in skipped], dtype=str))
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _load_chunk(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _prepare_partial(out: Path, plan: dict) -> None:
    """Make ``out/.partial`` hold chunks for exactly `plan`: keep matching work, drop anything else."""
    partial = out / PARTIAL_DIR
    try:
        existing = json.loads((partial / PLAN_FILE).read_text())
    except (OSError, ValueError):
        existing = None
    if existing != plan and partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    if existing != plan:
        atomic_write_json(partial / PLAN_FILE, plan)


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def extract_features(dataset: str = "fashion-mnist", backbone: str = "efficientnet-lite0", *, root=None,
                     split: str = "train", weights=None, image_size: int | None = None, layer: str | None = None,
                     limit: int | None = None, batch_size: int | None = None, device: str = "auto",
                     out_dir=None, cache_root=None, progress: ProgressFn | None = None,
                     download: bool = False, num_workers: int | None = None,
                     chunk_size: int | None = None) -> Path:
    """Extract features of a dataset's pool with a backbone; return the feature-set folder.

    Parameters
    ----------
    dataset, root, split, limit, download
        The pool (:func:`bilaf_core.datasets.get_dataset`).  `download` also lets timm fetch
        backbone weights; nothing touches the network without it.
    backbone, weights, layer, image_size
        The network (:mod:`bilaf_core.backbones`): registry or timm name; weights None (the
        backbone's own), a checkpoint path or ``"random"``; layer and image size default to the
        backbone's.
    batch_size, device, num_workers
        How to run: batch size (CPU 64, GPU 256), ``auto``/``cpu``/``cuda``, DataLoader decode
        workers for image files (GPU: up to 8; CPU: see ``CPU_FILE_WORKERS``).
    out_dir, cache_root
        Where: `out_dir` exactly, or ``<cache_root>/<key>`` (``<workspace>/features/<key>``).
    progress
        ``progress(fraction, message)``; it may raise Cancelled, which propagates — the chunks done
        so far stay for the next call to resume from.
    chunk_size
        Samples per resumable chunk (default 2048).  A resumed run keeps the first run's chunk and
        batch sizes so its output is byte-identical.

    Returns the folder holding ``features.npy`` and ``meta.json``.
    """
    started = time.perf_counter()
    report = progress or (lambda fraction, message: None)

    # ---- validate what can be validated cheaply, before any heavy work (or heavy import)
    get_dataset_spec(dataset)
    spec = get_backbone_spec(backbone)
    if (device or "auto").lower() not in ("auto", "cpu"):
        resolve_device(device)  # "cuda" without CUDA fails even when a cached result exists
    size = int(image_size or spec.default_image_size)
    if not 8 <= size <= 2048:
        raise BilafError(f"--image-size must be between 8 and 2048 pixels, got {size}")
    if batch_size is not None and int(batch_size) < 1:
        raise BilafError(f"--batch-size must be a positive number, got {batch_size}")
    if num_workers is not None and int(num_workers) < 0:
        raise BilafError(f"--workers must be 0 or more, got {num_workers}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise BilafError(f"chunk size must be a positive number, got {chunk_size}")
    if limit is not None and int(limit) < 1:
        raise BilafError(f"--limit must be a positive number of samples, got {limit}")
    limit = None if limit is None else int(limit)
    source = resolve_weights(spec, weights, allow_network=download)
    layer_name = layer or spec.default_layer
    key = feature_key(dataset=dataset, root=root, split=split, limit=limit, backbone=spec.name,
                      variant=spec.variant(), layer=layer_name, weights_digest=source.digest, image_size=size)
    out = Path(out_dir).expanduser().resolve() if out_dir is not None else Path(cache_root or default_cache_root()).expanduser().resolve() / key
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    work = dict(dataset=dataset, root=root, split=split, limit=limit, download=download, spec=spec, source=source,
                size=size, layer_name=layer_name, key=key, out=out, device=device, batch_size=batch_size,
                chunk_size=chunk_size, num_workers=num_workers, report=report, started=started)
    if distributed:
        return _extract_here(**work)
    if _is_complete(out, key):
        report(1.0, f"cached: {out}")
        return out
    # Two processes asked for the same folder (the app's jobs, a CLI beside the app, two servers):
    # one extracts, the others wait and then find it complete.  Under torchrun the ranks extract
    # together and must not wait on each other.
    with exclusive_lock(out.parent / f".{out.name}.lock"):
        if _is_complete(out, key):
            report(1.0, f"cached: {out}")
            return out
        return _extract_here(**work)


def _extract_here(*, dataset, root, split, limit, download, spec, source, size, layer_name, key, out, device,
                  batch_size, chunk_size, num_workers, report, started) -> Path:
    """Set up the device and process group, then extract (every rank under torchrun)."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1

    torch_device = resolve_device(device)
    dist = _init_distributed(torch_device.type)
    try:
        if distributed and dist.broadcast(_is_complete(out, key) if dist.rank == 0 else None):
            report(1.0, f"cached: {out}")
            return out
        return _extract(dataset=dataset, root=root, split=split, limit=limit, download=download, spec=spec,
                        source=source, size=size, layer_name=layer_name, key=key, out=out, device=torch_device,
                        batch_size=batch_size, chunk_size=chunk_size, num_workers=num_workers, report=report,
                        started=started, dist=dist)
    finally:
        if dist.created_group:
            import torch.distributed as torch_dist

            torch_dist.destroy_process_group()


def _extract(*, dataset, root, split, limit, download, spec, source, size, layer_name, key, out, device,
             batch_size, chunk_size, num_workers, report, started, dist) -> Path:
    """The work behind :func:`extract_features` once the cache missed (on every rank)."""
    timings = {}
    tick = time.perf_counter()
    pool = get_dataset(dataset, root=root, split=split, limit=limit, download=download)
    timings["dataset"] = time.perf_counter() - tick

    report(0.0, f"loading {spec.name}")
    tick = time.perf_counter()
    model = build_backbone(spec, source, image_size=size, layer=layer_name)
    timings["model"] = time.perf_counter() - tick

    plan = _agree_plan(out, key, len(pool), chunk_size, batch_size or DEFAULT_BATCH_SIZE[device.type], dist)
    partial = out / PARTIAL_DIR
    n_chunks = max(1, math.ceil(len(pool) / plan["chunk_size"]))
    # chunks are dealt round-robin, so a resumed torchrun job gives each rank its own chunks back
    mine = [c for c in range(n_chunks) if c % dist.world == dist.rank]
    bounds = {c: (c * plan["chunk_size"], min(len(pool), (c + 1) * plan["chunk_size"])) for c in mine}
    pending = [c for c in mine if not _chunk_path(partial, c).is_file()]
    batches = [(c, np.arange(lo, min(lo + plan["batch_size"], bounds[c][1]), dtype=np.int64))
               for c in pending for lo in range(bounds[c][0], bounds[c][1], plan["batch_size"])]
    total_mine = sum(hi - lo for lo, hi in bounds.values())
    done_before = total_mine - sum(bounds[c][1] - bounds[c][0] for c in pending)

    cores = max(1, cpu_count() // dist.local_world)
    if num_workers is None:
        num_workers = min(8, cores) if device.type == "cuda" else min(CPU_FILE_WORKERS, cores - 1)
    tick = time.perf_counter()
    processed = _run_batches(pool, model, batches, plan["batch_size"], partial, device, cores, num_workers,
                             lambda n: _report_rate(report, done_before + n, total_mine, n, time.perf_counter() - tick))
    timings["extract"] = time.perf_counter() - tick

    # ---- rank 0 assembles: its chunks from disk, the others' sent over the process group
    payload = {c: _load_chunk(_chunk_path(partial, c)) for c in mine} if dist.world > 1 else None
    gathered = dist.gather(payload)
    if dist.rank == 0:
        chunks = {}
        for part in gathered or []:
            chunks.update(part or {})
        if not chunks:
            chunks = {c: _load_chunk(_chunk_path(partial, c)) for c in range(n_chunks)}
        _write_result(out, key, pool, model, [chunks[c] for c in range(n_chunks)], timings, processed, started,
                      _describe_device(device, cores, dist.world))
    dist.barrier()
    return out


def _agree_plan(out: Path, key: str, n: int, chunk_size, batch_size: int, dist: _Dist) -> dict:
    """Chunk and batch sizes for this run: an interrupted run's if there is one (same batches,
    same bytes), else the requested ones; decided by rank 0, prepared on every rank."""
    plan = {"key": key, "n": n, "chunk_size": int(chunk_size or DEFAULT_CHUNK_SIZE), "batch_size": int(batch_size)}
    if dist.rank == 0:
        with contextlib.suppress(FileNotFoundError):
            (out / META_FILE).unlink()  # a stale set for another key must not look complete meanwhile
        try:
            previous = json.loads((out / PARTIAL_DIR / PLAN_FILE).read_text())
        except (OSError, ValueError):
            previous = None
        if isinstance(previous, dict) and previous.get("key") == key and previous.get("n") == n:
            plan = previous
        _prepare_partial(out, plan)
    plan = dist.broadcast(plan)
    dist.barrier()
    if dist.rank != 0:
        _prepare_partial(out, plan)  # a no-op on a shared file system
    return plan


def _run_batches(pool, model, batches: list, batch_size: int, partial: Path, device, threads: int, workers: int,
                 on_progress: Callable[[int], None]) -> int:
    """Run the planned batches through the model, writing each chunk's file as it completes.

    Returns the number of images handled (extracted or skipped).  `on_progress(n)` is called after
    every batch and may raise Cancelled: chunks already written stay, the current one is dropped.
    """
    import torch

    on_gpu = device.type == "cuda"
    channels_last = on_gpu or CPU_CHANNELS_LAST
    module = model.module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    processed = 0
    with contextlib.ExitStack() as stack:
        if not on_gpu:
            stack.enter_context(_cpu_threads(threads))
        stack.enter_context(torch.inference_mode())
        current, rows, feats, skipped = None, [], [], []
        for batch in _iter_batches(pool, batches, model.image_size, workers):
            if current is not None and batch.chunk != current:
                _save_chunk(_chunk_path(partial, current), _concat_rows(rows), _concat_features(feats), skipped)
                rows, feats, skipped = [], [], []
            current = batch.chunk
            n_real = len(batch.indices)
            if n_real:
                # Every batch runs at the full batch size (a chunk's short last batch, or one with
                # skipped images, is padded by repeating its last image): oneDNN picks kernels by
                # shape and thread count, and a short batch came out a few ulp different with 1
                # vs 2 threads.  Fixed shapes keep single-process, torchrun and resumed runs
                # byte-identical.
                pixels = batch.pixels
                if n_real < batch_size:
                    pixels = np.concatenate([pixels, np.repeat(pixels[-1:], batch_size - n_real, axis=0)])
                x = _to_model_input(pixels, model.image_size, model.mean, model.std, device,
                                    channels_last=channels_last, pin=on_gpu)
                with torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext():
                    y = module(x)
                feats.append(y[:n_real].float().cpu().numpy())
            rows.append(batch.indices)
            skipped.extend(batch.skipped)
            processed += n_real + len(batch.skipped)
            on_progress(processed)
        if current is not None:
            _save_chunk(_chunk_path(partial, current), _concat_rows(rows), _concat_features(feats), skipped)
    return processed


def _report_rate(report: ProgressFn, done: int, total: int, this_run: int, elapsed: float) -> None:
    rate = this_run / elapsed if elapsed > 0 else 0.0
    eta = _format_eta((total - done) / rate) if rate > 0 else "?"
    report(done / max(total, 1), f"extracting {done:,}/{total:,} images · {rate:,.0f} img/s · ETA {eta}")


def _concat_rows(rows: list) -> np.ndarray:
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def _concat_features(feats: list) -> np.ndarray:
    real = [f for f in feats if f.shape[0]]
    return np.concatenate(real) if real else np.zeros((0, 0), np.float32)


def _write_result(out: Path, key: str, pool, model, ordered: list, timings: dict, processed: int,
                  started: float, device_text: str) -> None:
    """Concatenate the chunks (in pool order) into features.npy, then write meta.json, atomically."""
    tick = time.perf_counter()
    rows = np.concatenate([c["rows"] for c in ordered])
    feature_blocks = [c["features"] for c in ordered if c["features"].shape[0]]
    if not feature_blocks:
        raise BilafError(f"none of the {len(pool)} images of {pool.name} could be read; see the errors with --limit 10")
    features = np.ascontiguousarray(np.concatenate(feature_blocks), dtype=np.float32)
    skipped_rows = np.concatenate([c["skipped_rows"] for c in ordered])
    skipped_errors = [str(e) for c in ordered for e in c["skipped_errors"].tolist()]
    skipped = [{"id": pool.ids[int(i)], "path": pool.path_of(int(i)), "error": err}
               for i, err in sorted(zip(skipped_rows.tolist(), skipped_errors))]
    atomic_save_npy(out / FEATURES_FILE, features)
    timings["assemble"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    timings["images_this_run"] = processed
    timings["images_per_second"] = processed / timings["extract"] if timings.get("extract") else None
    timings = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in timings.items()}
    meta = {
        "key": key,
        "dataset": pool.describe(),
        "n": int(features.shape[0]),
        "dim": int(features.shape[1]),
        "ids": [pool.ids[int(i)] for i in rows],
        "labels": None if pool.labels is None else pool.labels[rows].astype(int).tolist(),
        "class_names": pool.class_names,
        "backbone": model.spec.name,
        "timm_model": model.spec.timm_name,
        "weights_digest": model.weights.digest,
        "weights_source": model.weights.kind,
        "image_size": model.image_size,
        "layer": model.layer,
        "skipped": skipped,
        "timings": timings,
        "device": device_text,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": __version__,
    }
    atomic_write_json(out / META_FILE, meta)  # written last: its presence marks the set complete
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)


def _describe_device(device, threads: int, world: int) -> str:
    """``cpu (2 threads)``, ``cuda (NVIDIA H100 …)``, plus `` x N processes`` under torchrun."""
    import torch

    if device.type == "cuda":
        text = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        text = f"cpu ({threads} thread{'s' if threads != 1 else ''})"
    return text + (f" x {world} processes" if world > 1 else "")


# --------------------------------------------------------------------------------------------
# Bring your own embeddings
# --------------------------------------------------------------------------------------------


def _npy_problem(exc: Exception) -> str:
    """What is wrong with an unreadable .npy, in words that do not suggest loading pickles:
    numpy's own message for an object array points at ``allow_pickle=True``, which would run
    code from the file."""
    if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
        return ("it holds Python objects, not numbers; such files are never loaded, as that could run code from the file. "
                "Save a plain numeric array instead, e.g. numpy.save(path, np.asarray(embeddings, dtype='float32'))")
    return str(exc)


def _read_ids(path: Path, n: int) -> list[str]:
    if not path.is_file():
        raise BilafError(f"ids file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            ids = json.loads(text)
        except ValueError as exc:
            raise BilafError(f"ids file {path} is not valid JSON ({exc}); give a JSON list or one id per line") from None
        if not isinstance(ids, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in ids):
            raise BilafError(f"ids file {path} must hold a JSON list of strings (or integers)")
        ids = [str(x) for x in ids]
    else:
        ids = text.splitlines()
        if ids and ids[-1] == "":
            ids.pop()
    if len(ids) != n:
        raise BilafError(f"ids file {path} has {len(ids)} ids but the embeddings have {n} rows; they must match one to one")
    if len(set(ids)) != len(ids):
        seen, dup = set(), None
        for x in ids:
            if x in seen:
                dup = x
                break
            seen.add(x)
        raise BilafError(f"ids file {path} repeats id {dup!r}; every row needs its own id")
    return ids


def _read_labels(path: Path, n: int) -> list[int]:
    if not path.is_file():
        raise BilafError(f"labels file {path} does not exist")
    if path.suffix.lower() == ".npy":
        try:
            labels = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise BilafError(f"labels file {path} is not a readable .npy array ({_npy_problem(exc)})") from None
    else:
        try:
            labels = np.asarray(json.loads(path.read_text(encoding="utf-8")))
        except ValueError as exc:
            raise BilafError(f"labels file {path} is not valid JSON ({exc}); give a .npy array or a JSON list of integers") from None
    if labels.ndim != 1:
        raise BilafError(f"labels file {path} must be one-dimensional (one integer per row), got shape {labels.shape}")
    if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)  # 3.0 written by a float array is still class 3
    if labels.dtype.kind not in "iu":
        raise BilafError(f"labels file {path} must hold integers, got {labels.dtype}")
    if len(labels) != n:
        raise BilafError(f"labels file {path} has {len(labels)} labels but the embeddings have {n} rows")
    if len(labels) and labels.min() < 0:
        raise BilafError(f"labels file {path} has negative labels (row {int(np.argmin(labels))}); use 0..C-1")
    return labels.astype(np.int64).tolist()


def import_embeddings(npy_path, *, ids_path=None, labels_path=None, out_dir) -> Path:
    """Turn your own (N, D) embeddings into a feature set at `out_dir` (same layout as extraction).

    Validates: a 2-D numeric array with finite rows (bad row indices are reported), ids (JSON
    list or one per line) and labels (.npy or JSON integers) of the same length.  The files are
    written atomically, ``meta.json`` last.
    """
    started = time.perf_counter()
    npy_path = Path(npy_path)
    if not npy_path.is_file():
        raise BilafError(f"embeddings file {npy_path} does not exist")
    try:
        array = np.load(npy_path, allow_pickle=False)
    except Exception as exc:
        raise BilafError(f"embeddings file {npy_path} is not a readable .npy array ({_npy_problem(exc)}); save it with numpy.save") from None
    if array.ndim != 2:
        raise BilafError(f"embeddings must be a 2-D (N, D) array, got shape {array.shape}")
    if array.dtype.kind not in "fiu":
        raise BilafError(f"embeddings must be numeric (float or int), got dtype {array.dtype}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise BilafError(f"embeddings are empty (shape {array.shape})")
    with np.errstate(over="ignore", invalid="ignore"):
        features = np.ascontiguousarray(array, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if bad.size:
        shown = ", ".join(map(str, bad[:10].tolist())) + (", …" if bad.size > 10 else "")
        raise BilafError(f"embeddings have {bad.size} rows with NaN, infinite or float32-overflowing values (rows {shown}); fix or drop them")
    n = features.shape[0]
    ids = _read_ids(Path(ids_path), n) if ids_path is not None else [str(i) for i in range(n)]
    labels = _read_labels(Path(labels_path), n) if labels_path is not None else None
    with open(npy_path, "rb") as fh:
        digest = "sha256:" + hashlib.sha256(fh.read()).hexdigest()
    out = Path(out_dir)
    with contextlib.suppress(FileNotFoundError):
        (out / META_FILE).unlink()
    atomic_save_npy(out / FEATURES_FILE, features)
    meta = {
        "key": f"imported-{digest[7:19]}",
        "dataset": {"name": "imported", "root": str(npy_path.resolve().parent), "split": None, "limit": None},
        "n": int(n), "dim": int(features.shape[1]), "ids": ids, "labels": labels, "class_names": None,
        "backbone": "imported", "weights_digest": digest, "image_size": None, "layer": None, "skipped": [],
        "timings": {"import": round(time.perf_counter() - started, 4)}, "device": None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "code_version": __version__,
        "source": {"features": str(npy_path.resolve()), "ids": None if ids_path is None else str(Path(ids_path).resolve()),
                   "labels": None if labels_path is None else str(Path(labels_path).resolve())},
    }
    atomic_write_json(out / META_FILE, meta)
    return out
