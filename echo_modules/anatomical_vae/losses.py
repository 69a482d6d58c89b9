"""AR-VAE losses as pure functions: soft Dice, KL to the unit Gaussian, and the attribute-regularisation term."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_background: bool = True) -> torch.Tensor:
    """1 - mean soft Dice over classes (foreground only by default); ``logits`` (B, K, H, W), ``target`` (B, H, W)."""
    probabilities = logits.softmax(dim=1)
    one_hot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probabilities.dtype)
    if ignore_background:
        probabilities, one_hot = probabilities[:, 1:], one_hot[:, 1:]
    intersection = (probabilities * one_hot).sum(dim=(0, 2, 3))
    total = probabilities.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
    return 1 - ((2 * intersection + 1e-6) / (total + 1e-6)).mean()


def kl_divergence(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)), summed over latent dims, averaged over the batch."""
    return (-0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum(dim=1)).mean()


def attribute_loss(latent: torch.Tensor, attributes: torch.Tensor, delta: float) -> torch.Tensor:
    """AR-VAE (Pati & Lerch 2021): for each regularised dim i, over all batch pairs (j, k),
    L1(tanh(delta * (z_ji - z_ki)), sign(a_ji - a_ki)), averaged over pairs and dims.

    latent: (B, A) the regularised latent dims; attributes: (B, A) their attributes (NaN rows are ignored per dim).
    """
    z_diff = latent[:, None, :] - latent[None, :, :]  # (B, B, A)
    a_diff = attributes[:, None, :] - attributes[None, :, :]
    known = ~torch.isnan(a_diff)
    error = (torch.tanh(delta * z_diff) - torch.sign(torch.nan_to_num(a_diff))).abs()
    return (error * known).sum() / known.sum().clamp(min=1)


def attribute_loss_naive(latent: torch.Tensor, attributes: torch.Tensor, delta: float) -> torch.Tensor:
    """The same loss as a loop over dims and pairs: the reference the vectorised one is tested against."""
    total, count = latent.new_zeros(()), 0
    for i in range(latent.shape[1]):
        for j in range(latent.shape[0]):
            for k in range(latent.shape[0]):
                a = attributes[j, i] - attributes[k, i]
                if torch.isnan(a):
                    continue
                total = total + (torch.tanh(delta * (latent[j, i] - latent[k, i])) - torch.sign(a)).abs()
                count += 1
    return total / max(count, 1)
