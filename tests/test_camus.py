"""The CAMUS reader on real phantom files in both release layouts: round trips, the three tasks, every quirk."""

from __future__ import annotations

import shutil
import warnings

import cv2
import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from datamodules.camus import CamusDataModule, read_info_cfg, split_patients
from datamodules.errors import ConfigError, DataError
from datamodules.nifti import decode_image_sequence, read_label_map
from datamodules.phantom.camus_writer import half_sequence_video, write_camus_dataset
from datamodules.phantom.simulator import LEFT_ATRIUM, LV_CAVITY
from tests.helpers import tiny_data_options

NUM_PATIENTS = 10
SIZE = 64


@pytest.fixture(scope="module")
def camus_nifti(tmp_path_factory):
    return write_camus_dataset(tmp_path_factory.mktemp("camus") / "CAMUS", NUM_PATIENTS, seed=0, size=SIZE)


@pytest.fixture(scope="module")
def camus_mhd(tmp_path_factory):
    return write_camus_dataset(tmp_path_factory.mktemp("camus19") / "CAMUS-2019", 4, seed=0, size=SIZE, layout="mhd")


def make(data_dir, tmp_path, **kwargs) -> CamusDataModule:
    module = CamusDataModule(str(data_dir), **tiny_data_options(tmp_path / "cache", frame_size=48) | kwargs)
    module.prepare_data()
    module.setup("fit")
    return module


def all_records(module):
    return [r for split in ("TRAIN", "VAL", "TEST") for r in module.records[split]]


def copy(dataset, tmp_path, name="CAMUS-copy"):
    return shutil.copytree(dataset, tmp_path / name, ignore=shutil.ignore_patterns(".echolab_cache"))


def test_nifti_round_trip_frames_indices_ef_and_split(camus_nifti, tmp_path):
    module = make(camus_nifti, tmp_path)
    truth = pd.read_csv(camus_nifti / "PhantomTruth.csv").set_index(["Patient", "View"])
    records = all_records(module)
    assert len(records) == 2 * NUM_PATIENTS
    official = {
        line: split
        for split, name in (("TRAIN", "training"), ("VAL", "validation"), ("TEST", "testing"))
        for line in (camus_nifti / "database_split" / f"subgroup_{name}.txt").read_text().split()
    }
    for record in records:
        row = truth.loc[(record.extra["patient"], record.extra["view"])]
        cfg = read_info_cfg(camus_nifti / record.extra["patient"] / f"Info_{record.extra['view']}.cfg")
        assert record.split == official[record.extra["patient"]] == row["Split"]
        assert record.num_frames == row["NumberOfFrames"] == int(cfg["NbFrame"])
        assert (record.ed_index, record.es_index) == (0, row["ESFrame"])  # 1-based cfg -> 0-based indices
        assert record.ef == pytest.approx(float(cfg["EF"])) and abs(record.ef - row["ViewEF"]) < 3
        assert record.fps == pytest.approx(float(cfg["FrameRate"]))
    # the decoded frames and the ED/ES label maps are the simulator's, upright (the canvas is taller than wide)
    record = next(r for r in records if r.filename == "patient0002_4CH")
    video, cycle = half_sequence_video("4CH", 0, 1, SIZE, (30.0, 60.0), (20.0, 80.0))
    frames, _ = decode_image_sequence(record.path)
    assert frames.shape == (record.num_frames, SIZE + SIZE // 4, SIZE)
    assert np.array_equal(frames[:, :SIZE], video.frames[cycle]) and not frames[:, SIZE:].any()
    for instant, index in (("ED", 0), ("ES", -1)):
        labels = read_label_map(record.extra["gt"][instant])[0]
        assert np.array_equal(labels[:SIZE], video.masks[cycle][index]) and not labels[SIZE:].any()
    # ...and the cache holds them resized once to frame_size (labels by nearest neighbour, so labels stay labels)
    cached = np.asarray(module._cache().frames(record.path))
    assert np.array_equal(cached, np.stack([cv2.resize(f, (48, 48), interpolation=cv2.INTER_AREA) for f in frames]))
    key_masks = module.make_dataset([record], train=False)._masks(record)
    labels = read_label_map(record.extra["gt"]["ED"])[0]
    assert np.array_equal(key_masks[0], cv2.resize(labels, (48, 48), interpolation=cv2.INTER_NEAREST))
    assert set(np.unique(key_masks[0])) == {0, 1, 2, 3}


def test_images_are_upright_apex_on_top(camus_nifti, tmp_path):
    module = make(camus_nifti, tmp_path)
    for record in all_records(module)[:6]:
        labels = read_label_map(record.extra["gt"]["ED"])[0]
        assert labels.shape[0] > labels.shape[1]  # (H, W): taller than wide, as stored (W, H) in the file
        lv_row = np.argwhere(labels == LV_CAVITY)[:, 0].mean()
        la_row = np.argwhere(labels == LEFT_ATRIUM)[:, 0].mean()
        assert lv_row < la_row  # the LV (apex) above the atrium


def test_sequence_batches_fit_the_video_format(camus_nifti, tmp_path):
    module = make(camus_nifti, tmp_path, seed=1, sequence_masks=True)
    batch = next(iter(module.train_dataloader()))
    assert batch["video"].shape == (4, 1, 8, 48, 48) and batch["ef"].shape == (4,)
    assert batch["ed_mask"].shape == (4, 48, 48) and batch["ed_mask"].dtype == torch.int64
    assert batch["has_masks"].all() and set(batch["ed_mask"].unique().tolist()) <= {0, 1, 2, 3}
    assert batch["masks"].shape == (4, 8, 48, 48) and batch["has_sequence_masks"].all()
    # a clip's sequence masks are the label maps of its frames: non-empty where frames are real, zero on padding
    real = batch["frames_mask"]
    assert ((batch["masks"] > 0).flatten(2).any(-1) == real).all()
    val = next(iter(module.val_dataloader()))
    assert val["video"].shape[0] == val["masks"].shape[0] == len(val["clip_owner"])
    # the base's keys are all there, so any method reads CAMUS like EchoNet
    from datamodules.base import VideoClipDataset

    base_item = VideoClipDataset.__getitem__(module.make_dataset(module.records["VAL"], train=False), 0)
    assert set(base_item) <= set(module.make_dataset(module.records["VAL"], train=False)[0])


def test_frames_task_items(camus_nifti, tmp_path):
    module = make(camus_nifti, tmp_path, task="frames", views="4CH")
    assert len(all_records(module)) == 2 * NUM_PATIENTS  # ED and ES of each 4CH view
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (4, 1, 48, 48) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 48, 48) and batch["mask"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) == {0, 1, 2, 3}
    assert set(batch["instant"]) <= {"ED", "ES"} and set(batch["view"]) == {"4CH"}
    assert abs(batch["image"].mean()) < 1.5


def test_synthesis_task_starts_at_ed(camus_nifti, tmp_path):
    module = make(camus_nifti, tmp_path, task="synthesis", clip_length=6, period=1)
    dataset = module.make_dataset(module.records["TRAIN"], train=True)
    record = module.records["TRAIN"][0]
    first = decode_image_sequence(record.path)[0][record.ed_index]
    expected = (cv2.resize(first, (48, 48), interpolation=cv2.INTER_AREA) - module.norm_mean) / module.norm_std
    for epoch in range(2):  # no random start: the clip begins at ED every epoch
        item = dataset[(0, epoch)]
        assert torch.allclose(item["video"][0, 0], torch.from_numpy(expected).float(), atol=1e-4)
    assert item["ed_mask"].shape == (48, 48) and item["ed_mask"].max() == 3


def test_mhd_2019_layout(camus_mhd, camus_nifti, tmp_path):
    module = make(camus_mhd, tmp_path, split_fractions=(0.5, 0.25, 0.25), label_from_ef_below=50)
    records = all_records(module)
    assert len(records) == 8 and not (camus_mhd / "database_split").exists()
    for record in records:
        cfg = read_info_cfg(record.path.parent / f"Info_{record.extra['view']}.cfg")
        assert record.path.name.endswith("_sequence.mhd")
        assert record.ef == pytest.approx(float(cfg["LVef"])) and record.extra["edv"] == pytest.approx(
            float(cfg["LVedv"])
        )
        assert record.label == int(record.ef < 50)  # CAMUS as normal/abnormal by EF, as CardiacNet uses it
    # the 2019 testing/ patients: no EF, no ground truth -> left out of EF and synthesis tasks, with a count
    root = shutil.copytree(camus_mhd, tmp_path / "with-testing", ignore=shutil.ignore_patterns(".echolab_cache"))
    testing = shutil.copytree(root / "training" / "patient0004", root / "testing" / "patient0005")
    for path in testing.iterdir():
        renamed = path.rename(testing / path.name.replace("patient0004", "patient0005"))
        if renamed.suffix == ".mhd":  # the header names its .raw file
            renamed.write_text(renamed.read_text().replace("patient0004", "patient0005"))
    for path in testing.glob("*_gt.*"):
        path.unlink()
    for view in ("2CH", "4CH"):
        cfg = testing / f"Info_{view}.cfg"
        cfg.write_text("".join(f"{line}\n" for line in cfg.read_text().splitlines() if not line.startswith("LV")))
    for task in ("sequence", "synthesis"):
        with pytest.warns(UserWarning, match="2 views have no"):
            names = {r.filename for r in all_records(make(root, tmp_path / task, task=task))}
        assert len(names) == 8 and not any(name.startswith("patient0005") for name in names)
    # the same seed writes the same hearts: MHD and NIfTI decode to identical frames
    nifti = make(camus_nifti, tmp_path / "n")
    mhd_record = next(r for r in records if r.filename == "patient0001_2CH")
    nifti_record = next(r for r in all_records(nifti) if r.filename == "patient0001_2CH")
    assert np.array_equal(module._cache().frames(mhd_record.path), nifti._cache().frames(nifti_record.path))


def test_seeded_patient_split_never_leaks(camus_nifti, tmp_path):
    module = make(camus_nifti, tmp_path, official_split=False, split_seed=3)
    by_patient: dict[str, set[str]] = {}
    for record in all_records(module):
        by_patient.setdefault(record.extra["patient"], set()).add(record.split)
    assert all(len(splits) == 1 for splits in by_patient.values())  # both views of a patient share its split
    counts = pd.Series([next(iter(s)) for s in by_patient.values()]).value_counts()
    assert counts["TRAIN"] == 7 and counts["VAL"] == 1 and counts["TEST"] == 2
    assert split_patients(list(by_patient), (0.7, 0.1, 0.2), 3) == {p: next(iter(s)) for p, s in by_patient.items()}
    assert split_patients(list(by_patient), (0.7, 0.1, 0.2), 4) != split_patients(list(by_patient), (0.7, 0.1, 0.2), 3)
    with pytest.raises(ConfigError, match="split_fractions"):
        CamusDataModule(str(camus_nifti), split_fractions=(0.7, -0.1, 0.2))


def test_release_quirks(camus_nifti, tmp_path):
    root = copy(camus_nifti, tmp_path)
    # NbFrame (and ES) one more than the half-sequence holds: the file wins
    cfg = root / "patient0001" / "Info_4CH.cfg"
    fields = read_info_cfg(cfg)
    fields["NbFrame"] = fields["ES"] = str(int(fields["NbFrame"]) + 1)
    # keys in another order, odd spacing, mixed-case quality values
    cfg.write_text("\n".join(f"{k} :  {v}" for k, v in reversed(list(fields.items()))) + "\n\n")
    for number, quality in ((2, "pOOR"), (3, "poor"), (4, "GOOD"), (5, "Medium")):
        info = root / f"patient{number:04d}" / "Info_2CH.cfg"
        lines = [
            f"ImageQuality: {quality}" if line.startswith("ImageQuality") else line
            for line in info.read_text().splitlines()
        ]
        info.write_text("\n".join(lines) + "\n")
    # missing ground truths: an ES frame's (the half-sequence's stands in), and an ES frame's and the sequence's
    (root / "patient0006" / "patient0006_2CH_ES_gt.nii.gz").unlink()
    (root / "patient0008" / "patient0008_4CH_ES_gt.nii.gz").unlink()
    (root / "patient0008" / "patient0008_4CH_half_sequence_gt.nii.gz").unlink()

    module = make(root, tmp_path, exclude_quality=["Poor"])
    records = {r.filename: r for r in all_records(module)}
    quirky = records["patient0001_4CH"]
    assert quirky.extra["nb_frames"] == quirky.num_frames + 1 and quirky.es_index == quirky.num_frames - 1
    poor = {
        f"{cfg.parent.name}_{cfg.stem[5:]}"
        for cfg in root.glob("patient*/Info_*.cfg")
        if read_info_cfg(cfg)["ImageQuality"].lower() == "poor"
    }
    assert {"patient0002_2CH", "patient0003_2CH"} <= poor and "patient0005_2CH" not in poor
    assert not poor & set(records) and len(records) + len(poor) == 2 * NUM_PATIENTS
    assert module.excluded_by_quality == len(poor)
    dataset = module.make_dataset(all_records(module), train=False)
    stand_in = dataset[all_records(module).index(records["patient0006_2CH"])]
    assert stand_in["has_masks"] and stand_in["es_mask"].max() == 3  # half_sequence_gt at the ES index
    without = dataset[all_records(module).index(records["patient0008_4CH"])]
    assert not without["has_masks"] and without["ed_mask"].max() == 3 and without["es_mask"].max() == 0
    frames = make(root, tmp_path / "frames", task="frames")
    names = {r.filename for r in all_records(frames)}
    assert "patient0006_2CH_ED" in names and "patient0006_2CH_ES" not in names and "patient0008_4CH_ES" not in names


def test_bad_files_skip_with_count_or_raise_naming_the_file(camus_nifti, tmp_path):
    root = copy(camus_nifti, tmp_path)
    truncated = root / "patient0003" / "patient0003_4CH_half_sequence.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (root / "patient0005" / "Info_2CH.cfg").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = make(root, tmp_path)
    messages = " | ".join(str(w.message) for w in caught)
    names = {r.filename for r in all_records(module)}
    assert len(names) == 2 * NUM_PATIENTS - 2 and "patient0003_4CH" not in names and "patient0005_2CH" not in names
    assert "skipped 1 of" in messages and truncated.name in messages
    assert "skipped 1 views" in messages and "Info_2CH.cfg" in messages
    with pytest.raises(DataError, match="patient0005/Info_2CH.cfg: missing Info cfg"):
        make(root, tmp_path / "r1", on_bad_video="raise")
    (root / "patient0005" / "Info_2CH.cfg").write_text((root / "patient0005" / "Info_4CH.cfg").read_text())
    with pytest.raises(DataError, match=truncated.name):
        make(root, tmp_path / "r2", on_bad_video="raise")


def test_missing_data_dir_and_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        CamusDataModule(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="task"):
        CamusDataModule(str(tmp_path), task="video")
    module = CamusDataModule(str(tmp_path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match="no patientXXXX folders"):
        module.setup("fit")


def test_ef_regressor_runs_on_camus(camus_nifti, tmp_path):
    from echo_modules import EFRegressor
    from echo_modules.common import TinyVideoEncoder

    L.seed_everything(0)
    module = CamusDataModule(str(camus_nifti), **tiny_data_options(tmp_path / "cache"))
    model = EFRegressor(encoder=TinyVideoEncoder(in_channels=1, width=4, depth=2))
    trainer = L.Trainer(
        accelerator="cpu",
        fast_dev_run=2,
        logger=False,
        default_root_dir=tmp_path,  # the test's files (summary, figures) stay out of the checkout
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, module)
    trainer.test(model, module, verbose=False)
    assert np.isfinite(trainer.callback_metrics["test/mae"].item())
