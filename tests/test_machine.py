"""Which machine made a result (vpeft.machine): recorded in every run's metrics.json, summarised
and compared in the report's provenance; the ``train.cpu_kernels`` switch and its config key."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import smoke_plan
from test_report import STUDY, TEST_TOP1, render, write_run
from vpeft import layout, machine
from vpeft.config import load_study
from vpeft.errors import ConfigError
from vpeft.io import read_json
from vpeft.protocol import run_point
from vpeft.report import collect_study

SRC = Path(__file__).resolve().parents[1] / "src"

# /proc/cpuinfo as Linux writes it (first processor of an Intel Xeon and of an ARM Neoverse)
XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) Platinum 8480C
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 smep avx512f avx512bw avx512_bf16 amx_tile amx_bf16

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480C
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes sha1 sha2 crc32 atomics fphp asimdhp sve sve2
CPU implementer\t: 0x41
CPU part\t: 0xd4f
"""


def test_cpu_info_reads_model_vendor_and_vector_extensions(tmp_path: Path) -> None:
    (tmp_path / "xeon").write_text(XEON)
    xeon = machine.cpu_info(tmp_path / "xeon")
    assert xeon["model"] == "Intel(R) Xeon(R) Platinum 8480C" and xeon["vendor"] == "GenuineIntel"
    assert xeon["vector_extensions"] == ["amx_bf16", "amx_tile", "avx", "avx2", "avx512_bf16",
                                         "avx512bw", "avx512f", "f16c", "fma", "sse4_2"]
    (tmp_path / "arm").write_text(ARM)
    arm = machine.cpu_info(tmp_path / "arm")
    assert arm["vendor"] == "0x41"
    assert arm["vector_extensions"] == ["asimd", "asimdhp", "sve", "sve2"]


def test_cpu_info_never_fails_without_proc_cpuinfo(tmp_path: Path) -> None:
    info = machine.cpu_info(tmp_path / "missing")
    assert info["vendor"] == "unknown" and info["vector_extensions"] == "unknown"
    assert info["cores"] == os.cpu_count()
    assert machine.summary(None) == "not recorded" and machine.machine_key({}) == "unknown"


def test_nvidia_driver_version_as_the_kernel_module_writes_it(tmp_path: Path) -> None:
    (tmp_path / "version").write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build  "
        "(dvs-builder@U16-I3-B03-4-3)  Tue Mar  5 22:18:35 UTC 2024\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    assert machine.nvidia_driver(tmp_path / "version") == "550.54.15"
    assert machine.nvidia_driver(tmp_path / "missing") == "unknown"


def test_a_real_run_records_its_machine(tmp_path, prepared_task, tiny_weights) -> None:
    plan = smoke_plan(tmp_path, prepared_task, tiny_weights, methods="linear")
    run_point(plan, "count", "linear", plan.points["linear"][0], "grid")
    metrics = read_json(layout.grid_dir(plan.cfg, "count", "linear", plan.points["linear"][0].id)
                        / layout.METRICS)
    recorded = metrics["machine"]
    assert recorded["cpu"] == machine.cpu_info()
    import torch

    assert recorded["torch"]["version"] == torch.__version__
    assert recorded["torch"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert recorded["torch"]["threads"] == torch.get_num_threads()
    assert recorded["torch"]["blas"] not in ("", "unknown")  # torch's build names its BLAS
    assert recorded["cpu_kernels"] == "native"


def _with_machines(runs: Path, models: dict[tuple[str, str], str]) -> None:
    """The test_report runs tree, each final run's metrics given a machine record."""
    base = {"cpu": {"model": "AMD EPYC", "vendor": "AuthenticAMD"},
            "torch": {"version": "2.13.0+cpu", "cpu_capability": "AVX2", "threads": 1,
                      "blas": "mkl", "gpu": None}, "cpu_kernels": "native", "kernel_env": {}}
    for (task, method), model in models.items():
        path = runs / "demo" / task / method / "final" / "metrics.json"
        data = json.loads(path.read_text())
        rec = json.loads(json.dumps(base))
        rec["cpu"]["model"] = model
        if model.startswith("Intel"):
            rec["torch"]["cpu_capability"] = "AVX512"
        path.write_text(json.dumps(data | {"machine": rec}))


def test_report_names_the_machine_and_warns_when_runs_mix_cpu_types(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for (task, method), top1 in TEST_TOP1.items():
        write_run(runs, task, method, top1)
    _with_machines(runs, {key: "AMD EPYC" for key in TEST_TOP1})
    # a different core allocation on the same machine type is not a different machine
    one = runs / "demo" / "eurosat" / "lora" / "final" / "metrics.json"
    data = json.loads(one.read_text())
    data["machine"]["cpu"]["usable_cores"] = 1
    one.write_text(json.dumps(data))
    page = render(tmp_path, collect_study(runs, STUDY))
    assert "AMD EPYC · AVX2 kernels · 1 thread(s) · torch 2.13.0+cpu (mkl BLAS)" in page
    # one shared Machine row and no per-run exception for it
    assert "different machines" not in page and page.count('data-column="machine_json"') == 1

    _with_machines(runs, {("dtd", "bitfit"): "Intel(R) Xeon(R) Platinum 8480C"})
    page = render(tmp_path / "mixed", collect_study(runs, STUDY))
    assert "Runs came from 2 different machines" in page and "not bit-comparable" in page
    assert ("AMD EPYC · AVX2 kernels · 1 thread(s) (8 runs); Intel(R) Xeon(R) Platinum 8480C · "
            "AVX512 kernels · 1 thread(s) (1 run)") in page
    assert 'id="provenance-exceptions"' in page  # the odd run is listed with its machine


def test_a_gpu_machine_is_keyed_by_its_gpu() -> None:
    gpu = {"names": ["NVIDIA H200"], "driver": "550.54.15", "cuda": "12.8", "cudnn": "91002"}
    record = {"cpu": {"model": "Intel(R) Xeon(R) Platinum 8480C"},
              "torch": {"version": "2.13.0+cu128", "cpu_capability": "AVX512", "threads": 16,
                        "blas": "mkl", "gpu": gpu}, "cpu_kernels": "native"}
    assert machine.machine_key(record) == "NVIDIA H200 · CUDA 12.8"
    assert machine.summary(record) == ("NVIDIA H200 · CUDA 12.8 · torch 2.13.0+cu128 (mkl BLAS) · "
                                       "cpu_kernels native")


def test_report_says_when_some_runs_have_no_machine_record(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for (task, method), top1 in TEST_TOP1.items():
        write_run(runs, task, method, top1)
    _with_machines(runs, {("cifar", "linear"): "AMD EPYC"})
    page = render(tmp_path, collect_study(runs, STUDY))
    assert "8 run(s) have no machine record" in page


def test_cpu_kernels_is_schema_checked() -> None:
    assert load_study("demo").cfg.train.cpu_kernels == "native"
    with pytest.raises(ConfigError, match=r"'train.cpu_kernels' \(from the override "
                                          r"'train.cpu_kernels=fast'\).*native, portable"):
        load_study("demo", ["train.cpu_kernels=fast"])
    with pytest.raises(ConfigError, match=r"train.cpu_kernels.*expected a value of type str"):
        load_study("demo", ["train.cpu_kernels=[native]"])


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in machine.PORTABLE_ENV}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=clean | {"PYTHONPATH": str(SRC)} | env)


def test_portable_sets_the_kernel_switches_before_torch_runs() -> None:
    done = _python(
        "import json, torch, vpeft.machine as m\n"
        "native = torch.backends.cpu.get_cpu_capability()\n"
        "m.apply_cpu_kernels('portable'); m.check_cpu_kernels('portable')\n"
        "print(json.dumps([native, m.describe('portable')]))")
    if "needs torch's CPU kernels at AVX2" in done.stderr:
        pytest.skip("this CPU has no AVX2")
    assert done.returncode == 0, done.stderr
    _, recorded = json.loads(done.stdout)
    assert recorded["torch"]["cpu_capability"] == "AVX2"
    assert recorded["kernel_env"] == machine.PORTABLE_ENV and recorded["cpu_kernels"] == "portable"


def test_portable_refuses_a_process_whose_torch_already_chose_other_kernels() -> None:
    # torch has run with the scalar kernels: a portable run here would not be what it claims
    done = _python("import torch, vpeft.machine as m\n"
                   "torch.ones(3).sum()\n"
                   "m.check_cpu_kernels('portable')", ATEN_CPU_CAPABILITY="default")
    assert done.returncode != 0
    assert "train.cpu_kernels: portable needs torch's CPU kernels at AVX2" in done.stderr
    assert "this process runs DEFAULT" in done.stderr


def test_a_portable_training_job_runs_and_records_the_portable_kernels(
        tmp_path, prepared_task, tiny_weights) -> None:
    extra = ["train.cpu_kernels=portable"]
    plan = smoke_plan(tmp_path, prepared_task, tiny_weights, *extra, methods="linear")
    overrides = [f"paths.data={tmp_path}/data", f"paths.runs={tmp_path}/runs",
                 f"model.weights={tiny_weights}", "study.tasks=[count]", "study.methods=[linear]",
                 "train.epochs=2", "train.batch_size=16", *extra]
    point = plan.points["linear"][0].id
    clean = {k: v for k, v in os.environ.items() if k not in machine.PORTABLE_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "vpeft", "train", "--study", "smoke", "--task", "count",
         "--method", "linear", "--phase", "grid", "--point", point, "--threads", "1",
         *[a for o in overrides for a in ("-o", o)]],
        capture_output=True, text=True, timeout=600, env=clean | {"PYTHONPATH": str(SRC)})
    if "needs torch's CPU kernels at AVX2" in done.stderr:
        pytest.skip("this CPU has no AVX2")
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = read_json(layout.grid_dir(plan.cfg, "count", "linear", point)
                         / layout.METRICS)["machine"]
    assert recorded["cpu_kernels"] == "portable" and recorded["kernel_env"] == machine.PORTABLE_ENV
    assert recorded["torch"]["cpu_capability"] == "AVX2" and recorded["torch"]["threads"] == 1
