#!/usr/bin/env bash
# The system packages the test suite needs, installed when missing (Debian/Ubuntu):
#   chromium          the report is checked in a real headless browser (tests/browser.py)
#   slurm-wlm munge   `snakemake --profile slurm` runs on a real one-node SLURM (tests/slurm_cluster.py)
# `make test` runs this first. Without root or passwordless sudo it stops at once with one line
# saying what to install.
set -euo pipefail
need=()
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need+=(chromium)
{ command -v slurmctld >/dev/null && command -v slurmd >/dev/null; } || need+=(slurm-wlm)
command -v munged >/dev/null || need+=(munge)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "${EUID:-$(id -u)}" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "make test needs system packages: run 'sudo apt-get install ${need[*]}' (or set VPEFT_SKIP_SLURM=1 VPEFT_SKIP_BROWSER=1 and run pytest yourself)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "make test needs system packages ${need[*]} (Debian names); install them with your package manager" >&2
  exit 1
fi
echo "installing system packages for the tests: ${need[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
