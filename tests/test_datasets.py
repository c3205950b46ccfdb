"""Dataset registry: Fashion-MNIST offline, CIFAR offline messages, image folders, synthetic shapes."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from PIL import Image

from bilaf_core.datasets import (
    DEBIAN_FASHION_MNIST_ROOT,
    SubsetDataset,
    available_datasets,
    dataset_from_meta,
    get_dataset,
    get_dataset_spec,
    make_synthetic,
    read_idx,
)
from bilaf_core.errors import BilafError

needs_fashion_mnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)


def test_registry_names_and_unknown_name():
    assert available_datasets() == ["fashion-mnist", "cifar10", "cifar100", "imagefolder", "synthetic"]
    assert get_dataset_spec("imagefolder").needs_root and not get_dataset_spec("fashion-mnist").needs_root
    with pytest.raises(BilafError, match="known datasets: fashion-mnist, cifar10"):
        get_dataset("mnist-ish")


@needs_fashion_mnist
def test_fashion_mnist_offline_from_the_debian_files():
    train, test = get_dataset("fashion-mnist"), get_dataset("fashion-mnist", split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.root == str(DEBIAN_FASHION_MNIST_ROOT)
    assert train.class_names[0] == "T-shirt/top" and len(train.class_names) == 10
    assert set(np.unique(train.labels)) == set(range(10))
    assert train.ids[:2] == ["train/0", "train/1"] and test.ids[-1] == "test/9999"
    image = train.load_image(0)
    assert image.mode == "RGB" and image.size == (28, 28)
    assert train.thumbnail(0, size=96).size == (96, 96)
    batch = train.load_array_batch(np.array([0, 5, 7]))
    assert batch.shape == (3, 28, 28) and batch.dtype == np.uint8
    limited = get_dataset("fashion-mnist", limit=100)
    assert len(limited) == 100 and np.array_equal(limited.labels, train.labels[:100])
    assert limited.describe() == {"name": "fashion-mnist", "root": str(DEBIAN_FASHION_MNIST_ROOT), "split": "train", "limit": 100}


@needs_fashion_mnist
def test_fashion_mnist_from_another_root_and_torchvision_layout(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(DEBIAN_FASHION_MNIST_ROOT / name) as src, open(raw / name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)  # unpacked, as torchvision leaves them
    test = get_dataset("fashion-mnist", root=tmp_path, split="test", limit=10)
    assert len(test) == 10 and test.root == str(tmp_path)


def test_fashion_mnist_missing_files_explain_how_to_get_them(tmp_path):
    with pytest.raises(BilafError, match="apt-get install dataset-fashion-mnist.*--download"):
        get_dataset("fashion-mnist", root=tmp_path)
    with pytest.raises(BilafError, match="does not exist"):
        get_dataset("fashion-mnist", root=tmp_path / "absent")
    with pytest.raises(BilafError, match="splits train, test"):
        get_dataset("fashion-mnist", split="val")


def test_download_without_network_is_a_clear_error(tmp_path):
    with pytest.raises(BilafError, match="could not download"):
        get_dataset("fashion-mnist", root=tmp_path, download=True)


def test_cifar_offline_says_how_to_get_it(tmp_path):
    for name, folder in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")):
        with pytest.raises(BilafError, match=f"--download.*{folder}"):
            get_dataset(name, root=tmp_path)


def test_idx_reader_rejects_truncated_files(tmp_path):
    good = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in good.shape)
    (tmp_path / "ok-idx3-ubyte").write_bytes(header + good.tobytes())
    assert np.array_equal(read_idx(tmp_path / "ok-idx3-ubyte"), good)
    (tmp_path / "cut-idx3-ubyte").write_bytes(header + good.tobytes()[:-5])
    with pytest.raises(BilafError, match="truncated"):
        read_idx(tmp_path / "cut-idx3-ubyte")


def _save(path, colour=(200, 30, 30), size=(20, 16), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(path)


def test_imagefolder_class_layout_nested_and_formats(tmp_path):
    _save(tmp_path / "cat" / "a.png")
    _save(tmp_path / "cat" / "deeper" / "b.JPG")
    _save(tmp_path / "dog" / "c.webp")
    _save(tmp_path / "dog" / "d.png", mode="L")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    _save(tmp_path / "dog" / ".hidden.png")
    ds = get_dataset("imagefolder", root=tmp_path)
    assert ds.ids == ["cat/a.png", "cat/deeper/b.JPG", "dog/c.webp", "dog/d.png"]
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.path_of(2) == str(tmp_path / "dog" / "c.webp")
    assert all(ds.load_image(i).mode == "RGB" for i in range(len(ds)))
    assert ds.load_resized(0, 8).shape == (8, 8, 3)
    assert not ds.in_memory
    assert max(ds.thumbnail(0, size=40).size) == 40


def test_imagefolder_flat_or_mixed_is_unlabeled_and_splits_are_subfolders(tmp_path):
    _save(tmp_path / "flat" / "x.png")
    _save(tmp_path / "flat" / "y.jpeg")
    flat = get_dataset("imagefolder", root=tmp_path / "flat")
    assert flat.labels is None and flat.class_names is None and len(flat) == 2
    _save(tmp_path / "mixed" / "loose.png")
    _save(tmp_path / "mixed" / "a" / "1.png")
    _save(tmp_path / "mixed" / "b" / "2.png")
    assert get_dataset("imagefolder", root=tmp_path / "mixed").labels is None
    _save(tmp_path / "imagenet" / "val" / "n01" / "1.png")
    _save(tmp_path / "imagenet" / "val" / "n02" / "2.png")
    val = get_dataset("imagefolder", root=tmp_path / "imagenet", split="val")
    assert val.class_names == ["n01", "n02"] and val.root == str(tmp_path / "imagenet")
    with pytest.raises(BilafError, match="no folder"):
        get_dataset("imagefolder", root=tmp_path / "flat", split="test")


def test_imagefolder_needs_an_existing_non_empty_root(tmp_path):
    with pytest.raises(BilafError, match="needs --root"):
        get_dataset("imagefolder")
    with pytest.raises(BilafError, match="does not exist"):
        get_dataset("imagefolder", root=tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(BilafError, match="no images"):
        get_dataset("imagefolder", root=tmp_path / "empty")


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    array = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 256)
    Image.fromarray(array).save(tmp_path / "deep.png")  # uint16 -> a 16-bit grayscale PNG
    image = get_dataset("imagefolder", root=tmp_path).load_image(0)
    values = np.asarray(image)[..., 0]
    assert values.min() == 0 and values.max() >= 250


def test_synthetic_is_deterministic_balanced_and_separable():
    a, b = get_dataset("synthetic"), get_dataset("synthetic")
    assert np.array_equal(a.images, b.images) and len(a) == 400 and len(get_dataset("synthetic", split="test")) == 100
    assert np.bincount(a.labels).tolist() == [100] * 4
    assert not np.array_equal(a.images, get_dataset("synthetic", split="test").images[:1])
    # the classes differ in colour: nearest mean colour of the brightest pixels separates them
    images, labels = make_synthetic(200, seed=5)
    flat = images.reshape(200, -1, 3).astype(np.float32)
    brightness = flat.sum(-1)
    top = np.take_along_axis(flat, np.argsort(-brightness, axis=1)[:, :40, None], axis=1).mean(1)
    centres = np.stack([top[labels == c].mean(0) for c in range(4)])
    predicted = np.argmin(((top[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert (predicted == labels).mean() > 0.95


def test_subset_and_dataset_from_meta_follow_the_feature_rows(tmp_path):
    base = get_dataset("synthetic", limit=10)
    subset = SubsetDataset(base, [3, 1, 7])
    assert subset.ids == ["train/3", "train/1", "train/7"] and subset.labels.tolist() == [3, 1, 3]
    assert np.array_equal(subset.load_array_batch(np.array([0, 2])), base.images[[3, 7]])
    meta = {"dataset": base.describe(), "ids": subset.ids}
    reopened = dataset_from_meta(meta)
    assert reopened.ids == subset.ids and np.array_equal(np.asarray(reopened.load_image(1)), np.asarray(base.load_image(1)))
    assert dataset_from_meta({"dataset": base.describe(), "ids": base.ids}).ids == base.ids
    with pytest.raises(BilafError, match="no images"):
        dataset_from_meta({"dataset": {"name": "imported"}, "ids": ["0"]})
