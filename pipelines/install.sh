#!/usr/bin/env bash
# Install medidiff into a virtual environment (default ./.venv).
# CPU-only machines get the CPU build of torch; a machine that already has a
# torch (e.g. a CUDA build in an existing env) keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MEDIDIFF_VENV:-.venv}"
EXTRAS="${1:-test}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  # torch==2.13.0 CPU: on this project's machines the wheel is on disk; elsewhere
  # set MEDIDIFF_TORCH_INDEX to PyTorch's CPU wheel index to avoid a CUDA download.
  if [ -n "${MEDIDIFF_TORCH_INDEX:-}" ]; then
    "$PY" -m pip install -q "torch==2.13.0" --index-url "$MEDIDIFF_TORCH_INDEX"
  else
    "$PY" -m pip install -q "torch==2.13.0"
  fi
fi
"$PY" -m pip install -q -e ".[${EXTRAS}]"
"$PY" -c "import torch, monai, medidiff; print(f'medidiff {medidiff.__version__} | torch {torch.__version__} | monai {monai.__version__} | cuda {torch.cuda.is_available()}')"
