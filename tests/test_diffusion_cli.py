"""The diffusion configs through the real ``echolab`` CLI, and the train-on-synthetic / test-on-real chain as the
README documents it: ``fit`` the diffusion config, ``predict`` a synthetic EchoNet-Dynamic dataset (privacy filter
on), read it back through the EchoNet DataModule unchanged, ``fit`` the EF regressor on it and ``test`` that regressor
on the real (phantom CAMUS) patients."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers import ROOT, run_echolab, tiny_ef_config, write_config


@pytest.fixture(scope="module")
def phantom_camus(tmp_path_factory) -> Path:
    from datamodules.phantom.camus_writer import write_camus_dataset

    return write_camus_dataset(tmp_path_factory.mktemp("diffusion_cli") / "CAMUS", 4, seed=0, size=32)


def test_configs_parse_with_the_documented_settings():
    camus = yaml.safe_load((ROOT / "configs/diffusion/camus.yaml").read_text())["model"]["init_args"]
    assert camus["guidance_scale"] == 7.0 and camus["num_train_timesteps"] == 1000 and camus["objective"] == "epsilon"
    result = run_echolab("fit", "--config", "configs/diffusion/camus.yaml", "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "echo_modules.diffusion.SpadeUNet3D" in result.stdout


@pytest.mark.slow
def test_train_on_synthetic_test_on_real_chain_through_the_cli(phantom_camus, tmp_path):
    from datamodules.echonet_dynamic import EchoNetDynamicDataModule

    data = ["--data.data_dir", str(phantom_camus), "--data.frame_size", "32", "--data.num_workers", "0",
            "--data.cache_dir", str(tmp_path / "cache"), "--data.official_split", "false",
            "--data.split_fractions", "[0.5, 0.5, 0.0]", "--model.num_sampling_steps", "2"]  # fmt: skip
    run = tmp_path / "diffusion"
    # 1. fit the diffusion model (one epoch: the chain, not the learning, is tested here)
    result = run_echolab("fit", "--config", "configs/diffusion/phantom.yaml", *data, "--trainer.max_epochs", "1",
                         "--trainer.check_val_every_n_epoch", "1", "--trainer.num_sanity_val_steps", "0",
                         "--trainer.default_root_dir", str(run))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    # 2. generate: 2 videos per training map at EF 30 and 70, EchoNet-Dynamic layout, privacy filter on
    synthetic = tmp_path / "synthetic_echonet"
    result = run_echolab("predict", "--config", "configs/diffusion/phantom.yaml", *data, "--ckpt_path",
                         str(checkpoint), "--model.synthetic_dir", str(synthetic), "--model.samples_per_map", "2",
                         "--model.predict_ef", "[30.0, 70.0]", "--data.predict_split", "TRAIN",
                         "--trainer.default_root_dir", str(tmp_path / "predict"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    files = pd.read_csv(synthetic / "FileList.csv")
    summary = json.loads((synthetic / "synthesis_summary.json").read_text())
    assert summary["privacy_threshold"] is not None and summary["videos"] == len(files) == 4
    assert files["MeasuredEF"].notna().all() and "ef_mae_requested_vs_measured" in summary  # ef_scorer: lv_area
    assert sorted(files["EF"]) == [30.0, 30.0, 70.0, 70.0] and set(files["Split"]) == {"TRAIN", "VAL"}
    # 3. the EchoNet-Dynamic DataModule reads the export unchanged
    echonet = EchoNetDynamicDataModule(str(synthetic), frame_size=32, channels=1, clip_length=8, period=1,
                                       batch_size=4, num_workers=0, cache_dir=str(tmp_path / "cache_syn"))  # fmt: skip
    echonet.prepare_data()
    echonet.setup("fit")
    assert len(echonet.records["TRAIN"]) + len(echonet.records["VAL"]) == 4
    # 4. fit the EF regressor on the synthetic set, 5. test it on the real patients (CAMUS layout)
    ef_run = tmp_path / "ef_on_synthetic"
    config = tiny_ef_config(synthetic, ef_run, **{"data.init_args.period": 1,
                                                   "trainer.max_epochs": 1})  # fmt: skip
    result = run_echolab("fit", "--config", str(write_config(tmp_path / "ef_fit.yaml", config)))
    assert result.returncode == 0, result.stderr[-3000:]
    real_data = {"class_path": "datamodules.camus.CamusDataModule",
                 "init_args": {"data_dir": str(phantom_camus), "views": "2CH", "frame_size": 32, "clip_length": 8,
                               "period": 2, "channels": 1, "batch_size": 4, "num_workers": 0,
                               "cache_dir": str(tmp_path / "cache_real"), "official_split": False,
                               "split_fractions": [0.5, 0.0, 0.5]}}  # fmt: skip
    test_config = write_config(tmp_path / "ef_test.yaml", config | {"data": real_data})
    result = run_echolab("test", "--config", str(test_config), "--ckpt_path", str(ef_run / "checkpoints" / "last.ckpt"))
    assert result.returncode == 0, result.stderr[-3000:]
    test_summary = json.loads(next(ef_run.rglob("test_summary.json")).read_text())
    assert test_summary["videos"] == 2 and "mae" in str(test_summary)
    # the EF regressor's checkpoint as the diffusion model's ef_scorer: it scores videos in the diffusion data's units
    import torch

    from echo_modules.diffusion.ef_scoring import RegressorEF

    stats = torch.load(checkpoint, map_location="cpu", weights_only=False)["normalisation"]
    scorer = RegressorEF(str(ef_run / "checkpoints" / "last.ckpt"), stats["mean"], stats["std"])
    assert scorer.channels == 1 and scorer.frame_size == 32
    videos = (torch.rand(3, 1, 8, 32, 32) * 255 - stats["mean"]) / stats["std"]
    scores = scorer(videos)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    assert torch.allclose(scorer(videos.expand(-1, 3, -1, -1, -1)), scores)  # grey in any channel count
