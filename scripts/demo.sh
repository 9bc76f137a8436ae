#!/usr/bin/env bash
# The README demo: prepare Fashion-MNIST, train a small topographic ResNet
# on the CPU, evaluate it on the test split, and draw one topographic
# layer's sheet (runs/fashion_mnist_tau<TAU>/sheet_<layer>.png).
#
#   scripts/demo.sh            # tau = 5 (topographic)
#   TAU=0 scripts/demo.sh      # the baseline
#
# After both, the table at the end compares them: the tau = 5 run has the
# lower TopoLoss and the smoother sheet.
set -euo pipefail
cd "$(dirname "$0")/.."

# One config for the recipe; TAU overrides its tau, and names the run.
tau=${TAU:-5}
config=configs/fashion_mnist_tau5.toml
run=runs/fashion_mnist_tau${tau}
recipe=(--config "$config" --set "topography.tau=$tau" --out "$run")

scripts/setup.sh
cargo build --release -p topotrain
bin=${CARGO_TARGET_DIR:-target}/release/topotrain

start=$(date +%s)
if [ ! -f data/fashion-mnist/val.topo ]; then
    "$bin" prep fashion-mnist --out data/fashion-mnist
fi
if [ -f "$run/summary.json" ]; then
    echo "$run already trained; remove it to train again"
elif [ -f "$run/checkpoints/latest" ]; then
    "$bin" fit "${recipe[@]}" --resume >/dev/null
else
    "$bin" fit "${recipe[@]}" >/dev/null
fi
"$bin" eval --checkpoint "$run" --data data/fashion-mnist --json "$run/eval.json" >/dev/null
picture=$(ls "$run"/sheet_*.png 2>/dev/null | head -n 1)
[ -n "$picture" ] || { echo "error: $run has no sheet picture (see the warning above)" >&2; exit 1; }
echo "prepared, trained and evaluated in $(( $(date +%s) - start )) s; sheet picture: $picture"

# One row per demo run so far, from its summary.json.
field() { sed -n "s/^ *\"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$1" | head -n 1; }
echo
echo "| tau | test top-1 | mean TopoLoss (tau = 1) | sheet smoothness | picture |"
echo "| ---: | ---: | ---: | ---: | --- |"
for summary in runs/fashion_mnist_tau*/summary.json; do
    printf "| %s | %.4f | %.4f | %.3f | %s |\n" "$(field "$summary" tau)" "$(field "$summary" val_top1)" \
        "$(field "$summary" mean_topo_loss)" "$(field "$summary" smoothness)" "$(field "$summary" png)"
done
