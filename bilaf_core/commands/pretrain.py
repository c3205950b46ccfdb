"""``pretrain``: self-supervised training of a backbone on a dataset's images (never its labels).

The result is a backbone folder that ``extract --backbone pool:NAME`` (or ``pool:/path``) uses.
Repeating the command resumes an interrupted run; a larger ``--epochs`` extends a finished one.
Under ``torchrun --nproc_per_node=N -m bilaf_core pretrain …`` the batch is split over the ranks.
"""

from __future__ import annotations

import os
import shlex
import sys

ORDER = 12

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # why: bilaf_core/backbones.py

METHOD_NAMES = ("simclr", "byol", "vicreg")  # bilaf_core.pretrain.METHODS (not imported here: keeps --help fast)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="self-supervised pretraining of a backbone on the pool's images (SimCLR, BYOL, VICReg; no labels)",
        description=(
            "Train a backbone on a dataset's images without labels (lightly's heads and losses) and write a "
            "backbone folder: weights, backbone.json and train_log.json.  Extract with --backbone pool:NAME "
            "(a folder under <workspace>/backbones) or pool:/path/to/folder.  Repeat the command to resume an "
            "interrupted run; ask for more --epochs to extend a finished one."
        ),
    )
    parser.add_argument("--dataset", default="fashion-mnist", metavar="NAME",
                        help="fashion-mnist (default, offline), cifar10, cifar100, imagefolder or synthetic")
    parser.add_argument("--root", metavar="DIR", help="folder holding the dataset (required for imagefolder)")
    parser.add_argument("--split", default="train", help="train (default) or test")
    parser.add_argument("--limit", type=int, metavar="N", help="train on the first N images of the split only")
    parser.add_argument("--arch", default="small-cnn", metavar="ARCH",
                        help="small-cnn (default; 28-64 px images on CPU), tiny-cnn, efficientnet-lite0, or any timm model name")
    parser.add_argument("--method", default="byol", choices=METHOD_NAMES, help="self-supervised method (default byol)")
    parser.add_argument("--init", default="random", metavar="FROM",
                        help="random (default), imagenet (efficientnet-lite0's bundled weights: domain adaptation), or a checkpoint path")
    parser.add_argument("--epochs", type=int, required=True, metavar="E", help="passes over the pool")
    parser.add_argument("--image-size", type=int, metavar="S",
                        help="training and extraction input size (default: the images' own size for the small CNNs, else the architecture's)")
    parser.add_argument("--batch-size", type=int, metavar="B", help="images per step over all processes (default 256 on CPU, 512 on GPU)")
    parser.add_argument("--lr", type=float, help="peak AdamW learning rate (default 1e-3 x B/256 from random, 2e-4 x B/256 from pretrained weights)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed + threads on CPU -> same weights; default 0)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default auto = cuda when available")
    parser.add_argument("--workers", type=int, metavar="W", help="DataLoader workers decoding image files (default: 1 on CPU, up to 8 on GPU)")
    parser.add_argument("--threads", type=int, metavar="T", help="CPU threads (default: all cores available to the process)")
    parser.add_argument("--feature-layer", default="pooled", metavar="LAYER",
                        help="the layer extract uses by default (pooled = the trained embedding)")
    parser.add_argument("--max-steps-per-epoch", type=int, metavar="K", help="cut each epoch to K steps (quick trials)")
    parser.add_argument("--out", metavar="DIR", help="backbone folder (default: <workspace>/backbones/<dataset>-<arch>-<method>-<S>px)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..pretrain import pretrain

    rank = int(os.environ.get("RANK", "0"))
    bar = None
    if rank == 0 and not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=1000, desc="pretrain", file=sys.stderr, dynamic_ncols=True,
                   bar_format="{percentage:3.0f}%|{bar:24}| {desc}")

    def progress(fraction: float, message: str) -> None:
        if bar is not None:
            bar.update(max(0, round(fraction * 1000) - bar.n))
            bar.set_description_str(message, refresh=True)

    try:
        result = pretrain(
            args.dataset, root=args.root, split=args.split, limit=args.limit, arch=args.arch, method=args.method,
            init=args.init, epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size, lr=args.lr,
            seed=args.seed, device=args.device, workers=args.workers, threads=args.threads,
            feature_layer=args.feature_layer, max_steps_per_epoch=args.max_steps_per_epoch, out_dir=args.out,
            progress=progress, command=shlex.join(getattr(args, "command_line", None) or ["python", "-m", "bilaf_core"]),
        )
    finally:
        if bar is not None:
            bar.close()
    if rank != 0:
        return 0
    print(result.out)
    if result.already_done:
        print(f"already trained: {result.epochs} epochs; extract with --backbone {result.backbone}")
    else:
        resumed = f", resumed after epoch {result.resumed_from_epoch}" if result.resumed_from_epoch else ""
        print(f"{result.epochs} epochs of {args.method} in {result.train_seconds:.0f} s of training{resumed}; final loss "
              f"{result.final_loss:.4f}; extract with --backbone {result.backbone}")
    return 0
