"""Short pretraining trials: 20-NN accuracy on Fashion-MNIST against CPU seconds spent training.

Evaluation (the issue's protocol): features of the first 5 000 train images (references) and the
first 2 000 test images (queries), cosine similarity, majority vote of the 20 nearest references.
:func:`knn20_accuracy` and :func:`evaluate_backbone` are reusable (e.g. on a finished ``pool:``
backbone); a trial trains one recipe for ``--points`` short epochs of ``--steps`` steps each and
evaluates the checkpoint after every one, so one run gives a curve.  The evaluation's own CPU time
is measured and left out of the training CPU seconds.

    nice -n 10 python bench/pretrain_trials.py baseline
    nice -n 10 python bench/pretrain_trials.py trial tiny-vicreg --steps 60 --points 4
    python bench/pretrain_trials.py evaluate pool:/path/to/backbone
    python bench/pretrain_trials.py checkpoint /path/to/running/backbone-folder   # watch a long run
    python bench/pretrain_trials.py checkpoint FOLDER --record   # ... and append the point to --results

Every run appends its rows to ``--results`` (JSON lines), and ``table`` prints them with a
log-linear extrapolation per recipe: 20-NN ≈ a + b·ln(CPU seconds).  Runs on one thread
(``torch.set_num_threads(1)``) so CPU seconds are comparable across recipes and machine load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

REFERENCES, QUERIES, K = 5000, 2000, 20

#: candidate recipes: keyword arguments of bilaf_core.pretrain.pretrain
RECIPES = {
    "tiny-vicreg": dict(arch="tiny-cnn", method="vicreg", image_size=28, batch_size=256),
    "tiny-simclr": dict(arch="tiny-cnn", method="simclr", image_size=28, batch_size=256),
    "tiny-byol": dict(arch="tiny-cnn", method="byol", image_size=28, batch_size=256),
    "small-vicreg": dict(arch="small-cnn", method="vicreg", image_size=28, batch_size=256),
    "small-simclr": dict(arch="small-cnn", method="simclr", image_size=28, batch_size=256),
    "lite0-simclr-imagenet": dict(arch="efficientnet-lite0", method="simclr", init="imagenet", image_size=32, batch_size=128),
    "lite0-byol-imagenet": dict(arch="efficientnet-lite0", method="byol", init="imagenet", image_size=32, batch_size=128),
    # domain adaptation of the offline default's own feature (blocks.4), trained only up to that stage
    "lite0-b4-simclr-imagenet": dict(arch="efficientnet-lite0", method="simclr", init="imagenet", image_size=48,
                                     batch_size=128, feature_layer="blocks.4"),
    "lite0-b4-byol-imagenet": dict(arch="efficientnet-lite0", method="byol", init="imagenet", image_size=48,
                                   batch_size=128, feature_layer="blocks.4"),
}


def majority_vote(neighbour_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Per row of (N, k) neighbour labels, the most frequent label (ties: the lowest class)."""
    n, k = neighbour_labels.shape
    votes = np.zeros((n, n_classes), dtype=np.int64)
    np.add.at(votes, (np.repeat(np.arange(n), k), neighbour_labels.ravel()), 1)
    return votes.argmax(axis=1)


def knn20_accuracy(reference_x, reference_y, query_x, query_y, k: int = K) -> float:
    """Cosine k-NN, majority vote (ties: the lowest class), accuracy on the queries."""
    def unit(a):
        a = np.asarray(a, dtype=np.float32)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    similarity = unit(query_x) @ unit(reference_x).T
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    predicted = majority_vote(reference_y[nearest], int(reference_y.max()) + 1)
    return float((predicted == query_y).mean())


def _fashion(split: str, limit: int):
    from bilaf_core.datasets import get_dataset

    pool = get_dataset("fashion-mnist", split=split, limit=limit)
    return pool.load_array_batch(np.arange(len(pool))), pool.labels


def features_of(model, pixels: np.ndarray, image_size: int, mean, std, batch: int = 500) -> np.ndarray:
    """Features of uint8 images through `model`, preprocessed exactly as extraction does."""
    import torch

    from bilaf_core.features import _to_model_input

    if hasattr(model, "eval"):  # a LayerFeatures wrapper is built in eval mode already
        model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(pixels), batch):
            x = _to_model_input(pixels[start:start + batch], image_size, mean, std, torch.device("cpu"),
                                channels_last=True, pin=False)
            out.append(model(x).float().numpy())
    return np.concatenate(out)


def evaluate_module(model, image_size: int, mean, std) -> float:
    train_x, train_y = _fashion("train", REFERENCES)
    test_x, test_y = _fashion("test", QUERIES)
    return knn20_accuracy(features_of(model, train_x, image_size, mean, std), train_y,
                          features_of(model, test_x, image_size, mean, std), test_y)


def evaluate_backbone(backbone: str, *, layer: str | None = None, image_size: int | None = None, weights=None) -> float:
    """20-NN of a backbone as ``extract`` builds it (registry name, pool:NAME, timm name + weights)."""
    from bilaf_core.backbones import build_backbone, get_backbone_spec, resolve_weights

    spec = get_backbone_spec(backbone)
    built = build_backbone(spec, resolve_weights(spec, weights), image_size=image_size, layer=layer)
    return evaluate_module(built.module, built.image_size, built.mean, built.std)


def evaluate_checkpoint_file(folder: Path) -> tuple[float, int]:
    """20-NN of the last finished epoch of a running or interrupted run (its ``checkpoint.pt``),
    and that epoch — to watch a long run without stopping it."""
    import torch

    from bilaf_core.backbones import LayerFeatures, _create
    from bilaf_core.pretrain import CHECKPOINT_FILE, architecture_spec

    checkpoint = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    identity = checkpoint["identity"]
    spec = architecture_spec(identity["arch"])
    model = _create(spec, identity["image_size"])
    weights = {k[len("backbone."):]: v for k, v in checkpoint["module"].items() if k.startswith("backbone.")}
    model.load_state_dict({k[len("model."):] if k.startswith("model.") else k: v for k, v in weights.items()})
    layer = identity.get("feature_layer", "pooled")
    network = model if layer == "pooled" else LayerFeatures(model.eval(), layer)
    return evaluate_module(network, identity["image_size"], spec.mean, spec.std), int(checkpoint["epoch"])


def _training_cpu_seconds(folder: Path, epoch: int) -> float:
    """CPU seconds the run spent on its first `epoch` epochs, from its ``train_log.json``."""
    from bilaf_core.pretrain import LOG_FILE

    log = json.loads((Path(folder) / LOG_FILE).read_text())
    return round(sum(e["cpu_seconds"] for e in log["epochs"] if e["epoch"] <= epoch), 1)


def raw_pixels_accuracy() -> float:
    train_x, train_y = _fashion("train", REFERENCES)
    test_x, test_y = _fashion("test", QUERIES)
    return knn20_accuracy(train_x.reshape(len(train_x), -1), train_y, test_x.reshape(len(test_x), -1), test_y)


def _append(results: Path, row: dict) -> None:
    row = {**row, "load": round(os.getloadavg()[0], 2), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(json.dumps(row), flush=True)
    with open(results, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def run_trial(name: str, steps: int, points: int, out_root: Path, results: Path, lr: float | None = None) -> None:
    """Train recipe `name` for `points` epochs of `steps` steps, evaluating after each epoch."""
    from bilaf_core.pretrain import CHECKPOINT_FILE, pretrain

    recipe = dict(RECIPES[name])
    out = out_root / name
    eval_cpu = [0.0]
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    seen_epochs = set()
    tag = dict(recipe=name, steps_per_epoch=steps, lr=lr)

    def evaluate_checkpoint(epoch: int) -> None:
        tick = time.process_time()
        accuracy, _ = evaluate_checkpoint_file(out)
        eval_cpu[0] += time.process_time() - tick
        _append(results, {**tag, "epoch": epoch, "images_seen": epoch * steps * recipe["batch_size"],
                          "train_cpu_s": round(time.process_time() - start_cpu - eval_cpu[0], 1),
                          "knn20": accuracy})

    def progress(fraction: float, message: str) -> None:
        # the checkpoint of epoch e is on disk when epoch e + 1 reports its first step
        if ", step 1/" in message:
            epoch = int(message.split("epoch ")[1].split("/")[0]) - 1
            if epoch >= 1 and epoch not in seen_epochs:
                seen_epochs.add(epoch)
                evaluate_checkpoint(epoch)

    if (out / CHECKPOINT_FILE).exists():
        raise SystemExit(f"{out} exists; delete it or choose another --out-root (trials start from scratch)")
    result = pretrain("fashion-mnist", epochs=points, max_steps_per_epoch=steps, out_dir=out, threads=1, lr=lr,
                      progress=progress, **recipe)
    train_cpu = time.process_time() - start_cpu - eval_cpu[0]
    accuracy = evaluate_backbone(result.backbone)  # the written pool: backbone, as extract builds it
    _append(results, {**tag, "epoch": points, "images_seen": points * steps * recipe["batch_size"],
                      "train_cpu_s": round(train_cpu, 1), "knn20": accuracy, "final": True,
                      "wall_s": round(time.perf_counter() - start_wall, 1), "final_loss": result.final_loss})


def print_table(results: Path, horizon_cpu_s: float) -> None:
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    by_recipe: dict[str, list] = {}
    for row in rows:  # one curve per trial run: recipe and steps per short epoch
        name = row["recipe"] + (f" ({row['steps_per_epoch']} st/ep)" if row.get("steps_per_epoch") else "")
        by_recipe.setdefault(name, []).append(row)
    print(f"{'recipe':<44} {'epoch':>5} {'images':>8} {'train CPU s':>11} {'20-NN':>6} {'load':>5}")
    for name, recipe_rows in by_recipe.items():
        for row in recipe_rows:
            print(f"{name:<44} {row.get('epoch', ''):>5} {row.get('images_seen', ''):>8} {row.get('train_cpu_s', 0):>11.0f} "
                  f"{row['knn20']:>6.3f} {row.get('load', 0):>5.1f}")
    print(f"\nlog-linear fit 20-NN = a + b ln(CPU s), extrapolated to {horizon_cpu_s:.0f} single-thread CPU seconds:")
    for name, recipe_rows in by_recipe.items():
        points = [(r["train_cpu_s"], r["knn20"]) for r in recipe_rows if r.get("train_cpu_s", 0) > 0]
        if len(points) < 2:
            continue
        x = np.log([p[0] for p in points])
        y = np.array([p[1] for p in points])
        b, a = np.polyfit(x, y, 1)
        residual = float(np.sqrt(np.mean((a + b * x - y) ** 2)))
        print(f"  {name:<44} a={a:.3f} b={b:.4f} per e-fold, fit rms {residual:.3f} → {a + b * math.log(horizon_cpu_s):.3f}")


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("bench/pretrain_trials.jsonl"))
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("baseline", help="EfficientNet-Lite0 (the offline default) and raw pixels")
    trial = sub.add_parser("trial", help="train one recipe briefly, evaluating after each short epoch")
    trial.add_argument("recipe", choices=sorted(RECIPES))
    trial.add_argument("--steps", type=int, default=50, help="steps per short epoch")
    trial.add_argument("--points", type=int, default=4, help="short epochs (= evaluation points)")
    trial.add_argument("--lr", type=float)
    trial.add_argument("--out-root", type=Path, default=Path("/tmp/bilaf-pretrain-trials"))
    evaluate = sub.add_parser("evaluate", help="20-NN of one backbone")
    evaluate.add_argument("backbone")
    evaluate.add_argument("--layer")
    evaluate.add_argument("--image-size", type=int)
    watch = sub.add_parser("checkpoint", help="20-NN of a running/interrupted run's last finished epoch")
    watch.add_argument("folder", type=Path)
    watch.add_argument("--record", action="store_true",
                       help="append (epoch, training CPU s from its train_log.json, 20-NN) to --results: a long run's curve")
    table = sub.add_parser("table", help="print the results with the extrapolation")
    table.add_argument("--horizon", type=float, default=2 * 3600 * 1.6,
                       help="single-thread CPU seconds of the long run (default: 2 h x 1.6, two threads' speed-up)")
    args = parser.parse_args(argv)
    if args.what == "baseline":
        tick = time.process_time()
        _append(args.results, {"recipe": "efficientnet-lite0 blocks.4 64px (default)", "train_cpu_s": 0,
                               "knn20": evaluate_backbone("efficientnet-lite0")})
        _append(args.results, {"recipe": "efficientnet-lite0 pooled 32px", "train_cpu_s": 0,
                               "knn20": evaluate_backbone("efficientnet-lite0", layer="pooled", image_size=32)})
        for size in (32, 48):  # the starting points of the blocks.4 domain-adaptation recipes
            _append(args.results, {"recipe": f"efficientnet-lite0 blocks.4 {size}px", "train_cpu_s": 0,
                                   "knn20": evaluate_backbone("efficientnet-lite0", layer="blocks.4", image_size=size)})
        _append(args.results, {"recipe": "raw pixels", "train_cpu_s": 0, "knn20": raw_pixels_accuracy()})
        print(f"baseline evaluation took {time.process_time() - tick:.0f} CPU s")
    elif args.what == "trial":
        run_trial(args.recipe, args.steps, args.points, args.out_root, args.results, lr=args.lr)
    elif args.what == "evaluate":
        print(f"20-NN {evaluate_backbone(args.backbone, layer=args.layer, image_size=args.image_size):.4f}")
    elif args.what == "checkpoint":
        accuracy, epoch = evaluate_checkpoint_file(args.folder)
        print(f"epoch {epoch}: 20-NN {accuracy:.4f}")
        if args.record:
            _append(args.results, {"recipe": f"long run {args.folder.name}", "epoch": epoch,
                                   "train_cpu_s": _training_cpu_seconds(args.folder, epoch), "knn20": accuracy})
    else:
        print_table(args.results, args.horizon)
    return 0


if __name__ == "__main__":
    from bench._script import run

    run(main)
