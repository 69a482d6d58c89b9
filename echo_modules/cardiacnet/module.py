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
     gradient) and the *other* class's bank (a detached target), and as a hinge, so maximising it moves the
     encoders and stops at the margin instead of inflating the features: by default (``memory_bank.ot_relative``)
     on ``log(inter / intra-class OT cost)``, the intra-class cost being to the clip's own class's bank, which is
     scale-free and met only by separating the classes relative to their spread;
   - the Consistency Deformation Discriminators (Eq. 2: eta^T on the whole clip, eta^S on frames, eta^T on the
     clip's spatial patches) judge the deformed and the cycled videos, from ``discriminator.start`` on;
   - the disease head (and the EF head on EchoNet/CAMUS, which predicts standardised EF) learn on *detached*
     generator features: the public evaluation's frozen-feature classifier, trained alongside instead of in a second
     run (``heads.feature_grad`` > 0 lets them shape the encoders, as the public mPAP head does; off by default);
   - every ``grad_norm_every`` steps each term's gradient norm on the encoders is logged (``train/grad_norm/<term>``).
2. ``discriminator_step`` (their own optimiser, every ``discriminator.every`` steps from ``discriminator.start``):
   real clips of their class vs the detached deformed and cycled clips.
3. ``update_banks_and_codebooks``: the banks take this step's descriptors (gathered from all DDP ranks); dead
   codebook entries restart on recent features with fresh optimiser state.
Gradient clipping runs in ``on_before_optimizer_step``, after the fp16 scaler unscaled the gradients.

Disease score (``evaluation.score``): ``reconstruction`` (default; parameter-free: how much more phi_B changes a clip
than phi_A does, ``|x - phi_B(x)| - |x - phi_A(x)|``; each generator reproduces its own target class, so abnormal clips
change under phi_B and normal ones under phi_A). It is the method's own score: it separates the classes only if the
generators learned class-specific deformations, so an untrained CardiacNet is its control. ``bank`` (distance to the
normal minus distance to the abnormal bank centroid, in the feature space L_dis and L_OT shape) separates the classes
even for untrained generators wherever random features do (a nearest-centroid classifier), so its control is an
untrained CardiacNet whose banks were filled (a fit at learning rate 0). The phantom configs use ``bank``: after a few
CPU epochs the generators are still close to autoencoders of their own class, and their reconstruction score, though
above its control, stays at or below the phantom's anatomy-free shortcut, while the bank score beats both
(benchmarks/cardiacnet_ablation.py). ``head`` is the public evaluation's frozen-feature classifier.
All three are logged at test. Abnormality maps: where a clip differs from its deformation to the normal class:
``difference`` = ``|x - phi_B(x)|``; ``contrast`` (default) = ``relu(|x - phi_B(x)| - |x - phi_A(x)|)``, the part of
that difference which reproducing the clip as abnormal does not share, so the generators' generic reconstruction
error (speckle, edges) cancels; ``deformation`` = ``|mean_t(phi_B(x) - phi_A(x))|``, signed until averaged over the
clip (``evaluation.abnormality_maps``). All are scored at test, beside an anatomy-only reference map. Structure consistency (the paper's ASD Dice): chambers of a
clip vs chambers of its deformation to normal (``evaluation.structure_dice``), with another heart's deformation as an
unpaired control.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from datamodules.errors import ConfigError
from echo_modules.cardiacnet.evaluation import (
    ABNORMAL,
    NORMAL,
    CardiacNetPrediction,
    ClipEvaluation,
    TestMetrics,
    TestRow,
    VideoMaps,
    abnormality_maps,
    map_examples,
    paired_structure_dice,
    per_video_rows,
    ranking_value,
    summary_line,
    video_map_statistics,
)
from echo_modules.cardiacnet.losses import (
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
from echo_modules.cardiacnet.optimal_transport import ot_cost
from echo_modules.cardiacnet.settings import (
    SCORE_KINDS,
    CodebookSettings,
    DiscriminatorSettings,
    EvaluationSettings,
    HeadSettings,
    LossWeights,
    MemoryBankSettings,
    as_settings,
    settings_dict,
)
from echo_modules.cardiacnet.visualisation import log_map_examples
from echo_modules.common.metrics import BalancedThreshold, ef_metrics
from echo_modules.common.module import (
    EchoModule,
    average_clip_predictions,
    gather_lists,
    updated_on_any_rank,
    write_csv,
)

GENERATORS = ("normal_to_abnormal", "abnormal_to_normal")  # phi_A, phi_B
SETTINGS = {
    "codebook": CodebookSettings,
    "discriminator": DiscriminatorSettings,
    "loss_weights": LossWeights,
    "memory_bank": MemoryBankSettings,
    "heads": HeadSettings,
    "evaluation": EvaluationSettings,
}


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


class CardiacNet(EchoModule):
    """Bidirectional normal <-> abnormal video deformation with codebooks, memory banks, OT and discriminators.

    Training batches are normal/abnormal pairs (a DataModule with ``paired: true``: ``normal_video``,
    ``abnormal_video``, ``normal_label``...); evaluation batches are labelled videos (``video`` with ``clip_owner``,
    ``label``, and where known ``ef``, ``abnormal_region``). See the module docstring for the algorithm.
    """

    checkpoint_monitor = ("val/auroc", "max")

    def __init__(
        self,
        in_channels: int = 1,
        widths: list[int] = [64, 128, 128, 256, 256],  # noqa: B006 (LightningCLI reads the default)
        latent_dim: int = 256,
        codebook: CodebookSettings = CodebookSettings(),  # noqa: B008 (frozen dataclasses: LightningCLI sections)
        discriminator: DiscriminatorSettings = DiscriminatorSettings(),  # noqa: B008
        loss_weights: LossWeights = LossWeights(),  # noqa: B008
        memory_bank: MemoryBankSettings = MemoryBankSettings(),  # noqa: B008
        heads: HeadSettings = HeadSettings(),  # noqa: B008
        evaluation: EvaluationSettings = EvaluationSettings(),  # noqa: B008
        mask_ratio: float = 0.0,
        mask_patch: int = 8,
        gradient_clip: float | None = None,
        grad_norm_every: int = 50,
        channels_last: bool = True,
        generator_optimizer: OptimizerCallable = torch.optim.Adam,
        discriminator_optimizer: OptimizerCallable = torch.optim.Adam,
        predictions_csv: str | None = None,
        eval_chunk_size: int | None = 32,
    ) -> None:
        """Args:
        in_channels: video channels (1 for grey; the data config's ``channels``).
        widths / latent_dim: generator channel widths per resolution level (height and width halve at each extra
            level) and the codebook dimension (public code: [64, 128, 128, 256, 256] and 256).
        codebook / discriminator / loss_weights / memory_bank / heads / evaluation: the grouped hyperparameters
            (``echo_modules.cardiacnet.settings``: the CDC, the CDD, the generator objective's weights, the banks and
            OT, the light heads, scores and maps).
        mask_ratio / mask_patch: MAE-style masking of the generators' inputs in training (public code: 0.7 of 8x8
            patches); targets stay unmasked, so reproducing the own class becomes inpainting.
        gradient_clip: clip generator and discriminator gradient norms to this value (on unscaled gradients under
            fp16).
        grad_norm_every: every this many training steps, log each loss term's gradient norm on the encoders
            (``train/grad_norm/<term>``) and its share of their sum (``train/grad_share/<term>``); 0 = off.
        channels_last: run the 3D/2D convolutions in channels-last memory formats (several times faster on CPU).
        generator_optimizer / discriminator_optimizer: LightningCLI optimiser callables (public code: Adam, lr
            2.25e-5, betas (0.5, 0.99)); the generator one also steps the heads.
        predictions_csv: where ``predict`` writes its CSV (default: ``<run dir>/predictions.csv``).
        eval_chunk_size: clips per forward at validation/test/predict (bounded memory on long videos; null: all).
        """
        super().__init__(optimizer=generator_optimizer, eval_chunk_size=eval_chunk_size)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.codebook = as_settings(CodebookSettings, codebook, "codebook")
        self.discriminator = as_settings(DiscriminatorSettings, discriminator, "discriminator")
        self.loss_weights = as_settings(LossWeights, loss_weights, "loss_weights")
        self.memory_bank = as_settings(MemoryBankSettings, memory_bank, "memory_bank")
        self.heads = as_settings(HeadSettings, heads, "heads")
        self.evaluation = as_settings(EvaluationSettings, evaluation, "evaluation")
        for name in SETTINGS:  # plain dicts in the checkpoint (loadable with weights_only=True)
            self.hparams[name] = settings_dict(getattr(self, name))
        if self.evaluation.score not in SCORE_KINDS:
            raise ConfigError(f"model.evaluation.score must be one of {SCORE_KINDS}, got {self.evaluation.score!r}")
        if self.discriminator.every < 1:
            raise ConfigError(f"model.discriminator.every must be >= 1, got {self.discriminator.every}")
        cdc, cdd = self.codebook, self.discriminator
        generator = dict(
            in_channels=in_channels, widths=widths, latent_dim=latent_dim, num_codes=cdc.num_codes,
            commitment=cdc.commitment, restart_threshold=cdc.restart_threshold,
            position_grid=tuple(cdc.position_grid), channels_last=channels_last,
            positional_encoding=cdc.positional_encoding, quantise=cdc.quantise,
        )  # fmt: skip
        self.normal_to_abnormal = DeformationGenerator(**generator)  # phi_A
        self.abnormal_to_normal = DeformationGenerator(**generator)  # phi_B
        discriminator_args = dict(
            in_channels=in_channels, width=cdd.width, num_layers=cdd.layers, frames=cdd.frames,
            channels_last=channels_last, patch=cdd.patch,
        )  # fmt: skip
        self.discriminators = nn.ModuleDict(
            {"normal": ConsistencyDeformationDiscriminator(**discriminator_args),
             "abnormal": ConsistencyDeformationDiscriminator(**discriminator_args)}
        )  # fmt: skip
        grid = self.memory_bank.grid
        self.bank_grid = tuple(grid) if grid is not None else tuple(cdc.position_grid)  # None: token maps
        descriptor_dim = latent_dim * math.prod(self.bank_grid)
        size = self.memory_bank.size
        self.banks = nn.ModuleDict({name: ClassMemoryBanks(2, size, descriptor_dim) for name in GENERATORS})
        self.disease_head = FeatureHead(2 * latent_dim, pooling=list(self.heads.disease_pooling))
        self.ef_head = (
            FeatureHead(2 * latent_dim, pooling=list(self.heads.ef_pooling)) if self.heads.predict_ef else None
        )  # standardised EF
        self.discriminator_optimizer = discriminator_optimizer
        self.predictions_csv = predictions_csv
        self.register_buffer("iterations", torch.zeros((), dtype=torch.long))  # training batches seen
        self.register_buffer("decision_threshold", torch.zeros(()))  # on the chosen score, calibrated on validation
        self.register_buffer("train_ef_mean", torch.tensor(math.nan))
        self.register_buffer("train_ef_std", torch.tensor(math.nan))
        self.val_auroc = BinaryAUROC()
        self.val_accuracy = BinaryAccuracy()
        self.val_threshold = BalancedThreshold()
        self.val_ef = ef_metrics("val/ef_") if self.heads.predict_ef else None
        self.test_metrics = TestMetrics(self.heads.predict_ef)
        self._test_rows: list[TestRow] = []
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

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The generator optimiser's groups: both generators, and the heads (at ``heads.lr`` when set)."""
        heads = [self.disease_head] + ([self.ef_head] if self.ef_head is not None else [])
        head_group: dict[str, Any] = {"params": [p for head in heads for p in head.parameters()]}
        if self.heads.lr is not None:
            head_group["lr"] = self.heads.lr
        generators = [p for name in GENERATORS for p in self._generator(name).parameters()]
        return [{"params": generators}, head_group]

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """The base's optimiser on :meth:`parameter_groups` (generators + heads), then the discriminators' own."""
        return [super().configure_optimizers(), self.discriminator_optimizer(self.discriminators.parameters())]

    # ------------------------------------------------------------------ pieces

    def _generator(self, name: str) -> DeformationGenerator:
        return getattr(self, name)

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

    def head_features(self, video: Tensor) -> Tensor:
        """``F + P`` of both generators' encoders, concatenated on channels: the heads' input."""
        return torch.cat([self._generator(name).extract(video) for name in GENERATORS], 1).float()

    def _to_heads(self, features: Tensor) -> Tensor:
        """The heads see ``features`` unchanged; only ``heads.feature_grad`` of their gradient flows back."""
        scale = self.heads.feature_grad
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

    def _weighted_adversarial(self, losses: dict[str, Tensor]) -> Tensor:
        """Eq. 2's three terms, weighted: global (eta^T on the clip), local (eta^S on frames, eta^T on patches)."""
        weights = self.loss_weights
        total = weights.global_adversarial * losses["video"] + weights.local_adversarial * losses["frames"]
        if "patches" in losses:
            total = total + weights.patch_adversarial * losses["patches"]
        return total

    @staticmethod
    def _logit_terms(logits: DiscriminatorLogits) -> dict[str, Tensor]:
        terms = {"video": logits.video, "frames": logits.frames}
        if logits.patches is not None:
            terms["patches"] = logits.patches
        return terms

    def _adversarial_generator_loss(self, discriminator: ConsistencyDeformationDiscriminator, fakes: Tensor) -> Tensor:
        """The generators' side of Eq. 2 for generated clips ``fakes`` judged by one class's CDD."""
        logits = self._logit_terms(discriminator(fakes, discriminator.select_frames(fakes)))
        kind = self.discriminator.gan_loss
        return self._weighted_adversarial({name: generator_adversarial_loss(v, kind) for name, v in logits.items()})

    def _adversarial_discriminator_loss(
        self, discriminator: ConsistencyDeformationDiscriminator, real: Tensor, fakes: Tensor
    ) -> Tensor:
        """The discriminator's side of Eq. 2: real clips of its class against (detached) generated ones."""
        frames = discriminator.select_frames(real)
        real_logits = self._logit_terms(discriminator(real, frames))
        fake_logits = self._logit_terms(discriminator(fakes.detach(), frames))
        kind = self.discriminator.gan_loss
        return self._weighted_adversarial(
            {name: discriminator_adversarial_loss(real_logits[name], fake_logits[name], kind) for name in real_logits}
        )

    def _bank_losses(self, descriptors: dict[str, Tensor], labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """L_dis (Eq. 4), the trainable, bounded L_OT (Eq. 5) over both generators and both classes (zero until the
        banks hold ``memory_bank.min_fill`` rows), and the inter-class OT cost itself (a diagnostic: should rise)."""
        bank = self.memory_bank
        zero = descriptors[GENERATORS[0]].new_zeros(())
        centroid, separation, cost, terms = zero, zero, zero, 0
        for name, rows in descriptors.items():
            banks = self.banks[name]
            if not banks.ready(bank.min_fill):
                continue
            for label in (NORMAL, ABNORMAL):
                own = rows[labels == label]
                if not len(own):
                    continue
                other = banks[1 - label].filled
                centroid = centroid + centroid_loss(own, banks[label].centroid(), bank.loss_reduction)
                own_bank = banks[label].filled if bank.ot_relative else None  # relative: vs the own class
                separation = separation + ot_separation_loss(
                    own, other, bank.ot_method, bank.ot_margin, bank.ot_reg, bank.loss_reduction, own_bank
                )
                with torch.no_grad():
                    cost = cost + ot_cost(own, other, bank.ot_method, bank.ot_reg)
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
        weights = self.loss_weights
        active = [weights.global_adversarial, weights.local_adversarial]
        if self.discriminator.patch:
            active.append(weights.patch_adversarial)
        return int(self.iterations) >= self.discriminator.start and any(w > 0 for w in active)

    # ------------------------------------------------------------------ training (the algorithm box)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """One step of the algorithm: 1. generators, 2. discriminators, 3. banks and codebook upkeep."""
        pairs = TrainingPairs.from_batch(batch)
        generator_optimizer, discriminator_optimizer = self.optimizers()
        passes = self.generator_step(pairs, generator_optimizer)
        discriminator_loss = None
        if passes.adversarial and int(self.iterations) % self.discriminator.every == 0:
            discriminator_loss = self.discriminator_step(pairs, passes, discriminator_optimizer)
        restarted = self.update_banks_and_codebooks(passes, pairs.labels, generator_optimizer)
        self.iterations += 1
        self._log_training(passes, discriminator_loss, restarted, len(pairs.labels))

    def generator_step(self, pairs: TrainingPairs, optimizer: Any) -> GeneratorPasses:
        """1. Both generators deform the other class and reproduce their own (identity, Eq. 1), the deformed clips
        are deformed back (cycle, Eq. 1); CDC (L_q), banks (L_dis, L_OT) and CDD (Eq. 2) add their terms; the heads
        learn on detached features. One optimiser step on the weighted sum."""
        size, labels, videos = pairs.size, pairs.labels, pairs.videos
        normal, abnormal = videos[:size], videos[size:]
        self.toggle_optimizer(optimizer)
        masking = self.hparams.mask_ratio > 0
        inputs = self._mask_inputs(videos) if masking else videos
        own = (lambda label: labels == label) if self.codebook.own_class else (lambda label: None)
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
        if masking:  # the heads judge unmasked clips, as at evaluation
            with torch.set_grad_enabled(self.heads.feature_grad > 0):
                features = self.head_features(videos)
        else:
            features = torch.cat([to_abnormal.features, to_normal.features], 1).float()
        raw["disease"], ef_loss = self._head_loss(self._to_heads(features), labels, pairs.ef)
        weights = self.loss_weights
        factors = {
            "identity": weights.identity, "cycle": weights.cycle, "quantisation": weights.quantisation,
            "centroid": weights.centroid, "ot": weights.ot, "adversarial": 1.0, "disease": 1.0,
        }  # fmt: skip
        terms = {name: factors[name] * value for name, value in raw.items()}
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

    # ------------------------------------------------------------------ scores, maps, EF

    @torch.no_grad()
    def evaluate_clips(self, video: Tensor) -> ClipEvaluation:
        """Scores, EF, abnormality maps and the deformation to normal for clips ``(N, C, T, H, W)``, ``eval_chunk_size``
        clips at a time."""
        return self.run_in_chunks(self._evaluate_chunk, video)

    def _evaluate_chunk(self, video: Tensor) -> ClipEvaluation:
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
        maps = abnormality_maps(video, to_abnormal.video, to_normal.video)
        return ClipEvaluation(scores=scores, ef=ef, maps=maps, to_normal=to_normal.video.float())

    def forward(self, video: Tensor) -> Tensor:
        """Disease score (higher = more abnormal) of each clip ``(N, C, T, H, W)``, by ``evaluation.score``."""
        return self.evaluate_clips(video).scores[self.evaluation.score]

    def _video_outputs(self, batch: dict[str, Any]) -> tuple[ClipEvaluation, dict[str, Tensor], Tensor | None]:
        """Clip outputs plus per-video scores (clips averaged) and per-video EF."""
        clips = self.evaluate_clips(batch["video"])
        owner, videos = batch["clip_owner"], len(batch["label"])
        scores = {kind: average_clip_predictions(value, owner, videos) for kind, value in clips.scores.items()}
        ef = average_clip_predictions(clips.ef, owner, videos) if clips.ef is not None else None
        return clips, scores, ef

    def probability(self, score: Tensor) -> Tensor:
        """P(abnormal) for the chosen score: a sigmoid around the validation-calibrated threshold."""
        return torch.sigmoid(score - self.decision_threshold)

    # ------------------------------------------------------------------ validation: AUROC and the threshold

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, scores, ef = self._video_outputs(batch)
        labels = batch["label"]
        known = labels >= 0
        score = scores[self.evaluation.score]
        if known.any():
            self.val_auroc.update(ranking_value(score[known]), labels[known])
            self.val_accuracy.update(self.probability(score[known]), labels[known])
            self.val_threshold.update(score[known], labels[known])
            self.log("val/auroc", self.val_auroc, prog_bar=True, batch_size=int(known.sum()))
            self.log("val/accuracy", self.val_accuracy, batch_size=int(known.sum()))
        if ef is not None and self.val_ef is not None:
            finite = torch.isfinite(batch["ef"])
            if finite.any():
                self.val_ef.update(ef[finite], batch["ef"][finite])
                self.log_dict(self.val_ef, batch_size=int(finite.sum()))

    def on_validation_epoch_end(self) -> None:
        """Calibrate the decision threshold on the validation scores (best balanced accuracy over all ranks'
        videos); sanity-check runs leave it alone."""
        if not self.trainer.sanity_checking and updated_on_any_rank(self, self.val_threshold):
            threshold = float(self.val_threshold.compute())
            if math.isfinite(threshold):
                self.decision_threshold.fill_(threshold)
        self.val_threshold.reset()

    # ------------------------------------------------------------------ test: scores, maps, structure, summary

    def on_test_epoch_start(self) -> None:
        self._test_rows = []
        self._examples = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        clips, scores, ef = self._video_outputs(batch)
        metrics, labels, chosen = self.test_metrics, batch["label"], self.evaluation.score
        known = labels >= 0
        if known.any():
            for kind, auroc in metrics.auroc.items():
                auroc.update(ranking_value(scores[kind][known]), labels[known])
                self.log(f"test/auroc_{kind}", auroc, batch_size=int(known.sum()))
            metrics.accuracy.update(self.probability(scores[chosen][known]), labels[known])
            self.log("test/auroc", metrics.auroc[chosen], batch_size=int(known.sum()))
            self.log("test/accuracy", metrics.accuracy, batch_size=int(known.sum()))
        metrics.videos.update(torch.ones(len(labels), device=self.device).sum())
        metrics.abnormal_videos.update((labels == ABNORMAL).sum().float())
        if ef is not None and metrics.ef is not None:
            finite = torch.isfinite(batch["ef"])
            if finite.any():
                metrics.ef.update(ef[finite], batch["ef"][finite])
                self.log_dict(metrics.ef, batch_size=int(finite.sum()))
                if torch.isfinite(self.train_ef_mean):  # the training-mean predictor, the EF control
                    truth = batch["ef"][finite].float()
                    metrics.ef_mean_predictor.update(torch.full_like(truth, self.train_ef_mean.item()), truth)
        mode = self.evaluation.map_mode
        video_maps, map_stats = video_map_statistics(clips.maps, batch, self.evaluation.map_sigma)
        metrics.update_maps(map_stats, mode)
        inputs, recovered = batch["video"].float().mean(1), clips.to_normal.mean(1)  # (N, T, H, W)
        structure, unpaired = paired_structure_dice(inputs, recovered, batch["clip_owner"], len(labels))
        metrics.update_structure(structure, unpaired, labels)
        self._test_rows += per_video_rows(batch, scores[chosen], ef, map_stats, structure, mode)
        room = self.evaluation.num_logged_maps - len(self._examples)
        self._examples += map_examples(batch, clips, video_maps[mode], mode, room)

    def on_test_epoch_end(self) -> None:
        """Epoch metrics (map localisation per map mode, structure Dice), the examples, then the base's summary."""
        updated = lambda *metrics: updated_on_any_rank(self, *metrics)  # noqa: E731
        for name, value in self.test_metrics.epoch_values(updated, self.evaluation.map_mode).items():
            self.log(name, value)
        # every rank takes part in logging the examples (log_figure resolves the log dir collectively)
        log_map_examples(self, gather_lists(self._examples)[: self.evaluation.num_logged_maps])
        self._examples = []
        super().on_test_epoch_end()

    def test_summary(self) -> dict[str, Any] | None:
        """``test_summary.json``: the torchmetrics numbers (reduced over ranks) under their logged names and short
        aliases, the threshold and the settings; rank 0 also writes ``test_videos.csv`` (one row per video)."""
        rows = gather_lists(self._test_rows)
        self._test_rows = []
        if not int(self.test_metrics.videos.compute()):  # every rank computes: a collective under DDP
            return None
        logged = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
        summary = self.test_metrics.summary(logged, lambda *metrics: updated_on_any_rank(self, *metrics))
        summary |= {"decision_threshold": self.decision_threshold.item(), "score": self.evaluation.score,
                    "map_mode": self.evaluation.map_mode} | logged  # fmt: skip
        if self.trainer.is_global_zero:
            table = [row.csv_row() for row in sorted(rows)]
            write_csv(self.run_dir / "test_videos.csv", list(TestRow.CSV_HEADER), table)
        return summary

    def summary_line(self, summary: dict[str, Any]) -> str:
        return summary_line(summary)

    # ------------------------------------------------------------------ prediction

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[CardiacNetPrediction]:
        """One :class:`CardiacNetPrediction` per video with its maps; the base's ``PredictionWriter`` saves the maps
        to ``evaluation.maps_dir`` in ``evaluation.map_format`` and writes ``predictions.csv``."""
        clips, scores, ef = self._video_outputs(batch)
        score = scores[self.evaluation.score]
        probability = self.probability(score)
        map_format = self.evaluation.map_format
        out = Path(self.evaluation.maps_dir or self.run_dir / "abnormality_maps")
        records = []
        for index, name in enumerate(batch["filename"]):
            chosen = batch["clip_owner"] == index
            video_maps = None
            if map_format != "none":
                video_maps = VideoMaps(
                    out, batch["video"][chosen].float().mean(1).cpu().numpy(),
                    clips.to_normal[chosen].mean(1).cpu().numpy(),
                    clips.maps[self.evaluation.map_mode][chosen].cpu().numpy(), map_format,
                )  # fmt: skip
            records.append(
                CardiacNetPrediction(
                    filename=name,
                    score=float(score[index]),
                    probability=float(probability[index]),
                    label=int(batch["label"][index]),
                    ef_pred=float(ef[index]) if ef is not None else math.nan,
                    ef_true=float(batch["ef"][index]),
                    video_maps=video_maps,
                )
            )
        return records
