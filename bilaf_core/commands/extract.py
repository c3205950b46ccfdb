"""``extract``: images → a feature set (features.npy + meta.json), resumable and cached.

Under ``torchrun --nproc_per_node=N -m bilaf_core extract …`` the pool is sharded across the
ranks and rank 0 writes the result (and alone prints).
"""

from __future__ import annotations

import os
import sys
import time

ORDER = 10

# Passive OpenMP waiting (why: bilaf_core/backbones.py) — set here too because the CLI builds
# every sub-command's parser before extraction imports anything heavy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="extract backbone features of an image pool (offline default: Fashion-MNIST + EfficientNet-Lite0)",
        description=(
            "Turn a dataset's images into an N x D feature array with a pretrained backbone.  The result is "
            "cached by dataset, split, limit, backbone, layer, weights and image size: asking again returns it "
            "at once, and an interrupted run resumes where it stopped."
        ),
    )
    parser.add_argument("--dataset", default="fashion-mnist", metavar="NAME",
                        help="fashion-mnist (default, offline), cifar10, cifar100, imagefolder or synthetic")
    parser.add_argument("--root", metavar="DIR", help="folder holding the dataset (required for imagefolder)")
    parser.add_argument("--split", default="train", help="train (default) or test (imagefolder: a sub-folder of that name, if any)")
    parser.add_argument("--backbone", default="efficientnet-lite0", metavar="NAME",
                        help="efficientnet-lite0 (default, offline), dino-vits16, or any timm model name with --weights")
    parser.add_argument("--weights", metavar="PATH", help="local checkpoint (state dict; teacher/model/state_dict keys and "
                        "module./backbone. prefixes handled), or 'random' for speed tests")
    parser.add_argument("--layer", help="feature layer: 'pooled' or a stage such as blocks.4 (default: the backbone's)")
    parser.add_argument("--image-size", type=int, metavar="S", help="input side in pixels (default: the backbone's; lite0 64)")
    parser.add_argument("--limit", type=int, metavar="N", help="keep only the first N images of the split")
    parser.add_argument("--batch-size", type=int, metavar="B", help="images per batch (default: 64 on CPU, 256 on GPU)")
    parser.add_argument("--workers", type=int, metavar="W", help="DataLoader workers decoding image files (default: 1 on CPU with 2+ cores, up to 8 on GPU)")
    parser.add_argument("--chunk-size", type=int, metavar="C", help="images per resumable chunk (default 2048; "
                        "under torchrun the chunks are dealt to the ranks)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run the backbone (default: auto = cuda when available)")
    parser.add_argument("--download", action="store_true",
                        help="allow the network: torchvision may download the dataset and timm the weights")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: <workspace>/features/<key>, "
                        "workspace = $BILAF_WORKSPACE or <project>/workspace)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..features import extract_features, load_feature_set

    rank = int(os.environ.get("RANK", "0"))
    show = rank == 0 and not args.quiet
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=1000, desc="extract", file=sys.stderr, dynamic_ncols=True,
                   bar_format="{percentage:3.0f}%|{bar:24}| {desc}")

    def progress(fraction: float, message: str) -> None:
        if bar is not None:
            bar.update(max(0, round(fraction * 1000) - bar.n))
            bar.set_description_str(message, refresh=True)

    started, started_epoch = time.perf_counter(), time.time()
    try:
        path = extract_features(
            args.dataset, args.backbone, root=args.root, split=args.split, weights=args.weights,
            image_size=args.image_size, layer=args.layer, limit=args.limit, batch_size=args.batch_size,
            device=args.device, out_dir=args.out, progress=progress, download=args.download,
            num_workers=args.workers, chunk_size=args.chunk_size,
        )
    finally:
        if bar is not None:
            bar.close()
    if rank != 0:
        return 0
    wall = time.perf_counter() - started
    feature_set = load_feature_set(path)
    meta = feature_set.meta
    timings = meta.get("timings") or {}
    print(path)
    if (path / "meta.json").stat().st_mtime < started_epoch:  # finished by an earlier run: served from the cache
        print(f"cached: {feature_set.n} x {feature_set.dim} features ({meta['backbone']} {meta['layer']} at "
              f"{meta['image_size']} px) made earlier on {meta['device']}; returned in {wall:.2f} s")
    else:
        rate = timings.get("images_per_second")
        print(f"{feature_set.n} x {feature_set.dim} features ({meta['backbone']} {meta['layer']} at {meta['image_size']} px) "
              f"in {wall:.1f} s, {rate:,.0f} img/s on {meta['device']}" if rate else
              f"{feature_set.n} x {feature_set.dim} features in {wall:.1f} s on {meta['device']}")
    if meta.get("skipped"):
        print(f"skipped {len(meta['skipped'])} unreadable image(s), listed in {path / 'meta.json'} (\"skipped\"); "
              f"first: {meta['skipped'][0]['id']}: {meta['skipped'][0]['error']}", file=sys.stderr)
    return 0
