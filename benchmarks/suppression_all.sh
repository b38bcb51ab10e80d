#!/usr/bin/env bash
# Every figure of docs/benchmarks/suppression.md and docs/models/rib-suppression.md, in order,
# with the exact options used for the published figures.
# Usage: bash benchmarks/suppression_all.sh [OUT_DIR]   (default var/bench-suppression; 2.1.0's: var/bench-suppression-2.1)
# EQUAL_TRAINING=1 also trains and measures the equal-training diffusion/regression pair (section 6; about 2 CPU hours).
# Needs the shipped weights (src/ribnode/models/weights/rib-suppression.*, rib-segmentation.*),
# the regression baseline exported by
#   ribnode train-suppression --mode regression --output runs/suppression/regression \
#       --install runs/suppression/regression/export/rib-suppression-regression.onnx
# and ../shared/data/jsrt-bse-512.
# Commands that take the model's defaults run the shipped version (2.4.0: median along the ribs and
# edge taper). Sections 1-9 were measured before the taper (2.3.0 and earlier); add --edge-taper 0
# (--rib-median 0 as well for 2.2.0) to those commands to reproduce their figures exactly.
set -euo pipefail
OUT=${1:-var/bench-suppression}
PY=${PY:-.venv/bin/python}
REG=runs/suppression/regression/export/rib-suppression-regression.onnx
mkdir -p "$OUT"
# 0. the design's ceiling (both rib-mask definitions) and what upsampling costs at 2048 px
$PY benchmarks/suppression_ceiling.py | tee "$OUT/ceiling.md"
$PY benchmarks/suppression_upsampling.py | tee "$OUT/upsampling.md"
# 1. BSR and time against sampling steps (held-out; and training cases, to choose the default)
$PY benchmarks/suppression_steps.py --steps 1 2 4 8 --threads 1 | tee "$OUT/steps.md"   # 2.0.0: 1 2 4 8 16 32 in one run
$PY benchmarks/suppression_steps.py --steps 16 --threads 1 | tee "$OUT/steps16.md"
$PY benchmarks/suppression_steps.py --steps 32 --threads 2 | tee "$OUT/steps32.md"
$PY benchmarks/suppression_steps.py --split train --limit 10 --steps 1 2 4 --threads 1 | tee "$OUT/steps-train.md"
#    2.2.0's 1-8 step figures come from the first line above; its 16 and 32 from the first 6 pairs (CPU time):
$PY benchmarks/suppression_steps.py --steps 1 16 32 --limit 6 --threads 1 | tee "$OUT/steps-2.2-l6.md"
# 2. quality on the held-out pairs at 512 (shipped diffusion at its default steps, both mask sources)
$PY -m ribnode eval-suppression --cases held-out --mask both --threads 1 --json "$OUT/eval-diffusion.json" | tee "$OUT/eval-diffusion.txt"
$PY -m ribnode eval-suppression --cases held-out --mask reference --threads 1 --weights "$REG" --json "$OUT/eval-regression.json" | tee "$OUT/eval-regression.txt"
# 3. lesion retention: 10 held-out radiographs x 5 centres = 50 placements per cell (baseline: 20,
#    product path: 3 x 3 = 9, for CPU time); tables: benchmarks/lesions_table.py FILE.json
#    The shipped model's 50 per cell run in two processes over disjoint cases, merged from the trials:
$PY -m ribnode eval-lesions --cases held-out --skip 0 --limit 5 --placements 5 --mask reference --threads 1 --json "$OUT/lesions-B-0.json" > "$OUT/lesions-B-0.txt" &
$PY -m ribnode eval-lesions --cases held-out --skip 5 --limit 5 --placements 5 --mask reference --threads 1 --json "$OUT/lesions-B-5.json" > "$OUT/lesions-B-5.txt"
wait
$PY benchmarks/lesions_table.py --merge "$OUT/lesions-B-0.json" "$OUT/lesions-B-5.json" | tee "$OUT/lesions-diffusion-merged.md"
$PY -m ribnode eval-lesions --cases held-out --limit 10 --placements 2 --mask reference --threads 1 --weights "$REG" --json "$OUT/lesions-regression.json" | tee "$OUT/lesions-regression.txt"
$PY -m ribnode eval-lesions --cases held-out --limit 3 --placements 3 --mask segmenter --threads 1 --json "$OUT/lesions-diffusion-seg.json" | tee "$OUT/lesions-diffusion-seg.txt"
# 4. speed on RG1 (decoded DICOM -> full-resolution output, segmentation included), 2 threads
$PY benchmarks/suppression_speed.py --threads 2 --repeats 5 --steps "${STEPS:-1}" | tee "$OUT/speed.md"
$PY benchmarks/suppression_speed.py --threads 2 --repeats 3 --steps 1 2 4 8 16 32 --no-peer | tee "$OUT/speed-steps.md"
# 5. before/after picture
$PY benchmarks/suppression_figure.py --steps "${STEPS:-1}"
$PY benchmarks/suppression_subset.py "$OUT/eval-diffusion.json" | tee "$OUT/subset.txt"
# 6. diffusion against one-step regression at equal training: both from random weights, the same
#    recipe and 1500 optimiser steps (about 90 min each on one core; run them side by side)
if [ "${EQUAL_TRAINING:-0}" = 1 ]; then
  for MODE in diffusion regression; do
    extra=""; [ "$MODE" = diffusion ] && extra="--focus-steps 4 --focus-prob 0.5"
    $PY -m ribnode train-suppression --mode $MODE $extra --steps 1500 --minutes 100 --threads 1 --no-resume \
        --output runs/eq/$MODE --install runs/eq/$MODE/export/rib-suppression-eq-$MODE.onnx --default-steps 1 &
    pids="${pids:-} $!"
  done
  for pid in $pids; do wait "$pid"; done   # a failed training stops the script (set -e)
  for MODE in diffusion regression; do
    W=runs/eq/$MODE/export/rib-suppression-eq-$MODE.onnx
    $PY -m ribnode eval-suppression --cases held-out --mask reference --threads 1 --weights "$W" --json "$OUT/eq-eval-$MODE.json" | tee "$OUT/eq-eval-$MODE.txt"
    $PY -m ribnode eval-lesions --cases held-out --limit 10 --placements 1 --mask reference --threads 1 --weights "$W" --json "$OUT/eq-lesions-$MODE.json" | tee "$OUT/eq-lesions-$MODE.txt"
  done
fi
# 7. the denoiser's window (eighth session): BSR against the window, both masks, the lesion test
#    on 128-px windows with the same placements as the whole-image run (same --skip/--limit/seed),
#    the step curve, speed and peak memory
$PY benchmarks/suppression_windows.py --windows 0 128/64 128/32 96/48 192/96 256/128 --threads 1 | tee "$OUT/windows.md"
$PY benchmarks/suppression_window_attention.py --limit 25 | tee "$OUT/window-attention.md"
$PY benchmarks/suppression_windows.py --weights var/w210/rib-suppression.onnx --windows 0 128/64 --threads 1 | tee "$OUT/windows-2.1.md"   # 2.1.0: git show 5b74f2d:src/ribnode/models/weights/rib-suppression.{onnx,json}
for T in 0 128; do
  $PY -m ribnode eval-suppression --cases held-out --mask segmenter --threads 1 --tile $T --json "$OUT/eval-seg-tile$T.json" > "$OUT/eval-seg-tile$T.txt"
  $PY -m ribnode eval-lesions --cases held-out --skip 0 --limit 5 --placements 5 --mask reference --threads 1 --tile $T --json "$OUT/lesions-tile$T-0.json" > "$OUT/lesions-tile$T-0.txt" &
  $PY -m ribnode eval-lesions --cases held-out --skip 5 --limit 5 --placements 5 --mask reference --threads 1 --tile $T --json "$OUT/lesions-tile$T-5.json" > "$OUT/lesions-tile$T-5.txt"
  wait
  $PY benchmarks/lesions_table.py --merge "$OUT/lesions-tile$T-0.json" "$OUT/lesions-tile$T-5.json" | tee "$OUT/lesions-tile$T.md"
done
$PY benchmarks/lesions_paired.py "$OUT/lesions-tile0-0.json" "$OUT/lesions-tile0-5.json" -- "$OUT/lesions-tile128-0.json" "$OUT/lesions-tile128-5.json" | tee "$OUT/lesions-tile-paired.md"
#    192-px windows on the first 2 radiographs of each half, paired on those 4 with the runs above
$PY -m ribnode eval-lesions --cases held-out --skip 0 --limit 2 --placements 5 --mask reference --threads 1 --tile 192 --tile-stride 96 --json "$OUT/lesions-tile192-0.json" > "$OUT/lesions-tile192-0.txt" &
$PY -m ribnode eval-lesions --cases held-out --skip 5 --limit 2 --placements 5 --mask reference --threads 1 --tile 192 --tile-stride 96 --json "$OUT/lesions-tile192-5.json" > "$OUT/lesions-tile192-5.txt"
wait
$PY benchmarks/lesions_paired.py "$OUT/lesions-tile0-0.json" "$OUT/lesions-tile0-5.json" -- "$OUT/lesions-tile192-0.json" "$OUT/lesions-tile192-5.json" | tee "$OUT/lesions-tile192-paired.md"
$PY benchmarks/lesions_paired.py "$OUT/lesions-tile128-0.json" "$OUT/lesions-tile128-5.json" -- "$OUT/lesions-tile192-0.json" "$OUT/lesions-tile192-5.json" | tee "$OUT/lesions-tile192-vs-128.md"
$PY benchmarks/suppression_steps.py --steps 1 2 4 --tile 128 --threads 1 | tee "$OUT/steps-tile128.md"
$PY benchmarks/suppression_speed.py --threads 2 --repeats 5 --steps 1 --tile 0 128 --memory | tee "$OUT/speed-tile.md"
# 8. the median along the ribs (ninth session, version 2.3.0, the ribs' direction from the region):
#    BSR against the line length (whole image and 128-px windows), the lesion test for several
#    lengths from the same network runs (the same placements as eval-lesions), the product path, speed
$PY benchmarks/suppression_rib_median.py bsr --lengths 0 21 31 41 --direction region --tile 0 128 --threads 1 | tee "$OUT/median-bsr.md"
$PY benchmarks/suppression_rib_median.py lesions --lengths 31 41 --direction region --skip 0 --limit 5 --placements 5 --threads 1 --prefix "$OUT/median-whole-0" > "$OUT/median-whole-0.txt" &
$PY benchmarks/suppression_rib_median.py lesions --lengths 31 41 --direction region --skip 5 --limit 5 --placements 5 --threads 1 --prefix "$OUT/median-whole-5" > "$OUT/median-whole-5.txt"
wait
for V in L0 L31-region L41-region; do
  $PY benchmarks/lesions_table.py --merge "$OUT/median-whole-0-$V.json" "$OUT/median-whole-5-$V.json" | tee "$OUT/median-whole-$V.md"
done
for V in L31-region L41-region; do
  $PY benchmarks/lesions_paired.py "$OUT/median-whole-0-L0.json" "$OUT/median-whole-5-L0.json" -- "$OUT/median-whole-0-$V.json" "$OUT/median-whole-5-$V.json" | tee "$OUT/median-paired-$V.md"
done
$PY benchmarks/suppression_speed.py --threads 2 --repeats 5 --steps 1 --rib-median 0 31 | tee "$OUT/speed-median.md"
# 9. tried in the tenth session: the ribs' direction from the rib mask instead of the region
#    (not adopted). BSR and the lesion test for both directions from the same network runs,
#    paired, with the pairs' masks and on the product path (the segmenter's masks, 9 per cell)
$PY benchmarks/suppression_rib_median.py bsr --lengths 0 31 --direction ribs region --tile 0 128 --threads 1 | tee "$OUT/direction-bsr.md"
$PY benchmarks/suppression_rib_median.py lesions --lengths 31 --direction ribs region --skip 0 --limit 5 --placements 5 --threads 1 --prefix "$OUT/direction-0" > "$OUT/direction-0.txt" &
$PY benchmarks/suppression_rib_median.py lesions --lengths 31 --direction ribs region --skip 5 --limit 5 --placements 5 --threads 1 --prefix "$OUT/direction-5" > "$OUT/direction-5.txt"
wait
for V in L0 L31-region L31-ribs; do
  $PY benchmarks/lesions_table.py --merge "$OUT/direction-0-$V.json" "$OUT/direction-5-$V.json" | tee "$OUT/direction-$V.md"
done
$PY benchmarks/lesions_paired.py "$OUT/direction-0-L31-region.json" "$OUT/direction-5-L31-region.json" -- "$OUT/direction-0-L31-ribs.json" "$OUT/direction-5-L31-ribs.json" | tee "$OUT/direction-paired.md"
$PY benchmarks/suppression_rib_median.py lesions --mask segmenter --lengths 31 --direction ribs region --limit 3 --placements 3 --threads 1 --prefix "$OUT/direction-seg" > "$OUT/direction-seg.txt"
for V in L0 L31-region L31-ribs; do
  $PY benchmarks/lesions_table.py "$OUT/direction-seg-$V.json" | tee "$OUT/direction-seg-$V.md"
done
$PY benchmarks/lesions_paired.py "$OUT/direction-seg-L31-region.json" -- "$OUT/direction-seg-L31-ribs.json" | tee "$OUT/direction-seg-paired.md"
#    2.3.0 on the product path with 50 per cell (the segmenter's masks place the nodules and
#    bound the region), paired with the median off on the same placements
$PY benchmarks/suppression_rib_median.py lesions --mask segmenter --lengths 31 --direction region --skip 0 --limit 5 --placements 5 --threads 1 --prefix "$OUT/seg50-0" > "$OUT/seg50-0.txt" &
$PY benchmarks/suppression_rib_median.py lesions --mask segmenter --lengths 31 --direction region --skip 5 --limit 5 --placements 5 --threads 1 --prefix "$OUT/seg50-5" > "$OUT/seg50-5.txt"
wait
$PY benchmarks/lesions_table.py --merge "$OUT/seg50-0-L31-region.json" "$OUT/seg50-5-L31-region.json" | tee "$OUT/seg50-L31-region.md"
$PY benchmarks/lesions_paired.py "$OUT/seg50-0-L0.json" "$OUT/seg50-5-L0.json" -- "$OUT/seg50-0-L31-region.json" "$OUT/seg50-5-L31-region.json" | tee "$OUT/seg50-paired.md"
# 10. the edge taper (twelfth session, version 2.4.0): the layer weighted 1 on the rib mask down to
#     0 at the region's border (5 px at 512), after the median. BSR, and the lesion test with the
#     pairs' masks (both directions) and on the product path (50 per cell), each from the same
#     network runs as the variants without it; the product path's BSR; speed
$PY benchmarks/suppression_rib_median.py bsr --lengths 0 31 --tapers 0 5 --tile 0 --threads 1 | tee "$OUT/taper-bsr.md"
$PY benchmarks/suppression_rib_median.py lesions --lengths 31 --direction region ribs --tapers 0 5 --skip 0 --limit 5 --placements 5 --threads 1 --prefix "$OUT/taper-pairs-0" > "$OUT/taper-pairs-0.txt" &
$PY benchmarks/suppression_rib_median.py lesions --lengths 31 --direction region ribs --tapers 0 5 --skip 5 --limit 5 --placements 5 --threads 1 --prefix "$OUT/taper-pairs-5" > "$OUT/taper-pairs-5.txt"
wait
for V in L0 L31-region L31-ribs L0-T5 L31-region-T5 L31-ribs-T5; do
  $PY benchmarks/lesions_table.py --merge "$OUT/taper-pairs-0-$V.json" "$OUT/taper-pairs-5-$V.json" | tee "$OUT/taper-pairs-$V.md"
done
$PY benchmarks/lesions_paired.py "$OUT/taper-pairs-0-L31-region.json" "$OUT/taper-pairs-5-L31-region.json" -- "$OUT/taper-pairs-0-L31-region-T5.json" "$OUT/taper-pairs-5-L31-region-T5.json" | tee "$OUT/taper-pairs-paired.md"
$PY benchmarks/suppression_rib_median.py lesions --mask segmenter --lengths 31 --direction region --tapers 0 5 --skip 0 --limit 5 --placements 5 --threads 1 --prefix "$OUT/taper-seg-0" > "$OUT/taper-seg-0.txt" &
$PY benchmarks/suppression_rib_median.py lesions --mask segmenter --lengths 31 --direction region --tapers 0 5 --skip 5 --limit 5 --placements 5 --threads 1 --prefix "$OUT/taper-seg-5" > "$OUT/taper-seg-5.txt"
wait
for V in L0 L31-region L0-T5 L31-region-T5; do
  $PY benchmarks/lesions_table.py --merge "$OUT/taper-seg-0-$V.json" "$OUT/taper-seg-5-$V.json" | tee "$OUT/taper-seg-$V.md"
done
$PY benchmarks/lesions_paired.py "$OUT/taper-seg-0-L31-region.json" "$OUT/taper-seg-5-L31-region.json" -- "$OUT/taper-seg-0-L31-region-T5.json" "$OUT/taper-seg-5-L31-region-T5.json" | tee "$OUT/taper-seg-paired.md"
$PY -m ribnode eval-suppression --cases held-out --mask segmenter --threads 1 --json "$OUT/taper-eval-seg.json" | tee "$OUT/taper-eval-seg.txt"
$PY benchmarks/suppression_speed.py --threads 2 --repeats 5 --steps 1 --edge-taper 0 5 | tee "$OUT/speed-taper.md"
#     2.4.0's BSR and time against sampling steps (1-8 on all 25 held-out pairs; 16, 32 and 1 on the first 6)
$PY benchmarks/suppression_steps.py --steps 1 2 4 8 --threads 2 | tee "$OUT/steps-2.4.md"
$PY benchmarks/suppression_steps.py --steps 16 32 --limit 6 --threads 2 | tee "$OUT/steps-2.4-l6.md"
$PY benchmarks/suppression_steps.py --steps 1 --limit 6 --threads 2 | tee "$OUT/steps-2.4-l6-1.md"
# 11. 128-px denoiser windows with 2.4.0's post-steps (thirteenth session, not adopted): the lesion
#     test with the pairs' masks (the same 1200 placements) and BSR, median 31 and 41 px, with and
#     without the taper
$PY benchmarks/suppression_rib_median.py lesions --lengths 31 41 --direction region --tapers 0 5 --tile 128 --skip 0 --limit 5 --placements 5 --threads 1 --prefix "$OUT/w128-s0" > "$OUT/w128-s0.txt" &
$PY benchmarks/suppression_rib_median.py lesions --lengths 31 41 --direction region --tapers 0 5 --tile 128 --skip 5 --limit 5 --placements 5 --threads 1 --prefix "$OUT/w128-s5" > "$OUT/w128-s5.txt"
wait
for V in L0 L0-T5 L31-region L31-region-T5 L41-region L41-region-T5; do
  $PY benchmarks/lesions_table.py --merge "$OUT/w128-s0-$V.json" "$OUT/w128-s5-$V.json" | tee "$OUT/w128-$V.md"
done
$PY benchmarks/suppression_rib_median.py bsr --lengths 0 31 41 --direction region --tapers 0 5 --tile 128 --threads 1 | tee "$OUT/w128-bsr.md"
for V in L0 L31-region L41-region; do
  $PY benchmarks/lesions_paired.py "$OUT/w128-s0-$V.json" "$OUT/w128-s5-$V.json" -- "$OUT/w128-s0-$V-T5.json" "$OUT/w128-s5-$V-T5.json" | tee "$OUT/w128-paired-$V.md"
done
$PY -m ribnode eval-suppression --cases held-out --mask segmenter --threads 2 --tile 128 --json "$OUT/w128-eval-seg.json" | tee "$OUT/w128-eval-seg.txt"
