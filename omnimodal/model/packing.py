"""Sequence assembly and packing: encoded instances -> packed token rows with document boundaries.

Every instance contributes its ``k`` tokens; tokens are ordered by (subject, event, modality, instance,
slot) and whole subjects are packed into balanced rows of at most ``row_len`` tokens (longest subject
first, into the emptiest row), so little compute goes to padding. ``doc`` says which subject a token belongs to (-1 =
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

    doc: Tensor  # [R, L] long, subject index in the batch, -1 = padding
    event: Tensor  # [R, L] long, event index within the subject's timeline (-1 = padding)
    time: Tensor  # [R, L] float, days since the subject's first event (rotary position)
    row: Tensor  # [T] long
    col: Tensor  # [T] long

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


def pack(
    subject: Tensor,
    event: Tensor,
    time: Tensor,
    num_subjects: int,
    row_len: int | None = None,
    pad_to: int = 8,
    packed: bool = True,
) -> Packed:
    """Lay out tokens given per token (in instance order): ``subject``, ``event``, ``time`` ``[T]``.

    ``row_len`` caps the row length (None: the longest subject). Rows are as few as the cap allows and
    balanced, so each is nearly full; their common length is the fullest row's, rounded up to ``pad_to``
    (use a large ``pad_to`` where shapes should repeat, e.g. for compiled kernels). A subject longer than
    the cap gets a row of its own. ``packed=False`` gives the padded layout packing replaces (one
    subject per row), for benchmarks and tests.
    """
    device = subject.device
    key = subject * (int(event.max()) + 1 if event.numel() else 1) + event
    order = torch.sort(key, stable=True).indices  # subject, then event; instance order kept within
    counts = torch.bincount(subject, minlength=num_subjects)
    row_of, off_of, n_rows, L = _assign_rows(counts.tolist(), row_len, packed, pad_to)
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


def _round_up(n: int, k: int) -> int:
    return -(-max(n, 1) // k) * k


def _assign_rows(
    counts: list[int], cap: int | None, packed: bool, pad_to: int
) -> tuple[list[int], list[int], int, int]:
    """Subjects -> (row, offset), number of rows and row length. A loop over the B subjects, not tokens.

    Packed: the fewest rows of at most ``cap`` tokens, filled longest subject first into the emptiest
    row (balanced, so rows end nearly together). Unpacked: subject b gets row b.
    """
    B = len(counts)
    if not packed:
        return list(range(B)), [0] * B, max(B, 1), _round_up(max(counts, default=1), pad_to)
    longest, total = max(counts, default=0), sum(counts)
    limit = _round_up(max(cap or 0, longest), pad_to)
    order = sorted((b for b in range(B) if counts[b]), key=lambda b: -counts[b])
    n_rows = max(1, -(-total // limit))
    while True:
        fill = [0] * n_rows
        row_of, off_of = [0] * B, [0] * B
        for b in order:
            r = min(range(n_rows), key=fill.__getitem__)
            row_of[b], off_of[b] = r, fill[r]
            fill[r] += counts[b]
        L = _round_up(max(fill), pad_to)
        if L <= limit:
            return row_of, off_of, n_rows, L
        n_rows += 1
