"""CardiacNet's losses as pure functions: L1 reconstruction (Eq. 1), adversarial (Eq. 2), the memory-bank
distribution terms L_dis (Eq. 4) and L_OT (Eq. 5, with gradient, bounded by a hinge), and clip descriptors for the
banks."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from echo_modules.cardiacnet.optimal_transport import OTMethod, ot_cost

GANLoss = Literal["vanilla", "hinge"]
Reduction = Literal["sum", "mean"]


def reconstruction_loss(output: Tensor, target: Tensor) -> Tensor:
    """Eq. 1: mean absolute error between a reconstruction and its target video."""
    return F.l1_loss(output.float(), target.float())


def generator_adversarial_loss(fake_logits: Tensor, kind: GANLoss = "vanilla") -> Tensor:
    """The generator's side of Eq. 2 for the patch logits of generated videos: vanilla = -log sigmoid (the paper's
    log loss, non-saturating form); hinge = -logit (the public code)."""
    fake_logits = fake_logits.float()
    if kind == "vanilla":
        return F.softplus(-fake_logits).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"unknown GAN loss {kind!r}; choose 'vanilla' or 'hinge'")


def discriminator_adversarial_loss(real_logits: Tensor, fake_logits: Tensor, kind: GANLoss = "vanilla") -> Tensor:
    """The discriminator's side of Eq. 2: real patches towards 1, generated patches towards 0 (vanilla: binary
    cross-entropy on logits; hinge: margins at +-1), averaged over the two halves."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "vanilla":
        return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())
    if kind == "hinge":
        return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())
    raise ValueError(f"unknown GAN loss {kind!r}; choose 'vanilla' or 'hinge'")


def clip_descriptor(quantised: Tensor, grid: tuple[int, int, int] = (1, 1, 1)) -> Tensor:
    """What a memory bank stores for a clip: its quantised features ``(B, D, t, h, w)`` average-pooled to ``grid``
    and flattened to ``(B, D * prod(grid))`` (gradient kept; banks detach on enqueue)."""
    pooled = F.adaptive_avg_pool3d(quantised.float(), grid)
    return rearrange(pooled, "b d t h w -> b (d t h w)")


def centroid_loss(descriptors: Tensor, centroid: Tensor, reduction: Reduction = "sum") -> Tensor:
    """Eq. 4, L_dis: squared distance ``||F~ - M||^2`` of each descriptor to its class bank's centroid, averaged over
    clips. ``sum`` (Eq. 4 as written): summed over the descriptor's dimensions; ``mean``: averaged over them (a
    weight then does not depend on the descriptor size)."""
    squared = (descriptors.float() - centroid.detach().float()[None]).square()
    return squared.sum(1).mean() if reduction == "sum" else squared.mean()


def ot_separation_loss(
    descriptors: Tensor,
    other_class_bank: Tensor,
    method: OTMethod = "sorted",
    margin: float | None = 1.0,
    reg: float = 0.05,
    reduction: Reduction = "sum",
    own_class_bank: Tensor | None = None,
) -> Tensor:
    """Eq. 5 made trainable: the OT cost between this batch's descriptors of one class (with gradient) and the other
    class's bank (a detached target), to be *maximised* (the paper maximises the normal/abnormal transport distance).

    ``ot_cost`` is a mean squared distance per dimension and unit of transported mass. ``sum`` scales it to Eq. 5 as
    written, ``sum_i sum_j ||M_ji - M_pi(j)i||^2`` over the ``d`` dimensions and the ``J`` rows of the bank
    (``d * J`` times the mean), so the public code's weights (1e-3) apply to it; ``mean`` keeps the mean.
    Returns the term to add to the generator loss: with a ``margin`` (on the mean cost) the hinge ``relu(margin -
    cost)``, which stops pushing once the classes are that far apart, else ``-cost`` (unbounded: maximising it alone
    inflates the features without limit).

    ``own_class_bank`` (relative separation): the hinge is on ``log(cost / intra)`` instead, ``intra`` being the OT
    cost of the same descriptors to their *own* class's bank: the other class must be ``exp(margin)`` times farther
    (in transport cost) than the own class. Two finite samples of one distribution are a positive transport cost
    apart, growing with the features' spread, so an absolute margin is met by spreading the features (or by any
    scale at all once the spread exceeds it) without separating the classes; the ratio is scale-free and is met
    only by moving the classes apart relative to their spread.
    """
    cost = ot_cost(descriptors, other_class_bank.detach(), method=method, reg=reg)
    scale = descriptors.shape[1] * len(other_class_bank) if reduction == "sum" else 1
    if own_class_bank is not None:
        intra = ot_cost(descriptors, own_class_bank.detach(), method=method, reg=reg)
        separation = torch.log(cost.clamp_min(1e-12)) - torch.log(intra.clamp_min(1e-12))
        return scale * (F.relu(margin - separation) if margin is not None else -separation)
    if margin is None:
        return -scale * cost
    return scale * F.relu(margin - cost)
