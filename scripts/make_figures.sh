#!/usr/bin/env bash
# Makes the README's analysis figures (docs/figures/*.png) with the real
# commands: a tiny tau sweep on Fashion-MNIST (width-8 ResNet-18, 400 steps
# of 32 images per tau, CPU; the recipe of the analyze tests' fixtures), then every `topotrain analyze` subcommand on
# it, and sheets / selectivity on the shared golden ResNet-18.
#
#   scripts/make_figures.sh [WORK_DIR]      (default: runs/figures)
#
# TOPOTRAIN picks the binary (default: a release build via cargo). Needs
# Debian's dataset-fashion-mnist and fonts-dejavu-core (scripts/setup.sh),
# and ../shared/ for the golden checkpoint and ImageNet-mini.
set -euo pipefail
cd "$(dirname "$0")/.."

work=${1:-runs/figures}
topotrain=${TOPOTRAIN:-"cargo run -q --release -p topotrain --"}
fashion=/usr/share/datasets/fashion-mnist
shared=${TOPOTRAIN_SHARED:-../shared}
figures=docs/figures
mkdir -p "$work" "$figures"

cat >"$work/base.toml" <<EOF
[model]
arch = "resnet18"
num_classes = 10
width = 8
small_stem = false
in_channels = 1

[data]
format = "fashion-mnist-idx"
train = "$fashion"
val = "$fashion"
mean = [72.94]
std = [90.02]
resolution = { start = 28 }
val_resolution = 28
val_crop_ratio = 1.0

[topography]
tau = 0.0
layers = [{ patterns = ["layer*.**"], factor = 3.0, clamp_factor = true }]

[optimizer]
weight_decay = 5e-4
label_smoothing = 0.1

[lr]
peak = 0.1
warmup_epochs = 0.1
shape = "linear"

[training]
epochs = 1
batch_size = 32
seed = 1
max_steps_per_epoch = 400
max_eval_batches = 4
eval_batch_size = 500
checkpoint_every_steps = 1000
log_every_steps = 50
threads = 0

[output]
dir = "$work/sweep"
EOF

set -x
$topotrain sweep --config "$work/base.toml" --tau 0,1,5,20 --quiet
topo=$work/sweep/tau_20
$topotrain analyze sheets --checkpoint "$topo" --layer layer4.1.conv2 --out "$work/sheets"
$topotrain analyze sheets --checkpoint "$work/sweep/tau_0" --layer layer4.1.conv2 --out "$work/sheets_tau0"
$topotrain analyze smoothness --checkpoint "$topo" --out "$work/smoothness"
$topotrain analyze dimensionality --checkpoint "$topo" --modules 'layer*.*' \
    --data "$fashion" --max-images 2000 --batch-size 250 --out "$work/dimensionality"
# Layers 1-2 have 2x4 and 4x4 sheets, too small to down-sample; prune the
# 4x8 and 8x8 sheets of layers 3-4, with and without topography.
for tau in 0 20; do
    $topotrain analyze prune --checkpoint "$work/sweep/tau_$tau" --layers 'layer3.**,layer4.**' \
        --factors 1.5,2,4 --data "$fashion" --max-images 2000 --batch-size 250 --out "$work/prune_tau$tau"
done
$topotrain analyze sweep-report --sweep "$work/sweep" --data "$fashion" --max-images 1000 --batch-size 250 \
    --out "$work/sweep_report"
golden=$shared/golden/resnet18_blurpool.pt
$topotrain analyze selectivity --checkpoint "$golden" --layers layer4.1.conv2 --stimuli stimuli \
    --res 112 --out "$work/selectivity"
set +x

cp "$work/sheets/sheets.png" "$figures/sheets_tau20.png"
cp "$work/sheets_tau0/sheet_layer4.1.conv2.png" "$figures/sheet_tau0_layer4.1.conv2.png"
cp "$work/sheets/sheet_layer4.1.conv2.png" "$figures/sheet_tau20_layer4.1.conv2.png"
cp "$work/smoothness/smoothness.png" "$figures/smoothness_tau20.png"
cp "$work/dimensionality/dimensionality.png" "$figures/dimensionality_tau20.png"
cp "$work/prune_tau20/prune.png" "$figures/prune_tau20.png"
cp "$work/prune_tau0/prune.png" "$figures/prune_tau0.png"
cp "$work/sweep_report/pareto.png" "$figures/pareto.png"
cp "$work/sweep_report/ed_vs_tau.png" "$figures/ed_vs_tau.png"
cp "$work/selectivity/selectivity_layer4.1.conv2_faces.png" "$figures/selectivity_golden_layer4.1.conv2_faces.png"
echo "figures in $figures; JSON results in $work/*/"
