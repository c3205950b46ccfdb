"""``evaluate``: how good is a model trained on these picks?  Linear probe, k-NN or a finetune.

Under ``torchrun --nproc_per_node=N -m bilaf_core evaluate --mode finetune …`` every process
trains on its share of the picks (DDP) and rank 0 alone prints, writes ``--out`` and records.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ORDER = 30

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # why: bilaf_core/backbones.py

#: flags that only mean something for one mode: flag -> (mode, option name)
_MODE_FLAGS = {
    "k": ("knn", "k"),
    "epochs": ("finetune", "epochs"), "lr": ("finetune", "lr"), "batch_size": ("finetune", "batch_size"),
    "image_size": ("finetune", "image_size"), "workers": ("finetune", "num_workers"),
    "checkpoint_dir": ("finetune", "checkpoint_dir"), "device": ("finetune", "device"),
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="test accuracy of a classifier trained on picks: linear probe, k-NN or full finetune",
        description=(
            "Train on the labelled picks of a feature set and report test top-1 accuracy, per class.  The test set "
            "is --test-features, else the dataset's test split (features extracted once and cached beside the "
            "pool), else the pool samples that were not picked.  The run is recorded in the workspace."
        ),
    )
    parser.add_argument("--features", required=True, metavar="DIR", help="the pool's feature-set folder (features.npy + meta.json with labels)")
    parser.add_argument("--picks", required=True, metavar="FILE", help="picks.json: a JSON list of distinct pool indices (as select writes)")
    parser.add_argument("--mode", default="linear-probe", choices=["linear-probe", "knn", "finetune"],
                        help="linear-probe (default: logistic regression on the features, seconds), knn (cosine "
                             "k-NN on the features) or finetune (the whole backbone on the picked images)")
    parser.add_argument("--preset", choices=["paper", "cpu-quick"],
                        help="finetune recipe (default: paper for dino-vits16 features, cpu-quick otherwise)")
    parser.add_argument("--test-features", metavar="DIR", help="labelled feature set to test on (default: the dataset's test split)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--k", type=int, help="knn: neighbours that vote (default 20, capped at the number of picks)")
    parser.add_argument("--epochs", type=int, help="finetune: epochs (default: the preset's)")
    parser.add_argument("--lr", type=float, help="finetune: peak learning rate at the preset's batch size (default: the preset's)")
    parser.add_argument("--batch-size", type=int, help="finetune: images per step, over all processes (default: the preset's)")
    parser.add_argument("--image-size", type=int, help="finetune: input side in pixels (default: the preset's)")
    parser.add_argument("--workers", type=int, help="finetune: DataLoader workers decoding image files (default: 1 on CPU, up to 8 on GPU)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="finetune: where to train (default auto = cuda when available)")
    parser.add_argument("--checkpoint-dir", metavar="DIR", help="finetune: where checkpoint.pt and result.json go "
                        "(default <workspace>/checkpoints/<feature set>-<preset>-<time>-<id>)")
    parser.add_argument("--weights", metavar="PATH", help="the checkpoint the features were extracted with, when it was a file "
                        "(rebuilds the backbone for the test split or the finetune)")
    parser.add_argument("--download", action="store_true", help="allow timm to download the backbone's weights (needs internet)")
    parser.add_argument("--out", metavar="FILE", help="also write the result as JSON here")
    parser.add_argument("--no-record", action="store_true", help="do not record the run in the workspace")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no per-class table")
    parser.set_defaults(func=run)


def _options(args) -> dict:
    from ..errors import BilafError

    options = {}
    for flag, (mode, name) in _MODE_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if args.mode != mode:
            raise BilafError(f"--{flag.replace('_', '-')} is for --mode {mode}, not {args.mode}; drop it or change --mode")
        options[name] = value
    if args.weights is not None:
        options["weights"] = args.weights
    if args.download:
        options["download"] = True
    return options


def _read_picks(path: Path):
    from ..errors import BilafError

    if not path.is_file():
        raise BilafError(f"picks file {path} does not exist; write one with `python -m bilaf_core select … --out {path}`")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise BilafError(f"picks file {path} is not valid JSON ({exc}); it must hold a JSON list of pool indices") from None
    if isinstance(data, dict):  # {"indices": [...]} as the app exports
        data = data.get("indices")
    if not isinstance(data, list):
        raise BilafError(f"picks file {path} must hold a JSON list of pool indices (or {{\"indices\": [...]}})")
    return data


def _record(features: Path, picks, picks_path: Path, result) -> str:
    """Save the evaluation in the workspace, under the stored selection with exactly these picks
    (made by any method) or, when there is none, under the picks imported as a new selection."""
    import numpy as np

    from ..workspace import Workspace

    workspace = Workspace()
    feature_set_id = workspace.register_feature_set(features)
    wanted = np.asarray(picks, dtype=np.int64)
    selection_id = None
    for row in workspace.list_selections(feature_set_id):
        if int(row.get("budget", -1)) != wanted.size:
            continue
        try:
            stored = json.loads(workspace.selection_files(row["id"])["picks"].read_text())
        except (OSError, ValueError):
            continue
        if np.array_equal(np.asarray(stored, dtype=np.int64), wanted):
            selection_id = row["id"]
            break
    if selection_id is None:
        selection_id = workspace.import_picks(feature_set_id, wanted, name=picks_path.name, source=str(picks_path.resolve()))
    return workspace.save_evaluation(selection_id, result)


def _print_result(result, quiet: bool) -> None:
    print(result.summary())
    if quiet:
        return
    support = [sum(row) for row in result.confusion]
    width = max([len("class")] + [len(name) for name in result.class_names])
    print(f"{'class':<{width}}  accuracy  test samples")
    for name, accuracy, count in zip(result.class_names, result.per_class, support):
        shown = "       -" if accuracy is None else f"{100 * accuracy:7.2f}%"
        print(f"{name:<{width}}  {shown}  {count:>12,}")


def run(args) -> int:
    from ..atomic import atomic_write_json
    from ..finetune import evaluate_selection

    rank = int(os.environ.get("RANK", "0"))
    options = _options(args)
    picks_path = Path(args.picks)
    picks = _read_picks(picks_path)
    show = rank == 0 and not args.quiet
    bars = []
    started = time.perf_counter()

    def progress(fraction: float, message: str) -> None:
        # the bar appears after half a second, so input errors (found at once) print one clean line
        if not show or (not bars and time.perf_counter() - started < 0.5):
            return
        if not bars:
            from tqdm import tqdm

            bars.append(tqdm(total=1000, desc="evaluate", file=sys.stderr, dynamic_ncols=True,
                             bar_format="{percentage:3.0f}%|{bar:24}| {desc}"))
        bars[0].update(max(0, round(fraction * 1000) - bars[0].n))
        bars[0].set_description_str(message, refresh=True)

    try:
        result = evaluate_selection(args.features, picks, args.mode, test_feature_dir=args.test_features,
                                    preset=args.preset, seed=args.seed, progress=progress, **options)
    finally:
        for bar in bars:
            bar.close()
    if rank != 0:
        return 0
    if args.out:
        atomic_write_json(args.out, result.to_dict(), indent=1)
    _print_result(result, args.quiet)
    if not args.no_record:
        evaluation_id = _record(Path(args.features), picks, picks_path, result)
        print(f"recorded as {evaluation_id} in the workspace ({time.perf_counter() - started:.1f} s in all)")
    return 0

