"""The wheel bundle carried to a lent GPU machine: its pinned list, and the check of a bundle.

    python -m benchmarks.device_wheels check DIR [--max-mib 40]

``benchmarks/device-wheels.txt`` pins what the GPU check imports there and the machine's image
(``benchmarks/device-image.txt``) lacks; ``benchmarks/device_wheels.sh`` downloads it and runs
this check on the result before it replaces ``.whl/``: exactly one wheel per listed name, at its
pinned version, installable on the device (CPython 3.12, Linux x86_64), every requirement of
every wheel either in the list (and satisfied by its pin) or in the image, and the whole within
the size limit. Needs ``packaging`` (no network).
"""
from __future__ import annotations

import argparse
import re
import sys
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIST = HERE / "device-wheels.txt"
IMAGE = HERE / "device-image.txt"
# the device's interpreter (KINDS.md: Python 3.12.3 on x86-64 Linux), for requirement markers
DEVICE_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "os_name": "posix",
              "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
              "implementation_name": "cpython", "platform_python_implementation": "CPython",
              "extra": ""}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")


def norm(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    build: bool  # no wheel on PyPI: built here from the sdist
    line: int


def read_list(path: Path = LIST) -> list[Pin]:
    """The pinned list: `name==version  # comment`, `[build]` in the comment for sdist-only."""
    pins, seen = [], {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        spec, _, comment = raw.partition("#")
        spec = spec.strip()
        if not spec:
            continue
        match = PIN.match(spec)
        if not match:
            raise ValueError(f"{path}:{number}: '{spec}' is not pinned: expected name==version")
        name = norm(match.group(1))
        if name in seen:
            raise ValueError(f"{path}:{number}: {match.group(1)} is listed twice (also on line "
                             f"{seen[name]}); one version of each, or pip refuses the install")
        seen[name] = number
        pins.append(Pin(match.group(1), match.group(2), "[build]" in comment, number))
    return pins


def read_image(path: Path = IMAGE) -> set[str]:
    """The image's package names, normalised."""
    return {norm(line.strip()) for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def _device_tag(tag: str) -> bool:
    py, abi, plat = tag.split("-")
    pys = py.split(".")
    python_ok = any(p in ("py3", "cp312") or (abi == "abi3" and p.startswith("cp3")
                                                and int(p[3:]) <= 12) for p in pys)
    plat_ok = all(p == "any" or (p.startswith("manylinux") and p.endswith("_x86_64"))
                  for p in plat.split("."))
    return python_ok and abi in ("none", "abi3", "cp312") and plat_ok


def wheel_problems(directory: Path, pins: list[Pin], image: set[str],
                   max_mib: float) -> tuple[list[str], int]:
    """What is wrong with the bundle in `directory` (empty: nothing), and its size in bytes."""
    from packaging.requirements import Requirement

    problems, found, total = [], {}, 0
    wanted = {norm(p.name): p for p in pins}
    for wheel in sorted(directory.glob("*.whl")):
        total += wheel.stat().st_size
        parts = wheel.name[:-4].split("-")
        name, version, tag = norm(parts[0]), parts[1], "-".join(parts[-3:])
        if name in found:
            problems.append(f"{wheel.name}: a second wheel of {parts[0]} (also {found[name]})")
        found[name] = wheel.name
        pin = wanted.get(name)
        if pin is None:
            problems.append(f"{wheel.name}: not in {LIST.name}")
        elif version != pin.version:
            problems.append(f"{wheel.name}: version {version}, {LIST.name} line {pin.line} pins "
                            f"{pin.version}")
        if not _device_tag(tag):
            problems.append(f"{wheel.name}: tag {tag} does not install on CPython 3.12 x86_64")
        with zipfile.ZipFile(wheel) as archive:
            meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            requires = Parser().parsestr(archive.read(meta).decode()).get_all("Requires-Dist")
        for text in requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(DEVICE_ENV):
                continue
            dep = norm(req.name)
            if dep in wanted:
                if not req.specifier.contains(wanted[dep].version, prereleases=True):
                    problems.append(f"{wheel.name} requires {text}; {LIST.name} pins "
                                    f"{wanted[dep].name}=={wanted[dep].version}")
            elif dep not in image:
                problems.append(f"{wheel.name} requires {req.name}, which is neither in "
                                f"{LIST.name} nor in the image ({IMAGE.name})")
    problems += [f"{p.name}=={p.version} ({LIST.name} line {p.line}): no wheel in {directory}"
                 for n, p in wanted.items() if n not in found]
    problems += [f"{p.name} ({LIST.name} line {p.line}) is in the image already "
                 f"({IMAGE.name}): carrying a second copy shadows it"
                 for n, p in wanted.items() if n in image]
    if total > max_mib * 2**20:
        problems.append(f"the bundle is {total / 2**20:.1f} MiB, over the {max_mib:g} MiB limit "
                        "(the working tree and the wheels share 64 MiB a call)")
    return problems, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device_wheels",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check a downloaded bundle against the pinned list")
    check.add_argument("directory", type=Path)
    check.add_argument("--max-mib", type=float, default=40.0)
    args = parser.parse_args(argv)
    try:
        pins = read_list()
    except ValueError as err:
        print(f"device_wheels: {err}", file=sys.stderr)
        return 2
    problems, total = wheel_problems(args.directory, pins, read_image(), args.max_mib)
    for problem in problems:
        print(f"device_wheels: {problem}", file=sys.stderr)
    count = len(list(args.directory.glob("*.whl")))
    print(f"device_wheels: {count} wheels, {total / 2**20:.1f} MiB "
          f"(limit {args.max_mib:g} MiB){': BAD' if problems else ', all checks passed'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
