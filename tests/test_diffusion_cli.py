"""The diffusion configs through the real ``echolab`` CLI: fit with fast_dev_run on a phantom CAMUS dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, run_echolab


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
def test_phantom_config_fast_dev_run(phantom_camus, tmp_path):
    result = run_echolab(
        "fit", "--config", "configs/diffusion/phantom.yaml", "--data.data_dir", str(phantom_camus),
        "--data.frame_size", "16", "--data.num_workers", "0", "--data.cache_dir", str(tmp_path / "cache"),
        "--data.official_split", "false", "--data.split_fractions", "[0.5, 0.5, 0.0]",
        "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path / "run"),
        "--model.num_sampling_steps", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
