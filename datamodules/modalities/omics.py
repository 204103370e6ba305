"""Omics: CSV/Parquet (long ``feature_id,value`` or wide) or NumPy -> ``[features]`` float32 on the panel."""

from ..specs import OmicsSpec
from . import BROKEN, Modality, register


def _render_params() -> dict:
    from ..synthetic import render_tables as r

    return {"off_panel_features": r.OFF_PANEL_FEATURES, "formats": ["csv", "parquet", "npy"]}


_READ = "datamodules.readers.omics:read_omics"
OMICS = register(
    Modality(
        name="omics",
        order=80,
        spec=OmicsSpec(),
        default_encoder="omics/mlp",
        readers={".csv": _READ, ".parquet": _READ, ".npy": _READ},
        decode_hint=BROKEN + "check that it opens with pandas (tables) or numpy (.npy)",
        visit_rate=0.15,
        render="datamodules.synthetic.render_tables:render_omics",
        render_params=_render_params,
        description="genotypes and expression on a feature panel",
    )
)
