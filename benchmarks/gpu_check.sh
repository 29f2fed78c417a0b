#!/usr/bin/env bash
# The GPU check: one command a maintainer reruns on any CUDA machine (no network, random weights;
# about 8 minutes on an H100/H200 without the rehearsal, at most 3 more with it, estimated: not yet
# timed on one). From the repository root:
#
#   bash benchmarks/gpu_check.sh [--out DIR] [--methods a,b] [--precision bf16|fp32|auto]
#                                [--no-rehearsal | --rehearsal-only]
#
# (--model NAME picks another benchmarks.run model; --allow-cpu runs the stages on a machine
# without CUDA, where the gpu tests skip: it checks this script, its figures mean nothing;
# --rehearsal-only stops after stage 0, so that the check can be split over two calls.)
#
# 0. the full-shape rehearsal first (python -m benchmarks.rehearse: the vtab1k study's ViT-B/16
#    at 224 px, batch 64, through every Snakemake step on fabricated oxford_iiit_pet-shaped data,
#    every method at its most expensive grid point, k = 20 steps, 2 evaluation batches, 4 cores
#    per job so that several jobs share the GPU); its calibration (images/s, start-up, peak host
#    and device memory per method and phase) is what the cluster requests are then made from
#    (copy it to runs/vtab1k/calibration.json; docs/cluster.md). If it runs out of time, the runs
#    it finished are calibrated anyway;
# 1. the tests marked `gpu` (tests/test_gpu.py: for every method, bf16 autocast + fused attention
#    vs fp32 loss curves, torch.compile vs eager, bf16 vs fp32 evaluation), their measured
#    differences recorded;
# 2. python -m benchmarks.run --model vit_b16 (ViT-B/16 at 224 px, every method + references) at
#    the study's precision (bf16; --precision auto adds fp32, about twice the time);
# 3. python -m benchmarks.project on that result: GPU-hours of the paper's studies on this GPU.
#
# Writes under DIR (default benchmarks/results): gpu-check.json and gpu-check.md (device, driver,
# CUDA, torch, each stage's status and time, every test measurement), gpu-tests.xml (JUnit),
# gpu-measurements.jsonl, vit_b16-cuda.json/.md, projection-vit_b16-cuda.json/.md, and the
# rehearsal's rehearsal.json, rehearsal.md and rehearsal-calibration.json (its data, weights and
# runs stay in GPU_CHECK_REHEARSAL_WORK, default ${TMPDIR:-/tmp}/vpeft-gpu-check-rehearsal,
# emptied first).
# Exit status: 0 all passed, 1 a stage failed or timed out, 2 bad arguments, 3 no CUDA device.
# Environment: PYTHON (default: .venv/bin/python if present, else python3),
# GPU_CHECK_TEST_TIMEOUT / GPU_CHECK_BENCH_TIMEOUT / GPU_CHECK_REHEARSAL_TIMEOUT (seconds,
# default 300 / 240 / 180), GPU_CHECK_CALIBRATION_TIMEOUT / GPU_CHECK_PROJECTION_TIMEOUT (default
# 120 / 120), GPU_CHECK_CASE_TIMEOUT (seconds per benchmark case process, default 180),
# GPU_CHECK_REHEARSAL_TASKS (default oxford_iiit_pet; all: the three rehearsal tasks) and
# GPU_CHECK_REHEARSAL_STEPS (default 20).
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT="benchmarks/results"
METHODS=""
PRECISION="bf16"
MODEL="vit_b16"
ALLOW_CPU=0
REHEARSAL=1
CHECKS=1  # stages 1-3
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
    --methods) METHODS="${2:?--methods needs a comma-separated list}"; shift 2 ;;
    --precision) PRECISION="${2:?--precision needs bf16, fp32 or auto}"; shift 2 ;;
    --model) MODEL="${2:?--model needs a benchmarks.run model name}"; shift 2 ;;
    --allow-cpu) ALLOW_CPU=1; shift ;;
    --no-rehearsal) REHEARSAL=0; shift ;;
    --rehearsal-only) REHEARSAL=1; CHECKS=0; shift ;;
    -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$PRECISION" in bf16|fp32|auto) ;; *) echo "gpu_check: --precision $PRECISION: expected bf16, fp32 or auto" >&2; exit 2 ;; esac

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=1 PYTHONPATH="$REPO/src:$REPO${PYTHONPATH:+:$PYTHONPATH}"

# First, and fast: is there a CUDA device at all? Nothing is written without one.
DEVICE=cuda
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  DEVICE=cpu
fi
if [ "$DEVICE" = cpu ] && [ "$ALLOW_CPU" = 1 ]; then
  echo "gpu_check: no CUDA device; --allow-cpu: running the stages on the CPU (a check of this" \
       "script only: gpu tests skip, figures are CPU figures)" >&2
elif [ "$DEVICE" = cpu ]; then
  echo "gpu_check: no CUDA device: torch.cuda.is_available() is False with $PYTHON" \
       "(CUDA_VISIBLE_DEVICES='${CUDA_VISIBLE_DEVICES-unset}'). Run this on a machine with an" \
       "NVIDIA GPU and a CUDA build of torch." >&2
  exit 3
fi

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
STAGES="$OUT/.gpu-check-stages.tsv"
: > "$STAGES"
rm -f "$OUT/gpu-measurements.jsonl" "$OUT/gpu-tests.xml" "$OUT"/rehearsal.json \
  "$OUT"/rehearsal.md "$OUT"/rehearsal-calibration.json

stage() {  # stage NAME TIMEOUT_S COMMAND...: run it, record status and seconds
  local name="$1" limit="$2"; shift 2
  local start end rc
  echo "== gpu_check: $name: $*"
  start=$(date +%s)
  timeout --signal=TERM --kill-after=30 "$limit" "$@"
  rc=$?
  end=$(date +%s)
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((end - start))" "$*" >> "$STAGES"
  return $rc
}

# 0. The rehearsal: on CUDA the study's full shape; with --allow-cpu a tiny one (this script's
# check). Always a fresh work folder: the fabricated data are new, so nothing could be reused.
if [ "$REHEARSAL" = 1 ]; then
  RH_WORK="${GPU_CHECK_REHEARSAL_WORK:-${TMPDIR:-/tmp}/vpeft-gpu-check-rehearsal}"
  RH_TASKS="${GPU_CHECK_REHEARSAL_TASKS:-oxford_iiit_pet}"
  RH_ARGS=(--work "$RH_WORK" --tasks "$RH_TASKS" --eval-batches 2)
  if [ "$DEVICE" = cuda ]; then
    CORES="$(nproc)"
    RH_ARGS+=(--steps "${GPU_CHECK_REHEARSAL_STEPS:-20}" --cores "$CORES"
              --threads "$(( CORES < 4 ? CORES : 4 ))")
    [ -n "$METHODS" ] && RH_ARGS+=(--methods "$METHODS")
  else
    RH_ARGS+=(--steps 1 --shape tiny --scale 0.05 --cores 2 --methods "${METHODS:-lora}")
  fi
  rm -rf "$RH_WORK"
  if ! stage rehearsal "${GPU_CHECK_REHEARSAL_TIMEOUT:-180}" \
      "$PYTHON" -m benchmarks.rehearse "${RH_ARGS[@]}" && [ -d "$RH_WORK/runs" ]; then
    # out of time or a job failed: the runs that finished still measure their methods
    stage calibration "${GPU_CHECK_CALIBRATION_TIMEOUT:-120}" \
      "$PYTHON" -m benchmarks.rehearse --calibrate-only "${RH_ARGS[@]}"
  fi
  for name in rehearsal.json rehearsal.md; do
    [ -f "$RH_WORK/$name" ] && cp "$RH_WORK/$name" "$OUT/$name"
  done
  [ -f "$RH_WORK/runs/vtab1k/calibration.json" ] && \
    cp "$RH_WORK/runs/vtab1k/calibration.json" "$OUT/rehearsal-calibration.json"
fi

BENCH_ARGS=(--model "$MODEL" --out "$OUT" --timeout "${GPU_CHECK_CASE_TIMEOUT:-180}")
RESULT="$OUT/$MODEL-$DEVICE.json"
[ "$PRECISION" != auto ] && [ "$DEVICE" = cuda ] && BENCH_ARGS+=(--precision "$PRECISION")
[ -n "$METHODS" ] && BENCH_ARGS+=(--methods "$METHODS")

# -n 0: one process on the one device (the suite's own default is two xdist workers).
if [ "$CHECKS" = 1 ]; then  # stages 1-3 (not with --rehearsal-only)
VPEFT_GPU_RECORD="$OUT/gpu-measurements.jsonl" VPEFT_GPU_TEST_METHODS="$METHODS" \
  stage tests "${GPU_CHECK_TEST_TIMEOUT:-300}" \
  "$PYTHON" -m pytest -m gpu tests -q -n 0 -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml"
stage benchmarks "${GPU_CHECK_BENCH_TIMEOUT:-240}" "$PYTHON" -m benchmarks.run "${BENCH_ARGS[@]}"
if [ -f "$RESULT" ]; then
  PROJECT_ARGS=(--from "$RESULT" --out "$OUT")
  [ -n "$METHODS" ] && PROJECT_ARGS+=(-o "study.methods=[$METHODS]")  # only what was measured
  stage projection "${GPU_CHECK_PROJECTION_TIMEOUT:-120}" "$PYTHON" -m benchmarks.project \
    "${PROJECT_ARGS[@]}"
fi
fi

# The report: what ran where, and how it went.
"$PYTHON" - "$OUT" "$MODEL-$DEVICE" "$CHECKS" <<'EOF'
import datetime as dt
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

from vpeft.io import atomic_path, write_json

out, result, checks = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
stages = []
for line in (out / ".gpu-check-stages.tsv").read_text().splitlines():
    name, rc, seconds, command = line.split("\t", 3)
    rc = int(rc)
    status = "passed" if rc == 0 else "timed out" if rc in (124, 137) else f"failed (exit {rc})"
    stages.append({"stage": name, "status": status, "exit": rc, "seconds": int(seconds),
                   "command": command})
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True,
                         timeout=30).stdout.strip().splitlines()
except OSError:
    smi = []
cuda = torch.cuda.is_available()
device = {"gpu": torch.cuda.get_device_name(0) if cuda else None, "nvidia_smi": smi,
          "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
          "torch": torch.__version__, "cuda": torch.version.cuda,
          "cudnn": torch.backends.cudnn.version() if cuda else None}
tests = {"counts": {}, "failures": []}
junit = out / "gpu-tests.xml"
if junit.is_file():
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error",
                                                                      "skipped")), "passed")
        tests["counts"][outcome] = tests["counts"].get(outcome, 0) + 1
        if outcome in ("failure", "error"):
            message = next(child for child in case if child.tag == outcome).get("message", "")
            tests["failures"].append({"test": case.get("name"), "message": message[:500]})
jsonl = out / "gpu-measurements.jsonl"
measurements = [json.loads(l) for l in jsonl.read_text().splitlines()] if jsonl.is_file() else []
ok = bool(stages) and all(s["exit"] == 0 for s in stages) and \
    (not checks or any(s["stage"] == "projection" for s in stages))
finished = json.loads((out / "rehearsal.json").read_text()) \
    if (out / "rehearsal.json").is_file() else None  # absent when cut by its time limit
calibrated = (out / "rehearsal-calibration.json").is_file()
rehearsal = None if finished is None and not calibrated else {
    "finished": finished is not None,
    "calibration": "rehearsal-calibration.json" if calibrated else None,
    **({k: finished[k] for k in ("ok", "wall_s", "fabricate_s", "tasks", "methods", "cores",
                                 "threads", "overrides")} if finished else {})}
doc = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
       "passed": ok, "device": device, "stages": stages, "tests": tests,
       "measurements": measurements, "rehearsal": rehearsal}
write_json(out / "gpu-check.json", doc)

md = [f"## GPU check: {'passed' if ok else 'FAILED'}", "",
      *([] if cuda else ["**No CUDA device: a CPU run of this script (--allow-cpu); the gpu "
                         "tests were skipped and the figures are CPU figures.**", ""]),
      f"- date: {doc['date']}",
      f"- device: {device['gpu']} (compute capability {device['capability']}); nvidia-smi: "
      f"{'; '.join(smi) or 'not available'}",
      f"- torch {device['torch']}, CUDA {device['cuda']}, cuDNN {device['cudnn']}", "",
      "| stage | status | seconds |", "|---|---|--:|"]
md += [f"| {s['stage']} | {s['status']} | {s['seconds']} |" for s in stages]
md += ["", "Tests: " + (", ".join(f"{n} {k}" for k, n in sorted(tests["counts"].items()))
                        or "no JUnit report")]
md += [f"- FAILED {f['test']}: {f['message']}" for f in tests["failures"]]
if measurements:
    md += ["", "| check | method | measured |", "|---|---|---|"]
    for m in measurements:
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in m.items() if k not in ("check", "method"))
        md.append(f"| {m['check']} | {m['method']} | {values} |")
if rehearsal is not None:
    how = (f"every step in {finished['wall_s']:.0f} s, {finished['cores']} cores, "
           f"{finished['threads']} per job" if finished else "cut by its time limit; the runs it "
           "finished are calibrated")
    md += ["", f"### Rehearsal of vtab1k ({how})", "",
           *([(out / "rehearsal.md").read_text().rstrip()] if (out / "rehearsal.md").is_file()
             else []),
           "", "Calibration: " + ("rehearsal-calibration.json (copy it to "
                                  "runs/vtab1k/calibration.json to size the cluster's requests)"
                                  if calibrated else "none (no run finished)")]
for name in (f"{result}.md", f"projection-{result}.md"):
    if (out / name).is_file():
        md += ["", f"(see {name})"]
with atomic_path(out / "gpu-check.md") as tmp:
    tmp.write_text("\n".join(md) + "\n")
print("\n".join(md))
sys.exit(0 if ok else 1)
EOF
rc=$?
rm -f "$STAGES"
echo "gpu_check: report in $OUT/gpu-check.md (exit $rc)"
exit $rc
