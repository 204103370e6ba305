"""Benchmark: video frames stored compressed (JPEG) against raw, the lever the loader has left (README "the loader
against a GPU's appetite"). Frames are 0.80 of a demo sample's 1.74 MiB; stored as JPEG they would be a fraction,
but someone must decode them.

Baseline: raw uint8 frames as the loader handles them now (one copy of each clip, into the batch). Ours: the same
frames as JPEG (torchvision's ``encode_jpeg`` at ``--quality``), decoded on this CPU by ``decode_jpeg``
(libjpeg-turbo), in one batched call as a worker would. Prints, per frame and per sample, the stored KiB, the CPU
microseconds of each and their ratio, the mean absolute error of the round trip, and how many frames per second
the GPU would have to decode itself at the appetite ``feed.py`` computes (nvJPEG's hardware decoder is not
measured here: it needs a GPU).

    python scripts/bench/video_codec.py [--subjects 128] [--quality 95 85] [--samples 0]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import RESULTS, cohort, timed, write_results
from torchvision.io import decode_jpeg, encode_jpeg

from datamodules.loader import ShardDataset
from datamodules.samples import decode_timeline

VIDEO = ("gait", "face", "medical_video")


def clips_of(root: str, samples: int) -> tuple[list[torch.Tensor], int]:
    """Every video clip (``[T, 3, H, W]`` uint8) of the first ``samples`` train samples (0: all), and how many
    samples."""
    ds = ShardDataset(root, "train")
    clips, n = [], 0
    for raw in ds.raw_samples(0):
        tl = decode_timeline(raw, ds.specs, "", modalities=VIDEO)
        clips += [torch.from_numpy(np.array(m.data)) for ev in tl.events for m in ev.measurements]
        n += 1
        if n == samples:
            break
    return clips, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=128, help="size of the synthetic demo cohort")
    p.add_argument("--samples", type=int, default=0, help="train samples whose frames are measured (0: all)")
    p.add_argument("--quality", type=int, nargs="+", default=[95, 85], help="JPEG qualities tried")
    p.add_argument("--gpu-samples-per-s", type=float, default=3567.0, help="the GPU's appetite (feed.py prints it)")
    p.add_argument("--out", default=str(RESULTS / "video_codec.json"))
    a = p.parse_args()
    torch.set_num_threads(1)  # a loader worker's share: one core
    clips, n = clips_of(str(cohort(a.subjects)), a.samples)
    frames = [f for clip in clips for f in clip]
    per_sample = len(frames) / n
    raw_kib = sum(f.numel() for f in frames) / len(frames) / 1024
    out = torch.empty(len(clips), max(len(c) for c in clips), *frames[0].shape, dtype=torch.uint8)

    def copy() -> None:  # as collation does: each clip into its row of the batch
        for i, clip in enumerate(clips):
            out[i, : len(clip)].copy_(clip)

    copy_us = timed(copy, 5)[1] / len(frames) * 1e6
    print(
        f"{len(frames)} frames of {n} samples ({per_sample:.0f} a sample), {tuple(frames[0].shape)} uint8, "
        f"{raw_kib:.1f} KiB a frame raw; copied into a batch: {copy_us:.1f} us a frame"
    )
    rows = {}
    for q in a.quality:
        enc = [encode_jpeg(f, quality=q) for f in frames]
        kib = sum(e.numel() for e in enc) / len(enc) / 1024
        dec_us = timed(lambda enc=enc: decode_jpeg(enc), 5)[1] / len(frames) * 1e6
        err = float(np.mean([(d.float() - f.float()).abs().mean().item() for d, f in zip(decode_jpeg(enc), frames)]))
        rows[q] = {
            "kib_per_frame": kib,
            "compression": raw_kib / kib,
            "cpu_decode_us_per_frame": dec_us,
            "decode_over_copy": dec_us / copy_us,
            "cpu_decode_ms_per_sample": dec_us * per_sample / 1e3,
            "mean_abs_error": err,
        }
        print(
            f"  JPEG q{q}: {kib:.2f} KiB a frame (x{raw_kib / kib:.1f} smaller), {err:.2f}/255 mean absolute error; "
            f"CPU decode {dec_us:.0f} us a frame = x{dec_us / copy_us:.1f} the copy, "
            f"{dec_us * per_sample / 1e3:.2f} ms a sample"
        )
    gpu_fps = a.gpu_samples_per_s * per_sample
    print(f"decoded on the GPU instead: {gpu_fps:,.0f} frames a second at {a.gpu_samples_per_s:,.0f} samples a second")
    write_results(
        a.out,
        {
            "samples": n,
            "frames_per_sample": per_sample,
            "raw_kib_per_frame": raw_kib,
            "copy_us_per_frame": copy_us,
            "jpeg": rows,
            "gpu_frames_per_s": gpu_fps,
        },
    )


if __name__ == "__main__":
    main()
