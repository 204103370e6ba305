"""Clinical events: rows of the events table (MEDS-style ``code``, ``numeric_value``), no files."""

from ..specs import ClinicalSpec
from . import Modality, register

CLINICAL = register(
    Modality(
        name="clinical",
        order=90,
        spec=ClinicalSpec(),
        default_encoder="clinical/embedding",
        visit_rate=0.85,
        description="diagnoses, labs, medications as code/value rows",
    )
)
