"""dvc.yaml through real DVC and real Snakemake: `dvc repro` reproduces the smoke study in a fresh
clone, a second `dvc repro` does nothing, and `dvc push` / `dvc pull` through a local-directory
remote restore the same bytes in another clone. Nothing reaches the network."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

# End-to-end: dvc repro through real Snakemake.
pytestmark = [pytest.mark.slow]

STUDY = "smoke"
TASK = "count"  # the smoke study cut to one of its tasks (an override) to keep the test short
# What DVC versions: prepared data, backbones, runs (checkpoints) and the report.
OUTPUTS = (f"data/prepared/{STUDY}", "models", f"runs/{STUDY}", f"reports/{STUDY}")
BIN = Path(sys.executable).parent  # dvc.yaml's commands call `snakemake` from PATH


def _env(repo: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
            "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join([str(repo / "src"), os.environ.get("PYTHONPATH", "")]),
            "GIT_AUTHOR_NAME": "vpeft test", "GIT_AUTHOR_EMAIL": "test@vpeft.invalid",
            "GIT_COMMITTER_NAME": "vpeft test", "GIT_COMMITTER_EMAIL": "test@vpeft.invalid"}


def run(repo: Path, *args: str, timeout: int = 120) -> str:
    """Run a command in ``repo``; fail the test with its output unless it exits 0."""
    proc = subprocess.run(list(args), cwd=repo, env=_env(repo), capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{out[-5000:]}"
    return out


def dvc(repo: Path, *args: str, timeout: int = 120) -> str:
    return run(repo, sys.executable, "-m", "dvc", *args, timeout=timeout)


def snakemake(repo: Path, *args: str) -> str:
    return run(repo, sys.executable, "-m", "snakemake", *args, "--config", f"study={STUDY}")


def git(repo: Path, *args: str) -> str:
    return run(repo, "git", *args)


def files(repo: Path) -> dict[str, Path]:
    """Every file under the DVC-versioned output directories, by path relative to ``repo``."""
    return {str(p.relative_to(repo)): p for top in OUTPUTS for p in sorted((repo / top).rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh clone of the working tree (uncommitted work included), switched to the smoke
    study, after one `dvc repro`."""
    repo = tmp_path_factory.mktemp("dvc") / "clone"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is left out
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, repo / name)
    workflow = repo / "params" / "workflow.yaml"
    text, n = re.subn(r"^study: \w+", f"study: {STUDY}", workflow.read_text(), flags=re.M)
    text, m = re.subn(r"^overrides: \[\]", f'overrides: ["study.tasks=[{TASK}]"]', text, flags=re.M)
    assert n == m == 1, "params/workflow.yaml: expected one `study:` and one `overrides: []` line"
    workflow.write_text(text)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "smoke study")
    (repo.parent / "repro.log").write_text(dvc(repo, "repro", timeout=900))  # outside the clone
    return repo


def test_repro_reproduces_the_study(repo):
    log = (repo.parent / "repro.log").read_text()
    for stage in ("data", "train", "report"):
        assert f"Running stage '{stage}'" in log, log[-3000:]
    methods = yaml.safe_load((repo / "params" / "study" / f"{STUDY}.yaml").read_text())["study"]["methods"]
    assert (repo / "data" / "prepared" / STUDY / TASK / "manifest.json").is_file()
    assert (repo / "models" / "vit_smoke.safetensors").stat().st_size > 0
    html = (repo / "reports" / STUDY / "index.html").read_text()
    [workspace] = json.loads(dvc(repo, "metrics", "show", "--json")).values()
    metrics = workspace["data"][f"reports/{STUDY}/metrics.json"]["data"]
    for method in methods:
        final = repo / "runs" / STUDY / TASK / method / "final"
        assert (final / "adapter.safetensors").stat().st_size > 0, final
        evaluation = json.loads((final / "test_eval.json").read_text())
        assert f'data-method="{method}"' in html
        # the metrics DVC reads are the report's own numbers (one task: mean = its test top-1)
        assert metrics[method]["mean"] == pytest.approx(evaluation["test_top1"])
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == ["data", "report", "train"]
    assert lock["stages"]["data"]["params"][f"params/study/{STUDY}.yaml"]["study"]["name"] == STUDY
    # plots as dvc.yaml defines them, read offline (`dvc plots show` HTML would need a CDN)
    plots = json.loads(dvc(repo, "plots", "show", "--json"))["data"]
    values = [v for plot in plots.values() for p in plot for v in p["content"]["data"]["values"]]
    assert {v["method"] for v in values} == set(methods)


def test_a_second_repro_does_nothing(repo):
    before = {name: p.stat().st_mtime_ns for name, p in files(repo).items()}
    out = dvc(repo, "repro")
    assert "Running stage" not in out, out
    for stage in ("data", "train", "report"):
        assert f"Stage '{stage}' didn't change, skipping" in out, out
    assert {name: p.stat().st_mtime_ns for name, p in files(repo).items()} == before
    assert "Data and pipelines are up to date" in dvc(repo, "status")
    # Snakemake agrees: DVC's cache handling left its mtimes consistent
    plan = snakemake(repo, "--dry-run", "all")
    assert "Nothing to be done" in plan, plan[-4000:]


def test_push_then_pull_restores_the_same_bytes_in_another_clone(repo, tmp_path):
    git(repo, "add", "-A")
    assert git(repo, "status", "--porcelain").split() == ["A", "dvc.lock"]  # nothing else to commit
    dvc(repo, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    git(repo, "commit", "-q", "-a", "-m", "dvc.lock and the remote")
    dvc(repo, "push")

    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(repo), str(other))
    assert not (other / "runs").exists()
    dvc(other, "pull")
    pushed, pulled = files(repo), files(other)
    assert sorted(pulled) == sorted(pushed)
    assert any(name.endswith("final/adapter.safetensors") for name in pulled)
    for name, path in pulled.items():
        assert path.read_bytes() == pushed[name].read_bytes(), name
    assert "Data and pipelines are up to date" in dvc(other, "status")
    # The checkout's mtimes mean nothing to Snakemake; --touch makes it agree, DVC stays clean.
    snakemake(other, "--cores", "1", "--touch", "all")
    assert "Nothing to be done" in snakemake(other, "--dry-run", "all")
    assert "Data and pipelines are up to date" in dvc(other, "status")
