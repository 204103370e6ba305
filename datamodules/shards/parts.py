"""Building shards in parts (a SLURM job array: one part a task) and the merge that joins them into one folder.

``omnimodal-shard --part I/N --out OUT`` builds share I of N of the subjects into ``OUT/parts/part-I-of-N/``: the
subjects whose key (the keyed hash of their id; never the raw id) falls in the I-th of N equal ranges of the key
space. A build writes samples in key order, so part 1's subjects come first, then part 2's, and so on. Every part
reads and checks the whole tables (what the tables alone decide, rows rejected or consent withdrawn, is the same
in every part) and reads and encodes only its own subjects. A part folder holds its samples in shard tars and
``part.json``: the build's identity (the config that shapes the bytes, a digest of each input table, a tag of
the secret), the tables' findings, and each of its subjects' share of the report, in key order.

``omnimodal-shard merge OUT`` checks that the folders are the N parts of one build (all there, each complete,
the same N, identity and findings), then replays them in order through the writer of a one-machine build
(:class:`~datamodules.shards.builder.ShardFolder`). Shard boundaries depend on every sample before them, across
parts, so each sample's members are copied (not decoded) from the part's tars into the ``{split}-NNNNNN.tar``
where a one-machine build puts them, and the report is summed subject by subject in key order: ``OUT`` is
byte-identical to a one-machine build, ``index.json``, ``report.json`` and ``report.md`` included. The parts are
removed once merged (``keep_parts`` keeps them).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..schema import SCHEMA_VERSION, DataError, specs_to_json
from .builder import BuildConfig, Prepared, ShardFolder, SubjectResult, prepare, subject_results
from .format import INDEX_NAME, sha256_file, shard_file_problem, subject_key, tar_samples
from .report import BuildReport

PARTS_DIR = "parts"
MANIFEST = "part.json"
FORMAT = 1  # of part.json
_FOLDER = re.compile(r"part-([1-9][0-9]*)-of-([1-9][0-9]*)")
#: the build settings whose difference between parts changes the bytes (the rest: paths, workers, part)
_SHAPING = ("strict", "max_samples_per_shard", "max_shard_bytes", "split_fractions", "time_format")


def parse_part(text: Any, where: str = "--part") -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)``, with 1 <= I <= N; a :class:`DataError` naming ``where`` otherwise."""
    m = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", str(text))
    if not m:
        raise DataError(
            f"part {text!r} is not I/N", where=where, hint="e.g. --part 1/4 (part: 1/4 in a config): the first of 4"
        )
    i, n = int(m[1]), int(m[2])
    if not 1 <= i <= n:
        raise DataError(
            f"part {text!r} is out of range: I must be from 1 to N",
            where=where,
            hint="from a SLURM array --array=0-(N-1): --part $((SLURM_ARRAY_TASK_ID + 1))/$SLURM_ARRAY_TASK_COUNT "
            "(scripts/slurm/shard.sbatch)",
        )
    return i, n


def part_of(key: str, n: int) -> int:
    """The part (1..n) of a subject key: the n equal ranges of the key space, in key order."""
    return (int(key, 16) * n >> (4 * len(key))) + 1


def part_folder(out: str | os.PathLike, i: int, n: int) -> Path:
    return Path(out) / PARTS_DIR / f"part-{i}-of-{n}"


def build_part(cfg: BuildConfig) -> BuildReport:
    """Build part ``cfg.part`` of the subjects into ``part_folder(cfg.out, I, N)``; return the tables' findings
    plus this part's subjects (the report a merge sums)."""
    i, n = parse_part(cfg.part)
    prepared = prepare(cfg)
    folder = part_folder(cfg.out, i, n)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # a part without part.json is unfinished, whatever else it holds
    findings = copy.deepcopy(prepared.report.to_dict())  # before any subject of the part is added
    shards = ShardFolder(folder, cfg.max_samples_per_shard, cfg.max_shard_bytes, prepared.report)
    records = []
    with subject_results(cfg, prepared, [j for j in prepared.jobs if part_of(j.key, n) == i]) as results:
        for res in results:
            shards.add(res)
            records.append(res.to_record())
    manifest = {
        "format": FORMAT,
        "part": i,
        "of": n,
        "build": build_identity(cfg, prepared),
        "tables": findings,
        "descriptions": prepared.descriptions,
        "shards": shards.close(),
        "subjects": records,
    }
    tmp = folder / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest))
    os.replace(tmp, folder / MANIFEST)  # last: a part with part.json is complete
    return prepared.report


def build_identity(cfg: BuildConfig, prepared: Prepared) -> dict[str, Any]:
    """What a build's bytes depend on besides the code: the settings that shape them, each input table's sha256,
    and a tag of the secret (its keyed hash of a fixed text: equal for equal secrets, and says nothing of them)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "secret": subject_key("omnimodal-shard part: secret check", prepared.secret),
        "config": {
            "specs": specs_to_json(prepared.specs),
            "windows": {m: dataclasses.asdict(p) for m, p in prepared.windows.items()},
            **{k: getattr(cfg, k) for k in _SHAPING},
            "split_fractions": list(cfg.split_fractions),
        },
        "inputs": {
            k: _digest(Path(getattr(cfg, k))) for k in ("subjects", "events", "labels", "meds") if getattr(cfg, k)
        },
    }


def _digest(path: Path) -> str:
    """sha256 of a table file, or of every file of a folder (a MEDS dataset) with its relative path."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# The merge


@dataclass
class Part:
    folder: Path
    i: int
    n: int
    manifest: dict[str, Any]


def merge_parts(out: str | os.PathLike, keep_parts: bool = False) -> tuple[BuildReport, int]:
    """Join the parts in ``out/parts/`` into ``out`` (shards, ``index.json``, ``report.{json,md}``), exactly as a
    one-machine build writes it; remove the parts unless ``keep_parts``. Returns the report and the part count."""
    parts = find_parts(out)
    first = parts[0].manifest
    config = first["build"]["config"]
    shards = ShardFolder(
        Path(out), config["max_samples_per_shard"], config["max_shard_bytes"], BuildReport.from_dict(first["tables"])
    )
    for part in parts:
        for res in _results(part):
            shards.add(res)
    report = shards.finish(config["specs"], first["descriptions"])
    if not keep_parts:
        for part in parts:
            shutil.rmtree(part.folder)
        with contextlib.suppress(OSError):  # left if it holds anything else
            (Path(out) / PARTS_DIR).rmdir()
    return report, len(parts)


def find_parts(out: str | os.PathLike) -> list[Part]:
    """The parts of one build in ``out/parts/``, in order; a :class:`DataError` naming the folder if one is
    missing, unfinished, of another build (N, config, tables, secret) or a copy of another."""
    root = Path(out) / PARTS_DIR
    found: dict[tuple[int, int], Path] = {}
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        m = _FOLDER.fullmatch(d.name)
        if m and d.is_dir():
            found[int(m[1]), int(m[2])] = d
    if not found:
        done = f" ({Path(out) / INDEX_NAME} is there: merged already?)" if (Path(out) / INDEX_NAME).is_file() else ""
        raise DataError(
            f"no part folders (part-I-of-N) to merge{done}",
            where=str(root),
            hint=f"build the parts first: omnimodal-shard --part I/N --out {out} for I = 1..N "
            "(scripts/slurm/shard.sbatch builds one per array task)",
        )
    counts = sorted({n for _, n in found})
    if len(counts) > 1:
        examples = ", ".join(next(d.name for (_, m), d in sorted(found.items()) if m == n) for n in counts)
        raise DataError(
            f"parts of {len(counts)} builds with different N ({examples}, ...)",
            where=str(root),
            hint="remove the part folders of the build you do not want, then merge again",
        )
    n = counts[0]
    missing = [i for i in range(1, n + 1) if (i, n) not in found]
    if missing:
        raise DataError(
            f"{len(missing)} of the {n} parts missing: {', '.join(part_folder(out, i, n).name for i in missing)}",
            where=str(root),
            hint=f"build them with the same arguments as the others (omnimodal-shard --part I/{n}; SLURM array "
            f"task(s) {','.join(str(i - 1) for i in missing)}), then merge again",
        )
    parts = [Part(found[i, n], i, n, _manifest(found[i, n], i, n)) for i in range(1, n + 1)]
    for part in parts[1:]:
        diff = _differences(parts[0].manifest["build"], part.manifest["build"])
        if diff:
            raise DataError(
                f"built with {diff} than {parts[0].folder.name}",
                where=str(part.folder),
                hint="rebuild the parts that differ with the same config, tables and $OMNIMODAL_SHARD_SECRET as "
                "the others, then merge again",
            )
        if part.manifest["tables"] != parts[0].manifest["tables"]:
            raise DataError(
                f"its tables' findings (rows rejected, consent withdrawn, subjects in the table) differ from "
                f"{parts[0].folder.name}'s",
                where=str(part.folder),
                hint="the parts read different tables (given by other paths, or changed in between): rebuild every "
                "part from the same tables",
            )
    return parts


def _rebuild(i: int, n: int) -> str:
    return (
        f"rebuild it (omnimodal-shard --part {i}/{n} with the same arguments as the other parts; SLURM array task "
        f"{i - 1}), then merge again"
    )


def _manifest(folder: Path, i: int, n: int) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(
            f"no {MANIFEST}: the part's build did not finish (or failed)", where=str(folder), hint=_rebuild(i, n)
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{MANIFEST} cannot be read ({exc})", where=str(folder), hint=_rebuild(i, n)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(
            f"{MANIFEST} is not a part manifest of this omnimodal-shard (format {FORMAT})",
            where=str(folder),
            hint=_rebuild(i, n),
        )
    if (manifest.get("part"), manifest.get("of")) != (i, n):
        raise DataError(
            f"holds part {manifest.get('part')}/{manifest.get('of')} (its {MANIFEST}), not {i}/{n}: a copy of "
            "another part, or a renamed folder",
            where=str(folder),
            hint=f"remove it and {_rebuild(i, n)}",
        )
    return manifest


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    """How build identity ``b`` differs from ``a``, in words ("another events table and other settings (...)")."""
    words = []
    if a.get("secret") != b.get("secret"):
        words.append("another pseudonymisation secret")
    ins_a, ins_b = a.get("inputs", {}), b.get("inputs", {})
    words += [
        f"another {k} {'dataset' if k == 'meds' else 'table'}"
        for k in sorted({*ins_a, *ins_b})
        if ins_a.get(k) != ins_b.get(k)
    ]
    cfg_a, cfg_b = a.get("config", {}), b.get("config", {})
    keys = [k for k in sorted({*cfg_a, *cfg_b}) if cfg_a.get(k) != cfg_b.get(k)]
    if a.get("schema_version") != b.get("schema_version"):
        keys.insert(0, "schema_version")
    if keys:
        words.append(f"other settings ({', '.join(keys)})")
    return " and ".join(words)


def _results(part: Part) -> Iterator[SubjectResult]:
    """The part's subjects' results in key order, each sample's members read back from the part's shards."""
    streams = {split: _samples(part, entries) for split, entries in part.manifest["shards"].items()}
    for rec in part.manifest["subjects"]:
        members = None
        if rec["sample"]:
            sample = next(streams[rec["split"]], None)
            if sample is None or sample["__key__"] != rec["key"]:
                found = f"key {sample['__key__']}" if sample else "no more samples"
                raise DataError(
                    f"its {rec['split']} shards do not hold the samples its {MANIFEST} lists (expected key "
                    f"{rec['key']}, found {found})",
                    where=str(part.folder),
                    hint=_rebuild(part.i, part.n),
                )
            members = {k: v for k, v in sample.items() if not k.startswith("__")}
        yield SubjectResult.from_record(rec, members)
    for split, rest in streams.items():
        extra = next(rest, None)
        if extra is not None:
            raise DataError(
                f"its {split} shards hold a sample its {MANIFEST} does not list (key {extra['__key__']})",
                where=str(part.folder),
                hint=_rebuild(part.i, part.n),
            )


def _samples(part: Part, entries: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The samples of a part's shards of one split, in order, each shard checked against ``part.json`` first."""
    for entry in entries:
        path = part.folder / entry["name"]
        problem = shard_file_problem(path, entry, sha256=True)
        if problem:  # worded for a shard folder's index: here part.json lists the shard
            problem = problem.replace(INDEX_NAME, MANIFEST)
            raise DataError(f"{entry['name']}: {problem}", where=str(part.folder), hint=_rebuild(part.i, part.n))
        try:
            yield from tar_samples(path)
        except DataError as exc:
            raise DataError(
                f"{exc.where}: {exc.reason}", where=str(part.folder), hint=_rebuild(part.i, part.n)
            ) from None
