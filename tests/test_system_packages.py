"""`make test` installs the suite's system packages when missing, or stops at once with one line."""
from __future__ import annotations

import os
import shutil
import subprocess

from conftest import REPO


def _run_without_packages(tmp_path, as_nobody: bool) -> subprocess.CompletedProcess:
    # A PATH holding only what the script itself needs: chromium, slurm, munge and sudo are absent.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash",):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    cmd = ["bash", str(REPO / "tests" / "system_packages.sh")]
    if as_nobody:
        cmd = [shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    return subprocess.run(cmd, env={"PATH": str(bin_dir)}, capture_output=True, text=True,
                          timeout=30)


def test_missing_packages_without_root_stop_at_once_with_one_line(tmp_path):
    as_nobody = os.geteuid() == 0 and shutil.which("setpriv") is not None
    proc = _run_without_packages(tmp_path, as_nobody)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "chromium slurm-wlm munge" in lines[0]
    if as_nobody or os.geteuid() != 0:
        assert "sudo apt-get install chromium slurm-wlm munge" in lines[0]
