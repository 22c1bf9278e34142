"""Vectorised rendering of radiograph-like chest images with known findings.

Coordinates are fractions of the image side: u to the right, v down, both in
[0, 1]; pixel (row i, column j) has its centre at ((j + 0.5) / S, (i + 0.5) / S).
The patient faces the viewer: patient right is image left. Shapes are
described by approximate signed distances (positive inside, in image-side
units), which gives soft edges (`_soft`) and masks alike. Intensities are
float32 in [0, 1]: air dark, soft tissue grey, bone and metal bright.

A frontal exam is drawn in layers: body soft tissue, abdomen below the
diaphragm, mediastinum and heart, aerated lungs with vascular markings, the
findings that change lung density (effusion, consolidation, nodule,
pneumothorax), bones (ribs, clavicles, spine, scapulae), support devices,
lead markers, then noise. Detection boxes are the bounds of the drawn masks, so
they always match the picture.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from PIL import Image

from data_pipeline.schema.boxes import Box
from data_pipeline.phantom.findings import Acquisition, Finding, LabelledRegion

__all__ = [
    "PatientAnatomy",
    "Rendering",
    "sample_anatomy",
    "render_frontal",
    "render_lateral",
    "region_label",
]

_RIGHT, _LEFT = "right", "left"
# Image-x direction of each patient side (patient right is image left).
_SIGN = {_RIGHT: -1.0, _LEFT: 1.0}
_AIR = 0.03


@dataclasses.dataclass(frozen=True)
class PatientAnatomy:
    """Body habitus of one patient, shared by all of their exams.

    center_x: thorax midline (fraction of width). half_width: inner thoracic
    half-width W at the costophrenic angles. apex_y: top of the lung apices.
    dome_y: top of the right hemidiaphragm dome at full inspiration (the left
    one sits 0.02 lower). body_margin: chest wall thickness beyond the ribs.
    heart_ctr: cardiothoracic ratio of this patient's normal heart on a PA view.
    rib_phase: vertical phase of the rib pattern, as a fraction of a rib step.
    """

    center_x: float
    half_width: float
    apex_y: float
    dome_y: float
    body_margin: float
    heart_ctr: float
    rib_phase: float


def sample_anatomy(rng: np.random.Generator) -> PatientAnatomy:
    return PatientAnatomy(
        center_x=float(rng.uniform(0.485, 0.515)),
        half_width=float(rng.uniform(0.33, 0.37)),
        apex_y=float(rng.uniform(0.13, 0.17)),
        dome_y=float(rng.uniform(0.7, 0.75)),
        body_margin=float(rng.uniform(0.05, 0.08)),
        heart_ctr=float(rng.uniform(0.39, 0.45)),
        rib_phase=float(rng.uniform(0.0, 1.0)),
    )


@dataclasses.dataclass(frozen=True)
class Rendering:
    """image: float32[S, S] in [0, 1]; regions: drawn findings with their boxes."""

    image: np.ndarray
    regions: tuple[LabelledRegion, ...]


def region_label(finding: Finding, side: str = "", device: str = "") -> str:
    """Label of a detection box, e.g. "right pleural effusion"."""
    if device:
        return device
    if finding.kind == "cardiomegaly":
        return "enlarged cardiac silhouette"
    if finding.kind in ("consolidation", "nodule"):
        return f"{side} {finding.zone} zone {finding.kind}"
    return f"{side} {finding.kind.replace('_', ' ')}"


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) pixel-centre coordinates, float32[S, S] each, read-only."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    u, v = np.meshgrid(axis, axis)
    u.flags.writeable = False
    v.flags.writeable = False
    return u, v


def _soft(depth: np.ndarray, width: float) -> np.ndarray:
    """0 outside, 1 inside, a linear ramp over `width` across the boundary."""
    return np.clip(depth / width + 0.5, 0.0, 1.0)


def _ellipse_depth(u, v, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (positive inside)."""
    r = np.sqrt(((u - cx) / a) ** 2 + ((v - cy) / b) ** 2)
    return (1.0 - r) * min(a, b)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Unit-variance-ish smooth noise: a cells x cells normal grid, bilinearly upsampled."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))


def _segment_distance(u, v, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Distance from each point to the segment p0-p1."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * dx + (v - p0[1]) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    ex = u - (p0[0] + t * dx)
    ey = v - (p0[1] + t * dy)
    return np.sqrt(ex * ex + ey * ey)


_Window = tuple[slice, slice]


def _window(size: int, u0: float, u1: float, v0: float, v1: float) -> _Window:
    """(rows, cols) slices of the pixels in [u0, u1] x [v0, v1], clamped to the image."""
    def span(low: float, high: float) -> slice:
        start = min(max(int(np.floor(low * size)), 0), size)
        return slice(start, min(max(int(np.ceil(high * size)), start), size))

    return span(v0, v1), span(u0, u1)


def _mask_box(mask: np.ndarray, label: str, size: int, window: _Window | None = None) -> Box:
    """Bounds (0-100 scale) of a non-empty boolean mask, given on `window` of
    an image of `size` pixels (the whole image when None)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError(f"phantom: the {label} was not drawn (empty mask)")
    row0 = window[0].start if window else 0
    col0 = window[1].start if window else 0
    scale = 100.0 / size
    return Box(
        label,
        round(float(col0 + cols[0]) * scale, 1),
        round(float(row0 + rows[0]) * scale, 1),
        round(float(col0 + cols[-1] + 1) * scale, 1),
        round(float(row0 + rows[-1] + 1) * scale, 1),
    )


@dataclasses.dataclass(frozen=True)
class _Frame:
    """Exam geometry: the anatomy after positioning, projection and inspiration."""

    cx: float  # thorax centre (ribs, body, lateral lung walls)
    mx: float  # midline structures: trachea, mediastinum, heart, spine
    half_width: float
    apex_y: float
    dome: dict  # side -> top of that hemidiaphragm dome
    cp_drop: float  # costophrenic angle depth below the dome top
    hilum_y: float
    heart: tuple[float, float, float, float, float]  # (x, y, right a, left a, b)
    clavicle_y: float
    clavicle_rise: float
    view: str
    rib_phase: float

    def xs(self, u, side: str):
        """Distance from the thorax centre toward `side` (negative beyond the midline)."""
        return _SIGN[side] * (u - self.cx)

    def dome_curve(self, u, side: str):
        """Height of the hemidiaphragm of `side` at image x `u`."""
        t = (self.xs(u, side) - 0.42 * self.half_width) / (0.62 * self.half_width)
        return self.dome[side] + self.cp_drop * t * t

    def zone_band(self, zone: str) -> tuple[float, float]:
        """(top, bottom) v of a lung zone: thirds of apex..dome."""
        top = self.apex_y + 0.02
        bottom = min(self.dome.values())
        step = (bottom - top) / 3.0
        index = ("upper", "middle", "lower").index(zone)
        return top + index * step, top + (index + 1) * step


def _frame(anatomy: PatientAnatomy, acquisition: Acquisition, heart_ctr: float | None, rng) -> _Frame:
    """Place the anatomy for one exam, with a small random positioning jitter.

    heart_ctr: the cardiothoracic ratio to draw (cardiomegaly), or None for
    this patient's normal heart (magnified by 8% on an AP view)."""
    jitter_x, jitter_y = (float(x) for x in rng.normal(0.0, 0.006, size=2))
    scale = 1.0 + float(rng.normal(0.0, 0.01))
    width = anatomy.half_width * scale
    cx = anatomy.center_x + jitter_x
    shift = {"none": 0.0, _RIGHT: -0.045, _LEFT: 0.045}[acquisition.rotation]
    mx = cx + shift
    apex_y = anatomy.apex_y + jitter_y
    dome_right = anatomy.dome_y + jitter_y - (0.11 if acquisition.low_inspiration else 0.0)
    dome = {_RIGHT: dome_right, _LEFT: dome_right + 0.02}
    ap = acquisition.view == "AP"
    if heart_ctr is None:
        heart_ctr = anatomy.heart_ctr * (1.08 if ap else 1.0)
    heart_width = heart_ctr * 2.0 * width
    heart_b = 0.13 + 0.2 * (heart_ctr - 0.4)
    base = dome[_LEFT] + 0.03
    heart = (mx, base - 0.7 * heart_b, 0.34 * heart_width, 0.66 * heart_width, heart_b)
    hilum_y = apex_y + 0.38 * (dome_right - apex_y)
    return _Frame(
        cx=cx,
        mx=mx,
        half_width=width,
        apex_y=apex_y,
        dome=dome,
        cp_drop=0.06,
        hilum_y=hilum_y,
        heart=heart,
        clavicle_y=apex_y + (0.0 if ap else 0.06),
        clavicle_rise=0.015 if ap else 0.05,
        view=acquisition.view,
        rib_phase=anatomy.rib_phase,
    )


def _heart_depth(fr: _Frame, u, v) -> np.ndarray:
    """The cardiac silhouette: a half-ellipse to each side of the midline, the
    left ventricle reaching twice as far as the right atrium; its widest
    extent (right a + left a) is the cardiothoracic ratio times 2W."""
    x, y, a_right, a_left, b = fr.heart
    inverse_a = 1.0 / a_right + (1.0 / a_left - 1.0 / a_right) * np.heaviside(u - x, 1.0)
    dx = (u - x) * inverse_a
    dy = (v - y) * (1.0 / b)
    return (1.0 - np.sqrt(dx * dx + dy * dy)) * min(a_right, b)


def _lung_depth(fr: _Frame, side: str, u, v, heart: np.ndarray | None = None) -> np.ndarray:
    """Signed distance to the aerated lung of `side`: an upright half-ellipse
    cut by the hemidiaphragm dome, the mediastinum and the heart (`heart`: the
    heart depth at (u, v) when already computed)."""
    w = fr.half_width
    xs = fr.xs(u, side)
    cp = fr.dome[side] + fr.cp_drop
    dx = (xs - 0.38 * w) * (1.0 / (0.64 * w))
    dy = (v - cp) * (1.0 / (cp - fr.apex_y))
    outer = (1.0 - np.sqrt(dx * dx + dy * dy)) * (0.64 * w)
    depth = np.minimum(outer, fr.dome_curve(u, side) - v)
    depth = np.minimum(depth, _SIGN[side] * (u - fr.mx) - 0.045)
    if heart is None:
        heart = _heart_depth(fr, u, v)
    return np.minimum(depth, -heart)


def _scaled_lung_depth(fr: _Frame, side: str, u, v, factor: float) -> np.ndarray:
    """Lung of `side` shrunk toward its hilum by `factor` (a collapsed lung)."""
    hx = fr.mx + _SIGN[side] * 0.1
    hy = fr.hilum_y
    return _lung_depth(fr, side, hx + (u - hx) / factor, hy + (v - hy) / factor) * factor


def _body(fr: _Frame, u, v, margin: float) -> np.ndarray:
    """Soft tissue density: neck, shoulders, chest wall, thicker centrally."""
    full = fr.half_width + margin
    neck = 0.09
    ramp = np.clip((v - 0.02) / 0.12, 0.0, 1.0)
    half = neck + (full + 0.03 - neck) * ramp * ramp * (3.0 - 2.0 * ramp)
    depth = half - np.abs(u - fr.cx)
    inside = _soft(depth, 0.012)
    thickness = np.clip(depth / np.maximum(half, 1e-3), 0.0, 1.0)
    return inside * (0.26 + 0.16 * np.sqrt(thickness))


def _abdomen(fr: _Frame, u, v) -> np.ndarray:
    """1 below the diaphragm (liver, spleen), soft edge at the domes."""
    t = (np.abs(u - fr.cx) - 0.42 * fr.half_width) * (1.0 / (0.62 * fr.half_width))
    step = fr.dome[_LEFT] - fr.dome[_RIGHT]
    dome = fr.dome[_RIGHT] + step * np.heaviside(u - fr.cx, 1.0) + fr.cp_drop * t * t
    return _soft(v - dome, 0.01)


def _mediastinum(fr: _Frame, u, v, heart: np.ndarray) -> np.ndarray:
    """Density (0..1) of the mediastinum, heart (`heart`: its depth) and aortic knob."""
    upper = _soft(0.05 - np.abs(u - fr.mx), 0.01) * _soft(v - fr.apex_y + 0.06, 0.04)
    heart = _soft(heart, 0.008)
    knob = _soft(_ellipse_depth(u, v, fr.mx + 0.055, fr.hilum_y - 0.07, 0.03, 0.028), 0.01)
    trachea = _soft(0.012 - np.abs(u - fr.mx), 0.006) * _soft(fr.hilum_y - 0.03 - v, 0.02)
    return np.maximum(np.maximum(upper, heart), knob) - 0.5 * trachea


def _upsample(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def _lung_texture(fr: _Frame, size: int, rng: np.random.Generator) -> np.ndarray:
    """Aerated lung intensity, float32[S, S]: dark, brighter toward the hila
    (vessels), with smooth mottled markings. Computed at a quarter of the
    resolution (it is smooth) and upsampled."""
    low = max(16, size // 4)
    u, v = _grid(low)
    markings = 0.6 * _smooth_noise(rng, low, 14) + 0.4 * _smooth_noise(rng, low, 42)
    hilar = np.zeros_like(u)
    for side in (_RIGHT, _LEFT):
        dx = u - (fr.mx + _SIGN[side] * 0.09)
        dy = (v - fr.hilum_y) * 0.8
        hilar = np.maximum(hilar, np.exp(np.sqrt(dx * dx + dy * dy) * (-1.0 / 0.11)))
    texture = 0.13 + 0.15 * hilar + 0.045 * markings * (0.6 + hilar)
    return _upsample(texture.astype(np.float32), size)


def _ribs(fr: _Frame, u, v) -> np.ndarray:
    """Posterior (bright) and anterior (faint) rib bands over the thorax."""
    w = fr.half_width
    t = np.abs(u - fr.cx) / w
    step = 0.068
    posterior = v + 0.06 * t - 0.2 * t * t
    bands = np.cos(2.0 * np.pi * ((posterior - fr.apex_y) / step + fr.rib_phase))
    ribs = np.sqrt(np.clip((bands - 0.1) * (1.0 / 0.9), 0.0, 1.0))
    anterior = v + 0.1 * t + 0.02
    faint = np.clip(np.cos(2.0 * np.pi * ((anterior - fr.apex_y) / 0.085 + fr.rib_phase)), 0.0, 1.0)
    extent = _soft(1.06 - t, 0.05) * _soft(v - fr.apex_y + 0.03, 0.02)
    extent = extent * _soft(max(fr.dome.values()) + 0.1 - v, 0.04)
    return extent * (ribs + 0.35 * faint * _soft(0.95 - t, 0.1))


def _add_clavicles(fr: _Frame, u, v, image: np.ndarray) -> None:
    """Two bright bony bands running up and out from the sternal notch (in place)."""
    size = image.shape[0]
    for side in (_RIGHT, _LEFT):
        s = _SIGN[side]
        p0 = (fr.cx + s * 0.04, fr.clavicle_y)
        p1 = (fr.cx + s * 0.27, fr.clavicle_y - fr.clavicle_rise)
        win = _window(size, min(p0[0], p1[0]) - 0.03, max(p0[0], p1[0]) + 0.03, p1[1] - 0.03, p0[1] + 0.03)
        band = _soft(0.012 - _segment_distance(u[win], v[win], p0, p1), 0.006)
        image[win] += 0.2 * band


def _spine(fr: _Frame, u, v) -> np.ndarray:
    column = _soft(0.032 - np.abs(u - fr.mx), 0.008)
    discs = 0.75 + 0.25 * np.cos(v * (2.0 * np.pi / 0.045))
    return column * discs


def _add_scapulae(fr: _Frame, u, v, image: np.ndarray) -> None:
    """PA: scapulae rotated out of the lung fields; AP: projected over them (in place)."""
    size = image.shape[0]
    w = fr.half_width
    ap = fr.view == "AP"
    a, b = (0.11, 0.15) if ap else (0.05, 0.12)
    cy = fr.apex_y + 0.19
    for side in (_RIGHT, _LEFT):
        cx = fr.cx + _SIGN[side] * (0.8 if ap else 1.1) * w
        win = _window(size, cx - a - 0.02, cx + a + 0.02, cy - b - 0.02, cy + b + 0.02)
        depth = _ellipse_depth(u[win], v[win], cx, cy, a, b)
        rim = _soft(0.008 - np.abs(depth), 0.006)
        image[win] += 0.07 * (0.6 * _soft(depth, 0.01) + rim)


# 5x7 bitmaps of the lead marker letters.
_GLYPHS = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
}


def _stamp_text(image: np.ndarray, text: str, right: bool) -> None:
    """Burn a bright lead marker into a top corner (in place)."""
    size = image.shape[0]
    cell = max(1, round(size / 64))
    letters = [np.array([[c == "#" for c in row] for row in _GLYPHS[ch]]) for ch in text]
    gap = np.zeros((7, 1), dtype=bool)
    bitmap = np.concatenate([x for letter in letters for x in (letter, gap)][:-1], axis=1)
    glyph = np.kron(bitmap, np.ones((cell, cell), dtype=bool))
    margin = 2 * cell
    top = margin
    left = size - margin - glyph.shape[1] if right else margin
    window = image[top : top + glyph.shape[0], left : left + glyph.shape[1]]
    window[glyph] = 0.95


def _effusion_height(extent: float) -> float:
    """Height of the fluid at the lateral chest wall (image-side units)."""
    return 0.04 + 0.3 * extent


def _draw_effusion(fr: _Frame, f: Finding, u, v, lungs, image, regions) -> None:
    """Basal opacity with a meniscus rising toward the lateral chest wall."""
    size = image.shape[0]
    height = _effusion_height(f.extent)
    w = fr.half_width
    for side in f.sides:
        bottom = fr.dome[side] + fr.cp_drop
        win = _window(size, 0.0, 1.0, bottom - height - 0.05, bottom + 0.03)
        uw, vw = u[win], v[win]
        q = np.clip((fr.xs(uw, side) - 0.25 * w) * (1.0 / (0.8 * w)), 0.0, 1.0)
        surface = bottom - height * (0.35 + 0.65 * q * np.sqrt(q))
        fluid = lungs[side][win] * _soft(vw - surface, 0.012)
        shade = np.clip((vw - surface) * (1.0 / 0.05), 0.0, 1.0)
        image[win] = image[win] * (1.0 - fluid) + fluid * (0.44 + 0.1 * shade)
        regions.append(LabelledRegion(f.kind, side, _mask_box(fluid > 0.5, region_label(f, side), size, win)))


def _zone_centre(fr: _Frame, f: Finding) -> tuple[float, float, float]:
    """(u, v) of the centre of a zone lesion and the half-height of its zone band."""
    top, bottom = fr.zone_band(f.zone)
    half = (bottom - top) / 2.0
    v = (top + bottom) / 2.0 + 0.25 * half * f.place[1]
    lateral = {"upper": 0.42, "middle": 0.6, "lower": 0.64}[f.zone]
    if f.side == _LEFT and f.zone != "upper":
        lateral += 0.08  # clear of the heart border
    u = fr.cx + _SIGN[f.side] * (lateral + 0.06 * f.place[0]) * fr.half_width
    return u, v, half


def _draw_consolidation(fr: _Frame, f: Finding, u, v, lungs, image, regions) -> None:
    """A fluffy opacity of three overlapping blobs, confined to the lung."""
    size = image.shape[0]
    cu, cv, half = _zone_centre(fr, f)
    ry = min(0.5 * half, 0.03 + 0.035 * f.extent)
    rx = 1.3 * ry
    win = _window(size, cu - 2.5 * rx, cu + 2.5 * rx, cv - 2.5 * ry, cv + 2.5 * ry)
    uw, vw = u[win], v[win]
    field = np.zeros_like(uw)
    for du, dv, scale in ((0.0, 0.0, 1.0), (0.5, 0.3, 0.7), (-0.45, -0.35, 0.65)):
        gx = (uw - cu - du * rx * (1.0 + 0.3 * f.place[0])) * (1.0 / (rx * scale))
        gy = (vw - cv - dv * ry) * (1.0 / (ry * scale))
        field = np.maximum(field, np.exp(-(gx * gx + gy * gy)))
    opacity = np.clip(2.2 * field - 0.5, 0.0, 1.0) * lungs[f.side][win]
    image[win] = image[win] * (1.0 - 0.92 * opacity) + (0.92 * 0.48) * opacity
    regions.append(LabelledRegion(f.kind, f.side, _mask_box(opacity > 0.5, region_label(f, f.side), size, win)))


def _draw_nodule(fr: _Frame, f: Finding, u, v, lungs, image, regions) -> None:
    """A dense, well-defined round opacity."""
    size = image.shape[0]
    cu, cv, _ = _zone_centre(fr, f)
    radius = 0.012 + 0.04 * f.extent
    win = _window(size, cu - radius - 0.01, cu + radius + 0.01, cv - radius - 0.01, cv + radius + 0.01)
    dx, dy = u[win] - cu, v[win] - cv
    disc = _soft(radius - np.sqrt(dx * dx + dy * dy), 0.006)
    image[win] += 0.3 * disc
    regions.append(LabelledRegion(f.kind, f.side, _mask_box(disc > 0.5, region_label(f, f.side), size, win)))


def _draw_pneumothorax(fr: _Frame, f: Finding, u, v, lungs, image, regions) -> None:
    """Air without lung markings outside a collapsed lung, and its pleural line."""
    size = image.shape[0]
    collapsed = _scaled_lung_depth(fr, f.side, u, v, 1.0 - f.extent)
    lung = lungs[f.side]
    air = lung * _soft(-collapsed, 0.004)
    line = lung * _soft(0.0035 - np.abs(collapsed + 0.002), 0.003)
    image[:] = image * (1.0 - air) + air * (_AIR + 0.02) + 0.22 * line
    regions.append(LabelledRegion(f.kind, f.side, _mask_box(air > 0.5, region_label(f, f.side), size)))


def _draw_devices(fr: _Frame, f: Finding, u, v, image, regions) -> None:
    """Endotracheal tube in the trachea; central venous catheter from the
    subclavian vein of `f.side` into the superior vena cava."""
    size = image.shape[0]
    if "endotracheal tube" in f.devices:
        tip = fr.hilum_y - 0.08
        win = _window(size, fr.mx - 0.02, fr.mx + 0.02, 0.0, tip + 0.02)
        uw, vw = u[win], v[win]
        tube = _soft(0.008 - np.abs(uw - fr.mx), 0.004) * _soft(tip - vw, 0.006) * _soft(vw - 0.005, 0.004)
        image[win] += 0.35 * tube
        regions.append(LabelledRegion(f.kind, "", _mask_box(tube > 0.5, "endotracheal tube", size, win)))
    if "central venous catheter" in f.devices:
        s = _SIGN[f.side]
        points = (
            (fr.cx + s * 0.3, fr.clavicle_y - fr.clavicle_rise + 0.035),
            (fr.cx + s * 0.08, fr.clavicle_y + 0.04),
            (fr.mx - 0.035, fr.hilum_y - 0.05),
            (fr.mx - 0.04, fr.hilum_y + 0.06),
        )
        us, vs = [p[0] for p in points], [p[1] for p in points]
        win = _window(size, min(us) - 0.02, max(us) + 0.02, min(vs) - 0.02, max(vs) + 0.02)
        uw, vw = u[win], v[win]
        distance = np.min([_segment_distance(uw, vw, a, b) for a, b in zip(points[:-1], points[1:])], axis=0)
        line = _soft(0.0045 - distance, 0.004)
        image[win] += 0.4 * line
        regions.append(LabelledRegion(f.kind, f.side, _mask_box(line > 0.5, "central venous catheter", size, win)))


def render_frontal(
    anatomy: PatientAnatomy,
    acquisition: Acquisition,
    findings: tuple[Finding, ...],
    size: int,
    rng: np.random.Generator,
    noise_std: float = 0.012,
) -> Rendering:
    """Draw one frontal (PA or AP) radiograph of `size` x `size` pixels.

    The same `rng` state and anatomy/acquisition give the same picture with
    and without findings (findings consume no random numbers), so a finding's
    effect can be isolated by rendering twice.
    """
    u, v = _grid(size)
    by_kind = {f.kind: f for f in findings}
    cardiomegaly = by_kind.get("cardiomegaly")
    fr = _frame(anatomy, acquisition, cardiomegaly.extent if cardiomegaly else None, rng)
    texture = _lung_texture(fr, size, rng)
    noise = rng.standard_normal((size, size), dtype=np.float32) * np.float32(noise_std)
    noise += 0.012 * _smooth_noise(rng, size, 6)

    heart = _heart_depth(fr, u, v)
    abdomen = _abdomen(fr, u, v)
    image = _AIR + _body(fr, u, v, anatomy.body_margin)
    image += 0.14 * abdomen * (image > 0.1)
    image += 0.2 * _mediastinum(fr, u, v, heart) * (1.0 - 0.7 * abdomen)
    lungs = {side: _soft(_lung_depth(fr, side, u, v, heart), 0.006) for side in (_RIGHT, _LEFT)}
    aerated = np.maximum(lungs[_RIGHT], lungs[_LEFT])
    image = image * (1.0 - aerated) + aerated * texture

    regions: list[LabelledRegion] = []
    if cardiomegaly is not None:
        visible = (heart > 0) & (v < fr.dome[_LEFT] + 0.02)
        regions.append(LabelledRegion("cardiomegaly", "", _mask_box(visible, region_label(cardiomegaly), size)))
    for kind, draw in (
        ("pleural_effusion", _draw_effusion),
        ("consolidation", _draw_consolidation),
        ("nodule", _draw_nodule),
        ("pneumothorax", _draw_pneumothorax),
    ):
        if kind in by_kind:
            draw(fr, by_kind[kind], u, v, lungs, image, regions)

    image += 0.1 * _ribs(fr, u, v) * (0.4 + 0.6 * aerated) + 0.1 * _spine(fr, u, v)
    _add_clavicles(fr, u, v, image)
    _add_scapulae(fr, u, v, image)
    if "support_devices" in by_kind:
        _draw_devices(fr, by_kind["support_devices"], u, v, image, regions)
    image = np.clip(image + noise, 0.0, 1.0)
    _stamp_text(image, "L", right=True)
    if acquisition.view == "AP":
        _stamp_text(image, "AP", right=False)
    return Rendering(image, tuple(regions))


def render_lateral(
    anatomy: PatientAnatomy,
    acquisition: Acquisition,
    findings: tuple[Finding, ...],
    size: int,
    rng: np.random.Generator,
    noise_std: float = 0.012,
) -> np.ndarray:
    """Draw a left lateral view (patient anterior to the image left): float32[S, S].

    Shows the heart anteriorly on the diaphragm (enlarged with cardiomegaly),
    an effusion as fluid filling the posterior costophrenic sulcus,
    consolidation and nodules at their zone height, the thoracic spine
    posteriorly and the sternum anteriorly.
    """
    u, v = _grid(size)
    by_kind = {f.kind: f for f in findings}
    shift_x, shift_y = (float(x) for x in rng.normal(0.0, 0.006, size=2))
    u = u - shift_x
    top = anatomy.apex_y + shift_y
    dome = anatomy.dome_y + shift_y - (0.11 if acquisition.low_inspiration else 0.0)
    ctr = by_kind["cardiomegaly"].extent if "cardiomegaly" in by_kind else anatomy.heart_ctr

    body = _soft(_ellipse_depth(u, v, 0.5, 0.62, 0.4, 0.66), 0.012)
    sulcus = dome - 0.02 + 0.09 * ((u - 0.42) / 0.38) ** 2
    image = _AIR + body * (0.3 + 0.12 * _soft(v - sulcus - 0.01, 0.02))
    lung = _soft(_ellipse_depth(u, v, 0.5, dome + 0.07, 0.3, dome + 0.07 - top), 0.01)
    lung = lung * _soft(sulcus - v, 0.01)
    texture = 0.12 + 0.03 * _smooth_noise(rng, size, 12)
    image = image * (1.0 - lung) + lung * texture
    heart_a = 0.12 + 0.45 * (ctr - 0.4)
    heart = _soft(_ellipse_depth(u, v, 0.2 + heart_a, dome + 0.02, heart_a, 0.15), 0.01)
    image = image + 0.24 * heart * _soft(sulcus + 0.01 - v, 0.02)
    if "pleural_effusion" in by_kind:
        height = _effusion_height(by_kind["pleural_effusion"].extent)
        surface = dome + 0.07 - height * np.clip((u - 0.3) / 0.45, 0.15, 1.0)
        fluid = lung * _soft(v - surface, 0.012)
        image = image * (1.0 - fluid) + 0.42 * fluid
    for kind in ("consolidation", "nodule"):
        if kind in by_kind:
            image = image + _lateral_lesion(by_kind[kind], u, v, top, dome) * lung
    column = _soft(0.04 - np.abs(u - 0.76 - 0.04 * (v - 0.5)), 0.008)
    spine = column * (0.7 + 0.3 * np.cos(2 * np.pi * v / 0.05)) * _soft(v - 0.04, 0.02)
    sternum = _soft(0.009 - np.abs(u - 0.16 - 0.06 * v), 0.005) * _soft(v - top, 0.02)
    image = image + 0.22 * spine + 0.18 * sternum * _soft(dome - v, 0.02)
    noise = rng.standard_normal((size, size), dtype=np.float32) * np.float32(noise_std)
    image = np.clip(image + noise, 0.0, 1.0)
    _stamp_text(image, "L", right=True)
    return image


def _lateral_lesion(f: Finding, u, v, top: float, dome: float) -> np.ndarray:
    """Added density of a consolidation or nodule on the lateral view."""
    step = (dome - top - 0.02) / 3.0
    cv = top + 0.02 + step * (("upper", "middle", "lower").index(f.zone) + 0.5)
    cu = 0.56 + 0.05 * f.place[0]
    if f.kind == "nodule":
        return 0.3 * _soft(0.012 + 0.04 * f.extent - np.sqrt((u - cu) ** 2 + (v - cv) ** 2), 0.006)
    r = 0.03 + 0.035 * f.extent
    return 0.28 * np.exp(-(((u - cu) / (1.4 * r)) ** 2 + ((v - cv) / r) ** 2))
