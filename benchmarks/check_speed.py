"""How long the preflight takes at the paper's scale without reading data (`vpeft check --no-decode`).

    python -m benchmarks.check_speed --rounds 3 [--baseline /path/to/other/checkout/src] --out benchmarks/results

Times ``python -m vpeft check --study vtab1k --no-decode`` with a data root and a weights file that
do not exist (the issue's case: 19 tasks x 16 methods, 482 grid points; what remains is composing
the config, checking every grid point's hyper-parameters, counting jobs and estimating the disk).
With ``--baseline``, the same command against another checkout's ``src/`` (e.g. ``git archive
main | tar -x -C /tmp/main``), alternating with this one round by round so that both see the same
machine load. Wall and CPU seconds per run, and the 1-minute load average before each.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 20.0
COMMAND = ["-m", "vpeft", "check", "--study", "vtab1k", "--no-decode",
           "-o", "study.data.root=/nonexistent", "-o", "model.weights=/nonexistent/ViT-B_16.npz"]


def time_check(src: Path) -> dict[str, Any]:
    """One run of the preflight with ``src`` on PYTHONPATH, from that checkout's root (its params/)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(src)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *COMMAND], cwd=src.parent, env=env,
                          capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    jobs = next((line for line in proc.stdout.splitlines() if line.startswith("jobs: ")), None)
    disk = next((line for line in proc.stdout.splitlines() if line.startswith("disk: ")), None)
    if proc.returncode != 1 or jobs is None:  # 1: the missing paths are reported as problems
        raise RuntimeError(f"vpeft check with {src} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return {"wall_seconds": round(wall, 2),
            "cpu_seconds": round((after.ru_utime - before.ru_utime)
                                 + (after.ru_stime - before.ru_stime), 2),
            "load_average_1min": round(load, 2), "jobs": jobs, "disk": disk}


def measure(rounds: int, baseline: Path | None) -> dict[str, Any]:
    sources = {"this checkout": REPO / "src", **({"baseline": baseline} if baseline else {})}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sources}
    for _ in range(rounds):
        for name, src in sources.items():
            runs[name].append(time_check(src))
    summary = {name: {"median_wall_seconds": sorted(r["wall_seconds"] for r in rs)[len(rs) // 2],
                      "runs": rs} for name, rs in runs.items()}
    return {"command": "python " + " ".join(COMMAND), "target_seconds": TARGET_SECONDS,
            "cpu_count": os.cpu_count(), "baseline_src": str(baseline) if baseline else None,
            "results": summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.check_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout's src/ directory, timed alternately with this one")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)
    result = measure(args.rounds, args.baseline.resolve() if args.baseline else None)
    from vpeft.io import write_json

    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "check_speed-vtab1k.json", result)
    print(json.dumps({k: v["median_wall_seconds"] for k, v in result["results"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
