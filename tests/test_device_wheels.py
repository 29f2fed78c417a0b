"""The wheel bundle for a lent GPU machine (benchmarks/device-wheels.txt, device_wheels.py) and
the command run there (benchmarks/device_check.sh): the list covers what the GPU check imports
beyond the machine's image, and the scripts refuse bad input before touching anything. No network:
the imports are read statically and the requirements from this environment's own metadata."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from benchmarks import device_wheels as dw

REPO = Path(__file__).resolve().parents[1]


def _imports(path: Path, top_level: bool) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def gpu_check_imports() -> dict[str, set[str]]:
    """Top-level module -> files, for what the GPU check runs: vpeft and benchmarks (every import,
    lazy ones included: the rehearsal runs every step), the Snakefile and rules, and the test
    modules and their helpers as `pytest -m gpu tests` collects them (module-level imports)."""
    found: dict[str, set[str]] = {}
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "benchmarks").glob("*.py")]:
        for name in _imports(path, top_level=False):
            found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    for path in (REPO / "tests").glob("*.py"):
        for name in _imports(path, top_level=True):
            found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    for path in [REPO / "Snakefile", *(REPO / "rules").glob("*.smk")]:
        for line in path.read_text().splitlines():
            match = re.match(r"\s*(?:from|import)\s+([A-Za-z_]\w*)", line)
            if match:
                found.setdefault(match.group(1), set()).add(str(path.relative_to(REPO)))
    local = {p.stem for p in (REPO / "tests").glob("*.py")} | {"vpeft", "benchmarks", "tests"}
    return {name: files for name, files in found.items()
            if name not in sys.stdlib_module_names and name not in local}


def test_every_entry_is_pinned_once_and_none_is_in_the_image():
    pins = dw.read_list()
    image = dw.read_image()
    assert len(image) > 150 and {"torch", "timm", "peft", "pyarrow"} <= image
    assert pins and all(re.fullmatch(r"[0-9][0-9A-Za-z.+!_-]*", p.version) for p in pins)
    assert len({dw.norm(p.name) for p in pins}) == len(pins)
    assert not {dw.norm(p.name) for p in pins} & image
    assert {dw.norm(p.name) for p in pins if p.build} == {"antlr4-python3-runtime",
                                                          "connection-pool"}


def test_the_list_covers_every_import_of_the_check_beyond_the_image():
    dists = packages_distributions()
    wanted = {dw.norm(p.name) for p in dw.read_list()}
    image = dw.read_image()
    missing = {}
    for module, files in gpu_check_imports().items():
        names = {dw.norm(d) for d in dists.get(module, [])}
        assert names, f"import {module} ({sorted(files)[:3]}): no installed distribution provides it"
        if not names & (wanted | image):
            missing[module] = sorted(files)[:3]
    assert not missing, f"imported on the GPU check's path, neither in the image nor carried: {missing}"
    # the ones the image lacks are really used; dvc and the SLURM plugin (not carried) are not
    imported = gpu_check_imports()
    assert {"hydra", "omegaconf", "snakemake", "open_clip"} <= imported.keys()
    assert not {"dvc", "snakemake_executor_plugin_slurm"} & imported.keys()


def test_every_carried_wheel_needs_only_carried_or_image_packages():
    """The dependency closure, from this environment's installed metadata (the same versions)."""
    wanted = {dw.norm(p.name) for p in dw.read_list()}
    image = dw.read_image()
    lacking = []
    for pin in dw.read_list():
        try:
            texts = requires(pin.name) or []
        except PackageNotFoundError:
            pytest.fail(f"{pin.name} ({dw.LIST.name} line {pin.line}) is not installed here")
        for text in texts:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(dw.DEVICE_ENV):
                continue
            if dw.norm(req.name) not in wanted | image:
                lacking.append(f"{pin.name} requires {req.name}")
    assert not lacking, lacking


def _wheel(directory: Path, name: str, version: str, requires_dist: list[str],
           tag: str = "py3-none-any") -> Path:
    """A wheel laid out as pip writes one (dist-info METADATA, WHEEL, RECORD)."""
    path = directory / f"{name}-{version}-{tag}.whl"
    info = f"{name}-{version}.dist-info"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires_dist))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/__init__.py", "")
        archive.writestr(f"{info}/METADATA", meta)
        archive.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: {tag}\n")
        archive.writestr(f"{info}/RECORD", "")
    return path


def test_the_bundle_check_names_each_problem(tmp_path):
    pins = [dw.Pin("alpha", "1.0", False, 1), dw.Pin("beta_pkg", "2.0", False, 2),
            dw.Pin("gamma", "3.0", False, 3)]
    _wheel(tmp_path, "alpha", "1.0", ["beta-pkg>=2", "numpy", "pytest; extra == 'test'"])
    _wheel(tmp_path, "beta_pkg", "2.1", ["zeta; python_version >= '3.12'",
                                         "old; python_version < '3.10'"])
    _wheel(tmp_path, "delta", "1.0", [], tag="cp311-cp311-manylinux_2_17_x86_64")
    problems, total = dw.wheel_problems(tmp_path, pins, {"numpy"}, max_mib=40)
    text = "\n".join(problems)
    assert "beta_pkg-2.1-py3-none-any.whl: version 2.1" in text and "pins 2.0" in text
    assert "requires zeta, which is neither" in text
    assert "requires old" not in text and "requires pytest" not in text  # markers: not the device's
    assert "alpha" not in text.replace("beta", "")  # alpha's needs: beta (pinned) and numpy (image)
    assert "delta-1.0-cp311-cp311-manylinux_2_17_x86_64.whl: not in" in text
    assert "does not install on CPython 3.12" in text
    assert "gamma==3.0 (device-wheels.txt line 3): no wheel" in text
    assert total > 0
    _wheel(tmp_path, "alpha", "1.1", [])
    problems, _ = dw.wheel_problems(tmp_path, pins, {"numpy", "alpha"}, max_mib=1e-6)
    text = "\n".join(problems)
    assert "a second wheel of alpha" in text and "over the 1e-06 MiB limit" in text
    assert "alpha (device-wheels.txt line 1) is in the image already" in text


def test_an_unpinned_or_repeated_line_is_refused_with_its_line(tmp_path):
    listing = tmp_path / "device-wheels.txt"
    listing.write_text("# comment\nsnakemake==9.27.1\nhydra-core>=1.3\n")
    with pytest.raises(ValueError, match=r"device-wheels.txt:3: 'hydra-core>=1.3' is not pinned"):
        dw.read_list(listing)
    listing.write_text("Snake.Make==1\n\nsnake_make==2  # again\n")
    with pytest.raises(ValueError, match=r":3: snake_make is listed twice \(also on line 1\)"):
        dw.read_list(listing)


def _device_check(*args: str, cwd: Path = REPO, env: dict | None = None):
    return subprocess.run(["bash", str(cwd / "benchmarks" / "device_check.sh"), *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_device_check_help_and_argument_errors(tmp_path):
    help_ = _device_check("--help")
    assert help_.returncode == 0 and "carry=[\".whl\"]" in help_.stdout
    assert "--part all|rehearsal|checks" in help_.stdout and "Exit status" in help_.stdout
    for args, message in [(("--part", "gpu"), "--part 'gpu': expected all, rehearsal or checks"),
                          (("--budget", "9m"), "--budget '9m': expected whole seconds"),
                          (("--budget", "60"), "at least 120"),
                          (("--methods",), "--methods needs a value"),
                          (("--frobnicate",), "unknown argument '--frobnicate'")]:
        proc = _device_check(*args, env={"OUT": str(tmp_path / "out")})
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_device_check_without_wheels_says_what_to_run(tmp_path):
    copy = tmp_path / "repo"
    (copy / "benchmarks").mkdir(parents=True)
    shutil.copy(REPO / "benchmarks" / "device_check.sh", copy / "benchmarks")
    proc = _device_check(cwd=copy, env={"OUT": str(tmp_path / "out")})
    assert proc.returncode == 4
    said = proc.stdout + proc.stderr  # the script tees both into its log
    assert "run 'bash benchmarks/device_wheels.sh'" in said and "carry" in said
    assert (tmp_path / "out" / "device-check.log").is_file()
