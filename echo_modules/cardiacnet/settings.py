"""CardiacNet's hyperparameters, grouped by the part of the method they set. Each group is a frozen dataclass, so
LightningCLI shows it as a nested section (``--model.init_args.loss_weights.cycle 10``; a YAML ``codebook:`` block
that sets only ``num_codes`` keeps the other defaults) and ``load_from_checkpoint`` rebuilds it from the saved
hyperparameters. MIGRATION.md maps the former flat arguments to these paths."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, TypeVar

from datamodules.errors import ConfigError
from echo_modules.cardiacnet.losses import GANLoss, Reduction
from echo_modules.cardiacnet.optimal_transport import OTMethod

ScoreKind = Literal["head", "reconstruction", "bank"]
SCORE_KINDS: tuple[str, ...] = ("head", "reconstruction", "bank")
MapMode = Literal["difference", "contrast", "deformation"]
MAP_MODES: tuple[str, ...] = ("difference", "contrast", "deformation")


@dataclass(frozen=True)
class CodebookSettings:
    """The Consistency Deformation Codebook (vector quantisation of ``F + P``, positional encoding).

    Args:
        num_codes: codebook entries (public code: 2048).
        commitment: lambda of L_q's commitment term.
        restart_threshold: running usage below which an entry is restarted on recent features.
        own_class: a generator's codebook learns (L_q codebook term, usage, restarts) only from clips of its own output
            class (phi_A: abnormal, phi_B: normal), so deforming a clip maps its tokens onto the vocabulary of the
            target class; False: from every clip, as the public code does.
        position_grid: token grid (frames, height, width) of the learnable positional encoding: clip_length and
            frame_size / 2^(len(widths) - 1) of the training clips (other grids interpolate it).
        positional_encoding: the CDC's positional encoding (False: the poster's Table 5 ablation).
        quantise: the codebook itself (False: features pass unquantised and L_q is zero; Table 4).
    """

    num_codes: int = 2048
    commitment: float = 0.25
    restart_threshold: float = 1.0
    own_class: bool = True
    position_grid: tuple[int, int, int] = (16, 7, 7)
    positional_encoding: bool = True
    quantise: bool = True


@dataclass(frozen=True)
class DiscriminatorSettings:
    """The Consistency Deformation Discriminators (Eq. 2) and when they train.

    Args:
        width: PatchGAN channel width.
        layers: PatchGAN depth.
        frames: frames per clip the local (per-frame) discriminator judges.
        patch: side (pixels) of the spatial patches the temporal discriminator also judges, each followed over the
            clip (Eq. 2's third term); 0 = off.
        gan_loss: ``vanilla`` (Eq. 2's log loss) or ``hinge`` (the public code).
        start: training batch from which the adversarial losses apply.
        every: step the discriminators every k-th training batch.
    """

    width: int = 64
    layers: int = 3
    frames: int = 4
    patch: int = 16
    gan_loss: GANLoss = "hinge"
    start: int = 0
    every: int = 1


@dataclass(frozen=True)
class LossWeights:
    """Weights of the generator objective's terms (defaults: the public code's).

    Args:
        identity: reproducing the own class (Eq. 1).
        cycle: deforming back (Eq. 1).
        quantisation: L_q.
        global_adversarial: eta^T on the whole clip (Eq. 2).
        local_adversarial: eta^S on frames (Eq. 2).
        patch_adversarial: eta^T on spatial patches (Eq. 2's third term). All three adversarial weights zero switch
            the CDD off (Table 4).
        centroid: L_dis (Eq. 4).
        ot: L_OT (Eq. 5).
    """

    identity: float = 2.5
    cycle: float = 100.0
    quantisation: float = 1.0
    global_adversarial: float = 1.0
    local_adversarial: float = 1.0
    patch_adversarial: float = 1.0
    centroid: float = 0.01
    ot: float = 0.001


@dataclass(frozen=True)
class MemoryBankSettings:
    """The per-class memory banks and the optimal-transport separation between them (Eqs. 4-5).

    Args:
        size: rows per class bank.
        grid: the pooled token grid a clip descriptor keeps (``(1, 1, 1)``: one ``latent_dim`` vector per clip; None:
            the whole token map of ``codebook.position_grid``, as the public code's banks hold).
        min_fill: rows a bank needs before L_dis and L_OT apply.
        loss_reduction: ``sum``: L_dis and L_OT as Eqs. 4-5 write them (summed over dimensions, and L_OT over the
            bank's rows), the form the public weights were set for; ``mean``: per dimension (and pair).
        ot_method: ``sorted`` (exact per-dimension Eq. 5) or POT's ``emd``/``sinkhorn``/``sliced`` on whole vectors.
        ot_margin: L_OT is the hinge ``relu(margin - OT)`` on the mean OT cost per dimension and pair, so maximising
            the separation stops at the margin; None = the unbounded ``-OT`` (it runs away: features inflate).
        ot_reg: entropic regularisation of POT's ``sinkhorn``.
        ot_relative: the hinge is on ``log(inter-class / intra-class OT cost)`` (``ot_separation_loss`` with the own
            class's bank) instead of the inter-class cost alone: scale-free, so it is met only by separating the
            classes relative to their spread, not by spreading the features (two samples of one distribution are a
            positive transport cost apart, which an absolute margin of 1 is soon below).
    """

    size: int = 256
    grid: tuple[int, int, int] | None = (1, 1, 1)
    min_fill: int = 16
    loss_reduction: Reduction = "sum"
    ot_method: OTMethod = "sorted"
    ot_margin: float | None = 1.0
    ot_reg: float = 0.05
    ot_relative: bool = True


@dataclass(frozen=True)
class HeadSettings:
    """The light disease (and EF) heads on the generators' encoder features.

    Args:
        predict_ef: train an EF head too (EchoNet / CAMUS) and report EF MAE.
        lr: learning rate of the heads (default: the generator optimiser's).
        feature_grad: how much of the heads' loss gradient reaches the generators' encoders: 0 trains the heads on
            frozen (detached) features, the public evaluation's protocol; > 0 makes them auxiliary heads that also
            shape the encoders, as the public training's auxiliary mPAP head (weight 0.01) does.
        disease_pooling: how the disease head pools the features (``FeatureHead``): global mean (the public head)
            plus global max, so a lesion of a few tokens is not averaged away.
        ef_pooling: the EF head's pooling: plus each location's extremes over the clip (how far the walls move).
    """

    predict_ef: bool = False
    lr: float | None = None
    feature_grad: float = 0.0
    disease_pooling: tuple[str, ...] = ("mean", "max")
    ef_pooling: tuple[str, ...] = ("mean", "time_max", "time_min")


@dataclass(frozen=True)
class EvaluationSettings:
    """Scores, abnormality maps and what test/predict write.

    Args:
        score: which disease score drives accuracy, predictions and ``val/auroc`` (all are logged at test). Default
            ``reconstruction``: the method's own score (parameter-free, nothing trained on labels at scoring time),
            so it only separates the classes if the generators learned the deformations; ``bank`` (the phantom
            configs' choice: what L_dis and L_OT train) also separates with untrained generators (nearest class
            centroid of random features), so its control is an untrained model with filled banks; ``head`` is the public
            evaluation's protocol (a classifier on frozen features), a measure of the features, not of the
            reconstructions.
        map_mode: abnormality map definition (``difference``, ``contrast`` or ``deformation``;
            ``evaluation.abnormality_maps``).
        map_sigma: Gaussian smoothing of the maps in pixels.
        maps_dir: where ``predict`` writes per-video maps (default: ``<run dir>/abnormality_maps``).
        map_format: AVI (input | deformed to normal | map overlay), ``npy`` float16 maps, both or none.
        num_logged_maps: abnormality-map examples logged at test (figure PNG, and H.264 videos to W&B).
    """

    score: ScoreKind = "reconstruction"
    map_mode: MapMode = "deformation"
    map_sigma: float = 1.0
    maps_dir: str | None = None
    map_format: Literal["avi", "npy", "both", "none"] = "avi"
    num_logged_maps: int = 4


Settings = TypeVar("Settings")


def as_settings(kind: type[Settings], value: Settings | dict[str, Any] | None, name: str) -> Settings:
    """``value`` as a ``kind`` dataclass: LightningCLI passes the dataclass, ``load_from_checkpoint`` and scripts
    may pass the saved dict. Unknown keys are a one-line config error naming the group."""
    if isinstance(value, kind):
        return value
    if value is None:
        return kind()
    known = {field.name for field in fields(kind)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"model.{name} has no setting {unknown}; known: {sorted(known)} (see MIGRATION.md)")
    return kind(**value)


def settings_dict(value: Any) -> dict[str, Any]:
    """A settings dataclass as a plain dict (what the checkpoint's hyperparameters hold)."""
    return asdict(value)
