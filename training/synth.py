"""Synthetic knee dataset in the exact fastMRI multi-coil layout (DESIGN.md contract 1), numpy only.

Each slice is a coronal knee cross-section (femoral and tibial condyles with trabecular marrow and a
cortical rim, articular cartilage, joint fluid, menisci, cruciate and collateral ligaments, muscle with
fibres and fat septa, subcutaneous fat, skin), with a smooth phase, seen by C loop coils on a cylinder
around the leg (Biot-Savart fields) with correlated noise. Files carry, besides fastMRI's datasets,
`reconstruction_sense` (|SENSE combination with the true maps|, cropped) and `sensitivity_maps`.

With `SynthConfig.vary` (`--vary`) each volume draws its acquisition instead (`draw_acquisition`): noise
level, coil count and array geometry, matrix size, orientation, and content (the knee or a shape phantom,
`shapes_slice`); the file records the draw in its attrs.

Coordinates: "normalised units" are half the reconstructed field of view (70 mm at 140 mm FOV);
y runs along the readout rows (superior -> inferior), x along the phase-encode columns.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
from scipy.interpolate import RectBivariateSpline

from dnirecon.errors import ConfigError
from dnirecon.files import replaced_on_success
from dnirecon.fastmri_io import ISMRMRD_NS, center_crop
from dnirecon.fftc import fft2c, ifft2c

log = logging.getLogger(__name__)

CONTRASTS = {"pd": "CORPD_FBK", "pdfs": "CORPDFS_FBK"}
FOV_MM = 140.0
SLICE_MM = 3.0

# Relative signal of each tissue. Fat is bright in PD and suppressed in PDFS, where fluid is brightest.
TISSUE = {
    "pd":   dict(skin=0.55, fat=1.00, muscle=0.34, septa=0.85, marrow=0.88, cortex=0.03, cartilage=0.62,
                 fluid=0.70, meniscus=0.05, ligament=0.09, physis=0.35, scale=1.0, noise=0.012),
    "pdfs": dict(skin=0.45, fat=0.13, muscle=0.42, septa=0.16, marrow=0.20, cortex=0.03, cartilage=0.58,
                 fluid=1.00, meniscus=0.05, ligament=0.08, physis=0.30, scale=0.55, noise=0.012),
}


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Options of `dnirecon data synth` (sizes are the fastMRI names: recon (h, w), enc width W)."""

    volumes_per_contrast: int = 2
    slices: int = 8
    coils: int = 8
    recon_size: tuple[int, int] = (96, 96)
    enc_width: int | None = None
    seed: int = 0
    contrasts: tuple[str, ...] = ("pd", "pdfs")
    # multiplies each contrast's k-space noise (TISSUE[...]["noise"]); 0 gives noise-free volumes. The
    # random stream does not depend on it, so scales of one seed differ only by the noise.
    noise_scale: float = 1.0
    # draw each volume's acquisition (noise level, coils and their geometry, recon size around recon_size,
    # orientation, content); coils and enc_width are then drawn, not taken from here
    vary: bool = False

    def validated(self) -> "SynthConfig":
        def positive(name: str, v: int) -> None:
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")

        positive("volumes_per_contrast", self.volumes_per_contrast)
        positive("slices", self.slices)
        positive("coils", self.coils)
        h, w = self.recon_size
        if h < 16 or w < 16:
            raise ConfigError(f"--recon-size must be at least 16 16, got {h} {w}")
        if self.enc_width is not None and self.enc_width < w:
            raise ConfigError(f"--enc-width must be >= the recon width {w}, got {self.enc_width}")
        if not isinstance(self.noise_scale, (int, float, np.floating)) or not np.isfinite(self.noise_scale) \
                or self.noise_scale < 0:
            raise ConfigError(f"--noise-scale must be a finite number >= 0, got {self.noise_scale!r}")
        if self.vary and self.enc_width is not None:
            raise ConfigError("--enc-width cannot be combined with --vary (the encoded width follows each drawn "
                              f"recon width), got {self.enc_width}")
        for c in self.contrasts:
            if c not in CONTRASTS:
                raise ConfigError(f"--contrasts: unknown contrast {c!r}, expected one of {sorted(CONTRASTS)}")
        return self

    @property
    def enc_w(self) -> int:
        return self.enc_width if self.enc_width is not None else encoded_width(self.recon_size[1])


def encoded_width(w: int) -> int:
    """Encoded phase width for a recon width w: 7.5 % more on each side (368 for 320), as fastMRI's knees."""
    return w + 2 * round(0.075 * w)


def acquired_columns(enc_w: int) -> tuple[int, int]:
    """Acquired phase columns [left, right) inside the encoded width; the rest is zero padding."""
    pad = round(0.045 * enc_w)
    return pad, enc_w - pad


# ----------------------------------------------------------------------------- shape helpers
def _smoothstep(e0: float, e1: float, v: np.ndarray) -> np.ndarray:
    t = np.clip((v - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _ellipse(x, y, cx, cy, a, b):
    """Approximate signed distance to an ellipse (negative inside)."""
    return (np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2) - 1.0) * min(a, b)


def _smin(a, b, k):
    """Smooth union of two signed distances (k: blend width)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _smax(a, b, k):
    return -_smin(-a, -b, k)


def _segment(x, y, p0, p1):
    """Distance to the line segment p0-p1."""
    px, py = x - p0[0], y - p0[1]
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip((px * dx + py * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(px - t * dx, py - t * dy)


def _bandpass_noise(rng, shape, spacing, wavelength, rel_bw=0.35, stretch=(1.0, 1.0)):
    """Unit-variance noise with energy at one spatial wavelength (normalised units).

    stretch (sy, sx) > 1 along an axis lengthens the structures along it (fibres, septa).
    """
    ky = np.fft.fftfreq(shape[0], d=spacing[0])[:, None] * stretch[0]
    kx = np.fft.fftfreq(shape[1], d=spacing[1])[None, :] * stretch[1]
    k = np.hypot(ky, kx)
    f0 = 1.0 / wavelength
    filt = np.exp(-0.5 * ((k - f0) / (rel_bw * f0)) ** 2)
    white = rng.standard_normal(shape)
    out = np.fft.ifft2(np.fft.fft2(white) * filt).real
    return out / (out.std() + 1e-12)


@dataclasses.dataclass
class KneeParams:
    """Per-volume anatomy: size, position, shape ratios, which side the fibula is on."""

    s: float; cx: float; jy: float; tilt: float; leg_w: float; fat_t: float; skin_t: float
    shaft_w: float; cond_w: float; med_ratio: float; lat_ratio: float; notch_w: float
    plat_w: float; cart_t: float; gap: float; side: float; coverage: float; trab_wl: float

    @staticmethod
    def sample(rng: np.random.Generator) -> "KneeParams":
        u = rng.uniform
        return KneeParams(
            s=u(0.85, 1.05), cx=u(-0.06, 0.06), jy=u(-0.1, 0.1), tilt=u(-0.06, 0.06), leg_w=u(0.56, 0.66),
            fat_t=u(0.05, 0.11), skin_t=u(0.012, 0.018), shaft_w=u(0.17, 0.21), cond_w=u(0.38, 0.43),
            med_ratio=u(0.95, 1.1), lat_ratio=u(0.88, 1.0), notch_w=u(0.8, 1.2), plat_w=u(0.38, 0.43),
            cart_t=u(0.022, 0.032), gap=u(0.008, 0.016), side=float(rng.choice([-1.0, 1.0])),
            coverage=u(0.75, 0.95), trab_wl=u(0.028, 0.036),
        )


class _Grid:
    """Pixel-centre coordinates of the full field of view (2 h rows x W columns) in normalised units."""

    def __init__(self, recon_size: tuple[int, int], enc_w: int):
        h, w = recon_size
        self.shape = (2 * h, enc_w)
        self.spacing = (2.0 / h, 2.0 / w)
        self.y = ((np.arange(2 * h) - h) * self.spacing[0])[:, None]
        self.x = ((np.arange(enc_w) - enc_w // 2) * self.spacing[1])[None, :]
        self.pixel = max(self.spacing)
        self.transposed = False

    def axes(self, pair: tuple[float, float]) -> tuple[float, float]:
        """A (content y, content x) pair in array-axis order (swapped when the content is transposed)."""
        return (pair[1], pair[0]) if self.transposed else pair

    def oriented(self, transpose: bool, flip_rows: bool, flip_cols: bool) -> "_Grid":
        """The same pixels, with content coordinates transposed and/or mirrored (the anatomy turns, not the coils)."""
        g = copy.copy(self)
        rows = -self.y if flip_rows else self.y
        cols = -self.x if flip_cols else self.x
        g.y, g.x = (cols, rows) if transpose else (rows, cols)
        g.transposed = transpose
        return g


def _occ(d: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside-indicator of a signed distance (edge ~ half a pixel: no staircase aliasing)."""
    return 0.5 * (1.0 - np.tanh(d / edge))


def knee_slice(p: KneeParams, t: float, grid: _Grid, rng: np.random.Generator, contrast: str) -> np.ndarray:
    """Magnitude image (2h, W) of one coronal slice; t in [-1, 1] runs anterior -> posterior."""
    v = TISSUE[contrast]
    edge = 0.5 * grid.pixel
    x0, y = grid.x, grid.y
    x = x0 - p.cx - p.tilt * (y - p.jy)  # the leg axis leans a little
    s, jy = p.s, p.jy
    a = np.abs(t)

    # leg outline: slightly wider thigh, narrower towards the ends of the slab, rounded ends
    hw_leg = s * p.leg_w * np.sqrt(1 - 0.3 * t * t) * (1 + 0.1 * _smoothstep(jy + 0.2, jy - 1.2, y)
                                                         + 0.03 * np.sin(3.1 * y + 7 * p.cx))
    d_leg = np.maximum(np.abs(x) - hw_leg, np.abs(y - 0.05) - 1.75)
    fat_t = p.fat_t * (1 + 0.35 * np.sin(2.3 * y + 11 * p.tilt) * np.sign(x) + 0.2 * np.cos(4 * y))

    # femur: shaft flaring into two condyles, intercondylar notch deepening posteriorly
    hw_f = s * (p.shaft_w + (p.cond_w - p.shaft_w) * _smoothstep(jy - 0.65, jy - 0.2, y)) * (1 - 0.1 * a)
    f_bot = jy - p.gap / 2 - p.cart_t
    d_col = np.maximum(np.abs(x) - hw_f, y - (f_bot - 0.14))
    cw = s * p.cond_w * (1 - 0.1 * a)
    med = _ellipse(x, y, -p.side * cw * 0.5, f_bot - 0.16, cw * 0.5 * p.med_ratio, 0.16)
    lat = _ellipse(x, y, p.side * cw * 0.5, f_bot - 0.155, cw * 0.5 * p.lat_ratio, 0.155)
    d_fem = _smin(d_col, _smin(med, lat, 0.04), 0.06)
    notch_depth = 0.05 + 0.22 * _smoothstep(-0.7, 0.6, t)
    notch = _ellipse(x, y, 0.0, f_bot + 0.02, s * 0.065 * p.notch_w * (0.6 + 0.6 * _smoothstep(-0.5, 0.8, t)),
                     notch_depth)
    d_fem = _smax(d_fem, -notch, 0.02)

    # tibia: plateau with two shallow compartments and the tibial spines, tapering to the shaft
    t_top = jy + p.gap / 2 + p.cart_t
    top = (t_top + 0.012 * np.cos(np.pi * x / (s * p.plat_w * 0.5))
           - 0.04 * np.exp(-(((np.abs(x) - 0.04 * s) / 0.025) ** 2)) * (1 - 0.6 * a))
    hw_t = s * (0.19 + (p.plat_w - 0.19) * (1 - _smoothstep(jy + 0.12, jy + 0.6, y))) * (1 - 0.08 * a)
    d_tib = _smax(np.abs(x) - hw_t, top - y, 0.04)

    # fibular head, lateral and below the plateau, in posterior slices only
    fib_f = _smoothstep(0.1, 0.5, t)
    d_fib = np.full(grid.shape, 10.0)
    if fib_f > 0.35:
        fx = p.side * (s * p.plat_w + 0.03)
        head = _ellipse(x, y, fx, jy + 0.32, 0.07 * s * fib_f + 1e-3, 0.09 * fib_f + 1e-3)
        shaft = np.maximum(np.abs(x - fx - p.side * 0.02 * (y - jy)) - 0.04 * s * fib_f, jy + 0.35 - y)
        d_fib = _smin(head, shaft, 0.04)

    # patella in anterior slices (above the joint, in front of the femur)
    pat_f = _smoothstep(-0.45, -0.85, t)
    d_pat = np.full(grid.shape, 10.0)
    if pat_f > 0:
        d_pat = _ellipse(x, y, 0.02, jy - 0.45, 0.17 * s * pat_f + 1e-3, 0.2 * pat_f + 1e-3)

    d_bone = np.minimum(np.minimum(d_fem, d_tib), np.minimum(d_fib, d_pat))
    d_bone = np.maximum(d_bone, d_leg + p.skin_t + 0.04)  # shafts end inside the leg, not in the air

    # --- textures -----------------------------------------------------------------------------
    wl = max(p.trab_wl, 2.6 * grid.pixel)
    trab_n = _bandpass_noise(rng, grid.shape, grid.spacing, wl, rel_bw=0.45)
    trab = np.exp(-((trab_n / 0.45) ** 2))  # zero crossings of band-pass noise: a trabecular mesh
    marrow_lf = _bandpass_noise(rng, grid.shape, grid.spacing, 0.25, rel_bw=0.6)
    fibres = _bandpass_noise(rng, grid.shape, grid.spacing, max(0.02, 2.2 * grid.pixel), rel_bw=0.5,
                             stretch=grid.axes((8.0, 1.0)))
    septa_n = _bandpass_noise(rng, grid.shape, grid.spacing, 0.35, rel_bw=0.5, stretch=grid.axes((3.0, 1.0)))
    septa = np.exp(-((septa_n / 0.07) ** 2))
    lobules = _bandpass_noise(rng, grid.shape, grid.spacing, max(0.05, 3 * grid.pixel), rel_bw=0.5)

    # --- painter's algorithm, outside in --------------------------------------------------------
    img = np.zeros(grid.shape)

    def paint(value, occupancy):
        nonlocal img
        img = img * (1 - occupancy) + value * occupancy

    paint(v["skin"], _occ(d_leg, edge))
    paint(v["fat"] * (1 + 0.05 * lobules), _occ(d_leg + p.skin_t, edge))
    soft_inner = d_leg + p.skin_t + fat_t
    muscle_w = _smoothstep(0.12, 0.35, np.abs(y - jy))  # at the joint line: fat, tendons, ligaments
    muscle = v["muscle"] * (1 + 0.12 * fibres)
    muscle = muscle * (1 - septa) + v["septa"] * septa
    periart = 0.75 * v["fat"] + 0.25 * v["muscle"]
    paint(muscle * muscle_w + periart * (1 - muscle_w), _occ(soft_inner, edge))

    # collateral ligaments hugging both sides of the joint, and cruciates in the notch
    lig = np.full(grid.shape, 10.0)
    for side in (-1.0, 1.0):
        xe = side * (s * p.plat_w + 0.025)
        lig = np.minimum(lig, _segment(x, y, (side * (cw + 0.02), jy - 0.3), (xe, jy + 0.35)) - 0.018)
    cr = _smoothstep(-0.6, 0.0, t) * _smoothstep(1.0, 0.6, t)
    if cr > 0:
        lig = np.minimum(lig, _segment(x, y, (0.035 * s, f_bot - 0.17), (-0.03 * s, jy + 0.02)) - 0.02 * cr)
    paint(v["ligament"], _occ(lig, edge) * (soft_inner < 0.02) * (d_bone > 0))

    # bone: cortical rim, then marrow with trabecular mesh, growth-plate scars
    cort = max(0.012, 1.2 * grid.pixel)
    paint(v["cortex"], _occ(d_bone, edge))
    marrow = v["marrow"] * (1 + 0.06 * marrow_lf) * (1 - 0.5 * trab)
    physis = np.minimum(np.abs(y - (jy - 0.32 - 0.05 * np.cos(3 * x))), np.abs(y - (jy + 0.26 + 0.03 * np.cos(4 * x))))
    marrow = marrow * (1 - 0.6 * np.exp(-((physis / max(0.006, grid.pixel * 0.7)) ** 2))) \
        + v["physis"] * 0.6 * np.exp(-((physis / max(0.006, grid.pixel * 0.7)) ** 2)) * 0.3
    paint(marrow, _occ(d_bone + cort, edge))

    # articular cartilage on the distal femur and the tibial plateau, fluid in the joint space
    near_joint = _smoothstep(0.28, 0.12, np.abs(y - jy))
    cart_fem = (d_fem > -0.005) & (d_fem < p.cart_t) & (y > f_bot - 0.12)
    cart_tib = (d_tib > -0.005) & (d_tib < p.cart_t) & (y < t_top + 0.03)
    cart = _occ(np.maximum(d_fem, -d_fem) - p.cart_t * 0.5, edge)  # soft, used only for the fringe
    fem_c = cart_fem * (np.abs(x) < cw * 1.05) * near_joint
    tib_c = cart_tib * (np.abs(x) < s * p.plat_w) * near_joint
    paint(v["cartilage"], np.clip(fem_c + tib_c, 0, 1) * np.maximum(cart, 1.0))
    gap = (np.abs(y - jy) < p.gap / 2 + 0.5 * grid.pixel) & (np.abs(x) < s * p.plat_w) & (d_bone > 0) \
        & ~(notch < 0)
    paint(v["fluid"], gap.astype(float))

    # menisci: dark wedges at the periphery of the joint, bases outward
    for side in (-1.0, 1.0):
        xb = s * p.plat_w + 0.01
        xa = xb - 0.12 * s
        half_h = (p.gap / 2 + p.cart_t) * np.clip((side * x - xa) / (xb - xa), 0, 1)
        wedge = (side * x > xa) & (side * x < xb) & (np.abs(y - jy) < half_h + 0.003)
        paint(v["meniscus"], wedge.astype(float))

    return img * v["scale"]


# ----------------------------------------------------------------------------- shape phantoms
# CC0-licensed photographs of textures that scikit-image ships in its wheel (no download)
TEXTURES = ("brick", "grass", "gravel")


@functools.lru_cache(maxsize=None)
def _texture(name: str) -> np.ndarray:
    """A scikit-image texture photograph as float64, zero mean and unit standard deviation."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)(), np.float64)
    return (img - img.mean()) / (img.std() + 1e-12)


def _texture_fill(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A random crop of a random texture, resampled to `shape` at a random zoom; unit variance."""
    from skimage.transform import resize

    tex = _texture(TEXTURES[int(rng.integers(len(TEXTURES)))])
    zoom = rng.uniform(1.0, 3.0)  # texture pixels per image pixel
    ch, cw = (min(tex.shape[0], max(4, round(shape[0] * zoom))), min(tex.shape[1], max(4, round(shape[1] * zoom))))
    r0, c0 = rng.integers(tex.shape[0] - ch + 1), rng.integers(tex.shape[1] - cw + 1)
    out = resize(tex[r0:r0 + ch, c0:c0 + cw], shape, anti_aliasing=True)
    return (out - out.mean()) / (out.std() + 1e-12)


def _polygon(x, y, cx, cy, a, b, rot, angles):
    """Signed distance (negative inside, exact near the edges) to a convex polygon with vertices on an ellipse."""
    vx = cx + a * np.cos(angles) * np.cos(rot) - b * np.sin(angles) * np.sin(rot)
    vy = cy + a * np.cos(angles) * np.sin(rot) + b * np.sin(angles) * np.cos(rot)
    d = np.full(np.broadcast(x, y).shape, -np.inf)
    for i in range(len(angles)):
        ex, ey = vx[(i + 1) % len(angles)] - vx[i], vy[(i + 1) % len(angles)] - vy[i]
        nx, ny = ey, -ex  # outward normal of a counter-clockwise polygon
        norm = np.hypot(nx, ny)
        d = np.maximum(d, ((x - vx[i]) * nx + (y - vy[i]) * ny) / norm)
    return d


def _rotated_ellipse(x, y, cx, cy, a, b, rot):
    xr = (x - cx) * np.cos(rot) + (y - cy) * np.sin(rot)
    yr = -(x - cx) * np.sin(rot) + (y - cy) * np.cos(rot)
    return _ellipse(xr, yr, 0.0, 0.0, a, b)


@dataclasses.dataclass(frozen=True)
class Inclusion:
    """One ellipse or convex polygon of a shape phantom (normalised units, centre slice tz, half-extent rz)."""

    kind: str  # "ellipse" or "polygon"
    cx: float
    cy: float
    a: float
    b: float
    rot: float
    angles: np.ndarray  # polygon: sorted vertex angles on the (a, b) ellipse
    intensity: float
    tz: float
    rz: float
    texture: str  # "image" (a scikit-image texture photograph) or "noise" (band-pass noise)
    tex_amp: float
    tex_wl: float


@dataclasses.dataclass(frozen=True)
class ShapeParams:
    """A piecewise-constant phantom: a body outline holding ellipses and polygons, some nested.

    Each inclusion is a sphere-like blob across the slab: its cross-section shrinks away from its
    centre slice `tz` and vanishes beyond `rz`, so neighbouring slices change smoothly.
    """

    body: tuple[float, ...]  # (cx, cy, a, b, rot, intensity, texture amplitude)
    inclusions: tuple[Inclusion, ...]
    coverage: float = 0.9  # slices span t in [-coverage, coverage]

    @staticmethod
    def sample(rng: np.random.Generator) -> "ShapeParams":
        u = rng.uniform
        body = (u(-0.08, 0.08), u(-0.08, 0.08), u(0.55, 0.85), u(0.55, 0.85), u(0, np.pi), u(0.25, 0.6),
                u(0.0, 0.1))
        inclusions: list[Inclusion] = []
        for _ in range(int(rng.integers(6, 17))):
            if inclusions and rng.uniform() < 0.3:  # nested inside an earlier one
                p = inclusions[int(rng.integers(len(inclusions)))]
                scale = u(0.3, 0.6)
                cx, cy = p.cx + u(-0.3, 0.3) * p.a, p.cy + u(-0.3, 0.3) * p.b
                a, b = scale * p.a, scale * p.b * u(0.7, 1.3)
                tz, rz = p.tz, p.rz * u(0.6, 1.0)
            else:
                cx, cy = u(-0.6, 0.6) * body[2] + body[0], u(-0.6, 0.6) * body[3] + body[1]
                a, b = u(0.06, 0.3), u(0.06, 0.3)
                tz, rz = u(-0.6, 0.6), u(0.6, 1.6)
            kind = "ellipse" if rng.uniform() < 0.5 else "polygon"
            n = int(rng.integers(3, 8))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n)) if kind == "polygon" else np.zeros(0)
            inclusions.append(Inclusion(kind, cx, cy, a, b, rot=u(0, np.pi), angles=angles, intensity=u(0.05, 1.0),
                                        tz=tz, rz=rz, texture="image" if rng.uniform() < 0.3 else "noise",
                                        tex_amp=u(0.03, 0.15), tex_wl=u(0.03, 0.12)))
        return ShapeParams(body, tuple(inclusions))


def shapes_slice(p: ShapeParams, t: float, grid: _Grid, rng: np.random.Generator, contrast: str) -> np.ndarray:
    """Magnitude image (2h, W) of one slice of a shape phantom; t in [-1, 1] across the slab."""
    x, y = grid.x, grid.y
    edge = 0.5 * grid.pixel
    cx, cy, a, b, rot, body_int, body_tex = p.body
    body = _occ(_rotated_ellipse(x, y, cx, cy, a, b, rot), edge)
    img = body_int * (1 + body_tex * _bandpass_noise(rng, grid.shape, grid.spacing, 0.3, rel_bw=0.6)) * body
    for inc in p.inclusions:
        across = 1.0 - ((t - inc.tz) / inc.rz) ** 2  # sphere-like cross-section across the slab
        if across <= 0.05:
            continue
        f = math.sqrt(across)
        if inc.kind == "ellipse":
            d = _rotated_ellipse(x, y, inc.cx, inc.cy, f * inc.a, f * inc.b, inc.rot)
        else:
            d = _polygon(x, y, inc.cx, inc.cy, f * inc.a, f * inc.b, inc.rot, inc.angles)
        if inc.texture == "image":
            tex = _texture_fill(rng, grid.shape)
        else:
            tex = _bandpass_noise(rng, grid.shape, grid.spacing, max(inc.tex_wl, 2.5 * grid.pixel))
        occ = _occ(d, edge) * body  # inclusions stay inside the body
        img = img * (1 - occ) + inc.intensity * np.clip(1 + inc.tex_amp * tex, 0, None) * occ
    return img * TISSUE[contrast]["scale"]


# ----------------------------------------------------------------------------- coils
def coil_layout(coils: int, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """(azimuth, superior-inferior position, loop radius) of each element of a cylindrical knee array."""
    rows = 1 if coils <= 4 else 2 if coils <= 10 else 3
    per_row = [coils // rows + (1 if r < coils % rows else 0) for r in range(rows)]
    ys = np.linspace(-0.55, 0.55, rows) if rows > 1 else np.array([0.0])
    rot = rng.uniform(0, 2 * np.pi)
    out = []
    for r, n in enumerate(per_row):
        for j in range(n):
            phi = rot + 2 * np.pi * (j + 0.5 * (r % 2)) / n
            out.append((phi, float(ys[r] + rng.normal(0, 0.03)), float(rng.uniform(0.42, 0.5))))
    return out


def cylinder_loops(layout, radius: float = 1.15) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """Loops (centre, u, w, loop radius) of a `coil_layout` on a cylinder of `radius` around the leg."""
    loops = []
    for phi, yc, a in layout:
        centre = np.array([radius * np.cos(phi), yc, radius * np.sin(phi)])
        u = np.array([-np.sin(phi), 0.0, np.cos(phi)])
        w = np.array([0.0, 1.0, 0.0])
        loops.append((centre, u, w, a))
    return loops


def coil_fields(layout, z: float, grid: _Grid, radius: float = 1.15, segments: int = 24) -> np.ndarray:
    """Complex receive sensitivities (C, 2h, W) of a cylindrical `coil_layout` (see `loop_fields`)."""
    return loop_fields(cylinder_loops(layout, radius), z, grid, segments)


def loop_fields(loops, z: float, grid: _Grid, segments: int = 24) -> np.ndarray:
    """Complex receive sensitivities (C, 2h, W) of circular loops, Biot-Savart on a coarse grid.

    loops: (centre (3,), u (3,), w (3,), radius) each, in (x, y, z) normalised units; the loop is
    centre + radius (cos tau u + sin tau w). B0 runs along the leg (y), so the receive field is
    B1- = Bx - i Bz; computed on a coarse grid and spline-interpolated because the fields are smooth.
    """
    gy = np.linspace(grid.y[0, 0], grid.y[-1, 0], min(grid.shape[0], 48))
    gx = np.linspace(grid.x[0, 0], grid.x[0, -1], min(grid.shape[1], 40))
    P = np.stack(np.broadcast_arrays(gx[None, :], gy[:, None], np.full((1, 1), z)), -1)  # (gy, gx, 3) xyz
    tau = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    maps = []
    for centre, u, w, a in loops:
        pts = centre + a * (np.cos(tau)[:, None] * u + np.sin(tau)[:, None] * w)          # (S, 3)
        dl = a * (2 * np.pi / segments) * (-np.sin(tau)[:, None] * u + np.cos(tau)[:, None] * w)
        r = P[None] - pts[:, None, None, :]                                                  # (S, gy, gx, 3)
        B = np.sum(np.cross(dl[:, None, None, :], r) / (np.linalg.norm(r, axis=-1, keepdims=True) ** 3), 0)
        c = B[..., 0] - 1j * B[..., 2]
        fine = (RectBivariateSpline(gy, gx, c.real)(grid.y[:, 0], grid.x[0])
                + 1j * RectBivariateSpline(gy, gx, c.imag)(grid.y[:, 0], grid.x[0]))
        maps.append(fine)
    return np.stack(maps)


def normalise_maps(raw: np.ndarray) -> np.ndarray:
    """Scale the coil fields so that sum_c |S_c|^2 = 1 at every pixel."""
    return raw / np.sqrt(np.sum(np.abs(raw) ** 2, axis=0, keepdims=True))


def noise_mixing(layout, rng: np.random.Generator) -> np.ndarray:
    """A (C, C) matrix A: coil noise A @ white has covariance A A^H with neighbour coupling."""
    return coupled_noise_mixing(np.array([[np.cos(p), yc, np.sin(p)] for p, yc, _ in layout]), rng)


def coupled_noise_mixing(pos: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """noise_mixing for coil centres `pos` (C, 3): coupling decays with the distance between them."""
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    n = len(pos)
    coupling = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) / np.sqrt(2)
    coupling *= 0.3 * np.exp(-dist / 0.8)
    np.fill_diagonal(coupling, 0)
    gains = rng.uniform(0.85, 1.15, n)
    A = gains[:, None] * (np.eye(n) + coupling)
    return A / np.sqrt(np.mean(np.sum(np.abs(A) ** 2, 1)))  # mean noise variance 1 per coil


def smooth_phase(grid: _Grid, coeffs: np.ndarray, t: float) -> np.ndarray:
    y, x = grid.y / 2, grid.x  # y spans [-1, 1] over the oversampled rows
    c = coeffs[0] + t * coeffs[1]
    return (c[0] + c[1] * x + c[2] * y + c[3] * x * y + c[4] * (x * x - y * y) + c[5] * np.sin(2 * x + c[6]))


# ----------------------------------------------------------------------------- varied acquisitions
# Image noise relative to the mean foreground signal (image SNR 100 .. 12.5). Clinical 1.5 T / 3 T knee and
# brain scans run an image SNR of roughly 15-60 in tissue, and fastMRI's multi-coil knee data sit in that
# band; the range reaches a little beyond it on both sides. Same definition as training.outside.
NOISE_LEVELS = (0.01, 0.08)
COIL_COUNTS = (4, 6, 8, 10, 12, 16)
GEOMETRIES = ("cylinder", "plates")
CONTENTS = ("knee", "shapes")
SIZE_SPREAD = 1.0 / 6.0  # each recon side drawn from the even numbers within +-1/6 of --recon-size


@dataclasses.dataclass(frozen=True)
class Acquisition:
    """What one varied volume drew: noise, coils, matrix, orientation and content."""

    noise_level: float  # noise sd per k-space sample / mean clean SENSE image over its foreground
    coils: int
    geometry: str  # "cylinder" or "plates"
    content: str  # "knee" or "shapes"
    recon_size: tuple[int, int]
    transpose: bool
    flip_rows: bool
    flip_cols: bool

    @property
    def orientation(self) -> str:
        parts = [n for n, on in (("transpose", self.transpose), ("flip_rows", self.flip_rows),
                                 ("flip_cols", self.flip_cols)) if on]
        return "+".join(parts) or "none"

    @property
    def enc_w(self) -> int:
        return encoded_width(self.recon_size[1])


def _even_sizes(side: int) -> np.ndarray:
    lo = max(16, math.ceil(side * (1 - SIZE_SPREAD) / 2) * 2)
    hi = max(lo, math.floor(side * (1 + SIZE_SPREAD) / 2) * 2)
    return np.arange(lo, hi + 1, 2)


def draw_acquisition(recon_size: tuple[int, int], rng: np.random.Generator) -> Acquisition:
    """One volume's settings: noise level log-uniform over NOISE_LEVELS, the rest uniform over their sets.

    noise_level is the k-space noise sd per sample (orthonormal FFT, so per coil-image pixel) over the
    mean of the clean SENSE image on its foreground: `training.outside.noise_reference`, the definition
    the outside data use, so levels compare. 1 % .. 8 % is an image SNR of 100 .. 12.5: clinical 1.5 T /
    3 T knee and brain scans run roughly 15-60 in tissue and fastMRI's multi-coil knee data lie in that
    band; the range covers it with a margin on both sides. Sizes: each recon side an even number within
    +-SIZE_SPREAD of `recon_size`, uniform (so the mean pixel count is about recon_size's).
    """
    level = math.exp(rng.uniform(math.log(NOISE_LEVELS[0]), math.log(NOISE_LEVELS[1])))
    coils = int(rng.choice(COIL_COUNTS))
    geometry = GEOMETRIES[int(rng.integers(len(GEOMETRIES)))]
    content = CONTENTS[int(rng.integers(len(CONTENTS)))]
    size = (int(rng.choice(_even_sizes(recon_size[0]))), int(rng.choice(_even_sizes(recon_size[1]))))
    transpose, flip_rows, flip_cols = (bool(v) for v in rng.integers(0, 2, 3))
    return Acquisition(level, coils, geometry, content, size, transpose, flip_rows, flip_cols)


def varied_loops(coils: int, geometry: str, rng: np.random.Generator) -> list:
    """Loops (centre, u, w, radius) of a randomly placed array (see `loop_fields`).

    cylinder: 1-3 rings around the leg, random rotation, cylinder radius, ring spacing and loop size.
    plates: two flat arrays facing each other across the object (anterior/posterior, left/right or
    oblique), elements tiled in 1-2 rows with a little overlap.
    """
    u = rng.uniform
    loops = []
    y_axis = np.array([0.0, 1.0, 0.0])
    if geometry == "cylinder":
        rows = int(rng.integers(1, min(3, coils // 3) + 1))
        per_row = [coils // rows + (1 if r < coils % rows else 0) for r in range(rows)]
        spread = u(0.35, 0.7)
        ys = np.linspace(-spread, spread, rows) if rows > 1 else np.array([u(-0.2, 0.2)])
        radius, a, rot = u(1.25, 1.5), u(0.35, 0.55), u(0, 2 * np.pi)
        for r, n in enumerate(per_row):
            for j in range(n):
                phi = rot + 2 * np.pi * (j + 0.5 * (r % 2)) / n
                centre = np.array([radius * np.cos(phi), ys[r] + rng.normal(0, 0.03), radius * np.sin(phi)])
                loops.append((centre, np.array([-np.sin(phi), 0.0, np.cos(phi)]), y_axis, a))
        return loops
    if geometry != "plates":
        raise ConfigError(f"coil geometry {geometry!r} unknown, expected one of {GEOMETRIES}")
    phi0, dist, a = u(0, np.pi), u(1.3, 1.6), u(0.3, 0.45)
    for plate, n in enumerate((coils - coils // 2, coils // 2)):
        phi = phi0 + np.pi * plate
        normal = np.array([np.cos(phi), 0.0, np.sin(phi)])
        tangent = np.array([-np.sin(phi), 0.0, np.cos(phi)])
        rows = 1 if n <= 3 else 2
        cols = math.ceil(n / rows)
        pitch = 1.7 * a  # neighbouring loops overlap a little, as arrays do to decouple them
        for k in range(n):
            r, c = divmod(k, cols)
            in_row = cols if r < rows - 1 else n - cols * (rows - 1)
            off_u = (c - (in_row - 1) / 2) * pitch + rng.normal(0, 0.02)
            off_y = (r - (rows - 1) / 2) * pitch + rng.normal(0, 0.02)
            loops.append((dist * normal + off_u * tangent + off_y * y_axis, tangent, y_axis, a))
    return loops


# ----------------------------------------------------------------------------- header
def ismrmrd_header(recon_size, enc_w, slices, coils, contrast, pad) -> str:
    """A full ISMRMRD XML header of a Siemens-like Cartesian TSE knee scan (fastMRI's fields)."""
    h, w = recon_size
    left, right = pad
    center = enc_w // 2 - left
    maximum = right - left - 1
    fov_y = FOV_MM * enc_w / w
    te = 27 if contrast == "pd" else 33
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="{ISMRMRD_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <version>1</version>
  <subjectInformation><patientWeight_kg>70</patientWeight_kg></subjectInformation>
  <measurementInformation><patientPosition>FFS</patientPosition>
    <protocolName>{CONTRASTS[contrast]}</protocolName></measurementInformation>
  <acquisitionSystemInformation><systemVendor>SIEMENS</systemVendor><systemModel>dnirecon-synth</systemModel>
    <systemFieldStrength_T>2.89362</systemFieldStrength_T><relativeReceiverNoiseBandwidth>0.793</relativeReceiverNoiseBandwidth>
    <receiverChannels>{coils}</receiverChannels><institutionName>synthetic</institutionName></acquisitionSystemInformation>
  <experimentalConditions><H1resonanceFrequency_Hz>123251815</H1resonanceFrequency_Hz></experimentalConditions>
  <encoding>
    <encodedSpace><matrixSize><x>{2 * h}</x><y>{enc_w}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{2 * FOV_MM:.1f}</x><y>{fov_y:.2f}</y><z>{SLICE_MM:.1f}</z></fieldOfView_mm></encodedSpace>
    <reconSpace><matrixSize><x>{h}</x><y>{w}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{FOV_MM:.1f}</x><y>{FOV_MM:.1f}</y><z>{SLICE_MM:.1f}</z></fieldOfView_mm></reconSpace>
    <trajectory>cartesian</trajectory>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{maximum}</maximum><center>{center}</center></kspace_encoding_step_1>
      <kspace_encoding_step_2><minimum>0</minimum><maximum>0</maximum><center>0</center></kspace_encoding_step_2>
      <average><minimum>0</minimum><maximum>0</maximum><center>0</center></average>
      <slice><minimum>0</minimum><maximum>{slices - 1}</maximum><center>{slices // 2}</center></slice>
      <contrast><minimum>0</minimum><maximum>0</maximum><center>0</center></contrast>
      <phase><minimum>0</minimum><maximum>0</maximum><center>0</center></phase>
      <repetition><minimum>0</minimum><maximum>0</maximum><center>0</center></repetition>
      <set><minimum>0</minimum><maximum>0</maximum><center>0</center></set>
      <segment><minimum>0</minimum><maximum>0</maximum><center>0</center></segment>
    </encodingLimits>
    <parallelImaging><accelerationFactor><kspace_encoding_step_1>1</kspace_encoding_step_1>
      <kspace_encoding_step_2>1</kspace_encoding_step_2></accelerationFactor>
      <calibrationMode>other</calibrationMode></parallelImaging>
  </encoding>
  <sequenceParameters><TR>2750</TR><TE>{te}</TE><TI>100</TI><flipAngle_deg>140</flipAngle_deg>
    <sequence_type>TurboSpinEcho</sequence_type><echo_spacing>13.5</echo_spacing></sequenceParameters>
</ismrmrdHeader>
"""


# ----------------------------------------------------------------------------- volumes
@dataclasses.dataclass
class SynthVolume:
    kspace: np.ndarray            # complex64 (S, C, 2h, W)
    reconstruction_rss: np.ndarray    # float32 (S, h, w)
    reconstruction_sense: np.ndarray  # float32 (S, h, w)
    sensitivity_maps: np.ndarray  # complex64 (S, C, 2h, W)
    header: str
    attrs: dict
    noise_mixing: np.ndarray | None = None  # (C, C) A: coil noise noise_sd / sqrt 2 * A @ (white + i white)
    noise_sd: float = 0.0


def rss_and_sense(coil_images: np.ndarray, maps: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """RSS and |SENSE combination with `maps`| of coil images (C, 2h, W), centre-cropped to `size` (h, w)."""
    rss = center_crop(np.sqrt(np.sum(np.abs(coil_images) ** 2, 0)), size)
    sense = center_crop(np.abs(np.sum(np.conj(maps) * coil_images, 0)), size)
    return rss, sense


def _attrs(contrast: str, rss: np.ndarray, seed_seq: np.random.SeedSequence) -> dict:
    return dict(acquisition=CONTRASTS[contrast], max=float(rss.max()), norm=float(np.linalg.norm(rss)),
                patient_id=seed_seq.generate_state(2, np.uint64).tobytes().hex(), synthetic="dnirecon.synth/1")


def _slice_draws(rng: np.random.Generator, coils: int) -> tuple[np.ndarray, np.ndarray, float]:
    """A volume's per-coil phase (C, 1, 1), smooth-phase coefficients and signal amplitude, in this draw order."""
    coil_phase = np.exp(1j * rng.uniform(0, 2 * np.pi, coils))[:, None, None]
    phase_coeffs = rng.normal(0, [[0.6, 0.8, 0.6, 0.5, 0.5, 0.3, 3.0], [0.1, 0.15, 0.1, 0.1, 0.1, 0.05, 0.3]])
    return coil_phase, phase_coeffs, float(rng.uniform(1.5e-4, 3.5e-4))


def _zero_outside_band(k: np.ndarray, pad: tuple[int, int]) -> np.ndarray:
    """k-space with the phase columns outside the acquired band [pad[0], pad[1]) set to 0 (in place)."""
    k[..., :pad[0]] = 0
    k[..., pad[1]:] = 0
    return k


def synth_volume(cfg: SynthConfig, contrast: str, seed_seq: np.random.SeedSequence) -> SynthVolume:
    """Generate one volume (all slices) in memory; with cfg.vary its acquisition is drawn too."""
    if cfg.vary:
        return _varied_volume(cfg, contrast, seed_seq)
    rng = np.random.default_rng(seed_seq)
    h, w = cfg.recon_size
    enc_w = cfg.enc_w
    grid = _Grid(cfg.recon_size, enc_w)
    pad = acquired_columns(enc_w)
    p = KneeParams.sample(rng)
    layout = coil_layout(cfg.coils, rng)
    mix = noise_mixing(layout, rng)
    coil_phase, phase_coeffs, amplitude = _slice_draws(rng, cfg.coils)
    noise_sd = TISSUE[contrast]["noise"] * cfg.noise_scale * amplitude
    ts = np.linspace(-1, 1, cfg.slices) * p.coverage if cfg.slices > 1 else np.zeros(1)
    shape = (cfg.slices, cfg.coils, 2 * h, enc_w)
    kspace = np.zeros(shape, np.complex64)
    maps = np.zeros(shape, np.complex64)
    rss = np.zeros((cfg.slices, h, w), np.float32)
    sense = np.zeros((cfg.slices, h, w), np.float32)
    for i, t in enumerate(ts):
        mag = knee_slice(p, float(t), grid, rng, contrast) * amplitude
        image = mag * np.exp(1j * smooth_phase(grid, phase_coeffs, float(t)))
        S = normalise_maps(coil_fields(layout, 0.35 * float(t), grid) * coil_phase)
        k = fft2c((S * image).astype(np.complex64))
        white = (rng.standard_normal((cfg.coils, k[0].size)) + 1j * rng.standard_normal((cfg.coils, k[0].size)))
        k = _zero_outside_band(k + (noise_sd / np.sqrt(2) * (mix @ white)).reshape(k.shape), pad)
        kspace[i] = k
        maps[i] = S
        rss[i], sense[i] = rss_and_sense(ifft2c(k.astype(np.complex64)), S, (h, w))
    return SynthVolume(kspace, rss, sense, maps,
                       ismrmrd_header(cfg.recon_size, enc_w, cfg.slices, cfg.coils, contrast, pad),
                       _attrs(contrast, rss, seed_seq), noise_mixing=mix, noise_sd=float(noise_sd))


def _varied_volume(cfg: SynthConfig, contrast: str, seed_seq: np.random.SeedSequence) -> SynthVolume:
    """A volume whose acquisition (`draw_acquisition`) is drawn from the seed; noise sd set from the clean image."""
    from training.outside import noise_reference

    rng = np.random.default_rng(seed_seq)
    acq = draw_acquisition(cfg.recon_size, rng)
    noise_rng = np.random.default_rng(rng.integers(2**63))  # the noise draw never shifts the content draws
    h, w = acq.recon_size
    enc_w = acq.enc_w
    grid = _Grid(acq.recon_size, enc_w)
    content_grid = grid.oriented(acq.transpose, acq.flip_rows, acq.flip_cols)
    pad = acquired_columns(enc_w)
    params = KneeParams.sample(rng) if acq.content == "knee" else ShapeParams.sample(rng)
    draw_slice = knee_slice if acq.content == "knee" else shapes_slice
    loops = varied_loops(acq.coils, acq.geometry, rng)
    mix = coupled_noise_mixing(np.array([c for c, *_ in loops]), rng)
    coil_phase, phase_coeffs, amplitude = _slice_draws(rng, acq.coils)
    ts = np.linspace(-1, 1, cfg.slices) * params.coverage if cfg.slices > 1 else np.zeros(1)
    shape = (cfg.slices, acq.coils, 2 * h, enc_w)
    kspace = np.zeros(shape, np.complex64)
    maps = np.zeros(shape, np.complex64)
    clean_sense = np.zeros((cfg.slices, h, w), np.float32)
    for i, t in enumerate(ts):
        mag = draw_slice(params, float(t), content_grid, rng, contrast) * amplitude
        image = mag * np.exp(1j * smooth_phase(content_grid, phase_coeffs, float(t)))
        S = normalise_maps(loop_fields(loops, 0.35 * float(t), grid) * coil_phase)
        k = _zero_outside_band(fft2c((S * image).astype(np.complex64)), pad)
        kspace[i], maps[i] = k, S
        clean_sense[i] = rss_and_sense(ifft2c(k), S, (h, w))[1]
    level = acq.noise_level * cfg.noise_scale
    noise_sd = level * noise_reference(clean_sense)
    rss = np.zeros((cfg.slices, h, w), np.float32)
    for i in range(cfg.slices):
        n = kspace[i, 0].size
        white = noise_rng.standard_normal((acq.coils, n)) + 1j * noise_rng.standard_normal((acq.coils, n))
        kspace[i] = _zero_outside_band(kspace[i] + (noise_sd / np.sqrt(2) * (mix @ white)).reshape(kspace[i].shape), pad)
        rss[i] = rss_and_sense(ifft2c(kspace[i]), maps[i], (h, w))[0]
    # the SENSE target is the noise-free image through the acquired band (as training.outside's): a model
    # trained on it learns to remove the noise, not to reproduce it
    sense = clean_sense
    attrs = _attrs(contrast, rss, seed_seq) | dict(
        noise_level=float(level), noise_sd=float(noise_sd), coils=acq.coils, coil_geometry=acq.geometry,
        content=acq.content, recon_size=np.array(acq.recon_size, np.int64), orientation=acq.orientation)
    return SynthVolume(kspace, rss, sense, maps,
                       ismrmrd_header(acq.recon_size, enc_w, cfg.slices, acq.coils, contrast, pad), attrs,
                       noise_mixing=mix, noise_sd=float(noise_sd))


NOISE_MEASUREMENT_SAMPLES = 4096  # per channel: the covariance to within about 2 % (1 / sqrt(N))


def noise_measurement(vol: SynthVolume, rng: np.random.Generator,
                      samples: int = NOISE_MEASUREMENT_SAMPLES) -> np.ndarray:
    """A noise-only draw (C, samples) complex64 of the volume's coil noise process (its `noise_mixing`
    correlated noise at its noise_sd): what a scanner's noise scan before the image lines records."""
    coils = vol.noise_mixing.shape[0]
    white = rng.standard_normal((coils, samples)) + 1j * rng.standard_normal((coils, samples))
    return (vol.noise_sd / np.sqrt(2) * (vol.noise_mixing @ white)).astype(np.complex64)


def write_volume(vol: SynthVolume, path: Path, noise: np.ndarray | None = None) -> Path:
    """Write a volume under a temporary name in the same directory, then rename: never a partial file.
    noise (C, N) complex64, when given, is written as the `noise` dataset (docs/data.md)."""
    with replaced_on_success(path) as tmp:
        with h5py.File(tmp, "w") as f:
            chunks = (1,) + vol.kspace.shape[1:]
            f.create_dataset("kspace", data=vol.kspace, chunks=chunks)
            f.create_dataset("reconstruction_rss", data=vol.reconstruction_rss)
            f.create_dataset("reconstruction_sense", data=vol.reconstruction_sense)
            f.create_dataset("sensitivity_maps", data=vol.sensitivity_maps, chunks=chunks)
            f.create_dataset("ismrmrd_header", data=np.bytes_(vol.header.encode("utf-8")))
            if noise is not None:
                f.create_dataset("noise", data=noise)
            for k, v in vol.attrs.items():
                f.attrs[k] = v
    return Path(path)


def synthesize(out_dir: str | os.PathLike, cfg: SynthConfig, progress: bool = False,
               with_noise_measurement: bool = False) -> list[Path]:
    """Write cfg.volumes_per_contrast volumes of each contrast as `synth_<contrast>_<NNN>.h5`; with
    with_noise_measurement (and noise), each also holds a `noise` dataset drawn from a stream of its own,
    so the other datasets are the same either way."""
    cfg = cfg.validated()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the directory ({exc})") from None
    jobs = [(c, i) for c in cfg.contrasts for i in range(cfg.volumes_per_contrast)]
    if progress:
        from tqdm import tqdm
        jobs = tqdm(jobs, desc="synth", unit="vol")
    written = []
    for ci, (contrast, i) in enumerate(jobs):
        t0 = time.perf_counter()
        seq = np.random.SeedSequence([cfg.seed, list(CONTRASTS).index(contrast), i])
        vol = synth_volume(cfg, contrast, seq)
        noise = None
        if with_noise_measurement and vol.noise_sd > 0:
            noise = noise_measurement(vol, np.random.default_rng(seq.spawn(1)[0]))
        written.append(write_volume(vol, out / f"synth_{contrast}_{i:03d}.h5", noise))
        log.debug("wrote %s in %.2f s", written[-1], time.perf_counter() - t0)
    return written


def figure(out_png: str | os.PathLike, recon_size=(320, 320), coils: int = 8, slices: int = 8,
           seed: int = 0, show_slices=(2, 4, 6)) -> Path:
    """Save a grid of SENSE targets (rows: contrasts, columns: slices) to check the phantom by eye."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = SynthConfig(volumes_per_contrast=1, slices=slices, coils=coils, recon_size=tuple(recon_size),
                      seed=seed).validated()
    show = [i for i in show_slices if i < slices] or [slices // 2]
    fig, axes = plt.subplots(len(cfg.contrasts), len(show) + 1,
                             figsize=(3.2 * (len(show) + 1), 3.3 * len(cfg.contrasts)), squeeze=False)
    for r, contrast in enumerate(cfg.contrasts):
        vol = synth_volume(cfg, contrast, np.random.SeedSequence([seed, r, 0]))
        vmax = np.percentile(vol.reconstruction_sense, 99.5)
        for c, i in enumerate(show):
            ax = axes[r, c]
            ax.imshow(vol.reconstruction_sense[i], cmap="gray", vmin=0, vmax=vmax)
            ax.set_title(f"{CONTRASTS[contrast]} slice {i}", fontsize=9)
            ax.axis("off")
        ax = axes[r, -1]
        ax.imshow(vol.reconstruction_rss[show[len(show) // 2]], cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(f"{CONTRASTS[contrast]} RSS slice {show[len(show) // 2]}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"dnirecon synthetic knee: {coils} coils, recon {recon_size[0]}x{recon_size[1]} (SENSE target)",
                 fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, out_png)


def figure_varied(out_png: str | os.PathLike, recon_size=(96, 96), seed: int = 0, volumes: int = 12) -> Path:
    """Save the central SENSE target of `volumes` varied volumes (`--vary`), titled with what each drew."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = SynthConfig(volumes_per_contrast=1, slices=3, recon_size=tuple(recon_size), seed=seed,
                      vary=True).validated()
    cols = min(volumes, 6)
    rows = -(-volumes // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= volumes:
            continue
        contrast = cfg.contrasts[i % len(cfg.contrasts)]
        vol = synth_volume(cfg, contrast, np.random.SeedSequence([seed, list(CONTRASTS).index(contrast), i]))
        a = vol.attrs
        ax.imshow(vol.reconstruction_sense[1], cmap="gray", vmin=0,
                  vmax=np.percentile(vol.reconstruction_sense[1], 99.5))
        ax.set_title(f"{a['content']}, {a['coils']} coils {a['coil_geometry']}\n"
                     f"noise {100 * a['noise_level']:.1f} %, {a['orientation']}", fontsize=7)
    fig.suptitle("dnirecon synthetic volumes with --vary (SENSE target, central slice)", fontsize=10)
    fig.tight_layout()
    return _save_figure(fig, out_png)


def _save_figure(fig, out_png: str | os.PathLike) -> Path:
    """Write a matplotlib figure under a temporary name, then rename (never a partial PNG)."""
    import matplotlib.pyplot as plt

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out
