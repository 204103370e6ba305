"""Sequence assembly and packing: encoded instances -> packed token rows with document boundaries.

Every instance contributes its ``k`` tokens; tokens are ordered by (subject, event, modality, instance,
slot) and whole subjects are packed into rows of ``row_len`` tokens (first fit, longest subject first), so
no compute goes to padding beyond each row's tail. ``doc`` says which subject a token belongs to (-1 =
padding), ``event`` which of its events; attention is block-causal over events within a document.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Packed:
    """Token layout of a packed batch. Row-major arrays are ``[R, L]``; token-order arrays ``[T]``.

    ``row``/``col`` place each token (in instance order: modality by modality, instance, slot) in the
    rows, so ``h[row, col]`` gathers outputs back to instances.
    """

    doc: Tensor        # [R, L] long, subject index in the batch, -1 = padding
    event: Tensor      # [R, L] long, event index within the subject's timeline (-1 = padding)
    time: Tensor       # [R, L] float, days since the subject's first event (rotary position)
    row: Tensor        # [T] long
    col: Tensor        # [T] long

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.doc.shape)  # type: ignore[return-value]

    def real_fraction(self) -> float:
        """Share of computed token positions that hold a real token."""
        return float((self.doc >= 0).float().mean())

    def scatter(self, tokens: Tensor) -> Tensor:
        """``[T, d]`` tokens in instance order -> ``[R, L, d]`` rows (zeros at padding)."""
        out = tokens.new_zeros(*self.shape, tokens.shape[-1])
        out[self.row, self.col] = tokens
        return out

    def gather(self, rows: Tensor) -> Tensor:
        """``[R, L, d]`` -> ``[T, d]`` in instance order."""
        return rows[self.row, self.col]


def pack(subject: Tensor, event: Tensor, time: Tensor, num_subjects: int, row_len: int | None = None,
         pad_to: int = 8, packed: bool = True) -> Packed:
    """Lay out tokens given per token (in instance order): ``subject``, ``event``, ``time`` ``[T]``.

    ``row_len`` defaults to the longest subject, rounded up to ``pad_to``; a subject longer than
    ``row_len`` gets a row as long as it needs. ``packed=False`` gives the padded layout packing
    replaces (one subject per row), for benchmarks and tests.
    """
    device = subject.device
    key = subject * (int(event.max()) + 1 if event.numel() else 1) + event
    order = torch.sort(key, stable=True).indices  # subject, then event; instance order kept within
    counts = torch.bincount(subject, minlength=num_subjects)
    L = max(row_len or 0, int(counts.max()) if counts.numel() else 0, 1)
    L = -(-L // pad_to) * pad_to
    row_of, off_of, n_rows = _assign_rows(counts.tolist(), L, packed)
    start = torch.cumsum(counts, 0) - counts  # first sorted position of each subject
    sorted_subject = subject[order]
    rank = torch.arange(order.numel(), device=device) - start[sorted_subject]
    row, col = torch.empty_like(subject), torch.empty_like(subject)
    row[order] = torch.tensor(row_of, device=device, dtype=torch.long)[sorted_subject]
    col[order] = torch.tensor(off_of, device=device, dtype=torch.long)[sorted_subject] + rank
    doc = torch.full((n_rows, L), -1, dtype=torch.long, device=device)
    ev = torch.full((n_rows, L), -1, dtype=torch.long, device=device)
    tm = torch.zeros((n_rows, L), dtype=torch.float32, device=device)
    doc[row, col], ev[row, col], tm[row, col] = subject, event, time.float()
    return Packed(doc, ev, tm, row, col)


def _assign_rows(counts: list[int], L: int, packed: bool) -> tuple[list[int], list[int], int]:
    """First-fit decreasing of whole subjects into rows of ``L`` tokens (a loop over the B subjects, not
    tokens): longest subject first, ties in batch order. Unpacked: subject b gets row b."""
    free: list[int] = []
    row_of, off_of = [0] * len(counts), [0] * len(counts)
    order = sorted(range(len(counts)), key=lambda b: -counts[b]) if packed else range(len(counts))
    for b in order:
        n = counts[b]
        if n == 0 and packed:
            continue
        r = next((i for i, f in enumerate(free) if f >= n), None) if packed else None
        if r is None:
            free.append(L)
            r = len(free) - 1
        row_of[b], off_of[b] = r, L - free[r]
        free[r] -= n
    return row_of, off_of, max(len(free), 1)
