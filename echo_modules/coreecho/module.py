"""CoReEcho (Maani et al., MICCAI 2024): continuous representations for EF regression from 2D+time echo.

Stage 1 ("RnC + L1SG"): the encoder learns only from the Rank-N-Contrast loss over two views (clips) per video, so
its embedding space is ordered by EF; a light regressor learns EF with L1 from the *detached* features at the same
time. Stage 2 (MLP probing): the encoder is frozen (eval mode, no gradient) and the regressor is trained again with L1.
Evaluation averages the predictions of several clips per video, as the paper does.
"""

from __future__ import annotations

import math
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
from torchmetrics import SumMetric

from datamodules.errors import ConfigError
from echo_modules.common.metrics import ef_metrics
from echo_modules.common.module import EchoModule, average_clip_predictions, gather_lists, save_test_summary, write_csv
from echo_modules.common.plotting import ef_agreement_figure, log_figure
from echo_modules.coreecho.heads import ProjectionHead, RegressionHead
from echo_modules.coreecho.losses import distributed_rank_n_contrast_loss

#: state-dict prefixes a stage-2 run takes from the stage-1 checkpoint
STAGE1_PREFIXES = ("encoder.", "projector.", "regressor.")


class CoReEcho(EchoModule):
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
        """
        super().__init__()
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
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.predictions_csv = predictions_csv
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
        self.register_buffer("train_ef_mean", torch.tensor(math.nan))
        self.val_metrics = ef_metrics("val/")
        self.val_videos = SumMetric()
        self.test_metrics = ef_metrics("test/")
        self.test_mean_predictor = ef_metrics("test/mean_predictor_")
        self._collected: list[tuple] = []

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

    def on_fit_start(self) -> None:
        if self.trainer.global_step != 0:  # resumed: weights come from the checkpoint
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        mean = getattr(datamodule, "train_ef_mean", math.nan)
        if math.isfinite(mean):
            self.train_ef_mean.fill_(mean)
        if self.stage == 2:
            self._load_stage1()
        elif math.isfinite(mean):
            with torch.no_grad():
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

    def configure_optimizers(self) -> Any:
        regressor = {"params": list(self.regressor.parameters())}
        if self.regressor_lr is not None:
            regressor["lr"] = self.regressor_lr
        groups = [regressor]
        if self.stage == 1:  # stage 2 optimises the regressor only
            regressor_ids = {id(p) for p in regressor["params"]}
            others = [p for p in self.parameters() if p.requires_grad and id(p) not in regressor_ids]
            groups.insert(0, {"params": others})
        optimizer = self.optimizer(groups)
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler(optimizer)}

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-clip predictions, per-video mean predictions and per-video mean embeddings."""
        features = self.encode(batch["video"]).float()
        clip_predictions = self.regressor(features).squeeze(-1).float()
        videos = len(batch["ef"])
        predictions = average_clip_predictions(clip_predictions, batch["clip_owner"], videos)
        embeddings = average_clip_predictions(features, batch["clip_owner"], videos)
        return clip_predictions, predictions, embeddings

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, prediction, _ = self._evaluate(batch)
        self.val_metrics.update(prediction, batch["ef"])
        self.val_videos.update(torch.ones_like(prediction).sum())
        self.log_dict(self.val_metrics, prog_bar=True, batch_size=len(prediction))
        self.log("val/num_videos", self.val_videos, batch_size=len(prediction))

    def on_test_epoch_start(self) -> None:
        self._collected = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, prediction, embeddings = self._evaluate(batch)
        self.test_metrics.update(prediction, batch["ef"])
        self.log_dict(self.test_metrics, batch_size=len(prediction))
        if math.isfinite(self.train_ef_mean.item()):
            constant = torch.full_like(prediction, self.train_ef_mean.item())
            self.test_mean_predictor.update(constant, batch["ef"])
            self.log_dict(self.test_mean_predictor, batch_size=len(prediction))
        self._collected += zip(
            batch["filename"], prediction.tolist(), batch["ef"].tolist(), embeddings.cpu().numpy().astype(np.float32)
        )

    def on_test_epoch_end(self) -> None:
        rows = gather_lists(self._collected)
        self._collected = []
        if len(rows) < 3:
            return
        predicted = np.array([r[1] for r in rows])
        true = np.array([r[2] for r in rows])
        embeddings = np.stack([r[3] for r in rows])
        components = principal_components(embeddings, 2)
        pc1_spearman = abs_spearman(components[:, 0], true)
        self.log("test/pc1_spearman", pc1_spearman, sync_dist=True)  # every rank holds all rows: the same value
        if not self.trainer.is_global_zero:
            return
        title = f"CoReEcho stage {self.stage} test"
        log_figure(self, "test/ef_agreement", ef_agreement_figure(predicted, true, title))
        if self.embedding_plot:
            log_figure(self, "test/embeddings", embedding_figure(embeddings, true, components, f"{title} embeddings"))
        mae = float(np.abs(predicted - true).mean())
        baseline = float(np.abs(self.train_ef_mean.item() - true).mean())
        summary = {
            "test_mae": mae,
            "test_rmse": float(np.sqrt(np.square(predicted - true).mean())),
            "test_r2": float(1 - np.square(predicted - true).sum() / np.square(true - true.mean()).sum()),
            "mean_predictor_mae": baseline,
            "ratio": mae / baseline,
            "pc1_spearman": pc1_spearman,
            "videos": len(rows),
            "stage": self.stage,
        }
        rank_zero_info(
            f"Test EF MAE {mae:.2f} over {len(rows)} videos; always predicting the training mean "
            f"({self.train_ef_mean.item():.1f}%) gives {baseline:.2f} (ratio {mae / baseline:.2f}); "
            f"|Spearman(PC1, EF)| = {pc1_spearman:.3f}"
        )
        save_test_summary(self.run_dir, summary)

    # ------------------------------------------------------------------ prediction

    def on_predict_epoch_start(self) -> None:
        self._collected = []

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        clip_predictions, prediction, _ = self._evaluate(batch)
        owner, videos = batch["clip_owner"], len(batch["ef"])
        deviations = clip_predictions - prediction[owner]
        spread = average_clip_predictions(deviations.square(), owner, videos).sqrt()  # population std over clips
        counts = torch.bincount(owner, minlength=videos)
        self._collected += zip(
            batch["filename"], prediction.tolist(), spread.tolist(), counts.tolist(), batch["ef"].tolist()
        )
        return prediction

    def on_predict_epoch_end(self) -> None:
        rows = gather_lists(self._collected)
        self._collected = []
        if not self.trainer.is_global_zero:
            return
        table = [
            [name, f"{predicted:.3f}", f"{spread:.3f}", clips, "" if math.isnan(true) else f"{true:.3f}"]
            for name, predicted, spread, clips, true in sorted(rows)
        ]
        header = ["FileName", "EF_pred", "EF_clip_std", "num_clips", "EF_true"]
        path = write_csv(self.predictions_csv or self.run_dir / "predictions.csv", header, table)
        rank_zero_info(f"Wrote {len(rows)} EF predictions to {path}")


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
    import matplotlib.pyplot as plt

    try:
        import umap  # optional: not an EchoLab dependency
    except ImportError:
        umap = None
    panels = [("PCA", components)]
    if umap is not None and len(embeddings) > 5:
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(embeddings) - 1), random_state=0)
        panels.append(("UMAP", reducer.fit_transform(embeddings)))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4), squeeze=False)
    for axis, (name, points) in zip(axes[0], panels):
        scatter = axis.scatter(points[:, 0], points[:, 1], c=ef, cmap="viridis", s=10)
        axis.set(title=f"{name} {title}".strip(), xlabel=f"{name} 1", ylabel=f"{name} 2")
        figure.colorbar(scatter, ax=axis, label="true EF (%)")
    figure.tight_layout()
    return figure
