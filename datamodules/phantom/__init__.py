"""The echo phantom: a procedural apical-view echo simulator with exact ground truth, and dataset writers."""

from datamodules.phantom.discs import disc_tracing, ef_from_masks, ef_from_tracings, lv_volume
from datamodules.phantom.echonet_writer import PhantomSpec, plan_echonet_dataset, write_avi, write_echonet_dataset
from datamodules.phantom.simulator import (
    DISEASES,
    LEFT_ATRIUM,
    LV_CAVITY,
    MYOCARDIUM,
    PhantomParams,
    PhantomVideo,
    sample_params,
    simulate_video,
)

__all__ = [
    "DISEASES",
    "LEFT_ATRIUM",
    "LV_CAVITY",
    "MYOCARDIUM",
    "PhantomParams",
    "PhantomSpec",
    "PhantomVideo",
    "disc_tracing",
    "ef_from_masks",
    "ef_from_tracings",
    "lv_volume",
    "plan_echonet_dataset",
    "sample_params",
    "simulate_video",
    "write_avi",
    "write_echonet_dataset",
]
