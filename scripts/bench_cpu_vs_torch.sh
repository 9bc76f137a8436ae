#!/usr/bin/env bash
# The CPU speed goals of BENCHMARKS.md ("CPU step beside PyTorch"), in
# interleaved rounds so that both frameworks see the same machine load:
# ResNet-18 at batch 8, 64 px, with and without TopoLoss, the demo's step
# shapes, and the demo's two epochs (`fit` against scripts/torch_demo.py).
#
#   PYTHON=/path/to/venv/bin/python ROUNDS=3 scripts/bench_cpu_vs_torch.sh
#
# PYTHON needs torch, torchvision and the authors' topoloss (PyPI). Each
# result is one JSON line in $OUT/<name>.jsonl; the demo fits' summaries
# stay in $OUT/demo_<round>/.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
python=${PYTHON:-python3}
bin=${BIN:-target/release/topotrain}
out=${OUT:-runs/bench_cpu_vs_torch}
threads=${THREADS:-2}
mkdir -p "$out"
[ -f data/fashion-mnist/val.topo ] || "$bin" prep fashion-mnist --out data/fashion-mnist >/dev/null

resnet18=(--arch resnet18 --batch-size 8 --res 64 --steps 10 --warmup 2)
demo_step=(--arch resnet18 --batch-size 128 --res 28 --width 16 --in-channels 1 --num-classes 10
    --steps 20 --warmup 3)
bench() { "$bin" bench train --device cpu --threads "$threads" --json "$@"; }
torch_step() { "$python" scripts/bench_torch_train.py --device cpu --threads "$threads" "$@"; }

for round in $(seq "$rounds"); do
    echo "round $round of $rounds ($(uptime | sed 's/.*load/load/'))" >&2
    bench "${resnet18[@]}" >>"$out/resnet18.jsonl"
    torch_step "${resnet18[@]}" >>"$out/resnet18_torch.jsonl"
    bench "${resnet18[@]}" --topo-tau 10 >>"$out/resnet18_topo.jsonl"
    torch_step "${resnet18[@]}" --topo-tau 10 >>"$out/resnet18_topo_torch.jsonl"
    bench "${demo_step[@]}" --topo-tau 5 --topo-layers 'layer*.**' >>"$out/demo_step.jsonl"
    rm -rf "$out/demo_$round"
    "$bin" fit --config configs/fashion_mnist_tau5.toml --out "$out/demo_$round" \
        --threads "$threads" >/dev/null
    tr -d '\n' <"$out/demo_$round/summary.json" >>"$out/demo.jsonl"
    echo >>"$out/demo.jsonl"
    "$python" scripts/torch_demo.py --threads "$threads" >>"$out/demo_torch.jsonl"
done
echo "results in $out" >&2
