"""The command line: `vpeft params` and user-facing errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def vpeft(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "vpeft", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_params_counts_lora_on_vit_b16_without_weights():
    proc = vpeft("params", "--model", "vit_base_patch16_224", "--method", "lora", "-p", "rank=8",
                 "--classes", "100")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # 12 blocks x rank 8 x (768 in + 2304 out)
    assert out["trainable_params"] == 12 * 8 * (768 + 3 * 768)
    assert out["trainable_params_with_head"] == out["trainable_params"] + 768 * 100 + 100
    assert out["total_params"] > 85_000_000


def test_unknown_hyperparameter_is_one_clear_line():
    proc = vpeft("params", "--method", "lora", "-p", "rnak=8")
    assert proc.returncode == 2
    assert "unknown hyper-parameter(s) ['rnak']" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_study_without_its_data_root_names_the_key():
    env_free = {k: v for k, v in os.environ.items() if k not in ("VPEFT_VTAB_ROOT", "VPEFT_WEIGHTS")}
    proc = subprocess.run([sys.executable, "-m", "vpeft", "plan", "--study", "vtab1k"], cwd=REPO,
                          env={**env_free, "PYTHONPATH": str(REPO / "src")}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "study.data.root" in proc.stderr and "Traceback" not in proc.stderr
