#!/usr/bin/env bash
# GPU benchmarks of topotrain beside PyTorch on the same GPU, and a smoke
# training run on ../shared/imagenet-mini. Each stage has its own time limit,
# so one stuck stage cannot eat the others; results go to OUTDIR.
#
#   scripts/gpu_bench.sh BIN OUTDIR [STAGE ...]
#
# BIN: a topotrain built with `--features cuda`. STAGEs (default: all):
#   small    ResNet-18, batch 8 at 64 px, with every CubeCL compilation and
#            autotune logged (what the first step spends its time on)
#   r18      ResNet-18, batch 256 at 176 px, without and with TopoLoss, f32 and bf16
#   torch18  the same in PyTorch (fp32, bf16 + channels_last; with/without TopoLoss)
#   fit      a few hundred training steps on data/imagenet-mini (prepared)
#   r50      ResNet-50 in topotrain and PyTorch
# Compiled kernels and autotune results are cached in ./gpu-cache (cubecl.toml
# below), so a second run starts faster.
set -u
bin=$1
out=$2
shift 2
stages=${*:-small r18 torch18 fit r50}
mkdir -p "$out" gpu-cache
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
python=${PYTHON:-/opt/torch/.venv/bin/python}
cache=$PWD/gpu-cache
cat >cubecl.toml <<EOF
[compilation]
cache = { file = "$cache" }
[autotune]
level = "${AUTOTUNE_LEVEL:-balanced}"
cache = { file = "$cache" }
EOF

stage() { # name seconds command...
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date +%T), limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.json" 2>"$out/$name.err"
    local rc=$?
    echo "   rc=$rc after $((SECONDS - start)) s"
    tail -c 600 "$out/$name.err"
    cat "$out/$name.json"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
for s in $stages; do
    case $s in
    small)
        CUBECL_DEBUG_LOG=/tmp/cubecl-small.log stage small 150 \
            "$bin" bench train --arch resnet18 --batch 8 --res 64 --device cuda --warmup 1 --steps 3 --json
        grep -c -i "compil" /tmp/cubecl-small.log | sed 's/^/   log lines mentioning compilation: /'
        grep -c -i "autotune\|tuner" /tmp/cubecl-small.log | sed 's/^/   log lines mentioning autotune: /'
        head -c 3000000 /tmp/cubecl-small.log >"$out/cubecl-small.log"
        ;;
    r18)
        stage r18 180 "$bin" bench train --arch resnet18 --batch 256 --res 176 --device cuda --warmup 3 --steps 10 --json
        stage r18_topo 120 "$bin" bench train --arch resnet18 --batch 256 --res 176 --device cuda --warmup 3 --steps 10 --topo-tau 1 --json
        stage r18_bf16 120 "$bin" bench train --arch resnet18 --batch 256 --res 176 --device cuda --warmup 3 --steps 10 --precision bf16 --json
        stage r18_bf16_topo 120 "$bin" bench train --arch resnet18 --batch 256 --res 176 --device cuda --warmup 3 --steps 10 --precision bf16 --topo-tau 1 --json
        ;;
    torch18)
        for variant in "" "--bf16" "--topo-tau 1" "--bf16 --topo-tau 1"; do
            stage "torch18${variant// /}" 60 "$python" scripts/bench_torch_train.py --arch resnet18 $variant
        done
        ;;
    fit)
        stage fit 240 "$bin" fit --config configs/smoke/resnet18_tau10_imagenet_mini_gpu.toml --device cuda
        cp runs/resnet18_tau10_imagenet_mini_gpu/metrics.jsonl "$out/fit_metrics.jsonl" 2>/dev/null
        ;;
    r50)
        stage r50 180 "$bin" bench train --arch resnet50 --batch 256 --res 176 --device cuda --warmup 3 --steps 10 --json
        stage r50_topo 120 "$bin" bench train --arch resnet50 --batch 256 --res 176 --device cuda --warmup 3 --steps 10 --topo-tau 1 --json
        stage torch50 60 "$python" scripts/bench_torch_train.py --arch resnet50
        stage torch50bf16 60 "$python" scripts/bench_torch_train.py --arch resnet50 --bf16
        ;;
    *) echo "unknown stage $s" ;;
    esac
done
tar -czf "$out/gpu-cache.tgz" gpu-cache 2>/dev/null
