"""Self-supervised pretraining on the unlabeled pool → a backbone that ``extract`` and the app use.

ImageNet features are weak on domains far from photos (28 px grey clothes, X-rays, satellite
tiles); the remedy the selection papers use is a backbone trained on the pool itself, without
labels.  :func:`pretrain` trains one and writes a *backbone folder*:

``backbone.json``   architecture (timm name + arguments), input size, normalisation, feature
                    layer, how it was trained; written last — its presence marks the folder done
``weights-<E>ep.pth`` the backbone's state dict (timm names, no classifier)
``train_log.json``  loss, learning rate, wall and CPU seconds per epoch, every session's command,
                    device and threads (rewritten after each epoch)
``checkpoint.pt``   the last finished epoch: backbone, heads, momentum copies, optimiser — what a
                    resumed or extended run starts from

``--backbone pool:NAME`` (a folder under ``<workspace>/backbones``) or ``pool:/path/to/folder``
then works everywhere a backbone name does (:mod:`bilaf_core.backbones`).

What is used from `lightly <https://github.com/lightly-ai/lightly>`_: the projection/prediction
heads, the losses (NT-Xent, negative cosine, VICReg), the momentum update and its cosine
schedule.  The augmentations are not lightly's PIL transforms: those run image by image in
Python, which on 2 CPU cores costs more than the small CNN's training step itself
(docs/pretrain.md).  :func:`augment` draws the same families (random resized crop, flip, colour
jitter, grayscale, blur, solarisation) independently per image, for the whole batch at once, on
the training device.

Guarantees
----------
* **Labels are never read**: only ``len``, ``ids`` and pixels of the dataset are touched.
* **Resumable**: after every epoch ``checkpoint.pt`` is replaced atomically; running the same
  command again continues after the last finished epoch (a larger ``--epochs`` extends a finished
  run).  A run with other settings in the same folder is refused, naming the differences.
* **Cancellable**: ``progress`` may raise :class:`~bilaf_core.errors.Cancelled` (the app's Cancel);
  the epoch in flight is dropped, every file on disk stays complete.
* **Deterministic on CPU**: the same seed and thread count give the same weights, also across an
  interruption (the data order and augmentations of epoch e are drawn from (seed, e)).
* **One writer**: an exclusive lock on ``<out>/.pretrain.lock``; a second run on the same folder
  fails at once with a message.
* **GPU / several GPUs**: CUDA with bf16 autocast and channels-last when present; under
  ``torchrun`` the batch is split over the ranks (DDP, gathered losses, synchronised batch norm
  on GPUs) and rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .atomic import atomic_path, atomic_write_json
from .backbones import (BACKBONE_CONFIG, POOL_PREFIX, BackboneSpec, _create, cpu_count, get_backbone_spec,
                        load_checkpoint, map_lite0_state_dict, pool_backbones_root, register_local_models,
                        resolve_weights)
from .datasets import get_dataset, get_dataset_spec
from .errors import BilafError

ProgressFn = Callable[[float, str], None]

CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "train_log.json"
LOCK_FILE = ".pretrain.lock"
FORMAT_VERSION = 1

#: ``--arch`` short names → timm models (any other timm name, or efficientnet-lite0, works too)
ARCHITECTURES = {
    "small-cnn": "bilaf_small_cnn",
    "tiny-cnn": "bilaf_tiny_cnn",
}
DEFAULT_BATCH_SIZE = {"cpu": 256, "cuda": 512}
#: AdamW learning rate per 256 images: from scratch, and when continuing from pretrained weights
#: (a smaller step keeps what the ImageNet features already know while they adapt)
BASE_LR = {"random": 1e-3, "pretrained": 2e-4}
WEIGHT_DECAY = 1e-5
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024


# --------------------------------------------------------------------------------------------
# Augmentations (vectorised, one independent draw per image)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewAugment:
    """How to draw one view.  Probabilities per image; ranges as in torchvision's transforms."""

    min_scale: float = 0.2
    hflip: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    gray_prob: float = 0.2
    blur_prob: float = 0.0
    blur_sigma: tuple = (0.1, 2.0)  # at 224 px; scaled with the image size
    solarize_prob: float = 0.0


def augment(x, size: int, view: ViewAugment, generator):
    """A random view of each image of `x` ((n, 3, H, W) floats in [0, 1]), (n, 3, size, size).

    Random resized crop + flip (:func:`bilaf_core.finetune.random_resized_crop`), then colour
    jitter (brightness, contrast, saturation, in that order; no hue shift), grayscale, Gaussian
    blur and solarisation, each applied to a random subset of the batch.  All random numbers come
    from `generator` (on the CPU), so a seed gives the same views on any device.
    """
    import torch

    from .finetune import random_resized_crop

    n = x.shape[0]
    x = random_resized_crop(x, size, scale=(view.min_scale, 1.0), hflip=view.hflip, interpolation="bilinear",
                            generator=generator)

    def draw(*shape):
        return torch.rand(*shape, generator=generator).to(x.device, x.dtype)

    def chosen(prob):
        return (draw(n) < prob).view(n, 1, 1, 1)

    def factor(strength):
        return (1.0 + (draw(n) * 2.0 - 1.0) * strength).view(n, 1, 1, 1)

    gray_weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    if view.jitter_prob > 0:
        jitter = chosen(view.jitter_prob)
        b, c, s = factor(view.brightness), factor(view.contrast), factor(view.saturation)
        jittered = (x * b).clamp(0, 1)
        mean_gray = (jittered * gray_weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        jittered = ((jittered - mean_gray) * c + mean_gray).clamp(0, 1)
        gray = (jittered * gray_weights).sum(1, keepdim=True)
        jittered = ((jittered - gray) * s + gray).clamp(0, 1)
        x = torch.where(jitter, jittered, x)
    if view.gray_prob > 0:
        x = torch.where(chosen(view.gray_prob), (x * gray_weights).sum(1, keepdim=True).expand_as(x), x)
    if view.blur_prob > 0:
        lo, hi = (s * size / 224.0 for s in view.blur_sigma)
        sigma = (lo + draw(n) * (hi - lo)).clamp_min(1e-3)
        radius = max(1, math.ceil(3 * hi))
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1)) ** 2)
        kernel = kernel / kernel.sum(1, keepdim=True)  # (n, k): one kernel per image
        kernel = kernel.repeat_interleave(3, dim=0)  # (3n, k): per channel, grouped convolution
        flat = x.reshape(1, 3 * n, size, size)
        flat = torch.nn.functional.pad(flat, (radius, radius, radius, radius), mode="reflect")
        flat = torch.nn.functional.conv2d(flat, kernel.view(3 * n, 1, 1, -1), groups=3 * n)
        flat = torch.nn.functional.conv2d(flat, kernel.view(3 * n, 1, -1, 1), groups=3 * n)
        x = torch.where(chosen(view.blur_prob), flat.view(n, 3, size, size), x)
    if view.solarize_prob > 0:
        x = torch.where(chosen(view.solarize_prob) & (x >= 0.5), 1.0 - x, x)
    return x.clamp(0.0, 1.0)  # blurring can overshoot by a rounding error


# --------------------------------------------------------------------------------------------
# Methods (heads and losses from lightly)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """A self-supervised method: its two views' augmentations and the name of its module class in
    :mod:`bilaf_core.pretrain_methods` (imported only when training: it needs torch and lightly)."""

    name: str
    summary: str
    views: tuple
    module_class: str

    def build(self, backbone, feature_dim: int, distributed: bool):
        from . import pretrain_methods

        return getattr(pretrain_methods, self.module_class)(backbone, feature_dim, distributed)


_SYMMETRIC = ViewAugment(blur_prob=0.5)
METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method to the registry (registry order = display order)."""
    METHODS[spec.name] = spec
    return spec


register_method(MethodSpec("simclr", "SimCLR: contrastive (NT-Xent), needs large batches", (_SYMMETRIC, _SYMMETRIC), "SimCLR"))
register_method(MethodSpec("byol", "BYOL: non-contrastive, momentum teacher + predictor",
                           (ViewAugment(blur_prob=1.0), ViewAugment(blur_prob=0.1, solarize_prob=0.2)), "BYOL"))
register_method(MethodSpec("vicreg", "VICReg: non-contrastive, variance/invariance/covariance",
                           (ViewAugment(blur_prob=0.5, solarize_prob=0.1),) * 2, "VICReg"))


def available_methods() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[str(name).lower()]
    except KeyError:
        raise BilafError(f"unknown pretraining method {name!r}; choose one of: {', '.join(METHODS)}") from None


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


def architecture_spec(arch: str) -> BackboneSpec:
    """The backbone spec for ``--arch``: a short name (small-cnn, tiny-cnn), a registered backbone
    (efficientnet-lite0) or any timm model name."""
    if arch in ARCHITECTURES:
        register_local_models()
        return BackboneSpec(name=arch, timm_name=ARCHITECTURES[arch], summary=f"{arch} (bilaf_core.small_cnn)",
                            default_image_size=28, fold_batchnorm=True)
    if str(arch).startswith(POOL_PREFIX):
        raise BilafError(f"--arch {arch}: to continue training a pretrained backbone give its architecture as --arch "
                         "and its weights as --init PATH/weights-*.pth")
    try:
        return get_backbone_spec(arch)
    except BilafError:
        raise BilafError(f"unknown architecture {arch!r}: use {', '.join(ARCHITECTURES)}, efficientnet-lite0, or any "
                         "timm model name (e.g. resnet18, vit_tiny_patch16_224)") from None


def build_network(spec: BackboneSpec, init: str, image_size: int, seed: int):
    """A trainable timm model (no classifier: ``model(x)`` is the pooled embedding) and the
    description of its starting weights.  ``init``: ``random``, ``imagenet`` (local weights only:
    EfficientNet-Lite0's bundled ones) or a checkpoint path."""
    import torch

    torch.manual_seed(seed)  # the random initialisation is part of the seeded run
    if init == "random":
        model = _create(spec, image_size)
        return model, {"kind": "random", "seed": seed}
    if init == "imagenet":
        if not spec.bundled_weights or spec.weights_file:
            raise BilafError(f"--init imagenet needs ImageNet weights on this machine: efficientnet-lite0 ships them; for "
                             f"{spec.name} pass --init PATH to a local checkpoint, or --init random")
        source = resolve_weights(spec)
        model = _create(spec, image_size, num_classes=1000)
        state = torch.load(source.path, map_location="cpu", weights_only=True)
        model.load_state_dict(map_lite0_state_dict(state, model.state_dict()), strict=True)
        model.reset_classifier(0)
        return model, {"kind": "imagenet", "digest": source.digest}
    path = Path(init).expanduser()
    if not path.is_file():
        raise BilafError(f"--init {init!r}: use random, imagenet, or the path of a checkpoint file")
    from .backbones import _load_into

    source = resolve_weights(spec, path)
    model = _create(spec, image_size)
    _load_into(model, load_checkpoint(source.path), spec, str(path))
    return model, {"kind": "file", "path": str(source.path), "digest": source.digest}


def up_to_layer(model, layer: str, image_size: int):
    """`model` trained only up to `layer`: its output, spatially averaged, is the embedding — the
    same computation extraction runs for that layer (:class:`bilaf_core.backbones.LayerFeatures`),
    at about the cost of the layers before it.  The parameters after `layer` are frozen (they get
    no gradient) and keep their starting values in the saved weights."""
    import torch

    from .backbones import LayerFeatures

    class UpToLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.features = LayerFeatures(model, layer)  # registers the stopping hook

        def forward(self, x):
            return self.features(x)

    wrapped = UpToLayer()
    wrapped.layer = layer
    was_training = model.training
    model.eval()  # the probe must not move batch-norm statistics
    try:
        wrapped(torch.zeros(2, 3, image_size, image_size)).sum().backward()
    except Exception as exc:
        raise BilafError(f"--image-size {image_size} does not fit {layer} ({type(exc).__name__}: {exc})") from None
    finally:
        model.train(was_training)
    for parameter in model.parameters():
        if parameter.grad is None:
            parameter.requires_grad_(False)
        parameter.grad = None
    return wrapped


def saved_network(backbone):
    """The timm model inside a training backbone (unwrapping :func:`up_to_layer`)."""
    return backbone.model if hasattr(backbone, "features") and hasattr(backbone, "model") else backbone


def _check_image_size(model, spec: BackboneSpec, image_size: int) -> int:
    """Run one tiny batch at `image_size`; the architecture's own complaint becomes a BilafError.
    Returns the feature dimension."""
    import torch

    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise BilafError(f"--image-size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, got {image_size}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 3, image_size, image_size))
    except Exception as exc:
        raise BilafError(f"--image-size {image_size} does not fit {spec.name} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]}); pick a size the architecture accepts "
                         "(ViTs: a multiple of the patch size, e.g. 32 or 224)") from None
    finally:
        model.train(was_training)
    if out.ndim != 2:
        raise BilafError(f"{spec.name} gives {tuple(out.shape)} outputs at {image_size} px, not one vector per image")
    return int(out.shape[1])


# --------------------------------------------------------------------------------------------
# The backbone folder
# --------------------------------------------------------------------------------------------


def backbone_name_for(out: Path) -> str:
    """``pool:NAME`` when `out` lies in the workspace's backbones folder, else ``pool:/abs/path``."""
    out = Path(out).resolve()
    if out.parent == pool_backbones_root().resolve():
        return POOL_PREFIX + out.name
    return POOL_PREFIX + str(out)


def default_out_dir(dataset: str, arch: str, method: str, image_size: int) -> Path:
    return pool_backbones_root() / f"{dataset}-{arch.replace('/', '_')}-{method}-{image_size}px"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _exclusive(out: Path):
    """Hold ``<out>/.pretrain.lock`` without waiting; another holder is a BilafError naming it."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise BilafError(f"another pretrain run is writing {out} ({holder}); wait for it to finish or cancel it, "
                             "or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()} since {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
        handle.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            handle.truncate(0)
        handle.close()  # closing drops the lock


def _save_torch(path: Path, payload: dict, what: str) -> None:
    """torch.save atomically; a full disk becomes a BilafError (the previous file is intact)."""
    import torch

    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            raise BilafError(f"no room left on the disk for the {what} in {path.parent} ({free / 1e6:.0f} MB free); "
                             "free some space and repeat the command — it resumes from the last finished epoch") from None
        raise


def _check_disk_room(out: Path, needed: int) -> None:
    free = shutil.disk_usage(out).free
    if free < needed:
        raise BilafError(f"{out} has {free / 1e6:.0f} MB free but checkpoints need about {needed / 1e6:.0f} MB "
                         "(weights, heads, optimiser state, written beside the previous one); free some space or "
                         "choose another --out")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


class _FileBatches:
    """Map-style dataset whose item b is batch b's uint8 pixels (decoded in DataLoader workers);
    an unreadable image is left out of its batch and counted."""

    def __init__(self, pool, batches: list, size: int):
        self.pool, self.batches, self.size = pool, batches, size

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, item: int):
        return _load_batch(self.pool, self.batches[item], self.size)


def _load_batch(pool, rows: np.ndarray, size: int) -> tuple:
    """(uint8 pixels, number of unreadable images) of dataset rows — never their labels."""
    if pool.in_memory:
        return pool.load_array_batch(np.asarray(rows, dtype=np.int64)), 0
    pixels, bad = [], 0
    for index in np.asarray(rows).tolist():  # decoding files is the one per-image step
        try:
            pixels.append(pool.load_resized(index, size))
        except Exception:  # truncated/corrupt/unsupported: skipped, counted in the log
            bad += 1
    return (np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8)), bad


def _iter_batches(pool, batches: list, size: int, workers: int):
    if pool.in_memory or workers <= 0:
        for rows in batches:
            yield _load_batch(pool, rows, size)
        return
    import threading

    from torch.utils.data import DataLoader

    context = None if threading.active_count() == 1 else "forkserver"  # why: features._iter_batches
    yield from DataLoader(_FileBatches(pool, batches, size), batch_size=None, shuffle=False, num_workers=workers,
                          prefetch_factor=4, multiprocessing_context=context)


def _epoch_batches(n: int, epoch: int, seed: int, per_rank: int, world: int, rank: int) -> list:
    """This rank's batches of pool rows for `epoch`: a permutation drawn from (seed, epoch), dealt
    round-robin to the ranks, cut into full batches (the remainder waits for another epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    mine = order[rank::world]
    steps = max(1, len(mine) // per_rank)
    return [mine[i * per_rank:(i + 1) * per_rank] for i in range(steps)]


def _to_tensor(pixels: np.ndarray, device):
    """uint8 (n, H, W[, 3]) → float (n, 3, H, W) in [0, 1] on `device`: finetuning's conversion,
    made contiguous (grey repeated into 3 real channels rather than an expanded view)."""
    from .finetune import _pixels_to_tensor

    return _pixels_to_tensor(pixels, device).contiguous()


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class PretrainResult:
    """What :func:`pretrain` made: the folder, the name to extract with, and a summary."""

    out: Path
    backbone: str
    epochs: int
    final_loss: float | None
    train_seconds: float
    resumed_from_epoch: int = 0
    already_done: bool = False
    log: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["out"] = str(self.out)
        data.pop("log")
        return data


def _learning_rate(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 5 % of the steps (at least 1), then cosine decay to 0."""
    warmup = max(1, round(0.05 * total))
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def pretrain(dataset: str = "fashion-mnist", *, arch: str = "small-cnn", method: str = "byol", epochs: int = 10,
             image_size: int | None = None, out_dir=None, root=None, split: str = "train", limit: int | None = None,
             seed: int = 0, batch_size: int | None = None, lr: float | None = None, device: str = "auto",
             workers: int | None = None, init: str = "random", threads: int | None = None,
             feature_layer: str = "pooled", max_steps_per_epoch: int | None = None,
             command: str | None = None, progress: ProgressFn | None = None) -> PretrainResult:
    """Train `arch` with `method` on the images of a dataset split — never its labels — and write
    a backbone folder (see the module docstring).  Returns a :class:`PretrainResult`.

    Parameters
    ----------
    dataset, root, split, limit
        The pool (:func:`bilaf_core.datasets.get_dataset`; nothing is downloaded).
    arch, init
        The network (:func:`architecture_spec`) and its start: ``random``, ``imagenet``
        (EfficientNet-Lite0's bundled weights: domain adaptation) or a checkpoint path.
    method
        ``simclr``, ``byol`` or ``vicreg`` (:data:`METHODS`).
    epochs, image_size, batch_size, lr, seed
        The schedule: AdamW, linear warm-up then cosine decay; `lr` per step (default
        :data:`BASE_LR` x batch / 256); `image_size` defaults to the dataset's images (28 for
        Fashion-MNIST, 32 for CIFAR) for small CNNs, else the architecture's.
    device, workers, threads
        ``auto``/``cpu``/``cuda``; DataLoader workers decoding image files; CPU threads (default:
        the cores available, split between torchrun's local ranks).
    feature_layer
        The layer ``extract`` uses by default (``pooled``: the trained embedding).
    max_steps_per_epoch
        Cut every epoch to this many steps (trials and tests; recorded in the log).
    command
        The command line to record in the log (the CLI passes its own).
    progress
        ``progress(fraction, message)``, may raise Cancelled: the epoch in flight is dropped, the
        checkpoint of the last finished epoch stays and the same call resumes from it.
    """
    report = progress or (lambda fraction, message: None)
    # ---- cheap validation first
    get_dataset_spec(dataset)
    method_spec = get_method(method)
    spec = architecture_spec(arch)
    epochs = int(epochs)
    if epochs < 1:
        raise BilafError(f"--epochs must be at least 1, got {epochs}")
    if batch_size is not None and int(batch_size) < 2:
        raise BilafError(f"--batch-size must be at least 2 (the methods compare images within a batch), got {batch_size}")
    if lr is not None and not (float(lr) > 0 and math.isfinite(float(lr))):
        raise BilafError(f"--lr must be a positive number, got {lr}")
    if workers is not None and int(workers) < 0:
        raise BilafError(f"--workers must be 0 or more, got {workers}")
    if max_steps_per_epoch is not None and int(max_steps_per_epoch) < 1:
        raise BilafError(f"max_steps_per_epoch must be positive, got {max_steps_per_epoch}")
    from .features import _cpu_threads, _init_distributed, resolve_device

    torch_device = resolve_device(device)
    pool = get_dataset(dataset, root=root, split=split, limit=limit)
    n = len(pool)
    if n < 2:
        raise BilafError(f"dataset {dataset} ({split}) has {n} image(s); self-supervised training needs at least 2 "
                         "(it compares images within a batch) — check --root, --split and --limit")
    if image_size is None:
        native = _native_size(pool)
        image_size = native if arch in ARCHITECTURES and native else spec.default_image_size
    image_size = int(image_size)
    out = Path(out_dir).expanduser().resolve() if out_dir is not None else default_out_dir(dataset, arch, method_spec.name, image_size)

    dist = _init_distributed(torch_device.type)
    try:
        if torch_device.type == "cuda" and dist.world > 1:
            import torch

            torch_device = torch.device("cuda", dist.local_rank)
        cores = max(1, int(threads) if threads else cpu_count() // dist.local_world)
        with contextlib.ExitStack() as stack:
            if dist.rank == 0:
                stack.enter_context(_exclusive(out))
            if torch_device.type == "cpu":
                stack.enter_context(_cpu_threads(cores))
            return _pretrain(pool=pool, dataset=dataset, spec=spec, arch=arch, method_spec=method_spec, epochs=epochs,
                             image_size=image_size, out=out, seed=int(seed), batch_size=batch_size, lr=lr,
                             device=torch_device, workers=workers, init=str(init), cores=cores,
                             feature_layer=feature_layer, max_steps=max_steps_per_epoch, command=command,
                             report=report, dist=dist)
    finally:
        if dist.created_group:
            import torch.distributed as torch_dist

            torch_dist.destroy_process_group()


def _native_size(pool) -> int | None:
    """The side of an in-memory dataset's images (28 for Fashion-MNIST), else None."""
    if pool.in_memory:
        return int(min(pool.load_array_batch(np.zeros(1, np.int64)).shape[1:3]))
    return None


def _identity(pool, spec, arch, method_spec, image_size, seed, global_batch, peak_lr, start, feature_layer, max_steps) -> dict:
    """What makes a run this run: a checkpoint with another identity is not resumed."""
    return {"dataset": pool.describe(), "n_images": len(pool), "arch": arch, "timm_model": spec.timm_name,
            "create_kwargs": dict(spec.create_kwargs), "method": method_spec.name, "image_size": image_size,
            "seed": seed, "batch_size": global_batch, "lr": peak_lr, "init": start, "feature_layer": feature_layer,
            "max_steps_per_epoch": max_steps}


def _pretrain(*, pool, dataset, spec, arch, method_spec, epochs, image_size, out, seed, batch_size, lr, device,
              workers, init, cores, feature_layer, max_steps, command, report, dist) -> PretrainResult:
    import torch

    on_gpu = device.type == "cuda"
    report(0.0, f"pretrain: building {spec.name}")
    network, start = build_network(spec, init, image_size, seed)
    from .backbones import available_layers

    layers = available_layers(network)
    if feature_layer not in layers:
        raise BilafError(f"unknown --feature-layer {feature_layer!r} for {spec.name}; valid layers: {', '.join(layers)}")
    if feature_layer != "pooled":
        network = up_to_layer(network, feature_layer, image_size)
    feature_dim = _check_image_size(network, spec, image_size)

    global_batch = int(batch_size or DEFAULT_BATCH_SIZE[device.type])
    global_batch = min(global_batch, len(pool))
    per_rank = max(2, global_batch // dist.world)
    peak_lr = float(lr) if lr is not None else BASE_LR["random" if start["kind"] == "random" else "pretrained"] * global_batch / 256
    identity = _identity(pool, spec, arch, method_spec, image_size, seed, global_batch, peak_lr, start, feature_layer, max_steps)
    steps_per_epoch = len(_epoch_batches(len(pool), 0, seed, per_rank, dist.world, dist.rank))
    if max_steps:
        steps_per_epoch = min(steps_per_epoch, int(max_steps))
    total_steps = epochs * steps_per_epoch

    # ---- is there a finished or interrupted run in this folder?
    config = _read_json(out / BACKBONE_CONFIG) if dist.rank == 0 else None
    checkpoint_meta = None
    if dist.rank == 0 and (out / CHECKPOINT_FILE).is_file():
        try:
            checkpoint_meta = torch.load(out / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BilafError(f"{out / CHECKPOINT_FILE} is unreadable ({type(exc).__name__}); delete it to start over") from None
    previous = (checkpoint_meta or {}).get("identity") or (config or {}).get("identity")
    if dist.rank == 0 and previous is not None and previous != identity:
        differences = [f"{k} {previous.get(k)!r} → {identity.get(k)!r}" for k in identity if previous.get(k) != identity.get(k)]
        raise BilafError(f"{out} holds a pretrain run with other settings ({'; '.join(differences)}); repeat that run's "
                         "command to resume it, or choose another --out")
    done_epochs = int((checkpoint_meta or {}).get("epoch", 0))
    finished = config is not None and previous == identity and int(config.get("epochs_done", 0)) >= epochs
    if finished and int(config["epochs_done"]) > epochs:
        raise BilafError(f"{out} already holds this run trained for {config['epochs_done']} epochs; ask for more "
                         "epochs to extend it, or choose another --out")
    if dist.broadcast(finished):  # every rank returns (only rank 0 read the folder)
        report(1.0, f"pretrain: already trained ({epochs} epochs) in {out}")
        log = _read_json(out / LOG_FILE) or {}
        return PretrainResult(out=out, backbone=backbone_name_for(out), epochs=epochs,
                              final_loss=(log.get("epochs") or [{}])[-1].get("loss"), train_seconds=log.get("train_seconds", 0.0),
                              resumed_from_epoch=epochs, already_done=True, log=log)
    if dist.rank == 0 and done_epochs > epochs:
        raise BilafError(f"{out} holds this run already trained for {done_epochs} epochs; ask for at least that many "
                         "epochs, or choose another --out")
    if dist.rank == 0 and config is not None and checkpoint_meta is None:
        raise BilafError(f"{out} holds a finished backbone ({config.get('epochs_done')} epochs) but not its "
                         f"{CHECKPOINT_FILE}, so it cannot be trained further; choose another --out")
    done_epochs = dist.broadcast(done_epochs)

    # ---- model, method, optimiser on the device
    module = method_spec.build(network, feature_dim, dist.world > 1).to(device)
    if on_gpu and dist.world > 1:
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    from .features import CPU_CHANNELS_LAST

    # channels-last: on CPU too (oneDNN; the small CNN's training step was 1.3x faster, docs/pretrain.md)
    channels_last = on_gpu or CPU_CHANNELS_LAST
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=peak_lr, weight_decay=WEIGHT_DECAY)
    log = {"identity": identity, "epochs": [], "sessions": [], "train_seconds": 0.0, "cpu_seconds": 0.0}
    if checkpoint_meta is not None and done_epochs > 0:
        module.load_state_dict(checkpoint_meta["module"])
        optimizer.load_state_dict(checkpoint_meta["optimizer"])
        log = checkpoint_meta.get("log") or log
        log = json.loads(log) if isinstance(log, str) else log
    if dist.world > 1:
        state = dist.broadcast({k: v.cpu() for k, v in module.state_dict().items()} if dist.rank == 0 else None)
        module.load_state_dict(state)
        opt_state = dist.broadcast(optimizer.state_dict() if dist.rank == 0 else None)
        optimizer.load_state_dict(opt_state)
    trained = module
    if dist.world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if on_gpu else None)

    out.mkdir(parents=True, exist_ok=True)
    parameter_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    if dist.rank == 0:
        # checkpoint = parameters + 2 AdamW moments; atomic replace keeps the old one meanwhile
        _check_disk_room(out, 2 * 3 * parameter_bytes + 2 * 4 * sum(p.numel() for p in network.parameters()) + 8_000_000)
    if workers is None:
        workers = min(8, cores) if on_gpu else min(1, cores - 1)
    workers = 0 if pool.in_memory else int(workers)
    session = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "resumed_from_epoch": done_epochs,
               "command": command or _command_line(), "device": _describe(device, cores, dist.world),
               "threads": cores if not on_gpu else None, "epochs_asked": epochs, "code_version": __version__,
               "lightly": _version("lightly"), "torch": torch.__version__}
    log.setdefault("sessions", []).append(session)
    view1, view2 = method_spec.views
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    base_size = image_size  # file images are decoded at the training size; crops are resized back to it

    session_steps, session_train = 0, time.perf_counter()
    final_loss = None
    for epoch in range(done_epochs, epochs):
        epoch_started, epoch_cpu = time.perf_counter(), time.process_time()
        batches = _epoch_batches(len(pool), epoch, seed, per_rank, dist.world, dist.rank)[:steps_per_epoch]
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + dist.rank)
        module.train()
        loss_sum = torch.zeros((), dtype=torch.float64)
        loss_count, unreadable, seen = 0, 0, 0
        for step, (pixels, bad) in enumerate(_iter_batches(pool, batches, base_size, workers)):
            unreadable += bad
            global_step = epoch * steps_per_epoch + step
            if len(pixels) >= 2:
                rate = _learning_rate(global_step, total_steps, peak_lr)
                for group in optimizer.param_groups:
                    group["lr"] = rate
                x = _to_tensor(pixels, device)
                views = []
                for view in (view1, view2):
                    v = (augment(x, image_size, view, generator) - mean) / std
                    views.append(v.contiguous(memory_format=torch.channels_last) if channels_last else v)
                with torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext():
                    loss = trained(*views)
                optimizer.zero_grad(set_to_none=True)
                loss.float().backward()
                optimizer.step()
                module.after_step((global_step + 1) / total_steps)
                loss_value = float(loss.detach().float())
                if not math.isfinite(loss_value):
                    raise BilafError(f"the loss became {loss_value} at epoch {epoch + 1}, step {step + 1}; lower --lr "
                                     f"(now {peak_lr:g}) and repeat the command (it resumes from epoch {done_epochs})")
                loss_sum += loss_value
                loss_count += 1
                seen += len(pixels)
            session_steps += 1
            elapsed = time.perf_counter() - session_train
            remaining = (total_steps - global_step - 1) * elapsed / session_steps
            report((global_step + 1) / total_steps,
                   f"pretrain {method_spec.name}: epoch {epoch + 1}/{epochs}, step {step + 1}/{len(batches)}, "
                   f"loss {loss_sum.item() / max(loss_count, 1):.4f}, {seen * dist.world / max(time.perf_counter() - epoch_started, 1e-9):,.0f} img/s, "
                   f"ETA {_format_eta(remaining)}")
        totals = torch.tensor([loss_sum.item(), loss_count, unreadable, seen], dtype=torch.float64)
        if dist.world > 1:
            import torch.distributed as torch_dist

            totals = totals.to(device) if on_gpu else totals
            torch_dist.all_reduce(totals)
            totals = totals.cpu()
        final_loss = totals[0].item() / max(totals[1].item(), 1)
        wall, cpu = time.perf_counter() - epoch_started, time.process_time() - epoch_cpu
        log["epochs"].append({"epoch": epoch + 1, "loss": round(final_loss, 6), "lr_end": _learning_rate(
            (epoch + 1) * steps_per_epoch - 1, total_steps, peak_lr), "steps": len(batches), "images": int(totals[3].item()),
            "unreadable_images": int(totals[2].item()), "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "images_per_second": round(totals[3].item() / wall, 1) if wall > 0 else None,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        log["train_seconds"] = round(float(log.get("train_seconds", 0.0)) + wall, 2)
        log["cpu_seconds"] = round(float(log.get("cpu_seconds", 0.0)) + cpu, 2)
        if dist.rank == 0:
            state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
            _save_torch(out / CHECKPOINT_FILE, {"format": FORMAT_VERSION, "identity": identity, "epoch": epoch + 1,
                                                "module": state, "optimizer": optimizer.state_dict(),
                                                "log": json.dumps(log)}, "checkpoint")
            atomic_write_json(out / LOG_FILE, log, indent=1)
        dist.barrier()

    if dist.rank == 0:
        _write_backbone(out, module.backbone, spec, arch, method_spec, identity, epochs, image_size, feature_layer, log)
    dist.barrier()
    report(1.0, f"pretrain: {epochs} epochs done; extract with --backbone {backbone_name_for(out)}")
    return PretrainResult(out=out, backbone=backbone_name_for(out), epochs=epochs, final_loss=final_loss,
                          train_seconds=float(log.get("train_seconds", 0.0)), resumed_from_epoch=done_epochs, log=log)


def _write_backbone(out: Path, backbone, spec, arch, method_spec, identity, epochs, image_size, feature_layer,
                    log) -> None:
    """weights-<E>ep.pth, then backbone.json (last: it points at the new weights, so a reader
    sees either the old complete backbone or the new one), then drop older weight files."""
    from .backbones import file_digest

    weights_name = f"weights-{epochs}ep.pth"
    state = {k: v.detach().cpu().contiguous() for k, v in saved_network(backbone).state_dict().items()}
    _save_torch(out / weights_name, state, "weights")
    atomic_write_json(out / LOG_FILE, log, indent=1)
    config = {
        "format": "bilaf-pretrained-backbone", "format_version": FORMAT_VERSION,
        "arch": arch, "timm_model": spec.timm_name, "create_kwargs": dict(spec.create_kwargs),
        "fixed_input_size": spec.fixed_input_size, "fold_batchnorm": spec.fold_batchnorm,
        "image_size": image_size, "mean": list(spec.mean), "std": list(spec.std), "default_layer": feature_layer,
        "feature_dim": None, "method": method_spec.name, "epochs_done": epochs,
        "dataset": identity["dataset"], "weights_file": weights_name, "weights_digest": file_digest(out / weights_name),
        "train_seconds": log.get("train_seconds"), "final_loss": (log.get("epochs") or [{}])[-1].get("loss"),
        "identity": identity, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": __version__,
    }
    config["feature_dim"] = _feature_dim(backbone, image_size)
    atomic_write_json(out / BACKBONE_CONFIG, config, indent=1)
    for stale in out.glob("weights-*ep.pth"):
        if stale.name != weights_name:
            with contextlib.suppress(OSError):
                stale.unlink()


def _feature_dim(backbone, image_size: int) -> int:
    import torch

    probe = copy.deepcopy(backbone).cpu().eval()
    with torch.no_grad():
        return int(probe(torch.zeros(2, 3, image_size, image_size)).shape[1])


def pretrain_command(*, dataset: str, out_dir, arch: str, method: str, epochs: int, init: str = "random",
                     root=None, split: str = "train", limit=None, image_size=None, seed: int = 0, batch_size=None,
                     **_ignored) -> str:
    """The ``python -m bilaf_core pretrain …`` line that repeats (or resumes) a run: what the app's
    job records in the training log, and what the page shows."""
    import shlex

    parts = ["python", "-m", "bilaf_core", "pretrain", "--dataset", dataset]
    for flag, value in (("--root", root), ("--split", None if split == "train" else split), ("--limit", limit)):
        if value is not None:
            parts += [flag, str(value)]
    parts += ["--arch", arch, "--method", method, "--epochs", str(epochs)]
    for flag, value in (("--image-size", image_size), ("--init", None if init == "random" else init),
                        ("--seed", seed or None), ("--batch-size", batch_size)):
        if value is not None:
            parts += [flag, str(value)]
    parts += ["--out", str(out_dir)]
    return " ".join(shlex.quote(p) for p in parts)


def _command_line() -> str:
    import shlex

    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv = ["python", "-m", "bilaf_core"] + argv[1:]
    return " ".join(shlex.quote(a) for a in argv)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _describe(device, threads: int, world: int) -> str:
    import torch

    text = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f"cpu ({threads} thread{'s' if threads != 1 else ''})"
    return text + (f" x {world} processes" if world > 1 else "")


def _format_eta(seconds: float) -> str:
    from .features import _format_eta as fmt

    return fmt(seconds)
