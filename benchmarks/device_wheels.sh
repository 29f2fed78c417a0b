#!/usr/bin/env bash
# The wheels a lent GPU machine needs for the GPU check, fetched here (where PyPI is reachable)
# into .whl/, which the device call carries (`carry: [".whl"]`; benchmarks/device_check.sh
# installs them there). From the repository root:
#
#   bash benchmarks/device_wheels.sh [--max-mib 40]
#
# Downloads exactly benchmarks/device-wheels.txt (cp312 / py3 wheels for manylinux x86_64,
# --no-deps, one version of each); the entries marked [build] have no wheel on PyPI and are built
# here from their sdist with `pip wheel --no-deps` (pure Python: py3-none-any). Then
# `python -m benchmarks.device_wheels check` verifies the bundle (pins, tags, every requirement
# either bundled or in the image's list benchmarks/device-image.txt, total size) before it
# replaces .whl/; a failed run leaves the old .whl/ as it was. Makes sure git ignores .whl/
# (.gitignore does; else .git/info/exclude gets /.whl/), so that it travels only when carried.
# Environment: PYTHON (default: .venv/bin/python if present, else python3), with pip and packaging.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
MAX_MIB=40
while [ $# -gt 0 ]; do
  case "$1" in
    --max-mib) MAX_MIB="${2:?--max-mib needs a number}"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "device_wheels: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if ! git check-ignore -q .whl/probe.whl 2>/dev/null; then
  EXCLUDE="$(git rev-parse --git-path info/exclude)"
  mkdir -p "$(dirname "$EXCLUDE")"
  echo "/.whl/" >> "$EXCLUDE"
  echo "device_wheels: added /.whl/ to $EXCLUDE"
fi

# name==version lines, split into downloadable wheels and [build] sdists
mapfile -t WHEELS < <(sed -e '/\[build\]/d' -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' \
                        benchmarks/device-wheels.txt)
mapfile -t BUILD < <(grep '\[build\]' benchmarks/device-wheels.txt | sed -e 's/#.*//' \
                       -e 's/[[:space:]]//g')
STAGING="$(mktemp -d "$REPO/.whl.staging.XXXXXX")"
trap 'rm -rf "$STAGING"' EXIT

# the device's interpreter: CPython 3.12 on x86-64 Linux (KINDS.md); pip matches each
# manylinux_2_N tag exactly, so every N a listed wheel uses is named
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux2010_x86_64 manylinux_2_12_x86_64 \
         manylinux_2_5_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none "${PLATFORMS[@]}" \
  -d "$STAGING" "${WHEELS[@]}"
if [ "${#BUILD[@]}" -gt 0 ]; then
  "$PYTHON" -m pip wheel -q --no-deps --no-binary=:all: -w "$STAGING" "${BUILD[@]}"
fi

"$PYTHON" -m benchmarks.device_wheels check "$STAGING" --max-mib "$MAX_MIB"
rm -rf .whl
mv "$STAGING" .whl
trap - EXIT
echo "device_wheels: .whl/ is ready: $(du -sh .whl | cut -f1) in $(ls .whl/*.whl | wc -l) wheels;" \
     "carry it: run(command='bash benchmarks/device_check.sh', carry=['.whl'])"
