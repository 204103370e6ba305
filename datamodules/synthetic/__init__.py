"""The built-in synthetic omnimodal cohort: a hidden health state per subject drives a disease and
every modality, each rendered into its native file format (NIfTI, WFDB, FLAC, MP4, CSV/Parquet/NumPy)
plus MEDS-style clinical rows, with the ground truth alongside. ``omnimodal-synth`` on the command line.

Names are imported lazily, so rendering workers load neither torch nor the shard code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names __getattr__ below imports on first use
    from .cohort import EVENT_COLUMNS, TABLES, CohortInfo, synthesize_cohort  # noqa: F401
    from .interventions import InterventionConfig  # noqa: F401
    from .state import GENERATOR_VERSION, STATE_NAMES, Recordings, Subject, simulate_subject  # noqa: F401

_EXPORTS = {
    "CohortInfo": "cohort",
    "synthesize_cohort": "cohort",
    "TABLES": "cohort",
    "EVENT_COLUMNS": "cohort",
    "InterventionConfig": "interventions",
    "simulate_subject": "state",
    "Subject": "state",
    "Recordings": "state",
    "STATE_NAMES": "state",
    "GENERATOR_VERSION": "state",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
