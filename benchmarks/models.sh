#!/usr/bin/env bash
# Every model figure of docs/benchmarks.md and the two model cards, from the shipped weights, on
# the shared development data (../shared/data). Writes JSON into var/bench/models/ and prints it.
#   bash benchmarks/models.sh [THREADS]        (about an hour on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
OUT=var/bench/models
mkdir -p "$OUT"
LAB=.venv/bin/ribnode-lab
$LAB eval-seg --threads "$THREADS" --json "$OUT/segmentation.json"
$LAB eval-gate --cases all --threads "$THREADS" --json "$OUT/gate.json"
$LAB eval-suppression --paired yes --threads "$THREADS" --json "$OUT/suppression.json"
$LAB eval-suppression --paired yes --steps 4 --threads "$THREADS" --json "$OUT/suppression-4-steps.json"
$LAB eval-lesions --paired yes --per-cell 50 --threads "$THREADS" --json "$OUT/lesions-paired.json"
$LAB eval-lesions --cases all --paired no --per-cell 50 --seed 1 --threads "$THREADS" --json "$OUT/lesions-unpaired.json"
.venv/bin/python benchmarks/model_speed.py --threads "$THREADS" --runs 5 --steps 1 2 4 | tee "$OUT/speed.json"
.venv/bin/python benchmarks/model_pictures.py --threads "$THREADS"
