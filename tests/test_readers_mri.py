"""MRI reader: NIfTI and DICOM series written with nibabel / pydicom -> canonical ``[1, D, H, W]``."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from datamodules.readers import read_measurement
from datamodules.schema import DataError, VolumeSpec

SPEC = VolumeSpec(spacing_mm=(2.0, 2.0, 2.0), size=(16, 16, 16))
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _volume() -> np.ndarray:
    """``[X, Y, Z]`` int16 voxels: a noisy block plus a bright marker near the high end of each axis."""
    rng = np.random.default_rng(0)
    vol = np.zeros((12, 10, 9), np.int16)
    vol[2:10, 2:8, 1:8] = rng.integers(100, 200, (8, 6, 7))
    vol[7:10, 5:8, 5:8] = 900  # marker at high i, j, k
    return vol


def _dicom_affine(row_dir, col_dir, pixel_spacing, dz, origin) -> np.ndarray:
    """RAS affine of voxel (col i, row j, slice k) for a DICOM series with this geometry."""
    a = np.eye(4)
    a[:3, 0] = np.asarray(row_dir) * pixel_spacing[1]
    a[:3, 1] = np.asarray(col_dir) * pixel_spacing[0]
    a[:3, 2] = np.cross(row_dir, col_dir) * dz
    a[:3, 3] = origin
    return LPS_TO_RAS @ a


def write_series(
    folder: Path,
    vol: np.ndarray,
    *,
    row_dir=(1.0, 0.0, 0.0),
    col_dir=(0.0, 1.0, 0.0),
    pixel_spacing=(3.0, 2.5),
    dz=2.2,
    origin=(10.0, -5.0, 3.0),
    instance=None,
    slope: float = 2.0,
    intercept: float = -7.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Write ``vol [cols, rows, slices]`` as one MR slice per file; return (physical voxels, RAS affine)."""
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    normal = np.cross(row_dir, col_dir)
    n = vol.shape[2]
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), series, "MR"
        ds.InstanceNumber = instance(k) if instance else k + 1
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * dz * normal]
        ds.ImageOrientationPatient = [*map(float, row_dir), *map(float, col_dir)]
        ds.PixelSpacing, ds.SliceThickness = list(pixel_spacing), dz
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(vol[:, :, k].T).tobytes()
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)
    affine = _dicom_affine(row_dir, col_dir, pixel_spacing, dz, origin)
    return vol.astype(np.float32) * slope + intercept, affine


def write_nifti(path: Path, vol: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(vol.astype(np.float32), affine), str(path))
    return path


def _centroid(x: np.ndarray) -> np.ndarray:
    idx = np.argwhere(x[0] >= 0.9 * x[0].max())
    return idx.mean(axis=0)


def test_nifti_non_ras_affine_gives_ras_zscored_volume(tmp_path):
    vol = _volume().astype(np.float32)
    # axes: i -> Left (2.5 mm), j -> Posterior (3 mm), k -> Superior (2 mm): an "LPS" volume at
    # non-target spacing; the marker sits at high i, j, k = left, posterior, superior.
    affine = np.array([[-2.5, 0, 0, 10], [0, -3.0, 0, 8], [0, 0, 2.0, -4], [0, 0, 0, 1]])
    out = read_measurement("mri", write_nifti(tmp_path / "t1.nii.gz", vol, affine), SPEC)
    assert out.shape == (1, 16, 16, 16) and out.dtype == np.float32
    c = _centroid(out)
    assert c[0] < 8 and c[1] < 8 and c[2] > 8  # RAS: left/posterior -> low index, superior -> high
    native = vol[vol != 0]  # z-scored over the native foreground voxels, background stays 0
    np.testing.assert_allclose(out.max(), (900 - native.mean()) / native.std(), rtol=1e-3)
    assert abs(out[out != 0].mean()) < 0.2
    assert out[0, 0, 0, 0] == 0  # padding/background stays 0


@pytest.mark.parametrize(
    "geometry",
    [
        dict(),  # axial
        dict(row_dir=(0.0, 1.0, 0.0), col_dir=(0.0, 0.0, -1.0)),  # sagittal
        dict(instance=lambda k: 50 - 3 * k, slope=1.0, intercept=0.0),  # InstanceNumber against position
    ],
)
def test_dicom_series_matches_nifti(tmp_path, geometry):
    phys, affine = write_series(tmp_path / "dcm", _volume(), **geometry)
    ref = read_measurement("mri", write_nifti(tmp_path / "same.nii", phys, affine), SPEC)
    from_dir = read_measurement("mri", tmp_path / "dcm", SPEC)
    from_file = read_measurement("mri", tmp_path / "dcm" / "slice004.dcm", SPEC)
    np.testing.assert_allclose(from_dir, ref, atol=1e-4)
    np.testing.assert_array_equal(from_file, from_dir)


def test_dicom_loader_agrees_with_monai_pydicomreader(tmp_path):
    from monai.data import PydicomReader
    from monai.transforms import LoadImage, Orientation

    from datamodules.readers.mri import _load_dicom_series

    write_series(tmp_path / "dcm", _volume())
    monai_img = LoadImage(reader=PydicomReader(), image_only=True, ensure_channel_first=True)(str(tmp_path / "dcm"))
    ours = _load_dicom_series(tmp_path / "dcm")
    orient = Orientation(axcodes="RAS", labels=None)
    a, b = orient(monai_img), orient(ours)
    np.testing.assert_allclose(np.asarray(a.affine), np.asarray(b.affine), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_dicom_directory_with_two_series(tmp_path):
    write_series(tmp_path / "dcm", _volume())
    other = tmp_path / "other"
    write_series(other, _volume()[:, :, :4], origin=(0.0, 0.0, 100.0))
    for f in other.iterdir():
        f.rename(tmp_path / "dcm" / f"b_{f.name}")
    with pytest.raises(DataError, match="2 DICOM series"):
        read_measurement("mri", tmp_path / "dcm", SPEC)
    only_a = read_measurement("mri", tmp_path / "dcm" / "slice000.dcm", SPEC)
    assert only_a.shape == (1, 16, 16, 16)


@pytest.mark.parametrize("shape, match", [((8, 8, 8, 3), "3-D volume"), ((8, 8), "3-D volume")])
def test_non_3d_nifti_rejected(tmp_path, shape, match):
    path = write_nifti(tmp_path / "f.nii.gz", np.ones(shape, np.float32), np.eye(4))
    with pytest.raises(DataError, match=match):
        read_measurement("mri", path, SPEC)


def test_non_finite_and_empty_volumes_rejected(tmp_path):
    vol = _volume().astype(np.float32)
    vol[3, 3, 3] = np.nan
    with pytest.raises(DataError, match="NaN or Inf"):
        read_measurement("mri", write_nifti(tmp_path / "nan.nii", vol, np.eye(4)), SPEC)
    with pytest.raises(DataError, match="all zeros"):
        read_measurement("mri", write_nifti(tmp_path / "zero.nii", np.zeros_like(vol), np.eye(4)), SPEC)


@pytest.mark.parametrize("name", ["trunc.nii", "trunc.nii.gz"])
def test_truncated_nifti(tmp_path, name):
    path = write_nifti(tmp_path / name, _volume(), np.eye(4))
    data = path.read_bytes()
    if name.endswith(".gz"):  # cut the uncompressed image short, keep a valid gzip stream
        raw = gzip.decompress(data)
        path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    else:
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot decode mri file") as e:
        read_measurement("mri", path, SPEC)
    assert str(path) in str(e.value) and "nibabel" in str(e.value)


def test_single_volume_4d_nifti_accepted(tmp_path):
    path = write_nifti(tmp_path / "t1.nii.gz", _volume()[..., None], np.eye(4))  # [X, Y, Z, 1]
    assert read_measurement("mri", path, SPEC).shape == (1, 16, 16, 16)


def test_dicom_series_with_a_missing_slice(tmp_path):
    write_series(tmp_path / "dcm", _volume())
    (tmp_path / "dcm" / "slice004.dcm").unlink()
    with pytest.raises(DataError, match="unevenly spaced"):
        read_measurement("mri", tmp_path / "dcm", SPEC)


def test_dicom_folder_without_dcm_files(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing")
    with pytest.raises(DataError, match="no .dcm files"):
        read_measurement("mri", tmp_path / "empty", SPEC)
