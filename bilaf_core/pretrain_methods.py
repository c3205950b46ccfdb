"""The self-supervised methods of :mod:`bilaf_core.pretrain` as torch modules, built from lightly's
heads, losses and momentum utilities.  Each takes ``(backbone, feature_dim, distributed)``; calling
it on two batches of views returns the loss; ``after_step(fraction)`` runs after each optimiser
step (`fraction` = share of the whole run done; BYOL's momentum schedule).
"""

from __future__ import annotations

import copy

from torch import nn


class SimCLR(nn.Module):
    """SimCLR (Chen et al. 2020): pull two views of an image together, push the other images of
    the batch away (NT-Xent).  Projection 2 layers → 128-d; temperature 0.5 (lightly's default)."""

    def __init__(self, backbone, feature_dim: int, distributed: bool):
        super().__init__()
        from lightly.loss import NTXentLoss
        from lightly.models.modules.heads import SimCLRProjectionHead

        self.backbone = backbone
        self.projection = SimCLRProjectionHead(feature_dim, max(feature_dim, 512), 128)
        self.criterion = NTXentLoss(temperature=0.5, gather_distributed=distributed)

    def forward(self, view1, view2):
        return self.criterion(self.projection(self.backbone(view1)), self.projection(self.backbone(view2)))

    def after_step(self, fraction: float) -> None:
        pass


class BYOL(nn.Module):
    """BYOL (Grill et al. 2020), non-contrastive: an online network predicts a momentum copy's
    projection of the other view (negative cosine, symmetrised).  The momentum goes 0.99 → 1 on a
    cosine schedule over the whole run; the online backbone is the one kept."""

    def __init__(self, backbone, feature_dim: int, distributed: bool):
        super().__init__()
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.backbone = backbone
        self.projection = BYOLProjectionHead(feature_dim, 1024, 256)
        self.prediction = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_momentum = copy.deepcopy(self.projection)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_momentum)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, view1, view2):
        import torch

        p1 = self.prediction(self.projection(self.backbone(view1)))
        p2 = self.prediction(self.projection(self.backbone(view2)))
        with torch.no_grad():
            z1 = self.projection_momentum(self.backbone_momentum(view1))
            z2 = self.projection_momentum(self.backbone_momentum(view2))
        return 0.5 * (self.criterion(p1, z2.detach()) + self.criterion(p2, z1.detach()))

    def after_step(self, fraction: float) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        momentum = cosine_schedule(round(fraction * 10_000), 10_000, 0.99, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m=momentum)
        update_momentum(self.projection, self.projection_momentum, m=momentum)


class VICReg(nn.Module):
    """VICReg (Bardes et al. 2022), non-contrastive: invariance between the views plus a variance
    floor and decorrelation of the embedding dimensions.  Expander 2 layers x 1024 (lightly's
    8192 is sized for GPUs)."""

    def __init__(self, backbone, feature_dim: int, distributed: bool):
        super().__init__()
        from lightly.loss import VICRegLoss
        from lightly.models.modules.heads import VICRegProjectionHead

        self.backbone = backbone
        self.projection = VICRegProjectionHead(feature_dim, 1024, 1024, num_layers=2)
        self.criterion = VICRegLoss(gather_distributed=distributed)

    def forward(self, view1, view2):
        return self.criterion(self.projection(self.backbone(view1)), self.projection(self.backbone(view2)))

    def after_step(self, fraction: float) -> None:
        pass
