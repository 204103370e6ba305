"""MRI renderer: a small brain-like T1 volume written as NIfTI (``.nii.gz``) with nibabel.

The volume is drawn in world (RAS, mm) coordinates through a deliberately non-RAS affine (LAS or LPS,
off-grid spacing and size), so readers must reorient and resample. Ventricles grow and the brain
shrinks with the neuro state.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from .state import RenderContext

MRI_SHAPE = (40, 48, 40)
MRI_SPACING_MM = (4.5, 4.5, 4.5)
#: axis signs of the voxel-to-world affine per orientation code
ORIENTATIONS = {"LAS": (-1.0, 1.0, 1.0), "LPS": (-1.0, -1.0, 1.0)}


def mri_affine(orientation: str) -> np.ndarray:
    """Voxel-to-world affine with the volume centred on the world origin."""
    signs = np.array(ORIENTATIONS[orientation])
    spacing = np.array(MRI_SPACING_MM) * signs
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = -spacing * (np.array(MRI_SHAPE) - 1) / 2.0
    return aff


def orientation_for(index: int) -> str:
    return "LPS" if index % 3 == 2 else "LAS"


def ventricle_scale(neuro: float) -> float:
    """Linear size factor of the lateral ventricles for a neuro state."""
    return float(np.clip(1.0 + 0.28 * neuro, 0.6, 2.3))


def _world_coords(aff: np.ndarray) -> np.ndarray:
    idx = np.indices(MRI_SHAPE, dtype=np.float32).reshape(3, -1)
    return (aff[:3, :3].astype(np.float32) @ idx + aff[:3, 3:4].astype(np.float32)).reshape(3, *MRI_SHAPE)


def _ellipsoid(xyz: np.ndarray, centre: tuple[float, float, float], radii: tuple[float, float, float]) -> np.ndarray:
    """Normalised radius (``< 1`` inside) of an axis-aligned ellipsoid."""
    return np.sqrt(sum(((xyz[k] - centre[k]) / radii[k]) ** 2 for k in range(3)))


def mri_volume(ctx: RenderContext, aff: np.ndarray) -> np.ndarray:
    """T1-like intensities: bright scalp/skull shell, CSF gap, grey/white matter, dark ventricles."""
    rng = ctx.rng
    neuro = ctx.s("neuro")
    xyz = _world_coords(aff)
    head = (66.0, 80.0, 68.0)
    r_head = _ellipsoid(xyz, (0.0, -4.0, 0.0), head)
    atrophy = float(np.clip(1.0 - 0.035 * neuro, 0.85, 1.04))
    r_brain = _ellipsoid(xyz, (0.0, -4.0, 2.0), tuple(0.82 * atrophy * h for h in head))
    vol = np.zeros(MRI_SHAPE, np.float32)
    vol[r_head < 1.0] = 900.0  # scalp and skull
    vol[r_head < 0.9] = 180.0  # CSF between skull and brain
    brain = r_brain < 1.0
    vol[brain] = 520.0 + 180.0 * np.clip(1.0 - r_brain[brain], 0.0, 1.0) * 1.6  # cortex -> white matter
    v = ventricle_scale(neuro) * rng.uniform(0.95, 1.05)
    for side in (-1.0, 1.0):
        vent = _ellipsoid(xyz, (side * 9.0 * min(v, 1.6), -2.0, 8.0), (6.0 * v, 22.0 * v, 9.0 * v))
        vol[(vent < 1.0) & brain] = 160.0
    vol *= rng.uniform(0.9, 1.1)  # scanner gain
    vol += rng.normal(0.0, 25.0, MRI_SHAPE).astype(np.float32)
    return np.abs(vol)


def render_mri(ctx: RenderContext) -> str:
    rel, path = ctx.target("nii.gz")
    aff = mri_affine(orientation_for(ctx.subject.index))
    img = nib.Nifti1Image(np.round(mri_volume(ctx, aff)).astype(np.int16), aff)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(aff, code=1)
    img.header.set_sform(aff, code=1)
    nib.save(img, str(path))
    return rel
