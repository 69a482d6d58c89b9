"""Rejection-sampled latent bank (Painchaud et al., TMI 2020): densify the latent space of valid shapes.

Target P: a Gaussian kernel density estimate of the encoded training (+ validation) ground truth, its bandwidth chosen
by leave-one-out likelihood over a grid (cross-validation). Proposal Q: a Gaussian with the codes' mean and
covariance. Envelope M = max over the codes of P/Q. A proposal z ~ Q is kept when u * M * Q(z) <= P(z), u ~ U(0, 1);
kept latents are decoded and those whose decoding passes every anatomical criterion form the bank.

With M taken over the data, as vital does, acceptance collapses with the latent size: at 16 dims a KDE is so peaked
at its points that M is ~1e20 and nothing is accepted in millions of proposals (``benchmarks/anatomical_vae.py``
measures it). ``sampler="kde"`` (the default) therefore draws from the same target P exactly (a random code plus
kernel noise), with no envelope; ``sampler="rejection"`` is the published procedure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class BankStats:
    proposals: int
    accepted: int
    valid: int
    bandwidth: float
    envelope: float

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.proposals, 1)

    @property
    def valid_rate(self) -> float:
        return self.valid / max(self.accepted, 1)


class GaussianKDE:
    """Isotropic Gaussian KDE on whitened codes (whitening by the codes' covariance, so one bandwidth fits all)."""

    def __init__(self, codes: torch.Tensor, bandwidth: float) -> None:
        codes = codes.double()
        self.mean = codes.mean(dim=0)
        covariance = torch.cov(codes.T) + 1e-6 * torch.eye(codes.shape[1], dtype=codes.dtype)
        self.whiten = torch.linalg.cholesky(torch.linalg.inv(covariance))  # x -> (x - mean) @ whiten
        self.log_det_whiten = torch.logdet(self.whiten)
        self.points = (codes - self.mean) @ self.whiten
        self.bandwidth = bandwidth

    def log_density(self, z: torch.Tensor, exclude_self: bool = False, chunk: int = 4096) -> torch.Tensor:
        dim = self.points.shape[1]
        out = []
        for part in torch.split(z.double(), chunk):
            white = (part - self.mean) @ self.whiten
            squared = torch.cdist(white, self.points).pow(2)
            if exclude_self:
                squared = squared + torch.diag_embed(torch.full((len(part),), math.inf, dtype=squared.dtype))
            count = len(self.points) - (1 if exclude_self else 0)
            log_kernel = -0.5 * squared / self.bandwidth**2
            norm = -dim * math.log(self.bandwidth) - 0.5 * dim * math.log(2 * math.pi) - math.log(count)
            out.append(torch.logsumexp(log_kernel, dim=1) + norm + self.log_det_whiten)
        return torch.cat(out)


def select_bandwidth(codes: torch.Tensor, grid: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)) -> float:
    """The grid bandwidth (in whitened units) with the highest leave-one-out log-likelihood of the codes."""
    best, best_score = grid[0], -math.inf
    for bandwidth in grid:
        kde = GaussianKDE(codes, bandwidth)
        score = kde.log_density(codes, exclude_self=True).mean().item() if len(codes) > 1 else 0.0
        if score > best_score:
            best, best_score = bandwidth, score
    return best


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    distribution = torch.distributions.MultivariateNormal(mean, covariance_matrix=covariance)
    return distribution.log_prob(z.double())


def rejection_sample_bank(
    codes: torch.Tensor,
    decode_valid: Callable[[torch.Tensor], torch.Tensor],
    num_proposals: int,
    batch_size: int = 4096,
    max_bank_size: int | None = None,
    seed: int = 0,
    sampler: str = "kde",
) -> tuple[torch.Tensor, BankStats]:
    """Latents drawn from the KDE of ``codes`` (by rejection sampling or exactly) whose decodings are valid.

    decode_valid: latents ``(B, D)`` -> boolean ``(B,)`` (decode, then the anatomical criteria).
    sampler: ``kde`` (exact draws from the KDE) or ``rejection`` (Gaussian proposal, envelope over the data).
    """
    if sampler not in ("kde", "rejection"):
        raise ValueError(f"sampler must be 'kde' or 'rejection', got {sampler!r}")
    codes = codes.detach().double().cpu()
    bandwidth = select_bandwidth(codes)
    kde = GaussianKDE(codes, bandwidth)
    mean = codes.mean(dim=0)
    covariance = torch.cov(codes.T) + 1e-6 * torch.eye(codes.shape[1], dtype=codes.dtype)
    log_envelope = (kde.log_density(codes) - gaussian_log_density(codes, mean, covariance)).max()
    generator = torch.Generator().manual_seed(seed)
    cholesky = torch.linalg.cholesky(covariance)
    unwhiten = torch.linalg.inv(kde.whiten)
    kept, accepted, valid, drawn = [], 0, 0, 0
    while drawn < num_proposals:
        count = min(batch_size, num_proposals - drawn)
        noise = torch.randn(count, codes.shape[1], generator=generator, dtype=codes.dtype)
        if sampler == "kde":  # a random code plus kernel noise, in whitened coordinates, mapped back
            picks = torch.randint(len(codes), (count,), generator=generator)
            z = (kde.points[picks] + bandwidth * noise) @ unwhiten + kde.mean
            keep = torch.ones(count, dtype=torch.bool)
        else:
            z = mean + noise @ cholesky.T
            log_u = torch.rand(count, generator=generator, dtype=codes.dtype).log()
            keep = log_u + log_envelope + gaussian_log_density(z, mean, covariance) <= kde.log_density(z)
        drawn += count
        if keep.any():
            candidates = z[keep].float()
            accepted += len(candidates)
            good = decode_valid(candidates).cpu()
            valid += int(good.sum())
            kept.append(candidates[good])
        if max_bank_size is not None and valid >= max_bank_size:
            break
    bank = torch.cat(kept) if kept else torch.zeros(0, codes.shape[1])
    if max_bank_size is not None:
        bank = bank[:max_bank_size]
    stats = BankStats(drawn, accepted, valid, bandwidth, float(np.exp(min(log_envelope.item(), 700.0))))
    return bank, stats
