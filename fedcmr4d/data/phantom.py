"""Analytic beating-heart phantom with exact labels, rendered on any voxel grid.

Why analytic: the model is a set of implicit shapes in WORLD millimetres (a heart frame placed in
the world by a rigid ``heart_to_world`` matrix), so the same subject can be sampled on the
cohort grid (1 x 1 x 10 mm) or on an oblique, anisotropic, non-square source grid, and every
voxel's label is exact there. The LV cavity is a half-ellipsoid whose long axis runs from the
base plane (towards -z in the heart frame) to the apex (+z), so short-axis cross-sections shrink
towards the apex; its volume is ``2/3 pi a b c`` at every phase, which gives the analytic EF.

Contraction is smooth and periodic: a raised-cosine from ED (phase 0) to ES (``es_phase`` of
the cycle, 0.30-0.40) and back. In-plane radii scale by ``k(f)``, the long axis by ``kz(f)``,
and the myocardium keeps its cross-sectional area (the wall thickens at ES). The base plane is
held fixed and the apex rises instead of the base descending: with 10 mm slices a moving base
would drop a whole basal slice between ED and ES and bias the label-measured EF by 5-10 points,
while the apical sections it would lose are small.

Typical use::

    subject = make_phantom_subject("p000", seed=0)  # 64 x 64 x 6 x 16, values in [0, 1]
    cohort = write_phantom_cohort("out/phantom", n_subjects=8, seed=1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedcmr4d.data.cohort import (
    COHORT_SPACING_MM,
    LABEL_LV,
    LABEL_MYO,
    LABEL_RV,
    Cohort,
    Subject,
    cohort_affine,
    open_cohort,
    write_cohort_index,
    write_subject,
)

VENDORS = ("A", "B", "C")

# Per-vendor tissue contrast (bSSFP-like: bright blood, dark myocardium) and noise level.
_VENDOR_CONTRAST: dict[str, dict[str, float]] = {
    "A": {"blood": 0.85, "myo": 0.25, "fat": 0.75, "tissue": 0.40, "lung": 0.06, "noise": 0.015},
    "B": {"blood": 0.70, "myo": 0.30, "fat": 0.88, "tissue": 0.46, "lung": 0.09, "noise": 0.025},
    "C": {"blood": 0.92, "myo": 0.17, "fat": 0.60, "tissue": 0.31, "lung": 0.04, "noise": 0.020},
}


@dataclass
class PhantomParams:
    """Everything that defines one phantom subject; lengths in mm, angles in radians.

    In-plane quantities are in the heart frame (x, y); ``z`` runs base -> apex.
    """

    seed: int
    vendor: str
    ef: float  # LV ejection fraction in (0, 1)
    rv_ef: float
    es_phase: float  # ES as a fraction of the cycle after ED
    ed_phase: float  # ED as a fraction of the cycle (0: frame 0)
    cycle_ms: float
    lv_center: tuple[float, float]
    rotation: float  # in-plane rotation of the heart
    lv_radii: tuple[float, float]  # ED cavity semi-axes (a, b)
    wall: float  # ED myocardial thickness
    base_z: float  # base plane (z of the cavity's widest section), fixed over the cycle
    apex_z: float  # endocardial apex at ED; it rises towards the base in systole
    long_axis_shortening: float  # 1 - kz at ES
    rv_offset: float  # LV centre -> RV centre distance
    rv_radii: tuple[float, float]  # (radial, tangential) semi-axes of the RV ellipse
    rv_length: float  # RV extent from the base along z
    torso_center: tuple[float, float]
    torso_radii: tuple[float, float]
    torso_rotation: float
    fat_thickness: float
    contrast: dict[str, float]
    bias: list[float]  # smooth multiplicative bias field coefficients
    heart_to_world: list[list[float]] = field(default_factory=lambda: np.eye(4).tolist())

    @property
    def group(self) -> str:
        return "phantom-low-ef" if self.ef < 0.5 else "phantom-normal"

    def to_meta(self) -> dict[str, Any]:
        """The parameters as JSON-ready values (stored in ``meta.json`` under ``phantom``)."""
        out = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}


def sample_params(
    seed: int,
    *,
    fov_mm: float = 64.0,
    slab_mm: tuple[float, float] = (-5.0, 55.0),
    vendor: str | None = None,
) -> PhantomParams:
    """Draw one subject's parameters, deterministically from ``seed``.

    Args:
        seed: the subject's seed; every random choice (including noise) derives from it.
        fov_mm: in-plane field of view the anatomy is sized for (the torso nearly fills it).
        slab_mm: (top, bottom) z extent in mm of the short-axis stack the heart must fit in.
        vendor: "A", "B" or "C"; drawn from the seed when None.
    """
    rng = np.random.default_rng([seed, 20_240_611])
    if vendor is None:
        vendor = VENDORS[int(rng.integers(len(VENDORS)))]
    if vendor not in _VENDOR_CONTRAST:
        raise ValueError(f"vendor must be one of {VENDORS}, got {vendor!r}")
    u = rng.uniform
    f = fov_mm
    a = f * u(0.10, 0.135)
    top, bottom = slab_mm
    length = bottom - top
    contrast = {k: v * u(0.93, 1.07) for k, v in _VENDOR_CONTRAST[vendor].items()}
    return PhantomParams(
        seed=int(seed),
        vendor=vendor,
        ef=float(u(0.35, 0.70)),
        rv_ef=float(u(0.35, 0.65)),
        es_phase=float(u(0.30, 0.40)),
        ed_phase=0.0,
        cycle_ms=float(60_000.0 / u(50.0, 90.0)),
        lv_center=(float(f * u(-0.07, 0.07)), float(f * u(-0.07, 0.07))),
        rotation=float(u(-0.6, 0.6)),
        lv_radii=(float(a), float(a * u(0.82, 1.0))),
        wall=float(f * u(0.035, 0.05)),
        base_z=float(top + length * u(0.0, 0.03)),
        apex_z=float(bottom - length * u(0.04, 0.12)),
        long_axis_shortening=float(u(0.06, 0.14)),
        rv_offset=float(a * u(0.9, 1.1)),
        rv_radii=(float(a * u(1.05, 1.3)), float(a * u(1.6, 2.0))),
        rv_length=float(length * u(0.6, 0.8)),
        torso_center=(float(f * u(-0.03, 0.03)), float(f * u(-0.03, 0.03))),
        torso_radii=(float(f * u(0.43, 0.48)), float(f * u(0.33, 0.40))),
        torso_rotation=float(u(-0.15, 0.15)),
        fat_thickness=float(f * u(0.025, 0.045)),
        contrast=contrast,
        bias=[float(x) for x in u(-0.12, 0.12, size=6)],
    )


def _contraction(phase: np.ndarray | float, es_phase: float) -> np.ndarray:
    """Smooth periodic contraction: 0 at ED (phase 0), 1 at ES, C1-continuous over the cycle."""
    p = np.mod(phase, 1.0)
    rise = 0.5 * (1.0 - np.cos(np.pi * p / es_phase))
    fall = 0.5 * (1.0 + np.cos(np.pi * (p - es_phase) / (1.0 - es_phase)))
    return np.where(p < es_phase, rise, fall)


def _scales(params: PhantomParams, phase: float) -> tuple[float, float, float]:
    """(in-plane LV scale k, long-axis scale kz, RV in-plane scale) at a cycle phase."""
    f = float(_contraction(phase, params.es_phase))
    kz_es = 1.0 - params.long_axis_shortening
    k_es = np.sqrt((1.0 - params.ef) / kz_es)
    rv_es = np.sqrt(1.0 - params.rv_ef)
    return 1.0 - (1.0 - k_es) * f, 1.0 - (1.0 - kz_es) * f, 1.0 - (1.0 - rv_es) * f


def lv_volume_ml(params: PhantomParams, phase: float) -> float:
    """Analytic LV cavity volume (half-ellipsoid, 2/3 pi a b c) in ml at a cycle phase."""
    k, kz, _ = _scales(params, phase)
    a, b = params.lv_radii
    c = (params.apex_z - params.base_z) * kz
    return float(2.0 / 3.0 * np.pi * a * k * b * k * c / 1000.0)


def frame_phases(params: PhantomParams, frames: int) -> np.ndarray:
    """(T,) cycle phase of each frame, 0 at ED."""
    return np.mod(np.arange(frames) / frames - params.ed_phase, 1.0)


def ed_es_frames(params: PhantomParams, frames: int) -> tuple[int, int]:
    """0-based ED and ES frame indices on a grid of ``frames`` frames over one cycle."""
    ed = int(round(params.ed_phase * frames)) % frames
    es = int(round((params.ed_phase + params.es_phase) * frames)) % frames
    return ed, es


def _soft(q: np.ndarray, radius: float, width: float) -> np.ndarray:
    """Anti-aliased inside-mask from a normalised quadratic form q (1 on the surface)."""
    distance = (np.sqrt(q) - 1.0) * radius  # approximate signed distance in mm
    return np.clip(0.5 - distance / width, 0.0, 1.0)


def _heart_coords(
    params: PhantomParams, affine: np.ndarray, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel centres of the grid in the heart frame: three (X, Y, Z) arrays (x, y rotated, z)."""
    ijk = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij"))
    world = np.einsum("ab,bxyz->axyz", affine[:3, :3], ijk) + affine[:3, 3, None, None, None]
    world_to_heart = np.linalg.inv(np.asarray(params.heart_to_world, dtype=np.float64))
    pts = np.einsum("ab,bxyz->axyz", world_to_heart[:3, :3], world)
    pts += world_to_heart[:3, 3, None, None, None]
    return pts[0], pts[1], pts[2]


def _rotate(
    x: np.ndarray, y: np.ndarray, center: tuple[float, float], angle: float
) -> tuple[np.ndarray, np.ndarray]:
    dx, dy = x - center[0], y - center[1]
    c, s = np.cos(angle), np.sin(angle)
    return c * dx + s * dy, -s * dx + c * dy


def _static_anatomy(
    params: PhantomParams, x: np.ndarray, y: np.ndarray, z: np.ndarray, width: float
) -> np.ndarray:
    """Torso, fat, lungs and descending aorta: the parts that do not beat. (X, Y, Z) float."""
    c = params.contrast
    tx, ty = _rotate(x, y, params.torso_center, params.torso_rotation)
    ra, rb = params.torso_radii
    torso = _soft((tx / ra) ** 2 + (ty / rb) ** 2, min(ra, rb), width)
    fa, fb = ra - params.fat_thickness, rb - params.fat_thickness
    inner = _soft((tx / fa) ** 2 + (ty / fb) ** 2, min(fa, fb), width)
    image = torso * (c["fat"] * (1.0 - inner) + c["tissue"] * inner)
    hx, hy = _rotate(x, y, params.lv_center, params.rotation)
    a = params.lv_radii[0]
    for side in (-1.0, 1.0):  # lungs left and right of the heart, posterior
        lx, ly = hx + side * 2.6 * a, hy - 0.6 * a
        lung = _soft((lx / (1.3 * a)) ** 2 + (ly / (2.0 * a)) ** 2, 1.3 * a, width) * inner
        image = image * (1.0 - lung) + c["lung"] * lung
    ax, ay = hx + 0.3 * a, hy - 2.2 * a
    aorta = _soft((ax**2 + ay**2) / (0.35 * a) ** 2, 0.35 * a, width) * inner
    return image * (1.0 - aorta) + c["blood"] * aorta


def _bias_field(params: PhantomParams, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Smooth multiplicative field, about 1 +/- 0.3, low order in world-scale coordinates."""
    s = max(params.torso_radii)
    u, v, w = x / s, y / s, z / (4.0 * s)
    b = params.bias
    return 1.0 + b[0] * u + b[1] * v + b[2] * u * v + b[3] * (u**2 - v**2) + b[4] * w + b[5] * u * w


@dataclass
class _HeartVoxels:
    """Flattened heart-frame coordinates, static image and bias of the voxels near the heart."""

    hx: np.ndarray
    hy: np.ndarray
    z: np.ndarray
    static: np.ndarray
    bias: np.ndarray


def _render_heart(
    params: PhantomParams, v: _HeartVoxels, phase: float, width: float
) -> tuple[np.ndarray, np.ndarray]:
    """Image (biased, no noise) and exact labels of the voxels near the heart at one phase."""
    c = params.contrast
    k, kz, k_rv = _scales(params, phase)
    a0, b0 = params.lv_radii
    a, b = a0 * k, b0 * k
    c_len = (params.apex_z - params.base_z) * kz
    dz = v.z - params.base_z
    below = dz >= 0
    cav_q = (v.hx / a) ** 2 + (v.hy / b) ** 2 + (dz / c_len) ** 2
    ring_a = np.sqrt(a**2 + (a0 + params.wall) ** 2 - a0**2)
    ring_b = np.sqrt(b**2 + (b0 + params.wall) ** 2 - b0**2)
    epi_q = (v.hx / ring_a) ** 2 + (v.hy / ring_b) ** 2 + (dz / (c_len + params.wall)) ** 2
    rv_q = (
        ((v.hx + params.rv_offset) / (params.rv_radii[0] * k_rv)) ** 2  # RV at -x of the LV
        + (v.hy / (params.rv_radii[1] * k_rv)) ** 2
        + (dz / (params.rv_length * kz)) ** 2
    )
    la_q = (v.hx / a0) ** 2 + (v.hy / b0) ** 2 + ((dz + 0.35 * c_len) / (0.35 * c_len)) ** 2
    labels = np.zeros(v.hx.shape, dtype=np.uint8)
    epi_l = below & (epi_q <= 1)
    labels[below & (rv_q <= 1) & ~epi_l] = LABEL_RV
    labels[epi_l] = LABEL_MYO
    labels[below & (cav_q <= 1)] = LABEL_LV
    zsoft = np.clip(0.5 + dz / width, 0.0, 1.0)
    epi = _soft(epi_q, min(ring_a, ring_b), width) * zsoft
    cav = _soft(cav_q, min(a, b), width) * zsoft
    rv = _soft(rv_q, params.rv_radii[0] * k_rv, width) * zsoft * (1.0 - epi)
    la = _soft(la_q, min(a0, b0), width) * (1.0 - zsoft)
    img = v.static * (1.0 - epi) + c["myo"] * epi
    img = img * (1.0 - cav) + c["blood"] * cav
    img = img * (1.0 - rv) + c["blood"] * rv
    img = img * (1.0 - la) + c["blood"] * la
    return (img * v.bias).astype(np.float32), labels


def render_phantom(
    params: PhantomParams,
    affine: np.ndarray,
    shape: tuple[int, int, int],
    frames: int,
    *,
    noise: bool = True,
    edge_mm: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the phantom at the voxel centres ``affine @ ijk`` of a (X, Y, Z) grid.

    Args:
        params: the subject.
        affine: (4, 4) voxel -> world mm; any orientation and spacing.
        shape: (X, Y, Z) grid size.
        frames: frames over one cardiac cycle.
        noise: add Rician noise (seeded by ``params.seed``); off gives the clean image.
        edge_mm: width of the anti-aliased tissue edges; default the in-plane voxel size.

    Returns:
        cine (X, Y, Z, T) float32 in [0, 1] and labels (X, Y, Z, T) uint8 (0 bg, 1 LV, 2 myo,
        3 RV), exact at every voxel centre of every frame.
    """
    affine = np.asarray(affine, dtype=np.float64)
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    if min(shape) < 1 or frames < 1:
        raise ValueError(f"shape {shape} and frames {frames} must be positive")
    width = edge_mm if edge_mm is not None else float(np.linalg.norm(affine[:3, 0]))
    x, y, z = _heart_coords(params, affine, shape)
    static = _static_anatomy(params, x, y, z, width)
    hx, hy = _rotate(x, y, params.lv_center, params.rotation)
    base_image = (static * _bias_field(params, x, y, z)).astype(np.float32).ravel()
    # The beating parts are evaluated only within a cylinder around the LV axis.
    reach = 2.0 * width + max(
        params.rv_offset + params.rv_radii[0],
        params.rv_radii[1],
        max(params.lv_radii) + params.wall,
    )
    near = np.flatnonzero((hx**2 + hy**2 <= reach**2).ravel())
    heart = _HeartVoxels(
        hx.ravel()[near],
        hy.ravel()[near],
        z.ravel()[near],
        static.ravel()[near],
        _bias_field(params, x, y, z).ravel()[near],
    )
    cine = np.empty((*shape, frames), dtype=np.float32)
    labels = np.zeros((*shape, frames), dtype=np.uint8)
    rng = np.random.default_rng([params.seed, 7])
    n_voxels = int(np.prod(shape))
    for t, phase in enumerate(frame_phases(params, frames)):
        img = base_image.copy()
        heart_image, heart_labels = _render_heart(params, heart, float(phase), width)
        img[near] = heart_image
        lab = np.zeros(n_voxels, dtype=np.uint8)
        lab[near] = heart_labels
        labels[..., t] = lab.reshape(shape)
        if noise:
            sigma = np.float32(params.contrast["noise"])
            real = img + sigma * rng.standard_normal(n_voxels, dtype=np.float32)
            imag = sigma * rng.standard_normal(n_voxels, dtype=np.float32)
            img = np.sqrt(real**2 + imag**2)
        cine[..., t] = np.clip(img, 0.0, 1.0).reshape(shape)
    return cine, labels


def make_phantom_subject(
    subject_id: str,
    seed: int,
    *,
    image_size: int = 64,
    slices: int = 6,
    frames: int = 16,
    vendor: str | None = None,
) -> Subject:
    """One phantom subject already in cohort geometry (1 x 1 mm, 10 mm slices, [0, 1]).

    Anatomy is sized to the field of view (``image_size`` mm), so small test images still show
    the whole heart. Returns a :class:`Subject` with cine and labels (X, Y, Z, T) and ``meta``
    holding ``ed_frame``, ``es_frame``, ``ef_true``, ``vendor``, ``group``, ``source``, ``seed``.
    """
    dz = COHORT_SPACING_MM[2]
    params = sample_params(
        seed, fov_mm=float(image_size), slab_mm=(-dz / 2, dz * slices - dz / 2), vendor=vendor
    )
    affine = cohort_affine(image_size)
    cine, labels = render_phantom(params, affine, (image_size, image_size, slices), frames)
    return Subject(
        subject_id=subject_id,
        cine=cine,
        affine=affine,
        frame_ms=params.cycle_ms / frames,
        labels=labels,
        meta=phantom_meta(params, frames),
    )


def phantom_meta(params: PhantomParams, frames: int) -> dict[str, Any]:
    """``meta.json`` content for a phantom rendered with ``frames`` frames."""
    ed, es = ed_es_frames(params, frames)
    return {
        "ed_frame": ed,
        "es_frame": es,
        "ef_true": round(params.ef, 6),
        "vendor": params.vendor,
        "group": params.group,
        "source": "phantom",
        "seed": params.seed,
        "phantom": params.to_meta(),
    }


def write_phantom_cohort(
    out_dir: str | Path,
    n_subjects: int,
    seed: int,
    *,
    image_size: int = 64,
    slices: int = 6,
    frames: int = 16,
    vendor: str | None = None,
    id_prefix: str = "phantom",
    on_subject: Callable[[str], None] | None = None,
) -> Cohort:
    """Write ``n_subjects`` phantom subjects (seeds derived from ``seed``) and the index.

    Subject ``i`` gets id ``f"{id_prefix}{i:03d}"`` and seed ``seed * 100_003 + i``, so two
    cohorts with different ``seed`` share no subject. ``on_subject(subject_id)`` is called after
    each subject is written (progress bars).
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    out = Path(out_dir)
    ids = []
    for i in range(n_subjects):
        subject_id = f"{id_prefix}{i:03d}"
        subject = make_phantom_subject(
            subject_id,
            seed * 100_003 + i,
            image_size=image_size,
            slices=slices,
            frames=frames,
            vendor=vendor,
        )
        write_subject(out, subject)
        ids.append(subject_id)
        if on_subject is not None:
            on_subject(subject_id)
    write_cohort_index(
        out,
        ids,
        frames=frames,
        provenance={"source": "phantom", "seed": seed, "image_size": image_size},
    )
    return open_cohort(out)
