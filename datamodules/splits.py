"""Seeded, patient-level TRAIN/VAL/TEST splits shared by the datasets that ship without an official split.

CAMUS (without ``database_split``), CardiacNet and HMC-QU split by patient with :func:`split_patients`; the phantom
writers assign a split per video when they write a dataset (``datamodules.phantom.echonet_writer.assign_splits``, which
also keeps every requested split non-empty, a different contract), so they keep their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from datamodules.errors import ConfigError

SPLITS = ("TRAIN", "VAL", "TEST")


def check_split_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """``(train, val, test)`` proportions, normalised to sum to 1; a ConfigError for anything else."""
    values = np.asarray(fractions, dtype=np.float64)
    if values.shape != (3,) or not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
        raise ConfigError(
            f"split_fractions must be three non-negative numbers (train, val, test), got {list(fractions)}"
        )
    train, val, test = (values / values.sum()).tolist()
    return train, val, test


def split_patients(
    patients: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    strata: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """TRAIN/VAL/TEST per patient: a seeded permutation cut in the given proportions (largest remainders), done
    within each stratum (e.g. the class) so every split keeps the class balance. A patient is one unit, so none of
    its videos can land in two splits; the same patients and seed always give the same split."""
    fractions_array = np.asarray(check_split_fractions(fractions))
    groups: dict[str, list[str]] = {}
    for patient in sorted(set(patients)):
        groups.setdefault(str(strata[patient]) if strata is not None else "", []).append(patient)
    assignment: dict[str, str] = {}
    for number, (_, members) in enumerate(sorted(groups.items())):
        count = len(members)
        counts = np.floor(fractions_array * count).astype(int)
        for i in np.argsort(-(fractions_array * count - counts), kind="stable")[: count - counts.sum()]:
            counts[i] += 1
        order = np.random.default_rng([seed, number]).permutation(count)
        labels = np.repeat(np.arange(3), counts)
        for position, member in zip(order, members, strict=True):
            assignment[member] = SPLITS[labels[position]]
    return assignment
