"""A backbone against the pretraining issue's goals on Fashion-MNIST — prints a table, asserts nothing.

    nice -n 5 .venv/bin/python bench/backbone_goals.py efficientnet-lite0 pool:fashion-mnist-tiny-simclr

For each backbone, on the features ``extract`` gives it (train and test splits, cached in the
workspace like any extraction):

* **linear probe, all 60 000 labels** — the project's probe (``evaluate_selection`` on every pool
  image), scored on the 10 000 test images;
* **20-NN** — the first 5 000 training images as references, the first 2 000 test images as
  queries, cosine similarity, majority vote of 20 (``bench/pretrain_trials.py``'s protocol;
  standard error about ±0.009);
* **extraction speed** — the 10 000 test images extracted afresh into a temporary folder, end to
  end (decode, resize, model), with the machine's load beside it;
* **the map** — the UMAP map of the 10 000 test images (the app's projection, default settings)
  and how separated its classes are: the share of points whose 20 nearest neighbours *on the map*
  vote for their own class, over all classes and over the four upper-body classes (T-shirt/top,
  Pullover, Coat, Shirt) that EfficientNet-Lite0 draws as one blob.  One panel per backbone goes
  to ``--out``/backbone-goals.png.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bilaf_core.atomic import atomic_write_bytes, atomic_write_json  # noqa: E402
from bench.pretrain_trials import QUERIES, REFERENCES, knn20_accuracy, majority_vote  # noqa: E402

DATASET = "fashion-mnist"
UPPER_BODY = ("T-shirt/top", "Pullover", "Coat", "Shirt")
MAP_K = 20


def map_agreement(coords: np.ndarray, labels: np.ndarray, k: int = MAP_K) -> np.ndarray:
    """Per point: 1 when the majority of its `k` nearest other points on the 2-D map share its label."""
    from sklearn.neighbors import NearestNeighbors

    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(coords).kneighbors(coords)
    predicted = majority_vote(labels[idx[:, 1:]], int(labels.max()) + 1)  # [:, 1:] drops the point itself
    return (predicted == labels).astype(np.float64)


def extraction_speed(backbone: str, n_images: int) -> tuple[float, float]:
    """Images per second extracting the `n_images` test images afresh, and the load average then."""
    from bilaf_core.features import extract_features

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        extract_features(DATASET, backbone, split="test", out_dir=Path(tmp) / "speed")
        seconds = time.perf_counter() - start
    return n_images / seconds, os.getloadavg()[0]


def evaluate(backbone: str, log) -> dict:
    from bilaf_core.features import extract_features, load_feature_set
    from bilaf_core.finetune import evaluate_selection
    from bilaf_core.projection import compute_projection

    log(f"{backbone}: features (cached after the first run)")
    train_dir = extract_features(DATASET, backbone, split="train")
    test_dir = extract_features(DATASET, backbone, split="test")
    train, test = load_feature_set(train_dir), load_feature_set(test_dir)
    row = {"backbone": backbone, "dim": train.dim, "features": train_dir.name}
    log(f"{backbone}: linear probe on all {train.n:,} labels")
    row["probe_all"] = evaluate_selection(train_dir, np.arange(train.n), test_feature_dir=test_dir).accuracy
    row["knn20"] = knn20_accuracy(train.features[:REFERENCES], train.labels[:REFERENCES],
                                  test.features[:QUERIES], test.labels[:QUERIES])
    log(f"{backbone}: extraction speed")
    row["img_per_s"], row["load"] = extraction_speed(backbone, test.n)
    log(f"{backbone}: UMAP map of the {test.n:,} test images")
    coords, _ = compute_projection(test.features, seed=0)
    agree = map_agreement(coords, test.labels)
    names = test.class_names
    upper = np.isin(test.labels, [names.index(c) for c in UPPER_BODY])
    row["map_all"], row["map_upper"] = float(agree.mean()), float(agree[upper].mean())
    row["_coords"], row["_labels"], row["_names"] = coords, test.labels, names
    return row


def draw(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(6.5 * len(rows), 6.2), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for ax, row in zip(axes[0], rows):
        for c, name in enumerate(row["_names"]):
            sel = row["_labels"] == c
            bold = name in UPPER_BODY
            ax.scatter(*row["_coords"][sel].T, s=2 if not bold else 3, color=colours[c % 10], label=name,
                       alpha=0.9 if bold else 0.5, linewidths=0)
        ax.set_title(f"{row['backbone']}\nmap 20-NN agreement: all {100 * row['map_all']:.1f} %, "
                     f"upper body {100 * row['map_upper']:.1f} %", fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
    axes[0][-1].legend(markerscale=5, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle("Fashion-MNIST test split (10 000 images), UMAP of each backbone's features", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("backbones", nargs="+", help="backbone names as extract takes them (efficientnet-lite0, pool:NAME, …)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="folder for backbone-goals.png/.json")
    args = parser.parse_args(argv)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    rows = [evaluate(b, log) for b in args.backbones]
    print("\n| backbone | dim | linear probe, all 60 000 labels | 20-NN (5 000 / 2 000) | extraction, img/s (load) "
          "| map: 20-NN agreement, all / upper body |")
    print("|---|---:|---:|---:|---:|---:|")
    print("| goal (the issue) | | ≥ 90 % | ≥ 0.87 | ≥ 1 000 | classes visibly separated |")
    for r in rows:
        print(f"| {r['backbone']} | {r['dim']} | {100 * r['probe_all']:.1f} % | {r['knn20']:.3f} | "
              f"{r['img_per_s']:,.0f} ({r['load']:.1f}) | {100 * r['map_all']:.1f} / {100 * r['map_upper']:.1f} % |")
    draw(rows, args.out / "backbone-goals.png")
    atomic_write_json(args.out / "backbone-goals.json", [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
                      indent=2)
    print(f"\nwrote {args.out / 'backbone-goals.png'} and backbone-goals.json "
          f"(load average {os.getloadavg()[0]:.1f} now)")
    return 0


if __name__ == "__main__":
    from bench._script import run

    run(main)
