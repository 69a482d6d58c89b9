"""CoReEcho (Maani et al., MICCAI 2024): continuous representations for EF regression from 2D+time echo.

Stage 1 ("RnC + L1SG"): the encoder learns only from the Rank-N-Contrast loss over two views (clips) per video, so
its embedding space is ordered by EF; a light regressor learns EF with L1 from the *detached* features at the same
time. Stage 2 (MLP probing): the encoder is frozen (eval mode, no gradient) and the regressor is trained again with L1.
Evaluation averages the predictions of several clips per video, as the paper does.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from datamodules.errors import ConfigError
from echo_modules.common.ef import EFModule, EFPrediction
from echo_modules.common.plotting import log_figure
from echo_modules.coreecho.heads import ProjectionHead, RegressionHead
from echo_modules.coreecho.losses import distributed_rank_n_contrast_loss

#: state-dict prefixes a stage-2 run takes from the stage-1 checkpoint
STAGE1_PREFIXES = ("encoder.", "projector.", "regressor.")


class CoReEcho(EFModule):
    """Video encoder + light regressor trained in CoReEcho's two stages (see the module docstring).

    Training batches carry two views per video (``video`` ``(B, 2, C, T, H, W)``, a DataModule with
    ``num_views: 2``); one view also works (the contrastive pairs are then other videos only). Under DDP the
    contrastive loss sees the global batch (embeddings gathered from every rank with their gradients).
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        stage: Literal[1, 2] = 1,
        temperature: float = 2.0,
        projection_dim: int | None = None,
        regressor_dropout: float = 0.4,
        regressor_lr: float | None = None,
        stage1_checkpoint: str | None = None,
        loss_chunk_size: int | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        predictions_csv: str | None = None,
        embedding_plot: bool = True,
        eval_chunk_size: int | None = 32,
    ) -> None:
        """Args:
        encoder: a video backbone with ``out_features`` (default: UniFormer-S, random init; the paper starts from
            Kinetics-400 weights, see ``UniFormer(pretrained=...)``).
        stage: 1 = contrastive encoder + regressor on detached features; 2 = frozen encoder, regressor only.
        temperature: Rank-N-Contrast temperature on negative L2 distances (paper default 2).
        projection_dim: apply the contrastive loss to an MLP projection of this size instead of the encoder
            features (None: the features themselves, as in the paper; the regressor always reads the features).
        regressor_dropout: dropout of the two regressor layers (0.4 in the paper).
        regressor_lr: learning rate of the regressor's parameter group (None: the optimizer's). The paper steps
            encoder and regressor with separate, identical AdamW optimisers; one optimiser with two groups is the
            same thing, and a larger regressor rate helps short runs (the regressor's input is detached anyway).
        stage1_checkpoint: stage 2 only: the stage-1 Lightning checkpoint whose encoder (frozen) and regressor
            (initialisation) a new stage-2 fit starts from.
        loss_chunk_size: anchors per chunk in the contrastive loss (None: sized to ~1M pair entries per chunk).
        optimizer / scheduler: callables taking the parameters / the optimizer (LightningCLI class_path configs).
        predictions_csv: where ``predict`` writes its CSV (default: the run's log dir).
        embedding_plot: at test end, log a PCA (and UMAP if umap-learn is installed) map of video embeddings by EF.
        eval_chunk_size: clips per forward at validation/test/predict (bounded memory on long videos; null: all).
        """
        super().__init__(
            predictions_csv=predictions_csv, optimizer=optimizer, scheduler=scheduler, eval_chunk_size=eval_chunk_size
        )
        self.save_hyperparameters()
        if stage not in (1, 2):
            raise ConfigError(f"model.stage must be 1 or 2, got {stage!r}")
        if stage == 2 and projection_dim is not None:
            rank_zero_info("CoReEcho stage 2: the projection head is kept from stage 1 but not used")
        self.stage = stage
        self.temperature = temperature
        self.stage1_checkpoint = stage1_checkpoint
        self.loss_chunk_size = loss_chunk_size
        self.regressor_lr = regressor_lr
        self.embedding_plot = embedding_plot
        if encoder is None:
            from echo_modules.common.uniformer import UniFormer

            encoder = UniFormer()
        self.encoder = encoder
        features = encoder.out_features
        self.projector = ProjectionHead(features, projection_dim) if projection_dim else nn.Identity()
        self.regressor = RegressionHead(features, regressor_dropout)
        if stage == 2:
            self.encoder.requires_grad_(False)

    # ------------------------------------------------------------------ networks

    def train(self, mode: bool = True) -> CoReEcho:
        """Stage 2 keeps the encoder in eval mode whatever Lightning asks (BatchNorm statistics stay frozen)."""
        super().train(mode)
        if self.stage == 2:
            self.encoder.eval()
        return self

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if self.stage == 2:  # Lightning restores the modes it captured before validation by setting flags directly
            self.encoder.eval()

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features ``(N, F)`` of clips ``(N, C, T, H, W)`` (without gradient in stage 2)."""
        if self.stage == 2:
            with torch.no_grad():
                return self.encoder(video)
        return self.encoder(video)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """EF (percent) for each clip of ``video`` ``(N, C, T, H, W)``."""
        return self.regressor(self.encode(video)).squeeze(-1)

    # ------------------------------------------------------------------ stage set-up

    def on_fresh_fit(self, mean: float) -> None:
        if self.stage == 2:
            self._load_stage1()
        else:
            super().on_fresh_fit(mean)

    def seed_ef_output(self, mean: float) -> None:
        self.regressor.reset_output(mean)

    def _load_stage1(self) -> None:
        if not self.stage1_checkpoint:
            raise ConfigError(
                "CoReEcho stage 2 trains a regressor on a frozen stage-1 encoder: set "
                "--model.init_args.stage1_checkpoint to the stage-1 run's checkpoint"
            )
        path = Path(self.stage1_checkpoint).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.stage1_checkpoint '{path}' does not exist")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # hyperparameters holding objects: a module built in Python, not by the CLI
            rank_zero_warn(f"{path}: loading with weights_only=False (it pickles objects): only for your own runs")
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        state = checkpoint.get("state_dict", checkpoint)
        wanted = {k: v for k, v in state.items() if k.startswith(STAGE1_PREFIXES)}
        own = self.state_dict()
        absent = sorted(k for k in own if k.startswith(("encoder.", "regressor.")) and k not in wanted)
        if absent:
            raise ConfigError(
                f"{path}: not a CoReEcho stage-1 checkpoint with this encoder (missing e.g. {absent[:3]}); "
                "use the same model config as stage 1"
            )
        self.load_state_dict(wanted, strict=False)
        rank_zero_info(f"CoReEcho stage 2: frozen encoder and initial regressor from {path}")

    # ------------------------------------------------------------------ training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        video = batch["video"]
        if video.ndim == 5:  # one view: (B, C, T, H, W)
            video = rearrange(video, "b c t h w -> b 1 c t h w")
        views = video.shape[1]
        labels = repeat(batch["ef"].float(), "b -> (b v)", v=views)
        features = self.encode(rearrange(video, "b v c t h w -> (b v) c t h w"))
        prediction = self.regressor(features.detach()).squeeze(-1)
        regression = F.l1_loss(prediction.float(), labels)
        size = len(labels)
        if self.stage == 2:
            self.log("train/l1_loss", regression, prog_bar=True, batch_size=size)
            return regression
        contrastive = distributed_rank_n_contrast_loss(
            self.projector(features), labels, self.temperature, self.loss_chunk_size
        )
        self.log("train/rnc_loss", contrastive, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/l1_loss", regression, prog_bar=True, batch_size=size)
        return contrastive + regression  # the regressor's L1 cannot reach the encoder: its input is detached

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The regressor's group (with ``regressor_lr``) and, in stage 1, everything else that trains."""
        regressor = {"params": list(self.regressor.parameters())}
        if self.regressor_lr is not None:
            regressor["lr"] = self.regressor_lr
        groups = [regressor]
        if self.stage == 1:  # stage 2 optimises the regressor only
            regressor_ids = {id(p) for p in regressor["params"]}
            others = [p for p in self.parameters() if p.requires_grad and id(p) not in regressor_ids]
            groups.insert(0, {"params": others})
        return groups

    # ------------------------------------------------------------------ evaluation (EFModule runs the steps)

    def clip_outputs(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encode(video).float()
        return {"ef": self.regressor(features).squeeze(-1).float(), "embedding": features}

    def extra_summary(self, records: list[EFPrediction]) -> dict[str, Any]:
        """|Spearman(PC1 of the video embeddings, EF)| (logged as ``test/pc1_spearman``) and the embedding map."""
        if len(records) < 3:
            return {"stage": self.stage}
        true = np.array([r.ef_true for r in records])
        embeddings = np.stack([r.embedding for r in records])
        components = principal_components(embeddings, 2)
        pc1_spearman = abs_spearman(components[:, 0], true)
        self.log("test/pc1_spearman", pc1_spearman, sync_dist=True)  # every rank holds all rows: the same value
        if self.embedding_plot and self.trainer.is_global_zero:
            title = f"CoReEcho stage {self.stage} test embeddings"
            log_figure(self, "test/embeddings", embedding_figure(embeddings, true, components, title))
        return {"pc1_spearman": pc1_spearman, "stage": self.stage}

    def summary_line(self, summary: dict[str, Any]) -> str:
        return (
            super().summary_line(summary) + f"; |Spearman(PC1, EF)| = {summary.get('pc1_spearman', float('nan')):.3f}"
        )


# ---------------------------------------------------------------------- embedding analysis


def principal_components(embeddings: np.ndarray, count: int = 2) -> np.ndarray:
    """Scores ``(N, count)`` of the embeddings on their first principal components (SVD of the centred data)."""
    centred = embeddings - embeddings.mean(0, keepdims=True)
    left, singular, _ = np.linalg.svd(centred, full_matrices=False)
    scores = left[:, :count] * singular[:count]
    if scores.shape[1] < count:  # fewer dimensions than asked: pad with zeros so plots still work
        scores = np.pad(scores, ((0, 0), (0, count - scores.shape[1])))
    return scores


def abs_spearman(values: np.ndarray, ef: np.ndarray) -> float:
    """|Spearman rank correlation| (a principal component's sign is arbitrary); 0 when undefined."""
    from scipy.stats import spearmanr

    rho = spearmanr(values, ef).statistic
    return float(abs(rho)) if np.isfinite(rho) else 0.0


def embedding_figure(embeddings: np.ndarray, ef: np.ndarray, components: np.ndarray, title: str = ""):
    """2-D maps of per-video embeddings coloured by EF: PCA, plus UMAP when ``umap-learn`` is importable."""
    from echo_modules.common.plotting import new_figure

    try:
        import umap  # optional: not an EchoLab dependency
    except ImportError:
        umap = None
    panels = [("PCA", components)]
    if umap is not None and len(embeddings) > 5:
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(embeddings) - 1), random_state=0)
        panels.append(("UMAP", reducer.fit_transform(embeddings)))
    figure, axes = new_figure(len(panels), width=4.8)
    for axis, (name, points) in zip(axes, panels):
        scatter = axis.scatter(points[:, 0], points[:, 1], c=ef, cmap="viridis", s=10)
        axis.set(title=f"{name} {title}".strip(), xlabel=f"{name} 1", ylabel=f"{name} 2")
        figure.colorbar(scatter, ax=axis, label="true EF (%)")
    figure.tight_layout()
    return figure
