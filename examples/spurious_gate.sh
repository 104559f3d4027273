#!/bin/sh
# The explanation gate of README ("Gates for deployment pipelines"), on held-out images: the
# unbiased model passes (exit 0), the biased model fails (exit 3), and the version comparison
# unbiased → biased fails its agreement gate (exit 3). Run from the repository root; OUT defaults
# to ./gate-out. Each command writes JUnit XML and a Markdown summary inside its folder.
set -u
OUT=${OUT:-gate-out}
IMAGES=examples/spurious_heldout
for model in unbiased biased; do
  onnxcam eval "models/spurious/$model.onnx" "$IMAGES" \
    --forbidden "$IMAGES/marks.json" --truth "$IMAGES/boxes.json" \
    --require 'energy_in_forbidden<=0.02' --require 'accuracy>=0.9' \
    -o "$OUT/$model" --junit junit.xml --markdown summary.md
  echo "$model: exit code $?"
done
onnxcam review models/spurious/unbiased.onnx models/spurious/biased.onnx --images "$IMAGES" \
  --forbidden "$IMAGES/marks.json" --truth "$IMAGES/boxes.json" \
  --require 'agreement(unbiased,biased).spearman>=0.6' \
  -o "$OUT/review" --junit junit.xml --markdown summary.md
echo "review unbiased biased: exit code $?"
