"""Dataset registry: the unlabeled pools that features are extracted from.

A :class:`Dataset` is an ordered pool of images.  It knows its size, a stable string id per
sample (``"train/123"`` or a path relative to the folder), optional labels and class names
(used only for evaluation and for colouring the map — never by selection), and how to load
each image as a PIL RGB image or as a small thumbnail for the app.

Registered names (:func:`available_datasets`):

* ``fashion-mnist`` — the offline default: the standard idx ``.gz`` files that the Debian package
  ``dataset-fashion-mnist`` installs under ``/usr/share/datasets/fashion-mnist/`` (or any ``root``
  holding the same files; torchvision's download only when asked).
* ``cifar10`` / ``cifar100`` — torchvision's pickled batches, downloaded only when asked.
* ``imagefolder`` — a folder of class sub-folders (ImageNet's layout) or a flat folder of
  unlabeled images, nested paths allowed.
* ``synthetic`` — small generated, labelled images for tests (coloured shapes, deterministic).

Small in-memory datasets (the first, second and last) also hand out whole batches as one
uint8 array (:meth:`Dataset.load_array_batch`), so extraction resizes them vectorised instead of
going through PIL one image at a time.
"""

from __future__ import annotations

import abc
import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .errors import BilafError

#: file name endings that :class:`ImageFolderDataset` treats as images (compared lower-case)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".jfif")

#: where the Debian package ``dataset-fashion-mnist`` installs the idx files
DEBIAN_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def workspace_root() -> Path:
    """The workspace folder: ``$BILAF_WORKSPACE`` or ``<project>/workspace`` (absolute; the same
    folder whatever the current directory, so the app and the CLI share it)."""
    return Path(os.environ.get("BILAF_WORKSPACE") or Path(__file__).resolve().parents[1] / "workspace").expanduser().resolve()


def default_download_root() -> Path:
    """Where torchvision downloads go when the user asks for them and gives no ``root``."""
    return workspace_root() / "datasets"


# --------------------------------------------------------------------------------------------
# Dataset classes
# --------------------------------------------------------------------------------------------


class Dataset(abc.ABC):
    """An ordered pool of images.  Subclasses set the attributes and implement :meth:`load_image`.

    Attributes
    ----------
    name, root, split, limit
        What :func:`get_dataset` was called with (``root`` resolved to an absolute path, or None
        where the dataset has no files).
    ids : list[str]
        One stable id per sample, in pool order.
    labels : np.ndarray of int64 or None
        Ground-truth class per sample, when the source has them.
    class_names : list[str] or None
    """

    name: str = ""
    root: str | None = None
    split: str = "train"
    limit: int | None = None
    ids: list[str]
    labels: np.ndarray | None = None
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} split={self.split} n={len(self)}>"

    # -- per-sample access --------------------------------------------------------------------
    def path_of(self, index: int) -> str | None:
        """The file behind sample `index`, or None for in-memory datasets."""
        return None

    @abc.abstractmethod
    def load_image(self, index: int) -> Image.Image:
        """Sample `index` as a PIL RGB image.  May raise (OSError, ValueError…) for a bad file."""

    def load_resized(self, index: int, size: int) -> np.ndarray:
        """Sample `index` resized so its shorter side is `size`, centre-cropped: (size, size, 3) uint8.

        This is the paper's test-time transform (resize + centre crop) minus normalisation.
        """
        return resize_center_crop(self.load_image(index), size)

    def thumbnail(self, index: int, size: int = 96) -> Image.Image:
        """A small RGB image of sample `index` whose longer side is `size` (for the app).

        Tiny sources (28 px Fashion-MNIST) are enlarged with nearest-neighbour so they stay crisp.
        """
        try:
            image = self.load_image(index)
        except Exception as exc:
            raise BilafError(f"cannot read image {self.ids[index]!r}: {exc}") from None
        scale = size / max(image.size)
        new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR
        return image.resize(new_size, resample)

    # -- batch access (in-memory datasets only) ------------------------------------------------
    @property
    def in_memory(self) -> bool:
        """True when :meth:`load_array_batch` is available (all images in one uint8 array)."""
        return False

    def load_array_batch(self, indices: np.ndarray) -> np.ndarray:
        """Raw uint8 images for `indices`: (n, H, W) grayscale or (n, H, W, 3) RGB."""
        raise TypeError(f"{type(self).__name__} has no in-memory array; check .in_memory first")

    # -- provenance ----------------------------------------------------------------------------
    def describe(self) -> dict:
        """The ``meta["dataset"]`` record: enough to reopen the same pool with :func:`get_dataset`."""
        return {"name": self.name, "root": self.root, "split": self.split, "limit": self.limit}


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """Resize `image` so the shorter side is `size` (bilinear, antialiased), crop the centre square."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if (new_w, new_h) != (size, size):
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


class ArrayDataset(Dataset):
    """Images held in one uint8 array: (N, H, W) grayscale or (N, H, W, 3) RGB."""

    def __init__(self, *, name, root, split, limit, images, labels, class_names, ids=None):
        if limit is not None:
            images, labels = images[:limit], (None if labels is None else labels[:limit])
        self.name, self.root, self.split, self.limit = name, root, split, limit
        self.images = images
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.class_names = class_names
        self.ids = ids[: len(images)] if ids is not None else [f"{split}/{i}" for i in range(len(images))]

    @property
    def in_memory(self) -> bool:
        return True

    def load_array_batch(self, indices: np.ndarray) -> np.ndarray:
        return self.images[np.asarray(indices, dtype=np.int64)]

    def load_image(self, index: int) -> Image.Image:
        array = self.images[index]
        return Image.fromarray(array).convert("RGB")  # mode inferred: L for (H, W), RGB for (H, W, 3)


class ImageFolderDataset(Dataset):
    """Every image file under a folder, in sorted path order.

    Labelled when the images all sit inside at least two top-level sub-folders (ImageNet's
    ``train/<class>/…`` layout; deeper nesting is fine, the top-level folder is the class);
    otherwise unlabeled (a flat folder, or loose files beside sub-folders).
    """

    def __init__(self, *, root: Path, split: str, limit: int | None, requested_root: Path):
        self.name, self.split, self.limit = "imagefolder", split, limit
        self.root = str(requested_root)
        self.folder = root
        relative = _list_images(root)
        if not relative:
            raise BilafError(
                f"no images ({', '.join(e.lstrip('.') for e in IMAGE_EXTENSIONS[:4])}…) found under {root}; "
                "point --root at a folder of images or of class sub-folders"
            )
        top_level = [p.split("/", 1)[0] if "/" in p else None for p in relative]
        classes = sorted({t for t in top_level if t is not None})
        labelled = None not in top_level and len(classes) >= 2
        if limit is not None:
            relative, top_level = relative[:limit], top_level[:limit]
        self.ids = relative
        self.paths = [str(root / p) for p in relative]
        if labelled:
            class_index = {c: i for i, c in enumerate(classes)}
            self.class_names = classes
            self.labels = np.array([class_index[t] for t in top_level], dtype=np.int64)
        else:
            self.class_names, self.labels = None, None

    def path_of(self, index: int) -> str | None:
        return self.paths[index]

    def load_image(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as image:
            return _to_rgb(image)

    def load_resized(self, index: int, size: int) -> np.ndarray:
        with Image.open(self.paths[index]) as image:
            # JPEG can decode at 1/2, 1/4 or 1/8 scale for free: a big speed-up for photos much
            # larger than the model input (draft keeps both sides >= the requested size).
            if image.format == "JPEG":
                image.draft("RGB", (size, size))
            return resize_center_crop(_to_rgb(image), size)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Decode fully (so a truncated file fails here, not later) and convert to 8-bit RGB."""
    image.load()
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float grayscale: PIL's convert("RGB") clips instead of scaling
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8))
    return image.convert("RGB")


def _list_images(root: Path) -> list[str]:
    """Relative POSIX paths of the image files under `root`, sorted, hidden entries skipped."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(folder).relative_to(root)
        for fname in sorted(files):
            if not fname.startswith(".") and fname.lower().endswith(IMAGE_EXTENSIONS):
                found.append((base / fname).as_posix())
    return sorted(found)


class SubsetDataset(Dataset):
    """A view of `base` restricted to some of its samples, in a given order (e.g. a feature set's rows)."""

    def __init__(self, base: Dataset, indices: Sequence[int]):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.name, self.root, self.split, self.limit = base.name, base.root, base.split, base.limit
        self.ids = [base.ids[i] for i in self.indices]
        self.labels = None if base.labels is None else base.labels[self.indices]
        self.class_names = base.class_names

    def path_of(self, index: int) -> str | None:
        return self.base.path_of(int(self.indices[index]))

    def load_image(self, index: int) -> Image.Image:
        return self.base.load_image(int(self.indices[index]))

    def load_resized(self, index: int, size: int) -> np.ndarray:
        return self.base.load_resized(int(self.indices[index]), size)

    @property
    def in_memory(self) -> bool:
        return self.base.in_memory

    def load_array_batch(self, indices: np.ndarray) -> np.ndarray:
        return self.base.load_array_batch(self.indices[np.asarray(indices, dtype=np.int64)])


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def read_idx(path: Path, limit: int | None = None) -> np.ndarray:
    """Read an idx file (the MNIST format), gzip-compressed or not, as a read-only uint8 array.

    With `limit`, only the first `limit` items are decompressed (a 1 000-image pool need not
    inflate all 47 MB of Fashion-MNIST's training images).  Reads are memoised per file version.
    """
    stat = Path(path).stat()
    return _read_idx_cached(str(path), stat.st_mtime_ns, stat.st_size, limit)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int, limit: int | None) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        head = fh.read(4)
        if len(head) < 4 or head[:3] != b"\x00\x00\x08":
            raise BilafError(f"{path} is not an idx file of unsigned bytes; re-install or re-download it")
        ndim = head[3]
        dims = [int.from_bytes(fh.read(4), "big") for _ in range(ndim)]
        if limit is not None and dims:
            dims[0] = min(dims[0], int(limit))
        expected = int(np.prod(dims)) if dims else 0
        try:
            data = fh.read(expected)
        except (EOFError, OSError) as exc:  # a gzip stream cut short
            raise BilafError(f"{path} is truncated or corrupt ({exc}); re-install or re-download it") from None
    if len(data) != expected:
        raise BilafError(f"{path} is truncated ({len(data)} of {expected} bytes); re-install or re-download it")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    """`stem` (e.g. ``train-images-idx3-ubyte``) under `root` or torchvision's layout, .gz or plain."""
    for folder in (root, root / "FashionMNIST" / "raw", root / "raw"):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def _check_split(name: str, split: str, allowed=("train", "test")) -> None:
    if split not in allowed:
        raise BilafError(f"dataset {name} has splits {', '.join(allowed)}; got --split {split!r}")


def _check_root(root) -> Path | None:
    if root is None:
        return None
    path = Path(root).expanduser().resolve()
    if not path.exists():
        raise BilafError(f"dataset root {path} does not exist; pass an existing folder with --root")
    if not path.is_dir():
        raise BilafError(f"dataset root {path} is not a folder; pass a folder with --root")
    return path


def _load_fashion_mnist(root, split, limit, download) -> Dataset:
    _check_split("fashion-mnist", split)
    prefix = "train" if split == "train" else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    if root is not None:
        folder = _check_root(root)
    elif _find_idx(DEBIAN_FASHION_MNIST_ROOT, stems[0]) is not None:
        folder = DEBIAN_FASHION_MNIST_ROOT
    else:
        folder = default_download_root() if download else DEBIAN_FASHION_MNIST_ROOT
    files = [_find_idx(folder, stem) for stem in stems]
    if None in files and download:
        _torchvision_download("FashionMNIST", folder, split)
        files = [_find_idx(folder, stem) for stem in stems]
    if None in files:
        raise BilafError(
            f"Fashion-MNIST files ({stems[0]}.gz, {stems[1]}.gz) not found under {folder}; install the "
            "Debian package (sudo apt-get install dataset-fashion-mnist), pass --root DIR holding the idx "
            "files, or add --download to fetch them with torchvision (needs internet)"
        )
    images, labels = read_idx(files[0], limit), read_idx(files[1], limit)
    if images.ndim != 3 or labels.shape != (images.shape[0],):
        raise BilafError(f"Fashion-MNIST files under {folder} do not match (images {images.shape}, labels {labels.shape})")
    return ArrayDataset(name="fashion-mnist", root=str(folder), split=split, limit=limit,
                        images=images, labels=labels, class_names=list(FASHION_MNIST_CLASSES))


def _torchvision_download(class_name: str, folder: Path, split: str):
    """Let torchvision fetch a dataset into `folder`; a failure (offline…) becomes a BilafError."""
    import torchvision.datasets as tvd

    folder.mkdir(parents=True, exist_ok=True)
    try:
        return getattr(tvd, class_name)(str(folder), train=(split == "train"), download=True)
    except Exception as exc:  # URLError, HTTPError, socket errors, checksum failures…
        raise BilafError(
            f"could not download {class_name} into {folder} ({type(exc).__name__}: {exc}); check the internet "
            f"connection, or copy the files there by hand and pass --root {folder}"
        ) from None


_CIFAR = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "CIFAR-10"),
    "cifar100": ("CIFAR100", "cifar-100-python", "CIFAR-100"),
}


def _load_cifar(name, root, split, limit, download) -> Dataset:
    _check_split(name, split)
    class_name, subfolder, title = _CIFAR[name]
    folder = _check_root(root) if root is not None else default_download_root()
    if not (folder / subfolder).is_dir():
        if not download:
            raise BilafError(
                f"{title} not found under {folder} (expected {subfolder}/); add --download to fetch it with "
                f"torchvision (needs internet, ~170 MB), or pass --root DIR holding {subfolder}/"
            )
        _torchvision_download(class_name, folder, split)
    import torchvision.datasets as tvd

    try:
        source = getattr(tvd, class_name)(str(folder), train=(split == "train"), download=False)
    except Exception as exc:
        raise BilafError(f"{title} under {folder / subfolder} is incomplete or corrupt ({exc}); delete it and use --download") from None
    return ArrayDataset(name=name, root=str(folder), split=split, limit=limit, images=np.asarray(source.data),
                        labels=np.asarray(source.targets), class_names=list(source.classes))


def _load_imagefolder(root, split, limit, download) -> Dataset:
    if root is None:
        raise BilafError("dataset imagefolder needs --root DIR: a folder of class sub-folders or of images")
    folder = _check_root(root)
    # ImageNet-style roots hold train/ and val/; a bare folder of images is the "train" pool.
    if (folder / split).is_dir():
        images_folder = folder / split
    elif split == "train":
        images_folder = folder
    else:
        raise BilafError(f"no folder {folder / split} for --split {split}; omit --split or create that folder")
    return ImageFolderDataset(root=images_folder, split=split, limit=limit, requested_root=folder)


SYNTHETIC_CLASSES = ["red circle", "green square", "blue triangle", "yellow cross"]
SYNTHETIC_SIZES = {"train": 400, "test": 100}
SYNTHETIC_PIXELS = 32


def make_synthetic(n: int, *, seed: int, size: int = SYNTHETIC_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """`n` RGB images (n, size, size, 3) uint8 of coloured shapes on noise, and their labels.

    Class i = sample i mod 4 (so any prefix is balanced).  Position, size, colour and background
    noise are jittered from `seed`; everything is computed on whole arrays.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % len(SYNTHETIC_CLASSES)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy = rng.uniform(0.35, 0.65, n).astype(np.float32)[:, None, None] * size
    cx = rng.uniform(0.35, 0.65, n).astype(np.float32)[:, None, None] * size
    radius = rng.uniform(0.2, 0.3, n).astype(np.float32)[:, None, None] * size
    dy, dx = yy[None] - cy, xx[None] - cx
    shapes = np.stack([
        dx ** 2 + dy ** 2 <= radius ** 2,                                              # circle
        (np.abs(dx) <= 0.8 * radius) & (np.abs(dy) <= 0.8 * radius),                   # square
        (dy <= radius) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) / 2),          # triangle
        ((np.abs(dx) <= radius / 3) & (np.abs(dy) <= radius))
        | ((np.abs(dy) <= radius / 3) & (np.abs(dx) <= radius)),                        # cross
    ])
    mask = shapes[labels, np.arange(n)]
    base_colours = np.array([[220, 40, 40], [40, 180, 60], [50, 80, 220], [230, 200, 40]], dtype=np.float32)
    colours = np.clip(base_colours[labels] + rng.uniform(-20, 20, (n, 3)), 0, 255)
    background = rng.uniform(0, 60, (n, size, size, 3)).astype(np.float32)
    images = np.where(mask[..., None], colours[:, None, None, :], background)
    return images.round().astype(np.uint8), labels


def _load_synthetic(root, split, limit, download) -> Dataset:
    _check_split("synthetic", split)
    images, labels = make_synthetic(SYNTHETIC_SIZES[split], seed=0 if split == "train" else 1)
    return ArrayDataset(name="synthetic", root=None, split=split, limit=limit, images=images,
                        labels=labels, class_names=list(SYNTHETIC_CLASSES))


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: `loader(root, split, limit, download) -> Dataset`."""

    name: str
    summary: str
    loader: Callable[..., Dataset]
    needs_root: bool = False


_REGISTRY: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to the registry (registry order = display order)."""
    _REGISTRY[spec.name] = spec
    return spec


register_dataset(DatasetSpec("fashion-mnist", "Fashion-MNIST, 60k/10k 28 px grayscale, 10 classes (offline default: Debian package)", _load_fashion_mnist))
register_dataset(DatasetSpec("cifar10", "CIFAR-10, 50k/10k 32 px, 10 classes (torchvision; --download when online)", lambda *a: _load_cifar("cifar10", *a)))
register_dataset(DatasetSpec("cifar100", "CIFAR-100, 50k/10k 32 px, 100 classes (torchvision; --download when online)", lambda *a: _load_cifar("cifar100", *a)))
register_dataset(DatasetSpec("imagefolder", "a folder of images or of class sub-folders (--root DIR)", _load_imagefolder, needs_root=True))
register_dataset(DatasetSpec("synthetic", "generated coloured shapes, 400/100 32 px, 4 classes (tests, demos)", _load_synthetic))


def available_datasets() -> list[str]:
    """Registered dataset names, in display order."""
    return list(_REGISTRY)


def get_dataset_spec(name: str) -> DatasetSpec:
    """The registry entry for `name`; a BilafError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BilafError(f"unknown dataset {name!r}; known datasets: {', '.join(_REGISTRY)}") from None


def get_dataset(name: str, *, root=None, split: str = "train", limit: int | None = None, download: bool = False) -> Dataset:
    """Open dataset `name` (see :func:`available_datasets`).

    Parameters
    ----------
    root : folder holding the files (optional except for ``imagefolder``).
    split : ``"train"`` or ``"test"`` (``imagefolder``: a sub-folder of that name when present).
    limit : keep only the first `limit` samples (stable order).
    download : allow torchvision to download a missing dataset (needs internet).
    """
    spec = get_dataset_spec(name)
    if limit is not None:
        limit = int(limit)
        if limit < 1:
            raise BilafError(f"--limit must be a positive number of samples, got {limit}")
    return spec.loader(root, split, limit, download)


def dataset_from_meta(meta: dict) -> Dataset:
    """Reopen the images behind a feature set, row-aligned with its features (skipped images left out)."""
    info = meta.get("dataset") or {}
    name = info.get("name")
    if name not in _REGISTRY:
        raise BilafError(f"feature set was made from {name!r}, which has no images to reopen (imported embeddings?)")
    base = get_dataset(name, root=info.get("root"), split=info.get("split") or "train", limit=info.get("limit"))
    ids = meta.get("ids") or []
    if list(base.ids) == list(ids):
        return base
    position = {sample_id: i for i, sample_id in enumerate(base.ids)}
    missing = [sample_id for sample_id in ids if sample_id not in position]
    if missing:
        raise BilafError(f"{len(missing)} images of the feature set are no longer in {base.root} (e.g. {missing[0]!r}); re-extract")
    return SubsetDataset(base, [position[sample_id] for sample_id in ids])
