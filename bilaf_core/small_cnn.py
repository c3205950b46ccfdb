"""Small CNNs for 28-64 px images, registered as timm models (so extraction, finetuning and
pretraining build them like any other timm backbone).

Why a new network: timm's small models start with a stride-4 stem (ResNets, EfficientNets), which
leaves 7x7 maps at 28 px after the stem and wastes most of the compute on tiny maps later on.
These keep full resolution in the stem and halve it three times (28 → 14 → 7 → 4), plain
conv → batch norm → ReLU blocks (registration order = forward order, so
:func:`bilaf_core.backbones.fold_batchnorm` can fold them for extraction).

* ``bilaf_small_cnn`` — widths 32-64-128-256, 4 convolutions, 0.39 M parameters, ~13 M
  multiply-adds per 28 px image; feature = global average of the last stage (256-d).
* ``bilaf_tiny_cnn`` — widths 16-32-64-128, 4 convolutions, 0.1 M parameters, ~3 M
  multiply-adds per 28 px image (128-d).

(A deeper variant with two convolutions per stage, 0.57 M parameters, trained 5x slower than the
tiny one per step on this machine's CPU; see docs/pretrain.md.)

Importing this module registers both with timm (``timm.create_model("bilaf_small_cnn")``).
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

__all__ = ["SmallCNN", "bilaf_small_cnn", "bilaf_tiny_cnn"]


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Stem (full resolution) + stages, each starting with a stride-2 convolution, then global
    average pooling and an optional linear classifier (timm's model interface: ``num_classes``,
    ``forward_features``, ``forward_head``, ``reset_classifier``, ``get_classifier``,
    ``feature_info``)."""

    def __init__(self, widths=(32, 64, 128, 256), depths=(1, 2, 2, 1), num_classes: int = 1000,
                 in_chans: int = 3, drop_rate: float = 0.0, **_ignored):
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.stem = _conv_bn_relu(in_chans, widths[0])
        stages, cin = [], widths[0]
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="stem")]
        reduction = 1
        for index, (width, depth) in enumerate(zip(widths[1:], depths[1:])):
            layers = [_conv_bn_relu(cin, width, stride=2)] + [_conv_bn_relu(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*layers))
            reduction *= 2
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{index}"))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = cin
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build(widths, depths, pretrained: bool, kwargs: dict) -> SmallCNN:
    if pretrained:
        raise ValueError("bilaf small CNNs have no published weights; train one with `python -m bilaf_core pretrain`")
    for timm_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only"):
        kwargs.pop(timm_only, None)
    return SmallCNN(widths=widths, depths=depths, **kwargs)


@register_model
def bilaf_small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    """Widths 32-64-128-256, one convolution per stage (0.39 M parameters); 256-d feature."""
    return _build((32, 64, 128, 256), (1, 1, 1, 1), pretrained, kwargs)


@register_model
def bilaf_tiny_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    """Widths 16-32-64-128, one convolution per stage (0.1 M parameters); 128-d feature."""
    return _build((16, 32, 64, 128), (1, 1, 1, 1), pretrained, kwargs)
