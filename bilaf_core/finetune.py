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
    The whole backbone plus a new linear head trained on the picked *images*; see
    :func:`finetune_backbone` and :data:`PRESETS`.  Evaluated once, on the final model.

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
from .errors import BilafError

ProgressFn = Callable[[float, str], None]

MODES = ("linear-probe", "knn")

#: linear probe: L2 penalty on the weights, per mean-loss unit.  Chosen once on Fashion-MNIST
#: EfficientNet-Lite0 features with picks and validation both drawn from the *train* pool (never
#: the test split); see docs/readme/evaluation.md.
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


def _json_safe(value):
    """`value` with numpy scalars/arrays turned into Python ones and NaN/inf into None."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


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
        return _json_safe(asdict(self))

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
        finetune: see :func:`finetune_backbone`; every mode: ``weights``/``download`` to
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
                      n_train=int(len(picks)), params=_json_safe(params),
                      timings={k: round(v, 4) for k, v in timings.items()})
