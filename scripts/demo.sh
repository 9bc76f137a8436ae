#!/usr/bin/env bash
# The README demo: prepare Fashion-MNIST, train a small topographic ResNet
# on the CPU, evaluate it, and draw one topographic layer's sheet.
#
#   scripts/demo.sh            # tau = 5 (topographic)
#   TAU=0 scripts/demo.sh      # the baseline
#
# Needs Debian's dataset-fashion-mnist (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

tau=${TAU:-5}
config=configs/fashion_mnist_tau${tau}.toml
[ -f "$config" ] || { echo "error: no $config (the demo has tau 0 and 5)" >&2; exit 1; }
run=runs/fashion_mnist_tau${tau}

cargo build --release -p topotrain
bin=target/release/topotrain

if [ ! -f data/fashion-mnist/val.topo ]; then
    "$bin" prep fashion-mnist --out data/fashion-mnist
fi
start=$(date +%s)
if [ -f "$run/summary.json" ]; then
    echo "$run already trained; remove it to train again"
elif [ -f "$run/checkpoints/latest" ]; then
    "$bin" fit --config "$config" --resume
else
    "$bin" fit --config "$config"
fi
"$bin" eval --checkpoint "$run" --data data/fashion-mnist --json "$run/eval.json"
echo "trained and evaluated in $(( $(date +%s) - start )) s"
