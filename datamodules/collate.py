"""Collation: a list of :class:`Timeline` -> one :class:`OmniBatch` (one stacked tensor per modality).

Variable-length audio and video are zero-padded to the spec's maximum with a length mask. The missing entries of
ECG, wearable and omics (NaN by the storage rule of ``schema.py``) cross to the device as NaN, without a mask:
the encoder masks them there (:meth:`encoders.base.Encoder.forward`), which costs a GPU nothing and a loader
worker 13% of its time (``isfinite``, the per-lead ``any``, ``nan_to_num`` and a boolean array as large as
the wearable data, each batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from . import arena
from .schema import MODALITIES, DataError, ModalityBatch, OmniBatch, Spec, Timeline

arena.register(OmniBatch)


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
                    d = per.get(m.modality)
                    if d is None:
                        d = per[m.modality] = {"items": [], "subject": [], "event": [], "time": [], "age": []}
                    d["items"].append(m)
                    d["subject"].append(b)
                    d["event"].append(e)
                    d["time"].append(ev.time_days)
                    d["age"].append(ev.age_days)
        alloc = arena.Allocator()  # in a DataLoader worker: the whole batch in one reusable shared buffer
        modalities = {}
        for modality in sorted(per, key=MODALITIES.index):
            d = per[modality]
            common = dict(
                subject=alloc.tensor(d["subject"], np.int64),
                event=alloc.tensor(d["event"], np.int64),
                time_days=alloc.tensor(d["time"], np.float32),
                age_days=alloc.tensor(d["age"], np.float32),
            )
            if modality == "clinical":
                value, v = alloc.empty((len(d["items"]),), np.float32)
                v[:] = [m.value for m in d["items"]]
                mask, observed = alloc.empty(v.shape, np.bool_)
                np.logical_not(np.isnan(v), out=observed)
                np.nan_to_num(v, copy=False)
                modalities[modality] = ModalityBatch(
                    modality,
                    alloc.tensor([self.code_ids.get(m.code, 0) for m in d["items"]], np.int64),
                    mask=mask,
                    value=value,
                    **common,
                )
            else:
                data, mask = stack_instances([m.data for m in d["items"]], self.specs[modality], alloc)
                modalities[modality] = ModalityBatch(modality, data, mask=mask, **common)
        return alloc.seal(
            OmniBatch(
                keys=[tl.key for tl in timelines],
                modalities=modalities,
                num_events=alloc.tensor([len(tl.events) for tl in timelines], np.int64),
                static=_table([tl.static for tl in timelines], alloc),
                labels=_labels(timelines, alloc),
                padding=alloc.tensor([tl.padding for tl in timelines], np.bool_),
            )
        )


def stack_instances(
    arrays: Sequence[np.ndarray], spec: Spec, alloc: arena.Allocator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Canonical arrays of one modality -> ``data [N, *spec.shape()]`` and its length mask (None where the spec
    has no variable axis; NaN entries stay NaN). Each output is
    written once, in place, where ``alloc`` makes it (:class:`~datamodules.arena.Allocator`: in a DataLoader
    worker, straight into the batch's shared arena)."""
    batch_tensor = alloc.empty
    full = (len(arrays), *spec.shape())
    # float16 MRI, audio, ECG and wearable as stored (cast on the device), never narrower than the arrays: float32
    # data under float16 specs (a release's, fine-tuned on shards built with storage=float32) stays float32
    dtype = np.result_type(spec.batch_dtype, *{a.dtype for a in arrays})
    data, out = batch_tensor(full, dtype)
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
    return data, None  # NaN where missing (ECG, wearable, omics): masked by the encoder, on the device


def _table(rows: Sequence[dict[str, float]], alloc: arena.Allocator) -> dict[str, torch.Tensor]:
    names = sorted({k for r in rows for k in r})
    return {k: alloc.tensor([r.get(k, float("nan")) for r in rows], np.float32) for k in names}


def _labels(timelines: Sequence[Timeline], alloc: arena.Allocator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    names = sorted({k for tl in timelines for k in tl.labels})
    nan = float("nan")
    return {
        n: (
            alloc.tensor([tl.labels[n].value if n in tl.labels else nan for tl in timelines], np.float32),
            alloc.tensor([tl.labels[n].time_days if n in tl.labels else nan for tl in timelines], np.float32),
        )
        for n in names
    }
