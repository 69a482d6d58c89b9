"""Rejection-sampled latent bank (Painchaud et al., TMI 2020): densify the latent space of valid shapes.

Target P: a Gaussian kernel density estimate of the encoded training (+ validation) ground truth, its bandwidth chosen
by leave-one-out likelihood over a grid (cross-validation). Kept latents are decoded and those whose decoding passes
every anatomical criterion form the bank. Two samplers of the same P:

- ``kde`` (the default): exact draws (a random code plus kernel noise), every draw usable.
- ``rejection``: proposals z ~ Q, kept when u * M * Q(z) <= P(z), u ~ U(0, 1). vital's Q is a Gaussian with the
  codes' covariance and its M the maximum of P/Q over the codes; that Q is lighter-tailed than P (whose covariance is
  the codes' inflated by the kernel's), so P/Q is unbounded and M bounds nothing, and at 16 dims M is ~1e20: no
  proposal is ever accepted. Here Q is heavier than every kernel (a Student-t, or a Gaussian with the KDE's own,
  inflated covariance) and M is a true bound of P/Q, computed in log space: P/Q = mean_i k_i/Q <= mean_i sup k_i/Q,
  each kernel's supremum found on the ray through its centre (closed form for the Gaussian, a grid plus its
  curvature error bound for the Student-t). The acceptance rate is then 1/M in expectation and the accepted
  latents follow P exactly. 1/M falls geometrically with the latent size (``benchmarks/anatomical_vae.py``
  reports it), which is why ``kde`` is the default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

SAMPLERS = ("kde", "rejection")
PROPOSALS = ("student_t", "gaussian")


@dataclass
class BankStats:
    proposals: int
    accepted: int
    valid: int
    bandwidth: float
    envelope: float  # M (log space in log_envelope); 1 for the exact KDE draws
    log_envelope: float = 0.0
    log_envelope_data: float = 0.0  # vital's: log max over the codes of P/Q (a lower bound of the true sup)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.proposals, 1)

    @property
    def expected_acceptance_rate(self) -> float:
        """The theory's 1/M."""
        return math.exp(-self.log_envelope)

    @property
    def valid_rate(self) -> float:
        return self.valid / max(self.accepted, 1)


class GaussianKDE:
    """Isotropic Gaussian KDE on whitened codes (whitening by the codes' covariance, so one bandwidth fits all)."""

    def __init__(self, codes: torch.Tensor, bandwidth: float) -> None:
        codes = codes.double()
        self.mean = codes.mean(dim=0)
        covariance = torch.cov(codes.T).reshape(codes.shape[1], codes.shape[1])
        covariance = covariance + 1e-6 * torch.eye(codes.shape[1], dtype=codes.dtype)
        self.whiten = torch.linalg.cholesky(torch.linalg.inv(covariance))  # x -> (x - mean) @ whiten
        self.unwhiten = torch.linalg.inv(self.whiten)
        self.log_det_whiten = torch.logdet(self.whiten)
        self.points = (codes - self.mean) @ self.whiten
        self.bandwidth = bandwidth

    def to_white(self, z: torch.Tensor) -> torch.Tensor:
        return (z.double() - self.mean) @ self.whiten

    def from_white(self, white: torch.Tensor) -> torch.Tensor:
        return white @ self.unwhiten + self.mean

    def log_density_white(self, white: torch.Tensor, exclude_self: bool = False, chunk: int = 4096) -> torch.Tensor:
        """log P of whitened points (the density of the whitened variable)."""
        dim = self.points.shape[1]
        out = []
        for part in torch.split(white.double(), chunk):
            squared = torch.cdist(part, self.points).pow(2)
            if exclude_self:
                squared = squared + torch.diag_embed(torch.full((len(part),), math.inf, dtype=squared.dtype))
            count = len(self.points) - (1 if exclude_self else 0)
            log_kernel = -0.5 * squared / self.bandwidth**2
            norm = -dim * math.log(self.bandwidth) - 0.5 * dim * math.log(2 * math.pi) - math.log(count)
            out.append(torch.logsumexp(log_kernel, dim=1) + norm)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def log_density(self, z: torch.Tensor, exclude_self: bool = False, chunk: int = 4096) -> torch.Tensor:
        """log P of latents ``(B, D)`` in code space."""
        return self.log_density_white(self.to_white(z), exclude_self, chunk) + self.log_det_whiten


def select_bandwidth(codes: torch.Tensor, grid: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)) -> float:
    """The grid bandwidth (in whitened units) with the highest leave-one-out log-likelihood of the codes."""
    best, best_score = grid[0], -math.inf
    for bandwidth in grid:
        kde = GaussianKDE(codes, bandwidth)
        score = kde.log_density(codes, exclude_self=True).mean().item() if len(codes) > 1 else 0.0
        if score > best_score:
            best, best_score = bandwidth, score
    return best


class Proposal:
    """A heavy proposal Q for the KDE, in its whitened coordinates: centred, isotropic, with the KDE's covariance
    ``(1 + h^2) I``; ``student_t`` (``dof`` degrees of freedom, an integer > 2) or ``gaussian``."""

    def __init__(self, kind: str, dim: int, bandwidth: float, dof: int = 5) -> None:
        if kind not in PROPOSALS:
            raise ValueError(f"proposal must be one of {PROPOSALS}, got {kind!r}")
        if kind == "student_t" and (int(dof) != dof or dof <= 2):
            raise ValueError(f"the Student-t proposal needs an integer dof > 2, got {dof!r}")
        self.kind, self.dim, self.bandwidth, self.dof = kind, dim, bandwidth, int(dof)
        variance = 1.0 + bandwidth**2
        # Student-t scale so that its covariance is the KDE's: scale^2 * dof / (dof - 2) = 1 + h^2
        self.scale = math.sqrt(variance if kind == "gaussian" else variance * (dof - 2) / dof)

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(count, self.dim, generator=generator, dtype=torch.float64)
        if self.kind == "gaussian":
            return self.scale * noise
        chi2 = torch.randn(count, self.dof, generator=generator, dtype=torch.float64).pow(2).sum(dim=1)
        return self.scale * noise / (chi2 / self.dof).sqrt()[:, None]

    def _log_radial(self, squared: torch.Tensor) -> torch.Tensor:
        """log Q as a function of |w|^2, without its constant."""
        if self.kind == "gaussian":
            return -0.5 * squared / self.scale**2
        return -0.5 * (self.dof + self.dim) * torch.log1p(squared / (self.dof * self.scale**2))

    def _log_norm(self) -> float:
        d, s = self.dim, self.scale
        if self.kind == "gaussian":
            return -0.5 * d * math.log(2 * math.pi) - d * math.log(s)
        v = self.dof
        return math.lgamma((v + d) / 2) - math.lgamma(v / 2) - 0.5 * d * math.log(v * math.pi) - d * math.log(s)

    def log_density(self, white: torch.Tensor) -> torch.Tensor:
        return self._log_radial(white.double().pow(2).sum(dim=1)) + self._log_norm()

    def log_kernel_ratio_sup(self, centres: torch.Tensor, grid: int = 4097) -> torch.Tensor:
        """log sup_w N(w; c, h^2 I) / Q(w) for each centre c: an upper bound (exact for the Gaussian).

        On the ray w = r c/|c| (for a given |w| the kernel is largest there) the log ratio is
        f(r) = -(r - a)^2 / (2 h^2) + log Q(r) + const with a = |c|; it rises up to r = a and its maximum lies in
        [a, a + h^2 sup|d log Q/dr|]. The Gaussian's is a^2 / (2 (s^2 - h^2)); the Student-t's is the grid maximum
        plus the curvature bound |f''| spacing^2 / 8 (so still a bound)."""
        h, d = self.bandwidth, self.dim
        a = centres.double().norm(dim=1)
        log_kernel_norm = -0.5 * d * math.log(2 * math.pi) - d * math.log(h)
        if self.kind == "gaussian":
            gap = self.scale**2 - h**2  # > 0: Q is wider than every kernel
            return log_kernel_norm - self._log_norm() + a.pow(2) / (2 * gap)
        v, s = self.dof, self.scale
        reach = h**2 * (v + d) / (2 * math.sqrt(v) * s)  # h^2 * max_r |d log Q / dr|
        r = a[:, None] + torch.linspace(0, reach, grid, dtype=torch.float64)[None]
        f = -(r - a[:, None]).pow(2) / (2 * h**2) - self._log_radial(r.pow(2))
        curvature = 1 / h**2 + (v + d) / (v * s**2)  # >= |f''| everywhere
        slack = curvature * (reach / (grid - 1)) ** 2 / 8
        return f.max(dim=1).values + slack + log_kernel_norm - self._log_norm()


def log_envelope(kde: GaussianKDE, proposal: Proposal) -> float:
    """log M with M >= sup P/Q: the mean over the kernels of each kernel's supremum ratio, in log space."""
    sups = proposal.log_kernel_ratio_sup(kde.points)
    return float(torch.logsumexp(sups, dim=0) - math.log(len(sups)))


def rejection_sample_bank(
    codes: torch.Tensor,
    decode_valid: Callable[[torch.Tensor], torch.Tensor],
    num_proposals: int,
    batch_size: int = 4096,
    max_bank_size: int | None = None,
    seed: int = 0,
    sampler: str = "kde",
    proposal: str = "student_t",
    dof: int = 5,
    bandwidth: float | None = None,
) -> tuple[torch.Tensor, BankStats]:
    """Latents drawn from the KDE of ``codes`` (exactly or by rejection sampling) whose decodings are valid.

    decode_valid: latents ``(B, D)`` -> boolean ``(B,)`` (decode, then the anatomical criteria).
    sampler: ``kde`` (exact draws from the KDE) or ``rejection`` (``proposal`` Q, a true envelope M).
    bandwidth: the KDE's (whitened units); None: chosen by leave-one-out likelihood (:func:`select_bandwidth`).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    codes = codes.detach().double().cpu()
    bandwidth = select_bandwidth(codes) if bandwidth is None else float(bandwidth)
    kde = GaussianKDE(codes, bandwidth)
    generator = torch.Generator().manual_seed(seed)
    q = Proposal(proposal, codes.shape[1], bandwidth, dof)
    log_m = log_envelope(kde, q) if sampler == "rejection" else 0.0
    log_m_data = float((kde.log_density_white(kde.points) - q.log_density(kde.points)).max())
    kept, accepted, valid, drawn = [], 0, 0, 0
    while drawn < num_proposals:
        count = min(batch_size, num_proposals - drawn)
        if sampler == "kde":  # a random code plus kernel noise, in whitened coordinates
            noise = torch.randn(count, codes.shape[1], generator=generator, dtype=torch.float64)
            picks = torch.randint(len(codes), (count,), generator=generator)
            white = kde.points[picks] + bandwidth * noise
            keep = torch.ones(count, dtype=torch.bool)
        else:
            white = q.sample(count, generator)
            log_u = torch.rand(count, generator=generator, dtype=torch.float64).log()
            keep = log_u + log_m + q.log_density(white) <= kde.log_density_white(white)
        drawn += count
        if keep.any():
            candidates = kde.from_white(white[keep]).float()
            accepted += len(candidates)
            good = decode_valid(candidates).cpu()
            valid += int(good.sum())
            kept.append(candidates[good])
        if max_bank_size is not None and valid >= max_bank_size:
            break
    bank = torch.cat(kept) if kept else torch.zeros(0, codes.shape[1])
    if max_bank_size is not None:
        bank = bank[:max_bank_size]
    envelope = math.exp(min(log_m, 700.0))
    return bank, BankStats(drawn, accepted, valid, bandwidth, envelope, log_m, log_m_data)
