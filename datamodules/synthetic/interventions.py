"""Interventions with known causal effects in the synthetic cohort (opt-in: ``synthesize_cohort(interventions=
InterventionConfig())``, ``omnimodal-synth --interventions``).

Each :class:`Intervention` lowers the drift of one hidden state component by a known amount per year while it is
in force (from its START to its STOP; a medication is ongoing, a programme lasts a drawn number of months), so
the disease hazard, which grows with the state, falls with it. The defaults:

=====================  ====================================  ========================================  ==========
code                   dose (``numeric_value``)              effect while in force                     length
=====================  ====================================  ========================================  ==========
``RX:C08CA01``         5 mg/day, 10 mg/day (a dose change)   cardio drift -0.30/yr (5 mg), -0.45/yr    ongoing
                                                             (10 mg)
``LIFESTYLE:EXERCISE`` none                                  frailty drift -0.40/yr                    6-18 months
=====================  ====================================  ========================================  ==========

Who gets what (every draw from the person's own stream :data:`~.state.STREAM_TREAT`, one sub-stream per code, so
no other draw of the cohort changes and adding an intervention leaves the others' draws as they were):

- the **trial arm** (a share ``trial_share`` of people): at a randomisation visit drawn among all but the first,
  each intervention is randomised 1:1 (``treat_share``; a factorial trial), started at that visit at its first
  dose if the person has not had the onset by then (else not enrolled);
- the **care arm** (everyone else): treated by indication, as in care data: at each visit after the first, before
  onset, where the person is indicated, it starts with chance ``uptake`` (once per person); a medication already
  given moves to its next dose (a second START, a dose change) with chance ``escalate`` at a later visit still
  indicated. Treated people are those with the worse state: the care arm is confounded.

Indicated (:attr:`InterventionConfig.indicate_on`): ``"measured"`` (the default), as a clinician decides, on what
is measured: the last recorded value (at this visit or before) of the lab that measures the state component the
intervention acts on, above its threshold (``measured``: the antihypertensive on a systolic blood pressure,
``LOINC:8480-6``, above 135 mmHg, the pressure expected at the state's old indication, ``cardio`` 1.0). It is the
value the record holds, from the same draws (:func:`.render_tables.clinical_labs` with the visit's clinical
generator), so a model that sees the record sees what the decision saw: the confounding is by measured values.
``"state"``: on the hidden state component above ``indication`` (before issue 12's mend: then treated people's
state is worse than their labs show, a confounder no record holds). An intervention with no lab that measures its
state (the exercise programme: frailty shows in no clinical lab) is indicated on the state in both.

A START sits at its visit's time; a programme's STOP is its own clinical event at start + its length in days (a
STOP after the last visit is not written: the programme is ongoing at the end of the record, the truth keeps
its stop). The trajectory shares every random draw with the untreated one (:func:`~.state._simulate`), so the
counterfactual truth (:mod:`.oracle` :func:`~.oracle.counterfactual_risks`) is from the same person.

Only these codes have effects: the cohort's other treatment codes (``RX:C09AA05`` after an ``ICD10:I10``
diagnosis, ...) follow diagnoses and change nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np

from ..interventions import Span, start_code, stop_code
from .render_tables import LAB_CODES, clinical_labs
from .state import (
    N_STATE,
    STATE_NAMES,
    STREAM_TREAT,
    YEAR_DAYS,
    Subject,
    Treatment,
    file_rng,
    modality_stream,
    subject_rng,
)

#: what the care arm's treatment by indication reads (:attr:`InterventionConfig.indicate_on`)
INDICATE_ON = ("measured", "state")


@dataclass(frozen=True)
class Intervention:
    """One intervention and its known effect: ``code`` (MEDS-style; its rows are ``code//START``, ``code//STOP``)
    lowers the drift of ``state`` (a name of :data:`~.state.STATE_NAMES`) by ``effects[k][1]`` per year at dose
    ``effects[k][0]`` (None: no dose) while in force; ``months``: a programme's length range (a STOP row at the end),
    None: ongoing once started. Care arm: ``indication`` (the state above which it is given), ``measured`` (the lab
    code whose last recorded value above the threshold indicates it, when :attr:`InterventionConfig.indicate_on`
    is ``"measured"``; None: no lab measures ``state``, it is indicated on the state), ``uptake`` (chance per
    indicated visit), ``escalate`` (chance per later indicated visit of moving to the next dose)."""

    code: str
    state: str
    effects: tuple[tuple[float | None, float], ...]
    months: tuple[float, float] | None = None
    indication: float = 1.0
    measured: tuple[str, float] | None = None
    uptake: float = 0.5
    escalate: float = 0.0

    def check(self) -> Intervention:
        if self.state not in STATE_NAMES:
            raise ValueError(f"interventions: state {self.state!r} of {self.code} is not one of {STATE_NAMES}")
        if not self.effects:
            raise ValueError(f"interventions: {self.code} has no effects (give (dose, drift reduction per year))")
        if self.measured is not None and not (
            len(self.measured) == 2 and self.measured[0] in LAB_CODES and math.isfinite(self.measured[1])
        ):
            raise ValueError(
                f"interventions: measured of {self.code} must be (a lab code of {LAB_CODES}, a finite threshold), "
                f"got {self.measured}"
            )
        if self.months is not None and not 0 < self.months[0] <= self.months[1]:
            raise ValueError(f"interventions: months of {self.code} must be 0 < low <= high, got {self.months}")
        for name in ("uptake", "escalate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"interventions: {name} of {self.code} must be in [0, 1], got {getattr(self, name)}")
        return self

    def effect(self, dose: float | None) -> np.ndarray:
        """The change of the drift per year ``[N_STATE]`` at ``dose`` (one of :attr:`effects`' doses)."""
        for d, reduction in self.effects:
            if d == dose or (d is None and dose is None):
                out = np.zeros(N_STATE)
                out[STATE_NAMES.index(self.state)] = -reduction
                return out
        raise ValueError(f"dose: {dose} is not a dose of {self.code}; its doses are {[d for d, _ in self.effects]}")


ANTIHYPERTENSIVE = Intervention(
    "RX:C08CA01",
    "cardio",
    ((5.0, 0.30), (10.0, 0.45)),
    months=None,
    indication=1.0,
    measured=("LOINC:8480-6", 135.0),  # systolic blood pressure, mmHg
    uptake=0.6,
    escalate=0.5,
)
EXERCISE = Intervention(
    "LIFESTYLE:EXERCISE", "frailty", ((None, 0.40),), months=(6.0, 18.0), indication=1.0, uptake=0.4
)


@dataclass(frozen=True)
class InterventionConfig:
    """The interventions of a synthetic cohort and who gets them (module docstring): ``trial_share`` of the people
    are in the randomised arm, where each intervention is given to ``treat_share`` of them; the rest are treated by
    indication, on the last recorded lab (``indicate_on="measured"``) or on the hidden state (``"state"``; module
    docstring). Part of the cohort's identity when given (``cohort.json``, the demo cohort's fingerprint)."""

    interventions: tuple[Intervention, ...] = (ANTIHYPERTENSIVE, EXERCISE)
    trial_share: float = 0.5
    treat_share: float = 0.5
    indicate_on: str = "measured"

    def check(self) -> InterventionConfig:
        for name in ("trial_share", "treat_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"interventions: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.indicate_on not in INDICATE_ON:
            raise ValueError(f"interventions: indicate_on must be one of {INDICATE_ON}, got {self.indicate_on!r}")
        codes = [i.check().code for i in self.interventions]
        if len(set(codes)) != len(codes):
            raise ValueError(f"interventions: codes must be distinct, got {codes}")
        return self

    def get(self, code: str) -> Intervention:
        """The intervention of ``code``; an error naming ``code`` for one this cohort does not have."""
        for i in self.interventions:
            if i.code == code:
                return i
        raise ValueError(f"code: {code!r} is not an intervention of this cohort; known: {self.codes}")

    @property
    def codes(self) -> list[str]:
        return [i.code for i in self.interventions]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def policy(
        self, seed: int, index: int, visit_days: np.ndarray, sex: str, traits: dict[str, float], clinical: list[bool]
    ) -> Policy:
        """Who gets what for subject ``(seed, index)`` with these visits (the simulator calls it); ``sex``,
        ``traits`` and ``clinical`` (per visit: whether it measures the clinical labs) for the labs it reads."""
        return Policy(self.check(), seed, index, np.asarray(visit_days, float), sex, traits, list(clinical))

    def zero(self) -> InterventionConfig:
        """The same assignment with every effect 0 (a placebo: a check that treatment alone changes nothing)."""
        return dataclasses.replace(
            self,
            interventions=tuple(
                dataclasses.replace(i, effects=tuple((d, 0.0) for d, _ in i.effects)) for i in self.interventions
            ),
        )


DEFAULT_INTERVENTIONS = InterventionConfig()


@dataclass
class _Draws:
    assign: float  # trial: < treat_share = randomised to it
    uptake: np.ndarray  # [n_visits] care: < uptake = started at that indicated visit
    escalate: np.ndarray  # [n_visits] care: < escalate = next dose at that visit
    length_days: int  # a programme's length (0 when ongoing)


@dataclass
class Policy:
    """The assignment of one subject, applied visit by visit while the simulator runs (module docstring)."""

    cfg: InterventionConfig
    seed: int
    index: int
    visit_days: np.ndarray
    sex: str
    traits: dict[str, float]
    clinical: list[bool]  # per visit: the clinical labs are measured (recorded where the cohort has ``clinical``)
    treatment: Treatment = field(init=False)

    def __post_init__(self) -> None:
        rng = subject_rng(self.seed, self.index, STREAM_TREAT)
        trial = rng.random() < self.cfg.trial_share
        self.enrol_visit = int(rng.integers(1, len(self.visit_days)))
        self.treatment = Treatment(arm="trial" if trial else "care")
        self.draws: dict[str, _Draws] = {}
        n = len(self.visit_days)
        for i in self.cfg.interventions:
            r = subject_rng(self.seed, self.index, STREAM_TREAT, modality_stream(i.code))
            months = 0.0 if i.months is None else r.uniform(*i.months)
            self.draws[i.code] = _Draws(r.random(), r.random(n), r.random(n), int(round(months * YEAR_DAYS / 12)))
            self.treatment.assigned[i.code] = trial and self.draws[i.code].assign < self.cfg.treat_share
            self.treatment.planned[i.code] = None if i.months is None else float(self.draws[i.code].length_days)
        self.active: dict[str, int] = {}  # code -> the index of its current span
        self._dose_k: dict[str, int] = {}  # code -> the index of its current dose in its effects
        self.last_labs: dict[str, float] = {}  # lab code -> its last recorded value (care arm, indicate_on measured)
        self._reads = (  # the labs a care-arm decision reads
            not trial
            and self.cfg.indicate_on == "measured"
            and any(i.measured is not None for i in self.cfg.interventions)
        )

    def _indicated(self, i: Intervention, state: np.ndarray) -> bool:
        """Whether ``i`` is indicated now: its lab's last recorded value above its threshold, or the hidden state
        above ``indication`` (module docstring)."""
        if self.cfg.indicate_on == "state" or i.measured is None:
            return bool(state[STATE_NAMES.index(i.state)] > i.indication)
        lab, threshold = i.measured
        return lab in self.last_labs and self.last_labs[lab] > threshold

    def _start(self, i: Intervention, days: float, dose_k: int) -> None:
        dose = i.effects[dose_k][0]
        stop = None if i.months is None else days + self.draws[i.code].length_days
        self.active[i.code] = len(self.treatment.spans)
        self.treatment.start(Span(i.code, days, stop, dose), i.effect(dose))
        self._dose_k[i.code] = dose_k

    def _change_dose(self, i: Intervention, days: float, dose_k: int) -> None:
        k = self.active[i.code]
        old = self.treatment.spans[k]
        self.treatment.spans[k] = dataclasses.replace(old, stop_days=days)
        dose = i.effects[dose_k][0]
        self.active[i.code] = len(self.treatment.spans)
        self.treatment.start(Span(i.code, days, old.stop_days, dose), i.effect(dose))
        self._dose_k[i.code] = dose_k

    def visit(self, v: int, days: float, state: np.ndarray, onset: float) -> None:
        """Visit ``v`` at ``days`` with the hidden ``state`` then; ``onset``: the onset day so far (NaN: none)."""
        if self._reads and self.clinical[v]:  # the labs the record will hold, from the visit's own draws
            rng = file_rng(self.seed, self.index, v, "clinical")
            self.last_labs.update(clinical_labs(rng, state, self.sex, self.traits, bool(onset <= days)))
        if v == 0 or onset <= days:  # nothing starts at the first visit, nor once the disease has begun
            return
        t = self.treatment
        if t.arm == "trial":
            if v == self.enrol_visit:
                t.enrolled_days = days
                for i in self.cfg.interventions:
                    if t.assigned[i.code]:
                        self._start(i, days, 0)
            return
        for i in self.cfg.interventions:
            d = self.draws[i.code]
            if not self._indicated(i, state):
                continue
            if i.code not in self.active:
                if d.uptake[v] < i.uptake:
                    self._start(i, days, 0)
                    t.assigned[i.code] = True
            elif (
                self.treatment.spans[self.active[i.code]].active_at(days)
                and self._dose_k[i.code] + 1 < len(i.effects)
                and d.escalate[v] < i.escalate
            ):
                self._change_dose(i, days, self._dose_k[i.code] + 1)


def treatment_rows(subject: Subject) -> list[tuple[float, dt.datetime, str, float]]:
    """The subject's START/STOP rows ``(days, time, code, numeric_value)`` in time order: a START at its visit's
    time (with the dose, NaN for none), a STOP at the start's time + the span's length in whole days, none after
    the last visit (ongoing at the end of the record); a dose change is a START alone."""
    t = subject.treatment
    if t is None or not t.recorded:
        return []
    at_visit = {v.days: v.time for v in subject.visits}
    rows: list[tuple[float, dt.datetime, str, float]] = []
    for span in t.spans:
        start_time = at_visit[span.start_days]
        rows.append((span.start_days, start_time, start_code(span.code), math.nan if span.dose is None else span.dose))
        changed = any(s.code == span.code and s.start_days == span.stop_days for s in t.spans)
        if span.stop_days is not None and span.stop_days <= subject.end_days and not changed:
            stop_time = start_time + dt.timedelta(days=round(span.stop_days - span.start_days))
            rows.append((span.stop_days, stop_time, stop_code(span.code), math.nan))
    return sorted(rows, key=lambda r: (r[0], r[2]))


__all__ = [
    "ANTIHYPERTENSIVE",
    "DEFAULT_INTERVENTIONS",
    "EXERCISE",
    "INDICATE_ON",
    "Intervention",
    "InterventionConfig",
    "Policy",
    "treatment_rows",
]
