"""MRI reader: NIfTI and DICOM series written with nibabel / pydicom -> canonical ``[1, D, H, W]``."""

from __future__ import annotations

import dataclasses
import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.affines import from_matvec
from nibabel.processing import resample_from_to
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from datamodules.readers import read_measurement
from datamodules.readers.mri import read_mri
from datamodules.schema import DataError, DataWarning, VolumeSpec, default_specs, specs_from_json
from datamodules.shards.cli import parse_spec_overrides

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
    path = write_nifti(tmp_path / "t1.nii.gz", vol, affine)
    out = read_measurement("mri", path, SPEC)
    assert out.shape == (1, 16, 16, 16) and out.dtype == np.float32
    assert read_mri(path, SPEC)[1:] == ([], {})  # every voxel finite: no note, no meta
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


def two_series(tmp_path: Path) -> Path:
    """A folder holding two DICOM series (``slice*.dcm`` and ``b_slice*.dcm``)."""
    write_series(tmp_path / "dcm", _volume())
    other = tmp_path / "other"
    write_series(other, _volume()[:, :, :4], origin=(0.0, 0.0, 100.0))
    for f in other.iterdir():
        f.rename(tmp_path / "dcm" / f"b_{f.name}")
    return tmp_path / "dcm"


def test_dicom_file_picks_its_series_from_a_folder_of_two(tmp_path):  # the folder itself: see the refusals
    assert read_measurement("mri", two_series(tmp_path) / "slice000.dcm", SPEC).shape == (1, 16, 16, 16)


# ------------------------------------------------------------------------------------------------
# NaN / Inf voxels (outside the field of view after resampling) -> background
# ------------------------------------------------------------------------------------------------


def resampled_nifti(path: Path, shift_mm: tuple[float, float, float]) -> np.ndarray:
    """Resample an oblique head-like volume (rotated 25 degrees about z) with nibabel onto the reader's own grid
    (RAS, 2 mm, 16^3) moved by ``shift_mm``, NaN outside the source's field of view, as resampling tools write it;
    save it to ``path`` and return its voxels."""
    rng = np.random.default_rng(0)
    vol = np.zeros((20, 20, 20), np.float32)
    vol[2:18, 2:18, 2:18] = rng.uniform(100, 200, (16, 16, 16))  # foreground in a zero background
    c, s = np.cos(np.deg2rad(25)), np.sin(np.deg2rad(25))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    src = nib.Nifti1Image(vol, from_matvec(2.0 * rot, -2.0 * rot @ np.full(3, 9.5)))  # centred on world 0
    target = from_matvec(2.0 * np.eye(3), np.full(3, -15.0) + np.asarray(shift_mm))
    out = resample_from_to(src, (SPEC.size, target), order=1, cval=np.nan)
    nib.save(out, str(path))
    return np.asarray(out.dataobj)


def test_resampled_nifti_with_nan_outside_the_field_of_view(tmp_path):
    path = tmp_path / "resampled.nii.gz"
    src = resampled_nifti(path, (-8.0, 0.0, 0.0))
    nan = np.isnan(src)
    assert 0.1 < nan.mean() < 0.5 and (src == 0).any()  # NaN outside the FOV, zero background inside it
    out, notes, meta = read_mri(path, SPEC)
    assert meta == {"nonfinite_fraction": round(float(nan.mean()), 4)}
    assert len(notes) == 1 and f"{nan.mean():.1%} of the MRI's voxels were NaN or Inf" in notes[0]
    # the file is on the reader's grid, so voxels map one to one: NaN and zero voxels are background (0) and the
    # foreground is z-scored over the finite non-zero voxels only (a NaN in the statistics would make all NaN)
    fg = ~nan & (src != 0)
    np.testing.assert_array_equal(out[0][~fg], 0)
    np.testing.assert_allclose(out[0][fg], (src[fg] - src[fg].mean()) / src[fg].std(), atol=1e-4)
    with pytest.warns(DataWarning, match=r"resampled\.nii\.gz: .* NaN or Inf .* became background"):
        np.testing.assert_array_equal(read_measurement("mri", path, SPEC), out)  # the note goes to the report


def test_nan_fraction_over_the_limit_is_refused_and_the_hint_keeps_it(tmp_path):
    path = tmp_path / "far.nii.gz"
    fraction = float(np.isnan(resampled_nifti(path, (-20.0, -12.0, 0.0))).mean())
    assert fraction > SPEC.max_nonfinite_fraction == 0.5
    with pytest.raises(DataError, match=rf"\(fraction {fraction:.4f}\), above the limit max_nonfinite_fraction=0.5"):
        read_measurement("mri", path, SPEC)
    with pytest.raises(DataError) as e:
        read_mri(path, SPEC)
    # the setting the hint names, parsed as omnimodal-shard parses --spec, keeps the scan
    override = re.search(r"--spec (mri\.max_nonfinite_fraction=[0-9.]+)", e.value.hint).group(1)
    fields = parse_spec_overrides([override])["mri"]
    assert fraction <= fields["max_nonfinite_fraction"] < fraction + 0.01
    assert default_specs(mri=fields)["mri"].max_nonfinite_fraction == fields["max_nonfinite_fraction"]
    _, _, meta = read_mri(path, dataclasses.replace(SPEC, **fields))
    assert meta == {"nonfinite_fraction": round(fraction, 4)}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_background(tmp_path, bad):
    vol = _volume().astype(np.float32)
    hole = np.zeros(vol.shape, bool)
    hole[0] = True  # a slab in the zero background
    hole[3, 3, 3] = hole[8, 6, 6] = True  # two voxels of the foreground (one in the marker)
    zeroed = np.where(hole, 0, vol)
    out, notes, meta = read_mri(write_nifti(tmp_path / "bad.nii", np.where(hole, bad, vol), np.eye(4)), SPEC)
    assert meta == {"nonfinite_fraction": round(hole.mean(), 4)} and len(notes) == 1
    np.testing.assert_array_equal(
        out, read_measurement("mri", write_nifti(tmp_path / "zeroed.nii", zeroed, np.eye(4)), SPEC)
    )
    strict = dataclasses.replace(SPEC, max_nonfinite_fraction=0.0)  # 0: any NaN or Inf voxel refuses the scan
    with pytest.raises(DataError, match="above the limit max_nonfinite_fraction=0.0"):
        read_mri(tmp_path / "bad.nii", strict)
    assert read_measurement("mri", tmp_path / "zeroed.nii", strict).shape == (1, 16, 16, 16)


def test_max_nonfinite_fraction_setting():
    legacy = {"kind": "volume", "spacing_mm": [4.0, 4.0, 4.0], "size": [48, 48, 48], "orientation": "RAS"}
    assert specs_from_json({"mri": legacy})["mri"] == VolumeSpec()  # an index.json written before the field
    assert VolumeSpec().to_json()["max_nonfinite_fraction"] == 0.5
    assert default_specs(mri={"max_nonfinite_fraction": 1})["mri"].max_nonfinite_fraction == 1
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(DataError, match="is not a fraction in") as e:
            VolumeSpec(max_nonfinite_fraction=bad)
        assert "--spec mri.max_nonfinite_fraction=" in e.value.hint
    with pytest.raises(DataError, match="expected a float"):
        default_specs(mri={"max_nonfinite_fraction": "half"})


# ------------------------------------------------------------------------------------------------
# refusals: every DataError of the reader says what to do
# ------------------------------------------------------------------------------------------------


def edit_slice(folder: Path, name: str, **changes) -> None:
    """Change (value) or delete (None) DICOM attributes of one slice file."""
    ds = pydicom.dcmread(folder / name)
    for k, v in changes.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(folder / name)


def _series(tmp_path: Path, name: str = "", **changes) -> Path:
    """A DICOM series folder, with one slice (``name``) edited."""
    write_series(tmp_path / "dcm", _volume())
    if name:
        edit_slice(tmp_path / "dcm", name, **changes)
    return tmp_path / "dcm"


def _nifti(tmp_path: Path, vol: np.ndarray) -> Path:
    return write_nifti(tmp_path / "v.nii.gz", vol, np.eye(4))


def _missing_slice(tmp_path: Path) -> Path:
    (_series(tmp_path) / "slice004.dcm").unlink()
    return tmp_path / "dcm"


def _no_dcm(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing")
    return tmp_path / "empty"


def _mostly_nan(tmp_path: Path) -> Path:
    vol = _volume().astype(np.float32)
    vol[:7] = np.nan
    return _nifti(tmp_path, vol)


RGB = dict(SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0, BitsAllocated=8)
RGB |= dict(BitsStored=8, HighBit=7, PixelRepresentation=0, PixelData=bytes(10 * 12 * 3))
REFUSALS = {
    "4-D NIfTI": (lambda t: _nifti(t, np.ones((8, 8, 8, 3), np.float32)), "this NIfTI has shape"),
    "2-D NIfTI": (lambda t: _nifti(t, np.ones((8, 8), np.float32)), "must be a 3-D volume"),
    "5-D NIfTI of one volume": (lambda t: _nifti(t, np.ones((8, 8, 8, 1, 1), np.float32)), "not a single 3-D"),
    "all NaN": (lambda t: _nifti(t, np.full((8, 8, 8), np.nan, np.float32)), "all NaN or Inf"),
    "mostly NaN": (_mostly_nan, r"above the limit max_nonfinite_fraction=0.5"),
    "all zeros": (lambda t: _nifti(t, np.zeros((8, 8, 8), np.float32)), "MRI is all zeros$"),
    "zeros and NaN": (lambda t: _nifti(t, np.where(np.eye(8)[..., None] > 0, np.nan, 0)), "apart from its NaN"),
    "no .dcm files": (_no_dcm, "no .dcm files"),
    "two series": (two_series, "2 DICOM series"),
    "slice without position": (lambda t: _series(t, "slice002.dcm", ImagePositionPatient=None), "without Image"),
    "oblique slice": (
        lambda t: _series(t, "slice002.dcm", ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 0.8, 0.6]),
        "different orientations",
    ),
    "missing slice": (_missing_slice, "unevenly spaced"),
    "slice of another size": (lambda t: _series(t, "slice002.dcm", Rows=12, Columns=10), "different sizes"),
    "colour slice": (lambda t: _series(t, "slice002.dcm", **RGB), "expected 2-D grey"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_every_refusal_has_a_hint(tmp_path, case):
    make, match = REFUSALS[case]
    path = make(tmp_path)
    with pytest.raises(DataError) as e:
        read_measurement("mri", path, SPEC)
    assert re.search(match, e.value.reason), e.value.reason
    assert e.value.where == str(path) and e.value.hint.strip()


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
