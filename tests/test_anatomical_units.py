"""Pure parts of the anatomical VAE against naive references: attribute loss, snake smoothing and its binary search,
KDE and rejection sampling, temporal metrics, Simpson's biplane indices on phantom ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from echo_modules.anatomical_vae.latent_bank import GaussianKDE, rejection_sample_bank, select_bandwidth
from echo_modules.anatomical_vae.losses import attribute_loss, attribute_loss_naive, kl_divergence, soft_dice_loss
from echo_modules.anatomical_vae.postprocess import (
    second_difference,
    smooth_attribute_dim,
    smooth_latent_sequence,
    snake,
    temporal_metrics,
)


def test_attribute_loss_equals_the_pairwise_loop_with_ties_and_missing_values():
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(7, 3, generator=generator)
    attributes = torch.randint(0, 3, (7, 3), generator=generator).float()  # ties: sign 0
    attributes[2, 1] = math.nan
    np.testing.assert_allclose(
        attribute_loss(latent, attributes, 16.0).item(),
        attribute_loss_naive(latent, attributes, 16.0).item(),
        rtol=1e-5,
    )
    # ordered latents give a small loss, reversed ones a large one
    values = torch.arange(6.0)[:, None]
    assert attribute_loss(values, values, 16.0) < 0.2 < 1.5 < attribute_loss(-values, values, 16.0)


def test_kl_and_dice_against_closed_forms():
    mean, log_var = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]])
    expected = 0.5 * (1.0 + 0.0) + 0.5 * (4.0 - 1.0 - math.log(4.0))
    assert kl_divergence(mean, log_var).item() == pytest.approx(expected)
    target = torch.randint(0, 4, (2, 8, 8))
    perfect = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-4)


def _castor_descent(signal: np.ndarray, weight: float, steps: int = 20000) -> np.ndarray:
    """castor's snake as castor runs it: momentum gradient descent on (x - x0) + w * (x - neighbour mean)."""
    x, velocity = signal.copy(), np.zeros_like(signal)
    for _ in range(steps):
        padded = np.concatenate([[x[0]], x, [x[-1]]])
        neighbours = 0.5 * (padded[:-2] + padded[2:])
        velocity = 0.9 * velocity - 0.01 * ((x - signal) + weight * (x - neighbours))
        x = x + velocity
    return x


def test_snake_is_the_stationary_point_of_the_momentum_descent():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=12).cumsum()
    weight = 7.0
    np.testing.assert_allclose(snake(signal, weight, "castor"), _castor_descent(signal, weight), atol=1e-6)


def _naive_trend(signal: np.ndarray, boundary: str) -> np.ndarray:
    """The least-squares trend by numpy's own fits: np.polyfit of the boundary's degree, or a lstsq on 1 and the
    half cosine cos(pi t / (T - 1))."""
    frames = np.arange(len(signal), dtype=float)
    if boundary == "trend_cosine":
        design = np.stack([np.ones_like(frames), np.cos(np.pi * frames / (len(signal) - 1))], axis=1)
        return design @ np.linalg.lstsq(design, signal, rcond=None)[0]
    degree = {"trend_linear": 1, "trend_quadratic": 2, "trend_cubic": 3}[boundary]
    return np.polyval(np.polyfit(frames, signal, degree), frames)


TRENDS = ("trend_linear", "trend_quadratic", "trend_cubic", "trend_cosine")


@pytest.mark.parametrize("boundary", TRENDS)
def test_trend_smoother_is_its_fit_plus_castors_descent_on_the_residual(boundary):
    rng = np.random.default_rng(3)
    signal = np.cos(np.pi * np.arange(14) / 13) + rng.normal(scale=0.1, size=14)
    trend = _naive_trend(signal, boundary)
    expected = trend + _castor_descent(signal - trend, 5.0)
    np.testing.assert_allclose(snake(signal, 5.0, boundary), expected, atol=1e-6)
    # a (T, D) signal is smoothed column by column
    stacked = np.stack([signal, -2 * signal], axis=1)
    np.testing.assert_allclose(snake(stacked, 5.0, boundary)[:, 1], -2 * snake(signal, 5.0, boundary), atol=1e-9)


def test_trend_smoothers_keep_the_ed_es_trend_and_smooth_the_end_frames():
    """A half-sequence's ED -> ES curve (a linear ramp; a half cosine) with frame-to-frame jitter on every frame,
    the end frames included: trend + residual keeps the trend exactly (its ends and amplitude) and removes the
    jitter everywhere; the controls at the same weight: castor's free-ended snake shrinks the trend, the pinned
    snake keeps the end frames' jitter."""
    frames = np.arange(15)
    jitter = np.where(frames % 2 == 0, 0.05, -0.05)
    ramp, cosine = np.linspace(1.0, 0.0, 15), 0.5 + 0.5 * np.cos(np.pi * frames / 14)
    for boundary in TRENDS:
        trend = cosine if boundary == "trend_cosine" else ramp
        if boundary in ("trend_cubic", "trend_cosine"):  # both bases hold the half cosine too
            np.testing.assert_allclose(snake(cosine, 128.0, boundary), cosine, atol=0.01)
        np.testing.assert_allclose(snake(trend, 128.0, boundary), trend, atol=1e-9)
        smoothed = snake(trend + jitter, 128.0, boundary)
        assert second_difference(smoothed - trend).max() < 0.1 * second_difference(jitter).max(), boundary
        # the end frames too: what is left is the jitter's projection on the basis (measured 0.09-0.34 of it)
        assert np.abs(smoothed - trend).max() < 0.5 * 0.05, boundary
    shrunk = snake(cosine, 128.0, "castor")
    assert shrunk[0] - shrunk[-1] < 0.5  # the amplitude an ED -> ES half-sequence loses
    pinned = snake(cosine + jitter, 128.0, "pinned")
    assert abs(pinned[0] - cosine[0]) == pytest.approx(0.05) and abs(pinned[-1] - cosine[-1]) == pytest.approx(0.05)


def test_volume_trend_keeps_the_volume_dims_trend_and_flattens_the_pose_dims():
    """The per-dim smoother on a 16-dim trajectory (an ED -> ES half cosine with frame-to-frame jitter in every dim):
    each dim is what the naive references give at the weight its search found, the volume dims (lv_area,
    lv_base_width, lv_length) and the unnamed dims by their cubic trend (np.polyfit) plus castor's descent on the
    residual, the pose dims (lv_orientation, myo_area, epi_center_x/y) by castor's descent; the volume dims keep
    the ED -> ES amplitude that castor's snake (the control, at the same weights) shrinks."""
    from echo_modules.anatomical_vae.postprocess import ATTRIBUTE_THRESHOLDS, dim_boundaries

    frames = np.arange(15)
    cosine = 0.5 + 0.5 * np.cos(np.pi * frames / 14)
    jitter = np.where(frames % 2 == 0, 0.05, -0.05)
    codes = np.stack([cosine * (1 + d / 16) + jitter for d in range(16)], axis=1)
    thresholds = tuple(ATTRIBUTE_THRESHOLDS.values())
    smoothed, weights = smooth_latent_sequence(codes, thresholds, other_weight=50.0, boundary="volume_trend")
    volume = (0, 1, 2, *range(7, 16))
    assert dim_boundaries("volume_trend", tuple(ATTRIBUTE_THRESHOLDS), 16) == tuple(
        "trend_cubic" if d in volume else "castor" for d in range(16)
    )
    for d in range(16):
        signal = codes[:, d]
        if d in volume:
            trend = _naive_trend(signal, "trend_cubic")
            expected = trend + _castor_descent(signal - trend, weights[d])
        else:
            expected = _castor_descent(signal, weights[d])
        np.testing.assert_allclose(smoothed[:, d], expected, atol=1e-5, err_msg=f"dim {d}")
    castor = snake(codes, 50.0, "castor")  # the control: castor's snake at the unnamed dims' weight
    amplitude = codes[0] - codes[-1]
    kept = (smoothed[0] - smoothed[-1]) / amplitude
    assert (kept[list(volume)] > 0.95).all(), kept  # measured 1.00: the trend passes
    assert ((castor[0] - castor[-1]) / amplitude).max() < 0.6  # measured 0.49: castor's shrinkage
    # every dim loses its jitter (the cosine's own curvature stays)
    assert (second_difference(smoothed).max(axis=0) < 0.5 * second_difference(codes).max(axis=0)).all()
    with pytest.raises(ValueError, match="boundary"):
        snake(codes[:, 0], 1.0, "volume_trend")  # a per-dim name is not one operator


def test_pinned_and_second_difference_keep_an_ed_es_trend_that_castor_shrinks():
    """A straight ED -> ES ramp with frame-to-frame jitter on the inner frames: the pinned and second-difference
    smoothers keep the ramp (its ends and amplitude) and remove the jitter; castor's free-ended snake (the control)
    compresses the ramp toward its mean at the same weight."""
    ramp = np.linspace(1.0, 0.0, 11)
    jitter = np.where(np.arange(11) % 2 == 0, 0.05, -0.05)
    jitter[[0, -1]] = 0.0
    for boundary in ("pinned", "pinned_second_difference", "second_difference"):
        np.testing.assert_allclose(snake(ramp, 128.0, boundary), ramp, atol=1e-9)
        smoothed = snake(ramp + jitter, 128.0, boundary)
        assert second_difference(smoothed).max() < 0.1 * second_difference(ramp + jitter).max(), boundary
        assert abs(smoothed[0] - smoothed[-1]) > 0.9, boundary
    shrunk = snake(ramp, 128.0, "castor")
    assert shrunk[0] - shrunk[-1] < 0.5  # measured 0.14 of 1: the amplitude an ED -> ES half-sequence loses
    with pytest.raises(ValueError, match="boundary"):
        snake(ramp, 1.0, "free")


def test_binary_search_finds_the_smallest_weight_meeting_the_threshold():
    rng = np.random.default_rng(1)
    signal = np.sin(np.linspace(0, np.pi, 20)) + rng.normal(scale=0.2, size=20)
    smoothed, weight = smooth_attribute_dim(signal, threshold=0.02)
    scaled = (smoothed - signal.min()) / (signal.max() - signal.min())
    assert second_difference(scaled).max() <= 0.02 + 1e-9
    assert 0 < weight <= 128
    coarser = snake((signal - signal.min()) / (signal.max() - signal.min()), weight - 128 / 2**5)
    assert second_difference(coarser).max() > 0.02  # one search step less smoothing breaks the threshold
    codes = np.stack([signal, signal], axis=1)
    _, weights = smooth_latent_sequence(codes, attribute_thresholds=(0.02,), other_weight=50.0)
    assert weights[0] == weight and weights[1] == 50.0


def test_kde_matches_the_naive_density_and_cross_validation_prefers_a_sensible_bandwidth():
    generator = torch.Generator().manual_seed(0)
    codes = torch.randn(60, 2, generator=generator).double() * torch.tensor([1.0, 3.0]).double()
    kde = GaussianKDE(codes, bandwidth=0.4)
    query = torch.randn(5, 2, generator=generator).double()
    covariance = torch.cov(codes.T) + 1e-6 * torch.eye(2, dtype=torch.float64)
    kernel = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), covariance * 0.4**2)
    naive = torch.stack([torch.logsumexp(kernel.log_prob(q - codes), 0) - math.log(len(codes)) for q in query])
    np.testing.assert_allclose(kde.log_density(query).numpy(), naive.numpy(), rtol=1e-6)
    assert 0.05 < select_bandwidth(codes) < 1.0


def _kde_cdf(codes: torch.Tensor, bandwidth: float):
    """The 1-D KDE's exact CDF (kernels of sd bandwidth * the codes' sd, as GaussianKDE whitens)."""
    from scipy.stats import norm

    centres = codes[:, 0].numpy()
    sd = bandwidth * math.sqrt(codes[:, 0].var().item() + 1e-6)
    return lambda x: norm.cdf((np.asarray(x)[:, None] - centres[None]) / sd).mean(axis=1)


@pytest.mark.parametrize("proposal", ["student_t", "gaussian"])
def test_rejection_sampling_accepts_one_in_m_and_draws_from_the_kde(proposal):
    """A 1-D bimodal KDE with a known CDF: M bounds P/Q everywhere, the acceptance rate is 1/M, the accepted draws
    pass a KS test against the KDE, and the proposal itself (no rejection: the control) fails it."""
    from scipy.stats import kstest

    from echo_modules.anatomical_vae.latent_bank import Proposal

    generator = torch.Generator().manual_seed(0)
    codes = torch.cat([torch.randn(3, 1, generator=generator) * 0.3 - 2, torch.randn(4, 1, generator=generator) + 2])
    bandwidth = 0.2
    everything = lambda z: torch.ones(len(z), dtype=torch.bool)  # noqa: E731
    bank, stats = rejection_sample_bank(
        codes, everything, 40000, seed=1, sampler="rejection", proposal=proposal, bandwidth=bandwidth
    )
    kde, q = GaussianKDE(codes.double(), bandwidth), Proposal(proposal, 1, bandwidth)
    white = torch.linspace(-12, 12, 48001, dtype=torch.float64)[:, None]
    true_sup = (kde.log_density_white(white) - q.log_density(white)).max().item()
    assert stats.log_envelope_data <= true_sup + 1e-9 <= stats.log_envelope + 1e-9  # a bound, above vital's M
    rate, expected = stats.acceptance_rate, stats.expected_acceptance_rate
    assert abs(rate - expected) < 5 * math.sqrt(expected * (1 - expected) / stats.proposals), (rate, expected)
    cdf = _kde_cdf(codes, bandwidth)
    assert kstest(bank[:, 0].double().numpy(), cdf).pvalue > 1e-3
    raw = kde.from_white(q.sample(len(bank), torch.Generator().manual_seed(2)))[:, 0].numpy()
    assert kstest(raw, cdf).pvalue < 1e-6  # the control: unrejected proposals are not the KDE


def test_rejection_sampling_in_2d_keeps_only_valid_latents_and_matches_the_exact_draws():
    generator = torch.Generator().manual_seed(0)
    codes = torch.cat([torch.randn(100, 2, generator=generator) - 3, torch.randn(100, 2, generator=generator) + 3])

    def valid(z):
        return z[:, 0] > -10  # everything valid

    h = select_bandwidth(codes)  # once: the three samplers below share it

    bank, stats = rejection_sample_bank(codes, valid, num_proposals=50000, seed=1, sampler="rejection", bandwidth=h)
    assert stats.accepted == len(bank) > 250  # 1/M ~ 0.7% here (the bound is loose where kernels overlap)
    rate, expected = stats.acceptance_rate, stats.expected_acceptance_rate
    assert abs(rate - expected) < 5 * math.sqrt(expected / stats.proposals), (rate, expected)
    # bimodal target: the proposal's mass at the origin is rejected
    assert (bank[:, 0].abs() < 1).float().mean() < 0.1
    assert abs(bank[:, 0].mean()) < 0.5 and (bank[:, 0] > 0).float().mean() == pytest.approx(0.5, abs=0.1)
    half, stats_half = rejection_sample_bank(
        codes, lambda z: z[:, 0] > 0, 5000, seed=1, sampler="rejection", bandwidth=h
    )
    assert (half[:, 0] > 0).all() and stats_half.valid < stats_half.accepted
    # exact KDE draws: the same bimodal target, every draw "accepted", the same moments as the rejection draws
    exact, stats_exact = rejection_sample_bank(codes, valid, num_proposals=4000, seed=1, bandwidth=h)
    assert stats_exact.accepted == 4000 and (exact[:, 0].abs() < 1).float().mean() < 0.1
    assert (exact[:, 0] > 0).float().mean() == pytest.approx(0.5, abs=0.05)
    kde_spread = exact[exact[:, 0] > 0].std(dim=0)
    data_spread = codes[codes[:, 0] > 0].std(dim=0)
    assert (kde_spread > data_spread).all() and (kde_spread < 1.5 * data_spread).all()  # data + kernel noise
    rejected_spread = bank[bank[:, 0] > 0].std(dim=0)
    torch.testing.assert_close(rejected_spread, kde_spread, rtol=0.15, atol=0)
    with pytest.raises(ValueError, match="proposal must be"):
        rejection_sample_bank(codes, valid, 10, sampler="rejection", proposal="uniform")


def test_temporal_metrics_see_jitter():
    from datamodules.phantom.camus_writer import half_sequence_video

    video, cycle = half_sequence_video("4CH", 0, 0, 64, (30.0, 60.0), (40.0, 60.0))
    masks = video.masks[cycle]
    jittered = masks.copy()
    lv = jittered[1::2] == 1
    grown = np.stack([ndimage.binary_dilation(frame, iterations=2) for frame in lv]) & (jittered[1::2] == 2)
    jittered[1::2][grown] = 1  # every other frame's LV 2 px larger
    clean, noisy = temporal_metrics(masks), temporal_metrics(jittered)
    assert noisy["violations_lv_area"] > clean["violations_lv_area"]
    assert noisy["frame_to_frame_dice"] < clean["frame_to_frame_dice"]


def test_biplane_ef_from_ground_truth_equals_the_phantom_truth(tmp_path):
    from datamodules.phantom.camus_writer import write_camus_dataset
    from echo_modules.anatomical_vae.indices import agreement, clinical_indices
    from echo_modules.segmentation.data import load_camus_sequences

    data = write_camus_dataset(tmp_path / "CAMUS", 8, seed=4, size=128, sequence_gt=False)
    by_patient: dict[str, dict] = {}
    for sequence in load_camus_sequences(data, 128):
        by_patient.setdefault(sequence.patient, {})[sequence.view] = sequence
    biplane, single, truth = [], [], []
    for views in by_patient.values():
        ed = {v: s.masks[s.ed_index] for v, s in views.items()}
        es = {v: s.masks[s.es_index] for v, s in views.items()}
        spacing = {v: s.spacing for v, s in views.items()}
        result = clinical_indices(ed, es, spacing)
        assert result["method"] == "biplane" and result["edv"] > result["esv"] > 0
        biplane.append(result["ef"])
        single.append(clinical_indices({"4CH": ed["4CH"]}, {"4CH": es["4CH"]}, spacing)["ef"])
        truth.append(views["4CH"].ef)  # the Info cfg: the phantom's own EF (mean of both views' disc EF)
    errors = np.abs(np.array(biplane) - np.array(truth))
    assert errors.max() < 2.0, errors
    assert agreement(single, truth)["count"] == len(truth)
    # a wrong spacing is not silently fine: volumes scale with it
    views = next(iter(by_patient.values()))
    half = {v: (s.spacing[0] / 2, s.spacing[1]) for v, s in views.items()}
    ed = {v: s.masks[s.ed_index] for v, s in views.items()}
    es = {v: s.masks[s.es_index] for v, s in views.items()}
    assert (
        clinical_indices(ed, es, half)["edv"]
        < 0.8 * clinical_indices(ed, es, {v: s.spacing for v, s in views.items()})["edv"]
    )


def test_keep_input_where_valid_reverts_every_region_that_keeps_the_frame_valid():
    from echo_modules.anatomical_vae.postprocess import keep_input_where_valid

    def no_corner_island_nor_both_stripes(masks):  # a toy criterion: the corner empty, not both stripes set
        return (masks[:, :3, :3] == 0).all(axis=(1, 2)) & ~(
            (masks[:, 10, 2:4] == 2).all(1) & (masks[:, 10, 12:14] == 2).all(1)
        )

    decoded = np.zeros((1, 16, 16), np.uint8)
    decoded[0, 5:12, 5:12] = 1  # the (valid) decoding
    source = decoded.copy()
    source[0, 0:2, 0:2] = 2  # the defect: an island in the corner
    source[0, 5:12, 12] = 1  # detail the decoding lost: the input's LV is one column wider
    fixed = keep_input_where_valid(source, decoded, no_corner_island_nor_both_stripes)
    expected = source.copy()
    expected[0, 0:2, 0:2] = 0
    np.testing.assert_array_equal(fixed, expected)
    # two regions valid alone but not together: the larger one is kept
    source = decoded.copy()
    source[0, 10, 2:4] = 2
    source[0, 10, 12:15] = 2
    fixed = keep_input_where_valid(source, decoded, no_corner_island_nor_both_stripes)
    assert (fixed[0, 10, 12:15] == 2).all() and (fixed[0, 10, 2:4] == 0).all()
    assert no_corner_island_nor_both_stripes(fixed).all()
