"""The CardiacNet reader on real phantom files: labels, crop-and-resize, padding, abnormal regions, pairs, splits."""

from __future__ import annotations

import shutil
import warnings

import cv2
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from datamodules.cardiacnet import CardiacNetDataModule
from datamodules.errors import ConfigError, DataError
from datamodules.nifti import content_box, crop_and_resize
from datamodules.phantom.cardiacnet_writer import write_cardiacnet_dataset
from tests.helpers import tiny_data_options

NUM_VIDEOS = 30


@pytest.fixture(scope="module")
def cardiacnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("cardiacnet") / "CardiacNet"
    write_cardiacnet_dataset(root, NUM_VIDEOS, seed=0, subset="PAH", size_range=(80, 128), num_frames_range=(10, 40))
    write_cardiacnet_dataset(root, 8, seed=1, subset="ASD", size_range=(64, 80), num_frames_range=(16, 24))
    return root


def make(data_dir, tmp_path, **kwargs) -> CardiacNetDataModule:
    options = tiny_data_options(tmp_path / "cache", frame_size=40, period=2) | kwargs
    module = CardiacNetDataModule(str(data_dir), **options)
    module.prepare_data()
    module.setup("fit")
    return module


def all_records(module):
    return [r for split in ("TRAIN", "VAL", "TEST") for r in module.records[split]]


def upright(path) -> np.ndarray:
    """Independent reading: nibabel (W, H[, T]) -> (T, H, W)."""
    array = np.asarray(nib.load(str(path)).dataobj)
    return array.T[None] if array.ndim == 2 else np.transpose(array, (2, 1, 0))


def test_labels_lengths_and_crop_round_trip(cardiacnet, tmp_path):
    module = make(cardiacnet, tmp_path)
    truth = pd.read_csv(cardiacnet / "CardiacNet-PAH" / "PhantomTruth.csv").set_index("Patient")
    records = all_records(module)
    assert len(records) == NUM_VIDEOS
    for record in records:
        row = truth.loc[record.filename]
        assert record.label == row["Label"] == int(record.filename.startswith("PAH/"))
        assert record.num_frames == row["NumberOfFrames"] and record.height == record.width == 40
    assert len({r.num_frames for r in records}) > 5  # lengths vary
    # the cache holds each video cut to the non-zero box of its first frame, then resized
    cache = module._cache()
    for record in records[:4]:
        original = upright(record.path)
        box = content_box(original[0])
        assert cache.crop_box(record.path) == box
        assert box[1] - box[0] < original.shape[1] and box[3] - box[2] < original.shape[2]  # the black border is gone
        expected = np.stack(
            [cv2.resize(f[box[0] : box[1], box[2] : box[3]], (40, 40), interpolation=cv2.INTER_AREA) for f in original]
        )
        assert np.array_equal(cache.frames(record.path), expected)


def test_short_videos_are_padded_and_long_ones_give_several_clips(cardiacnet, tmp_path):
    module = make(cardiacnet, tmp_path, clip_length=16, period=2)
    dataset = module.make_dataset(all_records(module), train=False)
    short = next(i for i, r in enumerate(dataset.records) if r.num_frames < 31)
    item = dataset[short]
    assert item["video"].shape[0] == 1 and item["frames_mask"][0].sum() == (dataset.records[short].num_frames + 1) // 2
    assert torch.all(item["video"][0][:, ~item["frames_mask"][0]] == 0)
    long = next(i for i, r in enumerate(dataset.records) if r.num_frames > 33)
    assert dataset[long]["video"].shape[0] == 2 and dataset[long]["frames_mask"].all()


def test_abnormal_region_reaches_batches(cardiacnet, tmp_path):
    module = make(cardiacnet, tmp_path)
    cache = module._cache()
    dataset = module.make_dataset(all_records(module), train=False)
    for index, record in enumerate(dataset.records):
        item = dataset[index]
        assert item["has_abnormal_region"]
        region = item["abnormal_region"]
        assert region.shape == (40, 40) and region.dtype == torch.bool
        assert bool(region.any()) == bool(record.label)  # only diseased videos have a planted region
        on_canvas = upright(record.extra["abnormal_path"])
        expected = crop_and_resize(on_canvas, cache.crop_box(record.path), 40, cv2.INTER_NEAREST)[0] > 0
        assert torch.equal(region, torch.from_numpy(expected))


def test_paired_training_items(cardiacnet, tmp_path):
    module = make(cardiacnet, tmp_path, paired=True, seed=2)
    batch = next(iter(module.train_dataloader()))
    assert batch["normal_video"].shape == batch["abnormal_video"].shape == (4, 1, 8, 40, 40)
    assert (batch["normal_label"] == 0).all() and (batch["abnormal_label"] == 1).all()
    assert all(name.startswith("Non-PAH/") for name in batch["normal_filename"])
    assert all(name.startswith("PAH/") for name in batch["abnormal_filename"])
    assert batch["abnormal_has_abnormal_region"].all() and batch["abnormal_abnormal_region"].flatten(1).any(1).all()
    plain = next(iter(make(cardiacnet, tmp_path, seed=2).train_dataloader()))  # plain labelled clips for classifiers
    assert plain["video"].shape == (4, 1, 8, 40, 40) and set(plain["label"].tolist()) <= {0, 1}


def test_patient_split_is_stratified_seeded_and_leak_free(cardiacnet, tmp_path):
    module = make(cardiacnet, tmp_path)
    splits = {split: [r.filename for r in records] for split, records in module.records.items()}
    names = [n for group in splits.values() for n in group]
    assert len(names) == len(set(names)) == NUM_VIDEOS
    for split, expected in (("TRAIN", 0.7), ("VAL", 0.1), ("TEST", 0.2)):
        labels = [r.label for r in module.records[split]]
        assert 0 < sum(labels) < len(labels)  # both classes in every split
        assert abs(len(labels) - expected * NUM_VIDEOS) <= 2  # not the public loader's 10% training split
    again = make(cardiacnet, tmp_path / "again")
    assert {s: [r.filename for r in again.records[s]] for s in splits} == splits
    other = make(cardiacnet, tmp_path / "other", split_seed=1)
    assert {s: [r.filename for r in other.records[s]] for s in splits} != splits


def test_asd_subset_layout_variants(cardiacnet, tmp_path):
    module = make(cardiacnet, tmp_path, subset="ASD", split_fractions=(0.5, 0.25, 0.25))
    assert len(all_records(module)) == 8 and {r.filename.split("/")[0] for r in all_records(module)} == {
        "ASD",
        "Non-ASD",
    }
    # data_dir may be the subset folder itself, class folders in another spelling
    root = shutil.copytree(cardiacnet / "CardiacNet-ASD", tmp_path / "asd-only")
    (root / "Non-ASD").rename(root / "non_asd")
    module = make(root, tmp_path / "b", subset="ASD", split_fractions=(0.5, 0.25, 0.25))
    assert sorted(r.label for r in all_records(module)) == sorted(
        r.label for r in all_records(make(cardiacnet, tmp_path / "c", subset="ASD", split_fractions=(0.5, 0.25, 0.25)))
    )
    with pytest.raises(ConfigError, match="CardiacNet-PAH"):
        CardiacNetDataModule(str(root), subset="PAH")


def test_truncated_video_is_skipped_with_a_count_or_raises_naming_it(cardiacnet, tmp_path):
    root = shutil.copytree(cardiacnet, tmp_path / "copy", ignore=shutil.ignore_patterns(".echolab_cache"))
    bad = root / "CardiacNet-PAH" / "PAH" / "003_image.nii.gz"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = make(root, tmp_path)
    assert len(all_records(module)) == NUM_VIDEOS - 1 and "PAH/003" not in {r.filename for r in all_records(module)}
    assert any("skipped 1 of" in str(w.message) and "003_image.nii.gz" in str(w.message) for w in caught)
    with pytest.raises(DataError, match="003_image.nii.gz"):
        make(root, tmp_path / "raise", on_bad_video="raise")


def test_without_decoded_cache_items_match(cardiacnet, tmp_path):
    cached = make(cardiacnet, tmp_path, mean=0.0, std=1.0)
    direct = make(cardiacnet, tmp_path / "direct", mean=0.0, std=1.0, decode_cache=False)
    first = cached.make_dataset(cached.records["VAL"], train=False)[0]["video"]
    assert torch.equal(first, direct.make_dataset(direct.records["VAL"], train=False)[0]["video"])
