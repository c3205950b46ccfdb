"""The one interface every selection method shares.

A method is a function registered by name with :func:`register_method`.  It receives validated
float32 features ``(N, D)``, an integer budget ``B``, a :class:`RunContext` (seed, progress,
stage timer) and its own declared keyword options, and returns ``(indices, diagnostics)``.
:func:`run_selection` is the only entry point callers use: it validates the features, resolves
the budget (``500`` or ``"2%"``), checks the options against the method's declared parameters
(so an undeclared option — labels, for instance — is rejected), runs the method and checks that
the result is exactly ``B`` distinct in-range indices.

Constraints (one mechanism for every method): ``exclude`` — pool indices that must never be
picked — and ``include`` — pool indices that must be among the picks and count against the
budget.  :func:`resolve_constraints` validates them once (range, repeats, overlap, budget);
the method reads them from ``ctx.include`` / ``ctx.exclude`` (``ctx.blocked(n)`` is the mask
of samples that may not become *new* picks) and fills the rest of the budget around the
includes in its own way (each method says how in ``MethodSpec.include_rule``, shown by
``select --help``).  Excluded samples stay part of the pool's data (they shape clusters,
densities and coverage); they are only never picked.  After the method, the result is checked:
every include present, no exclude present.

Labels are never an input to selection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..atomic import atomic_save_npz, atomic_write_json
from ..errors import BilafError

ProgressFn = Callable[[float, str], None]

#: Parameter kinds.  "indices" is a list of pool indices (a JSON file on the CLI), "array" an
#: (M, D) float array (an .npy file on the CLI).
PARAM_KINDS = ("int", "float", "str", "bool", "indices", "array")


@dataclasses.dataclass(frozen=True)
class Param:
    """One declared option of a method: name, default, one-line help (shown in CLI and app)."""

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    #: minimum is exclusive (e.g. temperature > 0)
    exclusive_minimum: bool = False

    def __post_init__(self):
        if self.kind not in PARAM_KINDS:
            raise ValueError(f"unknown parameter kind {self.kind!r}")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def coerce(self, value: Any, method: str) -> Any:
        """Check and convert a user value; raise BilafError naming the flag and the rule."""
        if value is None:
            return None
        where = f"{method}: {self.flag}"
        try:
            if self.kind == "int":
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise TypeError
                value = int(value)
            elif self.kind == "float":
                value = float(value)
                if not np.isfinite(value):
                    raise TypeError
            elif self.kind == "str":
                value = str(value)
            elif self.kind == "bool":
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise TypeError
                    value = value.lower() in ("true", "1", "yes")
                else:
                    value = bool(value)
            elif self.kind == "indices":
                value = np.asarray(value)
                if value.ndim != 1 or (value.size and not np.issubdtype(value.dtype, np.integer)):
                    raise TypeError
                value = value.astype(np.int64)
            elif self.kind == "array":
                value = np.asarray(value)
                if value.ndim != 2 or not np.issubdtype(value.dtype, np.number):
                    raise TypeError
        except (TypeError, ValueError):
            expected = {"indices": "a 1-D list of integer indices", "array": "a 2-D numeric array"}
            raise BilafError(f"{where} expects {expected.get(self.kind, self.kind)}, got {value!r:.80}") from None
        if self.choices is not None and value not in self.choices:
            raise BilafError(f"{where} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
        if self.kind in ("int", "float"):
            if self.minimum is not None and (value < self.minimum or (self.exclusive_minimum and value == self.minimum)):
                op = ">" if self.exclusive_minimum else ">="
                raise BilafError(f"{where} must be {op} {self.minimum}; got {value}")
            if self.maximum is not None and value > self.maximum:
                raise BilafError(f"{where} must be <= {self.maximum}; got {value}")
        return value


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable[..., tuple[np.ndarray, dict]]
    summary: str
    params: tuple[Param, ...]
    #: how the method fills the budget around ``include`` picks (one line, shown by `select
    #: --help`); None: the method takes no includes.  Every method honours ``exclude``.
    include_rule: str | None = None

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, *, summary: str, params: tuple[Param, ...] | list[Param] = (),
                    include_rule: str | None = None):
    """Decorator: register ``fn(features, budget, ctx, **params) -> (indices, diagnostics)``.

    The method must never return an index of ``ctx.exclude``; if it takes includes
    (``include_rule`` says how it fills the budget around them) its B picks contain every index
    of ``ctx.include``.  `run_selection` checks both."""

    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"selection method {name!r} registered twice")
        _REGISTRY[name] = MethodSpec(name=name, fn=fn, summary=summary, params=tuple(params), include_rule=include_rule)
        return fn

    return wrap


def _ensure_loaded() -> None:
    # Importing the package registers every built-in method (one module per method).
    from . import _builtin  # noqa: F401


def available_methods() -> list[str]:
    """Registered method names, the flagship first (see ``_builtin.DISPLAY_ORDER``)."""
    _ensure_loaded()
    from ._builtin import DISPLAY_ORDER

    rank = {name: i for i, name in enumerate(DISPLAY_ORDER)}
    return sorted(_REGISTRY, key=lambda name: (rank.get(name, len(rank)), name))


def get_method(name: str) -> MethodSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BilafError(f"unknown selection method {name!r}; known: {', '.join(_REGISTRY)}") from None


_NO_INDICES = np.empty(0, dtype=np.int64)


class RunContext:
    """What a method gets besides its data: the seed, a progress callback, a stage timer and
    the constraints: ``include`` (must be picked, counts against the budget) and ``exclude``
    (never picked), both validated int64 arrays (empty when there are none)."""

    def __init__(self, seed: int, progress: ProgressFn | None = None, *,
                 include: np.ndarray | None = None, exclude: np.ndarray | None = None):
        self.seed = int(seed)
        self._progress = progress
        self.timings: dict[str, float] = {}
        self.include = _NO_INDICES if include is None else np.asarray(include, dtype=np.int64)
        self.exclude = _NO_INDICES if exclude is None else np.asarray(exclude, dtype=np.int64)

    def blocked(self, n_pool: int) -> np.ndarray:
        """(N,) bool: samples that may not become a *new* pick (excluded, or already included)."""
        mask = np.zeros(n_pool, dtype=bool)
        mask[self.exclude] = True
        mask[self.include] = True
        return mask

    def excluded(self, n_pool: int) -> np.ndarray:
        """(N,) bool mask of ``exclude``."""
        mask = np.zeros(n_pool, dtype=bool)
        mask[self.exclude] = True
        return mask

    def rng(self, stream: int = 0) -> np.random.Generator:
        """A fresh generator for this seed (independent `stream`s for independent choices)."""
        return np.random.default_rng([self.seed, stream])

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress in [0, 1].  The callback may raise `Cancelled` to stop the method."""
        if self._progress is not None:
            self._progress(float(min(max(fraction, 0.0), 1.0)), message)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


@dataclasses.dataclass
class Selection:
    """The result of a selection: exactly `budget` distinct pool indices, in pick order."""

    method: str
    indices: np.ndarray
    n_pool: int
    seed: int
    params: dict[str, Any]
    diagnostics: dict[str, Any]
    timings: dict[str, float]

    def __post_init__(self):
        self.indices = np.asarray(self.indices, dtype=np.int64).reshape(-1)
        check_indices(self.indices, self.n_pool, what=f"{self.method} picks")

    @property
    def budget(self) -> int:
        return int(self.indices.size)

    def to_list(self) -> list[int]:
        return [int(i) for i in self.indices]

    def summary(self) -> str:
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items())
        return f"{self.method}: {self.budget} picks from {self.n_pool} samples (seed {self.seed}; {stages})"

    def save(self, picks_path: str | Path, diagnostics_path: str | Path | None = None) -> None:
        """Write picks as a JSON list of ints (what the BiLAF/DeiT finetuning scripts read) and,
        optionally, every array diagnostic to an .npz.  Both writes are atomic."""
        if diagnostics_path is not None:
            arrays = {k: np.asarray(v) for k, v in self.diagnostics.items() if v is not None}
            arrays["indices"] = self.indices
            atomic_save_npz(diagnostics_path, **arrays)
        atomic_write_json(picks_path, self.to_list())


def check_indices(indices: np.ndarray, n_pool: int, *, what: str = "indices") -> np.ndarray:
    """Raise BilafError unless `indices` are distinct integers in [0, n_pool)."""
    indices = np.asarray(indices)
    if indices.ndim != 1:
        raise BilafError(f"{what} must be a flat list of integers")
    if indices.size and not np.issubdtype(indices.dtype, np.integer):
        raise BilafError(f"{what} must be integers, got {indices.dtype}")
    if indices.size:
        bad = indices[(indices < 0) | (indices >= n_pool)]
        if bad.size:
            raise BilafError(f"{what}: {bad.size} out of range for a pool of {n_pool} (first: {int(bad[0])})")
        uniq, counts = np.unique(indices, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1]
            raise BilafError(f"{what}: {dup.size} repeated (first: {int(dup[0])}); every index may appear once")
    return indices.astype(np.int64)


def validate_features(features: Any, *, name: str = "features", chunk: int = 65536) -> np.ndarray:
    """Return `features` as a C-contiguous float32 (N, D) array, or raise a BilafError that says
    what is wrong (shape, dtype, NaN/inf rows with their indices)."""
    if not isinstance(features, np.ndarray):
        try:
            features = np.asarray(features)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise BilafError(f"{name} could not be read as an array: {exc}") from None
    if features.ndim != 2:
        raise BilafError(f"{name} must be a 2-D array (N samples x D dims); got shape {features.shape}")
    n, d = features.shape
    if n == 0 or d == 0:
        raise BilafError(f"{name} is empty (shape {features.shape}); extract features first")
    if not (np.issubdtype(features.dtype, np.floating) or np.issubdtype(features.dtype, np.integer)):
        raise BilafError(f"{name} must be numeric; got dtype {features.dtype}")
    out = np.ascontiguousarray(features, dtype=np.float32)
    bad_rows = []
    for start in range(0, n, chunk):
        ok = np.isfinite(out[start : start + chunk]).all(axis=1)
        if not ok.all():
            bad_rows.append(np.flatnonzero(~ok) + start)
    if bad_rows:
        bad = np.concatenate(bad_rows)
        first = ", ".join(str(int(i)) for i in bad[:5])
        raise BilafError(
            f"{name} has NaN or infinite values in {bad.size} of {n} rows (first: {first}); "
            "re-extract those samples or drop them from the pool"
        )
    return out


def resolve_budget(budget: int | float | str, n_pool: int) -> int:
    """``500`` -> 500; ``"2%"`` -> round(2% of the pool).  Raise BilafError unless 1 <= B <= N."""
    text = str(budget).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not np.isfinite(pct) or pct <= 0:
                raise ValueError
            value = int(round(n_pool * pct / 100.0))
            if value < 1:
                raise BilafError(f"budget {text} of a pool of {n_pool} is less than one sample; raise it")
        else:
            as_float = float(text)
            if not as_float.is_integer():
                raise ValueError
            value = int(as_float)
    except ValueError:
        raise BilafError(f"budget must be a positive count like 500 or a percentage like 2%; got {budget!r}") from None
    if value <= 0:
        raise BilafError(f"budget must be at least 1; got {value}")
    if value > n_pool:
        raise BilafError(f"budget {value} is larger than the pool ({n_pool} samples); lower it")
    return value


def resolve_constraints(include: Any, exclude: Any, n_pool: int, budget: int):
    """Validate ``include`` / ``exclude`` (lists of pool indices or None) against the pool and
    the budget.  Returns them as int64 arrays (empty when None); raises BilafError that says
    what to fix: out of range, repeated, in both lists, more includes than the budget, or so
    many excludes that fewer than ``budget`` samples are left to pick from."""
    include = _NO_INDICES if include is None else check_indices(np.asarray(include).reshape(-1), n_pool, what="--include")
    exclude = _NO_INDICES if exclude is None else check_indices(np.asarray(exclude).reshape(-1), n_pool, what="--exclude")
    both = np.intersect1d(include, exclude)
    if both.size:
        raise BilafError(
            f"--include and --exclude share {both.size} indices (first: {int(both[0])}); a sample cannot be both "
            "required and forbidden — remove it from one of the two files"
        )
    if include.size > budget:
        raise BilafError(
            f"--include holds {include.size} indices but the budget is {budget}; the includes count against the "
            f"budget, so raise the budget to at least {include.size} or include fewer"
        )
    left = n_pool - exclude.size
    if left < budget:
        raise BilafError(
            f"--exclude leaves {left} of the {n_pool} samples, fewer than the budget {budget}; lower the budget to "
            f"at most {left} or exclude fewer"
        )
    return include, exclude


def run_selection(
    method: str,
    features: Any,
    budget: int | str,
    *,
    seed: int = 0,
    progress: ProgressFn | None = None,
    include: Any = None,
    exclude: Any = None,
    **options: Any,
) -> Selection:
    """Run a registered method.  See the module docstring for what is checked.

    ``include``: pool indices that must be among the picks (they count against the budget; the
    method fills the rest around them, see ``get_method(m).include_rule``).  ``exclude``: pool
    indices that are never picked.  Both are lists/arrays of ints or None."""
    spec = get_method(method)
    features = validate_features(features)
    n_pool = features.shape[0]
    budget_count = resolve_budget(budget, n_pool)
    known = {p.name for p in spec.params}
    unknown = sorted(set(options) - known)
    if unknown:
        allowed = ", ".join(p.flag for p in spec.params) or "none"
        raise BilafError(f"{method} does not take {', '.join(unknown)}; its options: {allowed}")
    params = {p.name: p.coerce(options.get(p.name, p.default), method) for p in spec.params}
    include, exclude = resolve_constraints(include, exclude, n_pool, budget_count)
    if include.size and spec.include_rule is None:
        raise BilafError(f"{method} does not take --include (it has no way to build around given picks); "
                         "use --exclude only, or another method")
    ctx = RunContext(seed, progress, include=include, exclude=exclude)
    ctx.progress(0.0, f"{method}: selecting {budget_count} of {n_pool}")
    start = time.perf_counter()
    indices, diagnostics = spec.fn(features, budget_count, ctx, **params)
    ctx.timings["total"] = time.perf_counter() - start
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size != budget_count:
        raise AssertionError(f"{method} returned {indices.size} picks for a budget of {budget_count}")
    if exclude.size and np.isin(indices, exclude).any():
        raise AssertionError(f"{method} returned an excluded index")
    if include.size and not np.isin(include, indices).all():
        raise AssertionError(f"{method} left out an included index")
    # Record what produced the result; array-valued options are summarised, not stored inline.
    recorded = {}
    for k, v in params.items():
        if isinstance(v, np.ndarray):
            recorded[k] = f"<{v.shape[0]} values>" if v.ndim == 1 else f"<array {v.shape[0]}x{v.shape[1]}>"
        else:
            recorded[k] = v
    recorded["budget"] = budget_count
    # The constraints are part of what produced the result: counts in the params, the indices
    # themselves with the diagnostics (so a re-run or a child record can reuse them).
    diagnostics = dict(diagnostics)
    for name, values in (("include", include), ("exclude", exclude)):
        if values.size:
            recorded[name] = f"<{values.size} values>"
            diagnostics[f"{name}_indices"] = values.copy()
    ctx.progress(1.0, "done")
    return Selection(
        method=method,
        indices=indices,
        n_pool=n_pool,
        seed=int(seed),
        params=recorded,
        diagnostics=diagnostics,
        timings=ctx.timings,
    )


def load_indices_file(path: str | Path, *, what: str = "indices file") -> np.ndarray:
    """Read a JSON list of ints (or a .npy of ints).  Raise BilafError when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise BilafError(f"{what} {path} does not exist")
    try:
        if path.suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            data = json.loads(path.read_text())
            if isinstance(data, dict):  # accept {"indices": [...]} as written by the app
                data = data.get("indices")
            data = np.asarray(data)
    except Exception as exc:
        raise BilafError(f"{what} {path} is not a JSON list of integers ({exc})") from None
    if data.ndim != 1 or (data.size and not np.issubdtype(data.dtype, np.integer)):
        raise BilafError(f"{what} {path} must hold a flat list of integers")
    return data.astype(np.int64)
