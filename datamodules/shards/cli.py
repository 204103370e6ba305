"""``omnimodal-shard``: build validated, pseudonymised shards from a cohort's tables.

    omnimodal-shard --subjects subjects.csv --events events.csv --labels labels.csv --out shards/
    omnimodal-shard --config build.yaml --spec ecg.rate_hz=500 --strict

The secret for keyed subject hashes comes from ``$OMNIMODAL_SHARD_SECRET`` or ``secret:`` in the config
file, never from the command line (it would show in the process list and shell history).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

import yaml

from ..schema import DataError
from .builder import BuildConfig, build_shards


def parse_spec_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["ecg.rate_hz=500", "mri.size=[32,32,32]"]`` -> ``{"ecg": {"rate_hz": 500}, "mri": {...}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        modality, dot, fld = name.partition(".")
        if not sep or not dot:
            raise DataError(f"--spec {item!r} is not MODALITY.FIELD=VALUE", hint="e.g. --spec ecg.rate_hz=500")
        out.setdefault(modality, {})[fld] = yaml.safe_load(value)
    return out


def config_from_args(argv: list[str] | None = None) -> BuildConfig:
    p = argparse.ArgumentParser(prog="omnimodal-shard", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML/JSON file with any BuildConfig field (subjects, events, specs, secret, ...)")
    p.add_argument("--subjects")
    p.add_argument("--events")
    p.add_argument("--labels")
    p.add_argument("--out")
    p.add_argument("--workers", type=int)
    p.add_argument("--max-samples-per-shard", type=int)
    p.add_argument("--strict", action="store_true", default=None, help="stop at the first bad row")
    p.add_argument("--spec", action="append", default=[], metavar="MODALITY.FIELD=VALUE",
                   help="override a canonical spec field, e.g. ecg.rate_hz=500 (repeatable)")
    a = p.parse_args(argv)
    values: dict[str, Any] = {}
    if a.config:
        with open(a.config) as f:
            values = yaml.safe_load(f) or {}
        known = {f.name for f in dataclasses.fields(BuildConfig)}
        if set(values) - known:
            raise DataError(f"unknown key(s) {sorted(set(values) - known)}", where=a.config,
                            hint=f"known keys: {sorted(known)}")
    for k in ("subjects", "events", "labels", "out", "workers", "max_samples_per_shard", "strict"):
        if getattr(a, k) is not None:
            values[k] = getattr(a, k)
    if a.spec:
        specs = values.setdefault("specs", {})
        for m, fields in parse_spec_overrides(a.spec).items():
            specs.setdefault(m, {}).update(fields)
    missing = [k for k in ("subjects", "events", "out") if not values.get(k)]
    if missing:
        p.error(f"missing {', '.join('--' + k for k in missing)} (or give them in --config)")
    return BuildConfig(**values)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config_from_args(argv)
        t0 = time.perf_counter()
        report = build_shards(cfg)
    except DataError as exc:
        print(f"omnimodal-shard: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"wrote {report.samples} samples to {cfg.out} in {time.perf_counter() - t0:.1f}s "
          f"(index.json, report.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
