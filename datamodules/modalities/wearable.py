"""Wearable streams: CSV or Parquet with a ``timestamp`` column -> ``[channels, minutes]`` float32."""

from ..specs import WearableSpec
from . import BROKEN, Modality, register


def _render_params() -> dict:
    from ..synthetic import render_wearable as r

    return {
        "columns": r.WEARABLE_COLUMNS,
        "formats": ["csv", "parquet"],
        "sample_gap_s": r.SAMPLE_GAP_S,
        "not_worn_day": r.NOT_WORN_DAY,
        "charging": r.CHARGING,
        "break": r.BREAK,
        "dropout": r.DROPOUT,
    }


_READ = "datamodules.readers.wearable:read_wearable"
WEARABLE = register(
    Modality(
        name="wearable",
        order=70,
        spec=WearableSpec(),
        default_encoder="wearable/conv1d",
        readers={".csv": _READ, ".parquet": _READ},
        decode_hint=BROKEN + "check that it opens with pandas",
        visit_rate=0.40,
        render="datamodules.synthetic.render_wearable:render_wearable",
        render_params=_render_params,
        description="wearable time series (CSV, Parquet)",
    )
)
