"""Selection-quality benchmark: methods × budgets × seeds, each selection scored by a linear probe.

One *row* is one selection (method variant, pool, budget, seed) and its evaluation: the picks are
labelled (labels are read only by the evaluation, never passed to a method), a linear probe is
trained on their features and scored on the test split.  :func:`run_benchmark` yields rows as they
finish, so a caller can write each one at once and an interrupted run can continue
(:func:`read_results` / :func:`append_results` keep a CSV that is rewritten atomically per row).

Two pools:

``full``
    The feature set as given (the offline default: the 60 000 Fashion-MNIST training images).
``biased``
    The same pool with a 100× class imbalance, built as in the public code of Gudovskiy et al.,
    "Deep Active Learning for Biased Datasets via Fisher Kernel Self-Supervision" (CVPR 2020),
    ``mnist/unsup.py`` and ``svhn/unsup.py`` (their 10-class datasets): the classes in the lower
    half of the label range (0–4 on a 10-class set) are kept whole; from the union of the upper
    half (5–9), ``L / ratio`` samples are drawn uniformly at random, L being the number of samples
    kept from the lower half.  Every under-represented class thus keeps about 1/ratio of its
    samples (on Fashion-MNIST: 30 000 + 300 samples, about 60 per under-represented class instead
    of 6 000).  The paper draws a new imbalanced set in each of its runs; here the pool of seed s
    is drawn with seed s, so the spread over seeds includes the draw of the pool.  The test split
    stays balanced (the paper evaluates on the standard test set).  On this pool ``fisher`` gets
    the unlabelled test-split features as ``target_features`` — the paper's setting, where the
    model must serve a differently distributed target — and every other method gets nothing
    extra.

Method variants (``"all"``): every registered method with its defaults, plus BiLAF with
``compat="reference"`` as its own row (``bilaf (compat reference)``, key ``bilaf-reference``).

``kmeans-multibatch`` is run as the multi-batch rounds of Pourahmadi et al. (2021): "uses the
difference of two consecutive budget sizes as the number of clusters and picks those nearest
examples to centers that have not been labeled previously".  Its set at budget b_i is its set at
the previous benchmarked budget b_{i-1} plus one round of b_i − b_{i-1} new picks with the earlier
set as ``initial_indices``; the first budget is one round from nothing.  Its selection time is
the sum of its rounds so far (the cost of producing that labelled set).  ``coreset`` also accepts
earlier picks but is run one-shot (from one random sample), as in the ActiveFT/BiLAF tables.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from . import __version__
from .atomic import atomic_write_text
from .errors import BilafError

ProgressFn = Callable[[float, str], None]

POOLS = ("full", "biased")
#: the Fisher-kernel paper's imbalance ratio (its "100x class imbalance")
DEFAULT_IMBALANCE_RATIO = 100
DEFAULT_BUDGETS = (10, 20, 50, 100, 200, 500)
#: BiLAF with the public reference code's behaviour, reported as its own row
REFERENCE_KEY = "bilaf-reference"
MULTIBATCH = "kmeans-multibatch"


# --------------------------------------------------------------------------------------------
# What to run
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CoreRule:
    """BiLAF's core count K as a rule of the budget and the pool (for the K ablation):
    ``fraction`` of the pool, or half the budget; capped to [2, B]."""

    fraction: float = 0.0
    half_budget: bool = False

    def resolve(self, budget: int, n_pool: int) -> int:
        k = budget // 2 if self.half_budget else round(self.fraction * n_pool)
        return int(min(budget, max(2, k)))


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the tables: a registered method and the options that make it this variant."""

    key: str  # what the user names: "bilaf", "bilaf-reference", "kmeans", …
    method: str  # registered selection method
    variant: str  # "" for the defaults, e.g. "compat reference"
    options: tuple = ()  # ((name, value), …) passed to run_selection; a CoreRule value is resolved per budget
    in_all: bool = True  # part of "all"; the others run when named

    @property
    def label(self) -> str:
        return f"{self.method} ({self.variant})" if self.variant else self.method


#: Variants beside the registered methods' defaults, listed after their method.  ``in_all``: part
#: of ``"all"``; the others (the paper-equation objective, the K ablation) run when named.
EXTRA_VARIANTS = (
    Variant(REFERENCE_KEY, "bilaf", "compat reference", (("compat", "reference"),)),
    Variant("bilaf-paper-equation", "bilaf", "paper equation", (("objective", "paper-equation"),), in_all=False),
    Variant("bilaf-k0.1", "bilaf", "K=0.1%", (("core_budget", CoreRule(fraction=0.001)),), in_all=False),
    Variant("bilaf-k0.5", "bilaf", "K=0.5%", (("core_budget", CoreRule(fraction=0.005)),), in_all=False),
    Variant("bilaf-khalf", "bilaf", "K=B/2", (("core_budget", CoreRule(half_budget=True)),), in_all=False),
    Variant("activeft-paper-equation", "activeft", "paper equation", (("objective", "paper-equation"),), in_all=False),
)


def known_variants() -> list[Variant]:
    """Every variant, in display order: each registered method's defaults, then its extras."""
    from .selection import available_methods

    variants: list[Variant] = []
    for name in available_methods():
        variants.append(Variant(name, name, ""))
        variants.extend(v for v in EXTRA_VARIANTS if v.method == name)
    return variants


def resolve_methods(spec: str | Sequence[str]) -> list[Variant]:
    """``"all"`` or a comma-separated list of variant keys (method names, ``bilaf-reference``,
    ``bilaf-paper-equation``, ``bilaf-k0.1`` …) or labels, in display order.  ``all`` may be
    combined with named extras (``all,bilaf-k0.1``).  BilafError names the unknown ones and
    lists the known."""
    variants = known_variants()
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    if not names:
        raise BilafError("--methods is empty; give 'all' or a comma-separated list such as bilaf,activeft,random")
    by_key = {v.key: v for v in variants}
    by_key.update({v.label: v for v in variants})
    unknown = [n for n in names if n != "all" and n not in by_key]
    if unknown:
        raise BilafError(f"unknown method(s) {', '.join(unknown)}; use 'all' or any of: {', '.join(v.key for v in variants)}")
    wanted = {by_key[n].key for n in names if n != "all"}
    return [v for v in variants if v.key in wanted or ("all" in names and v.in_all)]


def parse_budgets(text: str | Iterable[int | str]) -> list[int | str]:
    """``"10,20,50"`` -> [10, 20, 50] (distinct, each >= 1); a percentage of the pool stays a
    string (``"0.5%,1%"`` -> ["0.5%", "1%"]) and is resolved per pool by :func:`budget_count`.
    Counts come first, ascending, then percentages, ascending."""
    items = text.split(",") if isinstance(text, str) else list(text)
    counts, percents = set(), {}
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        try:
            if item.endswith("%"):
                value = float(item[:-1])
                if not (0 < value <= 100):
                    raise ValueError
                percents[value] = f"{value:g}%"
                continue
            value = float(item)
            if not value.is_integer() or value < 1:
                raise ValueError
        except ValueError:
            raise BilafError(f"--budgets takes positive whole numbers or percentages of the pool separated by commas, "
                             f"such as 10,20,50 or 0.5%,1%,2%; got {item!r}") from None
        counts.add(int(value))
    if not counts and not percents:
        raise BilafError("--budgets is empty; give counts such as 10,20,50,100 or percentages such as 0.5%,1%")
    return sorted(counts) + [percents[k] for k in sorted(percents)]


def budget_count(budget: int | str, n_pool: int) -> int:
    """A budget of :func:`parse_budgets` as a number of picks on a pool of `n_pool` samples
    (percentages round to the nearest count, at least 1)."""
    if isinstance(budget, str):
        return max(1, int(round(float(budget[:-1]) / 100.0 * n_pool)))
    return int(budget)


def parse_seeds(text: str | int | Iterable[int]) -> list[int]:
    """``3`` -> [0, 1, 2]; ``"0,5,7"`` -> [0, 5, 7]; ``"2,"`` -> [2] (one seed is a list of one)."""
    if isinstance(text, int) and not isinstance(text, bool):
        count = text
    else:
        raw = str(text).strip() if isinstance(text, str) else None
        if raw is not None and "," not in raw:
            try:
                count = int(raw)
            except ValueError:
                raise BilafError(f"--seeds takes a count (3 = seeds 0, 1, 2) or a list such as 0,5,7; got {text!r}") from None
        else:
            items = raw.split(",") if raw is not None else list(text)
            try:
                seeds = sorted({int(str(s).strip()) for s in items if str(s).strip()})
            except ValueError:
                raise BilafError(f"--seeds takes a count (3 = seeds 0, 1, 2) or a list such as 0,5,7; got {text!r}") from None
            if not seeds or min(seeds) < 0:
                raise BilafError(f"--seeds: seeds must be integers >= 0; got {text!r}")
            return seeds
    if count < 1:
        hint = " (to run seed 0 alone, write it as a list of one: --seeds 0,)" if count == 0 else ""
        raise BilafError(f"--seeds N is a count, at least 1 (seeds 0..N-1); got {count}{hint}")
    return list(range(count))


def parse_pools(text: str) -> list[str]:
    """``full`` / ``biased`` / ``both``."""
    text = (text or "").strip().lower()
    if text == "both":
        return list(POOLS)
    if text in POOLS:
        return [text]
    raise BilafError(f"--pool must be full, biased or both; got {text!r}")


# --------------------------------------------------------------------------------------------
# The biased pool
# --------------------------------------------------------------------------------------------


def minority_classes(labels: np.ndarray) -> np.ndarray:
    """The under-represented classes of the biased pool: the upper half of the label range, as
    the Fisher-kernel paper's code does (``targets.ge(R/2)``: classes 5–9 of 10)."""
    classes = np.unique(np.asarray(labels))
    if classes.size < 2:
        raise BilafError("the biased pool needs labels of at least two classes; this feature set has one")
    return classes[classes.size // 2 :]


def biased_pool(labels: np.ndarray, *, ratio: int = DEFAULT_IMBALANCE_RATIO, seed: int = 0) -> np.ndarray:
    """Indices (sorted, into the full pool) of the class-imbalanced pool.

    Every sample of the majority classes (lower half of the label range) is kept; ``L // ratio``
    samples are drawn without replacement, uniformly, from the union of the minority classes
    (upper half), L being the majority count.  Deterministic for (labels, ratio, seed).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise BilafError("the biased pool needs one label per pool sample; this feature set has none — import it with labels")
    if not np.isfinite(ratio) or ratio < 1:
        raise BilafError(f"--imbalance-ratio must be at least 1; got {ratio}")
    minority = minority_classes(labels)
    is_minority = np.isin(labels, minority)
    majority_idx = np.flatnonzero(~is_minority)
    minority_idx = np.flatnonzero(is_minority)
    keep = int(majority_idx.size // ratio)
    if keep < 1:
        raise BilafError(
            f"an imbalance of {ratio}x leaves no minority sample in a pool with {majority_idx.size} majority samples; "
            "lower --imbalance-ratio or use a larger pool")
    keep = min(keep, minority_idx.size)
    rng = np.random.default_rng([int(seed), 0xB1A5])
    drawn = rng.choice(minority_idx, size=keep, replace=False)
    return np.sort(np.concatenate([majority_idx, drawn])).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

#: CSV columns, in order
FIELDS = (
    "pool", "method", "variant", "label", "budget", "seed", "accuracy", "selection_s", "eval_s",
    "n_pool", "n_train", "classes_covered", "minority_picks", "minority_accuracy", "status", "error",
    "eval_mode", "imbalance_ratio", "features_key", "code_version", "finished",
)


@dataclasses.dataclass
class BenchRow:
    """One selection and its evaluation.  ``accuracy`` is test top-1 in [0, 1] (NaN when the
    selection failed: ``status`` "error" and ``error`` the message)."""

    pool: str
    method: str
    variant: str
    label: str
    budget: int
    seed: int
    accuracy: float
    selection_s: float
    eval_s: float
    n_pool: int
    n_train: int = 0
    classes_covered: int = 0
    #: picks from the biased pool's under-represented classes (-1 on the full pool)
    minority_picks: int = -1
    #: mean per-class test accuracy over those classes (NaN on the full pool)
    minority_accuracy: float = math.nan
    status: str = "ok"
    error: str = ""
    eval_mode: str = "linear-probe"
    imbalance_ratio: int = 0
    features_key: str = ""
    code_version: str = __version__
    finished: str = ""
    #: the run's objects (not written to the CSV): the Selection (indices into the row's pool)
    #: and the EvalResult
    selection: object = dataclasses.field(default=None, repr=False, compare=False)
    evaluation: object = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def key(self) -> tuple:
        return (self.pool, self.label, int(self.budget), int(self.seed))

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in FIELDS}


@dataclasses.dataclass
class _PoolData:
    name: str
    folder: Path  # the feature set the evaluation reads (the biased pool is written as its own)
    features: np.ndarray
    labels: np.ndarray
    extra: dict  # per-method extra options on this pool


def write_subset(fs, indices: np.ndarray, out_dir, *, key_suffix: str, rule: dict) -> Path:
    """Write rows ``indices`` of feature set `fs` as a feature set of its own (so that an
    evaluation sees exactly this pool, including the unlabeled-pool statistics the linear probe
    standardises with).  ``meta["subset_of"]`` names the full set and `rule`."""
    from .atomic import atomic_save_npy, atomic_write_json
    from .features import FEATURES_FILE, META_FILE

    out = Path(out_dir)
    indices = np.asarray(indices, dtype=np.int64)
    meta = dict(fs.meta)
    meta.update({
        "key": f"{fs.meta.get('key', 'features')}-{key_suffix}",
        "n": int(indices.size),
        "ids": [fs.ids[i] for i in indices.tolist()],
        "labels": fs.labels[indices].tolist(),
        "subset_of": {"path": str(fs.path), "key": fs.meta.get("key"), **rule},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    with contextlib.suppress(FileNotFoundError):
        (out / META_FILE).unlink()  # a reader never sees new features under old meta
    atomic_save_npy(out / FEATURES_FILE, fs.features[indices])
    atomic_write_json(out / META_FILE, meta)
    return out


def write_biased_pool(fs, indices: np.ndarray, out_dir, *, ratio: int, seed: int) -> Path:
    """The biased pool (rows ``indices`` of `fs`) as a feature set of its own."""
    return write_subset(fs, indices, out_dir, key_suffix=f"biased-r{ratio}-s{seed}",
                        rule={"rule": "biased pool", "imbalance_ratio": int(ratio), "seed": int(seed),
                              "minority_classes": minority_classes(fs.labels).tolist()})


#: share of the training pool held out as the validation split (defaults are chosen there)
VALIDATION_FRACTION = 1 / 6


def validation_split(labels: np.ndarray, *, fraction: float = VALIDATION_FRACTION, seed: int = 0):
    """(pool indices, held-out indices) of the training pool, both sorted: a stratified random
    `fraction` of every class is held out.  Methods select from the rest; the held-out labels
    score them.  This is where defaults and training lengths are chosen — never on the test split."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise BilafError("the validation split needs one label per pool sample; this feature set has none")
    if not 0 < fraction < 1:
        raise BilafError(f"the validation fraction must be between 0 and 1; got {fraction}")
    rng = np.random.default_rng([int(seed), 0x7A1])
    held = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        take = int(round(fraction * members.size))
        held.append(rng.choice(members, size=take, replace=False))
    held = np.sort(np.concatenate(held)).astype(np.int64)
    pool = np.setdiff1d(np.arange(labels.size), held).astype(np.int64)
    return pool, held


def _options(variant: Variant, pool: _PoolData, budget: int) -> dict:
    n_pool = pool.features.shape[0]
    options = {k: (v.resolve(budget, n_pool) if isinstance(v, CoreRule) else v) for k, v in variant.options}
    options.update(pool.extra.get(variant.method, {}))
    return options


def plan_counts(labels: np.ndarray, variants: Sequence[Variant], budgets: Sequence[int | str], seeds: Sequence[int],
                pools: Sequence[str], done: set, *, imbalance_ratio: int = DEFAULT_IMBALANCE_RATIO) -> tuple[dict, int, int]:
    """(the image counts each (pool, seed) runs — percentages resolved on that pool —, rows in
    the plan, rows not yet `done`)."""
    pool_sizes = {(p, seed): (labels.size if p == "full" else biased_pool(labels, ratio=imbalance_ratio, seed=seed).size)
                  for p in pools for seed in seeds}
    counts = {key: sorted({budget_count(b, n) for b in budgets}) for key, n in pool_sizes.items()}
    total = sum(len(variants) * len(c) for c in counts.values())
    todo = total - sum(1 for (p, s), c in counts.items() for v in variants for b in c if (p, v.label, b, s) in done)
    return counts, total, todo


def run_benchmark(
    feature_dir,
    *,
    methods: str | Sequence[str] = "all",
    budgets: str | Sequence[int | str] = DEFAULT_BUDGETS,
    seeds: str | int | Sequence[int] = 3,
    pools: str | Sequence[str] = ("full",),
    test_feature_dir=None,
    imbalance_ratio: int = DEFAULT_IMBALANCE_RATIO,
    eval_mode: str = "linear-probe",
    eval_options: dict | None = None,
    done: Iterable[tuple] = (),
    work_dir=None,
    progress: ProgressFn | None = None,
) -> Iterator[BenchRow]:
    """Run every (seed, pool, budget, method variant) and yield one :class:`BenchRow` each.

    Order: seeds outermost, then pools, budgets ascending, methods in display order — an
    interrupted run has all methods at the same budgets.  Rows whose :attr:`BenchRow.key` is in
    `done` are skipped (not yielded); ``kmeans-multibatch`` still recomputes the earlier rounds a
    later budget builds on.  A selection that raises :class:`BilafError` (e.g. a budget below a
    method's minimum) gives a row with status "error"; anything else propagates.

    Parameters
    ----------
    feature_dir
        The pool's feature set, with labels (the evaluation and the biased pool read them; the
        selection methods never see them).
    test_feature_dir
        The test split's feature set for the evaluation (and fisher's target on the biased
        pool).  None: the evaluation finds the dataset's test split itself; the biased pool
        needs it given.
    work_dir
        Where the biased pools are written as feature sets (default: a temporary folder,
        removed when the run ends).
    """
    from .features import load_feature_set
    from .selection import run_selection

    variants = resolve_methods(methods)
    budgets = parse_budgets(budgets)
    seeds = parse_seeds(seeds)
    pools = parse_pools(pools) if isinstance(pools, str) else list(pools)
    for p in pools:
        if p not in POOLS:
            raise BilafError(f"unknown pool {p!r}; use full, biased or both")
    if eval_mode not in ("linear-probe", "knn", "finetune"):
        raise BilafError(f"--mode must be linear-probe, knn or finetune; got {eval_mode!r}")
    fs = load_feature_set(feature_dir)
    labels = fs.labels
    if labels is None:
        raise BilafError(f"feature set {fs.path} has no labels; the benchmark scores selections with them — "
                         "extract a labelled dataset or import embeddings with --labels")
    if "biased" in pools and test_feature_dir is None:
        raise BilafError("the biased pool is evaluated on the test split and gives fisher its features as the target; "
                         "pass --test-features DIR (the test split extracted with the same backbone)")
    test_features = None
    if test_feature_dir is not None:
        test_fs = load_feature_set(test_feature_dir)
        if test_fs.dim != fs.dim:
            raise BilafError(f"test features have {test_fs.dim} dimensions but the pool has {fs.dim}; "
                             "extract both with the same backbone and layer")
        test_features = test_fs.features
    if "biased" in pools:
        for seed in seeds:
            biased_pool(labels, ratio=imbalance_ratio, seed=seed)  # fail now, not after hours
    done = {tuple(k) for k in done}
    eval_options = dict(eval_options or {})
    counts, total, todo = plan_counts(labels, variants, budgets, seeds, pools, done, imbalance_ratio=imbalance_ratio)
    count = 0
    report = progress or (lambda fraction, message: None)
    minority = minority_classes(labels) if "biased" in pools else None

    with contextlib.ExitStack() as stack:
        if work_dir is None and "biased" in pools:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bilaf-bench-"))
        for seed in seeds:
            for pool_name in pools:
                pool_budgets = counts[(pool_name, seed)]
                pending = {(v.key, b) for v in variants for b in pool_budgets if (pool_name, v.label, b, seed) not in done}
                if not pending:
                    continue
                if pool_name == "full":
                    pool = _PoolData("full", fs.path, np.ascontiguousarray(fs.features, dtype=np.float32), labels, {})
                else:
                    idx = biased_pool(labels, ratio=imbalance_ratio, seed=seed)
                    folder = write_biased_pool(fs, idx, Path(work_dir) / f"biased-r{imbalance_ratio}-s{seed}",
                                               ratio=imbalance_ratio, seed=seed)
                    pool = _PoolData("biased", folder, np.ascontiguousarray(fs.features[idx], dtype=np.float32),
                                     labels[idx], {"fisher": {"target_features": test_features}})
                n_pool = pool.features.shape[0]
                multibatch_sets: dict = {}  # budget -> Selection of the labelled set after that round
                for budget in pool_budgets:
                    for variant in variants:
                        key = (pool_name, variant.label, budget, seed)
                        needed_later = variant.method == MULTIBATCH and any(
                            k == variant.key and b > budget for k, b in pending)
                        if key in done and not needed_later:
                            continue
                        if key not in done:
                            report(min(count, todo) / max(todo, 1), f"seed {seed}, {pool_name} pool, B={budget}: {variant.label}")
                        row = BenchRow(pool=pool_name, method=variant.method, variant=variant.variant, label=variant.label,
                                       budget=budget, seed=seed, accuracy=math.nan, selection_s=math.nan, eval_s=math.nan,
                                       n_pool=n_pool, eval_mode=eval_mode,
                                       imbalance_ratio=imbalance_ratio if pool_name == "biased" else 0,
                                       features_key=str(fs.meta.get("key", "")))
                        selection = None
                        if budget > n_pool:
                            row.status, row.error = "error", f"budget {budget} is larger than the {pool_name} pool ({n_pool} samples)"
                        else:
                            try:
                                selection, row.selection_s = _select(variant, pool, budget, seed, pool_budgets, multibatch_sets, run_selection)
                            except BilafError as exc:
                                row.status, row.error = "error", str(exc)
                        if key in done:
                            continue  # only the multi-batch round was needed
                        if selection is not None:
                            row.selection = selection
                            _evaluate_into(row, pool, selection.indices, minority if pool_name == "biased" else None,
                                           test_feature_dir, eval_mode, seed, eval_options)
                        row.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
                        count += 1
                        yield row
    report(1.0, f"benchmark done: {count} rows")


def _select(variant: Variant, pool: _PoolData, budget: int, seed: int, budgets: Sequence[int],
            multibatch_sets: dict, run_selection):
    """The selection of one variant at one budget (indices into `pool`) and its seconds."""
    from .selection import Selection

    options = _options(variant, pool, budget)
    if variant.method != MULTIBATCH:
        start = time.perf_counter()
        sel = run_selection(variant.method, pool.features, budget, seed=seed, **options)
        return sel, time.perf_counter() - start
    # Multi-batch rounds along the benchmarked budgets (see the module docstring).
    earlier = [b for b in budgets if b < budget]
    previous = earlier[-1] if earlier else None
    if previous is not None and previous not in multibatch_sets:
        _select(variant, pool, previous, seed, budgets, multibatch_sets, run_selection)
    before = multibatch_sets.get(previous)
    initial = before.indices if before is not None else np.zeros(0, dtype=np.int64)
    spent = before.timings["total"] if before is not None else 0.0
    start = time.perf_counter()
    round_sel = run_selection(MULTIBATCH, pool.features, budget - initial.size, seed=seed, initial_indices=initial, **options)
    spent += time.perf_counter() - start
    rounds = (before.params["rounds"] if before is not None else []) + [int(budget)]
    # The labelled set after this round: the earlier rounds' picks, then this round's.
    sel = Selection(method=MULTIBATCH, indices=np.concatenate([initial, round_sel.indices]), n_pool=round_sel.n_pool,
                    seed=seed, params={**{k: v for k, v in round_sel.params.items() if k != "initial_indices"},
                                       "budget": int(budget), "rounds": rounds},
                    diagnostics={"round_of_pick": np.repeat(np.arange(len(rounds)), np.diff([0] + rounds))},
                    timings={"total": spent})
    multibatch_sets[budget] = sel
    return sel, spent


def _evaluate_into(row: BenchRow, pool: _PoolData, picks: np.ndarray, minority: np.ndarray | None,
                   test_feature_dir, eval_mode: str, seed: int, eval_options: dict) -> None:
    """Score the picks (labels are read here, after the selection) and fill the row."""
    from .finetune import evaluate_selection

    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if eval_mode == "finetune" and "checkpoint_dir" not in eval_options:
            # a benchmark keeps the score, not hundreds of trained backbones
            eval_options = {**eval_options, "checkpoint_dir": stack.enter_context(tempfile.TemporaryDirectory(prefix="bilaf-bench-ft-"))}
        result = evaluate_selection(pool.folder, picks, mode=eval_mode, test_feature_dir=test_feature_dir, seed=seed, **eval_options)
    row.eval_s = time.perf_counter() - start
    row.evaluation = result
    row.accuracy = float(result.accuracy)
    row.n_train = int(result.n_train)
    picked = pool.labels[np.asarray(picks, dtype=np.int64)]
    row.classes_covered = int(np.unique(picked).size)
    if minority is not None:
        row.minority_picks = int(np.isin(picked, minority).sum())
        per_class = np.asarray(result.per_class, dtype=np.float64)
        inside = minority[minority < per_class.size]
        row.minority_accuracy = float(np.nanmean(per_class[inside])) if inside.size else math.nan


# --------------------------------------------------------------------------------------------
# Results file (CSV): resumable, rewritten atomically after every row
# --------------------------------------------------------------------------------------------

_INT_FIELDS = {"budget", "seed", "n_pool", "n_train", "classes_covered", "minority_picks", "imbalance_ratio"}
_FLOAT_FIELDS = {"accuracy", "selection_s", "eval_s", "minority_accuracy"}


def _parse_row(record: dict) -> BenchRow:
    values = {}
    for name in FIELDS:
        raw = record.get(name, "")
        if name in _INT_FIELDS:
            values[name] = int(float(raw)) if raw not in ("", None) else 0
        elif name in _FLOAT_FIELDS:
            values[name] = float(raw) if raw not in ("", None) else math.nan
        else:
            values[name] = raw or ""
    return BenchRow(**values)


def read_results(path) -> list[BenchRow]:
    """Rows of a results CSV (empty when the file does not exist).  BilafError when it is not one."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = set(("pool", "label", "budget", "seed", "accuracy")) - set(reader.fieldnames or ())
            if missing:
                raise BilafError(f"{path} is not a benchmark results file (no {', '.join(sorted(missing))} column); choose another --out")
            return [_parse_row(r) for r in reader]
    except (OSError, ValueError, csv.Error) as exc:
        if isinstance(exc, BilafError):
            raise
        raise BilafError(f"{path} is not a readable benchmark results file ({exc}); move it away or choose another --out") from None


def _format(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_results(path, rows: Sequence[BenchRow]) -> Path:
    """Write every row (atomically: a reader or a crash never sees half a file)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIELDS)
    for row in rows:
        writer.writerow([_format(getattr(row, f)) for f in FIELDS])
    return atomic_write_text(path, buf.getvalue())


def completed_keys(rows: Iterable[BenchRow], features_key: str | None = None) -> set[tuple]:
    """Keys of the rows that need not run again: finished ones made from the same features.
    Error rows count as done (the error is deterministic)."""
    return {r.key for r in rows if features_key is None or r.features_key == features_key}


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def summarize(rows: Iterable[BenchRow], pool: str, field: str = "accuracy") -> dict:
    """``{label: {budget: (mean, std, n)}}`` over seeds for one pool (std: sample std, 0 for
    one seed; rows with status "error" are left out)."""
    groups: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        if r.pool != pool or r.status != "ok":
            continue
        value = getattr(r, field)
        if isinstance(value, float) and math.isnan(value):
            continue
        groups.setdefault(r.label, {}).setdefault(int(r.budget), []).append(float(value))
    out = {}
    for label, by_budget in groups.items():
        out[label] = {}
        for b, values in by_budget.items():
            arr = np.asarray(values)
            std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
            out[label][b] = (float(arr.mean()), std, int(arr.size))
    return out


def _ordered_labels(rows: Sequence[BenchRow]) -> list[str]:
    order = {v.label: i for i, v in enumerate(known_variants())}
    labels = {r.label for r in rows}
    return sorted(labels, key=lambda s: (order.get(s, len(order)), s))


def accuracy_table(rows: Sequence[BenchRow], pool: str) -> str:
    """Markdown: rows = methods, columns = budgets, cells = mean ± std test accuracy (%) over
    seeds; a cell with fewer seeds than the most complete cell says how many (``n=2``); an
    error-only cell shows ``error``."""
    rows = [r for r in rows if r.pool == pool]
    if not rows:
        return f"(no rows for the {pool} pool)"
    stats = summarize(rows, pool)
    budgets = sorted({int(r.budget) for r in rows})
    most = max((n for by_b in stats.values() for (_, _, n) in by_b.values()), default=0)
    errors = {(r.label, int(r.budget)) for r in rows if r.status != "ok"}
    lines = ["| method | " + " | ".join(f"B={b}" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for label in _ordered_labels(rows):
        cells = []
        for b in budgets:
            if b in stats.get(label, {}):
                mean, std, n = stats[label][b]
                cell = f"{100 * mean:.1f} ± {100 * std:.1f}"
                if n < most:
                    cell += f" (n={n})"
            elif (label, b) in errors:
                cell = "error"
            else:
                cell = "–"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def time_table(rows: Sequence[BenchRow], pool: str) -> str:
    """Markdown: mean selection seconds per method and budget, and the mean linear-probe seconds."""
    rows = [r for r in rows if r.pool == pool]
    if not rows:
        return f"(no rows for the {pool} pool)"
    sel = summarize(rows, pool, "selection_s")
    ev = summarize(rows, pool, "eval_s")
    budgets = sorted({int(r.budget) for r in rows})
    lines = ["| method | " + " | ".join(f"B={b}" for b in budgets) + " | evaluation (mean) |",
             "|---|" + "---:|" * (len(budgets) + 1)]
    for label in _ordered_labels(rows):
        cells = [(_seconds(sel[label][b][0]) if b in sel.get(label, {}) else "–") for b in budgets]
        evals = [m for (m, _, _) in ev.get(label, {}).values()]
        cells.append(_seconds(float(np.mean(evals))) if evals else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_table(rows: Sequence[BenchRow], pool: str, field: str, fmt: str = "{:.1f}") -> str:
    """Markdown: the mean of a numeric row field per method and budget (e.g. ``classes_covered``,
    ``minority_picks``, ``minority_accuracy``), over the seeds with a successful selection."""
    rows = [r for r in rows if r.pool == pool]
    if not rows:
        return f"(no rows for the {pool} pool)"
    stats = summarize(rows, pool, field)
    budgets = sorted({int(r.budget) for r in rows})
    lines = ["| method | " + " | ".join(f"B={b}" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for label in _ordered_labels(rows):
        cells = [(fmt.format(stats[label][b][0]) if b in stats.get(label, {}) else "–") for b in budgets]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(rows: Iterable[BenchRow], pool: str, label: str, against: str,
                       field: str = "accuracy") -> dict:
    """``{budget: (mean, low, high, n)}``: the per-seed paired difference `label` − `against` of
    `field` on one pool, with a 95 % Student-t interval over the seeds (NaN bounds for one seed).
    Only seeds where both rows succeeded are paired."""
    from scipy import stats

    values: dict[tuple, float] = {}
    for r in rows:
        if r.pool == pool and r.status == "ok" and r.label in (label, against):
            value = float(getattr(r, field))
            if not math.isnan(value):
                values[(r.label, int(r.budget), int(r.seed))] = value
    out = {}
    for b in sorted({b for (_, b, _) in values}):
        diffs = np.array([values[(label, b, s)] - values[(against, b, s)]
                          for (lab, bb, s) in values if lab == label and bb == b and (against, b, s) in values])
        if diffs.size == 0:
            continue
        mean = float(diffs.mean())
        if diffs.size > 1:
            half = float(stats.t.ppf(0.975, diffs.size - 1) * diffs.std(ddof=1) / math.sqrt(diffs.size))
            out[b] = (mean, mean - half, mean + half, int(diffs.size))
        else:
            out[b] = (mean, math.nan, math.nan, 1)
    return out


def paired_table(rows: Sequence[BenchRow], pool: str, label: str, against: Sequence[str], field: str = "accuracy") -> str:
    """Markdown: one row per compared method, one column per budget; a cell is the mean paired
    difference `label` − that method in points with its 95 % interval, and a verdict mark:
    ▲ the interval lies above 0, ▼ below, = it contains 0."""
    rows = [r for r in rows if r.pool == pool]
    budgets = sorted({int(r.budget) for r in rows if r.label == label})
    if not budgets:
        return f"(no {label} rows for the {pool} pool)"
    lines = ["| " + label + " minus | " + " | ".join(f"B={b}" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for other in against:
        diffs = paired_differences(rows, pool, label, other, field)
        cells = []
        for b in budgets:
            if b not in diffs:
                cells.append("–")
                continue
            mean, low, high, n = diffs[b]
            if math.isnan(low):
                cells.append(f"{100 * mean:+.1f} (n=1)")
                continue
            mark = "▲" if low > 0 else ("▼" if high < 0 else "=")
            cells.append(f"{mark} {100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]")
        lines.append(f"| {other} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seconds(value: float) -> str:
    if value < 0.1:
        return "< 0.1 s"
    if value < 10:
        return f"{value:.1f} s"
    return f"{value:.0f} s"


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------

_MPL_MARKERS = {"diamond": "D", "star": "*", "circle": "o", "square": "s", "square-open": "s", "triangle-up": "^",
                "triangle-down": "v", "pentagon": "p", "hexagon": "h", "cross": "P"}


def scoring_name(rows: Iterable[BenchRow]) -> str:
    """How the rows were scored, for an axis label: one mode's name, or "mixed" scoring."""
    names = {"linear-probe": "linear-probe", "knn": "k-NN", "finetune": "finetuned"}
    modes = {r.eval_mode for r in rows}
    if len(modes) != 1:
        return "mixed-scoring"
    mode = modes.pop()
    return names.get(mode, mode)


def plot_results(rows: Sequence[BenchRow], path, *, pools: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Accuracy vs budget per method (log budget axis, mean with a ±std band), one panel per
    pool, in the app's colour and marker per method; written atomically as PNG (or SVG by the
    file name).  Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BilafError("the plot needs matplotlib (pip install -r requirements.txt)") from None
    from .palette import method_color, method_label, method_symbol

    pools = [p for p in (pools or POOLS) if any(r.pool == p for r in rows)]
    if not pools:
        raise BilafError("no results to plot")
    fig, axes = plt.subplots(1, len(pools), figsize=(6.4 * len(pools), 4.8), squeeze=False, sharey=False)
    variants = {v.label: v for v in known_variants()}
    for ax, pool in zip(axes[0], pools):
        stats = summarize(rows, pool)
        for label in _ordered_labels([r for r in rows if r.pool == pool]):
            if label not in stats:
                continue
            v = variants.get(label)
            method = v.method if v else label
            budgets = sorted(stats[label])
            mean = np.array([stats[label][b][0] for b in budgets]) * 100
            std = np.array([stats[label][b][1] for b in budgets]) * 100
            name = method_label(method) + (f" ({v.variant})" if v and v.variant else "")
            marker = _MPL_MARKERS.get(method_symbol(method), "o")
            style = "--" if v and v.variant else "-"
            face = "none" if (v and v.variant) or method_symbol(method).endswith("-open") else method_color(method)
            ax.plot(budgets, mean, style, color=method_color(method), marker=marker, markerfacecolor=face,
                    markersize=5, linewidth=1.4, label=name)
            ax.fill_between(budgets, mean - std, mean + std, color=method_color(method), alpha=0.12, linewidth=0)
        ax.set_xscale("log")
        all_budgets = sorted({int(r.budget) for r in rows if r.pool == pool})
        ax.set_xticks(all_budgets)
        ax.set_xticklabels([str(b) for b in all_budgets])
        ax.minorticks_off()
        ax.set_xlabel("budget B (labelled images)")
        ax.set_ylabel(f"{scoring_name(r for r in rows if r.pool == pool)} test accuracy (%)")
        ax.set_title({"full": "full pool", "biased": "biased pool (class-imbalanced)"}.get(pool, pool))
        ax.grid(True, alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            if name not in names:
                handles.append(handle)
                names.append(name)
    fig.legend(handles, names, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fmt = "svg" if path.suffix.lower() == ".svg" else "png"
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight")
    plt.close(fig)
    from .atomic import atomic_write_bytes

    return atomic_write_bytes(path, buf.getvalue())
