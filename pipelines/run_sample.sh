#!/usr/bin/env bash
# Install (if needed) and run the main job on the bundled sample data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash pipelines/install.sh data
VENV="${MEDIDIFF_VENV:-.venv}"
"$VENV/bin/medidiff" info sample_data
