"""Transfer: a CoReEcho checkpoint's encoder initialises a UniFormer elsewhere (configs/coreecho/hmcqu.yaml)."""

from __future__ import annotations

import torch

from echo_modules.common.uniformer import UniFormer
from echo_modules.coreecho import CoReEcho

TINY = dict(depths=[1, 1, 1, 1], dims=[16, 32, 64, 128], head_dim=16, in_channels=1)


def test_coreecho_checkpoint_encoder_loads_into_a_uniformer(tmp_path):
    module = CoReEcho(encoder=UniFormer(**TINY))
    path = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)  # the layout of a Lightning checkpoint
    transferred = UniFormer(**TINY, pretrained=str(path))
    for name, value in module.encoder.state_dict().items():
        assert torch.equal(transferred.state_dict()[name], value), name
    fresh = UniFormer(**TINY)
    assert any(not torch.equal(fresh.state_dict()[n], v) for n, v in module.encoder.state_dict().items())
