#!/usr/bin/env bash
# The whole pipeline on the project's synthetic data set: data -> captions -> train -> eval -> predict -> report.
# Runs on a 2-core CPU in a few minutes. Outputs land in one folder, named at the end.
set -euo pipefail
OUT="${1:-out/demo}"
OUT="$(mkdir -p "$OUT" && cd "$OUT" && pwd)"
CLASS="${DEMO_CLASS:-pill_box}"
SHOTS="${DEMO_SHOTS:-2}"
# the CPU-sized epochs of `detector fit-folder` (its CPU_EPOCHS decides them for both)
cpu_epochs() { python -c "from detector.run.fit_folder import CPU_EPOCHS; print(CPU_EPOCHS['$1'])"; }
EPOCHS="${DEMO_EPOCHS:-$(cpu_epochs epochs)}"
IMAGE_EPOCHS="${DEMO_IMAGE_EPOCHS:-$(cpu_epochs image_epochs)}"
BACKBONE="${DEMO_BACKBONE:-ViT-B-16-plus-240}"
PRETRAINED="${DEMO_PRETRAINED:-laion400m_e32}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
start=$(date +%s)

echo "demo: class $CLASS, $SHOTS shots, $EPOCHS pixel epochs + $IMAGE_EPOCHS image epochs, backbone $BACKBONE"
echo "      (chosen so the whole run stays under 10 minutes on a 2-core CPU; the paper uses 100 + 50 epochs)"

step "1/6 synthetic data set (MVTec-AD layout)"
mfsc demo-data "$OUT/data"

step "2/6 MFSC captions (attribute captioner, offline)"
mfsc build "$OUT/data" --out "$OUT/captions" --captioner attributes --shots "$SHOTS"

step "3/6 the class record the detector will use"
mfsc show "$OUT/captions" --class "$CLASS"

step "4/6 train FineGrainedAD"
if ! python -m detector.method.weights "$BACKBONE" "$PRETRAINED"; then
  PRETRAINED=none
fi
detector train --captions "$OUT/captions" --data "$OUT/data" --class "$CLASS" --shots "$SHOTS" --seed 0 \
  --backbone "$BACKBONE" --pretrained "$PRETRAINED" --epochs "$EPOCHS" --image-epochs "$IMAGE_EPOCHS" \
  --out "$OUT/checkpoint"

step "5/6 evaluate on the test split (metrics, overlays, HTML report)"
detector eval --checkpoint "$OUT/checkpoint" --data "$OUT/data" --out "$OUT/eval"

step "6/6 predict on new images"
detector predict --checkpoint "$OUT/checkpoint" "$OUT/data/$CLASS/test" --out "$OUT/predict" --threshold "$OUT/eval"

echo
echo "demo finished in $(( $(date +%s) - start )) s; outputs in $OUT"
echo "  captions: $OUT/captions   checkpoint: $OUT/checkpoint   report: $OUT/eval/report.html"
