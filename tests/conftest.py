"""Session fixtures: phantom datasets written once, in the real on-disk layouts, and read back by the real readers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Results of the real fits depend on torch's thread count (float reduction order), and their margins were measured
# at 2 threads, the default on the 2-core CI machine: pin it (before torch is imported; subprocesses inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


# Test datasets keep the default (realistic) phantom, with lengths capped at 112 frames for CPU time.
TEST_MAX_FRAMES = 112


@pytest.fixture(scope="session")
def phantom_echonet(tmp_path_factory) -> Path:
    """A clean phantom EchoNet-Dynamic dataset (60 videos)."""
    from datamodules.phantom.echonet_writer import write_echonet_dataset

    return write_echonet_dataset(
        tmp_path_factory.mktemp("echonet") / "EchoNet-Dynamic", num_videos=60, seed=0, max_frames=TEST_MAX_FRAMES
    )


@pytest.fixture(scope="session")
def phantom_echonet_train(tmp_path_factory) -> Path:
    """A larger phantom dataset for the runs that must learn (160 videos).

    Gentler than the default phantom, so that minutes-long CPU fits can learn the heart: EF uniform on 20-80 (a wider
    spread than EchoNet's) and a narrower probe pose. The motion and intensity nuisance that hides EF from global
    statistics is kept, and every learning test compares with the shortcut computed on this very data."""
    from datamodules.phantom.echonet_writer import write_echonet_dataset

    return write_echonet_dataset(
        tmp_path_factory.mktemp("echonet_train") / "EchoNet-Dynamic",
        num_videos=160,
        seed=1,
        max_frames=TEST_MAX_FRAMES,
        ef_distribution="uniform",
        pose_variation=0.3,
    )


@pytest.fixture(scope="session")
def echonet_train_baselines(phantom_echonet_train) -> dict[str, dict]:
    """What a model that learned EF on ``phantom_echonet_train`` must beat, per split: on TEST (fitted on TRAIN+VAL)
    and on VAL (fitted on TRAIN, for stopping a fit once it is clearly ahead), the mean predictor and the anatomy-free
    shortcut (`datamodules.phantom.shortcuts.ef_baselines`)."""
    from datamodules.phantom.shortcuts import ef_baselines

    return {
        "TEST": ef_baselines(phantom_echonet_train),
        "VAL": ef_baselines(phantom_echonet_train, fit_splits=("TRAIN",), eval_split="VAL"),
    }


@pytest.fixture()
def quirky_echonet(phantom_echonet, tmp_path) -> dict:
    """The clean dataset with every real-release quirk planted, and what was planted where."""
    root = tmp_path / "EchoNet-Quirky"
    shutil.copytree(phantom_echonet, root, ignore=shutil.ignore_patterns(".echolab_cache"))
    files = pd.read_csv(root / "FileList.csv")
    names = files["FileName"].tolist()
    truncated, missing_video, no_tracings = names[0], names[1], names[2]
    # a truncated AVI: the first third of its bytes
    video = root / "Videos" / f"{truncated}.avi"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    # a FileList row whose video is gone
    (root / "Videos" / f"{missing_video}.avi").unlink()
    # a video without tracings
    tracings = pd.read_csv(root / "VolumeTracings.csv")
    tracings[tracings["FileName"] != f"{no_tracings}.avi"].to_csv(root / "VolumeTracings.csv", index=False)
    # lower-case split values, and a row that points outside data_dir
    files["Split"] = files["Split"].str.lower()
    escape = files.iloc[[3]].copy()
    escape["FileName"] = "../../outside"
    (root.parent / "outside.avi").write_bytes((root / "Videos" / f"{names[3]}.avi").read_bytes())
    pd.concat([files, escape]).to_csv(root / "FileList.csv", index=False)
    return {"root": root, "truncated": truncated, "missing_video": missing_video, "no_tracings": no_tracings}
