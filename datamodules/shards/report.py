"""The build report: what went into the shards, what was left out and why (keys only, never raw ids)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..windows import REASONS, Account, tally


@dataclass
class Rejection:
    """One table row left out of the shards: ``row`` is the table's 1-based data row (the header not
    counted: row 1 is line 2 of a CSV); ``reason`` is its kind, then details in brackets."""

    table: str
    row: int
    key: str | None
    modality: str | None
    reason: str

    def describe(self) -> str:
        who = f", subject key {self.key}" if self.key else ""
        what = f", {self.modality}" if self.modality else ""
        return f"{self.table} row {self.row}{who}{what}: {self.reason}"


@dataclass
class BuildReport:
    subjects_in_table: int = 0
    splits: Counter = field(default_factory=Counter)
    modalities: Counter = field(default_factory=Counter)
    rejected: list[Rejection] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)  # keys of subjects excluded for withdrawn consent
    no_events: list[str] = field(default_factory=list)  # keys of subjects with no valid event
    notes: list[str] = field(default_factory=list)  # warnings that did not reject a row
    #: per time-based modality: what its window policy kept and left out of the recordings read
    windows: dict[str, Account] = field(default_factory=dict)
    #: a MEDS build: what the dataset held and what was not used (``datamodules.meds.MedsCohort.counts``)
    meds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Every field as JSON data, exactly (``to_json`` is what report.json shows); :meth:`from_dict` reads it."""
        return {
            **{f.name: getattr(self, f.name) for f in fields(self)},
            "splits": dict(self.splits),
            "modalities": dict(self.modalities),
            "rejected": [asdict(r) for r in self.rejected],
            "windows": {m: asdict(a) for m, a in self.windows.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> BuildReport:
        """The report :meth:`to_dict` wrote, back from JSON (a part's, merged by ``datamodules.shards.parts``)."""
        return cls(
            subjects_in_table=d["subjects_in_table"],
            splits=Counter(d["splits"]),
            modalities=Counter(d["modalities"]),
            rejected=[Rejection(**r) for r in d["rejected"]],
            withdrawn=list(d["withdrawn"]),
            no_events=list(d["no_events"]),
            notes=list(d["notes"]),
            windows={m: Account(**a) for m, a in d["windows"].items()},
            meds=d["meds"],
        )

    def add_windows(self, modality: str, account: Account) -> None:
        tally(self.windows, modality, account)

    @property
    def samples(self) -> int:
        return sum(self.splits.values())

    def to_json(self) -> dict:
        return {
            "subjects_in_table": self.subjects_in_table,
            "samples": self.samples,
            "splits": dict(sorted(self.splits.items())),
            "modalities": dict(sorted(self.modalities.items())),
            "withdrawn_consent": sorted(self.withdrawn),
            "no_valid_events": sorted(self.no_events),
            "rejected": [asdict(r) for r in self.rejected],
            "notes": self.notes,
            "windows": {m: a.to_json() for m, a in sorted(self.windows.items())},
            **({"meds": self.meds} if self.meds else {}),
        }

    def summary(self) -> str:
        kinds = Counter(r.reason.split(" [")[0] for r in self.rejected)
        first: dict[str, Rejection] = {}
        for r in self.rejected:
            first.setdefault(r.reason.split(" [")[0], r)
        lines = [
            f"subjects in table: {self.subjects_in_table}; samples written: {self.samples} "
            + " ".join(f"{k}={v}" for k, v in sorted(self.splits.items())),
            "measurements: " + ", ".join(f"{m}={n}" for m, n in sorted(self.modalities.items())),
            f"excluded for withdrawn consent: {len(self.withdrawn)}; without a valid event: {len(self.no_events)}",
            f"rejected rows: {len(self.rejected)}"
            + "".join(
                f"\n  {kind}: {n} (first: {first[kind].table} row {first[kind].row})" for kind, n in kinds.most_common()
            ),
        ]
        if self.meds:
            m = self.meds
            lines.append(
                f"MEDS {m['root']}: {m['rows']} rows of {m['subjects']} subjects; {m['clinical_rows']} clinical rows"
                f" and {m['files']} files read as events; {m['static_rows']} static rows not used"
                f" ({len(m['static_codes'])} codes); {m.get('text_values_not_used', 0)} text values not used;"
                f" {m['without_birth']} subjects without {'MEDS_BIRTH'} (rejected); {m['without_split_row']}"
                " without a split row (hash split)"
            )
        if self.windows:
            lines.append("recordings cut into windows (duration in files = kept + left out):")
            for m, a in sorted(self.windows.items()):
                left = sum(a.left_out_s.values())
                lines.append(
                    f"  {m}: {a.recordings} recordings, {_hours(a.duration_s)} in files, {_hours(a.kept_s)} kept, "
                    f"{_hours(left)} left out; {a.windows_kept} windows kept, {sum(a.windows_dropped.values())} dropped"
                )
        return "\n".join(lines)

    def windows_md(self) -> list[str]:
        """The accounting table of report.md: per modality and reason, the duration and windows left out."""
        if not self.windows:
            return []
        md = [
            "## Windows: what long recordings kept and left out",
            "",
            "Each kept window is its own measurement at recording start + offset. Duration in the files = kept +"
            " left out; a part left out by several dropped windows counts once, under the first reason listed.",
            "",
            "| modality | recordings | in files (h) | kept (h) | windows kept | left out: reason | (h) | windows |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m, a in sorted(self.windows.items()):
            reasons = [k for k in REASONS if k in a.left_out_s or k in a.windows_dropped] or ["-"]
            for j, k in enumerate(reasons):
                head = (
                    f"| {m} | {a.recordings} | {a.duration_s / 3600:.3f} | {a.kept_s / 3600:.3f} | {a.windows_kept} "
                    if j == 0
                    else "| | | | | "
                )
                what = "-" if k == "-" else REASONS[k]
                hours = "-" if k == "-" else f"{a.left_out_s.get(k, 0.0) / 3600:.3f}"
                md.append(head + f"| {what} | {hours} | {a.windows_dropped.get(k, 0) if k != '-' else '-'} |")
        return [*md, ""]

    def write(self, out: Path) -> None:
        (out / "report.json").write_text(json.dumps(self.to_json(), indent=1, sort_keys=True))
        md = ["# Shard build report", "", "```", self.summary(), "```", ""]
        if self.withdrawn:
            md += ["## Excluded: withdrawn consent", "", *[f"- `{k}`" for k in sorted(self.withdrawn)], ""]
        if self.rejected:
            md += [
                "## Rejected rows",
                "",
                "Rows are data rows, the header not counted (row 1 is line 2 of a CSV).",
                "",
                "| table | row | subject key | modality | reason |",
                "|---|---|---|---|---|",
            ]
            md += [
                f"| {r.table} | {r.row} | `{r.key or '-'}` | {r.modality or '-'} | {r.reason} |" for r in self.rejected
            ]
            md.append("")
        md += self.windows_md()
        if self.notes:
            md += ["## Notes", "", *[f"- {n}" for n in self.notes], ""]
        (out / "report.md").write_text("\n".join(md))


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{seconds:.0f} s"
