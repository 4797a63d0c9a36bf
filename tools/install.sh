#!/usr/bin/env bash
# Install the pinned OpenMMLab stack and mobileone-mm (every trap it works around is explained in docs/stack.md).
#
#   tools/install.sh           install if needed (a second run installs nothing)
#   tools/install.sh --python  print the interpreter the Makefile should use, install nothing
#
# Where the packages go: an active virtual / conda environment that already has a torch is
# used as it is (its torch, CUDA build or not, is kept and mmcv is compiled against it);
# otherwise `.venv` in the repository is created with torch 2.14.1 + torchvision 0.29.1.
# Where that torch sees a GPU, mmcv compiles CUDA ops too and needs the matching CUDA
# toolkit: tools/check_cuda_build.py stops the install first, with what to do, if it is
# missing. mmdeploy 1.3.1 is installed without its protobuf pin (see MMDEPLOY_PIN).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${MOBILEONE_MM_CACHE:-$HOME/.cache/mobileone-mm}

TORCH_PIN="torch==2.14.1 torchvision==0.29.1"
MMCV_VERSION=2.1.0
STACK_PINS=(
  "setuptools>=80,<82"          # 82 removed pkg_resources (mmcv setup.py, mmengine, mim)
  mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2 mmpretrain==1.2.0
  ftfy regex                    # `import mmseg.models` needs them
  "numpy<2.4"                   # mmpretrain retrieval metrics use np.in1d
  timm==1.0.31                  # peer implementation, used as a test oracle
  onnx onnxruntime
  pytest hypothesis pytest-xdist  # pytest-xdist: `make test-fast` on both cores
  mutmut==3.8.1                 # mutation testing of the suite (docs/mutation.md)
)
# mmdeploy: its metadata pins protobuf<=3.20.2, which onnx >= 1.18 refuses (pip would take
# onnx back to 1.17), so it goes in without its dependencies, plus what its ONNX Runtime
# route imports: aenum (every task processor) and prettytable (its speed-test timings;
# mmsegmentation brings it too). Its grpcio (SNPE backend only), multiprocess and dill (a
# fallback when torch.multiprocessing is missing) are not needed.
MMDEPLOY_PIN=mmdeploy==1.3.1
MMDEPLOY_DEPS=(aenum prettytable)
# openmim without its openxlab chain (which downgrades setuptools and breaks torch)
MIM_DEPS=(click colorama model-index pandas requests rich tabulate)

step() { printf '\n==> [install] %s\n' "$*" >&2; }

active_env_python() {
  local prefix=${VIRTUAL_ENV:-${CONDA_PREFIX:-}}
  [ -n "$prefix" ] || return 1
  [ "$(cd "$prefix" 2>/dev/null && pwd)" != "$REPO/.venv" ] || return 1
  local py="$prefix/bin/python"
  [ -x "$py" ] && "$py" -c "import torch" 2>/dev/null || return 1
  echo "$py"
}

if PY=$(active_env_python); then
  ENV_KIND="active environment ${VIRTUAL_ENV:-${CONDA_PREFIX:-}}"
else
  PY="$REPO/.venv/bin/python"
  ENV_KIND="repository venv $REPO/.venv"
fi

if [ "${1:-}" = "--python" ]; then
  echo "$PY"
  exit 0
fi

# The stamp records what was installed; it changes when this script or setup.py changes.
stamp_key=$(cat "$REPO/tools/install.sh" "$REPO/setup.py" | sha256sum | cut -c1-16)
if [ -x "$PY" ]; then
  stamp_file="$("$PY" -c 'import sys; print(sys.prefix)')/.mobileone-mm-installed"
  if [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp_key" ]; then
    echo "[install] up to date in $ENV_KIND (nothing to do)" >&2
    exit 0
  fi
fi

step "installing into $ENV_KIND"
if [ ! -x "$PY" ]; then
  step "creating $REPO/.venv"
  python3 -m venv "$REPO/.venv"
fi
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$PY" -c "import torch" 2>/dev/null; then
  step "torch: pip install $TORCH_PIN (about 1 minute)"
  pip_install $TORCH_PIN
fi
if ! "$PY" -c "import torchvision" 2>/dev/null; then
  echo "[install] torchvision is missing in $ENV_KIND: install the torchvision built for" \
       "torch $("$PY" -c 'import torch; print(torch.__version__)') and run again." >&2
  exit 1
fi
TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__)")
# Keep the environment's torch and torchvision whatever the other packages ask for.
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
"$PY" -c "from importlib.metadata import version as v
print(f'torch=={v(\"torch\")}'); print(f'torchvision=={v(\"torchvision\")}')" > "$CONSTRAINTS"

step "build tools: setuptools<82, wheel, ninja"
pip_install -c "$CONSTRAINTS" "setuptools>=80,<82" wheel ninja

# mmcv: compiled from the sdist against this torch, cached by (mmcv, torch, python) outside
# the clone. pip's own wheel cache is keyed by the sdist alone and would hand back a wheel
# built for another torch, so it is bypassed.
if ! "$PY" -c "from mmcv.ops import nms; import mmcv; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
  # CUDA ops when torch sees a GPU (or FORCE_CUDA=1): needs a matching nvcc; stop now if
  # there is none rather than deep inside the compile (tools/check_cuda_build.py).
  FLAVOUR=$(FORCE_CUDA=${FORCE_CUDA:-0} "$PY" "$REPO/tools/check_cuda_build.py") || exit 1
  PYTAG=$("$PY" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
  WHEEL_DIR="$CACHE/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYTAG"
  [ "$FLAVOUR" = cpu ] || WHEEL_DIR="$WHEEL_DIR-$FLAVOUR"
  if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    if [ "$FLAVOUR" = cpu ]; then TAKES="11-25 minutes on 2 cores"
    else TAKES="CPU and CUDA ops: an hour or more with MAX_JOBS=2, estimated"; fi
    step "mmcv $MMCV_VERSION: compiling from source against torch $TORCH_VERSION" \
         "($TAKES; cached in $WHEEL_DIR afterwards)"
    BUILD=$(mktemp -d)
    "$PY" -m pip download --disable-pip-version-check -q --no-deps --no-binary :all: \
      "mmcv==$MMCV_VERSION" -d "$BUILD"
    tar -xzf "$BUILD"/mmcv-$MMCV_VERSION.tar.gz -C "$BUILD"
    # torch >= 2.14 headers need C++20; mmcv 2.1.0 hard-codes -std=c++17.
    sed -i 's/-std=c++17/-std=c++20/g' "$BUILD/mmcv-$MMCV_VERSION/setup.py"
    (cd "$BUILD/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 FORCE_CUDA=${FORCE_CUDA:-0} \
      MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip wheel --disable-pip-version-check --no-deps \
      --no-build-isolation --no-cache-dir . -w "$BUILD/wheel")
    mkdir -p "$CACHE"
    rm -rf "$WHEEL_DIR.tmp" && mv "$BUILD/wheel" "$WHEEL_DIR.tmp" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
    rm -rf "$BUILD"
  else
    step "mmcv $MMCV_VERSION: reusing the wheel cached in $WHEEL_DIR"
  fi
  pip_install -c "$CONSTRAINTS" "$WHEEL_DIR"/mmcv-*.whl
  "$PY" -c "from mmcv.ops import nms" || {
    echo "[install] mmcv was installed without its compiled ops; delete $WHEEL_DIR and run again" >&2
    exit 1
  }
  if [ "$FLAVOUR" != cpu ]; then
    "$PY" -c "from mmcv.ops import get_compiling_cuda_version as v; assert v() != 'not available'" || {
      echo "[install] mmcv was built without its CUDA ops; delete $WHEEL_DIR and run again" >&2
      exit 1
    }
  fi
fi

step "OpenMMLab packages, timm, onnxruntime, pytest"
pip_install -c "$CONSTRAINTS" "${STACK_PINS[@]}" "${MIM_DEPS[@]}"
pip_install --no-deps openmim==0.3.9

step "$MMDEPLOY_PIN without its protobuf pin, and ${MMDEPLOY_DEPS[*]}"
pip_install -c "$CONSTRAINTS" "${MMDEPLOY_DEPS[@]}"
pip_install --no-deps "$MMDEPLOY_PIN"

step "mobileone-mm (editable)"
pip_install --no-deps --no-build-isolation -e "$REPO"

"$PY" -c "import mmcv, mmdet, mmseg, mmpretrain, mmengine, timm, mobileone_mm; from mmcv.ops import nms
from mmdeploy.apis import torch2onnx; from mmdeploy.backend.onnxruntime import wrapper
print('[install] ok: torch', __import__('torch').__version__, '| mmcv', mmcv.__version__,
      '| mmengine', mmengine.__version__, '| mmdet', mmdet.__version__, '| mmseg', mmseg.__version__,
      '| mmpretrain', mmpretrain.__version__, '| mmdeploy', __import__('mmdeploy').__version__)" >&2
echo "$stamp_key" > "$("$PY" -c 'import sys; print(sys.prefix)')/.mobileone-mm-installed"
