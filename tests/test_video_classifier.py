"""VideoClassifier: losses and clip averaging against naive references, every batch format, and a real fit that must
tell phantom PAH-like hearts from normal ones."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from echo_modules.common import TinyVideoEncoder
from echo_modules.video_classifier import VideoClassifier
from tests.helpers import tiny_data_options


class MeanEncoder(nn.Module):
    """A transparent encoder: the clip's mean intensity, so logits are predictable."""

    out_features = 1

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return video.mean(dim=(1, 2, 3, 4))[:, None]


def test_binary_loss_ignores_unknown_targets():
    model = VideoClassifier(MeanEncoder())
    logits = torch.tensor([0.3, -1.2, 2.0, 0.1])
    targets = torch.tensor([1, 0, -1, 1])
    expected = F.binary_cross_entropy_with_logits(logits[[0, 1, 3]], torch.tensor([1.0, 0.0, 1.0]))
    assert torch.allclose(model.loss(logits, targets), expected)
    assert model.loss(logits, torch.full((4,), -1)) == 0


def test_multiclass_and_multilabel_heads():
    multiclass = VideoClassifier(MeanEncoder(), num_classes=3)
    logits = torch.randn(4, 3)
    targets = torch.tensor([0, 2, -1, 1])
    assert torch.allclose(multiclass.loss(logits, targets), F.cross_entropy(logits[[0, 1, 3]], targets[[0, 1, 3]]))
    assert multiclass(torch.randn(2, 1, 4, 8, 8)).shape == (2, 3)
    multilabel = VideoClassifier(MeanEncoder(), num_classes=7, multilabel=True, target="wall_motion")
    logits, targets = torch.randn(2, 7), torch.tensor([[0, 1, 0, -1, 1, 0, 0], [-1] * 7])
    known = targets != -1
    assert torch.allclose(
        multilabel.loss(logits, targets), F.binary_cross_entropy_with_logits(logits[known], targets[known].float())
    )


def test_evaluation_averages_clip_probabilities_per_video():
    model = VideoClassifier(MeanEncoder())
    with torch.no_grad():
        model.head[1].weight.fill_(1.0)
        model.head[1].bias.zero_()
    levels = torch.tensor([0.5, -1.0, 2.0])  # three clips: two of video 0, one of video 1
    video = levels[:, None, None, None, None].expand(3, 1, 2, 4, 4).clone()
    batch = {
        "video": video,
        "clip_owner": torch.tensor([0, 0, 1]),
        "label": torch.tensor([1, 0]),
        "filename": ["a", "b"],
    }
    probabilities = model._video_probabilities(batch)
    expected = torch.stack([levels[:2].sigmoid().mean(), levels[2].sigmoid()])
    assert torch.allclose(probabilities, expected)


def test_training_inputs_from_plain_multiview_and_paired_batches():
    model = VideoClassifier(MeanEncoder())
    plain = {"video": torch.randn(2, 1, 4, 8, 8), "label": torch.tensor([0, 1])}
    assert model._training_inputs(plain)[0].shape == (2, 1, 4, 8, 8)
    views = {"video": torch.randn(2, 3, 1, 4, 8, 8), "label": torch.tensor([0, 1])}
    video, targets = model._training_inputs(views)
    assert video.shape == (6, 1, 4, 8, 8) and targets.tolist() == [0, 0, 0, 1, 1, 1]
    paired = {
        "normal_video": torch.randn(2, 1, 4, 8, 8),
        "abnormal_video": torch.randn(2, 1, 4, 8, 8),
        "normal_label": torch.zeros(2, dtype=torch.long),
        "abnormal_label": torch.ones(2, dtype=torch.long),
    }
    video, targets = model._training_inputs(paired)
    assert video.shape == (4, 1, 4, 8, 8) and targets.tolist() == [0, 0, 1, 1]


@pytest.mark.slow
def test_fit_separates_phantom_pah_from_normal_better_than_the_shortcut(tmp_path):
    """A tiny classifier trained for seconds on phantom CardiacNet-PAH data beats, on the same TEST split, the
    anatomy-free shortcut (logistic on coarse-grid statistics) and chance; an untrained twin does not. The data is
    the default phantom with marked PAH (severity 0.7-1, a gentler setting than the default mostly-mild mix) so a
    seconds-long fit can find it."""
    from datamodules.cardiacnet import CardiacNetDataModule
    from datamodules.phantom.cardiacnet_writer import write_cardiacnet_dataset
    from datamodules.phantom.shortcuts import disease_baselines, learned_disease

    root = write_cardiacnet_dataset(
        tmp_path / "CardiacNet", 60, seed=3, size_range=(80, 112), num_frames_range=(16, 40), severity_range=(0.7, 1.0)
    )
    split_fractions = (0.6, 0.1, 0.3)
    baselines = disease_baselines(root, split_fractions=split_fractions)  # the DataModule's split: same TEST videos
    L.seed_everything(0)
    data = CardiacNetDataModule(
        str(root), **tiny_data_options(tmp_path / "cache", period=2, batch_size=8, split_fractions=split_fractions)
    )

    def classifier() -> VideoClassifier:
        return VideoClassifier(
            TinyVideoEncoder(in_channels=1, width=8, depth=3),
            optimizer=lambda parameters: torch.optim.AdamW(parameters, lr=3e-3),
        )

    def trainer(name: str, epochs: int) -> L.Trainer:
        return L.Trainer(
            accelerator="cpu",
            max_epochs=epochs,
            limit_val_batches=0,  # no per-epoch validation: the test split decides
            default_root_dir=tmp_path,
            logger=L.pytorch.loggers.CSVLogger(tmp_path, name=name),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )

    model = classifier()
    fit = trainer("logs", 12)
    fit.fit(model, data)
    results = fit.test(model, data, verbose=False)[0]
    L.seed_everything(1)
    untrained = trainer("untrained", 0).test(classifier(), data, verbose=False)[0]["test/auroc"]
    report = {"model": results["test/auroc"], "untrained": untrained, "mean_predictor": 0.5, **baselines}
    assert len(data.records["TEST"]) == baselines["num_test"] == 18
    assert learned_disease(results["test/auroc"], baselines), report  # >= 0.75 and 0.1 above the shortcut
    assert not learned_disease(untrained, baselines), report  # the control: the same check fails an untrained model
    summary = json.loads((tmp_path / "logs" / "version_0" / "test_summary.json").read_text())
    assert summary["videos"] == 18 and summary["auroc"] == pytest.approx(results["test/auroc"])
