"""The classifier head's arithmetic: loss, logits -> one log-odds per cadence, ROC AUC.

Two heads: `bce` (1 logit, BCE with logits, optional positive weight) and `ce` (2 logits, cross-entropy). Targets
are always float in [0, 1] so that mixup can blend them; the 2-logit loss reads them as class probabilities.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from fastai.metrics import AccumMetric
from scipy.special import expit
from sklearn.metrics import roc_auc_score
from torch import nn


def n_outputs(head: str) -> int:
    return 1 if head == "bce" else 2


def log_odds(out: torch.Tensor) -> torch.Tensor:
    """Model output (bs, 1) or (bs, 2) -> log-odds of the positive class, shape (bs,)."""
    if out.shape[-1] == 1:
        return out[..., 0]
    return out[..., 1] - out[..., 0]


class SetiLoss(nn.Module):
    """BCE with logits (1 output) or soft-target cross-entropy (2 outputs), on float targets in [0, 1].

    `reduction` ("mean", "none", "sum") is what fastai switches to "none" for per-item losses (`Interpretation`);
    `decodes` turns a probability into the class 0 or 1, as fastai's `BCEWithLogitsLossFlat` does.
    """

    def __init__(self, head: str = "bce", pos_weight: float | None = None, reduction: str = "mean"):
        super().__init__()
        self.head, self.reduction = head, reduction
        self.register_buffer("pos_weight", torch.tensor(pos_weight) if pos_weight is not None else None)

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.float().view(-1)
        if self.head == "bce":
            return F.binary_cross_entropy_with_logits(
                out.view(-1).float(), target, pos_weight=self.pos_weight, reduction=self.reduction
            )
        probs = torch.stack([1 - target, target], dim=1)
        weight = None
        if self.pos_weight is not None:
            weight = torch.stack([torch.ones_like(self.pos_weight), self.pos_weight]).float()
        return F.cross_entropy(out.float(), probs, weight=weight, reduction=self.reduction)

    def activation(self, out: torch.Tensor) -> torch.Tensor:
        """Probability of the positive class (used by `Learner.get_preds`)."""
        return torch.sigmoid(log_odds(out))

    def decodes(self, probs: torch.Tensor) -> torch.Tensor:
        """Probability of the positive class -> predicted class (0. or 1.), for `get_preds(with_decoded=True)`."""
        return (probs > 0.5).float()


def roc_auc(out: torch.Tensor, target: torch.Tensor) -> float:
    """ROC AUC of raw model outputs; NaN when the targets hold one class only."""
    y = (target.view(-1) >= 0.5).cpu().numpy()
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, log_odds(out).float().cpu().numpy()))


def auc_metric() -> AccumMetric:
    """A fastai metric that is a real ROC AUC for either head (fastai's `RocAucBinary` assumes 2 logits)."""
    return AccumMetric(roc_auc, flatten=False, name="roc_auc")


def sigmoid_np(logits: np.ndarray) -> np.ndarray:
    return expit(logits)  # no overflow warning for very negative log-odds


def logit_np(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Log-odds of probabilities, clipped away from 0 and 1."""
    p = np.clip(p, eps, 1 - eps)
    return np.log(p / (1 - p))
