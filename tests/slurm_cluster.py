"""A real one-node SLURM cluster on this machine, for the integration test (tests/test_slurm.py).

Debian's `slurm-wlm` and `munge` daemons run in the foreground as children of the test, with their
state, sockets, PID files and logs under one private directory; they are stopped by PID when the
test ends, whatever happened. The node has two fake GPUs (`gres` backed by /dev/null and /dev/zero)
and SLURM writes one line per finished job to a `jobcomp/filetxt` log: that log, not Snakemake's
output, is the record of what ran under SLURM.

Only two paths outside the private directory are touched: the job-step daemon reads its
configuration from /etc/slurm only (it drops SLURM_CONF), so slurm.conf and gres.conf are written
there, marked as ours. Files that were there before are kept aside and put back afterwards; files
left behind by a crashed earlier run are recognised by the mark, and that run's daemons are stopped
through the PID files it wrote.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SLURM_ETC = Path("/etc/slurm")
CONF_FILES = ("slurm.conf", "gres.conf")
MARK = "# Written by vpeft tests/slurm_cluster.py for a test cluster; state directory: "
BACKUP_SUFFIX = ".vpeft-backup"
DAEMONS = ("munged", "slurmctld", "slurmd")
REQUIRED = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel",
            "scontrol")
INSTALL_HINT = "install Debian's slurm-wlm and munge (apt-get install -y slurm-wlm munge)"
# Fake hardware the node advertises (slurmd trusts slurm.conf: SlurmdParameters=config_overrides):
# enough memory for two 16 GB training jobs side by side; nothing enforces it.
NODE_MEMORY_MB = 64000
FAKE_GPUS = ("/dev/null", "/dev/zero")


class ClusterError(RuntimeError):
    """The test cluster could not be started; the message carries the daemons' own words."""


def missing_programs() -> list[str]:
    return [name for name in REQUIRED if shutil.which(name) is None]


@dataclass(frozen=True)
class Cluster:
    state: Path
    host: str
    cpus: int
    default_partition: str
    other_partition: str  # same node; jobs land here only when asked for by name

    @property
    def jobcomp_log(self) -> Path:
        return self.state / "jobcomp.log"

    def finished_jobs(self) -> list[dict[str, str]]:
        """SLURM's job-completion records: one dict per finished job (JobId, Name, JobState,
        Partition, WorkDir, Tres, ...)."""
        if not self.jobcomp_log.exists():
            return []
        records = []
        for line in self.jobcomp_log.read_text().splitlines():
            if line.strip():
                records.append(dict(field.partition("=")[::2] for field in line.split()))
        return records


def job_details(job_id: str) -> dict[str, str]:
    """slurmctld's view of a job (kept MinJobAge after it ends): NumCPUs, TresPerJob, ..."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return dict(field.partition("=")[::2] for field in out.split())


def _pid_alive(pid: int, name: str) -> bool:
    """True if `pid` runs a program called `name` (a PID file can outlive its process)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == name
    except OSError:
        return False


def _stop_pid(pid: int, name: str, timeout: float = 15) -> None:
    if not _pid_alive(pid, name):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid, name):
        time.sleep(0.2)
    if _pid_alive(pid, name):
        os.kill(pid, signal.SIGKILL)


def _stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _our_state_dir(conf: Path) -> Path | None:
    """The state directory named in a slurm.conf this module wrote, else None."""
    if not conf.exists():
        return None
    first = conf.read_text().splitlines()[:1]
    if first and first[0].startswith(MARK):
        return Path(first[0][len(MARK):].strip())
    return None


def _stop_stale_daemons() -> None:
    """Stop the daemons of an earlier test run that died before it could stop them."""
    stale = _our_state_dir(SLURM_ETC / "slurm.conf")
    if stale is None:
        return
    for name in reversed(DAEMONS):
        pid_file = stale / f"{name}.pid"
        if pid_file.exists():
            try:
                _stop_pid(int(pid_file.read_text().split()[0]), name)
            except (ValueError, IndexError):
                pass


@contextmanager
def _etc_files(files: dict[str, str]) -> Iterator[None]:
    """Write /etc/slurm/<name>; put back what was there before (ours from a crashed run: dropped)."""
    SLURM_ETC.mkdir(parents=True, exist_ok=True)
    ours_already = _our_state_dir(SLURM_ETC / "slurm.conf") is not None
    for name, text in files.items():
        path, backup = SLURM_ETC / name, SLURM_ETC / (name + BACKUP_SUFFIX)
        if path.exists() and not ours_already:
            if backup.exists():
                raise ClusterError(f"{path} exists and so does {backup}: the test will not overwrite "
                                   "either. Restore the right one by hand, delete the other.")
            shutil.copy2(path, backup)
        path.write_text(text)
    try:
        yield
    finally:
        for name in files:
            path, backup = SLURM_ETC / name, SLURM_ETC / (name + BACKUP_SUFFIX)
            if backup.exists():
                os.replace(backup, path)
            else:
                path.unlink(missing_ok=True)


def _slurm_conf(state: Path, host: str, cpus: int, partitions: tuple[str, str]) -> str:
    default, other = partitions
    gpus = len(FAKE_GPUS)
    return "\n".join([
        f"{MARK}{state}",
        "ClusterName=vpeft-test",
        f"SlurmctldHost={host}(127.0.0.1)",
        "SlurmUser=root",
        "AuthType=auth/munge",
        f"AuthInfo=socket={state}/munge.socket",
        f"StateSaveLocation={state}/ctld",
        f"SlurmdSpoolDir={state}/spool",
        f"SlurmctldPidFile={state}/slurmctld.pid",
        f"SlurmdPidFile={state}/slurmd.pid",
        f"SlurmctldLogFile={state}/slurmctld.log",
        f"SlurmdLogFile={state}/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "MpiDefault=none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SlurmdParameters=config_overrides",
        "ReturnToService=2",
        # Finished jobs stay visible to squeue and scontrol for an hour: the executor's status
        # command without slurmdbd (design.md section 5), and the test's view of their GPUs.
        "MinJobAge=3600",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={state}/jobcomp.log",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "GresTypes=gpu",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={NODE_MEMORY_MB} "
        f"Gres=gpu:fake:{gpus} State=UNKNOWN",
        f"PartitionName={default} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        f"PartitionName={other} Nodes={host} Default=NO MaxTime=INFINITE State=UP",
        "",
    ])


def _gres_conf(host: str) -> str:
    return "".join(f"NodeName={host} Name=gpu Type=fake File={dev}\n" for dev in FAKE_GPUS)


def _wait(what: str, ready, procs: dict[str, subprocess.Popen], state: Path,
          timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with {proc.returncode} while waiting for {what}"
                                   + _logs(state))
        if ready():
            return
        time.sleep(0.5)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}" + _logs(state))


def _logs(state: Path) -> str:
    parts = []
    for log in sorted(state.glob("*.log")) + sorted(state.glob("*.out")):
        if log.name != "jobcomp.log":
            parts.append(f"\n--- {log} (tail) ---\n" + "\n".join(log.read_text().splitlines()[-15:]))
    return "".join(parts)


def _quiet(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def _cancel_all_jobs(timeout: float = 60) -> None:
    """Cancel whatever is still queued or running: slurmstepd outlives slurmd otherwise."""
    _quiet(["scancel", "--user", str(os.getuid())])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = _quiet(["squeue", "-h", "-t", "PENDING,RUNNING,COMPLETING,SUSPENDED", "-o", "%i"])
        if out.returncode != 0 or not out.stdout.strip():
            return
        time.sleep(1)


@contextmanager
def running_cluster(state: Path, partitions: tuple[str, str] = ("debug", "vpeft")
                    ) -> Iterator[Cluster]:
    """munged, slurmctld and slurmd up, the node idle; all stopped by PID on exit."""
    missing = missing_programs()
    if missing:
        raise ClusterError(f"not installed: {', '.join(missing)}; {INSTALL_HINT}")
    if os.geteuid() != 0:
        raise ClusterError("starting SLURM daemons needs root (they write /etc/slurm and run jobs "
                           "as the submitting user)")
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    state = state.resolve()
    for sub in ("ctld", "spool"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)  # munged refuses a socket directory others can write to
    _stop_stale_daemons()

    procs: dict[str, subprocess.Popen] = {}
    with ExitStack() as stack:
        stack.enter_context(_etc_files({"slurm.conf": _slurm_conf(state, host, cpus, partitions),
                                        "gres.conf": _gres_conf(host)}))

        def start(name: str, *args: str) -> None:
            out = open(state / f"{name}.out", "w")
            stack.callback(out.close)
            procs[name] = subprocess.Popen([name, *args], stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)
            # Registered before the next daemon starts: unwinding stops them in reverse order.
            stack.callback(_stop_process, procs[name])

        key = state / "munge.key"
        subprocess.run(["mungekey", "--create", "--force", f"--keyfile={key}"], check=True,
                       capture_output=True)
        start("munged", "--foreground", "--force", f"--socket={state}/munge.socket",
              f"--key-file={key}", f"--pid-file={state}/munged.pid",
              f"--log-file={state}/munged.log", f"--seed-file={state}/munged.seed")
        _wait("munged's socket", (state / "munge.socket").exists, procs, state)
        start("slurmctld", "-D", "-i")
        _wait("slurmctld", lambda: _quiet(["scontrol", "ping"]).stdout.count("UP") > 0,
              procs, state)
        start("slurmd", "-D")

        def node_idle() -> bool:
            out = _quiet(["sinfo", "-h", "-N", "-n", host, "-o", "%t"]).stdout.split()
            return bool(out) and all(s == "idle" for s in out)

        _wait(f"node {host} to be idle", node_idle, procs, state)
        # Runs first on the way out, while the daemons still answer.
        stack.callback(_cancel_all_jobs)
        yield Cluster(state=state, host=host, cpus=cpus, default_partition=partitions[0],
                      other_partition=partitions[1])
