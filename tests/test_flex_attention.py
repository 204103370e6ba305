"""The FlexAttention path of the backbone against the SDPA path, on packed rows as the model makes them.

Rows hold several subjects each (document boundaries), attention is block-causal by event, and one row ends in
padding. On CPU (every CI run) FlexAttention has no backward in torch, so the CPU checks are forward only:
the block mask itself (what every kernel reads: which 128 x 128 blocks to skip, which to compute unmasked)
and the unfused kernel (the tiny backbone's 16-wide heads) in the default suite; the fused C++ kernel, whose
compile takes tens of seconds, under ``-m slow``. Forward and gradients of the compiled CUDA kernel where a
GPU is present.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_mask

from omnimodal.model.backbone import (
    CPU_FUSED_MIN_HEAD_DIM,
    Backbone,
    BackboneConfig,
    block_causal_mask,
    flex_block_mask,
)
from omnimodal.model.packing import Packed, pack

EVENTS = [3, 6, 2, 5, 4, 1, 7, 2]  # events of each subject


def packed_rows(row_len: int, seed: int = 0) -> Packed:
    """Eight subjects' tokens (subject, event, time per token; 1 to row_len / 10 tokens an event, but the last
    subject's first event is 45% of a row: whole 128 x 128 blocks of it attend), packed into rows of ``row_len``
    by ``pack``: several subjects a row, the last row ending in padding."""
    g = torch.Generator().manual_seed(seed)
    subject, event, time = [], [], []
    for s, n_events in enumerate(EVENTS):
        for e in range(n_events):
            k = int(torch.randint(1, row_len // 10 + 1, (1,), generator=g))
            k = int(0.45 * row_len) if (s, e) == (len(EVENTS) - 1, 0) else k
            subject += [s] * k
            event += [e] * k
            time += [30.0 * e + 0.5 * s] * k
    p = pack(torch.tensor(subject), torch.tensor(event), torch.tensor(time), len(EVENTS), row_len=row_len)
    docs_per_row = [len(set(r.tolist()) - {-1}) for r in p.doc]
    assert min(docs_per_row) >= 2 and bool((p.doc[-1] < 0).any()), (docs_per_row, p.shape)  # packed, padded
    return p


def pair(head_dim: int, n_heads: int = 2, seed: int = 0) -> tuple[Backbone, Backbone]:
    """Two backbones with the same weights: SDPA and FlexAttention."""
    torch.manual_seed(seed)
    cfg = dict(d_model=head_dim * n_heads, n_layers=2, n_heads=n_heads, dropout=0.0)
    sdpa = Backbone(BackboneConfig(**cfg, attention="sdpa"))
    flex = Backbone(BackboneConfig(**cfg, attention="flex"))
    flex.load_state_dict(sdpa.state_dict())
    return sdpa, flex


def test_auto_is_flex_on_cuda_and_sdpa_on_cpu_and_flex_is_selectable_on_cpu() -> None:
    auto, flex = (Backbone(BackboneConfig(attention=a)) for a in ("auto", "flex"))
    assert auto.use_flex(torch.device("cuda")) and not auto.use_flex(torch.device("cpu"))
    assert flex.use_flex(torch.device("cpu")) and flex.use_flex(torch.device("cuda"))
    assert not Backbone(BackboneConfig(attention="sdpa")).use_flex(torch.device("cuda"))
    with pytest.raises(ValueError, match=r"model\.backbone\.attention='fast': use one of auto, sdpa, flex"):
        Backbone(BackboneConfig(attention="fast"))


def test_block_mask_is_the_sdpa_mask_token_by_token_and_block_by_block() -> None:
    """Both masks allow the same (query, key) pairs, and the block tables the fused kernels read list every
    block holding an allowed pair, marking as full (computed without the mask) only blocks all allowed."""
    p = packed_rows(row_len=512)
    R, L = p.shape
    assert L > 2 * 128  # several blocks per row
    dense = block_causal_mask(p)[:, 0]  # [R, L, L]
    bm = flex_block_mask(p)
    assert torch.equal(create_mask(bm.mask_mod, R, 1, L, L, device="cpu")[:, 0], dense)
    bq, bk = bm.BLOCK_SIZE
    nq, nk = -(-L // bq), -(-L // bk)
    padded = torch.zeros(R, nq * bq, nk * bk, dtype=torch.bool)
    padded[:, :L, :L] = dense
    blocks = padded.view(R, nq, bq, nk, bk)
    any_allowed = blocks.any(dim=(2, 4))
    for r in range(R):
        for i in range(nq):
            partial = set(bm.kv_indices[r, 0, i, : bm.kv_num_blocks[r, 0, i]].tolist())
            full = set(bm.full_kv_indices[r, 0, i, : bm.full_kv_num_blocks[r, 0, i]].tolist())
            assert partial | full == set(any_allowed[r, i].nonzero().flatten().tolist()), (r, i)
            for j in full:  # every real pair of a full block attends
                q0, k0 = i * bq, j * bk
                assert bool(dense[r, q0 : min(q0 + bq, L), k0 : min(k0 + bk, L)].all()), (r, i, j)
    assert any_allowed.sum() < R * nq * nk  # some blocks are skipped: the point of the block mask
    assert bm.full_kv_num_blocks.sum() > 0  # and some computed without the mask


@pytest.mark.parametrize("row_len", [72, 512])
def test_unfused_cpu_flex_matches_sdpa(row_len: int) -> None:
    """16-wide heads (the tiny backbone's) on CPU: FlexAttention unfused, the same outputs as SDPA."""
    head_dim = 16
    assert head_dim < CPU_FUSED_MIN_HEAD_DIM
    _forward_matches(packed_rows(row_len), head_dim)


@pytest.mark.slow
@pytest.mark.parametrize("row_len", [72, 512])
def test_fused_cpu_flex_matches_sdpa(row_len: int) -> None:
    """32-wide heads on CPU: inductor's fused C++ FlexAttention kernel (compiled per row shape, tens of
    seconds each), the same outputs as SDPA; rows of 56 tokens (row_len 72) are a length where 16-wide heads
    come out wrong from it."""
    _forward_matches(packed_rows(row_len), CPU_FUSED_MIN_HEAD_DIM)


def _forward_matches(p: Packed, head_dim: int) -> None:
    sdpa, flex = pair(head_dim)
    x = torch.randn(*p.shape, sdpa.cfg.d_model)
    with torch.no_grad():
        want, got = sdpa.eval()(x, p), flex.eval()(x, p)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_flex_refuses_to_train_on_cpu_and_says_what_to_do() -> None:
    p = packed_rows(row_len=40)
    _, flex = pair(16)
    with pytest.raises(ValueError, match=r"no FlexAttention backward on CPU.*model\.backbone\.attention=auto"):
        flex.train()(torch.randn(*p.shape, flex.cfg.d_model), p)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("head_dim", [16, 64])
def test_cuda_flex_matches_sdpa_forward_and_gradients(head_dim: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled Triton kernel, forward and backward, against SDPA: outputs, input and weight gradients."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # full fp32 on both paths
    dev = torch.device("cuda")
    p = packed_rows(row_len=512)
    p = Packed(*(t.to(dev) for t in (p.doc, p.event, p.time, p.row, p.col)))
    sdpa, flex = (m.to(dev).train() for m in pair(head_dim))
    x = torch.randn(*p.shape, sdpa.cfg.d_model, device=dev)
    w = torch.randn_like(x) * (p.doc >= 0)[..., None]  # a loss on real tokens only
    outs, grads = [], []
    for m in (sdpa, flex):
        xi = x.clone().requires_grad_()
        y = m(xi, p)
        (y * w).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad, *(q.grad for q in m.parameters())])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)
    for g_flex, g_sdpa in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(g_flex, g_sdpa, rtol=1e-3, atol=1e-4)
