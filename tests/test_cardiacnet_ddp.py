"""CardiacNet under DDP: memory banks filled from every rank hold identical rows on each rank (and the rows a single
process would hold for the concatenated batches); codebook initialisation and restarts agree across ranks; a real
2-process Lightning fit ends with identical banks on both ranks, and a 2-process test reports what one process does."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from echo_modules.cardiacnet.codebook import VectorQuantiser
from echo_modules.cardiacnet.memory_bank import ClassMemoryBanks
from tests.helpers import run_echolab, write_config
from tests.test_cardiacnet import cardiacnet_pah_phantom, tiny_cardiacnet_config  # noqa: F401 (a fixture)

STEPS, SIZE, DIM = 5, 8, 3


def _rank_batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s rows at ``step``: unequal row counts per rank, distinct values, both classes."""
    rows = 3 if rank == 0 else 2
    generator = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(rows, DIM, generator=generator), torch.randint(0, 2, (rows,), generator=generator)


def _bank_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        banks = ClassMemoryBanks(num_classes=2, size=SIZE, dim=DIM)
        for step in range(STEPS):
            banks.enqueue(*_rank_batch(rank, step))
        torch.manual_seed(rank)  # a different random codebook on each rank before initialisation
        quantiser = VectorQuantiser(num_codes=32, dim=DIM).train()  # more entries than the 16 tokens
        quantiser.usage_decay = 0.0  # usage = this step's (all-reduced) counts: unused entries restart
        quantiser(torch.randn(2, DIM, 1, 2, 2, generator=torch.Generator().manual_seed(rank + 7)))
        initial = quantiser.codebook.detach().clone()
        restarted = len(quantiser.restart_dead_codes())
        torch.save(
            {"banks": banks.state_dict(), "initial": initial, "codebook": quantiser.codebook.detach().clone(),
             "restarted": restarted},
            f"{out_dir}/rank{rank}.pt",
        )  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_banks_and_codebooks_are_identical_across_two_gloo_ranks(tmp_path):
    mp.spawn(_bank_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for key, value in ranks[0]["banks"].items():
        assert torch.equal(value, ranks[1]["banks"][key]), key
    # the same rows a single process holds after pushing each step's batches in rank order
    single = ClassMemoryBanks(num_classes=2, size=SIZE, dim=DIM)
    for step in range(STEPS):
        parts = [_rank_batch(rank, step) for rank in range(2)]
        for label in range(2):
            rows = torch.cat([features[labels == label] for features, labels in parts])
            if len(rows):
                single[label].push(rows)
    for key, value in single.state_dict().items():
        assert torch.equal(value, ranks[0]["banks"][key]), key
    assert int(ranks[0]["banks"]["banks.0.count"]) + int(ranks[0]["banks"]["banks.1.count"]) > SIZE  # both wrapped
    assert torch.equal(ranks[0]["initial"], ranks[1]["initial"])  # initialised from rank 0's features
    assert ranks[0]["restarted"] == ranks[1]["restarted"] > 0
    assert torch.equal(ranks[0]["codebook"], ranks[1]["codebook"])


class SaveBanksPerRank(L.Callback):
    """Test helper: at the end of training every rank saves its CardiacNet banks to ``out_dir/rank<r>.pt``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        state = {k: v.cpu() for k, v in pl_module.banks.state_dict().items()}
        torch.save(state, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_lightning_ddp_fit_keeps_identical_banks_on_both_ranks(cardiacnet_pah_phantom, tmp_path):

    run_dir = tmp_path / "ddp"
    config = tiny_cardiacnet_config(cardiacnet_pah_phantom, run_dir, max_epochs=1)
    config["trainer"].update(
        strategy="ddp_find_unused_parameters_true", devices=2, limit_train_batches=3, limit_val_batches=1
    )
    config["trainer"]["callbacks"].append(
        {"class_path": "tests.test_cardiacnet_ddp.SaveBanksPerRank", "init_args": {"out_dir": str(tmp_path / "banks")}}
    )
    fit = run_echolab("fit", "--config", str(write_config(tmp_path / "ddp.yaml", config)))
    assert fit.returncode == 0, fit.stderr[-3000:]
    ranks = [torch.load(tmp_path / "banks" / f"rank{rank}.pt") for rank in range(2)]
    batch = config["data"]["init_args"]["batch_size"]
    # 3 steps x 2 ranks x batch pairs: each class bank got every rank's clips of each step
    assert int(ranks[0]["normal_to_abnormal.banks.0.count"]) == min(3 * 2 * batch, 64)
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
    checkpoint_path = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    saved = checkpoint["state_dict"]["banks.normal_to_abnormal.banks.0.features"]  # the banks travel in the checkpoint
    assert torch.equal(saved, ranks[0]["normal_to_abnormal.banks.0.features"])

    # testing that checkpoint on 2 ranks reports what one process reports (every video once, metrics synced)
    summaries = {}
    for name, devices in (("ddp_test", 2), ("single_test", 1)):
        test_config = tiny_cardiacnet_config(cardiacnet_pah_phantom, run_dir)
        test_config["trainer"].update(strategy="ddp" if devices > 1 else "auto", devices=devices)
        test_config["trainer"]["logger"]["init_args"]["version"] = name
        path = write_config(tmp_path / f"{name}.yaml", test_config)
        test = run_echolab("test", "--config", str(path), "--ckpt_path", str(checkpoint_path))
        assert test.returncode == 0, test.stderr[-3000:]
        summaries[name] = json.loads((run_dir / "logs" / name / "test_summary.json").read_text())
    ddp, single = summaries["ddp_test"], summaries["single_test"]
    assert ddp["videos"] == single["videos"] == 48  # the test split (40% of 120)
    for key in (
        "test/auroc",
        "test/accuracy",
        "map_region_mass",
        "map_control_mass",
        "test/map_region_mass",
        "test/structure_dice",
        "structure_dice",
        "test/structure_dice_normal",
    ):
        assert ddp[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key

    # predict on 2 ranks: one CSV row and one map video per test video, written once
    predict_config = tiny_cardiacnet_config(cardiacnet_pah_phantom, run_dir)
    predict_config["trainer"].update(strategy="ddp", devices=2)
    predict_config["trainer"]["logger"]["init_args"]["version"] = "ddp_predict"
    path = write_config(tmp_path / "ddp_predict.yaml", predict_config)
    predict = run_echolab("predict", "--config", str(path), "--ckpt_path", str(checkpoint_path))
    assert predict.returncode == 0, predict.stderr[-3000:]
    table = pd.read_csv(run_dir / "logs" / "ddp_predict" / "predictions.csv")
    assert len(table) == table["FileName"].nunique() == 48
    videos = list((run_dir / "logs" / "ddp_predict" / "abnormality_maps").rglob("*.avi"))
    assert len(videos) == 48
