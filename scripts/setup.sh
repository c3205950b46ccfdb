#!/usr/bin/env bash
# One-shot, idempotent set-up of BiLAF Studio on a fresh Debian machine.
#   scripts/setup.sh          app needs: Fashion-MNIST (Debian package) + .venv with requirements.txt
#   scripts/setup.sh --test   also what the tests need: Chromium + chromedriver for the browser test
#   scripts/setup.sh --gpu    the same, with a CUDA build of faiss (FAISS_GPU below) instead of faiss-cpu
#                             (combine freely: --gpu --test)
# Re-running is cheap: each step is skipped when already done.  Switching between --gpu and the
# CPU set-up reinstalls only faiss.
set -euo pipefail
cd "$(dirname "$0")/.."

# torch 2.14.1 (requirements.txt) is a CUDA 13.0 build.  PyPI has no faiss GPU wheel for CUDA 13
# that installs beside it (faiss-gpu-cu13-cuvs pins another cuda-toolkit and exists for Python 3.12
# only), so the GPU build is faiss-gpu 1.15.1 — the same faiss release as faiss-cpu, built for
# CUDA 12: it brings its own CUDA 12 runtime, cuBLAS and cuRAND wheels (nvidia/*/lib), which load
# beside torch's CUDA 13 libraries (nvidia/cu13/lib; other sonames).  Any driver that runs torch's
# CUDA 13 (>= 580) runs CUDA 12 code too.
FAISS_GPU="faiss-gpu==1.15.1"

want_test=0
want_gpu=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    --gpu) want_gpu=1 ;;
    *) echo "setup: unknown option $arg (use --test and/or --gpu)" >&2; exit 2 ;;
  esac
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "setup: need root (or sudo) to run: $*" >&2; exit 1; fi; }

apt_pkgs=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || apt_pkgs+=(dataset-fashion-mnist)
if [ "$want_test" = 1 ]; then
  [ -x /usr/bin/chromium ] || apt_pkgs+=(chromium)
  [ -x /usr/bin/chromedriver ] || apt_pkgs+=(chromium-driver)
fi
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
  echo "setup: apt-get install ${apt_pkgs[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi

# The requirements to install: requirements.txt as it is, or with faiss-cpu swapped for FAISS_GPU.
requirements=requirements.txt
if [ "$want_gpu" = 1 ]; then
  grep -q '^faiss-cpu==' requirements.txt || { echo "setup: requirements.txt has no faiss-cpu pin to swap for $FAISS_GPU" >&2; exit 1; }
  requirements=$(mktemp)
  trap 'rm -f "$requirements"' EXIT
  sed "s/^faiss-cpu==.*/$FAISS_GPU/" requirements.txt > "$requirements"
fi

stamp=.venv/.requirements.sha256
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating .venv and installing requirements$([ "$want_gpu" = 1 ] && echo " (GPU: $FAISS_GPU)") (first time: a few minutes)"
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # faiss-cpu and faiss-gpu both install the `faiss` package: drop the other one first
  other=$([ "$want_gpu" = 1 ] && echo faiss-cpu || echo faiss-gpu)
  if .venv/bin/python -m pip show -q "$other" >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -q -y "$other"
  fi
  .venv/bin/python -m pip install -q -r "$requirements"
  echo "$want" > "$stamp"
fi
if [ "$want_gpu" = 1 ]; then
  .venv/bin/python - <<'EOF'
import faiss, torch
gpus = faiss.get_num_gpus()
print(f"setup: faiss {faiss.__version__} sees {gpus} GPU(s); torch {torch.__version__} sees "
      f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}")
if gpus == 0:
    print("setup: no GPU visible here: faiss and torch will run on the CPU until one is")
EOF
fi
echo "setup: ready"
