"""Benchmark: shard builder throughput on the built-in synthetic cohort.

Builds the demo cohort's shards (128 people, every modality in its native format) from its tables with 1 and
with 2 worker processes and prints subjects per second and per second per core (a worker is one process on one
core), then where a worker's time goes: the tables and keys (main process), each modality's reader (decoding,
resampling, cutting into windows, validation), tar writing and the rest (checks, encoding, meta.json), timed
around those calls in the 1-worker build. Then the cluster path: the same build in ``--parts`` parts (one after
the other here, 1 worker each, as array tasks would run side by side) and their merge, with the merge's MB/s.
Every build of the same input must be byte-identical: the script compares each build's files with the first
(and says whether they equal the cached demo shards, built earlier, by earlier code). ``--profile N`` adds the
N functions with the most own time (cProfile, a further 1-worker build). Writes the figures to ``--out`` (JSON).

    python scripts/bench/builder.py [--subjects 128] [--workers 1 2] [--parts 2] [--profile 25]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from datamodules.builtin_cohort import demo_build_config, demo_shards
from datamodules.schema import MODALITIES, DataWarning
from datamodules.shards import builder
from datamodules.shards.builder import BuildConfig, build_shards
from datamodules.shards.format import TarShardWriter
from datamodules.shards.parts import build_part, merge_parts

RESULTS = Path(__file__).resolve().parent / "results"


def config(cohort: Path, out: Path, workers: int, **kw: Any) -> BuildConfig:
    """The demo cohort's build (as ``demo_shards`` makes it) into ``out``."""
    return demo_build_config(cohort, out, workers, **kw)


def digests(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path) -> its sha256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@contextmanager
def stage_timer() -> Iterator[dict[str, list[float]]]:
    """Seconds spent in the builder's stages of an in-process (1-worker) build: ``tables`` (reading and checking
    the tables, keys), ``tar`` (writing samples), and one entry per modality (its reader, each call)."""
    spent: dict[str, list[float]] = defaultdict(list)

    def timed(name: Any, fn: Any) -> Any:
        def wrapper(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                spent[name(args)].append(time.perf_counter() - t0)

        return wrapper

    with (
        mock.patch.object(builder, "read_recording", timed(lambda a: a[0], builder.read_recording)),
        mock.patch.object(builder, "_plan", timed(lambda a: "tables", builder._plan)),
        mock.patch.object(TarShardWriter, "add", timed(lambda a: "tar", TarShardWriter.add)),
    ):
        yield spent


def run_build(cfg: BuildConfig) -> tuple[float, int, int]:
    """Wall seconds of one build, its subjects (rows of the subjects table) and samples written."""
    t0 = time.perf_counter()
    report = build_part(cfg) if cfg.part else build_shards(cfg)
    return time.perf_counter() - t0, report.subjects_in_table, report.samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=128)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--parts", type=int, default=2, help="build in this many parts and merge them (0: skip)")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the N functions with most own time")
    p.add_argument("--out", default=str(RESULTS / "builder.json"))
    a = p.parse_args()
    warnings.simplefilter("ignore", DataWarning)  # off-panel omics features: reported by the builder already
    cached = demo_shards(a.subjects)
    cohort = cached.parent / "cohort"

    t0 = time.perf_counter()
    builder.preload_readers(MODALITIES)  # what every build process pays once (workers fork after it)
    imports_s = time.perf_counter() - t0
    load = os.getloadavg()[0]
    res: dict[str, Any] = {
        "subjects_in_table": a.subjects,
        "cpus": os.cpu_count(),
        "load_average_at_start": round(load, 2),
        "imports_s": round(imports_s, 1),
        "builds": {},
    }
    print(f"{os.cpu_count()} CPUs, load average {load:.1f}; reader imports {imports_s:.1f} s (once per process)")
    with tempfile.TemporaryDirectory(prefix="omnimodal-bench-builder-") as tmp:
        first: dict[str, str] | None = None
        stages: dict[str, list[float]] = {}
        for workers in a.workers:
            out = Path(tmp) / f"w{workers}"
            if workers == 1:
                with stage_timer() as stages:
                    wall, subjects, samples = run_build(config(cohort, out, workers))
            else:
                wall, subjects, samples = run_build(config(cohort, out, workers))
            rate = subjects / wall
            res["builds"][f"workers={workers}"] = {
                "wall_s": round(wall, 1),
                "samples": samples,
                "subjects_per_s": round(rate, 3),
                "subjects_per_s_per_core": round(rate / workers, 3),
            }
            print(
                f"workers={workers}: {subjects} subjects ({samples} samples) in {wall:6.1f} s: "
                f"{rate:5.2f} subjects/s, {rate / workers:5.2f} per core"
            )
            got = digests(out)
            first = first or got
            assert got == first, f"workers={workers} built different bytes than workers={a.workers[0]}"
        if stages:
            res["where_the_time_goes_1_worker"] = breakdown(stages, res["builds"]["workers=1"]["wall_s"])
        if a.parts:
            res["parts"] = parts(cohort, Path(tmp) / "parts", a.parts)
            assert digests(Path(tmp) / "parts") == first, "the merged parts differ from the one-machine build"
        if a.profile:
            res["profile_top"] = profile(config(cohort, Path(tmp) / "profiled", 1), a.profile)
    same = first == digests(cached)
    res["identical_to_cached_demo_shards"] = same
    print(f"every build byte-identical: {len(first or {})} files; the same as the cached demo shards: {same}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"figures written to {a.out}")


def breakdown(stages: dict[str, list[float]], wall: float) -> dict[str, Any]:
    """Print and return each stage's seconds and share of the build's wall time (readers: files and ms a file)."""
    rows = {k: v for k, v in stages.items() if k in MODALITIES}
    out: dict[str, Any] = {}
    print("where the time goes (1 worker, one core):")

    def line(name: str, seconds: float, files: int | None = None) -> None:
        per = f"{files:5d} files {1e3 * seconds / files:7.1f} ms/file" if files else ""
        print(f"  {name:34s} {seconds:7.1f} s {100 * seconds / wall:5.1f}%  {per}")
        out[name] = {"s": round(seconds, 2), "share": round(seconds / wall, 3), **({"files": files} if files else {})}

    line("tables, keys (main process)", sum(stages.get("tables", [])))
    for m, calls in sorted(rows.items(), key=lambda kv: -sum(kv[1])):
        line(f"{m} reader", sum(calls), len(calls))
    line("tar writing", sum(stages.get("tar", [])))
    rest = wall - sum(sum(v) for v in stages.values())
    line("the rest (checks, encoding, meta)", rest)
    return out


def parts(cohort: Path, out: Path, n: int) -> dict[str, Any]:
    """Build ``n`` parts one after the other (1 worker each) and merge them: their seconds, and the merge's MB/s
    beside a plain copy of the same tars (read, sha256, write) as the baseline."""
    walls = [run_build(config(cohort, out, 1, part=f"{i}/{n}"))[0] for i in range(1, n + 1)]
    tars = sorted((out / "parts").rglob("*.tar"))
    mb = sum(p.stat().st_size for p in tars) / 1e6
    t0 = time.perf_counter()
    for p in tars:
        data = p.read_bytes()
        hashlib.sha256(data).hexdigest()
        p.with_suffix(".copy").write_bytes(data)
        p.with_suffix(".copy").unlink()
    copy_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    merge_parts(out)
    merge_s = time.perf_counter() - t0
    print(
        f"{n} parts, 1 worker each: {', '.join(f'{w:.1f}' for w in walls)} s (side by side on {n} cores: "
        f"{max(walls):.1f} s); merge {mb:.0f} MB in {merge_s:.1f} s: {mb / merge_s:.0f} MB/s "
        f"({copy_s / merge_s:.2f}x a plain copy, {mb / copy_s:.0f} MB/s)"
    )
    return {
        "part_wall_s": [round(w, 1) for w in walls],
        "merge_s": round(merge_s, 2),
        "merge_mb": round(mb),
        "merge_mb_per_s": round(mb / merge_s),
        "plain_copy_mb_per_s": round(mb / copy_s),
    }


def profile(cfg: BuildConfig, n: int) -> list[dict[str, Any]]:
    """The ``n`` functions with the most own time in a 1-worker build."""
    prof = cProfile.Profile()
    prof.runcall(build_shards, cfg)
    stats = pstats.Stats(prof).sort_stats("tottime")
    top = []
    print(f"top {n} functions by own time (cProfile, 1 worker):")
    for (file, lineno, fn), (_, calls, own, cum, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:n]:
        where = f"{Path(file).parent.name}/{Path(file).name}:{lineno}({fn})" if lineno else fn
        print(f"  {own:7.2f} s own {cum:7.2f} s cumulative {calls:7d} calls  {where}")
        top.append({"function": where, "own_s": round(own, 2), "cumulative_s": round(cum, 2), "calls": calls})
    return top


if __name__ == "__main__":
    main()
