"""The built-in synthetic cohort as ready shards: synthesized and sharded on first use, then cached."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .shards.builder import BuildConfig, build_shards
from .shards.format import INDEX_NAME

if TYPE_CHECKING:
    from .synthetic.interventions import InterventionConfig

#: Public on purpose: the synthetic cohort has no real identifiers to protect. Real cohorts use a
#: secret of their own in $OMNIMODAL_SHARD_SECRET.
DEMO_SECRET = "omnimodal-synthetic-demo-cohort"


def cache_dir() -> Path:
    return Path(os.environ.get("OMNIMODAL_CACHE", Path.home() / ".cache" / "omnimodal"))


def cohort_fingerprint(interventions: InterventionConfig | None = None) -> str:
    """What the demo cohort's files and shards depend on besides (n, seed): the generator version and its render
    parameters, the shards' schema version, every declared modality with its spec and visit rate, and the
    builder's window policies; with ``interventions`` (an ``InterventionConfig``), that too. A change (a new
    modality, say) builds a new cached cohort."""
    import dataclasses  # noqa: PLC0415
    import hashlib  # noqa: PLC0415

    from .schema import SCHEMA_VERSION, default_specs, dumps, specs_to_json  # noqa: PLC0415
    from .shards.builder import BuildConfig, window_policies  # noqa: PLC0415
    from .synthetic.cohort import render_parameters  # noqa: PLC0415
    from .synthetic.state import GENERATOR_VERSION, visit_rates  # noqa: PLC0415

    specs = default_specs()
    key = {
        "generator": GENERATOR_VERSION,
        "schema": SCHEMA_VERSION,
        "render": render_parameters(),
        "specs": specs_to_json(specs),
        "visit_rates": visit_rates(),
        "windows": {m: dataclasses.asdict(p) for m, p in window_policies(BuildConfig("", "", ""), specs).items()},
    }
    if interventions is not None:
        key["interventions"] = interventions.to_json()
    return hashlib.sha256(dumps(key)).hexdigest()[:10]


def demo_build_config(cohort: Path, out: Path, workers: int, max_samples_per_shard: int = 16, **kw: Any) -> BuildConfig:
    """The demo cohort's shard build: its tables in ``cohort`` into ``out`` (``kw``: more ``BuildConfig`` fields)."""
    return BuildConfig(
        subjects=str(cohort / "subjects.csv"),
        events=str(cohort / "events.csv"),
        labels=str(cohort / "labels.csv"),
        out=str(out),
        secret=DEMO_SECRET,
        workers=workers,
        max_samples_per_shard=max_samples_per_shard,
        **kw,
    )


def demo_shards(
    n_subjects: int = 128,
    seed: int = 0,
    workers: int = 2,
    root: str | os.PathLike | None = None,
    max_samples_per_shard: int = 16,
    interventions: InterventionConfig | None = None,
) -> Path:
    """Shard folder of the synthetic cohort ``(n_subjects, seed)`` (with ``interventions``, an
    ``InterventionConfig``: that cohort, cached apart); built once, then reused."""
    from .synthetic import synthesize_cohort  # noqa: PLC0415 - only needed on first use

    base = Path(root) if root else cache_dir() / f"synthetic-n{n_subjects}-s{seed}-{cohort_fingerprint(interventions)}"
    shards = base / "shards"
    if (shards / INDEX_NAME).is_file():
        return shards
    cohort = base / "cohort"
    print(
        f"building the synthetic demo cohort ({n_subjects} people, seed {seed}) and its shards in {base}: "
        "first run only, a few minutes on 2 cores; later runs reuse them",
        flush=True,
    )
    if not (cohort / "cohort.json").is_file():
        shutil.rmtree(cohort, ignore_errors=True)
        synthesize_cohort(cohort, n_subjects=n_subjects, seed=seed, workers=workers, interventions=interventions)
    tmp = base / "shards.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    build_shards(demo_build_config(cohort, tmp, workers, max_samples_per_shard=max_samples_per_shard))
    shutil.rmtree(shards, ignore_errors=True)
    tmp.rename(shards)  # complete folders only: an interrupted build is redone, never half-used
    return shards
