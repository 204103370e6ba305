"""A real one-node SLURM cluster on loopback, for tests: munged, slurmctld and slurmd started as child
processes from a private folder (own munge key and socket, own ports), stopped by PID afterwards.

    with SlurmCluster.start(cpus=2) as cluster:
        job = cluster.sbatch(script)              # job id
        cluster.wait(job, lambda j: j["JobState"] == "COMPLETED")

Needs Debian's ``slurm-wlm`` and ``munge`` and root (slurmd runs jobs as the submitting user and
munged must run as user ``munge``). :func:`missing` says why a cluster cannot start here, or None.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "srun")


def missing() -> str | None:
    """Why a loopback cluster cannot run on this machine (None: it can)."""
    absent = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if absent:
        return (
            f"SLURM binaries missing: {', '.join(absent)}; install them with "
            "`apt-get install slurm-wlm munge` (the README's test command does this on Debian/Ubuntu)"
        )
    if os.geteuid() != 0:
        return "a loopback SLURM cluster needs root (slurmd starts jobs as the submitting user)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no `munge` user (install the munge package)"
    return None


def _exe(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf(root: Path, host: str, cpus: int) -> str:
    return f"""\
ClusterName=omnitest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
KillWait=5
MinJobAge=600
SlurmdTimeout=60
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    root: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @classmethod
    def start(cls, cpus: int = 2, timeout: float = 60.0) -> SlurmCluster:
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        root = Path(tempfile.mkdtemp(prefix="omnimodal-slurm-"))
        root.chmod(0o755)  # munged (user munge) must reach its folder
        for d in ("state", "spool", "log", "munge"):
            (root / d).mkdir()
        munge = pwd.getpwnam("munge")
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        for p in (root / "munge", key):
            os.chown(p, munge.pw_uid, munge.pw_gid)
        (root / "munge").chmod(0o700)  # munged refuses folders others can write or read its key from
        key.chmod(0o400)
        (root / "munge").chmod(0o711)  # ... but clients (root and job users) must reach the socket
        host = socket.gethostname().split(".")[0]
        (root / "slurm.conf").write_text(_conf(root, host, cpus))
        env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
        for k in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF"]:
            del env[k]  # the cluster is ours, whatever the caller runs inside
        cluster = cls(root, env)
        try:
            m = root / "munge"
            cluster._spawn(
                "munged",
                [
                    _exe("munged"),
                    "-F",
                    f"--key-file={key}",
                    f"--socket={m}/munge.socket",
                    f"--pid-file={m}/munged.pid",
                    f"--log-file={m}/munged.log",
                    f"--seed-file={m}/munged.seed",
                ],
                user="munge",
                group="munge",
            )
            cluster._until(lambda: (m / "munge.socket").exists(), timeout, "munged to open its socket")
            cluster._spawn("slurmctld", [_exe("slurmctld"), "-D", "-i"])
            cluster._until(lambda: cluster._ok(["scontrol", "ping"], "UP"), timeout, "slurmctld to answer")
            cluster._spawn("slurmd", [_exe("slurmd"), "-D", "-N", host])
            cluster._until(lambda: cluster._ok(["sinfo", "-h", "-o", "%t"], "idle"), timeout, "the node to be idle")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    # -- processes -----------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], **kw) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw
        )

    def _ok(self, cmd: list[str], want: str) -> bool:
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)
        return r.returncode == 0 and want in r.stdout

    def _until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0]} exited while waiting for {what}:\n{self.logs()}")
            if cond():
                return
            time.sleep(0.3)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        out = []
        for p in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if p.is_file():
                out.append(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    def stop(self) -> None:
        """Stop the daemons by PID (slurmd, slurmctld, munged), then remove the cluster's folder."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(
                ["scancel", "--full", "--user", pwd.getpwuid(os.geteuid()).pw_name],
                env=self.env,
                capture_output=True,
                timeout=30,
            )
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- jobs -------------------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True) -> str:
        r = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr}\n{self.logs()}")
        return r.stdout

    def sbatch(
        self, script: Path, *script_args: str, options: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> str:
        """Submit ``script`` with sbatch ``options`` and the script's arguments; returns the job id."""
        r = subprocess.run(
            ["sbatch", "--parsable", *options, str(script), *script_args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"sbatch {script} failed: {r.stderr}\n{self.logs()}")
        return r.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, StartTime, ...)."""
        out = self.run("scontrol", "show", "job", "-o", job_id)
        return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", out))

    def wait(self, job_id: str, cond: Callable[[dict[str, str]], bool], timeout: float, what: str) -> dict[str, str]:
        info: dict[str, str] = {}

        def check() -> bool:
            nonlocal info
            info = self.job(job_id)
            return cond(info)

        try:
            self._until(check, timeout, f"job {job_id}: {what}")
        except TimeoutError as e:
            raise TimeoutError(f"{e}\nlast state: {info}") from None
        return info
