"""SLURM for real: a one-node cluster on loopback (munged, slurmctld, slurmd; tests/slurm_cluster.py) runs
scripts/slurm/train.sbatch as a 2-task DDP (gloo) job. The requeue signal mid-run makes it checkpoint,
requeue and resume, and it ends with the losses of an uninterrupted run. A 2-job -m sweep runs through
Hydra's submitit launcher (launcher=slurm). scripts/slurm/shard.sbatch builds the test cohort's shards as a
2-task array and a dependent merge job, byte-identical to a one-machine build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import SECRET
from slurm_cluster import SlurmCluster, missing
from test_shard_parts import digests
from test_train import _losses

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"
SHARD_SBATCH = ROOT / "scripts" / "slurm" / "shard.sbatch"
BIN = Path(sys.executable).parent
MAX_STEPS = 24
#: what both jobs train: the tiny model on the test shards, 2 ranks, a checkpoint every 4 steps, no validation
TRAIN = (
    "experiment=quick",
    "model/backbone=tiny",
    "model.row_len=null",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.max_events=4",
    "trainer.accelerator=cpu",
    "trainer.strategy=ddp",
    f"trainer.max_steps={MAX_STEPS}",
    "trainer.max_epochs=50",
    "trainer.log_every_n_steps=1",
    "trainer.check_val_every_n_epoch=1000",
    "callbacks.checkpoint.every_n_train_steps=4",
    "callbacks.checkpoint.keep_last=null",  # keep every step checkpoint: the test waits for step 4's
    "trainer.enable_progress_bar=false",
    "~logger.tensorboard",
)
#: sbatch options for this 2-CPU node in place of the script's GPU defaults (command-line options win)
ONE_NODE = (
    "--nodes=1",
    "--ntasks-per-node=2",
    "--gpus-per-node=0",
    "--cpus-per-task=1",
    "--time=15",
    "--job-name=omnimodal-test",
)
ENV = {
    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    "OMNIMODAL_TRAIN": str(BIN / "omnimodal-train"),
    "MASTER_ADDR": "127.0.0.1",
    "PYTHONWARNINGS": "ignore",
    "OMP_NUM_THREADS": "1",
}


@pytest.fixture(scope="module")
def even_shards(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test cohort's shards with 20 training subjects in 4 shards of 5: both ranks read 10 subjects
    (5 batches) every epoch, none repeated to even out the ranks, so the run does not depend on that."""
    from datamodules.shards.builder import BuildConfig, build_shards

    out = tmp_path_factory.mktemp("even_shards")
    subjects = pd.read_csv(cohort / "subjects.csv")
    consenting = subjects["consent"].astype(str).str.lower() == "true"
    subjects["split"] = "val"
    subjects.loc[subjects.index[consenting][:20], "split"] = "train"
    subjects.to_csv(out / "subjects.csv", index=False)
    build_shards(
        BuildConfig(
            subjects=str(out / "subjects.csv"),
            events=str(cohort / "events.csv"),
            labels=str(cohort / "labels.csv"),
            out=str(out / "shards"),
            secret=SECRET,
            max_samples_per_shard=5,
            workers=2,
        )
    )
    train = [s["samples"] for s in json.loads((out / "shards" / "index.json").read_text())["splits"]["train"]["shards"]]
    assert train == [5, 5, 5, 5], train
    return out / "shards"


@pytest.fixture(scope="module")
def cluster():
    if (reason := missing()) is not None:
        pytest.skip(reason)
    with SlurmCluster.start(cpus=2) as c:
        yield c


def _submit(cluster: SlurmCluster, shards: Path, run_dir: Path) -> tuple[str, Path]:
    out = run_dir.parent / f"{run_dir.name}.out"
    job = cluster.sbatch(
        SBATCH,
        *TRAIN,
        "data=shards",
        f"data.root={shards}",
        "data.synthetic=null",
        options=(*ONE_NODE, f"--output={out}", f"--chdir={run_dir.parent}"),
        env={**ENV, "RUN_DIR": str(run_dir)},
    )
    return job, out


def _ended(cluster: SlurmCluster, job: str, out: Path, timeout: float = 420) -> dict[str, str]:
    info = cluster.wait(
        job, lambda j: j["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout, "the job to end"
    )
    # the controller's and node daemon's logs too: a job that fails before its script prints (RunTime 0) says why
    # only there
    assert info["JobState"] == "COMPLETED", f"{info}\n{out.read_text()[-4000:]}\n{cluster.logs()}"
    return info


def test_requeue_signal_checkpoints_requeues_and_resumes_to_the_uninterrupted_losses(
    cluster: SlurmCluster, even_shards: Path, tmp_path: Path
) -> None:
    shards = even_shards
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "requeued"
    ref_job, ref_out = _submit(cluster, shards, ref_dir)
    job, out = _submit(cluster, shards, run_dir)  # waits for the node until the first job is done

    _ended(cluster, ref_job, ref_out)
    ref = _losses(ref_dir)
    assert list(ref.index) == list(range(MAX_STEPS)), ref_out.read_text()[-3000:]

    # preempt it once it has checkpointed step 4: SLURM sends SIGUSR1 to every task
    first = run_dir / "checkpoints" / "epoch=0-step=4.ckpt"
    cluster.wait(
        job, lambda j: first.exists() or j["JobState"] not in ("PENDING", "RUNNING"), 300, f"{first.name} to appear"
    )
    assert first.exists(), out.read_text()[-3000:]
    cluster.run("scancel", "--signal=USR1", job)
    # the job requeues itself; SLURM holds a requeued job back for a while: release it now
    info = cluster.wait(job, lambda j: j["Restarts"] == "1" and j["JobState"] == "PENDING", 180, "the requeue")
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    info = _ended(cluster, job, out)
    log = out.read_text()
    assert info["Restarts"] == "1" and "(restart 1)" in log

    hpc = run_dir / "hpc_ckpt_1.ckpt"
    step = torch.load(hpc, map_location="cpu", weights_only=True)["global_step"]
    assert 4 <= step < MAX_STEPS, log[-3000:]  # saved mid-run, at the end of a step
    assert f"resuming from {hpc}" in log
    got = _losses(run_dir)
    assert not got.index.duplicated().any()  # each step trained (and logged) once across both attempts
    pd.testing.assert_series_equal(got.sort_index(), ref.sort_index(), rtol=1e-5, atol=1e-6)
    assert log.count("done in") == 2  # both ranks of the resumed attempt finished


def test_multirun_sweep_through_the_submitit_launcher(cluster: SlurmCluster, shards: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = [
        str(BIN / "omnimodal-train"),
        "-m",
        "launcher=slurm",
        *TRAIN,
        "trainer.max_steps=2",
        "callbacks.checkpoint.every_n_train_steps=2",
        "data=shards",
        f"data.root={shards}",
        "data.synthetic=null",
        "objective.masked_weight=0.5,1.0",
        f"hydra.sweep.dir={sweep}",
        # one task per job: the two jobs run side by side on the 2 CPUs (the test above covers 2-task DDP)
        "hydra.launcher.tasks_per_node=1",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=15",
        "hydra.launcher.partition=debug",
    ]
    res = subprocess.run(cmd, cwd=tmp_path, env={**cluster.env, **ENV}, capture_output=True, text=True, timeout=900)
    jobs = sorted((sweep / ".submitit").glob("*_*/*_log.out"))  # array tasks <job>_<i>/
    logs = "\n".join(p.read_text() for p in sorted((sweep / ".submitit").glob("*_*/*_log.*")))
    assert res.returncode == 0, f"{res.stdout[-2000:]}\n{res.stderr[-3000:]}\n{logs[-4000:]}"
    assert len(jobs) == 2, res.stdout
    for n, weight in (("0", 0.5), ("1", 1.0)):
        run = sweep / n
        assert (run / "checkpoints" / "last.ckpt").is_file(), logs[-4000:]
        hp = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert hp["global_step"] == 2 and hp["hyper_parameters"]["objective"]["masked_weight"] == weight
    # each run was a SLURM job of its own (an array task), trained there and returned its result
    assert {p.parent.name for p in jobs} == {f"{jobs[0].parent.name.split('_')[0]}_{i}" for i in (0, 1)}
    for job in jobs:
        log = "\n".join(p.read_text() for p in job.parent.glob("*_log.*"))
        assert "Job completed successfully" in log and "done in" in log, log[-3000:]


def test_shard_array_job_and_dependent_merge_write_the_one_machine_build(
    cluster: SlurmCluster, cohort: Path, shards: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shards"
    env = {**ENV, "OMNIMODAL_SHARD": str(BIN / "omnimodal-shard"), "OMNIMODAL_SHARD_SECRET": SECRET}
    build = [f"--{t}={cohort / f'{t}.csv'}" for t in ("subjects", "events", "labels")]  # as conftest.build
    one_cpu = ("--cpus-per-task=1", "--time=10", f"--chdir={tmp_path}")
    array = cluster.sbatch(
        SHARD_SBATCH,
        *build,
        f"--out={out}",
        "--max-samples-per-shard=4",
        options=("--array=0-1", *one_cpu, "--output=part-%a.out"),
        env=env,
    )
    merge = cluster.sbatch(
        SHARD_SBATCH,
        "merge",
        str(out),
        options=(f"--dependency=afterok:{array}", *one_cpu, "--output=merge.out"),
        env=env,
    )
    info = cluster.wait(
        merge,
        lambda j: (
            j["JobState"] in ("COMPLETED", "FAILED", "CANCELLED") or j.get("Reason") == "DependencyNeverSatisfied"
        ),
        240,
        "the merge to end",
    )
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("*.out")))
    assert info["JobState"] == "COMPLETED", f"{info}\n{logs}"
    assert "part 1/2" in logs and "part 2/2" in logs and "merged 2 parts" in logs, logs
    assert digests(out) == digests(shards)  # every tar, index.json, report.json and report.md; no parts left
    merged, one = (json.loads((d / "report.json").read_text()) for d in (out, shards))
    for k in ("subjects_in_table", "samples", "splits", "withdrawn_consent", "no_valid_events", "rejected"):
        assert merged[k] == one[k], k
