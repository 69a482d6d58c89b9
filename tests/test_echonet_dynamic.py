"""The EchoNet-Dynamic reader on real phantom files: round trip, clip sampling, every quirk of the real release."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from datamodules.echonet_dynamic import EchoNetDynamicDataModule, read_volume_tracings
from datamodules.errors import ConfigError, DataError
from datamodules.tracings import mask_from_tracing, tracing_area
from datamodules.transforms import apply_to_clip, echonet_train_transforms


def make(data_dir, **kwargs) -> EchoNetDynamicDataModule:
    options = dict(clip_length=8, period=2, frame_size=112, channels=3, batch_size=4, num_workers=0, num_eval_clips=3)
    options.update(kwargs)
    module = EchoNetDynamicDataModule(str(data_dir), **options)
    module.prepare_data()
    module.setup("fit")
    return module


def test_round_trip_ef_indices_and_masks(phantom_echonet):
    module = make(phantom_echonet)
    files = pd.read_csv(phantom_echonet / "FileList.csv").set_index("FileName")
    tracings = read_volume_tracings(phantom_echonet / "VolumeTracings.csv")
    records = [r for split in ("TRAIN", "VAL", "TEST") for r in module.records[split]]
    assert len(records) == len(files)
    for record in records:
        row = files.loc[record.filename]
        assert record.split == row["Split"]
        assert record.ef == pytest.approx(row["EF"])
        assert record.num_frames == row["NumberOfFrames"]
        frames = tracings[record.filename]
        assert {record.ed_index, record.es_index} == set(frames)  # both traced frames, told apart by area:
        assert tracing_area(frames[record.ed_index]) > tracing_area(frames[record.es_index])
    dataset = module.make_dataset(module.records["TRAIN"], train=False)
    item = dataset[0]
    record = module.records["TRAIN"][0]
    expected = mask_from_tracing(record.ed_tracing, record.height, record.width)
    assert torch.equal(item["ed_mask"], torch.from_numpy(expected.astype(np.int64)))
    assert item["ed_mask"].sum() > item["es_mask"].sum() > 0  # ED cavity is larger than ES
    assert item["has_masks"]


def test_phantom_ed_es_match_simulator_truth(phantom_echonet):
    """The traced frames the reader calls ED/ES are the simulator's ED/ES frames."""
    truth_path = phantom_echonet / "PhantomTruth.csv"
    truth = pd.read_csv(truth_path).set_index("FileName")
    module = make(phantom_echonet)
    for record in module.records["TRAIN"] + module.records["TEST"]:
        assert record.ed_index == truth.loc[record.filename, "EDFrame"]
        assert record.es_index == truth.loc[record.filename, "ESFrame"]


def test_train_batch_format_and_determinism(phantom_echonet):
    module = make(phantom_echonet, seed=3)
    raw = next(iter(module.train_dataloader()))
    assert raw["video"].dtype == torch.uint8 and raw["video"].shape == (4, 1, 8, 112, 112)  # grey bytes to move
    batch = module.on_after_batch_transfer(dict(raw), 0)  # what the LightningModule receives
    assert batch["video"].shape == (4, 3, 8, 112, 112) and batch["video"].dtype == torch.float32
    dataset = module.make_dataset(module.records["TRAIN"], train=True)
    order = [
        module.records["TRAIN"].index(r)
        for name in batch["filename"]
        for r in module.records["TRAIN"]
        if r.filename == name
    ]
    direct = torch.stack([dataset[(i, 0)]["video"] for i in order])  # normalised in the dataset: the same numbers
    assert torch.allclose(direct, batch["video"], atol=1e-5)
    assert batch["frames_mask"].shape == (4, 8) and batch["frames_mask"].all()
    assert batch["ef"].shape == (4,) and batch["ed_mask"].shape == (4, 112, 112)
    assert torch.equal(batch["clip_owner"], torch.arange(4))
    again = next(iter(make(phantom_echonet, seed=3).train_dataloader()))
    assert torch.equal(raw["video"], again["video"])  # same seed, same clips
    dataset = module.make_dataset(module.records["TRAIN"], train=True)
    assert not torch.equal(dataset[(0, 0)]["video"], dataset[(0, 1)]["video"])  # a new epoch draws a new clip
    assert module.records["TRAIN"][0].num_frames > 15  # (so that a new clip start exists)


def test_normalisation_from_training_split_is_cached(phantom_echonet):
    module = make(phantom_echonet)
    stats_files = list(module.cache_dir.glob("normalisation-*.json"))
    assert len(stats_files) >= 1
    stats = json.loads(stats_files[0].read_text())
    assert 5 < stats["mean"] < 120 and stats["std"] > 5
    video = module.make_dataset(module.records["TRAIN"], train=False)[0]["video"]
    assert abs(video.mean().item()) < 1.0 and 0.3 < video.std().item() < 3.0


def test_evaluation_clips_and_padding(phantom_echonet):
    module = make(phantom_echonet, clip_length=8, period=2, num_eval_clips=None)
    loader = module.val_dataloader()
    batch = next(iter(loader))
    records = module.records["VAL"][: len(batch["ef"])]
    expected_clips = [r.num_frames - 14 for r in records]  # every start whose 15-frame span fits
    assert batch["video"].shape[0] == sum(expected_clips)
    assert torch.equal(torch.bincount(batch["clip_owner"]), torch.tensor(expected_clips))
    long_clip = make(phantom_echonet, clip_length=64, period=4, num_eval_clips=2)  # 253 frames > any video
    item = long_clip.make_dataset(long_clip.records["VAL"], train=False)[0]
    num_frames = long_clip.records["VAL"][0].num_frames
    assert item["video"].shape[0] == 1  # a short video yields one padded clip
    assert item["frames_mask"][0].sum() == (num_frames + 3) // 4
    assert torch.all(item["video"][0][:, ~item["frames_mask"][0]] == 0)  # padding is zero after normalisation


def test_quirks_skip_and_report(quirky_echonet):
    root = quirky_echonet["root"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = make(root)
    messages = [str(w.message) for w in caught]
    names = {r.filename for split in module.records.values() for r in split}
    assert quirky_echonet["truncated"] not in names
    assert quirky_echonet["missing_video"] not in names
    assert "outside" not in " ".join(names)
    # the AVI cut to a third of its bytes decodes ~1/3 of its frames without a decoder error: it is a bad video by
    # the frame-count rule (FileList's NumberOfFrames), not only when its traced frames happen to be lost
    assert any("skipped 1 of" in m and quirky_echonet["truncated"] in m and "truncated: decodes" in m for m in messages)
    assert sum("have no video" in m for m in messages) == 1  # reported once, with the count
    assert any("resolves outside" in m for m in messages)
    no_tracings = [r for s in module.records.values() for r in s if r.filename == quirky_echonet["no_tracings"]]
    assert no_tracings and not no_tracings[0].has_tracings and no_tracings[0].ed_index == -1
    # lower-case split values still split
    assert all(len(module.records[s]) > 0 for s in ("TRAIN", "VAL", "TEST"))
    # nothing crashes mid-epoch: iterate the whole training set
    for _ in module.train_dataloader():
        pass


def test_quirks_raise_names_the_file(quirky_echonet):
    root = quirky_echonet["root"]
    with pytest.raises(DataError, match="outside.avi' resolves outside"):
        make(root, on_bad_video="raise")
    files = pd.read_csv(root / "FileList.csv")
    files[~files["FileName"].str.contains("outside")].to_csv(root / "FileList.csv", index=False)
    with pytest.raises(DataError, match=f"{quirky_echonet['truncated']}.avi: .*frames"):
        make(root, on_bad_video="raise")


def test_missing_data_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        EchoNetDynamicDataModule(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="FileList.csv"):
        EchoNetDynamicDataModule(str(tmp_path))


def test_augmentation_is_identical_for_all_frames_and_masks():
    frames = np.repeat(np.arange(64 * 64, dtype=np.uint8).reshape(1, 64, 64), 6, axis=0)
    masks = np.stack([np.eye(64, dtype=np.uint8), np.eye(64, dtype=np.uint8)])
    transform = echonet_train_transforms(frame_size=64, pad=8, rotate_limit=15)
    out_frames, out_masks = apply_to_clip(transform, frames, masks, seed=1)
    assert out_frames.shape == (6, 64, 64) and out_masks.shape == (2, 64, 64)
    assert all(np.array_equal(out_frames[0], f) for f in out_frames)
    assert np.array_equal(out_masks[0], out_masks[1])
    shifted, _ = apply_to_clip(transform, frames, masks, seed=2)
    assert not np.array_equal(shifted[0], out_frames[0])


def test_pediatric_style_file_list(phantom_echonet, tmp_path):
    """EchoNet-Pediatric: FileName keeps .avi, Split is a fold number, no FPS/NumberOfFrames columns."""
    import shutil

    root = tmp_path / "Pediatric"
    shutil.copytree(phantom_echonet, root, ignore=shutil.ignore_patterns(".echolab_cache"))
    files = pd.read_csv(root / "FileList.csv")
    files["FileName"] = files["FileName"] + ".avi"
    files["Split"] = np.arange(len(files)) % 10
    files.drop(columns=["FPS", "NumberOfFrames", "FrameHeight", "FrameWidth"]).to_csv(
        root / "FileList.csv", index=False
    )
    module = make(root)
    assert len(module.records["TEST"]) == len(files) // 10 and len(module.records["VAL"]) == len(files) // 10
    assert all(r.fps > 0 and r.num_frames > 0 for r in module.records["TRAIN"])
