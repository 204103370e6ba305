"""``omnimodal-shard``: build validated, pseudonymised shards from a cohort's tables, or verify a shard folder.

    omnimodal-shard --subjects subjects.csv --events events.csv --labels labels.csv --out shards/
    omnimodal-shard --config build.yaml --spec ecg.rate_hz=500 --time-format '%d/%m/%Y %H:%M' --strict
    omnimodal-shard --meds meds_dataset/ [--subjects consent.csv] [--events more_files.csv] --out shards/
    omnimodal-shard export-meds --subjects subjects.csv --events events.csv [--labels labels.csv] --out meds/
    omnimodal-shard verify shards/
    omnimodal-shard --config build.yaml --out shards/ --part 3/16    # share 3 of 16 into shards/parts/part-3-of-16/
    omnimodal-shard merge shards/                                     # the 16 parts -> shards/, as one build writes it

The secret for keyed subject hashes comes from ``$OMNIMODAL_SHARD_SECRET`` or ``secret:`` in the config
file, never from the command line (it would show in the process list and shell history). Exit codes: 0 done,
1 ``verify`` found problems, 2 bad input (named on stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

import yaml

from ..schema import DataError, default_specs
from .builder import BuildConfig, build_shards, window_policies
from .parts import build_part, merge_parts, parse_part, part_folder

#: the type each BuildConfig field must have in a config file
_TYPES: dict[str, tuple[type, ...]] = {
    "subjects": (str, type(None)),
    "events": (str, type(None)),
    "out": (str,),
    "meds": (str, type(None)),
    "labels": (str, type(None)),
    "secret": (str, type(None)),
    "specs": (dict,),
    "strict": (bool,),
    "workers": (int,),
    "max_samples_per_shard": (int,),
    "max_shard_bytes": (int,),
    "split_fractions": (list, tuple),
    "time_format": (str, type(None)),
    "windows": (dict,),
    "part": (str, type(None)),
}


def parse_value(text: str) -> Any:
    """A ``--spec`` value: JSON (``500``, ``1e3``, ``[32,32,32]``, ``"RAS"``), else YAML (``[I, II]``), else
    the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_spec_overrides(
    items: list[str], flag: str = "--spec", example: str = "ecg.rate_hz=500"
) -> dict[str, dict[str, Any]]:
    """``["ecg.rate_hz=500", "mri.size=[32,32,32]"]`` -> ``{"ecg": {"rate_hz": 500}, "mri": {...}}`` (also the
    ``--window`` values)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        modality, dot, fld = name.partition(".")
        if not sep or not dot or not modality or not fld:
            raise DataError(f"{flag} {item!r} is not MODALITY.FIELD=VALUE", hint=f"e.g. {flag} {example}")
        out.setdefault(modality, {})[fld] = parse_value(value)
    return out


def check_config(values: dict[str, Any], where: str) -> None:
    """Refuse unknown keys, values of the wrong type and spec overrides that do not fit their spec's fields
    (:func:`datamodules.specs.replace_fields`), naming the key."""
    known = {f.name for f in dataclasses.fields(BuildConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise DataError(f"unknown key(s) {unknown}", where=where, hint=f"known keys: {sorted(known)}")
    for k, v in values.items():
        types = _TYPES.get(k, (object,))
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise DataError(
                f"{k} = {v!r} is a {type(v).__name__}, expected {' or '.join(t.__name__ for t in types)}", where=where
            )
    specs = values.get("specs", {})
    bad = [m for m, f in specs.items() if not isinstance(f, dict)]
    if bad:
        raise DataError(
            f"specs.{bad[0]} must map field names to values", where=where, hint="e.g. specs: {ecg: {rate_hz: 500}}"
        )
    windows = values.get("windows", {})
    bad = [m for m, f in windows.items() if not isinstance(f, dict)]
    if bad:
        raise DataError(
            f"windows.{bad[0]} must map policy fields to values",
            where=where,
            hint="e.g. windows: {wearable: {min_coverage: 0.5}}",
        )
    if values.get("part") is not None:
        parse_part(values["part"], where)
    try:
        specs = default_specs(**specs)  # type-checks each field (datamodules.specs.replace_fields)
        window_policies(BuildConfig(windows=windows), specs)
    except DataError as err:
        raise DataError(f"{err.where}: {err.reason}" if err.where else err.reason, where=where, hint=err.hint) from None


def config_from_args(argv: list[str] | None = None) -> BuildConfig:
    p = argparse.ArgumentParser(
        prog="omnimodal-shard",
        description=__doc__.split("\n\n")[0],
        epilog="omnimodal-shard verify DIR checks a shard folder (see verify --help); omnimodal-shard "
        "export-meds writes the tables as a MEDS dataset (see export-meds --help); omnimodal-shard merge OUT joins "
        "the parts built with --part (see merge --help)",
    )
    p.add_argument("--config", help="YAML/JSON file with any BuildConfig field (subjects, events, specs, secret, ...)")
    p.add_argument("--meds", help="a MEDS v0.4 dataset root: subjects and clinical events (and files) come from it")
    p.add_argument("--subjects", help="subjects table; with --meds optional: subject_id, consent (withdrawals)")
    p.add_argument("--events", help="events table; with --meds optional: more events (files) joined on subject_id")
    p.add_argument("--labels")
    p.add_argument("--out")
    p.add_argument("--workers", type=int)
    p.add_argument("--max-samples-per-shard", type=int)
    p.add_argument("--strict", action="store_true", default=None, help="stop at the first bad row")
    p.add_argument(
        "--part",
        metavar="I/N",
        help="build only share I of N (I from 1) of the subjects, chosen by key, into OUT/parts/part-I-of-N/; "
        "`omnimodal-shard merge OUT` joins the N parts (one per task of a SLURM array: scripts/slurm/shard.sbatch)",
    )
    p.add_argument(
        "--time-format",
        help="a strftime format times may have besides ISO 8601, e.g. '%%d/%%m/%%Y %%H:%%M' (nothing else is guessed)",
    )
    p.add_argument(
        "--spec",
        action="append",
        default=[],
        metavar="MODALITY.FIELD=VALUE",
        help="override a canonical spec field, e.g. ecg.rate_hz=500 (repeatable; values as JSON)",
    )
    p.add_argument(
        "--window",
        action="append",
        default=[],
        metavar="MODALITY.FIELD=VALUE",
        help="override a window policy field (length_s, hop_s, max_windows, select, min_coverage, max_read_s), "
        "e.g. wearable.min_coverage=0.5 or ecg.max_windows=null (repeatable)",
    )
    a = p.parse_args(argv)
    values: dict[str, Any] = {}
    if a.config:
        try:
            with open(a.config) as f:
                values = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise DataError(f"cannot read the config ({exc})", where=a.config) from None
        if not isinstance(values, dict):
            raise DataError("the config must map BuildConfig fields to values", where=a.config)
        check_config(values, a.config)
    for k in (
        "meds",
        "subjects",
        "events",
        "labels",
        "out",
        "workers",
        "max_samples_per_shard",
        "strict",
        "time_format",
        "part",
    ):
        if getattr(a, k) is not None:
            values[k] = getattr(a, k)
    if a.spec:
        specs = values.setdefault("specs", {})
        for m, fields in parse_spec_overrides(a.spec).items():
            specs.setdefault(m, {}).update(fields)
    if a.window:
        windows = values.setdefault("windows", {})
        for m, fields in parse_spec_overrides(a.window, "--window", "wearable.min_coverage=0.5").items():
            windows.setdefault(m, {}).update(fields)
    flags = " ".join(f for f, given in (("--spec", a.spec), ("--window", a.window)) if given)
    check_config(values, flags or a.config or "the command line")
    needed = ("out",) if values.get("meds") else ("subjects", "events", "out")
    missing = [k for k in needed if not values.get(k)]
    if missing:
        p.error(f"missing {', '.join('--' + k for k in missing)} (or give them in --config)")
    return BuildConfig(**values)


def verify(argv: list[str]) -> int:
    """``omnimodal-shard verify DIR``: every shard's bytes, sha256 and sample count, every member decoded and
    validated; prints each problem (shard, key, member) and exits 1 if there is any."""
    p = argparse.ArgumentParser(prog="omnimodal-shard verify", description=verify.__doc__.split(";")[0])
    p.add_argument("dir", help="a shard folder written by omnimodal-shard")
    a = p.parse_args(argv)
    from ..loader import verify_folder  # noqa: PLC0415 - torch and the decoders only for this command

    t0 = time.perf_counter()
    passed, problems = verify_folder(a.dir)
    for problem in problems:
        print(f"omnimodal-shard verify: {problem}", file=sys.stderr)
    verdict = f"{len(problems)} problem(s)" if problems else "OK"
    print(f"{a.dir}: {verdict}; {passed} samples passed every check in {time.perf_counter() - t0:.1f}s")
    return 1 if problems else 0


def export_meds(argv: list[str]) -> int:
    """``omnimodal-shard export-meds``: subjects/events/labels tables -> a MEDS v0.4 dataset (datamodules.meds)."""
    p = argparse.ArgumentParser(prog="omnimodal-shard export-meds", description=export_meds.__doc__.split(": ")[1])
    p.add_argument("--subjects", required=True)
    p.add_argument("--events", required=True)
    p.add_argument("--labels", help="labels table: written as MEDS label files (labels/NAME.parquet)")
    p.add_argument("--out", required=True, help="the MEDS dataset root to write (must be empty or absent)")
    p.add_argument("--time-format", help="as for a build: a strftime format times may have besides ISO 8601")
    p.add_argument("--dataset-name", help="dataset.json dataset_name (default: the subjects table's folder name)")
    p.add_argument("--dataset-version", default="1.0", help="dataset.json dataset_version (default 1.0)")
    a = p.parse_args(argv)
    from ..meds_export import write_meds  # noqa: PLC0415

    t0 = time.perf_counter()
    info = write_meds(
        a.subjects,
        a.events,
        a.out,
        a.labels,
        time_format=a.time_format,
        dataset_name=a.dataset_name,
        dataset_version=a.dataset_version,
    )
    print(f"{info.summary()}\nwrote the MEDS dataset {a.out} in {time.perf_counter() - t0:.1f}s")
    return 0


def merge(argv: list[str]) -> int:
    """``omnimodal-shard merge OUT``: join the N parts built with ``--part I/N --out OUT`` into OUT, byte-identical to
    a one-machine build (datamodules.shards.parts); the parts are removed once merged."""
    p = argparse.ArgumentParser(prog="omnimodal-shard merge", description=merge.__doc__.split(": ")[1])
    p.add_argument("out", help="the --out of the part builds (their parts are in OUT/parts/)")
    p.add_argument("--keep-parts", action="store_true", help="keep OUT/parts/ after the merge")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    report, n = merge_parts(a.out, keep_parts=a.keep_parts)
    print(report.summary())
    print(
        f"merged {n} parts: wrote {report.samples} samples to {a.out} in {time.perf_counter() - t0:.1f}s "
        "(index.json, report.md)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["verify"]:
            return verify(argv[1:])
        if argv[:1] == ["export-meds"]:
            return export_meds(argv[1:])
        if argv[:1] == ["merge"]:
            return merge(argv[1:])
        cfg = config_from_args(argv[1:] if argv[:1] == ["build"] else argv)
        t0 = time.perf_counter()
        report = build_part(cfg) if cfg.part else build_shards(cfg)
    except DataError as exc:
        print(f"omnimodal-shard: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    took = f"in {time.perf_counter() - t0:.1f}s"
    if cfg.part:
        i, n = parse_part(cfg.part)
        print(
            f"part {i}/{n}: wrote {report.samples} samples to {part_folder(cfg.out, i, n)} {took}; once all {n} "
            f"parts are built: omnimodal-shard merge {cfg.out}"
        )
    else:
        print(f"wrote {report.samples} samples to {cfg.out} {took} (index.json, report.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
