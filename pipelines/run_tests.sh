#!/usr/bin/env bash
# Install (if needed) and run the whole test suite. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash pipelines/install.sh test,fast-cpu   # fast-cpu: the OpenVINO backend is tested too
VENV="${MEDIDIFF_VENV:-.venv}"
# the venv's console scripts (medidiff, dcm2niix) are on PATH as in an activated venv
export PATH="$(cd "$VENV/bin" && pwd):$PATH"
exec "$VENV/bin/python" -m pytest -q "$@"
