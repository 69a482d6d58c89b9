"""Segmenter2D pieces that need no fit: the networks' shapes (own U-Net and a timm encoder with random init), the
loss at a perfect prediction, torchmetrics Dice/Hausdorff per structure, and whole-sequence predict writing NIfTI."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch

from echo_modules.anatomical_vae.mask_io import read_masks
from echo_modules.segmentation import CamusFramesDataModule, Segmenter2D, TimmUNet2D, UNet2D


@pytest.mark.parametrize("network", [UNet2D(1, 4, 8, 4), TimmUNet2D("resnet18", 1, 4, pretrained=False)])
def test_networks_map_frames_to_class_logits(network):
    logits = network(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 4, 64, 64)


def test_loss_is_lowest_at_the_truth():
    model = Segmenter2D(UNet2D(1, 4, 8, 3))
    masks = torch.randint(0, 4, (2, 16, 16))
    perfect = torch.nn.functional.one_hot(masks, 4).permute(0, 3, 1, 2).float() * 30
    assert model._loss(perfect, masks) < 1e-3 < model._loss(torch.zeros_like(perfect), masks)


def test_predict_writes_every_sequence_whole_and_test_reports_per_structure(tmp_path):
    from datamodules.phantom.camus_writer import write_camus_dataset

    data = write_camus_dataset(tmp_path / "CAMUS", 4, seed=2, size=64, split_fractions=(0.5, 0.0, 0.5))
    datamodule = CamusFramesDataModule(str(data), frame_size=64, batch_size=8, predict_split="TEST")
    L.seed_everything(0)
    model = Segmenter2D(UNet2D(1, 4, 8, 3), predictions_dir=str(tmp_path / "pred"), predict_chunk=5)
    # 40 steps (about a second): an untrained network predicts no structure, whose Hausdorff distance is inf
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False, max_steps=40,
              limit_val_batches=0, default_root_dir=tmp_path).fit(model, datamodule)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    outputs = trainer.predict(model, datamodule)
    sequences = datamodule.split("TEST")
    assert datamodule.sequences[0].split != "TEST"  # the TEST sequences are not the first ones of the folder
    assert [o[0].frames for o in outputs] == [len(s.masks) for s in sequences]
    for sequence in sequences:  # each file holds its own sequence's segmentation (not another split's)
        masks, spacing = read_masks(tmp_path / "pred" / sequence.patient / f"{sequence.name}_half_sequence_gt.nii.gz")
        images = (torch.from_numpy(sequence.images.astype(np.float32)) - datamodule.norm_mean) / datamodule.norm_std
        np.testing.assert_array_equal(masks, model.eval().segment(images[:, None]).numpy())
        assert np.allclose(spacing, sequence.spacing, rtol=1e-4)
        assert (tmp_path / "pred" / sequence.patient / f"Info_{sequence.view}.cfg").is_file()
    listed = (tmp_path / "predictions.csv").read_text().splitlines()  # the module base's PredictionWriter
    assert listed[0] == "FileName,patient,frames,mask_file" and len(listed) == len(sequences) + 1
    results = trainer.test(model, datamodule, verbose=False)[0]
    assert {f"test/dice_{s}" for s in ("lv", "myo", "la")} <= set(results)
    assert {f"test/hausdorff_{s}" for s in ("lv", "myo", "la")} <= set(results)
    # in mm with each frame's spacing: between the pixel distance times the smallest and the largest spacing
    spacings = np.array([s.spacing for s in sequences])
    assert np.isfinite(results["test/hausdorff_lv"]), results
    ratio = results["test/hausdorff_mm_lv"] / results["test/hausdorff_lv"]
    assert spacings.min() * 0.999 <= ratio <= spacings.max() * 1.001 and abs(spacings.mean() - 1) > 0.05, (
        ratio,
        spacings,
    )
    summary = json.loads((tmp_path / "test_summary.json").read_text())  # written by the module base's hook
    assert summary["test/dice_lv"] == pytest.approx(results["test/dice_lv"])
