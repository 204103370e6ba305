"""Benchmark: the backbone's FlexAttention path on CPU against its SDPA path, on the same packed rows.

Rows: the synthetic cohort's training batches as the loader yields them (``--batch-size``, cropped to
``--max-events``), each instance its default encoder's tokens (no encoder runs: the per-token metadata laid
out as ``OmniModel.forward`` does), packed by ``pack`` into rows of ``R`` tokens (``--row-lens``) with
``pad_to=R``, so every row has one shape and the compiled kernel is built once per length; the first
``--rows`` rows over the batches (a batch with a subject longer than ``R`` is passed over).

Per backbone size (``--sizes``; tiny: heads 16 wide, so FlexAttention runs unfused on CPU,
``CPU_FUSED_MIN_HEAD_DIM``; small: 64 wide, inductor's fused C++ kernel): one set of weights on both paths,
eval mode, no gradients. Timed, median of ``--repeats`` after a warm-up call (the flex path's first call
compiles: its seconds are printed apart):

- attention: the mask (SDPA: the boolean block-causal mask made additive, as ``Backbone.forward`` does once
  per forward; flex: ``create_block_mask``) and one attention call of the backbone's width;
- backbone: the whole forward (all layers, mask included).

Ratio: flex / SDPA time (< 1: flex is faster). Forward + backward cannot be timed on the flex path here:
torch has no FlexAttention backward on CPU (``flex_attention`` refuses inputs that require grad), so the
backbone's ``attention=flex`` is for CPU inference only; the SDPA path's forward + backward is printed for
the scale of a training step. The flex path's training speed is a CUDA figure.

    python scripts/bench/attention.py [--sizes tiny small] [--row-lens 256 1024 2048] [--rows 2]
        [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import (
    RESULTS,
    build_task,
    cohort,
    load_batches,
    model_config,
    token_metadata,
    tokens_per_instance,
    write_results,
)
from torch import Tensor

from omnimodal.model.backbone import (
    CPU_FUSED_MIN_HEAD_DIM,
    Backbone,
    BackboneConfig,
    block_causal_mask,
    flex_attention_fn,
    flex_block_mask,
)
from omnimodal.model.packing import Packed, pack


def packed_rows(root: Path, row_len: int, n_rows: int, batch_size: int, max_events: int) -> Packed:
    """The first ``n_rows`` rows of ``row_len`` tokens of the cohort's training batches, packed as the model does."""
    k = tokens_per_instance(build_task(model_config(root)))
    rows: list[tuple[Tensor, Tensor, Tensor]] = []
    for batch in load_batches(root, batch_size=batch_size, max_events=max_events):
        p = pack(*token_metadata(batch, k), len(batch), row_len, pad_to=row_len)
        if p.shape[1] == row_len:  # else a subject longer than a row has a longer one of its own
            rows += list(zip(p.doc, p.event, p.time, strict=True))
        if len(rows) >= n_rows:
            break
    if len(rows) < n_rows:
        raise SystemExit(f"the cohort has {len(rows)} rows of {row_len} tokens, not --rows {n_rows}")
    doc, event, time_ = (torch.stack(t) for t in zip(*rows[:n_rows], strict=True))
    none = torch.zeros(0, dtype=torch.long)
    return Packed(doc, event, time_, none, none)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds of ``repeats`` more)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def masks(p: Packed) -> dict[str, Callable[[], Any]]:
    """Each path's mask, as ``Backbone.forward`` builds it once per forward."""

    def additive() -> Tensor:  # SDPA: the boolean block-causal mask made additive
        m = block_causal_mask(p)
        return torch.zeros(m.shape).masked_fill_(~m, float("-inf"))

    return {"sdpa": additive, "flex": lambda: flex_block_mask(p)}


def kernels(p: Packed, cfg: BackboneConfig) -> dict[str, Callable[[Any], Tensor]]:
    """One attention call of the backbone's shape on each path, given its mask."""
    R, L = p.shape
    hd = cfg.d_model // cfg.n_heads
    q, k, v = (torch.randn(R, cfg.n_heads, L, hd) for _ in range(3))
    flex = flex_attention_fn("cpu", hd)
    return {
        "sdpa": lambda mask: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        "flex": lambda mask: flex(q, k, v, block_mask=mask),
    }


def measure(p: Packed, size: str, repeats: int) -> dict[str, Any]:
    models = {a: Backbone(BackboneConfig.from_size(size, attention=a)).eval() for a in ("sdpa", "flex")}
    models["flex"].load_state_dict(models["sdpa"].state_dict())
    cfg = models["sdpa"].cfg
    x = torch.randn(*p.shape, cfg.d_model)
    out: dict[str, Any] = {}
    with torch.no_grad():
        for path, kernel in kernels(p, cfg).items():
            make = masks(p)[path]
            _, out[f"mask_{path}_s"] = timed(make, repeats)
            mask = make()
            first, out[f"kernel_{path}_s"] = timed(lambda kernel=kernel, mask=mask: kernel(mask), repeats)
            if path == "flex":
                out["flex_first_call_s"] = first  # compile (fused) or trace (unfused), once per row shape
            _, out[f"backbone_{path}_s"] = timed(lambda m=models[path]: m(x, p), repeats)
        diff = (models["flex"](x, p) - models["sdpa"](x, p)).abs().max().item()
    xg = x.clone().requires_grad_()
    train = models["sdpa"].train()
    _, out["backbone_sdpa_fwd_bwd_s"] = timed(lambda: train(xg, p).square().mean().backward(), repeats)
    out["max_abs_diff"] = diff
    out["flex_blocks_computed"] = _blocks(flex_block_mask(p))
    return out


def _blocks(bm: Any) -> float:
    """Share of the 128 x 128 blocks the flex kernel computes (partial or full); the rest it skips."""
    n = bm.kv_num_blocks.sum() + (bm.full_kv_num_blocks.sum() if bm.full_kv_num_blocks is not None else 0)
    return round(float(n) / (bm.kv_num_blocks.numel() * bm.kv_indices.shape[-1]), 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    p.add_argument("--row-lens", type=int, nargs="+", default=[256, 1024, 2048])
    p.add_argument("--rows", type=int, default=2, help="packed rows per call")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-events", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--subjects", type=int, default=128)
    p.add_argument("--shards", help="a shard folder (default: the built-in cohort)")
    p.add_argument("--out", default=str(RESULTS / "attention.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    root = Path(a.shards) if a.shards else cohort(a.subjects)
    print(f"torch {torch.__version__}, {a.threads} thread(s); forward only (no FlexAttention backward on CPU)")
    print(
        f"{'size':>5} {'head':>4} {'kernel':>7} {'row_len':>7} {'real':>5} {'blocks':>6} | {'mask ms':>15} | "
        f"{'attention ms':>15} {'ratio':>5} | {'forward ms':>15} {'ratio':>5} | {'compile s':>9} {'sdpa f+b ms':>11}"
    )
    print(f"{'':>39} | {'sdpa':>7} {'flex':>7} | {'sdpa':>7} {'flex':>7} {'':>5} | {'sdpa':>7} {'flex':>7}")
    table = []
    for rl in a.row_lens:
        rows = packed_rows(root, rl, a.rows, a.batch_size, a.max_events)
        for size in a.sizes:
            cfg = BackboneConfig.from_size(size)
            hd = cfg.d_model // cfg.n_heads
            m = measure(rows, size, a.repeats)
            row = {
                "size": size,
                "head_dim": hd,
                "flex_kernel": "fused" if hd >= CPU_FUSED_MIN_HEAD_DIM else "unfused",
                "row_len": rl,
                "rows": a.rows,
                "real_fraction": round(rows.real_fraction(), 3),
                **{k: round(v, 4) if k.endswith("_s") else v for k, v in m.items()},
                "kernel_ratio": round(m["kernel_flex_s"] / m["kernel_sdpa_s"], 3),
                "backbone_ratio": round(m["backbone_flex_s"] / m["backbone_sdpa_s"], 3),
            }
            table.append(row)
            ms = {k: 1e3 * v for k, v in m.items() if k.endswith("_s")}
            print(
                f"{size:>5} {hd:>4} {row['flex_kernel']:>7} {rl:>7} {row['real_fraction']:>5.2f} "
                f"{m['flex_blocks_computed']:>6.2f} | {ms['mask_sdpa_s']:>7.1f} {ms['mask_flex_s']:>7.1f} | "
                f"{ms['kernel_sdpa_s']:>7.1f} {ms['kernel_flex_s']:>7.1f} {row['kernel_ratio']:>5.2f} | "
                f"{ms['backbone_sdpa_s']:>7.1f} {ms['backbone_flex_s']:>7.1f} {row['backbone_ratio']:>5.2f} | "
                f"{m['flex_first_call_s']:>9.1f} {ms['backbone_sdpa_fwd_bwd_s']:>11.1f}"
            )
            assert m["max_abs_diff"] < 1e-4, f"flex and SDPA differ by {m['max_abs_diff']:.2e}"
    write_results(
        a.out,
        {
            "torch": torch.__version__,
            "threads": a.threads,
            "repeats": a.repeats,
            "batch_size": a.batch_size,
            "max_events": a.max_events,
            "flex_backward_on_cpu": False,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
