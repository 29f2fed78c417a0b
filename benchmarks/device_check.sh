#!/usr/bin/env bash
# The GPU check on a lent device machine, in one command: what a session passes to the device
# `run` tool, with the wheels made here by `bash benchmarks/device_wheels.sh`:
#
#   run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=600)
#
#   bash benchmarks/device_check.sh [--part all|rehearsal|checks] [--budget SECONDS]
#                                   [--allow-cpu] [--model NAME] [--methods a,b]
#                                   [--precision bf16|fp32|auto]
#
# 1. installs .whl/*.whl (pip --no-index --no-deps --target DEVICE_CHECK_SITE, default /tmp/site)
#    and puts them on PYTHONPATH: the image's own python3 holds torch (CUDA), timm, peft, ...;
# 2. prints the versions it runs with (python, torch, CUDA, GPU, timm, snakemake, ...);
# 3. runs `bash benchmarks/gpu_check.sh` with stage limits cut from --budget (default 540 s for
#    the whole command, inside a 600 s call): --part all runs every stage (rehearsal a fifth of
#    the time, tests 30 %, benchmarks 40 %), --part rehearsal only the full-shape rehearsal
#    (gpu_check --rehearsal-only), --part checks the rest (gpu_check --no-rehearsal); gpu_check's
#    GPU_CHECK_*_TIMEOUT variables, when set, win. benchmarks.run writes its figures after every
#    case, so a stage cut short returns what it measured; --methods a,b keeps that stage short;
# 4. packs what must come back into at most 8 files under $OUT (the device tool's folder; without
#    it, benchmarks/results): gpu-check.md, gpu-check.json, rehearsal-calibration.json,
#    rehearsal.md, versions.txt, device-check.log and device-check.tar.gz (everything else:
#    JUnit, measurements, benchmark and projection results, the rehearsal's logs and benchmarks).
#
# --allow-cpu, --model, --methods and --precision pass through to gpu_check.sh (--allow-cpu: a
# check of these scripts on a machine without CUDA). Environment: PYTHON (default python3, the
# image's), DEVICE_CHECK_SITE, DEVICE_CHECK_RUN (gpu_check's own --out, default
# ${TMPDIR:-/tmp}/vpeft-device-check, emptied first).
# Exit status: gpu_check's (0 passed, 1 a stage failed or timed out, 3 no CUDA device), 2 bad
# arguments, 4 the wheels are missing or do not install.
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PART=all
BUDGET=540
PASS=()
usage_error() { echo "device_check: $1 (see --help)" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --part) PART="${2:-}"; shift 2 || shift ;;
    --budget) BUDGET="${2:-}"; shift 2 || shift ;;
    --allow-cpu) PASS+=("$1"); shift ;;
    --model|--methods|--precision)
      [ $# -ge 2 ] || usage_error "$1 needs a value"
      PASS+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done
case "$PART" in
  all|rehearsal|checks) ;;
  *) usage_error "--part '$PART': expected all, rehearsal or checks" ;;
esac
[[ "$BUDGET" =~ ^[0-9]+$ ]] && [ "$BUDGET" -ge 120 ] || \
  usage_error "--budget '$BUDGET': expected whole seconds, at least 120"

PYTHON="${PYTHON:-python3}"
SITE="${DEVICE_CHECK_SITE:-/tmp/site}"
RUN="$(realpath -m "${DEVICE_CHECK_RUN:-${TMPDIR:-/tmp}/vpeft-device-check}")"
DEST="${OUT:-$REPO/benchmarks/results}"
START=$(date +%s)
mkdir -p "$DEST"
LOG="$DEST/device-check.log"
exec > >(tee "$LOG") 2>&1  # everything printed also comes back in the log

shopt -s nullglob
WHEELS=(.whl/*.whl)
if [ "${#WHEELS[@]}" -eq 0 ]; then
  echo "device_check: no wheels in $REPO/.whl: run 'bash benchmarks/device_wheels.sh' on the" \
       "machine with network first, and name .whl in the device call's carry" >&2
  exit 4
fi
if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${WHEELS[@]}"; then
  echo "device_check: installing the ${#WHEELS[@]} wheels of .whl into $SITE failed" >&2
  exit 4
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHON

# What it runs with, before anything can fail on it.
"$PYTHON" - > "$DEST/versions.txt" <<'EOF'
import importlib.metadata as md
import platform
import sys

import torch

print(f"python {platform.python_version()} ({sys.executable})")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
      f"{torch.backends.cudnn.version() if torch.cuda.is_available() else None}")
print("GPU " + (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"))
for name in ("torchvision", "timm", "peft", "numpy", "pillow", "pyarrow", "safetensors",
             "snakemake", "hydra-core", "omegaconf", "pytest", "pytest-xdist"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} MISSING")
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  >> "$DEST/versions.txt" 2>/dev/null || echo "nvidia-smi: not available" >> "$DEST/versions.txt"
# requirement clashes between the wheels and the image (the image's versions are not pinned
# here; e.g. snakemake asks for packaging<26 and ran with 26.4 in the CPU rehearsal of this)
{ echo "pip check:"; "$PYTHON" -m pip check 2>&1 | head -40; } >> "$DEST/versions.txt"
cat "$DEST/versions.txt"

# Stage limits from what is left of the budget; 40 s stay for the report and the packing.
LEFT=$(( BUDGET - ($(date +%s) - START) - 40 ))
share() { echo $(( LEFT * $1 / 100 )); }
case "$PART" in
  all) : "${GPU_CHECK_REHEARSAL_TIMEOUT:=$(share 20)}" "${GPU_CHECK_CALIBRATION_TIMEOUT:=$(share 5)}"
       : "${GPU_CHECK_TEST_TIMEOUT:=$(share 30)}" "${GPU_CHECK_BENCH_TIMEOUT:=$(share 40)}"
       : "${GPU_CHECK_PROJECTION_TIMEOUT:=$(share 5)}" ;;
  rehearsal) PASS+=(--rehearsal-only)
       : "${GPU_CHECK_REHEARSAL_TIMEOUT:=$(share 85)}" "${GPU_CHECK_CALIBRATION_TIMEOUT:=$(share 15)}" ;;
  checks) PASS+=(--no-rehearsal)
       : "${GPU_CHECK_TEST_TIMEOUT:=$(share 46)}" "${GPU_CHECK_BENCH_TIMEOUT:=$(share 46)}"
       : "${GPU_CHECK_PROJECTION_TIMEOUT:=$(share 8)}" ;;
esac
# a benchmark case never outlasts its stage
: "${GPU_CHECK_CASE_TIMEOUT:=$(( ${GPU_CHECK_BENCH_TIMEOUT:-240} < 180 ? ${GPU_CHECK_BENCH_TIMEOUT:-240} / 2 : 180 ))}"
export GPU_CHECK_REHEARSAL_TIMEOUT GPU_CHECK_CALIBRATION_TIMEOUT GPU_CHECK_TEST_TIMEOUT \
  GPU_CHECK_BENCH_TIMEOUT GPU_CHECK_PROJECTION_TIMEOUT GPU_CHECK_CASE_TIMEOUT 2>/dev/null
GPU_CHECK_REHEARSAL_WORK="$(realpath -m "${GPU_CHECK_REHEARSAL_WORK:-${TMPDIR:-/tmp}/vpeft-gpu-check-rehearsal}")"
export GPU_CHECK_REHEARSAL_WORK
echo "device_check: --part $PART, ${LEFT} s for the stages: rehearsal" \
     "${GPU_CHECK_REHEARSAL_TIMEOUT:--} (+${GPU_CHECK_CALIBRATION_TIMEOUT:--}), tests" \
     "${GPU_CHECK_TEST_TIMEOUT:--}, benchmarks ${GPU_CHECK_BENCH_TIMEOUT:--}" \
     "(${GPU_CHECK_CASE_TIMEOUT} a case), projection ${GPU_CHECK_PROJECTION_TIMEOUT:--}"

rm -rf "$RUN"
# the safety net: gpu_check ends within the budget even if a stage ignores its limit
timeout --signal=TERM --kill-after=10 $(( BUDGET - ($(date +%s) - START) - 20 )) \
  bash benchmarks/gpu_check.sh --out "$RUN" "${PASS[@]}"
rc=$?
echo "device_check: gpu_check exit $rc after $(( $(date +%s) - START )) s in all"

# At most 8 files come back: the report, the calibration, and one archive of everything else.
for name in gpu-check.md gpu-check.json rehearsal-calibration.json rehearsal.md; do
  [ -f "$RUN/$name" ] && cp "$RUN/$name" "$DEST/$name"
done
RH="$GPU_CHECK_REHEARSAL_WORK"
EXTRA=()
for path in "$RH/snakemake.log" "$RH/rehearsal.json" "$RH/logs" "$RH/runs" "$RH/reports"; do
  [ -e "$path" ] && EXTRA+=("$path")
done
# without weights, checkpoints and prediction tables: the bundle stays small
tar -czf "$DEST/device-check.tar.gz" --exclude='*.safetensors' --exclude='*.parquet' \
  --exclude='*.npz' --exclude='*.pt' \
  --transform "s|^${RUN#/}|gpu-check|;s|^${GPU_CHECK_REHEARSAL_WORK#/}|rehearsal|" \
  -C / "${RUN#/}" "${EXTRA[@]/#\//}" 2>/dev/null
ls -l "$DEST"
exec >&- 2>&-
wait  # for tee: the log is complete before the files go back
exit $rc
