"""GPU check: a few bf16 training steps of the base model (FlexAttention) on one GPU, plain and under
DeepSpeed ZeRO-2, each timed after warm-up. Prints tokens/s, peak memory and model FLOPs utilisation
(MFU) against the chip's dense bf16 peak (H100/H200 SXM: ~990 TFLOP/s). Run by ``scripts/gpu_check.sh``.

The run is ``omnimodal-train``'s own: the config composed from ``configs/`` (``experiment=base_gpu``,
``strategy=deepspeed_zero2``), ``omnimodal.pretraining.run.build``, a Lightning ``Trainer``; only the batches are
read from the shards once and then cycled from memory, so the figures are the model's, not the loader's.

Model FLOPs of a step (what MFU counts; recomputation under activation checkpointing is not model work):
3 x the forward's, where the forward's are every matmul/convolution of encoders, embeddings, backbone
and objective heads as ``torch.utils.flop_counter`` counts them, with attention counted on the pairs the
block-causal mask allows (``4 d`` per layer and pair: ``QK^T`` and ``PV``) rather than on dense ``L x L``.

    python scripts/gpu_check.py --shards DIR [--steps 10] [--warmup 5] [--out results.json]
    python scripts/gpu_check.py --shards DIR --cpu        # a dry run: tiny model, fp32, SDPA, on CPU
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

H200_BF16_DENSE_TFLOPS = 989.4


def attention_pairs(doc: torch.Tensor, event: torch.Tensor) -> int:
    """(query, key) pairs the block-causal mask allows in packed rows ``doc``/``event`` ``[R, L]``:
    same subject, key's event not later. Padding (``doc < 0``) attends to itself only: not counted."""
    from omnimodal.model.backbone import block_causal_mask  # noqa: PLC0415
    from omnimodal.model.packing import Packed  # noqa: PLC0415

    empty = torch.empty(0, dtype=torch.long)
    mask = block_causal_mask(Packed(doc, event, torch.zeros(doc.shape), empty, empty))
    return int(mask.sum()) - int((doc < 0).sum())


def train_step_flops(forward_flops_no_attention: float, n_layers: int, d_model: int, pairs: int) -> float:
    """Model FLOPs of one training step: 3 x forward (backward = 2 x forward), the forward's attention
    being ``4 * d_model`` per allowed pair and layer (``QK^T`` and ``PV``, 2 FLOPs per multiply-add)."""
    return 3.0 * (forward_flops_no_attention + 4.0 * n_layers * d_model * pairs)


def mfu(flops_per_step: float, seconds_per_step: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the chip's peak."""
    return flops_per_step / seconds_per_step / (peak_tflops * 1e12)


def count_step_flops(task: Any, batch: Any) -> tuple[float, int, int]:
    """(model FLOPs of a training step on ``batch``, tokens, allowed attention pairs): a forward counted by
    ``FlopCounterMode`` with attention itself stubbed out (every path, dense or not, would count ``L x L``),
    plus the mask's pairs."""
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    backbone = task.model.backbone
    saved = backbone.cfg.attention, backbone.cfg.activation_checkpointing
    backbone.cfg.attention, backbone.cfg.activation_checkpointing = "sdpa", False
    sdpa = torch.nn.functional.scaled_dot_product_attention
    seen: dict[str, Any] = {}

    def keep_packed(module: Any, args: tuple[Any, ...]) -> None:
        seen["packed"] = args[1]

    hook = backbone.register_forward_pre_hook(keep_packed)
    device = batch_device(batch)
    try:
        torch.nn.functional.scaled_dot_product_attention = lambda q, k, v, **kw: v  # no FLOPs, same shapes
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"), counter:
            task.objectives(task.model, batch, torch.Generator().manual_seed(0))
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
        hook.remove()
        backbone.cfg.attention, backbone.cfg.activation_checkpointing = saved
    packed = seen["packed"]
    pairs = attention_pairs(packed.doc.cpu(), packed.event.cpu())
    cfg = backbone.cfg
    return train_step_flops(counter.get_total_flops(), cfg.n_layers, cfg.d_model, pairs), len(packed.row), pairs


def batch_device(batch: Any) -> torch.device:
    return next(iter(batch.modalities.values())).data.device


class Meter:
    """Times steps ``warmup..`` of a fit (CUDA-synchronised), with the peak memory of those steps."""

    def __init__(self, warmup: int) -> None:
        import lightning as L  # noqa: PLC0415

        meter = self

        class _Callback(L.Callback):
            def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
                if trainer.global_step == warmup:
                    meter._sync()
                    if torch.cuda.is_available():
                        torch.cuda.reset_peak_memory_stats()
                    meter.t0 = time.perf_counter()

            def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                meter.losses.append(float(loss))
                if trainer.global_step > warmup:
                    meter.steps = trainer.global_step - warmup

            def on_train_end(self, trainer: Any, pl_module: Any) -> None:
                meter._sync()
                meter.t1 = time.perf_counter()

        self.callback = _Callback()
        self.t0 = self.t1 = 0.0
        self.steps = 0
        self.losses: list[float] = []

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    @property
    def seconds_per_step(self) -> float:
        return (self.t1 - self.t0) / max(self.steps, 1)


def config(shards: Path, run_dir: Path, cpu: bool, strategy: str | None, steps: int, batch_size: int) -> Any:
    from hydra import compose, initialize_config_dir  # noqa: PLC0415
    from hydra.core.global_hydra import GlobalHydra  # noqa: PLC0415
    from omegaconf import open_dict  # noqa: PLC0415

    overrides = [
        "experiment=base_gpu",
        "data=shards",
        f"data.root={shards}",
        "data.synthetic=null",
        f"data.batch_size={batch_size}",
        "data.num_workers=0",
        f"trainer.max_steps={steps}",
        "trainer.max_epochs=-1",
        "trainer.enable_progress_bar=false",
        "trainer.check_val_every_n_epoch=null",
        "trainer.val_check_interval=null",
        "trainer.limit_val_batches=0",
        "trainer.devices=1",
        "~logger",
        "~callbacks",
    ]
    if strategy:
        overrides.append(f"strategy={strategy}")
    if cpu:  # a dry run of the same code path: tiny model, fp32, SDPA
        overrides += [
            "model/backbone=tiny",
            "model.row_len=256",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "model.backbone.attention=sdpa",
        ]
    GlobalHydra.instance().clear()
    # the checkout's configs/ (what omnimodal-train installs as omnimodal.configs), so this also runs from a
    # checkout on PYTHONPATH where the project could not be installed
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent.parent / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return cfg


def cycle(batches: list[Any]) -> Iterator[Any]:
    return itertools.cycle(batches)


def run_one(name: str, cfg: Any, batches: list[Any], warmup: int, peak_tflops: float) -> dict[str, Any]:
    from torch.utils.data import DataLoader, IterableDataset  # noqa: PLC0415

    from omnimodal.pretraining.run import build  # noqa: PLC0415

    class Batches(IterableDataset):
        def __iter__(self) -> Iterator[Any]:
            return cycle(batches)

    task, _, trainer = build(cfg)
    meter = Meter(warmup)
    trainer.callbacks.append(meter.callback)
    trainer.fit(task, train_dataloaders=DataLoader(Batches(), batch_size=None, collate_fn=lambda b: b))
    device = task.device
    flops, tokens, pairs = [], [], []
    for b in batches:
        f, t, p = count_step_flops(task, b.to(device))
        flops.append(f), tokens.append(t), pairs.append(p)
    # the timed steps cycle through the batches from index `warmup`
    timed = [i % len(batches) for i in range(warmup, warmup + meter.steps)]
    step_flops = sum(flops[i] for i in timed) / max(len(timed), 1)
    step_tokens = sum(tokens[i] for i in timed) / max(len(timed), 1)
    sps = meter.seconds_per_step
    res = {
        "name": name,
        "strategy": str(cfg.trainer.get("strategy")),
        "precision": str(cfg.trainer.precision),
        "parameters": sum(p.numel() for p in task.parameters()),
        "timed_steps": meter.steps,
        "seconds_per_step": sps,
        "tokens_per_step": step_tokens,
        "tokens_per_s": step_tokens / sps,
        "model_tflops_per_step": step_flops / 1e12,
        "mfu": mfu(step_flops, sps, peak_tflops),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "first_loss": meter.losses[0],
        "last_loss": meter.losses[-1],
        "attention_density": sum(pairs) / max(sum(t * t for t in tokens), 1),
    }
    if not all(map(lambda x: x == x and abs(x) != float("inf"), meter.losses)):
        raise RuntimeError(f"{name}: non-finite loss in {meter.losses}")
    return res


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=Path, required=True, help="a shard folder (omnimodal-shard output)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, allocator)")
    p.add_argument("--batch-size", type=int, default=16, help="subjects per batch")
    p.add_argument("--batches", type=int, default=4, help="distinct batches held in memory and cycled")
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS, help="the chip's dense bf16 peak")
    p.add_argument("--only", choices=["flex", "zero2"], action="append", help="run only these configurations")
    p.add_argument("--cpu", action="store_true", help="dry run on CPU: tiny model, fp32, no DeepSpeed")
    p.add_argument("--run-dir", type=Path, default=Path("outputs/gpu_check"))
    p.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    a = p.parse_args(argv)
    if not a.cpu and not torch.cuda.is_available():
        p.error("no CUDA device: run with --cpu for a dry run")

    from datamodules.datamodule import OmniDataModule  # noqa: PLC0415

    base = config(a.shards, a.run_dir, a.cpu, None, a.warmup + a.steps, a.batch_size)
    from omnimodal.pretraining.run import data_kwargs  # noqa: PLC0415

    kwargs = {**data_kwargs(base.data), "batch_size": a.batch_size, "num_workers": 0, "on_error": "raise"}
    dm = OmniDataModule(a.shards, seed=int(base.seed), **kwargs)
    batches = list(itertools.islice(dm.train_dataloader(), a.batches))
    if not batches:
        raise SystemExit(f"{a.shards}: no training batches (is it an omnimodal-shard folder with a train split?)")
    wanted = a.only or (["flex"] if a.cpu else ["flex", "zero2"])
    runs = {"flex": None, "zero2": "deepspeed_zero2"}
    if a.cpu and "zero2" in wanted:
        p.error("DeepSpeed needs a GPU here; --cpu runs --only flex")
    results = []
    for name in wanted:
        cfg = config(a.shards, a.run_dir / name, a.cpu, runs[name], a.warmup + a.steps, a.batch_size)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        results.append(run_one(name, cfg, batches, a.warmup, a.peak_tflops))
        r = results[-1]
        mem = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "n/a (CPU)"
        print(
            f"[{name}] {r['parameters'] / 1e6:.1f}M parameters, {r['precision']}, {r['strategy']}: "
            f"{r['tokens_per_s']:,.0f} tokens/s ({r['tokens_per_step']:,.0f} tokens/step, "
            f"{r['seconds_per_step'] * 1e3:.0f} ms/step), peak memory {mem}, "
            f"{r['model_tflops_per_step']:.2f} model TFLOP/step, MFU {100 * r['mfu']:.1f}% of "
            f"{a.peak_tflops:.0f} TFLOP/s; loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}",
            flush=True,
        )
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(
            json.dumps(
                {
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                    "torch": torch.__version__,
                    "peak_tflops": a.peak_tflops,
                    "results": results,
                },
                indent=1,
            )
        )
        print(f"figures written to {a.out}")
    return results


if __name__ == "__main__":
    main()
