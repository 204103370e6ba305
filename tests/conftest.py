"""Shared fixtures: a small synthetic cohort and its shards, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMNIMODAL_CACHE", str(Path(__file__).resolve().parent.parent / ".cache-tests"))

SECRET = "test-secret-0123456789abcdef"


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from datamodules.synthetic import synthesize_cohort

    out = tmp_path_factory.mktemp("cohort")
    synthesize_cohort(out, n_subjects=24, seed=7, workers=2)
    return out


def build(cohort: Path, out: Path, **kw) -> "BuildReport":  # noqa: F821
    from datamodules.shards.builder import BuildConfig, build_shards

    kw.setdefault("secret", SECRET)
    kw.setdefault("max_samples_per_shard", 4)
    return build_shards(BuildConfig(subjects=str(cohort / "subjects.csv"), events=str(cohort / "events.csv"),
                                    labels=str(cohort / "labels.csv"), out=str(out), **kw))


@pytest.fixture(scope="session")
def shards(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    build(cohort, out, workers=2)
    return out
