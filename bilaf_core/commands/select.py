"""``select``: run one selection method on a feature file and write picks.json."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ORDER = 20


def _method_options():
    """Every option of every registered method, once (a flag means the same in each method)."""
    from ..selection import available_methods, get_method

    seen = {}
    for name in available_methods():
        for param in get_method(name).params:
            seen.setdefault(param.name, param)
    return seen


def add_parser(subparsers) -> None:
    from ..selection import available_methods

    parser = subparsers.add_parser(
        "select",
        help="select a budget of samples from a feature file (BiLAF, ActiveFT or a baseline)",
        description="Select B samples from an N x D feature array.  Options a method does not take are rejected.",
        epilog=_constraints_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--features", required=True, help="N x D float array (.npy) or a feature-set folder")
    parser.add_argument("--method", required=True, choices=available_methods(), metavar="NAME", help="one of: " + ", ".join(available_methods()))
    parser.add_argument("--budget", required=True, help="number of picks, or a percentage of the pool such as 2%%")
    parser.add_argument("--out", required=True, help="picks.json: a JSON list of pool indices in pick order")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same inputs + seed -> same picks; default 0)")
    parser.add_argument("--diagnostics", help="also write the method's diagnostics (cluster, ring level, scores…) to this .npz")
    parser.add_argument("--exclude", metavar="FILE.json",
                        help="JSON list of pool indices never to pick (already labelled, corrupt, off-limits); every method")
    parser.add_argument("--include", metavar="FILE.json",
                        help="JSON list of pool indices that must be among the picks; they count against the budget and "
                             "the method fills the rest around them (how: see the end of this help)")
    parser.add_argument("--record", action="store_true",
                        help="also store the selection in the workspace (needs --features to be a feature-set folder); "
                             "it then shows in `runs` and in the app")
    group = parser.add_argument_group("method options (each method takes its own; see docs/methods.md)")
    for param in _method_options().values():
        metavar = {"indices": "FILE.json", "array": "FILE.npy"}.get(param.kind, param.kind.upper())
        default = "" if param.default is None else f" (default {param.default})"
        group.add_argument(param.flag, dest=f"opt_{param.name}", metavar=metavar, default=None, help=(param.help + default).replace("%", "%%"))
    parser.set_defaults(func=run)


def _constraints_epilog() -> str:
    """How each registered method treats --include (from the registry, so it cannot go stale)."""
    import textwrap

    from ..selection import available_methods, get_method

    lines = [
        "constraints:",
        "  --exclude: excluded samples are never picked by any method; they stay part of the pool's data",
        "  (clusters, densities and coverage still see them).  --include: the picks contain every include",
        "  and B - |include| new samples; how each method builds around them:",
    ]
    for name in available_methods():
        rule = get_method(name).include_rule or "does not take --include"
        lines.append(textwrap.fill(rule, width=98, initial_indent=f"  {name}: ", subsequent_indent="      ",
                                   break_on_hyphens=False, break_long_words=False))
    return "\n".join(lines)


def _load_features(path: Path):
    import numpy as np

    from ..errors import BilafError

    if path.is_dir():
        path = path / "features.npy"
    if not path.is_file():
        raise BilafError(f"features file {path} does not exist; extract features first (python -m bilaf_core extract …)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise BilafError(f"features file {path} is not a readable .npy array ({exc}); it may be truncated — re-extract it") from None


def run(args) -> int:
    import numpy as np

    from ..errors import BilafError
    from ..selection import get_method, load_indices_file, run_selection

    started = time.perf_counter()
    if args.record and not (Path(args.features) / "meta.json").is_file():
        raise BilafError(f"--record needs --features to be a feature-set folder (features.npy + meta.json), not {args.features}")
    features = _load_features(Path(args.features))
    load_seconds = time.perf_counter() - started
    spec = get_method(args.method)
    options = {}
    for name, param in _method_options().items():
        value = getattr(args, f"opt_{name}")
        if value is None:
            continue
        if param.kind == "indices":
            value = load_indices_file(value, what=f"{param.flag} file")
        elif param.kind == "array":
            target = Path(value)
            if not target.is_file():
                raise BilafError(f"{param.flag} file {target} does not exist")
            try:
                value = np.load(target, allow_pickle=False)
            except Exception as exc:
                raise BilafError(f"{param.flag} file {target} is not a readable .npy array ({exc})") from None
        options[name] = value
    constraints = {
        name: load_indices_file(path, what=f"--{name} file")
        for name, path in (("include", args.include), ("exclude", args.exclude)) if path is not None
    }
    selection = run_selection(args.method, features, args.budget, seed=args.seed, **constraints, **options)
    out = Path(args.out)
    selection.save(out, args.diagnostics)
    recorded = ""
    if args.record:
        from ..workspace import Workspace

        workspace = Workspace()
        selection_id = workspace.save_selection(selection, workspace.register_feature_set(args.features))
        recorded = f"; recorded as {selection_id} in {workspace.root}"
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in selection.timings.items())
    print(
        f"{selection.method}: {selection.budget} picks from {selection.n_pool} samples -> {out} "
        f"(load {load_seconds:.2f}s, {stages}, wall {time.perf_counter() - started:.2f}s){recorded}",
        file=sys.stdout,
    )
    return 0
