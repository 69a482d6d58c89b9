"""The cascade's second stage: video super-resolution diffusion (the paper's 56 -> 128 stage; Ho et al., "Cascaded
Diffusion Models", JMLR 2022, for the recipe).

The SR denoiser sees the noisy high-resolution video with the low-resolution video, upsampled to the target size,
concatenated to its input, and the ED map through SPADE at the high resolution (as the base stage). Conditioning
augmentation: in training the low-resolution condition is noised at a random level in ``[0, noise_aug_max]``, at
sampling at ``noise_aug_level``; the level is given to the network (an embedding added to the time embedding), so one
network serves any level and a base stage's imperfect samples look like the noised real ones it was trained on.
Pairs are made on the fly from the same DataModule batches: the real clip is the target, its antialiased downsample
to ``low_res_size`` the condition. With ``residual`` the stage models the high-frequency residual over bilinear
upsampling (its output is bilinear + sampled residual), which is what a small network can learn quickly.

Everything else is :class:`~echo_modules.diffusion.module.EchoDiffusion`'s: objectives, schedules, EMA, classifier-free
guidance on the map, the samplers and the synthetic-dataset export. The low-resolution condition reaches the network
through :meth:`SuperResUNet3D.conditioned_on`, so the base stage's loss and sampling code run unchanged.

The two-stage chain is one ``predict``: with ``base_checkpoint`` (a base EchoDiffusion checkpoint written by
``echolab fit``), each ED map of the predict split is downsampled to the base resolution, the base samples a low-res
video, this stage samples the high-res video from it, and the export is the base stage's EchoNet-Dynamic dataset
(privacy filter included) at the high resolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from datamodules.errors import ConfigError
from echo_modules.common.module import gather_lists
from echo_modules.diffusion.metrics import per_frame_ssim
from echo_modules.diffusion.module import EchoDiffusion
from echo_modules.diffusion.networks import SpadeUNet3D, cosine_embedding

NOISE_LEVEL_SCALE = 1000.0  # a noise level in [0, 1] is embedded like a diffusion timestep in [0, 1000]


def downsample(video: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear downsampling of every frame ``(B, C, T, H, W) -> (B, C, T, h, w)`` (the low-res stage's
    view of a real video)."""
    b = video.shape[0]
    frames = F.interpolate(rearrange(video.float(), "b c t h w -> (b t) c h w"), size=size, mode="bilinear",
                           antialias=True, align_corners=False)  # fmt: skip
    return rearrange(frames, "(b t) c h w -> b c t h w", b=b)


def upsample(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of every frame ``(B, C, T, h, w) -> (B, C, T, H, W)`` (the condition, and the baseline)."""
    b = video.shape[0]
    frames = F.interpolate(rearrange(video.float(), "b c t h w -> (b t) c h w"), size=size, mode="bilinear",
                           align_corners=False)  # fmt: skip
    return rearrange(frames, "(b t) c h w -> b c t h w", b=b)


def augment(condition: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Conditioning augmentation, variance preserving: ``sqrt(1 - level^2) x + level * noise``, level ``(B,)`` in
    [0, 1] being the noise's standard deviation (0 = the clean condition, 1 = pure noise)."""
    level = level.to(condition)[:, None, None, None, None]
    return (1 - level**2).clamp(min=0).sqrt() * condition + level * noise


def per_video_psnr(generated: torch.Tensor, real: torch.Tensor, data_range: float | None = None) -> torch.Tensor:
    """PSNR of each pair of videos ``(B, C, T, H, W)`` -> ``(B,)`` in dB; ``data_range`` defaults to the real span."""
    from torchmetrics.functional.image import peak_signal_noise_ratio as psnr

    if data_range is None:
        data_range = float(real.max() - real.min()) or 1.0
    return psnr(generated.float(), real.float(), data_range=data_range, reduction="none", dim=(1, 2, 3, 4))


class SuperResUNet3D(SpadeUNet3D):
    """:class:`SpadeUNet3D` whose input is ``[x_t, upsampled low-res video]`` (channels concatenated) and whose time
    embedding also carries the low-res condition's augmentation noise level.

    ``forward(x, time, seg_map, ef, low_res, noise_level)``: ``low_res`` is the (augmented) condition at the output
    size, ``noise_level`` ``(B,)`` its level. Inside ``with network.conditioned_on(low_res, noise_level):`` they may be
    left out, so callers that only know the base stage's ``network(x, time, seg_map, ef)`` (its loss, classifier-free
    guidance, the samplers) drive this network unchanged; batches that stack k copies (guidance) get k copies.

    Args: ``in_channels`` (video channels; the low-res video has as many) and every :class:`SpadeUNet3D` argument.
    """

    def __init__(self, in_channels: int = 1, **kwargs: Any) -> None:
        super().__init__(in_channels=in_channels, **kwargs)
        stem = self.stem
        # the base stem's inputs (the noisy video, and the EF channel if any) plus the low-res video
        self.stem = nn.Conv3d(stem.in_channels + in_channels, stem.out_channels, stem.kernel_size, padding=stem.padding)
        embed_dim = self.time_mlp[-1].out_features
        self.noise_level_mlp = nn.Sequential(
            nn.Linear(self.base_channels, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )
        self._bound: tuple[torch.Tensor, torch.Tensor] | None = None
        self._level: torch.Tensor | None = None

    @contextmanager
    def conditioned_on(self, low_res: torch.Tensor, noise_level: torch.Tensor) -> Iterator[SuperResUNet3D]:
        """Bind the low-res condition ``(B, C, T, H, W)`` and its noise level ``(B,)`` for the calls in the block."""
        self._bound = (low_res, noise_level)
        try:
            yield self
        finally:
            self._bound = None

    def embedding(self, time: torch.Tensor, ef: torch.Tensor | None) -> torch.Tensor:
        level = self._level if self._level is not None else torch.zeros_like(time, dtype=torch.float32)
        noise_embedding = self.noise_level_mlp(cosine_embedding(level * NOISE_LEVEL_SCALE, self.base_channels))
        return super().embedding(time, ef) + noise_embedding

    def forward(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        seg_map: torch.Tensor,
        ef: torch.Tensor | None = None,
        low_res: torch.Tensor | None = None,
        noise_level: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if low_res is None:
            if self._bound is None:
                raise RuntimeError("SuperResUNet3D needs low_res (or a `with network.conditioned_on(...)` block)")
            low_res, noise_level = self._bound
            copies = len(x) // len(low_res)  # classifier-free guidance stacks [conditional; null] batches
            low_res, noise_level = low_res.repeat(copies, 1, 1, 1, 1), noise_level.repeat(copies)
        if low_res.shape[0] != x.shape[0] or low_res.shape[2:] != x.shape[2:]:
            raise ValueError(f"low_res {tuple(low_res.shape)} does not match x {tuple(x.shape)}")
        if noise_level is None:
            noise_level = torch.zeros(len(x), device=x.device)
        self._level = noise_level.float()  # read by embedding() inside the base forward
        try:
            return super().forward(torch.cat([x, low_res.to(x.dtype)], dim=1), time, seg_map, ef)
        finally:
            self._level = None


class SuperResDiffusion(EchoDiffusion):
    """The super-resolution stage: an :class:`EchoDiffusion` whose network is a :class:`SuperResUNet3D`; see the
    module docstring.

    Args:
        network: the denoiser (default: :class:`SuperResUNet3D` with its defaults).
        low_res_size: side of the low-resolution videos (the base stage's ``frame_size``; the paper: 56 -> 128).
        noise_aug_max: conditioning augmentation in training, levels uniform in ``[0, noise_aug_max]``.
        noise_aug_level: the level used at sampling (validation, test, predict).
        residual: model the residual over bilinear upsampling of the (clean) low-res video.
        base_checkpoint: a base-stage EchoDiffusion checkpoint (``echolab fit``): ``predict`` and map-only
            ``generate`` sample the low-res video from it first (the two-stage chain).
        base_num_sampling_steps: override the base stage's sampling steps in the chain (None: its own).
        **kwargs: every :class:`EchoDiffusion` argument (objective, sampler, guidance_scale, ema_decay, predict
            and privacy settings, ...).
    """

    def __init__(
        self,
        network: SuperResUNet3D | None = None,
        low_res_size: int = 56,
        noise_aug_max: float = 0.3,
        noise_aug_level: float = 0.1,
        residual: bool = True,
        base_checkpoint: str | None = None,
        base_num_sampling_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        network = network if network is not None else SuperResUNet3D()
        if not isinstance(network, SuperResUNet3D):
            raise ConfigError(
                f"SuperResDiffusion needs model.network echo_modules.diffusion.superres.SuperResUNet3D, got "
                f"{type(network).__name__}"
            )
        for name, value in (("noise_aug_max", noise_aug_max), ("noise_aug_level", noise_aug_level)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"model.{name} is a noise standard deviation in [0, 1], got {value}")
        super().__init__(network=network, **kwargs)
        self.low_res_size = low_res_size
        self.noise_aug_max = noise_aug_max
        self.noise_aug_level = noise_aug_level
        self.residual = residual
        self._base: EchoDiffusion | None = None

    # ------------------------------------------------------------------ the low-res condition

    def _condition(
        self, low_res: torch.Tensor, size: tuple[int, int], level: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(augmented condition at ``size``, clean bilinear upsampling at ``size``) of low-res videos."""
        clean = upsample(low_res.to(self.device), size)
        noise = torch.randn(clean.shape, generator=generator, device="cpu").to(clean)
        return augment(clean, level, noise), clean

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """The base stage's denoising loss on (downsampled real, real) pairs with conditioning augmentation."""
        video = batch["video"]
        size = tuple(video.shape[-2:])
        if self.training:
            level = torch.rand(len(video), generator=generator, device="cpu").to(self.device) * self.noise_aug_max
        else:
            level = torch.full((len(video),), self.noise_aug_level, device=self.device)
        condition, clean = self._condition(downsample(video, self.low_res_size), size, level, generator)
        target = {**batch, "video": video - clean if self.residual else video}
        with self.network.conditioned_on(condition, level):
            return super().loss(target, generator)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def generate(
        self,
        ed_mask: torch.Tensor | None,
        ef: torch.Tensor | None = None,
        num_frames: int = 16,
        seeds: list[int] | None = None,
        low_res: torch.Tensor | None = None,
        noise_aug_level: float | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """High-res videos ``(B, C, T, H, W)`` from low-res videos ``(B, C, T, h, w)`` (this module's normalised
        units) and the ED maps ``(B, H, W)`` at the high resolution; ``low_res`` None: sampled by the base stage from
        the downsampled maps (``base_checkpoint``). ``options``: :meth:`EchoDiffusion.generate`'s (sampler, steps,
        guidance). The condition's augmentation noise comes from each video's seed, so a video is reproducible."""
        if ed_mask is None and (options.get("size") is None or low_res is None):
            raise ValueError("super-resolution without an ED map needs low_res and size")
        size = tuple(ed_mask.shape[-2:]) if ed_mask is not None else tuple(options["size"])
        batch = len(ed_mask) if ed_mask is not None else len(low_res)
        seeds = seeds if seeds is not None else list(range(batch))
        if low_res is None:
            low_res = self.base_samples(ed_mask, ef, num_frames, seeds)
        level_value = self.noise_aug_level if noise_aug_level is None else noise_aug_level
        level = torch.full((batch,), float(level_value), device=self.device)
        clean = upsample(low_res.to(self.device), size)
        noise = torch.stack([torch.randn(clean.shape[1:], generator=torch.Generator().manual_seed(int(s) + 1))
                             for s in seeds]).to(clean)  # fmt: skip
        condition = augment(clean, level, noise)
        with self.network.conditioned_on(condition, level):
            videos = super().generate(ed_mask, ef, num_frames=num_frames, seeds=seeds, **options)
        return videos + clean if self.residual else videos

    def base_model(self) -> EchoDiffusion:
        """The base stage from ``base_checkpoint`` (loaded once, EMA weights as checkpointed, in eval mode)."""
        if self._base is None:
            path = self.hparams.get("base_checkpoint")
            if not path:
                raise ConfigError(
                    "super-resolution from ED maps alone needs the base stage: set --model.base_checkpoint to a base "
                    "EchoDiffusion checkpoint (echolab fit --config configs/diffusion/<data>.yaml)"
                )
            if not Path(path).is_file():
                raise ConfigError(f"{path}: base checkpoint not found (model.base_checkpoint)")
            base = EchoDiffusion.load_from_checkpoint(path, map_location="cpu")
            if isinstance(base, SuperResDiffusion) or not isinstance(base, EchoDiffusion):
                raise ConfigError(f"{path}: a {type(base).__name__} checkpoint, not a base EchoDiffusion stage")
            self._base = base.eval().requires_grad_(False)
            rank_zero_info(f"cascade: base stage {path} -> {self.low_res_size} px, then super-resolution")
        return self._base.to(self.device)

    def base_samples(
        self, ed_mask: torch.Tensor, ef: torch.Tensor | None, num_frames: int, seeds: list[int]
    ) -> torch.Tensor:
        """Low-res videos sampled by the base stage from the ED maps downsampled (nearest) to ``low_res_size``, in
        this module's normalised units (the two stages' normalisations can differ slightly)."""
        base = self.base_model()
        small = F.interpolate(ed_mask[:, None].float(), size=self.low_res_size, mode="nearest")[:, 0].long()
        steps = self.hparams.get("base_num_sampling_steps")
        low_res = base.generate(small, ef, num_frames=num_frames, seeds=seeds, num_steps=steps)
        stats = base._checkpoint_normalisation  # the statistics the base stage was trained with (0-255 units)
        if stats is None:
            raise ConfigError(f"{self.hparams.base_checkpoint}: base checkpoint without normalisation statistics")
        base_mean, base_std = float(stats["mean"]), float(stats["std"])
        mean, std = self._normalisation()
        return (low_res * base_std + base_mean - mean) / std

    # ------------------------------------------------------------------ validation and test: SR of real low-res videos

    def on_validation_epoch_end(self) -> None:
        every = max(1, self.hparams.sample_every_n_epochs)
        if not self._val_examples or self.trainer.sanity_checking or (self.current_epoch + 1) % every:
            return
        real = torch.cat([e["video"] for e in self._val_examples])
        ed_mask = torch.cat([e["ed_mask"] for e in self._val_examples])
        ef = torch.cat([e["ef"] for e in self._val_examples]) if "ef" in self._val_examples[0] else None
        low_res = downsample(real, self.low_res_size)
        generated = self.generate(ed_mask, ef, real.shape[2], list(range(len(real))), low_res=low_res)
        bilinear = upsample(low_res, tuple(real.shape[-2:]))
        self.log("val/ssim", per_frame_ssim(generated, real).mean(), sync_dist=True)
        self.log("val/psnr", per_video_psnr(generated, real).mean(), sync_dist=True)
        self.log("val/ssim_bilinear", per_frame_ssim(bilinear, real).mean(), sync_dist=True)
        self._log_videos(real, generated)

    def on_test_start(self) -> None:
        super().on_test_start()
        self.ef_scorer = None  # the test scores super-resolution fidelity; the base stage's test scores the EF

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Super-resolution of each real video's downsample, scored against the real video (SSIM, PSNR) beside
        bilinear upsampling of the same low-res video."""
        real, ed_mask = batch["video"], batch["ed_mask"]
        ef = batch["ef"].float() if "ef" in batch else None
        seeds = [int(self.hparams.predict_seed) + batch_idx * len(real) + i for i in range(len(real))]
        low_res = downsample(real, self.low_res_size)
        generated = self.generate(ed_mask, ef, real.shape[2], seeds, low_res=low_res)
        bilinear = upsample(low_res, tuple(real.shape[-2:]))
        for values in zip(per_frame_ssim(generated, real), per_video_psnr(generated, real),
                          per_frame_ssim(bilinear, real), per_video_psnr(bilinear, real)):  # fmt: skip
            self._test_rows.append(dict(zip(("ssim", "psnr", "ssim_bilinear", "psnr_bilinear"), map(float, values))))

    def test_summary(self) -> dict[str, Any] | None:
        rows = gather_lists(self._test_rows)
        if not rows:
            return None
        summary: dict[str, Any] = {"videos": len(rows)}
        for key in rows[0]:
            values = [row[key] for row in rows if math.isfinite(row[key])]
            summary[key] = sum(values) / max(len(values), 1)
        for key, value in summary.items():
            self.log(f"test/{key}", float(value), rank_zero_only=True)
        return summary

    def on_predict_start(self) -> None:
        self.base_model()  # a missing or wrong base checkpoint is one line before any work
        super().on_predict_start()
