"""Brain MRI: NIfTI or a DICOM series -> ``[1, D, H, W]`` float32, RAS, fixed spacing, z-scored in brain."""

from ..specs import VolumeSpec
from . import BROKEN, DICOM_DIR, Modality, register


def _render_params() -> dict:
    from ..synthetic import render_volume as r

    return {
        "shape": r.MRI_SHAPE,
        "spacing_mm": r.MRI_SPACING_MM,
        "orientations": sorted(r.ORIENTATIONS),
        "format": "nii.gz",
        "dtype": "int16",
    }


_READ = "datamodules.readers.mri:read_mri"
MRI = register(
    Modality(
        name="mri",
        order=10,
        spec=VolumeSpec(),
        default_encoder="mri/conv3d",
        readers={".nii": _READ, ".nii.gz": _READ, ".dcm": _READ, DICOM_DIR: _READ},
        decode_hint=BROKEN + "check that it opens with nibabel (NIfTI) or pydicom (DICOM) and re-export it",
        visit_rate=0.12,
        render="datamodules.synthetic.render_volume:render_mri",
        render_params=_render_params,
        preload=("monai.transforms", "monai.data"),
        description="brain MRI (NIfTI, DICOM series)",
    )
)
