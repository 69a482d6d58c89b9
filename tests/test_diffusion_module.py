"""The SPADE 3D UNet and the EchoDiffusion module's mechanics: conditioning paths, condition dropout in training,
guidance at sampling, gradient checkpointing, EMA, config errors, metrics and the privacy filter."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from datamodules.errors import ConfigError, DataError
from echo_modules.diffusion import EchoDiffusion, SpadeUNet3D
from echo_modules.diffusion.metrics import (
    FrechetVideoDistance,
    MyocardiumThreshold,
    TinyFrameSegmenter,
    dice,
    lv_area_change,
    mask_consistency,
    per_frame_ssim,
)
from echo_modules.diffusion.privacy import PrivacyFilter


def tiny_network(**overrides) -> SpadeUNet3D:
    options = dict(base_channels=8, channel_mults=(1, 2), spade_hidden=8, frame_embed_dim=8, heads=2,
                   ef_conditioning=True)  # fmt: skip
    return SpadeUNet3D(**(options | overrides))


def random_map(b: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 4, (b, size, size), generator=torch.Generator().manual_seed(seed))


def one_hot(ed_mask: torch.Tensor) -> torch.Tensor:
    return F.one_hot(ed_mask, 4).permute(0, 3, 1, 2).float()


def perturbed(network: SpadeUNet3D) -> SpadeUNet3D:
    """Zero-initialised output layers make a fresh UNet output zeros; give every weight a value."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return network


def test_unet_shapes_and_every_condition_reaches_the_output():
    network = perturbed(tiny_network()).eval()
    x = torch.randn(2, 1, 4, 16, 16)
    time = torch.tensor([10.0, 500.0])
    seg_map = one_hot(random_map())
    out = network(x, time, seg_map, torch.tensor([30.0, 70.0]))
    assert out.shape == x.shape
    assert not torch.allclose(out, network(x, time, torch.zeros_like(seg_map), torch.tensor([30.0, 70.0])))
    assert not torch.allclose(out, network(x, time, seg_map, torch.tensor([60.0, 20.0])))
    assert not torch.allclose(out, network(x, time, seg_map, torch.tensor([math.nan, math.nan])))  # null EF
    assert not torch.allclose(out, network(x, time + 100, seg_map, torch.tensor([30.0, 70.0])))
    # SPADE's frame-time embedding: the same input in every frame still gives frame-dependent output
    still = x[:, :, :1].expand_as(x).contiguous()
    varied = network(still, time, seg_map)
    assert (varied[:, :, 0] - varied[:, :, -1]).abs().mean() > 1e-4
    # batch items are independent (no cross-sample mixing in attention or norms)
    single = network(x[:1], time[:1], seg_map[:1], torch.tensor([30.0]))
    assert torch.allclose(single, out[:1], atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    plain, checkpointed = perturbed(tiny_network()), perturbed(tiny_network(gradient_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    x, time, seg_map = torch.randn(2, 1, 4, 16, 16), torch.tensor([3.0, 700.0]), one_hot(random_map())
    for network in (plain, checkpointed):
        network.train()
        network(x, time, seg_map, torch.tensor([40.0, 50.0])).square().mean().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_factorised_spade_condition_computes_the_dense_convolution():
    """SPADE's shared convolution of the factorised condition (per-video maps + per-frame codes, see SpadeCondition)
    gives the outputs and gradients of the convolution of the dense (B, K, T, H, W) condition, at every level
    (the nearest-downsampled maps), with and without EF, null EF included."""
    from echo_modules.diffusion.networks import SPADE, SpadeCondition

    dense_forward = SPADE.forward

    def as_dense(self, features, condition):
        return dense_forward(self, features, condition.dense() if isinstance(condition, SpadeCondition) else condition)

    for ef_conditioning, ef in ((True, torch.tensor([30.0, math.nan])), (False, None)):
        network = perturbed(tiny_network(ef_conditioning=ef_conditioning)).train()
        x, time, seg_map = torch.randn(2, 1, 4, 16, 16), torch.tensor([3.0, 700.0]), one_hot(random_map())
        condition = network.condition(seg_map, 4, ef)
        channels = network.middle[0].block.norm1.shared[0].in_channels  # SPADE's condition channels
        assert condition.dense().shape == (2, channels, 4, 16, 16)
        assert sorted(condition.static_index + condition.temporal_index) == list(range(channels))
        outputs, grads = [], []
        for patched in (False, True):
            network.zero_grad()
            if patched:
                SPADE.forward = as_dense
            try:
                out = network(x, time, seg_map, ef)
                out.square().mean().backward()
            finally:
                SPADE.forward = dense_forward
            outputs.append(out)
            grads.append([p.grad.clone() for p in network.parameters() if p.grad is not None])
        torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-4)
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_temporal_attention_levels_choose_where_frames_attend():
    from echo_modules.diffusion.networks import TemporalAttention

    def count(network):
        return sum(isinstance(m, TemporalAttention) for m in network.modules())

    every, coarse = tiny_network(), tiny_network(temporal_attention_levels=[1])
    assert count(every) == 8 and count(coarse) == 5  # down 1 + 1, middle 2, up 2 + 2 -> down1, middle, up1
    assert count(tiny_network(temporal_attention=False)) == 0
    out = perturbed(coarse)(torch.randn(1, 1, 4, 16, 16), torch.tensor([5.0]), one_hot(random_map(1)))
    assert out.shape == (1, 1, 4, 16, 16)


class RecordingNetwork(torch.nn.Module):
    """Stands in for the UNet to see what the module feeds it: predicts ``k * x`` per condition."""

    num_classes, in_channels, ef_conditioning = 4, 1, True

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.calls: list[dict] = []

    def forward(self, x, time, seg_map, ef=None):
        self.calls.append({"seg_map": seg_map.detach().clone(), "ef": None if ef is None else ef.clone()})
        conditioned = (seg_map.flatten(1).sum(1) > 0).float().reshape(-1, 1, 1, 1, 1)
        return self.weight * x * (0.5 + 0.25 * conditioned)


def tiny_batch(b: int = 64) -> dict:
    return {"video": torch.randn(b, 1, 2, 8, 8), "ed_mask": random_map(b, 8), "ef": torch.full((b,), 55.0)}


def test_condition_dropout_is_applied_in_training_only():
    network = RecordingNetwork()
    model = EchoDiffusion(network, map_drop_prob=0.5, ef_drop_prob=0.25, ema_decay=None)
    torch.manual_seed(0)
    model.train()
    model.loss(tiny_batch(400))
    call = network.calls[-1]
    dropped_maps = (call["seg_map"].flatten(1).sum(1) == 0).float().mean().item()
    dropped_ef = torch.isnan(call["ef"]).float().mean().item()
    assert 0.4 < dropped_maps < 0.6 and 0.17 < dropped_ef < 0.33
    model.eval()
    model.loss(tiny_batch(400))
    assert (network.calls[-1]["seg_map"].flatten(1).sum(1) > 0).all() and not torch.isnan(network.calls[-1]["ef"]).any()


def test_ef_shuffle_permutes_the_efs_across_the_batch_in_training_step_only():
    """The EF-permuted control: ``training_step`` hands the network the batch's EFs in another order (the maps stay
    with their videos, the batch itself is not changed, condition dropout still applies); ``loss`` called directly,
    validation and a model without ``ef_shuffle`` see every EF with its own video."""
    batch = tiny_batch(64) | {"ef": torch.arange(64.0) + 10}
    maps = one_hot(batch["ed_mask"])

    def seen_by_the_network(model, step):
        network = model.network
        step(batch, 0)
        call = network.calls[-1]
        assert torch.equal(call["seg_map"], maps)  # no map dropout here: the maps in batch order
        return call["ef"]

    torch.manual_seed(0)
    shuffled = EchoDiffusion(RecordingNetwork(), map_drop_prob=0.0, ef_drop_prob=0.0, ef_shuffle=True, ema_decay=None)
    shuffled.train()
    ef = seen_by_the_network(shuffled, shuffled.training_step)
    assert torch.equal(ef.sort().values, batch["ef"])  # the same EFs ...
    assert (ef == batch["ef"]).float().mean() < 0.2  # ... paired with other videos
    assert not torch.equal(seen_by_the_network(shuffled, shuffled.training_step), ef)  # a new permutation each step
    assert torch.equal(batch["ef"], torch.arange(64.0) + 10)  # the batch is left as it was
    assert torch.equal(seen_by_the_network(shuffled, lambda b, i: shuffled.loss(b)), batch["ef"])  # training_step only
    shuffled.eval()
    assert torch.equal(seen_by_the_network(shuffled, shuffled.validation_step), batch["ef"])
    plain = EchoDiffusion(RecordingNetwork(), map_drop_prob=0.0, ef_drop_prob=0.0, ema_decay=None).train()
    assert torch.equal(seen_by_the_network(plain, plain.training_step), batch["ef"])
    # EF dropout after the permutation: a quarter dropped, the rest are EFs of the batch, mostly of other videos
    dropping = EchoDiffusion(RecordingNetwork(), map_drop_prob=0.0, ef_drop_prob=0.25, ef_shuffle=True, ema_decay=None)
    dropping.train()
    ef = seen_by_the_network(dropping, dropping.training_step)
    kept = ~torch.isnan(ef)
    assert 0.1 < 1 - kept.float().mean() < 0.4 and torch.isin(ef[kept], batch["ef"]).all()
    assert (ef[kept] == batch["ef"][kept]).float().mean() < 0.2


@pytest.mark.parametrize("objective", ["epsilon", "flow"])
def test_guidance_is_applied_at_sampling(objective):
    """With a network predicting a*x (conditional) and b*x (null), one guided step must use a + s(a - b)."""
    network = RecordingNetwork()
    model = EchoDiffusion(network, objective=objective, guidance_scale=3.0, ema_decay=None,
                          sampler="euler" if objective == "flow" else "ddim", num_sampling_steps=1)  # fmt: skip
    ed_mask = random_map(2, 8)
    out = model.generate(ed_mask, torch.tensor([30.0, 60.0]), num_frames=2, seeds=[5, 6])
    call = network.calls[-1]
    assert len(call["seg_map"]) == 4 and (call["seg_map"][2:] == 0).all() and torch.isnan(call["ef"][2:]).all()
    noise = torch.stack([torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
    guided = 0.75 + 3.0 * (0.75 - 0.5)  # per-unit-x prediction after eq. 7
    if objective == "flow":
        expected = noise - guided * noise  # one Euler step from t = 1 to 0
    else:
        a = model.alpha_bar[-1].double()
        expected = ((noise - (1 - a).sqrt() * guided * noise) / a.sqrt()).float()  # DDIM's last step lands on x0
    assert torch.allclose(out, expected, rtol=1e-4, atol=1e-4)
    # guidance scale 0: a single conditional pass
    model.generate(ed_mask, None, num_frames=2, seeds=[5, 6], guidance_scale=0.0)
    assert len(network.calls[-1]["seg_map"]) == 2


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="does not fit objective"):
        EchoDiffusion(RecordingNetwork(), objective="flow", sampler="ddim")
    with pytest.raises(ConfigError, match="objective"):
        EchoDiffusion(RecordingNetwork(), objective="x0")
    model = EchoDiffusion(RecordingNetwork(), ema_decay=None)
    bad = tiny_batch(2)
    bad["ed_mask"][0, 0, 0] = 7
    with pytest.raises(DataError, match="num_classes"):
        model.loss(bad)
    with pytest.raises(DataError, match="ed_mask"):
        model.loss({"video": torch.zeros(1, 1, 2, 8, 8)})


def test_ema_callback_is_added_and_writer_is_always_there():
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from echo_modules.diffusion.export import SyntheticEchoNetWriter

    kinds = [type(c) for c in EchoDiffusion(RecordingNetwork(), ema_decay=0.99).configure_callbacks()]
    assert EMAWeightAveraging in kinds and SyntheticEchoNetWriter in kinds
    assert EMAWeightAveraging not in [
        type(c) for c in EchoDiffusion(RecordingNetwork(), ema_decay=None).configure_callbacks()
    ]


def test_metrics_against_naive_references():
    a, b = torch.zeros(3, 4, 4, dtype=torch.bool), torch.zeros(3, 4, 4, dtype=torch.bool)
    a[0, :2], b[0, 1:3] = True, True  # 8 and 8 pixels, 4 shared
    a[1, 0, 0] = True
    assert torch.allclose(dice(a, b), torch.tensor([0.5, 0.0, 1.0]))
    video = torch.rand(2, 1, 3, 16, 16)
    assert torch.allclose(per_frame_ssim(video, video), torch.ones(2), atol=1e-5)
    assert (per_frame_ssim(torch.rand(2, 1, 3, 16, 16), video) < 0.3).all()
    # LV area change: a cavity that loses a third of its dark pixels by the last frame
    ed_mask = torch.zeros(1, 8, 8, dtype=torch.long)
    ed_mask[0, 2:5, 2:5] = 1
    frames = torch.ones(1, 1, 3, 8, 8)
    frames[0, 0, :, 2:5, 2:5] = 0.0
    frames[0, 0, 2, 2, 2:5] = 1.0
    assert lv_area_change(frames, ed_mask, 0.5).item() == pytest.approx(1 / 3)


def test_mask_consistency_and_threshold_segmenter_on_a_drawn_heart():
    ed_mask = torch.zeros(2, 16, 16, dtype=torch.long)
    ed_mask[:, 3:12, 3:13] = 2
    ed_mask[:, 5:10, 5:11] = 1
    video = (ed_mask == 2).float()[:, None, None].expand(-1, 1, 3, -1, -1) * 2.0 - 0.2
    video = video + 0.1 * (ed_mask == 0).float()[:, None, None]  # tissue outside the heart: about as dark as blood
    segmenter = MyocardiumThreshold.fit(video, ed_mask)
    assert segmenter.threshold == pytest.approx(0.8)
    assert mask_consistency(video, ed_mask, segmenter).min() > 0.99
    shifted = torch.roll(ed_mask, 4, dims=2)
    assert mask_consistency(video, shifted, segmenter).max() < 0.6


def test_tiny_frame_segmenter_learns_a_drawn_heart():
    ed_mask = torch.zeros(4, 16, 16, dtype=torch.long)
    for i in range(4):
        ed_mask[i, 3 + i : 12 + i % 2, 3:13] = 2
        ed_mask[i, 5 + i : 10, 5:11] = 1
    frames = (ed_mask == 2).float()[:, None] * 2.0 + 0.3 * torch.randn(
        4, 1, 16, 16, generator=torch.Generator().manual_seed(0)
    )
    segmenter = TinyFrameSegmenter.fit(frames, ed_mask, steps=150)
    video = frames[:, :, None]
    assert mask_consistency(video, ed_mask, segmenter).mean() > 0.8
    assert mask_consistency(video, torch.roll(ed_mask, 4, dims=2), segmenter).mean() < 0.5


def test_frechet_video_distance_orders_distributions():
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(24, 1, 4, 16, 16, generator=generator)
    close = real + 0.01 * torch.randn(real.shape, generator=generator)
    far = torch.rand(24, 1, 4, 16, 16, generator=generator) ** 3
    distances = []
    for fake in (close, far):
        fvd = FrechetVideoDistance()
        fvd.update(real, real=True)
        fvd.update(fake, real=False)
        distances.append(fvd.compute().item())
    assert distances[0] < 0.1 * distances[1]


def test_frame_fid_refuses_to_download():
    from echo_modules.diffusion.metrics import frame_fid

    with pytest.raises(ConfigError, match="Inception weights"):
        frame_fid(None)


def test_privacy_filter_threshold_and_planted_copy():
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(20, 1, 2, 16, 16, generator=generator)
    privacy = PrivacyFilter.from_videos(train, percentile=95.0)
    assert privacy.threshold == pytest.approx(torch.quantile(privacy.real_nearest, 0.95).item())
    fresh = torch.randn(40, 1, 2, 16, 16, generator=generator)  # new patients from the same distribution
    planted = train[[3]] + 0.01 * torch.randn(1, 1, 2, 16, 16, generator=generator)
    accepted = privacy.accept(torch.cat([fresh, planted]))
    assert accepted[:40].float().mean() >= 0.85 and not accepted[40]
    assert privacy.nearest_similarity(planted)[1].item() == 3


def test_lv_area_ef_reads_a_known_contraction_and_the_agreement_summary_matches_a_naive_count():
    from echo_modules.diffusion.ef_scoring import LVAreaEF, ef_agreement

    ed_mask = torch.zeros(4, 16, 16, dtype=torch.long)
    ed_mask[:, 4:12, 4:12] = 1  # LV cavity, 64 px
    ed_mask[:, 2:14, 2:4] = 2  # a strip of myocardium
    fractions = torch.tensor([0.125, 0.25, 0.5, 0.75])
    videos = torch.full((4, 1, 3, 16, 16), 2.0)  # bright tissue
    videos[:, :, :, 4:12, 4:12] = -1.0  # dark blood in every frame ...
    for i, fraction in enumerate(fractions.tolist()):  # ... until the wall moves into the cavity at frame 2
        videos[i, :, 2, 4 : 4 + int(8 * fraction), 4:12] = 2.0
    ef = 20 + 60 * fractions
    scorer = LVAreaEF.fit(videos, ed_mask, ef)
    assert torch.allclose(scorer(videos, ed_mask).float(), ef, atol=1e-3)
    assert abs(scorer.slope - 60) < 1e-3 and abs(scorer.intercept - 20) < 1e-3
    rows = [
        {"map": "a", "ssim": 0.5, "requested": 30.0, "source": 30.0, "measured": 35.0, "measured_ef_blind": 50.0,
         "measured_real": 31.0},
        {"map": "a", "ssim": 0.7, "requested": 70.0, "source": 30.0, "measured": 60.0, "measured_ef_blind": 50.0,
         "measured_real": 31.0},
        {"map": "b", "ssim": 0.6, "requested": 30.0, "source": 70.0, "measured": 40.0, "measured_ef_blind": 45.0,
         "measured_real": 66.0},
        {"map": "b", "ssim": 0.6, "requested": 70.0, "source": 70.0, "measured": 38.0, "measured_ef_blind": 45.0,
         "measured_real": 66.0},
    ]  # fmt: skip
    summary = ef_agreement(rows)
    assert summary["videos"] == 4 and summary["ssim"] == pytest.approx(0.6)
    assert summary["ef_mae"] == pytest.approx((5 + 10 + 10 + 32) / 4)
    assert summary["ef_mae_ef_blind"] == pytest.approx((20 + 20 + 15 + 25) / 4)
    assert summary["ef_mae_constant"] == pytest.approx(20.0)
    assert summary["scorer_mae_real"] == pytest.approx((1 + 1 + 4 + 4) / 4)
    assert summary["ef_direction"] == 0.5 and summary["ef_rise"] == pytest.approx((25 - 2) / 2)
    assert summary["ef_rise_requested"] == 40.0
