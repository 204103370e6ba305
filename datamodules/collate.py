"""Collation: a list of :class:`Timeline` -> one :class:`OmniBatch` (one stacked tensor per modality).

Masks follow the storage rule of ``schema.py``: NaN entries become 0 with mask False; variable-length
audio and video are zero-padded to the spec's maximum with a length mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import get_worker_info

from .schema import MODALITIES, DataError, ModalityBatch, OmniBatch, Spec, Timeline


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
    """Canonical arrays of one modality -> ``data [N, *spec.shape()]`` and its mask (or None). Each output is
    written once, in place (:func:`batch_tensor`: in a DataLoader worker, straight into shared memory)."""
    full = (len(arrays), *spec.shape())
    data, out = batch_tensor(full, spec.dtype)
    if spec.variable_axis is not None:
        ax = spec.variable_axis
        lengths = np.array([a.shape[ax] for a in arrays])
        before = (slice(None),) * ax
        for i, a in enumerate(arrays):
            if a.shape[:ax] + a.shape[ax + 1 :] != full[1 : ax + 1] + full[ax + 2 :] or a.shape[ax] > full[ax + 1]:
                raise DataError(f"{spec.kind} instance of shape {a.shape}, its spec's is {full[1:]}", where="collate")
            out[(i, *before, slice(0, a.shape[ax]))] = a
            out[(i, *before, slice(a.shape[ax], None))] = 0  # the padding
        mask, m = batch_tensor((len(arrays), full[ax + 1]), "bool")
        np.less(np.arange(full[ax + 1])[None, :], lengths[:, None], out=m)
        return data, mask
    np.stack(arrays, out=out)
    if not spec.nan_is_missing:
        return data, None
    if spec.kind == "waveform":  # a whole lead is present or not
        finite = np.isfinite(out)
        mask, m = batch_tensor(full[:-1], "bool")
        np.any(finite, axis=-1, out=m)
    else:
        mask, finite = batch_tensor(full, "bool")
        np.isfinite(out, out=finite)
    np.copyto(out, 0, where=~finite)
    return data, mask


def batch_tensor(shape: tuple[int, ...], dtype: str) -> tuple[torch.Tensor, np.ndarray]:
    """An uninitialised tensor for a batch, and a NumPy view of it to fill. In a DataLoader worker it is made in
    shared memory, as torch's ``default_collate`` makes its batches, so sending it to the main process copies
    nothing (torch would otherwise copy every tensor of the batch into shared memory)."""
    t = torch.from_numpy(np.empty(0, dtype=dtype))
    if get_worker_info() is None:
        t = torch.empty(shape, dtype=t.dtype)
    else:
        t = t.new(t._typed_storage()._new_shared(math.prod(shape))).view(shape)
    return t, t.numpy()


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
