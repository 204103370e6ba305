"""Per-code statistics of clinical values: a centre and a scale per code of the clinical vocabulary, from one
split of a shard folder (the train split), for the clinical encoder's per-code value scaling.

A lab or vital sign arrives in its own unit (systolic pressure ~130 mmHg, creatinine ~1 mg/dL, a count of
positive nodes 0-50): a single log scale for every code squeezes the differences that matter (140 vs 160 mmHg
differ by 0.13 on ``log1p``). Each code's values are centred and scaled by their own statistics:

- ``robust`` (the default): median and IQR / 1.349 (the standard deviation of a normal with that IQR); where
  the IQR is 0 (a code that is mostly one value, e.g. 0 nodes), the standard deviation; where that is 0 too,
  1. Robust to the outliers and long tails of real clinical data (length of stay, counts, hormone
  receptor levels), which mean and standard deviation follow.
- ``standard``: mean and standard deviation (same fallback).

The id of a code is its position in the vocabulary + 1 (``datamodules.collate.Collator``); id 0 (unknown code)
and codes without a numeric value in the split get the identity (centre 0, scale 1). Memory is bounded: at
most ``max_values`` values per code are kept, a seeded uniform sample (reservoir) of all of them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .crop import CropConfig
from .loader import ShardDataset

METHODS = ("robust", "standard")
_IQR_TO_SD = 1.3489795  # the IQR of a standard normal


@dataclass(frozen=True)
class CodeValueStats:
    """``center``, ``scale`` and ``count`` (numeric values seen) per code id ``[len(codes) + 1]``."""

    codes: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    count: np.ndarray
    method: str = "robust"

    def of(self, code: str) -> tuple[float, float]:
        """``(center, scale)`` of one code (the identity for a code outside the vocabulary)."""
        i = self.codes.index(code) + 1 if code in self.codes else 0
        return float(self.center[i]), float(self.scale[i])


class _WholeSplit(ShardDataset):
    """The whole split in this process, whatever its rank: every rank computes the same statistics."""

    def slot(self) -> tuple[int, int]:
        return 0, 1


class _Reservoir:
    """A uniform sample of at most ``cap`` of the values offered (Algorithm R), seeded."""

    def __init__(self, cap: int, rng: np.random.Generator) -> None:
        self.cap, self.rng, self.seen, self.values = cap, rng, 0, []

    def add(self, v: float) -> None:
        self.seen += 1
        if len(self.values) < self.cap:
            self.values.append(v)
            return
        j = int(self.rng.integers(self.seen))
        if j < self.cap:
            self.values[j] = v


def center_scale(values: np.ndarray, method: str = "robust") -> tuple[float, float]:
    """One code's ``(center, scale)`` (module docstring); the identity for no values."""
    if method not in METHODS:
        raise ValueError(f"value scaling method {method!r}; use one of {list(METHODS)}")
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return 0.0, 1.0
    if method == "robust":
        q1, center, q3 = np.quantile(v, [0.25, 0.5, 0.75])
        scale = (q3 - q1) / _IQR_TO_SD
    else:
        center, scale = float(v.mean()), 0.0
    if not scale > 0:
        scale = float(v.std())
    return float(center), float(scale) if scale > 0 else 1.0


def code_value_stats(
    root: str | os.PathLike,
    codes: Sequence[str],
    split: str = "train",
    method: str = "robust",
    max_values: int = 100_000,
    seed: int = 0,
) -> CodeValueStats:
    """Per-code ``center``/``scale`` of the numeric clinical values in ``split`` of the shard folder ``root``,
    for the vocabulary ``codes`` (id = position + 1, as the collator numbers them). Every timeline of the split
    is read, only its clinical measurements decoded (checked as the loader checks them)."""
    if method not in METHODS:
        raise ValueError(f"value scaling method {method!r}; use one of {list(METHODS)}")
    if max_values < 1:
        raise ValueError(f"max_values must be >= 1, got {max_values}")
    ids = {c: i + 1 for i, c in enumerate(codes)}
    rng = np.random.default_rng(seed)
    pools = [_Reservoir(max_values, rng) for _ in range(len(ids) + 1)]
    for tl in _WholeSplit(root, split, shuffle=False, crop=CropConfig(random=False), modalities=["clinical"]):
        for ev in tl.events:
            for m in ev.measurements:
                i = ids.get(m.code or "", 0)
                if i and m.value == m.value:  # a code of the vocabulary, with a value (NaN: none)
                    pools[i].add(float(m.value))
    stats = [center_scale(np.asarray(p.values), method) if i else (0.0, 1.0) for i, p in enumerate(pools)]
    return CodeValueStats(
        codes=tuple(codes),
        center=np.array([c for c, _ in stats]),
        scale=np.array([s for _, s in stats]),
        count=np.array([p.seen for p in pools]),
        method=method,
    )


__all__ = ["CodeValueStats", "METHODS", "center_scale", "code_value_stats"]
