#!/usr/bin/env bash
# Install (if needed), then the main job on the bundled sample data with the
# bundled, calibrated model: score the test split (NIfTI and DICOM copies) and one
# real whole-head scanner export (front end: brain extraction, bias correction,
# registration), evaluate against the labels, and build the HTML report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash pipelines/install.sh test
VENV="${MEDIDIFF_VENV:-.venv}"
OUT="${1:-out/sample}"
MD="$VENV/bin/medidiff"
status=0
"$MD" score --model models/brain_t1_4mm --input sample_data/test --out "$OUT" --no-report || status=$?
"$MD" score --model models/brain_t1_4mm --input sample_data/test_dicom --out "$OUT" --no-report || status=$?
"$MD" score --model models/brain_t1_4mm --input sample_data/real --out "$OUT" --no-report || status=$?
"$MD" evaluate --run "$OUT" --labels sample_data/labels.csv --split test || status=$?
"$MD" report --run "$OUT" --labels sample_data/labels.csv
exit $status
