"""A fixed batch for the old-checkpoint tests (tests/test_registry.py): only APIs that existed before the
modality registry, so the code of then and of now build the same batch (tests/assets/legacy9/make.py)."""

from __future__ import annotations

import numpy as np


def legacy_timelines(specs: dict, codes: list[str], modalities: list[str]) -> list:
    """Three people, 2-3 events each, with the ``modalities`` that have files (random canonical arrays from
    a fixed seed) and clinical rows; shapes and dtypes from ``specs``."""
    from datamodules.schema import Event, Measurement, Timeline

    rng = np.random.default_rng(123)
    people = []
    for p in range(3):
        events = []
        for e in range(2 + p % 2):
            ms = []
            for m in modalities:
                if m == "clinical":
                    ms.append(Measurement("clinical", code=codes[(p + e) % len(codes)], value=float(rng.normal())))
                    continue
                shape = specs[m].shape()
                data = (
                    rng.integers(0, 256, shape, dtype=np.uint8)
                    if specs[m].dtype == "uint8"
                    else rng.standard_normal(shape).astype(np.float32)
                )
                ms.append(Measurement(m, data))
            events.append(Event(float(200 * e + 30 * p), float(365.25 * (55 + 5 * p) + 200 * e), ms))
        people.append(Timeline(key=f"person{p}", static={"sex_male": float(p % 2)}, events=events))
    return people
