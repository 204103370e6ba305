"""Render one subject: every planned measurement of every visit into its native file, plus the
clinical rows, returned as events-table rows.

Each file gets its own generator, ``SeedSequence(seed, spawn_key=(index, 1, visit, modality))``, so
the output does not depend on rendering order or on how subjects are spread over workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..modalities import registry, resolve
from .render_tables import clinical_rows, iso
from .state import DEFAULT_RECORDINGS, Recordings, RenderContext, Subject, file_rng

#: one events-table row: subject_id, time, modality, path, code, numeric_value
EventRow = tuple[str, str, str, str, str, float]


def context(
    seed: int,
    subject: Subject,
    visit_index: int,
    modality: str,
    root: Path,
    recordings: Recordings = DEFAULT_RECORDINGS,
) -> RenderContext:
    visit = subject.visits[visit_index]
    rng = file_rng(seed, subject.index, visit_index, modality)
    return RenderContext(subject=subject, visit=visit, rng=rng, root=root, modality=modality, recordings=recordings)


def render_subject(
    seed: int, subject: Subject, root: Path, recordings: Recordings = DEFAULT_RECORDINGS
) -> list[EventRow]:
    """Write all files of ``subject`` under ``root/files/<subject_id>/``; return its event rows
    in visit order, then the registry's order within a visit. Each modality's renderer is its
    declaration's ``render``; a modality without one is rows of the events table (clinical)."""
    mods = registry()
    clinical_ctx = {
        v.index: context(seed, subject, v.index, "clinical", root) for v in subject.visits if "clinical" in v.modalities
    }
    clinical = clinical_rows(subject, clinical_ctx)
    rows: list[EventRow] = []
    nan = float(np.nan)
    for visit in subject.visits:
        time = iso(visit.time)
        for modality in visit.modalities:
            if mods[modality].render is None:
                rows += [(subject.subject_id, time, modality, "", code, value) for code, value in clinical[visit.index]]
            else:
                path = resolve(mods[modality].render)(context(seed, subject, visit.index, modality, root, recordings))
                rows.append((subject.subject_id, time, modality, path, "", nan))
    return _with_treatment(subject, rows) if subject.treatment is not None else rows


def _with_treatment(subject: Subject, rows: list[EventRow]) -> list[EventRow]:
    """The visits' rows with the interventions' START/STOP rows (clinical) after the rows of the visit at or before
    their time, in time order (:func:`.interventions.treatment_rows`)."""
    from .interventions import treatment_rows  # noqa: PLC0415 - only for a cohort with interventions

    days = {iso(v.time): v.days for v in subject.visits}
    keyed = [((days[r[1]], 0, j), r) for j, r in enumerate(rows)]
    keyed += [
        ((d, 1, j), (subject.subject_id, iso(time), "clinical", "", code, value))
        for j, (d, time, code, value) in enumerate(treatment_rows(subject))
    ]
    return [r for _, r in sorted(keyed, key=lambda kr: kr[0])]


def render_task(args: tuple[int, Subject, str, Recordings]) -> list[EventRow]:
    """Pool entry point: ``(seed, subject, root, recordings)`` -> :func:`render_subject` rows."""
    seed, subject, root, recordings = args
    return render_subject(seed, subject, Path(root), recordings)
