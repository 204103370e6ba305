"""Interventions in the data contract: treatment starts and stops as clinical rows of the events table.

A treatment (a medication, a lifestyle programme) is not a modality of its own: it is two kinds of ``clinical``
rows, as MEDS ETLs write drug exposures, so it reaches shards, batches and the model's tokens like any other
code (the code's embedding, the dose through the value path, its time through the time encoding):

=============================  ==================  ================================================
code                           ``numeric_value``   means
=============================  ==================  ================================================
``<CODE>//START``              dose, or empty      ``<CODE>`` starts (or its dose changes) then
``<CODE>//STOP``               not used            ``<CODE>`` stops then
=============================  ==================  ================================================

e.g. ``RX:C08CA01//START`` 5.0 (amlodipine, mg/day), ``RX:C08CA01//STOP``, ``LIFESTYLE:EXERCISE//START`` (no
dose), ``LIFESTYLE:EXERCISE//STOP``. A treatment's duration is STOP - START on the timeline.

Rules (one subject's rows in time order; rows at the same time in the table's order):

- a START of a code that is not active opens a span; one with no STOP after it is **ongoing** (``stop_days``
  None) at the end of the record;
- a second START of a code already active is a **dose change**: the active span ends there and a new one starts
  at the same time with the new dose (spans split at the change; a course is the run of spans of one code that
  follow each other without a gap);
- a STOP ends the active span of its code; a STOP of a code that is **not active** is bad input (the shard builder
  rejects the row, naming the table, row, subject key and code; ``--strict`` stops the build), as is a START whose
  dose is negative or infinite, or an empty code before ``//START``/``//STOP``;
- a STOP's ``numeric_value`` is not used.

Only the rules live here (numpy/pandas free of torch): :func:`check_rows` says which rows are bad input,
:func:`spans` reads a :class:`~datamodules.schema.Timeline` back into :class:`Span` s. Which codes have which
effect is not part of the contract (the synthetic cohort's are :mod:`datamodules.synthetic.interventions`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # duck-typed: no torch for the readers of this module
    from .schema import Timeline

START = "//START"
STOP = "//STOP"


def start_code(code: str) -> str:
    """``RX:C08CA01`` -> ``RX:C08CA01//START``."""
    return f"{code}{START}"


def stop_code(code: str) -> str:
    """``RX:C08CA01`` -> ``RX:C08CA01//STOP``."""
    return f"{code}{STOP}"


def parse(code: str | None) -> tuple[str, str] | None:
    """``(base code, "start" | "stop")`` for an intervention row's code, None for any other code (the base may be
    empty: bad input, :func:`check_rows` says so)."""
    if not isinstance(code, str):
        return None
    code = code.strip()
    for suffix, kind in ((START, "start"), (STOP, "stop")):
        if code.endswith(suffix):
            return code[: -len(suffix)], kind
    return None


@dataclass(frozen=True)
class Span:
    """One treatment period: ``code`` (the base code, without ``//START``) from ``start_days`` to ``stop_days``
    (None: ongoing at the end of the record), at ``dose`` (None: no dose, e.g. a programme). Days are those of the
    timeline (since the subject's first event in shards; since the first visit in the synthetic cohort)."""

    code: str
    start_days: float
    stop_days: float | None
    dose: float | None = None

    @property
    def ongoing(self) -> bool:
        return self.stop_days is None

    @property
    def duration_days(self) -> float | None:
        """STOP - START; None while ongoing."""
        return None if self.stop_days is None else self.stop_days - self.start_days

    def active_at(self, days: float) -> bool:
        """Whether the span is in effect at ``days`` (from its start, up to but not at its stop)."""
        return self.start_days <= days and (self.stop_days is None or days < self.stop_days)


def _dose(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def check_rows(rows: Iterable[tuple[float, str, float | None]]) -> list[str | None]:
    """Per row ``(time, code, numeric_value)`` of one subject, in time order: None where the row is fine (or not an
    intervention row), else why it is bad input (a bad row is not applied: the rows after it are checked as if it
    were not there). The reason's first part is its kind, details follow in brackets (the build report's style)."""
    active: set[str] = set()
    out: list[str | None] = []
    for _, code, value in rows:
        parsed = parse(code)
        if parsed is None:
            out.append(None)
            continue
        base, kind = parsed
        if not base:
            out.append(f"intervention row without a code [{code.strip()!r}: write <CODE>{START} or <CODE>{STOP}]")
        elif kind == "stop" and base not in active:
            out.append(
                f"intervention STOP while not active [{base}{STOP} with no {base}{START} before it: add its START "
                "row or drop this one]"
            )
        elif kind == "start" and (dose := _dose(value)) is not None and not (math.isfinite(dose) and dose >= 0):
            out.append(f"intervention START with a bad dose [{base}{START} dose {value}: give a dose >= 0, or none]")
        else:
            (active.add if kind == "start" else active.discard)(base)
            out.append(None)
    return out


def spans_from_rows(rows: Iterable[tuple[float, str, float | None]]) -> list[Span]:
    """The spans of one subject's rows ``(time_days, code, numeric_value)`` in time order, by the module's rules
    (bad rows are skipped, as the shard builder rejects them); sorted by start, then code."""
    rows = list(rows)
    done: list[Span] = []
    open_: dict[str, tuple[float, float | None]] = {}
    for (t, code, value), problem in zip(rows, check_rows(rows)):
        parsed = parse(code)
        if parsed is None or problem is not None:
            continue
        base, kind = parsed
        if base in open_:  # a STOP, or a START that changes the dose: the active span ends here
            start, dose = open_.pop(base)
            done.append(Span(base, start, float(t), dose))
        if kind == "start":
            open_[base] = (float(t), _dose(value))
    done += [Span(base, start, None, dose) for base, (start, dose) in open_.items()]
    return sorted(done, key=lambda s: (s.start_days, s.code, math.inf if s.stop_days is None else s.stop_days))


def spans(timeline: Timeline) -> list[Span]:
    """The treatment spans of a timeline (its events' clinical measurements, in time order), by the module's
    rules; times are the timeline's ``time_days``."""
    rows = [
        (ev.time_days, m.code, m.value)
        for ev in timeline.events
        for m in ev.measurements
        if m.modality == "clinical" and m.code
    ]
    return spans_from_rows(rows)


def courses(all_spans: Iterable[Span]) -> list[list[Span]]:
    """Spans grouped into courses: per code, the runs of spans where each starts where the one before stopped (a
    dose change), in start order."""
    out: list[list[Span]] = []
    last: dict[str, list[Span]] = {}
    for s in sorted(all_spans, key=lambda s: (s.start_days, s.code)):
        run = last.get(s.code)
        if run is not None and run[-1].stop_days == s.start_days:
            run.append(s)
        else:
            last[s.code] = run = [s]
            out.append(run)
    return out


__all__ = [
    "START",
    "STOP",
    "Span",
    "check_rows",
    "courses",
    "parse",
    "spans",
    "spans_from_rows",
    "start_code",
    "stop_code",
]
