"""Real-world video inputs on real phantom files: symlinked folders, truncated and non-square videos, other containers,
the decord-free backends, the parallel first-run decode, bad label values, and the data layering itself."""

from __future__ import annotations

import ast
import os
import shutil
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from datamodules.cache import DecodedVideoCache, fill_cache
from datamodules.echonet_dynamic import EchoNetDynamicDataModule
from datamodules.errors import ConfigError, DataError
from datamodules.phantom.echonet_writer import write_avi, write_echonet_dataset
from datamodules.tracings import mask_from_tracing
from datamodules.video import decode_container, read_container_frames, resolve_backend
from datamodules.video_folder import VideoFolderDataModule
from tests.helpers import tiny_data_options

ROOT = Path(__file__).resolve().parents[1]
NUM_VIDEOS = 12


@pytest.fixture(scope="module")
def small_echonet(tmp_path_factory) -> Path:
    """A small phantom EchoNet-Dynamic dataset: 12 videos of 32 x 32 pixels."""
    return write_echonet_dataset(tmp_path_factory.mktemp("io") / "EchoNet", NUM_VIDEOS, seed=3, size=32)


def copy(dataset: Path, tmp_path: Path, name: str = "copy") -> Path:
    return shutil.copytree(dataset, tmp_path / name, ignore=shutil.ignore_patterns(".echolab_cache"))


def make(data_dir: Path, tmp_path: Path, **kwargs) -> EchoNetDynamicDataModule:
    module = EchoNetDynamicDataModule(str(data_dir), **tiny_data_options(tmp_path / "cache", period=2) | kwargs)
    module.prepare_data()
    module.setup("fit")
    return module


def load(data_dir: Path, tmp_path: Path, **kwargs) -> tuple[EchoNetDynamicDataModule, list[str]]:
    """A set-up module and every warning its setup emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = make(data_dir, tmp_path, **kwargs)
    return module, [str(w.message) for w in caught]


def names(module) -> set[str]:
    return {r.filename for split in module.records.values() for r in split}


# ---------------------------------------------------------------------------------------------------- item 2: symlinks


def test_symlinked_videos_folder_loads_and_names_that_climb_out_are_refused(small_echonet, tmp_path):
    """A Videos/ folder of links to files elsewhere (DVC, git-annex, hand-made subsets) loads every row; a FileName
    whose own text leaves Videos/ (``../``, an absolute path) is still refused, even when the file exists."""
    store = copy(small_echonet / "Videos", tmp_path, "annex-store")
    root = tmp_path / "linked"
    (root / "Videos").mkdir(parents=True)
    for name in ("FileList.csv", "VolumeTracings.csv"):
        shutil.copy(small_echonet / name, root / name)
    for video in sorted(store.glob("*.avi")):
        os.symlink(video, root / "Videos" / video.name)
    files = pd.read_csv(root / "FileList.csv")
    escapes = files.iloc[[0, 1]].copy()
    escapes["FileName"] = ["../../annex-store/" + files["FileName"][0], str(store / files["FileName"][1])]
    pd.concat([files, escapes]).to_csv(root / "FileList.csv", index=False)

    module, messages = load(root, tmp_path)
    assert names(module) == set(files["FileName"])  # every linked row, and nothing through the two escapes
    assert sum(len(split) for split in module.records.values()) == NUM_VIDEOS
    assert any("rejected 2 rows" in m and "resolves outside" in m for m in messages)
    with pytest.raises(DataError, match="resolves outside"):
        make(root, tmp_path, on_bad_video="raise")


# ---------------------------------------------------------------------------------------------------- item 3: truncation


def rewrite_first_frames(path: Path, keep: int) -> None:
    """Replace a video by its first ``keep`` frames: a well-formed file that holds fewer frames than FileList says."""
    frames, info = decode_container(path, "opencv")
    write_avi(path, frames[:keep], info.fps)


def test_truncated_video_is_a_counted_bad_video_but_off_by_a_few_is_accepted(small_echonet, tmp_path):
    root = copy(small_echonet, tmp_path)
    files = pd.read_csv(root / "FileList.csv")
    truncated, short = files["FileName"][4], files["FileName"][5]
    counts = dict(zip(files["FileName"], files["NumberOfFrames"], strict=True))
    truth = pd.read_csv(root / "PhantomTruth.csv").set_index("FileName")
    assert max(truth.loc[truncated, "EDFrame"], truth.loc[truncated, "ESFrame"]) < 40 < 0.9 * counts[truncated]
    rewrite_first_frames(root / "Videos" / f"{truncated}.avi", 40)  # ED/ES lie inside: main used it silently
    rewrite_first_frames(root / "Videos" / f"{short}.avi", counts[short] - 2)  # the release's off-by-a-few
    module, messages = load(root, tmp_path)
    assert truncated not in names(module) and short in names(module)
    kept = next(r for split in module.records.values() for r in split if r.filename == short)
    assert kept.num_frames == counts[short] - 2  # the decoded count wins
    skips = [m for m in messages if "skipped" in m]
    assert len(skips) == 1 and "skipped 1 of 12" in skips[0] and truncated in skips[0]
    assert f"40 of the {counts[truncated]} frames" in skips[0]
    assert module.skipped == [(str(root / "Videos" / f"{truncated}.avi"), module.skipped[0][1])]
    with pytest.raises(DataError, match=f"{truncated}.avi: truncated: decodes 40 of"):
        make(root, tmp_path, on_bad_video="raise")
    relaxed, _ = load(root, tmp_path, truncation_threshold=0.3)  # the threshold is configuration
    assert truncated in names(relaxed)
    with pytest.raises(ConfigError, match="truncation_threshold"):
        EchoNetDynamicDataModule(str(root), truncation_threshold=1.5)


# ---------------------------------------------------------------------------------------------------- item 4: non-square


@pytest.fixture(scope="module")
def wide_echonet(small_echonet, tmp_path_factory) -> Path:
    """The small dataset with 16-pixel black side panels: 32 x 64 videos, tracings shifted to match."""
    root = copy(small_echonet, tmp_path_factory.mktemp("wide"), "Wide")
    for video in sorted((root / "Videos").glob("*.avi")):
        frames, info = decode_container(video, "opencv")
        write_avi(video, np.pad(frames, ((0, 0), (0, 0), (16, 16))), info.fps)
    tracings = pd.read_csv(root / "VolumeTracings.csv")
    tracings[["X1", "X2"]] += 16
    tracings.to_csv(root / "VolumeTracings.csv", index=False)
    return root


def test_non_square_videos_stretch_with_one_warning_or_keep_their_aspect(small_echonet, wide_echonet, tmp_path):
    square, _ = load(small_echonet, tmp_path / "square")
    areas = {}
    for mode in ("stretch", "pad", "crop"):
        module, messages = load(wide_echonet, tmp_path / mode, resize=mode)
        warned = [m for m in messages if "not square" in m]
        assert len(warned) == (1 if mode == "stretch" else 0), messages  # once per dataset, only when it changes
        if mode == "stretch":
            assert f"{NUM_VIDEOS} of {NUM_VIDEOS} videos" in warned[0] and "32x64" in warned[0]
        records = [r for r in module.records["TRAIN"] if r.has_tracings]
        item_masks = [module.make_dataset([r], train=False)[0]["ed_mask"] for r in records]
        areas[mode] = np.mean([m.sum().item() for m in item_masks])
        if mode == "crop":  # the centred square of a 32 x 64 frame with 16-pixel panels is the original frame
            record = records[0]
            item = module.make_dataset([record], train=False)[0]
            decoded = decode_container(record.path, "decord")[0][:, :, 16:48]
            indices = np.minimum(np.arange(8) * 2, record.num_frames - 1)
            frames = (item["video"][0, 0] * module.norm_std + module.norm_mean).round().to(torch.uint8).numpy()
            assert np.array_equal(frames, decoded[indices])
    original = np.mean(
        [mask_from_tracing(r.ed_tracing, 32, 32).sum() for r in square.records["TRAIN"] if r.has_tracings]
    )
    assert areas["crop"] == pytest.approx(original, rel=0.03)
    assert areas["stretch"] == pytest.approx(original / 2, rel=0.1)  # squeezed: LV area halved
    assert areas["pad"] == pytest.approx(original / 4, rel=0.1)  # scaled by 1/2 both ways: the shape is kept
    with pytest.raises(ConfigError, match="resize"):
        EchoNetDynamicDataModule(str(small_echonet), resize="squash")


# ---------------------------------------------------------------------------------------------------- item 5: containers


def test_video_folder_finds_the_common_containers(small_echonet, tmp_path):
    folder = tmp_path / "exports"
    (folder / "nested").mkdir(parents=True)
    sources = sorted((small_echonet / "Videos").glob("*.avi"))[:4]
    frames = [decode_container(p, "decord")[0] for p in sources]
    written = {}
    for (suffix, codec), video in zip(
        ((".mp4", "mp4v"), (".MOV", "mp4v"), (".mkv", "MJPG"), (".avi", "MJPG")), frames, strict=True
    ):
        path = folder / ("nested" if suffix == ".mkv" else "") / f"clip{suffix}"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 30.0, (32, 32), True)
        for frame in video:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        writer.release()
        written[path.relative_to(folder).as_posix()] = len(video)
    (folder / "notes.txt").write_text("not a video")
    module = VideoFolderDataModule(str(folder), **tiny_data_options(tmp_path / "cache"), mean=60.0, std=40.0)
    module.prepare_data()
    module.setup("predict")
    found = {r.filename: r.num_frames for r in module.records["TEST"]}
    # clip.avi, clip.mp4 and clip.MOV share a stem: they keep their extensions to stay apart
    assert found == {"clip.MOV": written["clip.MOV"], "clip.avi": written["clip.avi"], "clip.mp4": written["clip.mp4"],
                     "nested/clip": written["nested/clip.mkv"]}  # fmt: skip
    assert len(next(iter(module.predict_dataloader()))["filename"]) == 4
    only_mp4 = VideoFolderDataModule(str(folder), patterns=["*.mp4"], **tiny_data_options(tmp_path / "cache"))
    assert [r.filename for r in only_mp4.scan_records()] == ["clip"]  # alone, the stem is enough


# ---------------------------------------------------------------------------------------------------- item 6: backends


def test_fallback_backends_decode_the_same_frames_as_decord(small_echonet, tmp_path):
    """PyAV and OpenCV give decord's frames exactly (MJPEG: bit-identical, tolerance 0), whole and by index."""
    for path in sorted((small_echonet / "Videos").glob("*.avi"))[:4]:
        reference, info = decode_container(path, "decord")
        assert info.error is None and len(reference) > 20
        for backend in ("pyav", "opencv"):
            frames, other = decode_container(path, backend)
            assert other == info and np.array_equal(frames, reference), backend
            indices = np.array([17, 3, 3, 9])
            assert np.array_equal(read_container_frames(path, indices, backend), reference[indices]), backend
    # a DataModule on the fallback, decoding per item, yields the batches of one on decord
    batches = []
    for backend in ("decord", "opencv"):
        module = make(small_echonet, tmp_path / backend, video_backend=backend, decode_cache=False, seed=1)
        batches.append(next(iter(module.train_dataloader())))
    assert torch.equal(batches[0]["video"], batches[1]["video"]) and batches[0]["filename"] == batches[1]["filename"]


def test_auto_backend_falls_back_when_decord_is_missing(small_echonet, tmp_path, monkeypatch):
    assert resolve_backend("auto") == "decord"
    monkeypatch.setitem(sys.modules, "decord", None)  # what an install without decord wheels looks like
    assert resolve_backend("auto") == "pyav"
    with pytest.raises(ConfigError, match="'decord' is not installed"):
        EchoNetDynamicDataModule(str(small_echonet), video_backend="decord")
    monkeypatch.setitem(sys.modules, "av", None)
    assert resolve_backend("auto") == "opencv"
    module = make(small_echonet, tmp_path)  # the default (auto) still reads every video
    assert sum(len(split) for split in module.records.values()) == NUM_VIDEOS
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'decord>=0.6; platform_system != "Darwin" or platform_machine != "arm64"' in pyproject


# ---------------------------------------------------------------------------------------------------- item 7: first run


def test_parallel_first_run_decode_matches_serial_with_progress_and_count(small_echonet, tmp_path, capsys, monkeypatch):
    paths = sorted((small_echonet / "Videos").glob("*.avi"))
    serial, parallel = DecodedVideoCache(tmp_path / "serial"), DecodedVideoCache(tmp_path / "parallel")
    first = fill_cache(serial, paths, workers=0)
    report = fill_cache(parallel, paths, workers=2)
    assert (first.decoded, report.decoded, report.workers, report.unusable) == (NUM_VIDEOS, NUM_VIDEOS, 2, 0)
    assert "decoding videos" in capsys.readouterr().err  # the progress bar
    for path in paths:
        assert parallel.is_cached(path) and parallel.info(path) == serial.info(path)
        assert np.array_equal(parallel.frames(path), serial.frames(path))
    again = fill_cache(parallel, paths, workers=2)
    assert (again.decoded, again.cached) == (0, NUM_VIDEOS)  # a second run decodes nothing
    # through the DataModule: decode_workers processes, and one line with the final count
    module = EchoNetDynamicDataModule(
        str(small_echonet), **tiny_data_options(tmp_path / "module-cache", decode_workers=2)
    )
    logged: list[str] = []
    monkeypatch.setattr(EchoNetDynamicDataModule, "parallel_decode_from", 0)  # a pool even for these 12 videos
    monkeypatch.setattr("datamodules.base.rank_zero_info", lambda message, *args, **kwargs: logged.append(message))
    module.prepare_data()
    module.prepare_data()  # the second call finds everything cached and says nothing
    assert len(logged) == 1 and f"decoded {NUM_VIDEOS} files" in logged[0] and "2 processes" in logged[0]


# ---------------------------------------------------------------------------------------------------- item 10: labels


def test_filelist_rows_with_missing_or_non_numeric_ef_are_left_out_with_one_warning(small_echonet, tmp_path):
    root = copy(small_echonet, tmp_path)
    files = pd.read_csv(root / "FileList.csv", dtype={"EF": str})
    bad = list(files["FileName"][:3])
    files.loc[:2, "EF"] = ["abc", "nan", ""]
    files.to_csv(root / "FileList.csv", index=False)
    module, messages = load(root, tmp_path)
    records = [r for split in module.records.values() for r in split]
    assert len(records) == NUM_VIDEOS - 3 and all(np.isfinite(r.ef) for r in records)
    warned = [m for m in messages if "EF" in m]
    assert len(warned) == 1 and "3 FileList rows" in warned[0] and all(name in warned[0] for name in bad)
    assert "'abc'" in warned[0]
    for batch in module.train_dataloader():
        assert torch.isfinite(batch["ef"]).all()  # never a NaN target
    files["EF"] = "n/a"
    files.to_csv(root / "FileList.csv", index=False)
    with pytest.raises(DataError, match="no row has a numeric EF"):
        make(root, tmp_path)


def test_camus_and_hmcqu_bad_label_values_are_counted_skips(tmp_path):
    from datamodules.camus import CamusDataModule
    from datamodules.hmcqu import HMCQUDataModule
    from datamodules.phantom.camus_writer import write_camus_dataset
    from datamodules.phantom.hmcqu_writer import write_hmcqu_dataset

    camus = write_camus_dataset(tmp_path / "CAMUS", 4, seed=0, size=32)
    cfg = camus / "patient0001" / "Info_4CH.cfg"
    cfg.write_text("\n".join("ED: nan" if line.startswith("ED:") else line for line in cfg.read_text().splitlines()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = CamusDataModule(str(camus), **tiny_data_options(tmp_path / "cache"))
        module.prepare_data()
        module.setup("fit")
    assert "patient0001_4CH" not in names(module) and len(names(module)) == 7
    assert any("skipped 1 views" in str(w.message) and "ED is 'nan'" in str(w.message) for w in caught)

    hmcqu = write_hmcqu_dataset(tmp_path / "HMC-QU", 8, seed=0, size=32, mask_size=24, table_format="csv")
    table = pd.read_csv(hmcqu / "HMC_QU.csv", dtype=str)
    echo = table["ECHO"][0]
    table.loc[0, "SEG3"] = "abc"
    table.to_csv(hmcqu / "HMC_QU.csv", index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = HMCQUDataModule(str(hmcqu), **tiny_data_options(tmp_path / "cache", period=1))
        module.prepare_data()
        module.setup("fit")
    assert echo not in names(module) and len(names(module)) == 7
    assert any("1 table rows" in str(w.message) and "SEG3='abc'" in str(w.message) for w in caught)


# ---------------------------------------------------------------------------------------------------- issue 10: hooks


def test_camus_and_hmcqu_keep_the_uint8_hand_off_with_hooks_not_getitem(tmp_path):
    """Every clip dataset hands uint8 grey clips to the loader (normalised on the device, channels a free view) and
    customises items through hooks: CAMUS and HMC-QU no longer override ``__getitem__``."""
    from datamodules.base import VideoClipDataset
    from datamodules.camus import CamusClipDataset, CamusDataModule
    from datamodules.cardiacnet import CardiacNetClipDataset
    from datamodules.hmcqu import HMCQUClipDataset, HMCQUDataModule
    from datamodules.phantom.camus_writer import write_camus_dataset
    from datamodules.phantom.hmcqu_writer import write_hmcqu_dataset

    for dataset_class in (CamusClipDataset, HMCQUClipDataset, CardiacNetClipDataset):
        assert dataset_class.__getitem__ is VideoClipDataset.__getitem__
    camus = write_camus_dataset(tmp_path / "CAMUS", 4, seed=0, size=32)
    hmcqu = write_hmcqu_dataset(tmp_path / "HMC-QU", 8, seed=0, size=32, mask_size=24)
    options = tiny_data_options(tmp_path / "cache", channels=3, seed=2, period=1)
    modules = [
        CamusDataModule(str(camus), sequence_masks=True, **options),
        CamusDataModule(str(camus), task="synthesis", **options),
        HMCQUDataModule(str(hmcqu), **options),
    ]
    for module in modules:
        module.prepare_data()
        module.setup("fit")
        raw = next(iter(module.train_dataloader()))
        assert raw["video"].dtype == torch.uint8 and raw["video"].shape[1] == 1, type(module).__name__
        batch = module.on_after_batch_transfer(dict(raw), 0)
        assert batch["video"].shape[1] == 3 and batch["video"].stride(1) == 0  # a broadcast view, not a copy
        dataset = module.make_dataset(module.records["TRAIN"], train=True)
        index = [r.filename for r in module.records["TRAIN"]].index(raw["filename"][0])
        direct = dataset[(index, 0)]  # normalised in the dataset: the same numbers
        assert torch.allclose(direct["video"], batch["video"][0], atol=1e-5)
        assert set(direct) == set(raw) - {"clip_owner"}
    assert modules[2].make_dataset(modules[2].records["TRAIN"], train=False)[0]["wall_motion"].shape == (7,)


def test_data_layering_has_no_cycles_and_no_private_cross_module_imports():
    """cache <- video, nifti <- datasets: nifti.py and video.py do not import each other, the cache imports neither,
    and no data module imports another's private (``_name``) objects."""
    folder = ROOT / "datamodules"
    imports: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("datamodules"):
                found.add(node.module.split(".")[1] if "." in node.module else "")
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private {private} from {node.module}"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.attr.startswith("_"):
                assert node.value.id not in {"DecodedVideoCache", "ResizedVideoCache"}, f"{path.name}: .{node.attr}"
        imports[path.stem] = found
    assert "video" not in imports["nifti"] and "nifti" not in imports["video"]
    assert not {"video", "nifti", "base"} & imports["cache"]
    assert "camus" not in imports["hmcqu"] | imports["cardiacnet"]  # the patient split lives in splits.py
    assert "splits" in imports["camus"] and "splits" in imports["hmcqu"] and "splits" in imports["cardiacnet"]
