"""The smoke study through `snakemake --profile slurm all` on a real one-node SLURM cluster
(tests/slurm_cluster.py), judged by SLURM's own job-completion records, not by Snakemake's word.

What the run should look like is read from a dry run of the same command beforehand: every job
that has a command becomes one SLURM job, except that the members of a group job share one.
Needs Debian's slurm-wlm and munge (CI installs them); a developer without them may opt out with
VPEFT_SKIP_SLURM=1, which CI never sets.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO
from slurm_cluster import INSTALL_HINT, Cluster, job_details, missing_programs, running_cluster

# End-to-end: the smoke study through a real SLURM controller.
pytestmark = [pytest.mark.slow, pytest.mark.slurm]

OPT_OUT = "VPEFT_SKIP_SLURM"
# No slurmdbd here: job states come from squeue (finished jobs stay listed for MinJobAge) and are
# polled often, so the small study does not wait on the executor's default 40 s / 60 s pauses.
# --max-threads: the test node has this machine's few CPUs (the demo's pretrain rule asks for 8).
TEST_ONLY_ARGS = ("--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks",
                  "1", "--seconds-between-status-checks", "2")


@dataclass
class PlannedJob:
    rule: str
    group: str | None = None
    resources: dict[str, str] = field(default_factory=dict)
    has_command: bool = True
    local: bool = False  # a `localrules:` job, run by Snakemake itself


@dataclass
class Plan:
    """The jobs a dry run lists, with the group each belongs to."""
    jobs: list[PlannedJob]
    groups: int
    total: int  # the dry run's own job count ("Job stats")

    @property
    def slurm_jobs(self) -> int:
        """Jobs SLURM should run: one per group, one per other job with a command, not local."""
        return self.groups + sum(1 for j in self.jobs
                                 if j.group is None and j.has_command and not j.local)


GROUP_HEADER = re.compile(r"^\[[^]]*\] Group job (\S+) \(jobs in lexicogr\. order\):$")
JOB_HEADER = re.compile(r"^( {4})?(local)?rule (\w+):$")


def parse_dry_run(text: str) -> Plan:
    jobs: list[PlannedJob] = []
    group, groups = None, 0
    for line in text.splitlines():
        if m := GROUP_HEADER.match(line):
            group, groups = m.group(1), groups + 1
        elif m := JOB_HEADER.match(line):
            if not m.group(1):
                group = None
            jobs.append(PlannedJob(rule=m.group(3), group=group, local=bool(m.group(2))))
        elif jobs and line.strip().startswith("resources: "):
            items = line.strip()[len("resources: "):].split(", ")
            jobs[-1].resources = dict(item.partition("=")[::2] for item in items)
        elif jobs and line == "Shell command: None":
            jobs[-1].has_command = False
    total = re.search(r"^total\s+(\d+)$", text, re.MULTILINE)
    assert total, "no job count in the dry run's output:\n" + text[-3000:]
    return Plan(jobs=jobs, groups=groups, total=int(total.group(1)))


def checkout_copy(dest: Path) -> Path:
    """The repository's tracked and not-ignored files (what a fresh clone plus work in progress
    holds), so that the run writes data/, runs/ and logs/ outside the checkout."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@dataclass
class SlurmRun:
    workdir: Path
    cluster: Cluster
    plan: Plan
    proc: subprocess.CompletedProcess
    run_id: str
    submitted: dict[str, str]  # SLURM job id -> the SLURM log path Snakemake gave it
    records: list[dict[str, str]]  # SLURM's completion records of this run's jobs

    def submitted_as(self) -> dict[str, str]:
        """SLURM job id -> rule_<rule> or group_<group>_<rules>: the executor's log directory."""
        logs = self.workdir / "logs" / "slurm"
        return {job_id: Path(path).relative_to(logs).parts[0]
                for job_id, path in self.submitted.items()}

    def failure(self, why: str) -> str:
        return f"{why}\n--- snakemake (tail) ---\n{self.proc.stderr[-6000:]}"


def snakemake(workdir: Path, cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(workdir / "src"), os.environ.get("PYTHONPATH", "")]),
           # The site setting under test: a partition that is not the cluster's default.
           "SBATCH_PARTITION": cluster.other_partition}
    for unused in ("SBATCH_ACCOUNT", "SBATCH_QOS"):  # the test cluster has neither
        env.pop(unused, None)
    return subprocess.run(
        # One job per (task, method), as the cluster studies run (the smoke study groups them).
        [sys.executable, "-m", "snakemake", "--profile", "slurm", "all", "--config", "study=smoke",
         'overrides=["train.methods_per_job=1"]', *TEST_ONLY_ARGS, "--max-threads", str(cluster.cpus), *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=1200)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.environ.get(OPT_OUT) == "1":
        pytest.skip(f"{OPT_OUT}=1: the real-SLURM test was opted out of")
    missing = missing_programs()
    if missing:
        pytest.fail(f"the SLURM integration test needs {', '.join(missing)}: {INSTALL_HINT} "
                    f"(CI does), or set {OPT_OUT}=1 to opt out on a developer machine",
                    pytrace=False)
    with running_cluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory) -> SlurmRun:
    workdir = checkout_copy(tmp_path_factory.mktemp("checkout"))
    dry = snakemake(workdir, cluster, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-4000:]
    plan = parse_dry_run(dry.stdout + dry.stderr)

    proc = snakemake(workdir, cluster)
    log = proc.stdout + proc.stderr
    run_id = re.search(r"SLURM run ID: (\S+)", log)
    assert run_id, "no SLURM run ID in Snakemake's output:\n" + log[-4000:]
    submitted = dict(re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", log))
    records = [r for r in cluster.finished_jobs() if r.get("Name") == run_id.group(1)]
    return SlurmRun(workdir=workdir, cluster=cluster, plan=plan, proc=proc,
                    run_id=run_id.group(1), submitted=submitted, records=records)


def test_the_plan_was_read_from_the_dry_run(slurm_run):
    """Guards the parser: it found every job the dry run counted, and the bookkeeping group."""
    plan = slurm_run.plan
    assert len(plan.jobs) == plan.total
    assert plan.groups >= 1 and any(j.group == "bookkeeping" for j in plan.jobs)
    assert any(j.resources.get("gpu") == "1" for j in plan.jobs)


def test_every_job_ran_under_slurm_and_completed(slurm_run):
    run = slurm_run
    assert run.proc.returncode == 0, run.failure("snakemake --profile slurm all failed")
    assert (run.workdir / "reports" / "smoke" / "index.html").is_file()
    states = {r["JobId"]: (r["JobState"], r["ExitCode"]) for r in run.records}
    assert all(s == ("COMPLETED", "0:0") for s in states.values()), run.failure(str(states))
    # SLURM ran exactly the planned number of jobs: a job run locally (or never) would be missing.
    assert len(run.records) == run.plan.slurm_jobs, run.failure(
        f"SLURM recorded {len(run.records)} jobs of run {run.run_id}, the plan has "
        f"{run.plan.slurm_jobs}")
    # ... and they are the very jobs Snakemake submitted, run in this working copy.
    assert set(states) == set(run.submitted), run.failure("SLURM's and Snakemake's job ids differ")
    assert {r["WorkDir"] for r in run.records} == {str(run.workdir)}


def test_bookkeeping_jobs_of_a_task_share_one_slurm_job_of_one_cpu(slurm_run):
    run = slurm_run
    members = [j for j in run.plan.jobs if j.group == "bookkeeping"]
    assert {j.rule for j in members} == {"evaluate", "analyze"}
    assert len(members) > run.plan.groups  # several jobs per group job: fewer SLURM jobs
    grouped = {job_id for job_id, kind in run.submitted_as().items()
               if kind.startswith("group_bookkeeping")}
    assert len(grouped) == run.plan.groups
    for record in run.records:
        if record["JobId"] in grouped:
            # Members run one after another: one CPU and the largest member's memory (evaluate
            # and analyze ask for what their task's test logits need), not their sum.
            member_mem = {int(j.resources["mem_mb"]) for j in members}
            assert len(member_mem) == 2  # evaluate's and analyze's requests differ
            assert record["Tres"].startswith(f"cpu=1,mem={max(member_mem)}M,"), record


def test_training_jobs_and_only_they_hold_a_gpu(slurm_run):
    run = slurm_run
    gpu_rules = {j.rule for j in run.plan.jobs if j.resources.get("gpu") == "1"}
    assert gpu_rules and "evaluate" not in gpu_rules
    submitted_as = run.submitted_as()
    for record in run.records:
        wants_gpu = submitted_as[record["JobId"]].removeprefix("rule_") in gpu_rules
        # The job-completion log has no GRES without slurmdbd; slurmctld still knows the job.
        held = job_details(record["JobId"]).get("TresPerJob", "")
        assert ("gpu" in held) == wants_gpu, (submitted_as[record["JobId"]], held)


def test_site_partition_is_taken_from_the_environment(slurm_run):
    """SBATCH_PARTITION names a partition other than the default; every job ran there."""
    partitions = {r["Partition"] for r in slurm_run.records}
    assert partitions == {slurm_run.cluster.other_partition}


def test_each_slurm_job_left_its_log_under_logs(slurm_run):
    logs = {p.stem for p in (slurm_run.workdir / "logs" / "slurm").rglob("*.log")}
    assert logs == {r["JobId"] for r in slurm_run.records}


def test_rerunning_the_same_command_has_nothing_to_do(slurm_run):
    proc = snakemake(slurm_run.workdir, slurm_run.cluster, "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr
