"""Anatomical VAE speed: criteria throughput (ours, vectorised over a stack, vs a per-frame scipy loop like vital's),
correction latency per 20-frame sequence (decoding only / input kept where valid), smoothing latency, and the
rejection-sampling rate.

    PYTHONPATH=. python benchmarks/anatomical_vae.py                 # 256-px criteria, 64-px VAE, quick on a CPU
    PYTHONPATH=. python benchmarks/anatomical_vae.py --vae-size 256 --proposals 1000000 --checkpoint last.ckpt

Without ``--checkpoint`` the VAE is fitted for ``--epochs`` on a phantom CAMUS dataset first (the timings do not
depend on how well it fits, the valid fraction of the bank does).

Measured 2026-12-01, issue 12 rerun (``--checkpoint`` of the test recipe fitted with 1 thread: 64 px, 900 steps;
``--threads 1``, nice 10 on a 2-core box loaded ~12x by other jobs, so every time is pessimistic, ~3x the earlier
run's; the rates, M and the smoothing metrics are not):

    criteria, 99 frames 256px: vectorised stack                                   13 frames/s
    criteria: per-frame scipy loop (vital-like)                                   3 frames/s
    bank, rejection (student_t): 20000 proposals                                  4033 proposals/s
      rejection (student_t): log10 M (bound; over the codes 17.9)                 18.2
      rejection (student_t): accepted / expected 1/M                              0 / 5.65e-19
    bank, rejection (gaussian): 20000 proposals                                   4994 proposals/s
      rejection (gaussian): log10 M (bound; over the codes 20.9)                  21.4
      rejection (gaussian): accepted / expected 1/M                               0 / 3.84e-22
    bank, kde (exact draws): 4096 proposals                                       19 proposals/s
      kde (exact draws): accepted that decode valid                               93.4% (3826 kept)
    correction, 20-frame sequence, all frames invalid (decoding only)             9432 ms
    correction, 20-frame sequence, all frames invalid (+ keep input where valid)  15576 ms
    smoothing, 20-frame sequence, castor, decoded check, uncached (before)        48294 ms, 75 decodes
    smoothing, 20-frame sequence, castor, decoded check, cached                   39790 ms, 62 decodes
    smoothing, 20-frame sequence, second_difference, decoded check, cached        25534 ms, 74 decodes
    smoothing, 20-frame sequence, pinned, decoded check, cached                   39878 ms, 49 decodes
    smoothing, 20-frame sequence, trend_cubic, decoded check, cached              34471 ms, 61 decodes
    smoothing, 20-frame sequence, pinned, latent only                             664 ms, 1 decodes
    smoothing, 20-frame sequence, trend_cubic, latent only                        423 ms, 1 decodes
    smoothing, jittered 16-frame half-sequence: input                             violations 1.00, f2f Dice 0.839, Dice to clean 0.893, ED-ES area kept -0.81
      smoothed, castor                                                            violations 0.79, f2f Dice 0.979, Dice to clean 0.919, ED-ES area kept 0.09
      smoothed, pinned                                                            violations 0.79, f2f Dice 0.964, Dice to clean 0.907, ED-ES area kept -0.81
      smoothed, trend_cubic                                                       violations 1.00, f2f Dice 0.947, Dice to clean 0.889, ED-ES area kept -0.96

On that 16-frame sequence (LV area 256 -> 199 px from ED to ES) the one-pixel jitter moves the area by about as
much as the whole ED -> ES change (input: kept -0.81, the trend reversed); the cubic trend's end frames have high
leverage (a cubic least-squares fit keeps 0.4-0.5 of an end frame's jitter, a line 0.15-0.18:
tests/test_anatomical_units.py), so trend_cubic follows the jittered ends there, while castor's free ends smooth
the jitter away together with the trend (kept 0.09).

The rejection samplers' acceptance is the theory's 1/M (checked at 1-D / 2-D in tests/test_anatomical_units.py):
at 16 latent dims M is ~1e15, so nothing is accepted; the exact KDE draws are the default. Smoothing's cost is the
decoded-attribute check (about 100 decodes of the sequence; ``smoothing_check_decoded: false`` is castor's latent-only
criterion, ~0.1 s, which lets some decoded attributes get worse).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _time(function, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criteria-size", type=int, default=256)
    parser.add_argument("--vae-size", type=int, default=64)
    parser.add_argument("--patients", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--proposals", type=int, default=20000)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)

    import lightning as L

    from datamodules.phantom.camus_writer import write_camus_dataset
    from echo_modules.anatomical_vae.criteria import compute_criteria, naive_criteria
    from echo_modules.anatomical_vae.module import AnatomicalVAE
    from echo_modules.segmentation.data import CamusFramesDataModule, load_camus_sequences

    work = Path(tempfile.mkdtemp(prefix="anatomical_bench_"))
    rows = []
    # ---- criteria throughput
    big = write_camus_dataset(work / "big", 4, seed=0, size=options.criteria_size)
    masks = np.concatenate([s.masks for s in load_camus_sequences(big, options.criteria_size)])
    ours = _time(lambda: compute_criteria(masks))
    loop = _time(lambda: [naive_criteria(m) for m in masks], repeats=1)
    rows.append(
        (
            f"criteria, {len(masks)} frames {options.criteria_size}px: vectorised stack",
            f"{len(masks) / ours:.0f} frames/s",
        )
    )
    rows.append(("criteria: per-frame scipy loop (vital-like)", f"{len(masks) / loop:.0f} frames/s"))

    # ---- the VAE: fit (or load), bank, correction, smoothing
    small = write_camus_dataset(work / "small", options.patients, seed=1, size=options.vae_size)
    datamodule = CamusFramesDataModule(str(small), frame_size=options.vae_size, batch_size=16)
    datamodule.setup()
    loose = dict(myo_atrium_frontier_max=0.35, width_ratio_max=5.0, gap_tolerance_fraction=2.0**-10)
    if options.checkpoint:
        model = AnatomicalVAE.load_from_checkpoint(options.checkpoint, map_location="cpu")
    else:
        model = AnatomicalVAE(image_size=options.vae_size, base_channels=8, lr=3e-3, bank_proposals=options.proposals,
                              build_bank_after_fit=False, **(loose if options.vae_size < 256 else {}))  # fmt: skip
        trainer = L.Trainer(max_epochs=options.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        trainer.fit(model, datamodule)
    model.eval()
    model.hparams.bank_proposals = options.proposals
    train = np.concatenate([s.masks for s in datamodule.split("TRAIN")])
    spacing = tuple(np.mean([s.spacing for s in datamodule.split("TRAIN")], axis=0))
    # vital's rejection sampling with a heavy proposal and a true envelope (both proposals), then the exact KDE draws
    # kept in the bank; the theory's acceptance is 1/M
    for sampler, proposal in (("rejection", "student_t"), ("rejection", "gaussian"), ("kde", "student_t")):
        model.hparams.bank_sampler, model.hparams.bank_proposal = sampler, proposal
        start = time.perf_counter()
        stats = model.build_latent_bank(train, spacing)
        seconds = time.perf_counter() - start
        name = f"{sampler} ({proposal})" if sampler == "rejection" else "kde (exact draws)"
        rows.append((f"bank, {name}: {stats.proposals} proposals", f"{stats.proposals / seconds:.0f} proposals/s"))
        if sampler == "rejection":
            log10 = stats.log_envelope / math.log(10)
            data = stats.log_envelope_data / math.log(10)
            rows.append((f"  {name}: log10 M (bound; over the codes {data:.1f})", f"{log10:.1f}"))
            rows.append((f"  {name}: accepted / expected 1/M", f"{stats.acceptance_rate:.3g} / {10**-log10:.3g}"))
        rows.append((f"  {name}: accepted that decode valid", f"{stats.valid_rate:.1%} ({stats.valid} kept)"))

    sequence = max(datamodule.split("TEST") + datamodule.split("VAL"), key=lambda s: len(s.masks))
    frames = np.resize(sequence.masks, (20, *sequence.masks.shape[1:]))  # a 20-frame sequence
    broken = frames.copy()
    broken[:, 2:5, 2:5] = 2  # every frame invalid: an island of MYO
    for keep_input in (False, True):  # the decoding alone (the papers'), then with the input kept where valid
        if not len(model.latent_bank):
            break
        model.hparams.correction_keep_input = keep_input
        latency = _time(lambda: model.correct(broken, sequence.spacing))
        label = "+ keep input where valid" if keep_input else "decoding only"
        rows.append((f"correction, 20-frame sequence, all frames invalid ({label})", f"{latency * 1000:.0f} ms"))
    # smoothing: the decoded-attribute search with and without its trajectory cache (the same weights), per boundary,
    # and castor's latent-only criterion; decodes counted
    import functools

    import echo_modules.anatomical_vae.module as vae_module

    searched = vae_module.smooth_latent_sequence
    decode, calls = model.decode, [0]

    def counted(latents):
        calls[0] += 1
        return decode(latents)

    model.decode = counted
    cases = [("castor", False, True), ("castor", True, True)] + [
        (b, True, True) for b in ("second_difference", "pinned", "trend_cubic")
    ]
    cases += [("pinned", True, False), ("trend_cubic", True, False)]
    for boundary, cached, decoded_check in cases:
        vae_module.smooth_latent_sequence = functools.partial(searched, cache_decodes=cached)
        model.hparams.smoothing_boundary, model.hparams.smoothing_check_decoded = boundary, decoded_check
        calls[0] = 0
        latency = _time(lambda: model.smooth(frames), repeats=1)
        check = ("decoded check, " + ("cached" if cached else "uncached (before)")) if decoded_check else "latent only"
        rows.append(
            (f"smoothing, 20-frame sequence, {boundary}, {check}", f"{latency * 1000:.0f} ms, {calls[0]} decodes")
        )
    vae_module.smooth_latent_sequence, model.decode = searched, decode
    model.hparams.smoothing_check_decoded = True
    # smoothing before/after on a jittered half-sequence (each frame's LV one pixel larger or smaller at random, as
    # tests/test_anatomical_vae.py jitters it): violations of castor's thresholds (any attribute), frame-to-frame
    # Dice, Dice to the clean sequence, and how much of the ED -> ES LV-area change (lv_area, first to last frame) the
    # smoothed masks keep
    from scipy import ndimage

    from echo_modules.anatomical_vae.postprocess import dice_per_class

    rng = np.random.default_rng(1)
    jittered = sequence.masks.copy()
    for frame in jittered:
        lv = frame == 1
        if rng.random() < 0.5:
            frame[ndimage.binary_dilation(lv) & (frame == 2)] = 1
        else:
            frame[lv & ~ndimage.binary_erosion(lv)] = 2

    def summary(masks):
        metrics = model.temporal_metrics(masks)
        area = model.attributes_of(masks)[:, 0]
        kept = (area[0] - area[-1]) / (clean_area[0] - clean_area[-1])
        dice = dice_per_class(masks, sequence.masks).mean()
        return (f"violations {metrics['violations_any']:.2f}, f2f Dice {metrics['frame_to_frame_dice']:.3f}, "
                f"Dice to clean {dice:.3f}, ED-ES area kept {kept:.2f}")  # fmt: skip

    clean_area = model.attributes_of(sequence.masks)[:, 0]
    rows.append((f"smoothing, jittered {len(jittered)}-frame half-sequence: input", summary(jittered)))
    for boundary in ("castor", "pinned", "trend_cubic", "volume_trend"):
        rows.append((f"  smoothed, {boundary}", summary(model.smooth(jittered, boundary=boundary)[0])))

    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
