"""Evaluation of a selection: how good is the model you get if you label these picks?

:func:`evaluate_selection` looks up the labels of the picked samples (and of a test set) — the
only place in the engine where labels are read — trains a classifier on the picks and reports
test top-1 accuracy, per-class accuracy and the confusion matrix as an :class:`EvalResult`.

Modes
-----
``linear-probe``
    Multinomial logistic regression on the cached features.  Each feature row is L2-normalised,
    then every dimension is centred and scaled with the mean and standard deviation of the whole
    *unlabeled* pool (no labels involved; the same statistics are applied to the test features).
    The head is trained full-batch with L-BFGS (strong-Wolfe line search, float64) on the mean
    cross-entropy plus ``weight_decay / 2 · ||W||²`` (the bias is not decayed), starting from zero
    weights, so the result does not depend on the seed.  Only the classes that occur among the
    picks get an output; picks of a single class give a constant predictor.
``knn``
    Cosine k-NN on L2-normalised features: the k most similar picks vote for their class with
    weight ``exp(cosine / temperature)`` (temperature 0.07, DINO's weighted k-NN evaluation);
    k defaults to 20 and is capped at the number of picks.
``finetune``
    The whole backbone plus a new linear head trained on the picked *images* (reopened with
    :func:`bilaf_core.datasets.dataset_from_meta`, the backbone rebuilt from ``meta["backbone"]``);
    presets in :data:`PRESETS`.  Tested once, at the end of training: the final model, never the
    best of several evaluations.  Under ``torchrun`` the picks are sharded with a
    DistributedSampler (DDP; NCCL on GPUs, gloo on CPUs) and rank 0 writes the checkpoint.

The test set is `test_feature_dir` when given; otherwise the test split of the dataset the
features came from (its features extracted with the same backbone, weights, image size and
layer, cached beside the feature set); otherwise — imported embeddings, or a dataset without a
test split — the pool samples that were *not* picked (``params["test_set"]`` says which).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .atomic import jsonable
from .errors import BilafError

ProgressFn = Callable[[float, str], None]

MODES = ("linear-probe", "knn", "finetune")

#: linear probe: L2 penalty on the weights, per mean-loss unit.  Chosen once on Fashion-MNIST
#: EfficientNet-Lite0 features with picks and validation both drawn from the *train* pool (never
#: the test split); see docs/evaluation.md, "`linear-probe` (default)".
LINEAR_PROBE_WEIGHT_DECAY = 1e-2
#: L-BFGS iterations at most (it usually converges well before; tolerance below)
LINEAR_PROBE_MAX_ITER = 500
LINEAR_PROBE_TOLERANCE = 1e-7
#: k-NN: default neighbours and the temperature of the exp(cosine / T) vote (as in DINO's k-NN eval)
KNN_DEFAULT_K = 20
KNN_TEMPERATURE = 0.07
#: rows of test features per block of the k-NN similarity matrix
KNN_BLOCK_ROWS = 4096


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """The outcome of one evaluation.

    Attributes
    ----------
    mode : ``linear-probe``, ``knn`` or ``finetune``.
    accuracy : test top-1 accuracy in [0, 1].
    per_class : accuracy per class (recall), None for a class absent from the test set.
    confusion : C × C counts, rows = true class, columns = predicted class.
    class_names : the C class names.
    n_train : number of picks trained on.
    params : how it was made (mode, preset, seed, k, epochs, test set description…), JSON-able.
    timings : seconds per stage, including ``total``.
    """

    mode: str
    accuracy: float
    per_class: list
    confusion: list
    class_names: list
    n_train: int
    params: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-able dict (NaN → None); :meth:`from_dict` reads it back."""
        return jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "EvalResult":
        try:
            return cls(mode=data["mode"], accuracy=float(data["accuracy"]), per_class=list(data["per_class"]),
                       confusion=[list(map(int, row)) for row in data["confusion"]],
                       class_names=list(data["class_names"]), n_train=int(data["n_train"]),
                       params=dict(data.get("params") or {}), timings=dict(data.get("timings") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise BilafError(f"not an evaluation result ({type(exc).__name__}: {exc}); expected the JSON that evaluate writes") from None

    def summary(self) -> str:
        """One line: ``linear-probe: 81.23% test top-1 (500 picks, 10,000 test samples, 1.2 s)``."""
        n_test = int(np.sum(self.confusion)) if self.confusion else 0
        seconds = self.timings.get("total")
        extra = f", {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
        return (f"{self.mode}: {100 * self.accuracy:.2f}% test top-1 ({self.n_train:,} picks, "
                f"{n_test:,} test samples{extra})")


def scores_from_predictions(true: np.ndarray, predicted: np.ndarray, n_classes: int) -> tuple[float, list, list]:
    """Top-1 accuracy, per-class accuracy (None where a class has no test sample), confusion."""
    true = np.asarray(true, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    confusion = np.bincount(true * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    accuracy = float(np.trace(confusion) / max(int(support.sum()), 1))
    return accuracy, [None if not np.isfinite(v) else float(v) for v in per_class], confusion.astype(int).tolist()


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def validate_picks(picks, n_pool: int) -> np.ndarray:
    """`picks` as an int64 array of distinct pool indices; BilafError naming what is wrong."""
    if isinstance(picks, (str, bytes, dict)):
        raise BilafError("picks must be a list of pool indices (integers), e.g. the picks.json that select writes")
    try:
        array = np.asarray(picks)
    except (TypeError, ValueError) as exc:
        raise BilafError(f"picks must be a list of pool indices (integers): {exc}") from None
    if array.ndim != 1:
        raise BilafError(f"picks must be a flat list of pool indices, got an array of shape {array.shape}")
    if array.size == 0:
        raise BilafError("the selection is empty: pick at least one sample to evaluate")
    if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise BilafError(f"picks must be integer pool indices, got {array.dtype} values")
    array = array.astype(np.int64)
    bad = np.flatnonzero((array < 0) | (array >= n_pool))
    if bad.size:
        raise BilafError(f"pick {int(array[bad[0]])} (position {int(bad[0])}) is out of range: the pool has "
                         f"{n_pool:,} samples, indices 0..{n_pool - 1}; {bad.size} pick(s) out of range in all")
    order = np.argsort(array, kind="stable")
    repeated = order[1:][array[order[1:]] == array[order[:-1]]]  # later occurrences of a repeated id
    if repeated.size:
        first = int(repeated.min())
        raise BilafError(f"pool index {int(array[first])} is picked more than once (again at position {first}); "
                         f"{repeated.size} duplicate(s) in all — every pick must be a distinct sample")
    return array


def _check_options(mode: str, options: dict, allowed: tuple) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise BilafError(f"mode {mode} does not take option(s) {', '.join(unknown)}; it takes: {', '.join(allowed) or 'none'}")


def _positive_int(name: str, value, minimum: int = 1) -> int:
    number = None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number = int(value)
    elif isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value)
    if number is None or number < minimum:
        raise BilafError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def _positive_float(name: str, value, *, allow_zero: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BilafError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise BilafError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")
    return number


# --------------------------------------------------------------------------------------------
# Labels and the test set
# --------------------------------------------------------------------------------------------


def _labels_of(feature_set, what: str) -> np.ndarray:
    labels = feature_set.labels
    if labels is None:
        raise BilafError(
            f"{what} {feature_set.path} has no labels, and evaluation needs labels: extract it from a labelled "
            "dataset, or import the embeddings with a labels file (--labels)"
        )
    if labels.shape != (feature_set.n,) or (labels.size and labels.min() < 0):
        raise BilafError(f"{what} {feature_set.path}: meta.json labels do not match its {feature_set.n} rows; re-extract it")
    return labels


def _class_names(pool_meta: dict, labels: list[np.ndarray]) -> list[str]:
    names = pool_meta.get("class_names")
    highest = max(int(l.max()) for l in labels if l.size) + 1
    if names:
        if highest > len(names):
            raise BilafError(f"labels go up to {highest - 1} but the feature set names only {len(names)} classes; re-extract it")
        return [str(n) for n in names]
    return [str(i) for i in range(highest)]


def _dataset_has_test_split(info: dict) -> bool:
    """True when the pool is a registered dataset's train split and that dataset has a test split."""
    from .datasets import available_datasets

    name = info.get("name")
    if info.get("split") != "train" or name not in available_datasets():
        return False
    if name == "imagefolder":  # ImageNet-style roots hold train/ and test/ (or just images)
        root = info.get("root")
        return root is not None and (Path(root) / "test").is_dir()
    return True


def _weights_for(meta: dict, options: dict) -> tuple[str | None, bool]:
    """The `weights` argument (and `download` flag) that rebuilds the backbone the features came from."""
    kind = meta.get("weights_source")
    given = options.get("weights")
    if kind == "random":
        return "random", False
    if kind == "file" and given is None:
        raise BilafError(
            f"the features were extracted with a checkpoint file ({meta.get('weights_digest')}); pass the same file as "
            "weights=PATH (CLI: --weights PATH), or give an already extracted test set with test_feature_dir"
        )
    return given, bool(options.get("download", False))


@dataclass
class _TestSet:
    """Where the test samples come from: their labels, and a description for params."""

    labels: np.ndarray
    description: str
    features: np.ndarray | None = None  # filled for feature-based modes
    feature_dir: Path | None = None  # test-split feature set (extracted or given)
    holdout: np.ndarray | None = None  # pool indices used as test samples (pool-holdout)


def _resolve_test_set(pool, picks: np.ndarray, test_feature_dir, options: dict, report: ProgressFn,
                      *, need_features: bool) -> _TestSet:
    """The test samples for `pool` (see the module docstring for the order of preference)."""
    from .features import extract_features, load_feature_set

    if test_feature_dir is not None:
        test = load_feature_set(test_feature_dir)
        labels = _labels_of(test, "test feature set")
        if test.dim != pool.dim:
            raise BilafError(f"test features {test.path} have {test.dim} dimensions but the pool has {pool.dim}; "
                             "extract both with the same backbone, layer and image size")
        if test.class_names and pool.class_names and list(test.class_names) != list(pool.class_names):
            raise BilafError(f"test features {test.path} name other classes than the pool ({test.class_names[:3]}… vs "
                             f"{pool.class_names[:3]}…); use the test split of the same dataset")
        return _TestSet(labels, f"features: {test.path} ({test.n:,} samples)", test.features, test.path)
    info = pool.meta.get("dataset") or {}
    if _dataset_has_test_split(info):
        weights, download = _weights_for(pool.meta, options)
        report(0.0, f"test split of {info.get('name')}: features (cached after the first time)")
        # two evaluations of one pool at once (app jobs, a CLI beside the app) are safe:
        # extract_features lets one process extract a folder while the others wait for it
        folder = extract_features(
            info["name"], pool.meta["backbone"], root=info.get("root"), split="test", weights=weights,
            image_size=pool.meta.get("image_size"), layer=pool.meta.get("layer"), limit=None,
            cache_root=pool.path.parent, progress=report, download=download,
        )
        test = load_feature_set(folder)
        if test.meta.get("weights_digest") != pool.meta.get("weights_digest"):
            raise BilafError(f"the test split's backbone weights ({test.meta.get('weights_digest')}) differ from the pool's "
                             f"({pool.meta.get('weights_digest')}); pass the weights the pool was extracted with")
        if test.dim != pool.dim:
            raise BilafError(f"test-split features have {test.dim} dimensions but the pool has {pool.dim}; re-extract the pool")
        labels = _labels_of(test, "test split features")
        return _TestSet(labels, f"{info['name']} test split ({test.n:,} samples)", test.features, test.path)
    holdout = np.setdiff1d(np.arange(pool.n, dtype=np.int64), picks, assume_unique=True)
    if holdout.size == 0:
        raise BilafError("every pool sample is picked, so none is left to test on and the dataset has no test split; "
                         "pass test_feature_dir (CLI: --test-features DIR) with labelled test features")
    labels = _labels_of(pool, "feature set")[holdout]
    return _TestSet(labels, f"pool-holdout: {holdout.size:,} unpicked samples", pool.features[holdout] if need_features else None,
                    None, holdout)


# --------------------------------------------------------------------------------------------
# Feature-based classifiers (arrays in, arrays out)
# --------------------------------------------------------------------------------------------


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero), float32."""
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def pool_statistics(pool_features: np.ndarray, block_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of every dimension of the L2-normalised pool (float64, blocked)."""
    n, dim = pool_features.shape
    total, total_sq = np.zeros(dim), np.zeros(dim)
    for start in range(0, n, block_rows):
        block = l2_normalise(pool_features[start:start + block_rows]).astype(np.float64)
        total += block.sum(axis=0)
        total_sq += np.square(block).sum(axis=0)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0))
    return mean, np.where(std > 1e-8, std, 1.0)


def linear_probe_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, mean: np.ndarray,
                         std: np.ndarray, weight_decay: float = LINEAR_PROBE_WEIGHT_DECAY,
                         max_iter: int = LINEAR_PROBE_MAX_ITER, progress: ProgressFn | None = None) -> tuple[np.ndarray, dict]:
    """Fit the linear probe on (train_x, train_y) and predict test_x's classes.

    Features are L2-normalised, then standardised with the unlabeled pool's `mean`/`std`.
    Returns (predicted labels of test_x, info dict with iterations and final loss).
    """
    import torch

    report = progress or (lambda fraction, message: None)
    classes, target = np.unique(np.asarray(train_y, dtype=np.int64), return_inverse=True)
    info = {"classes_seen": int(classes.size)}
    if classes.size == 1:
        info.update(iterations=0, final_loss=0.0, note="all picks share one class: constant predictor")
        return np.full(len(test_x), classes[0], dtype=np.int64), info

    def standardise(x):
        return torch.from_numpy((l2_normalise(x).astype(np.float64) - mean) / std)

    x = standardise(train_x)
    y = torch.from_numpy(target.astype(np.int64))
    weight = torch.zeros(x.shape[1], classes.size, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes.size, dtype=torch.float64, requires_grad=True)
    # history 20 and a strong-Wolfe line search: robust on the badly scaled problems tiny picks give
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=20, history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=LINEAR_PROBE_TOLERANCE, tolerance_change=LINEAR_PROBE_TOLERANCE * 1e-2)

    def objective():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + 0.5 * weight_decay * weight.square().sum()
        loss.backward()
        return loss

    previous, iterations = math.inf, 0
    while iterations < max_iter:
        loss = optimizer.step(objective).detach().item()
        iterations = int(optimizer.state[optimizer._params[0]].get("n_iter", iterations))
        report(min(iterations / max_iter, 1.0), f"linear probe: L-BFGS iteration {iterations}, loss {loss:.4f}")
        if abs(previous - loss) <= LINEAR_PROBE_TOLERANCE * max(1.0, abs(loss)):
            break
        previous = loss
    info.update(iterations=iterations, final_loss=objective().detach().item())
    with torch.no_grad():
        predicted = torch.argmax(standardise(test_x) @ weight + bias, dim=1).numpy()
    return classes[predicted], info


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, k: int = KNN_DEFAULT_K,
                temperature: float = KNN_TEMPERATURE, n_classes: int | None = None,
                progress: ProgressFn | None = None) -> np.ndarray:
    """Weighted cosine k-NN: the `k` most similar training rows vote exp(cos / temperature) each."""
    report = progress or (lambda fraction, message: None)
    train_y = np.asarray(train_y, dtype=np.int64)
    n_classes = int(n_classes or train_y.max() + 1)
    k = min(int(k), len(train_y))
    train = l2_normalise(train_x)
    predicted = np.empty(len(test_x), dtype=np.int64)
    for start in range(0, len(test_x), KNN_BLOCK_ROWS):
        block = l2_normalise(test_x[start:start + KNN_BLOCK_ROWS])
        similarity = block @ train.T  # (b, n_train) cosine
        if k < similarity.shape[1]:
            nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        else:
            nearest = np.broadcast_to(np.arange(similarity.shape[1]), similarity.shape)
        rows = np.arange(len(block))[:, None]
        # subtracting 1 before exp keeps the weights <= 1 (no overflow); the vote is unchanged
        weights = np.exp((similarity[rows, nearest].astype(np.float64) - 1.0) / temperature)
        votes = np.zeros((len(block), n_classes))
        np.add.at(votes, (np.broadcast_to(rows, nearest.shape), train_y[nearest]), weights)
        predicted[start:start + len(block)] = votes.argmax(axis=1)
        report(min(1.0, (start + len(block)) / len(test_x)), f"k-NN: {start + len(block):,}/{len(test_x):,} test samples")
    return predicted


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def evaluate_selection(feature_dir, picks, mode: str = "linear-probe", *, test_feature_dir=None, preset: str | None = None,
                       seed: int = 0, progress: ProgressFn | None = None, **options) -> EvalResult:
    """Train on the labelled picks of a feature set and report test accuracy.

    Parameters
    ----------
    feature_dir : the pool's feature-set folder (features.npy + meta.json with labels).
    picks : pool indices (list or array), distinct, in range.
    mode : ``linear-probe`` (default), ``knn`` or ``finetune``.
    test_feature_dir : a labelled feature set to test on (default: the dataset's test split, or
        the unpicked pool samples when there is none).
    preset : finetune only: ``paper`` or ``cpu-quick`` (default: ``paper`` for dino-vits16
        features, ``cpu-quick`` otherwise).
    seed : random seed (finetune's initialisation, order and augmentation; recorded always).
    progress : ``progress(fraction, message)``; may raise Cancelled, which propagates.
    options : linear-probe: ``weight_decay``, ``max_iter``; knn: ``k``, ``temperature``;
        finetune: any :class:`FinetunePreset` field (``epochs``, ``lr``, ``batch_size``,
        ``image_size``…) and ``num_workers``, ``device``, ``checkpoint_dir``,
        ``eval_batch_size``; every mode: ``weights``/``download`` to
        rebuild the backbone for the test split when the pool used a checkpoint file.
    """
    from .features import load_feature_set

    started = time.perf_counter()
    report = progress or (lambda fraction, message: None)
    if mode not in MODES:
        raise BilafError(f"unknown evaluation mode {mode!r}; use one of: {', '.join(MODES)}")
    if preset is not None and mode != "finetune":
        raise BilafError(f"--preset is for --mode finetune; {mode} has no presets")
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise BilafError(f"seed must be an integer, got {seed!r}") from None
    common = ("weights", "download")
    if mode == "linear-probe":
        _check_options(mode, options, ("weight_decay", "max_iter") + common)
    elif mode == "knn":
        _check_options(mode, options, ("k", "temperature") + common)
    else:
        return _evaluate_finetune(feature_dir, picks, test_feature_dir=test_feature_dir, preset=preset, seed=seed,
                                  progress=progress, **options)
    timings = {}
    tick = time.perf_counter()
    report(0.0, "loading features")
    pool = load_feature_set(feature_dir)
    picks = validate_picks(picks, pool.n)
    pool_labels = _labels_of(pool, "feature set")
    timings["load"] = time.perf_counter() - tick

    tick = time.perf_counter()
    test = _resolve_test_set(pool, picks, test_feature_dir, options, lambda f, m: report(0.3 * f, m), need_features=True)
    timings["test_set"] = time.perf_counter() - tick
    train_y = pool_labels[picks]
    class_names = _class_names(pool.meta, [pool_labels, test.labels])
    n_classes = len(class_names)
    train_x = pool.features[picks]
    params = {"mode": mode, "preset": None, "seed": seed, "test_set": test.description, "n_test": int(len(test.labels)),
              "feature_set": str(pool.path), "backbone": pool.meta.get("backbone"), "layer": pool.meta.get("layer"),
              "image_size": pool.meta.get("image_size"), "classes_in_picks": int(np.unique(train_y).size),
              "code_version": __version__}

    tick = time.perf_counter()
    stage = lambda f, m: report(0.3 + 0.7 * f, m)  # noqa: E731
    if mode == "linear-probe":
        weight_decay = _positive_float("weight_decay", options.get("weight_decay", LINEAR_PROBE_WEIGHT_DECAY), allow_zero=True)
        max_iter = _positive_int("max_iter", options.get("max_iter", LINEAR_PROBE_MAX_ITER))
        report(0.3, "pool statistics for standardisation")
        mean, std = pool_statistics(pool.features)
        predicted, info = linear_probe_predict(train_x, train_y, test.features, mean=mean, std=std,
                                               weight_decay=weight_decay, max_iter=max_iter, progress=stage)
        params.update({
            "classifier": "multinomial logistic regression, full-batch L-BFGS (strong Wolfe, float64), zero init",
            "preprocessing": "L2-normalise, then standardise each dimension with the unlabeled pool's mean/std",
            "weight_decay": weight_decay, "max_iter": max_iter, **info,
        })
    else:
        k_requested = _positive_int("k", options.get("k", KNN_DEFAULT_K))
        temperature = _positive_float("temperature", options.get("temperature", KNN_TEMPERATURE))
        k = min(k_requested, len(picks))
        predicted = knn_predict(train_x, train_y, test.features, k=k, temperature=temperature, n_classes=n_classes,
                                progress=stage)
        params.update({"classifier": "cosine k-NN on L2-normalised features, votes weighted exp(cosine / temperature)",
                       "k": k, "k_requested": k_requested, "temperature": temperature})
    timings["train_predict"] = time.perf_counter() - tick
    accuracy, per_class, confusion = scores_from_predictions(test.labels, predicted, n_classes)
    timings["total"] = time.perf_counter() - started
    report(1.0, f"{mode}: {100 * accuracy:.2f}% test top-1")
    return EvalResult(mode=mode, accuracy=accuracy, per_class=per_class, confusion=confusion, class_names=class_names,
                      n_train=int(len(picks)), params=jsonable(params),
                      timings={k: round(v, 4) for k, v in timings.items()})


# --------------------------------------------------------------------------------------------
# Finetuning the backbone
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetunePreset:
    """Hyper-parameters of a finetuning run (every field can be overridden as an option).

    ``batch_size`` is the *global* batch (split across torchrun processes), and ``lr`` is the
    learning rate at that batch, so the schedule does not change with the number of GPUs.
    The learning rate follows a linear warm-up from ``warmup_lr`` over ``warmup_epochs``, then a
    cosine from ``lr`` at epoch 0 to ``min_lr`` at the last epoch, updated every step.
    """

    name: str
    summary: str
    epochs: int
    batch_size: int
    lr: float
    min_lr: float
    warmup_epochs: float
    warmup_lr: float
    weight_decay: float
    label_smoothing: float
    drop_path: float
    clip_grad: float
    image_size: int
    #: RandomResizedCrop area range; aspect ratio range is torchvision's (3/4, 4/3)
    crop_scale: tuple
    #: test transform: centre crop of this fraction of the shorter side, resized to image_size
    test_crop_fraction: float
    momentum: float = 0.9
    nesterov: bool = True
    hflip: float = 0.5
    interpolation: str = "bicubic"
    #: each pick appears this many times per epoch, the copies dealt to different processes
    #: (repeated augmentation, as the reference's sampler); 1 = plain DistributedSampler
    repeated_augmentation: int = 1
    #: when > 0, an epoch holds at most max(1, B // m) * m image views over all processes (the
    #: reference sampler's epoch length, m = 256); 0 = every view once
    epoch_views_multiple: int = 0
    #: when > 0, training takes at least this many optimiser steps: the epochs are raised to
    #: ⌈min_steps / steps per epoch⌉ when ``epochs`` gives fewer, so the training length follows
    #: the budget (a small selection gets more epochs, never fewer steps)
    min_steps: int = 0

    def for_picks(self, n_picks: int, world: int = 1) -> "FinetunePreset":
        """This preset with ``epochs`` raised for `n_picks` picks when ``min_steps`` asks for more."""
        import dataclasses

        if self.min_steps <= 0:
            return self
        per_rank_batch = max(1, math.ceil(self.batch_size / world))
        one_epoch = dataclasses.replace(self, epochs=1)
        steps_per_epoch = max(1, len(_epoch_batches(n_picks, one_epoch, per_rank_batch, world, 0, seed=0)[0]))
        return dataclasses.replace(self, epochs=max(self.epochs, math.ceil(self.min_steps / steps_per_epoch)))

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, FinetunePreset] = {
    # The BiLAF / ActiveFT finetuning recipe (their DeiT-based training scripts, run as their
    # READMEs say: 2 processes x 256 images, --clip-grad 2.0): SGD momentum 0.9 nesterov, lr 3e-3
    # at 512 images per step (BiLAF's default; ActiveFT used 1e-2), weight decay 1e-4 (not on
    # biases, norms, position embedding and class token), 1000 epochs, 5 warm-up epochs from
    # 1e-6, cosine to 1e-5, label smoothing 0.1, drop path 0.1, RandomResizedCrop(224, bicubic)
    # + horizontal flip, test: resize to 256 and centre crop 224; their sampler's repeated
    # augmentation (3 copies of each pick) and epoch length (256 * max(1, B // 256) views).
    "paper": FinetunePreset(
        name="paper", summary="BiLAF/ActiveFT recipe for DINO ViT-S/16 at 224 px: SGD nesterov, 1000 epochs (GPU)",
        epochs=1000, batch_size=512, lr=3e-3, min_lr=1e-5, warmup_epochs=5, warmup_lr=1e-6, weight_decay=1e-4,
        label_smoothing=0.1, drop_path=0.1, clip_grad=2.0, image_size=224, crop_scale=(0.08, 1.0),
        test_crop_fraction=224 / 256, repeated_augmentation=3, epoch_views_multiple=256,
    ),
    # Minutes on two CPU cores: the offline EfficientNet-Lite0 at 64 px (the extraction size),
    # the same optimiser and loss, a short schedule, milder crops; the test transform is the one
    # features are extracted with (shorter side to 64, centre crop).  lr and crop scale were
    # chosen on Fashion-MNIST with 500 picks and 2,500 unpicked *train* images as validation
    # (docs/evaluation.md, "`finetune`").  Crops of 35-100 % of the area: lr 0.01 57.0 %, 0.05 74.2 %;
    # crops of 80-100 %: lr 0.05 78.2 %, 0.1 80.5 % (80.2 % at batch 32), 0.2 77.3 %.
    "cpu-quick": FinetunePreset(
        name="cpu-quick", summary="EfficientNet-Lite0 at 64 px, 8 epochs: minutes on 2 CPU cores",
        epochs=8, batch_size=64, lr=0.1, min_lr=1e-5, warmup_epochs=1, warmup_lr=1e-6, weight_decay=1e-4,
        label_smoothing=0.1, drop_path=0.0, clip_grad=2.0, image_size=64, crop_scale=(0.8, 1.0),
        test_crop_fraction=1.0,
    ),
}

#: options evaluate_selection(mode="finetune") takes besides the preset's fields
FINETUNE_RUN_OPTIONS = ("num_workers", "device", "checkpoint_dir", "weights", "download", "eval_batch_size")
_PRESET_INT = ("epochs", "batch_size", "image_size", "repeated_augmentation", "epoch_views_multiple", "min_steps")
_PRESET_FLOAT = ("lr", "min_lr", "warmup_epochs", "warmup_lr", "weight_decay", "label_smoothing", "drop_path", "clip_grad",
                 "test_crop_fraction", "hflip", "momentum")
#: test images per forward pass (per process)
DEFAULT_EVAL_BATCH = {"cpu": 128, "cuda": 512}
#: the new head starts from N(0, HEAD_INIT_STD^2) weights and zero bias
HEAD_INIT_STD = 0.01


def _default_preset(meta: dict) -> str:
    return "paper" if meta.get("backbone") == "dino-vits16" else "cpu-quick"


def _finetune_config(preset_name: str, options: dict) -> FinetunePreset:
    """The preset with `options` applied and checked."""
    if preset_name not in PRESETS:
        raise BilafError(f"unknown finetune preset {preset_name!r}; use one of: {', '.join(PRESETS)}")
    allowed = _PRESET_INT + _PRESET_FLOAT + ("crop_scale", "nesterov", "interpolation") + FINETUNE_RUN_OPTIONS
    _check_options("finetune", options, allowed)
    changes = {}
    for name in _PRESET_INT:
        if options.get(name) is not None:
            changes[name] = _positive_int(name, options[name], {"image_size": 8, "epoch_views_multiple": 0, "min_steps": 0}.get(name, 1))
    for name in _PRESET_FLOAT:
        if options.get(name) is not None:
            changes[name] = _positive_float(name, options[name], allow_zero=name not in ("lr", "test_crop_fraction"))
    if options.get("crop_scale") is not None:
        try:
            low, high = (float(v) for v in options["crop_scale"])
        except (TypeError, ValueError):
            raise BilafError(f"crop_scale must be two numbers (low, high), got {options['crop_scale']!r}") from None
        if not 0 < low <= high <= 1:
            raise BilafError(f"crop_scale must satisfy 0 < low <= high <= 1, got {options['crop_scale']!r}")
        changes["crop_scale"] = (low, high)
    if options.get("nesterov") is not None:
        changes["nesterov"] = bool(options["nesterov"])
    if options.get("interpolation") is not None:
        if options["interpolation"] not in ("bicubic", "bilinear"):
            raise BilafError(f"interpolation must be bicubic or bilinear, got {options['interpolation']!r}")
        changes["interpolation"] = options["interpolation"]
    config = PRESETS[preset_name]
    if changes:
        import dataclasses

        config = dataclasses.replace(config, **changes)
    if config.test_crop_fraction > 1 or config.hflip > 1 or config.label_smoothing >= 1 or config.momentum >= 1:
        raise BilafError("test_crop_fraction and hflip must be at most 1; label_smoothing and momentum below 1")
    if config.min_lr > config.lr:
        raise BilafError(f"min_lr ({config.min_lr}) must not exceed lr ({config.lr})")
    return config


def learning_rate(epoch: float, config: FinetunePreset) -> float:
    """The learning rate at (fractional) `epoch`: linear warm-up, then cosine to min_lr."""
    if epoch < config.warmup_epochs:
        return config.warmup_lr + (config.lr - config.warmup_lr) * epoch / config.warmup_epochs
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * min(epoch / config.epochs, 1.0)))


# ---- images on the device ---------------------------------------------------------------------


def _pixels_to_tensor(pixels: np.ndarray, device):
    """uint8 (n, H, W[, 3]) → float (n, 3, H, W) in [0, 1] on `device`."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).to(device, non_blocking=True)
    x = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    x = x.float().div_(255.0)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def random_resized_crop(x, size: int, *, scale: tuple, ratio: tuple = (3 / 4, 4 / 3), hflip: float = 0.5,
                        interpolation: str = "bicubic", generator=None):
    """torchvision's RandomResizedCrop + RandomHorizontalFlip, one independent draw per image,
    for a whole batch at once (an affine sampling grid per image; no Python loop over images).

    Up to 10 (area, aspect) draws per image, the first that fits is used; if none fits, the
    centre crop with the aspect clamped to `ratio` (as torchvision).  Parameters are drawn on the
    CPU from `generator`, so a seed gives the same crops on any device.
    """
    import torch
    import torch.nn.functional as F

    n, _, height, width = x.shape
    tries = 10
    area = torch.empty(n, tries, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator) * height * width
    log_ratio = torch.empty(n, tries, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    crop_w = torch.sqrt(area * aspect).round()
    crop_h = torch.sqrt(area / aspect).round()
    fits = (crop_w >= 1) & (crop_w <= width) & (crop_h >= 1) & (crop_h <= height)
    first = fits.to(torch.int8).argmax(dim=1)
    rows = torch.arange(n)
    crop_w, crop_h = crop_w[rows, first], crop_h[rows, first]
    in_ratio = width / height
    fallback_w = float(width) if in_ratio <= ratio[1] else float(round(height * ratio[1]))
    fallback_h = float(height) if in_ratio >= ratio[0] else float(round(width / ratio[0]))
    any_fit = fits.any(dim=1)
    crop_w = torch.where(any_fit, crop_w, torch.full_like(crop_w, fallback_w))
    crop_h = torch.where(any_fit, crop_h, torch.full_like(crop_h, fallback_h))
    uniform = torch.rand(n, 3, dtype=torch.float64, generator=generator)
    top = torch.where(any_fit, torch.floor(uniform[:, 0] * (height - crop_h + 1)), (height - crop_h) // 2)
    left = torch.where(any_fit, torch.floor(uniform[:, 1] * (width - crop_w + 1)), (width - crop_w) // 2)
    flip = torch.where(uniform[:, 2] < hflip, -1.0, 1.0).to(torch.float64)
    # output coordinate u in [-1, 1] samples input pixel position left + (u + 1) / 2 * crop_w
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = flip * crop_w / width
    theta[:, 0, 2] = (2 * left + crop_w) / width - 1
    theta[:, 1, 1] = crop_h / height
    theta[:, 1, 2] = (2 * top + crop_h) / height - 1
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode=interpolation, padding_mode="border", align_corners=False)
    return out.clamp_(0.0, 1.0)


def center_crop_resize(x, size: int, *, fraction: float = 1.0, interpolation: str = "bicubic"):
    """The test transform: the centre square of `fraction` x the shorter side, resized to `size`
    (antialiased) — for fraction 224/256 the same as resize-256-then-centre-crop-224."""
    import torch.nn.functional as F

    height, width = x.shape[-2:]
    side = max(1, round(min(height, width) * fraction))
    top, left = (height - side) // 2, (width - side) // 2
    x = x[:, :, top:top + side, left:left + side]
    if side == size:
        # Already the asked size: pixels are in [0, 1] and `x` may be a view of the caller's
        # tensor (a grey image expanded to 3 channels), which must not be written in place.
        return x
    x = F.interpolate(x, size=(size, size), mode=interpolation, align_corners=False, antialias=True)
    return x.clamp_(0.0, 1.0)


def _normalise(x, mean, std):
    import torch

    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


class _BatchImages:
    """Map-style dataset whose item b is batch b's uint8 pixels (decoded in DataLoader workers)."""

    def __init__(self, dataset, batches: list, base_size: int):
        self.dataset, self.batches, self.base_size = dataset, batches, base_size

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, item: int) -> np.ndarray:
        return _load_pixels(self.dataset, self.batches[item], self.base_size)


def _load_pixels(dataset, rows: np.ndarray, base_size: int) -> np.ndarray:
    """uint8 pixels of dataset rows: the raw arrays of in-memory datasets, else each image file
    resized (shorter side to `base_size`) and centre-cropped."""
    if dataset.in_memory:
        return dataset.load_array_batch(np.asarray(rows, dtype=np.int64))
    images = []
    for index in np.asarray(rows).tolist():  # decoding files is the one per-image step
        try:
            images.append(dataset.load_resized(index, base_size))
        except Exception as exc:
            raise BilafError(f"cannot read image {dataset.ids[index]!r} ({type(exc).__name__}: {exc}); "
                             "fix or remove it and re-extract the features") from None
    return np.stack(images)


def _iter_pixels(dataset, batches: list, base_size: int, workers: int):
    """Yield the uint8 pixels of each batch of rows, in order (background decoding for files)."""
    if dataset.in_memory or workers <= 0:
        for rows in batches:
            yield _load_pixels(dataset, rows, base_size)
        return
    import threading

    from torch.utils.data import DataLoader

    context = None if threading.active_count() == 1 else "forkserver"  # why: features._iter_batches
    yield from DataLoader(_BatchImages(dataset, batches, base_size), batch_size=None, shuffle=False,
                          num_workers=workers, prefetch_factor=4, multiprocessing_context=context)


# ---- the model --------------------------------------------------------------------------------


def build_classifier(spec, source, *, image_size: int, n_classes: int, drop_path: float = 0.0, seed: int = 0):
    """The whole timm network of `spec` with `source`'s weights and a new `n_classes` head.

    Unlike feature extraction, batch norms are not folded and the network is not cut at a
    layer: everything up to the pooled embedding is trained, plus the head.
    """
    import timm
    import torch

    from .backbones import _load_into, load_checkpoint, map_lite0_state_dict

    kwargs = dict(spec.create_kwargs)
    if spec.fixed_input_size:
        kwargs["img_size"] = image_size
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    if source.kind == "random":
        torch.manual_seed(0)  # the same random backbone as extraction's
    if source.kind == "timm-pretrained":
        try:
            model = timm.create_model(spec.timm_name, pretrained=True, num_classes=0, **kwargs)
        except Exception as exc:
            raise BilafError(f"could not download weights for {spec.timm_name} ({type(exc).__name__}: {exc}); "
                             "pass weights=PATH (CLI: --weights PATH) to a local checkpoint") from None
    elif source.kind == "bundled":
        # the packaged tensors map one to one onto the model *with* its ImageNet classifier
        model = timm.create_model(spec.timm_name, num_classes=1000, **kwargs)
        state = torch.load(source.path, map_location="cpu", weights_only=True)
        model.load_state_dict(map_lite0_state_dict(state, model.state_dict()), strict=True)
    else:
        model = timm.create_model(spec.timm_name, num_classes=0, **kwargs)
        if source.kind in ("file", "pretrained"):  # a pool: backbone: its own weights file
            _load_into(model, load_checkpoint(source.path), spec, str(source.path))
    model.reset_classifier(n_classes)
    head = model.get_classifier()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * HEAD_INIT_STD)
        head.bias.zero_()
    return model


def fold_batchnorm_copy(model):
    """An eval-mode copy of `model` with its batch norms folded into the convolutions."""
    import copy

    from .backbones import fold_batchnorm

    folded = copy.deepcopy(model).eval()
    fold_batchnorm(folded)
    return folded


def _parameter_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on weights only: not on biases, norm scales, position embeddings, class tokens."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 or name in skip or name.endswith(".bias") else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---- the test images --------------------------------------------------------------------------


def _finetune_test_images(pool, pool_images, picks: np.ndarray, test_feature_dir):
    """(dataset, labels, description) of the test images, in the same order of preference as
    the feature modes: given test set, the dataset's test split, the unpicked pool."""
    from .datasets import SubsetDataset, dataset_from_meta, get_dataset
    from .features import load_feature_set

    if test_feature_dir is not None:
        test = load_feature_set(test_feature_dir)
        labels = _labels_of(test, "test feature set")
        return dataset_from_meta(test.meta), labels, f"images of {test.path} ({test.n:,} samples)"
    info = pool.meta.get("dataset") or {}
    if _dataset_has_test_split(info):
        dataset = get_dataset(info["name"], root=info.get("root"), split="test")
        if dataset.labels is None:
            raise BilafError(f"the test split of {info['name']} under {info.get('root')} has no labels; "
                             "give labelled test features with test_feature_dir (CLI: --test-features DIR)")
        return dataset, np.asarray(dataset.labels, dtype=np.int64), f"{info['name']} test split ({len(dataset):,} samples)"
    holdout = np.setdiff1d(np.arange(pool.n, dtype=np.int64), picks, assume_unique=True)
    if holdout.size == 0:
        raise BilafError("every pool sample is picked, so none is left to test on and the dataset has no test split; "
                         "pass test_feature_dir (CLI: --test-features DIR) with labelled test features")
    labels = _labels_of(pool, "feature set")[holdout]
    return SubsetDataset(pool_images, holdout), labels, f"pool-holdout: {holdout.size:,} unpicked samples"


# ---- training ---------------------------------------------------------------------------------


def _epoch_batches(n_train: int, config: FinetunePreset, per_rank_batch: int, world: int, rank: int,
                   seed: int) -> list[list]:
    """Per epoch, this rank's batches of positions into the picks.

    Plain runs use torch's DistributedSampler (seed + epoch shuffles; padded so every rank gets
    the same count).  With repeated augmentation each shuffled pick is repeated
    ``repeated_augmentation`` times in a row before the views are dealt round-robin to the
    ranks (so the copies land on different processes), and with ``epoch_views_multiple`` m the
    epoch is cut to max(1, B // m) * m views in all — the reference sampler's rule.  A trailing
    batch of one image is merged into the one before it: batch norm needs more than one value
    per channel.
    """
    import torch
    from torch.utils.data import DistributedSampler

    repeats, multiple = config.repeated_augmentation, config.epoch_views_multiple
    sampler = None
    if repeats == 1 and multiple == 0:
        sampler = DistributedSampler(range(n_train), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
    plan = []
    for epoch in range(config.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
            order = np.fromiter(iter(sampler), dtype=np.int64)
        else:
            shuffled = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + epoch)).numpy()
            views = np.repeat(shuffled, repeats)
            padded = math.ceil(len(views) / world) * world
            views = np.concatenate([views, views[:padded - len(views)]])
            order = views[rank::world]
            if multiple:
                order = order[:max(1, int(max(1, n_train // multiple) * multiple / world))]
        batches = [order[i:i + per_rank_batch] for i in range(0, len(order), per_rank_batch)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches[-2] = np.concatenate(batches[-2:])
            batches.pop()
        plan.append(batches)
    return plan


def _autocast(device, amp: str | None):
    import torch

    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _train(model, optimizer, config: FinetunePreset, images, rows: np.ndarray, labels: np.ndarray, plan: list,
           *, base_size: int, workers: int, device, amp, channels_last: bool, generator, mean, std,
           report: ProgressFn) -> dict:
    """Run every planned step; returns a few numbers about the run (loss, steps, images/s)."""
    import torch

    criterion = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    flat = [(epoch, step, len(batches), batch) for epoch, batches in enumerate(plan) for step, batch in enumerate(batches)]
    total_steps = len(flat)
    labels_t = torch.from_numpy(labels.astype(np.int64))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()
    started, seen, last_loss = time.perf_counter(), 0, math.nan
    pixel_batches = _iter_pixels(images, [rows[batch] for _, _, _, batch in flat], base_size, workers)
    for number, ((epoch, step, steps_in_epoch, batch), pixels) in enumerate(zip(flat, pixel_batches), start=1):
        lr = learning_rate(epoch + step / steps_in_epoch, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = random_resized_crop(_pixels_to_tensor(pixels, device), config.image_size, scale=config.crop_scale,
                                hflip=config.hflip, interpolation=config.interpolation, generator=generator)
        x = _normalise(x, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels_t[torch.from_numpy(batch)].to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if config.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        last_loss = loss.detach().item()
        seen += len(batch)
        elapsed = time.perf_counter() - started
        eta = _format_seconds(elapsed / number * (total_steps - number))
        report(0.9 * number / total_steps, f"finetune: epoch {epoch + 1}/{config.epochs}, step {number}/{total_steps}, "
               f"loss {last_loss:.3f}, lr {lr:.2g}, ETA {eta}")
    elapsed = time.perf_counter() - started
    return {"steps": total_steps, "final_train_loss": last_loss,
            "train_images_per_second": round(seen / elapsed, 2) if elapsed > 0 else None}


def _predict(model, images, rows: np.ndarray, config: FinetunePreset, *, base_size: int, workers: int, batch: int,
             device, amp, channels_last: bool, mean, std, report: ProgressFn) -> np.ndarray:
    import torch

    model.eval()
    batches = [rows[i:i + batch] for i in range(0, len(rows), batch)]
    out = []
    with torch.inference_mode():
        for number, pixels in enumerate(_iter_pixels(images, batches, base_size, workers), start=1):
            x = center_crop_resize(_pixels_to_tensor(pixels, device), config.image_size,
                                   fraction=config.test_crop_fraction, interpolation=config.interpolation)
            x = _normalise(x, mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp):
                logits = model(x)
            out.append(logits.float().argmax(dim=1).cpu().numpy())
            report(0.9 + 0.09 * number / len(batches), f"finetune: testing the final model, batch {number}/{len(batches)}")
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _default_checkpoint_dir(pool_path: Path, preset: str) -> Path:
    import uuid

    from .datasets import workspace_root

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return workspace_root() / "checkpoints" / f"{pool_path.name}-{preset}-{stamp}-{uuid.uuid4().hex[:6]}"


def _evaluate_finetune(feature_dir, picks, *, test_feature_dir, preset, seed: int, progress, **options) -> EvalResult:
    """``evaluate_selection(mode="finetune")``: see :data:`PRESETS` and the module docstring."""
    import torch

    from .atomic import atomic_write_json
    from .backbones import cpu_count, get_backbone_spec, resolve_weights
    from .datasets import dataset_from_meta
    from .features import CPU_CHANNELS_LAST, _cpu_threads, _init_distributed, load_feature_set, resolve_device

    started = time.perf_counter()
    report = progress or (lambda fraction, message: None)
    timings = {}
    report(0.0, "finetune: loading the picks and their images")
    pool = load_feature_set(feature_dir)
    picks = validate_picks(picks, pool.n)
    pool_labels = _labels_of(pool, "feature set")
    preset_name = preset or _default_preset(pool.meta)
    config = _finetune_config(preset_name, options)
    if pool.meta.get("backbone") in (None, "imported") or (pool.meta.get("dataset") or {}).get("name") == "imported":
        raise BilafError("finetune trains the backbone on the picked images, but these are imported embeddings with no "
                         "images or backbone behind them; use mode linear-probe or knn")
    pool_images = dataset_from_meta(pool.meta)
    test_images, test_labels, test_description = _finetune_test_images(pool, pool_images, picks, test_feature_dir)
    class_names = _class_names(pool.meta, [pool_labels, test_labels])
    spec = get_backbone_spec(pool.meta["backbone"])
    weights, download = _weights_for(pool.meta, options)
    source = resolve_weights(spec, weights, allow_network=download)
    if pool.meta.get("weights_digest") and source.digest != pool.meta["weights_digest"]:
        raise BilafError(f"the weights given ({source.digest}) are not those the features were extracted with "
                         f"({pool.meta['weights_digest']}); pass the same checkpoint")
    device = resolve_device(options.get("device") or "auto")
    eval_batch = _positive_int("eval_batch_size", options.get("eval_batch_size") or DEFAULT_EVAL_BATCH[device.type])
    timings["load"] = time.perf_counter() - started

    dist = _init_distributed(device.type)
    try:
        if device.type == "cuda" and dist.world > 1:
            device = torch.device("cuda", dist.local_rank)
        cores = max(1, cpu_count() // dist.local_world)
        workers = options.get("num_workers")
        if workers is None:
            workers = min(8, cores) if device.type == "cuda" else min(1, cores - 1)
        workers = _positive_int("num_workers", workers, 0)
        amp = None
        if device.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        base_size = max(config.image_size, round(config.image_size / config.test_crop_fraction))
        with contextlib.ExitStack() as stack:
            if device.type == "cpu":
                stack.enter_context(_cpu_threads(cores))
            tick = time.perf_counter()
            report(0.0, f"finetune: building {spec.name} with a {len(class_names)}-class head")
            model = build_classifier(spec, source, image_size=config.image_size, n_classes=len(class_names),
                                     drop_path=config.drop_path, seed=seed).to(device)
            # channels-last: oneDNN's depthwise convolutions train ~1.5x faster on CPU too
            channels_last = device.type == "cuda" or CPU_CHANNELS_LAST
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(_parameter_groups(model, config.weight_decay), lr=config.lr,
                                        momentum=config.momentum, nesterov=config.nesterov)
            trained = model
            if dist.world > 1:
                trained = torch.nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None)
            timings["model"] = time.perf_counter() - tick

            tick = time.perf_counter()
            per_rank_batch = max(1, math.ceil(config.batch_size / dist.world))
            config = config.for_picks(len(picks), dist.world)
            plan = _epoch_batches(len(picks), config, per_rank_batch, dist.world, dist.rank, seed)
            generator = torch.Generator().manual_seed(seed * 1009 + dist.rank)
            info = _train(trained, optimizer, config, pool_images, picks, pool_labels[picks], plan, base_size=base_size,
                          workers=workers, device=device, amp=amp, channels_last=channels_last, generator=generator,
                          mean=spec.mean, std=spec.std, report=report)
            timings["train"] = time.perf_counter() - tick

            # the final model, evaluated once: each process tests a contiguous share, rank 0 joins them
            tick = time.perf_counter()
            share = np.array_split(np.arange(len(test_labels), dtype=np.int64), dist.world)[dist.rank]
            test_model = model
            if spec.fold_batchnorm:
                # testing needs no batch statistics: fold them into the convolutions of a copy, as
                # extraction does (4x faster on CPU with channels-last; same outputs to ~1e-5)
                test_model = fold_batchnorm_copy(model)
            predicted = _predict(test_model, test_images, share, config, base_size=base_size, workers=workers,
                                 batch=eval_batch, device=device, amp=amp, channels_last=channels_last, mean=spec.mean,
                                 std=spec.std, report=report)
            gathered = dist.gather(predicted)
            timings["test"] = time.perf_counter() - tick

        result = None
        if dist.rank == 0:
            predicted = np.concatenate(gathered)
            accuracy, per_class, confusion = scores_from_predictions(test_labels, predicted, len(class_names))
            out_dir = Path(options.get("checkpoint_dir") or _default_checkpoint_dir(pool.path, preset_name)).expanduser().resolve()
            params = {
                "mode": "finetune", "preset": preset_name, "seed": seed, "test_set": test_description,
                "n_test": int(len(test_labels)), "feature_set": str(pool.path), "backbone": spec.name,
                "timm_model": spec.timm_name, "weights_digest": source.digest, **config.as_dict(),
                "evaluated": "final model after the last epoch, tested once (not the best of several evaluations)",
                "device": str(device), "world_size": dist.world, "amp": amp, "num_workers": workers,
                "head_init_std": HEAD_INIT_STD, "checkpoint": str(out_dir / "checkpoint.pt"),
                "classes_in_picks": int(np.unique(pool_labels[picks]).size), "code_version": __version__, **info,
            }
            params.pop("name", None)
            params["preset_summary"] = params.pop("summary", None)
            # the last chance to cancel comes before anything is written (no checkpoint without a result)
            report(1.0, f"finetune: {100 * accuracy:.2f}% test top-1 (final model); writing the checkpoint")
            tick = time.perf_counter()
            _save_checkpoint(out_dir, model, params, class_names, picks, spec, config)
            timings["checkpoint"] = time.perf_counter() - tick
            timings["total"] = time.perf_counter() - started
            result = EvalResult(mode="finetune", accuracy=accuracy, per_class=per_class, confusion=confusion,
                                class_names=class_names, n_train=int(len(picks)), params=jsonable(params),
                                timings={k: round(v, 4) for k, v in timings.items()})
            atomic_write_json(out_dir / "result.json", result.to_dict(), indent=1)
        return dist.broadcast(result)
    finally:
        if dist.created_group:
            import torch.distributed as torch_dist

            torch_dist.destroy_process_group()


def _save_checkpoint(out_dir: Path, model, params: dict, class_names: list, picks: np.ndarray, spec,
                     config: FinetunePreset) -> None:
    """``checkpoint.pt``: the trained weights and what is needed to rebuild the model, atomically."""
    import torch

    from .atomic import atomic_path

    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    payload = {"model": state, "backbone": spec.name, "timm_model": spec.timm_name,
               "create_kwargs": dict(spec.create_kwargs), "class_names": list(class_names),
               "image_size": config.image_size, "mean": list(spec.mean), "std": list(spec.std),
               "picks": picks.tolist(), "params": jsonable(params)}
    with atomic_path(out_dir / "checkpoint.pt") as tmp:
        torch.save(payload, tmp)


# --------------------------------------------------------------------------------------------
# Module entry point (torchrun)
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m bilaf_core.finetune --features DIR --picks picks.json [--preset P] [--out result.json] …``

    The ``evaluate`` command with ``--mode finetune`` as the default, for launchers that want a
    module: ``torchrun --nproc_per_node 4 -m bilaf_core.finetune --features DIR --picks picks.json``.
    Every process joins the process group from torchrun's environment; rank 0 prints and writes.
    """
    from .cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(arg == "--mode" or arg.startswith("--mode=") for arg in argv):
        argv = ["--mode", "finetune", *argv]
    return cli_main(["evaluate", *argv])


if __name__ == "__main__":
    sys.exit(main())
