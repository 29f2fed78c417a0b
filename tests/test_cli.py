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


def test_verbs_import_only_what_they_use():
    """cli.py imports vpeft modules inside its verbs: `vpeft plan` (and `--help`) never load torch
    (python start-up is paid by every Snakemake job)."""
    code = ("import sys; from vpeft.cli import main; main(['plan', '--study', 'demo']); "
            "print(sorted(m for m in ('torch', 'timm', 'numpy', 'vpeft.protocol') "
            "if m in sys.modules), file=sys.stderr)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["study"] == "demo"
    assert proc.stderr.strip().splitlines()[-1] == "[]"


def test_every_verb_is_one_entry_of_the_verb_table():
    """One table owns the verbs, the robustness study's included: each entry's function is the
    one its parser calls and serves no other verb (nothing dispatches on the verb's name a
    second time), and the module loads no vpeft module at import time."""
    import ast

    from vpeft import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    assert list(sub.choices) == list(cli.VERBS)
    for name, verb in cli.VERBS.items():
        assert sub.choices[name].get_default("func") is verb.run, name
    assert len({verb.run for verb in cli.VERBS.values()}) == len(cli.VERBS)
    assert {"imagenet-split", "prepare-shift", "zeroshot-head", "wise", "robust-synth",
            "fit-clip"} <= set(cli.VERBS)
    tree = ast.parse((REPO / "src" / "vpeft" / "cli.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [ast.unparse(n) for n in top if "vpeft" in ast.unparse(n)]
