"""A procedural simulator of apical-view echocardiography videos with exact ground truth.

The anatomy (LV cavity, myocardium, LA; RV, RA and the septa in the 4-chamber view) is defined analytically in
*material* coordinates, the heart at end-diastole. Each frame is rendered by an inverse deformation that takes every
pixel of the frame back to the material point that sits there at that instant; the tissue texture (speckle times
echogenicity) and the label map are both looked up through that same deformation, so speckle moves with the tissue and
the masks are exactly the anatomy that is drawn. The deformation is a composition of smooth, invertible maps driven by
one contraction curve k(t) in [0, 1] (0 at end-diastole, 1 at end-systole), each motion with its own amplitude:

* longitudinal shortening: the mitral plane moves toward the (fixed) apex by `longitudinal` (MAPSE, which follows
  LV function only loosely), the tricuspid plane by its own share of it, the atria stretch behind them;
* inward wall motion: at each level the LV cavity narrows toward the long axis by the calibrated strength eps (less
  at the annulus) and the displacement fades outside the wall, so the myocardium thickens;
* LA filling: an area-preserving radial map about the annulus midpoint expands the LA by `la_filling`;
* in 4CH, radial maps of the same kind for RV contraction (`rv_strain`) and RA filling (`ra_filling`).

Every amplitude but eps is drawn independently of the EF, and so are the scene's other motions: breathing and a
per-beat swing translate the whole heart under the probe, the speckle decorrelates from frame to frame, and the
brightness follows breathing and through-plane motion. Global motion energy or brightness therefore says little about
EF; finding the LV does.

To keep it fast, the deformation is evaluated on a coarse grid at a ladder of contraction levels and interpolated
(bilinearly in space, linearly in k); the interpolated tables (translated per frame) are what both the image and the
labels are sampled through, so the ground truth stays exact.

The contraction strength is calibrated per video so that the EF measured on the rendered masks by the method of discs
is close to the requested EF; the EF reported is the measured one. Imaging effects are applied in scan coordinates: a
sector of 60-90 degrees with its apex at the top centre, depth attenuation with time-gain compensation, lateral
fall-off, near-field clutter, thermal noise, log compression and a light blur. Volumes are in mL: the imaging depth
is set from the LV's size in mm, as a sonographer frames the heart.

Disease variants change the anatomy or the motion of one region, graded by `severity` (mild cases common when
sampled), and report where, in `abnormal_region`: ``wall_motion`` (a hypokinetic apical-lateral segment: extent and
depth grow with severity), ``septal_gap`` (a secundum atrial septal defect, 4CH, see below) and ``dilated_rv``
(PAH-like, 4CH: RV and RA dilation, septal flattening and reduced RV longitudinal motion).

``septal_gap`` is an ASD as it appears in a disease dataset of patients referred for it (mostly haemodynamically
significant defects): its apical 4-chamber signs are those of a left-to-right shunt, graded together by one
severity (`atrial_septal_defect`): the septal dropout itself, 5-30 mm across on an atrial septum of ~43 mm (median;
31-56 mm over the sampled hearts; capped so that rims remain), with blunt, bright margins (the "T-artefact");
right-atrial and right-ventricular dilation from the volume overload (RV basal width +55%, RA area ~+50% at the
severe end, as from a normal 33 mm RV base to ~50 mm); a normal to hyperdynamic RV (free-wall motion and
tricuspid-plane excursion up, where PAH's are reduced); and a ventricular septum flattened toward the LV at
end-diastole that moves less in systole. Known deviations: the measured LV EF falls with it, by ~10 points per unit
of severity (median 4 over sampled severities, 5-17 at severity 1, measured on 64 px hearts), where real ASD usually
keeps a normal LVEF; the LA's septal side, joined to the septum at the annulus, narrows with it by up to 12%; and a
normal heart never shows the apical view's false septal dropout. A mild case (severity
0.1: a ~7.5 mm defect, 10% of the overload) stays a small gap in an almost normal heart. Its ``abnormal_region`` is
the defect with its margins only, not the dilated chambers: the defect is the lesion a reader marks, and the
dilation is a diffuse consequence whose "region" (every pixel the larger RA / RV sweep) would mostly mark where
healthy tissue moved rather than where the disease is. Every other variant renders exactly as before this model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Literal

import cv2
import numpy as np
from scipy import special

from datamodules.phantom.discs import disc_tracing, ef_from_tracings
from datamodules.tracings import volume_from_tracing

View = Literal["4CH", "2CH"]
Disease = Literal["normal", "wall_motion", "septal_gap", "dilated_rv"]
VIEWS: tuple[str, ...] = ("4CH", "2CH")
DISEASES: tuple[str, ...] = ("normal", "wall_motion", "septal_gap", "dilated_rv")
FOUR_CHAMBER_ONLY: tuple[str, ...] = ("septal_gap", "dilated_rv")

BACKGROUND, LV_CAVITY, MYOCARDIUM, LEFT_ATRIUM = 0, 1, 2, 3
SECTOR_HALF_ANGLE_DEG = 37.5
_DISEASE_BIT = 16  # bit set in the material label grid where the planted disease lives
_GRID_UPSAMPLE = 2  # the material grids are sampled at twice the frame resolution
_COARSE_STEP = 4  # the deformation is evaluated every 4 frame pixels (at 112 px) and interpolated
_K_LEVELS = 17  # ... at this many contraction levels, blended linearly in between

# echogenicity (linear amplitude, before speckle and log compression)
_ECHO_BLOOD = 0.012
_ECHO_BACKGROUND = 0.045
_ECHO_MYOCARDIUM = 0.25
_ECHO_WALL = 0.50
_ECHO_PERICARDIUM = 1.0
_ECHO_ANNULUS = 0.8
_ECHO_LEAFLET = 0.5
_DYNAMIC_RANGE_DB = 30.0  # with the echogenicities above: grey mean ~32, SD ~50, as real EchoNet videos


@dataclass(frozen=True)
class PhantomParams:
    """Everything that defines one phantom video (with the seed, which draws its speckle and noise).

    Lengths are fractions of the frame size unless stated, so a video looks the same at any `size`. The defaults are
    a typical heart; `sample_params` draws every nuisance independently of the EF (coupled only where physiology
    couples them: the mitral-plane excursion follows LV function loosely, the LV dilates at low EF).
    """

    ef: float  # target ejection fraction, percent; the measured EF (`PhantomVideo.ef`) is within about a point
    heart_rate: float  # beats per minute
    fps: float  # frames per second
    num_frames: int
    size: int = 112  # square frame size in pixels
    view: View = "4CH"
    disease: Disease = "normal"
    severity: float = 1.0  # disease severity in (0, 1]: 1 the most marked form, small values mild (ignored if normal)
    phase: float = 0.0  # cardiac phase of the first frame in cycles, 0 = end-diastole (onset of ejection)
    systole_fraction: float = 0.34  # ejection time as a fraction of the cycle
    lv_length: float = 0.44  # LV cavity length (apex to mitral plane) at end-diastole
    lv_width: float = 0.31  # LV cavity half-width at end-diastole, as a fraction of its length
    myo_thickness: float = 0.055  # LV wall thickness
    apex_depth: float = 0.09  # depth of the epicardial apex below the transducer
    apex_shift: float = 0.02  # horizontal offset of the apex from the centre line (positive: right)
    tilt_deg: float = 9.0  # angle of the long axis from vertical; positive puts the base right of the apex
    la_size: float = 1.0  # LA scale
    rv_size: float = 1.0  # RV and RA scale (4CH)
    longitudinal: float = 0.14  # mitral-plane excursion at end-systole / LV length (MAPSE), independent of eps
    la_filling: float = 0.09  # LA radial expansion at end-systole (fraction of its radius)
    rv_strain: float = 0.22  # RV free-wall inward motion at end-systole (fraction of its radius), 4CH
    ra_filling: float = 0.14  # RA radial expansion at end-systole, 4CH
    rv_longitudinal: float = 1.0  # tricuspid-plane excursion relative to the mitral plane's (TAPSE / MAPSE), 4CH
    speckle_size: float = 1.0  # speckle grain scale
    speckle_decorrelation: float = 0.0  # speckle decorrelation rate, radians per second of the speckle field's phase
    noise: float = 0.02  # thermal noise amplitude (relative to myocardium ~0.4)
    attenuation: float = 0.6  # depth attenuation, nepers per frame height, partly compensated by TGC
    gain_db: float = 0.0  # overall gain
    tgc_db: tuple[float, float, float] = (0.0, 0.0, 0.0)  # time-gain compensation at the top, middle, bottom
    sector_half_angle_deg: float = SECTOR_HALF_ANGLE_DEG  # half the sector's opening angle
    breathing_amplitude: float = 0.0  # peak translation of the whole scene by breathing (fraction of the frame)
    breathing_rate: float = 15.0  # breaths per minute
    breathing_phase: float = 0.0  # breathing phase at the first frame, cycles
    breathing_angle_deg: float = 60.0  # direction of the breathing translation, from the image x axis
    breathing_gain_db: float = 0.0  # brightness modulation with breathing (lung, probe contact), peak dB
    swing: float = 0.0  # translation of the whole heart with each beat, at end-systole (fraction of the frame)
    swing_angle_deg: float = 90.0  # its direction, from the image x axis
    beat_gain_db: float = 0.0  # brightness change at end-systole from through-plane motion, dB (either sign)
    depth_mm: float = 180.0  # imaging depth spanned by the frame height: pixel spacing = depth_mm / size

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {self.view!r}")
        if self.disease not in DISEASES:
            raise ValueError(f"disease must be one of {DISEASES}, got {self.disease!r}")
        if self.disease in FOUR_CHAMBER_ONLY and self.view != "4CH":
            raise ValueError(f"disease {self.disease!r} lives in the right heart / atrial septum: it needs view='4CH'")
        if not 1.0 <= self.ef <= 90.0:
            raise ValueError(f"ef must be in [1, 90] percent, got {self.ef}")
        if self.heart_rate <= 0 or self.fps <= 0:
            raise ValueError(f"heart_rate and fps must be positive, got {self.heart_rate} and {self.fps}")
        if self.num_frames < 2 or self.size < 32:
            raise ValueError(f"need num_frames >= 2 and size >= 32, got {self.num_frames} and {self.size}")
        if not 0.15 <= self.systole_fraction <= 0.6:
            raise ValueError(f"systole_fraction must be in [0.15, 0.6], got {self.systole_fraction}")
        if not 0.0 < self.severity <= 1.0:
            raise ValueError(f"severity must be in (0, 1], got {self.severity}")
        if not 15.0 <= self.sector_half_angle_deg <= 60.0:
            raise ValueError(f"sector_half_angle_deg must be in [15, 60], got {self.sector_half_angle_deg}")

    @property
    def pixel_spacing_mm(self) -> float:
        return self.depth_mm / self.size

    @property
    def cycle_s(self) -> float:
        return 60.0 / self.heart_rate


@dataclass
class PhantomVideo:
    """A simulated video with its ground truth. Masks use CAMUS labels: 0 background, 1 LV, 2 myocardium, 3 LA."""

    frames: np.ndarray  # uint8 (T, H, W)
    masks: np.ndarray  # uint8 (T, H, W)
    ed_index: int  # end-diastolic frame: the largest LV area of its cycle
    es_index: int  # the end-systolic frame that follows it: the smallest LV area
    ef: float  # percent, from the masks at ed_index / es_index by the method of discs
    edv: float  # mL
    esv: float  # mL
    fps: float
    abnormal_region: np.ndarray  # bool (H, W): where the planted disease lives over the video (all False if normal)
    params: PhantomParams
    ed_tracing: np.ndarray | None = field(default=None, repr=False)  # (21, 4) EchoNet tracing of the ED LV mask
    es_tracing: np.ndarray | None = field(default=None, repr=False)

    @property
    def pixel_spacing_mm(self) -> float:
        return self.params.pixel_spacing_mm


# ----------------------------------------------------------------------------------------------------------------------
# parameters


EfDistribution = Literal["echonet", "uniform", "camus"]
EF_DISTRIBUTIONS: tuple[str, ...] = ("echonet", "uniform", "camus")
_DISC_VOLUME = 1.978  # ED method-of-discs volume of the phantom LV / (length^3 * width^2), measured
_SHORTEST_FRAMES, _LONGEST_FRAMES = 28, 1002  # EchoNet-Dynamic's video lengths


def _truncated_normal(u: float, mean: float, sd: float, low: float, high: float) -> float:
    """The quantile ``u`` of a normal(mean, sd) truncated to [low, high]."""
    a, b = special.ndtr((low - mean) / sd), special.ndtr((high - mean) / sd)
    return float(np.clip(mean + sd * special.ndtri(a + (b - a) * u), low, high))


def draw_ef(u_component: float, u_value: float, distribution: EfDistribution, ef_range: tuple[float, float]) -> float:
    """An EF (percent) from two uniform draws.

    ``echonet``: EchoNet-Dynamic's shape (mean ~55.7, SD ~12.4, a long left tail of reduced function, within
    10-90): 85% from a healthy normal(59.8, 8), 15% from a reduced-function normal(34, 12), both truncated.
    ``camus``: CAMUS-like, a broad normal(51, 12) truncated to 10-85. ``uniform``: uniform on ``ef_range``."""
    if distribution == "uniform":
        return float(ef_range[0] + (ef_range[1] - ef_range[0]) * u_value)
    if distribution == "camus":
        return _truncated_normal(u_value, 51.0, 12.0, 10.0, 85.0)
    if distribution != "echonet":
        raise ValueError(f"ef_distribution must be one of {EF_DISTRIBUTIONS}, got {distribution!r}")
    if u_component < 0.15:
        return _truncated_normal(u_value, 34.0, 12.0, 10.0, 90.0)
    return _truncated_normal(u_value, 59.8, 8.0, 10.0, 90.0)


def sample_params(
    rng: np.random.Generator,
    num_frames: int | None = None,
    size: int = 112,
    view: View = "4CH",
    disease: Disease = "normal",
    ef_range: tuple[float, float] = (20.0, 80.0),
    heart_rate_range: tuple[float, float] = (50.0, 110.0),
    fps_range: tuple[float, float] | None = None,
    num_frames_range: tuple[int, int] | None = None,
    ef_distribution: EfDistribution = "echonet",
    severity_range: tuple[float, float] = (0.1, 1.0),
    max_frames: int | None = None,
    pose_variation: float = 1.0,
) -> PhantomParams:
    """Random plausible parameters, every nuisance drawn independently of the EF.

    The same draws are made whatever the view, disease and options, so one rng state gives the same heart as a normal
    and as a diseased video. fps_range None: EchoNet-like frame rates (mostly 50, else 22-106); num_frames_range
    None: EchoNet-like lengths (a log-normal duration around 3.5 s, 28-1002 frames), cut to ``max_frames`` if given
    (never below what holds an end-diastole and the end-systole after it). FPS is rounded to an integer, as in real
    files, and the cycle phase is chosen so that an end-diastole and its end-systole fall inside the video.
    severity: ``low + (high - low) * u ** 1.6`` over ``severity_range``, so mild cases are the common ones. The LV is
    sized in mL (EDV log-normal around 80 mL, dilated at low EF) and the imaging depth follows the heart, as a
    sonographer sets it, so the heart's size in pixels says nothing about its EF. pose_variation < 1 narrows the
    probe pose (apex position and depth, tilt, sector width) and LV framing toward their typical values: a gentler
    phantom for short CPU fits (the motion and intensity nuisance, which hide EF from global statistics, stay)."""
    draws = rng.random(40)

    def between(i: int, low: float, high: float) -> float:
        return float(low + (high - low) * draws[i])

    def pose(i: int, low: float, high: float) -> float:
        return float(low + (high - low) * (0.5 + pose_variation * (draws[i] - 0.5)))

    ef = draw_ef(float(draws[18]), float(draws[0]), ef_distribution, ef_range)
    heart_rate = between(1, *heart_rate_range)
    if fps_range is None:
        fps = 50.0 if draws[19] < 0.7 else float(round(between(2, 22.0, 106.0)))
    else:
        fps = float(max(1, round(between(2, *fps_range))))
    systole_fraction = float(np.clip(0.30 + 0.09 * (heart_rate - 50.0) / 60.0 + 0.04 * (draws[4] - 0.5), 0.26, 0.44))
    cycle = 60.0 / heart_rate
    shortest = int(math.ceil(systole_fraction * cycle * fps)) + 4  # holds an end-diastole and its end-systole
    if num_frames is None:
        if num_frames_range is None:
            duration = 3.5 * math.exp(0.35 * float(special.ndtri(np.clip(draws[3], 1e-6, 1 - 1e-6))))
            num_frames = int(np.clip(round(duration * fps), _SHORTEST_FRAMES, _LONGEST_FRAMES))
        else:
            low, high = num_frames_range
            num_frames = int(low + min(int(draws[3] * (high - low + 1)), high - low))
        if max_frames is not None:
            num_frames = min(num_frames, int(max_frames))
        num_frames = max(num_frames, min(shortest, _LONGEST_FRAMES))
    duration = (num_frames - 1) / fps
    latest_ed = min(cycle, duration - systole_fraction * cycle - 2.0 / fps)
    first_ed = max(0.0, latest_ed) * draws[5]
    phase = float((1.0 - first_ed / cycle) % 1.0)
    four = view == "4CH"
    lv_length, lv_width = pose(6, 0.38, 0.48), pose(7, 0.26, 0.35)
    # volumes in mL: EDV log-normal around 78 mL, dilated at low EF; the depth is set so the heart fills the frame
    edv_ml = 78.0 * math.exp(0.28 * float(special.ndtri(np.clip(draws[20], 1e-6, 1 - 1e-6))))
    edv_ml *= 1.0 + 0.025 * max(0.0, 60.0 - ef)
    depth_mm = (edv_ml * 1000.0 / (_DISC_VOLUME * lv_length**3 * lv_width**2)) ** (1.0 / 3.0)
    low, high = severity_range
    severity = float(np.clip(low + (high - low) * draws[21] ** 1.6, 1e-3, 1.0))
    return PhantomParams(
        ef=ef,
        heart_rate=heart_rate,
        fps=fps,
        num_frames=int(num_frames),
        size=int(size),
        view=view,
        disease=disease,
        severity=severity,
        phase=phase,
        systole_fraction=systole_fraction,
        lv_length=lv_length,
        lv_width=lv_width,
        myo_thickness=between(8, 0.045, 0.065),
        apex_depth=pose(9, 0.06, 0.12),
        apex_shift=pose(10, -0.02, 0.05) if four else pose(10, -0.04, 0.04),
        tilt_deg=pose(11, 1.0, 16.0) if four else pose(11, -9.0, 9.0),
        la_size=between(12, 0.82, 1.15),
        rv_size=between(13, 0.8, 1.25),
        # the mitral-plane excursion follows LV function loosely (as MAPSE does); every other motion is independent
        longitudinal=float(np.clip((0.03 + 0.002 * ef) * between(22, 0.65, 1.35), 0.02, 0.26)),
        la_filling=between(23, 0.04, 0.14),
        rv_strain=between(24, 0.12, 0.30),
        ra_filling=between(25, 0.07, 0.20),
        rv_longitudinal=between(26, 0.8, 1.4),
        speckle_size=between(14, 0.85, 1.2),
        speckle_decorrelation=between(27, 0.5, 12.0),
        noise=between(15, 0.01, 0.04),
        attenuation=between(16, 0.3, 0.9),
        gain_db=between(17, -3.0, 3.0),
        tgc_db=(between(28, -4.0, 4.0), between(29, -4.0, 4.0), between(30, -4.0, 4.0)),
        sector_half_angle_deg=round(pose(31, 30.0, 45.0) * 2.0) / 2.0,
        breathing_amplitude=between(32, 0.0, 0.035),
        breathing_rate=between(33, 10.0, 22.0),
        breathing_phase=between(34, 0.0, 1.0),
        breathing_angle_deg=between(35, 40.0, 140.0),
        breathing_gain_db=between(36, 0.0, 1.5),
        swing=between(37, 0.0, 0.025),
        swing_angle_deg=between(38, 0.0, 360.0),
        beat_gain_db=between(39, -1.5, 1.5),
        depth_mm=float(depth_mm),
    )


# ----------------------------------------------------------------------------------------------------------------------
# the cardiac cycle


def _contraction(phi: np.ndarray, systole_fraction: float) -> np.ndarray:
    """LV contraction k(phase) in [0, 1]: cosine ejection, isovolumic relaxation, rapid filling, diastasis and the
    atrial kick."""
    phi = np.asarray(phi, dtype=np.float64) % 1.0
    k = np.zeros_like(phi)
    sys = phi < systole_fraction
    k[sys] = 0.5 * (1.0 - np.cos(np.pi * phi[sys] / systole_fraction))
    tau = (phi - systole_fraction) / (1.0 - systole_fraction)
    relax = ~sys & (tau < 0.06)
    k[relax] = 1.0
    filling = ~sys & (tau >= 0.06) & (tau < 0.40)
    k[filling] = 1.0 - 0.78 * 0.5 * (1.0 - np.cos(np.pi * (tau[filling] - 0.06) / 0.34))
    diastasis = ~sys & (tau >= 0.40) & (tau < 0.75)
    k[diastasis] = 0.22 - 0.06 * (tau[diastasis] - 0.40) / 0.35
    kick = ~sys & (tau >= 0.75) & (tau < 0.95)
    k[kick] = 0.16 * 0.5 * (1.0 + np.cos(np.pi * (tau[kick] - 0.75) / 0.20))
    return k


def _valve_opening(phi: np.ndarray, systole_fraction: float) -> np.ndarray:
    """Atrioventricular valve opening in [0, 1]: closed in systole, open in rapid filling and the atrial kick."""
    s = systole_fraction
    d = 1.0 - s
    knots = [0.0, s + 0.05 * d, s + 0.12 * d, s + 0.42 * d, s + 0.52 * d, s + 0.74 * d, s + 0.80 * d, s + 0.93 * d, 1.0]
    values = [0.0, 0.0, 1.0, 1.0, 0.35, 0.35, 0.9, 0.0, 0.0]
    return np.interp(np.asarray(phi) % 1.0, knots, values)


# ----------------------------------------------------------------------------------------------------------------------
# anatomy


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass
class _Anatomy:
    """Geometry in pixels. Heart frame: origin at the mitral-annulus midpoint, q toward the apex, p toward the LV
    lateral wall (image right when the tilt is 0)."""

    size: int
    four_chamber: bool
    disease: str
    cx: float  # mitral-annulus midpoint in the image
    cy: float
    cos_t: float
    sin_t: float
    length: float  # LV cavity length
    w_lat: float  # LV half-widths of the ellipse the cavity is cut from, lateral and septal sides
    w_sept: float
    n_sept: float  # super-ellipse exponent on the septal side (2 = ellipse, larger = flatter septum)
    narrowing: float  # narrowing of the cavity toward the annulus
    th_lat: float
    th_sept: float
    th_apex: float
    la_a_lat: float  # LA ellipse half-widths, lateral and septal; its half-height and centre depth
    la_a_sept: float
    la_b: float
    la_h: float
    la_wall: float
    ramp_below: float  # distance below the mitral plane over which longitudinal motion fades
    rv_centre: tuple[float, float] = (0.0, 0.0)
    rv_axes: tuple[float, float] = (1.0, 1.0)
    rv_angle: float = 0.0
    ra_centre: tuple[float, float] = (0.0, 0.0)
    ra_axes: tuple[float, float] = (1.0, 1.0)
    tricuspid_q: float = 0.0
    rv_wall: float = 1.0
    septum_th: float = 1.0  # interatrial septum thickness
    eps_rv: float = 0.22
    eps_ra: float = 0.14
    gap_q: float = 0.0  # septal_gap: the defect's centre on the interatrial septum (heart-frame q)
    gap_half: float = 0.0  # ... its half-diameter
    gap_rim: float = 0.0  # ... the thickness of the bright, blunted margins at its edges (the "T-artefact")
    septal_motion: float = 1.0  # share of the normal inward motion the ventricular septum keeps (septal_gap: < 1)
    longitudinal: float = 0.14  # mitral-plane excursion / LV length at k = 1
    la_filling: float = 0.09
    rv_longitudinal: float = 1.0  # tricuspid-plane excursion relative to the mitral plane's
    akinetic_start: float = 0.52  # wall_motion: the hypokinetic segment starts this far (x LV length) from the base
    akinetic_depth: float = 1.0  # ... and loses this share of its motion (1 = akinetic)

    # coordinate frames ------------------------------------------------------------------------------------------------
    def to_heart(self, x, y):
        dx, dy = x - self.cx, y - self.cy
        return dx * self.cos_t - dy * self.sin_t, -dx * self.sin_t - dy * self.cos_t

    def to_image(self, p, q):
        return self.cx + p * self.cos_t - q * self.sin_t, self.cy - p * self.sin_t - q * self.cos_t

    def direction_to_image(self, dp, dq):
        return dp * self.cos_t - dq * self.sin_t, -dp * self.sin_t - dq * self.cos_t

    # LV / LA shape in polar coordinates around the annulus midpoint ---------------------------------------------
    def lv_la_radius(self, dp, dq):
        """Material radius of the LV endocardium (dq >= 0) or of the LA (dq < 0) in direction (dp, dq)."""
        dtype = np.result_type(dp, np.float32)
        lateral = dp >= 0
        adp = np.abs(dp)
        w = np.where(lateral, dtype.type(self.w_lat), dtype.type(self.w_sept))
        x, y = adp / w, np.abs(dq) * dtype.type(1.0 / self.length)
        if self.n_sept == 2.0:
            lv = 1.0 / np.sqrt(x * x + y * y + dtype.type(1e-12))
        else:
            n = np.where(lateral, dtype.type(2.0), dtype.type(self.n_sept))
            lv = (x**n + y**n + dtype.type(1e-12)) ** (-1.0 / n)
        adp2 = adp * adp
        adp8 = adp2 * adp2
        adp8 *= adp8
        lv *= 1.0 - dtype.type(self.narrowing) * adp8
        inv_a2 = np.where(lateral, dtype.type(1.0 / self.la_a_lat**2), dtype.type(1.0 / self.la_a_sept**2))
        inv_b2 = 1.0 / self.la_b**2
        alpha = adp2 * inv_a2 + dq * dq * dtype.type(inv_b2)
        beta = dq * dtype.type(self.la_h * inv_b2)
        gamma = dtype.type(self.la_h**2 * inv_b2 - 1.0)
        la = (np.sqrt(np.maximum(beta * beta - alpha * gamma, 0.0)) - beta) / np.maximum(alpha, dtype.type(1e-12))
        return np.where(dq >= 0, lv, la)

    def myo_thickness(self, dp, dq):
        dtype = np.result_type(dp, np.float32)
        side = np.where(dp >= 0, dtype.type(self.th_lat), dtype.type(self.th_sept))
        return self.th_apex + (side - dtype.type(self.th_apex)) * np.abs(dp)

    def akinetic_extent(self, q):
        """1 on the apical part of the lateral wall that `wall_motion` affects (its extent grows with severity)."""
        if self.disease != "wall_motion":
            return np.zeros_like(q)
        length = self.length
        return _smoothstep((q - self.akinetic_start * length) * (1.0 / (0.1 * length)))

    def akinetic_weight(self, q):
        """The share of the lateral wall's inward motion lost at level q (hypokinesis depth x extent)."""
        return self.akinetic_depth * self.akinetic_extent(q)

    def squeeze(self, p, q, k, eps):
        """Inverse of the LV's inward wall motion: at each level q the cavity's half-width shrinks by
        delta = eps * k * e0(q) (70% of it at the annulus, fading into the LA); the cavity scales with it and the
        displacement fades outside the wall over 1.4 half-widths, so the myocardium thickens."""
        dtype = np.result_type(p, np.float32)
        length = self.length
        lateral = p >= 0
        width = np.where(lateral, dtype.type(self.w_lat), dtype.type(self.w_sept))
        above = q >= 0
        level = np.clip(q * (1.0 / length), 0.0, 1.0)
        profile = np.sqrt(1.0 - level * level) * (1.0 - self.narrowing * (1.0 - _smoothstep(level * (1.0 / 0.3))))
        profile = np.where(above, profile, 1.0 - self.narrowing)
        strain = np.where(
            above,
            0.7 + 0.3 * _smoothstep(level * (1.0 / 0.3)),
            0.7 * (1.0 - _smoothstep(q * (-1.0 / (0.25 * length)))),
        )
        if self.disease == "wall_motion":
            strain = strain * np.where(lateral, 1.0 - self.akinetic_weight(q), 1.0)
        if self.septal_motion != 1.0:  # septal_gap: RV volume overload flattens the septum's systolic motion
            strain = strain * np.where(lateral, 1.0, dtype.type(self.septal_motion))
        e0 = width * profile
        delta = (k * dtype.type(eps)) * strain * e0
        e = e0 - delta
        ap = np.abs(p)
        inside = ap < e
        z = np.clip((ap - e) / (1.4 * width), 0.0, 1.0)
        fade = (1.0 - z) * (1.0 - z)
        moved = np.where(inside, ap * e0 / np.maximum(e, 1e-3), ap + delta * fade)
        return np.where(lateral, moved, -moved)

    def la_expansion(self, p, q, k, eps):
        """Inverse of the LA filling: an area-preserving radial map about the annulus midpoint, below the mitral line,
        that expands the LA by up to `la_filling` as the LV empties (identity above the mitral line); its amount is
        drawn apart from the LV's contraction."""
        r = np.sqrt(p * p + q * q) + 1e-6
        dp, dq = p / r, q / r
        e0 = self.lv_la_radius(dp, dq)
        s = 1.0 + (k * np.result_type(p, np.float32).type(self.la_filling)) * _smoothstep(dq * (-1.0 / 0.35))
        e = e0 * s
        r0 = np.where(r < e, r / s, np.sqrt(np.maximum(r * r + e0 * e0 - e * e, 0.0)))
        return dp * r0, dq * r0

    def ramp(self, q):
        """Weight of the longitudinal displacement: 0 at and above the apex, 1 at the mitral plane, fading below."""
        above = 1.0 - _smoothstep(q * (1.0 / self.length))
        below = 1.0 - _smoothstep(q * (-1.0 / self.ramp_below))
        return np.where(q >= 0, above, below)


_HYPOKINESIS_TAPER = 0.1  # the hypokinetic segment's edge tapers over this share of the LV length


def hypokinesis(severity: float) -> tuple[float, float]:
    """The ``wall_motion`` variant's graded hypokinesis of the lateral wall: (extent, depth). extent: the share of the
    LV long axis, from the apex, over which the wall has lost ``depth`` of its inward motion (the loss tapers to 0 over
    a further 0.1 toward the base); depth: 1 = akinetic. Both grow with severity: 0.15-0.38 and 0.4-1.0."""
    return 0.15 + 0.23 * severity, 0.4 + 0.6 * severity


def atrial_septal_defect(severity: float) -> tuple[float, float]:
    """The ``septal_gap`` variant's graded secundum ASD: (defect diameter in mm, volume overload in [0, 1]).

    The defect grows from 5 to 30 mm with severity (secundum defects seen in practice are ~5 to 30+ mm; those under
    ~5 mm rarely load the right heart, those over ~10 mm usually do: Silvestry et al., JASE 2015;28:910-58, the ASE
    guideline on ASD/PFO) and the left-to-right shunt, whose size follows the defect's, loads the right heart by
    ``overload`` = severity: RV and RA dilation, a normal-to-hyperdynamic RV and a flattened septum (see
    `_build_anatomy`). One severity drives both, so a mild case is a small gap in an almost normal heart."""
    return 5.0 + 25.0 * severity, severity


# septal_gap: how the volume overload (in [0, 1], `atrial_septal_defect`) changes the right heart at its fullest.
# RV basal width +55% at the fullest (as from the normal 33 +- 4 mm, upper limit 41 mm: Lang et al., JASE
# 2015;28:1-39, to the ~45-50 mm of haemodynamically significant ASD); the RA area ~+50% (as from ~14 cm2 to above
# the ~18 cm2 upper limit), more than PAH's; the RV stays normal to hyperdynamic (TAPSE and free-wall motion up,
# unlike PAH's reduced TAPSE: Rudski et al., JASE 2010;23:685-713); the ventricular septum is flattened toward the
# LV at end-diastole (eccentricity index > 1 in diastole only: Ryan et al., JACC 1985;5:918-27) and moves little or
# paradoxically in systole (Weyman et al., Circulation 1976;54:179-86).
_ASD_RV_WIDTH, _ASD_RV_LENGTH = 0.55, 0.15  # RV dilation: across, along its long axis
_ASD_RA_WIDTH, _ASD_RA_LENGTH = 0.40, 0.20  # RA dilation
_ASD_RV_HYPERDYNAMIC = 0.25  # RV free-wall strain and tricuspid-plane excursion increase
_ASD_SEPTAL_FLATTENING = 0.12  # the septal LV half-width lost at end-diastole (the septum bowed toward the LV)
_ASD_SEPTAL_MOTION_LOSS = 0.5  # the ventricular septum's inward systolic motion lost
_ASD_RIM_MM = 2.5  # thickness of the bright, blunted defect margins


def _build_anatomy(params: PhantomParams) -> _Anatomy:
    s = float(params.size)
    pah = params.severity if params.disease == "dilated_rv" else 0.0  # graded: RV dilation, septal flattening
    # graded ASD volume overload: RV / RA dilation, hyperdynamic RV, diastolic septal flattening (exactly 0 otherwise,
    # so every other variant renders as before)
    overload = atrial_septal_defect(params.severity)[1] if params.disease == "septal_gap" else 0.0
    four = params.view == "4CH"
    length = params.lv_length * s
    width = params.lv_width * length
    th = params.myo_thickness * s
    tilt = math.radians(params.tilt_deg)
    sin_t, cos_t = math.sin(tilt), math.cos(tilt)
    # the cavity apex hangs below the transducer; the mitral plane is one LV length further along the axis
    apex_x = (s - 1.0) / 2.0 + params.apex_shift * s
    apex_y = params.apex_depth * s + 0.8 * th
    cx, cy = apex_x + length * sin_t, apex_y + length * cos_t
    w_sept = width * (1.0 - 0.26 * pah)
    if overload:
        w_sept = w_sept * (1.0 - _ASD_SEPTAL_FLATTENING * overload)
    narrowing = 0.14
    kappa = 1.22 * params.la_size  # LA half-width / annulus half-width
    la_b = 0.36 * length * params.la_size
    la_h = la_b * math.sqrt(max(1.0 - 1.0 / kappa**2, 0.05))
    anatomy = _Anatomy(
        size=params.size,
        four_chamber=four,
        disease=params.disease,
        cx=cx,
        cy=cy,
        cos_t=cos_t,
        sin_t=sin_t,
        length=length,
        w_lat=width,
        w_sept=w_sept,
        n_sept=2.0 + pah + 0.5 * overload,
        narrowing=narrowing,
        th_lat=th,
        th_sept=th * (1.05 - 0.1 * pah),
        th_apex=0.8 * th,
        la_a_lat=kappa * width * (1.0 - narrowing),
        la_a_sept=kappa * w_sept * (1.0 - narrowing),
        la_b=la_b,
        la_h=la_h,
        la_wall=0.018 * s,
        ramp_below=0.9 * length,
        longitudinal=params.longitudinal,
        la_filling=params.la_filling,
    )
    if params.disease == "wall_motion":
        extent, depth = hypokinesis(params.severity)
        anatomy.akinetic_start = 1.0 - extent - _HYPOKINESIS_TAPER
        anatomy.akinetic_depth = depth
    if four:
        rv_scale = params.rv_size * (1.0 + 0.6 * pah)
        a_rv = 0.62 * width * rv_scale * (1.0 + _ASD_RV_WIDTH * overload)
        b_rv = 0.40 * length * params.rv_size * (1.0 + 0.2 * pah) * (1.0 + _ASD_RV_LENGTH * overload)
        tricuspid_q = 0.06 * length
        overlap = 0.35
        septum_outer = w_sept + anatomy.th_sept
        anatomy.rv_axes = (a_rv, b_rv)
        anatomy.rv_centre = (-septum_outer - (1.0 - overlap) * a_rv, tricuspid_q + 0.72 * b_rv)
        anatomy.rv_angle = math.radians(12.0)
        anatomy.tricuspid_q = tricuspid_q
        anatomy.rv_wall = 0.035 * s
        anatomy.septum_th = 0.028 * s
        ra_scale = params.rv_size * (1.0 + 0.3 * pah)
        a_ra = 0.95 * anatomy.la_a_sept * ra_scale * (1.0 + _ASD_RA_WIDTH * overload)
        b_ra = 0.92 * la_b * (1.0 + 0.12 * pah) * params.rv_size * (1.0 + _ASD_RA_LENGTH * overload)
        anatomy.ra_axes = (a_ra, b_ra)
        anatomy.ra_centre = (-(anatomy.la_a_sept + anatomy.septum_th) - 0.7 * a_ra, tricuspid_q - 0.5 * b_ra)
        hyperdynamic = 1.0 + _ASD_RV_HYPERDYNAMIC * overload  # ASD: normal to increased RV function
        anatomy.eps_rv = params.rv_strain * (1.0 - 0.45 * pah) * hyperdynamic
        anatomy.eps_ra = params.ra_filling
        anatomy.rv_longitudinal = params.rv_longitudinal * (1.0 - 0.6 * pah) * hyperdynamic  # PAH: reduced TAPSE
        septum_length = la_h + la_b  # the interatrial septum runs from the mitral plane to the LA roof
        anatomy.gap_q = -0.5 * septum_length  # the fossa ovalis, mid-septum (secundum defect)
        if params.disease == "septal_gap":
            diameter_mm = atrial_septal_defect(params.severity)[0]
            # in pixels, capped so that rims of septum remain above and below it (a secundum defect has rims)
            anatomy.gap_half = min(0.5 * diameter_mm / params.pixel_spacing_mm, 0.36 * septum_length)
            anatomy.gap_rim = max(_ASD_RIM_MM / params.pixel_spacing_mm, 1.0)
            anatomy.septal_motion = 1.0 - _ASD_SEPTAL_MOTION_LOSS * overload
    return anatomy


def _ellipse_local(centre, angle, p, q):
    """Coordinates in an ellipse's own frame: u across, v along its (rotated) long axis; and the offsets (dp, dq)."""
    dp, dq = p - centre[0], q - centre[1]
    c, s = math.cos(angle), math.sin(angle)
    return dp * c - dq * s, dp * s + dq * c, dp, dq


def _radial_map(p, q, centre, axes, angle, strain, weight_fn):
    """Inverse of an area-preserving radial map about `centre`: the ellipse boundary moves by the factor
    s = 1 - strain * weight(direction) along each ray, the inside scales with it, the outside moves by a displacement
    that conserves area (r^2 - r0^2 constant) and so fades as 1/r."""
    u, v, dp, dq = _ellipse_local(centre, angle, p, q)
    r = np.sqrt(u * u + v * v) + 1e-6
    du, dv = u / r, v / r
    e0 = 1.0 / np.sqrt((du / axes[0]) ** 2 + (dv / axes[1]) ** 2)
    s = 1.0 - strain * weight_fn(du, dv)
    e = e0 * s
    r0 = np.where(r < e, r / s, np.sqrt(np.maximum(r * r + e0 * e0 - e * e, 0.0)))
    scale = r0 / r
    return centre[0] + dp * scale, centre[1] + dq * scale


def _rv_weight(du, dv):
    # contract toward the septum (+u) and from the RV apex (+v); leave the septal side and the tricuspid plane alone
    return _smoothstep((0.3 - du) / 0.8) * _smoothstep((dv + 0.6) / 0.6)


def _ra_weight(du, dv):
    return _smoothstep((0.3 - du) / 0.8)


def _inverse_map(anatomy: _Anatomy, x, y, k, eps: float):
    """Current image points (x, y) at contraction k -> their material points, in the heart frame (p0, q0)."""
    p, q = anatomy.to_heart(x, y)
    delta = anatomy.longitudinal * anatomy.length * k
    shift = delta * anatomy.ramp(q)
    if anatomy.four_chamber and anatomy.rv_longitudinal != 1.0:
        # the tricuspid plane (right of the septum, p < 0) moves by its own share of the mitral plane's excursion
        right = _smoothstep((-p - 0.7 * anatomy.w_sept) * (1.0 / (0.6 * anatomy.w_sept)))
        shift = shift * (1.0 + (anatomy.rv_longitudinal - 1.0) * right)
    q = q - shift
    if anatomy.four_chamber:
        p, q = _radial_map(p, q, anatomy.rv_centre, anatomy.rv_axes, anatomy.rv_angle, anatomy.eps_rv * k, _rv_weight)
        p, q = _radial_map(p, q, anatomy.ra_centre, anatomy.ra_axes, 0.0, -anatomy.eps_ra * k, _ra_weight)
    p = anatomy.squeeze(p, q, k, eps)
    return anatomy.la_expansion(p, q, k, eps)


def _forward_points(anatomy: _Anatomy, x0, y0, k, eps: float, iterations: int = 8):
    """Current image positions of material image points (x0, y0) at contraction k (fixed-point inversion)."""
    x, y = np.array(x0, dtype=np.float64), np.array(y0, dtype=np.float64)
    for _ in range(iterations):
        p0, q0 = _inverse_map(anatomy, x, y, k, eps)
        mx, my = anatomy.to_image(p0, q0)
        x, y = x + (x0 - mx), y + (y0 - my)
    return x, y


def _material_grids(anatomy: _Anatomy, params: PhantomParams, pad: int):
    """Label grid (uint8, with the disease bit) and echogenicity grid (float32) over the material plane."""
    n = (params.size + 2 * pad) * _GRID_UPSAMPLE
    coords = (np.arange(n) / _GRID_UPSAMPLE - pad).astype(np.float32)
    x, y = np.meshgrid(coords, coords)
    p, q = anatomy.to_heart(x, y)
    r = np.sqrt(p * p + q * q) + 1e-6
    dp, dq = p / r, q / r
    e0 = anatomy.lv_la_radius(dp, dq)
    up = dq >= 0
    epi = e0 + anatomy.myo_thickness(dp, dq)
    cavity = up & (r < e0)
    myo = up & (r >= e0) & (r < epi)
    la = ~up & (r < e0)
    labels = np.zeros(x.shape, dtype=np.uint8)
    labels[cavity] = LV_CAVITY
    labels[myo] = MYOCARDIUM
    labels[la] = LEFT_ATRIUM
    s = float(params.size)

    echo = np.full(x.shape, _ECHO_BACKGROUND, dtype=np.float32)
    # pericardium around the lateral wall and apex, atrial walls
    peri = up & (r >= epi) & (r < epi + 0.02 * s) & (dp > -0.35)
    echo[peri] = _ECHO_PERICARDIUM
    la_wall = ~up & (r >= e0) & (r < e0 + anatomy.la_wall)
    echo[la_wall] = _ECHO_WALL
    disease = np.zeros(x.shape, dtype=bool)
    if anatomy.four_chamber:
        u, v, _, _ = _ellipse_local(anatomy.rv_centre, anatomy.rv_angle, p, q)
        a_rv, b_rv = anatomy.rv_axes
        rv_level = np.sqrt((u / a_rv) ** 2 + (v / b_rv) ** 2)
        outside_lv = ~up | (r >= epi)
        above_tricuspid = q >= anatomy.tricuspid_q
        rv = (rv_level < 1.0) & above_tricuspid & outside_lv
        rv_wall_level = 1.0 + anatomy.rv_wall / min(a_rv, b_rv)
        rv_wall = (rv_level < rv_wall_level) & ~rv & (q >= anatomy.tricuspid_q - 0.01 * s) & outside_lv
        rv_peri = (rv_level >= rv_wall_level) & (rv_level < rv_wall_level + 0.02 * s / a_rv) & (u < 0) & outside_lv
        rv_peri &= q >= anatomy.tricuspid_q
        a_ra, b_ra = anatomy.ra_axes
        ra_level = np.sqrt(((p - anatomy.ra_centre[0]) / a_ra) ** 2 + ((q - anatomy.ra_centre[1]) / b_ra) ** 2)
        away_from_la = up | (r >= e0 + anatomy.septum_th)
        ra = (ra_level < 1.0) & (q < anatomy.tricuspid_q) & away_from_la & ~(up & (r < epi + anatomy.septum_th))
        ra_wall = (ra_level < 1.0 + anatomy.la_wall / a_ra) & ~ra & (q < anatomy.tricuspid_q) & ~la & ~myo & ~cavity
        septum = ~up & (r >= e0) & (r < e0 + anatomy.septum_th + 0.5) & (ra_level < 1.05)
        echo[rv_peri] = _ECHO_PERICARDIUM
        echo[rv_wall | ra_wall] = _ECHO_WALL
        echo[septum] = _ECHO_WALL
        echo[rv | ra] = _ECHO_BLOOD
        if anatomy.disease == "septal_gap":
            gap = ~up & (r >= e0 - 1.0) & (r < e0 + anatomy.septum_th + 1.5) & (ra_level < 1.1)
            gap &= dp < 0
            distance = np.abs(q - anatomy.gap_q)
            # the defect's margins: the cut septum ends blunt and bright (the "T-artefact" that tells a true defect
            # from echo dropout, Silvestry et al. 2015)
            rims = gap & (distance >= anatomy.gap_half) & (distance < anatomy.gap_half + anatomy.gap_rim) & septum
            gap &= distance < anatomy.gap_half
            echo[gap & ~la] = _ECHO_BLOOD
            echo[rims] = _ECHO_ANNULUS
            disease = gap | rims
        elif anatomy.disease == "dilated_rv":
            disease = rv | rv_wall | (myo & (dp < 0))
    echo[myo] = _ECHO_MYOCARDIUM
    if anatomy.four_chamber:
        echo[myo & (dp < 0)] = _ECHO_MYOCARDIUM * 1.1  # the septum is a little brighter than the lateral wall
    echo[cavity | la] = _ECHO_BLOOD
    # annuli: fibrous, bright
    annulus_r = 0.022 * s
    lateral_hinge = float(anatomy.lv_la_radius(np.array(1.0), np.array(0.0)))
    septal_hinge = -float(anatomy.lv_la_radius(np.array(-1.0), np.array(0.0)))
    for hinge in (lateral_hinge, septal_hinge):
        near = (p - hinge) ** 2 + q**2 < annulus_r**2
        echo[near & ~cavity & ~la] = _ECHO_ANNULUS
    if anatomy.disease == "wall_motion":
        akinetic = (anatomy.akinetic_extent(q) > 0.5) & (p > 0)
        half_width = anatomy.w_lat * np.sqrt(np.clip(1.0 - (q / anatomy.length) ** 2, 0.0, 1.0))
        disease = akinetic & (myo | peri | (cavity & (p > 0.4 * half_width)))  # the wall and where it would move
    labels[disease] |= _DISEASE_BIT
    return labels, echo


def _speckle_field(
    rng: np.random.Generator, shape: tuple[int, int], sigma_lateral: float, sigma_axial: float, fields: int = 1
) -> np.ndarray:
    """``fields`` independent complex Gaussian fields filtered by an elongated PSF, as (fields, 2, H, W) real and
    imaginary parts: the speckle is their magnitude."""
    noise = rng.standard_normal((fields, 2, *shape), dtype=np.float32)
    for index in np.ndindex(fields, 2):
        noise[index] = cv2.GaussianBlur(
            noise[index], (0, 0), sigmaX=sigma_lateral, sigmaY=sigma_axial, borderType=cv2.BORDER_REFLECT
        )
    return noise


def _speckle(rng: np.random.Generator, shape: tuple[int, int], sigma_lateral: float, sigma_axial: float) -> np.ndarray:
    """Fully developed speckle: |complex Gaussian field filtered by an elongated PSF|, mean 1."""
    re, im = _speckle_field(rng, shape, sigma_lateral, sigma_axial)[0]
    amplitude = cv2.magnitude(re, im)
    return amplitude / amplitude.mean()


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int = 10) -> np.ndarray:
    """Low-frequency unit-variance random field (tissue heterogeneity)."""
    coarse = rng.standard_normal((cells, cells), dtype=np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


@functools.lru_cache(maxsize=64)
def _scan_geometry(size: int, half_angle_deg: float = SECTOR_HALF_ANGLE_DEG):
    """Depth (pixels from the transducer), sector angle (radians) and the sector mask, in the frame."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    tx, ty = (size - 1) / 2.0, -0.01 * size
    depth = np.sqrt((xs - tx) ** 2 + (ys - ty) ** 2)
    angle = np.arctan2(xs - tx, ys - ty)
    half = math.radians(half_angle_deg)
    inside = ((np.abs(angle) <= half) & (depth <= 1.02 * size)).astype(np.uint8)
    for array in (depth, angle, inside):
        array.setflags(write=False)
    return depth, angle, inside


# ----------------------------------------------------------------------------------------------------------------------
# rendering


@functools.lru_cache(maxsize=8)
def _coarse_grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A coarse grid of nodes, and for each frame pixel the node to its left and the weight of the next node: the
    bilinear upsampling cv2.resize (INTER_LINEAR) would do, with node j at pixel (j + 0.5) * size / nodes - 0.5."""
    nodes = max(8, int(math.ceil(size / _COARSE_STEP)))
    positions = ((np.arange(nodes) + 0.5) * size / nodes - 0.5).astype(np.float32)
    x, y = np.meshgrid(positions, positions)
    source = np.clip((np.arange(size) + 0.5) * nodes / size - 0.5, 0, nodes - 1)
    left = np.minimum(np.floor(source).astype(np.int64), nodes - 2)
    weight = (source - left).astype(np.float32)
    for array in (x, y, left, weight):
        array.setflags(write=False)
    return x, y, left, weight


def _upsample(coarse: np.ndarray, left: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Bilinear upsampling of a stack (T, n, n) to (T, size, size), separably, with plain numpy (no BLAS: the result
    must not depend on the thread count or the machine's BLAS)."""
    rows = coarse[:, left, :] * (1.0 - weight)[None, :, None] + coarse[:, left + 1, :] * weight[None, :, None]
    return rows[:, :, left] * (1.0 - weight) + rows[:, :, left + 1] * weight


def _material_maps(anatomy: _Anatomy, size: int, pad: int, k: np.ndarray, eps: float):
    """Per-frame remap tables (T, H, W) into the material grids.

    The deformation is evaluated on a coarse grid at a ladder of contraction levels; a frame's displacement is the
    linear blend of the two levels around its k, interpolated bilinearly onto every pixel. Both blends are smooth in
    space and time, and the image and the labels are sampled through the very same tables."""
    gx, gy, left, node_weight = _coarse_grid(size)
    k = np.clip(np.asarray(k, dtype=np.float64), 0.0, 1.0)
    position = k * (_K_LEVELS - 1)
    lower = np.minimum(np.floor(position).astype(np.int64), _K_LEVELS - 2)
    weight = (position - lower).astype(np.float32)[:, None, None]
    used, index = np.unique(np.concatenate([lower, lower + 1]), return_inverse=True)
    lower, upper = index[: k.size], index[k.size :]
    levels = (used / (_K_LEVELS - 1)).astype(np.float32)
    p0, q0 = _inverse_map(anatomy, gx[None], gy[None], levels[:, None, None], eps)
    mx, my = anatomy.to_image(p0, q0)
    pixels = np.arange(size, dtype=np.float32)
    dense = []
    for coarse, grid, axis in ((mx, gx, 1), (my, gy, 0)):
        displacement = (coarse - grid[None]).astype(np.float32) * _GRID_UPSAMPLE
        blended = displacement[lower] * (1.0 - weight) + displacement[upper] * weight
        field = _upsample(blended, left, node_weight)
        field += np.expand_dims((pixels + pad) * _GRID_UPSAMPLE, axis=1 - axis)[None]
        dense.append(field)
    return list(zip(dense[0], dense[1]))


def _render_labels(labels_grid: np.ndarray, maps) -> np.ndarray:
    return np.stack(
        [cv2.remap(labels_grid, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE) for mx, my in maps]
    )


# typical measured EF (%) against contraction strength, a starting point for the per-video calibration
_STRENGTHS = np.array([0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.9])
_EF_OF_STRENGTH = np.array(
    [0.0, 10.0, 19.1, 28.3, 35.6, 43.2, 49.4, 55.8, 61.2, 65.8, 69.8, 73.7, 77.7, 81.3, 84.0, 92.0]
)


def _calibrate_contraction(params: PhantomParams, pad: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Contraction strength whose ED/ES masks (rendered as in the video) give the target EF by the method of discs.

    Calibrated on the normal heart of these parameters, so a diseased variant moves like its normal twin except where
    the disease lives. Returns the strength and the normal heart's material grids (labels, echogenicity)."""
    normal = replace(params, disease="normal")
    anatomy = _build_anatomy(normal)
    labels_grid, echo = _material_grids(anatomy, normal, pad)

    ed_tracing = None

    def measured_ef(eps: float) -> float:
        nonlocal ed_tracing
        states = np.array([1.0] if ed_tracing is not None else [0.0, 1.0])
        masks = _render_labels(labels_grid, _material_maps(anatomy, params.size, pad, states, eps))
        if ed_tracing is None:
            ed_tracing = disc_tracing(masks[0] == LV_CAVITY)  # end-diastole is the material state: eps-free
        return ef_from_tracings(ed_tracing, disc_tracing(masks[-1] == LV_CAVITY))

    def guess(ef: float) -> float:
        return float(np.interp(ef, _EF_OF_STRENGTH, _STRENGTHS))

    target = params.ef
    eps_a = guess(target)
    ef_a = measured_ef(eps_a)
    best = (abs(ef_a - target), eps_a)
    if best[0] < 0.3:
        return eps_a, labels_grid, echo
    eps_b = guess(2.0 * target - ef_a)  # correct by the offset, with the typical slope
    if abs(eps_b - eps_a) < 1e-4:
        eps_b = eps_a + 0.01
    ef_b = measured_ef(eps_b)
    best = min(best, (abs(ef_b - target), eps_b))
    for _ in range(3):
        if best[0] < 0.3 or abs(ef_b - ef_a) < 1e-9:
            break
        eps_c = float(np.clip(eps_b + (target - ef_b) * (eps_b - eps_a) / (ef_b - ef_a), 0.005, 0.9))
        eps_a, ef_a, eps_b, ef_b = eps_b, ef_b, eps_c, measured_ef(eps_c)
        best = min(best, (abs(ef_b - target), eps_b))
    return best[1], labels_grid, echo


def _valve_segments(
    anatomy: _Anatomy, k: np.ndarray, opening: np.ndarray, eps: float, brightness, shift=None
) -> list[list[tuple]]:
    """Per frame, the atrioventricular valve leaflets as line segments (start, end in 1/16 pixel, amplitude): hinged
    on the annuli, which follow the tissue, swinging open in diastole, translated by ``shift`` (x, y) per frame."""
    a_lat = float(anatomy.lv_la_radius(np.array(1.0), np.array(0.0)))
    a_sept = float(anatomy.lv_la_radius(np.array(-1.0), np.array(0.0)))
    span = a_lat + a_sept
    # per valve: hinge 0, hinge 1 (material heart frame) and their leaflet lengths
    hinges_pq = [[(a_lat, 0.0), (-a_sept, 0.0)]]
    lengths = [[0.45 * span, 0.58 * span]]
    if anatomy.four_chamber:
        level = (anatomy.tricuspid_q - anatomy.rv_centre[1]) / anatomy.rv_axes[1]
        free = anatomy.rv_centre[0] - anatomy.rv_axes[0] * math.sqrt(max(1.0 - level**2, 0.05))
        septal = -(a_sept + anatomy.th_sept)
        hinges_pq.append([(septal, anatomy.tricuspid_q), (free, anatomy.tricuspid_q)])
        lengths.append([0.42 * (septal - free), 0.55 * (septal - free)])
    material = np.array(hinges_pq, dtype=np.float64)  # (V, 2, 2)
    x0, y0 = anatomy.to_image(material[..., 0].ravel(), material[..., 1].ravel())
    T, V = len(k), material.shape[0]
    xs, ys = _forward_points(
        anatomy, np.broadcast_to(x0, (T, x0.size)), np.broadcast_to(y0, (T, y0.size)), k[:, None], eps
    )
    hinges = np.stack([xs, ys], axis=-1).reshape(T, V, 2, 2)  # (T, valve, hinge, xy)
    apex_dir = np.array(anatomy.direction_to_image(0.0, 1.0))
    span_vec = hinges[:, :, 1] - hinges[:, :, 0]
    span_len = np.linalg.norm(span_vec, axis=-1, keepdims=True) + 1e-9
    across = span_vec / span_len
    sag = hinges.mean(axis=2) - 0.12 * span_len * apex_dir
    closed = sag[:, :, None, :] - hinges
    closed /= np.linalg.norm(closed, axis=-1, keepdims=True) + 1e-9
    sign = np.array([1.0, -1.0])[None, None, :, None]
    open_dir = apex_dir + 0.25 * sign * across[:, :, None, :]
    open_dir /= np.linalg.norm(open_dir, axis=-1, keepdims=True)
    o = np.asarray(opening, dtype=np.float64)[:, None, None, None]
    direction = (1.0 - o) * closed + o * open_dir
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True) + 1e-9
    tips = hinges + np.array(lengths)[None, :, :, None] * direction
    if shift is not None:
        offset = np.stack([np.asarray(shift[0]), np.asarray(shift[1])], axis=-1)[:, None, None, :]
        hinges, tips = hinges + offset, tips + offset
    start = np.round(hinges * 16).astype(np.int64)
    end = np.round(tips * 16).astype(np.int64)
    values = _ECHO_LEAFLET * np.asarray(brightness)[:, :V, :]
    return [
        [
            (tuple(start[t, v, j].tolist()), tuple(end[t, v, j].tolist()), float(values[t, v, j]))
            for v in range(V)
            for j in range(2)
        ]
        for t in range(T)
    ]


def simulate_video(params: PhantomParams, seed: int) -> PhantomVideo:
    """Render one phantom video. Deterministic: the same params and seed give byte-identical frames and masks."""
    size, T = params.size, params.num_frames
    t_ed = _first_end_diastole(params)
    rng = np.random.default_rng(seed)
    pad = int(math.ceil(0.15 * size))
    n_grid = (size + 2 * pad) * _GRID_UPSAMPLE
    scale = size / 112.0
    # random draws first, in a fixed order and shape that depend only on (size, T): a diseased video shares its
    # speckle and noise with the normal video of the same seed
    grain = scale * params.speckle_size * _GRID_UPSAMPLE
    speckle_fields = _speckle_field(rng, (n_grid, n_grid), 0.95 * grain, 0.5 * grain, fields=2)
    heterogeneity = _smooth_field(rng, (n_grid, n_grid))
    clutter = _speckle(rng, (size, size), 1.2 * scale, 0.6 * scale)
    leaflet_brightness = 0.7 + 0.6 * rng.random((T, 2, 2))
    thermal = np.frombuffer(rng.bytes(T * size * size), dtype=np.uint8).reshape(T, size, size)

    eps, labels_grid, echo = _calibrate_contraction(params, pad)
    anatomy = _build_anatomy(params)
    if params.disease != "normal":
        labels_grid, echo = _material_grids(anatomy, params, pad)
    echo = cv2.GaussianBlur(echo, (0, 0), 0.5 * _GRID_UPSAMPLE * scale)
    base = echo * np.exp(0.25 * heterogeneity)
    base /= cv2.magnitude(*speckle_fields[0]).mean()

    times = np.arange(T) / params.fps
    phi = (params.phase + times / params.cycle_s) % 1.0
    k = _contraction(phi, params.systole_fraction)
    maps = _material_maps(anatomy, size, pad, k, eps)
    # breathing: the whole scene translates under the fixed probe (image and labels alike, through the maps)
    breath = (
        params.breathing_amplitude
        * size
        * np.sin(2.0 * np.pi * (params.breathing_phase + times * params.breathing_rate / 60.0))
    )
    angle_b, angle_s = math.radians(params.breathing_angle_deg), math.radians(params.swing_angle_deg)
    swing = params.swing * size * k
    shift_x = breath * math.cos(angle_b) + swing * math.cos(angle_s)
    shift_y = breath * math.sin(angle_b) + swing * math.sin(angle_s)
    # brightness: with breathing, and with each beat (through-plane motion), by amounts drawn apart from the EF
    breath_phase = 2.0 * np.pi * (params.breathing_phase + times * params.breathing_rate / 60.0)
    frame_gain = 10.0 ** ((params.breathing_gain_db * np.sin(breath_phase) + params.beat_gain_db * k) / 20.0)
    # speckle decorrelation: the speckle field turns, frame by frame, toward an independent one
    theta = params.speckle_decorrelation * times
    segments = _valve_segments(
        anatomy, k, _valve_opening(phi, params.systole_fraction), eps, leaflet_brightness, (shift_x, shift_y)
    )

    # scan-coordinate effects: attenuation with TGC, lateral fall-off, near-field clutter, thermal noise; then log
    # compression to the display range and a light blur, black outside the sector
    depth, angle, sector = _scan_geometry(size, params.sector_half_angle_deg)
    half = math.radians(params.sector_half_angle_deg)
    relative_depth = depth / size
    tgc_db = np.interp(relative_depth, [0.0, 0.5, 1.0], params.tgc_db)
    gain = np.exp(-params.attenuation * (relative_depth - 0.45)) * 10 ** ((params.gain_db + tgc_db) / 20.0)
    gain = (gain * (0.35 + 0.65 * _smoothstep((half - np.abs(angle)) / math.radians(6.0)))).astype(np.float32)
    haze = (0.35 * np.exp(-relative_depth / 0.06) * clutter).astype(np.float32)
    noise_step = np.float32(params.noise / 255.0)
    floor = np.float32(10.0 ** (-_DYNAMIC_RANGE_DB / 20.0))  # the amplitude shown as black
    to_display = 255.0 / (_DYNAMIC_RANGE_DB + 2.0)
    alpha, beta = to_display * 20.0 / math.log(10.0), to_display * _DYNAMIC_RANGE_DB
    sigma = 0.45 * scale
    frames = np.empty((T, size, size), dtype=np.uint8)
    coded = np.empty((T, size, size), dtype=np.uint8)
    (re_a, im_a), (re_b, im_b) = speckle_fields
    identity = np.arange(size, dtype=np.float32)
    identity_x = np.broadcast_to((identity + pad) * _GRID_UPSAMPLE, (size, size))
    identity_y = np.ascontiguousarray(identity_x.T)
    for t, (map_x, map_y) in enumerate(maps):
        if shift_x[t] != 0 or shift_y[t] != 0:  # the maps at x - shift: the deformed scene, translated
            grid_x = identity_x * np.float32(1.0 / _GRID_UPSAMPLE) - np.float32(pad + shift_x[t])
            grid_y = identity_y * np.float32(1.0 / _GRID_UPSAMPLE) - np.float32(pad + shift_y[t])
            moved_x = cv2.remap(map_x - identity_x, grid_x, grid_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            moved_y = cv2.remap(map_y - identity_y, grid_x, grid_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            map_x = moved_x + (identity_x - np.float32(shift_x[t] * _GRID_UPSAMPLE))
            map_y = moved_y + (identity_y - np.float32(shift_y[t] * _GRID_UPSAMPLE))
        c, s = math.cos(theta[t]), math.sin(theta[t])
        speckle = cv2.magnitude(cv2.addWeighted(re_a, c, re_b, s, 0.0), cv2.addWeighted(im_a, c, im_b, s, 0.0))
        material = cv2.multiply(base, speckle)
        coded[t] = cv2.remap(labels_grid, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        amplitude = cv2.remap(material, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        for start, end, value in segments[t]:
            cv2.line(amplitude, start, end, value, thickness=1, lineType=cv2.LINE_8, shift=4)
        amplitude *= gain * np.float32(frame_gain[t])
        amplitude += haze
        amplitude += noise_step * thermal[t]
        np.maximum(amplitude, floor, out=amplitude)
        cv2.log(amplitude, amplitude)
        frames[t] = cv2.convertScaleAbs(cv2.GaussianBlur(amplitude, (0, 0), sigma), alpha=alpha, beta=beta)
    frames *= sector
    masks = coded & np.uint8(_DISEASE_BIT - 1)
    masks *= sector  # nothing is labelled where nothing is imaged
    abnormal_region = np.bitwise_or.reduce(coded, axis=0) & _DISEASE_BIT > 0

    ed_index, es_index = _ed_es_frames(masks, times, t_ed, params)
    ed_tracing = disc_tracing(masks[ed_index] == LV_CAVITY)
    es_tracing = disc_tracing(masks[es_index] == LV_CAVITY)
    ml_per_px3 = params.pixel_spacing_mm**3 / 1000.0
    return PhantomVideo(
        frames=frames,
        masks=masks,
        ed_index=int(ed_index),
        es_index=int(es_index),
        ef=ef_from_tracings(ed_tracing, es_tracing),
        edv=volume_from_tracing(ed_tracing) * ml_per_px3,
        esv=volume_from_tracing(es_tracing) * ml_per_px3,
        fps=float(params.fps),
        abnormal_region=abnormal_region & (sector > 0),
        params=params,
        ed_tracing=ed_tracing,
        es_tracing=es_tracing,
    )


def _first_end_diastole(params: PhantomParams) -> float:
    """Time (s) of the first end-diastole in the video; its end-systole must be inside the video too."""
    cycle = params.cycle_s
    duration = (params.num_frames - 1) / params.fps
    first_ed = ((1.0 - params.phase) % 1.0) * cycle
    if first_ed - cycle >= -0.5 / params.fps:  # the phase is (almost) 0: end-diastole at the first frame
        first_ed -= cycle
    if first_ed + params.systole_fraction * cycle > duration + 0.5 / params.fps:
        raise ValueError(
            f"a {params.num_frames}-frame video at {params.fps} fps ({duration:.2f} s) does not hold an end-diastole "
            f"and the end-systole after it at {params.heart_rate:.1f} bpm and phase {params.phase:.3f}; "
            "use more frames, or phase 0"
        )
    return first_ed


def _ed_es_frames(masks: np.ndarray, times: np.ndarray, t_ed: float, params: PhantomParams) -> tuple[int, int]:
    """ED: the largest LV area around the end-diastole instant t_ed; ES: the smallest LV area in the systole after."""
    cycle = params.cycle_s
    area = (masks == LV_CAVITY).sum(axis=(1, 2))
    window = np.flatnonzero(np.abs(times - t_ed) <= 0.2 * cycle)
    ed = int(window[np.argmax(area[window])])
    after = np.flatnonzero((times >= times[ed]) & (times <= times[ed] + (params.systole_fraction + 0.2) * cycle))
    es = int(after[np.argmin(area[after])])
    return ed, es
