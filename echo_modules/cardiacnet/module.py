"""CardiacNet (Yang et al., ECCV 2024): learning to reconstruct abnormalities for cardiac disease assessment.

Two generators of the same structure deform a normal echo video into an abnormal one (phi_A) and back (phi_B). One
training step (``training_step``; manual optimisation: generators and discriminators take turns):

1. ``generator_step`` (one optimiser for phi_A, phi_B and the light heads):
   - each generator sees both classes: it deforms the other class and reproduces its own class (identity L1, Eq. 1);
     the deformed videos are deformed back (cycle L1, Eq. 1);
   - the Consistency Deformation Codebook quantises ``F + P`` (``L_q``, straight-through); only the real clips of a
     generator's own class teach its codebook (the cycle passes on generated clips teach it nothing);
   - per-class memory banks of quantised clip descriptors give ``L_dis`` (Eq. 4: pull to the own class's centroid)
     and ``L_OT`` (Eq. 5, maximised), both summed over dimensions (and bank rows) as the equations write them, so
     the public weights apply. The released code computes its inter-domain OT between two banks of detached
     features, so that term has no gradient; here the OT runs between *this batch's* descriptors of one class (with
     gradient) and the *other* class's bank (a detached target), and as a hinge ``relu(margin - OT)``, so
     maximising it moves the encoders and stops at the margin instead of inflating the features;
   - the Consistency Deformation Discriminators (Eq. 2: eta^T on the whole clip, eta^S on frames, eta^T on the
     clip's spatial patches) judge the deformed and the cycled videos, from ``disc_start`` on;
   - the disease head (and the EF head on EchoNet/CAMUS, which predicts standardised EF) learn on *detached*
     generator features: the public evaluation's frozen-feature classifier, trained alongside instead of in a second
     run (``head_feature_grad`` > 0 lets them shape the encoders, as the public mPAP head does; off by default);
   - every ``grad_norm_every`` steps each term's gradient norm on the encoders is logged (``train/grad_norm/<term>``).
2. ``discriminator_step`` (their own optimiser, every ``disc_every`` steps from ``disc_start``): real clips of their
   class vs the detached deformed and cycled clips.
3. ``update_banks_and_codebooks``: the banks take this step's descriptors (gathered from all DDP ranks); dead
   codebook entries restart on recent features with fresh optimiser state.
Gradient clipping runs in ``on_before_optimizer_step``, after the fp16 scaler unscaled the gradients.

Disease score (``score``): ``reconstruction`` (default; parameter-free: how much more phi_B changes a clip than phi_A
does, ``|x - phi_B(x)| - |x - phi_A(x)|``; each generator reproduces its own target class, so abnormal clips change
under phi_B and normal ones under phi_A). It is the method's own score: it separates the classes only if the
generators learned class-specific deformations, so an untrained CardiacNet is its control. ``bank`` (distance to the
normal minus distance to the abnormal bank centroid) separates the classes even for untrained generators wherever
random features do (a nearest-centroid classifier); ``head`` is the public evaluation's frozen-feature classifier.
All three are logged at test. Abnormality maps: where a clip differs from its deformation to the normal class:
``difference`` = ``|x - phi_B(x)|``; ``contrast`` (default) = ``relu(|x - phi_B(x)| - |x - phi_A(x)|)``, the part of
that difference which reproducing the clip as abnormal does not share, so the generators' generic reconstruction
error (speckle, edges) cancels. Both are scored at test. Structure consistency (the paper's ASD Dice): chambers of a
clip vs chambers of its deformation to normal (``evaluation.structure_dice``), with another heart's deformation as an
unpaired control.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from datamodules.errors import ConfigError
from echo_modules.cardiacnet.evaluation import (
    TestRow,
    best_threshold,
    imaged_area,
    map_region_statistics,
    smooth_maps,
    structure_dice,
    test_summary,
)
from echo_modules.cardiacnet.losses import (
    GANLoss,
    Reduction,
    centroid_loss,
    clip_descriptor,
    discriminator_adversarial_loss,
    generator_adversarial_loss,
    ot_separation_loss,
    reconstruction_loss,
)
from echo_modules.cardiacnet.memory_bank import ClassMemoryBanks
from echo_modules.cardiacnet.networks import (
    ConsistencyDeformationDiscriminator,
    DeformationGenerator,
    DiscriminatorLogits,
    FeatureHead,
    GeneratorOutput,
)
from echo_modules.cardiacnet.optimal_transport import OTMethod, ot_cost
from echo_modules.cardiacnet.visualisation import abnormality_figure, save_video_maps, write_map_video
from echo_modules.common.metrics import ef_metrics
from echo_modules.common.module import (
    EchoModule,
    average_clip_predictions,
    gather_lists,
    save_test_summary,
    write_csv,
)
from echo_modules.common.plotting import log_figure

ScoreKind = Literal["head", "reconstruction", "bank"]
SCORE_KINDS: tuple[str, ...] = ("head", "reconstruction", "bank")
MapMode = Literal["difference", "contrast"]
MAP_MODES: tuple[str, ...] = ("difference", "contrast")
NORMAL, ABNORMAL = 0, 1
STRUCTURE_DICE_KINDS: tuple[str, ...] = ("abnormal", "normal", "unpaired")
GENERATORS = ("normal_to_abnormal", "abnormal_to_normal")  # phi_A, phi_B


@dataclass
class TrainingPairs:
    """A training batch as the algorithm sees it: ``size`` normal clips followed by ``size`` abnormal ones."""

    videos: Tensor  # (2 size, C, T, H, W)
    labels: Tensor  # (2 size,) NORMAL then ABNORMAL
    ef: Tensor | None  # (2 size,) EF in percent where the data has it
    size: int

    @classmethod
    def from_batch(cls, batch: dict[str, Any]) -> TrainingPairs:
        if "normal_video" not in batch:
            raise ConfigError(
                "CardiacNet trains on normal/abnormal pairs: set data.init_args.paired: true (and, on EchoNet, "
                "label_from_ef_below: 50)"
            )
        normal, abnormal = batch["normal_video"], batch["abnormal_video"]
        size = len(normal)
        labels = torch.cat([normal.new_full((size,), NORMAL), normal.new_full((size,), ABNORMAL)]).long()
        ef = torch.cat([batch["normal_ef"], batch["abnormal_ef"]]) if "normal_ef" in batch else None
        return cls(videos=torch.cat([normal, abnormal]), labels=labels, ef=ef, size=size)


@dataclass
class GeneratorPasses:
    """What the generator step hands to the discriminator step, the bank update and the logs."""

    outputs: dict[str, GeneratorOutput]  # "to_abnormal" (phi_A) and "to_normal" (phi_B) on the real clips
    fakes: dict[str, Tensor]  # class -> deformed + cycled clips of that class (the discriminators' fakes)
    descriptors: dict[str, Tensor]  # generator -> (2 size, dim) bank rows of this step
    raw: dict[str, Tensor]  # unweighted loss terms (detached)
    generator_loss: Tensor  # weighted sum of the generator terms (detached)
    ot_cost: Tensor  # inter-class OT cost of this batch against the banks (detached diagnostic)
    gradient_norms: dict[str, Tensor]  # term -> encoder gradient norm (on logging steps)
    adversarial: bool  # whether the CDD terms were on


def reset_optimizer_rows(optimizer: Any, parameter: Tensor, rows: Tensor) -> None:
    """Zero the optimiser state (e.g. Adam's moments) of ``rows`` of ``parameter``: a restarted codebook entry starts
    fresh instead of moving by the momentum its dead predecessor gathered."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch one
    for value in optimizer.state.get(parameter, {}).values():
        if torch.is_tensor(value) and value.shape == parameter.shape:
            value[rows] = 0


@dataclass(order=True)
class PredictionRow:
    """One predicted video (``predictions.csv`` row; ordered by file name)."""

    filename: str
    score: float
    probability: float
    label: int  # -1 = unknown
    ef_pred: float
    ef_true: float
    map_file: str  # ";"-joined paths of the video's saved maps

    CSV_HEADER = ("FileName", "score", "probability", "predicted_label", "label", "EF_pred", "EF_true", "map_file")

    def csv_row(self) -> list[Any]:
        number = lambda value: "" if math.isnan(value) else f"{value:.4f}"  # noqa: E731
        return [self.filename, f"{self.score:.5f}", f"{self.probability:.5f}", int(self.probability > 0.5),
                "" if self.label < 0 else self.label, number(self.ef_pred), number(self.ef_true),
                self.map_file]  # fmt: skip


@dataclass
class ClipEvaluation:
    """Per-clip outputs of :meth:`CardiacNet.evaluate_clips`."""

    scores: dict[str, Tensor]  # score kind -> (N,) higher = more abnormal
    ef: Tensor | None  # (N,) EF in percent when the EF head is on
    maps: dict[str, Tensor]  # map mode -> (N, T, H, W) abnormality maps
    to_normal: Tensor  # (N, C, T, H, W) phi_B(x), the clip deformed to the normal class


class CardiacNet(EchoModule):
    """Bidirectional normal <-> abnormal video deformation with codebooks, memory banks, OT and discriminators.

    Training batches are normal/abnormal pairs (a DataModule with ``paired: true``: ``normal_video``,
    ``abnormal_video``, ``normal_label``...); evaluation batches are labelled videos (``video`` with ``clip_owner``,
    ``label``, and where known ``ef``, ``abnormal_region``). See the module docstring for the algorithm.
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: list[int] = [64, 128, 128, 256, 256],  # noqa: B006 (LightningCLI reads the default)
        latent_dim: int = 256,
        num_codes: int = 2048,
        commitment: float = 0.25,
        code_restart_threshold: float = 1.0,
        own_class_codebooks: bool = True,
        position_grid: tuple[int, int, int] = (16, 7, 7),
        positional_encoding: bool = True,
        quantise: bool = True,
        disc_width: int = 64,
        disc_layers: int = 3,
        disc_frames: int = 4,
        disc_patch: int = 16,
        gan_loss: GANLoss = "hinge",
        identity_weight: float = 2.5,
        cycle_weight: float = 100.0,
        quantisation_weight: float = 1.0,
        global_adversarial_weight: float = 1.0,
        local_adversarial_weight: float = 1.0,
        patch_adversarial_weight: float = 1.0,
        centroid_weight: float = 0.01,
        ot_weight: float = 0.001,
        bank_loss_reduction: Reduction = "sum",
        ot_method: OTMethod = "sorted",
        ot_margin: float | None = 1.0,
        ot_reg: float = 0.05,
        ot_relative: bool = True,
        bank_size: int = 256,
        bank_grid: tuple[int, int, int] | None = (1, 1, 1),
        bank_min_fill: int = 16,
        mask_ratio: float = 0.0,
        mask_patch: int = 8,
        disc_start: int = 0,
        disc_every: int = 1,
        score: ScoreKind = "reconstruction",
        predict_ef: bool = False,
        head_lr: float | None = None,
        head_feature_grad: float = 0.0,
        disease_pooling: list[str] = ["mean", "max"],  # noqa: B006
        ef_pooling: list[str] = ["mean", "time_max", "time_min"],  # noqa: B006
        map_mode: MapMode = "contrast",
        map_sigma: float = 1.0,
        gradient_clip: float | None = None,
        grad_norm_every: int = 50,
        channels_last: bool = True,
        generator_optimizer: OptimizerCallable = torch.optim.Adam,
        discriminator_optimizer: OptimizerCallable = torch.optim.Adam,
        predictions_csv: str | None = None,
        maps_dir: str | None = None,
        map_format: Literal["avi", "npy", "both", "none"] = "avi",
        num_logged_maps: int = 4,
    ) -> None:
        """Args:
        in_channels: video channels (1 for grey; the data config's ``channels``).
        widths / latent_dim: generator channel widths per resolution level (height and width halve at each extra
            level) and the codebook dimension (public code: [64, 128, 128, 256, 256] and 256).
        num_codes / commitment / code_restart_threshold: codebook size, lambda of L_q, the running usage below which
            an entry is restarted.
        own_class_codebooks: a generator's codebook learns (L_q codebook term, usage, restarts) only from clips of
            its own output class (phi_A: abnormal, phi_B: normal), so deforming a clip maps its tokens onto the
            vocabulary of the target class; False: from every clip, as the public code does.
        position_grid: token grid (frames, height, width) of the learnable positional encoding: clip_length and
            frame_size / 2^(len(widths) - 1) of the training clips (other grids interpolate it).
        positional_encoding / quantise: the CDC's positional encoding and its codebook (False: the ablations of the
            poster's Tables 4-5; without the codebook features pass unquantised and L_q is zero).
        disc_width / disc_layers / disc_frames: PatchGAN width and depth; frames per clip the local one judges.
        disc_patch: side (pixels) of the spatial patches the temporal discriminator also judges, each followed over
            the clip (Eq. 2's third term); 0 = off.
        gan_loss: ``vanilla`` (Eq. 2's log loss) or ``hinge`` (the public code).
        *_weight: loss weights (defaults: the public code's; identity 2.5, cycle 100, L_dis 0.01, L_OT 0.001).
            Adversarial: ``global`` (eta^T on the clip), ``local`` (eta^S on frames), ``patch`` (eta^T on patches);
            all zero switches the CDD off (Table 4).
        bank_loss_reduction: ``sum``: L_dis and L_OT as Eqs. 4-5 write them (summed over dimensions, and L_OT over the
            bank's rows), the form the public weights were set for; ``mean``: per dimension (and pair).
        ot_method: ``sorted`` (exact per-dimension Eq. 5) or POT's ``emd``/``sinkhorn``/``sliced`` on whole vectors.
        ot_margin: L_OT is the hinge ``relu(margin - OT)`` on the mean OT cost per dimension and pair, so maximising
            the separation stops at the margin; None = the unbounded ``-OT`` (it runs away: features inflate).
        ot_relative: the hinge is on ``log(inter-class / intra-class OT cost)`` (``ot_separation_loss`` with the
            own class's bank): scale-free, met only by separating the classes; False: on the inter-class cost alone.
        bank_size / bank_grid / bank_min_fill: rows per class bank; the pooled token grid a clip descriptor keeps
            (``(1, 1, 1)``: one ``latent_dim`` vector per clip; None: the whole token map of ``position_grid``, as the
            public code's banks hold); rows a bank needs before L_dis and L_OT apply.
        mask_ratio / mask_patch: MAE-style masking of the generators' inputs in training (public code: 0.7 of 8x8
            patches); targets stay unmasked, so reproducing the own class becomes inpainting.
        disc_start / disc_every: training batch from which adversarial losses apply; step discriminators every k-th.
        score: which disease score drives accuracy, predictions and ``val/auroc`` (all are logged at test). Default
            ``reconstruction``: it is the method's own score (parameter-free, nothing trained on labels at scoring
            time), so it only separates the classes if the generators learned the deformations; ``bank`` also
            separates with untrained generators (nearest class centroid of random features); ``head`` is the
            public evaluation's protocol (a classifier on frozen features), a measure of the features, not of the
            reconstructions.
        predict_ef: train an EF head too (EchoNet / CAMUS) and report EF MAE.
        head_lr: learning rate of the heads (default: the generator optimiser's).
        head_feature_grad: how much of the heads' loss gradient reaches the generators' encoders: 0 trains the heads
            on frozen (detached) features, the public evaluation's protocol; > 0 makes them auxiliary heads that also
            shape the encoders, as the public training's auxiliary mPAP head (weight 0.01) does.
        disease_pooling / ef_pooling: how the heads pool the features (``FeatureHead``): global mean (the public
            head) plus global max for the disease head, so a lesion of a few tokens is not averaged away; plus each
            location's extremes over the clip for the EF head, which is about how far the walls move.
        map_mode / map_sigma: abnormality map definition (module docstring) and Gaussian smoothing in pixels.
        gradient_clip: clip generator and discriminator gradient norms to this value (on unscaled gradients under
            fp16).
        grad_norm_every: every this many training steps, log each loss term's gradient norm on the encoders
            (``train/grad_norm/<term>``) and its share of their sum (``train/grad_share/<term>``); 0 = off.
        channels_last: run the 3D/2D convolutions in channels-last memory formats (several times faster on CPU).
        generator_optimizer / discriminator_optimizer: LightningCLI optimiser callables (public code: Adam, lr
            2.25e-5, betas (0.5, 0.99)).
        predictions_csv / maps_dir / map_format: where ``predict`` writes its CSV and per-video maps (default: the
            run's log dir); AVI (input | deformed to normal | map overlay), ``npy`` float16 maps, both or none.
        num_logged_maps: abnormality-map examples logged at test (figure PNG, and videos to W&B).
        """
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        if score not in SCORE_KINDS:
            raise ConfigError(f"model.score must be one of {SCORE_KINDS}, got {score!r}")
        if disc_every < 1:
            raise ConfigError(f"model.disc_every must be >= 1, got {disc_every}")
        generator = dict(
            in_channels=in_channels, widths=widths, latent_dim=latent_dim, num_codes=num_codes,
            commitment=commitment, restart_threshold=code_restart_threshold, position_grid=tuple(position_grid),
            channels_last=channels_last, positional_encoding=positional_encoding, quantise=quantise,
        )  # fmt: skip
        self.normal_to_abnormal = DeformationGenerator(**generator)  # phi_A
        self.abnormal_to_normal = DeformationGenerator(**generator)  # phi_B
        discriminator = dict(
            in_channels=in_channels, width=disc_width, num_layers=disc_layers, frames=disc_frames,
            channels_last=channels_last, patch=disc_patch,
        )  # fmt: skip
        self.discriminators = nn.ModuleDict(
            {"normal": ConsistencyDeformationDiscriminator(**discriminator),
             "abnormal": ConsistencyDeformationDiscriminator(**discriminator)}
        )  # fmt: skip
        bank_grid = tuple(bank_grid) if bank_grid is not None else tuple(position_grid)  # None: token maps
        descriptor_dim = latent_dim * math.prod(bank_grid)
        self.banks = nn.ModuleDict({name: ClassMemoryBanks(2, bank_size, descriptor_dim) for name in GENERATORS})
        self.disease_head = FeatureHead(2 * latent_dim, pooling=disease_pooling)
        self.ef_head = FeatureHead(2 * latent_dim, pooling=ef_pooling) if predict_ef else None  # standardised EF
        self.bank_grid = bank_grid
        self.generator_optimizer = generator_optimizer  # the callables (hparams hold their configs under the CLI)
        self.discriminator_optimizer = discriminator_optimizer
        self.register_buffer("iterations", torch.zeros((), dtype=torch.long))  # training batches seen
        self.register_buffer("decision_threshold", torch.zeros(()))  # on the chosen score, calibrated on validation
        self.register_buffer("train_ef_mean", torch.tensor(math.nan))
        self.register_buffer("train_ef_std", torch.tensor(math.nan))
        self.val_auroc = BinaryAUROC()
        self.val_accuracy = BinaryAccuracy()
        self.test_auroc = nn.ModuleDict({kind: BinaryAUROC() for kind in SCORE_KINDS})
        self.test_accuracy = BinaryAccuracy()
        self.test_map = nn.ModuleDict(
            {f"{mode}_{name}": MeanMetric() for mode in MAP_MODES for name in ("region_mass", "control_mass", "dice")}
        )
        # the paper's ASD Dice: chambers of a clip vs of its deformation to normal (abnormal and normal clips), and
        # vs another video's deformation (what unrelated hearts would score)
        self.test_structure = nn.ModuleDict({name: MeanMetric() for name in STRUCTURE_DICE_KINDS})
        self.val_ef = ef_metrics("val/ef_") if predict_ef else None
        self.test_ef = ef_metrics("test/ef_") if predict_ef else None
        self._collected: list[Any] = []  # validation (score, label) pairs, TestRow or PredictionRow
        self._examples: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ set-up

    def setup(self, stage: str) -> None:
        """Under DDP each backward reaches only some parameters (generators or discriminators, toggled per step), so
        DDP must look for unused parameters: a one-line config error, instead of a failure mid-epoch, when it does
        not (``trainer.strategy: ddp_find_unused_parameters_true``, Lightning's registered name for it, or a
        ``DDPStrategy`` with ``find_unused_parameters: true``). The setting is read, never changed."""
        from lightning.pytorch.strategies import DDPStrategy

        strategy = self.trainer.strategy if self._trainer is not None else None
        if stage == "fit" and isinstance(strategy, DDPStrategy):
            if not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False):
                raise ConfigError(
                    "CardiacNet under DDP needs find_unused_parameters (generator and discriminator steps alternate): "
                    "set trainer.strategy: ddp_find_unused_parameters_true"
                )

    def on_fit_start(self) -> None:
        if self.trainer.global_step != 0:  # resumed: the buffers come from the checkpoint
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        mean = getattr(datamodule, "train_ef_mean", math.nan)
        std = getattr(datamodule, "train_ef_std", math.nan)
        if math.isfinite(mean):
            self.train_ef_mean.fill_(mean)
        if math.isfinite(std) and std > 0:
            self.train_ef_std.fill_(std)

    def ef_from_head(self, features: Tensor) -> Tensor:
        """EF in percent: the head predicts standardised EF (``(EF - mean) / std`` of the training split), so its
        small initial outputs start at the mean and one unit of output is one standard deviation; predicting percent
        directly makes the last layer's weights crawl towards tens of points at the generators' learning rate."""
        mean, std = self._ef_scale()
        return mean + std * self.ef_head(features).float()

    def _ef_scale(self) -> tuple[Tensor, Tensor]:
        """Training-split EF mean and standard deviation (50 and 10 before a datamodule has told them)."""
        mean = self.train_ef_mean if torch.isfinite(self.train_ef_mean) else self.train_ef_mean.new_tensor(50.0)
        std = self.train_ef_std if torch.isfinite(self.train_ef_std) else self.train_ef_std.new_tensor(10.0)
        return mean, std

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        heads = [self.disease_head] + ([self.ef_head] if self.ef_head is not None else [])
        head_group: dict[str, Any] = {"params": [p for head in heads for p in head.parameters()]}
        if self.hparams.head_lr is not None:
            head_group["lr"] = self.hparams.head_lr
        generators = [p for name in GENERATORS for p in getattr(self, name).parameters()]
        generator_optimizer = self.generator_optimizer([{"params": generators}, head_group])
        discriminator_optimizer = self.discriminator_optimizer(self.discriminators.parameters())
        return [generator_optimizer, discriminator_optimizer]

    # ------------------------------------------------------------------ pieces

    def _generator(self, name: str) -> DeformationGenerator:
        return getattr(self, name)

    def head_features(self, video: Tensor) -> Tensor:
        """``F + P`` of both generators' encoders, concatenated on channels: the heads' input."""
        return torch.cat([self._generator(name).extract(video) for name in GENERATORS], 1).float()

    def _to_heads(self, features: Tensor) -> Tensor:
        """The heads see ``features`` unchanged; only ``head_feature_grad`` of their gradient flows back."""
        scale = self.hparams.head_feature_grad
        if scale == 0:
            return features.detach()
        return features.detach() + scale * (features - features.detach())

    def _mask_inputs(self, video: Tensor) -> Tensor:
        """MAE-style masking: each ``mask_patch`` square of each frame is zeroed (the mean intensity) with
        probability ``mask_ratio``."""
        batch, _, frames, height, width = video.shape
        patch = self.hparams.mask_patch
        keep = torch.rand(batch, 1, frames, -(-height // patch), -(-width // patch), device=video.device)
        keep = (keep >= self.hparams.mask_ratio).to(video.dtype)
        keep = keep.repeat_interleave(patch, -2).repeat_interleave(patch, -1)[..., :height, :width]
        return video * keep

    def _weighted_adversarial(self, logits: DiscriminatorLogits, loss: Callable[[Tensor], Tensor]) -> Tensor:
        """Eq. 2's three terms, weighted: global (eta^T on the clip), local (eta^S on frames, eta^T on patches)."""
        hp = self.hparams
        total = hp.global_adversarial_weight * loss(logits.video) + hp.local_adversarial_weight * loss(logits.frames)
        if logits.patches is not None:
            total = total + hp.patch_adversarial_weight * loss(logits.patches)
        return total

    def _adversarial_generator_loss(self, discriminator: ConsistencyDeformationDiscriminator, fakes: Tensor) -> Tensor:
        """The generators' side of Eq. 2 for generated clips ``fakes`` judged by one class's CDD."""
        logits = discriminator(fakes, discriminator.select_frames(fakes))
        return self._weighted_adversarial(logits, lambda fake: generator_adversarial_loss(fake, self.hparams.gan_loss))

    def _adversarial_discriminator_loss(
        self, discriminator: ConsistencyDeformationDiscriminator, real: Tensor, fakes: Tensor
    ) -> Tensor:
        """The discriminator's side of Eq. 2: real clips of its class against (detached) generated ones (the real
        clips are repeated to match the number of generated ones, so each side weighs the same)."""
        frames = discriminator.select_frames(real)
        real_logits = discriminator(real, frames)
        fake_logits = discriminator(fakes.detach(), frames)
        kind = self.hparams.gan_loss
        pairs = {"video": (real_logits.video, fake_logits.video), "frames": (real_logits.frames, fake_logits.frames)}
        if real_logits.patches is not None:
            pairs["patches"] = (real_logits.patches, fake_logits.patches)
        losses = {name: discriminator_adversarial_loss(r, f, kind) for name, (r, f) in pairs.items()}
        hp = self.hparams
        total = hp.global_adversarial_weight * losses["video"] + hp.local_adversarial_weight * losses["frames"]
        if "patches" in losses:
            total = total + hp.patch_adversarial_weight * losses["patches"]
        return total

    def _bank_losses(self, descriptors: dict[str, Tensor], labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """L_dis (Eq. 4), the trainable, bounded L_OT (Eq. 5) over both generators and both classes (zero until the
        banks hold ``bank_min_fill`` rows), and the inter-class OT cost itself (a diagnostic: should rise)."""
        hp = self.hparams
        zero = descriptors[GENERATORS[0]].new_zeros(())
        centroid, separation, cost, terms = zero, zero, zero, 0
        for name, rows in descriptors.items():
            banks = self.banks[name]
            if not banks.ready(hp.bank_min_fill):
                continue
            for label in (NORMAL, ABNORMAL):
                own = rows[labels == label]
                if not len(own):
                    continue
                other = banks[1 - label].filled
                centroid = centroid + centroid_loss(own, banks[label].centroid(), hp.bank_loss_reduction)
                separation = separation + ot_separation_loss(
                    own, other, hp.ot_method, hp.ot_margin, hp.ot_reg, hp.bank_loss_reduction,
                    own_class_bank=banks[label].filled if hp.get("ot_relative", False) else None,
                )
                with torch.no_grad():
                    cost = cost + ot_cost(own, other, hp.ot_method, hp.ot_reg)
                terms += 1
        return centroid / max(terms, 1), separation / max(terms, 1), cost / max(terms, 1)

    def _head_loss(self, features: Tensor, labels: Tensor, ef: Tensor | None) -> tuple[Tensor, Tensor | None]:
        disease = F.binary_cross_entropy_with_logits(self.disease_head(features), labels.float())
        if self.ef_head is None or ef is None:
            return disease, None
        known = torch.isfinite(ef)
        if not known.any():
            return disease, None
        ef_loss = F.l1_loss(self.ef_from_head(features[known]), ef[known].float())
        return disease, ef_loss

    def _uses_discriminators(self) -> bool:
        hp = self.hparams
        weights = [hp.global_adversarial_weight, hp.local_adversarial_weight]
        if hp.disc_patch:
            weights.append(hp.patch_adversarial_weight)
        return int(self.iterations) >= hp.disc_start and any(w > 0 for w in weights)

    # ------------------------------------------------------------------ training (the algorithm box)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """One step of the algorithm: 1. generators, 2. discriminators, 3. banks and codebook upkeep."""
        pairs = TrainingPairs.from_batch(batch)
        generator_optimizer, discriminator_optimizer = self.optimizers()
        passes = self.generator_step(pairs, generator_optimizer)
        discriminator_loss = None
        if passes.adversarial and int(self.iterations) % self.hparams.disc_every == 0:
            discriminator_loss = self.discriminator_step(pairs, passes, discriminator_optimizer)
        restarted = self.update_banks_and_codebooks(passes, pairs.labels, generator_optimizer)
        self.iterations += 1
        self._log_training(passes, discriminator_loss, restarted, len(pairs.labels))

    def generator_step(self, pairs: TrainingPairs, optimizer: Any) -> GeneratorPasses:
        """1. Both generators deform the other class and reproduce their own (identity, Eq. 1), the deformed clips
        are deformed back (cycle, Eq. 1); CDC (L_q), banks (L_dis, L_OT) and CDD (Eq. 2) add their terms; the heads
        learn on detached features. One optimiser step on the weighted sum."""
        hp = self.hparams
        size, labels, videos = pairs.size, pairs.labels, pairs.videos
        normal, abnormal = videos[:size], videos[size:]
        self.toggle_optimizer(optimizer)
        inputs = self._mask_inputs(videos) if hp.mask_ratio > 0 else videos
        own = (lambda label: labels == label) if hp.own_class_codebooks else (lambda label: None)
        to_abnormal = self.normal_to_abnormal(inputs, own(ABNORMAL))  # phi_A: deforms normal clips, reproduces abnormal
        to_normal = self.abnormal_to_normal(inputs, own(NORMAL))  # phi_B: deforms abnormal clips, reproduces normal
        fake_abnormal, fake_normal = to_abnormal.video[:size], to_normal.video[size:]
        # the cycle passes run on generated clips: they teach no codebook (no L_q codebook term, no usage counts)
        cycled_normal = self.abnormal_to_normal(fake_abnormal, learn=False)  # phi_B(phi_A(X)) ~ X
        cycled_abnormal = self.normal_to_abnormal(fake_normal, learn=False)  # phi_A(phi_B(Y)) ~ Y
        raw: dict[str, Tensor] = {
            "identity": reconstruction_loss(to_abnormal.video[size:], abnormal)
            + reconstruction_loss(to_normal.video[:size], normal),
            "cycle": reconstruction_loss(cycled_normal.video, normal)
            + reconstruction_loss(cycled_abnormal.video, abnormal),
            "quantisation": sum(o.quantisation.loss for o in (to_abnormal, to_normal, cycled_normal, cycled_abnormal)),
        }
        descriptors = {
            name: clip_descriptor(output.quantisation.quantised, self.bank_grid)
            for name, output in zip(GENERATORS, (to_abnormal, to_normal))
        }
        raw["centroid"], raw["ot"], ot_value = self._bank_losses(descriptors, labels)
        fakes = {
            "abnormal": torch.cat([fake_abnormal, cycled_abnormal.video]),
            "normal": torch.cat([fake_normal, cycled_normal.video]),
        }
        adversarial = self._uses_discriminators()
        raw["adversarial"] = videos.new_zeros((), dtype=torch.float32)
        if adversarial:
            raw["adversarial"] = sum(
                self._adversarial_generator_loss(self.discriminators[name], fakes[name]) for name in fakes
            )
        if hp.mask_ratio > 0:  # the heads judge unmasked clips, as at evaluation
            with torch.set_grad_enabled(hp.head_feature_grad > 0):
                features = self.head_features(videos)
        else:
            features = torch.cat([to_abnormal.features, to_normal.features], 1).float()
        raw["disease"], ef_loss = self._head_loss(self._to_heads(features), labels, pairs.ef)
        weights = {
            "identity": hp.identity_weight, "cycle": hp.cycle_weight, "quantisation": hp.quantisation_weight,
            "centroid": hp.centroid_weight, "ot": hp.ot_weight, "adversarial": 1.0, "disease": 1.0,
        }  # fmt: skip
        terms = {name: weights[name] * value for name, value in raw.items()}
        if ef_loss is not None:  # the EF L1 (logged in percent) enters the total in standard deviations
            raw["ef"], terms["ef"] = ef_loss, ef_loss / self._ef_scale()[1]
        gradient_norms = self._gradient_norms(terms) if self._log_gradient_norms_now() else {}
        total = sum(terms.values())
        optimizer.zero_grad()
        self.manual_backward(total)
        optimizer.step()  # clipping (after unscaling under fp16) runs in on_before_optimizer_step
        self.untoggle_optimizer(optimizer)
        generator_terms = [name for name in terms if name not in ("disease", "ef")]
        return GeneratorPasses(
            outputs={"to_abnormal": to_abnormal, "to_normal": to_normal},
            fakes=fakes,
            descriptors=descriptors,
            raw={name: value.detach() for name, value in raw.items()},
            generator_loss=sum(terms[name] for name in generator_terms).detach(),
            ot_cost=ot_value.detach(),
            gradient_norms=gradient_norms,
            adversarial=adversarial,
        )

    def discriminator_step(self, pairs: TrainingPairs, passes: GeneratorPasses, optimizer: Any) -> Tensor:
        """2. Each class's CDD: its real clips against the detached deformed and cycled clips of its class."""
        size = pairs.size
        real = {"normal": pairs.videos[:size], "abnormal": pairs.videos[size:]}
        self.toggle_optimizer(optimizer)
        loss = sum(
            self._adversarial_discriminator_loss(self.discriminators[name], real[name], passes.fakes[name])
            for name in real
        )
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.untoggle_optimizer(optimizer)
        return loss.detach()

    def update_banks_and_codebooks(self, passes: GeneratorPasses, labels: Tensor, generator_optimizer: Any) -> int:
        """3. The banks take this step's descriptors (gathered from all ranks); dead codebook entries restart on
        recent features, with their optimiser state (Adam moments) reset so they start fresh."""
        for name, rows in passes.descriptors.items():
            self.banks[name].enqueue(rows.detach(), labels)
        restarted = 0
        for name in GENERATORS:
            quantiser = self._generator(name).codebook.quantiser
            rows = quantiser.restart_dead_codes()
            if len(rows):
                reset_optimizer_rows(generator_optimizer, quantiser.codebook, rows)
                restarted += len(rows)
        return restarted

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradient clipping. Lightning calls this inside ``optimizer.step()`` after the fp16 scaler has unscaled the
        gradients, so the threshold applies to true gradient norms under every precision."""
        if self.hparams.gradient_clip:
            self.clip_gradients(optimizer, self.hparams.gradient_clip, gradient_clip_algorithm="norm")

    def _log_gradient_norms_now(self) -> bool:
        every = self.hparams.grad_norm_every  # on the k-th, 2k-th... batch: aligned with log_every_n_steps multiples
        return bool(every) and (int(self.iterations) + 1) % every == 0

    def _gradient_norms(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each weighted term's gradient norm on the generators' encoders (and their share of the sum): which losses
        drive the features. One extra backward per term, every ``grad_norm_every`` steps."""
        parameters = [p for name in GENERATORS for p in self._generator(name).encoder.parameters() if p.requires_grad]
        norms = {}
        for name, term in terms.items():
            if not term.requires_grad:
                norms[name] = term.new_zeros(())
                continue
            grads = torch.autograd.grad(term, parameters, retain_graph=True, allow_unused=True)
            squares = [g.float().square().sum() for g in grads if g is not None]
            norms[name] = torch.stack(squares).sum().sqrt() if squares else term.new_zeros(())
        return norms

    def _log_training(
        self, passes: GeneratorPasses, discriminator_loss: Tensor | None, restarted: int, batch_size: int
    ) -> None:
        raw = passes.raw
        logs = {
            "train/generator_loss": passes.generator_loss,
            "train/identity_l1": raw["identity"],
            "train/cycle_l1": raw["cycle"],
            "train/quantisation": raw["quantisation"],
            "train/adversarial": raw["adversarial"],
            "train/centroid": raw["centroid"],
            "train/ot_separation": raw["ot"],
            "train/ot_cost": passes.ot_cost,
            "train/disease_bce": raw["disease"],
            "train/codes_restarted": float(restarted),
        }
        for name, output in passes.outputs.items():
            quantisation = output.quantisation
            logs[f"train/perplexity_{name}"] = quantisation.perplexity.detach()
            logs[f"train/used_codes_{name}"] = quantisation.used.float()
        logs["train/perplexity"] = (logs["train/perplexity_to_abnormal"] + logs["train/perplexity_to_normal"]) / 2
        if passes.gradient_norms:
            total = torch.stack(list(passes.gradient_norms.values())).sum().clamp_min(1e-12)
            for name, norm in passes.gradient_norms.items():
                logs[f"train/grad_norm/{name}"] = norm
                logs[f"train/grad_share/{name}"] = norm / total
        if discriminator_loss is not None:
            logs["train/discriminator_loss"] = discriminator_loss
        if "ef" in raw:
            logs["train/ef_l1"] = raw["ef"]
        self.log_dict(logs, batch_size=batch_size)
        self.log("train/loss", passes.generator_loss, prog_bar=True, batch_size=batch_size)

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate_clips(self, video: Tensor) -> ClipEvaluation:
        """Scores, EF, abnormality maps and the deformation to normal for clips ``(N, C, T, H, W)``."""
        to_abnormal = self.normal_to_abnormal(video)
        to_normal = self.abnormal_to_normal(video)
        error_to_normal = (video - to_normal.video).float().abs().mean(1)  # (N, T, H, W)
        error_to_abnormal = (video - to_abnormal.video).float().abs().mean(1)
        scores = {"reconstruction": error_to_normal.mean((1, 2, 3)) - error_to_abnormal.mean((1, 2, 3))}
        bank_score = video.new_zeros(len(video), dtype=torch.float32)
        for name, output in zip(GENERATORS, (to_abnormal, to_normal)):
            banks = self.banks[name]
            if banks.ready(1):
                rows = clip_descriptor(output.quantisation.quantised, self.bank_grid)
                to_normal_bank = (rows - banks[NORMAL].centroid()[None]).square().mean(1)
                to_abnormal_bank = (rows - banks[ABNORMAL].centroid()[None]).square().mean(1)
                bank_score = bank_score + to_normal_bank - to_abnormal_bank
        scores["bank"] = bank_score
        features = torch.cat([to_abnormal.features, to_normal.features], 1).float()
        scores["head"] = self.disease_head(features).float()
        ef = self.ef_from_head(features) if self.ef_head is not None else None
        maps = {"difference": error_to_normal, "contrast": (error_to_normal - error_to_abnormal).clamp_min(0)}
        return ClipEvaluation(scores=scores, ef=ef, maps=maps, to_normal=to_normal.video.float())

    def forward(self, video: Tensor) -> Tensor:
        """Disease score (higher = more abnormal) of each clip ``(N, C, T, H, W)``, by the configured ``score``."""
        return self.evaluate_clips(video).scores[self.hparams.score]

    def _video_outputs(self, batch: dict[str, Any]) -> tuple[ClipEvaluation, dict[str, Tensor], Tensor | None]:
        """Clip outputs plus per-video scores (clips averaged) and per-video EF."""
        clips = self.evaluate_clips(batch["video"])
        owner, videos = batch["clip_owner"], len(batch["label"])
        scores = {kind: average_clip_predictions(value, owner, videos) for kind, value in clips.scores.items()}
        ef = average_clip_predictions(clips.ef, owner, videos) if clips.ef is not None else None
        return clips, scores, ef

    @staticmethod
    def ranking_value(score: Tensor) -> Tensor:
        """``score`` mapped monotonically into (0, 1) for torchmetrics' AUROC, which applies a sigmoid to a batch
        only when some value lies outside [0, 1]: without this, batches would be transformed inconsistently. The
        arctangent keeps large scores distinct where a float32 sigmoid would saturate at 1."""
        return 0.5 + torch.atan(score.double()).float() / math.pi

    def probability(self, score: Tensor) -> Tensor:
        """P(abnormal) for the chosen score: a sigmoid around the validation-calibrated threshold."""
        return torch.sigmoid(score - self.decision_threshold)

    def on_validation_epoch_start(self) -> None:
        self._collected = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, scores, ef = self._video_outputs(batch)
        labels = batch["label"]
        known = labels >= 0
        score = scores[self.hparams.score]
        if known.any():
            self.val_auroc.update(self.ranking_value(score[known]), labels[known])
            self.val_accuracy.update(self.probability(score[known]), labels[known])
            self.log("val/auroc", self.val_auroc, prog_bar=True, batch_size=int(known.sum()))
            self.log("val/accuracy", self.val_accuracy, batch_size=int(known.sum()))
            self._collected += zip(score[known].tolist(), labels[known].tolist())
        if ef is not None and self.val_ef is not None:
            finite = torch.isfinite(batch["ef"])
            if finite.any():
                self.val_ef.update(ef[finite], batch["ef"][finite])
                self.log_dict(self.val_ef, batch_size=int(finite.sum()))

    def on_validation_epoch_end(self) -> None:
        """Calibrate the decision threshold on the validation scores (best balanced accuracy), identically on all
        ranks; sanity-check runs leave it alone."""
        rows = gather_lists(self._collected)
        self._collected = []
        if self.trainer.sanity_checking or not rows:
            return
        threshold = best_threshold(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]))
        if threshold is not None:
            self.decision_threshold.fill_(threshold)

    def on_test_epoch_start(self) -> None:
        self._collected = []
        self._examples = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        clips, scores, ef = self._video_outputs(batch)
        labels, videos = batch["label"], len(batch["label"])
        known = labels >= 0
        if known.any():
            for kind, metric in self.test_auroc.items():
                metric.update(self.ranking_value(scores[kind][known]), labels[known])
                self.log(f"test/auroc_{kind}", metric, batch_size=int(known.sum()))
            chosen = self.probability(scores[self.hparams.score][known])
            self.test_accuracy.update(chosen, labels[known])
            self.log("test/auroc", self.test_auroc[self.hparams.score], batch_size=int(known.sum()))
            self.log("test/accuracy", self.test_accuracy, batch_size=int(known.sum()))
        if ef is not None and self.test_ef is not None:
            finite = torch.isfinite(batch["ef"])
            if finite.any():
                self.test_ef.update(ef[finite], batch["ef"][finite])
                self.log_dict(self.test_ef, batch_size=int(finite.sum()))
        imaged = imaged_area(batch["video"], batch["clip_owner"], videos)
        regions = batch.get("abnormal_region")
        has_region = batch.get("has_abnormal_region", torch.zeros(videos, dtype=torch.bool))
        video_maps: dict[str, Tensor] = {}
        region_stats: list[dict[str, float]] = [{} for _ in range(videos)]
        for mode, maps in clips.maps.items():  # both map definitions, so a run reports how each localises
            video_maps[mode] = smooth_maps(
                average_clip_predictions(maps.mean(1), batch["clip_owner"], videos), self.hparams.map_sigma
            )  # (V, H, W)
            for index in range(videos):
                if regions is None or not bool(has_region[index]) or not bool(regions[index].any()):
                    continue
                region = regions[index].to(video_maps[mode].device)
                stats = map_region_statistics(video_maps[mode][index], region, imaged[index])
                if stats is None:
                    continue
                for name, value in stats.items():
                    region_stats[index][f"{mode}_{name}"] = value
                    self.test_map[f"{mode}_{name}"].update(torch.tensor(value, device=self.device))
        structure = self._structure_dice(batch, clips, labels)
        score = scores[self.hparams.score]
        mode = self.hparams.map_mode
        for index in range(videos):
            stats = region_stats[index]
            self._collected.append(
                TestRow(
                    filename=batch["filename"][index],
                    score=float(score[index]),
                    label=int(labels[index]),
                    ef_pred=float(ef[index]) if ef is not None else math.nan,
                    ef_true=float(batch["ef"][index]),
                    map_region_mass=stats.get(f"{mode}_region_mass", math.nan),
                    map_control_mass=stats.get(f"{mode}_control_mass", math.nan),
                    map_dice=stats.get(f"{mode}_dice", math.nan),
                    structure_dice=float(structure[index]),
                )
            )
        self._keep_examples(batch, clips, video_maps[mode], labels)

    def _structure_dice(self, batch: dict[str, Any], clips: ClipEvaluation, labels: Tensor) -> Tensor:
        """Per-video chamber Dice of each clip with its deformation to normal (``structure_dice``), logged by
        class, plus the same against the next video's deformation as an unpaired control."""
        owner, videos = batch["clip_owner"], len(labels)
        inputs, recovered = batch["video"].float().mean(1), clips.to_normal.mean(1)  # (N, T, H, W)
        per_video = average_clip_predictions(structure_dice(inputs, recovered), owner, videos)
        for kind, chosen in (("abnormal", labels == ABNORMAL), ("normal", labels == NORMAL)):
            values = per_video[chosen & torch.isfinite(per_video)]
            if len(values):
                self.test_structure[kind].update(values)
        if videos > 1:
            first_clip = torch.zeros(videos, dtype=torch.long, device=owner.device).index_reduce_(
                0, owner, torch.arange(len(owner), device=owner.device), "amin", include_self=False
            )
            other = first_clip[(owner + 1) % videos]  # a clip of the next video in the batch
            unpaired = structure_dice(inputs, recovered[other])
            self.test_structure["unpaired"].update(unpaired[torch.isfinite(unpaired)])
        return per_video

    def _keep_examples(self, batch: dict[str, Any], clips: ClipEvaluation, video_maps: Tensor, labels: Tensor) -> None:
        """A few abnormal videos (first clip) for the test figure and W&B videos."""
        first_clip = {int(o): i for i, o in reversed(list(enumerate(batch["clip_owner"].tolist())))}
        for index in range(len(labels)):
            if len(self._examples) >= self.hparams.num_logged_maps or int(labels[index]) != ABNORMAL:
                continue
            clip = first_clip[index]
            region = batch.get("abnormal_region")
            self._examples.append({
                "name": batch["filename"][index],
                "input": batch["video"][clip].float().mean(0).cpu().numpy(),  # (T, H, W)
                "to_normal": clips.to_normal[clip].mean(0).cpu().numpy(),
                "maps": clips.maps[self.hparams.map_mode][clip].cpu().numpy(),
                "video_map": video_maps[index].cpu().numpy(),
                "region": region[index].cpu().numpy() if region is not None else None,
            })  # fmt: skip

    def on_test_epoch_end(self) -> None:
        rows = gather_lists(self._collected)
        self._collected = []
        for mode in MAP_MODES:  # aggregated over ranks by the metrics
            means = {name: self.test_map[f"{mode}_{name}"] for name in ("region_mass", "control_mass", "dice")}
            if not self._updated_on_any_rank(*means.values()):
                continue
            region, control, dice = (metric.compute() for metric in means.values())
            prefix = "test/map_" if mode == self.hparams.map_mode else f"test/map_{mode}_"
            self.log(f"{prefix}region_mass", region)
            self.log(f"{prefix}control_mass", control)
            self.log(f"{prefix}region_ratio", region / control.clamp_min(1e-12))
            self.log(f"{prefix}dice", dice)
            for metric in means.values():
                metric.reset()
        for kind, metric in self.test_structure.items():
            if self._updated_on_any_rank(metric):
                self.log(f"test/structure_dice{'' if kind == 'abnormal' else '_' + kind}", metric.compute())
                metric.reset()
        # every rank reads the epoch metrics (computing them synchronises the torchmetrics states over DDP) and
        # takes part in logging the examples (log_figure resolves the log dir collectively)
        logged = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
        self._log_examples(gather_lists(self._examples)[: self.hparams.num_logged_maps])
        self._examples = []
        if not self.trainer.is_global_zero or not rows:
            return
        summary = test_summary(rows, self.decision_threshold.item(), self.train_ef_mean.item())
        summary["score"] = self.hparams.score
        summary["map_mode"] = self.hparams.map_mode
        summary.update(logged)
        message = (
            f"CardiacNet test over {summary['videos']} videos: AUROC {summary.get('test/auroc', math.nan):.3f} "
            f"({self.hparams.score} score), accuracy {summary.get('test/accuracy', math.nan):.3f}"
        )
        if "map_region_mass" in summary:
            message += (
                f"; {self.hparams.map_mode} map mass in the known region {summary['map_region_mass']:.3f} vs "
                f"{summary['map_control_mass']:.3f} in same-shape control regions"
            )
        if "structure_dice" in summary:
            message += (
                f"; chamber Dice of abnormal clips vs their deformation to normal {summary['structure_dice']:.3f}"
            )
        if "ef_mae" in summary:
            message += f"; EF MAE {summary['ef_mae']:.2f}"
            if "ef_mean_predictor_mae" in summary:
                message += f" (the training mean gives {summary['ef_mean_predictor_mae']:.2f})"
        rank_zero_info(message)
        save_test_summary(self.run_dir, summary)
        write_csv(self.run_dir / "test_videos.csv", list(TestRow.CSV_HEADER), [r.csv_row() for r in sorted(rows)])

    def _updated_on_any_rank(self, *metrics: MeanMetric) -> bool:
        """Whether every metric saw an update on some rank: the same answer on all ranks (a rank may hold no
        abnormal video), so that all of them, or none, enter the metrics' synchronising ``compute``."""
        counts = torch.tensor([metric.update_count for metric in metrics], device=self.device)
        if self.trainer.world_size > 1:
            counts = self.all_gather(counts).sum(0)
        return bool((counts > 0).all())

    def _log_examples(self, examples: list[dict[str, Any]]) -> None:
        """The example figure (PNG in the log dir, image in W&B) and, with a WandbLogger, map videos. Called on every
        rank with the same (gathered) examples; only rank 0 writes."""
        if not examples:
            return
        log_figure(self, "test/abnormality_maps", abnormality_figure(examples))
        from lightning.pytorch.loggers import WandbLogger

        wandb_loggers = [logger for logger in self.trainer.loggers if isinstance(logger, WandbLogger)]
        if not wandb_loggers or not self.trainer.is_global_zero:
            return
        out = self.run_dir / "abnormality_maps"
        paths = [
            str(write_map_video(out / f"test_{i}.mp4", e["input"], e["to_normal"], e["maps"]))
            for i, e in enumerate(examples)
        ]
        for logger in wandb_loggers:
            logger.log_video("test/abnormality_map_videos", videos=paths, step=self.trainer.global_step,
                             caption=[e["name"] for e in examples])  # fmt: skip

    # ------------------------------------------------------------------ prediction

    def on_predict_epoch_start(self) -> None:
        self._collected = []

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        clips, scores, ef = self._video_outputs(batch)
        score = scores[self.hparams.score]
        probability = self.probability(score)
        out = Path(self.hparams.maps_dir or self.run_dir / "abnormality_maps")
        for index, name in enumerate(batch["filename"]):
            chosen = batch["clip_owner"] == index
            map_file = ""
            if self.hparams.map_format != "none":
                map_file = save_video_maps(
                    out, name, batch["video"][chosen].float().mean(1).cpu().numpy(),
                    clips.to_normal[chosen].mean(1).cpu().numpy(),
                    clips.maps[self.hparams.map_mode][chosen].cpu().numpy(),
                    self.hparams.map_format,
                )  # fmt: skip
            self._collected.append(
                PredictionRow(
                    filename=name,
                    score=float(score[index]),
                    probability=float(probability[index]),
                    label=int(batch["label"][index]),
                    ef_pred=float(ef[index]) if ef is not None else math.nan,
                    ef_true=float(batch["ef"][index]),
                    map_file=map_file,
                )
            )
        return probability

    def on_predict_epoch_end(self) -> None:
        rows = gather_lists(self._collected)
        self._collected = []
        if not self.trainer.is_global_zero:
            return
        table = [row.csv_row() for row in sorted(rows)]
        header = list(PredictionRow.CSV_HEADER)
        path = write_csv(self.hparams.predictions_csv or self.run_dir / "predictions.csv", header, table)
        rank_zero_info(f"Wrote {len(rows)} CardiacNet predictions to {path}")
