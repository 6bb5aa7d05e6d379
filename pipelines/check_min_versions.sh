#!/usr/bin/env bash
# Install the LOWER bounds of the numeric stack declared in pyproject.toml into a separate
# virtual environment and run the metric tests against them, so a lower bound that is too
# low (an API the code uses that the old version lacks) is caught before a user hits it.
#
#   bash pipelines/check_min_versions.sh            # venv in $MEDIDIFF_MIN_VENV (default /tmp/medidiff-min-venv)
#
# Slow (downloads old wheels): a manual / nightly check, not part of run_tests.sh.
# Keep the pins below equal to the ">=" bounds in pyproject.toml.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${MEDIDIFF_MIN_VENV:-/tmp/medidiff-min-venv}"
PY="${PYTHON:-python3}"

MIN_PINS=(
  "numpy==1.24.*"
  "scipy==1.10.*"
  "scikit-learn==1.3.*"
  "nibabel==5.0.*"
  "pytest==7.4.*"
)

"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet --only-binary=:all: "${MIN_PINS[@]}"
"$VENV/bin/python" -c "import numpy, scipy, sklearn; print('numpy', numpy.__version__, '| scipy', scipy.__version__, '| scikit-learn', sklearn.__version__)"
cd "$ROOT"
# medidiff from this checkout (not installed: only the metric code path is exercised)
PYTHONPATH="$ROOT" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/evaluate/test_metrics.py
echo "minimum versions: metric tests passed"
