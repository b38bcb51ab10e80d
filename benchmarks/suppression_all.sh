#!/usr/bin/env bash
# Every figure of docs/benchmarks/suppression.md and docs/models/rib-suppression.md, in order.
# Usage: bash benchmarks/suppression_all.sh [OUT_DIR]   (default var/bench-suppression)
# Needs the shipped weights (src/ribnode/models/weights/rib-suppression.*), the regression
# baseline exported to runs/suppression/regression/export/, and ../shared/data/jsrt-bse-512.
set -euo pipefail
OUT=${1:-var/bench-suppression}
PY=${PY:-.venv/bin/python}
REG=runs/suppression/regression/export/rib-suppression-regression.onnx
mkdir -p "$OUT"
SEG=$([ -f src/ribnode/models/weights/rib-segmentation.onnx ] && echo both || echo reference)
# 1. quality on the held-out pairs at 512 (diffusion, 4 steps; then the regression baseline)
$PY -m ribnode eval-suppression --cases held-out --mask "$SEG" --threads 2 --json "$OUT/eval-diffusion.json" | tee "$OUT/eval-diffusion.txt"
$PY -m ribnode eval-suppression --cases held-out --mask reference --threads 2 --weights "$REG" --json "$OUT/eval-regression.json" | tee "$OUT/eval-regression.txt"
# 2. BSR and time against sampling steps
$PY benchmarks/suppression_steps.py --steps 1 2 4 8 16 32 --threads 2 | tee "$OUT/steps.md"
# 3. lesion retention (10 held-out radiographs x 5 centres per location and radius x 3 contrasts)
$PY -m ribnode eval-lesions --cases held-out --limit 10 --placements 5 --mask reference --threads 2 --json "$OUT/lesions-diffusion.json" | tee "$OUT/lesions-diffusion.txt"
$PY -m ribnode eval-lesions --cases held-out --limit 10 --placements 5 --mask reference --threads 2 --weights "$REG" --json "$OUT/lesions-regression.json" | tee "$OUT/lesions-regression.txt"
# 4. speed on RG1 (decoded DICOM -> full-resolution output, segmentation included), 2 threads
$PY benchmarks/suppression_speed.py --threads 2 --repeats 5 --steps 1 2 4 8 16 32 | tee "$OUT/speed.md"
# 5. before/after picture
$PY benchmarks/suppression_figure.py --steps 4
