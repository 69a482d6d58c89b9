"""CoReEcho under DDP: the contrastive loss of the global batch, split over ranks, gives the single-process loss and
gradient (2 CPU processes over gloo); and a real 2-process Lightning fit runs stage 1."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from echo_modules.coreecho.losses import distributed_rank_n_contrast_loss, rank_n_contrast_loss
from tests.helpers import check_ddp_test_and_predict, run_echolab, tiny_ef_config, write_config

TEMPERATURE = 2.0


def _global_batch(rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(rows, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(20, 80, (rows,), generator=generator).double()
    labels[1] = labels[0]  # ties in EF
    labels[rows // 2 + 1] = labels[rows // 2]  # two views of one clip: same label, on different ranks
    return inputs, labels, torch.randn(4, 6, generator=generator, dtype=torch.float64)


def _projection(weight: torch.Tensor) -> torch.nn.Linear:
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def _rank_worker(rank: int, world_size: int, init_file: str, sizes: list[int], out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        inputs, labels, weight = _global_batch(sum(sizes))
        start = sum(sizes[:rank])
        local = slice(start, start + sizes[rank])
        # (1) the loss share and the gradient w.r.t. this rank's embeddings
        embeddings = inputs[local].clone().requires_grad_(True)
        share = distributed_rank_n_contrast_loss(embeddings, labels[local], TEMPERATURE)
        share.backward()
        # (2) end to end: a DDP-wrapped encoder, whose gradients DDP averages over ranks
        encoder = torch.nn.parallel.DistributedDataParallel(_projection(weight))
        ddp_share = distributed_rank_n_contrast_loss(encoder(inputs[local]), labels[local], TEMPERATURE)
        ddp_share.backward()
        torch.save(
            {"share": share.detach(), "grad": embeddings.grad, "weight_grad": encoder.module.weight.grad},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sizes", [[6, 6], [5, 3]], ids=["equal", "unequal"])
def test_two_process_loss_and_gradients_equal_single_process(tmp_path, sizes):
    world_size = len(sizes)
    arguments = (world_size, str(tmp_path / "init"), sizes, str(tmp_path))
    mp.spawn(_rank_worker, args=arguments, nprocs=world_size, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(world_size)]

    inputs, labels, weight = _global_batch(sum(sizes))
    embeddings = inputs.clone().requires_grad_(True)
    single = rank_n_contrast_loss(embeddings, labels, TEMPERATURE)
    single.backward()
    encoder = _projection(weight)
    rank_n_contrast_loss(encoder(inputs), labels, TEMPERATURE).backward()

    # the mean of the per-rank shares is the global loss (what sync_dist logging reports)
    assert torch.stack([r["share"] for r in results]).mean().item() == pytest.approx(single.item(), rel=1e-10)
    # each rank's embedding gradient is world_size x the global gradient of its rows; DDP's averaging divides it out
    ddp_grad = torch.cat([r["grad"] for r in results]) / world_size
    torch.testing.assert_close(ddp_grad, embeddings.grad, rtol=1e-9, atol=1e-12)
    for result in results:  # after DDP's all-reduce every rank holds the single-process parameter gradient
        torch.testing.assert_close(result["weight_grad"], encoder.weight.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_lightning_ddp_stage1_fit_runs(phantom_echonet, tmp_path):
    """A 2-process Lightning fit of stage 1 (gathering inside training_step) runs and logs a finite loss; DDP test and
    predict then report every test video once."""
    run_dir = tmp_path / "ddp"
    config = tiny_ef_config(phantom_echonet, run_dir, **{"trainer.max_epochs": 1})
    config["trainer"].update(strategy="ddp", devices=2, limit_train_batches=3)
    config["model"] = {
        "class_path": "echo_modules.coreecho.CoReEcho",
        "init_args": {
            "encoder": {
                "class_path": "echo_modules.common.TinyVideoEncoder",
                "init_args": {"in_channels": 1, "width": 8, "depth": 3},
            },
            "embedding_plot": False,
        },
    }
    config["data"]["init_args"]["num_views"] = 2
    config["trainer"]["callbacks"][0]["init_args"] = {"dirpath": str(run_dir / "checkpoints"), "save_last": True}
    path = write_config(tmp_path / "ddp.yaml", config)
    fit = run_echolab("fit", "--config", str(path))
    assert fit.returncode == 0, fit.stderr[-3000:]
    metrics = pd.read_csv(run_dir / "logs" / "version_0" / "metrics.csv")
    losses = metrics["train/rnc_loss"].dropna()
    assert len(losses) == 3 and losses.between(0, 50).all()
    assert metrics["val/mae"].notna().any()
    check_ddp_test_and_predict(path, run_dir / "checkpoints" / "last.ckpt", run_dir, phantom_echonet)
