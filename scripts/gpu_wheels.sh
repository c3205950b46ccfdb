#!/usr/bin/env bash
# Wheels that this workplace's GPU machine (kind nvidia-h200: Python 3.12, x86-64, no registry
# access) lacks for bench/gpu_check.py, downloaded here into .whl/ (ignored by git through
# .git/info/exclude) so that a device `run` can carry them (carry: [".whl"]).
#
#   scripts/gpu_wheels.sh           download, then print the sizes and the install line to use there
#
# What that machine already has (the device library's KINDS.md): torch 2.11 (CUDA 13.0), numpy,
# timm, pillow, scipy, scikit-learn, pandas, matplotlib, …  What it lacks:
#   faiss-cpu 1.15.1  the project's faiss (the faiss check reports there that this build has no GPU:
#                     PyPI's GPU build is 135 MB plus ~1.2 GB of CUDA 12 libraries, far over the
#                     64 MiB a call may carry; docs/gpu.md)
# It is carried with --no-deps: its needs (numpy, packaging) are on that machine.  The machine's own
# timm is used, not the project's pin: ViT-S/16 and EfficientNet-Lite0 are the same networks in any
# timm 1.x, and a timm newer than that machine's torch (2.11) could fail to import there.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(faiss-cpu==1.15.1)
LIMIT_MIB=48   # of the 64 MiB that travel per call; the rest is the working tree (~2 MB) and headroom

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"

rm -rf .whl
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}" 2>&1 \
  | grep -v "^WARNING: Location" || true
count=$(ls .whl/*.whl 2>/dev/null | wc -l)
if [ "$count" != "${#WHEELS[@]}" ]; then
  echo "gpu_wheels: expected ${#WHEELS[@]} wheels in .whl/, found $count" >&2
  exit 1
fi
if git check-ignore -q .whl/; then :; else
  echo "gpu_wheels: .whl/ is not ignored by git; it must not be committed" >&2
  exit 1
fi
ls -l .whl
bytes=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "gpu_wheels: $((bytes / 1024 / 1024)) MiB in .whl/ (limit ${LIMIT_MIB} MiB of the 64 MiB a call carries)"
if [ "$bytes" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
  echo "gpu_wheels: too large to carry beside the working tree" >&2
  exit 1
fi
echo "install there: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site"
