"""Render one subject: every planned measurement of every visit into its native file, plus the
clinical rows, returned as events-table rows.

Each file gets its own generator, ``SeedSequence(seed, spawn_key=(index, 1, visit, modality))``, so
the output does not depend on rendering order or on how subjects are spread over workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .render_audio import render_breath, render_voice
from .render_ecg import render_ecg
from .render_tables import clinical_rows, iso, render_omics, render_wearable
from .render_video import render_face, render_gait
from .render_volume import render_mri
from .state import STREAM_FILES, VISIT_ORDER, RenderContext, Subject, subject_rng

Renderer = Callable[[RenderContext], str]

RENDERERS: dict[str, Renderer] = {
    "mri": render_mri, "ecg": render_ecg, "voice": render_voice, "breath": render_breath,
    "gait": render_gait, "face": render_face, "wearable": render_wearable, "omics": render_omics,
}

#: one events-table row: subject_id, time, modality, path, code, numeric_value
EventRow = tuple[str, str, str, str, str, float]


def context(seed: int, subject: Subject, visit_index: int, modality: str, root: Path) -> RenderContext:
    rng = subject_rng(seed, subject.index, STREAM_FILES, visit_index, VISIT_ORDER.index(modality))
    return RenderContext(subject=subject, visit=subject.visits[visit_index], rng=rng, root=root,
                         modality=modality)


def render_subject(seed: int, subject: Subject, root: Path) -> list[EventRow]:
    """Write all files of ``subject`` under ``root/files/<subject_id>/``; return its event rows
    in visit order, then :data:`VISIT_ORDER` within a visit."""
    clinical_ctx = {v.index: context(seed, subject, v.index, "clinical", root)
                    for v in subject.visits if "clinical" in v.modalities}
    clinical = clinical_rows(subject, clinical_ctx)
    rows: list[EventRow] = []
    nan = float(np.nan)
    for visit in subject.visits:
        time = iso(visit.time)
        for modality in visit.modalities:
            if modality == "clinical":
                rows += [(subject.subject_id, time, modality, "", code, value) for code, value in clinical[visit.index]]
            else:
                path = RENDERERS[modality](context(seed, subject, visit.index, modality, root))
                rows.append((subject.subject_id, time, modality, path, "", nan))
    return rows


def render_task(args: tuple[int, Subject, str]) -> list[EventRow]:
    """Pool entry point: ``(seed, subject, root)`` -> :func:`render_subject` rows."""
    seed, subject, root = args
    return render_subject(seed, subject, Path(root))
