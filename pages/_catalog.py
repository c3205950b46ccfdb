"""What the engine offers, as the pages name it: datasets, backbones, finetuning recipes."""

from __future__ import annotations

import streamlit as st


_DATASET_TITLES = {
    "fashion-mnist": "Fashion-MNIST (offline)",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "imagefolder": "Image folder (your images)",
    "synthetic": "Synthetic shapes (tests, demos)",
}


_BACKBONE_TITLES = {
    "efficientnet-lite0": "EfficientNet-Lite0 · ImageNet (bundled, offline)",
    "dino-vits16": "DINO ViT-S/16 (the paper's; download or local checkpoint)",
}


def _names(items) -> list[str]:
    return [item if isinstance(item, str) else getattr(item, "name", str(item)) for item in items]


def dataset_names() -> list[str]:
    from bilaf_core.datasets import available_datasets

    return _names(available_datasets())


def backbone_names() -> list[str]:
    from bilaf_core.backbones import available_backbones

    return _names(available_backbones())


def dataset_title(name: str) -> str:
    return _DATASET_TITLES.get(name, name)


def backbone_title(name: str) -> str:
    return _BACKBONE_TITLES.get(name, name)


def dataset_needs_root(name: str) -> bool:
    from bilaf_core.datasets import get_dataset_spec

    return bool(get_dataset_spec(name).needs_root)


def backbone_bundled(name: str) -> bool:
    from bilaf_core.backbones import get_backbone_spec

    return bool(get_backbone_spec(name).bundled_weights)


def backbone_summary(name: str) -> str:
    from bilaf_core.backbones import get_backbone_spec

    return get_backbone_spec(name).summary


def dataset_summary(name: str) -> str:
    from bilaf_core.datasets import get_dataset_spec

    return get_dataset_spec(name).summary


@st.cache_data(show_spinner=False)
def split_size(name: str) -> int | None:
    """Images in the dataset's train split, or None when unknown without a download."""
    from bilaf_core.datasets import get_dataset

    if dataset_needs_root(name):
        return None
    try:
        return len(get_dataset(name))
    except Exception:  # not available offline, or needs a root: the page shows "all"
        return None


def finetune_presets() -> dict[str, str]:
    """Finetuning recipes the engine offers: name -> one-line summary."""
    from bilaf_core import finetune

    return {name: getattr(p, "summary", "") for name, p in getattr(finetune, "PRESETS", {}).items()}
