"""EchoDiffusion: video diffusion from the end-diastolic semantic map (Nguyen Van Phi et al., ICASSP 2024).

Training (the paper's eq. 5, or its v / flow-matching variants): a clip starting at ED is noised at a random level and
the SPADE 3D UNet, conditioned on the ED map (and optionally the EF), predicts the target. The condition is dropped
(map -> all-zero map, EF -> null) with ``map_drop_prob`` / ``ef_drop_prob``, so one network is both the conditional
and the unconditional model. Sampling applies classifier-free guidance (eq. 7): ``pred = pred_c + s (pred_c -
pred_null)`` with ``s = guidance_scale`` (the paper's 7; 0 = plain conditional). EMA weights (Lightning's
EMAWeightAveraging callback, added by the module) are the ones validated, checkpointed and sampled from.

``predict`` turns every ED map of the predict split into ``samples_per_map`` synthetic videos, screened by the
privacy filter, and writes them as an EchoNet-Dynamic dataset (see :mod:`echo_modules.diffusion.export`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from datamodules.errors import ConfigError, DataError
from echo_modules.common.module import EchoModule, gather_lists
from echo_modules.diffusion.ef_scoring import LVAreaEF, RegressorEF, ef_agreement
from echo_modules.diffusion.export import SyntheticEchoNetWriter, to_uint8
from echo_modules.diffusion.metrics import per_frame_ssim
from echo_modules.diffusion.networks import SpadeUNet3D
from echo_modules.diffusion.privacy import PrivacyFilter, video_signature
from echo_modules.diffusion.samplers import SAMPLERS, sample_diffusion, sample_flow
from echo_modules.diffusion.schedules import (
    alphas_cumprod,
    flow_interpolate,
    flow_target,
    make_betas,
    masked_mse,
    q_sample,
    velocity_target,
)

FLOW_TIME_SCALE = 1000.0  # flow time t in [0, 1] is embedded as t * 1000, the range of diffusion timesteps


def one_hot_map(ed_mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer map ``(B, H, W)`` -> one-hot ``(B, K, H, W)`` float; labels outside ``[0, K)`` are a DataError."""
    if ed_mask.min() < 0 or ed_mask.max() >= num_classes:
        raise DataError(
            f"ED map labels span {int(ed_mask.min())}..{int(ed_mask.max())} but the network has num_classes="
            f"{num_classes}; set --model.network.init_args.num_classes"
        )
    return F.one_hot(ed_mask.long(), num_classes).permute(0, 3, 1, 2).float()


class EchoDiffusion(EchoModule):
    """SPADE 3D UNet diffusion on ED maps; see the module docstring."""

    def __init__(
        self,
        network: nn.Module | None = None,
        objective: Literal["epsilon", "v", "flow"] = "epsilon",
        schedule: Literal["linear", "cosine"] = "linear",
        num_train_timesteps: int = 1000,
        sampler: Literal["ddpm", "ddim", "dpmsolver", "euler", "heun"] | None = None,
        num_sampling_steps: int = 50,
        guidance_scale: float = 7.0,
        ef_guidance_scale: float | None = None,
        map_drop_prob: float = 0.1,
        ef_drop_prob: float = 0.1,
        ef_shuffle: bool = False,
        ema_decay: float | None = 0.999,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        num_val_samples: int = 4,
        sample_every_n_epochs: int = 1,
        synthetic_dir: str | None = None,
        samples_per_map: int = 1,
        predict_ef: list[float] | None = None,
        predict_ef_range: tuple[float, float] | None = None,
        predict_seed: int = 0,
        val_fraction: float = 0.1,
        privacy_filter: bool = True,
        privacy_percentile: float = 95.0,
        max_attempts: int = 4,
        ef_scorer: str | None = None,
        test_ef: list[float] | None = None,
    ) -> None:
        """Args:
        network: the denoiser (default: :class:`SpadeUNet3D` with its defaults; EF conditioning is its
            ``ef_conditioning`` flag).
        objective: ``epsilon`` (the paper), ``v`` (v-prediction) or ``flow`` (rectified flow / flow matching).
        schedule: noise schedule of the diffusion objectives (``linear`` = DDPM's, ``cosine`` = improved DDPM's).
        sampler: ``ddpm`` / ``ddim`` / ``dpmsolver`` (DPM-Solver++ 2M) for epsilon and v, ``euler`` / ``heun`` for flow
            (default: ddim, or heun for flow). ``num_sampling_steps``: its steps (the paper samples DDPM-1000).
        guidance_scale: classifier-free guidance ``s`` (the paper: 7). map_drop_prob / ef_drop_prob: condition dropout.
        ef_shuffle: a control, not for real use (the EF-permuted control). In ``training_step`` the batch's EFs are
            randomly permuted across the batch (before condition dropout), so the EF pathways train on realistic EF
            values but the EF says nothing about the video it is paired with. Validation and test are untouched. A
            model trained so shows what the recipe gives when the EF carries no information: an EF check it passes
            is not evidence of EF conditioning.
        ef_guidance_scale: a separate guidance scale for the EF (None: map and EF are guided together by
            ``guidance_scale``). Set, each step costs three network calls and composes
            ``pred = pred(null) + s (pred(map) - pred(null)) + s_ef (pred(map, EF) - pred(map))`` (the guidance is
            ``1 + scale`` times the conditional direction, as in eq. 7).
        ema_decay: EMA of the weights for validation, checkpoints and sampling (None: no EMA).
        num_val_samples / sample_every_n_epochs: maps sampled at validation (SSIM vs the real video, W&B videos).
        synthetic_dir: where ``predict`` writes the synthetic EchoNet-Dynamic dataset (default: run dir/synthetic).
        samples_per_map: synthetic videos per ED map. predict_ef: EFs to ask for, cycled over samples; else
            predict_ef_range: uniform draws; else the source video's EF (EF-conditioned networks only).
        predict_seed: seeds of the sampled noise (each video's seed is written to FileList.csv).
        val_fraction: share of the synthetic videos marked VAL (the rest TRAIN) for a train-on-synthetic run.
        privacy_filter / privacy_percentile / max_attempts: reject samples more similar to a training video than the
            percentile of real-vs-real nearest-neighbour similarity, regenerating up to max_attempts times.
        ef_scorer: how ``test`` and ``predict`` measure the EF of generated videos (requested vs measured EF):
            ``lv_area`` (LV-area change calibrated to EF on the DataModule's training videos, see
            :mod:`echo_modules.diffusion.ef_scoring`) or the path of an EF model checkpoint (EFRegressor); None: off.
            From Python it may also be a scorer object (``LVAreaEF``, ``RegressorEF.from_model(...)``), or a dict
            ``{name: scorer}`` of several read-outs of the same samples: ``test`` then writes each one's summary
            under ``name_``-prefixed keys, and ``predict``'s MeasuredEF is the first one's.
        test_ef: EFs ``test`` asks for from every map (default: the source video's EF).
        """
        super().__init__()
        self.save_hyperparameters()
        self.network = network if network is not None else SpadeUNet3D()
        if objective not in ("epsilon", "v", "flow"):
            raise ConfigError(f"model.objective must be epsilon, v or flow, got {objective!r}")
        sampler = sampler or ("heun" if objective == "flow" else "ddim")
        flow_sampler = sampler in ("euler", "heun")
        if sampler not in SAMPLERS or flow_sampler != (objective == "flow"):
            raise ConfigError(
                f"model.sampler {sampler!r} does not fit objective {objective!r}: "
                "use ddpm/ddim/dpmsolver for epsilon and v, euler/heun for flow"
            )
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.objective = objective
        self.sampler = sampler
        self.num_sampling_steps = num_sampling_steps
        self.guidance_scale = guidance_scale
        self.map_drop_prob = map_drop_prob
        self.ef_drop_prob = ef_drop_prob
        self.ef_shuffle = ef_shuffle
        self.num_classes = int(getattr(self.network, "num_classes", 4))
        self.ef_conditioning = bool(getattr(self.network, "ef_conditioning", False))
        self.register_buffer("betas", make_betas(schedule, num_train_timesteps).float(), persistent=False)
        self.register_buffer("alpha_bar", alphas_cumprod(make_betas(schedule, num_train_timesteps)).float(),
                             persistent=False)  # fmt: skip
        self._val_examples: list[dict[str, torch.Tensor]] = []
        self.privacy: PrivacyFilter | None = None
        self.privacy_counts = {"generated": 0, "rejected": 0, "dropped": 0}
        self.ef_scorer: LVAreaEF | RegressorEF | None = None  # the first of ef_scorers
        self.ef_scorers: dict[str, LVAreaEF | RegressorEF] = {}
        self._test_rows: list[dict[str, float]] = []

    # ------------------------------------------------------------------ callbacks and optimiser

    def configure_callbacks(self) -> list:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        callbacks: list = [SyntheticEchoNetWriter(self.hparams.synthetic_dir, self.hparams.val_fraction)]
        if self.hparams.ema_decay is not None:
            callbacks.append(EMAWeightAveraging(decay=self.hparams.ema_decay))
        return callbacks

    def configure_optimizers(self):
        optimizer = self.optimizer(self.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}

    # ------------------------------------------------------------------ the network with conditions

    def _conditions(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if "ed_mask" not in batch:
            raise DataError("EchoDiffusion needs batches with an 'ed_mask' (e.g. CamusDataModule task: synthesis)")
        seg_map = one_hot_map(batch["ed_mask"], self.num_classes)
        ef = batch["ef"].float() if self.ef_conditioning and "ef" in batch else None
        return seg_map, ef

    def _network_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() * FLOW_TIME_SCALE if self.objective == "flow" else t.float()

    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> torch.Tensor:
        """The denoising loss of one batch, with condition dropout in training."""
        x0 = batch["video"]
        seg_map, ef = self._conditions(batch)
        b = len(x0)

        def draw(*shape, like=None, kind="rand"):
            fn = torch.rand if kind == "rand" else torch.randn
            return fn(*shape, generator=generator, device="cpu").to(self.device)

        if self.training:
            seg_map = seg_map * (draw(b) >= self.map_drop_prob).float()[:, None, None, None]
            if ef is not None:
                ef = torch.where(draw(b) < self.ef_drop_prob, torch.full_like(ef, math.nan), ef)
        noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0)
        if self.objective == "flow":
            t = draw(b)
            x_t, target = flow_interpolate(x0, noise, t), flow_target(x0, noise)
        else:
            t = (draw(b) * len(self.betas)).long().clamp(max=len(self.betas) - 1)
            alpha_bar = self.alpha_bar[t]
            x_t = q_sample(x0, noise, alpha_bar)
            target = noise if self.objective == "epsilon" else velocity_target(x0, noise, alpha_bar)
        prediction = self.network(x_t, self._network_time(t), seg_map, ef)
        return masked_mse(prediction, target, batch.get("frames_mask"))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.ef_shuffle and "ef" in batch:  # the EF-permuted control: EFs of other videos of the batch
            batch = {**batch, "ef": batch["ef"][torch.randperm(len(batch["ef"]), device="cpu").to(batch["ef"].device)]}
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["video"]))
        return loss

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def generate(
        self,
        ed_mask: torch.Tensor | None,
        ef: torch.Tensor | None = None,
        num_frames: int = 16,
        seeds: list[int] | None = None,
        guidance_scale: float | None = None,
        ef_guidance_scale: float | None = None,
        sampler: str | None = None,
        num_steps: int | None = None,
        size: tuple[int, int] | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Sample videos ``(B, C, T, H, W)`` (in the training data's normalised units) for ED maps ``(B, H, W)``
        (None = the null map: unconditional) and requested EFs ``(B,)`` (None or NaN = no EF). ``guidance_scale``,
        ``ef_guidance_scale``, ``sampler`` and ``num_steps`` default to the module's settings.

        Each video's noise comes from its own seed, so a video is reproducible from the seed written beside it.
        """
        sampler = sampler or self.sampler
        num_steps = num_steps or self.num_sampling_steps
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        if ed_mask is None:
            if size is None or seeds is None:
                raise ValueError("unconditional sampling needs size and seeds")
            seg_map = torch.zeros(len(seeds), self.num_classes, *size, device=self.device)
        else:
            seg_map = one_hot_map(ed_mask.to(self.device), self.num_classes)
        b, _, h, w = seg_map.shape
        seeds = seeds if seeds is not None else list(range(b))
        channels = int(getattr(self.network, "in_channels", 1))
        noise = torch.stack(
            [torch.randn(channels, num_frames, h, w, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        ).to(self.device)
        if ef is not None and self.ef_conditioning:
            ef = ef.to(self.device).float()
        else:
            ef = None
        null_map = torch.zeros_like(seg_map)
        null_ef = None if ef is None else torch.full_like(ef, math.nan)
        ef_scale = self.hparams.get("ef_guidance_scale") if ef_guidance_scale is None else ef_guidance_scale
        guided = scale != 0 and (ed_mask is not None or ef is not None)
        separate = ef is not None and ef_scale is not None

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            time = self._network_time(t)
            if separate:  # map and EF guided with their own scales: full, map only, neither
                full, map_only, neither = (
                    self.network(
                        torch.cat([x, x, x]),
                        torch.cat([time, time, time]),
                        torch.cat([seg_map, seg_map, null_map]),
                        torch.cat([ef, null_ef, null_ef]),
                    )
                    .float()
                    .chunk(3)
                )
                return full + scale * (map_only - neither) + ef_scale * (full - map_only)
            if not guided:
                return self.network(x, time, seg_map, ef).float()
            both = self.network(
                torch.cat([x, x]),
                torch.cat([time, time]),
                torch.cat([seg_map, null_map]),
                None if ef is None else torch.cat([ef, null_ef]),
            ).float()
            conditional, unconditional = both.chunk(2)
            return conditional + scale * (conditional - unconditional)  # eq. 7

        if self.objective == "flow":
            return sample_flow(model_fn, noise, num_steps, sampler, progress=progress)
        generator = torch.Generator(device=self.device).manual_seed(int(seeds[0]))
        return sample_diffusion(model_fn, noise, self.betas.double(), self.objective, sampler, num_steps,
                                generator=generator, progress=progress)  # fmt: skip

    # ------------------------------------------------------------------ validation

    def on_validation_epoch_start(self) -> None:
        self._val_examples = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # a fixed noise draw per batch, so the validation loss is comparable between epochs
        loss = self.loss(batch, generator=torch.Generator().manual_seed(batch_idx))
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["video"]), sync_dist=True)
        kept = sum(len(e["video"]) for e in self._val_examples)
        if kept < self.hparams.num_val_samples:
            take = self.hparams.num_val_samples - kept
            example = {"video": batch["video"][:take], "ed_mask": batch["ed_mask"][:take]}
            if "ef" in batch:
                example["ef"] = batch["ef"][:take]
            self._val_examples.append(example)

    def on_validation_epoch_end(self) -> None:
        every = max(1, self.hparams.sample_every_n_epochs)
        if not self._val_examples or self.trainer.sanity_checking or (self.current_epoch + 1) % every:
            return
        real = torch.cat([e["video"] for e in self._val_examples])
        ed_mask = torch.cat([e["ed_mask"] for e in self._val_examples])
        ef = torch.cat([e["ef"] for e in self._val_examples]) if "ef" in self._val_examples[0] else None
        generated = self.generate(ed_mask, ef, num_frames=real.shape[2], seeds=list(range(len(real))))
        self.log("val/ssim", per_frame_ssim(generated, real).mean(), sync_dist=True)
        self._log_videos(real, generated)

    def _log_videos(self, real: torch.Tensor, generated: torch.Tensor) -> None:
        """Generated videos beside the real ones of the same maps, as browser-playable videos in W&B."""
        from lightning.pytorch.loggers import WandbLogger

        loggers = [logger for logger in self.trainer.loggers if isinstance(logger, WandbLogger)]
        if not loggers or not self.trainer.is_global_zero:
            return
        from echo_modules.diffusion.export import write_browser_video

        mean, std = self._normalisation()
        pairs = torch.cat([real, generated], dim=-1)  # real | generated, side by side
        folder = self.run_dir / "samples" / f"epoch{self.current_epoch:04d}"
        paths = [str(write_browser_video(folder / f"sample_{i}", to_uint8(video, mean, std))) for i, video in
                 enumerate(pairs)]  # fmt: skip
        for logger in loggers:
            logger.log_video("val/real_vs_generated", videos=paths, step=self.global_step,
                             caption=[f"map {i}: real | generated" for i in range(len(paths))])  # fmt: skip

    def _normalisation(self) -> tuple[float, float]:
        datamodule = getattr(self.trainer, "datamodule", None)
        if getattr(datamodule, "norm_mean", None) is not None:
            return float(datamodule.norm_mean), float(datamodule.norm_std)
        if self._checkpoint_normalisation is not None:
            return self._checkpoint_normalisation["mean"], self._checkpoint_normalisation["std"]
        return 0.0, 1.0

    # ------------------------------------------------------------------ requested vs measured EF (test)

    def _build_ef_scorers(self) -> dict[str, LVAreaEF | RegressorEF]:
        """The EF measurements of generated videos (``ef_scorer``: ``{"": scorer}`` for one, else its dict), empty
        when off or the network ignores EF."""
        choice = self.hparams.get("ef_scorer")
        if not choice or not self.ef_conditioning:
            return {}
        choices = dict(choice) if isinstance(choice, dict) else {"": choice}
        return {name: self._build_ef_scorer(value) for name, value in choices.items()}

    def _build_ef_scorer(self, choice: Any) -> LVAreaEF | RegressorEF:
        if isinstance(choice, (LVAreaEF, RegressorEF)):  # a scorer built in Python (e.g. RegressorEF.from_model)
            return choice
        if choice == "lv_area":
            datamodule = self.trainer.datamodule
            records = getattr(datamodule, "records", {}).get("TRAIN", [])
            if not records:
                raise ConfigError("ef_scorer lv_area is calibrated on the DataModule's training split, which is empty")
            videos, masks, efs = [], [], []
            for batch in datamodule._eval_loader(records):
                batch = datamodule.on_after_batch_transfer(batch, 0)
                videos.append(batch["video"]), masks.append(batch["ed_mask"]), efs.append(batch["ef"])
            scorer = LVAreaEF.fit(torch.cat(videos).cpu(), torch.cat(masks).cpu(), torch.cat(efs).cpu())
        else:
            scorer = RegressorEF(choice, *self._normalisation())
        rank_zero_info(f"EF of generated videos measured by {scorer}")
        return scorer

    def _set_ef_scorers(self) -> None:
        self.ef_scorers = self._build_ef_scorers()
        self.ef_scorer = next(iter(self.ef_scorers.values()), None)

    def on_test_start(self) -> None:
        super().on_test_start()
        self._set_ef_scorers()
        self._test_rows: list[dict[str, float]] = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Samples from the batch's ED maps at the requested EFs (``test_ef``, else the source EF; the same noise for
        each), scored by SSIM against the real video and, with an ``ef_scorer``, by measured vs requested EF; the
        EF-blind control is the same noise sampled with the EF left out. Several scorers read the same samples."""
        real, ed_mask = batch["video"], batch["ed_mask"]
        source_ef = batch["ef"].float() if "ef" in batch else torch.full((len(real),), math.nan, device=real.device)
        requests = self.hparams.get("test_ef") or [None]
        # the same noise for every requested EF, so the EFs are compared sample by sample
        seeds = [int(self.hparams.predict_seed) + batch_idx * len(real) + i for i in range(len(real))]
        maps = [f"{self.global_rank}:{batch_idx}:{i}" for i in range(len(real))]
        controls = {}
        if self.ef_scorers:
            blind = self.generate(ed_mask, None, num_frames=real.shape[2], seeds=seeds)
            controls = {name: (scorer(blind, ed_mask).tolist(), scorer(real, ed_mask).tolist())
                        for name, scorer in self.ef_scorers.items()}  # fmt: skip
        for requested in requests:
            ef = source_ef if requested is None else torch.full_like(source_ef, float(requested))
            videos = self.generate(ed_mask, ef, num_frames=real.shape[2], seeds=seeds)
            rows = [{"map": m, "ssim": float(v), "requested": float(e), "source": float(s)} for m, v, e, s in
                    zip(maps, per_frame_ssim(videos, real), ef, source_ef)]  # fmt: skip
            for name, scorer in self.ef_scorers.items():
                prefix = f"{name}:" if name else ""
                measured_blind, measured_real = controls[name]
                for row, m, b, r in zip(rows, scorer(videos, ed_mask).tolist(), measured_blind, measured_real):
                    row.update({f"{prefix}measured": m, f"{prefix}measured_ef_blind": b, f"{prefix}measured_real": r})
            self._test_rows.extend(rows)

    def test_summary(self) -> dict[str, Any] | None:
        rows = gather_lists(self._test_rows)
        summary = ef_agreement(rows)
        for name in (name for name in self.ef_scorers if name):  # several read-outs: one summary each, prefixed
            keys = ("measured", "measured_ef_blind", "measured_real")
            renamed = [{**row, **{key: row[f"{name}:{key}"] for key in keys}} for row in rows]
            summary |= {f"{name}_{key}": value for key, value in ef_agreement(renamed).items()
                        if key not in ("videos", "ssim")}  # fmt: skip
        for key, value in summary.items():
            self.log(f"test/{key}", float(value), rank_zero_only=True)
        return summary

    # ------------------------------------------------------------------ synthetic dataset

    def on_predict_start(self) -> None:
        super().on_predict_start()
        self.privacy_counts = {"generated": 0, "rejected": 0, "dropped": 0}
        self.privacy = self._build_privacy_filter() if self.hparams.privacy_filter else None
        self._set_ef_scorers()

    def _build_privacy_filter(self) -> PrivacyFilter:
        """Features of every training video of the DataModule (the patients the model may have memorised)."""
        datamodule = self.trainer.datamodule
        records = getattr(datamodule, "records", {}).get("TRAIN", [])
        if len(records) < 2:
            raise ConfigError(
                "the privacy filter needs the training split of the DataModule (two videos or more); "
                "set --model.privacy_filter false to export without it"
            )
        dataset = datamodule.make_dataset(records, train=False)
        features = []
        for index in range(len(dataset)):
            video = dataset[index]["video"]
            video = video[:1] if video.ndim == 5 else video[None]
            features.append(video_signature(video.float()))
        privacy = PrivacyFilter(torch.cat(features), self.hparams.privacy_percentile)
        rank_zero_info(
            f"privacy filter: {len(records)} training videos, real-vs-real nearest-neighbour similarity "
            f"median {privacy.real_nearest.median():.3f}, threshold (p{self.hparams.privacy_percentile:g}) "
            f"{privacy.threshold:.3f}"
        )
        return privacy

    def _requested_ef(self, index: int, source_ef: float, rng: np.random.Generator) -> float:
        if not self.ef_conditioning:
            return source_ef
        if self.hparams.predict_ef:
            return float(self.hparams.predict_ef[index % len(self.hparams.predict_ef)])
        if self.hparams.predict_ef_range is not None:
            return float(rng.uniform(*self.hparams.predict_ef_range))
        return source_ef

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """Synthetic videos for the batch's ED maps, privacy-filtered; the writer callback saves them."""
        ed_mask = batch["ed_mask"]
        num_frames = batch["video"].shape[2]
        names = batch.get("filename", [f"map{batch_idx}_{i}" for i in range(len(ed_mask))])
        source_ef = batch["ef"].float().cpu() if "ef" in batch else torch.full((len(ed_mask),), math.nan)
        fps = batch["fps"].float().cpu() if "fps" in batch else torch.full((len(ed_mask),), 50.0)
        period = getattr(getattr(self.trainer, "datamodule", None), "period", 1)
        mean, std = self._normalisation()
        jobs = []
        for i in range(len(ed_mask)):
            for k in range(self.hparams.samples_per_map):
                serial = (self.global_rank, batch_idx, i, k)
                rng = np.random.default_rng([self.hparams.predict_seed, *serial])
                jobs.append({"map": i, "sample": k, "serial": serial,
                             "ef": self._requested_ef(k, float(source_ef[i]), rng)})  # fmt: skip
        outputs: list[dict[str, Any]] = []
        pending = jobs
        for attempt in range(self.hparams.max_attempts):
            if not pending:
                break
            seeds = [int(np.random.SeedSequence([self.hparams.predict_seed, *j["serial"], attempt])
                         .generate_state(1)[0] & 0x7FFFFFFF) for j in pending]  # fmt: skip
            maps = ed_mask[[j["map"] for j in pending]]
            efs = torch.tensor([j["ef"] for j in pending])
            videos = self.generate(maps, efs, num_frames=num_frames, seeds=seeds)
            self.privacy_counts["generated"] += len(pending)
            accepted = (
                self.privacy.accept(videos.cpu())
                if self.privacy is not None
                else torch.ones(len(pending), dtype=torch.bool)
            )
            measured = (
                self.ef_scorer(videos, maps.to(videos.device)).cpu().tolist()
                if self.ef_scorer is not None
                else [math.nan] * len(pending)
            )
            still = []
            for job, seed, video, ok, ef_measured in zip(pending, seeds, videos, accepted.tolist(), measured):
                if not ok:
                    self.privacy_counts["rejected"] += 1
                    still.append(job)
                    continue
                i = job["map"]
                outputs.append({
                    "source": str(names[i]),
                    "sample": job["sample"],
                    "requested_ef": job["ef"],
                    "measured_ef": float(ef_measured),
                    "source_ef": float(source_ef[i]),
                    "seed": seed,
                    "attempts": attempt + 1,
                    "fps": float(fps[i]) / period if math.isfinite(float(fps[i])) else 50.0,
                    "frames": to_uint8(video.cpu(), mean, std),
                })  # fmt: skip
            pending = still
        self.privacy_counts["dropped"] += len(pending)
        return outputs
