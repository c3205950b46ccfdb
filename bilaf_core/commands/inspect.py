"""``inspect``: what picks cover and miss — coverage, gaps, near-duplicates, pseudo-classes, overlap."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ORDER = 25


def add_parser(subparsers) -> None:
    from ..inspect import DEFAULT_DENSITY_NEIGHBORS, DEFAULT_DENSITY_REFERENCE, DEFAULT_DUPLICATE_FRACTION, DEFAULT_GAPS

    parser = subparsers.add_parser(
        "inspect",
        help="judge picks: coverage, gaps, near-duplicate picks, picks per pseudo-class, overlap between picks files",
        description=(
            "For each picks file: the distance from every pool sample to its nearest pick (mean/p50/p95/max; the "
            "per-sample array goes to <report>.coverage.npy, one row per picks file), pairs of near-duplicate picks, "
            "the densest regions with no pick nearby (gaps), and picks against members per pseudo-class when the "
            "selection has them; across files the shared / Jaccard overlap matrices.  Exact nearest-neighbour "
            "search (faiss, chunked; GPU when present)."
        ),
    )
    parser.add_argument("--features", required=True, help="N x D float array (.npy) or a feature-set folder")
    parser.add_argument("--picks", required=True, action="append", metavar="PICKS",
                        help="a picks file (JSON list of pool indices, as select writes), a selection folder "
                             "(picks.json + diagnostics.npz, e.g. <workspace>/selections/<id>) or a workspace selection "
                             "id (sel-…, as `runs` lists them); repeat to compare")
    parser.add_argument("--out", metavar="REPORT.json",
                        help="write the report here and the per-sample coverage beside it (REPORT.coverage.npy); "
                             "without it the report is printed as JSON")
    parser.add_argument("--space", choices=["normalized", "raw"], default="normalized",
                        help="measure distances on L2-normalised features (default; where most methods select, 0-2) "
                             "or on the features as given")
    parser.add_argument("--duplicate-threshold", type=float, metavar="X",
                        help=f"two picks at most this far apart are near-duplicates (default {DEFAULT_DUPLICATE_FRACTION} x "
                             "the median feature length: 0.05 on normalised features, cosine >= 0.99875)")
    parser.add_argument("--gaps", type=int, default=DEFAULT_GAPS, metavar="N", help=f"gap regions per picks file (default {DEFAULT_GAPS})")
    parser.add_argument("--pseudo-classes", metavar="FILE",
                        help="one (N,) integer labelling for every picks file (.npy, JSON list, or an .npz holding "
                             "cluster / assignment / pseudo_label); default: each selection folder's own diagnostics")
    parser.add_argument("--density-neighbors", type=int, default=DEFAULT_DENSITY_NEIGHBORS, metavar="K",
                        help=f"density = 1 / mean distance to the K nearest reference samples (default {DEFAULT_DENSITY_NEIGHBORS})")
    parser.add_argument("--density-reference", type=int, default=DEFAULT_DENSITY_REFERENCE, metavar="M",
                        help=f"pool samples the density is measured against, seeded (default {DEFAULT_DENSITY_REFERENCE}; "
                             "the whole pool when smaller)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the density reference sample (default 0)")
    parser.set_defaults(func=run)


def _load_labels(path: Path, what: str):
    import numpy as np

    from ..errors import BilafError
    from ..inspect import LABEL_DIAGNOSTICS

    if not path.is_file():
        raise BilafError(f"{what} {path} does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                key = next((k for k in LABEL_DIAGNOSTICS if k in npz.files), None)
                if key is None:
                    raise BilafError(f"{what} {path} holds none of {', '.join(LABEL_DIAGNOSTICS)}; "
                                     "give a selection's diagnostics.npz or an (N,) .npy of integers")
                labels = npz[key]
        elif path.suffix == ".npy":
            labels = np.load(path, allow_pickle=False)
        else:
            labels = np.asarray(json.loads(path.read_text()))
    except BilafError:
        raise
    except Exception as exc:
        raise BilafError(f"{what} {path} is not readable as a list of integers ({exc})") from None
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise BilafError(f"{what} {path} must hold one integer per pool sample")
    return labels.astype(np.int64)


def _load_picks(value: str):
    """(name, picks, labels or None) from a picks file or a selection folder."""
    from ..errors import BilafError
    from ..selection import load_indices_file

    path = Path(value)
    if not path.exists() and value.startswith("sel-") and "/" not in value:
        # a selection id of the workspace (as `runs` lists them)
        from ..workspace import Workspace

        path = Workspace().selection_files(value)["picks"].parent
    if path.is_dir():
        picks_file = path / "picks.json"
        if not picks_file.is_file():
            raise BilafError(f"--picks folder {path} holds no picks.json; give a picks file or a selection folder")
        picks = load_indices_file(picks_file, what="--picks file")
        diagnostics = path / "diagnostics.npz"
        labels = None
        if diagnostics.is_file():
            import numpy as np

            from ..inspect import LABEL_DIAGNOSTICS, labels_from_diagnostics

            try:
                with np.load(diagnostics, allow_pickle=False) as npz:
                    found = labels_from_diagnostics({k: npz[k] for k in LABEL_DIAGNOSTICS if k in npz.files})
            except Exception as exc:
                raise BilafError(f"{diagnostics} is not a readable .npz ({exc}); run the selection again") from None
            labels = None if found is None else found[1]
        return path.name, picks, labels
    return value, load_indices_file(path, what="--picks file"), None


def run(args) -> int:
    from ..atomic import atomic_save_npy, atomic_write_json, jsonable
    from ..errors import BilafError
    from ..inspect import inspect_selections
    from .select import _load_features

    started = time.perf_counter()
    if args.gaps < 0:
        raise BilafError(f"--gaps must be >= 0; got {args.gaps}")
    if args.density_neighbors < 1 or args.density_reference < 2:
        raise BilafError("--density-neighbors must be >= 1 and --density-reference >= 2")
    features = _load_features(Path(args.features))
    loaded = [_load_picks(value) for value in args.picks]
    names = [name for name, _, _ in loaded]
    labels = [lab for _, _, lab in loaded]
    if args.pseudo_classes:
        shared_labels = _load_labels(Path(args.pseudo_classes), "--pseudo-classes file")
        labels = [shared_labels] * len(loaded)
    result = inspect_selections(
        features, [picks for _, picks, _ in loaded], names=names, labels=labels, space=args.space,
        duplicate_threshold=args.duplicate_threshold, n_gaps=args.gaps, density_neighbors=args.density_neighbors,
        density_reference=args.density_reference, seed=args.seed,
    )
    report = result.report
    report["features"] = str(args.features)
    for entry, (value, _, lab) in zip(report["selections"], loaded):
        entry["source"] = value
        if entry["pseudo_classes"] is not None:
            entry["pseudo_classes"]["source"] = "--pseudo-classes" if args.pseudo_classes else "diagnostics"
    if args.out is None:
        print(json.dumps(jsonable(report), indent=1))
        return 0
    out = Path(args.out)
    coverage_file = out.with_name(out.stem + ".coverage.npy")
    for row, entry in enumerate(report["selections"]):
        entry["coverage"]["per_sample"] = {"file": coverage_file.name, "row": row}
    atomic_save_npy(coverage_file, result.coverage)
    atomic_write_json(out, jsonable(report), indent=1)
    _print_summary(report, out, coverage_file, time.perf_counter() - started)
    return 0


def _print_summary(report: dict, out: Path, coverage_file: Path, wall: float) -> None:
    lines = [f"inspect: {report['n_pool']} samples x {report['dim']} ({report['space']}), "
             f"{len(report['selections'])} picks file(s) -> {out} + {coverage_file.name} "
             f"(inspect {report['timings']['total']:.2f}s, wall {wall:.2f}s)"]
    width = max(12, *(len(s["name"]) for s in report["selections"]))
    lines.append(f"{'picks':<{width}}  {'B':>6}  {'mean':>7}  {'p50':>7}  {'p95':>7}  {'max':>7}  {'dup pairs':>9}  largest gap")
    for s in report["selections"]:
        c = s["coverage"]
        gap = s["gaps"][0] if s["gaps"] else None
        gap_text = f"#{gap['representative']} ({gap['size']} samples)" if gap else "-"
        lines.append(f"{s['name']:<{width}}  {s['budget']:>6}  {c['mean']:>7.4f}  {c['p50']:>7.4f}  {c['p95']:>7.4f}  "
                     f"{c['max']:>7.4f}  {len(s['near_duplicates']):>9}  {gap_text}")
    if len(report["selections"]) > 1:
        lines.append("overlap (shared picks / Jaccard):")
        for name, shared, jac in zip(report["overlap"]["names"], report["overlap"]["shared"], report["overlap"]["jaccard"]):
            cells = "  ".join(f"{s:>6} / {j:.3f}" for s, j in zip(shared, jac))
            lines.append(f"  {name:<{width}}  {cells}")
    print("\n".join(lines), file=sys.stdout)
