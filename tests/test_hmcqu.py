"""The HMC-QU reader on real phantom files: the spreadsheet (xlsx without openpyxl, CSV), cycles, labels, splits."""

from __future__ import annotations

import shutil
import warnings

import cv2
import numpy as np
import pandas as pd
import pytest
import scipy.io
import torch

from datamodules.errors import ConfigError, DataError
from datamodules.hmcqu import HMCQUDataModule, patient_of, read_table, read_xlsx_first_sheet
from datamodules.phantom.hmcqu_writer import ABNORMAL_SEGMENT, write_hmcqu_dataset
from datamodules.video import decode_video
from tests.helpers import tiny_data_options

NUM_VIDEOS = 20


@pytest.fixture(scope="module")
def hmcqu(tmp_path_factory):
    return write_hmcqu_dataset(tmp_path_factory.mktemp("hmcqu") / "HMC-QU", NUM_VIDEOS, seed=0, size=64, mask_size=48)


def make(data_dir, tmp_path, **kwargs) -> HMCQUDataModule:
    module = HMCQUDataModule(str(data_dir), **tiny_data_options(tmp_path / "cache", period=1) | kwargs)
    module.prepare_data()
    module.setup("fit")
    return module


def all_records(module):
    return [r for split in ("TRAIN", "VAL", "TEST") for r in module.records[split]]


def test_xlsx_is_read_without_openpyxl_and_matches_a_csv_export(hmcqu, tmp_path):
    table = read_xlsx_first_sheet(hmcqu / "HMC_QU.xlsx")
    assert list(table.columns)[:3] == ["ECHO", "SEG1", "SEG2"] and len(table) == NUM_VIDEOS
    assert table["ECHO"].iloc[0] == "ES0001 _4CH_1" and set(
        table["LV Wall Ground-truth Segmentation Masks"].dropna()
    ) == {"ü"}
    csv_root = write_hmcqu_dataset(tmp_path / "csv", NUM_VIDEOS, seed=0, size=64, mask_size=48, table_format="csv")
    exported = read_table(csv_root / "HMC_QU.csv")
    pd.testing.assert_frame_equal(
        table.drop(columns="LV Wall Ground-truth Segmentation Masks"),
        exported.drop(columns="LV Wall Ground-truth Segmentation Masks"),
        check_dtype=False,
    )
    assert len(all_records(make(csv_root, tmp_path))) == NUM_VIDEOS


def test_cycle_labels_and_masks_round_trip(hmcqu, tmp_path):
    module = make(hmcqu, tmp_path)
    truth = pd.read_csv(hmcqu / "PhantomTruth.csv").set_index("ECHO")
    records = all_records(module)
    assert len(records) == NUM_VIDEOS
    for record in records:
        row = truth.loc[record.filename]
        assert record.extra["cycle_start"] == row["EDFrame"]  # Reference Frame is 1-based
        assert record.num_frames == row["NextEDFrame"] - row["EDFrame"] + 1  # End of Cycle inclusive
        expected = [int(row["Label"] and segment == ABNORMAL_SEGMENT) for segment in range(1, 8)]
        assert record.extra["wall_motion"] == expected and record.label == row["Label"]
    # clip frames come from the cycle: frame 0 of a record is the video's Reference Frame
    dataset = module.make_dataset(records, train=False)
    record = records[0]
    decoded, _ = decode_video(record.path)
    expected = decoded[[record.extra["cycle_start"], record.extra["cycle_start"] + 3]]
    expected = np.stack([cv2.resize(f, (32, 32), interpolation=cv2.INTER_AREA) for f in expected])  # cached resized
    assert np.array_equal(dataset._frames(record, np.array([0, 3])), expected)
    item = dataset[0]
    assert (
        item["wall_motion"].shape == (7,)
        and item["ed_index"] == 0
        and item["label"] == truth.loc[record.filename, "Label"]
    )
    with_mask = next(i for i, r in enumerate(records) if r.extra["mask_path"] is not None)
    item = dataset[with_mask]
    wall = scipy.io.loadmat(records[with_mask].extra["mask_path"])["predicted"]
    assert item["has_ed_mask"] and set(item["ed_mask"].unique().tolist()) == {0, 2}  # LV wall -> CAMUS myocardium
    assert torch.equal(
        item["ed_mask"],
        torch.from_numpy(cv2.resize(wall[0] * 2, (32, 32), interpolation=cv2.INTER_NEAREST).astype(np.int64)),
    )
    without = [i for i, r in enumerate(records) if r.extra["mask_path"] is None]
    assert without and not dataset[without[0]]["has_ed_mask"] and dataset[without[0]]["ed_mask"].max() == 0


def test_batches_and_patient_split(hmcqu, tmp_path):
    module = make(hmcqu, tmp_path, seed=1)
    batch = next(iter(module.train_dataloader()))
    assert batch["video"].shape == (4, 1, 8, 32, 32) and batch["wall_motion"].shape == (4, 7)
    assert torch.equal(batch["label"], (batch["wall_motion"] == 1).any(1).long())
    val = next(iter(module.val_dataloader()))
    assert val["video"].shape[0] == len(val["clip_owner"]) and val["wall_motion"].shape[1] == 7
    by_patient: dict[str, set[str]] = {}
    for record in all_records(module):
        by_patient.setdefault(patient_of(record.filename), set()).add(record.split)
    assert any(sum(patient_of(r.filename) == p for r in all_records(module)) == 2 for p in by_patient)  # repeat visits
    assert all(len(splits) == 1 for splits in by_patient.values())  # ...never split across TRAIN/VAL/TEST


def test_quirks_and_bad_files(hmcqu, tmp_path):
    root = shutil.copytree(hmcqu, tmp_path / "copy", ignore=shutil.ignore_patterns(".echolab_cache"))
    table = read_table(root / "HMC_QU.xlsx")
    names = table["ECHO"].tolist()
    # the archive unpacks videos one folder deeper; column names with odd spacing; a row whose video is gone;
    # an unreadable mask file
    nested = root / "HMC-QU Echos" / "HMC-QU Echos"
    nested.mkdir()
    for video in (root / "HMC-QU Echos").glob("*.avi"):
        video.rename(nested / video.name)
    (nested / f"{names[1]}.avi").unlink()
    masks = sorted((root / "LV Ground-truth Segmentation Masks").glob("*.mat"))
    masks[2].write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    table = table.rename(columns={"Reference Frame": " Reference  Frame ", "SEG3": "seg3"})
    table.to_csv(root / "HMC_QU.csv", index=False)
    (root / "HMC_QU.xlsx").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = make(root, tmp_path)
    messages = " | ".join(str(w.message) for w in caught)
    assert len(all_records(module)) == NUM_VIDEOS - 1 and names[1] not in {r.filename for r in all_records(module)}
    assert "1 table rows have no video" in messages and masks[2].name in messages
    with pytest.raises(DataError, match=masks[2].name):
        make(root, tmp_path / "raise", on_bad_video="raise")
    table.drop(columns=["End of Cycle"]).to_csv(root / "HMC_QU.csv", index=False)
    with pytest.raises(DataError, match="HMC_QU.csv: needs ECHO, SEG1..SEG7, Reference Frame and End of Cycle"):
        make(root, tmp_path / "cols")
    with pytest.raises(ConfigError, match="HMC_QU.xlsx or HMC_QU.csv"):
        HMCQUDataModule(str(tmp_path))


def test_wall_motion_classifier_smoke(hmcqu, tmp_path):
    """The multilabel VideoClassifier runs on HMC-QU's 7 segment labels."""
    import lightning as L

    from echo_modules.common import TinyVideoEncoder
    from echo_modules.video_classifier import VideoClassifier

    module = HMCQUDataModule(str(hmcqu), **tiny_data_options(tmp_path / "cache"))
    model = VideoClassifier(
        TinyVideoEncoder(in_channels=1, width=4, depth=2), num_classes=7, multilabel=True, target="wall_motion"
    )
    trainer = L.Trainer(
        accelerator="cpu",
        fast_dev_run=2,
        logger=False,
        default_root_dir=tmp_path,  # the test's files (summary, figures) stay out of the checkout
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, module)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
