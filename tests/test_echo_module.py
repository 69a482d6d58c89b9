"""The module base (EchoModule / EFModule): chunked multi-clip evaluation equals one pass, predictions go through the
one PredictionWriter, a non-finite loss stops the fit naming the step, and importing EchoLab leaves matplotlib alone."""

from __future__ import annotations

import lightning as L
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from datamodules.errors import DataError
from echo_modules import CoReEcho, EFRegressor, VideoClassifier
from echo_modules.common import TinyVideoEncoder
from echo_modules.common.module import run_in_chunks


class ChunkRecorder(nn.Module):
    """Wraps an encoder and records how many clips each forward saw."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.out_features, self.sizes = encoder, encoder.out_features, []

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(video))
        return self.encoder(video)


def _batch(clips_per_video: list[int], seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    total = sum(clips_per_video)
    return {
        "video": torch.randn(total, 1, 4, 16, 16, generator=generator),
        "clip_owner": torch.repeat_interleave(torch.arange(len(clips_per_video)), torch.tensor(clips_per_video)),
        "ef": torch.tensor([35.0, 60.0, 52.0][: len(clips_per_video)]),
        "label": torch.tensor([1, 0, 1][: len(clips_per_video)]),
        "filename": [f"video_{i}" for i in range(len(clips_per_video))],
    }


def _per_video(model: nn.Module, batch: dict) -> torch.Tensor:
    if isinstance(model, VideoClassifier):
        return model._video_probabilities(batch)
    clips, videos = model.video_outputs(batch)
    return torch.cat([videos["ef"][:, None], *(videos[k] for k in ("embedding",) if k in videos)], 1)


@pytest.mark.parametrize("method", [EFRegressor, CoReEcho, VideoClassifier])
def test_chunked_evaluation_equals_one_pass(method):
    torch.manual_seed(0)
    model = method(encoder=ChunkRecorder(TinyVideoEncoder(1, 4, 2)), eval_chunk_size=None).eval()
    batch = _batch([7, 1, 4])
    with torch.no_grad():
        whole = _per_video(model, batch)
        assert model.encoder.sizes == [12]
        model.encoder.sizes.clear()
        model.eval_chunk_size = 5
        chunked = _per_video(model, batch)
    assert model.encoder.sizes == [5, 5, 2]  # the control: it did run in chunks (a chunk crosses videos)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_run_in_chunks_concatenates_tuples_and_dicts():
    clips = torch.arange(10.0)[:, None]
    function = lambda x: {"a": x * 2, "b": (x, x.sum(1))}  # noqa: E731
    out = run_in_chunks(function, clips, 3)
    torch.testing.assert_close(out["a"], clips * 2)
    torch.testing.assert_close(out["b"][1], clips[:, 0])
    from dataclasses import dataclass

    @dataclass
    class Outputs:  # a method's per-clip record (CardiacNet's ClipEvaluation): fields concatenated, None kept
        scores: dict
        ef: torch.Tensor | None

    record = run_in_chunks(lambda x: Outputs({"s": x[:, 0]}, None), clips, 4)
    assert record.ef is None and torch.equal(record.scores["s"], clips[:, 0])
    with pytest.raises(Exception, match="positive"):
        EFRegressor(encoder=TinyVideoEncoder(1, 4, 2), eval_chunk_size=0)


class NaNAfter(L.Callback):
    """Poison the inputs of training batch ``index``: the loss becomes NaN there."""

    def __init__(self, index: int) -> None:
        self.index = index

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.index:
            batch["video"][0].fill_(float("nan"))


class ListData(L.LightningDataModule):
    def __init__(self, batches: list[dict]) -> None:
        super().__init__()
        self.batches = batches

    def train_dataloader(self):
        return DataLoader([dict(b) for b in self.batches], batch_size=None)

    def predict_dataloader(self):
        return DataLoader(self.batches, batch_size=None)

    def test_dataloader(self):
        return DataLoader(self.batches, batch_size=None)


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **kwargs,
    )  # fmt: skip


def _training_batch(seed: int) -> dict:
    batch = _batch([1, 1, 1], seed)
    return {"video": batch["video"], "ef": batch["ef"]}


def test_non_finite_loss_stops_the_fit_naming_the_step(tmp_path):
    model = EFRegressor(encoder=TinyVideoEncoder(1, 4, 2))
    data = ListData([_training_batch(seed) for seed in range(4)])
    with pytest.raises(DataError, match=r"non-finite training loss .* at global step 2 \(epoch 0, batch 2\)"):
        _trainer(tmp_path, max_epochs=1, callbacks=[NaNAfter(2)]).fit(model, data)
    control = EFRegressor(encoder=TinyVideoEncoder(1, 4, 2))  # the same fit without the poisoned batch finishes
    _trainer(tmp_path, max_epochs=1).fit(control, ListData([_training_batch(seed) for seed in range(4)]))
    assert control.trainer.global_step == 4


def test_predictions_are_written_by_the_prediction_writer(tmp_path):
    batch = _batch([3, 2, 1])
    model = VideoClassifier(encoder=TinyVideoEncoder(1, 4, 2), predictions_csv=str(tmp_path / "p.csv"))
    trainer = _trainer(tmp_path)
    trainer.predict(model, ListData([batch]))
    assert any(type(c).__name__ == "PredictionWriter" for c in trainer.callbacks)
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table.columns) == ["FileName", "prob_0", "target"] and list(table["FileName"]) == batch["filename"]
    ef = EFRegressor(encoder=TinyVideoEncoder(1, 4, 2), predictions_csv=str(tmp_path / "ef.csv"))
    _trainer(tmp_path).predict(ef, ListData([batch]))
    table = pd.read_csv(tmp_path / "ef.csv")
    assert list(table["num_clips"]) == [3, 2, 1] and (table["EF_clip_std"] >= 0).all()


def test_test_summary_comes_from_the_torchmetrics_the_test_logged(tmp_path):
    """test_summary.json holds what torchmetrics reduced (not a numpy recomputation), beside the mean predictor."""
    import json

    batches = [_batch([3, 2, 1], seed=0), _batch([2, 2], seed=1)]
    model = EFRegressor(encoder=TinyVideoEncoder(1, 4, 2))
    model.train_ef_mean.fill_(50.0)
    results = _trainer(tmp_path).test(model, ListData(batches), verbose=False)[0]
    summary = json.loads((tmp_path / "test_summary.json").read_text())
    assert summary["videos"] == 5 and summary["test_mae"] == pytest.approx(results["test/mae"], rel=1e-6)
    true = torch.cat([b["ef"] for b in batches])
    assert summary["mean_predictor_mae"] == pytest.approx((true - 50).abs().mean().item(), rel=1e-6)
    assert summary["ratio"] == pytest.approx(summary["test_mae"] / summary["mean_predictor_mae"])
    assert (tmp_path / "figures" / "test_ef_agreement.png").is_file()


def test_importing_the_plotting_helpers_leaves_the_matplotlib_backend_alone(monkeypatch):
    import importlib

    import matplotlib

    import echo_modules.common.plotting as plotting

    calls = []
    monkeypatch.setattr(matplotlib, "use", lambda *args, **kwargs: calls.append(args))
    importlib.reload(plotting)
    assert calls == []  # no backend switch at import (a notebook keeps its inline backend)
    figure = plotting.ef_agreement_figure([40.0, 55.0, 61.0], [42.0, 50.0, 65.0])
    assert type(figure).__name__ == "Figure" and len(figure.axes) == 2


def test_browser_videos_are_h264_yuv420p(tmp_path):
    """W&B plays videos in a browser: H.264 / yuv420p (OpenCV's mp4v, MPEG-4 part 2, does not play there)."""
    pytest.importorskip("av")
    import cv2
    import numpy as np

    from echo_modules.common.video_logging import video_codec, write_browser_video

    frames = np.random.default_rng(0).integers(0, 255, (6, 33, 47, 3), dtype=np.uint8)  # odd sizes: padded
    path = write_browser_video(tmp_path / "clip.mp4", frames, fps=8)
    assert video_codec(path) == ("h264", "yuv420p", 6)
    control = tmp_path / "mp4v.mp4"  # the writer W&B videos used before: not H.264
    writer = cv2.VideoWriter(str(control), cv2.VideoWriter_fourcc(*"mp4v"), 8, (48, 34), True)
    for frame in np.pad(frames, ((0, 0), (0, 1), (0, 1), (0, 0))):
        writer.write(frame)
    writer.release()
    assert video_codec(control)[0] != "h264"
