"""MRI: NIfTI file or DICOM series -> ``[1, D, H, W]`` float32.

NaN or Inf voxels (what resampling tools write outside the source's field of view, e.g.
``nibabel.processing.resample_from_to(..., cval=np.nan)``) become background: they are set to 0 before
normalisation, so they enter no intensity statistic and stay 0, the value of the zero background and of the
padding. Their fraction of the source's voxels is reported (``meta["nonfinite_fraction"]``); a scan with more
than ``spec.max_nonfinite_fraction`` of them is refused, and so is one without a non-zero finite voxel.

Voxels are z-scored over the non-zero (foreground) voxels, reoriented to ``spec.orientation``
(RAS: D = right, H = anterior, W = superior), resampled to ``spec.spacing_mm`` (bilinear) and
centre-cropped/zero-padded to ``spec.size`` (MONAI transforms).

NIfTI is loaded by MONAI's ``LoadImage``. A DICOM series is read with pydicom here (slices sorted by
position along the slice normal, affine from the geometry tags, one series chosen by UID) because
MONAI's ``PydicomReader`` orders slices by InstanceNumber and stacks every DICOM file of the folder,
mixing series. On a well-formed series both agree (tested).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.readers import file_suffix
from datamodules.schema import DataError, VolumeSpec

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_mri(
    path: Path, spec: VolumeSpec, options: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, list[str], dict[str, float]]:
    """Read a NIfTI file or DICOM series (directory, or one of its ``.dcm`` files) -> (``[1, D, H, W]``, notes
    for the build report, meta: ``{"nonfinite_fraction": f}`` when some voxels were NaN or Inf, else empty)."""
    from monai.transforms import Compose, NormalizeIntensity, Orientation, ResizeWithPadOrCrop, Spacing

    is_dicom = path.is_dir() or file_suffix(path) == ".dcm"
    img = _load_dicom_series(path) if is_dicom else _load_nifti(path)
    where = str(path)
    if img.ndim != 4 or img.shape[0] != 1:
        raise DataError(
            f"MRI is not a single 3-D volume (loaded shape {tuple(img.shape)})",
            where=where,
            hint="give one 3-D volume per row; split 4-D series (fMRI, DWI) and pick a volume",
        )
    notes, meta = _nonfinite_to_background(img, spec, where)
    if not (img != 0).any():
        reason = "MRI is all zeros" + (" apart from its NaN or Inf voxels" if meta else "")
        raise DataError(reason, where=where, hint="check the export; the volume holds no signal")
    pipeline = Compose(
        [
            # z-score on the native voxels: after resampling, which voxels are "non-zero" at the edge of a
            # zero background would depend on float rounding of the affine (e.g. NIfTI's float32 sform)
            NormalizeIntensity(nonzero=True),
            Orientation(axcodes=spec.orientation, labels=None),
            Spacing(pixdim=spec.spacing_mm, mode="bilinear"),
            ResizeWithPadOrCrop(spatial_size=spec.size),
        ]
    )
    out = pipeline(img)
    return np.ascontiguousarray(torch.as_tensor(out).numpy(), dtype=np.float32), notes, meta


def _nonfinite_to_background(img: torch.Tensor, spec: VolumeSpec, where: str) -> tuple[list[str], dict[str, float]]:
    """Set the NaN / Inf voxels of ``img`` to 0 (in place); refuse the scan above ``spec.max_nonfinite_fraction``.

    0 is the background: ``NormalizeIntensity(nonzero=True)`` computes mean and std over the non-zero voxels only
    and leaves zeros at 0. Returns the build-report notes and the meta (empty when every voxel is finite).
    """
    bad = ~torch.isfinite(img)
    n, total = int(bad.sum()), bad.numel()
    if n == 0:
        return [], {}
    if n == total:
        raise DataError(
            "MRI voxels are all NaN or Inf",
            where=where,
            hint="check the export or the resampling step; the volume holds no signal",
        )
    fraction = n / total
    limit = spec.max_nonfinite_fraction
    if fraction > limit:
        enough = min(1.0, math.ceil(fraction * 100) / 100)  # the smallest 2-digit limit that keeps this scan
        raise DataError(
            f"{n} of the MRI's {total} voxels are NaN or Inf (fraction {fraction:.4f}), above the limit "
            f"max_nonfinite_fraction={limit}",
            where=where,
            hint="such voxels usually lie outside the field of view after resampling; if the scan is still usable, "
            f"raise the limit (omnimodal-shard --spec mri.max_nonfinite_fraction={enough}, or "
            f"specs: {{mri: {{max_nonfinite_fraction: {enough}}}}} in the build config), else resample it onto a "
            "grid that its field of view covers",
        )
    img.masked_fill_(bad, 0.0)
    note = f"{fraction:.1%} of the MRI's voxels were NaN or Inf (outside the field of view?) and became background"
    return [note], {"nonfinite_fraction": round(fraction, 4)}


def _load_nifti(path: Path) -> torch.Tensor:
    """NIfTI -> MetaTensor ``[C, X, Y, Z]`` (RAS affine); rejects anything but one 3-D volume."""
    import nibabel as nib

    shape = nib.load(str(path)).shape  # header only
    if len(shape) < 3 or any(d != 1 for d in shape[3:]):
        raise DataError(
            f"MRI must be a 3-D volume, this NIfTI has shape {tuple(shape)}",
            where=str(path),
            hint="give one 3-D volume per row; split 4-D series (fMRI, DWI) and pick a volume",
        )
    return _nifti_loader()(str(path))


@functools.lru_cache(maxsize=1)
def _nifti_loader() -> Any:
    """One ``LoadImage`` per process (it builds every MONAI reader, which is slow and warns)."""
    from monai.transforms import LoadImage

    return LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True, dtype=np.float32)


def _load_dicom_series(path: Path) -> torch.Tensor:
    """DICOM series -> MetaTensor ``[1, cols, rows, slices]`` with its RAS affine."""
    import pydicom
    from monai.data import MetaTensor
    from pydicom.pixels import apply_modality_lut

    where = str(path)
    files, headers = _series_files(path)
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if any(tag not in h for h in headers):
            raise DataError(
                f"DICOM slice without {tag}",
                where=where,
                hint="export the series with its geometry tags, or convert it with dcm2niix",
            )
    affine, order = _geometry(headers, where)
    planes = []
    for k in order:
        ds = pydicom.dcmread(files[k])
        px = ds.pixel_array
        if px.ndim != 2:
            raise DataError(
                f"DICOM slice has pixel shape {px.shape}, expected 2-D grey",
                where=where,
                hint="multi-frame or colour DICOM is not supported; convert it with dcm2niix",
            )
        planes.append(np.asarray(apply_modality_lut(px, ds), dtype=np.float32).T)  # [cols, rows]
    if len({p.shape for p in planes}) > 1:
        raise DataError("DICOM slices have different sizes", where=where, hint="give one series per row")
    vol = np.stack(planes, axis=-1)[None]
    return MetaTensor(torch.from_numpy(vol), affine=torch.from_numpy(_LPS_TO_RAS @ affine))


def _series_files(path: Path) -> tuple[list[Path], list[Any]]:
    """The ``.dcm`` files of one series and their headers (the given file's series, or the folder's only one)."""
    import pydicom

    folder = path if path.is_dir() else path.parent
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() == ".dcm")
    if not files:
        raise DataError(
            "no .dcm files in this directory",
            where=str(path),
            hint="point the path at a DICOM series folder or one of its .dcm files",
        )
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    if not path.is_dir():
        uid = pydicom.dcmread(path, stop_before_pixels=True).get("SeriesInstanceUID")
        keep = [k for k, h in enumerate(headers) if h.get("SeriesInstanceUID") == uid]
        files, headers = [files[k] for k in keep], [headers[k] for k in keep]
    uids = {h.get("SeriesInstanceUID") for h in headers}
    if len(uids) > 1:
        raise DataError(
            f"the directory holds {len(uids)} DICOM series",
            where=str(path),
            hint="give the path of one .dcm file of the series you want",
        )
    return files, headers


def _geometry(headers: list[Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    """LPS affine of voxel (column, row, slice) and the slice order along the slice normal."""
    iop = np.asarray(headers[0].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    if any(not np.allclose(h.ImageOrientationPatient, iop, atol=1e-4) for h in headers):
        raise DataError(
            "DICOM slices have different orientations",
            where=where,
            hint="give one series per row (a localizer may be mixed in)",
        )
    pos = np.asarray([h.ImagePositionPatient for h in headers], dtype=np.float64)
    order = np.argsort(pos @ normal)
    pos = pos[order]
    if len(pos) > 1:
        gaps = np.diff(pos @ normal)
        if gaps.min() < 1e-4 or np.ptp(gaps) > 0.05 * gaps.mean():
            raise DataError(
                "DICOM slice positions are duplicated or unevenly spaced (missing slices?)",
                where=where,
                hint="check that the series is complete and holds one volume",
            )
        slice_vec = (pos[-1] - pos[0]) / (len(pos) - 1)
    else:
        h = headers[0]
        slice_vec = normal * float(h.get("SpacingBetweenSlices", h.get("SliceThickness", 1.0)))
    row_spacing, col_spacing = (float(v) for v in headers[0].PixelSpacing)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing  # +column index moves along the row direction
    affine[:3, 1] = col_dir * row_spacing  # +row index moves along the column direction
    affine[:3, 2] = slice_vec
    affine[:3, 3] = pos[0]
    return affine, order
