"""Collation: a list of :class:`Timeline` -> one :class:`OmniBatch` (one stacked tensor per modality).

Masks follow the storage rule of ``schema.py``: NaN entries become 0 with mask False; variable-length
audio and video are zero-padded to the spec's maximum with a length mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .schema import MODALITIES, ModalityBatch, OmniBatch, Spec, Timeline


class Collator:
    """``collate_fn`` for the loader. ``clinical_codes`` is the vocabulary (id = position + 1; 0 = unknown)."""

    def __init__(self, specs: dict[str, Spec], clinical_codes: Sequence[str] = ()) -> None:
        self.specs = specs
        self.code_ids = {c: i + 1 for i, c in enumerate(clinical_codes)}

    @property
    def vocab_size(self) -> int:
        return len(self.code_ids) + 1

    def __call__(self, timelines: Sequence[Timeline]) -> OmniBatch:
        per: dict[str, dict[str, list]] = {}
        for b, tl in enumerate(timelines):
            for e, ev in enumerate(tl.events):
                for m in ev.measurements:
                    d = per.setdefault(m.modality, {"items": [], "subject": [], "event": [], "time": [], "age": []})
                    d["items"].append(m)
                    d["subject"].append(b)
                    d["event"].append(e)
                    d["time"].append(ev.time_days)
                    d["age"].append(ev.age_days)
        modalities = {}
        for modality in sorted(per, key=MODALITIES.index):
            d = per[modality]
            common = dict(
                subject=torch.tensor(d["subject"], dtype=torch.long),
                event=torch.tensor(d["event"], dtype=torch.long),
                time_days=torch.tensor(d["time"], dtype=torch.float32),
                age_days=torch.tensor(d["age"], dtype=torch.float32),
            )
            if modality == "clinical":
                value = torch.tensor([m.value for m in d["items"]], dtype=torch.float32)
                modalities[modality] = ModalityBatch(
                    modality,
                    torch.tensor([self.code_ids.get(m.code, 0) for m in d["items"]], dtype=torch.long),
                    mask=~torch.isnan(value),
                    value=torch.nan_to_num(value),
                    **common,
                )
            else:
                data, mask = stack_instances([m.data for m in d["items"]], self.specs[modality])
                modalities[modality] = ModalityBatch(modality, data, mask=mask, **common)
        return OmniBatch(
            keys=[tl.key for tl in timelines],
            modalities=modalities,
            num_events=torch.tensor([len(tl.events) for tl in timelines], dtype=torch.long),
            static=_table([tl.static for tl in timelines]),
            labels=_labels(timelines),
            padding=torch.tensor([tl.padding for tl in timelines], dtype=torch.bool),
        )


def stack_instances(arrays: Sequence[np.ndarray], spec: Spec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Canonical arrays of one modality -> ``data [N, *spec.shape()]`` and its mask (or None)."""
    full = spec.shape()
    if spec.variable_axis is not None:
        ax = spec.variable_axis
        out = np.zeros((len(arrays), *full), dtype=spec.dtype)
        lengths = np.array([a.shape[ax] for a in arrays])
        for i, a in enumerate(arrays):
            out[i][tuple(slice(0, s) for s in a.shape)] = a
        mask = torch.from_numpy(np.arange(full[ax])[None, :] < lengths[:, None])
        return torch.from_numpy(out), mask
    out = np.stack(arrays)
    if not spec.nan_is_missing:
        return torch.from_numpy(out), None
    finite = np.isfinite(out)
    mask = finite.any(-1) if spec.kind == "waveform" else finite  # waveform: a whole lead is present or not
    return torch.from_numpy(np.where(finite, out, 0).astype(spec.dtype, copy=False)), torch.from_numpy(mask)


def _table(rows: Sequence[dict[str, float]]) -> dict[str, torch.Tensor]:
    names = sorted({k for r in rows for k in r})
    return {k: torch.tensor([r.get(k, float("nan")) for r in rows], dtype=torch.float32) for k in names}


def _labels(timelines: Sequence[Timeline]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    names = sorted({k for tl in timelines for k in tl.labels})
    nan = float("nan")
    return {
        n: (
            torch.tensor([tl.labels[n].value if n in tl.labels else nan for tl in timelines]),
            torch.tensor([tl.labels[n].time_days if n in tl.labels else nan for tl in timelines]),
        )
        for n in names
    }
