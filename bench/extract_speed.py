"""Feature-extraction speed (and, with --quality, feature quality) — prints tables, asserts nothing.

    .venv/bin/python bench/extract_speed.py            # CPU tables (+ GPU when CUDA is present)
    .venv/bin/python bench/extract_speed.py --quality  # also 10-NN accuracy: pixels vs layers vs sizes

CPU section: Fashion-MNIST through EfficientNet-Lite0 (blocks.4) at the default 64 px —
end to end (extract_features, cold and warm), then where the time goes: vectorised
resize/normalise vs the model, 1 vs 2 threads, channels-last, and the image-file path
(PNG decode + resize) with 0/1/2 DataLoader workers.
GPU section (only with CUDA): DINO ViT-S/16 at 224 px (random weights: nothing is downloaded) on
CIFAR-sized in-memory images, bf16 autocast, channels-last, batch 256.
Each figure is the best of --repeat runs: the machine may be shared, and the best run is the
one least disturbed by other processes.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does (see bilaf_core/commands/extract.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bilaf_core.backbones import build_backbone, cpu_count, get_backbone_spec, resolve_weights  # noqa: E402
from bilaf_core.datasets import get_dataset  # noqa: E402
from bilaf_core.features import _to_model_input, extract_features  # noqa: E402


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{model}, {cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {load:.1f} at start")


def best_rate(fn, n_images: int, repeat: int) -> float:
    """Images per second of `fn()` (which handles `n_images`), best of `repeat` after a warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n_images / best


def row(label: str, value: str, note: str = "") -> None:
    print(f"| {label:<52} | {value:>12} | {note}")


def cpu_section(n: int, repeat: int, batch: int) -> None:
    print(f"\n## CPU — Fashion-MNIST, EfficientNet-Lite0 blocks.4 at 64 px, batch {batch}, {n} images\n")
    print(f"| {'what':<52} | {'img/s':>12} |")
    print(f"|{'-' * 54}|{'-' * 14}|")
    torch.set_num_threads(cpu_count())
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        extract_features("fashion-mnist", "efficientnet-lite0", limit=n, batch_size=batch, out_dir=Path(tmp) / "cold")
        row("extract_features, end to end, first call (cold)", f"{n / (time.perf_counter() - start):,.0f}",
            "incl. reading the idx files, building the model, oneDNN warm-up")
        runs = iter(range(1000))
        rate = best_rate(lambda: extract_features("fashion-mnist", "efficientnet-lite0", limit=n, batch_size=batch,
                                                  out_dir=Path(tmp) / f"warm{next(runs)}"), n, repeat)
        row("extract_features, end to end, warm process", f"{rate:,.0f}", "incl. dataset + model load, chunk files, atomic writes")

    spec = get_backbone_spec("efficientnet-lite0")
    backbone = build_backbone(spec, resolve_weights(spec))
    pool = get_dataset("fashion-mnist", limit=n)
    device = torch.device("cpu")
    index_batches = [np.arange(lo, min(lo + batch, n)) for lo in range(0, n, batch)]
    inputs = {}

    def prepare(channels_last=True):
        inputs[channels_last] = [_to_model_input(pool.load_array_batch(ix), 64, backbone.mean, backbone.std, device,
                                                 channels_last=channels_last, pin=False) for ix in index_batches]

    def forward(channels_last=True):
        module = backbone.module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        with torch.inference_mode():
            for x in inputs[channels_last]:
                module(x)

    row("  load + resize 28->64 + normalise only (vectorised)", f"{best_rate(prepare, n, repeat):,.0f}")
    prepare(False)
    import dataclasses

    unfolded = build_backbone(dataclasses.replace(spec, fold_batchnorm=False), resolve_weights(spec))

    def forward_unfolded():
        module = unfolded.module.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            for x in inputs[True]:
                module(x)

    for threads in sorted({1, cpu_count()}):
        torch.set_num_threads(threads)
        row(f"  model only, {threads} thread(s), channels-last", f"{best_rate(forward, n, repeat):,.0f}")
    row(f"  model only, {cpu_count()} thread(s), contiguous (NCHW)", f"{best_rate(lambda: forward(False), n, repeat):,.0f}")
    row(f"  model only, {cpu_count()} thread(s), batch norm not folded", f"{best_rate(forward_unfolded, n, repeat):,.0f}",
        "what folding BN into the convolutions saves")
    torch.set_num_threads(cpu_count())
    pooled_spec = build_backbone(spec, resolve_weights(spec), layer="pooled")

    def forward_pooled():
        module = pooled_spec.module.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            for x in inputs[True]:
                module(x)

    row("  model only, layer 'pooled' (full network + 1280-d head)", f"{best_rate(forward_pooled, n, repeat):,.0f}",
        "what the default layer saves")

    # ---- the image-file path: PNG decode + resize per image, with DataLoader workers or not
    from PIL import Image

    n_files = min(n, 2048)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "pngs"
        for cls in range(10):
            (folder / str(cls)).mkdir(parents=True)
        images, labels = pool.load_array_batch(np.arange(n_files)), pool.labels[:n_files]
        for i in range(n_files):
            Image.fromarray(images[i]).save(folder / str(labels[i]) / f"{i:05d}.png")
        files = get_dataset("imagefolder", root=folder)
        row(f"  imagefolder ({n_files} 28 px PNGs): decode + resize only",
            f"{best_rate(lambda: [files.load_resized(i, 64) for i in range(n_files)], n_files, repeat):,.0f}",
            "per-image PIL work, one core")
        for workers in (0, 1, 2):
            runs = iter(range(1000))
            rate = best_rate(lambda: extract_features("imagefolder", root=folder, batch_size=batch, num_workers=workers,
                                                      out_dir=Path(tmp) / f"w{workers}-{next(runs)}"), n_files, repeat)
            row(f"  imagefolder end to end, {workers} DataLoader worker(s)", f"{rate:,.0f}")

        # photo-sized JPEGs (500 x 375, like ImageNet's): decoding is real work here
        from bilaf_core.datasets import make_synthetic

        n_photos = min(n, 1024)
        photos = Path(tmp) / "jpegs"
        photos.mkdir()
        shapes, _ = make_synthetic(n_photos, seed=3, size=96)
        noise = np.random.default_rng(0)
        for i in range(n_photos):
            big = Image.fromarray(shapes[i]).resize((500, 375), Image.Resampling.BILINEAR)
            grain = noise.integers(-12, 13, (375, 500, 3))
            Image.fromarray(np.clip(np.asarray(big, np.int16) + grain, 0, 255).astype(np.uint8)).save(photos / f"{i:05d}.jpg", quality=90)
        jpegs = get_dataset("imagefolder", root=photos)
        row(f"  imagefolder ({n_photos} 500x375 JPEGs): decode + resize only",
            f"{best_rate(lambda: [jpegs.load_resized(i, 64) for i in range(n_photos)], n_photos, repeat):,.0f}",
            "draft-mode JPEG decode at 1/4 scale")
        for workers in (0, 1, 2):
            runs = iter(range(1000))
            rate = best_rate(lambda: extract_features("imagefolder", root=photos, batch_size=batch, num_workers=workers,
                                                      out_dir=Path(tmp) / f"j{workers}-{next(runs)}"), n_photos, repeat)
            row(f"  JPEG imagefolder end to end, {workers} DataLoader worker(s)", f"{rate:,.0f}")


def gpu_section(n: int, repeat: int) -> None:
    print("\n## GPU — DINO ViT-S/16 at 224 px (random weights), CIFAR-sized in-memory images\n")
    if not torch.cuda.is_available():
        print("skipped: CUDA is not available on this machine")
        return
    device = torch.device("cuda")
    spec = get_backbone_spec("dino-vits16")
    backbone = build_backbone(spec, resolve_weights(spec, "random"), image_size=224)
    module = backbone.module.to(device).to(memory_format=torch.channels_last)
    images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    print(f"device: {torch.cuda.get_device_name(device)}\n")
    print(f"| {'batch':>6} | {'img/s':>10} |")
    for batch in (128, 256, 512):
        def run():
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                for lo in range(0, n, batch):
                    x = _to_model_input(images[lo:lo + batch], 224, backbone.mean, backbone.std, device,
                                        channels_last=True, pin=True)
                    module(x).float().cpu()
            torch.cuda.synchronize()

        print(f"| {batch:>6} | {best_rate(run, n, repeat):>10,.0f} |")


def knn_accuracy(train, train_labels, test, test_labels, k=10) -> float:
    """Cosine k-NN (majority vote) accuracy, vectorised."""
    a = train / np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    b = test / np.maximum(np.linalg.norm(test, axis=1, keepdims=True), 1e-12)
    neighbours = np.argpartition(-(b @ a.T), k, axis=1)[:, :k]
    votes = np.zeros((len(b), int(train_labels.max()) + 1), np.int64)
    np.add.at(votes, (np.repeat(np.arange(len(b)), k), train_labels[neighbours].ravel()), 1)
    return float((votes.argmax(1) == test_labels).mean())


def quality_section(sizes: list[int]) -> None:
    print("\n## Quality — cosine 10-NN accuracy, Fashion-MNIST 2 000 train / 1 000 test\n")
    train, test = get_dataset("fashion-mnist", limit=2000), get_dataset("fashion-mnist", split="test", limit=1000)
    tr_px, te_px = train.load_array_batch(np.arange(2000)), test.load_array_batch(np.arange(1000))
    pixels = knn_accuracy(tr_px.reshape(2000, -1).astype(np.float32), train.labels,
                          te_px.reshape(1000, -1).astype(np.float32), test.labels)
    print(f"raw pixels (784-d): {pixels:.3f}\n")
    spec = get_backbone_spec("efficientnet-lite0")
    from bilaf_core.backbones import available_layers

    printed_header = False
    for weights in (None, "random"):
        for size in sizes:
            # one forward pass per image collects every layer: a hook on each stage pools its output
            backbone = build_backbone(spec, resolve_weights(spec, weights), image_size=size, layer="pooled")
            model = backbone.module.model.to(memory_format=torch.channels_last)
            layers = available_layers(model)
            captured = {}
            for layer in layers[1:]:
                model.get_submodule(layer).register_forward_hook(
                    lambda module, inputs, output, layer=layer: captured.setdefault(layer, []).append(output.mean(dim=(2, 3))))
            if not printed_header:
                print("| weights | px | " + " | ".join(layers) + " | img/s, full net |")
                print("|---|---|" + "---|" * (len(layers) + 1))
                printed_header = True
            per_split = []
            start = time.perf_counter()
            for px in (tr_px, te_px):
                captured.clear()
                pooled = []
                with torch.inference_mode():
                    for lo in range(0, len(px), 64):
                        x = _to_model_input(px[lo:lo + 64], size, backbone.mean, backbone.std, torch.device("cpu"),
                                            channels_last=True, pin=False)
                        pooled.append(backbone.module(x))
                per_split.append({"pooled": torch.cat(pooled).numpy(),
                                  **{layer: torch.cat(out).numpy() for layer, out in captured.items()}})
            rate = 3000 / (time.perf_counter() - start)
            accuracies = {layer: knn_accuracy(per_split[0][layer], train.labels, per_split[1][layer], test.labels) for layer in layers}
            print(f"| {'ImageNet' if weights is None else 'random'} | {size} | "
                  + " | ".join(f"{accuracies[layer]:.3f}" for layer in layers) + f" | {rate:,.0f} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096, help="images per CPU measurement")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is shown")
    parser.add_argument("--gpu-n", type=int, default=8192, help="images per GPU measurement")
    parser.add_argument("--quality", action="store_true", help="also the 10-NN accuracy table (slow: minutes)")
    parser.add_argument("--sizes", default="32,48,64,96", help="image sizes for --quality")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU section")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    if not args.no_cpu:
        cpu_section(args.n, args.repeat, args.batch_size)
    gpu_section(args.gpu_n, args.repeat)
    if args.quality:
        quality_section([int(s) for s in args.sizes.split(",")])
    return 0


if __name__ == "__main__":
    from bench._script import run

    run(main)
