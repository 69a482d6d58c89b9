"""CoReEcho: the rank-contrastive loss against its definition, the heads and the UniFormer backbone, and real
stage-1 / stage-2 fits of the shipped phantom config (embeddings ordered by EF, MAE well below the mean predictor and
the phantom's anatomy-free shortcut on the same split,
a stage 2 that leaves every encoder weight and buffer untouched) and predict on a bare folder of AVIs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from datamodules.phantom.shortcuts import learned_ef
from echo_modules.common.backbones import TinyVideoEncoder
from echo_modules.common.uniformer import GlobalBlock, LocalBlock, UniFormer, uniformer_small, uniformer_tiny
from echo_modules.coreecho import CoReEcho
from echo_modules.coreecho.heads import RegressionHead
from echo_modules.coreecho.losses import naive_rank_n_contrast_loss, rank_n_contrast_loss
from tests.helpers import ROOT, run_echolab, write_config

# ---------------------------------------------------------------------- the loss


def _batch(rows: int, dim: int, seed: int, label_values: int, label_columns: int = 1, scale: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    embeddings = (scale * torch.randn(rows, dim, generator=generator, dtype=torch.float64)).requires_grad_(True)
    labels = torch.randint(0, label_values, (rows, label_columns), generator=generator).double() * 7.5 + 20
    return embeddings, labels.squeeze(1) if label_columns == 1 else labels


@pytest.mark.parametrize(
    ("rows", "dim", "seed", "label_values", "label_columns", "chunk"),
    [
        (2, 3, 0, 5, 1, None),
        (7, 4, 1, 3, 1, None),  # few label values: many ties
        (12, 8, 2, 12, 1, 5),  # chunks of 5 anchors
        (16, 5, 3, 4, 1, 1),  # one anchor per chunk
        (10, 6, 4, 3, 2, None),  # two label columns (L1 over them)
    ],
)
def test_loss_and_gradient_match_naive_reference(rows, dim, seed, label_values, label_columns, chunk):
    embeddings, labels = _batch(rows, dim, seed, label_values, label_columns)
    loss = rank_n_contrast_loss(embeddings, labels, temperature=2.0, anchor_chunk_size=chunk)
    (gradient,) = torch.autograd.grad(loss, embeddings)
    reference = naive_rank_n_contrast_loss(embeddings, labels, temperature=2.0)
    (reference_gradient,) = torch.autograd.grad(reference, embeddings)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-10)
    torch.testing.assert_close(gradient, reference_gradient, rtol=1e-8, atol=1e-12)


def test_loss_matches_reference_when_logits_span_a_huge_range():
    """Far-apart embeddings take the exact logcumsumexp path instead of the float64 prefix sums."""
    embeddings, labels = _batch(9, 3, 5, 4, scale=900.0)
    loss = rank_n_contrast_loss(embeddings, labels, temperature=1.0)
    (gradient,) = torch.autograd.grad(loss, embeddings)
    reference = naive_rank_n_contrast_loss(embeddings, labels, temperature=1.0)
    (reference_gradient,) = torch.autograd.grad(reference, embeddings)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-9)
    torch.testing.assert_close(gradient, reference_gradient, rtol=1e-7, atol=1e-12)


def test_float32_loss_is_close_to_float64_reference():
    embeddings, labels = _batch(24, 16, 6, 6)
    loss32 = rank_n_contrast_loss(embeddings.detach().float() + 30.0, labels.float())  # offset: centring matters
    assert loss32.item() == pytest.approx(naive_rank_n_contrast_loss(embeddings, labels).item(), rel=1e-5)


def test_loss_invariant_to_batch_order():
    embeddings, labels = _batch(15, 6, 7, 5)
    permutation = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    original = rank_n_contrast_loss(embeddings, labels)
    permuted = rank_n_contrast_loss(embeddings[permutation], labels[permutation])
    assert permuted.item() == pytest.approx(original.item(), rel=1e-12)


def test_loss_lower_when_embeddings_are_ordered_by_ef():
    ef = torch.linspace(20, 80, 32, dtype=torch.float64)
    ordered = (ef / 10).unsqueeze(1)  # the embedding is EF on a line
    shuffled = ordered[torch.randperm(32, generator=torch.Generator().manual_seed(0))]
    assert rank_n_contrast_loss(ordered, ef) < rank_n_contrast_loss(shuffled, ef) - 0.1


def test_loss_gives_finite_gradients_for_coincident_bf16_embeddings():
    """Two views with identical features (zero distance) and bf16 inputs: float32 compute, no NaN."""
    features = torch.randn(6, 8).to(torch.bfloat16)
    features[1] = features[0]
    features.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = rank_n_contrast_loss(features, torch.tensor([40.0, 40.0, 55.0, 60.0, 30.0, 70.0]))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(features.grad.float()).all()


def test_loss_needs_two_embeddings():
    with pytest.raises(ValueError, match="at least 2"):
        rank_n_contrast_loss(torch.randn(1, 4), torch.tensor([50.0]))


# ---------------------------------------------------------------------- heads and backbone


def test_regression_head_is_the_papers_layout():
    head = RegressionHead(32, dropout=0.4, initial_value=55.6)
    kinds = [type(layer) for layer in head]
    assert kinds == [nn.BatchNorm1d, nn.Dropout, nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Dropout, nn.Linear]
    assert head[1].p == head[5].p == 0.4 and head[2].in_features == head[2].out_features == 32
    assert head[-1].out_features == 1 and head[-1].bias.item() == pytest.approx(55.6)


def test_uniformer_small_has_the_published_shape():
    model = uniformer_small(in_channels=3).eval()
    parameters = sum(p.numel() for p in model.parameters())
    assert 20.5e6 < parameters < 21.5e6  # UniFormer-S without its 400-class head: 21.2M
    assert (model.patch_embed1.proj.kernel_size, model.patch_embed1.proj.stride) == ((3, 4, 4), (2, 4, 4))
    assert [len(blocks) for blocks in (model.blocks1, model.blocks2, model.blocks3, model.blocks4)] == [3, 4, 8, 3]
    assert all(isinstance(b, LocalBlock) for b in [*model.blocks1, *model.blocks2])
    assert all(isinstance(b, GlobalBlock) for b in [*model.blocks3, *model.blocks4])
    assert model.blocks3[0].attn.num_heads == 5 and model.blocks4[0].attn.num_heads == 8  # head_dim 64
    with torch.no_grad():
        features = model(torch.randn(2, 3, 8, 64, 64))
    assert features.shape == (2, 512) and model.out_features == 512


def test_uniformer_loads_a_wrapped_pretrained_state_dict(tmp_path):
    source = uniformer_tiny(in_channels=3).eval()
    state = {"module." + name: value for name, value in source.state_dict().items()}
    state["module.head.weight"] = torch.randn(400, 128)  # a classifier head is dropped
    torch.save({"model": state}, tmp_path / "weights.pth")
    grey = uniformer_tiny(in_channels=1, pretrained=str(tmp_path / "weights.pth")).eval()
    video = torch.randn(2, 1, 8, 32, 32)
    with torch.no_grad():  # grey input through summed RGB filters = the grey frame repeated on 3 channels
        torch.testing.assert_close(grey(video), source(video.expand(-1, 3, -1, -1, -1)), rtol=1e-4, atol=1e-5)
    with pytest.raises(FileNotFoundError):
        UniFormer(pretrained=str(tmp_path / "missing.pth"))


def test_stage1_regressor_loss_does_not_reach_the_encoder():
    model = CoReEcho(encoder=TinyVideoEncoder(1, 4, 2), embedding_plot=False)
    batch = {"video": torch.randn(4, 2, 1, 4, 16, 16), "ef": torch.tensor([30.0, 45.0, 50.0, 75.0])}
    with pytest.warns(UserWarning):  # self.log without a trainer
        total = model.training_step(batch, 0)
    total.backward()
    full = {name: p.grad.clone() for name, p in model.encoder.named_parameters()}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.regressor[-1].parameters())
    model.zero_grad()
    torch.manual_seed(0)
    features = model.encoder(batch["video"].flatten(0, 1))
    rank_n_contrast_loss(features, batch["ef"].repeat_interleave(2)).backward()
    for name, p in model.encoder.named_parameters():  # the encoder's gradient is the RnC gradient alone
        torch.testing.assert_close(full[name], p.grad, rtol=1e-4, atol=1e-6)


def test_stage2_module_freezes_and_optimises_the_regressor_only():
    model = CoReEcho(encoder=TinyVideoEncoder(1, 4, 2), stage=2, stage1_checkpoint="unused.ckpt")
    model.train()
    assert not model.encoder.training and model.regressor.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    optimizer = model.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.regressor.parameters()}


# ---------------------------------------------------------------------- real runs of the shipped phantom config


def phantom_config(data_dir: Path, run_dir: Path) -> dict:
    """configs/coreecho/phantom.yaml pointed at ``data_dir``, writing into ``run_dir`` (the run folder given once:
    the CLI puts the checkpoints in ``run_dir/checkpoints``; the logger is pinned to version 0 here)."""
    config = yaml.safe_load((ROOT / "configs" / "coreecho" / "phantom.yaml").read_text())
    trainer = config["trainer"]
    trainer.update(default_root_dir=str(run_dir), enable_progress_bar=False, enable_model_summary=False)
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(run_dir), "name": "logs", "version": 0},
    }
    config["data"]["init_args"]["data_dir"] = str(data_dir)
    return config


SHARED_DATA_KEYS = ("clip_length", "period", "frame_size", "channels", "num_eval_clips")


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "logs" / "version_0" / "test_summary.json").read_text())


@pytest.fixture(scope="module")
def stage1_run(phantom_echonet_train, echonet_train_baselines, tmp_path_factory) -> Path:
    """Stage 1 fitted with the shipped phantom config, then tested from its best checkpoint. The fit stops early once
    its validation MAE is well below the VAL mean predictor's and shortcut's (0.6 x the stronger)."""
    root = tmp_path_factory.mktemp("coreecho")
    run_dir = root / "stage1"
    config = phantom_config(phantom_echonet_train, run_dir)
    threshold = 0.6 * echonet_train_baselines["VAL"]["strongest_mae"]
    config["trainer"].setdefault("callbacks", []).append(
        {
            "class_path": "lightning.pytorch.callbacks.EarlyStopping",
            "init_args": {"monitor": "val/mae", "stopping_threshold": threshold, "patience": 1000},
        }
    )
    path = write_config(root / "stage1.yaml", config)
    fit = run_echolab("fit", "--config", str(path))
    assert fit.returncode == 0, fit.stderr[-3000:]
    test = run_echolab("test", "--config", str(path), "--ckpt_path", str(run_dir / "checkpoints" / "best.ckpt"))
    assert test.returncode == 0, test.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_stage1_embeddings_follow_ef_and_beat_the_shortcut_and_the_mean(
    stage1_run, phantom_echonet_train, echonet_train_baselines, tmp_path
):
    summary = _summary(stage1_run)
    baselines = echonet_train_baselines["TEST"]
    report = {"model": summary, "baselines": baselines}
    assert summary["pc1_spearman"] > 0.8, report  # the first principal component of the embeddings orders EF
    assert summary["mean_predictor_mae"] == pytest.approx(baselines["mean_mae"], abs=0.01), report  # same split
    # test MAE well below both always predicting the training mean and the anatomy-free shortcut, on the same split
    assert learned_ef(summary["test_mae"], baselines), report
    assert not learned_ef(baselines["shortcut_mae"], baselines)  # the bar: the shortcut itself fails it
    # the control: the same config tested untrained (no checkpoint) fails both checks
    control_dir = tmp_path / "untrained"
    control_config = write_config(tmp_path / "untrained.yaml", phantom_config(phantom_echonet_train, control_dir))
    control = run_echolab("test", "--config", str(control_config))
    assert control.returncode == 0, control.stderr[-3000:]
    untrained = _summary(control_dir)
    assert not learned_ef(untrained["test_mae"], baselines) and untrained["pc1_spearman"] < 0.8, untrained
    figures = stage1_run / "logs" / "version_0" / "figures"
    assert (figures / "test_ef_agreement.png").is_file() and (figures / "test_embeddings.png").is_file()


@pytest.fixture(scope="module")
def stage2_run(stage1_run, phantom_echonet_train) -> Path:
    run_dir = stage1_run.parent / "stage2"
    config = phantom_config(phantom_echonet_train, run_dir)
    config["trainer"]["max_epochs"] = config["model"]["init_args"]["scheduler"]["init_args"]["T_max"] = 2
    config["model"]["init_args"].update(stage=2, stage1_checkpoint=str(stage1_run / "checkpoints" / "best.ckpt"))
    path = write_config(stage1_run.parent / "stage2.yaml", config)
    fit = run_echolab("fit", "--config", str(path))
    assert fit.returncode == 0, fit.stderr[-3000:]
    test = run_echolab("test", "--config", str(path), "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"))
    assert test.returncode == 0, test.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_stage2_leaves_the_encoder_bit_identical_and_beats_the_shortcut(
    stage1_run, stage2_run, echonet_train_baselines
):
    before = torch.load(stage1_run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    after = torch.load(stage2_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["global_step"] > 0
    encoder = [name for name in before if name.startswith("encoder.")]
    assert any("running_mean" in name for name in encoder)  # BatchNorm buffers are part of the comparison
    for name in encoder:
        assert torch.equal(before[name], after["state_dict"][name]), name
    changed = [n for n in before if n.startswith("regressor.") and not torch.equal(before[n], after["state_dict"][n])]
    assert changed  # the regressor did train
    summary = _summary(stage2_run)
    assert summary["stage"] == 2, summary
    assert learned_ef(summary["test_mae"], echonet_train_baselines["TEST"]), (summary, echonet_train_baselines["TEST"])


@pytest.mark.slow
def test_predict_on_a_folder_of_avis_writes_per_video_csv(stage2_run, phantom_echonet_train, tmp_path):
    folder = tmp_path / "incoming"
    names = sorted(p.stem for p in (phantom_echonet_train / "Videos").glob("*.avi"))[:4]
    for number, name in enumerate(names):  # nested folders: the search is recursive
        target = folder / ("site_a" if number % 2 else "site_b" / Path("day1")) / f"{name}.avi"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(phantom_echonet_train / "Videos" / f"{name}.avi", target)
    config = phantom_config(phantom_echonet_train, tmp_path / "run")
    config["data"] = {
        "class_path": "datamodules.video_folder.VideoFolderDataModule",
        "init_args": {key: config["data"]["init_args"][key] for key in SHARED_DATA_KEYS}
        | {"data_dir": str(folder), "num_workers": 0, "batch_size": 2},
    }
    out = tmp_path / "predictions.csv"
    result = run_echolab(
        "predict", "--config", str(write_config(tmp_path / "predict.yaml", config)),
        "--ckpt_path", str(stage2_run / "checkpoints" / "last.ckpt"), "--model.init_args.predictions_csv", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(out)
    assert list(table.columns) == ["FileName", "EF_pred", "EF_clip_std", "num_clips", "EF_true"]
    assert sorted(table["FileName"]) == sorted(
        f"site_a/{n}" if i % 2 else f"site_b/day1/{n}" for i, n in enumerate(names)
    )
    assert (table["num_clips"] == 4).all() and (table["EF_clip_std"] >= 0).all() and table["EF_true"].isna().all()
    assert table["EF_pred"].between(5, 95).all()
    # the folder was normalised with the training run's statistics (carried by the checkpoint), not its own: the
    # same predictions as with those statistics given explicitly
    assert "normalising with the training run's statistics from the checkpoint" in result.stdout + result.stderr
    stats = torch.load(stage2_run / "checkpoints" / "last.ckpt", weights_only=True)["normalisation"]
    explicit_out = tmp_path / "explicit.csv"
    explicit = run_echolab(
        "predict", "--config", str(tmp_path / "predict.yaml"), "--ckpt_path", str(stage2_run / "checkpoints" / "last.ckpt"),
        "--model.init_args.predictions_csv", str(explicit_out),
        "--data.init_args.mean", str(stats["mean"]), "--data.init_args.std", str(stats["std"]),
    )  # fmt: skip
    assert explicit.returncode == 0, explicit.stderr[-3000:]
    pd.testing.assert_frame_equal(table, pd.read_csv(explicit_out))
